//! The load balancer fed real frames through BPF_PROG_TEST_RUN, XDP and TC side by side, with maps
//! seeded the way the agent will (builder → diff → pinned maps), inside a private network namespace
//! so the FIB lookups see a node's routes and neighbours.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use cilia_datapath::l2::{L2Datapath, L2ResponderKey, monotonic_now_ns};
use cilia_datapath::lb::{
    Backend, LbAlgorithm, ServiceSpec, assign_backend_ids, desired_entries, flow_hash,
    format_lb_list, lb_diff, slot_for, snat_port_candidate,
};
use cilia_datapath::lb::{map_diff, wanted_standby_vips};
use cilia_datapath::lb_bpf::{
    LbDatapath, LbMapSizes, TC_DSR_EGRESS_PROG, TC_DSR_INGRESS_PROG, TC_LB_INGRESS_PROG,
    TC_LB_POD_INGRESS_PROG, XDP_LB_PROG, read_lb_entries,
};
use cilia_datapath::lb_fixtures::*;
use cilia_datapath::lb_maps::{Lb4NatEntry, Lb4Tuple, LbConfig, LbCounter, be16, be32, ip_of};

mod common;
use common::{PinDir, can_load_bpf};

/// Loads both objects under `pin`, writes the node config and `services` through the diff.
fn seeded(pin: &Path, services: &[ServiceSpec]) -> LbDatapath {
    let mut dp = LbDatapath::load(pin, &LbMapSizes::small()).unwrap();
    dp.set_config(&node_config()).unwrap();
    seed_node_dev(&mut dp).unwrap();
    apply(&mut dp, services);
    dp
}

fn apply(dp: &mut LbDatapath, services: &[ServiceSpec]) {
    let cur = dp.read_entries().unwrap();
    let current_ids = cur
        .backends
        .iter()
        .map(|(id, b)| {
            (
                cilia_datapath::lb::BackendKey {
                    addr: ip_of(b.address),
                    port: u16::from_be(b.port),
                    proto: cilia_datapath::lb::Proto::from_number(b.proto).unwrap(),
                },
                *id,
            )
        })
        .collect();
    let ids = assign_backend_ids(services, &current_ids);
    let want = desired_entries(services, &ids, MAGLEV).unwrap();
    dp.apply(&lb_diff(&want, &cur), MAGLEV).unwrap();
    assert_eq!(
        dp.read_entries().unwrap(),
        want,
        "maps hold what was written"
    );
}

fn prog(dp: &LbDatapath, hook: Hook) -> i32 {
    dp.prog_fd(match hook {
        Hook::Xdp => XDP_LB_PROG,
        Hook::Tc => TC_LB_INGRESS_PROG,
    })
    .unwrap()
}

// Every table row, through XDP and through TC on fresh maps: the verdict, every rewritten header
// field and both checksums (recomputed from scratch) are as expected, the row's counters grew, and
// both hooks produce the same verdict and the same bytes.
#[test]
fn table_rows_on_xdp_and_tc() {
    if !can_load_bpf() {
        return;
    }
    let failures = in_test_net(|net| {
        let mut failures = Vec::new();
        for case in lb_cases() {
            let mut outs = Vec::new();
            for hook in [Hook::Xdp, Hook::Tc] {
                let pin = PinDir::new("lb", case.name);
                let dp = seeded(&pin.0, &world());
                let fd = prog(&dp, hook);
                for f in &case.before {
                    run_frame(fd, hook, net.lb0, f).unwrap();
                }
                let before = dp.counters().unwrap();
                let (verdict, out) = run_frame(fd, hook, net.lb0, &case.frame).unwrap();
                let after = dp.counters().unwrap();
                let verdict = verdict.refine(hook, &before, &after);
                let expect = case.for_hook(hook);
                for e in check(&expect, verdict, &out) {
                    failures.push(format!("{} [{hook:?}] {e}", case.name));
                }
                for c in &expect.expect.counters {
                    if after[*c as usize] <= before[*c as usize] {
                        failures.push(format!(
                            "{} [{hook:?}] counter {c:?}: got {} expected more than {}",
                            case.name, after[*c as usize], before[*c as usize]
                        ));
                    }
                }
                outs.push((verdict, out));
            }
            // Rows whose packet leaves by another device diverge on purpose (XDP passes the
            // frame untouched, TC translates and redirects it); each side was checked above.
            if !case.expect.xdp_defers && outs[0] != outs[1] {
                failures.push(format!(
                    "{}: XDP and TC differ: XDP {:?} {} / TC {:?} {}",
                    case.name,
                    outs[0].0,
                    hex(&outs[0].1),
                    outs[1].0,
                    hex(&outs[1].1)
                ));
            }
        }
        failures
    })
    .unwrap();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// A new flow takes the hashed SNAT port candidates in order, skipping those another flow holds
// (each skip counted); with every candidate taken the packet is dropped and counted.
#[test]
fn snat_port_allocation_survives_collisions() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        for hook in [Hook::Xdp, Hook::Tc] {
            let pin = PinDir::new("lb", "snat-port");
            let mut dp = seeded(&pin.0, &world());
            let client = (CLIENT, CLIENT_PORT);
            let h = flow_hash(&Lb4Tuple::new(client, (VIP_SNAT, 80), PROTO_TCP), HASH_SEED);
            let cand: Vec<u16> = (0..16)
                .map(|i| snat_port_candidate(h, i, SNAT_PORT_MIN, SNAT_PORT_MAX))
                .collect();
            // Another flow holds the first two candidates.
            for p in &cand[..2] {
                let reply = Lb4Tuple::new((BE_SNAT, BE_PORT), (NODE_IP, *p), PROTO_TCP);
                dp.nat_insert(
                    &reply,
                    &Lb4NatEntry {
                        client_addr: be32(Ipv4Addr::new(198, 51, 100, 1)),
                        client_port: be16(1),
                        pad: 0,
                        rev_nat_index: 1,
                    },
                )
                .unwrap();
            }
            let want = *cand.iter().find(|p| !cand[..2].contains(p)).unwrap();
            let tries = cand.iter().position(|p| *p == want).unwrap() as u64;
            let frame = FrameSpec::tcp(client, (VIP_SNAT, 80), TCP_SYN).build();
            let (v, out) = run_frame(prog(&dp, hook), hook, net.lb0, &frame).unwrap();
            let p = parse(&out).unwrap();
            assert_eq!(v, Verdict::Tx, "{hook:?} verdict");
            assert_eq!(
                (p.src, p.sport),
                (NODE_IP, want),
                "{hook:?}: port got/expected"
            );
            assert_eq!(
                dp.counter(LbCounter::SnatPortRetry).unwrap(),
                tries,
                "{hook:?} retries"
            );
            verify_checksums(&out, &[]).unwrap();

            // One port in the range, already taken: nothing left for a new flow.
            let mut cfg = node_config();
            cfg.snat_port_min = 40000;
            cfg.snat_port_max = 40000;
            dp.set_config(&cfg).unwrap();
            let other = (CLIENT, CLIENT_PORT + 1);
            dp.nat_insert(
                &Lb4Tuple::new((BE_SNAT, BE_PORT), (NODE_IP, 40000), PROTO_TCP),
                &Lb4NatEntry::default(),
            )
            .unwrap();
            let frame = FrameSpec::tcp(other, (VIP_SNAT, 80), TCP_SYN).build();
            let (v, out) = run_frame(prog(&dp, hook), hook, net.lb0, &frame).unwrap();
            assert_eq!(
                v,
                Verdict::Drop,
                "{hook:?}: exhausted range got {v:?} expected Drop"
            );
            assert_eq!(out, frame);
            assert_eq!(dp.counter(LbCounter::SnatPortExhausted).unwrap(), 1);
        }
    })
    .unwrap();
}

fn backend(addr: Ipv4Addr) -> Backend {
    Backend {
        addr,
        port: 80,
        local: false,
        host_network: false,
    }
}

fn with_backends(id: u32, backends: Vec<Backend>, alg: LbAlgorithm) -> Vec<ServiceSpec> {
    world()
        .into_iter()
        .map(|mut s| {
            if s.id == id {
                s.backends = backends.clone();
                s.algorithm = alg;
            }
            s
        })
        .collect()
}

fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    v.sort();
    v
}

// An established flow keeps its backend when the service's backend set changes (its slot would
// now hash elsewhere); only after its conntrack entry is gone does it follow the new set.
#[test]
fn conntrack_keeps_the_backend_of_an_established_flow() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        let a = Ipv4Addr::new(10, 244, 1, 30);
        let more: Vec<Ipv4Addr> = (31..36).map(|i| Ipv4Addr::new(10, 244, 1, i)).collect();
        let old_set = vec![a, Ipv4Addr::new(10, 244, 1, 40)];
        let mut new_set = old_set.clone();
        new_set.extend(&more);
        let new_set = sorted(new_set);
        let old_set = sorted(old_set);
        // A client port whose flow goes to `a` now and to another backend under the new set.
        let pick = |set: &[Ipv4Addr], port: u16| {
            let t = Lb4Tuple::new((CLIENT, port), (VIP_SNAT, 80), PROTO_TCP);
            set[usize::from(slot_for(flow_hash(&t, HASH_SEED), set.len() as u16)) - 1]
        };
        let port = (1024..u16::MAX)
            .find(|p| pick(&old_set, *p) == a && pick(&new_set, *p) != a)
            .unwrap();
        for hook in [Hook::Xdp, Hook::Tc] {
            let pin = PinDir::new("lb", "ct");
            let old: Vec<Backend> = old_set.iter().map(|x| backend(*x)).collect();
            let mut dp = seeded(&pin.0, &with_backends(1, old, LbAlgorithm::Random));
            let syn = FrameSpec::tcp((CLIENT, port), (VIP_SNAT, 80), TCP_SYN).build();
            let ack = FrameSpec::tcp((CLIENT, port), (VIP_SNAT, 80), TCP_ACK).build();
            let fd = prog(&dp, hook);
            let (_, out) = run_frame(fd, hook, net.lb0, &syn).unwrap();
            assert_eq!(parse(&out).unwrap().dst, a, "{hook:?}: first packet");

            let new: Vec<Backend> = new_set.iter().map(|x| backend(*x)).collect();
            apply(&mut dp, &with_backends(1, new, LbAlgorithm::Random));
            let (v, out) = run_frame(fd, hook, net.lb0, &ack).unwrap();
            assert_eq!(v, Verdict::Tx);
            assert_eq!(
                parse(&out).unwrap().dst,
                a,
                "{hook:?}: established flow after the set changed"
            );
            assert!(dp.counter(LbCounter::CtHit).unwrap() >= 1);

            dp.flush_flows().unwrap();
            let (_, out) = run_frame(fd, hook, net.lb0, &syn).unwrap();
            let want = pick(&new_set, port);
            assert_eq!(
                parse(&out).unwrap().dst,
                want,
                "{hook:?}: without conntrack the flow follows the new set"
            );
        }
    })
    .unwrap();
}

// Maglev in the datapath: every flow lands where the Rust table says; after one backend is removed
// (and conntrack forgotten), exactly the flows of that backend move, all others stay.
#[test]
fn maglev_removal_moves_only_the_removed_backends_flows() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        let all: Vec<Backend> = maglev_backends();
        let gone = all[2].addr;
        let rest: Vec<Backend> = all.iter().filter(|b| b.addr != gone).copied().collect();
        for hook in [Hook::Xdp, Hook::Tc] {
            let pin = PinDir::new("lb", "maglev");
            let mut dp = seeded(&pin.0, &with_backends(10, all.clone(), LbAlgorithm::Maglev));
            let fd = prog(&dp, hook);
            let entries = dp.read_entries().unwrap();
            let table = &entries.maglev[&10];
            let flows: Vec<u16> = (20000..20300).collect();
            let route = |dp: &mut LbDatapath| -> Vec<Ipv4Addr> {
                dp.flush_flows().unwrap();
                flows
                    .iter()
                    .map(|p| {
                        let f = FrameSpec::tcp((CLIENT, *p), (VIP_MAGLEV, 80), TCP_SYN).build();
                        let (v, out) = run_frame(fd, hook, net.lb0, &f).unwrap();
                        assert_eq!(v, Verdict::Tx);
                        parse(&out).unwrap().dst
                    })
                    .collect()
            };
            let before = route(&mut dp);
            for (p, got) in flows.iter().zip(&before) {
                let t = Lb4Tuple::new((CLIENT, *p), (VIP_MAGLEV, 80), PROTO_TCP);
                let id = table[(flow_hash(&t, HASH_SEED) % MAGLEV.table_size) as usize];
                let want = ip_of(entries.backends[&id].address);
                assert_eq!(
                    *got, want,
                    "{hook:?}: flow from port {p}: got {got} expected {want}"
                );
            }
            assert!(
                before.contains(&gone),
                "some flows use the backend to remove"
            );
            apply(
                &mut dp,
                &with_backends(10, rest.clone(), LbAlgorithm::Maglev),
            );
            let after = route(&mut dp);
            for ((p, b), a) in flows.iter().zip(&before).zip(&after) {
                if *b == gone {
                    assert_ne!(a, b, "{hook:?}: port {p} still on the removed backend");
                } else {
                    assert_eq!(a, b, "{hook:?}: port {p} moved from {b} to {a}");
                }
            }
        }
    })
    .unwrap();
}

// ClientIP affinity: new flows of one client follow its first flow's backend.
#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        for hook in [Hook::Xdp, Hook::Tc] {
            let pin = PinDir::new("lb", "affinity");
            let dp = seeded(&pin.0, &world());
            let fd = prog(&dp, hook);
            let dsts: Vec<Ipv4Addr> = (0..20)
                .map(|i| {
                    let f =
                        FrameSpec::tcp((CLIENT, 30000 + i), (VIP_AFFINITY, 80), TCP_SYN).build();
                    parse(&run_frame(fd, hook, net.lb0, &f).unwrap().1)
                        .unwrap()
                        .dst
                })
                .collect();
            assert!(dsts.iter().all(|d| *d == dsts[0]), "{hook:?}: {dsts:?}");
            assert_eq!(dp.counter(LbCounter::AffinityHit).unwrap(), 19);
            // Without affinity the same flows spread (the maglev service has the same backends).
            let spread: Vec<Ipv4Addr> = (0..20)
                .map(|i| {
                    let f = FrameSpec::tcp((CLIENT, 30000 + i), (VIP_MAGLEV, 80), TCP_SYN).build();
                    parse(&run_frame(fd, hook, net.lb0, &f).unwrap().1)
                        .unwrap()
                        .dst
                })
                .collect();
            assert!(spread.iter().any(|d| *d != spread[0]));
        }
    })
    .unwrap();
}

// A frame for a VIP but another host's MAC (a switch flooding after a failover) is served only
// while this node announces the VIP on the device or stands by for it, within its L2 lease (the ARP
// responder's own table and lease), and then exactly as if it were addressed here; otherwise it
// passes untouched: one node serves it, never every node on the segment.
#[test]
fn flooded_frames_are_served_by_the_announcer_or_the_standby_only() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        // XDP knows the device's MAC from cilia_lb_dev, or (the agent's primary device) from the
        // config it reads anyway.
        for (hook, via_config) in [(Hook::Xdp, false), (Hook::Xdp, true), (Hook::Tc, false)] {
            let pin = PinDir::new("lb", "flooded");
            let mut dp = seeded(&pin.0, &world());
            if via_config {
                let cur = dp.dev_macs().unwrap();
                dp.apply_dev_macs(&map_diff(&Default::default(), &cur))
                    .unwrap();
                let cfg = dp.config().unwrap();
                dp.set_config(&LbConfig {
                    node_ifindex: net.lb0,
                    ..cfg
                })
                .unwrap();
            }
            let mut l2 = L2Datapath::load(&pin.0).unwrap();
            let fd = prog(&dp, hook);
            // The failed announcer's MAC: no device of the test namespace has it.
            let flooded = |vip| {
                FrameSpec {
                    dst_mac: [0x02, 0, 0, 0, 0, 0x0f],
                    ..FrameSpec::tcp((CLIENT, CLIENT_PORT), (vip, 80), TCP_SYN)
                }
                .build()
            };
            let passes = |vip, what: &str| {
                let f = flooded(vip);
                let (v, out) = run_frame(fd, hook, net.lb0, &f).unwrap();
                assert_eq!(v, Verdict::Pass, "{hook:?}: {what}");
                assert_eq!(out, f, "{hook:?}: {what}: untouched");
            };
            let served = |vip, be, what: &str| {
                let (v, out) = run_frame(fd, hook, net.lb0, &flooded(vip)).unwrap();
                assert_eq!(v, Verdict::Tx, "{hook:?}: {what}");
                let p = parse(&out).unwrap();
                assert_eq!(
                    (p.dst, p.dst_mac, p.src_mac),
                    (be, PEER_NODE_MAC, NODE_MAC),
                    "{hook:?}: {what}: translated as a frame addressed here"
                );
            };
            passes(VIP_SNAT, "neither announced nor standby");
            l2.apply(&BTreeMap::from([(
                L2ResponderKey::new(VIP_SNAT, net.lb0),
                NODE_MAC,
            )]))
            .unwrap();
            dp.apply_standby(&map_diff(
                &wanted_standby_vips(&[VIP_DSR]),
                &Default::default(),
            ))
            .unwrap();
            passes(VIP_SNAT, "announced, no lease yet");
            passes(VIP_DSR, "standby, no lease yet");
            l2.set_lease(monotonic_now_ns() - 1).unwrap();
            passes(VIP_SNAT, "announced, lease run out");
            passes(VIP_DSR, "standby, lease run out");
            l2.set_lease(monotonic_now_ns() + 60_000_000_000).unwrap();
            passes(VIP_MAGLEV, "another VIP");
            served(VIP_SNAT, BE_SNAT, "announced, within the lease");
            served(VIP_DSR, BE_DSR, "standby, within the lease");
            assert_eq!(
                (
                    dp.counter(LbCounter::OtherHost).unwrap(),
                    dp.counter(LbCounter::OtherHostServed).unwrap()
                ),
                (6, 2),
                "{hook:?}"
            );
            // Gone from the standby set: passed again.
            let cur = dp.standby_vips().unwrap();
            dp.apply_standby(&map_diff(&Default::default(), &cur))
                .unwrap();
            passes(VIP_DSR, "no longer standby");
        }
    })
    .unwrap();
}

// DSR end to end across two nodes: the backend's node reads the option on ingress, and the
// backend's reply leaves its node with VIP:port as source (checksums valid). A node-local backend's
// reply is rewritten by the same egress hook.
#[test]
fn dsr_backend_side_replies_as_the_vip() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        let lb_pin = PinDir::new("lb", "dsr-lb");
        let lb = seeded(&lb_pin.0, &world());
        let client = (CLIENT, CLIENT_PORT);
        let syn = FrameSpec::tcp(client, (VIP_DSR, 80), TCP_SYN).build();
        let (v, to_backend) = run_frame(prog(&lb, Hook::Xdp), Hook::Xdp, net.lb0, &syn).unwrap();
        assert_eq!(v, Verdict::Tx);

        let be_pin = PinDir::new("lb", "dsr-be");
        let be = LbDatapath::load(&be_pin.0, &LbMapSizes::small()).unwrap();
        let ing = be.prog_fd(TC_DSR_INGRESS_PROG).unwrap();
        let egr = be.prog_fd(TC_DSR_EGRESS_PROG).unwrap();
        let (v, out) = run_frame(ing, Hook::Tc, net.lb0, &to_backend).unwrap();
        assert_eq!(v, Verdict::Pass, "ingress only records");
        assert_eq!(out, to_backend, "ingress leaves the packet as it is");
        let dsr = be.dsr_entries().unwrap();
        let key = Lb4Tuple::new((BE_DSR, BE_PORT), client, PROTO_TCP);
        let e = dsr.get(&key).expect("reply translation recorded");
        assert_eq!((ip_of(e.vip), u16::from_be(e.vport)), (VIP_DSR, 80));

        let reply = FrameSpec::tcp((BE_DSR, BE_PORT), client, TCP_SYN | TCP_ACK).build();
        let (v, out) = run_frame(egr, Hook::Tc, net.lb0, &reply).unwrap();
        assert_eq!(v, Verdict::Pass);
        let p = parse(&out).unwrap();
        assert_eq!((p.src, p.sport), (VIP_DSR, 80), "reply source got/expected");
        assert_eq!((p.dst, p.dport), client);
        verify_checksums(&out, &[]).unwrap();
        assert_eq!(be.counter(LbCounter::DsrReversed).unwrap(), 1);

        // A reply to a flow nobody recorded leaves untouched.
        let stranger = FrameSpec::tcp((BE_DSR, BE_PORT), (CLIENT, 1), TCP_ACK).build();
        assert_eq!(
            run_frame(egr, Hook::Tc, net.lb0, &stranger).unwrap().1,
            stranger
        );

        // Node-local backend: the LB node itself rewrites the pod's reply on egress.
        let syn = FrameSpec::tcp(client, (VIP_LOCAL, 80), TCP_SYN).build();
        run_frame(prog(&lb, Hook::Tc), Hook::Tc, net.lb0, &syn).unwrap();
        let reply = FrameSpec::tcp((BE_LOCAL, 80), client, TCP_SYN | TCP_ACK).build();
        let lb_egr = lb.prog_fd(TC_DSR_EGRESS_PROG).unwrap();
        let out = run_frame(lb_egr, Hook::Tc, net.lb0, &reply).unwrap().1;
        let p = parse(&out).unwrap();
        assert_eq!((p.src, p.sport), (VIP_LOCAL, 80));
        verify_checksums(&out, &[]).unwrap();
    })
    .unwrap();
}

// A second loader (an agent restart) finds every entry in the pinned maps: the diff against the
// same services is empty, so a resync writes nothing; the pins can be listed in Cilium's shape.
#[test]
fn pinned_maps_survive_a_reload_with_zero_churn() {
    if !can_load_bpf() {
        return;
    }
    let pin = PinDir::new("lb", "reload");
    let services = world();
    let first = seeded(&pin.0, &services);
    let written = first.read_entries().unwrap();
    drop(first);
    let again = LbDatapath::load(&pin.0, &LbMapSizes::small()).unwrap();
    let cur = again.read_entries().unwrap();
    assert_eq!(cur, written);
    let ids = assign_backend_ids(
        &services,
        &cur.backends
            .iter()
            .map(|(id, b)| {
                (
                    cilia_datapath::lb::BackendKey {
                        addr: ip_of(b.address),
                        port: u16::from_be(b.port),
                        proto: cilia_datapath::lb::Proto::from_number(b.proto).unwrap(),
                    },
                    *id,
                )
            })
            .collect::<BTreeMap<_, _>>(),
    );
    let want = desired_entries(&services, &ids, MAGLEV).unwrap();
    assert!(lb_diff(&want, &cur).is_empty(), "a resync writes nothing");
    assert_eq!(again.config().unwrap(), node_config().clocked().unwrap());
    let listed = read_lb_entries(&pin.0).unwrap();
    assert_eq!(listed, cur);
    let text = format_lb_list(&listed);
    assert!(text.contains("203.0.113.11:80/TCP (0)"), "{text}");
    assert!(text.contains("10.244.1.6:8080/TCP (2) (1)"), "{text}");
}

// The programs attach to a device through pinned links, and a restarted agent takes the links over.
#[test]
fn attaches_with_pinned_links() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|_net| {
        let pin = PinDir::new("lb", "attach");
        for _restart in 0..2 {
            let mut dp = LbDatapath::load(&pin.0, &LbMapSizes::small()).unwrap();
            dp.attach_xdp("lb0", aya::programs::XdpMode::Skb).unwrap();
            dp.attach_tc(
                "lb0",
                TC_LB_INGRESS_PROG,
                aya::programs::TcAttachType::Ingress,
            )
            .unwrap();
            dp.attach_tc(
                "lb0",
                TC_DSR_EGRESS_PROG,
                aya::programs::TcAttachType::Egress,
            )
            .unwrap();
        }
        let links: Vec<String> = std::fs::read_dir(pin.0.join("links"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(links.len(), 3, "{links:?}");
        let mut dp = LbDatapath::load(&pin.0, &LbMapSizes::small()).unwrap();
        dp.detach("lb0");
        assert_eq!(std::fs::read_dir(pin.0.join("links")).unwrap().count(), 0);
    })
    .unwrap();
}

/// Keeps the calling thread on CPU 0, so per-CPU state is seen by every run.
fn pin_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

// Next hops are memoised per CPU for a short time: back-to-back packets skip the FIB lookup, and a
// neighbour change reaches the packets within the memo's lifetime.
#[test]
fn fib_memo_follows_a_neighbour_change() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        pin_cpu0();
        for hook in [Hook::Xdp, Hook::Tc] {
            let pin = PinDir::new("lb", "fib-memo");
            let dp = seeded(&pin.0, &world());
            let fd = prog(&dp, hook);
            let f = FrameSpec::tcp((CLIENT, CLIENT_PORT), (VIP_SNAT, 80), TCP_ACK).build();
            let (_, out) = run_frame(fd, hook, net.lb0, &f).unwrap();
            assert_eq!(parse(&out).unwrap().dst_mac, PEER_NODE_MAC);
            let (_, out) = run_frame(fd, hook, net.lb0, &f).unwrap();
            assert_eq!(parse(&out).unwrap().dst_mac, PEER_NODE_MAC);
            assert_eq!(
                dp.counter(LbCounter::FibMemoHit).unwrap(),
                1,
                "{hook:?}: second packet"
            );
            let moved = [0x02, 0, 0, 0, 0, 0x33];
            let status = std::process::Command::new("ip")
                .args([
                    "neigh",
                    "replace",
                    &PEER_NODE_IP.to_string(),
                    "lladdr",
                    "02:00:00:00:00:33",
                ])
                .args(["dev", "lb0", "nud", "permanent"])
                .status()
                .unwrap();
            assert!(status.success());
            std::thread::sleep(std::time::Duration::from_millis(250));
            let (v, out) = run_frame(fd, hook, net.lb0, &f).unwrap();
            assert_eq!(v, Verdict::Tx);
            assert_eq!(
                parse(&out).unwrap().dst_mac,
                moved,
                "{hook:?}: after the memo expired"
            );
            let status = std::process::Command::new("ip")
                .args([
                    "neigh",
                    "replace",
                    &PEER_NODE_IP.to_string(),
                    "lladdr",
                    "02:00:00:00:00:03",
                ])
                .args(["dev", "lb0", "nud", "permanent"])
                .status()
                .unwrap();
            assert!(status.success());
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    })
    .unwrap();
}

// A pod's flow to a frontend, translated by the program on the pod's host-side device: DNAT only
// (the backend sees the pod), redirected to the node device towards the remote backend, the reply
// translation recorded. The backend's reply, entering the node device, gets the frontend back as
// its source and is redirected to the pod's device by TC; XDP passes it untouched for TC.
#[test]
fn pod_edge_is_dnat_only_and_its_replies_are_restored() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        let pin = PinDir::new("lb", "pod-edge");
        let dp = seeded(&pin.0, &world());
        let pod = (Ipv4Addr::new(10, 244, 0, 7), 41000);
        let pod_prog = dp.prog_fd(TC_LB_POD_INGRESS_PROG).unwrap();

        let syn = FrameSpec::tcp(pod, (VIP_SNAT, 80), TCP_SYN).build();
        let before = dp.counters().unwrap();
        let (v, out) = run_frame(pod_prog, Hook::Tc, net.pod0, &syn).unwrap();
        let after = dp.counters().unwrap();
        assert_eq!(
            v.refine(Hook::Tc, &before, &after),
            Verdict::Redirect,
            "to the node device"
        );
        let p = parse(&out).unwrap();
        assert_eq!((p.src, p.sport), pod, "the backend sees the pod");
        assert_eq!((p.dst, p.dport), (BE_SNAT, BE_PORT));
        verify_checksums(&out, &[]).unwrap();
        for c in [LbCounter::FwdLocal, LbCounter::XmitRedirect] {
            assert!(after[c as usize] > before[c as usize], "{c:?} counted");
        }
        let key = Lb4Tuple::new((BE_SNAT, BE_PORT), pod, PROTO_TCP);
        let dsr = dp.dsr_entries().unwrap();
        let e = dsr.get(&key).expect("reply translation recorded");
        assert_eq!((ip_of(e.vip), u16::from_be(e.vport)), (VIP_SNAT, 80));

        let reply = FrameSpec::tcp((BE_SNAT, BE_PORT), pod, TCP_SYN | TCP_ACK).build();
        // XDP on the node device: the pod is behind another device, TC's job.
        let before = dp.counters().unwrap();
        let (v, out) = run_frame(prog(&dp, Hook::Xdp), Hook::Xdp, net.lb0, &reply).unwrap();
        let after = dp.counters().unwrap();
        assert_eq!(v, Verdict::Pass);
        assert_eq!(out, reply, "XDP leaves the reply untouched");
        let c = LbCounter::XdpToTc as usize;
        assert!(after[c] > before[c], "xdp_to_tc counted");
        // TC on the node device: restored and redirected to the pod's device.
        let before = dp.counters().unwrap();
        let (v, out) = run_frame(prog(&dp, Hook::Tc), Hook::Tc, net.lb0, &reply).unwrap();
        let after = dp.counters().unwrap();
        assert_eq!(v.refine(Hook::Tc, &before, &after), Verdict::Redirect);
        let p = parse(&out).unwrap();
        assert_eq!((p.src, p.sport), (VIP_SNAT, 80), "reply source");
        assert_eq!((p.dst, p.dport), pod);
        verify_checksums(&out, &[]).unwrap();
        let c = LbCounter::DsrReversed as usize;
        assert!(after[c] > before[c], "dsr_reversed counted");

        // A packet from the backend that is no reply of a recorded flow passes untouched.
        let stranger = FrameSpec::tcp((BE_SNAT, BE_PORT), (pod.0, 1), TCP_ACK).build();
        let (v, out) = run_frame(prog(&dp, Hook::Tc), Hook::Tc, net.lb0, &stranger).unwrap();
        assert_eq!((v, out), (Verdict::Pass, stranger));
    })
    .unwrap();
}

// The next hop's neighbour is not resolved yet (on the ingress device itself): TC translates and
// hands the packet to bpf_redirect_neigh, which resolves it (the stack would drop an SNATed packet
// as a martian: the node's own address as source, arriving from outside); XDP passes it untouched
// for TC.
#[test]
fn unresolved_neighbour_is_redirected_not_passed() {
    if !can_load_bpf() {
        return;
    }
    in_test_net(|net| {
        let status = std::process::Command::new("ip")
            .args(["neigh", "del", &PEER_NODE_IP.to_string(), "dev", "lb0"])
            .status()
            .unwrap();
        assert!(status.success());
        let pin = PinDir::new("lb", "no-neigh");
        let dp = seeded(&pin.0, &world());
        let f = FrameSpec::tcp((CLIENT, CLIENT_PORT), (VIP_SNAT, 80), TCP_SYN).build();

        let before = dp.counters().unwrap();
        let (v, out) = run_frame(prog(&dp, Hook::Xdp), Hook::Xdp, net.lb0, &f).unwrap();
        let after = dp.counters().unwrap();
        assert_eq!((v, &out), (Verdict::Pass, &f), "XDP leaves it to TC");
        let c = LbCounter::XdpToTc as usize;
        assert!(after[c] > before[c], "xdp_to_tc counted");

        let before = dp.counters().unwrap();
        let (v, out) = run_frame(prog(&dp, Hook::Tc), Hook::Tc, net.lb0, &f).unwrap();
        let after = dp.counters().unwrap();
        assert_eq!(v.refine(Hook::Tc, &before, &after), Verdict::Redirect);
        let p = parse(&out).unwrap();
        assert_eq!(p.src, NODE_IP, "SNATed");
        assert_eq!((p.dst, p.dport), (BE_SNAT, BE_PORT));
        verify_checksums(&out, &[]).unwrap();
        let c = LbCounter::XmitStack as usize;
        assert_eq!(after[c], before[c], "not handed to the stack");
    })
    .unwrap();
}
