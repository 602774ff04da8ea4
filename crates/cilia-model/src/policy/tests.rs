use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;
use crate::selector::LabelSelector;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(name: &str, ip: [u8; 4], node: &str, kv: &[(&str, &str)]) -> PolicyPod {
    PolicyPod {
        namespace: "default".into(),
        name: name.into(),
        ip: Ipv4Addr::from(ip),
        node: node.into(),
        labels: labels(kv),
        namespace_labels: BTreeMap::new(),
    }
}

/// The seed app (`http-sw-app.yaml`): two deathstars, a tiefighter and an xwing.
fn sw_pods() -> Vec<PolicyPod> {
    vec![
        pod(
            "deathstar-1",
            [10, 244, 1, 10],
            "worker",
            &[("org", "empire"), ("class", "deathstar")],
        ),
        pod(
            "deathstar-2",
            [10, 244, 2, 10],
            "worker2",
            &[("org", "empire"), ("class", "deathstar")],
        ),
        pod(
            "tiefighter",
            [10, 244, 2, 11],
            "worker2",
            &[("org", "empire"), ("class", "tiefighter")],
        ),
        pod(
            "xwing",
            [10, 244, 1, 12],
            "worker",
            &[("org", "alliance"), ("class", "xwing")],
        ),
    ]
}

fn lab_nodes() -> Vec<PolicyNode> {
    vec![
        PolicyNode {
            name: "control-plane".into(),
            ip: Ipv4Addr::new(172, 18, 0, 2),
            labels: labels(&[("node-role.kubernetes.io/control-plane", "")]),
        },
        PolicyNode {
            name: "worker".into(),
            ip: Ipv4Addr::new(172, 18, 0, 3),
            labels: labels(&[]),
        },
        PolicyNode {
            name: "worker2".into(),
            ip: Ipv4Addr::new(172, 18, 0, 4),
            labels: labels(&[]),
        },
    ]
}

fn sel(kv: &[(&str, &str)]) -> LabelSelector {
    LabelSelector::from_labels(kv.iter().copied())
}

fn rule(policy: &str, subject: Subject) -> PolicyRule {
    PolicyRule {
        policy: policy.into(),
        subject,
        ingress: vec![],
        ingress_deny: vec![],
        egress: vec![],
        egress_deny: vec![],
        default_deny_ingress: None,
        default_deny_egress: None,
    }
}

fn tcp(port: u16) -> PortMatch {
    PortMatch {
        proto: Some(L4Proto::Tcp),
        port,
        end_port: None,
    }
}

/// The Star Wars demo's L3/L4 rule: org=empire may reach the deathstar on TCP/80.
fn empire_only() -> PolicyRule {
    PolicyRule {
        ingress: vec![PeerRule {
            peers: Some(vec![Peer::Endpoints(sel(&[("org", "empire")]))]),
            ports: vec![tcp(80)],
        }],
        ..rule(
            "rule1",
            Subject::Endpoints(sel(&[("org", "empire"), ("class", "deathstar")])),
        )
    }
}

fn ds(ns_name: &str) -> EndpointRef {
    EndpointRef::Pod(format!("default/{ns_name}"))
}

const TIEFIGHTER: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
const XWING: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);

#[test]
fn empire_reaches_the_deathstar_on_80_and_the_alliance_does_not() {
    let env = PolicyEnv::default();
    let p = compile_node("worker", &[empire_only()], &sw_pods(), &lab_nodes(), &env);
    let ep = ds("deathstar-1");
    let pol = &p.endpoints[&ep];
    assert!(pol.ingress_enforced && !pol.egress_enforced);
    assert_eq!(
        p.decide(&ep, Dir::Ingress, TIEFIGHTER, TCP, 80),
        Decision::Allow
    );
    assert_eq!(
        p.decide(&ep, Dir::Ingress, TIEFIGHTER, TCP, 81),
        Decision::DefaultDeny
    );
    assert_eq!(
        p.decide(&ep, Dir::Ingress, TIEFIGHTER, UDP, 80),
        Decision::DefaultDeny
    );
    assert_eq!(
        p.decide(&ep, Dir::Ingress, XWING, TCP, 80),
        Decision::DefaultDeny
    );
    assert_eq!(
        p.decide(&ep, Dir::Egress, XWING, TCP, 80),
        Decision::Allow,
        "egress untouched"
    );
    // Only the selected endpoints of this node carry a policy.
    assert_eq!(p.endpoints.keys().collect::<Vec<_>>(), vec![&ep]);
    assert_eq!(p.rules, vec!["rule1".to_string()]);
    let p2 = compile_node("worker2", &[empire_only()], &sw_pods(), &lab_nodes(), &env);
    assert!(p2.endpoints.contains_key(&ds("deathstar-2")));
    assert!(!p2.endpoints.contains_key(&ds("tiefighter")));
}

#[test]
fn a_deny_beats_an_allow_from_another_policy() {
    let deny = PolicyRule {
        ingress_deny: vec![PeerRule {
            peers: Some(vec![Peer::Endpoints(sel(&[("class", "tiefighter")]))]),
            ports: vec![],
        }],
        ..rule(
            "no-tiefighters",
            Subject::Endpoints(sel(&[("class", "deathstar")])),
        )
    };
    let p = compile_node(
        "worker",
        &[empire_only(), deny],
        &sw_pods(),
        &lab_nodes(),
        &PolicyEnv::default(),
    );
    let ep = ds("deathstar-1");
    assert_eq!(
        p.decide(&ep, Dir::Ingress, TIEFIGHTER, TCP, 80),
        Decision::Deny(1)
    );
    assert_eq!(p.rules[1], "no-tiefighters");
    // The other deathstar (empire, not tiefighter) still gets in.
    assert_eq!(
        p.decide(&ep, Dir::Ingress, Ipv4Addr::new(10, 244, 2, 10), TCP, 80),
        Decision::Allow
    );
}

#[test]
fn a_wildcard_deny_beats_a_specific_allow_and_a_narrow_deny_punches_a_hole() {
    let mut r = empire_only();
    // Deny anyone on TCP/0-1023 except... (a range) — covers the empire's :80 allow.
    r.ingress_deny = vec![PeerRule {
        peers: None,
        ports: vec![PortMatch {
            proto: Some(L4Proto::Tcp),
            port: 1,
            end_port: Some(1023),
        }],
    }];
    let p = compile_node(
        "worker",
        &[r],
        &sw_pods(),
        &lab_nodes(),
        &PolicyEnv::default(),
    );
    let ep = ds("deathstar-1");
    assert!(matches!(
        p.decide(&ep, Dir::Ingress, TIEFIGHTER, TCP, 80),
        Decision::Deny(_)
    ));
    // An L3 allow with a narrow deny: everything but the denied port.
    let l3 = PolicyRule {
        ingress: vec![PeerRule {
            peers: Some(vec![Peer::Entity(Entity::Cluster)]),
            ports: vec![],
        }],
        ingress_deny: vec![PeerRule {
            peers: Some(vec![Peer::Entity(Entity::All)]),
            ports: vec![tcp(22)],
        }],
        ..rule("l3", Subject::Endpoints(sel(&[("class", "xwing")])))
    };
    let p = compile_node(
        "worker",
        &[l3],
        &sw_pods(),
        &lab_nodes(),
        &PolicyEnv::default(),
    );
    let ep = ds("xwing");
    assert_eq!(
        p.decide(&ep, Dir::Ingress, TIEFIGHTER, UDP, 53),
        Decision::Allow
    );
    assert!(matches!(
        p.decide(&ep, Dir::Ingress, TIEFIGHTER, TCP, 22),
        Decision::Deny(_)
    ));
    assert!(matches!(
        p.decide(&ep, Dir::Ingress, Ipv4Addr::new(192, 0, 2, 1), TCP, 22),
        Decision::Deny(_)
    ));
    assert_eq!(
        p.decide(&ep, Dir::Ingress, Ipv4Addr::new(192, 0, 2, 1), TCP, 80),
        Decision::DefaultDeny,
        "world is not cluster"
    );
}

#[test]
fn enable_default_deny_and_enforcement_modes() {
    let mut r = empire_only();
    r.default_deny_ingress = Some(false);
    let p = compile_node(
        "worker",
        &[r.clone()],
        &sw_pods(),
        &lab_nodes(),
        &PolicyEnv::default(),
    );
    assert_eq!(
        p.decide(&ds("deathstar-1"), Dir::Ingress, XWING, TCP, 80),
        Decision::Allow
    );
    // Any selecting rule enabling it wins.
    let p = compile_node(
        "worker",
        &[r.clone(), empire_only()],
        &sw_pods(),
        &lab_nodes(),
        &PolicyEnv::default(),
    );
    assert_eq!(
        p.decide(&ds("deathstar-1"), Dir::Ingress, XWING, TCP, 80),
        Decision::DefaultDeny
    );
    // An egress-only default deny without egress rules.
    let mut e = rule("lockdown", Subject::Endpoints(sel(&[("class", "xwing")])));
    e.default_deny_egress = Some(true);
    let p = compile_node(
        "worker",
        &[e],
        &sw_pods(),
        &lab_nodes(),
        &PolicyEnv::default(),
    );
    let pol = &p.endpoints[&ds("xwing")];
    assert!(pol.egress_enforced && !pol.ingress_enforced);
    // never / always.
    let never = PolicyEnv {
        mode: EnforcementMode::Never,
        ..Default::default()
    };
    assert_eq!(
        compile_node("worker", &[empire_only()], &sw_pods(), &lab_nodes(), &never),
        NodePolicy::default()
    );
    let always = PolicyEnv {
        mode: EnforcementMode::Always,
        ..Default::default()
    };
    let p = compile_node("worker", &[], &sw_pods(), &lab_nodes(), &always);
    assert_eq!(p.endpoints.len(), 2, "every pod of the node");
    assert_eq!(
        p.decide(&ds("xwing"), Dir::Egress, TIEFIGHTER, TCP, 80),
        Decision::DefaultDeny
    );
}

#[test]
fn the_seed_host_policy_lets_only_the_api_server_in() {
    // ccnp-control-plane.yaml: nodeSelector control-plane, ingress fromEntities kube-apiserver.
    let r = PolicyRule {
        ingress: vec![PeerRule {
            peers: Some(vec![Peer::Entity(Entity::KubeApiserver)]),
            ports: vec![],
        }],
        ..rule(
            "allow-control-plane-connectivity",
            Subject::Nodes(sel(&[("node-role.kubernetes.io/control-plane", "")])),
        )
    };
    let apiserver = Ipv4Addr::new(172, 18, 0, 100);
    let env = PolicyEnv {
        apiserver_ips: vec![apiserver],
        host_firewall: true,
        ..Default::default()
    };
    let p = compile_node(
        "control-plane",
        std::slice::from_ref(&r),
        &sw_pods(),
        &lab_nodes(),
        &env,
    );
    let host = EndpointRef::Host;
    assert_eq!(
        p.decide(&host, Dir::Ingress, apiserver, TCP, 6443),
        Decision::Allow
    );
    assert_eq!(
        p.decide(&host, Dir::Ingress, Ipv4Addr::new(172, 18, 0, 3), TCP, 22),
        Decision::DefaultDeny
    );
    assert_eq!(
        p.decide(&host, Dir::Egress, Ipv4Addr::new(172, 18, 0, 3), TCP, 22),
        Decision::Allow
    );
    // Workers are not selected; without the host firewall nothing is.
    assert!(
        compile_node(
            "worker",
            std::slice::from_ref(&r),
            &sw_pods(),
            &lab_nodes(),
            &env
        )
        .endpoints
        .is_empty()
    );
    let off = PolicyEnv {
        host_firewall: false,
        ..env.clone()
    };
    assert!(
        compile_node(
            "control-plane",
            std::slice::from_ref(&r),
            &sw_pods(),
            &lab_nodes(),
            &off
        )
        .endpoints
        .is_empty()
    );
    // The API server on a node's own address: that address is both host and kube-apiserver.
    let on_node = PolicyEnv {
        apiserver_ips: vec![Ipv4Addr::new(172, 18, 0, 3)],
        ..env
    };
    let p = compile_node("control-plane", &[r], &sw_pods(), &lab_nodes(), &on_node);
    assert_eq!(
        p.decide(&host, Dir::Ingress, Ipv4Addr::new(172, 18, 0, 3), TCP, 6443),
        Decision::Allow
    );
    assert_eq!(
        p.decide(&host, Dir::Ingress, Ipv4Addr::new(172, 18, 0, 4), TCP, 6443),
        Decision::DefaultDeny
    );
}

#[test]
fn cidr_sets_with_except_and_world() {
    let r = PolicyRule {
        egress: vec![
            PeerRule {
                peers: Some(vec![Peer::Cidr {
                    cidr: "192.0.2.0/24".parse().unwrap(),
                    except: vec!["192.0.2.128/25".parse().unwrap()],
                }]),
                ports: vec![],
            },
            PeerRule {
                peers: Some(vec![Peer::Entity(Entity::World)]),
                ports: vec![tcp(443)],
            },
        ],
        ..rule("egress", Subject::Endpoints(sel(&[("class", "xwing")])))
    };
    let p = compile_node(
        "worker",
        &[r],
        &sw_pods(),
        &lab_nodes(),
        &PolicyEnv::default(),
    );
    let ep = ds("xwing");
    assert_eq!(
        p.decide(&ep, Dir::Egress, Ipv4Addr::new(192, 0, 2, 5), UDP, 53),
        Decision::Allow
    );
    assert_eq!(
        p.decide(&ep, Dir::Egress, Ipv4Addr::new(192, 0, 2, 200), UDP, 53),
        Decision::DefaultDeny
    );
    assert_eq!(
        p.decide(&ep, Dir::Egress, Ipv4Addr::new(192, 0, 2, 200), TCP, 443),
        Decision::Allow,
        "world covers CIDR identities"
    );
    assert_eq!(
        p.decide(&ep, Dir::Egress, Ipv4Addr::new(203, 0, 113, 1), TCP, 443),
        Decision::Allow
    );
    assert_eq!(
        p.decide(&ep, Dir::Egress, TIEFIGHTER, TCP, 443),
        Decision::DefaultDeny,
        "a pod is not the world"
    );
    assert_eq!(
        p.decide(&ep, Dir::Egress, Ipv4Addr::new(203, 0, 113, 1), ICMP, 0),
        Decision::DefaultDeny
    );
}

#[test]
fn identities_are_stable_when_pods_come_and_go() {
    let before = pod_identities(&sw_pods());
    let mut more = sw_pods();
    more.push(pod(
        "probe",
        [10, 244, 0, 9],
        "control-plane",
        &[("app", "probe")],
    ));
    let after = pod_identities(&more);
    for (k, id) in &before {
        assert_eq!(after[k], *id, "{k}");
    }
    assert!(
        after
            .values()
            .all(|id| (ID_POD_MIN..ID_LOCAL_MIN).contains(id))
    );
    // Two deathstars share an identity.
    let p = compile_node(
        "worker",
        &[],
        &sw_pods(),
        &lab_nodes(),
        &PolicyEnv::default(),
    );
    assert_eq!(
        p.identity_of(Ipv4Addr::new(10, 244, 1, 10)),
        p.identity_of(Ipv4Addr::new(10, 244, 2, 10))
    );
    assert_eq!(p.identity_of(Ipv4Addr::new(172, 18, 0, 3)), ID_HOST);
    assert_eq!(p.identity_of(Ipv4Addr::new(172, 18, 0, 4)), ID_REMOTE_NODE);
    assert_eq!(p.identity_of(Ipv4Addr::new(8, 8, 8, 8)), ID_WORLD);
}

// ---- Property test: the compiled LPM tables decide exactly what the rules say. ----

const PROBE_IPS: [[u8; 4]; 9] = [
    [10, 244, 1, 10],  // deathstar-1 (worker)
    [10, 244, 2, 11],  // tiefighter
    [10, 244, 1, 12],  // xwing (worker)
    [172, 18, 0, 3],   // worker (host)
    [172, 18, 0, 4],   // worker2
    [172, 18, 0, 100], // api server
    [192, 0, 2, 5],
    [192, 0, 2, 200],
    [203, 0, 113, 7],
];
const CIDRS: [&str; 4] = [
    "192.0.2.0/24",
    "192.0.2.128/25",
    "0.0.0.0/0",
    "203.0.113.0/24",
];

fn arb_selector() -> impl Strategy<Value = LabelSelector> {
    prop_oneof![
        Just(sel(&[("org", "empire")])),
        Just(sel(&[("org", "alliance")])),
        Just(sel(&[("class", "deathstar")])),
        Just(sel(&[("k8s:class", "tiefighter")])),
        Just(LabelSelector::everything()),
    ]
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        arb_selector().prop_map(Peer::Endpoints),
        prop::sample::select(vec![
            Entity::All,
            Entity::World,
            Entity::Cluster,
            Entity::Host,
            Entity::RemoteNode,
            Entity::KubeApiserver,
            Entity::Health,
        ])
        .prop_map(Peer::Entity),
        (0..4usize, prop::option::of(0..4usize)).prop_map(|(c, e)| Peer::Cidr {
            cidr: CIDRS[c].parse().unwrap(),
            except: e.map(|e| CIDRS[e].parse().unwrap()).into_iter().collect(),
        }),
    ]
}

fn arb_port() -> impl Strategy<Value = PortMatch> {
    (
        prop::option::of(prop::sample::select(vec![L4Proto::Tcp, L4Proto::Udp])),
        prop::sample::select(vec![0u16, 22, 80, 443, 8000]),
        prop::option::of(prop::sample::select(vec![81u16, 1023, 8080])),
    )
        .prop_map(|(proto, port, end_port)| PortMatch {
            proto,
            port,
            end_port,
        })
}

fn arb_peer_rule() -> impl Strategy<Value = PeerRule> {
    (
        prop::option::of(prop::collection::vec(arb_peer(), 1..3)),
        prop::collection::vec(arb_port(), 0..3),
    )
        .prop_map(|(peers, ports)| PeerRule { peers, ports })
}

fn arb_rule() -> impl Strategy<Value = PolicyRule> {
    (
        arb_selector(),
        prop::collection::vec(arb_peer_rule(), 0..3),
        prop::collection::vec(arb_peer_rule(), 0..2),
        prop::collection::vec(arb_peer_rule(), 0..3),
        prop::collection::vec(arb_peer_rule(), 0..2),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(s, ingress, ingress_deny, egress, egress_deny, dd)| PolicyRule {
                policy: "p".into(),
                subject: Subject::Endpoints(s),
                ingress,
                ingress_deny,
                egress,
                egress_deny,
                default_deny_ingress: dd,
                default_deny_egress: None,
            },
        )
}

/// The rules read literally, without identities or tables.
fn naive(
    rules: &[PolicyRule],
    ep: &PolicyPod,
    dir: Dir,
    peer: Ipv4Addr,
    proto: u8,
    port: u16,
    env: &PolicyEnv,
) -> Decision {
    let pods = sw_pods();
    let nodes = lab_nodes();
    let ep_labels = ep.policy_labels();
    let selecting: Vec<&PolicyRule> = rules
        .iter()
        .filter(|r| matches!(&r.subject, Subject::Endpoints(s) if s.matches_with(&ep_labels, KeySyntax::CiliumSource)))
        .collect();
    if selecting.is_empty() {
        return Decision::Allow;
    }
    let peer_pod = pods.iter().find(|p| p.ip == peer);
    let is_node = nodes.iter().any(|n| n.ip == peer);
    let is_host = nodes.iter().any(|n| n.ip == peer && n.name == ep.node);
    let is_api = env.apiserver_ips.contains(&peer);
    let in_cluster = peer_pod.is_some() || is_node || is_api;
    let peer_matches = |p: &Peer| match p {
        Peer::Endpoints(s) => {
            peer_pod.is_some_and(|pp| s.matches_with(&pp.policy_labels(), KeySyntax::CiliumSource))
        }
        Peer::Entity(Entity::All) => true,
        Peer::Entity(Entity::World | Entity::WorldIpv4) => !in_cluster,
        Peer::Entity(Entity::Cluster) => peer_pod.is_some() || is_node,
        Peer::Entity(Entity::Host) => is_host,
        Peer::Entity(Entity::RemoteNode) => is_node && !is_host,
        Peer::Entity(Entity::KubeApiserver) => is_api,
        Peer::Entity(_) => false,
        Peer::Cidr { cidr, except } => {
            !in_cluster && cidr.contains(&peer) && !except.iter().any(|e| e.contains(&peer))
        }
    };
    let port_matches = |pm: &PortMatch| {
        let proto_ok = match pm.proto {
            Some(p) => p.number() == proto,
            None => [6, 17, 132].contains(&proto),
        };
        let end = pm.end_port.filter(|e| *e > pm.port).unwrap_or(pm.port);
        proto_ok && (pm.port == 0 || (pm.port..=end).contains(&port))
    };
    let matches = |pr: &PeerRule| {
        pr.peers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(peer_matches))
            && (pr.ports.is_empty() || pr.ports.iter().any(port_matches))
    };
    let (allow, deny): (Vec<&PeerRule>, Vec<&PeerRule>) = match dir {
        Dir::Ingress => (
            selecting.iter().flat_map(|r| &r.ingress).collect(),
            selecting.iter().flat_map(|r| &r.ingress_deny).collect(),
        ),
        Dir::Egress => (
            selecting.iter().flat_map(|r| &r.egress).collect(),
            selecting.iter().flat_map(|r| &r.egress_deny).collect(),
        ),
    };
    if deny.iter().any(|pr| matches(pr)) {
        return Decision::Deny(0);
    }
    if allow.iter().any(|pr| matches(pr)) {
        return Decision::Allow;
    }
    let enforced = selecting.iter().any(|r| match dir {
        Dir::Ingress => r
            .default_deny_ingress
            .unwrap_or(!r.ingress.is_empty() || !r.ingress_deny.is_empty()),
        Dir::Egress => r
            .default_deny_egress
            .unwrap_or(!r.egress.is_empty() || !r.egress_deny.is_empty()),
    });
    if enforced {
        Decision::DefaultDeny
    } else {
        Decision::Allow
    }
}

fn kind(d: Decision) -> Decision {
    match d {
        Decision::Deny(_) => Decision::Deny(0),
        other => other,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn compiled_tables_decide_like_the_rules(rules in prop::collection::vec(arb_rule(), 1..4)) {
        let env = PolicyEnv { apiserver_ips: vec![Ipv4Addr::new(172, 18, 0, 100)], ..Default::default() };
        let pods = sw_pods();
        let compiled = compile_node("worker", &rules, &pods, &lab_nodes(), &env);
        for ep in pods.iter().filter(|p| p.node == "worker") {
            let r = EndpointRef::Pod(format!("default/{}", ep.name));
            for ip in PROBE_IPS {
                let peer = Ipv4Addr::from(ip);
                for (proto, port) in [(TCP, 22), (TCP, 80), (TCP, 81), (UDP, 80), (TCP, 443), (TCP, 8080), (UDP, 9000), (ICMP, 0)] {
                    for dir in [Dir::Ingress, Dir::Egress] {
                        let want = naive(&rules, ep, dir, peer, proto, port, &env);
                        let got = compiled.decide(&r, dir, peer, proto, port);
                        prop_assert_eq!(kind(got), want, "{} {:?} peer {} proto {} port {}", ep.name, dir, peer, proto, port);
                    }
                }
            }
        }
    }
}
