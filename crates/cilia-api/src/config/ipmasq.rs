//! The ip-masq-agent file (ConfigMap `ip-masq-agent`, key `config`): destinations that BPF
//! masquerading leaves alone. YAML or JSON (the chart renders JSON; hand-written files are
//! usually YAML).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ConfigError, ConfigWarning, Parsed, parse_cidr_lenient};
use crate::Violations;

/// Name of the ConfigMap holding the file.
pub const CONFIGMAP_NAME: &str = "ip-masq-agent";
/// Data key of the file in that ConfigMap.
pub const CONFIGMAP_KEY: &str = "config";
/// Where agents read it (`ip-masq-agent-config-path`).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/config/ip-masq-agent";

/// Used when the file has no `nonMasqueradeCIDRs` (Cilium's list, RFC 1918 and friends).
pub const DEFAULT_NON_MASQUERADE_CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "240.0.0.0/4",
];
/// Appended unless `masqLinkLocal: true`.
pub const LINK_LOCAL_V4: &str = "169.254.0.0/16";
/// Appended unless `masqLinkLocalIPv6: true`.
pub const LINK_LOCAL_V6: &str = "fe80::/10";

/// The file as written. Unknown fields are errors: a typo must not silently mean "defaults".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpMasqAgentFile {
    #[serde(
        default,
        rename = "nonMasqueradeCIDRs",
        skip_serializing_if = "Option::is_none"
    )]
    pub non_masquerade_cidrs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masq_link_local: Option<bool>,
    #[serde(
        default,
        rename = "masqLinkLocalIPv6",
        skip_serializing_if = "Option::is_none"
    )]
    pub masq_link_local_ipv6: Option<bool>,
    /// Accepted for compatibility with Kubernetes' ip-masq-agent; the file is watched instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_interval: Option<String>,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpMasqAgentConfig {
    /// Canonical prefixes as listed (or Cilium's defaults when none are).
    pub non_masquerade_cidrs: Vec<IpNet>,
    /// True when the defaults were used.
    pub defaulted: bool,
    pub masq_link_local: bool,
    pub masq_link_local_ipv6: bool,
}

impl Default for IpMasqAgentConfig {
    /// What an absent or empty file means.
    fn default() -> Self {
        Self {
            non_masquerade_cidrs: DEFAULT_NON_MASQUERADE_CIDRS
                .iter()
                .map(|c| c.parse().expect("literal"))
                .collect(),
            defaulted: true,
            masq_link_local: false,
            masq_link_local_ipv6: false,
        }
    }
}

impl IpMasqAgentConfig {
    /// Parses the file (YAML or JSON). Prefixes with host bits set are accepted as their
    /// canonical form (`10.244.0.0/8` → `10.0.0.0/8`), with a warning naming both.
    pub fn parse(text: &str) -> Result<Parsed<IpMasqAgentConfig>, Violations<ConfigError>> {
        if text.trim().is_empty() {
            return Ok(Parsed {
                config: Self::default(),
                warnings: Vec::new(),
            });
        }
        let file: IpMasqAgentFile = crate::from_yaml(text).map_err(|e| {
            Violations(vec![ConfigError::Syntax {
                source_name: format!("{CONFIGMAP_NAME}: {}", e.path),
                reason: e.message,
            }])
        })?;
        Self::from_file(&file)
    }

    /// Validates an already-deserialized file.
    pub fn from_file(
        file: &IpMasqAgentFile,
    ) -> Result<Parsed<IpMasqAgentConfig>, Violations<ConfigError>> {
        let mut errors = Vec::new();
        let mut warnings: Vec<ConfigWarning> = Vec::new();
        let listed = file.non_masquerade_cidrs.clone().unwrap_or_default();
        let mut cidrs = Vec::new();
        for (i, value) in listed.iter().enumerate() {
            let key = format!("{CONFIGMAP_NAME}: nonMasqueradeCIDRs[{i}]");
            if let Some(net) = parse_cidr_lenient(&key, value.trim(), &mut errors, &mut warnings)
                && !cidrs.contains(&net)
            {
                cidrs.push(net);
            }
        }
        Violations(errors).into_result()?;
        let mut config = if cidrs.is_empty() {
            Self::default()
        } else {
            Self {
                non_masquerade_cidrs: cidrs,
                defaulted: false,
                ..Self::default()
            }
        };
        config.masq_link_local = file.masq_link_local.unwrap_or(false);
        config.masq_link_local_ipv6 = file.masq_link_local_ipv6.unwrap_or(false);
        Ok(Parsed { config, warnings })
    }

    /// Everything exempt from masquerading: the list plus link-local unless masqueraded.
    pub fn effective_non_masquerade_cidrs(&self) -> Vec<IpNet> {
        let mut all = self.non_masquerade_cidrs.clone();
        let mut push = |c: &str| {
            let net: IpNet = c.parse().expect("literal");
            if !all.contains(&net) {
                all.push(net);
            }
        };
        if !self.masq_link_local {
            push(LINK_LOCAL_V4);
        }
        if !self.masq_link_local_ipv6 {
            push(LINK_LOCAL_V6);
        }
        all
    }

    /// Whether traffic to `ip` keeps its pod source address.
    pub fn is_exempt(&self, ip: std::net::IpAddr) -> bool {
        self.effective_non_masquerade_cidrs()
            .iter()
            .any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The seed's `10.244.0.0/8` is accepted as `10.0.0.0/8`, and the warning says so.
    #[test]
    fn non_canonical_prefix_is_accepted_with_warning() {
        let p = IpMasqAgentConfig::parse(r#"{"nonMasqueradeCIDRs":["10.244.0.0/8"]}"#).unwrap();
        assert_eq!(
            p.config.non_masquerade_cidrs,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            p.warnings[0].to_string(),
            "ip-masq-agent: nonMasqueradeCIDRs[0]: \"10.244.0.0/8\" is not a canonical prefix (host bits set); using 10.0.0.0/8"
        );
    }

    #[test]
    fn yaml_and_link_local() {
        let p = IpMasqAgentConfig::parse(
            "nonMasqueradeCIDRs:\n- 192.168.0.0/16\nmasqLinkLocal: true\n",
        )
        .unwrap();
        let all = p.config.effective_non_masquerade_cidrs();
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(!p.config.is_exempt("169.254.1.1".parse().unwrap()));
        assert!(p.config.is_exempt("fe80::1".parse().unwrap()));
    }

    #[test]
    fn empty_file_means_defaults_plus_link_local() {
        let p = IpMasqAgentConfig::parse("").unwrap();
        assert!(p.config.defaulted);
        let all = p.config.effective_non_masquerade_cidrs();
        assert_eq!(all.len(), DEFAULT_NON_MASQUERADE_CIDRS.len() + 2);
        assert!(p.config.is_exempt("100.64.0.1".parse().unwrap()));
        assert!(!p.config.is_exempt("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn bad_prefix_and_bad_field_name_the_path() {
        let err = IpMasqAgentConfig::parse("nonMasqueradeCIDRs: [10.0.0.0/33]").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ip-masq-agent: nonMasqueradeCIDRs[0]: invalid value \"10.0.0.0/33\""),
            "{err}"
        );
        let err = IpMasqAgentConfig::parse("masqLinkLocal: maybe").unwrap_err();
        assert!(err.to_string().contains("masqLinkLocal"), "{err}");
        let err = IpMasqAgentConfig::parse("nonMasqueradeCidrs: [10.0.0.0/8]").unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown field `nonMasqueradeCidrs`"),
            "{err}"
        );
    }
}
