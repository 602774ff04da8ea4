//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch, plus the
//! list shapes (atomic / set / map keyed by fields) that strategic merge and server-side apply need.
//!
//! Strategic merge for built-in kinds uses a table of the merge keys kubectl and the real server
//! use (containers/env/volumes/... by `name`, container ports by `containerPort`, Service ports by
//! `port`, volume mounts by `mountPath`, conditions by `type`, owner references by `uid`,
//! finalizers as a set). Lists not in the table are replaced whole, which is what the real server
//! does for lists without a `patchStrategy`. Custom resources take their list shapes from the
//! schema's `x-kubernetes-list-type` / `x-kubernetes-list-map-keys`.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::schema::Schema;

/// How a list merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole.
    Atomic,
    /// A set of scalars.
    Set,
    /// Items identified by these key fields.
    Map(Vec<String>),
}

/// Where list shapes come from: the CRD schema for custom resources, a table for built-ins.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub schema: Option<&'a Schema>,
}

impl<'a> Shape<'a> {
    pub fn builtin() -> Shape<'static> {
        Shape { schema: None }
    }

    pub fn custom(schema: Option<&'a Schema>) -> Shape<'a> {
        Shape { schema }
    }

    /// The shape of the list at `path` (field names from the root; list indices left out).
    pub fn list_type(&self, path: &[&str]) -> ListType {
        if path.first() == Some(&"metadata") {
            return builtin_list_type(path);
        }
        let Some(mut node) = self.schema else {
            return builtin_list_type(path);
        };
        for name in path {
            while let Some(items) = &node.items {
                node = items;
            }
            match node.field(name) {
                Some(next) => node = next,
                None => return ListType::Atomic,
            }
        }
        match (node.list_type.as_deref(), node.list_map_keys.is_empty()) {
            (Some("map"), false) => ListType::Map(node.list_map_keys.clone()),
            (Some("set"), _) => ListType::Set,
            _ => ListType::Atomic,
        }
    }
}

const CONTAINER_LISTS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

fn builtin_list_type(path: &[&str]) -> ListType {
    let map = |keys: &[&str]| ListType::Map(keys.iter().map(|k| k.to_string()).collect());
    let n = path.len();
    let Some(&last) = path.last() else {
        return ListType::Atomic;
    };
    let parent = if n >= 2 { Some(path[n - 2]) } else { None };
    let in_container = parent.is_some_and(|p| CONTAINER_LISTS.contains(&p));
    match last {
        _ if CONTAINER_LISTS.contains(&last) => map(&["name"]),
        "ports" if in_container => map(&["containerPort", "protocol"]),
        "ports" if path == ["spec", "ports"] => map(&["port", "protocol"]),
        "env" if in_container => map(&["name"]),
        "volumeMounts" if in_container => map(&["mountPath"]),
        "volumeDevices" if in_container => map(&["devicePath"]),
        "volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates" => map(&["name"]),
        "hostAliases" => map(&["ip"]),
        "conditions" => map(&["type"]),
        "topologySpreadConstraints" => map(&["topologyKey", "whenUnsatisfiable"]),
        "addresses" if parent == Some("status") => map(&["type"]),
        "ownerReferences" if parent == Some("metadata") => map(&["uid"]),
        "finalizers" if parent == Some("metadata") => ListType::Set,
        _ => ListType::Atomic,
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(doc: &mut Value, patch: &Value) {
    json_patch::merge(doc, patch);
}

/// RFC 6902 JSON patch.
pub fn json_patch(doc: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(doc, &ops).map_err(|e| {
        let mut err = ApiError::bad_request(format!(
            "the server rejected our request due to an error in our request: {e}"
        ));
        err.code = 422;
        err.reason = "Invalid";
        err
    })
}

/// Strategic merge patch with the `$patch`, `$setElementOrder/`, `$retainKeys` and
/// `$deleteFromPrimitiveList/` directives.
pub fn strategic_merge(doc: &mut Value, patch: &Value, shape: Shape<'_>) -> Result<(), ApiError> {
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "strategic merge patch must be a JSON object",
        ));
    }
    let mut path = Vec::new();
    merge_object(doc, patch, shape, &mut path)
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| !is_directive_item(x))
                .map(strip_directives)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_directive_item(v: &Value) -> bool {
    v.get("$patch").is_some()
}

fn merge_object(
    doc: &mut Value,
    patch: &Value,
    shape: Shape<'_>,
    path: &mut Vec<String>,
) -> Result<(), ApiError> {
    let Some(p) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *doc = strip_directives(patch);
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch type: {other}"
            )));
        }
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if let Some(order) = v.as_array() {
                orders.push((field.to_string(), order.clone()));
            }
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(remove)) = (
                doc.get_mut(field).and_then(Value::as_array_mut),
                v.as_array(),
            ) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let map = doc.as_object_mut().expect("object");
        if v.is_null() {
            map.remove(k);
            continue;
        }
        path.push(k.clone());
        match v {
            Value::Object(_) => {
                if v.get("$patch").and_then(Value::as_str) == Some("delete") {
                    map.remove(k);
                } else {
                    let slot = map
                        .entry(k.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    merge_object(slot, v, shape, path)?;
                }
            }
            Value::Array(items) => {
                let names: Vec<&str> = path.iter().map(String::as_str).collect();
                let lt = shape.list_type(&names);
                let slot = map
                    .entry(k.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                merge_list(slot, items, &lt, shape, path)?;
            }
            _ => {
                map.insert(k.clone(), v.clone());
            }
        }
        path.pop();
    }
    if let Some(retain) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        if let Some(map) = doc.as_object_mut() {
            map.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    for (field, order) in orders {
        path.push(field.clone());
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        let lt = shape.list_type(&names);
        path.pop();
        if let Some(list) = doc.get_mut(&field).and_then(Value::as_array_mut) {
            reorder(list, &order, &lt);
        }
    }
    Ok(())
}

fn item_key<'v>(item: &'v Value, keys: &[String]) -> Option<&'v Value> {
    keys.first().and_then(|k| item.get(k))
}

fn merge_list(
    doc: &mut Value,
    items: &[Value],
    lt: &ListType,
    shape: Shape<'_>,
    path: &mut Vec<String>,
) -> Result<(), ApiError> {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *doc = Value::Array(
            items
                .iter()
                .filter(|x| !is_directive_item(x))
                .map(strip_directives)
                .collect(),
        );
        return Ok(());
    }
    match lt {
        ListType::Atomic => {
            *doc = strip_directives(&Value::Array(items.to_vec()));
        }
        ListType::Set => {
            let list = ensure_array(doc);
            for it in items {
                if !list.contains(it) {
                    list.push(it.clone());
                }
            }
        }
        ListType::Map(keys) => {
            let list = ensure_array(doc);
            for it in items {
                let Some(key) = item_key(it, keys).cloned() else {
                    if it.is_object() {
                        return Err(ApiError::bad_request(format!(
                            "map: {} does not contain declared merge key: {}",
                            it,
                            keys.first().map(String::as_str).unwrap_or("")
                        )));
                    }
                    if !list.contains(it) {
                        list.push(it.clone());
                    }
                    continue;
                };
                let pos = list.iter().position(|o| item_key(o, keys) == Some(&key));
                if it.get("$patch").and_then(Value::as_str) == Some("delete") {
                    list.retain(|o| item_key(o, keys) != Some(&key));
                    continue;
                }
                match pos {
                    Some(i) => merge_object(&mut list[i], it, shape, path)?,
                    None => list.push(strip_directives(it)),
                }
            }
        }
    }
    Ok(())
}

fn ensure_array(v: &mut Value) -> &mut Vec<Value> {
    if !v.is_array() {
        *v = Value::Array(Vec::new());
    }
    v.as_array_mut().expect("array")
}

fn reorder(list: &mut Vec<Value>, order: &[Value], lt: &ListType) {
    let position = |item: &Value| -> Option<usize> {
        match lt {
            ListType::Map(keys) => {
                let k = item_key(item, keys)?;
                order.iter().position(|o| item_key(o, keys) == Some(k))
            }
            _ => order.iter().position(|o| o == item),
        }
    };
    // Stable: ordered items in the given order, then the rest in their current order.
    let mut indexed: Vec<(usize, usize, Value)> = list
        .drain(..)
        .enumerate()
        .map(|(i, v)| (position(&v).unwrap_or(usize::MAX), i, v))
        .collect();
    indexed.sort_by_key(|(p, i, _)| (*p, *i));
    list.extend(indexed.into_iter().map(|(_, _, v)| v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value) -> Value {
        let mut d = doc;
        strategic_merge(&mut d, &patch, Shape::builtin()).unwrap();
        d
    }

    // Containers merge by name, their env by name and ports by containerPort; other fields merge.
    #[test]
    fn containers_env_and_ports_merge_by_key() {
        let doc = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}], "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}], "ports": [{"containerPort": 443}]}
        ]}}}});
        let out = smp(doc, patch);
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}])
        );
        assert_eq!(
            cs[0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 443}])
        );
        assert_eq!(cs[1]["image"], "b:1");
    }

    #[test]
    fn directives() {
        let doc = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
            "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}], "selector": {"a": "b"}}});
        let patch = json!({
            "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["c"], "labels": {"y": null}},
            "spec": {"ports": [{"port": 80, "$patch": "delete"}, {"port": 8080, "name": "alt"}],
                     "$setElementOrder/ports": [{"port": 8080}, {"port": 443}],
                     "selector": {"$patch": "replace", "c": "d"}}
        });
        let out = smp(doc, patch);
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(out["metadata"]["labels"], json!({"x": "1"}));
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 8080, "name": "alt"}, {"port": 443, "name": "https"}])
        );
        assert_eq!(out["spec"]["selector"], json!({"c": "d"}));
    }

    #[test]
    fn unkeyed_lists_are_replaced() {
        let out = smp(
            json!({"rules": [{"verbs": ["get"]}]}),
            json!({"rules": [{"verbs": ["list"]}]}),
        );
        assert_eq!(out["rules"], json!([{"verbs": ["list"]}]));
    }

    #[test]
    fn merge_and_json_patch() {
        let mut d = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut d, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(d, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
        json_patch(&mut d, &json!([{"op": "add", "path": "/l/-", "value": 4}, {"op": "replace", "path": "/a/c", "value": 5}])).unwrap();
        assert_eq!(d, json!({"a": {"c": 5, "d": 3}, "l": [3, 4]}));
        let err =
            json_patch(&mut d, &json!([{"op": "test", "path": "/a/c", "value": 6}])).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(
            json_patch(&mut d, &json!({"op": "nope"})).unwrap_err().code,
            400
        );
    }

    #[test]
    fn schema_list_types() {
        let schema = Schema::compile(&json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "blocks": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["cidr"],
                       "items": {"type": "object", "properties": {"cidr": {"type": "string"}}}},
            "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}
        }}}}))
        .unwrap();
        let shape = Shape::custom(Some(&schema));
        assert_eq!(
            shape.list_type(&["spec", "blocks"]),
            ListType::Map(vec!["cidr".into()])
        );
        assert_eq!(shape.list_type(&["spec", "tags"]), ListType::Set);
        assert_eq!(shape.list_type(&["spec", "other"]), ListType::Atomic);
        assert_eq!(shape.list_type(&["metadata", "finalizers"]), ListType::Set);
    }
}
