//! The node's kernel state: map layouts shared with `ebpf/`, intent → datapath diffs, and the thin
//! edges (netlink, aya) that write them.

pub mod bpf;
pub mod endpoints;
pub mod lb;
pub mod lb_bpf;
pub mod lb_fixtures;
pub mod lb_maglev;
pub mod lb_maps;
pub mod maps;
pub mod netlink;
pub mod routes;
pub mod testrun;

pub use routes::{RTPROT_CILIA, RouteDiff};
