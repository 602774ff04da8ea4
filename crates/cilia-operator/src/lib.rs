//! The Cilia operator as a library: cluster state in, one versioned intent per node out, served to
//! the agents over mutual TLS. Sources of cluster state plug in through a
//! `watch::Receiver<Arc<ClusterState>>`: the Kubernetes watchers (`k8s`), or a cluster file.

pub mod certs;
pub mod cluster_file;
pub mod intents;
pub mod k8s;
pub mod l2;
pub mod metrics;
pub mod policy;
pub mod serve;
pub mod tls;

pub use intents::index::{IntentIndex, NodeView, SharedIndex};
pub use intents::server::{IntentServer, StreamConfig};
