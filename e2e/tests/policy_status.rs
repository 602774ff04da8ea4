//! Policy statuses in the lab, with real kubectl against the lab API server and the real operator:
//! every `CiliumClusterwideNetworkPolicy` gets its `Valid` condition (a policy Cilia cannot enforce
//! whole says why, naming the field), every `CiliumL2AnnouncementPolicy` with a broken part gets
//! Cilium's `io.cilium/bad-*` condition, and a broken policy leaves the others alone.

use std::time::Duration;

use cilia_e2e::lab::{Lab, default_nodes, repo_root, wait_until};
use serde_json::Value;

const STEP: Duration = Duration::from_secs(15);

fn path(rel: &str) -> String {
    repo_root().join(rel).to_string_lossy().into_owned()
}

fn condition(obj: &Value, type_: &str) -> Option<Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Waits until `kind/name` carries a condition of `type_` that satisfies `ok`; returns it.
fn wait_condition(
    lab: &Lab,
    kind: &str,
    name: &str,
    type_: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let found = wait_until(STEP, || {
        last = lab.kubectl_json(&[kind, name]).unwrap_or(Value::Null);
        condition(&last, type_).is_some_and(|c| ok(&c))
    });
    if found.is_err() {
        panic!(
            "{kind}/{name} never got the expected {type_} condition; status: {}\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap_or_default(),
            lab.operator_logs()
        );
    }
    condition(&last, type_).unwrap()
}

// The seed policies are valid as they are; an L7 policy is refused whole with the field named; a
// bad interface regex is reported on its policy while the seed policy next to it stays clean.
#[test]
fn policies_get_their_conditions() {
    let lab = Lab::up_kube(default_nodes()).expect("lab with API server");
    lab.kubectl(&["apply", "-f", &path("crds")])
        .expect("CRDs apply");
    lab.kubectl(&[
        "apply",
        "-f",
        &path("../shared/fixtures/seed/ccnp-control-plane.yaml"),
    ])
    .expect("seed CCNP applies");
    lab.kubectl(&[
        "apply",
        "-f",
        &path("../shared/fixtures/seed/l2-policy.yaml"),
    ])
    .expect("seed L2 policy applies");

    let valid = wait_condition(
        &lab,
        "ccnp",
        "allow-control-plane-connectivity",
        "Valid",
        |c| c["status"] == "True",
    );
    assert_eq!(valid["message"], "Policy validation succeeded");

    let l7 = r#"{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy",
        "metadata":{"name":"l7-rule"},
        "spec":{"endpointSelector":{"matchLabels":{"org":"empire"}},
          "ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],
            "rules":{"http":[{"method":"POST","path":"/v1/request-landing"}]}}]}]}}"#;
    lab.kubectl_with_input(&["apply", "-f", "-"], l7)
        .expect("L7 policy applies");
    let invalid = wait_condition(&lab, "ccnp", "l7-rule", "Valid", |c| c["status"] == "False");
    let msg = invalid["message"].as_str().unwrap_or_default();
    assert!(msg.contains("spec.ingress[0].toPorts[0].rules"), "{msg}");

    let bad = r#"{"apiVersion":"cilium.io/v2alpha1","kind":"CiliumL2AnnouncementPolicy",
        "metadata":{"name":"bad-regex"},
        "spec":{"interfaces":["eth["],"loadBalancerIPs":true}}"#;
    lab.kubectl_with_input(&["apply", "-f", "-"], bad)
        .expect("policy applies");
    let c = wait_condition(
        &lab,
        "ciliuml2announcementpolicies",
        "bad-regex",
        "io.cilium/bad-interface-regex",
        |c| c["status"] == "True",
    );
    assert_eq!(c["reason"], "error");
    assert!(
        c["message"].as_str().unwrap_or_default().contains("eth["),
        "{c}"
    );

    // Fixing it flips the condition to False with an empty message (Cilium's behaviour).
    let fixed = bad.replace(r#"["eth["]"#, r#"["^eth[0-9]+"]"#);
    lab.kubectl_with_input(&["apply", "-f", "-"], &fixed)
        .expect("fixed policy applies");
    let c = wait_condition(
        &lab,
        "ciliuml2announcementpolicies",
        "bad-regex",
        "io.cilium/bad-interface-regex",
        |c| c["status"] == "False",
    );
    assert_eq!(c["message"], "");

    // The seed L2 policy never got a condition, and the seed CCNP stayed valid.
    let seed_l2 = lab
        .kubectl_json(&["ciliuml2announcementpolicies", "default"])
        .unwrap();
    assert!(
        seed_l2
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty),
        "{}",
        seed_l2["status"]
    );
    let seed = lab
        .kubectl_json(&["ccnp", "allow-control-plane-connectivity"])
        .unwrap();
    assert_eq!(condition(&seed, "Valid").unwrap()["status"], "True");
}
