//! Kubernetes objects → the model's terms, as pure functions: Nodes → [`NodeInfo`], Services →
//! [`ServiceInfo`] and [`lbipam::Service`], EndpointSlices → [`EndpointSliceInfo`], pools →
//! [`lbipam::Pool`]. Nothing here fails on a bad field: the field is left out (or the object is
//! skipped) and a [`Skipped`] names the object, the field and the value, for the caller to log.

use std::net::{IpAddr, Ipv4Addr};

use cilia_api::lbipam::{CiliumLoadBalancerIPPool, IpBlock};
use cilia_model::NodeInfo;
use cilia_model::lbipam;
use cilia_model::service::{
    EndpointInfo, EndpointPortInfo, EndpointSliceInfo, LbAlgorithm, LbMode, Protocol, ServiceInfo,
    ServicePortInfo, ServiceType, TargetPort,
};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The label tying an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Per-Service forwarding mode (`bpf-lb-mode-annotation`).
pub const ANNOTATION_FORWARDING_MODE: &str = "service.cilium.io/forwarding-mode";
/// Per-Service algorithm (`bpf-lb-algorithm-annotation`).
pub const ANNOTATION_LB_ALGORITHM: &str = "service.cilium.io/lb-algorithm";
/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// A field of an object that was left out (or an object that was skipped), and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {value:?} {reason}")]
pub struct Skipped {
    /// `Kind namespace/name` (or `Kind name`).
    pub object: String,
    /// Field path, e.g. `spec.ports[1].protocol`.
    pub field: String,
    pub value: String,
    pub reason: String,
}

/// Collects what a conversion left out.
struct Notes<'a> {
    object: &'a str,
    skipped: Vec<Skipped>,
}

impl Notes<'_> {
    fn skip(&mut self, field: impl Into<String>, value: impl Into<String>, reason: &str) {
        self.skipped.push(Skipped {
            object: self.object.to_string(),
            field: field.into(),
            value: value.into(),
            reason: reason.to_string(),
        });
    }
}

/// `Kind namespace/name` of an object, for messages.
pub fn describe(kind: &str, meta: &ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{kind} {ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => format!("{kind} {}", meta.name.as_deref().unwrap_or("")),
    }
}

fn timestamp(meta: &ObjectMeta) -> lbipam::Timestamp {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(0)
}

// ---- nodes ------------------------------------------------------------------------------------

/// A Node as the intent computation reads it. `None` (with the reason) when it has no IPv4
/// `InternalIP` yet: there is nowhere to route its pods. A bad `spec.podCIDR` is left out.
pub fn node_info(node: &Node) -> (Option<NodeInfo>, Vec<Skipped>) {
    let object = describe("Node", &node.metadata);
    let mut notes = Notes {
        object: &object,
        skipped: Vec::new(),
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut internal_ip = None;
    for (i, a) in addresses.iter().enumerate() {
        if a.type_ != "InternalIP" {
            continue;
        }
        match a.address.parse::<Ipv4Addr>() {
            Ok(ip) => {
                internal_ip = Some(ip);
                break;
            }
            Err(_) if a.address.parse::<IpAddr>().is_ok() => {} // IPv6: the lab routes IPv4 only
            Err(_) => notes.skip(
                format!("status.addresses[{i}].address"),
                &a.address,
                "is not an IP address; ignored",
            ),
        }
    }
    let pod_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| match c.parse::<ipnet::Ipv4Net>() {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                notes.skip("spec.podCIDR", c, "is not an IPv4 CIDR; ignored");
                None
            }
        });
    let Some(internal_ip) = internal_ip else {
        notes.skip(
            "status.addresses",
            format!("{} entries", addresses.len()),
            "has no IPv4 InternalIP; node left out until it has one",
        );
        return (None, notes.skipped);
    };
    let info = NodeInfo {
        name,
        internal_ip,
        pod_cidr,
        labels: node.metadata.labels.clone().unwrap_or_default(),
    };
    (Some(info), notes.skipped)
}

// ---- services ---------------------------------------------------------------------------------

fn protocol(
    notes: &mut Notes,
    field: impl FnOnce() -> String,
    value: Option<&str>,
) -> Option<Protocol> {
    match value.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        other => {
            notes.skip(
                field(),
                other,
                "is not load-balanced (TCP and UDP are); port left out",
            );
            None
        }
    }
}

fn port_number(notes: &mut Notes, field: impl FnOnce() -> String, value: i32) -> Option<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            notes.skip(
                field(),
                value.to_string(),
                "is not a port number (1-65535); left out",
            );
            None
        }
    }
}

/// A Service as the intent computation reads it. IPv6 addresses are left out silently (the
/// datapath is IPv4); unparsable addresses, bad ports and unknown annotation values are left out
/// and reported.
pub fn service_info(svc: &Service) -> (ServiceInfo, Vec<Skipped>) {
    let object = describe("Service", &svc.metadata);
    let mut notes = Notes {
        object: &object,
        skipped: Vec::new(),
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIP,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        "ExternalName" => ServiceType::ExternalName,
        other => {
            notes.skip(
                "spec.type",
                other,
                "is not a Service type; read as ClusterIP",
            );
            ServiceType::ClusterIP
        }
    };
    let mut v4 = |field: &str, list: &[String]| -> Vec<Ipv4Addr> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if !out.contains(&ip) => out.push(ip),
                Ok(_) => {}
                Err(_) if s == "None" && field == "spec.clusterIPs" => {} // headless
                Err(_) => notes.skip(format!("{field}[{i}]"), s, "is not an IP address; left out"),
            }
        }
        out
    };
    let cluster_ips = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => v4("spec.clusterIPs", ips),
        (_, Some(ip)) => v4("spec.clusterIPs", std::slice::from_ref(ip)),
        _ => Vec::new(),
    };
    let external_ips = v4(
        "spec.externalIPs",
        spec.external_ips.as_deref().unwrap_or_default(),
    );
    let ingress: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| ing.iter().filter_map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    let load_balancer_ips = v4("status.loadBalancer.ingress[].ip", &ingress);
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let Some(protocol) = protocol(
            &mut notes,
            || format!("spec.ports[{i}].protocol"),
            p.protocol.as_deref(),
        ) else {
            continue;
        };
        let Some(port) = port_number(&mut notes, || format!("spec.ports[{i}].port"), p.port) else {
            continue;
        };
        let node_port = p
            .node_port
            .and_then(|n| port_number(&mut notes, || format!("spec.ports[{i}].nodePort"), n));
        let target_port = match &p.target_port {
            None => None,
            Some(IntOrString::Int(n)) => {
                port_number(&mut notes, || format!("spec.ports[{i}].targetPort"), *n)
                    .map(TargetPort::Number)
            }
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => port_number(&mut notes, || format!("spec.ports[{i}].targetPort"), n)
                    .map(TargetPort::Number),
                Err(_) => Some(TargetPort::Name(s.clone())),
            },
        };
        ports.push(ServicePortInfo {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
            node_port,
            target_port,
        });
    }
    let session_affinity_timeout = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u32::try_from(t).ok().filter(|t| *t > 0))
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT),
        ),
        _ => None,
    };
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let forwarding_mode =
        annotations
            .get(ANNOTATION_FORWARDING_MODE)
            .and_then(|v| match v.trim() {
                "snat" => Some(LbMode::Snat),
                "dsr" => Some(LbMode::Dsr),
                "hybrid" => Some(LbMode::Hybrid),
                other => {
                    notes.skip(
                        format!("metadata.annotations[{ANNOTATION_FORWARDING_MODE}]"),
                        other,
                        "is not one of snat, dsr, hybrid; ignored",
                    );
                    None
                }
            });
    let algorithm = annotations
        .get(ANNOTATION_LB_ALGORITHM)
        .and_then(|v| match v.trim() {
            "random" => Some(LbAlgorithm::Random),
            "maglev" => Some(LbAlgorithm::Maglev),
            other => {
                notes.skip(
                    format!("metadata.annotations[{ANNOTATION_LB_ALGORITHM}]"),
                    other,
                    "is not one of random, maglev; ignored",
                );
                None
            }
        });
    let info = ServiceInfo {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        service_type,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        external_traffic_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        session_affinity_timeout,
        load_balancer_class: spec.load_balancer_class.clone(),
        forwarding_mode,
        algorithm,
        labels: svc.metadata.labels.clone().unwrap_or_default(),
    };
    (info, notes.skipped)
}

fn model_condition(c: &Condition) -> lbipam::Condition {
    lbipam::Condition {
        type_: c.type_.clone(),
        status: match c.status.as_str() {
            "True" => lbipam::ConditionStatus::True,
            "False" => lbipam::ConditionStatus::False,
            _ => lbipam::ConditionStatus::Unknown,
        },
        reason: c.reason.clone(),
        message: c.message.clone(),
        observed_generation: c.observed_generation.unwrap_or(0),
    }
}

/// A Service as LB-IPAM reads it. Requested addresses that do not parse (in
/// `lbipam.cilium.io/ips`, its alias, or `spec.loadBalancerIP`) are reported here; LB-IPAM skips
/// them itself.
pub fn lb_service(svc: &Service) -> (lbipam::Service, Vec<Skipped>) {
    let object = describe("Service", &svc.metadata);
    let mut notes = Notes {
        object: &object,
        skipped: Vec::new(),
    };
    let spec = svc.spec.clone().unwrap_or_default();
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    for key in [lbipam::ANNOTATION_IPS, lbipam::ANNOTATION_IPS_ALIAS] {
        if let Some(v) = annotations.get(key) {
            for entry in v.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                if entry.parse::<IpAddr>().is_err() {
                    notes.skip(
                        format!("metadata.annotations[{key}]"),
                        entry,
                        "is not an IP address; not requested",
                    );
                }
            }
        }
    }
    if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty())
        && ip.trim().parse::<IpAddr>().is_err()
    {
        notes.skip(
            "spec.loadBalancerIP",
            ip,
            "is not an IP address; not requested",
        );
    }
    let mut ip_families = Vec::new();
    for (i, f) in spec.ip_families.iter().flatten().enumerate() {
        match f.as_str() {
            "IPv4" => ip_families.push(lbipam::IpFamily::IPv4),
            "IPv6" => ip_families.push(lbipam::IpFamily::IPv6),
            other => notes.skip(
                format!("spec.ipFamilies[{i}]"),
                other,
                "is not IPv4 or IPv6; ignored",
            ),
        }
    }
    let ip_family_policy = spec.ip_family_policy.as_deref().and_then(|p| match p {
        "SingleStack" => Some(lbipam::IpFamilyPolicy::SingleStack),
        "PreferDualStack" => Some(lbipam::IpFamilyPolicy::PreferDualStack),
        "RequireDualStack" => Some(lbipam::IpFamilyPolicy::RequireDualStack),
        other => {
            notes.skip(
                "spec.ipFamilyPolicy",
                other,
                "is not SingleStack, PreferDualStack or RequireDualStack; ignored",
            );
            None
        }
    });
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(lbipam::ServicePort {
                port: u16::try_from(p.port).ok()?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
        })
        .collect();
    let status = svc.status.as_ref();
    let current_ingress = status
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok())
                .collect()
        })
        .unwrap_or_default();
    let current_condition = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == lbipam::CONDITION_REQUEST_SATISFIED)
        })
        .map(model_condition);
    let service = lbipam::Service {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        creation_timestamp: timestamp(&svc.metadata),
        generation: svc.metadata.generation.unwrap_or(0),
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        annotations,
        is_load_balancer: spec.type_.as_deref() == Some("LoadBalancer"),
        load_balancer_class: spec.load_balancer_class.clone(),
        load_balancer_ip: spec.load_balancer_ip.clone(),
        ip_families,
        ip_family_policy,
        ports,
        external_traffic_policy: if spec.external_traffic_policy.as_deref() == Some("Local") {
            lbipam::ExternalTrafficPolicy::Local
        } else {
            lbipam::ExternalTrafficPolicy::Cluster
        },
        selector: spec.selector.clone().unwrap_or_default(),
        current_ingress,
        current_condition,
    };
    (service, notes.skipped)
}

// ---- endpoint slices --------------------------------------------------------------------------

/// An EndpointSlice as the intent computation reads it. `None` for slices that carry no IPv4
/// endpoints for a Service (address type IPv6 or FQDN, or no `kubernetes.io/service-name` label).
pub fn endpoint_slice_info(slice: &EndpointSlice) -> (Option<EndpointSliceInfo>, Vec<Skipped>) {
    let object = describe("EndpointSlice", &slice.metadata);
    let mut notes = Notes {
        object: &object,
        skipped: Vec::new(),
    };
    if slice.address_type != "IPv4" {
        return (None, notes.skipped);
    }
    let Some(service) = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .cloned()
    else {
        return (None, notes.skipped);
    };
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            match a.parse::<Ipv4Addr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => notes.skip(
                    format!("endpoints[{i}].addresses[{j}]"),
                    a,
                    "is not an IPv4 address; left out",
                ),
            }
        }
        if addresses.is_empty() {
            continue;
        }
        let c = e.conditions.clone().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        endpoints.push(EndpointInfo {
            addresses,
            ready,
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
            node_name: e.node_name.clone(),
        });
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(protocol) = protocol(
            &mut notes,
            || format!("ports[{i}].protocol"),
            p.protocol.as_deref(),
        ) else {
            continue;
        };
        let Some(n) = p.port else {
            continue; // "all ports": nothing to translate to
        };
        let Some(port) = port_number(&mut notes, || format!("ports[{i}].port"), n) else {
            continue;
        };
        ports.push(EndpointPortInfo {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
        });
    }
    let info = EndpointSliceInfo {
        namespace: slice.metadata.namespace.clone().unwrap_or_default(),
        name: slice.metadata.name.clone().unwrap_or_default(),
        service,
        endpoints,
        ports,
    };
    (Some(info), notes.skipped)
}

// ---- pools ------------------------------------------------------------------------------------

/// A pool object as received: parsed from JSON so one malformed pool cannot break the watch of
/// all the others.
pub fn parse_pool(value: serde_json::Value) -> Result<CiliumLoadBalancerIPPool, Skipped> {
    let name = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    serde_path_to_error::deserialize(value).map_err(|e| Skipped {
        object: format!("CiliumLoadBalancerIPPool {name}"),
        field: e.path().to_string(),
        value: String::new(),
        reason: format!("cannot be read ({}); pool ignored", e.inner()),
    })
}

fn block(notes: &mut Notes, path: &str, i: usize, b: &IpBlock) -> Option<lbipam::Block> {
    let ip = |notes: &mut Notes, field: &str, s: &str| match s.trim().parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            notes.skip(
                format!("{path}[{i}].{field}"),
                s,
                "is not an IP address; block ignored",
            );
            None
        }
    };
    match (&b.cidr, &b.start, &b.stop) {
        (Some(cidr), start, stop) => {
            if start.is_some() || stop.is_some() {
                notes.skip(
                    format!("{path}[{i}]"),
                    cidr,
                    "sets cidr together with start/stop; start/stop ignored",
                );
            }
            match cidr.trim().parse::<ipnet::IpNet>() {
                Ok(net) => Some(lbipam::Block::Cidr(net)),
                Err(_) => {
                    notes.skip(
                        format!("{path}[{i}].cidr"),
                        cidr,
                        "is not a CIDR; block ignored",
                    );
                    None
                }
            }
        }
        (None, Some(start), stop) => {
            let start = ip(notes, "start", start)?;
            let stop = match stop {
                Some(s) => Some(ip(notes, "stop", s)?),
                None => None,
            };
            Some(lbipam::Block::Range { start, stop })
        }
        (None, None, Some(stop)) => {
            notes.skip(
                format!("{path}[{i}].stop"),
                stop,
                "has no start; block ignored",
            );
            None
        }
        (None, None, None) => {
            notes.skip(
                format!("{path}[{i}]"),
                "{}",
                "has neither cidr nor start; block ignored",
            );
            None
        }
    }
}

/// A pool as LB-IPAM reads it. Unreadable blocks are left out (the rest of the pool works);
/// what LB-IPAM itself finds wrong ([`lbipam::Pool::validate`]) is reported too.
pub fn lb_pool(pool: &CiliumLoadBalancerIPPool) -> (lbipam::Pool, Vec<Skipped>) {
    let object = describe("CiliumLoadBalancerIPPool", &pool.metadata);
    let mut notes = Notes {
        object: &object,
        skipped: Vec::new(),
    };
    let spec = &pool.spec.0;
    if spec.blocks.as_ref().is_some_and(|b| !b.is_empty())
        && spec.cidrs.as_ref().is_some_and(|c| !c.is_empty())
    {
        notes.skip(
            "spec.cidrs",
            format!("{} entries", spec.cidrs.as_ref().map_or(0, Vec::len)),
            "is the legacy name of spec.blocks and both are set; spec.cidrs ignored",
        );
    }
    let (path, blocks) = spec.effective_blocks();
    let blocks: Vec<lbipam::Block> = blocks
        .iter()
        .enumerate()
        .filter_map(|(i, b)| block(&mut notes, path, i, b))
        .collect();
    if blocks.is_empty() {
        notes.skip(
            path,
            "[]",
            "has no usable block; the pool offers no address",
        );
    }
    let current_conditions = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|cs| cs.iter().map(model_condition).collect())
        .unwrap_or_default();
    let model = lbipam::Pool {
        name: pool.metadata.name.clone().unwrap_or_default(),
        creation_timestamp: timestamp(&pool.metadata),
        generation: pool.metadata.generation.unwrap_or(0),
        blocks,
        service_selector: spec.service_selector.as_ref().map(|s| s.to_model()),
        disabled: spec.is_disabled(),
        allow_first_last_ips: spec.allow_first_last_ips.map(|a| match a {
            cilia_api::lbipam::AllowFirstLastIps::Yes => lbipam::AllowFirstLastIps::Yes,
            cilia_api::lbipam::AllowFirstLastIps::No => lbipam::AllowFirstLastIps::No,
        }),
        current_conditions,
    };
    for e in model.validate() {
        notes.skip(
            match &e {
                lbipam::PoolError::Selector(_) => "spec.serviceSelector".to_string(),
                lbipam::PoolError::StopBeforeStart { index, .. }
                | lbipam::PoolError::MixedFamilies { index, .. } => format!("{path}[{index}]"),
            },
            "",
            &format!("{e}; that part of the pool is not used"),
        );
    }
    (model, notes.skipped)
}

// ---- policy inputs ----------------------------------------------------------------------------

/// A Pod as policy sees it: only pods that hold an address of their own on a node — a
/// `status.podIP` (or the first IPv4 of `status.podIPs`), a `spec.nodeName`, not `hostNetwork`
/// (those share the node's address and identity) and not finished (a Succeeded or Failed pod's
/// address may already belong to another pod). `namespace_labels`: the labels of its Namespace
/// (empty while that is not known yet). A pod without these is simply not an endpoint yet and
/// gives no note; an address that does not parse is named.
pub fn policy_pod(
    pod: &k8s_openapi::api::core::v1::Pod,
    namespace_labels: &std::collections::BTreeMap<String, String>,
) -> (Option<cilia_model::policy::PolicyPod>, Vec<Skipped>) {
    let object = describe("Pod", &pod.metadata);
    let mut notes = Notes {
        object: &object,
        skipped: Vec::new(),
    };
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return (None, notes.skipped);
    }
    let Some(node) = spec
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
    else {
        return (None, notes.skipped);
    };
    let Some(status) = pod.status.as_ref() else {
        return (None, notes.skipped);
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return (None, notes.skipped);
    }
    // Candidates in the API's order: podIP first, then podIPs (dual stack lists IPv6 there too).
    let mut candidates: Vec<(String, &str)> = Vec::new();
    if let Some(ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        candidates.push(("status.podIP".into(), ip));
    }
    for (i, p) in status.pod_ips.iter().flatten().enumerate() {
        candidates.push((format!("status.podIPs[{i}].ip"), p.ip.as_str()));
    }
    let mut ip = None;
    for (field, value) in candidates {
        match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                ip = Some(v4);
                break;
            }
            Ok(IpAddr::V6(_)) => {} // IPv6 is not enforced (the datapath is IPv4)
            Err(_) => notes.skip(field, value, "is not an IP address; left out"),
        }
    }
    let Some(ip) = ip else {
        return (None, notes.skipped);
    };
    let info = cilia_model::policy::PolicyPod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        ip,
        node,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        namespace_labels: namespace_labels.clone(),
    };
    (Some(info), notes.skipped)
}

/// A `CiliumClusterwideNetworkPolicy` as received (untyped) → its rules, all or nothing: a policy
/// that cannot be read or enforced whole is absent (its `Valid=False` condition, written by the
/// policy status controller, names every problem; the note here names them for the log too).
pub fn ccnp_rules(
    value: serde_json::Value,
) -> Result<Vec<cilia_model::policy::PolicyRule>, Skipped> {
    let name = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let object = format!("CiliumClusterwideNetworkPolicy {name}");
    let p: cilia_api::policy::CiliumClusterwideNetworkPolicy = serde_json::from_value(value)
        .map_err(|e| Skipped {
            object: object.clone(),
            field: "spec".into(),
            value: String::new(),
            reason: format!("cannot be read ({e}); the policy is not enforced"),
        })?;
    crate::policy::compile(&p).map_err(|invalid| Skipped {
        object,
        field: "spec".into(),
        value: String::new(),
        reason: format!("{invalid}; the policy is not enforced"),
    })
}

/// A `CiliumL2AnnouncementPolicy` as received (untyped) → the parts of it that work (see
/// [`crate::l2::compile`]); `Ok(None)` when nothing of it selects anything. Broken parts get
/// their conditions from the policy status controller and are named here for the log.
pub fn l2_policy(value: serde_json::Value) -> (Option<cilia_model::l2::L2Policy>, Vec<Skipped>) {
    let name = value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let object = format!("CiliumL2AnnouncementPolicy {name}");
    match serde_json::from_value::<cilia_api::l2::CiliumL2AnnouncementPolicy>(value) {
        Ok(p) => {
            let c = crate::l2::compile(&p);
            let skipped = c
                .errors
                .iter()
                .map(|e| Skipped {
                    object: object.clone(),
                    field: "spec".into(),
                    value: String::new(),
                    reason: format!("{e}; that part is left out"),
                })
                .collect();
            (c.policy, skipped)
        }
        Err(e) => (
            None,
            vec![Skipped {
                object,
                field: "spec".into(),
                value: String::new(),
                reason: format!("cannot be read ({e}); the policy is not applied"),
            }],
        ),
    }
}

/// The Kubernetes API server's addresses: the IPv4 endpoints of the `default/kubernetes`
/// Service's slices (the `kube-apiserver` policy entity).
pub fn apiserver_ips(slices: &[&EndpointSliceInfo]) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = slices
        .iter()
        .filter(|s| s.namespace == "default" && s.service == "kubernetes")
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.ready)
        .flat_map(|e| e.addresses.iter().copied())
        .collect();
    out.sort();
    out.dedup();
    out
}
