//! Service load balancing end to end (kube-proxy replacement, TC only): the lab API server, the
//! operator and the agents, a LoadBalancer Service with two backend pods (worker, worker2) whose
//! EndpointSlice the test writes (the lab has no EndpointSlice controller), real TCP connections
//! from the client namespace (VIP, every node's NodePort) and from pods (ClusterIP).
//!
//! Needs root, the built workspace (`make build`) and `.venv` (`make deps`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use cilia_e2e::lab::{CLIENT_IP, Lab, Pod, default_nodes, repo_root, wait_until};
use cilia_e2e::traffic::{EchoServer, tcp_echo};
use serde_json::{Value, json};

const SVC: &str = "deathstar-lb";
const STEP: Duration = Duration::from_secs(30);
/// Connections per frontend: both backends are chosen (random per flow) with overwhelming odds.
const TRIES: usize = 16;

fn seed(name: &str) -> String {
    repo_root()
        .join("../shared/fixtures/seed")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn node_ip(lab: &Lab, node: &str) -> Ipv4Addr {
    lab.node(node).spec.ip
}

struct World {
    lab: Lab,
    vip: Ipv4Addr,
    cluster_ip: Ipv4Addr,
    node_port: u16,
    backends: Vec<Pod>,
    _servers: Vec<EchoServer>,
}

/// The EndpointSlice of the Service, listing `backends` (ready, with their node).
fn endpoint_slice(backends: &[&Pod]) -> String {
    let eps: Vec<Value> = backends
        .iter()
        .map(|p| {
            json!({
                "addresses": [p.ip.to_string()],
                "conditions": { "ready": true },
                "nodeName": p.node,
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{SVC}-lab"),
            "namespace": "default",
            "labels": { "kubernetes.io/service-name": SVC },
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{ "name": "", "port": 80, "protocol": "TCP" }],
    })
    .to_string()
}

fn apply(lab: &Lab, manifest: &str) {
    lab.kubectl_with_input(&["apply", "-f", "-"], manifest)
        .unwrap_or_else(|e| panic!("kubectl apply: {e}\n{manifest}"));
}

fn up() -> World {
    let mut lab = Lab::up(default_nodes()).expect("lab");
    lab.kubectl(&["apply", "-f", &repo_root().join("crds").to_string_lossy()])
        .expect("CRDs apply");
    lab.apply_cilium_config(&[("kube-proxy-replacement", "true")])
        .expect("cilium-config applies");
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    for (node, name) in [("worker", "deathstar-1"), ("worker2", "deathstar-2")] {
        let pod = lab.add_pod(node, name).expect("backend pod");
        servers.push(
            EchoServer::start(&pod.ns_path(), SocketAddr::new(IpAddr::V4(pod.ip), 80))
                .expect("echo server"),
        );
        backends.push(pod);
    }
    lab.kubectl(&["apply", "-f", &seed("lb-pool.yaml")])
        .expect("seed pool");
    lab.kubectl(&["apply", "-f", &seed("deathstar-svc.yaml")])
        .expect("seed service");
    apply(&lab, &endpoint_slice(&backends.iter().collect::<Vec<_>>()));
    // The client reaches the LB pool through a node (a router's job here).
    lab.client
        .exec(&["ip", "route", "add", "172.18.250.0/24", "via", "172.18.0.3"])
        .expect("client route to the LB pool");

    let mut svc = Value::Null;
    wait_until(STEP, || {
        svc = lab
            .kubectl_json(&["svc", "-n", "default", SVC])
            .unwrap_or(Value::Null);
        svc.pointer("/status/loadBalancer/ingress/0/ip").is_some()
            && svc.pointer("/spec/ports/0/nodePort").is_some()
            && svc.pointer("/spec/clusterIP").is_some()
    })
    .unwrap_or_else(|_| panic!("service never got its addresses: {svc}"));
    let ip = |p: &str| -> Ipv4Addr {
        svc.pointer(p)
            .and_then(Value::as_str)
            .unwrap()
            .parse()
            .unwrap()
    };
    let vip = ip("/status/loadBalancer/ingress/0/ip");
    let cluster_ip = ip("/spec/clusterIP");
    let node_port = svc
        .pointer("/spec/ports/0/nodePort")
        .and_then(Value::as_u64)
        .unwrap() as u16;
    let w = World {
        lab,
        vip,
        cluster_ip,
        node_port,
        backends,
        _servers: servers,
    };
    // Every agent programs the frontends with both backends.
    for n in ["control-plane", "worker", "worker2"] {
        let mut out = String::new();
        wait_until(STEP, || {
            out = w.lab.dbg(n, &["service", "list"]).unwrap_or_default();
            service_list_complete(&w, n, &out)
        })
        .unwrap_or_else(|_| {
            panic!(
                "{n}: service list incomplete:\n{out}\n{}",
                w.lab.agent_log(n)
            )
        });
    }
    w
}

/// `cilia-dbg service list` lists the VIP, the ClusterIP and the node's NodePort frontends, each
/// with both backends.
fn service_list_complete(w: &World, node: &str, out: &str) -> bool {
    let fes = [
        format!("{}:80", w.vip),
        format!("{}:80", w.cluster_ip),
        format!("{}:{}", node_ip(&w.lab, node), w.node_port),
    ];
    fes.iter().all(|fe| {
        let Some(start) = out.find(fe.as_str()) else {
            return false;
        };
        // The frontend's block: up to the next frontend row (an id in the first column; backend
        // continuation lines are indented).
        let block: String = out[start..]
            .lines()
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.starts_with(|c: char| c.is_ascii_digit()))
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        w.backends
            .iter()
            .all(|b| block.contains(&format!("{}:80", b.ip)))
    })
}

/// Like [`seen_from`], None when a round trip fails (for waiting on a change).
fn try_seen_from(ns: &str, dst: SocketAddr) -> Option<BTreeSet<IpAddr>> {
    (0..TRIES)
        .map(|i| {
            tcp_echo(ns, dst, format!("probe {i}").as_bytes())
                .ok()
                .map(|e| e.seen_as.ip())
        })
        .collect()
}

/// `TRIES` echo round trips from `ns` to `dst`; the addresses the backends saw.
fn seen_from(ns: &str, dst: SocketAddr) -> BTreeSet<IpAddr> {
    (0..TRIES)
        .map(|i| {
            let e = tcp_echo(ns, dst, format!("hello {i}").as_bytes())
                .unwrap_or_else(|e| panic!("connection {i} to {dst}: {e:#}"));
            assert_eq!(
                e.payload,
                format!("hello {i}").as_bytes(),
                "echo from {dst}"
            );
            e.seen_as.ip()
        })
        .collect()
}

// Claims 1-3: the VIP and every node's NodePort serve the client (a remote backend sees the node
// the client went through, SNAT; a backend on that node sees the client itself, DNAT only, and its
// reply is restored at its device); the ClusterIP serves pods, the backend seeing the pod; the
// service list shows every frontend with both backends.
#[test]
fn frontends_reach_the_backends() {
    let mut w = up();
    let client = w.lab.client.path();
    let v4 = |a: Ipv4Addr| IpAddr::V4(a);

    // The VIP, routed to worker: worker2's backend sees worker, worker's own backend the client.
    let seen = seen_from(&client, SocketAddr::new(v4(w.vip), 80));
    assert_eq!(
        seen,
        [v4(CLIENT_IP), v4(node_ip(&w.lab, "worker"))].into(),
        "VIP: backends saw"
    );
    // NodePorts: control-plane has no backend (SNAT to either); worker and worker2 each have one
    // (the bug of issue #8: a backend on the receiving node).
    let seen = seen_from(
        &client,
        SocketAddr::new(v4(node_ip(&w.lab, "control-plane")), w.node_port),
    );
    assert_eq!(
        seen,
        [v4(node_ip(&w.lab, "control-plane"))].into(),
        "control-plane NodePort: backends saw"
    );
    for n in ["worker", "worker2"] {
        let dst = SocketAddr::new(v4(node_ip(&w.lab, n)), w.node_port);
        let seen = seen_from(&client, dst);
        assert_eq!(
            seen,
            [v4(CLIENT_IP), v4(node_ip(&w.lab, n))].into(),
            "{n} NodePort: backends saw"
        );
    }

    // ClusterIP from pods on control-plane (both backends remote) and on worker (one local): the
    // backend sees the pod.
    for (node, name) in [
        ("control-plane", "tiefighter-1"),
        ("worker", "tiefighter-2"),
    ] {
        let pod = w.lab.add_pod(node, name).expect("client pod");
        // The agent attaches the pod's programs on the CNI's request; give the LB link its pass.
        let dst = SocketAddr::new(v4(w.cluster_ip), 80);
        let mut last = None;
        wait_until(STEP, || {
            last = Some(tcp_echo(&pod.ns_path(), dst, b"probe"));
            matches!(last, Some(Ok(_)))
        })
        .unwrap_or_else(|_| {
            panic!(
                "{name}: ClusterIP unreachable: {last:?}\n{}",
                w.lab.agent_log(node)
            )
        });
        let seen = seen_from(&pod.ns_path(), dst);
        assert_eq!(seen, [v4(pod.ip)].into(), "{name}: ClusterIP backends saw");
    }

    // The service list of a node: every frontend with both backends.
    let out = w.lab.dbg("worker", &["service", "list"]).unwrap();
    assert!(service_list_complete(&w, "worker", &out), "{out}");
}

// Claim 4a: externalTrafficPolicy Local. A node's NodePort uses only its own backend (which sees
// the client itself: DNAT only, no SNAT to a remote backend), and a node without a local backend
// does not serve it (the connection is not answered). ClusterIP keeps both backends.
#[test]
fn external_traffic_policy_local_uses_only_local_backends() {
    let w = up();
    let client = w.lab.client.path();
    let v4 = |a: Ipv4Addr| IpAddr::V4(a);
    w.lab
        .kubectl(&[
            "patch",
            "svc",
            "-n",
            "default",
            SVC,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
        ])
        .expect("patch externalTrafficPolicy");
    let cp = SocketAddr::new(v4(node_ip(&w.lab, "control-plane")), w.node_port);
    // Applied once control-plane stops serving its NodePort.
    wait_until(STEP, || tcp_echo(&client, cp, b"probe").is_err()).unwrap_or_else(|_| {
        panic!(
            "control-plane still serves its NodePort under Local:\n{}",
            w.lab
                .dbg("control-plane", &["service", "list"])
                .unwrap_or_default()
        )
    });
    for n in ["worker", "worker2"] {
        let dst = SocketAddr::new(v4(node_ip(&w.lab, n)), w.node_port);
        // Each agent applies the change on its own: wait for this one (the assertion below
        // tells what was seen if it never happens).
        let _ = wait_until(STEP, || {
            try_seen_from(&client, dst) == Some([v4(CLIENT_IP)].into())
        });
        let seen = seen_from(&client, dst);
        assert_eq!(
            seen,
            [v4(CLIENT_IP)].into(),
            "{n} NodePort: only the local backend"
        );
    }
    assert!(
        tcp_echo(&client, cp, b"again").is_err(),
        "control-plane has no local backend and must not serve the NodePort"
    );
}
