//! The CNI spec versions this plugin speaks, and what each one allows.

use std::fmt;

use serde::Serialize;

/// A CNI spec version the plugin supports. Ordered oldest to newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every supported version, oldest first, as reported by VERSION.
pub const SUPPORTED_VERSIONS: [SpecVersion; 5] = [
    SpecVersion::V0_3_0,
    SpecVersion::V0_3_1,
    SpecVersion::V0_4_0,
    SpecVersion::V1_0_0,
    SpecVersion::V1_1_0,
];

/// The newest supported version; used when the caller named none we can echo.
pub const LATEST: SpecVersion = SpecVersion::V1_1_0;

/// Why a `cniVersion` string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionError {
    /// Not a `MAJOR.MINOR.PATCH` version at all (config error, code 7).
    Malformed,
    /// A well-formed version this plugin does not implement (code 1).
    Unsupported,
}

impl SpecVersion {
    /// Parses a `cniVersion` value.
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        if let Some(v) = SUPPORTED_VERSIONS.iter().find(|v| v.as_str() == s) {
            return Ok(*v);
        }
        let parts: Vec<&str> = s.split('.').collect();
        let well_formed = parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if well_formed {
            Err(VersionError::Unsupported)
        } else {
            Err(VersionError::Malformed)
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK arrived in 0.4.0.
    pub fn has_check(self) -> bool {
        self >= SpecVersion::V0_4_0
    }

    /// STATUS and GC arrived in 1.1.0.
    pub fn has_status_and_gc(self) -> bool {
        self >= SpecVersion::V1_1_0
    }

    /// Results before 1.0.0 carry `"version": "4"` on each IP.
    pub fn ips_carry_version(self) -> bool {
        self < SpecVersion::V1_0_0
    }

    /// Interfaces in results carry `mtu` from 1.1.0 on.
    pub fn interfaces_carry_mtu(self) -> bool {
        self >= SpecVersion::V1_1_0
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The VERSION result: `{cniVersion, supportedVersions}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<&'static str>,
}

/// Answers VERSION. The spec asks to echo the `cniVersion` given on input; when stdin names none
/// (older runtimes send nothing) or names one we cannot speak, the answer is in [`LATEST`].
pub fn version_result(requested: Option<&str>) -> VersionResult {
    let cni_version = requested
        .and_then(|r| SpecVersion::parse(r).ok())
        .unwrap_or(LATEST);
    VersionResult {
        cni_version: cni_version.as_str().to_string(),
        supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.as_str()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Exactly the five versions of the brief parse; others are told apart as unsupported vs malformed.
    #[test]
    fn parses_supported_and_refuses_others() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(SpecVersion::parse(v.as_str()), Ok(v));
        }
        for v in ["0.1.0", "0.2.0", "1.2.0", "2.0.0", "0.4.1"] {
            assert_eq!(SpecVersion::parse(v), Err(VersionError::Unsupported), "{v}");
        }
        for v in ["", "1.0", "one", "1.0.0.0", "1..0", "v1.0.0", " 1.0.0"] {
            assert_eq!(SpecVersion::parse(v), Err(VersionError::Malformed), "{v:?}");
        }
    }

    // Verbs appear with the spec version that introduced them.
    #[test]
    fn verbs_follow_version() {
        assert!(!SpecVersion::V0_3_1.has_check());
        assert!(SpecVersion::V0_4_0.has_check());
        assert!(!SpecVersion::V1_0_0.has_status_and_gc());
        assert!(SpecVersion::V1_1_0.has_status_and_gc());
        assert!(SpecVersion::V0_4_0.ips_carry_version());
        assert!(!SpecVersion::V1_0_0.ips_carry_version());
    }

    // VERSION echoes a supported request and falls back to the newest otherwise.
    #[test]
    fn version_result_negotiates() {
        let r = version_result(Some("0.4.0"));
        assert_eq!(r.cni_version, "0.4.0");
        assert_eq!(
            r.supported_versions,
            ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        );
        assert_eq!(version_result(None).cni_version, "1.1.0");
        assert_eq!(version_result(Some("0.2.0")).cni_version, "1.1.0");
        let json = serde_json::to_value(version_result(Some("1.0.0"))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "1.0.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
            })
        );
    }
}
