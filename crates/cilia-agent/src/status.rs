//! What the agent reports about itself (the `cilia-dbg status` data).

use std::net::Ipv4Addr;

use cilia_datapath::maps::EpStats;
use cilia_model::{RouteIntent, RoutingMode};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub version: String,
    pub node: String,
    pub node_ip: Option<Ipv4Addr>,
    pub pod_cidr: Option<Ipv4Net>,
    pub router_ip: Option<Ipv4Addr>,
    pub routing_mode: Option<RoutingMode>,
    pub native_routing_cidr: Option<Ipv4Net>,
    /// Where intents come from: `operator:<host:port>` (the intent stream) or `file:<path>`.
    pub intent_source: String,
    /// The first 16 hex digits of the applied intent's digest; equal means equal intents.
    pub intent_hash: Option<String>,
    /// The intent stream, when the agent subscribes to an operator.
    #[serde(default)]
    pub intent_stream: Option<crate::stream::StreamStatus>,
    pub routes: Vec<RouteIntent>,
    pub endpoints: Vec<EndpointRow>,
    /// Kernel writes performed since start (routes, devices, program attachments).
    pub datapath_writes: u64,
    pub last_error: Option<String>,
    pub attach_mode: String,
    /// Service load balancing (kube-proxy replacement): devices, acceleration, mode.
    #[serde(default)]
    pub lb: crate::lb::LbStatus,
    /// The frontends this node serves (`cilia-dbg service list`).
    #[serde(default)]
    pub services: Vec<cilia_datapath::lb_intent::ServiceRow>,
    /// Cilium's `Masquerading:` status value (`BPF   [eth0]   10.244.0.0/16 [IPv4: …]`, `IPTables …`,
    /// `Disabled`).
    #[serde(default)]
    pub masquerading: String,
    /// L2 announcements: lease, up interfaces, announced VIPs (`cilia-dbg bpf l2 list`).
    #[serde(default)]
    pub l2: crate::announcer::L2Status,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRow {
    pub ifindex: u32,
    pub interface: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatsRow {
    pub ifindex: u32,
    pub interface: Option<String>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl EndpointStatsRow {
    pub fn new(ifindex: u32, interface: Option<String>, s: EpStats) -> Self {
        EndpointStatsRow {
            ifindex,
            interface,
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
        }
    }
}
