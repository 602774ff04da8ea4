//! The Cilia lab: network namespaces standing for nodes, pods, a LAN and an outside client, running
//! the real binaries against real kernel datapaths. Test infrastructure and the demo's stage.

pub mod bench;
pub mod helm;
pub mod l2lab;
pub mod lab;
pub mod netns;
pub mod pods;
pub mod traffic;

pub use lab::{Lab, NodeSpec, Pod, default_nodes, wait_until};
