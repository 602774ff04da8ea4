//! The Cilia CNI plugin: wires pods into the node's pod CIDR with a veth pair and /32 routes, with
//! addresses from an on-disk allocator over the `podCidr` the agent publishes in `node.json`.
//!
//! The binary (`src/main.rs`) only reads the environment and stdin and prints [`plugin::run`]'s
//! outcome. See `README.md` for the config format and error codes.

pub mod agent;
pub mod config;
pub mod datapath;
pub mod error;
pub mod ipam;
pub mod logging;
pub mod netns;
pub mod plugin;
pub mod result;
pub mod version;

pub use error::CniError;
pub use plugin::{Env, Outcome, run};
