//! Masquerading of pod traffic leaving the node (`enable-ipv4-masquerade`): what a node's intent asks
//! for ([`MasqDesired`]), the BPF map entries that implement it ([`MasqEntries`], diffed against what
//! is pinned), the iptables fallback (`CILIUM_POST_nat`, [`iptables_rules`]), which flows a draining
//! program still serves ([`drained_flows`]), and the `cilia-dbg` output shapes (`bpf ipmasq list`,
//! `bpf nat list`, the status `Masquerading:` line). Pure, except the [`IptablesMasq`] edge at the
//! bottom.
//!
//! # How a live switch keeps every connection (`cilia_agent::masq` drives it)
//! Netfilter conntrack tracks pod flows in every masquerading mode: under BPF masquerading
//! `CILIUM_POST_nat` holds only [`CONNTRACK_KEEPER_RULE`], whose conntrack match keeps conntrack on
//! in the node's namespace. So each flow has a conntrack entry from its first packet on, and
//! netfilter's NAT, which decides on that first packet only, stays out of flows it did not
//! translate then. BPF's egress program runs after netfilter (TC egress follows POSTROUTING) and
//! leaves alone anything that already has the node address; its ingress program restores replies
//! of its own flows before netfilter sees them.
//! ```text
//! iptables → BPF: programs on (flags ENABLED)   then  CILIUM_POST_nat: MASQUERADE → keeper only
//!                 new flows: netfilter's until the second commit, BPF's after; netfilter's own
//!                 flows keep their conntrack translation to their end.
//! BPF → iptables: CILIUM_POST_nat: keeper → MASQUERADE   then  flags ENABLED|DRAIN
//!                 new flows: BPF's until the commit, netfilter's after; BPF's flows keep their
//!                 NAT entries (drain: no new entry) until drained_flows() says they ended, then
//!                 the programs are detached.
//! ```
//! At no moment does a flow have two translations or none. The two also never share a node port
//! while both are live: BPF takes [`NAT_PORT_MIN`]..=[`NAT_PORT_MAX`], MASQUERADE TCP and UDP
//! [`IPTABLES_MASQ_PORTS`], so each reply reaches the translation of its own flow.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use cilia_api::config::ipmasq::{DEFAULT_NON_MASQUERADE_CIDRS, IpMasqAgentConfig, LINK_LOCAL_V4};
use cilia_model::intent::NodeIntent;
use ipnet::Ipv4Net;

use crate::lb_maps::{be32, ip_of};
use crate::maps::c;
use crate::masq_maps::{Masq4NatEntry, Masq4Tuple, MasqConfig};

/// The range NAT ports are taken from (Cilium's `NODEPORT_PORT_MIN_NAT`..`NODEPORT_PORT_MAX_NAT`).
pub const NAT_PORT_MIN: u16 = 32768;
pub const NAT_PORT_MAX: u16 = 65535;
/// The iptables chain of the fallback, and the `nat` POSTROUTING rule that jumps to it.
pub const POST_NAT_CHAIN: &str = "CILIUM_POST_nat";
pub const FEEDER_RULE: &str =
    "-A POSTROUTING -m comment --comment \"cilium-feeder: CILIUM_POST_nat\" -j CILIUM_POST_nat";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MasqError {
    #[error(
        "enable-ip-masq-agent=true requires enable-bpf-masquerade=true (enable-bpf-masquerade is false)"
    )]
    IpMasqAgentWithoutBpf,
    #[error("node {node}: masquerading is on but the node has no pod CIDR (podCIDR is unset)")]
    NoPodCidr { node: String },
    #[error("iptables: `{command}` failed: {stderr}")]
    Iptables { command: String, stderr: String },
    #[error("iptables: cannot run `{command}`: {reason} (install the iptables package)")]
    IptablesMissing { command: String, reason: String },
}

/// Who masquerades pod traffic on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqMode {
    /// `enable-ipv4-masquerade: false`: pods keep their address everywhere.
    Disabled,
    /// `enable-bpf-masquerade: true`: `tc_masq.o` on the node devices.
    Bpf,
    /// Masquerading without BPF: netfilter, through `CILIUM_POST_nat`.
    Iptables,
}

/// What a node's intent asks of masquerading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqDesired {
    pub mode: MasqMode,
    pub ip_masq_agent: bool,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Option<Ipv4Net>,
    /// `ipv4-native-routing-cidr`: never masqueraded (status shows it).
    pub native_routing_cidr: Option<Ipv4Net>,
    /// The ip-masq-agent set (`cilia_ipmasq_v4`, what `bpf ipmasq list` prints); empty without
    /// ip-masq-agent.
    pub ipmasq: BTreeSet<Ipv4Net>,
    /// Cluster destinations never masqueraded: the native routing CIDR, this node's address and pod
    /// CIDR, other nodes' addresses and pod CIDRs (`cilia_masq_cluster_v4`).
    pub cluster: BTreeSet<Ipv4Net>,
    /// Other nodes' addresses (iptables: one ACCEPT rule each).
    pub other_nodes: BTreeSet<Ipv4Addr>,
    /// Other nodes' pod CIDRs outside the native routing CIDR (iptables: one ACCEPT rule each).
    pub other_pod_cidrs: BTreeSet<Ipv4Net>,
    /// `devices`; empty: the device of the node address.
    pub devices: Vec<String>,
}

/// The ip-masq-agent set with Cilium's semantics: the listed prefixes (canonical, as
/// `cilia_api::config::ipmasq` parsed them) plus `169.254.0.0/16` unless `masqLinkLocal`.
pub fn ipmasq_set(non_masquerade: &[Ipv4Net], masq_link_local: bool) -> BTreeSet<Ipv4Net> {
    let mut set: BTreeSet<Ipv4Net> = non_masquerade.iter().map(Ipv4Net::trunc).collect();
    if !masq_link_local {
        set.insert(LINK_LOCAL_V4.parse().expect("literal"));
    }
    set
}

/// Cilium's default non-masquerade list (used when the ip-masq-agent file lists none).
pub fn default_non_masquerade() -> Vec<Ipv4Net> {
    DEFAULT_NON_MASQUERADE_CIDRS
        .iter()
        .map(|c| c.parse().expect("literal"))
        .collect()
}

fn host(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32")
}

impl MasqDesired {
    /// What `intent` asks for. The intent's `non_masquerade_cidrs` are taken as the operator sent
    /// them (it fills Cilium's defaults when the ip-masq-agent file is absent).
    pub fn from_intent(intent: &NodeIntent) -> Result<Self, MasqError> {
        let dp = &intent.datapath;
        let mode = match (dp.masquerade, dp.bpf_masquerade) {
            (false, _) => MasqMode::Disabled,
            (true, true) => MasqMode::Bpf,
            (true, false) => MasqMode::Iptables,
        };
        if dp.masquerade && dp.ip_masq_agent && !dp.bpf_masquerade {
            return Err(MasqError::IpMasqAgentWithoutBpf);
        }
        if mode != MasqMode::Disabled && intent.pod_cidr.is_none() {
            return Err(MasqError::NoPodCidr {
                node: intent.node.clone(),
            });
        }
        let ip_masq_agent = mode == MasqMode::Bpf && dp.ip_masq_agent;
        let ipmasq = if ip_masq_agent {
            ipmasq_set(&dp.non_masquerade_cidrs, dp.masq_link_local)
        } else {
            BTreeSet::new()
        };
        let mut cluster = BTreeSet::new();
        let mut other_nodes = BTreeSet::new();
        let mut other_pod_cidrs = BTreeSet::new();
        if let Some(n) = intent.native_routing_cidr {
            cluster.insert(n.trunc());
        }
        cluster.insert(host(intent.node_ip));
        if let Some(p) = intent.pod_cidr {
            cluster.insert(p.trunc());
        }
        for r in intent.routes.iter() {
            cluster.insert(r.dst.trunc());
            cluster.insert(host(r.via));
            other_nodes.insert(r.via);
            let inside_native = intent
                .native_routing_cidr
                .is_some_and(|n| n.contains(&r.dst));
            if !inside_native {
                other_pod_cidrs.insert(r.dst.trunc());
            }
        }
        Ok(MasqDesired {
            mode,
            ip_masq_agent,
            node_ip: intent.node_ip,
            pod_cidr: intent.pod_cidr.map(|p| p.trunc()),
            native_routing_cidr: intent.native_routing_cidr.map(|n| n.trunc()),
            ipmasq,
            cluster,
            other_nodes,
            other_pod_cidrs,
            devices: dp.devices.clone(),
        })
    }

    /// Replaces the ip-masq-agent set with a (re)loaded ip-masq-agent file (the agent's own copy of
    /// `/etc/config/ip-masq-agent`); no effect unless ip-masq-agent is on.
    pub fn with_agent_config(mut self, file: &IpMasqAgentConfig) -> Self {
        if self.ip_masq_agent {
            let v4: Vec<Ipv4Net> = file
                .non_masquerade_cidrs
                .iter()
                .filter_map(|n| match n {
                    ipnet::IpNet::V4(v4) => Some(*v4),
                    ipnet::IpNet::V6(_) => None,
                })
                .collect();
            self.ipmasq = ipmasq_set(&v4, file.masq_link_local);
        }
        self
    }

    /// Devices the BPF programs go on: `devices`, else `uplink` (the device of the node address).
    pub fn devices(&self, uplink: &str) -> Vec<String> {
        if self.devices.is_empty() {
            vec![uplink.to_string()]
        } else {
            self.devices.clone()
        }
    }

    /// The map entries that make BPF masquerading do what this asks. Outside [`MasqMode::Bpf`] the
    /// config's flags are 0, so attached programs pass everything.
    pub fn entries(&self, hash_seed: u32) -> MasqEntries {
        let bpf = self.mode == MasqMode::Bpf;
        let pod = self
            .pod_cidr
            .unwrap_or_else(|| Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 32).expect("/32"));
        MasqEntries {
            config: MasqConfig {
                node_addr: be32(self.node_ip),
                pod_net: be32(pod.network()),
                pod_mask: be32(pod.netmask()),
                hash_seed,
                port_min: NAT_PORT_MIN,
                port_max: NAT_PORT_MAX,
                flags: if bpf { c::MASQ_F_ENABLED } else { 0 },
            },
            ipmasq: if bpf {
                self.ipmasq.clone()
            } else {
                BTreeSet::new()
            },
            cluster: if bpf {
                self.cluster.clone()
            } else {
                BTreeSet::new()
            },
        }
    }
}

/// What the masquerading maps hold (apart from the flows in the NAT map).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MasqEntries {
    pub config: MasqConfig,
    pub ipmasq: BTreeSet<Ipv4Net>,
    pub cluster: BTreeSet<Ipv4Net>,
}

/// Prefix adds and removes of one LPM map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixDiff {
    pub upserts: BTreeSet<Ipv4Net>,
    pub deletes: BTreeSet<Ipv4Net>,
}

impl PrefixDiff {
    fn of(want: &BTreeSet<Ipv4Net>, have: &BTreeSet<Ipv4Net>) -> Self {
        PrefixDiff {
            upserts: want.difference(have).copied().collect(),
            deletes: have.difference(want).copied().collect(),
        }
    }
    fn len(&self) -> usize {
        self.upserts.len() + self.deletes.len()
    }
}

/// The writes that turn the pinned maps into [`MasqEntries`]. Applied as: prefixes added, config,
/// prefixes removed — so a reload never opens a window where a destination that stays exempt is
/// masqueraded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MasqDiff {
    pub config: Option<MasqConfig>,
    pub ipmasq: PrefixDiff,
    pub cluster: PrefixDiff,
}

impl MasqDiff {
    /// Map writes this diff makes.
    pub fn writes(&self) -> usize {
        usize::from(self.config.is_some()) + self.ipmasq.len() + self.cluster.len()
    }
    pub fn is_empty(&self) -> bool {
        self.writes() == 0
    }
}

pub fn masq_diff(want: &MasqEntries, have: &MasqEntries) -> MasqDiff {
    MasqDiff {
        config: (want.config != have.config).then_some(want.config),
        ipmasq: PrefixDiff::of(&want.ipmasq, &have.ipmasq),
        cluster: PrefixDiff::of(&want.cluster, &have.cluster),
    }
}

/// `cilia-dbg bpf ipmasq list`: (stdout, stderr) as Cilium prints them — a header and one prefix a
/// line, or `No entries found.` on stderr.
pub fn format_ipmasq_list(set: &BTreeSet<Ipv4Net>) -> (String, String) {
    if set.is_empty() {
        return (String::new(), "No entries found.\n".to_string());
    }
    let mut out = String::from("IP PREFIX/ADDRESS\n");
    for n in set {
        out.push_str(&format!("{n}\n"));
    }
    (out, String::new())
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

/// One `bpf nat list` line, Cilium's shape:
/// `TCP OUT 10.244.0.5:41234 -> 8.8.8.8:53 XLATE_SRC 172.18.0.2:40000 Created=12sec ago NeedsCT=0`.
/// `now_ns` is CLOCK_MONOTONIC (the clock of `created_ns`). NeedsCT is always 0: these flows are
/// not tracked by a BPF conntrack.
pub fn format_nat_entry(k: &Masq4Tuple, v: &Masq4NatEntry, now_ns: u64) -> String {
    let (dir, which) = if u32::from(k.dir) == c::MASQ_DIR_IN {
        ("IN", "DST")
    } else {
        ("OUT", "SRC")
    };
    format!(
        "{} {dir} {}:{} -> {}:{} XLATE_{which} {}:{} Created={}sec ago NeedsCT=0",
        proto_name(k.proto),
        ip_of(k.saddr),
        u16::from_be(k.sport),
        ip_of(k.daddr),
        u16::from_be(k.dport),
        ip_of(v.to_addr),
        u16::from_be(v.to_port),
        now_ns.saturating_sub(v.created_ns) / 1_000_000_000
    )
}

/// `cilia-dbg bpf nat list`: (stdout, stderr); entries in tuple order (Cilium prints map order).
pub fn format_nat_list(
    entries: &BTreeMap<Masq4Tuple, Masq4NatEntry>,
    now_ns: u64,
) -> (String, String) {
    if entries.is_empty() {
        return (String::new(), "No entries found.\n".to_string());
    }
    let mut out = String::new();
    for (k, v) in entries {
        out.push_str(&format_nat_entry(k, v, now_ns));
        out.push('\n');
    }
    (out, String::new())
}

/// The value of `cilia-dbg status`'s `Masquerading:` line, Cilium's shape (columns separated by
/// three spaces, as the tabwriter prints them): `BPF   [eth0]   10.244.0.0/16 [IPv4: Enabled, IPv6:
/// Disabled]`, `BPF (ip-masq-agent)   [eth0]   …`, `IPTables [IPv4: Enabled, IPv6: Disabled]`,
/// `Disabled`. `devices` are the devices the programs are attached to.
pub fn masquerading_status(want: &MasqDesired, devices: &[String]) -> String {
    const V4V6: &str = "[IPv4: Enabled, IPv6: Disabled]";
    match want.mode {
        MasqMode::Disabled => "Disabled".to_string(),
        MasqMode::Iptables => format!("IPTables {V4V6}"),
        MasqMode::Bpf => format!(
            "{}   [{}]   {} {V4V6}",
            if want.ip_masq_agent {
                "BPF (ip-masq-agent)"
            } else {
                "BPF"
            },
            devices.join(", "),
            want.native_routing_cidr
                .map(|n| n.to_string())
                .unwrap_or_default()
        ),
    }
}

/// The one rule of `CILIUM_POST_nat` under BPF masquerading (also while BPF drains with
/// masquerading off). It matches nothing that matters (`RETURN` of INVALID packets from a chain that
/// holds nothing else); it is there because a conntrack match keeps netfilter conntrack on in the
/// namespace, so pod flows are tracked from their first packet and a later switch to iptables
/// does not see BPF's flows as new (which MASQUERADE would translate a second time).
pub const CONNTRACK_KEEPER_RULE: &str = "-A CILIUM_POST_nat -m comment --comment \"cilia: conntrack tracks pod flows under BPF masquerading\" -m conntrack --ctstate INVALID -j RETURN";

/// How long a draining program keeps serving a flow after the flow's last packet — Cilium's
/// conntrack lifetimes (`bpf-ct-timeout-regular-tcp`, `-tcp-fin`, `-any`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTimeouts {
    /// TCP flows without a FIN or RST seen.
    pub tcp_ns: u64,
    /// TCP flows after a FIN or RST (the peer may still retransmit the last segments).
    pub closing_ns: u64,
    /// UDP and ICMP echo.
    pub other_ns: u64,
}

impl Default for DrainTimeouts {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        DrainTimeouts {
            tcp_ns: 21_600 * S,
            closing_ns: 10 * S,
            other_ns: 60 * S,
        }
    }
}

const PROTO_TCP: u8 = 6;

/// The reverse (IN) key of the OUT entry `out → v`.
fn reverse_key(out: &Masq4Tuple, v: &Masq4NatEntry) -> Masq4Tuple {
    Masq4Tuple {
        saddr: out.daddr,
        daddr: v.to_addr,
        sport: out.dport,
        dport: v.to_port,
        proto: out.proto,
        dir: c::MASQ_DIR_IN as u8,
        pad: [0; 2],
    }
}

fn expired(proto: u8, closing: bool, seen_ns: u64, now_ns: u64, t: &DrainTimeouts) -> bool {
    let idle = now_ns.saturating_sub(seen_ns);
    let limit = if proto != PROTO_TCP {
        t.other_ns
    } else if closing {
        t.closing_ns
    } else {
        t.tcp_ns
    };
    idle > limit
}

/// The NAT entries of flows that ended, by `now_ns` (CLOCK_MONOTONIC, the datapath's clock): a
/// flow is its OUT entry and the IN entry that points back at it, alive while either saw a packet
/// within its [`DrainTimeouts`] (closing if either saw a FIN or RST). An entry without its partner
/// (the LRU evicted one) ages alone. Returned keys are both entries of every ended flow.
pub fn drained_flows(
    entries: &BTreeMap<Masq4Tuple, Masq4NatEntry>,
    now_ns: u64,
    t: &DrainTimeouts,
) -> Vec<Masq4Tuple> {
    let mut paired = BTreeSet::new();
    let mut out = Vec::new();
    for (k, v) in entries {
        if u32::from(k.dir) != c::MASQ_DIR_OUT {
            continue;
        }
        let rk = reverse_key(k, v);
        let rev = entries
            .get(&rk)
            .filter(|r| r.to_addr == k.saddr && r.to_port == k.sport);
        let (seen, closing) = match rev {
            Some(r) => {
                paired.insert(rk);
                (v.seen_ns.max(r.seen_ns), v.closing() || r.closing())
            }
            None => (v.seen_ns, v.closing()),
        };
        if expired(k.proto, closing, seen, now_ns, t) {
            out.push(*k);
            if rev.is_some() {
                out.push(rk);
            }
        }
    }
    for (k, v) in entries {
        if u32::from(k.dir) == c::MASQ_DIR_IN
            && !paired.contains(k)
            && expired(k.proto, v.closing(), v.seen_ns, now_ns, t)
        {
            out.push(*k);
        }
    }
    out
}

/// The ports iptables' MASQUERADE gives TCP and UDP flows: below both the NodePort range
/// (30000-32767, whose replies the load balancer would take for new NodePort connections) and
/// BPF's range ([`NAT_PORT_MIN`]..): while BPF drains its flows after a switch to iptables, or
/// takes new ones while netfilter's live on after a switch back, the two never hand out the same
/// node port, so a reply always reaches the translation of its own flow. (Cilium's rule keeps the
/// pod's source port, which lies in BPF's range.) ICMP echo identifiers are not ranged: an echo
/// may collide for the seconds the two overlap.
pub const IPTABLES_MASQ_PORTS: &str = "1024-29999";

/// The `CILIUM_POST_nat` rules of the iptables fallback, in `iptables-save` form (so what is read
/// back compares equal): ACCEPT for other nodes and their pod CIDRs, then Cilium's catch-all
/// `cilium masquerade non-cluster`, for TCP and UDP with [`IPTABLES_MASQ_PORTS`]. Empty unless the
/// mode is [`MasqMode::Iptables`].
pub fn iptables_rules(want: &MasqDesired) -> Vec<String> {
    let Some(pod) = want.pod_cidr.filter(|_| want.mode == MasqMode::Iptables) else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    for n in &want.other_nodes {
        rules.push(format!(
            "-A {POST_NAT_CHAIN} -d {n}/32 -m comment --comment \"exclude traffic to cluster nodes from masquerade\" -j ACCEPT"
        ));
    }
    for p in &want.other_pod_cidrs {
        rules.push(format!(
            "-A {POST_NAT_CHAIN} -d {p} -m comment --comment \"exclude traffic to other nodes' pods from masquerade\" -j ACCEPT"
        ));
    }
    let exclude = want
        .native_routing_cidr
        .map(|n| format!(" ! -d {n}"))
        .unwrap_or_default();
    let head = format!("-A {POST_NAT_CHAIN} -s {pod}{exclude} ! -o cilium_+");
    let comment = "-m comment --comment \"cilium masquerade non-cluster\"";
    for proto in ["tcp", "udp"] {
        rules.push(format!(
            "{head} -p {proto} {comment} -j MASQUERADE --to-ports {IPTABLES_MASQ_PORTS}"
        ));
    }
    rules.push(format!("{head} {comment} -j MASQUERADE"));
    rules
}

/// `iptables-restore --noflush` input that replaces the chain's rules with `rules` in one commit.
pub fn iptables_restore_input(rules: &[String]) -> String {
    let mut s = format!("*nat\n:{POST_NAT_CHAIN} - [0:0]\n");
    for r in rules {
        s.push_str(r);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// What `iptables-save -t nat` shows of ours: (the chain exists, its rules, the feeder is there).
pub fn parse_iptables_save(save: &str) -> (bool, Vec<String>, bool) {
    let chain_decl = format!(":{POST_NAT_CHAIN} ");
    let rule_prefix = format!("-A {POST_NAT_CHAIN} ");
    let mut exists = false;
    let mut rules = Vec::new();
    let mut feeder = false;
    for line in save.lines() {
        if line.starts_with(&chain_decl) {
            exists = true;
        } else if line.starts_with(&rule_prefix) {
            rules.push(line.to_string());
        } else if line == FEEDER_RULE {
            feeder = true;
        }
    }
    (exists, rules, feeder)
}

/// The iptables edge of the fallback, in the current network namespace (the agent's: the node's).
#[derive(Debug, Clone)]
pub struct IptablesMasq {
    iptables: String,
    restore: String,
    save: String,
}

impl Default for IptablesMasq {
    fn default() -> Self {
        Self::new()
    }
}

impl IptablesMasq {
    /// Uses `iptables`, `iptables-restore`, `iptables-save` from PATH.
    pub fn new() -> Self {
        IptablesMasq {
            iptables: "iptables".into(),
            restore: "iptables-restore".into(),
            save: "iptables-save".into(),
        }
    }

    fn run(&self, prog: &str, args: &[&str], stdin: Option<&str>) -> Result<String, MasqError> {
        let command = format!("{prog} {}", args.join(" "));
        let mut child = Command::new(prog)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| MasqError::IptablesMissing {
                command: command.clone(),
                reason: e.to_string(),
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| MasqError::Iptables {
                    command: command.clone(),
                    stderr: e.to_string(),
                })?;
        }
        let out = child.wait_with_output().map_err(|e| MasqError::Iptables {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(MasqError::Iptables {
                command,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// What is installed now: (chain exists, its rules, feeder present).
    pub fn current(&self) -> Result<(bool, Vec<String>, bool), MasqError> {
        Ok(parse_iptables_save(&self.run(
            &self.save,
            &["-t", "nat"],
            None,
        )?))
    }

    /// Makes the installed rules those of `want` (none outside [`MasqMode::Iptables`]). Writes only
    /// when they differ; returns the number of changes made (0: nothing touched).
    pub fn apply(&self, want: &MasqDesired) -> Result<usize, MasqError> {
        let rules = iptables_rules(want);
        if rules.is_empty() {
            return self.remove();
        }
        let (exists, have, feeder) = self.current()?;
        let mut changes = 0;
        if !exists || have != rules {
            self.run(
                &self.restore,
                &["--noflush"],
                Some(&iptables_restore_input(&rules)),
            )?;
            changes += 1;
        }
        if !feeder {
            let feeder_args: Vec<&str> = feeder_args();
            let mut args = vec!["-t", "nat", "-I", "POSTROUTING", "1"];
            args.extend(feeder_args);
            self.run(&self.iptables, &args, None)?;
            changes += 1;
        }
        Ok(changes)
    }

    /// Removes the feeder and the chain; returns the number of changes made.
    pub fn remove(&self) -> Result<usize, MasqError> {
        let (exists, _, feeder) = match self.current() {
            Ok(c) => c,
            // No iptables at all: nothing of ours can be installed.
            Err(MasqError::IptablesMissing { .. }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut changes = 0;
        if feeder {
            let mut args = vec!["-t", "nat", "-D", "POSTROUTING"];
            args.extend(feeder_args());
            self.run(&self.iptables, &args, None)?;
            changes += 1;
        }
        if exists {
            self.run(&self.iptables, &["-t", "nat", "-F", POST_NAT_CHAIN], None)?;
            self.run(&self.iptables, &["-t", "nat", "-X", POST_NAT_CHAIN], None)?;
            changes += 1;
        }
        Ok(changes)
    }
}

fn feeder_args() -> Vec<&'static str> {
    vec![
        "-m",
        "comment",
        "--comment",
        "cilium-feeder: CILIUM_POST_nat",
        "-j",
        POST_NAT_CHAIN,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilia_model::intent::{NodeFacts, RouteIntent};
    use cilia_model::service::DatapathConfig;

    const NODE: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
    const PEER: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn intent(dp: DatapathConfig) -> NodeIntent {
        let mut routes = BTreeSet::new();
        routes.insert(RouteIntent {
            dst: net("10.244.1.0/24"),
            via: PEER,
        });
        let mut i = NodeIntent::from_facts(
            NodeFacts {
                node: "worker".into(),
                node_ip: NODE,
                pod_cidr: Some(net("10.244.0.0/24")),
                routing_mode: Default::default(),
                native_routing_cidr: Some(net("10.244.0.0/16")),
            },
            routes,
        );
        i.datapath = dp;
        i
    }

    fn bpf_agent(cidrs: Vec<Ipv4Net>, masq_link_local: bool) -> DatapathConfig {
        DatapathConfig {
            masquerade: true,
            bpf_masquerade: true,
            ip_masq_agent: true,
            non_masquerade_cidrs: cidrs,
            masq_link_local,
            ..DatapathConfig::default()
        }
    }

    fn set(v: &[&str]) -> BTreeSet<Ipv4Net> {
        v.iter().map(|s| net(s)).collect()
    }

    // An absent ip-masq-agent file means Cilium's eleven ranges plus link-local.
    #[test]
    fn defaults_are_ciliums_list_plus_link_local() {
        let file = IpMasqAgentConfig::parse("").unwrap().config;
        let want = MasqDesired::from_intent(&intent(bpf_agent(vec![], false)))
            .unwrap()
            .with_agent_config(&file);
        let mut expect: BTreeSet<Ipv4Net> = default_non_masquerade().into_iter().collect();
        expect.insert(net("169.254.0.0/16"));
        assert_eq!(want.ipmasq, expect);
        assert_eq!(want.ipmasq.len(), 12);
        // The operator's defaulted list gives the same set.
        let from_intent =
            MasqDesired::from_intent(&intent(bpf_agent(default_non_masquerade(), false))).unwrap();
        assert_eq!(from_intent.ipmasq, expect);
    }

    // masqLinkLocal: true masquerades link-local: 169.254.0.0/16 is not added.
    #[test]
    fn masq_link_local_drops_link_local() {
        let want = MasqDesired::from_intent(&intent(bpf_agent(vec![net("192.168.0.0/16")], true)))
            .unwrap();
        assert_eq!(want.ipmasq, set(&["192.168.0.0/16"]));
        let want = MasqDesired::from_intent(&intent(bpf_agent(vec![net("192.168.0.0/16")], false)))
            .unwrap();
        assert_eq!(want.ipmasq, set(&["169.254.0.0/16", "192.168.0.0/16"]));
    }

    // The seed's non-canonical 10.244.0.0/8 ends up as 10.0.0.0/8 in the map (with the parser's
    // warning), and a non-canonical prefix reaching the intent is truncated the same way.
    #[test]
    fn seed_non_canonical_prefix() {
        let parsed =
            IpMasqAgentConfig::parse(r#"{"nonMasqueradeCIDRs":["10.244.0.0/8"]}"#).unwrap();
        assert!(parsed.warnings[0].to_string().contains("10.0.0.0/8"));
        let want = MasqDesired::from_intent(&intent(bpf_agent(vec![], false)))
            .unwrap()
            .with_agent_config(&parsed.config);
        assert_eq!(want.ipmasq, set(&["10.0.0.0/8", "169.254.0.0/16"]));
        let raw = Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 8).unwrap();
        let want = MasqDesired::from_intent(&intent(bpf_agent(vec![raw], false))).unwrap();
        assert_eq!(want.ipmasq, set(&["10.0.0.0/8", "169.254.0.0/16"]));
        let (out, err) = format_ipmasq_list(&want.ipmasq);
        assert_eq!(out, "IP PREFIX/ADDRESS\n10.0.0.0/8\n169.254.0.0/16\n");
        assert_eq!(err, "");
    }

    // Modes: off, BPF, iptables; ip-masq-agent without BPF masquerading is refused, naming both keys.
    #[test]
    fn modes_and_refusals() {
        let off = MasqDesired::from_intent(&intent(DatapathConfig::default())).unwrap();
        assert_eq!(off.mode, MasqMode::Disabled);
        assert!(off.ipmasq.is_empty());
        assert_eq!(off.entries(1).config.flags, 0);
        let ipt = DatapathConfig {
            masquerade: true,
            ..DatapathConfig::default()
        };
        let d = MasqDesired::from_intent(&intent(ipt.clone())).unwrap();
        assert_eq!(d.mode, MasqMode::Iptables);
        let e = d.entries(1);
        assert_eq!(e.config.flags, 0, "BPF stays off in iptables mode");
        assert!(e.ipmasq.is_empty() && e.cluster.is_empty());
        let err = MasqDesired::from_intent(&intent(DatapathConfig {
            ip_masq_agent: true,
            ..ipt
        }))
        .unwrap_err();
        assert!(err.to_string().contains("enable-bpf-masquerade"), "{err}");
        let mut no_pods = intent(bpf_agent(vec![], false));
        no_pods.pod_cidr = None;
        let err = MasqDesired::from_intent(&no_pods).unwrap_err();
        assert!(err.to_string().contains("podCIDR"), "{err}");
    }

    // BPF without ip-masq-agent: nothing in cilia_ipmasq_v4; the cluster set excludes the native
    // routing CIDR, this node, the peer node and its pod CIDR.
    #[test]
    fn cluster_set_and_config() {
        let d = MasqDesired::from_intent(&intent(DatapathConfig {
            masquerade: true,
            bpf_masquerade: true,
            ..DatapathConfig::default()
        }))
        .unwrap();
        assert!(!d.ip_masq_agent);
        assert!(d.ipmasq.is_empty());
        assert_eq!(
            d.cluster,
            set(&[
                "10.244.0.0/16",
                "10.244.0.0/24",
                "10.244.1.0/24",
                "172.18.0.2/32",
                "172.18.0.3/32"
            ])
        );
        let e = d.entries(7);
        assert_eq!(e.config.node_addr, be32(NODE));
        assert_eq!(e.config.pod_net, be32(Ipv4Addr::new(10, 244, 0, 0)));
        assert_eq!(e.config.pod_mask, be32(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(e.config.flags, c::MASQ_F_ENABLED);
        assert_eq!((e.config.port_min, e.config.port_max), (32768, 65535));
        assert_eq!(format_ipmasq_list(&d.ipmasq).1, "No entries found.\n");
    }

    // A config reload changes only the prefixes that changed; an unchanged one writes nothing.
    #[test]
    fn reload_diffs_only_changes() {
        let a = MasqDesired::from_intent(&intent(bpf_agent(vec![net("10.0.0.0/8")], false)))
            .unwrap()
            .entries(1);
        let b = MasqDesired::from_intent(&intent(bpf_agent(
            vec![net("10.0.0.0/8"), net("192.168.0.0/16")],
            true,
        )))
        .unwrap()
        .entries(1);
        assert!(masq_diff(&a, &a).is_empty());
        let d = masq_diff(&b, &a);
        assert_eq!(d.ipmasq.upserts, set(&["192.168.0.0/16"]));
        assert_eq!(d.ipmasq.deletes, set(&["169.254.0.0/16"]));
        assert!(d.cluster.upserts.is_empty() && d.cluster.deletes.is_empty());
        assert_eq!(d.config, None);
        assert_eq!(d.writes(), 2);
        let from_empty = masq_diff(&a, &MasqEntries::default());
        assert_eq!(from_empty.writes(), 1 + 2 + 5);
    }

    #[test]
    fn status_line_shapes() {
        let mut d = MasqDesired::from_intent(&intent(bpf_agent(vec![], false))).unwrap();
        let devs = vec!["eth0".to_string()];
        assert_eq!(
            masquerading_status(&d, &devs),
            "BPF (ip-masq-agent)   [eth0]   10.244.0.0/16 [IPv4: Enabled, IPv6: Disabled]"
        );
        d.ip_masq_agent = false;
        assert_eq!(
            masquerading_status(&d, &["eth0".into(), "eth1".into()]),
            "BPF   [eth0, eth1]   10.244.0.0/16 [IPv4: Enabled, IPv6: Disabled]"
        );
        d.mode = MasqMode::Iptables;
        assert_eq!(
            masquerading_status(&d, &devs),
            "IPTables [IPv4: Enabled, IPv6: Disabled]"
        );
        d.mode = MasqMode::Disabled;
        assert_eq!(masquerading_status(&d, &devs), "Disabled");
    }

    // The iptables fallback: nodes and their pods accepted first, then Cilium's catch-all; nothing in
    // any other mode.
    #[test]
    fn iptables_rules_exact() {
        let ipt = DatapathConfig {
            masquerade: true,
            ..DatapathConfig::default()
        };
        let mut i = intent(ipt);
        let d = MasqDesired::from_intent(&i).unwrap();
        assert_eq!(
            iptables_rules(&d),
            vec![
                "-A CILIUM_POST_nat -d 172.18.0.3/32 -m comment --comment \"exclude traffic to cluster nodes from masquerade\" -j ACCEPT".to_string(),
                "-A CILIUM_POST_nat -s 10.244.0.0/24 ! -d 10.244.0.0/16 ! -o cilium_+ -p tcp -m comment --comment \"cilium masquerade non-cluster\" -j MASQUERADE --to-ports 1024-29999".to_string(),
                "-A CILIUM_POST_nat -s 10.244.0.0/24 ! -d 10.244.0.0/16 ! -o cilium_+ -p udp -m comment --comment \"cilium masquerade non-cluster\" -j MASQUERADE --to-ports 1024-29999".to_string(),
                "-A CILIUM_POST_nat -s 10.244.0.0/24 ! -d 10.244.0.0/16 ! -o cilium_+ -m comment --comment \"cilium masquerade non-cluster\" -j MASQUERADE".to_string(),
            ]
        );
        // Disjoint from BPF's ports and below the NodePort range.
        let (lo, hi) = IPTABLES_MASQ_PORTS.split_once('-').unwrap();
        let (lo, hi): (u16, u16) = (lo.parse().unwrap(), hi.parse().unwrap());
        assert!(lo >= 1024 && hi < 30000 && hi < NAT_PORT_MIN);
        assert_eq!(
            iptables_restore_input(&iptables_rules(&d)),
            format!(
                "*nat\n:CILIUM_POST_nat - [0:0]\n{}\nCOMMIT\n",
                iptables_rules(&d).join("\n")
            )
        );
        i.native_routing_cidr = None;
        let d = MasqDesired::from_intent(&i).unwrap();
        assert_eq!(
            iptables_rules(&d)[1],
            "-A CILIUM_POST_nat -d 10.244.1.0/24 -m comment --comment \"exclude traffic to other nodes' pods from masquerade\" -j ACCEPT"
        );
        assert_eq!(
            iptables_rules(&d)[4],
            "-A CILIUM_POST_nat -s 10.244.0.0/24 ! -o cilium_+ -m comment --comment \"cilium masquerade non-cluster\" -j MASQUERADE"
        );
        let bpf = MasqDesired::from_intent(&intent(bpf_agent(vec![], false))).unwrap();
        assert!(iptables_rules(&bpf).is_empty());
        let off = MasqDesired::from_intent(&intent(DatapathConfig::default())).unwrap();
        assert!(iptables_rules(&off).is_empty());
    }

    #[test]
    fn iptables_save_is_read_back() {
        let save = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:CILIUM_POST_nat - [0:0]\n-A POSTROUTING -m comment --comment \"cilium-feeder: CILIUM_POST_nat\" -j CILIUM_POST_nat\n-A CILIUM_POST_nat -s 10.244.0.0/24 -j MASQUERADE\nCOMMIT\n";
        let (exists, rules, feeder) = parse_iptables_save(save);
        assert!(exists && feeder);
        assert_eq!(
            rules,
            vec!["-A CILIUM_POST_nat -s 10.244.0.0/24 -j MASQUERADE"]
        );
        assert_eq!(
            parse_iptables_save("*nat\nCOMMIT\n"),
            (false, vec![], false)
        );
    }

    #[test]
    fn nat_list_lines() {
        let out = Masq4Tuple {
            saddr: be32(Ipv4Addr::new(10, 244, 0, 5)),
            daddr: be32(Ipv4Addr::new(8, 8, 8, 8)),
            sport: 41234u16.to_be(),
            dport: 53u16.to_be(),
            proto: 17,
            dir: c::MASQ_DIR_OUT as u8,
            pad: [0; 2],
        };
        let fwd = Masq4NatEntry {
            to_addr: be32(NODE),
            to_port: 40000u16.to_be(),
            flags: 0,
            created_ns: 1_000_000_000,
            seen_ns: 1_000_000_000,
        };
        let inn = Masq4Tuple {
            saddr: out.daddr,
            daddr: be32(NODE),
            sport: out.dport,
            dport: fwd.to_port,
            proto: 17,
            dir: c::MASQ_DIR_IN as u8,
            pad: [0; 2],
        };
        let rev = Masq4NatEntry {
            to_addr: out.saddr,
            to_port: out.sport,
            flags: 0,
            created_ns: 1_000_000_000,
            seen_ns: 1_000_000_000,
        };
        let m: BTreeMap<_, _> = [(out, fwd), (inn, rev)].into_iter().collect();
        let (text, err) = format_nat_list(&m, 13_500_000_000);
        assert_eq!(err, "");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(
            &"UDP OUT 10.244.0.5:41234 -> 8.8.8.8:53 XLATE_SRC 172.18.0.2:40000 Created=12sec ago NeedsCT=0"
        ), "{text}");
        assert!(lines.contains(
            &"UDP IN 8.8.8.8:53 -> 172.18.0.2:40000 XLATE_DST 10.244.0.5:41234 Created=12sec ago NeedsCT=0"
        ), "{text}");
        assert_eq!(
            format_nat_list(&BTreeMap::new(), 0).1,
            "No entries found.\n"
        );
    }

    // Which flows a draining program still serves: a flow is alive while either of its entries
    // saw a packet within its protocol's timeout; a FIN or RST shortens TCP's to the closing one;
    // a flow's two entries go together, a lone entry ages alone.
    #[test]
    fn drained_flows_follow_conntrack_lifetimes() {
        use crate::masq_bpf::nat_pair;
        const S: u64 = 1_000_000_000;
        let t = DrainTimeouts::default();
        let ext = Ipv4Addr::new(203, 0, 113, 10);
        let pod = Ipv4Addr::new(10, 244, 0, 5);
        let flow = |sport: u16, proto: u8, port: u16, seen: u64| {
            let mut p = nat_pair((pod, sport), (ext, 443), proto, NODE, port, 0);
            for (_, v) in p.iter_mut() {
                v.seen_ns = seen;
            }
            p
        };
        let now = 30_000 * S;
        let mut m = BTreeMap::new();
        // TCP, last packet 1 h ago: alive (6 h).
        let live_tcp = flow(1000, PROTO_TCP, 40001, now - 3600 * S);
        // TCP, FIN seen (on the reply side only), 11 s ago: ended.
        let mut closed_tcp = flow(1001, PROTO_TCP, 40002, now - 11 * S);
        closed_tcp[1].1.flags = c::MASQ_NAT_F_CLOSING as u16;
        // TCP, FIN seen 5 s ago: still closing.
        let mut closing_tcp = flow(1002, PROTO_TCP, 40003, now - 5 * S);
        closing_tcp[0].1.flags = c::MASQ_NAT_F_CLOSING as u16;
        // UDP: 61 s idle ended, except that its reverse entry saw a packet 2 s ago.
        let mut udp = flow(1003, 17, 40004, now - 61 * S);
        udp[1].1.seen_ns = now - 2 * S;
        let old_udp = flow(1004, 17, 40005, now - 61 * S);
        // TCP silent for more than 6 h.
        let dead_tcp = flow(1005, PROTO_TCP, 40006, now - 21_601 * S);
        // A lone reverse entry (its forward one evicted), closed 20 s ago.
        let mut lone = flow(1006, PROTO_TCP, 40007, now - 20 * S);
        lone[1].1.flags = c::MASQ_NAT_F_CLOSING as u16;
        for p in [live_tcp, closed_tcp, closing_tcp, udp, old_udp, dead_tcp] {
            m.extend(p);
        }
        m.insert(lone[1].0, lone[1].1);
        let gone: BTreeSet<Masq4Tuple> = drained_flows(&m, now, &t).into_iter().collect();
        let want: BTreeSet<Masq4Tuple> = [closed_tcp, old_udp, dead_tcp]
            .iter()
            .flat_map(|p| [p[0].0, p[1].0])
            .chain([lone[1].0])
            .collect();
        assert_eq!(gone, want);
        // A reverse entry that points at another flow (its port was taken over) is not this flow's.
        let mut stolen = flow(1007, PROTO_TCP, 40008, now - 21_601 * S);
        stolen[1].1.to_port = 999u16.to_be();
        stolen[1].1.seen_ns = now;
        let m: BTreeMap<_, _> = stolen.into_iter().collect();
        assert_eq!(drained_flows(&m, now, &t), vec![stolen[0].0]);
        assert!(drained_flows(&BTreeMap::new(), now, &t).is_empty());
    }
}
