//! The test API server (`cilia-apiserver`) driven by the real clients the lab uses: kubectl and
//! the Helm engine (`tools/helm`). kube-rs is covered in `e2e/apiserver/tests/`.
//!
//! Needs `.venv` (kubectl, helm-python-sdk): `make deps`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use cilia_apiserver::{ApiServer, ApiServerOptions};

const SEED_OBJECTS: &[&str] = &[
    "lb-pool.yaml",
    "l2-policy.yaml",
    "ccnp-control-plane.yaml",
    "deathstar-svc.yaml",
    "http-sw-app.yaml",
];

/// The workspace root: the nearest ancestor of this package holding `Cargo.lock`.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("Cargo.lock").exists())
        .expect("inside the workspace")
        .to_path_buf()
}

fn seed(file: &str) -> PathBuf {
    let shared = std::env::var_os("CILIA_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared"));
    shared.join("fixtures/seed").join(file)
}

fn tool(rel: &str) -> PathBuf {
    let p = repo().join(rel);
    assert!(p.exists(), "{} is missing: run `make deps`", p.display());
    p
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "cilia-e2e-apiserver-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server plus hermetic client settings.
struct Cluster {
    server: ApiServer,
    scratch: Scratch,
}

impl Cluster {
    fn start() -> Cluster {
        let server = ApiServer::start(ApiServerOptions::default()).expect("the API server starts");
        Cluster {
            server,
            scratch: Scratch::new(),
        }
    }

    fn run(&self, program: &Path, args: &[&str], kubeconfig: &Path) -> Output {
        let home = self.scratch.0.join("home");
        let out = Command::new(program)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("HOME", &home)
            .env("HELM_CACHE_HOME", home.join("helm-cache"))
            .env("HELM_CONFIG_HOME", home.join("helm-config"))
            .env("HELM_DATA_HOME", home.join("helm-data"))
            .current_dir(repo())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        eprintln!(
            "$ {} {}\n{}{}",
            program.file_name().unwrap_or_default().to_string_lossy(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        let cache = self.scratch.0.join("kube-cache");
        let mut all = vec!["--cache-dir", cache.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        self.run(&tool(".venv/bin/kubectl"), &all, kubeconfig)
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(self.server.kubeconfig_path(), args)
    }

    /// Runs kubectl and returns stdout, failing the test on a non-zero exit.
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn helm_ok(&self, args: &[&str]) -> String {
        let kc = self
            .server
            .kubeconfig_path()
            .to_str()
            .expect("utf-8 path")
            .to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&["--kubeconfig", &kc]);
        let out = self.run(&tool("tools/helm"), &all, self.server.kubeconfig_path());
        assert!(
            out.status.success(),
            "helm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn config_value(&self, key: &str) -> String {
        self.kubectl_ok(&[
            "get",
            "configmap",
            "cilium-config",
            "-n",
            "kube-system",
            "-o",
            &format!("jsonpath={{.data.{key}}}"),
        ])
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// kubectl applies the CRDs and every seed object; applying again changes nothing; the pool table
// shows the CRD's printer columns; delete removes.
#[test]
fn kubectl_applies_seed_objects_idempotently() {
    let c = Cluster::start();
    let crds = repo().join("crds");
    let out = c.kubectl_ok(&["apply", "-f", path_str(&crds)]);
    assert_eq!(out.matches(" created").count(), 3, "{out}");
    for f in SEED_OBJECTS {
        let out = c.kubectl_ok(&["apply", "-f", path_str(&seed(f))]);
        assert!(out.lines().all(|l| l.ends_with(" created")), "{f}: {out}");
    }
    let again = c.kubectl_ok(&["apply", "-f", path_str(&crds)]);
    assert!(again.lines().all(|l| l.ends_with(" unchanged")), "{again}");
    for f in SEED_OBJECTS {
        let out = c.kubectl_ok(&["apply", "-f", path_str(&seed(f))]);
        assert!(out.lines().all(|l| l.ends_with(" unchanged")), "{f}: {out}");
    }

    let table = c.kubectl_ok(&["get", "ippools"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        vec!["NAME", "DISABLED", "CONFLICTING", "IPS AVAILABLE", "AGE"],
        "{table}"
    );
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("default ")),
        "{table}"
    );

    let svc = c.kubectl_ok(&[
        "get",
        "svc",
        "deathstar-lb",
        "-o",
        "jsonpath={.spec.type} {.spec.clusterIP} {.spec.ports[0].nodePort}",
    ]);
    let parts: Vec<&str> = svc.split(' ').collect();
    assert_eq!(parts[0], "LoadBalancer");
    assert!(parts[1].starts_with("10.96."), "{svc}");
    assert!(
        parts[2]
            .parse::<u16>()
            .is_ok_and(|p| (30000..=32767).contains(&p)),
        "{svc}"
    );

    let deleted = c.kubectl_ok(&["delete", "-f", path_str(&seed("lb-pool.yaml"))]);
    assert!(deleted.contains("deleted"), "{deleted}");
    let gone = c.kubectl(&["get", "ippool", "default"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));
}

// Server-side apply through kubectl is idempotent too and keeps the object's identity.
#[test]
fn kubectl_server_side_apply() {
    let c = Cluster::start();
    c.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        path_str(&repo().join("crds")),
    ]);
    let first = c.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        path_str(&seed("lb-pool.yaml")),
    ]);
    assert!(first.contains("serverside-applied"), "{first}");
    let uid = c.kubectl_ok(&[
        "get",
        "ippool",
        "default",
        "-o",
        "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
    ]);
    c.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        path_str(&seed("lb-pool.yaml")),
    ]);
    let again = c.kubectl_ok(&[
        "get",
        "ippool",
        "default",
        "-o",
        "jsonpath={.metadata.uid} {.metadata.resourceVersion}",
    ]);
    assert_eq!(uid, again, "a no-op apply keeps uid and resourceVersion");
}

// An invalid pool is refused with the offending field named, worded like kube-apiserver.
#[test]
fn kubectl_invalid_pool_is_refused_with_the_field() {
    let c = Cluster::start();
    c.kubectl_ok(&["apply", "-f", path_str(&repo().join("crds"))]);
    let bad_cidr = c.scratch.write(
        "bad-cidr.yaml",
        "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: bad\nspec:\n  blocks:\n  - cidr: \"300.1.1.0/24\"\n",
    );
    let out = c.kubectl(&["apply", "-f", path_str(&bad_cidr)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.blocks[0].cidr: Invalid value: \"300.1.1.0/24\": spec.blocks[0].cidr in body must be of type cidr: \"300.1.1.0/24\""),
        "{err}"
    );
    let no_blocks = c.scratch.write(
        "no-blocks.yaml",
        "apiVersion: cilium.io/v2alpha1\nkind: CiliumLoadBalancerIPPool\nmetadata:\n  name: empty\nspec:\n  disabled: true\n",
    );
    let out = c.kubectl(&["apply", "-f", path_str(&no_blocks)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is invalid") && err.contains("spec: Invalid value: \"object\""),
        "{err}"
    );
    assert!(c.kubectl(&["get", "ippool", "bad"]).status.code() != Some(0));
}

// A wrong bearer token gets 401 Unauthorized.
#[test]
fn kubectl_wrong_token_is_unauthorized() {
    let c = Cluster::start();
    let wrong = c.scratch.write(
        "wrong-kubeconfig",
        &c.server.kubeconfig_with_token("not-the-token"),
    );
    let out = c.kubectl_as(&wrong, &["get", "pods"]);
    assert!(!out.status.success());
    // client-go words a 401 as "Unauthorized" or, during discovery, "the server has asked for
    // the client to provide credentials".
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("provide credentials"),
        "{err}"
    );
}

// Helm installs the chart with the seed values, an upgrade that turns BPF masquerading off
// changes cilium-config, a rollback restores it, and uninstall removes it.
#[test]
fn helm_install_upgrade_rollback_uninstall() {
    let c = Cluster::start();
    let chart = repo().join("charts/cilia");
    let values = seed("cilium-medium.yaml");
    let ns = ["-n", "kube-system"];
    let install = [
        &["install", "cilia", path_str(&chart)][..],
        &ns,
        &["-f", path_str(&values)],
    ]
    .concat();
    c.helm_ok(&install);
    assert_eq!(c.config_value("enable-bpf-masquerade"), "true");
    // The user's exact toggle, on the seed values (ip-masq-agent stays configured, inactive).
    let upgrade = [
        &["upgrade", "cilia", path_str(&chart)][..],
        &ns,
        &["-f", path_str(&values), "--set", "bpf.masquerade=false"],
    ]
    .concat();
    c.helm_ok(&upgrade);
    assert_eq!(c.config_value("enable-bpf-masquerade"), "false");
    c.helm_ok(&[&["rollback", "cilia", "1"][..], &ns].concat());
    assert_eq!(c.config_value("enable-bpf-masquerade"), "true");
    c.helm_ok(&[&["uninstall", "cilia"][..], &ns].concat());
    let gone = c.kubectl(&["get", "configmap", "cilium-config", "-n", "kube-system"]);
    assert!(!gone.status.success(), "cilium-config removed by uninstall");
    let releases = c.kubectl_ok(&[
        "get",
        "secrets",
        "-n",
        "kube-system",
        "-l",
        "owner=helm",
        "-o",
        "name",
    ]);
    assert!(
        releases.trim().is_empty(),
        "release records removed: {releases}"
    );
}

/// `kubectl apply` of a Node as kubelet would register it.
fn register_node(c: &Cluster, name: &str) {
    let manifest = c.scratch.0.join(format!("node-{name}.yaml"));
    std::fs::write(
        &manifest,
        format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nspec:\n  podCIDR: 10.244.9.0/24\n"),
    )
    .unwrap();
    c.kubectl_ok(&["apply", "-f", path_str(&manifest)]);
}

/// The agent Secret's data, decoded, by key.
fn agent_secret(c: &Cluster) -> std::collections::BTreeMap<String, Vec<u8>> {
    use base64::Engine as _;
    let json = c.kubectl_ok(&[
        "get",
        "secret",
        "cilia-agent-tls",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["data"]
        .as_object()
        .expect("data")
        .iter()
        .map(|(k, b64)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap())
                .unwrap();
            (k.clone(), bytes)
        })
        .collect()
}

/// `openssl` on a PEM certificate: its subject, and whether `ca` signed it.
fn subject_and_verified(c: &Cluster, cert: &[u8], ca: &[u8]) -> (String, bool) {
    let dir = &c.scratch.0;
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("ca.pem"))
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&subject.stdout).trim().to_string(),
        verify.status.success(),
    )
}

// Every Node gets its own client certificate (CN node/<name>, the identity the operator checks),
// signed by the stream's CA; an upgrade keeps them and adds one for a node that joined since.
#[test]
fn helm_issues_one_agent_certificate_per_node() {
    let c = Cluster::start();
    for n in ["control-plane", "worker"] {
        register_node(&c, n);
    }
    let chart = repo().join("charts/cilia");
    let values = seed("cilium-medium.yaml");
    let ns = ["-n", "kube-system"];
    c.helm_ok(
        &[
            &["install", "cilia", path_str(&chart)][..],
            &ns,
            &["-f", path_str(&values)],
        ]
        .concat(),
    );
    let first = agent_secret(&c);
    let keys: Vec<&str> = first.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "control-plane.crt",
            "control-plane.key",
            "worker.crt",
            "worker.key"
        ]
    );
    for n in ["control-plane", "worker"] {
        let (subject, ok) = subject_and_verified(&c, &first[&format!("{n}.crt")], &first["ca.crt"]);
        assert_eq!(subject, format!("subject=CN=node/{n}"));
        assert!(ok, "{n}'s certificate is signed by the stream CA");
    }
    // The operator's certificate comes from the same CA.
    let op = c.kubectl_ok(&[
        "get",
        "secret",
        "cilia-operator-tls",
        "-n",
        "kube-system",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    {
        use base64::Engine as _;
        let op_ca = base64::engine::general_purpose::STANDARD
            .decode(op.trim())
            .unwrap();
        assert_eq!(op_ca, first["ca.crt"]);
    }

    register_node(&c, "worker2");
    c.helm_ok(
        &[
            &["upgrade", "cilia", path_str(&chart)][..],
            &ns,
            &["-f", path_str(&values), "--set", "bpf.masquerade=false"],
        ]
        .concat(),
    );
    let second = agent_secret(&c);
    for k in [
        "ca.crt",
        "control-plane.crt",
        "control-plane.key",
        "worker.crt",
        "worker.key",
    ] {
        assert_eq!(second[k], first[k], "{k} is kept across the upgrade");
    }
    let (subject, ok) = subject_and_verified(&c, &second["worker2.crt"], &second["ca.crt"]);
    assert_eq!(subject, "subject=CN=node/worker2");
    assert!(ok);
}
