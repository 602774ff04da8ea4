//! Kubernetes label selectors (`metav1.LabelSelector`): the shape, validation with Kubernetes'
//! error texts, and matching against a label set.
//!
//! # Nil versus empty
//!
//! An *empty* selector (`{}`: no `matchLabels`, no `matchExpressions`) selects **everything**;
//! Kubernetes' `LabelSelectorAsSelector` turns it into `labels.Everything()`.
//!
//! A *nil* selector (the field is absent, `Option::None` here) means different things in different
//! APIs: `LabelSelectorAsSelector(nil)` is `labels.Nothing()`, but Cilium reads an absent
//! `serviceSelector` of a `CiliumLoadBalancerIPPool` (and an absent selector of a
//! `CiliumL2AnnouncementPolicy`) as "select every object". Callers therefore say which one they
//! mean with [`NilSelector`] and [`matches_optional`].
//!
//! # Invalid selectors
//!
//! [`LabelSelector::matches`] evaluates the requirements as written and never fails; a caller that
//! receives selectors from users runs [`LabelSelector::validate`] once and treats an invalid
//! selector the way its API documents (LB-IPAM: the pool selects no Service).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A label query, shaped like `metav1.LabelSelector` so the API's JSON deserializes into it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Key → value; every pair must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Set-based requirements; all must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

/// One set-based requirement (`metav1.LabelSelectorRequirement`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: LabelSelectorOperator,
    /// Values for `In` / `NotIn`; must be empty for `Exists` / `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// The operator of a requirement. Unknown spellings are kept (rather than failing to
/// deserialize) so validation can report them the way Kubernetes does.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LabelSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    /// Anything else, verbatim; such a selector never validates and matches nothing.
    Unknown(String),
}

impl LabelSelectorOperator {
    /// The API spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
            Self::Unknown(s) => s,
        }
    }
}

impl From<&str> for LabelSelectorOperator {
    fn from(s: &str) -> Self {
        match s {
            "In" => Self::In,
            "NotIn" => Self::NotIn,
            "Exists" => Self::Exists,
            "DoesNotExist" => Self::DoesNotExist,
            other => Self::Unknown(other.to_string()),
        }
    }
}

impl Serialize for LabelSelectorOperator {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LabelSelectorOperator {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(Self::from(s.as_str()))
    }
}

/// What an absent (nil) selector selects in the caller's API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NilSelector {
    /// Absent selector selects every object (Cilium `serviceSelector`, L2 policy selectors).
    MatchesAll,
    /// Absent selector selects nothing (`LabelSelectorAsSelector(nil)`).
    MatchesNothing,
}

/// Matches an optional selector, with the caller's meaning of "absent".
pub fn matches_optional(
    selector: Option<&LabelSelector>,
    labels: &BTreeMap<String, String>,
    nil: NilSelector,
) -> bool {
    match selector {
        Some(selector) => selector.matches(labels),
        None => nil == NilSelector::MatchesAll,
    }
}

/// Why a selector cannot be turned into a Kubernetes `labels.Selector`. `Display` renders the
/// error text of `LabelSelectorAsSelector` (for example
/// `values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A `matchExpressions` operator outside In / NotIn / Exists / DoesNotExist.
    #[error("{} is not a valid label selector operator", go_quote(.operator))]
    UnknownOperator { operator: String },
    /// One requirement broke one or more rules (Kubernetes reports them as an aggregate).
    #[error("{}", aggregate(.0))]
    Invalid(Vec<FieldError>),
}

/// One `field.Invalid` error: the path, the offending value and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: Invalid value: {value}: {detail}")]
pub struct FieldError {
    /// `key`, `values`, or `values[i][key]` (Kubernetes' field path of the requirement).
    pub field: String,
    /// The value rendered the way Go prints it (`"x"`, `[]string(nil)`, `[]string{"a"}`).
    pub value: String,
    pub detail: String,
}

fn aggregate(errors: &[FieldError]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for e in errors {
        let msg = e.to_string();
        if !seen.contains(&msg) {
            seen.push(msg);
        }
    }
    match seen.len() {
        0 => String::new(),
        1 => seen.remove(0),
        _ => format!("[{}]", seen.join(", ")),
    }
}

/// Go's `%q` for the strings we meet (ASCII label material); close enough for other text.
fn go_quote(s: &str) -> String {
    format!("{s:?}")
}

/// Go's `%#v` of a `[]string`.
fn go_string_slice(values: &[String]) -> String {
    if values.is_empty() {
        // `LabelSelectorAsSelector` copies values with `append([]string(nil), ...)`, so an
        // empty list always prints as nil.
        "[]string(nil)".to_string()
    } else {
        let inner: Vec<String> = values.iter().map(|v| go_quote(v)).collect();
        format!("[]string{{{}}}", inner.join(", "))
    }
}

impl LabelSelector {
    /// The empty selector: selects everything.
    pub fn everything() -> Self {
        Self::default()
    }

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

    /// No requirement at all: selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
            && self.match_expressions.as_ref().is_none_or(Vec::is_empty)
    }

    /// Checks the selector like `LabelSelectorAsSelector`: the first requirement that fails is
    /// reported (match labels in key order, then expressions in order).
    pub fn validate(&self) -> Result<(), SelectorError> {
        for (key, value) in self.match_labels.iter().flatten() {
            let mut errors = Vec::new();
            check_key(key, &mut errors);
            check_value(key, value, 0, &mut errors);
            if !errors.is_empty() {
                return Err(SelectorError::Invalid(errors));
            }
        }
        for req in self.match_expressions.iter().flatten() {
            if let LabelSelectorOperator::Unknown(op) = &req.operator {
                return Err(SelectorError::UnknownOperator {
                    operator: op.clone(),
                });
            }
            let values = req.values.as_deref().unwrap_or_default();
            let mut errors = Vec::new();
            check_key(&req.key, &mut errors);
            match req.operator {
                LabelSelectorOperator::In | LabelSelectorOperator::NotIn if values.is_empty() => {
                    errors.push(FieldError {
                        field: "values".into(),
                        value: go_string_slice(values),
                        detail: "for 'in', 'notin' operators, values set can't be empty".into(),
                    });
                }
                LabelSelectorOperator::Exists | LabelSelectorOperator::DoesNotExist
                    if !values.is_empty() =>
                {
                    errors.push(FieldError {
                        field: "values".into(),
                        value: go_string_slice(values),
                        detail: "values set must be empty for exists and does not exist".into(),
                    });
                }
                _ => {}
            }
            for (i, value) in values.iter().enumerate() {
                check_value(&req.key, value, i, &mut errors);
            }
            if !errors.is_empty() {
                return Err(SelectorError::Invalid(errors));
            }
        }
        Ok(())
    }

    /// Whether `labels` satisfy every requirement (Kubernetes semantics: `NotIn` and
    /// `DoesNotExist` hold for an absent key). The empty selector matches everything. An unknown
    /// operator matches nothing.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let labels_ok = self
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| labels.get(k) == Some(v));
        labels_ok
            && self.match_expressions.iter().flatten().all(|req| {
                let present = labels.get(&req.key);
                let values = req.values.as_deref().unwrap_or_default();
                match &req.operator {
                    LabelSelectorOperator::In => present.is_some_and(|v| values.contains(v)),
                    LabelSelectorOperator::NotIn => present.is_none_or(|v| !values.contains(v)),
                    LabelSelectorOperator::Exists => present.is_some(),
                    LabelSelectorOperator::DoesNotExist => present.is_none(),
                    LabelSelectorOperator::Unknown(_) => false,
                }
            })
    }
}

const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const QUALIFIED_NAME_ERR: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_MAX: usize = 63;
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_ERR: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const LABEL_VALUE_ERR: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_MAX: usize = 63;

/// Kubernetes' `RegexError`.
fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut s = format!("{msg} (e.g. ");
    for (i, example) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{example}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, anchored.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain, anchored.
fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && is_lower_alnum(b[0])
                && is_lower_alnum(b[b.len() - 1])
                && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        })
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Kubernetes' `IsQualifiedName`.
fn qualified_name_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = value.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                if prefix.len() > DNS1123_SUBDOMAIN_MAX {
                    errs.push(format!(
                        "prefix part {}",
                        max_len_error(DNS1123_SUBDOMAIN_MAX)
                    ));
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push(format!(
                        "prefix part {}",
                        regex_error(
                            DNS1123_SUBDOMAIN_ERR,
                            DNS1123_SUBDOMAIN_FMT,
                            &["example.com"]
                        )
                    ));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_ERR,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else if name.len() > QUALIFIED_NAME_MAX {
        errs.push(format!("name part {}", max_len_error(QUALIFIED_NAME_MAX)));
    }
    if !is_qualified_name_part(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_ERR,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

fn check_key(key: &str, errors: &mut Vec<FieldError>) {
    let errs = qualified_name_errors(key);
    if !errs.is_empty() {
        errors.push(FieldError {
            field: "key".into(),
            value: go_quote(key),
            detail: errs.join("; "),
        });
    }
}

fn check_value(key: &str, value: &str, index: usize, errors: &mut Vec<FieldError>) {
    let mut errs = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        errs.push(max_len_error(LABEL_VALUE_MAX));
    }
    if !value.is_empty() && !is_qualified_name_part(value) {
        errs.push(regex_error(
            LABEL_VALUE_ERR,
            &format!("({QUALIFIED_NAME_FMT})?"),
            &["MyValue", "my_value", "12345"],
        ));
    }
    if !errs.is_empty() {
        errors.push(FieldError {
            field: format!("values[{index}][{key}]"),
            value: go_quote(value),
            detail: errs.join("; "),
        });
    }
}

impl fmt::Display for LabelSelectorOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

    fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.map(|v| v.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn with_exprs(exprs: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_labels: None,
            match_expressions: Some(exprs),
        }
    }

    // The empty selector selects everything, also an object without labels.
    #[test]
    fn empty_selector_matches_everything() {
        let sel = LabelSelector::everything();
        assert!(sel.is_empty());
        assert!(sel.matches(&labels(&[])));
        assert!(sel.matches(&labels(&[("a", "b")])));
        let explicit_empty = LabelSelector {
            match_labels: Some(BTreeMap::new()),
            match_expressions: Some(vec![]),
        };
        assert!(explicit_empty.is_empty());
        assert!(explicit_empty.matches(&labels(&[])));
    }

    // A nil selector means what the caller's API says: all or nothing.
    #[test]
    fn nil_selector_follows_the_callers_meaning() {
        let l = labels(&[("a", "b")]);
        assert!(matches_optional(None, &l, NilSelector::MatchesAll));
        assert!(!matches_optional(None, &l, NilSelector::MatchesNothing));
        let sel = LabelSelector::from_labels([("a", "b")]);
        assert!(matches_optional(
            Some(&sel),
            &l,
            NilSelector::MatchesNothing
        ));
    }

    // matchLabels needs every pair present with the same value.
    #[test]
    fn match_labels_need_every_pair() {
        let sel = LabelSelector::from_labels([("app", "web"), ("tier", "front")]);
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "back")])));
    }

    // In/NotIn/Exists/DoesNotExist follow Kubernetes: NotIn and DoesNotExist hold for a missing key.
    #[test]
    fn expression_operators_follow_kubernetes() {
        let l = labels(&[("color", "blue")]);
        let empty = labels(&[]);
        let in_ = with_exprs(vec![expr("color", "In", Some(&["blue", "red"]))]);
        assert!(in_.matches(&l));
        assert!(!in_.matches(&empty));
        let not_in = with_exprs(vec![expr("color", "NotIn", Some(&["blue"]))]);
        assert!(!not_in.matches(&l));
        assert!(not_in.matches(&empty));
        let exists = with_exprs(vec![expr("color", "Exists", None)]);
        assert!(exists.matches(&l));
        assert!(!exists.matches(&empty));
        let absent = with_exprs(vec![expr("color", "DoesNotExist", None)]);
        assert!(!absent.matches(&l));
        assert!(absent.matches(&empty));
        let unknown = with_exprs(vec![expr("color", "Gt", Some(&["1"]))]);
        assert!(!unknown.matches(&l));
    }

    // JSON from the API server (metav1.LabelSelector) deserializes, including null fields.
    #[test]
    fn deserializes_api_json() {
        let sel: LabelSelector = serde_json::from_str(
            r#"{"matchLabels":{"color":"blue"},"matchExpressions":[{"key":"tier","operator":"NotIn","values":["db"]},{"key":"x","operator":"Exists"}]}"#,
        )
        .unwrap();
        assert_eq!(sel.match_labels.as_ref().unwrap()["color"], "blue");
        let exprs = sel.match_expressions.as_ref().unwrap();
        assert_eq!(exprs[0].operator, LabelSelectorOperator::NotIn);
        assert_eq!(exprs[1].values, None);
        let back = serde_json::to_value(&sel).unwrap();
        assert_eq!(back["matchExpressions"][0]["operator"], "NotIn");
        let nulls: LabelSelector =
            serde_json::from_str(r#"{"matchLabels":null,"matchExpressions":null}"#).unwrap();
        assert!(nulls.is_empty());
        let odd: LabelSelector =
            serde_json::from_str(r#"{"matchExpressions":[{"key":"a","operator":"Bogus"}]}"#)
                .unwrap();
        assert_eq!(
            odd.match_expressions.unwrap()[0].operator,
            LabelSelectorOperator::Unknown("Bogus".into())
        );
    }

    // In/NotIn without values is rejected with the exact Kubernetes message.
    #[test]
    fn in_without_values_is_rejected_like_kubernetes() {
        for values in [None, Some(&[][..])] {
            let err = with_exprs(vec![expr("color", "In", values)])
                .validate()
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
            );
        }
    }

    // Exists with values is rejected with the exact Kubernetes message.
    #[test]
    fn exists_with_values_is_rejected_like_kubernetes() {
        let err = with_exprs(vec![expr("color", "Exists", Some(&["a", "b"]))])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"values: Invalid value: []string{"a", "b"}: values set must be empty for exists and does not exist"#
        );
    }

    // An unknown operator is rejected with LabelSelectorAsSelector's message.
    #[test]
    fn unknown_operator_is_rejected() {
        let err = with_exprs(vec![expr("color", "Gt", Some(&["1"]))])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""Gt" is not a valid label selector operator"#
        );
    }

    // Bad keys and values get IsQualifiedName / IsValidLabelValue texts, aggregated like Kubernetes.
    #[test]
    fn bad_keys_and_values_are_reported() {
        let err = LabelSelector::from_labels([("bad key", "ok")])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "key: Invalid value: \"bad key\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        let err = LabelSelector::from_labels([("app", "-x")])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "values[0][app]: Invalid value: \"-x\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        );
        let err = with_exprs(vec![expr("Example.com/app", "In", None)])
            .validate()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("[key: Invalid value: \"Example.com/app\": prefix part a lowercase RFC 1123 subdomain"), "{text}");
        assert!(text.ends_with(", values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty]"), "{text}");
        let SelectorError::Invalid(errors) = err else {
            panic!("expected field errors")
        };
        assert_eq!(errors.len(), 2);
    }

    // Valid selectors, including prefixed keys and empty values, pass validation.
    #[test]
    fn valid_selectors_pass() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[
                ("io.kubernetes.service.namespace", "default"),
                ("empty", ""),
            ])),
            match_expressions: Some(vec![
                expr("app.kubernetes.io/name", "In", Some(&["deathstar"])),
                expr("tier", "DoesNotExist", None),
            ]),
        };
        assert_eq!(sel.validate(), Ok(()));
    }
}
