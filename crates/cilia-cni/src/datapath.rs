//! The kernel side of an attachment, over rtnetlink: the veth pair, the pod's address and routes,
//! and the node's route to the pod.
//!
//! ```text
//!  node netns                                   pod netns (CNI_NETNS)
//!  cilia_host: <routerIp> (agent-owned)
//!  lxc<hash> ◄──────────── veth ─────────────►  <CNI_IFNAME>: <ip>/32
//!  <ip>/32 dev lxc<hash> scope link             <routerIp> dev <ifname> scope link
//!                                               default via <routerIp> dev <ifname>
//! ```
//!
//! The node side runs on the calling thread; the pod side on a thread inside the pod's namespace
//! ([`crate::netns::run_in`]) with a netlink socket opened there. Each side uses its own
//! current-thread tokio runtime.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope,
};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::{Digest, Sha256};

use crate::error::CniError;

/// Hex digits of the attachment hash in the host veth name (`lxc` + 11 = 14 ≤ IFNAMSIZ-1).
const HOST_VETH_HASH_LEN: usize = 11;

/// The host-side veth name of an attachment: `lxc` + the first 11 hex digits of
/// sha256(containerID + ifname). Stable, so DEL and GC find it without any state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::digest(format!("{container_id}{ifname}").as_bytes());
    format!("lxc{}", &hex::encode(digest)[..HOST_VETH_HASH_LEN])
}

/// What the kernel says about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub is_veth: bool,
}

/// One IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: Ipv4Net,
    pub gw: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub scope: RouteScope,
}

/// Everything ADD needs to wire one pod.
#[derive(Debug, Clone)]
pub struct AttachSpec<'a> {
    pub host_veth: &'a str,
    /// `CNI_NETNS`, for messages.
    pub netns_path: &'a std::path::Path,
    pub ifname: &'a str,
    pub ip: Ipv4Addr,
    pub router: Ipv4Addr,
    pub mtu: Option<u32>,
}

/// The two ends of a wired pod, as the kernel reports them.
#[derive(Debug, Clone)]
pub struct Wired {
    pub host: LinkState,
    pub pod: LinkState,
}

/// A netlink connection in the namespace of the thread that opened it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

/// Runs `work` with a fresh netlink connection on a current-thread runtime. The socket lives in the
/// network namespace of the calling thread.
pub fn with_netlink<T>(
    work: impl AsyncFnOnce(Netlink) -> Result<T, CniError>,
) -> Result<T, CniError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::io("starting the netlink runtime", e))?;
    rt.block_on(async move {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| CniError::io("opening a netlink socket", e))?;
        let driver = tokio::spawn(connection);
        let out = work(Netlink { handle }).await;
        driver.abort();
        out
    })
}

/// The negated errno of a netlink error, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn is_errno(e: &rtnetlink::Error, codes: &[i32]) -> bool {
    errno(e).is_some_and(|c| codes.contains(&c))
}

fn link_state(msg: &LinkMessage) -> LinkState {
    let mut state = LinkState {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        is_veth: false,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => state.name = n.clone(),
            LinkAttribute::Address(a) => state.mac = Some(format_mac(a)),
            LinkAttribute::Mtu(m) => state.mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                state.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    state
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn route_entry(msg: &RouteMessage) -> Option<RouteEntry> {
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gw = None;
    let mut oif = None;
    let mut table = u32::from(msg.header.table);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Destination(_) => return None,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = Ipv4Net::new(dst, msg.header.destination_prefix_length).ok()?;
    Some(RouteEntry {
        dst,
        gw,
        oif,
        scope: msg.header.scope,
    })
}

impl Netlink {
    /// The link named `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>, CniError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(link_state(&msg))),
            Ok(None) => Ok(None),
            Err(e) if is_errno(&e, &[libc::ENODEV]) => Ok(None),
            Err(e) => Err(CniError::datapath(format!("looking up link {name}"), e)),
        }
    }

    async fn set_up(&self, link: &LinkState) -> Result<(), CniError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(link.index).up().build())
            .execute()
            .await
            .map_err(|e| CniError::datapath(format!("setting {} up", link.name), e))
    }

    /// Deletes the link named `name`; a missing link is fine. Returns whether one was deleted.
    pub async fn delete_link(&self, name: &str) -> Result<bool, CniError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_errno(&e, &[libc::ENODEV]) => Ok(false),
            Err(e) => Err(CniError::datapath(format!("deleting link {name}"), e)),
        }
    }

    /// Creates the veth pair: `host` here, its peer `peer` directly inside `peer_netns`.
    async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: &File,
        mtu: Option<u32>,
    ) -> Result<(), rtnetlink::Error> {
        let mut peer_msg = LinkUnspec::new_with_name(peer).setns_by_fd(peer_netns.as_raw_fd());
        let mut host_msg = LinkVeth::new(host, peer);
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            host_msg = host_msg.mtu(mtu);
        }
        let msg = host_msg
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .build();
        self.handle.link().add(msg).execute().await
    }

    /// The addresses on link `index`, as `(address, prefix length)`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, CniError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| CniError::datapath("listing addresses", e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    async fn add_address(
        &self,
        link: &LinkState,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), CniError> {
        self.handle
            .address()
            .add(link.index, ip.into(), prefix)
            .replace()
            .execute()
            .await
            .map_err(|e| CniError::datapath(format!("adding {ip}/{prefix} to {}", link.name), e))
    }

    /// The IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<RouteEntry>, CniError> {
        let msgs: Vec<_> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| CniError::datapath("listing routes", e))?;
        Ok(msgs.iter().filter_map(route_entry).collect())
    }

    fn route_message(
        dst: Ipv4Net,
        gw: Option<Ipv4Addr>,
        oif: u32,
        scope: RouteScope,
    ) -> RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .output_interface(oif)
            .scope(scope);
        if let Some(gw) = gw {
            b = b.gateway(gw);
        }
        b.build()
    }

    /// Adds (or replaces) a main-table route.
    async fn replace_route(
        &self,
        dst: Ipv4Net,
        gw: Option<Ipv4Addr>,
        link: &LinkState,
        scope: RouteScope,
    ) -> Result<(), CniError> {
        self.handle
            .route()
            .add(Self::route_message(dst, gw, link.index, scope))
            .replace()
            .execute()
            .await
            .map_err(|e| {
                let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                CniError::datapath(format!("adding route {dst}{via} dev {}", link.name), e)
            })
    }

    /// Deletes `dst dev link scope link`; a missing route is fine.
    async fn delete_link_route(&self, dst: Ipv4Net, link: &LinkState) -> Result<(), CniError> {
        let msg = Self::route_message(dst, None, link.index, RouteScope::Link);
        match self.handle.route().del(msg).execute().await {
            Err(e) if !is_errno(&e, &[libc::ESRCH, libc::ENOENT, libc::ENODEV]) => Err(
                CniError::datapath(format!("deleting route {dst} dev {}", link.name), e),
            ),
            _ => Ok(()),
        }
    }
}

fn host_route(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).expect("/32 is a valid prefix")
}

/// ADD's datapath: creates and configures both ends. On error, whatever was created on the node
/// is left for the caller's rollback ([`detach`]).
pub fn attach(spec: &AttachSpec<'_>, pod_netns: &File) -> Result<Wired, CniError> {
    // Node side, part 1: the pair itself, with the pod end born inside the pod's namespace.
    let host = with_netlink(async |nl| {
        if nl.delete_link(spec.host_veth).await? {
            tracing::warn!(
                host_veth = spec.host_veth,
                "deleted a stale host veth of this attachment"
            );
        }
        nl.create_veth(spec.host_veth, spec.ifname, pod_netns, spec.mtu)
            .await
            .map_err(|e| {
                if is_errno(&e, &[libc::EEXIST]) {
                    CniError::InterfaceExists {
                        ifname: spec.ifname.to_string(),
                        netns: spec.netns_path.to_path_buf(),
                    }
                } else {
                    CniError::datapath(
                        format!("creating veth {} <-> {}", spec.host_veth, spec.ifname),
                        e,
                    )
                }
            })?;
        let host = nl.link(spec.host_veth).await?.ok_or_else(|| {
            CniError::datapath(
                format!("finding new veth {}", spec.host_veth),
                rtnetlink::Error::RequestFailed,
            )
        })?;
        nl.set_up(&host).await?;
        Ok(host)
    })?;

    // Pod side: address and routes, from a thread inside the pod's namespace.
    let pod = crate::netns::run_in(pod_netns, || {
        with_netlink(async |nl| {
            let pod = nl.link(spec.ifname).await?.ok_or_else(|| {
                CniError::datapath(
                    format!("finding {} in the pod namespace", spec.ifname),
                    rtnetlink::Error::RequestFailed,
                )
            })?;
            nl.set_up(&pod).await?;
            nl.add_address(&pod, spec.ip, 32).await?;
            nl.replace_route(host_route(spec.router), None, &pod, RouteScope::Link)
                .await?;
            let default = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("valid prefix");
            nl.replace_route(default, Some(spec.router), &pod, RouteScope::Universe)
                .await?;
            // Re-read: the link is up now and the kernel may have settled the MAC and MTU.
            Ok(nl.link(spec.ifname).await?.unwrap_or(pod))
        })
    })?;

    // Node side, part 2: the route that sends the pod's address into the veth.
    with_netlink(async |nl| {
        nl.replace_route(host_route(spec.ip), None, &host, RouteScope::Link)
            .await
    })?;

    Ok(Wired { host, pod })
}

/// DEL's and GC's datapath: removes the node's routes to `ips` via the host veth and the veth
/// itself (which takes the pod end with it). Everything missing is fine.
pub fn detach(host_veth: &str, ips: &[Ipv4Addr]) -> Result<(), CniError> {
    with_netlink(async |nl| {
        let Some(host) = nl.link(host_veth).await? else {
            return Ok(());
        };
        for ip in ips {
            nl.delete_link_route(host_route(*ip), &host).await?;
        }
        nl.delete_link(host_veth).await?;
        Ok(())
    })
}

/// What CHECK expects of one attachment.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub host_veth: &'a str,
    pub ifname: &'a str,
    pub pod_mac: Option<&'a str>,
    pub ips: &'a [Ipv4Net],
    pub router: Ipv4Addr,
    /// `(dst, gw)` of each IPv4 route the result lists.
    pub routes: &'a [(Ipv4Net, Option<Ipv4Addr>)],
}

fn check_failed(msg: String) -> CniError {
    CniError::CheckFailed(msg)
}

/// CHECK on the node: the host veth exists, is up, and the node routes each pod address into it.
pub fn check_host(exp: &Expected<'_>) -> Result<(), CniError> {
    with_netlink(async |nl| {
        let host = nl
            .link(exp.host_veth)
            .await?
            .ok_or_else(|| check_failed(format!("host veth {} does not exist", exp.host_veth)))?;
        if !host.up {
            return Err(check_failed(format!("host veth {} is down", exp.host_veth)));
        }
        let routes = nl.routes().await?;
        for ip in exp.ips {
            let want = host_route(ip.addr());
            if !routes
                .iter()
                .any(|r| r.dst == want && r.oif == Some(host.index))
            {
                return Err(check_failed(format!(
                    "node route {want} dev {} is missing",
                    exp.host_veth
                )));
            }
        }
        Ok(())
    })
}

/// CHECK in the pod: the interface exists, is up, has the expected MAC and addresses, and the
/// router and result routes are present.
pub fn check_pod(exp: &Expected<'_>, pod_netns: &File) -> Result<(), CniError> {
    crate::netns::run_in(pod_netns, || {
        with_netlink(async |nl| {
            let pod = nl.link(exp.ifname).await?.ok_or_else(|| {
                check_failed(format!(
                    "interface {} does not exist in the pod namespace",
                    exp.ifname
                ))
            })?;
            if !pod.up {
                return Err(check_failed(format!(
                    "pod interface {} is down",
                    exp.ifname
                )));
            }
            if let (Some(want), Some(have)) = (exp.pod_mac, pod.mac.as_deref())
                && !want.eq_ignore_ascii_case(have)
            {
                return Err(check_failed(format!(
                    "pod interface {} has MAC {have}, expected {want}",
                    exp.ifname
                )));
            }
            let addrs = nl.addresses(pod.index).await?;
            for ip in exp.ips {
                if !addrs.contains(&(IpAddr::V4(ip.addr()), ip.prefix_len())) {
                    return Err(check_failed(format!(
                        "pod interface {} lacks address {ip}",
                        exp.ifname
                    )));
                }
            }
            let routes = nl.routes().await?;
            let router = host_route(exp.router);
            if !routes
                .iter()
                .any(|r| r.dst == router && r.oif == Some(pod.index) && r.scope == RouteScope::Link)
            {
                return Err(check_failed(format!(
                    "pod route {router} dev {} scope link is missing",
                    exp.ifname
                )));
            }
            for (dst, gw) in exp.routes {
                if !routes
                    .iter()
                    .any(|r| r.dst == *dst && (gw.is_none() || r.gw == *gw))
                {
                    let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
                    return Err(check_failed(format!("pod route {dst}{via} is missing")));
                }
            }
            Ok(())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The host veth name is lxc + 11 hex digits: within IFNAMSIZ, stable, and distinct per
    // (container, ifname).
    #[test]
    fn host_veth_name_is_stable_and_short() {
        let a = host_veth_name("3f6940ab5ab4", "eth0");
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("lxc"));
        assert!(a[3..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, host_veth_name("3f6940ab5ab4", "eth0"));
        assert_ne!(a, host_veth_name("3f6940ab5ab4", "net1"));
        // sha256("abceth0") starts with these digits.
        let digest = hex::encode(Sha256::digest(b"abceth0"));
        assert_eq!(
            host_veth_name("abc", "eth0"),
            format!("lxc{}", &digest[..11])
        );
    }

    #[test]
    fn formats_mac() {
        assert_eq!(
            format_mac(&[0x02, 0, 0xab, 0x10, 0xff, 1]),
            "02:00:ab:10:ff:01"
        );
    }
}
