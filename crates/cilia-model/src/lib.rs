//! Pure logic of Cilia: cluster state in, one `NodeIntent` per node out. No I/O lives here.

pub mod cluster;
pub mod delta;
pub mod digest;
pub mod incremental;
pub mod intent;
pub mod l2;
pub mod lbipam;
pub mod node_local;
pub mod policy;
pub mod selector;
pub mod service;
#[cfg(test)]
pub(crate) mod testgen;

pub use cluster::{ClusterState, NodeInfo, RoutingConfig, RoutingMode};
pub use digest::IntentDigest;
pub use intent::{NodeFacts, NodeIntent, RouteIntent, node_intent};
pub use node_local::NodeLocalConfig;
