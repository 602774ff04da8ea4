//! Discovery documents (`/version`, `/api`, `/apis`, per group-version resource lists, aggregated
//! discovery v2) and the OpenAPI v2/v3 documents clients consult before writing.
//!
//! The OpenAPI v3 documents are deliberately thin: one PATCH operation per kind carrying
//! `x-kubernetes-group-version-kind` and the `fieldValidation` parameter, which is what kubectl
//! and Helm check to decide that the server validates fields itself (so they skip client-side
//! schema validation). They do not advertise strategic merge patch, so kubectl computes
//! strategic patches from its compiled-in types and JSON merge patches for custom resources,
//! exactly as against a real server. CRD versions also carry their schema as a component.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use serde_json::{Value, json};

use crate::registry::{Registry, ResourceType};

pub const KUBE_VERSION: (&str, &str) = ("1", "36");
pub const GIT_VERSION: &str = "v1.36.0";

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];
const REVIEW_VERBS: &[&str] = &["create"];

fn verbs(rt: &ResourceType) -> &'static [&'static str] {
    if rt.review { REVIEW_VERBS } else { VERBS }
}

pub fn version() -> Value {
    json!({
        "major": KUBE_VERSION.0,
        "minor": KUBE_VERSION.1,
        "gitVersion": GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
        "emulationMajor": KUBE_VERSION.0,
        "emulationMinor": KUBE_VERSION.1,
    })
}

pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(json!({})),
    })
}

pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = reg
        .groups()
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let (g, vs) = reg.groups().into_iter().find(|(g, _)| g == group)?;
    let mut doc = group_doc(&g, &vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

fn storage_hash(rt: &ResourceType) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&rt.group, &rt.plural, &rt.kind).hash(&mut h);
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&h.finish().to_be_bytes()[..8])
}

/// The legacy `APIResourceList` of one group-version.
pub fn api_resource_list(reg: &Registry, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for rt in reg.resources_in(group, version) {
        let mut r = json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs(&rt),
            "storageVersionHash": storage_hash(&rt),
        });
        if !rt.short_names.is_empty() {
            r["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            r["categories"] = json!(rt.categories);
        }
        resources.push(r);
        if rt.has_status(version) {
            resources.push(json!({"name": format!("{}/status", rt.plural), "singularName": "", "namespaced": rt.namespaced, "kind": rt.kind, "verbs": STATUS_VERBS}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn aggregated_version(reg: &Registry, group: &str, version: &str) -> Value {
    let resources: Vec<Value> = reg
        .resources_in(group, version)
        .iter()
        .map(|rt| {
            let kind = json!({"group": group, "version": version, "kind": rt.kind});
            let mut r = json!({
                "resource": rt.plural,
                "responseKind": kind,
                "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": rt.singular,
                "verbs": verbs(rt),
            });
            if !rt.short_names.is_empty() {
                r["shortNames"] = json!(rt.short_names);
            }
            if !rt.categories.is_empty() {
                r["categories"] = json!(rt.categories);
            }
            if rt.has_status(version) {
                r["subresources"] =
                    json!([{"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS}]);
            }
            r
        })
        .collect();
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) for `/api` (core) or
/// `/apis` (named groups).
pub fn aggregated(reg: &Registry, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![
            json!({"metadata": {"name": "", "creationTimestamp": null}, "versions": [aggregated_version(reg, "", "v1")]}),
        ]
    } else {
        reg.groups()
            .iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> =
                    vs.iter().map(|v| aggregated_version(reg, g, v)).collect();
                json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
            })
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// The OpenAPI v2 document: valid and empty of definitions (clients then fall back to their
/// compiled-in knowledge, as they do for servers that publish none).
pub fn openapi_v2() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": GIT_VERSION}, "paths": {}, "definitions": {}})
}

/// `api/v1`, `apis/apps/v1`, ...
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every served group-version.
fn group_versions(reg: &Registry) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), "v1".to_string())];
    for (g, vs) in reg.groups() {
        for v in vs {
            out.push((g.clone(), v));
        }
    }
    out
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn schema_name(rt: &ResourceType, version: &str) -> String {
    let mut parts: Vec<&str> = rt.group.split('.').collect();
    parts.reverse();
    let prefix = if rt.group.is_empty() {
        "io.k8s.api.core".to_string()
    } else {
        parts.join(".")
    };
    format!("{prefix}.{version}.{}", rt.kind)
}

/// The OpenAPI v3 document of one group-version.
pub fn openapi_v3_group_version(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    if !(reg.serves_group_version(group, version) || group.is_empty() && version == "v1") {
        return None;
    }
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = BTreeMap::new();
    let mut schemas = BTreeMap::new();
    for rt in reg
        .resources_in(group, version)
        .into_iter()
        .filter(|rt| !rt.review)
    {
        let gvk = json!({"group": group, "version": version, "kind": rt.kind});
        let schema_ref =
            json!({"$ref": format!("#/components/schemas/{}", schema_name(&rt, version))});
        let content: BTreeMap<&str, Value> = [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/apply-patch+yaml",
        ]
        .into_iter()
        .map(|ct| (ct, json!({"schema": {"type": "object"}})))
        .collect();
        let patch = json!({
            "operationId": format!("patch{}", rt.kind),
            "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
            "requestBody": {"content": content, "required": true},
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        });
        let item_path = if rt.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}/{{name}}", rt.plural)
        } else {
            format!("{base}/{}/{{name}}", rt.plural)
        };
        paths.insert(item_path, json!({"patch": patch, "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]}));
        let mut schema = crd_schema(&rt, version).unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(schema_name(&rt, version), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn crd_schema(rt: &ResourceType, version: &str) -> Option<Value> {
    rt.version(version)?.raw_schema.as_deref().cloned()
}

/// A short content hash for `?hash=` in `/openapi/v3` (clients cache documents by it).
pub fn content_hash(v: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016X}", h.finish())
}

/// `/openapi/v3`: where each group-version's document lives.
pub fn openapi_v3_index(reg: &Registry) -> Value {
    let mut paths = BTreeMap::new();
    for (g, v) in group_versions(reg) {
        if let Some(doc) = openapi_v3_group_version(reg, &g, &v) {
            let path = gv_path(&g, &v);
            paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", content_hash(&doc))}));
        }
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_and_groups() {
        let reg = Registry::builtin();
        let core = api_resource_list(&reg, "", "v1");
        let names: Vec<&str> = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"configmaps")
        );
        let groups = api_group_list(&reg);
        let first = &groups["groups"][0];
        assert_eq!(first["name"], "apps");
        assert_eq!(first["preferredVersion"]["groupVersion"], "apps/v1");
        let agg = aggregated(&reg, false);
        let apps = &agg["items"][0];
        assert_eq!(apps["metadata"]["name"], "apps");
        let deploy = apps["versions"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == "deployments")
            .unwrap();
        assert_eq!(deploy["scope"], "Namespaced");
        assert_eq!(deploy["subresources"][0]["subresource"], "status");
    }

    // kubectl decides server-side field validation is available from the PATCH operation's
    // parameters, matched by the x-kubernetes-group-version-kind extension.
    #[test]
    fn openapi_v3_advertises_field_validation() {
        let reg = Registry::builtin();
        let idx = openapi_v3_index(&reg);
        assert!(
            idx["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
        let doc = openapi_v3_group_version(&reg, "", "v1").unwrap();
        let cm = &doc["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
        assert_eq!(cm["x-kubernetes-group-version-kind"]["kind"], "ConfigMap");
        assert!(
            cm["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(
            cm["requestBody"]["content"]
                .get("application/strategic-merge-patch+json")
                .is_none()
        );
        assert!(openapi_v3_group_version(&reg, "nope.io", "v1").is_none());
    }
}
