//! Properties over random pools, Services (with random statuses, garbage included) and event
//! sequences, all in a small address space so collisions, conflicts and exhaustion are common.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::subsequence;

use super::super::request::{compatible, is_responsible, request_of};
use super::*;

/// The addresses Services ask for and carry: the pools' space, a bit beyond, one foreign net.
fn universe() -> Vec<&'static str> {
    vec![
        "192.0.2.0",
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.5",
        "192.0.2.7",
        "192.0.2.8",
        "192.0.2.9",
        "192.0.2.11",
        "192.0.2.12",
        "192.0.2.14",
        "192.0.2.15",
        "192.0.2.17",
        "192.0.2.19",
        "192.0.2.21",
        "2001:db8::1",
        "2001:db8::3",
        "198.51.100.1",
    ]
}

fn blocks() -> Vec<Block> {
    let cidr = |s: &str| Block::Cidr(s.parse().unwrap());
    let range = |a: &str, b: Option<&str>| Block::Range {
        start: ip(a),
        stop: b.map(ip),
    };
    vec![
        cidr("192.0.2.0/29"),
        cidr("192.0.2.0/30"),
        range("192.0.2.8", Some("192.0.2.11")),
        range("192.0.2.12", None),
        cidr("192.0.2.14/31"),
        cidr("2001:db8::/126"),
        range("192.0.2.20", Some("192.0.2.10")),
        cidr("192.0.2.16/30"),
    ]
}

const POOLS: usize = 3;
const SERVICES: usize = 7;

fn pool_name(i: usize) -> String {
    format!("p{i}")
}

fn svc_key(i: usize) -> ServiceKey {
    key(["n1", "n2"][i % 2], &format!("s{i}"))
}

fn arb_pool(i: usize) -> impl Strategy<Value = Pool> {
    (
        0i64..3,
        subsequence(blocks(), 1..=2),
        prop_oneof![
            4 => Just(None),
            2 => Just(Some(selector(&[("tier", "a")]))),
            1 => Just(Some(selector(&[("tier", "b")]))),
            1 => Just(Some(selector(&[("bad key", "x")]))),
        ],
        prop::bool::weighted(0.15),
        prop_oneof![
            Just(None),
            Just(Some(AllowFirstLastIps::Yes)),
            Just(Some(AllowFirstLastIps::No))
        ],
        1i64..3,
    )
        .prop_map(
            move |(ts, blocks, sel, disabled, first_last, generation)| Pool {
                name: pool_name(i),
                creation_timestamp: ts,
                generation,
                blocks,
                service_selector: sel,
                disabled,
                allow_first_last_ips: first_last,
                current_conditions: Vec::new(),
            },
        )
}

fn arb_ip_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(universe()).prop_map(str::to_string),
        1 => Just("garbage".to_string()),
        1 => "[ ,0-9a-z.:]{0,12}",
    ]
}

fn arb_condition() -> impl Strategy<Value = Option<Condition>> {
    prop_oneof![
        3 => Just(None),
        1 => (prop::bool::ANY, 0i64..3).prop_map(|(ok, g)| Some(Condition {
            type_: CONDITION_REQUEST_SATISFIED.into(),
            status: if ok { ConditionStatus::True } else { ConditionStatus::False },
            reason: if ok { REASON_SATISFIED.into() } else { REASON_NO_POOL.into() },
            message: String::new(),
            observed_generation: g,
        })),
    ]
}

fn arb_service(i: usize) -> impl Strategy<Value = Service> {
    let k = svc_key(i);
    let meta = (
        0i64..3,
        prop_oneof![Just(None), Just(Some("a")), Just(Some("b"))],
        prop::bool::weighted(0.9),
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(CLASS_L2_ANNOUNCER.to_string())),
            1 => Just(Some("other.io/lb".to_string())),
        ],
        1i64..3,
    );
    let request = (
        prop_oneof![3 => Just(None), 1 => arb_ip_text().prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => prop::collection::vec(arb_ip_text(), 1..3).prop_map(|v| Some(v.join(",")))],
        prop::bool::ANY,
        prop_oneof![
            Just(None),
            Just(Some(IpFamilyPolicy::SingleStack)),
            Just(Some(IpFamilyPolicy::PreferDualStack)),
            Just(Some(IpFamilyPolicy::RequireDualStack)),
        ],
        prop_oneof![
            Just(vec![]),
            Just(vec![IpFamily::IPv4]),
            Just(vec![IpFamily::IPv6]),
            Just(vec![IpFamily::IPv6, IpFamily::IPv4]),
        ],
    );
    let sharing = (
        prop_oneof![Just(""), Just("k1"), Just("k2"), Just("k1 ")],
        prop::bool::ANY,
        prop_oneof![
            Just(None),
            Just(Some("*")),
            Just(Some("n1")),
            Just(Some("n2, x"))
        ],
        subsequence(vec![80u16, 443, 53], 0..=2),
        prop::bool::weighted(0.3),
        prop_oneof![
            Just(vec![]),
            Just(vec![("app", "x")]),
            Just(vec![("app", "y")])
        ],
    );
    let status = (
        prop_oneof![
            1 => Just(vec![]),
            1 => subsequence(universe(), 0..=3).prop_shuffle(),
        ],
        arb_condition(),
    );
    (meta, request, sharing, status).prop_map(
        move |(
            (ts, tier, is_lb, class, generation),
            (lb_ip, ips_ann, alias, policy, families),
            (sk, sk_alias, cross, ports, local, sel),
            (ingress, condition),
        )| {
            let mut s = mk_svc(&k.namespace, &k.name).created(ts).ports(&ports);
            s.generation = generation;
            s.is_load_balancer = is_lb;
            s.load_balancer_class = class;
            s.load_balancer_ip = lb_ip;
            if let Some(t) = tier {
                s.labels.insert("tier".into(), t.into());
            }
            if let Some(v) = ips_ann {
                let k = if alias {
                    ANNOTATION_IPS_ALIAS
                } else {
                    ANNOTATION_IPS
                };
                s.annotations.insert(k.into(), v);
            }
            if !sk.is_empty() {
                let k = if sk_alias {
                    ANNOTATION_SHARING_KEY_ALIAS
                } else {
                    ANNOTATION_SHARING_KEY
                };
                s.annotations.insert(k.into(), sk.into());
            }
            if let Some(c) = cross {
                s.annotations
                    .insert(ANNOTATION_SHARING_CROSS_NAMESPACE.into(), c.into());
            }
            s.ip_family_policy = policy;
            s.ip_families = families;
            if local {
                s.external_traffic_policy = ExternalTrafficPolicy::Local;
            }
            s.selector = labels(&sel);
            s.current_ingress = ips(&ingress);
            s.current_condition = condition;
            s
        },
    )
}

fn arb_config() -> impl Strategy<Value = LbIpamConfig> {
    (prop::bool::ANY, prop::bool::weighted(0.8), prop::bool::ANY).prop_map(|(l2, v4, v6)| {
        LbIpamConfig {
            l2_announcements_enabled: l2,
            ipv4_enabled: v4,
            ipv6_enabled: v6,
            ..LbIpamConfig::default()
        }
    })
}

/// One watch event, or the status writer feeding back what it wrote.
#[derive(Clone, Debug)]
enum Event {
    ApplyPool(Box<Pool>),
    DeletePool(usize),
    ApplyService(Box<Service>),
    DeleteService(usize),
    /// Write the wanted status of Service `i` and deliver its watch event.
    Echo(usize),
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => (0..POOLS).prop_flat_map(arb_pool).prop_map(|p| Event::ApplyPool(Box::new(p))),
        1 => (0..POOLS).prop_map(Event::DeletePool),
        5 => (0..SERVICES).prop_flat_map(arb_service).prop_map(|s| Event::ApplyService(Box::new(s))),
        1 => (0..SERVICES).prop_map(Event::DeleteService),
        4 => (0..SERVICES).prop_map(Event::Echo),
    ]
}

/// The objects as the API server holds them.
#[derive(Clone, Debug, Default)]
struct World {
    pools: BTreeMap<String, Pool>,
    services: BTreeMap<ServiceKey, Service>,
}

impl World {
    fn apply(&mut self, ipam: &mut LbIpam, event: &Event) -> Changes {
        match event {
            Event::ApplyPool(p) => {
                self.pools.insert(p.name.clone(), (**p).clone());
                ipam.apply_pool((**p).clone())
            }
            Event::DeletePool(i) => {
                self.pools.remove(&pool_name(*i));
                ipam.delete_pool(&pool_name(*i))
            }
            Event::ApplyService(s) => {
                self.services.insert(s.key(), (**s).clone());
                ipam.apply_service((**s).clone())
            }
            Event::DeleteService(i) => {
                self.services.remove(&svc_key(*i));
                ipam.delete_service(&svc_key(*i))
            }
            Event::Echo(i) => {
                let k = svc_key(*i);
                let Some(s) = self.services.get(&k).cloned() else {
                    return Changes::default();
                };
                let status = ipam.service_status(&k).unwrap().clone();
                let s = written(s, &status);
                self.services.insert(k, s.clone());
                ipam.apply_service(s)
            }
        }
    }

    fn rebuilt(&self, config: LbIpamConfig) -> (LbIpam, Changes) {
        let mut ipam = LbIpam::new(config);
        let ch = ipam.reset(
            config,
            self.pools.values().cloned(),
            self.services.values().cloned(),
        );
        (ipam, ch)
    }
}

/// (a) Every address wanted on two Services is wanted only on sharing-compatible ones.
fn assert_no_incompatible_sharing(ipam: &LbIpam, world: &World, config: &LbIpamConfig) {
    let mut holders: BTreeMap<IpAddr, Vec<&Service>> = BTreeMap::new();
    for (k, status) in ipam.service_statuses() {
        let svc = &world.services[&k];
        for ip in status.ingress() {
            holders.entry(*ip).or_default().push(svc);
        }
    }
    for (ip, svcs) in holders {
        for (i, a) in svcs.iter().enumerate() {
            for b in &svcs[i + 1..] {
                assert!(is_responsible(a, config) && is_responsible(b, config));
                let (ra, rb) = (request_of(a, config), request_of(b, config));
                assert!(
                    !ra.sharing.key.is_empty() && compatible(&ra.sharing, &rb.sharing).is_ok(),
                    "{ip} held by incompatible {} and {}",
                    a.key(),
                    b.key()
                );
            }
        }
    }
}

/// The index equals a from-scratch rebuild of the same objects.
fn assert_matches_rebuild(ipam: &LbIpam, world: &World, config: LbIpamConfig) {
    ipam.check_invariants();
    let (fresh, _) = world.rebuilt(config);
    assert_eq!(ipam.service_statuses(), fresh.service_statuses());
    assert_eq!(ipam.pool_statuses(), fresh.pool_statuses());
}

/// Writes every wanted status and feeds it back until nothing changes.
fn settle_world(ipam: &mut LbIpam, world: &mut World, first: Changes) {
    settle(ipam, &mut world.pools, &mut world.services, first);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    // (a) Whatever happens, no address is ever wanted on two Services that may not share it.
    #[test]
    fn no_address_on_incompatible_services(config in arb_config(), events in prop::collection::vec(arb_event(), 1..40)) {
        let mut ipam = LbIpam::new(config);
        let mut world = World::default();
        for event in &events {
            let ch = world.apply(&mut ipam, event);
            assert_no_incompatible_sharing(&ipam, &world, &config);
            // Also while the statuses are being written back.
            settle_world(&mut ipam, &mut world, ch);
            assert_no_incompatible_sharing(&ipam, &world, &config);
        }
    }

    // The incremental index equals a from-scratch rebuild of the same objects after every
    // event: the basis of order independence and restart stability.
    #[test]
    fn incremental_equals_rebuild(config in arb_config(), events in prop::collection::vec(arb_event(), 1..40)) {
        let mut ipam = LbIpam::new(config);
        let mut world = World::default();
        for event in &events {
            world.apply(&mut ipam, event);
            assert_matches_rebuild(&ipam, &world, config);
        }
    }

    // (b) The same objects applied in any order give the same statuses.
    #[test]
    fn event_order_does_not_matter(
        config in arb_config(),
        pools in prop::collection::vec((0..POOLS).prop_flat_map(arb_pool), 1..=POOLS),
        services in prop::collection::vec((0..SERVICES).prop_flat_map(arb_service), 1..=SERVICES),
        seed in any::<u64>(),
    ) {
        // Last object per name wins, as in the API server.
        let mut world = World::default();
        for p in &pools { world.pools.insert(p.name.clone(), p.clone()); }
        for s in &services { world.services.insert(s.key(), s.clone()); }
        let mut events: Vec<Event> = world.pools.values().cloned().map(|p| Event::ApplyPool(Box::new(p)))
            .chain(world.services.values().cloned().map(|s| Event::ApplyService(Box::new(s))))
            .collect();
        let (reference, _) = world.rebuilt(config);
        for round in 0..3u64 {
            // A cheap deterministic shuffle per round.
            let mut state = seed ^ (round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for i in (1..events.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                events.swap(i, (state >> 33) as usize % (i + 1));
            }
            let mut ipam = LbIpam::new(config);
            let mut scratch = World::default();
            for e in &events { scratch.apply(&mut ipam, e); }
            prop_assert_eq!(ipam.service_statuses(), reference.service_statuses());
            prop_assert_eq!(ipam.pool_statuses(), reference.pool_statuses());
        }
    }

    // (c) Once the statuses are written, a restart (rebuild from the objects with their
    // status) gives identical statuses and reports nothing.
    #[test]
    fn restart_is_silent(config in arb_config(), events in prop::collection::vec(arb_event(), 1..30)) {
        let mut ipam = LbIpam::new(config);
        let mut world = World::default();
        for event in &events {
            let ch = world.apply(&mut ipam, event);
            settle_world(&mut ipam, &mut world, ch);
        }
        let (restarted, changes) = world.rebuilt(config);
        prop_assert!(changes.is_empty(), "restart wrote {:?}", changes);
        prop_assert_eq!(restarted.service_statuses(), ipam.service_statuses());
        prop_assert_eq!(restarted.pool_statuses(), ipam.pool_statuses());
    }

    // (d) Bad input (garbage annotations and statuses, overlapping and invalid pools) never
    // panics, and deleting a pool under live Services only takes that pool's addresses: every
    // other written address stays where it is.
    #[test]
    fn bad_input_never_loses_other_allocations(
        config in arb_config(),
        events in prop::collection::vec(arb_event(), 1..30),
        victim in 0..POOLS,
    ) {
        let mut ipam = LbIpam::new(config);
        let mut world = World::default();
        for event in &events {
            let ch = world.apply(&mut ipam, event);
            settle_world(&mut ipam, &mut world, ch);
        }
        let Some(gone) = world.pools.get(&pool_name(victim)).cloned() else { return Ok(()) };
        let in_gone = |ip: IpAddr| gone.blocks.iter().any(|b| {
            super::super::ranges::block_span(b).is_some_and(|(v6, s, e, _)| {
                v6 == ip.is_ipv6() && s <= super::super::space::bits(ip) && super::super::space::bits(ip) <= e
            })
        });
        let before = ipam.service_statuses();
        world.apply(&mut ipam, &Event::DeletePool(victim));
        let after = ipam.service_statuses();
        for (k, status) in &before {
            for ip in status.ingress() {
                if !in_gone(*ip) {
                    prop_assert!(after[k].ingress().contains(ip), "{} lost {}", k, ip);
                }
            }
        }
    }
}
