//! cilia-operator: turns the cluster into one intent per node and serves each node's intent to its
//! agent over gRPC with mutual TLS; `certs` generates the certificates that stream uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cilia_operator::StreamConfig;
use cilia_operator::certs::{self, CertRequest};
use cilia_operator::k8s::lease::{LeaseConfig, default_identity};
use cilia_operator::k8s::source::KubeSourceOptions;
use cilia_operator::serve::{ServeOptions, Source};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

/// The Cilia operator.
///
/// `serve` watches the cluster (Nodes, Services, EndpointSlices, CiliumLoadBalancerIPPools, the
/// `cilium-config` and `ip-masq-agent` ConfigMaps), assigns LoadBalancer addresses (LB-IPAM; the
/// leader of the `cilia-operator` Lease writes the statuses), computes every node's intent from
/// the cluster state and streams it to the node's agent
/// (gRPC, mutual TLS): a snapshot first — or nothing when the agent already holds the current
/// intent — then only what changed for that node. It tracks each node's acked version and
/// heartbeats and exposes them as Prometheus metrics. `certs` writes the CA and certificates the
/// stream needs, in the layout of the Helm chart's Secrets.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve node intents to the agents.
    Serve(Box<ServeArgs>),
    /// Generate the intent stream's CA, the operator's certificate and one client certificate per
    /// node (CN `node/<name>`), as the chart's genCA/genSignedCert would.
    ///
    /// Layout: <out>/ca.pem; <out>/operator/{ca.crt,tls.crt,tls.key} (Secret cilia-operator-tls);
    /// <out>/agents/<node>/{ca.crt,tls.crt,tls.key} (one per node). Pass <out>/operator to
    /// `serve --tls-dir` and <out>/agents/<node> to `cilia-agent --tls-dir`.
    Certs(CertsArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Kubeconfig of the cluster to watch (Nodes, Services, EndpointSlices, pools, ConfigMaps).
    /// Without it and without --cluster-file, the in-cluster service account is used.
    #[arg(long, conflicts_with = "cluster_file")]
    kubeconfig: Option<PathBuf>,
    /// Cluster state as JSON (nodes, routing config, services) instead of the Kubernetes API:
    /// for setups without an API server. Re-read whenever it changes; an invalid file is logged
    /// and ignored. No LB-IPAM and no leader election with this source.
    #[arg(long, env = "CILIA_CLUSTER_FILE")]
    cluster_file: Option<PathBuf>,
    /// How often the cluster file is checked for changes (a stat; read only when changed).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    cluster_file_poll: Duration,
    /// Namespace of the `cilium-config` and `ip-masq-agent` ConfigMaps and of the leader Lease
    /// (Cilium's `k8s-namespace`).
    #[arg(long, env = "CILIUM_K8S_NAMESPACE", default_value = "kube-system")]
    namespace: String,
    /// Contest leadership through a Lease; only the leader writes statuses. `false`: this
    /// replica always leads (run exactly one).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease (coordination.k8s.io/v1) in --namespace.
    #[arg(long, default_value = "cilia-operator")]
    leader_election_lease_name: String,
    /// This replica's holder identity; `_<pid>` is appended so restarts and replicas differ
    /// (default: the pod name or host name with a random suffix).
    #[arg(long, env = "CILIA_POD_NAME")]
    leader_election_identity: Option<String>,
    /// How long the Lease stays with a holder that stopped renewing (Cilium: 15s).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_election_lease_duration: Duration,
    /// The leader steps down when it could not renew for this long (Cilium: 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_election_renew_deadline: Duration,
    /// How often the leader renews and a standby retries (Cilium: 2s).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_election_retry_period: Duration,
    /// Status writes in flight at once (Service and pool statuses).
    #[arg(long, default_value_t = 32)]
    status_write_concurrency: usize,
    /// Address the intent service listens on (the chart's `intent.port` is 4250).
    #[arg(long, default_value = "0.0.0.0:4250")]
    listen: SocketAddr,
    /// Directory with ca.crt, tls.crt and tls.key (the mounted Secret cilia-operator-tls).
    /// Clients must present a certificate signed by ca.crt.
    #[arg(long, env = "CILIA_TLS_DIR")]
    tls_dir: PathBuf,
    /// Address of the Prometheus endpoint (/metrics, /healthz); Cilium's operator uses :9963.
    #[arg(long, default_value = "127.0.0.1:9963")]
    metrics_listen: SocketAddr,
    /// How often a heartbeat goes to every agent.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// An agent not heard from for this long loses its stream (default: 4 heartbeat intervals).
    #[arg(long, value_parser = parse_duration)]
    agent_timeout: Option<Duration>,
}

#[derive(clap::Args, Debug)]
struct CertsArgs {
    /// Directory to write into (created if missing; existing files are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Node names, comma-separated: one client certificate each.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Extra names or IP addresses of the operator (comma-separated), besides the chart's
    /// cilia-operator.<namespace>.svc names, localhost and 127.0.0.1.
    #[arg(long, value_delimiter = ',')]
    server_san: Vec<String>,
    /// Namespace the chart's service names are built from.
    #[arg(long, default_value = "kube-system")]
    namespace: String,
    /// Validity of every certificate, in days (the chart's `intent.tls.validityDays`).
    #[arg(long, default_value_t = certs::DEFAULT_VALIDITY_DAYS)]
    validity_days: u32,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?}: unit must be ms, s or m")),
    }
}

fn main() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Certs(a) => write_certs(a),
        Cmd::Serve(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(*a)),
    }
}

fn write_certs(a: CertsArgs) -> anyhow::Result<()> {
    let mut server_names = CertRequest::chart_server_names(&a.namespace);
    for s in a.server_san {
        if !server_names.contains(&s) {
            server_names.push(s);
        }
    }
    let req = CertRequest {
        nodes: a.nodes,
        server_names,
        validity_days: a.validity_days,
    };
    let bundle = certs::generate(&req)?;
    certs::write(&bundle, &a.out)?;
    println!(
        "wrote {}: ca.pem, operator/ (SANs: {}), agents/{{{}}}/",
        a.out.display(),
        req.server_names.join(", "),
        req.nodes.join(",")
    );
    Ok(())
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let source = match a.cluster_file {
        Some(path) => Source::ClusterFile {
            path,
            poll: a.cluster_file_poll,
        },
        None => Source::Kubernetes {
            kubeconfig: a.kubeconfig,
            options: KubeSourceOptions {
                config_namespace: a.namespace.clone(),
                write_concurrency: a.status_write_concurrency,
                ..KubeSourceOptions::default()
            },
            election: a.leader_elect.then(|| LeaseConfig {
                name: a.leader_election_lease_name.clone(),
                namespace: a.namespace.clone(),
                identity: a
                    .leader_election_identity
                    .clone()
                    .map(|id| format!("{id}_{}", std::process::id()))
                    .unwrap_or_else(default_identity),
                lease_duration: a.leader_election_lease_duration,
                renew_deadline: a.leader_election_renew_deadline,
                retry_period: a.leader_election_retry_period,
            }),
        },
    };
    let opts = ServeOptions {
        source,
        listen: a.listen,
        tls_dir: a.tls_dir,
        metrics_listen: a.metrics_listen,
        stream: StreamConfig {
            heartbeat_interval: a.heartbeat_interval,
            agent_timeout: a.agent_timeout.unwrap_or(a.heartbeat_interval * 4),
            ..StreamConfig::default()
        },
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    cilia_operator::serve::run(opts, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_and_durations() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("1h").is_err());
    }
}
