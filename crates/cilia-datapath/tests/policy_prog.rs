//! The policy programs (`ebpf/tc_policy.c`) on real frames through BPF_PROG_TEST_RUN, table-driven:
//! the maps are seeded as the compiler would fill them, each row states the packet, the program
//! (the pod's ingress or egress) and the verdict, and every drop or audit must show up as an event.

use std::net::Ipv4Addr;

use cilia_datapath::policy::{
    Direction, EventReader, EventVerdict, ID_ANY, ID_KUBE_APISERVER, ID_REMOTE_NODE,
    PROG_FROM_CONTAINER, PROG_HOST_EGRESS, PROG_HOST_INGRESS, PROG_TO_CONTAINER, PolicyDatapath,
    PolicyEntry, PolicyMaps, PortPrefix, Verdict, port_range_prefixes,
};
use cilia_datapath::testrun::test_run;

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1: let it through, next program
const TC_ACT_SHOT: u32 = 2;
/// Without a context the test run's skb sits on loopback: the endpoint id.
const EP: u32 = 1;
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const EMPIRE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
const ALLIANCE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 6);
const APISERVER: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ID_EMPIRE: u32 = 300;
const ID_ALLIANCE: u32 = 301;

mod common;
use common::{PinDir, can_load_bpf};

/// A 64-byte Ethernet/IPv4 frame with a TCP (6), UDP (17) or ICMP echo (1) header.
fn frame(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[12] = 0x08;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&src.0.octets());
    f[30..34].copy_from_slice(&dst.0.octets());
    if proto == 1 {
        f[34] = 8; // echo request
        f[38..40].copy_from_slice(&src.1.to_be_bytes()); // identifier
    } else {
        f[34..36].copy_from_slice(&src.1.to_be_bytes());
        f[36..38].copy_from_slice(&dst.1.to_be_bytes());
    }
    f
}

fn entry(dir: Direction, identity: u32, proto: u8, port: u16) -> PolicyEntry {
    PolicyEntry {
        ep_id: EP,
        dir,
        identity,
        proto,
        port: PortPrefix {
            port,
            bits: if port == 0 { 0 } else { 16 },
        },
    }
}

/// What the compiler would produce for: ingress allow empire→TCP/80, allow alliance→TCP/8000-8080,
/// allow kube-apiserver (L3), deny anyone→TCP/22 (folded into each identity's table), ingress
/// enforced, egress not.
fn maps(audit: bool) -> PolicyMaps {
    use Direction::Ingress;
    let mut m = PolicyMaps::default();
    for (ip, id) in [
        (EMPIRE, ID_EMPIRE),
        (ALLIANCE, ID_ALLIANCE),
        (APISERVER, ID_KUBE_APISERVER),
    ] {
        m.ipcache.insert((ip, 32), id);
    }
    m.entries
        .insert(entry(Ingress, ID_EMPIRE, 6, 80), (Verdict::Allow, 0));
    for p in port_range_prefixes(8000, 8080) {
        let e = PolicyEntry {
            port: p,
            ..entry(Ingress, ID_ALLIANCE, 6, 0)
        };
        m.entries.insert(e, (Verdict::Allow, 1));
    }
    m.entries
        .insert(entry(Ingress, ID_KUBE_APISERVER, 0, 0), (Verdict::Allow, 2));
    for id in [ID_ANY, ID_EMPIRE, ID_ALLIANCE, ID_KUBE_APISERVER] {
        m.entries
            .insert(entry(Ingress, id, 6, 22), (Verdict::Deny, 3));
    }
    m.endpoints.insert(EP, (true, false, audit));
    m
}

struct Case {
    name: &'static str,
    prog: &'static str,
    frame: Vec<u8>,
    pass: bool,
    /// The event a drop (or, in audit mode, the would-be drop) reports.
    event: Option<EventVerdict>,
}

fn cases() -> Vec<Case> {
    let to = PROG_TO_CONTAINER;
    let from = PROG_FROM_CONTAINER;
    let mut arp = frame(6, (EMPIRE, 1), (POD, 80));
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    vec![
        Case {
            name: "empire to :80 is allowed",
            prog: to,
            frame: frame(6, (EMPIRE, 40000), (POD, 80)),
            pass: true,
            event: None,
        },
        Case {
            name: "empire to :81 hits default deny",
            prog: to,
            frame: frame(6, (EMPIRE, 40000), (POD, 81)),
            pass: false,
            event: Some(EventVerdict::DefaultDeny),
        },
        Case {
            name: "alliance to :80 hits default deny",
            prog: to,
            frame: frame(6, (ALLIANCE, 40000), (POD, 80)),
            pass: false,
            event: Some(EventVerdict::DefaultDeny),
        },
        Case {
            name: "alliance inside its port range",
            prog: to,
            frame: frame(6, (ALLIANCE, 40000), (POD, 8080)),
            pass: true,
            event: None,
        },
        Case {
            name: "alliance just past its port range",
            prog: to,
            frame: frame(6, (ALLIANCE, 40000), (POD, 8081)),
            pass: false,
            event: Some(EventVerdict::DefaultDeny),
        },
        Case {
            name: "kube-apiserver on any protocol (L3 rule): UDP",
            prog: to,
            frame: frame(17, (APISERVER, 5000), (POD, 9999)),
            pass: true,
            event: None,
        },
        Case {
            name: "kube-apiserver on any protocol (L3 rule): ICMP echo",
            prog: to,
            frame: frame(1, (APISERVER, 77), (POD, 0)),
            pass: true,
            event: None,
        },
        Case {
            name: "deny :22 beats the kube-apiserver L3 allow",
            prog: to,
            frame: frame(6, (APISERVER, 40000), (POD, 22)),
            pass: false,
            event: Some(EventVerdict::DeniedByRule),
        },
        Case {
            name: "deny :22 for the world too",
            prog: to,
            frame: frame(6, (OUTSIDE, 40000), (POD, 22)),
            pass: false,
            event: Some(EventVerdict::DeniedByRule),
        },
        Case {
            name: "the world to :80 hits default deny",
            prog: to,
            frame: frame(6, (OUTSIDE, 40000), (POD, 80)),
            pass: false,
            event: Some(EventVerdict::DefaultDeny),
        },
        Case {
            name: "not IPv4: no L3/L4 policy",
            prog: to,
            frame: arp,
            pass: true,
            event: None,
        },
        Case {
            name: "egress is not enforced: the pod reaches the world",
            prog: from,
            frame: frame(6, (POD, 50000), (OUTSIDE, 443)),
            pass: true,
            event: None,
        },
        Case {
            name: "the reply of the pod's own connection passes ingress (conntrack)",
            prog: to,
            frame: frame(6, (OUTSIDE, 443), (POD, 50000)),
            pass: true,
            event: None,
        },
        Case {
            name: "another port of that peer does not ride on the connection",
            prog: to,
            frame: frame(6, (OUTSIDE, 443), (POD, 50001)),
            pass: false,
            event: Some(EventVerdict::DefaultDeny),
        },
    ]
}

fn run_table(audit: bool) {
    cilia_datapath::bpf::ensure_bpffs().unwrap();
    let dir = PinDir::new("policy", "prog");
    let mut dp = PolicyDatapath::load(&dir.0).unwrap();
    let m = maps(audit);
    assert!(dp.apply(&m).unwrap() > 0);
    assert_eq!(dp.apply(&m).unwrap(), 0, "unchanged maps are not rewritten");
    let mut events = EventReader::open(&dir.0).unwrap();
    for c in cases() {
        let out = test_run(dp.prog_fd(c.prog), &c.frame, 1, None).unwrap();
        let pass = c.pass || (audit && c.event.is_some());
        let want = if pass { TC_ACT_UNSPEC } else { TC_ACT_SHOT };
        assert_eq!(
            out.retval, want,
            "{} (audit={audit}): verdict got {} expected {}",
            c.name, out.retval as i32, want as i32
        );
        assert_eq!(
            out.data, c.frame,
            "{}: the policy never rewrites a frame",
            c.name
        );
        let got = events.drain();
        match c.event {
            None => assert!(got.is_empty(), "{}: no event expected, got {got:?}", c.name),
            Some(v) => {
                assert_eq!(got.len(), 1, "{}: one event, got {got:?}", c.name);
                let e = &got[0];
                let want_v = if audit { EventVerdict::Audit } else { v };
                assert_eq!(e.verdict, want_v, "{}", c.name);
                assert_eq!(e.ep_id, EP, "{}", c.name);
                assert_eq!(
                    e.dst,
                    Ipv4Addr::from(<[u8; 4]>::try_from(&c.frame[30..34]).unwrap()),
                    "{}",
                    c.name
                );
                assert_eq!(
                    e.dport,
                    u16::from_be_bytes([c.frame[36], c.frame[37]]),
                    "{}",
                    c.name
                );
                assert_eq!(
                    e.rule.is_some(),
                    v == EventVerdict::DeniedByRule,
                    "{}: deciding rule",
                    c.name
                );
            }
        }
    }
    // Withdrawing the policy: the endpoint is no longer enforced, everything passes.
    assert!(dp.apply(&PolicyMaps::default()).unwrap() > 0);
    let out = test_run(
        dp.prog_fd(PROG_TO_CONTAINER),
        &frame(6, (ALLIANCE, 1), (POD, 22)),
        1,
        None,
    )
    .unwrap();
    assert_eq!(out.retval, TC_ACT_UNSPEC, "no policy left: allowed");
}

#[test]
fn policy_verdict_table() {
    if can_load_bpf() {
        run_table(false);
    }
}

#[test]
fn policy_verdict_table_in_audit_mode() {
    if can_load_bpf() {
        run_table(true);
    }
}

// A host policy on a node device judges the host's traffic only: a packet routed through to one
// of the node's pods (or leaving from one) passes the host programs and is left to the pod's own
// policy; the host's own traffic from a peer the policy does not allow is dropped, the API server's
// passes, and the host's outgoing connection's reply comes back in through conntrack.
#[test]
fn host_policy_leaves_pod_traffic_to_the_pods() {
    if !can_load_bpf() {
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().unwrap();
    let dir = PinDir::new("policy", "host");
    let mut dp = PolicyDatapath::load(&dir.0).unwrap();
    const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
    const PEER_NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
    let mut m = PolicyMaps::default();
    m.ipcache.insert((NODE, 32), 1);
    m.ipcache.insert((PEER_NODE, 32), ID_REMOTE_NODE);
    m.ipcache.insert((APISERVER_EXT, 32), ID_KUBE_APISERVER);
    m.ipcache.insert((POD, 32), ID_EMPIRE);
    m.endpoints.insert(EP, (true, false, false));
    m.entries.insert(
        entry(Direction::Ingress, ID_KUBE_APISERVER, 0, 0),
        (Verdict::Allow, 0),
    );
    dp.apply(&m).unwrap();
    let mut events = EventReader::open(&dir.0).unwrap();
    let run = |dp: &PolicyDatapath, prog: &str, f: Vec<u8>| {
        test_run(dp.prog_fd(prog), &f, 1, None).unwrap().retval
    };
    assert_eq!(
        run(
            &dp,
            PROG_HOST_INGRESS,
            frame(6, (APISERVER_EXT, 40000), (NODE, 10250))
        ),
        TC_ACT_UNSPEC,
        "the API server reaches the host"
    );
    assert_eq!(
        run(
            &dp,
            PROG_HOST_INGRESS,
            frame(6, (PEER_NODE, 40000), (NODE, 10250))
        ),
        TC_ACT_SHOT,
        "another peer does not"
    );
    let e = events.drain();
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (e[0].src, e[0].verdict),
        (PEER_NODE, EventVerdict::DefaultDeny)
    );
    assert_eq!(
        run(
            &dp,
            PROG_HOST_INGRESS,
            frame(6, (PEER_NODE, 40001), (POD, 80))
        ),
        TC_ACT_UNSPEC,
        "routed on to a pod: not the host's"
    );
    assert_eq!(
        run(
            &dp,
            PROG_HOST_EGRESS,
            frame(6, (NODE, 40002), (PEER_NODE, 443))
        ),
        TC_ACT_UNSPEC,
        "egress is not enforced"
    );
    assert_eq!(
        run(
            &dp,
            PROG_HOST_INGRESS,
            frame(6, (PEER_NODE, 443), (NODE, 40002))
        ),
        TC_ACT_UNSPEC,
        "the reply of the host's own connection"
    );
    assert!(events.drain().is_empty());
}

const APISERVER_EXT: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
