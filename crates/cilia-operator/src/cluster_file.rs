//! The interim source of cluster state: a JSON `ClusterState` file (the lab writes it), re-read
//! whenever it changes and published to the intent index. The Kubernetes watchers will publish
//! into the same `watch` channel.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cilia_model::ClusterState;
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid cluster state: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub fn read(path: &Path) -> Result<ClusterState, ClusterFileError> {
    let bytes = std::fs::read(path).map_err(|source| ClusterFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ClusterFileError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// Polls `path` every `interval` (a stat; the file is read only when it changed) and publishes
/// each valid new state. An invalid file is logged with the reason and the last state stays.
/// Returns when `drain` turns.
pub async fn watch_file(
    path: PathBuf,
    interval: Duration,
    tx: watch::Sender<Arc<ClusterState>>,
    mut drain: watch::Receiver<bool>,
) {
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.changed() => return,
            _ = tick.tick() => {}
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match read(&path) {
            Ok(state) => {
                let changed = tx.send_if_modified(|cur| {
                    if **cur == state {
                        return false;
                    }
                    *cur = Arc::new(state);
                    true
                });
                if changed {
                    info!(path = %path.display(), nodes = tx.borrow().nodes.len(), "cluster state changed");
                }
            }
            Err(e) => {
                warn!(error = %e, "ignoring the cluster file; keeping the last cluster state")
            }
        }
    }
}

/// Applies every new cluster state to the index until the source closes or `drain` turns.
pub async fn feed_index(
    rx: watch::Receiver<Arc<ClusterState>>,
    index: crate::SharedIndex,
    drain: watch::Receiver<bool>,
) {
    // Without agents to report presence: what tests and benchmarks that run no L2 need.
    crate::intents::feed::run(
        rx,
        index,
        Arc::new(crate::intents::agents::Agents::default()),
        watch::Sender::new(crate::intents::feed::L2Holders::default()),
        drain,
    )
    .await
}
