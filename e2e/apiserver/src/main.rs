//! `cilia-apiserver`: the lab's in-memory Kubernetes API server (test infrastructure).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cilia_apiserver::{ApiServer, ApiServerOptions, parse_ipv4_cidr};
use clap::Parser;

/// An in-memory Kubernetes API server for the Cilia lab and end-to-end tests.
///
/// TEST INFRASTRUCTURE ONLY: objects live in memory, the CA is generated per start, and a single
/// bearer token grants everything. It serves what kubectl, the Helm engine and kube-rs use:
/// discovery, OpenAPI, CRUD + watch for core kinds and every CRD created, server-side apply,
/// CRD schema validation and server-side printing.
///
/// On start it writes a kubeconfig (server URL, CA data, token) and prints one line,
/// `listening on https://ADDR`, to stdout. It stops on SIGINT or SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "cilia-apiserver", version)]
struct Args {
    /// Address to listen on (`127.0.0.1:0` picks a free port; use a lab namespace address to
    /// serve the lab).
    #[arg(long, default_value = "127.0.0.1:0", env = "CILIA_APISERVER_LISTEN")]
    listen: SocketAddr,

    /// Where to write the kubeconfig for clients.
    #[arg(long, value_name = "PATH", env = "CILIA_APISERVER_KUBECONFIG_OUT")]
    kubeconfig_out: PathBuf,

    /// Bearer token clients must send (generated and written to the kubeconfig when omitted).
    #[arg(long, env = "CILIA_APISERVER_TOKEN", conflicts_with = "token_file")]
    token: Option<String>,

    /// Read the bearer token from this file instead.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Server URL to put in the kubeconfig (default: https://<bound address>).
    #[arg(long, value_name = "URL")]
    server_url: Option<String>,

    /// Extra DNS name or IP for the serving certificate (repeatable).
    #[arg(long = "san", value_name = "NAME_OR_IP")]
    sans: Vec<String>,

    /// Service ClusterIP range; its first address is the `kubernetes` Service's.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: String,

    /// Watch events kept per resource for resuming watches (older ones get 410 Gone).
    #[arg(long, default_value_t = 10_000)]
    watch_history: usize,

    /// Seconds between BOOKMARK events on watches that allow them.
    #[arg(long, default_value_t = 5)]
    bookmark_interval_secs: u64,

    /// Cluster/context name in the kubeconfig.
    #[arg(long, default_value = "cilia-lab")]
    cluster_name: String,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let service_cidr = parse_ipv4_cidr(&args.service_cidr)
        .with_context(|| format!("--service-cidr {:?} is not an IPv4 CIDR", args.service_cidr))?;
    let opts = ApiServerOptions {
        listen: args.listen,
        token,
        kubeconfig_out: Some(args.kubeconfig_out),
        server_url: args.server_url,
        extra_sans: args.sans,
        service_cidr,
        watch_history: args.watch_history,
        bookmark_interval: Duration::from_secs(args.bookmark_interval_secs.max(1)),
        cluster_name: args.cluster_name,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = ApiServer::spawn(opts).await?;
        println!("listening on {}", server.url());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        drop(server);
        anyhow::Ok(())
    })
}
