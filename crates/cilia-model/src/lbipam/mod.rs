//! LB-IPAM: which `CiliumLoadBalancerIPPool` address every LoadBalancer Service gets, and the
//! status (Service ingress and conditions, pool conditions) that says so.
//!
//! [`LbIpam`] is a synchronous index with no client inside: the operator feeds it pools,
//! Services and the configuration ([`LbIpam::apply_pool`], [`LbIpam::apply_service`], the
//! `delete_*` twins, [`LbIpam::reset`] on (re)list, [`LbIpam::set_config`]) and writes exactly the
//! statuses each call returns in [`Changes`]. The result depends only on the objects (including
//! the status they carry), never on event order; feeding back the statuses it asked for changes
//! nothing, and neither does an operator restart.
//!
//! ```
//! use cilia_model::lbipam::{Block, LbIpam, LbIpamConfig, Pool, Service, ServiceLbStatus};
//!
//! let mut ipam = LbIpam::new(LbIpamConfig::default());
//! let pool = Pool {
//!     name: "default".into(),
//!     creation_timestamp: 0,
//!     generation: 1,
//!     blocks: vec![Block::Cidr("192.0.2.0/24".parse().unwrap())],
//!     service_selector: None,
//!     disabled: false,
//!     allow_first_last_ips: None,
//!     current_conditions: vec![],
//! };
//! ipam.apply_pool(pool); // reports the pool's conditions
//! let svc = Service {
//!     namespace: "default".into(),
//!     name: "web".into(),
//!     is_load_balancer: true,
//!     ..Service::default()
//! };
//! let changes = ipam.apply_service(svc.clone());
//! let status = changes.service(&svc.key()).unwrap().clone();
//! assert_eq!(status.ingress(), ["192.0.2.0".parse::<std::net::IpAddr>().unwrap()]);
//!
//! // The watch event carrying the written status changes nothing.
//! let ServiceLbStatus::Managed { ingress, condition } = status else { unreachable!() };
//! let written = Service { current_ingress: ingress, current_condition: Some(condition), ..svc };
//! assert!(ipam.apply_service(written).is_empty());
//! ```
//!
//! Behaviour follows Cilium's `operator/pkg/lbipam` (reference: `cilium-compat.md` §1); the
//! deliberate differences:
//!
//! - new addresses are handed out in Service rank order (oldest, then namespace/name), from
//!   ranges oldest pool first, as the lowest free address of a range, so the outcome is
//!   independent of event order (Cilium is first-come-first-served, tries ranges in the order it
//!   saw pools, and takes the first address of its smallest free block); a grant not yet written
//!   back can therefore move when an older Service shows up late;
//! - addresses in a Service's status stay with it across operator restarts also when their pool
//!   is disabled or in conflict (Cilium keeps them while running but strips them after a
//!   restart);
//! - joining a sharing key's address requires that a pool selecting the joiner holds it (Cilium
//!   joins regardless and strips the address again on the next update);
//! - `IPsTotal` / `IPsUsed` leave reserved first/last addresses out (Cilium counts them as used);
//! - a pool with an invalid `serviceSelector` selects no Service (Cilium fails every allocation);
//! - `sharing-cross-namespace` entries are trimmed of whitespace;
//! - `RequireDualStack` asks for both families; a family disabled on the cluster is never granted,
//!   so such a request stays unsatisfied (`no_pool`) as the reference says;
//! - with no pool at all LB-IPAM is dormant, except that Services still carrying its condition
//!   (from before the last pool went away, also across restarts) lose their addresses;
//! - "LB-IPAM touched this Service" is read from the object (its `IPAMRequestSatisfied`
//!   condition), not remembered, so a Service that stopped being served while the operator was
//!   down is still released after the restart, while a Service of another class that never
//!   carried the condition is left alone whatever addresses it shows.

mod index;
mod objects;
mod ranges;
mod request;
mod space;
mod status;

#[cfg(test)]
mod tests;

pub use index::LbIpam;
pub use objects::{
    AllowFirstLastIps, Block, DefaultLbServiceIpam, ExternalTrafficPolicy, IpFamily,
    IpFamilyPolicy, LbIpamConfig, Pool, PoolError, Service, ServiceKey, ServicePort, Timestamp,
};
pub use status::{Changes, Condition, ConditionStatus, PoolChange, ServiceChange, ServiceLbStatus};

/// Service condition: were the requested addresses granted.
pub const CONDITION_REQUEST_SATISFIED: &str = "cilium.io/IPAMRequestSatisfied";
/// Pool condition: does the pool overlap another (or itself).
pub const CONDITION_POOL_CONFLICT: &str = "cilium.io/PoolConflict";
/// Pool condition: allocatable addresses.
pub const CONDITION_IPS_TOTAL: &str = "cilium.io/IPsTotal";
/// Pool condition: addresses still free.
pub const CONDITION_IPS_AVAILABLE: &str = "cilium.io/IPsAvailable";
/// Pool condition: addresses held by Services.
pub const CONDITION_IPS_USED: &str = "cilium.io/IPsUsed";

pub const REASON_SATISFIED: &str = "satisfied";
pub const REASON_NO_POOL: &str = "no_pool";
pub const REASON_POOL_SELECTOR_MISMATCH: &str = "pool_selector_mismatch";
pub const REASON_ALREADY_ALLOCATED: &str = "already_allocated";
pub const REASON_INCOMPATIBLE: &str = "already_allocated_incompatible_service";
pub const REASON_OUT_OF_IPS: &str = "out_of_ips";
pub const REASON_CIDR_OVERLAP: &str = "cidr_overlap";
pub const REASON_RESOLVED: &str = "resolved";
pub const REASON_NO_REASON: &str = "noreason";

/// Requested addresses, comma separated.
pub const ANNOTATION_IPS: &str = "lbipam.cilium.io/ips";
pub const ANNOTATION_IPS_ALIAS: &str = "io.cilium/lb-ipam-ips";
/// Services with the same key may share addresses.
pub const ANNOTATION_SHARING_KEY: &str = "lbipam.cilium.io/sharing-key";
pub const ANNOTATION_SHARING_KEY_ALIAS: &str = "io.cilium/lb-ipam-sharing-key";
/// Namespaces (or `*`) a Service may share with; needed on both sides.
pub const ANNOTATION_SHARING_CROSS_NAMESPACE: &str = "lbipam.cilium.io/sharing-cross-namespace";
pub const ANNOTATION_SHARING_CROSS_NAMESPACE_ALIAS: &str =
    "io.cilium/lb-ipam-sharing-cross-namespace";

/// `loadBalancerClass` served when L2 announcements are enabled.
pub const CLASS_L2_ANNOUNCER: &str = "io.cilium/l2-announcer";
/// `loadBalancerClass` served when the BGP control plane is enabled.
pub const CLASS_BGP_CONTROL_PLANE: &str = "io.cilium/bgp-control-plane";

/// Virtual label every Service carries for pool selectors: its namespace.
pub const LABEL_SERVICE_NAMESPACE: &str = "io.kubernetes.service.namespace";
/// Virtual label every Service carries for pool selectors: its name.
pub const LABEL_SERVICE_NAME: &str = "io.kubernetes.service.name";
