//! The intent stream's gRPC service and messages (generated from `proto/`), and pure conversions
//! between them and `cilia-model`. Every message from the wire is validated into typed values;
//! a bad field is refused with its name and value.

use std::net::Ipv4Addr;

use cilia_model::delta::{Delta, Entry, EntryKey, Kind};
use cilia_model::{NodeFacts, RouteIntent, RoutingMode};
use ipnet::Ipv4Net;

/// Generated code for package `cilia.intent.v1`.
pub mod v1 {
    tonic::include_proto!("cilia.intent.v1");
}

/// A field of a received message that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} = {value:?}: {reason}")]
pub struct ProtoError {
    pub field: String,
    pub value: String,
    pub reason: String,
}

fn bad(field: &str, value: impl Into<String>, reason: &str) -> ProtoError {
    ProtoError {
        field: field.to_string(),
        value: value.into(),
        reason: reason.to_string(),
    }
}

fn ip(field: &str, s: &str) -> Result<Ipv4Addr, ProtoError> {
    s.parse().map_err(|_| bad(field, s, "not an IPv4 address"))
}

fn cidr(field: &str, s: &str) -> Result<Ipv4Net, ProtoError> {
    let n: Ipv4Net = s.parse().map_err(|_| bad(field, s, "not an IPv4 CIDR"))?;
    if n.trunc() != n {
        return Err(bad(field, s, "host bits set"));
    }
    Ok(n)
}

fn opt_cidr(field: &str, s: &str) -> Result<Option<Ipv4Net>, ProtoError> {
    if s.is_empty() {
        Ok(None)
    } else {
        cidr(field, s).map(Some)
    }
}

pub fn kind_to_proto(k: Kind) -> v1::Kind {
    match k {
        Kind::Node => v1::Kind::Node,
        Kind::Route => v1::Kind::Route,
    }
}

pub fn kind_from_proto(field: &str, k: i32) -> Result<Kind, ProtoError> {
    match v1::Kind::try_from(k) {
        Ok(v1::Kind::Node) => Ok(Kind::Node),
        Ok(v1::Kind::Route) => Ok(Kind::Route),
        _ => Err(bad(field, k.to_string(), "unknown kind")),
    }
}

pub fn key_to_proto(k: &EntryKey) -> v1::EntryKey {
    v1::EntryKey {
        kind: kind_to_proto(k.kind) as i32,
        key: k.key.clone(),
    }
}

pub fn key_from_proto(field: &str, k: &v1::EntryKey) -> Result<EntryKey, ProtoError> {
    Ok(EntryKey {
        kind: kind_from_proto(&format!("{field}.kind"), k.kind)?,
        key: k.key.clone(),
    })
}

pub fn entry_to_proto(e: &Entry) -> v1::Entry {
    use v1::entry::Entry as E;
    let inner = match e {
        Entry::Node(f) => E::Node(v1::NodeFacts {
            node: f.node.clone(),
            node_ip: f.node_ip.to_string(),
            pod_cidr: f.pod_cidr.map(|c| c.to_string()).unwrap_or_default(),
            routing_mode: match f.routing_mode {
                RoutingMode::Native => v1::RoutingMode::Native,
                RoutingMode::Tunnel => v1::RoutingMode::Tunnel,
            } as i32,
            native_routing_cidr: f
                .native_routing_cidr
                .map(|c| c.to_string())
                .unwrap_or_default(),
        }),
        Entry::Route(r) => E::Route(v1::Route {
            dst: r.dst.to_string(),
            via: r.via.to_string(),
        }),
    };
    v1::Entry { entry: Some(inner) }
}

/// Validates a received entry; `field` names where it sat (e.g. `delta.upserts[3]`).
pub fn entry_from_proto(field: &str, e: &v1::Entry) -> Result<Entry, ProtoError> {
    use v1::entry::Entry as E;
    match &e.entry {
        None => Err(bad(field, "", "empty entry")),
        Some(E::Node(f)) => {
            if f.node.is_empty() {
                return Err(bad(&format!("{field}.node.node"), "", "node name is empty"));
            }
            Ok(Entry::Node(NodeFacts {
                node: f.node.clone(),
                node_ip: ip(&format!("{field}.node.node_ip"), &f.node_ip)?,
                pod_cidr: opt_cidr(&format!("{field}.node.pod_cidr"), &f.pod_cidr)?,
                routing_mode: match v1::RoutingMode::try_from(f.routing_mode) {
                    Ok(v1::RoutingMode::Native) => RoutingMode::Native,
                    Ok(v1::RoutingMode::Tunnel) => RoutingMode::Tunnel,
                    _ => {
                        return Err(bad(
                            &format!("{field}.node.routing_mode"),
                            f.routing_mode.to_string(),
                            "unknown routing mode",
                        ));
                    }
                },
                native_routing_cidr: opt_cidr(
                    &format!("{field}.node.native_routing_cidr"),
                    &f.native_routing_cidr,
                )?,
            }))
        }
        Some(E::Route(r)) => Ok(Entry::Route(RouteIntent {
            dst: cidr(&format!("{field}.route.dst"), &r.dst)?,
            via: ip(&format!("{field}.route.via"), &r.via)?,
        })),
    }
}

pub fn delta_to_proto(version: u64, base_version: u64, d: &Delta) -> v1::Delta {
    v1::Delta {
        version,
        base_version,
        upserts: d.upserts.iter().map(entry_to_proto).collect(),
        deletes: d.deletes.iter().map(key_to_proto).collect(),
    }
}

pub fn delta_from_proto(d: &v1::Delta) -> Result<Delta, ProtoError> {
    Ok(Delta {
        upserts: d
            .upserts
            .iter()
            .enumerate()
            .map(|(i, e)| entry_from_proto(&format!("delta.upserts[{i}]"), e))
            .collect::<Result<_, _>>()?,
        deletes: d
            .deletes
            .iter()
            .enumerate()
            .map(|(i, k)| key_from_proto(&format!("delta.deletes[{i}]"), k))
            .collect::<Result<_, _>>()?,
    })
}

pub fn snapshot_to_proto(version: u64, intent: &cilia_model::NodeIntent) -> v1::Snapshot {
    v1::Snapshot {
        version,
        entries: intent.entries().values().map(entry_to_proto).collect(),
    }
}

pub fn snapshot_from_proto(s: &v1::Snapshot) -> Result<cilia_model::NodeIntent, ProtoError> {
    let entries: Vec<Entry> = s
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| entry_from_proto(&format!("snapshot.entries[{i}]"), e))
        .collect::<Result<_, _>>()?;
    cilia_model::NodeIntent::from_entries(&entries)
        .map_err(|e| bad("snapshot.entries", "", &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            node: "worker".into(),
            node_ip: Ipv4Addr::new(172, 18, 0, 3),
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            routing_mode: RoutingMode::Native,
            native_routing_cidr: Some("10.244.0.0/16".parse().unwrap()),
        }
    }

    proptest! {
        // Every entry survives the wire unchanged.
        #[test]
        fn entries_round_trip(n in 0u8..=255, g in 1u8..=254, len in 8u8..=32) {
            let dst = Ipv4Net::new(Ipv4Addr::new(10, n, 0, 0), len).unwrap().trunc();
            let e = Entry::Route(RouteIntent { dst, via: Ipv4Addr::new(172, 18, 0, g) });
            prop_assert_eq!(entry_from_proto("e", &entry_to_proto(&e)).unwrap(), e);
        }
    }

    #[test]
    fn node_facts_round_trip_including_absent_cidrs() {
        let mut f = facts();
        for _ in 0..2 {
            let e = Entry::Node(f.clone());
            assert_eq!(entry_from_proto("e", &entry_to_proto(&e)).unwrap(), e);
            f.pod_cidr = None;
            f.native_routing_cidr = None;
        }
    }

    // A malformed message names the field and the value; nothing panics.
    #[test]
    fn bad_fields_are_named() {
        let d = v1::Delta {
            version: 2,
            base_version: 1,
            upserts: vec![v1::Entry {
                entry: Some(v1::entry::Entry::Route(v1::Route {
                    dst: "10.244.1.7/24".into(),
                    via: "172.18.0.3".into(),
                })),
            }],
            deletes: vec![],
        };
        let e = delta_from_proto(&d).unwrap_err();
        assert_eq!(e.field, "delta.upserts[0].route.dst");
        assert_eq!(e.value, "10.244.1.7/24");
        assert!(e.to_string().contains("host bits set"), "{e}");

        let d = v1::Delta {
            version: 2,
            base_version: 1,
            upserts: vec![v1::Entry { entry: None }],
            deletes: vec![],
        };
        assert_eq!(delta_from_proto(&d).unwrap_err().field, "delta.upserts[0]");
        let d = v1::Delta {
            version: 2,
            base_version: 1,
            upserts: vec![],
            deletes: vec![v1::EntryKey {
                kind: 99,
                key: "x".into(),
            }],
        };
        let e = delta_from_proto(&d).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.value.as_str()),
            ("delta.deletes[0].kind", "99")
        );
        let via = v1::Entry {
            entry: Some(v1::entry::Entry::Route(v1::Route {
                dst: "10.0.0.0/8".into(),
                via: "nope".into(),
            })),
        };
        assert_eq!(
            entry_from_proto("x", &via).unwrap_err().field,
            "x.route.via"
        );
    }

    // A snapshot carries the whole intent and rebuilds it exactly.
    #[test]
    fn snapshot_round_trips() {
        let intent = cilia_model::NodeIntent::from_facts(
            facts(),
            [RouteIntent {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: Ipv4Addr::new(172, 18, 0, 4),
            }]
            .into(),
        );
        assert_eq!(
            snapshot_from_proto(&snapshot_to_proto(7, &intent)).unwrap(),
            intent
        );
        let empty = v1::Snapshot {
            version: 1,
            entries: vec![],
        };
        assert!(
            snapshot_from_proto(&empty)
                .unwrap_err()
                .to_string()
                .contains("no node entry")
        );
    }
}
