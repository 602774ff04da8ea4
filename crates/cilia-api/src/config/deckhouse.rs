//! Deckhouse `cni-cilium` module settings → Helm values of `charts/cilia`.
//!
//! The module names the same features with other words:
//!
//! | setting | chart value |
//! |---|---|
//! | `bpfLBMode: SNAT\|DSR\|Hybrid` | `loadBalancer.mode: snat\|dsr\|hybrid` |
//! | `tunnelMode: Disabled` | `routingMode: native` (+ `ipv4NativeRoutingCIDR` = pod CIDR, `autoDirectNodeRoutes: true`) |
//! | `tunnelMode: VXLAN` | `routingMode: tunnel`, `tunnelProtocol: vxlan` |
//! | `policyAuditMode` | `policyAuditMode` |
//! | `masqueradeMode: BPF\|Netfilter` | `bpf.masquerade: true\|false` |
//! | `createNodeRoutes` | `autoDirectNodeRoutes` |
//! | `debugLogging` | `debug.enabled` |
//!
//! The module always replaces kube-proxy, so the mapping sets `kubeProxyReplacement: true`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ParseError;

/// The module settings Cilia understands. Unknown settings are errors (naming the setting).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeckhouseSettings {
    #[serde(default, rename = "bpfLBMode", skip_serializing_if = "Option::is_none")]
    pub bpf_lb_mode: Option<DeckhouseLbMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_mode: Option<DeckhouseTunnelMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_audit_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade_mode: Option<DeckhouseMasqueradeMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_node_routes: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug_logging: Option<bool>,
}

/// `bpfLBMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeckhouseLbMode {
    #[serde(rename = "SNAT")]
    Snat,
    #[serde(rename = "DSR")]
    Dsr,
    Hybrid,
}

/// `tunnelMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeckhouseTunnelMode {
    Disabled,
    #[serde(rename = "VXLAN")]
    Vxlan,
}

/// `masqueradeMode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeckhouseMasqueradeMode {
    #[serde(rename = "BPF")]
    Bpf,
    Netfilter,
}

impl DeckhouseSettings {
    /// Reads the settings: a bare map, or a `ModuleConfig` (its `spec.settings`).
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        let doc: serde_yaml::Value = crate::from_yaml(text)?;
        if doc.get("kind").and_then(|k| k.as_str()) == Some("ModuleConfig") {
            let settings = doc
                .get("spec")
                .and_then(|s| s.get("settings"))
                .cloned()
                .unwrap_or(serde_yaml::Value::Mapping(Default::default()));
            let text = serde_yaml::to_string(&settings).expect("YAML value serializes");
            return crate::from_yaml(&text).map_err(|e| ParseError {
                path: format!("spec.settings.{}", e.path),
                message: e.message,
            });
        }
        crate::from_yaml(text)
    }

    /// Helm values for `charts/cilia`. `pod_cidr` (the cluster's pod subnet) becomes
    /// `ipv4NativeRoutingCIDR` when the tunnel is disabled, as the module does.
    pub fn to_helm_values(&self, pod_cidr: Option<&str>) -> Value {
        let mut v = Map::new();
        v.insert("kubeProxyReplacement".into(), json!(true));
        if let Some(mode) = self.bpf_lb_mode {
            let mode = match mode {
                DeckhouseLbMode::Snat => "snat",
                DeckhouseLbMode::Dsr => "dsr",
                DeckhouseLbMode::Hybrid => "hybrid",
            };
            v.insert("loadBalancer".into(), json!({ "mode": mode }));
        }
        match self.tunnel_mode {
            Some(DeckhouseTunnelMode::Disabled) => {
                v.insert("routingMode".into(), json!("native"));
                v.insert("autoDirectNodeRoutes".into(), json!(true));
                if let Some(cidr) = pod_cidr {
                    v.insert("ipv4NativeRoutingCIDR".into(), json!(cidr));
                }
            }
            Some(DeckhouseTunnelMode::Vxlan) => {
                v.insert("routingMode".into(), json!("tunnel"));
                v.insert("tunnelProtocol".into(), json!("vxlan"));
                v.insert("autoDirectNodeRoutes".into(), json!(false));
            }
            None => {}
        }
        if let Some(audit) = self.policy_audit_mode {
            v.insert("policyAuditMode".into(), json!(audit));
        }
        if let Some(mode) = self.masquerade_mode {
            v.insert(
                "bpf".into(),
                json!({ "masquerade": mode == DeckhouseMasqueradeMode::Bpf }),
            );
        }
        if let Some(routes) = self.create_node_routes {
            v.insert("autoDirectNodeRoutes".into(), json!(routes));
        }
        if let Some(debug) = self.debug_logging {
            v.insert("debug".into(), json!({ "enabled": debug }));
        }
        Value::Object(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_config_form_is_accepted() {
        let s = DeckhouseSettings::from_yaml(
            "apiVersion: deckhouse.io/v1alpha1\nkind: ModuleConfig\nspec:\n  settings:\n    tunnelMode: VXLAN\n",
        )
        .unwrap();
        assert_eq!(s.tunnel_mode, Some(DeckhouseTunnelMode::Vxlan));
        let v = s.to_helm_values(None);
        assert_eq!(v["routingMode"], "tunnel");
        assert_eq!(v["tunnelProtocol"], "vxlan");
    }

    #[test]
    fn unknown_setting_and_bad_value_name_the_field() {
        let err = DeckhouseSettings::from_yaml("bpfLbMode: DSR").unwrap_err();
        assert!(err.to_string().contains("bpfLbMode"), "{err}");
        let err = DeckhouseSettings::from_yaml("bpfLBMode: Fast").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("bpfLBMode: unknown variant `Fast`"),
            "{err}"
        );
    }
}
