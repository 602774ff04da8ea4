//! The agent's load-balancer apply path (`LbAgent::apply`, what `Agent::apply` runs for services)
//! against real namespaces and real TCP connections:
//!
//! ```text
//!   client ns: br0 10.10.0.2 ── cn ══ n0 10.10.0.1  node ns   (agent: XDP per acceleration + TC)
//!                            └─ cb ══ b0 10.10.0.3  backend ns (its agent: TC, DSR backend side;
//!                                                               TCP echo server on :8080)
//! ```
//!
//! The backend's server first answers `peer <addr>` with the address it sees, so the test tells
//! SNAT (the node's address) from DSR (the client's). Namespaces, pins and threads are torn down by
//! guards, also when an assertion fails.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use cilia_agent::lb::LbAgent;
use cilia_datapath::lb_bpf::{LbMapSizes, read_lb_entries};
use cilia_model::l2::L2Announcement;
use cilia_model::service::{
    Acceleration, BackendIntent, DatapathConfig, FrontendIntent, FrontendKind, LbAlgorithm, LbMode,
    Protocol, ServiceIntent, ServiceMap, ServiceName,
};
use cilia_model::{NodeFacts, NodeIntent, RoutingMode};

const NODE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 3);
const VIP_SNAT: Ipv4Addr = Ipv4Addr::new(10, 10, 9, 9);
const VIP_DSR: Ipv4Addr = Ipv4Addr::new(10, 10, 9, 10);
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_PORT: u16 = 30080;
const BE_PORT: u16 = 8080;

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    use std::os::fd::AsRawFd;
    // SAFETY: setns on this thread only, with a valid namespace fd.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {ns}"
    );
}

/// Turns TX checksum offload off on `dev` (this thread's namespace), as `ethtool -K dev tx off`
/// (see `cilia_datapath::ethtool::tx_csum_off`).
fn tx_csum_off(dev: &str) {
    cilia_datapath::ethtool::tx_csum_off(dev).expect("tx checksum offload off");
}

/// The three namespaces, deleted on drop (their devices with them).
struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    fn create(tag: &str) -> Self {
        let names: Vec<String> = ["c", "n", "b"]
            .iter()
            .map(|s| format!("cilia-lbt-{tag}-{s}"))
            .collect();
        let me = Namespaces { names: Vec::new() };
        let mut me = me;
        for n in &names {
            sh(&["ip", "netns", "add", n]).unwrap();
            me.names.push(n.clone());
        }
        me
    }

    fn c(&self) -> &str {
        &self.names[0]
    }
    fn n(&self) -> &str {
        &self.names[1]
    }
    fn b(&self) -> &str {
        &self.names[2]
    }

    fn wire(&self) -> Result<(), String> {
        let (c, n, b) = (self.c(), self.n(), self.b());
        let cmds: Vec<Vec<&str>> = vec![
            vec!["ip", "-n", c, "link", "set", "lo", "up"],
            vec!["ip", "-n", n, "link", "set", "lo", "up"],
            vec!["ip", "-n", b, "link", "set", "lo", "up"],
            vec!["ip", "-n", c, "link", "add", "br0", "type", "bridge"],
            vec![
                "ip",
                "-n",
                c,
                "link",
                "set",
                "br0",
                "address",
                "02:00:0a:0a:00:02",
            ],
            vec!["ip", "-n", c, "addr", "add", "10.10.0.2/24", "dev", "br0"],
            vec!["ip", "-n", c, "link", "set", "br0", "up"],
            vec![
                "ip", "-n", c, "link", "add", "cn", "type", "veth", "peer", "name", "n0", "netns",
                n,
            ],
            vec![
                "ip", "-n", c, "link", "add", "cb", "type", "veth", "peer", "name", "b0", "netns",
                b,
            ],
            vec!["ip", "-n", c, "link", "set", "cn", "master", "br0", "up"],
            vec!["ip", "-n", c, "link", "set", "cb", "master", "br0", "up"],
            vec![
                "ip",
                "-n",
                n,
                "link",
                "set",
                "n0",
                "address",
                "02:00:0a:0a:00:01",
            ],
            vec!["ip", "-n", n, "addr", "add", "10.10.0.1/24", "dev", "n0"],
            vec!["ip", "-n", n, "link", "set", "n0", "up"],
            vec![
                "ip",
                "-n",
                b,
                "link",
                "set",
                "b0",
                "address",
                "02:00:0a:0a:00:03",
            ],
            vec!["ip", "-n", b, "addr", "add", "10.10.0.3/24", "dev", "b0"],
            vec!["ip", "-n", b, "link", "set", "b0", "up"],
            // The client reaches service addresses through the node.
            vec![
                "ip",
                "-n",
                c,
                "route",
                "add",
                "10.10.9.0/24",
                "via",
                "10.10.0.1",
            ],
            vec![
                "ip",
                "-n",
                c,
                "route",
                "add",
                "10.96.0.0/16",
                "via",
                "10.10.0.1",
            ],
            // The XDP/TC fast path sends straight out when the neighbour is known.
            vec![
                "ip",
                "-n",
                n,
                "neigh",
                "replace",
                "10.10.0.2",
                "lladdr",
                "02:00:0a:0a:00:02",
                "dev",
                "n0",
                "nud",
                "permanent",
            ],
            vec![
                "ip",
                "-n",
                n,
                "neigh",
                "replace",
                "10.10.0.3",
                "lladdr",
                "02:00:0a:0a:00:03",
                "dev",
                "n0",
                "nud",
                "permanent",
            ],
            vec![
                "ip",
                "netns",
                "exec",
                n,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        ];
        for cmd in cmds {
            sh(&cmd)?;
        }
        for ns in [c, n, b] {
            for k in ["all", "default"] {
                sh(&[
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.conf.{k}.rp_filter=0"),
                ])?;
            }
        }
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

/// A pin directory, removed (links unpinned, so detached) on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!("/sys/fs/bpf/cilia/test-lbagent-{tag}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        PinDir(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Job<S> = Box<dyn FnOnce(&mut S) + Send>;

/// A thread living in a namespace that owns `S` (an agent's load balancer, a loaded program) and
/// runs jobs on it; stopped and joined on drop.
struct NsWorker<S> {
    tx: Option<mpsc::Sender<Job<S>>>,
    handle: Option<JoinHandle<()>>,
}

impl<S: 'static> NsWorker<S> {
    fn start(ns: &str, make: impl FnOnce() -> S + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel::<Job<S>>();
        let ns = ns.to_string();
        let handle = std::thread::spawn(move || {
            enter(&ns);
            let mut s = make();
            while let Ok(job) = rx.recv() {
                job(&mut s);
            }
        });
        NsWorker {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn call<T: Send + 'static>(&self, f: impl FnOnce(&mut S) -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .unwrap()
            .send(Box::new(move |s: &mut S| {
                let _ = tx.send(f(s));
            }))
            .expect("worker alive");
        rx.recv().expect("worker answered (did it panic?)")
    }
}

impl<S> Drop for NsWorker<S> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn svc(name: &str, frontends: Vec<FrontendIntent>, mode: LbMode) -> ServiceIntent {
    ServiceIntent {
        name: ServiceName::new("default", name),
        frontends,
        backends: vec![BackendIntent {
            addr: BACKEND,
            port: BE_PORT,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            node: Some("backend-node".into()),
            terminating: false,
            host_network: false,
        }],
        external_traffic_local: false,
        internal_traffic_local: false,
        session_affinity_timeout: None,
        mode,
        algorithm: LbAlgorithm::Maglev,
    }
}

fn fe(kind: FrontendKind, addr: Option<Ipv4Addr>, port: u16) -> FrontendIntent {
    FrontendIntent {
        kind,
        addr,
        port,
        protocol: Protocol::Tcp,
        port_name: "http".into(),
    }
}

fn intent(node: &str, ip: Ipv4Addr, dev: &str, accel: Acceleration) -> NodeIntent {
    let mut i = NodeIntent::from_facts(
        NodeFacts {
            node: node.into(),
            node_ip: ip,
            pod_cidr: None,
            routing_mode: RoutingMode::Native,
            native_routing_cidr: None,
        },
        Default::default(),
    );
    i.datapath = DatapathConfig {
        kube_proxy_replacement: true,
        acceleration: accel,
        devices: vec![dev.into()],
        maglev_table_size: 251,
        ..Default::default()
    };
    i.services = ServiceMap::from_iter([
        svc(
            "web",
            vec![
                fe(FrontendKind::ClusterIp, Some(CLUSTER_IP), 80),
                fe(FrontendKind::NodePort, None, NODE_PORT),
                fe(FrontendKind::LoadBalancer, Some(VIP_SNAT), 80),
            ],
            LbMode::Snat,
        ),
        svc(
            "web-dsr",
            vec![fe(FrontendKind::LoadBalancer, Some(VIP_DSR), 80)],
            LbMode::Dsr,
        ),
    ]);
    // L2: this node announces VIP_SNAT (the ARP responder's business) and stands by for VIP_DSR
    // (the load balancer serves that VIP's flooded frames).
    let l2 = |vip, standby| {
        (
            vip,
            L2Announcement {
                vip,
                service: ServiceName::new("default", "web"),
                interfaces: [dev.to_string()].into(),
                standby,
            },
        )
    };
    i.l2 = std::sync::Arc::new([l2(VIP_SNAT, false), l2(VIP_DSR, true)].into());
    i
}

/// Serves `peer <addr>` then echoes lines, one thread per connection, until the process ends.
fn echo_server(listener: TcpListener) {
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let peer = s
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                if writeln!(s, "peer {peer}").is_err() {
                    return;
                }
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if s.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// A client connection opened from the client namespace.
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    /// What the backend saw as its peer.
    peer: String,
}

impl Conn {
    fn open(client: &NsWorker<()>, to: (Ipv4Addr, u16)) -> Result<Conn, String> {
        let s = client.call(move |_| {
            TcpStream::connect_timeout(&SocketAddr::from(to), Duration::from_secs(3))
                .map_err(|e| format!("connect {}:{}: {e}", to.0, to.1))
        })?;
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut first = String::new();
        r.read_line(&mut first)
            .map_err(|e| format!("greeting from {}:{}: {e}", to.0, to.1))?;
        Ok(Conn {
            w: s,
            r,
            peer: first
                .trim()
                .strip_prefix("peer ")
                .unwrap_or(&first)
                .to_string(),
        })
    }

    fn echo(&mut self, msg: &str) -> Result<(), String> {
        writeln!(self.w, "{msg}").map_err(|e| format!("send {msg}: {e}"))?;
        let mut back = String::new();
        self.r
            .read_line(&mut back)
            .map_err(|e| format!("echo of {msg}: {e}"))?;
        if back.trim() != msg {
            return Err(format!("echo of {msg:?} came back as {back:?}"));
        }
        Ok(())
    }
}

/// What XDP `ip link` shows on the node device: "xdp" (native), "xdpgeneric" or "none".
fn xdp_state(ns: &str) -> String {
    let out = sh(&["ip", "-n", ns, "-d", "link", "show", "n0"]).unwrap();
    if out.contains("xdpgeneric") {
        "generic".into()
    } else if out.contains("prog/xdp") {
        "native".into()
    } else {
        "none".into()
    }
}

fn tc_progs(ns: &str, dir: &str) -> usize {
    let out = sh(&[
        "ip", "netns", "exec", ns, "bpftool", "net", "show", "dev", "n0",
    ])
    .unwrap_or_default();
    out.lines()
        .filter(|l| l.contains(&format!("tcx/{dir}")))
        .count()
}

#[test]
fn services_through_namespaces() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (namespaces, eBPF)");
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    let tag = format!("{}", std::process::id());
    // Declared so that drop order is: workers (threads), pins (links), namespaces.
    let nss = Namespaces::create(&tag);
    let node_pin = PinDir::new(&format!("{tag}-node"));
    let be_pin = PinDir::new(&format!("{tag}-be"));
    nss.wire().expect("wiring namespaces");

    // The client side of the node's veth runs an XDP_PASS program: veth delivers XDP_TX frames
    // only to a peer with NAPI on, which XDP turns on.
    let client: NsWorker<()> = NsWorker::start(nss.c(), || tx_csum_off("br0"));
    let _peer_xdp: NsWorker<Option<aya::Ebpf>> = NsWorker::start(nss.c(), || {
        let mut e = aya::Ebpf::load(cilia_datapath::lb_bpf::BENCH_XDP_OBJ).ok()?;
        let p: &mut aya::programs::Xdp = e.program_mut("cil_bench_empty")?.try_into().ok()?;
        p.load().ok()?;
        p.attach("cn", aya::programs::XdpMode::Driver).ok()?;
        Some(e)
    });
    assert!(
        _peer_xdp.call(|e| e.is_some()),
        "XDP_PASS on the client-side veth"
    );

    // The backend node: TC programs (DSR backend side), and the echo server.
    let be_dir = be_pin.0.clone();
    let be_agent: NsWorker<LbAgent> =
        NsWorker::start(nss.b(), move || LbAgent::new(be_dir, LbMapSizes::small()));
    let be_intent = intent("backend-node", BACKEND, "b0", Acceleration::Disabled);
    be_agent
        .call(move |a| a.apply(&be_intent).map_err(|e| e.to_string()))
        .expect("backend node apply");
    let listener: TcpListener = NsWorker::start(nss.b(), || tx_csum_off("b0"))
        .call(|_| TcpListener::bind(("0.0.0.0", BE_PORT)).expect("bind echo server"));
    echo_server(listener);

    // The load-balancing node, native XDP.
    let dir = node_pin.0.clone();
    let mut node: NsWorker<LbAgent> =
        NsWorker::start(nss.n(), move || LbAgent::new(dir, LbMapSizes::small()));
    let apply = |node: &NsWorker<LbAgent>, accel: Acceleration| -> u64 {
        let i = intent("lb-node", NODE, "n0", accel);
        node.call(move |a| a.apply(&i).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("apply {accel:?}: {e}"))
    };
    let first = apply(&node, Acceleration::Native);
    assert!(first > 0, "the first apply writes");
    assert_eq!(xdp_state(nss.n()), "native");
    assert_eq!(
        apply(&node, Acceleration::Native),
        0,
        "unchanged intent: no writes"
    );
    let st = node.call(|a| a.status.clone());
    assert!(st.enabled);
    assert_eq!(st.devices.len(), 1);
    assert_eq!(
        (st.devices[0].name.as_str(), st.devices[0].xdp.as_str()),
        ("n0", "Native")
    );
    assert_eq!(node.call(|a| a.rows.len()), 4);
    // XDP knows n0's MAC: it serves only frames addressed to this node (a switch floods others).
    let n0_mac = sh(&[
        "ip",
        "netns",
        "exec",
        nss.n(),
        "cat",
        "/sys/class/net/n0/address",
    ])
    .expect("n0's MAC");
    let n0_index = sh(&[
        "ip",
        "netns",
        "exec",
        nss.n(),
        "cat",
        "/sys/class/net/n0/ifindex",
    ])
    .expect("n0's ifindex");
    let standby = node.call(|a| a.loaded().expect("loaded").standby_vips().unwrap());
    assert_eq!(
        standby,
        [(cilia_datapath::lb_maps::be32(VIP_DSR), 1)].into(),
        "exactly the standby VIPs"
    );
    let macs = node.call(|a| a.loaded().expect("loaded").dev_macs().expect("dev MACs"));
    let fmt = |m: &[u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    assert_eq!(
        macs.iter()
            .map(|(i, m)| (i.to_string(), fmt(m)))
            .collect::<Vec<_>>(),
        vec![(n0_index.trim().to_string(), n0_mac.trim().to_string())]
    );
    // What `cilia-dbg bpf lb list` prints from the pins (ids by frontend order).
    let list = cilia_datapath::lb::format_lb_list(&read_lb_entries(&node_pin.0).unwrap());
    let rows: Vec<Vec<&str>> = list
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    for want in [
        vec![
            "10.10.9.9:80/TCP",
            "(1)",
            "10.10.0.3:8080/TCP",
            "(2)",
            "(1)",
        ],
        vec![
            "10.10.9.10:80/TCP",
            "(0)",
            "0.0.0.0:0",
            "(3)",
            "(0)",
            "[DSR,",
            "Maglev,",
            "reject]",
        ],
        vec![
            "10.10.0.1:30080/TCP",
            "(0)",
            "0.0.0.0:0",
            "(1)",
            "(0)",
            "[SNAT,",
            "Maglev,",
            "reject]",
        ],
    ] {
        assert!(rows.contains(&want), "{want:?} not in\n{list}");
    }
    assert_eq!(rows.len(), 9, "{list}");

    // SNAT through native XDP: the backend sees the node's address.
    let mut snat = Conn::open(&client, (VIP_SNAT, 80)).unwrap_or_else(|e| {
        let c = node.call(|a| a.loaded().map(|d| d.counters().unwrap()));
        let b = be_agent.call(|a| a.loaded().map(|d| d.counters().unwrap()));
        let links = sh(&["ip", "netns", "exec", nss.b(), "cat", "/proc/net/snmp"]).unwrap();
        panic!("LoadBalancer VIP (SNAT, XDP): {e}\nnode counters {c:?}\nbackend counters {b:?}\n{links}")
    });
    assert_eq!(snat.peer, NODE.to_string(), "SNAT: backend sees the node");
    snat.echo("one").unwrap();
    // DSR: the backend sees the client, and answers it directly as the VIP.
    let mut dsr = Conn::open(&client, (VIP_DSR, 80)).expect("LoadBalancer VIP (DSR, XDP)");
    assert_eq!(dsr.peer, CLIENT.to_string(), "DSR: backend sees the client");
    dsr.echo("one").unwrap();
    let mut np = Conn::open(&client, (NODE, NODE_PORT)).expect("NodePort");
    assert_eq!(np.peer, NODE.to_string());
    np.echo("np").unwrap();
    let mut cip = Conn::open(&client, (CLUSTER_IP, 80)).expect("ClusterIP");
    cip.echo("cip").unwrap();

    // Restart: a new agent on the same pins writes nothing; open connections carry on.
    drop(node);
    let dir = node_pin.0.clone();
    node = NsWorker::start(nss.n(), move || LbAgent::new(dir, LbMapSizes::small()));
    assert_eq!(
        apply(&node, Acceleration::Native),
        0,
        "restart with an unchanged intent writes nothing"
    );
    snat.echo("after restart").unwrap();
    dsr.echo("after restart").unwrap();

    // Live switches of acceleration, connections open all along.
    assert_eq!(
        apply(&node, Acceleration::Disabled),
        1,
        "native → disabled: one link goes"
    );
    assert_eq!(xdp_state(nss.n()), "none");
    snat.echo("tc only").unwrap();
    dsr.echo("tc only").unwrap();
    np.echo("tc only").unwrap();
    // A new connection through TC alone.
    let mut tc_new = Conn::open(&client, (VIP_SNAT, 80)).expect("SNAT through TC only");
    assert_eq!(tc_new.peer, NODE.to_string());
    tc_new.echo("x").unwrap();
    let mut tc_dsr = Conn::open(&client, (VIP_DSR, 80)).expect("DSR through TC only");
    assert_eq!(tc_dsr.peer, CLIENT.to_string());
    tc_dsr.echo("x").unwrap();

    assert_eq!(apply(&node, Acceleration::TestingOnly), 1);
    assert_eq!(xdp_state(nss.n()), "generic");
    snat.echo("generic").unwrap();
    dsr.echo("generic").unwrap();
    assert_eq!(
        apply(&node, Acceleration::Native),
        2,
        "generic → native: the generic link goes, the native one comes"
    );
    assert_eq!(xdp_state(nss.n()), "native");
    snat.echo("native again").unwrap();
    dsr.echo("native again").unwrap();
    tc_new.echo("native again").unwrap();
    assert_eq!(node.call(|a| a.status.devices[0].xdp.clone()), "Native");
    if tc_progs(nss.n(), "ingress") > 0 {
        assert_eq!(tc_progs(nss.n(), "ingress"), 2, "LB + DSR ingress on TCX");
        assert_eq!(tc_progs(nss.n(), "egress"), 1);
    }

    // Kube-proxy replacement off: links and entries go; on again: everything back.
    let mut off = intent("lb-node", NODE, "n0", Acceleration::Native);
    off.datapath.kube_proxy_replacement = false;
    let w = node
        .call(move |a| a.apply(&off).map_err(|e| e.to_string()))
        .unwrap();
    assert!(w > 0);
    assert_eq!(xdp_state(nss.n()), "none");
    let pins: BTreeSet<_> = cilia_datapath::lb_bpf::pinned_node_links(&node_pin.0);
    assert!(pins.is_empty(), "{pins:?}");
    assert!(read_lb_entries(&node_pin.0).unwrap().services.is_empty());
    assert!(apply(&node, Acceleration::Native) > 0);
    let mut again = Conn::open(&client, (VIP_SNAT, 80)).expect("served again");
    again.echo("back").unwrap();
}

// A refused intent (bad field) writes nothing and names the field and value; what was applied
// stays.
#[test]
fn bad_intent_keeps_what_is_pinned() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (namespaces, eBPF)");
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    let tag = format!("{}x", std::process::id());
    let nss = Namespaces::create(&tag);
    let pin = PinDir::new(&format!("{tag}-node"));
    nss.wire().expect("wiring namespaces");
    let dir = pin.0.clone();
    let node: NsWorker<LbAgent> =
        NsWorker::start(nss.n(), move || LbAgent::new(dir, LbMapSizes::small()));
    let good = intent("lb-node", NODE, "n0", Acceleration::Disabled);
    let g2 = good.clone();
    assert!(node.call(move |a| a.apply(&g2).unwrap()) > 0);
    let before = read_lb_entries(&pin.0).unwrap();

    let mut bad = good.clone();
    bad.datapath.maglev_table_size = 1000;
    let e = node.call(move |a| a.apply(&bad).unwrap_err().to_string());
    assert!(
        e.contains("datapath.maglevTableSize") && e.contains("1000"),
        "{e}"
    );
    let mut bad = good.clone();
    bad.datapath.devices = vec!["nope0".into()];
    let e = node.call(move |a| a.apply(&bad).unwrap_err().to_string());
    assert!(
        e.contains("datapath.devices[0]") && e.contains("nope0"),
        "{e}"
    );
    assert_eq!(read_lb_entries(&pin.0).unwrap(), before, "nothing written");
    let g3 = good.clone();
    assert_eq!(node.call(move |a| a.apply(&g3).unwrap()), 0);
}

/// Serves `peer <addr> <port>` (the address it sees, the port it listens on) then echoes lines:
/// the test tells two backends on one address apart.
fn tagged_echo_server(listener: TcpListener) {
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let peer = s
                    .peer_addr()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default();
                if writeln!(s, "peer {peer} {port}").is_err() {
                    return;
                }
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if s.write_all(line.as_bytes()).is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
}

fn backend_at(port: u16, terminating: bool) -> BackendIntent {
    BackendIntent {
        addr: BACKEND,
        port,
        protocol: Protocol::Tcp,
        port_name: "http".into(),
        node: Some("backend-node".into()),
        terminating,
        host_network: false,
    }
}

/// The backend port a connection reached (from the tagged greeting `<addr> <port>`).
fn port_of(c: &Conn) -> u16 {
    c.peer
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in greeting {:?}", c.peer))
}

/// Two namespaces' worth of setup for the drain tests: client, node (TC only) and a backend
/// address serving on 8080 and 8081 (two backends).
struct DrainWorld {
    client: NsWorker<()>,
    node: NsWorker<LbAgent>,
    pin: PathBuf,
}

fn drain_world(nss: &Namespaces, pin: &PinDir) -> DrainWorld {
    nss.wire().expect("wiring namespaces");
    let client: NsWorker<()> = NsWorker::start(nss.c(), || ());
    let be = NsWorker::start(nss.b(), || ());
    for port in [8080u16, 8081] {
        let l = be.call(move |_| TcpListener::bind(("0.0.0.0", port)).expect("bind"));
        tagged_echo_server(l);
    }
    let dir = pin.0.clone();
    let node: NsWorker<LbAgent> =
        NsWorker::start(nss.n(), move || LbAgent::new(dir, LbMapSizes::small()));
    DrainWorld {
        client,
        node,
        pin: pin.0.clone(),
    }
}

fn drain_intent(web: Vec<BackendIntent>, affinity: Option<u32>, other: bool) -> NodeIntent {
    let mut i = intent("lb-node", NODE, "n0", Acceleration::Disabled);
    let mut s = svc(
        "web",
        vec![fe(FrontendKind::LoadBalancer, Some(VIP_SNAT), 80)],
        LbMode::Snat,
    );
    s.algorithm = LbAlgorithm::Random;
    s.backends = web;
    s.session_affinity_timeout = affinity;
    let mut svcs = vec![s];
    if other {
        // A second service keeping both backends (so neither is draining).
        let mut o = svc(
            "other",
            vec![fe(FrontendKind::LoadBalancer, Some(VIP_DSR), 80)],
            LbMode::Snat,
        );
        o.backends = vec![backend_at(8080, false), backend_at(8081, false)];
        svcs.push(o);
    }
    i.services = ServiceMap::from_iter(svcs);
    i
}

fn apply_on(node: &NsWorker<LbAgent>, i: &NodeIntent) -> u64 {
    let i = i.clone();
    node.call(move |a| a.apply(&i).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| panic!("apply: {e}"))
}

/// The pinned backend entry of BACKEND:`port`: (present, draining).
fn entry_of(pin: &std::path::Path, port: u16) -> (bool, bool) {
    let e = read_lb_entries(pin).unwrap();
    match e
        .backends
        .values()
        .find(|b| u16::from_be(b.port) == port && b.address == u32::from(BACKEND).to_be())
    {
        Some(b) => (
            true,
            u32::from(b.flags) & cilia_datapath::maps::c::LB_BE_F_DRAINING != 0,
        ),
        None => (false, false),
    }
}

// Issue #8 at the agent: a backend removed from its Service keeps its established connections
// (its map entry stays, draining, across a restart too) while new connections never reach it;
// the agent releases the entry only once no live conntrack entry names it (connections closed,
// close timeout passed), and then writes nothing more. A terminating backend (listed, serving)
// gets the same: established connections only, unless it is all that is left.
#[test]
fn removed_backend_keeps_its_established_connections() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (namespaces, eBPF)");
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    let tag = format!("{}d", std::process::id());
    let nss = Namespaces::create(&tag);
    let pin = PinDir::new(&format!("{tag}-node"));
    let mut w = drain_world(&nss, &pin);
    let both = drain_intent(
        vec![backend_at(8080, false), backend_at(8081, false)],
        None,
        false,
    );
    assert!(apply_on(&w.node, &both) > 0);

    // Connections to both backends (random per flow: open until each has two).
    let mut conns: Vec<Conn> = Vec::new();
    for i in 0..64 {
        let have = |p| conns.iter().filter(|c| port_of(c) == p).count();
        if have(8080) >= 2 && have(8081) >= 2 {
            break;
        }
        let mut c = Conn::open(&w.client, (VIP_SNAT, 80)).expect("connection to the VIP");
        c.echo(&format!("open {i}")).unwrap();
        conns.push(c);
    }
    let (mut to_removed, mut to_kept): (Vec<Conn>, Vec<Conn>) =
        conns.into_iter().partition(|c| port_of(c) == 8081);
    assert!(
        to_removed.len() >= 2 && to_kept.len() >= 2,
        "both backends got connections"
    );

    // 8081 leaves the Service (gone from the EndpointSlice).
    let only_8080 = drain_intent(vec![backend_at(8080, false)], None, false);
    assert!(apply_on(&w.node, &only_8080) > 0);
    assert_eq!(
        entry_of(&w.pin, 8081),
        (true, true),
        "the removed backend's entry stays, draining"
    );
    assert_eq!(w.node.call(|a| a.status.draining_backends), 1);
    for (i, c) in to_removed.iter_mut().chain(to_kept.iter_mut()).enumerate() {
        c.echo(&format!("after removal {i}"))
            .unwrap_or_else(|e| panic!("established connection {i} broke: {e}"));
    }
    for i in 0..16 {
        let mut c = Conn::open(&w.client, (VIP_SNAT, 80)).expect("new connection");
        assert_eq!(
            port_of(&c),
            8080,
            "new connection {i} reached the removed backend"
        );
        c.echo("new").unwrap();
    }

    // A restart keeps it, writing nothing; past the grace it is still named by live flows.
    drop(w.node);
    let dir = w.pin.clone();
    w.node = NsWorker::start(nss.n(), move || LbAgent::new(dir, LbMapSizes::small()));
    assert_eq!(apply_on(&w.node, &only_8080), 0, "restart: no writes");
    std::thread::sleep(Duration::from_nanos(
        cilia_datapath::lb::BackendRetention::GRACE_NS + 200_000_000,
    ));
    assert_eq!(
        apply_on(&w.node, &only_8080),
        0,
        "past the grace, live flows name it: kept"
    );
    assert_eq!(entry_of(&w.pin, 8081), (true, true));
    for c in to_removed.iter_mut() {
        c.echo("after restart")
            .expect("established connection after restart");
    }

    // The connections end: their conntrack entries close (10 s), then the entry is released.
    let closed = std::time::Instant::now();
    drop(to_removed);
    std::thread::sleep(Duration::from_millis(300));
    apply_on(&w.node, &only_8080);
    assert_eq!(
        entry_of(&w.pin, 8081),
        (true, true),
        "closing flows still name it"
    );
    let mut released = None;
    while closed.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1100));
        apply_on(&w.node, &only_8080);
        if !entry_of(&w.pin, 8081).0 {
            released = Some(closed.elapsed());
            break;
        }
    }
    let released = released.expect("the removed backend is released once its flows are gone");
    assert!(
        released >= Duration::from_secs(10),
        "released after {released:?}, before the close timeout"
    );
    assert_eq!(w.node.call(|a| a.status.draining_backends), 0);
    assert_eq!(
        apply_on(&w.node, &only_8080),
        0,
        "released: nothing more to write"
    );
    for c in to_kept.iter_mut() {
        c.echo("still here").unwrap();
    }

    // Terminating (listed, serving) while 8080 is active: established only. Alone: it serves.
    let term = drain_intent(
        vec![backend_at(8080, false), backend_at(8081, true)],
        None,
        false,
    );
    apply_on(&w.node, &term);
    assert_eq!(
        entry_of(&w.pin, 8081),
        (true, true),
        "terminating: draining"
    );
    let rows = w.node.call(|a| a.rows.clone());
    assert!(
        rows[0]
            .backends
            .iter()
            .any(|b| b.port == 8081 && b.state.name() == "terminating"),
        "{rows:?}"
    );
    for i in 0..16 {
        let c = Conn::open(&w.client, (VIP_SNAT, 80)).expect("new connection");
        assert_eq!(
            port_of(&c),
            8080,
            "new connection {i} reached the terminating backend"
        );
    }
    let alone = drain_intent(vec![backend_at(8081, true)], None, false);
    apply_on(&w.node, &alone);
    let mut c = Conn::open(&w.client, (VIP_SNAT, 80)).expect("terminating backend alone serves");
    assert_eq!(port_of(&c), 8081);
    c.echo("fallback").unwrap();
}

// Session affinity to a backend its Service dropped (still serving another Service, so not
// draining) is deleted by the agent: the client's new connections go to a backend still in the
// Service; its established connection carries on.
#[test]
fn affinity_to_a_removed_backend_is_dropped() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root (namespaces, eBPF)");
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    let tag = format!("{}a", std::process::id());
    let nss = Namespaces::create(&tag);
    let pin = PinDir::new(&format!("{tag}-node"));
    let w = drain_world(&nss, &pin);
    let both = drain_intent(
        vec![backend_at(8080, false), backend_at(8081, false)],
        Some(300),
        true,
    );
    assert!(apply_on(&w.node, &both) > 0);
    let mut first = Conn::open(&w.client, (VIP_SNAT, 80)).expect("connection");
    let sticky = port_of(&first);
    for i in 0..12 {
        let c = Conn::open(&w.client, (VIP_SNAT, 80)).expect("connection");
        assert_eq!(port_of(&c), sticky, "affinity: connection {i} moved");
    }
    let other = if sticky == 8080 { 8081 } else { 8080 };
    let without = drain_intent(vec![backend_at(other, false)], Some(300), true);
    apply_on(&w.node, &without);
    assert_eq!(
        entry_of(&w.pin, sticky),
        (true, false),
        "still slotted by the other Service: not draining"
    );
    for i in 0..12 {
        let c = Conn::open(&w.client, (VIP_SNAT, 80)).expect("connection");
        assert_eq!(
            port_of(&c),
            other,
            "new connection {i} followed affinity to the dropped backend"
        );
    }
    first.echo("established").unwrap();
}
