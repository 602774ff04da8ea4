//! Masquerading end to end: the lab API server holds `cilium-config` and the `ip-masq-agent`
//! ConfigMap, the real operator turns them into node intents, and the agents masquerade pod traffic
//! leaving the node — with BPF (`tc_masq.o` on eth0) or with iptables (`CILIUM_POST_nat`) — and
//! switch between the two live, without a restart, while traffic flows.
//!
//! Needs root, the built workspace (`make build`) and `.venv` (`make deps`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cilia_e2e::lab::{CLIENT_IP, LAB_NAMESPACE, Lab, default_nodes, wait_until};
use cilia_e2e::traffic::{EchoServer, tcp_echo};
use serde_json::{Value, json};

/// A second address of the client, listed in the ip-masq-agent's `nonMasqueradeCIDRs`.
const NON_MASQ_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 101);
const PORT: u16 = 8080;
const NODE: &str = "worker";
/// How long a mode switch may take, from the ConfigMap write to both sides of the switch done.
const SWITCH: Duration = Duration::from_secs(2);
const CONVERGE: Duration = Duration::from_secs(15);

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn status(lab: &Lab, node: &str) -> Value {
    lab.dbg(node, &["status", "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

fn masquerading(lab: &Lab) -> String {
    status(lab, NODE)["masquerading"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `iptables -t nat -S CILIUM_POST_nat` in the node's namespace (Err: no such chain).
fn post_nat_chain(lab: &Lab) -> anyhow::Result<String> {
    lab.node(NODE)
        .ns
        .exec(&["iptables", "-t", "nat", "-S", "CILIUM_POST_nat"])
}

/// `cilium-config` with masquerading and ip-masq-agent on, `enable-bpf-masquerade` = `bpf` (the
/// only key that changes, as `helm upgrade --set bpf.masquerade=…` would change it).
fn set_mode(lab: &Lab, bpf: bool) {
    lab.apply_cilium_config(&[
        ("enable-ipv4-masquerade", "true"),
        ("enable-bpf-masquerade", if bpf { "true" } else { "false" }),
        ("enable-ip-masq-agent", "true"),
        // BPF masquerading needs the BPF NodePort datapath.
        ("enable-node-port", "true"),
    ])
    .expect("cilium-config applies");
}

fn is_bpf(m: &str) -> bool {
    m.starts_with("BPF (ip-masq-agent)   [eth0]   10.244.0.0/16")
}

fn is_iptables(m: &str) -> bool {
    m.starts_with("IPTables")
}

fn bpf_list(lab: &Lab, map: &str) -> String {
    let root = lab.node(NODE).bpf_root.to_string_lossy().into_owned();
    lab.dbg(NODE, &["--bpf-root", &root, "bpf", map, "list"])
        .unwrap_or_else(|e| panic!("cilia-dbg bpf {map} list: {e}"))
}

/// A client loop: one echo round trip to `dst` every 20 ms from the pod, each of which must
/// succeed and be seen from `node_ip`.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientLoop {
    fn start(pod_ns: String, dst: SocketAddr, node_ip: Ipv4Addr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, e) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let payload = format!("loop-{i}");
                match tcp_echo(&pod_ns, dst, payload.as_bytes()) {
                    Ok(echo)
                        if echo.seen_as.ip() == node_ip && echo.payload == payload.as_bytes() =>
                    {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(echo) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        e.lock()
                            .unwrap()
                            .push(format!("{payload}: seen as {}", echo.seen_as));
                    }
                    Err(err) => {
                        f.fetch_add(1, Ordering::Relaxed);
                        e.lock().unwrap().push(format!("{payload}: {err:#}"));
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        ClientLoop {
            stop,
            ok,
            failed,
            errors,
            thread: Some(thread),
        }
    }

    /// Stops the loop; (succeeded, failed, error messages).
    fn finish(mut self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("client loop thread");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.errors.lock().unwrap().clone(),
        )
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Switches the mode through `cilium-config` and waits until the node runs it: the status line,
/// and the iptables chain present (iptables) or gone (BPF). Returns how long the switch took, from
/// the start of the ConfigMap write (kubectl included).
fn switch(lab: &Lab, bpf: bool) -> Duration {
    let t0 = Instant::now();
    set_mode(lab, bpf);
    println!("  cilium-config written in {:?}", t0.elapsed());
    let done = || {
        let m = masquerading(lab);
        let chain = post_nat_chain(lab);
        if bpf {
            is_bpf(&m) && chain.is_err()
        } else {
            is_iptables(&m) && chain.is_ok_and(|c| c.contains("-j MASQUERADE"))
        }
    };
    wait_until(Duration::from_secs(10), done).unwrap_or_else(|_| {
        panic!(
            "switch to {} did not happen: status {:?}, chain {:?}; agent log: {}",
            if bpf { "BPF" } else { "iptables" },
            masquerading(lab),
            post_nat_chain(lab),
            lab.agent_log(NODE)
        )
    });
    t0.elapsed()
}

// A pod reaching the outside world is seen with its node's address; a destination the
// ip-masq-agent lists as non-masquerade sees the pod's own address. Switching
// `enable-bpf-masquerade` off and on in `cilium-config` moves the node between BPF and iptables
// masquerading within 2 s, with the same agent process, and a client loop running meanwhile loses
// no connection. A restarted agent with the unchanged intent writes nothing.
#[test]
fn bpf_masquerading_and_live_switch_to_iptables_and_back() {
    match cilia_datapath::ipvlan::ipvlan_support() {
        Ok(()) => println!("IPVLAN available (this suite covers veth datapath mode only)"),
        Err(reason) => println!("IPVLAN masquerading skipped: {reason}"),
    }
    let mut lab = Lab::up_kube(default_nodes()).expect("lab with API server");
    let node_ip = lab.node(NODE).spec.ip;
    let pod_cidr = lab.node(NODE).spec.pod_cidr;

    // The ip-masq-agent ConfigMap: only the second client address is non-masquerade.
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": { "name": "ip-masq-agent", "namespace": LAB_NAMESPACE },
        "data": { "config": format!("nonMasqueradeCIDRs:\n- {NON_MASQ_IP}/32\nmasqLinkLocal: false\n") },
    });
    lab.kubectl_with_input(&["apply", "-f", "-"], &cm.to_string())
        .expect("ip-masq-agent ConfigMap applies");
    set_mode(&lab, true);

    // The outside world: two addresses on the client, which routes the worker's pods back to it
    // (so an unmasqueraded reply can return).
    lab.client
        .ip(&["addr", "add", &format!("{NON_MASQ_IP}/16"), "dev", "eth0"])
        .unwrap();
    lab.client
        .ip(&[
            "route",
            "add",
            &pod_cidr.to_string(),
            "via",
            &node_ip.to_string(),
        ])
        .unwrap();
    let _outside = EchoServer::start(&lab.client.path(), sa(CLIENT_IP, PORT)).unwrap();
    let _inside = EchoServer::start(&lab.client.path(), sa(NON_MASQ_IP, PORT)).unwrap();
    let pod = lab.add_pod(NODE, "masq-client").unwrap();
    let pod_ns = pod.ns_path();

    wait_until(CONVERGE, || is_bpf(&masquerading(&lab))).unwrap_or_else(|_| {
        panic!(
            "BPF masquerading not on: {:?}; agent log: {}",
            masquerading(&lab),
            lab.agent_log(NODE)
        )
    });
    assert!(
        post_nat_chain(&lab).is_err(),
        "no iptables chain in BPF mode"
    );
    let pid = lab.agent_pid(NODE).expect("agent runs");
    let text = lab.dbg(NODE, &["status"]).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("Masquerading:") && l.contains("BPF (ip-masq-agent)   [eth0]")),
        "{text}"
    );

    // Outside a non-masquerade CIDR: the node's address; inside: the pod's own.
    let e = tcp_echo(&pod_ns, sa(CLIENT_IP, PORT), b"out").unwrap();
    assert_eq!(e.seen_as.ip(), node_ip, "masqueraded to the node address");
    assert_eq!(e.payload, b"out");
    let e = tcp_echo(&pod_ns, sa(NON_MASQ_IP, PORT), b"in").unwrap();
    assert_eq!(
        e.seen_as.ip(),
        pod.ip,
        "non-masquerade CIDR keeps the pod address"
    );

    let ipmasq = bpf_list(&lab, "ipmasq");
    assert!(ipmasq.contains(&format!("{NON_MASQ_IP}/32")), "{ipmasq}");
    assert!(ipmasq.contains("169.254.0.0/16"), "{ipmasq}");
    let ipmasq_json: Value = serde_json::from_str(
        &lab.dbg(
            NODE,
            &[
                "--bpf-root",
                &lab.node(NODE).bpf_root.to_string_lossy(),
                "bpf",
                "ipmasq",
                "list",
                "-o",
                "json",
            ],
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        ipmasq_json.as_array().is_some_and(|a| a
            .iter()
            .any(|e| e["ip-prefix"] == format!("{NON_MASQ_IP}/32"))),
        "{ipmasq_json}"
    );
    let nat = bpf_list(&lab, "nat");
    assert!(
        nat.lines()
            .any(|l| l.starts_with(&format!("TCP OUT {}:", pod.ip))
                && l.contains(&format!("-> {CLIENT_IP}:{PORT} XLATE_SRC {node_ip}:"))),
        "{nat}"
    );
    let root = lab.node(NODE).bpf_root.to_string_lossy().into_owned();
    let nat_json: Value = serde_json::from_str(
        &lab.dbg(
            NODE,
            &["--bpf-root", &root, "bpf", "nat", "list", "-o", "json"],
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        nat_json
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["direction"] == "IN"
                && e["xlate"]
                    .as_str()
                    .is_some_and(|x| x.starts_with(&format!("{}:", pod.ip))))),
        "{nat_json}"
    );

    // Live switches while a client loop runs.
    let client = ClientLoop::start(pod_ns.clone(), sa(CLIENT_IP, PORT), node_ip);
    std::thread::sleep(Duration::from_millis(300));
    let to_iptables = switch(&lab, false);
    println!("BPF → iptables in {to_iptables:?}");
    let e = tcp_echo(&pod_ns, sa(CLIENT_IP, PORT), b"ipt").unwrap();
    assert_eq!(
        e.seen_as.ip(),
        node_ip,
        "iptables masquerades to the node address"
    );
    let chain = post_nat_chain(&lab).unwrap();
    assert!(
        chain.contains(&format!("-s {pod_cidr} ! -d 10.244.0.0/16")),
        "{chain}"
    );
    assert_eq!(lab.agent_pid(NODE), Some(pid), "no restart");
    assert!(lab.agent_alive(NODE), "agent alive after the switch");
    std::thread::sleep(Duration::from_millis(300));
    let to_bpf = switch(&lab, true);
    println!("iptables → BPF in {to_bpf:?}");
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, errors) = client.finish();
    println!("client loop: {ok} round trips, {failed} failed");
    assert_eq!(
        failed, 0,
        "connections failed during the switches: {errors:?}"
    );
    assert!(ok > 10, "the client loop ran ({ok} round trips)");
    assert!(to_iptables < SWITCH, "BPF → iptables took {to_iptables:?}");
    assert!(to_bpf < SWITCH, "iptables → BPF took {to_bpf:?}");
    assert_eq!(lab.agent_pid(NODE), Some(pid), "no restart");
    assert!(lab.agent_alive(NODE), "agent alive after the switches");
    let forward = lab
        .node(NODE)
        .ns
        .exec(&["iptables", "-S", "FORWARD"])
        .unwrap();
    assert!(
        !forward.contains("masquerading mode switch"),
        "the switch fence is down again: {forward}"
    );
    let e = tcp_echo(&pod_ns, sa(CLIENT_IP, PORT), b"bpf").unwrap();
    assert_eq!(e.seen_as.ip(), node_ip);
    let e = tcp_echo(&pod_ns, sa(NON_MASQ_IP, PORT), b"bpf-in").unwrap();
    assert_eq!(e.seen_as.ip(), pod.ip);

    // A restart with the unchanged intent writes nothing, and masquerading keeps working.
    lab.stop_agent(NODE, libc::SIGTERM).unwrap();
    let e = tcp_echo(&pod_ns, sa(CLIENT_IP, PORT), b"agent-down").unwrap();
    assert_eq!(
        e.seen_as.ip(),
        node_ip,
        "pinned programs masquerade while the agent is down"
    );
    lab.start_agent(NODE).unwrap();
    wait_until(CONVERGE, || {
        let s = status(&lab, NODE);
        s["intentHash"].is_string() && s["masquerading"].as_str().is_some_and(is_bpf)
    })
    .unwrap_or_else(|_| panic!("restarted agent not ready: {}", lab.agent_log(NODE)));
    std::thread::sleep(Duration::from_millis(1500));
    let s = status(&lab, NODE);
    assert_eq!(s["datapathWrites"], 0, "restart with unchanged intent: {s}");
    let e = tcp_echo(&pod_ns, sa(CLIENT_IP, PORT), b"after").unwrap();
    assert_eq!(e.seen_as.ip(), node_ip);
    drop(lab);
}
