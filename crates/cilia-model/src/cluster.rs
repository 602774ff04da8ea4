//! The cluster facts the intent computation reads: nodes and the routing configuration.

use std::collections::{BTreeMap, BTreeSet};
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
    /// Valid parts of the `CiliumL2AnnouncementPolicy` objects (the operator reports the rest).
    #[serde(default)]
    pub l2_policies: Vec<crate::l2::L2Policy>,
    /// What the intent server knows of each node's agent; a node without an entry has none.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentReport>,
    /// The node each announced Service was last given to, by `namespace/name` (what the
    /// `cilium-l2announce-*` Leases record): the fence of a hand-over from a lapsing node.
    #[serde(default)]
    pub l2_holders: BTreeMap<String, String>,
    /// Services (`namespace/name`) whose announcer is moving from one live node to another: no
    /// node announces them until the old one confirmed it stopped (or its lease ran out).
    #[serde(default)]
    pub l2_fenced: BTreeSet<String>,
    /// `CiliumClusterwideNetworkPolicy` rules, converted (a policy that failed is absent whole).
    #[serde(default)]
    pub policies: Vec<crate::policy::PolicyRule>,
    /// Pods with an address, with their namespace's labels.
    #[serde(default)]
    pub pods: Vec<crate::policy::PolicyPod>,
    /// Enforcement settings and the API server's addresses.
    #[serde(default)]
    pub policy_env: crate::policy::PolicyEnv,
}

/// A node's agent as the intent server sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentReport {
    /// Connected and heartbeating. `false`: gone, but its L2 announcements may still be
    /// answered until its lease lapses (the entry is dropped then).
    pub live: bool,
    /// Interfaces the agent reports up (with carrier).
    #[serde(default)]
    pub up_interfaces: BTreeSet<String>,
}

impl ClusterState {
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The nodes as the L2 announcer choice sees them (first of each name).
    pub fn l2_nodes(&self) -> Vec<crate::l2::L2Node> {
        let mut seen = BTreeSet::new();
        self.nodes
            .iter()
            .filter(|n| seen.insert(n.name.as_str()))
            .map(|n| {
                let a = self.agents.get(&n.name);
                crate::l2::L2Node {
                    name: n.name.clone(),
                    labels: n.labels.clone(),
                    agent_live: a.is_some_and(|a| a.live),
                    up_interfaces: a.map(|a| a.up_interfaces.clone()).unwrap_or_default(),
                    lapsing: a.is_some_and(|a| !a.live),
                }
            })
            .collect()
    }

    /// The nodes as policy sees them (first of each name).
    pub fn policy_nodes(&self) -> Vec<crate::policy::PolicyNode> {
        let mut seen = BTreeSet::new();
        self.nodes
            .iter()
            .filter(|n| seen.insert(n.name.as_str()))
            .map(|n| crate::policy::PolicyNode {
                name: n.name.clone(),
                ip: n.internal_ip,
                labels: n.labels.clone(),
            })
            .collect()
    }

    /// Every Service's L2 announcer, fenced against hand-overs from lapsing nodes; none when L2
    /// announcements are off.
    pub fn l2_choices(&self) -> BTreeMap<crate::service::ServiceName, crate::l2::L2Choice> {
        self.l2_plan().0
    }

    /// The L2 choice (fenced, as [`Self::l2_choices`]) and the choice before any fence, from which
    /// the standbys of fenced Services come (see [`crate::l2::node_l2_entries`]).
    #[allow(clippy::type_complexity)]
    pub fn l2_plan(
        &self,
    ) -> (
        BTreeMap<crate::service::ServiceName, crate::l2::L2Choice>,
        BTreeMap<crate::service::ServiceName, crate::l2::L2Choice>,
    ) {
        if !self.datapath.l2_announcements || self.l2_policies.is_empty() {
            return Default::default();
        }
        let nodes = self.l2_nodes();
        let unfenced = crate::l2::choose_announcers(
            &self.l2_policies,
            &nodes,
            &self.services,
            &self.endpoint_slices,
        );
        let mut c = crate::l2::fence(unfenced.clone(), &nodes, &self.l2_holders);
        if !self.l2_fenced.is_empty() {
            c.retain(|svc, _| !self.l2_fenced.contains(&svc.to_string()));
        }
        (c, unfenced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A cluster file may leave out anything that has its default (false, empty, absent): the
    // new L2 and policy parts too. Every generated cluster survives that.
    proptest::proptest! {
        #[test]
        fn round_trips_through_json_without_defaults(c in crate::testgen::arb_cluster()) {
            let mut v = serde_json::to_value(&c).unwrap();
            strip_defaults(&mut v);
            let text = v.to_string();
            let back: ClusterState = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{e}: {text}"));
            proptest::prop_assert_eq!(back, c);
        }
    }

    fn strip_defaults(v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                for x in m.values_mut() {
                    strip_defaults(x);
                }
                // `ready` and `serving` of an endpoint default to true, as in the API.
                m.retain(|k, x| {
                    let default_true = matches!(k.as_str(), "ready" | "serving");
                    !(x.is_null()
                        || x.as_array().is_some_and(Vec::is_empty)
                        || (!default_true && x.as_bool() == Some(false))
                        || (default_true && x.as_bool() == Some(true)))
                });
            }
            Value::Array(a) => a.iter_mut().for_each(strip_defaults),
            _ => {}
        }
    }
}
