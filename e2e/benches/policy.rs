//! Policy enforcement: ns per packet of the verdict (`ebpf/tc_policy.c`) with 10 and 10,000 rules
//! on one endpoint, next to an empty TC program on the same frame in the same run (the floor).
//! The verdict does a fixed number of map lookups (ipcache, conntrack, the endpoint's LPM table
//! with the peer's identity, then the wildcard), so its cost must stay flat as rules grow.
//!
//! Each rule allows one peer identity (a pod address in the ipcache) on TCP/80, with a deny on
//! TCP/22 for anyone folded into every identity, as the compiler emits them. The probe packet comes
//! from the last peer added, to port 80: a hit on the longest path (no conntrack reply match,
//! identity lookup, policy hit, conntrack refresh).
//!
//! `policy_apply_to_enforced_ms`: in the lab (API server, operator, three agents), the time from
//! `kubectl apply` of a CCNP selecting one pod on every node until every node's agent has written
//! it into its maps (polled through `cilia-dbg bpf policy list`, which the agent updates right after
//! the map writes), median of several policies. Its baseline, in the same lab: the `kubectl apply`
//! round trip of a ConfigMap (what the user's side of the wait costs anyway).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::EbpfLoader;
use aya::programs::SchedClassifier;
use cilia_datapath::policy::{
    BENCH_TC_OBJ, Direction, ID_ANY, PROG_TO_CONTAINER, PolicyDatapath, PolicyEntry, PolicyMaps,
    PortPrefix, Verdict,
};
use cilia_datapath::testrun::test_run;
use cilia_e2e::bench::{Measure, Report, median};
use cilia_e2e::lab::{Lab, default_nodes, repo_root};
use serde_json::{Value, json};

const REPEAT: u32 = 1_000_000;
const RUNS: usize = 7;
const EP: u32 = 1; // test runs sit on loopback
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const TC_ACT_UNSPEC: u32 = u32::MAX;

struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn peer(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32)
}

fn frame(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[12] = 0x08;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&50u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&src.octets());
    f[30..34].copy_from_slice(&POD.octets());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f
}

fn maps(rules: usize) -> PolicyMaps {
    let mut m = PolicyMaps::default();
    let exact = |identity, port| PolicyEntry {
        ep_id: EP,
        dir: Direction::Ingress,
        identity,
        proto: 6,
        port: PortPrefix { port, bits: 16 },
    };
    for i in 0..rules {
        let id = 1000 + i as u32;
        m.ipcache.insert((peer(i), 32), id);
        m.entries.insert(exact(id, 80), (Verdict::Allow, i as u32));
        m.entries.insert(exact(id, 22), (Verdict::Deny, 0));
    }
    m.entries.insert(exact(ID_ANY, 22), (Verdict::Deny, 0));
    m.endpoints.insert(EP, (true, false, false));
    m
}

fn time(fd: i32, frame: &[u8]) -> f64 {
    let out = test_run(fd, frame, 10_000, None).expect("warm-up run");
    assert_eq!(out.retval, TC_ACT_UNSPEC, "the probe must be allowed");
    let runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            test_run(fd, frame, REPEAT, None)
                .expect("test run")
                .duration_ns as f64
        })
        .collect();
    median(&runs)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("policy: SKIP: needs root (BPF_PROG_TEST_RUN, bpffs pins)");
        return;
    }
    cilia_datapath::bpf::ensure_bpffs().expect("bpffs");
    let mut ebpf = EbpfLoader::new().load(BENCH_TC_OBJ).expect("bench_tc.o");
    let empty: &mut SchedClassifier = ebpf
        .program_mut("cil_bench_tc_empty")
        .unwrap()
        .try_into()
        .unwrap();
    empty.load().unwrap();
    let empty_fd = empty.fd().unwrap().as_fd().as_raw_fd();

    let mut report = Report::default();
    let mut results = Vec::new();
    for rules in [10usize, 10_000] {
        let pins = Pins(PathBuf::from(format!(
            "/sys/fs/bpf/cilia/bench-policy-{}-{rules}",
            std::process::id()
        )));
        let mut dp = PolicyDatapath::load(&pins.0).expect("load tc_policy.o");
        let m = maps(rules);
        dp.apply(&m).expect("fill the maps");
        let probe = frame(peer(rules - 1), 80);
        let fd = dp.prog_fd(PROG_TO_CONTAINER);
        // Interleave with the floor so drift hits both alike.
        let floor = time(empty_fd, &probe);
        let verdict = time(fd, &probe);
        let floor2 = time(empty_fd, &probe);
        let floor = (floor + floor2) / 2.0;
        println!("{rules:>6} rules: verdict {verdict:.1} ns/packet, empty program {floor:.1} ns");
        results.push((rules, verdict, floor));
    }
    let (_, v10, f10) = results[0];
    let (_, v10k, f10k) = results[1];
    report.push(Measure::new("policy_verdict_ns_10_rules", v10, "ns", f10));
    report.push(Measure::new(
        "policy_verdict_ns_10k_rules",
        v10k,
        "ns",
        f10k,
    ));
    report.push(Measure::new(
        "policy_10k_vs_10_rules_ratio",
        v10k / v10,
        "x",
        1.0,
    ));
    report.note("baseline of the ns measures: an empty TC program on the same frame, same run");
    match lab_bin_dir() {
        Some(dir) => {
            // SAFETY: set before the lab starts any thread that reads the environment.
            unsafe { std::env::set_var("CILIA_BIN_DIR", &dir) };
            let (apply_ms, kubectl_ms) = apply_to_enforced().expect("policy_apply_to_enforced_ms");
            report.push(Measure::new(
                "policy_apply_to_enforced_ms",
                apply_ms,
                "ms",
                kubectl_ms,
            ));
            report.note(
                "baseline of policy_apply_to_enforced_ms: the kubectl apply round trip of a \
                 ConfigMap, same lab",
            );
        }
        None => report.note(
            "not measured: policy_apply_to_enforced_ms (the lab binaries are not built: run \
             `make build` first)",
        ),
    }
    report.finish("policy").expect("write the report");
}

/// The lab binaries: `CILIA_BIN_DIR`, else the debug build `make build` makes (a release build
/// may be stale; the benchmark itself is built in release and sits elsewhere).
fn lab_bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("CILIA_BIN_DIR") {
        return Some(PathBuf::from(d));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let dir = target.join("debug");
    [
        "cilia-agent",
        "cilia-cni",
        "cilia-dbg",
        "cilia-operator",
        "cilia-apiserver",
    ]
    .iter()
    .all(|b| dir.join(b).exists())
    .then_some(dir)
}

/// Policies applied (and deleted) in the lab; the median is reported.
const APPLY_ROUNDS: usize = 7;
const NODES: [&str; 3] = ["control-plane", "worker", "worker2"];

/// Whether every node's agent lists `policy` in its tables (`want`), or none does (`!want`).
fn enforced_everywhere(lab: &Lab, policy: &str, want: bool) -> bool {
    NODES.iter().all(|n| {
        let out = lab
            .dbg(n, &["bpf", "policy", "list", "-o", "json"])
            .unwrap_or_default();
        let rows: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let has = rows.as_array().is_some_and(|r| {
            r.iter()
                .any(|row| row["policy"] == policy && row["interface"].is_string())
        });
        has == want
    })
}

fn wait(what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within 60 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// (median ms from `kubectl apply` of a policy to enforcement on every node, median ms of a
/// ConfigMap's `kubectl apply`).
fn apply_to_enforced() -> anyhow::Result<(f64, f64)> {
    let mut lab = Lab::up(default_nodes())?;
    lab.kubectl(&["apply", "-f", &repo_root().join("crds").to_string_lossy()])?;
    lab.apply_cilium_config(&[])?;
    for (i, n) in NODES.iter().enumerate() {
        let pod = lab.add_pod(n, &format!("bench-{i}"))?;
        lab.register_pod(&pod, "default", &[("app", "policy-bench")])?;
    }
    let ccnp = |name: &str| {
        json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumClusterwideNetworkPolicy",
            "metadata": { "name": name },
            "spec": {
                "endpointSelector": { "matchLabels": { "app": "policy-bench" } },
                "ingress": [{
                    "fromEndpoints": [{ "matchLabels": { "app": "policy-bench" } }],
                    "toPorts": [{ "ports": [{ "port": "80", "protocol": "TCP" }] }],
                }],
            },
        })
        .to_string()
    };
    // Warm-up: the agents load the policy programs on the first policy.
    lab.kubectl_with_input(&["apply", "-f", "-"], &ccnp("bench-warmup"))?;
    wait("warm-up policy", || {
        enforced_everywhere(&lab, "bench-warmup", true)
    })?;
    lab.kubectl(&["delete", "ccnp", "bench-warmup"])?;
    wait("warm-up removal", || {
        enforced_everywhere(&lab, "bench-warmup", false)
    })?;
    let mut applied = Vec::new();
    let mut baseline = Vec::new();
    for round in 0..APPLY_ROUNDS {
        let name = format!("bench-{round}");
        let t = Instant::now();
        lab.kubectl_with_input(&["apply", "-f", "-"], &ccnp(&name))?;
        wait(&name, || enforced_everywhere(&lab, &name, true))?;
        applied.push(t.elapsed().as_secs_f64() * 1000.0);
        lab.kubectl(&["delete", "ccnp", &name])?;
        wait(&format!("{name} removal"), || {
            enforced_everywhere(&lab, &name, false)
        })?;

        // The user's side of the wait: one `kubectl apply` round trip, which returns once the
        // API server has stored the object.
        let cm = format!("bench-cm-{round}");
        let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": cm, "namespace": "default"}, "data": {"k": "v"}});
        let t = Instant::now();
        lab.kubectl_with_input(&["apply", "-f", "-"], &manifest.to_string())?;
        baseline.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "policy apply -> enforced on {} nodes: {applied:.0?} ms",
        NODES.len()
    );
    println!("kubectl apply of a ConfigMap: {baseline:.0?} ms");
    Ok((median(&applied), median(&baseline)))
}
