//! `CiliumLoadBalancerIPPool` (LB-IPAM): the pool types in both served versions, the ranges a
//! pool offers, and the condition/annotation vocabulary LB-IPAM writes and reads.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Violations;
use crate::selector::{LabelSelector, SelectorError};

/// The pool spec; identical in `v2` and `v2alpha1`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The addresses the pool hands out: CIDRs or start/stop ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub blocks: Option<Vec<IpBlock>>,
    /// Legacy name of `blocks` (early v2alpha1 manifests); accepted as an alias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub cidrs: Option<Vec<IpBlock>>,
    /// Services this pool serves; unset selects every Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// A disabled pool makes no new allocations; existing ones stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Whether the first and last address of a CIDR block may be allocated (default `Yes`).
    #[serde(
        default,
        rename = "allowFirstLastIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_first_last_ips: Option<AllowFirstLastIps>,
}

/// One block of a pool: `cidr`, or `start` (+ optional `stop`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::cidr")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::ip")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::ip")]
    pub stop: Option<String>,
}

/// `allowFirstLastIPs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AllowFirstLastIps {
    Yes,
    No,
}

/// Status written by the LB-IPAM controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::condition_list")]
    pub conditions: Option<Vec<Condition>>,
}

/// The storage version.
pub mod v2 {
    // The printer columns repeat `type_ = "string"`, which clippy mistakes for duplication.
    #![allow(clippy::duplicated_attributes)]
    use kube_derive::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// Spec of a pool: its address blocks and the Services it serves.
    #[derive(
        CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema,
    )]
    #[kube(
        group = "cilium.io",
        version = "v2",
        kind = "CiliumLoadBalancerIPPool",
        plural = "ciliumloadbalancerippools",
        singular = "ciliumloadbalancerippool",
        shortname = "ippools",
        shortname = "ippool",
        shortname = "lbippool",
        shortname = "lbippools",
        category = "cilium",
        status = "super::IpPoolStatus",
        printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
        printcolumn(
            name = "Conflicting",
            type_ = "string",
            json_path = r#".status.conditions[?(@.type=="cilium.io/PoolConflict")].status"#
        ),
        printcolumn(
            name = "IPs Available",
            type_ = "string",
            json_path = r#".status.conditions[?(@.type=="cilium.io/IPsAvailable")].message"#
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
        doc = "A pool of addresses LB-IPAM assigns to LoadBalancer Services.",
        crates(kube_core = "::kube_core")
    )]
    #[serde(transparent)]
    pub struct CiliumLoadBalancerIPPoolSpec(pub super::IpPoolSpec);

    impl std::ops::Deref for CiliumLoadBalancerIPPoolSpec {
        type Target = super::IpPoolSpec;
        fn deref(&self) -> &super::IpPoolSpec {
            &self.0
        }
    }

    impl std::ops::DerefMut for CiliumLoadBalancerIPPoolSpec {
        fn deref_mut(&mut self) -> &mut super::IpPoolSpec {
            &mut self.0
        }
    }

    impl From<super::v2alpha1::CiliumLoadBalancerIPPool> for CiliumLoadBalancerIPPool {
        fn from(old: super::v2alpha1::CiliumLoadBalancerIPPool) -> Self {
            Self {
                metadata: old.metadata,
                spec: CiliumLoadBalancerIPPoolSpec(old.spec.0),
                status: old.status,
            }
        }
    }
}

/// Served for old manifests, deprecated; same schema as [`v2`].
pub mod v2alpha1 {
    #![allow(clippy::duplicated_attributes)]
    use kube_derive::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// Spec of a pool: its address blocks and the Services it serves.
    #[derive(
        CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema,
    )]
    #[kube(
        group = "cilium.io",
        version = "v2alpha1",
        kind = "CiliumLoadBalancerIPPool",
        plural = "ciliumloadbalancerippools",
        singular = "ciliumloadbalancerippool",
        shortname = "ippools",
        shortname = "ippool",
        shortname = "lbippool",
        shortname = "lbippools",
        category = "cilium",
        status = "super::IpPoolStatus",
        deprecated,
        printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
        printcolumn(
            name = "Conflicting",
            type_ = "string",
            json_path = r#".status.conditions[?(@.type=="cilium.io/PoolConflict")].status"#
        ),
        printcolumn(
            name = "IPs Available",
            type_ = "string",
            json_path = r#".status.conditions[?(@.type=="cilium.io/IPsAvailable")].message"#
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        ),
        doc = "A pool of addresses LB-IPAM assigns to LoadBalancer Services.",
        crates(kube_core = "::kube_core")
    )]
    #[serde(transparent)]
    pub struct CiliumLoadBalancerIPPoolSpec(pub super::IpPoolSpec);

    impl std::ops::Deref for CiliumLoadBalancerIPPoolSpec {
        type Target = super::IpPoolSpec;
        fn deref(&self) -> &super::IpPoolSpec {
            &self.0
        }
    }

    impl std::ops::DerefMut for CiliumLoadBalancerIPPoolSpec {
        fn deref_mut(&mut self) -> &mut super::IpPoolSpec {
            &mut self.0
        }
    }
}

pub use v2::CiliumLoadBalancerIPPool;

/// A contiguous, inclusive run of allocatable addresses offered by one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl PoolRange {
    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        same_family(ip, self.first) && ip >= self.first && ip <= self.last
    }

    /// Number of addresses (saturating for a full IPv6 range).
    pub fn len(&self) -> u128 {
        (to_u128(self.last) - to_u128(self.first)).saturating_add(1)
    }

    /// A range always holds at least one address.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether two ranges share an address.
    pub fn overlaps(&self, other: &PoolRange) -> bool {
        same_family(self.first, other.first) && self.first <= other.last && other.first <= self.last
    }

    /// True for IPv4 ranges.
    pub fn is_ipv4(&self) -> bool {
        self.first.is_ipv4()
    }
}

impl std::fmt::Display for PoolRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} - {}", self.first, self.last)
    }
}

/// A pool that cannot be used as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("spec.blocks: a pool needs at least one block (or the legacy spec.cidrs), got none")]
    NoBlocks,
    #[error(
        "spec.cidrs: the legacy field cannot be combined with spec.blocks (got {count} legacy entries); move them to spec.blocks"
    )]
    BlocksAndCidrs { count: usize },
    #[error("{path}: a block is either a cidr or a start/stop range, got {got}")]
    BlockShape { path: String, got: String },
    #[error("{path}: invalid CIDR {value:?}: {reason}")]
    InvalidCidr {
        path: String,
        value: String,
        reason: String,
    },
    #[error("{path}: invalid IP address {value:?}")]
    InvalidIp { path: String, value: String },
    #[error("{path}: start {start} and stop {stop} are of different IP families")]
    MixedFamilies {
        path: String,
        start: String,
        stop: String,
    },
    #[error("{path}: stop {stop} is before start {start}")]
    ReversedRange {
        path: String,
        start: String,
        stop: String,
    },
    #[error(transparent)]
    Selector(#[from] SelectorError),
}

impl IpPoolSpec {
    /// The blocks in effect: `blocks`, or the legacy `cidrs` when only that is set.
    pub fn effective_blocks(&self) -> (&'static str, &[IpBlock]) {
        match (&self.blocks, &self.cidrs) {
            (Some(blocks), _) if !blocks.is_empty() => ("spec.blocks", blocks),
            (_, Some(cidrs)) => ("spec.cidrs", cidrs),
            _ => ("spec.blocks", &[]),
        }
    }

    /// `disabled`, defaulting to false.
    pub fn is_disabled(&self) -> bool {
        self.disabled.unwrap_or(false)
    }

    /// `allowFirstLastIPs`, defaulting to `Yes` (Cilium ≥ 1.16).
    pub fn allows_first_last(&self) -> bool {
        self.allow_first_last_ips != Some(AllowFirstLastIps::No)
    }

    /// Every problem with the spec, each naming its field path and value.
    pub fn validate(&self) -> Result<(), Violations<PoolError>> {
        let mut errors = Vec::new();
        if let (Some(blocks), Some(cidrs)) = (&self.blocks, &self.cidrs)
            && !blocks.is_empty()
        {
            errors.push(PoolError::BlocksAndCidrs { count: cidrs.len() });
        }
        let (field, blocks) = self.effective_blocks();
        if blocks.is_empty() {
            errors.push(PoolError::NoBlocks);
        }
        for (i, block) in blocks.iter().enumerate() {
            if let Err(e) = block.range(&format!("{field}[{i}]"), true) {
                errors.push(e);
            }
        }
        if let Some(selector) = &self.service_selector
            && let Err(e) = selector.validate_kubernetes("spec.serviceSelector")
        {
            errors.push(e.into());
        }
        Violations(errors).into_result()
    }

    /// The allocatable ranges, in block order, with `allowFirstLastIPs` applied.
    pub fn ranges(&self) -> Result<Vec<PoolRange>, Violations<PoolError>> {
        self.validate()?;
        let (field, blocks) = self.effective_blocks();
        blocks
            .iter()
            .enumerate()
            .map(|(i, b)| b.range(&format!("{field}[{i}]"), self.allows_first_last()))
            .collect::<Result<_, _>>()
            .map_err(|e| Violations(vec![e]))
    }
}

impl IpBlock {
    /// The block as a range; `path` names it in errors. CIDRs with host bits set are masked,
    /// as Cilium does. First/last addresses of a CIDR with more than two addresses are dropped
    /// unless `allow_first_last`; ranges never drop them.
    pub fn range(&self, path: &str, allow_first_last: bool) -> Result<PoolRange, PoolError> {
        match (&self.cidr, &self.start, &self.stop) {
            (Some(cidr), None, None) => {
                let net = parse_cidr(&format!("{path}.cidr"), cidr)?.trunc();
                let (mut first, mut last) = (net.network(), net.broadcast());
                let max = if net.addr().is_ipv4() { 32 } else { 128 };
                if !allow_first_last && net.prefix_len() + 1 < max {
                    first = from_u128(to_u128(first) + 1, first.is_ipv4());
                    last = from_u128(to_u128(last) - 1, last.is_ipv4());
                }
                Ok(PoolRange { first, last })
            }
            (None, Some(start), stop) => {
                let first = parse_ip(&format!("{path}.start"), start)?;
                let last = match stop {
                    Some(stop) => parse_ip(&format!("{path}.stop"), stop)?,
                    None => first,
                };
                if !same_family(first, last) {
                    return Err(PoolError::MixedFamilies {
                        path: path.to_string(),
                        start: first.to_string(),
                        stop: last.to_string(),
                    });
                }
                if last < first {
                    return Err(PoolError::ReversedRange {
                        path: path.to_string(),
                        start: first.to_string(),
                        stop: last.to_string(),
                    });
                }
                Ok(PoolRange { first, last })
            }
            _ => Err(PoolError::BlockShape {
                path: path.to_string(),
                got: serde_json::to_string(self).unwrap_or_default(),
            }),
        }
    }
}

fn parse_cidr(path: &str, value: &str) -> Result<IpNet, PoolError> {
    value.parse::<IpNet>().map_err(|e| PoolError::InvalidCidr {
        path: path.to_string(),
        value: value.to_string(),
        reason: e.to_string(),
    })
}

fn parse_ip(path: &str, value: &str) -> Result<IpAddr, PoolError> {
    value.parse::<IpAddr>().map_err(|_| PoolError::InvalidIp {
        path: path.to_string(),
        value: value.to_string(),
    })
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((n as u32).into())
    } else {
        IpAddr::V6(n.into())
    }
}

/// Condition types, reasons and messages LB-IPAM writes on pools and Services.
pub mod conditions {
    /// Pool overlaps another (newer pool is marked) or itself.
    pub const POOL_CONFLICT: &str = "cilium.io/PoolConflict";
    /// Total allocatable addresses (message holds the decimal count).
    pub const IPS_TOTAL: &str = "cilium.io/IPsTotal";
    /// Free addresses (message holds the decimal count).
    pub const IPS_AVAILABLE: &str = "cilium.io/IPsAvailable";
    /// Used addresses (message holds the decimal count).
    pub const IPS_USED: &str = "cilium.io/IPsUsed";
    /// Service condition: every requested address/family is satisfied.
    pub const SERVICE_REQUEST_SATISFIED: &str = "cilium.io/IPAMRequestSatisfied";

    pub const REASON_CIDR_OVERLAP: &str = "cidr_overlap";
    pub const REASON_RESOLVED: &str = "resolved";
    /// Reason of the counting conditions (status `Unknown`).
    pub const REASON_NO_REASON: &str = "noreason";

    pub const REASON_SATISFIED: &str = "satisfied";
    pub const REASON_NO_POOL: &str = "no_pool";
    pub const REASON_POOL_SELECTOR_MISMATCH: &str = "pool_selector_mismatch";
    pub const REASON_ALREADY_ALLOCATED: &str = "already_allocated";
    pub const REASON_ALREADY_ALLOCATED_INCOMPATIBLE: &str =
        "already_allocated_incompatible_service";
    pub const REASON_OUT_OF_IPS: &str = "out_of_ips";

    /// Field manager of LB-IPAM's status writes.
    pub const FIELD_MANAGER: &str = "cilium-operator-lb-ipam";

    /// `Pool conflicts since range '<ours>' overlaps range '<theirs>' from IP Pool '<other>'`.
    pub fn pool_conflict_message(ours: &str, theirs: &str, other_pool: &str) -> String {
        format!(
            "Pool conflicts since range '{ours}' overlaps range '{theirs}' from IP Pool '{other_pool}'"
        )
    }

    pub const MESSAGE_NO_POOL: &str =
        "There are no enabled CiliumLoadBalancerIPPools that match this service";
    pub const MESSAGE_OUT_OF_IPS: &str =
        "All enabled CiliumLoadBalancerIPPools that match this service ran out of allocatable IPs";

    pub fn no_pool_for_ip_message(ip: &str) -> String {
        format!("No pool exists with a CIDR containing '{ip}'")
    }

    pub fn pool_selector_mismatch_message(ip: &str) -> String {
        format!("The pool with the CIDR containing '{ip}', doesn't select this service")
    }

    pub fn already_allocated_message(ip: &str) -> String {
        format!("The IP '{ip}' is already allocated to another service")
    }

    pub fn already_allocated_incompatible_message(ip: &str, reason: &str) -> String {
        format!("The IP '{ip}' is already allocated to an incompatible service. Reason: {reason}")
    }
}

/// Service annotations LB-IPAM reads; each has a legacy alias that is honoured too.
pub mod annotations {
    /// Comma-separated requested addresses.
    pub const IPS: &str = "lbipam.cilium.io/ips";
    pub const IPS_ALIAS: &str = "io.cilium/lb-ipam-ips";
    /// Services with the same key share addresses.
    pub const SHARING_KEY: &str = "lbipam.cilium.io/sharing-key";
    pub const SHARING_KEY_ALIAS: &str = "io.cilium/lb-ipam-sharing-key";
    /// Comma list of namespaces (or `*`) allowed to share; needed on both Services.
    pub const SHARING_CROSS_NAMESPACE: &str = "lbipam.cilium.io/sharing-cross-namespace";
    pub const SHARING_CROSS_NAMESPACE_ALIAS: &str = "io.cilium/lb-ipam-sharing-cross-namespace";

    /// Virtual labels every Service carries for pool/policy `serviceSelector` matching.
    pub const SERVICE_NAMESPACE_LABEL: &str = "io.kubernetes.service.namespace";
    pub const SERVICE_NAME_LABEL: &str = "io.kubernetes.service.name";

    /// `loadBalancerClass` values LB-IPAM serves besides "unset".
    pub const CLASS_BGP: &str = "io.cilium/bgp-control-plane";
    pub const CLASS_L2: &str = "io.cilium/l2-announcer";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr_block(cidr: &str) -> IpBlock {
        IpBlock {
            cidr: Some(cidr.into()),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Pool selectors take plain Kubernetes keys, as Cilium's LB-IPAM reads them: a Cilium label
    // source prefix is refused at validation, not silently matched differently by the engine.
    #[test]
    fn pool_selector_refuses_label_source_prefixes() {
        let spec: IpPoolSpec = serde_json::from_value(serde_json::json!({
            "blocks": [{"cidr": "10.0.10.0/24"}],
            "serviceSelector": {"matchLabels": {"k8s:app": "web"}}
        }))
        .unwrap();
        let e = spec.validate().unwrap_err().to_string();
        assert!(
            e.contains("spec.serviceSelector") && e.contains("k8s:app"),
            "{e}"
        );
    }

    // allowFirstLastIPs: No reserves network and broadcast of a /24, not of a /31 or a range.
    #[test]
    fn first_last_reservation() {
        let spec = IpPoolSpec {
            blocks: Some(vec![
                cidr_block("192.0.2.0/24"),
                cidr_block("198.51.100.0/31"),
                IpBlock {
                    start: Some("203.0.113.0".into()),
                    stop: Some("203.0.113.255".into()),
                    ..Default::default()
                },
            ]),
            allow_first_last_ips: Some(AllowFirstLastIps::No),
            ..Default::default()
        };
        let r = spec.ranges().unwrap();
        assert_eq!(
            (r[0].first, r[0].last),
            (ip("192.0.2.1"), ip("192.0.2.254"))
        );
        assert_eq!(r[0].len(), 254);
        assert_eq!(r[1].len(), 2);
        assert_eq!(
            (r[2].first, r[2].last),
            (ip("203.0.113.0"), ip("203.0.113.255"))
        );
    }

    #[test]
    fn default_allows_first_last_and_masks_host_bits() {
        let spec = IpPoolSpec {
            blocks: Some(vec![cidr_block("192.0.2.7/24")]),
            ..Default::default()
        };
        let r = spec.ranges().unwrap();
        assert_eq!(
            (r[0].first, r[0].last),
            (ip("192.0.2.0"), ip("192.0.2.255"))
        );
    }

    #[test]
    fn start_without_stop_is_a_single_address() {
        let block = IpBlock {
            start: Some("2001:db8::5".into()),
            ..Default::default()
        };
        let r = block.range("spec.blocks[0]", true).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r.contains(ip("2001:db8::5")));
        assert!(!r.contains(ip("192.0.2.5")));
    }

    #[test]
    fn legacy_cidrs_are_an_alias() {
        let spec = IpPoolSpec {
            cidrs: Some(vec![cidr_block("192.0.2.0/30")]),
            ..Default::default()
        };
        assert_eq!(spec.effective_blocks().0, "spec.cidrs");
        assert_eq!(spec.ranges().unwrap()[0].len(), 4);
    }

    #[test]
    fn overlap() {
        let a = PoolRange {
            first: ip("192.0.2.0"),
            last: ip("192.0.2.255"),
        };
        let b = PoolRange {
            first: ip("192.0.2.128"),
            last: ip("192.0.3.0"),
        };
        let c = PoolRange {
            first: ip("2001:db8::"),
            last: ip("2001:db8::ff"),
        };
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
