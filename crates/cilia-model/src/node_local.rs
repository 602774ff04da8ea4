//! What the agent tells the CNI plugin about its node, through a file in the agent's state directory.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// File name of [`NodeLocalConfig`] inside the agent's state directory.
pub const NODE_LOCAL_CONFIG_FILE: &str = "node.json";

/// The node facts a pod needs at creation: its address range and its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLocalConfig {
    pub node_name: String,
    /// `spec.podCIDR` of this node (`ipam.mode: kubernetes`).
    pub pod_cidr: Ipv4Net,
    /// The address pods use as their default gateway; owned by the agent on the `cilia_host` device.
    pub router_ip: Ipv4Addr,
    pub node_ip: Ipv4Addr,
    /// MTU for pod interfaces; 0 means "leave the kernel default".
    #[serde(default)]
    pub mtu: u32,
}

impl NodeLocalConfig {
    /// The router address of a pod CIDR: its first usable address, never handed to a pod.
    pub fn router_ip_for(pod_cidr: Ipv4Net) -> Ipv4Addr {
        let base = u32::from(pod_cidr.network());
        Ipv4Addr::from(base.wrapping_add(1))
    }
}

impl NodeLocalConfig {
    /// The node facts a pod needs, from the node's intent; `None` until the node has a pod CIDR.
    pub fn from_intent(intent: &crate::NodeIntent, mtu: u32) -> Option<Self> {
        let pod_cidr = intent.pod_cidr?;
        Some(NodeLocalConfig {
            node_name: intent.node.clone(),
            pod_cidr,
            router_ip: Self::router_ip_for(pod_cidr),
            node_ip: intent.node_ip,
            mtu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_ip_is_first_usable_address() {
        let cidr: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(
            NodeLocalConfig::router_ip_for(cidr),
            Ipv4Addr::new(10, 244, 1, 1)
        );
    }

    #[test]
    fn round_trips_as_camel_case_json() {
        let c = NodeLocalConfig {
            node_name: "worker".into(),
            pod_cidr: "10.244.1.0/24".parse().unwrap(),
            router_ip: Ipv4Addr::new(10, 244, 1, 1),
            node_ip: Ipv4Addr::new(172, 18, 0, 3),
            mtu: 1500,
        };
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"podCidr\":\"10.244.1.0/24\""), "{s}");
        assert_eq!(serde_json::from_str::<NodeLocalConfig>(&s).unwrap(), c);
    }
}
