//! cilia-dbg: inspect a node's agent and datapath, shaped like `cilium-dbg`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cilia_agent::api::{Request, Response, SOCKET_FILE};
use cilia_agent::lb::lb_pin_dir;
use cilia_agent::masq::masq_pin_dir;
use cilia_agent::status::{AgentStatus, EndpointStatsRow};
use cilia_datapath::lb::{format_lb_list, lb_list_rows};
use cilia_datapath::lb_bpf::read_lb_entries;
use cilia_datapath::lb_intent::format_service_list;
use cilia_datapath::lb_maps::ip_of;
use cilia_datapath::masq::{format_ipmasq_list, format_nat_entry, format_nat_list};
use cilia_datapath::masq_bpf::{monotonic_ns, read_ipmasq, read_nat};
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
    /// The agent's bpffs directory (`bpf lb list` reads the pinned maps below it; needs root).
    #[arg(
        long,
        global = true,
        env = "CILIA_BPF_ROOT",
        default_value = cilia_datapath::bpf::DEFAULT_BPF_ROOT
    )]
    bpf_root: PathBuf,
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
        /// Add the detail blocks (`KubeProxyReplacement Details`).
        #[arg(long)]
        verbose: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Services this node load-balances.
    Service {
        #[command(subcommand)]
        op: ListOp,
    },
    /// Inspect eBPF maps.
    Bpf {
        #[command(subcommand)]
        map: BpfCmd,
    },
    /// Stream policy drop and audit events as they happen (like `cilium-dbg monitor`).
    Monitor {
        /// Only events of this kind.
        #[arg(short = 't', long = "type", value_enum)]
        kind: Option<MonitorKind>,
        /// Stop after this long (`500ms`, `10s`, `2m`); default: until interrupted.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// One JSON object per event instead of text lines.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum MonitorKind {
    Drop,
    Audit,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 10s, 2m"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?}: unit must be ms, s or m")),
    }
}

#[derive(Subcommand, Debug)]
enum BpfCmd {
    /// Per-endpoint traffic counters (map cilia_ep_stats).
    Endpoint {
        #[command(subcommand)]
        op: ListOp,
    },
    /// Load-balancing maps (cilia_lb4_services, cilia_lb4_backends), read from the pins.
    Lb {
        #[command(subcommand)]
        op: ListOp,
    },
    /// ip-masq-agent non-masquerade prefixes (map cilia_ipmasq_v4), read from the pins.
    Ipmasq {
        #[command(subcommand)]
        op: ListOp,
    },
    /// Masqueraded flows (map cilia_snat_v4_external), read from the pins.
    Nat {
        #[command(subcommand)]
        op: ListOp,
    },
    /// L2 announcements: the VIPs this node answers ARP for (map cilia_l2_responder_v4), with
    /// interface, MAC and reply counters, and whether its lease runs.
    L2 {
        #[command(subcommand)]
        op: ListOp,
    },
    /// Endpoints' policy tables (maps cilia_policy4_exact, cilia_policy_v4) as the agent wrote them.
    Policy {
        #[command(subcommand)]
        op: PolicyOp,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyOp {
    /// List the entries of every enforced endpoint, or of one.
    List {
        /// Only this endpoint: `namespace/name`, `host`, or its interface (`lxc…`, `eth0`).
        endpoint: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
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

/// Cilium's `KubeProxyReplacement:` value: `True   [eth0   172.18.0.3 (Direct Routing)]` or `False`.
fn kpr_line(s: &AgentStatus) -> String {
    if !s.lb.enabled {
        return "False".into();
    }
    let devs: Vec<String> =
        s.lb.devices
            .iter()
            .map(|d| {
                let addrs: Vec<String> = d.addrs.iter().map(|a| a.to_string()).collect();
                let dr = if s.node_ip.is_some_and(|n| d.addrs.contains(&n)) {
                    " (Direct Routing)"
                } else {
                    ""
                };
                format!("{}   {}{dr}", d.name, addrs.join(" "))
            })
            .collect();
    format!("True   [{}]", devs.join(", "))
}

/// `cilium-dbg status --verbose`'s `KubeProxyReplacement Details:` block.
fn kpr_details(s: &AgentStatus) -> Vec<String> {
    let l = &s.lb;
    let xdp = |d: &cilia_agent::lb::LbDevice| match d.xdp.as_str() {
        "Native" => "Native",
        "Generic" => "Generic",
        _ => "Disabled",
    };
    let accel = match l.acceleration.as_str() {
        "best-effort" => "Best-Effort".to_string(),
        _ => l.devices.first().map(xdp).unwrap_or("Disabled").to_string(),
    };
    let backend = if l.algorithm == "Maglev" {
        format!("Maglev (Table Size: {})", l.maglev_table_size)
    } else {
        "Random".into()
    };
    let mut v = vec![
        "KubeProxyReplacement Details:".to_string(),
        format!(
            "  Status:                 {}",
            if l.enabled { "True" } else { "False" }
        ),
        "  Socket LB:              Disabled".to_string(),
        format!(
            "  Devices:                {}",
            l.devices
                .iter()
                .map(|d| format!(
                    "{} {}",
                    d.name,
                    d.addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!("  Mode:                   {}", l.mode),
        format!("  Backend Selection:      {backend}"),
        "  Session Affinity:       Enabled".to_string(),
        "  Graceful Termination:   Enabled".to_string(),
        format!("  XDP Acceleration:       {accel}"),
        "  Services:".to_string(),
    ];
    for svc in [
        "ClusterIP",
        "NodePort (Range: 30000-32767)",
        "LoadBalancer",
        "externalIPs",
    ] {
        let (name, range) = svc.split_once(' ').unwrap_or((svc, ""));
        let en = if l.enabled { "Enabled" } else { "Disabled" };
        v.push(format!(
            "  - {name}: {en}{}",
            if range.is_empty() || !l.enabled {
                String::new()
            } else {
                format!(" {range}")
            }
        ));
    }
    v
}

/// `Key:<pad>value` lines with a common label width, as cilium-dbg prints them.
fn status_lines(s: &AgentStatus) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("KVStore", "Disabled".to_string()),
        (
            "Kubernetes",
            format!("Disabled   [intents from {}]", s.intent_source),
        ),
        ("KubeProxyReplacement", kpr_line(s)),
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
    if !s.masquerading.is_empty() {
        v.push(("Masquerading", s.masquerading.clone()));
    }
    v.push(("L2 announcements", s.l2.summary()));
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
        Cmd::Status {
            brief,
            verbose,
            output,
        } => {
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
                if verbose && s.lb.enabled {
                    for l in kpr_details(&s) {
                        println!("{l}");
                    }
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
        Cmd::Service {
            op: ListOp::List { output },
        } => service_list(&cli.state_dir, output)?,
        Cmd::Bpf {
            map: BpfCmd::Lb {
                op: ListOp::List { output },
            },
        } => bpf_lb_list(&cli.bpf_root, output)?,
        Cmd::Bpf {
            map: BpfCmd::Ipmasq {
                op: ListOp::List { output },
            },
        } => bpf_ipmasq_list(&cli.bpf_root, output)?,
        Cmd::Bpf {
            map: BpfCmd::Nat {
                op: ListOp::List { output },
            },
        } => bpf_nat_list(&cli.bpf_root, output)?,
        Cmd::Bpf {
            map: BpfCmd::L2 {
                op: ListOp::List { output },
            },
        } => bpf_l2_list(&cli.state_dir, output)?,
        Cmd::Bpf {
            map:
                BpfCmd::Policy {
                    op: PolicyOp::List { endpoint, output },
                },
        } => bpf_policy_list(&cli.state_dir, endpoint.as_deref(), output)?,
        Cmd::Monitor {
            kind,
            duration,
            output,
        } => monitor(&cli.state_dir, kind, duration, output)?,
    }
    Ok(())
}

/// `cilia-dbg bpf l2 list`: live counters from the agent (it reads the pins).
fn bpf_l2_list(state_dir: &Path, output: Output) -> anyhow::Result<()> {
    let Response::L2List(l) = ask(state_dir, &Request::L2List)? else {
        bail!("unexpected answer")
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&l)?);
        return Ok(());
    }
    if !l.enabled && l.vips.is_empty() {
        eprintln!("L2 announcements are disabled (l2announcements.enabled).");
        return Ok(());
    }
    if l.vips.is_empty() {
        eprintln!("No entries found.");
        return Ok(());
    }
    let state = if l.answering {
        format!("answering (lease {} ms left)", l.lease_left_ms)
    } else {
        "silent (lease ran out: no word from the operator)".to_string()
    };
    let table: Vec<Vec<String>> = l
        .vips
        .iter()
        .map(|v| {
            vec![
                v.vip.to_string(),
                v.interface.clone(),
                v.mac.clone(),
                if v.service.is_empty() {
                    "-".into()
                } else {
                    v.service.clone()
                },
                v.replies.to_string(),
                v.lapsed.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "VIP",
            "INTERFACE",
            "MAC",
            "SERVICE",
            "REPLIES",
            "UNANSWERED (LEASE OUT)",
        ],
        &table,
    );
    println!("{state}");
    Ok(())
}

fn bpf_policy_list(state_dir: &Path, endpoint: Option<&str>, output: Output) -> anyhow::Result<()> {
    let Response::PolicyList(rows) = ask(state_dir, &Request::PolicyList)? else {
        bail!("unexpected answer")
    };
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|r| endpoint.is_none_or(|e| r.endpoint == e || r.interface.as_deref() == Some(e)))
        .collect();
    if let (Some(e), true) = (endpoint, rows.is_empty()) {
        bail!("no policy selects endpoint {e:?} on this node");
    }
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        eprintln!("No entries found.");
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.endpoint.clone(),
                r.interface.clone().unwrap_or_else(|| "-".into()),
                enforcement(r.ingress_enforced, r.egress_enforced, r.audit),
                r.direction.clone(),
                r.identity.to_string(),
                format!("{}/{}", r.port, r.proto),
                r.verdict.clone(),
                r.policy.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ENDPOINT",
            "INTERFACE",
            "ENFORCED",
            "DIRECTION",
            "IDENTITY",
            "PORT/PROTO",
            "VERDICT",
            "POLICY",
        ],
        &table,
    );
    Ok(())
}

/// `ingress+egress`, `ingress`, `egress` or `none`, with ` (audit)` in audit mode.
fn enforcement(ingress: bool, egress: bool, audit: bool) -> String {
    let dirs = match (ingress, egress) {
        (true, true) => "ingress+egress",
        (true, false) => "ingress",
        (false, true) => "egress",
        (false, false) => "none",
    };
    if audit {
        format!("{dirs} (audit)")
    } else {
        dirs.to_string()
    }
}

/// How often `monitor` asks the agent for new events.
const MONITOR_POLL: std::time::Duration = std::time::Duration::from_millis(100);

fn monitor(
    state_dir: &Path,
    kind: Option<MonitorKind>,
    duration: Option<std::time::Duration>,
    output: Output,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // Start where the agent's log stands now: only events from here on, as cilium-dbg does.
    let Response::MonitorEvents { mut next, .. } =
        ask(state_dir, &Request::MonitorEvents { after: None })?
    else {
        bail!("unexpected answer")
    };
    // Says when events are being caught; on stderr with JSON, so stdout stays one object a line.
    let listening = format!(
        "Listening for events on the agent at {}\nPress Ctrl-C to quit",
        state_dir.display()
    );
    match output {
        Output::Table => println!("{listening}"),
        Output::Json => eprintln!("{listening}"),
    }
    let mut stdout = std::io::stdout();
    let mut lost = false;
    loop {
        // An agent restarting is waited for, as cilium-dbg monitor reconnects: say so once.
        let (n, events) = match ask(state_dir, &Request::MonitorEvents { after: Some(next) }) {
            Ok(Response::MonitorEvents { .. }) if lost => {
                // A new agent process numbers its events from 0: everything it has is new.
                eprintln!("Reconnected to the agent");
                lost = false;
                next = 0;
                continue;
            }
            Ok(Response::MonitorEvents { next, events }) => (next, events),
            Ok(_) => bail!("unexpected answer"),
            Err(e) => {
                if !std::mem::replace(&mut lost, true) {
                    eprintln!("Lost the agent ({e:#}); reconnecting");
                }
                if duration.is_some_and(|d| started.elapsed() >= d) {
                    return Ok(());
                }
                std::thread::sleep(MONITOR_POLL);
                continue;
            }
        };
        if n < next {
            // The agent restarted and numbers from 0 again.
            next = 0;
            continue;
        }
        next = n;
        for e in events {
            let wanted = match kind {
                None => true,
                Some(MonitorKind::Drop) => e.verdict == "DROP",
                Some(MonitorKind::Audit) => e.verdict == "AUDIT",
            };
            if !wanted {
                continue;
            }
            match output {
                Output::Json => writeln!(stdout, "{}", serde_json::to_string(&e)?)?,
                Output::Table => writeln!(stdout, "{}", e.line())?,
            }
        }
        stdout.flush()?;
        if duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
        std::thread::sleep(MONITOR_POLL);
    }
}

fn service_list(state_dir: &Path, output: Output) -> anyhow::Result<()> {
    let Response::ServiceList(rows) = ask(state_dir, &Request::ServiceList)? else {
        bail!("unexpected answer")
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", format_service_list(&rows));
    }
    Ok(())
}

fn bpf_lb_list(bpf_root: &Path, output: Output) -> anyhow::Result<()> {
    let dir = lb_pin_dir(bpf_root);
    let e = read_lb_entries(&dir).with_context(|| {
        format!(
            "reading the load-balancing maps pinned in {} (root needed; is kube-proxy replacement on?)",
            dir.display()
        )
    })?;
    if output == Output::Json {
        // Cilium's shape: "vip:port/PROTO (slot)" → the backend cells of that key.
        let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (k, v) in lb_list_rows(&e) {
            m.entry(k).or_default().push(v);
        }
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else if e.services.is_empty() {
        eprintln!("No entries found.");
    } else {
        print!("{}", format_lb_list(&e));
    }
    Ok(())
}

fn masq_context(dir: &Path) -> String {
    format!(
        "reading the masquerading maps pinned in {} (root needed; is BPF masquerading on?)",
        dir.display()
    )
}

fn bpf_ipmasq_list(bpf_root: &Path, output: Output) -> anyhow::Result<()> {
    let dir = masq_pin_dir(bpf_root);
    let set = read_ipmasq(&dir).with_context(|| masq_context(&dir))?;
    if output == Output::Json {
        let v: Vec<serde_json::Value> = set
            .iter()
            .map(|n| serde_json::json!({ "ip-prefix": n.to_string() }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let (out, err) = format_ipmasq_list(&set);
        print!("{out}");
        eprint!("{err}");
    }
    Ok(())
}

fn bpf_nat_list(bpf_root: &Path, output: Output) -> anyhow::Result<()> {
    let dir = masq_pin_dir(bpf_root);
    let nat = read_nat(&dir).with_context(|| masq_context(&dir))?;
    let now = monotonic_ns();
    if output == Output::Json {
        // One object per entry: the tuple and its translation, as the table prints them.
        let v: Vec<serde_json::Value> = nat
            .iter()
            .map(|(k, e)| {
                let inbound = u32::from(k.dir) == cilia_datapath::maps::c::MASQ_DIR_IN;
                serde_json::json!({
                    "entry": format_nat_entry(k, e, now),
                    "proto": k.proto,
                    "direction": if inbound { "IN" } else { "OUT" },
                    "source": format!("{}:{}", ip_of(k.saddr), u16::from_be(k.sport)),
                    "destination": format!("{}:{}", ip_of(k.daddr), u16::from_be(k.dport)),
                    "xlate": format!("{}:{}", ip_of(e.to_addr), u16::from_be(e.to_port)),
                    "createdSecAgo": now.saturating_sub(e.created_ns) / 1_000_000_000,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let (out, err) = format_nat_list(&nat, now);
        print!("{out}");
        eprint!("{err}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use cilia_agent::lb::{LbDevice, LbStatus};

    fn status(enabled: bool) -> AgentStatus {
        AgentStatus {
            node_ip: Some("172.18.0.3".parse().unwrap()),
            lb: LbStatus {
                enabled,
                devices: vec![LbDevice {
                    name: "eth0".into(),
                    ifindex: 2,
                    addrs: vec!["172.18.0.3".parse().unwrap()],
                    xdp: "Native".into(),
                }],
                acceleration: "native".into(),
                mode: "DSR".into(),
                algorithm: "Maglev".into(),
                maglev_table_size: 16381,
                services: 3,
                draining_backends: 0,
            },
            ..Default::default()
        }
    }

    // `KubeProxyReplacement:` in Cilium's current shape, right after `Kubernetes:`.
    #[test]
    fn kube_proxy_replacement_line() {
        let s = status(true);
        assert_eq!(kpr_line(&s), "True   [eth0   172.18.0.3 (Direct Routing)]");
        let lines = status_lines(&s);
        assert_eq!(lines[1].0, "Kubernetes");
        assert_eq!(lines[2].0, "KubeProxyReplacement");
        assert_eq!(kpr_line(&status(false)), "False");
        let d = kpr_details(&s);
        assert_eq!(d[0], "KubeProxyReplacement Details:");
        assert!(d.iter().any(|l| l.ends_with("Mode:                   DSR")));
        assert!(d.iter().any(|l| l.contains("Maglev (Table Size: 16381)")));
        assert!(
            d.iter()
                .any(|l| l.ends_with("XDP Acceleration:       Native"))
        );
        assert!(d.contains(&"  - NodePort: Enabled (Range: 30000-32767)".to_string()));
    }

    #[test]
    fn commands_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for args in [
            &["cilia-dbg", "service", "list"][..],
            &["cilia-dbg", "service", "list", "-o", "json"],
            &["cilia-dbg", "bpf", "lb", "list"],
            &[
                "cilia-dbg",
                "bpf",
                "lb",
                "list",
                "-o",
                "json",
                "--bpf-root",
                "/x",
            ],
            &["cilia-dbg", "status", "--verbose"],
            &["cilia-dbg", "bpf", "ipmasq", "list"],
            &["cilia-dbg", "bpf", "ipmasq", "list", "-o", "json"],
            &["cilia-dbg", "bpf", "nat", "list"],
            &["cilia-dbg", "bpf", "nat", "list", "-o", "json"],
            &["cilia-dbg", "bpf", "policy", "list"],
            &[
                "cilia-dbg",
                "bpf",
                "policy",
                "list",
                "default/deathstar-1",
                "-o",
                "json",
            ],
            &["cilia-dbg", "monitor"],
            &[
                "cilia-dbg",
                "monitor",
                "-t",
                "drop",
                "--duration",
                "10s",
                "-o",
                "json",
            ],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        let e = Cli::try_parse_from(["cilia-dbg", "monitor", "--duration", "5h"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("5h"), "{e}");
        assert_eq!(enforcement(true, false, true), "ingress (audit)");
        assert_eq!(enforcement(false, false, false), "none");
    }
}
