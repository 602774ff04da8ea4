//! Pod networking over native routing: pods on three lab nodes, wired by cilia-cni, reach each
//! other, their nodes and other nodes, through the routes the agents install.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use cilia_e2e::lab::{Lab, clean_run, default_nodes, leftovers, wait_until};
use cilia_e2e::traffic::{EchoServer, tcp_echo};

const POD_PORT: u16 = 8080;
const NODE_PORT: u16 = 9090;

fn lab_with_pods() -> Lab {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    for (node, pods) in [
        ("control-plane", ["cp-a", "cp-b"]),
        ("worker", ["w1-a", "w1-b"]),
        ("worker2", ["w2-a", "w2-b"]),
    ] {
        for p in pods {
            lab.add_pod(node, p)
                .unwrap_or_else(|e| panic!("adding pod {p} on {node}: {e:#}"));
        }
    }
    lab
}

fn assert_clean(run: &str) {
    let left = leftovers(run);
    if !left.is_empty() {
        clean_run(run);
        panic!("run {run} left behind: {left:?}");
    }
}

fn sa(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

// Every pod reaches every pod on the other nodes with a TCP payload echoed back unchanged, and the
// server sees the client pod's own address (no NAT between pods).
#[test]
fn pods_talk_across_nodes_nodes_talk_to_pods() {
    let lab = lab_with_pods();
    let run = lab.run.clone();
    let pods: Vec<_> = lab.pods.values().map(|(p, _)| p.clone()).collect();
    let _servers: Vec<EchoServer> = pods
        .iter()
        .map(|p| EchoServer::start(&p.ns_path(), sa(p.ip, POD_PORT)).unwrap())
        .collect();
    let _node_servers: Vec<EchoServer> = lab
        .nodes
        .iter()
        .map(|n| {
            EchoServer::start(&n.ns.path(), sa(std::net::Ipv4Addr::UNSPECIFIED, NODE_PORT)).unwrap()
        })
        .collect();

    // Pod → pod on another node.
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            let payload = format!("{} -> {}", a.name, b.name);
            let echo = tcp_echo(&a.ns_path(), sa(b.ip, POD_PORT), payload.as_bytes())
                .unwrap_or_else(|e| panic!("{} -> {}: {e:#}", a.name, b.name));
            assert_eq!(
                echo.payload,
                payload.as_bytes(),
                "{} -> {}: payload",
                a.name,
                b.name
            );
            assert_eq!(
                echo.seen_as.ip(),
                std::net::IpAddr::V4(a.ip),
                "{} -> {}: server must see the pod address",
                a.name,
                b.name
            );
        }
    }
    // Node → pod: local and remote.
    for n in &lab.nodes {
        for p in &pods {
            let echo = tcp_echo(&n.ns.path(), sa(p.ip, POD_PORT), b"node-to-pod")
                .unwrap_or_else(|e| panic!("node {} -> pod {}: {e:#}", n.spec.name, p.name));
            assert_eq!(echo.payload, b"node-to-pod");
        }
    }
    // Pod → node: its own and the others.
    for p in &pods {
        for n in &lab.nodes {
            let echo = tcp_echo(&p.ns_path(), sa(n.spec.ip, NODE_PORT), b"pod-to-node")
                .unwrap_or_else(|e| panic!("pod {} -> node {}: {e:#}", p.name, n.spec.name));
            assert_eq!(echo.payload, b"pod-to-node");
        }
    }
    // The endpoint programs saw that traffic on every pod device.
    for n in &lab.nodes {
        let out = lab
            .dbg(&n.spec.name, &["bpf", "endpoint", "list", "-o", "json"])
            .unwrap();
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(
            rows.len(),
            2,
            "{}: two pod devices accounted: {out}",
            n.spec.name
        );
        for r in rows {
            assert!(
                r["rxPackets"].as_u64().unwrap() > 0 && r["txPackets"].as_u64().unwrap() > 0,
                "{}: {r}",
                n.spec.name
            );
        }
    }
    drop(_servers);
    drop(_node_servers);
    drop(lab);
    assert_clean(&run);
}

// Each node holds exactly one route per other node's pod CIDR via that node; removing a node from
// the cluster removes its route everywhere.
#[test]
fn routes_are_exactly_the_expected_set_and_follow_node_removal() {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    let run = lab.run.clone();
    let specs = default_nodes();
    for n in &specs {
        let want: Vec<(String, String)> = specs
            .iter()
            .filter(|o| o.name != n.name)
            .map(|o| (o.pod_cidr.to_string(), o.ip.to_string()))
            .collect();
        wait_until(Duration::from_secs(5), || {
            lab.cilia_routes(&n.name).unwrap() == want
        })
        .unwrap_or_else(|_| {
            panic!(
                "{}: routes {:?}, expected {want:?}",
                n.name,
                lab.cilia_routes(&n.name).unwrap()
            )
        });
    }
    lab.remove_node_from_cluster("worker2").unwrap();
    for node in ["control-plane", "worker"] {
        wait_until(Duration::from_secs(5), || {
            !lab.cilia_routes(node)
                .unwrap()
                .iter()
                .any(|(dst, _)| dst == "10.244.2.0/24")
        })
        .unwrap_or_else(|_| {
            panic!(
                "{node} still routes to the removed node: {:?}",
                lab.cilia_routes(node).unwrap()
            )
        });
        assert_eq!(lab.cilia_routes(node).unwrap().len(), 1, "{node}");
    }
    drop(lab);
    assert_clean(&run);
}

// A killed agent leaves the datapath serving (fail static); a restarted agent with unchanged state
// takes over the pinned maps and links and writes nothing.
#[test]
fn agent_restart_is_hitless_and_writes_nothing() {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    let run = lab.run.clone();
    let a = lab.add_pod("worker", "ra").unwrap();
    let b = lab.add_pod("worker2", "rb").unwrap();
    let _srv = EchoServer::start(&b.ns_path(), sa(b.ip, POD_PORT)).unwrap();
    tcp_echo(&a.ns_path(), sa(b.ip, POD_PORT), b"before").unwrap();
    // Let the endpoint programs attach before the restart.
    wait_until(Duration::from_secs(5), || {
        lab.dbg("worker", &["status", "-o", "json"])
            .is_ok_and(|s| s.contains("\"interface\""))
    })
    .unwrap();

    lab.stop_agent("worker", libc::SIGKILL).unwrap();
    let echo = tcp_echo(&a.ns_path(), sa(b.ip, POD_PORT), b"while down")
        .expect("traffic while the agent is down");
    assert_eq!(echo.payload, b"while down");
    assert!(
        lab.dbg("worker", &["status"]).is_err(),
        "cilia-dbg must fail cleanly with the agent down"
    );

    lab.start_agent("worker").unwrap();
    wait_until(Duration::from_secs(10), || {
        lab.dbg("worker", &["status", "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| {
                v["intentHash"].is_string()
                    && v["endpoints"].as_array().is_some_and(|e| e.len() == 1)
            })
    })
    .unwrap_or_else(|_| panic!("restarted agent not ready: {}", lab.agent_log("worker")));
    // One more resync pass, then count.
    std::thread::sleep(Duration::from_millis(600));
    let st: serde_json::Value =
        serde_json::from_str(&lab.dbg("worker", &["status", "-o", "json"]).unwrap()).unwrap();
    assert_eq!(
        st["datapathWrites"], 0,
        "restart with unchanged state must write nothing: {st}"
    );
    tcp_echo(&a.ns_path(), sa(b.ip, POD_PORT), b"after").unwrap();
    drop(_srv);
    drop(lab);
    assert_clean(&run);
}

// Deleting a pod releases its address, device and programs; a new pod can take the address again
// only after release, and traffic to it works.
#[test]
fn pod_delete_releases_everything() {
    let mut lab = Lab::up(default_nodes()).expect("lab up");
    let run = lab.run.clone();
    let p = lab.add_pod("worker", "gone").unwrap();
    let q = lab.add_pod("worker", "stays").unwrap();
    assert_ne!(p.ip, q.ip, "two live pods never share an address");
    let lxc_count = |lab: &Lab| {
        lab.node("worker")
            .ns
            .ip(&["-o", "link", "show"])
            .unwrap()
            .matches(": lxc")
            .count()
    };
    assert_eq!(lxc_count(&lab), 2);
    lab.delete_pod("gone").unwrap();
    assert_eq!(lxc_count(&lab), 1, "host-side veth removed");
    let routes = lab.node("worker").ns.ip(&["route", "show"]).unwrap();
    assert!(
        !routes.contains(&format!("{} dev lxc", p.ip)),
        "host route to the deleted pod removed: {routes}"
    );
    wait_until(Duration::from_secs(5), || {
        lab.dbg("worker", &["status", "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["endpoints"].as_array().is_some_and(|e| e.len() == 1))
    })
    .expect("endpoint programs of the deleted pod released");
    drop(lab);
    assert_clean(&run);
}
