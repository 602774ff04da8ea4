//! Masquerading end to end: the lab API server holds `cilium-config` and the `ip-masq-agent`
//! ConfigMap, the real operator turns them into node intents, and the agents masquerade pod traffic
//! leaving the node — with BPF (`tc_masq.o` on eth0) or with iptables (`CILIUM_POST_nat`).
//!
//! Two tests: the masquerading itself (kubectl-written configuration: non-masquerade CIDRs, the
//! `cilia-dbg` lists, a restart that writes nothing), and the live toggles of issue #10 driven by
//! the real Helm engine (`helm install` with the seed values, then `helm upgrade --reuse-values
//! --set ...`) while traffic flows: new connections to a LoadBalancer VIP and from a pod to the
//! outside, and long-lived connections of both kinds.
//!
//! Needs root, the built workspace (`cargo build --workspace --bins`) and `.venv` (`make deps`).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cilia_e2e::lab::{CLIENT_IP, LAB_NAMESPACE, Lab, Pod, default_nodes, wait_until};
use cilia_e2e::netns::enter;
use cilia_e2e::traffic::{EchoServer, tcp_echo};
use serde_json::{Value, json};

/// A second address of the client, listed in the ip-masq-agent's `nonMasqueradeCIDRs`.
const NON_MASQ_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 101);
const PORT: u16 = 8080;
const NODE: &str = "worker";
const NODES: [&str; 3] = ["control-plane", "worker", "worker2"];
/// How long a toggle may take to reach every agent, once `helm upgrade` returned.
const SWITCH: Duration = Duration::from_secs(2);
const CONVERGE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const SVC: &str = "deathstar-lb";

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn status(lab: &Lab, node: &str) -> Value {
    lab.dbg(node, &["status", "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

fn masquerading_of(lab: &Lab, node: &str) -> String {
    status(lab, node)["masquerading"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn masquerading(lab: &Lab) -> String {
    masquerading_of(lab, NODE)
}

/// `iptables -t nat -S CILIUM_POST_nat` in a node's namespace (empty: no such chain).
fn post_nat_chain(lab: &Lab, node: &str) -> String {
    lab.node(node)
        .ns
        .exec(&["iptables", "-t", "nat", "-S", "CILIUM_POST_nat"])
        .unwrap_or_default()
}

/// `cilium-config` with masquerading and ip-masq-agent on and BPF masquerading.
fn set_bpf_mode(lab: &Lab) {
    lab.apply_cilium_config(&[
        ("enable-ipv4-masquerade", "true"),
        ("enable-bpf-masquerade", "true"),
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

// A pod reaching the outside world is seen with its node's address; a destination the
// ip-masq-agent lists as non-masquerade sees the pod's own address; `cilia-dbg` lists the
// ip-masq-agent set and the NAT entries; under BPF masquerading `CILIUM_POST_nat` only keeps
// conntrack on (no MASQUERADE rule). Pinned programs masquerade while the agent is down, and a
// restarted agent with the unchanged intent writes nothing.
#[test]
fn bpf_masquerading_non_masquerade_cidrs_and_restart() {
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
    set_bpf_mode(&lab);

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
    let chain = post_nat_chain(&lab, NODE);
    assert!(
        chain.contains("-m conntrack --ctstate INVALID -j RETURN") && !chain.contains("MASQUERADE"),
        "BPF mode: CILIUM_POST_nat keeps conntrack on and masquerades nothing:\n{chain}"
    );
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

// ---------------------------------------------------------------------------------------------
// Live toggles through the real Helm engine (issue #10).

/// A TCP server in a namespace answering each line (or the last bytes before the client's EOF)
/// with `<peer ip:port>|<line>`: one-shot clients (`tcp_echo`) and long-lived ones alike. Stops
/// on drop.
struct LineEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LineEcho {
    fn start(ns_path: &str, addr: SocketAddr) -> LineEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let (path, stop2) = (ns_path.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let l = enter(&path)
                .map_err(|e| e.to_string())
                .and_then(|_| TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}")));
            let l = match l {
                Ok(l) => l,
                Err(e) => return drop(tx.send(Err(e))),
            };
            l.set_nonblocking(true).unwrap();
            let _ = tx.send(Ok(()));
            while !stop2.load(Ordering::Relaxed) {
                let Ok((s, peer)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let stop = stop2.clone();
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    // Wakes up now and then to notice the stop flag.
                    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                    let Ok(mut w) = s.try_clone() else { return };
                    let mut r = BufReader::new(s);
                    let mut buf = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        // A line, or the last bytes before EOF (one-shot clients shut
                        // their side down instead of ending the line).
                        match r.read_until(b'\n', &mut buf) {
                            Ok(0) if buf.is_empty() => return,
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                continue;
                            }
                            Err(_) => return,
                        }
                        let mut out = format!("{peer}|").into_bytes();
                        out.extend_from_slice(&buf);
                        if w.write_all(&out).is_err() {
                            return;
                        }
                        buf.clear();
                    }
                });
            }
        });
        rx.recv()
            .expect("line server thread")
            .unwrap_or_else(|e| panic!("line server: {e}"));
        LineEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for LineEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a traffic loop saw: successes, and every failure with the time it happened (since the
/// loops started) so a failure can be matched with the toggle around it.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// A loop on its own thread running `step` every `every` until stopped; each step is one
/// success or one failure.
struct Loop {
    name: &'static str,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    thread: Option<JoinHandle<()>>,
}

impl Loop {
    fn start(
        name: &'static str,
        every: Duration,
        t0: Instant,
        mut step: impl FnMut(u64) -> Result<(), String> + Send + 'static,
    ) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let (s, t) = (stop.clone(), tally.clone());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                match step(i) {
                    Ok(()) => {
                        t.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => t.failures.lock().unwrap().push(format!(
                        "{name} #{i} at {:.2}s: {e}",
                        t0.elapsed().as_secs_f64()
                    )),
                }
                i += 1;
                std::thread::sleep(every);
            }
        });
        Loop {
            name,
            stop,
            tally,
            thread: Some(thread),
        }
    }

    /// Stops the loop: (successes, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .unwrap_or_else(|_| panic!("{} loop panicked", self.name));
        }
        (
            self.tally.ok.load(Ordering::Relaxed),
            self.tally.failures.lock().unwrap().clone(),
        )
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A long-lived TCP connection opened from a namespace to a [`LineEcho`].
struct LongConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    /// The address the server accepted the connection from.
    peer: SocketAddr,
    /// This side's address (netfilter's view of the flow on the pod's node).
    local: SocketAddr,
}

impl LongConn {
    fn open(ns_path: &str, dst: SocketAddr) -> Result<LongConn, String> {
        let path = ns_path.to_string();
        let s = std::thread::spawn(move || -> Result<TcpStream, String> {
            enter(&path).map_err(|e| e.to_string())?;
            TcpStream::connect_timeout(&dst, IO_TIMEOUT).map_err(|e| format!("connect {dst}: {e}"))
        })
        .join()
        .map_err(|_| "connect thread panicked".to_string())??;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let local = s.local_addr().map_err(|e| e.to_string())?;
        let mut c = LongConn {
            r: BufReader::new(s.try_clone().map_err(|e| e.to_string())?),
            w: s,
            peer: sa(Ipv4Addr::UNSPECIFIED, 0),
            local,
        };
        c.peer = c.ask("hello")?;
        Ok(c)
    }

    /// One round trip: the peer address the server reports.
    fn ask(&mut self, msg: &str) -> Result<SocketAddr, String> {
        self.w
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let (peer, echo) = line
            .trim_end()
            .split_once('|')
            .ok_or_else(|| format!("connection closed (got {line:?})"))?;
        if echo != msg {
            return Err(format!("echo {echo:?} for {msg:?}"));
        }
        peer.parse().map_err(|e| format!("peer {peer:?}: {e}"))
    }

    /// A round trip that must come back from the same flow as the first one.
    fn check(&mut self, i: u64) -> Result<(), String> {
        let seen = self.ask(&format!("long-{i}"))?;
        if seen != self.peer {
            return Err(format!(
                "the server now sees {seen}, it accepted {}",
                self.peer
            ));
        }
        Ok(())
    }
}

fn seed(name: &str) -> String {
    cilia_e2e::helm::seed_file(name)
        .to_string_lossy()
        .into_owned()
}

/// Every node's masquerading is BPF (`bpf`) or iptables, with `CILIUM_POST_nat` to match.
fn masq_everywhere(lab: &Lab, bpf: bool) -> bool {
    NODES.iter().all(|n| {
        let m = masquerading_of(lab, n);
        let chain = post_nat_chain(lab, n);
        if bpf {
            is_bpf(&m) && !chain.contains("MASQUERADE")
        } else {
            is_iptables(&m) && chain.contains("-j MASQUERADE")
        }
    })
}

/// Every node runs `bpf-lb-acceleration` = `accel`, its eth0 with (`native`) or without XDP.
fn accel_everywhere(lab: &Lab, accel: &str) -> bool {
    let xdp = if accel == "native" {
        "Native"
    } else {
        "Disabled"
    };
    NODES.iter().all(|n| {
        let s = status(lab, n);
        s["lb"]["acceleration"] == accel
            && s["lb"]["devices"]
                .as_array()
                .is_some_and(|d| !d.is_empty() && d.iter().all(|d| d["xdp"] == xdp))
    })
}

/// The pod templates of the chart's DaemonSets and Deployments: a change would make Kubernetes
/// restart the agents or the operator.
fn pod_templates(lab: &Lab) -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["daemonsets", "deployments"] {
        let list = lab
            .kubectl_json(&[kind, "-n", LAB_NAMESPACE])
            .unwrap_or_else(|e| panic!("kubectl get {kind}: {e}"));
        for item in list["items"].as_array().into_iter().flatten() {
            out.push(format!(
                "{}/{}: {}",
                kind,
                item["metadata"]["name"].as_str().unwrap_or_default(),
                item["spec"]["template"]
            ));
        }
    }
    out
}

/// One toggle: `helm upgrade --reuse-values --set key=value`, then the wait until `done`. Returns
/// (helm's own time, the time from helm's return until every agent runs the new setting).
fn toggle(lab: &Lab, key: &str, value: &str, done: impl Fn(&Lab) -> bool) -> (Duration, Duration) {
    println!("$ helm upgrade cilia charts/cilia -n kube-system --reuse-values --set {key}={value}");
    let run = lab
        .helm_upgrade_set(&[(key, value)])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let returned = Instant::now();
    wait_until(Duration::from_secs(15), || done(lab)).unwrap_or_else(|_| {
        panic!(
            "{key}={value} did not reach every agent: {:?}\nworker log: {}",
            NODES
                .iter()
                .map(|n| (
                    n,
                    status(lab, n)["masquerading"].clone(),
                    status(lab, n)["lb"]["acceleration"].clone()
                ))
                .collect::<Vec<_>>(),
            lab.agent_log(NODE)
        )
    });
    let applied = returned.elapsed();
    println!(
        "  helm upgrade took {:?}; every agent switched {:?} after it returned",
        run.took, applied
    );
    (run.took, applied)
}

/// The netfilter conntrack line of the TCP flow from `local` (as the pod sent it) on `node`.
fn conntrack_of(lab: &Lab, node: &str, local: SocketAddr, dst: SocketAddr) -> Option<String> {
    let table = lab
        .node(node)
        .ns
        .exec(&["cat", "/proc/net/nf_conntrack"])
        .ok()?;
    let needle = format!(
        "src={} dst={} sport={} dport={} ",
        local.ip(),
        dst.ip(),
        local.port(),
        dst.port()
    );
    table
        .lines()
        .find(|l| l.contains(" tcp ") && l.contains(&needle))
        .map(String::from)
}

/// The lab as a user sets it up with the seed: `helm install` with the seed values, the seed pool
/// and LoadBalancer Service with two backend pods, a pod on worker and a line server on the client
/// (the outside); converged: BPF masquerading and native XDP on every node, the VIP and the
/// outside reachable.
struct SeedWorld {
    lab: Lab,
    node_ip: Ipv4Addr,
    pod: Pod,
    vip_addr: SocketAddr,
    outside: SocketAddr,
    _servers: Vec<LineEcho>,
}

impl SeedWorld {
    fn up() -> SeedWorld {
        let mut lab = Lab::up_kube_unconfigured(default_nodes()).expect("lab with API server");
        let node_ip = lab.node(NODE).spec.ip;

        println!(
            "$ helm install cilia charts/cilia -n kube-system --create-namespace -f cilium-medium.yaml"
        );
        let run = lab.helm_install_seed().unwrap_or_else(|e| panic!("{e:#}"));
        println!("  took {:?}", run.took);
        assert_eq!(
            lab.cilium_config_value("enable-bpf-masquerade")
                .unwrap()
                .as_deref(),
            Some("true")
        );
        assert_eq!(
            lab.cilium_config_value("bpf-lb-acceleration")
                .unwrap()
                .as_deref(),
            Some("native")
        );

        // The seed Service with a backend on worker and one on worker2; the client reaches the
        // LB pool through worker (a router's job here). Under `native` the VIP's packets meet XDP
        // first (sent back out of eth0 for worker2's backend, handed to TC for worker's), under
        // `disabled` TC alone.
        let mut backends = Vec::new();
        let mut servers = Vec::new();
        for (node, name) in [("worker", "deathstar-1"), ("worker2", "deathstar-2")] {
            let pod = lab.add_pod(node, name).expect("backend pod");
            servers.push(LineEcho::start(
                &pod.ns_path(),
                SocketAddr::new(IpAddr::V4(pod.ip), 80),
            ));
            backends.push(pod);
        }
        lab.kubectl(&["apply", "-f", &seed("lb-pool.yaml")])
            .expect("seed pool");
        lab.kubectl(&["apply", "-f", &seed("deathstar-svc.yaml")])
            .expect("seed service");
        lab.kubectl_with_input(
            &["apply", "-f", "-"],
            &cilia_e2e::lab::endpoint_slice(SVC, &backends, 80),
        )
        .expect("EndpointSlice");
        lab.client
            .exec(&[
                "ip",
                "route",
                "add",
                "172.18.250.0/24",
                "via",
                &node_ip.to_string(),
            ])
            .expect("client route to the LB pool");
        let mut svc = Value::Null;
        wait_until(CONVERGE, || {
            svc = lab
                .kubectl_json(&["svc", "-n", "default", SVC])
                .unwrap_or(Value::Null);
            svc.pointer("/status/loadBalancer/ingress/0/ip").is_some()
        })
        .unwrap_or_else(|_| panic!("the Service never got its VIP: {svc}"));
        let vip: Ipv4Addr = svc
            .pointer("/status/loadBalancer/ingress/0/ip")
            .and_then(Value::as_str)
            .unwrap()
            .parse()
            .unwrap();
        let vip_addr = sa(vip, 80);

        // The outside server, and a pod on worker reaching it.
        let outside = sa(CLIENT_IP, PORT);
        let outside_server = LineEcho::start(&lab.client.path(), outside);
        let pod = lab.add_pod(NODE, "masq-client").unwrap();
        let pod_ns = pod.ns_path();
        let client_ns = lab.client.path();

        wait_until(CONVERGE, || {
            masq_everywhere(&lab, true)
                && accel_everywhere(&lab, "native")
                && tcp_echo(&client_ns, vip_addr, b"probe").is_ok()
                && tcp_echo(&pod_ns, outside, b"probe").is_ok_and(|e| e.seen_as.ip() == node_ip)
        })
        .unwrap_or_else(|_| {
            panic!(
                "the seed install never converged: worker status {}\nVIP {vip}: {:?}\noutside: {:?}\nworker log: {}",
                status(&lab, NODE),
                tcp_echo(&client_ns, vip_addr, b"probe"),
                tcp_echo(&pod_ns, outside, b"probe"),
                lab.agent_log(NODE)
            )
        });
        SeedWorld {
            lab,
            node_ip,
            pod,
            vip_addr,
            outside,
            _servers: servers.into_iter().chain([outside_server]).collect(),
        }
    }
}

// Issue #10's toggles through the real Helm engine: `helm install` with the seed values (BPF
// masquerading with ip-masq-agent, native XDP, hybrid LB), then `helm upgrade --reuse-values --set
// bpf.masquerade=false`, `=true`, `--set loadBalancer.acceleration=disabled`, `=native`. Each
// changes only cilium-config (the pod templates stay, so Kubernetes would not restart anything),
// reaches every agent within 2 s of helm returning, with the same agent processes, while new
// connections to the LoadBalancer VIP and from a pod to the outside keep succeeding, and
// long-lived connections of both kinds keep their flow. The outside always sees the worker's
// address from its pod, and across BPF → iptables netfilter never translates the flow BPF
// masquerades (its conntrack entry stays untranslated while BPF drains it).
#[test]
fn helm_upgrade_toggles_masquerading_and_acceleration_live() {
    let SeedWorld {
        mut lab,
        node_ip,
        pod,
        vip_addr,
        outside,
        _servers,
    } = SeedWorld::up();
    let (pod_ns, client_ns) = (pod.ns_path(), lab.client.path());
    let pids: Vec<Option<u32>> = NODES.iter().map(|n| lab.agent_pid(n)).collect();
    assert!(pids.iter().all(Option::is_some), "agents run: {pids:?}");
    let templates = pod_templates(&lab);
    assert!(!templates.is_empty(), "the chart installed workloads");

    // Traffic for the whole run: new connections every 20 ms (VIP from the client, outside from
    // the pod), and one long-lived connection of each kind with a round trip every 100 ms.
    let t0 = Instant::now();
    let vip_loop = Loop::start("VIP", Duration::from_millis(20), t0, {
        let ns = client_ns.clone();
        move |i| {
            let msg = format!("vip-{i}");
            let e = tcp_echo(&ns, vip_addr, msg.as_bytes()).map_err(|e| format!("{e:#}"))?;
            if e.payload != msg.as_bytes() {
                return Err(format!("echo {:?}", String::from_utf8_lossy(&e.payload)));
            }
            Ok(())
        }
    });
    let out_loop = Loop::start("pod->outside", Duration::from_millis(20), t0, {
        let ns = pod_ns.clone();
        move |i| {
            let msg = format!("out-{i}");
            let e = tcp_echo(&ns, outside, msg.as_bytes()).map_err(|e| format!("{e:#}"))?;
            if e.seen_as.ip() != node_ip {
                return Err(format!("the outside saw {}, not the node", e.seen_as));
            }
            if e.payload != msg.as_bytes() {
                return Err(format!("echo {:?}", String::from_utf8_lossy(&e.payload)));
            }
            Ok(())
        }
    });
    let mut long_vip = LongConn::open(&client_ns, vip_addr).expect("long-lived VIP connection");
    let mut long_out = LongConn::open(&pod_ns, outside).expect("long-lived pod connection");
    assert_eq!(
        long_out.peer.ip(),
        IpAddr::V4(node_ip),
        "the long-lived pod connection is masqueraded"
    );
    let long_out_local = long_out.local;
    let long_loop = Loop::start("long-lived", Duration::from_millis(100), t0, move |i| {
        long_vip.check(i).map_err(|e| format!("VIP: {e}"))?;
        long_out.check(i).map_err(|e| format!("pod->outside: {e}"))
    });
    std::thread::sleep(Duration::from_millis(500));

    let mut applied = Vec::new();
    let (_, d) = toggle(&lab, "bpf.masquerade", "false", |l| {
        masq_everywhere(l, false)
    });
    applied.push(("bpf.masquerade=false", d));
    assert_eq!(
        lab.cilium_config_value("enable-bpf-masquerade")
            .unwrap()
            .as_deref(),
        Some("false")
    );
    std::thread::sleep(Duration::from_millis(500));
    // No double translation: netfilter tracks the long-lived pod flow BPF masqueraded, and
    // leaves it untranslated (the reply goes to the pod's own address) while BPF drains it.
    let ct = conntrack_of(&lab, NODE, long_out_local, outside)
        .unwrap_or_else(|| panic!("netfilter does not track the BPF flow from {long_out_local}"));
    assert!(
        ct.contains(&format!(
            "dst={} sport={PORT} dport={}",
            pod.ip,
            long_out_local.port()
        )),
        "netfilter must not translate the flow BPF masquerades: {ct}"
    );
    let nat = bpf_list(&lab, "nat");
    assert!(
        nat.contains(&format!(
            "TCP OUT {long_out_local} -> {outside} XLATE_SRC {node_ip}:"
        )),
        "BPF drains the long-lived flow:\n{nat}"
    );
    let (_, d) = toggle(&lab, "bpf.masquerade", "true", |l| masq_everywhere(l, true));
    applied.push(("bpf.masquerade=true", d));
    std::thread::sleep(Duration::from_millis(500));
    let (_, d) = toggle(&lab, "loadBalancer.acceleration", "disabled", |l| {
        accel_everywhere(l, "disabled")
    });
    applied.push(("loadBalancer.acceleration=disabled", d));
    std::thread::sleep(Duration::from_millis(500));
    let (_, d) = toggle(&lab, "loadBalancer.acceleration", "native", |l| {
        accel_everywhere(l, "native")
    });
    applied.push(("loadBalancer.acceleration=native", d));
    std::thread::sleep(Duration::from_millis(500));

    let (long_ok, long_failed) = long_loop.finish();
    let (vip_ok, vip_failed) = vip_loop.finish();
    let (out_ok, out_failed) = out_loop.finish();
    println!(
        "VIP loop: {vip_ok} ok, {} failed; pod->outside loop: {out_ok} ok, {} failed; long-lived: {long_ok} round trips, {} failed",
        vip_failed.len(),
        out_failed.len(),
        long_failed.len()
    );
    let failures: Vec<&String> = vip_failed
        .iter()
        .chain(&out_failed)
        .chain(&long_failed)
        .collect();
    assert!(failures.is_empty(), "connections failed: {failures:#?}");
    assert!(
        vip_ok > 20 && out_ok > 20 && long_ok > 10,
        "the loops ran: VIP {vip_ok}, outside {out_ok}, long-lived {long_ok}"
    );
    for (what, d) in &applied {
        assert!(*d < SWITCH, "{what} took {d:?} to reach every agent");
    }
    let now: Vec<Option<u32>> = NODES.iter().map(|n| lab.agent_pid(n)).collect();
    assert_eq!(now, pids, "no agent restarted");
    for n in NODES {
        assert!(lab.agent_alive(n), "{n}: agent alive");
    }
    assert_eq!(
        pod_templates(&lab),
        templates,
        "helm upgrade changed a pod template (Kubernetes would restart the pods)"
    );
    drop(lab);
}
