//! Sharing keys: who may hold one address together, and what happens when they may not.

use super::*;

fn incompatible(ip: &str, why: &str) -> (&'static str, String, String) {
    (
        "False",
        REASON_INCOMPATIBLE.into(),
        format!("The IP '{ip}' is already allocated to an incompatible service. Reason: {why}"),
    )
}

/// `holder` holds 192.0.2.1 (listed); `joiner` asks for it too.
fn contest(holder: Service, joiner: Service) -> LbIpam {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(holder.annotate(ANNOTATION_IPS, "192.0.2.1"));
    ipam.apply_service(joiner.created(1).annotate(ANNOTATION_IPS, "192.0.2.1"));
    ipam
}

// Services with the same sharing key and no common port share one address.
#[test]
fn same_key_shares() {
    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "http").sharing("web").ports(&[80]));
    ipam.apply_service(
        mk_svc("ns", "https")
            .created(1)
            .sharing("web")
            .ports(&[443]),
    );
    assert_eq!(ingress_of(&ipam, &key("ns", "http")), ["192.0.2.0"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "https")), ["192.0.2.0"]);
    assert_eq!(pool_cond(&ipam, "blue", CONDITION_IPS_USED).message, "1");
    // Listed addresses are shared the same way.
    let ipam = contest(
        mk_svc("ns", "a").sharing("k").ports(&[80]),
        mk_svc("ns", "b").sharing("k").ports(&[53]),
    );
    assert_eq!(cond_of(&ipam, &key("ns", "b")).1, REASON_SATISFIED);
}

// The legacy annotation io.cilium/lb-ipam-sharing-key works like lbipam.cilium.io/sharing-key.
#[test]
fn legacy_sharing_key_is_accepted() {
    let ipam = contest(
        mk_svc("ns", "a")
            .annotate(ANNOTATION_SHARING_KEY_ALIAS, "k")
            .ports(&[80]),
        mk_svc("ns", "b").sharing("k").ports(&[53]),
    );
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.1"]);
}

// A different sharing key is incompatible: "different sharing key".
#[test]
fn different_key_is_incompatible() {
    let ipam = contest(
        mk_svc("ns", "a").sharing("k1").ports(&[80]),
        mk_svc("ns", "b").sharing("k2").ports(&[53]),
    );
    assert_eq!(
        cond_of(&ipam, &key("ns", "b")),
        incompatible("192.0.2.1", "different sharing key")
    );
}

// Across namespaces both Services must list the other's namespace (or `*`).
#[test]
fn cross_namespace_needs_both_sides() {
    let one_sided = contest(
        mk_svc("ns1", "a")
            .sharing("k")
            .ports(&[80])
            .annotate(ANNOTATION_SHARING_CROSS_NAMESPACE, "ns2"),
        mk_svc("ns2", "b").sharing("k").ports(&[53]),
    );
    assert_eq!(
        cond_of(&one_sided, &key("ns2", "b")),
        incompatible("192.0.2.1", "different and not permitted namespace")
    );
    let both = contest(
        mk_svc("ns1", "a")
            .sharing("k")
            .ports(&[80])
            .annotate(ANNOTATION_SHARING_CROSS_NAMESPACE, "other, ns2"),
        mk_svc("ns2", "b")
            .sharing("k")
            .ports(&[53])
            .annotate(ANNOTATION_SHARING_CROSS_NAMESPACE_ALIAS, "*"),
    );
    assert_eq!(cond_of(&both, &key("ns2", "b")).1, REASON_SATISFIED);
    assert_eq!(ingress_of(&both, &key("ns2", "b")), ["192.0.2.1"]);
}

// A common port number prevents sharing: "same port" (listed), or a new address (generic).
#[test]
fn common_port_prevents_sharing() {
    let ipam = contest(
        mk_svc("ns", "a").sharing("k").ports(&[80, 443]),
        mk_svc("ns", "b").sharing("k").ports(&[443]),
    );
    assert_eq!(
        cond_of(&ipam, &key("ns", "b")),
        incompatible("192.0.2.1", "same port")
    );

    let mut ipam = ipam_with(&[mk_pool("blue", &[NET1])]);
    ipam.apply_service(mk_svc("ns", "a").sharing("k").ports(&[80]));
    ipam.apply_service(mk_svc("ns", "b").created(1).sharing("k").ports(&[80]));
    ipam.apply_service(mk_svc("ns", "c").created(2).sharing("k").ports(&[53]));
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.0"]);
    // The incompatible one gets another address, added to the key's set ...
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.1"]);
    // ... and a later compatible one joins the first address of the set it fits.
    assert_eq!(ingress_of(&ipam, &key("ns", "c")), ["192.0.2.0"]);
}

// Protocols do not matter: 53/TCP and 53/UDP collide.
#[test]
fn protocol_is_ignored() {
    let udp = mk_svc("ns", "b").sharing("k").with(|s| {
        s.ports = vec![ServicePort {
            port: 53,
            protocol: "UDP".into(),
        }]
    });
    let ipam = contest(mk_svc("ns", "a").sharing("k").ports(&[53]), udp);
    assert_eq!(
        cond_of(&ipam, &key("ns", "b")),
        incompatible("192.0.2.1", "same port")
    );
}

// Different externalTrafficPolicy prevents sharing.
#[test]
fn different_traffic_policy_prevents_sharing() {
    let ipam = contest(
        mk_svc("ns", "a").sharing("k").ports(&[80]),
        mk_svc("ns", "b")
            .sharing("k")
            .ports(&[53])
            .with(|s| s.external_traffic_policy = ExternalTrafficPolicy::Local),
    );
    assert_eq!(
        cond_of(&ipam, &key("ns", "b")),
        incompatible("192.0.2.1", "different ExternalTrafficPolicy")
    );
}

// With Local on both, the pod selectors must be identical and non-empty.
#[test]
fn local_needs_identical_selectors() {
    let local = |s: Service, sel: &[(&str, &str)]| {
        s.sharing("k").with(|s| {
            s.external_traffic_policy = ExternalTrafficPolicy::Local;
            s.selector = labels(sel);
        })
    };
    let why = "compatible ExternalTrafficPolicy local but selecting different set of pods";
    let differ = contest(
        local(mk_svc("ns", "a").ports(&[80]), &[("app", "x")]),
        local(mk_svc("ns", "b").ports(&[53]), &[("app", "y")]),
    );
    assert_eq!(
        cond_of(&differ, &key("ns", "b")),
        incompatible("192.0.2.1", why)
    );
    let empty = contest(
        local(mk_svc("ns", "a").ports(&[80]), &[]),
        local(mk_svc("ns", "b").ports(&[53]), &[]),
    );
    assert_eq!(
        cond_of(&empty, &key("ns", "b")),
        incompatible("192.0.2.1", why)
    );
    let same = contest(
        local(mk_svc("ns", "a").ports(&[80]), &[("app", "x")]),
        local(mk_svc("ns", "b").ports(&[53]), &[("app", "x")]),
    );
    assert_eq!(cond_of(&same, &key("ns", "b")).1, REASON_SATISFIED);
}

// Without a sharing key a taken address is simply already_allocated, even if otherwise compatible.
#[test]
fn no_key_never_shares() {
    let ipam = contest(
        mk_svc("ns", "a").ports(&[80]),
        mk_svc("ns", "b").ports(&[53]),
    );
    assert_eq!(cond_of(&ipam, &key("ns", "b")).1, REASON_ALREADY_ALLOCATED);
}

// A Service whose change breaks sharing (now a common port) loses the shared address and gets
// its own; the other keeps it.
#[test]
fn broken_sharing_is_released() {
    let mut pools = BTreeMap::from([("blue".to_string(), mk_pool("blue", &[NET1]))]);
    let mut services = BTreeMap::from([
        (key("ns", "a"), mk_svc("ns", "a").sharing("k").ports(&[80])),
        (
            key("ns", "b"),
            mk_svc("ns", "b").created(1).sharing("k").ports(&[443]),
        ),
    ]);
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    let ch = ipam.reset(
        LbIpamConfig::default(),
        pools.values().cloned(),
        services.values().cloned(),
    );
    settle(&mut ipam, &mut pools, &mut services, ch);
    assert_eq!(
        services[&key("ns", "b")].current_ingress,
        ips(&["192.0.2.0"])
    );
    let b = services[&key("ns", "b")].clone().ports(&[80]);
    let ch = ipam.apply_service(b);
    assert_eq!(
        ch.service(&key("ns", "b")).unwrap().ingress(),
        ips(&["192.0.2.1"])
    );
    assert!(ch.service(&key("ns", "a")).is_none());
}

// Kept shared addresses survive a restart for every holder.
#[test]
fn shared_addresses_survive_restart() {
    let a = mk_svc("ns", "a")
        .sharing("k")
        .ports(&[80])
        .ingress(&["192.0.2.3"]);
    let b = mk_svc("ns", "b")
        .created(1)
        .sharing("k")
        .ports(&[443])
        .ingress(&["192.0.2.3"]);
    let mut ipam = LbIpam::new(LbIpamConfig::default());
    ipam.reset(LbIpamConfig::default(), [mk_pool("blue", &[NET1])], [b, a]);
    assert_eq!(ingress_of(&ipam, &key("ns", "a")), ["192.0.2.3"]);
    assert_eq!(ingress_of(&ipam, &key("ns", "b")), ["192.0.2.3"]);
}

// When an address is freed, the first waiting Service takes it and later waiting Services of
// the same key join it in the same update.
#[test]
fn freed_address_is_shared_by_waiting_key_holders() {
    let mut ipam = ipam_with(&[mk_pool("one", &["192.0.2.0/32"])]);
    ipam.apply_service(
        mk_svc("ns", "s")
            .sharing("k1")
            .ports(&[80])
            .ingress(&["192.0.2.0"]),
    );
    ipam.apply_service(mk_svc("ns", "q").created(1).sharing("k2").ports(&[80]));
    ipam.apply_service(mk_svc("ns", "r").created(2).sharing("k2").ports(&[443]));
    assert_eq!(cond_of(&ipam, &key("ns", "r")).1, REASON_OUT_OF_IPS);
    let ch = ipam.delete_service(&key("ns", "s"));
    assert_eq!(
        ch.service(&key("ns", "q")).unwrap().ingress(),
        ips(&["192.0.2.0"])
    );
    assert_eq!(
        ch.service(&key("ns", "r")).unwrap().ingress(),
        ips(&["192.0.2.0"])
    );
    ipam.check_invariants();
}
