//! The node agent as a library: the apply loop, the intent source, and the local API types that
//! `cilia-dbg` shares.

pub mod agent;
pub mod api;
pub mod source;
pub mod status;
