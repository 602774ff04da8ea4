//! Server-side printing: `meta.k8s.io/v1` `Table`s for `kubectl get`, with a CRD's
//! additionalPrinterColumns (JSONPath with filters) and kubectl-like columns for built-ins.

use serde_json::{Value, json};

use crate::meta::{human_duration, now_secs, parse_rfc3339};
use crate::registry::{PrinterColumn, ResourceType};

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    Filter(Vec<Step>, Option<(String, Value)>),
}

/// The JSONPath subset printer columns use: `.a.b`, `['a.b']`, `[0]`, `[-1]`, `[*]`,
/// `[?(@.type=="Ready")]` (with `== != < <= > >=` or bare existence), optionally in `{}`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath {
    steps: Vec<Step>,
}

impl JsonPath {
    pub fn parse(src: &str) -> Result<JsonPath, String> {
        let s = src.trim();
        let s = s
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .unwrap_or(s);
        let s = s.strip_prefix('$').unwrap_or(s);
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        let chars: Vec<char> = s.chars().collect();
        let (steps, end) = parse_steps(&chars, 0, false)?;
        if end != chars.len() {
            return Err(format!("unexpected {:?} in JSONPath {src:?}", chars[end]));
        }
        Ok(JsonPath { steps })
    }

    /// All values the path selects.
    pub fn find<'v>(&self, v: &'v Value) -> Vec<&'v Value> {
        eval_steps(&self.steps, v)
    }
}

fn parse_steps(c: &[char], mut i: usize, in_filter: bool) -> Result<(Vec<Step>, usize), String> {
    let mut steps = Vec::new();
    while i < c.len() {
        match c[i] {
            '.' => {
                i += 1;
                let start = i;
                while i < c.len() && (c[i].is_alphanumeric() || matches!(c[i], '_' | '-' | '/')) {
                    i += 1;
                }
                if i == start {
                    if c.get(i) == Some(&'*') {
                        i += 1;
                        steps.push(Step::Wildcard);
                        continue;
                    }
                    return Err("expected a field name after '.'".into());
                }
                steps.push(Step::Field(c[start..i].iter().collect()));
            }
            '[' => {
                i += 1;
                match c.get(i) {
                    Some('*') => {
                        if c.get(i + 1) != Some(&']') {
                            return Err("expected ']'".into());
                        }
                        i += 2;
                        steps.push(Step::Wildcard);
                    }
                    Some('\'') | Some('"') => {
                        let q = c[i];
                        let start = i + 1;
                        let end = c[start..]
                            .iter()
                            .position(|x| *x == q)
                            .ok_or("unterminated quote")?
                            + start;
                        if c.get(end + 1) != Some(&']') {
                            return Err("expected ']'".into());
                        }
                        steps.push(Step::Field(c[start..end].iter().collect()));
                        i = end + 2;
                    }
                    Some('?') => {
                        if c.get(i + 1) != Some(&'(') || c.get(i + 2) != Some(&'@') {
                            return Err("expected '?(@' in filter".into());
                        }
                        let (sub, mut j) = parse_steps(c, i + 3, true)?;
                        while c.get(j) == Some(&' ') {
                            j += 1;
                        }
                        let mut cmp = None;
                        if c.get(j) != Some(&')') {
                            let op_start = j;
                            while j < c.len() && matches!(c[j], '=' | '!' | '<' | '>') {
                                j += 1;
                            }
                            let op: String = c[op_start..j].iter().collect();
                            if !["==", "!=", "<", "<=", ">", ">="].contains(&op.as_str()) {
                                return Err(format!("unsupported filter operator {op:?}"));
                            }
                            while c.get(j) == Some(&' ') {
                                j += 1;
                            }
                            let (lit, next) = parse_literal(c, j)?;
                            j = next;
                            while c.get(j) == Some(&' ') {
                                j += 1;
                            }
                            cmp = Some((op, lit));
                        }
                        if c.get(j) != Some(&')') || c.get(j + 1) != Some(&']') {
                            return Err("expected ')]' to close the filter".into());
                        }
                        steps.push(Step::Filter(sub, cmp));
                        i = j + 2;
                    }
                    _ => {
                        let start = i;
                        while i < c.len() && (c[i].is_ascii_digit() || c[i] == '-') {
                            i += 1;
                        }
                        let n: String = c[start..i].iter().collect();
                        let n: i64 = n
                            .parse()
                            .map_err(|_| format!("invalid array index {n:?}"))?;
                        if c.get(i) != Some(&']') {
                            return Err("expected ']'".into());
                        }
                        i += 1;
                        steps.push(Step::Index(n));
                    }
                }
            }
            _ if in_filter => return Ok((steps, i)),
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok((steps, i))
}

fn parse_literal(c: &[char], i: usize) -> Result<(Value, usize), String> {
    match c.get(i) {
        Some('"') | Some('\'') => {
            let q = c[i];
            let end = c[i + 1..]
                .iter()
                .position(|x| *x == q)
                .ok_or("unterminated string")?
                + i
                + 1;
            Ok((Value::String(c[i + 1..end].iter().collect()), end + 1))
        }
        _ => {
            let start = i;
            let mut j = i;
            while j < c.len() && !matches!(c[j], ')' | ' ') {
                j += 1;
            }
            let text: String = c[start..j].iter().collect();
            let v = match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => serde_json::from_str::<Value>(&text)
                    .map_err(|_| format!("invalid literal {text:?}"))?,
            };
            Ok((v, j))
        }
    }
}

fn eval_steps<'v>(steps: &[Step], v: &'v Value) -> Vec<&'v Value> {
    let mut cur = vec![v];
    for step in steps {
        let mut next = Vec::new();
        for x in cur {
            match step {
                Step::Field(f) => next.extend(x.get(f)),
                Step::Index(n) => {
                    if let Some(a) = x.as_array() {
                        let idx = if *n < 0 { a.len() as i64 + n } else { *n };
                        next.extend(usize::try_from(idx).ok().and_then(|i| a.get(i)));
                    }
                }
                Step::Wildcard => match x {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter(sub, cmp) => {
                    if let Some(a) = x.as_array() {
                        for item in a {
                            let found = eval_steps(sub, item);
                            let keep = match cmp {
                                None => !found.is_empty(),
                                Some((op, lit)) => found.iter().any(|f| compare(f, op, lit)),
                            };
                            if keep {
                                next.push(item);
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

fn compare(a: &Value, op: &str, b: &Value) -> bool {
    let ord = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    };
    use std::cmp::Ordering::*;
    match (op, ord) {
        ("==", Some(Equal)) => true,
        ("!=", Some(o)) => o != Equal,
        ("!=", None) => true,
        ("<", Some(Less)) => true,
        ("<=", Some(Less | Equal)) => true,
        (">", Some(Greater)) => true,
        (">=", Some(Greater | Equal)) => true,
        _ => false,
    }
}

/// The cell a CRD printer column shows for an object, typed like the real server's.
pub fn cell(column: &PrinterColumn, path: &JsonPath, obj: &Value, now: i64) -> Value {
    let Some(v) = path.find(obj).into_iter().next() else {
        return Value::Null;
    };
    match column.type_.as_str() {
        "integer" => v.as_i64().map(Value::from).unwrap_or(Value::Null),
        "number" => v.as_f64().map(Value::from).unwrap_or(Value::Null),
        "boolean" => v.as_bool().map(Value::Bool).unwrap_or(Value::Null),
        "date" => match v.as_str().map(parse_rfc3339) {
            Some(Some(t)) => Value::String(human_duration(now - t)),
            Some(None) => Value::String("<invalid>".into()),
            None => Value::Null,
        },
        _ => Value::String(match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
    }
}

fn age(obj: &Value, now: i64) -> Value {
    match obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339)
    {
        Some(t) => Value::String(human_duration(now - t)),
        None => Value::String("<unknown>".into()),
    }
}

fn s(obj: &Value, ptr: &str) -> String {
    match obj.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn or_none(v: String) -> Value {
    Value::String(if v.is_empty() { "<none>".into() } else { v })
}

fn len_of(obj: &Value, ptr: &str) -> i64 {
    match obj.pointer(ptr) {
        Some(Value::Object(m)) => m.len() as i64,
        Some(Value::Array(a)) => a.len() as i64,
        _ => 0,
    }
}

fn int(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

type CellFn = fn(&Value, i64) -> Value;

fn col(name: &str, type_: &str, priority: i64) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: String::new(),
        priority,
        json_path: String::new(),
    }
}

fn service_ports(o: &Value) -> String {
    let ports = o
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts: Vec<String> = ports
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{}/{}", s(p, "/port"), np, proto),
                None => format!("{}/{}", s(p, "/port"), proto),
            }
        })
        .collect();
    parts.join(",")
}

fn external_ip(o: &Value) -> String {
    let mut ips: Vec<String> = o
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    i.get("ip")
                        .or(i.get("hostname"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(ext) = o.pointer("/spec/externalIPs").and_then(Value::as_array) {
        ips.extend(ext.iter().filter_map(|v| v.as_str().map(str::to_string)));
    }
    if ips.is_empty() {
        if s(o, "/spec/type") == "LoadBalancer" {
            "<pending>".into()
        } else {
            "<none>".into()
        }
    } else {
        ips.join(",")
    }
}

fn pod_ready(o: &Value) -> String {
    let total = len_of(o, "/spec/containers");
    let ready = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
                .count()
        })
        .unwrap_or(0);
    format!("{ready}/{total}")
}

fn node_status(o: &Value) -> String {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(o: &Value) -> String {
    let mut roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn node_address(o: &Value, kind: &str) -> String {
    o.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x.get("type") == Some(&json!(kind))))
        .and_then(|x| x.get("address"))
        .and_then(Value::as_str)
        .unwrap_or("<none>")
        .to_string()
}

fn slice_endpoints(o: &Value) -> String {
    let addrs: Vec<String> = o
        .get("endpoints")
        .and_then(Value::as_array)
        .map(|eps| {
            eps.iter()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if addrs.is_empty() {
        return "<unset>".into();
    }
    let shown: Vec<String> = addrs.iter().take(3).cloned().collect();
    if addrs.len() > 3 {
        format!("{} + {} more...", shown.join(","), addrs.len() - 3)
    } else {
        shown.join(",")
    }
}

fn slice_ports(o: &Value) -> String {
    let ports: Vec<String> = o
        .get("ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p.get("port").map(|x| x.to_string()))
                .collect()
        })
        .unwrap_or_default();
    if ports.is_empty() {
        "<unset>".into()
    } else {
        ports.join(",")
    }
}

fn container_field(o: &Value, field: &str) -> String {
    let containers = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    containers
        .iter()
        .filter_map(|c| c.get(field).and_then(Value::as_str).map(str::to_string))
        .collect::<Vec<_>>()
        .join(",")
}

fn match_labels(o: &Value, ptr: &str) -> String {
    let m = o
        .pointer(ptr)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if m.is_empty() {
        return "<none>".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Columns for built-in kinds (a kubectl-like subset) as (definition, cell function).
fn builtin_columns(rt: &ResourceType) -> Vec<(PrinterColumn, CellFn)> {
    let name: (PrinterColumn, CellFn) = (col("Name", "string", 0), |o, _| {
        Value::String(crate::meta::name(o).to_string())
    });
    let age_col: (PrinterColumn, CellFn) = (col("Age", "string", 0), age);
    let mut cols = vec![name];
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => cols.push((col("Status", "string", 0), |o, _| {
            Value::String(s(o, "/status/phase"))
        })),
        ("", "Node") => {
            cols.push((col("Status", "string", 0), |o, _| {
                Value::String(node_status(o))
            }));
            cols.push((col("Roles", "string", 0), |o, _| {
                Value::String(node_roles(o))
            }));
            cols.push(age_col);
            cols.push((col("Version", "string", 0), |o, _| {
                Value::String(s(o, "/status/nodeInfo/kubeletVersion"))
            }));
            cols.push((col("Internal-IP", "string", 1), |o, _| {
                Value::String(node_address(o, "InternalIP"))
            }));
            cols.push((col("External-IP", "string", 1), |o, _| {
                Value::String(node_address(o, "ExternalIP"))
            }));
            return cols;
        }
        ("", "Pod") => {
            cols.push((col("Ready", "string", 0), |o, _| {
                Value::String(pod_ready(o))
            }));
            cols.push((col("Status", "string", 0), |o, _| {
                let reason = s(o, "/status/reason");
                let phase = s(o, "/status/phase");
                Value::String(if crate::meta::is_deleting(o) {
                    "Terminating".into()
                } else if !reason.is_empty() {
                    reason
                } else if phase.is_empty() {
                    "Pending".into()
                } else {
                    phase
                })
            }));
            cols.push((col("Restarts", "integer", 0), |o, _| {
                let n: i64 = o
                    .pointer("/status/containerStatuses")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|c| int(c, "/restartCount")).sum())
                    .unwrap_or(0);
                Value::from(n)
            }));
            cols.push(age_col);
            cols.push((col("IP", "string", 1), |o, _| {
                or_none(s(o, "/status/podIP"))
            }));
            cols.push((col("Node", "string", 1), |o, _| {
                or_none(s(o, "/spec/nodeName"))
            }));
            return cols;
        }
        ("", "Service") => {
            cols.push((col("Type", "string", 0), |o, _| {
                Value::String(s(o, "/spec/type"))
            }));
            cols.push((col("Cluster-IP", "string", 0), |o, _| {
                or_none(s(o, "/spec/clusterIP"))
            }));
            cols.push((col("External-IP", "string", 0), |o, _| {
                Value::String(external_ip(o))
            }));
            cols.push((col("Port(s)", "string", 0), |o, _| {
                or_none(service_ports(o))
            }));
            cols.push(age_col);
            cols.push((col("Selector", "string", 1), |o, _| {
                Value::String(match_labels(o, "/spec/selector"))
            }));
            return cols;
        }
        ("", "ConfigMap") => cols.push((col("Data", "integer", 0), |o, _| {
            Value::from(len_of(o, "/data") + len_of(o, "/binaryData"))
        })),
        ("", "Secret") => {
            cols.push((col("Type", "string", 0), |o, _| {
                Value::String(s(o, "/type"))
            }));
            cols.push((col("Data", "integer", 0), |o, _| {
                Value::from(len_of(o, "/data"))
            }));
        }
        ("", "ServiceAccount") => cols.push((col("Secrets", "integer", 0), |o, _| {
            Value::from(len_of(o, "/secrets"))
        })),
        ("", "Endpoints") => cols.push((col("Endpoints", "string", 0), |o, _| {
            let mut eps = Vec::new();
            for subset in o
                .get("subsets")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|p| p.iter().map(|x| int(x, "/port")).collect())
                    .unwrap_or_default();
                for a in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    let ip = s(&a, "/ip");
                    if ports.is_empty() {
                        eps.push(ip.clone())
                    } else {
                        eps.extend(ports.iter().map(|p| format!("{ip}:{p}")))
                    }
                }
            }
            or_none(eps.join(","))
        })),
        ("", "Event") | ("events.k8s.io", "Event") => {
            return vec![
                (col("Last Seen", "string", 0), |o, now| {
                    let t = [
                        "/lastTimestamp",
                        "/eventTime",
                        "/series/lastObservedTime",
                        "/metadata/creationTimestamp",
                    ]
                    .iter()
                    .find_map(|p| o.pointer(p).and_then(Value::as_str).and_then(parse_rfc3339));
                    Value::String(
                        t.map(|t| human_duration(now - t))
                            .unwrap_or_else(|| "<unknown>".into()),
                    )
                }),
                (col("Type", "string", 0), |o, _| {
                    Value::String(s(o, "/type"))
                }),
                (col("Reason", "string", 0), |o, _| {
                    Value::String(s(o, "/reason"))
                }),
                (col("Object", "string", 0), |o, _| {
                    let r = o
                        .get("involvedObject")
                        .or(o.get("regarding"))
                        .cloned()
                        .unwrap_or_default();
                    Value::String(format!(
                        "{}/{}",
                        s(&r, "/kind").to_lowercase(),
                        s(&r, "/name")
                    ))
                }),
                (col("Message", "string", 0), |o, _| {
                    Value::String(if o.get("message").is_some() {
                        s(o, "/message")
                    } else {
                        s(o, "/note")
                    })
                }),
            ];
        }
        ("apps", "Deployment") | ("apps", "StatefulSet") | ("apps", "ReplicaSet") => {
            cols.push((col("Ready", "string", 0), |o, _| {
                let want = o
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                Value::String(format!("{}/{}", int(o, "/status/readyReplicas"), want))
            }));
            cols.push((col("Up-to-date", "integer", 0), |o, _| {
                Value::from(int(o, "/status/updatedReplicas"))
            }));
            cols.push((col("Available", "integer", 0), |o, _| {
                Value::from(int(o, "/status/availableReplicas"))
            }));
            cols.push(age_col);
            cols.push((col("Containers", "string", 1), |o, _| {
                Value::String(container_field(o, "name"))
            }));
            cols.push((col("Images", "string", 1), |o, _| {
                Value::String(container_field(o, "image"))
            }));
            cols.push((col("Selector", "string", 1), |o, _| {
                Value::String(match_labels(o, "/spec/selector/matchLabels"))
            }));
            return cols;
        }
        ("apps", "DaemonSet") => {
            cols.push((col("Desired", "integer", 0), |o, _| {
                Value::from(int(o, "/status/desiredNumberScheduled"))
            }));
            cols.push((col("Current", "integer", 0), |o, _| {
                Value::from(int(o, "/status/currentNumberScheduled"))
            }));
            cols.push((col("Ready", "integer", 0), |o, _| {
                Value::from(int(o, "/status/numberReady"))
            }));
            cols.push((col("Up-to-date", "integer", 0), |o, _| {
                Value::from(int(o, "/status/updatedNumberScheduled"))
            }));
            cols.push((col("Available", "integer", 0), |o, _| {
                Value::from(int(o, "/status/numberAvailable"))
            }));
            cols.push((col("Node Selector", "string", 0), |o, _| {
                Value::String(match_labels(o, "/spec/template/spec/nodeSelector"))
            }));
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            cols.push((col("AddressType", "string", 0), |o, _| {
                Value::String(s(o, "/addressType"))
            }));
            cols.push((col("Ports", "string", 0), |o, _| {
                Value::String(slice_ports(o))
            }));
            cols.push((col("Endpoints", "string", 0), |o, _| {
                Value::String(slice_endpoints(o))
            }));
        }
        ("coordination.k8s.io", "Lease") => cols.push((col("Holder", "string", 0), |o, _| {
            Value::String(s(o, "/spec/holderIdentity"))
        })),
        ("rbac.authorization.k8s.io", "RoleBinding")
        | ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            cols.push((col("Role", "string", 0), |o, _| {
                Value::String(format!(
                    "{}/{}",
                    s(o, "/roleRef/kind"),
                    s(o, "/roleRef/name")
                ))
            }));
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            cols.push((col("Created At", "date", 0), |o, _| {
                Value::String(s(o, "/metadata/creationTimestamp"))
            }));
            return cols;
        }
        _ => {}
    }
    cols.push(age_col);
    cols
}

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

/// Builds a `Table` for objects of one type at one version.
pub fn table(
    rt: &ResourceType,
    version: &str,
    objects: &[&Value],
    include: IncludeObject,
    resource_version: &str,
    cont: Option<&str>,
) -> Value {
    let now = now_secs();
    let mut defs = Vec::new();
    let mut rows: Vec<Vec<Value>> = vec![Vec::new(); objects.len()];
    if rt.custom {
        defs.push(col("Name", "string", 0));
        for (row, o) in rows.iter_mut().zip(objects) {
            row.push(Value::String(crate::meta::name(o).to_string()));
        }
        let columns = rt
            .version(version)
            .map(|v| v.columns.clone())
            .unwrap_or_default();
        for c in &columns {
            defs.push(c.clone());
            let path = JsonPath::parse(&c.json_path).ok();
            for (row, o) in rows.iter_mut().zip(objects) {
                row.push(
                    path.as_ref()
                        .map(|p| cell(c, p, o, now))
                        .unwrap_or(Value::Null),
                );
            }
        }
    } else {
        for (def, f) in builtin_columns(rt) {
            defs.push(def);
            for (row, o) in rows.iter_mut().zip(objects) {
                row.push(f(o, now));
            }
        }
    }
    let column_definitions: Vec<Value> = defs
        .iter()
        .map(|d| {
            json!({"name": d.name, "type": if d.type_ == "date" { "string" } else { d.type_.as_str() },
                   "format": d.format, "description": d.description, "priority": d.priority})
        })
        .collect();
    let rows: Vec<Value> = rows
        .into_iter()
        .zip(objects)
        .map(|(cells, o)| {
            let mut row = json!({"cells": cells});
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))});
                }
                IncludeObject::Object => row["object"] = (*o).clone(),
            }
            row
        })
        .collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(c) = cont {
        meta["continue"] = Value::String(c.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": column_definitions, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj() -> Value {
        json!({"metadata": {"name": "default", "creationTimestamp": crate::meta::format_rfc3339(now_secs() - 300)},
               "spec": {"disabled": false, "blocks": [{"cidr": "10.0.0.0/24"}, {"cidr": "10.0.1.0/24"}], "a.b": "dotted"},
               "status": {"conditions": [
                   {"type": "cilium.io/IPsAvailable", "status": "True", "message": "254"},
                   {"type": "cilium.io/PoolConflict", "status": "False", "message": "ok"}]}})
    }

    #[test]
    fn jsonpath_fields_indices_wildcards_filters() {
        let o = obj();
        let one = |p: &str| {
            JsonPath::parse(p)
                .unwrap()
                .find(&o)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(one(".spec.disabled"), vec![json!(false)]);
        assert_eq!(one(".spec.blocks[1].cidr"), vec![json!("10.0.1.0/24")]);
        assert_eq!(one(".spec.blocks[-1].cidr"), vec![json!("10.0.1.0/24")]);
        assert_eq!(
            one("{.spec.blocks[*].cidr}"),
            vec![json!("10.0.0.0/24"), json!("10.0.1.0/24")]
        );
        assert_eq!(one(".spec['a.b']"), vec![json!("dotted")]);
        assert_eq!(
            one(".status.conditions[?(@.type==\"cilium.io/PoolConflict\")].status"),
            vec![json!("False")]
        );
        assert_eq!(
            one(".status.conditions[?(@.type=='cilium.io/IPsAvailable')].message"),
            vec![json!("254")]
        );
        assert_eq!(
            one(".status.conditions[?(@.type!=\"cilium.io/IPsAvailable\")].message"),
            vec![json!("ok")]
        );
        assert_eq!(one(".status.conditions[?(@.message)].type").len(), 2);
        assert!(one(".spec.missing").is_empty());
        assert!(JsonPath::parse(".spec[").is_err());
        assert!(JsonPath::parse("").is_err());
    }

    #[test]
    fn typed_cells() {
        let o = obj();
        let c = |t: &str, p: &str| {
            let column = PrinterColumn {
                name: "X".into(),
                type_: t.into(),
                format: String::new(),
                description: String::new(),
                priority: 0,
                json_path: p.into(),
            };
            cell(&column, &JsonPath::parse(p).unwrap(), &o, now_secs())
        };
        assert_eq!(c("boolean", ".spec.disabled"), json!(false));
        assert_eq!(c("date", ".metadata.creationTimestamp"), json!("5m"));
        assert_eq!(
            c(
                "string",
                ".status.conditions[?(@.type==\"cilium.io/PoolConflict\")].status"
            ),
            json!("False")
        );
        assert_eq!(c("integer", ".spec.missing"), Value::Null);
        assert_eq!(
            c("string", ".spec.blocks[0]"),
            json!("{\"cidr\":\"10.0.0.0/24\"}")
        );
    }

    #[test]
    fn builtin_service_table() {
        let reg = crate::registry::Registry::builtin();
        let rt = reg.lookup("", "v1", "services").unwrap();
        let svc = json!({"metadata": {"name": "lb", "creationTimestamp": crate::meta::now_rfc3339()},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let t = table(&rt, "v1", &[&svc], IncludeObject::Metadata, "7", None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![
                "Name",
                "Type",
                "Cluster-IP",
                "External-IP",
                "Port(s)",
                "Age",
                "Selector"
            ]
        );
        assert_eq!(t["rows"][0]["cells"][3], "<pending>");
        assert_eq!(t["rows"][0]["cells"][4], "80:30080/TCP");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
