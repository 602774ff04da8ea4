//! The intents of every node, kept up to date from successive `ClusterState`s by diffing each new
//! state against the last one by key: a changed EndpointSlice recomputes its one Service, once,
//! shared by every node; a moved node patches the one route that names it on every other node.
//! Equal, for every node, to a fresh `node_intent` of the same state (property-tested below).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;

use crate::cluster::{AgentReport, ClusterState, NodeInfo, RoutingConfig};
use crate::intent::{L2Map, NodeIntent, RouteIntent, node_policy, overlaps, routes_enabled};
use crate::l2::{L2Choice, L2Policy};
use crate::policy::{NodePolicy, PolicyEnv, PolicyPod, PolicyRule};
use crate::service::{
    DatapathConfig, EndpointSliceInfo, ServiceContext, ServiceInfo, ServiceMap, ServiceName,
    service_intent,
};

/// Who claims each pod CIDR: `(node name, address)` in name order. A node's route to a CIDR goes
/// via the first claimant that is not the node itself.
type Claims = BTreeMap<Ipv4Net, Vec<(String, Ipv4Addr)>>;

/// Every node's intent and what it was computed from.
#[derive(Default)]
pub struct ClusterIntents {
    /// The last state's inputs, by key.
    services_in: HashMap<ServiceName, ServiceInfo>,
    slices_in: HashMap<(String, String), EndpointSliceInfo>,
    /// The names in the order the last state listed them, and whether they were all distinct:
    /// when the next state lists the same names in the same order, it is compared in place.
    services_order: Vec<ServiceName>,
    services_unique: bool,
    slices_order: Vec<(String, String)>,
    slices_unique: bool,
    /// Slice names (in the Service's namespace) by the Service they belong to.
    slices_of: HashMap<ServiceName, BTreeSet<String>>,
    datapath: DatapathConfig,
    routing: RoutingConfig,
    node_ips: HashSet<Ipv4Addr>,
    claims: Claims,
    /// The first `NodeInfo` of each name (as `ClusterState::node` finds it).
    nodes: BTreeMap<String, NodeInfo>,
    /// L2 inputs besides Services, slices and nodes, and the choice they gave.
    l2_in: Option<L2Inputs>,
    l2_choices: BTreeMap<ServiceName, L2Choice>,
    /// The choice before fences (standbys of fenced Services).
    l2_unfenced: BTreeMap<ServiceName, L2Choice>,
    l2_by_node: BTreeMap<String, Arc<L2Map>>,
    /// Policy inputs besides nodes, and each node's compiled policy.
    policy_in: Option<PolicyInputs>,
    policy_by_node: BTreeMap<String, Arc<NodePolicy>>,
    /// The outputs.
    services: ServiceMap,
    intents: BTreeMap<String, Arc<NodeIntent>>,
}

#[derive(Clone, PartialEq)]
struct L2Inputs {
    enabled: bool,
    policies: Vec<L2Policy>,
    agents: BTreeMap<String, AgentReport>,
    holders: BTreeMap<String, String>,
    fenced: BTreeSet<String>,
}

#[derive(Clone, PartialEq)]
struct PolicyInputs {
    rules: Vec<PolicyRule>,
    pods: Vec<PolicyPod>,
    env: PolicyEnv,
}

/// What one `update` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Nodes whose intent changed (new ones included), by name.
    pub nodes: Vec<String>,
    /// Nodes that left the cluster.
    pub removed: Vec<String>,
    /// Services whose intent was recomputed.
    pub services_recomputed: usize,
}

impl ClusterIntents {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current intent of `node`.
    pub fn intent(&self, node: &str) -> Option<&Arc<NodeIntent>> {
        self.intents.get(node)
    }

    pub fn intents(&self) -> &BTreeMap<String, Arc<NodeIntent>> {
        &self.intents
    }

    /// The Services every node holds.
    pub fn services(&self) -> &ServiceMap {
        &self.services
    }

    /// The announcer of every announced Service, as of the last update.
    pub fn l2_choices(&self) -> &BTreeMap<ServiceName, L2Choice> {
        &self.l2_choices
    }

    /// Brings every intent up to `cluster`. Costs what changed: O(S) key comparisons for S
    /// Services and slices, plus the work of the Services and routes that did change.
    pub fn update(&mut self, cluster: &ClusterState) -> Changes {
        let mut changes = Changes::default();
        let services_before = self.services.clone();

        // Nodes: first of each name; node addresses; pod CIDR claims.
        let mut nodes: BTreeMap<String, NodeInfo> = BTreeMap::new();
        for n in &cluster.nodes {
            nodes.entry(n.name.clone()).or_insert_with(|| n.clone());
        }
        let node_ips: HashSet<Ipv4Addr> = cluster.nodes.iter().map(|n| n.internal_ip).collect();
        let mut claims = Claims::new();
        for n in &cluster.nodes {
            if let Some(c) = n.pod_cidr {
                claims
                    .entry(c)
                    .or_default()
                    .push((n.name.clone(), n.internal_ip));
            }
        }
        for v in claims.values_mut() {
            v.sort_by(|a, b| a.0.cmp(&b.0));
        }

        // Which Services to recompute.
        let lb_settings_changed = {
            let (a, b) = (&self.datapath, &cluster.datapath);
            (
                a.lb_mode,
                a.lb_algorithm,
                a.mode_annotation,
                a.algorithm_annotation,
            ) != (
                b.lb_mode,
                b.lb_algorithm,
                b.mode_annotation,
                b.algorithm_annotation,
            )
        };
        let all_services = lb_settings_changed || node_ips != self.node_ips;
        let mut dirty: HashSet<ServiceName> = HashSet::new();

        // Services and slices: compared in place when the lists keep their order and names (a
        // watcher updating one object), by key otherwise.
        if !self.services_in_place(&cluster.services, &mut dirty) {
            self.services_by_key(&cluster.services, &mut dirty);
        }
        if !self.slices_in_place(&cluster.endpoint_slices, &mut dirty) {
            self.slices_by_key(&cluster.endpoint_slices, &mut dirty);
        }

        self.datapath = cluster.datapath.clone();
        self.node_ips = node_ips;
        let names: Vec<ServiceName> = if all_services {
            self.services_in
                .keys()
                .chain(self.services.keys())
                .cloned()
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        } else {
            dirty.into_iter().collect()
        };
        let cx = ServiceContext {
            datapath: &self.datapath,
            node_ips: &self.node_ips,
        };
        for name in names {
            changes.services_recomputed += 1;
            let computed = self.services_in.get(&name).and_then(|svc| {
                let slices = self
                    .slices_of
                    .get(&name)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| self.slices_in.get(&(name.namespace.clone(), n.clone())));
                service_intent(svc, slices, cx)
            });
            match computed {
                Some(new) => {
                    if self.services.get_by_name(&name) != Some(&new) {
                        self.services.insert(new);
                    }
                }
                None => {
                    self.services.remove(&name);
                }
            }
        }
        let services_changed = !self.services.ptr_eq(&services_before);

        // Routes: the CIDRs whose claimants changed, unless everything must be recomputed.
        let routing_changed = self.routing != cluster.routing;
        self.routing = cluster.routing.clone();
        let changed_dsts: Vec<Ipv4Net> = if routing_changed {
            Vec::new()
        } else {
            let mut d: BTreeSet<Ipv4Net> = BTreeSet::new();
            for (k, v) in &claims {
                if self.claims.get(k) != Some(v) {
                    d.insert(*k);
                }
            }
            for k in self.claims.keys() {
                if !claims.contains_key(k) {
                    d.insert(*k);
                }
            }
            d.into_iter().collect()
        };
        self.claims = claims;

        // Nodes that left.
        let left: Vec<String> = self
            .intents
            .keys()
            .filter(|n| !nodes.contains_key(*n))
            .cloned()
            .collect();
        for n in left {
            self.intents.remove(&n);
            changes.removed.push(n);
        }

        let nodes_changed = self.nodes != nodes;
        let l2_changed = self.update_l2(cluster, nodes_changed, services_changed);
        let policy_changed = self.update_policy(cluster, nodes_changed);

        let enabled = routes_enabled(&self.routing);
        for (name, me) in &nodes {
            let old = self.intents.get(name);
            let full_routes = routing_changed
                || old.is_none_or(|o| o.pod_cidr != me.pod_cidr)
                || self
                    .nodes
                    .get(name)
                    .is_none_or(|n| n.pod_cidr != me.pod_cidr);
            let routes = if !enabled {
                old.filter(|o| o.routes.is_empty())
                    .map(|o| Routes::Same(&o.routes))
                    .unwrap_or(Routes::New(BTreeSet::new()))
            } else if full_routes {
                let r = routes_from_claims(&self.claims, me);
                match old {
                    Some(o) if *o.routes == r => Routes::Same(&o.routes),
                    _ => Routes::New(r),
                }
            } else {
                let o = old.expect("checked");
                patch_routes(&o.routes, &self.claims, me, &changed_dsts)
            };
            let facts_same = old.is_some_and(|o| {
                o.node_ip == me.internal_ip
                    && o.pod_cidr == me.pod_cidr
                    && o.routing_mode == self.routing.mode
                    && o.native_routing_cidr == self.routing.native_routing_cidr
            });
            let l2 = self.l2_by_node.get(name).cloned().unwrap_or_default();
            let l2 = match old {
                Some(o) if !l2_changed || *o.l2 == *l2 => o.l2.clone(),
                _ => l2,
            };
            let policy = self.policy_by_node.get(name).cloned().unwrap_or_default();
            let policy = match old {
                Some(o) if !policy_changed || *o.policy == *policy => o.policy.clone(),
                _ => policy,
            };
            let same = facts_same
                && matches!(routes, Routes::Same(_))
                && !services_changed
                && old.is_some_and(|o| {
                    o.datapath == self.datapath
                        && Arc::ptr_eq(&o.l2, &l2)
                        && Arc::ptr_eq(&o.policy, &policy)
                });
            if same {
                continue;
            }
            let intent = NodeIntent {
                node: name.clone(),
                node_ip: me.internal_ip,
                pod_cidr: me.pod_cidr,
                routing_mode: self.routing.mode,
                native_routing_cidr: self.routing.native_routing_cidr,
                routes: match routes {
                    Routes::Same(r) => Arc::clone(r),
                    Routes::New(r) => Arc::new(r),
                },
                services: self.services.clone(),
                datapath: self.datapath.clone(),
                l2,
                policy,
            };
            // Something differs: facts and datapath were compared, routes are `New` only when
            // they differ, and the Service list is replaced only when a Service changed.
            debug_assert!(old.is_none_or(|o| **o != intent));
            self.intents.insert(name.clone(), Arc::new(intent));
            changes.nodes.push(name.clone());
        }
        self.nodes = nodes;
        changes
    }

    /// Recomputes the L2 choice when anything it reads changed; `true` when a node's
    /// announcements may differ.
    fn update_l2(
        &mut self,
        cluster: &ClusterState,
        nodes_changed: bool,
        services_changed: bool,
    ) -> bool {
        let inputs = L2Inputs {
            enabled: cluster.datapath.l2_announcements,
            policies: cluster.l2_policies.clone(),
            agents: cluster.agents.clone(),
            holders: cluster.l2_holders.clone(),
            fenced: cluster.l2_fenced.clone(),
        };
        let active = inputs.enabled && !inputs.policies.is_empty();
        let was_active = self
            .l2_in
            .as_ref()
            .is_some_and(|i| i.enabled && !i.policies.is_empty());
        let inputs_changed = self.l2_in.as_ref() != Some(&inputs);
        if !active && !was_active {
            self.l2_in = Some(inputs);
            return false;
        }
        // The readiness of local backends (`externalTrafficPolicy: Local`) lives in slices, and
        // reaches the Service intents they feed: `services_changed` covers it.
        if !inputs_changed && !nodes_changed && !services_changed {
            return false;
        }
        self.l2_in = Some(inputs);
        let (choices, unfenced) = cluster.l2_plan();
        if choices == self.l2_choices && unfenced == self.l2_unfenced && !nodes_changed {
            return false;
        }
        let by_node: BTreeMap<String, L2Map> = crate::l2::node_l2_entries(&choices, &unfenced);
        self.l2_by_node = by_node.into_iter().map(|(n, m)| (n, Arc::new(m))).collect();
        self.l2_choices = choices;
        self.l2_unfenced = unfenced;
        true
    }

    /// Recompiles every node's policy when anything policy reads changed; `true` then.
    fn update_policy(&mut self, cluster: &ClusterState, nodes_changed: bool) -> bool {
        let inputs = PolicyInputs {
            rules: cluster.policies.clone(),
            pods: cluster.pods.clone(),
            env: cluster.policy_env.clone(),
        };
        if self.policy_in.as_ref() == Some(&inputs) && !nodes_changed {
            return false;
        }
        self.policy_in = Some(inputs);
        let mut seen = BTreeSet::new();
        self.policy_by_node = cluster
            .nodes
            .iter()
            .filter(|n| seen.insert(n.name.as_str()))
            .map(|n| (n.name.clone(), node_policy(cluster, &n.name)))
            .filter(|(_, p)| *p != NodePolicy::default())
            .map(|(n, p)| (n, Arc::new(p)))
            .collect();
        true
    }

    /// The in-place comparison: `true` when `services` lists the same names in the same order as
    /// last time, all distinct; the changed ones are then taken and marked dirty.
    fn services_in_place(
        &mut self,
        services: &[ServiceInfo],
        dirty: &mut HashSet<ServiceName>,
    ) -> bool {
        let same_names = self.services_unique
            && services.len() == self.services_order.len()
            && services
                .iter()
                .zip(&self.services_order)
                .all(|(s, n)| s.namespace == n.namespace && s.name == n.name);
        if !same_names {
            return false;
        }
        // Looked up by the names kept from last time: no allocation per unchanged Service.
        for (s, name) in services.iter().zip(&self.services_order) {
            if self.services_in.get(name) != Some(s) {
                self.services_in.insert(name.clone(), s.clone());
                dirty.insert(name.clone());
            }
        }
        true
    }

    fn services_by_key(&mut self, services: &[ServiceInfo], dirty: &mut HashSet<ServiceName>) {
        let mut services_now: HashMap<ServiceName, &ServiceInfo> =
            HashMap::with_capacity(services.len());
        for s in services {
            services_now.insert(s.service_name(), s);
        }
        self.services_in.retain(|name, _| {
            let keep = services_now.contains_key(name);
            if !keep {
                dirty.insert(name.clone());
            }
            keep
        });
        for (name, s) in &services_now {
            if self.services_in.get(name) != Some(*s) {
                self.services_in.insert(name.clone(), (*s).clone());
                dirty.insert(name.clone());
            }
        }
        self.services_unique = services_now.len() == services.len();
        self.services_order = services.iter().map(ServiceInfo::service_name).collect();
    }

    /// As [`Self::services_in_place`], for EndpointSlices.
    fn slices_in_place(
        &mut self,
        slices: &[EndpointSliceInfo],
        dirty: &mut HashSet<ServiceName>,
    ) -> bool {
        let same_names = self.slices_unique
            && slices.len() == self.slices_order.len()
            && slices
                .iter()
                .zip(&self.slices_order)
                .all(|(s, (ns, n))| s.namespace == *ns && s.name == *n);
        if !same_names {
            return false;
        }
        for (i, s) in slices.iter().enumerate() {
            if self.slices_in.get(&self.slices_order[i]) == Some(s) {
                continue;
            }
            let key = self.slices_order[i].clone();
            if let Some(old) = self.slices_in.remove(&key) {
                self.unlink_slice(&old, dirty);
            }
            self.link_slice(s, dirty);
            self.slices_in.insert(key, s.clone());
        }
        true
    }

    fn slices_by_key(&mut self, slices: &[EndpointSliceInfo], dirty: &mut HashSet<ServiceName>) {
        let mut slices_now: HashMap<(&str, &str), &EndpointSliceInfo> =
            HashMap::with_capacity(slices.len());
        for s in slices {
            slices_now.insert((&s.namespace, &s.name), s);
        }
        let gone: Vec<(String, String)> = self
            .slices_in
            .keys()
            .filter(|(ns, n)| !slices_now.contains_key(&(ns.as_str(), n.as_str())))
            .cloned()
            .collect();
        for k in gone {
            let old = self.slices_in.remove(&k).expect("listed");
            self.unlink_slice(&old, dirty);
        }
        self.slices_unique = slices_now.len() == slices.len();
        for ((ns, n), s) in slices_now {
            let key = (ns.to_string(), n.to_string());
            match self.slices_in.get(&key) {
                Some(old) if old == s => continue,
                Some(_) => {
                    let old = self.slices_in.remove(&key).expect("present");
                    self.unlink_slice(&old, dirty);
                }
                None => {}
            }
            self.link_slice(s, dirty);
            self.slices_in.insert(key, s.clone());
        }
        self.slices_order = slices
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
    }

    fn link_slice(&mut self, s: &EndpointSliceInfo, dirty: &mut HashSet<ServiceName>) {
        let svc = ServiceName::new(&s.namespace, &s.service);
        self.slices_of
            .entry(svc.clone())
            .or_default()
            .insert(s.name.clone());
        dirty.insert(svc);
    }

    fn unlink_slice(&mut self, old: &EndpointSliceInfo, dirty: &mut HashSet<ServiceName>) {
        let svc = ServiceName::new(&old.namespace, &old.service);
        if let Some(set) = self.slices_of.get_mut(&svc) {
            set.remove(&old.name);
            if set.is_empty() {
                self.slices_of.remove(&svc);
            }
        }
        dirty.insert(svc);
    }
}

enum Routes<'a> {
    Same(&'a Arc<BTreeSet<RouteIntent>>),
    New(BTreeSet<RouteIntent>),
}

/// `me`'s route to `dst`: via its first claimant other than `me`, unless `dst` overlaps `me`'s
/// own pod CIDR. The same choice `crate::intent::routes` makes walking peers by name.
fn route_to(claims: &Claims, me: &NodeInfo, dst: Ipv4Net) -> Option<RouteIntent> {
    if overlaps(me.pod_cidr, dst) {
        return None;
    }
    claims
        .get(&dst)?
        .iter()
        .find(|(n, _)| *n != me.name)
        .map(|(_, via)| RouteIntent { dst, via: *via })
}

fn routes_from_claims(claims: &Claims, me: &NodeInfo) -> BTreeSet<RouteIntent> {
    claims
        .keys()
        .filter_map(|dst| route_to(claims, me, *dst))
        .collect()
}

/// `old` with the routes to `dsts` recomputed; `Same` when none of them changed.
fn patch_routes<'a>(
    old: &'a Arc<BTreeSet<RouteIntent>>,
    claims: &Claims,
    me: &NodeInfo,
    dsts: &[Ipv4Net],
) -> Routes<'a> {
    let current = |dst: Ipv4Net| {
        old.range(
            RouteIntent {
                dst,
                via: Ipv4Addr::UNSPECIFIED,
            }..=RouteIntent {
                dst,
                via: Ipv4Addr::BROADCAST,
            },
        )
        .next()
        .copied()
    };
    let updates: Vec<(Option<RouteIntent>, Option<RouteIntent>)> = dsts
        .iter()
        .map(|d| (current(*d), route_to(claims, me, *d)))
        .filter(|(a, b)| a != b)
        .collect();
    if updates.is_empty() {
        return Routes::Same(old);
    }
    let mut routes = BTreeSet::clone(old);
    for (a, b) in updates {
        if let Some(a) = a {
            routes.remove(&a);
        }
        if let Some(b) = b {
            routes.insert(b);
        }
    }
    Routes::New(routes)
}

#[cfg(test)]
mod tests;
