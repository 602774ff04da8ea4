//! API errors and their wire form: `meta.k8s.io/v1` `Status` objects shaped like kube-apiserver's.

use serde_json::{Value, json};

/// One `details.causes[]` entry of an `Invalid` Status (a `field.Error` in Kubernetes terms).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// `spec.blocks[0].cidr`; empty for the object itself (rendered `<nil>` like the real server).
    pub field: String,
    pub kind: FieldErrorKind,
}

/// The kinds of field errors we produce, with their `reason` strings and message bodies.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldErrorKind {
    /// `Invalid value: <value>: <detail>`
    Invalid { value: Value, detail: String },
    /// `Required value`
    Required,
    /// `Unsupported value: <value>: supported values: "a", "b"`
    NotSupported { value: Value, supported: Vec<Value> },
    /// `Too many: <n>: must have at most <max> items`
    TooMany { actual: usize, max: usize },
    /// `field not declared in schema`
    Unknown,
    /// `Forbidden: <detail>`
    Forbidden { detail: String },
}

impl FieldError {
    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Invalid {
                value,
                detail: detail.into(),
            },
        }
    }

    pub fn required(field: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required,
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            kind: FieldErrorKind::Forbidden {
                detail: detail.into(),
            },
        }
    }

    pub fn reason(&self) -> &'static str {
        match self.kind {
            FieldErrorKind::Invalid { .. } => "FieldValueInvalid",
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
            FieldErrorKind::TooMany { .. } => "FieldValueTooMany",
            FieldErrorKind::Unknown => "FieldValueInvalid",
            FieldErrorKind::Forbidden { .. } => "FieldValueForbidden",
        }
    }

    /// The message without the field, as in `details.causes[].message`.
    pub fn body(&self) -> String {
        match &self.kind {
            FieldErrorKind::Invalid { value, detail } => {
                let mut s = format!("Invalid value: {}", render_value(value));
                if !detail.is_empty() {
                    s.push_str(": ");
                    s.push_str(detail);
                }
                s
            }
            FieldErrorKind::Required => "Required value".to_string(),
            FieldErrorKind::NotSupported { value, supported } => {
                let list: Vec<String> = supported.iter().map(render_value).collect();
                format!(
                    "Unsupported value: {}: supported values: {}",
                    render_value(value),
                    list.join(", ")
                )
            }
            FieldErrorKind::TooMany { actual, max } => {
                format!("Too many: {actual}: must have at most {max} items")
            }
            FieldErrorKind::Unknown => "field not declared in schema".to_string(),
            FieldErrorKind::Forbidden { detail } => format!("Forbidden: {detail}"),
        }
    }

    pub fn field_display(&self) -> &str {
        if self.field.is_empty() {
            "<nil>"
        } else {
            &self.field
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field_display(), self.body())
    }
}

/// Renders a value the way `field.Invalid` does: strings quoted, numbers bare, composites by type.
pub fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(_) => "array".to_string(),
        Value::Object(_) => "\"object\"".to_string(),
    }
}

/// An error answered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Identifies a resource in error messages: `configmaps` or `ciliumloadbalancerippools.cilium.io`.
#[derive(Debug, Clone, Copy)]
pub struct Qualified<'a> {
    pub group: &'a str,
    pub resource: &'a str,
}

impl std::fmt::Display for Qualified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            f.write_str(self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn not_found(q: Qualified<'_>, name: &str) -> Self {
        let mut e = Self::new(404, "NotFound", format!("{q} \"{name}\" not found"));
        e.details = Some(json!({"name": name, "group": q.group, "kind": q.resource}));
        e
    }

    pub fn already_exists(q: Qualified<'_>, name: &str) -> Self {
        let mut e = Self::new(
            409,
            "AlreadyExists",
            format!("{q} \"{name}\" already exists"),
        );
        e.details = Some(json!({"name": name, "group": q.group, "kind": q.resource}));
        e
    }

    /// The optimistic-concurrency failure of an update with a stale `resourceVersion`.
    pub fn conflict(q: Qualified<'_>, name: &str, why: &str) -> Self {
        let mut e = Self::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {q} \"{name}\": {why}"),
        );
        e.details = Some(json!({"name": name, "group": q.group, "kind": q.resource}));
        e
    }

    /// A server-side apply conflict with other field managers.
    pub fn apply_conflict(q: Qualified<'_>, name: &str, conflicts: &[(String, String)]) -> Self {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(manager, field)| format!("conflict with \"{manager}\": {field}"))
            .collect();
        let message = if lines.len() == 1 {
            format!("Apply failed with 1 conflict: {}", lines[0])
        } else {
            format!(
                "Apply failed with {} conflicts: {}",
                lines.len(),
                lines.join("\n")
            )
        };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, field)| {
                json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{manager}\""), "field": field})
            })
            .collect();
        let mut e = Self::new(409, "Conflict", message);
        e.details =
            Some(json!({"name": name, "group": q.group, "kind": q.resource, "causes": causes}));
        e
    }

    /// `422 Invalid`, with the message the real server builds from its field errors.
    pub fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Self {
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let rendered: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let list = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let message = format!("{qualified_kind} \"{name}\" is invalid: {list}");
        let causes: Vec<Value> = errors
            .iter()
            .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
            .collect();
        let mut err = Self::new(422, "Invalid", message);
        err.details = Some(json!({"name": name, "group": group, "kind": kind, "causes": causes}));
        err
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self::new(406, "NotAcceptable", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"
            ),
        )
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// The `Status` object for the body of the response or of a watch `ERROR` event.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The message of an invalid custom object matches kube-apiserver's wording byte for byte.
    #[test]
    fn invalid_message_shape() {
        let e = ApiError::invalid(
            "CiliumLoadBalancerIPPool",
            "cilium.io",
            "x",
            &[FieldError::invalid(
                "spec.blocks[0].cidr",
                json!("300.1.1.0/24"),
                "spec.blocks[0].cidr in body must be of type cidr: \"300.1.1.0/24\"",
            )],
        );
        assert_eq!(
            e.message,
            "CiliumLoadBalancerIPPool.cilium.io \"x\" is invalid: spec.blocks[0].cidr: Invalid value: \"300.1.1.0/24\": spec.blocks[0].cidr in body must be of type cidr: \"300.1.1.0/24\""
        );
        let status = e.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(
            status["details"]["causes"][0]["field"],
            "spec.blocks[0].cidr"
        );
    }

    #[test]
    fn several_errors_are_bracketed() {
        let e = ApiError::invalid(
            "Pod",
            "",
            "p",
            &[
                FieldError::required("spec.a"),
                FieldError::required("spec.b"),
            ],
        );
        assert_eq!(
            e.message,
            "Pod \"p\" is invalid: [spec.a: Required value, spec.b: Required value]"
        );
    }
}
