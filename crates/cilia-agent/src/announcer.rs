//! The ARP announcer: makes the node answer ARP for exactly the VIPs the operator gave it, on the
//! interfaces it named that are up, and tells the LAN with a gratuitous ARP whenever it takes a VIP
//! over.
//!
//! The operator's choice is only good while the operator is heard from. The responder itself
//! enforces that: it answers only until the lease deadline in `cilia_l2_lease`, which the agent
//! pushes to "last word from the operator + lease" ([`Announcer::renew`]). A node whose agent died
//! or lost the operator therefore falls silent one lease after the last word, with nobody's help,
//! and the operator hands its VIPs on only after that. The entries themselves stay when the lease
//! runs out, so a comeback with an unchanged intent writes no entry (zero churn) — but it is a
//! takeover all the same (another node may have answered meanwhile), so it sends gratuitous ARPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use cilia_datapath::bpf::BpfError;
use cilia_datapath::endpoints::ENDPOINT_IFACE_PREFIX;
use cilia_datapath::l2::{
    L2Datapath, L2Interface, L2ResponderKey, LinkState, desired_entries, monotonic_now_ns,
    send_gratuitous_arp,
};
use cilia_model::NodeIntent;
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

/// One row of `cilia-dbg bpf l2 list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnouncedVip {
    pub vip: Ipv4Addr,
    pub service: String,
    pub interface: String,
    #[serde(default)]
    pub ifindex: u32,
    /// The MAC the node answers with (the interface's).
    #[serde(default)]
    pub mac: String,
    pub replies: u64,
    /// Requests left unanswered because the lease had run out.
    #[serde(default)]
    pub lapsed: u64,
}

/// Responder entries: (VIP, ifindex) → the interface's MAC.
pub type ResponderEntries = BTreeMap<L2ResponderKey, [u8; 6]>;

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The interfaces the agent reports to the operator as up: up with carrier, with an Ethernet
/// address (the responder answers with it), and none of the agent's own devices — `cilia_host` /
/// `cilia_net` and the pods' `lxc*` veths exist on every node, so a broad policy regex (`.*`)
/// would otherwise make the operator announce VIPs into pods. Pure.
pub fn reportable_interfaces(links: &[LinkState]) -> BTreeSet<String> {
    links
        .iter()
        .filter(|l| l.up && l.iface.mac != [0; 6])
        .map(|l| &l.iface.name)
        .filter(|n| !n.starts_with("cilia_") && !n.starts_with(ENDPOINT_IFACE_PREFIX))
        .cloned()
        .collect()
}

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
    // Standby entries answer no ARP: the load balancer serves their flooded frames.
    let announce: BTreeMap<Ipv4Addr, BTreeSet<String>> = want
        .iter()
        .filter(|(_, a)| !a.standby)
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

/// When a takeover's gratuitous ARP is sent again, after the first. A reply the previous holder
/// sent just before it let go can reach a client after the first announcement and point its
/// neighbour entry back (an entry that is not REACHABLE takes any reply's address); a repeat
/// corrects it. RFC 5227 repeats its announcements as well.
pub const GARP_REPEATS_MS: [u64; 2] = [250, 1000];

pub struct Announcer {
    dp: L2Datapath,
    /// Gratuitous ARPs to send again: when, for which entry, with which MAC.
    repeats: Vec<(Instant, L2ResponderKey, [u8; 6])>,
    /// The VIPs of the last apply, for the listing.
    want: BTreeMap<Ipv4Addr, L2Announcement>,
    names: BTreeMap<u32, String>,
    /// The lease deadline last written (CLOCK_MONOTONIC ns; 0: not answering), read from the pin
    /// at load so a restart knows whether its predecessor's lease still runs.
    lease_until: u64,
}

impl Announcer {
    /// Loads the responder with its maps pinned under `pin_dir`; what an earlier agent pinned
    /// (entries and lease) is kept until the first apply says otherwise (no gap across restarts).
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        let mut dp = L2Datapath::load(pin_dir)?;
        let lease_until = dp.lease()?;
        Ok(Announcer {
            dp,
            repeats: Vec::new(),
            want: BTreeMap::new(),
            names: BTreeMap::new(),
            lease_until,
        })
    }

    /// Whether the responder answers now (its lease runs).
    pub fn answering(&self) -> bool {
        self.lease_until > monotonic_now_ns()
    }

    /// The lease deadline in force (CLOCK_MONOTONIC ns; 0: none).
    pub fn lease_until(&self) -> u64 {
        self.lease_until
    }

    /// A takeover's gratuitous ARP, and its repeats scheduled.
    fn garp(&mut self, key: &L2ResponderKey, mac: &[u8; 6], iface: &str) -> bool {
        match send_gratuitous_arp(key.ifindex, key.vip(), *mac) {
            Ok(()) => {
                info!(vip = %key.vip(), %iface, "announcing: gratuitous ARP sent");
                let now = Instant::now();
                self.repeats.retain(|(_, k, _)| k != key);
                for ms in GARP_REPEATS_MS {
                    self.repeats
                        .push((now + std::time::Duration::from_millis(ms), *key, *mac));
                }
                true
            }
            Err(e) => {
                warn!(vip = %key.vip(), %iface, error = %e, "gratuitous ARP failed");
                false
            }
        }
    }

    /// Makes the responder hold exactly `want` on the up interfaces among those named. While the
    /// lease runs, a VIP new on an interface is announced by gratuitous ARP at once; otherwise
    /// that waits for [`Announcer::renew`].
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
        self.names = links
            .iter()
            .map(|l| (l.iface.ifindex, l.iface.name.clone()))
            .collect();
        let answering = self.answering();
        for (key, mac) in &entries {
            if before.contains(key) {
                continue;
            }
            let iface = self.iface_name(key.ifindex);
            if answering && self.garp(key, mac, &iface) {
                report.garps += 1;
            } else if !answering {
                info!(vip = %key.vip(), %iface, "VIP assigned; announced once the lease runs");
            }
        }
        for key in before.iter().filter(|k| !entries.contains_key(k)) {
            info!(vip = %key.vip(), ifindex = key.ifindex, "no longer announcing");
        }
        // The responder stays attached where nothing is announced any more: it answers nothing
        // there, and keeping it avoids a detach/attach churn when VIPs come back.
        self.want = want
            .iter()
            .filter(|(_, a)| !a.standby)
            .map(|(v, a)| (*v, a.clone()))
            .collect();
        Ok(report)
    }

    fn iface_name(&self, ifindex: u32) -> String {
        self.names
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| ifindex.to_string())
    }

    /// Sends the repeats that are due, for entries still held while the lease runs (others are
    /// dropped: a node that no longer answers must not announce). Returns how many were sent.
    pub fn send_repeats(&mut self) -> Result<usize, BpfError> {
        if self.repeats.is_empty() {
            return Ok(0);
        }
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) =
            self.repeats.drain(..).partition(|(t, _, _)| *t <= now);
        self.repeats = later;
        if due.is_empty() {
            return Ok(0);
        }
        if !self.answering() {
            self.repeats.clear();
            return Ok(0);
        }
        let held = self.dp.entries()?;
        let mut sent = 0;
        for (_, key, mac) in due {
            if held.get(&key).is_none_or(|e| e.mac != mac) {
                continue;
            }
            match send_gratuitous_arp(key.ifindex, key.vip(), mac) {
                Ok(()) => sent += 1,
                Err(e) => warn!(vip = %key.vip(), error = %e, "repeated gratuitous ARP failed"),
            }
        }
        Ok(sent)
    }

    /// Lets the responder answer until `expires_ns` (CLOCK_MONOTONIC ns). When it was not answering
    /// (a fresh start, or its lease had run out), this is a takeover: every entry is announced by
    /// gratuitous ARP, since another node may have answered for these VIPs meanwhile. Returns the
    /// gratuitous ARPs sent.
    pub fn renew(&mut self, expires_ns: u64) -> Result<usize, BpfError> {
        let was_answering = self.answering();
        if expires_ns == self.lease_until {
            return Ok(0);
        }
        self.dp.set_lease(expires_ns)?;
        self.lease_until = expires_ns;
        if was_answering || !self.answering() {
            return Ok(0);
        }
        let mut garps = 0;
        for (key, e) in self.dp.entries()? {
            let iface = self.iface_name(key.ifindex);
            if self.garp(&key, &e.mac, &iface) {
                garps += 1;
            }
        }
        info!(vips = garps, "L2 lease running: answering ARP");
        Ok(garps)
    }

    /// Stops answering now (lease 0); the entries stay, so a comeback with the same VIPs writes
    /// nothing but the lease.
    pub fn lapse(&mut self) -> Result<(), BpfError> {
        if self.lease_until != 0 {
            self.dp.set_lease(0)?;
            self.lease_until = 0;
        }
        Ok(())
    }

    /// Announcements switched off: no lease, no entries. Returns the entries removed.
    pub fn clear(&mut self) -> Result<usize, BpfError> {
        self.lapse()?;
        let n = self.dp.apply(&BTreeMap::new())?;
        if n > 0 {
            info!(
                withdrawn = n,
                "L2 announcements off: responder entries removed"
            );
        }
        self.want.clear();
        Ok(n)
    }

    /// What the node holds, with reply counters (answered only while [`Announcer::answering`]).
    pub fn list(&mut self) -> Result<Vec<AnnouncedVip>, BpfError> {
        let entries = self.dp.entries()?;
        Ok(entries
            .into_iter()
            .map(|(k, v)| AnnouncedVip {
                vip: k.vip(),
                service: self
                    .want
                    .get(&k.vip())
                    .map(|a| a.service.to_string())
                    .unwrap_or_default(),
                interface: self.iface_name(k.ifindex),
                ifindex: k.ifindex,
                mac: fmt_mac(&v.mac),
                replies: v.responses_sent,
                lapsed: v.lapsed,
            })
            .collect())
    }
}

/// When the operator was last heard from, as far as L2 announcements are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Not yet, in this process: the pinned lease of the previous run stands until it runs out.
    Never,
    /// Last word (in a session in step with the operator) at this instant.
    At(Instant),
    /// No operator (a cluster file): this agent's own choice stands for good.
    Always,
}

/// Lease time left above which the lease is the file source's "for good" (`u64::MAX` ns).
const NO_LEASE_MS: u64 = 1 << 40;

/// The L2 part of `cilia-dbg status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L2Status {
    /// `l2announcements.enabled` in the intent.
    pub enabled: bool,
    /// The responder answers now (its lease runs).
    pub answering: bool,
    /// Lease time left, ms (0 when not answering).
    pub lease_left_ms: u64,
    /// The interfaces reported to the operator as up.
    pub up_interfaces: Vec<String>,
    /// What the node announces, with reply counters (as of the last pass of the apply loop).
    pub announced: Vec<AnnouncedVip>,
    pub gratuitous_arps: u64,
    /// Takeover announcements sent again (see [`GARP_REPEATS_MS`]).
    #[serde(default)]
    pub gratuitous_arp_repeats: u64,
    /// How often the lease ran out (the operator went silent).
    pub lapses: u64,
}

impl L2Status {
    /// The `L2 announcements:` line of `cilia-dbg status`.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return "Disabled".into();
        }
        let vips: BTreeSet<Ipv4Addr> = self.announced.iter().map(|a| a.vip).collect();
        let state = if self.answering && self.lease_left_ms > NO_LEASE_MS {
            "answering (no operator: the cluster file's choice stands)".to_string()
        } else if self.answering {
            format!("answering (lease {} ms left)", self.lease_left_ms)
        } else {
            "silent (no lease: operator not heard from)".into()
        };
        format!(
            "Enabled, {} VIP(s) announced, {state}; up interfaces [{}]",
            vips.len(),
            self.up_interfaces.join(", ")
        )
    }
}

/// The answer to `cilia-dbg bpf l2 list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L2Listing {
    pub enabled: bool,
    /// The responder answers now (its lease runs).
    pub answering: bool,
    pub lease_left_ms: u64,
    pub vips: Vec<AnnouncedVip>,
}

impl L2Listing {
    /// Reads the pins under `pin_dir` now; `status` is the apply loop's last pass.
    pub fn read(pin_dir: &Path, status: &L2Status) -> Result<Self, BpfError> {
        let vips = if pin_dir.join(cilia_datapath::l2::L2_RESPONDER_MAP).exists() {
            live_list(pin_dir, status)?
        } else {
            Vec::new()
        };
        let now = monotonic_now_ns();
        let until = match cilia_datapath::l2::read_lease(pin_dir) {
            Ok(u) => u,
            Err(_) if vips.is_empty() => 0,
            Err(e) => return Err(e),
        };
        Ok(L2Listing {
            enabled: status.enabled,
            answering: until > now,
            lease_left_ms: until.saturating_sub(now) / 1_000_000,
            vips,
        })
    }
}

/// The listing read live from the pins (for the local API, between passes of the apply loop):
/// counters as they are now, names from the last pass's `status`.
pub fn live_list(pin_dir: &Path, status: &L2Status) -> Result<Vec<AnnouncedVip>, BpfError> {
    Ok(cilia_datapath::l2::read_entries(pin_dir)?
        .into_iter()
        .map(|(k, v)| {
            let known = status
                .announced
                .iter()
                .find(|a| a.vip == k.vip() && a.ifindex == k.ifindex);
            AnnouncedVip {
                vip: k.vip(),
                service: known.map(|a| a.service.clone()).unwrap_or_default(),
                interface: known
                    .map(|a| a.interface.clone())
                    .unwrap_or_else(|| k.ifindex.to_string()),
                ifindex: k.ifindex,
                mac: fmt_mac(&v.mac),
                replies: v.responses_sent,
                lapsed: v.lapsed,
            }
        })
        .collect())
}

/// What wakes the apply loop for L2 announcements: the node's links, and the operator's last word.
pub struct L2Inputs {
    links: tokio::sync::watch::Receiver<Vec<LinkState>>,
    heard: Option<tokio::sync::watch::Receiver<Option<Instant>>>,
    /// The links changed since the last [`L2Inputs::take_links_changed`].
    links_changed: bool,
}

impl L2Inputs {
    /// `heard`: `None` without an operator (a cluster file).
    pub fn new(
        links: tokio::sync::watch::Receiver<Vec<LinkState>>,
        heard: Option<tokio::sync::watch::Receiver<Option<Instant>>>,
    ) -> Self {
        L2Inputs {
            links,
            heard,
            links_changed: true,
        }
    }

    /// Resolves when the links change or the operator is heard from; never when both sources
    /// are gone (a closed channel would otherwise wake the loop without end).
    pub async fn changed(&mut self) {
        let links = async {
            if self.links.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            true
        };
        let heard = async {
            if let Some(h) = &mut self.heard
                && h.changed().await.is_ok()
            {
                return false;
            }
            std::future::pending().await
        };
        if tokio::select! { l = links => l, h = heard => h } {
            self.links_changed = true;
        }
    }

    pub fn take_links_changed(&mut self) -> bool {
        std::mem::take(&mut self.links_changed)
    }

    pub fn links(&self) -> Vec<LinkState> {
        self.links.borrow().clone()
    }

    pub fn heard(&self) -> Heard {
        match &self.heard {
            None => Heard::Always,
            Some(h) => h.borrow().map(Heard::At).unwrap_or(Heard::Never),
        }
    }
}

/// The announcer as the apply loop drives it: entries from the intent, the lease from the
/// operator's last word.
pub struct L2Agent {
    ann: Announcer,
    /// The heard instant the lease was last renewed from (a renewal per operator message).
    renewed_from: Option<Instant>,
    pub status: L2Status,
}

impl L2Agent {
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        Ok(L2Agent {
            ann: Announcer::load(pin_dir)?,
            renewed_from: None,
            status: L2Status::default(),
        })
    }

    /// Makes the responder's entries follow `intent` (when `entries` is set: the intent or the links
    /// changed, or a resync is due) and its lease follow `heard`. `intent_pending`: a newer intent
    /// waits to be applied, so the lease is not renewed for entries that may be stale. Returns the
    /// datapath writes (lease renewals are not counted: they happen on every operator message).
    pub fn sync(
        &mut self,
        intent: &NodeIntent,
        links: &[LinkState],
        heard: Heard,
        entries: bool,
        intent_pending: bool,
    ) -> Result<usize, BpfError> {
        let dp = &intent.datapath;
        self.status.up_interfaces = reportable_interfaces(links).into_iter().collect();
        if !dp.l2_announcements {
            let n = if self.status.enabled || entries {
                self.ann.clear()?
            } else {
                0
            };
            self.status.enabled = false;
            self.status.answering = false;
            self.status.lease_left_ms = 0;
            self.status.announced.clear();
            return Ok(n);
        }
        self.status.enabled = true;
        let mut writes = 0;
        if entries {
            let r = self.ann.apply(&intent.l2, links)?;
            writes += r.writes;
            self.status.gratuitous_arps += r.garps as u64;
        }
        let now = monotonic_now_ns();
        let lease_ns = u64::from(dp.l2_lease_ms) * 1_000_000;
        let renew_to = match heard {
            Heard::Always => Some(u64::MAX),
            Heard::At(t) if !intent_pending && self.renewed_from != Some(t) => {
                self.renewed_from = Some(t);
                let at = now.saturating_sub(t.elapsed().as_nanos() as u64);
                Some(at + lease_ns).filter(|&e| e > now)
            }
            _ => None,
        };
        if let Some(e) = renew_to {
            self.status.gratuitous_arps += self.ann.renew(e)? as u64;
        }
        self.status.gratuitous_arp_repeats += self.ann.send_repeats()? as u64;
        let until = self.ann.lease_until();
        if until != 0 && until <= now {
            // The responder fell silent by itself at `until`; 0 makes that explicit.
            self.ann.lapse()?;
            if self.status.answering {
                self.status.lapses += 1;
                warn!(
                    lease_ms = dp.l2_lease_ms,
                    "L2 announcements lapsed: no word from the operator within the lease; not answering ARP"
                );
            }
        }
        self.status.answering = self.ann.answering();
        self.status.lease_left_ms = self.ann.lease_until().saturating_sub(now) / 1_000_000;
        if entries || self.status.announced.is_empty() == intent.l2.values().any(|a| !a.standby) {
            self.status.announced = self.ann.list()?;
        }
        Ok(writes)
    }

    /// The listing with live counters.
    pub fn list(&mut self) -> Result<Vec<AnnouncedVip>, BpfError> {
        self.ann.list()
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
                standby: false,
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
        // A standby entry answers no ARP (the load balancer serves its flooded frames).
        let mut standby = ann([172, 18, 250, 2], &["eth0"]);
        standby.1.standby = true;
        let (sb, sb_ifaces) = plan(&[standby].into(), &links);
        assert!(sb.is_empty() && sb_ifaces.is_empty(), "{sb:?}");
    }

    #[test]
    fn reported_interfaces_are_the_nodes_own_ethernet_links_that_are_up() {
        let mut lo = link("lo", 1, true);
        lo.iface.mac = [0; 6];
        let links = [
            lo,
            link("eth0", 2, true),
            link("eth1", 3, false),
            link("cilia_host", 4, true),
            link("cilia_net", 5, true),
            link("lxc12ab", 6, true),
            link("ens3", 7, true),
        ];
        assert_eq!(
            reportable_interfaces(&links),
            BTreeSet::from(["eth0".to_string(), "ens3".to_string()])
        );
    }

    #[test]
    fn status_line_says_whether_the_node_answers() {
        let mut s = L2Status::default();
        assert_eq!(s.summary(), "Disabled");
        s.enabled = true;
        s.answering = true;
        s.lease_left_ms = 350;
        s.up_interfaces = vec!["eth0".into()];
        s.announced = vec![AnnouncedVip {
            vip: Ipv4Addr::new(172, 18, 250, 0),
            service: "default/deathstar-lb".into(),
            interface: "eth0".into(),
            ifindex: 2,
            mac: "02:00:00:00:00:02".into(),
            replies: 3,
            lapsed: 0,
        }];
        assert_eq!(
            s.summary(),
            "Enabled, 1 VIP(s) announced, answering (lease 350 ms left); up interfaces [eth0]"
        );
        s.answering = false;
        s.lease_left_ms = 0;
        assert!(s.summary().contains("silent (no lease"), "{}", s.summary());
        assert_eq!(fmt_mac(&[2, 0xab, 0, 0, 0, 1]), "02:ab:00:00:00:01");
    }
}
