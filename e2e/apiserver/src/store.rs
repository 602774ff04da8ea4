//! The object store: one bucket per resource (ordered by namespace/name), one global
//! resourceVersion counter, a bounded event history and a broadcast channel per bucket for
//! watches, and the write pipeline (identity, defaults, validation, generation, managedFields,
//! finalizers, namespace and CRD lifecycles).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::apply::{self, Scope, Writer};
use crate::builtin::Allocators;
use crate::error::{ApiError, FieldError};
use crate::meta::{self, IdSource};
use crate::patch::{self, Shape};
use crate::registry::{GroupResource, Registry, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type Key = (String, String);

/// A stored object and its serialized form (shared by list and watch responses).
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: Arc<Value>,
    pub json: Bytes,
}

impl Stored {
    fn new(value: Value) -> Stored {
        let json = Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
        Stored {
            value: Arc::new(value),
            json,
        }
    }

    /// The object as served at `api_version` (versions of one resource share a schema here, so
    /// conversion is a relabel, like a CRD's `conversion: None`).
    pub fn json_at(&self, api_version: &str) -> Bytes {
        if self.value.get("apiVersion").and_then(Value::as_str) == Some(api_version) {
            return self.json.clone();
        }
        Bytes::from(serde_json::to_vec(&self.value_at(api_version)).unwrap_or_default())
    }

    pub fn value_at(&self, api_version: &str) -> Value {
        let mut v = (*self.value).clone();
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(api_version.to_string()));
        }
        v
    }

    pub fn key(&self) -> Key {
        (
            meta::namespace(&self.value).to_string(),
            meta::name(&self.value).to_string(),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change of one object.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventType,
    pub rv: u64,
    pub object: Stored,
    /// The object before this change (for selector transitions).
    pub prev: Option<Stored>,
}

struct Bucket {
    objects: BTreeMap<Key, Stored>,
    history: VecDeque<Arc<Event>>,
    /// The highest resourceVersion dropped from `history`: watches from before it get 410.
    evicted_rv: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Bucket {
    fn new(capacity: usize) -> Bucket {
        let (tx, _) = broadcast::channel(capacity.max(16));
        Bucket {
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            evicted_rv: 0,
            tx,
        }
    }
}

struct State {
    rv: u64,
    registry: Arc<Registry>,
    buckets: HashMap<GroupResource, Bucket>,
    alloc: Allocators,
    /// Set once any object carries ownerReferences: deletions then look for dependents.
    owner_refs_seen: bool,
}

/// Store configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Events kept per resource for watches resuming from a resourceVersion.
    pub history: usize,
    pub service_cidr: (std::net::Ipv4Addr, u8),
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            history: 10_000,
            service_cidr: ("10.96.0.0".parse().expect("literal"), 16),
        }
    }
}

/// `fieldValidation` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Options every write takes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: String,
    pub field_validation: FieldValidation,
    pub force: bool,
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    pub object: Stored,
    pub created: bool,
    pub warnings: Vec<String>,
}

/// Which endpoint a write came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    Main,
    Status,
}

/// The body of a PATCH.
#[derive(Debug, Clone)]
pub enum PatchBody {
    Merge(Value),
    Json(Value),
    Strategic(Value),
    Apply(Value),
}

/// DeleteOptions that matter here.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

/// A list result page.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Stored>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<u64>,
}

/// List and watch filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && meta::namespace(obj) != ns
        {
            return false;
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchStart {
    /// Synthetic ADDED events for the current state, then changes.
    Current,
    /// Changes after this resourceVersion.
    After(u64),
}

/// A registered watch: events to replay, then the live channel.
pub struct Subscription {
    pub initial: Vec<Arc<Event>>,
    pub rx: broadcast::Receiver<Arc<Event>>,
    pub start_rv: u64,
}

enum Managed {
    /// Record the write as an `Update` by the writer.
    Track,
    /// Already computed by server-side apply.
    Keep,
}

/// The in-memory store.
pub struct Store {
    state: Mutex<State>,
    ids: IdSource,
    history: usize,
}

const CORE_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

impl Store {
    pub fn new(opts: StoreOptions) -> Store {
        let store = Store {
            state: Mutex::new(State {
                rv: 0,
                registry: Arc::new(Registry::builtin()),
                buckets: HashMap::new(),
                alloc: Allocators::new(opts.service_cidr),
                owner_refs_seen: false,
            }),
            ids: IdSource::default(),
            history: opts.history.max(1),
        };
        store.seed();
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (all mutation is commit-at-end).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn seed(&self) {
        let reg = self.registry();
        let ns_rt = reg.lookup("", "v1", "namespaces").expect("builtin");
        let opts = WriteOptions {
            field_manager: "cilia-apiserver".into(),
            ..Default::default()
        };
        for ns in CORE_NAMESPACES {
            let _ = self.create(&ns_rt, "v1", "", json!({"metadata": {"name": ns}}), &opts);
        }
    }

    /// Creates the `default/kubernetes` Service and its EndpointSlice pointing at `addr`.
    pub fn seed_kubernetes_service(&self, addr: std::net::SocketAddr) {
        let reg = self.registry();
        let opts = WriteOptions {
            field_manager: "cilia-apiserver".into(),
            ..Default::default()
        };
        let first_ip = self.lock().alloc.first_ip().to_string();
        let svc_rt = reg.lookup("", "v1", "services").expect("builtin");
        let _ = self.create(
            &svc_rt,
            "v1",
            "default",
            json!({"metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                   "spec": {"clusterIP": first_ip, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addr.port()}]}}),
            &opts,
        );
        let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
        let eps_rt = reg
            .lookup("discovery.k8s.io", "v1", "endpointslices")
            .expect("builtin");
        let _ = self.create(
            &eps_rt,
            "v1",
            "default",
            json!({"metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "cilia-apiserver"}},
                   "addressType": family,
                   "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}],
                   "ports": [{"name": "https", "port": addr.port(), "protocol": "TCP"}]}),
            &opts,
        );
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.lock().registry.clone()
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn ids(&self) -> &IdSource {
        &self.ids
    }

    fn key_for(rt: &ResourceType, ns: &str, name: &str) -> Key {
        (
            if rt.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Stored, ApiError> {
        let st = self.lock();
        st.buckets
            .get(&rt.group_resource())
            .and_then(|b| b.objects.get(&Self::key_for(rt, ns, name)))
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt.qualified(), name))
    }

    pub fn list(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let (start_after, token_rv) = match cont {
            Some(c) if !c.is_empty() => {
                let (rv, key) = decode_continue(c)?;
                (Some(key), Some(rv))
            }
            _ => (None, None),
        };
        let st = self.lock();
        let rv = token_rv.unwrap_or(st.rv);
        let Some(bucket) = st.buckets.get(&rt.group_resource()) else {
            return Ok(ListPage {
                items: Vec::new(),
                resource_version: rv,
                continue_token: None,
                remaining: None,
            });
        };
        use std::ops::Bound;
        let ns_bound = filter.namespace.clone().filter(|_| rt.namespaced);
        let start = match (start_after, &ns_bound) {
            (Some(k), _) => Bound::Excluded(k),
            (None, Some(ns)) => Bound::Included((ns.clone(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        // Keys are ordered by namespace: a namespaced list stops at the first key past it.
        let iter = bucket
            .objects
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| ns_bound.as_ref().is_none_or(|ns| &k.0 == ns))
            .filter(|(_, s)| filter.matches(&s.value));
        Ok(paginate(iter, limit, rv))
    }

    /// Registers a watch. Under the lock, so no event is missed or doubled between the replay
    /// and the live channel.
    pub fn watch(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        start: WatchStart,
    ) -> Result<Subscription, ApiError> {
        let mut st = self.lock();
        let current = st.rv;
        let history = self.history;
        let bucket = st
            .buckets
            .entry(rt.group_resource())
            .or_insert_with(|| Bucket::new(history));
        let rx = bucket.tx.subscribe();
        let initial = match start {
            WatchStart::Current => bucket
                .objects
                .values()
                .filter(|s| filter.matches(&s.value))
                .map(|s| {
                    Arc::new(Event {
                        kind: EventType::Added,
                        rv: meta::resource_version(&s.value).unwrap_or(0),
                        object: s.clone(),
                        prev: None,
                    })
                })
                .collect(),
            WatchStart::After(rv) => {
                if rv < bucket.evicted_rv {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {rv} ({})",
                        bucket.evicted_rv + 1
                    )));
                }
                bucket
                    .history
                    .iter()
                    .filter(|e| e.rv > rv)
                    .cloned()
                    .collect()
            }
        };
        let start_rv = match start {
            WatchStart::Current => current,
            WatchStart::After(rv) => rv.max(bucket.history.back().map(|e| e.rv).unwrap_or(0)),
        };
        Ok(Subscription {
            initial,
            rx,
            start_rv,
        })
    }

    /// The resourceVersion a bookmark may carry: the current one, if the watcher has drained
    /// every event already sent to it.
    pub fn bookmark_rv(&self, rx: &broadcast::Receiver<Arc<Event>>) -> Option<u64> {
        let st = self.lock();
        rx.is_empty().then_some(st.rv)
    }

    // ---- writes ----

    pub fn create(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ApiError> {
        let mut st = self.lock();
        self.create_locked(&mut st, rt, version, ns, body, opts, Managed::Track)
    }

    #[allow(clippy::too_many_arguments)]
    fn create_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        body: Value,
        opts: &WriteOptions,
        managed: Managed,
    ) -> Result<WriteOutcome, ApiError> {
        let mut obj = check_body(rt, version, body)?;
        let meta_map = meta::metadata_mut(&mut obj);
        if rt.namespaced {
            let body_ns = meta_map
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !body_ns.is_empty() && !ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let ns = if ns.is_empty() {
                body_ns.to_string()
            } else {
                ns.to_string()
            };
            if ns.is_empty() {
                return Err(ApiError::bad_request(
                    "the server could not find the requested resource: namespace is required",
                ));
            }
            meta_map.insert("namespace".into(), Value::String(ns));
        } else {
            meta_map.remove("namespace");
        }
        let mut name = meta_map
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let key_ns = meta_map
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let bucket_has = |st: &State, name: &str| {
            st.buckets
                .get(&rt.group_resource())
                .is_some_and(|b| b.objects.contains_key(&(key_ns.clone(), name.to_string())))
        };
        if name.is_empty() {
            let prefix = meta_map
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    "",
                    &[FieldError {
                        field: "metadata.name".into(),
                        kind: crate::error::FieldErrorKind::Invalid {
                            value: Value::String(String::new()),
                            detail: "name or generateName is required".into(),
                        },
                    }],
                ));
            }
            loop {
                name = format!("{prefix}{}", self.ids.name_suffix());
                if !bucket_has(st, &name) {
                    break;
                }
            }
        }
        if let Err(e) = validate_name(rt, &name) {
            return Err(ApiError::invalid(&rt.kind, &rt.group, &name, &[e]));
        }
        if rt.namespaced {
            let ns_obj = st
                .buckets
                .get(&GroupResource::new("", "namespaces"))
                .and_then(|b| b.objects.get(&(String::new(), key_ns.clone())));
            match ns_obj {
                None => {
                    return Err(ApiError::not_found(
                        crate::error::Qualified {
                            group: "",
                            resource: "namespaces",
                        },
                        &key_ns,
                    ));
                }
                Some(n) if meta::is_deleting(&n.value) => {
                    return Err(ApiError::forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {key_ns} because it is being terminated",
                        rt.qualified()
                    )));
                }
                Some(_) => {}
            }
        }
        if bucket_has(st, &name) {
            return Err(ApiError::already_exists(rt.qualified(), &name));
        }
        let meta_map = meta::metadata_mut(&mut obj);
        meta_map.insert("name".into(), Value::String(name.clone()));
        meta_map.insert("uid".into(), Value::String(self.ids.uid()));
        meta_map.insert(
            "creationTimestamp".into(),
            Value::String(meta::now_rfc3339()),
        );
        meta_map.insert("generation".into(), json!(1));
        for k in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "selfLink",
        ] {
            meta_map.remove(k);
        }
        if rt.has_status(version)
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        let warnings = self.prepare(
            st,
            rt,
            version,
            None,
            &mut obj,
            Subresource::Main,
            opts,
            managed,
        )?;
        let key = (key_ns, name);
        if opts.dry_run {
            return Ok(WriteOutcome {
                object: Stored::new(obj),
                created: true,
                warnings,
            });
        }
        let stored = self.commit(st, rt, key, EventType::Added, obj);
        self.after_write(st, rt, &stored);
        Ok(WriteOutcome {
            object: stored,
            created: true,
            warnings,
        })
    }

    /// Defaults, allocation, schema validation, generation and managedFields for a new state.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        st: &mut State,
        rt: &ResourceType,
        version: &str,
        old: Option<&Value>,
        obj: &mut Value,
        sub: Subresource,
        opts: &WriteOptions,
        managed: Managed,
    ) -> Result<Vec<String>, ApiError> {
        let name = meta::name(obj).to_string();
        let invalid = |errs: &[FieldError]| ApiError::invalid(&rt.kind, &rt.group, &name, errs);
        if let Err(errs) = crate::builtin::on_write(rt, obj, old, &mut st.alloc) {
            return Err(invalid(&errs));
        }
        let mut warnings = Vec::new();
        let schema = rt.version(version).and_then(|v| v.schema.clone());
        if let Some(schema) = &schema {
            let unknown = schema.normalize(obj);
            if !unknown.is_empty() {
                match opts.field_validation {
                    FieldValidation::Strict => {
                        let list: Vec<String> = unknown
                            .iter()
                            .map(|u| format!("unknown field \"{u}\""))
                            .collect();
                        return Err(ApiError::bad_request(format!(
                            "{} in version \"{version}\" cannot be handled as a {}: strict decoding error: {}",
                            rt.kind,
                            rt.kind,
                            list.join(", ")
                        )));
                    }
                    FieldValidation::Warn => {
                        warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\"")))
                    }
                    FieldValidation::Ignore => {}
                }
            }
            let errs = schema.validate(obj, old);
            if !errs.is_empty() {
                return Err(invalid(&errs));
            }
        }
        if let Some(old) = old {
            let old_gen = meta::metadata(old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let spec_changed = sub == Subresource::Main && spec_of(old) != spec_of(obj);
            meta::metadata_mut(obj).insert(
                "generation".into(),
                json!(if spec_changed { old_gen + 1 } else { old_gen }),
            );
        }
        if matches!(managed, Managed::Track) {
            let scope = scope_for(rt, version, sub);
            let api_version = rt.api_version(version);
            let time = meta::now_rfc3339();
            let writer = Writer {
                manager: &opts.field_manager,
                api_version: &api_version,
                subresource: if sub == Subresource::Status {
                    "status"
                } else {
                    ""
                },
                scope,
                time: &time,
            };
            apply::track_update(old, obj, &writer, Shape::custom(schema.as_deref()));
        }
        if let Some(m) = meta::metadata(obj)
            && m.get("ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
        {
            st.owner_refs_seen = true;
        }
        Ok(warnings)
    }

    fn commit(
        &self,
        st: &mut State,
        rt: &ResourceType,
        key: Key,
        kind: EventType,
        mut obj: Value,
    ) -> Stored {
        st.rv += 1;
        let rv = st.rv;
        meta::metadata_mut(&mut obj)
            .insert("resourceVersion".into(), Value::String(rv.to_string()));
        let stored = Stored::new(obj);
        let history = self.history;
        let bucket = st
            .buckets
            .entry(rt.group_resource())
            .or_insert_with(|| Bucket::new(history));
        let prev = match kind {
            EventType::Deleted => bucket.objects.remove(&key),
            _ => bucket.objects.insert(key, stored.clone()),
        };
        let event = Arc::new(Event {
            kind,
            rv,
            object: stored.clone(),
            prev,
        });
        bucket.history.push_back(event.clone());
        while bucket.history.len() > history {
            if let Some(old) = bucket.history.pop_front() {
                bucket.evicted_rv = old.rv;
            }
        }
        let _ = bucket.tx.send(event);
        stored
    }

    /// Registry changes that follow CRD writes.
    fn after_write(&self, st: &mut State, rt: &ResourceType, stored: &Stored) {
        if rt.is("apiextensions.k8s.io", "CustomResourceDefinition")
            && let Ok(defined) = crate::registry::resource_type_from_crd(&stored.value)
        {
            st.registry = Arc::new(st.registry.with_custom(defined));
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        body: Value,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ApiError> {
        let mut st = self.lock();
        let key = Self::key_for(rt, ns, name);
        let old =
            current(&st, rt, &key).ok_or_else(|| ApiError::not_found(rt.qualified(), name))?;
        let body = check_body(rt, version, body)?;
        let body_name = meta::name(&body);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(rv) = meta::meta_str(&body, "resourceVersion").filter(|s| !s.is_empty())
            && meta::meta_str(&old.value, "resourceVersion") != Some(rv)
        {
            return Err(ApiError::conflict(
                rt.qualified(),
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        self.update_locked(
            &mut st,
            rt,
            version,
            key,
            &old,
            body,
            sub,
            opts,
            Managed::Track,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn update_locked(
        &self,
        st: &mut State,
        rt: &ResourceType,
        version: &str,
        key: Key,
        old: &Stored,
        body: Value,
        sub: Subresource,
        opts: &WriteOptions,
        managed: Managed,
    ) -> Result<WriteOutcome, ApiError> {
        let oldv = &*old.value;
        let mut obj = match sub {
            // The status endpoint changes status only.
            Subresource::Status => {
                let mut o = old.value_at(&rt.api_version(version));
                match body.get("status") {
                    Some(s) => o["status"] = s.clone(),
                    None => {
                        if let Some(m) = o.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                if let Some(mf) = meta::metadata(&body).and_then(|m| m.get("managedFields")) {
                    meta::metadata_mut(&mut o).insert("managedFields".into(), mf.clone());
                }
                o
            }
            Subresource::Main => {
                let mut o = body;
                if rt.has_status(version) {
                    match oldv.get("status") {
                        Some(s) => o["status"] = s.clone(),
                        None => {
                            if let Some(m) = o.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                o
            }
        };
        // Identity and server-owned metadata come from the stored object.
        let old_meta = meta::metadata(oldv).cloned().unwrap_or_default();
        let m = meta::metadata_mut(&mut obj);
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(k) {
                Some(v) => {
                    m.insert(k.into(), v.clone());
                }
                None => {
                    m.remove(k);
                }
            }
        }
        m.remove("resourceVersion");
        if meta::is_deleting(oldv) {
            let before = meta::finalizers(oldv);
            let added: Vec<String> = meta::finalizers(&obj)
                .into_iter()
                .filter(|f| !before.contains(f))
                .collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &rt.group,
                    &key.1,
                    &[FieldError::forbidden(
                        "metadata.finalizers",
                        format!(
                            "no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                        ),
                    )],
                ));
            }
        }
        let warnings = self.prepare(st, rt, version, Some(oldv), &mut obj, sub, opts, managed)?;
        let unchanged = {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                    if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
                        for e in mf {
                            if let Some(e) = e.as_object_mut() {
                                e.remove("time");
                            }
                        }
                    }
                }
                if let Some(m) = v.as_object_mut() {
                    m.remove("apiVersion");
                }
                v
            };
            strip(oldv) == strip(&obj)
        };
        if unchanged {
            // Like the real server: a no-op write does not bump the resourceVersion.
            return Ok(WriteOutcome {
                object: old.clone(),
                created: false,
                warnings,
            });
        }
        if opts.dry_run {
            meta::metadata_mut(&mut obj).insert(
                "resourceVersion".into(),
                Value::String(
                    meta::meta_str(oldv, "resourceVersion")
                        .unwrap_or("")
                        .to_string(),
                ),
            );
            return Ok(WriteOutcome {
                object: Stored::new(obj),
                created: false,
                warnings,
            });
        }
        if meta::is_deleting(&obj) && meta::finalizers(&obj).is_empty() && !rt.is("", "Namespace") {
            let stored = self.commit(st, rt, key.clone(), EventType::Modified, obj);
            self.remove_cascade(st, rt.group_resource(), key);
            return Ok(WriteOutcome {
                object: stored,
                created: false,
                warnings,
            });
        }
        let stored = self.commit(st, rt, key.clone(), EventType::Modified, obj);
        self.after_write(st, rt, &stored);
        if rt.is("", "Namespace") && meta::is_deleting(&stored.value) {
            self.finalize_namespace_if_empty(st, &key.1);
        }
        Ok(WriteOutcome {
            object: stored,
            created: false,
            warnings,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        patch: &PatchBody,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<WriteOutcome, ApiError> {
        let mut st = self.lock();
        let key = Self::key_for(rt, ns, name);
        let old = current(&st, rt, &key);
        let schema = rt.version(version).and_then(|v| v.schema.clone());
        let shape = Shape::custom(schema.as_deref());
        let api_version = rt.api_version(version);
        if let PatchBody::Apply(cfg) = patch {
            if opts.field_manager.is_empty() {
                return Err(ApiError::invalid(
                    "PatchOptions",
                    "meta.k8s.io",
                    "",
                    &[FieldError {
                        field: "fieldManager".into(),
                        kind: crate::error::FieldErrorKind::Invalid {
                            value: Value::String(String::new()),
                            detail: "is required for apply patch".into(),
                        },
                    }],
                ));
            }
            let cfg = check_body(rt, version, cfg.clone())?;
            let cfg_name = meta::name(&cfg);
            if cfg_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({cfg_name}) does not match the name on the URL ({name})"
                )));
            }
            let time = meta::now_rfc3339();
            let writer = Writer {
                manager: &opts.field_manager,
                api_version: &api_version,
                subresource: if sub == Subresource::Status {
                    "status"
                } else {
                    ""
                },
                scope: scope_for(rt, version, sub),
                time: &time,
            };
            let live = old.as_ref().map(|o| o.value_at(&api_version));
            let mut merged =
                apply::server_side_apply(live.as_ref(), &cfg, &writer, shape, opts.force)
                    .map_err(|c| ApiError::apply_conflict(rt.qualified(), name, &c.0))?;
            return match old {
                None => {
                    if sub == Subresource::Status {
                        return Err(ApiError::not_found(rt.qualified(), name));
                    }
                    // Apply creates; the status a config carries is dropped like on create.
                    merged["apiVersion"] = Value::String(api_version.clone());
                    merged["kind"] = Value::String(rt.kind.clone());
                    self.create_locked(&mut st, rt, version, ns, merged, opts, Managed::Keep)
                }
                Some(old) => self.update_locked(
                    &mut st,
                    rt,
                    version,
                    key,
                    &old,
                    merged,
                    sub,
                    opts,
                    Managed::Keep,
                ),
            };
        }
        let old = old.ok_or_else(|| ApiError::not_found(rt.qualified(), name))?;
        let mut doc = old.value_at(&api_version);
        match patch {
            PatchBody::Merge(p) => {
                if !p.is_object() {
                    return Err(ApiError::bad_request("merge patch must be a JSON object"));
                }
                patch::merge_patch(&mut doc, p)
            }
            PatchBody::Json(p) => patch::json_patch(&mut doc, p)?,
            PatchBody::Strategic(p) => {
                if rt.custom {
                    return Err(ApiError::unsupported_media_type(
                        "application/strategic-merge-patch+json (not supported for custom resources)",
                    ));
                }
                patch::strategic_merge(&mut doc, p, shape)?
            }
            PatchBody::Apply(_) => unreachable!("handled above"),
        }
        if let Some(rv) = meta::meta_str(&doc, "resourceVersion")
            && Some(rv) != meta::meta_str(&old.value, "resourceVersion")
        {
            return Err(ApiError::conflict(
                rt.qualified(),
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        let doc_name = meta::name(&doc);
        if doc_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({doc_name}) does not match the name on the URL ({name})"
            )));
        }
        let doc = check_body(rt, version, doc)?;
        self.update_locked(
            &mut st,
            rt,
            version,
            key,
            &old,
            doc,
            sub,
            opts,
            Managed::Track,
        )
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Stored, ApiError> {
        let mut st = self.lock();
        let key = Self::key_for(rt, ns, name);
        let old =
            current(&st, rt, &key).ok_or_else(|| ApiError::not_found(rt.qualified(), name))?;
        if let Some(uid) = &opts.precondition_uid
            && meta::meta_str(&old.value, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                rt.qualified(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::meta_str(&old.value, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &opts.precondition_rv
            && meta::meta_str(&old.value, "resourceVersion") != Some(rv.as_str())
        {
            return Err(ApiError::conflict(
                rt.qualified(),
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if opts.dry_run {
            return Ok(old);
        }
        Ok(self.delete_locked(&mut st, rt.group_resource(), key))
    }

    pub fn delete_collection(
        &self,
        rt: &ResourceType,
        filter: &Filter,
        opts: &DeleteOptions,
    ) -> Result<Vec<Stored>, ApiError> {
        let page = self.list(rt, filter, None, None)?;
        if opts.dry_run {
            return Ok(page.items);
        }
        let mut st = self.lock();
        let mut out = Vec::new();
        for s in page.items {
            if current(&st, rt, &s.key()).is_some() {
                out.push(self.delete_locked(&mut st, rt.group_resource(), s.key()));
            }
        }
        Ok(out)
    }

    /// Deletes one object: marks it when finalizers hold it, removes it otherwise.
    fn delete_locked(&self, st: &mut State, gr: GroupResource, key: Key) -> Stored {
        let Some(rt) = st.registry.get(&gr).cloned() else {
            return Stored::new(json!({}));
        };
        let Some(old) = st
            .buckets
            .get(&gr)
            .and_then(|b| b.objects.get(&key))
            .cloned()
        else {
            return Stored::new(json!({}));
        };
        let is_namespace = rt.is("", "Namespace");
        if is_namespace {
            return self.delete_namespace(st, &rt, key, &old);
        }
        if meta::finalizers(&old.value).is_empty() {
            self.remove_cascade(st, gr, key.clone());
            return Stored::new(with_rv(&old.value, st.rv));
        }
        if meta::is_deleting(&old.value) {
            return old;
        }
        let mut obj = (*old.value).clone();
        let m = meta::metadata_mut(&mut obj);
        m.insert(
            "deletionTimestamp".into(),
            Value::String(meta::now_rfc3339()),
        );
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        self.commit(st, &rt, key, EventType::Modified, obj)
    }

    fn delete_namespace(
        &self,
        st: &mut State,
        rt: &ResourceType,
        key: Key,
        old: &Stored,
    ) -> Stored {
        let mut stored = old.clone();
        if !meta::is_deleting(&old.value) {
            let mut obj = (*old.value).clone();
            meta::metadata_mut(&mut obj).insert(
                "deletionTimestamp".into(),
                Value::String(meta::now_rfc3339()),
            );
            meta::metadata_mut(&mut obj).insert("deletionGracePeriodSeconds".into(), json!(0));
            obj["status"] = json!({"phase": "Terminating"});
            stored = self.commit(st, rt, key.clone(), EventType::Modified, obj);
        }
        let ns = key.1.clone();
        let namespaced: Vec<GroupResource> = st
            .registry
            .all()
            .filter(|r| r.namespaced)
            .map(|r| r.group_resource())
            .collect();
        for gr in namespaced {
            let keys: Vec<Key> = st
                .buckets
                .get(&gr)
                .map(|b| {
                    b.objects
                        .range((ns.clone(), String::new())..)
                        .take_while(|(k, _)| k.0 == ns)
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            for k in keys {
                self.delete_locked(st, gr.clone(), k);
            }
        }
        if !self.finalize_namespace_if_empty(st, &ns) {
            return stored;
        }
        Stored::new(with_rv(&stored.value, st.rv))
    }

    /// Removes a terminating namespace once nothing is left in it. Returns whether it went.
    fn finalize_namespace_if_empty(&self, st: &mut State, ns: &str) -> bool {
        let ns_gr = GroupResource::new("", "namespaces");
        let ns_key = (String::new(), ns.to_string());
        let Some(ns_obj) = st
            .buckets
            .get(&ns_gr)
            .and_then(|b| b.objects.get(&ns_key))
            .cloned()
        else {
            return false;
        };
        if !meta::is_deleting(&ns_obj.value) || !meta::finalizers(&ns_obj.value).is_empty() {
            return false;
        }
        let occupied = st.registry.all().filter(|r| r.namespaced).any(|r| {
            st.buckets.get(&r.group_resource()).is_some_and(|b| {
                b.objects
                    .range((ns.to_string(), String::new())..)
                    .next()
                    .is_some_and(|(k, _)| k.0 == ns)
            })
        });
        if occupied {
            return false;
        }
        self.remove_cascade(st, ns_gr, ns_key);
        true
    }

    /// Removes an object for good, then whatever that implies: released allocations, a CRD's
    /// objects, dependents by ownerReference, a terminating namespace that became empty.
    fn remove_cascade(&self, st: &mut State, gr: GroupResource, key: Key) {
        let mut queue = vec![(gr, key)];
        while let Some((gr, key)) = queue.pop() {
            let Some(rt) = st.registry.get(&gr).cloned() else {
                continue;
            };
            let Some(old) = st
                .buckets
                .get(&gr)
                .and_then(|b| b.objects.get(&key))
                .cloned()
            else {
                continue;
            };
            self.commit(
                st,
                &rt,
                key.clone(),
                EventType::Deleted,
                (*old.value).clone(),
            );
            if rt.is("", "Service") {
                st.alloc.release(&old.value);
            }
            if rt.is("apiextensions.k8s.io", "CustomResourceDefinition")
                && let Ok(defined) = crate::registry::resource_type_from_crd(&old.value)
            {
                let cr_gr = defined.group_resource();
                let keys: Vec<Key> = st
                    .buckets
                    .get(&cr_gr)
                    .map(|b| b.objects.keys().cloned().collect())
                    .unwrap_or_default();
                for k in keys {
                    if let Some(o) = st
                        .buckets
                        .get(&cr_gr)
                        .and_then(|b| b.objects.get(&k))
                        .cloned()
                    {
                        self.commit(st, &defined, k, EventType::Deleted, (*o.value).clone());
                    }
                }
                // Dropping the bucket closes its watches, as the real server ends them.
                st.buckets.remove(&cr_gr);
                st.registry = Arc::new(st.registry.without(&cr_gr));
            }
            if st.owner_refs_seen
                && let Some(uid) = meta::meta_str(&old.value, "uid")
            {
                let dependents: Vec<(GroupResource, Key)> = st
                    .buckets
                    .iter()
                    .flat_map(|(g, b)| {
                        b.objects
                            .iter()
                            .filter(|(_, s)| owned_by(&s.value, uid))
                            .map(move |(k, _)| (g.clone(), k.clone()))
                    })
                    .collect();
                for (g, k) in dependents {
                    let has_finalizers = st
                        .buckets
                        .get(&g)
                        .and_then(|b| b.objects.get(&k))
                        .is_some_and(|s| !meta::finalizers(&s.value).is_empty());
                    if has_finalizers {
                        self.delete_locked(st, g, k);
                    } else {
                        queue.push((g, k));
                    }
                }
            }
            if rt.namespaced && !key.0.is_empty() {
                self.finalize_namespace_if_empty(st, &key.0);
            }
        }
    }
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    meta::metadata(obj)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

fn with_rv(v: &Value, rv: u64) -> Value {
    let mut v = v.clone();
    meta::metadata_mut(&mut v).insert("resourceVersion".into(), Value::String(rv.to_string()));
    v
}

fn current(st: &State, rt: &ResourceType, key: &Key) -> Option<Stored> {
    st.buckets
        .get(&rt.group_resource())
        .and_then(|b| b.objects.get(key))
        .cloned()
}

fn scope_for(rt: &ResourceType, version: &str, sub: Subresource) -> Scope {
    match (rt.has_status(version), sub) {
        (_, Subresource::Status) => Scope::Status,
        (true, Subresource::Main) => Scope::Main,
        (false, Subresource::Main) => Scope::All,
    }
}

/// Everything but metadata and status: what bumps `metadata.generation`.
fn spec_of(v: &Value) -> Value {
    match v.as_object() {
        Some(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        None => Value::Null,
    }
}

/// Checks the body is an object of the right kind and version, and fills them in.
fn check_body(rt: &ResourceType, version: &str, body: Value) -> Result<Value, ApiError> {
    let Value::Object(mut m) = body else {
        return Err(ApiError::bad_request(format!(
            "Object '{}' is not an object",
            rt.kind
        )));
    };
    let api_version = rt.api_version(version);
    if let Some(k) = m.get("kind").and_then(Value::as_str)
        && k != rt.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            rt.kind
        )));
    }
    if let Some(av) = m.get("apiVersion").and_then(Value::as_str)
        && av != api_version
    {
        // Another served version of the same resource is fine; anything else is not.
        let ok = rt.versions.iter().any(|v| rt.api_version(&v.name) == av);
        if !ok {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({api_version})"
            )));
        }
    }
    m.insert("apiVersion".into(), Value::String(api_version));
    m.insert("kind".into(), Value::String(rt.kind.clone()));
    match m.get("metadata") {
        None => {
            m.insert("metadata".into(), json!({}));
        }
        Some(Value::Object(_)) => {}
        Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
    }
    Ok(Value::Object(m))
}

/// DNS-1123 subdomain names (the rule for most kinds); dots and case are only checked loosely
/// for the few kinds that allow more.
fn validate_name(rt: &ResourceType, name: &str) -> Result<(), FieldError> {
    let lenient = matches!(
        rt.kind.as_str(),
        "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
    );
    let ok = !name.is_empty()
        && name.len() <= 253
        && (lenient && !name.contains('/') && name != "." && name != ".."
            || name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
                && name.as_bytes()[0].is_ascii_alphanumeric()
                && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(FieldError::invalid(
            "metadata.name",
            Value::String(name.to_string()),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ))
    }
}

fn encode_continue(rv: u64, key: &Key) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{rv}/{}/{}", key.0, key.1))
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '/');
    let rv = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?.to_string();
    let name = parts.next().ok_or_else(bad)?.to_string();
    Ok((rv, (ns, name)))
}

fn paginate<'a>(
    iter: impl Iterator<Item = (&'a Key, &'a Stored)>,
    limit: Option<usize>,
    rv: u64,
) -> ListPage {
    let mut items = Vec::new();
    let mut continue_token = None;
    let mut remaining = None;
    let mut iter = iter.peekable();
    while let Some((k, s)) = iter.next() {
        items.push(s.clone());
        if limit.is_some_and(|n| n > 0 && items.len() == n) {
            let rest = iter.count() as u64;
            if rest > 0 {
                continue_token = Some(encode_continue(rv, k));
                remaining = Some(rest);
            }
            break;
        }
    }
    ListPage {
        items,
        resource_version: rv,
        continue_token,
        remaining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(history: usize) -> Store {
        Store::new(StoreOptions {
            history,
            ..Default::default()
        })
    }

    fn rt(s: &Store, group: &str, plural: &str) -> Arc<ResourceType> {
        let reg = s.registry();
        reg.all()
            .find(|r| r.group == group && r.plural == plural)
            .cloned()
            .unwrap()
    }

    fn opts() -> WriteOptions {
        WriteOptions {
            field_manager: "test".into(),
            ..Default::default()
        }
    }

    fn cm(name: &str, data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": name}}, "data": data})
    }

    // Creating assigns identity; an update with a stale resourceVersion is a 409 Conflict.
    #[test]
    fn create_update_conflict() {
        let s = store(100);
        let cms = rt(&s, "", "configmaps");
        let a = s
            .create(&cms, "v1", "default", cm("a", json!({"k": "1"})), &opts())
            .unwrap()
            .object;
        let meta = meta::metadata(&a.value).unwrap();
        assert_eq!(meta["generation"], 1);
        assert!(meta["uid"].as_str().unwrap().len() == 36);
        let rv1 = meta["resourceVersion"].as_str().unwrap().to_string();
        assert_eq!(
            s.create(&cms, "v1", "default", cm("a", json!({})), &opts())
                .unwrap_err()
                .code,
            409
        );
        let mut upd = (*a.value).clone();
        upd["data"]["k"] = json!("2");
        let b = s
            .update(
                &cms,
                "v1",
                "default",
                "a",
                upd.clone(),
                Subresource::Main,
                &opts(),
            )
            .unwrap()
            .object;
        assert_ne!(meta::meta_str(&b.value, "resourceVersion").unwrap(), rv1);
        assert_eq!(meta::metadata(&b.value).unwrap()["generation"], 2);
        let err = s
            .update(&cms, "v1", "default", "a", upd, Subresource::Main, &opts())
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.reason, "Conflict");
    }

    #[test]
    fn generate_name_and_missing_namespace() {
        let s = store(100);
        let cms = rt(&s, "", "configmaps");
        let out = s
            .create(
                &cms,
                "v1",
                "default",
                json!({"metadata": {"generateName": "x-"}}),
                &opts(),
            )
            .unwrap();
        assert!(meta::name(&out.object.value).starts_with("x-"));
        assert_eq!(meta::name(&out.object.value).len(), 7);
        let err = s
            .create(&cms, "v1", "nope", cm("a", json!({})), &opts())
            .unwrap_err();
        assert_eq!(
            (err.code, err.message.as_str()),
            (404, "namespaces \"nope\" not found")
        );
        let err = s
            .create(&cms, "v1", "default", json!({"metadata": {}}), &opts())
            .unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn list_filters_and_pages() {
        let s = store(100);
        let cms = rt(&s, "", "configmaps");
        for n in ["a", "b", "c", "d"] {
            s.create(&cms, "v1", "default", cm(n, json!({})), &opts())
                .unwrap();
        }
        s.create(&cms, "v1", "kube-system", cm("e", json!({})), &opts())
            .unwrap();
        let all = s.list(&cms, &Filter::default(), None, None).unwrap();
        assert_eq!(all.items.len(), 5);
        let f = Filter {
            namespace: Some("default".into()),
            ..Default::default()
        };
        let p1 = s.list(&cms, &f, Some(3), None).unwrap();
        assert_eq!(p1.items.len(), 3);
        assert_eq!(p1.remaining, Some(1));
        let p2 = s
            .list(&cms, &f, Some(3), p1.continue_token.as_deref())
            .unwrap();
        assert_eq!(
            p2.items
                .iter()
                .map(|s| meta::name(&s.value).to_string())
                .collect::<Vec<_>>(),
            vec!["d"]
        );
        assert!(p2.continue_token.is_none());
        let f = Filter {
            labels: LabelSelector::parse("app in (a,e)").unwrap(),
            ..Default::default()
        };
        assert_eq!(s.list(&cms, &f, None, None).unwrap().items.len(), 2);
        let f = Filter {
            fields: FieldSelector::parse("metadata.namespace=kube-system").unwrap(),
            ..Default::default()
        };
        assert_eq!(s.list(&cms, &f, None, None).unwrap().items.len(), 1);
        assert_eq!(
            s.list(&cms, &Filter::default(), None, Some("garbage!"))
                .unwrap_err()
                .code,
            400
        );
    }

    // A watch resuming from a resourceVersion older than the kept history is refused with 410.
    #[test]
    fn watch_history_and_gone() {
        let s = store(3);
        let cms = rt(&s, "", "configmaps");
        let first = s
            .create(&cms, "v1", "default", cm("a", json!({})), &opts())
            .unwrap()
            .object;
        let rv0 = meta::resource_version(&first.value).unwrap();
        for i in 0..2 {
            s.patch(
                &cms,
                "v1",
                "default",
                "a",
                &PatchBody::Merge(json!({"data": {"i": i.to_string()}})),
                Subresource::Main,
                &opts(),
            )
            .unwrap();
        }
        let sub = s
            .watch(&cms, &Filter::default(), WatchStart::After(rv0))
            .unwrap();
        assert_eq!(sub.initial.len(), 2);
        assert!(sub.initial.iter().all(|e| e.kind == EventType::Modified));
        s.patch(
            &cms,
            "v1",
            "default",
            "a",
            &PatchBody::Merge(json!({"data": {"i": "x"}})),
            Subresource::Main,
            &opts(),
        )
        .unwrap();
        s.delete(&cms, "default", "a", &DeleteOptions::default())
            .unwrap();
        let err = s
            .watch(&cms, &Filter::default(), WatchStart::After(rv0))
            .err()
            .unwrap();
        assert_eq!((err.code, err.reason), (410, "Expired"));
        let cur = s
            .watch(&cms, &Filter::default(), WatchStart::Current)
            .unwrap();
        assert!(cur.initial.is_empty());
    }

    #[test]
    fn finalizers_delay_removal() {
        let s = store(100);
        let cms = rt(&s, "", "configmaps");
        let mut obj = cm("f", json!({}));
        obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
        s.create(&cms, "v1", "default", obj, &opts()).unwrap();
        let marked = s
            .delete(&cms, "default", "f", &DeleteOptions::default())
            .unwrap();
        assert!(meta::is_deleting(&marked.value));
        assert!(s.get(&cms, "default", "f").is_ok());
        s.patch(
            &cms,
            "v1",
            "default",
            "f",
            &PatchBody::Merge(json!({"metadata": {"finalizers": null}})),
            Subresource::Main,
            &opts(),
        )
        .unwrap();
        assert_eq!(s.get(&cms, "default", "f").unwrap_err().code, 404);
    }

    #[test]
    fn namespace_deletion_removes_contents() {
        let s = store(100);
        let nss = rt(&s, "", "namespaces");
        let cms = rt(&s, "", "configmaps");
        s.create(
            &nss,
            "v1",
            "",
            json!({"metadata": {"name": "lab"}}),
            &opts(),
        )
        .unwrap();
        s.create(&cms, "v1", "lab", cm("x", json!({})), &opts())
            .unwrap();
        s.delete(&nss, "", "lab", &DeleteOptions::default())
            .unwrap();
        assert_eq!(s.get(&cms, "lab", "x").unwrap_err().code, 404);
        assert_eq!(s.get(&nss, "", "lab").unwrap_err().code, 404);
    }

    #[test]
    fn status_subresource_and_generation() {
        let s = store(100);
        let deps = rt(&s, "apps", "deployments");
        let d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {}}, "status": {"replicas": 9}});
        let created = s.create(&deps, "v1", "default", d, &opts()).unwrap().object;
        assert!(
            created.value.get("status").is_none(),
            "status dropped on create"
        );
        let st = s
            .patch(
                &deps,
                "v1",
                "default",
                "d",
                &PatchBody::Merge(json!({"status": {"replicas": 1}, "spec": {"replicas": 5}})),
                Subresource::Status,
                &opts(),
            )
            .unwrap()
            .object;
        assert_eq!(st.value["status"]["replicas"], 1);
        assert_eq!(st.value["spec"]["replicas"], 1, "spec ignored on status");
        assert_eq!(st.value["metadata"]["generation"], 1);
        let main = s
            .patch(
                &deps,
                "v1",
                "default",
                "d",
                &PatchBody::Merge(json!({"status": {"replicas": 7}, "spec": {"replicas": 5}})),
                Subresource::Main,
                &opts(),
            )
            .unwrap()
            .object;
        assert_eq!(
            main.value["status"]["replicas"], 1,
            "status ignored on main"
        );
        assert_eq!(main.value["spec"]["replicas"], 5);
        assert_eq!(main.value["metadata"]["generation"], 2);
        let label_only = s
            .patch(
                &deps,
                "v1",
                "default",
                "d",
                &PatchBody::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
                Subresource::Main,
                &opts(),
            )
            .unwrap()
            .object;
        assert_eq!(label_only.value["metadata"]["generation"], 2);
    }

    #[test]
    fn noop_update_keeps_resource_version_and_dry_run_writes_nothing() {
        let s = store(100);
        let cms = rt(&s, "", "configmaps");
        let a = s
            .create(&cms, "v1", "default", cm("a", json!({"k": "v"})), &opts())
            .unwrap()
            .object;
        let same = s
            .patch(
                &cms,
                "v1",
                "default",
                "a",
                &PatchBody::Merge(json!({"data": {"k": "v"}})),
                Subresource::Main,
                &opts(),
            )
            .unwrap()
            .object;
        assert_eq!(
            meta::resource_version(&a.value),
            meta::resource_version(&same.value)
        );
        let dry = WriteOptions {
            dry_run: true,
            ..opts()
        };
        s.patch(
            &cms,
            "v1",
            "default",
            "a",
            &PatchBody::Merge(json!({"data": {"k": "w"}})),
            Subresource::Main,
            &dry,
        )
        .unwrap();
        assert_eq!(s.get(&cms, "default", "a").unwrap().value["data"]["k"], "v");
        s.create(&cms, "v1", "default", cm("b", json!({})), &dry)
            .unwrap();
        assert_eq!(s.get(&cms, "default", "b").unwrap_err().code, 404);
    }

    #[test]
    fn crd_lifecycle_serves_and_removes_resources() {
        let s = store(100);
        let crds = rt(&s, "apiextensions.k8s.io", "customresourcedefinitions");
        let crd = json!({"metadata": {"name": "widgets.example.com"}, "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object",
                "properties": {"spec": {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer", "minimum": 1}}}}}}}]}});
        let created = s.create(&crds, "v1", "", crd, &opts()).unwrap().object;
        assert_eq!(
            created.value["status"]["conditions"][1]["type"],
            "Established"
        );
        let widgets = s.registry().lookup("example.com", "v1", "widgets").unwrap();
        let ok = s
            .create(
                &widgets,
                "v1",
                "default",
                json!({"metadata": {"name": "w"}, "spec": {"size": 2, "junk": 1}}),
                &opts(),
            )
            .unwrap();
        assert!(ok.object.value["spec"].get("junk").is_none());
        assert_eq!(ok.warnings, vec!["unknown field \"spec.junk\""]);
        let bad = s
            .create(
                &widgets,
                "v1",
                "default",
                json!({"metadata": {"name": "x"}, "spec": {"size": 0}}),
                &opts(),
            )
            .unwrap_err();
        assert_eq!(bad.code, 422);
        assert_eq!(
            bad.message,
            "Widget.example.com \"x\" is invalid: spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        );
        let strict = WriteOptions {
            field_validation: FieldValidation::Strict,
            ..opts()
        };
        let err = s
            .create(
                &widgets,
                "v1",
                "default",
                json!({"metadata": {"name": "y"}, "spec": {"size": 1, "junk": 1}}),
                &strict,
            )
            .unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message
                .contains("strict decoding error: unknown field \"spec.junk\""),
            "{}",
            err.message
        );
        s.delete(&crds, "", "widgets.example.com", &DeleteOptions::default())
            .unwrap();
        assert!(
            s.registry()
                .lookup("example.com", "v1", "widgets")
                .is_none()
        );
    }

    #[test]
    fn owner_references_cascade() {
        let s = store(100);
        let cms = rt(&s, "", "configmaps");
        let owner = s
            .create(&cms, "v1", "default", cm("owner", json!({})), &opts())
            .unwrap()
            .object;
        let uid = meta::meta_str(&owner.value, "uid").unwrap().to_string();
        let mut dep = cm("dep", json!({}));
        dep["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]);
        s.create(&cms, "v1", "default", dep, &opts()).unwrap();
        s.delete(&cms, "default", "owner", &DeleteOptions::default())
            .unwrap();
        assert_eq!(s.get(&cms, "default", "dep").unwrap_err().code, 404);
    }
}
