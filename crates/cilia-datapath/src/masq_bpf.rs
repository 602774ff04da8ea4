//! aya edge of BPF masquerading: loads `tc_masq.o` with every map pinned by name in the node's
//! bpffs directory (a restarted agent reuses them, flows included), writes [`MasqDiff`]s (only what
//! differs from what is pinned), attaches the two programs to node devices with pinned TCX links,
//! and reads the maps back for `cilia-dbg`.
//!
//! API for the agent (see also [`crate::masq`]):
//! - [`MasqDatapath::open`]`(pin_dir, &MasqMapSizes::default())`
//! - [`MasqDatapath::apply`]`(&MasqDesired::from_intent(&intent)?.entries(seed))` → map writes made
//! - [`MasqDatapath::attach`]`(iface)` / [`MasqDatapath::detach`]`(iface)` / [`MasqDatapath::detach_all`]
//! - for `cilia-dbg`: [`read_ipmasq`], [`read_nat`], [`read_masq_counters`] on the pin directory.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use ipnet::Ipv4Net;

use crate::bpf::{BpfError, ChainPosition, attach_tcx_pinned};
use crate::lb_maps::{be32, ip_of};
use crate::maps::c;
use crate::masq::{MasqDiff, MasqEntries, masq_diff};
use crate::masq_maps::{Masq4NatEntry, Masq4Tuple, MasqConfig, MasqCounter};

/// The masquerading programs (`ebpf/tc_masq.c`).
pub static TC_MASQ_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_masq.o"));
/// Benchmark helpers for TC: the frame-restoring wrapper and the empty floor (`ebpf/tc_masq_bench.c`).
pub static TC_MASQ_BENCH_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_masq_bench.o"));

pub const EGRESS_PROG: &str = "cil_masq_egress";
pub const INGRESS_PROG: &str = "cil_masq_ingress";
const HOOKS: [(&str, TcAttachType, &str); 2] = [
    (EGRESS_PROG, TcAttachType::Egress, "egress"),
    (INGRESS_PROG, TcAttachType::Ingress, "ingress"),
];

pub const NAT_MAP: &str = "cilia_snat_v4_external";
pub const IPMASQ_MAP: &str = "cilia_ipmasq_v4";
pub const CLUSTER_MAP: &str = "cilia_masq_cluster_v4";
pub const CONFIG_MAP: &str = "cilia_masq_config";
pub const COUNTERS_MAP: &str = "cilia_masq_counters";
const LINKS_DIR: &str = "links";

/// Capacities of the masquerading maps, fixed when a map is first pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasqMapSizes {
    /// NAT entries: two per flow (`bpf.natMax`).
    pub nat: u32,
    pub ipmasq: u32,
    pub cluster: u32,
}

impl Default for MasqMapSizes {
    fn default() -> Self {
        MasqMapSizes {
            nat: c::CILIA_MASQ_NAT_MAX,
            ipmasq: c::CILIA_IPMASQ_MAX,
            cluster: c::CILIA_MASQ_CLUSTER_MAX,
        }
    }
}

impl MasqMapSizes {
    /// Small maps for tests: fast to create, same behaviour.
    pub fn small() -> Self {
        MasqMapSizes {
            nat: 4096,
            ipmasq: 256,
            cluster: 256,
        }
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

fn pinned_map(pin_dir: &Path, name: &'static str) -> Result<Map, BpfError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

fn prefixes_of(map: &Map, name: &'static str) -> Result<BTreeSet<Ipv4Net>, BpfError> {
    let t: LpmTrie<&MapData, u32, u8> = LpmTrie::try_from(map).map_err(map_err(name))?;
    let mut out = BTreeSet::new();
    for k in t.keys() {
        let k = k.map_err(map_err(name))?;
        // The kernel keeps prefix lengths within the key's 32 bits.
        if let Ok(net) = Ipv4Net::new(ip_of(k.data()), k.prefix_len() as u8) {
            out.insert(net);
        }
    }
    Ok(out)
}

fn nat_of(map: &Map) -> Result<BTreeMap<Masq4Tuple, Masq4NatEntry>, BpfError> {
    let m: HashMap<&MapData, Masq4Tuple, Masq4NatEntry> =
        HashMap::try_from(map).map_err(map_err(NAT_MAP))?;
    let mut out = BTreeMap::new();
    for kv in m.iter() {
        match kv {
            Ok((k, v)) => {
                out.insert(k, v);
            }
            // An LRU entry evicted between key and value reads.
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(map_err(NAT_MAP)(e)),
        }
    }
    Ok(out)
}

fn counters_of(map: &Map) -> Result<Vec<u64>, BpfError> {
    let a: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(map_err(COUNTERS_MAP))?;
    (0..c::MASQ_C_MAX)
        .map(|i| {
            a.get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .map_err(map_err(COUNTERS_MAP))
        })
        .collect()
}

/// `cilia-dbg bpf ipmasq list`: the ip-masq-agent prefixes pinned under `pin_dir`.
pub fn read_ipmasq(pin_dir: &Path) -> Result<BTreeSet<Ipv4Net>, BpfError> {
    prefixes_of(&pinned_map(pin_dir, IPMASQ_MAP)?, IPMASQ_MAP)
}

/// `cilia-dbg bpf nat list`: the NAT entries pinned under `pin_dir`.
pub fn read_nat(pin_dir: &Path) -> Result<BTreeMap<Masq4Tuple, Masq4NatEntry>, BpfError> {
    nat_of(&pinned_map(pin_dir, NAT_MAP)?)
}

/// Verdict counters pinned under `pin_dir`, summed over CPUs, by [`MasqCounter`] index.
pub fn read_masq_counters(pin_dir: &Path) -> Result<Vec<u64>, BpfError> {
    counters_of(&pinned_map(pin_dir, COUNTERS_MAP)?)
}

/// CLOCK_MONOTONIC now, in ns: the clock of [`Masq4NatEntry::created_ns`] (for `bpf nat list`).
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into the timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn lpm_key(n: &Ipv4Net) -> Key<u32> {
    Key::new(u32::from(n.prefix_len()), be32(n.network()))
}

/// The masquerading programs of one node, loaded, with their maps pinned under `pin_dir`.
pub struct MasqDatapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl MasqDatapath {
    /// Loads `tc_masq.o`. Maps already pinned under `pin_dir` are reused as they are (contents and
    /// sizes), so a restart keeps every flow's port.
    pub fn open(pin_dir: &Path, sizes: &MasqMapSizes) -> Result<Self, BpfError> {
        std::fs::create_dir_all(pin_dir.join(LINKS_DIR)).map_err(|source| BpfError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(NAT_MAP, sizes.nat)
            .map_max_entries(IPMASQ_MAP, sizes.ipmasq)
            .map_max_entries(CLUSTER_MAP, sizes.cluster)
            .load(TC_MASQ_OBJ)?;
        for (name, _, _) in HOOKS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program is in the object")
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        Ok(MasqDatapath {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The fd of a loaded program ([`EGRESS_PROG`] / [`INGRESS_PROG`]), for test runs.
    pub fn prog_fd(&self, name: &str) -> Option<RawFd> {
        Some(self.ebpf.program(name)?.fd().ok()?.as_fd().as_raw_fd())
    }

    /// The aya handle of a loaded program's fd (for program arrays, e.g. the benchmark's wrapper).
    pub fn program_fd(&self, name: &str) -> Option<&aya::programs::ProgramFd> {
        self.ebpf.program(name)?.fd().ok()
    }

    fn map(&self, name: &'static str) -> &Map {
        self.ebpf.map(name).expect("map is in the object")
    }

    fn map_mut(&mut self, name: &'static str) -> &mut Map {
        self.ebpf.map_mut(name).expect("map is in the object")
    }

    /// What the maps hold now (the `have` side of [`masq_diff`]); an unwritten config reads as zeroes.
    pub fn read_entries(&self) -> Result<MasqEntries, BpfError> {
        let a: Array<&MapData, MasqConfig> =
            Array::try_from(self.map(CONFIG_MAP)).map_err(map_err(CONFIG_MAP))?;
        Ok(MasqEntries {
            config: a.get(&0, 0).map_err(map_err(CONFIG_MAP))?,
            ipmasq: prefixes_of(self.map(IPMASQ_MAP), IPMASQ_MAP)?,
            cluster: prefixes_of(self.map(CLUSTER_MAP), CLUSTER_MAP)?,
        })
    }

    /// Makes the maps hold `want`, writing only the difference to what they hold; returns the
    /// number of map writes (0 when nothing changed).
    pub fn apply(&mut self, want: &MasqEntries) -> Result<usize, BpfError> {
        let diff = masq_diff(want, &self.read_entries()?);
        self.write(&diff)?;
        Ok(diff.writes())
    }

    /// Writes `diff` in the order documented on [`MasqDiff`].
    pub fn write(&mut self, diff: &MasqDiff) -> Result<(), BpfError> {
        for (name, d) in [(IPMASQ_MAP, &diff.ipmasq), (CLUSTER_MAP, &diff.cluster)] {
            let mut t: LpmTrie<&mut MapData, u32, u8> =
                LpmTrie::try_from(self.map_mut(name)).map_err(map_err(name))?;
            for n in &d.upserts {
                t.insert(&lpm_key(n), 1, 0).map_err(map_err(name))?;
            }
        }
        if let Some(cfg) = &diff.config {
            let mut a: Array<&mut MapData, MasqConfig> =
                Array::try_from(self.map_mut(CONFIG_MAP)).map_err(map_err(CONFIG_MAP))?;
            a.set(0, cfg, 0).map_err(map_err(CONFIG_MAP))?;
        }
        for (name, d) in [(IPMASQ_MAP, &diff.ipmasq), (CLUSTER_MAP, &diff.cluster)] {
            let mut t: LpmTrie<&mut MapData, u32, u8> =
                LpmTrie::try_from(self.map_mut(name)).map_err(map_err(name))?;
            for n in &d.deletes {
                remove_present(t.remove(&lpm_key(n))).map_err(map_err(name))?;
            }
        }
        Ok(())
    }

    /// Masqueraded flows (both directions' entries).
    pub fn nat_entries(&self) -> Result<BTreeMap<Masq4Tuple, Masq4NatEntry>, BpfError> {
        nat_of(self.map(NAT_MAP))
    }

    /// Inserts a NAT entry (a flow restored by the agent, or a test's pre-claimed port).
    pub fn nat_insert(&mut self, k: &Masq4Tuple, v: &Masq4NatEntry) -> Result<(), BpfError> {
        let mut m: HashMap<&mut MapData, Masq4Tuple, Masq4NatEntry> =
            HashMap::try_from(self.map_mut(NAT_MAP)).map_err(map_err(NAT_MAP))?;
        m.insert(k, v, 0).map_err(map_err(NAT_MAP))
    }

    /// The node facts the programs run with (slot 0 of the config map; zeroes when unwritten).
    pub fn config(&self) -> Result<MasqConfig, BpfError> {
        let a: Array<&MapData, MasqConfig> =
            Array::try_from(self.map(CONFIG_MAP)).map_err(map_err(CONFIG_MAP))?;
        a.get(&0, 0).map_err(map_err(CONFIG_MAP))
    }

    /// Sets the config's `flags` (`MASQ_F_*`), the rest as it is; returns whether it wrote.
    pub fn set_flags(&mut self, flags: u32) -> Result<bool, BpfError> {
        let mut cfg = self.config()?;
        if cfg.flags == flags {
            return Ok(false);
        }
        cfg.flags = flags;
        let mut a: Array<&mut MapData, MasqConfig> =
            Array::try_from(self.map_mut(CONFIG_MAP)).map_err(map_err(CONFIG_MAP))?;
        a.set(0, cfg, 0).map_err(map_err(CONFIG_MAP))?;
        Ok(true)
    }

    /// Removes these NAT entries (those already gone are skipped); returns how many it removed.
    pub fn nat_remove(&mut self, keys: &[Masq4Tuple]) -> Result<usize, BpfError> {
        let mut m: HashMap<&mut MapData, Masq4Tuple, Masq4NatEntry> =
            HashMap::try_from(self.map_mut(NAT_MAP)).map_err(map_err(NAT_MAP))?;
        let mut n = 0;
        for k in keys {
            match m.remove(k) {
                Ok(()) => n += 1,
                r => remove_present(r).map_err(map_err(NAT_MAP))?,
            }
        }
        Ok(n)
    }

    /// Forgets every masqueraded flow.
    pub fn flush_nat(&mut self) -> Result<(), BpfError> {
        let mut m: HashMap<&mut MapData, Masq4Tuple, Masq4NatEntry> =
            HashMap::try_from(self.map_mut(NAT_MAP)).map_err(map_err(NAT_MAP))?;
        let keys: Vec<Masq4Tuple> = m.keys().filter_map(Result::ok).collect();
        for k in keys {
            remove_present(m.remove(&k)).map_err(map_err(NAT_MAP))?;
        }
        Ok(())
    }

    /// Verdict counters summed over CPUs, by [`MasqCounter`] index.
    pub fn counters(&self) -> Result<Vec<u64>, BpfError> {
        counters_of(self.map(COUNTERS_MAP))
    }

    pub fn counter(&self, c: MasqCounter) -> Result<u64, BpfError> {
        Ok(self.counters()?[c as usize])
    }

    fn link_pin(&self, iface: &str, dir: &str) -> PathBuf {
        // bpffs refuses names with dots.
        self.pin_dir
            .join(LINKS_DIR)
            .join(format!("{}_masq_{dir}", iface.replace('.', "-")))
    }

    /// Attaches both programs to `iface` (TCX, appended) through pinned links; links an earlier
    /// agent pinned get the program swapped in place, so traffic never sees a gap.
    pub fn attach(&mut self, iface: &str) -> Result<(), BpfError> {
        for (name, attach_type, dir) in HOOKS {
            let pin = self.link_pin(iface, dir);
            let prog: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .expect("program is in the object")
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            attach_tcx_pinned(prog, iface, attach_type, ChainPosition::Last, &pin, dir)?;
        }
        Ok(())
    }

    /// Unpins (and so detaches) both links of `iface`.
    pub fn detach(&mut self, iface: &str) {
        for (_, _, dir) in HOOKS {
            let _ = std::fs::remove_file(self.link_pin(iface, dir));
        }
    }

    /// Interfaces with pinned masquerading links.
    pub fn attached(&self) -> BTreeSet<String> {
        let Ok(rd) = std::fs::read_dir(self.pin_dir.join(LINKS_DIR)) else {
            return BTreeSet::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let (iface, _) = name.rsplit_once("_masq_")?;
                Some(iface.to_string())
            })
            .collect()
    }

    /// Detaches from every interface (switching to iptables or off).
    pub fn detach_all(&mut self) {
        for iface in self.attached() {
            self.detach(&iface);
        }
    }
}

/// A delete of a key that is already gone is what the diff wanted anyway.
fn remove_present(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The NAT entries a masqueraded flow `pod:port → dst:dport` holds when it got `nat_port`
/// (forward, reverse), as the datapath writes them — for tests and the benchmark's seeding.
pub fn nat_pair(
    pod: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    proto: u8,
    node: Ipv4Addr,
    nat_port: u16,
    created_ns: u64,
) -> [(Masq4Tuple, Masq4NatEntry); 2] {
    let out = Masq4Tuple {
        saddr: be32(pod.0),
        daddr: be32(dst.0),
        sport: pod.1.to_be(),
        dport: dst.1.to_be(),
        proto,
        dir: c::MASQ_DIR_OUT as u8,
        pad: [0; 2],
    };
    let inn = Masq4Tuple {
        saddr: be32(dst.0),
        daddr: be32(node),
        sport: dst.1.to_be(),
        dport: nat_port.to_be(),
        proto,
        dir: c::MASQ_DIR_IN as u8,
        pad: [0; 2],
    };
    [
        (
            out,
            Masq4NatEntry {
                to_addr: be32(node),
                to_port: nat_port.to_be(),
                flags: 0,
                created_ns,
                seen_ns: created_ns,
            },
        ),
        (
            inn,
            Masq4NatEntry {
                to_addr: be32(pod.0),
                to_port: pod.1.to_be(),
                flags: 0,
                created_ns,
                seen_ns: created_ns,
            },
        ),
    ]
}
