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
use cilia_datapath::masq::{
    FEEDER_RULE, IptablesMasq, MasqDesired, MasqError, MasqMode, iptables_restore_input,
    iptables_rules, masquerading_status,
};
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
    restore_table(
        "nat",
        &FEEDER_RULE.replacen("-A POSTROUTING", "-I POSTROUTING 1", 1),
    )
}

/// One rule change in `table`, committed alone.
fn restore_table(table: &str, line: &str) -> Result<(), MasqError> {
    restore(&format!("*{table}\n{line}\nCOMMIT\n"))
}

/// Unhooks `CILIUM_POST_nat` from POSTROUTING in one commit: from here on iptables masquerades no
/// new flow (the chain itself goes with `IptablesMasq::remove`).
fn unhook_feeder() -> Result<(), MasqError> {
    restore_table(
        "nat",
        &FEEDER_RULE.replacen("-A POSTROUTING", "-D POSTROUTING", 1),
    )
}

/// BPF → iptables: how long the fence holds new flows back while flows BPF translates finish.
const SWITCH_DRAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// While the mode switches, between the old mode going off and the new one going on, a new flow
/// from a pod to a destination outside the cluster would leave with the pod's address. The fence
/// drops such flows' first packets (`FORWARD`, conntrack state NEW) for those few milliseconds:
/// TCP retransmits its SYN once the new mode is on, instead of connecting unmasqueraded. Leaving
/// BPF, it also holds for [`SWITCH_DRAIN`] first, so that short flows BPF translates can end
/// before BPF stops (netfilter cannot take them over); longer ones are reset.
struct Fence(String);

impl Fence {
    const COMMENT: &str = "cilia: masquerading mode switch";

    fn rule(want: &MasqDesired) -> Option<String> {
        if want.mode == MasqMode::Disabled {
            return None;
        }
        let pod = want.pod_cidr?;
        let exclude = want
            .native_routing_cidr
            .map(|n| format!(" ! -d {n}"))
            .unwrap_or_default();
        Some(format!(
            "FORWARD -s {pod}{exclude} -m conntrack --ctstate NEW -m comment --comment \"{}\" -j DROP",
            Self::COMMENT
        ))
    }

    /// Puts the fence up (None: masquerading off, nothing to fence).
    fn up(want: &MasqDesired) -> Result<Option<Fence>, MasqError> {
        let Some(rule) = Self::rule(want) else {
            return Ok(None);
        };
        restore_table("filter", &format!("-I {rule}"))?;
        Ok(Some(Fence(rule)))
    }

    fn down(self) -> Result<(), MasqError> {
        restore_table("filter", &format!("-D {}", self.0))
    }
}

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

    /// What iptables holds of ours; without iptables at all, nothing (an error only when
    /// `needed`).
    fn installed(&self, needed: bool) -> Result<(bool, Vec<String>, bool), MasqError> {
        match self.iptables.current() {
            Err(MasqError::IptablesMissing { .. }) if !needed => Ok((false, Vec::new(), false)),
            r => r,
        }
    }

    /// Whether an earlier agent left masquerading maps pinned (then they must be brought in line).
    fn pinned(&self) -> bool {
        std::fs::read_dir(&self.pin_dir).is_ok_and(|mut d| d.next().is_some())
    }

    /// Makes masquerading match `intent`; returns the number of kernel writes. Everything that can
    /// be refused is checked before the first write; on an error the loaded programs and pins are
    /// kept as they are and the next pass reads them back.
    pub fn apply(&mut self, intent: &NodeIntent) -> Result<u64, MasqApplyError> {
        let want = desired(intent)?;
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
                // Programs loaded and maps written first: nothing translates through them until
                // they are attached below.
                let dp = self.datapath()?;
                let n = dp.apply(&want.entries(seed))?;
                if n > 0 {
                    info!(writes = n, "masquerading maps updated");
                }
                writes += n as u64;
                // iptables off (its feeder rule: one commit), then at once the programs on; the
                // chain itself is cleaned up after, so the switch leaves no gap worth a flow.
                let (exists, _, feeder) = self.installed(false)?;
                let fence = if feeder { Fence::up(&want)? } else { None };
                let dp = self.dp.as_mut().expect("loaded above");
                let switched = (|| -> Result<u64, MasqApplyError> {
                    let mut writes = 0u64;
                    if feeder {
                        unhook_feeder()?;
                        writes += 1;
                    }
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
                    Ok(writes)
                })();
                if let Some(f) = fence {
                    f.down()?;
                }
                writes += switched?;
                if exists || feeder {
                    writes += self.iptables.remove()? as u64;
                    info!("iptables masquerading removed");
                }
                self.devices = devices;
            }
            MasqMode::Iptables | MasqMode::Disabled => {
                // The chain's rules staged first (not hooked into POSTROUTING, so inert).
                let rules = iptables_rules(&want);
                let (exists, have, feeder) = self.installed(!rules.is_empty())?;
                let staged = !rules.is_empty() && (!exists || have != rules);
                if staged {
                    restore(&iptables_restore_input(&rules))?;
                    writes += 1;
                }
                let mut fence = None;
                if self.dp.is_some() || self.pinned() {
                    let dp = self.datapath()?;
                    let attached = dp.attached();
                    if !attached.is_empty() && !rules.is_empty() {
                        fence = Fence::up(&want)?;
                        // Flows BPF translates now cannot move to netfilter (it tracks them
                        // untranslated): with no new flow let in, let the short ones finish.
                        std::thread::sleep(SWITCH_DRAIN);
                    }
                    let dp = self.dp.as_mut().expect("loaded above");
                    // Flags 0 first: programs still attached pass everything from here on.
                    match dp.apply(&want.entries(seed)) {
                        Ok(n) => writes += n as u64,
                        Err(e) => {
                            if let Some(f) = fence {
                                f.down()?;
                            }
                            return Err(e.into());
                        }
                    }
                    if !attached.is_empty() {
                        dp.detach_all();
                        writes += attached.len() as u64;
                        info!(devices = ?attached, "masquerading programs detached");
                    }
                }
                // BPF is off: now iptables (one commit hooking the staged chain in), or nothing.
                let hooked = if rules.is_empty() {
                    self.iptables.remove().map(|n| {
                        if n > 0 {
                            info!("iptables masquerading removed");
                        }
                        n as u64
                    })
                } else if !feeder {
                    hook_feeder().map(|()| {
                        info!("iptables masquerading on");
                        1
                    })
                } else {
                    Ok(0)
                };
                if let Some(f) = fence {
                    f.down()?;
                }
                writes += hooked?;
                self.devices.clear();
            }
        }
        self.status = masquerading_status(&want, &self.devices);
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
    fn switch_fence_covers_new_pod_flows_leaving_the_cluster() {
        let w = desired(&intent(true, true, false)).unwrap();
        assert_eq!(
            Fence::rule(&w).unwrap(),
            "FORWARD -s 10.244.1.0/24 ! -d 10.244.0.0/16 -m conntrack --ctstate NEW \
             -m comment --comment \"cilia: masquerading mode switch\" -j DROP"
        );
        assert_eq!(
            Fence::rule(&desired(&intent(false, false, false)).unwrap()),
            None
        );
    }

    #[test]
    fn seed_is_stable_and_odd() {
        assert_eq!(seed_of("worker"), seed_of("worker"));
        assert_ne!(seed_of("worker"), seed_of("worker2"));
        assert_eq!(seed_of("worker") & 1, 1);
    }
}
