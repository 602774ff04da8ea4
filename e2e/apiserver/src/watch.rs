//! Watch streams: replay (history or current state), live events through the bucket's broadcast
//! channel, selector transitions (an object leaving a selector is a DELETED), BOOKMARKs,
//! `sendInitialEvents`, timeouts, and `410 Expired` as an ERROR event when a watcher is too far
//! behind.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::error::ApiError;
use crate::registry::ResourceType;
use crate::server::{Body, Output, ResourceTypeAt, render_object};
use crate::store::{Event, EventType, Filter, Store, WatchStart};
use crate::table::IncludeObject;

/// What one watch request asked for.
pub struct WatchParams {
    pub rt: Arc<ResourceType>,
    pub version: String,
    pub filter: Filter,
    pub start: WatchStart,
    pub bookmarks: bool,
    pub send_initial: bool,
    pub timeout: Duration,
    pub output: Output,
    pub include: IncludeObject,
    pub bookmark_interval: Duration,
}

/// A response body fed by a channel; ends when the sender is dropped.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// Starts a watch and returns the streaming response.
pub fn serve(
    store: Arc<Store>,
    params: WatchParams,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let content_type = match params.output {
        Output::Table(v) => format!("application/json;as=Table;v={v};g=meta.k8s.io"),
        _ => "application/json".to_string(),
    };
    tokio::spawn(run(store, params, tx, shutdown));
    let mut r = Response::new(ChannelBody { rx }.boxed());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&content_type)
            .unwrap_or(HeaderValue::from_static("application/json")),
    );
    r
}

fn line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

fn error_line(e: &ApiError) -> Bytes {
    line(
        "ERROR",
        &serde_json::to_vec(&e.to_status()).unwrap_or_default(),
    )
}

/// The event a watcher with `filter` sees for a store event, if any.
pub fn visible(ev: &Event, filter: &Filter) -> Option<EventType> {
    let now = filter.matches(&ev.object.value);
    let before = ev.prev.as_ref().is_some_and(|p| filter.matches(&p.value));
    match ev.kind {
        EventType::Added => now.then_some(EventType::Added),
        EventType::Deleted => (now || before).then_some(EventType::Deleted),
        EventType::Modified => match (before, now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
    }
}

fn bookmark(rt: &ResourceType, version: &str, rv: u64, initial_end: bool) -> Bytes {
    let mut obj = json!({"kind": rt.kind, "apiVersion": rt.api_version(version), "metadata": {"resourceVersion": rv.to_string()}});
    if initial_end {
        obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
}

async fn run(
    store: Arc<Store>,
    p: WatchParams,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let sub = match store.watch(&p.rt, &p.filter, p.start) {
        Ok(s) => s,
        Err(e) => {
            // Like kube-apiserver: a 200 response carrying an ERROR event (410 Expired).
            let _ = tx.send(error_line(&e)).await;
            return;
        }
    };
    let at = ResourceTypeAt {
        rt: &p.rt,
        version: &p.version,
    };
    let render = |kind: EventType, ev: &Event| -> Bytes {
        let (_, body) = render_object(&at, &ev.object, p.output, p.include);
        line(kind.as_str(), &body)
    };
    let mut last_rv = sub.start_rv;
    for ev in &sub.initial {
        let kind = if p.start == WatchStart::Current {
            Some(EventType::Added)
        } else {
            visible(ev, &p.filter)
        };
        if let Some(kind) = kind
            && tx.send(render(kind, ev)).await.is_err()
        {
            return;
        }
        last_rv = last_rv.max(ev.rv);
    }
    if p.send_initial
        && tx
            .send(bookmark(&p.rt, &p.version, last_rv, true))
            .await
            .is_err()
    {
        return;
    }
    let mut rx = sub.rx;
    let deadline = tokio::time::sleep(p.timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(p.bookmark_interval.max(Duration::from_millis(10)));
    ticker.tick().await;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if ev.rv <= last_rv {
                        continue;
                    }
                    last_rv = ev.rv;
                    if let Some(kind) = visible(&ev, &p.filter)
                        && tx.send(render(kind, &ev)).await.is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let e = ApiError::gone(format!("too old resource version: {last_rv}: the watcher fell behind"));
                    let _ = tx.send(error_line(&e)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick(), if p.bookmarks => {
                if let Some(rv) = store.bookmark_rv(&rx)
                    && rv > last_rv
                {
                    last_rv = rv;
                    if tx.send(bookmark(&p.rt, &p.version, rv, false)).await.is_err() {
                        return;
                    }
                }
            }
            _ = &mut deadline => return,
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::LabelSelector;
    use crate::store::Stored;
    use serde_json::Value;

    fn stored(labels: Value) -> Stored {
        let v = json!({"metadata": {"name": "a", "namespace": "default", "labels": labels}});
        Stored {
            json: Bytes::from(serde_json::to_vec(&v).unwrap()),
            value: Arc::new(v),
        }
    }

    // An object that stops matching a selector is a DELETED for that watcher; one that starts
    // matching is an ADDED.
    #[test]
    fn selector_transitions() {
        let filter = Filter {
            labels: LabelSelector::parse("app=web").unwrap(),
            ..Default::default()
        };
        let ev = |kind, now: Value, before: Option<Value>| Event {
            kind,
            rv: 1,
            object: stored(now),
            prev: before.map(stored),
        };
        assert_eq!(
            visible(&ev(EventType::Added, json!({"app": "web"}), None), &filter),
            Some(EventType::Added)
        );
        assert_eq!(
            visible(&ev(EventType::Added, json!({"app": "db"}), None), &filter),
            None
        );
        assert_eq!(
            visible(
                &ev(
                    EventType::Modified,
                    json!({"app": "db"}),
                    Some(json!({"app": "web"}))
                ),
                &filter
            ),
            Some(EventType::Deleted)
        );
        assert_eq!(
            visible(
                &ev(
                    EventType::Modified,
                    json!({"app": "web"}),
                    Some(json!({"app": "db"}))
                ),
                &filter
            ),
            Some(EventType::Added)
        );
        assert_eq!(
            visible(
                &ev(
                    EventType::Modified,
                    json!({"app": "web"}),
                    Some(json!({"app": "web"}))
                ),
                &filter
            ),
            Some(EventType::Modified)
        );
        assert_eq!(
            visible(
                &ev(
                    EventType::Deleted,
                    json!({"app": "web"}),
                    Some(json!({"app": "web"}))
                ),
                &filter
            ),
            Some(EventType::Deleted)
        );
    }

    #[test]
    fn lines_are_newline_delimited_json() {
        let l = line("ADDED", b"{\"a\":1}");
        let v: Value = serde_json::from_slice(&l[..l.len() - 1]).unwrap();
        assert_eq!(v, json!({"type": "ADDED", "object": {"a": 1}}));
        let e = error_line(&ApiError::gone("too old resource version: 1 (5)"));
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["object"]["code"], 410);
        assert_eq!(v["object"]["reason"], "Expired");
    }
}
