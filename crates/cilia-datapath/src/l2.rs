//! L2 announcements in the kernel: the ARP responder (`ebpf/tc_l2.c`) answers ARP requests for the
//! VIPs in `cilia_l2_responder_v4` with the interface's MAC; [`send_gratuitous_arp`] tells the LAN
//! when this node takes a VIP over.
//!
//! The pure part ([`desired_entries`], [`entry_diff`]) turns "announce these VIPs on these
//! interfaces" into map entries and the difference to what is pinned; [`L2Datapath`] is the aya
//! edge (load with maps pinned by name, TCX attach with pinned links placed first in the chain so
//! ARP never waits behind the load balancer, diff writes, counters).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use crate::bpf::{BpfError, ChainPosition, attach_tcx_pinned, pinned_link_ifaces};
use crate::maps::{assert_layout, c};

/// The ARP responder object (`ebpf/tc_l2.c`).
pub static TC_L2_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_l2.o"));
pub const L2_PROG: &str = "cil_l2_responder";
pub const L2_RESPONDER_MAP: &str = "cilia_l2_responder_v4";
/// The node's answering deadline (`struct l2_lease`, an array of one).
pub const L2_LEASE_MAP: &str = "cilia_l2_lease";
/// Links of the responder live apart from the endpoint links (whose directory is scanned for pods).
const LINKS_DIR: &str = "l2links";

/// Key of `cilia_l2_responder_v4`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L2ResponderKey {
    /// VIP, network byte order.
    pub ip4: u32,
    pub ifindex: u32,
}

/// Value of `cilia_l2_responder_v4`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L2ResponderEntry {
    pub mac: [u8; 6],
    pub pad: [u8; 2],
    pub responses_sent: u64,
    /// Requests left unanswered because the lease had run out.
    pub lapsed: u64,
}

/// Value of `cilia_l2_lease`: the responder answers only while `bpf_ktime_get_ns()` (CLOCK_MONOTONIC)
/// is below `expires_ns`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L2Lease {
    pub expires_ns: u64,
}

// SAFETY: plain-old-data, every bit pattern valid, explicit padding (layout checked below).
unsafe impl aya::Pod for L2ResponderKey {}
unsafe impl aya::Pod for L2ResponderEntry {}
unsafe impl aya::Pod for L2Lease {}

assert_layout!(
    L2ResponderKey,
    c::SIZE_l2_responder_key,
    ip4 = c::OFF_l2_responder_key_ip4,
    ifindex = c::OFF_l2_responder_key_ifindex
);
assert_layout!(
    L2ResponderEntry,
    c::SIZE_l2_responder_entry,
    mac = c::OFF_l2_responder_entry_mac,
    responses_sent = c::OFF_l2_responder_entry_responses_sent,
    lapsed = c::OFF_l2_responder_entry_lapsed
);
assert_layout!(
    L2Lease,
    c::SIZE_l2_lease,
    expires_ns = c::OFF_l2_lease_expires_ns
);

/// Now on the clock `bpf_ktime_get_ns()` reads (CLOCK_MONOTONIC), in nanoseconds.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Capacity of the responder map.
pub const L2_RESPONDER_MAX: u32 = c::CILIA_L2_RESPONDER_MAX;

impl L2ResponderKey {
    pub fn new(vip: Ipv4Addr, ifindex: u32) -> Self {
        L2ResponderKey {
            ip4: u32::from_ne_bytes(vip.octets()),
            ifindex,
        }
    }

    pub fn vip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip4.to_ne_bytes())
    }
}

/// An interface the node may announce on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct L2Interface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The responder entries for announcing each VIP on each of its interfaces: (VIP, ifindex) → MAC.
/// Interfaces are matched by name; a name the node does not have is skipped.
pub fn desired_entries(
    announce: &BTreeMap<Ipv4Addr, BTreeSet<String>>,
    ifaces: &[L2Interface],
) -> BTreeMap<L2ResponderKey, [u8; 6]> {
    let mut out = BTreeMap::new();
    for (vip, names) in announce {
        for i in ifaces.iter().filter(|i| names.contains(&i.name)) {
            out.insert(L2ResponderKey::new(*vip, i.ifindex), i.mac);
        }
    }
    out
}

/// What to write so the map holds `desired`: entries to add or whose MAC changed, and keys to
/// remove. Counters of unchanged entries are kept (they are not rewritten).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2Diff {
    pub upsert: BTreeMap<L2ResponderKey, [u8; 6]>,
    pub remove: BTreeSet<L2ResponderKey>,
}

impl L2Diff {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }

    pub fn len(&self) -> usize {
        self.upsert.len() + self.remove.len()
    }
}

pub fn entry_diff(
    desired: &BTreeMap<L2ResponderKey, [u8; 6]>,
    current: &BTreeMap<L2ResponderKey, L2ResponderEntry>,
) -> L2Diff {
    let upsert = desired
        .iter()
        .filter(|(k, mac)| current.get(k).is_none_or(|e| &e.mac != *mac))
        .map(|(k, m)| (*k, *m))
        .collect();
    let remove = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    L2Diff { upsert, remove }
}

/// The responder of one node, loaded with its map pinned under `pin_dir`.
pub struct L2Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl L2Datapath {
    pub fn load(pin_dir: &Path) -> Result<Self, BpfError> {
        std::fs::create_dir_all(pin_dir.join(LINKS_DIR)).map_err(|source| BpfError::PinDir {
            path: pin_dir.to_path_buf(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(TC_L2_OBJ)?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(L2_PROG)
            .expect("program is in the object")
            .try_into()
            .map_err(|source| BpfError::Program {
                name: L2_PROG,
                source,
            })?;
        prog.load().map_err(|source| BpfError::Program {
            name: L2_PROG,
            source,
        })?;
        Ok(L2Datapath {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    /// File descriptor of the loaded program (for `BPF_PROG_TEST_RUN`).
    pub fn prog_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::{AsFd, AsRawFd};
        let prog: &SchedClassifier = self
            .ebpf
            .program(L2_PROG)
            .expect("program is in the object")
            .try_into()
            .expect("a classifier");
        prog.fd().expect("loaded").as_fd().as_raw_fd()
    }

    fn link_pin(&self, iface: &str, ifindex: u32) -> PathBuf {
        self.pin_dir
            .join(LINKS_DIR)
            .join(format!("{iface}_{ifindex}_ingress"))
    }

    /// Attaches the responder at TC ingress of `iface`, first in the TCX chain. A link pinned by an
    /// earlier agent is taken over (program swapped atomically); returns whether a new attachment
    /// was made (a datapath write).
    pub fn attach(&mut self, iface: &str, ifindex: u32) -> Result<bool, BpfError> {
        let pin = self.link_pin(iface, ifindex);
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(L2_PROG)
            .expect("program is in the object")
            .try_into()
            .map_err(|source| BpfError::Program {
                name: L2_PROG,
                source,
            })?;
        attach_tcx_pinned(
            prog,
            iface,
            TcAttachType::Ingress,
            ChainPosition::First,
            &pin,
            "ingress",
        )
    }

    /// Interfaces (name, ifindex) with a pinned responder link.
    pub fn attached(&self) -> BTreeSet<(String, u32)> {
        pinned_link_ifaces(&self.pin_dir.join(LINKS_DIR))
    }

    /// Unpins (and so detaches) the responder of `iface`.
    pub fn detach(&mut self, iface: &str, ifindex: u32) {
        let _ = std::fs::remove_file(self.link_pin(iface, ifindex));
    }

    fn map(&mut self) -> Result<HashMap<&mut MapData, L2ResponderKey, L2ResponderEntry>, BpfError> {
        let map = self
            .ebpf
            .map_mut(L2_RESPONDER_MAP)
            .expect("map is in the object");
        HashMap::try_from(map).map_err(|source| BpfError::Map {
            name: L2_RESPONDER_MAP,
            source,
        })
    }

    fn lease_map(&mut self) -> Result<Array<&mut MapData, L2Lease>, BpfError> {
        let map = self
            .ebpf
            .map_mut(L2_LEASE_MAP)
            .expect("map is in the object");
        Array::try_from(map).map_err(|source| BpfError::Map {
            name: L2_LEASE_MAP,
            source,
        })
    }

    /// Until when (CLOCK_MONOTONIC ns) the responder answers; 0: not at all.
    pub fn lease(&mut self) -> Result<u64, BpfError> {
        let map = self.lease_map()?;
        map.get(&0, 0)
            .map(|l| l.expires_ns)
            .map_err(|source| BpfError::Map {
                name: L2_LEASE_MAP,
                source,
            })
    }

    /// Lets the responder answer until `expires_ns` (CLOCK_MONOTONIC ns; 0 stops it at once).
    pub fn set_lease(&mut self, expires_ns: u64) -> Result<(), BpfError> {
        let mut map = self.lease_map()?;
        map.set(0, L2Lease { expires_ns }, 0)
            .map_err(|source| BpfError::Map {
                name: L2_LEASE_MAP,
                source,
            })
    }

    /// The pinned entries with their counters.
    pub fn entries(&mut self) -> Result<BTreeMap<L2ResponderKey, L2ResponderEntry>, BpfError> {
        let map = self.map()?;
        let mut out = BTreeMap::new();
        for item in map.iter() {
            let (k, v) = item.map_err(|source| BpfError::Map {
                name: L2_RESPONDER_MAP,
                source,
            })?;
            out.insert(k, v);
        }
        Ok(out)
    }

    /// Makes the map hold exactly `desired`; returns the number of writes (0 when nothing changed).
    pub fn apply(
        &mut self,
        desired: &BTreeMap<L2ResponderKey, [u8; 6]>,
    ) -> Result<usize, BpfError> {
        let diff = entry_diff(desired, &self.entries()?);
        let mut map = self.map()?;
        let err = |source| BpfError::Map {
            name: L2_RESPONDER_MAP,
            source,
        };
        for k in &diff.remove {
            map.remove(k).map_err(err)?;
        }
        for (k, mac) in &diff.upsert {
            let v = L2ResponderEntry {
                mac: *mac,
                ..Default::default()
            };
            map.insert(k, v, 0).map_err(err)?;
        }
        Ok(diff.len())
    }
}

/// Reads the pinned responder entries of a node (for `cilia-dbg`), without loading anything.
pub fn read_entries(pin_dir: &Path) -> Result<Vec<(L2ResponderKey, L2ResponderEntry)>, BpfError> {
    let err = |source| BpfError::Map {
        name: L2_RESPONDER_MAP,
        source,
    };
    let data = MapData::from_pin(pin_dir.join(L2_RESPONDER_MAP)).map_err(err)?;
    let map = aya::maps::Map::HashMap(data);
    let m: HashMap<_, L2ResponderKey, L2ResponderEntry> = HashMap::try_from(map).map_err(err)?;
    let mut out = Vec::new();
    for item in m.iter() {
        out.push(item.map_err(err)?);
    }
    out.sort_by_key(|(k, _)| (k.vip(), k.ifindex));
    Ok(out)
}

/// Reads the pinned lease of a node (for `cilia-dbg`): until when (CLOCK_MONOTONIC ns) it answers.
pub fn read_lease(pin_dir: &Path) -> Result<u64, BpfError> {
    let err = |source| BpfError::Map {
        name: L2_LEASE_MAP,
        source,
    };
    let data = MapData::from_pin(pin_dir.join(L2_LEASE_MAP)).map_err(err)?;
    let a: Array<_, L2Lease> = Array::try_from(aya::maps::Map::Array(data)).map_err(err)?;
    a.get(&0, 0).map(|l| l.expires_ns).map_err(err)
}

/// A gratuitous ARP for `vip` at `mac` in RFC 5227's "ARP announcement" form: a broadcast
/// request with sender = target = the VIP and an empty target MAC. Linux (`arp_is_garp`) lets such
/// a request override a neighbour entry at once, while a gratuitous *reply* counts only when its
/// target MAC equals its sender MAC; other stacks accept the request form too.
pub fn gratuitous_arp_frame(vip: Ipv4Addr, mac: [u8; 6]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&vip.octets());
    // f[32..38]: target MAC unknown (zero).
    f[38..42].copy_from_slice(&vip.octets());
    f
}

/// Sends a gratuitous ARP for `vip` out of `ifindex` through an `AF_PACKET` socket in the current
/// network namespace.
pub fn send_gratuitous_arp(ifindex: u32, vip: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
    let frame = gratuitous_arp_frame(vip, mac);
    // SAFETY: plain socket(2); the fd is closed below on every path.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ARP as u16).to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is valid; we fill the fields sendto needs.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: frame and addr outlive the call; sizes are theirs.
    let rc = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let res = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ifindex: u32, last: u8) -> L2Interface {
        L2Interface {
            name: name.into(),
            ifindex,
            mac: [2, 0, 0, 0, 0, last],
        }
    }

    #[test]
    fn desired_entries_cover_each_vip_on_each_named_interface() {
        let ifaces = [iface("eth0", 2, 1), iface("eth1", 3, 2)];
        let mut announce = BTreeMap::new();
        announce.insert(
            Ipv4Addr::new(172, 18, 250, 0),
            ["eth0".to_string(), "eth1".into()].into(),
        );
        announce.insert(
            Ipv4Addr::new(172, 18, 250, 1),
            ["eth1".to_string(), "eth9".into()].into(),
        );
        let d = desired_entries(&announce, &ifaces);
        assert_eq!(d.len(), 3, "eth9 does not exist on the node: {d:?}");
        assert_eq!(
            d[&L2ResponderKey::new(Ipv4Addr::new(172, 18, 250, 1), 3)],
            [2, 0, 0, 0, 0, 2]
        );
    }

    #[test]
    fn diff_writes_only_changes_and_keeps_counters() {
        let k1 = L2ResponderKey::new(Ipv4Addr::new(192, 0, 2, 1), 2);
        let k2 = L2ResponderKey::new(Ipv4Addr::new(192, 0, 2, 2), 2);
        let k3 = L2ResponderKey::new(Ipv4Addr::new(192, 0, 2, 3), 2);
        let mac = [2, 0, 0, 0, 0, 1];
        let mut current = BTreeMap::new();
        current.insert(
            k1,
            L2ResponderEntry {
                mac,
                responses_sent: 7,
                ..Default::default()
            },
        );
        current.insert(
            k2,
            L2ResponderEntry {
                mac,
                ..Default::default()
            },
        );
        let desired: BTreeMap<_, _> = [(k1, mac), (k3, mac)].into();
        let d = entry_diff(&desired, &current);
        assert_eq!(d.upsert.keys().copied().collect::<Vec<_>>(), vec![k3]);
        assert_eq!(d.remove.iter().copied().collect::<Vec<_>>(), vec![k2]);
        let same: BTreeMap<_, _> = [(k1, mac), (k2, mac)].into();
        assert!(entry_diff(&same, &current).is_empty());
        // A MAC change (the interface was recreated) is rewritten.
        let moved: BTreeMap<_, _> = [(k1, [2, 0, 0, 0, 0, 9]), (k2, mac)].into();
        assert_eq!(entry_diff(&moved, &current).len(), 1);
    }

    #[test]
    fn gratuitous_arp_is_a_broadcast_announcement_of_the_vip() {
        let f = gratuitous_arp_frame(Ipv4Addr::new(172, 18, 250, 7), [2, 1, 2, 3, 4, 5]);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &[2, 1, 2, 3, 4, 5]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[22..28], &[2, 1, 2, 3, 4, 5]);
        assert_eq!(&f[28..32], &[172, 18, 250, 7]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[172, 18, 250, 7]);
    }
}

/// One interface of the node as the announcer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub iface: L2Interface,
    /// Administratively up with carrier (`IFF_UP` and `IFF_LOWER_UP`).
    pub up: bool,
}

/// Every Ethernet interface of the caller's network namespace with its MAC and carrier, through
/// netlink (sysfs would show the namespace it was mounted in, not ours). Must run inside tokio.
pub async fn link_states() -> io::Result<Vec<LinkState>> {
    use futures::TryStreamExt;
    use netlink_packet_route::link::{LinkAttribute, LinkFlags};

    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut s = handle.link().get().execute();
    let mut out = Vec::new();
    let res = loop {
        match s.try_next().await {
            Ok(Some(m)) => {
                let mut name = None;
                let mut mac = None;
                for a in &m.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::Address(a) if a.len() == 6 => {
                            mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]])
                        }
                        _ => {}
                    }
                }
                let (Some(name), Some(mac)) = (name, mac) else {
                    continue;
                };
                let f = m.header.flags;
                out.push(LinkState {
                    iface: L2Interface {
                        name,
                        ifindex: m.header.index,
                        mac,
                    },
                    up: f.contains(LinkFlags::Up) && f.contains(LinkFlags::LowerUp),
                });
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(io::Error::other(format!("listing links: {e}"))),
        }
    };
    task.abort();
    res.map(|()| out)
}

/// Keeps `tx` holding the namespace's [`link_states`], re-read whenever the kernel announces a link
/// change (`RTMGRP_LINK`, so carrier loss shows within milliseconds) and at least every
/// `resync` in case a notification was lost (a full socket buffer drops them). Publishes only
/// changes. Runs until `tx` has no receivers left.
pub async fn watch_links(
    tx: tokio::sync::watch::Sender<Vec<LinkState>>,
    resync: std::time::Duration,
) -> io::Result<()> {
    use futures::StreamExt;
    use rtnetlink::MulticastGroup;

    let (conn, _handle, mut events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])?;
    let task = tokio::spawn(conn);
    let res = loop {
        match link_states().await {
            Ok(links) => {
                tx.send_if_modified(|cur| {
                    if *cur == links {
                        false
                    } else {
                        *cur = links;
                        true
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "listing links failed; retrying"),
        }
        tokio::select! {
            ev = events.next() => {
                if ev.is_none() {
                    break Err(io::Error::other("link notifications ended"));
                }
                // A burst (a veth pair, an up with carrier) is read once.
                while let Ok(Some(_)) = tokio::time::timeout(
                    std::time::Duration::from_millis(2),
                    events.next(),
                ).await {}
            }
            _ = tokio::time::sleep(resync) => {}
            _ = tx.closed() => break Ok(()),
        }
    };
    task.abort();
    res
}
