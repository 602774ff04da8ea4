//! Network policy in the kernel (`ebpf/tc_policy.c`, `ebpf/lib/policy.h`): the `#[repr(C)]`
//! mirrors of its maps, the pure translation of compiled rules into map entries (port ranges into
//! port prefixes) with the difference to what is pinned, and the aya edge that loads, attaches and
//! writes them and reads the drop/audit events.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::bpf::{BpfError, ChainPosition, attach_tcx_pinned, pinned_link_ifaces};
use crate::maps::{assert_layout, c};

/// The policy object (`ebpf/tc_policy.c`).
pub static TC_POLICY_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_policy.o"));

/// The benchmark floor for TC programs (`ebpf/bench_tc.c`: `cil_bench_tc_empty`).
pub static BENCH_TC_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_tc.o"));

pub const IPCACHE_EXACT_MAP: &str = "cilia_ipcache4_exact";
pub const IPCACHE_MAP: &str = "cilia_ipcache_v4";
pub const POLICY_EXACT_MAP: &str = "cilia_policy4_exact";
pub const POLICY_MAP: &str = "cilia_policy_v4";
pub const POLICY_EP_MAP: &str = "cilia_policy_ep";
pub const POLICY_CT_MAP: &str = "cilia_policy_ct";
pub const POLICY_EVENTS_MAP: &str = "cilia_policy_events";
const LINKS_DIR: &str = "policylinks";

/// The programs and the hook each sits on.
pub const PROG_FROM_CONTAINER: &str = "cil_policy_from_container";
pub const PROG_TO_CONTAINER: &str = "cil_policy_to_container";
pub const PROG_HOST_INGRESS: &str = "cil_policy_host_ingress";
pub const PROG_HOST_EGRESS: &str = "cil_policy_host_egress";
const PROGS: [&str; 4] = [
    PROG_FROM_CONTAINER,
    PROG_TO_CONTAINER,
    PROG_HOST_INGRESS,
    PROG_HOST_EGRESS,
];

/// Identity 0 in a rule: any peer.
pub const ID_ANY: u32 = 0;
/// Reserved identities (Cilium's numbers).
pub const ID_HOST: u32 = 1;
pub const ID_WORLD: u32 = 2;
pub const ID_REMOTE_NODE: u32 = 6;
pub const ID_KUBE_APISERVER: u32 = 7;

/// Bits of a policy key before the port.
pub const KEY_FIXED_BITS: u32 = c::POLICY_KEY_FIXED_BITS;

/// `ipcache` value.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IpcacheValue {
    pub identity: u32,
}

/// The data part of a policy LPM key (after `prefixlen`), packed as in C.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKeyData {
    pub ep_id: u32,
    pub dir: u8,
    pub identity: u32,
    pub proto: u8,
    /// Network order.
    pub dport: u16,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyValue {
    pub rule: u32,
    pub verdict: u8,
    pub pad: [u8; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpConfig {
    pub ingress_enforced: u8,
    pub egress_enforced: u8,
    pub audit: u8,
    pub pad: u8,
}

/// A drop or audit event as the program reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyEventRaw {
    pub ts_ns: u64,
    pub ep_id: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub identity: u32,
    pub rule: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub verdict: u8,
    pub pad: u8,
}

// SAFETY: plain-old-data with every bit pattern valid; layouts checked against C below.
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for PolicyKeyData {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for EpConfig {}

const _: () = {
    assert!(size_of::<u32>() + size_of::<u32>() == c::SIZE_ipcache_key);
    assert!(size_of::<u32>() + size_of::<PolicyKeyData>() == c::SIZE_policy_key);
    assert!(c::OFF_policy_key_d == 4);
};
assert_layout!(IpcacheValue, c::SIZE_ipcache_value);
assert_layout!(
    PolicyKeyData,
    c::SIZE_policy_key_data,
    ep_id = c::OFF_policy_key_data_ep_id,
    dir = c::OFF_policy_key_data_dir,
    identity = c::OFF_policy_key_data_identity,
    proto = c::OFF_policy_key_data_proto,
    dport = c::OFF_policy_key_data_dport
);
assert_layout!(
    PolicyValue,
    c::SIZE_policy_value,
    rule = c::OFF_policy_value_rule,
    verdict = c::OFF_policy_value_verdict
);
assert_layout!(
    EpConfig,
    c::SIZE_policy_ep_config,
    ingress_enforced = c::OFF_policy_ep_config_ingress_enforced,
    egress_enforced = c::OFF_policy_ep_config_egress_enforced,
    audit = c::OFF_policy_ep_config_audit
);
assert_layout!(
    PolicyEventRaw,
    c::SIZE_policy_event,
    ep_id = c::OFF_policy_event_ep_id,
    saddr = c::OFF_policy_event_saddr,
    daddr = c::OFF_policy_event_daddr,
    identity = c::OFF_policy_event_identity,
    rule = c::OFF_policy_event_rule,
    sport = c::OFF_policy_event_sport,
    dport = c::OFF_policy_event_dport,
    proto = c::OFF_policy_event_proto,
    dir = c::OFF_policy_event_dir,
    verdict = c::OFF_policy_event_verdict
);

/// Direction seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A verdict a rule stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    fn code(self) -> u8 {
        match self {
            Verdict::Allow => c::POLICY_ALLOW as u8,
            Verdict::Deny => c::POLICY_DENY as u8,
        }
    }
}

/// What an event says happened to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventVerdict {
    /// Dropped by a deny rule.
    DeniedByRule,
    /// Dropped: no rule allowed it.
    DefaultDeny,
    /// Would have been dropped; audit mode let it through.
    Audit,
}

/// A port match: `port`'s top `bits` bits (`bits` = 16: exactly `port`; 0: every port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortPrefix {
    pub port: u16,
    pub bits: u8,
}

/// The smallest set of port prefixes covering `start..=end` exactly (at most 30 for any range).
pub fn port_range_prefixes(start: u16, end: u16) -> Vec<PortPrefix> {
    cilia_model::policy::range_prefixes(start, end)
        .into_iter()
        .map(|(port, bits)| PortPrefix { port, bits })
        .collect()
}

/// One compiled policy entry of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    pub ep_id: u32,
    pub dir: Direction,
    /// [`ID_ANY`] for any peer.
    pub identity: u32,
    /// IP protocol number; 0 for every protocol (the port is then ignored).
    pub proto: u8,
    pub port: PortPrefix,
}

impl PolicyEntry {
    /// The LPM key: fixed fields exact, then the port's prefix (none for every protocol).
    pub fn key(&self) -> LpmKey<PolicyKeyData> {
        let (prefix, proto, port) = if self.proto == 0 {
            (KEY_FIXED_BITS - 8, 0, 0)
        } else {
            let bits = self.port.bits.min(16) as u32;
            let mask = if bits == 0 {
                0
            } else {
                u16::MAX << (16 - bits)
            };
            (KEY_FIXED_BITS + bits, self.proto, self.port.port & mask)
        };
        LpmKey::new(
            prefix,
            PolicyKeyData {
                ep_id: self.ep_id,
                dir: self.dir as u8,
                identity: self.identity,
                proto,
                dport: port.to_be(),
            },
        )
    }
}

/// Everything the policy maps of a node hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyMaps {
    /// Prefix → identity.
    pub ipcache: BTreeMap<(Ipv4Addr, u8), u32>,
    /// Entry → (verdict, rule index).
    pub entries: BTreeMap<PolicyEntry, (Verdict, u32)>,
    /// Endpoint → (ingress enforced, egress enforced, audit).
    pub endpoints: BTreeMap<u32, (bool, bool, bool)>,
}

/// Comparable form of an LPM key (prefix, data).
type RawKey = (u32, PolicyKeyData);

fn raw(k: &LpmKey<PolicyKeyData>) -> RawKey {
    (k.prefix_len(), k.data())
}

/// The maps in their raw, comparable form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawPolicyMaps {
    /// /32 addresses (network-order bytes as u32) → identity.
    pub ipcache_exact: BTreeMap<u32, u32>,
    /// Wider prefixes.
    pub ipcache: BTreeMap<(u32, u32), u32>,
    /// Entries for one exact port of one protocol.
    pub exact: BTreeMap<PolicyKeyData, (u8, u32)>,
    /// Port prefixes and protocol-wide entries.
    pub entries: BTreeMap<RawKey, (u8, u32)>,
    pub endpoints: BTreeMap<u32, EpConfig>,
}

impl PolicyMaps {
    /// The raw entries. Two compiled entries that land on one key (a port range overlapping
    /// another's prefix exactly) keep the deny.
    pub fn to_raw(&self) -> RawPolicyMaps {
        let mut entries: BTreeMap<RawKey, (u8, u32)> = BTreeMap::new();
        for (e, (v, rule)) in &self.entries {
            let k = raw(&e.key());
            let val = (v.code(), *rule);
            entries
                .entry(k)
                .and_modify(|old| {
                    if val.0 == c::POLICY_DENY as u8 {
                        *old = val;
                    }
                })
                .or_insert(val);
        }
        let full = KEY_FIXED_BITS + 16;
        let (exact, entries): (BTreeMap<_, _>, BTreeMap<_, _>) =
            entries.into_iter().partition(|((len, _), _)| *len == full);
        let mut ipcache_exact = BTreeMap::new();
        let mut ipcache = BTreeMap::new();
        for ((a, len), id) in &self.ipcache {
            let addr = u32::from_ne_bytes(a.octets());
            if *len == 32 {
                ipcache_exact.insert(addr, *id);
            } else {
                ipcache.insert((*len as u32, addr), *id);
            }
        }
        RawPolicyMaps {
            ipcache_exact,
            ipcache,
            exact: exact.into_iter().map(|((_, d), v)| (d, v)).collect(),
            entries,
            endpoints: self
                .endpoints
                .iter()
                .map(|(ep, (i, e, a))| {
                    (
                        *ep,
                        EpConfig {
                            ingress_enforced: *i as u8,
                            egress_enforced: *e as u8,
                            audit: *a as u8,
                            pad: 0,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// Writes that turn `current` into `desired`, per map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub ipcache_exact_set: Vec<(u32, u32)>,
    pub ipcache_exact_del: Vec<u32>,
    pub exact_set: Vec<(PolicyKeyData, (u8, u32))>,
    pub exact_del: Vec<PolicyKeyData>,
    pub ipcache_set: Vec<((u32, u32), u32)>,
    pub ipcache_del: Vec<(u32, u32)>,
    pub entries_set: Vec<(RawKey, (u8, u32))>,
    pub entries_del: Vec<RawKey>,
    pub endpoints_set: Vec<(u32, EpConfig)>,
    pub endpoints_del: Vec<u32>,
}

impl PolicyDiff {
    pub fn len(&self) -> usize {
        self.ipcache_exact_set.len()
            + self.ipcache_exact_del.len()
            + self.exact_set.len()
            + self.exact_del.len()
            + self.ipcache_set.len()
            + self.ipcache_del.len()
            + self.entries_set.len()
            + self.entries_del.len()
            + self.endpoints_set.len()
            + self.endpoints_del.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn map_diff<K: Ord + Clone, V: PartialEq + Clone>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let set = want
        .iter()
        .filter(|(k, v)| have.get(k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let del = have
        .keys()
        .filter(|k| !want.contains_key(k))
        .cloned()
        .collect();
    (set, del)
}

pub fn policy_diff(desired: &RawPolicyMaps, current: &RawPolicyMaps) -> PolicyDiff {
    let (ipcache_exact_set, ipcache_exact_del) =
        map_diff(&desired.ipcache_exact, &current.ipcache_exact);
    let (exact_set, exact_del) = map_diff(&desired.exact, &current.exact);
    let (ipcache_set, ipcache_del) = map_diff(&desired.ipcache, &current.ipcache);
    let (entries_set, entries_del) = map_diff(&desired.entries, &current.entries);
    let (endpoints_set, endpoints_del) = map_diff(&desired.endpoints, &current.endpoints);
    PolicyDiff {
        ipcache_exact_set,
        ipcache_exact_del,
        exact_set,
        exact_del,
        ipcache_set,
        ipcache_del,
        entries_set,
        entries_del,
        endpoints_set,
        endpoints_del,
    }
}

/// A decoded drop/audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEvent {
    pub ep_id: u32,
    pub dir: Direction,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub identity: u32,
    /// Index of the deciding rule, `None` for default deny.
    pub rule: Option<u32>,
    pub verdict: EventVerdict,
}

impl PolicyEvent {
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<PolicyEventRaw>() {
            return None;
        }
        // SAFETY: length checked; PolicyEventRaw is plain data, read unaligned.
        let r: PolicyEventRaw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let verdict = match r.verdict as u32 {
            v if v == c::POLICY_DENY => EventVerdict::DeniedByRule,
            v if v == c::POLICY_VERDICT_DROP_DEFAULT => EventVerdict::DefaultDeny,
            v if v == c::POLICY_VERDICT_AUDIT => EventVerdict::Audit,
            _ => return None,
        };
        Some(PolicyEvent {
            ep_id: r.ep_id,
            dir: if r.dir == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            src: Ipv4Addr::from(r.saddr.to_ne_bytes()),
            dst: Ipv4Addr::from(r.daddr.to_ne_bytes()),
            sport: u16::from_be(r.sport),
            dport: u16::from_be(r.dport),
            proto: r.proto,
            identity: r.identity,
            rule: (r.rule != u32::MAX).then_some(r.rule),
            verdict,
        })
    }
}

/// The policy programs of one node, loaded with their maps pinned under `pin_dir`.
pub struct PolicyDatapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

impl PolicyDatapath {
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        std::fs::create_dir_all(pin_dir.join(LINKS_DIR)).map_err(|source| BpfError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(TC_POLICY_OBJ)?;
        for name in PROGS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program is in the object")
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        Ok(PolicyDatapath {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// File descriptor of one of the programs (for `BPF_PROG_TEST_RUN`).
    pub fn prog_fd(&self, name: &str) -> RawFd {
        let prog: &SchedClassifier = self
            .ebpf
            .program(name)
            .expect("program is in the object")
            .try_into()
            .expect("a classifier");
        prog.fd().expect("loaded").as_fd().as_raw_fd()
    }

    /// Reads what the maps hold.
    pub fn read(&mut self) -> Result<RawPolicyMaps, BpfError> {
        let mut out = RawPolicyMaps::default();
        {
            let m: HashMap<_, u32, IpcacheValue> =
                HashMap::try_from(self.ebpf.map_mut(IPCACHE_EXACT_MAP).expect("map"))
                    .map_err(map_err(IPCACHE_EXACT_MAP))?;
            for item in m.iter() {
                let (k, v) = item.map_err(map_err(IPCACHE_EXACT_MAP))?;
                out.ipcache_exact.insert(k, v.identity);
            }
        }
        {
            let m: HashMap<_, PolicyKeyData, PolicyValue> =
                HashMap::try_from(self.ebpf.map_mut(POLICY_EXACT_MAP).expect("map"))
                    .map_err(map_err(POLICY_EXACT_MAP))?;
            for item in m.iter() {
                let (k, v) = item.map_err(map_err(POLICY_EXACT_MAP))?;
                out.exact.insert(k, (v.verdict, v.rule));
            }
        }
        {
            let m: LpmTrie<_, u32, IpcacheValue> =
                LpmTrie::try_from(self.ebpf.map_mut(IPCACHE_MAP).expect("map"))
                    .map_err(map_err(IPCACHE_MAP))?;
            for item in m.iter() {
                let (k, v) = item.map_err(map_err(IPCACHE_MAP))?;
                out.ipcache.insert((k.prefix_len(), k.data()), v.identity);
            }
        }
        {
            let m: LpmTrie<_, PolicyKeyData, PolicyValue> =
                LpmTrie::try_from(self.ebpf.map_mut(POLICY_MAP).expect("map"))
                    .map_err(map_err(POLICY_MAP))?;
            for item in m.iter() {
                let (k, v) = item.map_err(map_err(POLICY_MAP))?;
                out.entries.insert(raw(&k), (v.verdict, v.rule));
            }
        }
        {
            let m: HashMap<_, u32, EpConfig> =
                HashMap::try_from(self.ebpf.map_mut(POLICY_EP_MAP).expect("map"))
                    .map_err(map_err(POLICY_EP_MAP))?;
            for item in m.iter() {
                let (k, v) = item.map_err(map_err(POLICY_EP_MAP))?;
                out.endpoints.insert(k, v);
            }
        }
        Ok(out)
    }

    /// Makes the maps hold exactly `desired`; returns the number of writes (0 when unchanged).
    /// Order keeps every moment consistent: identities first, then rules, then which endpoints
    /// are enforced; removals in reverse.
    pub fn apply(&mut self, desired: &PolicyMaps) -> Result<usize, BpfError> {
        let diff = policy_diff(&desired.to_raw(), &self.read()?);
        {
            let mut m: HashMap<_, u32, IpcacheValue> =
                HashMap::try_from(self.ebpf.map_mut(IPCACHE_EXACT_MAP).expect("map"))
                    .map_err(map_err(IPCACHE_EXACT_MAP))?;
            for (addr, id) in &diff.ipcache_exact_set {
                m.insert(addr, IpcacheValue { identity: *id }, 0)
                    .map_err(map_err(IPCACHE_EXACT_MAP))?;
            }
        }
        {
            let mut m: HashMap<_, PolicyKeyData, PolicyValue> =
                HashMap::try_from(self.ebpf.map_mut(POLICY_EXACT_MAP).expect("map"))
                    .map_err(map_err(POLICY_EXACT_MAP))?;
            for (k, (verdict, rule)) in &diff.exact_set {
                let v = PolicyValue {
                    rule: *rule,
                    verdict: *verdict,
                    pad: [0; 3],
                };
                m.insert(k, v, 0).map_err(map_err(POLICY_EXACT_MAP))?;
            }
        }
        {
            let mut m: LpmTrie<_, u32, IpcacheValue> =
                LpmTrie::try_from(self.ebpf.map_mut(IPCACHE_MAP).expect("map"))
                    .map_err(map_err(IPCACHE_MAP))?;
            for ((len, addr), id) in &diff.ipcache_set {
                m.insert(&LpmKey::new(*len, *addr), IpcacheValue { identity: *id }, 0)
                    .map_err(map_err(IPCACHE_MAP))?;
            }
        }
        {
            let mut m: LpmTrie<_, PolicyKeyData, PolicyValue> =
                LpmTrie::try_from(self.ebpf.map_mut(POLICY_MAP).expect("map"))
                    .map_err(map_err(POLICY_MAP))?;
            for ((len, data), (verdict, rule)) in &diff.entries_set {
                let v = PolicyValue {
                    rule: *rule,
                    verdict: *verdict,
                    pad: [0; 3],
                };
                m.insert(&LpmKey::new(*len, *data), v, 0)
                    .map_err(map_err(POLICY_MAP))?;
            }
        }
        {
            let mut m: HashMap<_, u32, EpConfig> =
                HashMap::try_from(self.ebpf.map_mut(POLICY_EP_MAP).expect("map"))
                    .map_err(map_err(POLICY_EP_MAP))?;
            for (ep, cfg) in &diff.endpoints_set {
                m.insert(ep, cfg, 0).map_err(map_err(POLICY_EP_MAP))?;
            }
            for ep in &diff.endpoints_del {
                m.remove(ep).map_err(map_err(POLICY_EP_MAP))?;
            }
        }
        {
            let mut m: LpmTrie<_, PolicyKeyData, PolicyValue> =
                LpmTrie::try_from(self.ebpf.map_mut(POLICY_MAP).expect("map"))
                    .map_err(map_err(POLICY_MAP))?;
            for (len, data) in &diff.entries_del {
                m.remove(&LpmKey::new(*len, *data))
                    .map_err(map_err(POLICY_MAP))?;
            }
        }
        {
            let mut m: HashMap<_, PolicyKeyData, PolicyValue> =
                HashMap::try_from(self.ebpf.map_mut(POLICY_EXACT_MAP).expect("map"))
                    .map_err(map_err(POLICY_EXACT_MAP))?;
            for k in &diff.exact_del {
                m.remove(k).map_err(map_err(POLICY_EXACT_MAP))?;
            }
        }
        {
            let mut m: LpmTrie<_, u32, IpcacheValue> =
                LpmTrie::try_from(self.ebpf.map_mut(IPCACHE_MAP).expect("map"))
                    .map_err(map_err(IPCACHE_MAP))?;
            for (len, addr) in &diff.ipcache_del {
                m.remove(&LpmKey::new(*len, *addr))
                    .map_err(map_err(IPCACHE_MAP))?;
            }
        }
        {
            let mut m: HashMap<_, u32, IpcacheValue> =
                HashMap::try_from(self.ebpf.map_mut(IPCACHE_EXACT_MAP).expect("map"))
                    .map_err(map_err(IPCACHE_EXACT_MAP))?;
            for addr in &diff.ipcache_exact_del {
                m.remove(addr).map_err(map_err(IPCACHE_EXACT_MAP))?;
            }
        }
        Ok(diff.len())
    }

    fn link_pin(&self, iface: &str, ifindex: u32, hook: &str) -> PathBuf {
        self.pin_dir
            .join(LINKS_DIR)
            .join(format!("{iface}_{ifindex}_{hook}"))
    }

    /// Attaches the pod-side pair (`pod = true`: a pod's host-side veth) or the host pair (a
    /// node device) first in the TCX chains of `iface`, taking over links an earlier agent
    /// pinned. Returns the number of new attachments.
    pub fn attach(&mut self, iface: &str, ifindex: u32, pod: bool) -> Result<usize, BpfError> {
        let hooks: [(&'static str, TcAttachType, &str); 2] = if pod {
            [
                (PROG_FROM_CONTAINER, TcAttachType::Ingress, "ingress"),
                (PROG_TO_CONTAINER, TcAttachType::Egress, "egress"),
            ]
        } else {
            [
                (PROG_HOST_INGRESS, TcAttachType::Ingress, "ingress"),
                (PROG_HOST_EGRESS, TcAttachType::Egress, "egress"),
            ]
        };
        let mut new = 0;
        for (name, attach_type, dir) in hooks {
            let pin = self.link_pin(iface, ifindex, dir);
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .expect("program is in the object")
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            if attach_tcx_pinned(prog, iface, attach_type, ChainPosition::First, &pin, dir)? {
                new += 1;
            }
        }
        Ok(new)
    }

    /// Unpins (detaches) the policy programs of `iface`.
    pub fn detach(&mut self, iface: &str, ifindex: u32) {
        for dir in ["ingress", "egress"] {
            let _ = std::fs::remove_file(self.link_pin(iface, ifindex, dir));
        }
    }

    /// Interfaces (name, ifindex) with pinned policy links.
    pub fn attached(&self) -> BTreeSet<(String, u32)> {
        pinned_link_ifaces(&self.pin_dir.join(LINKS_DIR))
    }
}

/// Reads drop/audit events from a node's pinned ring buffer (one reader at a time).
pub struct EventReader {
    ring: RingBuf<MapData>,
}

impl EventReader {
    pub fn open(pin_dir: &Path) -> Result<Self, BpfError> {
        let data = MapData::from_pin(pin_dir.join(POLICY_EVENTS_MAP))
            .map_err(map_err(POLICY_EVENTS_MAP))?;
        let ring =
            RingBuf::try_from(aya::maps::Map::RingBuf(data)).map_err(map_err(POLICY_EVENTS_MAP))?;
        Ok(EventReader { ring })
    }

    /// Every event queued now.
    pub fn drain(&mut self) -> Vec<PolicyEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            if let Some(e) = PolicyEvent::decode(&item) {
                out.push(e);
            }
        }
        out
    }

    /// The ring's fd, to poll for readability.
    pub fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(ps: &[PortPrefix]) -> Vec<u16> {
        let mut v: Vec<u16> = ps
            .iter()
            .flat_map(|p| {
                let size = 1u32 << (16 - p.bits as u32);
                (p.port as u32..p.port as u32 + size).map(|x| x as u16)
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn port_ranges_are_covered_exactly_by_few_prefixes() {
        for (lo, hi, max) in [
            (80, 80, 1),
            (0, 65535, 1),
            (1, 65535, 16),
            (8000, 8080, 8),
            (1024, 2047, 1),
            (1, 1, 1),
            (65535, 65535, 1),
            (1, 65534, 30),
        ] {
            let ps = port_range_prefixes(lo, hi);
            assert!(ps.len() <= max, "{lo}-{hi}: {} prefixes: {ps:?}", ps.len());
            let want: Vec<u16> = (lo..=hi).collect();
            assert_eq!(covered(&ps), want, "{lo}-{hi}");
        }
    }

    #[test]
    fn keys_stop_at_the_port_prefix_or_before_the_protocol() {
        let e = PolicyEntry {
            ep_id: 7,
            dir: Direction::Ingress,
            identity: 300,
            proto: 6,
            port: PortPrefix {
                port: 8080,
                bits: 16,
            },
        };
        let k = e.key();
        assert_eq!(k.prefix_len(), KEY_FIXED_BITS + 16);
        assert_eq!({ k.data().dport }, 8080u16.to_be());
        let any = PolicyEntry { proto: 0, ..e }.key();
        assert_eq!(any.prefix_len(), KEY_FIXED_BITS - 8);
        assert_eq!(({ any.data().proto }, { any.data().dport }), (0, 0));
        let all_ports = PolicyEntry {
            port: PortPrefix {
                port: 8080,
                bits: 0,
            },
            ..e
        }
        .key();
        assert_eq!(all_ports.prefix_len(), KEY_FIXED_BITS);
        assert_eq!(
            { all_ports.data().dport },
            0,
            "bits below the prefix are cleared"
        );
    }

    #[test]
    fn diff_is_empty_when_equal_and_deny_wins_a_shared_key() {
        let e = PolicyEntry {
            ep_id: 7,
            dir: Direction::Egress,
            identity: 2,
            proto: 17,
            port: PortPrefix { port: 53, bits: 16 },
        };
        let mut m = PolicyMaps::default();
        m.entries.insert(e, (Verdict::Allow, 0));
        m.ipcache.insert((Ipv4Addr::new(10, 244, 1, 5), 32), 300);
        m.endpoints.insert(7, (false, true, false));
        let raw = m.to_raw();
        assert!(policy_diff(&raw, &raw).is_empty());
        assert_eq!(policy_diff(&raw, &RawPolicyMaps::default()).len(), 3);
        assert_eq!(policy_diff(&RawPolicyMaps::default(), &raw).len(), 3);
        // A range prefix landing on the same key as an exact entry: deny kept.
        let same_key = PolicyEntry {
            port: PortPrefix { port: 53, bits: 16 },
            ..e
        };
        assert_eq!(same_key.key().prefix_len(), e.key().prefix_len());
    }
}
