//! The CustomResourceDefinitions Cilia serves, as written to `crds/` (and the chart's copy) by
//! the `crdgen` binary.
//!
//! The schemas come from the Rust types; this module adds what the derive cannot express: the
//! merged pool versions and CEL rules naming the fields they check.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::CustomResourceExt;
use serde_json::{Value, json};

use crate::{l2, lbipam, policy};

/// Where `crdgen` writes, relative to the repository root.
pub const CRD_DIR: &str = "crds";
/// The chart's copy, rendered by `templates/crds.yaml`.
pub const CHART_CRD_DIR: &str = "charts/cilia/files/crds";
/// How to regenerate both.
pub const REGENERATE: &str = "cargo run -p cilia-api --bin crdgen";

/// `ciliumloadbalancerippools.cilium.io`: v2 (storage) + v2alpha1 (served, deprecated).
pub fn lb_ip_pool() -> CustomResourceDefinition {
    let merged = kube_core::crd::merge_crds(
        vec![
            lbipam::v2::CiliumLoadBalancerIPPool::crd(),
            lbipam::v2alpha1::CiliumLoadBalancerIPPool::crd(),
        ],
        "v2",
    )
    .expect("both pool versions share names and scope");
    patch_versions(merged, |schema| {
        let spec = &mut schema["properties"]["spec"];
        add_rules(
            spec,
            &[(
                "has(self.blocks) || has(self.cidrs)",
                "a pool needs spec.blocks (or the legacy spec.cidrs) with at least one block",
            )],
        );
        for field in ["blocks", "cidrs"] {
            add_rules(
                &mut spec["properties"][field]["items"],
                &[
                    (
                        "has(self.cidr) != has(self.start)",
                        "a block is either a cidr or a start/stop range",
                    ),
                    (
                        "!has(self.stop) || has(self.start)",
                        "a block with stop needs start",
                    ),
                ],
            );
        }
    })
}

/// `ciliuml2announcementpolicies.cilium.io` (v2alpha1).
pub fn l2_announcement_policy() -> CustomResourceDefinition {
    patch_versions(l2::CiliumL2AnnouncementPolicy::crd(), |_| {})
}

/// `ciliumclusterwidenetworkpolicies.cilium.io` (v2), with the "spec or specs" CEL rule.
pub fn clusterwide_network_policy() -> CustomResourceDefinition {
    patch_versions(policy::CiliumClusterwideNetworkPolicy::crd(), |schema| {
        add_rules(
            schema,
            &[(
                policy::conditions::CEL_SPEC_OR_SPECS,
                policy::conditions::MESSAGE_EMPTY,
            )],
        );
    })
}

/// Every CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        lb_ip_pool(),
        l2_announcement_policy(),
        clusterwide_network_policy(),
    ]
}

/// File name of a CRD under [`CRD_DIR`]: `<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.spec.names.plural)
}

/// The YAML `crdgen` writes for a CRD.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    // serde-saphyr quotes YAML 1.1 booleans (`Yes`, `No`), which Go's YAML readers would
    // otherwise turn into `true`/`false` inside the `allowFirstLastIPs` enum.
    let body = serde_saphyr::to_string(crd).expect("a CRD serializes");
    format!("# Generated from crates/cilia-api by `{REGENERATE}`; do not edit.\n{body}")
}

/// `(file name, YAML)` of every CRD.
pub fn rendered() -> Vec<(String, String)> {
    all().iter().map(|c| (file_name(c), to_yaml(c))).collect()
}

fn patch_versions(
    crd: CustomResourceDefinition,
    patch: impl Fn(&mut Value),
) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(crd).expect("a CRD serializes");
    for version in value["spec"]["versions"]
        .as_array_mut()
        .expect("a CRD has versions")
    {
        let schema = &mut version["schema"]["openAPIV3Schema"];
        strip_null_enum_values(schema);
        patch(schema);
    }
    serde_json::from_value(value).expect("patched CRD is still a CRD")
}

/// `Option<Enum>` fields come out of schemars as `enum: [A, B, null]`; `nullable: true` already
/// says the field may be null, and the API server wants enum values of the declared type.
fn strip_null_enum_values(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            map.values_mut().for_each(strip_null_enum_values);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null_enum_values),
        _ => {}
    }
}

fn add_rules(schema: &mut Value, rules: &[(&str, &str)]) {
    assert!(
        schema.is_object(),
        "CEL rules go on an existing schema node"
    );
    let list = schema
        .as_object_mut()
        .expect("checked above")
        .entry("x-kubernetes-validations")
        .or_insert_with(|| json!([]));
    for (rule, message) in rules {
        list.as_array_mut()
            .expect("x-kubernetes-validations is a list")
            .push(json!({ "rule": rule, "message": message }));
    }
}
