//! The client's decisions on their own, then the client against the real operator (and a scripted
//! fake one) over mutual TLS on loopback, with a stand-in apply loop that applies by acking.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Mutex;

use cilia_model::delta::Delta;
use cilia_model::{ClusterState, NodeInfo, RoutingConfig, RoutingMode, node_intent};
use cilia_operator::certs::{self, Bundle, CertRequest};
use cilia_operator::intents::agents::Agents;
use cilia_operator::tls::TlsFiles;
use cilia_operator::{IntentIndex, IntentServer};
use cilia_proto::v1;
use cilia_proto::{delta_update, heartbeat_update, snapshot_update};
use futures::{Stream, StreamExt};

use super::*;

const NODE: &str = "worker";

fn mk_node(name: &str, ip: u8, cidr: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        internal_ip: Ipv4Addr::new(172, 18, 0, ip),
        pod_cidr: Some(cidr.parse().unwrap()),
        labels: Default::default(),
    }
}

fn lab() -> ClusterState {
    ClusterState {
        nodes: vec![
            mk_node("control-plane", 2, "10.244.0.0/24"),
            mk_node("worker", 3, "10.244.1.0/24"),
            mk_node("worker2", 4, "10.244.2.0/24"),
        ],
        routing: RoutingConfig {
            mode: RoutingMode::Native,
            auto_direct_node_routes: true,
            native_routing_cidr: None,
        },
        ..Default::default()
    }
}

/// `lab()` with worker2 moved to another address: worker's route to it changes.
fn lab_moved() -> ClusterState {
    let mut c = lab();
    c.nodes[2].internal_ip = Ipv4Addr::new(172, 18, 0, 44);
    c
}

fn held(version: u64, c: &ClusterState) -> HeldIntent {
    HeldIntent::new(version, node_intent(c, NODE).unwrap())
}

// ---- on_update, pure ----

// A snapshot is held as it is; a delta on the held version is applied.
#[test]
fn snapshots_and_deltas_on_the_held_version_are_held() {
    let a = node_intent(&lab(), NODE).unwrap();
    let b = node_intent(&lab_moved(), NODE).unwrap();
    let Step::Hold(h1) = on_update(NODE, None, &snapshot_update(1, &a)) else {
        panic!("held")
    };
    assert_eq!(h1, HeldIntent::new(1, a.clone()));
    let d = cilia_model::delta::diff(&a, &b);
    assert_eq!(
        on_update(NODE, Some(&h1), &delta_update(2, 1, &d)),
        Step::Hold(HeldIntent::new(2, b))
    );
    assert_eq!(
        on_update(NODE, Some(&h1), &heartbeat_update(0, 9)),
        Step::OperatorAt(9)
    );
}

// A gap, a delta with nothing held, a snapshot for another node, an invalid field: each asks for a
// resync, naming why.
#[test]
fn unusable_updates_ask_for_a_resync_with_the_reason() {
    let h1 = held(1, &lab());
    let empty = Delta::default();
    let reason = |s: Step| match s {
        Step::Resync(r) => r,
        other => panic!("expected a resync, got {other:?}"),
    };
    assert!(reason(on_update(NODE, Some(&h1), &delta_update(6, 5, &empty))).contains("gap"));
    assert!(reason(on_update(NODE, None, &delta_update(2, 1, &empty))).contains("no intent"));
    let other = node_intent(&lab(), "worker2").unwrap();
    assert!(reason(on_update(NODE, Some(&h1), &snapshot_update(3, &other))).contains("worker2"));
    let bad = v1::IntentUpdate {
        msg: Some(v1::intent_update::Msg::Delta(v1::Delta {
            version: 2,
            base_version: 1,
            upserts: vec![v1::Entry {
                entry: Some(v1::entry::Entry::Route(v1::Route {
                    dst: "10.244.9.1/24".into(),
                    via: "172.18.0.9".into(),
                })),
            }],
            deletes: vec![],
        })),
    };
    assert!(reason(on_update(NODE, Some(&h1), &bad)).contains("delta.upserts[0].route.dst"));
    assert!(reason(on_update(NODE, Some(&h1), &v1::IntentUpdate { msg: None })).contains("msg"));
}

/// `lab()` with one Service `default/web` whose one endpoint is at `10.244.1.<ip>`, and the given
/// masquerade setting.
fn lab_with_web(ip: u8, masquerade: bool) -> ClusterState {
    use cilia_model::service::*;
    let mut c = lab();
    c.services.push(ServiceInfo {
        namespace: "default".into(),
        name: "web".into(),
        service_type: ServiceType::NodePort,
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![ServicePortInfo {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: Some(30080),
            target_port: None,
        }],
        external_traffic_local: true,
        internal_traffic_local: false,
        session_affinity_timeout: None,
        load_balancer_class: None,
        forwarding_mode: None,
        algorithm: None,
        labels: Default::default(),
    });
    c.endpoint_slices.push(EndpointSliceInfo {
        namespace: "default".into(),
        name: "web-1".into(),
        service: "web".into(),
        endpoints: vec![EndpointInfo {
            addresses: vec![Ipv4Addr::new(10, 244, 1, ip)],
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some(NODE.into()),
        }],
        ports: vec![EndpointPortInfo {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
    });
    c.datapath.masquerade = masquerade;
    c
}

// Services and datapath settings arrive like routes: in the snapshot, then as deltas of only the
// changed Service or setting; a Service that goes away is deleted.
#[test]
fn services_and_datapath_settings_follow_deltas() {
    let states = [
        lab_with_web(5, false),
        lab_with_web(6, false),
        lab_with_web(6, true),
        {
            let mut c = lab();
            c.datapath.masquerade = true;
            c
        },
    ];
    let first = node_intent(&states[0], NODE).unwrap();
    assert_eq!(first.services.len(), 1);
    let Step::Hold(mut h) = on_update(NODE, None, &snapshot_update(1, &first)) else {
        panic!("held")
    };
    let mut prev = first;
    for (v, c) in states.iter().enumerate().skip(1) {
        let next = node_intent(c, NODE).unwrap();
        let d = cilia_model::delta::diff(&prev, &next);
        assert_eq!(d.upserts.len() + d.deletes.len(), 1, "one entry: {d:?}");
        let v = v as u64 + 1;
        let Step::Hold(n) = on_update(NODE, Some(&h), &delta_update(v, v - 1, &d)) else {
            panic!("held")
        };
        assert_eq!(n, HeldIntent::new(v, next.clone()));
        h = n;
        prev = next;
    }
    assert!(h.intent.services.is_empty() && h.intent.datapath.masquerade);
}

// The held intent survives a restart through the state directory, and a tampered file is not
// trusted.
#[test]
fn held_intent_round_trips_through_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    assert!(HeldIntent::load(dir.path()).is_none());
    let h = held(4, &lab_with_web(5, true));
    h.store(dir.path()).unwrap();
    assert_eq!(HeldIntent::load(dir.path()), Some(h.clone()));
    let path = dir.path().join(HELD_INTENT_FILE);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    json["intent"]["routes"] = serde_json::json!([]);
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
    assert!(HeldIntent::load(dir.path()).is_none());
}

#[test]
fn status_line_reads_like_cilium_dbg() {
    let s = StreamStatus {
        operator: "172.18.0.2:4250".into(),
        connected: true,
        applied_version: 3,
        operator_version: 3,
        ..Default::default()
    };
    assert_eq!(
        s.summary(),
        "connected to 172.18.0.2:4250, applied version 3 (operator at 3)"
    );
    let down = StreamStatus {
        connected: false,
        last_error: Some("connecting: refused".into()),
        ..s
    };
    assert!(
        down.summary()
            .starts_with("disconnected from 172.18.0.2:4250")
    );
    assert!(down.summary().contains("refused"));
}

// ---- against an operator over mutual TLS ----

fn bundle() -> Bundle {
    certs::generate(&CertRequest::lab(&[NODE, "worker2"], &[])).unwrap()
}

fn server_tls(b: &Bundle) -> tonic::transport::ServerTlsConfig {
    TlsFiles {
        ca: b.ca_pem.clone().into(),
        cert: b.server.cert_pem.clone().into(),
        key: b.server.key_pem.clone().into(),
    }
    .server_config()
}

struct Operator {
    cluster: watch::Sender<Arc<ClusterState>>,
    agents: Arc<Agents>,
    drain: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    async fn stop(self) {
        let _ = self.drain.send(true);
        let _ = self.task.await;
    }
}

async fn operator(b: &Bundle, listener: tokio::net::TcpListener, c: ClusterState) -> Operator {
    let index = IntentIndex::shared();
    index.lock().unwrap().apply(&c);
    let (cluster, cluster_rx) = watch::channel(Arc::new(c));
    let (drain, drain_rx) = watch::channel(false);
    tokio::spawn(cilia_operator::cluster_file::feed_index(
        cluster_rx,
        index.clone(),
        drain_rx.clone(),
    ));
    let agents = Arc::new(Agents::default());
    let config = cilia_operator::StreamConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..Default::default()
    };
    let server = IntentServer::new(index, agents.clone(), config, drain_rx.clone());
    let tls = server_tls(b);
    let mut d = drain_rx;
    let task = tokio::spawn(async move {
        let _ = server
            .serve(listener, tls, async move {
                let _ = d.changed().await;
            })
            .await;
    });
    Operator {
        cluster,
        agents,
        drain,
        task,
    }
}

struct Client {
    held: watch::Receiver<Option<Arc<HeldIntent>>>,
    status: watch::Receiver<StreamStatus>,
    shutdown: watch::Sender<bool>,
}

/// Starts the client holding `held`, with an apply loop that "applies" every held intent at once.
fn client(b: &Bundle, addr: SocketAddr, held: Option<HeldIntent>) -> Client {
    client_with(
        b,
        addr,
        held,
        StreamL2::default(),
        Duration::from_millis(100),
    )
}

/// [`client`] with L2 ends and a heartbeat interval.
fn client_with(
    b: &Bundle,
    addr: SocketAddr,
    held: Option<HeldIntent>,
    l2: StreamL2,
    heartbeat_interval: Duration,
) -> Client {
    let pair = &b.nodes.iter().find(|(n, _)| n == NODE).unwrap().1;
    let (held_tx, held_rx) = watch::channel(held.map(Arc::new));
    let (applied_tx, applied_rx) = watch::channel(0u64);
    let (status_tx, status_rx) = watch::channel(StreamStatus::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let stream = IntentStream {
        config: StreamConfig {
            operator: format!("https://{addr}"),
            tls: ClientTls {
                ca: b.ca_pem.clone().into(),
                cert: pair.cert_pem.clone().into(),
                key: pair.key_pem.clone().into(),
                server_name: Some("localhost".into()),
            },
            node: NODE.into(),
            agent_version: "test".into(),
            heartbeat_interval,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
        },
        held: held_tx,
        applied: applied_rx,
        status: status_tx,
        l2,
    };
    let mut loop_rx = held_rx.clone();
    tokio::spawn(async move {
        loop {
            if let Some(h) = loop_rx.borrow_and_update().clone() {
                applied_tx.send_replace(h.version);
            }
            if loop_rx.changed().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(stream.run(shutdown_rx));
    Client {
        held: held_rx,
        status: status_rx,
        shutdown,
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not within 5s: {what}");
}

fn held_version(c: &Client) -> Option<u64> {
    c.held.borrow().as_ref().map(|h| h.version)
}

async fn bind() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

// A fresh agent gets a snapshot, then a delta; the operator records its acks.
#[tokio::test]
async fn follows_the_operator_and_acks() {
    let b = bundle();
    let (l, addr) = bind().await;
    let op = operator(&b, l, lab()).await;
    let c = client(&b, addr, None);
    eventually("snapshot held", || held_version(&c) == Some(1)).await;
    op.cluster.send(Arc::new(lab_moved())).unwrap();
    eventually("delta held", || held_version(&c) == Some(2)).await;
    assert_eq!(
        c.held.borrow().as_ref().unwrap().intent,
        node_intent(&lab_moved(), NODE).unwrap()
    );
    eventually("ack recorded", || {
        op.agents
            .record(NODE)
            .is_some_and(|r| r.applied_version == 2)
    })
    .await;
    let s = c.status.borrow().clone();
    assert_eq!((s.snapshots_received, s.deltas_received), (1, 1));
    assert!(s.connected);
    let _ = c.shutdown.send(true);
    op.stop().await;
}

// An agent that restarts holding the current intent gets no snapshot — also from an operator that
// restarted and numbers from 1 again.
#[tokio::test]
async fn a_current_agent_resumes_without_a_snapshot() {
    let b = bundle();
    let (l, addr) = bind().await;
    let op = operator(&b, l, lab()).await;
    let c = client(&b, addr, Some(held(7, &lab())));
    eventually("connected", || c.status.borrow().connected).await;
    eventually("operator at 7", || c.status.borrow().operator_version == 7).await;
    assert_eq!(c.status.borrow().snapshots_received, 0);
    assert_eq!(op.agents.record(NODE).unwrap().snapshots_sent, 0);
    assert_eq!(op.agents.record(NODE).unwrap().applied_version, 7);
    // The next change builds on the agent's numbering.
    op.cluster.send(Arc::new(lab_moved())).unwrap();
    eventually("delta 8 held", || held_version(&c) == Some(8)).await;
    assert_eq!(c.status.borrow().snapshots_received, 0);
    let _ = c.shutdown.send(true);
    op.stop().await;
}

// The operator goes away: the agent keeps its intent, and converges once an operator (restarted,
// with a changed cluster) is back on the same address.
#[tokio::test]
async fn converges_after_the_operator_comes_back() {
    let b = bundle();
    let (l, addr) = bind().await;
    let op = operator(&b, l, lab()).await;
    let c = client(&b, addr, None);
    eventually("snapshot held", || held_version(&c) == Some(1)).await;
    op.stop().await;
    eventually("disconnected", || !c.status.borrow().connected).await;
    assert_eq!(held_version(&c), Some(1), "fail static: the intent stays");

    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let op = operator(&b, l, lab_moved()).await;
    eventually("new intent held", || {
        c.held
            .borrow()
            .as_ref()
            .is_some_and(|h| h.intent == node_intent(&lab_moved(), NODE).unwrap())
    })
    .await;
    // The restarted operator numbered from 1; the snapshot came after what the agent held.
    assert_eq!(held_version(&c), Some(2));
    eventually("connected", || c.status.borrow().connected).await;
    let _ = c.shutdown.send(true);
    op.stop().await;
}

/// An operator that sends a fixed script and records what the agent says.
struct Scripted {
    script: Mutex<Option<Vec<v1::IntentUpdate>>>,
    seen: mpsc::UnboundedSender<cilia_proto::AgentMessage>,
}

type Out = Pin<Box<dyn Stream<Item = Result<v1::IntentUpdate, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl v1::intent_service_server::IntentService for Scripted {
    type SubscribeStream = Out;

    async fn subscribe(
        &self,
        req: tonic::Request<tonic::Streaming<v1::AgentMessage>>,
    ) -> Result<tonic::Response<Out>, tonic::Status> {
        let mut inbound = req.into_inner();
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let _ = seen.send(cilia_proto::agent_message_from_proto(&m).unwrap());
            }
        });
        let script = self.script.lock().unwrap().take().unwrap_or_default();
        let out =
            futures::stream::iter(script.into_iter().map(Ok)).chain(futures::stream::pending());
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

// Malformed updates and gaps do not crash the agent: it keeps what it holds, says why, and asks
// for a snapshot; a good snapshot afterwards is taken.
#[tokio::test]
async fn malformed_updates_keep_the_intent_and_ask_for_a_resync() {
    let b = bundle();
    let (l, addr) = bind().await;
    let a = node_intent(&lab(), NODE).unwrap();
    let moved = node_intent(&lab_moved(), NODE).unwrap();
    let bad_cidr = v1::IntentUpdate {
        msg: Some(v1::intent_update::Msg::Delta(v1::Delta {
            version: 2,
            base_version: 1,
            upserts: vec![v1::Entry {
                entry: Some(v1::entry::Entry::Route(v1::Route {
                    dst: "not-a-cidr".into(),
                    via: "172.18.0.9".into(),
                })),
            }],
            deletes: vec![],
        })),
    };
    let script = vec![
        snapshot_update(1, &a),
        bad_cidr,
        delta_update(9, 8, &Delta::default()),
        v1::IntentUpdate { msg: None },
        snapshot_update(10, &moved),
    ];
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let svc = Scripted {
        script: Mutex::new(Some(script)),
        seen: seen_tx,
    };
    let tls = server_tls(&b);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(v1::intent_service_server::IntentServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await
            .unwrap();
    });
    let c = client(&b, addr, None);
    eventually("final snapshot held", || held_version(&c) == Some(10)).await;
    assert_eq!(c.held.borrow().as_ref().unwrap().intent, moved);

    // What the agent said, up to its ack of the good snapshot (heartbeats go on all the while).
    let mut reasons = Vec::new();
    let mut acks = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !acks.contains(&10) {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(cilia_proto::AgentMessage::Resync { reason })) => reasons.push(reason),
            Ok(Some(cilia_proto::AgentMessage::Ack { version })) => acks.push(version),
            Ok(Some(_)) => {}
            other => panic!(
                "no ack of version 10 within 5s ({other:?}); acks {acks:?}, resyncs {reasons:?}"
            ),
        }
    }
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains("delta.upserts[0].route.dst"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("gap"), "{reasons:?}");
    assert!(reasons[2].contains("msg"), "{reasons:?}");
    assert!(acks.contains(&10), "{acks:?}");
    let s = c.status.borrow().clone();
    assert_eq!(s.resyncs_requested, 3);
    assert!(s.connected, "one stream throughout: {s:?}");
    let _ = c.shutdown.send(true);
}

// The chart's agent Secret holds one certificate per node (<node>.crt/.key): the agent takes its
// own; a directory made for one node (tls.crt/tls.key) still works.
#[test]
fn client_tls_picks_this_nodes_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("ca.crt"), b"CA").unwrap();
    std::fs::write(p.join("tls.crt"), b"SHARED").unwrap();
    std::fs::write(p.join("tls.key"), b"SHARED-KEY").unwrap();
    let t = ClientTls::read(p, "worker", None).unwrap();
    assert_eq!(
        (t.cert.as_slice(), t.key.as_slice()),
        (&b"SHARED"[..], &b"SHARED-KEY"[..])
    );
    std::fs::write(p.join("worker.crt"), b"WORKER").unwrap();
    std::fs::write(p.join("worker.key"), b"WORKER-KEY").unwrap();
    std::fs::write(p.join("worker2.crt"), b"OTHER").unwrap();
    let t = ClientTls::read(p, "worker", None).unwrap();
    assert_eq!(
        (t.cert.as_slice(), t.key.as_slice()),
        (&b"WORKER"[..], &b"WORKER-KEY"[..])
    );
    assert_eq!(t.ca, b"CA");
    // A node whose key is missing is an error naming the file, not a fallback to another identity.
    let e = ClientTls::read(p, "worker2", None)
        .err()
        .expect("worker2.key is missing");
    assert!(e.path.ends_with("worker2.key"), "{e}");
}

fn link(name: &str, ifindex: u32, up: bool) -> LinkState {
    LinkState {
        iface: cilia_datapath::l2::L2Interface {
            name: name.into(),
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
        },
        up,
    }
}

fn reported_up(op: &Operator) -> Vec<String> {
    op.agents
        .presence
        .reports(Instant::now())
        .0
        .get(NODE)
        .map(|r| r.up_interfaces.iter().cloned().collect())
        .unwrap_or_default()
}

// The hello carries the node's up interfaces (not the agent's own devices); a carrier change is
// reported at once, not at the next heartbeat; every operator word is published for the lease.
#[tokio::test]
async fn reports_up_interfaces_at_once_and_publishes_the_operators_word() {
    let b = bundle();
    let (l, addr) = bind().await;
    let op = operator(&b, l, lab()).await;
    let (links_tx, links_rx) = watch::channel(vec![
        link("eth0", 2, true),
        link("eth1", 3, false),
        link("cilia_host", 4, true),
    ]);
    let (heard_tx, mut heard_rx) = watch::channel(None::<Instant>);
    let l2 = StreamL2 {
        links: Some(links_rx),
        heard: Some(heard_tx),
    };
    // Heartbeats every 10 s: only the immediate report can be seen within the test.
    let c = client_with(&b, addr, None, l2, Duration::from_secs(10));
    eventually("hello reports eth0", || reported_up(&op) == ["eth0"]).await;
    eventually("snapshot held", || held_version(&c) == Some(1)).await;
    eventually("operator heard", || heard_rx.borrow().is_some()).await;
    let first = heard_rx.borrow_and_update().unwrap();
    // The operator's heartbeats (every 100 ms here) keep it fresh.
    eventually("heard again", || {
        heard_rx.borrow().is_some_and(|t| t > first)
    })
    .await;
    let t = Instant::now();
    links_tx.send_modify(|l| l[1].up = true);
    eventually("eth1 reported", || reported_up(&op) == ["eth0", "eth1"]).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    links_tx.send_modify(|l| l[0].up = false);
    eventually("eth0 gone", || reported_up(&op) == ["eth1"]).await;
    let _ = c.shutdown.send(true);
    op.stop().await;
}

#[test]
fn heartbeats_follow_the_l2_retry_period_while_announcements_are_on() {
    let five = Duration::from_secs(5);
    assert_eq!(heartbeat_interval(five, None), five);
    let mut intent = node_intent(&lab(), NODE).unwrap();
    let h = HeldIntent::new(1, intent.clone());
    assert_eq!(heartbeat_interval(five, Some(&h)), five, "L2 off");
    intent.datapath.l2_announcements = true;
    intent.datapath.l2_retry_period_ms = 100;
    let h = HeldIntent::new(1, intent.clone());
    assert_eq!(
        heartbeat_interval(five, Some(&h)),
        Duration::from_millis(100)
    );
    // Never slower than configured.
    intent.datapath.l2_retry_period_ms = 60_000;
    let h = HeldIntent::new(1, intent);
    assert_eq!(heartbeat_interval(five, Some(&h)), five);
}

/// A client of a [`Scripted`] operator sending `script`, holding `held`; returns the client and
/// the operator's-word channel.
async fn scripted_client(
    b: &Bundle,
    script: Vec<v1::IntentUpdate>,
    held: Option<HeldIntent>,
) -> (Client, watch::Receiver<Option<Instant>>) {
    let (l, addr) = bind().await;
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let svc = Scripted {
        script: Mutex::new(Some(script)),
        seen: seen_tx,
    };
    let tls = server_tls(b);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(v1::intent_service_server::IntentServiceServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await;
    });
    let (heard_tx, heard_rx) = watch::channel(None);
    let l2 = StreamL2 {
        links: None,
        heard: Some(heard_tx),
    };
    (
        client_with(b, addr, held, l2, Duration::from_millis(100)),
        heard_rx,
    )
}

// The operator's word renews the L2 lease only once the session is in step: a reconnecting agent
// may hold VIPs the operator has since moved to another node, so heartbeats that announce another
// version do not count until the snapshot (or a heartbeat confirming the held version) arrived.
#[tokio::test]
async fn the_operators_word_counts_for_the_lease_only_in_step() {
    let b = bundle();
    let held_v5 = HeldIntent::new(5, node_intent(&lab(), NODE).unwrap());
    let moved = node_intent(&lab_moved(), NODE).unwrap();

    let (c, heard) = scripted_client(
        &b,
        vec![heartbeat_update(1, 6), heartbeat_update(2, 6)],
        Some(held_v5.clone()),
    )
    .await;
    eventually("heartbeats received", || {
        let s = c.status.borrow();
        s.connected && s.operator_version == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(heard.borrow().is_none(), "out of step: no lease renewal");
    let _ = c.shutdown.send(true);

    let (c, heard) = scripted_client(&b, vec![heartbeat_update(1, 5)], Some(held_v5.clone())).await;
    eventually("a confirming heartbeat counts", || heard.borrow().is_some()).await;
    let _ = c.shutdown.send(true);

    let (c, heard) = scripted_client(
        &b,
        vec![heartbeat_update(1, 6), snapshot_update(6, &moved)],
        Some(held_v5),
    )
    .await;
    eventually("the snapshot counts", || heard.borrow().is_some()).await;
    assert_eq!(
        held_version(&c),
        Some(6),
        "the intent was held before the word was published"
    );
    let _ = c.shutdown.send(true);
}
