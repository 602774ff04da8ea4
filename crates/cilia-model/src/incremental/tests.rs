use super::*;
use crate::intent::node_intent;
use crate::service::Protocol;
use crate::testgen::*;
use proptest::prelude::*;

/// Every node's kept intent equals a fresh `node_intent`, and no other node has one.
fn assert_fresh(ci: &ClusterIntents, c: &ClusterState) -> Result<(), TestCaseError> {
    let names: BTreeSet<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
    prop_assert_eq!(
        ci.intents()
            .keys()
            .map(String::as_str)
            .collect::<BTreeSet<_>>(),
        names.clone()
    );
    for n in names {
        prop_assert_eq!(
            &**ci.intent(n).unwrap(),
            &node_intent(c, n).unwrap(),
            "node {}",
            n
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    // Any sequence of cluster states, applied one after another, leaves every node's intent equal
    // to one computed from scratch; the nodes reported changed are exactly those whose intent did.
    #[test]
    fn incremental_equals_fresh(states in proptest::collection::vec(arb_cluster(), 1..8)) {
        let mut ci = ClusterIntents::new();
        let mut before: BTreeMap<String, NodeIntent> = BTreeMap::new();
        for c in &states {
            let ch = ci.update(c);
            assert_fresh(&ci, c)?;
            let now: BTreeMap<String, NodeIntent> =
                ci.intents().iter().map(|(k, v)| (k.clone(), (**v).clone())).collect();
            let changed: Vec<String> = now
                .iter()
                .filter(|(k, v)| before.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .collect();
            prop_assert_eq!(ch.nodes, changed);
            before = now;
        }
    }
}

/// `base` with the contents of `other`'s Services and slices at the same positions, under
/// `base`'s names: the lists keep their names and order, as a watcher updating objects in place
/// leaves them.
fn same_names(base: &ClusterState, other: &ClusterState) -> ClusterState {
    let mut c = other.clone();
    c.services = base.services.clone();
    for (s, o) in c.services.iter_mut().zip(&other.services) {
        *s = crate::service::ServiceInfo {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            ..o.clone()
        };
    }
    c.endpoint_slices = base.endpoint_slices.clone();
    for (s, o) in c.endpoint_slices.iter_mut().zip(&other.endpoint_slices) {
        *s = crate::service::EndpointSliceInfo {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            ..o.clone()
        };
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    // The same, when every state lists the same Services and slices in the same order and only
    // their contents change (the in-place comparison).
    #[test]
    fn in_place_changes_equal_fresh(states in proptest::collection::vec(arb_cluster(), 1..8)) {
        let mut ci = ClusterIntents::new();
        for c in &states {
            let c = same_names(&states[0], c);
            ci.update(&c);
            assert_fresh(&ci, &c)?;
        }
    }
}

fn big_cluster(nodes: usize, services: usize) -> ClusterState {
    let mut c = ClusterState {
        nodes: (0..nodes)
            .map(|i| {
                mk_node(
                    &format!("node-{i:04}"),
                    [172, 18, (i / 250) as u8, (i % 250 + 2) as u8],
                    Some(&format!("10.{}.{}.0/24", i / 256, i % 256)),
                )
            })
            .collect(),
        ..Default::default()
    };
    c.routing.auto_direct_node_routes = true;
    for s in 0..services {
        let ip = [10, 96, (s / 250) as u8, (s % 250) as u8];
        c.services.push(mk_service(
            "default",
            &format!("s{s}"),
            ip,
            &[("", Protocol::Tcp, 80)],
        ));
        c.endpoint_slices.push(mk_slice(
            "default",
            &format!("s{s}-a"),
            &format!("s{s}"),
            vec![ready([10, 0, 0, (s % 250) as u8], Some("node-0000"))],
            &[("", Protocol::Tcp, 8080)],
        ));
    }
    c
}

// One changed endpoint recomputes one Service, and every node shares that one new Service (and
// the one Service list): nothing is copied per node.
#[test]
fn one_endpoint_recomputes_one_service_shared_by_every_node() {
    let mut c = big_cluster(20, 200);
    let mut ci = ClusterIntents::new();
    let first = ci.update(&c);
    assert_eq!(first.nodes.len(), 20);
    assert_eq!(first.services_recomputed, 200);
    c.endpoint_slices[7].endpoints[0].addresses[0] = Ipv4Addr::new(10, 0, 1, 7);
    let ch = ci.update(&c);
    assert_eq!(ch.services_recomputed, 1);
    assert_eq!(ch.nodes.len(), 20);
    let a = ci.intent("node-0000").unwrap();
    let b = ci.intent("node-0013").unwrap();
    assert!(a.services.ptr_eq(&b.services));
    assert!(a.services.ptr_eq(ci.services()));
    // An unchanged state changes nothing.
    assert_eq!(ci.update(&c), Changes::default());
}

// A node that moves changes one route on every other node and its own facts; no Service is
// recomputed unless a backend sits on a node address.
#[test]
fn a_moved_node_patches_one_route_per_node() {
    let mut c = big_cluster(30, 10);
    let mut ci = ClusterIntents::new();
    ci.update(&c);
    let before = ci.intent("node-0005").unwrap().clone();
    c.nodes[1].internal_ip = Ipv4Addr::new(172, 31, 255, 1);
    let ch = ci.update(&c);
    assert_eq!(ch.nodes.len(), 30);
    // Node addresses changed: host-network flags may change, so every Service is looked at.
    assert_eq!(ch.services_recomputed, 10);
    let after = ci.intent("node-0005").unwrap();
    let d = crate::delta::diff(&before, after);
    assert_eq!(d.upserts.len(), 1, "{d:?}");
    assert!(
        after.services.ptr_eq(&before.services),
        "no Service changed"
    );
    for n in &c.nodes {
        assert_eq!(
            **ci.intent(&n.name).unwrap(),
            node_intent(&c, &n.name).unwrap()
        );
    }
}

// At bench scale one endpoint change is one Service on every node: prints what the update and
// the 1,000 diffs cost (a measurement aid, ignored by default: run with
// `cargo test --release -p cilia-model timing -- --ignored --nocapture`).
#[test]
#[ignore]
fn timing_of_one_endpoint_change_at_scale() {
    let mut c = big_cluster(1000, 10_000);
    let mut ci = ClusterIntents::new();
    let t = std::time::Instant::now();
    ci.update(&c);
    println!("first update: {:?}", t.elapsed());
    let before: Vec<Arc<NodeIntent>> = ci.intents().values().cloned().collect();
    for k in 0..5 {
        c.endpoint_slices[k * 7].endpoints[0].addresses[0] = Ipv4Addr::new(10, 1, 1, k as u8);
        let t = std::time::Instant::now();
        let ch = ci.update(&c);
        let upd = t.elapsed();
        let t = std::time::Instant::now();
        let mut n = 0;
        for (old, new) in before.iter().zip(ci.intents().values()) {
            n += crate::delta::diff(old, new).upserts.len();
        }
        assert_eq!((ch.nodes.len(), ch.services_recomputed), (1000, 1));
        assert_eq!(
            n,
            1000 * (k + 1),
            "each node differs from its first intent by k+1 Services"
        );
        println!(
            "update: {upd:?} ({} nodes), 1000 diffs: {:?} ({n} upserts)",
            ch.nodes.len(),
            t.elapsed()
        );
    }
}

// The generated clusters do exercise L2 announcements and policy (else the equivalence above
// would prove little about them).
#[test]
fn generated_clusters_announce_and_enforce() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut l2, mut pol) = (0, 0);
    for _ in 0..300 {
        let c = crate::testgen::arb_cluster()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let mut ci = ClusterIntents::new();
        ci.update(&c);
        l2 += ci
            .intents()
            .values()
            .filter(|i| i.l2.values().any(|a| !a.standby))
            .count();
        pol += ci
            .intents()
            .values()
            .filter(|i| !i.policy.endpoints.is_empty())
            .count();
    }
    assert!(l2 > 10, "intents with L2 announcements: {l2}");
    assert!(pol > 20, "intents with enforced endpoints: {pol}");
}
