//! cilia-lab: brings up the Cilia lab and walks a newcomer through it (`make demo`), or cleans up
//! after killed runs (`make lab-clean`).

use std::net::{SocketAddr, SocketAddrV4};

use anyhow::Context;
use cilia_e2e::lab::{Lab, clean_stale, default_nodes};
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
    let mut lab = Lab::up(default_nodes()).context("bringing the lab up")?;
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

    step(2, "Pods are created by the cilia-cni plugin");
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

    step(3, "Pods talk across nodes over native routing");
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

    step(4, "The routes that make it work");
    println!(
        "   Each agent installs one route per other node's pod CIDR, via that node (autoDirectNodeRoutes):"
    );
    for n in &lab.nodes {
        println!("     on {}:", n.spec.name);
        for (dst, via) in lab.cilia_routes(&n.spec.name)? {
            println!("       {dst} via {via}");
        }
    }

    step(5, "What the agent says about itself (cilia-dbg)");
    indent(&lab.dbg("worker", &["status"])?);
    println!(
        "   Every packet in and out of a pod passes an eBPF program on its veth, which counts it:"
    );
    indent(&lab.dbg("worker", &["bpf", "endpoint", "list"])?);

    step(6, "An agent restart does not disturb traffic");
    lab.stop_agent("worker", libc::SIGKILL)?;
    let (a, b) = (lab.pod("tiefighter"), lab.pod("deathstar-2"));
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
    drop(servers);

    if keep {
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
