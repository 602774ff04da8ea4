//! The status controller of `CiliumClusterwideNetworkPolicy` and `CiliumL2AnnouncementPolicy`:
//! every policy gets the conditions that say whether (and which part of) it can be applied — the
//! CCNP's `Valid` condition (`True` "Policy validation succeeded", or `False` naming every problem;
//! a policy Cilia cannot enforce whole is not applied at all), and the L2 policy's
//! `io.cilium/bad-*` conditions in Cilium's shape. Its own controller, as DESIGN.md asks: it owns
//! these statuses and nothing else. Objects are watched untyped, so one malformed policy is
//! reported on instead of stalling the watch of the others. Only the Lease holder writes, and only
//! what differs.

use std::collections::BTreeMap;

use cilia_api::l2::CiliumL2AnnouncementPolicy;
use cilia_api::policy::{CiliumClusterwideNetworkPolicy, conditions};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Field manager of these status writes.
pub const FIELD_MANAGER: &str = "cilia-operator-policy-status";

pub fn ccnp_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v2", "CiliumClusterwideNetworkPolicy"),
        "ciliumclusterwidenetworkpolicies",
    )
}

pub fn l2_policy_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v2alpha1", "CiliumL2AnnouncementPolicy"),
        "ciliuml2announcementpolicies",
    )
}

/// The `Valid` condition a CCNP must carry: (status, message).
pub fn ccnp_valid(obj: &Value) -> (&'static str, String) {
    match serde_json::from_value::<CiliumClusterwideNetworkPolicy>(obj.clone()) {
        Ok(p) => crate::policy::valid_condition(&crate::policy::compile(&p)),
        Err(e) => ("False", format!("cannot read the policy: {e}")),
    }
}

/// The status patch for a CCNP, or `None` when its `Valid` condition already says it.
pub fn ccnp_patch(obj: &Value, now: &Time) -> Option<Value> {
    let (status, message) = ccnp_valid(obj);
    let current: Vec<Value> = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let old = current
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(conditions::VALID));
    let same = old.is_some_and(|c| {
        c.get("status").and_then(Value::as_str) == Some(status)
            && c.get("message").and_then(Value::as_str) == Some(message.as_str())
    });
    if same {
        return None;
    }
    let mut out: Vec<Value> = current
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) != Some(conditions::VALID))
        .cloned()
        .collect();
    out.push(json!({
        "type": conditions::VALID,
        "status": status,
        "lastTransitionTime": now,
        "message": message,
    }));
    Some(json!({ "status": { "conditions": out } }))
}

/// The status patch for an L2 policy, or `None` when its conditions already say it.
pub fn l2_patch(obj: &Value, now: &Time) -> Option<Value> {
    let current: Vec<Condition> = obj
        .pointer("/status/conditions")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    let generation = obj.pointer("/metadata/generation").and_then(Value::as_i64);
    let wanted = match serde_json::from_value::<CiliumL2AnnouncementPolicy>(obj.clone()) {
        Ok(p) => crate::l2::desired_conditions(
            &current,
            &crate::l2::compile(&p).errors,
            generation,
            now.clone(),
        )?,
        // Unreadable as a whole (the API server's schema normally prevents it): say so once.
        Err(e) => {
            let message = format!("cannot read the policy: {e}");
            if current.iter().any(|c| c.message == message) {
                return None;
            }
            vec![Condition {
                type_: cilia_api::l2::conditions::BAD_SERVICE_SELECTOR.into(),
                status: "True".into(),
                reason: cilia_api::l2::conditions::REASON_ERROR.into(),
                message,
                observed_generation: generation,
                last_transition_time: now.clone(),
            }]
        }
    };
    Some(json!({ "status": { "conditions": wanted } }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ccnp,
    L2,
}

/// Runs until `drain` turns: keeps every policy's conditions current while `leader` is true.
pub async fn run(
    client: Client,
    mut leader: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
) {
    let cfg = watcher::Config::default();
    let ccnp = watcher(
        Api::<DynamicObject>::all_with(client.clone(), &ccnp_resource()),
        cfg.clone(),
    )
    .default_backoff()
    .map(|e| (Kind::Ccnp, e));
    let l2 = watcher(
        Api::<DynamicObject>::all_with(client.clone(), &l2_policy_resource()),
        cfg,
    )
    .default_backoff()
    .map(|e| (Kind::L2, e));
    let mut events = std::pin::pin!(futures::stream::select(ccnp, l2));
    // The last seen object of each policy, by kind and name.
    let mut objects: BTreeMap<(Kind, String), Value> = BTreeMap::new();
    let mut relists: BTreeMap<Kind, BTreeMap<String, Value>> = BTreeMap::new();
    let mut is_leader = *leader.borrow_and_update();
    loop {
        let mut dirty: Vec<(Kind, String)> = Vec::new();
        tokio::select! {
            _ = drain.changed() => return,
            r = leader.changed() => {
                if r.is_err() { return }
                is_leader = *leader.borrow_and_update();
                if is_leader {
                    info!("leading: reconciling every policy status");
                    dirty.extend(objects.keys().cloned());
                }
            }
            ev = events.next() => {
                let Some((kind, ev)) = ev else { return };
                match ev {
                    Err(e) => warn!(kind = ?kind, error = %e, "policy watch failed; retrying"),
                    Ok(watcher::Event::Init) => { relists.insert(kind, BTreeMap::new()); }
                    Ok(watcher::Event::InitApply(o)) => {
                        let name = o.metadata.name.clone().unwrap_or_default();
                        if let Ok(v) = serde_json::to_value(&o) {
                            relists.entry(kind).or_default().insert(name, v);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        objects.retain(|(k, _), _| *k != kind);
                        for (name, v) in relists.remove(&kind).unwrap_or_default() {
                            dirty.push((kind, name.clone()));
                            objects.insert((kind, name), v);
                        }
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        let name = o.metadata.name.clone().unwrap_or_default();
                        if let Ok(v) = serde_json::to_value(&o) {
                            dirty.push((kind, name.clone()));
                            objects.insert((kind, name), v);
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        objects.remove(&(kind, o.metadata.name.clone().unwrap_or_default()));
                    }
                }
            }
        }
        if !is_leader {
            continue;
        }
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for key in dirty {
            let Some(obj) = objects.get(&key) else {
                continue;
            };
            let (patch, res) = match key.0 {
                Kind::Ccnp => (ccnp_patch(obj, &now), ccnp_resource()),
                Kind::L2 => (l2_patch(obj, &now), l2_policy_resource()),
            };
            let Some(patch) = patch else { continue };
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &res);
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            match api.patch_status(&key.1, &pp, &Patch::Merge(&patch)).await {
                // The answer is the object as it now is: its next event compares equal.
                Ok(o) => {
                    debug!(kind = ?key.0, policy = %key.1, "policy status written");
                    if let Ok(v) = serde_json::to_value(&o) {
                        objects.insert(key, v);
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    warn!(kind = ?key.0, policy = %key.1, error = %e, "writing the policy status failed; it is retried on the next change")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    #[test]
    fn ccnp_valid_condition_written_once() {
        let seed: serde_json::Value = serde_yaml::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../../shared/fixtures/seed/ccnp-control-plane.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        let patch = ccnp_patch(&seed, &now()).expect("first write");
        let conds = &patch["status"]["conditions"];
        assert_eq!(conds[0]["type"], "Valid");
        assert_eq!(conds[0]["status"], "True");
        assert_eq!(conds[0]["message"], "Policy validation succeeded");
        let mut written = seed.clone();
        written["status"] = patch["status"].clone();
        assert_eq!(ccnp_patch(&written, &now()), None, "nothing to write again");
    }

    #[test]
    fn an_l7_policy_is_not_valid_and_says_why() {
        let p = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": {"name": "l7"},
            "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                "rules": {"http": [{"method": "GET"}]}}]}]}});
        let patch = ccnp_patch(&p, &now()).unwrap();
        let c = &patch["status"]["conditions"][0];
        assert_eq!(c["status"], "False");
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("spec.ingress[0].toPorts[0].rules"),
            "{c}"
        );
    }

    #[test]
    fn l2_bad_regex_condition_then_nothing_more() {
        let p = json!({"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy",
            "metadata": {"name": "bad", "generation": 1},
            "spec": {"interfaces": ["eth["], "loadBalancerIPs": true}});
        let patch = l2_patch(&p, &now()).unwrap();
        let c = &patch["status"]["conditions"][0];
        assert_eq!(c["type"], "io.cilium/bad-interface-regex");
        assert_eq!(c["status"], "True");
        let mut written = p.clone();
        written["status"] = patch["status"].clone();
        assert_eq!(l2_patch(&written, &now()), None);
        // A good policy gets no condition at all (Cilium creates them only on errors).
        let good = json!({"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy",
            "metadata": {"name": "good"}, "spec": {"interfaces": ["^eth[0-9]+"]}});
        assert_eq!(l2_patch(&good, &now()), None);
    }
}
