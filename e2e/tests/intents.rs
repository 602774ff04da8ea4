//! The intent stream in the lab: the operator on the control-plane node serves three agents over
//! mutual TLS. Changes reach exactly the nodes whose intent they change; a restarted agent resumes
//! without a snapshot and without a kernel write; a cut stream converges once the operator is back;
//! wrong certificates and malformed messages are refused without crashing either side.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut};
use cilia_e2e::lab::{Lab, OPERATOR_PORT, clean_run, default_nodes, leftovers, wait_until};
use cilia_e2e::netns::NetNs;
use cilia_model::NodeInfo;
use cilia_proto::v1;
use futures::{Stream, StreamExt};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const NODES: [&str; 3] = ["control-plane", "worker", "worker2"];
/// An extra node with no namespace of its own: only its facts are in the cluster.
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 9);
/// Overlaps worker's pod CIDR 10.244.1.0/24: the other nodes route it, worker never does.
const EDGE_OVERLAPPING_CIDR: &str = "10.244.1.128/25";
const EDGE_CIDR: &str = "10.244.3.0/24";
const CONVERGE: Duration = Duration::from_secs(15);

fn assert_clean(run: &str) {
    let left = leftovers(run);
    if !left.is_empty() {
        clean_run(run);
        panic!("run {run} left behind: {left:?}");
    }
}

fn status(lab: &Lab, node: &str) -> serde_json::Value {
    lab.dbg(node, &["status", "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The `Intent stream:` line of `cilia-dbg status` on `node`, without its label.
fn stream_line(lab: &Lab, node: &str) -> String {
    let out = lab.dbg(node, &["status"]).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("Intent stream:"))
        .unwrap_or_else(|| panic!("{node}: no intent stream line in\n{out}"))
        .trim()
        .to_string()
}

fn metric(lab: &Lab, name: &str, node: &str) -> u64 {
    lab.node_metric(name, node).unwrap_or(-1.0) as u64
}

/// Waits until every node's agent applied (and the operator recorded) `want[node]`, and the agent's
/// own status says the same, connected.
fn wait_versions(lab: &Lab, want: &[(&str, u64)]) {
    for (node, v) in want {
        wait_until(CONVERGE, || {
            let st = status(lab, node);
            let s = &st["intentStream"];
            metric(lab, "cilia_operator_node_intent_version", node) == *v
                && metric(lab, "cilia_operator_node_applied_version", node) == *v
                && s["connected"] == true
                && s["appliedVersion"] == *v
                && s["operatorVersion"] == *v
        })
        .unwrap_or_else(|_| {
            panic!(
                "{node}: want version {v}; operator says intent {} applied {}; agent says {}\noperator log:\n{}\nagent log:\n{}",
                metric(lab, "cilia_operator_node_intent_version", node),
                metric(lab, "cilia_operator_node_applied_version", node),
                status(lab, node)["intentStream"],
                lab.operator_log(),
                lab.agent_log(node)
            )
        });
    }
}

fn edge(cidr: &str) -> NodeInfo {
    NodeInfo {
        name: "edge".into(),
        internal_ip: EDGE_IP,
        pod_cidr: Some(cidr.parse().unwrap()),
        labels: Default::default(),
    }
}

// A change reaches exactly the nodes whose intent it changes: a label reaches nobody; a node
// overlapping worker's pod CIDR reaches control-plane and worker2 (a new route each) and not
// worker, whose version and routes stay as they were.
#[test]
fn a_change_reaches_exactly_the_nodes_that_need_it() {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    let run = lab.run.clone();
    wait_versions(&lab, &[("control-plane", 1), ("worker", 1), ("worker2", 1)]);
    let worker_routes = lab.cilia_routes("worker").unwrap();

    lab.cluster.nodes[1]
        .labels
        .insert("topology.kubernetes.io/zone".into(), "a".into());
    lab.write_cluster().unwrap();
    // The operator polls every 100 ms; give it ten polls to (not) react.
    std::thread::sleep(Duration::from_secs(1));
    for n in NODES {
        assert_eq!(
            metric(&lab, "cilia_operator_node_intent_version", n),
            1,
            "{n}"
        );
        assert_eq!(
            metric(&lab, "cilia_operator_node_deltas_sent_total", n),
            0,
            "{n}"
        );
    }

    let bytes_before = lab.operator_metrics().unwrap()["cilia_operator_intent_bytes_sent_total"];
    lab.cluster.nodes.push(edge(EDGE_OVERLAPPING_CIDR));
    lab.write_cluster().unwrap();
    wait_versions(&lab, &[("control-plane", 2), ("worker2", 2), ("worker", 1)]);
    for n in ["control-plane", "worker2"] {
        assert_eq!(
            metric(&lab, "cilia_operator_node_deltas_sent_total", n),
            1,
            "{n}"
        );
        let routes = lab.cilia_routes(n).unwrap();
        assert!(
            routes.contains(&(EDGE_OVERLAPPING_CIDR.into(), EDGE_IP.to_string())),
            "{n}: {routes:?}"
        );
    }
    assert_eq!(
        metric(&lab, "cilia_operator_node_deltas_sent_total", "worker"),
        0
    );
    assert_eq!(lab.cilia_routes("worker").unwrap(), worker_routes);
    for n in NODES {
        assert_eq!(
            metric(&lab, "cilia_operator_node_snapshots_sent_total", n),
            1,
            "{n}"
        );
    }
    // Two one-route deltas: a few dozen bytes each, never a snapshot's worth.
    let sent =
        lab.operator_metrics().unwrap()["cilia_operator_intent_bytes_sent_total"] - bytes_before;
    assert!(
        sent > 0.0 && sent < 200.0,
        "bytes sent for the change: {sent}"
    );
    assert_eq!(
        stream_line(&lab, "control-plane"),
        format!("connected to 172.18.0.2:{OPERATOR_PORT}, applied version 2 (operator at 2)")
    );

    lab.cluster.nodes.retain(|n| n.name != "edge");
    lab.write_cluster().unwrap();
    wait_versions(&lab, &[("control-plane", 3), ("worker2", 3), ("worker", 1)]);
    assert_eq!(lab.cilia_routes("control-plane").unwrap().len(), 2);
    drop(lab);
    assert_clean(&run);
}

// An agent restarted with unchanged state resumes: the operator sends no snapshot (its hello's
// digest matches) and the agent performs zero datapath writes.
#[test]
fn a_restarted_agent_gets_no_snapshot_and_writes_nothing() {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    let run = lab.run.clone();
    wait_versions(&lab, &[("worker", 1)]);
    assert_eq!(
        metric(&lab, "cilia_operator_node_snapshots_sent_total", "worker"),
        1
    );

    lab.stop_agent("worker", libc::SIGKILL).unwrap();
    lab.start_agent("worker").unwrap();
    wait_until(CONVERGE, || {
        let s = status(&lab, "worker");
        s["intentStream"]["connected"] == true && s["intentHash"].is_string()
    })
    .unwrap_or_else(|_| panic!("restarted agent not ready: {}", lab.agent_log("worker")));
    // A few resync passes of the apply loop, then count.
    std::thread::sleep(Duration::from_millis(1500));
    let s = status(&lab, "worker");
    assert_eq!(s["datapathWrites"], 0, "{s}");
    assert_eq!(s["intentStream"]["snapshotsReceived"], 0, "{s}");
    assert_eq!(s["intentStream"]["appliedVersion"], 1, "{s}");
    assert_eq!(
        metric(&lab, "cilia_operator_node_snapshots_sent_total", "worker"),
        1
    );
    assert_eq!(
        metric(&lab, "cilia_operator_node_applied_version", "worker"),
        1
    );
    assert_eq!(lab.cilia_routes("worker").unwrap().len(), 2);
    drop(lab);
    assert_clean(&run);
}

// With the operator gone the agents keep their routes (fail static) and say they are disconnected;
// a change made meanwhile reaches every node once the operator is back, although its version
// numbers begin again.
#[test]
fn a_cut_stream_converges_when_the_operator_returns() {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    let run = lab.run.clone();
    wait_versions(&lab, &[("control-plane", 1), ("worker", 1), ("worker2", 1)]);
    let before: Vec<_> = NODES.iter().map(|n| lab.cilia_routes(n).unwrap()).collect();

    lab.stop_operator(libc::SIGKILL).unwrap();
    for n in NODES {
        wait_until(CONVERGE, || {
            status(&lab, n)["intentStream"]["connected"] == false
        })
        .unwrap_or_else(|_| panic!("{n} still claims a connection"));
        let line = stream_line(&lab, n);
        assert!(
            line.starts_with("disconnected from 172.18.0.2:4250"),
            "{n}: {line}"
        );
    }
    lab.cluster.nodes.push(edge(EDGE_CIDR));
    lab.write_cluster().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for (i, n) in NODES.iter().enumerate() {
        assert!(lab.agent_alive(n), "{n} agent died: {}", lab.agent_log(n));
        assert_eq!(lab.cilia_routes(n).unwrap(), before[i], "{n}: fail static");
    }

    lab.start_operator().unwrap();
    // Held version 1 under the old operator, another intent now: a snapshot numbered 2.
    wait_versions(&lab, &[("control-plane", 2), ("worker", 2), ("worker2", 2)]);
    for n in NODES {
        let routes = lab.cilia_routes(n).unwrap();
        assert!(
            routes.contains(&(EDGE_CIDR.into(), EDGE_IP.to_string())),
            "{n}: {routes:?}"
        );
    }
    drop(lab);
    assert_clean(&run);
}

// ---- hand-built clients, run from the client namespace ----

/// Runs `f` on a thread inside `ns` with its own runtime (sockets live in that namespace).
fn in_ns<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    ns.run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .unwrap()
}

#[derive(Clone)]
struct Creds {
    ca: String,
    identity: Option<(String, String)>,
}

fn creds(tls: &Path, node: Option<&str>) -> Creds {
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    Creds {
        ca: read(&tls.join("ca.pem")),
        identity: node.map(|n| {
            let d = tls.join("agents").join(n);
            (read(&d.join("tls.crt")), read(&d.join("tls.key")))
        }),
    }
}

async fn connect(addr: SocketAddr, c: Creds) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(c.ca));
    if let Some((cert, key)) = c.identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// Frames sent as they are, answers returned as bytes: lets a test send what no real agent would.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

/// Opens Subscribe, sends `frames` (then keeps the stream open), and returns how the stream ended
/// (`Ok(n)`: closed cleanly after n answers; `Err(status)`) — or the first answer if `first` is set.
async fn raw_subscribe(
    ch: Channel,
    frames: Vec<Vec<u8>>,
    wait: Duration,
) -> Result<usize, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/cilia.intent.v1.IntentService/Subscribe",
    );
    let out = futures::stream::iter(frames).chain(futures::stream::pending());
    let mut answers = grpc
        .streaming(tonic::Request::new(out), path, RawCodec)
        .await?
        .into_inner();
    let mut n = 0;
    loop {
        match tokio::time::timeout(wait, answers.message()).await {
            Err(_) => return Ok(n),
            Ok(Ok(Some(_))) => n += 1,
            Ok(Ok(None)) => return Ok(n),
            Ok(Err(s)) => return Err(s),
        }
    }
}

fn hello(node: &str, version: u64, digest: &str) -> Vec<u8> {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Hello(v1::NodeHello {
            node: node.into(),
            agent_version: "hand-built".into(),
            last_applied_version: version,
            intent_digest: digest.into(),
            up_interfaces: vec![],
        })),
    }
    .encode_to_vec()
}

fn ack(version: u64) -> Vec<u8> {
    v1::AgentMessage {
        msg: Some(v1::agent_message::Msg::Ack(v1::Ack { version })),
    }
    .encode_to_vec()
}

/// Checks both sides are fine: the operator runs and serves metrics, all three agents run and are
/// connected.
fn assert_everyone_alive(lab: &mut Lab) {
    assert!(
        lab.operator_alive(),
        "operator died: {}",
        lab.operator_log()
    );
    for n in NODES {
        assert!(lab.agent_alive(n), "{n} agent died: {}", lab.agent_log(n));
    }
    wait_until(CONVERGE, || {
        lab.operator_metrics()
            .is_ok_and(|m| m.get("cilia_operator_connected_agents") == Some(&3.0))
    })
    .expect("three agents connected");
}

// A client certificate from another CA, no client certificate, and node worker's certificate
// saying hello as worker2 are all refused; the real agents carry on.
#[test]
fn wrong_certificates_are_refused() {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    let run = lab.run.clone();
    wait_versions(&lab, &[("worker", 1)]);
    let rogue_dir = lab.dir.join("rogue-tls");
    cilia_e2e::netns::run(
        std::process::Command::new(lab.bin_dir.join("cilia-operator"))
            .arg("certs")
            .arg("--out")
            .arg(&rogue_dir)
            .args(["--nodes", "worker"]),
    )
    .unwrap();
    let addr = lab.operator_addr();
    let good = creds(&lab.tls_dir(), Some("worker"));
    let no_cert = creds(&lab.tls_dir(), None);
    let mut rogue = creds(&rogue_dir, Some("worker"));
    rogue.ca = good.ca.clone(); // it trusts the real operator; the operator must not trust it

    let results = in_ns(&lab.client, move || {
        Box::pin(async move {
            let mut out = Vec::new();
            for c in [rogue, no_cert] {
                let r = match connect(addr, c).await {
                    Err(e) => Err(e),
                    Ok(ch) => {
                        raw_subscribe(ch, vec![hello("worker", 0, "")], Duration::from_secs(2))
                            .await
                            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
                    }
                };
                out.push(r);
            }
            let ch = connect(addr, good).await.unwrap();
            let impostor =
                raw_subscribe(ch, vec![hello("worker2", 0, "")], Duration::from_secs(2)).await;
            (out, impostor)
        })
    });
    let (refused, impostor) = results;
    for (what, r) in ["another CA", "no client certificate"].iter().zip(&refused) {
        assert!(r.is_err(), "{what}: got a stream: {r:?}");
    }
    let err = impostor.expect_err("worker's certificate must not subscribe as worker2");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("hello.node"), "{err:?}");
    assert!(
        lab.operator_metrics().unwrap()["cilia_operator_streams_ended_total{reason=\"permission_denied\"}"]
            >= 1.0
    );
    assert_everyone_alive(&mut lab);
    drop(lab);
    assert_clean(&run);
}

/// A stand-in operator that answers every hello with a delta that does not validate.
struct Garbling {
    seen: Arc<Mutex<Vec<String>>>,
}

type Out = Pin<Box<dyn Stream<Item = Result<v1::IntentUpdate, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl v1::intent_service_server::IntentService for Garbling {
    type SubscribeStream = Out;

    async fn subscribe(
        &self,
        req: tonic::Request<tonic::Streaming<v1::AgentMessage>>,
    ) -> Result<tonic::Response<Out>, tonic::Status> {
        let mut inbound = req.into_inner();
        let base = match inbound.message().await {
            Ok(Some(v1::AgentMessage {
                msg: Some(v1::agent_message::Msg::Hello(h)),
            })) => h.last_applied_version.max(1),
            _ => 1,
        };
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(v1::agent_message::Msg::Resync(r)) = m.msg {
                    seen.lock().unwrap().push(r.reason);
                }
            }
        });
        let garbage = v1::IntentUpdate {
            msg: Some(v1::intent_update::Msg::Delta(v1::Delta {
                version: base + 1,
                base_version: base,
                upserts: vec![v1::Entry {
                    entry: Some(v1::entry::Entry::Route(v1::Route {
                        dst: "10.244.0.0/33".into(),
                        via: "not-an-ip".into(),
                    })),
                }],
                deletes: vec![v1::EntryKey {
                    kind: 42,
                    key: String::new(),
                }],
            })),
        };
        let out = futures::stream::iter([Ok(garbage)]).chain(futures::stream::pending());
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

// Garbage frames, invalid fields and acks of versions never sent end only the offending stream
// (INVALID_ARGUMENT naming the field); non-TLS bytes on the port go nowhere. A stand-in operator
// sending an invalid delta makes the real agents ask for a resync and keep their routes. Neither
// side crashes, and everything converges with the real operator back.
#[test]
fn malformed_messages_crash_neither_side() {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    let run = lab.run.clone();
    wait_versions(&lab, &[("control-plane", 1), ("worker", 1), ("worker2", 1)]);
    let addr = lab.operator_addr();
    let good = creds(&lab.tls_dir(), Some("worker"));

    let answers = in_ns(&lab.client, move || {
        Box::pin(async move {
            let mut out = Vec::new();
            let cases: Vec<Vec<Vec<u8>>> = vec![
                vec![vec![0x0a, 0xff, 0xff, 0xff, 0xff]],
                vec![hello("Worker_1", 0, "")],
                vec![hello("worker", 3, "not-a-digest")],
                vec![hello("worker", 0, ""), ack(99)],
                vec![hello("worker", 0, ""), vec![0x12, 0x02, 0x08]],
            ];
            for frames in cases {
                let ch = connect(addr, good.clone()).await.unwrap();
                out.push(raw_subscribe(ch, frames, Duration::from_secs(3)).await);
            }
            // Not even TLS.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _ = s
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: operator\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            (out, closed.is_ok())
        })
    });
    let (results, raw_closed) = answers;
    let fields = [
        "msg",
        "hello.node",
        "hello.intent_digest",
        "ack.version",
        "msg",
    ];
    for (r, field) in results.iter().zip(fields) {
        let e = r
            .as_ref()
            .expect_err("an invalid stream must end in an error");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(field) || e.message().contains(&format!(" {field} ")),
            "{field}: {e:?}"
        );
    }
    assert!(
        raw_closed,
        "the operator closes a connection that is not TLS"
    );
    assert_everyone_alive(&mut lab);

    // Now the other direction: a stand-in operator on the same address garbles its first update.
    lab.stop_operator(libc::SIGTERM).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = Garbling { seen: seen.clone() };
    let tls_dir = lab.tls_dir().join("operator");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cp_ns = lab.nodes[lab.operator_node].ns.path();
    let fake = std::thread::spawn(move || {
        cilia_e2e::netns::enter(&cp_ns).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let tls = cilia_operator::tls::TlsFiles::read(&tls_dir).unwrap();
                let server = tonic::transport::Server::builder()
                    .tls_config(tls.server_config())
                    .unwrap()
                    .add_service(v1::intent_service_server::IntentServiceServer::new(svc))
                    .serve(addr);
                // Its streams never end on their own: stop by dropping the server (and, with the
                // runtime, its connections).
                tokio::select! {
                    r = server => r.unwrap(),
                    _ = stop_rx => {}
                }
            })
    });
    let before: Vec<_> = NODES.iter().map(|n| lab.cilia_routes(n).unwrap()).collect();
    for (i, n) in NODES.iter().enumerate() {
        wait_until(CONVERGE, || {
            status(&lab, n)["intentStream"]["resyncsRequested"].as_u64() >= Some(1)
        })
        .unwrap_or_else(|_| panic!("{n} asked for no resync: {}", status(&lab, n)));
        let s = status(&lab, n);
        assert!(lab.agent_alive(n), "{n} agent died: {}", lab.agent_log(n));
        let reason = s["intentStream"]["lastResyncReason"]
            .as_str()
            .unwrap_or_default();
        assert!(reason.contains("delta.upserts[0].route.dst"), "{n}: {s}");
        assert_eq!(
            s["intentStream"]["appliedVersion"], 1,
            "{n}: the held intent stays"
        );
        assert_eq!(lab.cilia_routes(n).unwrap(), before[i], "{n}: routes stay");
    }
    let reasons: BTreeSet<_> = seen.lock().unwrap().iter().cloned().collect();
    assert!(!reasons.is_empty());
    let _ = stop_tx.send(());
    fake.join().unwrap();

    lab.start_operator().unwrap();
    wait_versions(&lab, &[("control-plane", 1), ("worker", 1), ("worker2", 1)]);
    assert_everyone_alive(&mut lab);
    drop(lab);
    assert_clean(&run);
}
