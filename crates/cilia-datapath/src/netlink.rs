//! Netlink edge: reads and writes routes, devices and addresses of the namespace the process runs in.
//! No decisions here; callers pass in what the pure diffs computed.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use cilia_model::RouteIntent;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::routes::RTPROT_CILIA;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{op}: {source}")]
    Request {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
}

fn req(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source }
}

/// A netlink connection bound to the caller's network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; must be called inside a tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The IPv4 routes of the main table that carry Cilia's protocol number.
    pub async fn owned_routes(&self) -> Result<BTreeSet<RouteIntent>, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(msg).execute();
        let mut out = BTreeSet::new();
        while let Some(m) = stream.try_next().await.map_err(req("listing routes"))? {
            if m.header.protocol != RouteProtocol::Other(RTPROT_CILIA) {
                continue;
            }
            if let Some(r) = route_intent_of(&m) {
                out.insert(r);
            }
        }
        Ok(out)
    }

    pub async fn add_route(&self, r: &RouteIntent) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix_len())
            .gateway(r.via)
            .protocol(RouteProtocol::Other(RTPROT_CILIA))
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding route {} via {}", r.dst, r.via)))
    }

    pub async fn del_route(&self, r: &RouteIntent) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dst.network(), r.dst.prefix_len())
            .gateway(r.via)
            .protocol(RouteProtocol::Other(RTPROT_CILIA))
            .build();
        self.handle
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(req(format!("deleting route {} via {}", r.dst, r.via)))
    }

    /// Index of the link named `name`, if it exists.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(Some(m.header.index)),
            Ok(None) => Ok(None),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(req(format!("looking up link {name}"))(e)),
        }
    }

    /// Names and indexes of every link in the namespace.
    pub async fn links(&self) -> Result<Vec<(u32, String)>, NetlinkError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(req("listing links"))? {
            let name = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(name) = name {
                out.push((m.header.index, name));
            }
        }
        Ok(out)
    }

    /// Makes sure the host device `name` exists (a veth pair with `peer`, as Cilium's
    /// cilium_host/cilium_net; kernels without the dummy driver have veth), both ends are up, and
    /// `name` holds `addr` as /32. Returns whether anything had to be changed.
    pub async fn ensure_host_device(
        &self,
        name: &str,
        peer: &str,
        addr: Ipv4Addr,
    ) -> Result<bool, NetlinkError> {
        let mut changed = false;
        let index = match self.link_index(name).await? {
            Some(i) => i,
            None => {
                self.handle
                    .link()
                    .add(LinkVeth::new(name, peer).up().build())
                    .execute()
                    .await
                    .map_err(req(format!("creating {name}")))?;
                changed = true;
                self.link_index(name).await?.ok_or_else(|| {
                    req(format!("finding {name} after creating it"))(
                        rtnetlink::Error::RequestFailed,
                    )
                })?
            }
        };
        for dev in [Some(index), self.link_index(peer).await?]
            .into_iter()
            .flatten()
        {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(dev).up().build())
                .execute()
                .await
                .map_err(req(format!("setting {name}/{peer} up")))?;
        }
        let mut have: Vec<Ipv4Net> = Vec::new();
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(req(format!("listing addresses of {name}")))?
        {
            if m.header.family != AddressFamily::Inet {
                continue;
            }
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    have.push(
                        Ipv4Net::new(*ip, m.header.prefix_len).expect("kernel prefix length"),
                    );
                }
            }
        }
        let want = Ipv4Net::new(addr, 32).expect("32 is a valid prefix");
        if !have.contains(&want) {
            self.handle
                .address()
                .add(index, IpAddr::V4(addr), 32)
                .execute()
                .await
                .map_err(req(format!("adding {addr}/32 to {name}")))?;
            changed = true;
        }
        Ok(changed)
    }

    /// Deletes link `name` if present.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        if let Some(i) = self.link_index(name).await? {
            self.handle
                .link()
                .del(i)
                .execute()
                .await
                .map_err(req(format!("deleting {name}")))?;
        }
        Ok(())
    }
}

/// A `/32` route of the main table through a device without a gateway (`<ip>/32 dev <if>`): how
/// the CNI plugin points the node at a pod behind its host-side veth. (address, ifindex).
fn host_route_of(m: &RouteMessage) -> Option<(Ipv4Addr, u32)> {
    // Unicast only: the local table holds `local <addr> dev <if>` routes for the node's own
    // addresses, which are no pods.
    if m.header.destination_prefix_length != 32
        || m.header.kind != netlink_packet_route::route::RouteType::Unicast
    {
        return None;
    }
    let mut dst = None;
    let mut oif = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(_) => return None,
            _ => {}
        }
    }
    Some((dst?, oif?))
}

impl Netlink {
    /// Every `<ip>/32 dev <if>` route of the main table (see [`host_route_of`]).
    pub async fn host_routes(&self) -> Result<Vec<(Ipv4Addr, u32)>, NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(m) = stream.try_next().await.map_err(req("listing routes"))? {
            if let Some(r) = host_route_of(&m) {
                out.push(r);
            }
        }
        Ok(out)
    }
}

fn route_intent_of(m: &RouteMessage) -> Option<RouteIntent> {
    let mut dst = None;
    let mut via = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => via = Some(*ip),
            _ => {}
        }
    }
    Some(RouteIntent {
        dst: Ipv4Net::new(dst?, m.header.destination_prefix_length).ok()?,
        via: via?,
    })
}
