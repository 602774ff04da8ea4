//! Intent stream benchmark: one operator process (the same `cilia_operator::serve::run` as the
//! binary, re-executed from this benchmark in release mode) and 1,000 simulated agents on loopback
//! (the agent's real stream client, `cilia_agent::stream::IntentStream`, in-process, each with its
//! own mutual-TLS connection and a stand-in apply loop that applies by acking).
//!
//! Scale: Services do not exist yet, so the intent is made of what does: a 1,000-node cluster with
//! native routing gives every node 999 routes — ~1,000,000 route entries cluster-wide, the order
//! of 10,000 Services' worth of per-node entries. One change = node-0001's address moves, which
//! changes one entry in every node's intent (a route on 999 nodes, the facts of node-0001).
//!
//! Measures (each against a baseline from the same run):
//! - propagation: from the cluster-file write to the last affected agent's ack, p50/p99, with 1
//!   agent and with 1,000 agents connected. Baseline: the operator's pure work for the same change
//!   in-process (index recompute + the deltas for that many agents, encoded), same percentile.
//! - operator RSS with 1,000 agents; baseline: the same operator with the same cluster and no agent.
//! - bytes sent per change to all agents; baseline: full snapshots for the same agents.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cilia_agent::stream::{ClientTls, HeldIntent, IntentStream, StreamConfig, StreamStatus};
use cilia_model::{ClusterState, NodeInfo, RoutingConfig, RoutingMode};
use cilia_operator::certs::{self, Bundle, CertRequest};
use cilia_operator::intents::index::{Sent, next_update};
use cilia_operator::serve::ServeOptions;
use cilia_operator::{IntentIndex, StreamConfig as ServerStreamConfig};
use prost::Message;
use tokio::sync::{mpsc, watch};

const NODES: usize = 1000;
const CHANGES_1_AGENT: usize = 100;
const CHANGES_1000_AGENTS: usize = 40;
/// The operator's cluster-file poll: a stat this often, a read only on change. Part of every
/// propagation measured here (0–2 ms, 1 ms on average).
const POLL: Duration = Duration::from_millis(2);
/// Set in the re-executed child: run the operator with the files in this directory.
const ROLE_ENV: &str = "CILIA_BENCH_INTENTS_OPERATOR";
const MOVED_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 255, 1);

fn main() -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var(ROLE_ENV) {
        return operator_process(Path::new(&dir));
    }
    let work = std::env::temp_dir().join(format!("cilia-bench-intents-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = run(&work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

// ---- the operator process ----

fn operator_process(dir: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    let ports: Vec<u16> = std::fs::read_to_string(dir.join("ports"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let opts = ServeOptions {
        cluster_file: dir.join("cluster.json"),
        cluster_file_poll: POLL,
        listen: SocketAddr::from(([127, 0, 0, 1], ports[0])),
        tls_dir: certs::operator_dir(&dir.join("tls")),
        metrics_listen: SocketAddr::from(([127, 0, 0, 1], ports[1])),
        stream: ServerStreamConfig::default(),
    };
    // Ends when the benchmark closes our stdin (also when it dies).
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
        let _ = eof_tx.send(());
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(cilia_operator::serve::run(opts, async move {
            let _ = eof_rx.await;
        }))?;
    Ok(())
}

struct Operator {
    child: Child,
    metrics: SocketAddr,
    addr: SocketAddr,
}

impl Operator {
    fn start(work: &Path) -> anyhow::Result<Self> {
        let free = || -> anyhow::Result<u16> {
            Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        };
        let (grpc, metrics) = (free()?, free()?);
        std::fs::write(work.join("ports"), format!("{grpc} {metrics}"))?;
        let child = Command::new(std::env::current_exe()?)
            .env(ROLE_ENV, work)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let op = Operator {
            child,
            metrics: SocketAddr::from(([127, 0, 0, 1], metrics)),
            addr: SocketAddr::from(([127, 0, 0, 1], grpc)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while op.get("/healthz").is_err() {
            if Instant::now() > deadline {
                bail!("the operator did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(op)
    }

    fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {head}");
        }
        Ok(body.to_string())
    }

    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let body = self.get("/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .with_context(|| format!("no metric {name}"))
    }

    fn metrics(&self) -> anyhow::Result<Vec<(String, f64)>> {
        Ok(self
            .get("/metrics")?
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    fn rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")?;
        Ok(kb / 1024.0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- the cluster ----

fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

fn cluster() -> ClusterState {
    ClusterState {
        nodes: (0..NODES)
            .map(|i| NodeInfo {
                name: node_name(i),
                internal_ip: Ipv4Addr::new(172, 18, (i / 250) as u8, (i % 250 + 2) as u8),
                pod_cidr: Some(format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap()),
                labels: Default::default(),
            })
            .collect(),
        routing: RoutingConfig {
            mode: RoutingMode::Native,
            auto_direct_node_routes: true,
            native_routing_cidr: Some("10.0.0.0/8".parse().unwrap()),
        },
        ..Default::default()
    }
}

/// Change number `k`: node-0001's address moves away (odd k) or back (even k).
fn changed(base: &ClusterState, k: usize) -> ClusterState {
    let mut c = base.clone();
    if k % 2 == 1 {
        c.nodes[1].internal_ip = MOVED_IP;
    }
    c
}

/// Writes the cluster file atomically; returns the instant it became visible.
fn publish(work: &Path, c: &ClusterState) -> anyhow::Result<Instant> {
    let tmp = work.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(c)?)?;
    let t0 = Instant::now();
    std::fs::rename(&tmp, work.join("cluster.json"))?;
    Ok(t0)
}

// ---- the simulated agents ----

/// (agent, version applied, when)
type Applied = (usize, u64, Instant);

struct Agents {
    shutdown: Vec<watch::Sender<bool>>,
    statuses: Vec<watch::Receiver<StreamStatus>>,
    versions: Vec<u64>,
    events: mpsc::UnboundedReceiver<Applied>,
    events_tx: mpsc::UnboundedSender<Applied>,
}

impl Agents {
    fn new() -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        Agents {
            shutdown: Vec::new(),
            statuses: Vec::new(),
            versions: Vec::new(),
            events,
            events_tx,
        }
    }

    /// Starts the real stream client for node `i`, with an apply loop that applies at once.
    fn spawn(&mut self, b: &Bundle, addr: SocketAddr, i: usize) {
        let idx = self.versions.len();
        let pair = &b.nodes[i].1;
        let (held_tx, mut held_rx) = watch::channel::<Option<Arc<HeldIntent>>>(None);
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let (status_tx, status_rx) = watch::channel(StreamStatus::default());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let stream = IntentStream {
            config: StreamConfig {
                operator: format!("https://{addr}"),
                tls: ClientTls {
                    ca: b.ca_pem.clone().into(),
                    cert: pair.cert_pem.clone().into(),
                    key: pair.key_pem.clone().into(),
                    server_name: Some("localhost".into()),
                },
                node: node_name(i),
                agent_version: "bench".into(),
                heartbeat_interval: Duration::from_secs(5),
                backoff_min: Duration::from_millis(100),
                backoff_max: Duration::from_secs(2),
            },
            held: held_tx,
            applied: applied_rx,
            status: status_tx,
        };
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            while held_rx.changed().await.is_ok() {
                let v = held_rx.borrow_and_update().as_ref().map(|h| h.version);
                if let Some(v) = v {
                    let _ = events.send((idx, v, Instant::now()));
                    applied_tx.send_replace(v);
                }
            }
        });
        tokio::spawn(stream.run(shutdown_rx));
        self.shutdown.push(shutdown_tx);
        self.statuses.push(status_rx);
        self.versions.push(0);
    }

    /// Waits until every agent applied a version above `floor[idx]`; returns the last instant.
    async fn wait_all_above(
        &mut self,
        floor: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let mut pending = (0..floor.len())
            .filter(|&i| self.versions[i] <= floor[i])
            .count();
        let mut last = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        while pending > 0 {
            let Ok(Some((i, v, at))) = tokio::time::timeout_at(deadline, self.events.recv()).await
            else {
                bail!("{pending} agents did not apply within {timeout:?}");
            };
            let was_pending = self.versions[i] <= floor[i];
            self.versions[i] = self.versions[i].max(v);
            if was_pending && self.versions[i] > floor[i] {
                pending -= 1;
                last = at;
            }
        }
        Ok(last)
    }

    fn stop(&mut self) {
        for s in self.shutdown.drain(..) {
            let _ = s.send(true);
        }
    }
}

// ---- measuring ----

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// The operator's pure work for each change, in-process: recompute every node's intent, then for
/// `agents` nodes the delta, encoded — what the operator must do before a byte goes out.
fn pure_change_ms(base: &ClusterState, agents: usize, changes: usize) -> Vec<f64> {
    let mut index = IntentIndex::new();
    index.apply(base);
    let names: Vec<String> = (0..agents).map(node_name).collect();
    let mut rx: Vec<_> = names.iter().map(|n| index.subscribe(n)).collect();
    let mut sent: Vec<Option<Sent>> = rx
        .iter_mut()
        .map(|r| next_update(None, &r.borrow_and_update()).map(|(s, _)| s))
        .collect();
    (1..=changes)
        .map(|k| {
            let c = changed(base, k);
            let t = Instant::now();
            index.apply(&c);
            for (r, s) in rx.iter_mut().zip(sent.iter_mut()) {
                if let Some((next, u)) = next_update(s.as_ref(), &r.borrow_and_update()) {
                    std::hint::black_box(u.to_proto(&next).encode_to_vec());
                    *s = Some(next);
                }
            }
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

struct Measure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    baseline: f64,
    baseline_is: &'static str,
}

fn run(work: &Path) -> anyhow::Result<()> {
    println!(
        "intent stream bench: {NODES}-node cluster ({} routes per node), 1 and {NODES} agents over mTLS on loopback",
        NODES - 1
    );
    let base = cluster();
    publish(work, &base)?;
    let names: Vec<String> = (0..NODES).map(node_name).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = Instant::now();
    let bundle = certs::generate(&CertRequest::lab(&refs, &[]))?;
    certs::write(&bundle, &work.join("tls"))?;
    println!(
        "  certificates for {NODES} nodes: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let pure_1 = pure_change_ms(&base, 1, CHANGES_1_AGENT);
    let pure_all = pure_change_ms(&base, NODES, CHANGES_1000_AGENTS);

    let op = Operator::start(work)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = op.rss_mb()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // One agent.
    let mut one = Agents::new();
    let mut k = 0;
    let lat_1 = rt.block_on(async {
        one.spawn(&bundle, op.addr, 0);
        one.wait_all_above(&[0], Duration::from_secs(30)).await?;
        let mut lat = Vec::new();
        for _ in 0..CHANGES_1_AGENT {
            k += 1;
            let floor = one.versions.clone();
            let t0 = publish(work, &changed(&base, k))?;
            let last = one.wait_all_above(&floor, Duration::from_secs(30)).await?;
            lat.push(last.duration_since(t0).as_secs_f64() * 1e3);
        }
        one.stop();
        anyhow::Ok(lat)
    })?;

    // A thousand agents.
    let bytes_before_sync = op.metric("cilia_operator_intent_bytes_sent_total")?;
    let mut all = Agents::new();
    let t = Instant::now();
    let lat_all = rt.block_on(async {
        for i in 0..NODES {
            all.spawn(&bundle, op.addr, i);
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        all.wait_all_above(&vec![0; NODES], Duration::from_secs(120))
            .await?;
        anyhow::Ok(())
    });
    lat_all?;
    println!(
        "  {NODES} agents connected and synced: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Let the acks of the initial snapshots land before counting bytes.
    std::thread::sleep(Duration::from_millis(500));
    let bytes_synced = op.metric("cilia_operator_intent_bytes_sent_total")?;
    let snapshot_bytes = bytes_synced - bytes_before_sync;
    let lat_all = rt.block_on(async {
        let mut lat = Vec::new();
        for _ in 0..CHANGES_1000_AGENTS {
            k += 1;
            let floor = all.versions.clone();
            let t0 = publish(work, &changed(&base, k))?;
            let last = all.wait_all_above(&floor, Duration::from_secs(60)).await?;
            lat.push(last.duration_since(t0).as_secs_f64() * 1e3);
        }
        anyhow::Ok(lat)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let bytes_per_change = (op.metric("cilia_operator_intent_bytes_sent_total")? - bytes_synced)
        / CHANGES_1000_AGENTS as f64;
    let rss_all = op.rss_mb()?;

    // Sanity: the operator agrees every node applied its current version, and nobody resynced.
    let m = op.metrics()?;
    let value = |n: &str| m.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
    for name in &names {
        let iv = value(&format!(
            "cilia_operator_node_intent_version{{node=\"{name}\"}}"
        ));
        let av = value(&format!(
            "cilia_operator_node_applied_version{{node=\"{name}\"}}"
        ));
        if iv != av {
            bail!("{name}: operator at {iv:?}, applied {av:?}");
        }
    }
    let resyncs: u64 = all
        .statuses
        .iter()
        .map(|s| s.borrow().resyncs_requested)
        .sum();
    let connected = value("cilia_operator_connected_agents").unwrap_or(0.0);
    all.stop();
    drop(rt);
    drop(op);

    let measures = [
        Measure {
            name: "propagation_p50_ms_1_agent",
            value: percentile(&lat_1, 50.0),
            unit: "ms",
            baseline: percentile(&pure_1, 50.0),
            baseline_is: "operator's pure work for the change (recompute + 1 delta), in-process, p50",
        },
        Measure {
            name: "propagation_p99_ms_1_agent",
            value: percentile(&lat_1, 99.0),
            unit: "ms",
            baseline: percentile(&pure_1, 99.0),
            baseline_is: "the same pure work, p99",
        },
        Measure {
            name: "propagation_p99_ms_1000_agents",
            value: percentile(&lat_all, 99.0),
            unit: "ms",
            baseline: percentile(&pure_all, 99.0),
            baseline_is: "operator's pure work (recompute + 1,000 deltas, encoded), in-process, p99",
        },
        Measure {
            name: "operator_rss_mb_1000_agents",
            value: rss_all,
            unit: "MB",
            baseline: rss_idle,
            baseline_is: "the same operator and cluster with no agent connected",
        },
        Measure {
            name: "bytes_per_change",
            value: bytes_per_change,
            unit: "bytes",
            baseline: snapshot_bytes,
            baseline_is: "full snapshots for the same 1,000 agents (their initial sync)",
        },
    ];
    println!();
    println!(
        "  {:<32} {:>12} {:>6} {:>12} {:>9}   baseline",
        "measure", "value", "unit", "baseline", "ratio"
    );
    for m in &measures {
        println!(
            "  {:<32} {:>12.2} {:>6} {:>12.2} {:>9.4}   {}",
            m.name,
            m.value,
            m.unit,
            m.baseline,
            m.value / m.baseline,
            m.baseline_is
        );
    }
    println!(
        "\n  1 agent: {} changes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat_1.len(),
        percentile(&lat_1, 50.0),
        percentile(&lat_1, 99.0),
        percentile(&lat_1, 100.0)
    );
    println!(
        "  {NODES} agents: {} changes, p50 {:.1} ms, p99 {:.1} ms; {} connected at the end, {} resyncs",
        lat_all.len(),
        percentile(&lat_all, 50.0),
        percentile(&lat_all, 99.0),
        connected,
        resyncs
    );
    println!(
        "  propagation includes the cluster-file poll ({} ms) and, with {NODES} agents, every agent's TLS and delta work on the same 2 cores",
        POLL.as_millis()
    );

    let json = serde_json::json!({
        "measures": measures.iter().map(|m| serde_json::json!({
            "name": m.name,
            "value": m.value,
            "unit": m.unit,
            "baseline": m.baseline,
            "ratio": m.value / m.baseline,
        })).collect::<Vec<_>>()
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench-results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("intents.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("\n  wrote bench-results/intents.json");
    Ok(())
}
