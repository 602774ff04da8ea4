//! An in-memory Kubernetes API server for the lab and the end-to-end tests.
//!
//! **Test infrastructure, never for production.** No kube-apiserver can run in the lab, so this
//! crate serves the API shapes that real clients use — kubectl, the Helm engine and kube-rs (the
//! operator) — over HTTPS (HTTP/1.1 and HTTP/2) with a throwaway CA and a bearer token. Objects
//! live in memory and vanish with the process.
//!
//! Modules:
//! - [`registry`]: served resource types (built-ins + one per CRD)
//! - [`discovery`]: `/version`, `/api`, `/apis`, aggregated discovery, OpenAPI v2/v3
//! - [`store`]: objects, resourceVersions, the write pipeline, finalizers, namespaces, CRDs
//! - [`watch`]: watch streams, bookmarks, 410 Expired
//! - [`selector`]: label and field selectors
//! - [`patch`]: merge, JSON and strategic merge patches, list shapes
//! - [`apply`]: server-side apply and managedFields
//! - [`schema`], [`cel`]: CRD structural schemas: pruning, defaulting, validation, CEL rules
//! - [`table`]: server-side printing (`kubectl get` columns, JSONPath)
//! - [`builtin`]: per-kind behaviour (Service IPs, Secret stringData, CRD status, ...)
//! - [`tls`]: CA, serving certificate, kubeconfig
//! - [`proto`]: protobuf request bodies of the few kinds typed Go clients send that way
//! - [`server`]: HTTP routing, authentication, content negotiation

pub mod apply;
pub mod builtin;
pub mod cel;
pub mod discovery;
pub mod error;
pub mod meta;
pub mod patch;
pub mod proto;
pub mod registry;
pub mod schema;
pub mod selector;
pub mod server;
pub mod store;
pub mod table;
pub mod tls;
pub mod watch;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use error::ApiError;
pub use store::Store;

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Bearer token clients must present; generated when `None`.
    pub token: Option<String>,
    /// Where to write the kubeconfig; a private temporary file when `None`.
    pub kubeconfig_out: Option<PathBuf>,
    /// Server URL written into the kubeconfig; `https://<listen address>` when `None`.
    pub server_url: Option<String>,
    /// Extra DNS names / IPs for the serving certificate.
    pub extra_sans: Vec<String>,
    /// Service ClusterIP range (IPv4).
    pub service_cidr: (Ipv4Addr, u8),
    /// Events kept per resource so watches can resume from a resourceVersion.
    pub watch_history: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// Cluster, context and user name prefix in the kubeconfig.
    pub cluster_name: String,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        ApiServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: None,
            kubeconfig_out: None,
            server_url: None,
            extra_sans: Vec::new(),
            service_cidr: (Ipv4Addr::new(10, 96, 0, 0), 16),
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(5),
            cluster_name: "cilia-lab".into(),
        }
    }
}

/// Parses `10.96.0.0/16`.
pub fn parse_ipv4_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = s.split_once('/')?;
    let len: u8 = len.parse().ok()?;
    (len <= 32).then_some((ip.parse().ok()?, len))
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("writing the kubeconfig to {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the server runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A running server. Dropping it stops the server (and removes a temporary kubeconfig).
pub struct ApiServer {
    addr: SocketAddr,
    url: String,
    token: String,
    ca_pem: String,
    cluster_name: String,
    kubeconfig_path: PathBuf,
    temp_dir: Option<PathBuf>,
    store: Arc<Store>,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer")
            .field("url", &self.url)
            .field("kubeconfig", &self.kubeconfig_path)
            .finish()
    }
}

struct Bound {
    listener: TcpListener,
    server: ApiServer,
    state: Arc<server::ServerState>,
    tls: Arc<rustls::ServerConfig>,
}

impl ApiServer {
    /// Starts a server on its own runtime thread; usable from sync and async code alike.
    pub fn start(opts: ApiServerOptions) -> Result<ApiServer, StartError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cilia-apiserver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(StartError::Runtime(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Self::bind(opts).await {
                        Ok(bound) => {
                            let Bound {
                                listener,
                                server,
                                state,
                                tls,
                            } = bound;
                            let shutdown = server.shutdown.subscribe();
                            let _ = tx.send(Ok(server));
                            serve(listener, tls, state, shutdown).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(StartError::Runtime)?;
        let mut server = rx
            .recv()
            .map_err(|_| StartError::Runtime(std::io::Error::other("server thread exited")))??;
        server.thread = Some(thread);
        Ok(server)
    }

    /// Starts a server on the current tokio runtime.
    pub async fn spawn(opts: ApiServerOptions) -> Result<ApiServer, StartError> {
        let Bound {
            listener,
            server,
            state,
            tls,
        } = Self::bind(opts).await?;
        let shutdown = server.shutdown.subscribe();
        tokio::spawn(serve(listener, tls, state, shutdown));
        Ok(server)
    }

    async fn bind(opts: ApiServerOptions) -> Result<Bound, StartError> {
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: opts.listen,
            source,
        })?;
        let pki = tls::generate(tls::subject_alt_names(addr, &opts.extra_sans))?;
        let store = Arc::new(Store::new(store::StoreOptions {
            history: opts.watch_history,
            service_cidr: opts.service_cidr,
        }));
        store.seed_kubernetes_service(addr);
        let token = opts
            .token
            .clone()
            .unwrap_or_else(|| store.ids().uid().replace('-', ""));
        let url = opts
            .server_url
            .clone()
            .unwrap_or_else(|| format!("https://{addr}"));
        let (kubeconfig_path, temp_dir) = match &opts.kubeconfig_out {
            Some(p) => (p.clone(), None),
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "cilia-apiserver-{}-{}",
                    std::process::id(),
                    addr.port()
                ));
                std::fs::create_dir_all(&dir).map_err(|source| StartError::Kubeconfig {
                    path: dir.clone(),
                    source,
                })?;
                (dir.join("kubeconfig"), Some(dir))
            }
        };
        let kc = tls::kubeconfig(&opts.cluster_name, &url, &pki.ca_pem, &token);
        write_private(&kubeconfig_path, &kc).map_err(|source| StartError::Kubeconfig {
            path: kubeconfig_path.clone(),
            source,
        })?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let state = Arc::new(server::ServerState {
            store: store.clone(),
            token: token.clone(),
            server_address: addr.to_string(),
            bookmark_interval: opts.bookmark_interval,
            shutdown: shutdown_rx,
        });
        tracing::info!(%url, kubeconfig = %kubeconfig_path.display(), "cilia-apiserver listening (test infrastructure)");
        Ok(Bound {
            listener,
            state,
            tls: pki.server_config,
            server: ApiServer {
                addr,
                url,
                token,
                ca_pem: pki.ca_pem,
                cluster_name: opts.cluster_name,
                kubeconfig_path,
                temp_dir,
                store,
                shutdown: shutdown_tx,
                thread: None,
            },
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The CA certificate (PEM) that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// A kubeconfig for this server with another token (e.g. a wrong one, for 401 tests).
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        tls::kubeconfig(&self.cluster_name, &self.url, &self.ca_pem, token)
    }

    /// Direct access to the objects, for assertions.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<server::ServerState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let state = state.clone();
                let mut conn_shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let svc = hyper::service::service_fn(move |req| server::handle(state.clone(), req));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        res = conn => {
                            if let Err(e) = res {
                                tracing::debug!(error = %e, "connection ended with an error");
                            }
                        }
                        _ = conn_shutdown.changed() => {}
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}
