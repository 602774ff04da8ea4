//! `CiliumClusterwideNetworkPolicy` (v2): the L3/L4 rule language Cilia enforces.
//!
//! Every other field of Cilium's rule language (L7 `rules`, `toFQDNs`, `toServices`, groups,
//! authentication, TLS, …) is accepted and kept verbatim — the API server stores it because the
//! schema declares it — and [`CiliumClusterwideNetworkPolicy::validate`] reports it as
//! [`PolicyError::Unsupported`]. Nothing is dropped silently: fields unknown even to Cilium are
//! kept on the Rust side too (`unknown`) and reported as [`PolicyError::UnknownField`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube_core::crd::v1::CustomResourceExt;
use kube_core::discovery::ApiResource;
use kube_core::object::HasStatus;
use kube_core::{ClusterResourceScope, Resource};
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Violations;
use crate::selector::{LabelSelector, SelectorError};

/// Fields unknown to this crate, kept so that a round trip loses nothing.
pub type UnknownFields = BTreeMap<String, Value>;

/// Schema carrier of the CRD's top level (`spec`, `specs`, `status`); kube-derive generates
/// the CRD from it. Objects are read and written as [`CiliumClusterwideNetworkPolicy`], whose
/// hand-written serde keeps field paths in errors (a derived `no_spec` root would lose them).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "cilium.io",
    version = "v2",
    kind = "CiliumClusterwideNetworkPolicy",
    root = "CiliumClusterwideNetworkPolicyCrd",
    plural = "ciliumclusterwidenetworkpolicies",
    singular = "ciliumclusterwidenetworkpolicy",
    shortname = "ccnp",
    category = "cilium",
    category = "ciliumpolicy",
    status = "PolicyStatus",
    no_spec,
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Valid')].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A cluster-wide network policy: one rule in spec, more in specs (at least one of them).",
    crates(kube_core = "::kube_core")
)]
pub struct CiliumClusterwideNetworkPolicyRules {
    /// A single rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    /// A list of rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Rule>>,
}

/// A `CiliumClusterwideNetworkPolicy` object: one rule in `spec`, more in `specs`, or both.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CiliumClusterwideNetworkPolicy {
    pub metadata: ObjectMeta,
    pub spec: Option<Rule>,
    pub specs: Option<Vec<Rule>>,
    pub status: Option<PolicyStatus>,
}

impl CiliumClusterwideNetworkPolicy {
    /// A policy named `name` with one rule.
    pub fn new(name: &str, rule: Rule) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(rule),
            ..Default::default()
        }
    }

    /// Every rule with its path (`spec`, `specs[1]`).
    pub fn rules(&self) -> impl Iterator<Item = (String, &Rule)> {
        self.spec.iter().map(|r| ("spec".to_string(), r)).chain(
            self.specs
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, r)| (format!("specs[{i}]"), r)),
        )
    }

    /// Every problem in every rule. The operator reports the result in the `Valid` condition.
    pub fn validate(&self) -> Result<(), Violations<PolicyError>> {
        let mut errors = Vec::new();
        if self.rules().next().is_none() {
            errors.push(PolicyError::Empty);
        }
        for (path, rule) in self.rules() {
            rule.check(&path, &mut errors);
        }
        Violations(errors).into_result()
    }
}

impl Resource for CiliumClusterwideNetworkPolicy {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        CiliumClusterwideNetworkPolicyCrd::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        CiliumClusterwideNetworkPolicyCrd::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        CiliumClusterwideNetworkPolicyCrd::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        CiliumClusterwideNetworkPolicyCrd::plural(&())
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HasStatus for CiliumClusterwideNetworkPolicy {
    type Status = PolicyStatus;
    fn status(&self) -> Option<&PolicyStatus> {
        self.status.as_ref()
    }
    fn status_mut(&mut self) -> &mut Option<PolicyStatus> {
        &mut self.status
    }
}

impl CustomResourceExt for CiliumClusterwideNetworkPolicy {
    fn crd() -> CustomResourceDefinition {
        CiliumClusterwideNetworkPolicyCrd::crd()
    }
    fn crd_name() -> &'static str {
        CiliumClusterwideNetworkPolicyCrd::crd_name()
    }
    fn api_resource() -> ApiResource {
        CiliumClusterwideNetworkPolicyCrd::api_resource()
    }
    fn shortnames() -> &'static [&'static str] {
        CiliumClusterwideNetworkPolicyCrd::shortnames()
    }
}

impl Serialize for CiliumClusterwideNetworkPolicy {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut obj = ser.serialize_struct("CiliumClusterwideNetworkPolicy", 6)?;
        obj.serialize_field("apiVersion", &Self::api_version(&()))?;
        obj.serialize_field("kind", &Self::kind(&()))?;
        obj.serialize_field("metadata", &self.metadata)?;
        if let Some(spec) = &self.spec {
            obj.serialize_field("spec", spec)?;
        }
        if let Some(specs) = &self.specs {
            obj.serialize_field("specs", specs)?;
        }
        if let Some(status) = &self.status {
            obj.serialize_field("status", status)?;
        }
        obj.end()
    }
}

impl<'de> Deserialize<'de> for CiliumClusterwideNetworkPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = CiliumClusterwideNetworkPolicy;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a CiliumClusterwideNetworkPolicy object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = CiliumClusterwideNetworkPolicy::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "metadata" => out.metadata = map.next_value()?,
                        "spec" => out.spec = map.next_value()?,
                        "specs" => out.specs = map.next_value()?,
                        "status" => out.status = map.next_value()?,
                        // apiVersion and kind are the type itself; like kube-derive's roots,
                        // anything else at the top level is not part of the object.
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Derives `Deserialize` for a rule struct with an `unknown` map: known fields by their JSON
/// names, everything else into `unknown`. Unlike `#[serde(flatten)]`, this keeps the field path
/// of a bad value in errors (`spec.ingress[0].fromEntities[0]`).
macro_rules! deserialize_keeping_unknown {
    ($ty:ident { $($field:ident: $json:literal),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visit;
                impl<'de> serde::de::Visitor<'de> for Visit {
                    type Value = $ty;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($ty), " object"))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$ty, A::Error> {
                        let mut out = $ty::default();
                        while let Some(key) = map.next_key::<String>()? {
                            match key.as_str() {
                                $($json => out.$field = map.next_value()?,)*
                                _ => {
                                    let value: Value = map.next_value()?;
                                    out.unknown.insert(key, value);
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(Visit)
            }
        }
    };
}

/// One policy rule: a subject (endpoints or nodes) and the traffic allowed or denied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Endpoints the rule applies to; `{}` selects all. Exclusive with `nodeSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    /// Nodes the rule applies to (host policy). Exclusive with `endpointSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_deny: Option<Vec<IngressDenyRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_deny: Option<Vec<EgressDenyRule>>,
    /// Metadata labels of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<PolicyLabel>>,
    /// Free text, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Per-direction default deny; unset means "on when the rule has rules in that direction".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    /// Text attached to flows this rule decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<LogConfig>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: UnknownFields,
}

/// Allowed incoming traffic: peers AND ports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::ip_or_cidr_list")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    /// Unsupported (kept): deprecated `fromRequires`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub from_requires: Option<Value>,
    /// Unsupported (kept): cloud provider groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub from_groups: Option<Value>,
    /// Unsupported (kept): node selectors as peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub from_nodes: Option<Value>,
    /// Unsupported (kept): mutual authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_object")]
    pub authentication: Option<Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: UnknownFields,
}

/// Denied incoming traffic: peers AND ports (no L7).
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressDenyRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::ip_or_cidr_list")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub to_ports: Option<Vec<PortDenyRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub from_requires: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub from_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub from_nodes: Option<Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: UnknownFields,
}

/// Allowed outgoing traffic: peers AND ports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::ip_or_cidr_list")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_requires: Option<Value>,
    /// Unsupported (kept): Services as peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_services: Option<Value>,
    /// Unsupported (kept): DNS names as peers.
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_fqdns: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_nodes: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_object")]
    pub authentication: Option<Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: UnknownFields,
}

/// Denied outgoing traffic: peers AND ports (no L7, no FQDNs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressDenyRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::ip_or_cidr_list")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub to_ports: Option<Vec<PortDenyRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_requires: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_services: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_list")]
    pub to_nodes: Option<Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: UnknownFields,
}

/// A CIDR peer with exceptions carved out of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CidrRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::ip_or_cidr")]
    pub cidr: Option<String>,
    /// Prefixes inside `cidr` that are not part of the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::ip_or_cidr_list")]
    pub except: Option<Vec<String>>,
    /// Unsupported (kept): reference to a CiliumCIDRGroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<String>,
    /// Unsupported (kept): selector of CiliumCIDRGroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_object")]
    pub cidr_group_selector: Option<Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: UnknownFields,
}

/// Ports (and, unsupported, L7 rules) of an allow rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub ports: Option<Vec<PortProtocol>>,
    /// Unsupported (kept): L7 rules (`http`, `kafka`, `dns`, `l7proto` + `l7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_object")]
    pub rules: Option<Value>,
    #[serde(
        default,
        rename = "terminatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "crate::schema::preserved_object")]
    pub terminating_tls: Option<Value>,
    #[serde(
        default,
        rename = "originatingTLS",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "crate::schema::preserved_object")]
    pub originating_tls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::string_list")]
    pub server_names: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::preserved_object")]
    pub listener: Option<Value>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: UnknownFields,
}

/// Ports of a deny rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortDenyRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub ports: Option<Vec<PortProtocol>>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: UnknownFields,
}

deserialize_keeping_unknown!(Rule {
    endpoint_selector: "endpointSelector",
    node_selector: "nodeSelector",
    ingress: "ingress",
    ingress_deny: "ingressDeny",
    egress: "egress",
    egress_deny: "egressDeny",
    labels: "labels",
    description: "description",
    enable_default_deny: "enableDefaultDeny",
    log: "log",
});
deserialize_keeping_unknown!(IngressRule {
    from_endpoints: "fromEndpoints",
    from_entities: "fromEntities",
    from_cidr: "fromCIDR",
    from_cidr_set: "fromCIDRSet",
    to_ports: "toPorts",
    icmps: "icmps",
    from_requires: "fromRequires",
    from_groups: "fromGroups",
    from_nodes: "fromNodes",
    authentication: "authentication",
});
deserialize_keeping_unknown!(IngressDenyRule {
    from_endpoints: "fromEndpoints",
    from_entities: "fromEntities",
    from_cidr: "fromCIDR",
    from_cidr_set: "fromCIDRSet",
    to_ports: "toPorts",
    icmps: "icmps",
    from_requires: "fromRequires",
    from_groups: "fromGroups",
    from_nodes: "fromNodes",
});
deserialize_keeping_unknown!(EgressRule {
    to_endpoints: "toEndpoints",
    to_entities: "toEntities",
    to_cidr: "toCIDR",
    to_cidr_set: "toCIDRSet",
    to_ports: "toPorts",
    icmps: "icmps",
    to_requires: "toRequires",
    to_services: "toServices",
    to_fqdns: "toFQDNs",
    to_groups: "toGroups",
    to_nodes: "toNodes",
    authentication: "authentication",
});
deserialize_keeping_unknown!(EgressDenyRule {
    to_endpoints: "toEndpoints",
    to_entities: "toEntities",
    to_cidr: "toCIDR",
    to_cidr_set: "toCIDRSet",
    to_ports: "toPorts",
    icmps: "icmps",
    to_requires: "toRequires",
    to_services: "toServices",
    to_groups: "toGroups",
    to_nodes: "toNodes",
});
deserialize_keeping_unknown!(CidrRule {
    cidr: "cidr",
    except: "except",
    cidr_group_ref: "cidrGroupRef",
    cidr_group_selector: "cidrGroupSelector",
});
deserialize_keeping_unknown!(PortRule {
    ports: "ports",
    rules: "rules",
    terminating_tls: "terminatingTLS",
    originating_tls: "originatingTLS",
    server_names: "serverNames",
    listener: "listener",
});
deserialize_keeping_unknown!(PortDenyRule { ports: "ports" });

/// A port (or the range port to endPort) and its protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    /// Number 0–65535 (`"0"` = all ports) or an IANA port name.
    #[schemars(regex(pattern = crate::schema::PORT_PATTERN))]
    pub port: String,
    /// Last port of a range; ignored for named ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub end_port: Option<i32>,
    /// Unset means ANY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

/// L4 protocol of a port; unset means ANY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Any,
}

/// ICMP types a rule allows or denies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IcmpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 40))]
    pub fields: Option<Vec<IcmpField>>,
}

/// One ICMP type of a family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IcmpField {
    /// Default IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<IcmpFamily>,
    /// Type number (0–255) or name (`EchoRequest`, …).
    #[serde(rename = "type")]
    pub type_: IntOrString,
}

/// ICMP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IcmpFamily {
    IPv4,
    IPv6,
}

/// Reserved peers, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Everything, in every cluster and outside.
    All,
    /// Outside the cluster.
    World,
    #[serde(rename = "world-ipv4")]
    WorldIpv4,
    #[serde(rename = "world-ipv6")]
    WorldIpv6,
    /// The local cluster, including hosts and remote nodes.
    Cluster,
    /// The local host and its hostNetwork pods.
    Host,
    /// Every other node.
    RemoteNode,
    /// The Kubernetes API server.
    KubeApiserver,
    /// The ingress proxy identity.
    Ingress,
    /// Health-check endpoints.
    Health,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// Endpoints not managed by Cilia.
    Unmanaged,
    /// Nothing.
    None,
}

/// A metadata label of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyLabel {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `enableDefaultDeny`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

/// `log`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub value: Option<String>,
}

/// Status written by the policy validator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<PolicyCondition>>,
    /// Per derived policy status (for `toGroups`-derived policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derivative_policies: Option<BTreeMap<String, DerivativePolicyStatus>>,
}

/// A status condition of a policy (`Valid`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Status of one derived policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DerivativePolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcing: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A policy problem. [`PolicyError::Unsupported`] and [`PolicyError::UnknownField`] mark
/// content that is kept but not enforced; the rest is content that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{}", conditions::MESSAGE_EMPTY)]
    Empty,
    #[error("{path}: endpointSelector and nodeSelector are mutually exclusive, got both")]
    SelectorConflict { path: String },
    #[error("{path}: one of endpointSelector or nodeSelector is required, got neither")]
    NoSelector { path: String },
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error("{path}: invalid CIDR {value:?}: {reason}")]
    InvalidCidr {
        path: String,
        value: String,
        reason: String,
    },
    #[error("{path}: except {value:?} is not inside cidr {cidr:?}")]
    ExceptOutsideCidr {
        path: String,
        value: String,
        cidr: String,
    },
    #[error("{path}: a CIDR set entry needs cidr (or cidrGroupRef / cidrGroupSelector), got none")]
    EmptyCidrRule { path: String },
    #[error("{path}: invalid port {value:?}: {reason}")]
    InvalidPort {
        path: String,
        value: String,
        reason: &'static str,
    },
    #[error("{path}: endPort {end_port} must be in 0-65535 and not below port {port}")]
    InvalidEndPort {
        path: String,
        port: String,
        end_port: i32,
    },
    #[error("{path}: unknown ICMP type {value:?} for family {family}")]
    InvalidIcmpType {
        path: String,
        value: String,
        family: &'static str,
    },
    #[error("{path}: log value {value:?} is longer than 32 characters")]
    LogTooLong { path: String, value: String },
    #[error("{path}: {feature} is not supported by cilia; the field is kept but not enforced")]
    Unsupported { path: String, feature: &'static str },
    #[error("{path}: unknown field {value}; kept but not enforced")]
    UnknownField { path: String, value: String },
}

impl PolicyError {
    /// True for content that is kept but not enforced (as opposed to content that is wrong).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Unsupported { .. } | Self::UnknownField { .. })
    }
}

impl Rule {
    /// Every problem of this rule; `path` prefixes error paths.
    pub fn validate(&self, path: &str) -> Result<(), Violations<PolicyError>> {
        let mut errors = Vec::new();
        self.check(path, &mut errors);
        Violations(errors).into_result()
    }

    fn check(&self, path: &str, errors: &mut Vec<PolicyError>) {
        match (&self.endpoint_selector, &self.node_selector) {
            (Some(_), Some(_)) => errors.push(PolicyError::SelectorConflict { path: path.into() }),
            (None, None) => errors.push(PolicyError::NoSelector { path: path.into() }),
            _ => {}
        }
        selector(
            &self.endpoint_selector,
            &format!("{path}.endpointSelector"),
            errors,
        );
        selector(&self.node_selector, &format!("{path}.nodeSelector"), errors);
        for (i, r) in self.ingress.iter().flatten().enumerate() {
            let p = format!("{path}.ingress[{i}]");
            peers(
                &p,
                "from",
                &r.from_endpoints,
                &r.from_cidr,
                &r.from_cidr_set,
                errors,
            );
            ports(&p, &r.to_ports, errors);
            icmps(&p, &r.icmps, errors);
            unsupported(&p, "fromRequires", &r.from_requires, errors);
            unsupported(&p, "fromGroups", &r.from_groups, errors);
            unsupported(&p, "fromNodes", &r.from_nodes, errors);
            unsupported(&p, "authentication", &r.authentication, errors);
            unknown(&p, &r.unknown, errors);
        }
        for (i, r) in self.ingress_deny.iter().flatten().enumerate() {
            let p = format!("{path}.ingressDeny[{i}]");
            peers(
                &p,
                "from",
                &r.from_endpoints,
                &r.from_cidr,
                &r.from_cidr_set,
                errors,
            );
            deny_ports(&p, &r.to_ports, errors);
            icmps(&p, &r.icmps, errors);
            unsupported(&p, "fromRequires", &r.from_requires, errors);
            unsupported(&p, "fromGroups", &r.from_groups, errors);
            unsupported(&p, "fromNodes", &r.from_nodes, errors);
            unknown(&p, &r.unknown, errors);
        }
        for (i, r) in self.egress.iter().flatten().enumerate() {
            let p = format!("{path}.egress[{i}]");
            peers(
                &p,
                "to",
                &r.to_endpoints,
                &r.to_cidr,
                &r.to_cidr_set,
                errors,
            );
            ports(&p, &r.to_ports, errors);
            icmps(&p, &r.icmps, errors);
            unsupported(&p, "toRequires", &r.to_requires, errors);
            unsupported(&p, "toServices", &r.to_services, errors);
            unsupported(&p, "toFQDNs", &r.to_fqdns, errors);
            unsupported(&p, "toGroups", &r.to_groups, errors);
            unsupported(&p, "toNodes", &r.to_nodes, errors);
            unsupported(&p, "authentication", &r.authentication, errors);
            unknown(&p, &r.unknown, errors);
        }
        for (i, r) in self.egress_deny.iter().flatten().enumerate() {
            let p = format!("{path}.egressDeny[{i}]");
            peers(
                &p,
                "to",
                &r.to_endpoints,
                &r.to_cidr,
                &r.to_cidr_set,
                errors,
            );
            deny_ports(&p, &r.to_ports, errors);
            icmps(&p, &r.icmps, errors);
            unsupported(&p, "toRequires", &r.to_requires, errors);
            unsupported(&p, "toServices", &r.to_services, errors);
            unsupported(&p, "toGroups", &r.to_groups, errors);
            unsupported(&p, "toNodes", &r.to_nodes, errors);
            unknown(&p, &r.unknown, errors);
        }
        if let Some(value) = self.log.as_ref().and_then(|l| l.value.as_ref())
            && value.chars().count() > 32
        {
            errors.push(PolicyError::LogTooLong {
                path: format!("{path}.log.value"),
                value: value.clone(),
            });
        }
        unknown(path, &self.unknown, errors);
    }

    /// Whether default deny is on for ingress: explicit setting, else "has ingress rules".
    pub fn default_deny_ingress(&self) -> bool {
        self.enable_default_deny
            .as_ref()
            .and_then(|d| d.ingress)
            .unwrap_or(self.ingress.is_some() || self.ingress_deny.is_some())
    }

    /// Whether default deny is on for egress: explicit setting, else "has egress rules".
    pub fn default_deny_egress(&self) -> bool {
        self.enable_default_deny
            .as_ref()
            .and_then(|d| d.egress)
            .unwrap_or(self.egress.is_some() || self.egress_deny.is_some())
    }
}

fn selector(sel: &Option<LabelSelector>, path: &str, errors: &mut Vec<PolicyError>) {
    if let Some(sel) = sel
        && let Err(e) = sel.validate(path)
    {
        errors.push(e.into());
    }
}

fn unsupported(
    path: &str,
    field: &'static str,
    value: &Option<Value>,
    errors: &mut Vec<PolicyError>,
) {
    if value.is_some() {
        errors.push(PolicyError::Unsupported {
            path: format!("{path}.{field}"),
            feature: field,
        });
    }
}

fn unknown(path: &str, fields: &UnknownFields, errors: &mut Vec<PolicyError>) {
    for (name, value) in fields {
        errors.push(PolicyError::UnknownField {
            path: format!("{path}.{name}"),
            value: value.to_string(),
        });
    }
}

fn peers(
    path: &str,
    dir: &str,
    endpoints: &Option<Vec<LabelSelector>>,
    cidrs: &Option<Vec<String>>,
    cidr_sets: &Option<Vec<CidrRule>>,
    errors: &mut Vec<PolicyError>,
) {
    for (i, sel) in endpoints.iter().flatten().enumerate() {
        selector(
            &Some(sel.clone()),
            &format!("{path}.{dir}Endpoints[{i}]"),
            errors,
        );
    }
    for (i, cidr) in cidrs.iter().flatten().enumerate() {
        if let Err(e) = parse_ip_or_cidr(&format!("{path}.{dir}CIDR[{i}]"), cidr) {
            errors.push(e);
        }
    }
    for (i, rule) in cidr_sets.iter().flatten().enumerate() {
        let p = format!("{path}.{dir}CIDRSet[{i}]");
        match &rule.cidr {
            Some(cidr) => match parse_ip_or_cidr(&format!("{p}.cidr"), cidr) {
                Ok(net) => {
                    for (j, except) in rule.except.iter().flatten().enumerate() {
                        let ep = format!("{p}.except[{j}]");
                        match parse_ip_or_cidr(&ep, except) {
                            Ok(ex) if net.contains(&ex) => {}
                            Ok(_) => errors.push(PolicyError::ExceptOutsideCidr {
                                path: ep,
                                value: except.clone(),
                                cidr: cidr.clone(),
                            }),
                            Err(e) => errors.push(e),
                        }
                    }
                }
                Err(e) => errors.push(e),
            },
            None if rule.cidr_group_ref.is_none() && rule.cidr_group_selector.is_none() => {
                errors.push(PolicyError::EmptyCidrRule { path: p.clone() });
            }
            None => {}
        }
        if rule.cidr_group_ref.is_some() {
            errors.push(PolicyError::Unsupported {
                path: format!("{p}.cidrGroupRef"),
                feature: "cidrGroupRef",
            });
        }
        unsupported(&p, "cidrGroupSelector", &rule.cidr_group_selector, errors);
        unknown(&p, &rule.unknown, errors);
    }
}

/// A policy CIDR: an address (host prefix) or a prefix; host bits are masked like Cilium does.
pub fn parse_ip_or_cidr(path: &str, value: &str) -> Result<IpNet, PolicyError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    value
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .map_err(|e| PolicyError::InvalidCidr {
            path: path.to_string(),
            value: value.to_string(),
            reason: e.to_string(),
        })
}

fn ports(path: &str, rules: &Option<Vec<PortRule>>, errors: &mut Vec<PolicyError>) {
    for (i, rule) in rules.iter().flatten().enumerate() {
        let p = format!("{path}.toPorts[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            if let Err(e) = port.check(&format!("{p}.ports[{j}]")) {
                errors.push(e);
            }
        }
        if rule.rules.is_some() {
            errors.push(PolicyError::Unsupported {
                path: format!("{p}.rules"),
                feature: "L7 rules",
            });
        }
        unsupported(&p, "terminatingTLS", &rule.terminating_tls, errors);
        unsupported(&p, "originatingTLS", &rule.originating_tls, errors);
        unsupported(&p, "listener", &rule.listener, errors);
        if rule.server_names.is_some() {
            errors.push(PolicyError::Unsupported {
                path: format!("{p}.serverNames"),
                feature: "serverNames",
            });
        }
        unknown(&p, &rule.unknown, errors);
    }
}

fn deny_ports(path: &str, rules: &Option<Vec<PortDenyRule>>, errors: &mut Vec<PolicyError>) {
    for (i, rule) in rules.iter().flatten().enumerate() {
        let p = format!("{path}.toPorts[{i}]");
        for (j, port) in rule.ports.iter().flatten().enumerate() {
            if let Err(e) = port.check(&format!("{p}.ports[{j}]")) {
                errors.push(e);
            }
        }
        for name in rule.unknown.keys() {
            if name == "rules" {
                errors.push(PolicyError::Unsupported {
                    path: format!("{p}.rules"),
                    feature: "L7 rules in a deny rule (Cilium rejects them too)",
                });
            }
        }
        let rest: UnknownFields = rule
            .unknown
            .iter()
            .filter(|(k, _)| k.as_str() != "rules")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        unknown(&p, &rest, errors);
    }
}

impl PortProtocol {
    /// The port as a number, `None` for a named port.
    pub fn port_number(&self) -> Option<u16> {
        self.port.parse().ok()
    }

    /// The protocol, `Any` when unset.
    pub fn protocol(&self) -> Protocol {
        self.protocol.unwrap_or(Protocol::Any)
    }

    /// The inclusive numeric range, `None` for a named port; `0` means every port.
    pub fn port_range(&self) -> Option<(u16, u16)> {
        let start = self.port_number()?;
        let end = match self.end_port {
            Some(end) if end > 0 && start > 0 => u16::try_from(end).ok()?.max(start),
            _ => start,
        };
        Some((start, end))
    }

    fn check(&self, path: &str) -> Result<(), PolicyError> {
        let port_path = format!("{path}.port");
        let invalid = |reason| PolicyError::InvalidPort {
            path: port_path.clone(),
            value: self.port.clone(),
            reason,
        };
        let numeric = !self.port.is_empty() && self.port.bytes().all(|b| b.is_ascii_digit());
        if numeric {
            let start: u32 = self
                .port
                .parse()
                .map_err(|_| invalid("out of range 0-65535"))?;
            if start > 65535 {
                return Err(invalid("out of range 0-65535"));
            }
            if let Some(end) = self.end_port
                && (!(0..=65535).contains(&end) || (end != 0 && start != 0 && (end as u32) < start))
            {
                return Err(PolicyError::InvalidEndPort {
                    path: format!("{path}.endPort"),
                    port: self.port.clone(),
                    end_port: end,
                });
            }
        } else if !is_port_name(&self.port) {
            return Err(invalid(
                "must be a number 0-65535 or an IANA name (letters, digits, single dashes)",
            ));
        }
        Ok(())
    }
}

fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes().any(|b| b.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn icmps(path: &str, rules: &Option<Vec<IcmpRule>>, errors: &mut Vec<PolicyError>) {
    for (i, rule) in rules.iter().flatten().enumerate() {
        for (j, field) in rule.fields.iter().flatten().enumerate() {
            if let Err(e) = field.type_number(&format!("{path}.icmps[{i}].fields[{j}].type")) {
                errors.push(e);
            }
        }
    }
}

const ICMPV4_TYPES: &[(&str, u8)] = &[
    ("EchoReply", 0),
    ("DestinationUnreachable", 3),
    ("Redirect", 5),
    ("Echo", 8),
    ("EchoRequest", 8),
    ("RouterAdvertisement", 9),
    ("RouterSelection", 10),
    ("TimeExceeded", 11),
    ("ParameterProblem", 12),
    ("Timestamp", 13),
    ("TimestampReply", 14),
    ("Photuris", 40),
    ("ExtendedEchoRequest", 42),
    ("ExtendedEchoReply", 43),
];

const ICMPV6_TYPES: &[(&str, u8)] = &[
    ("DestinationUnreachable", 1),
    ("PacketTooBig", 2),
    ("TimeExceeded", 3),
    ("ParameterProblem", 4),
    ("EchoRequest", 128),
    ("EchoReply", 129),
    ("MulticastListenerQuery", 130),
    ("MulticastListenerReport", 131),
    ("MulticastListenerDone", 132),
    ("RouterSolicitation", 133),
    ("RouterAdvertisement", 134),
    ("NeighborSolicitation", 135),
    ("NeighborAdvertisement", 136),
    ("RedirectMessage", 137),
    ("RouterRenumbering", 138),
    ("ICMPNodeInformationQuery", 139),
    ("ICMPNodeInformationResponse", 140),
    ("InverseNeighborDiscoverySolicitation", 141),
    ("InverseNeighborDiscoveryAdvertisement", 142),
    ("HomeAgentAddressDiscoveryRequest", 144),
    ("HomeAgentAddressDiscoveryReply", 145),
    ("MobilePrefixSolicitation", 146),
    ("MobilePrefixAdvertisement", 147),
    ("DuplicateAddressRequestCodeSuffix", 157),
    ("DuplicateAddressConfirmationCodeSuffix", 158),
    ("ExtendedEchoRequest", 160),
    ("ExtendedEchoReply", 161),
];

impl IcmpField {
    /// The family, IPv4 when unset.
    pub fn family(&self) -> IcmpFamily {
        self.family.unwrap_or(IcmpFamily::IPv4)
    }

    /// The numeric ICMP type; `path` names the field in errors.
    pub fn type_number(&self, path: &str) -> Result<u8, PolicyError> {
        let (table, family) = match self.family() {
            IcmpFamily::IPv4 => (ICMPV4_TYPES, "IPv4"),
            IcmpFamily::IPv6 => (ICMPV6_TYPES, "IPv6"),
        };
        let err = |value: String| PolicyError::InvalidIcmpType {
            path: path.to_string(),
            value,
            family,
        };
        match &self.type_ {
            IntOrString::Int(n) => u8::try_from(*n).map_err(|_| err(n.to_string())),
            IntOrString::String(s) => match s.parse::<u8>() {
                Ok(n) => Ok(n),
                Err(_) => table
                    .iter()
                    .find(|(name, _)| name == s)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| err(s.clone())),
            },
        }
    }
}

/// The `Valid` condition and the labels every derived rule carries.
pub mod conditions {
    /// Condition type written by the policy validator.
    pub const VALID: &str = "Valid";
    /// Message of `Valid=True`.
    pub const MESSAGE_VALID: &str = "Policy validation succeeded";
    /// Message when neither `spec` nor `specs` is given (also the CRD's CEL message).
    pub const MESSAGE_EMPTY: &str = "spec or specs must be provided";
    /// CEL rule on the CRD's top level.
    pub const CEL_SPEC_OR_SPECS: &str = "has(self.spec) || has(self.specs)";

    /// Label with the policy name on every rule derived from it.
    pub const LABEL_POLICY_NAME: &str = "io.cilium.k8s.policy.name";
    pub const LABEL_POLICY_UID: &str = "io.cilium.k8s.policy.uid";
    pub const LABEL_POLICY_DERIVED_FROM: &str = "io.cilium.k8s.policy.derived-from";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(p: &str, end: Option<i32>) -> PortProtocol {
        PortProtocol {
            port: p.into(),
            end_port: end,
            protocol: None,
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(port("80", None).port_range(), Some((80, 80)));
        assert_eq!(port("8000", Some(8080)).port_range(), Some((8000, 8080)));
        assert_eq!(port("0", None).port_range(), Some((0, 0)));
        assert_eq!(port("http", Some(90)).port_range(), None);
        assert_eq!(port("80", None).protocol(), Protocol::Any);
    }

    #[test]
    fn port_checks_name_value_and_path() {
        let err = port("70000", None)
            .check("spec.ingress[0].toPorts[0].ports[0]")
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.ingress[0].toPorts[0].ports[0].port: invalid port \"70000\""),
            "{err}"
        );
        let err = port("8080", Some(80)).check("p").unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.endPort: endPort 80 must be in 0-65535 and not below port 8080"
        );
        assert!(port("dns-tcp", None).check("p").is_ok());
        assert!(port("-x", None).check("p").is_err());
    }

    #[test]
    fn icmp_names_resolve_per_family() {
        let v4 = IcmpField {
            family: None,
            type_: IntOrString::String("EchoRequest".into()),
        };
        let v6 = IcmpField {
            family: Some(IcmpFamily::IPv6),
            type_: IntOrString::String("EchoRequest".into()),
        };
        assert_eq!(v4.type_number("t").unwrap(), 8);
        assert_eq!(v6.type_number("t").unwrap(), 128);
        let bad = IcmpField {
            family: None,
            type_: IntOrString::Int(300),
        };
        assert!(
            bad.type_number("t")
                .unwrap_err()
                .to_string()
                .contains("\"300\"")
        );
    }

    // Every field of Cilium's rule language is read by name (nothing lands in `unknown`) and
    // written back unchanged.
    #[test]
    fn every_rule_field_round_trips() {
        let peers_in = serde_json::json!({
            "fromEndpoints": [{"matchLabels": {"app": "a"}}],
            "fromEntities": ["world"],
            "fromCIDR": ["192.0.2.0/24"],
            "fromCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"], "cidrGroupRef": "g", "cidrGroupSelector": {}}],
            "toPorts": [{"ports": [{"port": "80", "endPort": 90, "protocol": "TCP"}], "rules": {"http": []},
                         "terminatingTLS": {}, "originatingTLS": {}, "serverNames": ["a"], "listener": {}}],
            "icmps": [{"fields": [{"family": "IPv6", "type": "EchoRequest"}]}],
            "fromRequires": [{}], "fromGroups": [{}], "fromNodes": [{}], "authentication": {"mode": "required"},
        });
        let peers_out = serde_json::json!({
            "toEndpoints": [{}], "toEntities": ["host"], "toCIDR": ["2001:db8::/32"],
            "toCIDRSet": [{"cidr": "192.0.2.0/24"}],
            "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}],
            "icmps": [{"fields": [{"type": 8}]}],
            "toRequires": [{}], "toServices": [{}], "toFQDNs": [{}], "toGroups": [{}], "toNodes": [{}],
            "authentication": {},
        });
        let deny_in = serde_json::json!({"fromEntities": ["all"], "toPorts": [{"ports": [{"port": "22"}]}],
            "fromRequires": [{}], "fromGroups": [{}], "fromNodes": [{}], "fromCIDR": ["192.0.2.1"],
            "fromCIDRSet": [{"cidr": "192.0.2.0/24"}], "fromEndpoints": [{}], "icmps": [{}]});
        let deny_out = serde_json::json!({"toEntities": ["all"], "toPorts": [{"ports": [{"port": "22"}]}],
            "toRequires": [{}], "toServices": [{}], "toGroups": [{}], "toNodes": [{}], "toCIDR": ["192.0.2.1"],
            "toCIDRSet": [{"cidr": "192.0.2.0/24"}], "toEndpoints": [{}], "icmps": [{}]});
        let rule = serde_json::json!({
            "endpointSelector": {}, "nodeSelector": {"matchLabels": {"a": "b"}},
            "ingress": [peers_in], "egress": [peers_out], "ingressDeny": [deny_in], "egressDeny": [deny_out],
            "labels": [{"key": "k", "value": "v", "source": "user"}], "description": "d",
            "enableDefaultDeny": {"ingress": true, "egress": false}, "log": {"value": "x"},
        });
        let parsed: Rule = crate::from_json_value(rule.clone()).unwrap();
        assert_eq!(serde_json::to_value(&parsed).unwrap(), rule);
        let errs = parsed.validate("spec").unwrap_err();
        assert!(
            !errs
                .iter()
                .any(|e| matches!(e, PolicyError::UnknownField { .. })),
            "{errs}"
        );
    }

    #[test]
    fn default_deny_follows_directions_present() {
        let rule = Rule {
            ingress: Some(vec![IngressRule::default()]),
            ..Default::default()
        };
        assert!(rule.default_deny_ingress());
        assert!(!rule.default_deny_egress());
        let rule = Rule {
            ingress: Some(vec![IngressRule::default()]),
            enable_default_deny: Some(DefaultDeny {
                ingress: Some(false),
                egress: None,
            }),
            ..Default::default()
        };
        assert!(!rule.default_deny_ingress());
    }
}
