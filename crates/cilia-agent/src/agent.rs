//! The apply loop: intent in, kernel state out, through the pure diffs of `cilia-datapath`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use cilia_datapath::RouteDiff;
use cilia_datapath::bpf::EndpointDatapath;
use cilia_datapath::endpoints::endpoint_diff;
use cilia_datapath::netlink::Netlink;
use cilia_model::node_local::NODE_LOCAL_CONFIG_FILE;
use cilia_model::{NodeIntent, NodeLocalConfig};
use tracing::{info, warn};

use crate::status::{AgentStatus, EndpointRow};

/// Name of the device that holds the pods' gateway address (Cilium's `cilium_host`).
pub const HOST_DEVICE: &str = "cilia_host";
/// The other end of the host veth pair (Cilium's `cilium_net`).
pub const HOST_PEER_DEVICE: &str = "cilia_net";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] cilia_datapath::netlink::NetlinkError),
    #[error(transparent)]
    Bpf(#[from] cilia_datapath::bpf::BpfError),
    #[error(transparent)]
    Lb(#[from] crate::lb::LbApplyError),
    #[error(transparent)]
    Masq(#[from] crate::masq::MasqApplyError),
    #[error(transparent)]
    Policy(#[from] crate::enforcer::PolicyApplyError),
    #[error("writing {path}: {source}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct Agent {
    pub nl: Netlink,
    pub endpoints: EndpointDatapath,
    pub state_dir: PathBuf,
    pub mtu: u32,
    pub status: AgentStatus,
    /// Service load balancing (kube-proxy replacement).
    pub lb: crate::lb::LbAgent,
    /// Masquerading of pod traffic leaving the node (BPF, iptables or off).
    pub masq: crate::masq::MasqAgent,
    /// Network policy enforcement (pod veths, node devices for host policies).
    pub policy: crate::enforcer::PolicyAgent,
}

impl Agent {
    /// Makes the kernel match `intent`: the host device and node file for the CNI plugin, the
    /// routes, then the service load balancer (maps, config, XDP/TC links). Only differences are
    /// written.
    pub async fn apply(&mut self, intent: &NodeIntent) -> Result<(), ApplyError> {
        if let Some(cfg) = NodeLocalConfig::from_intent(intent, self.mtu) {
            if self
                .nl
                .ensure_host_device(HOST_DEVICE, HOST_PEER_DEVICE, cfg.router_ip)
                .await?
            {
                self.status.datapath_writes += 1;
                info!(device = HOST_DEVICE, router_ip = %cfg.router_ip, "host device configured");
            }
            self.write_node_file(&cfg)?;
            self.status.router_ip = Some(cfg.router_ip);
        }
        let current = self.nl.owned_routes().await?;
        let diff = RouteDiff::compute(&intent.routes, &current);
        for r in &diff.del {
            self.nl.del_route(r).await?;
            self.status.datapath_writes += 1;
            info!(dst = %r.dst, via = %r.via, "route removed");
        }
        for r in &diff.add {
            self.nl.add_route(r).await?;
            self.status.datapath_writes += 1;
            info!(dst = %r.dst, via = %r.via, "route added");
        }
        let s = &mut self.status;
        s.node = intent.node.clone();
        s.node_ip = Some(intent.node_ip);
        s.pod_cidr = intent.pod_cidr;
        s.routing_mode = Some(intent.routing_mode);
        s.native_routing_cidr = intent.native_routing_cidr;
        s.routes = intent.routes.iter().copied().collect();
        // Services last: a refused service intent leaves the maps as they are, routes applied.
        // The pod devices with endpoint programs get the TC load balancer too.
        self.lb.set_pod_devices_lazy(self.endpoints.attached());
        let writes = self.lb.apply(intent)?;
        self.status.datapath_writes += writes;
        self.status.lb = self.lb.status.clone();
        self.status.services = self.lb.rows.clone();
        // Masquerading: a mode switch happens here, old mode off before the new one goes on.
        let writes = self.masq.apply(intent)?;
        self.status.datapath_writes += writes;
        self.status.masquerading = self.masq.status.clone();
        self.apply_policy(intent).await?;
        Ok(())
    }

    /// Policy maps and program links for the intent's policy (only differences are written).
    async fn apply_policy(&mut self, intent: &NodeIntent) -> Result<(), ApplyError> {
        let writes = self.policy.apply(intent, &self.nl).await?;
        self.status.datapath_writes += writes;
        Ok(())
    }

    /// Writes `node.json` for the CNI plugin when its content changes (atomically: tmp + rename).
    fn write_node_file(&mut self, cfg: &NodeLocalConfig) -> Result<(), ApplyError> {
        let path = self.state_dir.join(NODE_LOCAL_CONFIG_FILE);
        let want = serde_json::to_vec_pretty(cfg).expect("node config serializes");
        if std::fs::read(&path).ok().as_deref() == Some(&want[..]) {
            return Ok(());
        }
        let tmp = path.with_extension("json.tmp");
        let err = |source| ApplyError::StateFile {
            path: path.clone(),
            source,
        };
        std::fs::write(&tmp, &want).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        self.status.datapath_writes += 1;
        Ok(())
    }

    /// Attaches the endpoint programs to new pod devices and releases those of vanished ones.
    pub async fn sync_endpoints(&mut self) -> Result<(), ApplyError> {
        let links: Vec<(String, u32)> = self
            .nl
            .links()
            .await?
            .into_iter()
            .map(|(i, n)| (n, i))
            .collect();
        let diff = endpoint_diff(&links, &self.endpoints.attached());
        for (name, ifindex) in &diff.detach {
            self.endpoints.detach(name, *ifindex);
            self.status.datapath_writes += 1;
            info!(iface = %name, ifindex, "endpoint programs released");
        }
        for (name, ifindex) in &diff.attach {
            match self.endpoints.attach(name, *ifindex) {
                Ok(()) => {
                    self.status.datapath_writes += 1;
                    info!(iface = %name, ifindex, "endpoint programs attached");
                }
                // The device may vanish between listing and attaching; the next pass settles it.
                Err(e) => warn!(iface = %name, error = %e, "attaching endpoint programs failed"),
            }
        }
        // The load balancer follows the endpoint devices (pod -> ClusterIP at the pod's edge).
        let writes = self.lb.set_pod_devices(self.endpoints.attached())?;
        self.status.datapath_writes += writes;
        if !diff.detach.is_empty() {
            let live: BTreeSet<u32> = links.iter().map(|(_, i)| *i).collect();
            self.endpoints.forget_stats(&live)?;
        }
        // A pod device came or went: its policy table follows without waiting for an intent.
        // A failure is only logged: the CNI plugin waits on this pass, and the next apply retries.
        if !diff.attach.is_empty() || !diff.detach.is_empty() {
            match self.policy.reapply(&self.nl).await {
                Ok(writes) => self.status.datapath_writes += writes,
                Err(e) => warn!(error = %e, "applying policy to new pod devices failed"),
            }
        }
        self.status.endpoints = self
            .endpoints
            .attached()
            .into_iter()
            .map(|(interface, ifindex)| EndpointRow { ifindex, interface })
            .collect();
        Ok(())
    }
}
