//! Which agents are live, which interfaces they report up, and — for a node whose agent is gone —
//! until when its L2 announcements may still be answered.
//!
//! An agent answers ARP for its VIPs only while it has heard from the operator within the lease
//! (its BPF responder checks that deadline itself, so this holds even when the agent process is
//! dead). Once the operator stops talking to a node (its stream ended, or it fell silent for the
//! renew deadline and its stream was closed), the node may answer for at most one more lease. Until
//! then the node is *lapsing*: not eligible, and the VIPs it held go to no other node, so two nodes
//! never answer for one VIP. Afterwards the entry is dropped and the VIPs move.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cilia_model::cluster::AgentReport;
use tokio::sync::watch;

#[derive(Debug, Clone)]
enum State {
    Live { streams: u32 },
    Lapsing { until: Instant },
}

#[derive(Debug, Clone)]
struct Node {
    state: State,
    up: BTreeSet<String>,
}

/// Shared by the streams (which report) and the feed loop (which reads).
pub struct Presence {
    nodes: Mutex<BTreeMap<String, Node>>,
    /// Bumped on every change that can move an announcement.
    changed: watch::Sender<u64>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence {
            nodes: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Presence {
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// A stream for `node` passed its hello.
    pub fn connected(&self, node: &str, up: BTreeSet<String>) {
        let mut m = self.nodes.lock().unwrap();
        let streams = match m.get(node) {
            Some(Node {
                state: State::Live { streams },
                ..
            }) => streams + 1,
            _ => 1,
        };
        m.insert(
            node.to_string(),
            Node {
                state: State::Live { streams },
                up,
            },
        );
        drop(m);
        self.bump();
    }

    /// `node`'s agent reported its up interfaces (a heartbeat); a change is published.
    pub fn interfaces(&self, node: &str, up: BTreeSet<String>) {
        let mut m = self.nodes.lock().unwrap();
        let Some(n) = m.get_mut(node) else { return };
        if !matches!(n.state, State::Live { .. }) || n.up == up {
            return;
        }
        n.up = up;
        drop(m);
        self.bump();
    }

    /// A stream for `node` ended at `now`; when it was the last, the node lapses for `lease`.
    pub fn disconnected(&self, node: &str, now: Instant, lease: Duration) {
        let mut m = self.nodes.lock().unwrap();
        let Some(n) = m.get_mut(node) else { return };
        match &mut n.state {
            State::Live { streams } if *streams > 1 => {
                *streams -= 1;
                return;
            }
            _ => {
                n.state = State::Lapsing { until: now + lease };
            }
        }
        drop(m);
        self.bump();
    }

    /// The agents as the model sees them at `now` (lapsed entries are dropped), and when the next
    /// lapsing node's lease ends.
    pub fn reports(&self, now: Instant) -> (BTreeMap<String, AgentReport>, Option<Instant>) {
        let mut m = self.nodes.lock().unwrap();
        m.retain(|_, n| !matches!(n.state, State::Lapsing { until } if until <= now));
        let mut next: Option<Instant> = None;
        let reports = m
            .iter()
            .map(|(name, n)| {
                let live = match n.state {
                    State::Live { .. } => true,
                    State::Lapsing { until } => {
                        next = Some(next.map_or(until, |t| t.min(until)));
                        false
                    }
                };
                (
                    name.clone(),
                    AgentReport {
                        live,
                        up_interfaces: n.up.clone(),
                    },
                )
            })
            .collect();
        (reports, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_gone_agent_lapses_for_one_lease_then_disappears() {
        let p = Presence::default();
        let mut rx = p.subscribe();
        let t0 = Instant::now();
        p.connected("worker", up(&["eth0"]));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let (r, next) = p.reports(t0);
        assert!(r["worker"].live);
        assert_eq!(r["worker"].up_interfaces, up(&["eth0"]));
        assert_eq!(next, None);

        let lease = Duration::from_millis(400);
        p.disconnected("worker", t0, lease);
        assert!(rx.has_changed().unwrap());
        let (r, next) = p.reports(t0 + Duration::from_millis(399));
        assert!(!r["worker"].live, "lapsing until the lease is over");
        assert_eq!(next, Some(t0 + lease));
        let (r, next) = p.reports(t0 + lease);
        assert!(r.is_empty(), "lapsed: gone");
        assert_eq!(next, None);
    }

    #[test]
    fn a_reconnect_before_the_old_stream_ends_keeps_the_node_live() {
        let p = Presence::default();
        let t0 = Instant::now();
        p.connected("worker", up(&["eth0"]));
        p.connected("worker", up(&["eth0"]));
        p.disconnected("worker", t0, Duration::from_millis(400));
        assert!(p.reports(t0).0["worker"].live);
        p.disconnected("worker", t0, Duration::from_millis(400));
        assert!(!p.reports(t0).0["worker"].live);
        // Back while lapsing: live at once.
        p.connected("worker", up(&["eth0"]));
        assert!(p.reports(t0).0["worker"].live);
    }

    #[test]
    fn interface_reports_publish_only_changes() {
        let p = Presence::default();
        let mut rx = p.subscribe();
        p.connected("worker", up(&["eth0"]));
        rx.mark_unchanged();
        p.interfaces("worker", up(&["eth0"]));
        assert!(!rx.has_changed().unwrap(), "same set: nothing to recompute");
        p.interfaces("worker", up(&[]));
        assert!(rx.has_changed().unwrap());
        assert!(
            p.reports(Instant::now()).0["worker"]
                .up_interfaces
                .is_empty()
        );
        // Unknown nodes are ignored.
        p.interfaces("ghost", up(&["eth0"]));
        assert!(!p.reports(Instant::now()).0.contains_key("ghost"));
    }
}
