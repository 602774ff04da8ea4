//! The loop that brings the index up to date: on every new cluster state, on every change of the
//! agents' presence (connect, interfaces, gone), and when a lapsing node's lease ends. The L2
//! announcer choice reads the agents and the last holders, so while L2 announcements are active
//! the cluster state is completed with them before it is applied; the holders that result are
//! published for the Lease writer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cilia_model::ClusterState;
use cilia_model::l2::L2Choice;
use cilia_model::service::ServiceName;
use tokio::sync::watch;
use tracing::info;

use super::agents::Agents;
use crate::SharedIndex;

/// Who answers (or may still answer) for each announced Service, as the Leases record it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2Holders {
    /// `l2-announcements-lease-duration`, for the Leases' `leaseDurationSeconds`.
    pub lease_ms: u32,
    /// `namespace/name` → node.
    pub holders: BTreeMap<String, String>,
}

/// The holders after a choice: the chosen node of every Service that has one; a Service without
/// one keeps its holder while that node is lapsing (it may still answer), and loses it otherwise.
pub fn next_holders(
    before: &BTreeMap<String, String>,
    choices: &BTreeMap<ServiceName, L2Choice>,
    lapsing: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = choices
        .iter()
        .map(|(s, c)| (s.to_string(), c.node.clone()))
        .collect();
    for (svc, node) in before {
        if !out.contains_key(svc) && lapsing(node) {
            out.insert(svc.clone(), node.clone());
        }
    }
    out
}

/// A Service whose announcer moves from one live node to another: nobody announces it until the
/// old node acked the version of its intent without it (or its lease ran out), so the two never
/// answer at once.
#[derive(Debug, Clone)]
struct HandOver {
    from: String,
    /// The version of `from`'s intent that no longer has the Service; `None` until published.
    version: Option<u64>,
    deadline: Instant,
}

/// How often a pending hand-over looks at the old node's acks.
const HAND_OVER_POLL: Duration = Duration::from_millis(20);

/// Runs until `drain` turns or the cluster source closes.
pub async fn run(
    mut rx: watch::Receiver<Arc<ClusterState>>,
    index: SharedIndex,
    agents: Arc<Agents>,
    holders_tx: watch::Sender<L2Holders>,
    mut drain: watch::Receiver<bool>,
) {
    let presence = &agents.presence;
    let mut presence_rx = presence.subscribe();
    let mut holders: BTreeMap<String, String> = BTreeMap::new();
    let mut hand_overs: BTreeMap<String, HandOver> = BTreeMap::new();
    loop {
        let state = rx.borrow_and_update().clone();
        presence_rx.mark_unchanged();
        let now = Instant::now();
        let l2_active = state.datapath.l2_announcements && !state.l2_policies.is_empty();
        // Only L2 reads the agents' presence: without it, a change costs no copy of 1,000 reports.
        let (reports, next_expiry) = if l2_active {
            presence.reports(now)
        } else {
            Default::default()
        };
        let lease = Duration::from_millis(state.datapath.l2_lease_ms as u64);
        let changed = if l2_active {
            // Completed with what only the intent server knows. Cloned only while L2 is active.
            let mut s = (*state).clone();
            s.l2_holders = holders.clone();
            s.agents = reports;
            let live = |n: &str| s.agents.get(n).is_some_and(|a| a.live);
            // Hand-overs end when the old node confirmed, left, or its lease ran out.
            hand_overs.retain(|svc, h| {
                let acked = h
                    .version
                    .is_some_and(|v| agents.record(&h.from).map_or(0, |r| r.applied_version) >= v);
                let done = acked || now >= h.deadline || !live(&h.from);
                if done && live(&h.from) {
                    // The old node no longer announces it: nobody holds it until the new one.
                    s.l2_holders.remove(svc);
                }
                !done
            });
            // New ones: a Service whose choice leaves a live holder.
            s.l2_fenced = hand_overs.keys().cloned().collect();
            for (svc, c) in s.l2_choices() {
                let key = svc.to_string();
                if let Some(h) = s.l2_holders.get(&key)
                    && *h != c.node
                    && live(h)
                {
                    hand_overs.insert(
                        key.clone(),
                        HandOver {
                            from: h.clone(),
                            version: None,
                            deadline: now + lease,
                        },
                    );
                    s.l2_fenced.insert(key);
                }
            }
            let mut idx = index.lock().unwrap();
            let changed = idx.apply(&s);
            for h in hand_overs.values_mut().filter(|h| h.version.is_none()) {
                h.version = idx.view(&h.from).map(|v| v.version);
            }
            holders = next_holders(&holders, idx.l2_choices(), |n| {
                s.agents.get(n).is_some_and(|a| !a.live)
            });
            for (svc, h) in &hand_overs {
                holders.insert(svc.clone(), h.from.clone());
            }
            changed
        } else {
            holders.clear();
            hand_overs.clear();
            index.lock().unwrap().apply(&state)
        };
        let published = L2Holders {
            lease_ms: state.datapath.l2_lease_ms,
            holders: holders.clone(),
        };
        holders_tx.send_if_modified(|h| {
            let differs = *h != published;
            if differs {
                *h = published;
            }
            differs
        });
        if !changed.is_empty() {
            let shown: Vec<_> = changed.iter().take(8).collect();
            info!(count = changed.len(), nodes = ?shown, "node intents changed");
        }
        let wake = match (next_expiry, hand_overs.is_empty()) {
            (t, true) => t,
            (Some(t), false) => Some(t.min(Instant::now() + HAND_OVER_POLL)),
            (None, false) => Some(Instant::now() + HAND_OVER_POLL),
        };
        let expiry = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = drain.changed() => return,
            r = rx.changed() => if r.is_err() { return },
            r = presence_rx.changed() => if r.is_err() { return },
            _ = expiry => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilia_model::l2::L2Choice;

    fn choice(node: &str) -> L2Choice {
        L2Choice {
            node: node.into(),
            announcements: vec![],
            standby: None,
        }
    }

    #[test]
    fn holders_follow_choices_and_keep_lapsing_ones() {
        let before: BTreeMap<String, String> = [
            ("default/a".to_string(), "worker".to_string()),
            ("default/b".into(), "worker2".into()),
            ("default/c".into(), "worker".into()),
        ]
        .into();
        let choices: BTreeMap<ServiceName, L2Choice> = [
            (ServiceName::new("default", "b"), choice("worker2")),
            (ServiceName::new("default", "d"), choice("worker2")),
        ]
        .into();
        // worker is lapsing: a and c (fenced, no choice) stay with it.
        let h = next_holders(&before, &choices, |n| n == "worker");
        assert_eq!(h["default/a"], "worker");
        assert_eq!(h["default/c"], "worker");
        assert_eq!(h["default/b"], "worker2");
        assert_eq!(h["default/d"], "worker2");
        // worker's lease is over: a and c lose their holder until they are chosen again.
        let h = next_holders(&before, &choices, |_| false);
        assert_eq!(h.len(), 2);
        assert!(!h.contains_key("default/a"));
    }
}
