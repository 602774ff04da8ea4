//! The network configuration the runtime hands the plugin on stdin, parsed and validated.
//!
//! # Format
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0",
//!   "name": "cilia",
//!   "type": "cilia-cni",
//!   "agent-state-dir": "/run/cilia",
//!   "ipam-data-dir": "/var/lib/cilia/ipam",
//!   "mtu": 1500,
//!   "log-file": "/var/log/cilia-cni.log"
//! }
//! ```
//!
//! | key | required | meaning |
//! |---|---|---|
//! | `cniVersion` | yes | one of `0.3.0`, `0.3.1`, `0.4.0`, `1.0.0`, `1.1.0`; results are shaped for it |
//! | `name` | yes | network name: `[A-Za-z0-9][A-Za-z0-9_.-]*`; IPAM state lives under `<ipam-data-dir>/<name>/` |
//! | `type` | yes | the plugin binary name (normally `cilia-cni`); not otherwise interpreted |
//! | `agent-state-dir` | no | absolute path of the agent's state dir holding `node.json`; default `/run/cilia` |
//! | `ipam-data-dir` | no | absolute path of the allocation store; default `/var/lib/cilia/ipam` |
//! | `mtu` | no | MTU for both veth ends, 68–65535; 0 or absent means "use `node.json`'s `mtu`, else the kernel default" |
//! | `log-file` | no | absolute path; `tracing` output is appended there (never to stdout) |
//!
//! Keys the runtime adds are understood too: `prevResult` (CHECK, and passed through on ADD),
//! `cni.dev/valid-attachments` (GC; the older spelling `cni.dev/attachments` is accepted as well).
//! `runtimeConfig`, `args`, `ipam`, `dns`, `capabilities` and unknown keys are ignored.
//!
//! A syntax error is code 6 naming line and column; a bad field is code 7 naming the field and its
//! value; a well-formed but unsupported `cniVersion` is code 1.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::CniError;
use crate::version::{LATEST, SpecVersion, VersionError};

/// Default `agent-state-dir`.
pub const DEFAULT_AGENT_STATE_DIR: &str = "/run/cilia";
/// Default `ipam-data-dir`.
pub const DEFAULT_IPAM_DATA_DIR: &str = "/var/lib/cilia/ipam";
/// The GC key of CNI 1.1.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The spelling an early 1.1 spec draft used; libcni sends both.
pub const VALID_ATTACHMENTS_KEY_OLD: &str = "cni.dev/attachments";

const MIN_MTU: u64 = 68;
const MAX_MTU: u64 = 65535;

/// A validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: SpecVersion,
    pub name: String,
    pub plugin_type: String,
    pub agent_state_dir: PathBuf,
    pub ipam_data_dir: PathBuf,
    /// `None` when unset or 0.
    pub mtu: Option<u32>,
    pub log_file: Option<PathBuf>,
    /// The runtime's `prevResult`, kept raw: only the verbs that need it decode it.
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC only).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// One `(containerID, ifname)` attachment named by GC as still valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Directory of this network's allocations: `<ipam-data-dir>/<name>`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam_data_dir.join(&self.name)
    }

    /// Path of the agent's node facts.
    pub fn node_config_path(&self) -> PathBuf {
        self.agent_state_dir
            .join(cilia_model::node_local::NODE_LOCAL_CONFIG_FILE)
    }
}

/// Parses and validates the network config bytes from stdin.
pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|source| CniError::Decode {
        what: "network config from stdin",
        source,
    })?;
    let Value::Object(obj) = value else {
        return Err(CniError::DecodeShape {
            what: "network config from stdin",
            reason: format!("expected a JSON object, got {}", json_kind(&value)),
        });
    };

    let version_raw = required_str(&obj, "cniVersion")?;
    let cni_version = match SpecVersion::parse(version_raw) {
        Ok(v) => v,
        Err(VersionError::Unsupported) => {
            return Err(CniError::IncompatibleVersion {
                version: version_raw.to_string(),
                reason: format!(
                    "supported versions are {}",
                    crate::version::SUPPORTED_VERSIONS
                        .map(|v| v.as_str())
                        .join(", ")
                ),
            });
        }
        Err(VersionError::Malformed) => {
            return Err(CniError::config(
                "cniVersion",
                show(&obj["cniVersion"]),
                "not a MAJOR.MINOR.PATCH version",
            ));
        }
    };

    let name = required_str(&obj, "name")?;
    if !is_valid_name(name) {
        return Err(CniError::config(
            "name",
            show(&obj["name"]),
            "must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
        ));
    }

    let plugin_type = required_str(&obj, "type")?;
    if plugin_type.is_empty() || plugin_type.contains(['/', '\\']) {
        return Err(CniError::config(
            "type",
            show(&obj["type"]),
            "must be a non-empty file name",
        ));
    }

    let agent_state_dir =
        optional_path(&obj, "agent-state-dir")?.unwrap_or_else(|| DEFAULT_AGENT_STATE_DIR.into());
    let ipam_data_dir =
        optional_path(&obj, "ipam-data-dir")?.unwrap_or_else(|| DEFAULT_IPAM_DATA_DIR.into());
    let log_file = optional_path(&obj, "log-file")?;
    let mtu = parse_mtu(&obj)?;

    let prev_result = match obj.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            return Err(CniError::config(
                "prevResult",
                show(other),
                "must be an object",
            ));
        }
    };

    let valid_attachments = match (
        obj.get(VALID_ATTACHMENTS_KEY),
        obj.get(VALID_ATTACHMENTS_KEY_OLD),
    ) {
        (Some(v), _) => Some(parse_attachments(VALID_ATTACHMENTS_KEY, v)?),
        (None, Some(v)) => Some(parse_attachments(VALID_ATTACHMENTS_KEY_OLD, v)?),
        (None, None) => None,
    };

    Ok(NetConf {
        cni_version,
        name: name.to_string(),
        plugin_type: plugin_type.to_string(),
        agent_state_dir,
        ipam_data_dir,
        mtu,
        log_file,
        prev_result,
        valid_attachments,
    })
}

/// The `cniVersion` to stamp on an error object: the one the config names if it is a version at
/// all, else the newest we speak. Never fails, whatever stdin holds.
pub fn error_version(bytes: &[u8]) -> String {
    let requested = serde_json::from_slice::<Value>(bytes).ok().and_then(|v| {
        v.get("cniVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    match requested {
        Some(v) if SpecVersion::parse(&v) != Err(VersionError::Malformed) => v,
        _ => LATEST.as_str().to_string(),
    }
}

/// Network names (and container IDs) per the spec: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub fn is_valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, CniError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        None => Err(CniError::config(
            field,
            "(missing)",
            "required string field is missing",
        )),
        Some(other) => Err(CniError::config(field, show(other), "must be a string")),
    }
}

fn optional_path(obj: &Map<String, Value>, field: &str) -> Result<Option<PathBuf>, CniError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if Path::new(s).is_absolute() => Ok(Some(PathBuf::from(s))),
        Some(other @ Value::String(_)) => Err(CniError::config(
            field,
            show(other),
            "must be an absolute path",
        )),
        Some(other) => Err(CniError::config(
            field,
            show(other),
            "must be a string holding an absolute path",
        )),
    }
}

fn parse_mtu(obj: &Map<String, Value>) -> Result<Option<u32>, CniError> {
    let Some(v) = obj.get("mtu") else {
        return Ok(None);
    };
    let reason =
        format!("must be an integer between {MIN_MTU} and {MAX_MTU}, or 0 for the default");
    match v.as_u64() {
        Some(0) => Ok(None),
        Some(n) if (MIN_MTU..=MAX_MTU).contains(&n) => Ok(Some(n as u32)),
        _ => Err(CniError::config("mtu", show(v), reason)),
    }
}

fn parse_attachments(key: &str, v: &Value) -> Result<Vec<Attachment>, CniError> {
    let Value::Array(items) = v else {
        return Err(CniError::config(
            key,
            show(v),
            "must be an array of {containerID, ifname}",
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str| -> Result<String, CniError> {
                match item.get(name) {
                    Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                    other => Err(CniError::config(
                        &format!("{key}[{i}].{name}"),
                        other.map(show).unwrap_or_else(|| "(missing)".into()),
                        "must be a non-empty string",
                    )),
                }
            };
            Ok(Attachment {
                container_id: field("containerID")?,
                ifname: field("ifname")?,
            })
        })
        .collect()
}

/// A config value as it appears in JSON, cut short so an error message stays one line.
pub(crate) fn show(v: &Value) -> String {
    const MAX: usize = 80;
    let s = v.to_string();
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error;

    const GOOD: &str = r#"{"cniVersion":"1.0.0","name":"cilia","type":"cilia-cni",
        "agent-state-dir":"/run/cilia-test","ipam-data-dir":"/tmp/ipam","mtu":1450,
        "log-file":"/tmp/cni.log"}"#;

    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        v[field] = value;
        serde_json::to_vec(&v).unwrap()
    }

    fn without(field: &str) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(GOOD).unwrap();
        v.as_object_mut().unwrap().remove(field);
        serde_json::to_vec(&v).unwrap()
    }

    // Every documented key is read; the IPAM dir nests the network name.
    #[test]
    fn parses_full_config() {
        let c = parse(GOOD.as_bytes()).unwrap();
        assert_eq!(c.cni_version, SpecVersion::V1_0_0);
        assert_eq!(c.name, "cilia");
        assert_eq!(c.plugin_type, "cilia-cni");
        assert_eq!(c.agent_state_dir, Path::new("/run/cilia-test"));
        assert_eq!(c.node_config_path(), Path::new("/run/cilia-test/node.json"));
        assert_eq!(c.ipam_dir(), Path::new("/tmp/ipam/cilia"));
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(c.log_file.as_deref(), Some(Path::new("/tmp/cni.log")));
        assert_eq!(c.prev_result, None);
        assert_eq!(c.valid_attachments, None);
    }

    // Optional keys fall back to the documented defaults.
    #[test]
    fn defaults_apply() {
        let c = parse(br#"{"cniVersion":"1.1.0","name":"cilia","type":"cilia-cni"}"#).unwrap();
        assert_eq!(c.agent_state_dir, Path::new(DEFAULT_AGENT_STATE_DIR));
        assert_eq!(c.ipam_data_dir, Path::new(DEFAULT_IPAM_DATA_DIR));
        assert_eq!(c.mtu, None);
        assert_eq!(c.log_file, None);
        assert_eq!(parse(&with("mtu", 0.into())).unwrap().mtu, None);
    }

    // The spec's own ADD example config (Appendix) is accepted: its extra keys are ignored.
    #[test]
    fn accepts_spec_example_config() {
        let spec_example = r#"{
            "cniVersion": "1.0.0",
            "name": "dbnet",
            "type": "bridge",
            "bridge": "cni0",
            "keyA": ["some more", "plugin specific", "configuration"],
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/16", "gateway": "10.1.0.1"},
            "dns": {"nameservers": ["10.1.0.1"]}
        }"#;
        let c = parse(spec_example.as_bytes()).unwrap();
        assert_eq!(c.name, "dbnet");
        assert_eq!(c.plugin_type, "bridge");
    }

    // Syntax errors are code 6 and say where the parser stopped.
    #[test]
    fn malformed_json_is_code_6_with_position() {
        let err = parse(br#"{"cniVersion": "1.0.0", "name": }"#).unwrap_err();
        assert_eq!(err.code(), error::DECODE_FAILURE);
        assert!(err.to_string().contains("line 1 column 33"), "{err}");
        let err = parse(b"").unwrap_err();
        assert_eq!(err.code(), error::DECODE_FAILURE);
        let err = parse(b"[1,2]").unwrap_err();
        assert_eq!(err.code(), error::DECODE_FAILURE);
        assert!(err.to_string().contains("expected a JSON object"), "{err}");
    }

    // Each bad field is code 7 and the message names the field and the offending value.
    #[test]
    fn bad_fields_are_code_7_naming_field_and_value() {
        let cases: Vec<(Vec<u8>, &str, &str)> = vec![
            (with("mtu", "big".into()), "mtu", "\"big\""),
            (with("mtu", 40.into()), "mtu", "40"),
            (with("mtu", 70000.into()), "mtu", "70000"),
            (with("mtu", (-1).into()), "mtu", "-1"),
            (with("mtu", 1500.5.into()), "mtu", "1500.5"),
            (with("name", "../etc".into()), "name", "\"../etc\""),
            (with("name", "".into()), "name", "\"\""),
            (with("name", 5.into()), "name", "5"),
            (without("name"), "name", "(missing)"),
            (with("type", "a/b".into()), "type", "\"a/b\""),
            (without("type"), "type", "(missing)"),
            (
                with("agent-state-dir", "relative/dir".into()),
                "agent-state-dir",
                "\"relative/dir\"",
            ),
            (with("ipam-data-dir", true.into()), "ipam-data-dir", "true"),
            (
                with("log-file", "log.txt".into()),
                "log-file",
                "\"log.txt\"",
            ),
            (with("cniVersion", "one".into()), "cniVersion", "\"one\""),
            (with("cniVersion", 1.into()), "cniVersion", "1"),
            (without("cniVersion"), "cniVersion", "(missing)"),
            (with("prevResult", "x".into()), "prevResult", "\"x\""),
        ];
        for (bytes, field, value) in cases {
            let err = parse(&bytes).unwrap_err();
            assert_eq!(err.code(), error::INVALID_CONFIG, "{field}: {err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{field:?}")),
                "{msg} should name {field}"
            );
            assert!(msg.contains(value), "{msg} should name {value}");
        }
    }

    // A well-formed version we do not speak is code 1, not a config error.
    #[test]
    fn unsupported_version_is_code_1() {
        for v in ["0.2.0", "0.1.0", "2.0.0"] {
            let err = parse(&with("cniVersion", v.into())).unwrap_err();
            assert_eq!(err.code(), error::INCOMPATIBLE_VERSION, "{v}");
            assert!(err.to_string().contains(v));
        }
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert_eq!(
                parse(&with("cniVersion", v.into()))
                    .unwrap()
                    .cni_version
                    .as_str(),
                v
            );
        }
    }

    // GC's valid attachments are read from either spelling, and each entry is validated.
    #[test]
    fn parses_valid_attachments() {
        let list = serde_json::json!([{"containerID": "c1", "ifname": "eth0"}]);
        let c = parse(&with(VALID_ATTACHMENTS_KEY, list.clone())).unwrap();
        let expected = vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        assert_eq!(c.valid_attachments.as_ref(), Some(&expected));
        let c = parse(&with(VALID_ATTACHMENTS_KEY_OLD, list)).unwrap();
        assert_eq!(c.valid_attachments, Some(expected));

        let bad = serde_json::json!([{"containerID": "c1"}]);
        let err = parse(&with(VALID_ATTACHMENTS_KEY, bad)).unwrap_err();
        assert_eq!(err.code(), error::INVALID_CONFIG);
        assert!(
            err.to_string()
                .contains("cni.dev/valid-attachments[0].ifname"),
            "{err}"
        );
        let err = parse(&with(VALID_ATTACHMENTS_KEY, "all".into())).unwrap_err();
        assert_eq!(err.code(), error::INVALID_CONFIG);
    }

    // Error objects echo the config's version when it is one, else the newest.
    #[test]
    fn error_version_is_lenient() {
        assert_eq!(error_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(error_version(br#"{"cniVersion":"0.2.0"}"#), "0.2.0");
        assert_eq!(error_version(br#"{"cniVersion":"junk"}"#), "1.1.0");
        assert_eq!(error_version(b"not json"), "1.1.0");
        assert_eq!(error_version(b""), "1.1.0");
    }

    #[test]
    fn names_follow_spec_charset() {
        for ok in ["cilia", "a", "0", "k8s-pod-network", "a_b.c-d"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".", "..", "a/b", "a b", "é", "_x"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }
}
