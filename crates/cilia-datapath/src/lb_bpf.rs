//! aya edge of the load balancer: loads `xdp_lb.o` and `tc_lb.o` with every map pinned by name in the
//! node's bpffs directory (both objects, and a restarted agent, share the same maps), writes
//! [`LbDiff`]s and the node config, attaches with pinned links, and reads the maps back.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, HashOfMaps, Map, MapData, MapError, PerCpuArray};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::xdp::XdpLink;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader, Pod};

use crate::bpf::BpfError;
use crate::lb::{LbDiff, LbEntries, MapDiff};
use crate::lb_maglev::MaglevParams;
use crate::lb_maps::{
    LB_DEV_SLOTS, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4Service, Lb4Tuple, LbConfig, LbCounter,
    LbDev,
};
use crate::maps::c;

/// The XDP load balancer (`ebpf/xdp_lb.c`).
pub static XDP_LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_lb.o"));
/// The TC load balancer and the backend side of DSR (`ebpf/tc_lb.c`).
pub static TC_LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_lb.o"));
/// Benchmark helpers: the frame-restoring wrapper and the empty floor (`ebpf/bench_xdp.c`).
pub static BENCH_XDP_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench_xdp.o"));

pub const XDP_LB_PROG: &str = "cil_xdp_lb";
pub const TC_LB_INGRESS_PROG: &str = "cil_lb_ingress";
pub const TC_DSR_INGRESS_PROG: &str = "cil_lb_dsr_ingress";
pub const TC_DSR_EGRESS_PROG: &str = "cil_lb_dsr_egress";
/// The load balancer on a pod's host-side device (ingress): DNAT only, replies restored.
pub const TC_LB_POD_INGRESS_PROG: &str = "cil_lb_pod_ingress";
const TC_PROGS: [&str; 4] = [
    TC_LB_INGRESS_PROG,
    TC_DSR_INGRESS_PROG,
    TC_DSR_EGRESS_PROG,
    TC_LB_POD_INGRESS_PROG,
];

pub const SERVICES_MAP: &str = "cilia_lb4_services";
pub const BACKENDS_MAP: &str = "cilia_lb4_backends";
/// The backends again, as an array by id: what the datapath reads (see lb_maps.h).
pub const BACKEND_IDS_MAP: &str = "cilia_lb4_backend_ids";
pub const REVNAT_MAP: &str = "cilia_lb4_reverse_nat";
pub const MAGLEV_MAP: &str = "cilia_lb4_maglev";
pub const CT_MAP: &str = "cilia_lb4_ct";
pub const NAT_MAP: &str = "cilia_lb4_nat";
pub const DSR_MAP: &str = "cilia_lb4_dsr";
pub const FRAG_MAP: &str = "cilia_lb4_frag";
pub const AFFINITY_MAP: &str = "cilia_lb4_affinity";
pub const CONFIG_MAP: &str = "cilia_lb_config";
pub const COUNTERS_MAP: &str = "cilia_lb_counters";
pub const DEV_MAP: &str = "cilia_lb_dev";
pub const STANDBY_MAP: &str = "cilia_lb_standby";

const LINKS_DIR: &str = "links";
/// `BPF_F_INNER_MAP`: inner maglev tables may differ in size from the object's template.
const BPF_F_INNER_MAP: u32 = 1 << 12;

/// Capacities of the load-balancing maps, fixed when a map is first pinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbMapSizes {
    /// Frontend entries: one per service plus one per backend slot (`bpf.lbMapMax`).
    pub services: u32,
    pub backends: u32,
    pub rev_nat: u32,
    pub maglev: u32,
    pub ct: u32,
    pub nat: u32,
    pub dsr: u32,
    pub frag: u32,
    pub affinity: u32,
}

impl Default for LbMapSizes {
    fn default() -> Self {
        LbMapSizes {
            services: c::CILIA_LB_SERVICES_MAX,
            backends: c::CILIA_LB_BACKENDS_MAX,
            rev_nat: c::CILIA_LB_REVNAT_MAX,
            maglev: c::CILIA_LB_MAGLEV_MAX,
            ct: c::CILIA_LB_CT_MAX,
            nat: c::CILIA_LB_NAT_MAX,
            dsr: c::CILIA_LB_DSR_MAX,
            frag: c::CILIA_LB_FRAG_MAX,
            affinity: c::CILIA_LB_AFFINITY_MAX,
        }
    }
}

impl LbMapSizes {
    /// Small maps for tests: fast to create, same behaviour.
    pub fn small() -> Self {
        LbMapSizes {
            services: 4096,
            backends: 4096,
            rev_nat: 4096,
            maglev: 64,
            ct: 4096,
            nat: 4096,
            dsr: 4096,
            frag: 256,
            affinity: 1024,
        }
    }

    fn apply<'a>(&self, l: &mut EbpfLoader<'a>) {
        l.map_max_entries(SERVICES_MAP, self.services)
            .map_max_entries(BACKENDS_MAP, self.backends)
            .map_max_entries(BACKEND_IDS_MAP, self.backends + 1)
            .map_max_entries(REVNAT_MAP, self.rev_nat)
            .map_max_entries(MAGLEV_MAP, self.maglev)
            .map_max_entries(CT_MAP, self.ct)
            .map_max_entries(NAT_MAP, self.nat)
            .map_max_entries(DSR_MAP, self.dsr)
            .map_max_entries(FRAG_MAP, self.frag)
            .map_max_entries(AFFINITY_MAP, self.affinity);
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

fn hash_entries<K: Pod + Ord, V: Pod>(
    map: &Map,
    name: &'static str,
) -> Result<BTreeMap<K, V>, BpfError> {
    let m: HashMap<&MapData, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
    let mut out = BTreeMap::new();
    for kv in m.iter() {
        let (k, v) = kv.map_err(map_err(name))?;
        out.insert(k, v);
    }
    Ok(out)
}

fn maglev_entries(map: &Map) -> Result<BTreeMap<u32, Vec<u32>>, BpfError> {
    let outer: HashOfMaps<&MapData, u32, Array<MapData, u32>> =
        HashOfMaps::try_from(map).map_err(map_err(MAGLEV_MAP))?;
    let mut out = BTreeMap::new();
    let keys: Vec<u32> = outer
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(MAGLEV_MAP))?;
    for k in keys {
        let inner = outer.get(&k, 0).map_err(map_err(MAGLEV_MAP))?;
        let table = (0..inner.len())
            .map(|i| inner.get(&i, 0))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(map_err(MAGLEV_MAP))?;
        out.insert(k, table);
    }
    Ok(out)
}

fn read_entries_from(
    get: impl Fn(&'static str) -> Result<Map, BpfError>,
) -> Result<LbEntries, BpfError> {
    Ok(LbEntries {
        services: hash_entries::<Lb4Key, Lb4Service>(&get(SERVICES_MAP)?, SERVICES_MAP)?,
        backends: hash_entries::<u32, Lb4Backend>(&get(BACKENDS_MAP)?, BACKENDS_MAP)?,
        rev_nat: hash_entries::<u32, Lb4ReverseNat>(&get(REVNAT_MAP)?, REVNAT_MAP)?,
        maglev: maglev_entries(&get(MAGLEV_MAP)?)?,
    })
}

fn pinned_map(pin_dir: &Path, name: &'static str) -> Result<Map, BpfError> {
    let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// Reads the load-balancing entries pinned under `pin_dir` (for `cilia-dbg bpf lb list`).
pub fn read_lb_entries(pin_dir: &Path) -> Result<LbEntries, BpfError> {
    read_entries_from(|name| pinned_map(pin_dir, name))
}

/// Reads the verdict counters pinned under `pin_dir`, summed over CPUs, by [`LbCounter`] index.
pub fn read_lb_counters(pin_dir: &Path) -> Result<Vec<u64>, BpfError> {
    counters_of(&pinned_map(pin_dir, COUNTERS_MAP)?)
}

fn counters_of(map: &Map) -> Result<Vec<u64>, BpfError> {
    let a: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(map_err(COUNTERS_MAP))?;
    (0..c::LB_C_MAX)
        .map(|i| {
            a.get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .map_err(map_err(COUNTERS_MAP))
        })
        .collect()
}

/// The load-balancing programs of one node, loaded, with their maps pinned under `pin_dir`.
pub struct LbDatapath {
    xdp: Ebpf,
    tc: Ebpf,
    pin_dir: PathBuf,
}

impl LbDatapath {
    /// Loads both objects. Maps already pinned under `pin_dir` are reused as they are (contents and
    /// sizes), so a restart keeps every service and flow.
    /// The L2 announcement maps (see [`Self::load_sharing_l2`]) are pinned under `pin_dir` too.
    pub fn load(pin_dir: &Path, sizes: &LbMapSizes) -> Result<Self, BpfError> {
        Self::load_sharing_l2(pin_dir, sizes, pin_dir)
    }

    /// [`Self::load`], sharing the ARP responder's maps pinned under `l2_pin_dir` (its table and
    /// lease, read only here): a frame for another host's MAC is served only where this node
    /// announces its VIP or stands by for it, within the lease (`lb_serves_flooded` in lb.h).
    pub fn load_sharing_l2(
        pin_dir: &Path,
        sizes: &LbMapSizes,
        l2_pin_dir: &Path,
    ) -> Result<Self, BpfError> {
        for dir in [pin_dir.join(LINKS_DIR), l2_pin_dir.to_path_buf()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| BpfError::PinDir { path: dir, source })?;
        }
        let load = |obj: &[u8]| {
            let mut l = EbpfLoader::new();
            l.default_map_pin_directory(pin_dir);
            for name in [crate::l2::L2_RESPONDER_MAP, crate::l2::L2_LEASE_MAP] {
                l.map_pin_path(name, l2_pin_dir.join(name));
            }
            sizes.apply(&mut l);
            l.load(obj)
        };
        let mut xdp = load(XDP_LB_OBJ)?;
        let prog: &mut Xdp = xdp
            .program_mut(XDP_LB_PROG)
            .expect("program is in the object")
            .try_into()
            .map_err(|source| BpfError::Program {
                name: XDP_LB_PROG,
                source,
            })?;
        retry_eagain(|| prog.load()).map_err(|source| BpfError::Program {
            name: XDP_LB_PROG,
            source,
        })?;
        let mut tc = load(TC_LB_OBJ)?;
        for name in TC_PROGS {
            let prog: &mut SchedClassifier = tc
                .program_mut(name)
                .expect("program is in the object")
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            retry_eagain(|| prog.load()).map_err(|source| BpfError::Program { name, source })?;
        }
        let mut dp = LbDatapath {
            xdp,
            tc,
            pin_dir: pin_dir.to_path_buf(),
        };
        dp.sync_backend_ids()?;
        Ok(dp)
    }

    /// Makes the backend array agree with the backend hash (the agent's view), writing only slots
    /// that differ: nothing on a restart, everything once after an upgrade that added the array.
    fn sync_backend_ids(&mut self) -> Result<(), BpfError> {
        let want: BTreeMap<u32, Lb4Backend> = hash_entries(self.map(BACKENDS_MAP), BACKENDS_MAP)?;
        let mut a: Array<&mut MapData, Lb4Backend> =
            Array::try_from(self.map_mut(BACKEND_IDS_MAP)).map_err(map_err(BACKEND_IDS_MAP))?;
        for (id, b) in want {
            if a.get(&id, 0).ok() != Some(b) {
                a.set(id, b, 0).map_err(map_err(BACKEND_IDS_MAP))?;
            }
        }
        Ok(())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The fd of a loaded program ([`XDP_LB_PROG`] or one of the TC programs), for test runs.
    pub fn prog_fd(&self, name: &str) -> Option<RawFd> {
        let ebpf = if name == XDP_LB_PROG {
            &self.xdp
        } else {
            &self.tc
        };
        let fd = ebpf.program(name)?.fd().ok()?;
        Some(fd.as_fd().as_raw_fd())
    }

    /// The aya handle of a loaded program's fd (for program arrays, e.g. the benchmark's wrapper).
    pub fn program_fd(&self, name: &str) -> Option<&aya::programs::ProgramFd> {
        let ebpf = if name == XDP_LB_PROG {
            &self.xdp
        } else {
            &self.tc
        };
        ebpf.program(name)?.fd().ok()
    }

    fn map(&self, name: &'static str) -> &Map {
        self.xdp.map(name).expect("map is in the object")
    }

    fn map_mut(&mut self, name: &'static str) -> &mut Map {
        self.xdp.map_mut(name).expect("map is in the object")
    }

    /// Writes the node config (slot 0 of `cilia_lb_config`); until then every packet passes. The
    /// clock fields are always this kernel's ([`LbConfig::clocked`]), whatever `cfg` holds.
    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<(), BpfError> {
        let cfg = cfg.clocked().map_err(BpfError::Clock)?;
        let mut a: Array<&mut MapData, LbConfig> =
            Array::try_from(self.map_mut(CONFIG_MAP)).map_err(map_err(CONFIG_MAP))?;
        a.set(0, cfg, 0).map_err(map_err(CONFIG_MAP))
    }

    /// The node devices' MACs XDP checks destinations against (`cilia_lb_dev`, set slots only).
    pub fn dev_macs(&self) -> Result<BTreeMap<u32, [u8; 6]>, BpfError> {
        let a: Array<&MapData, LbDev> =
            Array::try_from(self.map(DEV_MAP)).map_err(map_err(DEV_MAP))?;
        let mut out = BTreeMap::new();
        for idx in 0..LB_DEV_SLOTS {
            let d = a.get(&idx, 0).map_err(map_err(DEV_MAP))?;
            if d.mac != [0; 6] {
                out.insert(idx, d.mac);
            }
        }
        Ok(out)
    }

    /// Writes a [`crate::lb::wanted_dev_macs`] diff; a deleted slot is zeroed (checks nothing).
    pub fn apply_dev_macs(&mut self, diff: &MapDiff<u32, [u8; 6]>) -> Result<(), BpfError> {
        let mut a: Array<&mut MapData, LbDev> =
            Array::try_from(self.map_mut(DEV_MAP)).map_err(map_err(DEV_MAP))?;
        for (idx, mac) in &diff.upserts {
            a.set(
                *idx,
                LbDev {
                    mac: *mac,
                    pad: [0; 2],
                },
                0,
            )
            .map_err(map_err(DEV_MAP))?;
        }
        for idx in &diff.deletes {
            a.set(*idx, LbDev::default(), 0).map_err(map_err(DEV_MAP))?;
        }
        Ok(())
    }

    /// The VIPs this node stands by for (`cilia_lb_standby`).
    pub fn standby_vips(&self) -> Result<BTreeMap<u32, u32>, BpfError> {
        hash_entries(self.map(STANDBY_MAP), STANDBY_MAP)
    }

    /// Writes a [`crate::lb::wanted_standby_vips`] diff.
    pub fn apply_standby(&mut self, diff: &MapDiff<u32, u32>) -> Result<(), BpfError> {
        let mut h: HashMap<&mut MapData, u32, u32> =
            HashMap::try_from(self.map_mut(STANDBY_MAP)).map_err(map_err(STANDBY_MAP))?;
        for k in &diff.deletes {
            match h.remove(k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(STANDBY_MAP)(e)),
            }
        }
        for (k, v) in &diff.upserts {
            h.insert(k, v, 0).map_err(map_err(STANDBY_MAP))?;
        }
        Ok(())
    }

    pub fn config(&self) -> Result<LbConfig, BpfError> {
        let a: Array<&MapData, LbConfig> =
            Array::try_from(self.map(CONFIG_MAP)).map_err(map_err(CONFIG_MAP))?;
        a.get(&0, 0).map_err(map_err(CONFIG_MAP))
    }

    /// What the service maps hold now: the `current` side of [`crate::lb::lb_diff`].
    pub fn read_entries(&self) -> Result<LbEntries, BpfError> {
        read_entries_from(|name| pinned_map(&self.pin_dir, name))
    }

    /// Writes a diff in the order documented on [`LbDiff`]. Maglev tables are built in a fresh inner
    /// map and swapped in with one update, so a lookup sees the old table or the new one.
    pub fn apply(&mut self, diff: &LbDiff, maglev: MaglevParams) -> Result<(), BpfError> {
        {
            let mut m: HashMap<&mut MapData, u32, Lb4Backend> =
                HashMap::try_from(self.map_mut(BACKENDS_MAP)).map_err(map_err(BACKENDS_MAP))?;
            for (k, v) in &diff.backends.upserts {
                m.insert(k, v, 0).map_err(map_err(BACKENDS_MAP))?;
            }
        }
        {
            let mut a: Array<&mut MapData, Lb4Backend> =
                Array::try_from(self.map_mut(BACKEND_IDS_MAP)).map_err(map_err(BACKEND_IDS_MAP))?;
            for (k, v) in &diff.backends.upserts {
                a.set(*k, v, 0).map_err(map_err(BACKEND_IDS_MAP))?;
            }
        }
        {
            let mut m: HashMap<&mut MapData, u32, Lb4ReverseNat> =
                HashMap::try_from(self.map_mut(REVNAT_MAP)).map_err(map_err(REVNAT_MAP))?;
            for (k, v) in &diff.rev_nat.upserts {
                m.insert(k, v, 0).map_err(map_err(REVNAT_MAP))?;
            }
        }
        {
            let mut outer: HashOfMaps<&mut MapData, u32, Array<MapData, u32>> =
                HashOfMaps::try_from(self.map_mut(MAGLEV_MAP)).map_err(map_err(MAGLEV_MAP))?;
            for (k, table) in &diff.maglev.upserts {
                let mut inner = Array::<MapData, u32>::create(maglev.table_size, BPF_F_INNER_MAP)
                    .map_err(map_err(MAGLEV_MAP))?;
                for (i, id) in table.iter().enumerate() {
                    inner.set(i as u32, id, 0).map_err(map_err(MAGLEV_MAP))?;
                }
                outer.insert(*k, &inner, 0).map_err(map_err(MAGLEV_MAP))?;
            }
        }
        {
            let mut m: HashMap<&mut MapData, Lb4Key, Lb4Service> =
                HashMap::try_from(self.map_mut(SERVICES_MAP)).map_err(map_err(SERVICES_MAP))?;
            for (k, v) in diff.service_upserts_ordered() {
                m.insert(k, v, 0).map_err(map_err(SERVICES_MAP))?;
            }
            for k in diff.service_deletes_ordered() {
                remove_present(m.remove(&k)).map_err(map_err(SERVICES_MAP))?;
            }
        }
        {
            let mut outer: HashOfMaps<&mut MapData, u32, Array<MapData, u32>> =
                HashOfMaps::try_from(self.map_mut(MAGLEV_MAP)).map_err(map_err(MAGLEV_MAP))?;
            for k in &diff.maglev.deletes {
                remove_present(outer.remove(k)).map_err(map_err(MAGLEV_MAP))?;
            }
        }
        {
            let mut m: HashMap<&mut MapData, u32, Lb4ReverseNat> =
                HashMap::try_from(self.map_mut(REVNAT_MAP)).map_err(map_err(REVNAT_MAP))?;
            for k in &diff.rev_nat.deletes {
                remove_present(m.remove(k)).map_err(map_err(REVNAT_MAP))?;
            }
        }
        {
            let mut a: Array<&mut MapData, Lb4Backend> =
                Array::try_from(self.map_mut(BACKEND_IDS_MAP)).map_err(map_err(BACKEND_IDS_MAP))?;
            for k in &diff.backends.deletes {
                a.set(*k, Lb4Backend::default(), 0)
                    .map_err(map_err(BACKEND_IDS_MAP))?;
            }
        }
        let mut m: HashMap<&mut MapData, u32, Lb4Backend> =
            HashMap::try_from(self.map_mut(BACKENDS_MAP)).map_err(map_err(BACKENDS_MAP))?;
        for k in &diff.backends.deletes {
            remove_present(m.remove(k)).map_err(map_err(BACKENDS_MAP))?;
        }
        Ok(())
    }

    /// Verdict counters summed over CPUs, by [`LbCounter`] index.
    pub fn counters(&self) -> Result<Vec<u64>, BpfError> {
        counters_of(self.map(COUNTERS_MAP))
    }

    pub fn counter(&self, c: LbCounter) -> Result<u64, BpfError> {
        Ok(self.counters()?[c as usize])
    }

    /// Conntrack entries (client flow → backend, SNAT port).
    pub fn ct_entries(&self) -> Result<BTreeMap<Lb4Tuple, crate::lb_maps::Lb4CtEntry>, BpfError> {
        hash_entries(self.map(CT_MAP), CT_MAP)
    }

    /// Backend ids named by conntrack entries alive at `tick` (see [`crate::lb::live_ct_backends`]),
    /// read entry by entry without holding the whole map. An entry that vanishes while it is read
    /// (evicted, replaced) is skipped: it names nothing any more.
    pub fn ct_live_backends(&self, tick: u32) -> Result<BTreeSet<u32>, BpfError> {
        let m: HashMap<&MapData, Lb4Tuple, crate::lb_maps::Lb4CtEntry> =
            HashMap::try_from(self.map(CT_MAP)).map_err(map_err(CT_MAP))?;
        let mut live = BTreeSet::new();
        for k in m.keys() {
            let k = match k {
                Ok(k) => k,
                // The key iterated from was deleted under us: the kernel restarts from the first
                // key, so only a hard error ends the scan.
                Err(e) => return Err(map_err(CT_MAP)(e)),
            };
            if let Ok(e) = m.get(&k, 0) {
                live.extend(crate::lb::live_ct_backends([&e], tick));
            }
        }
        Ok(live)
    }

    /// Session-affinity entries (client, service → backend).
    pub fn affinity_entries(
        &self,
    ) -> Result<BTreeMap<crate::lb_maps::Lb4AffinityKey, crate::lb_maps::Lb4AffinityEntry>, BpfError>
    {
        hash_entries(self.map(AFFINITY_MAP), AFFINITY_MAP)
    }

    /// Deletes session-affinity entries (those [`crate::lb::stale_affinity`] names); an entry
    /// already gone (LRU eviction) is fine.
    pub fn affinity_remove(
        &mut self,
        keys: &[crate::lb_maps::Lb4AffinityKey],
    ) -> Result<(), BpfError> {
        let mut m: HashMap<
            &mut MapData,
            crate::lb_maps::Lb4AffinityKey,
            crate::lb_maps::Lb4AffinityEntry,
        > = HashMap::try_from(self.map_mut(AFFINITY_MAP)).map_err(map_err(AFFINITY_MAP))?;
        for k in keys {
            remove_present(m.remove(k)).map_err(map_err(AFFINITY_MAP))?;
        }
        Ok(())
    }

    /// Writes a session-affinity entry (tests).
    pub fn affinity_insert(
        &mut self,
        k: &crate::lb_maps::Lb4AffinityKey,
        v: &crate::lb_maps::Lb4AffinityEntry,
    ) -> Result<(), BpfError> {
        let mut m: HashMap<
            &mut MapData,
            crate::lb_maps::Lb4AffinityKey,
            crate::lb_maps::Lb4AffinityEntry,
        > = HashMap::try_from(self.map_mut(AFFINITY_MAP)).map_err(map_err(AFFINITY_MAP))?;
        m.insert(k, v, 0).map_err(map_err(AFFINITY_MAP))
    }

    /// Writes a conntrack entry (a flow the agent restored, or a test's aged one).
    pub fn ct_insert(
        &mut self,
        t: &Lb4Tuple,
        v: &crate::lb_maps::Lb4CtEntry,
    ) -> Result<(), BpfError> {
        let mut m: HashMap<&mut MapData, Lb4Tuple, crate::lb_maps::Lb4CtEntry> =
            HashMap::try_from(self.map_mut(CT_MAP)).map_err(map_err(CT_MAP))?;
        m.insert(t, v, 0).map_err(map_err(CT_MAP))
    }

    /// SNAT entries (reply tuple → client).
    pub fn nat_entries(&self) -> Result<BTreeMap<Lb4Tuple, crate::lb_maps::Lb4NatEntry>, BpfError> {
        hash_entries(self.map(NAT_MAP), NAT_MAP)
    }

    /// Reverse translations of a backend's node (reply tuple → frontend).
    pub fn dsr_entries(&self) -> Result<BTreeMap<Lb4Tuple, crate::lb_maps::Lb4DsrEntry>, BpfError> {
        hash_entries(self.map(DSR_MAP), DSR_MAP)
    }

    /// Claims a SNAT reply tuple (what a flow the agent restored, or a test, holds).
    pub fn nat_insert(
        &mut self,
        reply: &Lb4Tuple,
        v: &crate::lb_maps::Lb4NatEntry,
    ) -> Result<(), BpfError> {
        let mut m: HashMap<&mut MapData, Lb4Tuple, crate::lb_maps::Lb4NatEntry> =
            HashMap::try_from(self.map_mut(NAT_MAP)).map_err(map_err(NAT_MAP))?;
        m.insert(reply, v, 0).map_err(map_err(NAT_MAP))
    }

    /// Forgets every flow: conntrack, SNAT, DSR, fragment and affinity state.
    pub fn flush_flows(&mut self) -> Result<(), BpfError> {
        fn clear<K: Pod, V: Pod>(map: &mut Map, name: &'static str) -> Result<(), BpfError> {
            let mut m: HashMap<&mut MapData, K, V> =
                HashMap::try_from(map).map_err(map_err(name))?;
            let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
            for k in keys {
                remove_present(m.remove(&k)).map_err(map_err(name))?;
            }
            Ok(())
        }
        clear::<Lb4Tuple, crate::lb_maps::Lb4CtEntry>(self.map_mut(CT_MAP), CT_MAP)?;
        clear::<Lb4Tuple, crate::lb_maps::Lb4NatEntry>(self.map_mut(NAT_MAP), NAT_MAP)?;
        clear::<Lb4Tuple, crate::lb_maps::Lb4DsrEntry>(self.map_mut(DSR_MAP), DSR_MAP)?;
        clear::<crate::lb_maps::Lb4FragKey, crate::lb_maps::Lb4FragPorts>(
            self.map_mut(FRAG_MAP),
            FRAG_MAP,
        )?;
        clear::<crate::lb_maps::Lb4AffinityKey, crate::lb_maps::Lb4AffinityEntry>(
            self.map_mut(AFFINITY_MAP),
            AFFINITY_MAP,
        )
    }

    fn link_pin(&self, iface: &str, prog: &str) -> PathBuf {
        self.pin_dir.join(LINKS_DIR).join(format!("{iface}_{prog}"))
    }

    /// Attaches the XDP load balancer to `iface` through a pinned link; a link pinned by an earlier
    /// agent is updated in place (atomic program swap), so traffic never sees a gap.
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<(), BpfError> {
        let pin = self.link_pin(iface, XDP_LB_PROG);
        let link_err = |e: Box<dyn std::error::Error + Send + Sync>| BpfError::Link {
            iface: iface.to_string(),
            dir: "xdp",
            source: e,
        };
        let prog: &mut Xdp = self
            .xdp
            .program_mut(XDP_LB_PROG)
            .expect("program is in the object")
            .try_into()
            .map_err(|source| BpfError::Program {
                name: XDP_LB_PROG,
                source,
            })?;
        let reused = PinnedLink::from_pin(&pin)
            .ok()
            .and_then(|p| XdpLink::try_from(FdLink::from(p)).ok())
            .and_then(|l| prog.attach_to_link(l).ok());
        let id = match reused {
            Some(id) => {
                let _ = std::fs::remove_file(&pin);
                id
            }
            None => {
                let _ = std::fs::remove_file(&pin);
                prog.attach(iface, mode)
                    .map_err(|e| link_err(Box::new(e)))?
            }
        };
        let link = prog.take_link(id).map_err(|e| link_err(Box::new(e)))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: LinkError| link_err(Box::new(e)))?;
        fd.pin(&pin).map_err(|e| link_err(Box::new(e)))?;
        Ok(())
    }

    /// Attaches one TC program (TCX, appended) to `iface` through a pinned link, replacing a link an
    /// earlier agent pinned.
    pub fn attach_tc(
        &mut self,
        iface: &str,
        name: &'static str,
        dir: TcAttachType,
    ) -> Result<(), BpfError> {
        let pin = self.link_pin(iface, name);
        let dir_name = if dir == TcAttachType::Egress {
            "egress"
        } else {
            "ingress"
        };
        let link_err = |e: Box<dyn std::error::Error + Send + Sync>| BpfError::Link {
            iface: iface.to_string(),
            dir: dir_name,
            source: e,
        };
        let prog: &mut SchedClassifier = self
            .tc
            .program_mut(name)
            .expect("program is in the object")
            .try_into()
            .map_err(|source| BpfError::Program { name, source })?;
        let reused = PinnedLink::from_pin(&pin)
            .ok()
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).ok())
            .and_then(|l| prog.attach_to_link(l).ok());
        let _ = std::fs::remove_file(&pin);
        let id = match reused {
            Some(id) => id,
            None => prog
                .attach_with_options(iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(|e| link_err(Box::new(e)))?,
        };
        let link = prog.take_link(id).map_err(|e| link_err(Box::new(e)))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|e: LinkError| link_err(Box::new(e)))?;
        fd.pin(&pin).map_err(|e| link_err(Box::new(e)))?;
        Ok(())
    }

    /// Unpins (and so detaches) every link of `iface`.
    pub fn detach(&mut self, iface: &str) {
        for p in std::iter::once(XDP_LB_PROG).chain(TC_PROGS) {
            let _ = std::fs::remove_file(self.link_pin(iface, p));
        }
    }
}

/// How the XDP load balancer runs on a device (`loadBalancer.acceleration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum XdpAttach {
    /// In the driver (`native`, `best-effort`).
    Native,
    /// In the stack after the skb is built (`testing-only`).
    Generic,
}

impl XdpAttach {
    fn tag(self) -> &'static str {
        match self {
            XdpAttach::Native => "xdp_native",
            XdpAttach::Generic => "xdp_generic",
        }
    }

    fn mode(self) -> XdpMode {
        match self {
            XdpAttach::Native => XdpMode::Driver,
            XdpAttach::Generic => XdpMode::Skb,
        }
    }
}

/// One program link the agent keeps pinned on a node device; the pin's name says which
/// (`<iface>_<ifindex>_<what>`), so a restarted agent knows what is attached without asking.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LbLink {
    pub iface: String,
    pub ifindex: u32,
    pub what: LbLinkKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LbLinkKind {
    Xdp(XdpAttach),
    /// One of the TC programs (ingress LB, DSR ingress, DSR egress).
    Tc(&'static str),
}

impl LbLinkKind {
    fn tag(self) -> &'static str {
        match self {
            LbLinkKind::Xdp(a) => a.tag(),
            LbLinkKind::Tc(p) => p,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [XdpAttach::Native, XdpAttach::Generic]
            .into_iter()
            .find(|a| a.tag() == s)
            .map(LbLinkKind::Xdp)
            .or_else(|| TC_PROGS.into_iter().find(|p| *p == s).map(LbLinkKind::Tc))
    }
}

/// The TC programs of a node device and their hook: the load balancer (when XDP did not take the
/// packet) and both halves of the backend side of DSR / node-local replies.
pub const NODE_TC_PROGS: [(&str, TcAttachType); 3] = [
    (TC_DSR_INGRESS_PROG, TcAttachType::Ingress),
    (TC_LB_INGRESS_PROG, TcAttachType::Ingress),
    (TC_DSR_EGRESS_PROG, TcAttachType::Egress),
];

/// bpffs names cannot hold '.' (VLAN devices have one).
fn pin_safe(iface: &str) -> String {
    iface.replace('.', "-")
}

fn prog_tag_by_id(id: u32) -> Option<u64> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .map(|p| p.tag())
}

impl LbDatapath {
    fn node_link_pin(&self, iface: &str, ifindex: u32, what: LbLinkKind) -> PathBuf {
        self.pin_dir
            .join(LINKS_DIR)
            .join(format!("{}_{ifindex}_{}", pin_safe(iface), what.tag()))
    }

    /// Links pinned under this datapath's directory by [`Self::ensure_link`] (this agent or an
    /// earlier one). `ifaces` maps pin-safe names back to device names.
    pub fn node_links(&self) -> BTreeSet<LbLink> {
        pinned_node_links(&self.pin_dir)
    }

    fn loaded_tag(&self, what: LbLinkKind) -> Option<u64> {
        let (ebpf, name) = match what {
            LbLinkKind::Xdp(_) => (&self.xdp, XDP_LB_PROG),
            LbLinkKind::Tc(p) => (&self.tc, p),
        };
        ebpf.program(name)?.info().ok().map(|i| i.tag())
    }

    /// Makes `what` attached to `iface` (index `ifindex`) through a pinned link. Returns whether the
    /// kernel was written: a link already pinned for this device and mode running the same program
    /// code is left alone (a restarted agent writes nothing); one running other code (an upgrade)
    /// gets the new program swapped in atomically; otherwise the link is created and pinned.
    pub fn ensure_link(
        &mut self,
        iface: &str,
        ifindex: u32,
        what: LbLinkKind,
    ) -> Result<bool, BpfError> {
        let pin = self.node_link_pin(iface, ifindex, what);
        let dir: &'static str = match what {
            LbLinkKind::Xdp(_) => "xdp",
            LbLinkKind::Tc(TC_DSR_EGRESS_PROG) => "egress",
            LbLinkKind::Tc(_) => "ingress",
        };
        let link_err = |e: Box<dyn std::error::Error + Send + Sync>| BpfError::Link {
            iface: iface.to_string(),
            dir,
            source: e,
        };
        let want_tag = self.loaded_tag(what);
        let old = if pin.exists() {
            match PinnedLink::from_pin(&pin) {
                Ok(p) => Some(FdLink::from(p)),
                Err(_) => {
                    let _ = std::fs::remove_file(&pin);
                    None
                }
            }
        } else {
            None
        };
        if let Some(old) = &old {
            let running = old.info().ok().and_then(|i| prog_tag_by_id(i.program_id()));
            if running.is_some() && running == want_tag {
                return Ok(false);
            }
        }
        match what {
            LbLinkKind::Xdp(mode) => {
                let prog: &mut Xdp = self
                    .xdp
                    .program_mut(XDP_LB_PROG)
                    .expect("program is in the object")
                    .try_into()
                    .map_err(|source| BpfError::Program {
                        name: XDP_LB_PROG,
                        source,
                    })?;
                let reused = old
                    .and_then(|l| XdpLink::try_from(l).ok())
                    .and_then(|l| prog.attach_to_link(l).ok());
                let id = match reused {
                    Some(id) => id,
                    None => prog
                        .attach_to_if_index(ifindex, mode.mode())
                        .map_err(|e| link_err(Box::new(e)))?,
                };
                let fd: FdLink = prog
                    .take_link(id)
                    .map_err(|e| link_err(Box::new(e)))?
                    .try_into()
                    .map_err(|e: LinkError| link_err(Box::new(e)))?;
                let _ = std::fs::remove_file(&pin);
                fd.pin(&pin).map_err(|e| link_err(Box::new(e)))?;
            }
            LbLinkKind::Tc(name) => {
                let attach = NODE_TC_PROGS
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, a)| *a)
                    .unwrap_or_else(|| {
                        assert_eq!(name, TC_LB_POD_INGRESS_PROG, "a node or pod TC program");
                        TcAttachType::Ingress
                    });
                let prog: &mut SchedClassifier = self
                    .tc
                    .program_mut(name)
                    .expect("program is in the object")
                    .try_into()
                    .map_err(|source| BpfError::Program { name, source })?;
                let reused = old
                    .and_then(|l| SchedClassifierLink::try_from(l).ok())
                    .and_then(|l| prog.attach_to_link(l).ok());
                let id = match reused {
                    Some(id) => id,
                    None => prog
                        .attach_with_options(
                            iface,
                            attach,
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                        .map_err(|e| link_err(Box::new(e)))?,
                };
                let fd: FdLink = prog
                    .take_link(id)
                    .map_err(|e| link_err(Box::new(e)))?
                    .try_into()
                    .map_err(|e: LinkError| link_err(Box::new(e)))?;
                let _ = std::fs::remove_file(&pin);
                fd.pin(&pin).map_err(|e| link_err(Box::new(e)))?;
            }
        }
        Ok(true)
    }

    /// Detaches a link [`Self::node_links`] listed, synchronously: the pin is opened, removed and
    /// the link detached before this returns, so a native XDP link is gone before a generic one is
    /// attached in its place (the kernel refuses both at once).
    pub fn remove_link(&mut self, link: &LbLink) -> Result<(), BpfError> {
        let pin = self.node_link_pin(&link.iface, link.ifindex, link.what);
        remove_pinned_link(&pin).map_err(|source| BpfError::PinDir { path: pin, source })
    }
}

/// Opens, unpins and detaches a pinned link (`BPF_OBJ_GET`, unlink, `BPF_LINK_DETACH`): the
/// attachment ends before this returns, whoever else still holds the link. A pin that no longer
/// opens is just removed.
pub fn remove_pinned_link(pin: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("pin path holds a NUL"))?;
    // union bpf_attr, obj_get: pathname (u64), bpf_fd (u32), file_flags (u32), path_fd (i32).
    let mut attr = [0u8; 24];
    attr[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr prefix of the given size; path outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    match std::fs::remove_file(pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if fd >= 0 {
        let fd = fd as i32;
        let mut attr = [0u8; 8];
        attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
        // SAFETY: link_detach takes the link fd; we own fd and close it after.
        unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_LINK_DETACH,
                attr.as_mut_ptr(),
                attr.len() as u32,
            );
            libc::close(fd);
        }
    }
    Ok(())
}

/// Links pinned under `pin_dir` by [`LbDatapath::ensure_link`].
pub fn pinned_node_links(pin_dir: &Path) -> BTreeSet<LbLink> {
    let Ok(rd) = std::fs::read_dir(pin_dir.join(LINKS_DIR)) else {
        return BTreeSet::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let (iface, rest) = name.split_once('_')?;
            let (idx, what) = rest.split_once('_')?;
            Some(LbLink {
                iface: iface.to_string(),
                ifindex: idx.parse().ok()?,
                what: LbLinkKind::parse(what)?,
            })
        })
        .collect()
}

/// The verifier gives up with EAGAIN when a signal reaches the loading thread (a child exiting,
/// say); libbpf retries such loads, and so does this (a few times).
fn retry_eagain(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut tries = 0;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            r => return r,
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
