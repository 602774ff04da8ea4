//! The operator's serving process as one call, so the binary stays thin and a benchmark can run
//! exactly the same thing: cluster file → index → intent service (mTLS) and metrics endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::cluster_file;
use crate::intents::agents::Agents;
use crate::tls::{TlsDirError, TlsFiles};
use crate::{IntentIndex, IntentServer, StreamConfig};

/// Where to read from and listen on.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub cluster_file: PathBuf,
    pub cluster_file_poll: Duration,
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
}

/// Serves until `shutdown` resolves, then ends every stream cleanly and returns.
pub async fn run(
    o: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let tls = TlsFiles::read(&o.tls_dir)?;
    // Serve only once the first cluster state is in, so a reconnecting agent is compared against
    // the real intent (and resumes) rather than against nothing.
    let first = loop {
        match cluster_file::read(&o.cluster_file) {
            Ok(s) => break s,
            Err(e) => {
                warn!(error = %e, "waiting for a valid cluster file");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (drain_tx, drain) = watch::channel(false);
    let (cluster_tx, cluster_rx) = watch::channel(Arc::new(first));
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
        tokio::spawn(cluster_file::feed_index(
            cluster_rx,
            index.clone(),
            drain.clone(),
        )),
        tokio::spawn(cluster_file::watch_file(
            o.cluster_file.clone(),
            o.cluster_file_poll,
            cluster_tx,
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
    info!(listen = %o.listen, metrics = %o.metrics_listen, cluster_file = %o.cluster_file.display(), "operator serving intents");
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
    for t in tasks {
        t.abort();
    }
    result
}
