//! Label selectors (equality- and set-based) and field selectors, as list and watch filters.

use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum LabelOp {
    Exists,
    NotExists,
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

#[derive(Debug, Clone, PartialEq)]
struct LabelRequirement {
    key: String,
    op: LabelOp,
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    reqs: Vec<LabelRequirement>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Op(&'static str),
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if is_label_char(c) {
            let start = i;
            while i < chars.len() && is_label_char(chars[i]) {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let op = ["==", "!=", "=", "!", "(", ")", ",", ">", "<"]
                .into_iter()
                .find(|op| two.starts_with(op))
                .ok_or_else(|| format!("unexpected character {c:?}"))?;
            out.push(Tok::Op(op));
            i += op.len();
        }
    }
    Ok(out)
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter.
    pub fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        Self::parse_inner(s)
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))
    }

    fn parse_inner(s: &str) -> Result<LabelSelector, String> {
        let toks = lex(s)?;
        let mut reqs = Vec::new();
        let mut i = 0;
        let word = |i: usize| -> Option<String> {
            match toks.get(i) {
                Some(Tok::Word(w)) => Some(w.clone()),
                _ => None,
            }
        };
        while i < toks.len() {
            let req = if toks[i] == Tok::Op("!") {
                let key = word(i + 1).ok_or("expected a key after '!'")?;
                i += 2;
                LabelRequirement {
                    key,
                    op: LabelOp::NotExists,
                }
            } else {
                let key = word(i).ok_or("expected a key")?;
                i += 1;
                match toks.get(i) {
                    None | Some(Tok::Op(",")) => LabelRequirement {
                        key,
                        op: LabelOp::Exists,
                    },
                    Some(Tok::Op(op @ ("=" | "==" | "!=" | ">" | "<"))) => {
                        let op = *op;
                        // `key=` (empty value) is legal.
                        let value = word(i + 1);
                        i += if value.is_some() { 2 } else { 1 };
                        let value = value.unwrap_or_default();
                        let op = match op {
                            "!=" => LabelOp::NotEq(value),
                            ">" => LabelOp::Gt(
                                value
                                    .parse()
                                    .map_err(|_| format!("invalid integer {value}"))?,
                            ),
                            "<" => LabelOp::Lt(
                                value
                                    .parse()
                                    .map_err(|_| format!("invalid integer {value}"))?,
                            ),
                            _ => LabelOp::Eq(value),
                        };
                        LabelRequirement { key, op }
                    }
                    Some(Tok::Word(kw)) if kw == "in" || kw == "notin" => {
                        let negate = kw == "notin";
                        i += 1;
                        if toks.get(i) != Some(&Tok::Op("(")) {
                            return Err(format!("expected '(' after {kw}"));
                        }
                        i += 1;
                        let mut values = Vec::new();
                        loop {
                            match toks.get(i) {
                                Some(Tok::Word(v)) => {
                                    values.push(v.clone());
                                    i += 1;
                                }
                                Some(Tok::Op(",")) => i += 1,
                                Some(Tok::Op(")")) => {
                                    i += 1;
                                    break;
                                }
                                _ => return Err("expected ')'".into()),
                            }
                        }
                        LabelRequirement {
                            key,
                            op: if negate {
                                LabelOp::NotIn(values)
                            } else {
                                LabelOp::In(values)
                            },
                        }
                    }
                    Some(t) => return Err(format!("unexpected {t:?} after key {key}")),
                }
            };
            reqs.push(req);
            match toks.get(i) {
                None => break,
                Some(Tok::Op(",")) => i += 1,
                Some(t) => return Err(format!("expected ',' but found {t:?}")),
            }
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| match &r.op {
            LabelOp::Exists => get(&r.key).is_some(),
            LabelOp::NotExists => get(&r.key).is_none(),
            LabelOp::Eq(v) => get(&r.key) == Some(v.as_str()),
            LabelOp::NotEq(v) => get(&r.key) != Some(v.as_str()),
            LabelOp::In(vs) => get(&r.key).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelOp::NotIn(vs) => get(&r.key).is_none_or(|x| !vs.iter().any(|v| v == x)),
            LabelOp::Gt(n) => get(&r.key)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            LabelOp::Lt(n) => get(&r.key)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        })
    }
}

/// A parsed `fieldSelector`: `path=value` / `path!=value` terms over dotted JSON paths
/// (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`, `type`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    terms: Vec<(String, bool, String)>,
}

impl FieldSelector {
    pub fn parse(s: &str) -> Result<FieldSelector, ApiError> {
        let mut terms = Vec::new();
        for part in split_unescaped(s, ',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (path, negate, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, true, v)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, false, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            terms.push((path.trim().to_string(), negate, unescape(value.trim())));
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(path, negate, want)| {
            let got = path.split('.').try_fold(obj, |v, k| v.get(k));
            let got = match got {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) != *negate
        })
    }

    /// `metadata.name=x`, if the selector pins a name (lets get-by-name watches be cheap).
    pub fn pinned_name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|(p, neg, _)| p == "metadata.name" && !neg)
            .map(|(_, _, v)| v.as_str())
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.last_mut().expect("non-empty").push('\\');
            out.last_mut().expect("non-empty").push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().expect("non-empty").push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}, "type": "Opaque"})
    }

    #[test]
    fn equality_based() {
        let o = obj(json!({"app": "web", "tier": "fe"}));
        assert!(LabelSelector::parse("app=web").unwrap().matches(&o));
        assert!(
            LabelSelector::parse("app==web,tier!=be")
                .unwrap()
                .matches(&o)
        );
        assert!(!LabelSelector::parse("app=db").unwrap().matches(&o));
        assert!(LabelSelector::parse("").unwrap().matches(&o));
    }

    #[test]
    fn set_based() {
        let o = obj(json!({"app": "web", "node-role.kubernetes.io/control-plane": ""}));
        assert!(
            LabelSelector::parse("app in (web, db)")
                .unwrap()
                .matches(&o)
        );
        assert!(!LabelSelector::parse("app notin (web)").unwrap().matches(&o));
        assert!(
            LabelSelector::parse("node-role.kubernetes.io/control-plane")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !LabelSelector::parse("!node-role.kubernetes.io/control-plane")
                .unwrap()
                .matches(&o)
        );
        assert!(
            LabelSelector::parse("!missing,app,x notin (y)")
                .unwrap()
                .matches(&o)
        );
        assert!(
            LabelSelector::parse("node-role.kubernetes.io/control-plane=")
                .unwrap()
                .matches(&o)
        );
    }

    #[test]
    fn malformed_selector_is_bad_request() {
        assert_eq!(LabelSelector::parse("app in web").unwrap_err().code, 400);
        assert_eq!(LabelSelector::parse("a=b c").unwrap_err().code, 400);
        assert_eq!(FieldSelector::parse("metadata.name").unwrap_err().code, 400);
    }

    #[test]
    fn field_selectors() {
        let o = obj(json!({}));
        assert!(
            FieldSelector::parse("metadata.name=a,metadata.namespace==ns")
                .unwrap()
                .matches(&o)
        );
        assert!(
            FieldSelector::parse("spec.nodeName!=n2")
                .unwrap()
                .matches(&o)
        );
        assert!(
            !FieldSelector::parse("type=kubernetes.io/tls")
                .unwrap()
                .matches(&o)
        );
        assert!(FieldSelector::parse("spec.missing=").unwrap().matches(&o));
        assert_eq!(
            FieldSelector::parse("metadata.name=a")
                .unwrap()
                .pinned_name(),
            Some("a")
        );
    }
}
