//! cilia-agent: the node agent. It turns this node's intent into kernel state — routes to the other
//! nodes' pods, the pods' gateway device, eBPF programs on pod devices — and reports on a local socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cilia_datapath::bpf::{EndpointDatapath, ensure_bpffs, read_ep_stats};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use cilia_agent::agent::Agent;
use cilia_agent::api::futures_reply::Reply;
use cilia_agent::api::{self, Request, Response};
use cilia_agent::source::{FileSource, intent_hash};
use cilia_agent::status::{AgentStatus, EndpointStatsRow};
use tokio::sync::oneshot;

/// The Cilia node agent.
///
/// Runs in the node's network namespace. It reads this node's intent, then keeps the kernel in
/// line with it: a route to every other node's pod CIDR (native routing), the `cilia_host` device
/// holding the pods' gateway address, and the endpoint eBPF programs on every pod device. Maps and
/// program links are pinned under the bpf root, so a restart takes them over without a gap.
/// `cilia-dbg` talks to the agent through `<state-dir>/agent.sock`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Name of the Kubernetes Node this agent runs on.
    #[arg(long, env = "CILIA_NODE_NAME")]
    node_name: String,
    /// Directory for the agent's socket and the node file the CNI plugin reads.
    #[arg(long, env = "CILIA_STATE_DIR", default_value = "/run/cilia")]
    state_dir: PathBuf,
    /// bpffs directory for this node's pinned maps and links.
    #[arg(long, env = "CILIA_BPF_ROOT", default_value = cilia_datapath::bpf::DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
    /// Cluster facts as JSON (nodes, routing config); the interim source of intents until the
    /// operator's intent stream is in place. Re-read whenever it changes.
    #[arg(long, env = "CILIA_CLUSTER_FILE")]
    cluster_file: PathBuf,
    /// How often the kernel state is re-checked against the intent even if nothing changed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// MTU for pod interfaces (0 = kernel default).
    #[arg(long, default_value_t = 0)]
    mtu: u32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?}: unit must be ms, s or m")),
    }
}

/// Per-netns sysctls a router of pod traffic needs.
fn set_sysctls() -> anyhow::Result<()> {
    for (path, val) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
        ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
    ] {
        std::fs::write(path, val).with_context(|| format!("setting {path} = {val}"))?;
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;
    set_sysctls()?;
    ensure_bpffs().context("mounting bpffs at /sys/fs/bpf")?;
    let endpoints = EndpointDatapath::load(&args.bpf_root).context("loading endpoint programs")?;
    let nl = cilia_datapath::netlink::Netlink::connect()?;
    let mut agent = Agent {
        nl,
        endpoints,
        state_dir: args.state_dir.clone(),
        mtu: args.mtu,
        status: AgentStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node: args.node_name.clone(),
            intent_source: format!("file:{}", args.cluster_file.display()),
            attach_mode: "TCX".into(),
            ..Default::default()
        },
    };

    let shared = Arc::new(Mutex::new(agent.status.clone()));
    let (sync_tx, mut sync_rx) =
        tokio::sync::mpsc::channel::<(String, oneshot::Sender<Response>)>(64);
    let handler: api::Handler = {
        let shared = shared.clone();
        let pin_dir = args.bpf_root.clone();
        Arc::new(move |req| {
            Reply::Now(match req {
                Request::SyncEndpoint { interface } => {
                    let (tx, rx) = oneshot::channel();
                    return match sync_tx.try_send((interface, tx)) {
                        Ok(()) => Reply::Later(rx),
                        Err(e) => Reply::Now(Response::Error(format!("agent busy: {e}"))),
                    };
                }
                Request::Status => Response::Status(Box::new(shared.lock().unwrap().clone())),
                Request::EndpointStats => match read_ep_stats(&pin_dir) {
                    Ok(rows) => {
                        let st = shared.lock().unwrap();
                        Response::EndpointStats(
                            rows.into_iter()
                                .map(|(i, s)| {
                                    let n = st
                                        .endpoints
                                        .iter()
                                        .find(|e| e.ifindex == i)
                                        .map(|e| e.interface.clone());
                                    EndpointStatsRow::new(i, n, s)
                                })
                                .collect(),
                        )
                    }
                    Err(e) => Response::Error(e.to_string()),
                },
            })
        })
    };
    let state_dir = args.state_dir.clone();
    tokio::spawn(async move {
        if let Err(e) = api::serve(&state_dir, handler).await {
            error!(error = %e, "local API stopped");
        }
    });
    info!(node = %args.node_name, state_dir = %args.state_dir.display(), bpf_root = %args.bpf_root.display(), "agent started");

    let mut source = FileSource::new(args.cluster_file.clone(), args.node_name.clone());
    let mut intent = None;
    let mut last_resync = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some((iface, reply)) = sync_rx.recv() => {
                // A new pod device: attach its programs now, before the CNI plugin returns.
                let resp = match agent.sync_endpoints().await {
                    Ok(()) => match agent.status.endpoints.iter().find(|e| e.interface == iface) {
                        Some(e) => Response::EndpointReady { interface: iface, ifindex: e.ifindex },
                        None => Response::Error(format!("interface {iface:?} is not a pod device on this node")),
                    },
                    Err(e) => Response::Error(format!("endpoint sync failed: {e}")),
                };
                let _ = reply.send(resp);
                *shared.lock().unwrap() = agent.status.clone();
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let mut apply_now = last_resync.elapsed() >= args.resync_interval;
        match source.poll() {
            Some(Ok(new)) => {
                info!(hash = %intent_hash(&new), routes = new.routes.len(), "new intent");
                agent.status.intent_hash = Some(intent_hash(&new));
                intent = Some(new);
                apply_now = true;
            }
            Some(Err(e)) => {
                warn!(error = %e, "ignoring bad intent input; keeping the last applied intent");
                agent.status.last_error = Some(e);
            }
            None => {}
        }
        if apply_now && let Some(i) = &intent {
            last_resync = Instant::now();
            match agent.apply(i).await {
                Ok(()) => agent.status.last_error = None,
                Err(e) => {
                    warn!(error = %e, "applying intent failed; retrying");
                    agent.status.last_error = Some(e.to_string());
                }
            }
        }
        if let Err(e) = agent.sync_endpoints().await {
            warn!(error = %e, "endpoint sync failed");
        }
        *shared.lock().unwrap() = agent.status.clone();
    }
    info!("agent stopping; routes, maps and programs stay in place (fail static)");
    let _ = std::fs::remove_file(args.state_dir.join(api::SOCKET_FILE));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5h").unwrap_err().contains("5h"));
        assert!(parse_duration("x").unwrap_err().contains("\"x\""));
    }
}
