//! `ClusterState → NodeIntent`: what one node's agent must make true in its kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterState, NodeInfo, RoutingMode};
use crate::l2::L2Announcement;
use crate::policy::NodePolicy;
use crate::service::{DatapathConfig, ServiceMap};

/// The VIPs a node announces, by VIP.
pub type L2Map = BTreeMap<Ipv4Addr, L2Announcement>;

/// A route to another node's pod CIDR through that node's address (native routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteIntent {
    pub dst: Ipv4Net,
    pub via: Ipv4Addr,
}

/// The node's own facts and datapath settings: one entry of its intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFacts {
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Option<Ipv4Net>,
    pub routing_mode: RoutingMode,
    pub native_routing_cidr: Option<Ipv4Net>,
}

/// Everything one node's agent must program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeIntent {
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Option<Ipv4Net>,
    pub routing_mode: RoutingMode,
    /// Recorded for masquerading: traffic into this range is never masqueraded.
    pub native_routing_cidr: Option<Ipv4Net>,
    /// Shared: rebuilding 1,000 intents for one Service change must not copy 1,000 route sets.
    pub routes: Arc<BTreeSet<RouteIntent>>,
    /// Services to load-balance, by `namespace/name`; the same for every node, and shared.
    #[serde(default)]
    pub services: ServiceMap,
    /// The datapath part of `cilium-config`.
    #[serde(default)]
    pub datapath: DatapathConfig,
    /// The VIPs this node answers ARP for (the operator chose it as their announcer).
    #[serde(default)]
    pub l2: Arc<L2Map>,
    /// The policy this node enforces: identities of addresses, and the tables of its endpoints
    /// (pods, and the host itself for host policies) that some rule selects.
    #[serde(default)]
    pub policy: Arc<NodePolicy>,
}

impl NodeIntent {
    pub fn facts(&self) -> NodeFacts {
        NodeFacts {
            node: self.node.clone(),
            node_ip: self.node_ip,
            pod_cidr: self.pod_cidr,
            routing_mode: self.routing_mode,
            native_routing_cidr: self.native_routing_cidr,
        }
    }

    pub fn from_facts(f: NodeFacts, routes: BTreeSet<RouteIntent>) -> Self {
        NodeIntent {
            node: f.node,
            node_ip: f.node_ip,
            pod_cidr: f.pod_cidr,
            routing_mode: f.routing_mode,
            native_routing_cidr: f.native_routing_cidr,
            routes: Arc::new(routes),
            services: ServiceMap::new(),
            datapath: DatapathConfig::default(),
            l2: Arc::default(),
            policy: Arc::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    #[error("node {0:?} is not in the cluster state")]
    UnknownNode(String),
}

/// Computes the intent of `node`: its facts, its routes ([`routes`]), every load-balanced Service
/// ([`crate::service::services`]) and the datapath settings.
pub fn node_intent(cluster: &ClusterState, node: &str) -> Result<NodeIntent, IntentError> {
    let me = cluster
        .node(node)
        .ok_or_else(|| IntentError::UnknownNode(node.to_string()))?;
    Ok(NodeIntent {
        node: me.name.clone(),
        node_ip: me.internal_ip,
        pod_cidr: me.pod_cidr,
        routing_mode: cluster.routing.mode,
        native_routing_cidr: cluster.routing.native_routing_cidr,
        routes: Arc::new(routes(cluster, me)),
        services: crate::service::services(cluster),
        datapath: cluster.datapath.clone(),
        l2: Arc::new({
            let (choices, unfenced) = cluster.l2_plan();
            crate::l2::node_l2_entries(&choices, &unfenced)
                .remove(&me.name)
                .unwrap_or_default()
        }),
        policy: Arc::new(node_policy(cluster, &me.name)),
    })
}

/// The policy `node` enforces (see [`crate::policy::compile_node`]). A node with no enforced
/// endpoint holds nothing, not even identities: it would never look them up.
pub fn node_policy(cluster: &ClusterState, node: &str) -> NodePolicy {
    if cluster.policies.is_empty()
        && cluster.policy_env.mode != crate::policy::EnforcementMode::Always
    {
        return NodePolicy::default();
    }
    let p = crate::policy::compile_node(
        node,
        &cluster.policies,
        &cluster.pods,
        &cluster.policy_nodes(),
        &cluster.policy_env,
    );
    if p.endpoints.is_empty() {
        return NodePolicy::default();
    }
    p
}

/// The routes of node `me`: with native routing and `autoDirectNodeRoutes`, one route per other
/// node that has a pod CIDR, via that node's address. A peer whose pod CIDR overlaps this node's
/// own gets no route (it would steal local pods' traffic); of two peers claiming one pod CIDR the
/// first by name wins, on every node alike.
pub fn routes(cluster: &ClusterState, me: &NodeInfo) -> BTreeSet<RouteIntent> {
    let mut routes = BTreeSet::new();
    if !routes_enabled(&cluster.routing) {
        return routes;
    }
    // Destinations routed so far: a set, so a cluster of n nodes costs O(n log n) per node.
    let mut dsts = BTreeSet::new();
    // Peers by name, so that when two claim one pod CIDR the same one wins on every node.
    let mut peers: Vec<_> = cluster.nodes.iter().filter(|n| n.name != me.name).collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    for peer in peers {
        let Some(dst) = peer.pod_cidr else { continue };
        if overlaps(me.pod_cidr, dst) {
            continue;
        }
        // One route per destination: the kernel holds one, and intents are keyed by it.
        if !dsts.insert(dst) {
            continue;
        }
        routes.insert(RouteIntent {
            dst,
            via: peer.internal_ip,
        });
    }
    routes
}

/// Whether direct routes to other nodes' pod CIDRs are installed at all.
pub fn routes_enabled(r: &crate::cluster::RoutingConfig) -> bool {
    r.mode == RoutingMode::Native && r.auto_direct_node_routes
}

/// Whether a peer's pod CIDR `dst` overlaps a node's own (`own`): then it gets no route there.
pub fn overlaps(own: Option<Ipv4Net>, dst: Ipv4Net) -> bool {
    own.is_some_and(|own| own.contains(&dst) || dst.contains(&own))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeInfo, RoutingConfig};

    fn mk_node(name: &str, ip: [u8; 4], cidr: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            internal_ip: Ipv4Addr::from(ip),
            pod_cidr: cidr.map(|c| c.parse().unwrap()),
            labels: Default::default(),
        }
    }

    fn lab() -> ClusterState {
        ClusterState {
            nodes: vec![
                mk_node("control-plane", [172, 18, 0, 2], Some("10.244.0.0/24")),
                mk_node("worker", [172, 18, 0, 3], Some("10.244.1.0/24")),
                mk_node("worker2", [172, 18, 0, 4], Some("10.244.2.0/24")),
            ],
            routing: RoutingConfig {
                mode: RoutingMode::Native,
                auto_direct_node_routes: true,
                native_routing_cidr: Some("10.244.0.0/16".parse().unwrap()),
            },
            ..Default::default()
        }
    }

    fn route(dst: &str, via: [u8; 4]) -> RouteIntent {
        RouteIntent {
            dst: dst.parse().unwrap(),
            via: Ipv4Addr::from(via),
        }
    }

    // Native routing with auto direct routes: one route per other node, via its address.
    #[test]
    fn routes_to_every_other_nodes_pod_cidr() {
        let i = node_intent(&lab(), "worker").unwrap();
        let want: BTreeSet<_> = [
            route("10.244.0.0/24", [172, 18, 0, 2]),
            route("10.244.2.0/24", [172, 18, 0, 4]),
        ]
        .into();
        assert_eq!(*i.routes, want);
        assert_eq!(i.pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(
            i.native_routing_cidr,
            Some("10.244.0.0/16".parse().unwrap())
        );
    }

    // A node that leaves the cluster takes its route with it.
    #[test]
    fn removed_node_removes_its_route() {
        let mut c = lab();
        c.nodes.retain(|n| n.name != "worker2");
        let i = node_intent(&c, "worker").unwrap();
        assert_eq!(*i.routes, [route("10.244.0.0/24", [172, 18, 0, 2])].into());
    }

    // No pod CIDR yet: nothing to route to.
    #[test]
    fn node_without_pod_cidr_gets_no_route() {
        let mut c = lab();
        c.nodes[2].pod_cidr = None;
        let i = node_intent(&c, "worker").unwrap();
        assert_eq!(i.routes.len(), 1);
    }

    // Tunnel mode and native without autoDirectNodeRoutes install no direct routes.
    #[test]
    fn no_direct_routes_unless_native_and_auto() {
        let mut c = lab();
        c.routing.auto_direct_node_routes = false;
        assert!(node_intent(&c, "worker").unwrap().routes.is_empty());
        let mut c = lab();
        c.routing.mode = RoutingMode::Tunnel;
        assert!(node_intent(&c, "worker").unwrap().routes.is_empty());
    }

    // A misconfigured peer overlapping our own pod CIDR must not hijack local pod traffic.
    #[test]
    fn overlapping_peer_cidr_is_skipped() {
        let mut c = lab();
        c.nodes[2].pod_cidr = Some("10.244.1.0/25".parse().unwrap());
        let i = node_intent(&c, "worker").unwrap();
        assert_eq!(*i.routes, [route("10.244.0.0/24", [172, 18, 0, 2])].into());
    }

    // Two peers claiming one pod CIDR: the first by name wins, on every node alike.
    #[test]
    fn duplicate_pod_cidr_gets_one_route() {
        let mut c = lab();
        c.nodes
            .push(mk_node("aaa-dup", [172, 18, 0, 9], Some("10.244.2.0/24")));
        let i = node_intent(&c, "worker").unwrap();
        assert_eq!(
            *i.routes,
            [
                route("10.244.0.0/24", [172, 18, 0, 2]),
                route("10.244.2.0/24", [172, 18, 0, 9])
            ]
            .into()
        );
    }

    #[test]
    fn unknown_node_is_an_error() {
        assert_eq!(
            node_intent(&lab(), "nope"),
            Err(IntentError::UnknownNode("nope".into()))
        );
    }
}
