//! What LB-IPAM writes: Service ingress and condition, pool conditions, and the change report
//! of every update.

use std::net::IpAddr;

use super::objects::ServiceKey;

/// `metav1.Condition` without `lastTransitionTime` (the status writer keeps or stamps it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
}

/// `metav1.ConditionStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// What LB-IPAM wants a Service's status to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceLbStatus {
    /// Not LB-IPAM's business (another class, not a LoadBalancer, or LB-IPAM dormant and the
    /// Service never touched): leave the status alone.
    Ignored,
    /// LB-IPAM owns the Service: `status.loadBalancer.ingress` is exactly `ingress` (one
    /// `{ip}` entry each, in order) and `condition` is set (upserted by type).
    Managed {
        ingress: Vec<IpAddr>,
        condition: Condition,
    },
    /// LB-IPAM stopped being responsible: clear `status.loadBalancer.ingress` and remove the
    /// `cilium.io/IPAMRequestSatisfied` condition, so another controller can take over.
    Released,
}

impl ServiceLbStatus {
    /// The ingress addresses this status asks for (none unless managed).
    pub fn ingress(&self) -> &[IpAddr] {
        match self {
            Self::Managed { ingress, .. } => ingress,
            _ => &[],
        }
    }

    /// The condition this status asks for (none unless managed).
    pub fn condition(&self) -> Option<&Condition> {
        match self {
            Self::Managed { condition, .. } => Some(condition),
            _ => None,
        }
    }
}

/// One Service whose status must be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceChange {
    pub key: ServiceKey,
    /// Never [`ServiceLbStatus::Ignored`].
    pub status: ServiceLbStatus,
}

/// One pool whose status must be written: LB-IPAM's four conditions, in the order Cilium adds
/// them (`PoolConflict`, `IPsTotal`, `IPsAvailable`, `IPsUsed`). Other condition types on the
/// pool are not LB-IPAM's and stay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolChange {
    pub name: String,
    pub conditions: Vec<Condition>,
}

/// The statuses an update changed, each exactly once, sorted by key. Empty when nothing
/// observable changed, so a resync or a restart writes nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub services: Vec<ServiceChange>,
    pub pools: Vec<PoolChange>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.pools.is_empty()
    }

    /// The change for one Service, if any.
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceLbStatus> {
        self.services
            .iter()
            .find(|c| &c.key == key)
            .map(|c| &c.status)
    }

    /// The change for one pool, if any.
    pub fn pool(&self, name: &str) -> Option<&[Condition]> {
        self.pools
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.conditions.as_slice())
    }
}

/// Why a Service is not (fully) satisfied; becomes the `False` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No enabled pool selects the Service (generic request).
    NoPool,
    /// No enabled pool contains the requested address.
    NoPoolForIp(IpAddr),
    /// The enabled pool containing the requested address does not select the Service.
    PoolSelectorMismatch(IpAddr),
    /// The requested address is taken and the Service has no sharing key.
    AlreadyAllocated(IpAddr),
    /// The requested address is held by a Service it may not share with.
    Incompatible(IpAddr, &'static str),
    /// Every enabled, selecting pool of the family is full.
    OutOfIps,
}

impl Failure {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Self::NoPool | Self::NoPoolForIp(_) => super::REASON_NO_POOL,
            Self::PoolSelectorMismatch(_) => super::REASON_POOL_SELECTOR_MISMATCH,
            Self::AlreadyAllocated(_) => super::REASON_ALREADY_ALLOCATED,
            Self::Incompatible(..) => super::REASON_INCOMPATIBLE,
            Self::OutOfIps => super::REASON_OUT_OF_IPS,
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            Self::NoPool => {
                "There are no enabled CiliumLoadBalancerIPPools that match this service".into()
            }
            Self::NoPoolForIp(ip) => format!("No pool exists with a CIDR containing '{ip}'"),
            Self::PoolSelectorMismatch(ip) => {
                format!("The pool with the CIDR containing '{ip}', doesn't select this service")
            }
            Self::AlreadyAllocated(ip) => {
                format!("The IP '{ip}' is already allocated to another service")
            }
            Self::Incompatible(ip, why) => format!(
                "The IP '{ip}' is already allocated to an incompatible service. Reason: {why}"
            ),
            Self::OutOfIps => "All enabled CiliumLoadBalancerIPPools that match this service ran out of allocatable IPs".into(),
        }
    }
}
