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
use cilia_agent::announcer::{L2Agent, L2Inputs, L2Listing};
use cilia_agent::api::futures_reply::Reply;
use cilia_agent::api::{self, Request, Response};
use cilia_agent::lb::{LbAgent, lb_pin_dir};
use cilia_agent::source::{FileSource, intent_hash};
use cilia_agent::status::{AgentStatus, EndpointStatsRow};
use cilia_agent::stream::{
    ClientTls, HeldIntent, IntentStream, StreamConfig, StreamL2, StreamStatus,
};
use cilia_model::NodeIntent;
use tokio::sync::{oneshot, watch};

/// The Cilia node agent.
///
/// Runs in the node's network namespace. It subscribes to this node's intent from the operator
/// (`--operator`, gRPC with mutual TLS), then keeps the kernel in line with it: a route to every
/// other node's pod CIDR (native routing), the `cilia_host` device holding the pods' gateway
/// address, and the endpoint eBPF programs on every pod device. Maps and program links are pinned
/// under the bpf root, so a restart takes them over without a gap; the last applied intent is kept
/// in `<state-dir>/intent.json`, so a restarted agent serves it at once, also while the operator is
/// away. `cilia-dbg` talks to the agent through `<state-dir>/agent.sock`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["operator", "cluster_file"])))]
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
    /// The operator's intent service, e.g. https://172.18.0.2:4250 (the chart's port is 4250).
    #[arg(
        long,
        env = "CILIA_OPERATOR",
        requires = "tls_dir",
        conflicts_with = "cluster_file"
    )]
    operator: Option<String>,
    /// Directory with ca.crt, tls.crt and tls.key (the mounted agent Secret). The certificate's
    /// subject CN must be node/<node-name>: the operator serves only that node's intent to it.
    #[arg(long, env = "CILIA_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// Name to verify the operator's certificate against (default: the host of --operator).
    #[arg(long)]
    tls_server_name: Option<String>,
    /// How often a heartbeat goes to the operator (while L2 announcements are on: every
    /// l2-announcements-retry-period, when shorter); an operator silent for 4 beats is redialled.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// Without an operator: cluster facts as JSON (nodes, routing config), from which the agent
    /// computes its own intent with the operator's pure function. Re-read whenever it changes.
    #[arg(long, env = "CILIA_CLUSTER_FILE")]
    cluster_file: Option<PathBuf>,
    /// How often the kernel state is re-checked against the intent even if nothing changed.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// MTU for pod interfaces (0 = kernel default).
    #[arg(long, default_value_t = 0)]
    mtu: u32,
}

/// How often the agent re-lists the node's links to release programs of vanished pod devices.
const ENDPOINT_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Where the ARP responder pins its maps (the load balancer reads them too).
fn l2_pin_dir(bpf_root: &std::path::Path) -> PathBuf {
    bpf_root.join("l2")
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
            intent_source: match (&args.operator, &args.cluster_file) {
                (Some(op), _) => format!("operator:{}", host_port(op)),
                (None, Some(f)) => format!("file:{}", f.display()),
                (None, None) => unreachable!("clap requires a source"),
            },
            attach_mode: "TCX".into(),
            ..Default::default()
        },
        lb: LbAgent::new(
            lb_pin_dir(&args.bpf_root),
            cilia_datapath::lb_bpf::LbMapSizes::default(),
        )
        .sharing_l2(l2_pin_dir(&args.bpf_root)),
        masq: cilia_agent::masq::MasqAgent::new(
            cilia_agent::masq::masq_pin_dir(&args.bpf_root),
            cilia_datapath::masq_bpf::MasqMapSizes::default(),
        ),
        policy: cilia_agent::enforcer::PolicyAgent::new(cilia_agent::enforcer::policy_pin_dir(
            &args.bpf_root,
        )),
    };

    // L2 announcements: the ARP responder, and a link monitor whose up interfaces go to the
    // operator and decide where the responder answers.
    let l2_pin = l2_pin_dir(&args.bpf_root);
    let mut l2 = L2Agent::load(&l2_pin).context("loading the ARP responder")?;
    let (links_tx, links_rx) = watch::channel(
        cilia_datapath::l2::link_states()
            .await
            .context("listing links")?,
    );
    tokio::spawn(async move {
        if let Err(e) = cilia_datapath::l2::watch_links(links_tx, Duration::from_secs(2)).await {
            error!(error = %e, "link monitor stopped; up interfaces are no longer tracked");
        }
    });
    let (heard_tx, heard_rx) = watch::channel(None::<Instant>);

    let shared = Arc::new(Mutex::new(agent.status.clone()));
    let (sync_tx, mut sync_rx) =
        tokio::sync::mpsc::channel::<(String, oneshot::Sender<Response>)>(64);
    let handler: api::Handler = {
        let shared = shared.clone();
        let pin_dir = args.bpf_root.clone();
        let (policy_log, policy_rows) = (agent.policy.log.clone(), agent.policy.rows.clone());
        let l2_pin_api = l2_pin.clone();
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
                Request::PolicyList => Response::PolicyList(policy_rows.lock().unwrap().clone()),
                Request::MonitorEvents { after } => {
                    let (next, events) = policy_log.lock().unwrap().since(after);
                    Response::MonitorEvents { next, events }
                }
                Request::ServiceList => {
                    Response::ServiceList(shared.lock().unwrap().services.clone())
                }
                Request::L2List => {
                    let st = shared.lock().unwrap().l2.clone();
                    match L2Listing::read(&l2_pin_api, &st) {
                        Ok(l) => Response::L2List(l),
                        Err(e) => Response::Error(e.to_string()),
                    }
                }
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

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut source = match (&args.operator, &args.cluster_file) {
        (Some(op), _) => {
            let tls_dir = args.tls_dir.as_ref().expect("clap requires --tls-dir");
            let tls = ClientTls::read(tls_dir, &args.node_name, args.tls_server_name.clone())?;
            // Fail static across restarts: serve what was applied before, operator or not.
            let held = HeldIntent::load(&args.state_dir);
            if let Some(h) = &held {
                info!(version = h.version, digest = %h.digest().short(), "holding the intent of the previous run");
            }
            let (held_tx, mut held_rx) = watch::channel(held.map(Arc::new));
            held_rx.mark_changed();
            let (applied_tx, applied_rx) = watch::channel(0u64);
            let (status_tx, status_rx) = watch::channel(StreamStatus {
                operator: host_port(op),
                ..Default::default()
            });
            let stream = IntentStream {
                config: StreamConfig {
                    operator: op.clone(),
                    tls,
                    node: args.node_name.clone(),
                    agent_version: env!("CARGO_PKG_VERSION").to_string(),
                    heartbeat_interval: args.heartbeat_interval,
                    backoff_min: Duration::from_millis(250),
                    backoff_max: Duration::from_secs(10),
                },
                held: held_tx,
                applied: applied_rx,
                status: status_tx,
                l2: StreamL2 {
                    links: Some(links_rx.clone()),
                    heard: Some(heard_tx),
                },
            };
            tokio::spawn(stream.run(shutdown_rx));
            Source::Operator {
                held: held_rx,
                applied: applied_tx,
                status: status_rx,
            }
        }
        (None, Some(f)) => Source::File(FileSource::new(f.clone(), args.node_name.clone())),
        (None, None) => unreachable!("clap requires a source"),
    };
    let mut l2_in = L2Inputs::new(
        links_rx,
        matches!(source, Source::Operator { .. }).then_some(heard_rx),
    );
    // The intent to make true, with its stream version (none for the file source).
    let mut intent: Option<(Option<u64>, NodeIntent)> = None;
    // A new intent: apply it at once (`fresh`), and once applied record it (status, disk, ack).
    let (mut fresh, mut unrecorded) = (false, false);
    let mut last_resync = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    // New pods are attached on the CNI plugin's request; this scan only catches removed devices and
    // anything attached while the agent was down, so it need not run on every tick.
    let mut last_scan: Option<Instant> = None;
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
            h = held_changed(&mut source) => {
                if let Some(h) = h {
                    intent = Some((Some(h.version), h.intent.clone()));
                    (fresh, unrecorded) = (true, true);
                }
            }
            _ = l2_in.changed() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        if let Source::File(file) = &mut source {
            match file.poll() {
                Some(Ok(new)) => {
                    info!(hash = %intent_hash(&new), routes = new.routes.len(), "new intent");
                    intent = Some((None, new));
                    (fresh, unrecorded) = (true, true);
                }
                Some(Err(e)) => {
                    warn!(error = %e, "ignoring bad intent input; keeping the last applied intent");
                    agent.status.last_error = Some(e);
                }
                None => {}
            }
        }
        // A failed apply is retried at the resync interval, not on every tick.
        let apply_now = std::mem::take(&mut fresh) || last_resync.elapsed() >= args.resync_interval;
        if apply_now && let Some((version, i)) = &intent {
            last_resync = Instant::now();
            match agent.apply(i).await {
                Ok(()) => {
                    agent.status.last_error = None;
                    if std::mem::take(&mut unrecorded) {
                        agent.status.intent_hash = Some(intent_hash(i));
                        if let (Source::Operator { applied, .. }, Some(v)) = (&source, version) {
                            // Remember what is applied (for a restart), then ack it.
                            if let Err(e) = HeldIntent::new(*v, i.clone()).store(&args.state_dir) {
                                warn!(error = %e, "could not keep the applied intent on disk");
                            }
                            applied.send_replace(*v);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "applying intent failed; retrying");
                    agent.status.last_error = Some(e.to_string());
                }
            }
        }
        if let Some((_, i)) = &intent {
            agent.status.datapath_writes += sync_l2(&mut l2, &mut l2_in, i, &source, apply_now);
            agent.status.l2 = l2.status.clone();
        }
        if let Source::Operator { status, .. } = &source {
            agent.status.intent_stream = Some(status.borrow().clone());
        }
        if last_scan.is_none_or(|t| t.elapsed() >= ENDPOINT_SCAN_INTERVAL) {
            last_scan = Some(Instant::now());
            if let Err(e) = agent.sync_endpoints().await {
                warn!(error = %e, "endpoint sync failed");
            }
        }
        *shared.lock().unwrap() = agent.status.clone();
    }
    let _ = shutdown_tx.send(true);
    info!("agent stopping; routes, maps and programs stay in place (fail static)");
    let _ = std::fs::remove_file(args.state_dir.join(api::SOCKET_FILE));
    Ok(())
}

/// Where the agent's intents come from.
enum Source {
    /// The operator's stream: the client task publishes the held intent; the loop reports back
    /// which version it applied (the task acks it).
    Operator {
        held: watch::Receiver<Option<Arc<HeldIntent>>>,
        applied: watch::Sender<u64>,
        status: watch::Receiver<StreamStatus>,
    },
    File(FileSource),
}

/// L2 announcements after each pass: entries when the intent or the links changed (or a resync is
/// due), the lease on every word from the operator. Failures are logged and retried next pass.
fn sync_l2(
    l2: &mut L2Agent,
    inputs: &mut L2Inputs,
    intent: &NodeIntent,
    source: &Source,
    resync: bool,
) -> u64 {
    let entries = inputs.take_links_changed() || resync;
    // A newer intent waits (the loop takes it next): no lease renewal on what may be stale.
    let pending = match source {
        Source::Operator { held, .. } => held.has_changed().unwrap_or(false),
        Source::File(_) => false,
    };
    match l2.sync(intent, &inputs.links(), inputs.heard(), entries, pending) {
        Ok(writes) => writes as u64,
        Err(e) => {
            warn!(error = %e, "L2 announcements: applying failed; retrying");
            0
        }
    }
}

/// The next intent from the stream; never resolves for the file source.
async fn held_changed(source: &mut Source) -> Option<Arc<HeldIntent>> {
    match source {
        Source::Operator { held, .. } => {
            if held.changed().await.is_err() {
                return std::future::pending().await;
            }
            held.borrow_and_update().clone()
        }
        Source::File(_) => std::future::pending().await,
    }
}

/// `host:port` of an `https://host:port` address, for status lines.
fn host_port(url: &str) -> String {
    let s = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    s.trim_end_matches('/').to_string()
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

    // Exactly one source: the operator (with its TLS directory) or a cluster file.
    #[test]
    fn one_intent_source_is_required() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let base = ["cilia-agent", "--node-name", "worker"];
        let parse = |extra: &[&str]| Args::try_parse_from(base.iter().chain(extra.iter()));
        assert!(parse(&[]).is_err());
        assert!(
            parse(&["--operator", "https://172.18.0.2:4250"]).is_err(),
            "needs --tls-dir"
        );
        assert!(parse(&["--operator", "https://x:1", "--tls-dir", "/t"]).is_ok());
        assert!(parse(&["--cluster-file", "/c.json"]).is_ok());
        assert!(
            parse(&[
                "--operator",
                "https://x:1",
                "--tls-dir",
                "/t",
                "--cluster-file",
                "/c"
            ])
            .is_err()
        );
        assert_eq!(host_port("https://172.18.0.2:4250/"), "172.18.0.2:4250");
    }
}
