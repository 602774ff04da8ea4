//! The conversions from Kubernetes objects, tested on objects as the API server sends them
//! (JSON), garbage included.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use cilia_model::lbipam::{self, ServiceLbStatus};
use cilia_model::service::{LbMode, Protocol, ServiceType, TargetPort};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::json;

use super::config::{self, OperatorConfig};
use super::convert::{self, Skipped};
use super::status;

fn node(v: serde_json::Value) -> Node {
    serde_json::from_value(v).expect("node JSON")
}

fn service(v: serde_json::Value) -> Service {
    serde_json::from_value(v).expect("service JSON")
}

fn fields(s: &[Skipped]) -> Vec<&str> {
    s.iter().map(|s| s.field.as_str()).collect()
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// A kubelet-registered node becomes its InternalIP, pod CIDR and labels.
#[test]
fn node_with_internal_ip_and_pod_cidr() {
    let (info, skipped) = convert::node_info(&node(json!({
        "metadata": {"name": "worker", "labels": {"zone": "a"}},
        "spec": {"podCIDR": "10.244.1.0/24"},
        "status": {"addresses": [
            {"type": "Hostname", "address": "worker"},
            {"type": "InternalIP", "address": "fd00::3"},
            {"type": "InternalIP", "address": "192.0.2.3"}
        ]}
    })));
    let info = info.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(info.name, "worker");
    assert_eq!(info.internal_ip, Ipv4Addr::new(192, 0, 2, 3));
    assert_eq!(info.pod_cidr, Some("10.244.1.0/24".parse().unwrap()));
    assert_eq!(info.labels["zone"], "a");
}

// A node without an IPv4 InternalIP is left out (and says why); a garbage pod CIDR is dropped
// with the field named, the node kept.
#[test]
fn node_garbage() {
    let (info, skipped) = convert::node_info(&node(json!({
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "banana"}]}
    })));
    assert!(info.is_none());
    assert_eq!(
        fields(&skipped),
        ["status.addresses[0].address", "status.addresses"]
    );
    assert!(skipped[0].to_string().contains("Node n1"), "{}", skipped[0]);
    assert!(skipped[0].to_string().contains("banana"), "{}", skipped[0]);

    let (info, skipped) = convert::node_info(&node(json!({
        "metadata": {"name": "n2"},
        "spec": {"podCIDR": "10.244.300.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.9"}]}
    })));
    assert_eq!(info.unwrap().pod_cidr, None);
    assert_eq!(fields(&skipped), ["spec.podCIDR"]);
    assert_eq!(skipped[0].value, "10.244.300.0/24");
}

fn lb_service_json() -> serde_json::Value {
    json!({
        "metadata": {
            "name": "web", "namespace": "shop", "uid": "u-1", "generation": 3,
            "creationTimestamp": "2024-01-02T03:04:05Z",
            "labels": {"app": "web"},
            "annotations": {
                "lbipam.cilium.io/ips": "192.0.2.10, nonsense",
                "service.cilium.io/forwarding-mode": "dsr",
                "lbipam.cilium.io/sharing-key": "k"
            }
        },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::a"],
            "externalIPs": ["198.51.100.1", "bad"],
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
                {"name": "sctp", "port": 9, "protocol": "SCTP"}
            ],
            "externalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP",
            "selector": {"app": "web"},
            "ipFamilies": ["IPv4", "IPv5"],
            "ipFamilyPolicy": "SingleStack",
            "loadBalancerIP": "garbage"
        },
        "status": {
            "loadBalancer": {"ingress": [{"ip": "192.0.2.10"}, {"hostname": "x.example"}]},
            "conditions": [
                {"type": "Other", "status": "True", "reason": "r", "message": "",
                 "lastTransitionTime": "2024-01-01T00:00:00Z"},
                {"type": "cilium.io/IPAMRequestSatisfied", "status": "True",
                 "reason": "satisfied", "message": "", "observedGeneration": 3,
                 "lastTransitionTime": "2024-01-01T00:00:00Z"}
            ]
        }
    })
}

// A LoadBalancer Service as the datapath reads it: IPv4 addresses only, SCTP and garbage left out
// with the field named, named target ports kept, affinity defaulted, annotations honoured.
#[test]
fn service_info_from_a_load_balancer() {
    let (info, skipped) = convert::service_info(&service(lb_service_json()));
    assert_eq!(info.service_type, ServiceType::LoadBalancer);
    assert_eq!(info.cluster_ips, [Ipv4Addr::new(10, 96, 0, 10)]);
    assert_eq!(info.external_ips, [Ipv4Addr::new(198, 51, 100, 1)]);
    assert_eq!(info.load_balancer_ips, [Ipv4Addr::new(192, 0, 2, 10)]);
    assert_eq!(info.ports.len(), 2);
    assert_eq!(
        info.ports[0].target_port,
        Some(TargetPort::Name("http".into()))
    );
    assert_eq!(info.ports[0].node_port, Some(30080));
    assert_eq!(info.ports[1].protocol, Protocol::Udp);
    assert_eq!(info.ports[1].target_port, Some(TargetPort::Number(5353)));
    assert!(info.external_traffic_local);
    assert_eq!(
        info.session_affinity_timeout,
        Some(convert::DEFAULT_AFFINITY_TIMEOUT)
    );
    assert_eq!(info.forwarding_mode, Some(LbMode::Dsr));
    assert_eq!(
        fields(&skipped),
        ["spec.externalIPs[1]", "spec.ports[2].protocol"]
    );
}

// The same Service as LB-IPAM reads it: requests, families, status and its condition; garbage
// in the requested addresses, families and loadBalancerIP is reported with the field.
#[test]
fn lb_service_from_a_load_balancer() {
    let (svc, skipped) = convert::lb_service(&service(lb_service_json()));
    assert!(svc.is_load_balancer);
    assert_eq!(svc.key(), lbipam::ServiceKey::new("shop", "web"));
    assert_eq!(svc.generation, 3);
    assert_eq!(svc.creation_timestamp, 1_704_164_645);
    assert_eq!(svc.ip_families, [lbipam::IpFamily::IPv4]);
    assert_eq!(
        svc.ip_family_policy,
        Some(lbipam::IpFamilyPolicy::SingleStack)
    );
    assert_eq!(
        svc.external_traffic_policy,
        lbipam::ExternalTrafficPolicy::Local
    );
    assert_eq!(svc.ports.len(), 3);
    assert_eq!(
        svc.current_ingress,
        ["192.0.2.10".parse::<IpAddr>().unwrap()]
    );
    let c = svc.current_condition.unwrap();
    assert_eq!(c.reason, "satisfied");
    assert_eq!(c.observed_generation, 3);
    assert_eq!(
        fields(&skipped),
        [
            "metadata.annotations[lbipam.cilium.io/ips]",
            "spec.loadBalancerIP",
            "spec.ipFamilies[1]"
        ]
    );
    assert_eq!(skipped[0].value, "nonsense");
}

// A Service with nothing but a name converts to defaults (ClusterIP, no ports), no panic.
#[test]
fn empty_service() {
    let (info, skipped) = convert::service_info(&service(json!({"metadata": {"name": "x"}})));
    assert_eq!(info.service_type, ServiceType::ClusterIP);
    assert!(info.ports.is_empty() && skipped.is_empty());
    let (svc, skipped) = convert::lb_service(&service(json!({"metadata": {"name": "x"}})));
    assert!(!svc.is_load_balancer && skipped.is_empty());
    // Out-of-range and unknown values.
    let (info, skipped) = convert::service_info(&service(json!({
        "metadata": {"name": "y", "namespace": "d",
                     "annotations": {"service.cilium.io/lb-algorithm": "round-robin"}},
        "spec": {"type": "Weird", "ports": [{"port": 70000}, {"port": 0}]}
    })));
    assert!(info.ports.is_empty());
    assert_eq!(info.algorithm, None);
    assert_eq!(
        fields(&skipped),
        [
            "spec.type",
            "spec.ports[0].port",
            "spec.ports[1].port",
            "metadata.annotations[service.cilium.io/lb-algorithm]"
        ]
    );
}

// EndpointSlices: IPv4 ones tied to a Service; conditions defaulted like Kubernetes; others
// (IPv6, FQDN, unlabelled) are not the datapath's.
#[test]
fn endpoint_slices() {
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.5"], "nodeName": "worker"},
            {"addresses": ["10.244.2.6"], "conditions": {"ready": false, "terminating": true}},
            {"addresses": ["nope"]}
        ],
        "ports": [{"name": "http", "port": 8080}, {"port": 9, "protocol": "SCTP"}, {"name": "all"}]
    }))
    .unwrap();
    let (info, skipped) = convert::endpoint_slice_info(&slice);
    let info = info.unwrap();
    assert_eq!(info.service, "web");
    assert_eq!(info.endpoints.len(), 2);
    assert!(info.endpoints[0].ready && info.endpoints[0].serving);
    assert_eq!(info.endpoints[0].node_name.as_deref(), Some("worker"));
    assert!(!info.endpoints[1].ready && !info.endpoints[1].serving);
    assert!(info.endpoints[1].terminating);
    assert_eq!(info.ports.len(), 1);
    assert_eq!(info.ports[0].port, 8080);
    assert_eq!(
        fields(&skipped),
        ["endpoints[2].addresses[0]", "ports[1].protocol"]
    );

    let v6: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "v6", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv6", "endpoints": []
    }))
    .unwrap();
    assert!(convert::endpoint_slice_info(&v6).0.is_none());
    let orphan: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "o", "namespace": "shop"}, "addressType": "IPv4", "endpoints": []
    }))
    .unwrap();
    assert!(convert::endpoint_slice_info(&orphan).0.is_none());
}

// The seed pool (v2alpha1 manifest, read as v2) becomes one CIDR block selecting everything.
#[test]
fn seed_pool() {
    let pool = convert::parse_pool(json!({
        "apiVersion": "cilium.io/v2alpha1", "kind": "CiliumLoadBalancerIPPool",
        "metadata": {"name": "default", "generation": 2,
                     "creationTimestamp": "2024-01-02T03:04:05Z"},
        "spec": {"blocks": [{"cidr": "172.18.250.0/24"}]}
    }))
    .unwrap();
    let (p, skipped) = convert::lb_pool(&pool);
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(p.name, "default");
    assert_eq!(p.generation, 2);
    assert_eq!(
        p.blocks,
        [lbipam::Block::Cidr("172.18.250.0/24".parse().unwrap())]
    );
    assert!(p.service_selector.is_none() && !p.disabled);
}

// Bad blocks are left out with their path named; the rest of the pool is used; the legacy
// `cidrs` works alone and is ignored next to `blocks`; reversed ranges are reported.
#[test]
fn pool_garbage() {
    let pool = convert::parse_pool(json!({
        "metadata": {"name": "messy"},
        "spec": {
            "blocks": [
                {"cidr": "10.0.0.0/33"},
                {"start": "10.1.0.1", "stop": "10.1.0.9"},
                {"start": "10.2.0.9", "stop": "10.2.0.1"},
                {"stop": "10.3.0.1"},
                {},
                {"start": "x"}
            ],
            "cidrs": [{"cidr": "10.9.0.0/24"}],
            "disabled": true,
            "allowFirstLastIPs": "No"
        },
        "status": {"conditions": [{"type": "cilium.io/PoolConflict", "status": "False",
            "reason": "resolved", "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
    }))
    .unwrap();
    let (p, skipped) = convert::lb_pool(&pool);
    assert_eq!(p.blocks.len(), 2, "{:?}", p.blocks);
    assert!(p.disabled);
    assert_eq!(p.allow_first_last_ips, Some(lbipam::AllowFirstLastIps::No));
    assert_eq!(p.current_conditions.len(), 1);
    assert_eq!(
        fields(&skipped),
        [
            "spec.cidrs",
            "spec.blocks[0].cidr",
            "spec.blocks[3].stop",
            "spec.blocks[4]",
            "spec.blocks[5].start",
            "spec.blocks[1]"
        ]
    );
    assert!(
        skipped[1]
            .to_string()
            .contains("CiliumLoadBalancerIPPool messy")
    );

    let legacy = convert::parse_pool(json!({
        "metadata": {"name": "old"}, "spec": {"cidrs": [{"cidr": "10.9.0.0/24"}]}
    }))
    .unwrap();
    let (p, skipped) = convert::lb_pool(&legacy);
    assert_eq!(p.blocks.len(), 1);
    assert!(skipped.is_empty());

    // A pool whose spec cannot be read at all is reported, not a panic.
    let err = convert::parse_pool(json!({
        "metadata": {"name": "broken"}, "spec": {"blocks": "everything"}
    }))
    .unwrap_err();
    assert_eq!(err.object, "CiliumLoadBalancerIPPool broken");
    assert!(err.field.starts_with("spec"), "{err}");
}

// cilium-config → routing, datapath and LB-IPAM configuration; ip-masq-agent → the
// non-masquerade CIDRs (host bits cleared) and masqLinkLocal.
#[test]
fn configuration() {
    let defaults = OperatorConfig::default();
    assert!(defaults.lb_ipam_enabled);
    assert_eq!(
        defaults.lb_ipam.default_lb_service_ipam,
        lbipam::DefaultLbServiceIpam::Lbipam
    );

    let raw = data(&[
        ("routing-mode", "native"),
        ("auto-direct-node-routes", "true"),
        ("ipv4-native-routing-cidr", "10.244.0.0/16"),
        ("kube-proxy-replacement", "true"),
        ("enable-l2-announcements", "true"),
        ("enable-bgp-control-plane", "true"),
        ("default-lb-service-ipam", "none"),
        ("enable-lb-ipam", "false"),
        ("bpf-lb-mode", "dsr"),
        ("enable-ipv4-masquerade", "true"),
        ("enable-bpf-masquerade", "true"),
        ("enable-ip-masq-agent", "true"),
    ]);
    let cilium = config::parse_cilium_config(&raw).unwrap().config;
    let masq = config::parse_ip_masq_agent(&data(&[(
        "config",
        "nonMasqueradeCIDRs: [10.244.0.0/8]\nmasqLinkLocal: true\n",
    )]))
    .unwrap();
    assert_eq!(
        masq.warnings.len(),
        1,
        "the non-canonical prefix is warned about"
    );
    let c = config::build(&cilium, &raw, &masq.config);
    assert!(!c.lb_ipam_enabled);
    assert!(c.lb_ipam.l2_announcements_enabled && c.lb_ipam.bgp_enabled);
    assert_eq!(
        c.lb_ipam.default_lb_service_ipam,
        lbipam::DefaultLbServiceIpam::None
    );
    assert!(c.routing.auto_direct_node_routes);
    assert_eq!(
        c.routing.native_routing_cidr,
        Some("10.244.0.0/16".parse().unwrap())
    );
    assert!(c.datapath.kube_proxy_replacement);
    assert_eq!(c.datapath.lb_mode, LbMode::Dsr);
    assert!(c.datapath.masquerade && c.datapath.bpf_masquerade && c.datapath.ip_masq_agent);
    assert_eq!(
        c.datapath.non_masquerade_cidrs,
        ["10.0.0.0/8".parse::<ipnet::Ipv4Net>().unwrap()]
    );
    assert!(c.datapath.masq_link_local);

    // Garbage is refused with the key named (the caller keeps the last good configuration).
    let err = config::parse_cilium_config(&data(&[("routing-mode", "teleport")])).unwrap_err();
    assert!(
        err.contains("routing-mode") && err.contains("teleport"),
        "{err}"
    );
    let err = config::parse_ip_masq_agent(&data(&[("config", "nonMasqueradeCIDRs: [banana]")]))
        .unwrap_err();
    assert!(err.contains("banana"), "{err}");
}

fn cond(type_: &str, status: &str, ts: &str) -> Condition {
    serde_json::from_value(json!({"type": type_, "status": status, "reason": "r",
        "message": "", "lastTransitionTime": ts}))
    .unwrap()
}

// Status patches keep other controllers' conditions and a condition's transition time when its
// status did not flip; a release clears ingress and LB-IPAM's condition only.
#[test]
fn status_patches() {
    let now: Time = serde_json::from_value(json!("2025-05-05T05:05:05Z")).unwrap();
    let existing = [
        cond("Other", "True", "2024-01-01T00:00:00Z"),
        cond(
            lbipam::CONDITION_REQUEST_SATISFIED,
            "True",
            "2024-02-02T00:00:00Z",
        ),
    ];
    let wanted = ServiceLbStatus::Managed {
        ingress: vec!["192.0.2.1".parse().unwrap()],
        condition: lbipam::Condition {
            type_: lbipam::CONDITION_REQUEST_SATISFIED.into(),
            status: lbipam::ConditionStatus::True,
            reason: "satisfied".into(),
            message: String::new(),
            observed_generation: 4,
        },
    };
    let p = status::service_patch(&existing, &wanted, &now).unwrap();
    assert_eq!(
        p["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "192.0.2.1"}])
    );
    let conds = p["status"]["conditions"].as_array().unwrap();
    assert_eq!(conds.len(), 2);
    assert_eq!(conds[0]["type"], "Other");
    assert_eq!(conds[1]["lastTransitionTime"], "2024-02-02T00:00:00Z");
    assert_eq!(conds[1]["observedGeneration"], 4);

    let released = status::service_patch(&existing, &ServiceLbStatus::Released, &now).unwrap();
    assert_eq!(released["status"]["loadBalancer"]["ingress"], json!(null));
    assert_eq!(
        released["status"]["conditions"].as_array().unwrap().len(),
        1
    );
    assert!(status::service_patch(&existing, &ServiceLbStatus::Ignored, &now).is_none());

    // A flipped pool condition gets a new transition time.
    let pool = status::pool_patch(
        &[cond(
            lbipam::CONDITION_POOL_CONFLICT,
            "False",
            "2024-01-01T00:00:00Z",
        )],
        &[lbipam::Condition {
            type_: lbipam::CONDITION_POOL_CONFLICT.into(),
            status: lbipam::ConditionStatus::True,
            reason: "cidr_overlap".into(),
            message: "m".into(),
            observed_generation: 1,
        }],
        &now,
    );
    assert_eq!(
        pool["status"]["conditions"][0]["lastTransitionTime"],
        "2025-05-05T05:05:05Z"
    );
}

// ---- policy inputs ----------------------------------------------------------------------------

fn pod(v: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(v).expect("pod JSON")
}

// A scheduled pod with an address is an endpoint, with its labels and its namespace's labels.
#[test]
fn pod_with_address_is_a_policy_endpoint() {
    let ns_labels = data(&[("team", "rebels")]);
    let (info, skipped) = convert::policy_pod(
        &pod(json!({
            "metadata": {"name": "xwing", "namespace": "default", "labels": {"org": "alliance"}},
            "spec": {"nodeName": "worker", "containers": []},
            "status": {"phase": "Running", "podIP": "10.244.1.7",
                       "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}]}
        })),
        &ns_labels,
    );
    assert!(skipped.is_empty(), "{skipped:?}");
    let p = info.unwrap();
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str(), p.node.as_str()),
        ("default", "xwing", "worker")
    );
    assert_eq!(p.ip, Ipv4Addr::new(10, 244, 1, 7));
    assert_eq!(p.labels["org"], "alliance");
    assert_eq!(p.namespace_labels["team"], "rebels");
}

// Not endpoints: host-network pods, unscheduled or address-less pods, finished pods. A garbage
// address is named (field and value); the next IPv4 of podIPs is taken instead.
#[test]
fn pods_that_are_not_endpoints_and_garbage_addresses() {
    let none = BTreeMap::new();
    for (what, v) in [
        (
            "hostNetwork",
            json!({"metadata": {"name": "a", "namespace": "kube-system"},
               "spec": {"nodeName": "worker", "hostNetwork": true, "containers": []},
               "status": {"podIP": "172.18.0.3"}}),
        ),
        (
            "unscheduled",
            json!({"metadata": {"name": "b", "namespace": "default"},
               "spec": {"containers": []}, "status": {"phase": "Pending"}}),
        ),
        (
            "no address yet",
            json!({"metadata": {"name": "c", "namespace": "default"},
               "spec": {"nodeName": "worker", "containers": []}, "status": {"phase": "Pending"}}),
        ),
        (
            "finished",
            json!({"metadata": {"name": "d", "namespace": "default"},
               "spec": {"nodeName": "worker", "containers": []},
               "status": {"phase": "Succeeded", "podIP": "10.244.1.9"}}),
        ),
        (
            "IPv6 only",
            json!({"metadata": {"name": "e", "namespace": "default"},
               "spec": {"nodeName": "worker", "containers": []},
               "status": {"podIP": "fd00::9"}}),
        ),
    ] {
        let (info, skipped) = convert::policy_pod(&pod(v), &none);
        assert!(info.is_none(), "{what}: {info:?}");
        assert!(skipped.is_empty(), "{what}: {skipped:?}");
    }
    let (info, skipped) = convert::policy_pod(
        &pod(json!({"metadata": {"name": "f", "namespace": "default"},
           "spec": {"nodeName": "worker", "containers": []},
           "status": {"podIP": "10.244.1.300", "podIPs": [{"ip": "10.244.1.300"}, {"ip": "10.244.1.30"}]}})),
        &none,
    );
    assert_eq!(info.unwrap().ip, Ipv4Addr::new(10, 244, 1, 30));
    assert_eq!(
        fields(&skipped),
        vec!["status.podIP", "status.podIPs[0].ip"]
    );
    assert_eq!(skipped[0].value, "10.244.1.300");
    assert_eq!(skipped[0].object, "Pod default/f");
}

fn seed(name: &str) -> serde_json::Value {
    serde_yaml::from_str(
        &std::fs::read_to_string(format!(
            "{}/../../../shared/fixtures/seed/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap()
}

// The seed host policy converts whole; an L7 policy is absent whole, the note naming the field.
#[test]
fn ccnp_converts_all_or_nothing() {
    let rules = convert::ccnp_rules(seed("ccnp-control-plane.yaml")).unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].policy, "allow-control-plane-connectivity");
    assert!(matches!(
        rules[0].subject,
        cilia_model::policy::Subject::Nodes(_)
    ));
    let l7 = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "l7"},
        "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
            "rules": {"http": [{"method": "GET"}]}}]}]}});
    let e = convert::ccnp_rules(l7).unwrap_err();
    assert_eq!(e.object, "CiliumClusterwideNetworkPolicy l7");
    assert!(e.reason.contains("spec.ingress[0].toPorts[0].rules"), "{e}");
    let garbage = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": {"name": "g"}, "spec": {"ingress": "not a list"}});
    let e = convert::ccnp_rules(garbage).unwrap_err();
    assert!(e.reason.contains("cannot be read"), "{e}");
}

// An L2 policy keeps its working parts; a broken regex is named and left out.
#[test]
fn l2_policy_keeps_working_parts() {
    let (p, skipped) = convert::l2_policy(seed("l2-policy.yaml"));
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(p.is_some());
    let bad = json!({"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy",
        "metadata": {"name": "bad"},
        "spec": {"interfaces": ["eth[", "^eth[0-9]+"], "loadBalancerIPs": true}});
    let (p, skipped) = convert::l2_policy(bad);
    assert!(p.is_some(), "the good regex still works");
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].reason.contains("spec.interfaces[0]"),
        "{:?}",
        skipped[0]
    );
    assert!(skipped[0].reason.contains("eth["), "{:?}", skipped[0]);
}

// The API server's addresses are the ready endpoints of default/kubernetes' slices, only those.
#[test]
fn apiserver_ips_from_the_kubernetes_slices() {
    let slice = |ns: &str, svc: &str, addrs: &[&str]| {
        let (info, _) = convert::endpoint_slice_info(
            &serde_json::from_value::<EndpointSlice>(json!({
                "metadata": {"name": svc, "namespace": ns,
                             "labels": {"kubernetes.io/service-name": svc}},
                "addressType": "IPv4",
                "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
            }))
            .unwrap(),
        );
        info.unwrap()
    };
    let k = slice("default", "kubernetes", &["172.18.0.2", "172.18.0.100"]);
    let other = slice("default", "deathstar", &["10.244.1.5"]);
    let elsewhere = slice("kube-system", "kubernetes", &["10.0.0.1"]);
    assert_eq!(
        convert::apiserver_ips(&[&k, &other, &elsewhere]),
        vec![Ipv4Addr::new(172, 18, 0, 2), Ipv4Addr::new(172, 18, 0, 100)]
    );
}

// enable-policy, policy-audit-mode and enable-host-firewall reach the policy settings; a bad
// mode is refused naming the key and value (the last good configuration is kept by the caller).
#[test]
fn policy_settings_from_cilium_config() {
    use cilia_model::policy::EnforcementMode;
    let d = OperatorConfig::default().policy;
    assert_eq!(d.mode, EnforcementMode::Default);
    assert!(!d.audit && !d.host_firewall);
    let raw = data(&[
        ("enable-policy", "always"),
        ("policy-audit-mode", "true"),
        ("enable-host-firewall", "true"),
    ]);
    let parsed = config::parse_cilium_config(&raw).unwrap().config;
    let c = config::build(
        &parsed,
        &raw,
        &cilia_api::config::ipmasq::IpMasqAgentConfig::default(),
    );
    assert_eq!(c.policy.mode, EnforcementMode::Always);
    assert!(c.policy.audit && c.policy.host_firewall);
    let e = config::parse_cilium_config(&data(&[("enable-policy", "sometimes")])).unwrap_err();
    assert!(
        e.contains("enable-policy") && e.contains("sometimes"),
        "{e}"
    );
}
