//! The served resource types: built-in kinds plus one entry per CustomResourceDefinition.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::FieldError;
use crate::schema::Schema;

/// `(group, plural)`: the storage identity of a resource, independent of version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &str, resource: &str) -> Self {
        GroupResource {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

/// One additional printer column of a CRD version (or of a built-in table).
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

/// A version a resource is served at.
#[derive(Debug, Clone)]
pub struct ServedVersion {
    pub name: String,
    pub storage: bool,
    /// The structural schema custom objects are validated, pruned and defaulted with.
    pub schema: Option<Arc<Schema>>,
    /// The schema as written in the CRD, published in OpenAPI v3.
    pub raw_schema: Option<Arc<Value>>,
    /// Printer columns; for CRDs without any, `Age` as the real server does.
    pub columns: Vec<PrinterColumn>,
    pub status_subresource: bool,
}

/// Everything the server knows about one resource.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub group: String,
    pub kind: String,
    pub list_kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Served versions, preferred first.
    pub versions: Vec<ServedVersion>,
    /// Defined by a CustomResourceDefinition.
    pub custom: bool,
    /// A create-only review (access or identity review): answered, never stored.
    pub review: bool,
}

impl ResourceType {
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }

    pub fn version(&self, name: &str) -> Option<&ServedVersion> {
        self.versions.iter().find(|v| v.name == name)
    }

    pub fn preferred_version(&self) -> &str {
        self.versions
            .first()
            .map(|v| v.name.as_str())
            .unwrap_or("v1")
    }

    pub fn has_status(&self, version: &str) -> bool {
        self.version(version).is_some_and(|v| v.status_subresource)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn qualified(&self) -> crate::error::Qualified<'_> {
        crate::error::Qualified {
            group: &self.group,
            resource: &self.plural,
        }
    }

    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }
}

/// `(group, version, kind, plural, shortNames, categories, namespaced, status)` of a built-in.
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    bool,
    bool,
);

const BUILTINS: &[Builtin] = &[
    (
        "",
        "v1",
        "Namespace",
        "namespaces",
        &["ns"],
        &[],
        false,
        true,
    ),
    ("", "v1", "Node", "nodes", &["no"], &[], false, true),
    ("", "v1", "Pod", "pods", &["po"], &["all"], true, true),
    (
        "",
        "v1",
        "Service",
        "services",
        &["svc"],
        &["all"],
        true,
        true,
    ),
    (
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        &["cm"],
        &[],
        true,
        false,
    ),
    ("", "v1", "Secret", "secrets", &[], &[], true, false),
    (
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        &["sa"],
        &[],
        true,
        false,
    ),
    (
        "",
        "v1",
        "Endpoints",
        "endpoints",
        &["ep"],
        &[],
        true,
        false,
    ),
    ("", "v1", "Event", "events", &["ev"], &[], true, false),
    (
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        &["pvc"],
        &[],
        true,
        true,
    ),
    (
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        &["pv"],
        &[],
        false,
        true,
    ),
    (
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        &["quota"],
        &[],
        true,
        true,
    ),
    (
        "",
        "v1",
        "LimitRange",
        "limitranges",
        &["limits"],
        &[],
        true,
        false,
    ),
    (
        "",
        "v1",
        "ReplicationController",
        "replicationcontrollers",
        &["rc"],
        &["all"],
        true,
        true,
    ),
    (
        "",
        "v1",
        "PodTemplate",
        "podtemplates",
        &[],
        &[],
        true,
        false,
    ),
    (
        "apps",
        "v1",
        "Deployment",
        "deployments",
        &["deploy"],
        &["all"],
        true,
        true,
    ),
    (
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        &["ds"],
        &["all"],
        true,
        true,
    ),
    (
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        &["rs"],
        &["all"],
        true,
        true,
    ),
    (
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        &["sts"],
        &["all"],
        true,
        true,
    ),
    (
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        &[],
        &[],
        true,
        false,
    ),
    ("batch", "v1", "Job", "jobs", &[], &["all"], true, true),
    (
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        &["cj"],
        &["all"],
        true,
        true,
    ),
    (
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        &["hpa"],
        &["all"],
        true,
        true,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        &[],
        &[],
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        &[],
        &[],
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        &[],
        &[],
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        &[],
        &[],
        false,
        false,
    ),
    (
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        &[],
        &[],
        true,
        false,
    ),
    (
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        &[],
        &[],
        true,
        false,
    ),
    (
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        &["ev"],
        &[],
        true,
        false,
    ),
    (
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        &["pdb"],
        &[],
        true,
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
        &["netpol"],
        &[],
        true,
        false,
    ),
    (
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        &["ing"],
        &[],
        true,
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        &[],
        &[],
        false,
        false,
    ),
    (
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        &["pc"],
        &[],
        false,
        false,
    ),
    (
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        &["sc"],
        &[],
        false,
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        &[],
        &["api-extensions"],
        false,
        false,
    ),
    (
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        &[],
        &["api-extensions"],
        false,
        false,
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        &["crd", "crds"],
        &["api-extensions"],
        false,
        true,
    ),
];

/// Create-only reviews `(group, kind, plural)` at v1: `kubectl auth can-i` / `whoami`.
const REVIEWS: &[(&str, &str, &str)] = &[
    (
        "authorization.k8s.io",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
    ),
    (
        "authorization.k8s.io",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
    ),
    (
        "authentication.k8s.io",
        "SelfSubjectReview",
        "selfsubjectreviews",
    ),
];

/// The order built-in groups are listed in `/apis`, like the real server's.
const BUILTIN_GROUP_ORDER: &[&str] = &[
    "apiregistration.k8s.io",
    "apps",
    "events.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "autoscaling",
    "batch",
    "certificates.k8s.io",
    "networking.k8s.io",
    "policy",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "scheduling.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
];

/// All served resource types. Immutable; a CRD change produces a new registry.
#[derive(Debug, Clone)]
pub struct Registry {
    types: BTreeMap<GroupResource, Arc<ResourceType>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    pub fn builtin() -> Self {
        let types = BUILTINS
            .iter()
            .map(
                |&(group, version, kind, plural, short, cats, namespaced, status)| {
                    let rt = ResourceType {
                        group: group.to_string(),
                        kind: kind.to_string(),
                        list_kind: format!("{kind}List"),
                        plural: plural.to_string(),
                        singular: kind.to_lowercase(),
                        namespaced,
                        short_names: short.iter().map(|s| s.to_string()).collect(),
                        categories: cats.iter().map(|s| s.to_string()).collect(),
                        versions: vec![ServedVersion {
                            name: version.to_string(),
                            storage: true,
                            schema: None,
                            raw_schema: None,
                            columns: Vec::new(),
                            status_subresource: status,
                        }],
                        custom: false,
                        review: false,
                    };
                    (rt.group_resource(), Arc::new(rt))
                },
            )
            .chain(REVIEWS.iter().map(|&(group, kind, plural)| {
                let rt = ResourceType {
                    group: group.to_string(),
                    kind: kind.to_string(),
                    list_kind: format!("{kind}List"),
                    plural: plural.to_string(),
                    singular: kind.to_lowercase(),
                    namespaced: false,
                    short_names: Vec::new(),
                    categories: Vec::new(),
                    versions: vec![ServedVersion {
                        name: "v1".into(),
                        storage: true,
                        schema: None,
                        raw_schema: None,
                        columns: Vec::new(),
                        status_subresource: false,
                    }],
                    custom: false,
                    review: true,
                };
                (rt.group_resource(), Arc::new(rt))
            }))
            .collect();
        Registry { types }
    }

    pub fn get(&self, gr: &GroupResource) -> Option<&Arc<ResourceType>> {
        self.types.get(gr)
    }

    /// The resource served at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        let rt = self.types.get(&GroupResource::new(group, plural))?;
        rt.version(version).map(|_| rt.clone())
    }

    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types
            .values()
            .find(|rt| rt.group == group && rt.kind == kind)
            .cloned()
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<ResourceType>> {
        self.types.values()
    }

    /// Whether `group/version` is served at all.
    pub fn serves_group_version(&self, group: &str, version: &str) -> bool {
        self.types
            .values()
            .any(|rt| rt.group == group && rt.version(version).is_some())
    }

    /// Resource types served at `group/version`.
    pub fn resources_in(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.types
            .values()
            .filter(|rt| rt.group == group && rt.version(version).is_some())
            .cloned()
            .collect()
    }

    /// Named groups (not the core group) with their versions, preferred version first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rt in self.types.values().filter(|rt| !rt.group.is_empty()) {
            let versions = groups.entry(rt.group.clone()).or_default();
            for v in &rt.versions {
                if !versions.contains(&v.name) {
                    versions.push(v.name.clone());
                }
            }
        }
        let mut out: Vec<(String, Vec<String>)> = groups
            .into_iter()
            .map(|(g, mut vs)| {
                vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                (g, vs)
            })
            .collect();
        out.sort_by_key(|(g, _)| {
            let idx = BUILTIN_GROUP_ORDER
                .iter()
                .position(|b| b == g)
                .unwrap_or(usize::MAX);
            (idx, g.clone())
        });
        out
    }

    /// A new registry serving the resource a CRD defines (replacing an older definition).
    pub fn with_custom(&self, rt: ResourceType) -> Registry {
        let mut types = self.types.clone();
        types.insert(rt.group_resource(), Arc::new(rt));
        Registry { types }
    }

    pub fn without(&self, gr: &GroupResource) -> Registry {
        let mut types = self.types.clone();
        types.remove(gr);
        Registry { types }
    }
}

/// Kubernetes' version ordering: GA before beta before alpha, higher numbers first, others last.
pub fn version_priority(v: &str) -> (u8, u8, u64, u64, std::cmp::Reverse<String>) {
    let rest = match v.strip_prefix('v') {
        Some(r) => r,
        None => return (0, 0, 0, 0, std::cmp::Reverse(v.to_string())),
    };
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let Ok(major) = digits.parse::<u64>() else {
        return (0, 0, 0, 0, std::cmp::Reverse(v.to_string()));
    };
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(u64::MAX))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(u64::MAX))
    } else {
        return (0, 0, 0, 0, std::cmp::Reverse(v.to_string()));
    };
    if minor == u64::MAX {
        return (0, 0, 0, 0, std::cmp::Reverse(v.to_string()));
    }
    (1, stage, major, minor, std::cmp::Reverse(String::new()))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    crate::meta::pointer(v, path)?.as_str()
}

fn strings_at(v: &Value, path: &[&str]) -> Vec<String> {
    crate::meta::pointer(v, path)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a CustomResourceDefinition into the resource type it defines, or says which fields are wrong.
pub fn resource_type_from_crd(crd: &Value) -> Result<ResourceType, Vec<FieldError>> {
    let mut errors = Vec::new();
    let group = str_at(crd, &["spec", "group"]).unwrap_or("").to_string();
    let plural = str_at(crd, &["spec", "names", "plural"])
        .unwrap_or("")
        .to_string();
    let kind = str_at(crd, &["spec", "names", "kind"])
        .unwrap_or("")
        .to_string();
    let name = crate::meta::name(crd).to_string();
    if group.is_empty() {
        errors.push(FieldError::required("spec.group"));
    } else if !group.contains('.') {
        errors.push(FieldError::invalid(
            "spec.group",
            Value::String(group.clone()),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errors.push(FieldError::required("spec.names.plural"));
    }
    if kind.is_empty() {
        errors.push(FieldError::required("spec.names.kind"));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        errors.push(FieldError::invalid(
            "metadata.name",
            Value::String(name.clone()),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let scope = str_at(crd, &["spec", "scope"]).unwrap_or("");
    let namespaced = match scope {
        "Namespaced" => true,
        "Cluster" => false,
        "" => {
            errors.push(FieldError::required("spec.scope"));
            true
        }
        other => {
            errors.push(FieldError {
                field: "spec.scope".into(),
                kind: crate::error::FieldErrorKind::NotSupported {
                    value: Value::String(other.into()),
                    supported: vec!["Cluster".into(), "Namespaced".into()],
                },
            });
            true
        }
    };
    let mut versions = Vec::new();
    let raw_versions = crate::meta::pointer(crd, &["spec", "versions"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if raw_versions.is_empty() {
        errors.push(FieldError::required("spec.versions"));
    }
    let storage_count = raw_versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !raw_versions.is_empty() && storage_count != 1 {
        errors.push(FieldError::invalid(
            "spec.versions",
            Value::Array(raw_versions.clone()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in raw_versions.iter().enumerate() {
        let vname = v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if vname.is_empty() {
            errors.push(FieldError::required(format!("spec.versions[{i}].name")));
            continue;
        }
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let schema = match v.pointer("/schema/openAPIV3Schema") {
            Some(s) => match Schema::compile(s) {
                Ok(schema) => Some(Arc::new(schema)),
                Err(msg) => {
                    errors.push(FieldError::invalid(
                        format!("spec.versions[{i}].schema.openAPIV3Schema"),
                        Value::Object(Default::default()),
                        msg,
                    ));
                    None
                }
            },
            None => None,
        };
        let mut columns: Vec<PrinterColumn> = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .to_string(),
                        format: c
                            .get("format")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: c
                            .get("jsonPath")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (ci, c) in columns.iter().enumerate() {
            if let Err(msg) = crate::table::JsonPath::parse(&c.json_path) {
                errors.push(FieldError::invalid(
                    format!("spec.versions[{i}].additionalPrinterColumns[{ci}].jsonPath"),
                    Value::String(c.json_path.clone()),
                    msg,
                ));
            }
        }
        if columns.is_empty() {
            columns.push(PrinterColumn {
                name: "Age".into(),
                type_: "date".into(),
                format: String::new(),
                description: "CreationTimestamp is a timestamp representing the server time when this object was created.".into(),
                priority: 0,
                json_path: ".metadata.creationTimestamp".into(),
            });
        }
        versions.push(ServedVersion {
            name: vname,
            storage: v.get("storage").and_then(Value::as_bool) == Some(true),
            schema,
            raw_schema: v.pointer("/schema/openAPIV3Schema").cloned().map(Arc::new),
            columns,
            status_subresource: v.pointer("/subresources/status").is_some(),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    versions.sort_by_key(|v| std::cmp::Reverse(version_priority(&v.name)));
    let singular = str_at(crd, &["spec", "names", "singular"])
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    Ok(ResourceType {
        list_kind: str_at(crd, &["spec", "names", "listKind"])
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}List")),
        group,
        kind,
        plural,
        singular,
        namespaced,
        short_names: strings_at(crd, &["spec", "names", "shortNames"]),
        categories: strings_at(crd, &["spec", "names", "categories"]),
        versions,
        custom: true,
        review: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn version_ordering_matches_kubernetes() {
        let mut vs = vec!["v1alpha1", "v2alpha1", "v1", "v2", "v1beta1", "foo"];
        vs.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(
            vs,
            vec!["v2", "v1", "v1beta1", "v2alpha1", "v1alpha1", "foo"]
        );
    }

    #[test]
    fn crd_becomes_resource_type() {
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"], "categories": ["all"]},
                "versions": [
                    {"name": "v1alpha1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}
                ]}
        });
        let rt = resource_type_from_crd(&crd).unwrap();
        assert_eq!(rt.preferred_version(), "v1");
        assert!(!rt.namespaced);
        assert!(rt.has_status("v1"));
        assert!(!rt.has_status("v1alpha1"));
        assert_eq!(rt.list_kind, "WidgetList");
        assert_eq!(rt.versions[0].columns[0].name, "Age");
        let reg = Registry::builtin().with_custom(rt);
        assert!(reg.lookup("example.com", "v1alpha1", "widgets").is_some());
        assert!(
            reg.groups()
                .iter()
                .any(|(g, vs)| g == "example.com" && vs[0] == "v1")
        );
    }

    #[test]
    fn crd_name_must_match() {
        let crd = json!({"metadata": {"name": "x"}, "spec": {"group": "example.com", "scope": "Cluster",
            "names": {"plural": "widgets", "kind": "Widget"}, "versions": [{"name": "v1", "served": true, "storage": true}]}});
        let errs = resource_type_from_crd(&crd).unwrap_err();
        assert_eq!(errs[0].field, "metadata.name");
    }
}
