//! BPF masquerading fed real frames through BPF_PROG_TEST_RUN (`tc_masq.o`), with maps seeded the
//! way the agent seeds them (intent → MasqDesired → diff → pinned maps).

use cilia_datapath::lb_fixtures::{Hook, run_frame};
use cilia_datapath::masq::{format_ipmasq_list, format_nat_list};
use cilia_datapath::masq_bpf::{
    EGRESS_PROG, INGRESS_PROG, MasqDatapath, MasqMapSizes, monotonic_ns, read_ipmasq, read_nat,
};
use cilia_datapath::masq_fixtures::*;
use cilia_datapath::masq_maps::MasqCounter;

mod common;
use common::{PinDir, can_load_bpf};

fn seeded(pin: &PinDir) -> MasqDatapath {
    let mut dp = MasqDatapath::open(&pin.0, &MasqMapSizes::small()).unwrap();
    let writes = dp.apply(&world()).unwrap();
    assert!(writes > 0, "a fresh map set needs writes");
    assert_eq!(
        dp.read_entries().unwrap(),
        world(),
        "maps hold what was written"
    );
    dp
}

// Every table row on fresh maps: the verdict, the exact frame that leaves (every header field and
// both checksums, compared with a frame built from scratch), the NAT entries and the counters.
#[test]
fn table_rows() {
    if !can_load_bpf() {
        return;
    }
    let mut failures = Vec::new();
    let cases = masq_cases();
    for case in &cases {
        let pin = PinDir::new("masq", case.name);
        let mut dp = seeded(&pin);
        if case.drain {
            dp.apply(&draining_world()).unwrap();
        }
        for (k, v) in &case.nat_before {
            dp.nat_insert(k, v).unwrap();
        }
        let prog = match case.dir {
            Dir::Egress => EGRESS_PROG,
            Dir::Ingress => INGRESS_PROG,
        };
        for f in &case.before {
            run_frame(dp.prog_fd(prog).unwrap(), Hook::Tc, 1, f).unwrap();
        }
        let before = dp.counters().unwrap();
        let (verdict, out) =
            run_frame(dp.prog_fd(prog).unwrap(), Hook::Tc, 1, &case.frame).unwrap();
        let after = dp.counters().unwrap();
        let nat = dp.nat_entries().unwrap();
        for e in check(case, verdict, &out, &nat, |c| {
            after[c as usize] - before[c as usize]
        }) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} rows passed", cases.len());
}

// A flow's second packet reuses the port its first one claimed, and the reply of that port goes back
// to the pod: SNAT → reverse NAT round trip through both programs on shared maps.
#[test]
fn round_trip_through_both_programs() {
    if !can_load_bpf() {
        return;
    }
    let pin = PinDir::new("masq", "roundtrip");
    let dp = seeded(&pin);
    let eg = dp.prog_fd(EGRESS_PROG).unwrap();
    let ing = dp.prog_fd(INGRESS_PROG).unwrap();
    let (v1, out1) = run_frame(eg, Hook::Tc, 1, &tcp((POD, 41000), (EXT, 80))).unwrap();
    let (v2, out2) = run_frame(eg, Hook::Tc, 1, &tcp((POD, 41000), (EXT, 80))).unwrap();
    assert_eq!((v1, v2), (Verdict::Pass, Verdict::Pass));
    assert_eq!(out1, out2, "same flow, same translation");
    let p = u16::from_be_bytes([out1[34], out1[35]]);
    assert_eq!(p, nat_port_candidate((POD, 41000), (EXT, 80), 6, 0));
    assert_eq!(dp.counter(MasqCounter::SnatNew).unwrap(), 1);
    let (v3, back) = run_frame(ing, Hook::Tc, 1, &tcp((EXT, 80), (NODE_IP, p))).unwrap();
    assert_eq!(v3, Verdict::Pass);
    assert_eq!(back, tcp((EXT, 80), (POD, 41000)));
    // A different pod to the same destination and port gets a port of its own.
    let (_, other) = run_frame(eg, Hook::Tc, 1, &tcp((POD2, 41000), (EXT, 80))).unwrap();
    assert_ne!(u16::from_be_bytes([other[34], other[35]]), p);
}

use cilia_datapath::lb_fixtures::Verdict;

// Reopening the pinned maps with an unchanged intent writes nothing (a restart is zero churn), and
// a changed ip-masq-agent config writes only the changed prefixes. `bpf ipmasq list` / `bpf nat
// list` read the pins.
#[test]
fn restart_is_zero_churn_and_dbg_reads_pins() {
    if !can_load_bpf() {
        return;
    }
    let pin = PinDir::new("masq", "churn");
    {
        let dp = seeded(&pin);
        let (_, _) = run_frame(
            dp.prog_fd(EGRESS_PROG).unwrap(),
            Hook::Tc,
            1,
            &tcp((POD, 42000), (EXT, 443)),
        )
        .unwrap();
    }
    let mut dp = MasqDatapath::open(&pin.0, &MasqMapSizes::small()).unwrap();
    assert_eq!(
        dp.apply(&world()).unwrap(),
        0,
        "unchanged intent, no writes"
    );
    assert_eq!(
        dp.nat_entries().unwrap().len(),
        2,
        "the flow survived the restart"
    );

    let mut changed = world();
    changed.ipmasq.insert("100.64.0.0/10".parse().unwrap());
    assert_eq!(dp.apply(&changed).unwrap(), 1);
    let (list, err) = format_ipmasq_list(&read_ipmasq(&pin.0).unwrap());
    assert_eq!(err, "");
    assert_eq!(
        list,
        "IP PREFIX/ADDRESS\n100.64.0.0/10\n169.254.0.0/16\n192.168.0.0/16\n"
    );
    let (nat, _) = format_nat_list(&read_nat(&pin.0).unwrap(), monotonic_ns());
    let p = nat_port_candidate((POD, 42000), (EXT, 443), 6, 0);
    assert!(
        nat.contains(&format!(
            "TCP OUT 10.244.0.5:42000 -> 203.0.113.10:443 XLATE_SRC 172.18.0.2:{p} Created=0sec ago NeedsCT=0"
        )),
        "{nat}"
    );
    assert!(
        nat.contains(&format!(
            "TCP IN 203.0.113.10:443 -> 172.18.0.2:{p} XLATE_DST 10.244.0.5:42000 Created=0sec ago NeedsCT=0"
        )),
        "{nat}"
    );
}

// Every translated packet keeps its flow marked alive (seen_ns, CLOCK_MONOTONIC), which is what a
// drain goes by; and a drain switched on and off again on the same maps: established flows keep
// their port throughout, new ones start only when the drain is over.
#[test]
fn seen_refresh_and_drain_toggle() {
    if !can_load_bpf() {
        return;
    }
    let pin = PinDir::new("masq", "drain-toggle");
    let mut dp = seeded(&pin);
    let eg = dp.prog_fd(EGRESS_PROG).unwrap();
    let ing = dp.prog_fd(INGRESS_PROG).unwrap();
    let (_, out) = run_frame(eg, Hook::Tc, 1, &tcp((POD, 43000), (EXT, 443))).unwrap();
    let p = u16::from_be_bytes([out[34], out[35]]);
    // Age the flow's entries, as if its last packet was long ago.
    for (k, mut v) in dp.nat_entries().unwrap() {
        v.seen_ns = 1;
        dp.nat_insert(&k, &v).unwrap();
    }
    assert!(dp.set_flags(draining_world().config.flags).unwrap());
    assert!(
        !dp.set_flags(draining_world().config.flags).unwrap(),
        "no write when unchanged"
    );
    let t0 = monotonic_ns();
    let (v, out2) = run_frame(eg, Hook::Tc, 1, &tcp((POD, 43000), (EXT, 443))).unwrap();
    assert_eq!(
        (v, &out2),
        (Verdict::Pass, &out),
        "the flow keeps its port while draining"
    );
    let (_, back) = run_frame(ing, Hook::Tc, 1, &tcp((EXT, 443), (NODE_IP, p))).unwrap();
    assert_eq!(back, tcp((EXT, 443), (POD, 43000)));
    let nat = dp.nat_entries().unwrap();
    assert_eq!(nat.len(), 2);
    for (k, v) in &nat {
        // The coarse clock may lag the fine one by a tick (4 ms at HZ=250).
        assert!(
            v.seen_ns + 10_000_000 >= t0 && v.seen_ns <= monotonic_ns(),
            "{k:?}: seen_ns {} not refreshed (now {t0})",
            v.seen_ns
        );
    }
    let (_, untouched) = run_frame(eg, Hook::Tc, 1, &tcp((POD, 43001), (EXT, 443))).unwrap();
    assert_eq!(
        untouched,
        tcp((POD, 43001), (EXT, 443)),
        "no new flow while draining"
    );
    assert_eq!(dp.nat_entries().unwrap().len(), 2);
    assert_eq!(dp.counter(MasqCounter::DrainPass).unwrap(), 1);
    // Drain over (back to BPF): the new flow gets a port, the old one keeps its own.
    assert!(dp.set_flags(world().config.flags).unwrap());
    let (_, now_new) = run_frame(eg, Hook::Tc, 1, &tcp((POD, 43001), (EXT, 443))).unwrap();
    assert_eq!(
        u16::from_be_bytes([now_new[34], now_new[35]]),
        nat_port_candidate((POD, 43001), (EXT, 443), 6, 0)
    );
    let (_, again) = run_frame(eg, Hook::Tc, 1, &tcp((POD, 43000), (EXT, 443))).unwrap();
    assert_eq!(again, out);
    assert_eq!(dp.nat_entries().unwrap().len(), 4);
}
