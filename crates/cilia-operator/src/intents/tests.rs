//! The index and the stream without a cluster: small builders, documentation-range-like lab
//! addresses, assertions on the receivers and on what goes over the wire.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use cilia_model::service::{
    EndpointInfo, EndpointPortInfo, EndpointSliceInfo, Protocol, ServiceInfo, ServicePortInfo,
    ServiceType,
};
use cilia_model::{ClusterState, NodeInfo, RoutingConfig, RoutingMode, node_intent};
use cilia_proto::v1::intent_service_client::IntentServiceClient;
use cilia_proto::{
    AgentMessage, Hello, Update as WireUpdate, agent_message_to_proto, update_from_proto,
};
use proptest::prelude::*;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::agents::Agents;
use super::index::{IntentIndex, Sent, Update, next_update};
use super::server::{IntentServer, StreamConfig};
use crate::certs::{self, Bundle, CertRequest};
use crate::tls::TlsFiles;

fn mk_node(name: &str, ip: u8, cidr: Option<&str>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        internal_ip: Ipv4Addr::new(172, 18, 0, ip),
        pod_cidr: cidr.map(|c| c.parse().unwrap()),
        labels: Default::default(),
    }
}

fn lab() -> ClusterState {
    ClusterState {
        nodes: vec![
            mk_node("control-plane", 2, Some("10.244.0.0/24")),
            mk_node("worker", 3, Some("10.244.1.0/24")),
            mk_node("worker2", 4, Some("10.244.2.0/24")),
        ],
        routing: RoutingConfig {
            mode: RoutingMode::Native,
            auto_direct_node_routes: true,
            native_routing_cidr: Some("10.244.0.0/16".parse().unwrap()),
        },
        ..Default::default()
    }
}

fn version(index: &IntentIndex, node: &str) -> u64 {
    index.view(node).map(|v| v.version).unwrap_or(0)
}

// Every node starts at version 1; a change that leaves a node's intent as it was leaves its version
// and its receiver alone.
#[test]
fn versions_move_only_for_nodes_whose_intent_changed() {
    let mut index = IntentIndex::new();
    assert_eq!(index.apply(&lab()).len(), 3);
    let mut rx: Vec<_> = ["control-plane", "worker", "worker2"]
        .iter()
        .map(|n| index.subscribe(n))
        .collect();
    for r in &mut rx {
        assert_eq!(r.borrow_and_update().version, 1);
    }

    // Labels are not part of any intent.
    let mut c = lab();
    c.nodes[1].labels.insert("zone".into(), "a".into());
    assert!(index.apply(&c).is_empty());
    assert!(rx.iter().all(|r| !r.has_changed().unwrap()));

    // A peer overlapping worker's pod CIDR gets routes on the others, never on worker itself.
    c.nodes.push(mk_node("worker3", 5, Some("10.244.1.0/25")));
    assert_eq!(index.apply(&c), ["control-plane", "worker2", "worker3"]);
    assert!(rx[0].has_changed().unwrap());
    assert!(
        !rx[1].has_changed().unwrap(),
        "worker's intent did not change"
    );
    assert!(rx[2].has_changed().unwrap());
    assert_eq!(version(&index, "control-plane"), 2);
    assert_eq!(version(&index, "worker"), 1);
    assert_eq!(version(&index, "worker3"), 1);
}

// A node that leaves publishes "no intent" (its agent keeps what it holds); when it comes back its
// version moves on from where it was.
#[test]
fn a_node_that_leaves_and_returns_keeps_counting() {
    let mut index = IntentIndex::new();
    index.apply(&lab());
    let mut rx = index.subscribe("worker2");
    rx.borrow_and_update();
    let mut c = lab();
    c.nodes.pop();
    assert_eq!(index.apply(&c), ["control-plane", "worker", "worker2"]);
    assert!(rx.borrow_and_update().intent.is_none());
    index.apply(&lab());
    let v = rx.borrow_and_update();
    assert!(v.intent.is_some());
    assert_eq!(v.version, 2);
}

// A delta carries only what changed for the node: here one route, as one upsert.
#[test]
fn only_what_changed_is_sent() {
    let mut index = IntentIndex::new();
    index.apply(&lab());
    let mut rx = index.subscribe("worker");
    let (sent, first) = next_update(None, &rx.borrow_and_update()).unwrap();
    assert_eq!(first, Update::Snapshot);
    assert!(
        next_update(Some(&sent), &rx.borrow()).is_none(),
        "nothing new"
    );

    let mut c = lab();
    c.nodes[2].internal_ip = Ipv4Addr::new(172, 18, 0, 44);
    index.apply(&c);
    let (next, u) = next_update(Some(&sent), &rx.borrow_and_update()).unwrap();
    let Update::Delta {
        base_version,
        delta,
    } = u
    else {
        panic!("a delta")
    };
    assert_eq!((base_version, next.version), (1, 2));
    assert_eq!(delta.deletes, vec![]);
    assert_eq!(delta.upserts.len(), 1, "{delta:?}");
}

// Resuming: an agent that holds the current intent gets nothing; one that is ahead (operator
// restarted) lifts the node's numbering; one behind with equal content gets an empty delta; one
// with another intent gets a snapshot numbered after what it had.
#[test]
fn resume_compares_digests_not_version_numbers() {
    let mut index = IntentIndex::new();
    index.apply(&lab());
    let digest = index.view("worker").unwrap().intent.unwrap().digest();

    let (rx, sent) = index.resume("worker", Some((1, digest)));
    assert!(next_update(sent.as_ref(), &rx.borrow()).is_none());

    let (rx, sent) = index.resume("worker", Some((7, digest)));
    assert_eq!(rx.borrow().version, 7);
    assert!(next_update(sent.as_ref(), &rx.borrow()).is_none());

    let (rx, sent) = index.resume("worker", Some((3, digest)));
    match next_update(sent.as_ref(), &rx.borrow()) {
        Some((
            s,
            Update::Delta {
                base_version,
                delta,
            },
        )) => {
            assert_eq!((base_version, s.version), (3, 7));
            assert!(delta.is_empty());
        }
        other => panic!("{other:?}"),
    }

    let other = cilia_model::IntentDigest([1; 32]);
    let (rx, sent) = index.resume("worker", Some((9, other)));
    assert!(sent.is_none());
    assert_eq!(rx.borrow().version, 10);
    assert!(matches!(
        next_update(None, &rx.borrow()),
        Some((Sent { version: 10, .. }, Update::Snapshot))
    ));
}

fn mk_service(name: &str, ip: u8) -> ServiceInfo {
    ServiceInfo {
        namespace: "default".into(),
        name: name.into(),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, ip)],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![ServicePortInfo {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            target_port: None,
        }],
        external_traffic_local: false,
        internal_traffic_local: false,
        session_affinity_timeout: None,
        load_balancer_class: None,
        forwarding_mode: None,
        algorithm: None,
        labels: Default::default(),
    }
}

fn mk_slice(service: &str, endpoints: &[(u8, &str, bool)]) -> EndpointSliceInfo {
    EndpointSliceInfo {
        namespace: "default".into(),
        name: format!("{service}-x"),
        service: service.into(),
        endpoints: endpoints
            .iter()
            .map(|(ip, node, ready)| EndpointInfo {
                addresses: vec![Ipv4Addr::new(10, 244, 1, *ip)],
                ready: *ready,
                serving: true,
                terminating: !*ready,
                node_name: Some((*node).into()),
            })
            .collect(),
        ports: vec![EndpointPortInfo {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
    }
}

fn arb_cluster() -> impl Strategy<Value = ClusterState> {
    (
        proptest::collection::vec((0u8..6, 2u8..9, proptest::option::of(0u8..6)), 1..6),
        any::<bool>(),
        any::<bool>(),
        // Services svc0-svc3 (present or not) with endpoints (address, ready) on worker or n0.
        proptest::collection::btree_map(
            0u8..4,
            proptest::collection::vec((1u8..4, any::<bool>(), any::<bool>()), 0..3),
            0..4,
        ),
        any::<bool>(),
    )
        .prop_map(|(nodes, native, auto, services, masquerade)| {
            let mut c = lab();
            // "worker" is always there: it is the node under observation.
            c.nodes = vec![mk_node("worker", 3, Some("10.244.1.0/24"))];
            for (i, ip, cidr) in nodes {
                let name = format!("n{i}");
                if c.node(&name).is_none() {
                    let cidr = cidr.map(|x| format!("10.244.{}.0/24", 10 + x));
                    c.nodes.push(mk_node(&name, ip, cidr.as_deref()));
                }
            }
            c.routing.mode = if native {
                RoutingMode::Native
            } else {
                RoutingMode::Tunnel
            };
            c.routing.auto_direct_node_routes = auto;
            for (i, eps) in services {
                let name = format!("svc{i}");
                c.services.push(mk_service(&name, i + 1));
                let eps: Vec<(u8, &str, bool)> = eps
                    .into_iter()
                    .map(|(ip, on_worker, ready)| {
                        (ip, if on_worker { "worker" } else { "n0" }, ready)
                    })
                    .collect();
                c.endpoint_slices.push(mk_slice(&name, &eps));
            }
            c.datapath.masquerade = masquerade;
            c
        })
}

proptest! {
    // Through the wire: the first snapshot and then every delta, each encoded to bytes, decoded
    // and validated, applied by an agent in turn, equal a fresh snapshot of the last state —
    // routes, Services and datapath settings; the agent's version equals the node's.
    #[test]
    fn deltas_over_the_wire_equal_a_fresh_snapshot(states in proptest::collection::vec(arb_cluster(), 1..8)) {
        let mut index = IntentIndex::new();
        index.apply(&states[0]);
        let mut rx = index.subscribe("worker");
        let mut sent: Option<Sent> = None;
        let mut held: Option<(u64, cilia_model::NodeIntent)> = None;
        for (i, state) in states.iter().enumerate() {
            if i > 0 {
                index.apply(state);
            }
            let view = rx.borrow_and_update().clone();
            let Some((next, update)) = next_update(sent.as_ref(), &view) else { continue };
            let bytes = update.to_proto(&next).encode_to_vec();
            sent = Some(next);
            let wire = cilia_proto::v1::IntentUpdate::decode(&bytes[..]).unwrap();
            held = Some(match (update_from_proto(&wire).unwrap(), held) {
                (WireUpdate::Snapshot { version, intent }, _) => (version, intent),
                (WireUpdate::Delta { version, base_version, delta }, Some((v, h))) => {
                    prop_assert_eq!(base_version, v);
                    (version, cilia_model::delta::apply(&h, &delta).unwrap())
                }
                (u, h) => panic!("unexpected {u:?} holding {h:?}"),
            });
        }
        let (v, intent) = held.unwrap();
        prop_assert_eq!(v, index.view("worker").unwrap().version);
        prop_assert_eq!(intent, node_intent(states.last().unwrap(), "worker").unwrap());
    }
}

// ---- The served stream, over mutual TLS on loopback ----

struct Served {
    addr: std::net::SocketAddr,
    bundle: Bundle,
    cluster: watch::Sender<Arc<ClusterState>>,
    index: crate::SharedIndex,
    holders: watch::Receiver<super::feed::L2Holders>,
    agents: Arc<Agents>,
    drain: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

async fn serve(bundle: Bundle) -> Served {
    serve_state(bundle, lab()).await
}

async fn serve_state(bundle: Bundle, state: ClusterState) -> Served {
    let index = IntentIndex::shared();
    let (cluster, cluster_rx) = watch::channel(Arc::new(state));
    let (drain, drain_rx) = watch::channel(false);
    let agents = Arc::new(Agents::default());
    let (holders_tx, holders) = watch::channel(super::feed::L2Holders::default());
    tokio::spawn(super::feed::run(
        cluster_rx,
        index.clone(),
        agents.clone(),
        holders_tx,
        drain_rx.clone(),
    ));
    let config = StreamConfig {
        heartbeat_interval: Duration::from_millis(200),
        agent_timeout: Duration::from_secs(5),
        hello_timeout: Duration::from_secs(2),
    };
    let server = IntentServer::new(index.clone(), agents.clone(), config, drain_rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = TlsFiles {
        ca: bundle.ca_pem.clone().into(),
        cert: bundle.server.cert_pem.clone().into(),
        key: bundle.server.key_pem.clone().into(),
    };
    let mut d = drain_rx.clone();
    let handle = tokio::spawn(async move {
        server
            .serve(listener, tls.server_config(), async move {
                let _ = d.changed().await;
            })
            .await
            .unwrap();
    });
    Served {
        addr,
        bundle,
        cluster,
        index,
        holders,
        agents,
        drain,
        handle,
    }
}

fn bundle() -> Bundle {
    certs::generate(&CertRequest::lab(&["worker", "worker2"], &[])).unwrap()
}

async fn channel(
    s: &Served,
    ca: &str,
    node: Option<&str>,
    from: &Bundle,
) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(n) = node {
        let pair = &from.nodes.iter().find(|(x, _)| x == n).unwrap().1;
        tls = tls.identity(Identity::from_pem(&pair.cert_pem, &pair.key_pem));
    }
    Ok(Endpoint::from_shared(format!("https://{}", s.addr))?
        .tls_config(tls)?
        .connect()
        .await?)
}

type Updates = tonic::Streaming<cilia_proto::v1::IntentUpdate>;

async fn subscribe(
    ch: Channel,
    hello: Hello,
) -> Result<(mpsc::Sender<cilia_proto::v1::AgentMessage>, Updates), tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    tx.send(agent_message_to_proto(&AgentMessage::Hello(hello)))
        .await
        .unwrap();
    let resp = IntentServiceClient::new(ch)
        .subscribe(ReceiverStream::new(rx))
        .await?;
    Ok((tx, resp.into_inner()))
}

fn hello(node: &str, held: Option<(u64, cilia_model::IntentDigest)>) -> Hello {
    Hello {
        node: node.into(),
        agent_version: "test".into(),
        held,
        up_interfaces: ["eth0".to_string()].into(),
    }
}

/// The next snapshot or delta, skipping heartbeats.
async fn next_intent(u: &mut Updates) -> WireUpdate {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), u.message())
            .await
            .expect("an update within 5s")
            .unwrap()
            .unwrap();
        match update_from_proto(&m).unwrap() {
            WireUpdate::Heartbeat { .. } => continue,
            other => return other,
        }
    }
}

/// The lab with L2 announcements on, the seed policy (never the control plane, `^eth[0-9]+`) and
/// one LoadBalancer Service holding 172.18.250.0.
fn l2_lab() -> ClusterState {
    use cilia_model::l2::{InterfaceRegex, L2Policy};
    use cilia_model::selector::{LabelSelector, LabelSelectorOperator, LabelSelectorRequirement};
    const CP: &str = "node-role.kubernetes.io/control-plane";
    let mut c = lab();
    c.nodes[0].labels.insert(CP.into(), String::new());
    c.datapath.l2_announcements = true;
    c.l2_policies = vec![L2Policy {
        name: "l2-policy".into(),
        service_selector: None,
        node_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: CP.into(),
                operator: LabelSelectorOperator::DoesNotExist,
                values: None,
            }]),
        }),
        interfaces: Some(vec![InterfaceRegex::new("^eth[0-9]+").unwrap()]),
        external_ips: true,
        load_balancer_ips: true,
    }];
    c.services = vec![ServiceInfo {
        namespace: "default".into(),
        name: "deathstar-lb".into(),
        service_type: ServiceType::LoadBalancer,
        cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 20)],
        external_ips: vec![],
        load_balancer_ips: vec![Ipv4Addr::new(172, 18, 250, 0)],
        ports: vec![ServicePortInfo {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            target_port: None,
        }],
        external_traffic_local: false,
        internal_traffic_local: false,
        session_affinity_timeout: None,
        load_balancer_class: None,
        forwarding_mode: None,
        algorithm: None,
        labels: Default::default(),
    }];
    c
}

/// A fake agent that heartbeats with `up` interfaces every 50 ms and drains what it is sent.
/// Dropping the handle (abort) is the agent dying: its connection closes.
async fn l2_agent(s: &Served, node: &str, up: &[&str]) -> tokio::task::JoinHandle<()> {
    let ch = channel(s, &s.bundle.ca_pem, Some(node), &s.bundle)
        .await
        .unwrap();
    let up: std::collections::BTreeSet<String> = up.iter().map(|s| s.to_string()).collect();
    let mut h = hello(node, None);
    h.up_interfaces = up.clone();
    let (tx, mut updates) = subscribe(ch, h).await.unwrap();
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                m = updates.message() => {
                    let Ok(Some(m)) = m else { return };
                    // Applied at once: acked, as a real agent does.
                    let version = match update_from_proto(&m) {
                        Ok(WireUpdate::Snapshot { version, .. } | WireUpdate::Delta { version, .. }) => version,
                        _ => continue,
                    };
                    if tx.send(agent_message_to_proto(&AgentMessage::Ack { version })).await.is_err() { return }
                }
                _ = beat.tick() => {
                    let hb = AgentMessage::Heartbeat { unix_millis: 1, up_interfaces: up.clone() };
                    if tx.send(agent_message_to_proto(&hb)).await.is_err() { return }
                }
            }
        }
    })
}

/// The nodes whose intent announces `vip` (`standby` false), or stands by for it (true).
fn l2_nodes(s: &Served, vip: Ipv4Addr, standby: bool) -> Vec<String> {
    let idx = s.index.lock().unwrap();
    ["control-plane", "worker", "worker2"]
        .into_iter()
        .filter(|n| {
            idx.view(n)
                .and_then(|v| v.intent)
                .is_some_and(|p| p.intent.l2.get(&vip).is_some_and(|a| a.standby == standby))
        })
        .map(String::from)
        .collect()
}

/// The nodes whose intent announces `vip`.
fn announcers(s: &Served, vip: Ipv4Addr) -> Vec<String> {
    l2_nodes(s, vip, false)
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Both workers' agents up; waits for the announcer of `vip`. Returns it, its agent and the
/// other worker's.
async fn two_workers(
    s: &Served,
    vip: Ipv4Addr,
) -> (
    String,
    tokio::task::JoinHandle<()>,
    tokio::task::JoinHandle<()>,
) {
    let w1 = l2_agent(s, "worker", &["eth0"]).await;
    let w2 = l2_agent(s, "worker2", &["eth0"]).await;
    wait_for("one announcer", || announcers(s, vip).len() == 1).await;
    let first = announcers(s, vip).remove(0);
    // The other worker stands by: it serves the VIP's flooded frames, and answers no ARP.
    let other = if first == "worker" {
        "worker2"
    } else {
        "worker"
    };
    wait_for("the other worker standing by", || {
        l2_nodes(s, vip, true) == vec![other.to_string()]
    })
    .await;
    if first == "worker" {
        (first, w1, w2)
    } else {
        (first, w2, w1)
    }
}

// One live worker announces the VIP; when its agent dies nobody announces it for one lease (the
// dead node's responder may still answer that long), then the other worker does. An interface
// losing carrier moves the VIP at once (that node cannot answer on it). The holder is published
// for the Leases throughout.
#[tokio::test]
async fn l2_failover_waits_out_the_dead_nodes_lease() {
    let vip = Ipv4Addr::new(172, 18, 250, 0);
    let s = serve_state(bundle(), l2_lab()).await;
    assert!(announcers(&s, vip).is_empty(), "no live agent yet");
    let w1 = l2_agent(&s, "worker", &["eth0", "cilia_host"]).await;
    let w2 = l2_agent(&s, "worker2", &["eth0"]).await;
    wait_for("one announcer", || announcers(&s, vip).len() == 1).await;
    let first = announcers(&s, vip).remove(0);
    assert_ne!(first, "control-plane");
    assert_eq!(
        s.holders.borrow().holders.get("default/deathstar-lb"),
        Some(&first)
    );
    let (dying, other) = if first == "worker" {
        (w1, w2)
    } else {
        (w2, w1)
    };
    let died = std::time::Instant::now();
    dying.abort();
    wait_for("the dead node's announcement withdrawn", || {
        announcers(&s, vip).is_empty()
    })
    .await;
    assert_eq!(
        s.holders.borrow().holders.get("default/deathstar-lb"),
        Some(&first),
        "the lapsing node still holds the Lease"
    );
    wait_for("the other worker to take over", || {
        announcers(&s, vip).len() == 1
    })
    .await;
    let took = died.elapsed();
    let second = announcers(&s, vip).remove(0);
    assert_ne!(second, first);
    assert!(
        took >= Duration::from_millis(cilia_model::service::DEFAULT_L2_LEASE_MS as u64),
        "handed over after {took:?}, before the dead node's lease ran out"
    );
    wait_for("the Lease holder to move", || {
        s.holders.borrow().holders.get("default/deathstar-lb") == Some(&second)
    })
    .await;

    other.abort();
    let _ = s.drain.send(true);
}

// A VIP moving between two live nodes (its first announcer came back, and rendezvous prefers it)
// is never announced by both: the old node first acks an intent without it.
#[tokio::test]
async fn l2_live_hand_over_never_announces_twice() {
    let vip = Ipv4Addr::new(172, 18, 250, 0);
    let s = serve_state(bundle(), l2_lab()).await;
    let (first, dying, other) = two_workers(&s, vip).await;
    dying.abort();
    wait_for("the other worker to take over", || {
        let a = announcers(&s, vip);
        a.len() == 1 && a[0] != first
    })
    .await;
    // The first announcer comes back: the VIP moves back to it, never held by both.
    let back = l2_agent(&s, &first, &["eth0"]).await;
    let t = std::time::Instant::now();
    loop {
        let a = announcers(&s, vip);
        assert!(a.len() <= 1, "announced by {a:?} at once");
        if a == [first.clone()] {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "never moved back: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    back.abort();
    other.abort();
    let _ = s.drain.send(true);
}

// An announcing node whose interface loses carrier gives the VIP up at once, to a live node.
#[tokio::test]
async fn l2_carrier_loss_moves_the_vip_at_once() {
    let vip = Ipv4Addr::new(172, 18, 250, 0);
    let s = serve_state(bundle(), l2_lab()).await;
    let (first, old, keep) = two_workers(&s, vip).await;
    // Replace the holder's agent by one whose eth0 is down (same node, new stream first).
    let down = l2_agent(&s, &first, &["cilia_host"]).await;
    old.abort();
    wait_for("the VIP moved to the other worker", || {
        let a = announcers(&s, vip);
        a.len() == 1 && a[0] != first
    })
    .await;
    down.abort();
    keep.abort();
    let _ = s.drain.send(true);
}

// An agent gets a snapshot, then a delta when its node's intent changes; its acks are recorded.
#[tokio::test]
async fn snapshot_then_deltas_and_acks_are_recorded() {
    let s = serve(bundle()).await;
    let ch = channel(&s, &s.bundle.ca_pem, Some("worker"), &s.bundle)
        .await
        .unwrap();
    let (tx, mut updates) = subscribe(ch, hello("worker", None)).await.unwrap();
    let WireUpdate::Snapshot { version: 1, intent } = next_intent(&mut updates).await else {
        panic!("snapshot first")
    };
    assert_eq!(intent.routes.len(), 2);
    tx.send(agent_message_to_proto(&AgentMessage::Ack { version: 1 }))
        .await
        .unwrap();

    let mut c = lab();
    c.nodes[2].internal_ip = Ipv4Addr::new(172, 18, 0, 44);
    s.cluster.send(Arc::new(c)).unwrap();
    match next_intent(&mut updates).await {
        WireUpdate::Delta {
            version: 2,
            base_version: 1,
            delta,
        } => assert_eq!(delta.upserts.len(), 1),
        other => panic!("{other:?}"),
    }
    tx.send(agent_message_to_proto(&AgentMessage::Ack { version: 2 }))
        .await
        .unwrap();
    wait(|| {
        s.agents
            .record("worker")
            .is_some_and(|r| r.applied_version == 2)
    })
    .await;
    assert_eq!(s.agents.record("worker").unwrap().snapshots_sent, 1);
    assert_eq!(s.agents.connected_count(), 1);

    // Shutdown ends the stream cleanly: no error, just the end.
    s.drain.send(true).unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), updates.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => panic!("stream ended with {e:?}"),
        }
    }
    tokio::time::timeout(Duration::from_secs(5), s.handle)
        .await
        .unwrap()
        .unwrap();
}

// An agent that already holds the current intent (by digest) gets no snapshot, only heartbeats
// that state the version.
#[tokio::test]
async fn a_current_agent_gets_no_snapshot() {
    let s = serve(bundle()).await;
    let digest = node_intent(&lab(), "worker").unwrap().digest();
    let ch = channel(&s, &s.bundle.ca_pem, Some("worker"), &s.bundle)
        .await
        .unwrap();
    let (_tx, mut updates) = subscribe(ch, hello("worker", Some((1, digest))))
        .await
        .unwrap();
    for _ in 0..3 {
        let m = updates.message().await.unwrap().unwrap();
        assert!(
            matches!(
                update_from_proto(&m).unwrap(),
                WireUpdate::Heartbeat {
                    intent_version: 1,
                    ..
                }
            ),
            "only heartbeats stating version 1: {m:?}"
        );
    }
    assert_eq!(s.agents.record("worker").unwrap().snapshots_sent, 0);
    assert_eq!(s.agents.record("worker").unwrap().applied_version, 1);
}

// A node's certificate cannot subscribe as another node.
#[tokio::test]
async fn a_hello_for_another_node_is_permission_denied() {
    let s = serve(bundle()).await;
    let ch = channel(&s, &s.bundle.ca_pem, Some("worker"), &s.bundle)
        .await
        .unwrap();
    let err = subscribe(ch, hello("worker2", None)).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("hello.node"), "{err:?}");
}

// Without a client certificate, or with one from another CA, there is no stream.
#[tokio::test]
async fn clients_without_a_valid_certificate_cannot_subscribe() {
    let s = serve(bundle()).await;
    // The handshake may fail at connect or at the first request (TLS 1.3 verifies the client
    // after the client considers itself connected); either way no stream opens.
    let opens = |ch: anyhow::Result<Channel>| async move {
        match ch {
            Err(_) => false,
            Ok(ch) => subscribe(ch, hello("worker", None)).await.is_ok(),
        }
    };
    let no_cert = channel(&s, &s.bundle.ca_pem, None, &s.bundle).await;
    assert!(!opens(no_cert).await, "a client without a certificate");
    let rogue = bundle();
    let other_ca = channel(&s, &s.bundle.ca_pem, Some("worker"), &rogue).await;
    assert!(
        !opens(other_ca).await,
        "a client certificate from another CA"
    );
    assert_eq!(s.agents.connected_count(), 0);
    assert!(s.agents.record("worker").is_none(), "no stream ever opened");
}

// An invalid message after the hello ends the stream with INVALID_ARGUMENT naming the field; the
// server keeps serving others.
#[tokio::test]
async fn invalid_messages_are_invalid_argument_naming_the_field() {
    let s = serve(bundle()).await;
    let ch = channel(&s, &s.bundle.ca_pem, Some("worker"), &s.bundle)
        .await
        .unwrap();
    let (tx, mut updates) = subscribe(ch.clone(), hello("worker", None)).await.unwrap();
    next_intent(&mut updates).await;
    tx.send(agent_message_to_proto(&AgentMessage::Ack { version: 99 }))
        .await
        .unwrap();
    let err = loop {
        match updates.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("ack.version"), "{err:?}");

    // A hello with a bad field is refused up front.
    let bad = cilia_proto::v1::AgentMessage {
        msg: Some(cilia_proto::v1::agent_message::Msg::Hello(
            cilia_proto::v1::NodeHello {
                node: "worker".into(),
                agent_version: String::new(),
                last_applied_version: 3,
                intent_digest: "nothex".into(),
                up_interfaces: vec![],
            },
        )),
    };
    let (tx2, rx2) = mpsc::channel(1);
    tx2.send(bad).await.unwrap();
    let err = IntentServiceClient::new(ch.clone())
        .subscribe(ReceiverStream::new(rx2))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("hello.intent_digest"), "{err:?}");

    // Still serving.
    let (_tx, mut updates) = subscribe(ch, hello("worker", None)).await.unwrap();
    assert!(matches!(
        next_intent(&mut updates).await,
        WireUpdate::Snapshot { .. }
    ));
}

async fn wait(mut cond: impl FnMut() -> bool) {
    for _ in 0..100 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 5s");
}

// One changed endpoint publishes to every node (each holds every Service), yet every node's view
// shares the one recomputed Service; the delta to each is that one Service.
#[test]
fn a_changed_endpoint_is_one_shared_service_upsert_on_every_node() {
    let mut c = lab();
    for i in 0..5u8 {
        let name = format!("svc{i}");
        c.services.push(mk_service(&name, i + 1));
        c.endpoint_slices
            .push(mk_slice(&name, &[(i + 1, "worker", true)]));
    }
    let mut index = IntentIndex::new();
    index.apply(&c);
    let mut rx: Vec<_> = ["control-plane", "worker", "worker2"]
        .iter()
        .map(|n| index.subscribe(n))
        .collect();
    let sent: Vec<Sent> = rx
        .iter_mut()
        .map(|r| next_update(None, &r.borrow_and_update()).unwrap().0)
        .collect();
    c.endpoint_slices[2].endpoints[0].addresses[0] = Ipv4Addr::new(10, 244, 1, 99);
    assert_eq!(index.apply(&c), ["control-plane", "worker", "worker2"]);
    let views: Vec<_> = rx
        .iter_mut()
        .map(|r| r.borrow_and_update().clone())
        .collect();
    let p0 = views[0].intent.as_ref().unwrap();
    for (v, s) in views.iter().zip(&sent) {
        let p = v.intent.as_ref().unwrap();
        assert!(p.intent.services.ptr_eq(&p0.intent.services), "shared");
        let Some((_, Update::Delta { delta, .. })) = next_update(Some(s), v) else {
            panic!("a delta")
        };
        assert!(delta.deletes.is_empty());
        assert_eq!(delta.upserts.len(), 1, "{delta:?}");
        assert_eq!(delta.upserts[0].key().key, "default/svc2");
    }
    // A datapath setting flips: one entry, the same on every node.
    c.datapath.bpf_masquerade = true;
    assert_eq!(index.apply(&c).len(), 3);
    let v = index.view("worker").unwrap();
    assert!(v.intent.unwrap().intent.datapath.bpf_masquerade);
}
