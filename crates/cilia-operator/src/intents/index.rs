//! The intent index: every node's current `NodeIntent` and its version, brought up to date from each
//! new `ClusterState` by `cilia_model::incremental` (only what changed is recomputed; Services are
//! computed once and shared by every node) and published per node through a `watch` channel — only
//! to the nodes whose intent changed. Synchronous and free of I/O; the gRPC streams only forward
//! what their node's receiver shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use cilia_model::incremental::ClusterIntents;
use cilia_model::{ClusterState, IntentDigest, NodeIntent};
use tokio::sync::watch;

/// The index shared by the cluster feeder and the streams; held only for short synchronous calls.
pub type SharedIndex = Arc<Mutex<IntentIndex>>;

/// A published intent. Its digest is computed on first use (a hello), not on every change.
#[derive(Debug)]
pub struct Published {
    /// Shared with the index's own copy; its Services are shared with every other node's.
    pub intent: Arc<NodeIntent>,
    digest: OnceLock<IntentDigest>,
}

impl Published {
    pub fn new(intent: impl Into<Arc<NodeIntent>>) -> Arc<Self> {
        Arc::new(Published {
            intent: intent.into(),
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
    intents: ClusterIntents,
}

impl IntentIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn shared() -> SharedIndex {
        Arc::new(Mutex::new(Self::new()))
    }

    /// Brings every node's intent up to `cluster` (the whole state, as the watchers and the cluster
    /// file give it) and publishes those that changed; a node that left publishes "no intent".
    /// Only what differs from the previous state is recomputed. Returns the nodes whose view
    /// changed, by name.
    pub fn apply(&mut self, cluster: &ClusterState) -> Vec<String> {
        let changes = self.intents.update(cluster);
        let mut changed = Vec::new();
        for name in changes.nodes {
            let intent = self
                .intents
                .intent(&name)
                .expect("changed nodes have intents");
            let tx = self
                .nodes
                .entry(name.clone())
                .or_insert_with(|| watch::Sender::new(NodeView::default()));
            let modified = tx.send_if_modified(|view| {
                // The incremental computation makes a new intent only when it differs.
                if view
                    .intent
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(&p.intent, intent))
                {
                    return false;
                }
                view.version += 1;
                view.intent = Some(Published::new(intent.clone()));
                true
            });
            if modified {
                changed.push(name);
            }
        }
        let current = self.intents.intents();
        // A node that came back with the intent it had before still needs republishing: it
        // published "no intent" when it left.
        for (name, tx) in &self.nodes {
            let Some(intent) = current.get(name) else {
                if tx.send_if_modified(|v| v.intent.take().is_some()) {
                    changed.push(name.clone());
                }
                continue;
            };
            if tx.borrow().intent.is_none() {
                tx.send_modify(|v| {
                    v.version += 1;
                    v.intent = Some(Published::new(intent.clone()));
                });
                changed.push(name.clone());
            }
        }
        for name in current.keys() {
            if !self.nodes.contains_key(name) {
                let tx = watch::Sender::new(NodeView {
                    version: 1,
                    intent: Some(Published::new(current[name].clone())),
                });
                self.nodes.insert(name.clone(), tx);
                changed.push(name.clone());
            }
        }
        // Forget nodes that left and have no agent listening; their numbering can start afresh.
        self.nodes
            .retain(|name, tx| current.contains_key(name) || tx.receiver_count() > 0);
        changed.sort();
        changed.dedup();
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

    /// The L2 announcer of every announced Service, as of the last `apply`.
    pub fn l2_choices(
        &self,
    ) -> &BTreeMap<cilia_model::service::ServiceName, cilia_model::l2::L2Choice> {
        self.intents.l2_choices()
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
