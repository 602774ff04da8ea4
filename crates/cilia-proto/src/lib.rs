//! The intent stream's gRPC service and messages (generated from `proto/`), and pure conversions
//! between them and `cilia-model`. Every message from the wire is validated into typed values;
//! a bad field is refused with its name and value. Message-level conversions (`agent_message_*`,
//! `update_*`) are what the operator and the agent use; entry-level ones are their building blocks.

use std::net::Ipv4Addr;

use std::sync::Arc;

use std::collections::{BTreeMap, BTreeSet};

use cilia_model::delta::{
    Delta, Entry, EntryKey, IdentityEntry, Kind, PolicyEndpointEntry, endpoint_key, endpoint_of_key,
};
use cilia_model::l2::L2Announcement;
use cilia_model::policy::{Dir, EndpointPolicy, EndpointRef, EntryKey as PolicyKey, EntryVerdict};
use cilia_model::service::{
    Acceleration, BackendIntent, DatapathConfig, FrontendIntent, FrontendKind, LbAlgorithm, LbMode,
    NoBackendResponse, Protocol, ServiceIntent, ServiceName,
};
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
        Kind::Service => v1::Kind::Service,
        Kind::Datapath => v1::Kind::Datapath,
        Kind::L2 => v1::Kind::L2,
        Kind::Identity => v1::Kind::Identity,
        Kind::PolicyEndpoint => v1::Kind::PolicyEndpoint,
        Kind::PolicyRules => v1::Kind::PolicyRules,
    }
}

pub fn kind_from_proto(field: &str, k: i32) -> Result<Kind, ProtoError> {
    match v1::Kind::try_from(k) {
        Ok(v1::Kind::Node) => Ok(Kind::Node),
        Ok(v1::Kind::Route) => Ok(Kind::Route),
        Ok(v1::Kind::Service) => Ok(Kind::Service),
        Ok(v1::Kind::Datapath) => Ok(Kind::Datapath),
        Ok(v1::Kind::L2) => Ok(Kind::L2),
        Ok(v1::Kind::Identity) => Ok(Kind::Identity),
        Ok(v1::Kind::PolicyEndpoint) => Ok(Kind::PolicyEndpoint),
        Ok(v1::Kind::PolicyRules) => Ok(Kind::PolicyRules),
        _ => Err(bad(field, k.to_string(), "unknown kind")),
    }
}

pub fn key_to_proto(k: &EntryKey) -> v1::EntryKey {
    v1::EntryKey {
        kind: kind_to_proto(k.kind) as i32,
        key: k.key.clone(),
    }
}

/// Validates a received key: a Service key is `namespace/name` of two DNS labels, a datapath key
/// is empty.
pub fn key_from_proto(field: &str, k: &v1::EntryKey) -> Result<EntryKey, ProtoError> {
    let kind = kind_from_proto(&format!("{field}.kind"), k.kind)?;
    let kf = || format!("{field}.key");
    match kind {
        Kind::Service => {
            let whole = |_| bad(&kf(), truncated(&k.key), "not namespace/name (DNS labels)");
            let Some((ns, name)) = k.key.split_once('/') else {
                return Err(whole(()));
            };
            dns_label(&kf(), ns).map_err(|_| whole(()))?;
            dns_label(&kf(), name).map_err(|_| whole(()))?;
        }
        Kind::Datapath if !k.key.is_empty() => {
            return Err(bad(&kf(), truncated(&k.key), "the datapath key is empty"));
        }
        Kind::PolicyRules if !k.key.is_empty() => {
            return Err(bad(
                &kf(),
                truncated(&k.key),
                "the policy rules key is empty",
            ));
        }
        Kind::L2 => {
            let vip = ip(&kf(), &k.key)?;
            if vip.to_string() != k.key {
                return Err(bad(&kf(), truncated(&k.key), "not a dotted quad"));
            }
        }
        Kind::Identity => {
            let c = cidr(&kf(), &k.key)?;
            if c.to_string() != k.key {
                return Err(bad(&kf(), truncated(&k.key), "not a canonical CIDR"));
            }
        }
        Kind::PolicyEndpoint if endpoint_of_key(&k.key).is_none() => {
            return Err(bad(
                &kf(),
                truncated(&k.key),
                "not \"host\" or \"pod/<namespace>/<name>\"",
            ));
        }
        _ => {}
    }
    Ok(EntryKey {
        kind,
        key: k.key.clone(),
    })
}

/// Whether `s` is a DNS label (RFC 1123): what Kubernetes allows as a namespace or Service name.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_label(field: &str, s: &str) -> Result<(), ProtoError> {
    if is_dns_label(s) {
        Ok(())
    } else {
        Err(bad(field, truncated(s), "not a DNS label (RFC 1123)"))
    }
}

fn protocol_to_proto(p: Protocol) -> v1::Protocol {
    match p {
        Protocol::Tcp => v1::Protocol::Tcp,
        Protocol::Udp => v1::Protocol::Udp,
    }
}

fn lb_mode_to_proto(m: LbMode) -> v1::LbMode {
    match m {
        LbMode::Snat => v1::LbMode::Snat,
        LbMode::Dsr => v1::LbMode::Dsr,
        LbMode::Hybrid => v1::LbMode::Hybrid,
    }
}

fn lb_mode(field: &str, m: i32) -> Result<LbMode, ProtoError> {
    match v1::LbMode::try_from(m) {
        Ok(v1::LbMode::Snat) => Ok(LbMode::Snat),
        Ok(v1::LbMode::Dsr) => Ok(LbMode::Dsr),
        Ok(v1::LbMode::Hybrid) => Ok(LbMode::Hybrid),
        _ => Err(bad(field, m.to_string(), "unknown load-balancing mode")),
    }
}

fn lb_algorithm_to_proto(a: LbAlgorithm) -> v1::LbAlgorithm {
    match a {
        LbAlgorithm::Random => v1::LbAlgorithm::Random,
        LbAlgorithm::Maglev => v1::LbAlgorithm::Maglev,
    }
}

fn lb_algorithm(field: &str, a: i32) -> Result<LbAlgorithm, ProtoError> {
    match v1::LbAlgorithm::try_from(a) {
        Ok(v1::LbAlgorithm::Random) => Ok(LbAlgorithm::Random),
        Ok(v1::LbAlgorithm::Maglev) => Ok(LbAlgorithm::Maglev),
        _ => Err(bad(
            field,
            a.to_string(),
            "unknown load-balancing algorithm",
        )),
    }
}

pub fn service_to_proto(s: &ServiceIntent) -> v1::Service {
    v1::Service {
        namespace: s.name.namespace.clone(),
        name: s.name.name.clone(),
        frontends: s
            .frontends
            .iter()
            .map(|f| v1::Frontend {
                kind: match f.kind {
                    FrontendKind::ClusterIp => v1::FrontendKind::ClusterIp,
                    FrontendKind::NodePort => v1::FrontendKind::NodePort,
                    FrontendKind::LoadBalancer => v1::FrontendKind::LoadBalancer,
                    FrontendKind::ExternalIp => v1::FrontendKind::ExternalIp,
                } as i32,
                addr: f.addr.map(|a| a.to_string()).unwrap_or_default(),
                port: f.port.into(),
                protocol: protocol_to_proto(f.protocol) as i32,
                port_name: f.port_name.clone(),
            })
            .collect(),
        backends: s
            .backends
            .iter()
            .map(|b| v1::Backend {
                addr: b.addr.to_string(),
                port: b.port.into(),
                protocol: protocol_to_proto(b.protocol) as i32,
                port_name: b.port_name.clone(),
                node: b.node.clone().unwrap_or_default(),
                terminating: b.terminating,
                host_network: b.host_network,
            })
            .collect(),
        external_traffic_local: s.external_traffic_local,
        internal_traffic_local: s.internal_traffic_local,
        session_affinity_timeout: s.session_affinity_timeout,
        mode: lb_mode_to_proto(s.mode) as i32,
        algorithm: lb_algorithm_to_proto(s.algorithm) as i32,
    }
}

/// The longest `sessionAffinityConfig.clientIP.timeoutSeconds` Kubernetes allows (one day).
pub const MAX_SESSION_AFFINITY_TIMEOUT: u32 = 86_400;

/// Validates a received Service; `field` names where it sat (e.g. `delta.upserts[3].service`).
/// Frontends and backends come out sorted; a duplicate is refused. Field paths are only spelled
/// out for an error: a snapshot holds thousands of these.
pub fn service_from_proto(field: &str, s: &v1::Service) -> Result<ServiceIntent, ProtoError> {
    dns_label(&format!("{field}.namespace"), &s.namespace)?;
    dns_label(&format!("{field}.name"), &s.name)?;
    let fe_err = |i: usize, what: &str, value: String, reason: &str| {
        bad(&format!("{field}.frontends[{i}].{what}"), value, reason)
    };
    let mut frontends = Vec::with_capacity(s.frontends.len());
    for (i, f) in s.frontends.iter().enumerate() {
        let kind = match v1::FrontendKind::try_from(f.kind) {
            Ok(v1::FrontendKind::ClusterIp) => FrontendKind::ClusterIp,
            Ok(v1::FrontendKind::NodePort) => FrontendKind::NodePort,
            Ok(v1::FrontendKind::LoadBalancer) => FrontendKind::LoadBalancer,
            Ok(v1::FrontendKind::ExternalIp) => FrontendKind::ExternalIp,
            _ => {
                return Err(fe_err(
                    i,
                    "kind",
                    f.kind.to_string(),
                    "unknown frontend kind",
                ));
            }
        };
        let addr = match (kind, f.addr.as_str()) {
            (FrontendKind::NodePort, "") => None,
            (FrontendKind::NodePort, a) => {
                return Err(fe_err(
                    i,
                    "addr",
                    truncated(a),
                    "a NodePort frontend has no address",
                ));
            }
            (_, a) => Some(
                a.parse::<Ipv4Addr>()
                    .map_err(|_| fe_err(i, "addr", truncated(a), "not an IPv4 address"))?,
            ),
        };
        frontends.push(FrontendIntent {
            kind,
            addr,
            port: valid_port(f.port)
                .ok_or_else(|| fe_err(i, "port", f.port.to_string(), PORT_RANGE))?,
            protocol: valid_protocol(f.protocol)
                .ok_or_else(|| fe_err(i, "protocol", f.protocol.to_string(), "unknown protocol"))?,
            port_name: if is_port_name(&f.port_name) {
                f.port_name.clone()
            } else {
                return Err(fe_err(
                    i,
                    "port_name",
                    truncated(&f.port_name),
                    NOT_PORT_NAME,
                ));
            },
        });
    }
    let be_err = |i: usize, what: &str, value: String, reason: &str| {
        bad(&format!("{field}.backends[{i}].{what}"), value, reason)
    };
    let mut backends = Vec::with_capacity(s.backends.len());
    for (i, b) in s.backends.iter().enumerate() {
        backends.push(BackendIntent {
            addr: b
                .addr
                .parse()
                .map_err(|_| be_err(i, "addr", truncated(&b.addr), "not an IPv4 address"))?,
            port: valid_port(b.port)
                .ok_or_else(|| be_err(i, "port", b.port.to_string(), PORT_RANGE))?,
            protocol: valid_protocol(b.protocol)
                .ok_or_else(|| be_err(i, "protocol", b.protocol.to_string(), "unknown protocol"))?,
            port_name: if is_port_name(&b.port_name) {
                b.port_name.clone()
            } else {
                return Err(be_err(
                    i,
                    "port_name",
                    truncated(&b.port_name),
                    NOT_PORT_NAME,
                ));
            },
            node: match b.node.as_str() {
                "" => None,
                n if is_node_name(n) => Some(n.to_string()),
                n => {
                    return Err(be_err(
                        i,
                        "node",
                        truncated(n),
                        "not a node name (RFC 1123 subdomain)",
                    ));
                }
            },
            terminating: b.terminating,
            host_network: b.host_network,
        });
    }
    let session_affinity_timeout = match s.session_affinity_timeout {
        Some(t) if t == 0 || t > MAX_SESSION_AFFINITY_TIMEOUT => {
            return Err(bad(
                &format!("{field}.session_affinity_timeout"),
                t.to_string(),
                "not 1-86400 seconds",
            ));
        }
        t => t,
    };
    Ok(ServiceIntent {
        name: ServiceName::new(&s.namespace, &s.name),
        frontends: sorted_unique(field, "frontends", frontends)?,
        backends: sorted_unique(field, "backends", backends)?,
        external_traffic_local: s.external_traffic_local,
        internal_traffic_local: s.internal_traffic_local,
        session_affinity_timeout,
        mode: lb_mode(&format!("{field}.mode"), s.mode)?,
        algorithm: lb_algorithm(&format!("{field}.algorithm"), s.algorithm)?,
    })
}

const PORT_RANGE: &str = "not a port (1-65535)";
const NOT_PORT_NAME: &str = "not a port name (empty or a DNS label)";

fn valid_port(p: u32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

fn valid_protocol(p: i32) -> Option<Protocol> {
    match v1::Protocol::try_from(p) {
        Ok(v1::Protocol::Tcp) => Some(Protocol::Tcp),
        Ok(v1::Protocol::Udp) => Some(Protocol::Udp),
        _ => None,
    }
}

fn is_port_name(s: &str) -> bool {
    s.is_empty() || is_dns_label(s)
}

/// Sorts `v`; refuses a list that names one item twice.
fn sorted_unique<T: Ord + std::fmt::Debug>(
    field: &str,
    list: &str,
    mut v: Vec<T>,
) -> Result<Vec<T>, ProtoError> {
    if !v.is_sorted() {
        v.sort();
    }
    if let Some(w) = v.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(
            &format!("{field}.{list}"),
            format!("{:?}", w[0]),
            "listed twice",
        ));
    }
    Ok(v)
}

pub fn datapath_to_proto(d: &DatapathConfig) -> v1::DatapathConfig {
    v1::DatapathConfig {
        kube_proxy_replacement: d.kube_proxy_replacement,
        lb_mode: lb_mode_to_proto(d.lb_mode) as i32,
        lb_algorithm: lb_algorithm_to_proto(d.lb_algorithm) as i32,
        acceleration: match d.acceleration {
            Acceleration::Native => v1::Acceleration::Native,
            Acceleration::BestEffort => v1::Acceleration::BestEffort,
            Acceleration::Disabled => v1::Acceleration::Disabled,
            Acceleration::TestingOnly => v1::Acceleration::TestingOnly,
        } as i32,
        maglev_table_size: d.maglev_table_size,
        no_backend_response: match d.no_backend_response {
            NoBackendResponse::Drop => v1::NoBackendResponse::Drop,
            NoBackendResponse::Reject => v1::NoBackendResponse::Reject,
        } as i32,
        mode_annotation: d.mode_annotation,
        algorithm_annotation: d.algorithm_annotation,
        masquerade: d.masquerade,
        bpf_masquerade: d.bpf_masquerade,
        ip_masq_agent: d.ip_masq_agent,
        non_masquerade_cidrs: d
            .non_masquerade_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect(),
        masq_link_local: d.masq_link_local,
        l2_announcements: d.l2_announcements,
        policy_audit_mode: d.policy_audit_mode,
        devices: d.devices.clone(),
        l2_lease_ms: d.l2_lease_ms,
        l2_renew_deadline_ms: d.l2_renew_deadline_ms,
        l2_retry_period_ms: d.l2_retry_period_ms,
    }
}

/// Validates received datapath settings; `field` names where they sat.
pub fn datapath_from_proto(
    field: &str,
    d: &v1::DatapathConfig,
) -> Result<DatapathConfig, ProtoError> {
    let f = |name: &str| format!("{field}.{name}");
    if d.maglev_table_size == 0 {
        return Err(bad(
            &f("maglev_table_size"),
            "0",
            "the Maglev table needs entries",
        ));
    }
    for (name, v) in [
        ("l2_lease_ms", d.l2_lease_ms),
        ("l2_renew_deadline_ms", d.l2_renew_deadline_ms),
        ("l2_retry_period_ms", d.l2_retry_period_ms),
    ] {
        if v == 0 {
            return Err(bad(&f(name), "0", "an L2 timing must be positive"));
        }
    }
    let mut devices = Vec::with_capacity(d.devices.len());
    for (i, dev) in d.devices.iter().enumerate() {
        if !is_device_name(dev) {
            return Err(bad(
                &f(&format!("devices[{i}]")),
                truncated(dev),
                "not a device name",
            ));
        }
        devices.push(dev.clone());
    }
    Ok(DatapathConfig {
        kube_proxy_replacement: d.kube_proxy_replacement,
        lb_mode: lb_mode(&f("lb_mode"), d.lb_mode)?,
        lb_algorithm: lb_algorithm(&f("lb_algorithm"), d.lb_algorithm)?,
        acceleration: match v1::Acceleration::try_from(d.acceleration) {
            Ok(v1::Acceleration::Native) => Acceleration::Native,
            Ok(v1::Acceleration::BestEffort) => Acceleration::BestEffort,
            Ok(v1::Acceleration::Disabled) => Acceleration::Disabled,
            Ok(v1::Acceleration::TestingOnly) => Acceleration::TestingOnly,
            _ => {
                return Err(bad(
                    &f("acceleration"),
                    d.acceleration.to_string(),
                    "unknown acceleration",
                ));
            }
        },
        maglev_table_size: d.maglev_table_size,
        no_backend_response: match v1::NoBackendResponse::try_from(d.no_backend_response) {
            Ok(v1::NoBackendResponse::Drop) => NoBackendResponse::Drop,
            Ok(v1::NoBackendResponse::Reject) => NoBackendResponse::Reject,
            _ => {
                return Err(bad(
                    &f("no_backend_response"),
                    d.no_backend_response.to_string(),
                    "unknown no-backend response",
                ));
            }
        },
        mode_annotation: d.mode_annotation,
        algorithm_annotation: d.algorithm_annotation,
        masquerade: d.masquerade,
        bpf_masquerade: d.bpf_masquerade,
        ip_masq_agent: d.ip_masq_agent,
        non_masquerade_cidrs: d
            .non_masquerade_cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| cidr(&f(&format!("non_masquerade_cidrs[{i}]")), c))
            .collect::<Result<_, _>>()?,
        masq_link_local: d.masq_link_local,
        l2_announcements: d.l2_announcements,
        l2_lease_ms: d.l2_lease_ms,
        l2_renew_deadline_ms: d.l2_renew_deadline_ms,
        l2_retry_period_ms: d.l2_retry_period_ms,
        policy_audit_mode: d.policy_audit_mode,
        devices,
    })
}

/// Whether the kernel would take `s` as a device name (IFNAMSIZ - 1, no '/', ':' or space).
fn is_device_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains(['/', ':']) && !s.chars().any(char::is_whitespace)
}

/// At most this many interfaces in one report or announcement.
const MAX_INTERFACES: usize = 1024;

fn device_set(field: &str, names: &[String]) -> Result<BTreeSet<String>, ProtoError> {
    if names.len() > MAX_INTERFACES {
        return Err(bad(field, names.len().to_string(), "too many interfaces"));
    }
    let mut out = BTreeSet::new();
    for (i, n) in names.iter().enumerate() {
        if !is_device_name(n) {
            return Err(bad(
                &format!("{field}[{i}]"),
                truncated(n),
                "not a device name",
            ));
        }
        if !out.insert(n.clone()) {
            return Err(bad(&format!("{field}[{i}]"), truncated(n), "listed twice"));
        }
    }
    Ok(out)
}

fn l2_to_proto(a: &L2Announcement) -> v1::L2Announcement {
    v1::L2Announcement {
        vip: a.vip.to_string(),
        namespace: a.service.namespace.clone(),
        name: a.service.name.clone(),
        interfaces: a.interfaces.iter().cloned().collect(),
        standby: a.standby,
    }
}

fn l2_from_proto(field: &str, a: &v1::L2Announcement) -> Result<L2Announcement, ProtoError> {
    let f = |n: &str| format!("{field}.{n}");
    dns_label(&f("namespace"), &a.namespace)?;
    dns_label(&f("name"), &a.name)?;
    let interfaces = device_set(&f("interfaces"), &a.interfaces)?;
    if interfaces.is_empty() {
        return Err(bad(
            &f("interfaces"),
            "",
            "an announcement names its interfaces",
        ));
    }
    Ok(L2Announcement {
        vip: ip(&f("vip"), &a.vip)?,
        service: ServiceName::new(&a.namespace, &a.name),
        interfaces,
        standby: a.standby,
    })
}

fn policy_endpoint_to_proto(e: &PolicyEndpointEntry) -> v1::PolicyEndpoint {
    let p = &e.policy;
    v1::PolicyEndpoint {
        endpoint: endpoint_key(&e.endpoint),
        ip: p.ip.map(|i| i.to_string()).unwrap_or_default(),
        ingress_enforced: p.ingress_enforced,
        egress_enforced: p.egress_enforced,
        audit: p.audit,
        entries: p
            .entries
            .iter()
            .map(|(k, v)| v1::PolicyEntry {
                direction: match k.dir {
                    Dir::Ingress => v1::Direction::Ingress,
                    Dir::Egress => v1::Direction::Egress,
                } as i32,
                identity: k.identity,
                protocol: k.proto as u32,
                port: k.port as u32,
                port_bits: k.bits as u32,
                deny: v.deny,
                rule: v.rule,
            })
            .collect(),
    }
}

fn policy_endpoint_from_proto(
    field: &str,
    e: &v1::PolicyEndpoint,
) -> Result<PolicyEndpointEntry, ProtoError> {
    let f = |n: &str| format!("{field}.{n}");
    let endpoint = endpoint_of_key(&e.endpoint).ok_or_else(|| {
        bad(
            &f("endpoint"),
            truncated(&e.endpoint),
            "not \"host\" or \"pod/<namespace>/<name>\"",
        )
    })?;
    let ip_addr = match (&endpoint, e.ip.as_str()) {
        (EndpointRef::Host, "") => None,
        (EndpointRef::Host, other) => {
            return Err(bad(
                &f("ip"),
                truncated(other),
                "the host endpoint has no address",
            ));
        }
        (EndpointRef::Pod(_), a) => Some(ip(&f("ip"), a)?),
    };
    let mut entries = BTreeMap::new();
    for (i, x) in e.entries.iter().enumerate() {
        let g = |n: &str| format!("{field}.entries[{i}].{n}");
        let dir = match v1::Direction::try_from(x.direction) {
            Ok(v1::Direction::Ingress) => Dir::Ingress,
            Ok(v1::Direction::Egress) => Dir::Egress,
            _ => {
                return Err(bad(
                    &g("direction"),
                    x.direction.to_string(),
                    "unknown direction",
                ));
            }
        };
        let proto = u8::try_from(x.protocol)
            .map_err(|_| bad(&g("protocol"), x.protocol.to_string(), "not an IP protocol"))?;
        let port =
            u16::try_from(x.port).map_err(|_| bad(&g("port"), x.port.to_string(), "not a port"))?;
        if x.port_bits > 16 {
            return Err(bad(&g("port_bits"), x.port_bits.to_string(), "at most 16"));
        }
        let key = PolicyKey {
            dir,
            identity: x.identity,
            proto,
            port,
            bits: x.port_bits as u8,
        };
        let verdict = EntryVerdict {
            deny: x.deny,
            rule: x.rule,
        };
        if entries.insert(key, verdict).is_some() {
            return Err(bad(
                &format!("{field}.entries[{i}]"),
                format!("{key:?}"),
                "listed twice",
            ));
        }
    }
    Ok(PolicyEndpointEntry {
        endpoint,
        policy: EndpointPolicy {
            ip: ip_addr,
            ingress_enforced: e.ingress_enforced,
            egress_enforced: e.egress_enforced,
            audit: e.audit,
            entries,
        },
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
        Entry::Service(s) => E::Service(service_to_proto(s)),
        Entry::Datapath(d) => E::Datapath(datapath_to_proto(d)),
        Entry::L2(a) => E::L2(l2_to_proto(a)),
        Entry::Identity(i) => E::Identity(v1::Identity {
            cidr: i.cidr.to_string(),
            identity: i.identity,
        }),
        Entry::PolicyEndpoint(p) => E::PolicyEndpoint(policy_endpoint_to_proto(p)),
        Entry::PolicyRules(r) => E::PolicyRules(v1::PolicyRules { names: r.clone() }),
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
        Some(E::Service(s)) => Ok(Entry::Service(Arc::new(service_from_proto(
            &format!("{field}.service"),
            s,
        )?))),
        Some(E::Datapath(d)) => Ok(Entry::Datapath(datapath_from_proto(
            &format!("{field}.datapath"),
            d,
        )?)),
        Some(E::L2(a)) => Ok(Entry::L2(l2_from_proto(&format!("{field}.l2"), a)?)),
        Some(E::Identity(i)) => Ok(Entry::Identity(IdentityEntry {
            cidr: cidr(&format!("{field}.identity.cidr"), &i.cidr)?,
            identity: i.identity,
        })),
        Some(E::PolicyEndpoint(p)) => Ok(Entry::PolicyEndpoint(policy_endpoint_from_proto(
            &format!("{field}.policy_endpoint"),
            p,
        )?)),
        Some(E::PolicyRules(r)) => {
            if r.names.is_empty() {
                return Err(bad(
                    &format!("{field}.policy_rules.names"),
                    "",
                    "an empty rule list is sent as a delete",
                ));
            }
            Ok(Entry::PolicyRules(r.names.clone()))
        }
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

/// The whole intent as one message: the entries of `intent.entries()` (in no particular order:
/// walking the intent directly spares building that keyed map for 10,000 Services).
pub fn snapshot_to_proto(version: u64, intent: &cilia_model::NodeIntent) -> v1::Snapshot {
    let mut entries = Vec::with_capacity(intent.routes.len() + intent.services.len() + 2);
    entries.push(entry_to_proto(&Entry::Node(intent.facts())));
    let mut routes = intent.routes.iter().peekable();
    while let Some(r) = routes.next() {
        // Keyed by destination: of two routes to one destination the later stands.
        if routes.peek().is_some_and(|n| n.dst == r.dst) {
            continue;
        }
        entries.push(entry_to_proto(&Entry::Route(*r)));
    }
    for s in intent.services.values() {
        entries.push(v1::Entry {
            entry: Some(v1::entry::Entry::Service(service_to_proto(s))),
        });
    }
    entries.push(entry_to_proto(&Entry::Datapath(intent.datapath.clone())));
    // Few next to the Services: through the keyed form.
    for (k, e) in intent.entries() {
        if matches!(
            k.kind,
            Kind::L2 | Kind::Identity | Kind::PolicyEndpoint | Kind::PolicyRules
        ) {
            entries.push(entry_to_proto(&e));
        }
    }
    v1::Snapshot { version, entries }
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
    if is_node_name(s) {
        Ok(s.to_string())
    } else {
        Err(bad(
            field,
            truncated(s),
            "not a node name (RFC 1123 subdomain)",
        ))
    }
}

fn is_node_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
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
    /// The node's interfaces that are up with carrier.
    pub up_interfaces: BTreeSet<String>,
}

/// What an agent may send, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentMessage {
    Hello(Hello),
    Ack {
        version: u64,
    },
    Heartbeat {
        unix_millis: u64,
        /// The node's interfaces that are up with carrier.
        up_interfaces: BTreeSet<String>,
    },
    Resync {
        reason: String,
    },
}

pub fn agent_message_to_proto(m: &AgentMessage) -> v1::AgentMessage {
    use v1::agent_message::Msg;
    let msg = match m {
        AgentMessage::Hello(h) => Msg::Hello(v1::NodeHello {
            node: h.node.clone(),
            agent_version: h.agent_version.clone(),
            last_applied_version: h.held.map(|(v, _)| v).unwrap_or(0),
            intent_digest: h.held.map(|(_, d)| d.to_string()).unwrap_or_default(),
            up_interfaces: h.up_interfaces.iter().cloned().collect(),
        }),
        AgentMessage::Ack { version } => Msg::Ack(v1::Ack { version: *version }),
        AgentMessage::Heartbeat {
            unix_millis,
            up_interfaces,
        } => Msg::Heartbeat(v1::Heartbeat {
            unix_millis: *unix_millis,
            intent_version: 0,
            up_interfaces: up_interfaces.iter().cloned().collect(),
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
                up_interfaces: device_set("hello.up_interfaces", &h.up_interfaces)?,
            }))
        }
        Some(Msg::Ack(a)) => Ok(AgentMessage::Ack {
            version: version("ack.version", a.version)?,
        }),
        Some(Msg::Heartbeat(h)) => Ok(AgentMessage::Heartbeat {
            unix_millis: h.unix_millis,
            up_interfaces: device_set("heartbeat.up_interfaces", &h.up_interfaces)?,
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
            up_interfaces: Vec::new(),
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
                up_interfaces: vec![],
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
                up_interfaces: ["eth0".to_string(), "eth1".into()].into(),
            }),
            AgentMessage::Hello(Hello {
                node: "worker2".into(),
                agent_version: String::new(),
                held: None,
                up_interfaces: BTreeSet::new(),
            }),
            AgentMessage::Ack { version: 9 },
            AgentMessage::Heartbeat {
                unix_millis: 1,
                up_interfaces: ["eth0".to_string()].into(),
            },
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

    fn web() -> ServiceIntent {
        ServiceIntent {
            name: ServiceName::new("default", "web"),
            frontends: vec![
                FrontendIntent {
                    kind: FrontendKind::ClusterIp,
                    addr: Some(Ipv4Addr::new(10, 96, 0, 10)),
                    port: 80,
                    protocol: Protocol::Tcp,
                    port_name: "http".into(),
                },
                FrontendIntent {
                    kind: FrontendKind::NodePort,
                    addr: None,
                    port: 30080,
                    protocol: Protocol::Tcp,
                    port_name: "http".into(),
                },
                FrontendIntent {
                    kind: FrontendKind::LoadBalancer,
                    addr: Some(Ipv4Addr::new(198, 51, 100, 7)),
                    port: 80,
                    protocol: Protocol::Tcp,
                    port_name: "http".into(),
                },
                FrontendIntent {
                    kind: FrontendKind::ExternalIp,
                    addr: Some(Ipv4Addr::new(192, 0, 2, 9)),
                    port: 53,
                    protocol: Protocol::Udp,
                    port_name: String::new(),
                },
            ],
            backends: vec![
                BackendIntent {
                    addr: Ipv4Addr::new(10, 244, 1, 5),
                    port: 8080,
                    protocol: Protocol::Tcp,
                    port_name: "http".into(),
                    node: Some("worker".into()),
                    terminating: false,
                    host_network: false,
                },
                BackendIntent {
                    addr: Ipv4Addr::new(172, 18, 0, 4),
                    port: 8080,
                    protocol: Protocol::Tcp,
                    port_name: "http".into(),
                    node: None,
                    terminating: true,
                    host_network: true,
                },
            ],
            external_traffic_local: true,
            internal_traffic_local: false,
            session_affinity_timeout: Some(10800),
            mode: LbMode::Dsr,
            algorithm: LbAlgorithm::Maglev,
        }
    }

    fn datapath() -> DatapathConfig {
        DatapathConfig {
            kube_proxy_replacement: true,
            lb_mode: LbMode::Hybrid,
            lb_algorithm: LbAlgorithm::Maglev,
            acceleration: Acceleration::BestEffort,
            maglev_table_size: 65521,
            no_backend_response: NoBackendResponse::Drop,
            mode_annotation: true,
            algorithm_annotation: true,
            masquerade: true,
            bpf_masquerade: true,
            ip_masq_agent: true,
            non_masquerade_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            masq_link_local: true,
            l2_announcements: true,
            l2_lease_ms: 900,
            l2_renew_deadline_ms: 700,
            l2_retry_period_ms: 50,
            policy_audit_mode: true,
            devices: vec!["eth0".into()],
        }
    }

    fn policy_entries() -> Vec<Entry> {
        let mut table = BTreeMap::new();
        table.insert(
            PolicyKey {
                dir: Dir::Ingress,
                identity: 4242,
                proto: 6,
                port: 80,
                bits: 16,
            },
            EntryVerdict {
                deny: false,
                rule: 0,
            },
        );
        table.insert(
            PolicyKey {
                dir: Dir::Egress,
                identity: 2,
                proto: 0,
                port: 0,
                bits: 0,
            },
            EntryVerdict {
                deny: true,
                rule: 1,
            },
        );
        vec![
            Entry::L2(L2Announcement {
                vip: Ipv4Addr::new(172, 18, 250, 0),
                service: ServiceName::new("default", "deathstar-lb"),
                interfaces: ["eth0".to_string()].into(),
                standby: false,
            }),
            Entry::L2(L2Announcement {
                vip: Ipv4Addr::new(172, 18, 250, 1),
                service: ServiceName::new("default", "deathstar-lb"),
                interfaces: ["eth0".to_string()].into(),
                standby: true,
            }),
            Entry::Identity(IdentityEntry {
                cidr: "10.244.1.0/24".parse().unwrap(),
                identity: 4242,
            }),
            Entry::PolicyEndpoint(PolicyEndpointEntry {
                endpoint: EndpointRef::Pod("default/deathstar-1".into()),
                policy: EndpointPolicy {
                    ip: Some(Ipv4Addr::new(10, 244, 1, 5)),
                    ingress_enforced: true,
                    egress_enforced: false,
                    audit: true,
                    entries: table,
                },
            }),
            Entry::PolicyEndpoint(PolicyEndpointEntry {
                endpoint: EndpointRef::Host,
                policy: EndpointPolicy::default(),
            }),
            Entry::PolicyRules(vec!["rule1".into(), "rule2/specs[1]".into()]),
        ]
    }

    // L2 announcements and policy entries survive the wire unchanged, alone and in a snapshot.
    #[test]
    fn l2_and_policy_entries_round_trip() {
        for e in policy_entries() {
            assert_eq!(entry_from_proto("e", &entry_to_proto(&e)).unwrap(), e);
            let k = e.key();
            assert_eq!(key_from_proto("k", &key_to_proto(&k)).unwrap(), k);
        }
        let mut all = vec![Entry::Node(facts())];
        all.extend(policy_entries());
        let intent = cilia_model::NodeIntent::from_entries(&all).unwrap();
        assert_eq!(intent.l2.len(), 2);
        assert_eq!(
            intent.l2.values().filter(|a| a.standby).count(),
            1,
            "a standby entry stays one"
        );
        assert_eq!(intent.policy.endpoints.len(), 2);
        let back = snapshot_from_proto(&snapshot_to_proto(4, &intent)).unwrap();
        assert_eq!(back, intent);
    }

    // Bad L2 and policy fields are refused, naming the field.
    #[test]
    fn bad_l2_and_policy_fields_are_named() {
        let entries = policy_entries();
        let l2_with = |f: &dyn Fn(&mut v1::L2Announcement)| {
            let mut e = entry_to_proto(&entries[0]);
            if let Some(v1::entry::Entry::L2(a)) = &mut e.entry {
                f(a);
            }
            entry_from_proto("u[0]", &e).unwrap_err().field
        };
        assert_eq!(
            l2_with(&|a| a.interfaces = vec!["eth0".into(), "bad/name".into()]),
            "u[0].l2.interfaces[1]"
        );
        assert_eq!(l2_with(&|a| a.interfaces = vec![]), "u[0].l2.interfaces");
        assert_eq!(l2_with(&|a| a.vip = "x".into()), "u[0].l2.vip");
        let ep_with = |f: &dyn Fn(&mut v1::PolicyEndpoint)| {
            let mut e = entry_to_proto(&entries[3]);
            if let Some(v1::entry::Entry::PolicyEndpoint(p)) = &mut e.entry {
                f(p);
            }
            entry_from_proto("u[1]", &e).unwrap_err().field
        };
        assert_eq!(
            ep_with(&|p| p.entries[0].port_bits = 17),
            "u[1].policy_endpoint.entries[0].port_bits"
        );
        assert_eq!(
            ep_with(&|p| p.entries[0].protocol = 300),
            "u[1].policy_endpoint.entries[0].protocol"
        );
        assert_eq!(
            ep_with(&|p| p.endpoint = "pod/nonamespace".into()),
            "u[1].policy_endpoint.endpoint"
        );
        assert_eq!(
            ep_with(&|p| p.ip = String::new()),
            "u[1].policy_endpoint.ip"
        );

        for (kind, key) in [
            (v1::Kind::L2, "172.18.250.300"),
            (v1::Kind::L2, "172.018.250.1"),
            (v1::Kind::Identity, "10.244.1.1/24"),
            (v1::Kind::PolicyEndpoint, "pod/x"),
            (v1::Kind::PolicyRules, "x"),
        ] {
            let k = v1::EntryKey {
                kind: kind as i32,
                key: key.into(),
            };
            let err = key_from_proto("d[0]", &k).unwrap_err();
            assert_eq!(err.field, "d[0].key", "{kind:?} {key}: {err}");
        }
        let mut hb = agent_message_to_proto(&AgentMessage::Heartbeat {
            unix_millis: 1,
            up_interfaces: BTreeSet::new(),
        });
        if let Some(v1::agent_message::Msg::Heartbeat(h)) = &mut hb.msg {
            h.up_interfaces = vec!["eth0".into(), "eth0".into()];
        }
        let err = agent_message_from_proto(&hb).unwrap_err();
        assert_eq!(err.field, "heartbeat.up_interfaces[1]", "{err}");
        let mut d = datapath_to_proto(&datapath());
        d.l2_lease_ms = 0;
        let err = datapath_from_proto("dp", &d).unwrap_err();
        assert_eq!(err.field, "dp.l2_lease_ms", "{err}");
    }

    // Services (every frontend kind, terminating and host-network backends, affinity) and the
    // datapath settings survive the wire unchanged, as entries and inside a snapshot.
    #[test]
    fn services_and_datapath_round_trip() {
        for e in [
            Entry::Service(Arc::new(web())),
            Entry::Datapath(datapath()),
            Entry::Datapath(DatapathConfig::default()),
        ] {
            assert_eq!(entry_from_proto("e", &entry_to_proto(&e)).unwrap(), e);
        }
        let mut s = web();
        s.session_affinity_timeout = None;
        let e = Entry::Service(Arc::new(s));
        assert_eq!(entry_from_proto("e", &entry_to_proto(&e)).unwrap(), e);

        let mut intent = cilia_model::NodeIntent::from_facts(facts(), Default::default());
        intent.services.insert(web());
        intent.datapath = datapath();
        let back = snapshot_from_proto(&snapshot_to_proto(3, &intent)).unwrap();
        assert_eq!(back, intent);
        assert_eq!(back.digest(), intent.digest());
        for k in [
            EntryKey {
                kind: Kind::Service,
                key: "default/web".into(),
            },
            EntryKey {
                kind: Kind::Datapath,
                key: String::new(),
            },
        ] {
            assert_eq!(key_from_proto("k", &key_to_proto(&k)).unwrap(), k);
        }
    }

    // Frontends and backends arrive sorted whatever order they were sent in.
    #[test]
    fn received_lists_are_sorted() {
        let mut p = service_to_proto(&web());
        p.frontends.reverse();
        p.backends.reverse();
        assert_eq!(service_from_proto("s", &p).unwrap(), web());
    }

    // Every bad field of a Service, the datapath settings or a key is refused naming the field and
    // the value; nothing panics.
    #[test]
    fn bad_service_and_datapath_fields_are_named() {
        type Edit = Box<dyn Fn(&mut v1::Service)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (
                Box::new(|s| s.namespace = "Default".into()),
                "s.namespace",
                "Default",
            ),
            (Box::new(|s| s.name = String::new()), "s.name", ""),
            (Box::new(|s| s.name = "a/b".into()), "s.name", "a/b"),
            (
                Box::new(|s| s.frontends[0].kind = 9),
                "s.frontends[0].kind",
                "9",
            ),
            (
                Box::new(|s| s.frontends[0].addr = "10.96.0.300".into()),
                "s.frontends[0].addr",
                "10.96.0.300",
            ),
            (
                Box::new(|s| s.frontends[0].addr = String::new()),
                "s.frontends[0].addr",
                "",
            ),
            (
                Box::new(|s| s.frontends[1].addr = "10.0.0.1".into()),
                "s.frontends[1].addr",
                "10.0.0.1",
            ),
            (
                Box::new(|s| s.frontends[0].port = 0),
                "s.frontends[0].port",
                "0",
            ),
            (
                Box::new(|s| s.frontends[0].port = 70000),
                "s.frontends[0].port",
                "70000",
            ),
            (
                Box::new(|s| s.frontends[0].protocol = 0),
                "s.frontends[0].protocol",
                "0",
            ),
            (
                Box::new(|s| s.frontends[0].port_name = "HTTP".into()),
                "s.frontends[0].port_name",
                "HTTP",
            ),
            (
                Box::new(|s| s.backends[1].addr = "x".into()),
                "s.backends[1].addr",
                "x",
            ),
            (
                Box::new(|s| s.backends[0].port = 65536),
                "s.backends[0].port",
                "65536",
            ),
            (
                Box::new(|s| s.backends[0].node = "Bad_Node".into()),
                "s.backends[0].node",
                "Bad_Node",
            ),
            (
                Box::new(|s| s.session_affinity_timeout = Some(0)),
                "s.session_affinity_timeout",
                "0",
            ),
            (
                Box::new(|s| s.session_affinity_timeout = Some(86401)),
                "s.session_affinity_timeout",
                "86401",
            ),
            (Box::new(|s| s.mode = 0), "s.mode", "0"),
            (Box::new(|s| s.algorithm = 7), "s.algorithm", "7"),
        ];
        for (edit, field, value) in cases {
            let mut p = service_to_proto(&web());
            edit(&mut p);
            let e = service_from_proto("s", &p).unwrap_err();
            assert_eq!((e.field.as_str(), e.value.as_str()), (field, value), "{e}");
        }
        let mut p = service_to_proto(&web());
        p.backends.push(p.backends[0].clone());
        assert_eq!(service_from_proto("s", &p).unwrap_err().field, "s.backends");

        type DpEdit = Box<dyn Fn(&mut v1::DatapathConfig)>;
        let cases: Vec<(DpEdit, &str, &str)> = vec![
            (Box::new(|d| d.lb_mode = 0), "d.lb_mode", "0"),
            (Box::new(|d| d.lb_algorithm = 3), "d.lb_algorithm", "3"),
            (Box::new(|d| d.acceleration = 0), "d.acceleration", "0"),
            (
                Box::new(|d| d.no_backend_response = 5),
                "d.no_backend_response",
                "5",
            ),
            (
                Box::new(|d| d.maglev_table_size = 0),
                "d.maglev_table_size",
                "0",
            ),
            (
                Box::new(|d| d.non_masquerade_cidrs.push("10.1.2.3/8".into())),
                "d.non_masquerade_cidrs[1]",
                "10.1.2.3/8",
            ),
            (
                Box::new(|d| d.devices.push("eth0/1".into())),
                "d.devices[1]",
                "eth0/1",
            ),
            (
                Box::new(|d| d.devices.push("a-very-long-device-name".into())),
                "d.devices[1]",
                "a-very-long-device-name",
            ),
        ];
        for (edit, field, value) in cases {
            let mut p = datapath_to_proto(&datapath());
            edit(&mut p);
            let e = datapath_from_proto("d", &p).unwrap_err();
            assert_eq!((e.field.as_str(), e.value.as_str()), (field, value), "{e}");
        }

        let key = |kind: v1::Kind, key: &str| v1::EntryKey {
            kind: kind as i32,
            key: key.into(),
        };
        for (k, value) in [
            (key(v1::Kind::Service, "web"), "web"),
            (key(v1::Kind::Service, "/web"), "/web"),
            (key(v1::Kind::Service, "default/Web"), "default/Web"),
            (key(v1::Kind::Datapath, "x"), "x"),
        ] {
            let e = key_from_proto("delta.deletes[0]", &k).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.value.as_str()),
                ("delta.deletes[0].key", value),
                "{e}"
            );
        }
        // Inside a delta the path is complete.
        let mut p = service_to_proto(&web());
        p.backends[0].port = 0;
        let d = v1::Delta {
            version: 2,
            base_version: 1,
            upserts: vec![v1::Entry {
                entry: Some(v1::entry::Entry::Service(p)),
            }],
            deletes: vec![],
        };
        assert_eq!(
            delta_from_proto(&d).unwrap_err().field,
            "delta.upserts[0].service.backends[0].port"
        );
    }
}
