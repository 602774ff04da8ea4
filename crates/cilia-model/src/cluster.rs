//! The cluster facts the intent computation reads: nodes and the routing configuration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// One Kubernetes Node as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    /// The node's `InternalIP`: where other nodes send traffic for its pods.
    pub internal_ip: Ipv4Addr,
    /// `spec.podCIDR`; a node without one has no pods to route to yet.
    #[serde(default)]
    pub pod_cidr: Option<Ipv4Net>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `routing-mode` (Helm `routingMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    #[default]
    Native,
    Tunnel,
}

/// The routing part of `cilium-config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutingConfig {
    #[serde(default)]
    pub mode: RoutingMode,
    /// `auto-direct-node-routes`: install a route to every other node's pod CIDR via its address.
    #[serde(default)]
    pub auto_direct_node_routes: bool,
    /// `ipv4-native-routing-cidr`: destinations reachable without masquerading.
    #[serde(default)]
    pub native_routing_cidr: Option<Ipv4Net>,
}

/// Everything the intent computation needs to know about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Services (any order; keyed by namespace/name).
    #[serde(default)]
    pub services: Vec<crate::service::ServiceInfo>,
    /// EndpointSlices (any order; keyed by namespace/name).
    #[serde(default)]
    pub endpoint_slices: Vec<crate::service::EndpointSliceInfo>,
    /// The datapath part of `cilium-config`.
    #[serde(default)]
    pub datapath: crate::service::DatapathConfig,
}

impl ClusterState {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
