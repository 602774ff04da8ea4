//! Cilium's old IPVLAN datapath (`datapath-mode: ipvlan`, removed upstream, kept here): which IPVLAN
//! mode a node runs and who masquerades, from the `cilium-config` keys ([`IpvlanPlan::from_config`]),
//! and whether this kernel can do IPVLAN at all ([`ipvlan_support`]).
//!
//! Cilium's rule: L3 by default; L3S (IPVLAN passes packets through the master's netfilter) when
//! masquerading is done by iptables (`masquerade: true` with `install-iptables-rules` not false);
//! masquerading with iptables rules off means BPF masquerading on the master device.

use std::collections::BTreeMap;
use std::process::Command;

use crate::masq::MasqMode;

/// IPVLAN mode of the pods' devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvlanMode {
    /// Routed in the master namespace without netfilter.
    L3,
    /// L3 with netfilter hooks (iptables sees pod traffic).
    L3s,
}

impl IpvlanMode {
    /// The `ip link add … type ipvlan mode <m>` word.
    pub fn ip_mode(self) -> &'static str {
        match self {
            IpvlanMode::L3 => "l3",
            IpvlanMode::L3s => "l3s",
        }
    }
}

/// How a node runs the IPVLAN datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvlanPlan {
    pub mode: IpvlanMode,
    /// `ipvlan-master-device`: the pods' IPVLAN devices hang off it, traffic leaves through it.
    pub master_device: String,
    pub masquerade: MasqMode,
    /// Devices `tc_masq.o` goes on ([`MasqMode::Bpf`]: the master device; otherwise none).
    pub bpf_masq_devices: Vec<String>,
    /// `install-iptables-rules`: the agent installs its iptables rules (`CILIUM_POST_nat`, …).
    pub iptables_rules: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpvlanError {
    #[error("datapath-mode is {0:?}, not \"ipvlan\"")]
    NotIpvlan(String),
    #[error("ipvlan-master-device is required with datapath-mode: ipvlan")]
    NoMasterDevice,
    #[error("{key}: invalid value {value:?} (expected \"true\" or \"false\")")]
    Bool { key: &'static str, value: String },
    #[error("tunnel: {0:?}: the IPVLAN datapath needs native routing (tunnel: disabled)")]
    Tunnel(String),
}

fn flag(
    cfg: &BTreeMap<String, String>,
    key: &'static str,
    default: bool,
) -> Result<bool, IpvlanError> {
    match cfg.get(key).map(|v| v.trim()) {
        None | Some("") => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(IpvlanError::Bool {
            key,
            value: v.to_string(),
        }),
    }
}

impl IpvlanPlan {
    /// The plan for a `cilium-config` (keys as in the ConfigMap). `enable-bpf-masquerade` is
    /// honoured too: with it, masquerading is BPF whatever `install-iptables-rules` says.
    pub fn from_config(cfg: &BTreeMap<String, String>) -> Result<Self, IpvlanError> {
        let mode = cfg.get("datapath-mode").map(|s| s.trim()).unwrap_or("");
        if mode != "ipvlan" {
            return Err(IpvlanError::NotIpvlan(mode.to_string()));
        }
        let master = cfg
            .get("ipvlan-master-device")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or(IpvlanError::NoMasterDevice)?;
        match cfg.get("tunnel").map(|s| s.trim()) {
            None | Some("disabled") | Some("") => {}
            Some(t) => return Err(IpvlanError::Tunnel(t.to_string())),
        }
        // Cilium's legacy `masquerade` key, or the current one.
        let masquerade =
            flag(cfg, "masquerade", false)? || flag(cfg, "enable-ipv4-masquerade", false)?;
        let iptables_rules = flag(cfg, "install-iptables-rules", true)?;
        let bpf_masq = flag(cfg, "enable-bpf-masquerade", false)?;
        let (mode, masq) = match (masquerade, bpf_masq, iptables_rules) {
            (false, _, _) => (IpvlanMode::L3, MasqMode::Disabled),
            (true, true, _) | (true, false, false) => (IpvlanMode::L3, MasqMode::Bpf),
            (true, false, true) => (IpvlanMode::L3s, MasqMode::Iptables),
        };
        Ok(IpvlanPlan {
            mode,
            bpf_masq_devices: if masq == MasqMode::Bpf {
                vec![master.clone()]
            } else {
                Vec::new()
            },
            master_device: master,
            masquerade: masq,
            iptables_rules,
        })
    }
}

/// Whether this kernel can create IPVLAN devices: tries `modprobe ipvlan`, then creates a veth with
/// an IPVLAN L3 child in a throwaway network namespace. `Err` is the skip reason, naming what failed.
pub fn ipvlan_support() -> Result<(), String> {
    let modprobe = Command::new("modprobe")
        .arg("ipvlan")
        .output()
        .map(|o| {
            if o.status.success() {
                "loaded".to_string()
            } else {
                String::from_utf8_lossy(&o.stderr).trim().to_string()
            }
        })
        .unwrap_or_else(|e| format!("cannot run modprobe: {e}"));
    let probe = std::thread::spawn(move || -> Result<(), String> {
        // SAFETY: unshare only affects this thread; the namespace dies with it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            ));
        }
        let run = |args: &[&str]| -> Result<(), String> {
            let o = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
            if o.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`ip {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
        };
        run(&[
            "link", "add", "ipvm0", "type", "veth", "peer", "name", "ipvm1",
        ])?;
        run(&[
            "link", "add", "link", "ipvm0", "name", "ipv0", "type", "ipvlan", "mode", "l3",
        ])
    })
    .join()
    .map_err(|_| "the IPVLAN probe thread panicked".to_string())?;
    probe.map_err(|e| {
        format!("IPVLAN unavailable in this kernel: {e} (modprobe ipvlan: {modprobe})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> BTreeMap<String, String> {
        let rel = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/fixtures/seed")
            .join(name);
        let path = if rel.exists() {
            rel
        } else {
            std::path::PathBuf::from("/work/shared/fixtures/seed").join(name)
        };
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    // Seed: L3 mode with BPF masquerading (iptables rules off) puts tc_masq on bond0.
    #[test]
    fn seed_l3_bpf_masq() {
        let p = IpvlanPlan::from_config(&seed("ipvlan-l3-bpf-masq.configmap.yaml")).unwrap();
        assert_eq!(
            p,
            IpvlanPlan {
                mode: IpvlanMode::L3,
                master_device: "bond0".into(),
                masquerade: MasqMode::Bpf,
                bpf_masq_devices: vec!["bond0".into()],
                iptables_rules: false,
            }
        );
    }

    // Seed: pure L3, no masquerading at all.
    #[test]
    fn seed_l3_plain() {
        let p = IpvlanPlan::from_config(&seed("ipvlan-l3.configmap.yaml")).unwrap();
        assert_eq!(p.mode, IpvlanMode::L3);
        assert_eq!(p.masquerade, MasqMode::Disabled);
        assert!(p.bpf_masq_devices.is_empty());
        assert_eq!(p.mode.ip_mode(), "l3");
    }

    // Seed: L3S, because iptables (install-iptables-rules defaults to true) does the masquerading.
    #[test]
    fn seed_l3s_iptables_masq() {
        let p = IpvlanPlan::from_config(&seed("ipvlan-l3s-iptables-masq.configmap.yaml")).unwrap();
        assert_eq!(p.mode, IpvlanMode::L3s);
        assert_eq!(p.mode.ip_mode(), "l3s");
        assert_eq!(p.masquerade, MasqMode::Iptables);
        assert!(p.bpf_masq_devices.is_empty());
        assert!(p.iptables_rules);
    }

    #[test]
    fn refusals_name_the_key() {
        let mut c = seed("ipvlan-l3.configmap.yaml");
        c.insert("masquerade".into(), "yes".into());
        assert_eq!(
            IpvlanPlan::from_config(&c).unwrap_err().to_string(),
            "masquerade: invalid value \"yes\" (expected \"true\" or \"false\")"
        );
        let mut c = seed("ipvlan-l3.configmap.yaml");
        c.remove("ipvlan-master-device");
        assert_eq!(
            IpvlanPlan::from_config(&c).unwrap_err(),
            IpvlanError::NoMasterDevice
        );
        let mut c = seed("ipvlan-l3.configmap.yaml");
        c.insert("tunnel".into(), "vxlan".into());
        assert!(
            IpvlanPlan::from_config(&c)
                .unwrap_err()
                .to_string()
                .contains("vxlan")
        );
        c.insert("datapath-mode".into(), "veth".into());
        assert_eq!(
            IpvlanPlan::from_config(&c).unwrap_err(),
            IpvlanError::NotIpvlan("veth".into())
        );
        // enable-bpf-masquerade wins over iptables rules.
        let mut c = seed("ipvlan-l3s-iptables-masq.configmap.yaml");
        c.insert("enable-bpf-masquerade".into(), "true".into());
        let p = IpvlanPlan::from_config(&c).unwrap();
        assert_eq!((p.mode, p.masquerade), (IpvlanMode::L3, MasqMode::Bpf));
    }
}
