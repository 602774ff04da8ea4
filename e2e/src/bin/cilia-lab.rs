//! cilia-lab: brings up the Cilia lab and walks a newcomer through it (`make demo`), or cleans up
//! after killed runs (`make lab-clean`).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use cilia_e2e::l2lab::{RequestLoop, arping, interruption};
use cilia_e2e::lab::{Lab, clean_stale, default_nodes, spawn_in_netns, wait_until};
use cilia_e2e::traffic::{EchoServer, tcp_echo};
use clap::{Parser, Subcommand};

/// The Cilia lab: network namespaces standing for three Kubernetes nodes, their pods, a LAN and an
/// outside client, running the real agent and CNI plugin against the real kernel.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the lab up and show, step by step, what Cilia does. Tears it down at the end.
    Demo {
        /// Leave the lab running afterwards and print how to explore it.
        #[arg(long)]
        keep: bool,
    },
    /// Remove what killed lab runs left behind (namespaces, pins, processes, state).
    Clean,
    /// Bring the lab up, print its run id, and hold it until SIGINT/SIGTERM, then tear it down.
    Up,
}

/// The workspace root (for `tools/helm`, `charts/`, `.venv/`) and the users' seed files beside it.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn seed(name: &str) -> String {
    repo()
        .join("../shared/fixtures/seed")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Runs a user command (kubectl, helm) from the client namespace, as someone on the LAN would.
fn as_user(lab: &Lab, program: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut c = Command::new(program);
    c.args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = spawn_in_netns(&mut c, &lab.client.path())?.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        anyhow::bail!("{} {} failed:\n{text}", program.display(), args.join(" "));
    }
    Ok(text)
}

fn step(n: u32, title: &str) {
    println!("\n\x1b[1m{n}. {title}\x1b[0m");
}

fn indent(s: &str) {
    for l in s.lines() {
        println!("     {l}");
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Clean => {
            let removed = clean_stale();
            if removed.is_empty() {
                println!("lab-clean: nothing to remove");
            } else {
                println!("lab-clean: removed runs {}", removed.join(", "));
            }
            Ok(())
        }
        Cmd::Demo { keep } => demo(keep),
        Cmd::Up => {
            let lab = Lab::up(default_nodes()).context("bringing the lab up")?;
            println!("run {}", lab.run);
            use std::io::Write;
            std::io::stdout().flush()?;
            // The lab's signal handler tears the run down and exits.
            loop {
                std::thread::park();
            }
        }
    }
}

/// The node whose eth0 answers ARP for `vip` (waits until exactly one MAC does).
fn announcer(
    lab: &Lab,
    vip: Ipv4Addr,
    macs: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<String> {
    // Settled: the same single MAC over a second (agents that just reconnected may still move it).
    let mut seen = Vec::new();
    let mut since: Option<(String, Instant)> = None;
    wait_until(Duration::from_secs(30), || {
        seen = arping(lab, vip, 2);
        match (seen.as_slice(), &since) {
            ([m], Some((last, t))) if m == last => t.elapsed() >= Duration::from_secs(1),
            ([m], _) => {
                since = Some((m.clone(), Instant::now()));
                false
            }
            _ => {
                since = None;
                false
            }
        }
    })
    .map_err(|_| anyhow::anyhow!("{vip} is not answered by exactly one MAC: {seen:?}"))?;
    macs.get(&seen[0])
        .cloned()
        .with_context(|| format!("{} is no node's MAC", seen[0]))
}

fn announce_step(
    lab: &Lab,
    vip: Ipv4Addr,
    macs: &std::collections::BTreeMap<String, String>,
    kubectl: &Path,
    kc: &str,
) -> anyhow::Result<String> {
    step(8, "The LoadBalancer VIP answers from outside");
    println!(
        "   The seed values turn on kube-proxy replacement and L2 announcements; the seed policy lets"
    );
    println!(
        "   the workers announce on ^eth[0-9]+. The operator picks one worker per Service among those"
    );
    println!(
        "   whose agent is live, and records it in Cilium's Lease. The client asks who has the VIP:"
    );
    let holder = announcer(lab, vip, macs)?;
    println!("     $ arping {vip}");
    println!("       answered by one MAC only, {holder}'s eth0");
    println!("     $ kubectl get lease -n kube-system cilium-l2announce-default-deathstar-lb");
    indent(&as_user(
        lab,
        kubectl,
        &[
            "--kubeconfig",
            kc,
            "get",
            "lease",
            "-n",
            "kube-system",
            "cilium-l2announce-default-deathstar-lb",
            "-o",
            "custom-columns=NAME:.metadata.name,HOLDER:.spec.holderIdentity",
        ],
    )?);
    let dst = SocketAddr::V4(SocketAddrV4::new(vip, 80));
    for i in 0..4 {
        let e = tcp_echo(&lab.client.path(), dst, format!("request {i}").as_bytes())?;
        println!(
            "     client -> {dst}: served; the deathstar pod saw the request come from {}",
            e.seen_as.ip()
        );
    }
    println!(
        "   The VIP's packets meet the XDP program on {holder}'s eth0 (acceleration: native): a backend on"
    );
    println!(
        "   {holder} sees the client itself, one on the other worker sees {holder} (SNAT). The ARP answers come"
    );
    println!("   from an eBPF program too, with live counters:");
    println!("     $ cilia-dbg bpf l2 list    (on {holder})");
    indent(&lab.dbg(&holder, &["bpf", "l2", "list"])?);
    Ok(holder)
}

fn failover_step(
    lab: &mut Lab,
    vip: Ipv4Addr,
    macs: &std::collections::BTreeMap<String, String>,
    holder: &str,
) -> anyhow::Result<()> {
    step(
        9,
        "The announcing node fails: another takes over in well under a second",
    );
    println!(
        "   A client loop opens a new connection to the VIP every 20 ms. Then {holder}'s agent is killed"
    );
    println!("   (kill -9):");
    let requests = RequestLoop::start_to(
        lab,
        vip,
        Duration::from_millis(20),
        Duration::from_millis(300),
    );
    std::thread::sleep(Duration::from_millis(500));
    let at = Instant::now();
    lab.stop_agent(holder, libc::SIGKILL)?;
    let other = announcer_other(lab, vip, macs, holder)?;
    let moved = at.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let results = requests.stop();
    let failed = results.iter().filter(|(t, ok)| *t >= at && !ok).count();
    let gap = interruption(&results, at)?;
    println!(
        "     {other} answers ARP for {vip} {} ms after the kill (it waits out {holder}'s 400 ms lease, so",
        moved.as_millis()
    );
    println!("     the two never answer at once) and announces itself with a gratuitous ARP:");
    println!("     $ ip neigh show {vip}    (on the client)");
    indent(
        &lab.client
            .exec(&["ip", "neigh", "show", &vip.to_string()])?,
    );
    println!(
        "     The client's loop: {} requests, {failed} failed, longest gap between two answers {} ms.",
        results.len(),
        gap.as_millis()
    );
    println!(
        "     (A killed agent's pinned datapath keeps forwarding what reaches it: only ARP has to move.)"
    );
    lab.start_agent(holder)?;
    announcer(lab, vip, macs)?;
    println!(
        "   Restarted {holder}'s agent: the VIP may move back, withdrawn from {other} before {holder} answers."
    );
    Ok(())
}

/// Waits until the VIP is answered by a node other than `holder`.
fn announcer_other(
    lab: &Lab,
    vip: Ipv4Addr,
    macs: &std::collections::BTreeMap<String, String>,
    holder: &str,
) -> anyhow::Result<String> {
    let mut seen = Vec::new();
    wait_until(Duration::from_secs(10), || {
        seen = arping(lab, vip, 1);
        seen.len() == 1 && macs.get(&seen[0]).is_some_and(|n| n != holder)
    })
    .map_err(|_| anyhow::anyhow!("no other node took {vip} over: {seen:?}"))?;
    Ok(macs[&seen[0]].clone())
}

/// The `Masquerading:` line of `node`'s `cilia-dbg status`.
fn masquerading(lab: &Lab, node: &str) -> String {
    lab.dbg(node, &["status"])
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Masquerading:"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn toggle_step(lab: &Lab) -> anyhow::Result<()> {
    step(10, "helm upgrade switches the datapath live");
    let nodes = ["control-plane", "worker", "worker2"];
    let pids: Vec<Option<u32>> = nodes.iter().map(|n| lab.agent_pid(n)).collect();
    println!("     {}", masquerading(lab, "worker"));
    for (value, want) in [("false", "IPTables"), ("true", "BPF")] {
        println!(
            "     $ helm upgrade cilia charts/cilia -n kube-system --reuse-values --set bpf.masquerade={value}"
        );
        let run = lab.helm_upgrade_set(&[("bpf.masquerade", value)])?;
        let t = Instant::now();
        wait_until(Duration::from_secs(10), || {
            nodes.iter().all(|n| masquerading(lab, n).contains(want))
        })
        .map_err(|_| anyhow::anyhow!("masquerading did not switch to {want}"))?;
        println!(
            "     {}   (every node, {} ms after helm returned)",
            masquerading(lab, "worker"),
            t.elapsed().as_millis()
        );
        let _ = run;
    }
    let same = nodes.iter().zip(&pids).all(|(n, p)| lab.agent_pid(n) == *p);
    println!(
        "   The agents switched in place ({}): Cilium restarts its agents for this.",
        if same {
            "same processes"
        } else {
            "an agent was restarted"
        }
    );
    println!(
        "   Established connections keep their translation: the old mode drains what it holds."
    );
    Ok(())
}

/// Cilium's starwars L3/L4 rule as a clusterwide policy.
const RULE1: &str = r#"apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: rule1
spec:
  description: L3-L4 policy to restrict deathstar access to empire ships only
  endpointSelector:
    matchLabels: {org: empire, class: deathstar}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
"#;

fn policy_step(lab: &Lab) -> anyhow::Result<()> {
    step(
        11,
        "A network policy lets the empire in and keeps the alliance out",
    );
    let target = lab.pod("deathstar-1").clone();
    let dst = SocketAddr::V4(SocketAddrV4::new(target.ip, 80));
    let reach = |pod: &str| tcp_echo(&lab.pod(pod).ns_path(), dst, b"landing request").is_ok();
    println!("   Cilium's starwars rule, unchanged, as a CiliumClusterwideNetworkPolicy:");
    for l in RULE1.lines().skip(5) {
        println!("       {l}");
    }
    println!("     $ kubectl apply -f rule1.yaml");
    indent(&lab.kubectl_with_input(&["apply", "-f", "-"], RULE1)?);
    let t = Instant::now();
    wait_until(Duration::from_secs(30), || {
        lab.dbg(&target.node, &["bpf", "policy", "list"])
            .is_ok_and(|o| o.contains("rule1"))
    })
    .map_err(|_| anyhow::anyhow!("rule1 never reached {}'s tables", target.node))?;
    println!(
        "   In the deathstar's tables {} ms after kubectl returned: the operator compiles it into the",
        t.elapsed().as_millis()
    );
    println!(
        "   intents of the nodes whose pods it selects, and that node's agent writes the tables."
    );
    wait_until(Duration::from_secs(30), || !reach("xwing"))
        .map_err(|_| anyhow::anyhow!("rule1 was never enforced"))?;
    println!(
        "     tiefighter (org=empire)   -> deathstar-1:80  {}",
        if reach("tiefighter") {
            "served"
        } else {
            "DROPPED"
        }
    );
    // The monitor runs on the deathstar's node while the xwing tries once more.
    let xwing = lab.pod("xwing").ns_path();
    let attempt = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        tcp_echo(&xwing, dst, b"attack run").is_ok()
    });
    let events = lab.dbg(&target.node, &["monitor", "--duration", "3s"])?;
    let got_in = attempt.join().unwrap_or(true);
    println!(
        "     xwing     (org=alliance) -> deathstar-1:80  {}",
        if got_in { "served" } else { "DROPPED" }
    );
    println!(
        "     $ cilia-dbg monitor    (on {}, while the xwing tried)",
        target.node
    );
    indent(&events);
    println!("     $ cilia-dbg bpf policy list    (on {})", target.node);
    indent(&lab.dbg(&target.node, &["bpf", "policy", "list"])?);
    lab.kubectl(&["delete", "ccnp", "rule1"])?;
    wait_until(Duration::from_secs(30), || reach("xwing"))
        .map_err(|_| anyhow::anyhow!("deleting rule1 did not restore traffic"))?;
    println!("     $ kubectl delete ccnp rule1");
    println!(
        "   The xwing gets through again: without a policy selecting it, the deathstar allows all."
    );
    Ok(())
}

fn demo(keep: bool) -> anyhow::Result<()> {
    println!("Cilia demo: eBPF networking for Kubernetes, on a lab built from network namespaces.");

    step(1, "The lab comes up");
    let mut lab = Lab::up_kube_unconfigured(default_nodes()).context("bringing the lab up")?;
    println!(
        "   A LAN (bridge 172.18.0.0/16) joins three nodes and an outside client. Each node runs"
    );
    println!(
        "   its own cilia-agent. Run id {}: every name below carries it.",
        lab.run
    );
    for n in &lab.nodes {
        println!(
            "     node {:<14} eth0 {:<12} pods from {}",
            n.spec.name, n.spec.ip, n.spec.pod_cidr
        );
    }
    println!(
        "     client              eth0 {}",
        cilia_e2e::lab::CLIENT_IP
    );
    println!(
        "   The lab's Kubernetes API endpoint runs on control-plane:6443 (test infrastructure: an"
    );
    println!(
        "   in-memory API server); each node is registered there as its kubelet would (InternalIP,"
    );
    println!("   podCIDR, labels):");
    println!("     $ kubectl get nodes -o wide");
    let kc = lab.kubeconfig()?.to_string_lossy().into_owned();
    let kubectl = repo().join(".venv/bin/kubectl");
    indent(&as_user(
        &lab,
        &kubectl,
        &["--kubeconfig", &kc, "get", "nodes", "-o", "wide"],
    )?);
    println!(
        "   cilia-operator runs on control-plane ({}): it watches the API server, computes one intent",
        lab.operator_addr()
    );
    println!("   per node and streams it");
    println!(
        "   to each agent over gRPC with mutual TLS (every agent holds a certificate naming its node)."
    );

    step(
        2,
        "The user installs Cilia with the files they already have",
    );
    println!(
        "   From the client, the real Helm engine installs the chart with the seed values, unchanged,"
    );
    println!("   and kubectl applies the seed objects:");
    let helm = repo().join("tools/helm");
    let medium = seed("cilium-medium.yaml");
    println!(
        "     $ helm install cilia charts/cilia -n kube-system --create-namespace -f cilium-medium.yaml"
    );
    let out = as_user(
        &lab,
        &helm,
        &[
            "install",
            "cilia",
            "charts/cilia",
            "-n",
            "kube-system",
            "--create-namespace",
            "-f",
            &medium,
            "--kubeconfig",
            &kc,
        ],
    )?;
    for l in out
        .lines()
        .filter(|l| l.starts_with("STATUS") || l.contains("deprecated") || l.contains("WARNING"))
        .take(4)
    {
        println!("       {}", l.trim());
    }
    let files: Vec<String> = [
        "lb-pool.yaml",
        "l2-policy.yaml",
        "ccnp-control-plane.yaml",
        "deathstar-svc.yaml",
        "http-sw-app.yaml",
    ]
    .iter()
    .map(|f| seed(f))
    .collect();
    let mut args = vec!["--kubeconfig", &kc, "apply"];
    for f in &files {
        args.extend_from_slice(&["-f", f]);
    }
    println!(
        "     $ kubectl apply -f lb-pool.yaml -f l2-policy.yaml -f ccnp-control-plane.yaml -f deathstar-svc.yaml -f http-sw-app.yaml"
    );
    indent(&as_user(&lab, &kubectl, &args)?);
    let masq = as_user(
        &lab,
        &kubectl,
        &[
            "--kubeconfig",
            &kc,
            "get",
            "configmap",
            "cilium-config",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.data.enable-bpf-masquerade}",
        ],
    )?;
    println!(
        "   cilium-config now says enable-bpf-masquerade={masq}; the operator picked it up (routing,"
    );
    println!(
        "   datapath settings) and LB-IPAM gave the seed LoadBalancer Service an address from the seed pool:"
    );
    let mut external = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while external.is_empty() && std::time::Instant::now() < deadline {
        external = as_user(
            &lab,
            &kubectl,
            &[
                "--kubeconfig",
                &kc,
                "get",
                "svc",
                "deathstar-lb",
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ],
        )?;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    if external.is_empty() {
        anyhow::bail!(
            "deathstar-lb got no address; operator log:\n{}",
            lab.operator_log()
        );
    }
    println!("     $ kubectl get svc deathstar-lb");
    indent(&as_user(
        &lab,
        &kubectl,
        &["--kubeconfig", &kc, "get", "svc", "deathstar-lb"],
    )?);
    println!("     $ kubectl get ippools");
    indent(&as_user(
        &lab,
        &kubectl,
        &["--kubeconfig", &kc, "get", "ippools"],
    )?);

    step(3, "Pods are created by the cilia-cni plugin");
    println!(
        "   Like a container runtime, the lab calls `cilia-cni ADD` for each pod: it creates a veth"
    );
    println!(
        "   pair, takes an address from the node's pod CIDR and points the pod's default route at"
    );
    println!("   the node (the seed app's pods):");
    for (node, pod) in [
        ("worker", "deathstar-1"),
        ("worker2", "deathstar-2"),
        ("worker", "tiefighter"),
        ("worker2", "xwing"),
    ] {
        let p = lab.add_pod(node, pod)?;
        println!("     pod {:<12} on {:<8} {}", p.name, p.node, p.ip);
    }
    println!(
        "   As the kubelet would, the lab reports each pod to the API server (node, address, the seed's"
    );
    println!(
        "   labels), and lists the deathstar pods in deathstar-lb's EndpointSlice, as its controller would."
    );
    for (pod, labels) in [
        ("deathstar-1", [("org", "empire"), ("class", "deathstar")]),
        ("deathstar-2", [("org", "empire"), ("class", "deathstar")]),
        ("tiefighter", [("org", "empire"), ("class", "tiefighter")]),
        ("xwing", [("org", "alliance"), ("class", "xwing")]),
    ] {
        lab.register_pod(&lab.pod(pod).clone(), "default", &labels)?;
    }
    let slice = cilia_e2e::lab::endpoint_slice(
        "deathstar-lb",
        [lab.pod("deathstar-1"), lab.pod("deathstar-2")],
        80,
    );
    lab.kubectl_with_input(&["apply", "-f", "-"], &slice)?;

    step(4, "Pods talk across nodes over native routing");
    let servers: Vec<EchoServer> = ["deathstar-1", "deathstar-2"]
        .iter()
        .map(|p| {
            let pod = lab.pod(p);
            EchoServer::start(
                &pod.ns_path(),
                SocketAddr::V4(SocketAddrV4::new(pod.ip, 80)),
            )
        })
        .collect::<anyhow::Result<_>>()?;
    for (from, to) in [("tiefighter", "deathstar-2"), ("xwing", "deathstar-1")] {
        let (a, b) = (lab.pod(from), lab.pod(to));
        let msg = format!("hello from {from}");
        let echo = tcp_echo(
            &a.ns_path(),
            SocketAddr::V4(SocketAddrV4::new(b.ip, 80)),
            msg.as_bytes(),
        )?;
        println!(
            "     {from} ({}, {}) -> {to} ({}, {}): {:?} echoed back; the server saw {}",
            a.node,
            a.ip,
            b.node,
            b.ip,
            String::from_utf8_lossy(&echo.payload),
            echo.seen_as.ip()
        );
    }
    println!("   No tunnel and no NAT: the server sees the client pod's own address.");

    step(5, "The routes that make it work");
    println!(
        "   Each agent installs one route per other node's pod CIDR, via that node (autoDirectNodeRoutes):"
    );
    for n in &lab.nodes {
        println!("     on {}:", n.spec.name);
        for (dst, via) in lab.cilia_routes(&n.spec.name)? {
            println!("       {dst} via {via}");
        }
    }

    step(6, "What the agent says about itself (cilia-dbg)");
    indent(&lab.dbg("worker", &["status"])?);
    println!(
        "   Every packet in and out of a pod passes an eBPF program on its veth, which counts it:"
    );
    indent(&lab.dbg("worker", &["bpf", "endpoint", "list"])?);

    step(7, "Restarts do not disturb traffic");
    lab.stop_agent("worker", libc::SIGKILL)?;
    let (a, b) = (
        lab.pod("tiefighter").clone(),
        lab.pod("deathstar-2").clone(),
    );
    tcp_echo(
        &a.ns_path(),
        SocketAddr::V4(SocketAddrV4::new(b.ip, 80)),
        b"still here",
    )?;
    println!(
        "   Killed worker's agent: tiefighter still reaches deathstar-2 (routes and programs stay)."
    );
    lab.start_agent("worker")?;
    println!("   Restarted it: it takes over the pinned maps and links and rewrites nothing.");
    lab.stop_operator(libc::SIGKILL)?;
    tcp_echo(
        &a.ns_path(),
        SocketAddr::V4(SocketAddrV4::new(b.ip, 80)),
        b"operator away",
    )?;
    println!("   Killed the operator: agents keep serving what they hold (fail static).");
    lab.start_operator()?;
    println!("   Restarted it: agents resume with their intent digest and receive nothing new.");

    let vip: Ipv4Addr = external.parse().context("the VIP")?;
    let macs: std::collections::BTreeMap<String, String> = lab
        .nodes
        .iter()
        .map(|n| {
            let m =
                n.ns.exec(&["cat", "/sys/class/net/eth0/address"])
                    .unwrap_or_default();
            (m.trim().to_lowercase(), n.spec.name.clone())
        })
        .collect();
    let holder = announce_step(&lab, vip, &macs, &kubectl, &kc)?;
    failover_step(&mut lab, vip, &macs, &holder)?;
    toggle_step(&lab)?;
    policy_step(&lab)?;
    drop(servers);

    if keep {
        println!(
            "\nThe API server keeps running: kubectl --kubeconfig {kc} get ippools (from the client namespace)"
        );
        let run = lab.run.clone();
        let worker_state = lab.node("worker").state_dir.clone();
        lab.keep();
        println!("\nThe lab stays up (run {run}). To look around:");
        println!("  ip netns list | grep cilia-{run}");
        println!("  ip netns exec cilia-{run}-worker ip route");
        println!("  ip netns exec cilia-{run}-client arping -c2 {vip}    # the VIP's announcer");
        println!(
            "  ip netns exec cilia-{run}-worker target/debug/cilia-dbg --state-dir {} bpf l2 list",
            worker_state.display()
        );
        println!(
            "  target/debug/cilia-dbg --state-dir {} status",
            worker_state.display()
        );
        println!("When done: make lab-clean");
        std::mem::forget(lab);
    } else {
        drop(lab);
        println!("\nThe lab is torn down: namespaces, processes and pinned objects are gone.");
    }
    Ok(())
}
