//! Masquerading on real traffic: a pod namespace behind a node namespace whose uplink veth carries
//! the masquerading (BPF programs, or the iptables fallback), and an "outside" namespace whose echo
//! servers answer with the peer address they saw. Every namespace and pin is removed on drop, also
//! when an assertion fails.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use cilia_datapath::masq::{IptablesMasq, MasqDesired, MasqMode, iptables_rules};
use cilia_datapath::masq_bpf::{MasqDatapath, MasqMapSizes};
use cilia_datapath::masq_maps::MasqCounter;
use cilia_model::intent::{NodeFacts, NodeIntent, RouteIntent};
use cilia_model::service::DatapathConfig;

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const POD_GW: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const PEER_NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
/// Served by the outside namespace; masqueraded.
const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Served by the outside namespace; inside the ip-masq-agent set, so never masqueraded.
const NONMASQ: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
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
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

/// A named network namespace, deleted on drop (its devices go with it).
struct NetNs(String);

impl NetNs {
    fn new(role: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "cilia-masq-{}-{}-{role}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
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

    /// Runs `f` on a thread inside this namespace (processes it spawns are in it too).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a namespace fd we hold; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.0]);
    }
}

/// A bpffs directory removed (with every pinned map and link in it) on drop.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// pod (eth0 10.244.0.5) — lxc0 [node, 10.244.0.1; up0 172.18.0.2] — out0 [outside, 172.18.0.100,
/// serving 203.0.113.10 and 192.168.50.10, route back to the pod CIDR via the node].
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
    outside.ip(&["addr", "add", &format!("{NONMASQ}/32"), "dev", "lo"]);
    outside.ip(&["route", "add", "10.244.0.0/24", "via", &NODE_IP.to_string()]);
    Topology { pod, node, outside }
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
        ip_masq_agent: bpf,
        non_masquerade_cidrs: vec!["192.168.0.0/16".parse().unwrap()],
        ..DatapathConfig::default()
    };
    i
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    /// A datagram of this many bytes each way (above the MTU: fragmented both ways).
    Udp(usize),
}

/// Connects from the pod to `dst` and returns the peer address the outside server saw (it answers
/// with it).
fn seen_peer(t: &Topology, dst: Ipv4Addr, proto: Proto) -> Result<String, String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = t.outside.spawn(move || -> Result<String, String> {
        match proto {
            Proto::Tcp => {
                let l = TcpListener::bind(SocketAddrV4::new(dst, TCP_PORT))
                    .map_err(|e| e.to_string())?;
                ready_tx.send(()).unwrap();
                l.set_nonblocking(false).unwrap();
                let (mut s, peer) = l.accept().map_err(|e| format!("accept: {e}"))?;
                let seen = peer.ip().to_string();
                s.write_all(seen.as_bytes()).map_err(|e| e.to_string())?;
                Ok(seen)
            }
            Proto::Udp(_) => {
                let u =
                    UdpSocket::bind(SocketAddrV4::new(dst, UDP_PORT)).map_err(|e| e.to_string())?;
                u.set_read_timeout(Some(TIMEOUT)).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = vec![0u8; 65536];
                let (n, peer) = u.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
                let seen = peer.ip().to_string();
                // The answer is as long as the question: big questions get fragmented answers.
                let mut reply = seen.clone().into_bytes();
                reply.resize(n.max(reply.len()), 0);
                u.send_to(&reply, peer).map_err(|e| e.to_string())?;
                Ok(seen)
            }
        }
    });
    ready_rx
        .recv_timeout(TIMEOUT)
        .map_err(|_| "server did not start".to_string())?;
    let client = t.pod.run(move || -> Result<String, String> {
        let mut buf = [0u8; 64];
        match proto {
            Proto::Tcp => {
                let mut s =
                    TcpStream::connect_timeout(&SocketAddrV4::new(dst, TCP_PORT).into(), TIMEOUT)
                        .map_err(|e| format!("connect {dst}:{TCP_PORT}: {e}"))?;
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                Ok(String::from_utf8_lossy(&buf[..n]).to_string())
            }
            Proto::Udp(size) => {
                let u = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                u.set_read_timeout(Some(TIMEOUT)).unwrap();
                u.send_to(&vec![b'x'; size], SocketAddrV4::new(dst, UDP_PORT))
                    .map_err(|e| e.to_string())?;
                let mut big = vec![0u8; 65536];
                let (n, _) = u
                    .recv_from(&mut big)
                    .map_err(|e| format!("recv reply: {e}"))?;
                if n < size {
                    return Err(format!("reply of {n} bytes to {size}"));
                }
                let end = big[..n].iter().position(|b| *b == 0).unwrap_or(n);
                Ok(String::from_utf8_lossy(&big[..end]).to_string())
            }
        }
    });
    if client.is_err() {
        // Unblock a TCP server still waiting in accept.
        let _ = t.outside.run(move || {
            TcpStream::connect_timeout(&SocketAddrV4::new(dst, TCP_PORT).into(), TIMEOUT)
        });
    }
    let seen = server.join().map_err(|_| "server panicked".to_string())??;
    let reply = client?;
    if reply != seen {
        return Err(format!("client got {reply:?}, server saw {seen:?}"));
    }
    Ok(seen)
}

/// Sends one ICMP echo request with identifier `id` (raw socket) and waits for the matching reply:
/// it only arrives if the masquerade translated the request and restored the reply's identifier.
fn ping(dst: Ipv4Addr, id: u16) -> Result<(), String> {
    // SAFETY: plain socket calls on buffers we own; the fd is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        if fd < 0 {
            return Err(format!(
                "raw ICMP socket: {}",
                std::io::Error::last_os_error()
            ));
        }
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let mut req = [
            8u8, 0, 0, 0, 0, 0, 0, 1, b'c', b'i', b'l', b'i', b'a', 0, 0, 0,
        ];
        req[4..6].copy_from_slice(&id.to_be_bytes());
        let mut sum: u32 = req
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        req[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let sent = libc::sendto(
            fd,
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
            &to as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        let mut result = Err(format!("sendto {dst}: {}", std::io::Error::last_os_error()));
        if sent >= 0 {
            result = Err(format!("no echo reply from {dst} with id {id:#x}"));
            for _ in 0..5 {
                let mut buf = [0u8; 256];
                let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                if n < 0 {
                    break;
                }
                let hl = usize::from(buf[0] & 0x0f) * 4;
                let icmp = &buf[hl..n as usize];
                if buf[12..16] == dst.octets()
                    && icmp.len() >= 8
                    && icmp[0] == 0
                    && icmp[4..6] == id.to_be_bytes()
                {
                    result = Ok(());
                    break;
                }
            }
        }
        libc::close(fd);
        result
    }
}

fn root() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: network namespaces and eBPF need root");
        return false;
    }
    true
}

// With BPF masquerading on the node's uplink: a pod's TCP and UDP traffic to the outside arrives
// from the node address and the replies find the pod; traffic to an ip-masq-agent CIDR arrives from
// the pod address; ping works through the ICMP echo translation.
#[test]
fn bpf_masquerading_on_the_uplink() {
    if !root() {
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    let t = topology();
    let pins = Pins(PathBuf::from(format!(
        "/sys/fs/bpf/cilia/test-masq-netns-{}",
        std::process::id()
    )));
    let want = MasqDesired::from_intent(&intent(true)).unwrap();
    assert_eq!(want.mode, MasqMode::Bpf);
    let pin = pins.0.clone();
    let w = want.clone();
    t.node
        .run(move || -> Result<(), String> {
            let mut dp =
                MasqDatapath::open(&pin, &MasqMapSizes::small()).map_err(|e| e.to_string())?;
            dp.apply(&w.entries(0x1234)).map_err(|e| e.to_string())?;
            for d in w.devices("up0") {
                dp.attach(&d).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .unwrap();

    let node = NODE_IP.to_string();
    let pod = POD_IP.to_string();
    assert_eq!(
        seen_peer(&t, EXT, Proto::Tcp).unwrap(),
        node,
        "TCP masqueraded"
    );
    assert_eq!(
        seen_peer(&t, EXT, Proto::Udp(8)).unwrap(),
        node,
        "UDP masqueraded"
    );
    assert_eq!(
        seen_peer(&t, NONMASQ, Proto::Tcp).unwrap(),
        pod,
        "non-masquerade CIDR"
    );
    assert_eq!(
        seen_peer(&t, NONMASQ, Proto::Udp(8)).unwrap(),
        pod,
        "non-masquerade CIDR"
    );
    // 4000-byte datagrams leave and come back as fragments: later fragments follow their first one.
    assert_eq!(
        seen_peer(&t, EXT, Proto::Udp(4000)).unwrap(),
        node,
        "fragmented UDP masqueraded both ways"
    );
    let counters = cilia_datapath::masq_bpf::read_masq_counters(&pins.0).unwrap();
    let (out_frags, back_frags) = (
        counters[MasqCounter::Frag as usize],
        counters[MasqCounter::RevNatFrag as usize],
    );
    assert!(
        out_frags >= 2 && back_frags >= 2,
        "4000 bytes over MTU 1500 are 3 fragments each way: later fragments out {out_frags}, back {back_frags}"
    );
    t.pod
        .run(|| ping(EXT, 0x4242))
        .expect("ICMP echo through the masquerade");

    // The flows are in the pinned NAT map, read without the loader (as cilia-dbg does).
    let nat = cilia_datapath::masq_bpf::read_nat(&pins.0).unwrap();
    let protos: BTreeSet<u8> = nat
        .keys()
        .filter(|k| k.saddr == u32::from_ne_bytes(POD_IP.octets()))
        .map(|k| k.proto)
        .collect();
    assert_eq!(protos, [1u8, 6, 17].into_iter().collect(), "{nat:?}");
    // Switching to iptables mode turns BPF off before iptables goes on: never both.
    let pin = pins.0.clone();
    let ipt = MasqDesired::from_intent(&intent(false)).unwrap();
    let i2 = ipt.clone();
    t.node
        .run(move || -> Result<(), String> {
            let mut dp =
                MasqDatapath::open(&pin, &MasqMapSizes::small()).map_err(|e| e.to_string())?;
            dp.apply(&i2.entries(0x1234)).map_err(|e| e.to_string())?;
            dp.detach_all();
            if !dp.attached().is_empty() {
                return Err("links still pinned".into());
            }
            IptablesMasq::new().apply(&i2).map_err(|e| e.to_string())?;
            Ok(())
        })
        .unwrap();
    assert_eq!(
        seen_peer(&t, EXT, Proto::Tcp).unwrap(),
        node,
        "iptables after the switch"
    );
    assert_eq!(
        seen_peer(&t, NONMASQ, Proto::Tcp).unwrap(),
        node,
        "iptables has no ip-masq-agent"
    );
}

// The iptables fallback: CILIUM_POST_nat masquerades the pod to the node address, a second apply
// changes nothing, and removing it gives the pod its own address back.
#[test]
fn iptables_fallback_masquerades() {
    if !root() {
        return;
    }
    if let Err(e) = sh(&["iptables", "--version"]) {
        eprintln!("SKIP: iptables is not installed ({e}); `apt-get install -y iptables`");
        return;
    }
    let t = topology();
    let want = MasqDesired::from_intent(&intent(false)).unwrap();
    assert_eq!(want.mode, MasqMode::Iptables);
    let w = want.clone();
    let changes = t.node.run(move || IptablesMasq::new().apply(&w)).unwrap();
    assert_eq!(changes, 2, "chain and feeder installed");
    let saved = t.node.exec(&["iptables-save", "-t", "nat"]).unwrap();
    for r in iptables_rules(&want) {
        assert!(saved.contains(&r), "missing {r:?} in\n{saved}");
    }
    let node = NODE_IP.to_string();
    assert_eq!(seen_peer(&t, EXT, Proto::Tcp).unwrap(), node);
    assert_eq!(seen_peer(&t, EXT, Proto::Udp(8)).unwrap(), node);
    let w = want.clone();
    assert_eq!(
        t.node.run(move || IptablesMasq::new().apply(&w)).unwrap(),
        0,
        "zero churn"
    );
    let removed = t.node.run(|| IptablesMasq::new().remove()).unwrap();
    assert_eq!(removed, 2);
    let saved = t.node.exec(&["iptables-save", "-t", "nat"]).unwrap();
    assert!(!saved.contains("CILIUM_POST_nat"), "{saved}");
    // A new flow (fresh conntrack) now keeps the pod address.
    assert_eq!(
        seen_peer(&t, NONMASQ, Proto::Tcp).unwrap(),
        POD_IP.to_string()
    );
}

// IPVLAN needs the kernel module; this kernel may lack it. The detector says why, and the test skips
// with that reason instead of passing silently.
#[test]
fn ipvlan_l3_needs_the_module() {
    if !root() {
        return;
    }
    match cilia_datapath::ipvlan::ipvlan_support() {
        Err(reason) => eprintln!("SKIP: {reason}"),
        Ok(()) => {
            // With the module: an IPVLAN L3 child of the node's uplink-side device can be created
            // in the node namespace, which is all the L3 plan needs from the kernel.
            let t = topology();
            t.node.ip(&[
                "link", "add", "link", "lxc0", "name", "ipv0", "type", "ipvlan", "mode", "l3",
            ]);
            t.node.ip(&["link", "del", "ipv0"]);
        }
    }
}
