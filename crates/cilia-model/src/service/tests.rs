//! Service → frontends and backends, as table tests over small builders.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::*;
use crate::testgen::{mk_service, mk_slice, ready, terminating};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const LB_IP: [u8; 4] = [198, 51, 100, 7];
const EXT_IP: [u8; 4] = [192, 0, 2, 9];
const POD_A: [u8; 4] = [10, 244, 1, 5];
const POD_B: [u8; 4] = [10, 244, 2, 6];
const NODE_IP: [u8; 4] = [172, 18, 0, 3];

fn fe(
    kind: FrontendKind,
    addr: Option<[u8; 4]>,
    port: u16,
    protocol: Protocol,
    name: &str,
) -> FrontendIntent {
    FrontendIntent {
        kind,
        addr: addr.map(Ipv4Addr::from),
        port,
        protocol,
        port_name: name.into(),
    }
}

fn be(addr: [u8; 4], port: u16, name: &str, node: Option<&str>) -> BackendIntent {
    BackendIntent {
        addr: addr.into(),
        port,
        protocol: TCP,
        port_name: name.into(),
        node: node.map(Into::into),
        terminating: false,
        host_network: false,
    }
}

fn compute(
    svc: &ServiceInfo,
    slices: &[EndpointSliceInfo],
    dp: &DatapathConfig,
) -> Option<ServiceIntent> {
    let ips: HashSet<Ipv4Addr> = [Ipv4Addr::from(NODE_IP)].into();
    service_intent(
        svc,
        slices,
        ServiceContext {
            datapath: dp,
            node_ips: &ips,
        },
    )
}

fn web() -> ServiceInfo {
    mk_service("default", "web", CLUSTER_IP, &[("http", TCP, 80)])
}

fn web_slice(endpoints: Vec<EndpointInfo>) -> EndpointSliceInfo {
    mk_slice(
        "default",
        "web-abc",
        "web",
        endpoints,
        &[("http", TCP, 8080)],
    )
}

// Frontends by Service type: which addresses each type listens on.
#[test]
fn frontends_by_service_type() {
    let np = |t: ServiceType| {
        let mut s = web();
        s.service_type = t;
        s.ports[0].node_port = Some(30080);
        s.load_balancer_ips = vec![LB_IP.into()];
        s.external_ips = vec![EXT_IP.into()];
        s
    };
    let cip = fe(FrontendKind::ClusterIp, Some(CLUSTER_IP), 80, TCP, "http");
    let nodeport = fe(FrontendKind::NodePort, None, 30080, TCP, "http");
    let lb = fe(FrontendKind::LoadBalancer, Some(LB_IP), 80, TCP, "http");
    let ext = fe(FrontendKind::ExternalIp, Some(EXT_IP), 80, TCP, "http");
    let cases: Vec<(&str, ServiceInfo, Option<Vec<FrontendIntent>>)> = vec![
        ("plain ClusterIP", web(), Some(vec![cip.clone()])),
        // A ClusterIP Service lists no nodePort, and ingress IPs only count for LoadBalancers.
        (
            "ClusterIP with externalIPs",
            np(ServiceType::ClusterIP),
            Some(vec![cip.clone(), ext.clone()]),
        ),
        (
            "NodePort",
            np(ServiceType::NodePort),
            Some(vec![cip.clone(), nodeport.clone(), ext.clone()]),
        ),
        (
            "LoadBalancer",
            np(ServiceType::LoadBalancer),
            Some(vec![cip.clone(), nodeport.clone(), lb.clone(), ext.clone()]),
        ),
        ("ExternalName", np(ServiceType::ExternalName), None),
        (
            "headless",
            {
                let mut s = web();
                s.cluster_ips.clear();
                s
            },
            None,
        ),
        (
            "LoadBalancer without allocated nodePorts",
            {
                let mut s = np(ServiceType::LoadBalancer);
                s.ports[0].node_port = None;
                s
            },
            Some(vec![cip.clone(), lb.clone(), ext.clone()]),
        ),
    ];
    for (what, svc, want) in cases {
        let got = compute(&svc, &[], &DatapathConfig::default()).map(|i| i.frontends);
        assert_eq!(got, want, "{what}");
    }
}

// Every clusterIP × every port, sorted and without duplicates.
#[test]
fn frontends_cover_every_address_and_port_once() {
    let mut s = mk_service(
        "default",
        "dns",
        CLUSTER_IP,
        &[("dns", UDP, 53), ("dns-tcp", TCP, 53)],
    );
    s.cluster_ips.push(Ipv4Addr::new(10, 96, 0, 11));
    s.external_ips = vec![EXT_IP.into(), EXT_IP.into()];
    let i = compute(&s, &[], &DatapathConfig::default()).unwrap();
    assert_eq!(
        i.frontends,
        vec![
            fe(
                FrontendKind::ClusterIp,
                Some(CLUSTER_IP),
                53,
                TCP,
                "dns-tcp"
            ),
            fe(FrontendKind::ClusterIp, Some(CLUSTER_IP), 53, UDP, "dns"),
            fe(
                FrontendKind::ClusterIp,
                Some([10, 96, 0, 11]),
                53,
                TCP,
                "dns-tcp"
            ),
            fe(
                FrontendKind::ClusterIp,
                Some([10, 96, 0, 11]),
                53,
                UDP,
                "dns"
            ),
            fe(FrontendKind::ExternalIp, Some(EXT_IP), 53, TCP, "dns-tcp"),
            fe(FrontendKind::ExternalIp, Some(EXT_IP), 53, UDP, "dns"),
        ]
    );
    assert!(i.backends.is_empty());
}

// Backends: which endpoints of which slices serve a Service port.
#[test]
fn backends_from_endpoint_slices() {
    let term = |ip, node| BackendIntent {
        terminating: true,
        ..be(ip, 8080, "http", node)
    };
    let cases: Vec<(&str, Vec<EndpointSliceInfo>, Vec<BackendIntent>)> = vec![
        ("no slice", vec![], vec![]),
        (
            "ready endpoints, with their nodes",
            vec![web_slice(vec![
                ready(POD_A, Some("worker")),
                ready(POD_B, Some("worker2")),
            ])],
            vec![
                be(POD_A, 8080, "http", Some("worker")),
                be(POD_B, 8080, "http", Some("worker2")),
            ],
        ),
        (
            "not ready and not terminating: left out",
            vec![web_slice(vec![
                ready(POD_A, None),
                EndpointInfo {
                    ready: false,
                    serving: false,
                    ..ready(POD_B, None)
                },
            ])],
            vec![be(POD_A, 8080, "http", None)],
        ),
        (
            "terminating ones are carried beside ready ones, marked (the agent keeps them for \
             established flows only)",
            vec![web_slice(vec![
                ready(POD_A, None),
                terminating(POD_B, None),
            ])],
            vec![be(POD_A, 8080, "http", None), term(POD_B, None)],
        ),
        (
            "only terminating ones: they serve, marked",
            vec![web_slice(vec![
                terminating(POD_A, Some("worker")),
                terminating(POD_B, None),
            ])],
            vec![term(POD_A, Some("worker")), term(POD_B, None)],
        ),
        (
            "terminating but no longer serving: left out",
            vec![web_slice(vec![EndpointInfo {
                serving: false,
                ..terminating(POD_A, None)
            }])],
            vec![],
        ),
        (
            "a slice of another Service, or of the same name in another namespace",
            vec![
                mk_slice(
                    "default",
                    "api-x",
                    "api",
                    vec![ready(POD_A, None)],
                    &[("http", TCP, 8080)],
                ),
                mk_slice(
                    "other",
                    "web-x",
                    "web",
                    vec![ready(POD_A, None)],
                    &[("http", TCP, 8080)],
                ),
            ],
            vec![],
        ),
        (
            "ports match by name and protocol",
            vec![
                mk_slice(
                    "default",
                    "web-1",
                    "web",
                    vec![ready(POD_A, None)],
                    &[("metrics", TCP, 9090)],
                ),
                mk_slice(
                    "default",
                    "web-2",
                    "web",
                    vec![ready(POD_B, None)],
                    &[("http", UDP, 8080)],
                ),
            ],
            vec![],
        ),
        (
            "two slices and one address twice: deduplicated, sorted",
            vec![
                mk_slice(
                    "default",
                    "web-2",
                    "web",
                    vec![ready(POD_B, None), ready(POD_A, None)],
                    &[("http", TCP, 8080)],
                ),
                mk_slice(
                    "default",
                    "web-1",
                    "web",
                    vec![ready(POD_A, None)],
                    &[("http", TCP, 8080)],
                ),
            ],
            vec![be(POD_A, 8080, "http", None), be(POD_B, 8080, "http", None)],
        ),
        (
            "a backend on a node address is a host-network pod",
            vec![web_slice(vec![ready(NODE_IP, Some("worker"))])],
            vec![BackendIntent {
                host_network: true,
                ..be(NODE_IP, 8080, "http", Some("worker"))
            }],
        ),
    ];
    for (what, slices, want) in cases {
        let got = compute(&web(), &slices, &DatapathConfig::default())
            .unwrap()
            .backends;
        assert_eq!(got, want, "{what}");
    }
}

// Terminating endpoints are listed per Service port, next to the other ports' ready ones.
#[test]
fn terminating_fallback_is_per_port() {
    let svc = mk_service(
        "default",
        "web",
        CLUSTER_IP,
        &[("http", TCP, 80), ("admin", TCP, 81)],
    );
    let slices = vec![
        mk_slice(
            "default",
            "web-1",
            "web",
            vec![ready(POD_A, None)],
            &[("http", TCP, 8080)],
        ),
        mk_slice(
            "default",
            "web-2",
            "web",
            vec![terminating(POD_B, None)],
            &[("admin", TCP, 8081)],
        ),
    ];
    let got = compute(&svc, &slices, &DatapathConfig::default())
        .unwrap()
        .backends;
    assert_eq!(
        got,
        vec![
            be(POD_A, 8080, "http", None),
            BackendIntent {
                terminating: true,
                ..be(POD_B, 8081, "admin", None)
            },
        ]
    );
}

// The Service's forwarding mode and algorithm count only while the annotations are honoured.
#[test]
fn mode_and_algorithm_follow_the_annotation_settings() {
    let mut svc = web();
    svc.forwarding_mode = Some(LbMode::Dsr);
    svc.algorithm = Some(LbAlgorithm::Maglev);
    let dp = |mode_annotation, algorithm_annotation| DatapathConfig {
        lb_mode: LbMode::Hybrid,
        lb_algorithm: LbAlgorithm::Random,
        mode_annotation,
        algorithm_annotation,
        ..DatapathConfig::default()
    };
    let cases = [
        (false, false, LbMode::Hybrid, LbAlgorithm::Random),
        (true, false, LbMode::Dsr, LbAlgorithm::Random),
        (false, true, LbMode::Hybrid, LbAlgorithm::Maglev),
        (true, true, LbMode::Dsr, LbAlgorithm::Maglev),
    ];
    for (m, a, want_mode, want_alg) in cases {
        let i = compute(&svc, &[], &dp(m, a)).unwrap();
        assert_eq!(
            (i.mode, i.algorithm),
            (want_mode, want_alg),
            "annotations {m} {a}"
        );
    }
    // Annotations on, but the Service has none: the config's.
    let i = compute(&web(), &[], &dp(true, true)).unwrap();
    assert_eq!((i.mode, i.algorithm), (LbMode::Hybrid, LbAlgorithm::Random));
}

// Traffic policies and session affinity are carried as the Service states them.
#[test]
fn policies_are_carried() {
    let mut svc = web();
    svc.external_traffic_local = true;
    svc.internal_traffic_local = true;
    svc.session_affinity_timeout = Some(600);
    let i = compute(&svc, &[], &DatapathConfig::default()).unwrap();
    assert!(i.external_traffic_local && i.internal_traffic_local);
    assert_eq!(i.session_affinity_timeout, Some(600));
    assert_eq!(i.name, ServiceName::new("default", "web"));
}

// Of the cluster's Services only load-balanced ones appear, keyed "namespace/name"; a later
// duplicate of a Service or of a slice stands.
#[test]
fn services_of_a_cluster() {
    let mut later = web();
    later.cluster_ips = vec![Ipv4Addr::new(10, 96, 0, 99)];
    let c = crate::ClusterState {
        services: vec![
            web(),
            {
                let mut s = mk_service("kube-system", "hl", CLUSTER_IP, &[]);
                s.cluster_ips.clear();
                s
            },
            later,
        ],
        endpoint_slices: vec![
            web_slice(vec![ready(POD_A, None)]),
            web_slice(vec![ready(POD_B, None)]),
        ],
        ..Default::default()
    };
    let m = services(&c);
    assert_eq!(m.len(), 1);
    let w = m.get("default/web").unwrap();
    assert_eq!(w.frontends[0].addr, Some(Ipv4Addr::new(10, 96, 0, 99)));
    assert_eq!(w.backends, vec![be(POD_B, 8080, "http", None)]);
    assert!(m.get("kube-system/hl").is_none() && m.get("junk").is_none());
}

// The shared map behaves as a map keyed by name, copies on write, and keeps its JSON shape.
#[test]
fn service_map_is_a_shared_map() {
    let dp = DatapathConfig::default();
    let a = compute(&web(), &[], &dp).unwrap();
    let b = compute(
        &mk_service("apps", "api", [10, 96, 0, 20], &[("", TCP, 443)]),
        &[],
        &dp,
    )
    .unwrap();
    let mut m: ServiceMap = [a.clone(), b.clone()].into_iter().collect();
    let shared = m.clone();
    assert!(m.ptr_eq(&shared));
    assert_eq!(
        m.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        ["apps/api", "default/web"]
    );
    let mut a2 = a.clone();
    a2.external_traffic_local = true;
    assert!(m.insert(a2.clone()).is_some());
    assert!(!m.ptr_eq(&shared), "copy on write");
    assert_eq!(shared.get("default/web"), Some(&a));
    assert_eq!(m.get("default/web"), Some(&a2));
    assert_ne!(m, shared);
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.starts_with("{\"apps/api\":"), "{json}");
    assert_eq!(serde_json::from_str::<ServiceMap>(&json).unwrap(), m);
    let bad = json.replace("\"apps/api\":", "\"apps/other\":");
    assert!(serde_json::from_str::<ServiceMap>(&bad).is_err());
    assert!(m.remove(&ServiceName::new("apps", "api")).is_some());
    assert_eq!(m.len(), 1);
    assert_eq!((&m).into_iter().count(), 1);
}
