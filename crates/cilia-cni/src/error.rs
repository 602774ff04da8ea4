//! Every way the plugin can fail, each mapped to one CNI error code and rendered as the spec's error
//! object `{cniVersion, code, msg, details}`.
//!
//! Codes 1–99 are the spec's well-known ones; 100 and up are ours:
//!
//! | code | meaning |
//! |---|---|
//! | 1 | incompatible CNI version (unsupported `cniVersion`, or a verb the requested version lacks) |
//! | 3 | the container's network namespace (`CNI_NETNS`) does not exist |
//! | 4 | a required `CNI_*` variable is missing or invalid; the message names it |
//! | 5 | I/O failure (stdin, IPAM store, opening the netns) |
//! | 6 | the network config on stdin is not valid JSON (or not an object); names line and column |
//! | 7 | a config field is missing or invalid; names the field and the value |
//! | 11 | the agent's node facts (`node.json`) are missing or unreadable: try again later |
//! | 50 | STATUS: the plugin cannot serve ADD because `node.json` is missing or unreadable |
//! | 100 | [`IPAM_EXHAUSTED`]: no free address left in the pod CIDR; names the CIDR |
//! | 101 | [`DATAPATH_FAILED`]: a netlink operation (veth, address, route) failed |
//! | 102 | [`CHECK_FAILED`]: CHECK found a missing or wrong interface, address, route or IP reservation |
//! | 103 | [`INTERFACE_EXISTS`]: `CNI_IFNAME` already exists inside the container |

use std::io;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;

/// Spec code 1.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Spec code 3.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Spec code 4.
pub const INVALID_ENVIRONMENT: u32 = 4;
/// Spec code 5.
pub const IO_FAILURE: u32 = 5;
/// Spec code 6.
pub const DECODE_FAILURE: u32 = 6;
/// Spec code 7.
pub const INVALID_CONFIG: u32 = 7;
/// Spec code 11.
pub const TRY_AGAIN_LATER: u32 = 11;
/// Spec code 50 (1.1, STATUS).
pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific: the pod CIDR has no free address.
pub const IPAM_EXHAUSTED: u32 = 100;
/// Plugin-specific: a netlink operation failed.
pub const DATAPATH_FAILED: u32 = 101;
/// Plugin-specific: CHECK found the attachment not as `prevResult` describes it.
pub const CHECK_FAILED: u32 = 102;
/// Plugin-specific: the container already has an interface named `CNI_IFNAME`.
pub const INTERFACE_EXISTS: u32 = 103;

/// A failed plugin invocation. `Display` is the short `msg`; [`CniError::details`] the long one.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("incompatible CNI version {version:?}: {reason}")]
    IncompatibleVersion { version: String, reason: String },

    #[error("container network namespace {path:?} (CNI_NETNS) does not exist")]
    UnknownContainer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnvironment { var: &'static str, reason: String },

    #[error("I/O failure: {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("failed to decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("failed to decode {what}: {reason}")]
    DecodeShape { what: &'static str, reason: String },

    #[error("invalid network config field {field:?} = {value}: {reason}")]
    InvalidConfig {
        field: String,
        value: String,
        reason: String,
    },

    #[error("node facts {path:?} not available yet ({reason}); is the cilia agent running?")]
    NodeNotReady { path: PathBuf, reason: String },

    #[error("plugin not available: node facts {path:?} unreadable ({reason})")]
    PluginNotAvailable { path: PathBuf, reason: String },

    #[error("IPAM range exhausted: no free address left in pod CIDR {cidr}")]
    IpamExhausted { cidr: Ipv4Net },

    #[error("datapath setup failed: {step}")]
    Datapath {
        step: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("CHECK failed: {0}")]
    CheckFailed(String),

    #[error("interface {ifname:?} (CNI_IFNAME) already exists in container netns {netns:?}")]
    InterfaceExists { ifname: String, netns: PathBuf },

    #[error("the agent did not put the endpoint in place: {0}")]
    AgentNotReady(#[from] crate::agent::AgentError),
}

impl CniError {
    /// The CNI error code of this failure.
    pub fn code(&self) -> u32 {
        match self {
            CniError::IncompatibleVersion { .. } => INCOMPATIBLE_VERSION,
            CniError::UnknownContainer { .. } => UNKNOWN_CONTAINER,
            CniError::InvalidEnvironment { .. } => INVALID_ENVIRONMENT,
            CniError::Io { .. } => IO_FAILURE,
            CniError::Decode { .. } | CniError::DecodeShape { .. } => DECODE_FAILURE,
            CniError::InvalidConfig { .. } => INVALID_CONFIG,
            CniError::NodeNotReady { .. } | CniError::AgentNotReady(_) => TRY_AGAIN_LATER,
            CniError::PluginNotAvailable { .. } => PLUGIN_NOT_AVAILABLE,
            CniError::IpamExhausted { .. } => IPAM_EXHAUSTED,
            CniError::Datapath { .. } => DATAPATH_FAILED,
            CniError::CheckFailed(_) => CHECK_FAILED,
            CniError::InterfaceExists { .. } => INTERFACE_EXISTS,
        }
    }

    /// The long message: the short one followed by every underlying cause.
    pub fn details(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    /// Shorthand for an [`CniError::Io`] with context.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        CniError::Io {
            what: what.into(),
            source,
        }
    }

    /// Shorthand for an [`CniError::InvalidConfig`].
    pub fn config(field: &str, value: impl Into<String>, reason: impl Into<String>) -> Self {
        CniError::InvalidConfig {
            field: field.to_string(),
            value: value.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for an [`CniError::Datapath`].
    pub fn datapath(step: impl Into<String>, source: rtnetlink::Error) -> Self {
        CniError::Datapath {
            step: step.into(),
            source,
        }
    }

    /// The spec's error object, for stdout.
    pub fn to_object(&self, cni_version: &str) -> ErrorObject {
        ErrorObject {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg: self.to_string(),
            details: self.details(),
        }
    }
}

/// The error result type of the CNI spec (section 5, "Error").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ErrorObject {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each failure kind carries the code the README documents; a renumbering must be deliberate.
    #[test]
    fn codes_are_stable() {
        let io_err = || io::Error::from(io::ErrorKind::NotFound);
        let cases: Vec<(CniError, u32)> = vec![
            (
                CniError::IncompatibleVersion {
                    version: "9.9.9".into(),
                    reason: "x".into(),
                },
                1,
            ),
            (
                CniError::UnknownContainer {
                    path: "/x".into(),
                    source: io_err(),
                },
                3,
            ),
            (
                CniError::InvalidEnvironment {
                    var: "CNI_NETNS",
                    reason: "missing".into(),
                },
                4,
            ),
            (CniError::io("stdin", io_err()), 5),
            (
                CniError::DecodeShape {
                    what: "network config",
                    reason: "x".into(),
                },
                6,
            ),
            (CniError::config("mtu", "\"x\"", "bad"), 7),
            (
                CniError::NodeNotReady {
                    path: "/run/cilia/node.json".into(),
                    reason: "x".into(),
                },
                11,
            ),
            (
                CniError::PluginNotAvailable {
                    path: "/x".into(),
                    reason: "x".into(),
                },
                50,
            ),
            (
                CniError::IpamExhausted {
                    cidr: "10.0.0.0/30".parse().unwrap(),
                },
                100,
            ),
            (
                CniError::datapath("x", rtnetlink::Error::RequestFailed),
                101,
            ),
            (CniError::CheckFailed("x".into()), 102),
            (
                CniError::InterfaceExists {
                    ifname: "eth0".into(),
                    netns: "/x".into(),
                },
                103,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    // The error object has exactly the spec's four keys, and details carry the cause chain.
    #[test]
    fn error_object_has_spec_shape() {
        let err = CniError::io("reading stdin", io::Error::other("broken pipe"));
        let v = serde_json::to_value(err.to_object("1.0.0")).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<_> = obj.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["cniVersion", "code", "details", "msg"]);
        assert_eq!(v["code"], 5);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(
            v["details"].as_str().unwrap().ends_with("broken pipe"),
            "{v}"
        );
    }
}
