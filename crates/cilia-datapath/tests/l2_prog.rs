//! The ARP responder (`ebpf/tc_l2.c`) on real frames through BPF_PROG_TEST_RUN, table-driven: every
//! rewritten field of a reply is checked, and everything it must not answer passes untouched.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use cilia_datapath::l2::{L2Datapath, L2ResponderKey, monotonic_now_ns, read_entries, read_lease};
use cilia_datapath::testrun::test_run;

const TC_ACT_UNSPEC: u32 = u32::MAX; // -1: next program in the TCX chain
const TC_ACT_REDIRECT: u32 = 7;
/// Without a context the test run's skb sits on loopback.
const LO: u32 = 1;
const VIP: Ipv4Addr = Ipv4Addr::new(172, 18, 250, 0);
const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(172, 18, 250, 9);
const NODE_MAC: [u8; 6] = [0x02, 0xc1, 0x1a, 0, 0, 3];
const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0x1e, 0, 0, 100];
const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);

mod common;
use common::{PinDir, can_load_bpf};

/// An ARP packet: `op`, sender (mac, ip), target ip, padded to the Ethernet minimum.
fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr, dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes());
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

fn request(tpa: Ipv4Addr) -> Vec<u8> {
    arp(1, CLIENT_MAC, CLIENT, tpa, [0xff; 6])
}

enum Expect {
    /// Passed on untouched.
    Pass,
    /// Answered: the reply's fields.
    Reply,
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn cases() -> Vec<Case> {
    let mut ipv4 = request(VIP);
    ipv4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut bad_hlen = request(VIP);
    bad_hlen[18] = 8;
    vec![
        Case {
            name: "request for an announced VIP is answered",
            frame: request(VIP),
            expect: Expect::Reply,
        },
        Case {
            name: "request for another address passes",
            frame: request(OTHER_VIP),
            expect: Expect::Pass,
        },
        Case {
            name: "a reply is not answered",
            frame: arp(2, CLIENT_MAC, CLIENT, VIP, NODE_MAC),
            expect: Expect::Pass,
        },
        Case {
            name: "a gratuitous request for the VIP (someone else claims it) is not answered",
            frame: arp(1, CLIENT_MAC, VIP, VIP, [0xff; 6]),
            expect: Expect::Pass,
        },
        Case {
            name: "an IPv4 frame passes to the next program",
            frame: ipv4,
            expect: Expect::Pass,
        },
        Case {
            name: "a malformed ARP (hardware length 8) passes",
            frame: bad_hlen,
            expect: Expect::Pass,
        },
        Case {
            name: "a truncated frame passes",
            frame: request(VIP)[..30].to_vec(),
            expect: Expect::Pass,
        },
    ]
}

#[test]
fn arp_responder_table() {
    if !can_load_bpf() {
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().unwrap();
    let dir = PinDir::new("l2", "prog");
    let mut dp = L2Datapath::load(&dir.0).unwrap();
    let desired: BTreeMap<_, _> = [(L2ResponderKey::new(VIP, LO), NODE_MAC)].into();
    assert_eq!(dp.apply(&desired).unwrap(), 1);
    assert_eq!(
        dp.apply(&desired).unwrap(),
        0,
        "an unchanged table is not rewritten"
    );
    let fd = dp.prog_fd();
    // The lease gates every answer: a fresh map (0) and a lease that ran out answer nothing.
    let now = monotonic_now_ns();
    let mut lapsed = 0;
    for (what, expires) in [
        ("a fresh lease (0)", None),
        ("a lease that ran out 1 ms ago", Some(now - 1_000_000)),
        ("a lease ending now", Some(now)),
    ] {
        if let Some(t) = expires {
            dp.set_lease(t).unwrap();
        }
        let out = test_run(fd, &request(VIP), 1, None).unwrap();
        assert_eq!(
            out.retval, TC_ACT_UNSPEC,
            "{what}: an announced VIP must not be answered"
        );
        assert_eq!(out.data, request(VIP), "{what}: frame untouched");
        lapsed += 1;
    }
    assert_eq!(read_entries(&dir.0).unwrap()[0].1.lapsed, lapsed);
    assert_eq!(read_entries(&dir.0).unwrap()[0].1.responses_sent, 0);
    // A running lease: the table answers.
    let until = monotonic_now_ns() + 60_000_000_000;
    dp.set_lease(until).unwrap();
    assert_eq!(dp.lease().unwrap(), until);
    assert_eq!(read_lease(&dir.0).unwrap(), until, "read from the pin");
    let mut answered = 0;
    for c in cases() {
        let out = test_run(fd, &c.frame, 1, None).unwrap();
        match c.expect {
            Expect::Pass => {
                assert_eq!(
                    out.retval, TC_ACT_UNSPEC,
                    "{}: verdict got {} expected TC_ACT_UNSPEC",
                    c.name, out.retval as i32
                );
                assert_eq!(
                    out.data, c.frame,
                    "{}: the frame must not be rewritten",
                    c.name
                );
            }
            Expect::Reply => {
                answered += 1;
                assert_eq!(
                    out.retval, TC_ACT_REDIRECT,
                    "{}: verdict got {} expected TC_ACT_REDIRECT",
                    c.name, out.retval as i32
                );
                let f = &out.data;
                assert_eq!(f.len(), c.frame.len(), "{}: length", c.name);
                assert_eq!(&f[0..6], &CLIENT_MAC, "{}: eth dst = the asker", c.name);
                assert_eq!(&f[6..12], &NODE_MAC, "{}: eth src = the interface", c.name);
                assert_eq!(&f[12..14], &[0x08, 0x06], "{}: ethertype", c.name);
                assert_eq!(
                    &f[14..20],
                    &c.frame[14..20],
                    "{}: htype/ptype/hlen/plen kept",
                    c.name
                );
                assert_eq!(&f[20..22], &[0, 2], "{}: op = reply", c.name);
                assert_eq!(&f[22..28], &NODE_MAC, "{}: sender mac", c.name);
                assert_eq!(&f[28..32], &VIP.octets(), "{}: sender ip = VIP", c.name);
                assert_eq!(&f[32..38], &CLIENT_MAC, "{}: target mac = asker", c.name);
                assert_eq!(
                    &f[38..42],
                    &CLIENT.octets(),
                    "{}: target ip = asker",
                    c.name
                );
                assert_eq!(&f[42..], &c.frame[42..], "{}: padding untouched", c.name);
            }
        }
    }
    let entries = read_entries(&dir.0).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1.responses_sent, answered, "reply counter");
    assert_eq!(entries[0].1.lapsed, lapsed, "no lapse while the lease ran");
    // The lease withdrawn (0, as the agent does on lapse): silent again, the entry kept.
    dp.set_lease(0).unwrap();
    let out = test_run(fd, &request(VIP), 1, None).unwrap();
    assert_eq!(
        out.retval, TC_ACT_UNSPEC,
        "a withdrawn lease is not answered"
    );
    dp.set_lease(until).unwrap();
    // Withdrawing the VIP stops the answers.
    assert_eq!(dp.apply(&BTreeMap::new()).unwrap(), 1);
    let out = test_run(fd, &request(VIP), 1, None).unwrap();
    assert_eq!(out.retval, TC_ACT_UNSPEC, "a withdrawn VIP is not answered");
}

// The link monitor sees a carrier change through the kernel's link notifications, well before its
// fallback re-listing (set to a minute here).
#[test]
fn link_monitor_sees_carrier_changes_at_once() {
    if !can_load_bpf() {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::process::Command;
    use std::time::{Duration, Instant};
    let ns = format!("cl2links-{:x}", std::process::id());
    let sh = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    sh(&["ip", "netns", "add", &ns]);
    let _del = Del(ns.clone());
    sh(&[
        "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
    sh(&["ip", "-n", &ns, "link", "set", "peer0", "up"]);
    let ns2 = ns.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns2}")).unwrap();
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (tx, mut rx) = tokio::sync::watch::channel(Vec::new());
            tokio::spawn(cilia_datapath::l2::watch_links(tx, Duration::from_secs(60)));
            let up = |rx: &tokio::sync::watch::Receiver<Vec<cilia_datapath::l2::LinkState>>| {
                rx.borrow()
                    .iter()
                    .find(|l| l.iface.name == "eth0")
                    .map(|l| l.up)
            };
            let wait = async |rx: &mut tokio::sync::watch::Receiver<_>, want: bool| {
                let t = Instant::now();
                while up(rx) != Some(want) {
                    tokio::time::timeout(Duration::from_secs(5), rx.changed())
                        .await
                        .expect("no link change within 5 s")
                        .unwrap();
                }
                t.elapsed()
            };
            wait(&mut rx, true).await;
            // The peer goes down: eth0 loses its carrier (still administratively up).
            let s = Command::new("ip")
                .args(["link", "set", "peer0", "down"])
                .status()
                .unwrap();
            assert!(s.success());
            let took = wait(&mut rx, false).await;
            assert!(took < Duration::from_secs(5), "{took:?}");
            let s = Command::new("ip")
                .args(["link", "set", "peer0", "up"])
                .status()
                .unwrap();
            assert!(s.success());
            wait(&mut rx, true).await;
        });
    })
    .join()
    .unwrap();
}
