//! The mutual-TLS contract of the intent stream, shared by the operator and the agents.
//!
//! A TLS directory holds what a `kubernetes.io/tls` Secret with `ca.crt` holds, so the chart's
//! Secrets mount as they are: the CA that signs both sides, the own certificate and its key (PEM).
//! An agent's client certificate names its node in the subject CN as `node/<name>`; the operator
//! accepts a hello only for that node.

/// The CA certificate both sides trust.
pub const CA_FILE: &str = "ca.crt";
/// This side's certificate (chain), PEM.
pub const CERT_FILE: &str = "tls.crt";
/// This side's private key, PEM (PKCS#8).
pub const KEY_FILE: &str = "tls.key";
/// The prefix of a node's client-certificate CN: `node/<name>`.
pub const NODE_CN_PREFIX: &str = "node/";

/// The subject CN of `node`'s client certificate.
pub fn node_common_name(node: &str) -> String {
    format!("{NODE_CN_PREFIX}{node}")
}

/// The node a client-certificate CN names, if it names one.
pub fn node_from_common_name(cn: &str) -> Option<&str> {
    cn.strip_prefix(NODE_CN_PREFIX).filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_round_trip() {
        assert_eq!(node_common_name("worker"), "node/worker");
        assert_eq!(node_from_common_name("node/worker"), Some("worker"));
        assert_eq!(node_from_common_name("node/"), None);
        assert_eq!(node_from_common_name("cilia-agent"), None);
    }
}
