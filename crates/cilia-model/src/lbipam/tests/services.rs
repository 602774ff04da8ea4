//! Services: responsibility, requests, families, import and stripping, release, satisfaction,
//! stability.

use super::*;

fn dual_stack() -> LbIpamConfig {
    LbIpamConfig {
        ipv6_enabled: true,
        ..LbIpamConfig::default()
    }
}

fn ipam_cfg(config: LbIpamConfig, pools: &[Pool]) -> LbIpam {
    let mut ipam = LbIpam::new(config);
    for p in pools {
        ipam.apply_pool(p.clone());
    }
    ipam
}

// A Service that is not of type LoadBalancer is never touched.
#[test]
fn non_load_balancer_is_ignored() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    let ch = ipam.apply_service(mk_svc("ns", "a").with(|s| s.is_load_balancer = false));
    assert!(ch.services.is_empty());
    assert_eq!(
        ipam.service_status(&key("ns", "a")),
        Some(&ServiceLbStatus::Ignored)
    );
}

// Without a class, a LoadBalancer is served only when default-lb-service-ipam is lbipam.
#[test]
fn nil_class_served_only_as_default() {
    for (default, served) in [
        (DefaultLbServiceIpam::Lbipam, true),
        (DefaultLbServiceIpam::Nodeipam, false),
        (DefaultLbServiceIpam::None, false),
    ] {
        let config = LbIpamConfig {
            default_lb_service_ipam: default,
            ..LbIpamConfig::default()
        };
        let mut ipam = ipam_cfg(config, &[mk_pool("blue", &[NET1])]);
        ipam.apply_service(mk_svc("ns", "a"));
        let status = ipam.service_status(&key("ns", "a")).unwrap();
        assert_eq!(status != &ServiceLbStatus::Ignored, served, "{default:?}");
    }
}

// Class io.cilium/l2-announcer is served only while L2 announcements are enabled.
#[test]
fn l2_class_served_when_l2_enabled() {
    let svc = mk_svc("ns", "a").with(|s| s.load_balancer_class = Some(CLASS_L2_ANNOUNCER.into()));
    let mut off = ipam_with(&[mk_pool("blue", &[NET1])]);
    off.apply_service(svc.clone());
    assert_eq!(
        off.service_status(&key("ns", "a")),
        Some(&ServiceLbStatus::Ignored)
    );
    let config = LbIpamConfig {
        l2_announcements_enabled: true,
        default_lb_service_ipam: DefaultLbServiceIpam::None,
        ..LbIpamConfig::default()
    };
    let mut on = ipam_cfg(config, &[mk_pool("blue", &[NET1])]);
    on.apply_service(svc);
    assert_eq!(ingress_of(&on, &key("ns", "a")), ["192.0.2.0"]);
}

// Class io.cilium/bgp-control-plane is served only while the BGP control plane is enabled.
#[test]
fn bgp_class_served_when_bgp_enabled() {
    let svc =
        mk_svc("ns", "a").with(|s| s.load_balancer_class = Some(CLASS_BGP_CONTROL_PLANE.into()));
    let mut off = ipam_with(&[mk_pool("blue", &[NET1])]);
    off.apply_service(svc.clone());
    assert_eq!(
        off.service_status(&key("ns", "a")),
        Some(&ServiceLbStatus::Ignored)
    );
    let config = LbIpamConfig {
        bgp_enabled: true,
        ..LbIpamConfig::default()
    };
    let mut on = ipam_cfg(config, &[mk_pool("blue", &[NET1])]);
    on.apply_service(svc);
    assert_eq!(ingress_of(&on, &key("ns", "a")), ["192.0.2.0"]);
}

// Any other class is ignored entirely: no address, no condition, its ingress left alone.
#[test]
fn foreign_class_is_ignored() {
    let config = LbIpamConfig {
        l2_announcements_enabled: true,
        bgp_enabled: true,
        ..LbIpamConfig::default()
    };
    let mut ipam = ipam_cfg(config, &[mk_pool("blue", &[NET1])]);
    let svc = mk_svc("ns", "a")
        .with(|s| s.load_balancer_class = Some("metallb.io/metallb".into()))
        .ingress(&["192.0.2.50"]);
    assert!(ipam.apply_service(svc).is_empty());
    assert_eq!(
        ipam.service_status(&key("ns", "a")),
        Some(&ServiceLbStatus::Ignored)
    );
    // Its address is not LB-IPAM's: another Service still gets the lowest free one.
    ipam.apply_service(mk_svc("ns", "b"));
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.0"]);
}

// A Service that stops being LB-IPAM's (type or class change) is released: ingress cleared,
// condition removed, its address free for others; afterwards it is ignored.
#[test]
fn losing_responsibility_releases() {
    let mut pools = BTreeMap::from([("blue".to_string(), mk_pool("blue", &["192.0.2.0/31"]))]);
    let mut services = BTreeMap::new();
    for (t, n) in [(0, "a"), (1, "b"), (2, "c")] {
        services.insert(key("ns", n), mk_svc("ns", n).created(t));
    }
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    let ch = ipam.reset(
        LbIpamConfig::default(),
        pools.values().cloned(),
        services.values().cloned(),
    );
    settle(&mut ipam, &mut pools, &mut services, ch);
    assert_eq!(cond_of(&ipam, &key("ns", "c")).1, REASON_OUT_OF_IPS);

    let a = services[&key("ns", "a")]
        .clone()
        .with(|s| s.load_balancer_class = Some("other.io/lb".into()));
    services.insert(key("ns", "a"), a.clone());
    let ch = ipam.apply_service(a);
    assert_eq!(
        ch.service(&key("ns", "a")),
        Some(&ServiceLbStatus::Released)
    );
    assert_eq!(
        ch.service(&key("ns", "c")).unwrap().ingress(),
        ips(&["192.0.2.0"])
    );
    settle(&mut ipam, &mut pools, &mut services, ch);
    assert_eq!(
        ipam.service_status(&key("ns", "a")),
        Some(&ServiceLbStatus::Ignored)
    );
    assert!(services[&key("ns", "a")].current_ingress.is_empty());

    let b = services[&key("ns", "b")]
        .clone()
        .with(|s| s.is_load_balancer = false);
    let ch = ipam.apply_service(b);
    assert_eq!(
        ch.service(&key("ns", "b")),
        Some(&ServiceLbStatus::Released)
    );
}

// Until the first pool exists LB-IPAM is dormant: Services are not touched at all.
#[test]
fn dormant_until_first_pool() {
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    assert!(ipam.is_dormant());
    assert!(ipam.apply_service(mk_svc("ns", "a")).is_empty());
    assert_eq!(
        ipam.service_status(&key("ns", "a")),
        Some(&ServiceLbStatus::Ignored)
    );
    let ch = ipam.apply_pool(mk_pool("blue", &[NET1]));
    assert!(!ipam.is_dormant());
    assert_eq!(
        ch.service(&key("ns", "a")).unwrap().ingress(),
        ips(&["192.0.2.0"])
    );
}

// spec.loadBalancerIP is a request for that address.
#[test]
fn load_balancer_ip_is_requested() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a").with(|s| s.load_balancer_ip = Some("192.0.2.77".into())));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.77"]);
    assert_eq!(cond_of(&ipam, &key("ns", "a")).1, REASON_SATISFIED);
}

// Requested addresses are the union of spec.loadBalancerIP and the ips annotation, deduplicated.
#[test]
fn requested_ips_are_a_union() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(
        mk_svc("ns", "a")
            .with(|s| s.load_balancer_ip = Some("192.0.2.5".into()))
            .annotate(ANNOTATION_IPS, "192.0.2.6, 192.0.2.5,192.0.2.7"),
    );
    assert_eq!(
        ingress_of(&ipam, &key("ns", "a")),
        ["192.0.2.5", "192.0.2.6", "192.0.2.7"]
    );
}

// The legacy annotation io.cilium/lb-ipam-ips works like lbipam.cilium.io/ips.
#[test]
fn legacy_ips_annotation_is_accepted() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a").annotate(ANNOTATION_IPS_ALIAS, "192.0.2.9"));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.9"]);
}

// Unparsable entries of the ips annotation (and loadBalancerIP) are skipped, the rest served.
#[test]
fn unparsable_requested_ips_are_skipped() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(
        mk_svc("ns", "a")
            .with(|s| s.load_balancer_ip = Some("not-an-ip".into()))
            .annotate(ANNOTATION_IPS, "garbage, 192.0.2.5 ,,300.1.1.1"),
    );
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.5"]);
    assert_eq!(cond_of(&ipam, &key("ns", "a")).1, REASON_SATISFIED);
}

// A requested address outside every enabled pool: no_pool naming the address.
#[test]
fn requested_ip_outside_pools_is_no_pool() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a").annotate(ANNOTATION_IPS, "203.0.113.1"));
    assert_eq!(
        cond_of(&ipam, &key("ns", "a")),
        (
            "False",
            REASON_NO_POOL.into(),
            "No pool exists with a CIDR containing '203.0.113.1'".into()
        )
    );
    assert!(ingress_of(&ipam, &key("ns", "a")).is_empty());
}

// A requested address in a pool that does not select the Service: pool_selector_mismatch.
#[test]
fn requested_ip_in_unselecting_pool_is_mismatch() {
    let pool = mk_pool("blue", &[NET1])
        .with(|p| p.service_selector = Some(selector(&[("color", "blue")])));
    let mut ipam = ipam_with(&[pool]);
    ipam.apply_service(mk_svc("ns", "a").annotate(ANNOTATION_IPS, "192.0.2.1"));
    assert_eq!(
        cond_of(&ipam, &key("ns", "a")),
        (
            "False",
            REASON_POOL_SELECTOR_MISMATCH.into(),
            "The pool with the CIDR containing '192.0.2.1', doesn't select this service".into()
        )
    );
}

// A requested address held by another Service, without a sharing key: already_allocated.
#[test]
fn requested_ip_taken_is_already_allocated() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a"));
    ipam.apply_service(
        mk_svc("ns", "b")
            .created(1)
            .annotate(ANNOTATION_IPS, "192.0.2.0"),
    );
    assert_eq!(
        cond_of(&ipam, &key("ns", "b")),
        (
            "False",
            REASON_ALREADY_ALLOCATED.into(),
            "The IP '192.0.2.0' is already allocated to another service".into()
        )
    );
}

// With no pool selecting a Service at all: no_pool with the generic message.
#[test]
fn no_selecting_pool_is_no_pool() {
    let pool =
        mk_pool("blue", &[NET1]).with(|p| p.service_selector = Some(selector(&[("x", "y")])));
    let mut ipam = ipam_with(&[pool]);
    ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(
        cond_of(&ipam, &key("ns", "a")),
        (
            "False",
            REASON_NO_POOL.into(),
            "There are no enabled CiliumLoadBalancerIPPools that match this service".into()
        )
    );
}

// Satisfied needs every requested address: one missing keeps the condition False with its reason.
#[test]
fn satisfied_needs_every_requested_ip() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a").annotate(ANNOTATION_IPS, "192.0.2.1,203.0.113.1"));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.1"]);
    assert_eq!(
        cond_of(&ipam, &key("ns", "a")).2,
        "No pool exists with a CIDR containing '203.0.113.1'"
    );
}

// The condition carries the Service's generation as observedGeneration.
#[test]
fn condition_carries_generation() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    let ch = ipam.apply_service(mk_svc("ns", "a").with(|s| s.generation = 7));
    let c = ch.service(&key("ns", "a")).unwrap().condition().unwrap();
    assert_eq!(c.observed_generation, 7);
    assert_eq!(c.type_, CONDITION_REQUEST_SATISFIED);
}

// SingleStack (or no policy) takes the first listed family.
#[test]
fn single_stack_takes_first_family() {
    let mut ipam = ipam_cfg(
        dual_stack(),
        &[mk_pool("v4", &[NET1]), mk_pool("v6", &[NET6])],
    );
    ipam.apply_service(mk_svc("ns", "a").with(|s| {
        s.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
        s.ip_families = vec![IpFamily::IPv6, IpFamily::IPv4];
    }));
    ipam.apply_service(mk_svc("ns", "b").with(|s| s.ip_families = vec![IpFamily::IPv4]));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["2001:db8::"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.0"]);
}

// Without families, a Service gets IPv4 when enabled, else IPv6.
#[test]
fn default_family_follows_cluster() {
    let v6_only = LbIpamConfig {
        ipv4_enabled: false,
        ipv6_enabled: true,
        ..LbIpamConfig::default()
    };
    let mut ipam = ipam_cfg(v6_only, &[mk_pool("v4", &[NET1]), mk_pool("v6", &[NET6])]);
    ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["2001:db8::"]);
    let mut ipam = ipam_cfg(
        dual_stack(),
        &[mk_pool("v4", &[NET1]), mk_pool("v6", &[NET6])],
    );
    ipam.apply_service(mk_svc("ns", "a"));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
}

// PreferDualStack gets every listed family the cluster has enabled (all enabled ones if none listed).
#[test]
fn prefer_dual_stack_gets_enabled_families() {
    let pools = [mk_pool("v4", &[NET1]), mk_pool("v6", &[NET6])];
    let prefer =
        |s: Service| s.with(|s| s.ip_family_policy = Some(IpFamilyPolicy::PreferDualStack));
    let mut ipam = ipam_cfg(dual_stack(), &pools);
    ipam.apply_service(prefer(mk_svc("ns", "a")));
    assert_eq!(
        ingress_of(&ipam, &key("ns", "a")),
        ["192.0.2.0", "2001:db8::"]
    );
    let mut ipam = ipam_cfg(LbIpamConfig::default(), &pools);
    ipam.apply_service(
        prefer(mk_svc("ns", "a")).with(|s| s.ip_families = vec![IpFamily::IPv4, IpFamily::IPv6]),
    );
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    assert_eq!(cond_of(&ipam, &key("ns", "a")).1, REASON_SATISFIED);
}

// RequireDualStack asks for both families; on a single-stack cluster it is never satisfied.
#[test]
fn require_dual_stack_needs_both() {
    let pools = [mk_pool("v4", &[NET1]), mk_pool("v6", &[NET6])];
    let require =
        |s: Service| s.with(|s| s.ip_family_policy = Some(IpFamilyPolicy::RequireDualStack));
    let mut ipam = ipam_cfg(dual_stack(), &pools);
    ipam.apply_service(require(mk_svc("ns", "a")));
    assert_eq!(
        ingress_of(&ipam, &key("ns", "a")),
        ["192.0.2.0", "2001:db8::"]
    );
    let mut ipam = ipam_cfg(LbIpamConfig::default(), &pools);
    ipam.apply_service(require(mk_svc("ns", "a")));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    assert_eq!(
        cond_of(&ipam, &key("ns", "a")),
        (
            "False",
            REASON_NO_POOL.into(),
            "There are no enabled CiliumLoadBalancerIPPools that match this service".into()
        )
    );
}

// An address already in the Service's ingress, inside a selecting range and free, is imported.
#[test]
fn existing_ingress_is_imported() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    let svc = mk_svc("ns", "a").ingress(&["192.0.2.200"]);
    let ch = ipam.apply_service(svc.clone());
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.200"]);
    // Only the condition is new.
    assert_eq!(
        ch.service(&key("ns", "a")).unwrap().ingress(),
        ips(&["192.0.2.200"])
    );
    assert_eq!(pool_cond(&ipam, "blue", CONDITION_IPS_USED).message, "1");
}

// Ingress addresses outside every range, or of an unrequested family, are stripped.
#[test]
fn foreign_ingress_is_stripped() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a").ingress(&["203.0.113.5", "2001:db8::5", "192.0.2.3"]));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.3"]);
}

// An address two Services carry goes to the older one; the younger gets a new address.
#[test]
fn contested_ingress_goes_to_older() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "young").created(5).ingress(&["192.0.2.9"]));
    let ch = ipam.apply_service(mk_svc("ns", "old").created(1).ingress(&["192.0.2.9"]));
    assert_eq!(ingress_of(&ipam, &key("ns", "old")), ["192.0.2.9"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "young")), ["192.0.2.0"]);
    assert_eq!(ch.services.len(), 2);
}

// Duplicate ingress entries are collapsed.
#[test]
fn duplicate_ingress_is_collapsed() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a").ingress(&["192.0.2.4", "192.0.2.4"]));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.4"]);
}

// An address no longer listed in the request is released and the new one granted.
#[test]
fn unrequested_ip_is_released() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    let svc = mk_svc("ns", "a")
        .annotate(ANNOTATION_IPS, "192.0.2.5")
        .ingress(&["192.0.2.5"]);
    ipam.apply_service(svc.clone());
    let ch = ipam.apply_service(svc.annotate(ANNOTATION_IPS, "192.0.2.6"));
    assert_eq!(
        ch.service(&key("ns", "a")).unwrap().ingress(),
        ips(&["192.0.2.6"])
    );
    assert_eq!(pool_cond(&ipam, "blue", CONDITION_IPS_USED).message, "1");
}

// An address of a family no longer requested is released.
#[test]
fn unrequested_family_is_released() {
    let mut ipam = ipam_cfg(
        dual_stack(),
        &[mk_pool("v4", &[NET1]), mk_pool("v6", &[NET6])],
    );
    let svc = mk_svc("ns", "a")
        .with(|s| s.ip_family_policy = Some(IpFamilyPolicy::PreferDualStack))
        .ingress(&["192.0.2.1", "2001:db8::1"]);
    ipam.apply_service(svc.clone());
    assert_eq!(
        ingress_of(&ipam, &key("ns", "a")),
        ["192.0.2.1", "2001:db8::1"]
    );
    let ch = ipam.apply_service(svc.with(|s| {
        s.ip_family_policy = Some(IpFamilyPolicy::SingleStack);
        s.ip_families = vec![IpFamily::IPv6];
    }));
    assert_eq!(
        ch.service(&key("ns", "a")).unwrap().ingress(),
        ips(&["2001:db8::1"])
    );
}

// A Service label change that leaves the pool's selector takes its address away.
#[test]
fn label_change_out_of_selector_releases() {
    let pool = mk_pool("blue", &[NET1])
        .with(|p| p.service_selector = Some(selector(&[("color", "blue")])));
    let mut ipam = ipam_with(&[pool]);
    let svc = mk_svc("ns", "a")
        .label("color", "blue")
        .ingress(&["192.0.2.8"]);
    ipam.apply_service(svc.clone());
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.8"]);
    ipam.apply_service(svc.label("color", "red"));
    assert!(ingress_of(&ipam, &key("ns", "a")).is_empty());
    assert_eq!(pool_cond(&ipam, "blue", CONDITION_IPS_USED).message, "0");
}

// Deleting a Service frees its address for the next one in rank order.
#[test]
fn deleted_service_frees_address() {
    let mut ipam = ipam_with(&[mk_pool("blue", &["192.0.2.0/32"])]);
    ipam.apply_service(mk_svc("ns", "a").ingress(&["192.0.2.0"]));
    ipam.apply_service(mk_svc("ns", "b").created(1));
    assert_eq!(cond_of(&ipam, &key("ns", "b")).1, REASON_OUT_OF_IPS);
    let ch = ipam.delete_service(&key("ns", "a"));
    assert_eq!(
        ch.service(&key("ns", "b")).unwrap().ingress(),
        ips(&["192.0.2.0"])
    );
    assert!(ch.service(&key("ns", "a")).is_none());
}

// Feeding back exactly the status the index asked for changes nothing.
#[test]
fn echo_of_written_status_is_silent() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    let svc = mk_svc("ns", "a");
    let ch = ipam.apply_service(svc.clone());
    let echoed = written(svc, ch.service(&key("ns", "a")).unwrap());
    assert!(ipam.apply_service(echoed.clone()).is_empty());
    assert!(ipam.apply_service(echoed).is_empty());
}

// An operator restart (rebuild from the objects and their current status) writes nothing and
// moves no address.
#[test]
fn restart_writes_nothing() {
    let mut pools = BTreeMap::from([
        ("blue".to_string(), mk_pool("blue", &["192.0.2.0/29"])),
        (
            "green".to_string(),
            mk_pool("green", &[NET2]).with(|p| p.creation_timestamp = 3),
        ),
    ]);
    let mut services = BTreeMap::new();
    for i in 0..12 {
        let s = mk_svc("ns", &format!("s{i:02}")).created(i);
        services.insert(s.key(), s);
    }
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    let ch = ipam.reset(
        LbIpamConfig::default(),
        pools.values().cloned(),
        services.values().cloned(),
    );
    settle(&mut ipam, &mut pools, &mut services, ch);
    let before = ipam.service_statuses();
    let mut restarted = LbIpam::new(LbIpamConfig::default());
    let ch = restarted.reset(
        LbIpamConfig::default(),
        pools.values().cloned(),
        services.values().cloned(),
    );
    assert!(ch.is_empty(), "{ch:?}");
    assert_eq!(restarted.service_statuses(), before);
    assert_eq!(restarted.pool_statuses(), ipam.pool_statuses());
}

// New addresses follow rank (creation time, then namespace/name), not event order.
#[test]
fn grants_follow_rank_not_event_order() {
    let svcs = [
        mk_svc("ns", "c").created(1),
        mk_svc("ns", "b").created(2),
        mk_svc("ns", "a").created(2),
    ];
    let mut forward = ipam_with(&[mk_pool("blue", &[NET1])]);
    let mut backward = ipam_with(&[mk_pool("blue", &[NET1])]);
    for s in &svcs {
        forward.apply_service(s.clone());
    }
    for s in svcs.iter().rev() {
        backward.apply_service(s.clone());
    }
    assert_eq!(forward.service_statuses(), backward.service_statuses());
    assert_eq!(ingress_of(&forward, &key("ns", "c")), ["192.0.2.0"]);
    assert_eq!(ingress_of(&forward, &key("ns", "a")), ["192.0.2.1"]);
    assert_eq!(ingress_of(&forward, &key("ns", "b")), ["192.0.2.2"]);
}

// Changing the configuration re-evaluates responsibility for every Service.
#[test]
fn config_change_reevaluates() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(
        mk_svc("ns", "a").with(|s| s.load_balancer_class = Some(CLASS_L2_ANNOUNCER.into())),
    );
    assert_eq!(
        ipam.service_status(&key("ns", "a")),
        Some(&ServiceLbStatus::Ignored)
    );
    let ch = ipam.set_config(LbIpamConfig {
        l2_announcements_enabled: true,
        ..LbIpamConfig::default()
    });
    assert_eq!(
        ch.service(&key("ns", "a")).unwrap().ingress(),
        ips(&["192.0.2.0"])
    );
}

// An older Service arriving late moves the not-yet-written grants of younger ones (the result
// is the same as if it had come first); written addresses never move.
#[test]
fn late_older_service_shifts_unwritten_grants_only() {
    let mut ipam = ipam_with(&[mk_pool("blue", &["192.0.2.0/30"])]);
    let written_a = mk_svc("ns", "a").created(1).ingress(&["192.0.2.0"]);
    ipam.apply_service(written_a);
    ipam.apply_service(mk_svc("ns", "b").created(2));
    ipam.apply_service(mk_svc("ns", "c").created(3));
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.1"]);
    let ch = ipam.apply_service(mk_svc("ns", "z").created(0));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "z")), ["192.0.2.1"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.2"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "c")), ["192.0.2.3"]);
    let keys: Vec<String> = ch.services.iter().map(|c| c.key.to_string()).collect();
    assert_eq!(keys, ["ns/b", "ns/c", "ns/z"]);
    ipam.check_invariants();
}
