//! The intent stream's client: subscribes to the operator over mutual TLS, turns snapshots and
//! deltas into the intent the agent holds (through the pure `cilia_model::delta::apply`), hands it to
//! the apply loop, and acks what the loop applied. Reconnects with backoff; while the operator is
//! away the agent keeps serving what it holds (fail static).
//!
//! The decisions are pure (`on_update`); `IntentStream::run` is the plumbing around them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cilia_datapath::l2::LinkState;
use cilia_model::{IntentDigest, NodeIntent};
use cilia_proto::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use cilia_proto::v1::IntentUpdate;
use cilia_proto::v1::intent_service_client::IntentServiceClient;
use cilia_proto::{AgentMessage, Hello, Update, agent_message_to_proto, update_from_proto};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

/// File in the state directory holding the last applied intent, so a restarted agent serves it at
/// once and tells the operator what it holds (and gets no snapshot if that is still current).
pub const HELD_INTENT_FILE: &str = "intent.json";

/// The intent the agent holds, with its version under the operator that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldIntent {
    pub version: u64,
    pub intent: NodeIntent,
}

/// The held intent on disk: with its digest, so a damaged or edited file is not trusted.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeldIntentFile {
    version: u64,
    digest: IntentDigest,
    intent: NodeIntent,
}

impl HeldIntent {
    pub fn new(version: u64, intent: NodeIntent) -> Self {
        HeldIntent { version, intent }
    }

    /// Computed when needed (a hello, a write to disk), not on every update: it hashes the whole
    /// intent.
    pub fn digest(&self) -> IntentDigest {
        self.intent.digest()
    }

    /// Reads the held intent of a previous run; `None` if there is none or it does not check out
    /// (a digest that does not match its intent is not trusted).
    pub fn load(state_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(state_dir.join(HELD_INTENT_FILE)).ok()?;
        let f: HeldIntentFile = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "ignoring an unreadable {HELD_INTENT_FILE}");
                return None;
            }
        };
        (f.intent.digest() == f.digest && f.version > 0).then_some(HeldIntent {
            version: f.version,
            intent: f.intent,
        })
    }

    /// Writes it atomically (tmp + rename) when it differs from what is on disk.
    pub fn store(&self, state_dir: &Path) -> std::io::Result<()> {
        let path = state_dir.join(HELD_INTENT_FILE);
        let f = HeldIntentFile {
            version: self.version,
            digest: self.digest(),
            intent: self.intent.clone(),
        };
        let want = serde_json::to_vec_pretty(&f).expect("held intents serialize");
        if std::fs::read(&path).ok().as_deref() == Some(&want[..]) {
            return Ok(());
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, &want)?;
        std::fs::rename(&tmp, &path)
    }
}

/// What to do with one update from the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Hold (and apply) this intent.
    Hold(HeldIntent),
    /// Keep what is held and ask for a snapshot, for this reason.
    Resync(String),
    /// A heartbeat: the operator is at this version of the node's intent.
    OperatorAt(u64),
}

/// Decides what an update means for an agent of `node` holding `held`. Pure: validation, the gap
/// check (a delta must build on exactly the held version) and the delta itself.
pub fn on_update(node: &str, held: Option<&HeldIntent>, m: &IntentUpdate) -> Step {
    let update = match update_from_proto(m) {
        Ok(u) => u,
        Err(e) => return Step::Resync(format!("invalid update: {e}")),
    };
    match update {
        Update::Heartbeat { intent_version, .. } => Step::OperatorAt(intent_version),
        Update::Snapshot { version, intent } => {
            if intent.node != node {
                return Step::Resync(format!(
                    "snapshot {version} is for node {:?}, this is {node:?}",
                    intent.node
                ));
            }
            Step::Hold(HeldIntent::new(version, intent))
        }
        Update::Delta {
            version,
            base_version,
            delta,
        } => {
            let Some(h) = held else {
                return Step::Resync(format!(
                    "delta {version} on base {base_version}, but no intent is held"
                ));
            };
            if h.version != base_version {
                return Step::Resync(format!(
                    "gap: delta {version} on base {base_version}, but version {} is held",
                    h.version
                ));
            }
            match cilia_model::delta::apply(&h.intent, &delta) {
                Ok(intent) => Step::Hold(HeldIntent::new(version, intent)),
                Err(e) => Step::Resync(format!("delta {version} does not apply: {e}")),
            }
        }
    }
}

/// The stream as `cilia-dbg status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStatus {
    /// The operator's address (`host:port`).
    pub operator: String,
    pub connected: bool,
    /// The version the apply loop last applied to the kernel (and acked).
    pub applied_version: u64,
    /// The operator's version of this node's intent, as of its last message.
    pub operator_version: u64,
    pub snapshots_received: u64,
    pub deltas_received: u64,
    pub resyncs_requested: u64,
    pub last_resync_reason: Option<String>,
    /// Why the last session ended or could not start.
    pub last_error: Option<String>,
    /// Since when the operator has been unreachable (Unix ms); `None` while connected. L2
    /// announcements lapse one lease after the operator's last word (see `StreamL2::heard`).
    pub disconnected_since_unix_ms: Option<u64>,
}

impl StreamStatus {
    /// The `Intent stream:` line of `cilia-dbg status`.
    pub fn summary(&self) -> String {
        if self.connected {
            format!(
                "connected to {}, applied version {} (operator at {})",
                self.operator, self.applied_version, self.operator_version
            )
        } else {
            let since = self
                .disconnected_since_unix_ms
                .map(|t| format!(" for {}s", unix_ms().saturating_sub(t) / 1000))
                .unwrap_or_default();
            let why = self
                .last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            format!(
                "disconnected from {}{since}{why}; serving applied version {} (operator was at {})",
                self.operator, self.applied_version, self.operator_version
            )
        }
    }
}

/// The client's TLS material: the CA that signs the operator, and this node's certificate.
#[derive(Clone)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// The name to verify the operator's certificate against; default: the host of the address.
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct TlsDirError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl ClientTls {
    /// Reads the mounted agent Secret: `ca.crt`, and this node's certificate — `<node>.crt` /
    /// `<node>.key` when the Secret holds one per node (the chart's layout), else `tls.crt` /
    /// `tls.key` (a directory made for this node alone, as `cilia-operator certs` writes).
    pub fn read(dir: &Path, node: &str, server_name: Option<String>) -> Result<Self, TlsDirError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read(&path).map_err(|source| TlsDirError { path, source })
        };
        let (cert, key) = if dir.join(format!("{node}.crt")).exists() {
            (format!("{node}.crt"), format!("{node}.key"))
        } else {
            (CERT_FILE.to_string(), KEY_FILE.to_string())
        };
        Ok(ClientTls {
            ca: read(CA_FILE)?,
            cert: read(&cert)?,
            key: read(&key)?,
            server_name,
        })
    }
}

/// How the client reaches the operator.
#[derive(Clone)]
pub struct StreamConfig {
    /// `https://host:port`.
    pub operator: String,
    pub tls: ClientTls,
    pub node: String,
    pub agent_version: String,
    /// How often a heartbeat goes to the operator; an operator silent for 4 of these is dropped.
    pub heartbeat_interval: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("invalid operator address {0:?}: {1}")]
    Address(String, #[source] tonic::transport::Error),
    #[error("connecting: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("operator refused the stream: {}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("stream broke: {}: {}", .0.code(), .0.message())]
    Broken(tonic::Status),
    #[error("operator closed the stream")]
    Closed,
    #[error("operator silent for {0:?}")]
    Silent(Duration),
}

/// The client task's ends: it publishes the held intent and its status, and learns from the apply
/// loop which version was applied.
pub struct IntentStream {
    pub config: StreamConfig,
    pub held: watch::Sender<Option<Arc<HeldIntent>>>,
    pub applied: watch::Receiver<u64>,
    pub status: watch::Sender<StreamStatus>,
    pub l2: StreamL2,
}

/// The stream's part in L2 announcements: it reports the node's up interfaces to the operator
/// (the operator announces VIPs only on those) and publishes when the operator was last heard.
#[derive(Default)]
pub struct StreamL2 {
    /// The node's links (a link monitor keeps it current); `None`: report no interface.
    pub links: Option<watch::Receiver<Vec<LinkState>>>,
    /// Set to the instant of every operator message once the session is in step with the
    /// operator: a snapshot or delta arrived, or a heartbeat confirmed the held version. Before
    /// that, a reconnecting agent may hold VIPs the operator has since given to another node, so
    /// its lease must not be renewed on them.
    pub heard: Option<watch::Sender<Option<Instant>>>,
}

impl StreamL2 {
    fn up_interfaces(&self) -> BTreeSet<String> {
        self.links
            .as_ref()
            .map(|l| crate::announcer::reportable_interfaces(&l.borrow()))
            .unwrap_or_default()
    }

    async fn links_changed(&mut self) {
        if let Some(l) = &mut self.links
            && l.changed().await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }
}

/// How often to heartbeat the operator: while the held intent has L2 announcements on, every
/// `l2-announcements-retry-period` (the operator declares the agent gone after the renew deadline
/// and hands its VIPs on); otherwise the configured interval. Pure.
pub fn heartbeat_interval(configured: Duration, held: Option<&HeldIntent>) -> Duration {
    match held.map(|h| &h.intent.datapath) {
        Some(dp) if dp.l2_announcements && dp.l2_retry_period_ms > 0 => {
            Duration::from_millis(u64::from(dp.l2_retry_period_ms)).min(configured)
        }
        _ => configured,
    }
}

impl IntentStream {
    /// Runs sessions until `shutdown` turns, backing off between failed ones.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut delay = self.config.backoff_min;
        loop {
            let (result, heard) = self.session(&mut shutdown).await;
            let err = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            if heard {
                delay = self.config.backoff_min;
            }
            warn!(error = %err, retry_in = ?delay, "intent stream down; serving the held intent meanwhile");
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(err.to_string());
                s.disconnected_since_unix_ms.get_or_insert_with(unix_ms);
            });
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(jitter(delay)) => {}
            }
            delay = (delay * 2).min(self.config.backoff_max);
        }
    }

    /// One connection: hello, then updates in and acks and heartbeats out. Returns whether anything
    /// was heard from the operator (a working session resets the backoff).
    async fn session(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> (Result<(), SessionError>, bool) {
        let c = &self.config;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&c.tls.ca))
            .identity(Identity::from_pem(&c.tls.cert, &c.tls.key));
        if let Some(n) = &c.tls.server_name {
            tls = tls.domain_name(n.clone());
        }
        let endpoint =
            match Endpoint::from_shared(c.operator.clone()).and_then(|e| e.tls_config(tls)) {
                Ok(e) => e
                    .connect_timeout(Duration::from_secs(5))
                    .http2_keep_alive_interval(c.heartbeat_interval)
                    .keep_alive_timeout(c.heartbeat_interval * 2)
                    .keep_alive_while_idle(true),
                Err(e) => return (Err(SessionError::Address(c.operator.clone(), e)), false),
            };
        let channel = match endpoint.connect().await {
            Ok(ch) => ch,
            Err(e) => return (Err(SessionError::Connect(e)), false),
        };
        let held_now = self.held.borrow().clone();
        let hello = Hello {
            node: c.node.clone(),
            agent_version: c.agent_version.clone(),
            held: held_now.as_ref().map(|h| (h.version, h.digest())),
            up_interfaces: self.l2.up_interfaces(),
        };
        let mut reported_up = hello.up_interfaces.clone();
        let (tx, rx) = mpsc::channel(16);
        let _ = tx.try_send(agent_message_to_proto(&AgentMessage::Hello(hello)));
        let mut inbound = match IntentServiceClient::new(channel)
            .subscribe(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => return (Err(SessionError::Refused(s)), false),
        };
        info!(operator = %c.operator, held_version = held_now.as_ref().map(|h| h.version).unwrap_or(0), "intent stream open");
        self.status.send_modify(|s| {
            s.connected = true;
            s.disconnected_since_unix_ms = None;
            s.last_error = None;
        });

        let mut next_beat = tokio::time::Instant::now();
        let mut every = heartbeat_interval(c.heartbeat_interval, held_now.as_deref());
        let mut last_heard = Instant::now();
        let mut heard = false;
        // In step with the operator (see `StreamL2::heard`).
        let mut in_step = false;
        // Only versions received in this session are acked: the numbering is this operator's. (A
        // resumed intent needs no ack: the operator counts it as applied when it accepts the hello.)
        let mut received_up_to = 0;
        let mut acked = *self.applied.borrow_and_update();
        self.status.send_modify(|s| s.applied_version = acked);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => return (Ok(()), heard),
                m = inbound.message() => {
                    let m = match m {
                        Ok(Some(m)) => m,
                        Ok(None) => return (Err(SessionError::Closed), heard),
                        Err(s) => return (Err(SessionError::Broken(s)), heard),
                    };
                    last_heard = Instant::now();
                    heard = true;
                    let held = self.held.borrow().clone();
                    let step = on_update(&c.node, held.as_deref(), &m);
                    in_step |= match &step {
                        Step::Hold(_) => true,
                        Step::OperatorAt(v) => held.as_ref().map(|h| h.version).unwrap_or(0) == *v,
                        Step::Resync(_) => false,
                    };
                    match step {
                        Step::OperatorAt(v) => self.status.send_modify(|s| s.operator_version = v),
                        Step::Hold(h) => {
                            let snapshot = matches!(m.msg, Some(cilia_proto::v1::intent_update::Msg::Snapshot(_)));
                            info!(version = h.version, routes = h.intent.routes.len(), services = h.intent.services.len(), snapshot, "new intent");
                            received_up_to = received_up_to.max(h.version);
                            let v = h.version;
                            self.status.send_modify(|s| {
                                s.operator_version = s.operator_version.max(v);
                                if snapshot { s.snapshots_received += 1 } else { s.deltas_received += 1 }
                            });
                            self.held.send_replace(Some(Arc::new(h)));
                            // L2 announcements just turned on (or their retry period shrank): the
                            // operator times this agent out after the renew deadline from now on,
                            // so beat now and at the new pace, not at the old one.
                            let now_every = heartbeat_interval(c.heartbeat_interval, self.held.borrow().as_deref());
                            if now_every < every {
                                next_beat = tokio::time::Instant::now();
                            }
                            every = now_every;
                        }
                        Step::Resync(reason) => {
                            warn!(%reason, "cannot use the operator's update; keeping the held intent and asking for a snapshot");
                            self.status.send_modify(|s| {
                                s.resyncs_requested += 1;
                                s.last_resync_reason = Some(reason.clone());
                            });
                            if tx.send(agent_message_to_proto(&AgentMessage::Resync { reason })).await.is_err() {
                                return (Err(SessionError::Closed), heard);
                            }
                        }
                    }
                    // After the held intent is published, so the apply loop never renews the
                    // lease on an intent older than this message.
                    if in_step && let Some(h) = &self.l2.heard {
                        h.send_replace(Some(last_heard));
                    }
                }
                r = self.applied.changed() => {
                    if r.is_err() {
                        return (Ok(()), heard);
                    }
                    let v = *self.applied.borrow_and_update();
                    self.status.send_modify(|s| s.applied_version = v);
                    if v > acked && v <= received_up_to {
                        acked = v;
                        if tx.send(agent_message_to_proto(&AgentMessage::Ack { version: v })).await.is_err() {
                            return (Err(SessionError::Closed), heard);
                        }
                    }
                }
                _ = self.l2.links_changed() => {
                    // The operator must learn at once that an interface lost its carrier: it
                    // moves the VIPs announced there.
                    let up = self.l2.up_interfaces();
                    if up != reported_up {
                        info!(up = ?up, "up interfaces changed; telling the operator");
                        reported_up = up.clone();
                        let hb = AgentMessage::Heartbeat { unix_millis: unix_ms(), up_interfaces: up };
                        if tx.send(agent_message_to_proto(&hb)).await.is_err() {
                            return (Err(SessionError::Closed), heard);
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_beat) => {
                    every = heartbeat_interval(c.heartbeat_interval, self.held.borrow().as_deref());
                    next_beat = tokio::time::Instant::now() + every;
                    // An operator silent for 4 beats is redialled; not sooner than 1 s, so a busy
                    // node does not drop a working stream (the operator reads a dropped stream as
                    // a dead agent and moves its VIPs).
                    let silent_after = (every * 4).max(Duration::from_secs(1)).min(c.heartbeat_interval * 4);
                    if last_heard.elapsed() > silent_after {
                        return (Err(SessionError::Silent(silent_after)), heard);
                    }
                    reported_up = self.l2.up_interfaces();
                    let hb = AgentMessage::Heartbeat { unix_millis: unix_ms(), up_interfaces: reported_up.clone() };
                    if tx.send(agent_message_to_proto(&hb)).await.is_err() {
                        return (Err(SessionError::Closed), heard);
                    }
                }
            }
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `d` ± 20%, so agents that lost one operator do not all come back in the same instant.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let f = 0.8 + 0.4 * (nanos % 1000) as f64 / 1000.0;
    d.mul_f64(f)
}

#[cfg(test)]
mod tests;
