//! `charts/cilia` through the real Helm engine (`tools/helm`): lint, renders with defaults and
//! with the seed values, strict parsing of every rendered object, the ConfigMap contract with
//! `CiliumConfig`, and the values schema.

mod common;

use std::collections::BTreeMap;

use cilia_api::config::deckhouse::DeckhouseSettings;
use cilia_api::config::{CiliumConfig, ConfigWarning, Masquerading};
use common::{configmap_data, find, helm, kind, name, parse_rendered, template};
use serde_json::{Value, json};

fn medium() -> String {
    common::seed("cilium-medium.yaml")
        .to_string_lossy()
        .into_owned()
}

/// Deckhouse settings mapped to chart values, written to a temp file for `-f`.
fn deckhouse_values() -> tempfile::NamedTempFile {
    let settings =
        DeckhouseSettings::from_yaml(&common::read_seed("deckhouse-module-settings.yaml")).unwrap();
    let values = settings.to_helm_values(Some("10.244.0.0/16"));
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), serde_json::to_string(&values).unwrap()).unwrap();
    file
}

fn parse_config(docs: &[Value]) -> cilia_api::config::Parsed<CiliumConfig> {
    let data = configmap_data(find(docs, "ConfigMap", "cilium-config"));
    CiliumConfig::from_map(&data)
        .unwrap_or_else(|e| panic!("rendered cilium-config is invalid: {e}"))
}

// `helm lint` passes (strict: warnings count) with defaults and with each seed values file.
#[test]
fn lint_passes() {
    let chart = common::chart();
    let chart = chart.to_str().unwrap();
    let deckhouse = deckhouse_values();
    for extra in [
        vec![],
        vec!["-f".to_string(), medium()],
        vec![
            "-f".to_string(),
            deckhouse.path().to_string_lossy().into_owned(),
        ],
    ] {
        let mut args = vec!["lint", chart, "--strict"];
        args.extend(extra.iter().map(String::as_str));
        let run = helm(&args);
        assert!(run.ok, "helm {args:?}:\n{}{}", run.stdout, run.stderr);
        assert!(run.stdout.contains("0 chart(s) failed"), "{}", run.stdout);
    }
}

// Every object rendered with defaults or a seed parses strictly into its k8s-openapi type.
#[test]
fn rendered_objects_parse_strictly() {
    let deckhouse = deckhouse_values();
    let renders = [
        ("defaults", template(&[])),
        ("cilium-medium.yaml", template(&["-f", &medium()])),
        (
            "deckhouse",
            template(&["-f", deckhouse.path().to_str().unwrap()]),
        ),
    ];
    let mut failures = Vec::new();
    for (label, docs) in &renders {
        for doc in docs {
            if let Err(e) = parse_rendered(doc) {
                failures.push(format!("{label}: {:?} {}: {e}", kind(doc), name(doc)));
            }
        }
        for (k, n) in [
            ("ConfigMap", "cilium-config"),
            ("DaemonSet", "cilia"),
            ("Deployment", "cilia-operator"),
            ("Service", "cilia-operator"),
            ("ServiceAccount", "cilia"),
            ("ServiceAccount", "cilia-operator"),
            ("ClusterRole", "cilia-agent"),
            ("ClusterRole", "cilia-operator"),
            ("Role", "cilia-operator"),
            ("Secret", "cilia-operator-tls"),
            ("Secret", "cilia-agent-tls"),
            (
                "CustomResourceDefinition",
                "ciliumloadbalancerippools.cilium.io",
            ),
            (
                "CustomResourceDefinition",
                "ciliuml2announcementpolicies.cilium.io",
            ),
            (
                "CustomResourceDefinition",
                "ciliumclusterwidenetworkpolicies.cilium.io",
            ),
        ] {
            if !docs.iter().any(|d| kind(d).1 == k && name(d) == n) {
                failures.push(format!("{label}: {k}/{n} not rendered"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// The rendered CRDs are the generated ones, marked to survive `helm uninstall`.
#[test]
fn rendered_crds_are_the_generated_ones() {
    let docs = template(&[]);
    for crd in cilia_api::crd::all() {
        let crd_name = crd.metadata.name.clone().unwrap();
        let rendered = find(&docs, "CustomResourceDefinition", &crd_name);
        let mut expected = serde_json::to_value(&crd).unwrap();
        expected["metadata"]["annotations"] = json!({"helm.sh/resource-policy": "keep"});
        assert_eq!(
            common::first_difference(rendered, &expected, String::new()),
            None,
            "{crd_name}"
        );
    }
}

fn data_of(docs: &[Value]) -> BTreeMap<String, String> {
    configmap_data(find(docs, "ConfigMap", "cilium-config"))
}

// Defaults render Cilium's defaults; every key the chart writes is one the model reads.
#[test]
fn default_configmap_keys() {
    let docs = template(&[]);
    let data = data_of(&docs);
    for (key, value) in [
        ("kube-proxy-replacement", "false"),
        ("routing-mode", "tunnel"),
        ("tunnel-protocol", "vxlan"),
        ("enable-ipv4-masquerade", "true"),
        ("bpf-lb-acceleration", "disabled"),
        ("enable-l2-announcements", "false"),
        ("ipam", "cluster-pool"),
        ("enable-policy", "default"),
        ("policy-audit-mode", "false"),
        ("cluster-name", "default"),
        ("service-no-backend-response", "reject"),
    ] {
        assert_eq!(data.get(key).map(String::as_str), Some(value), "{key}");
    }
    for absent in [
        "enable-bpf-masquerade",
        "enable-ip-masq-agent",
        "bpf-lb-mode",
        "ipv4-native-routing-cidr",
    ] {
        assert!(
            !data.contains_key(absent),
            "{absent} should be omitted when unset"
        );
    }
    assert!(!docs.iter().any(|d| name(d) == "ip-masq-agent"));
    let parsed = parse_config(&docs);
    assert_eq!(
        parsed.config,
        CiliumConfig {
            cni_exclusive: true,
            write_cni_conf_when_ready: Some("/host/etc/cni/net.d/05-cilia.conflist".into()),
            hubble: cilia_api::config::HubbleConfig {
                enabled: true,
                listen_address: ":4244".into()
            },
            ..CiliumConfig::default()
        }
    );
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
}

// cilium-medium.yaml: strict → "true", native routing, BPF masquerading with ip-masq-agent,
// L2 announcements with lease keys, XDP native, hybrid; ip-masq-agent ConfigMap as JSON.
#[test]
fn medium_configmap_keys() {
    let docs = template(&["-f", &medium()]);
    let data = data_of(&docs);
    for (key, value) in [
        ("cluster-name", "kind-kind"),
        ("kube-proxy-replacement", "true"),
        ("routing-mode", "native"),
        ("ipv4-native-routing-cidr", "10.244.0.0/16"),
        ("enable-ipv4-masquerade", "true"),
        ("auto-direct-node-routes", "true"),
        ("enable-bpf-masquerade", "true"),
        ("enable-ip-masq-agent", "true"),
        ("enable-l2-announcements", "true"),
        ("l2-announcements-lease-duration", "400ms"),
        ("l2-announcements-renew-deadline", "300ms"),
        ("l2-announcements-retry-period", "100ms"),
        ("bpf-lb-acceleration", "native"),
        ("bpf-lb-mode", "hybrid"),
        ("ipam", "kubernetes"),
        ("enable-ipv4", "true"),
        ("enable-ipv6", "false"),
        ("enable-hubble", "true"),
    ] {
        assert_eq!(data.get(key).map(String::as_str), Some(value), "{key}");
    }
    let masq = find(&docs, "ConfigMap", "ip-masq-agent");
    let file: Value = serde_json::from_str(masq["data"]["config"].as_str().unwrap()).unwrap();
    assert_eq!(file, json!({"nonMasqueradeCIDRs": ["10.244.0.0/8"]}));
    let parsed = parse_config(&docs);
    assert_eq!(
        parsed.config.masquerading(),
        Masquerading::Bpf {
            ip_masq_agent: true
        }
    );
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    // k8sServiceHost/Port become env on the pods, not ConfigMap keys.
    let ds = find(&docs, "DaemonSet", "cilia");
    let env = &ds["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "KUBERNETES_SERVICE_HOST", "value": "kind-control-plane"}))
    );
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}))
    );
}

// Deckhouse settings (Hybrid, tunnel Disabled, audit on) reach the ConfigMap as Cilium keys.
#[test]
fn deckhouse_configmap_keys() {
    let file = deckhouse_values();
    let docs = template(&["-f", file.path().to_str().unwrap()]);
    let data = data_of(&docs);
    for (key, value) in [
        ("bpf-lb-mode", "hybrid"),
        ("routing-mode", "native"),
        ("policy-audit-mode", "true"),
        ("kube-proxy-replacement", "true"),
        ("ipv4-native-routing-cidr", "10.244.0.0/16"),
        ("auto-direct-node-routes", "true"),
    ] {
        assert_eq!(data.get(key).map(String::as_str), Some(value), "{key}");
    }
    let parsed = parse_config(&docs);
    assert!(parsed.config.policy_audit_mode);
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
}

/// Rendered objects keyed by kind/name, with generated TLS material blanked: `helm template`
/// has no cluster to reuse it from, so it differs on every render.
fn comparable(docs: Vec<Value>) -> BTreeMap<String, Value> {
    docs.into_iter()
        .map(|mut d| {
            if kind(&d).1 == "Secret" {
                d["data"] = Value::Null;
            }
            (format!("{}/{}", kind(&d).1, name(&d)), d)
        })
        .collect()
}

fn changed(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>) -> Vec<String> {
    let mut keys: Vec<_> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| a.get(k) != b.get(k)).collect()
}

// Toggling bpf.masquerade or loadBalancer.acceleration changes only the ConfigMap: the
// DaemonSet pod template stays the same, so agents are not restarted.
#[test]
fn datapath_toggles_change_only_the_configmap() {
    let base_args = [
        "--set",
        "kubeProxyReplacement=true,bpf.masquerade=true,loadBalancer.acceleration=native",
    ];
    let base = comparable(template(&base_args));
    for toggle in ["bpf.masquerade=false", "loadBalancer.acceleration=disabled"] {
        let docs = comparable(template(&[base_args[0], base_args[1], "--set", toggle]));
        assert_eq!(
            changed(&base, &docs),
            vec!["ConfigMap/cilium-config"],
            "--set {toggle}"
        );
    }
    // From the seed values too (ip-masq-agent has to go with BPF masquerading).
    let medium_base = comparable(template(&["-f", &medium()]));
    let docs = comparable(template(&[
        "-f",
        &medium(),
        "--set",
        "loadBalancer.acceleration=disabled",
    ]));
    assert_eq!(
        changed(&medium_base, &docs),
        vec!["ConfigMap/cilium-config"]
    );
    // The user's exact toggle on the seed values: only cilium-config changes, and the config
    // still parses (ip-masq-agent stays configured, inactive while BPF masquerading is off).
    let raw = template(&["-f", &medium(), "--set", "bpf.masquerade=false"]);
    let docs = comparable(raw.clone());
    assert_eq!(
        changed(&medium_base, &docs),
        vec!["ConfigMap/cilium-config"]
    );
    let parsed = parse_config(&raw);
    assert!(
        parsed
            .warnings
            .iter()
            .any(|w| w.to_string().contains("enable-ip-masq-agent")
                && w.to_string().contains("no effect")),
        "{:?}",
        parsed.warnings
    );
}

// No config checksum on the pod template unless rollOutCiliumPods asks for restarts.
#[test]
fn no_config_checksum_on_pod_template() {
    let docs = template(&["-f", &medium()]);
    let ds = find(&docs, "DaemonSet", "cilia");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["annotations"],
        Value::Null
    );
    let docs = template(&["-f", &medium(), "--set", "rollOutCiliumPods=true"]);
    let ds = find(&docs, "DaemonSet", "cilia");
    assert!(
        ds["spec"]["template"]["metadata"]["annotations"]["cilia.io/config-checksum"].is_string()
    );
}

// The agent runs with the four capabilities it needs and nothing else; only the bpffs mount
// helper is privileged. The operator is unprivileged with 2 replicas.
#[test]
fn workloads_are_least_privilege() {
    let docs = template(&[]);
    let ds = find(&docs, "DaemonSet", "cilia");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], json!(true));
    let agent = &pod["containers"][0]["securityContext"];
    assert_eq!(agent["privileged"], json!(false));
    assert_eq!(
        agent["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW", "BPF", "PERFMON"])
    );
    assert_eq!(agent["capabilities"]["drop"], json!(["ALL"]));
    let init: Vec<_> = pod["initContainers"].as_array().unwrap().iter().collect();
    let privileged: Vec<_> = init
        .iter()
        .filter(|c| c["securityContext"]["privileged"] == json!(true))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(privileged, vec!["mount-bpf-fs"]);
    let mounts: Vec<_> = pod["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for path in [
        "/sys/fs/bpf",
        "/host/etc/cni/net.d",
        "/tmp/cilium/config-map",
        "/var/lib/cilia/tls",
    ] {
        assert!(
            mounts.contains(&path),
            "agent lacks mount {path}: {mounts:?}"
        );
    }
    let op = find(&docs, "Deployment", "cilia-operator");
    assert_eq!(op["spec"]["replicas"], json!(2));
    let c = &op["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(c["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["allowPrivilegeEscalation"], json!(false));
    for doc in &docs {
        if matches!(kind(doc).1, "ClusterRole" | "Role") {
            let text = doc["rules"].to_string();
            assert!(
                !text.contains("\"*\""),
                "{} grants a wildcard: {text}",
                name(doc)
            );
            assert!(
                !text.contains("secrets"),
                "{} reads secrets: {text}",
                name(doc)
            );
        }
    }
}

// A typo'd key, an out-of-enum value, a bad pattern and an out-of-range number each fail
// schema validation naming the value's path.
#[test]
fn schema_rejects_bad_values_with_clear_messages() {
    let chart = common::chart();
    let chart = chart.to_str().unwrap();
    for (set, needles) in [
        (
            "kubeProxyReplacment=true",
            vec!["additional properties 'kubeProxyReplacment' not allowed"],
        ),
        ("bpf.masqurade=true", vec!["at '/bpf'", "'masqurade'"]),
        (
            "kubeProxyReplacement=partial",
            vec!["at '/kubeProxyReplacement'"],
        ),
        (
            "loadBalancer.acceleration=fast",
            vec!["at '/loadBalancer/acceleration'", "'best-effort'"],
        ),
        (
            "loadBalancer.mode=magic",
            vec!["at '/loadBalancer/mode'", "'hybrid'"],
        ),
        ("routingMode=bgp", vec!["at '/routingMode'", "'native'"]),
        (
            "maglev.tableSize=1000",
            vec!["at '/maglev/tableSize'", "16381"],
        ),
        (
            "l2announcements.leaseDuration=15x",
            vec![
                "at '/l2announcements/leaseDuration'",
                "'15x' does not match pattern",
            ],
        ),
        (
            "ipv4NativeRoutingCIDR=10.244.0.0/99",
            vec!["at '/ipv4NativeRoutingCIDR'"],
        ),
        (
            "operator.replicas=0",
            vec!["at '/operator/replicas'", "minimum"],
        ),
        ("ipam.mode=dhcp", vec!["at '/ipam/mode'", "'kubernetes'"]),
    ] {
        let run = helm(&["template", "cilia", chart, "--set", set]);
        assert!(!run.ok, "--set {set} was accepted");
        for n in needles {
            assert!(
                run.stderr.contains(n),
                "--set {set}: {:?} lacks {n:?}",
                run.stderr
            );
        }
    }
}

// Combinations the agents would refuse fail at install time with the values named.
#[test]
fn inconsistent_values_fail_with_the_values_named() {
    let chart = common::chart();
    let chart = chart.to_str().unwrap();
    for (set, needle) in [
        (
            "l2announcements.enabled=true",
            "l2announcements.enabled=true requires kubeProxyReplacement=true",
        ),
        (
            "bpf.masquerade=true",
            "bpf.masquerade=true requires kubeProxyReplacement=true",
        ),
        ("routingMode=native", "ipv4NativeRoutingCIDR must be set"),
        (
            "autoDirectNodeRoutes=true",
            "autoDirectNodeRoutes=true requires routingMode=native",
        ),
        (
            "loadBalancer.acceleration=native",
            "loadBalancer.acceleration=native requires kubeProxyReplacement=true",
        ),
    ] {
        let run = helm(&["template", "cilia", chart, "--set", set]);
        assert!(!run.ok, "--set {set} was accepted");
        assert!(run.stderr.contains(needle), "--set {set}: {:?}", run.stderr);
    }
}

// The legacy spelling is accepted with a deprecation note in the install output, and the
// non-canonical ip-masq-agent prefix is called out with its canonical form.
#[test]
fn install_notes_explain_legacy_values() {
    let chart = common::chart();
    let run = helm(&[
        "install",
        "cilia",
        chart.to_str().unwrap(),
        "-n",
        "kube-system",
        "-f",
        &medium(),
        "--dry-run",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("DEPRECATED: kubeProxyReplacement: \"strict\""),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "10.244.0.0/8   WARNING: not a canonical prefix (host bits set), read as 10.0.0.0/8"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("kubectl -n kube-system rollout status daemonset/cilia"),
        "{}",
        run.stdout
    );
}

// The legacy IPVLAN datapath renders too, and its ConfigMap reads back as IPVLAN L3 with BPF
// masquerading (the ipvlan-l3-bpf-masq seed).
#[test]
fn ipvlan_values_render() {
    let docs = template(&[
        "--set",
        "bpf.datapathMode=ipvlan,ipvlan.masterDevice=bond0,routingMode=native,autoDirectNodeRoutes=true,installIptablesRules=false,kubeProxyReplacement=true",
    ]);
    let parsed = parse_config(&docs);
    assert_eq!(
        parsed.config.ipvlan_mode(),
        Some(cilia_api::config::IpvlanMode::L3)
    );
    assert_eq!(
        parsed.config.masquerading(),
        Masquerading::Bpf {
            ip_masq_agent: false
        }
    );
    assert!(
        !parsed
            .warnings
            .iter()
            .any(|w| matches!(w, ConfigWarning::IgnoredKey { .. }))
    );
}

// Release names and namespaces that YAML 1.1 reads as booleans (`no`, `on`, `y`) stay strings:
// Helm's Go YAML decoder would otherwise reject the label or namespace.
#[test]
fn yaml_1_1_keywords_as_names_stay_strings() {
    let chart = common::chart();
    let run = helm(&[
        "template",
        "no",
        chart.to_str().unwrap(),
        "-n",
        "on",
        "--set",
        "rollOutCiliumPods=true",
    ]);
    assert!(run.ok, "{}", run.stderr);
    let docs = common::split_documents(&run.stdout);
    for doc in &docs {
        if let Err(e) = parse_rendered(doc) {
            panic!("{:?} {}: {e}", kind(doc), name(doc));
        }
        if kind(doc).1 != "ClusterRole"
            && kind(doc).1 != "ClusterRoleBinding"
            && kind(doc).1 != "CustomResourceDefinition"
        {
            assert_eq!(doc["metadata"]["namespace"], json!("on"), "{}", name(doc));
        }
    }
    let ds = find(&docs, "DaemonSet", "cilia");
    assert_eq!(
        ds["metadata"]["labels"]["app.kubernetes.io/instance"],
        json!("no")
    );
}
