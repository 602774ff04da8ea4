//! LB-IPAM benchmark: the real `cilia-apiserver` and `cilia-operator` binaries (release builds,
//! built by this benchmark if missing) on loopback. 100 pools (`/24` each) and N LoadBalancer
//! Services are created first; then the operator starts and the clock runs until every Service
//! carries its address and a satisfied condition (seen through a watch, as a client would).
//!
//! Measures (each against a baseline from the same run):
//! - `lbipam_10k_services_s`: operator start → all 10,000 statuses written. Baseline: the time the
//!   API server took merely to accept the 10,000 Services (the floor for writing 10,000 objects).
//! - `lbipam_10k_vs_1k_ratio`: that time for 10,000 over that for 1,000 (linear = 10). Baseline:
//!   the same ratio for the API server accepting the Services.
//! - `operator_rss_mb_10k`: the operator's peak RSS (VmHWM) with 10,000 Services. Baseline: the
//!   same with 1,000.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cilia_e2e::bench::{Measure, Report};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;

const POOLS: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(600);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The release binaries; built when missing (the benchmark itself only builds libraries).
fn binaries() -> anyhow::Result<PathBuf> {
    let dir = repo().join("target/release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo())
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "cilia-operator",
            "-p",
            "cilia-apiserver",
            "--bins",
        ])
        .status()
        .context("building the release binaries")?;
    if !status.success() {
        bail!("building cilia-operator and cilia-apiserver failed ({status})");
    }
    Ok(dir)
}

struct ApiServer {
    child: Child,
    kubeconfig: PathBuf,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_api_server(bin: &Path, work: &Path) -> anyhow::Result<ApiServer> {
    let kubeconfig = work.join("kubeconfig");
    let mut child = Command::new(bin.join("cilia-apiserver"))
        .args(["--listen", "127.0.0.1:0", "--watch-history", "200000"])
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting cilia-apiserver")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    if !line.starts_with("listening on") {
        bail!("cilia-apiserver did not start: {line:?}");
    }
    Ok(ApiServer { child, kubeconfig })
}

async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Creates the pool CRD and `POOLS` pools (`100.64.<i>.0/24`).
async fn create_pools(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &cilia_api::crd::lb_ip_pool())
        .await?;
    let ar = cilia_operator::k8s::source::pool_resource();
    let pools: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    for i in 0..POOLS {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumLoadBalancerIPPool",
            "metadata": {"name": format!("pool-{i:03}")},
            "spec": {"blocks": [{"cidr": format!("100.64.{i}.0/24")}]},
        }))?;
        pools.create(&PostParams::default(), &obj).await?;
    }
    Ok(())
}

/// Creates `n` LoadBalancer Services in namespace `default`; returns how long it took.
async fn create_services(client: &Client, n: usize) -> anyhow::Result<Duration> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": format!("svc-{i:05}"), "namespace": "default"},
                    "spec": {"type": "LoadBalancer", "selector": {"app": format!("a{i}")},
                             // 10,000 would exhaust the 2,768 NodePorts.
                             "allocateLoadBalancerNodePorts": false,
                             "ports": [{"port": 80, "protocol": "TCP"}]},
                }))?;
                api.create(&PostParams::default(), &svc).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(started.elapsed())
}

fn satisfied(svc: &Service) -> bool {
    let status = svc.status.as_ref();
    let has_ip = status
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|i| i.iter().any(|i| i.ip.is_some()));
    let ok = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "cilium.io/IPAMRequestSatisfied" && c.status == "True")
        });
    has_ip && ok
}

fn vm_hwm_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

struct Run {
    accept: Duration,
    statuses: Duration,
    hwm_mb: f64,
    written_ips: usize,
}

async fn run(bin: &Path, n: usize) -> anyhow::Result<Run> {
    let work = std::env::temp_dir().join(format!("cilia-bench-lbipam-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let api = start_api_server(bin, &work)?;
    let client = client(&api.kubeconfig).await?;
    create_pools(&client).await?;
    let accept = create_services(&client, n).await?;

    // Watch Services from before the operator starts, so no status is missed.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut events = watcher(services, watcher::Config::default()).boxed();
    let mut done: HashSet<String> = HashSet::new();
    let mut ips: HashSet<String> = HashSet::new();
    // Drain the initial list.
    loop {
        match tokio::time::timeout(TIMEOUT, events.try_next()).await?? {
            Some(watcher::Event::InitDone) => break,
            Some(_) => {}
            None => bail!("watch ended"),
        }
    }

    let free = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tls = work.join("tls");
    let out = Command::new(bin.join("cilia-operator"))
        .args(["certs", "--nodes", "bench"])
        .arg("--out")
        .arg(&tls)
        .output()?;
    if !out.status.success() {
        bail!(
            "cilia-operator certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let started = Instant::now();
    let mut operator = Command::new(bin.join("cilia-operator"))
        .arg("serve")
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["--listen", &format!("127.0.0.1:{free}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
        .arg("--tls-dir")
        .arg(tls.join("operator"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting cilia-operator")?;
    let pid = operator.id();
    let result = async {
        while done.len() < n {
            let ev = tokio::time::timeout(TIMEOUT, events.try_next())
                .await
                .with_context(|| format!("only {} of {n} statuses after {TIMEOUT:?}", done.len()))??
                .context("watch ended")?;
            if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = ev
                && satisfied(&s)
            {
                let name = s.metadata.name.clone().unwrap_or_default();
                for i in s.status.iter().flat_map(|st| st.load_balancer.iter()) {
                    for ing in i.ingress.iter().flatten() {
                        if let Some(ip) = &ing.ip {
                            ips.insert(ip.clone());
                        }
                    }
                }
                done.insert(name);
            }
        }
        anyhow::Ok(())
    }
    .await;
    let statuses = started.elapsed();
    let hwm_mb = vm_hwm_mb(pid);
    let _ = operator.kill();
    let _ = operator.wait();
    drop(api);
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(Run {
        accept,
        statuses,
        hwm_mb,
        written_ips: ips.len(),
    })
}

fn main() -> anyhow::Result<()> {
    let bin = binaries()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let small = rt.block_on(run(&bin, 1_000))?;
    let large = rt.block_on(run(&bin, 10_000))?;
    for (n, r) in [(1_000, &small), (10_000, &large)] {
        if r.written_ips != n {
            bail!("{n} Services got {} distinct addresses", r.written_ips);
        }
    }
    let mut report = Report::default();
    report.push(Measure::new(
        "lbipam_10k_services_s",
        large.statuses.as_secs_f64(),
        "s",
        large.accept.as_secs_f64(),
    ));
    report.push(Measure::new(
        "lbipam_10k_vs_1k_ratio",
        large.statuses.as_secs_f64() / small.statuses.as_secs_f64(),
        "x",
        large.accept.as_secs_f64() / small.accept.as_secs_f64(),
    ));
    report.push(Measure::new(
        "operator_rss_mb_10k",
        large.hwm_mb,
        "MiB",
        small.hwm_mb,
    ));
    report.note(format!(
        "1,000 Services: statuses in {:.2}s (API server accepted them in {:.2}s), peak RSS {:.1} MiB",
        small.statuses.as_secs_f64(),
        small.accept.as_secs_f64(),
        small.hwm_mb
    ));
    report.note(format!(
        "10,000 Services over {POOLS} pools: every Service got a distinct address ({})",
        large.written_ips
    ));
    report.finish("lb_ipam")?;
    Ok(())
}
