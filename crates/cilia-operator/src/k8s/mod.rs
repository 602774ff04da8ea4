//! The operator's Kubernetes edge: watchers feeding a synchronous store (`source`), the pure
//! conversions from Kubernetes objects to the model (`convert`, `config`), LB-IPAM's status
//! patches (`status`) and leader election over a Lease (`lease`).

pub mod config;
pub mod convert;
pub mod l2_leases;
pub mod lease;
pub mod policy_status;
pub mod source;
pub mod status;

#[cfg(test)]
mod tests;
