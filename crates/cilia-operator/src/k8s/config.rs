//! The `cilium-config` and `ip-masq-agent` ConfigMaps → what the operator computes with: the
//! routing and datapath parts of [`ClusterState`](cilia_model::ClusterState) and LB-IPAM's
//! configuration. Pure; a ConfigMap that does not parse is reported and the caller keeps the last
//! good configuration.

use std::collections::BTreeMap;

use cilia_api::config::ipmasq::IpMasqAgentConfig;
use cilia_api::config::{self as api, CiliumConfig, Masquerading};
use cilia_model::lbipam::{DefaultLbServiceIpam, LbIpamConfig};
use cilia_model::policy::{EnforcementMode, PolicyEnv};
use cilia_model::service::{Acceleration, DatapathConfig, LbAlgorithm, LbMode, NoBackendResponse};
use cilia_model::{RoutingConfig, RoutingMode};
use ipnet::IpNet;

/// The ConfigMap Cilium's agents and operator read.
pub const CILIUM_CONFIG: &str = api::CONFIGMAP_NAME;
/// The ip-masq-agent ConfigMap (Cilium's `ipMasqAgent.config`), key [`IP_MASQ_AGENT_KEY`].
pub const IP_MASQ_AGENT: &str = api::ipmasq::CONFIGMAP_NAME;
pub const IP_MASQ_AGENT_KEY: &str = "config";
/// Not modelled by `CiliumConfig` (Cilia has no BGP control plane) but it decides whether LB-IPAM
/// serves the `io.cilium/bgp-control-plane` class.
pub const KEY_ENABLE_BGP: &str = "enable-bgp-control-plane";

/// What the operator takes from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    /// `enable-lb-ipam`.
    pub lb_ipam_enabled: bool,
    pub lb_ipam: LbIpamConfig,
    pub routing: RoutingConfig,
    pub datapath: DatapathConfig,
    /// `enable-policy`, `policy-audit-mode`, `enable-host-firewall` (the API server's addresses
    /// come from its EndpointSlice, not from here: left empty).
    pub policy: PolicyEnv,
}

impl Default for OperatorConfig {
    /// What an absent `cilium-config` and an absent `ip-masq-agent` mean.
    fn default() -> Self {
        build(
            &CiliumConfig::default(),
            &BTreeMap::new(),
            &IpMasqAgentConfig::default(),
        )
    }
}

/// Parses `cilium-config` data; `Err` lists every problem, each naming its key and value.
pub fn parse_cilium_config(
    data: &BTreeMap<String, String>,
) -> Result<api::Parsed<CiliumConfig>, String> {
    CiliumConfig::from_map(data).map_err(|e| format!("ConfigMap {CILIUM_CONFIG}: {e}"))
}

/// Parses the `ip-masq-agent` ConfigMap data (key `config`, YAML); absent key: the defaults.
pub fn parse_ip_masq_agent(
    data: &BTreeMap<String, String>,
) -> Result<api::Parsed<IpMasqAgentConfig>, String> {
    match data.get(IP_MASQ_AGENT_KEY) {
        None => Ok(api::Parsed {
            config: IpMasqAgentConfig::default(),
            warnings: Vec::new(),
        }),
        Some(text) => IpMasqAgentConfig::parse(text)
            .map_err(|e| format!("ConfigMap {IP_MASQ_AGENT}, key {IP_MASQ_AGENT_KEY}: {e}")),
    }
}

fn v4_only(nets: &[IpNet]) -> Vec<ipnet::Ipv4Net> {
    nets.iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// Combines the parsed configuration (and the raw `cilium-config` data, for keys the model does
/// not carry) into what the operator computes with.
pub fn build(
    c: &CiliumConfig,
    raw: &BTreeMap<String, String>,
    masq: &IpMasqAgentConfig,
) -> OperatorConfig {
    let lb_ipam = LbIpamConfig {
        default_lb_service_ipam: match c.default_lb_service_ipam {
            api::DefaultLbServiceIpam::Lbipam => DefaultLbServiceIpam::Lbipam,
            api::DefaultLbServiceIpam::Nodeipam => DefaultLbServiceIpam::Nodeipam,
            api::DefaultLbServiceIpam::None => DefaultLbServiceIpam::None,
        },
        l2_announcements_enabled: c.l2_announcements.enabled,
        bgp_enabled: raw.get(KEY_ENABLE_BGP).is_some_and(|v| v.trim() == "true"),
        ipv4_enabled: c.enable_ipv4,
        ipv6_enabled: c.enable_ipv6,
    };
    let routing = RoutingConfig {
        mode: match c.routing_mode {
            api::RoutingMode::Native => RoutingMode::Native,
            api::RoutingMode::Tunnel => RoutingMode::Tunnel,
        },
        auto_direct_node_routes: c.auto_direct_node_routes,
        native_routing_cidr: match c.ipv4_native_routing_cidr {
            Some(IpNet::V4(n)) => Some(n),
            _ => None,
        },
    };
    let lb = &c.load_balancer;
    let masquerading = c.masquerading();
    let datapath = DatapathConfig {
        kube_proxy_replacement: c.kube_proxy_replacement,
        lb_mode: match lb.mode {
            api::LbMode::Snat => LbMode::Snat,
            api::LbMode::Dsr => LbMode::Dsr,
            api::LbMode::Hybrid => LbMode::Hybrid,
        },
        lb_algorithm: match lb.algorithm {
            api::LbAlgorithm::Random => LbAlgorithm::Random,
            api::LbAlgorithm::Maglev => LbAlgorithm::Maglev,
        },
        acceleration: match lb.acceleration {
            api::LbAcceleration::Disabled => Acceleration::Disabled,
            api::LbAcceleration::Native => Acceleration::Native,
            api::LbAcceleration::BestEffort => Acceleration::BestEffort,
            api::LbAcceleration::TestingOnly => Acceleration::TestingOnly,
        },
        maglev_table_size: lb.maglev_table_size,
        no_backend_response: match lb.no_backend_response {
            api::NoBackendResponse::Reject => NoBackendResponse::Reject,
            api::NoBackendResponse::Drop => NoBackendResponse::Drop,
        },
        mode_annotation: lb.mode_annotation,
        algorithm_annotation: lb.algorithm_annotation,
        masquerade: masquerading != Masquerading::Disabled,
        bpf_masquerade: matches!(masquerading, Masquerading::Bpf { .. }),
        ip_masq_agent: c.enable_ip_masq_agent,
        non_masquerade_cidrs: v4_only(&masq.non_masquerade_cidrs),
        masq_link_local: masq.masq_link_local,
        l2_announcements: c.l2_announcements.enabled,
        l2_lease_ms: millis(c.l2_announcements.lease_duration),
        l2_renew_deadline_ms: millis(c.l2_announcements.renew_deadline),
        l2_retry_period_ms: millis(c.l2_announcements.retry_period),
        policy_audit_mode: c.policy_audit_mode,
        devices: c.devices.clone(),
    };
    let policy = PolicyEnv {
        mode: match c.policy_enforcement {
            api::PolicyEnforcement::Default => EnforcementMode::Default,
            api::PolicyEnforcement::Always => EnforcementMode::Always,
            api::PolicyEnforcement::Never => EnforcementMode::Never,
        },
        audit: c.policy_audit_mode,
        apiserver_ips: Vec::new(),
        host_firewall: c.enable_host_firewall,
    };
    OperatorConfig {
        lb_ipam_enabled: c.enable_lb_ipam,
        lb_ipam,
        routing,
        datapath,
        policy,
    }
}

/// Whole milliseconds, at least 1 (the model refuses zero timings), at most `u32::MAX`.
fn millis(d: std::time::Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}
