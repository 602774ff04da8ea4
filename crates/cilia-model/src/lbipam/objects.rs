//! What LB-IPAM reads: pools, Services and the operator configuration, in LB-IPAM's own terms.
//! The operator converts the CRD / `core/v1` objects into these.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::status::Condition;
use crate::selector::{LabelSelector, SelectorError};

/// Seconds since the Unix epoch (`metadata.creationTimestamp`, which has second precision).
/// Ties are broken by name, so ordering is total.
pub type Timestamp = i64;

/// A `CiliumLoadBalancerIPPool`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub creation_timestamp: Timestamp,
    /// `metadata.generation`; written back as the conditions' `observedGeneration`.
    pub generation: i64,
    /// `spec.blocks` (or the legacy `spec.cidrs`), in spec order.
    pub blocks: Vec<Block>,
    /// `spec.serviceSelector`; `None` selects every Service.
    pub service_selector: Option<LabelSelector>,
    /// `spec.disabled`: keep existing allocations, make no new ones.
    pub disabled: bool,
    /// `spec.allowFirstLastIPs`; unset means `Yes` (Cilium ≥ 1.16).
    pub allow_first_last_ips: Option<AllowFirstLastIps>,
    /// The pool's `status.conditions` as last observed (only LB-IPAM's types matter). Compared
    /// with what LB-IPAM wants so an unchanged status is never written again.
    pub current_conditions: Vec<Condition>,
}

/// Why part of a pool cannot be used. LB-IPAM skips an unusable block (the rest of the pool
/// works) and lets a pool with an invalid selector select nothing; the operator reports these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("spec.blocks[{index}]: stop {stop} is before start {start}")]
    StopBeforeStart {
        index: usize,
        start: IpAddr,
        stop: IpAddr,
    },
    #[error("spec.blocks[{index}]: start {start} and stop {stop} are of different IP families")]
    MixedFamilies {
        index: usize,
        start: IpAddr,
        stop: IpAddr,
    },
    #[error("spec.serviceSelector: {0}")]
    Selector(#[source] SelectorError),
}

impl Pool {
    /// Every problem of the pool, blocks first.
    pub fn validate(&self) -> Vec<PoolError> {
        let mut errors = Vec::new();
        for (index, block) in self.blocks.iter().enumerate() {
            if let Block::Range {
                start,
                stop: Some(stop),
            } = *block
            {
                if start.is_ipv6() != stop.is_ipv6() {
                    errors.push(PoolError::MixedFamilies { index, start, stop });
                } else if stop < start {
                    errors.push(PoolError::StopBeforeStart { index, start, stop });
                }
            }
        }
        if let Some(Err(e)) = self.service_selector.as_ref().map(LabelSelector::validate) {
            errors.push(PoolError::Selector(e));
        }
        errors
    }
}

/// One entry of `spec.blocks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    /// `cidr`; host bits are ignored (`10.0.10.5/24` is `10.0.10.0/24`).
    Cidr(IpNet),
    /// `start` and optional `stop`; a missing `stop` means the single address `start`.
    Range { start: IpAddr, stop: Option<IpAddr> },
}

/// `spec.allowFirstLastIPs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowFirstLastIps {
    Yes,
    No,
}

/// `spec.ipFamilies[]` of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

/// `spec.ipFamilyPolicy` of a Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamilyPolicy {
    SingleStack,
    PreferDualStack,
    RequireDualStack,
}

/// `spec.externalTrafficPolicy` (the API server defaults it to `Cluster` for LoadBalancers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExternalTrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// One `spec.ports[]` entry; LB-IPAM only compares port numbers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePort {
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`; ignored for sharing (the datapath cannot tell protocols apart).
    pub protocol: String,
}

/// `namespace/name` of a Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A `core/v1` Service, reduced to what LB-IPAM reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// Informational; a Service's identity is namespace/name.
    pub uid: String,
    pub creation_timestamp: Timestamp,
    /// `metadata.generation`; written back as the condition's `observedGeneration`.
    pub generation: i64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.type == LoadBalancer`.
    pub is_load_balancer: bool,
    pub load_balancer_class: Option<String>,
    /// `spec.loadBalancerIP` (deprecated) verbatim; unparsable text is ignored.
    pub load_balancer_ip: Option<String>,
    pub ip_families: Vec<IpFamily>,
    pub ip_family_policy: Option<IpFamilyPolicy>,
    pub ports: Vec<ServicePort>,
    pub external_traffic_policy: ExternalTrafficPolicy,
    /// `spec.selector`.
    pub selector: BTreeMap<String, String>,
    /// The `ip` of every `status.loadBalancer.ingress[]` entry, in order, as last observed.
    pub current_ingress: Vec<IpAddr>,
    /// The `cilium.io/IPAMRequestSatisfied` condition as last observed on the Service.
    pub current_condition: Option<Condition>,
}

impl Service {
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(&self.namespace, &self.name)
    }
}

/// `default-lb-service-ipam`: who serves LoadBalancer Services without a class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultLbServiceIpam {
    #[default]
    Lbipam,
    Nodeipam,
    None,
}

/// The operator configuration LB-IPAM depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbIpamConfig {
    pub default_lb_service_ipam: DefaultLbServiceIpam,
    /// `enable-l2-announcements`: serve class `io.cilium/l2-announcer`.
    pub l2_announcements_enabled: bool,
    /// `enable-bgp-control-plane`: serve class `io.cilium/bgp-control-plane`.
    pub bgp_enabled: bool,
    pub ipv4_enabled: bool,
    pub ipv6_enabled: bool,
}

impl Default for LbIpamConfig {
    fn default() -> Self {
        Self {
            default_lb_service_ipam: DefaultLbServiceIpam::Lbipam,
            l2_announcements_enabled: false,
            bgp_enabled: false,
            ipv4_enabled: true,
            ipv6_enabled: false,
        }
    }
}
