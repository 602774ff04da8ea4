//! Pure logic of Cilia: cluster state in, one `NodeIntent` per node out. No I/O lives here.

pub mod cluster;
pub mod intent;
pub mod lbipam;
pub mod selector;
pub mod node_local;

pub use cluster::{ClusterState, NodeInfo, RoutingConfig, RoutingMode};
pub use intent::{NodeIntent, RouteIntent, node_intent};
pub use node_local::NodeLocalConfig;
