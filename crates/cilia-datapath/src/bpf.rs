//! aya edge: loads the programs built from `ebpf/`, pins maps and links under the node's bpffs
//! directory, and reads maps back. Restarts reuse the pins: maps keep their contents, links are
//! replaced atomically, so traffic never sees a gap.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{MapData, PerCpuHashMap};
use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::maps::{EpStats, EpStatsKey};

include!(concat!(env!("OUT_DIR"), "/objects.rs"));

/// The endpoint accounting object (`ebpf/tc_endpoint.c`).
pub static TC_ENDPOINT_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_endpoint.o"));

/// Default bpffs root; the lab gives every node its own directory below it.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/cilia";
pub const EP_STATS_MAP: &str = "cilia_ep_stats";
const LINKS_DIR: &str = "links";

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("creating pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link for {iface} ({dir}): {source}")]
    Link {
        iface: String,
        dir: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{0}")]
    Clock(#[source] io::Error),
}

/// Where a TCX program goes in its hook's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainPosition {
    /// Before every other program (policy and ARP answers must not wait behind anything).
    First,
    /// After the programs already there.
    Last,
}

/// Attaches `prog` (already loaded, named `name` in errors) at `attach_type` of `iface` through a
/// TCX link pinned at `pin`. A link an earlier agent pinned there is taken over and its program
/// swapped atomically, so traffic never sees a gap; a stale pin (its device was recreated) is
/// replaced by a new attachment. Returns whether a new attachment was made (a datapath write).
pub fn attach_tcx_pinned(
    prog: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
    position: ChainPosition,
    pin: &Path,
    dir: &'static str,
) -> Result<bool, BpfError> {
    let link_err = |source: Box<dyn std::error::Error + Send + Sync>| BpfError::Link {
        iface: iface.to_string(),
        dir,
        source,
    };
    let reused = if pin.exists() {
        PinnedLink::from_pin(pin)
            .ok()
            .and_then(|p| SchedClassifierLink::try_from(FdLink::from(p)).ok())
            .and_then(|l| prog.attach_to_link(l).ok())
    } else {
        None
    };
    // The old pin goes either way: re-pinned below from the link now held.
    let _ = std::fs::remove_file(pin);
    let new = reused.is_none();
    let id = match reused {
        Some(id) => id,
        None => {
            let order = match position {
                ChainPosition::First => LinkOrder::first(),
                ChainPosition::Last => LinkOrder::default(),
            };
            prog.attach_with_options(iface, attach_type, TcAttachOptions::TcxOrder(order))
                .map_err(|e| link_err(Box::new(e)))?
        }
    };
    let link = prog.take_link(id).map_err(|e| link_err(Box::new(e)))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e: LinkError| link_err(Box::new(e)))?;
    fd.pin(pin).map_err(|e| link_err(Box::new(e)))?;
    Ok(new)
}

/// Interfaces (name, ifindex) whose links are pinned in `dir` as `<iface>_<ifindex>_<hook>`.
pub fn pinned_link_ifaces(dir: &Path) -> BTreeSet<(String, u32)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let mut parts = name.rsplitn(3, '_');
            let _dir = parts.next()?;
            let ifindex = parts.next()?.parse().ok()?;
            let iface = parts.next()?.to_string();
            Some((iface, ifindex))
        })
        .collect()
}

/// The two programs attached to a pod's host-side veth, and where their links are pinned.
const ENDPOINT_HOOKS: [(&str, TcAttachType, &str); 2] = [
    ("cil_from_container", TcAttachType::Ingress, "ingress"),
    ("cil_to_container", TcAttachType::Egress, "egress"),
];

/// Endpoint programs of one node, loaded with their maps pinned under `pin_dir`.
pub struct EndpointDatapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl EndpointDatapath {
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        std::fs::create_dir_all(pin_dir.join(LINKS_DIR)).map_err(|source| BpfError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(TC_ENDPOINT_OBJ)?;
        for (name, _, _) in ENDPOINT_HOOKS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program is in the object")
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        Ok(EndpointDatapath {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    fn link_pin(&self, iface: &str, ifindex: u32, dir: &str) -> PathBuf {
        // bpffs refuses names with dots.
        self.pin_dir
            .join(LINKS_DIR)
            .join(format!("{iface}_{ifindex}_{dir}"))
    }

    /// Attaches both hooks to `iface` (TCX). A link pinned by an earlier agent is taken over and its
    /// program swapped atomically; a stale pin (the device was recreated) is replaced.
    pub fn attach(&mut self, iface: &str, ifindex: u32) -> Result<(), BpfError> {
        for (name, attach_type, dir) in ENDPOINT_HOOKS {
            let pin = self.link_pin(iface, ifindex, dir);
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

    /// Interfaces (name, ifindex) that currently have pinned endpoint links.
    pub fn attached(&self) -> BTreeSet<(String, u32)> {
        pinned_ifaces(&self.pin_dir)
    }

    /// Unpins the links of `iface` (detaching the programs if the device still exists).
    pub fn detach(&mut self, iface: &str, ifindex: u32) {
        for (_, _, dir) in ENDPOINT_HOOKS {
            let _ = std::fs::remove_file(self.link_pin(iface, ifindex, dir));
        }
    }

    /// Drops the counters of endpoints whose device no longer exists.
    pub fn forget_stats(&mut self, live_ifindexes: &BTreeSet<u32>) -> Result<(), BpfError> {
        let err = |source| BpfError::Map {
            name: EP_STATS_MAP,
            source,
        };
        let map = self
            .ebpf
            .map_mut(EP_STATS_MAP)
            .expect("map is in the object");
        let mut stats: PerCpuHashMap<_, EpStatsKey, EpStats> =
            PerCpuHashMap::try_from(map).map_err(err)?;
        let dead: Vec<EpStatsKey> = stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live_ifindexes.contains(&k.ifindex))
            .collect();
        for k in dead {
            stats.remove(&k).map_err(err)?;
        }
        Ok(())
    }
}

/// Interfaces (name, ifindex) with pinned endpoint links under `pin_dir`.
pub fn pinned_ifaces(pin_dir: &Path) -> BTreeSet<(String, u32)> {
    pinned_link_ifaces(&pin_dir.join(LINKS_DIR))
}

/// Reads the pinned endpoint counters of a node, summed over CPUs, by ifindex.
pub fn read_ep_stats(pin_dir: &Path) -> Result<Vec<(u32, EpStats)>, BpfError> {
    let err = |source| BpfError::Map {
        name: EP_STATS_MAP,
        source,
    };
    let data = MapData::from_pin(pin_dir.join(EP_STATS_MAP)).map_err(err)?;
    let map = aya::maps::Map::PerCpuHashMap(data);
    let stats: PerCpuHashMap<_, EpStatsKey, EpStats> = PerCpuHashMap::try_from(map).map_err(err)?;
    let mut out = Vec::new();
    for item in stats.iter() {
        let (k, per_cpu) = item.map_err(err)?;
        let mut sum = EpStats::default();
        for v in per_cpu.iter() {
            sum += *v;
        }
        out.push((k.ifindex, sum));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs at `/sys/fs/bpf` unless it is already there (as Cilium's agent does), so pins
/// survive the agent process.
pub fn ensure_bpffs() -> io::Result<()> {
    let root = c"/sys/fs/bpf";
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(root.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf")?;
    // SAFETY: constant C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            root.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
