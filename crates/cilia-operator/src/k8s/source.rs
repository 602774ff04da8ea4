//! The Kubernetes source: watchers for Nodes, Services, EndpointSlices, `CiliumLoadBalancerIPPool`s,
//! the operator's ConfigMaps and, for policy and L2 announcements, Pods, Namespaces,
//! `CiliumClusterwideNetworkPolicy`s and `CiliumL2AnnouncementPolicy`s feed one task that owns the objects, the LB-IPAM index and the
//! cluster state. Events are drained in batches, so a burst (10,000 Services at startup) becomes
//! one LB-IPAM reset and one cluster-state publication, not 10,000.
//!
//! - Relists (a watcher's `Init … InitDone`) replace that kind's objects wholesale, so objects
//!   deleted while the operator was down or disconnected disappear; LB-IPAM is then reset from
//!   the objects, which carry the statuses written before: nothing moves.
//! - Only the leader writes statuses. A replica that becomes leader resets LB-IPAM from what it
//!   observes and writes only what differs; the others keep their index warm and serve intents.
//! - A written status is fed back from the API server's answer, so LB-IPAM's view of the object
//!   is current before the watch event arrives.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cilia_api::config::ipmasq::IpMasqAgentConfig;
use cilia_model::l2::L2Policy;
use cilia_model::lbipam::{self, Changes, LbIpam, ServiceKey, ServiceLbStatus};
use cilia_model::policy::{PolicyEnv, PolicyPod, PolicyRule};
use cilia_model::service::{EndpointSliceInfo, ServiceInfo};
use cilia_model::{ClusterState, NodeInfo};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::config::{self, CILIUM_CONFIG, IP_MASQ_AGENT, OperatorConfig};
use super::convert::{self, Skipped};
use super::status::{self, FIELD_MANAGER};

/// How the source behaves.
#[derive(Debug, Clone)]
pub struct KubeSourceOptions {
    /// Namespace of `cilium-config` and `ip-masq-agent`.
    pub config_namespace: String,
    /// Status writes in flight at once.
    pub write_concurrency: usize,
    /// The cluster state is published at most this often (bursts are coalesced).
    pub publish_interval: Duration,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        KubeSourceOptions {
            config_namespace: "kube-system".into(),
            write_concurrency: 32,
            publish_interval: Duration::from_millis(100),
        }
    }
}

/// The pool kind, watched untyped so one malformed pool cannot stall the watch of all others.
pub fn pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cilium.io", "v2", "CiliumLoadBalancerIPPool"),
        "ciliumloadbalancerippools",
    )
}

/// How long the first publication waits for the policy kinds (CRDs) to be listed. Publishing
/// without them would briefly lift every policy after an operator restart. A CRD that is not
/// installed answers 404 and counts as listed with no objects at once; this bounds the wait when
/// listing fails otherwise (RBAC, a broken API server), so routes and Services never wait long.
pub const CRD_SYNC_GRACE: Duration = Duration::from_secs(5);

/// One watch event of one kind (boxed: the kinds differ much in size).
enum Event {
    Node(Box<watcher::Event<Node>>),
    Pod(Box<watcher::Event<Pod>>),
    Namespace(Box<watcher::Event<Namespace>>),
    Ccnp(Box<watcher::Event<DynamicObject>>),
    L2Policy(Box<watcher::Event<DynamicObject>>),
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Pool(Box<watcher::Event<DynamicObject>>),
    ConfigMap(Box<watcher::Event<ConfigMap>>),
    /// The API server does not serve this kind (its CRD is not installed): no objects of it.
    Missing(CrdKind),
}

/// The CRD kinds whose absence means "no objects".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrdKind {
    Ccnp,
    L2Policy,
}

/// Whether a watch error says the resource does not exist on the API server.
fn is_missing(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// Like [`forward`], for a CRD kind: a 404 becomes [`Event::Missing`].
fn forward_crd<S>(
    what: &'static str,
    kind: CrdKind,
    stream: S,
    tx: mpsc::UnboundedSender<Event>,
    wrap: fn(watcher::Event<DynamicObject>) -> Event,
) -> tokio::task::JoinHandle<()>
where
    S: Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => wrap(ev),
                Err(e) if is_missing(&e) => {
                    debug!(
                        kind = what,
                        "not served (CRD not installed): no objects of it"
                    );
                    Event::Missing(kind)
                }
                Err(e) => {
                    warn!(kind = what, error = %e, "watch failed; retrying");
                    continue;
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    })
}

fn forward<K, S>(
    what: &'static str,
    stream: S,
    tx: mpsc::UnboundedSender<Event>,
    wrap: fn(watcher::Event<K>) -> Event,
) -> tokio::task::JoinHandle<()>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(ev)).is_err() {
                        return;
                    }
                }
                // The watcher retries with backoff by itself.
                Err(e) => warn!(kind = what, error = %e, "watch failed; retrying"),
            }
        }
    })
}

fn key_of(meta: &kube::api::ObjectMeta) -> String {
    match &meta.namespace {
        Some(ns) => format!("{ns}/{}", meta.name.as_deref().unwrap_or("")),
        None => meta.name.clone().unwrap_or_default(),
    }
}

/// Objects of one kind, with the relist in progress.
struct Objects<K> {
    items: BTreeMap<String, K>,
    relist: Option<BTreeMap<String, K>>,
    synced: bool,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Objects {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

/// What an event did to a kind's objects.
enum Effect<K> {
    None,
    /// One object changed (`Some`) or went away (`None`).
    One(String, Option<K>),
    /// A relist finished: every object may have changed.
    All,
}

fn rv(meta: &kube::api::ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref()?.parse().ok()
}

impl<K: Resource + Clone> Objects<K> {
    fn apply(&mut self, ev: watcher::Event<K>) -> Effect<K> {
        match ev {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                Effect::None
            }
            watcher::Event::InitApply(o) => {
                let key = key_of(o.meta());
                self.relist.get_or_insert_with(BTreeMap::new).insert(key, o);
                Effect::None
            }
            watcher::Event::InitDone => {
                self.items = self.relist.take().unwrap_or_default();
                self.synced = true;
                Effect::All
            }
            watcher::Event::Apply(o) => {
                let key = key_of(o.meta());
                // A status write's answer may be ahead of the watch: never step back.
                if let (Some(have), Some(new)) = (
                    self.items.get(&key).and_then(|h| rv(h.meta())),
                    rv(o.meta()),
                ) && new < have
                {
                    return Effect::None;
                }
                self.items.insert(key.clone(), o.clone());
                Effect::One(key, Some(o))
            }
            watcher::Event::Delete(o) => {
                let key = key_of(o.meta());
                self.items.remove(&key);
                Effect::One(key, None)
            }
        }
    }
}

/// A status write to do.
enum Write {
    Service {
        key: ServiceKey,
        patch: serde_json::Value,
    },
    Pool {
        name: String,
        patch: serde_json::Value,
    },
}

/// The result of a status write.
enum Written {
    Service(ServiceKey, Box<Result<Service, kube::Error>>),
    Pool(String, Box<Result<DynamicObject, kube::Error>>),
}

/// The state the source task owns.
struct State {
    client: Client,
    opts: KubeSourceOptions,
    nodes: Objects<Node>,
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
    pools: Objects<DynamicObject>,
    config_maps: Objects<ConfigMap>,
    pods: Objects<Pod>,
    namespaces: Objects<Namespace>,
    ccnps: Objects<DynamicObject>,
    l2_objects: Objects<DynamicObject>,
    /// When the source started (for [`CRD_SYNC_GRACE`]).
    started: Instant,
    /// Converted forms, kept so publishing is a copy.
    node_infos: BTreeMap<String, NodeInfo>,
    service_infos: BTreeMap<String, ServiceInfo>,
    slice_infos: BTreeMap<String, EndpointSliceInfo>,
    /// Pods that are policy endpoints, by `namespace/name`.
    pod_infos: BTreeMap<String, PolicyPod>,
    /// Rules of every CCNP that converts whole, by name (a failing one is absent).
    policy_rules: BTreeMap<String, Vec<PolicyRule>>,
    /// The working parts of every L2 policy, by name.
    l2_infos: BTreeMap<String, L2Policy>,
    /// Last parsed pool per name (a pool that stops parsing keeps its last good form).
    parsed_pools: BTreeMap<String, lbipam::Pool>,
    config: OperatorConfig,
    /// `None` until pools, Services and ConfigMaps are listed (or while LB-IPAM is disabled).
    ipam: Option<LbIpam>,
    leader: bool,
    /// Statuses to write (latest wins), while leading.
    pending_services: BTreeMap<ServiceKey, ServiceLbStatus>,
    pending_pools: BTreeMap<String, Vec<lbipam::Condition>>,
    /// What was last reported per object, so a status-only update does not repeat it.
    noted: HashMap<String, Vec<Skipped>>,
    cluster_dirty: bool,
}

impl State {
    fn note(&mut self, key: String, skipped: Vec<Skipped>) {
        if skipped.is_empty() {
            self.noted.remove(&key);
            return;
        }
        if self.noted.get(&key) != Some(&skipped) {
            for s in &skipped {
                warn!(object = %s.object, field = %s.field, value = %s.value, "{}", s.reason);
            }
            self.noted.insert(key, skipped);
        }
    }

    fn lb_ready(&self) -> bool {
        self.pools.synced && self.services.synced && self.config_maps.synced
    }

    /// The built-in kinds are listed (they always exist).
    fn builtins_ready(&self) -> bool {
        self.nodes.synced
            && self.services.synced
            && self.slices.synced
            && self.config_maps.synced
            && self.pods.synced
            && self.namespaces.synced
    }

    /// The policy CRDs are listed, or waiting for them is over.
    fn crds_ready(&self) -> bool {
        (self.ccnps.synced && self.l2_objects.synced) || self.started.elapsed() >= CRD_SYNC_GRACE
    }

    fn cluster_ready(&self) -> bool {
        self.builtins_ready() && self.crds_ready()
    }

    /// Re-reads pod `key` (with its namespace's labels).
    fn convert_pod(&mut self, key: &str) {
        let Some(pod) = self.pods.items.get(key) else {
            self.pod_infos.remove(key);
            self.noted.remove(&format!("pod {key}"));
            return;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let ns_labels = self
            .namespaces
            .items
            .get(&ns)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        let (info, skipped) = convert::policy_pod(pod, &ns_labels);
        self.note(format!("pod {key}"), skipped);
        match info {
            Some(i) => self.pod_infos.insert(key.to_string(), i),
            None => self.pod_infos.remove(key),
        };
    }

    /// Re-reads every pod of namespace `ns` (its labels changed).
    fn convert_namespace_pods(&mut self, ns: &str) {
        let prefix = format!("{ns}/");
        let keys: Vec<String> = self
            .pods
            .items
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in keys {
            self.convert_pod(&k);
        }
    }

    fn convert_all_pods(&mut self) {
        self.pod_infos.clear();
        for k in self.pods.items.keys().cloned().collect::<Vec<_>>() {
            self.convert_pod(&k);
        }
    }

    /// Re-reads CCNP `name`: its rules, or nothing when it does not convert whole.
    fn convert_ccnp(&mut self, name: &str) {
        let note_key = format!("ccnp {name}");
        let Some(obj) = self.ccnps.items.get(name) else {
            self.policy_rules.remove(name);
            self.noted.remove(&note_key);
            return;
        };
        let value = match serde_json::to_value(obj) {
            Ok(v) => v,
            Err(e) => {
                warn!(policy = name, error = %e, "cannot re-encode the policy; not enforced");
                self.policy_rules.remove(name);
                return;
            }
        };
        match convert::ccnp_rules(value) {
            Ok(rules) => {
                self.note(note_key, Vec::new());
                self.policy_rules.insert(name.to_string(), rules);
            }
            Err(skipped) => {
                self.note(note_key, vec![skipped]);
                self.policy_rules.remove(name);
            }
        }
    }

    /// Re-reads L2 policy `name`, keeping the parts that work.
    fn convert_l2_policy(&mut self, name: &str) {
        let note_key = format!("l2policy {name}");
        let Some(obj) = self.l2_objects.items.get(name) else {
            self.l2_infos.remove(name);
            self.noted.remove(&note_key);
            return;
        };
        let (policy, skipped) = match serde_json::to_value(obj) {
            Ok(v) => convert::l2_policy(v),
            Err(e) => {
                warn!(policy = name, error = %e, "cannot re-encode the L2 policy; not applied");
                (None, Vec::new())
            }
        };
        self.note(note_key, skipped);
        match policy {
            Some(p) => self.l2_infos.insert(name.to_string(), p),
            None => self.l2_infos.remove(name),
        };
    }

    /// Enforcement settings from `cilium-config`, and the API server's addresses.
    fn policy_env(&self) -> PolicyEnv {
        let slices: Vec<&EndpointSliceInfo> = self.slice_infos.values().collect();
        PolicyEnv {
            apiserver_ips: convert::apiserver_ips(&slices),
            ..self.config.policy.clone()
        }
    }

    fn convert_node(&mut self, key: &str) {
        match self.nodes.items.get(key).map(convert::node_info) {
            Some((info, skipped)) => {
                self.note(format!("node {key}"), skipped);
                match info {
                    Some(i) => self.node_infos.insert(key.to_string(), i),
                    None => self.node_infos.remove(key),
                };
            }
            None => {
                self.node_infos.remove(key);
            }
        }
    }

    fn convert_service(&mut self, key: &str) {
        match self.services.items.get(key).map(convert::service_info) {
            Some((info, skipped)) => {
                self.note(format!("service {key}"), skipped);
                self.service_infos.insert(key.to_string(), info);
            }
            None => {
                self.service_infos.remove(key);
            }
        }
    }

    fn convert_slice(&mut self, key: &str) {
        match self.slices.items.get(key).map(convert::endpoint_slice_info) {
            Some((info, skipped)) => {
                self.note(format!("endpointslice {key}"), skipped);
                match info {
                    Some(i) => self.slice_infos.insert(key.to_string(), i),
                    None => self.slice_infos.remove(key),
                };
            }
            None => {
                self.slice_infos.remove(key);
            }
        }
    }

    /// Re-reads pool `name` from its object. Returns whether LB-IPAM's view of it changed.
    fn convert_pool(&mut self, name: &str) -> bool {
        let Some(obj) = self.pools.items.get(name) else {
            self.noted.remove(&format!("pool {name}"));
            return self.parsed_pools.remove(name).is_some();
        };
        let value = match serde_json::to_value(obj) {
            Ok(v) => v,
            Err(e) => {
                warn!(pool = name, error = %e, "cannot re-encode the pool; keeping its last form");
                return false;
            }
        };
        match convert::parse_pool(value) {
            Ok(typed) => {
                let (pool, skipped) = convert::lb_pool(&typed);
                self.note(format!("pool {name}"), skipped);
                let changed = self.parsed_pools.get(name) != Some(&pool);
                self.parsed_pools.insert(name.to_string(), pool);
                changed
            }
            Err(e) => {
                self.note(format!("pool {name}"), vec![e]);
                false
            }
        }
    }

    fn lb_service(&mut self, key: &str) -> Option<lbipam::Service> {
        let (svc, skipped) = convert::lb_service(self.services.items.get(key)?);
        self.note(format!("lb-service {key}"), skipped);
        Some(svc)
    }

    fn take_changes(&mut self, changes: Changes) {
        if !self.leader {
            return;
        }
        for c in changes.services {
            self.pending_services.insert(c.key, c.status);
        }
        for p in changes.pools {
            self.pending_pools.insert(p.name, p.conditions);
        }
    }

    /// Rebuilds LB-IPAM from every object (first sync, relist, config switch, new leadership).
    fn reset_ipam(&mut self) {
        if !self.lb_ready() || !self.config.lb_ipam_enabled {
            self.ipam = None;
            return;
        }
        let keys: Vec<String> = self.services.items.keys().cloned().collect();
        let services: Vec<lbipam::Service> =
            keys.iter().filter_map(|k| self.lb_service(k)).collect();
        let pools: Vec<lbipam::Pool> = self.parsed_pools.values().cloned().collect();
        let mut ipam = LbIpam::new(self.config.lb_ipam);
        let changes = ipam.reset(self.config.lb_ipam, pools, services);
        info!(
            pools = self.parsed_pools.len(),
            services = keys.len(),
            statuses_to_write = changes.services.len() + changes.pools.len(),
            leader = self.leader,
            "LB-IPAM rebuilt from the cluster"
        );
        self.ipam = Some(ipam);
        self.pending_services.clear();
        self.pending_pools.clear();
        self.take_changes(changes);
    }

    fn apply_config(&mut self) -> bool {
        let cm = |name: &str| {
            self.config_maps
                .items
                .get(&format!("{}/{name}", self.opts.config_namespace))
                .and_then(|c| c.data.clone())
        };
        let raw = cm(CILIUM_CONFIG).unwrap_or_default();
        let cilium = match config::parse_cilium_config(&raw) {
            Ok(p) => {
                for w in &p.warnings {
                    debug!(configmap = CILIUM_CONFIG, "{w}");
                }
                p.config
            }
            Err(e) => {
                warn!("{e}; keeping the last good configuration");
                return false;
            }
        };
        let masq = match cm(IP_MASQ_AGENT) {
            None => IpMasqAgentConfig::default(),
            Some(data) => match config::parse_ip_masq_agent(&data) {
                Ok(p) => {
                    for w in &p.warnings {
                        warn!(configmap = IP_MASQ_AGENT, "{w}");
                    }
                    p.config
                }
                Err(e) => {
                    warn!("{e}; keeping the last good configuration");
                    return false;
                }
            },
        };
        let next = config::build(&cilium, &raw, &masq);
        if next == self.config {
            return false;
        }
        info!(
            lb_ipam = next.lb_ipam_enabled,
            routing = ?next.routing.mode,
            kube_proxy_replacement = next.datapath.kube_proxy_replacement,
            "configuration changed"
        );
        let was = self.config.clone();
        self.config = next;
        self.cluster_dirty = true;
        if was.lb_ipam_enabled != self.config.lb_ipam_enabled {
            self.reset_ipam();
        } else if was.lb_ipam != self.config.lb_ipam
            && let Some(ipam) = self.ipam.as_mut()
        {
            let changes = ipam.set_config(self.config.lb_ipam);
            self.take_changes(changes);
        }
        true
    }

    /// Applies a batch of events; LB-IPAM sees each changed object once, or one reset.
    fn apply_batch(&mut self, batch: Vec<Event>) {
        let was_ready = self.lb_ready();
        let mut reset = false;
        let mut config_changed = false;
        let mut svc_keys = BTreeSet::new();
        let mut pool_names = BTreeSet::new();
        for ev in batch {
            match ev {
                Event::Node(e) => match self.nodes.apply(*e) {
                    Effect::None => {}
                    Effect::One(k, _) => {
                        self.convert_node(&k);
                        self.cluster_dirty = true;
                    }
                    Effect::All => {
                        self.node_infos.clear();
                        for k in self.nodes.items.keys().cloned().collect::<Vec<_>>() {
                            self.convert_node(&k);
                        }
                        self.cluster_dirty = true;
                    }
                },
                Event::Service(e) => match self.services.apply(*e) {
                    Effect::None => {}
                    Effect::One(k, _) => {
                        self.convert_service(&k);
                        svc_keys.insert(k);
                        self.cluster_dirty = true;
                    }
                    Effect::All => {
                        self.service_infos.clear();
                        for k in self.services.items.keys().cloned().collect::<Vec<_>>() {
                            self.convert_service(&k);
                        }
                        reset = true;
                        self.cluster_dirty = true;
                    }
                },
                Event::Slice(e) => match self.slices.apply(*e) {
                    Effect::None => {}
                    Effect::One(k, _) => {
                        self.convert_slice(&k);
                        self.cluster_dirty = true;
                    }
                    Effect::All => {
                        self.slice_infos.clear();
                        for k in self.slices.items.keys().cloned().collect::<Vec<_>>() {
                            self.convert_slice(&k);
                        }
                        self.cluster_dirty = true;
                    }
                },
                Event::Pod(e) => match self.pods.apply(*e) {
                    Effect::None => {}
                    Effect::One(k, _) => {
                        self.convert_pod(&k);
                        self.cluster_dirty = true;
                    }
                    Effect::All => {
                        self.convert_all_pods();
                        self.cluster_dirty = true;
                    }
                },
                Event::Namespace(e) => match self.namespaces.apply(*e) {
                    Effect::None => {}
                    Effect::One(k, _) => {
                        self.convert_namespace_pods(&k);
                        self.cluster_dirty = true;
                    }
                    Effect::All => {
                        self.convert_all_pods();
                        self.cluster_dirty = true;
                    }
                },
                Event::Ccnp(e) => match self.ccnps.apply(*e) {
                    Effect::None => {}
                    Effect::One(k, _) => {
                        self.convert_ccnp(&k);
                        self.cluster_dirty = true;
                    }
                    Effect::All => {
                        let names: BTreeSet<String> = self
                            .ccnps
                            .items
                            .keys()
                            .chain(self.policy_rules.keys())
                            .cloned()
                            .collect();
                        for n in names {
                            self.convert_ccnp(&n);
                        }
                        self.cluster_dirty = true;
                    }
                },
                Event::L2Policy(e) => match self.l2_objects.apply(*e) {
                    Effect::None => {}
                    Effect::One(k, _) => {
                        self.convert_l2_policy(&k);
                        self.cluster_dirty = true;
                    }
                    Effect::All => {
                        let names: BTreeSet<String> = self
                            .l2_objects
                            .items
                            .keys()
                            .chain(self.l2_infos.keys())
                            .cloned()
                            .collect();
                        for n in names {
                            self.convert_l2_policy(&n);
                        }
                        self.cluster_dirty = true;
                    }
                },
                Event::Missing(kind) => {
                    let objects = match kind {
                        CrdKind::Ccnp => &mut self.ccnps,
                        CrdKind::L2Policy => &mut self.l2_objects,
                    };
                    let had = !objects.items.is_empty() || !objects.synced;
                    objects.items.clear();
                    objects.relist = None;
                    objects.synced = true;
                    if had {
                        match kind {
                            CrdKind::Ccnp => self.policy_rules.clear(),
                            CrdKind::L2Policy => self.l2_infos.clear(),
                        }
                        self.cluster_dirty = true;
                    }
                }
                Event::Pool(e) => match self.pools.apply(*e) {
                    Effect::None => {}
                    Effect::One(k, _) => {
                        pool_names.insert(k);
                    }
                    Effect::All => {
                        let names: BTreeSet<String> = self
                            .pools
                            .items
                            .keys()
                            .chain(self.parsed_pools.keys())
                            .cloned()
                            .collect();
                        for n in names {
                            self.convert_pool(&n);
                        }
                        reset = true;
                    }
                },
                Event::ConfigMap(e) => {
                    let relevant = |k: &str| {
                        k == format!("{}/{CILIUM_CONFIG}", self.opts.config_namespace)
                            || k == format!("{}/{IP_MASQ_AGENT}", self.opts.config_namespace)
                    };
                    match self.config_maps.apply(*e) {
                        Effect::None => {}
                        Effect::One(k, _) if !relevant(&k) => {}
                        Effect::One(..) | Effect::All => config_changed = true,
                    }
                }
            }
        }
        if config_changed {
            self.apply_config();
        }
        if !self.lb_ready() {
            return;
        }
        if reset || !was_ready || (self.ipam.is_none() && self.config.lb_ipam_enabled) {
            self.reset_ipam();
            return;
        }
        let mut changed_pools = Vec::new();
        for name in pool_names {
            if self.convert_pool(&name) {
                changed_pools.push(name);
            } else if let Some(p) = self.parsed_pools.get(&name) {
                // Only metadata or status moved: LB-IPAM re-checks the pool's conditions.
                changed_pools.push(p.name.clone());
            }
        }
        for name in changed_pools {
            let Some(ipam) = self.ipam.as_mut() else {
                break;
            };
            let changes = match self.parsed_pools.get(&name) {
                Some(p) => ipam.apply_pool(p.clone()),
                None => ipam.delete_pool(&name),
            };
            self.take_changes(changes);
        }
        for key in svc_keys {
            let svc = self.lb_service(&key);
            let Some(ipam) = self.ipam.as_mut() else {
                break;
            };
            let changes = match svc {
                Some(s) => ipam.apply_service(s),
                None => {
                    let (ns, name) = key.split_once('/').unwrap_or(("", &key));
                    ipam.delete_service(&ServiceKey::new(ns, name))
                }
            };
            self.take_changes(changes);
        }
    }

    fn cluster_state(&self) -> ClusterState {
        ClusterState {
            nodes: self.node_infos.values().cloned().collect(),
            routing: self.config.routing.clone(),
            services: self.service_infos.values().cloned().collect(),
            endpoint_slices: self.slice_infos.values().cloned().collect(),
            datapath: self.config.datapath.clone(),
            l2_policies: self.l2_infos.values().cloned().collect(),
            policies: self.policy_rules.values().flatten().cloned().collect(),
            pods: self.pod_infos.values().cloned().collect(),
            policy_env: self.policy_env(),
            // The lead's: filled by the intent server from its agents and the L2 Leases.
            ..Default::default()
        }
    }

    /// The writes for what is pending, each against the object as last seen.
    fn writes(&mut self) -> Vec<Write> {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut out = Vec::new();
        for (key, wanted) in std::mem::take(&mut self.pending_services) {
            let Some(obj) = self
                .services
                .items
                .get(&format!("{}/{}", key.namespace, key.name))
            else {
                continue; // deleted meanwhile
            };
            let existing: &[Condition] = obj
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default();
            if let Some(patch) = status::service_patch(existing, &wanted, &now) {
                out.push(Write::Service { key, patch });
            }
        }
        for (name, wanted) in std::mem::take(&mut self.pending_pools) {
            let Some(obj) = self.pools.items.get(&name) else {
                continue;
            };
            let existing: Vec<Condition> = obj
                .data
                .pointer("/status/conditions")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            out.push(Write::Pool {
                name,
                patch: status::pool_patch(&existing, &wanted, &now),
            });
        }
        out
    }

    /// Feeds a write's answer back, so LB-IPAM sees the status it asked for.
    fn written(&mut self, w: Written, failed: &mut Vec<ServiceKey>) {
        match w {
            Written::Service(key, r) => self.service_written(key, *r, failed),
            Written::Pool(name, r) => self.pool_written(name, *r),
        }
    }

    fn service_written(
        &mut self,
        key: ServiceKey,
        r: Result<Service, kube::Error>,
        failed: &mut Vec<ServiceKey>,
    ) {
        match r {
            Ok(svc) => {
                if let Effect::One(k, _) = self.services.apply(watcher::Event::Apply(svc)) {
                    self.convert_service(&k);
                    self.cluster_dirty = true;
                    let s = self.lb_service(&k);
                    if let (Some(ipam), Some(s)) = (self.ipam.as_mut(), s) {
                        let changes = ipam.apply_service(s);
                        self.take_changes(changes);
                    }
                }
                debug!(service = %key, "status written");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                debug!(service = %key, "service gone before its status was written");
            }
            Err(e) => {
                warn!(service = %key, error = %e, "writing the service status failed; will retry");
                failed.push(key);
            }
        }
    }

    fn pool_written(&mut self, name: String, r: Result<DynamicObject, kube::Error>) {
        match r {
            Ok(obj) => {
                if let Effect::One(..) = self.pools.apply(watcher::Event::Apply(obj)) {
                    self.convert_pool(&name);
                    if let (Some(ipam), Some(p)) =
                        (self.ipam.as_mut(), self.parsed_pools.get(&name))
                    {
                        let changes = ipam.apply_pool(p.clone());
                        self.take_changes(changes);
                    }
                }
                debug!(pool = %name, "pool status written");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                debug!(pool = %name, "pool gone before its status was written");
            }
            Err(e) => {
                warn!(pool = %name, error = %e, "writing the pool status failed; will retry");
                if let Some(c) = self.ipam.as_ref().and_then(|i| i.pool_conditions(&name)) {
                    self.pending_pools.insert(name, c.to_vec());
                }
            }
        }
    }
}

async fn perform(client: Client, w: Write, leader: watch::Receiver<bool>) -> Option<Written> {
    // Leadership may have moved while the batch was queued: only the leader writes.
    if !*leader.borrow() {
        return None;
    }
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    Some(match w {
        Write::Service { key, patch } => {
            let api: Api<Service> = Api::namespaced(client, &key.namespace);
            let r = api
                .patch_status(&key.name, &pp, &Patch::Merge(&patch))
                .await;
            Written::Service(key, Box::new(r))
        }
        Write::Pool { name, patch } => {
            let api: Api<DynamicObject> = Api::all_with(client, &pool_resource());
            let r = api.patch_status(&name, &pp, &Patch::Merge(&patch)).await;
            Written::Pool(name, Box::new(r))
        }
    })
}

/// Runs the source until `drain` turns: publishes the cluster state on `cluster_tx` (the first
/// time once Nodes, Services, EndpointSlices and ConfigMaps are listed) and, while `leader`
/// shows true, writes LB-IPAM's statuses.
pub async fn run(
    client: Client,
    opts: KubeSourceOptions,
    cluster_tx: watch::Sender<Option<Arc<ClusterState>>>,
    mut leader: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let wcfg = watcher::Config::default();
    let tasks = [
        forward(
            "Node",
            watcher(Api::<Node>::all(client.clone()), wcfg.clone()).default_backoff(),
            tx.clone(),
            |e| Event::Node(Box::new(e)),
        ),
        forward(
            "Service",
            watcher(Api::<Service>::all(client.clone()), wcfg.clone()).default_backoff(),
            tx.clone(),
            |e| Event::Service(Box::new(e)),
        ),
        forward(
            "EndpointSlice",
            watcher(Api::<EndpointSlice>::all(client.clone()), wcfg.clone()).default_backoff(),
            tx.clone(),
            |e| Event::Slice(Box::new(e)),
        ),
        forward(
            "CiliumLoadBalancerIPPool",
            watcher(
                Api::<DynamicObject>::all_with(client.clone(), &pool_resource()),
                wcfg.clone(),
            )
            .default_backoff(),
            tx.clone(),
            |e| Event::Pool(Box::new(e)),
        ),
        forward(
            "Pod",
            watcher(Api::<Pod>::all(client.clone()), wcfg.clone()).default_backoff(),
            tx.clone(),
            |e| Event::Pod(Box::new(e)),
        ),
        forward(
            "Namespace",
            watcher(Api::<Namespace>::all(client.clone()), wcfg.clone()).default_backoff(),
            tx.clone(),
            |e| Event::Namespace(Box::new(e)),
        ),
        forward_crd(
            "CiliumClusterwideNetworkPolicy",
            CrdKind::Ccnp,
            watcher(
                Api::<DynamicObject>::all_with(
                    client.clone(),
                    &super::policy_status::ccnp_resource(),
                ),
                wcfg.clone(),
            )
            .default_backoff(),
            tx.clone(),
            |e| Event::Ccnp(Box::new(e)),
        ),
        forward_crd(
            "CiliumL2AnnouncementPolicy",
            CrdKind::L2Policy,
            watcher(
                Api::<DynamicObject>::all_with(
                    client.clone(),
                    &super::policy_status::l2_policy_resource(),
                ),
                wcfg.clone(),
            )
            .default_backoff(),
            tx.clone(),
            |e| Event::L2Policy(Box::new(e)),
        ),
        forward(
            "ConfigMap",
            watcher(
                Api::<ConfigMap>::namespaced(client.clone(), &opts.config_namespace),
                wcfg.clone(),
            )
            .default_backoff(),
            tx.clone(),
            |e| Event::ConfigMap(Box::new(e)),
        ),
    ];
    drop(tx);
    let mut st = State {
        client: client.clone(),
        opts,
        nodes: Objects::default(),
        services: Objects::default(),
        slices: Objects::default(),
        pools: Objects::default(),
        config_maps: Objects::default(),
        pods: Objects::default(),
        namespaces: Objects::default(),
        ccnps: Objects::default(),
        l2_objects: Objects::default(),
        started: Instant::now(),
        node_infos: BTreeMap::new(),
        service_infos: BTreeMap::new(),
        slice_infos: BTreeMap::new(),
        pod_infos: BTreeMap::new(),
        policy_rules: BTreeMap::new(),
        l2_infos: BTreeMap::new(),
        parsed_pools: BTreeMap::new(),
        config: OperatorConfig::default(),
        ipam: None,
        leader: *leader.borrow_and_update(),
        pending_services: BTreeMap::new(),
        pending_pools: BTreeMap::new(),
        noted: HashMap::new(),
        cluster_dirty: false,
    };
    let mut last_publish: Option<Instant> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut retry_backoff = Duration::from_millis(250);
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    loop {
        let publish_at = match (st.cluster_dirty && st.cluster_ready(), last_publish) {
            // Waiting only for the policy CRDs: wake when the grace is over.
            (false, _) if st.cluster_dirty && st.builtins_ready() => {
                tokio::time::Instant::from_std(st.started + CRD_SYNC_GRACE)
            }
            (false, _) => far(),
            (true, None) => tokio::time::Instant::now(),
            (true, Some(t)) => tokio::time::Instant::from_std(t + st.opts.publish_interval),
        };
        tokio::select! {
            _ = drain.changed() => break,
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let mut batch = vec![ev];
                while let Ok(ev) = rx.try_recv() {
                    batch.push(ev);
                }
                st.apply_batch(batch);
            }
            r = leader.changed() => {
                if r.is_err() { break }
                let now_leader = *leader.borrow_and_update();
                if now_leader != st.leader {
                    st.leader = now_leader;
                    if now_leader {
                        info!("leading: reconciling every LB-IPAM status");
                        st.reset_ipam();
                    } else {
                        info!("no longer leading: status writes stop");
                        st.pending_services.clear();
                        st.pending_pools.clear();
                    }
                }
            }
            _ = tokio::time::sleep_until(publish_at) => {
                st.cluster_dirty = false;
                last_publish = Some(Instant::now());
                let state = st.cluster_state();
                cluster_tx.send_if_modified(|cur| {
                    if cur.as_deref() == Some(&state) {
                        return false;
                    }
                    *cur = Some(Arc::new(state));
                    true
                });
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(far)) => {
                retry_at = None;
            }
        }
        // Write what is pending (the leader only); answers may ask for more.
        while st.leader
            && retry_at.is_none()
            && (!st.pending_services.is_empty() || !st.pending_pools.is_empty())
        {
            let writes = st.writes();
            let count = writes.len();
            let started = Instant::now();
            let client = st.client.clone();
            let mut answers = futures::stream::iter(writes)
                .map(|w| perform(client.clone(), w, leader.clone()))
                .buffer_unordered(st.opts.write_concurrency.max(1));
            let mut failed = Vec::new();
            // Each answer is fed back as it comes, so only the writes in flight are held.
            while let Some(answer) = answers.next().await {
                if let Some(w) = answer {
                    st.written(w, &mut failed);
                }
            }
            drop(answers);
            info!(count, failed = failed.len(), took = ?started.elapsed(), "LB-IPAM statuses written");
            if !failed.is_empty() {
                // Retry what failed against the then-current object, with backoff.
                if let Some(ipam) = st.ipam.as_ref() {
                    for key in failed {
                        if let Some(s) = ipam.service_status(&key) {
                            st.pending_services.insert(key, s.clone());
                        }
                    }
                }
                retry_at = Some(tokio::time::Instant::now() + retry_backoff);
                retry_backoff = (retry_backoff * 2).min(Duration::from_secs(300));
            } else {
                retry_backoff = Duration::from_millis(250);
            }
        }
    }
    for t in tasks {
        t.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status {
            code,
            ..Default::default()
        })
    }

    // A CRD that is not installed (404 on list or watch) means no objects of it; anything else is
    // an error to retry, not an answer.
    #[test]
    fn only_not_found_means_no_objects() {
        assert!(is_missing(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(404))
        )));
        assert!(is_missing(&watcher::Error::WatchError(status(404))));
        assert!(!is_missing(&watcher::Error::InitialListFailed(
            kube::Error::Api(status(403))
        )));
        assert!(!is_missing(&watcher::Error::WatchError(status(410))));
        assert!(!is_missing(&watcher::Error::NoResourceVersion));
    }
}
