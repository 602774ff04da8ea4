//! Kubernetes label selectors (`metav1.LabelSelector`): the shape, validation with Kubernetes'
//! error texts, and matching against a label set. This is the one implementation of the rules;
//! `cilia-api`'s CRD-facing selector converts into [`LabelSelector`] and delegates here.
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
//! # Label sources
//!
//! Cilium's endpoint selectors may prefix a key with a label source (`k8s:app`, `any:app`, see
//! [`LABEL_SOURCES`]); `LabelSelectorAsSelector` has no such notion and rejects the `:`. Callers
//! say which keys they accept with [`KeySyntax`]: [`LabelSelector::validate`] and
//! [`LabelSelector::matches`] read plain Kubernetes keys, [`LabelSelector::validate_with`] and
//! [`LabelSelector::matches_with`] take the syntax.
//!
//! # Invalid selectors
//!
//! [`LabelSelector::matches`] evaluates the requirements as written and never fails; a caller that
//! receives selectors from users runs [`LabelSelector::validate`] once and treats an invalid
//! selector the way its API documents (LB-IPAM: the pool selects no Service).
//!
//! # Error texts
//!
//! A [`SelectorError`] displays as `LabelSelectorAsSelector` words it, relative to the failing
//! requirement (`values: Invalid value: []string(nil): for 'in', 'notin' operators, values set
//! can't be empty`). [`SelectorError::at`] places it in an object instead, naming the full field
//! path first (`spec.serviceSelector.matchExpressions[0].values: ...`), which is how CRD
//! validation reports it.

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

impl fmt::Display for LabelSelectorOperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

/// Label sources Cilium allows as a key prefix in endpoint selectors (`k8s:app`, `any:app`).
pub const LABEL_SOURCES: &[&str] = &[
    "any",
    "k8s",
    "reserved",
    "container",
    "unspec",
    "cidr",
    "fqdn",
    "cilium-generated",
];

/// How the keys of a selector name labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeySyntax {
    /// Plain Kubernetes label keys, as `LabelSelectorAsSelector` reads them (what Cilium applies
    /// to LB-IPAM pool and L2 announcement selectors): `k8s:app` is an invalid key.
    #[default]
    Kubernetes,
    /// A key may start with one of Cilium's [`LABEL_SOURCES`] and `:` (`k8s:app`, `any:app`), as
    /// in Cilium's endpoint selectors. The source is dropped before the key is validated and
    /// looked up: the labels of Kubernetes objects all come from the `k8s` source.
    CiliumSource,
}

impl KeySyntax {
    /// The label key that the selector key `key` looks up.
    pub fn label_key(self, key: &str) -> &str {
        match (self, key.split_once(':')) {
            (Self::CiliumSource, Some((source, rest))) if LABEL_SOURCES.contains(&source) => rest,
            _ => key,
        }
    }
}

/// Why a selector cannot be turned into a Kubernetes `labels.Selector`. `Display` renders the
/// error text of `LabelSelectorAsSelector` (for example
/// `values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty`);
/// [`SelectorError::at`] names the full field path instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A `matchExpressions[index]` operator outside In / NotIn / Exists / DoesNotExist.
    #[error("{} is not a valid label selector operator", go_quote(.operator))]
    UnknownOperator { index: usize, operator: String },
    /// One requirement broke one or more rules (Kubernetes reports them as an aggregate).
    #[error("{}", aggregate(.0))]
    Invalid(Vec<FieldError>),
}

impl SelectorError {
    /// This error of the selector at `path` in an object (`spec.serviceSelector`).
    pub fn at(self, path: impl Into<String>) -> SelectorPathError {
        SelectorPathError {
            path: path.into(),
            error: self,
        }
    }
}

/// The requirement a [`FieldError`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// The `matchLabels` entry of [`FieldError::key`].
    MatchLabel,
    /// `matchExpressions[i]`.
    MatchExpression(usize),
}

/// The rule a requirement broke, with the offending input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The key is not a qualified name (`IsQualifiedName`); `detail` lists why.
    InvalidKey { detail: String },
    /// Value number `index` (0 for a `matchLabels` value) is not a label value
    /// (`IsValidLabelValue`); `detail` lists why.
    InvalidValue {
        index: usize,
        value: String,
        detail: String,
    },
    /// `In` / `NotIn` without values.
    ValuesRequired,
    /// `Exists` / `DoesNotExist` with values.
    ValuesForbidden { values: Vec<String> },
}

/// One `field.Invalid` error of a requirement. `Display` renders it like Kubernetes:
/// `field: Invalid value: value: detail`, see [`FieldError::field`] and [`FieldError::value`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: Invalid value: {}: {}", self.field(), self.value(), self.detail())]
pub struct FieldError {
    pub requirement: Requirement,
    /// The requirement's key as written (with a label source, if any).
    pub key: String,
    pub problem: Problem,
}

impl FieldError {
    /// Kubernetes' field path, relative to the requirement: `key`, `values`, or
    /// `values[i][key]`.
    pub fn field(&self) -> String {
        match &self.problem {
            Problem::InvalidKey { .. } => "key".into(),
            Problem::InvalidValue { index, .. } => format!("values[{index}][{}]", self.key),
            Problem::ValuesRequired | Problem::ValuesForbidden { .. } => "values".into(),
        }
    }

    /// The offending value as Go prints it (`"x"`, `[]string(nil)`, `[]string{"a"}`).
    pub fn value(&self) -> String {
        match &self.problem {
            Problem::InvalidKey { .. } => go_quote(&self.key),
            Problem::InvalidValue { value, .. } => go_quote(value),
            Problem::ValuesRequired => go_string_slice(&[]),
            Problem::ValuesForbidden { values } => go_string_slice(values),
        }
    }

    /// The rule(s) broken, in Kubernetes' words.
    pub fn detail(&self) -> &str {
        match &self.problem {
            Problem::InvalidKey { detail } | Problem::InvalidValue { detail, .. } => detail,
            Problem::ValuesRequired => "for 'in', 'notin' operators, values set can't be empty",
            Problem::ValuesForbidden { .. } => {
                "values set must be empty for exists and does not exist"
            }
        }
    }

    /// The field path of the offending input, for a selector at `path` in an object:
    /// `<path>.matchLabels` (a bad key), `<path>.matchLabels[key]`,
    /// `<path>.matchExpressions[i].key`, `<path>.matchExpressions[i].values` or
    /// `<path>.matchExpressions[i].values[j]`.
    pub fn path(&self, path: &str) -> String {
        match (&self.requirement, &self.problem) {
            (Requirement::MatchLabel, Problem::InvalidKey { .. }) => format!("{path}.matchLabels"),
            (Requirement::MatchLabel, _) => format!("{path}.matchLabels[{}]", self.key),
            (Requirement::MatchExpression(i), problem) => {
                let req = format!("{path}.matchExpressions[{i}]");
                match problem {
                    Problem::InvalidKey { .. } => format!("{req}.key"),
                    Problem::InvalidValue { index, .. } => format!("{req}.values[{index}]"),
                    Problem::ValuesRequired | Problem::ValuesForbidden { .. } => {
                        format!("{req}.values")
                    }
                }
            }
        }
    }

    /// Path-first rendering for a selector at `path` (see [`SelectorPathError`]).
    fn fmt_at(&self, path: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.path(path);
        match &self.problem {
            Problem::InvalidKey { detail } => {
                write!(f, "{at}: invalid label key {:?}: {detail}", self.key)
            }
            Problem::InvalidValue { value, detail, .. } => {
                write!(f, "{at}: invalid label value {value:?}: {detail}")
            }
            Problem::ValuesRequired => write!(
                f,
                "{at}: for 'In', 'NotIn' operators, values set can't be empty (got [])"
            ),
            Problem::ValuesForbidden { values } => write!(
                f,
                "{at}: values set must be empty for 'Exists' and 'DoesNotExist' operators (got {values:?})"
            ),
        }
    }
}

/// A [`SelectorError`] of the selector at `path` in an object, rendered field path first the way
/// CRD validation reports problems, e.g.
/// `spec.nodeSelector.matchLabels[app]: invalid label value "-x": a valid label must be ...`.
/// Several problems of one requirement are joined by `; `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorPathError {
    /// Where the selector is (`spec.serviceSelector`, `specs[0].ingress[1].fromEndpoints[2]`).
    pub path: String,
    pub error: SelectorError,
}

impl fmt::Display for SelectorPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.error {
            SelectorError::UnknownOperator { index, operator } => write!(
                f,
                "{path}.matchExpressions[{index}].operator: {} is not a valid label selector operator",
                go_quote(operator)
            ),
            SelectorError::Invalid(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    e.fmt_at(path, f)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for SelectorPathError {}

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

    /// Checks the selector like `LabelSelectorAsSelector`, with plain Kubernetes keys.
    pub fn validate(&self) -> Result<(), SelectorError> {
        self.validate_with(KeySyntax::Kubernetes)
    }

    /// Checks the selector like `LabelSelectorAsSelector`, reading keys with `keys`: the first
    /// requirement that fails is reported with every rule it broke (match labels in key order,
    /// then expressions in order).
    pub fn validate_with(&self, keys: KeySyntax) -> Result<(), SelectorError> {
        for (key, value) in self.match_labels.iter().flatten() {
            let mut errors = Vec::new();
            let mut push = |problem| {
                errors.push(FieldError {
                    requirement: Requirement::MatchLabel,
                    key: key.clone(),
                    problem,
                })
            };
            check_key(keys.label_key(key), &mut push);
            check_value(0, value, &mut push);
            if !errors.is_empty() {
                return Err(SelectorError::Invalid(errors));
            }
        }
        for (index, req) in self.match_expressions.iter().flatten().enumerate() {
            if let LabelSelectorOperator::Unknown(op) = &req.operator {
                return Err(SelectorError::UnknownOperator {
                    index,
                    operator: op.clone(),
                });
            }
            let values = req.values.as_deref().unwrap_or_default();
            let mut errors = Vec::new();
            let mut push = |problem| {
                errors.push(FieldError {
                    requirement: Requirement::MatchExpression(index),
                    key: req.key.clone(),
                    problem,
                })
            };
            check_key(keys.label_key(&req.key), &mut push);
            match req.operator {
                LabelSelectorOperator::In | LabelSelectorOperator::NotIn if values.is_empty() => {
                    push(Problem::ValuesRequired);
                }
                LabelSelectorOperator::Exists | LabelSelectorOperator::DoesNotExist
                    if !values.is_empty() =>
                {
                    push(Problem::ValuesForbidden {
                        values: values.to_vec(),
                    });
                }
                _ => {}
            }
            for (i, value) in values.iter().enumerate() {
                check_value(i, value, &mut push);
            }
            if !errors.is_empty() {
                return Err(SelectorError::Invalid(errors));
            }
        }
        Ok(())
    }

    /// Whether `labels` satisfy every requirement, with plain Kubernetes keys.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(labels, KeySyntax::Kubernetes)
    }

    /// Whether `labels` satisfy every requirement (Kubernetes semantics: `NotIn` and
    /// `DoesNotExist` hold for an absent key), reading keys with `keys`. The empty selector
    /// matches everything. An unknown operator matches nothing.
    pub fn matches_with(&self, labels: &BTreeMap<String, String>, keys: KeySyntax) -> bool {
        let lookup = |key: &str| labels.get(keys.label_key(key));
        let labels_ok = self
            .match_labels
            .iter()
            .flatten()
            .all(|(k, v)| lookup(k) == Some(v));
        labels_ok
            && self.match_expressions.iter().flatten().all(|req| {
                let present = lookup(&req.key);
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

/// Reports `label_key` (the key with any label source dropped) if it is not a qualified name.
fn check_key(label_key: &str, push: &mut impl FnMut(Problem)) {
    let errs = qualified_name_errors(label_key);
    if !errs.is_empty() {
        push(Problem::InvalidKey {
            detail: errs.join("; "),
        });
    }
}

/// Reports value number `index` if it is not a label value (`IsValidLabelValue`).
fn check_value(index: usize, value: &str, push: &mut impl FnMut(Problem)) {
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
        push(Problem::InvalidValue {
            index,
            value: value.to_string(),
            detail: errs.join("; "),
        });
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

    // A Cilium label source on a key is dropped for matching only when the caller reads keys
    // that way (endpoint selectors); plain Kubernetes keys are looked up as written.
    #[test]
    fn source_prefix_is_ignored_when_matching_cilium_keys() {
        let sel = LabelSelector::from_labels([("k8s:org", "empire")]);
        assert!(sel.matches_with(&labels(&[("org", "empire")]), KeySyntax::CiliumSource));
        assert!(!sel.matches_with(&labels(&[("org", "alliance")]), KeySyntax::CiliumSource));
        assert!(!sel.matches(&labels(&[("org", "empire")])));
        let any = with_exprs(vec![
            expr("any:class", "In", Some(&["deathstar"])),
            expr("reserved:host", "DoesNotExist", None),
        ]);
        assert!(any.matches_with(&labels(&[("class", "deathstar")]), KeySyntax::CiliumSource));
        assert!(!any.matches_with(
            &labels(&[("class", "deathstar"), ("host", "")]),
            KeySyntax::CiliumSource
        ));
        // Not a known source: the key is looked up verbatim.
        let odd = LabelSelector::from_labels([("team:org", "empire")]);
        assert!(odd.matches_with(&labels(&[("team:org", "empire")]), KeySyntax::CiliumSource));
        assert!(!odd.matches_with(&labels(&[("org", "empire")]), KeySyntax::CiliumSource));
    }

    // Keys with a label source validate as the key behind the source; errors name the key as
    // written. Plain Kubernetes keys reject the ':' like IsQualifiedName.
    #[test]
    fn source_prefixed_keys_validate_as_the_label_key() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[(
                "k8s:io.kubernetes.pod.namespace",
                "kube-system",
            )])),
            match_expressions: Some(vec![
                expr("any:app.kubernetes.io/name", "In", Some(&["web"])),
                expr("k8s:tier", "Exists", None),
            ]),
        };
        assert_eq!(sel.validate_with(KeySyntax::CiliumSource), Ok(()));
        let err = sel.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "key: Invalid value: \"k8s:io.kubernetes.pod.namespace\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        );
        for bad in ["k8s:", "k8s:-x", "team:org", "k8s:Example.com/app"] {
            let err = LabelSelector::from_labels([(bad, "v")])
                .validate_with(KeySyntax::CiliumSource)
                .unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("key: Invalid value: {bad:?}: ")),
                "{bad}: {err}"
            );
        }
        let err = LabelSelector::from_labels([("k8s:", "v")])
            .validate_with(KeySyntax::CiliumSource)
            .unwrap_err();
        assert!(
            err.to_string().contains("name part must be non-empty"),
            "{err}"
        );
        let err = LabelSelector::from_labels([("k8s:app", "-x")])
            .validate_with(KeySyntax::CiliumSource)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("values[0][k8s:app]: Invalid value: \"-x\": a valid label"),
            "{err}"
        );
    }

    // Keys and values are held to Kubernetes' lengths: name part 63, prefix 253, value 63.
    #[test]
    fn length_limits_follow_kubernetes() {
        let name63 = "a".repeat(63);
        let prefix253 = format!("{}.com", "a".repeat(249));
        let ok = LabelSelector::from_labels([
            (name63.as_str(), name63.as_str()),
            (format!("{prefix253}/x").as_str(), ""),
        ]);
        assert_eq!(ok.validate(), Ok(()));
        let long_name = "a".repeat(64);
        let err = LabelSelector::from_labels([(long_name.as_str(), "v")])
            .validate()
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with(": name part must be no more than 63 characters"),
            "{err}"
        );
        let long_prefix = format!("a{prefix253}/x");
        let err = LabelSelector::from_labels([(long_prefix.as_str(), "v")])
            .validate()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(": prefix part must be no more than 253 characters"),
            "{err}"
        );
        let err = LabelSelector::from_labels([("app", long_name.as_str())])
            .validate()
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with(": must be no more than 63 characters"),
            "{err}"
        );
        for bad in ["/app", "a/b/c", "Example.com/app", "app/", ""] {
            assert!(
                LabelSelector::from_labels([(bad, "v")]).validate().is_err(),
                "{bad:?} accepted"
            );
        }
    }

    // The seed L2 policy's selector: nodes that are not control-plane nodes.
    #[test]
    fn does_not_exist_selects_nodes_without_the_label() {
        let sel = with_exprs(vec![expr(
            "node-role.kubernetes.io/control-plane",
            "DoesNotExist",
            None,
        )]);
        assert_eq!(sel.validate(), Ok(()));
        assert!(sel.matches(&labels(&[("kubernetes.io/hostname", "worker")])));
        assert!(!sel.matches(&labels(&[("node-role.kubernetes.io/control-plane", "")])));
    }

    // Several expressions must all hold.
    #[test]
    fn in_and_not_in() {
        let sel = with_exprs(vec![
            expr("org", "In", Some(&["empire", "rebels"])),
            expr("class", "NotIn", Some(&["xwing"])),
        ]);
        assert!(sel.matches(&labels(&[("org", "empire"), ("class", "deathstar")])));
        assert!(!sel.matches(&labels(&[("org", "empire"), ("class", "xwing")])));
        assert!(!sel.matches(&labels(&[("class", "deathstar")])));
    }

    // At a path, every problem names the full field path of the offending input first.
    #[test]
    fn errors_at_a_path_name_the_field() {
        let at = |sel: LabelSelector, path: &str| {
            sel.validate_with(KeySyntax::CiliumSource)
                .unwrap_err()
                .at(path)
                .to_string()
        };
        assert_eq!(
            at(
                with_exprs(vec![expr("org", "In", None)]),
                "spec.serviceSelector"
            ),
            "spec.serviceSelector.matchExpressions[0].values: for 'In', 'NotIn' operators, values set can't be empty (got [])"
        );
        assert_eq!(
            at(
                with_exprs(vec![
                    expr("a", "Exists", None),
                    expr("b", "Exists", Some(&["x"]))
                ]),
                "spec.nodeSelector"
            ),
            r#"spec.nodeSelector.matchExpressions[1].values: values set must be empty for 'Exists' and 'DoesNotExist' operators (got ["x"])"#
        );
        assert_eq!(
            at(
                with_exprs(vec![expr("a", "Is", Some(&["x"]))]),
                "spec.nodeSelector"
            ),
            r#"spec.nodeSelector.matchExpressions[0].operator: "Is" is not a valid label selector operator"#
        );
        let err = at(
            LabelSelector::from_labels([("app", "-bad")]),
            "spec.nodeSelector",
        );
        assert!(
            err.starts_with(
                "spec.nodeSelector.matchLabels[app]: invalid label value \"-bad\": a valid label must be"
            ),
            "{err}"
        );
        let err = at(
            LabelSelector::from_labels([("k8s:bad key", "ok")]),
            "specs[0].endpointSelector",
        );
        assert!(
            err.starts_with(
                "specs[0].endpointSelector.matchLabels: invalid label key \"k8s:bad key\": name part must consist"
            ),
            "{err}"
        );
        // Every problem of the failing requirement is reported, in order.
        let err = at(
            with_exprs(vec![expr("Example.com/app", "NotIn", Some(&["ok", "-x"]))]),
            "spec.egress[0].toEndpoints[1]",
        );
        let parts: Vec<&str> = err.split("; ").collect();
        assert!(
            parts[0].starts_with("spec.egress[0].toEndpoints[1].matchExpressions[0].key: invalid label key \"Example.com/app\": prefix part a lowercase RFC 1123 subdomain"),
            "{err}"
        );
        assert!(
            err.contains("; spec.egress[0].toEndpoints[1].matchExpressions[0].values[1]: invalid label value \"-x\": a valid label"),
            "{err}"
        );
    }

    // The structured error says which requirement broke which rule.
    #[test]
    fn field_errors_are_structured() {
        let err = with_exprs(vec![
            expr("ok", "Exists", None),
            expr("bad key", "In", Some(&["v", "-x"])),
        ])
        .validate()
        .unwrap_err();
        let SelectorError::Invalid(errors) = err else {
            panic!("expected field errors")
        };
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].requirement, Requirement::MatchExpression(1));
        assert!(matches!(errors[0].problem, Problem::InvalidKey { .. }));
        assert_eq!(errors[0].field(), "key");
        assert_eq!(errors[1].field(), "values[1][bad key]");
        assert_eq!(errors[1].value(), "\"-x\"");
        assert_eq!(
            errors[1].path("spec.x"),
            "spec.x.matchExpressions[1].values[1]"
        );
    }
}
