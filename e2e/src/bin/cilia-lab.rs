//! cilia-lab: brings up the Cilia lab and walks a newcomer through it (`make demo`), or cleans up
//! after killed runs (`make lab-clean`).

use std::net::{SocketAddr, SocketAddrV4};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;
use cilia_e2e::lab::{Lab, clean_stale, default_nodes, spawn_in_netns};
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
        println!(
            "  ip netns exec cilia-{run}-pod-tiefighter ping -c1 {}",
            lab.pod("deathstar-2").ip
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
