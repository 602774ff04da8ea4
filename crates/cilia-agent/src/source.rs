//! The file source of intents, kept beside the intent stream (`stream.rs`) for tests and setups
//! without an operator: cluster facts are read from a file and turned into this node's
//! `NodeIntent` by the same pure function the operator uses.

use std::path::PathBuf;

use cilia_model::{ClusterState, NodeIntent, node_intent};

pub struct FileSource {
    pub path: PathBuf,
    pub node: String,
    last: Option<Vec<u8>>,
}

impl FileSource {
    pub fn new(path: PathBuf, node: String) -> Self {
        FileSource {
            path,
            node,
            last: None,
        }
    }

    /// `None` when the file is unchanged since the last call; otherwise the new intent, or an error
    /// naming the file and what is wrong (the caller keeps what it had).
    pub fn poll(&mut self) -> Option<Result<NodeIntent, String>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                // Report a vanished file once, not on every poll.
                self.last.take()?;
                return Some(Err(format!("reading {}: {e}", self.path.display())));
            }
        };
        if self.last.as_deref() == Some(&bytes[..]) {
            return None;
        }
        self.last = Some(bytes.clone());
        Some(
            intent_from_bytes(&bytes, &self.node)
                .map_err(|e| format!("{}: {e}", self.path.display())),
        )
    }
}

/// Parses cluster facts and computes `node`'s intent.
pub fn intent_from_bytes(bytes: &[u8], node: &str) -> Result<NodeIntent, String> {
    let cluster: ClusterState =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid cluster state: {e}"))?;
    node_intent(&cluster, node).map_err(|e| e.to_string())
}

/// A short stable hash of an intent (its digest's first 16 hex digits), shown in status so equal
/// intents are recognisable, on any node and across restarts.
pub fn intent_hash(intent: &NodeIntent) -> String {
    intent.digest().short()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"{"nodes":[
        {"name":"a","internalIp":"172.18.0.2","podCidr":"10.244.0.0/24"},
        {"name":"b","internalIp":"172.18.0.3","podCidr":"10.244.1.0/24"}],
        "routing":{"mode":"native","autoDirectNodeRoutes":true}}"#;

    #[test]
    fn computes_the_nodes_intent() {
        let i = intent_from_bytes(CLUSTER.as_bytes(), "a").unwrap();
        assert_eq!(i.routes.len(), 1);
    }

    // Services, their EndpointSlices and the datapath settings in the file reach the intent as
    // the operator would compute them.
    #[test]
    fn services_and_datapath_settings_reach_the_intent() {
        let file = r#"{"nodes":[
            {"name":"a","internalIp":"172.18.0.2","podCidr":"10.244.0.0/24"},
            {"name":"b","internalIp":"172.18.0.3","podCidr":"10.244.1.0/24"}],
            "services":[{"namespace":"default","name":"web","clusterIps":["10.96.0.10"],
                "ports":[{"name":"http","protocol":"TCP","port":80}]}],
            "endpointSlices":[{"namespace":"default","name":"web-1","service":"web",
                "endpoints":[{"addresses":["10.244.1.5"],"nodeName":"b"}],
                "ports":[{"name":"http","protocol":"TCP","port":8080}]}],
            "datapath":{"kubeProxyReplacement":true,"masquerade":true}}"#;
        let i = intent_from_bytes(file.as_bytes(), "a").unwrap();
        let web = i.services.get("default/web").unwrap();
        assert_eq!(web.frontends.len(), 1);
        assert_eq!(web.backends.len(), 1);
        assert_eq!(web.backends[0].node.as_deref(), Some("b"));
        assert!(i.datapath.kube_proxy_replacement && i.datapath.masquerade);
    }

    // Bad input names what is wrong; the caller keeps its last intent.
    #[test]
    fn bad_input_is_reported_precisely() {
        let e = intent_from_bytes(br#"{"nodes":[{"name":"a","internalIp":"300.1.1.1"}]}"#, "a")
            .unwrap_err();
        assert!(
            e.contains("invalid cluster state") && e.contains("300.1.1.1")
                || e.contains("invalid IP"),
            "{e}"
        );
        let e = intent_from_bytes(CLUSTER.as_bytes(), "zz").unwrap_err();
        assert!(e.contains("\"zz\""), "{e}");
    }

    #[test]
    fn unchanged_file_yields_nothing() {
        let dir = std::env::temp_dir().join(format!("cilia-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("cluster.json");
        std::fs::write(&p, CLUSTER).unwrap();
        let mut s = FileSource::new(p.clone(), "a".into());
        assert!(matches!(s.poll(), Some(Ok(_))));
        assert!(s.poll().is_none());
        std::fs::write(&p, "garbage").unwrap();
        assert!(matches!(s.poll(), Some(Err(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
