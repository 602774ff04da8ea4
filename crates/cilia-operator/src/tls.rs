//! The operator's side of mutual TLS: its certificate and key, and the CA every client certificate
//! must chain to (a client without one cannot complete the handshake).

use std::path::{Path, PathBuf};

use cilia_proto::tls::{CA_FILE, CERT_FILE, KEY_FILE};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
#[error("reading {path}: {source}")]
pub struct TlsDirError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The PEM contents of a TLS directory (`ca.crt`, `tls.crt`, `tls.key`).
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl TlsFiles {
    pub fn read(dir: &Path) -> Result<Self, TlsDirError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read(&path).map_err(|source| TlsDirError { path, source })
        };
        Ok(TlsFiles {
            ca: read(CA_FILE)?,
            cert: read(CERT_FILE)?,
            key: read(KEY_FILE)?,
        })
    }

    /// Serving with these files, requiring a client certificate signed by the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(false)
            .timeout(std::time::Duration::from_secs(10))
    }
}
