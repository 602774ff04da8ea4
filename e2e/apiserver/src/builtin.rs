//! What the real server does for particular built-in kinds on write: defaults, Service ClusterIP
//! and NodePort allocation, Secret `stringData`, Namespace phase, CustomResourceDefinition status.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use base64::Engine;
use serde_json::{Value, json};

use crate::error::FieldError;
use crate::registry::ResourceType;

/// ClusterIPs and NodePorts in use.
#[derive(Debug)]
pub struct Allocators {
    base: u32,
    size: u32,
    next_ip: u32,
    ips: BTreeSet<u32>,
    next_port: u16,
    ports: BTreeSet<u16>,
}

pub const NODE_PORT_MIN: u16 = 30000;
pub const NODE_PORT_MAX: u16 = 32767;

impl Allocators {
    /// `cidr` is the Service CIDR (`10.96.0.0/16`); its first host address is reserved for the
    /// `kubernetes` Service.
    pub fn new(cidr: (Ipv4Addr, u8)) -> Allocators {
        let prefix = cidr.1.min(30);
        let size = 1u32 << (32 - prefix as u32);
        let base = u32::from(cidr.0) & !(size - 1);
        Allocators {
            base,
            size,
            next_ip: 2,
            ips: BTreeSet::new(),
            next_port: NODE_PORT_MIN,
            ports: BTreeSet::new(),
        }
    }

    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    fn offset(&self, ip: &str) -> Option<u32> {
        let ip: Ipv4Addr = ip.parse().ok()?;
        let off = u32::from(ip).wrapping_sub(self.base);
        (off > 0 && off < self.size - 1).then_some(off)
    }

    fn allocate_ip(&mut self) -> Option<Ipv4Addr> {
        for _ in 0..self.size {
            let off = self.next_ip;
            self.next_ip = if self.next_ip + 1 >= self.size - 1 {
                1
            } else {
                self.next_ip + 1
            };
            if self.ips.insert(off) {
                return Some(Ipv4Addr::from(self.base + off));
            }
        }
        None
    }

    fn allocate_port(&mut self) -> Option<u16> {
        for _ in NODE_PORT_MIN..=NODE_PORT_MAX {
            let p = self.next_port;
            self.next_port = if p >= NODE_PORT_MAX {
                NODE_PORT_MIN
            } else {
                p + 1
            };
            if self.ports.insert(p) {
                return Some(p);
            }
        }
        None
    }

    /// Releases what a deleted Service held.
    pub fn release(&mut self, svc: &Value) {
        if let Some(off) = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .and_then(|ip| self.offset(ip))
        {
            self.ips.remove(&off);
        }
        for p in svc
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(np) = p.get("nodePort").and_then(Value::as_u64) {
                self.ports.remove(&(np as u16));
            }
        }
    }
}

fn set_default(obj: &mut Value, path: &[&str], v: Value) {
    let mut cur = obj;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            return;
        }
        let map = cur.as_object_mut().expect("object");
        if i == path.len() - 1 {
            map.entry(k.to_string()).or_insert(v);
            return;
        }
        cur = map.entry(k.to_string()).or_insert_with(|| json!({}));
    }
}

/// Applies kind-specific defaults and allocations. `old` is the stored object on updates.
pub fn on_write(
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    alloc: &mut Allocators,
) -> Result<(), Vec<FieldError>> {
    if rt.custom {
        return Ok(());
    }
    match (rt.group.as_str(), rt.kind.as_str()) {
        ("", "Namespace") => {
            let name = crate::meta::name(obj).to_string();
            let meta = crate::meta::metadata_mut(obj);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), Value::String(name));
            }
            set_default(obj, &["spec", "finalizers"], json!(["kubernetes"]));
            if !crate::meta::is_deleting(obj) {
                set_default(obj, &["status", "phase"], json!("Active"));
            }
        }
        ("", "Secret") => {
            set_default(obj, &["type"], json!("Opaque"));
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                set_default(obj, &["data"], json!({}));
                if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
                    for (k, v) in sd {
                        let text = v
                            .as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string());
                        data.insert(
                            k,
                            Value::String(base64::engine::general_purpose::STANDARD.encode(text)),
                        );
                    }
                }
            }
        }
        ("", "Pod") => {
            set_default(obj, &["status", "phase"], json!("Pending"));
            set_default(obj, &["spec", "restartPolicy"], json!("Always"));
            set_default(obj, &["spec", "dnsPolicy"], json!("ClusterFirst"));
        }
        ("", "Service") => service(obj, old, alloc)?,
        ("apps", "Deployment") => {
            set_default(obj, &["spec", "replicas"], json!(1));
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            set_default(
                obj,
                &["spec", "strategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
        }
        ("apps", "DaemonSet") => {
            set_default(obj, &["spec", "revisionHistoryLimit"], json!(10));
            set_default(
                obj,
                &["spec", "updateStrategy"],
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
            );
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let defined = crate::registry::resource_type_from_crd(obj)?;
            let storage: Vec<String> = defined
                .versions
                .iter()
                .filter(|v| v.storage)
                .map(|v| v.name.clone())
                .collect();
            let mut stored_versions: Vec<Value> = old
                .and_then(|o| o.pointer("/status/storedVersions"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for s in storage {
                if !stored_versions.contains(&Value::String(s.clone())) {
                    stored_versions.push(Value::String(s));
                }
            }
            let now = crate::meta::now_rfc3339();
            let names = obj.pointer("/spec/names").cloned().unwrap_or(json!({}));
            let mut accepted = names.clone();
            if accepted.get("singular").is_none() {
                accepted["singular"] = Value::String(defined.singular.clone());
            }
            if accepted.get("listKind").is_none() {
                accepted["listKind"] = Value::String(defined.list_kind.clone());
            }
            if let Some(spec_names) = obj.pointer_mut("/spec/names") {
                spec_names["singular"] = Value::String(defined.singular.clone());
                spec_names["listKind"] = Value::String(defined.list_kind.clone());
            }
            obj["status"] = json!({
                "acceptedNames": accepted,
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found"},
                    {"type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"}
                ],
                "storedVersions": stored_versions,
            });
        }
        _ => {}
    }
    Ok(())
}

fn service(
    obj: &mut Value,
    old: Option<&Value>,
    alloc: &mut Allocators,
) -> Result<(), Vec<FieldError>> {
    set_default(obj, &["spec"], json!({}));
    if !obj["spec"].is_object() {
        return Err(vec![FieldError::invalid(
            "spec",
            obj["spec"].clone(),
            "must be an object",
        )]);
    }
    set_default(obj, &["spec", "type"], json!("ClusterIP"));
    set_default(obj, &["spec", "sessionAffinity"], json!("None"));
    let svc_type = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    let external_name = svc_type == "ExternalName";
    let node_ports = svc_type == "NodePort" || svc_type == "LoadBalancer";
    if !external_name {
        set_default(obj, &["spec", "internalTrafficPolicy"], json!("Cluster"));
        set_default(obj, &["spec", "ipFamilies"], json!(["IPv4"]));
        set_default(obj, &["spec", "ipFamilyPolicy"], json!("SingleStack"));
    }
    if node_ports {
        set_default(obj, &["spec", "externalTrafficPolicy"], json!("Cluster"));
    }
    if svc_type == "LoadBalancer" {
        set_default(obj, &["spec", "allocateLoadBalancerNodePorts"], json!(true));
    }
    // `allocateLoadBalancerNodePorts: false`: a LoadBalancer gets no NodePort unless it names one.
    let allocate_node_ports = svc_type == "NodePort"
        || (node_ports
            && obj.pointer("/spec/allocateLoadBalancerNodePorts") != Some(&json!(false)));
    // ClusterIP: immutable once set, allocated when empty.
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let want = obj
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .map(str::to_string);
    if !external_name {
        let ip = match (&old_ip, &want) {
            (Some(o), Some(w)) if o != w && !w.is_empty() => {
                return Err(vec![FieldError::invalid(
                    "spec.clusterIPs[0]",
                    Value::String(w.clone()),
                    "may not change once set",
                )]);
            }
            (Some(o), _) => o.clone(),
            (None, Some(w)) if w == "None" => w.clone(),
            (None, Some(w)) if !w.is_empty() => {
                match alloc.offset(w) {
                    Some(off) if alloc.ips.insert(off) => {}
                    Some(_) => {
                        return Err(vec![FieldError::invalid(
                            "spec.clusterIPs",
                            json!([w]),
                            format!("failed to allocate IP {w}: provided IP is already allocated"),
                        )]);
                    }
                    None => {
                        return Err(vec![FieldError::invalid(
                            "spec.clusterIPs",
                            json!([w]),
                            format!(
                                "failed to allocate IP {w}: the provided IP ({w}) is not in the valid range"
                            ),
                        )]);
                    }
                }
                w.clone()
            }
            _ => match alloc.allocate_ip() {
                Some(ip) => ip.to_string(),
                None => {
                    return Err(vec![FieldError::invalid(
                        "spec.clusterIPs",
                        json!([]),
                        "failed to allocate a serviceIP: range is full",
                    )]);
                }
            },
        };
        obj["spec"]["clusterIP"] = Value::String(ip.clone());
        obj["spec"]["clusterIPs"] = json!([ip]);
    }
    let old_ports: Vec<Value> = old
        .and_then(|o| o.pointer("/spec/ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut() {
            if !p.is_object() {
                continue;
            }
            set_default(p, &["protocol"], json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, &["targetPort"], port);
            }
            if !node_ports {
                if let Some(np) = p
                    .as_object_mut()
                    .and_then(|m| m.remove("nodePort"))
                    .and_then(|v| v.as_u64())
                {
                    alloc.ports.remove(&(np as u16));
                }
                continue;
            }
            if p.get("nodePort")
                .and_then(Value::as_u64)
                .is_some_and(|n| n != 0)
            {
                let np = p["nodePort"].as_u64().unwrap_or(0) as u16;
                let held_before = old_ports
                    .iter()
                    .any(|o| o.get("nodePort").and_then(Value::as_u64) == Some(np as u64));
                if !held_before && !alloc.ports.insert(np) {
                    return Err(vec![FieldError::invalid(
                        "spec.ports[0].nodePort",
                        json!(np),
                        "provided port is already allocated",
                    )]);
                }
                continue;
            }
            if !allocate_node_ports {
                continue;
            }
            let same = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && o.get("protocol").unwrap_or(&json!("TCP"))
                        == p.get("protocol").unwrap_or(&json!("TCP"))
            });
            let np = match same.and_then(|o| o.get("nodePort")).and_then(Value::as_u64) {
                Some(np) => np as u16,
                None => alloc.allocate_port().ok_or_else(|| {
                    vec![FieldError::invalid(
                        "spec.ports",
                        json!([]),
                        "range is full",
                    )]
                })?,
            };
            p["nodePort"] = json!(np);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    fn svc(extra: Value) -> Value {
        let mut v = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}});
        crate::patch::merge_patch(&mut v, &extra);
        v
    }

    // Services get a ClusterIP from the range (skipping the kubernetes Service's), node ports when
    // their type needs them, and keep both across updates.
    #[test]
    fn service_allocation() {
        let reg = Registry::builtin();
        let rt = reg.lookup("", "v1", "services").unwrap();
        let mut alloc = Allocators::new(("10.96.0.0".parse().unwrap(), 16));
        let mut a = svc(json!({"spec": {"type": "LoadBalancer"}}));
        on_write(&rt, &mut a, None, &mut alloc).unwrap();
        assert_eq!(a["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(a["spec"]["ports"][0]["nodePort"], 30000);
        assert_eq!(a["spec"]["ports"][0]["targetPort"], 80);
        let mut upd = svc(json!({"spec": {"type": "LoadBalancer"}}));
        on_write(&rt, &mut upd, Some(&a), &mut alloc).unwrap();
        assert_eq!(upd["spec"]["clusterIP"], "10.96.0.2");
        assert_eq!(upd["spec"]["ports"][0]["nodePort"], 30000);
        let mut taken = svc(json!({"spec": {"clusterIP": "10.96.0.2"}}));
        assert_eq!(
            on_write(&rt, &mut taken, None, &mut alloc).unwrap_err()[0].field,
            "spec.clusterIPs"
        );
        let mut changed = svc(json!({"spec": {"clusterIP": "10.96.0.9"}}));
        assert!(on_write(&rt, &mut changed, Some(&a), &mut alloc).is_err());
        alloc.release(&a);
        let mut again = svc(json!({"spec": {"clusterIP": "10.96.0.2"}}));
        on_write(&rt, &mut again, None, &mut alloc).unwrap();
        let mut headless = svc(json!({"spec": {"clusterIP": "None"}}));
        on_write(&rt, &mut headless, None, &mut alloc).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
    }

    // `allocateLoadBalancerNodePorts: false`: no NodePort is taken, a named one is kept.
    #[test]
    fn load_balancer_without_node_ports() {
        let reg = Registry::builtin();
        let rt = reg.lookup("", "v1", "services").unwrap();
        let mut alloc = Allocators::new(("10.96.0.0".parse().unwrap(), 16));
        let mut a = svc(json!({"spec": {"type": "LoadBalancer",
                                        "allocateLoadBalancerNodePorts": false}}));
        on_write(&rt, &mut a, None, &mut alloc).unwrap();
        assert!(a["spec"]["ports"][0].get("nodePort").is_none(), "{a}");
        let mut named = svc(json!({"spec": {"type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": false, "ports": [{"port": 80, "nodePort": 31000}]}}));
        on_write(&rt, &mut named, None, &mut alloc).unwrap();
        assert_eq!(named["spec"]["ports"][0]["nodePort"], 31000);
        let mut c = svc(json!({"spec": {"type": "LoadBalancer"}}));
        on_write(&rt, &mut c, None, &mut alloc).unwrap();
        assert_eq!(c["spec"]["ports"][0]["nodePort"], 30000);
    }

    #[test]
    fn secret_string_data() {
        let reg = Registry::builtin();
        let rt = reg.lookup("", "v1", "secrets").unwrap();
        let mut alloc = Allocators::new(("10.96.0.0".parse().unwrap(), 16));
        let mut s = json!({"metadata": {"name": "x"}, "stringData": {"a": "hello"}});
        on_write(&rt, &mut s, None, &mut alloc).unwrap();
        assert_eq!(s["data"]["a"], "aGVsbG8=");
        assert_eq!(s["type"], "Opaque");
        assert!(s.get("stringData").is_none());
    }
}
