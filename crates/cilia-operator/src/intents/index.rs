//! The intent index: every node's current `NodeIntent` and its version, recomputed from each new
//! `ClusterState` and published per node through a `watch` channel. Synchronous and free of I/O;
//! the gRPC streams only forward what their node's receiver shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use cilia_model::{ClusterState, IntentDigest, NodeIntent, node_intent};
use tokio::sync::watch;

/// The index shared by the cluster feeder and the streams; held only for short synchronous calls.
pub type SharedIndex = Arc<Mutex<IntentIndex>>;

/// A published intent. Its digest is computed on first use (a hello), not on every change.
#[derive(Debug)]
pub struct Published {
    pub intent: NodeIntent,
    digest: OnceLock<IntentDigest>,
}

impl Published {
    pub fn new(intent: NodeIntent) -> Arc<Self> {
        Arc::new(Published {
            intent,
            digest: OnceLock::new(),
        })
    }

    pub fn digest(&self) -> IntentDigest {
        *self.digest.get_or_init(|| self.intent.digest())
    }
}

/// One node's intent as the operator publishes it.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    /// Moves only when this node's intent changes, or once on a resume to meet the numbering of an
    /// agent that already holds the intent under a higher version (after an operator restart).
    pub version: u64,
    /// `None` while the node is not in the cluster: its agent keeps what it holds.
    pub intent: Option<Arc<Published>>,
}

/// What a stream has sent to its agent: the base of the next delta.
#[derive(Debug, Clone)]
pub struct Sent {
    pub version: u64,
    pub intent: Arc<Published>,
}

#[derive(Default)]
pub struct IntentIndex {
    nodes: BTreeMap<String, watch::Sender<NodeView>>,
}

impl IntentIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn shared() -> SharedIndex {
        Arc::new(Mutex::new(Self::new()))
    }

    /// Recomputes every node's intent from `cluster` and publishes those that changed (a node that
    /// left publishes "no intent"). Returns the nodes whose view changed, by name.
    pub fn apply(&mut self, cluster: &ClusterState) -> Vec<String> {
        let mut changed = Vec::new();
        let present: std::collections::HashSet<&str> =
            cluster.nodes.iter().map(|n| n.name.as_str()).collect();
        for n in &cluster.nodes {
            let Ok(intent) = node_intent(cluster, &n.name) else {
                continue;
            };
            let tx = self
                .nodes
                .entry(n.name.clone())
                .or_insert_with(|| watch::Sender::new(NodeView::default()));
            let modified = tx.send_if_modified(|view| {
                if view.intent.as_ref().is_some_and(|p| p.intent == intent) {
                    return false;
                }
                view.version += 1;
                view.intent = Some(Published::new(intent));
                true
            });
            if modified {
                changed.push(n.name.clone());
            }
        }
        for (name, tx) in &self.nodes {
            if !present.contains(name.as_str())
                && tx.send_if_modified(|v| v.intent.take().is_some())
            {
                changed.push(name.clone());
            }
        }
        // Forget nodes that left and have no agent listening; their numbering can start afresh.
        self.nodes
            .retain(|name, tx| present.contains(name.as_str()) || tx.receiver_count() > 0);
        changed.sort();
        changed
    }

    /// A receiver of `node`'s view; a node not (yet) in the cluster shows no intent until it joins.
    pub fn subscribe(&mut self, node: &str) -> watch::Receiver<NodeView> {
        self.nodes
            .entry(node.to_string())
            .or_insert_with(|| watch::Sender::new(NodeView::default()))
            .subscribe()
    }

    /// Subscribes an agent that says it holds `held` (version, digest). Returns the receiver and,
    /// when the agent's intent is the current one, what counts as already sent to it: then no
    /// snapshot is needed. The node's numbering is raised to the agent's when the agent is ahead
    /// (the operator restarted), so versions an agent sees never go backwards.
    pub fn resume(
        &mut self,
        node: &str,
        held: Option<(u64, IntentDigest)>,
    ) -> (watch::Receiver<NodeView>, Option<Sent>) {
        let mut rx = self.subscribe(node);
        // The stream looks at the view once before waiting for changes.
        rx.mark_changed();
        let Some((held_version, held_digest)) = held else {
            return (rx, None);
        };
        let tx = &self.nodes[node];
        let current = rx
            .borrow()
            .intent
            .clone()
            .filter(|p| p.digest() == held_digest);
        // Equal intent: the agent's number may stand. Another intent: the snapshot comes after it.
        let at_least = if current.is_some() {
            held_version
        } else {
            held_version.saturating_add(1)
        };
        tx.send_if_modified(|v| {
            if v.version < at_least {
                v.version = at_least;
                true
            } else {
                false
            }
        });
        let sent = current.map(|intent| Sent {
            version: held_version,
            intent,
        });
        (rx, sent)
    }

    /// Every known node's current version, for metrics.
    pub fn versions(&self) -> Vec<(String, u64, bool)> {
        self.nodes
            .iter()
            .map(|(n, tx)| {
                let v = tx.borrow();
                (n.clone(), v.version, v.intent.is_some())
            })
            .collect()
    }

    /// `node`'s current view.
    pub fn view(&self, node: &str) -> Option<NodeView> {
        self.nodes.get(node).map(|tx| tx.borrow().clone())
    }
}

/// What a stream sends next, given what it sent before and the node's current view: a snapshot to
/// a fresh (or resyncing) agent, a delta of only what changed otherwise (empty when only the
/// numbering moved), or nothing.
pub fn next_update(sent: Option<&Sent>, view: &NodeView) -> Option<(Sent, Update)> {
    let current = view.intent.as_ref()?;
    let next = Sent {
        version: view.version,
        intent: current.clone(),
    };
    match sent {
        None => Some((next, Update::Snapshot)),
        Some(s) if s.version >= view.version => None,
        Some(s) => {
            let delta = cilia_model::delta::diff(&s.intent.intent, &current.intent);
            Some((
                next,
                Update::Delta {
                    base_version: s.version,
                    delta,
                },
            ))
        }
    }
}

/// The kind of update `next_update` decided on; the new `Sent` carries version and intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Snapshot,
    Delta {
        base_version: u64,
        delta: cilia_model::delta::Delta,
    },
}

impl Update {
    /// The wire message for this update.
    pub fn to_proto(&self, sent: &Sent) -> cilia_proto::v1::IntentUpdate {
        match self {
            Update::Snapshot => cilia_proto::snapshot_update(sent.version, &sent.intent.intent),
            Update::Delta {
                base_version,
                delta,
            } => cilia_proto::delta_update(sent.version, *base_version, delta),
        }
    }
}
