//! Prometheus metrics of the intent stream, rendered from the index and the agent records, and the
//! small HTTP endpoint serving them (`/metrics`, `/healthz`).

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::intents::agents::{Agents, EndReason};
use crate::intents::index::{IntentIndex, SharedIndex};

/// The Prometheus text exposition of the operator's state.
pub fn render(index: &IntentIndex, agents: &Agents) -> String {
    let mut out = String::new();
    let versions = index.versions();
    let records = agents.records();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let node = |n: &str| format!("{{node=\"{}\"}}", escape(n));
    family(
        "cilia_operator_node_intent_version",
        "gauge",
        "Version of the node's intent the operator holds; moves only when that node's intent changes.",
        versions
            .iter()
            .filter(|(_, _, has)| *has)
            .map(|(n, v, _)| (node(n), v.to_string()))
            .collect(),
    );
    family(
        "cilia_operator_node_applied_version",
        "gauge",
        "Last version the node's agent acked (or held when it resumed).",
        records
            .iter()
            .map(|(n, r)| (node(n), r.applied_version.to_string()))
            .collect(),
    );
    family(
        "cilia_operator_node_last_heartbeat_timestamp_seconds",
        "gauge",
        "When the node's agent was last heard from (heartbeat, ack or any message), Unix time.",
        records
            .iter()
            .filter_map(|(n, r)| {
                r.last_seen_unix
                    .map(|t| (node(n), format!("{:.3}", t.as_secs_f64())))
            })
            .collect(),
    );
    family(
        "cilia_operator_node_connected",
        "gauge",
        "Whether the node's agent holds an open intent stream.",
        records
            .iter()
            .map(|(n, r)| (node(n), u8::from(r.streams > 0).to_string()))
            .collect(),
    );
    family(
        "cilia_operator_node_snapshots_sent_total",
        "counter",
        "Full snapshots sent to the node's agent.",
        records
            .iter()
            .map(|(n, r)| (node(n), r.snapshots_sent.to_string()))
            .collect(),
    );
    family(
        "cilia_operator_node_deltas_sent_total",
        "counter",
        "Deltas sent to the node's agent.",
        records
            .iter()
            .map(|(n, r)| (node(n), r.deltas_sent.to_string()))
            .collect(),
    );
    family(
        "cilia_operator_node_resyncs_requested_total",
        "counter",
        "Resync requests from the node's agent (a gap or an update it could not use).",
        records
            .iter()
            .map(|(n, r)| (node(n), r.resyncs_requested.to_string()))
            .collect(),
    );
    family(
        "cilia_operator_connected_agents",
        "gauge",
        "Agents holding an open intent stream.",
        vec![(String::new(), agents.connected_count().to_string())],
    );
    family(
        "cilia_operator_intent_bytes_sent_total",
        "counter",
        "Encoded bytes of snapshots and deltas sent to agents (heartbeats not included).",
        vec![(
            String::new(),
            agents
                .intent_bytes_sent
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        )],
    );
    family(
        "cilia_operator_heartbeat_bytes_sent_total",
        "counter",
        "Encoded bytes of heartbeats sent to agents.",
        vec![(
            String::new(),
            agents
                .heartbeat_bytes_sent
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
        )],
    );
    family(
        "cilia_operator_streams_ended_total",
        "counter",
        "Intent streams refused or ended, by reason.",
        EndReason::ALL
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{}\"}}", r.label()),
                    agents.ended_count(*r).to_string(),
                )
            })
            .collect(),
    );
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics`, `/healthz` and `/readyz` over HTTP/1.1 until `drain` turns. The endpoint
/// is bound only once the first cluster state is in, so `/readyz` answering means "serving intents"
/// (every replica serves them; only the Lease holder writes statuses).
pub async fn serve(
    listener: TcpListener,
    index: SharedIndex,
    agents: Arc<Agents>,
    mut drain: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = drain.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (index, agents) = (index.clone(), agents.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = match req.uri().path() {
                    "/metrics" => {
                        let body = render(&index.lock().unwrap(), &agents);
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                    }
                    "/healthz" | "/readyz" => {
                        Response::builder().body(Full::new(Bytes::from_static(b"ok\n")))
                    }
                    _ => Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"not found\n"))),
                };
                async move { Ok::<_, Infallible>(resp.expect("static response parts are valid")) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                debug!(?peer, error = %e, "metrics connection ended");
            }
        });
    }
}
