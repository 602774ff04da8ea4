//! Server-side apply and `metadata.managedFields`: field sets in the `FieldsV1` format, ownership
//! tracking for every write, conflicts between managers, and removal of fields a manager stopped
//! applying.
//!
//! Approximations: entries are keyed by (manager, operation, subresource) rather than also by
//! apiVersion; list shapes come from [`Shape`]; a removed associative-list item is kept while
//! another manager still owns any field inside it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::patch::{ListType, Shape};

/// A set of field paths, serialized as `FieldsV1` (`{"f:spec":{"f:replicas":{}}}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    /// The path ending here is itself a member (a leaf, or a list item: `"."`).
    pub member: bool,
    pub children: BTreeMap<String, FieldSet>,
}

/// What the field set of an object should include, by the endpoint that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (no status subresource).
    All,
    /// The main resource of a type with a status subresource: everything but `status`.
    Main,
    /// The status subresource: only `status`.
    Status,
}

const OWNED_METADATA: &[&str] = &["labels", "annotations", "finalizers", "ownerReferences"];

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn leaf() -> FieldSet {
        FieldSet {
            member: true,
            children: BTreeMap::new(),
        }
    }

    /// The fields an object sets, as the real server would attribute them to its writer.
    pub fn of_object(obj: &Value, shape: Shape<'_>, scope: Scope) -> FieldSet {
        let mut set = FieldSet::default();
        let Some(map) = obj.as_object() else {
            return set;
        };
        for (k, v) in map {
            match k.as_str() {
                "apiVersion" | "kind" => continue,
                "status" if scope == Scope::Main => continue,
                "metadata" => {
                    if scope == Scope::Status {
                        continue;
                    }
                    let mut meta = FieldSet::default();
                    if let Some(m) = v.as_object() {
                        for (mk, mv) in m
                            .iter()
                            .filter(|(mk, _)| OWNED_METADATA.contains(&mk.as_str()))
                        {
                            let child =
                                Self::of_value(mv, shape, &mut vec!["metadata".into(), mk.clone()]);
                            if !child.is_empty() {
                                meta.children.insert(format!("f:{mk}"), child);
                            }
                        }
                    }
                    if !meta.is_empty() {
                        set.children.insert("f:metadata".into(), meta);
                    }
                    continue;
                }
                _ if scope == Scope::Status && k != "status" => continue,
                _ => {}
            }
            let child = Self::of_value(v, shape, &mut vec![k.clone()]);
            if !child.is_empty() {
                set.children.insert(format!("f:{k}"), child);
            }
        }
        set
    }

    fn of_value(v: &Value, shape: Shape<'_>, path: &mut Vec<String>) -> FieldSet {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let mut set = FieldSet::default();
                for (k, child) in m {
                    path.push(k.clone());
                    set.children
                        .insert(format!("f:{k}"), Self::of_value(child, shape, path));
                    path.pop();
                }
                set
            }
            Value::Array(items) if !items.is_empty() => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                match shape.list_type(&names) {
                    ListType::Atomic => FieldSet::leaf(),
                    ListType::Set => {
                        let mut set = FieldSet::default();
                        for it in items {
                            set.children
                                .insert(format!("v:{}", canonical(it)), FieldSet::leaf());
                        }
                        set
                    }
                    ListType::Map(keys) => {
                        let mut set = FieldSet::default();
                        for (i, it) in items.iter().enumerate() {
                            let mut item = Self::of_value(it, shape, path);
                            item.member = true;
                            set.children.insert(item_path_key(it, &keys, i), item);
                        }
                        set
                    }
                }
            }
            _ => FieldSet::leaf(),
        }
    }

    /// Parses a `fieldsV1` object.
    pub fn from_fields_v1(v: &Value) -> FieldSet {
        let mut set = FieldSet::default();
        if let Some(m) = v.as_object() {
            if m.is_empty() {
                set.member = true;
            }
            for (k, child) in m {
                if k == "." {
                    set.member = true;
                } else {
                    set.children.insert(k.clone(), Self::from_fields_v1(child));
                }
            }
        }
        set
    }

    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (k, c) in &other.children {
            let merged = match out.children.get(k) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(k.clone(), merged);
        }
        out
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            if let Some(o) = other.children.get(k) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(k.clone(), i);
                }
            }
        }
        out
    }

    /// Every member path.
    pub fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// Whether the set has `path` or anything below it.
    pub fn touches(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => !self.is_empty(),
            Some((k, rest)) => self.children.get(k).is_some_and(|c| c.touches(rest)),
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((k, rest)) => self.children.get(k).is_some_and(|c| c.contains(rest)),
        }
    }
}

fn canonical(v: &Value) -> String {
    // serde_json maps may preserve insertion order; sort keys for a stable path element.
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(b.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

fn item_path_key(item: &Value, keys: &[String], index: usize) -> String {
    let mut k = BTreeMap::new();
    for key in keys {
        if let Some(v) = item.get(key) {
            k.insert(key.clone(), v.clone());
        }
    }
    if k.is_empty() {
        return format!("i:{index}");
    }
    let obj: Map<String, Value> = k.into_iter().collect();
    format!("k:{}", Value::Object(obj))
}

/// Finds the value a field path points at.
fn lookup<'v>(obj: &'v Value, path: &[String]) -> Option<&'v Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(obj);
    };
    let next = step(obj, first)?;
    lookup(next, rest)
}

fn step<'v>(v: &'v Value, elem: &str) -> Option<&'v Value> {
    if let Some(f) = elem.strip_prefix("f:") {
        return v.get(f);
    }
    index_of(v, elem).and_then(|i| v.get(i))
}

/// The position of the list item a `k:`, `v:` or `i:` path element names.
fn index_of(v: &Value, elem: &str) -> Option<usize> {
    let items = v.as_array()?;
    if let Some(k) = elem.strip_prefix("k:") {
        let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
        return items
            .iter()
            .position(|it| keys.iter().all(|(kk, kv)| it.get(kk) == Some(kv)));
    }
    if let Some(val) = elem.strip_prefix("v:") {
        let val: Value = serde_json::from_str(val).ok()?;
        return items.iter().position(|it| *it == val);
    }
    let i = elem.strip_prefix("i:")?.parse::<usize>().ok()?;
    (i < items.len()).then_some(i)
}

/// Removes the field a path points at, if present.
fn remove(v: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        if let Some(f) = first.strip_prefix("f:") {
            if let Some(m) = v.as_object_mut() {
                m.remove(f);
            }
        } else if let Some(i) = index_of(v, first) {
            v.as_array_mut().expect("list").remove(i);
        }
        return;
    }
    let next = match first.strip_prefix("f:") {
        Some(f) => v.get_mut(f),
        None => match index_of(v, first) {
            Some(i) => v.get_mut(i),
            None => None,
        },
    };
    if let Some(n) = next {
        remove(n, rest);
    }
}

/// Merges an applied configuration into the live object, list by list per its shape.
fn merge_applied(live: &mut Value, cfg: &Value, shape: Shape<'_>, path: &mut Vec<String>) {
    match (live.as_object_mut(), cfg.as_object()) {
        (Some(lm), Some(cm)) => {
            for (k, cv) in cm {
                if cv.is_null() {
                    lm.remove(k);
                    continue;
                }
                path.push(k.clone());
                match lm.get_mut(k) {
                    Some(lv) => merge_applied(lv, cv, shape, path),
                    None => {
                        lm.insert(k.clone(), cv.clone());
                    }
                }
                path.pop();
            }
        }
        _ => match (live.is_array(), cfg.as_array()) {
            (true, Some(citems)) => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                match shape.list_type(&names) {
                    ListType::Atomic => *live = cfg.clone(),
                    ListType::Set => {
                        let litems = live.as_array_mut().expect("array");
                        for it in citems {
                            if !litems.contains(it) {
                                litems.push(it.clone());
                            }
                        }
                    }
                    ListType::Map(keys) => {
                        let litems = live.as_array_mut().expect("array");
                        for it in citems {
                            let same = |o: &Value| keys.iter().all(|k| o.get(k) == it.get(k));
                            match litems.iter_mut().find(|o| same(o)) {
                                Some(existing) => merge_applied(existing, it, shape, path),
                                None => litems.push(it.clone()),
                            }
                        }
                    }
                }
            }
            _ => *live = cfg.clone(),
        },
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedEntry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: String,
    pub fields: FieldSet,
}

impl ManagedEntry {
    fn same_slot(&self, manager: &str, operation: &str, subresource: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource == subresource
    }

    pub fn to_value(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if !self.subresource.is_empty() {
            v["subresource"] = Value::String(self.subresource.clone());
        }
        v
    }

    pub fn from_value(v: &Value) -> Option<ManagedEntry> {
        Some(ManagedEntry {
            manager: v.get("manager")?.as_str()?.to_string(),
            operation: v
                .get("operation")
                .and_then(Value::as_str)
                .unwrap_or("Update")
                .to_string(),
            api_version: v
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            time: v
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            subresource: v
                .get("subresource")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            fields: v
                .get("fieldsV1")
                .map(FieldSet::from_fields_v1)
                .unwrap_or_default(),
        })
    }
}

pub fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    crate::meta::metadata(obj)
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(ManagedEntry::from_value).collect())
        .unwrap_or_default()
}

pub fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let meta = crate::meta::metadata_mut(obj);
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(ManagedEntry::to_value).collect()),
        );
    }
}

/// Who is writing, and through which endpoint.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub scope: Scope,
    pub time: &'a str,
}

/// A server-side apply that others' ownership refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflicts(pub Vec<(String, String)>);

/// Renders a field path as `.spec.containers[name="a"].image` for conflict messages.
pub fn render_path(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[{v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

/// Applies `config` over `live` (or over an empty object on create) for `writer`, updating
/// `managedFields`. Returns the new object or the conflicts.
pub fn server_side_apply(
    live: Option<&Value>,
    config: &Value,
    writer: &Writer<'_>,
    shape: Shape<'_>,
    force: bool,
) -> Result<Value, Conflicts> {
    let mut obj = live.cloned().unwrap_or_else(|| json!({}));
    let mut entries = live.map(read_managed).unwrap_or_default();
    let applied = FieldSet::of_object(config, shape, writer.scope);

    // Conflicts: fields the config sets to a different value than live, owned by someone else.
    let mut conflicts = Vec::new();
    if let Some(live) = live {
        for e in entries
            .iter()
            .filter(|e| !e.same_slot(writer.manager, "Apply", writer.subresource))
        {
            for path in applied.intersection(&e.fields).members() {
                let (want, have) = (lookup(config, &path), lookup(live, &path));
                let is_item = path
                    .last()
                    .is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"));
                if !is_item && want != have {
                    conflicts.push((e.manager.clone(), render_path(&path)));
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort();
        conflicts.dedup();
        return Err(Conflicts(conflicts));
    }
    if force {
        for e in entries
            .iter_mut()
            .filter(|e| !e.same_slot(writer.manager, "Apply", writer.subresource))
        {
            // Forced: the applier takes every field it sets away from the others.
            let mut taken = FieldSet::default();
            for path in applied.intersection(&e.fields).members() {
                let is_item = path
                    .last()
                    .is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"));
                if !is_item && lookup(config, &path) != live.and_then(|l| lookup(l, &path)) {
                    taken = taken.union(&single(&path));
                }
            }
            e.fields = e.fields.difference(&taken);
        }
    }

    // Fields this manager applied before and no longer applies, and nobody else owns, go away.
    let previous = entries
        .iter()
        .find(|e| e.same_slot(writer.manager, "Apply", writer.subresource))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let others: Vec<&ManagedEntry> = entries
        .iter()
        .filter(|e| !e.same_slot(writer.manager, "Apply", writer.subresource))
        .collect();
    let mut dropped: Vec<Vec<String>> = previous
        .difference(&applied)
        .members()
        .into_iter()
        .filter(|p| !others.iter().any(|o| o.fields.touches(p)))
        .collect();
    // Deepest first so list items are removed after their fields.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in &dropped {
        remove(&mut obj, p);
    }

    let mut cfg = config.clone();
    if let Some(m) = cfg.as_object_mut() {
        // Identity and server-owned metadata are not merged from the config.
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| {
                OWNED_METADATA.contains(&k.as_str())
                    || k == "name"
                    || k == "namespace"
                    || k == "generateName"
            });
        }
        match writer.scope {
            Scope::Main => {
                m.remove("status");
            }
            Scope::Status => m.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind"),
            Scope::All => {}
        }
    }
    merge_applied(&mut obj, &cfg, shape, &mut Vec::new());

    entries.retain(|e| !e.same_slot(writer.manager, "Apply", writer.subresource));
    // Ownership is recorded only for fields that still exist.
    let present = FieldSet::of_object(&obj, shape, Scope::All);
    for e in entries.iter_mut() {
        e.fields = e.fields.intersection(&present);
    }
    entries.retain(|e| !e.fields.is_empty());
    if !applied.is_empty() {
        entries.push(ManagedEntry {
            manager: writer.manager.to_string(),
            operation: "Apply".into(),
            api_version: writer.api_version.to_string(),
            time: writer.time.to_string(),
            subresource: writer.subresource.to_string(),
            fields: applied,
        });
    }
    write_managed(&mut obj, &entries);
    Ok(obj)
}

fn single(path: &[String]) -> FieldSet {
    let mut set = FieldSet::leaf();
    for elem in path.iter().rev() {
        let mut parent = FieldSet::default();
        parent.children.insert(elem.clone(), set);
        set = parent;
    }
    set
}

/// The fields of `new` that differ from `old`.
fn changed(old: Option<&Value>, new: &Value, shape: Shape<'_>, scope: Scope) -> FieldSet {
    let all = FieldSet::of_object(new, shape, scope);
    let Some(old) = old else { return all };
    let mut out = FieldSet::default();
    for path in all.members() {
        let is_item = path
            .last()
            .is_some_and(|l| l.starts_with("k:") || l.starts_with("v:"));
        let differs = if is_item {
            lookup(old, &path).is_none()
        } else {
            lookup(old, &path) != lookup(new, &path)
        };
        if differs {
            out = out.union(&single(&path));
        }
    }
    out
}

/// Records a non-apply write (create, update, patch) in `managedFields`, unless the client
/// replaced `managedFields` itself (then its list is kept as sent).
pub fn track_update(old: Option<&Value>, new: &mut Value, writer: &Writer<'_>, shape: Shape<'_>) {
    let sent = crate::meta::metadata(new)
        .and_then(|m| m.get("managedFields"))
        .cloned();
    let stored = old
        .and_then(crate::meta::metadata)
        .and_then(|m| m.get("managedFields"))
        .cloned();
    if sent != stored && sent.is_some() {
        // The client rewrote ownership (e.g. a client-side to server-side apply migration).
        let entries: Vec<ManagedEntry> = read_managed(new);
        write_managed(new, &entries);
        return;
    }
    let mut entries = old.map(read_managed).unwrap_or_default();
    let diff = changed(old, new, shape, writer.scope);
    let present = FieldSet::of_object(new, shape, Scope::All);
    for e in entries.iter_mut() {
        e.fields = e.fields.difference(&diff).intersection(&present);
    }
    let slot = entries
        .iter()
        .position(|e| e.same_slot(writer.manager, "Update", writer.subresource));
    if !diff.is_empty() {
        match slot {
            Some(i) => {
                entries[i].fields = entries[i].fields.union(&diff);
                entries[i].time = writer.time.to_string();
                entries[i].api_version = writer.api_version.to_string();
            }
            None => entries.push(ManagedEntry {
                manager: writer.manager.to_string(),
                operation: "Update".into(),
                api_version: writer.api_version.to_string(),
                time: writer.time.to_string(),
                subresource: writer.subresource.to_string(),
                fields: diff,
            }),
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    write_managed(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            subresource: "",
            scope: Scope::All,
            time: "2024-01-01T00:00:00Z",
        }
    }

    #[test]
    fn fields_v1_round_trip() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let set = FieldSet::of_object(&obj, Shape::builtin(), Scope::All);
        let v = set.to_fields_v1();
        assert_eq!(
            v,
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        assert_eq!(FieldSet::from_fields_v1(&v), set);
    }

    // Applying again without a field removes it; fields other managers own stay.
    #[test]
    fn apply_removes_fields_no_longer_applied() {
        let cfg1 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}});
        let obj = server_side_apply(None, &cfg1, &writer("helm"), Shape::builtin(), false).unwrap();
        assert_eq!(obj["data"], json!({"a": "1", "b": "2"}));
        // Another manager adds c with an update.
        let mut updated = obj.clone();
        updated["data"]["c"] = json!("3");
        track_update(
            Some(&obj),
            &mut updated,
            &writer("kubectl-edit"),
            Shape::builtin(),
        );
        let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        let obj2 = server_side_apply(
            Some(&updated),
            &cfg2,
            &writer("helm"),
            Shape::builtin(),
            false,
        )
        .unwrap();
        assert_eq!(obj2["data"], json!({"a": "1", "c": "3"}));
        let managers: Vec<String> = read_managed(&obj2)
            .iter()
            .map(|e| e.manager.clone())
            .collect();
        assert_eq!(managers, vec!["kubectl-edit", "helm"]);
    }

    #[test]
    fn apply_conflicts_unless_forced() {
        let cfg = json!({"data": {"a": "1"}});
        let obj = server_side_apply(None, &cfg, &writer("one"), Shape::builtin(), false).unwrap();
        let other = json!({"data": {"a": "2"}});
        let err = server_side_apply(Some(&obj), &other, &writer("two"), Shape::builtin(), false)
            .unwrap_err();
        assert_eq!(err.0, vec![("one".to_string(), ".data.a".to_string())]);
        // Same value: shared ownership, no conflict.
        assert!(
            server_side_apply(Some(&obj), &cfg, &writer("two"), Shape::builtin(), false).is_ok()
        );
        let forced =
            server_side_apply(Some(&obj), &other, &writer("two"), Shape::builtin(), true).unwrap();
        assert_eq!(forced["data"]["a"], "2");
        let entries = read_managed(&forced);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].manager, "two");
    }

    #[test]
    fn apply_merges_keyed_lists() {
        let live = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        let mut live_owned = live.clone();
        track_update(None, &mut live_owned, &writer("creator"), Shape::builtin());
        let cfg = json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}});
        let out = server_side_apply(
            Some(&live_owned),
            &cfg,
            &writer("applier"),
            Shape::builtin(),
            true,
        )
        .unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}])
        );
    }

    #[test]
    fn status_scope_only_tracks_status() {
        let obj = json!({"spec": {"x": 1}, "status": {"y": 2}, "metadata": {"labels": {"a": "b"}}});
        let set = FieldSet::of_object(&obj, Shape::builtin(), Scope::Status);
        assert_eq!(set.to_fields_v1(), json!({"f:status": {"f:y": {}}}));
        let set = FieldSet::of_object(&obj, Shape::builtin(), Scope::Main);
        assert!(
            !set.to_fields_v1()
                .as_object()
                .unwrap()
                .contains_key("f:status")
        );
    }
}
