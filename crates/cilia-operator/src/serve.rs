//! The operator's serving process as one call, so the binary stays thin and a benchmark can run
//! exactly the same thing: cluster source (Kubernetes watchers, or a cluster file) → index →
//! intent service (mTLS) and metrics endpoint; with Kubernetes also LB-IPAM and leader election.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster_file;
use crate::intents::agents::Agents;
use crate::k8s::lease::{Elector, LeaseConfig};
use crate::k8s::source::{self, KubeSourceOptions};
use crate::tls::{TlsDirError, TlsFiles};
use crate::{IntentIndex, IntentServer, StreamConfig};

/// Where the cluster state comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A JSON `ClusterState` file, polled (no LB-IPAM, no leader election).
    ClusterFile { path: PathBuf, poll: Duration },
    /// The Kubernetes API: a kubeconfig file, or the in-cluster service account when `None`.
    /// `election: None` means this replica always leads (a single operator).
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        options: KubeSourceOptions,
        election: Option<LeaseConfig>,
    },
}

/// Where to read from and listen on.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub source: Source,
    pub listen: SocketAddr,
    pub tls_dir: PathBuf,
    pub metrics_listen: SocketAddr,
    pub stream: StreamConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] TlsDirError),
    #[error("binding {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("intent service: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no --kubeconfig given and not running in a cluster: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error(transparent)]
    Lease(#[from] crate::k8s::lease::LeaseConfigError),
}

/// A client from a kubeconfig file, or from the in-cluster service account.
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, ServeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ServeError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ServeError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::incluster().map_err(ServeError::InCluster)?,
    };
    kube::Client::try_from(config).map_err(ServeError::Client)
}

/// Starts the cluster source; returns its first state (`None` when `shutdown` came first), the
/// channel of later ones, and the source's tasks.
async fn start_source(
    source: &Source,
    holders: watch::Receiver<crate::intents::feed::L2Holders>,
    drain: &watch::Receiver<bool>,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<
    Option<(
        watch::Sender<Arc<cilia_model::ClusterState>>,
        watch::Receiver<Arc<cilia_model::ClusterState>>,
        Vec<tokio::task::JoinHandle<()>>,
    )>,
    ServeError,
> {
    match source {
        Source::ClusterFile { path, poll } => {
            // Serve only once the first cluster state is in, so a reconnecting agent is compared
            // against the real intent (and resumes) rather than against nothing.
            let first = loop {
                match cluster_file::read(path) {
                    Ok(s) => break s,
                    Err(e) => {
                        warn!(error = %e, "waiting for a valid cluster file");
                        tokio::select! {
                            _ = &mut *shutdown => return Ok(None),
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            };
            let (tx, rx) = watch::channel(Arc::new(first));
            let task = tokio::spawn(cluster_file::watch_file(
                path.clone(),
                *poll,
                tx.clone(),
                drain.clone(),
            ));
            Ok(Some((tx, rx, vec![task])))
        }
        Source::Kubernetes {
            kubeconfig,
            options,
            election,
        } => {
            if let Some(e) = election {
                e.validate()?;
            }
            let client = kube_client(kubeconfig.as_deref()).await?;
            let (leader_tx, leader_rx) = watch::channel(election.is_none());
            let mut tasks = Vec::new();
            if let Some(cfg) = election {
                let elector = Elector::new(client.clone(), cfg.clone());
                tasks.push(tokio::spawn(elector.run(leader_tx, drain.clone())));
            } else {
                // Keep the sender alive: a single operator leads for its whole life.
                tasks.push(tokio::spawn(async move {
                    leader_tx.closed().await;
                }));
            }
            tasks.push(tokio::spawn(crate::k8s::policy_status::run(
                client.clone(),
                leader_rx.clone(),
                drain.clone(),
            )));
            tasks.push(tokio::spawn(crate::k8s::l2_leases::run(
                client.clone(),
                options.config_namespace.clone(),
                holders,
                leader_rx.clone(),
                drain.clone(),
            )));
            let (opt_tx, mut opt_rx) = watch::channel(None);
            tasks.push(tokio::spawn(source::run(
                client,
                options.clone(),
                opt_tx,
                leader_rx,
                drain.clone(),
            )));
            info!("waiting for the first list of Nodes, Services, EndpointSlices and ConfigMaps");
            let first = loop {
                if let Some(s) = opt_rx.borrow_and_update().clone() {
                    break s;
                }
                tokio::select! {
                    _ = &mut *shutdown => {
                        for t in &tasks { t.abort(); }
                        return Ok(None);
                    }
                    r = opt_rx.changed() => if r.is_err() {
                        return Ok(None);
                    },
                }
            };
            let (tx, rx) = watch::channel(first);
            let bridge_tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                while opt_rx.changed().await.is_ok() {
                    if let Some(s) = opt_rx.borrow_and_update().clone() {
                        bridge_tx.send_replace(s);
                    }
                }
            }));
            Ok(Some((tx, rx, tasks)))
        }
    }
}

/// Serves until `shutdown` resolves, then ends every stream cleanly and returns.
pub async fn run(
    o: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let tls = TlsFiles::read(&o.tls_dir)?;
    let (drain_tx, drain) = watch::channel(false);
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    let (holders_tx, holders_rx) = watch::channel(crate::intents::feed::L2Holders::default());
    let Some((cluster_tx, cluster_rx, source_tasks)) =
        start_source(&o.source, holders_rx, &drain, &mut shutdown).await?
    else {
        info!("shut down before the first cluster state");
        return Ok(());
    };
    let index = IntentIndex::shared();
    let agents = Arc::new(Agents::default());
    index.lock().unwrap().apply(&cluster_rx.borrow());

    let bind = |what, addr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { what, addr, source })
    };
    let metrics_listener = bind("the metrics endpoint", o.metrics_listen).await?;
    let listener = bind("the intent service", o.listen).await?;
    let tasks = [
        tokio::spawn(crate::intents::feed::run(
            cluster_rx,
            index.clone(),
            agents.clone(),
            holders_tx,
            drain.clone(),
        )),
        tokio::spawn(crate::metrics::serve(
            metrics_listener,
            index.clone(),
            agents.clone(),
            drain.clone(),
        )),
    ];
    let server = IntentServer::new(index, agents, o.stream.clone(), drain.clone());
    let source = match &o.source {
        Source::ClusterFile { path, .. } => format!("cluster file {}", path.display()),
        Source::Kubernetes {
            kubeconfig: Some(p),
            ..
        } => format!("kubeconfig {}", p.display()),
        Source::Kubernetes {
            kubeconfig: None, ..
        } => "in-cluster service account".into(),
    };
    info!(listen = %o.listen, metrics = %o.metrics_listen, %source, "operator serving intents");
    let mut drained = drain.clone();
    let serving = tokio::spawn(server.serve(listener, tls.server_config(), async move {
        let _ = drained.changed().await;
    }));
    shutdown.await;
    info!("shutting down: ending every stream");
    let _ = drain_tx.send(true);
    let result = match tokio::time::timeout(Duration::from_secs(5), serving).await {
        Ok(Ok(r)) => r.map_err(ServeError::from),
        Ok(Err(_)) => Ok(()),
        Err(_) => {
            warn!("intent service did not stop within 5s");
            Ok(())
        }
    };
    drop(cluster_tx);
    for t in tasks.into_iter().chain(source_tasks) {
        // The elector releases its lease on drain: give it a moment.
        if tokio::time::timeout(Duration::from_secs(2), async {
            while !t.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_err()
        {
            t.abort();
        }
    }
    result
}
