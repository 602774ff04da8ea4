//! Pools: blocks, first/last addresses, selectors, disabling, conflicts and pool conditions.

use super::*;

fn conditions(ipam: &LbIpam, pool: &str) -> Vec<(String, &'static str, String, String, i64)> {
    ipam.pool_conditions(pool)
        .unwrap()
        .iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.as_str(),
                c.reason.clone(),
                c.message.clone(),
                c.observed_generation,
            )
        })
        .collect()
}

fn row(
    t: &str,
    s: &'static str,
    r: &str,
    m: &str,
    g: i64,
) -> (String, &'static str, String, String, i64) {
    (t.into(), s, r.into(), m.into(), g)
}

// A new pool gets PoolConflict=False/resolved and the three counts, all with its generation.
#[test]
fn new_pool_gets_resolved_and_counts() {
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    let changes = ipam.apply_pool(mk_pool("blue", &["192.0.2.0/24"]).with(|p| p.generation = 3));
    let expected = vec![
        row(CONDITION_POOL_CONFLICT, "False", REASON_RESOLVED, "", 3),
        row(CONDITION_IPS_TOTAL, "Unknown", REASON_NO_REASON, "256", 3),
        row(
            CONDITION_IPS_AVAILABLE,
            "Unknown",
            REASON_NO_REASON,
            "256",
            3,
        ),
        row(CONDITION_IPS_USED, "Unknown", REASON_NO_REASON, "0", 3),
    ];
    assert_eq!(conditions(&ipam, "blue"), expected);
    assert_eq!(changes.pools.len(), 1);
    assert_eq!(changes.pools[0].name, "blue");
    assert!(changes.services.is_empty());
}

// Counts follow allocations: used goes up, available goes down, total stays.
#[test]
fn counts_follow_allocations() {
    let mut ipam = ipam_with(&[mk_pool("blue", &["192.0.2.0/30"])]);
    let changes = ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(changes.pool("blue").unwrap()[3].message, "1");
    assert_eq!(pool_cond(&ipam, "blue", CONDITION_IPS_TOTAL).message, "4");
    assert_eq!(
        pool_cond(&ipam, "blue", CONDITION_IPS_AVAILABLE).message,
        "3"
    );
    assert_eq!(pool_cond(&ipam, "blue", CONDITION_IPS_USED).message, "1");
    ipam.delete_service(&key("ns", "a"));
    assert_eq!(
        pool_cond(&ipam, "blue", CONDITION_IPS_AVAILABLE).message,
        "4"
    );
}

// Counts are big integers: a /64 has 2^64 addresses.
#[test]
fn counts_are_big_integers() {
    let ipam = ipam_with(&[mk_pool("v6", &["2001:db8::/64"]), mk_pool("all", &["::/0"])]);
    assert_eq!(
        pool_cond(&ipam, "v6", CONDITION_IPS_TOTAL).message,
        "18446744073709551616"
    );
    // The whole IPv6 space conflicts with the older /64 but is still counted.
    assert_eq!(
        pool_cond(&ipam, "all", CONDITION_IPS_TOTAL).message,
        "340282366920938463463374607431768211456"
    );
}

// A CIDR block hands out its lowest free address first, the network address included.
#[test]
fn cidr_block_hands_out_lowest_first() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a"));
    ipam.apply_service(mk_svc("ns", "b").created(1));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.1"]);
}

// Host bits in a CIDR are ignored: 192.0.2.5/30 is 192.0.2.4/30.
#[test]
fn host_bits_in_cidr_are_ignored() {
    let mut ipam = ipam_with(&[mk_pool("blue", &["192.0.2.5/30"])]);
    ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.4"]);
    assert_eq!(pool_cond(&ipam, "blue", CONDITION_IPS_TOTAL).message, "4");
}

// A start/stop block hands out start..=stop, first and last included.
#[test]
fn range_block_hands_out_start_to_stop() {
    let pool = mk_range_pool("r", "192.0.2.10", Some("192.0.2.11"))
        .with(|p| p.allow_first_last_ips = Some(AllowFirstLastIps::No));
    let mut ipam = ipam_with(&[pool]);
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        ipam.apply_service(mk_svc("ns", n).created(i as i64));
    }
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.10"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.11"]);
    assert_eq!(
        cond_of(&ipam, &key("ns", "c")),
        (
            "False",
            REASON_OUT_OF_IPS.into(),
            "All enabled CiliumLoadBalancerIPPools that match this service ran out of allocatable IPs".into()
        )
    );
}

// A block with only `start` is the single address `start`.
#[test]
fn range_without_stop_is_one_address() {
    let mut ipam = ipam_with(&[mk_range_pool("one", "192.0.2.7", None)]);
    ipam.apply_service(mk_svc("ns", "a"));
    ipam.apply_service(mk_svc("ns", "b").created(1));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.7"]);
    assert_eq!(cond_of(&ipam, &key("ns", "b")).1, REASON_OUT_OF_IPS);
    assert_eq!(pool_cond(&ipam, "one", CONDITION_IPS_TOTAL).message, "1");
}

// Unset allowFirstLastIPs means Yes (Cilium ≥ 1.16): the network address is handed out.
#[test]
fn first_last_allowed_by_default() {
    let mut ipam = ipam_with(&[mk_pool("blue", &["192.0.2.0/30"])]);
    for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
        ipam.apply_service(mk_svc("ns", n).created(i as i64));
    }
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "d")), ["192.0.2.3"]);
}

// allowFirstLastIPs: No reserves the first and last address of a CIDR; they are not counted.
#[test]
fn first_last_reserved_when_no() {
    let pool = mk_pool("blue", &["192.0.2.0/30"])
        .with(|p| p.allow_first_last_ips = Some(AllowFirstLastIps::No));
    let mut ipam = ipam_with(&[pool]);
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        ipam.apply_service(mk_svc("ns", n).created(i as i64));
    }
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.1"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.2"]);
    assert_eq!(cond_of(&ipam, &key("ns", "c")).1, REASON_OUT_OF_IPS);
    assert_eq!(pool_cond(&ipam, "blue", CONDITION_IPS_TOTAL).message, "2");
    assert_eq!(
        pool_cond(&ipam, "blue", CONDITION_IPS_AVAILABLE).message,
        "0"
    );
    // Asking for a reserved address is refused like a taken one.
    ipam.apply_service(
        mk_svc("ns", "d")
            .created(3)
            .with(|s| s.load_balancer_ip = Some("192.0.2.3".into())),
    );
    assert_eq!(
        cond_of(&ipam, &key("ns", "d")),
        (
            "False",
            REASON_ALREADY_ALLOCATED.into(),
            "The IP '192.0.2.3' is already allocated to another service".into()
        )
    );
}

// allowFirstLastIPs: No is ignored for /31, /32, /127, /128 and for start/stop blocks.
#[test]
fn first_last_kept_for_tiny_cidrs_and_ranges() {
    let no = |p: Pool| p.with(|p| p.allow_first_last_ips = Some(AllowFirstLastIps::No));
    let config = LbIpamConfig {
        ipv6_enabled: true,
        ..LbIpamConfig::default()
    };
    let mut ipam = LbIpam::new(config);
    ipam.apply_pool(no(mk_pool("p31", &["192.0.2.0/31"])));
    ipam.apply_pool(no(mk_pool("p32", &["192.0.2.8/32"])));
    ipam.apply_pool(no(mk_pool("p127", &["2001:db8::/127"])));
    ipam.apply_pool(no(mk_pool("p128", &["2001:db8::10/128"])));
    ipam.apply_pool(no(mk_range_pool(
        "range",
        "198.51.100.0",
        Some("198.51.100.255"),
    )));
    for (name, total) in [
        ("p31", "2"),
        ("p32", "1"),
        ("p127", "2"),
        ("p128", "1"),
        ("range", "256"),
    ] {
        assert_eq!(
            pool_cond(&ipam, name, CONDITION_IPS_TOTAL).message,
            total,
            "{name}"
        );
    }
    ipam.apply_service(
        mk_svc("ns", "a").annotate(ANNOTATION_IPS, "192.0.2.0,198.51.100.255,2001:db8::"),
    );
    assert_eq!(
        ingress_of(&ipam, &key("ns", "a")),
        ["192.0.2.0", "198.51.100.255", "2001:db8::"]
    );
    assert_eq!(cond_of(&ipam, &key("ns", "a")).1, REASON_SATISFIED);
}

// Changing allowFirstLastIPs to No keeps a Service already holding the first address.
#[test]
fn reserving_first_last_does_not_revoke() {
    let mut pool = mk_pool("blue", &["192.0.2.0/30"]);
    let mut ipam = ipam_with(std::slice::from_ref(&pool));
    let mut a = mk_svc("ns", "a");
    let ch = ipam.apply_service(a.clone());
    a = written(a, ch.service(&key("ns", "a")).unwrap());
    ipam.apply_service(a);
    pool.allow_first_last_ips = Some(AllowFirstLastIps::No);
    pool.generation = 2;
    let ch = ipam.apply_pool(pool);
    assert!(ch.services.is_empty());
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
}

// serviceSelector restricts a pool to matching Services; others fall through to the next pool.
#[test]
fn service_selector_restricts_pool() {
    let red =
        mk_pool("red", &[NET1]).with(|p| p.service_selector = Some(selector(&[("color", "red")])));
    let any = mk_pool("any", &[NET2]).with(|p| p.creation_timestamp = 1);
    let mut ipam = ipam_with(&[red, any]);
    ipam.apply_service(mk_svc("ns", "a").label("color", "red"));
    ipam.apply_service(mk_svc("ns", "b").label("color", "blue"));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["198.51.100.0"]);
}

// Pools can select on the virtual labels io.kubernetes.service.namespace / .name.
#[test]
fn virtual_namespace_and_name_labels_select() {
    let by_ns = mk_pool("team", &[NET1])
        .with(|p| p.service_selector = Some(selector(&[(LABEL_SERVICE_NAMESPACE, "team")])));
    let by_name = mk_pool("named", &[NET2]).with(|p| {
        p.creation_timestamp = 1;
        p.service_selector = Some(selector(&[(LABEL_SERVICE_NAME, "special")]));
    });
    let mut ipam = ipam_with(&[by_ns, by_name]);
    ipam.apply_service(mk_svc("team", "web"));
    ipam.apply_service(mk_svc("other", "special"));
    ipam.apply_service(mk_svc("other", "plain"));
    assert_eq!(ingress_of(&ipam, &key("team", "web")), ["192.0.2.0"]);
    assert_eq!(
        ingress_of(&ipam, &key("other", "special")),
        ["198.51.100.0"]
    );
    assert_eq!(
        cond_of(&ipam, &key("other", "plain")),
        (
            "False",
            REASON_NO_POOL.into(),
            "There are no enabled CiliumLoadBalancerIPPools that match this service".into()
        )
    );
}

// An invalid serviceSelector selects no Service, and the pool reports why through validate().
#[test]
fn invalid_selector_selects_nothing() {
    let bad = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![crate::selector::LabelSelectorRequirement {
            key: "color".into(),
            operator: crate::selector::LabelSelectorOperator::In,
            values: None,
        }]),
    };
    let pool = mk_pool("blue", &[NET1]).with(|p| p.service_selector = Some(bad));
    assert_eq!(
        pool.validate()[0].to_string(),
        "spec.serviceSelector: values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
    );
    let mut ipam = ipam_with(&[pool]);
    ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(cond_of(&ipam, &key("ns", "a")).1, REASON_NO_POOL);
}

// Unusable blocks are skipped and reported; the rest of the pool works.
#[test]
fn unusable_blocks_are_skipped() {
    let mut pool = mk_range_pool("mixed", "192.0.2.9", Some("192.0.2.1"));
    pool.blocks.push(Block::Range {
        start: ip("192.0.2.1"),
        stop: Some(ip("2001:db8::1")),
    });
    pool.blocks
        .push(Block::Cidr("198.51.100.0/31".parse().unwrap()));
    let errors: Vec<String> = pool.validate().iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "spec.blocks[0]: stop 192.0.2.1 is before start 192.0.2.9",
            "spec.blocks[1]: start 192.0.2.1 and stop 2001:db8::1 are of different IP families"
        ]
    );
    let mut ipam = ipam_with(&[pool]);
    ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["198.51.100.0"]);
    assert_eq!(pool_cond(&ipam, "mixed", CONDITION_IPS_TOTAL).message, "2");
}

// A disabled pool keeps what Services hold but hands out nothing new.
#[test]
fn disabled_pool_keeps_but_grants_nothing() {
    let mut pool = mk_pool("blue", &[NET1]);
    let mut ipam = ipam_with(std::slice::from_ref(&pool));
    let a = mk_svc("ns", "a");
    let ch = ipam.apply_service(a.clone());
    ipam.apply_service(written(a, ch.service(&key("ns", "a")).unwrap()));
    pool.disabled = true;
    pool.generation = 2;
    let ch = ipam.apply_pool(pool);
    assert!(ch.services.is_empty(), "{ch:?}");
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    ipam.apply_service(mk_svc("ns", "b").created(1));
    assert_eq!(cond_of(&ipam, &key("ns", "b")).1, REASON_NO_POOL);
    // A listed address in a disabled pool is "no pool" too (Cilium skips disabled ranges).
    ipam.apply_service(
        mk_svc("ns", "c")
            .created(2)
            .with(|s| s.load_balancer_ip = Some("192.0.2.9".into())),
    );
    assert_eq!(
        cond_of(&ipam, &key("ns", "c")).2,
        "No pool exists with a CIDR containing '192.0.2.9'"
    );
}

// A restart keeps addresses of a disabled pool (Cilium strips them after a restart).
#[test]
fn disabled_pool_addresses_survive_restart() {
    let pool = mk_pool("blue", &[NET1]).with(|p| p.disabled = true);
    let svc = mk_svc("ns", "a").ingress(&["192.0.2.7"]);
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    ipam.reset(LbIpamConfig::default(), [pool], [svc]);
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.7"]);
    assert_eq!(cond_of(&ipam, &key("ns", "a")).1, REASON_SATISFIED);
}

// Of two overlapping pools the newer is in conflict, with Cilium's message, and allocates nothing.
#[test]
fn newer_overlapping_pool_is_in_conflict() {
    let old = mk_pool("old", &["192.0.2.0/25"])
        .with(|p| p.service_selector = Some(selector(&[("pool", "old")])));
    let new = mk_pool("new", &["192.0.2.64/26"]).with(|p| {
        p.creation_timestamp = 10;
        p.generation = 4;
    });
    let mut ipam = ipam_with(&[old]);
    let ch = ipam.apply_pool(new);
    let conflict = pool_cond(&ipam, "new", CONDITION_POOL_CONFLICT).clone();
    assert_eq!(conflict.status, ConditionStatus::True);
    assert_eq!(conflict.reason, REASON_CIDR_OVERLAP);
    assert_eq!(
        conflict.message,
        "Pool conflicts since range '192.0.2.64 - 192.0.2.127' overlaps range '192.0.2.0 - 192.0.2.127' from IP Pool 'old'"
    );
    assert_eq!(conflict.observed_generation, 4);
    assert_eq!(ch.pool("new").unwrap()[0], conflict);
    assert_eq!(
        pool_cond(&ipam, "old", CONDITION_POOL_CONFLICT).status,
        ConditionStatus::False
    );
    ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(cond_of(&ipam, &key("ns", "a")).1, REASON_NO_POOL);
    ipam.apply_service(mk_svc("ns", "b").label("pool", "old"));
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.0"]);
}

// Ranges overlapping inside one pool put that pool in conflict, naming itself.
#[test]
fn self_overlapping_pool_is_in_conflict() {
    let ipam = ipam_with(&[mk_pool("twice", &["192.0.2.0/24", "192.0.2.128/25"])]);
    assert_eq!(
        pool_cond(&ipam, "twice", CONDITION_POOL_CONFLICT).message,
        "Pool conflicts since range '192.0.2.0 - 192.0.2.255' overlaps range '192.0.2.128 - 192.0.2.255' from IP Pool 'twice'"
    );
}

// A conflict resolves by itself when the overlap goes away: False/resolved, allocation resumes.
#[test]
fn conflict_resolves_when_overlap_goes() {
    let mut ipam = ipam_with(&[mk_pool("old", &[NET1])]);
    let mut new = mk_pool("new", &["192.0.2.0/28", NET2]).with(|p| p.creation_timestamp = 5);
    ipam.apply_pool(new.clone());
    assert_eq!(
        pool_cond(&ipam, "new", CONDITION_POOL_CONFLICT).status,
        ConditionStatus::True
    );
    new.blocks.remove(0);
    new.generation = 2;
    let ch = ipam.apply_pool(new);
    let resolved = &ch.pool("new").unwrap()[0];
    assert_eq!(
        (
            resolved.status,
            resolved.reason.as_str(),
            resolved.message.as_str(),
            resolved.observed_generation
        ),
        (ConditionStatus::False, REASON_RESOLVED, "", 2)
    );
    // Deleting the older pool also resolves a conflict.
    let mut ipam = ipam_with(&[
        mk_pool("old", &[NET1]),
        mk_pool("new", &[NET1]).with(|p| p.creation_timestamp = 5),
    ]);
    ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    ipam.delete_pool("old");
    assert_eq!(
        pool_cond(&ipam, "new", CONDITION_POOL_CONFLICT).status,
        ConditionStatus::False
    );
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
}

// A pool overlapping only a pool that is itself in conflict works (the silenced pool blocks nothing).
#[test]
fn overlap_with_a_conflicting_pool_is_no_conflict() {
    let a = mk_pool("a", &["192.0.2.0/26"]);
    let b = mk_pool("b", &["192.0.2.32/27", "192.0.2.64/26"]).with(|p| p.creation_timestamp = 1);
    let c = mk_pool("c", &["192.0.2.64/26"]).with(|p| p.creation_timestamp = 2);
    let ipam = ipam_with(&[a, b, c]);
    assert_eq!(
        pool_cond(&ipam, "b", CONDITION_POOL_CONFLICT).status,
        ConditionStatus::True
    );
    assert_eq!(
        pool_cond(&ipam, "c", CONDITION_POOL_CONFLICT).status,
        ConditionStatus::False
    );
}

// Re-applying an unchanged pool (its status echo) reports nothing; a generation bump rewrites
// observedGeneration.
#[test]
fn unchanged_pool_reports_nothing() {
    let mut pool = mk_pool("blue", &[NET1]);
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    let ch = ipam.apply_pool(pool.clone());
    pool.current_conditions = ch.pools[0].conditions.clone();
    assert!(ipam.apply_pool(pool.clone()).is_empty());
    pool.generation = 2;
    let ch = ipam.apply_pool(pool);
    assert!(
        ch.pools[0]
            .conditions
            .iter()
            .all(|c| c.observed_generation == 2)
    );
}

// Deleting a pool takes its addresses from the Services holding them.
#[test]
fn pool_deletion_releases_addresses() {
    let mut ipam = ipam_with(&[
        mk_pool("blue", &[NET1]),
        mk_pool("green", &[NET2]).with(|p| p.creation_timestamp = 1),
    ]);
    let a = mk_svc("ns", "a").ingress(&["192.0.2.0"]);
    ipam.apply_service(a);
    let ch = ipam.delete_pool("blue");
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["198.51.100.0"]);
    assert_eq!(
        ch.service(&key("ns", "a")).unwrap().ingress(),
        ips(&["198.51.100.0"])
    );
    assert!(ch.pool("blue").is_none());
}

// Removing a block from a pool takes its addresses away; other blocks' holders keep theirs.
#[test]
fn block_removal_releases_addresses() {
    let mut pool = mk_pool("blue", &[NET1, NET3]);
    let mut ipam = ipam_with(std::slice::from_ref(&pool));
    ipam.apply_service(mk_svc("ns", "a").ingress(&["192.0.2.9"]));
    ipam.apply_service(mk_svc("ns", "b").ingress(&["203.0.113.9"]));
    pool.blocks.remove(0);
    pool.generation = 2;
    let ch = ipam.apply_pool(pool);
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["203.0.113.0"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["203.0.113.9"]);
    assert!(ch.service(&key("ns", "b")).is_none());
}

// A pool selector that stops matching takes the address away.
#[test]
fn selector_change_releases_addresses() {
    let mut pool = mk_pool("blue", &[NET1]);
    let mut ipam = ipam_with(std::slice::from_ref(&pool));
    ipam.apply_service(
        mk_svc("ns", "a")
            .ingress(&["192.0.2.9"])
            .label("color", "blue"),
    );
    pool.service_selector = Some(selector(&[("color", "red")]));
    ipam.apply_pool(pool);
    assert!(ingress_of(&ipam, &key("ns", "a")).is_empty());
    assert_eq!(cond_of(&ipam, &key("ns", "a")).1, REASON_NO_POOL);
}

// The last pool deleted: Services lose their addresses (no_pool), then LB-IPAM is dormant.
#[test]
fn last_pool_deleted_goes_dormant() {
    let mut pools = BTreeMap::from([("blue".to_string(), mk_pool("blue", &[NET1]))]);
    let mut services = BTreeMap::from([(key("ns", "a"), mk_svc("ns", "a"))]);
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    let ch = ipam.reset(
        LbIpamConfig::default(),
        pools.values().cloned(),
        services.values().cloned(),
    );
    settle(&mut ipam, &mut pools, &mut services, ch);
    let ch = ipam.delete_pool("blue");
    pools.clear();
    assert!(ipam.is_dormant());
    assert_eq!(
        ch.service(&key("ns", "a")),
        Some(&ServiceLbStatus::Managed {
            ingress: vec![],
            condition: Condition {
                type_: CONDITION_REQUEST_SATISFIED.into(),
                status: ConditionStatus::False,
                reason: REASON_NO_POOL.into(),
                message: "There are no enabled CiliumLoadBalancerIPPools that match this service"
                    .into(),
                observed_generation: 1,
            }
        })
    );
    settle(&mut ipam, &mut pools, &mut services, ch);
    // A Service created while dormant is not touched.
    assert!(ipam.apply_service(mk_svc("ns", "b")).is_empty());
    assert_eq!(
        ipam.service_status(&key("ns", "b")),
        Some(&ServiceLbStatus::Ignored)
    );
    // A restart while dormant writes nothing.
    let mut fresh = LbIpam::new(LbIpamConfig::default());
    assert!(
        fresh
            .reset(LbIpamConfig::default(), [], services.values().cloned())
            .is_empty()
    );
}

// The seed pool (172.18.250.0/24) gives deathstar-lb its first address, satisfied; with
// allowFirstLastIPs: No it gets .1.
#[test]
fn seed_pool_serves_deathstar() {
    let pool = mk_pool("default", &["172.18.250.0/24"]);
    let deathstar = Service {
        labels: labels(&[("app.kubernetes.io/name", "deathstar")]),
        selector: labels(&[("class", "deathstar"), ("org", "empire")]),
        ..mk_svc("default", "deathstar-lb")
    }
    .ports(&[80]);
    let k = key("default", "deathstar-lb");
    let mut ipam = ipam_with(std::slice::from_ref(&pool));
    let ch = ipam.apply_service(deathstar.clone());
    assert_eq!(ch.service(&k).unwrap().ingress(), ips(&["172.18.250.0"]));
    assert_eq!(
        cond_of(&ipam, &k),
        ("True", REASON_SATISFIED.into(), String::new())
    );
    assert_eq!(
        pool_cond(&ipam, "default", CONDITION_IPS_AVAILABLE).message,
        "255"
    );

    let reserved = pool.with(|p| p.allow_first_last_ips = Some(AllowFirstLastIps::No));
    let mut ipam = ipam_with(&[reserved]);
    ipam.apply_service(deathstar);
    assert_eq!(ingress_of(&ipam, &k), ["172.18.250.1"]);
    assert_eq!(cond_of(&ipam, &k).1, REASON_SATISFIED);
    assert_eq!(
        pool_cond(&ipam, "default", CONDITION_IPS_AVAILABLE).message,
        "253"
    );
}
