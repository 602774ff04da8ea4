//! The ARP announcer: makes the node answer ARP for exactly the VIPs the operator gave it, on the
//! interfaces it named that are up, and tells the LAN with a gratuitous ARP whenever it takes a VIP
//! over. The operator's choice is only good while the operator is heard from: [`Announcer::lapse`]
//! withdraws everything when it has been silent for the lease time, so a node cut off from the
//! cluster stops answering before another one takes over for long.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use cilia_datapath::bpf::BpfError;
use cilia_datapath::l2::{
    L2Datapath, L2Interface, L2ResponderKey, LinkState, desired_entries, send_gratuitous_arp,
};
use cilia_model::l2::L2Announcement;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// What one apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnounceReport {
    /// Map writes and program attachments.
    pub writes: usize,
    /// Gratuitous ARPs sent (one per newly announced VIP and interface).
    pub garps: usize,
}

/// One row of `cilia-dbg l2 list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnouncedVip {
    pub vip: Ipv4Addr,
    pub service: String,
    pub interface: String,
    pub replies: u64,
}

/// Responder entries: (VIP, ifindex) → the interface's MAC.
pub type ResponderEntries = BTreeMap<L2ResponderKey, [u8; 6]>;

/// The plan for one apply: entries to hold and the interfaces (name, ifindex) the responder must
/// sit on. Pure.
pub fn plan(
    want: &BTreeMap<Ipv4Addr, L2Announcement>,
    links: &[LinkState],
) -> (ResponderEntries, BTreeSet<(String, u32)>) {
    let up: Vec<L2Interface> = links
        .iter()
        .filter(|l| l.up)
        .map(|l| l.iface.clone())
        .collect();
    let announce: BTreeMap<Ipv4Addr, BTreeSet<String>> = want
        .iter()
        .map(|(vip, a)| (*vip, a.interfaces.clone()))
        .collect();
    let entries = desired_entries(&announce, &up);
    let ifaces = up
        .iter()
        .filter(|i| entries.keys().any(|k| k.ifindex == i.ifindex))
        .map(|i| (i.name.clone(), i.ifindex))
        .collect();
    (entries, ifaces)
}

pub struct Announcer {
    dp: L2Datapath,
    /// The VIPs of the last apply, for the listing.
    want: BTreeMap<Ipv4Addr, L2Announcement>,
    names: BTreeMap<u32, String>,
}

impl Announcer {
    /// Loads the responder with its map pinned under `pin_dir`; what an earlier agent pinned is
    /// kept until the first apply says otherwise (no gap across restarts).
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        Ok(Announcer {
            dp: L2Datapath::load(pin_dir)?,
            want: BTreeMap::new(),
            names: BTreeMap::new(),
        })
    }

    /// Makes the responder answer for exactly `want` on the up interfaces among those named.
    pub fn apply(
        &mut self,
        want: &BTreeMap<Ipv4Addr, L2Announcement>,
        links: &[LinkState],
    ) -> Result<AnnounceReport, BpfError> {
        let (entries, ifaces) = plan(want, links);
        let mut report = AnnounceReport::default();
        for (name, ifindex) in &ifaces {
            if self.dp.attach(name, *ifindex)? {
                report.writes += 1;
                info!(iface = %name, "ARP responder attached");
            }
        }
        let before: BTreeSet<L2ResponderKey> = self.dp.entries()?.into_keys().collect();
        report.writes += self.dp.apply(&entries)?;
        for (key, mac) in &entries {
            if before.contains(key) {
                continue;
            }
            let iface = ifaces
                .iter()
                .find(|(_, i)| *i == key.ifindex)
                .map(|(n, _)| n.as_str())
                .unwrap_or("?");
            match send_gratuitous_arp(key.ifindex, key.vip(), *mac) {
                Ok(()) => {
                    report.garps += 1;
                    info!(vip = %key.vip(), %iface, "announcing: gratuitous ARP sent");
                }
                Err(e) => warn!(vip = %key.vip(), %iface, error = %e, "gratuitous ARP failed"),
            }
        }
        for key in before.iter().filter(|k| !entries.contains_key(k)) {
            info!(vip = %key.vip(), ifindex = key.ifindex, "no longer announcing");
        }
        // The responder stays attached where nothing is announced any more: it answers nothing
        // there, and keeping it avoids a detach/attach churn when VIPs come back.
        self.want = want.clone();
        self.names = links
            .iter()
            .map(|l| (l.iface.ifindex, l.iface.name.clone()))
            .collect();
        Ok(report)
    }

    /// Withdraws every announcement (the operator has been silent for the lease time).
    pub fn lapse(&mut self) -> Result<usize, BpfError> {
        let n = self.dp.apply(&BTreeMap::new())?;
        if n > 0 {
            warn!(
                withdrawn = n,
                "L2 announcements lapsed: no word from the operator"
            );
        }
        self.want.clear();
        Ok(n)
    }

    /// What the node answers for now, with reply counters.
    pub fn list(&mut self) -> Result<Vec<AnnouncedVip>, BpfError> {
        Ok(self
            .dp
            .entries()?
            .into_iter()
            .map(|(k, v)| AnnouncedVip {
                vip: k.vip(),
                service: self
                    .want
                    .get(&k.vip())
                    .map(|a| a.service.to_string())
                    .unwrap_or_default(),
                interface: self
                    .names
                    .get(&k.ifindex)
                    .cloned()
                    .unwrap_or_else(|| k.ifindex.to_string()),
                replies: v.responses_sent,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cilia_model::service::ServiceName;

    fn link(name: &str, ifindex: u32, up: bool) -> LinkState {
        LinkState {
            iface: L2Interface {
                name: name.into(),
                ifindex,
                mac: [2, 0, 0, 0, 0, ifindex as u8],
            },
            up,
        }
    }

    fn ann(vip: [u8; 4], ifaces: &[&str]) -> (Ipv4Addr, L2Announcement) {
        let vip = Ipv4Addr::from(vip);
        (
            vip,
            L2Announcement {
                vip,
                service: ServiceName::new("default", "web"),
                interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    #[test]
    fn plan_uses_only_named_interfaces_that_are_up() {
        let links = [
            link("eth0", 2, true),
            link("eth1", 3, false),
            link("lo", 1, true),
        ];
        let want: BTreeMap<_, _> = [
            ann([172, 18, 250, 0], &["eth0", "eth1"]),
            ann([172, 18, 250, 1], &["eth1"]),
        ]
        .into();
        let (entries, ifaces) = plan(&want, &links);
        assert_eq!(entries.len(), 1, "eth1 has no carrier: {entries:?}");
        assert!(entries.contains_key(&L2ResponderKey::new(Ipv4Addr::new(172, 18, 250, 0), 2)));
        assert_eq!(ifaces, BTreeSet::from([("eth0".to_string(), 2)]));
        let (none, no_ifaces) = plan(&BTreeMap::new(), &links);
        assert!(none.is_empty() && no_ifaces.is_empty());
    }
}
