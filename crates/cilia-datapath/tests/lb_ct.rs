//! Conntrack lifetimes of the load balancer through BPF_PROG_TEST_RUN, on XDP and TC: each row is
//! a sequence of frames of one flow and the lifetime its entry must have after the last one
//! (Cilium's defaults: TCP handshake 60 s, established 6 h, closing 10 s, UDP 60 s); then entries
//! past their lifetime are replaced and give their SNAT port back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use cilia_datapath::clock::Clock;
use cilia_datapath::lb::{
    BackendKey, BackendRetention, Proto, ServiceSpec, assign_backend_ids,
    assign_backend_ids_retaining, desired_entries, lb_diff, wanted_backends,
};
use cilia_datapath::lb_bpf::{LbDatapath, LbMapSizes, TC_LB_INGRESS_PROG, XDP_LB_PROG};
use cilia_datapath::lb_fixtures::*;
use cilia_datapath::lb_maps::{
    CT_TIMEOUT_NONTCP_S, CT_TIMEOUT_TCP_CLOSE_S, CT_TIMEOUT_TCP_S, CT_TIMEOUT_TCP_SYN_S, Lb4Tuple,
    LbCounter, ip_of,
};

mod common;
use common::{PinDir, can_load_bpf};

fn seeded(pin: &Path, services: &[ServiceSpec]) -> LbDatapath {
    let mut dp = LbDatapath::load(pin, &LbMapSizes::small()).unwrap();
    dp.set_config(&node_config()).unwrap();
    seed_node_dev(&mut dp).unwrap();
    let cur = dp.read_entries().unwrap();
    let ids: BTreeMap<BackendKey, u32> = cur
        .backends
        .iter()
        .map(|(id, b)| {
            (
                BackendKey {
                    addr: ip_of(b.address),
                    port: u16::from_be(b.port),
                    proto: Proto::from_number(b.proto).unwrap(),
                },
                *id,
            )
        })
        .collect();
    let ids = assign_backend_ids(services, &ids);
    let want = desired_entries(services, &ids, MAGLEV).unwrap();
    dp.apply(&lb_diff(&want, &cur), MAGLEV).unwrap();
    dp
}

fn prog(dp: &LbDatapath, hook: Hook) -> i32 {
    dp.prog_fd(match hook {
        Hook::Xdp => XDP_LB_PROG,
        Hook::Tc => TC_LB_INGRESS_PROG,
    })
    .unwrap()
}

struct CtRow {
    name: &'static str,
    frames: Vec<Vec<u8>>,
    key: Lb4Tuple,
    lifetime: u32,
    closing: u8,
    seen_ack: u8,
}

fn rows() -> Vec<CtRow> {
    let client = (CLIENT, CLIENT_PORT);
    let tcp = |flags| FrameSpec::tcp(client, (VIP_SNAT, 80), flags).build();
    let key = Lb4Tuple::new(client, (VIP_SNAT, 80), PROTO_TCP);
    vec![
        CtRow {
            name: "syn_gets_the_handshake_lifetime",
            frames: vec![tcp(TCP_SYN)],
            key,
            lifetime: ticks(CT_TIMEOUT_TCP_SYN_S),
            closing: 0,
            seen_ack: 0,
        },
        CtRow {
            name: "ack_makes_it_established",
            frames: vec![tcp(TCP_SYN), tcp(TCP_ACK)],
            key,
            lifetime: ticks(CT_TIMEOUT_TCP_S),
            closing: 0,
            seen_ack: 1,
        },
        CtRow {
            name: "fin_starts_the_close_timeout",
            frames: vec![tcp(TCP_SYN), tcp(TCP_ACK), tcp(TCP_FIN | TCP_ACK)],
            key,
            lifetime: ticks(CT_TIMEOUT_TCP_CLOSE_S),
            closing: 1,
            seen_ack: 1,
        },
        CtRow {
            name: "acks_after_fin_stay_closing",
            frames: vec![tcp(TCP_SYN), tcp(TCP_FIN | TCP_ACK), tcp(TCP_ACK)],
            key,
            lifetime: ticks(CT_TIMEOUT_TCP_CLOSE_S),
            closing: 1,
            seen_ack: 1,
        },
        CtRow {
            name: "rst_closes",
            frames: vec![tcp(TCP_SYN), tcp(TCP_ACK), tcp(TCP_RST)],
            key,
            lifetime: ticks(CT_TIMEOUT_TCP_CLOSE_S),
            closing: 1,
            seen_ack: 1,
        },
        CtRow {
            name: "udp_gets_the_non_tcp_lifetime",
            frames: vec![FrameSpec::udp(client, (VIP_UDP, 53)).build()],
            key: Lb4Tuple::new(client, (VIP_UDP, 53), PROTO_UDP),
            lifetime: ticks(CT_TIMEOUT_NONTCP_S),
            closing: 0,
            seen_ack: 0,
        },
    ]
}

/// The datapath's conntrack tick now.
fn tick() -> u32 {
    Clock::get().unwrap().ct_tick().unwrap()
}

/// Seconds in this kernel's conntrack ticks.
fn ticks(secs: u64) -> u32 {
    Clock::get().unwrap().ct_ticks(secs)
}

// Cilium's defaults, in this kernel's ticks (rounded up, never short), as set_config writes them
// whatever the caller passed; the FIB memo lasts 100 ms.
#[test]
fn lifetimes_are_ciliums_defaults() {
    if !can_load_bpf() {
        return;
    }
    let clock = Clock::get().unwrap();
    let tick_s = f64::from(1u32 << clock.tick_shift()) / f64::from(clock.hz());
    assert!((0.5..=1.0).contains(&tick_s), "tick {tick_s} s");
    let pin = PinDir::new("lbct", "config");
    let dp = seeded(&pin.0, &world());
    let cfg = dp.config().unwrap();
    assert_eq!(cfg.ct_tick_shift, clock.tick_shift());
    for (i, secs) in [60.0, 21600.0, 10.0, 60.0].into_iter().enumerate() {
        let lasts = f64::from(cfg.ct_timeout[i]) * tick_s;
        assert!(
            (secs..secs + tick_s).contains(&lasts),
            "lifetime {i}: {} ticks = {lasts} s, expected {secs} s",
            cfg.ct_timeout[i]
        );
    }
    let memo_ms = f64::from(cfg.fib_memo_jiffies) * 1000.0 / f64::from(clock.hz());
    assert!((100.0..110.0).contains(&memo_ms), "FIB memo {memo_ms} ms");
}

// Each row on XDP and TC: the entry's lifetime (expiry minus the clock when the last frame ran,
// within the tick the run straddled) and its TCP state.
#[test]
fn lifetimes_follow_the_flow() {
    if !can_load_bpf() {
        return;
    }
    let failures = in_test_net(|net| {
        let mut failures = Vec::new();
        for row in rows() {
            for hook in [Hook::Xdp, Hook::Tc] {
                let pin = PinDir::new("lbct", row.name);
                let dp = seeded(&pin.0, &world());
                let fd = prog(&dp, hook);
                let mut t0 = 0;
                for f in &row.frames {
                    t0 = tick();
                    let (v, _) = run_frame(fd, hook, net.lb0, f).unwrap();
                    if v != Verdict::Tx {
                        failures.push(format!("{} [{hook:?}]: verdict {v:?}", row.name));
                    }
                }
                let t1 = tick();
                let cts = dp.ct_entries().unwrap();
                let Some(e) = cts.get(&row.key) else {
                    failures.push(format!("{} [{hook:?}]: no conntrack entry", row.name));
                    continue;
                };
                if e.expires < t0 + row.lifetime || e.expires > t1 + row.lifetime {
                    failures.push(format!(
                        "{} [{hook:?}]: expires {} not in [{}, {}] (lifetime {})",
                        row.name,
                        e.expires,
                        t0 + row.lifetime,
                        t1 + row.lifetime,
                        row.lifetime
                    ));
                }
                if (e.closing, e.seen_ack) != (row.closing, row.seen_ack) {
                    failures.push(format!(
                        "{} [{hook:?}]: closing/seen_ack {}/{} expected {}/{}",
                        row.name, e.closing, e.seen_ack, row.closing, row.seen_ack
                    ));
                }
            }
        }
        failures
    })
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// An entry past its lifetime is replaced by the next packet of its tuple: counted as expired, a
// fresh lifetime, and its SNAT port released first (so the flow gets the same first-choice port
// back instead of colliding with its own stale NAT entry). An entry not yet expired is a hit.
#[test]
fn expired_entries_start_over_and_release_their_port() {
    if !can_load_bpf() {
        return;
    }
    let failures = in_test_net(|net| {
        let mut failures = Vec::new();
        let client = (CLIENT, CLIENT_PORT);
        let key = Lb4Tuple::new(client, (VIP_SNAT, 80), PROTO_TCP);
        let syn = FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_SYN).build();
        let ack = FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_ACK).build();
        for hook in [Hook::Xdp, Hook::Tc] {
            let pin = PinDir::new("lbct", "expire");
            let mut dp = seeded(&pin.0, &world());
            let fd = prog(&dp, hook);
            run_frame(fd, hook, net.lb0, &syn).unwrap();
            let first = dp.ct_entries().unwrap()[&key];
            let nat_before = dp.nat_entries().unwrap();
            // Not expired yet (one tick left): a plain hit.
            let mut aged = first;
            aged.expires = tick() + 1;
            dp.ct_insert(&key, &aged).unwrap();
            let c0 = dp.counters().unwrap();
            run_frame(fd, hook, net.lb0, &ack).unwrap();
            let c1 = dp.counters().unwrap();
            let grew = |c: LbCounter, a: &[u64], b: &[u64]| b[c as usize] - a[c as usize];
            if grew(LbCounter::CtExpired, &c0, &c1) != 0 || grew(LbCounter::CtHit, &c0, &c1) != 1 {
                failures.push(format!("[{hook:?}] live entry: not a plain hit"));
            }
            // Expired (two ticks ago).
            aged.expires = tick().wrapping_sub(2);
            dp.ct_insert(&key, &aged).unwrap();
            let t0 = tick();
            let (v, out) = run_frame(fd, hook, net.lb0, &ack).unwrap();
            let c2 = dp.counters().unwrap();
            if v != Verdict::Tx {
                failures.push(format!("[{hook:?}] expired flow: verdict {v:?}"));
            }
            if grew(LbCounter::CtExpired, &c1, &c2) != 1 {
                failures.push(format!("[{hook:?}] expiry not counted"));
            }
            if grew(LbCounter::SnatPortRetry, &c1, &c2) != 0 {
                failures.push(format!(
                    "[{hook:?}] the stale NAT entry was not released (port retry)"
                ));
            }
            let e = dp.ct_entries().unwrap()[&key];
            if e.expires < t0 + ticks(CT_TIMEOUT_TCP_S) || e.seen_ack != 1 {
                failures.push(format!(
                    "[{hook:?}] replaced entry: expires {} seen_ack {} (now {t0})",
                    e.expires, e.seen_ack
                ));
            }
            if e.nat_port != first.nat_port {
                failures.push(format!(
                    "[{hook:?}] SNAT port {} expected the released {} again",
                    u16::from_be(e.nat_port),
                    u16::from_be(first.nat_port)
                ));
            }
            if dp.nat_entries().unwrap() != nat_before {
                failures.push(format!("[{hook:?}] NAT entries differ from one flow's"));
            }
            let p = parse(&out).unwrap();
            if (p.src, p.sport) != (NODE_IP, u16::from_be(first.nat_port)) {
                failures.push(format!(
                    "[{hook:?}] translated source {}:{}",
                    p.src, p.sport
                ));
            }
        }
        failures
    })
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// A flow whose backend was removed (its array slot zeroed) is not sent to it any more: counted
// stale and chosen again; with no backend left it meets the no-backend answer.
#[test]
fn removed_backend_is_not_used() {
    if !can_load_bpf() {
        return;
    }
    let failures = in_test_net(|net| {
        let mut failures = Vec::new();
        let client = (CLIENT, CLIENT_PORT);
        let syn = FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_SYN).build();
        let ack = FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_ACK).build();
        for hook in [Hook::Xdp, Hook::Tc] {
            let pin = PinDir::new("lbct", "stale");
            let mut dp = seeded(&pin.0, &world());
            let fd = prog(&dp, hook);
            run_frame(fd, hook, net.lb0, &syn).unwrap();
            // Every service sharing the backend lets it go (it is one backend id).
            let mut w = world();
            for s in w.iter_mut() {
                s.backends.retain(|b| b.addr != BE_SNAT);
            }
            let cur = dp.read_entries().unwrap();
            let ids: BTreeMap<BackendKey, u32> =
                cilia_datapath::lb_intent::pinned_backend_ids(&cur);
            let ids = assign_backend_ids(&w, &ids);
            let want = desired_entries(&w, &ids, MAGLEV).unwrap();
            dp.apply(&lb_diff(&want, &cur), MAGLEV).unwrap();
            let c0 = dp.counters().unwrap();
            let (v, out) = run_frame(fd, hook, net.lb0, &ack).unwrap();
            let c1 = dp.counters().unwrap();
            let grew = |c: LbCounter| c1[c as usize] - c0[c as usize];
            if grew(LbCounter::CtStale) != 1 {
                failures.push(format!("[{hook:?}] stale backend not noticed"));
            }
            if grew(LbCounter::FwdSnat) != 0 {
                failures.push(format!(
                    "[{hook:?}] sent to a removed backend: {v:?} {}",
                    hex(&out)
                ));
            }
        }
        failures
    })
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the agent writes for `services` (see `cilia-agent`'s `LbAgent::apply`): removed backends
/// kept (draining) per `retention`, scanned conntrack references `refs` (None: no scan).
fn agent_apply(
    dp: &mut LbDatapath,
    services: &[ServiceSpec],
    retention: &mut BackendRetention,
    now_ns: u64,
    refs: Option<&BTreeSet<u32>>,
) {
    let cur = dp.read_entries().unwrap();
    let orphans = retention.note_orphans(&cur.backends, &wanted_backends(services), now_ns);
    let kept = retention.kept(&orphans, now_ns, refs);
    let ids = assign_backend_ids_retaining(
        services,
        &cilia_datapath::lb_intent::pinned_backend_ids(&cur),
        &kept.keys().copied().collect(),
    );
    let mut want = desired_entries(services, &ids, MAGLEV).unwrap();
    for (id, b) in kept {
        want.backends.entry(id).or_insert(b);
    }
    dp.apply(&lb_diff(&want, &cur), MAGLEV).unwrap();
}

/// How a backend leaves the services in a [`DrainRow`].
#[derive(Debug, Clone, Copy)]
enum Leaves {
    /// Gone from the EndpointSlice (pod deleted, scaled down): no service names it.
    Removed,
    /// Still listed, terminating, while active backends are left: draining in every service.
    Terminating,
}

struct DrainRow {
    name: &'static str,
    vip: Ipv4Addr,
    leaves: Leaves,
}

fn drain_rows() -> Vec<DrainRow> {
    let mut v = Vec::new();
    for (alg, vip) in [
        ("random", VIP_SNAT),
        ("maglev", VIP_MAGLEV),
        ("affinity", VIP_AFFINITY),
    ] {
        for leaves in [Leaves::Removed, Leaves::Terminating] {
            v.push(DrainRow {
                name: match (alg, leaves) {
                    ("random", Leaves::Removed) => "random_removed",
                    ("random", Leaves::Terminating) => "random_terminating",
                    ("maglev", Leaves::Removed) => "maglev_removed",
                    ("maglev", Leaves::Terminating) => "maglev_terminating",
                    ("affinity", Leaves::Removed) => "affinity_removed",
                    _ => "affinity_terminating",
                },
                vip,
                leaves,
            });
        }
    }
    v
}

/// The test world with five backends behind the SNAT service too (a choice to take away).
fn drain_world() -> Vec<ServiceSpec> {
    let mut w = world();
    for s in w.iter_mut().filter(|s| s.frontend.addr == VIP_SNAT) {
        s.backends = maglev_backends();
    }
    w
}

// Issue #8: a backend leaving its Service (removed from the EndpointSlice, or terminating while
// others serve) keeps its established flows — the conntrack hit still reaches it — while new flows,
// also from a client whose session affinity names it, never pick it. Once the agent releases it
// (no live conntrack entry named it), the old flow's next packet is balanced again (stale).
#[test]
fn established_flows_keep_a_leaving_backend() {
    if !can_load_bpf() {
        return;
    }
    const S: u64 = 1_000_000_000;
    let failures = in_test_net(|net| {
        let mut failures = Vec::new();
        for row in drain_rows() {
            for hook in [Hook::Xdp, Hook::Tc] {
                let what = format!("{} [{hook:?}]", row.name);
                let pin = PinDir::new("lbdrain", row.name);
                let mut dp = seeded(&pin.0, &drain_world());
                let fd = prog(&dp, hook);
                let mut retention = BackendRetention::default();
                let client = (CLIENT, CLIENT_PORT);
                let syn = FrameSpec::tcp(client, (row.vip, 80), TCP_SYN).build();
                let ack = FrameSpec::tcp(client, (row.vip, 80), TCP_ACK).build();
                let (v, out) = run_frame(fd, hook, net.lb0, &syn).unwrap();
                let Ok(first) = parse(&out) else {
                    failures.push(format!("{what}: SYN not translated: {v:?}"));
                    continue;
                };
                let chosen = first.dst;
                // The backend leaves every service naming it.
                let mut w = drain_world();
                for s in w.iter_mut() {
                    let Some(i) = s.backends.iter().position(|b| b.addr == chosen) else {
                        continue;
                    };
                    let b = s.backends.remove(i);
                    if let Leaves::Terminating = row.leaves {
                        s.draining.push(b);
                    }
                }
                agent_apply(&mut dp, &w, &mut retention, 10 * S, None);

                // The established flow: a conntrack hit, still to the same backend.
                let c0 = dp.counters().unwrap();
                let (v, out) = run_frame(fd, hook, net.lb0, &ack).unwrap();
                let c1 = dp.counters().unwrap();
                let grew = |c: LbCounter, a: &[u64], b: &[u64]| b[c as usize] - a[c as usize];
                match parse(&out) {
                    Ok(p) if v == Verdict::Tx && p.dst == chosen => {}
                    r => failures.push(format!(
                        "{what}: established flow moved off {chosen}: {v:?} {r:?}"
                    )),
                }
                if grew(LbCounter::CtHit, &c0, &c1) != 1 || grew(LbCounter::CtStale, &c0, &c1) != 0
                {
                    failures.push(format!("{what}: not a plain conntrack hit"));
                }

                // New flows, from the same client (whose affinity, if any, names the backend)
                // and from others: never to the leaving backend.
                for i in 0..48u16 {
                    let src = if i % 2 == 0 {
                        (CLIENT, 20000 + i)
                    } else {
                        (Ipv4Addr::new(198, 51, 100, i as u8), 20000 + i)
                    };
                    let c0 = dp.counters().unwrap();
                    let f = FrameSpec::tcp(src, (row.vip, 80), TCP_SYN).build();
                    let (v, out) = run_frame(fd, hook, net.lb0, &f).unwrap();
                    let c1 = dp.counters().unwrap();
                    match parse(&out) {
                        Ok(p) if v == Verdict::Tx && p.dst != chosen => {}
                        r => failures.push(format!(
                            "{what}: new flow {src:?} went to the leaving {chosen}: {v:?} {r:?}"
                        )),
                    }
                    if i == 0 && grew(LbCounter::AffinityHit, &c0, &c1) != 0 {
                        failures.push(format!(
                            "{what}: affinity to the leaving backend was followed"
                        ));
                    }
                }

                // Released (past the grace, a scan found no live flow naming it — the test says
                // so): the old flow's next packet finds no backend and is balanced again.
                agent_apply(&mut dp, &w, &mut retention, 20 * S, Some(&BTreeSet::new()));
                if dp
                    .read_entries()
                    .unwrap()
                    .backends
                    .values()
                    .any(|b| ip_of(b.address) == chosen)
                    != matches!(row.leaves, Leaves::Terminating)
                {
                    failures.push(format!(
                        "{what}: after release the entry of {chosen} should exist only while \
                         it is listed terminating"
                    ));
                }
                if let Leaves::Removed = row.leaves {
                    let c0 = dp.counters().unwrap();
                    let (v, out) = run_frame(fd, hook, net.lb0, &ack).unwrap();
                    let c1 = dp.counters().unwrap();
                    if grew(LbCounter::CtStale, &c0, &c1) != 1 {
                        failures.push(format!("{what}: released backend not noticed stale"));
                    }
                    if parse(&out).is_ok_and(|p| p.dst == chosen) {
                        failures.push(format!("{what}: sent to a released backend: {v:?}"));
                    }
                }
            }
        }
        failures
    })
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// The agent's release test reads what the datapath wrote: a scan of the conntrack map names the
// backends of live entries only (an aged entry does not hold its backend).
#[test]
fn conntrack_scan_names_live_flows_backends() {
    if !can_load_bpf() {
        return;
    }
    let failures = in_test_net(|net| {
        let mut failures = Vec::new();
        let pin = PinDir::new("lbdrain", "scan");
        let mut dp = seeded(&pin.0, &drain_world());
        let fd = prog(&dp, Hook::Tc);
        let syn = FrameSpec::tcp((CLIENT, CLIENT_PORT), (VIP_SNAT, 80), TCP_SYN).build();
        run_frame(fd, Hook::Tc, net.lb0, &syn).unwrap();
        let key = Lb4Tuple::new((CLIENT, CLIENT_PORT), (VIP_SNAT, 80), PROTO_TCP);
        let e = dp.ct_entries().unwrap()[&key];
        let live = dp.ct_live_backends(tick()).unwrap();
        if !live.contains(&e.backend_id) {
            failures.push(format!(
                "live flow's backend {} not named: {live:?}",
                e.backend_id
            ));
        }
        let mut aged = e;
        aged.expires = tick().wrapping_sub(2);
        dp.ct_insert(&key, &aged).unwrap();
        let live = dp.ct_live_backends(tick()).unwrap();
        if live.contains(&e.backend_id) {
            failures.push(format!("expired flow still holds backend {}", e.backend_id));
        }
        failures
    })
    .unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
