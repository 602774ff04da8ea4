//! The digest of a `NodeIntent`: a fingerprint that stays equal for equal intents across processes,
//! restarts and machines. An agent states it in its hello, so an operator — even a restarted one whose
//! version numbers began again — can tell that the agent already holds the current intent.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::intent::NodeIntent;

/// SHA-256 over an intent's canonical form; shown and sent as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IntentDigest(pub [u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an intent digest (want 64 lowercase hex digits): {0:?}")]
pub struct DigestParseError(pub String);

impl NodeIntent {
    /// The intent's digest. Canonical form: the keyed entries in key order, each written as the JSON
    /// of `(key, entry)` followed by a newline. It depends on what the intent says, never on the
    /// order things were inserted or on the process that computes it. A change of the form (a new
    /// field, say) changes digests once: agents then get one snapshot each, and nothing else happens.
    pub fn digest(&self) -> IntentDigest {
        let mut h = Sha256::new();
        for (k, e) in self.entries() {
            serde_json::to_writer(&mut h, &(&k, &e)).expect("entries serialize");
            h.write_all(b"\n").expect("hashing does not fail");
        }
        IntentDigest(h.finalize().into())
    }
}

impl IntentDigest {
    /// The first 16 hex digits, for logs and status lines.
    pub fn short(&self) -> String {
        self.to_string()[..16].to_string()
    }
}

impl fmt::Display for IntentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for IntentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntentDigest({self})")
    }
}

impl FromStr for IntentDigest {
    type Err = DigestParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DigestParseError(s.chars().take(80).collect());
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(err());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            out[i] = (nibble(pair[0]).ok_or_else(err)? << 4) | nibble(pair[1]).ok_or_else(err)?;
        }
        Ok(IntentDigest(out))
    }
}

impl serde::Serialize for IntentDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IntentDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::RoutingMode;
    use crate::intent::{NodeFacts, RouteIntent};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn intent(routes: &[(u8, u8)]) -> NodeIntent {
        NodeIntent::from_facts(
            NodeFacts {
                node: "worker".into(),
                node_ip: Ipv4Addr::new(172, 18, 0, 3),
                pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
                routing_mode: RoutingMode::Native,
                native_routing_cidr: Some("10.244.0.0/16".parse().unwrap()),
            },
            routes
                .iter()
                .map(|(n, g)| RouteIntent {
                    dst: format!("10.244.{n}.0/24").parse().unwrap(),
                    via: Ipv4Addr::new(172, 18, 0, *g),
                })
                .collect(),
        )
    }

    // The digest of a fixed intent is pinned: a change here means every agent gets one snapshot
    // after an upgrade, so it must be deliberate. The value is the SHA-256 of the three lines
    // `[{"kind":"node","key":""},{"node":{…}}]`, `[{"kind":"route","key":"10.244.0.0/24"},…]`, …,
    // `[{"kind":"datapath","key":""},{"datapath":{…}}]` (compact JSON, one per entry,
    // newline-terminated): reproducible with any JSON and sha256 tool. (Changed once when Services
    // and the datapath entry joined the intent, and again
    // when the L2 timings joined the datapath entry.)
    #[test]
    fn digest_is_stable_across_releases() {
        assert_eq!(
            intent(&[(0, 2), (2, 4)]).digest().to_string(),
            "132c5a86f862ffd43df5b56b6b8d5b5db8618bd7a0b63847402c313cb6155ae1"
        );
    }

    proptest! {
        // Equal intents have equal digests, whatever order their routes were inserted in.
        #[test]
        fn insertion_order_does_not_matter(routes in proptest::collection::btree_map(0u8..32, 2u8..9, 0..12)) {
            let fwd: Vec<_> = routes.iter().map(|(a, b)| (*a, *b)).collect();
            let rev: Vec<_> = fwd.iter().rev().copied().collect();
            prop_assert_eq!(intent(&fwd).digest(), intent(&rev).digest());
        }

        // Different intents have different digests.
        #[test]
        fn different_intents_differ(
            a in proptest::collection::btree_map(0u8..32, 2u8..9, 0..8),
            b in proptest::collection::btree_map(0u8..32, 2u8..9, 0..8),
        ) {
            let (a, b): (Vec<_>, Vec<_>) = (a.into_iter().collect(), b.into_iter().collect());
            prop_assert_eq!(a == b, intent(&a).digest() == intent(&b).digest());
        }

        // The text form parses back to the same digest.
        #[test]
        fn hex_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let d = IntentDigest(bytes);
            prop_assert_eq!(d.to_string().parse::<IntentDigest>().unwrap(), d);
        }
    }

    // A changed node fact changes the digest too, not only routes.
    #[test]
    fn node_facts_are_part_of_the_digest() {
        let a = intent(&[(0, 2)]);
        let mut b = a.clone();
        b.routing_mode = RoutingMode::Tunnel;
        assert_ne!(a.digest(), b.digest());
    }

    // Services and datapath settings are part of the digest: an agent holding an intent with a stale
    // backend or a stale masquerade setting is not taken for current.
    #[test]
    fn services_and_datapath_are_part_of_the_digest() {
        use crate::service::{LbAlgorithm, LbMode, Protocol, ServiceIntent, ServiceName};
        let a = intent(&[(0, 2)]);
        let mut b = a.clone();
        b.datapath.masquerade = true;
        assert_ne!(a.digest(), b.digest());
        let svc = |port| ServiceIntent {
            name: ServiceName::new("default", "web"),
            frontends: vec![],
            backends: vec![crate::service::BackendIntent {
                addr: Ipv4Addr::new(10, 244, 1, 5),
                port,
                protocol: Protocol::Tcp,
                port_name: String::new(),
                node: None,
                terminating: false,
                host_network: false,
            }],
            external_traffic_local: false,
            internal_traffic_local: false,
            session_affinity_timeout: None,
            mode: LbMode::Snat,
            algorithm: LbAlgorithm::Random,
        };
        let (mut c, mut d) = (a.clone(), a.clone());
        c.services.insert(svc(80));
        d.services.insert(svc(8080));
        assert_ne!(a.digest(), c.digest());
        assert_ne!(c.digest(), d.digest());
        let mut c2 = a.clone();
        c2.services.insert(svc(80));
        assert_eq!(c.digest(), c2.digest());
    }

    #[test]
    fn malformed_digests_are_refused() {
        for s in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"0".repeat(66)] {
            assert!(s.parse::<IntentDigest>().is_err(), "{s:?}");
        }
        let d = IntentDigest([0xab; 32]);
        assert_eq!(d.short(), "abababababababab");
        assert_eq!(
            serde_json::from_str::<IntentDigest>(&serde_json::to_string(&d).unwrap()).unwrap(),
            d
        );
    }
}
