//! `CiliumClusterwideNetworkPolicy` compilation: rules in, per node out — the identity of every
//! address the node may see (ipcache) and, for each of its endpoints a rule selects, which
//! directions are enforced and the verdict for each (peer identity, protocol, port prefix).
//!
//! Semantics follow `cilium-compat.md` §3:
//! - an endpoint selected by a rule for a direction becomes default-deny in that direction
//!   (`enableDefaultDeny` unset = the rule has rules in that direction; any selecting rule enabling
//!   it wins); `policyEnforcementMode` `always` enforces unselected endpoints too, `never` nothing;
//! - allow rules are unioned; a deny always beats an allow, whatever rule or policy it comes from;
//! - L3 (peers) and L4 (`toPorts`) of one rule are ANDed, list items ORed; no peer field = any peer;
//!   no `toPorts` = every protocol and port; protocol `ANY` = TCP, UDP and SCTP; port 0 = all;
//! - entities map to reserved identities; CIDR peers select the CIDR identities inside them and
//!   outside their `except`s, never cluster endpoints or nodes.
//!
//! The datapath looks a peer up with its own identity and then with the wildcard identity, and the
//! longest port prefix wins. The compiler makes that exact: wildcard entries are copied into every
//! identity's table, and an allow that a deny covers becomes that deny.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::selector::{KeySyntax, LabelSelector};

/// Reserved identities (Cilium's numbers).
pub const ID_ANY: u32 = 0;
pub const ID_HOST: u32 = 1;
pub const ID_WORLD: u32 = 2;
pub const ID_REMOTE_NODE: u32 = 6;
pub const ID_KUBE_APISERVER: u32 = 7;
/// Pod identities are cluster-wide, in `[ID_POD_MIN, ID_LOCAL_MIN)`.
pub const ID_POD_MIN: u32 = 256;
/// Node-local identities (CIDRs, address roles combined) start here, as Cilium's local scope.
pub const ID_LOCAL_MIN: u32 = 1 << 24;

/// The label pods carry with their namespace (Cilium's).
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Prefix of namespace labels as pods carry them.
pub const LABEL_NAMESPACE_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// `fromEntities` / `toEntities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    All,
    World,
    WorldIpv4,
    WorldIpv6,
    Cluster,
    Host,
    RemoteNode,
    KubeApiserver,
    Ingress,
    Health,
    Init,
    Unmanaged,
    None,
}

/// One peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// Pods whose labels (own, namespace, namespace labels) the selector matches; keys may carry
    /// Cilium's `k8s:` source prefix.
    Endpoints(LabelSelector),
    Entity(Entity),
    Cidr {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
}

/// L4 protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum L4Proto {
    Tcp,
    Udp,
    Sctp,
}

impl L4Proto {
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Sctp => 132,
        }
    }
}

/// One `toPorts[].ports[]` entry (named ports resolved by the operator, or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMatch {
    /// `None`: ANY (TCP, UDP and SCTP).
    pub proto: Option<L4Proto>,
    /// 0: every port.
    pub port: u16,
    pub end_port: Option<u16>,
}

/// One entry of `ingress` / `ingressDeny` / `egress` / `egressDeny`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRule {
    /// `None`: the entry names no peer (any peer).
    #[serde(default)]
    pub peers: Option<Vec<Peer>>,
    /// Empty: every protocol and port.
    #[serde(default)]
    pub ports: Vec<PortMatch>,
}

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    Endpoints(LabelSelector),
    /// Host policy: the nodes themselves.
    Nodes(LabelSelector),
}

/// One rule (`spec` or `specs[i]`) of a policy, validated and converted by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// The policy's name (events and listings name it).
    pub policy: String,
    pub subject: Subject,
    #[serde(default)]
    pub ingress: Vec<PeerRule>,
    #[serde(default)]
    pub ingress_deny: Vec<PeerRule>,
    #[serde(default)]
    pub egress: Vec<PeerRule>,
    #[serde(default)]
    pub egress_deny: Vec<PeerRule>,
    #[serde(default)]
    pub default_deny_ingress: Option<bool>,
    #[serde(default)]
    pub default_deny_egress: Option<bool>,
}

/// A pod as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPod {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels of its namespace.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
}

impl PolicyPod {
    /// Labels selectors match: its own, its namespace, its namespace's labels.
    pub fn policy_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.labels.clone();
        l.insert(LABEL_POD_NAMESPACE.into(), self.namespace.clone());
        for (k, v) in &self.namespace_labels {
            l.insert(format!("{LABEL_NAMESPACE_PREFIX}{k}"), v.clone());
        }
        l
    }
}

/// A node as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
}

/// `policyEnforcementMode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    #[default]
    Default,
    Always,
    Never,
}

/// Cluster-wide inputs besides the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyEnv {
    pub mode: EnforcementMode,
    pub audit: bool,
    /// Addresses of the Kubernetes API server (`default/kubernetes` endpoints).
    pub apiserver_ips: Vec<Ipv4Addr>,
    /// Host firewall on (`enable-host-firewall`): host policies are enforced.
    pub host_firewall: bool,
}

/// Direction seen from the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Ingress,
    Egress,
}

/// One key of an endpoint's table: peer identity, protocol (0: any, port ignored), port prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryKey {
    pub dir: Dir,
    pub identity: u32,
    pub proto: u8,
    pub port: u16,
    /// Leading bits of `port` that must match (16: exactly, 0: any).
    pub bits: u8,
}

impl EntryKey {
    /// Whether every packet this key matches is also matched by `other` (same direction and
    /// identity).
    fn covered_by(&self, other: &EntryKey) -> bool {
        if other.proto == 0 {
            return true;
        }
        if self.proto != other.proto || other.bits > self.bits {
            return false;
        }
        let mask = if other.bits == 0 {
            0
        } else {
            u16::MAX << (16 - other.bits)
        };
        self.port & mask == other.port & mask
    }
}

/// The verdict of an entry and the rule (index into [`NodePolicy::rules`]) behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryVerdict {
    pub deny: bool,
    pub rule: u32,
}

/// An endpoint's compiled policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointPolicy {
    /// The pod's address (the agent finds its device by it); `None` for the host.
    pub ip: Option<Ipv4Addr>,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub audit: bool,
    #[serde(with = "pairs")]
    pub entries: BTreeMap<EntryKey, EntryVerdict>,
}

/// Maps with structured keys, (de)serialized as lists of `[key, value]` pairs: JSON keys must be
/// strings, and the digest and status pages write these as JSON.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// Which endpoint of the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EndpointRef {
    /// `namespace/name`.
    Pod(String),
    /// The node itself (host policy, enforced on its devices).
    Host,
}

/// Everything the node's agent enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodePolicy {
    /// Prefix → identity of the addresses under it (longest prefix wins; unknown = world).
    pub ipcache: BTreeMap<Ipv4Net, u32>,
    #[serde(with = "pairs")]
    pub endpoints: BTreeMap<EndpointRef, EndpointPolicy>,
    /// Rule names (`policy` or `policy/specs[i]`), indexed by [`EntryVerdict::rule`].
    pub rules: Vec<String>,
}

fn stable_hash(s: &str) -> u64 {
    // FNV-1a: stable across runs and builds (std's hasher is seeded).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Identities of label sets: derived from a hash of the labels so a new pod never renumbers
/// others; collisions are resolved by probing in the labels' sorted order.
fn allocate(keys: &BTreeSet<String>, min: u32, span: u32) -> BTreeMap<String, u32> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for k in keys {
        let mut id = min + (stable_hash(k) % span as u64) as u32;
        while !taken.insert(id) {
            id = min + (id - min + 1) % span;
        }
        out.insert(k.clone(), id);
    }
    out
}

fn label_key(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Cluster-wide pod identities, by the labels key.
pub fn pod_identities(pods: &[PolicyPod]) -> BTreeMap<String, u32> {
    let keys = pods.iter().map(|p| label_key(&p.policy_labels())).collect();
    allocate(&keys, ID_POD_MIN, ID_LOCAL_MIN - ID_POD_MIN)
}

/// The roles an address plays, which decide its identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Roles {
    host: bool,
    remote_node: bool,
    apiserver: bool,
}

/// What an identity of this node stands for (for entity and selector matching).
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdentityKind {
    Pod(BTreeMap<String, String>),
    Address(Roles),
    Cidr(Ipv4Net),
}

/// Compiles the rules for `node`.
pub fn compile_node(
    node: &str,
    rules: &[PolicyRule],
    pods: &[PolicyPod],
    nodes: &[PolicyNode],
    env: &PolicyEnv,
) -> NodePolicy {
    let mut out = NodePolicy::default();
    if env.mode == EnforcementMode::Never {
        return out;
    }
    let Some(me) = nodes.iter().find(|n| n.name == node) else {
        return out;
    };
    // Identities this node knows.
    let pod_ids = pod_identities(pods);
    let mut kinds: BTreeMap<u32, IdentityKind> = BTreeMap::new();
    for p in pods {
        let labels = p.policy_labels();
        let id = pod_ids[&label_key(&labels)];
        out.ipcache.insert(Ipv4Net::from(p.ip), id);
        kinds.insert(id, IdentityKind::Pod(labels));
    }
    let mut roles: BTreeMap<Ipv4Addr, Roles> = BTreeMap::new();
    for n in nodes {
        let r = roles.entry(n.ip).or_default();
        if n.name == me.name {
            r.host = true;
        } else {
            r.remote_node = true;
        }
    }
    for ip in &env.apiserver_ips {
        roles.entry(*ip).or_default().apiserver = true;
    }
    for (ip, r) in &roles {
        let id = match (r.host, r.remote_node, r.apiserver) {
            (true, _, false) => ID_HOST,
            (false, true, false) => ID_REMOTE_NODE,
            (false, false, true) => ID_KUBE_APISERVER,
            _ => {
                let key = format!("roles:{}{}{}", r.host, r.remote_node, r.apiserver);
                ID_LOCAL_MIN + (stable_hash(&key) % (1 << 16)) as u32
            }
        };
        out.ipcache.insert(Ipv4Net::from(*ip), id);
        kinds.insert(id, IdentityKind::Address(*r));
    }
    // CIDR identities for every prefix the rules name (and their excepts).
    let mut prefixes = BTreeSet::new();
    for r in rules {
        for pr in r
            .ingress
            .iter()
            .chain(&r.ingress_deny)
            .chain(&r.egress)
            .chain(&r.egress_deny)
        {
            for peer in pr.peers.iter().flatten() {
                if let Peer::Cidr { cidr, except } = peer {
                    prefixes.insert(cidr.trunc());
                    prefixes.extend(except.iter().map(|e| e.trunc()));
                }
            }
        }
    }
    let cidr_keys: BTreeSet<String> = prefixes.iter().map(|p| format!("cidr:{p}")).collect();
    let cidr_ids = allocate(&cidr_keys, ID_LOCAL_MIN + (1 << 16), 1 << 20);
    for p in &prefixes {
        // An address with a cluster role keeps it (its /32 is longer than any CIDR's anyway
        // unless the CIDR is a /32 of it: cluster entities are never CIDR-selected).
        let net = *p;
        if net.prefix_len() == 32 && out.ipcache.contains_key(&net) {
            continue;
        }
        let id = cidr_ids[&format!("cidr:{p}")];
        out.ipcache.insert(net, id);
        kinds.insert(id, IdentityKind::Cidr(net));
    }

    let peer_ids = |peer: &Peer| -> BTreeSet<u32> {
        // Addresses the ipcache does not know are the world.
        let world =
            matches!(peer, Peer::Entity(Entity::World | Entity::WorldIpv4)).then_some(ID_WORLD);
        kinds
            .iter()
            .filter(|(_, k)| match (peer, k) {
                (Peer::Endpoints(sel), IdentityKind::Pod(labels)) => {
                    sel.matches_with(labels, KeySyntax::CiliumSource)
                }
                (Peer::Endpoints(_), _) => false,
                (Peer::Entity(e), k) => entity_matches(*e, k),
                (Peer::Cidr { cidr, except }, IdentityKind::Cidr(p)) => {
                    cidr.contains(p) && !except.iter().any(|e| e.contains(p))
                }
                (Peer::Cidr { .. }, _) => false,
            })
            .map(|(id, _)| *id)
            .chain(world)
            .collect()
    };
    let selects_all = |peer: &Peer| matches!(peer, Peer::Entity(Entity::All));

    // Endpoints of this node and the rules selecting each.
    let mut targets: BTreeMap<EndpointRef, (BTreeMap<String, String>, Ipv4Addr)> = BTreeMap::new();
    for p in pods.iter().filter(|p| p.node == me.name) {
        targets.insert(
            EndpointRef::Pod(format!("{}/{}", p.namespace, p.name)),
            (p.policy_labels(), p.ip),
        );
    }
    let mut rule_names: Vec<String> = Vec::new();

    let mut compiled: BTreeMap<EndpointRef, EndpointPolicy> = BTreeMap::new();
    let mut host_rules = Vec::new();
    let mut ep_rules: BTreeMap<EndpointRef, Vec<&PolicyRule>> = BTreeMap::new();
    for r in rules {
        match &r.subject {
            Subject::Endpoints(sel) => {
                for (ep, (labels, _)) in &targets {
                    if sel.matches_with(labels, KeySyntax::CiliumSource) {
                        ep_rules.entry(ep.clone()).or_default().push(r);
                    }
                }
            }
            Subject::Nodes(sel) => {
                if env.host_firewall && sel.matches(&me.labels) {
                    host_rules.push(r);
                }
            }
        }
    }
    if !host_rules.is_empty() {
        ep_rules.insert(EndpointRef::Host, host_rules);
    }
    if env.mode == EnforcementMode::Always {
        for ep in targets.keys() {
            ep_rules.entry(ep.clone()).or_default();
        }
    }
    for (ep, rs) in ep_rules {
        let mut pol = EndpointPolicy {
            ip: targets.get(&ep).map(|(_, ip)| *ip),
            audit: env.audit,
            ..Default::default()
        };
        let always = env.mode == EnforcementMode::Always;
        pol.ingress_enforced = always
            || rs.iter().any(|r| {
                r.default_deny_ingress
                    .unwrap_or(!r.ingress.is_empty() || !r.ingress_deny.is_empty())
            });
        pol.egress_enforced = always
            || rs.iter().any(|r| {
                r.default_deny_egress
                    .unwrap_or(!r.egress.is_empty() || !r.egress_deny.is_empty())
            });
        // Raw entries per (dir, identity).
        let mut raw: BTreeMap<(Dir, u32), BTreeMap<EntryKey, EntryVerdict>> = BTreeMap::new();
        for r in &rs {
            let idx = rule_index(r, &mut rule_names);
            for (dir, deny, list) in [
                (Dir::Ingress, false, &r.ingress),
                (Dir::Ingress, true, &r.ingress_deny),
                (Dir::Egress, false, &r.egress),
                (Dir::Egress, true, &r.egress_deny),
            ] {
                for pr in list {
                    let ids: BTreeSet<u32> = match &pr.peers {
                        None => [ID_ANY].into(),
                        Some(peers) if peers.iter().any(selects_all) => [ID_ANY].into(),
                        Some(peers) => peers.iter().flat_map(&peer_ids).collect(),
                    };
                    for id in ids {
                        for key in port_keys(dir, id, &pr.ports) {
                            let v = EntryVerdict { deny, rule: idx };
                            let slot = raw.entry((dir, id)).or_default();
                            match slot.get(&key) {
                                Some(old) if old.deny || !deny => {}
                                _ => {
                                    slot.insert(key, v);
                                }
                            }
                        }
                    }
                }
            }
        }
        // Fold the wildcard table into every identity's, then let covering denies win.
        for dir in [Dir::Ingress, Dir::Egress] {
            let any = raw.get(&(dir, ID_ANY)).cloned().unwrap_or_default();
            let ids: Vec<u32> = raw
                .keys()
                .filter(|(d, _)| *d == dir)
                .map(|(_, id)| *id)
                .collect();
            for id in ids {
                let mut table = raw[&(dir, id)].clone();
                if id != ID_ANY {
                    for (k, v) in &any {
                        let k = EntryKey { identity: id, ..*k };
                        match table.get(&k) {
                            Some(old) if old.deny || !v.deny => {}
                            _ => {
                                table.insert(k, *v);
                            }
                        }
                    }
                }
                let denies: Vec<(EntryKey, EntryVerdict)> = table
                    .iter()
                    .filter(|(_, v)| v.deny)
                    .map(|(k, v)| (*k, *v))
                    .collect();
                for (k, v) in table.iter_mut() {
                    if v.deny {
                        continue;
                    }
                    if let Some((_, d)) = denies.iter().find(|(dk, _)| k.covered_by(dk)) {
                        *v = *d;
                    }
                }
                pol.entries.extend(table);
            }
        }
        compiled.insert(ep, pol);
    }
    out.endpoints = compiled;
    out.rules = rule_names;
    out
}

/// Index of the rule's policy name in `names`, added when new.
fn rule_index(r: &PolicyRule, names: &mut Vec<String>) -> u32 {
    if let Some(i) = names.iter().position(|n| *n == r.policy) {
        return i as u32;
    }
    names.push(r.policy.clone());
    (names.len() - 1) as u32
}

fn entity_matches(e: Entity, k: &IdentityKind) -> bool {
    match (e, k) {
        (Entity::All, _) => true,
        (Entity::World | Entity::WorldIpv4, IdentityKind::Cidr(_)) => true,
        (Entity::Cluster, IdentityKind::Pod(_)) => true,
        (Entity::Cluster, IdentityKind::Address(r)) => r.host || r.remote_node,
        (Entity::Host, IdentityKind::Address(r)) => r.host,
        (Entity::RemoteNode, IdentityKind::Address(r)) => r.remote_node,
        (Entity::KubeApiserver, IdentityKind::Address(r)) => r.apiserver,
        _ => false,
    }
}

/// The keys a rule's ports produce for one identity.
fn port_keys(dir: Dir, identity: u32, ports: &[PortMatch]) -> Vec<EntryKey> {
    if ports.is_empty() {
        return vec![EntryKey {
            dir,
            identity,
            proto: 0,
            port: 0,
            bits: 0,
        }];
    }
    let mut out = Vec::new();
    for pm in ports {
        let protos: Vec<u8> = match pm.proto {
            Some(p) => vec![p.number()],
            None => vec![6, 17, 132],
        };
        let prefixes: Vec<(u16, u8)> = if pm.port == 0 {
            vec![(0, 0)]
        } else {
            let end = pm.end_port.filter(|e| *e > pm.port).unwrap_or(pm.port);
            range_prefixes(pm.port, end)
        };
        for proto in protos {
            for (port, bits) in &prefixes {
                out.push(EntryKey {
                    dir,
                    identity,
                    proto,
                    port: *port,
                    bits: *bits,
                });
            }
        }
    }
    out
}

/// The smallest set of (port, prefix bits) covering `start..=end` exactly.
pub fn range_prefixes(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (start as u32, end as u32);
    while lo <= hi {
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

/// What the datapath decides for one packet (its reference model, used by tests and tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A deny rule matched (its rule index).
    Deny(u32),
    /// Enforced direction, nothing allowed it.
    DefaultDeny,
}

impl NodePolicy {
    /// The identity the datapath gives `addr` (longest ipcache prefix; unknown: world).
    pub fn identity_of(&self, addr: Ipv4Addr) -> u32 {
        self.ipcache
            .iter()
            .filter(|(net, _)| net.contains(&addr))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, id)| *id)
            .unwrap_or(ID_WORLD)
    }

    /// The datapath's verdict for a new connection of `ep` with `peer` (conntrack aside): the
    /// longest matching entry for the peer's identity, else for any identity.
    pub fn decide(
        &self,
        ep: &EndpointRef,
        dir: Dir,
        peer: Ipv4Addr,
        proto: u8,
        port: u16,
    ) -> Decision {
        let Some(pol) = self.endpoints.get(ep) else {
            return Decision::Allow;
        };
        let id = self.identity_of(peer);
        let best = |identity: u32| {
            pol.entries
                .iter()
                .filter(|(k, _)| k.dir == dir && k.identity == identity)
                .filter(|(k, _)| {
                    k.proto == 0
                        || (k.proto == proto && {
                            let probe = EntryKey {
                                dir,
                                identity,
                                proto,
                                port,
                                bits: 16,
                            };
                            probe.covered_by(k)
                        })
                })
                .max_by_key(|(k, _)| if k.proto == 0 { 0 } else { 1 + k.bits as u32 })
                .map(|(_, v)| *v)
        };
        let hit = best(id).or_else(|| if id == ID_ANY { None } else { best(ID_ANY) });
        let enforced = match dir {
            Dir::Ingress => pol.ingress_enforced,
            Dir::Egress => pol.egress_enforced,
        };
        match hit {
            Some(v) if v.deny => Decision::Deny(v.rule),
            Some(_) => Decision::Allow,
            None if enforced => Decision::DefaultDeny,
            None => Decision::Allow,
        }
    }
}

#[cfg(test)]
mod tests;
