//! The node agent as a library: the apply loop, the intent sources (the operator's stream, or a
//! cluster file), and the local API types that `cilia-dbg` shares.

pub mod agent;
pub mod announcer;
pub mod api;
pub mod enforcer;
pub mod lb;
pub mod masq;
pub mod source;
pub mod status;
pub mod stream;
