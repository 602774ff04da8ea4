//! The Cilia operator as a library: cluster state in, one versioned intent per node out, served to
//! the agents over mutual TLS. Sources of cluster state plug in through a
//! `watch::Receiver<Arc<ClusterState>>` (today the cluster file, later the Kubernetes watchers).

pub mod certs;
pub mod cluster_file;
pub mod intents;
pub mod metrics;
pub mod serve;
pub mod tls;

pub use intents::index::{IntentIndex, NodeView, SharedIndex};
pub use intents::server::{IntentServer, StreamConfig};
