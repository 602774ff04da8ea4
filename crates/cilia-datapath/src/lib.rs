//! The node's kernel state: map layouts shared with `ebpf/`, intent → datapath diffs, and the thin
//! edges (netlink, aya) that write them.

pub mod bpf;
pub mod clock;
pub mod endpoints;
pub mod ethtool;
pub mod ipvlan;
pub mod l2;
pub mod lb;
pub mod lb_bpf;
pub mod lb_fixtures;
pub mod lb_intent;
pub mod lb_maglev;
pub mod lb_maps;
pub mod maps;
pub mod masq;
pub mod masq_bpf;
pub mod masq_fixtures;
pub mod masq_maps;
pub mod netlink;
pub mod policy;
pub mod routes;
pub mod testrun;

pub use routes::{RTPROT_CILIA, RouteDiff};
