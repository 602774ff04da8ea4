//! Packet tables for the load balancer, shared by the BPF_PROG_TEST_RUN tests and the `service_lb`
//! benchmark: frames built from scratch, the node and services they run against, the network
//! namespace the FIB lookups see, and checks that compare every rewritten field and recompute both
//! checksums from scratch.

use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

use crate::bpf::BpfError;
use crate::lb::{
    Backend, Frontend, LbAlgorithm, LbMode, NoBackendResponse, Proto, ServiceSpec, flow_hash,
    map_diff, snat_port_candidate, wanted_dev_macs,
};
use crate::lb_bpf::LbDatapath;
use crate::lb_maglev::MaglevParams;
use crate::lb_maps::{Lb4Tuple, LbConfig, LbCounter, be32};
use crate::maps::c;
use crate::testrun::test_run;

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// MAC of the node device `lb0` in the test namespace.
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Default gateway: where replies to outside clients go.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// The node hosting the pod CIDR 10.244.1.0/24 (remote backends).
pub const PEER_NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// A MAC the client's frames come from.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const CLIENT_PORT: u16 = 40123;
pub const SNAT_PORT_MIN: u16 = 32768;
pub const SNAT_PORT_MAX: u16 = 60999;
pub const HASH_SEED: u32 = 0x5eed_1234;
pub const MAGLEV: MaglevParams = MaglevParams {
    table_size: 251,
    seed: 7,
};

pub const VIP_SNAT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP_DSR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const VIP_HYBRID: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
pub const VIP_EMPTY_DROP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 13);
pub const VIP_EMPTY_REJECT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 14);
pub const VIP_UDP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 15);
pub const VIP_HOSTNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 16);
pub const VIP_LOCAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 17);
pub const VIP_MAGLEV: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const VIP_AFFINITY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
pub const VIP_MISS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
pub const NODEPORT: u16 = 30080;

pub const BE_SNAT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const BE_DSR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
pub const BE_HYBRID: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
pub const BE_UDP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 8);
/// A pod on this node (reached through the device `pod0`).
pub const BE_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 9);
pub const BE_PORT: u16 = 8080;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

/// The node config every table row runs with.
pub fn node_config() -> LbConfig {
    LbConfig {
        node_addr: be32(NODE_IP),
        node_mac: NODE_MAC,
        snat_port_min: SNAT_PORT_MIN,
        snat_port_max: SNAT_PORT_MAX,
        pad: 0,
        maglev_table_size: MAGLEV.table_size,
        hash_seed: HASH_SEED,
        // LbDatapath::set_config writes this kernel's clock fields.
        ..LbConfig::default()
    }
}

fn backend(addr: Ipv4Addr, port: u16) -> Backend {
    Backend {
        addr,
        port,
        local: false,
        host_network: false,
    }
}

/// A service with one frontend, in SNAT mode, random algorithm, dropping without backends.
pub fn service(
    id: u32,
    addr: Ipv4Addr,
    port: u16,
    proto: Proto,
    backends: Vec<Backend>,
) -> ServiceSpec {
    ServiceSpec {
        id,
        frontend: Frontend { addr, port, proto },
        backends,
        mode: LbMode::Snat,
        algorithm: LbAlgorithm::Random,
        external_traffic_local: false,
        affinity_timeout: None,
        no_backend: NoBackendResponse::Drop,
        draining: Vec::new(),
    }
}

/// Backends of the maglev and affinity services.
pub fn maglev_backends() -> Vec<Backend> {
    (20..25)
        .map(|i| backend(Ipv4Addr::new(10, 244, 1, i), 80))
        .collect()
}

/// The services every table row runs against.
pub fn world() -> Vec<ServiceSpec> {
    use Proto::{Tcp, Udp};
    let mut v = vec![
        service(1, VIP_SNAT, 80, Tcp, vec![backend(BE_SNAT, BE_PORT)]),
        ServiceSpec {
            mode: LbMode::Dsr,
            ..service(2, VIP_DSR, 80, Tcp, vec![backend(BE_DSR, BE_PORT)])
        },
        ServiceSpec {
            mode: LbMode::Hybrid,
            ..service(3, VIP_HYBRID, 53, Tcp, vec![backend(BE_HYBRID, 5353)])
        },
        ServiceSpec {
            mode: LbMode::Hybrid,
            ..service(4, VIP_HYBRID, 53, Udp, vec![backend(BE_HYBRID, 5353)])
        },
        service(5, VIP_EMPTY_DROP, 80, Tcp, vec![]),
        ServiceSpec {
            no_backend: NoBackendResponse::Reject,
            ..service(6, VIP_EMPTY_REJECT, 80, Tcp, vec![])
        },
        service(7, VIP_UDP, 53, Udp, vec![backend(BE_UDP, 53)]),
        ServiceSpec {
            mode: LbMode::Dsr,
            ..service(
                8,
                VIP_HOSTNET,
                80,
                Tcp,
                vec![Backend {
                    host_network: true,
                    ..backend(PEER_NODE_IP, BE_PORT)
                }],
            )
        },
        service(
            9,
            VIP_LOCAL,
            80,
            Tcp,
            vec![Backend {
                local: true,
                ..backend(BE_LOCAL, 80)
            }],
        ),
        ServiceSpec {
            algorithm: LbAlgorithm::Maglev,
            ..service(10, VIP_MAGLEV, 80, Tcp, maglev_backends())
        },
        service(11, NODE_IP, NODEPORT, Tcp, vec![backend(BE_SNAT, BE_PORT)]),
        ServiceSpec {
            affinity_timeout: Some(300),
            ..service(12, VIP_AFFINITY, 80, Tcp, maglev_backends())
        },
    ];
    v.sort_by_key(|s| s.id);
    v
}

/// The L4 part of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// `zero_csum`: sent without checksum (allowed for UDP over IPv4).
    Udp {
        sport: u16,
        dport: u16,
        zero_csum: bool,
    },
    /// An ICMP message quoting `quoted` (an IPv4 header and the first 8 bytes after it).
    Icmp {
        ty: u8,
        code: u8,
        quoted: Vec<u8>,
    },
}

/// Which bytes of the datagram a fragment carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// Byte offset into the datagram (multiple of 8).
    pub offset: usize,
    /// Bytes carried (the rest of the datagram when `more` is false).
    pub len: usize,
    pub more: bool,
}

/// An Ethernet/IPv4 frame to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    /// Raw option bytes (padded to 4 by the builder with EOL).
    pub options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
    pub fragment: Option<Fragment>,
}

impl FrameSpec {
    pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Self {
        FrameSpec {
            dst_mac: NODE_MAC,
            src_mac: CLIENT_MAC,
            src: src.0,
            dst: dst.0,
            tos: 0,
            ttl: 64,
            id: 0x1c46,
            options: Vec::new(),
            l4: L4::Tcp {
                sport: src.1,
                dport: dst.1,
                flags,
            },
            // 64-byte frame: 14 + 20 + 20 + 10.
            payload: (0..10u8).collect(),
            fragment: None,
        }
    }

    pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Self {
        FrameSpec {
            l4: L4::Udp {
                sport: src.1,
                dport: dst.1,
                zero_csum: false,
            },
            // 64-byte frame: 14 + 20 + 8 + 22.
            payload: (0..22u8).collect(),
            ..FrameSpec::tcp(src, dst, 0)
        }
    }

    fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Icmp { .. } => PROTO_ICMP,
        }
    }

    /// The whole L4 datagram (header with a correct checksum, then payload).
    pub fn datagram(&self) -> Vec<u8> {
        let mut d = Vec::new();
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                d.extend_from_slice(&sport.to_be_bytes());
                d.extend_from_slice(&dport.to_be_bytes());
                d.extend_from_slice(&1000u32.to_be_bytes());
                let ack: u32 = if flags & TCP_ACK != 0 { 2000 } else { 0 };
                d.extend_from_slice(&ack.to_be_bytes());
                d.push(5 << 4);
                d.push(*flags);
                d.extend_from_slice(&64240u16.to_be_bytes());
                d.extend_from_slice(&[0, 0, 0, 0]);
            }
            L4::Udp { sport, dport, .. } => {
                d.extend_from_slice(&sport.to_be_bytes());
                d.extend_from_slice(&dport.to_be_bytes());
                d.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                d.extend_from_slice(&[0, 0]);
            }
            L4::Icmp { ty, code, quoted } => {
                d.extend_from_slice(&[*ty, *code, 0, 0, 0, 0, 0, 0]);
                d.extend_from_slice(quoted);
            }
        }
        d.extend_from_slice(&self.payload);
        let sum = match &self.l4 {
            L4::Icmp { .. } => csum(&d),
            L4::Udp {
                zero_csum: true, ..
            } => 0,
            _ => l4_csum(self.src, self.dst, self.proto(), &d),
        };
        let at = l4_csum_offset(self.proto());
        d[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        d
    }

    /// An ICMP frame whose header's last four bytes (e.g. the next-hop MTU of "fragmentation
    /// needed") are `rest`, checksum included.
    pub fn build_icmp_with_rest(&self, rest: [u8; 4]) -> Vec<u8> {
        let mut f = self.build();
        let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
        f[l4 + 4..l4 + 8].copy_from_slice(&rest);
        f[l4 + 2] = 0;
        f[l4 + 3] = 0;
        let c = csum(&f[l4..]);
        f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        f
    }

    pub fn build(&self) -> Vec<u8> {
        let datagram = self.datagram();
        let (carried, frag_field) = match self.fragment {
            None => (datagram, 0u16),
            Some(f) => {
                let end = if f.more {
                    f.offset + f.len
                } else {
                    datagram.len()
                };
                let bits = ((f.offset / 8) as u16) | if f.more { 0x2000 } else { 0 };
                (datagram[f.offset..end].to_vec(), bits)
            }
        };
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let ihl = 5 + opts.len() / 4;
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&[0x08, 0x00]);
        let tot = (ihl * 4 + carried.len()) as u16;
        let mut ip = vec![0x40 | ihl as u8, self.tos];
        ip.extend_from_slice(&tot.to_be_bytes());
        ip.extend_from_slice(&self.id.to_be_bytes());
        ip.extend_from_slice(&frag_field.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&opts);
        let s = csum(&ip);
        ip[10..12].copy_from_slice(&s.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&carried);
        f
    }
}

fn l4_csum_offset(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 16,
        PROTO_UDP => 6,
        _ => 2,
    }
}

fn sum16(data: &[u8], mut s: u32) -> u32 {
    for ch in data.chunks(2) {
        let w = if ch.len() == 2 {
            u16::from_be_bytes([ch[0], ch[1]])
        } else {
            u16::from(ch[0]) << 8
        };
        s += u32::from(w);
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The Internet checksum of `data` (the value to store).
pub fn csum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// The TCP/UDP checksum of a datagram (checksum field included as it is) with its pseudo header.
pub fn l4_csum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, datagram: &[u8]) -> u16 {
    let mut ph = Vec::with_capacity(12);
    ph.extend_from_slice(&src.octets());
    ph.extend_from_slice(&dst.octets());
    ph.extend_from_slice(&[0, proto]);
    ph.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    let s = !fold(sum16(datagram, sum16(&ph, 0)));
    if proto == PROTO_UDP && s == 0 {
        0xffff
    } else {
        s
    }
}

/// The fields of a frame the load balancer may rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_field: u16,
    pub ttl: u8,
    pub proto: u8,
    pub ip_csum: u16,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub options: Vec<u8>,
    pub l4_off: usize,
    /// Zero for ICMP and later fragments.
    pub sport: u16,
    pub dport: u16,
    pub l4_csum: u16,
}

pub fn parse(f: &[u8]) -> Result<Parsed, String> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return Err(format!("not an IPv4 frame ({} bytes)", f.len()));
    }
    let ip = &f[14..];
    let ihl = ip[0] & 0x0f;
    let hl = usize::from(ihl) * 4;
    if ip.len() < hl {
        return Err("truncated IPv4 header".into());
    }
    let frag_field = u16::from_be_bytes([ip[6], ip[7]]);
    let later = frag_field & 0x1fff != 0;
    let proto = ip[9];
    let l4_off = 14 + hl;
    let l4 = &f[l4_off..];
    let (sport, dport, l4_csum) = if later {
        (0, 0, 0)
    } else {
        let at = l4_csum_offset(proto);
        let c = if l4.len() >= at + 2 {
            u16::from_be_bytes([l4[at], l4[at + 1]])
        } else {
            0
        };
        if proto == PROTO_ICMP || l4.len() < 4 {
            (0, 0, c)
        } else {
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
                c,
            )
        }
    };
    Ok(Parsed {
        dst_mac: f[0..6].try_into().unwrap(),
        src_mac: f[6..12].try_into().unwrap(),
        ihl,
        tos: ip[1],
        tot_len: u16::from_be_bytes([ip[2], ip[3]]),
        id: u16::from_be_bytes([ip[4], ip[5]]),
        frag_field,
        ttl: ip[8],
        proto,
        ip_csum: u16::from_be_bytes([ip[10], ip[11]]),
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        options: ip[20..hl].to_vec(),
        l4_off,
        sport,
        dport,
        l4_csum,
    })
}

/// Recomputes both checksums of `frame` from scratch. `rest` is the part of the datagram that later
/// fragments carry (empty for whole packets); later fragments have only the IPv4 checksum.
pub fn verify_checksums(frame: &[u8], rest: &[u8]) -> Result<(), String> {
    let p = parse(frame)?;
    let hl = usize::from(p.ihl) * 4;
    if fold(sum16(&frame[14..14 + hl], 0)) != 0xffff {
        let mut h = frame[14..14 + hl].to_vec();
        h[10] = 0;
        h[11] = 0;
        return Err(format!(
            "IPv4 checksum: got {:#06x} expected {:#06x}",
            p.ip_csum,
            csum(&h)
        ));
    }
    if p.frag_field & 0x1fff != 0 {
        return Ok(());
    }
    let mut datagram = frame[p.l4_off..].to_vec();
    datagram.extend_from_slice(rest);
    let at = l4_csum_offset(p.proto);
    let mut zeroed = datagram.clone();
    zeroed[at] = 0;
    zeroed[at + 1] = 0;
    let want = match p.proto {
        PROTO_ICMP => csum(&zeroed),
        PROTO_UDP if p.l4_csum == 0 => 0,
        _ => l4_csum(p.src, p.dst, p.proto, &zeroed),
    };
    if p.l4_csum != want {
        return Err(format!(
            "L4 checksum (proto {}): got {:#06x} expected {:#06x}",
            p.proto, p.l4_csum, want
        ));
    }
    Ok(())
}

/// What a program did with a frame, the same for XDP and TC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Out of the device it came in on (XDP_TX / TC redirect to the ingress device).
    Tx,
    /// TC only: redirected to another device (`bpf_redirect_neigh`, the kernel fills in the MACs).
    /// The return code is TC_ACT_REDIRECT as for [`Verdict::Tx`]; the test run does not expose the
    /// target, so the caller tells them apart by the `XmitRedirect` counter ([`Verdict::refine`]).
    Redirect,
    Other(u32),
}

/// Where a table row runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Verdict {
    pub fn of(hook: Hook, retval: u32) -> Self {
        match (hook, retval) {
            (Hook::Xdp, 1) | (Hook::Tc, 2) => Verdict::Drop,
            (Hook::Xdp, 2) | (Hook::Tc, u32::MAX) => Verdict::Pass,
            (Hook::Xdp, 3) | (Hook::Tc, 7) => Verdict::Tx,
            (_, r) => Verdict::Other(r),
        }
    }

    /// A TC redirect whose run counted `xmit_redirect` (and not `xmit_tx`) went to another device.
    pub fn refine(self, hook: Hook, before: &[u64], after: &[u64]) -> Self {
        let grew = |c: LbCounter| after[c as usize] > before[c as usize];
        if hook == Hook::Tc
            && self == Verdict::Tx
            && grew(LbCounter::XmitRedirect)
            && !grew(LbCounter::XmitTx)
        {
            Verdict::Redirect
        } else {
            self
        }
    }
}

/// `struct xdp_md` for a test run arriving on `ifindex`.
pub fn xdp_ctx(frame_len: usize, ifindex: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    for w in [0u32, frame_len as u32, 0, ifindex, 0, 0] {
        v.extend_from_slice(&w.to_ne_bytes());
    }
    v
}

/// Size of `struct __sk_buff` passed as a test-run context.
const SKB_CTX_LEN: usize = 192;
/// Offset of `__sk_buff.ifindex`.
const SKB_IFINDEX_OFF: usize = 40;

/// `struct __sk_buff` for a test run on `ifindex`.
pub fn skb_ctx(ifindex: u32) -> Vec<u8> {
    let mut v = vec![0u8; SKB_CTX_LEN];
    v[SKB_IFINDEX_OFF..SKB_IFINDEX_OFF + 4].copy_from_slice(&ifindex.to_ne_bytes());
    v
}

/// Runs `frame` once through a program at `hook`, arriving on `ifindex`.
pub fn run_frame(
    prog_fd: std::os::fd::RawFd,
    hook: Hook,
    ifindex: u32,
    frame: &[u8],
) -> io::Result<(Verdict, Vec<u8>)> {
    let ctx = match hook {
        Hook::Xdp => xdp_ctx(frame.len(), ifindex),
        Hook::Tc => skb_ctx(ifindex),
    };
    let out = test_run(prog_fd, frame, 1, Some(&ctx))?;
    Ok((Verdict::of(hook, out.retval), out.data))
}

/// The network namespace a table runs in: device `lb0` (the node device, NODE_IP, NODE_MAC) with
/// permanent neighbours for the gateway and the peer node, and `pod0` towards the local pod, so
/// FIB lookups answer as on a node.
#[derive(Debug, Clone, Copy)]
pub struct TestNet {
    pub lb0: u32,
    pub pod0: u32,
}

fn sh(args: &[&str]) -> io::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// Runs `f` on a fresh thread inside a new, private network namespace set up as [`TestNet`]. The
/// namespace and its devices vanish with the thread.
pub fn in_test_net<T: Send + 'static>(
    f: impl FnOnce(TestNet) -> T + Send + 'static,
) -> io::Result<T> {
    std::thread::spawn(move || -> io::Result<T> {
        // SAFETY: unshare only affects this thread; processes it spawns inherit the namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let node_mac = mac(NODE_MAC);
        let router_mac = mac(ROUTER_MAC);
        let peer_mac = mac(PEER_NODE_MAC);
        let node_cidr = format!("{NODE_IP}/16");
        let router = ROUTER_IP.to_string();
        let peer = PEER_NODE_IP.to_string();
        let local = BE_LOCAL.to_string();
        // bpf_fib_lookup answers only where forwarding is on.
        sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for cmd in [
            vec!["ip", "link", "set", "lo", "up"],
            vec![
                "ip", "link", "add", "lb0", "type", "veth", "peer", "name", "lb1",
            ],
            vec!["ip", "link", "set", "lb0", "address", &node_mac],
            vec!["ip", "link", "set", "lb0", "up"],
            vec!["ip", "link", "set", "lb1", "up"],
            vec!["ip", "addr", "add", &node_cidr, "dev", "lb0"],
            vec![
                "ip", "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
            ],
            vec!["ip", "link", "set", "pod0", "up"],
            vec!["ip", "link", "set", "pod1", "up"],
            vec!["ip", "addr", "add", "10.244.0.1/24", "dev", "pod0"],
            vec![
                "ip",
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                &peer,
                "dev",
                "lb0",
            ],
            vec![
                "ip", "route", "add", "default", "via", &router, "dev", "lb0",
            ],
            vec![
                "ip",
                "neigh",
                "replace",
                &router,
                "lladdr",
                &router_mac,
                "dev",
                "lb0",
                "nud",
                "permanent",
            ],
            vec![
                "ip",
                "neigh",
                "replace",
                &peer,
                "lladdr",
                &peer_mac,
                "dev",
                "lb0",
                "nud",
                "permanent",
            ],
            vec![
                "ip",
                "neigh",
                "replace",
                &local,
                "lladdr",
                "02:00:00:00:00:09",
                "dev",
                "pod0",
                "nud",
                "permanent",
            ],
        ] {
            sh(&cmd)?;
        }
        Ok(f(TestNet {
            lb0: ifindex("lb0")?,
            pod0: ifindex("pod0")?,
        }))
    })
    .join()
    .map_err(|_| io::Error::other("test thread panicked"))?
}

/// Writes what the agent writes for the node device: `lb0`'s MAC in `cilia_lb_dev`, so XDP checks
/// destinations as on a node (outside [`in_test_net`] there is no `lb0` and nothing is written).
pub fn seed_node_dev(dp: &mut LbDatapath) -> Result<(), BpfError> {
    let want = ifindex("lb0")
        .map(|i| wanted_dev_macs([(i, NODE_MAC)]))
        .unwrap_or_default();
    dp.apply_dev_macs(&map_diff(&want, &Default::default()))
}

/// What a row expects. `None` fields are not checked.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub verdict: Option<Verdict>,
    /// The frame leaves exactly as it came.
    pub unchanged: bool,
    pub src: Option<(Ipv4Addr, u16)>,
    pub dst: Option<(Ipv4Addr, u16)>,
    /// (dst, src) MACs.
    pub macs: Option<([u8; 6], [u8; 6])>,
    /// The first 8 option bytes: the DSR option for (VIP, port).
    pub dsr_opt: Option<(Ipv4Addr, u16)>,
    /// The options after ours (or all options when no DSR option is expected).
    pub other_options: Option<Vec<u8>>,
    /// A UDP datagram sent without checksum still has none.
    pub udp_csum_zero: bool,
    /// Counters that must have grown by at least one in this row.
    pub counters: Vec<LbCounter>,
    /// The frame was answered with ICMP port unreachable from its destination, quoting it.
    pub icmp_reject: bool,
    /// An ICMP error's quoted header after translation: (source, destination) with ports. Its
    /// IPv4 checksum is recomputed and checked; every other quoted byte must be unchanged.
    pub inner: Option<((Ipv4Addr, u16), (Ipv4Addr, u16))>,
    /// The quoted UDP checksum after translation (that of the client's own datagram).
    pub inner_udp_csum: Option<u16>,
    /// The translated packet leaves by another device: TC redirects it there (what this
    /// expectation describes), XDP passes it untouched for TC to translate (counted as
    /// `xdp_to_tc`). The one intended XDP/TC divergence: see [`LbCase::for_hook`].
    pub xdp_defers: bool,
}

/// One row of the table: a frame, frames that must run before it, and what must come out.
#[derive(Debug, Clone)]
pub struct LbCase {
    pub name: &'static str,
    /// Frames run first (e.g. the first fragment before a later one), their results not checked.
    pub before: Vec<Vec<u8>>,
    pub frame: Vec<u8>,
    /// Datagram bytes carried by later fragments (for the first fragment's L4 checksum).
    pub rest: Vec<u8>,
    pub expect: Expect,
}

impl LbCase {
    /// The row as `hook` must answer it: for XDP, a row whose packet leaves by another device
    /// expects the frame passed unchanged (TC on the same device translates it).
    pub fn for_hook(&self, hook: Hook) -> LbCase {
        let mut c = self.clone();
        if hook == Hook::Xdp && self.expect.xdp_defers {
            c.expect = Expect {
                verdict: Some(Verdict::Pass),
                unchanged: true,
                counters: vec![LbCounter::XdpToTc],
                ..Default::default()
            };
        }
        c
    }
}

/// The DSR option bytes for `vip:port` (see lb_maps.h).
pub fn dsr_option(vip: Ipv4Addr, port: u16) -> [u8; 8] {
    let p = port.to_be_bytes();
    let a = vip.octets();
    [
        c::LB_DSR_OPT_TYPE as u8,
        c::LB_DSR_OPT_LEN as u8,
        p[0],
        p[1],
        a[0],
        a[1],
        a[2],
        a[3],
    ]
}

/// The node port a fresh SNAT map gives a flow first.
pub fn first_snat_port(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> u16 {
    let h = flow_hash(&Lb4Tuple::new(src, dst, proto), HASH_SEED);
    snat_port_candidate(h, 0, SNAT_PORT_MIN, SNAT_PORT_MAX)
}

/// Compares a program's result with a row's expectations; every mismatch as "field: got … expected …".
pub fn check(case: &LbCase, verdict: Verdict, out: &[u8]) -> Vec<String> {
    let mut errs = Vec::new();
    let e = &case.expect;
    if let Some(v) = e.verdict
        && v != verdict
    {
        errs.push(format!("verdict: got {verdict:?} expected {v:?}"));
    }
    if e.icmp_reject {
        errs.extend(check_reject(&case.frame, out));
        return errs;
    }
    if e.unchanged {
        if out != case.frame.as_slice() {
            errs.push(format!(
                "frame: got {} expected the input unchanged {}",
                hex(out),
                hex(&case.frame)
            ));
        }
        return errs;
    }
    let p = match parse(out) {
        Ok(p) => p,
        Err(err) => return vec![err],
    };
    let input = parse(&case.frame).expect("rows are valid frames");
    if let Some((ip, port)) = e.src
        && (p.src != ip || (port != 0 && p.sport != port))
    {
        errs.push(format!(
            "source: got {}:{} expected {ip}:{port}",
            p.src, p.sport
        ));
    }
    if let Some((ip, port)) = e.dst
        && (p.dst != ip || (port != 0 && p.dport != port))
    {
        errs.push(format!(
            "destination: got {}:{} expected {ip}:{port}",
            p.dst, p.dport
        ));
    }
    if let Some((d, s)) = e.macs
        && (p.dst_mac != d || p.src_mac != s)
    {
        errs.push(format!(
            "MACs: got dst {} src {} expected dst {} src {}",
            hex(&p.dst_mac),
            hex(&p.src_mac),
            hex(&d),
            hex(&s)
        ));
    }
    let mut other_opts = p.options.clone();
    match e.dsr_opt {
        Some((vip, port)) => {
            let want = dsr_option(vip, port);
            if p.options.len() < 8 || p.options[..8] != want {
                errs.push(format!(
                    "DSR option: got {} expected {}",
                    hex(&p.options),
                    hex(&want)
                ));
            } else {
                other_opts = p.options[8..].to_vec();
            }
            if p.ihl != input.ihl + 2 || p.tot_len != input.tot_len + 8 {
                errs.push(format!(
                    "IHL/total length: got {}/{} expected {}/{}",
                    p.ihl,
                    p.tot_len,
                    input.ihl + 2,
                    input.tot_len + 8
                ));
            }
            if out.len() != case.frame.len() + 8 {
                errs.push(format!(
                    "frame length: got {} expected {}",
                    out.len(),
                    case.frame.len() + 8
                ));
            }
        }
        None => {
            if p.ihl != input.ihl || p.tot_len != input.tot_len {
                errs.push(format!(
                    "IHL/total length: got {}/{} expected unchanged {}/{}",
                    p.ihl, p.tot_len, input.ihl, input.tot_len
                ));
            }
        }
    }
    let want_opts = e.other_options.clone().unwrap_or(input.options.clone());
    if other_opts != want_opts {
        errs.push(format!(
            "options: got {} expected {}",
            hex(&other_opts),
            hex(&want_opts)
        ));
    }
    // Fields no translation may touch.
    for (name, got, want) in [
        ("TOS", u32::from(p.tos), u32::from(input.tos)),
        ("TTL", u32::from(p.ttl), u32::from(input.ttl)),
        ("IP id", u32::from(p.id), u32::from(input.id)),
        (
            "fragment field",
            u32::from(p.frag_field),
            u32::from(input.frag_field),
        ),
        ("protocol", u32::from(p.proto), u32::from(input.proto)),
    ] {
        if got != want {
            errs.push(format!("{name}: got {got} expected {want}"));
        }
    }
    if let Some((src, dst)) = e.inner {
        errs.extend(check_inner(
            &out[p.l4_off..],
            &case.frame[input.l4_off..],
            src,
            dst,
            e.inner_udp_csum,
        ));
    } else if out[p.l4_off..].len() >= 4 && case.frame[input.l4_off..].len() >= 4 {
        let hdr = if p.frag_field & 0x1fff != 0 { 0 } else { 4 };
        let skip = if p.proto == PROTO_ICMP { 0 } else { hdr };
        let csum_at = l4_csum_offset(p.proto);
        let strip = |b: &[u8]| -> Vec<u8> {
            let mut v = b.to_vec();
            if hdr != 0 && v.len() >= csum_at + 2 {
                v[csum_at] = 0;
                v[csum_at + 1] = 0;
            }
            v[skip..].to_vec()
        };
        if strip(&out[p.l4_off..]) != strip(&case.frame[input.l4_off..]) {
            errs.push("L4 bytes other than ports and checksum changed".to_string());
        }
    }
    if e.udp_csum_zero && p.l4_csum != 0 {
        errs.push(format!(
            "UDP checksum: got {:#06x} expected 0 (none)",
            p.l4_csum
        ));
    }
    if let Err(err) = verify_checksums(out, &case.rest) {
        errs.push(err);
    }
    errs
}

/// The quoted header of a translated ICMP error (`out` and `input` from the ICMP header on): the
/// expected addresses and ports, a valid quoted IPv4 checksum, and every other byte unchanged.
fn check_inner(
    out: &[u8],
    input: &[u8],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    udp_csum: Option<u16>,
) -> Vec<String> {
    let mut errs = Vec::new();
    if out.len() < 36 || out.len() != input.len() {
        return vec![format!(
            "ICMP error: {} bytes, expected {} (at least 36)",
            out.len(),
            input.len()
        )];
    }
    let q = &out[8..];
    let got_src = (
        Ipv4Addr::new(q[12], q[13], q[14], q[15]),
        u16::from_be_bytes([q[20], q[21]]),
    );
    let got_dst = (
        Ipv4Addr::new(q[16], q[17], q[18], q[19]),
        u16::from_be_bytes([q[22], q[23]]),
    );
    if got_src != src {
        errs.push(format!("quoted source: got {got_src:?} expected {src:?}"));
    }
    if got_dst != dst {
        errs.push(format!(
            "quoted destination: got {got_dst:?} expected {dst:?}"
        ));
    }
    if fold(sum16(&q[..20], 0)) != 0xffff {
        let mut h = q[..20].to_vec();
        h[10] = 0;
        h[11] = 0;
        errs.push(format!(
            "quoted IPv4 checksum: got {:#06x} expected {:#06x}",
            u16::from_be_bytes([q[10], q[11]]),
            csum(&h)
        ));
    }
    if let Some(want) = udp_csum {
        let got = u16::from_be_bytes([q[26], q[27]]);
        if got != want {
            errs.push(format!(
                "quoted UDP checksum: got {got:#06x} expected {want:#06x}"
            ));
        }
    }
    // Everything else: ICMP type, code and rest of header, the quoted header's other fields, and
    // whatever the quote carries after the ports.
    let strip = |b: &[u8]| -> Vec<u8> {
        let mut v = b.to_vec();
        for i in [2, 3, 8 + 10, 8 + 11] {
            v[i] = 0;
        }
        for b in &mut v[8 + 12..8 + 24] {
            *b = 0;
        }
        if udp_csum.is_some() {
            v[8 + 26] = 0;
            v[8 + 27] = 0;
        }
        v
    };
    if strip(out) != strip(input) {
        errs.push(format!(
            "ICMP bytes other than the translated ones changed: got {} from {}",
            hex(out),
            hex(input)
        ));
    }
    errs
}

/// The ICMP port unreachable a rejected `input` must have become.
fn check_reject(input: &[u8], out: &[u8]) -> Vec<String> {
    let mut errs = Vec::new();
    let (i, p) = match (parse(input), parse(out)) {
        (Ok(i), Ok(p)) => (i, p),
        (_, Err(e)) | (Err(e), _) => return vec![e],
    };
    let quote = &input[14..14 + 28];
    for (name, got, want) in [
        ("frame length", out.len(), 14 + 20 + 8 + 28),
        ("IHL", usize::from(p.ihl), 5),
        ("total length", usize::from(p.tot_len), 56),
        ("protocol", usize::from(p.proto), usize::from(PROTO_ICMP)),
        ("TTL", usize::from(p.ttl), 64),
        ("ICMP type", usize::from(out[34]), 3),
        ("ICMP code", usize::from(out[35]), 3),
    ] {
        if got != want {
            errs.push(format!("reject {name}: got {got} expected {want}"));
        }
    }
    if (p.src, p.dst) != (i.dst, i.src) {
        errs.push(format!(
            "reject addresses: got {} -> {} expected {} -> {}",
            p.src, p.dst, i.dst, i.src
        ));
    }
    if (p.dst_mac, p.src_mac) != (i.src_mac, i.dst_mac) {
        errs.push(format!(
            "reject MACs: got dst {} src {} expected the input's swapped",
            hex(&p.dst_mac),
            hex(&p.src_mac)
        ));
    }
    if out.len() >= 70 && &out[42..70] != quote {
        errs.push(format!(
            "reject quote: got {} expected {}",
            hex(&out[42..70]),
            hex(quote)
        ));
    }
    if let Err(e) = verify_checksums(out, &[]) {
        errs.push(e);
    }
    errs
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The table: one row per behaviour, every one run on fresh maps seeded with [`world`].
pub fn lb_cases() -> Vec<LbCase> {
    let client = (CLIENT, CLIENT_PORT);
    let row = |name, frame: FrameSpec, expect| LbCase {
        name,
        before: Vec::new(),
        frame: frame.build(),
        rest: Vec::new(),
        expect,
    };
    let tx_to_peer = Some((PEER_NODE_MAC, NODE_MAC));
    let snat_port = |dst, proto| first_snat_port(client, dst, proto);
    let mut rows = vec![
        // A new TCP flow to an SNAT service leaves for the backend's node with the node address
        // and an allocated port as source.
        row(
            "tcp_syn_snat_hit",
            FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Tx),
                src: Some((NODE_IP, snat_port((VIP_SNAT, 80), PROTO_TCP))),
                dst: Some((BE_SNAT, BE_PORT)),
                macs: tx_to_peer,
                counters: vec![LbCounter::FwdSnat, LbCounter::XmitTx],
                ..Default::default()
            },
        ),
        // NodePort: the node address itself is the frontend.
        row(
            "tcp_nodeport_snat_hit",
            FrameSpec::tcp(client, (NODE_IP, NODEPORT), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Tx),
                src: Some((NODE_IP, snat_port((NODE_IP, NODEPORT), PROTO_TCP))),
                dst: Some((BE_SNAT, BE_PORT)),
                macs: tx_to_peer,
                counters: vec![LbCounter::FwdSnat],
                ..Default::default()
            },
        ),
        // DSR keeps the client as source and carries VIP:port to the backend's node in an option.
        row(
            "tcp_syn_dsr_hit",
            FrameSpec::tcp(client, (VIP_DSR, 80), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Tx),
                src: Some(client),
                dst: Some((BE_DSR, BE_PORT)),
                macs: tx_to_peer,
                dsr_opt: Some((VIP_DSR, 80)),
                counters: vec![LbCounter::FwdDsr, LbCounter::XmitTx],
                ..Default::default()
            },
        ),
        // Hybrid: TCP goes DSR ...
        row(
            "tcp_hybrid_is_dsr",
            FrameSpec::tcp(client, (VIP_HYBRID, 53), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Tx),
                src: Some(client),
                dst: Some((BE_HYBRID, 5353)),
                macs: tx_to_peer,
                dsr_opt: Some((VIP_HYBRID, 53)),
                counters: vec![LbCounter::FwdDsr],
                ..Default::default()
            },
        ),
        // ... and UDP goes SNAT.
        row(
            "udp_hybrid_is_snat",
            FrameSpec::udp(client, (VIP_HYBRID, 53)),
            Expect {
                verdict: Some(Verdict::Tx),
                src: Some((NODE_IP, snat_port((VIP_HYBRID, 53), PROTO_UDP))),
                dst: Some((BE_HYBRID, 5353)),
                macs: tx_to_peer,
                counters: vec![LbCounter::FwdSnat],
                ..Default::default()
            },
        ),
        // A UDP datagram without checksum is translated and still has none.
        row(
            "udp_zero_checksum_stays_zero",
            FrameSpec {
                l4: L4::Udp {
                    sport: CLIENT_PORT,
                    dport: 53,
                    zero_csum: true,
                },
                ..FrameSpec::udp(client, (VIP_UDP, 53))
            },
            Expect {
                verdict: Some(Verdict::Tx),
                src: Some((NODE_IP, snat_port((VIP_UDP, 53), PROTO_UDP))),
                dst: Some((BE_UDP, 53)),
                udp_csum_zero: true,
                counters: vec![LbCounter::FwdSnat],
                ..Default::default()
            },
        ),
        // Not a frontend: passed untouched.
        row(
            "miss_passes_untouched",
            FrameSpec::tcp(client, (VIP_MISS, 80), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Pass),
                unchanged: true,
                counters: vec![LbCounter::Miss],
                ..Default::default()
            },
        ),
        // A frame for a VIP but another host's MAC, flooded by a switch that has not learnt that
        // MAC (a client still using a failed-over announcer's): that host's to serve, not ours.
        row(
            "frame_for_another_hosts_mac_passes",
            FrameSpec {
                dst_mac: PEER_NODE_MAC,
                ..FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_SYN)
            },
            Expect {
                verdict: Some(Verdict::Pass),
                unchanged: true,
                counters: vec![LbCounter::OtherHost],
                ..Default::default()
            },
        ),
        // Broadcast and multicast destinations are checked as usual (here: a hit).
        row(
            "broadcast_frame_to_a_vip_is_served",
            FrameSpec {
                dst_mac: [0xff; 6],
                ..FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_SYN)
            },
            Expect {
                verdict: Some(Verdict::Tx),
                src: Some((NODE_IP, snat_port((VIP_SNAT, 80), PROTO_TCP))),
                dst: Some((BE_SNAT, BE_PORT)),
                macs: tx_to_peer,
                counters: vec![LbCounter::FwdSnat],
                ..Default::default()
            },
        ),
        // A known frontend on another port is not a frontend.
        row(
            "other_port_of_a_vip_passes",
            FrameSpec::tcp(client, (VIP_SNAT, 81), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Pass),
                unchanged: true,
                counters: vec![LbCounter::Miss],
                ..Default::default()
            },
        ),
        // A service without backends drops (drop flag) ...
        row(
            "no_backend_drops",
            FrameSpec::tcp(client, (VIP_EMPTY_DROP, 80), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Drop),
                unchanged: true,
                counters: vec![LbCounter::NoBackendDrop],
                ..Default::default()
            },
        ),
        // ... or answers ICMP port unreachable from the VIP, back out of the device (reject flag) ...
        row(
            "no_backend_rejects_with_icmp",
            FrameSpec::tcp(client, (VIP_EMPTY_REJECT, 80), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Tx),
                icmp_reject: true,
                counters: vec![LbCounter::NoBackendReject, LbCounter::XmitTx],
                ..Default::default()
            },
        ),
        // ... and drops (still counted as reject) what it cannot quote in a fixed size.
        row(
            "no_backend_reject_with_options_drops",
            FrameSpec {
                options: vec![1, 1, 1, 0],
                ..FrameSpec::tcp(client, (VIP_EMPTY_REJECT, 80), TCP_SYN)
            },
            Expect {
                verdict: Some(Verdict::Drop),
                unchanged: true,
                counters: vec![LbCounter::NoBackendReject],
                ..Default::default()
            },
        ),
        // A hostNetwork backend of a DSR service is reached with SNAT.
        row(
            "dsr_to_host_network_backend_falls_back_to_snat",
            FrameSpec::tcp(client, (VIP_HOSTNET, 80), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Tx),
                src: Some((NODE_IP, snat_port((VIP_HOSTNET, 80), PROTO_TCP))),
                dst: Some((PEER_NODE_IP, BE_PORT)),
                macs: tx_to_peer,
                counters: vec![LbCounter::FwdSnat],
                ..Default::default()
            },
        ),
        // A backend on this node: DNAT only, the client stays the source; its device (the pod's
        // veth, pod0) is another one, so TC redirects it there (MACs left to the kernel) and the
        // reply translation is recorded for the egress hook. XDP leaves it to TC.
        row(
            "local_backend_is_redirected_to_its_device",
            FrameSpec::tcp(client, (VIP_LOCAL, 80), TCP_SYN),
            Expect {
                verdict: Some(Verdict::Redirect),
                src: Some(client),
                dst: Some((BE_LOCAL, 80)),
                macs: Some((NODE_MAC, CLIENT_MAC)),
                counters: vec![LbCounter::FwdLocal, LbCounter::XmitRedirect],
                xdp_defers: true,
                ..Default::default()
            },
        ),
    ];
    // IPv4 options on input: parsed past (SNAT), and kept after ours (DSR).
    let opts = vec![0x01, 0x01, 0x01, 0x00];
    rows.push(row(
        "ip_options_snat",
        FrameSpec {
            options: opts.clone(),
            ..FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_SYN)
        },
        Expect {
            verdict: Some(Verdict::Tx),
            src: Some((NODE_IP, snat_port((VIP_SNAT, 80), PROTO_TCP))),
            dst: Some((BE_SNAT, BE_PORT)),
            counters: vec![LbCounter::FwdSnat],
            ..Default::default()
        },
    ));
    rows.push(row(
        "ip_options_dsr",
        FrameSpec {
            options: opts.clone(),
            ..FrameSpec::tcp(client, (VIP_DSR, 80), TCP_SYN)
        },
        Expect {
            verdict: Some(Verdict::Tx),
            src: Some(client),
            dst: Some((BE_DSR, BE_PORT)),
            dsr_opt: Some((VIP_DSR, 80)),
            other_options: Some(opts.clone()),
            counters: vec![LbCounter::FwdDsr],
            ..Default::default()
        },
    ));
    // A header with no room left for the option: the new flow falls back to SNAT.
    rows.push(row(
        "dsr_without_option_room_falls_back_to_snat",
        FrameSpec {
            options: vec![0x01; 36],
            ..FrameSpec::tcp(client, (VIP_DSR, 80), TCP_SYN)
        },
        Expect {
            verdict: Some(Verdict::Tx),
            src: Some((NODE_IP, snat_port((VIP_DSR, 80), PROTO_TCP))),
            dst: Some((BE_DSR, BE_PORT)),
            counters: vec![LbCounter::DsrNoRoom, LbCounter::FwdSnat],
            ..Default::default()
        },
    ));
    // Fragments of a UDP datagram to an SNAT service: the first is translated by its ports ...
    let whole = FrameSpec {
        payload: (0..64u8).collect(),
        id: 0x4242,
        ..FrameSpec::udp(client, (VIP_UDP, 53))
    };
    let first = FrameSpec {
        fragment: Some(Fragment {
            offset: 0,
            len: 32,
            more: true,
        }),
        ..whole.clone()
    };
    let later = FrameSpec {
        fragment: Some(Fragment {
            offset: 32,
            len: 0,
            more: false,
        }),
        ..whole.clone()
    };
    let udp_port = snat_port((VIP_UDP, 53), PROTO_UDP);
    rows.push(LbCase {
        name: "first_fragment_by_ports",
        before: Vec::new(),
        frame: first.build(),
        rest: whole.datagram()[32..].to_vec(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((NODE_IP, udp_port)),
            dst: Some((BE_UDP, 53)),
            counters: vec![LbCounter::FragFirst, LbCounter::FwdSnat],
            ..Default::default()
        },
    });
    // ... a later one follows it to the same backend with the remembered ports (addresses only) ...
    rows.push(LbCase {
        name: "later_fragment_follows_the_first",
        before: vec![first.build()],
        frame: later.build(),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((NODE_IP, 0)),
            dst: Some((BE_UDP, 0)),
            counters: vec![LbCounter::FragLaterFwd, LbCounter::CtHit],
            ..Default::default()
        },
    });
    // ... and a later fragment of a datagram never seen is passed untouched.
    rows.push(LbCase {
        name: "unknown_later_fragment_passes",
        before: Vec::new(),
        frame: later.build(),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Pass),
            unchanged: true,
            counters: vec![LbCounter::FragLaterUnknown],
            ..Default::default()
        },
    });
    // ICMP errors about SNATed flows are translated back to the client: "fragmentation needed"
    // from a router on the way keeps the router as source; the quote becomes the client's own
    // packet (client:port -> VIP:port).
    let syn = FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_SYN);
    let np = snat_port((VIP_SNAT, 80), PROTO_TCP);
    let sent = FrameSpec {
        src: NODE_IP,
        dst: BE_SNAT,
        l4: L4::Tcp {
            sport: np,
            dport: BE_PORT,
            flags: TCP_SYN,
        },
        ..syn.clone()
    }
    .build();
    let icmp = |from: Ipv4Addr, ty: u8, code: u8, rest: [u8; 4], quoted: &[u8]| {
        FrameSpec {
            src: from,
            dst: NODE_IP,
            src_mac: PEER_NODE_MAC,
            l4: L4::Icmp {
                ty,
                code,
                quoted: quoted.to_vec(),
            },
            payload: Vec::new(),
            ..syn.clone()
        }
        .build_icmp_with_rest(rest)
    };
    let mtu = [0, 0, 0x05, 0x78];
    rows.push(LbCase {
        name: "icmp_frag_needed_from_a_router_is_reverse_translated",
        before: vec![syn.build()],
        frame: icmp(PEER_NODE_IP, 3, 4, mtu, &sent[14..14 + 28]),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((PEER_NODE_IP, 0)),
            dst: Some((CLIENT, 0)),
            macs: Some((ROUTER_MAC, NODE_MAC)),
            inner: Some((client, (VIP_SNAT, 80))),
            counters: vec![LbCounter::IcmpErrFlow, LbCounter::XmitTx],
            ..Default::default()
        },
    });
    // Port unreachable from the UDP backend itself: the outer source becomes the VIP, and the
    // quoted UDP checksum is the client's own again.
    let dgram = FrameSpec::udp(client, (VIP_UDP, 53));
    let up = snat_port((VIP_UDP, 53), PROTO_UDP);
    let dgram_sent = FrameSpec {
        src: NODE_IP,
        dst: BE_UDP,
        l4: L4::Udp {
            sport: up,
            dport: 53,
            zero_csum: false,
        },
        ..dgram.clone()
    }
    .build();
    let client_udp_csum = parse(&dgram.build()).unwrap().l4_csum;
    rows.push(LbCase {
        name: "icmp_port_unreachable_from_the_backend_is_reverse_translated",
        before: vec![dgram.build()],
        frame: icmp(BE_UDP, 3, 3, [0; 4], &dgram_sent[14..14 + 28]),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((VIP_UDP, 0)),
            dst: Some((CLIENT, 0)),
            inner: Some((client, (VIP_UDP, 53))),
            inner_udp_csum: Some(client_udp_csum),
            counters: vec![LbCounter::IcmpErrFlow],
            ..Default::default()
        },
    });
    // Time exceeded quoting a longer piece of the packet (the whole SNATed SYN): the bytes after
    // the first eight of TCP stay as they were.
    rows.push(LbCase {
        name: "icmp_time_exceeded_with_a_long_quote_is_reverse_translated",
        before: vec![syn.build()],
        frame: icmp(PEER_NODE_IP, 11, 0, [0; 4], &sent[14..]),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((PEER_NODE_IP, 0)),
            dst: Some((CLIENT, 0)),
            inner: Some((client, (VIP_SNAT, 80))),
            counters: vec![LbCounter::IcmpErrFlow],
            ..Default::default()
        },
    });
    // IP options: an ICMP error whose own header carries options is found and translated all
    // the same (the options stay) ...
    rows.push(LbCase {
        name: "icmp_error_with_ip_options_is_reverse_translated",
        before: vec![syn.build()],
        frame: FrameSpec {
            options: vec![1, 1, 1, 0],
            src: PEER_NODE_IP,
            dst: NODE_IP,
            src_mac: PEER_NODE_MAC,
            l4: L4::Icmp {
                ty: 3,
                code: 4,
                quoted: sent[14..14 + 28].to_vec(),
            },
            payload: Vec::new(),
            ..syn.clone()
        }
        .build_icmp_with_rest(mtu),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((PEER_NODE_IP, 0)),
            dst: Some((CLIENT, 0)),
            inner: Some((client, (VIP_SNAT, 80))),
            counters: vec![LbCounter::IcmpErrFlow],
            ..Default::default()
        },
    });
    // ... but a quote whose header has options (not one the node sent: it adds none on SNAT)
    // is the stack's, untouched.
    let sent_with_opts = FrameSpec {
        options: vec![1, 1, 1, 0],
        src: NODE_IP,
        dst: BE_SNAT,
        l4: L4::Tcp {
            sport: np,
            dport: BE_PORT,
            flags: TCP_SYN,
        },
        ..syn.clone()
    }
    .build();
    rows.push(LbCase {
        name: "icmp_error_quoting_ip_options_passes",
        before: vec![syn.build()],
        frame: icmp(PEER_NODE_IP, 3, 4, mtu, &sent_with_opts[14..14 + 32]),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Pass),
            unchanged: true,
            ..Default::default()
        },
    });
    // The reply of an SNATed flow with IP options: restored, options kept.
    rows.push(LbCase {
        name: "snat_reply_with_ip_options_is_reverse_translated",
        before: vec![syn.build()],
        frame: FrameSpec {
            dst_mac: NODE_MAC,
            src_mac: PEER_NODE_MAC,
            options: vec![1, 1, 1, 0],
            ..FrameSpec::tcp((BE_SNAT, BE_PORT), (NODE_IP, np), TCP_SYN | TCP_ACK)
        }
        .build(),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((VIP_SNAT, 80)),
            dst: Some(client),
            macs: Some((ROUTER_MAC, NODE_MAC)),
            counters: vec![LbCounter::RevSnat],
            ..Default::default()
        },
    });
    // An ICMP error about a flow the node never translated is the stack's, untouched.
    rows.push(LbCase {
        name: "icmp_error_for_an_unknown_flow_passes",
        before: Vec::new(),
        frame: icmp(PEER_NODE_IP, 3, 4, mtu, &sent[14..14 + 28]),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Pass),
            unchanged: true,
            ..Default::default()
        },
    });
    // An established flow (second packet) keeps its translation and counts a conntrack hit.
    let ack = FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_ACK);
    rows.push(LbCase {
        name: "established_flow_hits_conntrack",
        before: vec![syn.build()],
        frame: ack.build(),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((NODE_IP, np)),
            dst: Some((BE_SNAT, BE_PORT)),
            counters: vec![LbCounter::CtHit, LbCounter::FwdSnat],
            ..Default::default()
        },
    });
    // The reply of an SNATed flow is restored to VIP:port -> client and sent towards the client.
    let reply = FrameSpec {
        dst_mac: NODE_MAC,
        src_mac: PEER_NODE_MAC,
        ..FrameSpec::tcp((BE_SNAT, BE_PORT), (NODE_IP, np), TCP_SYN | TCP_ACK)
    };
    rows.push(LbCase {
        name: "snat_reply_is_reverse_translated",
        before: vec![syn.build()],
        frame: reply.build(),
        rest: Vec::new(),
        expect: Expect {
            verdict: Some(Verdict::Tx),
            src: Some((VIP_SNAT, 80)),
            dst: Some(client),
            macs: Some((ROUTER_MAC, NODE_MAC)),
            counters: vec![LbCounter::RevSnat],
            ..Default::default()
        },
    });
    rows
}

/// Frames of the benchmark: 64-byte Ethernet/IPv4/TCP ACKs (an established flow) to the SNAT and
/// DSR frontends of [`world`], and to an address that is no frontend.
pub fn bench_frames() -> [(&'static str, Vec<u8>); 3] {
    let client = (CLIENT, CLIENT_PORT);
    [
        (
            "hit_snat",
            FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_ACK).build(),
        ),
        (
            "hit_dsr",
            FrameSpec::tcp(client, (VIP_DSR, 80), TCP_ACK).build(),
        ),
        (
            "miss",
            FrameSpec::tcp(client, (VIP_MISS, 80), TCP_ACK).build(),
        ),
    ]
}

/// [`world`] plus `n - world().len()` filler services (one backend each, on 10.96.0.0/12), so
/// lookups run against `n` frontends.
pub fn scaled_world(n: usize) -> Vec<ServiceSpec> {
    let mut v = world();
    let base = v.len() as u32;
    let filler = n.saturating_sub(v.len());
    for i in 0..filler as u32 {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i);
        v.push(service(
            base + 1 + i,
            addr,
            80,
            Proto::Tcp,
            vec![backend(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 2, 1)) + (i % 200)),
                8080,
            )],
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    // The builder writes valid checksums, which the verifier accepts and a flipped bit breaks.
    #[test]
    fn built_frames_have_valid_checksums() {
        let f = FrameSpec::tcp((CLIENT, 1), (VIP_SNAT, 80), TCP_SYN).build();
        assert_eq!(f.len(), 64);
        verify_checksums(&f, &[]).unwrap();
        let u = FrameSpec::udp((CLIENT, 1), (VIP_UDP, 53)).build();
        assert_eq!(u.len(), 64);
        verify_checksums(&u, &[]).unwrap();
        let mut bad = f.clone();
        bad[30] ^= 1;
        assert!(verify_checksums(&bad, &[]).is_err());
        for c in lb_cases() {
            verify_checksums(&c.frame, &c.rest).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        }
    }

    #[test]
    fn parse_reads_options_and_ports() {
        let f = FrameSpec {
            options: vec![1, 1, 1, 0],
            ..FrameSpec::tcp((CLIENT, 1234), (VIP_DSR, 80), TCP_SYN)
        }
        .build();
        let p = parse(&f).unwrap();
        assert_eq!((p.ihl, p.sport, p.dport, p.l4_off), (6, 1234, 80, 38));
        assert_eq!(p.options, vec![1, 1, 1, 0]);
    }
}
