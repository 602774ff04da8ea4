//! Structural OpenAPI v3 schemas of CRDs: pruning, defaulting and validation of custom objects,
//! with field errors worded like kube-apiserver's.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::Regex;
use serde_json::{Map, Value};

use crate::cel::Program;
use crate::error::{FieldError, FieldErrorKind};

/// One `x-kubernetes-validations` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    pub rule: String,
    pub message: Option<String>,
    pub field_path: Option<String>,
    /// `None` when the rule uses CEL outside our subset; such rules are skipped.
    pub program: Option<Program>,
}

/// A compiled structural schema node.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub type_: Option<String>,
    pub format: Option<String>,
    pub properties: BTreeMap<String, Schema>,
    /// `additionalProperties: {schema}`: the schema of map values.
    pub additional_properties: Option<Box<Schema>>,
    /// `additionalProperties: true`.
    pub additional_properties_any: bool,
    pub items: Option<Box<Schema>>,
    pub required: Vec<String>,
    pub enum_: Vec<Value>,
    pub pattern: Option<(String, Regex)>,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    pub unique_items: bool,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub min_properties: Option<u64>,
    pub max_properties: Option<u64>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub exclusive_minimum: bool,
    pub exclusive_maximum: bool,
    pub multiple_of: Option<f64>,
    pub nullable: bool,
    pub preserve_unknown: bool,
    pub int_or_string: bool,
    pub embedded_resource: bool,
    pub default: Option<Value>,
    pub list_type: Option<String>,
    pub list_map_keys: Vec<String>,
    pub rules: Vec<Rule>,
    pub all_of: Vec<Schema>,
    pub any_of: Vec<Schema>,
    pub one_of: Vec<Schema>,
    pub not: Option<Box<Schema>>,
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

impl Schema {
    /// Compiles an `openAPIV3Schema`; fails on invalid patterns or malformed nodes.
    pub fn compile(v: &Value) -> Result<Schema, String> {
        Self::compile_at(v, "openAPIV3Schema")
    }

    fn compile_at(v: &Value, path: &str) -> Result<Schema, String> {
        let Some(obj) = v.as_object() else {
            return Err(format!("{path}: must be an object"));
        };
        let mut s = Schema {
            type_: obj.get("type").and_then(Value::as_str).map(str::to_string),
            format: obj
                .get("format")
                .and_then(Value::as_str)
                .map(str::to_string),
            min_items: u64_at(v, "minItems"),
            max_items: u64_at(v, "maxItems"),
            unique_items: obj
                .get("uniqueItems")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            min_length: u64_at(v, "minLength"),
            max_length: u64_at(v, "maxLength"),
            min_properties: u64_at(v, "minProperties"),
            max_properties: u64_at(v, "maxProperties"),
            minimum: obj.get("minimum").and_then(Value::as_f64),
            maximum: obj.get("maximum").and_then(Value::as_f64),
            exclusive_minimum: obj
                .get("exclusiveMinimum")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            exclusive_maximum: obj
                .get("exclusiveMaximum")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            multiple_of: obj.get("multipleOf").and_then(Value::as_f64),
            nullable: obj
                .get("nullable")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            preserve_unknown: obj
                .get("x-kubernetes-preserve-unknown-fields")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            int_or_string: obj
                .get("x-kubernetes-int-or-string")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            embedded_resource: obj
                .get("x-kubernetes-embedded-resource")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            default: obj.get("default").cloned(),
            list_type: obj
                .get("x-kubernetes-list-type")
                .and_then(Value::as_str)
                .map(str::to_string),
            list_map_keys: obj
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            enum_: obj
                .get("enum")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            required: obj
                .get("required")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            ..Schema::default()
        };
        if let Some(p) = obj.get("pattern").and_then(Value::as_str) {
            let re = Regex::new(p)
                .map_err(|e| format!("{path}.pattern: invalid regular expression: {e}"))?;
            s.pattern = Some((p.to_string(), re));
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, pv) in props {
                s.properties.insert(
                    k.clone(),
                    Self::compile_at(pv, &format!("{path}.properties[{k}]"))?,
                );
            }
        }
        match obj.get("additionalProperties") {
            Some(Value::Bool(b)) => s.additional_properties_any = *b,
            Some(ap @ Value::Object(_)) => {
                s.additional_properties = Some(Box::new(Self::compile_at(
                    ap,
                    &format!("{path}.additionalProperties"),
                )?))
            }
            _ => {}
        }
        if let Some(items) = obj.get("items") {
            s.items = Some(Box::new(Self::compile_at(items, &format!("{path}.items"))?));
        }
        for (key, target) in [
            ("allOf", &mut s.all_of),
            ("anyOf", &mut s.any_of),
            ("oneOf", &mut s.one_of),
        ] {
            if let Some(list) = obj.get(key).and_then(Value::as_array) {
                for (i, sub) in list.iter().enumerate() {
                    target.push(Self::compile_at(sub, &format!("{path}.{key}[{i}]"))?);
                }
            }
        }
        if let Some(not) = obj.get("not") {
            s.not = Some(Box::new(Self::compile_at(not, &format!("{path}.not"))?));
        }
        if let Some(rules) = obj
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            for r in rules {
                let rule = r
                    .get("rule")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let program = match Program::compile(&rule) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        tracing::warn!(%rule, error = %e, "x-kubernetes-validations rule outside the supported CEL subset; skipped");
                        None
                    }
                };
                s.rules.push(Rule {
                    message: r.get("message").and_then(Value::as_str).map(str::to_string),
                    field_path: r
                        .get("fieldPath")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    rule,
                    program,
                });
            }
        }
        Ok(s)
    }

    /// The schema of field `name` of an object node (a property or the map-value schema).
    pub fn field(&self, name: &str) -> Option<&Schema> {
        self.properties
            .get(name)
            .or(self.additional_properties.as_deref())
    }

    /// Prunes unknown fields, drops nulls of non-nullable fields and applies defaults.
    /// Returns the paths of the pruned unknown fields (for `fieldValidation`).
    pub fn normalize(&self, obj: &mut Value) -> Vec<String> {
        let mut unknown = Vec::new();
        self.normalize_node(obj, "", &mut unknown, true);
        unknown
    }

    fn normalize_node(&self, v: &mut Value, path: &str, unknown: &mut Vec<String>, root: bool) {
        match v {
            Value::Object(map) => {
                let keys: Vec<String> = map.keys().cloned().collect();
                for k in keys {
                    if (root || self.embedded_resource)
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                        continue;
                    }
                    let child_path = child(path, &k);
                    match self.field(&k) {
                        Some(sub) => {
                            if map.get(&k).is_some_and(Value::is_null) && !sub.nullable {
                                map.remove(&k);
                                continue;
                            }
                            if let Some(val) = map.get_mut(&k) {
                                sub.normalize_node(val, &child_path, unknown, false);
                            }
                        }
                        None if self.preserve_unknown || self.additional_properties_any => {}
                        None => {
                            map.remove(&k);
                            unknown.push(child_path);
                        }
                    }
                }
                for (k, sub) in &self.properties {
                    if let (false, Some(d)) = (map.contains_key(k), &sub.default) {
                        map.insert(k.clone(), d.clone());
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = &self.items {
                    for (i, it) in items.iter_mut().enumerate() {
                        item_schema.normalize_node(it, &format!("{path}[{i}]"), unknown, false);
                    }
                }
            }
            _ => {}
        }
    }

    /// Validates an object (already normalized). `old` is the stored object on updates,
    /// for transition rules.
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        self.validate_node(obj, old, "", &mut errs, true);
        errs
    }

    fn validate_node(
        &self,
        v: &Value,
        old: Option<&Value>,
        path: &str,
        errs: &mut Vec<FieldError>,
        root: bool,
    ) {
        let shown = if path.is_empty() { "body" } else { path };
        if v.is_null() {
            if !self.nullable && (self.type_.is_some() || self.int_or_string) {
                let t = self.type_.clone().unwrap_or_else(|| "string".into());
                errs.push(FieldError::invalid(
                    path,
                    Value::String("null".into()),
                    format!("{shown} in body must be of type {t}: \"null\""),
                ));
            }
            return;
        }
        let actual = json_type(v);
        if self.int_or_string {
            if !(actual == "integer" || actual == "string") {
                errs.push(FieldError::invalid(
                    path,
                    Value::String(actual.into()),
                    format!("{shown} in body must be of type integer,string: \"{actual}\""),
                ));
                return;
            }
        } else if let Some(t) = &self.type_ {
            let ok = match t.as_str() {
                "number" => actual == "integer" || actual == "number",
                other => other == actual,
            };
            if !ok {
                errs.push(FieldError::invalid(
                    path,
                    Value::String(actual.into()),
                    format!("{shown} in body must be of type {t}: \"{actual}\""),
                ));
                return;
            }
        }
        if let Some(format) = &self.format
            && !format_ok(format, v)
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!(
                    "{shown} in body must be of type {format}: {}",
                    crate::error::render_value(v)
                ),
            ));
        }
        if !self.enum_.is_empty() && !self.enum_.iter().any(|e| e == v) {
            errs.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::NotSupported {
                    value: v.clone(),
                    supported: self.enum_.clone(),
                },
            });
        }
        match v {
            Value::String(s) => self.validate_string(s, v, path, shown, errs),
            Value::Number(n) => {
                self.validate_number(n.as_f64().unwrap_or(0.0), v, path, shown, errs)
            }
            Value::Array(items) => self.validate_array(items, old, path, shown, errs),
            Value::Object(map) => self.validate_object(map, old, path, shown, errs, root),
            _ => {}
        }
        for sub in &self.all_of {
            sub.validate_node(v, old, path, errs, root);
        }
        if !self.any_of.is_empty() && !self.any_of.iter().any(|s| s.validate_quiet(v)) {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{shown} in body must validate at least one schema (anyOf)"),
            ));
        }
        if !self.one_of.is_empty()
            && self.one_of.iter().filter(|s| s.validate_quiet(v)).count() != 1
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{shown} in body must validate one and only one schema (oneOf)"),
            ));
        }
        if let Some(not) = &self.not
            && not.validate_quiet(v)
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{shown} in body should not validate the schema (not)"),
            ));
        }
        self.validate_rules(v, old, path, errs);
    }

    fn validate_quiet(&self, v: &Value) -> bool {
        let mut errs = Vec::new();
        self.validate_node(v, None, "", &mut errs, false);
        errs.is_empty()
    }

    fn validate_string(
        &self,
        s: &str,
        v: &Value,
        path: &str,
        shown: &str,
        errs: &mut Vec<FieldError>,
    ) {
        let len = s.chars().count() as u64;
        if let Some(min) = self.min_length
            && len < min
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{shown} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = self.max_length
            && len > max
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{shown} in body should be at most {max} chars long"),
            ));
        }
        if let Some((p, re)) = &self.pattern
            && !re.is_match(s)
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{shown} in body should match '{p}'"),
            ));
        }
    }

    fn validate_number(
        &self,
        n: f64,
        v: &Value,
        path: &str,
        shown: &str,
        errs: &mut Vec<FieldError>,
    ) {
        if let Some(min) = self.minimum {
            let bad = if self.exclusive_minimum {
                n <= min
            } else {
                n < min
            };
            if bad {
                let rel = if self.exclusive_minimum {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                errs.push(FieldError::invalid(
                    path,
                    v.clone(),
                    format!("{shown} in body should be {rel} {}", num(min)),
                ));
            }
        }
        if let Some(max) = self.maximum {
            let bad = if self.exclusive_maximum {
                n >= max
            } else {
                n > max
            };
            if bad {
                let rel = if self.exclusive_maximum {
                    "less than"
                } else {
                    "less than or equal to"
                };
                errs.push(FieldError::invalid(
                    path,
                    v.clone(),
                    format!("{shown} in body should be {rel} {}", num(max)),
                ));
            }
        }
        if let Some(m) = self.multiple_of
            && m != 0.0
            && (n / m).fract().abs() > 1e-9
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{shown} in body should be a multiple of {}", num(m)),
            ));
        }
    }

    fn validate_array(
        &self,
        items: &[Value],
        old: Option<&Value>,
        path: &str,
        shown: &str,
        errs: &mut Vec<FieldError>,
    ) {
        let n = items.len() as u64;
        if let Some(min) = self.min_items
            && n < min
        {
            errs.push(FieldError::invalid(
                path,
                Value::from(n),
                format!("{shown} in body should have at least {min} items"),
            ));
        }
        if let Some(max) = self.max_items
            && n > max
        {
            errs.push(FieldError {
                field: path.to_string(),
                kind: FieldErrorKind::TooMany {
                    actual: n as usize,
                    max: max as usize,
                },
            });
        }
        if self.unique_items || self.list_type.as_deref() == Some("set") {
            for (i, it) in items.iter().enumerate() {
                if items[..i].contains(it) {
                    errs.push(FieldError {
                        field: format!("{path}[{i}]"),
                        kind: FieldErrorKind::Invalid {
                            value: it.clone(),
                            detail: "Duplicate value".into(),
                        },
                    });
                }
            }
        }
        if self.list_type.as_deref() == Some("map") && !self.list_map_keys.is_empty() {
            for (i, it) in items.iter().enumerate() {
                let key = map_key(it, &self.list_map_keys);
                if items[..i]
                    .iter()
                    .any(|o| map_key(o, &self.list_map_keys) == key)
                {
                    errs.push(FieldError {
                        field: format!("{path}[{i}]"),
                        kind: FieldErrorKind::Invalid {
                            value: key.clone(),
                            detail: "Duplicate value".into(),
                        },
                    });
                }
            }
        }
        let Some(item_schema) = &self.items else {
            return;
        };
        let old_items = old.and_then(Value::as_array);
        for (i, it) in items.iter().enumerate() {
            // Old values are correlated only for associative lists, as the real server does.
            let old_it = match (self.list_type.as_deref(), old_items) {
                (Some("map"), Some(olds)) => {
                    let key = map_key(it, &self.list_map_keys);
                    olds.iter().find(|o| map_key(o, &self.list_map_keys) == key)
                }
                _ => None,
            };
            item_schema.validate_node(it, old_it, &format!("{path}[{i}]"), errs, false);
        }
    }

    fn validate_object(
        &self,
        map: &Map<String, Value>,
        old: Option<&Value>,
        path: &str,
        shown: &str,
        errs: &mut Vec<FieldError>,
        root: bool,
    ) {
        for r in &self.required {
            if !map.contains_key(r) {
                errs.push(FieldError::required(child(path, r)));
            }
        }
        let n = map.len() as u64;
        if let Some(min) = self.min_properties
            && n < min
        {
            errs.push(FieldError::invalid(
                path,
                Value::from(n),
                format!("{shown} in body should have at least {min} properties"),
            ));
        }
        if let Some(max) = self.max_properties
            && n > max
        {
            errs.push(FieldError::invalid(
                path,
                Value::from(n),
                format!("{shown} in body should have at most {max} properties"),
            ));
        }
        for (k, val) in map {
            if (root || self.embedded_resource)
                && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
            {
                continue;
            }
            let old_val = old.and_then(|o| o.get(k));
            if let Some(sub) = self.properties.get(k) {
                sub.validate_node(val, old_val, &child(path, k), errs, false);
            } else if let Some(sub) = &self.additional_properties {
                sub.validate_node(val, old_val, &format!("{path}[{k}]"), errs, false);
            }
        }
    }

    fn validate_rules(
        &self,
        v: &Value,
        old: Option<&Value>,
        path: &str,
        errs: &mut Vec<FieldError>,
    ) {
        for rule in &self.rules {
            let Some(program) = &rule.program else {
                continue;
            };
            if program.is_transition_rule() && old.is_none() {
                continue;
            }
            let field = match &rule.field_path {
                Some(fp) => format!(
                    "{path}{}",
                    if path.is_empty() {
                        fp.trim_start_matches('.').to_string()
                    } else {
                        fp.clone()
                    }
                ),
                None => path.to_string(),
            };
            let type_name = Value::String(
                self.type_
                    .clone()
                    .unwrap_or_else(|| json_type(v).to_string()),
            );
            match program.eval_bool(v, old) {
                Ok(true) => {}
                Ok(false) => {
                    let msg = rule
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("failed rule: {}", rule.rule));
                    errs.push(FieldError::invalid(field, type_name, msg));
                }
                Err(e) => errs.push(FieldError::invalid(
                    field,
                    type_name,
                    format!("{e} evaluating rule: {}", rule.rule),
                )),
            }
        }
    }
}

fn num(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn map_key(item: &Value, keys: &[String]) -> Value {
    Value::Array(
        keys.iter()
            .map(|k| item.get(k).cloned().unwrap_or(Value::Null))
            .collect(),
    )
}

/// The OpenAPI type name of a JSON value.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether a value satisfies a format; unknown formats pass, as in the real server.
pub fn format_ok(format: &str, v: &Value) -> bool {
    match (format, v) {
        ("int32", Value::Number(n)) => {
            n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) || !n.is_i64()
        }
        ("int64", Value::Number(n)) => n.as_i64().is_some() || !(n.is_u64()),
        (_, Value::String(s)) => string_format_ok(format, s),
        _ => true,
    }
}

fn string_format_ok(format: &str, s: &str) -> bool {
    match format {
        "cidr" => cidr_ok(s),
        "ipv4" => s.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<Ipv6Addr>().is_ok(),
        "ip" => s.parse::<IpAddr>().is_ok(),
        "date-time" | "datetime" => crate::meta::parse_rfc3339(s).is_some(),
        "date" => crate::meta::is_date(s),
        "byte" => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(s).is_ok()
        }
        "uuid" => {
            let b = s.as_bytes();
            b.len() == 36
                && b.iter().enumerate().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        *c == b'-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        }
        "hostname" => {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
        }
        "mac" => {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            matches!(parts.len(), 6 | 8 | 20)
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
        }
        "duration" => go_duration_ok(s),
        _ => true,
    }
}

/// Go's `net.ParseCIDR`: an address (not necessarily the network address) and a prefix length.
pub fn cidr_ok(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    if len.is_empty()
        || !len.bytes().all(|c| c.is_ascii_digit())
        || (len.len() > 1 && len.starts_with('0'))
    {
        return false;
    }
    let Ok(len) = len.parse::<u32>() else {
        return false;
    };
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => len <= 32,
        Ok(IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

fn go_duration_ok(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    if s == "0" {
        return true;
    }
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return false;
        }
        rest = &rest[n..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .iter()
            .find(|u| rest.starts_with(**u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool_schema() -> Schema {
        Schema::compile(&json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "has(self.spec)", "message": "spec is required"}],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["blocks"],
                    "properties": {
                        "disabled": {"type": "boolean", "default": false},
                        "blocks": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 2,
                            "items": {"type": "object", "properties": {
                                "cidr": {"type": "string", "format": "cidr"},
                                "start": {"type": "string", "format": "ipv4"},
                                "stop": {"type": "string", "format": "ipv6"}
                            }}
                        },
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "nullable": true},
                        "port": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535},
                        "since": {"type": "string", "format": "date-time"},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                },
                "status": {"type": "object", "properties": {"conditions": {"type": "array", "items": {"type": "object"}}}}
            }
        }))
        .unwrap()
    }

    fn check(obj: Value) -> (Value, Vec<String>, Vec<String>) {
        let schema = pool_schema();
        let mut obj = obj;
        let unknown = schema.normalize(&mut obj);
        let errs = schema
            .validate(&obj, None)
            .iter()
            .map(|e| e.to_string())
            .collect();
        (obj, unknown, errs)
    }

    // A pool with a CIDR outside IPv4 is refused with the field path and the real server's wording.
    #[test]
    fn bad_cidr_names_the_field() {
        let (_, _, errs) = check(
            json!({"apiVersion": "x", "kind": "Y", "metadata": {"name": "n"},
            "spec": {"blocks": [{"cidr": "300.1.1.0/24"}]}}),
        );
        assert_eq!(
            errs,
            vec![
                "spec.blocks[0].cidr: Invalid value: \"300.1.1.0/24\": spec.blocks[0].cidr in body must be of type cidr: \"300.1.1.0/24\""
            ]
        );
    }

    #[test]
    fn required_and_root_rule() {
        let (_, _, errs) = check(json!({"spec": {}}));
        assert_eq!(errs, vec!["spec.blocks: Required value"]);
        let (_, _, errs) = check(json!({"metadata": {}}));
        assert_eq!(
            errs,
            vec!["<nil>: Invalid value: \"object\": spec is required"]
        );
    }

    #[test]
    fn types_enums_patterns_bounds_and_formats() {
        let (_, _, errs) = check(json!({"spec": {
            "blocks": [], "mode": "c", "name": "ABC", "port": 70000, "since": "yesterday",
            "disabled": "no", "labels": {"a": 1}
        }}));
        assert!(
            errs.contains(
                &"spec.blocks: Invalid value: 0: spec.blocks in body should have at least 1 items"
                    .to_string()
            ),
            "{errs:?}"
        );
        assert!(errs.contains(
            &"spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"".to_string()
        ));
        assert!(
            errs.contains(
                &"spec.name: Invalid value: \"ABC\": spec.name in body should match '^[a-z]+$'"
                    .to_string()
            )
        );
        assert!(errs.contains(&"spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535".to_string()));
        assert!(errs.contains(&"spec.since: Invalid value: \"yesterday\": spec.since in body must be of type date-time: \"yesterday\"".to_string()));
        assert!(errs.contains(&"spec.disabled: Invalid value: \"string\": spec.disabled in body must be of type boolean: \"string\"".to_string()));
        assert!(errs.contains(&"spec.labels[a]: Invalid value: \"integer\": spec.labels[a] in body must be of type string: \"integer\"".to_string()));
        let (_, _, errs) = check(json!({"spec": {"blocks": [{}, {}, {}]}}));
        assert_eq!(
            errs,
            vec!["spec.blocks: Too many: 3: must have at most 2 items"]
        );
        let (_, _, errs) = check(
            json!({"spec": {"blocks": [{"start": "10.0.0.1", "stop": "fd00::1"}], "port": 2147483648u64}}),
        );
        assert!(
            errs.iter().any(|e| e.contains("must be of type int32")),
            "{errs:?}"
        );
    }

    #[test]
    fn pruning_nulls_and_defaults() {
        let (obj, unknown, errs) = check(
            json!({"apiVersion": "v", "kind": "K", "metadata": {"name": "n", "whatever": 1},
            "spec": {"blocks": [{"cidr": "10.0.0.0/8", "junk": 1}], "name": null, "mode": null,
                     "extra": {"anything": {"goes": true}}, "bogus": 2}}),
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(unknown, vec!["spec.blocks[0].junk", "spec.bogus"]);
        assert_eq!(obj["spec"]["disabled"], json!(false), "default applied");
        assert_eq!(obj["spec"]["name"], Value::Null, "nullable null kept");
        assert!(
            obj["spec"].get("mode").is_none(),
            "non-nullable null dropped"
        );
        assert_eq!(obj["spec"]["extra"]["anything"]["goes"], json!(true));
        assert_eq!(obj["metadata"]["whatever"], json!(1), "metadata untouched");
    }

    #[test]
    fn cidr_parsing_follows_go() {
        assert!(cidr_ok("172.18.250.0/24"));
        assert!(cidr_ok("172.18.250.1/24"));
        assert!(cidr_ok("fd00::/64"));
        assert!(!cidr_ok("300.1.1.0/24"));
        assert!(!cidr_ok("10.0.0.0/33"));
        assert!(!cidr_ok("10.0.0.0"));
        assert!(!cidr_ok("010.0.0.0/8"));
    }
}
