//! Masquerading in the apply loop: the node's intent → what it asks of masquerading
//! ([`MasqDesired`], pure) → the BPF map entries (written as a difference to what is pinned) and the
//! programs on the node devices, or the iptables fallback (`CILIUM_POST_nat`), or neither. A mode
//! switch happens live: the old mode is switched off before the new one is switched on. Map contents
//! and links are read back from the pins, so a restarted agent with an unchanged intent writes
//! nothing.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use cilia_datapath::bpf::BpfError;
use cilia_datapath::masq::{IptablesMasq, MasqDesired, MasqError, MasqMode, masquerading_status};
use cilia_datapath::masq_bpf::{MasqDatapath, MasqMapSizes};
use cilia_model::NodeIntent;
use tracing::info;

/// Masquerading's pins live in their own directory under the agent's bpf root.
pub const MASQ_PIN_SUBDIR: &str = "masq";

/// Where masquerading of an agent with bpf root `bpf_root` pins its maps and links.
pub fn masq_pin_dir(bpf_root: &Path) -> PathBuf {
    bpf_root.join(MASQ_PIN_SUBDIR)
}

#[derive(Debug, thiserror::Error)]
pub enum MasqApplyError {
    #[error("masquerading: {0}")]
    Intent(#[from] MasqError),
    #[error(
        "masquerading: nodeIp {0}: no device of this node holds the node address (set devices)"
    )]
    NoUplink(Ipv4Addr),
    #[error("masquerading: {0}")]
    Bpf(#[from] BpfError),
}

/// The agent's masquerading: programs loaded on first need, maps and links pinned under `pin_dir`.
pub struct MasqAgent {
    pin_dir: PathBuf,
    sizes: MasqMapSizes,
    dp: Option<MasqDatapath>,
    iptables: IptablesMasq,
    /// Cilium's `Masquerading:` status value of the last applied intent.
    pub status: String,
    /// Devices the BPF programs are attached to (BPF mode).
    pub devices: Vec<String>,
}

/// The name of the device holding `ip` in this network namespace.
fn device_with(ip: Ipv4Addr) -> Option<String> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    let mut found = None;
    // SAFETY: getifaddrs fills a list we free below; every pointer is checked before use.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return None;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null()
                || ifa.ifa_addr.is_null()
                || i32::from((*ifa.ifa_addr).sa_family) != libc::AF_INET
            {
                continue;
            }
            let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            if Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)) == ip {
                found = Some(
                    std::ffi::CStr::from_ptr(ifa.ifa_name)
                        .to_string_lossy()
                        .into_owned(),
                );
                break;
            }
        }
        libc::freeifaddrs(head);
    }
    found
}

/// FNV-1a of the node name: a NAT hash seed that is the same on every start of this node's agent.
fn seed_of(node: &str) -> u32 {
    node.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    }) | 1
}

/// Link pins carry pin-safe device names (bpffs refuses dots).
fn pin_name(dev: &str) -> String {
    dev.replace('.', "-")
}

impl MasqAgent {
    pub fn new(pin_dir: PathBuf, sizes: MasqMapSizes) -> Self {
        MasqAgent {
            pin_dir,
            sizes,
            dp: None,
            iptables: IptablesMasq::new(),
            status: "Disabled".into(),
            devices: Vec::new(),
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn datapath(&mut self) -> Result<&mut MasqDatapath, BpfError> {
        if self.dp.is_none() {
            self.dp = Some(MasqDatapath::open(&self.pin_dir, &self.sizes)?);
            info!(pin_dir = %self.pin_dir.display(), "masquerading programs loaded");
        }
        Ok(self.dp.as_mut().expect("just loaded"))
    }

    /// Whether an earlier agent left masquerading maps pinned (then they must be brought in line).
    fn pinned(&self) -> bool {
        std::fs::read_dir(&self.pin_dir).is_ok_and(|mut d| d.next().is_some())
    }

    /// Makes masquerading match `intent`; returns the number of kernel writes. Everything that can
    /// be refused is checked before the first write; on an error the loaded programs and pins are
    /// kept as they are and the next pass reads them back.
    pub fn apply(&mut self, intent: &NodeIntent) -> Result<u64, MasqApplyError> {
        let want = MasqDesired::from_intent(intent)?;
        let seed = seed_of(&intent.node);
        let mut writes = 0u64;
        match want.mode {
            MasqMode::Bpf => {
                let uplink = if want.devices.is_empty() {
                    device_with(intent.node_ip).ok_or(MasqApplyError::NoUplink(intent.node_ip))?
                } else {
                    String::new()
                };
                let devices = want.devices(&uplink);
                let dp = self.datapath()?;
                let n = dp.apply(&want.entries(seed))?;
                if n > 0 {
                    info!(writes = n, "masquerading maps updated");
                }
                writes += n as u64;
                // iptables off before the programs go on.
                let n = self.iptables.remove()?;
                if n > 0 {
                    info!("iptables masquerading removed");
                }
                writes += n as u64;
                let dp = self.dp.as_mut().expect("loaded above");
                let wanted: BTreeSet<String> = devices.iter().map(|d| pin_name(d)).collect();
                for stale in dp.attached().difference(&wanted) {
                    dp.detach(stale);
                    writes += 1;
                    info!(iface = %stale, "masquerading programs detached");
                }
                let have = dp.attached();
                for d in &devices {
                    if !have.contains(&pin_name(d)) {
                        dp.attach(d)?;
                        writes += 1;
                        info!(iface = %d, "masquerading programs attached");
                    }
                }
                self.devices = devices;
            }
            MasqMode::Iptables | MasqMode::Disabled => {
                if self.dp.is_some() || self.pinned() {
                    let dp = self.datapath()?;
                    // Flags 0 first: programs still attached pass everything from here on.
                    writes += dp.apply(&want.entries(seed))? as u64;
                    let attached = dp.attached();
                    if !attached.is_empty() {
                        dp.detach_all();
                        writes += attached.len() as u64;
                        info!(devices = ?attached, "masquerading programs detached");
                    }
                }
                // BPF is off: now iptables (or nothing).
                let n = self.iptables.apply(&want)?;
                if n > 0 {
                    info!(mode = ?want.mode, "iptables masquerading updated");
                }
                writes += n as u64;
                self.devices.clear();
            }
        }
        self.status = masquerading_status(&want, &self.devices);
        Ok(writes)
    }
}
