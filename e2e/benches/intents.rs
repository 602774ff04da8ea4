//! Intent stream benchmark: one operator process (re-executed from this benchmark in release mode:
//! the operator library's index, feeder, intent service and metrics endpoint, wired as
//! `cilia_operator::serve::run` wires them) and 1,000 simulated agents on loopback
//! (the agent's real stream client, `cilia_agent::stream::IntentStream`, in-process, each with its
//! own mutual-TLS connection and a stand-in apply loop that applies by acking).
//!
//! Scale: a 1,000-node cluster with native routing (999 routes per node) and 10,000 ClusterIP
//! Services, each with one EndpointSlice of two ready endpoints on two nodes: every node's intent
//! holds 10,000 Services and 999 routes. One change = one endpoint of one Service moves to another
//! address (a different Service each time), which changes that one Service on every node: every
//! agent is affected and receives a one-entry delta.
//!
//! The operator process is fed as the Kubernetes watchers feed it: a change event updates its
//! `ClusterState` and the whole state goes to `IntentIndex::apply` through the feeder every source
//! uses (`cluster_file::feed_index`). The cluster-file source (every change a new 4 MB file, read and
//! parsed whole) is measured too, with one agent, and printed as context.
//!
//! Measures (each against a baseline from the same run):
//! - propagation: from the change event to the last affected agent's ack, p50/p99, with 1
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
use cilia_model::service::{
    EndpointInfo, EndpointPortInfo, EndpointSliceInfo, Protocol, ServiceInfo, ServicePortInfo,
    ServiceType,
};
use cilia_model::{ClusterState, NodeInfo, RoutingConfig, RoutingMode};
use cilia_operator::certs::{self, Bundle, CertRequest};
use cilia_operator::intents::index::{Sent, next_update};
use cilia_operator::serve::ServeOptions;
use cilia_operator::{IntentIndex, StreamConfig as ServerStreamConfig};
use prost::Message;
use tokio::sync::{mpsc, watch};

const NODES: usize = 1000;
const SERVICES: usize = 10_000;
const CHANGES_1_AGENT: usize = 100;
const CHANGES_1000_AGENTS: usize = 40;
/// Changes through the cluster-file source (context for the measures, 1 agent).
const CHANGES_VIA_FILE: usize = 30;
/// The operator's cluster-file poll: a stat this often, a read only on change. Part of every
/// propagation measured here (0–2 ms, 1 ms on average).
const POLL: Duration = Duration::from_millis(2);
/// Set in the re-executed child: run the operator with the files in this directory.
const ROLE_ENV: &str = "CILIA_BENCH_INTENTS_OPERATOR";

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

/// How the operator process learns of cluster changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// `cilia_operator::serve::run` with the cluster-file source: every change is a new file,
    /// read and parsed whole.
    ClusterFile,
    /// As the Kubernetes watchers feed it: a change event (here: a line on stdin naming change
    /// `k`) updates the operator's `ClusterState`, and the whole state is published into the
    /// index's feeder (`cluster_file::feed_index`), which calls `IntentIndex::apply`. No file,
    /// no parse.
    Events,
}

const FEED_ENV: &str = "CILIA_BENCH_INTENTS_FEED";

fn operator_process(dir: &Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn")
        .init();
    let ports: Vec<u16> = std::fs::read_to_string(dir.join("ports"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let metrics_listen = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    let tls_dir = certs::operator_dir(&dir.join("tls"));
    // Lines on stdin: change numbers (events feed); EOF ends the process (also when the benchmark
    // dies).
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<usize>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Ok(k) = line.trim().parse() {
                let _ = line_tx.send(k);
            }
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if std::env::var(FEED_ENV).as_deref() == Ok("file") {
        let opts = ServeOptions {
            source: cilia_operator::serve::Source::ClusterFile {
                path: dir.join("cluster.json"),
                poll: POLL,
            },
            listen,
            tls_dir,
            metrics_listen,
            stream: ServerStreamConfig::default(),
        };
        rt.block_on(cilia_operator::serve::run(opts, async move {
            while lines.recv().await.is_some() {}
        }))?;
        return Ok(());
    }
    rt.block_on(async move {
        let tls = cilia_operator::tls::TlsFiles::read(&tls_dir)?;
        let first = cilia_operator::cluster_file::read(&dir.join("cluster.json"))?;
        let (drain_tx, drain) = watch::channel(false);
        let (state_tx, state_rx) = watch::channel(Arc::new(first));
        let index = IntentIndex::shared();
        index.lock().unwrap().apply(&state_rx.borrow());
        let agents = Arc::new(cilia_operator::intents::agents::Agents::default());
        let metrics_listener = tokio::net::TcpListener::bind(metrics_listen).await?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tokio::spawn(cilia_operator::cluster_file::feed_index(
            state_rx,
            index.clone(),
            drain.clone(),
        ));
        tokio::spawn(cilia_operator::metrics::serve(
            metrics_listener,
            index.clone(),
            agents.clone(),
            drain.clone(),
        ));
        let server = cilia_operator::IntentServer::new(
            index.clone(),
            agents,
            ServerStreamConfig::default(),
            drain.clone(),
        );
        let mut drained = drain.clone();
        let serving = tokio::spawn(server.serve(listener, tls.server_config(), async move {
            let _ = drained.changed().await;
        }));
        while let Some(k) = lines.recv().await {
            // What a watcher does with one EndpointSlice event: update its state and publish it
            // whole into the index's feeder (`cluster_file::feed_index`, the same one every source
            // uses), which calls `IntentIndex::apply`.
            state_tx.send_modify(|s| change(Arc::make_mut(s), k));
        }
        let _ = drain_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
        anyhow::Ok(())
    })
}

struct Operator {
    child: Child,
    metrics: SocketAddr,
    addr: SocketAddr,
}

impl Operator {
    fn start(work: &Path, feed: Feed) -> anyhow::Result<Self> {
        let free = || -> anyhow::Result<u16> {
            Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        };
        let (grpc, metrics) = (free()?, free()?);
        std::fs::write(work.join("ports"), format!("{grpc} {metrics}"))?;
        let child = Command::new(std::env::current_exe()?)
            .env(ROLE_ENV, work)
            .env(
                FEED_ENV,
                match feed {
                    Feed::ClusterFile => "file",
                    Feed::Events => "events",
                },
            )
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

    /// Tells an events-fed operator about change `k`; returns when the line is written.
    fn change(&mut self, k: usize) -> anyhow::Result<Instant> {
        let stdin = self.child.stdin.as_mut().context("operator stdin")?;
        let t0 = Instant::now();
        writeln!(stdin, "{k}")?;
        stdin.flush()?;
        Ok(t0)
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

fn service_name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// Pod address `j` of Service `i` (j = 0, 1; 2 is where a moved endpoint goes).
fn pod_ip(i: usize, j: usize) -> Ipv4Addr {
    let n = (i * 3 + j) as u32;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n)
}

fn cluster() -> ClusterState {
    let services = (0..SERVICES).map(|i| ServiceInfo {
        namespace: format!("ns-{}", i % 50),
        name: service_name(i),
        service_type: ServiceType::ClusterIP,
        cluster_ips: vec![Ipv4Addr::from(
            u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1,
        )],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![ServicePortInfo {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            target_port: None,
        }],
        external_traffic_local: false,
        internal_traffic_local: false,
        session_affinity_timeout: None,
        load_balancer_class: None,
        forwarding_mode: None,
        algorithm: None,
        labels: Default::default(),
    });
    let slices = (0..SERVICES).map(|i| EndpointSliceInfo {
        namespace: format!("ns-{}", i % 50),
        name: format!("{}-abcde", service_name(i)),
        service: service_name(i),
        endpoints: (0..2)
            .map(|j| EndpointInfo {
                addresses: vec![pod_ip(i, j)],
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some(node_name((i + j * 7) % NODES)),
            })
            .collect(),
        ports: vec![EndpointPortInfo {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
        }],
    });
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
        services: services.collect(),
        endpoint_slices: slices.collect(),
        ..Default::default()
    }
}

/// The Service change `k` touches: spread over the Services, one at a time.
fn changed_service(k: usize) -> usize {
    (k * 7919) % SERVICES
}

/// Applies change number `k` to `c`: the first endpoint of one Service moves to another address,
/// or back if it had moved.
fn change(c: &mut ClusterState, k: usize) {
    let i = changed_service(k);
    let a = &mut c.endpoint_slices[i].endpoints[0].addresses[0];
    *a = if *a == pod_ip(i, 0) {
        pod_ip(i, 2)
    } else {
        pod_ip(i, 0)
    };
}

/// The cluster state as compact JSON: fields at their serde defaults left out.
fn compact_json(c: &ClusterState) -> anyhow::Result<Vec<u8>> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.retain(|k, v| {
                    strip(v);
                    let default_true = matches!(k.as_str(), "ready" | "serving");
                    !(v.is_null()
                        || v.as_array().is_some_and(Vec::is_empty)
                        || v.as_object().is_some_and(|o| o.is_empty())
                        || v.as_str() == Some("")
                        || (!default_true && v.as_bool() == Some(false))
                        || (default_true && v.as_bool() == Some(true)))
                });
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(c)?;
    strip(&mut v);
    Ok(serde_json::to_vec(&v)?)
}

/// Writes the cluster file atomically; returns the instant it became visible.
fn publish(work: &Path, c: &ClusterState) -> anyhow::Result<Instant> {
    let tmp = work.join("cluster.json.tmp");
    std::fs::write(&tmp, compact_json(c)?)?;
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
            l2: Default::default(),
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

/// The operator's pure work for each change, in-process: bring every node's intent up to the new
/// state, then for `agents` nodes the delta, encoded — what the operator must do before a byte
/// goes out (without reading the cluster file).
fn pure_change_ms(base: &ClusterState, agents: usize, changes: usize) -> Vec<f64> {
    let mut index = IntentIndex::new();
    index.apply(base);
    let mut c = base.clone();
    let names: Vec<String> = (0..agents).map(node_name).collect();
    let mut rx: Vec<_> = names.iter().map(|n| index.subscribe(n)).collect();
    let mut sent: Vec<Option<Sent>> = rx
        .iter_mut()
        .map(|r| next_update(None, &r.borrow_and_update()).map(|(s, _)| s))
        .collect();
    (1..=changes)
        .map(|k| {
            change(&mut c, k);
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
        "intent stream bench: {NODES}-node cluster ({} routes per node), {SERVICES} Services, 1 and {NODES} agents over mTLS on loopback",
        NODES - 1
    );
    let base = cluster();
    publish(work, &base)?;
    let file = std::fs::read(work.join("cluster.json"))?;
    // What the operator reads must be what we meant: leaving defaults out loses nothing.
    anyhow::ensure!(serde_json::from_slice::<ClusterState>(&file)? == base);
    let parse_ms: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(serde_json::from_slice::<ClusterState>(&file).unwrap());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    println!(
        "  cluster file: {:.1} MB, parsed in {:.1} ms (median of 5; paid on every change here)",
        file.len() as f64 / 1e6,
        percentile(&parse_ms, 50.0)
    );
    let mut current = base.clone();
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut k = 0;

    // Context, not a measure: the same change through the cluster-file source, where every change
    // is a new file the operator reads and parses whole.
    let lat_file = {
        let _op = Operator::start(work, Feed::ClusterFile)?;
        let mut a = Agents::new();
        let lat = rt.block_on(async {
            a.spawn(&bundle, _op.addr, 0);
            a.wait_all_above(&[0], Duration::from_secs(30)).await?;
            let mut lat = Vec::new();
            for _ in 0..CHANGES_VIA_FILE {
                k += 1;
                let floor = a.versions.clone();
                change(&mut current, k);
                let t0 = publish(work, &current)?;
                let last = a.wait_all_above(&floor, Duration::from_secs(30)).await?;
                lat.push(last.duration_since(t0).as_secs_f64() * 1e3);
            }
            a.stop();
            anyhow::Ok(lat)
        })?;
        println!(
            "  via the cluster file, 1 agent: p50 {:.2} ms, p99 {:.2} ms over {} changes",
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat.len()
        );
        lat
    };

    // The measures: an operator fed change events, as the Kubernetes watchers feed it. It starts
    // from the cluster file as it is now.
    let mut op = Operator::start(work, Feed::Events)?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = op.rss_mb()?;

    // One agent.
    let mut one = Agents::new();
    let lat_1 = rt.block_on(async {
        one.spawn(&bundle, op.addr, 0);
        one.wait_all_above(&[0], Duration::from_secs(30)).await?;
        let mut lat = Vec::new();
        for _ in 0..CHANGES_1_AGENT {
            k += 1;
            let floor = one.versions.clone();
            let t0 = op.change(k)?;
            let last = one.wait_all_above(&floor, Duration::from_secs(30)).await?;
            lat.push(last.duration_since(t0).as_secs_f64() * 1e3);
        }
        one.stop();
        anyhow::Ok(lat)
    })?;
    println!(
        "  1 agent: p50 {:.2} ms, p99 {:.2} ms over {} changes",
        percentile(&lat_1, 50.0),
        percentile(&lat_1, 99.0),
        lat_1.len()
    );

    // A thousand agents.
    let bytes_before_sync = op.metric("cilia_operator_intent_bytes_sent_total")?;
    let mut all = Agents::new();
    let t = Instant::now();
    let lat_all = rt.block_on(async {
        // In batches of 100, each synced before the next connects: every initial snapshot holds
        // 10,000 Services, and 1,000 of them at once would starve heartbeats on 2 cores.
        for i in 0..NODES {
            all.spawn(&bundle, op.addr, i);
            if i % 100 == 99 {
                let n = all.versions.len();
                all.wait_all_above(&vec![0; n], Duration::from_secs(300))
                    .await?;
            }
        }
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
            let t0 = op.change(k)?;
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
        "  propagation: from the change event written to the operator's stdin to the last agent's ack; the operator updates its ClusterState, publishes it whole and IntentIndex::apply diffs it; with {NODES} agents it includes every agent's TLS and delta work on the same 2 cores"
    );
    println!(
        "  via the cluster file instead ({} ms poll + read + parse of the whole file per change), 1 agent: p50 {:.2} ms, p99 {:.2} ms",
        POLL.as_millis(),
        percentile(&lat_file, 50.0),
        percentile(&lat_file, 99.0)
    );

    let json = serde_json::json!({
        "measures": measures.iter().map(|m| serde_json::json!({
            "name": m.name,
            "value": m.value,
            "unit": m.unit,
            "baseline": m.baseline,
            "ratio": m.value / m.baseline,
        })).collect::<Vec<_>>(),
        "context": {
            "propagation_p50_ms_1_agent_via_cluster_file": percentile(&lat_file, 50.0),
            "propagation_p99_ms_1_agent_via_cluster_file": percentile(&lat_file, 99.0),
            "cluster_file_parse_ms": percentile(&parse_ms, 50.0),
        }
    });
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench-results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("intents.json"), serde_json::to_vec_pretty(&json)?)?;
    println!("\n  wrote bench-results/intents.json");
    Ok(())
}
