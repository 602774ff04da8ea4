//! Services → the load-balancing map entries a node needs, and the difference to what is pinned:
//! pure functions, so the agent writes only what changed and a resync that changes nothing writes
//! nothing. Also the Rust twins of the datapath's hashes (tests and tools predict its choices) and the
//! `bpf lb list` rendering in Cilium's shape.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::lb_maglev::{ALLOWED_TABLE_SIZES, MaglevParams, lookup_table};
use crate::lb_maps::{
    Lb4AffinityEntry, Lb4AffinityKey, Lb4Backend, Lb4CtEntry, Lb4Key, Lb4ReverseNat, Lb4Service,
    Lb4Tuple, be16, be32, ip_of, port_of,
};
use crate::maps::c;

/// L4 protocol of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// `loadBalancer.mode` (or the service's `service.cilium.io/forwarding-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbMode {
    #[default]
    Snat,
    Dsr,
    /// DSR for TCP, SNAT for UDP.
    Hybrid,
}

/// `loadBalancer.algorithm` (or `service.cilium.io/lb-algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbAlgorithm {
    #[default]
    Random,
    Maglev,
}

/// `serviceNoBackendResponse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoBackendResponse {
    Drop,
    #[default]
    Reject,
}

/// Where a service is reached: VIP (LoadBalancer / externalIP, or the node address for NodePort),
/// port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

/// One backend of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Runs on this node.
    pub local: bool,
    /// A hostNetwork pod (cannot take DSR).
    pub host_network: bool,
}

/// A backend's identity across services: what a backend id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

impl BackendKey {
    /// `addr:port/PROTO`, also the identity maglev hashes.
    pub fn label(&self) -> String {
        format!("{}:{}/{}", self.addr, self.port, self.proto.name())
    }
}

/// A service as the node must load-balance it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service id = rev-NAT index; non-zero and unique per frontend.
    pub id: u32,
    pub frontend: Frontend,
    pub backends: Vec<Backend>,
    pub mode: LbMode,
    pub algorithm: LbAlgorithm,
    /// externalTrafficPolicy: Local — external traffic only goes to backends on this node.
    pub external_traffic_local: bool,
    /// sessionAffinity: ClientIP with this timeout (seconds).
    pub affinity_timeout: Option<u32>,
    pub no_backend: NoBackendResponse,
    /// Backends that take no new flow but keep their established ones: terminating endpoints
    /// while an active backend is left (Cilium's `terminating` state). Their entries are written
    /// (flagged draining unless another service gives them slots); they get no slot.
    pub draining: Vec<Backend>,
}

/// Everything the load-balancing maps hold for a node's services (conntrack aside).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbEntries {
    pub services: BTreeMap<Lb4Key, Lb4Service>,
    pub backends: BTreeMap<u32, Lb4Backend>,
    pub rev_nat: BTreeMap<u32, Lb4ReverseNat>,
    /// rev_nat_index → maglev table of backend ids.
    pub maglev: BTreeMap<u32, Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LbError {
    #[error("service id 0 is reserved (frontend {0:?})")]
    ZeroId(Frontend),
    #[error("service id {0} used by two frontends")]
    DuplicateId(u32),
    #[error("frontend {0:?} declared twice")]
    DuplicateFrontend(Frontend),
    #[error("service {id} has {count} backends, more than a slot index holds")]
    TooManyBackends { id: u32, count: usize },
    #[error("no backend id assigned to {0:?}")]
    MissingBackendId(BackendKey),
    #[error("maglev table size {0} is not one of {ALLOWED_TABLE_SIZES:?}")]
    MaglevTableSize(u32),
}

/// Every backend the services name (in slots or draining), by identity.
pub fn wanted_backends(services: &[ServiceSpec]) -> BTreeSet<BackendKey> {
    services
        .iter()
        .flat_map(|s| {
            s.backends.iter().chain(&s.draining).map(|b| BackendKey {
                addr: b.addr,
                port: b.port,
                proto: s.frontend.proto,
            })
        })
        .collect()
}

/// Backend ids for every backend the services name: ids already in `current` are kept (so slots
/// and conntrack entries stay valid), new backends get the lowest free ids (from 1), and backends
/// no service names any more are dropped.
pub fn assign_backend_ids(
    services: &[ServiceSpec],
    current: &BTreeMap<BackendKey, u32>,
) -> BTreeMap<BackendKey, u32> {
    assign_backend_ids_retaining(services, current, &BTreeSet::new())
}

/// [`assign_backend_ids`], with `retained` ids (removed backends kept for their established flows,
/// see [`BackendRetention`]) never handed to another backend: a conntrack entry naming such an id
/// must keep reaching the backend it was made for.
pub fn assign_backend_ids_retaining(
    services: &[ServiceSpec],
    current: &BTreeMap<BackendKey, u32>,
    retained: &BTreeSet<u32>,
) -> BTreeMap<BackendKey, u32> {
    let wanted = wanted_backends(services);
    let mut out: BTreeMap<BackendKey, u32> = current
        .iter()
        .filter(|(k, _)| wanted.contains(k))
        .map(|(k, v)| (*k, *v))
        .collect();
    let used: BTreeSet<u32> = out.values().chain(retained).copied().collect();
    let mut free = (1u32..).filter(|i| !used.contains(i));
    for k in wanted {
        out.entry(k)
            .or_insert_with(|| free.next().expect("u32 ids"));
    }
    out
}

fn service_flags(s: &ServiceSpec) -> u16 {
    let mut f = 0u32;
    if s.external_traffic_local {
        f |= c::LB_SVC_F_ETP_LOCAL;
    }
    if s.affinity_timeout.is_some() {
        f |= c::LB_SVC_F_AFFINITY;
    }
    if s.no_backend == NoBackendResponse::Reject {
        f |= c::LB_SVC_F_REJECT;
    }
    f as u16
}

fn mode_value(m: LbMode) -> u8 {
    (match m {
        LbMode::Snat => c::LB_MODE_SNAT,
        LbMode::Dsr => c::LB_MODE_DSR,
        LbMode::Hybrid => c::LB_MODE_HYBRID,
    }) as u8
}

fn algorithm_value(a: LbAlgorithm) -> u8 {
    (match a {
        LbAlgorithm::Random => c::LB_ALG_RANDOM,
        LbAlgorithm::Maglev => c::LB_ALG_MAGLEV,
    }) as u8
}

/// The frontend key of a service's slot, in the external scope (what node devices look up).
pub fn frontend_key(f: &Frontend, slot: u16) -> Lb4Key {
    Lb4Key {
        address: be32(f.addr),
        dport: be16(f.port),
        backend_slot: slot,
        proto: f.proto.number(),
        scope: c::LB_SCOPE_EXT as u8,
        pad: [0; 2],
    }
}

/// The entries a node's maps must hold for `services`. Slots list the eligible backends sorted by
/// address and port, so a backend set that did not change yields the same slots.
pub fn desired_entries(
    services: &[ServiceSpec],
    ids: &BTreeMap<BackendKey, u32>,
    maglev: MaglevParams,
) -> Result<LbEntries, LbError> {
    let mut out = LbEntries::default();
    let mut seen_ids = BTreeSet::new();
    let mut seen_frontends = BTreeSet::new();
    // Backend ids with a slot in some service; every other backend entry is draining.
    let mut slotted = BTreeSet::new();
    for s in services {
        if s.id == 0 {
            return Err(LbError::ZeroId(s.frontend));
        }
        if !seen_ids.insert(s.id) {
            return Err(LbError::DuplicateId(s.id));
        }
        if !seen_frontends.insert(s.frontend) {
            return Err(LbError::DuplicateFrontend(s.frontend));
        }
        // External traffic with externalTrafficPolicy Local must keep the client address and stay
        // on this node: only local backends are eligible.
        let mut eligible: Vec<&Backend> = s
            .backends
            .iter()
            .filter(|b| !s.external_traffic_local || b.local)
            .collect();
        eligible.sort_by_key(|b| (b.addr, b.port));
        eligible.dedup_by_key(|b| (b.addr, b.port));
        if eligible.len() > usize::from(u16::MAX - 1) {
            return Err(LbError::TooManyBackends {
                id: s.id,
                count: eligible.len(),
            });
        }
        let mut slot_ids = Vec::with_capacity(eligible.len());
        for b in &eligible {
            let (key, id) = backend_entry(&mut out, ids, s, b)?;
            slot_ids.push((key, id));
            slotted.insert(id);
        }
        // Draining backends: an entry for their established flows, no slot. One that is also
        // eligible (listed twice, active and terminating) is active.
        for b in s
            .draining
            .iter()
            .filter(|b| !s.external_traffic_local || b.local)
        {
            backend_entry(&mut out, ids, s, b)?;
        }
        out.services.insert(
            frontend_key(&s.frontend, 0),
            Lb4Service {
                backend_id: 0,
                count: slot_ids.len() as u16,
                rev_nat_index: s.id,
                mode: mode_value(s.mode),
                algorithm: algorithm_value(s.algorithm),
                flags: service_flags(s),
                pad: 0,
                affinity_timeout: s.affinity_timeout.unwrap_or(0),
            },
        );
        for (i, (_, id)) in slot_ids.iter().enumerate() {
            out.services.insert(
                frontend_key(&s.frontend, i as u16 + 1),
                Lb4Service {
                    backend_id: *id,
                    rev_nat_index: s.id,
                    ..Default::default()
                },
            );
        }
        out.rev_nat.insert(
            s.id,
            Lb4ReverseNat {
                address: be32(s.frontend.addr),
                port: be16(s.frontend.port),
                pad: 0,
            },
        );
        if s.algorithm == LbAlgorithm::Maglev && !slot_ids.is_empty() {
            if !ALLOWED_TABLE_SIZES.contains(&maglev.table_size) {
                return Err(LbError::MaglevTableSize(maglev.table_size));
            }
            let labels: Vec<String> = slot_ids.iter().map(|(k, _)| k.label()).collect();
            let table = lookup_table(&labels, maglev.table_size, maglev.seed)
                .into_iter()
                .map(|i| slot_ids[i].1)
                .collect();
            out.maglev.insert(s.id, table);
        }
    }
    for (id, b) in out.backends.iter_mut() {
        if !slotted.contains(id) {
            b.flags |= c::LB_BE_F_DRAINING as u8;
        }
    }
    Ok(out)
}

/// Writes the backend entry of `b` (a backend of `s`) into `out`; its key and id.
fn backend_entry(
    out: &mut LbEntries,
    ids: &BTreeMap<BackendKey, u32>,
    s: &ServiceSpec,
    b: &Backend,
) -> Result<(BackendKey, u32), LbError> {
    let key = BackendKey {
        addr: b.addr,
        port: b.port,
        proto: s.frontend.proto,
    };
    let id = *ids.get(&key).ok_or(LbError::MissingBackendId(key))?;
    let mut flags = 0u32;
    if b.local {
        flags |= c::LB_BE_F_LOCAL;
    }
    if b.host_network {
        flags |= c::LB_BE_F_HOST_NETWORK;
    }
    out.backends.insert(
        id,
        Lb4Backend {
            address: be32(b.addr),
            port: be16(b.port),
            proto: s.frontend.proto.number(),
            flags: flags as u8,
        },
    );
    Ok((key, id))
}

/// Removed backends kept for their established flows.
///
/// Why: a conntrack entry names its backend by id, and the datapath keeps a flow on that backend
/// only while the id's entry exists (`lb4_backend_get`); were the entry deleted when the backend
/// left its Service, every established flow to it would be sent to another backend mid-stream and
/// reset. Cilium's terminating state covers the graceful part of this (the endpoint still listed,
/// terminating); a pod deleted outright, or scaled away, disappears from the EndpointSlice at once.
///
/// The design: a backend no service names any more (an orphan) stays in the maps, flagged
/// [`c::LB_BE_F_DRAINING`] (no slot, so no new flow; session affinity ignores it), and its id is
/// never handed to another backend (see [`assign_backend_ids_retaining`]). It is released only when
/// (a) it has been an orphan for at least [`BackendRetention::GRACE_NS`] — so that no packet that
/// saw it in a slot or affinity entry before the removal can still be writing a conntrack entry
/// for it — and (b) a scan of the conntrack map found no live (unexpired) entry naming it. An
/// entry found expired stays expired (the datapath replaces it on its next packet, before looking
/// at its backend), and no new entry can name an orphan past the grace, so a release after such a
/// scan never strands a flow. The orphan's key coming back (the same pod address and port listed
/// again) simply makes it a backend again, with the same id.
///
/// State: when each orphan was first seen. It is not persisted: after an agent restart the orphans
/// read back from the pins start a new grace, which only delays their release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendRetention {
    since_ns: BTreeMap<u32, u64>,
}

impl BackendRetention {
    /// How long an orphan is kept at least (monotonic ns), whatever conntrack says.
    pub const GRACE_NS: u64 = 2_000_000_000;

    /// Records the orphans of this pass: `current` backends whose identity no service names
    /// (`wanted`); forgets ids that are no orphan any more. Returns the orphans, by id.
    pub fn note_orphans(
        &mut self,
        current: &BTreeMap<u32, Lb4Backend>,
        wanted: &BTreeSet<BackendKey>,
        now_ns: u64,
    ) -> BTreeMap<u32, Lb4Backend> {
        let orphans: BTreeMap<u32, Lb4Backend> = current
            .iter()
            .filter(|(_, b)| backend_key_of(b).is_none_or(|k| !wanted.contains(&k)))
            .map(|(id, b)| (*id, *b))
            .collect();
        self.since_ns.retain(|id, _| orphans.contains_key(id));
        for id in orphans.keys() {
            self.since_ns.entry(*id).or_insert(now_ns);
        }
        orphans
    }

    /// Whether some orphan is past its grace: only then is a conntrack scan worth its cost.
    pub fn release_due(&self, now_ns: u64) -> bool {
        self.since_ns
            .values()
            .any(|t| now_ns.saturating_sub(*t) >= Self::GRACE_NS)
    }

    /// The orphans to keep: all of them without a conntrack scan (`live_refs` None); with one, those
    /// still in their grace or named by a live conntrack entry. Kept entries carry the draining flag.
    pub fn kept(
        &self,
        orphans: &BTreeMap<u32, Lb4Backend>,
        now_ns: u64,
        live_refs: Option<&BTreeSet<u32>>,
    ) -> BTreeMap<u32, Lb4Backend> {
        orphans
            .iter()
            .filter(|(id, _)| {
                let Some(refs) = live_refs else {
                    return true;
                };
                let in_grace = self
                    .since_ns
                    .get(id)
                    .is_none_or(|t| now_ns.saturating_sub(*t) < Self::GRACE_NS);
                in_grace || refs.contains(id)
            })
            .map(|(id, b)| {
                (
                    *id,
                    Lb4Backend {
                        flags: b.flags | c::LB_BE_F_DRAINING as u8,
                        ..*b
                    },
                )
            })
            .collect()
    }

    /// Orphans currently tracked (for status and tests).
    pub fn len(&self) -> usize {
        self.since_ns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.since_ns.is_empty()
    }
}

fn backend_key_of(b: &Lb4Backend) -> Option<BackendKey> {
    Some(BackendKey {
        addr: ip_of(b.address),
        port: port_of(b.port),
        proto: Proto::from_number(b.proto)?,
    })
}

/// Backend ids named by conntrack entries still alive at `tick` (the datapath's conntrack clock,
/// [`crate::lb_maps::ct_tick`]), with the datapath's own expiry test.
pub fn live_ct_backends<'a>(
    entries: impl IntoIterator<Item = &'a Lb4CtEntry>,
    tick: u32,
) -> BTreeSet<u32> {
    entries
        .into_iter()
        .filter(|e| (tick.wrapping_sub(e.expires) as i32) <= 0)
        .map(|e| e.backend_id)
        .collect()
}

/// Session-affinity entries that would send a client's new flows to a backend its service no
/// longer gives new flows to (no slot in `want`), or of a service that is gone: the agent deletes
/// them after the slots changed, as Cilium's agent deletes the affinity matches of a removed
/// backend. (The datapath also ignores affinity to a draining backend; this covers a backend still
/// slotted in another service.)
pub fn stale_affinity<'a>(
    entries: impl IntoIterator<Item = (&'a Lb4AffinityKey, &'a Lb4AffinityEntry)>,
    want: &LbEntries,
) -> Vec<Lb4AffinityKey> {
    let mut slots: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for (k, v) in &want.services {
        if k.backend_slot != 0 {
            slots
                .entry(v.rev_nat_index)
                .or_default()
                .insert(v.backend_id);
        }
    }
    entries
        .into_iter()
        .filter(|(k, v)| {
            slots
                .get(&k.rev_nat_index)
                .is_none_or(|ids| !ids.contains(&v.backend_id))
        })
        .map(|(k, _)| *k)
        .collect()
}

/// What to write to one map: entries to insert or overwrite, and keys to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    pub upserts: Vec<(K, V)>,
    pub deletes: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        MapDiff {
            upserts: Vec::new(),
            deletes: Vec::new(),
        }
    }
}

impl<K, V> MapDiff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.deletes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

/// The writes that turn `current` into `desired`: changed or new entries, and vanished keys.
pub fn map_diff<K: Ord + Clone, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    current: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    MapDiff {
        upserts: desired
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        deletes: current
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect(),
    }
}

/// What `cilia_lb_dev` should hold for the load balancer's node devices (ifindex, MAC): every device
/// with an ifindex the array covers and a MAC (not all zero). Frames XDP sees on the others are
/// not checked for their destination MAC.
pub fn wanted_dev_macs(
    devices: impl IntoIterator<Item = (u32, [u8; 6])>,
) -> BTreeMap<u32, [u8; 6]> {
    devices
        .into_iter()
        .filter(|(idx, mac)| *idx < crate::lb_maps::LB_DEV_SLOTS && *mac != [0; 6])
        .collect()
}

/// What `cilia_lb_standby` should hold: the VIPs (network order) of the node's standby L2 entries,
/// as many as the map takes (lowest addresses first; the rest are served by nobody when flooded,
/// as before standbys existed).
pub fn wanted_standby_vips<'a>(
    standby: impl IntoIterator<Item = &'a Ipv4Addr>,
) -> BTreeMap<u32, u32> {
    let mut v: Vec<Ipv4Addr> = standby.into_iter().copied().collect();
    v.sort();
    v.dedup();
    v.into_iter()
        .take(crate::lb_maps::LB_STANDBY_MAX as usize)
        .map(|a| (crate::lb_maps::be32(a), 1))
        .collect()
}

/// The writes to every load-balancing map. Applied in an order that never lets the datapath see a
/// slot without its backend, or a service count larger than its slots: backends, rev-NAT and maglev
/// upserts first, then slot upserts before service (slot 0) upserts; deletes the other way round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbDiff {
    pub backends: MapDiff<u32, Lb4Backend>,
    pub rev_nat: MapDiff<u32, Lb4ReverseNat>,
    pub maglev: MapDiff<u32, Vec<u32>>,
    pub services: MapDiff<Lb4Key, Lb4Service>,
}

impl LbDiff {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of map writes (a maglev table counts once: it is swapped as a whole).
    pub fn len(&self) -> usize {
        self.backends.len() + self.rev_nat.len() + self.maglev.len() + self.services.len()
    }

    /// Service upserts in write order: backend slots first, then the services that count them.
    pub fn service_upserts_ordered(&self) -> Vec<(Lb4Key, Lb4Service)> {
        let mut v = self.services.upserts.clone();
        v.sort_by_key(|(k, _)| (k.backend_slot == 0, *k));
        v
    }

    /// Service deletes in write order: services first (no new lookups), then their slots.
    pub fn service_deletes_ordered(&self) -> Vec<Lb4Key> {
        let mut v = self.services.deletes.clone();
        v.sort_by_key(|k| (k.backend_slot != 0, *k));
        v
    }
}

pub fn lb_diff(desired: &LbEntries, current: &LbEntries) -> LbDiff {
    LbDiff {
        backends: map_diff(&desired.backends, &current.backends),
        rev_nat: map_diff(&desired.rev_nat, &current.rev_nat),
        maglev: map_diff(&desired.maglev, &current.maglev),
        services: map_diff(&desired.services, &current.services),
    }
}

/// murmur3's finaliser, as `lb_mix32` in lib/lb.h.
pub fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The datapath's per-flow hash (`lb4_flow_hash`), over the tuple as on the wire.
pub fn flow_hash(t: &Lb4Tuple, seed: u32) -> u32 {
    let mut h = mix32(seed ^ t.saddr);
    h = mix32(h ^ t.daddr);
    h = mix32(h ^ ((u32::from(t.sport) << 16) | u32::from(t.dport)));
    mix32(h ^ u32::from(t.proto))
}

/// The slot (1-based) a new flow with `hash` takes among `count` slots (random algorithm).
pub fn slot_for(hash: u32, count: u16) -> u16 {
    (hash % u32::from(count)) as u16 + 1
}

/// The `attempt`-th SNAT port the datapath tries for a flow with `hash` (`lb4_snat_alloc`).
pub fn snat_port_candidate(hash: u32, attempt: u32, min: u16, max: u16) -> u16 {
    let range = u32::from(max) - u32::from(min) + 1;
    min + (mix32(hash.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))) % range) as u16
}

fn flag_words(s: &Lb4Service) -> Vec<&'static str> {
    let mut w = vec![match u32::from(s.mode) {
        m if m == c::LB_MODE_DSR => "DSR",
        m if m == c::LB_MODE_HYBRID => "Hybrid",
        _ => "SNAT",
    }];
    if u32::from(s.algorithm) == c::LB_ALG_MAGLEV {
        w.push("Maglev");
    }
    let f = u32::from(s.flags);
    if f & c::LB_SVC_F_ETP_LOCAL != 0 {
        w.push("Local");
    }
    if f & c::LB_SVC_F_AFFINITY != 0 {
        w.push("sessionAffinity");
    }
    if f & c::LB_SVC_F_REJECT != 0 {
        w.push("reject");
    }
    w
}

fn proto_name(n: u8) -> String {
    Proto::from_number(n)
        .map(|p| p.name().to_string())
        .unwrap_or_else(|| n.to_string())
}

/// The rows of `cilium-dbg bpf lb list`, sorted: (`vip:port/PROTO (slot)`, backend cell), slot 0 as
/// the service's master entry `0.0.0.0:0 (revnat) (0) [flags]`.
pub fn lb_list_rows(e: &LbEntries) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut keys: Vec<&Lb4Key> = e.services.keys().collect();
    keys.sort_by_key(|k| {
        (
            ip_of(k.address),
            port_of(k.dport),
            k.proto,
            k.scope,
            k.backend_slot,
        )
    });
    for k in keys {
        let v = &e.services[k];
        let left = format!(
            "{}:{}/{} ({})",
            ip_of(k.address),
            port_of(k.dport),
            proto_name(k.proto),
            k.backend_slot
        );
        let right = if k.backend_slot == 0 {
            format!(
                "0.0.0.0:0 ({}) (0) [{}]",
                v.rev_nat_index,
                flag_words(v).join(", ")
            )
        } else {
            match e.backends.get(&v.backend_id) {
                Some(b) => format!(
                    "{}:{}/{} ({}) ({})",
                    ip_of(b.address),
                    port_of(b.port),
                    proto_name(b.proto),
                    v.rev_nat_index,
                    k.backend_slot
                ),
                None => format!("backend {} not found", v.backend_id),
            }
        };
        rows.push((left, right));
    }
    rows
}

/// Renders the entries as `cilium-dbg bpf lb list` does: one row per slot, slot 0 as the service's
/// master entry `0.0.0.0:0 (revnat) (0) [flags]`.
pub fn format_lb_list(e: &LbEntries) -> String {
    let mut rows = vec![(
        "SERVICE ADDRESS".to_string(),
        "BACKEND ADDRESS (REVNAT_ID) (SLOT)".to_string(),
    )];
    rows.extend(lb_list_rows(e));
    // Go's tabwriter as cilium-dbg sets it up: cells padded to the widest plus 3 spaces.
    let w = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 3;
    let mut out = String::new();
    for (l, r) in rows {
        let _ = writeln!(out, "{l:<w$}{r}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_macs_cover_devices_the_array_holds() {
        let m = [2, 0, 0, 0, 0, 7];
        let want = wanted_dev_macs([
            (3, m),
            (4, [0; 6]),
            (crate::lb_maps::LB_DEV_SLOTS - 1, m),
            (crate::lb_maps::LB_DEV_SLOTS, m),
        ]);
        assert_eq!(
            want.into_iter().collect::<Vec<_>>(),
            vec![(3, m), (crate::lb_maps::LB_DEV_SLOTS - 1, m)],
            "no MAC (a tunnel device) or past the array: not checked"
        );
        // A device renumbered (recreated): the old slot is cleared, the new one written.
        let current = wanted_dev_macs([(3, m)]);
        let d = map_diff(&wanted_dev_macs([(9, m)]), &current);
        assert_eq!((d.upserts, d.deletes), (vec![(9, m)], vec![3]));
        assert!(
            map_diff(&current, &current).is_empty(),
            "a restart writes nothing"
        );
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    fn be(last: u8, port: u16) -> Backend {
        Backend {
            addr: Ipv4Addr::new(10, 244, 1, last),
            port,
            local: false,
            host_network: false,
        }
    }

    fn svc(id: u32, port: u16, backends: Vec<Backend>) -> ServiceSpec {
        ServiceSpec {
            id,
            frontend: Frontend {
                addr: VIP,
                port,
                proto: Proto::Tcp,
            },
            backends,
            mode: LbMode::Snat,
            algorithm: LbAlgorithm::Random,
            external_traffic_local: false,
            affinity_timeout: None,
            no_backend: NoBackendResponse::Drop,
            draining: Vec::new(),
        }
    }

    fn build(services: &[ServiceSpec]) -> LbEntries {
        let ids = assign_backend_ids(services, &BTreeMap::new());
        desired_entries(services, &ids, MaglevParams::default()).unwrap()
    }

    // A service becomes a master entry counting its slots, one slot per backend in address order,
    // the backends by id, and its reverse-NAT entry.
    #[test]
    fn service_becomes_master_slots_backends_and_revnat() {
        let e = build(&[svc(7, 80, vec![be(9, 8080), be(5, 8080)])]);
        let master = e.services[&frontend_key(&svc(7, 80, vec![]).frontend, 0)];
        assert_eq!(
            (master.count, master.rev_nat_index, master.backend_id),
            (2, 7, 0)
        );
        assert_eq!(u32::from(master.mode), c::LB_MODE_SNAT);
        let f = svc(7, 80, vec![]).frontend;
        let s1 = e.services[&frontend_key(&f, 1)];
        let s2 = e.services[&frontend_key(&f, 2)];
        assert_eq!(
            ip_of(e.backends[&s1.backend_id].address),
            Ipv4Addr::new(10, 244, 1, 5)
        );
        assert_eq!(
            ip_of(e.backends[&s2.backend_id].address),
            Ipv4Addr::new(10, 244, 1, 9)
        );
        assert_eq!(port_of(e.backends[&s1.backend_id].port), 8080);
        assert_eq!(e.services.len(), 3);
        assert_eq!(
            e.rev_nat[&7],
            Lb4ReverseNat {
                address: be32(VIP),
                port: be16(80),
                pad: 0
            }
        );
        assert!(e.maglev.is_empty());
    }

    // Mode, algorithm and flags reach the master entry; backend flags reach the backend.
    #[test]
    fn flags_reach_the_entries() {
        let mut s = svc(
            1,
            443,
            vec![
                Backend {
                    local: true,
                    ..be(1, 443)
                },
                Backend {
                    host_network: true,
                    ..be(2, 443)
                },
            ],
        );
        s.mode = LbMode::Hybrid;
        s.algorithm = LbAlgorithm::Maglev;
        s.affinity_timeout = Some(600);
        s.no_backend = NoBackendResponse::Reject;
        let e = build(&[s.clone()]);
        let m = e.services[&frontend_key(&s.frontend, 0)];
        assert_eq!(u32::from(m.mode), c::LB_MODE_HYBRID);
        assert_eq!(u32::from(m.algorithm), c::LB_ALG_MAGLEV);
        assert_eq!(
            u32::from(m.flags),
            c::LB_SVC_F_AFFINITY | c::LB_SVC_F_REJECT
        );
        assert_eq!(m.affinity_timeout, 600);
        let flags: Vec<u8> = e.backends.values().map(|b| b.flags).collect();
        assert_eq!(
            flags,
            vec![c::LB_BE_F_LOCAL as u8, c::LB_BE_F_HOST_NETWORK as u8]
        );
        let t = &e.maglev[&1];
        assert_eq!(t.len(), crate::lb_maglev::DEFAULT_TABLE_SIZE as usize);
        assert!(t.iter().all(|id| e.backends.contains_key(id)));
    }

    // externalTrafficPolicy Local: only this node's backends get slots; none left means count 0.
    #[test]
    fn external_traffic_local_keeps_only_local_backends() {
        let mut s = svc(
            3,
            80,
            vec![
                Backend {
                    local: true,
                    ..be(1, 80)
                },
                be(2, 80),
            ],
        );
        s.external_traffic_local = true;
        let e = build(&[s.clone()]);
        let m = e.services[&frontend_key(&s.frontend, 0)];
        assert_eq!(m.count, 1);
        assert_eq!(
            u32::from(m.flags) & c::LB_SVC_F_ETP_LOCAL,
            c::LB_SVC_F_ETP_LOCAL
        );
        assert_eq!(e.backends.len(), 1);
        s.backends = vec![be(2, 80)];
        let e = build(&[s.clone()]);
        assert_eq!(e.services[&frontend_key(&s.frontend, 0)].count, 0);
        assert_eq!(e.services.len(), 1);
    }

    // Invalid inputs are refused by name, not written half-way.
    #[test]
    fn rejects_bad_specs() {
        let ids = BTreeMap::new();
        let p = MaglevParams::default();
        assert!(matches!(
            desired_entries(&[svc(0, 80, vec![])], &ids, p),
            Err(LbError::ZeroId(_))
        ));
        assert_eq!(
            desired_entries(&[svc(1, 80, vec![]), svc(1, 81, vec![])], &ids, p),
            Err(LbError::DuplicateId(1))
        );
        assert!(matches!(
            desired_entries(&[svc(1, 80, vec![]), svc(2, 80, vec![])], &ids, p),
            Err(LbError::DuplicateFrontend(_))
        ));
        assert!(matches!(
            desired_entries(&[svc(1, 80, vec![be(1, 80)])], &ids, p),
            Err(LbError::MissingBackendId(_))
        ));
        let mut m = svc(1, 80, vec![be(1, 80)]);
        m.algorithm = LbAlgorithm::Maglev;
        let ids = assign_backend_ids(std::slice::from_ref(&m), &BTreeMap::new());
        let bad = MaglevParams {
            table_size: 1000,
            seed: 0,
        };
        assert_eq!(
            desired_entries(&[m], &ids, bad),
            Err(LbError::MaglevTableSize(1000))
        );
    }

    // Backend ids survive changes of the set; freed ids are reused lowest first; shared backends
    // (same address, port and protocol) share one id.
    #[test]
    fn backend_ids_are_stable() {
        let a = [
            svc(1, 80, vec![be(1, 80), be(2, 80)]),
            svc(2, 81, vec![be(2, 80)]),
        ];
        let ids = assign_backend_ids(&a, &BTreeMap::new());
        assert_eq!(ids.len(), 2);
        assert_eq!(ids.values().copied().collect::<Vec<_>>(), vec![1, 2]);
        let b = [svc(1, 80, vec![be(2, 80), be(3, 80)])];
        let ids2 = assign_backend_ids(&b, &ids);
        let key = |last| BackendKey {
            addr: Ipv4Addr::new(10, 244, 1, last),
            port: 80,
            proto: Proto::Tcp,
        };
        assert_eq!(ids2[&key(2)], ids[&key(2)]);
        assert_eq!(ids2[&key(3)], 1, "the freed id 1 is reused");
        assert!(!ids2.contains_key(&key(1)));
    }

    // Nothing changed → nothing to write; the same services in another order → nothing to write.
    #[test]
    fn unchanged_services_diff_to_nothing() {
        let a = [
            svc(1, 80, vec![be(1, 80), be(2, 80)]),
            svc(2, 81, vec![be(3, 81)]),
        ];
        let e = build(&a);
        assert!(lb_diff(&e, &e).is_empty());
        let mut rev = a.to_vec();
        rev.reverse();
        rev[1].backends.reverse();
        let ids = assign_backend_ids(&a, &BTreeMap::new());
        let e2 = desired_entries(&rev, &ids, MaglevParams::default()).unwrap();
        assert!(lb_diff(&e2, &e).is_empty());
    }

    // Adding a backend writes its backend entry, one new slot and the recounted master only;
    // removing the service deletes every key it had and nothing else.
    #[test]
    fn diff_writes_only_differences() {
        let before = [svc(1, 80, vec![be(1, 80)]), svc(2, 81, vec![be(3, 81)])];
        let after = [
            svc(1, 80, vec![be(1, 80), be(2, 80)]),
            svc(2, 81, vec![be(3, 81)]),
        ];
        let ids0 = assign_backend_ids(&before, &BTreeMap::new());
        let cur = desired_entries(&before, &ids0, MaglevParams::default()).unwrap();
        let ids1 = assign_backend_ids(&after, &ids0);
        let want = desired_entries(&after, &ids1, MaglevParams::default()).unwrap();
        let d = lb_diff(&want, &cur);
        assert_eq!(d.backends.upserts.len(), 1);
        assert_eq!(d.services.upserts.len(), 2, "{:?}", d.services.upserts);
        assert!(d.services.deletes.is_empty() && d.backends.deletes.is_empty());
        assert!(d.rev_nat.is_empty());
        let order = d.service_upserts_ordered();
        assert_eq!(
            order[0].0.backend_slot, 2,
            "the slot is written before the master counting it"
        );
        assert_eq!(order[1].0.backend_slot, 0);

        let gone = desired_entries(
            &after[1..],
            &assign_backend_ids(&after[1..], &ids1),
            MaglevParams::default(),
        )
        .unwrap();
        let d = lb_diff(&gone, &want);
        assert!(d.services.upserts.is_empty());
        assert_eq!(d.services.deletes.len(), 3);
        assert_eq!(
            d.service_deletes_ordered()[0].backend_slot,
            0,
            "the master goes first"
        );
        assert_eq!(d.backends.deletes.len(), 2);
        assert_eq!(d.rev_nat.deletes, vec![1]);
    }

    // A maglev table is rewritten only when its backend set changed.
    #[test]
    fn maglev_table_diffs_with_its_set() {
        let mut s = svc(4, 80, vec![be(1, 80), be(2, 80)]);
        s.algorithm = LbAlgorithm::Maglev;
        let p = MaglevParams {
            table_size: 251,
            seed: 9,
        };
        let ids = assign_backend_ids(std::slice::from_ref(&s), &BTreeMap::new());
        let a = desired_entries(std::slice::from_ref(&s), &ids, p).unwrap();
        assert!(lb_diff(&a, &a).maglev.is_empty());
        s.backends.push(be(3, 80));
        let ids = assign_backend_ids(std::slice::from_ref(&s), &ids);
        let b = desired_entries(std::slice::from_ref(&s), &ids, p).unwrap();
        let d = lb_diff(&b, &a);
        assert_eq!(d.maglev.upserts.len(), 1);
        assert_eq!(d.maglev.upserts[0].1.len(), 251);
    }

    // `bpf lb list` rows follow Cilium's shape.
    #[test]
    fn lb_list_has_ciliums_shape() {
        let mut s = svc(1, 443, vec![be(2, 6443)]);
        s.mode = LbMode::Dsr;
        let out = format_lb_list(&build(&[s]));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("SERVICE ADDRESS   "), "{out}");
        assert!(lines[0].ends_with("BACKEND ADDRESS (REVNAT_ID) (SLOT)"));
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "203.0.113.10:443/TCP",
                "(0)",
                "0.0.0.0:0",
                "(1)",
                "(0)",
                "[DSR]"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "203.0.113.10:443/TCP",
                "(1)",
                "10.244.1.2:6443/TCP",
                "(1)",
                "(1)"
            ]
        );
    }

    // Draining backends get an entry flagged draining and no slot; a backend slotted in another
    // service is not draining there (the entry is shared).
    #[test]
    fn draining_backends_get_entries_but_no_slots() {
        let mut a = svc(1, 80, vec![be(1, 80)]);
        a.draining = vec![be(2, 80), be(3, 80)];
        let b = svc(2, 81, vec![be(3, 80)]);
        let e = build(&[a.clone(), b]);
        let master = e.services[&frontend_key(&a.frontend, 0)];
        assert_eq!(master.count, 1, "only the active backend has a slot");
        let by_addr = |last: u8| {
            *e.backends
                .values()
                .find(|x| ip_of(x.address) == Ipv4Addr::new(10, 244, 1, last))
                .unwrap_or_else(|| panic!("no entry for .{last}: {:?}", e.backends))
        };
        let draining = |last| u32::from(by_addr(last).flags) & c::LB_BE_F_DRAINING != 0;
        assert!(!draining(1));
        assert!(draining(2), "terminating while others serve");
        assert!(!draining(3), "slotted by service 2");
        // A backend listed active and draining at once is active (slotted, not flagged).
        let mut c2 = svc(1, 80, vec![be(1, 80)]);
        c2.draining = vec![be(1, 80)];
        let e = build(&[c2]);
        assert_eq!(e.backends.len(), 1);
        assert_eq!(e.backends.values().next().unwrap().flags, 0);
    }

    fn entry(last: u8) -> Lb4Backend {
        Lb4Backend {
            address: be32(Ipv4Addr::new(10, 244, 1, last)),
            port: be16(80),
            proto: 6,
            flags: 0,
        }
    }

    fn key(last: u8) -> BackendKey {
        BackendKey {
            addr: Ipv4Addr::new(10, 244, 1, last),
            port: 80,
            proto: Proto::Tcp,
        }
    }

    // A removed backend is kept (draining) through its grace whatever conntrack says, then as long
    // as a live conntrack entry names it, and released after a scan finds none; without a scan it is
    // always kept. A backend named again stops being an orphan.
    #[test]
    fn removed_backends_are_kept_while_flows_may_use_them() {
        const S: u64 = 1_000_000_000;
        let grace = BackendRetention::GRACE_NS;
        let current: BTreeMap<u32, Lb4Backend> =
            [(1, entry(1)), (2, entry(2)), (3, entry(3))].into();
        let wanted: BTreeSet<BackendKey> = [key(1)].into();
        let none = BTreeSet::new();
        let refs_2: BTreeSet<u32> = [2].into();
        let mut r = BackendRetention::default();
        struct Step {
            what: &'static str,
            at: u64,
            refs: Option<&'static str>,
            due: bool,
            kept: Vec<u32>,
        }
        let steps = [
            Step {
                what: "just removed: kept, no scan due",
                at: 10 * S,
                refs: Some("none"),
                due: false,
                kept: vec![2, 3],
            },
            Step {
                what: "in grace, scanned: kept anyway",
                at: 10 * S + grace - 1,
                refs: Some("none"),
                due: false,
                kept: vec![2, 3],
            },
            Step {
                what: "past grace, not scanned: kept",
                at: 10 * S + grace,
                refs: None,
                due: true,
                kept: vec![2, 3],
            },
            Step {
                what: "past grace, 2 still named: 3 released",
                at: 10 * S + grace,
                refs: Some("2"),
                due: true,
                kept: vec![2],
            },
            Step {
                what: "no live flow left: released",
                at: 20 * S,
                refs: Some("none"),
                due: true,
                kept: vec![],
            },
        ];
        for st in steps {
            let orphans = r.note_orphans(&current, &wanted, st.at);
            assert_eq!(
                orphans.keys().copied().collect::<Vec<_>>(),
                vec![2, 3],
                "{}",
                st.what
            );
            assert_eq!(r.release_due(st.at), st.due, "{}", st.what);
            let refs = st.refs.map(|x| if x == "2" { &refs_2 } else { &none });
            let kept = r.kept(&orphans, st.at, refs);
            assert_eq!(
                kept.keys().copied().collect::<Vec<_>>(),
                st.kept,
                "{}",
                st.what
            );
            assert!(
                kept.values()
                    .all(|b| u32::from(b.flags) & c::LB_BE_F_DRAINING != 0),
                "{}: kept entries are draining",
                st.what
            );
        }
        // Backend 2 comes back: no orphan any more, its grace forgotten.
        let wanted: BTreeSet<BackendKey> = [key(1), key(2)].into();
        let orphans = r.note_orphans(&current, &wanted, 30 * S);
        assert_eq!(orphans.keys().copied().collect::<Vec<_>>(), vec![3]);
        assert_eq!(r.len(), 1);
        // Removed again later: a new grace starts.
        let wanted: BTreeSet<BackendKey> = [key(1)].into();
        r.note_orphans(&current, &wanted, 40 * S);
        let orphans = r.note_orphans(&current, &wanted, 40 * S + 1);
        let kept = r.kept(&orphans, 40 * S + 1, Some(&none));
        assert!(kept.contains_key(&2), "2 is in a new grace");
    }

    // Retained ids are never handed to a new backend; a retained backend named again keeps its id.
    #[test]
    fn retained_ids_are_reserved() {
        let current: BTreeMap<BackendKey, u32> = [(key(1), 1), (key(2), 2)].into();
        let s = [svc(1, 80, vec![be(1, 80), be(7, 80)])];
        let ids = assign_backend_ids_retaining(&s, &current, &[2].into());
        assert_eq!(ids[&key(1)], 1);
        assert_eq!(ids[&key(7)], 3, "2 is retained: the new backend takes 3");
        let ids = assign_backend_ids(&s, &current);
        assert_eq!(ids[&key(7)], 2, "without retention the freed id is reused");
        let s = [svc(1, 80, vec![be(1, 80), be(2, 80)])];
        let ids = assign_backend_ids_retaining(&s, &current, &[2].into());
        assert_eq!(ids[&key(2)], 2, "back in the service, same id");
    }

    // Live conntrack entries by the datapath's test: expiry not passed (wrapping tick clock).
    #[test]
    fn live_ct_backends_use_the_datapaths_expiry_test() {
        let e = |backend_id, expires| Lb4CtEntry {
            backend_id,
            expires,
            ..Default::default()
        };
        let rows = [
            ("expires later", 100, e(1, 101), true),
            ("expires this tick", 100, e(1, 100), true),
            ("expired", 100, e(1, 99), false),
            ("across the wrap, live", u32::MAX, e(1, 3), true),
            ("across the wrap, expired", 3, e(1, u32::MAX), false),
        ];
        for (what, tick, entry, live) in rows {
            assert_eq!(
                live_ct_backends([&entry], tick).contains(&1),
                live,
                "{what}"
            );
        }
    }

    // Affinity entries towards a backend without a slot in their service, or of a gone service,
    // are stale; others stay.
    #[test]
    fn stale_affinity_names_unslotted_backends() {
        let a = [svc(1, 80, vec![be(1, 80), be(2, 80)])];
        let ids = assign_backend_ids(&a, &BTreeMap::new());
        let want = desired_entries(&a, &ids, MaglevParams::default()).unwrap();
        let k = |client: u32, rev| Lb4AffinityKey {
            client_addr: client,
            rev_nat_index: rev,
        };
        let v = |id| Lb4AffinityEntry {
            backend_id: id,
            ..Default::default()
        };
        let entries: BTreeMap<Lb4AffinityKey, Lb4AffinityEntry> = [
            (k(1, 1), v(ids[&key(1)])),
            (k(2, 1), v(ids[&key(2)])),
            (k(3, 1), v(99)),
            (k(4, 2), v(ids[&key(1)])),
        ]
        .into();
        assert_eq!(stale_affinity(&entries, &want), vec![k(3, 1), k(4, 2)]);
    }

    // The SNAT candidates stay within the configured range.
    #[test]
    fn snat_candidates_stay_in_range() {
        for i in 0..1000u32 {
            let p = snat_port_candidate(mix32(i), i % 16, 40000, 40003);
            assert!((40000..=40003).contains(&p));
        }
    }
}
