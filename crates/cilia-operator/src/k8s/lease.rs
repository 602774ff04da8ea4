//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it:
//! a candidate takes the Lease once its record has not moved for `leaseDurationSeconds` (timed
//! on the candidate's own clock, so clock skew does not matter); the leader renews every retry
//! period and steps down when it could not renew for the renew deadline, which is shorter than
//! the lease, so two replicas never both believe they lead. Updates carry the resourceVersion
//! they read, so of two candidates only one wins. Leadership is published on a `watch` channel;
//! on shutdown the leader releases the Lease so the next one takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The Lease and its timing.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica's `holderIdentity`; unique per process.
    pub identity: String,
    /// How long a Lease that stopped moving still belongs to its holder.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the leader renews and a candidate retries.
    pub retry_period: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseConfigError {
    #[error(
        "--leader-election-renew-deadline ({renew:?}) must be shorter than --leader-election-lease-duration ({lease:?})"
    )]
    RenewNotBelowLease { renew: Duration, lease: Duration },
    #[error(
        "--leader-election-retry-period ({retry:?}) must be shorter than --leader-election-renew-deadline ({renew:?})"
    )]
    RetryNotBelowRenew { retry: Duration, renew: Duration },
    #[error(
        "--leader-election-lease-duration ({0:?}) must be at least 1s (the Lease holds whole seconds)"
    )]
    LeaseTooShort(Duration),
}

impl LeaseConfig {
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        if self.lease_duration < Duration::from_secs(1) {
            return Err(LeaseConfigError::LeaseTooShort(self.lease_duration));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(LeaseConfigError::RenewNotBelowLease {
                renew: self.renew_deadline,
                lease: self.lease_duration,
            });
        }
        if self.retry_period >= self.renew_deadline {
            return Err(LeaseConfigError::RetryNotBelowRenew {
                retry: self.retry_period,
                renew: self.renew_deadline,
            });
        }
        Ok(())
    }
}

/// A default identity: the host name plus a per-process suffix, so replicas on one host differ.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "cilia-operator".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{host}_{:08x}", nanos ^ std::process::id().rotate_left(16))
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// What identifies one version of the Lease record (a change restarts the expiry clock).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew: Option<MicroTime>,
    transitions: Option<i32>,
}

fn record(l: &Lease) -> Record {
    let s = l.spec.clone().unwrap_or_default();
    Record {
        holder: s.holder_identity.filter(|h| !h.is_empty()),
        renew: s.renew_time,
        transitions: s.lease_transitions,
    }
}

/// One election participant.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<(Record, Instant, Duration)>,
    leading_since_renew: Option<Instant>,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            leading_since_renew: None,
        }
    }

    fn lease_seconds(&self) -> i32 {
        self.cfg.lease_duration.as_secs_f64().ceil().max(1.0) as i32
    }

    fn spec_for_me(&self, prev: Option<&LeaseSpec>, taking: bool) -> LeaseSpec {
        let t = now();
        let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.lease_seconds()),
            acquire_time: if taking {
                Some(t.clone())
            } else {
                prev.and_then(|p| p.acquire_time.clone())
            },
            renew_time: Some(t),
            lease_transitions: Some(if taking && prev.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire or renew. Returns whether this replica holds the Lease now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let current = match self.api.get_opt(&self.cfg.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec_for_me(None, true)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Some(l) => l,
        };
        let rec = record(&current);
        let held_by_me = rec.holder.as_deref() == Some(self.cfg.identity.as_str());
        let duration = Duration::from_secs(
            current
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .unwrap_or(self.lease_seconds())
                .max(1) as u64,
        );
        match &self.observed {
            Some((r, _, _)) if *r == rec => {}
            _ => self.observed = Some((rec.clone(), Instant::now(), duration)),
        }
        let (_, seen_at, dur) = self.observed.as_ref().expect("set above");
        let expired = rec.holder.is_none() || seen_at.elapsed() > *dur;
        if !held_by_me && !expired {
            return Ok(false);
        }
        let mut next = current.clone();
        next.spec = Some(self.spec_for_me(current.spec.as_ref(), !held_by_me));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(written) => {
                self.observed = Some((record(&written), Instant::now(), self.cfg.lease_duration));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (holder cleared, 1s duration), so another replica takes over at once.
    async fn release(&mut self) {
        let Ok(Some(mut current)) = self.api.get_opt(&self.cfg.name).await else {
            return;
        };
        let Some(spec) = current.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &current)
            .await
        {
            Ok(_) => info!(lease = %self.cfg.name, "released the leader lease"),
            Err(e) => {
                warn!(lease = %self.cfg.name, error = %e, "could not release the leader lease")
            }
        }
    }

    /// Runs the election until `drain` turns, publishing leadership on `leader`.
    pub async fn run(mut self, leader: watch::Sender<bool>, mut drain: watch::Receiver<bool>) {
        info!(
            lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name),
            identity = %self.cfg.identity,
            "contesting leadership"
        );
        loop {
            let leading = *leader.borrow();
            let attempt =
                tokio::time::timeout(self.cfg.renew_deadline, self.try_acquire_or_renew()).await;
            let attempt = match attempt {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.cfg.renew_deadline)),
            };
            match attempt {
                Ok(true) => {
                    self.leading_since_renew = Some(Instant::now());
                    if !leading {
                        info!(identity = %self.cfg.identity, "became the leader");
                        leader.send_replace(true);
                    }
                }
                Ok(false) => {
                    if leading {
                        warn!(identity = %self.cfg.identity, "the lease is held by another replica: stepping down");
                        leader.send_replace(false);
                    }
                    self.leading_since_renew = None;
                }
                Err(e) => {
                    debug!(error = %e, "lease request failed");
                    if leading
                        && self
                            .leading_since_renew
                            .is_none_or(|t| t.elapsed() >= self.cfg.renew_deadline)
                    {
                        warn!(error = %e, deadline = ?self.cfg.renew_deadline, "could not renew the lease within the renew deadline: stepping down");
                        leader.send_replace(false);
                        self.leading_since_renew = None;
                    } else if !leading {
                        warn!(error = %e, "lease request failed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = drain.changed() => break,
                _ = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            self.release().await;
        }
    }
}
