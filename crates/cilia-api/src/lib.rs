//! The user-facing API of Cilia: `cilium.io` CRD types, the `cilium-config` configuration model,
//! and their validation.
//!
//! - [`lbipam`]: `CiliumLoadBalancerIPPool` (v2 storage, v2alpha1 served and deprecated), the
//!   LB-IPAM condition vocabulary and pool ranges.
//! - [`l2`]: `CiliumL2AnnouncementPolicy` (v2alpha1) and the L2 announcement vocabulary.
//! - [`policy`]: `CiliumClusterwideNetworkPolicy` (v2), the L3/L4 subset Cilia enforces; every
//!   other Cilium rule field is kept and reported as unsupported by [`policy::Rule::validate`].
//! - [`selector`]: the label selector shared by all of them.
//! - [`config`]: `cilium-config` ConfigMap keys → [`config::CiliumConfig`], the ip-masq-agent
//!   file, and the Deckhouse module settings → Helm values mapping.
//! - [`crd`]: the CustomResourceDefinitions as written to `crds/` by the `crdgen` binary.
//!
//! Every validation error names the field path (or ConfigMap key) and the offending value.

pub mod config;
pub mod crd;
pub mod l2;
pub mod lbipam;
pub mod policy;
pub mod selector;

mod parse;
mod schema;

pub use parse::{ParseError, from_json_value, from_yaml};

/// API group of every Cilium custom resource.
pub const GROUP: &str = "cilium.io";

/// Every problem found in one object, in document order; displayed joined by `; `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations<E>(pub Vec<E>);

impl<E> Violations<E> {
    /// `Ok(())` when nothing was found.
    pub fn into_result(self) -> Result<(), Self> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The individual problems.
    pub fn iter(&self) -> std::slice::Iter<'_, E> {
        self.0.iter()
    }
}

impl<E: std::fmt::Display> std::fmt::Display for Violations<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<E: std::error::Error> std::error::Error for Violations<E> {}
