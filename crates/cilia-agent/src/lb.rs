//! Service load balancing in the apply loop: the node's intent → the services it serves
//! ([`cilia_datapath::lb_intent`], pure) → map entries → the difference to what is pinned → writes;
//! then the node config and the program links per `loadBalancer.acceleration`. Everything is read
//! back from the pins, so a restarted agent with an unchanged intent writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cilia_datapath::bpf::BpfError;
use cilia_datapath::lb::{
    BackendRetention, MapDiff, assign_backend_ids_retaining, desired_entries, lb_diff, map_diff,
    stale_affinity, wanted_backends, wanted_dev_macs, wanted_standby_vips,
};
use cilia_datapath::lb_bpf::{
    LbDatapath, LbLink, LbLinkKind, LbMapSizes, NODE_TC_PROGS, TC_LB_POD_INGRESS_PROG, XdpAttach,
    pinned_node_links, read_lb_entries,
};
use cilia_datapath::lb_intent::{
    LbIntentError, ServiceRow, maglev_params, node_services, pinned_backend_ids, pinned_service_ids,
};
use cilia_datapath::lb_maps::{LbConfig, be32, ct_tick};
use cilia_model::NodeIntent;
use cilia_model::service::Acceleration;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The load balancer's pins live in their own directory under the agent's bpf root.
pub const LB_PIN_SUBDIR: &str = "lb";
/// Source ports SNATed flows leave the node with (Cilium's NodePort NAT range).
pub const SNAT_PORT_MIN: u16 = 32768;
pub const SNAT_PORT_MAX: u16 = 65535;
/// Shortest time between two conntrack scans for removed backends' flows. Scans happen only while
/// some removed backend is past its grace ([`BackendRetention`]); the apply loop's resync drives
/// them. A scan reads the whole conntrack map entry by entry (about 3.5 µs an entry: 0.35 s for
/// 100,000 flows), so the next one also waits [`CT_SCAN_BACKOFF`] times as long as the last took:
/// at most a twentieth of the agent's time goes to scans, however big the table (a later scan only
/// delays a release, never a flow).
pub const CT_SCAN_MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const CT_SCAN_BACKOFF: u32 = 20;

/// Where the load balancer of an agent with bpf root `bpf_root` pins its maps and links.
pub fn lb_pin_dir(bpf_root: &Path) -> PathBuf {
    bpf_root.join(LB_PIN_SUBDIR)
}

#[derive(Debug, thiserror::Error)]
pub enum LbApplyError {
    #[error("invalid service intent: {0}")]
    Intent(#[from] LbIntentError),
    #[error("{field}: {reason} (got {value})")]
    Device {
        field: String,
        value: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("computing map entries: {0}")]
    Entries(#[from] cilia_datapath::lb::LbError),
}

/// A node device the load balancer runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbDevice {
    pub name: String,
    pub ifindex: u32,
    pub addrs: Vec<Ipv4Addr>,
    /// What runs there: `Native`, `Generic` or `Disabled` (TC only).
    pub xdp: String,
}

/// What `cilia-dbg status` reports about service load balancing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LbStatus {
    /// `kube-proxy-replacement`.
    pub enabled: bool,
    pub devices: Vec<LbDevice>,
    /// `bpf-lb-acceleration` as configured (`native`, `best-effort`, `disabled`, `testing-only`).
    pub acceleration: String,
    pub mode: String,
    pub algorithm: String,
    pub maglev_table_size: u32,
    pub services: usize,
    /// Backends no service gives new flows to, kept for established flows (removed ones until no
    /// live conntrack entry names them, terminating ones while listed).
    #[serde(default)]
    pub draining_backends: usize,
}

/// The agent's load balancer: loaded on first use, maps and links pinned under `pin_dir`.
pub struct LbAgent {
    pin_dir: PathBuf,
    /// Where the ARP responder pins its maps (see [`Self::sharing_l2`]).
    l2_pin_dir: PathBuf,
    sizes: LbMapSizes,
    dp: Option<LbDatapath>,
    /// Devices (name, ifindex) where best-effort native XDP failed: TC only, not retried.
    best_effort_failed: BTreeSet<(String, u32)>,
    /// What the maps hold after this agent's last successful write. The pins are read back on the
    /// first apply (a restart) and after any failure; in between this is what they hold, so a
    /// resync does not re-read every maglev table entry by entry.
    held: Option<cilia_datapath::lb::LbEntries>,
    /// What `cilia_lb_dev` holds after the last successful write (read back like `held`).
    held_dev_macs: Option<BTreeMap<u32, [u8; 6]>>,
    /// What `cilia_lb_standby` holds after the last successful write (read back like `held`).
    held_standby: Option<BTreeMap<u32, u32>>,
    pub rows: Vec<ServiceRow>,
    pub status: LbStatus,
    /// Pods' host-side devices (name, ifindex): `cil_lb_pod_ingress` runs on their ingress, so a
    /// pod's traffic to a frontend is translated at its edge (DNAT only) and a local backend's
    /// replies get their reverse translation (see [`Self::set_pod_devices`]).
    pod_devices: BTreeSet<(String, u32)>,
    /// Removed backends kept for their established flows, and when each was removed.
    retention: BackendRetention,
    /// The clock of `retention` (monotonic).
    epoch: Instant,
    /// When the next conntrack scan may run (see [`CT_SCAN_BACKOFF`]).
    next_ct_scan: Option<Instant>,
    /// The slots changed on the last pass: check session affinity once more on this one.
    affinity_recheck: bool,
}

/// Read and write of a small map the agent keeps a copy of (see [`sync_held`]).
type HeldMapIo<V> = (
    fn(&LbDatapath) -> Result<BTreeMap<u32, V>, BpfError>,
    fn(&mut LbDatapath, &MapDiff<u32, V>) -> Result<(), BpfError>,
);

/// Makes a small map hold `want`, diffing against `held` (what the last write left; read back
/// from the pins when unknown: a restart, or after a failure). Returns the writes.
fn sync_held<V: PartialEq + Clone>(
    dp: &mut LbDatapath,
    held: &mut Option<BTreeMap<u32, V>>,
    want: BTreeMap<u32, V>,
    (read, write): HeldMapIo<V>,
    what: &'static str,
) -> Result<u64, BpfError> {
    let cur = match held.take() {
        Some(m) => m,
        None => read(dp)?,
    };
    let diff = map_diff(&want, &cur);
    if !diff.is_empty() {
        write(dp, &diff)?;
        info!(entries = want.len(), "{what}");
    }
    *held = Some(want);
    Ok(diff.len() as u64)
}

/// A device as the load balancer needs it: ifindex, IPv4 addresses, MAC.
type IfFacts = (u32, Vec<Ipv4Addr>, [u8; 6]);
/// A node device: name and its facts.
type NodeDevice = (String, u32, Vec<Ipv4Addr>, [u8; 6]);

/// Interfaces of this network namespace by name.
fn interfaces() -> BTreeMap<String, IfFacts> {
    let mut out: BTreeMap<String, IfFacts> = BTreeMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; every pointer is checked before use.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null() || ifa.ifa_addr.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            let idx = libc::if_nametoindex(ifa.ifa_name);
            let e = out.entry(name).or_insert((idx, Vec::new(), [0; 6]));
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    e.1.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                }
                libc::AF_PACKET => {
                    let sll = &*(ifa.ifa_addr as *const libc::sockaddr_ll);
                    if sll.sll_halen == 6 {
                        e.2.copy_from_slice(&sll.sll_addr[..6]);
                    }
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// FNV-1a of the node name: a hash seed that is the same on every start of this node's agent.
fn seed_of(node: &str) -> u32 {
    node.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn accel_name(a: Acceleration) -> &'static str {
    match a {
        Acceleration::Native => "native",
        Acceleration::BestEffort => "best-effort",
        Acceleration::Disabled => "disabled",
        Acceleration::TestingOnly => "testing-only",
    }
}

impl LbAgent {
    pub fn new(pin_dir: PathBuf, sizes: LbMapSizes) -> Self {
        LbAgent {
            l2_pin_dir: pin_dir.clone(),
            pin_dir,
            sizes,
            dp: None,
            best_effort_failed: BTreeSet::new(),
            held: None,
            held_dev_macs: None,
            held_standby: None,
            rows: Vec::new(),
            status: LbStatus::default(),
            pod_devices: BTreeSet::new(),
            retention: BackendRetention::default(),
            epoch: Instant::now(),
            next_ct_scan: None,
            affinity_recheck: false,
        }
    }

    /// Shares the ARP responder's maps pinned under `l2_pin_dir`, so frames a switch floods to
    /// this node for another MAC are served where this node announces their VIP or stands by for
    /// it (by default the load balancer pins copies of its own: only standbys are served).
    pub fn sharing_l2(mut self, l2_pin_dir: PathBuf) -> Self {
        self.l2_pin_dir = l2_pin_dir;
        self
    }

    /// Remembers the pod devices for the next [`Self::apply`] (which attaches and removes their
    /// links with the node devices').
    pub fn set_pod_devices_lazy(&mut self, devices: BTreeSet<(String, u32)>) {
        self.pod_devices = devices;
    }

    /// The load-balancer links wanted on pod devices.
    fn pod_links(&self) -> BTreeSet<LbLink> {
        self.pod_devices
            .iter()
            .map(|(iface, ifindex)| LbLink {
                iface: iface.clone(),
                ifindex: *ifindex,
                what: LbLinkKind::Tc(TC_LB_POD_INGRESS_PROG),
            })
            .collect()
    }

    /// Makes `cil_lb_pod_ingress` run on exactly these pod devices (name, ifindex) while the load
    /// balancer is on: links of vanished pods go, new pods get one (pinned, taken over by a
    /// restarted agent without a write). Returns the number of kernel writes. With the load
    /// balancer off the set is only remembered, for the next [`Self::apply`].
    pub fn set_pod_devices(
        &mut self,
        devices: BTreeSet<(String, u32)>,
    ) -> Result<u64, LbApplyError> {
        self.pod_devices = devices;
        if !self.status.enabled {
            return Ok(0);
        }
        let node: BTreeSet<(String, u32)> = self
            .status
            .devices
            .iter()
            .map(|d| (d.name.replace('.', "-"), d.ifindex))
            .collect();
        let wanted = self.pod_links();
        let Some(dp) = self.dp.as_mut() else {
            return Ok(0);
        };
        let mut writes = 0u64;
        for l in pinned_node_links(&self.pin_dir).iter().filter(|l| {
            !node.contains(&(l.iface.clone(), l.ifindex))
                && !wanted
                    .iter()
                    .any(|w| w.iface.replace('.', "-") == l.iface && w.ifindex == l.ifindex)
        }) {
            dp.remove_link(l)?;
            writes += 1;
            info!(iface = %l.iface, "load-balancer link of a pod device removed");
        }
        for l in &wanted {
            match dp.ensure_link(&l.iface, l.ifindex, l.what) {
                Ok(true) => {
                    writes += 1;
                    info!(iface = %l.iface, "load-balancer link attached to a pod device");
                }
                Ok(false) => {}
                // The device may vanish between listing and attaching; the next pass settles it.
                Err(e) => {
                    warn!(iface = %l.iface, error = %e, "attaching the load balancer to a pod device failed")
                }
            }
        }
        Ok(writes)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn datapath(&mut self) -> Result<&mut LbDatapath, BpfError> {
        if self.dp.is_none() {
            self.dp = Some(LbDatapath::load_sharing_l2(
                &self.pin_dir,
                &self.sizes,
                &self.l2_pin_dir,
            )?);
            info!(pin_dir = %self.pin_dir.display(), "load-balancer programs loaded");
        }
        Ok(self.dp.as_mut().expect("just loaded"))
    }

    /// The devices the load balancer runs on: `datapath.devices`, or the one holding the node
    /// address.
    fn devices(&self, intent: &NodeIntent) -> Result<Vec<NodeDevice>, LbApplyError> {
        let ifs = interfaces();
        let cfg = &intent.datapath;
        if cfg.devices.is_empty() {
            let (name, (idx, addrs, mac)) = ifs
                .iter()
                .find(|(_, (_, a, _))| a.contains(&intent.node_ip))
                .ok_or_else(|| LbApplyError::Device {
                    field: "nodeIp".into(),
                    value: intent.node_ip.to_string(),
                    reason: "no device of this node holds the node address (set datapath.devices)",
                })?;
            return Ok(vec![(name.clone(), *idx, addrs.clone(), *mac)]);
        }
        cfg.devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                ifs.get(d)
                    .map(|(idx, a, m)| (d.clone(), *idx, a.clone(), *m))
                    .ok_or_else(|| LbApplyError::Device {
                        field: format!("datapath.devices[{i}]"),
                        value: d.clone(),
                        reason: "no such device on this node",
                    })
            })
            .collect()
    }

    /// Makes the load balancer match `intent`; returns the number of kernel writes. On an error
    /// nothing of the computation is written and what is pinned stays as it was (a failure while
    /// writing leaves the rest for the next pass, which reads the pins back first).
    pub fn apply(&mut self, intent: &NodeIntent) -> Result<u64, LbApplyError> {
        let r = self.apply_inner(intent);
        if r.is_err() {
            self.held = None;
            self.held_dev_macs = None;
            self.held_standby = None;
        }
        r
    }

    fn apply_inner(&mut self, intent: &NodeIntent) -> Result<u64, LbApplyError> {
        let cfg = &intent.datapath;
        if !cfg.kube_proxy_replacement {
            return self.disable();
        }
        // Everything that can be refused is checked before the first write.
        let maglev = maglev_params(cfg)?;
        let devices = self.devices(intent)?;
        let node = intent.node.clone();
        let held = self.held.take();
        self.datapath()?;
        // Borrow only the datapath field: the retention state below is another field.
        let dp = self.dp.as_mut().expect("loaded above");
        let current = match held {
            Some(h) => h,
            None => dp.read_entries()?,
        };
        let svcs = node_services(intent, &pinned_service_ids(&current))?;
        // Backends that left every service stay (draining) while a live conntrack entry may name
        // them: see BackendRetention for why and when they go. Their ids stay reserved.
        let now_ns = self.epoch.elapsed().as_nanos() as u64;
        let orphans =
            self.retention
                .note_orphans(&current.backends, &wanted_backends(&svcs.specs), now_ns);
        let scan_due = self.retention.release_due(now_ns)
            && self.next_ct_scan.is_none_or(|t| Instant::now() >= t);
        let live_refs = if scan_due {
            let started = Instant::now();
            // The tick is read before the scan: an entry that expired before it stays expired.
            let r = ct_tick()
                .map_err(BpfError::Clock)
                .and_then(|tick| dp.ct_live_backends(tick));
            let took = started.elapsed();
            self.next_ct_scan =
                Some(Instant::now() + CT_SCAN_MIN_INTERVAL.max(took * CT_SCAN_BACKOFF));
            match r {
                Ok(live) => Some(live),
                // Without the scan nothing is released (keeping is the safe side); next pass.
                Err(e) => {
                    warn!(error = %e, "conntrack scan failed; removed backends kept for now");
                    None
                }
            }
        } else {
            None
        };
        let kept = self.retention.kept(&orphans, now_ns, live_refs.as_ref());
        for id in orphans.keys().filter(|id| !kept.contains_key(id)) {
            info!(
                backend_id = id,
                "removed backend released: no live flow names it any more"
            );
        }
        let ids = assign_backend_ids_retaining(
            &svcs.specs,
            &pinned_backend_ids(&current),
            &kept.keys().copied().collect(),
        );
        let mut want = desired_entries(&svcs.specs, &ids, maglev)?;
        for (id, b) in &kept {
            // Reserved above: no wanted backend can have taken the id.
            want.backends.entry(*id).or_insert(*b);
        }
        let draining_backends = want
            .backends
            .values()
            .filter(|b| u32::from(b.flags) & cilia_datapath::maps::c::LB_BE_F_DRAINING != 0)
            .count();
        let mut writes = 0u64;

        let old_cfg = dp.config()?;
        let new_cfg = LbConfig {
            node_addr: be32(intent.node_ip),
            node_mac: devices.first().map(|d| d.3).unwrap_or_default(),
            node_ifindex: devices.first().map(|d| d.1).unwrap_or_default(),
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
            pad: 0,
            maglev_table_size: maglev.table_size,
            // Kept from the pins: a new seed would move every flow whose conntrack entry expired.
            hash_seed: if old_cfg.hash_seed != 0 {
                old_cfg.hash_seed
            } else {
                seed_of(&node) | 1
            },
            ..LbConfig::default()
        }
        // As set_config writes it, so an unchanged config compares equal.
        .clocked()
        .map_err(BpfError::Clock)?;
        if new_cfg != old_cfg {
            dp.set_config(&new_cfg)?;
            writes += 1;
            info!(node_ip = %intent.node_ip, "load-balancer node config written");
        }
        // Before any XDP link: XDP translates only frames for its device's MAC (a switch floods
        // frames for a MAC it has not learnt to every node).
        writes += sync_held(
            dp,
            &mut self.held_dev_macs,
            wanted_dev_macs(devices.iter().map(|d| (d.1, d.3))),
            (LbDatapath::dev_macs, LbDatapath::apply_dev_macs),
            "load-balancer device MACs written",
        )?;
        // The VIPs this node stands by for (L2): it serves their flooded frames.
        writes += sync_held(
            dp,
            &mut self.held_standby,
            wanted_standby_vips(
                intent
                    .l2
                    .iter()
                    .filter(|(_, a)| a.standby)
                    .map(|(vip, _)| vip),
            ),
            (LbDatapath::standby_vips, LbDatapath::apply_standby),
            "load-balancer L2 standby VIPs written",
        )?;
        let diff = lb_diff(&want, &current);
        if !diff.is_empty() {
            dp.apply(&diff, maglev)?;
            writes += diff.len() as u64;
            info!(
                writes = diff.len(),
                services = svcs.specs.len(),
                draining_backends,
                "load-balancer maps updated"
            );
        }
        // Slots changed: affinity entries naming a backend its service no longer gives new flows
        // (or of a service that is gone, whose id a new service may take) must not steer new
        // flows there. After the slot writes; and once more on the next pass, for an entry a
        // packet that had read the old slots wrote meanwhile (a draining backend is ignored by
        // the datapath anyway; this covers one still slotted by another service).
        let affinity_check = !diff.services.is_empty() || self.affinity_recheck;
        self.affinity_recheck = !diff.services.is_empty();
        if affinity_check {
            let stale = stale_affinity(&dp.affinity_entries()?, &want);
            if !stale.is_empty() {
                dp.affinity_remove(&stale)?;
                writes += stale.len() as u64;
                info!(
                    entries = stale.len(),
                    "session affinity to removed backends dropped"
                );
            }
        }
        self.held = Some(want);

        // Links: TC always; XDP per acceleration. Unwanted links go first, so a native XDP link is
        // detached before a generic one replaces it (the kernel refuses both); meanwhile TC, which
        // shares the conntrack map, carries every flow.
        let mut wanted: BTreeSet<LbLink> = BTreeSet::new();
        let mut xdp_of: BTreeMap<String, Option<XdpAttach>> = BTreeMap::new();
        for (name, idx, _, _) in &devices {
            for (p, _) in NODE_TC_PROGS {
                wanted.insert(LbLink {
                    iface: name.clone(),
                    ifindex: *idx,
                    what: LbLinkKind::Tc(p),
                });
            }
            let x = match cfg.acceleration {
                Acceleration::Native => Some(XdpAttach::Native),
                Acceleration::BestEffort
                    if !self.best_effort_failed.contains(&(name.clone(), *idx)) =>
                {
                    Some(XdpAttach::Native)
                }
                Acceleration::TestingOnly => Some(XdpAttach::Generic),
                _ => None,
            };
            if let Some(x) = x {
                wanted.insert(LbLink {
                    iface: name.clone(),
                    ifindex: *idx,
                    what: LbLinkKind::Xdp(x),
                });
            }
            xdp_of.insert(name.clone(), x);
        }
        // Pod devices: the TC load balancer on their ingress (pod -> ClusterIP, local backends'
        // replies). Never XDP: a veth's native XDP has the partial-checksum issue.
        let pod_links = self.pod_links();
        let dp = self.dp.as_mut().expect("loaded above");
        let pinned = pinned_node_links(&self.pin_dir);
        for l in pinned.iter().filter(|l| {
            // Pins carry pin-safe names: compare on those.
            !wanted.iter().chain(&pod_links).any(|w| {
                w.iface.replace('.', "-") == l.iface && w.ifindex == l.ifindex && w.what == l.what
            })
        }) {
            dp.remove_link(l)?;
            writes += 1;
            info!(iface = %l.iface, link = ?l.what, "load-balancer link removed");
        }
        for l in &wanted {
            match dp.ensure_link(&l.iface, l.ifindex, l.what) {
                Ok(true) => {
                    writes += 1;
                    info!(iface = %l.iface, link = ?l.what, "load-balancer link attached");
                }
                Ok(false) => {}
                Err(e)
                    if cfg.acceleration == Acceleration::BestEffort
                        && matches!(l.what, LbLinkKind::Xdp(_)) =>
                {
                    warn!(iface = %l.iface, error = %e, "native XDP unavailable; TC only (best-effort)");
                    self.best_effort_failed.insert((l.iface.clone(), l.ifindex));
                    xdp_of.insert(l.iface.clone(), None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        for l in &pod_links {
            match dp.ensure_link(&l.iface, l.ifindex, l.what) {
                Ok(true) => {
                    writes += 1;
                    info!(iface = %l.iface, "load-balancer link attached to a pod device");
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(iface = %l.iface, error = %e, "attaching the load balancer to a pod device failed")
                }
            }
        }

        self.rows = svcs.rows;
        self.status = LbStatus {
            enabled: true,
            devices: devices
                .iter()
                .map(|(name, idx, addrs, _)| LbDevice {
                    name: name.clone(),
                    ifindex: *idx,
                    addrs: addrs.clone(),
                    xdp: match xdp_of.get(name).copied().flatten() {
                        Some(XdpAttach::Native) => "Native",
                        Some(XdpAttach::Generic) => "Generic",
                        None => "Disabled",
                    }
                    .into(),
                })
                .collect(),
            acceleration: accel_name(cfg.acceleration).into(),
            mode: match cfg.lb_mode {
                cilia_model::service::LbMode::Snat => "SNAT",
                cilia_model::service::LbMode::Dsr => "DSR",
                cilia_model::service::LbMode::Hybrid => "Hybrid",
            }
            .into(),
            algorithm: match cfg.lb_algorithm {
                cilia_model::service::LbAlgorithm::Random => "Random",
                cilia_model::service::LbAlgorithm::Maglev => "Maglev",
            }
            .into(),
            maglev_table_size: maglev.table_size,
            services: self.rows.len(),
            draining_backends,
        };
        Ok(writes)
    }

    /// Kube-proxy replacement off: every link and service entry goes (flows too are forgotten by
    /// the datapath once no program runs). Nothing pinned, nothing loaded: nothing to do.
    fn disable(&mut self) -> Result<u64, LbApplyError> {
        let mut writes = 0u64;
        self.held = None;
        let links = pinned_node_links(&self.pin_dir);
        let has_entries = self.dp.is_some()
            || read_lb_entries(&self.pin_dir).is_ok_and(|e| !e.services.is_empty());
        if links.is_empty() && !has_entries {
            self.rows.clear();
            self.status = LbStatus::default();
            return Ok(0);
        }
        let dp = self.datapath()?;
        for l in &links {
            dp.remove_link(l)?;
            writes += 1;
        }
        let current = dp.read_entries()?;
        let diff = lb_diff(&Default::default(), &current);
        if !diff.is_empty() {
            dp.apply(&diff, Default::default())?;
            writes += diff.len() as u64;
        }
        if writes > 0 {
            info!(writes, "kube-proxy replacement off: load balancer removed");
        }
        self.rows.clear();
        self.status = LbStatus::default();
        Ok(writes)
    }

    /// The loaded datapath (tests read counters and conntrack through it).
    pub fn loaded(&self) -> Option<&LbDatapath> {
        self.dp.as_ref()
    }
}
