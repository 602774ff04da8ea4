//! L2 announcements: which node answers ARP for which VIP, and on which interfaces.
//!
//! Cilium lets every eligible agent race for a per-Service Lease, first come first served, and
//! fails over only when the lease expires (10–20 s with its defaults). Here the operator decides:
//! for every announced Service it picks one node among the eligible ones by rendezvous hashing on
//! the Service's name, so the choice is stable (it moves only when the chosen node stops being
//! eligible, or for ~1/n of the Services when a node joins) and independent of event order. A node
//! is eligible for a Service when
//!
//! - a policy selects both (service selector with the virtual namespace/name labels, node
//!   selector on the Node's labels) and announces the kind of address the Service has
//!   (`externalIPs` / `loadBalancerIPs`);
//! - its agent is live (connected, heartbeating) and reports an interface that is up and matches
//!   one of the policy's interface regexes (none: any interface);
//! - with `externalTrafficPolicy: Local`, it runs a ready backend of the Service (Cilium announces
//!   regardless, so traffic lands on a node that drops it).
//!
//! The result is per node: VIP → (Service, interfaces to answer on). All VIPs of a Service go to
//! the same node, as with Cilium's per-Service lease.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lbipam::{CLASS_L2_ANNOUNCER, LABEL_SERVICE_NAME, LABEL_SERVICE_NAMESPACE};
use crate::selector::{LabelSelector, NilSelector, matches_optional};
use crate::service::{EndpointSliceInfo, ServiceInfo, ServiceName};

/// One compiled `spec.interfaces` pattern; compared and serialized by its text, so policies can
/// sit in the (comparable, serializable) cluster state.
#[derive(Debug, Clone)]
pub struct InterfaceRegex(pub Regex);

impl InterfaceRegex {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        Regex::new(pattern).map(InterfaceRegex)
    }

    pub fn is_match(&self, name: &str) -> bool {
        self.0.is_match(name)
    }
}

impl PartialEq for InterfaceRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for InterfaceRegex {}

impl Serialize for InterfaceRegex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for InterfaceRegex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        InterfaceRegex::new(&s)
            .map_err(|e| serde::de::Error::custom(format!("interface regex {s:?}: {e}")))
    }
}

/// A `CiliumL2AnnouncementPolicy`, validated: a policy whose selector or regex is invalid is not
/// passed in (the operator reports its condition instead), so the others keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L2Policy {
    pub name: String,
    #[serde(default)]
    pub service_selector: Option<LabelSelector>,
    #[serde(default)]
    pub node_selector: Option<LabelSelector>,
    /// Compiled `spec.interfaces` (unanchored, like Go's `regexp.MatchString`, OR-ed); `None`
    /// (unset or empty in the spec): any interface. Patterns that do not compile are left out by
    /// the operator (and reported); when none is left the policy matches no interface.
    #[serde(default)]
    pub interfaces: Option<Vec<InterfaceRegex>>,
    #[serde(default)]
    pub external_ips: bool,
    #[serde(default)]
    pub load_balancer_ips: bool,
}

impl L2Policy {
    fn matches_interface(&self, name: &str) -> bool {
        self.interfaces
            .as_ref()
            .is_none_or(|res| res.iter().any(|re| re.is_match(name)))
    }

    fn selects_service(&self, svc: &ServiceInfo) -> bool {
        let mut labels = svc.labels.clone();
        labels.insert(LABEL_SERVICE_NAMESPACE.into(), svc.namespace.clone());
        labels.insert(LABEL_SERVICE_NAME.into(), svc.name.clone());
        matches_optional(
            self.service_selector.as_ref(),
            &labels,
            NilSelector::MatchesAll,
        )
    }
}

/// What the operator knows about one node's ability to announce.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L2Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Its agent is connected and heartbeating.
    pub agent_live: bool,
    /// Interfaces its agent reports as up (carrier present).
    pub up_interfaces: BTreeSet<String>,
    /// Its agent is gone, but what it was told to announce may still be answered until its lease
    /// lapses: it is not eligible, and a Service it held is handed to no other node until then,
    /// so two nodes never answer for one VIP.
    #[serde(default)]
    pub lapsing: bool,
}

/// One VIP a node must announce.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L2Announcement {
    pub vip: Ipv4Addr,
    pub service: ServiceName,
    /// Interfaces to answer ARP on (matching, up).
    pub interfaces: BTreeSet<String>,
    /// This node does not answer ARP for the VIP: it is the Service's standby (see [`L2Choice`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// The chosen announcer of one Service, and its standby.
///
/// The standby answers no ARP. Its datapath serves the frames for the VIP that a switch floods
/// because it does not know their destination MAC: after the announcer's link went down its
/// clients keep sending to its MAC until the new announcer's gratuitous ARP, and the switch, whose
/// port for that MAC is gone, floods them. Exactly one node serving those frames (rather than every
/// node, or none until the operator has moved the VIP) keeps a failover short without copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Choice {
    pub node: String,
    pub announcements: Vec<L2Announcement>,
    /// The runner-up of the choice (none when only one node is eligible).
    pub standby: Option<L2Standby>,
}

/// A Service's standby node and the interfaces it would announce on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2Standby {
    pub node: String,
    pub interfaces: BTreeSet<String>,
}

/// Whether LB-IPAM's L2 class (or no class) lets the L2 announcer serve `svc`.
fn class_ok(svc: &ServiceInfo) -> bool {
    svc.load_balancer_class
        .as_deref()
        .is_none_or(|c| c == CLASS_L2_ANNOUNCER)
}

/// Rendezvous score of `node` for `service`: the highest wins.
fn score(service: &ServiceName, node: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(service.namespace.as_bytes());
    h.update([0]);
    h.update(service.name.as_bytes());
    h.update([0]);
    h.update(node.as_bytes());
    h.finalize().into()
}

/// Nodes with a ready backend of `svc`.
fn nodes_with_ready_backend<'a>(
    svc: &ServiceInfo,
    slices: &'a [EndpointSliceInfo],
) -> BTreeSet<&'a str> {
    slices
        .iter()
        .filter(|s| s.namespace == svc.namespace && s.service == svc.name)
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.ready)
        .filter_map(|e| e.node_name.as_deref())
        .collect()
}

/// Chooses the announcer of every announced Service. Services without an address to announce, or
/// without an eligible node, get no entry.
pub fn choose_announcers(
    policies: &[L2Policy],
    nodes: &[L2Node],
    services: &[ServiceInfo],
    slices: &[EndpointSliceInfo],
) -> BTreeMap<ServiceName, L2Choice> {
    let mut out = BTreeMap::new();
    for svc in services.iter().filter(|s| class_ok(s)) {
        // Per candidate node: the interfaces and VIPs the policies selecting it give.
        let mut candidates: BTreeMap<&str, (BTreeSet<String>, BTreeSet<Ipv4Addr>)> =
            BTreeMap::new();
        let local_only = svc
            .external_traffic_local
            .then(|| nodes_with_ready_backend(svc, slices));
        for p in policies.iter().filter(|p| p.selects_service(svc)) {
            let mut vips = BTreeSet::new();
            if p.external_ips {
                vips.extend(svc.external_ips.iter().copied());
            }
            if p.load_balancer_ips {
                vips.extend(svc.load_balancer_ips.iter().copied());
            }
            if vips.is_empty() {
                continue;
            }
            for n in nodes {
                if !n.agent_live
                    || !matches_optional(
                        p.node_selector.as_ref(),
                        &n.labels,
                        NilSelector::MatchesAll,
                    )
                    || local_only
                        .as_ref()
                        .is_some_and(|l| !l.contains(n.name.as_str()))
                {
                    continue;
                }
                let ifaces: BTreeSet<String> = n
                    .up_interfaces
                    .iter()
                    .filter(|i| p.matches_interface(i))
                    .cloned()
                    .collect();
                if ifaces.is_empty() {
                    continue;
                }
                let c = candidates.entry(n.name.as_str()).or_default();
                c.0.extend(ifaces);
                c.1.extend(vips.iter().copied());
            }
        }
        let name = svc.service_name();
        let mut ranked: Vec<_> = candidates.into_iter().collect();
        ranked.sort_by_key(|c| std::cmp::Reverse(score(&name, c.0)));
        let mut ranked = ranked.into_iter();
        let Some((node, (ifaces, vips))) = ranked.next() else {
            continue;
        };
        let standby = ranked.next().map(|(n, (ifaces, _))| L2Standby {
            node: n.to_string(),
            interfaces: ifaces,
        });
        let announcements = vips
            .into_iter()
            .map(|vip| L2Announcement {
                vip,
                service: name.clone(),
                interfaces: ifaces.clone(),
                standby: false,
            })
            .collect();
        out.insert(
            name,
            L2Choice {
                node: node.to_string(),
                announcements,
                standby,
            },
        );
    }
    out
}

/// Fences choices made by [`choose_announcers`]: a Service whose last announcer (`holders`, by
/// `namespace/name`) is lapsing and is not the new choice gets no announcer until that node's lease
/// has lapsed (the caller recomputes then, with the node no longer lapsing).
pub fn fence(
    mut choices: BTreeMap<ServiceName, L2Choice>,
    nodes: &[L2Node],
    holders: &BTreeMap<String, String>,
) -> BTreeMap<ServiceName, L2Choice> {
    let lapsing: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.lapsing)
        .map(|n| n.name.as_str())
        .collect();
    if lapsing.is_empty() {
        return choices;
    }
    choices.retain(|svc, c| {
        holders
            .get(&svc.to_string())
            .is_none_or(|h| h == &c.node || !lapsing.contains(h.as_str()))
    });
    choices
}

/// Every node's L2 entries, by node and VIP (a VIP two Services share goes to the one first by
/// name): what it announces (`choices`, fenced), then the VIPs
/// it stands by for (`standby` entries). A Service fenced out of `choices` (its old announcer may
/// still answer) has its would-be announcer (`unfenced`) as standby meanwhile: a fence lasts while
/// the old node's lease runs out, exactly when flooded frames need a server. A node never stands
/// by for a VIP it announces.
pub fn node_l2_entries(
    choices: &BTreeMap<ServiceName, L2Choice>,
    unfenced: &BTreeMap<ServiceName, L2Choice>,
) -> BTreeMap<String, BTreeMap<Ipv4Addr, L2Announcement>> {
    let mut out: BTreeMap<String, BTreeMap<Ipv4Addr, L2Announcement>> = BTreeMap::new();
    for c in choices.values() {
        let m = out.entry(c.node.clone()).or_default();
        for a in &c.announcements {
            m.entry(a.vip).or_insert_with(|| a.clone());
        }
    }
    for (svc, u) in unfenced {
        let standby = match choices.get(svc) {
            Some(c) => c.standby.clone(),
            None => Some(L2Standby {
                node: u.node.clone(),
                interfaces: u
                    .announcements
                    .first()
                    .map(|a| a.interfaces.clone())
                    .unwrap_or_default(),
            }),
        };
        let Some(sb) = standby else { continue };
        let m = out.entry(sb.node.clone()).or_default();
        for a in &u.announcements {
            m.entry(a.vip).or_insert_with(|| L2Announcement {
                interfaces: sb.interfaces.clone(),
                standby: true,
                ..a.clone()
            });
        }
    }
    out.retain(|_, m| !m.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::{LabelSelectorOperator, LabelSelectorRequirement};
    use crate::service::{EndpointInfo, ServiceType};

    const CP: &str = "node-role.kubernetes.io/control-plane";

    /// The seed policy: never the control-plane node, `^eth[0-9]+`, both address kinds.
    fn seed_policy() -> L2Policy {
        L2Policy {
            name: "default".into(),
            service_selector: None,
            node_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: CP.into(),
                    operator: LabelSelectorOperator::DoesNotExist,
                    values: None,
                }]),
            }),
            interfaces: Some(vec![InterfaceRegex::new("^eth[0-9]+").unwrap()]),
            external_ips: true,
            load_balancer_ips: true,
        }
    }

    fn node(name: &str, cp: bool, ifaces: &[&str]) -> L2Node {
        let mut labels = BTreeMap::new();
        if cp {
            labels.insert(CP.to_string(), String::new());
        }
        L2Node {
            name: name.into(),
            labels,
            agent_live: true,
            up_interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
            lapsing: false,
        }
    }

    fn lab_nodes() -> Vec<L2Node> {
        vec![
            node("control-plane", true, &["eth0"]),
            node("worker", false, &["eth0", "cilia_host"]),
            node("worker2", false, &["eth0", "cilia_host"]),
        ]
    }

    fn lb(name: &str, ip: [u8; 4]) -> ServiceInfo {
        ServiceInfo {
            namespace: "default".into(),
            name: name.into(),
            service_type: ServiceType::LoadBalancer,
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
            external_ips: vec![],
            load_balancer_ips: vec![Ipv4Addr::from(ip)],
            ports: vec![],
            external_traffic_local: false,
            internal_traffic_local: false,
            session_affinity_timeout: None,
            load_balancer_class: None,
            forwarding_mode: None,
            algorithm: None,
            labels: BTreeMap::new(),
        }
    }

    fn svcs(n: usize) -> Vec<ServiceInfo> {
        (0..n)
            .map(|i| lb(&format!("svc-{i}"), [172, 18, 250, i as u8]))
            .collect()
    }

    #[test]
    fn seed_policy_never_picks_the_control_plane_and_answers_on_eth_only() {
        let c = choose_announcers(&[seed_policy()], &lab_nodes(), &svcs(50), &[]);
        assert_eq!(c.len(), 50);
        for choice in c.values() {
            assert_ne!(choice.node, "control-plane");
            for a in &choice.announcements {
                assert_eq!(a.interfaces, BTreeSet::from(["eth0".to_string()]));
            }
        }
        let on_worker = c.values().filter(|c| c.node == "worker").count();
        assert!(
            (10..=40).contains(&on_worker),
            "spread over both workers: {on_worker}/50"
        );
    }

    #[test]
    fn choice_is_stable_and_order_independent() {
        let services = svcs(30);
        let a = choose_announcers(&[seed_policy()], &lab_nodes(), &services, &[]);
        let mut rev_nodes = lab_nodes();
        rev_nodes.reverse();
        let mut rev_svcs = services.clone();
        rev_svcs.reverse();
        let b = choose_announcers(&[seed_policy()], &rev_nodes, &rev_svcs, &[]);
        assert_eq!(a, b);
    }

    #[test]
    fn a_dead_agent_or_down_interface_moves_only_its_services() {
        let services = svcs(40);
        let before = choose_announcers(&[seed_policy()], &lab_nodes(), &services, &[]);
        for break_it in [
            (|n: &mut L2Node| n.agent_live = false) as fn(&mut L2Node),
            |n: &mut L2Node| {
                n.up_interfaces.remove("eth0");
            },
            |n: &mut L2Node| {
                n.labels.insert(CP.into(), String::new());
            },
        ] {
            let mut nodes = lab_nodes();
            break_it(&mut nodes[1]);
            let after = choose_announcers(&[seed_policy()], &nodes, &services, &[]);
            assert_eq!(after.len(), 40, "every Service still has an announcer");
            for (svc, choice) in &after {
                assert_eq!(choice.node, "worker2");
                if before[svc].node == "worker2" {
                    assert_eq!(
                        (&before[svc].node, &before[svc].announcements),
                        (&choice.node, &choice.announcements),
                        "{svc}: unaffected Services stay put"
                    );
                    assert_eq!(choice.standby, None, "{svc}: no other node is eligible");
                }
            }
        }
    }

    #[test]
    fn a_joining_node_moves_about_a_third() {
        let services = svcs(200);
        let before = choose_announcers(&[seed_policy()], &lab_nodes(), &services, &[]);
        let mut nodes = lab_nodes();
        nodes.push(node("worker3", false, &["eth0"]));
        let after = choose_announcers(&[seed_policy()], &nodes, &services, &[]);
        let moved: Vec<_> = after
            .iter()
            .filter(|(s, c)| before[*s].node != c.node)
            .collect();
        assert!(
            moved.iter().all(|(_, c)| c.node == "worker3"),
            "moves only to the new node"
        );
        assert!(
            (40..=100).contains(&moved.len()),
            "about 1/3 move: {}",
            moved.len()
        );
    }

    #[test]
    fn address_kinds_follow_the_policy_switches() {
        let mut svc = lb("web", [172, 18, 250, 1]);
        svc.external_ips = vec![Ipv4Addr::new(192, 0, 2, 9)];
        for (ext, lbips, want) in [
            (true, true, vec![[192, 0, 2, 9], [172, 18, 250, 1]]),
            (true, false, vec![[192, 0, 2, 9]]),
            (false, true, vec![[172, 18, 250, 1]]),
            (false, false, vec![]),
        ] {
            let p = L2Policy {
                external_ips: ext,
                load_balancer_ips: lbips,
                ..seed_policy()
            };
            let c = choose_announcers(&[p], &lab_nodes(), std::slice::from_ref(&svc), &[]);
            let got: BTreeSet<Ipv4Addr> = c
                .values()
                .flat_map(|c| c.announcements.iter().map(|a| a.vip))
                .collect();
            let want: BTreeSet<Ipv4Addr> = want.into_iter().map(Ipv4Addr::from).collect();
            assert_eq!(got, want, "externalIPs={ext} loadBalancerIPs={lbips}");
        }
    }

    #[test]
    fn class_and_service_selector() {
        let mut other = lb("bgp", [172, 18, 250, 2]);
        other.load_balancer_class = Some("io.cilium/bgp-control-plane".into());
        let mut l2 = lb("l2", [172, 18, 250, 3]);
        l2.load_balancer_class = Some(CLASS_L2_ANNOUNCER.into());
        let plain = lb("plain", [172, 18, 250, 4]);
        let c = choose_announcers(
            &[seed_policy()],
            &lab_nodes(),
            &[other, l2.clone(), plain.clone()],
            &[],
        );
        let names: Vec<_> = c.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["l2", "plain"]);
        // Virtual name label.
        let p = L2Policy {
            service_selector: Some(LabelSelector::from_labels([(LABEL_SERVICE_NAME, "plain")])),
            ..seed_policy()
        };
        let c = choose_announcers(&[p], &lab_nodes(), &[l2, plain], &[]);
        assert_eq!(
            c.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["plain"]
        );
    }

    #[test]
    fn local_traffic_policy_needs_a_ready_local_backend() {
        let mut svc = lb("local", [172, 18, 250, 5]);
        svc.external_traffic_local = true;
        let slice = |node: &str, ready: bool| EndpointSliceInfo {
            namespace: "default".into(),
            name: format!("local-{node}"),
            service: "local".into(),
            endpoints: vec![EndpointInfo {
                addresses: vec![Ipv4Addr::new(10, 244, 2, 9)],
                ready,
                serving: ready,
                terminating: false,
                node_name: Some(node.into()),
            }],
            ports: vec![],
        };
        let one = std::slice::from_ref(&svc);
        let c = choose_announcers(
            &[seed_policy()],
            &lab_nodes(),
            one,
            &[slice("worker2", true)],
        );
        assert_eq!(c.values().next().unwrap().node, "worker2");
        let c = choose_announcers(
            &[seed_policy()],
            &lab_nodes(),
            one,
            &[slice("worker", true)],
        );
        assert_eq!(c.values().next().unwrap().node, "worker");
        let c = choose_announcers(
            &[seed_policy()],
            &lab_nodes(),
            one,
            &[slice("worker", false)],
        );
        assert!(c.is_empty(), "no ready backend anywhere: nobody announces");
        let c = choose_announcers(
            &[seed_policy()],
            &lab_nodes(),
            one,
            &[slice("control-plane", true)],
        );
        assert!(
            c.is_empty(),
            "the only backend is on a node the policy excludes"
        );
    }

    #[test]
    fn interface_union_and_no_usable_regex() {
        let p2 = L2Policy {
            name: "host".into(),
            interfaces: Some(vec![InterfaceRegex::new("^cilia_").unwrap()]),
            ..seed_policy()
        };
        let c = choose_announcers(&[seed_policy(), p2], &lab_nodes(), &svcs(1), &[]);
        let a = &c.values().next().unwrap().announcements[0];
        assert_eq!(
            a.interfaces,
            BTreeSet::from(["cilia_host".to_string(), "eth0".into()])
        );
        // Every pattern of a policy failed to compile: it matches no interface.
        let none = L2Policy {
            interfaces: Some(vec![]),
            ..seed_policy()
        };
        assert!(choose_announcers(&[none], &lab_nodes(), &svcs(1), &[]).is_empty());
    }

    /// The holders `choices` give, and the lab's nodes with worker's agent gone (lapsing).
    fn worker_lapsing(
        choices: &BTreeMap<ServiceName, L2Choice>,
    ) -> (BTreeMap<String, String>, Vec<L2Node>) {
        let holders = choices
            .iter()
            .map(|(s, c)| (s.to_string(), c.node.clone()))
            .collect();
        let mut nodes = lab_nodes();
        nodes[1].agent_live = false;
        nodes[1].lapsing = true;
        (holders, nodes)
    }

    #[test]
    fn a_lapsing_holder_fences_its_services_until_its_lease_is_over() {
        let services = svcs(40);
        let before = choose_announcers(&[seed_policy()], &lab_nodes(), &services, &[]);
        let (holders, mut nodes) = worker_lapsing(&before);
        let fenced = fence(
            choose_announcers(&[seed_policy()], &nodes, &services, &[]),
            &nodes,
            &holders,
        );
        for (svc, c) in &before {
            if c.node == "worker" {
                assert!(
                    !fenced.contains_key(svc),
                    "{svc}: nobody until worker lapsed"
                );
            } else {
                assert_eq!(
                    (&fenced[svc].node, &fenced[svc].announcements),
                    (&c.node, &c.announcements),
                    "{svc}: worker2's Services stay put"
                );
            }
        }
        // Lapsed: the fence is gone and worker2 takes everything.
        nodes[1].lapsing = false;
        let after = fence(
            choose_announcers(&[seed_policy()], &nodes, &services, &[]),
            &nodes,
            &holders,
        );
        assert_eq!(after.len(), 40);
        assert!(after.values().all(|c| c.node == "worker2"));
        // No holders known (a fresh operator): nothing to fence.
        nodes[1].lapsing = true;
        let fresh = fence(
            choose_announcers(&[seed_policy()], &nodes, &services, &[]),
            &nodes,
            &BTreeMap::new(),
        );
        assert_eq!(fresh.len(), 40);
    }

    #[test]
    fn policies_round_trip_through_json() {
        let p = seed_policy();
        let back: L2Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let bad = serde_json::to_string(&p)
            .unwrap()
            .replace("^eth[0-9]+", "(");
        let err = serde_json::from_str::<L2Policy>(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("interface regex \"(\""), "{err}");
    }

    // Every Service with two eligible nodes has the other worker as standby: its VIPs are standby
    // entries there (never ARP entries), and never on the control plane (not eligible). While a
    // lapsing holder fences a Service, its would-be announcer stands by for it.
    #[test]
    fn the_runner_up_stands_by() {
        let services = svcs(20);
        let c = choose_announcers(&[seed_policy()], &lab_nodes(), &services, &[]);
        let entries = node_l2_entries(&c, &c);
        assert!(!entries.contains_key("control-plane"));
        for (svc, choice) in &c {
            let sb = choice.standby.as_ref().expect("two eligible workers");
            assert_ne!(sb.node, choice.node, "{svc}");
            assert_eq!(sb.interfaces, BTreeSet::from(["eth0".to_string()]));
            for a in &choice.announcements {
                assert!(!entries[&choice.node][&a.vip].standby, "{svc}: announced");
                assert!(entries[&sb.node][&a.vip].standby, "{svc}: standby");
            }
        }
        let announced = |n: &str| entries[n].values().filter(|a| !a.standby).count();
        assert_eq!(announced("worker") + announced("worker2"), 20);
        assert_eq!(entries["worker"].len() + entries["worker2"].len(), 40);

        // worker lapses: its Services are fenced (nobody announces them) and worker2 stands by
        // for them; worker2's own keep their announcer and lose their standby.
        let (holders, nodes) = worker_lapsing(&c);
        let unfenced = choose_announcers(&[seed_policy()], &nodes, &services, &[]);
        let fenced = fence(unfenced.clone(), &nodes, &holders);
        let during = node_l2_entries(&fenced, &unfenced);
        assert_eq!(during.keys().collect::<Vec<_>>(), vec!["worker2"]);
        for (svc, choice) in &c {
            for a in &choice.announcements {
                assert_eq!(
                    during["worker2"][&a.vip].standby,
                    choice.node == "worker",
                    "{svc}: worker2 stands by exactly for the fenced Services"
                );
            }
        }
    }

    #[test]
    fn per_node_view() {
        let c = choose_announcers(&[seed_policy()], &lab_nodes(), &svcs(10), &[]);
        let entries = node_l2_entries(&c, &c);
        let total: usize = entries
            .values()
            .map(|m| m.values().filter(|a| !a.standby).count())
            .sum();
        assert_eq!(total, 10);
        assert!(!entries.contains_key("control-plane"));
    }
}
