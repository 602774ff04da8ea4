//! L2 announcements, the operator's side: `CiliumL2AnnouncementPolicy` objects → the model's
//! [`L2Policy`] plus the status conditions Cilium writes for broken parts, and the Lease that
//! records each Service's announcer under Cilium's name.
//!
//! A broken part disables only itself: a bad service selector selects no Service, a bad node
//! selector no node, a regex that does not compile is left out (the others still match; with none
//! left the policy matches no interface). Conditions follow Cilium: created only when a problem
//! shows, flipped to `False` with an empty message once it is fixed.

use std::collections::BTreeMap;

use cilia_api::l2::{CiliumL2AnnouncementPolicy, L2PolicyError, conditions};
use cilia_model::l2::L2Policy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use regex::Regex;

/// A policy as the announcer choice uses it, and the conditions its status must carry.
pub struct CompiledPolicy {
    /// `None` when the policy selects nothing at all (its service selector is broken).
    pub policy: Option<L2Policy>,
    pub errors: Vec<L2PolicyError>,
}

/// Compiles one policy, keeping every part that works.
pub fn compile(p: &CiliumL2AnnouncementPolicy) -> CompiledPolicy {
    let spec = &p.spec;
    let name = p.metadata.name.clone().unwrap_or_default();
    let mut errors = Vec::new();
    let service_ok = match &spec.service_selector {
        Some(sel) => match sel.validate_kubernetes("spec.serviceSelector") {
            Ok(()) => true,
            Err(e) => {
                errors.push(L2PolicyError::ServiceSelector(e));
                false
            }
        },
        None => true,
    };
    let node_ok = match &spec.node_selector {
        Some(sel) => match sel.validate_kubernetes("spec.nodeSelector") {
            Ok(()) => true,
            Err(e) => {
                errors.push(L2PolicyError::NodeSelector(e));
                false
            }
        },
        None => true,
    };
    let patterns = spec.interfaces.clone().unwrap_or_default();
    let interfaces = if patterns.is_empty() {
        None
    } else {
        let mut ok = Vec::new();
        for (i, pattern) in patterns.iter().enumerate() {
            match Regex::new(pattern) {
                Ok(re) => ok.push(cilia_model::l2::InterfaceRegex(re)),
                Err(e) => errors.push(L2PolicyError::InterfaceRegex {
                    path: format!("spec.interfaces[{i}]"),
                    value: pattern.clone(),
                    reason: e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .into(),
                }),
            }
        }
        Some(ok)
    };
    if !node_ok {
        // No node can be selected: the policy contributes nothing, but keep its errors.
        return CompiledPolicy {
            policy: None,
            errors,
        };
    }
    let policy = service_ok.then(|| L2Policy {
        name,
        service_selector: spec.service_selector.as_ref().map(Into::into),
        node_selector: spec.node_selector.as_ref().map(Into::into),
        interfaces,
        external_ips: spec.announces_external_ips(),
        load_balancer_ips: spec.announces_load_balancer_ips(),
    });
    CompiledPolicy { policy, errors }
}

/// A condition's message: for selectors the text Cilium shows (Go's `LabelSelectorAsSelector`
/// error, e.g. `values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't
/// be empty`), for regexes the field, pattern and reason.
pub fn condition_message(e: &L2PolicyError) -> String {
    match e {
        L2PolicyError::ServiceSelector(p) | L2PolicyError::NodeSelector(p) => p.error.to_string(),
        L2PolicyError::InterfaceRegex { .. } => e.to_string(),
    }
}

/// The conditions the policy's status must carry given `errors`, or `None` when `current`
/// already says exactly that (nothing to write).
pub fn desired_conditions(
    current: &[Condition],
    errors: &[L2PolicyError],
    generation: Option<i64>,
    now: Time,
) -> Option<Vec<Condition>> {
    let mut by_type: BTreeMap<&str, String> = BTreeMap::new();
    for e in errors {
        let text = condition_message(e);
        by_type
            .entry(e.condition_type())
            .and_modify(|m| {
                m.push_str("; ");
                m.push_str(&text);
            })
            .or_insert(text);
    }
    let mut out: Vec<Condition> = Vec::new();
    for t in [
        conditions::BAD_SERVICE_SELECTOR,
        conditions::BAD_NODE_SELECTOR,
        conditions::BAD_INTERFACE_REGEX,
    ] {
        let old = current.iter().find(|c| c.type_ == t);
        let (status, message) = match (by_type.get(t), old) {
            (Some(m), _) => ("True", m.clone()),
            // Created only when a problem shows; once there, flipped to False when fixed.
            (None, Some(_)) => ("False", String::new()),
            (None, None) => continue,
        };
        let unchanged = old.is_some_and(|c| c.status == status && c.message == message);
        out.push(match old {
            Some(c) if unchanged => c.clone(),
            _ => Condition {
                type_: t.to_string(),
                status: status.to_string(),
                reason: conditions::REASON_ERROR.to_string(),
                message,
                observed_generation: generation,
                last_transition_time: now.clone(),
            },
        });
    }
    // Conditions of other writers are kept as they are.
    out.extend(
        current
            .iter()
            .filter(|c| {
                ![
                    conditions::BAD_SERVICE_SELECTOR,
                    conditions::BAD_NODE_SELECTOR,
                    conditions::BAD_INTERFACE_REGEX,
                ]
                .contains(&c.type_.as_str())
            })
            .cloned(),
    );
    let same = out.len() == current.len() && out.iter().all(|c| current.contains(c));
    (!same).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> CiliumL2AnnouncementPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    #[test]
    fn the_seed_policy_compiles_without_conditions() {
        let seed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/seed/l2-policy.yaml"
        ))
        .unwrap();
        let c = compile(&policy(&seed));
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        let p = c.policy.unwrap();
        assert_eq!(p.name, "default");
        assert!(p.external_ips && p.load_balancer_ips);
        assert_eq!(p.interfaces.as_ref().unwrap().len(), 1);
        assert_eq!(desired_conditions(&[], &c.errors, Some(1), now()), None);
    }

    #[test]
    fn a_bad_regex_is_reported_and_the_others_still_match() {
        let c = compile(&policy(
            r#"{"apiVersion":"cilium.io/v2alpha1","kind":"CiliumL2AnnouncementPolicy",
                "metadata":{"name":"p"},"spec":{"interfaces":["eth[","^eth1$"],"loadBalancerIPs":true}}"#,
        ));
        assert_eq!(c.errors.len(), 1);
        let msg = c.errors[0].to_string();
        assert!(
            msg.starts_with("spec.interfaces[0]: invalid interface regular expression \"eth[\""),
            "{msg}"
        );
        let p = c.policy.unwrap();
        assert_eq!(
            p.interfaces.as_ref().unwrap().len(),
            1,
            "the good regex is kept"
        );
        let conds = desired_conditions(&[], &c.errors, Some(2), now()).unwrap();
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].type_, conditions::BAD_INTERFACE_REGEX);
        assert_eq!(
            (conds[0].status.as_str(), conds[0].reason.as_str()),
            ("True", "error")
        );
        // Written once: the same errors against the written status change nothing.
        assert_eq!(desired_conditions(&conds, &c.errors, Some(2), now()), None);
        // Fixed: flipped to False with an empty message, then stable.
        let fixed = desired_conditions(&conds, &[], Some(3), now()).unwrap();
        assert_eq!(
            (fixed[0].status.as_str(), fixed[0].message.as_str()),
            ("False", "")
        );
        assert_eq!(desired_conditions(&fixed, &[], Some(3), now()), None);
    }

    #[test]
    fn bad_selectors_disable_only_what_they_select() {
        let bad_svc = compile(&policy(
            r#"{"apiVersion":"cilium.io/v2alpha1","kind":"CiliumL2AnnouncementPolicy","metadata":{"name":"s"},
                "spec":{"serviceSelector":{"matchExpressions":[{"key":"a","operator":"In"}]}}}"#,
        ));
        assert!(bad_svc.policy.is_none());
        assert_eq!(
            bad_svc.errors[0].condition_type(),
            conditions::BAD_SERVICE_SELECTOR
        );
        assert_eq!(
            condition_message(&bad_svc.errors[0]),
            "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
        );
        let logged = bad_svc.errors[0].to_string();
        assert!(
            logged.starts_with("spec.serviceSelector.matchExpressions[0].values"),
            "{logged}"
        );
        let bad_node = compile(&policy(
            r#"{"apiVersion":"cilium.io/v2alpha1","kind":"CiliumL2AnnouncementPolicy","metadata":{"name":"n"},
                "spec":{"nodeSelector":{"matchLabels":{"-bad":"x"}}}}"#,
        ));
        assert!(bad_node.policy.is_none());
        assert_eq!(
            bad_node.errors[0].condition_type(),
            conditions::BAD_NODE_SELECTOR
        );
    }
}
