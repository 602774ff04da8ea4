//! The lab: a LAN namespace with a bridge, node namespaces running the real agent, the operator in
//! the control-plane node's namespace serving their intents over mutual TLS, pods wired by the real
//! CNI plugin, and a client namespace standing for the outside world. The lab API server runs on
//! the control-plane node (`:6443`), the nodes are registered there as Node objects (as kubelet
//! would), `cilium-config` carries the lab's routing, and the operator (one or more replicas)
//! watches it; `CILIA_LAB_SOURCE=file` (or [`ClusterSource::File`]) runs the operator on the
//! lab's cluster file instead. Everything carries a run id,
//! and everything is torn down on drop, on SIGINT/SIGTERM, or later by `cilia-lab clean`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cilia_model::{ClusterState, NodeInfo, RoutingConfig, RoutingMode};
use ipnet::Ipv4Net;
use serde_json::json;

use crate::netns::{self, NetNs};

/// Where every run keeps its state: `<LAB_ROOT>/<run>/`.
pub const LAB_ROOT: &str = "/run/cilia-lab";
/// Every run's pins live in `<BPF_LAB_ROOT>/<run>-<node>/`.
pub const BPF_LAB_ROOT: &str = "/sys/fs/bpf/cilia";
pub const LAN_PREFIX: u8 = 16;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);
pub const NATIVE_ROUTING_CIDR: &str = "10.244.0.0/16";
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
/// The operator's intent service port (the chart's `intent.port`).
pub const OPERATOR_PORT: u16 = 4250;
/// The operator's metrics port (Cilium's operator Prometheus port).
pub const OPERATOR_METRICS_PORT: u16 = 9963;
/// Heartbeats in the lab are quicker than the 5s default, so a lost peer shows within seconds.
pub const LAB_HEARTBEAT: &str = "1s";
/// The lab's Kubernetes API endpoint port (`cilia-apiserver` on the control-plane node).
pub const API_SERVER_PORT: u16 = 6443;
/// Leader election timings in the lab (lease, renew deadline, retry): short, so a killed leader
/// is replaced within seconds (the operator's defaults are Cilium's 15s/10s/2s).
pub const LAB_LEASE_DURATION: Duration = Duration::from_secs(3);
pub const LAB_RENEW_DEADLINE: Duration = Duration::from_secs(2);
pub const LAB_RETRY_PERIOD: Duration = Duration::from_millis(500);
/// Namespace of `cilium-config` and the leader Lease in the lab.
pub const LAB_NAMESPACE: &str = "kube-system";

/// Where the lab's operator reads the cluster from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterSource {
    /// `cilia-operator serve --cluster-file` (the lab writes `cluster.json`).
    File,
    /// `cilia-apiserver` on the control-plane node; the lab registers its Nodes and
    /// `cilium-config` there and the operator watches it (`serve --kubeconfig`).
    Kubernetes,
}

/// The lab's API server process and the kubeconfig clients use.
pub struct ApiServerProc {
    pub child: Child,
    /// Points at `https://<control-plane>:6443`: usable from any lab namespace, not the host.
    pub kubeconfig: PathBuf,
}

/// One lab node: name, LAN address, pod CIDR.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub labels: BTreeMap<String, String>,
}

/// The topology of DESIGN.md: control-plane, worker, worker2 on 172.18.0.2-4 with 10.244.{0,1,2}.0/24.
pub fn default_nodes() -> Vec<NodeSpec> {
    ["control-plane", "worker", "worker2"]
        .iter()
        .enumerate()
        .map(|(i, n)| NodeSpec {
            name: n.to_string(),
            ip: Ipv4Addr::new(172, 18, 0, 2 + i as u8),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            labels: if i == 0 {
                [(CONTROL_PLANE_LABEL.to_string(), String::new())].into()
            } else {
                BTreeMap::new()
            },
        })
        .collect()
}

pub struct LabNode {
    pub spec: NodeSpec,
    pub ns: NetNs,
    pub state_dir: PathBuf,
    pub bpf_root: PathBuf,
    pub agent: Option<Child>,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ns_name: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    /// The CNI result, as returned by the plugin.
    pub cni_result: serde_json::Value,
}

impl Pod {
    pub fn ns_path(&self) -> String {
        format!("/run/netns/{}", self.ns_name)
    }
}

pub struct Lab {
    pub run: String,
    pub dir: PathBuf,
    pub bin_dir: PathBuf,
    pub lan: NetNs,
    pub client: NetNs,
    pub nodes: Vec<LabNode>,
    pub pods: BTreeMap<String, (Pod, NetNs)>,
    pub cluster: ClusterState,
    /// The operator process, in the namespace of `nodes[operator_node]`.
    pub operator: Option<Child>,
    pub operator_node: usize,
    pub source: ClusterSource,
    /// The API server (with [`ClusterSource::Kubernetes`]).
    pub api: Option<ApiServerProc>,
    /// Further operator replicas (Kubernetes source), by node index.
    pub replicas: BTreeMap<usize, Child>,
    /// Nodes as last registered with the API server.
    synced_nodes: Mutex<BTreeMap<String, NodeInfo>>,
    keep: bool,
}

/// Runs registered for signal-time teardown.
static LIVE_RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_signal_teardown() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(mut signals) =
            signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
        else {
            return;
        };
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let runs = LIVE_RUNS.lock().map(|r| r.clone()).unwrap_or_default();
                for run in runs {
                    eprintln!("lab: signal {sig}: tearing down run {run}");
                    clean_run(&run);
                }
                std::process::exit(128 + sig);
            }
        });
    });
}

/// Directory holding the workspace binaries (`CILIA_BIN_DIR`, or next to the running executable).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CILIA_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir
    }
}

fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{:06x}",
        (std::process::id() ^ nanos.rotate_left(7) ^ seq.wrapping_mul(0x9e37)) & 0xff_ffff
    )
}

/// Namespace name of role `role` in run `run`.
pub fn ns_name(run: &str, role: &str) -> String {
    format!("cilia-{run}-{role}")
}

impl Lab {
    /// Brings up the LAN, the nodes with their agents, and the client, with the lab API server
    /// as the operator's source ([`Lab::up_kube`]). `CILIA_LAB_SOURCE=file` runs the operator on
    /// the cluster file instead.
    pub fn up(nodes: Vec<NodeSpec>) -> anyhow::Result<Lab> {
        let source = match std::env::var("CILIA_LAB_SOURCE").as_deref() {
            Ok("file") => ClusterSource::File,
            _ => ClusterSource::Kubernetes,
        };
        Self::up_with(nodes, source)
    }

    /// Like [`Lab::up`], with the lab API server on the control-plane node: the Nodes are
    /// registered there as kubelet would (InternalIP, podCIDR, labels), `cilium-config` is
    /// created, and the operator watches the API server.
    pub fn up_kube(nodes: Vec<NodeSpec>) -> anyhow::Result<Lab> {
        Self::up_with(nodes, ClusterSource::Kubernetes)
    }

    /// Like [`Lab::up_kube`] but without `cilium-config`: whoever installs Cilia (the demo's
    /// `helm install`) creates it; until then the operator runs with Cilium's defaults.
    pub fn up_kube_unconfigured(nodes: Vec<NodeSpec>) -> anyhow::Result<Lab> {
        Self::up_inner(nodes, ClusterSource::Kubernetes, false)
    }

    pub fn up_with(nodes: Vec<NodeSpec>, source: ClusterSource) -> anyhow::Result<Lab> {
        Self::up_inner(nodes, source, true)
    }

    fn up_inner(
        nodes: Vec<NodeSpec>,
        source: ClusterSource,
        lab_config: bool,
    ) -> anyhow::Result<Lab> {
        install_signal_teardown();
        let run = new_run_id();
        let dir = Path::new(LAB_ROOT).join(&run);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("owner"), std::process::id().to_string())?;
        LIVE_RUNS.lock().unwrap().push(run.clone());
        let bin_dir = bin_dir();
        for b in [
            "cilia-agent",
            "cilia-cni",
            "cilia-dbg",
            "cilia-operator",
            "cilia-apiserver",
        ] {
            if !bin_dir.join(b).exists() {
                bail!(
                    "{} is missing: build the workspace first (`make build`)",
                    bin_dir.join(b).display()
                );
            }
        }
        let lan = NetNs::create(&ns_name(&run, "lan"))?;
        lan.ip(&["link", "add", "br0", "type", "bridge"])?;
        lan.ip(&["link", "set", "br0", "up"])?;
        let client = NetNs::create(&ns_name(&run, "client"))?;
        plug(&lan, &client, "client", CLIENT_IP)?;

        let mut lab_nodes = Vec::new();
        for spec in &nodes {
            let ns = NetNs::create(&ns_name(&run, &spec.name))?;
            plug(&lan, &ns, &spec.name, spec.ip)?;
            let state_dir = dir.join(&spec.name);
            std::fs::create_dir_all(&state_dir)?;
            lab_nodes.push(LabNode {
                spec: spec.clone(),
                ns,
                state_dir,
                bpf_root: Path::new(BPF_LAB_ROOT).join(format!("{run}-{}", spec.name)),
                agent: None,
            });
        }
        let cluster = ClusterState {
            nodes: nodes
                .iter()
                .map(|n| NodeInfo {
                    name: n.name.clone(),
                    internal_ip: n.ip,
                    pod_cidr: Some(n.pod_cidr),
                    labels: n.labels.clone(),
                })
                .collect(),
            routing: RoutingConfig {
                mode: RoutingMode::Native,
                auto_direct_node_routes: true,
                native_routing_cidr: Some(NATIVE_ROUTING_CIDR.parse().unwrap()),
            },
            ..Default::default()
        };
        // The operator runs on the control-plane node (or the first one), as its Deployment would.
        let operator_node = nodes
            .iter()
            .position(|n| n.labels.contains_key(CONTROL_PLANE_LABEL))
            .unwrap_or(0);
        let mut lab = Lab {
            run,
            dir,
            bin_dir,
            lan,
            client,
            nodes: lab_nodes,
            pods: BTreeMap::new(),
            cluster,
            operator: None,
            operator_node,
            source,
            api: None,
            replicas: BTreeMap::new(),
            synced_nodes: Mutex::new(BTreeMap::new()),
            keep: false,
        };
        lab.write_cluster()?;
        lab.generate_certs()?;
        if source == ClusterSource::Kubernetes {
            lab.start_api_server()?;
            lab.register_nodes()
                .with_context(|| format!("API server log: {}", lab.api_server_log()))?;
            if lab_config {
                lab.apply_cilium_config(&[])?;
            }
        }
        lab.start_operator()?;
        for i in 0..lab.nodes.len() {
            lab.start_agent_at(i)?;
        }
        for n in &lab.nodes {
            let path = n
                .state_dir
                .join(cilia_model::node_local::NODE_LOCAL_CONFIG_FILE);
            wait_until(Duration::from_secs(10), || path.exists()).with_context(|| {
                format!(
                    "agent of {} did not become ready; log: {}",
                    n.spec.name,
                    lab.agent_log(&n.spec.name)
                )
            })?;
        }
        Ok(lab)
    }

    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    /// Where the run's certificates live (`cilia-operator certs` layout: `operator/`,
    /// `agents/<node>/`, `ca.pem`).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The certificates the chart would generate: a CA, the operator's certificate (valid for its
    /// LAN address too) and one client certificate per node.
    fn generate_certs(&self) -> anyhow::Result<()> {
        let nodes: Vec<&str> = self.nodes.iter().map(|n| n.spec.name.as_str()).collect();
        netns::run(
            Command::new(self.bin_dir.join("cilia-operator"))
                .arg("certs")
                .arg("--out")
                .arg(self.tls_dir())
                .args(["--nodes", &nodes.join(",")])
                .args(["--server-san", &self.operator_ip().to_string()]),
        )
        .context("generating the lab's certificates")?;
        Ok(())
    }

    pub fn operator_ip(&self) -> Ipv4Addr {
        self.nodes[self.operator_node].spec.ip
    }

    /// The intent service's address on the LAN.
    pub fn operator_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.operator_ip(), OPERATOR_PORT))
    }

    pub fn operator_log_path(&self) -> PathBuf {
        self.dir.join("operator.log")
    }

    pub fn operator_log(&self) -> String {
        std::fs::read_to_string(self.operator_log_path()).unwrap_or_default()
    }

    /// Starts (or restarts) the operator in its node's namespace and waits until it serves.
    pub fn start_operator(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.operator_log_path())?;
        let ip = self.operator_ip();
        let mut c = self.operator_command(self.operator_node);
        c.args(["--listen", &format!("{ip}:{OPERATOR_PORT}")])
            .arg("--tls-dir")
            .arg(self.tls_dir().join("operator"))
            .args(["--metrics-listen", &format!("{ip}:{OPERATOR_METRICS_PORT}")])
            .args(["--heartbeat-interval", LAB_HEARTBEAT])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let ns = self.nodes[self.operator_node].ns.path();
        let child = spawn_in_netns(&mut c, &ns)?;
        std::fs::write(self.dir.join("operator.pid"), child.id().to_string())?;
        self.operator = Some(child);
        wait_until(Duration::from_secs(10), || {
            self.operator_get("/healthz").is_ok()
        })
        .with_context(|| format!("operator did not come up; log: {}", self.operator_log()))
    }

    /// `cilia-operator serve` with this lab's source; listen addresses are added by the caller.
    fn operator_command(&self, node: usize) -> Command {
        let mut c = Command::new(self.bin_dir.join("cilia-operator"));
        c.arg("serve");
        match &self.api {
            None => {
                c.arg("--cluster-file")
                    .arg(self.cluster_file())
                    .args(["--cluster-file-poll", "100ms"]);
            }
            Some(api) => {
                let ms = |d: Duration| format!("{}ms", d.as_millis());
                c.arg("--kubeconfig")
                    .arg(&api.kubeconfig)
                    .args(["--namespace", LAB_NAMESPACE])
                    .args([
                        "--leader-election-identity",
                        self.nodes[node].spec.name.as_str(),
                    ])
                    .args(["--leader-election-lease-duration", &ms(LAB_LEASE_DURATION)])
                    .args(["--leader-election-renew-deadline", &ms(LAB_RENEW_DEADLINE)])
                    .args(["--leader-election-retry-period", &ms(LAB_RETRY_PERIOD)]);
            }
        }
        c
    }

    pub fn replica_log_path(&self, node: usize) -> PathBuf {
        self.dir
            .join(format!("operator-{}.log", self.nodes[node].spec.name))
    }

    /// Starts one more operator replica in the namespace of `nodes[node]` (Kubernetes source
    /// only; the main replica runs on the control-plane node) and waits until it serves.
    pub fn start_operator_replica(&mut self, node: usize) -> anyhow::Result<()> {
        if self.api.is_none() {
            bail!("operator replicas need the Kubernetes source (Lab::up_kube)");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.replica_log_path(node))?;
        let ip = self.nodes[node].spec.ip;
        let mut c = self.operator_command(node);
        c.args(["--listen", &format!("{ip}:{OPERATOR_PORT}")])
            .arg("--tls-dir")
            .arg(self.tls_dir().join("operator"))
            .args(["--metrics-listen", &format!("{ip}:{OPERATOR_METRICS_PORT}")])
            .args(["--heartbeat-interval", LAB_HEARTBEAT])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_in_netns(&mut c, &self.nodes[node].ns.path())?;
        std::fs::write(
            self.dir
                .join(format!("operator-{}.pid", self.nodes[node].spec.name)),
            child.id().to_string(),
        )?;
        self.replicas.insert(node, child);
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, OPERATOR_METRICS_PORT));
        wait_until(Duration::from_secs(10), || {
            http_get_in(&self.nodes[node].ns, addr, "/healthz").is_ok()
        })
        .with_context(|| {
            format!(
                "operator replica on {} did not come up; log: {}",
                self.nodes[node].spec.name,
                std::fs::read_to_string(self.replica_log_path(node)).unwrap_or_default()
            )
        })
    }

    /// The pid of the operator replica running on `node` (the main one or another).
    pub fn operator_pid_on(&self, node: &str) -> Option<u32> {
        let i = self.node_index(node);
        if i == self.operator_node {
            self.operator.as_ref().map(|c| c.id())
        } else {
            self.replicas.get(&i).map(|c| c.id())
        }
    }

    /// Kills the operator replica on `node` with `signal` and waits for it.
    pub fn kill_operator_on(&mut self, node: &str, signal: i32) -> anyhow::Result<()> {
        let i = self.node_index(node);
        let child = if i == self.operator_node {
            self.operator.take()
        } else {
            self.replicas.remove(&i)
        };
        if let Some(mut c) = child {
            unsafe { libc::kill(c.id() as i32, signal) };
            c.wait()?;
        }
        Ok(())
    }

    /// Whether the operator replica on `node` is still running.
    pub fn operator_alive_on(&mut self, node: &str) -> bool {
        let i = self.node_index(node);
        let c = if i == self.operator_node {
            self.operator.as_mut()
        } else {
            self.replicas.get_mut(&i)
        };
        c.is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Every operator log of the run (main and replicas), for failure messages.
    pub fn operator_logs(&self) -> String {
        let mut out = format!("--- operator.log\n{}", self.operator_log());
        for &i in self.replicas.keys() {
            out.push_str(&format!(
                "\n--- operator-{}.log\n{}",
                self.nodes[i].spec.name,
                std::fs::read_to_string(self.replica_log_path(i)).unwrap_or_default()
            ));
        }
        out
    }

    // ---- the lab API server ----------------------------------------------------------------

    /// Starts `cilia-apiserver` on the control-plane node (`<ip>:6443`) and waits until it
    /// listens. Test infrastructure standing in for kube-apiserver.
    pub fn start_api_server(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.join("apiserver");
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = dir.join("kubeconfig");
        let cp = &self.nodes[self.operator_node];
        let mut c = Command::new(self.bin_dir.join("cilia-apiserver"));
        c.arg("--listen")
            .arg(format!("{}:{API_SERVER_PORT}", cp.spec.ip))
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("apiserver.log"))?);
        let mut child = spawn_in_netns(&mut c, &cp.ns.path())?;
        std::fs::write(dir.join("apiserver.pid"), child.id().to_string())?;
        let mut line = String::new();
        {
            use std::io::BufRead;
            let out = child.stdout.take().context("apiserver stdout")?;
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        if !line.starts_with("listening on") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("cilia-apiserver did not start: {line:?}");
        }
        self.api = Some(ApiServerProc { child, kubeconfig });
        Ok(())
    }

    pub fn api_server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("apiserver").join("apiserver.log"))
            .unwrap_or_default()
    }

    /// The kubeconfig of the lab API server (Kubernetes source only).
    pub fn kubeconfig(&self) -> anyhow::Result<&Path> {
        Ok(&self
            .api
            .as_ref()
            .context("the lab runs without an API server (use Lab::up_kube)")?
            .kubeconfig)
    }

    /// Runs the real kubectl (`.venv/bin/kubectl`, from `make deps`) against the lab API server
    /// from the client namespace, as a user on the LAN would; `stdin` is fed to it. Fails with
    /// kubectl's stderr on a non-zero exit.
    pub fn kubectl_with_input(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        let kubectl = repo_root().join(".venv/bin/kubectl");
        if !kubectl.exists() {
            bail!("{} is missing: run `make deps`", kubectl.display());
        }
        let mut c = Command::new(&kubectl);
        c.arg("--kubeconfig")
            .arg(self.kubeconfig()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_in_netns(&mut c, &self.client.path())?;
        child
            .stdin
            .take()
            .context("kubectl stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_with_input(args, "")
    }

    /// `kubectl get <what> -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&all)?;
        serde_json::from_str(&out).with_context(|| format!("kubectl output is not JSON: {out}"))
    }

    /// Registers the lab nodes as Node objects, as their kubelets would: labels (plus
    /// `kubernetes.io/hostname`), `spec.podCIDR`, and `status.addresses` with the InternalIP.
    pub fn register_nodes(&self) -> anyhow::Result<()> {
        self.sync_nodes()
    }

    /// Makes the API server's Nodes match `self.cluster.nodes`: creates or updates the changed
    /// ones (spec and labels through `kubectl apply`, addresses through the status subresource)
    /// and deletes the ones that left. Only what changed since the last sync is sent.
    fn sync_nodes(&self) -> anyhow::Result<()> {
        let mut synced = self.synced_nodes.lock().unwrap();
        let changed: Vec<&NodeInfo> = self
            .cluster
            .nodes
            .iter()
            .filter(|n| synced.get(&n.name) != Some(*n))
            .collect();
        if !changed.is_empty() {
            // One YAML stream of JSON documents (kubectl validates a `List` against OpenAPI v2).
            let docs: Vec<String> = changed
                .iter()
                .map(|n| {
                    let mut labels = n.labels.clone();
                    labels.insert("kubernetes.io/hostname".into(), n.name.clone());
                    labels.insert("kubernetes.io/os".into(), "linux".into());
                    let pod_cidrs: Vec<String> = n.pod_cidr.iter().map(|c| c.to_string()).collect();
                    json!({
                        "apiVersion": "v1",
                        "kind": "Node",
                        "metadata": { "name": n.name, "labels": labels },
                        "spec": { "podCIDR": pod_cidrs.first(), "podCIDRs": pod_cidrs },
                    })
                    .to_string()
                })
                .collect();
            self.kubectl_with_input(&["apply", "-f", "-"], &docs.join("\n---\n"))
                .context("registering the lab nodes")?;
        }
        for n in &changed {
            if synced
                .get(&n.name)
                .is_some_and(|old| old.internal_ip == n.internal_ip)
            {
                continue;
            }
            let status = json!({ "status": {
                "addresses": [
                    { "type": "InternalIP", "address": n.internal_ip.to_string() },
                    { "type": "Hostname", "address": n.name },
                ],
                "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
                                 "message": "cilia lab node" }],
            }});
            self.kubectl(&[
                "patch",
                "node",
                &n.name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &status.to_string(),
            ])
            .with_context(|| format!("setting the status of node {}", n.name))?;
        }
        let gone: Vec<String> = synced
            .keys()
            .filter(|name| !self.cluster.nodes.iter().any(|n| &&n.name == name))
            .cloned()
            .collect();
        if !gone.is_empty() {
            let mut args = vec!["delete", "node"];
            args.extend(gone.iter().map(String::as_str));
            self.kubectl(&args).context("deleting nodes that left")?;
        }
        *synced = self
            .cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.clone()))
            .collect();
        Ok(())
    }

    /// Creates or replaces `kube-system/cilium-config`: the lab's routing (native, direct node
    /// routes, `10.244.0.0/16`) plus `extra` keys.
    pub fn apply_cilium_config(&self, extra: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut data: BTreeMap<String, String> = [
            ("routing-mode", "native"),
            ("auto-direct-node-routes", "true"),
            ("ipv4-native-routing-cidr", NATIVE_ROUTING_CIDR),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            data.insert(k.to_string(), v.to_string());
        }
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": "cilium-config", "namespace": LAB_NAMESPACE },
            "data": data,
        });
        self.kubectl_with_input(&["apply", "-f", "-"], &cm.to_string())
            .context("applying cilium-config")?;
        Ok(())
    }

    /// Stops the operator with `signal` and waits for it.
    pub fn stop_operator(&mut self, signal: i32) -> anyhow::Result<()> {
        if let Some(mut c) = self.operator.take() {
            unsafe { libc::kill(c.id() as i32, signal) };
            c.wait()?;
        }
        Ok(())
    }

    /// Whether the operator process is still running (it did not crash).
    pub fn operator_alive(&mut self) -> bool {
        self.operator
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Whether `node`'s agent process is still running.
    pub fn agent_alive(&mut self, node: &str) -> bool {
        let i = self.node_index(node);
        self.nodes[i]
            .agent
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// An HTTP GET of the operator's metrics endpoint, from inside its node's namespace.
    pub fn operator_get(&self, path: &str) -> anyhow::Result<String> {
        let addr = SocketAddr::V4(SocketAddrV4::new(self.operator_ip(), OPERATOR_METRICS_PORT));
        http_get_in(&self.nodes[self.operator_node].ns, addr, path)
    }

    /// The operator's metrics as (name with labels, value), e.g.
    /// `cilia_operator_node_applied_version{node="worker"}`.
    pub fn operator_metrics(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        Ok(self
            .operator_get("/metrics")?
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// One per-node metric of the operator (`None` if the operator does not report it).
    pub fn node_metric(&self, name: &str, node: &str) -> Option<f64> {
        self.operator_metrics()
            .ok()?
            .get(&format!("{name}{{node=\"{node}\"}}"))
            .copied()
    }

    /// Publishes the cluster facts: the cluster file (atomically), and with the Kubernetes
    /// source also the Node objects (see [`Lab::register_nodes`]).
    pub fn write_cluster(&self) -> anyhow::Result<()> {
        if self.api.is_some() {
            if !self.cluster.services.is_empty() || !self.cluster.endpoint_slices.is_empty() {
                bail!(
                    "the lab runs on the Kubernetes source: create Services and EndpointSlices \
                     with Lab::kubectl (or bring the lab up with ClusterSource::File); \
                     lab.cluster carries only nodes there"
                );
            }
            self.sync_nodes()?;
        }
        let tmp = self.dir.join("cluster.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.cluster)?)?;
        std::fs::rename(&tmp, self.cluster_file())?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> &LabNode {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn agent_log_path(&self, node: &str) -> PathBuf {
        self.dir.join(node).join("agent.log")
    }

    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.agent_log_path(node)).unwrap_or_default()
    }

    fn start_agent_at(&mut self, i: usize) -> anyhow::Result<()> {
        let n = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log_path(&n.spec.name))?;
        let mut c = Command::new(self.bin_dir.join("cilia-agent"));
        c.args(["--node-name", &n.spec.name])
            .arg("--state-dir")
            .arg(&n.state_dir)
            .arg("--bpf-root")
            .arg(&n.bpf_root)
            .arg("--operator")
            .arg(format!("https://{}", self.operator_addr()))
            .arg("--tls-dir")
            .arg(self.tls_dir().join("agents").join(&n.spec.name))
            .args(["--heartbeat-interval", LAB_HEARTBEAT])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_in_netns(&mut c, &n.ns.path())?;
        std::fs::write(n.state_dir.join("agent.pid"), child.id().to_string())?;
        self.nodes[i].agent = Some(child);
        Ok(())
    }

    /// Starts (or restarts) the agent of `node`.
    pub fn start_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let i = self.node_index(node);
        self.start_agent_at(i)
    }

    /// Stops the agent of `node` with `signal` (SIGTERM or SIGKILL) and waits for it.
    pub fn stop_agent(&mut self, node: &str, signal: i32) -> anyhow::Result<()> {
        let i = self.node_index(node);
        if let Some(mut c) = self.nodes[i].agent.take() {
            unsafe { libc::kill(c.id() as i32, signal) };
            c.wait()?;
        }
        Ok(())
    }

    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.node(node).agent.as_ref().map(|c| c.id())
    }

    /// Runs `cilia-dbg <args>` against `node`'s agent.
    pub fn dbg(&self, node: &str, args: &[&str]) -> anyhow::Result<String> {
        let n = self.node(node);
        netns::run(
            Command::new(self.bin_dir.join("cilia-dbg"))
                .arg("--state-dir")
                .arg(&n.state_dir)
                .args(args),
        )
    }

    /// The CNI network configuration the lab hands `cilia-cni` on `node`.
    pub fn cni_config(&self, node: &str) -> serde_json::Value {
        let n = self.node(node);
        json!({
            "cniVersion": "1.0.0",
            "name": "cilia",
            "type": "cilia-cni",
            "agent-state-dir": n.state_dir,
            "ipam-data-dir": n.state_dir.join("ipam"),
            "log-file": n.state_dir.join("cni.log"),
        })
    }

    /// Runs the CNI plugin on `node` as a container runtime would.
    pub fn cni(
        &self,
        node: &str,
        command: &str,
        container_id: &str,
        netns_path: &str,
        config: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let n = self.node(node);
        let mut c = Command::new(self.bin_dir.join("cilia-cni"));
        c.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns_path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_in_netns(&mut c, &n.ns.path())?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(config)?)?;
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "cilia-cni {command} on {node} failed ({}): {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if stdout.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&stdout).with_context(|| format!("CNI result is not JSON: {stdout}"))
    }

    /// Creates pod `name` on `node`: a namespace wired by `cilia-cni ADD`.
    pub fn add_pod(&mut self, node: &str, name: &str) -> anyhow::Result<Pod> {
        let ns = NetNs::create(&ns_name(&self.run, &format!("pod-{name}")))?;
        let container_id = format!("{}-{name}", self.run);
        let result = self.cni(
            node,
            "ADD",
            &container_id,
            &ns.path(),
            &self.cni_config(node),
        )?;
        let addr = result["ips"][0]["address"]
            .as_str()
            .context("CNI result without ips[0].address")?;
        let ip: Ipv4Net = addr
            .parse()
            .with_context(|| format!("CNI address {addr}"))?;
        let pod = Pod {
            name: name.to_string(),
            node: node.to_string(),
            ns_name: ns.name.clone(),
            ip: ip.addr(),
            container_id,
            cni_result: result,
        };
        self.pods.insert(name.to_string(), (pod.clone(), ns));
        Ok(pod)
    }

    /// Deletes pod `name`: `cilia-cni DEL`, then its namespace.
    pub fn delete_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let Some((pod, ns)) = self.pods.remove(name) else {
            bail!("no pod {name}")
        };
        self.cni(
            &pod.node,
            "DEL",
            &pod.container_id,
            &ns.path(),
            &self.cni_config(&pod.node),
        )?;
        drop(ns);
        Ok(())
    }

    pub fn pod(&self, name: &str) -> &Pod {
        &self
            .pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name}"))
            .0
    }

    /// Removes a node from the cluster facts (its agent and namespace stay until drop).
    pub fn remove_node_from_cluster(&mut self, node: &str) -> anyhow::Result<()> {
        self.cluster.nodes.retain(|n| n.name != node);
        self.write_cluster()
    }

    /// Routes Cilia installed in `node`'s namespace, as (destination, gateway).
    pub fn cilia_routes(&self, node: &str) -> anyhow::Result<Vec<(String, String)>> {
        let out = self
            .node(node)
            .ns
            .ip(&["-j", "route", "show", "proto", "201"])?;
        let v: serde_json::Value =
            serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })?;
        let mut routes: Vec<(String, String)> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["dst"].as_str().unwrap_or_default().to_string(),
                    r["gateway"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        routes.sort();
        Ok(routes)
    }

    /// Keeps every namespace, process and pin on drop (for poking around after the demo).
    pub fn keep(&mut self) {
        self.keep = true;
        self.lan.keep();
        self.client.keep();
        for n in &mut self.nodes {
            n.ns.keep();
            n.agent = None;
        }
        self.operator = None;
        self.replicas.clear();
        self.api = None;
        for (_, ns) in self.pods.values_mut() {
            ns.keep();
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // SIGTERM to all at once, then give each up to the same 3 s before SIGKILL.
        let operator = self.operator.take();
        let replicas = std::mem::take(&mut self.replicas).into_values();
        let api = self.api.take().map(|a| a.child);
        let agents = self.nodes.iter_mut().filter_map(|n| n.agent.take());
        let mut procs: Vec<Child> = operator
            .into_iter()
            .chain(replicas)
            .chain(agents)
            .chain(api)
            .collect();
        for c in &procs {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for c in &mut procs {
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Namespaces go with their guards; then the pins and the run directory.
        self.pods.clear();
        clean_run(&self.run);
        LIVE_RUNS
            .lock()
            .map(|mut r| r.retain(|x| x != &self.run))
            .ok();
    }
}

/// The repository root (where `.venv` and `crds/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// An HTTP GET from inside `ns`; the body when the answer is 200.
pub fn http_get_in(ns: &NetNs, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = ns.run(move || -> anyhow::Result<String> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(req.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_string())
}

/// Connects `ns` to the LAN bridge with `eth0` = `ip/16`.
fn plug(lan: &NetNs, ns: &NetNs, role: &str, ip: Ipv4Addr) -> anyhow::Result<()> {
    // Bridge ports are named after the role, cut to the 15-byte limit.
    let port: String = format!("p-{role}").chars().take(15).collect();
    lan.ip(&[
        "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ])?;
    lan.ip(&["link", "set", &port, "master", "br0", "up"])?;
    ns.ip(&["addr", "add", &format!("{ip}/{LAN_PREFIX}"), "dev", "eth0"])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    // Wires, not veths: frames leave with full checksums (`tx_csum_off`), and the bridge port
    // takes the frames a node's native XDP sends back out of its eth0 (`gro_on`), as a NIC would.
    ns.run(|| crate::netns::tx_csum_off("eth0"))??;
    let p = port.clone();
    lan.run(move || crate::netns::gro_on(&p))??;
    Ok(())
}

/// Spawns `c` with its network namespace set to `ns_path` (entered between fork and exec).
pub fn spawn_in_netns(c: &mut Command, ns_path: &str) -> anyhow::Result<Child> {
    let f = std::fs::File::open(ns_path).with_context(|| format!("opening {ns_path}"))?;
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: only async-signal-safe calls (setns) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c
        .spawn()
        .with_context(|| format!("spawning {c:?} in {ns_path}"))?;
    drop(f);
    Ok(child)
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes everything of run `run`: its processes (agents and operator), namespaces, pins and
/// state directory.
pub fn clean_run(run: &str) {
    let dir = Path::new(LAB_ROOT).join(run);
    let mut pid_files = vec![
        dir.join("operator.pid"),
        dir.join("apiserver").join("apiserver.pid"),
    ];
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("operator-") && name.ends_with(".pid") {
                pid_files.push(e.path());
            } else {
                pid_files.push(e.path().join("agent.pid"));
            }
        }
    }
    for f in pid_files {
        if let Ok(pid) = std::fs::read_to_string(&f)
            && let Ok(pid) = pid.trim().parse::<i32>()
            && is_cilia_process(pid)
        {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let prefix = format!("cilia-{run}-");
    for ns in netns::list() {
        if ns.starts_with(&prefix) {
            let _ = netns::ip(&["netns", "del", &ns]);
        }
    }
    if let Ok(rd) = std::fs::read_dir(BPF_LAB_ROOT) {
        for e in rd.filter_map(Result::ok) {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{run}-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `pid` is a running cilia binary (so a recycled pid is never killed).
fn is_cilia_process(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim().starts_with("cilia-"))
}

/// Cleans up runs whose owner process is gone (`make lab-clean`). Returns the runs removed.
pub fn clean_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(LAB_ROOT) else {
        return removed;
    };
    for e in rd.filter_map(Result::ok) {
        let run = e.file_name().to_string_lossy().to_string();
        let owner = std::fs::read_to_string(e.path().join("owner"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let alive = owner.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
        if !alive {
            clean_run(&run);
            removed.push(run);
        }
    }
    // Namespaces of runs whose directory is already gone.
    for ns in netns::list() {
        let mut parts = ns.splitn(3, '-');
        if let (Some("cilia"), Some(run), Some(_)) = (parts.next(), parts.next(), parts.next())
            && run.len() == 6
            && run.chars().all(|c| c.is_ascii_hexdigit())
            && !Path::new(LAB_ROOT).join(run).exists()
        {
            clean_run(run);
            removed.push(run.to_string());
        }
    }
    removed.sort();
    removed.dedup();
    removed
}

/// What a run left behind: namespaces, pins, state, processes. Empty means clean.
pub fn leftovers(run: &str) -> Vec<String> {
    let mut v = Vec::new();
    let prefix = format!("cilia-{run}-");
    v.extend(
        netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .map(|n| format!("netns {n}")),
    );
    if let Ok(rd) = std::fs::read_dir(BPF_LAB_ROOT) {
        v.extend(
            rd.filter_map(Result::ok)
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{run}-"))
                })
                .map(|e| format!("pins {}", e.path().display())),
        );
    }
    if Path::new(LAB_ROOT).join(run).exists() {
        v.push(format!("state dir {LAB_ROOT}/{run}"));
    }
    v
}

/// The EndpointSlice `<service>-lab` of Service `default/<service>`, listing `backends` (ready, with
/// their node) on TCP port `port`: what the EndpointSlice controller would write, which the lab
/// does not run.
pub fn endpoint_slice<'a>(
    service: &str,
    backends: impl IntoIterator<Item = &'a Pod>,
    port: u16,
) -> String {
    let eps: Vec<serde_json::Value> = backends
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "addresses": [p.ip.to_string()],
                "conditions": { "ready": true },
                "nodeName": p.node,
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-lab"),
            "namespace": "default",
            "labels": { "kubernetes.io/service-name": service },
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{ "name": "", "port": port, "protocol": "TCP" }],
    })
    .to_string()
}
