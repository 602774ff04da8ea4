//! Packet table for BPF masquerading, shared by the BPF_PROG_TEST_RUN tests and the `masquerade`
//! benchmark: the node and intent every row runs against, frames built from scratch (with
//! `lb_fixtures`' builder), NAT entries a row starts with, and the exact frame it must leave as
//! (rebuilt from scratch, so both checksums are checked along with every other byte).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use cilia_model::intent::{NodeFacts, NodeIntent, RouteIntent};
use cilia_model::service::DatapathConfig;
use ipnet::Ipv4Net;

use crate::lb::{mix32, snat_port_candidate};
use crate::lb_fixtures::{
    Fragment, FrameSpec, L4, PROTO_ICMP, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    Verdict, csum,
};
use crate::maps::c::MASQ_NAT_F_CLOSING;
use crate::masq::{MasqDesired, MasqEntries, NAT_PORT_MAX, NAT_PORT_MIN};
use crate::masq_bpf::nat_pair;
use crate::masq_maps::{Masq4NatEntry, Masq4Tuple, MasqCounter};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const PEER_NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
pub const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
pub const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 6);
/// A pod on the peer node (inside the native routing CIDR).
pub const PEER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
/// Outside the cluster and outside the ip-masq-agent set: masqueraded.
pub const EXT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Inside the ip-masq-agent set (192.168.0.0/16): keeps the pod address.
pub const NONMASQ: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
/// Link-local: exempt because masqLinkLocal is false.
pub const LINK_LOCAL: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
pub const HASH_SEED: u32 = 0x6d61_7371;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("literal")
}

/// The node every row runs on: pod CIDR 10.244.0.0/24, native routing CIDR 10.244.0.0/16, a peer
/// node 172.18.0.3 with 10.244.1.0/24, BPF masquerading with ip-masq-agent
/// `nonMasqueradeCIDRs: [192.168.0.0/16]`, link-local not masqueraded.
pub fn intent() -> NodeIntent {
    let routes: BTreeSet<RouteIntent> = [RouteIntent {
        dst: net("10.244.1.0/24"),
        via: PEER_NODE_IP,
    }]
    .into_iter()
    .collect();
    let mut i = NodeIntent::from_facts(
        NodeFacts {
            node: "worker".into(),
            node_ip: NODE_IP,
            pod_cidr: Some(net("10.244.0.0/24")),
            routing_mode: Default::default(),
            native_routing_cidr: Some(net("10.244.0.0/16")),
        },
        routes,
    );
    i.datapath = DatapathConfig {
        masquerade: true,
        bpf_masquerade: true,
        ip_masq_agent: true,
        non_masquerade_cidrs: vec![net("192.168.0.0/16")],
        masq_link_local: false,
        ..DatapathConfig::default()
    };
    i
}

/// The map entries of [`intent`].
pub fn world() -> MasqEntries {
    MasqDesired::from_intent(&intent())
        .expect("the table's intent is valid")
        .entries(HASH_SEED)
}

/// [`world`] draining (after a switch to iptables): flows in the NAT map only.
pub fn draining_world() -> MasqEntries {
    let mut w = world();
    w.config.flags = crate::maps::c::MASQ_F_ENABLED | crate::maps::c::MASQ_F_DRAIN;
    w
}

/// The datapath's hash of an OUT tuple (`masq4_flow_hash`).
pub fn flow_hash(t: &Masq4Tuple, seed: u32) -> u32 {
    let mut h = mix32(seed ^ t.saddr);
    h = mix32(h ^ t.daddr);
    h = mix32(h ^ ((u32::from(t.sport) << 16) | u32::from(t.dport)));
    mix32(h ^ u32::from(t.proto))
}

/// The `attempt`-th port the datapath tries for `pod → dst` (ICMP: pod.1 is the echo id, dst.1 0).
pub fn nat_port_candidate(
    pod: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    proto: u8,
    attempt: u32,
) -> u16 {
    let [(out, _), _] = nat_pair(pod, dst, proto, NODE_IP, 0, 0);
    snat_port_candidate(
        flow_hash(&out, HASH_SEED),
        attempt,
        NAT_PORT_MIN,
        NAT_PORT_MAX,
    )
}

/// An ICMP echo request (or reply) `src → dst` with identifier `id`, checksum right.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16) -> Vec<u8> {
    let spec = FrameSpec {
        l4: L4::Icmp {
            ty,
            code: 0,
            quoted: Vec::new(),
        },
        // 64-byte frame: 14 + 20 + 8 + 22.
        payload: (0..22u8).collect(),
        ..FrameSpec::tcp((src, 0), (dst, 0), 0)
    };
    let mut f = spec.build();
    let l4 = 14 + 20;
    f[l4 + 4..l4 + 6].copy_from_slice(&id.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
    let s = csum(&f[l4..]);
    f[l4 + 2..l4 + 4].copy_from_slice(&s.to_be_bytes());
    f
}

pub fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    FrameSpec::tcp(src, dst, TCP_SYN).build()
}

/// A TCP segment with these flags.
pub fn tcp_flags(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    FrameSpec::tcp(src, dst, flags).build()
}

/// `nat_pair` with both entries' flags set (e.g. closing).
fn with_flags(
    mut pair: [(Masq4Tuple, Masq4NatEntry); 2],
    flags: u16,
) -> [(Masq4Tuple, Masq4NatEntry); 2] {
    for (_, v) in pair.iter_mut() {
        v.flags = flags;
    }
    pair
}

pub fn udp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), zero_csum: bool) -> Vec<u8> {
    let mut s = FrameSpec::udp(src, dst);
    s.l4 = L4::Udp {
        sport: src.1,
        dport: dst.1,
        zero_csum,
    };
    s.build()
}

/// Which program a row runs through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Egress,
    Ingress,
}

/// One row: a frame, the NAT entries present before it, and what must come out.
#[derive(Debug, Clone)]
pub struct MasqCase {
    pub name: &'static str,
    pub dir: Dir,
    pub frame: Vec<u8>,
    /// Frames run through the same program first (e.g. a datagram's first fragment).
    pub before: Vec<Vec<u8>>,
    /// A first fragment's missing rest of the datagram (as it leaves), for the L4 checksum check.
    pub rest: Vec<u8>,
    pub nat_before: Vec<(Masq4Tuple, Masq4NatEntry)>,
    pub verdict: Verdict,
    /// The exact frame expected out (built from scratch); `None`: the input unchanged.
    pub out: Option<Vec<u8>>,
    /// NAT entries that must exist afterwards (compared without `created_ns` and `seen_ns`).
    pub nat_after: Vec<(Masq4Tuple, Masq4NatEntry)>,
    /// How many NAT entries there must be afterwards (None: not checked).
    pub nat_len: Option<usize>,
    /// Runs with [`draining_world`] instead of [`world`].
    pub drain: bool,
    /// Counters that must grow by exactly this much.
    pub counters: Vec<(MasqCounter, u64)>,
}

impl MasqCase {
    fn new(name: &'static str, dir: Dir, frame: Vec<u8>) -> Self {
        MasqCase {
            name,
            dir,
            frame,
            before: Vec::new(),
            rest: Vec::new(),
            nat_before: Vec::new(),
            verdict: Verdict::Pass,
            out: None,
            nat_after: Vec::new(),
            nat_len: None,
            drain: false,
            counters: Vec::new(),
        }
    }
}

/// Every row of the table.
pub fn masq_cases() -> Vec<MasqCase> {
    use Dir::{Egress, Ingress};
    let mut v = Vec::new();

    // A pod's TCP SYN to the outside leaves from the node address on the first hashed port.
    let p = nat_port_candidate((POD, 40000), (EXT, 443), PROTO_TCP, 0);
    v.push(MasqCase {
        out: Some(tcp((NODE_IP, p), (EXT, 443))),
        nat_after: nat_pair((POD, 40000), (EXT, 443), PROTO_TCP, NODE_IP, p, 0).to_vec(),
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 1)],
        ..MasqCase::new("egress_tcp_snat", Egress, tcp((POD, 40000), (EXT, 443)))
    });
    // UDP likewise, checksum updated incrementally (pseudo header and port).
    let p = nat_port_candidate((POD, 5353), (EXT, 53), PROTO_UDP, 0);
    v.push(MasqCase {
        out: Some(udp((NODE_IP, p), (EXT, 53), false)),
        nat_after: nat_pair((POD, 5353), (EXT, 53), PROTO_UDP, NODE_IP, p, 0).to_vec(),
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 1)],
        ..MasqCase::new(
            "egress_udp_snat",
            Egress,
            udp((POD, 5353), (EXT, 53), false),
        )
    });
    // A UDP datagram sent without checksum stays without one.
    let p = nat_port_candidate((POD, 5354), (EXT, 53), PROTO_UDP, 0);
    v.push(MasqCase {
        out: Some(udp((NODE_IP, p), (EXT, 53), true)),
        counters: vec![(MasqCounter::Snat, 1)],
        ..MasqCase::new(
            "egress_udp_zero_csum",
            Egress,
            udp((POD, 5354), (EXT, 53), true),
        )
    });
    // An echo request gets the node address and a NAT identifier; the ICMP checksum follows.
    let p = nat_port_candidate((POD, 0x1234), (EXT, 0), PROTO_ICMP, 0);
    v.push(MasqCase {
        out: Some(icmp_echo(NODE_IP, EXT, ICMP_ECHO_REQUEST, p)),
        nat_after: nat_pair((POD, 0x1234), (EXT, 0), PROTO_ICMP, NODE_IP, p, 0).to_vec(),
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 1)],
        ..MasqCase::new(
            "egress_icmp_echo",
            Egress,
            icmp_echo(POD, EXT, ICMP_ECHO_REQUEST, 0x1234),
        )
    });
    // Destinations in the ip-masq-agent set, link-local, the native routing CIDR and other nodes
    // keep the pod address.
    for (name, dst) in [
        ("egress_nonmasq_cidr_untouched", NONMASQ),
        ("egress_link_local_untouched", LINK_LOCAL),
        ("egress_native_cidr_untouched", PEER_POD),
        ("egress_peer_node_untouched", PEER_NODE_IP),
        ("egress_own_node_untouched", NODE_IP),
    ] {
        v.push(MasqCase {
            counters: vec![(MasqCounter::Excluded, 1), (MasqCounter::Snat, 0)],
            ..MasqCase::new(name, Egress, tcp((POD, 40001), (dst, 443)))
        });
    }
    // The node's own traffic and other nodes' pods (forwarded through here) are not ours.
    v.push(MasqCase {
        counters: vec![(MasqCounter::Snat, 0), (MasqCounter::Excluded, 0)],
        ..MasqCase::new(
            "egress_host_source_untouched",
            Egress,
            tcp((NODE_IP, 40002), (EXT, 443)),
        )
    });
    v.push(MasqCase {
        counters: vec![(MasqCounter::Snat, 0)],
        ..MasqCase::new(
            "egress_foreign_pod_untouched",
            Egress,
            tcp((PEER_POD, 40003), (EXT, 443)),
        )
    });
    // ICMP that is not an echo request (here an echo reply from a pod) is not masqueraded.
    v.push(MasqCase {
        counters: vec![(MasqCounter::Unsupported, 1), (MasqCounter::Snat, 0)],
        ..MasqCase::new(
            "egress_icmp_non_echo_untouched",
            Egress,
            icmp_echo(POD, EXT, ICMP_ECHO_REPLY, 7),
        )
    });
    // Collision: another pod's flow to the same destination already holds the first candidate, so
    // this flow gets the second one.
    let p0 = nat_port_candidate((POD, 40004), (EXT, 443), PROTO_TCP, 0);
    let p1 = nat_port_candidate((POD, 40004), (EXT, 443), PROTO_TCP, 1);
    assert_ne!(p0, p1, "the table needs two distinct candidates");
    v.push(MasqCase {
        nat_before: nat_pair((POD2, 50000), (EXT, 443), PROTO_TCP, NODE_IP, p0, 0).to_vec(),
        out: Some(tcp((NODE_IP, p1), (EXT, 443))),
        nat_after: nat_pair((POD, 40004), (EXT, 443), PROTO_TCP, NODE_IP, p1, 0).to_vec(),
        counters: vec![
            (MasqCounter::Collision, 1),
            (MasqCounter::SnatNew, 1),
            (MasqCounter::Snat, 1),
        ],
        ..MasqCase::new(
            "egress_port_collision",
            Egress,
            tcp((POD, 40004), (EXT, 443)),
        )
    });
    // Every candidate taken: the new flow is dropped rather than leaking the pod address.
    let mut taken = Vec::new();
    for i in 0..crate::maps::c::MASQ_PORT_RETRIES {
        let p = nat_port_candidate((POD, 40005), (EXT, 443), PROTO_TCP, i);
        taken.extend(nat_pair(
            (POD2, 1000 + i as u16),
            (EXT, 443),
            PROTO_TCP,
            NODE_IP,
            p,
            0,
        ));
    }
    v.push(MasqCase {
        nat_before: taken,
        verdict: Verdict::Drop,
        counters: vec![(MasqCounter::NoPort, 1), (MasqCounter::Snat, 0)],
        ..MasqCase::new(
            "egress_ports_exhausted",
            Egress,
            tcp((POD, 40005), (EXT, 443)),
        )
    });
    // An established flow keeps its port.
    v.push(MasqCase {
        nat_before: nat_pair((POD, 40006), (EXT, 443), PROTO_TCP, NODE_IP, 50123, 0).to_vec(),
        out: Some(tcp((NODE_IP, 50123), (EXT, 443))),
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 0)],
        ..MasqCase::new("egress_established", Egress, tcp((POD, 40006), (EXT, 443)))
    });
    // A fragmented datagram: the first fragment (with the UDP header) is translated like a whole
    // packet, checksum over the whole datagram included; a later fragment gets the node address
    // (its bytes, and so the UDP checksum living in the first fragment, stay as they are).
    let p = nat_port_candidate((POD, 6000), (EXT, 53), PROTO_UDP, 0);
    let first_spec = |src: (Ipv4Addr, u16)| {
        let mut f = FrameSpec::udp(src, (EXT, 53));
        f.payload = (0..40u8).collect();
        f.fragment = Some(Fragment {
            offset: 0,
            len: 16,
            more: true,
        });
        f
    };
    let first = |src| first_spec(src).build();
    v.push(MasqCase {
        out: Some(first((NODE_IP, p))),
        rest: first_spec((NODE_IP, p)).datagram()[16..].to_vec(),
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 1)],
        ..MasqCase::new("egress_first_fragment", Egress, first((POD, 6000)))
    });
    let later = |src: Ipv4Addr| {
        let mut f = FrameSpec::udp((src, 6000), (EXT, 53));
        f.payload = (0..40u8).collect();
        f.fragment = Some(Fragment {
            offset: 16,
            len: 32,
            more: false,
        });
        f.build()
    };
    v.push(MasqCase {
        out: Some(later(NODE_IP)),
        counters: vec![(MasqCounter::Frag, 1), (MasqCounter::Snat, 0)],
        ..MasqCase::new("egress_later_fragment", Egress, later(POD))
    });
    // An established flow whose reverse entry the LRU evicted gets it back, same port.
    let [fwd, rev] = nat_pair((POD, 40007), (EXT, 443), PROTO_TCP, NODE_IP, 50131, 0);
    v.push(MasqCase {
        nat_before: vec![fwd],
        out: Some(tcp((NODE_IP, 50131), (EXT, 443))),
        nat_after: vec![fwd, rev],
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 0)],
        ..MasqCase::new(
            "egress_established_reverse_restored",
            Egress,
            tcp((POD, 40007), (EXT, 443)),
        )
    });
    // ... and if another flow took that port meanwhile, this flow moves to a port of its own.
    let [fwd, _] = nat_pair((POD, 40008), (EXT, 443), PROTO_TCP, NODE_IP, 50132, 0);
    let [_, thief] = nat_pair((POD2, 40008), (EXT, 443), PROTO_TCP, NODE_IP, 50132, 0);
    let p = nat_port_candidate((POD, 40008), (EXT, 443), PROTO_TCP, 0);
    v.push(MasqCase {
        nat_before: vec![fwd, thief],
        out: Some(tcp((NODE_IP, p), (EXT, 443))),
        nat_after: nat_pair((POD, 40008), (EXT, 443), PROTO_TCP, NODE_IP, p, 0)
            .into_iter()
            .chain([thief])
            .collect(),
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 1)],
        ..MasqCase::new(
            "egress_established_port_lost",
            Egress,
            tcp((POD, 40008), (EXT, 443)),
        )
    });
    // A flow whose forward entry the LRU evicted (its reverse one still there) keeps its port.
    let p = nat_port_candidate((POD, 40009), (EXT, 443), PROTO_TCP, 0);
    let [fwd, rev] = nat_pair((POD, 40009), (EXT, 443), PROTO_TCP, NODE_IP, p, 0);
    v.push(MasqCase {
        nat_before: vec![rev],
        out: Some(tcp((NODE_IP, p), (EXT, 443))),
        nat_after: vec![fwd, rev],
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::Collision, 0)],
        ..MasqCase::new(
            "egress_forward_evicted_keeps_port",
            Egress,
            tcp((POD, 40009), (EXT, 443)),
        )
    });
    // Replies to the node's NAT port go back to the pod.
    v.push(MasqCase {
        nat_before: nat_pair((POD, 40000), (EXT, 443), PROTO_TCP, NODE_IP, 50124, 0).to_vec(),
        out: Some(tcp((EXT, 443), (POD, 40000))),
        counters: vec![(MasqCounter::RevNat, 1)],
        ..MasqCase::new(
            "ingress_tcp_reply",
            Ingress,
            tcp((EXT, 443), (NODE_IP, 50124)),
        )
    });
    v.push(MasqCase {
        nat_before: nat_pair((POD, 5353), (EXT, 53), PROTO_UDP, NODE_IP, 50125, 0).to_vec(),
        out: Some(udp((EXT, 53), (POD, 5353), false)),
        counters: vec![(MasqCounter::RevNat, 1)],
        ..MasqCase::new(
            "ingress_udp_reply",
            Ingress,
            udp((EXT, 53), (NODE_IP, 50125), false),
        )
    });
    v.push(MasqCase {
        nat_before: nat_pair((POD, 0x1234), (EXT, 0), PROTO_ICMP, NODE_IP, 50126, 0).to_vec(),
        out: Some(icmp_echo(EXT, POD, ICMP_ECHO_REPLY, 0x1234)),
        counters: vec![(MasqCounter::RevNat, 1)],
        ..MasqCase::new(
            "ingress_icmp_echo_reply",
            Ingress,
            icmp_echo(EXT, NODE_IP, ICMP_ECHO_REPLY, 50126),
        )
    });
    // A fragmented reply: the first fragment is translated by its ports and remembered, so the later
    // one (no ports) reaches the same pod; a later fragment of an unknown datagram is the node's.
    let reply_frag = |dst: (Ipv4Addr, u16), first: bool| {
        let mut f = FrameSpec::udp((EXT, 53), dst);
        f.payload = (0..40u8).collect();
        f.fragment = Some(if first {
            Fragment {
                offset: 0,
                len: 16,
                more: true,
            }
        } else {
            Fragment {
                offset: 16,
                len: 32,
                more: false,
            }
        });
        f
    };
    let reply_nat = nat_pair((POD, 5353), (EXT, 53), PROTO_UDP, NODE_IP, 50129, 0).to_vec();
    v.push(MasqCase {
        nat_before: reply_nat.clone(),
        out: Some(reply_frag((POD, 5353), true).build()),
        rest: reply_frag((POD, 5353), true).datagram()[16..].to_vec(),
        counters: vec![(MasqCounter::RevNat, 1)],
        ..MasqCase::new(
            "ingress_reply_first_fragment",
            Ingress,
            reply_frag((NODE_IP, 50129), true).build(),
        )
    });
    v.push(MasqCase {
        nat_before: reply_nat,
        before: vec![reply_frag((NODE_IP, 50129), true).build()],
        out: Some(reply_frag((POD, 5353), false).build()),
        counters: vec![(MasqCounter::RevNatFrag, 1)],
        ..MasqCase::new(
            "ingress_reply_later_fragment",
            Ingress,
            reply_frag((NODE_IP, 50129), false).build(),
        )
    });
    v.push(MasqCase {
        counters: vec![(MasqCounter::RevNatFrag, 0)],
        ..MasqCase::new(
            "ingress_unknown_later_fragment",
            Ingress,
            reply_frag((NODE_IP, 50130), false).build(),
        )
    });
    // "Fragmentation needed" about a masqueraded segment goes back to the pod, the quoted packet
    // (header checksum included) restored to what the pod sent.
    let frag_needed = |dst: Ipv4Addr, quoted_src: (Ipv4Addr, u16)| {
        FrameSpec {
            l4: L4::Icmp {
                ty: ICMP_DEST_UNREACH,
                code: ICMP_FRAG_NEEDED,
                quoted: tcp(quoted_src, (EXT, 443))[14..42].to_vec(),
            },
            payload: Vec::new(),
            ..FrameSpec::tcp((EXT, 0), (dst, 0), 0)
        }
        .build()
    };
    v.push(MasqCase {
        nat_before: nat_pair((POD, 40000), (EXT, 443), PROTO_TCP, NODE_IP, 50127, 0).to_vec(),
        out: Some(frag_needed(POD, (POD, 40000))),
        counters: vec![(MasqCounter::RevNatIcmpError, 1)],
        ..MasqCase::new(
            "ingress_icmp_frag_needed",
            Ingress,
            frag_needed(NODE_IP, (NODE_IP, 50127)),
        )
    });
    // The same error about a flow that is not masqueraded is the node's own business.
    v.push(MasqCase {
        counters: vec![(MasqCounter::RevNatIcmpError, 0)],
        ..MasqCase::new(
            "ingress_icmp_error_unknown_flow",
            Ingress,
            frag_needed(NODE_IP, (NODE_IP, 50128)),
        )
    });
    // Traffic to the node without a NAT entry is the node's own.
    v.push(MasqCase {
        counters: vec![(MasqCounter::RevNat, 0)],
        ..MasqCase::new(
            "ingress_host_traffic_untouched",
            Ingress,
            tcp((EXT, 443), (NODE_IP, 22)),
        )
    });
    // A FIN or RST marks the flow's entry closing (so a drain can retire it soon after); a new SYN
    // on the same tuple (the port reused for a new connection) clears the mark.
    let pair = nat_pair((POD, 40011), (EXT, 443), PROTO_TCP, NODE_IP, 50140, 0);
    let closing = MASQ_NAT_F_CLOSING as u16;
    v.push(MasqCase {
        nat_before: pair.to_vec(),
        out: Some(tcp_flags((NODE_IP, 50140), (EXT, 443), TCP_FIN | TCP_ACK)),
        nat_after: vec![with_flags(pair, closing)[0]],
        counters: vec![(MasqCounter::Snat, 1)],
        ..MasqCase::new(
            "egress_fin_marks_closing",
            Egress,
            tcp_flags((POD, 40011), (EXT, 443), TCP_FIN | TCP_ACK),
        )
    });
    v.push(MasqCase {
        nat_before: pair.to_vec(),
        out: Some(tcp_flags((EXT, 443), (POD, 40011), TCP_RST)),
        nat_after: vec![with_flags(pair, closing)[1]],
        counters: vec![(MasqCounter::RevNat, 1)],
        ..MasqCase::new(
            "ingress_rst_marks_closing",
            Ingress,
            tcp_flags((EXT, 443), (NODE_IP, 50140), TCP_RST),
        )
    });
    v.push(MasqCase {
        nat_before: with_flags(pair, closing).to_vec(),
        out: Some(tcp((NODE_IP, 50140), (EXT, 443))),
        nat_after: vec![pair[0]],
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 0)],
        ..MasqCase::new("egress_syn_reopens", Egress, tcp((POD, 40011), (EXT, 443)))
    });

    // Draining (after a switch to iptables): a flow BPF translated keeps its port both ways...
    let pair = nat_pair((POD, 40012), (EXT, 443), PROTO_TCP, NODE_IP, 50141, 0);
    v.push(MasqCase {
        drain: true,
        nat_before: pair.to_vec(),
        out: Some(tcp_flags((NODE_IP, 50141), (EXT, 443), TCP_ACK)),
        nat_len: Some(2),
        counters: vec![
            (MasqCounter::Snat, 1),
            (MasqCounter::SnatNew, 0),
            (MasqCounter::DrainPass, 0),
        ],
        ..MasqCase::new(
            "drain_established_egress",
            Egress,
            tcp_flags((POD, 40012), (EXT, 443), TCP_ACK),
        )
    });
    v.push(MasqCase {
        drain: true,
        nat_before: pair.to_vec(),
        out: Some(tcp_flags((EXT, 443), (POD, 40012), TCP_ACK)),
        counters: vec![(MasqCounter::RevNat, 1)],
        ..MasqCase::new(
            "drain_established_reply",
            Ingress,
            tcp_flags((EXT, 443), (NODE_IP, 50141), TCP_ACK),
        )
    });
    // ... a flow whose reverse entry the LRU evicted gets it back (not a new flow) ...
    v.push(MasqCase {
        drain: true,
        nat_before: vec![pair[0]],
        out: Some(tcp_flags((NODE_IP, 50141), (EXT, 443), TCP_ACK)),
        nat_after: pair.to_vec(),
        counters: vec![(MasqCounter::Snat, 1), (MasqCounter::SnatNew, 0)],
        ..MasqCase::new(
            "drain_established_reverse_restored",
            Egress,
            tcp_flags((POD, 40012), (EXT, 443), TCP_ACK),
        )
    });
    // ... a pod packet of a flow not in the map gets no port: netfilter decided it (the node's
    // MASQUERADE ran before this hook), so it passes as netfilter left it ...
    for (name, frame) in [
        ("drain_new_tcp_untouched", tcp((POD, 40013), (EXT, 443))),
        (
            "drain_new_udp_untouched",
            udp((POD, 5355), (EXT, 53), false),
        ),
        (
            "drain_new_icmp_untouched",
            icmp_echo(POD, EXT, ICMP_ECHO_REQUEST, 0x4321),
        ),
    ] {
        v.push(MasqCase {
            drain: true,
            nat_len: Some(0),
            counters: vec![
                (MasqCounter::DrainPass, 1),
                (MasqCounter::Snat, 0),
                (MasqCounter::SnatNew, 0),
            ],
            ..MasqCase::new(name, Egress, frame)
        });
    }
    // ... what netfilter already masqueraded is never translated a second time ...
    v.push(MasqCase {
        drain: true,
        nat_before: pair.to_vec(),
        nat_len: Some(2),
        counters: vec![(MasqCounter::Snat, 0), (MasqCounter::DrainPass, 0)],
        ..MasqCase::new(
            "drain_netfilter_masqueraded_untouched",
            Egress,
            tcp((NODE_IP, 40012), (EXT, 443)),
        )
    });
    // ... and netfilter's replies (no NAT entry of ours) go on to netfilter untouched.
    v.push(MasqCase {
        drain: true,
        nat_before: pair.to_vec(),
        counters: vec![(MasqCounter::RevNat, 0)],
        ..MasqCase::new(
            "drain_netfilter_reply_untouched",
            Ingress,
            tcp_flags((EXT, 443), (NODE_IP, 40012), TCP_ACK),
        )
    });
    v
}

/// Compares a run's result with a row's expectations; every mismatch as "what: got … expected …".
pub fn check(
    case: &MasqCase,
    verdict: Verdict,
    out: &[u8],
    nat: &BTreeMap<Masq4Tuple, Masq4NatEntry>,
    counter_delta: impl Fn(MasqCounter) -> u64,
) -> Vec<String> {
    let mut errs = Vec::new();
    if verdict != case.verdict {
        errs.push(format!(
            "verdict: got {verdict:?} expected {:?}",
            case.verdict
        ));
    }
    if case.verdict != Verdict::Drop {
        let want = case.out.as_ref().unwrap_or(&case.frame);
        if out != want.as_slice() {
            errs.push(field_diff(out, want));
        }
        if let Err(e) = crate::lb_fixtures::verify_checksums(out, &case.rest) {
            errs.push(e);
        }
    }
    for (k, v) in &case.nat_after {
        match nat.get(k) {
            None => errs.push(format!("NAT entry {k:?}: missing")),
            Some(got) if (got.to_addr, got.to_port) != (v.to_addr, v.to_port) => {
                errs.push(format!(
                    "NAT entry {k:?}: got {}:{} expected {}:{}",
                    crate::lb_maps::ip_of(got.to_addr),
                    u16::from_be(got.to_port),
                    crate::lb_maps::ip_of(v.to_addr),
                    u16::from_be(v.to_port)
                ))
            }
            Some(got) if got.flags != v.flags => errs.push(format!(
                "NAT entry {k:?}: flags {:#x} expected {:#x}",
                got.flags, v.flags
            )),
            Some(_) => {}
        }
    }
    if let Some(n) = case.nat_len
        && nat.len() != n
    {
        errs.push(format!("NAT entries: {} expected {n}: {nat:?}", nat.len()));
    }
    for (c, n) in &case.counters {
        let got = counter_delta(*c);
        if got != *n {
            errs.push(format!("counter {c:?}: grew {got} expected {n}"));
        }
    }
    errs
}

/// Names the header fields where two frames differ.
fn field_diff(got: &[u8], want: &[u8]) -> String {
    use crate::lb_fixtures::parse;
    match (parse(got), parse(want)) {
        (Ok(g), Ok(w)) => {
            let mut d = Vec::new();
            if g.src != w.src {
                d.push(format!("src: got {} expected {}", g.src, w.src));
            }
            if g.dst != w.dst {
                d.push(format!("dst: got {} expected {}", g.dst, w.dst));
            }
            if (g.sport, g.dport) != (w.sport, w.dport) {
                d.push(format!(
                    "ports: got {}:{} expected {}:{}",
                    g.sport, g.dport, w.sport, w.dport
                ));
            }
            if g.ip_csum != w.ip_csum {
                d.push(format!(
                    "IPv4 checksum: got {:#06x} expected {:#06x}",
                    g.ip_csum, w.ip_csum
                ));
            }
            if g.l4_csum != w.l4_csum {
                d.push(format!(
                    "L4 checksum: got {:#06x} expected {:#06x}",
                    g.l4_csum, w.l4_csum
                ));
            }
            if d.is_empty() {
                d.push(format!(
                    "bytes differ: got {} expected {}",
                    crate::lb_fixtures::hex(got),
                    crate::lb_fixtures::hex(want)
                ));
            }
            d.join("; ")
        }
        (g, w) => format!("frame: got {g:?} expected {w:?}"),
    }
}

/// The benchmark's frame: a pod's TCP segment to the outside (SNAT path).
pub fn bench_frame() -> Vec<u8> {
    tcp((POD, 40000), (EXT, 443))
}
