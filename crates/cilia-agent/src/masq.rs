//! Masquerading in the apply loop: the node's intent → what it asks of masquerading
//! ([`MasqDesired`], pure) → the BPF map entries (written as a difference to what is pinned) and the
//! programs on the node devices, or the iptables fallback (`CILIUM_POST_nat`), or neither. A mode
//! switch happens live and keeps established connections: the new mode takes new flows at once,
//! flows of the old one keep their translation to their end (the sequence and why it never
//! translates a flow twice: `cilia_datapath::masq`). Map contents, links and a drain in progress are
//! read back from the pins, so a restarted agent with an unchanged intent writes nothing.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use cilia_datapath::bpf::BpfError;
use cilia_datapath::maps::c;
use cilia_datapath::masq::{
    CONNTRACK_KEEPER_RULE, DrainTimeouts, FEEDER_RULE, IptablesMasq, MasqDesired, MasqError,
    MasqMode, drained_flows, iptables_restore_input, iptables_rules, masquerading_status,
};
use cilia_datapath::masq_bpf::{MasqDatapath, MasqMapSizes, monotonic_ns};
use cilia_model::NodeIntent;
use tracing::{debug, info, warn};

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
    /// How long a draining program keeps a flow after its last packet.
    pub drain_timeouts: DrainTimeouts,
    draining: bool,
    warned_no_iptables: bool,
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

/// Feeds `input` to `iptables-restore --noflush` (one atomic commit).
fn restore(input: &str) -> Result<(), MasqError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let command = "iptables-restore --noflush".to_string();
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| MasqError::IptablesMissing {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    let fed = child
        .stdin
        .take()
        .map(|mut p| p.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(|e| MasqError::Iptables {
        command: command.clone(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() || !matches!(fed, Some(Ok(()))) {
        return Err(MasqError::Iptables {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Hooks `CILIUM_POST_nat` into POSTROUTING (first), as `IptablesMasq` does, in one commit.
fn hook_feeder() -> Result<(), MasqError> {
    restore(&format!(
        "*nat\n{}\nCOMMIT\n",
        FEEDER_RULE.replacen("-A POSTROUTING", "-I POSTROUTING 1", 1)
    ))
}

/// BPF → iptables: how long BPF still starts flows after netfilter took over new ones. A flow
/// whose first packet netfilter let through untranslated just before the commit may not have
/// reached the TC hook yet; in this window it still gets its BPF port (and then drains like the
/// others) instead of leaving with the pod's address. No packet is held back meanwhile.
const SWITCH_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// What `intent` asks of masquerading. `enable-ip-masq-agent` with BPF masquerading off is
/// accepted by the configuration (with a warning that it is inactive, so that `helm upgrade --set
/// bpf.masquerade=false` switches live): iptables masquerading then runs without it.
fn desired(intent: &NodeIntent) -> Result<MasqDesired, MasqError> {
    match MasqDesired::from_intent(intent) {
        Err(MasqError::IpMasqAgentWithoutBpf) => {
            let mut i = intent.clone();
            i.datapath.ip_masq_agent = false;
            MasqDesired::from_intent(&i)
        }
        r => r,
    }
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
            drain_timeouts: DrainTimeouts::default(),
            draining: false,
            warned_no_iptables: false,
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Whether BPF programs are still attached only to finish the flows they translated (after a
    /// switch to iptables or off).
    pub fn draining(&self) -> bool {
        self.draining
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

    /// Makes `CILIUM_POST_nat` hold `rules` (one commit) and hooks it into POSTROUTING; returns the
    /// writes made. Without iptables on the node, `required` decides: an error (iptables
    /// masquerading), or a warning (the conntrack keeper of BPF masquerading: BPF works without
    /// it, only a later switch to iptables would reset BPF's established flows).
    fn sync_chain(&mut self, rules: &[String], required: bool) -> Result<u64, MasqError> {
        let (exists, have, feeder) = match self.iptables.current() {
            Err(e @ MasqError::IptablesMissing { .. }) if !required => {
                if !std::mem::replace(&mut self.warned_no_iptables, true) {
                    warn!(error = %e, "no iptables: conntrack is not kept on for BPF masquerading; a switch to iptables masquerading would reset established flows");
                }
                return Ok(0);
            }
            r => r?,
        };
        let mut writes = 0;
        if !exists || have != rules {
            restore(&iptables_restore_input(rules))?;
            writes += 1;
        }
        if !feeder {
            hook_feeder()?;
            writes += 1;
        }
        Ok(writes)
    }

    /// Makes masquerading match `intent`; returns the number of kernel writes. Everything that can
    /// be refused is checked before the first write; on an error the loaded programs and pins are
    /// kept as they are and the next pass reads them back. While BPF drains, every pass also
    /// retires the flows that ended, and the programs once none is left.
    pub fn apply(&mut self, intent: &NodeIntent) -> Result<u64, MasqApplyError> {
        let want = desired(intent)?;
        let seed = seed_of(&intent.node);
        let writes = match want.mode {
            MasqMode::Bpf => self.apply_bpf(&want, intent.node_ip, seed)?,
            MasqMode::Iptables | MasqMode::Disabled => self.apply_without_bpf(&want, seed)?,
        };
        self.status = masquerading_status(&want, &self.devices);
        Ok(writes)
    }

    /// BPF masquerading: programs on first (this also ends a drain), then netfilter's MASQUERADE
    /// replaced by the conntrack keeper in one commit. New flows are netfilter's until that commit
    /// (BPF passes what already has the node address) and BPF's after it; netfilter's established
    /// flows keep their conntrack translation, conntrack staying on throughout.
    fn apply_bpf(
        &mut self,
        want: &MasqDesired,
        node_ip: Ipv4Addr,
        seed: u32,
    ) -> Result<u64, MasqApplyError> {
        let uplink = if want.devices.is_empty() {
            device_with(node_ip).ok_or(MasqApplyError::NoUplink(node_ip))?
        } else {
            String::new()
        };
        let devices = want.devices(&uplink);
        let mut writes = 0u64;
        let was_draining = std::mem::replace(&mut self.draining, false);
        let dp = self.datapath()?;
        let n = dp.apply(&want.entries(seed))?;
        if n > 0 {
            info!(writes = n, "masquerading maps updated");
        }
        if was_draining {
            info!("BPF masquerading takes new flows again (drain ended)");
        }
        writes += n as u64;
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
        let n = self.sync_chain(&[CONNTRACK_KEEPER_RULE.to_string()], false)?;
        if n > 0 {
            info!("iptables masquerading off (CILIUM_POST_nat keeps conntrack on only)");
        }
        writes += n;
        self.devices = devices;
        Ok(writes)
    }

    /// iptables masquerading or none. Netfilter takes new flows first (one commit); then BPF, if
    /// attached, drains: the flows in its NAT map keep their translation, it starts none, and
    /// once they all ended (by [`DrainTimeouts`]) the programs go. With masquerading off,
    /// `CILIUM_POST_nat` keeps only the conntrack keeper while BPF drains, then goes.
    fn apply_without_bpf(&mut self, want: &MasqDesired, seed: u32) -> Result<u64, MasqApplyError> {
        let rules = iptables_rules(want);
        let mut writes = 0u64;
        if !rules.is_empty() {
            let n = self.sync_chain(&rules, true)?;
            if n > 0 {
                info!("iptables masquerading on");
            }
            writes += n;
        }
        let mut draining = false;
        if self.dp.is_some() || self.pinned() {
            let timeouts = self.drain_timeouts;
            let dp = self.datapath()?;
            if !dp.attached().is_empty() {
                let flags = dp.config()?.flags;
                if flags & c::MASQ_F_ENABLED != 0
                    && flags & c::MASQ_F_DRAIN == 0
                    && !rules.is_empty()
                {
                    std::thread::sleep(SWITCH_SETTLE);
                }
                let started = dp.set_flags(c::MASQ_F_ENABLED | c::MASQ_F_DRAIN)?;
                // Read once a pass: the map only shrinks while draining (no new flow gets a
                // port), and the next pass sees whatever this one missed.
                let nat = dp.nat_entries()?;
                if started {
                    writes += 1;
                    info!(
                        entries = nat.len(),
                        "BPF masquerading draining: its flows keep their ports, new flows are not its"
                    );
                }
                let ended = drained_flows(&nat, monotonic_ns(), &timeouts);
                if !ended.is_empty() {
                    let n = dp.nat_remove(&ended)?;
                    writes += n as u64;
                    debug!(entries = n, "ended flows retired from the drain");
                }
                // Confirmed on a fresh read before the programs go (a reverse entry put back by
                // a packet of a live flow meanwhile keeps the drain on).
                draining = nat.len() > ended.len() || !dp.nat_entries()?.is_empty();
                if !draining {
                    let attached = dp.attached();
                    dp.detach_all();
                    writes += attached.len() as u64;
                    info!(devices = ?attached, "masquerading programs detached: no flow left to drain");
                }
            }
            if !draining {
                // Flags 0, prefixes cleared: what a fresh start in this mode would find.
                writes += dp.apply(&want.entries(seed))? as u64;
            }
        }
        if rules.is_empty() {
            if draining {
                writes += self.sync_chain(&[CONNTRACK_KEEPER_RULE.to_string()], false)?;
            } else {
                let n = match self.iptables.remove() {
                    Err(MasqError::IptablesMissing { .. }) => 0,
                    r => r?,
                };
                if n > 0 {
                    info!("iptables masquerading removed");
                }
                writes += n as u64;
            }
        }
        self.draining = draining;
        self.devices.clear();
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilia_model::RoutingMode;

    fn intent(masq: bool, bpf: bool, agent: bool) -> NodeIntent {
        let mut i: NodeIntent = serde_json::from_value(serde_json::json!({
            "node": "worker",
            "nodeIp": "172.18.0.3",
            "podCidr": "10.244.1.0/24",
            "routingMode": "native",
            "nativeRoutingCidr": "10.244.0.0/16",
            "routes": [],
        }))
        .expect("intent");
        i.routing_mode = RoutingMode::Native;
        i.datapath.masquerade = masq;
        i.datapath.bpf_masquerade = bpf;
        i.datapath.ip_masq_agent = agent;
        i.datapath.non_masquerade_cidrs = vec!["172.18.0.101/32".parse().unwrap()];
        i
    }

    // `helm upgrade --set bpf.masquerade=false` with ip-masq-agent on: iptables, not an error.
    #[test]
    fn ip_masq_agent_without_bpf_falls_back_to_iptables() {
        let w = desired(&intent(true, false, true)).unwrap();
        assert_eq!(w.mode, MasqMode::Iptables);
        assert!(!w.ip_masq_agent);
        let w = desired(&intent(true, true, true)).unwrap();
        assert_eq!(w.mode, MasqMode::Bpf);
        assert!(w.ip_masq_agent);
        assert!(w.ipmasq.contains(&"172.18.0.101/32".parse().unwrap()));
        assert_eq!(
            desired(&intent(false, false, true)).unwrap().mode,
            MasqMode::Disabled
        );
    }

    #[test]
    fn seed_is_stable_and_odd() {
        assert_eq!(seed_of("worker"), seed_of("worker"));
        assert_ne!(seed_of("worker"), seed_of("worker2"));
        assert_eq!(seed_of("worker") & 1, 1);
    }
}
