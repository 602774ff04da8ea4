//! `CiliumClusterwideNetworkPolicy` enforcement end to end: the lab API server, the operator (its
//! Pod, Namespace and CCNP watchers), the agents (policy maps and programs on pod veths and node
//! devices) and real TCP connections.
//!
//! - The seed app (`http-sw-app.yaml`): pods with the seed's labels (the lab has no controllers:
//!   `add_pod` wires them, `register_pod` reports them as a kubelet would), a TCP echo server in
//!   the deathstar. An L3/L4 policy lets `org=empire` reach the deathstar on 80 and stops
//!   `org=alliance` (a drop `cilia-dbg monitor` shows, naming nothing but default deny); a deny
//!   beats that allow; deleting the policies restores traffic.
//! - The seed host policy (`allow-control-plane-connectivity`) with the host firewall on: the API
//!   server's address reaches the control-plane node, another peer (a worker) is dropped; with the
//!   Deckhouse seed's `policyAuditMode: true` it gets through and shows up as audit events.
//!
//! Needs root, the built workspace (`cargo build --workspace --bins`) and `.venv` (`make deps`).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cilia_e2e::lab::{CLIENT_IP, Lab, Pod, default_nodes, repo_root, wait_until};
use cilia_e2e::traffic::{EchoServer, tcp_echo};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(30);
/// Labs are heavy on a shared machine: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn seed_path(name: &str) -> String {
    repo_root()
        .join("../shared/fixtures/seed")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn seed_docs(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(seed_path(name)).expect("seed file");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d).expect("seed YAML");
            serde_json::to_value(v).expect("seed as JSON")
        })
        .collect()
}

/// The labels the seed app gives `name`: a Pod's own, or a Deployment's pod template's.
fn seed_labels(name: &str) -> Vec<(String, String)> {
    let docs = seed_docs("http-sw-app.yaml");
    let doc = docs
        .iter()
        .find(|d| {
            d["metadata"]["name"] == name && (d["kind"] == "Pod" || d["kind"] == "Deployment")
        })
        .unwrap_or_else(|| panic!("{name} is not in the seed app"));
    let labels = if doc["kind"] == "Deployment" {
        &doc["spec"]["template"]["metadata"]["labels"]
    } else {
        &doc["metadata"]["labels"]
    };
    labels
        .as_object()
        .expect("labels")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("label value").to_string()))
        .collect()
}

fn apply(lab: &Lab, manifest: &Value) {
    lab.kubectl_with_input(&["apply", "-f", "-"], &manifest.to_string())
        .unwrap_or_else(|e| panic!("kubectl apply: {e}\n{manifest}"));
}

/// Whether one echo round trip from `ns` to `dst` succeeds.
fn reaches(ns: &str, dst: SocketAddr) -> bool {
    tcp_echo(ns, dst, b"ping").is_ok_and(|e| e.payload == b"ping")
}

/// Waits until `ns` reaches `dst` (`want` true) or stops reaching it (`want` false), and stays so
/// for three more tries in a row.
fn wait_reach(lab: &Lab, what: &str, ns: &str, dst: SocketAddr, want: bool, node: &str) {
    let mut streak = 0;
    wait_until(STEP * 2, || {
        if reaches(ns, dst) == want {
            streak += 1;
        } else {
            streak = 0;
        }
        streak >= 3
    })
    .unwrap_or_else(|_| {
        panic!(
            "{what}: expected {} {dst}\npolicy on {node}:\n{}\nagent log:\n{}\noperator log:\n{}",
            if want { "to reach" } else { "not to reach" },
            lab.dbg(node, &["bpf", "policy", "list"])
                .unwrap_or_else(|e| e.to_string()),
            tail(&lab.agent_log(node)),
            tail(&lab.operator_logs())
        )
    });
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `cilia-dbg monitor -o json` on a node, running while the test makes traffic; stopped on drop.
struct Monitor {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    agent_log: std::path::PathBuf,
}

impl Monitor {
    fn start(lab: &Lab, node: &str) -> Monitor {
        let mut child = Command::new(lab.bin_dir.join("cilia-dbg"))
            .arg("--state-dir")
            .arg(&lab.node(node).state_dir)
            .args(["monitor", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cilia-dbg monitor");
        // It says on stderr once it listens: events from then on are caught.
        let mut line = String::new();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        err.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("Listening for events"),
            "monitor: {line:?}"
        );
        // The rest of stderr (an error that ends it), for failure messages.
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink_err = stderr.clone();
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                let mut s = sink_err.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&l)
                    .unwrap_or_else(|e| panic!("monitor line is not JSON ({e}): {l}"));
                sink.lock().unwrap().push(v);
            }
        });
        Monitor {
            child,
            events,
            stderr,
            agent_log: lab.agent_log_path(node),
        }
    }

    /// Waits for an event matching `f`; returns it.
    fn wait_for(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(STEP, || {
            found = self.events.lock().unwrap().iter().find(|e| f(e)).cloned();
            found.is_some()
        })
        .unwrap_or_else(|_| {
            panic!(
                "no {what} event; monitor saw: {:#?}\nmonitor stderr: {}\nagent log:\n{}",
                self.events.lock().unwrap(),
                self.stderr.lock().unwrap(),
                tail(&std::fs::read_to_string(&self.agent_log).unwrap_or_default())
            )
        });
        found.unwrap()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lab with the CRDs and `cilium-config` plus `extra`.
fn lab_up(extra: &[(&str, &str)]) -> Lab {
    let lab = Lab::up(default_nodes()).expect("lab");
    lab.kubectl(&["apply", "-f", &repo_root().join("crds").to_string_lossy()])
        .expect("CRDs apply");
    lab.apply_cilium_config(extra)
        .expect("cilium-config applies");
    lab
}

fn add_seed_pod(lab: &mut Lab, node: &str, name: &str, seed_name: &str) -> Pod {
    let pod = lab.add_pod(node, name).expect("pod");
    let labels = seed_labels(seed_name);
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    lab.register_pod(&pod, "default", &labels)
        .expect("register pod");
    pod
}

/// Cilium's starwars L3/L4 rule: only empire ships reach the deathstar, on TCP/80.
fn rule1() -> Value {
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": { "name": "rule1" },
        "spec": {
            "description": "L3-L4 policy to restrict deathstar access to empire ships only",
            "endpointSelector": { "matchLabels": { "org": "empire", "class": "deathstar" } },
            "ingress": [{
                "fromEndpoints": [{ "matchLabels": { "org": "empire" } }],
                "toPorts": [{ "ports": [{ "port": "80", "protocol": "TCP" }] }],
            }],
        },
    })
}

/// A deny for the tiefighter on the deathstar's port 80, which `rule1` allows.
fn no_tiefighters() -> Value {
    json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumClusterwideNetworkPolicy",
        "metadata": { "name": "no-tiefighters" },
        "spec": {
            "endpointSelector": { "matchLabels": { "class": "deathstar" } },
            "ingressDeny": [{
                "fromEndpoints": [{ "matchLabels": { "class": "tiefighter" } }],
                "toPorts": [{ "ports": [{ "port": "80", "protocol": "TCP" }] }],
            }],
        },
    })
}

#[test]
fn l3_l4_policy_on_the_seed_app() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = lab_up(&[]);
    // The deathstar on worker, the xwing beside it (same node), the tiefighter on worker2.
    let deathstar = add_seed_pod(&mut lab, "worker", "deathstar-1", "deathstar");
    let xwing = add_seed_pod(&mut lab, "worker", "xwing", "xwing");
    let tiefighter = add_seed_pod(&mut lab, "worker2", "tiefighter", "tiefighter");
    let dst = SocketAddr::new(IpAddr::V4(deathstar.ip), 80);
    let _server = EchoServer::start(&deathstar.ns_path(), dst).expect("echo server");

    wait_reach(
        &lab,
        "no policy yet: empire",
        &tiefighter.ns_path(),
        dst,
        true,
        "worker",
    );
    wait_reach(
        &lab,
        "no policy yet: alliance",
        &xwing.ns_path(),
        dst,
        true,
        "worker",
    );

    let monitor = Monitor::start(&lab, "worker");
    apply(&lab, &rule1());
    wait_reach(
        &lab,
        "rule1: alliance",
        &xwing.ns_path(),
        dst,
        false,
        "worker",
    );
    wait_reach(
        &lab,
        "rule1: empire",
        &tiefighter.ns_path(),
        dst,
        true,
        "worker",
    );
    let dropped = monitor.wait_for("xwing drop", |e| {
        e["verdict"] == "DROP"
            && e["src"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("{}:", xwing.ip))
            && e["dst"] == format!("{dst}")
    });
    assert_eq!(dropped["direction"], "ingress", "{dropped}");
    assert_eq!(dropped["proto"], "TCP", "{dropped}");
    assert_eq!(
        dropped["reason"], "Policy denied",
        "default deny: {dropped}"
    );
    // Other ports of the deathstar are not opened by rule1.
    let other = SocketAddr::new(IpAddr::V4(deathstar.ip), 8080);
    let _other_server = EchoServer::start(&deathstar.ns_path(), other).expect("echo server");
    assert!(
        !reaches(&tiefighter.ns_path(), other),
        "rule1 allows only port 80"
    );

    // The listing shows the deathstar's table with rule1 on its device.
    let rows: Value = serde_json::from_str(
        &lab.dbg(
            "worker",
            &["bpf", "policy", "list", "default/deathstar-1", "-o", "json"],
        )
        .expect("bpf policy list"),
    )
    .expect("JSON");
    let rows = rows.as_array().expect("rows");
    assert!(
        rows.iter().any(|r| r["policy"] == "rule1"
            && r["verdict"] == "allow"
            && r["port"] == "80"
            && r["proto"] == "TCP"
            && r["interface"]
                .as_str()
                .is_some_and(|i| i.starts_with("lxc"))),
        "{rows:#?}"
    );
    let text = lab
        .dbg("worker", &["bpf", "policy", "list"])
        .expect("table");
    assert!(
        text.contains("default/deathstar-1") && text.contains("rule1"),
        "{text}"
    );

    // An agent restart with the policy unchanged writes nothing (maps and links are read back
    // from their pins) and enforcement never lapses: the links stay pinned meanwhile.
    lab.stop_agent("worker", libc::SIGKILL).expect("stop agent");
    assert!(
        !reaches(&xwing.ns_path(), dst),
        "enforced while the agent is down"
    );
    lab.start_agent("worker").expect("start agent");
    let status = |lab: &Lab| -> Value {
        lab.dbg("worker", &["status", "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    };
    wait_until(STEP, || status(&lab)["intentHash"].is_string()).unwrap_or_else(|_| {
        panic!(
            "restarted agent not ready: {}",
            tail(&lab.agent_log("worker"))
        )
    });
    // One more pass of the apply loop (a pod-device scan) before counting.
    std::thread::sleep(Duration::from_millis(1500));
    let s = status(&lab);
    assert_eq!(s["datapathWrites"], 0, "restart with the same policy: {s}");
    assert!(
        !reaches(&xwing.ns_path(), dst),
        "still enforced after the restart"
    );
    assert!(
        reaches(&tiefighter.ns_path(), dst),
        "still allowed after the restart"
    );

    // A deny beats the allow: the tiefighter is stopped, the event names the deny's policy.
    apply(&lab, &no_tiefighters());
    wait_reach(
        &lab,
        "deny: empire tiefighter",
        &tiefighter.ns_path(),
        dst,
        false,
        "worker",
    );
    let denied = monitor.wait_for("tiefighter deny", |e| {
        e["verdict"] == "DROP"
            && e["src"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("{}:", tiefighter.ip))
            && e["dst"] == format!("{dst}")
    });
    assert_eq!(denied["policy"], "no-tiefighters", "{denied}");
    assert_eq!(denied["reason"], "Policy denied by denylist", "{denied}");
    drop(monitor);

    // Deleting the policies restores traffic, step by step.
    lab.kubectl(&["delete", "ccnp", "no-tiefighters"])
        .expect("delete");
    wait_reach(
        &lab,
        "deny deleted: empire",
        &tiefighter.ns_path(),
        dst,
        true,
        "worker",
    );
    wait_reach(
        &lab,
        "deny deleted: alliance",
        &xwing.ns_path(),
        dst,
        false,
        "worker",
    );
    lab.kubectl(&["delete", "ccnp", "rule1"]).expect("delete");
    wait_reach(
        &lab,
        "no policy: alliance",
        &xwing.ns_path(),
        dst,
        true,
        "worker",
    );
    let out = lab
        .dbg("worker", &["bpf", "policy", "list", "-o", "json"])
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!([]),
        "{out}"
    );
}

#[test]
fn seed_host_policy_on_the_control_plane_with_and_without_audit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let firewall = [("enable-host-firewall", "true")];
    let lab = lab_up(&firewall);
    let cp = lab.node("control-plane");
    let cp_ip = cp.spec.ip;
    let worker_ip = lab.node("worker").spec.ip;
    // The lab's API server shares the control-plane's address, and the node's traffic to itself
    // never crosses a device. So the client's address is listed as a second API server endpoint
    // (as an external API load balancer would be): the policy's `kube-apiserver` peer that comes
    // in through eth0 — and kubectl, which runs there, keeps working under the policy.
    let mut slice = lab
        .kubectl_json(&["endpointslice", "-n", "default", "kubernetes"])
        .expect("default/kubernetes slice");
    let eps = slice["endpoints"].as_array_mut().expect("endpoints");
    eps.push(json!({ "addresses": [CLIENT_IP.to_string()], "conditions": { "ready": true } }));
    slice["metadata"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| k == "name" || k == "namespace" || k == "labels");
    apply(&lab, &slice);
    // A service on the node itself (the kubelet's port).
    let dst = SocketAddr::new(IpAddr::V4(cp_ip), 10250);
    let _server = EchoServer::start(&cp.ns.path(), dst).expect("echo server on the node");
    let worker_ns = lab.node("worker").ns.path();
    let client_ns = lab.client.path();
    wait_reach(
        &lab,
        "no policy: worker",
        &worker_ns,
        dst,
        true,
        "control-plane",
    );
    wait_reach(
        &lab,
        "no policy: client",
        &client_ns,
        dst,
        true,
        "control-plane",
    );

    let monitor = Monitor::start(&lab, "control-plane");
    lab.kubectl(&["apply", "-f", &seed_path("ccnp-control-plane.yaml")])
        .expect("seed host policy");
    wait_reach(
        &lab,
        "host policy: worker",
        &worker_ns,
        dst,
        false,
        "control-plane",
    );
    wait_reach(
        &lab,
        "host policy: API server",
        &client_ns,
        dst,
        true,
        "control-plane",
    );
    let is_worker_probe = |e: &Value| {
        e["src"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{worker_ip}:"))
            && e["dst"] == format!("{dst}")
    };
    let dropped = monitor.wait_for("worker drop", |e| {
        e["verdict"] == "DROP" && is_worker_probe(e)
    });
    assert_eq!(dropped["interface"], "eth0", "{dropped}");
    assert_eq!(dropped["identity"], 6, "remote-node: {dropped}");
    let rows = lab
        .dbg("control-plane", &["bpf", "policy", "list", "host"])
        .unwrap();
    assert!(
        rows.contains("allow-control-plane-connectivity") && rows.contains("eth0"),
        "{rows}"
    );
    // The policy selects only the control-plane: the workers enforce nothing.
    let w = lab
        .dbg("worker", &["bpf", "policy", "list", "-o", "json"])
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&w).unwrap(), json!([]), "{w}");

    // The Deckhouse seed's settings: policyAuditMode on. Would-be drops pass and are audited.
    let settings = seed_docs("deckhouse-module-settings.yaml");
    let audit = settings[0]["policyAuditMode"]
        .as_bool()
        .expect("policyAuditMode");
    assert!(audit, "the seed turns audit mode on");
    lab.apply_cilium_config(&[firewall[0], ("policy-audit-mode", "true")])
        .expect("cilium-config with audit");
    wait_reach(
        &lab,
        "audit mode: worker",
        &worker_ns,
        dst,
        true,
        "control-plane",
    );
    let audited = monitor.wait_for("worker audit", |e| {
        e["verdict"] == "AUDIT" && is_worker_probe(e)
    });
    assert_eq!(audited["direction"], "ingress", "{audited}");
    assert_eq!(audited["identity"], 6, "{audited}");
    drop(monitor);
    let text = lab
        .dbg("control-plane", &["bpf", "policy", "list", "host"])
        .unwrap();
    assert!(text.contains("(audit)"), "{text}");

    // Back to enforcing, then the policy deleted: the worker gets through again.
    lab.apply_cilium_config(&firewall).expect("cilium-config");
    wait_reach(
        &lab,
        "enforcing again: worker",
        &worker_ns,
        dst,
        false,
        "control-plane",
    );
    lab.kubectl(&["delete", "ccnp", "allow-control-plane-connectivity"])
        .expect("delete");
    wait_reach(
        &lab,
        "policy deleted: worker",
        &worker_ns,
        dst,
        true,
        "control-plane",
    );
}
