//! The intent stream's gRPC service and messages (generated from `proto/`), and pure conversions
//! between them and `cilia-model`. Every message from the wire is validated into typed values;
//! a bad field is refused with its name and value. Message-level conversions (`agent_message_*`,
//! `update_*`) are what the operator and the agent use; entry-level ones are their building blocks.

use std::net::Ipv4Addr;

use cilia_model::delta::{Delta, Entry, EntryKey, Kind};
use cilia_model::{IntentDigest, NodeFacts, RouteIntent, RoutingMode};
use ipnet::Ipv4Net;

pub mod tls;

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
    let mut seen = std::collections::BTreeSet::new();
    let mut entries = Vec::with_capacity(s.entries.len());
    for (i, e) in s.entries.iter().enumerate() {
        let field = format!("snapshot.entries[{i}]");
        let e = entry_from_proto(&field, e)?;
        let k = e.key();
        if !seen.insert(k.clone()) {
            return Err(bad(&field, k.key, "duplicate key"));
        }
        entries.push(e);
    }
    cilia_model::NodeIntent::from_entries(&entries)
        .map_err(|e| bad("snapshot.entries", "", &e.to_string()))
}

/// The largest version either side accepts; far beyond any real count, and it leaves room to add.
pub const MAX_VERSION: u64 = 1 << 62;
const MAX_AGENT_VERSION_LEN: usize = 128;
const MAX_REASON_LEN: usize = 4096;

/// A Kubernetes Node name: a DNS subdomain (RFC 1123), as the API server enforces.
pub fn node_name(field: &str, s: &str) -> Result<String, ProtoError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(bad(
            field,
            truncated(s),
            "not a node name (RFC 1123 subdomain)",
        ))
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

fn version(field: &str, v: u64) -> Result<u64, ProtoError> {
    match v {
        0 => Err(bad(field, "0", "versions start at 1")),
        v if v > MAX_VERSION => Err(bad(field, v.to_string(), "version out of range")),
        v => Ok(v),
    }
}

/// A validated `NodeHello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node: String,
    pub agent_version: String,
    /// The version and digest of the intent the agent holds; `None` when it holds nothing.
    pub held: Option<(u64, IntentDigest)>,
}

/// What an agent may send, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMessage {
    Hello(Hello),
    Ack { version: u64 },
    Heartbeat { unix_millis: u64 },
    Resync { reason: String },
}

pub fn agent_message_to_proto(m: &AgentMessage) -> v1::AgentMessage {
    use v1::agent_message::Msg;
    let msg = match m {
        AgentMessage::Hello(h) => Msg::Hello(v1::NodeHello {
            node: h.node.clone(),
            agent_version: h.agent_version.clone(),
            last_applied_version: h.held.map(|(v, _)| v).unwrap_or(0),
            intent_digest: h.held.map(|(_, d)| d.to_string()).unwrap_or_default(),
        }),
        AgentMessage::Ack { version } => Msg::Ack(v1::Ack { version: *version }),
        AgentMessage::Heartbeat { unix_millis } => Msg::Heartbeat(v1::Heartbeat {
            unix_millis: *unix_millis,
            intent_version: 0,
        }),
        AgentMessage::Resync { reason } => Msg::Resync(v1::ResyncRequest {
            reason: reason.clone(),
        }),
    };
    v1::AgentMessage { msg: Some(msg) }
}

/// Validates what an agent sent; the error names the offending field (`hello.node`, `ack.version`…).
pub fn agent_message_from_proto(m: &v1::AgentMessage) -> Result<AgentMessage, ProtoError> {
    use v1::agent_message::Msg;
    match &m.msg {
        None => Err(bad("msg", "", "empty message")),
        Some(Msg::Hello(h)) => {
            let node = node_name("hello.node", &h.node)?;
            if h.agent_version.len() > MAX_AGENT_VERSION_LEN {
                return Err(bad(
                    "hello.agent_version",
                    truncated(&h.agent_version),
                    "too long",
                ));
            }
            let held = match (h.last_applied_version, h.intent_digest.as_str()) {
                (0, "") => None,
                (0, _) => {
                    return Err(bad(
                        "hello.last_applied_version",
                        "0",
                        "an agent stating a digest holds a version",
                    ));
                }
                (_, "") => {
                    return Err(bad(
                        "hello.intent_digest",
                        "",
                        "an agent holding a version states its digest",
                    ));
                }
                (v, d) => Some((
                    version("hello.last_applied_version", v)?,
                    d.parse::<IntentDigest>().map_err(|_| {
                        bad("hello.intent_digest", truncated(d), "not 64 hex digits")
                    })?,
                )),
            };
            Ok(AgentMessage::Hello(Hello {
                node,
                agent_version: h.agent_version.clone(),
                held,
            }))
        }
        Some(Msg::Ack(a)) => Ok(AgentMessage::Ack {
            version: version("ack.version", a.version)?,
        }),
        Some(Msg::Heartbeat(h)) => Ok(AgentMessage::Heartbeat {
            unix_millis: h.unix_millis,
        }),
        Some(Msg::Resync(r)) => {
            if r.reason.len() > MAX_REASON_LEN {
                return Err(bad("resync.reason", truncated(&r.reason), "too long"));
            }
            Ok(AgentMessage::Resync {
                reason: r.reason.clone(),
            })
        }
    }
}

/// What the operator may send, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Snapshot {
        version: u64,
        intent: cilia_model::NodeIntent,
    },
    Delta {
        version: u64,
        base_version: u64,
        delta: Delta,
    },
    Heartbeat {
        unix_millis: u64,
        /// The operator's current version of the node's intent; 0 while it has none.
        intent_version: u64,
    },
}

pub fn snapshot_update(version: u64, intent: &cilia_model::NodeIntent) -> v1::IntentUpdate {
    v1::IntentUpdate {
        msg: Some(v1::intent_update::Msg::Snapshot(snapshot_to_proto(
            version, intent,
        ))),
    }
}

pub fn delta_update(version: u64, base_version: u64, d: &Delta) -> v1::IntentUpdate {
    v1::IntentUpdate {
        msg: Some(v1::intent_update::Msg::Delta(delta_to_proto(
            version,
            base_version,
            d,
        ))),
    }
}

pub fn heartbeat_update(unix_millis: u64, intent_version: u64) -> v1::IntentUpdate {
    v1::IntentUpdate {
        msg: Some(v1::intent_update::Msg::Heartbeat(v1::Heartbeat {
            unix_millis,
            intent_version,
        })),
    }
}

/// Validates what the operator sent; the error names the offending field.
pub fn update_from_proto(u: &v1::IntentUpdate) -> Result<Update, ProtoError> {
    use v1::intent_update::Msg;
    match &u.msg {
        None => Err(bad("msg", "", "empty update")),
        Some(Msg::Snapshot(s)) => Ok(Update::Snapshot {
            version: version("snapshot.version", s.version)?,
            intent: snapshot_from_proto(s)?,
        }),
        Some(Msg::Delta(d)) => {
            let base_version = version("delta.base_version", d.base_version)?;
            let v = version("delta.version", d.version)?;
            if v <= base_version {
                return Err(bad(
                    "delta.version",
                    v.to_string(),
                    "not after delta.base_version",
                ));
            }
            Ok(Update::Delta {
                version: v,
                base_version,
                delta: delta_from_proto(d)?,
            })
        }
        Some(Msg::Heartbeat(h)) => {
            if h.intent_version > MAX_VERSION {
                return Err(bad(
                    "heartbeat.intent_version",
                    h.intent_version.to_string(),
                    "version out of range",
                ));
            }
            Ok(Update::Heartbeat {
                unix_millis: h.unix_millis,
                intent_version: h.intent_version,
            })
        }
    }
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

    fn hello(node: &str, v: u64, digest: &str) -> v1::AgentMessage {
        v1::AgentMessage {
            msg: Some(v1::agent_message::Msg::Hello(v1::NodeHello {
                node: node.into(),
                agent_version: "0.1.0".into(),
                last_applied_version: v,
                intent_digest: digest.into(),
            })),
        }
    }

    // Every agent message survives the wire unchanged.
    #[test]
    fn agent_messages_round_trip() {
        let d = IntentDigest([7; 32]);
        for m in [
            AgentMessage::Hello(Hello {
                node: "worker".into(),
                agent_version: "0.1.0".into(),
                held: Some((3, d)),
            }),
            AgentMessage::Hello(Hello {
                node: "worker2".into(),
                agent_version: String::new(),
                held: None,
            }),
            AgentMessage::Ack { version: 9 },
            AgentMessage::Heartbeat { unix_millis: 1 },
            AgentMessage::Resync {
                reason: "gap".into(),
            },
        ] {
            assert_eq!(
                agent_message_from_proto(&agent_message_to_proto(&m)).unwrap(),
                m
            );
        }
    }

    // Invalid agent messages are refused naming the field, so the operator can answer
    // INVALID_ARGUMENT with it.
    #[test]
    fn invalid_agent_messages_name_the_field() {
        let digest = "ab".repeat(32);
        let cases: Vec<(v1::AgentMessage, &str)> = vec![
            (v1::AgentMessage { msg: None }, "msg"),
            (hello("", 0, ""), "hello.node"),
            (hello("Worker_1", 0, ""), "hello.node"),
            (hello(&"a".repeat(300), 0, ""), "hello.node"),
            (hello("worker", 0, &digest), "hello.last_applied_version"),
            (hello("worker", 3, ""), "hello.intent_digest"),
            (hello("worker", 3, "zz"), "hello.intent_digest"),
            (
                hello("worker", u64::MAX, &digest),
                "hello.last_applied_version",
            ),
            (
                v1::AgentMessage {
                    msg: Some(v1::agent_message::Msg::Ack(v1::Ack { version: 0 })),
                },
                "ack.version",
            ),
            (
                v1::AgentMessage {
                    msg: Some(v1::agent_message::Msg::Resync(v1::ResyncRequest {
                        reason: "x".repeat(5000),
                    })),
                },
                "resync.reason",
            ),
        ];
        for (m, field) in cases {
            let e = agent_message_from_proto(&m).unwrap_err();
            assert_eq!(e.field, field, "{m:?}: {e}");
            assert!(e.value.len() <= 80, "values are cut for logs: {e}");
        }
    }

    // Updates survive the wire, and impossible version pairs are refused.
    #[test]
    fn updates_round_trip_and_versions_are_checked() {
        let intent = cilia_model::NodeIntent::from_facts(facts(), Default::default());
        assert_eq!(
            update_from_proto(&snapshot_update(4, &intent)).unwrap(),
            Update::Snapshot { version: 4, intent }
        );
        let d = Delta::default();
        assert_eq!(
            update_from_proto(&delta_update(5, 4, &d)).unwrap(),
            Update::Delta {
                version: 5,
                base_version: 4,
                delta: d.clone()
            }
        );
        assert_eq!(
            update_from_proto(&heartbeat_update(1, 5)).unwrap(),
            Update::Heartbeat {
                unix_millis: 1,
                intent_version: 5
            }
        );
        let field = |u| update_from_proto(&u).unwrap_err().field;
        assert_eq!(field(delta_update(4, 4, &d)), "delta.version");
        assert_eq!(field(delta_update(4, 0, &d)), "delta.base_version");
        assert_eq!(
            field(snapshot_update(
                0,
                &cilia_model::NodeIntent::from_facts(facts(), Default::default())
            )),
            "snapshot.version"
        );
        assert_eq!(field(v1::IntentUpdate { msg: None }), "msg");
    }

    // A snapshot naming one key twice is ambiguous and refused.
    #[test]
    fn duplicate_snapshot_keys_are_refused() {
        let e = entry_to_proto(&Entry::Node(facts()));
        let s = v1::Snapshot {
            version: 1,
            entries: vec![e.clone(), e],
        };
        let err = snapshot_from_proto(&s).unwrap_err();
        assert_eq!(err.field, "snapshot.entries[1]");
    }
}
