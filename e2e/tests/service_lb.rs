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
    apply(&lab, &cilia_e2e::lab::endpoint_slice(SVC, &backends, 80));
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

// ---------------------------------------------------------------------------------------------
// Issue #8, the remaining parts: established connections across backend changes, DSR and hybrid,
// session affinity. These tests point the Service at line servers on port 8080 of the backend
// pods (the EndpointSlice's port), which tell which backend answered and whom it saw.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use cilia_e2e::netns::enter;

/// The backend port of the line and UDP servers.
const LINE_PORT: u16 = 8080;
/// Client-side I/O timeout: generous, the lab shares two cores with other work.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A server in a pod answering each line `l` with `<pod ip> <peer ip>|l`, on TCP (one connection
/// lives as long as the client keeps it) and, with `udp`, each datagram the same way. Stops on drop.
struct LineServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl LineServer {
    fn start(pod: &Pod, udp: bool) -> LineServer {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let mut threads = Vec::new();
        let (path, me) = (pod.ns_path(), pod.ip);
        {
            let (stop, tx, path) = (stop.clone(), tx.clone(), path.clone());
            threads.push(std::thread::spawn(move || {
                let l = enter(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|_| TcpListener::bind((me, LINE_PORT)).map_err(|e| e.to_string()));
                let l = match l {
                    Ok(l) => l,
                    Err(e) => return drop(tx.send(Err(e))),
                };
                l.set_nonblocking(true).unwrap();
                let _ = tx.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    let Ok((s, peer)) = l.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let _ = s.set_nonblocking(false);
                        // Wakes up now and then to notice the stop flag.
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut w = s.try_clone().unwrap();
                        let mut r = BufReader::new(s);
                        let mut line = String::new();
                        while !stop.load(Ordering::Relaxed) {
                            match r.read_line(&mut line) {
                                Ok(0) => return,
                                Ok(_) if line.ends_with('\n') => {
                                    let reply = format!("{me} {}|{line}", peer.ip());
                                    if w.write_all(reply.as_bytes()).is_err() {
                                        return;
                                    }
                                    line.clear();
                                }
                                Ok(_) => {}
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }));
        }
        if udp {
            let (stop, tx) = (stop.clone(), tx.clone());
            threads.push(std::thread::spawn(move || {
                let s = enter(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|_| UdpSocket::bind((me, LINE_PORT)).map_err(|e| e.to_string()));
                let s = match s {
                    Ok(s) => s,
                    Err(e) => return drop(tx.send(Err(e))),
                };
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let _ = tx.send(Ok(()));
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, peer)) = s.recv_from(&mut buf) {
                        let mut out = format!("{me} {}|", peer.ip()).into_bytes();
                        out.extend_from_slice(&buf[..n]);
                        let _ = s.send_to(&out, peer);
                    }
                }
            }));
        }
        for _ in 0..threads.len() {
            rx.recv()
                .expect("server thread answers")
                .unwrap_or_else(|e| panic!("line server in {}: {e}", pod.name));
        }
        LineServer { stop, threads }
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Who answered a line: the backend pod and the address it saw the client as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    backend: Ipv4Addr,
    seen: Ipv4Addr,
}

fn parse_answer(reply: &str, sent: &str) -> Result<Answer, String> {
    let (head, echo) = reply
        .split_once('|')
        .ok_or_else(|| format!("reply without '|': {reply:?}"))?;
    if echo.trim_end() != sent {
        return Err(format!("sent {sent:?}, echoed {echo:?}"));
    }
    let mut it = head.split(' ').map(|a| a.parse::<Ipv4Addr>());
    match (it.next(), it.next()) {
        (Some(Ok(backend)), Some(Ok(seen))) => Ok(Answer { backend, seen }),
        _ => Err(format!("bad reply head {head:?}")),
    }
}

/// A TCP connection from a namespace to a frontend, kept open across many lines.
struct LineConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl LineConn {
    fn open(ns: &str, dst: SocketAddr) -> Result<LineConn, String> {
        let ns = ns.to_string();
        let s = std::thread::spawn(move || -> Result<TcpStream, String> {
            enter(&ns).map_err(|e| e.to_string())?;
            TcpStream::connect_timeout(&dst, IO_TIMEOUT).map_err(|e| format!("connect {dst}: {e}"))
        })
        .join()
        .map_err(|_| "connect thread panicked".to_string())??;
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Ok(LineConn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        })
    }

    fn ask(&mut self, msg: &str) -> Result<Answer, String> {
        writeln!(self.w, "{msg}").map_err(|e| format!("send {msg:?}: {e}"))?;
        let mut reply = String::new();
        match self.r.read_line(&mut reply) {
            Ok(0) => Err(format!("connection closed waiting for {msg:?}")),
            Ok(_) => parse_answer(&reply, msg),
            Err(e) => Err(format!("reply to {msg:?}: {e}")),
        }
    }
}

/// One UDP round trip from a namespace (a fresh socket: a new flow each time).
fn udp_ask(ns: &str, dst: SocketAddr, msg: &str) -> Result<Answer, String> {
    let ns = ns.to_string();
    let msg = msg.to_string();
    std::thread::spawn(move || -> Result<Answer, String> {
        enter(&ns).map_err(|e| e.to_string())?;
        let s = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 1500];
        // UDP may lose a datagram on a busy lab: a few tries, each a full round trip.
        for _ in 0..3 {
            s.send_to(msg.as_bytes(), dst).map_err(|e| e.to_string())?;
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                if from != dst {
                    return Err(format!("answer from {from}, not the frontend {dst}"));
                }
                return parse_answer(&String::from_utf8_lossy(&buf[..n]), &msg);
            }
        }
        Err(format!("no UDP answer from {dst}"))
    })
    .join()
    .map_err(|_| "udp thread panicked".to_string())?
}

/// An endpoint of a slice: the pod and its conditions (ready, serving, terminating).
struct Ep<'a> {
    pod: &'a Pod,
    ready: bool,
    serving: bool,
    terminating: bool,
}

fn ready_ep(pod: &Pod) -> Ep<'_> {
    Ep {
        pod,
        ready: true,
        serving: true,
        terminating: false,
    }
}

/// An EndpointSlice `name` of Service `svc` with these endpoints and ports (name, port, protocol).
fn slice_manifest(svc: &str, name: &str, eps: &[Ep], ports: &[(&str, u16, &str)]) -> String {
    let eps: Vec<Value> = eps
        .iter()
        .map(|e| {
            json!({
                "addresses": [e.pod.ip.to_string()],
                "conditions": {
                    "ready": e.ready,
                    "serving": e.serving,
                    "terminating": e.terminating,
                },
                "nodeName": e.pod.node,
            })
        })
        .collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, proto)| json!({ "name": n, "port": p, "protocol": proto }))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": { "kubernetes.io/service-name": svc },
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": ports,
    })
    .to_string()
}

/// Points the seed Service at `eps` on the line servers' port.
fn set_backends(w: &World, eps: &[Ep]) {
    apply(
        &w.lab,
        &slice_manifest(SVC, &format!("{SVC}-lab"), eps, &[("", LINE_PORT, "TCP")]),
    );
}

/// `cilia-dbg bpf lb list` on `node` (its pins live under the node's own bpf root).
fn bpf_lb_list(lab: &Lab, node: &str) -> String {
    let root = lab.node(node).bpf_root.to_string_lossy().into_owned();
    lab.dbg(node, &["--bpf-root", &root, "bpf", "lb", "list"])
        .unwrap_or_else(|e| format!("bpf lb list failed: {e:#}"))
}

/// The backend rows `cilia-dbg service list` shows on `node` under frontend `fe` (`addr:port`).
fn listed_backends(lab: &Lab, node: &str, fe: &str) -> Vec<String> {
    let out = lab.dbg(node, &["service", "list"]).unwrap_or_default();
    let Some(start) = out.find(&format!("{fe}/")) else {
        return Vec::new();
    };
    out[start..]
        .lines()
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|(_, l)| l.split("=> ").nth(1).map(|b| b.trim().to_string()))
        .collect()
}

/// Waits until `node` lists exactly these backends (`ip:port/PROTO (state)`) under `fe`.
fn wait_listed(lab: &Lab, node: &str, fe: &str, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let mut got = Vec::new();
    wait_until(STEP, || {
        got = listed_backends(lab, node, fe);
        got.sort();
        got == want
    })
    .unwrap_or_else(|_| {
        panic!(
            "{node}: {fe} lists {got:?}, want {want:?}\nslices: {}\nintent: {}\n{}",
            lab.kubectl(&["get", "endpointslices", "-n", "default", "-o", "json"])
                .unwrap_or_default(),
            std::fs::read_to_string(lab.node(node).state_dir.join("intent.json"))
                .unwrap_or_default()
                + "\nOPERATOR LOG:\n"
                + &lab.operator_log(),
            lab.agent_log(node)
        )
    });
}

fn row(pod: &Pod, state: &str) -> String {
    format!("{}:{LINE_PORT}/TCP ({state})", pod.ip)
}

/// One short connection of a [`ShortLoop`]: when it started, and who answered (or why not).
type Attempt = (Instant, Result<Answer, String>);

/// Short connections to `dst` in a loop on a thread until stopped: each opens, exchanges one
/// line, closes. Every attempt is recorded with its start time (or its error).
struct ShortLoop {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Attempt>>>,
    thread: Option<JoinHandle<()>>,
}

impl ShortLoop {
    fn start(ns: &str, dst: SocketAddr) -> ShortLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s2, l2, ns) = (stop.clone(), log.clone(), ns.to_string());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s2.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = LineConn::open(&ns, dst).and_then(|mut c| c.ask(&format!("short {i}")));
                l2.lock().unwrap().push((t, r));
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        ShortLoop {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn seen_since(&self, t: Instant) -> BTreeSet<Ipv4Addr> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= t)
            .filter_map(|(_, r)| r.as_ref().ok().map(|a| a.backend))
            .collect()
    }

    fn finish(mut self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for ShortLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// Claim 5 (issue #8): scaling the backends up and down under load loses no connection. Long-lived
// connections through the VIP exchange data before and after each EndpointSlice change — those on
// the leaving backend too, while it is terminating and after it is gone from the slice — while a
// loop of short connections runs throughout with zero failures; from the moment the backend is
// terminating, new connections never reach it.
#[test]
fn scaling_backends_keeps_established_connections() {
    let mut w = up();
    let client = w.lab.client.path();
    let vip = SocketAddr::new(IpAddr::V4(w.vip), 80);
    let fe = format!("{}:80", w.vip);
    let extra = w
        .lab
        .add_pod("control-plane", "deathstar-3")
        .expect("third backend pod");
    let (d1, d2, d3) = (w.backends[0].clone(), w.backends[1].clone(), extra);
    let _servers: Vec<LineServer> = [&d1, &d2, &d3]
        .iter()
        .map(|p| LineServer::start(p, false))
        .collect();
    set_backends(&w, &[ready_ep(&d1), ready_ep(&d2)]);
    wait_listed(
        &w.lab,
        "worker",
        &fe,
        &[row(&d1, "active"), row(&d2, "active")],
    );

    // Long-lived connections on both backends (random per flow: open until each has two).
    let mut long: Vec<(LineConn, Ipv4Addr)> = Vec::new();
    for i in 0..40 {
        let on = |ip| long.iter().filter(|(_, b)| *b == ip).count();
        if on(d1.ip) >= 2 && on(d2.ip) >= 2 {
            break;
        }
        let mut c = LineConn::open(&client, vip).unwrap_or_else(|e| panic!("long {i}: {e}"));
        let a = c.ask("hello").unwrap_or_else(|e| panic!("long {i}: {e}"));
        long.push((c, a.backend));
    }
    let on_d2 = long.iter().filter(|(_, b)| *b == d2.ip).count();
    assert!(on_d2 >= 2, "no long-lived connection landed on {}", d2.ip);
    let exchange = |long: &mut Vec<(LineConn, Ipv4Addr)>, when: &str| {
        for (i, (c, b)) in long.iter_mut().enumerate() {
            let a = c
                .ask(&format!("{when} {i}"))
                .unwrap_or_else(|e| panic!("long-lived connection {i} ({b}) {when}: {e}"));
            assert_eq!(a.backend, *b, "long-lived connection {i} moved {when}");
        }
    };

    let short = ShortLoop::start(&client, vip);
    std::thread::sleep(Duration::from_millis(500));

    // Scale up: the new backend takes new connections; established ones stay put.
    let up_at = Instant::now();
    set_backends(&w, &[ready_ep(&d1), ready_ep(&d2), ready_ep(&d3)]);
    wait_listed(
        &w.lab,
        "worker",
        &fe,
        &[row(&d1, "active"), row(&d2, "active"), row(&d3, "active")],
    );
    exchange(&mut long, "after scale-up");
    wait_until(STEP, || short.seen_since(up_at).contains(&d3.ip))
        .expect("new connections reach the added backend");

    // Scale down as Kubernetes does it: d2 terminating (still serving) first — listed, no new
    // connection — then gone from the EndpointSlice (its pod still runs, finishing its work).
    set_backends(
        &w,
        &[
            ready_ep(&d1),
            Ep {
                pod: &d2,
                ready: false,
                serving: true,
                terminating: true,
            },
            ready_ep(&d3),
        ],
    );
    wait_listed(
        &w.lab,
        "worker",
        &fe,
        &[
            row(&d1, "active"),
            row(&d2, "terminating"),
            row(&d3, "active"),
        ],
    );
    let terminating_at = Instant::now();
    exchange(&mut long, "while terminating");
    std::thread::sleep(Duration::from_secs(1));
    set_backends(&w, &[ready_ep(&d1), ready_ep(&d3)]);
    wait_listed(
        &w.lab,
        "worker",
        &fe,
        &[row(&d1, "active"), row(&d3, "active")],
    );
    exchange(&mut long, "after scale-down");
    std::thread::sleep(Duration::from_secs(3));
    exchange(&mut long, "3 s after scale-down");

    let log = short.finish();
    let failures: Vec<String> = log
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().cloned())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} short connections failed: {failures:?}",
        failures.len(),
        log.len()
    );
    let after: Vec<&Answer> = log
        .iter()
        .filter(|(t, _)| *t >= terminating_at)
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    assert!(
        after.len() >= 10,
        "too few short connections after d2 began terminating: {}",
        after.len()
    );
    assert!(
        after.iter().all(|a| a.backend != d2.ip),
        "a new connection reached the terminating or removed backend {}",
        d2.ip
    );
    // The removed backend is draining on the node, not forgotten, while its flows live.
    let st = w
        .lab
        .dbg("worker", &["status", "-o", "json"])
        .unwrap_or_default();
    let draining = serde_json::from_str::<Value>(&st)
        .ok()
        .and_then(|v| v.pointer("/lb/drainingBackends").and_then(Value::as_u64));
    assert!(
        draining.is_some_and(|n| n >= 1),
        "worker keeps the removed backend for its flows: {st}"
    );
    drop(long);
    drop(_servers);
    w.backends.clear();
}

// Claim 6: sessionAffinity ClientIP. Without it the client's connections spread over both
// backends; with it, every connection of the client lands on one backend.
#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    let w = up();
    let client = w.lab.client.path();
    let vip = SocketAddr::new(IpAddr::V4(w.vip), 80);
    let fe = format!("{}:80", w.vip);
    let (d1, d2) = (w.backends[0].clone(), w.backends[1].clone());
    let _servers: Vec<LineServer> = [&d1, &d2]
        .iter()
        .map(|p| LineServer::start(p, false))
        .collect();
    set_backends(&w, &[ready_ep(&d1), ready_ep(&d2)]);
    wait_listed(
        &w.lab,
        "worker",
        &fe,
        &[row(&d1, "active"), row(&d2, "active")],
    );
    let backends_of = |n: usize| -> BTreeSet<Ipv4Addr> {
        (0..n)
            .map(|i| {
                LineConn::open(&client, vip)
                    .and_then(|mut c| c.ask(&format!("conn {i}")))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"))
                    .backend
            })
            .collect()
    };
    assert_eq!(
        backends_of(TRIES).len(),
        2,
        "without affinity the connections spread"
    );
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
            r#"{"spec":{"sessionAffinity":"ClientIP"}}"#,
        ])
        .expect("patch sessionAffinity");
    let vip_master = format!("{}:80/TCP (0)", w.vip);
    wait_until(STEP, || {
        bpf_lb_list(&w.lab, "worker")
            .lines()
            .any(|l| l.starts_with(&vip_master) && l.contains("sessionAffinity"))
    })
    .unwrap_or_else(|_| {
        panic!(
            "affinity never reached worker:\n{}",
            w.lab.agent_log("worker")
        )
    });
    let seen = backends_of(3 * TRIES);
    assert_eq!(
        seen.len(),
        1,
        "affinity: one client, one backend; got {seen:?}"
    );
}

// Claim 7: DSR and hybrid. With `bpf-lb-mode: dsr` a remote backend sees the client's own address
// and its reply (sent straight from its node, as the VIP) reaches the client. With `hybrid`, TCP
// is DSR while UDP is SNATed: a UDP echo through the VIP works and the remote backend sees the
// node the client went through.
#[test]
fn dsr_and_hybrid_reach_remote_backends() {
    let w = up();
    let client = w.lab.client.path();
    let (d1, d2) = (w.backends[0].clone(), w.backends[1].clone());
    let _servers: Vec<LineServer> = [&d1, &d2]
        .iter()
        .map(|p| LineServer::start(p, true))
        .collect();
    // A second LoadBalancer Service with a TCP and a UDP port on the same backends.
    let svc = "deathstar-hybrid";
    apply(
        &w.lab,
        &json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": svc, "namespace": "default" },
            "spec": {
                "type": "LoadBalancer",
                "selector": { "org": "empire", "class": "deathstar" },
                "ports": [
                    { "name": "tcp", "port": 80, "protocol": "TCP", "targetPort": LINE_PORT },
                    { "name": "udp", "port": 53, "protocol": "UDP", "targetPort": LINE_PORT },
                ],
            },
        })
        .to_string(),
    );
    apply(
        &w.lab,
        &slice_manifest(
            svc,
            &format!("{svc}-lab"),
            &[ready_ep(&d1), ready_ep(&d2)],
            &[("tcp", LINE_PORT, "TCP"), ("udp", LINE_PORT, "UDP")],
        ),
    );
    let mut vip = None;
    wait_until(STEP, || {
        vip = w
            .lab
            .kubectl_json(&["svc", "-n", "default", svc])
            .ok()
            .and_then(|v| {
                v.pointer("/status/loadBalancer/ingress/0/ip")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<Ipv4Addr>().ok())
            });
        vip.is_some()
    })
    .expect("the hybrid Service gets an address");
    let vip = vip.unwrap();
    let tcp = SocketAddr::new(IpAddr::V4(vip), 80);
    let udp = SocketAddr::new(IpAddr::V4(vip), 53);
    let worker_ip = node_ip(&w.lab, "worker");

    // Mode switched through cilium-config; wait for worker's master entry to say so.
    let wait_mode = |word: &str| {
        let master = format!("{vip}:80/TCP (0)");
        wait_until(STEP, || {
            bpf_lb_list(&w.lab, "worker")
                .lines()
                .any(|l| l.starts_with(&master) && l.contains(&format!("[{word}")))
        })
        .unwrap_or_else(|_| {
            panic!(
                "worker never switched {vip} to {word}:\n{}\n{}",
                bpf_lb_list(&w.lab, "worker"),
                w.lab.agent_log("worker")
            )
        });
    };
    // TCP: TRIES connections; the remote backend (d2, on worker2) must be among them and see
    // the client itself; the local one (d1, on worker) always does.
    let tcp_round = |what: &str| -> BTreeSet<Ipv4Addr> {
        let mut backends = BTreeSet::new();
        for i in 0..TRIES {
            let a = LineConn::open(&client, tcp)
                .and_then(|mut c| c.ask(&format!("{what} {i}")))
                .unwrap_or_else(|e| panic!("{what}: TCP connection {i}: {e}"));
            assert_eq!(
                a.seen, CLIENT_IP,
                "{what}: backend {} saw {} instead of the client",
                a.backend, a.seen
            );
            backends.insert(a.backend);
        }
        backends
    };

    w.lab
        .apply_cilium_config(&[("kube-proxy-replacement", "true"), ("bpf-lb-mode", "dsr")])
        .expect("cilium-config dsr");
    wait_mode("DSR");
    assert_eq!(
        tcp_round("dsr"),
        [d1.ip, d2.ip].into(),
        "dsr: both backends serve"
    );

    w.lab
        .apply_cilium_config(&[
            ("kube-proxy-replacement", "true"),
            ("bpf-lb-mode", "hybrid"),
        ])
        .expect("cilium-config hybrid");
    wait_mode("Hybrid");
    assert_eq!(
        tcp_round("hybrid"),
        [d1.ip, d2.ip].into(),
        "hybrid TCP: both backends serve"
    );
    // UDP through the VIP: SNAT. The remote backend sees worker; the local one the client.
    let mut seen = BTreeSet::new();
    for i in 0..TRIES {
        let a = udp_ask(&client, udp, &format!("udp {i}"))
            .unwrap_or_else(|e| panic!("hybrid UDP {i}: {e}"));
        let want = if a.backend == d2.ip {
            worker_ip
        } else {
            CLIENT_IP
        };
        assert_eq!(
            a.seen, want,
            "hybrid UDP {i}: backend {} saw {}",
            a.backend, a.seen
        );
        seen.insert(a.backend);
    }
    assert!(
        seen.contains(&d2.ip),
        "hybrid UDP never reached the remote backend: {seen:?}"
    );
}

/// The sum over CPUs of the load balancer's counter `index` on `node` (`cilia_lb_counters`).
fn lb_counter(lab: &Lab, node: &str, index: u64) -> u64 {
    let pin = format!("/sys/fs/bpf/cilia/{}-{node}/lb/cilia_lb_counters", lab.run);
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned", &pin])
        .output()
        .expect("bpftool");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["formatted"])
        .filter(|f| f["key"].as_u64() == Some(index))
        .flat_map(|f| f["values"].as_array().cloned().unwrap_or_default())
        .filter_map(|x| x["value"].as_u64())
        .sum()
}

/// `LB_C_XMIT_TX` in `ebpf/lib/lb_maps.h`: sent back out of the device it came in on.
const LB_C_XMIT_TX: u64 = 17;

// Claim 8: `loadBalancer.acceleration: native` (the seed's setting). Native XDP on the node's
// device serves the VIP for a backend on another node — translating and sending it back out of
// eth0 itself (XDP_TX, counted) — and for a backend on the node (handed to TC, which redirects it
// to the pod's device): the same decisions as without XDP.
#[test]
fn native_acceleration_serves_remote_and_local_backends() {
    let w = up();
    w.lab
        .apply_cilium_config(&[
            ("kube-proxy-replacement", "true"),
            ("bpf-lb-acceleration", "native"),
        ])
        .expect("cilium-config applies");
    wait_until(STEP, || w.lab.agent_log("worker").contains("Xdp(Native)"))
        .unwrap_or_else(|_| panic!("no native XDP on worker:\n{}", w.lab.agent_log("worker")));
    let client = w.lab.client.path();
    let vip = SocketAddr::new(IpAddr::V4(w.vip), 80);
    let before = lb_counter(&w.lab, "worker", LB_C_XMIT_TX);
    let seen = seen_from(&client, vip);
    assert_eq!(
        seen,
        [IpAddr::V4(CLIENT_IP), IpAddr::V4(node_ip(&w.lab, "worker"))].into(),
        "VIP under native XDP: backends saw"
    );
    let sent = lb_counter(&w.lab, "worker", LB_C_XMIT_TX) - before;
    assert!(
        sent > 0,
        "worker's XDP program sent nothing back out of eth0 (XDP_TX): TC did all the work"
    );
}
