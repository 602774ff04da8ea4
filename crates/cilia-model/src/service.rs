//! Services as the intent computation reads them (from `core/v1` Services and
//! `discovery.k8s.io/v1` EndpointSlices, converted by the operator) and as a node's intent carries
//! them (frontends and backends the agent turns into load-balancing map entries).
//!
//! This module is the contract between three parts: the operator's watchers fill [`ServiceInfo`] /
//! [`EndpointSliceInfo`] / [`DatapathConfig`] in [`crate::ClusterState`]; the intent computation
//! turns them into [`ServiceIntent`]s; the agent turns those into map entries.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

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
    /// Not ready but serving and terminating: used only when no ready backend is left.
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
