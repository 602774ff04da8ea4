//! Node routes: the pure diff between the routes an intent wants and the routes Cilia holds.

use std::collections::BTreeSet;

use cilia_model::RouteIntent;

/// Routing protocol number stamped on every route Cilia installs, so it only ever touches its own
/// routes (`ip route show proto 201`).
pub const RTPROT_CILIA: u8 = 201;

/// What must change in the kernel to go from `current` to `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDiff {
    pub add: Vec<RouteIntent>,
    pub del: Vec<RouteIntent>,
}

impl RouteDiff {
    /// Routes only in `desired` are added; routes only in `current` are deleted. A route whose
    /// destination stays but whose gateway changed is a delete plus an add.
    pub fn compute(desired: &BTreeSet<RouteIntent>, current: &BTreeSet<RouteIntent>) -> Self {
        RouteDiff {
            add: desired.difference(current).copied().collect(),
            del: current.difference(desired).copied().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.del.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn r(dst: &str, via: [u8; 4]) -> RouteIntent {
        RouteIntent {
            dst: dst.parse().unwrap(),
            via: Ipv4Addr::from(via),
        }
    }

    // Nothing changed: nothing is written (zero churn on resync).
    #[test]
    fn equal_sets_give_an_empty_diff() {
        let s: BTreeSet<_> = [r("10.244.0.0/24", [172, 18, 0, 2])].into();
        assert!(RouteDiff::compute(&s, &s).is_empty());
    }

    // A new gateway for the same CIDR replaces the route.
    #[test]
    fn changed_gateway_is_delete_plus_add() {
        let cur: BTreeSet<_> = [r("10.244.2.0/24", [172, 18, 0, 4])].into();
        let want: BTreeSet<_> = [r("10.244.2.0/24", [172, 18, 0, 9])].into();
        let d = RouteDiff::compute(&want, &cur);
        assert_eq!(d.add, vec![r("10.244.2.0/24", [172, 18, 0, 9])]);
        assert_eq!(d.del, vec![r("10.244.2.0/24", [172, 18, 0, 4])]);
    }

    fn arb_route() -> impl Strategy<Value = RouteIntent> {
        (0u8..8, 0u8..4).prop_map(|(n, g)| r(&format!("10.244.{n}.0/24"), [172, 18, 0, 2 + g]))
    }

    proptest! {
        // Applying the diff to `current` always yields exactly `desired`.
        #[test]
        fn applying_the_diff_reaches_desired(
            cur in proptest::collection::btree_set(arb_route(), 0..8),
            want in proptest::collection::btree_set(arb_route(), 0..8),
        ) {
            let d = RouteDiff::compute(&want, &cur);
            let mut state = cur.clone();
            for x in &d.del { prop_assert!(state.remove(x)); }
            for x in &d.add { prop_assert!(state.insert(*x)); }
            prop_assert_eq!(state, want);
        }
    }
}
