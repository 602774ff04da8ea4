//! LB-IPAM's wanted statuses → the status patches written to the API server (JSON merge patches
//! on the `status` subresource, field manager `cilium-operator-lb-ipam`). Pure: conditions of
//! other types stay, and a condition whose status did not flip keeps its `lastTransitionTime`.

use cilia_model::lbipam::{self, ServiceLbStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

/// Field manager of every LB-IPAM status write (Cilium's).
pub const FIELD_MANAGER: &str = "cilium-operator-lb-ipam";

/// The condition types LB-IPAM owns on a pool.
const POOL_TYPES: [&str; 4] = [
    lbipam::CONDITION_POOL_CONFLICT,
    lbipam::CONDITION_IPS_TOTAL,
    lbipam::CONDITION_IPS_AVAILABLE,
    lbipam::CONDITION_IPS_USED,
];

fn k8s_condition(c: &lbipam::Condition, existing: &[Condition], now: &Time) -> Condition {
    let last_transition_time = existing
        .iter()
        .find(|e| e.type_ == c.type_ && e.status == c.status.as_str())
        .map(|e| e.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: c.type_.clone(),
        status: c.status.as_str().to_string(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        observed_generation: Some(c.observed_generation),
        last_transition_time,
    }
}

/// Replaces the conditions of `owned` types in `existing` by `wanted` (in place where a type
/// already was, else appended), keeping every other condition.
fn merge_conditions(
    existing: &[Condition],
    owned: &[&str],
    wanted: &[lbipam::Condition],
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = Vec::new();
    for e in existing {
        if !owned.contains(&e.type_.as_str()) {
            out.push(e.clone());
        } else if let Some(w) = wanted.iter().find(|w| w.type_ == e.type_) {
            out.push(k8s_condition(w, existing, now));
        }
    }
    for w in wanted {
        if !out.iter().any(|c| c.type_ == w.type_) {
            out.push(k8s_condition(w, existing, now));
        }
    }
    out
}

/// The merge patch that makes a Service's status what LB-IPAM wants. `None` for
/// [`ServiceLbStatus::Ignored`] (nothing to write).
pub fn service_patch(
    existing_conditions: &[Condition],
    wanted: &ServiceLbStatus,
    now: &Time,
) -> Option<Value> {
    let (ingress, condition) = match wanted {
        ServiceLbStatus::Ignored => return None,
        ServiceLbStatus::Managed { ingress, condition } => {
            (ingress.as_slice(), std::slice::from_ref(condition))
        }
        ServiceLbStatus::Released => (&[][..], &[][..]),
    };
    let conditions = merge_conditions(
        existing_conditions,
        &[lbipam::CONDITION_REQUEST_SATISFIED],
        condition,
        now,
    );
    let ingress: Vec<Value> = ingress
        .iter()
        .map(|ip| json!({ "ip": ip.to_string() }))
        .collect();
    Some(json!({
        "status": {
            "loadBalancer": { "ingress": if ingress.is_empty() { Value::Null } else { ingress.into() } },
            "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
        }
    }))
}

/// The merge patch that sets a pool's LB-IPAM conditions.
pub fn pool_patch(
    existing_conditions: &[Condition],
    wanted: &[lbipam::Condition],
    now: &Time,
) -> Value {
    let conditions = merge_conditions(existing_conditions, &POOL_TYPES, wanted, now);
    json!({ "status": { "conditions": conditions } })
}
