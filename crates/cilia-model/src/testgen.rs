//! Builders and proptest strategies shared by the model's tests: small clusters with nodes,
//! Services, EndpointSlices and datapath settings, addresses from the lab's ranges.

use std::net::Ipv4Addr;

use proptest::prelude::*;

use crate::cluster::{ClusterState, NodeInfo, RoutingConfig, RoutingMode};
use crate::service::*;

pub fn mk_node(name: &str, ip: [u8; 4], cidr: Option<&str>) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        internal_ip: Ipv4Addr::from(ip),
        pod_cidr: cidr.map(|c| c.parse().unwrap()),
        labels: Default::default(),
    }
}

/// A ClusterIP Service with one clusterIP and the given `(name, protocol, port)` ports.
pub fn mk_service(
    ns: &str,
    name: &str,
    ip: [u8; 4],
    ports: &[(&str, Protocol, u16)],
) -> ServiceInfo {
    ServiceInfo {
        namespace: ns.into(),
        name: name.into(),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![Ipv4Addr::from(ip)],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: ports
            .iter()
            .map(|(n, p, port)| ServicePortInfo {
                name: (*n).into(),
                protocol: *p,
                port: *port,
                node_port: None,
                target_port: None,
            })
            .collect(),
        external_traffic_local: false,
        internal_traffic_local: false,
        session_affinity_timeout: None,
        load_balancer_class: None,
        forwarding_mode: None,
        algorithm: None,
        labels: Default::default(),
    }
}

/// A ready endpoint at `ip` on `node`.
pub fn ready(ip: [u8; 4], node: Option<&str>) -> EndpointInfo {
    EndpointInfo {
        addresses: vec![Ipv4Addr::from(ip)],
        ready: true,
        serving: true,
        terminating: false,
        node_name: node.map(Into::into),
    }
}

/// An endpoint that is shutting down but still serving.
pub fn terminating(ip: [u8; 4], node: Option<&str>) -> EndpointInfo {
    EndpointInfo {
        ready: false,
        serving: true,
        terminating: true,
        ..ready(ip, node)
    }
}

pub fn mk_slice(
    ns: &str,
    name: &str,
    service: &str,
    endpoints: Vec<EndpointInfo>,
    ports: &[(&str, Protocol, u16)],
) -> EndpointSliceInfo {
    EndpointSliceInfo {
        namespace: ns.into(),
        name: name.into(),
        service: service.into(),
        endpoints,
        ports: ports
            .iter()
            .map(|(n, p, port)| EndpointPortInfo {
                name: (*n).into(),
                protocol: *p,
                port: *port,
            })
            .collect(),
    }
}

fn arb_protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

fn arb_port_name() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), Just("http".to_string())]
}

fn arb_service() -> impl Strategy<Value = ServiceInfo> {
    (
        0u8..2,
        0u8..4,
        prop_oneof![
            Just(ServiceType::ClusterIP),
            Just(ServiceType::NodePort),
            Just(ServiceType::LoadBalancer),
            Just(ServiceType::ExternalName),
        ],
        proptest::collection::vec(0u8..3, 0..2),
        proptest::collection::vec(0u8..3, 0..2),
        proptest::collection::vec(0u8..3, 0..2),
        proptest::collection::vec(
            (
                arb_port_name(),
                arb_protocol(),
                79u16..82,
                proptest::option::of(30000u16..30002),
            ),
            0..3,
        ),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just(LbMode::Dsr), Just(LbMode::Hybrid)]),
        proptest::option::of(Just(LbAlgorithm::Maglev)),
    )
        .prop_map(
            |(ns, n, t, cips, eips, lbips, ports, etp, mode, alg)| ServiceInfo {
                namespace: format!("ns{ns}"),
                name: format!("svc{n}"),
                service_type: t,
                cluster_ips: cips.iter().map(|i| Ipv4Addr::new(10, 96, 0, *i)).collect(),
                external_ips: eips.iter().map(|i| Ipv4Addr::new(192, 0, 2, *i)).collect(),
                load_balancer_ips: lbips
                    .iter()
                    .map(|i| Ipv4Addr::new(198, 51, 100, *i))
                    .collect(),
                ports: ports
                    .into_iter()
                    .map(|(name, protocol, port, node_port)| ServicePortInfo {
                        name,
                        protocol,
                        port,
                        node_port,
                        target_port: None,
                    })
                    .collect(),
                external_traffic_local: etp,
                internal_traffic_local: false,
                session_affinity_timeout: None,
                load_balancer_class: None,
                forwarding_mode: mode,
                algorithm: alg,
                labels: Default::default(),
            },
        )
}

fn arb_slice() -> impl Strategy<Value = EndpointSliceInfo> {
    (
        0u8..2,
        0u8..3,
        0u8..4,
        proptest::collection::vec(
            (
                0u8..4,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(0u8..3),
            ),
            0..4,
        ),
        proptest::collection::vec((arb_port_name(), arb_protocol(), 8079u16..8082), 0..3),
    )
        .prop_map(|(ns, n, svc, eps, ports)| EndpointSliceInfo {
            namespace: format!("ns{ns}"),
            name: format!("svc{svc}-{n}"),
            service: format!("svc{svc}"),
            endpoints: eps
                .into_iter()
                .map(|(ip, ready, serving, terminating, node)| EndpointInfo {
                    // .2-.4 are also node addresses: host-network backends.
                    addresses: vec![if ip == 3 {
                        Ipv4Addr::new(172, 18, 0, 2)
                    } else {
                        Ipv4Addr::new(10, 244, 0, ip)
                    }],
                    ready,
                    serving,
                    terminating,
                    node_name: node.map(|n| format!("n{n}")),
                })
                .collect(),
            ports: ports
                .into_iter()
                .map(|(name, protocol, port)| EndpointPortInfo {
                    name,
                    protocol,
                    port,
                })
                .collect(),
        })
}

fn arb_datapath() -> impl Strategy<Value = DatapathConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(dsr, maglev, mode_ann, alg_ann, masq)| DatapathConfig {
            lb_mode: if dsr { LbMode::Dsr } else { LbMode::Snat },
            lb_algorithm: if maglev {
                LbAlgorithm::Maglev
            } else {
                LbAlgorithm::Random
            },
            mode_annotation: mode_ann,
            algorithm_annotation: alg_ann,
            masquerade: masq,
            ..DatapathConfig::default()
        })
}

/// L2 announcement inputs: policies, agents (live, lapsing, absent) and last holders.
fn arb_l2() -> impl Strategy<Value = L2Parts> {
    use crate::cluster::AgentReport;
    use crate::l2::{InterfaceRegex, L2Policy};
    use crate::selector::LabelSelector;
    (
        proptest::bool::weighted(0.8),
        proptest::collection::vec(
            (any::<bool>(), proptest::bool::weighted(0.3), any::<bool>()),
            0..3,
        ),
        proptest::collection::btree_map(
            0u8..4,
            (proptest::bool::weighted(0.7), proptest::bool::weighted(0.7)),
            0..4,
        ),
        proptest::collection::btree_map((0u8..2, 0u8..4), 0u8..4, 0..4),
        proptest::collection::btree_set((0u8..2, 0u8..4), 0..2),
    )
        .prop_map(|(enabled, policies, agents, holders, fenced)| L2Parts {
            fenced: fenced
                .into_iter()
                .map(|(ns, s)| format!("ns{ns}/svc{s}"))
                .collect(),
            enabled,
            policies: policies
                .into_iter()
                .enumerate()
                .map(|(i, (eth_only, no_node, lbips))| L2Policy {
                    name: format!("p{i}"),
                    service_selector: None,
                    node_selector: no_node.then(|| LabelSelector::from_labels([("x", "y")])),
                    interfaces: eth_only.then(|| vec![InterfaceRegex::new("^eth").unwrap()]),
                    external_ips: true,
                    load_balancer_ips: lbips,
                })
                .collect(),
            agents: agents
                .into_iter()
                .map(|(n, (live, eth))| {
                    (
                        format!("n{n}"),
                        AgentReport {
                            live,
                            up_interfaces: [if eth { "eth0" } else { "ens3" }.to_string()].into(),
                        },
                    )
                })
                .collect(),
            holders: holders
                .into_iter()
                .map(|((ns, s), n)| (format!("ns{ns}/svc{s}"), format!("n{n}")))
                .collect(),
        })
}

#[derive(Debug, Clone)]
struct L2Parts {
    enabled: bool,
    policies: Vec<crate::l2::L2Policy>,
    agents: std::collections::BTreeMap<String, crate::cluster::AgentReport>,
    holders: std::collections::BTreeMap<String, String>,
    fenced: std::collections::BTreeSet<String>,
}

/// Policy inputs: a few rules about the empire and the alliance, pods on n0-n3.
fn arb_policy() -> impl Strategy<Value = PolicyParts> {
    use crate::policy::*;
    use crate::selector::LabelSelector;
    (
        proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 0..3),
        proptest::collection::vec((0u8..4, any::<bool>(), 0u8..4), 0..4),
        any::<bool>(),
    )
        .prop_map(|(rules, pods, always)| PolicyParts {
            rules: rules
                .into_iter()
                .map(|(deny, world, host)| {
                    let peer = if world {
                        Peer::Entity(Entity::World)
                    } else {
                        Peer::Endpoints(LabelSelector::from_labels([("org", "alliance")]))
                    };
                    let rule = PeerRule {
                        peers: Some(vec![peer]),
                        ports: vec![PortMatch {
                            proto: Some(L4Proto::Tcp),
                            port: 80,
                            end_port: None,
                        }],
                    };
                    PolicyRule {
                        policy: format!("r{deny}{world}{host}"),
                        subject: if host {
                            Subject::Nodes(LabelSelector::everything())
                        } else {
                            Subject::Endpoints(LabelSelector::from_labels([("org", "empire")]))
                        },
                        ingress: if deny { vec![] } else { vec![rule.clone()] },
                        ingress_deny: if deny { vec![rule] } else { vec![] },
                        egress: vec![],
                        egress_deny: vec![],
                        default_deny_ingress: None,
                        default_deny_egress: None,
                    }
                })
                .collect(),
            pods: pods
                .into_iter()
                .enumerate()
                .map(|(i, (node, empire, ip))| PolicyPod {
                    namespace: "default".into(),
                    name: format!("pod{i}"),
                    ip: Ipv4Addr::new(10, 244, node, 10 + ip),
                    node: format!("n{node}"),
                    labels: [(
                        "org".to_string(),
                        if empire { "empire" } else { "alliance" }.to_string(),
                    )]
                    .into(),
                    namespace_labels: Default::default(),
                })
                .collect(),
            env: PolicyEnv {
                mode: if always {
                    EnforcementMode::Always
                } else {
                    EnforcementMode::Default
                },
                host_firewall: true,
                ..Default::default()
            },
        })
}

#[derive(Debug, Clone)]
struct PolicyParts {
    rules: Vec<crate::policy::PolicyRule>,
    pods: Vec<crate::policy::PolicyPod>,
    env: crate::policy::PolicyEnv,
}

/// Small clusters where things collide often: nodes n0-n3 sharing few addresses and CIDRs,
/// Services svc0-svc3 in two namespaces, slices that come and go, settings that flip, L2
/// announcement and policy inputs.
pub fn arb_cluster() -> impl Strategy<Value = ClusterState> {
    (arb_cluster_base(), arb_l2(), arb_policy()).prop_map(|(mut c, l2, pol)| {
        c.datapath.l2_announcements = l2.enabled;
        c.l2_policies = l2.policies;
        c.agents = l2.agents;
        c.l2_holders = l2.holders;
        c.l2_fenced = l2.fenced;
        c.policies = pol.rules;
        c.pods = pol.pods;
        c.policy_env = pol.env;
        c
    })
}

fn arb_cluster_base() -> impl Strategy<Value = ClusterState> {
    (
        proptest::collection::vec((0u8..4, 2u8..5, proptest::option::of(0u8..4)), 1..5),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(arb_service(), 0..5),
        proptest::collection::vec(arb_slice(), 0..6),
        arb_datapath(),
    )
        .prop_map(
            |(nodes, tunnel, auto, services, endpoint_slices, datapath)| ClusterState {
                nodes: nodes
                    .into_iter()
                    .map(|(n, ip, cidr)| NodeInfo {
                        name: format!("n{n}"),
                        internal_ip: Ipv4Addr::new(172, 18, 0, ip),
                        pod_cidr: cidr.map(|c| format!("10.244.{c}.0/24").parse().unwrap()),
                        labels: Default::default(),
                    })
                    .collect(),
                routing: RoutingConfig {
                    mode: if tunnel {
                        RoutingMode::Tunnel
                    } else {
                        RoutingMode::Native
                    },
                    auto_direct_node_routes: auto || !tunnel,
                    native_routing_cidr: None,
                },
                services,
                endpoint_slices,
                datapath,
                ..Default::default()
            },
        )
}
