//! The `cilium-l2announce-<namespace>-<service>` Leases, written as Cilium names them so tooling
//! that reads them (`kubectl get leases`, dashboards, runbooks) sees which node announces each
//! Service. Here they record the operator's decision rather than carry it: they are written by the
//! leader when a holder changes (not renewed per retry period as Cilium's agents do, which costs
//! one API write per Service per node every 2 s), and deleted when a Service stops being announced.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::intents::feed::L2Holders;

/// Cilium's prefix of the per-Service Lease names.
pub const PREFIX: &str = "cilium-l2announce-";

/// The Lease name of Service `namespace/name`.
pub fn lease_name(service: &str) -> String {
    format!("{PREFIX}{}", service.replacen('/', "-", 1))
}

/// One Lease to create, replace or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWrite {
    /// Create or replace `name` with `holder`; `transition` when the holder changes.
    Hold {
        name: String,
        holder: String,
        transition: bool,
    },
    Delete {
        name: String,
    },
}

/// The writes that bring the existing Leases (`name` → holder) to `desired`.
pub fn lease_writes(
    existing: &BTreeMap<String, Option<String>>,
    desired: &L2Holders,
) -> Vec<LeaseWrite> {
    let want: BTreeMap<String, &String> = desired
        .holders
        .iter()
        .map(|(svc, node)| (lease_name(svc), node))
        .collect();
    let mut out = Vec::new();
    for (name, node) in &want {
        match existing.get(name) {
            Some(Some(h)) if h == *node => {}
            other => out.push(LeaseWrite::Hold {
                name: name.clone(),
                holder: (*node).clone(),
                transition: matches!(other, Some(Some(_))),
            }),
        }
    }
    for name in existing.keys() {
        if !want.contains_key(name) {
            out.push(LeaseWrite::Delete { name: name.clone() });
        }
    }
    out
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

async fn existing(api: &Api<Lease>) -> Result<BTreeMap<String, Lease>, kube::Error> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|l| {
            let n = l.metadata.name.clone()?;
            n.starts_with(PREFIX).then_some((n, l))
        })
        .collect())
}

async fn write_all(
    api: &Api<Lease>,
    namespace: &str,
    desired: &L2Holders,
) -> Result<usize, kube::Error> {
    let current = existing(api).await?;
    let holders: BTreeMap<String, Option<String>> = current
        .iter()
        .map(|(n, l)| {
            (
                n.clone(),
                l.spec.as_ref().and_then(|s| s.holder_identity.clone()),
            )
        })
        .collect();
    let writes = lease_writes(&holders, desired);
    let seconds = ((desired.lease_ms as i32 + 999) / 1000).max(1);
    for w in &writes {
        match w {
            LeaseWrite::Hold {
                name,
                holder,
                transition,
            } => {
                let t = now();
                match current.get(name) {
                    Some(old) => {
                        let mut next = old.clone();
                        let prev = old.spec.clone().unwrap_or_default();
                        next.spec = Some(LeaseSpec {
                            holder_identity: Some(holder.clone()),
                            lease_duration_seconds: Some(seconds),
                            acquire_time: Some(t.clone()),
                            renew_time: Some(t),
                            lease_transitions: Some(
                                prev.lease_transitions.unwrap_or(0) + i32::from(*transition),
                            ),
                            ..LeaseSpec::default()
                        });
                        api.replace(name, &PostParams::default(), &next).await?;
                    }
                    None => {
                        let lease = Lease {
                            metadata: ObjectMeta {
                                name: Some(name.clone()),
                                namespace: Some(namespace.to_string()),
                                ..ObjectMeta::default()
                            },
                            spec: Some(LeaseSpec {
                                holder_identity: Some(holder.clone()),
                                lease_duration_seconds: Some(seconds),
                                acquire_time: Some(t.clone()),
                                renew_time: Some(t),
                                lease_transitions: Some(0),
                                ..LeaseSpec::default()
                            }),
                        };
                        api.create(&PostParams::default(), &lease).await?;
                    }
                }
                info!(lease = %name, %holder, "L2 announcer recorded");
            }
            LeaseWrite::Delete { name } => {
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
                info!(lease = %name, "Service no longer announced; Lease deleted");
            }
        }
    }
    Ok(writes.len())
}

/// Writes the Leases while this replica leads, whenever the holders change; retries failures.
pub async fn run(
    client: Client,
    namespace: String,
    mut holders: watch::Receiver<L2Holders>,
    mut leader: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    // What was last written successfully; `None` forces a full comparison with the API.
    let mut written: Option<L2Holders> = None;
    loop {
        let leading = *leader.borrow_and_update();
        let desired = holders.borrow_and_update().clone();
        let mut retry = false;
        if leading && written.as_ref() != Some(&desired) {
            match write_all(&api, &namespace, &desired).await {
                Ok(_) => written = Some(desired),
                Err(e) => {
                    warn!(error = %e, "could not write the L2 announcement Leases; retrying");
                    written = None;
                    retry = true;
                }
            }
        } else if !leading {
            written = None;
        }
        let backoff = async {
            if retry {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = drain.changed() => return,
            r = holders.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            _ = backoff => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_cilium() {
        assert_eq!(
            lease_name("default/deathstar-lb"),
            "cilium-l2announce-default-deathstar-lb"
        );
    }

    #[test]
    fn only_changes_are_written() {
        let desired = L2Holders {
            lease_ms: 400,
            holders: [
                ("default/a".to_string(), "worker".to_string()),
                ("default/b".into(), "worker2".into()),
                ("default/c".into(), "worker".into()),
            ]
            .into(),
        };
        let existing: BTreeMap<String, Option<String>> = [
            (lease_name("default/a"), Some("worker".to_string())),
            (lease_name("default/b"), Some("worker".into())),
            (lease_name("default/gone"), Some("worker".into())),
            (lease_name("default/c"), None),
        ]
        .into();
        let w = lease_writes(&existing, &desired);
        assert_eq!(
            w,
            vec![
                LeaseWrite::Hold {
                    name: lease_name("default/b"),
                    holder: "worker2".into(),
                    transition: true
                },
                LeaseWrite::Hold {
                    name: lease_name("default/c"),
                    holder: "worker".into(),
                    transition: false
                },
                LeaseWrite::Delete {
                    name: lease_name("default/gone")
                },
            ]
        );
        let settled: BTreeMap<String, Option<String>> = desired
            .holders
            .iter()
            .map(|(s, n)| (lease_name(s), Some(n.clone())))
            .collect();
        assert!(lease_writes(&settled, &desired).is_empty());
    }
}
