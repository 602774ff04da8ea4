//! Bad objects and bad configuration values are rejected with the field (or key) and the value
//! in the message — by the Rust validation, and by the CRD schemas the API server applies.

mod common;

use std::collections::BTreeMap;
use std::fs;

use cilia_api::config::CiliumConfig;
use cilia_api::config::deckhouse::DeckhouseSettings;
use cilia_api::config::ipmasq::IpMasqAgentConfig;
use cilia_api::crd;
use cilia_api::l2::CiliumL2AnnouncementPolicy;
use cilia_api::lbipam;
use cilia_api::policy::CiliumClusterwideNetworkPolicy;
use serde_json::{Value, json};

/// Parses and validates an object of the kind its `kind` names; the error text, or `None`.
fn rust_error(obj: &Value) -> Option<String> {
    fn check<T: serde::de::DeserializeOwned>(
        obj: &Value,
        validate: impl Fn(&T) -> Result<(), String>,
    ) -> Option<String> {
        match cilia_api::from_json_value::<T>(obj.clone()) {
            Err(e) => Some(e.to_string()),
            Ok(t) => validate(&t).err(),
        }
    }
    match obj["kind"].as_str().unwrap() {
        "CiliumLoadBalancerIPPool" => check(obj, |p: &lbipam::CiliumLoadBalancerIPPool| {
            p.spec.validate().map_err(|e| e.to_string())
        }),
        "CiliumL2AnnouncementPolicy" => check(obj, |p: &CiliumL2AnnouncementPolicy| {
            p.spec.validate().map_err(|e| e.to_string())
        }),
        "CiliumClusterwideNetworkPolicy" => check(obj, |p: &CiliumClusterwideNetworkPolicy| {
            p.validate().map_err(|e| e.to_string())
        }),
        other => panic!("no validator for {other}"),
    }
}

fn pool(spec: Value) -> Value {
    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumLoadBalancerIPPool", "metadata": {"name": "p"}, "spec": spec})
}

fn l2(spec: Value) -> Value {
    json!({"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumL2AnnouncementPolicy", "metadata": {"name": "l2"}, "spec": spec})
}

fn ccnp(top: Value) -> Value {
    let mut v = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "c"}});
    for (k, x) in top.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn rule(r: Value) -> Value {
    let mut base = json!({"endpointSelector": {}});
    for (k, x) in r.as_object().unwrap() {
        base[k] = x.clone();
    }
    ccnp(json!({ "spec": base }))
}

/// `(what, object, substrings the error must contain)`.
fn bad_objects() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        (
            "cidr prefix too long",
            pool(json!({"blocks": [{"cidr": "172.18.250.0/33"}]})),
            vec!["spec.blocks[0].cidr", "172.18.250.0/33"],
        ),
        (
            "start not an address",
            pool(json!({"blocks": [{"start": "172.18.250.300"}]})),
            vec!["spec.blocks[0].start", "172.18.250.300"],
        ),
        (
            "stop before start",
            pool(json!({"blocks": [{"start": "192.0.2.9", "stop": "192.0.2.1"}]})),
            vec!["spec.blocks[0]", "192.0.2.1", "192.0.2.9"],
        ),
        (
            "mixed families",
            pool(json!({"blocks": [{"start": "192.0.2.1", "stop": "2001:db8::1"}]})),
            vec!["spec.blocks[0]", "2001:db8::1"],
        ),
        (
            "cidr and start",
            pool(json!({"blocks": [{"cidr": "192.0.2.0/24", "start": "192.0.2.1"}]})),
            vec!["spec.blocks[0]", "192.0.2.0/24"],
        ),
        (
            "stop without start",
            pool(json!({"blocks": [{"stop": "192.0.2.1"}]})),
            vec!["spec.blocks[0]", "192.0.2.1"],
        ),
        (
            "no blocks",
            pool(json!({"blocks": []})),
            vec!["spec.blocks", "got none"],
        ),
        (
            "legacy cidrs and blocks",
            pool(
                json!({"blocks": [{"cidr": "192.0.2.0/24"}], "cidrs": [{"cidr": "198.51.100.0/24"}]}),
            ),
            vec!["spec.cidrs", "1 legacy"],
        ),
        (
            "allowFirstLastIPs enum",
            pool(json!({"blocks": [{"cidr": "192.0.2.0/24"}], "allowFirstLastIPs": "Maybe"})),
            vec!["spec.allowFirstLastIPs", "Maybe"],
        ),
        (
            "disabled not a bool",
            pool(json!({"blocks": [{"cidr": "192.0.2.0/24"}], "disabled": "no"})),
            vec!["spec.disabled", "no"],
        ),
        (
            "In without values",
            pool(
                json!({"blocks": [{"cidr": "192.0.2.0/24"}], "serviceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
            ),
            vec!["spec.serviceSelector.matchExpressions[0].values", "[]"],
        ),
        (
            "bad label value",
            pool(
                json!({"blocks": [{"cidr": "192.0.2.0/24"}], "serviceSelector": {"matchLabels": {"app": "a b"}}}),
            ),
            vec!["spec.serviceSelector.matchLabels[app]", "a b"],
        ),
        (
            "interface regex",
            l2(json!({"interfaces": ["^eth[0-9"]})),
            vec!["spec.interfaces[0]", "^eth[0-9"],
        ),
        (
            "selector operator",
            l2(json!({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}})),
            vec!["spec.nodeSelector.matchExpressions[0].operator", "Is"],
        ),
        (
            "Exists with values",
            l2(
                json!({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}}),
            ),
            vec!["spec.nodeSelector.matchExpressions[0].values", "\"x\""],
        ),
        (
            "externalIPs not a bool",
            l2(json!({"externalIPs": "yes"})),
            vec!["spec.externalIPs", "yes"],
        ),
        (
            "neither spec nor specs",
            ccnp(json!({})),
            vec!["spec or specs must be provided"],
        ),
        (
            "empty specs",
            ccnp(json!({"specs": []})),
            vec!["spec or specs must be provided"],
        ),
        (
            "both selectors",
            ccnp(json!({"spec": {"endpointSelector": {}, "nodeSelector": {}}})),
            vec!["spec", "mutually exclusive"],
        ),
        (
            "no selector",
            ccnp(json!({"specs": [{"ingress": [{}]}]})),
            vec!["specs[0]", "endpointSelector or nodeSelector"],
        ),
        (
            "unknown entity",
            rule(json!({"ingress": [{"fromEntities": ["galaxy"]}]})),
            vec!["spec.ingress[0].fromEntities[0]", "galaxy"],
        ),
        (
            "port out of range",
            rule(json!({"egress": [{"toPorts": [{"ports": [{"port": "99999"}]}]}]})),
            vec!["spec.egress[0].toPorts[0].ports[0].port", "99999"],
        ),
        (
            "bad port name",
            rule(json!({"egress": [{"toPorts": [{"ports": [{"port": "my_port"}]}]}]})),
            vec!["spec.egress[0].toPorts[0].ports[0].port", "my_port"],
        ),
        (
            "endPort below port",
            rule(
                json!({"ingressDeny": [{"toPorts": [{"ports": [{"port": "8080", "endPort": 80}]}]}]}),
            ),
            vec![
                "spec.ingressDeny[0].toPorts[0].ports[0].endPort",
                "80",
                "8080",
            ],
        ),
        (
            "protocol enum",
            rule(
                json!({"egress": [{"toPorts": [{"ports": [{"port": "53", "protocol": "ICMP"}]}]}]}),
            ),
            vec!["spec.egress[0].toPorts[0].ports[0].protocol", "ICMP"],
        ),
        (
            "toCIDR prefix",
            rule(json!({"egress": [{"toCIDR": ["10.0.0.0/40"]}]})),
            vec!["spec.egress[0].toCIDR[0]", "10.0.0.0/40"],
        ),
        (
            "except outside cidr",
            rule(
                json!({"egressDeny": [{"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}]}]}),
            ),
            vec![
                "spec.egressDeny[0].toCIDRSet[0].except[0]",
                "192.168.0.0/16",
                "10.0.0.0/8",
            ],
        ),
        (
            "icmp type name",
            rule(json!({"ingress": [{"icmps": [{"fields": [{"type": "Ping"}]}]}]})),
            vec!["spec.ingress[0].icmps[0].fields[0].type", "Ping"],
        ),
        (
            "log too long",
            rule(json!({"log": {"value": "x".repeat(33)}})),
            vec!["spec.log.value", "xxxxxxxx"],
        ),
        (
            "L7 rules are unsupported",
            rule(
                json!({"ingress": [{"toPorts": [{"ports": [{"port": "80"}], "rules": {"http": [{"method": "GET"}]}}]}]}),
            ),
            vec![
                "spec.ingress[0].toPorts[0].rules",
                "L7 rules",
                "not supported",
            ],
        ),
        (
            "toFQDNs are unsupported",
            rule(json!({"egress": [{"toFQDNs": [{"matchName": "example.com"}]}]})),
            vec!["spec.egress[0].toFQDNs", "not supported"],
        ),
        (
            "unknown rule field",
            rule(json!({"ingress": [{"fromEndpoint": [{}]}]})),
            vec!["spec.ingress[0].fromEndpoint", "unknown field"],
        ),
    ]
}

// Every bad object fails Rust-side with its field path and value in the message.
#[test]
fn bad_objects_name_field_and_value() {
    let mut failures = Vec::new();
    for (what, obj, needles) in bad_objects() {
        match rust_error(&obj) {
            None => failures.push(format!("{what}: accepted")),
            Some(msg) => {
                for n in &needles {
                    if !msg.contains(n) {
                        failures.push(format!("{what}: {msg:?} lacks {n:?}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// Unsupported content is kept, not dropped: it round-trips and is reported, not enforced.
#[test]
fn unsupported_policy_content_is_preserved() {
    let obj = rule(
        json!({"ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{"method": "GET", "path": "/v1"}]}}]}]}),
    );
    common::roundtrip_strict::<CiliumClusterwideNetworkPolicy>(&obj).unwrap();
    let p: CiliumClusterwideNetworkPolicy = cilia_api::from_json_value(obj).unwrap();
    let errs = p.validate().unwrap_err();
    assert!(errs.iter().all(|e| e.is_unsupported()), "{errs}");
}

/// Writes a throw-away chart whose values schema is a CRD version's openAPIV3Schema, so the real
/// Helm engine's JSON-schema validator (Go, RE2 patterns like the API server) checks objects.
fn schema_checker(kind_plural: &str, version: &str) -> tempfile::TempDir {
    let crd = crd::all()
        .into_iter()
        .find(|c| c.spec.names.plural == kind_plural)
        .unwrap();
    let v = serde_json::to_value(&crd).unwrap();
    let schema = v["spec"]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == version)
        .unwrap()["schema"]["openAPIV3Schema"]
        .clone();
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("Chart.yaml"),
        "apiVersion: v2\nname: crdcheck\nversion: 0.1.0\n",
    )
    .unwrap();
    fs::write(
        dir.path().join("values.schema.json"),
        serde_json::to_string(&schema).unwrap(),
    )
    .unwrap();
    fs::create_dir(dir.path().join("templates")).unwrap();
    dir
}

fn schema_error(checker: &tempfile::TempDir, obj: &Value) -> Option<String> {
    let file = checker.path().join("object.json");
    fs::write(&file, serde_json::to_string(obj).unwrap()).unwrap();
    let run = common::helm(&[
        "lint",
        checker.path().to_str().unwrap(),
        "-f",
        file.to_str().unwrap(),
    ]);
    (!run.ok).then(|| run.stdout + &run.stderr)
}

// The CRD schemas themselves reject bad objects with the field named (what the API server
// returns), and accept the seed objects. CEL rules are not evaluated by this validator; they
// are asserted in tests/crds.rs.
#[test]
fn crd_schemas_reject_bad_objects_with_the_field_named() {
    let pools = schema_checker("ciliumloadbalancerippools", "v2");
    let l2s = schema_checker("ciliuml2announcementpolicies", "v2alpha1");
    let ccnps = schema_checker("ciliumclusterwidenetworkpolicies", "v2");
    let cases: Vec<(&tempfile::TempDir, Value, Vec<&str>)> = vec![
        (
            &pools,
            pool(json!({"blocks": [{"cidr": "172.18.250.0/33"}]})),
            vec!["/spec/blocks/0/cidr", "172.18.250.0/33"],
        ),
        (
            &pools,
            pool(json!({"blocks": [{"start": "10.0.0.256"}]})),
            vec!["/spec/blocks/0/start", "10.0.0.256"],
        ),
        (
            &pools,
            pool(json!({"blocks": []})),
            vec!["/spec/blocks", "minItems"],
        ),
        (
            &pools,
            pool(json!({"blocks": [{"cidr": "192.0.2.0/24"}], "allowFirstLastIPs": "Maybe"})),
            vec!["/spec/allowFirstLastIPs", "'Yes', 'No'"],
        ),
        (
            &pools,
            pool(
                json!({"blocks": [{"cidr": "192.0.2.0/24"}], "serviceSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}),
            ),
            vec!["/spec/serviceSelector/matchExpressions/0/operator"],
        ),
        (
            &l2s,
            l2(json!({"loadBalancerIPs": "yes"})),
            vec!["/spec/loadBalancerIPs", "boolean"],
        ),
        (
            &l2s,
            l2(json!({"nodeSelector": {"matchLabels": {"a": "-x-"}}})),
            vec!["/spec/nodeSelector/matchLabels/a", "-x-"],
        ),
        (
            &ccnps,
            rule(json!({"ingress": [{"fromEntities": ["galaxy"]}]})),
            vec!["/spec/ingress/0/fromEntities/0", "kube-apiserver"],
        ),
        (
            &ccnps,
            rule(
                json!({"egress": [{"toPorts": [{"ports": [{"port": "53", "protocol": "ICMP"}]}]}]}),
            ),
            vec![
                "/spec/egress/0/toPorts/0/ports/0/protocol",
                "'TCP', 'UDP', 'SCTP', 'ANY'",
            ],
        ),
        (
            &ccnps,
            rule(json!({"egress": [{"toPorts": [{"ports": [{"port": "53", "endPort": 70000}]}]}]})),
            vec!["/spec/egress/0/toPorts/0/ports/0/endPort", "got 70,000"],
        ),
        (
            &ccnps,
            rule(json!({"egress": [{"toPorts": [{"ports": [{"protocol": "TCP"}]}]}]})),
            vec!["/spec/egress/0/toPorts/0/ports/0", "port"],
        ),
        (
            &ccnps,
            rule(json!({"egress": [{"toCIDR": ["10.0.0.0/40"]}]})),
            vec!["/spec/egress/0/toCIDR/0", "10.0.0.0/40"],
        ),
        (
            &ccnps,
            rule(json!({"log": {"value": "x".repeat(33)}})),
            vec!["/spec/log/value", "maxLength"],
        ),
    ];
    let mut failures = Vec::new();
    for (checker, obj, needles) in &cases {
        match schema_error(checker, obj) {
            None => failures.push(format!("accepted by the schema: {obj}")),
            Some(msg) => {
                for n in needles {
                    if !msg.contains(n) {
                        failures.push(format!("{obj}: schema error lacks {n:?}:\n{msg}"));
                    }
                }
            }
        }
    }
    for (checker, seed) in [
        (&pools, "lb-pool.yaml"),
        (&l2s, "l2-policy.yaml"),
        (&ccnps, "ccnp-control-plane.yaml"),
    ] {
        let obj: Value = cilia_api::from_yaml(&common::read_seed(seed)).unwrap();
        if let Some(msg) = schema_error(checker, &obj) {
            failures.push(format!("seed {seed} rejected by its CRD schema:\n{msg}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn config_error(pairs: &[(&str, &str)]) -> Option<String> {
    let data: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    CiliumConfig::from_map(&data).err().map(|e| e.to_string())
}

// Every bad ConfigMap value fails with the key and the value in the message.
#[test]
fn bad_config_values_name_key_and_value() {
    let kpr = ("kube-proxy-replacement", "true");
    type Case = (Vec<(&'static str, &'static str)>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            vec![("kube-proxy-replacement", "partial")],
            vec!["kube-proxy-replacement", "\"partial\""],
        ),
        (
            vec![("routing-mode", "bgp")],
            vec!["routing-mode", "\"bgp\"", "\"native\""],
        ),
        (
            vec![("tunnel-protocol", "gre")],
            vec!["tunnel-protocol", "\"gre\""],
        ),
        (vec![("tunnel", "ipip")], vec!["tunnel", "\"ipip\""]),
        (
            vec![("datapath-mode", "macvlan")],
            vec!["datapath-mode", "\"macvlan\""],
        ),
        (
            vec![kpr, ("bpf-lb-acceleration", "fast")],
            vec!["bpf-lb-acceleration", "\"fast\"", "\"best-effort\""],
        ),
        (
            vec![("bpf-lb-mode", "magic")],
            vec!["bpf-lb-mode", "\"magic\""],
        ),
        (
            vec![("bpf-lb-algorithm", "roundrobin")],
            vec!["bpf-lb-algorithm", "\"roundrobin\""],
        ),
        (
            vec![("bpf-lb-dsr-dispatch", "gre")],
            vec!["bpf-lb-dsr-dispatch", "\"gre\""],
        ),
        (
            vec![("bpf-lb-maglev-table-size", "1000")],
            vec!["bpf-lb-maglev-table-size", "\"1000\"", "16381"],
        ),
        (vec![("ipam", "dhcp")], vec!["ipam", "\"dhcp\""]),
        (
            vec![("enable-policy", "sometimes")],
            vec!["enable-policy", "\"sometimes\""],
        ),
        (
            vec![("enable-bpf-masquerade", "yes")],
            vec!["enable-bpf-masquerade", "\"yes\"", "boolean"],
        ),
        (
            vec![("l2-announcements-lease-duration", "15")],
            vec!["l2-announcements-lease-duration", "\"15\""],
        ),
        (
            vec![("ipv4-native-routing-cidr", "10.244.0.0/99")],
            vec!["ipv4-native-routing-cidr", "\"10.244.0.0/99\""],
        ),
        (
            vec![("node-port-range", "32767,30000")],
            vec!["node-port-range", "\"32767,30000\""],
        ),
        (
            vec![("service-no-backend-response", "ignore")],
            vec!["service-no-backend-response", "\"ignore\""],
        ),
        (vec![("cluster-id", "999")], vec!["cluster-id", "\"999\""]),
        (vec![("mtu", "big")], vec!["mtu", "\"big\""]),
        (
            vec![("enable-l2-announcements", "true")],
            vec!["enable-l2-announcements=\"true\"", "kube-proxy-replacement"],
        ),
        (
            vec![("enable-bpf-masquerade", "true")],
            vec!["enable-bpf-masquerade=\"true\"", "kube-proxy-replacement"],
        ),
        (
            vec![("bpf-lb-acceleration", "native")],
            vec!["bpf-lb-acceleration=\"native\"", "kube-proxy-replacement"],
        ),
        (
            vec![("routing-mode", "native")],
            vec!["ipv4-native-routing-cidr", "must be set"],
        ),
        (
            vec![("auto-direct-node-routes", "true")],
            vec![
                "auto-direct-node-routes=\"true\"",
                "routing-mode=\"tunnel\"",
            ],
        ),
        (
            vec![kpr, ("bpf-lb-mode", "dsr")],
            vec!["bpf-lb-mode=\"dsr\"", "routing-mode=\"tunnel\""],
        ),
        (
            vec![("datapath-mode", "ipvlan"), ("tunnel", "disabled")],
            vec!["ipvlan-master-device", "must be set"],
        ),
        (
            vec![("enable-ipv4", "false")],
            vec!["enable-ipv4=\"false\"", "enable-ipv6"],
        ),
    ];
    let mut failures = Vec::new();
    for (pairs, needles) in cases {
        match config_error(&pairs) {
            None => failures.push(format!("{pairs:?}: accepted")),
            Some(msg) => {
                for n in &needles {
                    if !msg.contains(n) {
                        failures.push(format!("{pairs:?}: {msg:?} lacks {n:?}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// Bad ip-masq-agent files and Deckhouse settings name the field and value too.
#[test]
fn bad_ip_masq_agent_and_deckhouse_settings() {
    let e = IpMasqAgentConfig::parse(r#"{"nonMasqueradeCIDRs": ["10.0.0.0/8", "300.0.0.0/8"]}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nonMasqueradeCIDRs[1]") && e.contains("300.0.0.0/8"),
        "{e}"
    );
    let e = IpMasqAgentConfig::parse("masqLinkLocal: sometimes")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("masqLinkLocal") && e.contains("sometimes"),
        "{e}"
    );
    let e = DeckhouseSettings::from_yaml("tunnelMode: GRE")
        .unwrap_err()
        .to_string();
    assert!(e.contains("tunnelMode") && e.contains("GRE"), "{e}");
}
