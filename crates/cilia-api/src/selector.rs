//! Label selectors as Cilium's CRDs spell them (`matchLabels` / `matchExpressions`).
//!
//! Kept as our own type rather than `metav1.LabelSelector` so the schema carries the operator enum
//! and label value patterns, and so validation errors name the field path.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label sources Cilium allows as a key prefix in endpoint selectors (`k8s:app`, `any:app`).
const KEY_SOURCES: &[&str] = &[
    "any",
    "k8s",
    "reserved",
    "container",
    "unspec",
    "cidr",
    "fqdn",
    "cilium-generated",
];

/// A label query. An empty selector (`{}`) selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Label key → value; all must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::label_map")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Set-based requirements; all must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One set-based requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key the requirement applies to.
    pub key: String,
    /// How `key` relates to `values`.
    pub operator: SelectorOperator,
    /// Values for `In` / `NotIn`; must be empty for `Exists` / `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// Operators of a set-based requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// A selector that can never be evaluated as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{path}: invalid label key {key:?}: {reason}")]
    InvalidKey {
        path: String,
        key: String,
        reason: &'static str,
    },
    #[error("{path}: invalid label value {value:?}: {reason}")]
    InvalidValue {
        path: String,
        value: String,
        reason: &'static str,
    },
    #[error("{path}: for 'In', 'NotIn' operators, values set can't be empty (got {values:?})")]
    EmptyValues { path: String, values: Vec<String> },
    #[error(
        "{path}: values set must be empty for 'Exists' and 'DoesNotExist' operators (got {values:?})"
    )]
    UnexpectedValues { path: String, values: Vec<String> },
}

impl LabelSelector {
    /// A selector requiring exactly these labels.
    pub fn from_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            match_labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: None,
        }
    }

    /// True when the selector has no requirement at all, i.e. it selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
            && self.match_expressions.as_ref().is_none_or(Vec::is_empty)
    }

    /// Checks keys, values and operator/values consistency; `path` prefixes error paths.
    pub fn validate(&self, path: &str) -> Result<(), SelectorError> {
        for (key, value) in self.match_labels.iter().flatten() {
            let key_path = format!("{path}.matchLabels");
            validate_key(&key_path, key)?;
            validate_value(&format!("{key_path}[{key}]"), value)?;
        }
        for (i, req) in self.match_expressions.iter().flatten().enumerate() {
            let req_path = format!("{path}.matchExpressions[{i}]");
            validate_key(&format!("{req_path}.key"), &req.key)?;
            let values = req.values.clone().unwrap_or_default();
            match req.operator {
                SelectorOperator::In | SelectorOperator::NotIn if values.is_empty() => {
                    return Err(SelectorError::EmptyValues {
                        path: format!("{req_path}.values"),
                        values,
                    });
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist if !values.is_empty() => {
                    return Err(SelectorError::UnexpectedValues {
                        path: format!("{req_path}.values"),
                        values,
                    });
                }
                _ => {}
            }
            for (j, value) in values.iter().enumerate() {
                validate_value(&format!("{req_path}.values[{j}]"), value)?;
            }
        }
        Ok(())
    }

    /// Whether `labels` satisfy the selector (Kubernetes semantics). A Cilium source prefix on a
    /// selector key (`k8s:app`, `any:app`) is ignored: the plain labels of Kubernetes objects
    /// all come from the `k8s` source.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let lookup = |key: &str| labels.get(strip_source(key));
        let labels_ok = self
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| lookup(k) == Some(v));
        let expressions_ok = self.match_expressions.iter().flatten().all(|req| {
            let present = lookup(&req.key);
            let values = req.values.as_deref().unwrap_or_default();
            match req.operator {
                SelectorOperator::In => present.is_some_and(|v| values.contains(v)),
                SelectorOperator::NotIn => present.is_none_or(|v| !values.contains(v)),
                SelectorOperator::Exists => present.is_some(),
                SelectorOperator::DoesNotExist => present.is_none(),
            }
        });
        labels_ok && expressions_ok
    }
}

fn strip_source(key: &str) -> &str {
    match key.split_once(':') {
        Some((source, rest)) if KEY_SOURCES.contains(&source) => rest,
        _ => key,
    }
}

fn is_name_segment(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !part.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn validate_key(path: &str, key: &str) -> Result<(), SelectorError> {
    let err = |reason| SelectorError::InvalidKey {
        path: path.to_string(),
        key: key.to_string(),
        reason,
    };
    let name = strip_source(key);
    let (prefix, name) = match name.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, name),
    };
    if let Some(prefix) = prefix
        && !is_dns_subdomain(prefix)
    {
        return Err(err(
            "prefix must be a DNS subdomain (lower case, dots, dashes)",
        ));
    }
    if !is_name_segment(name) {
        return Err(err(
            "name must be 1-63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric",
        ));
    }
    Ok(())
}

fn validate_value(path: &str, value: &str) -> Result<(), SelectorError> {
    if value.is_empty() || is_name_segment(value) {
        Ok(())
    } else {
        Err(SelectorError::InvalidValue {
            path: path.to_string(),
            value: value.to_string(),
            reason: "must be empty or 1-63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator,
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    // The seed L2 policy's selector: nodes that are not control-plane nodes.
    #[test]
    fn does_not_exist_selects_nodes_without_the_label() {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![req(
                "node-role.kubernetes.io/control-plane",
                SelectorOperator::DoesNotExist,
                &[],
            )]),
        };
        assert!(sel.matches(&labels(&[("kubernetes.io/hostname", "worker")])));
        assert!(!sel.matches(&labels(&[("node-role.kubernetes.io/control-plane", "")])));
    }

    #[test]
    fn empty_selector_selects_everything() {
        assert!(LabelSelector::default().is_empty());
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn source_prefix_is_ignored_when_matching() {
        let sel = LabelSelector::from_labels([("k8s:org", "empire")]);
        assert!(sel.matches(&labels(&[("org", "empire")])));
        assert!(!sel.matches(&labels(&[("org", "alliance")])));
    }

    #[test]
    fn in_and_not_in() {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                req("org", SelectorOperator::In, &["empire", "rebels"]),
                req("class", SelectorOperator::NotIn, &["xwing"]),
            ]),
        };
        assert!(sel.matches(&labels(&[("org", "empire"), ("class", "deathstar")])));
        assert!(!sel.matches(&labels(&[("org", "empire"), ("class", "xwing")])));
        assert!(!sel.matches(&labels(&[("class", "deathstar")])));
    }

    #[test]
    fn in_without_values_is_rejected_with_path() {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![req("org", SelectorOperator::In, &[])]),
        };
        let err = sel.validate("spec.serviceSelector").unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.serviceSelector.matchExpressions[0].values: for 'In', 'NotIn' operators, values set can't be empty (got [])"
        );
    }

    #[test]
    fn bad_label_value_is_rejected_with_path_and_value() {
        let sel = LabelSelector::from_labels([("app", "-bad")]);
        let err = sel.validate("spec.nodeSelector").unwrap_err().to_string();
        assert!(err.contains("spec.nodeSelector.matchLabels[app]"), "{err}");
        assert!(err.contains("\"-bad\""), "{err}");
    }
}
