//! The LB-IPAM index: pools and Services in, the status every one of them should carry out,
//! updated incrementally per event.
//!
//! # The function it computes
//!
//! The wanted statuses are a function of the current objects (including the status they carry)
//! alone, never of the order events arrived in:
//!
//! 1. **Pools.** Ranges are laid out oldest pool first; a pool overlapping itself or an older
//!    pool not in conflict is in conflict and allocates nothing.
//! 2. **Kept addresses.** Every address already in a Service's `status.loadBalancer.ingress` that
//!    it asked for and that lies in a range of a pool selecting it (enabled, disabled or in
//!    conflict alike) is a *claim*. Claims on one address are admitted in rank order (oldest
//!    Service, then namespace/name): the first always, later ones only while sharing-compatible
//!    with everyone admitted. Admitted claims are kept; this is what makes a restart (or a resync
//!    carrying the statuses we wrote) change nothing.
//! 3. **New addresses.** Services still unsatisfied are served in rank order from what is left:
//!    listed addresses first-come, generic requests by the sharing key's addresses, else the
//!    lowest free address of the first enabled, selecting range of the family.
//!
//! Grants not yet seen in a Service's status are therefore provisional: if an older Service
//! shows up before the grant was written back (a burst of creations within one second, a
//! Service turning into a LoadBalancer), the younger grant moves. Once written, an address
//! is a claim and never moves.
//!
//! # Incremental work
//!
//! A Service event re-admits the claims on that Service's own addresses and re-runs step 3
//! from the earliest rank it can affect (the Service itself, Services displaced from or sharing
//! its addresses, Services waiting on a freed address or on its sharing key). Grants of younger
//! Services are only handed back once a re-run Service actually has to grant something, and
//! re-running skips every Service whose inputs provably did not change (no differing address
//! in what it would look at) and stops when none is left. So a new, youngest Service costs one
//! allocation, a Service reporting back what it was granted costs no allocation at all, and a
//! freed address is re-granted without revisiting unrelated Services. Finding a free address is
//! `O(ranges + log fragments)`, never `O(range size)`. Pool and configuration changes recompute
//! everything (`O(services)`).
//!
//! # Change reports
//!
//! Each update returns the statuses that differ from what the objects show (their status as
//! last applied, or as last reported for writing), so a status is reported once, an echo of
//! a written status reports nothing, and a restart from objects carrying our statuses reports
//! nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::Bound;
use std::sync::Arc;

use super::objects::{LbIpamConfig, Pool, Service, ServiceKey, Timestamp};
use super::ranges::{PoolTable, RangeState};
use super::request::{ServiceRequest, Sharing, compatible, is_responsible, request_of};
use super::space::{Count, addr, bits};
use super::status::{
    Changes, Condition, ConditionStatus, Failure, PoolChange, ServiceChange, ServiceLbStatus,
};
use super::{
    CONDITION_IPS_AVAILABLE, CONDITION_IPS_TOTAL, CONDITION_IPS_USED, CONDITION_POOL_CONFLICT,
    CONDITION_REQUEST_SATISFIED, REASON_CIDR_OVERLAP, REASON_NO_REASON, REASON_RESOLVED,
    REASON_SATISFIED,
};

/// Slot of a Service in [`LbIpam::services`].
type SvcId = usize;

/// Allocation order of Services: oldest first, then namespace/name.
type Rank = (Timestamp, ServiceKey);

/// A Service's status as last seen on the object or last handed out for writing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Observed {
    ingress: Vec<IpAddr>,
    condition: Option<Condition>,
}

impl Observed {
    fn of(svc: &Service) -> Self {
        Self {
            ingress: svc.current_ingress.clone(),
            condition: svc.current_condition.clone(),
        }
    }

    /// Whether writing `status` would change nothing.
    fn shows(&self, status: &ServiceLbStatus) -> bool {
        match status {
            ServiceLbStatus::Ignored => true,
            ServiceLbStatus::Managed { ingress, condition } => {
                &self.ingress == ingress && self.condition.as_ref() == Some(condition)
            }
            ServiceLbStatus::Released => self.ingress.is_empty() && self.condition.is_none(),
        }
    }

    /// The status once `status` is written.
    fn after(status: &ServiceLbStatus) -> Self {
        match status {
            ServiceLbStatus::Managed { ingress, condition } => Self {
                ingress: ingress.clone(),
                condition: Some(condition.clone()),
            },
            _ => Self::default(),
        }
    }
}

/// One Service and everything derived from it.
#[derive(Clone, Debug)]
struct ServiceEntry {
    svc: Service,
    rank: Rank,
    /// `None` when LB-IPAM is not responsible for the Service.
    request: Option<Arc<ServiceRequest>>,
    /// Addresses of its current ingress it may keep (claims), in ingress order.
    eligible: Vec<IpAddr>,
    /// Claims admitted, in ingress order.
    kept: Vec<IpAddr>,
    /// Addresses granted by this index and not (yet) in its ingress, in grant order.
    granted: Vec<IpAddr>,
    /// The last thing that went wrong while granting.
    failure: Option<Failure>,
    /// Per pool: does the pool select this Service (filled lazily).
    selects: Vec<Option<bool>>,
    baseline: Observed,
    desired: ServiceLbStatus,
}

/// Who holds one address.
#[derive(Clone, Debug, Default)]
struct Holders {
    /// Services whose ingress carries the address and may keep it, by rank.
    claimants: Vec<SvcId>,
    /// Claimants admitted.
    kept_by: Vec<SvcId>,
    /// Services the address was granted to (after `kept_by`, in grant order).
    granted_to: Vec<SvcId>,
    /// The sharing key of the holders (all holders share it), recorded for the key index.
    key: Option<String>,
}

impl Holders {
    fn is_occupied(&self) -> bool {
        !self.kept_by.is_empty() || !self.granted_to.is_empty()
    }

    fn all(&self) -> impl Iterator<Item = SvcId> + '_ {
        self.kept_by.iter().chain(self.granted_to.iter()).copied()
    }
}

/// One pool and the status it should carry.
#[derive(Clone, Debug)]
struct PoolEntry {
    pool: Pool,
    baseline: Vec<Condition>,
    desired: Vec<Condition>,
}

/// The LB-IPAM index. See the module documentation for what it computes.
#[derive(Clone, Debug, Default)]
pub struct LbIpam {
    config: LbIpamConfig,
    pools: BTreeMap<String, PoolEntry>,
    table: PoolTable,
    services: Vec<Option<ServiceEntry>>,
    free_ids: Vec<SvcId>,
    ids: HashMap<ServiceKey, SvcId>,
    ips: HashMap<IpAddr, Holders>,
    /// Sharing key → occupied addresses whose holders carry the key.
    shared: HashMap<String, BTreeSet<IpAddr>>,
    /// Services LB-IPAM serves that their kept addresses do not satisfy.
    pending: BTreeSet<(Rank, SvcId)>,
    /// `pending`, by sharing key.
    pending_by_key: HashMap<String, BTreeSet<(Rank, SvcId)>>,
    /// The part of `pending` holding granted addresses.
    with_grants: BTreeSet<(Rank, SvcId)>,
    /// Pools (table indices) whose counts may have changed.
    dirty_pools: BTreeSet<usize>,
}

/// What one Service event invalidated, and how far re-granting must go.
struct Replay {
    /// Re-grant pending Services from this rank on.
    from: Option<(Rank, SvcId)>,
    /// Services that must be re-evaluated even when not pending.
    must: BTreeSet<(Rank, SvcId)>,
    /// Holder pairs that differ from the previous run at the current rank.
    delta: HashMap<IpAddr, Vec<SvcId>>,
    /// The changed Service and its sharing keys before and after the event.
    subject: SvcId,
    subject_keys: Vec<String>,
    /// Skipping is unsafe: the subject's old grants vanish at a rank nothing re-runs (it
    /// moved rank, or LB-IPAM no longer serves it).
    exhaustive: bool,
}

impl Replay {
    fn lower(&mut self, rank: &Rank, id: SvcId) {
        let cand = (rank.clone(), id);
        if self.from.as_ref().is_none_or(|f| cand < *f) {
            self.from = Some(cand);
        }
    }

    fn toggle(&mut self, ip: IpAddr, id: SvcId) {
        let v = self.delta.entry(ip).or_default();
        if let Some(pos) = v.iter().position(|&x| x == id) {
            v.swap_remove(pos);
            if v.is_empty() {
                self.delta.remove(&ip);
            }
        } else {
            v.push(id);
        }
    }
}

impl LbIpam {
    /// An empty, dormant index.
    pub fn new(config: LbIpamConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    pub fn config(&self) -> &LbIpamConfig {
        &self.config
    }

    /// True while no pool exists: LB-IPAM leaves Services it never touched alone.
    pub fn is_dormant(&self) -> bool {
        self.pools.is_empty()
    }

    /// The status LB-IPAM wants on a Service it knows.
    pub fn service_status(&self, key: &ServiceKey) -> Option<&ServiceLbStatus> {
        self.ids.get(key).map(|&id| &self.entry(id).desired)
    }

    /// LB-IPAM's conditions for a pool it knows.
    pub fn pool_conditions(&self, name: &str) -> Option<&[Condition]> {
        self.pools.get(name).map(|p| p.desired.as_slice())
    }

    /// Every known Service's wanted status.
    pub fn service_statuses(&self) -> BTreeMap<ServiceKey, ServiceLbStatus> {
        self.services
            .iter()
            .flatten()
            .map(|e| (e.rank.1.clone(), e.desired.clone()))
            .collect()
    }

    /// Every pool's wanted conditions.
    pub fn pool_statuses(&self) -> BTreeMap<String, Vec<Condition>> {
        self.pools
            .iter()
            .map(|(name, p)| (name.clone(), p.desired.clone()))
            .collect()
    }

    /// Replaces everything (initial list or relist). Statuses already right on the objects are
    /// not reported.
    pub fn reset(
        &mut self,
        config: LbIpamConfig,
        pools: impl IntoIterator<Item = Pool>,
        services: impl IntoIterator<Item = Service>,
    ) -> Changes {
        *self = Self::new(config);
        for pool in pools {
            self.pools.insert(
                pool.name.clone(),
                PoolEntry {
                    baseline: pool.current_conditions.clone(),
                    desired: Vec::new(),
                    pool,
                },
            );
        }
        for svc in services {
            let key = svc.key();
            if let Some(&id) = self.ids.get(&key) {
                // A duplicate key in the list: the later object wins.
                self.services[id] = None;
                self.free_ids.push(id);
            }
            let id = self.new_entry(svc, &config);
            self.ids.insert(key, id);
        }
        let mut touched = BTreeSet::new();
        self.recompute_all(&mut touched);
        self.finish(touched)
    }

    /// Changes the operator configuration (responsibility and families).
    pub fn set_config(&mut self, config: LbIpamConfig) -> Changes {
        if config == self.config {
            return Changes::default();
        }
        self.config = config;
        for entry in self.services.iter_mut().flatten() {
            entry.request = is_responsible(&entry.svc, &config)
                .then(|| Arc::new(request_of(&entry.svc, &config)));
        }
        let mut touched = BTreeSet::new();
        self.recompute_all(&mut touched);
        self.finish(touched)
    }

    /// A pool was created or changed.
    pub fn apply_pool(&mut self, pool: Pool) -> Changes {
        if let Some(existing) = self.pools.get_mut(&pool.name) {
            let same_spec = existing.pool.creation_timestamp == pool.creation_timestamp
                && existing.pool.blocks == pool.blocks
                && existing.pool.service_selector == pool.service_selector
                && existing.pool.disabled == pool.disabled
                && existing.pool.allow_first_last_ips == pool.allow_first_last_ips;
            existing.baseline = pool.current_conditions.clone();
            if same_spec {
                // Only metadata or status moved: re-check this pool's conditions.
                existing.pool = pool;
                let idx = self.table.by_name[&existing.pool.name];
                self.dirty_pools.insert(idx);
                return self.finish(BTreeSet::new());
            }
            existing.pool = pool;
        } else {
            self.pools.insert(
                pool.name.clone(),
                PoolEntry {
                    baseline: pool.current_conditions.clone(),
                    desired: Vec::new(),
                    pool,
                },
            );
        }
        let mut touched = BTreeSet::new();
        self.recompute_all(&mut touched);
        self.finish(touched)
    }

    /// A pool was deleted: its addresses are taken from the Services holding them.
    pub fn delete_pool(&mut self, name: &str) -> Changes {
        if self.pools.remove(name).is_none() {
            return Changes::default();
        }
        let mut touched = BTreeSet::new();
        self.recompute_all(&mut touched);
        self.finish(touched)
    }

    /// A Service was created or changed (spec, labels, annotations or status).
    pub fn apply_service(&mut self, svc: Service) -> Changes {
        let key = svc.key();
        let id = match self.ids.get(&key) {
            Some(&id) => {
                if self.entry(id).svc == svc {
                    return Changes::default();
                }
                id
            }
            None => {
                let config = self.config;
                let mut placeholder = svc.clone();
                // Enter as a non-responsible Service without claims, then update to the real
                // object so the update path does all the work.
                placeholder.is_load_balancer = false;
                placeholder.current_ingress.clear();
                let id = self.new_entry(placeholder, &config);
                self.ids.insert(key, id);
                id
            }
        };
        let mut touched = BTreeSet::new();
        self.update_service(id, Some(svc), &mut touched);
        self.finish(touched)
    }

    /// A Service was deleted: its addresses are free again.
    pub fn delete_service(&mut self, key: &ServiceKey) -> Changes {
        let Some(&id) = self.ids.get(key) else {
            return Changes::default();
        };
        let mut touched = BTreeSet::new();
        self.update_service(id, None, &mut touched);
        self.ids.remove(key);
        self.services[id] = None;
        self.free_ids.push(id);
        touched.remove(&id);
        self.finish(touched)
    }

    // ---- entries -------------------------------------------------------------------------

    fn new_entry(&mut self, svc: Service, config: &LbIpamConfig) -> SvcId {
        let request = is_responsible(&svc, config).then(|| Arc::new(request_of(&svc, config)));
        let entry = ServiceEntry {
            rank: (svc.creation_timestamp, svc.key()),
            baseline: Observed::of(&svc),
            svc,
            request,
            eligible: Vec::new(),
            kept: Vec::new(),
            granted: Vec::new(),
            failure: None,
            selects: Vec::new(),
            desired: ServiceLbStatus::Ignored,
        };
        match self.free_ids.pop() {
            Some(id) => {
                self.services[id] = Some(entry);
                id
            }
            None => {
                self.services.push(Some(entry));
                self.services.len() - 1
            }
        }
    }

    fn entry(&self, id: SvcId) -> &ServiceEntry {
        self.services[id].as_ref().expect("live service id")
    }

    fn entry_mut(&mut self, id: SvcId) -> &mut ServiceEntry {
        self.services[id].as_mut().expect("live service id")
    }

    fn sharing_of(&self, id: SvcId) -> Option<&Sharing> {
        self.services[id]
            .as_ref()?
            .request
            .as_deref()
            .map(|r| &r.sharing)
    }

    fn key_of(&self, id: SvcId) -> &str {
        self.sharing_of(id).map_or("", |s| s.key.as_str())
    }

    /// Whether pool `pool` (table index) selects Service `id`.
    fn selects(&mut self, id: SvcId, pool: usize) -> bool {
        let npools = self.table.pools.len();
        let Some(entry) = self.services[id].as_mut() else {
            return false;
        };
        if let Some(Some(v)) = entry.selects.get(pool) {
            return *v;
        }
        let v = match &entry.request {
            Some(r) => self.table.pools[pool].selects(&r.labels),
            None => false,
        };
        if entry.selects.len() < npools {
            entry.selects.resize(npools, None);
        }
        entry.selects[pool] = Some(v);
        v
    }

    /// Whether `ip` lies in a range (in any state) of a pool selecting `id`.
    fn in_selecting_pool(&mut self, id: SvcId, ip: IpAddr) -> bool {
        let pools: Vec<usize> = self
            .table
            .ranges_of(ip)
            .map(|r| self.table.ranges[r].pool)
            .collect();
        pools.into_iter().any(|p| self.selects(id, p))
    }

    /// The addresses of `id`'s ingress it may keep, deduplicated, in ingress order.
    fn eligible_addresses(&mut self, id: SvcId) -> Vec<IpAddr> {
        let Some(req) = self.entry(id).request.clone() else {
            return Vec::new();
        };
        let ingress = self.entry(id).svc.current_ingress.clone();
        let mut out: Vec<IpAddr> = Vec::new();
        for ip in ingress {
            if !out.contains(&ip) && req.wants(ip) && self.in_selecting_pool(id, ip) {
                out.push(ip);
            }
        }
        out
    }

    fn needs_allocation(&self, id: SvcId) -> bool {
        let e = self.entry(id);
        e.request.as_ref().is_some_and(|r| !r.is_satisfied(&e.kept))
    }

    fn refresh_kept(&mut self, id: SvcId) {
        let kept: Vec<IpAddr> = self
            .entry(id)
            .eligible
            .iter()
            .copied()
            .filter(|ip| self.ips.get(ip).is_some_and(|h| h.kept_by.contains(&id)))
            .collect();
        self.entry_mut(id).kept = kept;
    }

    fn enqueue(&mut self, id: SvcId) {
        let e = self.entry(id);
        let item = (e.rank.clone(), id);
        let key = self.key_of(id).to_string();
        let has_grants = !e.granted.is_empty();
        if !key.is_empty() {
            self.pending_by_key
                .entry(key)
                .or_default()
                .insert(item.clone());
        }
        if has_grants {
            self.with_grants.insert(item.clone());
        }
        self.pending.insert(item);
    }

    /// Removes `id` from the queues (with its current rank and key).
    fn dequeue(&mut self, id: SvcId) {
        let item = (self.entry(id).rank.clone(), id);
        let key = self.key_of(id).to_string();
        self.pending.remove(&item);
        self.with_grants.remove(&item);
        if let Some(set) = self.pending_by_key.get_mut(&key) {
            set.remove(&item);
            if set.is_empty() {
                self.pending_by_key.remove(&key);
            }
        }
    }

    // ---- holders ---------------------------------------------------------------------------

    fn is_occupied(&self, ip: IpAddr) -> bool {
        self.ips.get(&ip).is_some_and(Holders::is_occupied)
    }

    /// Changes the holders of `ip`, keeping range usage and the sharing-key index in step.
    fn mutate_holders(&mut self, ip: IpAddr, f: impl FnOnce(&mut Holders)) {
        let slot = self.ips.entry(ip).or_default();
        let was_occupied = slot.is_occupied();
        let old_key = slot.key.take();
        f(slot);
        let now_occupied = slot.is_occupied();
        let first = slot.all().next();
        let idle = !now_occupied && slot.claimants.is_empty();
        let new_key = first
            .map(|h| self.key_of(h).to_string())
            .filter(|k| !k.is_empty());
        if idle {
            self.ips.remove(&ip);
        } else if let Some(slot) = self.ips.get_mut(&ip) {
            slot.key = new_key.clone();
        }
        if old_key != new_key {
            if let Some(k) = old_key
                && let Some(set) = self.shared.get_mut(&k)
            {
                set.remove(&ip);
                if set.is_empty() {
                    self.shared.remove(&k);
                }
            }
            if let Some(k) = new_key {
                self.shared.entry(k).or_default().insert(ip);
            }
        }
        if was_occupied != now_occupied {
            let b = bits(ip);
            let ranges: Vec<usize> = self.table.ranges_of(ip).collect();
            for r in ranges {
                let range = &mut self.table.ranges[r];
                self.dirty_pools.insert(range.pool);
                if range.is_reserved(b) {
                    continue;
                }
                if now_occupied {
                    range.used += 1;
                    if range.state == RangeState::Active {
                        range.free.take(b);
                    }
                } else {
                    range.used -= 1;
                    if range.state == RangeState::Active {
                        range.free.give(b);
                    }
                }
            }
        }
    }

    fn grant(&mut self, ip: IpAddr, id: SvcId) {
        self.mutate_holders(ip, |h| h.granted_to.push(id));
    }

    fn revoke(&mut self, ip: IpAddr, id: SvcId) {
        self.mutate_holders(ip, |h| h.granted_to.retain(|&x| x != id));
    }

    /// The claimants of `ip` that may keep it: the first, then every later one compatible
    /// with all admitted so far.
    fn admit(&self, ip: IpAddr) -> Vec<SvcId> {
        let Some(slot) = self.ips.get(&ip) else {
            return Vec::new();
        };
        let mut admitted: Vec<SvcId> = Vec::new();
        for &c in &slot.claimants {
            let Some(cs) = self.sharing_of(c) else {
                continue;
            };
            // Only Services with a sharing key ever hold an address together.
            let joins = admitted.is_empty()
                || (!cs.key.is_empty()
                    && admitted.iter().all(|&h| {
                        self.sharing_of(h)
                            .is_some_and(|hs| compatible(hs, cs).is_ok())
                    }));
            if joins {
                admitted.push(c);
            }
        }
        admitted
    }

    /// Whether `candidate` may join every holder of `ip`; the error is the first reason not to.
    fn check_holders(&self, ip: IpAddr, candidate: &Sharing) -> Result<(), &'static str> {
        let Some(slot) = self.ips.get(&ip) else {
            return Ok(());
        };
        for h in slot.all() {
            if let Some(hs) = self.sharing_of(h) {
                compatible(hs, candidate)?;
            }
        }
        Ok(())
    }

    // ---- granting --------------------------------------------------------------------------

    /// Grants what `id` still lacks after its kept addresses. Returns the grants (in order)
    /// and the last failure.
    fn allocate(&mut self, id: SvcId) -> (Vec<IpAddr>, Option<Failure>) {
        let Some(req) = self.entry(id).request.clone() else {
            return (Vec::new(), None);
        };
        let mut held = self.entry(id).kept.clone();
        let mut granted = Vec::new();
        let mut failure = None;
        if !req.ips.is_empty() {
            for &ip in &req.ips {
                if held.contains(&ip) {
                    continue;
                }
                match self.grant_listed(id, &req, ip) {
                    Ok(()) => {
                        held.push(ip);
                        granted.push(ip);
                    }
                    Err(f) => failure = Some(f),
                }
            }
        } else {
            for v6 in [false, true] {
                let (wanted, blocked) = if v6 {
                    (req.v6, req.v6_blocked)
                } else {
                    (req.v4, req.v4_blocked)
                };
                if !wanted || held.iter().any(|ip| ip.is_ipv6() == v6) {
                    continue;
                }
                if blocked {
                    failure = Some(Failure::NoPool);
                    continue;
                }
                let found = match self.find_shared(id, &req, v6) {
                    Some(ip) => Ok(ip),
                    None => self.find_free(id, v6),
                };
                match found {
                    Ok(ip) => {
                        self.grant(ip, id);
                        held.push(ip);
                        granted.push(ip);
                    }
                    Err(f) => failure = Some(f),
                }
            }
        }
        (granted, failure)
    }

    /// Grants the listed address `ip` to `id`, or says why not.
    fn grant_listed(&mut self, id: SvcId, req: &ServiceRequest, ip: IpAddr) -> Result<(), Failure> {
        let range = self
            .table
            .settled_range_of(ip)
            .filter(|&r| self.table.ranges[r].state == RangeState::Active)
            .ok_or(Failure::NoPoolForIp(ip))?;
        if !self.selects(id, self.table.ranges[range].pool) {
            return Err(Failure::PoolSelectorMismatch(ip));
        }
        // A reserved first/last address counts as taken, as in Cilium.
        if self.table.ranges[range].is_reserved(bits(ip)) {
            return Err(Failure::AlreadyAllocated(ip));
        }
        if self.is_occupied(ip) {
            if req.sharing.key.is_empty() {
                return Err(Failure::AlreadyAllocated(ip));
            }
            self.check_holders(ip, &req.sharing)
                .map_err(|why| Failure::Incompatible(ip, why))?;
        }
        self.grant(ip, id);
        Ok(())
    }

    /// An address of family `v6` held under `id`'s sharing key that `id` may join.
    fn find_shared(&mut self, id: SvcId, req: &ServiceRequest, v6: bool) -> Option<IpAddr> {
        if req.sharing.key.is_empty() {
            return None;
        }
        let candidates: Vec<IpAddr> = self
            .shared
            .get(&req.sharing.key)?
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == v6)
            .collect();
        candidates.into_iter().find(|&ip| {
            self.check_holders(ip, &req.sharing).is_ok() && self.in_selecting_pool(id, ip)
        })
    }

    /// The lowest free address of the first enabled range of family `v6` whose pool selects
    /// `id`.
    fn find_free(&mut self, id: SvcId, v6: bool) -> Result<IpAddr, Failure> {
        let mut full = false;
        for r in 0..self.table.ranges.len() {
            let range = &self.table.ranges[r];
            if range.state != RangeState::Active || range.v6 != v6 {
                continue;
            }
            let (pool, lowest) = (range.pool, range.free.lowest());
            match lowest {
                None => {
                    if !full && self.selects(id, pool) {
                        full = true;
                    }
                }
                Some(b) => {
                    if self.selects(id, pool) {
                        return Ok(addr(v6, b));
                    }
                }
            }
        }
        Err(if full {
            Failure::OutOfIps
        } else {
            Failure::NoPool
        })
    }

    // ---- recomputation ---------------------------------------------------------------------

    /// Rebuilds every derived fact from the objects.
    fn recompute_all(&mut self, touched: &mut BTreeSet<SvcId>) {
        self.table = PoolTable::build(self.pools.values().map(|e| &e.pool));
        self.ips.clear();
        self.shared.clear();
        self.pending.clear();
        self.pending_by_key.clear();
        self.with_grants.clear();
        self.dirty_pools = (0..self.table.pools.len()).collect();
        let npools = self.table.pools.len();
        let mut order: Vec<(Rank, SvcId)> = Vec::new();
        for (id, slot) in self.services.iter_mut().enumerate() {
            if let Some(e) = slot {
                e.eligible.clear();
                e.kept.clear();
                e.granted.clear();
                e.failure = None;
                e.selects = vec![None; npools];
                order.push((e.rank.clone(), id));
                touched.insert(id);
            }
        }
        order.sort();
        for (_, id) in &order {
            let eligible = self.eligible_addresses(*id);
            for ip in &eligible {
                self.ips.entry(*ip).or_default().claimants.push(*id);
            }
            self.entry_mut(*id).eligible = eligible;
        }
        let mut claimed: Vec<IpAddr> = self.ips.keys().copied().collect();
        claimed.sort();
        for ip in claimed {
            let admitted = self.admit(ip);
            self.mutate_holders(ip, |h| h.kept_by = admitted);
        }
        for (_, id) in &order {
            self.refresh_kept(*id);
        }
        for (_, id) in &order {
            if self.needs_allocation(*id) {
                let (granted, failure) = self.allocate(*id);
                let e = self.entry_mut(*id);
                e.granted = granted;
                e.failure = failure;
                self.enqueue(*id);
            }
        }
    }

    /// Applies one Service event (`new == None`: deletion) incrementally.
    fn update_service(&mut self, id: SvcId, new: Option<Service>, touched: &mut BTreeSet<SvcId>) {
        touched.insert(id);
        let old_rank = self.entry(id).rank.clone();
        let old_sharing = self.sharing_of(id).cloned();
        let was_pending = self.pending.contains(&(old_rank.clone(), id));

        // Take the subject out of the queues and hand back what it was granted, before its
        // rank or sharing key can change.
        self.dequeue(id);
        let old_grants = std::mem::take(&mut self.entry_mut(id).granted);
        for &ip in &old_grants {
            self.revoke(ip, id);
        }

        // Swap in the new object.
        let config = self.config;
        let old_eligible = std::mem::take(&mut self.entry_mut(id).eligible);
        {
            let e = self.entry_mut(id);
            match new {
                Some(svc) => {
                    e.rank = (svc.creation_timestamp, svc.key());
                    e.request =
                        is_responsible(&svc, &config).then(|| Arc::new(request_of(&svc, &config)));
                    e.baseline = Observed::of(&svc);
                    e.svc = svc;
                    e.selects.clear();
                }
                None => e.request = None,
            }
        }
        let new_rank = self.entry(id).rank.clone();
        let new_sharing = self.sharing_of(id).cloned();
        let responsible = new_sharing.is_some();
        let new_eligible = self.eligible_addresses(id);
        self.entry_mut(id).eligible = new_eligible.clone();

        // Claims on the subject's addresses, before and after.
        let mut addresses: BTreeSet<IpAddr> = old_eligible.iter().copied().collect();
        addresses.extend(new_eligible.iter().copied());
        for ip in &old_eligible {
            if let Some(h) = self.ips.get_mut(ip) {
                h.claimants.retain(|&c| c != id);
            }
        }
        for ip in &new_eligible {
            let pos = {
                let claimants = self
                    .ips
                    .get(ip)
                    .map(|h| h.claimants.as_slice())
                    .unwrap_or(&[]);
                claimants.partition_point(|&c| self.entry(c).rank < new_rank)
            };
            self.ips.entry(*ip).or_default().claimants.insert(pos, id);
        }
        let mut kept_changes: Vec<(IpAddr, Vec<SvcId>)> = Vec::new();
        let mut replay = Replay {
            from: None,
            must: BTreeSet::new(),
            delta: HashMap::new(),
            subject: id,
            subject_keys: Vec::new(),
            exhaustive: false,
        };
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for s in [&old_sharing, &new_sharing].into_iter().flatten() {
            if !s.key.is_empty() {
                keys.insert(s.key.clone());
                replay.subject_keys.push(s.key.clone());
            }
        }
        let mut affected: BTreeSet<SvcId> = BTreeSet::new();
        let mut freed = false;
        for &ip in &addresses {
            let admitted = self.admit(ip);
            let (old_kept, joiners): (Vec<SvcId>, Vec<SvcId>) = self
                .ips
                .get(&ip)
                .map(|h| (h.kept_by.clone(), h.granted_to.clone()))
                .unwrap_or_default();
            // Whoever was granted a share of this address checked against the old holders.
            for j in joiners {
                let rank = self.entry(j).rank.clone();
                replay.must.insert((rank, j));
            }
            if admitted == old_kept {
                continue;
            }
            if admitted.is_empty() {
                freed = true;
            }
            for &h in old_kept.iter().chain(admitted.iter()) {
                let k = self.key_of(h);
                if !k.is_empty() {
                    keys.insert(k.to_string());
                }
            }
            for &h in old_kept.iter().filter(|h| !admitted.contains(h)) {
                affected.insert(h);
                replay.toggle(ip, h);
            }
            for &h in admitted.iter().filter(|h| !old_kept.contains(h)) {
                affected.insert(h);
                replay.toggle(ip, h);
            }
            kept_changes.push((ip, admitted));
        }

        // Where re-granting must start.
        if was_pending || !old_grants.is_empty() {
            replay.lower(&old_rank, id);
            if !old_grants.is_empty() && (old_rank != new_rank || !responsible) {
                // Its old grants vanish at its old rank, where nothing will re-run it.
                replay.exhaustive = true;
            }
        }
        if responsible {
            replay.must.insert((new_rank.clone(), id));
        }
        if old_sharing.is_some() && old_sharing != new_sharing {
            // Pending Services of its keys decided against how it used to share.
            for k in &replay.subject_keys {
                for item in self.pending_by_key.get(k).into_iter().flatten() {
                    replay.must.insert(item.clone());
                }
            }
        }
        affected.remove(&id);
        for &t in &affected {
            replay.must.insert((self.entry(t).rank.clone(), t));
        }
        for (rank, t) in replay.must.clone() {
            replay.lower(&rank, t);
        }
        if freed && let Some((rank, t)) = self.pending.first().cloned() {
            replay.lower(&rank, t);
        }
        for k in &keys {
            if let Some((rank, t)) = self.pending_by_key.get(k).and_then(|s| s.first()).cloned() {
                replay.lower(&rank, t);
            }
        }

        // The subject's old grants sit at its old rank in the previous run; everyone else's
        // are handed back lazily by the replay.
        let mut rolled: BTreeMap<(Rank, SvcId), Vec<IpAddr>> = BTreeMap::new();
        if !old_grants.is_empty() {
            rolled.insert((old_rank.clone(), id), old_grants.clone());
        }

        // Settle the claims. Grants still sitting on these addresses belong to Services the
        // replay re-runs (`must`) before anything younger is granted.
        for (ip, admitted) in kept_changes {
            self.mutate_holders(ip, |h| h.kept_by = admitted);
        }
        // The subject's sharing key may have changed under addresses it keeps.
        for &ip in &addresses {
            self.mutate_holders(ip, |_| {});
        }
        self.refresh_kept(id);
        for &t in &affected {
            self.refresh_kept(t);
        }

        self.replay(replay, rolled, touched);
    }

    /// Re-grants pending Services in rank order from `replay.from`, stopping once the state
    /// provably matches the previous run's.
    ///
    /// Grants of later Services are handed back only when a re-run Service actually needs to
    /// grant (it must not see what younger Services got); a replay that grants nothing (a
    /// Service reporting back its grants) touches nobody else.
    fn replay(
        &mut self,
        mut replay: Replay,
        mut rolled: BTreeMap<(Rank, SvcId), Vec<IpAddr>>,
        touched: &mut BTreeSet<SvcId>,
    ) {
        let Some(from) = replay.from.clone() else {
            return;
        };
        let subject_old: Option<(Rank, SvcId)> =
            rolled.keys().find(|(_, s)| *s == replay.subject).cloned();
        let mut handed_back = false;
        let mut cursor: Bound<(Rank, SvcId)> = Bound::Included(from);
        loop {
            let next_pending = self
                .pending
                .range((cursor.clone(), Bound::Unbounded))
                .next()
                .cloned();
            let next_must = replay.must.first().cloned();
            let next = match (next_pending, next_must) {
                (None, None) => break,
                (Some(p), None) => p,
                (None, Some(m)) => m,
                (Some(p), Some(m)) => p.min(m),
            };
            if replay.must.is_empty()
                && !replay.exhaustive
                && subject_old.as_ref().is_none_or(|s| next > *s)
            {
                // Skip Services that would decide as before; they keep their grants.
                let Some(affected) = self.next_affected(&replay, &cursor) else {
                    break;
                };
                if affected > next {
                    let skipped: Vec<(Rank, SvcId)> = rolled
                        .range(next.clone()..affected.clone())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for item in skipped {
                        let grants = rolled.remove(&item).unwrap_or_default();
                        for &ip in &grants {
                            self.grant(ip, item.1);
                        }
                        self.entry_mut(item.1).granted = grants;
                    }
                    cursor = Bound::Included(affected);
                    continue;
                }
            }
            replay.must.remove(&next);
            let q = next.1;
            let exists = self.services[q].is_some();
            let needs = exists && self.needs_allocation(q);
            if needs && !handed_back {
                // From here on every grant is redone in rank order.
                handed_back = true;
                let later: Vec<(Rank, SvcId)> = self
                    .with_grants
                    .range((Bound::Included(next.clone()), Bound::Unbounded))
                    .cloned()
                    .collect();
                for item in later {
                    if rolled.contains_key(&item) {
                        continue;
                    }
                    let grants = std::mem::take(&mut self.entry_mut(item.1).granted);
                    for &ip in &grants {
                        self.revoke(ip, item.1);
                    }
                    rolled.insert(item, grants);
                }
            }
            let old_grants = match rolled.remove(&next) {
                Some(g) => g,
                None if exists => {
                    let g = std::mem::take(&mut self.entry_mut(q).granted);
                    for &ip in &g {
                        self.revoke(ip, q);
                    }
                    g
                }
                None => Vec::new(),
            };
            if exists {
                self.dequeue(q);
                let (granted, failure) = if needs {
                    self.allocate(q)
                } else {
                    (Vec::new(), None)
                };
                for &ip in &granted {
                    replay.toggle(ip, q);
                }
                let e = self.entry_mut(q);
                e.granted = granted;
                e.failure = failure;
                if needs {
                    self.enqueue(q);
                }
                touched.insert(q);
            }
            for &ip in &old_grants {
                replay.toggle(ip, q);
            }
            cursor = Bound::Excluded(next);
        }
        // Everyone handed back but not re-run gets exactly what the previous run gave them.
        for ((_, q), grants) in rolled {
            if q == replay.subject || self.services[q].is_none() {
                continue;
            }
            for &ip in &grants {
                self.grant(ip, q);
            }
            self.entry_mut(q).granted = grants;
        }
    }

    /// The first pending Service after `cursor` whose decision could differ from the previous
    /// run's, given the holder differences in `replay.delta`; `None` when every remaining one
    /// would decide exactly as before.
    ///
    /// A Service only looks at an address whose occupancy differs if it lists it, or if it
    /// still needs that family and the address lies in an enabled range of a pool selecting
    /// it. It only looks at who holds an address (occupied in both runs) through its sharing
    /// key.
    fn next_affected(
        &mut self,
        replay: &Replay,
        cursor: &Bound<(Rank, SvcId)>,
    ) -> Option<(Rank, SvcId)> {
        let mut moved: Vec<(IpAddr, Option<usize>)> = Vec::new();
        let mut keys: BTreeSet<String> = BTreeSet::new();
        for (ip, toggled) in &replay.delta {
            // Holders at the cursor: claims, and grants of Services not younger than it.
            let current: Vec<SvcId> = self
                .ips
                .get(ip)
                .map(|h| {
                    h.kept_by
                        .iter()
                        .copied()
                        .chain(h.granted_to.iter().copied().filter(|&g| {
                            let item = (self.entry(g).rank.clone(), g);
                            match cursor {
                                Bound::Included(c) => item < *c,
                                Bound::Excluded(c) => item <= *c,
                                Bound::Unbounded => true,
                            }
                        }))
                        .collect()
                })
                .unwrap_or_default();
            let mut before = current.len() as isize;
            for t in toggled {
                before += if current.contains(t) { -1 } else { 1 };
            }
            if current.is_empty() != (before <= 0) {
                let active_pool = self
                    .table
                    .settled_range_of(*ip)
                    .filter(|&r| self.table.ranges[r].state == RangeState::Active)
                    .map(|r| self.table.ranges[r].pool);
                moved.push((*ip, active_pool));
            }
            for &h in current.iter().chain(toggled.iter()) {
                if h == replay.subject {
                    keys.extend(replay.subject_keys.iter().cloned());
                } else if !self.key_of(h).is_empty() {
                    keys.insert(self.key_of(h).to_string());
                }
            }
        }
        if moved.is_empty() && keys.is_empty() {
            return None;
        }
        let remaining: Vec<SvcId> = self
            .pending
            .range((cursor.clone(), Bound::Unbounded))
            .map(|(_, id)| *id)
            .collect();
        for r in remaining {
            let Some(req) = self.entry(r).request.clone() else {
                continue;
            };
            let affected = (!req.sharing.key.is_empty() && keys.contains(&req.sharing.key))
                || moved.iter().any(|&(ip, pool)| {
                    if !req.ips.is_empty() {
                        return req.ips.contains(&ip);
                    }
                    let family_open = req.wants(ip)
                        && !self
                            .entry(r)
                            .kept
                            .iter()
                            .any(|k| k.is_ipv6() == ip.is_ipv6());
                    family_open && pool.is_some_and(|p| self.selects(r, p))
                });
            if affected {
                return Some((self.entry(r).rank.clone(), r));
            }
        }
        None
    }

    // ---- statuses --------------------------------------------------------------------------

    fn desired_of(&self, id: SvcId) -> ServiceLbStatus {
        let e = self.entry(id);
        let Some(req) = &e.request else {
            // Clean up only what LB-IPAM wrote: its condition marks the Service as ours.
            return if e.svc.current_condition.is_some() {
                ServiceLbStatus::Released
            } else {
                ServiceLbStatus::Ignored
            };
        };
        if self.pools.is_empty() && e.svc.current_condition.is_none() {
            // Dormant: a Service LB-IPAM never touched stays untouched.
            return ServiceLbStatus::Ignored;
        }
        let ingress: Vec<IpAddr> = e.kept.iter().chain(e.granted.iter()).copied().collect();
        let (status, reason, message) = if req.is_satisfied(&ingress) {
            (
                ConditionStatus::True,
                REASON_SATISFIED.to_string(),
                String::new(),
            )
        } else {
            let failure = e.failure.clone().unwrap_or(Failure::NoPool);
            (
                ConditionStatus::False,
                failure.reason().to_string(),
                failure.message(),
            )
        };
        ServiceLbStatus::Managed {
            ingress,
            condition: Condition {
                type_: CONDITION_REQUEST_SATISFIED.into(),
                status,
                reason,
                message,
                observed_generation: e.svc.generation,
            },
        }
    }

    fn pool_conditions_of(&self, idx: usize) -> Vec<Condition> {
        let slot = &self.table.pools[idx];
        let generation = self.pools.get(&slot.name).map_or(0, |p| p.pool.generation);
        let mut total = Count::default();
        let mut used = Count::default();
        for &r in &slot.ranges {
            let range = &self.table.ranges[r];
            total = total.add(range.capacity());
            used = used.add(Count::from_u128(range.used));
        }
        let available = total.saturating_sub(used);
        let cond = |type_: &str, status, reason: &str, message: String| Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message,
            observed_generation: generation,
        };
        vec![
            match &slot.conflict {
                Some(msg) => cond(
                    CONDITION_POOL_CONFLICT,
                    ConditionStatus::True,
                    REASON_CIDR_OVERLAP,
                    msg.clone(),
                ),
                None => cond(
                    CONDITION_POOL_CONFLICT,
                    ConditionStatus::False,
                    REASON_RESOLVED,
                    String::new(),
                ),
            },
            cond(
                CONDITION_IPS_TOTAL,
                ConditionStatus::Unknown,
                REASON_NO_REASON,
                total.to_string(),
            ),
            cond(
                CONDITION_IPS_AVAILABLE,
                ConditionStatus::Unknown,
                REASON_NO_REASON,
                available.to_string(),
            ),
            cond(
                CONDITION_IPS_USED,
                ConditionStatus::Unknown,
                REASON_NO_REASON,
                used.to_string(),
            ),
        ]
    }

    /// Computes the wanted status of everything touched and reports what differs from what
    /// the objects show.
    fn finish(&mut self, touched: BTreeSet<SvcId>) -> Changes {
        let mut changes = Changes::default();
        for id in touched {
            if self.services.get(id).is_none_or(Option::is_none) {
                continue;
            }
            let desired = self.desired_of(id);
            let e = self.entry_mut(id);
            if !e.baseline.shows(&desired) {
                e.baseline = Observed::after(&desired);
                changes.services.push(ServiceChange {
                    key: e.rank.1.clone(),
                    status: desired.clone(),
                });
            }
            e.desired = desired;
        }
        changes.services.sort_by(|a, b| a.key.cmp(&b.key));
        for idx in std::mem::take(&mut self.dirty_pools) {
            let conditions = self.pool_conditions_of(idx);
            let name = self.table.pools[idx].name.clone();
            let Some(entry) = self.pools.get_mut(&name) else {
                continue;
            };
            let shown = conditions.iter().all(|c| entry.baseline.contains(c));
            if !shown {
                entry.baseline = conditions.clone();
                changes.pools.push(PoolChange {
                    name,
                    conditions: conditions.clone(),
                });
            }
            entry.desired = conditions;
        }
        changes.pools.sort_by(|a, b| a.name.cmp(&b.name));
        changes
    }
}

#[cfg(test)]
impl LbIpam {
    /// Internal consistency: usage counters, free sets and holders agree.
    pub(crate) fn check_invariants(&self) {
        let mut used = vec![0u128; self.table.ranges.len()];
        for (ip, h) in &self.ips {
            if !h.is_occupied() {
                continue;
            }
            for r in self.table.ranges_of(*ip) {
                let range = &self.table.ranges[r];
                if !range.is_reserved(bits(*ip)) {
                    used[r] += 1;
                    if range.state == RangeState::Active {
                        assert!(!range.free.contains(bits(*ip)), "{ip} held but free");
                    }
                }
            }
            for id in h.all() {
                let e = self.entry(id);
                assert!(
                    e.kept.contains(ip) || e.granted.contains(ip),
                    "{ip} holder list stale"
                );
            }
        }
        for (r, range) in self.table.ranges.iter().enumerate() {
            assert_eq!(range.used, used[r], "usage of range {}", range.label());
        }
        for e in self.services.iter().flatten() {
            for ip in e.kept.iter().chain(e.granted.iter()) {
                assert!(self.is_occupied(*ip), "{ip} of {} not occupied", e.rank.1);
            }
        }
    }
}
