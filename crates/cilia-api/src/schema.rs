//! Hand-written OpenAPI fragments for string formats the API server should check itself.
//!
//! The patterns are deliberately a little looser than the Rust-side parsers (IPv6 in
//! particular): the API server rejects obvious garbage with the field named, and `validate()`
//! does the exact check.

use schemars::{Schema, SchemaGenerator, json_schema};

const V4_OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";
const V6_LOOSE: &str = "[0-9a-fA-F]{0,4}(:[0-9a-fA-F]{0,4}){1,7}(:[0-9]{1,3}(\\.[0-9]{1,3}){3})?";

fn v4() -> String {
    format!("{V4_OCTET}(\\.{V4_OCTET}){{3}}")
}

/// An IPv4 or IPv6 address.
pub fn ip_pattern() -> String {
    format!("^({}|{V6_LOOSE})$", v4())
}

/// An IPv4 or IPv6 prefix, `addr/len`.
pub fn cidr_pattern() -> String {
    format!(
        "^({}/(3[0-2]|[12]?[0-9])|{V6_LOOSE}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$",
        v4()
    )
}

/// An address, or a prefix (Cilium's `CIDR` type in policies accepts both).
pub fn ip_or_cidr_pattern() -> String {
    format!(
        "^({}(/(3[0-2]|[12]?[0-9]))?|{V6_LOOSE}(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$",
        v4()
    )
}

/// Port number or IANA port name, as in Cilium's `PortProtocol.port`.
pub const PORT_PATTERN: &str = "^(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})|([a-zA-Z0-9]-?)*[a-zA-Z](-?[a-zA-Z0-9])*$";

/// Label values: empty, or ≤ 63 characters of `[A-Za-z0-9_.-]` starting and ending alphanumeric.
pub const LABEL_VALUE_PATTERN: &str = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

pub fn cidr(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "format": "cidr",
        "pattern": cidr_pattern(),
    })
}

pub fn ip(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": ip_pattern(),
    })
}

pub fn ip_or_cidr_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string", "pattern": ip_or_cidr_pattern() },
    })
}

pub fn ip_or_cidr(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": ip_or_cidr_pattern(),
    })
}

/// `matchLabels`: string → string, values restricted like Kubernetes label values.
pub fn label_map(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": LABEL_VALUE_PATTERN,
        },
    })
}

/// A field Cilia keeps verbatim but does not interpret: any JSON object.
pub fn preserved_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A list Cilia keeps verbatim but does not interpret: a list of arbitrary objects.
pub fn preserved_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
    })
}

/// A list of strings Cilia keeps verbatim.
pub fn string_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": { "type": "string" },
    })
}

/// `metav1.Condition` list, merged by `type` (server-side apply friendly).
pub fn condition_list(generator: &mut SchemaGenerator) -> Schema {
    let item =
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
    })
}
