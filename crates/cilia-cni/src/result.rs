//! The CNI success result (section 5 of the spec), shaped for the version the caller asked for,
//! and decoded back from `prevResult`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::CniError;
use crate::version::SpecVersion;

/// An ADD result. Fields this plugin does not interpret (from chained plugins in `prevResult`, or
/// newer spec fields) are kept in `extra` maps so a pass-through loses nothing.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cni_version: Option<String>,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

/// An interface created by the attachment; `sandbox` is set for the one inside the container.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Spec 1.1 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An address assigned by the attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`; present only before spec 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A route created by the attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DNS settings; this plugin leaves them empty (`{}`), the kubelet configures pod DNS.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl CniResult {
    /// Decodes a `prevResult`, whatever version shaped it.
    pub fn from_prev_result(v: &Value) -> Result<Self, CniError> {
        serde_json::from_value(v.clone()).map_err(|e| {
            CniError::config(
                "prevResult",
                crate::config::show(v),
                format!("not a CNI result: {e}"),
            )
        })
    }

    /// Appends another result's interfaces, IPs and routes, re-basing its interface indexes.
    pub fn append(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns == Dns::default() {
            self.dns = other.dns;
        }
    }

    /// The result as the given spec version spells it.
    pub fn shaped_for(&self, version: SpecVersion) -> CniResult {
        let mut out = self.clone();
        out.cni_version = Some(version.as_str().to_string());
        for ip in &mut out.ips {
            ip.extra.remove("version");
            ip.version = version.ips_carry_version().then(|| {
                match ip.address {
                    IpNet::V4(_) => "4",
                    IpNet::V6(_) => "6",
                }
                .to_string()
            });
        }
        for iface in &mut out.interfaces {
            if !version.interfaces_carry_mtu() {
                iface.mtu = None;
                iface.extra.remove("mtu");
            }
        }
        out
    }

    /// The JSON printed on stdout.
    pub fn to_json(&self, version: SpecVersion) -> String {
        serde_json::to_string(&self.shaped_for(version)).expect("a result always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            cni_version: None,
            interfaces: vec![
                Interface {
                    name: "lxc0123456789a".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1450),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:02".into()),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/pod".into()),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.1.7/32".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(1),
                extra: Map::new(),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
                extra: Map::new(),
            }],
            dns: Dns::default(),
        }
    }

    // 1.0.0 drops the per-IP version and has no interface MTU; dns is an empty object.
    #[test]
    fn shape_v1_0_0() {
        let v: Value = serde_json::from_str(&sample().to_json(SpecVersion::V1_0_0)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "interfaces": [
                    {"name": "lxc0123456789a", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/pod"}
                ],
                "ips": [{"address": "10.244.1.7/32", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
                "dns": {}
            })
        );
    }

    // 1.1.0 adds the interface MTU.
    #[test]
    fn shape_v1_1_0() {
        let v: Value = serde_json::from_str(&sample().to_json(SpecVersion::V1_1_0)).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][1]["mtu"], 1450);
        assert!(v["ips"][0].get("version").is_none());
    }

    // 0.3.x and 0.4.0 carry "version": "4" on each IP and no MTU.
    #[test]
    fn shape_pre_1_0() {
        for version in [
            SpecVersion::V0_3_0,
            SpecVersion::V0_3_1,
            SpecVersion::V0_4_0,
        ] {
            let v: Value = serde_json::from_str(&sample().to_json(version)).unwrap();
            assert_eq!(v["cniVersion"], version.as_str());
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][0]["address"], "10.244.1.7/32");
            assert!(v["interfaces"][1].get("mtu").is_none());
        }
    }

    // The spec's 0.4.0-era prevResult (with "version") and 1.0.0 example both decode, and
    // unknown keys survive a round trip.
    #[test]
    fn decodes_spec_example_prev_results() {
        let v04 = serde_json::json!({
            "ips": [{"version": "4", "address": "10.0.0.5/32", "interface": 2}],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let r = CniResult::from_prev_result(&v04).unwrap();
        assert_eq!(
            r.interfaces[2].sandbox.as_deref(),
            Some("/var/run/netns/blue")
        );
        assert_eq!(r.ips[0].interface, Some(2));
        assert_eq!(r.dns.nameservers, ["10.1.0.1"]);

        let v10 = serde_json::json!({
            "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "00:11:22:33:44:66", "sandbox": "/var/run/netns/blue",
                 "socketPath": "/x"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let r = CniResult::from_prev_result(&v10).unwrap();
        assert_eq!(r.routes[0].gw, None);
        let back: Value = serde_json::from_str(&r.to_json(SpecVersion::V1_0_0)).unwrap();
        assert_eq!(back["interfaces"][2]["socketPath"], "/x");
        assert_eq!(back["ips"], v10["ips"]);
    }

    // A prevResult that is not a result is a config error naming prevResult.
    #[test]
    fn bad_prev_result_is_code_7() {
        let err = CniResult::from_prev_result(&serde_json::json!({"ips": [{"address": "nope"}]}))
            .unwrap_err();
        assert_eq!(err.code(), crate::error::INVALID_CONFIG);
        assert!(err.to_string().contains("prevResult"));
    }

    // Appending re-bases interface indexes so a chained result stays consistent.
    #[test]
    fn append_rebases_indexes() {
        let mut prev = sample();
        prev.dns.nameservers = vec!["10.96.0.10".into()];
        prev.append(sample());
        assert_eq!(prev.interfaces.len(), 4);
        assert_eq!(prev.ips[1].interface, Some(3));
        assert_eq!(prev.dns.nameservers, ["10.96.0.10"]);
    }
}
