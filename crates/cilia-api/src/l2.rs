//! `CiliumL2AnnouncementPolicy` (v2alpha1): which nodes answer ARP for which Service addresses,
//! on which interfaces, and the condition vocabulary for policies that cannot be evaluated.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::CustomResource;
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Violations;
use crate::selector::{LabelSelector, SelectorError};

/// Spec of a `CiliumL2AnnouncementPolicy`. All fields are optional.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "cilium.io",
    version = "v2alpha1",
    kind = "CiliumL2AnnouncementPolicy",
    plural = "ciliuml2announcementpolicies",
    singular = "ciliuml2announcementpolicy",
    shortname = "l2announcement",
    category = "cilium",
    status = "L2AnnouncementPolicyStatus",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "Which nodes answer ARP for which Service addresses, on which interfaces.",
    crates(kube_core = "::kube_core")
)]
#[serde(rename_all = "camelCase")]
pub struct CiliumL2AnnouncementPolicySpec {
    /// Services whose addresses are announced; unset selects every Service whose
    /// `loadBalancerClass` is unset or `io.cilium/l2-announcer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// Nodes that may announce; unset selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Regular expressions (RE2) of interface names to announce on, OR-ed; unset or empty
    /// means every device the agent manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// Announce `spec.externalIPs` (default false).
    #[serde(
        default,
        rename = "externalIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_ips: Option<bool>,
    /// Announce `status.loadBalancer.ingress[].ip` (default false).
    #[serde(
        default,
        rename = "loadBalancerIPs",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer_ips: Option<bool>,
}

/// Status: only error conditions, created when a selector or regex is broken.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2AnnouncementPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::condition_list")]
    pub conditions: Option<Vec<Condition>>,
}

/// A policy part that cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum L2PolicyError {
    #[error(transparent)]
    ServiceSelector(SelectorError),
    #[error(transparent)]
    NodeSelector(SelectorError),
    #[error("{path}: invalid interface regular expression {value:?}: {reason}")]
    InterfaceRegex {
        path: String,
        value: String,
        reason: String,
    },
}

impl L2PolicyError {
    /// The status condition type this problem is reported under.
    pub fn condition_type(&self) -> &'static str {
        match self {
            Self::ServiceSelector(_) => conditions::BAD_SERVICE_SELECTOR,
            Self::NodeSelector(_) => conditions::BAD_NODE_SELECTOR,
            Self::InterfaceRegex { .. } => conditions::BAD_INTERFACE_REGEX,
        }
    }
}

/// The compiled interface filter of a policy.
#[derive(Debug, Clone)]
pub struct InterfaceFilter(Vec<Regex>);

impl InterfaceFilter {
    /// Whether the device `name` is selected (any regex matches; no regex selects all).
    pub fn matches(&self, name: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|re| re.is_match(name))
    }
}

impl CiliumL2AnnouncementPolicySpec {
    /// Announces external IPs (default false).
    pub fn announces_external_ips(&self) -> bool {
        self.external_ips.unwrap_or(false)
    }

    /// Announces load-balancer ingress IPs (default false).
    pub fn announces_load_balancer_ips(&self) -> bool {
        self.load_balancer_ips.unwrap_or(false)
    }

    /// Every problem, each naming its field path and value.
    pub fn validate(&self) -> Result<(), Violations<L2PolicyError>> {
        let mut errors = Vec::new();
        if let Some(sel) = &self.service_selector
            && let Err(e) = sel.validate_kubernetes("spec.serviceSelector")
        {
            errors.push(L2PolicyError::ServiceSelector(e));
        }
        if let Some(sel) = &self.node_selector
            && let Err(e) = sel.validate_kubernetes("spec.nodeSelector")
        {
            errors.push(L2PolicyError::NodeSelector(e));
        }
        if let Err(e) = self.interface_filter() {
            errors.push(e);
        }
        Violations(errors).into_result()
    }

    /// Compiles `interfaces` (Go's RE2 syntax, unanchored like `regexp.MatchString`).
    pub fn interface_filter(&self) -> Result<InterfaceFilter, L2PolicyError> {
        self.interfaces
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, pattern)| {
                Regex::new(pattern).map_err(|e| L2PolicyError::InterfaceRegex {
                    path: format!("spec.interfaces[{i}]"),
                    value: pattern.clone(),
                    reason: e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .into(),
                })
            })
            .collect::<Result<_, _>>()
            .map(InterfaceFilter)
    }
}

/// Condition types, the lease naming and field manager of L2 announcements.
pub mod conditions {
    pub const BAD_SERVICE_SELECTOR: &str = "io.cilium/bad-service-selector";
    pub const BAD_NODE_SELECTOR: &str = "io.cilium/bad-node-selector";
    pub const BAD_INTERFACE_REGEX: &str = "io.cilium/bad-interface-regex";
    /// Reason of every L2 policy condition.
    pub const REASON_ERROR: &str = "error";
    /// Field manager of the L2 status writes.
    pub const FIELD_MANAGER: &str = "cilium-agent-l2-announcer";
    /// `loadBalancerClass` of Services meant only for L2 announcements.
    pub const L2_ANNOUNCER_CLASS: &str = "io.cilium/l2-announcer";

    /// Name of the Lease that elects the announcing node of one Service.
    pub fn lease_name(service_namespace: &str, service_name: &str) -> String {
        format!("cilium-l2announce-{service_namespace}-{service_name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_regexes_are_unanchored_and_ored() {
        let spec = CiliumL2AnnouncementPolicySpec {
            interfaces: Some(vec!["^eth[0-9]+".into(), "bond".into()]),
            ..Default::default()
        };
        let f = spec.interface_filter().unwrap();
        assert!(f.matches("eth0"));
        assert!(f.matches("eth12.100"));
        assert!(f.matches("mybond0"));
        assert!(!f.matches("lo"));
    }

    #[test]
    fn no_interfaces_select_all() {
        let f = CiliumL2AnnouncementPolicySpec::default()
            .interface_filter()
            .unwrap();
        assert!(f.matches("anything"));
    }

    #[test]
    fn bad_regex_names_path_value_and_condition() {
        let spec = CiliumL2AnnouncementPolicySpec {
            interfaces: Some(vec!["eth[0-9".into()]),
            ..Default::default()
        };
        let errs = spec.validate().unwrap_err();
        let e = &errs.0[0];
        assert_eq!(e.condition_type(), conditions::BAD_INTERFACE_REGEX);
        let msg = e.to_string();
        assert!(msg.starts_with("spec.interfaces[0]: "), "{msg}");
        assert!(msg.contains("\"eth[0-9\""), "{msg}");
    }
}
