//! `CiliumClusterwideNetworkPolicy` objects → the model's [`PolicyRule`]s, and the `Valid`
//! condition that says whether they are enforced.
//!
//! A policy is applied whole or not at all: anything `cilia-api` finds wrong, or content Cilia does
//! not enforce (L7 rules, FQDNs, services, groups, node peers, ICMP type rules, named ports,
//! authentication, unknown fields), makes it `Valid=False` with every problem named, and none of
//! its rules reach the datapath — a half-applied policy would allow or drop what its author did
//! not write. Other policies are unaffected.

use cilia_api::policy::{
    CiliumClusterwideNetworkPolicy, Entity as ApiEntity, PolicyError, PortProtocol,
    Protocol as ApiProtocol, Rule, conditions, parse_ip_or_cidr,
};
use cilia_model::policy::{Entity, L4Proto, Peer, PeerRule, PolicyRule, PortMatch, Subject};
use ipnet::{IpNet, Ipv4Net};

/// Why a policy is not enforced: every problem, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<String>);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("; "))
    }
}

/// The rules of `p`, or why it cannot be enforced.
pub fn compile(p: &CiliumClusterwideNetworkPolicy) -> Result<Vec<PolicyRule>, Invalid> {
    let name = p.metadata.name.clone().unwrap_or_default();
    let mut problems: Vec<String> = match p.validate() {
        Ok(()) => Vec::new(),
        Err(v) => v.0.iter().map(PolicyError::to_string).collect(),
    };
    let mut rules = Vec::new();
    for (path, rule) in p.rules() {
        match convert_rule(&name, &path, rule) {
            Ok(r) => rules.push(r),
            Err(mut e) => problems.append(&mut e),
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        problems.dedup();
        Err(Invalid(problems))
    }
}

/// `Valid` condition fields (status, message) for a compile result.
pub fn valid_condition(result: &Result<Vec<PolicyRule>, Invalid>) -> (&'static str, String) {
    match result {
        Ok(_) => ("True", conditions::MESSAGE_VALID.to_string()),
        Err(e) => ("False", e.to_string()),
    }
}

fn convert_rule(policy: &str, path: &str, r: &Rule) -> Result<PolicyRule, Vec<String>> {
    let mut problems = Vec::new();
    let subject = match (&r.endpoint_selector, &r.node_selector) {
        (Some(s), None) => Subject::Endpoints(s.into()),
        (None, Some(s)) => Subject::Nodes(s.into()),
        // Reported by validation.
        _ => Subject::Endpoints(Default::default()),
    };
    let mut out = PolicyRule {
        policy: policy.to_string(),
        subject,
        ingress: vec![],
        ingress_deny: vec![],
        egress: vec![],
        egress_deny: vec![],
        default_deny_ingress: r.enable_default_deny.as_ref().and_then(|d| d.ingress),
        default_deny_egress: r.enable_default_deny.as_ref().and_then(|d| d.egress),
    };
    // The four rule lists differ only in their types and their peers' field names (`from*` for
    // ingress, `to*` for egress): one conversion for all.
    macro_rules! convert {
        ($list:expr, $into:expr, $name:literal, $dir:literal,
         $eps:ident, $ents:ident, $cidrs:ident, $sets:ident) => {
            for (i, x) in $list.iter().flatten().enumerate() {
                let peers = Peers {
                    endpoints: &x.$eps,
                    entities: &x.$ents,
                    cidrs: &x.$cidrs,
                    cidr_sets: &x.$sets,
                    dir: $dir,
                };
                let ports = x.to_ports.iter().flatten().map(|t| &t.ports);
                $into.push(peer_rule(
                    &format!("{path}.{}[{i}]", $name),
                    x.icmps.is_some(),
                    ports,
                    peers,
                    &mut problems,
                ));
            }
        };
    }
    convert!(
        r.ingress,
        out.ingress,
        "ingress",
        "from",
        from_endpoints,
        from_entities,
        from_cidr,
        from_cidr_set
    );
    convert!(
        r.ingress_deny,
        out.ingress_deny,
        "ingressDeny",
        "from",
        from_endpoints,
        from_entities,
        from_cidr,
        from_cidr_set
    );
    convert!(
        r.egress,
        out.egress,
        "egress",
        "to",
        to_endpoints,
        to_entities,
        to_cidr,
        to_cidr_set
    );
    convert!(
        r.egress_deny,
        out.egress_deny,
        "egressDeny",
        "to",
        to_endpoints,
        to_entities,
        to_cidr,
        to_cidr_set
    );
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The peer fields of one rule entry (`from*` for ingress, `to*` for egress).
struct Peers<'a> {
    endpoints: &'a Option<Vec<cilia_api::selector::LabelSelector>>,
    entities: &'a Option<Vec<ApiEntity>>,
    cidrs: &'a Option<Vec<String>>,
    cidr_sets: &'a Option<Vec<cilia_api::policy::CidrRule>>,
    dir: &'static str,
}

/// One ingress/egress (deny) entry; `icmps` refuses the entry (not enforced).
fn peer_rule<'a>(
    path: &str,
    icmps: bool,
    ports_lists: impl Iterator<Item = &'a Option<Vec<PortProtocol>>>,
    peers: Peers<'_>,
    problems: &mut Vec<String>,
) -> PeerRule {
    if icmps {
        problems.push(format!(
            "{path}.icmps: ICMP type rules are not enforced by cilia"
        ));
    }
    let ports = ports(path, ports_lists, problems);
    let peers = convert_peers(path, peers, problems);
    PeerRule { peers, ports }
}

fn convert_peers(path: &str, p: Peers<'_>, problems: &mut Vec<String>) -> Option<Vec<Peer>> {
    let Peers {
        endpoints,
        entities,
        cidrs,
        cidr_sets,
        dir,
    } = p;
    if endpoints.is_none() && entities.is_none() && cidrs.is_none() && cidr_sets.is_none() {
        return None;
    }
    let mut out = Vec::new();
    out.extend(
        endpoints
            .iter()
            .flatten()
            .map(|s| Peer::Endpoints(s.into())),
    );
    out.extend(entities.iter().flatten().map(|e| Peer::Entity(entity(*e))));
    let v4 = |p: &str, v: &str, problems: &mut Vec<String>| -> Option<Ipv4Net> {
        match parse_ip_or_cidr(p, v) {
            Ok(IpNet::V4(n)) => Some(n),
            // IPv6 peers never match on an IPv4 datapath: refuse rather than silently ignore.
            Ok(IpNet::V6(_)) => {
                problems.push(format!(
                    "{p}: IPv6 CIDR {v:?} is not enforced by cilia (IPv4 only)"
                ));
                None
            }
            Err(_) => None, // reported by validation
        }
    };
    for (i, c) in cidrs.iter().flatten().enumerate() {
        let p = format!("{path}.{dir}CIDR[{i}]");
        if let Some(cidr) = v4(&p, c, problems) {
            out.push(Peer::Cidr {
                cidr,
                except: vec![],
            });
        }
    }
    for (i, c) in cidr_sets.iter().flatten().enumerate() {
        let p = format!("{path}.{dir}CIDRSet[{i}]");
        let Some(cidr) = c
            .cidr
            .as_deref()
            .and_then(|v| v4(&format!("{p}.cidr"), v, problems))
        else {
            continue;
        };
        let except = c
            .except
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(j, e)| v4(&format!("{p}.except[{j}]"), e, problems))
            .collect();
        out.push(Peer::Cidr { cidr, except });
    }
    Some(out)
}

fn entity(e: ApiEntity) -> Entity {
    match e {
        ApiEntity::All => Entity::All,
        ApiEntity::World => Entity::World,
        ApiEntity::WorldIpv4 => Entity::WorldIpv4,
        ApiEntity::WorldIpv6 => Entity::WorldIpv6,
        ApiEntity::Cluster => Entity::Cluster,
        ApiEntity::Host => Entity::Host,
        ApiEntity::RemoteNode => Entity::RemoteNode,
        ApiEntity::KubeApiserver => Entity::KubeApiserver,
        ApiEntity::Ingress => Entity::Ingress,
        ApiEntity::Health => Entity::Health,
        ApiEntity::Init => Entity::Init,
        ApiEntity::Unmanaged => Entity::Unmanaged,
        ApiEntity::None => Entity::None,
    }
}

fn ports<'a>(
    path: &str,
    lists: impl Iterator<Item = &'a Option<Vec<PortProtocol>>>,
    problems: &mut Vec<String>,
) -> Vec<PortMatch> {
    let mut out = Vec::new();
    for (i, list) in lists.enumerate() {
        for (j, pp) in list.iter().flatten().enumerate() {
            let p = format!("{path}.toPorts[{i}].ports[{j}]");
            let Some((start, end)) = pp.port_range() else {
                problems.push(format!(
                    "{p}.port: named port {:?} is not enforced by cilia; use the number",
                    pp.port
                ));
                continue;
            };
            let proto = match pp.protocol() {
                ApiProtocol::Tcp => Some(L4Proto::Tcp),
                ApiProtocol::Udp => Some(L4Proto::Udp),
                ApiProtocol::Sctp => Some(L4Proto::Sctp),
                ApiProtocol::Any => None,
            };
            out.push(PortMatch {
                proto,
                port: start,
                end_port: (end > start).then_some(end),
            });
        }
        // `toPorts` present but with no port: the rule's L4 part allows every port.
        if list.as_ref().is_none_or(Vec::is_empty) {
            out.push(PortMatch {
                proto: None,
                port: 0,
                end_port: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> CiliumClusterwideNetworkPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_seed_host_policy_compiles() {
        let seed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/seed/ccnp-control-plane.yaml"
        ))
        .unwrap();
        let rules = compile(&policy(&seed)).unwrap();
        assert_eq!(rules.len(), 1);
        let r = &rules[0];
        assert_eq!(r.policy, "allow-control-plane-connectivity");
        assert!(matches!(&r.subject, Subject::Nodes(_)));
        assert_eq!(
            r.ingress,
            vec![PeerRule {
                peers: Some(vec![Peer::Entity(Entity::KubeApiserver)]),
                ports: vec![]
            }]
        );
        let (status, msg) = valid_condition(&Ok(rules));
        assert_eq!(
            (status, msg.as_str()),
            ("True", "Policy validation succeeded")
        );
    }

    #[test]
    fn l3_l4_rule_with_ranges_any_protocol_and_cidr_sets() {
        let p = policy(
            r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: rule1}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8000", endPort: 8080}]}]
  egressDeny:
  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
  enableDefaultDeny: {egress: false}
"#,
        );
        let rules = compile(&p).unwrap();
        let r = &rules[0];
        assert_eq!(
            r.ingress[0].ports,
            vec![
                PortMatch {
                    proto: Some(L4Proto::Tcp),
                    port: 80,
                    end_port: None
                },
                PortMatch {
                    proto: None,
                    port: 8000,
                    end_port: Some(8080)
                },
            ]
        );
        assert_eq!(
            r.egress_deny[0].peers,
            Some(vec![Peer::Cidr {
                cidr: "192.0.2.0/24".parse().unwrap(),
                except: vec!["192.0.2.128/25".parse().unwrap()],
            }])
        );
        assert_eq!(
            (r.default_deny_ingress, r.default_deny_egress),
            (None, Some(false))
        );
    }

    #[test]
    fn l7_rules_and_named_ports_make_the_whole_policy_invalid() {
        let p = policy(
            r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: l7}
specs:
- endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
- endpointSelector: {}
  egress:
  - toPorts: [{ports: [{port: http}]}]
"#,
        );
        let e = compile(&p).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("specs[0].ingress[0].toPorts[0].rules"),
            "{text}"
        );
        assert!(
            text.contains("specs[1].egress[0].toPorts[0].ports[0].port: named port \"http\""),
            "{text}"
        );
        let (status, msg) = valid_condition(&Err(e.clone()));
        assert_eq!(status, "False");
        assert_eq!(msg, text);
    }
}
