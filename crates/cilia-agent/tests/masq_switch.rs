//! The agent's masquerading switch (`MasqAgent::apply`, what `Agent::apply` runs) with real,
//! long-lived TCP connections that must survive BPF → iptables → BPF → iptables:
//!
//! ```text
//!   pod ns: eth0 10.244.0.5 ══ lxc0 10.244.0.1  node ns (agent; uplink up0 172.18.0.2)
//!                                              up0 ══ out0 172.18.0.100  outside ns
//!                                                     (serves 203.0.113.10:7000)
//! ```
//!
//! The outside server answers every line with the peer address it accepted the connection from, so
//! each round trip shows the flow is still the one it was (a second translation, or none, would
//! make the server see a stranger's segment and reset it). Netfilter's view is read from
//! `/proc/net/nf_conntrack` in the node namespace. Namespaces, pins and threads are torn down by
//! guards, also when an assertion fails.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cilia_agent::masq::MasqAgent;
use cilia_datapath::masq::{CONNTRACK_KEEPER_RULE, DrainTimeouts};
use cilia_datapath::masq_bpf::MasqMapSizes;
use cilia_model::intent::{NodeFacts, NodeIntent, RouteIntent};
use cilia_model::service::DatapathConfig;

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const POD_GW: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const PEER_NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PORT: u16 = 7000;
const TIMEOUT: Duration = Duration::from_secs(3);

fn sh(args: &[&str]) -> Result<String, String> {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !o.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A named network namespace, deleted on drop (its devices go with it).
struct NetNs(String);

impl NetNs {
    fn new(role: &str) -> Self {
        let name = format!("cilia-masqsw-{}-{role}", std::process::id());
        let _ = sh(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]).unwrap();
        let ns = NetNs(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v).unwrap();
    }

    fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` on a thread inside this namespace; sockets it opens belong to the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: setns on a namespace fd we hold; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

type Job = Box<dyn FnOnce(&mut MasqAgent) + Send>;

/// The agent's masquerading, owned by a thread inside the node namespace (its netlink lookups and
/// iptables runs happen there); jobs run on it in order.
struct NodeAgent {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pins: PathBuf,
}

impl NodeAgent {
    fn start(node: &NetNs) -> Self {
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/cilia/test-masq-switch-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&pins);
        let (tx, rx) = mpsc::channel::<Job>();
        let path = format!("/run/netns/{}", node.0);
        let pin_dir = pins.clone();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let mut agent = MasqAgent::new(pin_dir, MasqMapSizes::small());
            while let Ok(job) = rx.recv() {
                job(&mut agent);
            }
        });
        NodeAgent {
            jobs: Some(tx),
            thread: Some(thread),
            pins,
        }
    }

    fn with<T: Send + 'static>(&self, f: impl FnOnce(&mut MasqAgent) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .expect("agent thread")
            .send(Box::new(move |a: &mut MasqAgent| {
                let _ = tx.send(f(a));
            }))
            .expect("agent thread alive");
        rx.recv().expect("agent job panicked")
    }

    fn apply(&self, bpf: bool) -> u64 {
        self.with(move |a| a.apply(&intent(bpf)))
            .unwrap_or_else(|e| panic!("apply (bpf {bpf}): {e}"))
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

fn intent(bpf: bool) -> NodeIntent {
    let routes: BTreeSet<RouteIntent> = [RouteIntent {
        dst: "10.244.1.0/24".parse().unwrap(),
        via: PEER_NODE_IP,
    }]
    .into_iter()
    .collect();
    let mut i = NodeIntent::from_facts(
        NodeFacts {
            node: "worker".into(),
            node_ip: NODE_IP,
            pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
            routing_mode: Default::default(),
            native_routing_cidr: Some("10.244.0.0/16".parse().unwrap()),
        },
        routes,
    );
    i.datapath = DatapathConfig {
        masquerade: true,
        bpf_masquerade: bpf,
        ip_masq_agent: true,
        non_masquerade_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
        ..DatapathConfig::default()
    };
    i
}

/// pod — node — outside, as drawn in the module docs.
struct Topology {
    pod: NetNs,
    node: NetNs,
    outside: NetNs,
}

fn topology() -> Topology {
    let pod = NetNs::new("pod");
    let node = NetNs::new("node");
    let outside = NetNs::new("out");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "lxc0", "netns", &node.0,
    ]);
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "up"]);
    pod.ip(&["route", "add", "default", "via", &POD_GW.to_string()]);
    node.ip(&["addr", "add", &format!("{POD_GW}/24"), "dev", "lxc0"]);
    node.ip(&["link", "set", "lxc0", "up"]);
    node.ip(&[
        "link", "add", "up0", "type", "veth", "peer", "name", "out0", "netns", &outside.0,
    ]);
    node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "up0"]);
    node.ip(&["link", "set", "up0", "up"]);
    node.ip(&["route", "add", "default", "via", &OUTSIDE_IP.to_string()]);
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    outside.ip(&["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "out0"]);
    outside.ip(&["link", "set", "out0", "up"]);
    outside.ip(&["addr", "add", &format!("{EXT}/32"), "dev", "lo"]);
    // A route back to the pods: an unmasqueraded segment would reach the pod, not vanish, so a
    // missing translation shows as a broken flow rather than a timeout.
    outside.ip(&["route", "add", "10.244.0.0/24", "via", &NODE_IP.to_string()]);
    Topology { pod, node, outside }
}

/// The outside server: every accepted connection gets, for each line, `<peer>|<line>`.
fn serve(t: &Topology) -> TcpListener {
    let l = t
        .outside
        .run(|| TcpListener::bind(SocketAddrV4::new(EXT, PORT)).unwrap());
    let l2 = l.try_clone().unwrap();
    std::thread::spawn(move || {
        for s in l2.incoming() {
            let Ok(s) = s else { break };
            std::thread::spawn(move || {
                let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                let mut w = s.try_clone().unwrap();
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if w.write_all(format!("{peer}|{line}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    l
}

/// A long-lived connection from the pod to the outside server.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    /// The pod-side source port (netfilter's view of the flow).
    local_port: u16,
}

impl Conn {
    fn open(t: &Topology) -> Result<Conn, String> {
        let s = t.pod.run(|| {
            TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(EXT, PORT)), TIMEOUT)
        });
        let s = s.map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let local_port = s.local_addr().unwrap().port();
        Ok(Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
            local_port,
        })
    }

    /// One round trip; the peer address the server accepted this connection from.
    fn round_trip(&mut self, msg: &str) -> Result<SocketAddr, String> {
        self.w
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| format!("{msg}: write: {e}"))?;
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .map_err(|e| format!("{msg}: read: {e}"))?;
        let (peer, echo) = line
            .trim_end()
            .split_once('|')
            .ok_or_else(|| format!("{msg}: connection closed (got {line:?})"))?;
        if echo != msg {
            return Err(format!("{msg}: echo {echo:?}"));
        }
        peer.parse()
            .map_err(|e| format!("{msg}: peer {peer:?}: {e}"))
    }
}

/// Netfilter's entry for the pod's flow from `port` (`/proc/net/nf_conntrack` line), if any.
fn conntrack_of(t: &Topology, port: u16) -> Option<String> {
    let table = t.node.exec(&["cat", "/proc/net/nf_conntrack"]).ok()?;
    let needle = format!("src={POD_IP} dst={EXT} sport={port} dport={PORT} ");
    table
        .lines()
        .find(|l| l.contains(&needle))
        .map(String::from)
}

fn root() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: network namespaces and eBPF need root");
        return false;
    }
    if let Err(e) = sh(&["iptables", "--version"]) {
        eprintln!("SKIP: iptables is not installed ({e})");
        return false;
    }
    true
}

fn chain(t: &Topology) -> String {
    t.node
        .exec(&["iptables", "-t", "nat", "-S", "CILIUM_POST_nat"])
        .unwrap_or_default()
}

// A connection BPF masquerades survives the switch to iptables (BPF drains it: netfilter conntrack
// tracked it untranslated from its first packet, so MASQUERADE leaves it alone), a connection
// iptables masquerades survives the switch back to BPF (its conntrack translation stays, BPF
// passes what has the node address already), and both survive a second switch to iptables. New
// connections are masqueraded by exactly one of the two at every step. Once the drained flows
// end, the programs are detached; a restart-like pass with nothing new writes nothing.
#[test]
fn established_connections_survive_both_switches() {
    if !root() {
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    let t = topology();
    let _server = serve(&t);
    let agent = NodeAgent::start(&t.node);
    let node = |p: SocketAddr| p.ip() == std::net::IpAddr::V4(NODE_IP);

    // BPF: conntrack is kept on by the one rule of CILIUM_POST_nat.
    assert!(agent.apply(true) > 0);
    assert_eq!(agent.apply(true), 0, "unchanged intent: no writes");
    let c = chain(&t);
    assert!(c.contains("--ctstate INVALID -j RETURN"), "{c}");
    assert!(!c.contains("MASQUERADE"), "{c}");
    assert!(CONNTRACK_KEEPER_RULE.contains("-m conntrack"));
    let mut bpf_flow = Conn::open(&t).unwrap();
    let bpf_seen = bpf_flow.round_trip("bpf-1").unwrap();
    assert!(node(bpf_seen), "BPF masquerades to the node: {bpf_seen}");
    let ct = conntrack_of(&t, bpf_flow.local_port)
        .expect("netfilter tracks the BPF flow from its first packet");
    assert!(
        ct.contains(&format!(
            "src={EXT} dst={POD_IP} sport={PORT} dport={}",
            bpf_flow.local_port
        )),
        "netfilter sees the BPF flow untranslated: {ct}"
    );

    // BPF → iptables: the BPF flow keeps its address and port; a new flow is netfilter's.
    agent.apply(false);
    assert!(agent.with(|a| a.draining()), "BPF drains its flow");
    assert!(chain(&t).contains("-j MASQUERADE"), "{}", chain(&t));
    for i in 0..5 {
        assert_eq!(
            bpf_flow.round_trip(&format!("drain-{i}")).unwrap(),
            bpf_seen,
            "the BPF flow after the switch to iptables"
        );
    }
    let mut ipt_flow = Conn::open(&t).unwrap();
    let ipt_seen = ipt_flow.round_trip("ipt-1").unwrap();
    assert!(
        node(ipt_seen),
        "iptables masquerades to the node: {ipt_seen}"
    );
    // The two never hand out the same node port: a reply always finds its own translation.
    assert!(
        bpf_seen.port() >= cilia_datapath::masq::NAT_PORT_MIN && ipt_seen.port() < 30000,
        "BPF port {} and iptables port {} in disjoint ranges",
        bpf_seen.port(),
        ipt_seen.port()
    );
    let ct = conntrack_of(&t, ipt_flow.local_port).expect("conntrack entry of the iptables flow");
    assert!(
        ct.contains(&format!("src={EXT} dst={NODE_IP} sport={PORT}")),
        "netfilter translates the new flow: {ct}"
    );
    let ct = conntrack_of(&t, bpf_flow.local_port).unwrap();
    assert!(
        ct.contains(&format!("dst={POD_IP} sport={PORT}")),
        "... and still not the drained one: {ct}"
    );

    // iptables → BPF: both keep going; BPF takes new flows again (the drain ends at once).
    agent.apply(true);
    assert!(!agent.with(|a| a.draining()));
    assert!(!chain(&t).contains("MASQUERADE"), "{}", chain(&t));
    for i in 0..5 {
        assert_eq!(
            bpf_flow.round_trip(&format!("bpf-again-{i}")).unwrap(),
            bpf_seen
        );
        assert_eq!(
            ipt_flow.round_trip(&format!("ipt-on-bpf-{i}")).unwrap(),
            ipt_seen
        );
    }
    let mut short = Conn::open(&t).unwrap();
    let short_seen = short.round_trip("short").unwrap();
    assert!(node(short_seen));
    assert!(
        conntrack_of(&t, short.local_port)
            .unwrap()
            .contains(&format!("dst={POD_IP} sport={PORT}")),
        "a new flow is BPF's again"
    );
    drop(short);

    // BPF → iptables again, with quick drain timeouts: the short flow (closed) is retired soon,
    // the long BPF flow stays served until it ends, then the programs go.
    agent.with(|a| {
        a.drain_timeouts = DrainTimeouts {
            closing_ns: 1_000_000_000,
            ..DrainTimeouts::default()
        }
    });
    agent.apply(false);
    for i in 0..3 {
        assert_eq!(
            bpf_flow.round_trip(&format!("drain2-{i}")).unwrap(),
            bpf_seen
        );
        assert_eq!(ipt_flow.round_trip(&format!("ipt2-{i}")).unwrap(), ipt_seen);
    }
    std::thread::sleep(Duration::from_millis(1500));
    agent.apply(false);
    assert!(
        agent.with(|a| a.draining()),
        "the long BPF flow is still open: still draining"
    );
    let pins = agent.pins.clone();
    let nat = cilia_datapath::masq_bpf::read_nat(&pins).unwrap();
    assert_eq!(
        nat.len(),
        2,
        "only the open BPF flow's two entries are left: {nat:?}"
    );
    drop(bpf_flow);
    let t0 = Instant::now();
    while agent.with(|a| a.draining()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the drain did not end after its last flow closed"
        );
        std::thread::sleep(Duration::from_millis(300));
        agent.apply(false);
    }
    let links: Vec<_> = std::fs::read_dir(pins.join("links"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(links.is_empty(), "programs detached: {links:?}");
    assert_eq!(agent.apply(false), 0, "drained and unchanged: no writes");
    for i in 0..3 {
        assert_eq!(ipt_flow.round_trip(&format!("ipt3-{i}")).unwrap(), ipt_seen);
    }
    let mut last = Conn::open(&t).unwrap();
    assert!(node(last.round_trip("last").unwrap()));
}
