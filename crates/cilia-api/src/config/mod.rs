//! The configuration model: `cilium-config` ConfigMap keys (Cilium's names) → [`CiliumConfig`].
//!
//! Helm values become ConfigMap keys in `charts/cilia/templates/cilium-configmap.yaml`; the
//! operator and agents read the ConfigMap with [`CiliumConfig::from_map`], which validates once:
//! every error names the key and value, and everything worth telling the user that is not an
//! error (deprecated spellings, clamped lease timings, non-canonical prefixes, keys Cilia does not
//! interpret) comes back as [`ConfigWarning`] data next to the config.
//!
//! Also here: the ip-masq-agent file ([`ipmasq`]) and the Deckhouse module settings → Helm
//! values mapping ([`deckhouse`]).

pub mod deckhouse;
pub mod ipmasq;
mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use crate::Violations;
pub use values::{format_go_duration, parse_bool, parse_go_duration, parse_list};

/// Name of the ConfigMap the chart renders and the components read.
pub const CONFIGMAP_NAME: &str = "cilium-config";
/// Where the chart mounts it in agent and operator pods (Cilium's path).
pub const CONFIG_DIR: &str = "/tmp/cilium/config-map";

/// A value that cannot be used; each names the ConfigMap key (or file field) and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: invalid value {value:?}: expected {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: String,
    },
    #[error("{key}={value:?} conflicts with {other_key}={other_value:?}: {reason}")]
    Conflict {
        key: String,
        value: String,
        other_key: String,
        other_value: String,
        reason: String,
    },
    #[error("{key}={value:?} requires {requirement}")]
    Requires {
        key: String,
        value: String,
        requirement: String,
    },
    #[error("{key} must be set: {reason}")]
    Missing { key: String, reason: String },
    #[error("{source_name}: not valid YAML/JSON: {reason}")]
    Syntax { source_name: String, reason: String },
}

/// Accepted, but worth telling the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ConfigWarning {
    #[error("{key}: {value:?} is deprecated; read as {replacement}")]
    Deprecated {
        key: String,
        value: String,
        replacement: String,
    },
    #[error("{key}: {value:?} is out of range; using {used} ({reason})")]
    Clamped {
        key: String,
        value: String,
        used: String,
        reason: String,
    },
    #[error("{key}: {value:?} is not a canonical prefix (host bits set); using {canonical}")]
    NonCanonicalCidr {
        key: String,
        value: String,
        canonical: String,
    },
    #[error("{key}: not interpreted by cilia, ignored (value {value:?})")]
    IgnoredKey { key: String, value: String },
    #[error("{key}={value:?} has no effect while {reason}")]
    Inactive {
        key: String,
        value: String,
        reason: String,
    },
}

/// A parsed and validated document plus its warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T> {
    pub config: T,
    pub warnings: Vec<ConfigWarning>,
}

/// Enums whose ConfigMap spelling is fixed.
pub trait ConfigEnum: Sized + Copy + 'static {
    /// `(spelling, value)` pairs; the first spelling of a value is the canonical one.
    const SPELLINGS: &'static [(&'static str, Self)];

    /// Reads a spelling.
    fn parse(s: &str) -> Option<Self>
    where
        Self: PartialEq,
    {
        Self::SPELLINGS
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, v)| *v)
    }

    /// The canonical spelling.
    fn as_str(self) -> &'static str
    where
        Self: PartialEq,
    {
        Self::SPELLINGS
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(name, _)| *name)
            .expect("every value has a spelling")
    }

    /// Every spelling, for "expected one of" messages.
    fn expected() -> String {
        let names: Vec<_> = Self::SPELLINGS
            .iter()
            .map(|(n, _)| format!("{n:?}"))
            .collect();
        format!("one of {}", names.join(", "))
    }
}

macro_rules! config_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $spelling:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $spelling)] $variant),+
        }
        impl ConfigEnum for $name {
            const SPELLINGS: &'static [(&'static str, Self)] = &[$(($spelling, Self::$variant)),+];
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

config_enum!(
    /// `routing-mode`.
    RoutingMode { Native => "native", Tunnel => "tunnel" }
);
config_enum!(
    /// `tunnel-protocol`.
    TunnelProtocol { Vxlan => "vxlan", Geneve => "geneve" }
);
config_enum!(
    /// `datapath-mode`; `ipvlan` is Cilium's removed IPVLAN datapath, kept by Cilia.
    DatapathMode { Veth => "veth", Netkit => "netkit", NetkitL2 => "netkit-l2", Ipvlan => "ipvlan" }
);
config_enum!(
    /// `bpf-lb-acceleration`: XDP for the north/south fast path.
    LbAcceleration {
        Disabled => "disabled",
        Native => "native",
        BestEffort => "best-effort",
        /// Generic (skb) XDP, for tests only.
        TestingOnly => "testing-only",
    }
);
config_enum!(
    /// `bpf-lb-mode`: how NodePort/LoadBalancer traffic reaches remote backends.
    LbMode {
        Snat => "snat",
        Dsr => "dsr",
        /// DSR for TCP, SNAT for UDP.
        Hybrid => "hybrid",
    }
);
config_enum!(
    /// `bpf-lb-algorithm`.
    LbAlgorithm { Random => "random", Maglev => "maglev" }
);
config_enum!(
    /// `bpf-lb-dsr-dispatch`: how DSR carries the service address to the backend node.
    DsrDispatch { Opt => "opt", Ipip => "ipip", Geneve => "geneve" }
);
config_enum!(
    /// `ipam`.
    IpamMode {
        ClusterPool => "cluster-pool",
        Kubernetes => "kubernetes",
        MultiPool => "multi-pool",
        Eni => "eni",
        Azure => "azure",
        AlibabaCloud => "alibabacloud",
        Crd => "crd",
        DelegatedPlugin => "delegated-plugin",
    }
);
config_enum!(
    /// `enable-policy`.
    PolicyEnforcement { Default => "default", Always => "always", Never => "never" }
);
config_enum!(
    /// `service-no-backend-response`.
    NoBackendResponse { Reject => "reject", Drop => "drop" }
);
config_enum!(
    /// `default-lb-service-ipam`: who serves LoadBalancer Services without a class.
    DefaultLbServiceIpam { Lbipam => "lbipam", Nodeipam => "nodeipam", None => "none" }
);

/// IPVLAN operation mode, derived from `install-iptables-rules` like Cilium's IPVLAN datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpvlanMode {
    /// Pure L3: no netfilter hooks on the slave devices.
    L3,
    /// L3 with netfilter ("symmetric"), needed when iptables rules do the masquerading.
    L3s,
}

/// How traffic leaving the cluster is source-NATed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Masquerading {
    Disabled,
    Iptables,
    Bpf {
        /// Destinations from the ip-masq-agent file are exempt.
        ip_masq_agent: bool,
    },
}

/// Maglev table sizes Cilium accepts (primes).
pub const MAGLEV_TABLE_SIZES: &[u32] = &[
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];
/// Default `bpf-lb-maglev-table-size`.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16381;

/// Load-balancing settings (`bpf-lb-*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancerConfig {
    pub acceleration: LbAcceleration,
    pub mode: LbMode,
    pub algorithm: LbAlgorithm,
    pub dsr_dispatch: DsrDispatch,
    pub maglev_table_size: u32,
    /// Base64 12-byte seed, if pinned.
    pub maglev_hash_seed: Option<String>,
    /// Per-service `service.cilium.io/forwarding-mode` honoured.
    pub mode_annotation: bool,
    /// Per-service `service.cilium.io/lb-algorithm` honoured.
    pub algorithm_annotation: bool,
    pub map_max: u32,
    pub no_backend_response: NoBackendResponse,
}

/// L2 announcements and their lease timings, after Cilium's clamps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L2AnnouncementConfig {
    pub enabled: bool,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// NodePort settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodePortConfig {
    /// Explicit `enable-node-port` (older charts); kube-proxy replacement implies it.
    pub enabled: bool,
    /// Inclusive `(min, max)`.
    pub range: (u16, u16),
    pub bind_protection: bool,
    pub direct_routing_device: Option<String>,
}

/// Hubble (flow observability) settings; accepted, served by a later feature.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HubbleConfig {
    pub enabled: bool,
    pub listen_address: String,
}

/// How agents reach the operator's intent stream (Cilia's own keys, `cilia-*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentConfig {
    /// Headless Service whose ready endpoint is the leading operator; the TLS server name is
    /// `<service>.<namespace>.svc`.
    pub service: String,
    pub port: u16,
}

/// The typed `cilium-config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CiliumConfig {
    pub kube_proxy_replacement: bool,
    pub kube_proxy_replacement_healthz_bind_address: Option<String>,
    pub routing_mode: RoutingMode,
    pub tunnel_protocol: TunnelProtocol,
    /// Explicit `tunnel-port`; see [`CiliumConfig::tunnel_port`].
    pub tunnel_port: Option<u16>,
    pub ipv4_native_routing_cidr: Option<IpNet>,
    pub ipv6_native_routing_cidr: Option<IpNet>,
    pub auto_direct_node_routes: bool,
    pub direct_routing_skip_unreachable: bool,
    pub enable_ipv4: bool,
    pub enable_ipv6: bool,
    pub enable_ipv4_masquerade: bool,
    pub enable_ipv6_masquerade: bool,
    pub enable_bpf_masquerade: bool,
    pub enable_ip_masq_agent: bool,
    pub ip_masq_agent_config_path: String,
    pub enable_masquerade_to_route_source: bool,
    pub egress_masquerade_interfaces: Vec<String>,
    pub install_iptables_rules: bool,
    pub datapath_mode: DatapathMode,
    pub ipvlan_master_device: Option<String>,
    pub load_balancer: LoadBalancerConfig,
    pub l2_announcements: L2AnnouncementConfig,
    /// Explicit `enable-external-ips`; see [`CiliumConfig::external_ips_enabled`].
    pub enable_external_ips: bool,
    pub enable_host_port: bool,
    pub node_port: NodePortConfig,
    /// Devices to attach to; empty means auto-detect. Wildcards like `eth+` allowed.
    pub devices: Vec<String>,
    pub ipam: IpamMode,
    pub cluster_pool_ipv4_cidrs: Vec<IpNet>,
    pub cluster_pool_ipv4_mask_size: u8,
    pub policy_enforcement: PolicyEnforcement,
    pub policy_audit_mode: bool,
    pub enable_k8s_networkpolicy: bool,
    pub enable_host_firewall: bool,
    pub enable_lb_ipam: bool,
    pub default_lb_service_ipam: DefaultLbServiceIpam,
    pub hubble: HubbleConfig,
    pub cluster_name: String,
    pub cluster_id: u32,
    /// 0 = auto-detect.
    pub mtu: u32,
    pub k8s_client_qps: Option<f32>,
    pub k8s_client_burst: Option<u32>,
    pub debug: bool,
    /// Where the agent writes its CNI configuration once ready.
    pub write_cni_conf_when_ready: Option<String>,
    /// Remove other CNI configurations.
    pub cni_exclusive: bool,
    pub intent: IntentConfig,
}

impl Default for CiliumConfig {
    /// Cilium's defaults: what an empty ConfigMap means.
    fn default() -> Self {
        CiliumConfig::from_map(&BTreeMap::new())
            .expect("the defaults are valid")
            .config
    }
}

impl CiliumConfig {
    /// Reads a ConfigMap's `data`.
    pub fn from_map(
        data: &BTreeMap<String, String>,
    ) -> Result<Parsed<CiliumConfig>, Violations<ConfigError>> {
        let mut r = Reader::new(data);
        let config = read(&mut r);
        r.finish(config)
    }

    /// Reads a `ConfigMap` object.
    pub fn from_configmap(cm: &ConfigMap) -> Result<Parsed<CiliumConfig>, Violations<ConfigError>> {
        Self::from_map(&cm.data.clone().unwrap_or_default())
    }

    /// Reads YAML: a ConfigMap manifest, or a bare `key: value` map (like the seed fixtures).
    /// Non-string scalars (`true`, `8472`) are taken as their text.
    pub fn from_yaml(text: &str) -> Result<Parsed<CiliumConfig>, Violations<ConfigError>> {
        let syntax = |reason: String| {
            Violations(vec![ConfigError::Syntax {
                source_name: CONFIGMAP_NAME.into(),
                reason,
            }])
        };
        let doc: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let map = match doc.get("kind").and_then(|k| k.as_str()) {
            Some("ConfigMap") => doc.get("data").cloned().unwrap_or_default(),
            _ => doc,
        };
        let mut data = BTreeMap::new();
        if let serde_yaml::Value::Mapping(m) = map {
            for (k, v) in m {
                let key =
                    scalar_text(&k).ok_or_else(|| syntax(format!("key {k:?} is not a scalar")))?;
                let value = scalar_text(&v)
                    .ok_or_else(|| syntax(format!("{key}: value is not a scalar")))?;
                data.insert(key, value);
            }
        } else if !map.is_null() {
            return Err(syntax("expected a map of keys to values".into()));
        }
        Self::from_map(&data)
    }

    /// Tunnel port in effect: explicit, else 8472 (VXLAN) / 6081 (Geneve).
    pub fn tunnel_port(&self) -> u16 {
        self.tunnel_port.unwrap_or(match self.tunnel_protocol {
            TunnelProtocol::Vxlan => 8472,
            TunnelProtocol::Geneve => 6081,
        })
    }

    /// IPVLAN operation mode, `None` for other datapaths.
    pub fn ipvlan_mode(&self) -> Option<IpvlanMode> {
        (self.datapath_mode == DatapathMode::Ipvlan).then_some(if self.install_iptables_rules {
            IpvlanMode::L3s
        } else {
            IpvlanMode::L3
        })
    }

    /// IPv4 masquerading in effect.
    pub fn masquerading(&self) -> Masquerading {
        if !self.enable_ipv4_masquerade {
            return Masquerading::Disabled;
        }
        let bpf = match self.datapath_mode {
            // IPVLAN L3 has no netfilter hooks: masquerading there is BPF's job.
            DatapathMode::Ipvlan => self.enable_bpf_masquerade || !self.install_iptables_rules,
            _ => self.enable_bpf_masquerade,
        };
        if bpf {
            Masquerading::Bpf {
                ip_masq_agent: self.enable_ip_masq_agent,
            }
        } else {
            Masquerading::Iptables
        }
    }

    /// NodePort services handled by the BPF datapath.
    pub fn node_port_enabled(&self) -> bool {
        self.kube_proxy_replacement || self.node_port.enabled
    }

    /// External IPs handled (explicitly, or implied by kube-proxy replacement).
    pub fn external_ips_enabled(&self) -> bool {
        self.kube_proxy_replacement || self.enable_external_ips
    }

    /// HostPort handled (explicitly, or implied by kube-proxy replacement).
    pub fn host_port_enabled(&self) -> bool {
        self.kube_proxy_replacement || self.enable_host_port
    }
}

fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Walks a ConfigMap's data, remembering which keys were read.
struct Reader<'a> {
    data: &'a BTreeMap<String, String>,
    used: BTreeSet<&'a str>,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl<'a> Reader<'a> {
    fn new(data: &'a BTreeMap<String, String>) -> Self {
        Self {
            data,
            used: BTreeSet::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The trimmed value; empty values count as unset (the chart renders optional keys so).
    fn raw(&mut self, key: &str) -> Option<&'a str> {
        let (k, v) = self.data.get_key_value(key)?;
        self.used.insert(k.as_str());
        let v = v.trim();
        (!v.is_empty()).then_some(v)
    }

    fn invalid(&mut self, key: &str, value: &str, expected: impl Into<String>) {
        self.errors.push(ConfigError::InvalidValue {
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        });
    }

    fn opt_bool(&mut self, key: &str) -> Option<bool> {
        let v = self.raw(key)?;
        let parsed = parse_bool(v);
        if parsed.is_none() {
            self.invalid(key, v, "a boolean (true or false)");
        }
        parsed
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        self.opt_bool(key).unwrap_or(default)
    }

    fn opt_num<T: std::str::FromStr>(&mut self, key: &str, expected: &str) -> Option<T> {
        let v = self.raw(key)?;
        let parsed = v.parse().ok();
        if parsed.is_none() {
            self.invalid(key, v, expected);
        }
        parsed
    }

    fn opt_enum<E: ConfigEnum + PartialEq>(&mut self, key: &str) -> Option<E> {
        let v = self.raw(key)?;
        let parsed = E::parse(v);
        if parsed.is_none() {
            self.invalid(key, v, E::expected());
        }
        parsed
    }

    fn enum_or<E: ConfigEnum + PartialEq>(&mut self, key: &str, default: E) -> E {
        self.opt_enum(key).unwrap_or(default)
    }

    fn string(&mut self, key: &str) -> Option<String> {
        self.raw(key).map(str::to_string)
    }

    fn list(&mut self, key: &str) -> Vec<String> {
        self.raw(key).map(parse_list).unwrap_or_default()
    }

    fn cidr(&mut self, key: &str) -> Option<IpNet> {
        let v = self.raw(key)?;
        parse_cidr_lenient(key, v, &mut self.errors, &mut self.warnings)
    }

    fn duration(&mut self, key: &str, default: Duration) -> i128 {
        match self.raw(key) {
            None => default.as_nanos() as i128,
            Some(v) => match parse_go_duration(v) {
                Some(n) => n,
                None => {
                    self.invalid(key, v, "a duration like 15s, 1m30s or 500ms");
                    default.as_nanos() as i128
                }
            },
        }
    }

    fn deprecated(&mut self, key: &str, value: &str, replacement: impl Into<String>) {
        self.warnings.push(ConfigWarning::Deprecated {
            key: key.into(),
            value: value.into(),
            replacement: replacement.into(),
        });
    }

    fn finish<T>(self, config: T) -> Result<Parsed<T>, Violations<ConfigError>> {
        let Reader {
            data,
            used,
            errors,
            mut warnings,
        } = self;
        if !errors.is_empty() {
            return Err(Violations(errors));
        }
        for (key, value) in data {
            if !used.contains(key.as_str()) {
                warnings.push(ConfigWarning::IgnoredKey {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        Ok(Parsed { config, warnings })
    }
}

/// Parses a prefix the way Go's `net.ParseCIDR` does: host bits are allowed and masked, with a
/// warning naming the value and its canonical form.
pub(crate) fn parse_cidr_lenient(
    key: &str,
    value: &str,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<ConfigWarning>,
) -> Option<IpNet> {
    match value.parse::<IpNet>() {
        Ok(net) => {
            let canonical = net.trunc();
            if canonical != net {
                warnings.push(ConfigWarning::NonCanonicalCidr {
                    key: key.into(),
                    value: value.into(),
                    canonical: canonical.to_string(),
                });
            }
            Some(canonical)
        }
        Err(_) => {
            errors.push(ConfigError::InvalidValue {
                key: key.into(),
                value: value.into(),
                expected: "a CIDR like 10.0.0.0/8 or fd00::/104".into(),
            });
            None
        }
    }
}

#[cfg(test)]
fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn read(r: &mut Reader<'_>) -> CiliumConfig {
    // --- kube-proxy replacement, with the legacy spellings ---------------------------------
    let kpr_key = "kube-proxy-replacement";
    let kube_proxy_replacement = match r.raw(kpr_key) {
        None => false,
        Some("strict") => {
            r.deprecated(
                kpr_key,
                "strict",
                "\"true\" (legacy spelling, removed in Cilium 1.15)",
            );
            true
        }
        Some("disabled") => {
            r.deprecated(
                kpr_key,
                "disabled",
                "\"false\" (legacy spelling, removed in Cilium 1.15)",
            );
            false
        }
        Some(v) => match parse_bool(v) {
            Some(b) => b,
            None => {
                let expected = if matches!(v, "partial" | "probe") {
                    "\"true\" or \"false\" (partial/probe were removed in Cilium 1.15: use false and enable features explicitly)"
                } else {
                    "\"true\" or \"false\" (legacy \"strict\"/\"disabled\" are accepted)"
                };
                r.invalid(kpr_key, v, expected);
                false
            }
        },
    };

    // --- datapath mode (decides masquerading defaults below) --------------------------------
    let datapath_mode = r.enum_or("datapath-mode", DatapathMode::Veth);
    let ipvlan_master_device = r.string("ipvlan-master-device");

    // --- routing: routing-mode / tunnel-protocol, or the legacy `tunnel` key ----------------
    let explicit_routing = r.opt_enum::<RoutingMode>("routing-mode");
    let explicit_protocol = r.opt_enum::<TunnelProtocol>("tunnel-protocol");
    let legacy_tunnel = r.raw("tunnel");
    let mut routing_mode = explicit_routing.unwrap_or(RoutingMode::Tunnel);
    let mut tunnel_protocol = explicit_protocol.unwrap_or(TunnelProtocol::Vxlan);
    if let Some(v) = legacy_tunnel {
        let implied = match v {
            "disabled" => Some((RoutingMode::Native, None)),
            "vxlan" => Some((RoutingMode::Tunnel, Some(TunnelProtocol::Vxlan))),
            "geneve" => Some((RoutingMode::Tunnel, Some(TunnelProtocol::Geneve))),
            _ => None,
        };
        match implied {
            None => r.invalid(
                "tunnel",
                v,
                "one of \"disabled\", \"vxlan\", \"geneve\" (legacy key)",
            ),
            Some((mode, protocol)) => {
                let replacement = match protocol {
                    None => "routing-mode: native".to_string(),
                    Some(p) => format!("routing-mode: tunnel, tunnel-protocol: {p}"),
                };
                r.deprecated("tunnel", v, replacement);
                if let Some(explicit) = explicit_routing
                    && explicit != mode
                {
                    r.errors.push(ConfigError::Conflict {
                        key: "tunnel".into(),
                        value: v.into(),
                        other_key: "routing-mode".into(),
                        other_value: explicit.to_string(),
                        reason: "the legacy key and its replacement disagree; drop tunnel".into(),
                    });
                }
                if let (Some(explicit), Some(p)) = (explicit_protocol, protocol)
                    && explicit != p
                {
                    r.errors.push(ConfigError::Conflict {
                        key: "tunnel".into(),
                        value: v.into(),
                        other_key: "tunnel-protocol".into(),
                        other_value: explicit.to_string(),
                        reason: "the legacy key and its replacement disagree; drop tunnel".into(),
                    });
                }
                routing_mode = explicit_routing.unwrap_or(mode);
                tunnel_protocol = explicit_protocol.or(protocol).unwrap_or(tunnel_protocol);
            }
        }
    }
    let tunnel_port = r
        .opt_num::<u16>("tunnel-port", "a port number 0-65535")
        .filter(|p| *p != 0);

    let mut ipv4_native_routing_cidr = r.cidr("ipv4-native-routing-cidr");
    if let Some(v) = r.raw("native-routing-cidr") {
        r.deprecated("native-routing-cidr", v, "ipv4-native-routing-cidr");
        let legacy = parse_cidr_lenient("native-routing-cidr", v, &mut r.errors, &mut r.warnings);
        ipv4_native_routing_cidr = ipv4_native_routing_cidr.or(legacy);
    }
    let ipv6_native_routing_cidr = r.cidr("ipv6-native-routing-cidr");
    let auto_direct_node_routes = r.bool("auto-direct-node-routes", false);
    let direct_routing_skip_unreachable = r.bool("direct-routing-skip-unreachable", false);

    // --- families and masquerading -----------------------------------------------------------
    let enable_ipv4 = r.bool("enable-ipv4", true);
    let enable_ipv6 = r.bool("enable-ipv6", false);
    // The legacy IPVLAN ConfigMaps predate masquerade-by-default: there, masquerading is on
    // only when asked for (`masquerade: "true"`).
    let masq_default = datapath_mode != DatapathMode::Ipvlan;
    let explicit_v4_masq = r.opt_bool("enable-ipv4-masquerade");
    let legacy_masq = r.raw("masquerade");
    let mut enable_ipv4_masquerade = explicit_v4_masq.unwrap_or(masq_default);
    if let Some(v) = legacy_masq {
        match parse_bool(v) {
            None => r.invalid("masquerade", v, "a boolean (true or false)"),
            Some(b) => {
                r.deprecated("masquerade", v, format!("enable-ipv4-masquerade: \"{b}\""));
                if let Some(explicit) = explicit_v4_masq
                    && explicit != b
                {
                    r.errors.push(ConfigError::Conflict {
                        key: "masquerade".into(),
                        value: v.into(),
                        other_key: "enable-ipv4-masquerade".into(),
                        other_value: explicit.to_string(),
                        reason: "the legacy key and its replacement disagree; drop masquerade"
                            .into(),
                    });
                }
                enable_ipv4_masquerade = explicit_v4_masq.unwrap_or(b);
            }
        }
    }
    let enable_ipv6_masquerade = r.bool("enable-ipv6-masquerade", masq_default);
    let enable_bpf_masquerade = r.bool("enable-bpf-masquerade", false);
    let enable_ip_masq_agent = r.bool("enable-ip-masq-agent", false);
    let ip_masq_agent_config_path = r
        .string("ip-masq-agent-config-path")
        .unwrap_or_else(|| ipmasq::DEFAULT_CONFIG_PATH.into());
    let enable_masquerade_to_route_source = r.bool("enable-masquerade-to-route-source", false);
    let egress_masquerade_interfaces = r.list("egress-masquerade-interfaces");
    let install_iptables_rules = r.bool("install-iptables-rules", true);

    // --- load balancing ------------------------------------------------------------------------
    let maglev_table_size = match r.raw("bpf-lb-maglev-table-size") {
        None => DEFAULT_MAGLEV_TABLE_SIZE,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if MAGLEV_TABLE_SIZES.contains(&n) => n,
            _ => {
                let primes: Vec<_> = MAGLEV_TABLE_SIZES.iter().map(u32::to_string).collect();
                r.invalid(
                    "bpf-lb-maglev-table-size",
                    v,
                    format!("one of the primes {}", primes.join(", ")),
                );
                DEFAULT_MAGLEV_TABLE_SIZE
            }
        },
    };
    let load_balancer = LoadBalancerConfig {
        acceleration: r.enum_or("bpf-lb-acceleration", LbAcceleration::Disabled),
        mode: r.enum_or("bpf-lb-mode", LbMode::Snat),
        algorithm: r.enum_or("bpf-lb-algorithm", LbAlgorithm::Random),
        dsr_dispatch: r.enum_or("bpf-lb-dsr-dispatch", DsrDispatch::Opt),
        maglev_table_size,
        maglev_hash_seed: r.string("bpf-lb-maglev-hash-seed"),
        mode_annotation: r.bool("bpf-lb-mode-annotation", false),
        algorithm_annotation: r.bool("bpf-lb-algorithm-annotation", false),
        map_max: r
            .opt_num("bpf-lb-map-max", "a positive integer")
            .unwrap_or(65536),
        no_backend_response: r.enum_or("service-no-backend-response", NoBackendResponse::Reject),
    };

    // --- L2 announcements with Cilium's lease clamps ------------------------------------------
    let l2_announcements = read_l2(r);

    let enable_external_ips = r.bool("enable-external-ips", false);
    let enable_host_port = r.bool("enable-host-port", false);
    let node_port = NodePortConfig {
        enabled: r.bool("enable-node-port", false),
        range: read_port_range(r),
        bind_protection: r.bool("node-port-bind-protection", true),
        direct_routing_device: r.string("direct-routing-device"),
    };
    let devices = r.list("devices");

    // --- IPAM ------------------------------------------------------------------------------------
    let ipam = r.enum_or("ipam", IpamMode::ClusterPool);
    let mut cluster_pool_ipv4_cidrs = Vec::new();
    let pool_key = "cluster-pool-ipv4-cidr";
    for v in r.list(pool_key) {
        if let Some(net) = parse_cidr_lenient(pool_key, &v, &mut r.errors, &mut r.warnings) {
            cluster_pool_ipv4_cidrs.push(net);
        }
    }
    if cluster_pool_ipv4_cidrs.is_empty() {
        cluster_pool_ipv4_cidrs.push("10.0.0.0/8".parse().expect("literal"));
    }
    let cluster_pool_ipv4_mask_size = r
        .opt_num("cluster-pool-ipv4-mask-size", "a prefix length 1-32")
        .unwrap_or(24u8);

    // --- policy --------------------------------------------------------------------------------
    let policy_key = "enable-policy";
    let policy_enforcement = match r.raw(policy_key) {
        None => PolicyEnforcement::Default,
        Some(v) => PolicyEnforcement::parse(&v.to_ascii_lowercase()).unwrap_or_else(|| {
            r.invalid(policy_key, v, PolicyEnforcement::expected());
            PolicyEnforcement::Default
        }),
    };

    let hubble = HubbleConfig {
        enabled: r.bool("enable-hubble", false),
        listen_address: r
            .string("hubble-listen-address")
            .unwrap_or_else(|| ":4244".into()),
    };

    let max_clusters: u32 = r
        .opt_num("max-connected-clusters", "255 or 511")
        .unwrap_or(255);
    let cluster_id: u32 = r.opt_num("cluster-id", "an integer").unwrap_or(0);

    let config = CiliumConfig {
        kube_proxy_replacement,
        kube_proxy_replacement_healthz_bind_address: r
            .string("kube-proxy-replacement-healthz-bind-address"),
        routing_mode,
        tunnel_protocol,
        tunnel_port,
        ipv4_native_routing_cidr,
        ipv6_native_routing_cidr,
        auto_direct_node_routes,
        direct_routing_skip_unreachable,
        enable_ipv4,
        enable_ipv6,
        enable_ipv4_masquerade,
        enable_ipv6_masquerade,
        enable_bpf_masquerade,
        enable_ip_masq_agent,
        ip_masq_agent_config_path,
        enable_masquerade_to_route_source,
        egress_masquerade_interfaces,
        install_iptables_rules,
        datapath_mode,
        ipvlan_master_device,
        load_balancer,
        l2_announcements,
        enable_external_ips,
        enable_host_port,
        node_port,
        devices,
        ipam,
        cluster_pool_ipv4_cidrs,
        cluster_pool_ipv4_mask_size,
        policy_enforcement,
        policy_audit_mode: r.bool("policy-audit-mode", false),
        enable_k8s_networkpolicy: r.bool("enable-k8s-networkpolicy", true),
        enable_host_firewall: r.bool("enable-host-firewall", false),
        enable_lb_ipam: r.bool("enable-lb-ipam", true),
        default_lb_service_ipam: r.enum_or("default-lb-service-ipam", DefaultLbServiceIpam::Lbipam),
        hubble,
        cluster_name: r.string("cluster-name").unwrap_or_else(|| "default".into()),
        cluster_id,
        mtu: r.opt_num("mtu", "an MTU in bytes (0 = auto)").unwrap_or(0),
        k8s_client_qps: r.opt_num("k8s-client-qps", "a number of requests per second"),
        k8s_client_burst: r.opt_num("k8s-client-burst", "an integer"),
        debug: r.bool("debug", false),
        write_cni_conf_when_ready: r.string("write-cni-conf-when-ready"),
        cni_exclusive: r.bool("cni-exclusive", false),
        intent: IntentConfig {
            service: r
                .string("cilia-intent-service")
                .unwrap_or_else(|| "cilia-operator".into()),
            port: r
                .opt_num("cilia-intent-port", "a port number 1-65535")
                .unwrap_or(4250),
        },
    };
    cross_checks(r, &config, max_clusters);
    if config.enable_ip_masq_agent && !matches!(config.masquerading(), Masquerading::Bpf { .. }) {
        // Cilium refuses to start here; we accept it so that `helm upgrade --set
        // bpf.masquerade=false` switches live, and say what applies meanwhile.
        r.warnings.push(ConfigWarning::Inactive {
            key: "enable-ip-masq-agent".into(),
            value: "true".into(),
            reason: "BPF masquerading is off (enable-bpf-masquerade / enable-ipv4-masquerade); \
                     iptables masquerading exempts only ipv4-native-routing-cidr"
                .into(),
        });
    }
    config
}

fn clamp(r: &mut Reader<'_>, key: &str, was: i128, now: i128, reason: &str) {
    let fmt = |n: i128| {
        let d = format_go_duration(Duration::from_nanos(n.unsigned_abs() as u64));
        if n < 0 { format!("-{d}") } else { d }
    };
    r.warnings.push(ConfigWarning::Clamped {
        key: key.into(),
        value: fmt(was),
        used: fmt(now),
        reason: reason.into(),
    });
}

fn read_l2(r: &mut Reader<'_>) -> L2AnnouncementConfig {
    const SECOND: i128 = 1_000_000_000;
    let enabled = r.bool("enable-l2-announcements", false);
    let (dk, rk, pk) = (
        "l2-announcements-lease-duration",
        "l2-announcements-renew-deadline",
        "l2-announcements-retry-period",
    );
    // Not Cilium's 15s / 5s / 2s: there every renewal is a Lease write per Service, so leases
    // must be long; here renewals are heartbeats on the intent stream, and the lease bounds how
    // long a dead agent's node may still answer ARP (the failover time). Hence no 1s floor.
    const MIN_LEASE: i128 = 100_000_000;
    let mut duration = r.duration(dk, millis(400));
    let mut renew = r.duration(rk, millis(300));
    let mut retry = r.duration(pk, millis(100));
    if duration < MIN_LEASE {
        clamp(
            r,
            dk,
            duration,
            MIN_LEASE,
            "lease duration is at least 100ms",
        );
        duration = MIN_LEASE;
    }
    if renew < 1 {
        clamp(r, rk, renew, SECOND, "renew deadline must be positive");
        renew = SECOND;
    }
    if retry < 1 {
        clamp(r, pk, retry, 200_000_000, "retry period must be positive");
        retry = 200_000_000;
    }
    if duration <= renew {
        clamp(
            r,
            rk,
            renew,
            duration / 2,
            "renew deadline must be below the lease duration",
        );
        renew = duration / 2;
    }
    // client-go's JitterFactor is 1.2: the renew deadline must outlast a jittered retry.
    if renew * 10 <= retry * 12 {
        clamp(
            r,
            pk,
            retry,
            renew / 2,
            "renew deadline must exceed 1.2 x retry period",
        );
        retry = renew / 2;
    }
    let d = |n: i128| Duration::from_nanos(n as u64);
    L2AnnouncementConfig {
        enabled,
        lease_duration: d(duration),
        renew_deadline: d(renew),
        retry_period: d(retry),
    }
}

fn read_port_range(r: &mut Reader<'_>) -> (u16, u16) {
    let key = "node-port-range";
    let default = (30000, 32767);
    let Some(v) = r.raw(key) else {
        return default;
    };
    let parts: Vec<_> = v.split([',', '-']).map(str::trim).collect();
    match parts.as_slice() {
        [lo, hi] => match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) if lo > 0 && lo < hi => (lo, hi),
            _ => {
                r.invalid(key, v, "\"min,max\" with 0 < min < max <= 65535");
                default
            }
        },
        _ => {
            r.invalid(key, v, "\"min,max\" with 0 < min < max <= 65535");
            default
        }
    }
}

/// Constraints across keys (Cilium's agent refuses to start on each of these).
fn cross_checks(r: &mut Reader<'_>, c: &CiliumConfig, max_clusters: u32) {
    let mut requires = |key: &str, value: &str, requirement: &str| {
        r.errors.push(ConfigError::Requires {
            key: key.into(),
            value: value.into(),
            requirement: requirement.into(),
        });
    };
    if !c.enable_ipv4 && !c.enable_ipv6 {
        requires(
            "enable-ipv4",
            "false",
            "enable-ipv6=\"true\" (at least one family must be enabled)",
        );
    }
    if c.datapath_mode != DatapathMode::Ipvlan && c.enable_bpf_masquerade && !c.node_port_enabled()
    {
        requires(
            "enable-bpf-masquerade",
            "true",
            "the BPF NodePort datapath: kube-proxy-replacement=\"true\" (or enable-node-port=\"true\")",
        );
    }
    if c.datapath_mode != DatapathMode::Ipvlan
        && c.enable_ipv4_masquerade
        && !c.enable_bpf_masquerade
        && !c.install_iptables_rules
    {
        requires(
            "enable-ipv4-masquerade",
            "true",
            "install-iptables-rules=\"true\" or enable-bpf-masquerade=\"true\" (something must do the SNAT)",
        );
    }
    if c.l2_announcements.enabled && !c.kube_proxy_replacement {
        requires(
            "enable-l2-announcements",
            "true",
            "kube-proxy-replacement=\"true\"",
        );
    }
    if c.load_balancer.acceleration != LbAcceleration::Disabled && !c.node_port_enabled() {
        requires(
            "bpf-lb-acceleration",
            c.load_balancer.acceleration.as_str(),
            "the BPF NodePort datapath: kube-proxy-replacement=\"true\" (or enable-node-port=\"true\")",
        );
    }
    if c.load_balancer.dsr_dispatch == DsrDispatch::Geneve
        && !(c.routing_mode == RoutingMode::Tunnel && c.tunnel_protocol == TunnelProtocol::Geneve)
    {
        requires(
            "bpf-lb-dsr-dispatch",
            "geneve",
            "routing-mode=\"tunnel\" with tunnel-protocol=\"geneve\"",
        );
    }
    if c.load_balancer.mode != LbMode::Snat
        && c.routing_mode == RoutingMode::Tunnel
        && c.load_balancer.dsr_dispatch != DsrDispatch::Geneve
    {
        r.errors.push(ConfigError::Conflict {
            key: "bpf-lb-mode".into(),
            value: c.load_balancer.mode.to_string(),
            other_key: "routing-mode".into(),
            other_value: "tunnel".into(),
            reason: "DSR in tunnel mode needs bpf-lb-dsr-dispatch=\"geneve\" with tunnel-protocol=\"geneve\"; use routing-mode=\"native\" or bpf-lb-mode=\"snat\"".into(),
        });
    }
    if c.auto_direct_node_routes && c.routing_mode == RoutingMode::Tunnel {
        r.errors.push(ConfigError::Conflict {
            key: "auto-direct-node-routes".into(),
            value: "true".into(),
            other_key: "routing-mode".into(),
            other_value: "tunnel".into(),
            reason: "direct node routes only apply to native routing".into(),
        });
    }
    if c.datapath_mode == DatapathMode::Ipvlan {
        if c.ipvlan_master_device.is_none() {
            r.errors.push(ConfigError::Missing {
                key: "ipvlan-master-device".into(),
                reason: "datapath-mode=\"ipvlan\" needs the device the IPVLAN slaves hang off"
                    .into(),
            });
        }
        if c.routing_mode == RoutingMode::Tunnel {
            r.errors.push(ConfigError::Conflict {
                key: "datapath-mode".into(),
                value: "ipvlan".into(),
                other_key: "routing-mode".into(),
                other_value: "tunnel".into(),
                reason: "the IPVLAN datapath needs native routing (tunnel: \"disabled\")".into(),
            });
        }
    } else if c.routing_mode == RoutingMode::Native
        && c.enable_ipv4
        && c.masquerading() != Masquerading::Disabled
        && !c.enable_ip_masq_agent
        && c.ipv4_native_routing_cidr.is_none()
        && !matches!(c.ipam, IpamMode::Eni | IpamMode::AlibabaCloud)
    {
        r.errors.push(ConfigError::Missing {
            key: "ipv4-native-routing-cidr".into(),
            reason: "native routing with IPv4 masquerading (and no ip-masq-agent) must know which destinations are not masqueraded".into(),
        });
    }
    if c.cluster_id > max_clusters {
        r.errors.push(ConfigError::InvalidValue {
            key: "cluster-id".into(),
            value: c.cluster_id.to_string(),
            expected: format!("0-{max_clusters} (max-connected-clusters={max_clusters})"),
        });
    }
    if !(1..=32).contains(&c.cluster_pool_ipv4_mask_size) {
        r.errors.push(ConfigError::InvalidValue {
            key: "cluster-pool-ipv4-mask-size".into(),
            value: c.cluster_pool_ipv4_mask_size.to_string(),
            expected: "a prefix length 1-32".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Parsed<CiliumConfig>, Violations<ConfigError>> {
        CiliumConfig::from_map(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn defaults_are_ciliums() {
        let c = CiliumConfig::default();
        assert!(!c.kube_proxy_replacement);
        assert_eq!(c.routing_mode, RoutingMode::Tunnel);
        assert_eq!(c.tunnel_port(), 8472);
        assert_eq!(c.masquerading(), Masquerading::Iptables);
        assert_eq!(c.load_balancer.maglev_table_size, 16381);
        // Not Cilium's: failover is bounded by the lease, and renewals cost no API writes.
        assert_eq!(
            c.l2_announcements.lease_duration,
            Duration::from_millis(400)
        );
        assert_eq!(
            c.l2_announcements.renew_deadline,
            Duration::from_millis(300)
        );
        assert_eq!(c.l2_announcements.retry_period, Duration::from_millis(100));
        assert_eq!(c.node_port.range, (30000, 32767));
        assert_eq!(c.ipam, IpamMode::ClusterPool);
        assert_eq!(c.policy_enforcement, PolicyEnforcement::Default);
        assert_eq!(c.intent.port, 4250);
    }

    // `strict` is read as true, with a deprecation warning rather than a failure.
    #[test]
    fn kpr_strict_is_true_with_warning() {
        let p = cfg(&[("kube-proxy-replacement", "strict")]).unwrap();
        assert!(p.config.kube_proxy_replacement);
        assert_eq!(
            p.warnings[0].to_string(),
            "kube-proxy-replacement: \"strict\" is deprecated; read as \"true\" (legacy spelling, removed in Cilium 1.15)"
        );
        let p = cfg(&[("kube-proxy-replacement", "disabled")]).unwrap();
        assert!(!p.config.kube_proxy_replacement);
        assert_eq!(p.warnings.len(), 1);
    }

    #[test]
    fn lease_timings_are_clamped_like_cilium() {
        let p = cfg(&[
            ("kube-proxy-replacement", "true"),
            ("enable-l2-announcements", "true"),
            ("l2-announcements-lease-duration", "50ms"),
            ("l2-announcements-renew-deadline", "3s"),
            ("l2-announcements-retry-period", "0"),
        ])
        .unwrap();
        let l2 = &p.config.l2_announcements;
        // Cilium's floor is 1s; ours is 100ms (the lease is the failover bound).
        assert_eq!(l2.lease_duration, Duration::from_millis(100));
        assert_eq!(l2.renew_deadline, Duration::from_millis(50));
        // retry 0 → 200ms, then 50ms <= 1.2 × 200ms: halved from the renew deadline.
        assert_eq!(l2.retry_period, Duration::from_millis(25));
        let text: Vec<_> = p.warnings.iter().map(|w| w.to_string()).collect();
        assert!(text.contains(&"l2-announcements-lease-duration: \"50ms\" is out of range; using 100ms (lease duration is at least 100ms)".to_string()), "{text:?}");
        // Cilium's own defaults, written out, are taken as they are.
        let p = cfg(&[
            ("l2-announcements-lease-duration", "15s"),
            ("l2-announcements-renew-deadline", "5s"),
            ("l2-announcements-retry-period", "2s"),
        ])
        .unwrap();
        assert_eq!(p.config.l2_announcements.lease_duration, secs(15));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(
            text.iter()
                .any(|w| w.starts_with("l2-announcements-renew-deadline: \"3s\"")),
            "{text:?}"
        );
    }

    #[test]
    fn retry_period_too_close_to_renew_is_halved() {
        let p = cfg(&[("l2-announcements-retry-period", "5s")]).unwrap();
        // Half the (default) 300ms renew deadline.
        assert_eq!(
            p.config.l2_announcements.retry_period,
            Duration::from_millis(150)
        );
    }

    #[test]
    fn unknown_keys_are_warnings_not_errors() {
        let p = cfg(&[("identity-allocation-mode", "crd")]).unwrap();
        assert_eq!(
            p.warnings,
            vec![ConfigWarning::IgnoredKey {
                key: "identity-allocation-mode".into(),
                value: "crd".into()
            }]
        );
    }

    #[test]
    fn non_canonical_native_cidr_is_masked_with_warning() {
        let p = cfg(&[
            ("routing-mode", "native"),
            ("ipv4-native-routing-cidr", "10.244.1.0/16"),
        ])
        .unwrap();
        assert_eq!(
            p.config.ipv4_native_routing_cidr,
            Some("10.244.0.0/16".parse().unwrap())
        );
        assert_eq!(
            p.warnings[0].to_string(),
            "ipv4-native-routing-cidr: \"10.244.1.0/16\" is not a canonical prefix (host bits set); using 10.244.0.0/16"
        );
    }

    #[test]
    fn legacy_tunnel_conflicting_with_routing_mode_is_an_error() {
        let err = cfg(&[("tunnel", "vxlan"), ("routing-mode", "native")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("tunnel=\"vxlan\" conflicts with routing-mode=\"native\""),
            "{err}"
        );
    }
}
