//! Load benchmark of the test API server (ignored by default; `make bench AREA=api_server`):
//! 10,000 Services and 10,000 EndpointSlices created while 10 watchers follow them, then listed.
//! The server runs as its own process (the real binary) so its peak RSS is its own.
//!
//! Baseline in the same run: creating 1,000 ConfigMaps with nobody watching; the report gives the
//! per-object create cost under 10 watchers relative to it.
//!
//! `cargo test --release -p cilia-apiserver --test bench -- --ignored --nocapture`

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Client, Config};
use serde_json::json;

const OBJECTS: usize = 10_000;
const BASELINE: usize = 1_000;
const WATCHERS: usize = 10;
const CONCURRENCY: usize = 32;

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn create_all<K, F>(api: &Api<K>, n: usize, make: F) -> Duration
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
    F: Fn(usize) -> K,
{
    let started = Instant::now();
    stream::iter((0..n).map(|i| {
        let obj = make(i);
        let api = api.clone();
        async move { api.create(&PostParams::default(), &obj).await.map(|_| ()) }
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await
    .expect("creates succeed");
    started.elapsed()
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}"), "labels": {"bench": "yes"}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": format!("app-{i}")}}}))
    .expect("service")
}

fn slice(i: usize) -> EndpointSlice {
    serde_json::from_value(json!({"metadata": {"name": format!("svc-{i}-abcde"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [format!("10.244.{}.{}", (i / 250) % 250, i % 250 + 1)], "conditions": {"ready": true}},
            {"addresses": [format!("10.245.{}.{}", (i / 250) % 250, i % 250 + 1)], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
    .expect("slice")
}

/// Counts ADDED events from `rv` until `want` arrived; returns when they did.
async fn watch_until<K>(api: Api<K>, rv: String, want: usize) -> Instant
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut seen = 0;
    let mut rv = rv;
    loop {
        let mut events = api
            .watch(&WatchParams::default().timeout(290), &rv)
            .await
            .expect("watch")
            .boxed();
        while let Some(ev) = events.next().await {
            match ev.expect("watch event") {
                WatchEvent::Added(o) => {
                    seen += 1;
                    rv = o.meta().resource_version.clone().unwrap_or_default();
                    if seen == want {
                        return Instant::now();
                    }
                }
                WatchEvent::Error(e) => panic!("watch error: {e:?}"),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored (make bench AREA=api_server)"]
async fn api_server_bench() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    let mut child = Command::new(env!("CARGO_BIN_EXE_cilia-apiserver"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--token",
            "bench",
            "--watch-history",
            "50000",
        ])
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn cilia-apiserver");
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let server = ServerProcess(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("listening line");
    assert!(line.starts_with("listening on "), "{line}");

    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
    let client = Client::try_from(
        Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config"),
    )
    .expect("client");
    let rss_idle = proc_status_kib(pid, "VmRSS:");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let baseline = create_all(&cms, BASELINE, |i| {
        serde_json::from_value(json!({"metadata": {"name": format!("cm-{i}")}, "data": {"k": "v"}}))
            .expect("cm")
    })
    .await;

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let svc_rv = svcs
        .list(&ListParams::default().limit(1))
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let slice_rv = slices
        .list(&ListParams::default().limit(1))
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        if w % 2 == 0 {
            watchers.push(tokio::spawn(watch_until(
                svcs.clone(),
                svc_rv.clone(),
                OBJECTS,
            )));
        } else {
            watchers.push(tokio::spawn(watch_until(
                slices.clone(),
                slice_rv.clone(),
                OBJECTS,
            )));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let (svc_time, slice_time) = tokio::join!(
        create_all(&svcs, OBJECTS, service),
        create_all(&slices, OBJECTS, slice)
    );
    let created = started.elapsed();
    let mut last_delivery = started;
    for w in watchers {
        last_delivery = last_delivery.max(w.await.expect("watcher"));
    }
    let delivered = last_delivery - started;

    let t = Instant::now();
    let all_svcs = svcs
        .list(&ListParams::default())
        .await
        .expect("list services");
    let all_slices = slices
        .list(&ListParams::default())
        .await
        .expect("list slices");
    let list_full = t.elapsed();
    assert_eq!(
        all_svcs.items.len(),
        OBJECTS + 1,
        "plus the kubernetes Service"
    );
    assert_eq!(
        all_slices.items.len(),
        OBJECTS + 1,
        "plus the kubernetes EndpointSlice"
    );
    let t = Instant::now();
    let mut paged = 0;
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().limit(500);
        if let Some(c) = &token {
            lp = lp.continue_token(c);
        }
        let page = svcs.list(&lp).await.expect("page");
        paged += page.items.len();
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
    }
    let list_paged = t.elapsed();
    assert_eq!(paged, OBJECTS + 1);
    let selected = svcs
        .list(
            &ListParams::default()
                .labels("bench=yes")
                .fields("metadata.name=svc-42"),
        )
        .await
        .expect("select");
    assert_eq!(selected.items.len(), 1);

    let peak = proc_status_kib(pid, "VmHWM:");
    let t = Instant::now();
    let base_list = cms
        .list(&ListParams::default())
        .await
        .expect("list configmaps");
    let base_list_per_obj = t.elapsed().as_secs_f64() / base_list.items.len().max(1) as f64;
    let per_obj_base = baseline.as_secs_f64() / BASELINE as f64;
    let per_obj_load = created.as_secs_f64() / (2 * OBJECTS) as f64;
    let list_per_obj = list_full.as_secs_f64() / (2 * OBJECTS) as f64;
    let paged_per_obj = list_paged.as_secs_f64() / OBJECTS as f64;
    // (name, value, unit, same-run baseline): the format of bench-results/<area>.json.
    let measures = [
        (
            "create per object, 10 watchers (vs 1k ConfigMaps, none)",
            per_obj_load * 1e6,
            "us",
            per_obj_base * 1e6,
        ),
        (
            "all watchers caught up (vs creating)",
            delivered.as_secs_f64(),
            "s",
            created.as_secs_f64(),
        ),
        (
            "full list per object (vs 1k ConfigMaps)",
            list_per_obj * 1e6,
            "us",
            base_list_per_obj * 1e6,
        ),
        (
            "paged list per object, limit 500 (vs full list)",
            paged_per_obj * 1e6,
            "us",
            list_per_obj * 1e6,
        ),
        (
            "server peak RSS (vs idle)",
            peak as f64 / 1024.0,
            "MiB",
            rss_idle as f64 / 1024.0,
        ),
    ];
    println!(
        "\napi_server: {OBJECTS} Services ({:.3}s) + {OBJECTS} EndpointSlices ({:.3}s) created side by side ({CONCURRENCY} concurrent per kind) in {:.3}s ({:.0} obj/s), {WATCHERS} watchers",
        svc_time.as_secs_f64(),
        slice_time.as_secs_f64(),
        created.as_secs_f64(),
        (2 * OBJECTS) as f64 / created.as_secs_f64()
    );
    println!(
        "{:<58}  {:>10}  {:<4}  {:>10}  {:>7}",
        "name", "value", "unit", "baseline", "ratio"
    );
    let mut json_measures = Vec::new();
    for (name, value, unit, base) in measures {
        let ratio = if base == 0.0 { 0.0 } else { value / base };
        println!("{name:<58}  {value:>10.3}  {unit:<4}  {base:>10.3}  {ratio:>7.3}");
        json_measures.push(
            json!({"name": name, "value": value, "unit": unit, "baseline": base, "ratio": ratio}),
        );
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("Cargo.lock").exists())
        .expect("workspace root")
        .join("bench-results");
    std::fs::create_dir_all(&root).expect("bench-results");
    let out = root.join("api_server.json");
    std::fs::write(
        &out,
        serde_json::to_vec_pretty(&json!({"measures": json_measures})).expect("json"),
    )
    .expect("write report");
    println!("wrote {}", out.display());
    drop(server);
}
