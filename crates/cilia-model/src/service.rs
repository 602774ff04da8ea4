//! Services as the intent computation reads them (from `core/v1` Services and
//! `discovery.k8s.io/v1` EndpointSlices, converted by the operator) and as a node's intent carries
//! them (frontends and backends the agent turns into load-balancing map entries).
//!
//! This module is the contract between three parts: the operator's watchers fill [`ServiceInfo`] /
//! [`EndpointSliceInfo`] / [`DatapathConfig`] in [`crate::ClusterState`]; the intent computation
//! turns them into [`ServiceIntent`]s; the agent turns those into map entries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// `namespace/name` of a Service (also the key of its intent entry).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// L4 protocol of a port (SCTP is not load-balanced; the operator drops such ports with a log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// `spec.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    /// Not load-balanced (DNS only); carried so a type change is seen.
    ExternalName,
}

/// `spec.ports[].targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One `spec.ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortInfo {
    /// `name` ("" when the Service has a single unnamed port); EndpointSlice ports match by it.
    #[serde(default)]
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Allocated `nodePort` (NodePort and LoadBalancer Services).
    #[serde(default)]
    pub node_port: Option<u16>,
    #[serde(default)]
    pub target_port: Option<TargetPort>,
}

/// `service.cilium.io/forwarding-mode` (honoured when `bpf-lb-mode-annotation` is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMode {
    Snat,
    Dsr,
    Hybrid,
}

/// `service.cilium.io/lb-algorithm` (honoured when `bpf-lb-algorithm-annotation` is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbAlgorithm {
    Random,
    Maglev,
}

/// A Service as the datapath needs it (IPv4 only: the lab is IPv4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    #[serde(default, rename = "type")]
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (IPv4 ones); empty for headless Services, which are not load-balanced.
    #[serde(default)]
    pub cluster_ips: Vec<Ipv4Addr>,
    /// `spec.externalIPs`.
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip` (granted by LB-IPAM or another controller).
    #[serde(default)]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub ports: Vec<ServicePortInfo>,
    /// `externalTrafficPolicy: Local`.
    #[serde(default)]
    pub external_traffic_local: bool,
    /// `internalTrafficPolicy: Local`.
    #[serde(default)]
    pub internal_traffic_local: bool,
    /// `sessionAffinity: ClientIP` with `sessionAffinityConfig.clientIP.timeoutSeconds`
    /// (default 10800).
    #[serde(default)]
    pub session_affinity_timeout: Option<u32>,
    #[serde(default)]
    pub load_balancer_class: Option<String>,
    #[serde(default)]
    pub forwarding_mode: Option<LbMode>,
    #[serde(default)]
    pub algorithm: Option<LbAlgorithm>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ServiceInfo {
    pub fn service_name(&self) -> ServiceName {
        ServiceName::new(&self.namespace, &self.name)
    }
}

/// One `endpoints[]` entry of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointInfo {
    /// IPv4 addresses (Kubernetes puts one per endpoint).
    pub addresses: Vec<Ipv4Addr>,
    /// `conditions.ready` (unset counts as ready, as in Kubernetes).
    #[serde(default = "yes")]
    pub ready: bool,
    /// `conditions.serving` (unset: same as ready).
    #[serde(default = "yes")]
    pub serving: bool,
    #[serde(default)]
    pub terminating: bool,
    #[serde(default)]
    pub node_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// One `ports[]` entry of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPortInfo {
    #[serde(default)]
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A `discovery.k8s.io/v1` EndpointSlice (address type IPv4), tied to its Service by the
/// `kubernetes.io/service-name` label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceInfo {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    #[serde(default)]
    pub endpoints: Vec<EndpointInfo>,
    #[serde(default)]
    pub ports: Vec<EndpointPortInfo>,
}

/// Default `bpf-lb-maglev-table-size`.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;

/// `bpf-lb-acceleration`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acceleration {
    Native,
    BestEffort,
    #[default]
    Disabled,
    TestingOnly,
}

/// `bpf-lb-sock-hostns-only`-style reply to a frontend without backends
/// (`service-no-backend-response`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoBackendResponse {
    Drop,
    #[default]
    Reject,
}

/// The datapath part of `cilium-config` every agent receives (the operator converts
/// `cilia_api::config::CiliumConfig` into it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DatapathConfig {
    /// `kube-proxy-replacement`: the agent load-balances Services at all.
    #[serde(default)]
    pub kube_proxy_replacement: bool,
    #[serde(default = "default_lb_mode")]
    pub lb_mode: LbMode,
    #[serde(default = "default_lb_algorithm")]
    pub lb_algorithm: LbAlgorithm,
    #[serde(default)]
    pub acceleration: Acceleration,
    #[serde(default = "default_maglev")]
    pub maglev_table_size: u32,
    #[serde(default)]
    pub no_backend_response: NoBackendResponse,
    /// Honour `service.cilium.io/forwarding-mode` / `lb-algorithm` annotations.
    #[serde(default)]
    pub mode_annotation: bool,
    #[serde(default)]
    pub algorithm_annotation: bool,
    /// `enable-ipv4-masquerade`.
    #[serde(default)]
    pub masquerade: bool,
    /// `enable-bpf-masquerade` (false with masquerade on: iptables).
    #[serde(default)]
    pub bpf_masquerade: bool,
    /// `enable-ip-masq-agent`: the non-masquerade set comes from [`Self::non_masquerade_cidrs`].
    #[serde(default)]
    pub ip_masq_agent: bool,
    /// The ip-masq-agent `nonMasqueradeCIDRs` (Cilium's defaults when its config is absent).
    #[serde(default)]
    pub non_masquerade_cidrs: Vec<Ipv4Net>,
    /// ip-masq-agent `masqLinkLocal`.
    #[serde(default)]
    pub masq_link_local: bool,
    /// `enable-l2-announcements`.
    #[serde(default)]
    pub l2_announcements: bool,
    /// `l2-announcements-lease-duration`: an agent answers for its VIPs only while it has heard
    /// from the operator within this time (its BPF responder checks the same deadline), and the
    /// operator hands a gone agent's VIPs to another node only after it.
    #[serde(default = "default_l2_lease_ms")]
    pub l2_lease_ms: u32,
    /// `l2-announcements-renew-deadline`: an agent not heard from for this long is gone.
    #[serde(default = "default_l2_renew_deadline_ms")]
    pub l2_renew_deadline_ms: u32,
    /// `l2-announcements-retry-period`: heartbeat interval both ways while L2 announcements are on.
    #[serde(default = "default_l2_retry_period_ms")]
    pub l2_retry_period_ms: u32,
    /// `policy-audit-mode`.
    #[serde(default)]
    pub policy_audit_mode: bool,
    /// Node devices the datapath attaches to (`devices`); empty: the device of the node address.
    #[serde(default)]
    pub devices: Vec<String>,
}

fn default_lb_mode() -> LbMode {
    LbMode::Snat
}
fn default_lb_algorithm() -> LbAlgorithm {
    LbAlgorithm::Random
}
fn default_maglev() -> u32 {
    DEFAULT_MAGLEV_TABLE_SIZE
}

/// L2 timings when `cilium-config` sets none. Not Cilium's 15 s / 5 s / 2 s: those exist to
/// spare the API server a Lease write per Service per renewal, and here renewals are heartbeats
/// on a stream the agent holds anyway. 400 ms / 300 ms / 100 ms bound a failover under 1 s.
pub const DEFAULT_L2_LEASE_MS: u32 = 400;
pub const DEFAULT_L2_RENEW_DEADLINE_MS: u32 = 300;
pub const DEFAULT_L2_RETRY_PERIOD_MS: u32 = 100;

fn default_l2_lease_ms() -> u32 {
    DEFAULT_L2_LEASE_MS
}
fn default_l2_renew_deadline_ms() -> u32 {
    DEFAULT_L2_RENEW_DEADLINE_MS
}
fn default_l2_retry_period_ms() -> u32 {
    DEFAULT_L2_RETRY_PERIOD_MS
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            kube_proxy_replacement: false,
            lb_mode: LbMode::Snat,
            lb_algorithm: LbAlgorithm::Random,
            acceleration: Acceleration::Disabled,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            no_backend_response: NoBackendResponse::Reject,
            mode_annotation: false,
            algorithm_annotation: false,
            masquerade: false,
            bpf_masquerade: false,
            ip_masq_agent: false,
            non_masquerade_cidrs: Vec::new(),
            masq_link_local: false,
            l2_announcements: false,
            l2_lease_ms: DEFAULT_L2_LEASE_MS,
            l2_renew_deadline_ms: DEFAULT_L2_RENEW_DEADLINE_MS,
            l2_retry_period_ms: DEFAULT_L2_RETRY_PERIOD_MS,
            policy_audit_mode: false,
            devices: Vec::new(),
        }
    }
}

/// Which address a frontend listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FrontendKind {
    ClusterIp,
    /// Every node's own address(es); the agent substitutes its node address.
    NodePort,
    LoadBalancer,
    ExternalIp,
}

/// Where a Service is reached on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FrontendIntent {
    pub kind: FrontendKind,
    /// `None` for [`FrontendKind::NodePort`] (the node's own address).
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    pub protocol: Protocol,
    /// The Service port's name: backends serve the frontend whose `port_name` and protocol match.
    pub port_name: String,
}

/// One backend of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendIntent {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub port_name: String,
    /// The node running it: the agent marks backends on its own node local
    /// (`externalTrafficPolicy` / `internalTrafficPolicy: Local`).
    pub node: Option<String>,
    /// Not ready but serving and terminating: keeps its established flows, and takes new ones only
    /// when no active backend is left for a frontend (the agent decides, per frontend).
    pub terminating: bool,
    /// The address is a node's own (a hostNetwork pod): DSR falls back to SNAT for it.
    pub host_network: bool,
}

/// A Service as every node's agent must load-balance it. Identical for every node (node-local
/// marking happens in the agent from [`BackendIntent::node`]), so the operator computes it once per
/// change and shares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceIntent {
    pub name: ServiceName,
    /// Sorted, no duplicates.
    pub frontends: Vec<FrontendIntent>,
    /// Sorted, no duplicates.
    pub backends: Vec<BackendIntent>,
    pub external_traffic_local: bool,
    pub internal_traffic_local: bool,
    pub session_affinity_timeout: Option<u32>,
    /// The Service's own mode / algorithm when annotations are honoured; else the config's.
    pub mode: LbMode,
    pub algorithm: LbAlgorithm,
}

/// The Services of a node's intent, by name: shared, not copied. Every node's intent carries the
/// same Services, so the operator keeps one `ServiceMap` and hands every node a clone of it (one
/// reference count); a change to one Service copies the list of references once, not the Services.
/// Sorted by [`ServiceName`], unique; the entry key of a Service is `namespace/name`.
#[derive(Clone, Default)]
pub struct ServiceMap(Arc<Vec<Arc<ServiceIntent>>>);

impl ServiceMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn position(&self, name: &ServiceName) -> Result<usize, usize> {
        self.0.binary_search_by(|s| s.name.cmp(name))
    }

    /// The Service named `key` (`namespace/name`).
    pub fn get(&self, key: &str) -> Option<&ServiceIntent> {
        let (ns, name) = key.split_once('/')?;
        self.get_by_name(&ServiceName::new(ns, name))
    }

    pub fn get_by_name(&self, name: &ServiceName) -> Option<&ServiceIntent> {
        self.position(name).ok().map(|i| &*self.0[i])
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Inserts (or replaces) a Service under its own name; returns the one it replaced.
    pub fn insert(&mut self, svc: impl Into<Arc<ServiceIntent>>) -> Option<Arc<ServiceIntent>> {
        let svc = svc.into();
        match self.position(&svc.name) {
            Ok(i) => Some(std::mem::replace(&mut Arc::make_mut(&mut self.0)[i], svc)),
            Err(i) => {
                Arc::make_mut(&mut self.0).insert(i, svc);
                None
            }
        }
    }

    pub fn remove(&mut self, name: &ServiceName) -> Option<Arc<ServiceIntent>> {
        let i = self.position(name).ok()?;
        Some(Arc::make_mut(&mut self.0).remove(i))
    }

    /// `(name, service)` in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&ServiceName, &ServiceIntent)> {
        self.0.iter().map(|s| (&s.name, &**s))
    }

    pub fn keys(&self) -> impl Iterator<Item = &ServiceName> {
        self.0.iter().map(|s| &s.name)
    }

    pub fn values(&self) -> impl Iterator<Item = &ServiceIntent> {
        self.0.iter().map(|s| &**s)
    }

    /// The shared Services themselves, in name order (cloning one is a reference count).
    pub fn shared(&self) -> &[Arc<ServiceIntent>] {
        &self.0
    }

    /// Whether both are the very same list: then they are equal without looking inside.
    pub fn ptr_eq(&self, other: &ServiceMap) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl PartialEq for ServiceMap {
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other)
            || (self.len() == other.len()
                && self
                    .0
                    .iter()
                    .zip(other.0.iter())
                    .all(|(a, b)| Arc::ptr_eq(a, b) || a == b))
    }
}

impl Eq for ServiceMap {}

impl fmt::Debug for ServiceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|s| (s.name.to_string(), s)))
            .finish()
    }
}

impl<S: Into<Arc<ServiceIntent>>> FromIterator<S> for ServiceMap {
    /// Later Services replace earlier ones of the same name.
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut v: Vec<Arc<ServiceIntent>> = iter.into_iter().map(Into::into).collect();
        // dedup keeps the first of equal neighbours and the sort is stable: reversing first makes
        // the last one given the one kept.
        v.reverse();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.dedup_by(|a, b| a.name == b.name);
        ServiceMap(Arc::new(v))
    }
}

impl<'a> IntoIterator for &'a ServiceMap {
    type Item = (&'a ServiceName, &'a ServiceIntent);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, Arc<ServiceIntent>>,
        fn(&'a Arc<ServiceIntent>) -> (&'a ServiceName, &'a ServiceIntent),
    >;
    fn into_iter(self) -> Self::IntoIter {
        fn pair(s: &Arc<ServiceIntent>) -> (&ServiceName, &ServiceIntent) {
            (&s.name, s)
        }
        self.0.iter().map(pair)
    }
}

/// As JSON: an object keyed by `namespace/name`, as the intent file and the held intent show it.
impl Serialize for ServiceMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|v| (v.name.to_string(), &**v)))
    }
}

impl<'de> Deserialize<'de> for ServiceMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, ServiceIntent>::deserialize(d)?;
        for (k, v) in &m {
            if *k != v.name.to_string() {
                return Err(serde::de::Error::custom(format!(
                    "service key {k:?} does not match its name {}",
                    v.name
                )));
            }
        }
        Ok(m.into_values().collect())
    }
}

// ---- ServiceInfo + EndpointSlices → ServiceIntent ----

/// What a Service's intent depends on besides the Service and its EndpointSlices.
#[derive(Debug, Clone, Copy)]
pub struct ServiceContext<'a> {
    pub datapath: &'a DatapathConfig,
    /// Every node's `InternalIP`: a backend there is a host-network pod.
    pub node_ips: &'a HashSet<Ipv4Addr>,
}

/// Whether a Service is load-balanced at all: ExternalName and headless Services are not.
pub fn is_load_balanced(svc: &ServiceInfo) -> bool {
    svc.service_type != ServiceType::ExternalName && !svc.cluster_ips.is_empty()
}

/// Computes one Service's intent from the Service and the EndpointSlices of it (those whose
/// `service` label names it in its namespace; others are ignored here too). `None` for
/// Services that are not load-balanced (ExternalName, headless).
///
/// Frontends: each clusterIP × port; for NodePort and LoadBalancer Services each allocated
/// nodePort (address: the node's own); for LoadBalancer Services each ingress IP × port; each
/// externalIP × port. Backends, per Service port: the endpoints of the slice ports with the same
/// name and protocol: ready ones, and the serving and terminating ones, marked `terminating`.
/// Terminating backends are always carried (Cilium keeps them in its backend map, state
/// `terminating`): the agent gives them no new flow while an active backend is left for the
/// frontend (decided per frontend, after `externalTrafficPolicy`/`internalTrafficPolicy: Local`
/// filtered the set), but keeps their entries so established flows finish on them.
pub fn service_intent<'s>(
    svc: &ServiceInfo,
    slices: impl IntoIterator<Item = &'s EndpointSliceInfo>,
    cx: ServiceContext<'_>,
) -> Option<ServiceIntent> {
    if !is_load_balanced(svc) {
        return None;
    }
    let mut frontends = Vec::new();
    for p in &svc.ports {
        let fe = |kind, addr| FrontendIntent {
            kind,
            addr,
            port: p.port,
            protocol: p.protocol,
            port_name: p.name.clone(),
        };
        for ip in &svc.cluster_ips {
            frontends.push(fe(FrontendKind::ClusterIp, Some(*ip)));
        }
        if matches!(
            svc.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) && let Some(np) = p.node_port
        {
            frontends.push(FrontendIntent {
                port: np,
                ..fe(FrontendKind::NodePort, None)
            });
        }
        if svc.service_type == ServiceType::LoadBalancer {
            for ip in &svc.load_balancer_ips {
                frontends.push(fe(FrontendKind::LoadBalancer, Some(*ip)));
            }
        }
        for ip in &svc.external_ips {
            frontends.push(fe(FrontendKind::ExternalIp, Some(*ip)));
        }
    }
    frontends.sort();
    frontends.dedup();

    let slices: Vec<&EndpointSliceInfo> = slices
        .into_iter()
        .filter(|s| s.namespace == svc.namespace && s.service == svc.name)
        .collect();
    let mut backends = Vec::new();
    for sp in &svc.ports {
        let mut ready = Vec::new();
        let mut terminating = Vec::new();
        for slice in &slices {
            for ep_port in slice
                .ports
                .iter()
                .filter(|ep| ep.name == sp.name && ep.protocol == sp.protocol)
            {
                for ep in &slice.endpoints {
                    let into = if ep.ready {
                        &mut ready
                    } else if ep.serving && ep.terminating {
                        &mut terminating
                    } else {
                        continue;
                    };
                    for addr in &ep.addresses {
                        into.push(BackendIntent {
                            addr: *addr,
                            port: ep_port.port,
                            protocol: sp.protocol,
                            port_name: sp.name.clone(),
                            node: ep.node_name.clone(),
                            terminating: !ep.ready,
                            host_network: cx.node_ips.contains(addr),
                        });
                    }
                }
            }
        }
        backends.extend(ready);
        backends.extend(terminating);
    }
    backends.sort();
    backends.dedup();

    let dp = cx.datapath;
    Some(ServiceIntent {
        name: svc.service_name(),
        frontends,
        backends,
        external_traffic_local: svc.external_traffic_local,
        internal_traffic_local: svc.internal_traffic_local,
        session_affinity_timeout: svc.session_affinity_timeout,
        mode: match svc.forwarding_mode {
            Some(m) if dp.mode_annotation => m,
            _ => dp.lb_mode,
        },
        algorithm: match svc.algorithm {
            Some(a) if dp.algorithm_annotation => a,
            _ => dp.lb_algorithm,
        },
    })
}

/// Every node's `InternalIP`.
pub fn node_ips(cluster: &crate::ClusterState) -> HashSet<Ipv4Addr> {
    cluster.nodes.iter().map(|n| n.internal_ip).collect()
}

/// The EndpointSlices of each Service, by Service name. Of two slices with one `namespace/name`
/// the later stands.
pub fn slices_by_service(
    slices: &[EndpointSliceInfo],
) -> HashMap<ServiceName, Vec<&EndpointSliceInfo>> {
    let mut latest: HashMap<(&str, &str), &EndpointSliceInfo> = HashMap::new();
    for s in slices {
        latest.insert((&s.namespace, &s.name), s);
    }
    let mut m: HashMap<ServiceName, Vec<&EndpointSliceInfo>> = HashMap::new();
    for s in latest.into_values() {
        m.entry(ServiceName::new(&s.namespace, &s.service))
            .or_default()
            .push(s);
    }
    m
}

/// Every load-balanced Service of the cluster (the same for every node). Of two Services with one
/// name the later in `cluster.services` stands.
pub fn services(cluster: &crate::ClusterState) -> ServiceMap {
    let ips = node_ips(cluster);
    let cx = ServiceContext {
        datapath: &cluster.datapath,
        node_ips: &ips,
    };
    let by_service = slices_by_service(&cluster.endpoint_slices);
    let mut latest: HashMap<ServiceName, &ServiceInfo> = HashMap::new();
    for s in &cluster.services {
        latest.insert(s.service_name(), s);
    }
    latest
        .into_iter()
        .filter_map(|(name, svc)| {
            let slices = by_service.get(&name).map(Vec::as_slice).unwrap_or(&[]);
            service_intent(svc, slices.iter().copied(), cx)
        })
        .collect()
}

#[cfg(test)]
mod tests;
