//! The node a client certificate speaks for. rustls has already checked the chain against the CA;
//! here the verified leaf's subject CN is read, and it must be `node/<name>` with a valid node name.

use cilia_proto::tls::{NODE_CN_PREFIX, node_from_common_name};
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate is not parseable X.509: {0}")]
    Unparseable(String),
    #[error("client certificate CN {0:?} does not name a node (want {NODE_CN_PREFIX}<name>)")]
    NotANode(String),
}

/// The node named by the leaf certificate (DER) of a verified client chain.
pub fn node_from_certificate(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| IdentityError::NotANode(String::new()))?;
    let node = node_from_common_name(cn).ok_or_else(|| IdentityError::NotANode(cn.to_string()))?;
    cilia_proto::node_name("cn", node).map_err(|_| IdentityError::NotANode(cn.to_string()))
}

/// The node of the client certificate the request arrived with.
pub fn node_from_request<T>(req: &tonic::Request<T>) -> Result<String, IdentityError> {
    let certs = req.peer_certs().ok_or(IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoCertificate)?;
    node_from_certificate(leaf.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{self, CertRequest};

    // A node's client certificate names exactly that node; the operator's own does not name one.
    #[test]
    fn client_certificates_name_their_node() {
        let b = certs::generate(&CertRequest::lab(&["worker", "worker2"], &[])).unwrap();
        for (node, pair) in &b.nodes {
            let der = certs::pem_to_der(&pair.cert_pem).unwrap();
            assert_eq!(node_from_certificate(&der).unwrap(), *node);
        }
        let der = certs::pem_to_der(&b.server.cert_pem).unwrap();
        assert_eq!(
            node_from_certificate(&der),
            Err(IdentityError::NotANode("cilia-operator".into()))
        );
        assert!(matches!(
            node_from_certificate(b"garbage"),
            Err(IdentityError::Unparseable(_))
        ));
    }
}
