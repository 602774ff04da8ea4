//! A `NodeIntent` as keyed entries, and the deltas between two intents: what the intent stream
//! sends. `apply(a, diff(a, b)) == b` for any two intents of one node (property-tested).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::intent::{L2Map, NodeFacts, NodeIntent, RouteIntent};
use crate::l2::L2Announcement;
use crate::policy::{EndpointPolicy, EndpointRef, NodePolicy};
use crate::service::{DatapathConfig, ServiceIntent, ServiceMap, ServiceName};

/// The kinds of entries an intent is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The node's own facts and datapath settings (one entry, key "").
    Node,
    /// A route to another node's pod CIDR (key: the CIDR).
    Route,
    /// A Service's frontends and backends (key: `namespace/name`).
    Service,
    /// The datapath part of `cilium-config`: masquerading, load-balancing defaults, devices (one
    /// entry, key ""). Its own kind rather than part of the node facts, so a `helm upgrade` that
    /// flips one setting sends that entry alone, identical for every node. An intent without it
    /// holds the defaults.
    Datapath,
    /// A VIP this node announces on the LAN (key: the VIP).
    L2,
    /// The identity of the addresses under a prefix (key: the prefix).
    Identity,
    /// The policy table of one endpoint (key: `host`, or `pod/<namespace>/<name>`).
    PolicyEndpoint,
    /// The rule names policy entries refer to by index (one entry, key ""; absent when none).
    PolicyRules,
}

/// One identity of the node's ipcache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityEntry {
    pub cidr: ipnet::Ipv4Net,
    pub identity: u32,
}

/// One endpoint's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyEndpointEntry {
    pub endpoint: EndpointRef,
    pub policy: EndpointPolicy,
}

/// The key text of an endpoint.
pub fn endpoint_key(e: &EndpointRef) -> String {
    match e {
        EndpointRef::Host => "host".into(),
        EndpointRef::Pod(p) => format!("pod/{p}"),
    }
}

/// The endpoint a `Kind::PolicyEndpoint` key names, when it is in the exact form `endpoint_key`
/// gives.
pub fn endpoint_of_key(key: &str) -> Option<EndpointRef> {
    if key == "host" {
        return Some(EndpointRef::Host);
    }
    let p = key.strip_prefix("pod/")?;
    let (ns, name) = p.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .then(|| EndpointRef::Pod(p.to_string()))
}

/// Identifies one entry of an intent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryKey {
    pub kind: Kind,
    pub key: String,
}

/// One entry of an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Entry {
    Node(NodeFacts),
    Route(RouteIntent),
    /// Shared with the intent it came from: entries of 10,000 Services copy no Service.
    Service(Arc<ServiceIntent>),
    Datapath(DatapathConfig),
    L2(L2Announcement),
    Identity(IdentityEntry),
    PolicyEndpoint(PolicyEndpointEntry),
    PolicyRules(Vec<String>),
}

impl Entry {
    pub fn key(&self) -> EntryKey {
        match self {
            Entry::Node(_) => EntryKey {
                kind: Kind::Node,
                key: String::new(),
            },
            Entry::Route(r) => EntryKey {
                kind: Kind::Route,
                key: r.dst.to_string(),
            },
            Entry::Service(s) => EntryKey {
                kind: Kind::Service,
                key: s.name.to_string(),
            },
            Entry::Datapath(_) => EntryKey {
                kind: Kind::Datapath,
                key: String::new(),
            },
            Entry::L2(a) => EntryKey {
                kind: Kind::L2,
                key: a.vip.to_string(),
            },
            Entry::Identity(i) => EntryKey {
                kind: Kind::Identity,
                key: i.cidr.to_string(),
            },
            Entry::PolicyEndpoint(p) => EntryKey {
                kind: Kind::PolicyEndpoint,
                key: endpoint_key(&p.endpoint),
            },
            Entry::PolicyRules(_) => EntryKey {
                kind: Kind::PolicyRules,
                key: String::new(),
            },
        }
    }
}

/// The Service a `Kind::Service` key names, when it is in the exact form `entries()` gives it.
fn service_name_of_key(key: &str) -> Option<ServiceName> {
    let (ns, name) = key.split_once('/')?;
    let n = ServiceName::new(ns, name);
    (n.to_string() == key).then_some(n)
}

/// What changed between two intents of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub upserts: Vec<Entry>,
    pub deletes: Vec<EntryKey>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("delta for node {got:?} applied to the intent of node {want:?}")]
    WrongNode { want: String, got: String },
    #[error("intent has no node entry")]
    MissingNode,
}

impl NodeIntent {
    /// The intent as keyed entries.
    pub fn entries(&self) -> BTreeMap<EntryKey, Entry> {
        let mut m = BTreeMap::new();
        let node = Entry::Node(self.facts());
        m.insert(node.key(), node);
        for r in self.routes.iter() {
            let e = Entry::Route(*r);
            m.insert(e.key(), e);
        }
        for s in self.services.shared() {
            let e = Entry::Service(s.clone());
            m.insert(e.key(), e);
        }
        let dp = Entry::Datapath(self.datapath.clone());
        m.insert(dp.key(), dp);
        for a in self.l2.values() {
            let e = Entry::L2(a.clone());
            m.insert(e.key(), e);
        }
        for e in policy_entries(&self.policy) {
            m.insert(e.key(), e);
        }
        m
    }

    /// Rebuilds an intent from its entries.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Result<NodeIntent, DeltaError> {
        let mut facts = None;
        let mut routes = std::collections::BTreeSet::new();
        let mut services = Vec::new();
        let mut datapath = DatapathConfig::default();
        let mut l2 = L2Map::new();
        let mut policy = NodePolicy::default();
        for e in entries {
            match e {
                Entry::Node(f) => facts = Some(f.clone()),
                Entry::Route(r) => {
                    routes.insert(*r);
                }
                Entry::Service(s) => services.push(s.clone()),
                Entry::Datapath(d) => datapath = d.clone(),
                Entry::L2(a) => {
                    l2.insert(a.vip, a.clone());
                }
                other => put_policy(&mut policy, other),
            }
        }
        let f = facts.ok_or(DeltaError::MissingNode)?;
        let mut i = NodeIntent::from_facts(f, routes);
        i.services = services.into_iter().collect();
        i.datapath = datapath;
        i.l2 = Arc::new(l2);
        i.policy = Arc::new(policy);
        Ok(i)
    }
}

/// A node policy as keyed entries.
fn policy_entries(p: &NodePolicy) -> impl Iterator<Item = Entry> + '_ {
    let ids = p.ipcache.iter().map(|(cidr, id)| {
        Entry::Identity(IdentityEntry {
            cidr: *cidr,
            identity: *id,
        })
    });
    let eps = p.endpoints.iter().map(|(e, pol)| {
        Entry::PolicyEndpoint(PolicyEndpointEntry {
            endpoint: e.clone(),
            policy: pol.clone(),
        })
    });
    let rules = (!p.rules.is_empty()).then(|| Entry::PolicyRules(p.rules.clone()));
    ids.chain(eps).chain(rules)
}

/// Puts a policy entry into `p` (other kinds are not policy: ignored).
fn put_policy(p: &mut NodePolicy, e: &Entry) {
    match e {
        Entry::Identity(i) => {
            p.ipcache.insert(i.cidr, i.identity);
        }
        Entry::PolicyEndpoint(x) => {
            p.endpoints.insert(x.endpoint.clone(), x.policy.clone());
        }
        Entry::PolicyRules(r) => p.rules = r.clone(),
        _ => {}
    }
}

/// Upserts and deletes turning map `a` into map `b`.
fn diff_maps<K: Ord, V: PartialEq>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
    d: &mut Delta,
    key: impl Fn(&K) -> EntryKey,
    entry: impl Fn(&K, &V) -> Entry,
) {
    use std::cmp::Ordering;
    let (mut x, mut y) = (a.iter().peekable(), b.iter().peekable());
    loop {
        let ord = match (x.peek(), y.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(p), Some(q)) => p.0.cmp(q.0),
        };
        match ord {
            Ordering::Less => d.deletes.push(key(x.next().unwrap().0)),
            Ordering::Greater => {
                let (k, v) = y.next().unwrap();
                d.upserts.push(entry(k, v));
            }
            Ordering::Equal => {
                let ((_, v), (k, w)) = (x.next().unwrap(), y.next().unwrap());
                if v != w {
                    d.upserts.push(entry(k, w));
                }
            }
        }
    }
}

fn diff_l2(old: &Arc<L2Map>, new: &Arc<L2Map>, d: &mut Delta) {
    if Arc::ptr_eq(old, new) {
        return;
    }
    diff_maps(
        old,
        new,
        d,
        |vip| EntryKey {
            kind: Kind::L2,
            key: vip.to_string(),
        },
        |_, a| Entry::L2(a.clone()),
    );
}

fn diff_policy(old: &Arc<NodePolicy>, new: &Arc<NodePolicy>, d: &mut Delta) {
    if Arc::ptr_eq(old, new) || old == new {
        return;
    }
    diff_maps(
        &old.ipcache,
        &new.ipcache,
        d,
        |cidr| EntryKey {
            kind: Kind::Identity,
            key: cidr.to_string(),
        },
        |cidr, id| {
            Entry::Identity(IdentityEntry {
                cidr: *cidr,
                identity: *id,
            })
        },
    );
    diff_maps(
        &old.endpoints,
        &new.endpoints,
        d,
        |e| EntryKey {
            kind: Kind::PolicyEndpoint,
            key: endpoint_key(e),
        },
        |e, p| {
            Entry::PolicyEndpoint(PolicyEndpointEntry {
                endpoint: e.clone(),
                policy: p.clone(),
            })
        },
    );
    if old.rules != new.rules {
        if new.rules.is_empty() {
            d.deletes.push(EntryKey {
                kind: Kind::PolicyRules,
                key: String::new(),
            });
        } else {
            d.upserts.push(Entry::PolicyRules(new.rules.clone()));
        }
    }
}

/// An intent's routes as `entries()` keys them, by destination: of two routes to one destination
/// the later in order stands, as a keyed insert would leave it.
fn routes_by_dst(i: &NodeIntent) -> impl Iterator<Item = RouteIntent> + '_ {
    let mut it = i.routes.iter().peekable();
    std::iter::from_fn(move || {
        let mut r = *it.next()?;
        while let Some(n) = it.next_if(|n| n.dst == r.dst) {
            r = *n;
        }
        Some(r)
    })
}

/// The delta that turns `old` into `new`: the same as comparing `old.entries()` with
/// `new.entries()` key by key (upserts and deletes in key order), computed by walking both
/// route sets and both Service lists side by side so that large intents cost no allocation per
/// unchanged entry. Shared Services are compared by pointer first: two intents holding the same
/// `ServiceMap` cost nothing, and a Service computed once and shared costs no deep comparison.
pub fn diff(old: &NodeIntent, new: &NodeIntent) -> Delta {
    use std::cmp::Ordering;
    let mut d = Delta::default();
    let facts = new.facts();
    if old.facts() != facts {
        d.upserts.push(Entry::Node(facts));
    }
    // Equal route sets (the common case when a Service changed) are seen in one tight pass.
    let walk = if old.routes == new.routes {
        0
    } else {
        usize::MAX
    };
    let (mut a, mut b) = (
        routes_by_dst(old).take(walk).peekable(),
        routes_by_dst(new).take(walk).peekable(),
    );
    loop {
        let ord = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.dst.cmp(&y.dst),
        };
        match ord {
            Ordering::Less => d.deletes.push(Entry::Route(a.next().unwrap()).key()),
            Ordering::Greater => d.upserts.push(Entry::Route(b.next().unwrap())),
            Ordering::Equal => {
                let (x, y) = (a.next().unwrap(), b.next().unwrap());
                if x.via != y.via {
                    d.upserts.push(Entry::Route(y));
                }
            }
        }
    }
    diff_services(&old.services, &new.services, &mut d);
    if old.datapath != new.datapath {
        d.upserts.push(Entry::Datapath(new.datapath.clone()));
    }
    diff_l2(&old.l2, &new.l2, &mut d);
    diff_policy(&old.policy, &new.policy, &mut d);
    // Key order (kind, then key text), as a walk over the keyed entries gives.
    d.upserts.sort_by_cached_key(Entry::key);
    d.deletes.sort();
    d
}

fn diff_services(old: &ServiceMap, new: &ServiceMap, d: &mut Delta) {
    use std::cmp::Ordering;
    if old.ptr_eq(new) {
        return;
    }
    // Skip the shared prefix and suffix in tight loops: after one Service changed, that is all
    // but one entry of 10,000.
    let (mut x, mut y) = (old.shared(), new.shared());
    let head = x
        .iter()
        .zip(y)
        .take_while(|(p, q)| Arc::ptr_eq(p, q))
        .count();
    (x, y) = (&x[head..], &y[head..]);
    let tail = x
        .iter()
        .rev()
        .zip(y.iter().rev())
        .take_while(|(p, q)| Arc::ptr_eq(p, q))
        .count();
    (x, y) = (&x[..x.len() - tail], &y[..y.len() - tail]);
    let (mut a, mut b) = (x.iter().peekable(), y.iter().peekable());
    loop {
        let ord = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            // One shared Service: equal, and no name to compare (most of 10,000 are).
            (Some(x), Some(y)) if Arc::ptr_eq(x, y) => {
                a.next();
                b.next();
                continue;
            }
            (Some(x), Some(y)) => x.name.cmp(&y.name),
        };
        match ord {
            Ordering::Less => d.deletes.push(EntryKey {
                kind: Kind::Service,
                key: a.next().unwrap().name.to_string(),
            }),
            Ordering::Greater => d.upserts.push(Entry::Service(b.next().unwrap().clone())),
            Ordering::Equal => {
                let (x, y) = (a.next().unwrap(), b.next().unwrap());
                if x != y {
                    d.upserts.push(Entry::Service(y.clone()));
                }
            }
        }
    }
}

/// Applies `delta` to `intent`: the same as applying it to `intent.entries()` and rebuilding,
/// computed on the route set directly (a delta of k entries costs O(k log n), plus one copy).
pub fn apply(intent: &NodeIntent, delta: &Delta) -> Result<NodeIntent, DeltaError> {
    let mut facts = Some(intent.facts());
    let mut routes: std::collections::BTreeSet<RouteIntent> = routes_by_dst(intent).collect();
    let remove_dst = |routes: &mut std::collections::BTreeSet<RouteIntent>, dst: ipnet::Ipv4Net| {
        let lo = RouteIntent {
            dst,
            via: std::net::Ipv4Addr::UNSPECIFIED,
        };
        let hi = RouteIntent {
            dst,
            via: std::net::Ipv4Addr::BROADCAST,
        };
        let doomed: Vec<RouteIntent> = routes.range(lo..=hi).copied().collect();
        for r in doomed {
            routes.remove(&r);
        }
    };
    let mut services = intent.services.clone();
    let mut datapath = Some(intent.datapath.clone());
    // Copied only when the delta touches them.
    let mut l2: Option<L2Map> = None;
    let mut policy: Option<NodePolicy> = None;
    for k in &delta.deletes {
        match k.kind {
            Kind::L2 => {
                if let Ok(vip) = k.key.parse::<std::net::Ipv4Addr>()
                    && vip.to_string() == k.key
                {
                    l2.get_or_insert_with(|| (*intent.l2).clone()).remove(&vip);
                }
            }
            Kind::Identity => {
                if let Ok(cidr) = k.key.parse::<ipnet::Ipv4Net>()
                    && cidr.to_string() == k.key
                {
                    policy
                        .get_or_insert_with(|| (*intent.policy).clone())
                        .ipcache
                        .remove(&cidr);
                }
            }
            Kind::PolicyEndpoint => {
                if let Some(e) = endpoint_of_key(&k.key) {
                    policy
                        .get_or_insert_with(|| (*intent.policy).clone())
                        .endpoints
                        .remove(&e);
                }
            }
            Kind::PolicyRules if k.key.is_empty() => {
                policy
                    .get_or_insert_with(|| (*intent.policy).clone())
                    .rules
                    .clear();
            }
            Kind::PolicyRules => {}
            Kind::Node if k.key.is_empty() => facts = None,
            Kind::Node => {}
            Kind::Datapath if k.key.is_empty() => datapath = None,
            Kind::Datapath => {}
            Kind::Service => {
                if let Some(n) = service_name_of_key(&k.key) {
                    services.remove(&n);
                }
            }
            // A key names a route only in the exact text `entries()` gives it.
            Kind::Route => {
                if let Ok(dst) = k.key.parse::<ipnet::Ipv4Net>()
                    && dst.to_string() == k.key
                {
                    remove_dst(&mut routes, dst);
                }
            }
        }
    }
    for e in &delta.upserts {
        match e {
            Entry::Node(f) => {
                if f.node != intent.node {
                    return Err(DeltaError::WrongNode {
                        want: intent.node.clone(),
                        got: f.node.clone(),
                    });
                }
                facts = Some(f.clone());
            }
            Entry::Route(r) => {
                remove_dst(&mut routes, r.dst);
                routes.insert(*r);
            }
            Entry::Service(s) => {
                services.insert(s.clone());
            }
            Entry::Datapath(dp) => datapath = Some(dp.clone()),
            Entry::L2(a) => {
                l2.get_or_insert_with(|| (*intent.l2).clone())
                    .insert(a.vip, a.clone());
            }
            other => put_policy(
                policy.get_or_insert_with(|| (*intent.policy).clone()),
                other,
            ),
        }
    }
    let f = facts.ok_or(DeltaError::MissingNode)?;
    let mut i = NodeIntent::from_facts(f, routes);
    i.services = services;
    i.datapath = datapath.unwrap_or_default();
    i.l2 = l2.map(Arc::new).unwrap_or_else(|| intent.l2.clone());
    i.policy = policy
        .map(Arc::new)
        .unwrap_or_else(|| intent.policy.clone());
    Ok(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::RoutingMode;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use std::net::Ipv4Addr;

    fn arb_intent() -> impl Strategy<Value = NodeIntent> {
        (
            // Routes are unique by destination, as node_intent makes them.
            proptest::collection::btree_map(0u8..16, 2u8..8, 0..10),
            any::<bool>(),
            proptest::option::of(0u8..4),
        )
            .prop_map(|(routes, tunnel, cidr)| {
                NodeIntent::from_facts(
                    NodeFacts {
                        node: "worker".into(),
                        node_ip: Ipv4Addr::new(172, 18, 0, 3),
                        pod_cidr: cidr.map(|c| format!("10.244.{c}.0/24").parse().unwrap()),
                        routing_mode: if tunnel {
                            RoutingMode::Tunnel
                        } else {
                            RoutingMode::Native
                        },
                        native_routing_cidr: None,
                    },
                    routes
                        .into_iter()
                        .map(|(n, g)| RouteIntent {
                            dst: format!("10.244.{n}.0/24").parse().unwrap(),
                            via: Ipv4Addr::new(172, 18, 0, g),
                        })
                        .collect(),
                )
            })
    }

    proptest! {
        // Any intent, patched with the delta to any other, equals that other.
        #[test]
        fn delta_then_apply_reaches_the_new_intent(a in arb_intent(), b in arb_intent()) {
            let d = diff(&a, &b);
            prop_assert_eq!(apply(&a, &d).unwrap(), b);
        }

        // A chain of deltas equals a fresh snapshot of the last intent.
        #[test]
        fn chained_deltas_equal_a_snapshot(chain in proptest::collection::vec(arb_intent(), 1..6)) {
            let mut held = chain[0].clone();
            for w in chain.windows(2) {
                held = apply(&held, &diff(&w[0], &w[1])).unwrap();
            }
            prop_assert_eq!(&held, chain.last().unwrap());
        }

        // Equal intents give an empty delta: nothing is sent.
        #[test]
        fn equal_intents_send_nothing(a in arb_intent()) {
            prop_assert!(diff(&a, &a).is_empty());
        }
    }

    /// The definitions `diff` and `apply` must agree with: through the keyed entries.
    fn diff_by_entries(old: &NodeIntent, new: &NodeIntent) -> Delta {
        let (a, b) = (old.entries(), new.entries());
        let mut d = Delta::default();
        for (k, v) in &b {
            if a.get(k) != Some(v) {
                d.upserts.push(v.clone());
            }
        }
        for k in a.keys() {
            if !b.contains_key(k) {
                d.deletes.push(k.clone());
            }
        }
        d
    }

    fn apply_by_entries(intent: &NodeIntent, delta: &Delta) -> Result<NodeIntent, DeltaError> {
        let mut m = intent.entries();
        for k in &delta.deletes {
            m.remove(k);
        }
        for e in &delta.upserts {
            if let Entry::Node(f) = e
                && f.node != intent.node
            {
                return Err(DeltaError::WrongNode {
                    want: intent.node.clone(),
                    got: f.node.clone(),
                });
            }
            m.insert(e.key(), e.clone());
        }
        NodeIntent::from_entries(m.values())
    }

    /// Intents that may even hold two routes to one destination (which `node_intent` never makes),
    /// with the Services and datapath settings of some cluster.
    fn arb_loose_intent() -> impl Strategy<Value = NodeIntent> {
        (
            proptest::collection::btree_set((0u8..12, 2u8..6), 0..10),
            arb_intent(),
            crate::testgen::arb_cluster(),
        )
            .prop_map(|(routes, base, cluster)| {
                let mut i = NodeIntent::from_facts(
                    base.facts(),
                    routes
                        .into_iter()
                        .map(|(n, g)| RouteIntent {
                            dst: format!("10.244.{n}.0/24").parse().unwrap(),
                            via: Ipv4Addr::new(172, 18, 0, g),
                        })
                        .collect(),
                );
                i.services = crate::service::services(&cluster);
                i.datapath = cluster.datapath;
                i
            })
    }

    fn arb_delta() -> impl Strategy<Value = Delta> {
        let key = prop_oneof![
            (0u8..12).prop_map(|n| EntryKey {
                kind: Kind::Route,
                key: format!("10.244.{n}.0/24")
            }),
            Just(EntryKey {
                kind: Kind::Route,
                key: "010.244.1.0/24".into()
            }),
            Just(EntryKey {
                kind: Kind::Route,
                key: "junk".into()
            }),
            Just(EntryKey {
                kind: Kind::Node,
                key: String::new()
            }),
            Just(EntryKey {
                kind: Kind::Node,
                key: "x".into()
            }),
            (0u8..2, 0u8..4).prop_map(|(ns, n)| EntryKey {
                kind: Kind::Service,
                key: format!("ns{ns}/svc{n}")
            }),
            Just(EntryKey {
                kind: Kind::Service,
                key: "no-slash".into()
            }),
            Just(EntryKey {
                kind: Kind::Datapath,
                key: String::new()
            }),
            Just(EntryKey {
                kind: Kind::Datapath,
                key: "x".into()
            }),
        ];
        let entry = prop_oneof![
            (0u8..12, 2u8..6).prop_map(|(n, g)| Entry::Route(RouteIntent {
                dst: format!("10.244.{n}.0/24").parse().unwrap(),
                via: Ipv4Addr::new(172, 18, 0, g),
            })),
            arb_intent().prop_map(|i| Entry::Node(i.facts())),
            arb_intent().prop_map(|i| {
                let mut f = i.facts();
                f.node = "intruder".into();
                Entry::Node(f)
            }),
            arb_loose_intent().prop_filter_map("has services", |i| {
                i.services.shared().first().cloned().map(Entry::Service)
            }),
            arb_loose_intent().prop_map(|i| Entry::Datapath(i.datapath)),
        ];
        (
            proptest::collection::vec(entry, 0..5),
            proptest::collection::vec(key, 0..4),
        )
            .prop_map(|(upserts, deletes)| Delta { upserts, deletes })
    }

    proptest! {
        // diff and apply are exactly the keyed-entries definitions, also on odd input.
        #[test]
        fn diff_and_apply_match_their_definitions(
            a in arb_loose_intent(),
            b in arb_loose_intent(),
            d in arb_delta(),
        ) {
            prop_assert_eq!(diff(&a, &b), diff_by_entries(&a, &b));
            prop_assert_eq!(apply(&a, &d), apply_by_entries(&a, &d));
            prop_assert_eq!(apply(&a, &diff(&a, &b)), apply_by_entries(&a, &diff_by_entries(&a, &b)));
        }
    }

    proptest! {
        // Any sequence of cluster changes, sent as deltas (between what the operator's incremental
        // index computed) and applied to the first snapshot, equals a fresh snapshot of the last
        // state — Services and datapath settings included — on every node.
        #[test]
        fn cluster_changes_as_deltas_equal_a_fresh_snapshot(
            states in proptest::collection::vec(crate::testgen::arb_cluster(), 1..8),
        ) {
            let mut index = crate::incremental::ClusterIntents::new();
            let mut sent: BTreeMap<String, NodeIntent> = BTreeMap::new();
            let mut held: BTreeMap<String, NodeIntent> = BTreeMap::new();
            for c in &states {
                index.update(c);
                for (node, now) in index.intents() {
                    let h = match (held.get(node), sent.get(node)) {
                        (Some(h), Some(s)) => apply(h, &diff(s, now)).unwrap(),
                        _ => (**now).clone(),
                    };
                    prop_assert_eq!(&h, &crate::intent::node_intent(c, node).unwrap());
                    prop_assert_eq!(h.digest(), now.digest());
                    held.insert(node.clone(), h);
                    sent.insert(node.clone(), (**now).clone());
                }
            }
        }
    }

    // One changed Service travels as one upsert; an unchanged shared one is not even compared.
    #[test]
    fn a_changed_service_is_one_upsert() {
        use crate::service::Protocol;
        use crate::testgen::*;
        let mut c = crate::ClusterState {
            nodes: vec![mk_node("worker", [172, 18, 0, 3], Some("10.244.1.0/24"))],
            ..Default::default()
        };
        for n in ["a", "b", "c"] {
            c.services.push(mk_service(
                "default",
                n,
                [10, 96, 0, 1],
                &[("", Protocol::Tcp, 80)],
            ));
        }
        let a = crate::intent::node_intent(&c, "worker").unwrap();
        c.services[1].session_affinity_timeout = Some(30);
        let mut b = crate::intent::node_intent(&c, "worker").unwrap();
        let d = diff(&a, &b);
        assert_eq!(d.upserts.len(), 1);
        assert_eq!(d.upserts[0].key().key, "default/b");
        c.services.remove(0);
        c.datapath.masquerade = true;
        b = crate::intent::node_intent(&c, "worker").unwrap();
        let d = diff(&a, &b);
        assert_eq!(
            d.deletes,
            vec![EntryKey {
                kind: Kind::Service,
                key: "default/a".into()
            }]
        );
        assert_eq!(
            d.upserts.iter().map(|e| e.key().kind).collect::<Vec<_>>(),
            vec![Kind::Service, Kind::Datapath]
        );
        assert_eq!(apply(&a, &d).unwrap(), b);
    }

    // Only the changed route travels.
    #[test]
    fn a_changed_gateway_is_one_upsert() {
        let mut rng = proptest::test_runner::TestRunner::deterministic();
        let a = arb_intent().new_tree(&mut rng).unwrap().current();
        let mut b = a.clone();
        let r = RouteIntent {
            dst: "10.244.99.0/24".parse().unwrap(),
            via: Ipv4Addr::new(172, 18, 0, 9),
        };
        std::sync::Arc::make_mut(&mut b.routes).insert(r);
        let d = diff(&a, &b);
        assert_eq!(d.upserts, vec![Entry::Route(r)]);
        assert!(d.deletes.is_empty());
    }

    // A delta naming another node is refused, and the held intent is untouched.
    #[test]
    fn delta_for_another_node_is_refused() {
        let mut rng = proptest::test_runner::TestRunner::deterministic();
        let a = arb_intent().new_tree(&mut rng).unwrap().current();
        let mut f = a.facts();
        f.node = "intruder".into();
        let d = Delta {
            upserts: vec![Entry::Node(f)],
            deletes: vec![],
        };
        assert!(matches!(apply(&a, &d), Err(DeltaError::WrongNode { .. })));
    }
}
