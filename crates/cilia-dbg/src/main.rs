//! cilia-dbg: inspect a node's agent and datapath, shaped like `cilium-dbg`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cilia_agent::api::{Request, Response, SOCKET_FILE};
use cilia_agent::status::{AgentStatus, EndpointStatsRow};
use clap::{Parser, Subcommand, ValueEnum};

/// Inspect the Cilia agent of this node: its status, the routes it programs and its eBPF maps.
///
/// Talks to the agent's local socket (`<state-dir>/agent.sock`); nothing here changes the node.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// The agent's state directory.
    #[arg(
        long,
        global = true,
        env = "CILIA_STATE_DIR",
        default_value = "/run/cilia"
    )]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show the agent's health and configuration.
    Status {
        /// Print only `OK` or the first error.
        #[arg(long)]
        brief: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Inspect eBPF maps.
    Bpf {
        #[command(subcommand)]
        map: BpfCmd,
    },
}

#[derive(Subcommand, Debug)]
enum BpfCmd {
    /// Per-endpoint traffic counters (map cilia_ep_stats).
    Endpoint {
        #[command(subcommand)]
        op: ListOp,
    },
}

#[derive(Subcommand, Debug)]
enum ListOp {
    /// List entries.
    List {
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

fn ask(state_dir: &Path, req: &Request) -> anyhow::Result<Response> {
    let path = state_dir.join(SOCKET_FILE);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "cannot reach the agent at {}: is cilia-agent running?",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp)?;
    let r: Response =
        serde_json::from_str(&resp).with_context(|| format!("bad answer from agent: {resp:?}"))?;
    if let Response::Error(e) = r {
        bail!("agent: {e}");
    }
    Ok(r)
}

/// `Key:<pad>value` lines with a common label width, as cilium-dbg prints them.
fn status_lines(s: &AgentStatus) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("KVStore", "Disabled".to_string()),
        (
            "Kubernetes",
            format!("Disabled   [intents from {}]", s.intent_source),
        ),
        (
            "Cilia",
            format!(
                "{}   {}",
                if s.last_error.is_none() {
                    "Ok"
                } else {
                    "Degraded"
                },
                s.version
            ),
        ),
        (
            "Node",
            format!(
                "{}   {}",
                s.node,
                s.node_ip.map(|i| i.to_string()).unwrap_or_default()
            ),
        ),
    ];
    if let Some(st) = &s.intent_stream {
        v.push(("Intent stream", st.summary()));
    }
    if let Some(c) = s.pod_cidr {
        v.push((
            "IPAM",
            format!(
                "IPv4: {} endpoints on {c}, router {}",
                s.endpoints.len(),
                s.router_ip.map(|r| r.to_string()).unwrap_or_default()
            ),
        ));
    }
    let net = match s.routing_mode {
        Some(cilia_model::RoutingMode::Tunnel) => "Tunnel [vxlan]",
        _ => "Native",
    };
    v.push(("Routing", format!("Network: {net}   Host: Legacy")));
    v.push((
        "Direct node routes",
        format!("{} installed", s.routes.len()),
    ));
    if let Some(c) = s.native_routing_cidr {
        v.push(("Native routing CIDR", c.to_string()));
    }
    v.push(("Attach Mode", s.attach_mode.clone()));
    v.push(("Device Mode", "veth".into()));
    v.push(("Datapath writes", s.datapath_writes.to_string()));
    if let Some(h) = &s.intent_hash {
        v.push(("Intent", h.clone()));
    }
    if let Some(e) = &s.last_error {
        v.push(("Last error", e.clone()));
    }
    v
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}   ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Status { brief, output } => {
            let Response::Status(s) = ask(&cli.state_dir, &Request::Status)? else {
                bail!("unexpected answer")
            };
            if brief {
                match &s.last_error {
                    None => println!("OK"),
                    Some(e) => println!("error in agent: {e}"),
                }
            } else if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let lines = status_lines(&s);
                let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
                for (k, v) in lines {
                    println!("{:<width$}{v}", format!("{k}:"));
                }
            }
        }
        Cmd::Bpf {
            map: BpfCmd::Endpoint {
                op: ListOp::List { output },
            },
        } => {
            let Response::EndpointStats(rows) = ask(&cli.state_dir, &Request::EndpointStats)?
            else {
                bail!("unexpected answer")
            };
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                eprintln!("No entries found.");
            } else {
                let table: Vec<Vec<String>> = rows.iter().map(stats_row).collect();
                print_table(
                    &[
                        "IFINDEX",
                        "INTERFACE",
                        "RX PACKETS",
                        "RX BYTES",
                        "TX PACKETS",
                        "TX BYTES",
                    ],
                    &table,
                );
            }
        }
    }
    Ok(())
}

fn stats_row(r: &EndpointStatsRow) -> Vec<String> {
    vec![
        r.ifindex.to_string(),
        r.interface.clone().unwrap_or_else(|| "-".into()),
        r.rx_packets.to_string(),
        r.rx_bytes.to_string(),
        r.tx_packets.to_string(),
        r.tx_bytes.to_string(),
    ]
}
