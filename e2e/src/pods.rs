//! Pods as API objects. The lab's pods are network namespaces wired by `cilia-cni`; with no
//! kubelet in the lab, this does what a kubelet would after the CNI plugin returned: the Pod object
//! exists, is bound to its node (`spec.nodeName`) and reports the address the plugin gave it
//! (`status.podIP`, `status.podIPs`, phase `Running`). The operator's Pod watcher (policy
//! endpoints) reads exactly those fields.

use anyhow::Context;
use serde_json::json;

use crate::lab::{Lab, Pod};

impl Lab {
    /// Creates (or updates) the Pod object of lab pod `pod` in `namespace` with `labels`, bound to
    /// its node and carrying its address in the status, as the kubelet reports a running pod.
    /// The namespace is created if missing.
    pub fn register_pod(
        &self,
        pod: &Pod,
        namespace: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        self.kubectl_with_input(&["apply", "-f", "-"], &ns.to_string())
            .with_context(|| format!("creating namespace {namespace}"))?;
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": pod.name, "namespace": namespace, "labels": labels },
            "spec": {
                "nodeName": pod.node,
                "containers": [{ "name": "main", "image": "cilia-lab/netns" }],
            },
        });
        self.kubectl_with_input(&["apply", "-f", "-"], &obj.to_string())
            .with_context(|| format!("creating pod {namespace}/{}", pod.name))?;
        let status = json!({ "status": {
            "phase": "Running",
            "podIP": pod.ip.to_string(),
            "podIPs": [{ "ip": pod.ip.to_string() }],
            "hostIP": self.node(&pod.node).spec.ip.to_string(),
            "conditions": [{ "type": "Ready", "status": "True" }],
        }});
        self.kubectl(&[
            "patch",
            "pod",
            &pod.name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .with_context(|| format!("setting the status of pod {namespace}/{}", pod.name))?;
        Ok(())
    }

    /// Deletes the Pod object of `name` in `namespace` (the namespace of the lab pod stays; see
    /// [`Lab::delete_pod`]).
    pub fn unregister_pod(&self, name: &str, namespace: &str) -> anyhow::Result<()> {
        self.kubectl(&["delete", "pod", name, "-n", namespace, "--ignore-not-found"])
            .with_context(|| format!("deleting pod {namespace}/{name}"))?;
        Ok(())
    }
}
