//! A `NodeIntent` as keyed entries, and the deltas between two intents: what the intent stream
//! sends. `apply(a, diff(a, b)) == b` for any two intents of one node (property-tested).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::intent::{NodeFacts, NodeIntent, RouteIntent};

/// The kinds of entries an intent is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The node's own facts and datapath settings (one entry, key "").
    Node,
    /// A route to another node's pod CIDR (key: the CIDR).
    Route,
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
        }
    }
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
        for r in &self.routes {
            let e = Entry::Route(*r);
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
        for e in entries {
            match e {
                Entry::Node(f) => facts = Some(f.clone()),
                Entry::Route(r) => {
                    routes.insert(*r);
                }
            }
        }
        let f = facts.ok_or(DeltaError::MissingNode)?;
        Ok(NodeIntent::from_facts(f, routes))
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
/// route sets side by side so that large intents cost no allocation per unchanged entry.
pub fn diff(old: &NodeIntent, new: &NodeIntent) -> Delta {
    use std::cmp::Ordering;
    let mut d = Delta::default();
    let facts = new.facts();
    if old.facts() != facts {
        d.upserts.push(Entry::Node(facts));
    }
    let (mut a, mut b) = (routes_by_dst(old).peekable(), routes_by_dst(new).peekable());
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
    // Key order (kind, then key text), as a walk over the keyed entries gives.
    d.upserts.sort_by_cached_key(Entry::key);
    d.deletes.sort();
    d
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
    for k in &delta.deletes {
        match k.kind {
            Kind::Node if k.key.is_empty() => facts = None,
            Kind::Node => {}
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
        }
    }
    let f = facts.ok_or(DeltaError::MissingNode)?;
    Ok(NodeIntent::from_facts(f, routes))
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

    /// Intents that may even hold two routes to one destination (which `node_intent` never makes).
    fn arb_loose_intent() -> impl Strategy<Value = NodeIntent> {
        (
            proptest::collection::btree_set((0u8..12, 2u8..6), 0..10),
            arb_intent(),
        )
            .prop_map(|(routes, base)| {
                NodeIntent::from_facts(
                    base.facts(),
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
        b.routes.insert(r);
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
