//! Label selectors as Cilium's CRDs spell them (`matchLabels` / `matchExpressions`).
//!
//! Kept as our own type rather than `metav1.LabelSelector` so the schema carries the operator enum
//! and label value patterns, and so an unknown operator fails to parse with its field path. The
//! rules themselves live in [`cilia_model::selector`]: [`LabelSelector`] converts into
//! [`model::LabelSelector`] and delegates validation and matching to it, reading keys with
//! [`KEY_SYNTAX`].

use std::collections::BTreeMap;

use cilia_model::selector::{self as model, KeySyntax};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A selector problem at the selector's field path in the object
/// (`spec.serviceSelector.matchExpressions[0].values: ...`).
pub use cilia_model::selector::SelectorPathError as SelectorError;

/// How the CRD selectors read keys: a Cilium label source prefix (`k8s:app`, `any:app`) is
/// accepted and ignored, since the plain labels of Kubernetes objects all come from the `k8s`
/// source.
pub const KEY_SYNTAX: KeySyntax = KeySyntax::CiliumSource;

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

    /// The selector in the model's terms, where its rules live.
    pub fn to_model(&self) -> model::LabelSelector {
        self.into()
    }

    /// True when the selector has no requirement at all, i.e. it selects everything.
    pub fn is_empty(&self) -> bool {
        self.to_model().is_empty()
    }

    /// Checks keys, values and operator/values consistency (see
    /// [`model::LabelSelector::validate_with`]); errors name the offending field below `path`.
    pub fn validate(&self, path: &str) -> Result<(), SelectorError> {
        self.to_model()
            .validate_with(KEY_SYNTAX)
            .map_err(|e| e.at(path))
    }

    /// Like [`Self::validate`] with plain Kubernetes keys only, as Cilium reads pool and L2
    /// announcement selectors (`LabelSelectorAsSelector`): `k8s:app` is refused there.
    pub fn validate_kubernetes(&self, path: &str) -> Result<(), SelectorError> {
        self.to_model()
            .validate_with(model::KeySyntax::Kubernetes)
            .map_err(|e| e.at(path))
    }

    /// Whether `labels` satisfy the selector (Kubernetes semantics, see
    /// [`model::LabelSelector::matches_with`]). A Cilium source prefix on a selector key
    /// (`k8s:app`, `any:app`) is ignored.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.to_model().matches_with(labels, KEY_SYNTAX)
    }
}

impl From<SelectorOperator> for model::LabelSelectorOperator {
    fn from(op: SelectorOperator) -> Self {
        match op {
            SelectorOperator::In => Self::In,
            SelectorOperator::NotIn => Self::NotIn,
            SelectorOperator::Exists => Self::Exists,
            SelectorOperator::DoesNotExist => Self::DoesNotExist,
        }
    }
}

impl From<&LabelSelectorRequirement> for model::LabelSelectorRequirement {
    fn from(req: &LabelSelectorRequirement) -> Self {
        req.clone().into()
    }
}

impl From<LabelSelectorRequirement> for model::LabelSelectorRequirement {
    fn from(req: LabelSelectorRequirement) -> Self {
        Self {
            key: req.key,
            operator: req.operator.into(),
            values: req.values,
        }
    }
}

impl From<&LabelSelector> for model::LabelSelector {
    fn from(sel: &LabelSelector) -> Self {
        Self {
            match_labels: sel.match_labels.clone(),
            match_expressions: sel
                .match_expressions
                .as_ref()
                .map(|reqs| reqs.iter().map(Into::into).collect()),
        }
    }
}

impl From<LabelSelector> for model::LabelSelector {
    fn from(sel: LabelSelector) -> Self {
        Self {
            match_labels: sel.match_labels,
            match_expressions: sel
                .match_expressions
                .map(|reqs| reqs.into_iter().map(Into::into).collect()),
        }
    }
}

/// The CRD spelling of a model selector; fails on an operator the CRD schema does not allow
/// ([`model::SelectorError::UnknownOperator`]).
impl TryFrom<model::LabelSelector> for LabelSelector {
    type Error = model::SelectorError;

    fn try_from(sel: model::LabelSelector) -> Result<Self, Self::Error> {
        let match_expressions = sel
            .match_expressions
            .map(|reqs| {
                reqs.into_iter()
                    .enumerate()
                    .map(|(index, req)| {
                        let operator = match req.operator {
                            model::LabelSelectorOperator::In => SelectorOperator::In,
                            model::LabelSelectorOperator::NotIn => SelectorOperator::NotIn,
                            model::LabelSelectorOperator::Exists => SelectorOperator::Exists,
                            model::LabelSelectorOperator::DoesNotExist => {
                                SelectorOperator::DoesNotExist
                            }
                            model::LabelSelectorOperator::Unknown(operator) => {
                                return Err(model::SelectorError::UnknownOperator {
                                    index,
                                    operator,
                                });
                            }
                        };
                        Ok(LabelSelectorRequirement {
                            key: req.key,
                            operator,
                            values: req.values,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            match_labels: sel.match_labels,
            match_expressions,
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
        assert_eq!(sel.validate("spec.endpointSelector"), Ok(()));
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

    // Every operator converts to the model's, and back.
    #[test]
    fn converts_to_and_from_the_model() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                req("a", SelectorOperator::In, &["x"]),
                req("b", SelectorOperator::NotIn, &["y"]),
                req("c", SelectorOperator::Exists, &[]),
                req("d", SelectorOperator::DoesNotExist, &[]),
            ]),
        };
        let m = model::LabelSelector::from(&sel);
        let ops: Vec<&str> = m
            .match_expressions
            .iter()
            .flatten()
            .map(|r| r.operator.as_str())
            .collect();
        assert_eq!(ops, ["In", "NotIn", "Exists", "DoesNotExist"]);
        assert_eq!(m.match_labels, sel.match_labels);
        assert_eq!(m, model::LabelSelector::from(sel.clone()));
        // Same JSON on both sides.
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::to_value(&sel).unwrap()
        );
        assert_eq!(LabelSelector::try_from(m), Ok(sel));

        let odd = model::LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                req("a", SelectorOperator::Exists, &[]).into(),
                model::LabelSelectorRequirement {
                    key: "b".into(),
                    operator: "Gt".into(),
                    values: Some(vec!["1".into()]),
                },
            ]),
        };
        let err = LabelSelector::try_from(odd).unwrap_err();
        assert_eq!(
            err,
            model::SelectorError::UnknownOperator {
                index: 1,
                operator: "Gt".into()
            }
        );
    }

    // The paths name the selector's place in the object, below every kind of requirement.
    #[test]
    fn errors_name_the_field_path() {
        let sel = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                req("k8s:tier", SelectorOperator::Exists, &[]),
                req("a", SelectorOperator::Exists, &["x"]),
            ]),
        };
        assert_eq!(
            sel.validate("specs[1].ingress[0].fromEndpoints[2]")
                .unwrap_err()
                .to_string(),
            r#"specs[1].ingress[0].fromEndpoints[2].matchExpressions[1].values: values set must be empty for 'Exists' and 'DoesNotExist' operators (got ["x"])"#
        );
        let err = LabelSelector::from_labels([("bad key", "v")])
            .validate("spec.nodeSelector")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("spec.nodeSelector.matchLabels: invalid label key \"bad key\": "),
            "{err}"
        );
    }
}
