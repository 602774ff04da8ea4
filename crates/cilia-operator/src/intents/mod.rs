//! The intent stream's server side: a synchronous index of every node's intent and version
//! (`index`), the per-node agent records behind metrics and status (`agents`), the node identity
//! of a client certificate (`identity`), and the gRPC service that forwards each node's changes to
//! its agent (`server`), the agents' presence for L2 announcements (`presence`), and the loop
//! that feeds the index (`feed`).

pub mod agents;
pub mod feed;
pub mod identity;
pub mod index;
pub mod presence;
pub mod server;

#[cfg(test)]
mod tests;
