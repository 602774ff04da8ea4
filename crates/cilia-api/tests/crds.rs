//! The generated CRDs: fresh on disk, identical to Cilium's identity (names, versions, columns),
//! and carrying schema validation that rejects bad objects with the field named.

mod common;

use std::collections::BTreeSet;
use std::fs;

use cilia_api::crd;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

// crds/ and the chart's copy hold exactly what `crdgen` writes from the Rust types.
#[test]
fn crd_files_are_fresh() {
    let expected = crd::rendered();
    let mut stale = Vec::new();
    for dir in [crd::CRD_DIR, crd::CHART_CRD_DIR] {
        let dir_path = common::repo().join(dir);
        for (file, yaml) in &expected {
            let path = dir_path.join(file);
            match fs::read_to_string(&path) {
                Ok(on_disk) if on_disk == *yaml => {}
                Ok(_) => stale.push(format!("{dir}/{file} differs")),
                Err(_) => stale.push(format!("{dir}/{file} is missing")),
            }
        }
        let names: BTreeSet<_> = expected.iter().map(|(f, _)| f.clone()).collect();
        for entry in fs::read_dir(&dir_path).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if file.ends_with(".yaml") && !names.contains(&file) {
                stale.push(format!("{dir}/{file} is not generated any more"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "CRD files are stale: {stale:?}\nregenerate them with `{}`",
        crd::REGENERATE
    );
}

fn version(c: &CustomResourceDefinition, name: &str) -> Value {
    let v = serde_json::to_value(c).unwrap();
    v["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{} has no version {name}", c.spec.names.kind))
}

fn columns(v: &Value) -> Vec<(String, String, String)> {
    v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["type"].as_str().unwrap().to_string(),
                c["jsonPath"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn col(name: &str, ty: &str, path: &str) -> (String, String, String) {
    (name.into(), ty.into(), path.into())
}

// cilium-compat §1: names, short names, category, v2 storage + v2alpha1 deprecated, columns.
#[test]
fn pool_crd_identity() {
    let c = crd::lb_ip_pool();
    assert_eq!(
        c.metadata.name.as_deref(),
        Some("ciliumloadbalancerippools.cilium.io")
    );
    assert_eq!(c.spec.scope, "Cluster");
    assert_eq!(c.spec.names.kind, "CiliumLoadBalancerIPPool");
    assert_eq!(
        c.spec.names.singular.as_deref(),
        Some("ciliumloadbalancerippool")
    );
    assert_eq!(
        c.spec.names.short_names.as_deref(),
        Some(&["ippools", "ippool", "lbippool", "lbippools"].map(String::from)[..])
    );
    assert_eq!(
        c.spec.names.categories.as_deref(),
        Some(&["cilium".to_string()][..])
    );
    let v2 = version(&c, "v2");
    let v2alpha1 = version(&c, "v2alpha1");
    assert_eq!(
        (&v2["served"], &v2["storage"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(v2["deprecated"], Value::Null);
    assert_eq!(
        (&v2alpha1["served"], &v2alpha1["storage"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(v2alpha1["deprecated"], json!(true));
    assert_eq!(
        v2["schema"], v2alpha1["schema"],
        "both versions share one schema"
    );
    let expected = vec![
        col("Disabled", "boolean", ".spec.disabled"),
        col(
            "Conflicting",
            "string",
            r#".status.conditions[?(@.type=="cilium.io/PoolConflict")].status"#,
        ),
        col(
            "IPs Available",
            "string",
            r#".status.conditions[?(@.type=="cilium.io/IPsAvailable")].message"#,
        ),
        col("Age", "date", ".metadata.creationTimestamp"),
    ];
    assert_eq!(columns(&v2), expected);
    assert_eq!(columns(&v2alpha1), expected);
    assert_eq!(v2["subresources"]["status"], json!({}));
}

// cilium-compat §2: v2alpha1 only, short name l2announcement, Age column only.
#[test]
fn l2_policy_crd_identity() {
    let c = crd::l2_announcement_policy();
    assert_eq!(
        c.metadata.name.as_deref(),
        Some("ciliuml2announcementpolicies.cilium.io")
    );
    assert_eq!(c.spec.scope, "Cluster");
    assert_eq!(
        c.spec.names.short_names.as_deref(),
        Some(&["l2announcement".to_string()][..])
    );
    assert_eq!(
        c.spec.names.categories.as_deref(),
        Some(&["cilium".to_string()][..])
    );
    assert_eq!(c.spec.versions.len(), 1);
    let v = version(&c, "v2alpha1");
    assert_eq!(
        columns(&v),
        vec![col("Age", "date", ".metadata.creationTimestamp")]
    );
    assert_eq!(v["subresources"]["status"], json!({}));
}

// cilium-compat §3: ccnp short name, cilium + ciliumpolicy categories, Valid column, CEL rule.
#[test]
fn ccnp_crd_identity() {
    let c = crd::clusterwide_network_policy();
    assert_eq!(
        c.metadata.name.as_deref(),
        Some("ciliumclusterwidenetworkpolicies.cilium.io")
    );
    assert_eq!(c.spec.scope, "Cluster");
    assert_eq!(
        c.spec.names.short_names.as_deref(),
        Some(&["ccnp".to_string()][..])
    );
    assert_eq!(
        c.spec.names.categories.as_deref(),
        Some(&["cilium".to_string(), "ciliumpolicy".to_string()][..])
    );
    let v = version(&c, "v2");
    assert_eq!(
        columns(&v),
        vec![
            col(
                "Valid",
                "string",
                ".status.conditions[?(@.type=='Valid')].status"
            ),
            col("Age", "date", ".metadata.creationTimestamp"),
        ]
    );
    let root = &v["schema"]["openAPIV3Schema"];
    assert_eq!(
        root["x-kubernetes-validations"],
        json!([{ "rule": "has(self.spec) || has(self.specs)", "message": "spec or specs must be provided" }])
    );
    assert!(root["properties"]["spec"].is_object() && root["properties"]["specs"].is_object());
}

// The schema nodes the API server checks: formats, patterns, enums, list bounds, CEL.
#[test]
fn schemas_carry_validation() {
    let pool = version(&crd::lb_ip_pool(), "v2")["schema"]["openAPIV3Schema"].clone();
    let spec = &pool["properties"]["spec"];
    let blocks = &spec["properties"]["blocks"];
    assert_eq!(blocks["minItems"], json!(1));
    assert_eq!(spec["properties"]["cidrs"]["minItems"], json!(1));
    assert_eq!(
        blocks["items"]["properties"]["cidr"]["format"],
        json!("cidr")
    );
    assert!(blocks["items"]["properties"]["start"]["pattern"].is_string());
    assert_eq!(
        spec["properties"]["allowFirstLastIPs"]["enum"],
        json!(["Yes", "No"])
    );
    assert_eq!(
        spec["x-kubernetes-validations"][0]["rule"],
        json!("has(self.blocks) || has(self.cidrs)")
    );
    assert_eq!(
        blocks["items"]["x-kubernetes-validations"][0]["rule"],
        json!("has(self.cidr) != has(self.start)")
    );

    let ccnp =
        version(&crd::clusterwide_network_policy(), "v2")["schema"]["openAPIV3Schema"].clone();
    let rule = &ccnp["properties"]["spec"]["properties"];
    let ports =
        &rule["egress"]["items"]["properties"]["toPorts"]["items"]["properties"]["ports"]["items"];
    assert_eq!(
        ports["properties"]["protocol"]["enum"],
        json!(["TCP", "UDP", "SCTP", "ANY"])
    );
    assert_eq!(ports["properties"]["endPort"]["maximum"], json!(65535.0));
    assert_eq!(ports["required"], json!(["port"]));
    let entities = &rule["ingress"]["items"]["properties"]["fromEntities"]["items"]["enum"];
    assert!(
        entities
            .as_array()
            .unwrap()
            .contains(&json!("kube-apiserver"))
    );
    // L7 rules are kept verbatim, not pruned.
    let l7 = &rule["ingress"]["items"]["properties"]["toPorts"]["items"]["properties"]["rules"];
    assert_eq!(l7["x-kubernetes-preserve-unknown-fields"], json!(true));
    let cidr = &rule["egress"]["items"]["properties"]["toCIDRSet"]["items"]["properties"]["cidr"];
    assert!(cidr["pattern"].is_string());
}

// The 1.1-YAML trap: `Yes`/`No` must be quoted in the files, or Go's YAML readers read booleans.
#[test]
fn yes_no_enum_is_quoted_on_disk() {
    let (_, yaml) = crd::rendered()
        .into_iter()
        .find(|(f, _)| f == "ciliumloadbalancerippools.yaml")
        .unwrap();
    assert!(
        yaml.contains("- \"Yes\"") && yaml.contains("- \"No\""),
        "unquoted Yes/No enum"
    );
}
