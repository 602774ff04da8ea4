//! Policy enforcement on this node: the compiled [`NodePolicy`] from the intent → the policy maps
//! (pure: [`policy_maps`]), and the programs on the devices of the endpoints it covers — a pod's
//! host-side veth, or the node's devices for host policies.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cilia_datapath::bpf::BpfError;
use cilia_datapath::policy::{
    Direction, EventReader, EventVerdict, PolicyDatapath, PolicyEntry, PolicyEvent, PolicyMaps,
    PortPrefix, Verdict,
};
use cilia_model::NodeIntent;
use cilia_model::policy::{Dir, EndpointRef, NodePolicy};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

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

/// Subdirectory of the bpf root for the policy maps and links.
pub const POLICY_PIN_SUBDIR: &str = "policy";

pub fn policy_pin_dir(bpf_root: &Path) -> PathBuf {
    bpf_root.join(POLICY_PIN_SUBDIR)
}

/// How many monitor events the agent keeps for `cilia-dbg monitor` clients that poll.
pub const MONITOR_KEEP: usize = 4096;
/// How often the event ring is drained (a drop is on screen within this).
const MONITOR_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum PolicyApplyError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(transparent)]
    Netlink(#[from] cilia_datapath::netlink::NetlinkError),
    #[error("{field}: {value:?}: {reason}")]
    Device {
        field: String,
        value: String,
        reason: &'static str,
    },
}

/// Recent drop/audit events, numbered so pollers take each once.
#[derive(Debug, Default)]
pub struct EventLog {
    /// Sequence number of the next event.
    pub next: u64,
    pub events: VecDeque<(u64, MonitorEvent)>,
    /// What events are read with: rule names and interface names of the applied policy.
    rules: Vec<String>,
    ifnames: BTreeMap<u32, String>,
}

impl EventLog {
    fn push(&mut self, e: &PolicyEvent) {
        let ifname = self
            .ifnames
            .get(&e.ep_id)
            .cloned()
            .unwrap_or_else(|| format!("if{}", e.ep_id));
        let m = MonitorEvent::from_event(e, &self.rules, &ifname);
        self.events.push_back((self.next, m));
        self.next += 1;
        while self.events.len() > MONITOR_KEEP {
            self.events.pop_front();
        }
    }

    /// Events numbered `after` and later (`None`: none, only where the log stands), and the
    /// number to ask from next time.
    pub fn since(&self, after: Option<u64>) -> (u64, Vec<MonitorEvent>) {
        let events = match after {
            None => Vec::new(),
            Some(a) => self
                .events
                .iter()
                .filter(|(n, _)| *n >= a)
                .map(|(_, e)| e.clone())
                .collect(),
        };
        (self.next, events)
    }
}

/// One row of `cilia-dbg bpf policy list`: an entry of an endpoint's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRow {
    /// `namespace/name`, or `host`.
    pub endpoint: String,
    /// The device the entry is enforced on (`None`: the pod is not wired on this node yet).
    pub interface: Option<String>,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub audit: bool,
    pub direction: String,
    pub identity: u32,
    /// `ANY`, `TCP`, `UDP`, `SCTP`.
    pub proto: String,
    /// `80`, `8000/13` (a port prefix), or `ANY`.
    pub port: String,
    /// `allow` or `deny`.
    pub verdict: String,
    pub policy: String,
}

/// The rows of `cilia-dbg bpf policy list` for `policy`; an enforced endpoint without entries
/// gets one row saying so (`verdict` `default-deny` or `allow`, the rest `ANY`).
pub fn policy_rows(policy: &NodePolicy, devices: &Devices) -> Vec<PolicyRow> {
    let mut rows = Vec::new();
    for (ep, pol) in &policy.endpoints {
        let (endpoint, interfaces): (String, Vec<Option<String>>) = match ep {
            EndpointRef::Host => (
                "host".into(),
                devices.host.iter().map(|(n, _)| Some(n.clone())).collect(),
            ),
            EndpointRef::Pod(name) => (
                name.clone(),
                vec![
                    pol.ip
                        .and_then(|ip| devices.pods.get(&ip))
                        .map(|(n, _)| n.clone()),
                ],
            ),
        };
        for interface in interfaces {
            let base = PolicyRow {
                endpoint: endpoint.clone(),
                interface,
                ingress_enforced: pol.ingress_enforced,
                egress_enforced: pol.egress_enforced,
                audit: pol.audit,
                direction: String::new(),
                identity: 0,
                proto: "ANY".into(),
                port: "ANY".into(),
                verdict: String::new(),
                policy: String::new(),
            };
            if pol.entries.is_empty() {
                rows.push(PolicyRow {
                    direction: "both".into(),
                    verdict: if pol.ingress_enforced || pol.egress_enforced {
                        "default-deny".into()
                    } else {
                        "allow".into()
                    },
                    ..base.clone()
                });
            }
            for (k, v) in &pol.entries {
                rows.push(PolicyRow {
                    direction: match k.dir {
                        Dir::Ingress => "ingress".into(),
                        Dir::Egress => "egress".into(),
                    },
                    identity: k.identity,
                    proto: match k.proto {
                        0 => "ANY".into(),
                        6 => "TCP".into(),
                        17 => "UDP".into(),
                        132 => "SCTP".into(),
                        n => n.to_string(),
                    },
                    port: match (k.proto, k.bits) {
                        (0, _) | (_, 0) => "ANY".into(),
                        (_, 16) => k.port.to_string(),
                        (_, b) => format!("{}/{b}", k.port),
                    },
                    verdict: if v.deny {
                        "deny".into()
                    } else {
                        "allow".into()
                    },
                    policy: policy
                        .rules
                        .get(v.rule as usize)
                        .cloned()
                        .unwrap_or_default(),
                    ..base.clone()
                });
            }
        }
    }
    rows
}

/// The node's interfaces: name → (ifindex, IPv4 addresses).
fn interfaces() -> BTreeMap<String, (u32, Vec<Ipv4Addr>)> {
    let mut out: BTreeMap<String, (u32, Vec<Ipv4Addr>)> = BTreeMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list freed below; every pointer is checked before use.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name)
                .to_string_lossy()
                .into_owned();
            let idx = libc::if_nametoindex(ifa.ifa_name);
            let e = out.entry(name).or_insert((idx, Vec::new()));
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                e.1.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The node's devices for host policies: `datapath.devices`, or the one holding the node address.
pub fn host_devices(intent: &NodeIntent) -> Result<Vec<(String, u32)>, PolicyApplyError> {
    let ifs = interfaces();
    if intent.datapath.devices.is_empty() {
        return ifs
            .iter()
            .find(|(_, (_, a))| a.contains(&intent.node_ip))
            .map(|(n, (i, _))| vec![(n.clone(), *i)])
            .ok_or_else(|| PolicyApplyError::Device {
                field: "nodeIp".into(),
                value: intent.node_ip.to_string(),
                reason: "no device of this node holds the node address (set datapath.devices)",
            });
    }
    intent
        .datapath
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            ifs.get(d)
                .map(|(idx, _)| (d.clone(), *idx))
                .ok_or_else(|| PolicyApplyError::Device {
                    field: format!("datapath.devices[{i}]"),
                    value: d.clone(),
                    reason: "no such device on this node",
                })
        })
        .collect()
}

/// Pods' host-side devices by pod address: the `<ip>/32 dev lxc…` routes the CNI plugin installs.
pub async fn pod_devices(
    nl: &cilia_datapath::netlink::Netlink,
) -> Result<BTreeMap<Ipv4Addr, (String, u32)>, PolicyApplyError> {
    let names: BTreeMap<u32, String> = nl.links().await?.into_iter().collect();
    Ok(nl
        .host_routes()
        .await?
        .into_iter()
        .filter_map(|(ip, oif)| {
            let name = names.get(&oif)?;
            name.starts_with(cilia_datapath::endpoints::ENDPOINT_IFACE_PREFIX)
                .then(|| (ip, (name.clone(), oif)))
        })
        .collect())
}

/// Policy in the agent: the enforcer (loaded on first use), the policy last applied (so a new
/// pod device gets its table without waiting for the next intent), and the event log.
pub struct PolicyAgent {
    pin_dir: PathBuf,
    enforcer: Option<Enforcer>,
    /// The intent's policy and node facts last applied.
    last: Option<(Arc<NodePolicy>, NodeIntent)>,
    pub log: Arc<Mutex<EventLog>>,
    /// `cilia-dbg bpf policy list`.
    pub rows: Arc<Mutex<Vec<PolicyRow>>>,
    monitor: Option<tokio::task::JoinHandle<()>>,
}

impl PolicyAgent {
    pub fn new(pin_dir: PathBuf) -> Self {
        PolicyAgent {
            pin_dir,
            enforcer: None,
            last: None,
            log: Arc::default(),
            rows: Arc::default(),
            monitor: None,
        }
    }

    /// Makes the policy maps and program links match the intent's policy; returns the number of
    /// kernel writes (0 when nothing changed, also after a restart: the maps and links are read
    /// back from their pins).
    pub async fn apply(
        &mut self,
        intent: &NodeIntent,
        nl: &cilia_datapath::netlink::Netlink,
    ) -> Result<u64, PolicyApplyError> {
        let policy = intent.policy.clone();
        // Nothing to enforce and nothing ever loaded (no pins from an earlier run): stay out of
        // the kernel entirely.
        if policy.endpoints.is_empty() && self.enforcer.is_none() && !self.pinned() {
            self.last = Some((policy, intent.clone()));
            return Ok(0);
        }
        let devices = Devices {
            pods: pod_devices(nl).await?,
            host: if policy.endpoints.contains_key(&EndpointRef::Host) {
                host_devices(intent)?
            } else {
                Vec::new()
            },
        };
        let writes = self.enforcer()?.apply(&policy, &devices)?;
        if writes > 0 {
            info!(
                writes,
                endpoints = policy.endpoints.len(),
                identities = policy.ipcache.len(),
                "policy applied"
            );
        }
        {
            let mut log = self.log.lock().unwrap();
            log.rules = policy.rules.clone();
            log.ifnames = devices
                .pods
                .values()
                .chain(devices.host.iter())
                .map(|(n, i)| (*i, n.clone()))
                .collect();
        }
        *self.rows.lock().unwrap() = policy_rows(&policy, &devices);
        self.last = Some((policy, intent.clone()));
        Ok(writes as u64)
    }

    /// Re-applies the last policy (pod devices came or went).
    pub async fn reapply(
        &mut self,
        nl: &cilia_datapath::netlink::Netlink,
    ) -> Result<u64, PolicyApplyError> {
        match self.last.clone() {
            Some((_, intent)) => self.apply(&intent, nl).await,
            None => Ok(0),
        }
    }

    /// Whether an earlier run left policy pins behind (then they must be read and cleaned).
    fn pinned(&self) -> bool {
        self.pin_dir
            .join(cilia_datapath::policy::POLICY_EP_MAP)
            .exists()
    }

    fn enforcer(&mut self) -> Result<&mut Enforcer, PolicyApplyError> {
        if self.enforcer.is_none() {
            self.enforcer = Some(Enforcer::load(&self.pin_dir)?);
            info!(pin_dir = %self.pin_dir.display(), "policy programs loaded");
            self.start_monitor();
        }
        Ok(self.enforcer.as_mut().expect("just loaded"))
    }

    /// Drains the pinned event ring into the log, for `cilia-dbg monitor`.
    fn start_monitor(&mut self) {
        if self.monitor.is_some() {
            return;
        }
        let mut reader = match EventReader::open(&self.pin_dir) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read policy events; cilia-dbg monitor shows none");
                return;
            }
        };
        let log = self.log.clone();
        self.monitor = Some(tokio::spawn(async move {
            loop {
                let events = reader.drain();
                if !events.is_empty() {
                    let mut l = log.lock().unwrap();
                    for e in &events {
                        l.push(e);
                    }
                }
                tokio::time::sleep(MONITOR_POLL).await;
            }
        }));
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
    fn policy_rows_name_device_port_and_policy() {
        let rows = policy_rows(&node_policy(), &devices());
        let pod: Vec<&PolicyRow> = rows
            .iter()
            .filter(|r| r.endpoint == "default/deathstar-1")
            .collect();
        assert_eq!(pod.len(), 1);
        assert_eq!(pod[0].interface.as_deref(), Some("lxc1234"));
        assert_eq!(
            (
                pod[0].port.as_str(),
                pod[0].proto.as_str(),
                pod[0].verdict.as_str()
            ),
            ("80", "TCP", "allow")
        );
        assert_eq!(pod[0].policy, "rule1");
        let unwired: Vec<&PolicyRow> = rows
            .iter()
            .filter(|r| r.endpoint == "default/not-wired-yet")
            .collect();
        assert_eq!(unwired[0].interface, None, "listed, but on no device yet");
        assert!(
            rows.iter()
                .any(|r| r.endpoint == "host" && r.interface.as_deref() == Some("eth0"))
        );
        // An enforced endpoint without entries says it drops everything.
        let mut np = node_policy();
        np.endpoints.values_mut().for_each(|p| p.entries.clear());
        let rows = policy_rows(&np, &devices());
        assert!(rows.iter().all(|r| r.verdict == "default-deny"), "{rows:?}");
    }

    #[test]
    fn event_log_hands_out_each_event_once_and_keeps_a_bounded_tail() {
        let mut log = EventLog::default();
        assert_eq!(log.since(None), (0, vec![]));
        let e = PolicyEvent {
            ep_id: 12,
            dir: Direction::Ingress,
            src: Ipv4Addr::new(10, 244, 1, 12),
            dst: Ipv4Addr::new(10, 244, 1, 10),
            sport: 40000,
            dport: 80,
            proto: 6,
            identity: 301,
            rule: None,
            verdict: EventVerdict::DefaultDeny,
        };
        log.ifnames.insert(12, "lxc1234".into());
        log.push(&e);
        log.push(&e);
        let (next, events) = log.since(Some(1));
        assert_eq!((next, events.len()), (2, 1));
        assert_eq!(events[0].interface, "lxc1234");
        assert_eq!(log.since(Some(2)).1, vec![]);
        for _ in 0..MONITOR_KEEP + 10 {
            log.push(&e);
        }
        assert_eq!(log.events.len(), MONITOR_KEEP);
        assert_eq!(log.since(Some(0)).1.len(), MONITOR_KEEP);
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
