//! End to end: the built `cilia-cni` binary against real network namespaces.
//!
//! Each test builds a small lab: a node namespace `cilia-cnitest-<pid>-<tag>-node` holding the
//! router IP on its loopback (standing in for the agent's `cilia_host`), pod namespaces
//! `cilia-cnitest-<pid>-<tag>-pod<n>`, and a temp dir with the agent's `node.json` and the IPAM
//! store. The plugin runs as a child process that `setns()`es into the node namespace before exec,
//! as a runtime on that node would run it. Everything is removed by `Drop`, also on panic.
//!
//! Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and `ip` from iproute2 for setup and inspection.

use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use cilia_cni::datapath::host_veth_name;
use cilia_model::NodeLocalConfig;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_cilia-cni");
const NETWORK: &str = "cilia";
/// Pod CIDR of most labs (addresses from the documentation-friendly 10.244/16 lab range).
const POD_CIDR: &str = "10.244.7.0/24";
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 7, 1);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
/// A pod CIDR with exactly one pod address (.2): .0 network, .1 router, .3 broadcast.
const TINY_CIDR: &str = "10.244.9.0/30";
const TINY_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 1);
const UDP_PORT: u16 = 7777;

/// Serializes `ip netns add/del`, which mount and unmount under /run/netns.
static NETNS_SETUP: Mutex<()> = Mutex::new(());

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ip_json(args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ip(&full);
    if out.trim().is_empty() {
        json!([])
    } else {
        serde_json::from_str(&out).unwrap()
    }
}

/// A named network namespace, deleted on drop.
struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    fn new(name: String) -> Self {
        assert!(name.starts_with("cilia-cnitest-"));
        let _g = NETNS_SETUP.lock().unwrap_or_else(|p| p.into_inner());
        ip(&["netns", "add", &name]);
        NetnsGuard { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn link(&self, name: &str) -> Option<Value> {
        let links = ip_json(&["-n", &self.name, "link", "show"]);
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
    }

    fn routes(&self) -> Vec<Value> {
        ip_json(&["-n", &self.name, "-4", "route", "show", "table", "main"])
            .as_array()
            .unwrap()
            .clone()
    }

    fn addrs(&self, dev: &str) -> Vec<String> {
        let v = ip_json(&["-n", &self.name, "-4", "addr", "show", "dev", dev]);
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _g = NETNS_SETUP.lock().unwrap_or_else(|p| p.into_inner());
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// What one plugin run printed.
#[derive(Debug)]
struct Run {
    exit_ok: bool,
    stdout: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts success with no output (DEL, CHECK, STATUS, GC).
    fn assert_silent_ok(&self) {
        assert!(
            self.exit_ok && self.stdout.is_empty(),
            "expected silent success, got {self:?}"
        );
    }

    /// Asserts failure and returns the error object.
    fn error(&self) -> Value {
        assert!(!self.exit_ok, "expected failure, got {self:?}");
        let e = self.json();
        for key in ["cniVersion", "code", "msg", "details"] {
            assert!(e.get(key).is_some(), "error object lacks {key}: {e}");
        }
        e
    }
}

/// One node with its pods, agent state and IPAM store.
struct Lab {
    tag: String,
    dir: tempfile::TempDir,
    // Declared before `node` so pods go first on drop.
    pods: Vec<NetnsGuard>,
    node: NetnsGuard,
    node_fd: File,
}

impl Lab {
    fn new(tag: &str) -> Self {
        Self::with_cidr(tag, POD_CIDR, ROUTER_IP)
    }

    fn with_cidr(tag: &str, pod_cidr: &str, router: Ipv4Addr) -> Self {
        let tag = format!("cilia-cnitest-{}-{tag}", std::process::id());
        let node = NetnsGuard::new(format!("{tag}-node"));
        let node_fd = File::open(node.path()).unwrap();
        // The router IP, so the pod's gateway answers. The agent puts it on a `cilia_host` dummy;
        // this test kernel has no dummy driver, and any local address behaves the same here.
        ip(&["-n", &node.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &node.name,
            "addr",
            "add",
            &format!("{router}/32"),
            "dev",
            "lo",
        ]);
        let lab = Lab {
            tag,
            dir: tempfile::tempdir().unwrap(),
            pods: Vec::new(),
            node,
            node_fd,
        };
        lab.write_node_json(pod_cidr, router);
        lab
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam").join(NETWORK)
    }

    fn write_node_json(&self, pod_cidr: &str, router: Ipv4Addr) {
        let node = NodeLocalConfig {
            node_name: "worker".into(),
            pod_cidr: pod_cidr.parse().unwrap(),
            router_ip: router,
            node_ip: NODE_IP,
            mtu: 0,
        };
        fs::create_dir_all(self.state_dir()).unwrap();
        fs::write(
            self.state_dir().join("node.json"),
            serde_json::to_vec(&node).unwrap(),
        )
        .unwrap();
    }

    /// A new pod namespace; returns its index.
    fn add_pod(&mut self) -> usize {
        let n = self.pods.len();
        self.pods
            .push(NetnsGuard::new(format!("{}-pod{n}", self.tag)));
        n
    }

    fn pod(&self, n: usize) -> &NetnsGuard {
        &self.pods[n]
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "cilia-cni",
            "agent-state-dir": self.state_dir(),
            "ipam-data-dir": self.dir.path().join("ipam"),
            "log-file": self.dir.path().join("cni.log"),
        })
    }

    /// Runs the plugin inside the node namespace.
    fn run(&self, command: &str, env: &[(&str, &str)], stdin: &[u8]) -> Run {
        let node_fd = self.node_fd.as_raw_fd();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", "/opt/cni/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setns is async-signal-safe; the fd stays open in the parent until after spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(node_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawning cilia-cni");
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            exit_ok: out.status.success(),
            stdout: String::from_utf8(out.stdout).unwrap(),
        }
    }

    /// Runs an attachment verb for `(container_id, eth0)` in pod `n` with `conf`.
    fn verb(&self, command: &str, container_id: &str, pod: Option<usize>, conf: &Value) -> Run {
        let netns = pod.map(|n| self.pod(n).path().to_string_lossy().into_owned());
        let mut env = vec![("CNI_CONTAINERID", container_id), ("CNI_IFNAME", "eth0")];
        if let Some(p) = &netns {
            env.push(("CNI_NETNS", p));
        }
        self.run(command, &env, conf.to_string().as_bytes())
    }

    fn add(&self, container_id: &str, pod: usize) -> Value {
        let run = self.verb("ADD", container_id, Some(pod), &self.conf("1.0.0"));
        assert!(run.exit_ok, "ADD failed: {run:?}");
        run.json()
    }

    fn with_prev(&self, version: &str, prev: &Value) -> Value {
        let mut conf = self.conf(version);
        conf["prevResult"] = prev.clone();
        conf
    }

    fn allocation_files(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.ipam_dir()) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.parse::<Ipv4Addr>().is_ok())
            .collect();
        v.sort();
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let names: Vec<String> = self
            .pods
            .iter()
            .map(|p| p.name.clone())
            .chain([self.node.name.clone()])
            .collect();
        self.pods.clear();
        // node drops after this body; check the pods here and the whole tag in the last test.
        if !std::thread::panicking() {
            let listed = ip(&["netns", "list"]);
            for n in &names[..names.len() - 1] {
                assert!(!listed.contains(n.as_str()), "netns {n} left behind");
            }
        }
    }
}

/// The pod IP of an ADD result.
fn pod_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"].as_str().unwrap();
    addr.strip_suffix("/32")
        .expect("a /32 address")
        .parse()
        .unwrap()
}

/// Runs `f` on a thread inside the namespace at `path`.
fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = File::open(path).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on an fd we own; this thread is dedicated to the namespace.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
        .join()
        .unwrap()
    })
}

/// Sends a datagram from the pod to the router IP on the node and a reply back; returns the source
/// address the node saw.
fn udp_round_trip(lab: &Lab, pod: usize, router: Ipv4Addr) -> Ipv4Addr {
    let node_sock = in_netns(&lab.node.path(), || {
        UdpSocket::bind((router, UDP_PORT)).unwrap()
    });
    let pod_sock = in_netns(&lab.pod(pod).path(), || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
    });
    for s in [&node_sock, &pod_sock] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    pod_sock.send_to(b"ping", (router, UDP_PORT)).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = node_sock
        .recv_from(&mut buf)
        .expect("node never got the pod's datagram");
    assert_eq!(&buf[..n], b"ping");
    node_sock.send_to(b"pong", from).unwrap();
    let (n, back) = pod_sock
        .recv_from(&mut buf)
        .expect("pod never got the node's reply");
    assert_eq!(&buf[..n], b"pong");
    assert_eq!(back, SocketAddr::from((router, UDP_PORT)));
    match from {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => panic!("IPv6 source"),
    }
}

// ADD wires a pod (veth, /32 address, router + default routes, node route), the result describes
// exactly that, the pod reaches its router and back, CHECK passes, and DEL removes everything and
// stays successful when repeated, also without CNI_NETNS.
#[test]
fn add_check_del_del_wires_a_pod() {
    let mut lab = Lab::new("life");
    let pod = lab.add_pod();
    let cid = "ctr-lifecycle";
    let lxc = host_veth_name(cid, "eth0");

    let result = lab.add(cid, pod);
    assert_eq!(result["cniVersion"], "1.0.0");
    let ip = pod_ip(&result);
    let cidr: ipnet::Ipv4Net = POD_CIDR.parse().unwrap();
    assert!(
        cidr.contains(&ip) && ip != ROUTER_IP && ip != cidr.network() && ip != cidr.broadcast()
    );

    // Result shape.
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 2);
    assert_eq!(ifaces[0]["name"], lxc.as_str());
    assert!(ifaces[0].get("sandbox").is_none());
    assert_eq!(ifaces[1]["name"], "eth0");
    assert_eq!(ifaces[1]["sandbox"], lab.pod(pod).path().to_str().unwrap());
    assert_eq!(result["ips"][0]["gateway"], ROUTER_IP.to_string());
    assert_eq!(result["ips"][0]["interface"], 1);
    assert!(result["ips"][0].get("version").is_none());
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": ROUTER_IP.to_string()}])
    );
    assert_eq!(result["dns"], json!({}));

    // Kernel state matches the result.
    let pod_link = lab.pod(pod).link("eth0").expect("eth0 in the pod");
    assert_eq!(pod_link["address"], ifaces[1]["mac"]);
    assert!(pod_link["flags"].as_array().unwrap().contains(&json!("UP")));
    let host_link = lab.node.link(&lxc).expect("host veth on the node");
    assert_eq!(host_link["address"], ifaces[0]["mac"]);
    assert!(
        host_link["flags"]
            .as_array()
            .unwrap()
            .contains(&json!("UP"))
    );
    assert_eq!(lab.pod(pod).addrs("eth0"), [format!("{ip}/32")]);
    let pod_routes = lab.pod(pod).routes();
    assert!(
        pod_routes.iter().any(|r| r["dst"] == ROUTER_IP.to_string()
            && r["dev"] == "eth0"
            && r["scope"] == "link")
    );
    assert!(
        pod_routes
            .iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == ROUTER_IP.to_string())
    );
    assert!(
        lab.node.routes().iter().any(|r| r["dst"] == ip.to_string()
            && r["dev"] == lxc.as_str()
            && r["scope"] == "link")
    );
    assert_eq!(lab.allocation_files(), [ip.to_string()]);

    // Traffic: the node sees the pod's own address as the source and its reply gets back.
    assert_eq!(udp_round_trip(&lab, pod, ROUTER_IP), ip);

    // CHECK against the ADD result, at every version that has CHECK.
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        lab.verb("CHECK", cid, Some(pod), &lab.with_prev(version, &result))
            .assert_silent_ok();
    }

    // DEL, DEL again, and DEL without a netns: all fine, nothing left.
    let del_conf = lab.with_prev("1.0.0", &result);
    lab.verb("DEL", cid, Some(pod), &del_conf)
        .assert_silent_ok();
    assert!(lab.node.link(&lxc).is_none());
    assert!(lab.pod(pod).link("eth0").is_none());
    assert!(!lab.node.routes().iter().any(|r| r["dst"] == ip.to_string()));
    assert!(lab.allocation_files().is_empty());
    lab.verb("DEL", cid, Some(pod), &del_conf)
        .assert_silent_ok();
    lab.verb("DEL", cid, None, &lab.conf("1.0.0"))
        .assert_silent_ok();

    // The log went to the log file, not stdout.
    let log = fs::read_to_string(lab.dir.path().join("cni.log")).unwrap();
    assert!(log.contains("attached") && log.contains(cid), "{log}");
}

// CHECK reports a deleted host veth with the plugin's CHECK code (102) naming the veth; DEL still
// cleans up and releases the address.
#[test]
fn check_reports_deleted_host_veth() {
    let mut lab = Lab::new("chk");
    let pod = lab.add_pod();
    let cid = "ctr-check";
    let lxc = host_veth_name(cid, "eth0");
    let result = lab.add(cid, pod);
    ip(&["-n", &lab.node.name, "link", "del", &lxc]);

    let err = lab
        .verb("CHECK", cid, Some(pod), &lab.with_prev("1.0.0", &result))
        .error();
    assert_eq!(err["code"], 102);
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(err["msg"].as_str().unwrap().contains(&lxc), "{err}");

    lab.verb("DEL", cid, Some(pod), &lab.with_prev("1.0.0", &result))
        .assert_silent_ok();
    assert!(lab.allocation_files().is_empty());
}

// CHECK also notices a pod address that went missing, and a prevResult that does not match.
#[test]
fn check_reports_missing_pod_address_and_foreign_prev_result() {
    let mut lab = Lab::new("chk2");
    let pod = lab.add_pod();
    let cid = "ctr-check2";
    let result = lab.add(cid, pod);
    let addr = pod_ip(&result);

    // The spec's example result (bridge plugin) does not describe this attachment.
    let spec_prev = json!({
        "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth3243", "mac": "55:44:33:22:11:11"},
            {"name": "eth0", "mac": "00:11:22:33:44:66", "sandbox": "/var/run/netns/blue"}
        ],
        "dns": {"nameservers": ["10.1.0.1"]}
    });
    let err = lab
        .verb("CHECK", cid, Some(pod), &lab.with_prev("1.0.0", &spec_prev))
        .error();
    assert_eq!(err["code"], 102, "{err}");

    ip(&[
        "-n",
        &lab.pod(pod).name,
        "addr",
        "del",
        &format!("{addr}/32"),
        "dev",
        "eth0",
    ]);
    let err = lab
        .verb("CHECK", cid, Some(pod), &lab.with_prev("1.0.0", &result))
        .error();
    assert_eq!(err["code"], 102);
    assert!(
        err["msg"].as_str().unwrap().contains(&addr.to_string()),
        "{err}"
    );

    lab.verb("DEL", cid, Some(pod), &lab.conf("1.0.0"))
        .assert_silent_ok();
}

// Bad input gets the spec's codes and allocates nothing: malformed JSON (6, with position),
// missing CNI_NETNS (4, naming it), a netns that does not exist (3), a bad field (7).
#[test]
fn add_errors_have_spec_codes() {
    let mut lab = Lab::new("err");
    let pod = lab.add_pod();
    let netns = lab.pod(pod).path().to_string_lossy().into_owned();
    let env = [
        ("CNI_CONTAINERID", "ctr-err"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns.as_str()),
    ];

    let err = lab
        .run(
            "ADD",
            &env,
            br#"{"cniVersion": "1.0.0", "name": "cilia", "type": }"#,
        )
        .error();
    assert_eq!(err["code"], 6);
    assert!(
        err["msg"].as_str().unwrap().contains("line 1 column"),
        "{err}"
    );

    let err = lab
        .run("ADD", &env[..2], lab.conf("1.0.0").to_string().as_bytes())
        .error();
    assert_eq!(err["code"], 4);
    assert!(err["msg"].as_str().unwrap().contains("CNI_NETNS"), "{err}");

    let gone = [
        ("CNI_CONTAINERID", "ctr-err"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/cilia-cnitest-gone"),
    ];
    let err = lab
        .run("ADD", &gone, lab.conf("1.0.0").to_string().as_bytes())
        .error();
    assert_eq!(err["code"], 3, "{err}");

    let mut bad = lab.conf("1.0.0");
    bad["mtu"] = json!("jumbo");
    let err = lab.run("ADD", &env, bad.to_string().as_bytes()).error();
    assert_eq!(err["code"], 7);
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("mtu") && msg.contains("jumbo"), "{err}");

    let err = lab
        .run("ADD", &env, lab.conf("0.2.0").to_string().as_bytes())
        .error();
    assert_eq!(err["code"], 1);

    assert!(lab.allocation_files().is_empty());
    assert!(lab.pod(pod).link("eth0").is_none());
}

// A node whose /30 has one pod address: the second pod gets code 100 naming the CIDR, and nothing
// of it is left on the node or in its namespace; after the first pod's DEL it fits.
#[test]
fn exhausted_range_is_code_100() {
    let mut lab = Lab::with_cidr("full", TINY_CIDR, TINY_ROUTER_IP);
    let (a, b) = (lab.add_pod(), lab.add_pod());
    let first = lab.add("ctr-a", a);
    assert_eq!(pod_ip(&first), Ipv4Addr::new(10, 244, 9, 2));

    let err = lab
        .verb("ADD", "ctr-b", Some(b), &lab.conf("1.0.0"))
        .error();
    assert_eq!(err["code"], 100);
    assert!(err["msg"].as_str().unwrap().contains(TINY_CIDR), "{err}");
    assert!(lab.node.link(&host_veth_name("ctr-b", "eth0")).is_none());
    assert!(lab.pod(b).link("eth0").is_none());

    lab.verb("DEL", "ctr-a", Some(a), &lab.conf("1.0.0"))
        .assert_silent_ok();
    let second = lab.add("ctr-b", b);
    assert_eq!(pod_ip(&second), Ipv4Addr::new(10, 244, 9, 2));
    assert_eq!(udp_round_trip(&lab, b, TINY_ROUTER_IP), pod_ip(&second));
    lab.verb("DEL", "ctr-b", Some(b), &lab.conf("1.0.0"))
        .assert_silent_ok();
}

// Pods started at once on one node (parallel plugin processes) get distinct addresses.
#[test]
fn concurrent_adds_get_distinct_addresses() {
    const PODS: usize = 6;
    let mut lab = Lab::new("par");
    for _ in 0..PODS {
        lab.add_pod();
    }
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|n| {
                let lab = &lab;
                s.spawn(move || lab.add(&format!("ctr-par-{n}"), n))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips: Vec<Ipv4Addr> = results.iter().map(pod_ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(
        ips.len(),
        PODS,
        "an address was handed out twice: {results:?}"
    );
    assert_eq!(lab.allocation_files().len(), PODS);
    for n in 0..PODS {
        lab.verb("DEL", &format!("ctr-par-{n}"), Some(n), &lab.conf("1.0.0"))
            .assert_silent_ok();
    }
    assert!(lab.allocation_files().is_empty());
}

// A repeated ADD of one attachment converges: same address, one veth, CHECK passes.
#[test]
fn repeated_add_is_idempotent() {
    let mut lab = Lab::new("again");
    let pod = lab.add_pod();
    let first = lab.add("ctr-again", pod);
    let second = lab.add("ctr-again", pod);
    assert_eq!(pod_ip(&first), pod_ip(&second));
    assert_eq!(lab.allocation_files().len(), 1);
    lab.verb(
        "CHECK",
        "ctr-again",
        Some(pod),
        &lab.with_prev("1.0.0", &second),
    )
    .assert_silent_ok();
    lab.verb("DEL", "ctr-again", Some(pod), &lab.conf("1.0.0"))
        .assert_silent_ok();
}

// An interface of the requested name already in the container is refused (103), per the spec's
// "must return an error", and the address is not kept.
#[test]
fn taken_ifname_is_code_103() {
    let mut lab = Lab::new("taken");
    let pod = lab.add_pod();
    let pod_ns = lab.pod(pod).name.clone();
    ip(&[
        "-n",
        &pod_ns,
        "link",
        "add",
        "cilia-taken",
        "type",
        "veth",
        "peer",
        "name",
        "cilia-taken-p",
    ]);
    let netns = lab.pod(pod).path().to_string_lossy().into_owned();
    let env = [
        ("CNI_CONTAINERID", "ctr-taken"),
        ("CNI_IFNAME", "cilia-taken"),
        ("CNI_NETNS", netns.as_str()),
    ];
    let err = lab
        .run("ADD", &env, lab.conf("1.0.0").to_string().as_bytes())
        .error();
    assert_eq!(err["code"], 103, "{err}");
    assert!(err["msg"].as_str().unwrap().contains("cilia-taken"));
    assert!(lab.allocation_files().is_empty());
    assert!(
        lab.node
            .link(&host_veth_name("ctr-taken", "cilia-taken"))
            .is_none()
    );
}

// Results follow the requested version (0.3.x/0.4.0 carry "version": "4", 1.1.0 carries the MTU),
// a configured MTU reaches both ends, and CHECK at 0.3.1 is an incompatible-version error.
#[test]
fn results_are_shaped_per_version() {
    let mut lab = Lab::new("ver");
    let pod = lab.add_pod();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let cid = format!("ctr-v{}", version.replace('.', ""));
        let mut conf = lab.conf(version);
        conf["mtu"] = json!(1400);
        let run = lab.verb("ADD", &cid, Some(pod), &conf);
        assert!(run.exit_ok, "{version}: {run:?}");
        let r = run.json();
        assert_eq!(r["cniVersion"], version);
        let has_ip_version = r["ips"][0].get("version").is_some();
        assert_eq!(has_ip_version, version < "1.0.0", "{version}: {r}");
        assert_eq!(
            r["interfaces"][1].get("mtu").is_some(),
            version == "1.1.0",
            "{version}: {r}"
        );
        assert_eq!(lab.pod(pod).link("eth0").unwrap()["mtu"], 1400);
        assert_eq!(
            lab.node.link(&host_veth_name(&cid, "eth0")).unwrap()["mtu"],
            1400
        );
        if version == "0.3.1" {
            let err = lab
                .verb("CHECK", &cid, Some(pod), &lab.with_prev(version, &r))
                .error();
            assert_eq!(err["code"], 1);
        }
        lab.verb("DEL", &cid, Some(pod), &lab.with_prev(version, &r))
            .assert_silent_ok();
    }
}

// The spec's ADD example input (bridge config keys, runtimeConfig, args, and the bridge result as
// prevResult) is accepted: unknown keys are ignored and the earlier result is passed through with
// ours appended and interface indexes re-based.
#[test]
fn add_passes_spec_example_prev_result_through() {
    let mut lab = Lab::new("chain");
    let pod = lab.add_pod();
    let spec_prev = json!({
        "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth3243", "mac": "55:44:33:22:11:11"},
            {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
        ],
        "dns": {"nameservers": ["10.1.0.1"]}
    });
    let mut conf = lab.with_prev("1.0.0", &spec_prev);
    conf["bridge"] = json!("cni0");
    conf["keyA"] = json!(["some more", "plugin specific", "configuration"]);
    conf["args"] = json!({"argA": "foo"});
    conf["runtimeConfig"] = json!({"mac": "00:11:22:33:44:66"});
    conf["dns"] = json!({"nameservers": ["10.1.0.1"]});
    let netns = lab.pod(pod).path().to_string_lossy().into_owned();
    // A different ifname: the spec's prevResult already claims eth0 in another sandbox.
    let env = [
        ("CNI_CONTAINERID", "ctr-chain"),
        ("CNI_IFNAME", "net1"),
        ("CNI_NETNS", netns.as_str()),
    ];
    let run = lab.run("ADD", &env, conf.to_string().as_bytes());
    assert!(run.exit_ok, "{run:?}");
    let r = run.json();
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 5);
    assert_eq!(r["interfaces"][1]["name"], "veth3243");
    assert_eq!(r["interfaces"][4]["name"], "net1");
    assert_eq!(r["ips"][0], spec_prev["ips"][0]);
    assert_eq!(r["ips"][1]["interface"], 4);
    assert_eq!(r["dns"], json!({"nameservers": ["10.1.0.1"]}));
    // CHECK of the chained result verifies our part and leaves the other plugin's to it.
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    lab.run("CHECK", &env, check.to_string().as_bytes())
        .assert_silent_ok();
    lab.run("DEL", &env, conf.to_string().as_bytes())
        .assert_silent_ok();
    assert!(lab.allocation_files().is_empty());
}

// VERSION answers the spec's input `{"cniVersion": "1.0.0"}` with the supported list.
#[test]
fn version_reports_supported_versions() {
    let lab = Lab::new("version");
    let run = lab.run("VERSION", &[], br#"{"cniVersion": "1.0.0"}"#);
    assert!(run.exit_ok);
    assert_eq!(
        run.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    let run = lab.run("VERSION", &[], b"");
    assert_eq!(run.json()["cniVersion"], "1.1.0");
}

// STATUS is code 50 while the agent's node.json is missing and silent success once it exists;
// ADD in the meantime is "try again later" (11) naming the file.
#[test]
fn status_follows_node_json() {
    let mut lab = Lab::new("status");
    let pod = lab.add_pod();
    let node_json = lab.state_dir().join("node.json");
    fs::remove_file(&node_json).unwrap();

    let err = lab
        .run("STATUS", &[], lab.conf("1.1.0").to_string().as_bytes())
        .error();
    assert_eq!(err["code"], 50);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains(node_json.to_str().unwrap()),
        "{err}"
    );
    let err = lab
        .verb("ADD", "ctr-status", Some(pod), &lab.conf("1.1.0"))
        .error();
    assert_eq!(err["code"], 11);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains(node_json.to_str().unwrap()),
        "{err}"
    );

    lab.write_node_json(POD_CIDR, ROUTER_IP);
    lab.run("STATUS", &[], lab.conf("1.1.0").to_string().as_bytes())
        .assert_silent_ok();
}

// GC releases every allocation not listed as valid and deletes its host veth; listed ones keep
// working.
#[test]
fn gc_releases_stale_allocations() {
    let mut lab = Lab::new("gc");
    let (a, b) = (lab.add_pod(), lab.add_pod());
    let keep = lab.add("ctr-keep", a);
    let stale = lab.add("ctr-stale", b);
    let stale_lxc = host_veth_name("ctr-stale", "eth0");
    assert!(lab.node.link(&stale_lxc).is_some());
    // Leftover from a crash between create and write: no readable owner.
    fs::write(lab.ipam_dir().join("10.244.7.200"), "").unwrap();

    let mut conf = lab.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-keep", "ifname": "eth0"}]);
    lab.run("GC", &[], conf.to_string().as_bytes())
        .assert_silent_ok();

    assert_eq!(lab.allocation_files(), [pod_ip(&keep).to_string()]);
    assert!(lab.node.link(&stale_lxc).is_none());
    assert!(
        !lab.node
            .routes()
            .iter()
            .any(|r| r["dst"] == pod_ip(&stale).to_string())
    );
    lab.verb("CHECK", "ctr-keep", Some(a), &lab.with_prev("1.1.0", &keep))
        .assert_silent_ok();

    // GC again changes nothing; DEL of the collected attachment is still fine.
    lab.run("GC", &[], conf.to_string().as_bytes())
        .assert_silent_ok();
    assert_eq!(lab.allocation_files().len(), 1);
    lab.verb("DEL", "ctr-stale", Some(b), &lab.conf("1.1.0"))
        .assert_silent_ok();
    lab.verb("DEL", "ctr-keep", Some(a), &lab.conf("1.1.0"))
        .assert_silent_ok();
}
