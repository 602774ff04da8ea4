//! Policy enforcement on this node: the compiled [`NodePolicy`] from the intent → the policy maps
//! (pure: [`policy_maps`]), and the programs on the devices of the endpoints it covers — a pod's
//! host-side veth, or the node's devices for host policies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use cilia_datapath::bpf::BpfError;
use cilia_datapath::policy::{
    Direction, EventVerdict, PolicyDatapath, PolicyEntry, PolicyEvent, PolicyMaps, PortPrefix,
    Verdict,
};
use cilia_model::policy::{Dir, EndpointRef, NodePolicy};
use serde::{Deserialize, Serialize};
use tracing::info;

/// Where the node's endpoints are: pod address → host-side device, and the node's devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Devices {
    pub pods: BTreeMap<Ipv4Addr, (String, u32)>,
    pub host: Vec<(String, u32)>,
}

/// The map contents for `policy` given where the endpoints are; endpoints without a device yet
/// (a pod still being wired) are skipped and picked up by a later apply.
pub fn policy_maps(policy: &NodePolicy, devices: &Devices) -> PolicyMaps {
    let mut m = PolicyMaps::default();
    for (net, id) in &policy.ipcache {
        m.ipcache.insert((net.addr(), net.prefix_len()), *id);
    }
    for (ep, pol) in &policy.endpoints {
        let ifindexes: Vec<u32> = match (ep, pol.ip) {
            (EndpointRef::Host, _) => devices.host.iter().map(|(_, i)| *i).collect(),
            (EndpointRef::Pod(_), Some(ip)) => {
                devices.pods.get(&ip).map(|(_, i)| *i).into_iter().collect()
            }
            (EndpointRef::Pod(_), None) => vec![],
        };
        for ep_id in ifindexes {
            m.endpoints.insert(
                ep_id,
                (pol.ingress_enforced, pol.egress_enforced, pol.audit),
            );
            for (k, v) in &pol.entries {
                let entry = PolicyEntry {
                    ep_id,
                    dir: match k.dir {
                        Dir::Ingress => Direction::Ingress,
                        Dir::Egress => Direction::Egress,
                    },
                    identity: k.identity,
                    proto: k.proto,
                    port: PortPrefix {
                        port: k.port,
                        bits: k.bits,
                    },
                };
                let verdict = if v.deny {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                };
                m.entries.insert(entry, (verdict, v.rule));
            }
        }
    }
    m
}

/// The devices that must carry the policy programs: (name, ifindex, is a pod device).
pub fn hooks(policy: &NodePolicy, devices: &Devices) -> BTreeSet<(String, u32, bool)> {
    let mut out = BTreeSet::new();
    for (ep, pol) in &policy.endpoints {
        match (ep, pol.ip) {
            (EndpointRef::Host, _) => {
                out.extend(devices.host.iter().map(|(n, i)| (n.clone(), *i, false)));
            }
            (EndpointRef::Pod(_), Some(ip)) => {
                if let Some((n, i)) = devices.pods.get(&ip) {
                    out.insert((n.clone(), *i, true));
                }
            }
            (EndpointRef::Pod(_), None) => {}
        }
    }
    out
}

/// One line of `cilia-dbg monitor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorEvent {
    /// `DROP` (a deny rule or default deny) or `AUDIT`.
    pub verdict: String,
    pub reason: String,
    pub direction: String,
    pub src: String,
    pub dst: String,
    pub proto: String,
    pub identity: u32,
    pub policy: Option<String>,
    pub interface: String,
}

impl MonitorEvent {
    pub fn from_event(e: &PolicyEvent, rules: &[String], ifname: &str) -> Self {
        let proto = match e.proto {
            6 => "TCP".to_string(),
            17 => "UDP".to_string(),
            132 => "SCTP".to_string(),
            1 => "ICMP".to_string(),
            n => n.to_string(),
        };
        let (verdict, reason) = match e.verdict {
            EventVerdict::DeniedByRule => ("DROP", "Policy denied by denylist"),
            EventVerdict::DefaultDeny => ("DROP", "Policy denied"),
            EventVerdict::Audit => ("AUDIT", "Policy would deny (audit mode)"),
        };
        MonitorEvent {
            verdict: verdict.into(),
            reason: reason.into(),
            direction: e.dir.name().into(),
            src: format!("{}:{}", e.src, e.sport),
            dst: format!("{}:{}", e.dst, e.dport),
            proto,
            identity: e.identity,
            policy: e.rule.and_then(|r| rules.get(r as usize).cloned()),
            interface: ifname.to_string(),
        }
    }

    /// `xx drop (Policy denied) flow ... identity 300->?: 10.244.2.11:40000 -> 10.244.1.10:80 tcp`,
    /// the shape of `cilium-dbg monitor`'s drop lines.
    pub fn line(&self) -> String {
        format!(
            "{} {} ({}) {} on {} identity {}: {} -> {} {}{}",
            if self.verdict == "AUDIT" { "--" } else { "xx" },
            self.verdict.to_lowercase(),
            self.reason,
            self.direction,
            self.interface,
            self.identity,
            self.src,
            self.dst,
            self.proto,
            self.policy
                .as_ref()
                .map(|p| format!(" policy {p}"))
                .unwrap_or_default()
        )
    }
}

/// The node's policy programs and maps.
pub struct Enforcer {
    dp: PolicyDatapath,
}

impl Enforcer {
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        Ok(Enforcer {
            dp: PolicyDatapath::load(pin_dir)?,
        })
    }

    /// Makes maps and hooks match `policy`; returns the number of writes. Maps are written before
    /// programs are attached, so a newly hooked device never sees an empty table.
    pub fn apply(&mut self, policy: &NodePolicy, devices: &Devices) -> Result<usize, BpfError> {
        let mut writes = self.dp.apply(&policy_maps(policy, devices))?;
        let want = hooks(policy, devices);
        for (name, ifindex, pod) in &want {
            let n = self.dp.attach(name, *ifindex, *pod)?;
            if n > 0 {
                info!(iface = %name, "policy programs attached");
            }
            writes += n;
        }
        let keep: BTreeSet<(String, u32)> = want.iter().map(|(n, i, _)| (n.clone(), *i)).collect();
        for (name, ifindex) in self.dp.attached() {
            if !keep.contains(&(name.clone(), ifindex)) {
                self.dp.detach(&name, ifindex);
                writes += 1;
                info!(iface = %name, "policy programs detached: no policy selects it");
            }
        }
        Ok(writes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilia_model::policy::{EndpointPolicy, EntryKey, EntryVerdict};

    fn node_policy() -> NodePolicy {
        let mut np = NodePolicy::default();
        np.ipcache.insert("10.244.2.11/32".parse().unwrap(), 300);
        let mut pol = EndpointPolicy {
            ip: Some(Ipv4Addr::new(10, 244, 1, 10)),
            ingress_enforced: true,
            ..Default::default()
        };
        pol.entries.insert(
            EntryKey {
                dir: Dir::Ingress,
                identity: 300,
                proto: 6,
                port: 80,
                bits: 16,
            },
            EntryVerdict {
                deny: false,
                rule: 0,
            },
        );
        np.endpoints
            .insert(EndpointRef::Pod("default/deathstar-1".into()), pol.clone());
        np.endpoints.insert(
            EndpointRef::Pod("default/not-wired-yet".into()),
            EndpointPolicy {
                ip: Some(Ipv4Addr::new(10, 244, 1, 99)),
                ..pol.clone()
            },
        );
        np.endpoints
            .insert(EndpointRef::Host, EndpointPolicy { ip: None, ..pol });
        np.rules = vec!["rule1".into()];
        np
    }

    fn devices() -> Devices {
        Devices {
            pods: [(Ipv4Addr::new(10, 244, 1, 10), ("lxc1234".to_string(), 12))].into(),
            host: vec![("eth0".into(), 2)],
        }
    }

    #[test]
    fn endpoints_map_to_their_devices_and_unwired_pods_wait() {
        let m = policy_maps(&node_policy(), &devices());
        assert_eq!(m.endpoints.keys().copied().collect::<Vec<_>>(), vec![2, 12]);
        assert_eq!(
            m.entries.len(),
            2,
            "one entry per wired endpoint: {:?}",
            m.entries
        );
        assert!(m.entries.keys().all(|e| e.identity == 300 && e.proto == 6));
        assert_eq!(m.ipcache[&(Ipv4Addr::new(10, 244, 2, 11), 32)], 300);
        let h = hooks(&node_policy(), &devices());
        assert_eq!(
            h,
            BTreeSet::from([
                ("eth0".to_string(), 2, false),
                ("lxc1234".to_string(), 12, true)
            ])
        );
    }

    #[test]
    fn monitor_lines_name_the_policy() {
        let e = PolicyEvent {
            ep_id: 12,
            dir: Direction::Ingress,
            src: Ipv4Addr::new(10, 244, 1, 12),
            dst: Ipv4Addr::new(10, 244, 1, 10),
            sport: 40000,
            dport: 80,
            proto: 6,
            identity: 301,
            rule: Some(0),
            verdict: EventVerdict::DeniedByRule,
        };
        let m = MonitorEvent::from_event(&e, &["no-xwings".into()], "lxc1234");
        assert_eq!(
            m.line(),
            "xx drop (Policy denied by denylist) ingress on lxc1234 identity 301: 10.244.1.12:40000 -> 10.244.1.10:80 TCP policy no-xwings"
        );
        let audit = MonitorEvent::from_event(
            &PolicyEvent {
                verdict: EventVerdict::Audit,
                rule: None,
                ..e
            },
            &[],
            "eth0",
        );
        assert!(
            audit
                .line()
                .starts_with("-- audit (Policy would deny (audit mode))"),
            "{}",
            audit.line()
        );
    }
}
