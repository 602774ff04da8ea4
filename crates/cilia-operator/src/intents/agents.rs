//! What the operator knows about the agents: per node the version it last acked, when it was last
//! heard from, how many streams it holds, what was sent to it; and counters over all streams. The
//! source of the metrics and of the status agents relay.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why a stream was refused or ended by the operator; the label of `cilia_operator_streams_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndReason {
    /// The agent closed the stream or the connection dropped.
    AgentGone,
    /// The operator is shutting down.
    Shutdown,
    /// The agent sent a message that failed validation (INVALID_ARGUMENT).
    InvalidArgument,
    /// The hello named another node than the client certificate (PERMISSION_DENIED).
    PermissionDenied,
    /// No usable client certificate identity (UNAUTHENTICATED).
    Unauthenticated,
    /// No hello, or no heartbeat or ack for too long (DEADLINE_EXCEEDED).
    Silent,
}

impl EndReason {
    pub fn label(self) -> &'static str {
        match self {
            EndReason::AgentGone => "agent_gone",
            EndReason::Shutdown => "shutdown",
            EndReason::InvalidArgument => "invalid_argument",
            EndReason::PermissionDenied => "permission_denied",
            EndReason::Unauthenticated => "unauthenticated",
            EndReason::Silent => "silent",
        }
    }

    pub const ALL: [EndReason; 6] = [
        EndReason::AgentGone,
        EndReason::Shutdown,
        EndReason::InvalidArgument,
        EndReason::PermissionDenied,
        EndReason::Unauthenticated,
        EndReason::Silent,
    ];
}

/// One node's agent as the operator sees it.
#[derive(Debug, Clone, Default)]
pub struct AgentRecord {
    /// The last version the agent acked (or held when it resumed).
    pub applied_version: u64,
    /// When the agent was last heard from (any message).
    pub last_seen: Option<Instant>,
    pub last_seen_unix: Option<Duration>,
    /// Streams currently open for this node (normally 0 or 1; 2 briefly while an agent reconnects).
    pub streams: u32,
    pub snapshots_sent: u64,
    pub deltas_sent: u64,
    pub resyncs_requested: u64,
}

#[derive(Default)]
pub struct Agents {
    nodes: Mutex<BTreeMap<String, AgentRecord>>,
    /// Liveness and interfaces for L2 announcements.
    pub presence: super::presence::Presence,
    /// Encoded bytes of snapshots and deltas sent (heartbeats not included).
    pub intent_bytes_sent: AtomicU64,
    pub heartbeat_bytes_sent: AtomicU64,
    ended: Mutex<BTreeMap<EndReason, u64>>,
}

/// How an update was sent, for the per-node counters.
#[derive(Debug, Clone, Copy)]
pub enum SentKind {
    Snapshot,
    Delta,
}

impl Agents {
    fn with<T>(&self, node: &str, f: impl FnOnce(&mut AgentRecord) -> T) -> T {
        let mut m = self.nodes.lock().unwrap();
        f(m.entry(node.to_string()).or_default())
    }

    pub fn connected(&self, node: &str) {
        self.with(node, |r| {
            r.streams += 1;
        });
        self.seen(node);
    }

    pub fn disconnected(&self, node: &str) {
        self.with(node, |r| r.streams = r.streams.saturating_sub(1));
    }

    pub fn seen(&self, node: &str) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok();
        self.with(node, |r| {
            r.last_seen = Some(Instant::now());
            r.last_seen_unix = now;
        });
    }

    pub fn acked(&self, node: &str, version: u64) {
        self.with(node, |r| r.applied_version = version);
        self.seen(node);
    }

    pub fn resync_requested(&self, node: &str) {
        self.with(node, |r| r.resyncs_requested += 1);
    }

    pub fn sent(&self, node: &str, kind: SentKind, bytes: usize) {
        self.intent_bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
        self.with(node, |r| match kind {
            SentKind::Snapshot => r.snapshots_sent += 1,
            SentKind::Delta => r.deltas_sent += 1,
        });
    }

    pub fn heartbeat_sent(&self, bytes: usize) {
        self.heartbeat_bytes_sent
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn ended(&self, reason: EndReason) {
        *self.ended.lock().unwrap().entry(reason).or_default() += 1;
    }

    pub fn ended_count(&self, reason: EndReason) -> u64 {
        self.ended
            .lock()
            .unwrap()
            .get(&reason)
            .copied()
            .unwrap_or(0)
    }

    pub fn record(&self, node: &str) -> Option<AgentRecord> {
        self.nodes.lock().unwrap().get(node).cloned()
    }

    pub fn records(&self) -> BTreeMap<String, AgentRecord> {
        self.nodes.lock().unwrap().clone()
    }

    /// Agents with at least one open stream.
    pub fn connected_count(&self) -> usize {
        self.nodes
            .lock()
            .unwrap()
            .values()
            .filter(|r| r.streams > 0)
            .count()
    }
}
