//! Certificates for the intent stream, generated as the chart generates them: one CA
//! (`genCA "cilia-intent-ca"`), a server certificate for the operator (`genSignedCert
//! "cilia-operator" nil $dnsNames`), and a client certificate per node whose CN is `node/<name>`.
//! Written in the layout of the chart's Secrets (`ca.crt`, `tls.crt`, `tls.key`), so the lab
//! generates the certificates the chart would and mounts them the same way:
//!
//! ```text
//! <out>/ca.pem                          the CA certificate
//! <out>/operator/{ca.crt,tls.crt,tls.key}      = Secret cilia-operator-tls
//! <out>/agents/<node>/{ca.crt,tls.crt,tls.key} = the agent Secret of <node>
//! ```
//!
//! The CA key is not written (the chart keeps it nowhere either): adding a node means generating
//! the set again.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cilia_proto::tls::{CA_FILE, CERT_FILE, KEY_FILE, node_common_name};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The CN of the CA, as the chart's `genCA` names it.
pub const CA_COMMON_NAME: &str = "cilia-intent-ca";
/// The CN of the operator's server certificate, as the chart's `genSignedCert` names it.
pub const SERVER_COMMON_NAME: &str = "cilia-operator";
/// Default validity, as the chart's `intent.tls.validityDays`.
pub const DEFAULT_VALIDITY_DAYS: u32 = 1095;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0:?} is not a node name: {1}")]
    BadNode(String, cilia_proto::ProtoError),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    pub nodes: Vec<String>,
    /// DNS names and IP addresses the operator's certificate is valid for.
    pub server_names: Vec<String>,
    pub validity_days: u32,
}

impl CertRequest {
    /// The names the chart puts into the operator's certificate (`cilia-operator`,
    /// `cilia-operator.<ns>`, `….svc`, `….svc.cluster.local`), plus loopback.
    pub fn chart_server_names(namespace: &str) -> Vec<String> {
        vec![
            "cilia-operator".into(),
            format!("cilia-operator.{namespace}"),
            format!("cilia-operator.{namespace}.svc"),
            format!("cilia-operator.{namespace}.svc.cluster.local"),
            "localhost".into(),
            "127.0.0.1".into(),
        ]
    }

    /// The chart's names in `kube-system` plus `extra` (the lab adds the operator's LAN address).
    pub fn lab(nodes: &[&str], extra: &[&str]) -> Self {
        let mut server_names = Self::chart_server_names("kube-system");
        server_names.extend(extra.iter().map(|s| s.to_string()));
        CertRequest {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            server_names,
            validity_days: DEFAULT_VALIDITY_DAYS,
        }
    }
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything `generate` made.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub ca_pem: String,
    pub server: CertPair,
    pub nodes: Vec<(String, CertPair)>,
}

/// Generates the CA, the operator's certificate and one client certificate per node.
pub fn generate(req: &CertRequest) -> Result<Bundle, CertError> {
    for n in &req.nodes {
        cilia_proto::node_name("node", n).map_err(|e| CertError::BadNode(n.clone(), e))?;
    }
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca, req.validity_days);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |cn: &str, sans: Vec<String>, usage| -> Result<CertPair, CertError> {
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        set_validity(&mut p, req.validity_days);
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    };
    let server = leaf(
        SERVER_COMMON_NAME,
        req.server_names.clone(),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let nodes = req
        .nodes
        .iter()
        .map(|n| {
            leaf(
                &node_common_name(n),
                Vec::new(),
                ExtendedKeyUsagePurpose::ClientAuth,
            )
            .map(|p| (n.clone(), p))
        })
        .collect::<Result<_, _>>()?;
    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        server,
        nodes,
    })
}

/// The directory holding the operator's TLS files inside `out`.
pub fn operator_dir(out: &Path) -> PathBuf {
    out.join("operator")
}

/// The directory holding `node`'s TLS files inside `out`.
pub fn agent_dir(out: &Path, node: &str) -> PathBuf {
    out.join("agents").join(node)
}

/// Writes `b` into `out` in the layout described in the module docs; keys are mode 0600.
pub fn write(b: &Bundle, out: &Path) -> Result<(), CertError> {
    write_file(&out.join("ca.pem"), &b.ca_pem, false)?;
    write_tls_dir(&operator_dir(out), &b.ca_pem, &b.server)?;
    for (node, pair) in &b.nodes {
        write_tls_dir(&agent_dir(out, node), &b.ca_pem, pair)?;
    }
    Ok(())
}

fn write_tls_dir(dir: &Path, ca: &str, pair: &CertPair) -> Result<(), CertError> {
    write_file(&dir.join(CA_FILE), ca, false)?;
    write_file(&dir.join(CERT_FILE), &pair.cert_pem, false)?;
    write_file(&dir.join(KEY_FILE), &pair.key_pem, true)
}

fn write_file(path: &Path, content: &str, secret: bool) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, content.as_bytes()).map_err(err)
}

/// The DER of the first certificate in `pem`.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .map(|(_, p)| p.contents)
}

/// Valid from yesterday (clock skew between nodes) to `days` from today.
fn set_validity(p: &mut CertificateParams, days: u32) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let ymd = |day: i64| {
        let (y, m, d) = civil_from_days(day);
        rcgen::date_time_ymd(y, m, d)
    };
    p.not_before = ymd(today - 1);
    p.not_after = ymd(today + days as i64);
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + if m <= 2 { 1 } else { 0 }) as i32;
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    // The layout mirrors the chart's Secrets, one directory per party; keys are private.
    #[test]
    fn writes_the_chart_layout() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let b = generate(&CertRequest::lab(&["worker"], &["172.18.0.2"])).unwrap();
        write(&b, dir.path()).unwrap();
        for d in [operator_dir(dir.path()), agent_dir(dir.path(), "worker")] {
            for f in [CA_FILE, CERT_FILE, KEY_FILE] {
                assert!(d.join(f).exists(), "{}", d.join(f).display());
            }
            let mode = std::fs::metadata(d.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(dir.path().join("ca.pem").exists());
    }

    // The server certificate carries the lab address as an IP SAN, next to the chart's names.
    #[test]
    fn server_certificate_names_the_operator() {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let b = generate(&CertRequest::lab(&[], &["172.18.0.2"])).unwrap();
        let der = pem_to_der(&b.server.cert_pem).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap().value;
        let names: Vec<String> = san
            .general_names
            .iter()
            .map(|g| match g {
                GeneralName::DNSName(d) => d.to_string(),
                GeneralName::IPAddress(ip) => format!("{ip:?}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert!(
            names.contains(&"cilia-operator.kube-system.svc".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&format!("{:?}", [172u8, 18, 0, 2])),
            "{names:?}"
        );
    }

    #[test]
    fn bad_node_names_are_refused() {
        assert!(matches!(
            generate(&CertRequest::lab(&["Bad_Name"], &[])),
            Err(CertError::BadNode(..))
        ));
    }
}
