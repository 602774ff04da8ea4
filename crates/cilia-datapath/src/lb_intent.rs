//! A node's intent → the services its load balancer must serve: pure, so the agent's apply loop is
//! intent → [`node_services`] → [`crate::lb::desired_entries`] → [`crate::lb::lb_diff`] against what
//! is pinned → writes.
//!
//! Rules (Cilium's, as the brief of issue #8 spells them):
//! - NodePort frontends listen on the node's address (`intent.node_ip`).
//! - A backend is local when its `node` is this node.
//! - `externalTrafficPolicy: Local`: external frontends (NodePort, LoadBalancer, externalIP) get only
//!   local backends; with none, the node does not serve the frontend — it is kept with no slot and
//!   drops (Cilium drops; no ICMP reject, which would tell the client the Service is closed).
//! - `internalTrafficPolicy: Local`: the same for ClusterIP frontends.
//! - Terminating backends take new flows only when no active one is left (after the locality
//!   filter); otherwise they are draining: their entries stay (established flows finish on them),
//!   without a slot. Backends gone from the intent altogether are kept the same way by the agent
//!   while conntrack may name them ([`crate::lb::BackendRetention`]).
//! - Service ids (rev-NAT indexes) are stable: ids of frontends already pinned are kept (read back
//!   from the maps with [`pinned_service_ids`]), new frontends take the lowest free ids.
//! - DSR applies to external frontends only; ClusterIP traffic reaching a node device is SNATed
//!   (Cilium's DSR is for north-south traffic). A pod's own traffic to any frontend is translated
//!   at its host-side device with DNAT only (`cil_lb_pod_ingress`: the backend sees the pod).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use cilia_model::NodeIntent;
use cilia_model::service::{
    BackendIntent, DatapathConfig, FrontendIntent, FrontendKind, LbAlgorithm as MAlgorithm,
    LbMode as MMode, NoBackendResponse as MNoBackend, Protocol, ServiceIntent,
};
use serde::{Deserialize, Serialize};

use crate::lb::{
    Backend, BackendKey, Frontend, LbAlgorithm, LbEntries, LbMode, NoBackendResponse, Proto,
    ServiceSpec,
};
use crate::lb_maglev::{ALLOWED_TABLE_SIZES, MaglevParams};
use crate::lb_maps::{ip_of, port_of};

/// An intent the load balancer cannot serve, naming the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason} (got {value})")]
pub struct LbIntentError {
    pub field: String,
    pub value: String,
    pub reason: &'static str,
}

fn err(field: String, value: impl ToString, reason: &'static str) -> LbIntentError {
    LbIntentError {
        field,
        value: value.to_string(),
        reason,
    }
}

/// State of a backend as `service list` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Active,
    Terminating,
}

impl BackendState {
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
        }
    }
}

/// One backend row of `service list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRow {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub state: BackendState,
    pub local: bool,
}

/// One frontend of `service list`: what the node serves there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub id: u32,
    /// `namespace/name`.
    pub service: String,
    pub frontend_addr: Ipv4Addr,
    pub frontend_port: u16,
    pub protocol: String,
    /// Cilium's service type word: `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalIPs`.
    #[serde(rename = "type")]
    pub service_type: String,
    pub mode: String,
    pub algorithm: String,
    pub backends: Vec<BackendRow>,
}

impl ServiceRow {
    /// `addr:port/PROTO`, the frontend column of `service list`.
    pub fn frontend(&self) -> String {
        format!(
            "{}:{}/{}",
            self.frontend_addr, self.frontend_port, self.protocol
        )
    }
}

/// What a node serves: the specs to program and the rows to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeServices {
    pub specs: Vec<ServiceSpec>,
    pub rows: Vec<ServiceRow>,
}

fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

fn mode(m: MMode) -> LbMode {
    match m {
        MMode::Snat => LbMode::Snat,
        MMode::Dsr => LbMode::Dsr,
        MMode::Hybrid => LbMode::Hybrid,
    }
}

fn mode_name(m: LbMode) -> &'static str {
    match m {
        LbMode::Snat => "SNAT",
        LbMode::Dsr => "DSR",
        LbMode::Hybrid => "Hybrid",
    }
}

fn algorithm(a: MAlgorithm) -> LbAlgorithm {
    match a {
        MAlgorithm::Random => LbAlgorithm::Random,
        MAlgorithm::Maglev => LbAlgorithm::Maglev,
    }
}

fn type_word(k: FrontendKind) -> &'static str {
    match k {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::LoadBalancer => "LoadBalancer",
        FrontendKind::ExternalIp => "ExternalIPs",
    }
}

/// The maglev parameters of the node's datapath config, refused by field when Cilium would refuse.
pub fn maglev_params(cfg: &DatapathConfig) -> Result<MaglevParams, LbIntentError> {
    if !ALLOWED_TABLE_SIZES.contains(&cfg.maglev_table_size) {
        return Err(err(
            "datapath.maglevTableSize".into(),
            cfg.maglev_table_size,
            "must be one of Cilium's primes 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071",
        ));
    }
    Ok(MaglevParams {
        table_size: cfg.maglev_table_size,
        ..MaglevParams::default()
    })
}

/// Service ids of the frontends pinned now (slot-0 entries), for [`node_services`] to keep.
pub fn pinned_service_ids(e: &LbEntries) -> BTreeMap<Frontend, u32> {
    e.services
        .iter()
        .filter(|(k, _)| k.backend_slot == 0)
        .filter_map(|(k, v)| {
            Some((
                Frontend {
                    addr: ip_of(k.address),
                    port: port_of(k.dport),
                    proto: Proto::from_number(k.proto)?,
                },
                v.rev_nat_index,
            ))
        })
        .collect()
}

/// Backend ids pinned now, for [`crate::lb::assign_backend_ids`] to keep.
pub fn pinned_backend_ids(e: &LbEntries) -> BTreeMap<BackendKey, u32> {
    e.backends
        .iter()
        .filter_map(|(id, b)| {
            Some((
                BackendKey {
                    addr: ip_of(b.address),
                    port: port_of(b.port),
                    proto: Proto::from_number(b.proto)?,
                },
                *id,
            ))
        })
        .collect()
}

fn validate_frontend(
    intent: &NodeIntent,
    key: &str,
    i: usize,
    f: &FrontendIntent,
) -> Result<Frontend, LbIntentError> {
    let field = |what: &str| format!("services[{key}].frontends[{i}].{what}");
    if f.port == 0 {
        return Err(err(field("port"), f.port, "a frontend port must not be 0"));
    }
    let addr = match (f.kind, f.addr) {
        (FrontendKind::NodePort, None) => intent.node_ip,
        (FrontendKind::NodePort, Some(a)) => {
            return Err(err(
                field("addr"),
                a,
                "a NodePort frontend carries no address (the node's own is used)",
            ));
        }
        (_, None) => return Err(err(field("addr"), "none", "this frontend needs an address")),
        (_, Some(a)) if a.is_unspecified() || a.is_broadcast() || a.is_multicast() => {
            return Err(err(
                field("addr"),
                a,
                "not a unicast address a frontend can listen on",
            ));
        }
        (_, Some(a)) => a,
    };
    Ok(Frontend {
        addr,
        port: f.port,
        proto: proto(f.protocol),
    })
}

/// The backends a frontend names on this node: (backend, local, state, takes new flows). A
/// terminating backend takes new flows only while no active one is left (after the locality
/// filter); otherwise it only keeps its established flows (Cilium's `terminating` state).
fn eligible<'a>(
    intent: &NodeIntent,
    svc: &'a ServiceIntent,
    f: &FrontendIntent,
) -> Vec<(&'a BackendIntent, bool, BackendState, bool)> {
    let local_only = match f.kind {
        FrontendKind::ClusterIp => svc.internal_traffic_local,
        _ => svc.external_traffic_local,
    };
    let candidates: Vec<(&BackendIntent, bool)> = svc
        .backends
        .iter()
        .filter(|b| b.port_name == f.port_name && b.protocol == f.protocol)
        .map(|b| (b, b.node.as_deref() == Some(intent.node.as_str())))
        .filter(|(_, local)| !local_only || *local)
        .collect();
    let any_active = candidates.iter().any(|(b, _)| !b.terminating);
    candidates
        .into_iter()
        .map(|(b, local)| {
            let st = if b.terminating {
                BackendState::Terminating
            } else {
                BackendState::Active
            };
            (b, local, st, !any_active || !b.terminating)
        })
        .collect()
}

/// The services `intent` asks this node to serve, with ids kept from `pinned_ids` where the frontend
/// is already pinned. Without kube-proxy replacement the node serves nothing. Any invalid entry
/// fails the whole computation (the caller keeps what it holds), naming the field and value.
pub fn node_services(
    intent: &NodeIntent,
    pinned_ids: &BTreeMap<Frontend, u32>,
) -> Result<NodeServices, LbIntentError> {
    let cfg = &intent.datapath;
    let mut out = NodeServices::default();
    if !cfg.kube_proxy_replacement {
        return Ok(out);
    }
    maglev_params(cfg)?;
    let no_backend = match cfg.no_backend_response {
        MNoBackend::Drop => NoBackendResponse::Drop,
        MNoBackend::Reject => NoBackendResponse::Reject,
    };
    // Pass 1: validate and collect every frontend, each claimed by one service.
    let mut owner: BTreeMap<Frontend, String> = BTreeMap::new();
    let mut planned = Vec::new();
    for (name, svc) in intent.services.iter() {
        let key = &name.to_string();
        for (i, f) in svc.frontends.iter().enumerate() {
            let fe = validate_frontend(intent, key, i, f)?;
            if let Some(other) = owner.insert(fe, key.clone()) {
                if other == *key {
                    return Err(err(
                        format!("services[{key}].frontends[{i}]"),
                        format!("{}:{}/{}", fe.addr, fe.port, fe.proto.name()),
                        "frontend listed twice",
                    ));
                }
                return Err(err(
                    format!("services[{key}].frontends[{i}]"),
                    format!("{}:{}/{}", fe.addr, fe.port, fe.proto.name()),
                    "frontend already served by another service (the first by name keeps it)",
                ));
            }
            for (j, b) in svc.backends.iter().enumerate() {
                if b.port == 0 {
                    return Err(err(
                        format!("services[{key}].backends[{j}].port"),
                        b.port,
                        "a backend port must not be 0",
                    ));
                }
                if b.addr.is_unspecified() || b.addr.is_broadcast() || b.addr.is_multicast() {
                    return Err(err(
                        format!("services[{key}].backends[{j}].addr"),
                        b.addr,
                        "not a unicast backend address",
                    ));
                }
            }
            planned.push((fe, svc, f));
        }
    }
    // Pass 2: ids. Pinned ones stay; new frontends get the lowest free, in frontend order.
    let mut ids: BTreeMap<Frontend, u32> = owner
        .keys()
        .filter_map(|fe| pinned_ids.get(fe).map(|id| (*fe, *id)))
        .filter(|(_, id)| *id != 0)
        .collect();
    // Two frontends claiming one pinned id (a corrupted map) keep it only for the first.
    let mut used = BTreeSet::new();
    ids.retain(|_, id| used.insert(*id));
    let mut free = (1u32..).filter(|i| !used.contains(i));
    for fe in owner.keys() {
        ids.entry(*fe)
            .or_insert_with(|| free.next().expect("u32 ids"));
    }
    for (fe, svc, f) in planned {
        let external = f.kind != FrontendKind::ClusterIp;
        let named = eligible(intent, svc, f);
        let backends: Vec<_> = named.iter().filter(|(.., new_flows)| *new_flows).collect();
        let lb_backend = |(b, local, ..): &(&BackendIntent, bool, BackendState, bool)| Backend {
            addr: b.addr,
            port: b.port,
            local: *local,
            host_network: b.host_network,
        };
        let local_only = if external {
            svc.external_traffic_local
        } else {
            svc.internal_traffic_local
        };
        // A traffic policy Local with backends elsewhere only: drop, as Cilium does.
        let has_any = svc
            .backends
            .iter()
            .any(|b| b.port_name == f.port_name && b.protocol == f.protocol);
        let nb = if local_only && backends.is_empty() && has_any {
            NoBackendResponse::Drop
        } else {
            no_backend
        };
        let m = if external {
            mode(svc.mode)
        } else {
            LbMode::Snat
        };
        let spec = ServiceSpec {
            id: ids[&fe],
            frontend: fe,
            backends: backends.iter().map(|n| lb_backend(n)).collect(),
            mode: m,
            algorithm: algorithm(svc.algorithm),
            external_traffic_local: external && svc.external_traffic_local,
            affinity_timeout: svc.session_affinity_timeout,
            no_backend: nb,
            // Listed twice (active in one slice, terminating in another): it is active.
            draining: named
                .iter()
                .filter(|(b, _, _, new_flows)| {
                    !*new_flows
                        && !backends
                            .iter()
                            .any(|(a, ..)| (a.addr, a.port) == (b.addr, b.port))
                })
                .map(lb_backend)
                .collect(),
        };
        // Every backend the frontend names, as Cilium lists them (terminating ones too); one row
        // per address and port, the active state first.
        let mut rows: Vec<BackendRow> = named
            .iter()
            .map(|(b, local, st, _)| BackendRow {
                addr: b.addr,
                port: b.port,
                protocol: fe.proto.name().to_string(),
                state: *st,
                local: *local,
            })
            .collect();
        rows.sort_by_key(|r| (r.addr, r.port, r.state));
        rows.dedup_by_key(|r| (r.addr, r.port));
        out.rows.push(ServiceRow {
            id: spec.id,
            service: svc.name.to_string(),
            frontend_addr: fe.addr,
            frontend_port: fe.port,
            protocol: fe.proto.name().to_string(),
            service_type: type_word(f.kind).to_string(),
            mode: mode_name(m).to_string(),
            algorithm: match spec.algorithm {
                LbAlgorithm::Random => "Random",
                LbAlgorithm::Maglev => "Maglev",
            }
            .to_string(),
            backends: rows,
        });
        out.specs.push(spec);
    }
    out.specs.sort_by_key(|s| s.id);
    out.rows.sort_by_key(|r| r.id);
    Ok(out)
}

/// `cilium-dbg service list` (the ≤ v1.17 shape with the ID column): one row per frontend, backends
/// numbered on continuation lines, Go tabwriter padding (widest cell + 3 spaces).
pub fn format_service_list(rows: &[ServiceRow]) -> String {
    let mut lines: Vec<[String; 4]> = vec![[
        "ID".into(),
        "Frontend".into(),
        "Service Type".into(),
        "Backend".into(),
    ]];
    for r in rows {
        let mut first = true;
        let bes: Vec<String> = r
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    "{} => {}:{}/{} ({})",
                    i + 1,
                    b.addr,
                    b.port,
                    b.protocol,
                    b.state.name()
                )
            })
            .collect();
        if bes.is_empty() {
            lines.push([
                r.id.to_string(),
                r.frontend(),
                r.service_type.clone(),
                String::new(),
            ]);
        }
        for b in bes {
            if first {
                lines.push([r.id.to_string(), r.frontend(), r.service_type.clone(), b]);
                first = false;
            } else {
                lines.push([String::new(), String::new(), String::new(), b]);
            }
        }
    }
    let w: Vec<usize> = (0..3)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0) + 3)
        .collect();
    let mut out = String::new();
    for l in lines {
        let s = format!(
            "{:<w0$}{:<w1$}{:<w2$}{}",
            l[0],
            l[1],
            l[2],
            l[3],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2]
        );
        out.push_str(s.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::{assign_backend_ids, desired_entries, frontend_key};
    use crate::maps::c;
    use cilia_model::service::{Acceleration, ServiceName};

    const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
    const CIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const LBIP: Ipv4Addr = Ipv4Addr::new(172, 18, 255, 1);

    fn intent() -> NodeIntent {
        let mut i = NodeIntent::from_facts(
            cilia_model::NodeFacts {
                node: "worker".into(),
                node_ip: NODE_IP,
                pod_cidr: None,
                routing_mode: cilia_model::RoutingMode::Native,
                native_routing_cidr: None,
            },
            Default::default(),
        );
        i.datapath = DatapathConfig {
            kube_proxy_replacement: true,
            acceleration: Acceleration::Native,
            ..Default::default()
        };
        i
    }

    fn fe(kind: FrontendKind, addr: Option<Ipv4Addr>, port: u16) -> FrontendIntent {
        FrontendIntent {
            kind,
            addr,
            port,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
        }
    }

    fn be(last: u8, node: &str, terminating: bool) -> BackendIntent {
        BackendIntent {
            addr: Ipv4Addr::new(10, 244, 1, last),
            port: 8080,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            node: Some(node.into()),
            terminating,
            host_network: false,
        }
    }

    fn web(backends: Vec<BackendIntent>) -> ServiceIntent {
        ServiceIntent {
            name: ServiceName::new("default", "web"),
            frontends: vec![
                fe(FrontendKind::ClusterIp, Some(CIP), 80),
                fe(FrontendKind::NodePort, None, 30080),
                fe(FrontendKind::LoadBalancer, Some(LBIP), 80),
            ],
            backends,
            external_traffic_local: false,
            internal_traffic_local: false,
            session_affinity_timeout: None,
            mode: MMode::Dsr,
            algorithm: MAlgorithm::Maglev,
        }
    }

    fn with(svcs: Vec<ServiceIntent>) -> NodeIntent {
        let mut i = intent();
        for s in svcs {
            i.services.insert(s);
        }
        i
    }

    fn spec_of(n: &NodeServices, addr: Ipv4Addr, port: u16) -> &ServiceSpec {
        n.specs
            .iter()
            .find(|s| s.frontend.addr == addr && s.frontend.port == port)
            .unwrap_or_else(|| panic!("no frontend {addr}:{port} in {:?}", n.specs))
    }

    // NodePort listens on the node address; backends on this node are local; DSR only for the
    // external frontends; the algorithm reaches every frontend.
    #[test]
    fn frontends_and_locality() {
        let n = node_services(
            &with(vec![web(vec![
                be(1, "worker", false),
                be(2, "worker2", false),
            ])]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(n.specs.len(), 3);
        let np = spec_of(&n, NODE_IP, 30080);
        assert_eq!(np.mode, LbMode::Dsr);
        assert_eq!(np.algorithm, LbAlgorithm::Maglev);
        assert_eq!(
            np.backends.iter().map(|b| b.local).collect::<Vec<_>>(),
            vec![true, false]
        );
        assert_eq!(spec_of(&n, CIP, 80).mode, LbMode::Snat);
        assert_eq!(spec_of(&n, LBIP, 80).mode, LbMode::Dsr);
        let ids: BTreeSet<u32> = n.specs.iter().map(|s| s.id).collect();
        assert_eq!(ids, BTreeSet::from([1, 2, 3]));
        let np_row = n
            .rows
            .iter()
            .find(|r| r.service_type == "NodePort")
            .unwrap();
        assert_eq!(np_row.frontend(), "172.18.0.3:30080/TCP");
    }

    // externalTrafficPolicy Local: external frontends only local backends; none local → the
    // frontend stays with no slot and drops (not rejects); ClusterIP keeps every backend.
    #[test]
    fn external_traffic_local() {
        let mut s = web(vec![be(1, "worker", false), be(2, "worker2", false)]);
        s.external_traffic_local = true;
        let n = node_services(&with(vec![s.clone()]), &BTreeMap::new()).unwrap();
        let np = spec_of(&n, NODE_IP, 30080);
        assert_eq!(np.backends.len(), 1);
        assert!(np.backends[0].local && np.external_traffic_local);
        assert_eq!(spec_of(&n, CIP, 80).backends.len(), 2);
        assert!(!spec_of(&n, CIP, 80).external_traffic_local);

        s.backends = vec![be(2, "worker2", false)];
        let n = node_services(&with(vec![s]), &BTreeMap::new()).unwrap();
        let lb = spec_of(&n, LBIP, 80);
        assert!(lb.backends.is_empty());
        assert_eq!(lb.no_backend, NoBackendResponse::Drop);
        let ids = assign_backend_ids(&n.specs, &BTreeMap::new());
        let e = desired_entries(&n.specs, &ids, MaglevParams::default()).unwrap();
        let m = e.services[&frontend_key(&lb.frontend, 0)];
        assert_eq!(m.count, 0);
        assert_eq!(u32::from(m.flags) & c::LB_SVC_F_REJECT, 0);
        // A service without any backend answers per serviceNoBackendResponse (reject).
        let n = node_services(&with(vec![web(vec![])]), &BTreeMap::new()).unwrap();
        assert_eq!(spec_of(&n, LBIP, 80).no_backend, NoBackendResponse::Reject);
    }

    // internalTrafficPolicy Local narrows the ClusterIP frontend, not the external ones.
    #[test]
    fn internal_traffic_local() {
        let mut s = web(vec![be(1, "worker", false), be(2, "worker2", false)]);
        s.internal_traffic_local = true;
        let n = node_services(&with(vec![s]), &BTreeMap::new()).unwrap();
        let ci = spec_of(&n, CIP, 80);
        assert_eq!(ci.backends.len(), 1);
        assert_eq!(ci.backends[0].addr, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(spec_of(&n, NODE_IP, 30080).backends.len(), 2);
    }

    // Terminating backends serve only when no active one is left.
    #[test]
    fn terminating_only_without_active() {
        let n = node_services(
            &with(vec![web(vec![
                be(1, "worker", true),
                be(2, "worker2", false),
            ])]),
            &BTreeMap::new(),
        )
        .unwrap();
        let addrs: Vec<_> = spec_of(&n, CIP, 80)
            .backends
            .iter()
            .map(|b| b.addr)
            .collect();
        assert_eq!(addrs, vec![Ipv4Addr::new(10, 244, 1, 2)]);
        // The terminating one keeps its established flows: an entry, no slot.
        let draining: Vec<_> = spec_of(&n, CIP, 80)
            .draining
            .iter()
            .map(|b| b.addr)
            .collect();
        assert_eq!(draining, vec![Ipv4Addr::new(10, 244, 1, 1)]);
        let n = node_services(
            &with(vec![web(vec![
                be(1, "worker", true),
                be(3, "worker", true),
            ])]),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(spec_of(&n, CIP, 80).backends.len(), 2);
        assert!(spec_of(&n, CIP, 80).draining.is_empty());
        let row = n
            .rows
            .iter()
            .find(|r| r.service_type == "ClusterIP")
            .unwrap();
        assert!(
            row.backends
                .iter()
                .all(|b| b.state == BackendState::Terminating)
        );
    }

    // The terminating fallback is decided per frontend after the locality filter: with
    // externalTrafficPolicy Local, a node whose only local backend terminates serves external
    // traffic with it, while ClusterIP (all backends) uses the ready remote one and only drains it.
    #[test]
    fn terminating_fallback_follows_the_traffic_policy() {
        let mut s = web(vec![be(1, "worker", true), be(2, "worker2", false)]);
        s.external_traffic_local = true;
        let n = node_services(&with(vec![s]), &BTreeMap::new()).unwrap();
        let addrs = |v: &[Backend]| v.iter().map(|b| b.addr).collect::<Vec<_>>();
        let lb = spec_of(&n, LBIP, 80);
        assert_eq!(addrs(&lb.backends), vec![Ipv4Addr::new(10, 244, 1, 1)]);
        assert!(lb.draining.is_empty());
        let ci = spec_of(&n, CIP, 80);
        assert_eq!(addrs(&ci.backends), vec![Ipv4Addr::new(10, 244, 1, 2)]);
        assert_eq!(addrs(&ci.draining), vec![Ipv4Addr::new(10, 244, 1, 1)]);
    }

    // Backends serve only the frontend whose port name and protocol match.
    #[test]
    fn backends_match_by_port_name() {
        let mut s = web(vec![be(1, "worker", false)]);
        let mut metrics = be(1, "worker", false);
        metrics.port = 9090;
        metrics.port_name = "metrics".into();
        s.backends.push(metrics);
        let mut f = fe(FrontendKind::ClusterIp, Some(CIP), 9090);
        f.port_name = "metrics".into();
        s.frontends.push(f);
        let n = node_services(&with(vec![s]), &BTreeMap::new()).unwrap();
        assert_eq!(spec_of(&n, CIP, 80).backends[0].port, 8080);
        assert_eq!(spec_of(&n, CIP, 9090).backends[0].port, 9090);
    }

    // Ids survive: pinned frontends keep theirs, a new frontend takes the lowest free id, and a
    // removed service frees its ids without renumbering the others.
    #[test]
    fn service_ids_are_stable() {
        let a = with(vec![web(vec![be(1, "worker", false)])]);
        let n = node_services(&a, &BTreeMap::new()).unwrap();
        let ids = assign_backend_ids(&n.specs, &BTreeMap::new());
        let pinned = desired_entries(&n.specs, &ids, MaglevParams::default()).unwrap();
        let pinned_ids = pinned_service_ids(&pinned);
        assert_eq!(pinned_ids.len(), 3);
        assert_eq!(node_services(&a, &pinned_ids).unwrap(), n);

        // Another service whose name sorts first does not renumber the pinned ones.
        let mut other = web(vec![be(9, "worker", false)]);
        other.name = ServiceName::new("aaa", "first");
        other.frontends = vec![fe(
            FrontendKind::ClusterIp,
            Some(Ipv4Addr::new(10, 96, 0, 1)),
            443,
        )];
        let b = with(vec![other.clone(), web(vec![be(1, "worker", false)])]);
        let n2 = node_services(&b, &pinned_ids).unwrap();
        for (fe, id) in &pinned_ids {
            assert_eq!(n2.specs.iter().find(|s| s.frontend == *fe).unwrap().id, *id);
        }
        assert_eq!(
            n2.specs
                .iter()
                .find(|s| s.frontend.addr == Ipv4Addr::new(10, 96, 0, 1))
                .unwrap()
                .id,
            4
        );
        // Drop web: "first" keeps 4.
        let ids2 = pinned_service_ids(
            &desired_entries(
                &n2.specs,
                &assign_backend_ids(&n2.specs, &BTreeMap::new()),
                MaglevParams::default(),
            )
            .unwrap(),
        );
        let n3 = node_services(&with(vec![other]), &ids2).unwrap();
        assert_eq!(n3.specs.len(), 1);
        assert_eq!(n3.specs[0].id, 4);
    }

    // Without kube-proxy replacement nothing is served.
    #[test]
    fn no_kpr_no_services() {
        let mut i = with(vec![web(vec![be(1, "worker", false)])]);
        i.datapath.kube_proxy_replacement = false;
        assert!(
            node_services(&i, &BTreeMap::new())
                .unwrap()
                .specs
                .is_empty()
        );
    }

    // Bad input is refused by field and value.
    #[test]
    fn bad_input_names_field_and_value() {
        let mut i = with(vec![web(vec![])]);
        i.datapath.maglev_table_size = 1000;
        let e = node_services(&i, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.field, "datapath.maglevTableSize");
        assert_eq!(e.value, "1000");

        let mut s = web(vec![]);
        s.frontends[1].addr = Some(Ipv4Addr::new(1, 2, 3, 4));
        let e = node_services(&with(vec![s]), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.field, "services[default/web].frontends[1].addr");
        assert_eq!(e.value, "1.2.3.4");

        let mut s = web(vec![]);
        s.frontends[2].addr = None;
        let e = node_services(&with(vec![s]), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.field, "services[default/web].frontends[2].addr");

        let mut s = web(vec![be(1, "worker", false)]);
        s.backends[0].port = 0;
        let e = node_services(&with(vec![s]), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.field, "services[default/web].backends[0].port");
        assert!(e.to_string().contains("(got 0)"), "{e}");

        let mut dup = web(vec![]);
        dup.name = ServiceName::new("default", "xyz");
        let e = node_services(&with(vec![web(vec![]), dup]), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.field, "services[default/xyz].frontends[0]");
        assert_eq!(e.value, "10.96.0.10:80/TCP");
    }

    // `service list` in Cilium's shape.
    #[test]
    fn service_list_shape() {
        let n = node_services(
            &with(vec![web(vec![
                be(1, "worker", false),
                be(2, "worker2", true),
            ])]),
            &BTreeMap::new(),
        )
        .unwrap();
        let out = format_service_list(&n.rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "Frontend", "Service", "Type", "Backend"]
        );
        assert!(lines[0].starts_with("ID   Frontend"), "{out}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "1",
                "10.96.0.10:80/TCP",
                "ClusterIP",
                "1",
                "=>",
                "10.244.1.1:8080/TCP",
                "(active)"
            ]
        );
        // The terminating backend is listed (Cilium lists it, state `terminating`).
        assert_eq!(lines.len(), 7, "{out}");
        assert!(
            lines[2].ends_with("10.244.1.2:8080/TCP (terminating)"),
            "{out}"
        );
        let col = lines[0].find("Backend").unwrap();
        assert_eq!(lines[1].find("1 =>").unwrap(), col, "{out}");
        let e = node_services(&with(vec![web(vec![])]), &BTreeMap::new()).unwrap();
        let out = format_service_list(&e.rows);
        assert_eq!(
            out.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["1", "10.96.0.10:80/TCP", "ClusterIP"]
        );
    }
}
