//! The agent's local API, a Unix socket in its state directory that `cilia-dbg` talks to: one JSON
//! request per line, one JSON response per line.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::status::AgentStatus;

/// File name of the socket inside the state directory.
pub const SOCKET_FILE: &str = "agent.sock";

/// What a client may ask.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Status,
    EndpointStats,
    /// The frontends this node serves and their backends (`cilia-dbg service list`).
    ServiceList,
    /// The VIPs this node announces, with live reply counters (`cilia-dbg bpf l2 list`).
    L2List,
    /// Sent by the CNI plugin after it created a pod device: the agent puts the endpoint's datapath
    /// in place before answering, so no packet of the pod passes before its programs do.
    SyncEndpoint {
        interface: String,
    },
    /// Every endpoint's policy table (`cilia-dbg bpf policy list`).
    PolicyList,
    /// Drop and audit events numbered `after` and later; `None`: only the number the next event
    /// will get (`cilia-dbg monitor` starts there and polls).
    MonitorEvents {
        #[serde(default)]
        after: Option<u64>,
    },
}

/// The answer to a [`Request`], or an error naming what was wrong with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Response {
    Status(Box<AgentStatus>),
    EndpointStats(Vec<crate::status::EndpointStatsRow>),
    ServiceList(Vec<cilia_datapath::lb_intent::ServiceRow>),
    L2List(crate::announcer::L2Listing),
    EndpointReady {
        interface: String,
        ifindex: u32,
    },
    PolicyList(Vec<crate::enforcer::PolicyRow>),
    MonitorEvents {
        next: u64,
        events: Vec<crate::enforcer::MonitorEvent>,
    },
    Error(String),
}

/// Answers a request; requests that need the apply loop are forwarded to it and awaited.
pub type Handler = Arc<dyn Fn(Request) -> futures_reply::Reply + Send + Sync>;

/// A response now, or one the apply loop will send later.
pub mod futures_reply {
    use super::Response;

    pub enum Reply {
        Now(Response),
        Later(tokio::sync::oneshot::Receiver<Response>),
    }

    impl Reply {
        pub async fn get(self) -> Response {
            match self {
                Reply::Now(r) => r,
                Reply::Later(rx) => rx
                    .await
                    .unwrap_or_else(|_| Response::Error("the agent is shutting down".into())),
            }
        }
    }
}

/// Serves the socket until the task is dropped. A malformed request gets an error response; the
/// connection and the agent carry on.
pub async fn serve(dir: &Path, handler: Handler) -> std::io::Result<()> {
    let path = dir.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handler(req).get().await,
                    Err(e) => Response::Error(format!("bad request {line:?}: {e}")),
                };
                let mut out = serde_json::to_vec(&resp).expect("responses serialize");
                out.push(b'\n');
                if w.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_by_op() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"endpoint-stats"}"#).unwrap(),
            Request::EndpointStats
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"service-list"}"#).unwrap(),
            Request::ServiceList
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"l2-list"}"#).unwrap(),
            Request::L2List
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"sync-endpoint","interface":"lxc1"}"#)
                .unwrap(),
            Request::SyncEndpoint {
                interface: "lxc1".into()
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"policy-list"}"#).unwrap(),
            Request::PolicyList
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"monitor-events","after":7}"#).unwrap(),
            Request::MonitorEvents { after: Some(7) }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"monitor-events"}"#).unwrap(),
            Request::MonitorEvents { after: None }
        );
        let e = serde_json::from_str::<Request>(r#"{"op":"nope"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
