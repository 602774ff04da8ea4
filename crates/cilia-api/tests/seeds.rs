//! The seed fixtures are accepted unchanged: CRD objects deserialize, validate and round-trip;
//! the legacy IPVLAN ConfigMaps and the Deckhouse settings parse into the same model.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;

use cilia_api::config::deckhouse::DeckhouseSettings;
use cilia_api::config::{
    CiliumConfig, ConfigWarning, DatapathMode, IpvlanMode, LbMode, Masquerading, RoutingMode,
};
use cilia_api::l2::CiliumL2AnnouncementPolicy;
use cilia_api::lbipam::{self, v2alpha1};
use cilia_api::policy::{CiliumClusterwideNetworkPolicy, Entity};
use common::{read_seed, roundtrip_strict};
use serde_json::{Value, json};

fn seed_value(name: &str) -> Value {
    cilia_api::from_yaml(&read_seed(name)).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// lb-pool.yaml: a v2alpha1 pool with one /24 block offers 256 addresses and converts to v2.
#[test]
fn seed_lb_pool() {
    let v = seed_value("lb-pool.yaml");
    roundtrip_strict::<v2alpha1::CiliumLoadBalancerIPPool>(&v).unwrap();
    let pool: v2alpha1::CiliumLoadBalancerIPPool = cilia_api::from_json_value(v).unwrap();
    pool.spec.validate().unwrap();
    let ranges = pool.spec.ranges().unwrap();
    assert_eq!(ranges.len(), 1);
    assert_eq!(
        (ranges[0].first, ranges[0].last),
        (ip("172.18.250.0"), ip("172.18.250.255"))
    );
    assert!(!pool.spec.is_disabled());
    let v2: lbipam::CiliumLoadBalancerIPPool = pool.into();
    assert_eq!(
        serde_json::to_value(&v2).unwrap()["apiVersion"],
        json!("cilium.io/v2")
    );
}

// l2-policy.yaml: worker nodes announce LB and external IPs on eth<N>.
#[test]
fn seed_l2_policy() {
    let v = seed_value("l2-policy.yaml");
    roundtrip_strict::<CiliumL2AnnouncementPolicy>(&v).unwrap();
    let policy: CiliumL2AnnouncementPolicy = cilia_api::from_json_value(v).unwrap();
    policy.spec.validate().unwrap();
    assert!(policy.spec.announces_external_ips() && policy.spec.announces_load_balancer_ips());
    let ifaces = policy.spec.interface_filter().unwrap();
    assert!(ifaces.matches("eth0") && !ifaces.matches("lo"));
    let nodes = policy.spec.node_selector.as_ref().unwrap();
    assert!(nodes.matches(&labels(&[("kubernetes.io/hostname", "worker")])));
    assert!(!nodes.matches(&labels(&[("node-role.kubernetes.io/control-plane", "")])));
}

// ccnp-control-plane.yaml: a host policy for control-plane nodes allowing the API server entity.
#[test]
fn seed_ccnp() {
    let v = seed_value("ccnp-control-plane.yaml");
    roundtrip_strict::<CiliumClusterwideNetworkPolicy>(&v).unwrap();
    let ccnp: CiliumClusterwideNetworkPolicy = cilia_api::from_json_value(v).unwrap();
    ccnp.validate().unwrap();
    let rule = ccnp.spec.as_ref().unwrap();
    assert!(rule.endpoint_selector.is_none());
    let nodes = rule.node_selector.as_ref().unwrap();
    assert!(nodes.matches(&labels(&[("node-role.kubernetes.io/control-plane", "")])));
    assert!(!nodes.matches(&labels(&[("kubernetes.io/hostname", "worker")])));
    let ingress = &rule.ingress.as_ref().unwrap()[0];
    assert_eq!(
        ingress.from_entities.as_deref(),
        Some(&[Entity::KubeApiserver][..])
    );
    assert!(rule.default_deny_ingress() && !rule.default_deny_egress());
}

// The seed notes: IPVLAN L3 needs no masquerading; L3S lets iptables do it; BPF keeps L3.
#[test]
fn seed_ipvlan_configmaps() {
    let cases = [
        (
            "ipvlan-l3.configmap.yaml",
            IpvlanMode::L3,
            Masquerading::Disabled,
        ),
        (
            "ipvlan-l3s-iptables-masq.configmap.yaml",
            IpvlanMode::L3s,
            Masquerading::Iptables,
        ),
        (
            "ipvlan-l3-bpf-masq.configmap.yaml",
            IpvlanMode::L3,
            Masquerading::Bpf {
                ip_masq_agent: false,
            },
        ),
    ];
    for (file, mode, masq) in cases {
        let parsed =
            CiliumConfig::from_yaml(&read_seed(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let c = &parsed.config;
        assert_eq!(c.datapath_mode, DatapathMode::Ipvlan, "{file}");
        assert_eq!(c.ipvlan_master_device.as_deref(), Some("bond0"), "{file}");
        assert_eq!(c.routing_mode, RoutingMode::Native, "{file}");
        assert!(c.auto_direct_node_routes, "{file}");
        assert_eq!(c.ipvlan_mode(), Some(mode), "{file}");
        assert_eq!(c.masquerading(), masq, "{file}");
        // Legacy keys are read, and said to be legacy; nothing is ignored.
        assert!(
            parsed
                .warnings
                .iter()
                .any(|w| matches!(w, ConfigWarning::Deprecated { key, .. } if key == "tunnel")),
            "{file}: {:?}",
            parsed.warnings
        );
        assert!(
            !parsed
                .warnings
                .iter()
                .any(|w| matches!(w, ConfigWarning::IgnoredKey { .. })),
            "{file}: {:?}",
            parsed.warnings
        );
    }
}

// deckhouse-module-settings.yaml: Hybrid/Disabled/audit map onto the chart's values.
#[test]
fn seed_deckhouse_settings() {
    let settings =
        DeckhouseSettings::from_yaml(&read_seed("deckhouse-module-settings.yaml")).unwrap();
    let values = settings.to_helm_values(Some("10.244.0.0/16"));
    assert_eq!(values["loadBalancer"]["mode"], json!("hybrid"));
    assert_eq!(values["routingMode"], json!("native"));
    assert_eq!(values["policyAuditMode"], json!(true));
    assert_eq!(values["ipv4NativeRoutingCIDR"], json!("10.244.0.0/16"));
    assert_eq!(values["kubeProxyReplacement"], json!(true));
}

// cilium-medium.yaml, rendered by the chart: the ConfigMap parses into the model with exactly
// the legacy-spelling warning, and the ip-masq-agent file with the non-canonical one.
#[test]
fn seed_cilium_medium_through_the_chart() {
    let seed = common::seed("cilium-medium.yaml");
    let docs = common::template(&["-f", seed.to_str().unwrap()]);
    let cm = common::find(&docs, "ConfigMap", "cilium-config");
    let parsed = CiliumConfig::from_map(&common::configmap_data(cm)).unwrap();
    let c = &parsed.config;
    assert!(c.kube_proxy_replacement);
    assert_eq!(c.routing_mode, RoutingMode::Native);
    assert_eq!(
        c.ipv4_native_routing_cidr,
        Some("10.244.0.0/16".parse().unwrap())
    );
    assert_eq!(
        c.masquerading(),
        Masquerading::Bpf {
            ip_masq_agent: true
        }
    );
    assert!(c.l2_announcements.enabled && c.external_ips_enabled());
    assert_eq!(
        c.load_balancer.acceleration,
        cilia_api::config::LbAcceleration::Native
    );
    assert_eq!(c.load_balancer.mode, LbMode::Hybrid);
    assert_eq!(c.cluster_name, "kind-kind");
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);

    let masq = common::find(&docs, "ConfigMap", "ip-masq-agent");
    let file = masq["data"]["config"].as_str().unwrap();
    let parsed = cilia_api::config::ipmasq::IpMasqAgentConfig::parse(file).unwrap();
    assert_eq!(
        parsed.config.non_masquerade_cidrs,
        vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]
    );
    assert_eq!(
        parsed
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>(),
        vec![
            "ip-masq-agent: nonMasqueradeCIDRs[0]: \"10.244.0.0/8\" is not a canonical prefix (host bits set); using 10.0.0.0/8"
        ]
    );
}
