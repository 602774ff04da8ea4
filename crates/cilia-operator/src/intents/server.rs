//! The gRPC intent service. A stream authenticates its agent by the client certificate, checks the
//! hello, then forwards its node's view — a snapshot (or nothing when the agent already holds the
//! current intent), then only what changed — and records acks and heartbeats. Invalid agent messages
//! end the stream with INVALID_ARGUMENT naming the field; shutdown ends every stream cleanly.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cilia_proto::v1::intent_service_server::{IntentService, IntentServiceServer};
use cilia_proto::v1::{AgentMessage as ProtoAgentMessage, IntentUpdate};
use cilia_proto::{AgentMessage, Hello, agent_message_from_proto, heartbeat_update};
use futures::Stream;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use super::agents::{Agents, EndReason, SentKind};
use super::identity;
use super::index::{NodeView, Sent, SharedIndex, Update, next_update};

/// Timing of the streams.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// How often the operator sends a heartbeat (it carries the node's current version).
    pub heartbeat_interval: Duration,
    /// An agent not heard from (heartbeat, ack, anything) for this long loses its stream.
    pub agent_timeout: Duration,
    /// How long a new stream may take to send its hello.
    pub hello_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            heartbeat_interval: Duration::from_secs(5),
            agent_timeout: Duration::from_secs(20),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// The intent service over a shared index. Cheap to clone.
#[derive(Clone)]
pub struct IntentServer {
    index: SharedIndex,
    agents: Arc<Agents>,
    config: StreamConfig,
    /// Turns true (or closes) when the operator shuts down: every stream then ends with OK.
    drain: watch::Receiver<bool>,
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<IntentUpdate, Status>> + Send>>;

impl IntentServer {
    pub fn new(
        index: SharedIndex,
        agents: Arc<Agents>,
        config: StreamConfig,
        drain: watch::Receiver<bool>,
    ) -> Self {
        IntentServer {
            index,
            agents,
            config,
            drain,
        }
    }

    pub fn agents(&self) -> &Arc<Agents> {
        &self.agents
    }

    /// Serves on `listener` with mutual TLS until `shutdown` resolves. Trip the drain first so
    /// the open streams end and the server can finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: tonic::transport::ServerTlsConfig,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let interval = self.config.heartbeat_interval;
        tonic::transport::Server::builder()
            .tls_config(tls)?
            .http2_keepalive_interval(Some(interval))
            .http2_keepalive_timeout(Some(interval * 2))
            .add_service(IntentServiceServer::new(self))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await
    }

    /// Reads and checks the hello: a valid message, a NodeHello, for the certificate's node.
    async fn hello(
        &self,
        inbound: &mut Streaming<ProtoAgentMessage>,
        cert_node: &str,
    ) -> Result<Hello, (EndReason, Status)> {
        let first = tokio::time::timeout(self.config.hello_timeout, inbound.message())
            .await
            .map_err(|_| {
                (
                    EndReason::Silent,
                    Status::deadline_exceeded(format!(
                        "no NodeHello within {:?}",
                        self.config.hello_timeout
                    )),
                )
            })?;
        let msg = match first {
            Ok(Some(m)) => m,
            Ok(None) => {
                return Err((
                    EndReason::AgentGone,
                    Status::cancelled("stream closed before NodeHello"),
                ));
            }
            Err(e) => return Err((EndReason::InvalidArgument, undecodable(&e))),
        };
        match agent_message_from_proto(&msg) {
            Err(e) => Err((
                EndReason::InvalidArgument,
                Status::invalid_argument(e.to_string()),
            )),
            Ok(AgentMessage::Hello(h)) if h.node != cert_node => Err((
                EndReason::PermissionDenied,
                Status::permission_denied(format!(
                    "hello.node = {:?}: the client certificate is for node {cert_node:?}",
                    h.node
                )),
            )),
            Ok(AgentMessage::Hello(h)) => Ok(h),
            Ok(_) => Err((
                EndReason::InvalidArgument,
                Status::invalid_argument("msg: the first message must be a NodeHello"),
            )),
        }
    }
}

/// What a transport-level error on the agent's stream becomes: a message that does not decode is
/// the agent's fault, and is answered like any other invalid field.
fn undecodable(e: &Status) -> Status {
    Status::invalid_argument(format!("msg: not a valid AgentMessage: {}", e.message()))
}

#[tonic::async_trait]
impl IntentService for IntentServer {
    type SubscribeStream = UpdateStream;

    async fn subscribe(
        &self,
        req: Request<Streaming<ProtoAgentMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let peer = req.remote_addr();
        let cert_node = identity::node_from_request(&req).map_err(|e| {
            self.agents.ended(EndReason::Unauthenticated);
            warn!(?peer, error = %e, "stream refused");
            Status::unauthenticated(e.to_string())
        })?;
        let mut inbound = req.into_inner();
        let hello = self
            .hello(&mut inbound, &cert_node)
            .await
            .map_err(|(reason, status)| {
                self.agents.ended(reason);
                warn!(?peer, node = %cert_node, code = ?status.code(), error = status.message(), "stream refused");
                status
            })?;
        let node = hello.node.clone();
        let (rx, sent) = self.index.lock().unwrap().resume(&node, hello.held);
        self.agents.connected(&node);
        self.agents
            .presence
            .connected(&node, hello.up_interfaces.clone());
        if let Some(s) = &sent {
            // The agent holds the current intent: that is as good as an ack.
            self.agents.acked(&node, s.version);
        }
        info!(
            %node,
            ?peer,
            agent_version = %hello.agent_version,
            held_version = hello.held.map(|h| h.0).unwrap_or(0),
            resumed = sent.is_some(),
            "agent subscribed"
        );
        let (tx, out) = mpsc::channel(32);
        let stream = NodeStream {
            highest_sent: sent.as_ref().map(|s| s.version).unwrap_or(0),
            node,
            inbound,
            rx,
            sent,
            tx,
            agents: self.agents.clone(),
            config: self.config.clone(),
            drain: self.drain.clone(),
            last_heard: Instant::now(),
        };
        tokio::spawn(stream.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
}

/// The stream timings in force.
struct Timing {
    heartbeat: Duration,
    timeout: Duration,
    lease_ms: u32,
}

/// One agent's stream after its hello.
struct NodeStream {
    node: String,
    inbound: Streaming<ProtoAgentMessage>,
    rx: watch::Receiver<NodeView>,
    /// The base of the next delta; `None` until a snapshot went out (or after a resync request).
    sent: Option<Sent>,
    /// The highest version ever sent (or resumed at): an ack above it is invalid.
    highest_sent: u64,
    tx: mpsc::Sender<Result<IntentUpdate, Status>>,
    agents: Arc<Agents>,
    config: StreamConfig,
    drain: watch::Receiver<bool>,
    last_heard: Instant,
}

impl NodeStream {
    async fn run(mut self) {
        let (reason, status) = self.serve().await;
        if let Some(status) = status {
            warn!(node = %self.node, code = ?status.code(), error = status.message(), "ending stream");
            let _ = self.tx.send(Err(status)).await;
        } else {
            info!(node = %self.node, reason = reason.label(), "stream ended");
        }
        self.agents.disconnected(&self.node);
        // From now on the operator says nothing to this agent: what it announces lapses within
        // one lease, and only then may another node take its VIPs.
        let lease = Duration::from_millis(self.l2_timing().lease_ms as u64);
        self.agents
            .presence
            .disconnected(&self.node, Instant::now(), lease);
        self.agents.ended(reason);
    }

    /// Heartbeat interval, agent timeout and lease: L2 announcements need them short (their
    /// failover rests on them), so while they are on, the node's intent sets them.
    fn l2_timing(&self) -> Timing {
        let v = self.rx.borrow();
        let dp = v.intent.as_ref().map(|p| &p.intent.datapath);
        let defaults = cilia_model::service::DatapathConfig::default();
        let dp = dp.unwrap_or(&defaults);
        if dp.l2_announcements {
            Timing {
                heartbeat: Duration::from_millis(dp.l2_retry_period_ms as u64)
                    .min(self.config.heartbeat_interval),
                timeout: Duration::from_millis(dp.l2_renew_deadline_ms as u64)
                    .min(self.config.agent_timeout),
                lease_ms: dp.l2_lease_ms,
            }
        } else {
            Timing {
                heartbeat: self.config.heartbeat_interval,
                timeout: self.config.agent_timeout,
                lease_ms: dp.l2_lease_ms,
            }
        }
    }

    async fn serve(&mut self) -> (EndReason, Option<Status>) {
        let mut next_beat = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.drain.changed() => return (EndReason::Shutdown, None),
                r = self.rx.changed() => {
                    if r.is_err() {
                        return (EndReason::Shutdown, None);
                    }
                    if !self.forward().await {
                        return (EndReason::AgentGone, None);
                    }
                }
                m = self.inbound.message() => match m {
                    Ok(Some(m)) => {
                        if let Err(status) = self.received(&m) {
                            return (EndReason::InvalidArgument, Some(status));
                        }
                    }
                    Ok(None) => return (EndReason::AgentGone, None),
                    Err(e) if is_disconnect(&e) => return (EndReason::AgentGone, None),
                    Err(e) => return (EndReason::InvalidArgument, Some(undecodable(&e))),
                },
                _ = tokio::time::sleep_until(next_beat) => {
                    let timing = self.l2_timing();
                    next_beat = tokio::time::Instant::now() + timing.heartbeat;
                    if self.last_heard.elapsed() > timing.timeout {
                        // The node's L2 announcements lapse from here (see `run`).
                        return (
                            EndReason::Silent,
                            Some(Status::deadline_exceeded(format!(
                                "no heartbeat or ack from node {} for {:?}",
                                self.node, timing.timeout
                            ))),
                        );
                    }
                    let version = {
                        let v = self.rx.borrow();
                        if v.intent.is_some() { v.version } else { 0 }
                    };
                    let hb = heartbeat_update(unix_millis(), version);
                    self.agents.heartbeat_sent(hb.encoded_len());
                    if self.tx.send(Ok(hb)).await.is_err() {
                        return (EndReason::AgentGone, None);
                    }
                }
            }
        }
    }

    /// Sends what the node's view requires; false when the agent is gone.
    async fn forward(&mut self) -> bool {
        let view = self.rx.borrow_and_update().clone();
        let Some((next, update)) = next_update(self.sent.as_ref(), &view) else {
            return true;
        };
        let msg = update.to_proto(&next);
        let kind = match &update {
            Update::Snapshot => SentKind::Snapshot,
            Update::Delta { .. } => SentKind::Delta,
        };
        debug!(node = %self.node, version = next.version, ?kind, bytes = msg.encoded_len(), "sending");
        self.agents.sent(&self.node, kind, msg.encoded_len());
        self.highest_sent = self.highest_sent.max(next.version);
        self.sent = Some(next);
        self.tx.send(Ok(msg)).await.is_ok()
    }

    /// Handles one agent message after the hello; an invalid one ends the stream.
    fn received(&mut self, m: &ProtoAgentMessage) -> Result<(), Status> {
        let msg =
            agent_message_from_proto(m).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.last_heard = Instant::now();
        match msg {
            AgentMessage::Ack { version } => {
                if version > self.highest_sent {
                    return Err(Status::invalid_argument(format!(
                        "ack.version = {version}: only up to {} was sent",
                        self.highest_sent
                    )));
                }
                debug!(node = %self.node, version, "ack");
                self.agents.acked(&self.node, version);
            }
            AgentMessage::Heartbeat { up_interfaces, .. } => {
                self.agents.seen(&self.node);
                self.agents.presence.interfaces(&self.node, up_interfaces);
            }
            AgentMessage::Resync { reason } => {
                warn!(node = %self.node, reason = %reason.chars().take(200).collect::<String>(), "agent asks for a resync; sending a snapshot");
                self.agents.resync_requested(&self.node);
                self.agents.seen(&self.node);
                self.sent = None;
                self.rx.mark_changed();
            }
            AgentMessage::Hello(_) => {
                return Err(Status::invalid_argument(
                    "msg: NodeHello is only valid as the first message",
                ));
            }
        }
        Ok(())
    }
}

/// Whether an inbound error is the connection going away rather than a bad message: a message that
/// does not decode surfaces as INTERNAL, a reset or closed connection as anything else.
fn is_disconnect(e: &Status) -> bool {
    e.code() != tonic::Code::Internal
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
