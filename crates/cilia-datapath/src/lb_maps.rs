//! `#[repr(C)]` mirrors of the service load-balancing maps declared in `ebpf/lib/lb_maps.h`, checked
//! against the C declarations at compile time. Addresses and ports are kept as the C side keeps them:
//! network byte order in native integers, converted only at the edges ([`be32`], [`be16`]).

use std::net::Ipv4Addr;

use crate::clock::Clock;
use crate::maps::{assert_layout, c};

/// Network-order `__be32` of an address, as the datapath stores it.
pub fn be32(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

/// The address behind a `__be32`.
pub fn ip_of(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// Network-order `__be16` of a port.
pub fn be16(port: u16) -> u16 {
    port.to_be()
}

/// The port behind a `__be16`.
pub fn port_of(v: u16) -> u16 {
    u16::from_be(v)
}

/// A frontend slot: VIP:port/proto in a scope. Slot 0 is the service, slots 1..=count its backends.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4Key {
    pub address: u32,
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}

/// Value of a frontend slot: on slot 0 the service, on slot n the backend id of that slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4Service {
    pub backend_id: u32,
    pub rev_nat_index: u32,
    pub count: u16,
    pub mode: u8,
    pub algorithm: u8,
    pub flags: u16,
    pub pad: u16,
    pub affinity_timeout: u32,
}

/// A backend, by id.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4Backend {
    pub address: u32,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

/// The frontend a service's replies must come from, by rev_nat_index.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4ReverseNat {
    pub address: u32,
    pub port: u16,
    pub pad: u16,
}

/// A flow's 5-tuple as on the wire: key of the conntrack, SNAT and DSR maps.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

impl Lb4Tuple {
    pub fn new(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> Self {
        Lb4Tuple {
            saddr: be32(src.0),
            daddr: be32(dst.0),
            sport: be16(src.1),
            dport: be16(dst.1),
            proto,
            pad: [0; 3],
        }
    }
}

/// Conntrack of a client flow towards a frontend: its backend and SNAT port.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4CtEntry {
    pub backend_id: u32,
    pub rev_nat_index: u32,
    pub fwd: u8,
    /// TCP: a FIN or RST was seen.
    pub closing: u8,
    /// TCP: a packet with ACK was seen (past the handshake).
    pub seen_ack: u8,
    pub pad: u8,
    pub nat_addr: u32,
    pub nat_port: u16,
    pub pad2: u16,
    /// Expiry in conntrack ticks ([`ct_tick`]).
    pub expires: u32,
}

/// Conntrack lifetimes (Cilium's defaults, `bpf-ct-timeout-*`), in seconds: TCP handshake,
/// established, closing; UDP. In that order in [`LbConfig::ct_timeout`] (as ticks).
pub const CT_TIMEOUT_TCP_SYN_S: u64 = 60;
pub const CT_TIMEOUT_TCP_S: u64 = 21_600;
pub const CT_TIMEOUT_TCP_CLOSE_S: u64 = 10;
pub const CT_TIMEOUT_NONTCP_S: u64 = 60;
/// How long the datapath uses a memoised FIB answer.
pub const FIB_MEMO_MS: u64 = 100;

/// The datapath's conntrack tick now (see [`crate::clock`]).
pub fn ct_tick() -> std::io::Result<u32> {
    Clock::get()?.ct_tick()
}

/// SNAT state keyed by the reply tuple: the client a reply belongs to.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4NatEntry {
    pub client_addr: u32,
    pub client_port: u16,
    pub pad: u16,
    pub rev_nat_index: u32,
}

/// Reverse translation on a backend's node (DSR / node-local), keyed by the reply tuple.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4DsrEntry {
    pub vip: u32,
    pub vport: u16,
    pub pad: u16,
}

/// Key of a fragmented datagram.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub pad: u8,
}

/// Ports of a fragmented datagram, from its first fragment.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4FragPorts {
    pub sport: u16,
    pub dport: u16,
}

/// Session affinity key: a client towards a service.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lb4AffinityKey {
    pub client_addr: u32,
    pub rev_nat_index: u32,
}

/// Session affinity value: the client's backend and when it was last used.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lb4AffinityEntry {
    pub backend_id: u32,
    pub pad: u32,
    pub last_used_ns: u64,
}

/// Node facts the load balancer needs (slot 0 of `cilia_lb_config`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbConfig {
    pub node_addr: u32,
    pub node_mac: [u8; 6],
    /// Host order, inclusive.
    pub snat_port_min: u16,
    /// Host order, inclusive.
    pub snat_port_max: u16,
    pub pad: u16,
    pub maglev_table_size: u32,
    pub hash_seed: u32,
    /// The clock fields ([`LbConfig::clocked`] fills them for this kernel).
    pub fib_memo_jiffies: u32,
    pub ct_tick_shift: u8,
    pub pad2: [u8; 3],
    /// Lifetimes in conntrack ticks, in `enum lb_ct_timeout` order.
    pub ct_timeout: [u32; c::LB_CT_TIMEOUTS as usize],
    /// The device `node_mac` belongs to: XDP checks destinations there against `node_mac`
    /// (elsewhere against `cilia_lb_dev`); 0: none.
    pub node_ifindex: u32,
}

impl LbConfig {
    /// With the clock fields of this kernel's jiffies: tick shift, lifetimes, FIB memo time.
    pub fn clocked(self) -> std::io::Result<Self> {
        let clock = Clock::get()?;
        Ok(self.with_clock(clock.hz(), clock.tick_shift()))
    }

    /// With the clock fields for `hz` and `shift` (pure: see [`LbConfig::clocked`]).
    pub fn with_clock(self, hz: u32, shift: u8) -> Self {
        let t = |secs| crate::clock::ticks(secs, hz, shift);
        LbConfig {
            fib_memo_jiffies: (FIB_MEMO_MS * u64::from(hz)).div_ceil(1000) as u32,
            ct_tick_shift: shift,
            pad2: [0; 3],
            ct_timeout: [
                t(CT_TIMEOUT_TCP_SYN_S),
                t(CT_TIMEOUT_TCP_S),
                t(CT_TIMEOUT_TCP_CLOSE_S),
                t(CT_TIMEOUT_NONTCP_S),
            ],
            ..self
        }
    }
}

/// A node device's MAC (`cilia_lb_dev`, by ifindex): XDP passes unicast frames for other MACs.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LbDev {
    pub mac: [u8; 6],
    pub pad: [u8; 2],
}

/// Slots of `cilia_lb_dev`: devices with a larger ifindex are not checked.
pub const LB_DEV_SLOTS: u32 = c::CILIA_LB_DEV_SLOTS;
/// Capacity of `cilia_lb_standby`.
pub const LB_STANDBY_MAX: u32 = c::CILIA_LB_STANDBY_MAX;

// SAFETY: plain-old-data, every bit pattern valid, explicit padding only (checked below).
unsafe impl aya::Pod for LbDev {}
unsafe impl aya::Pod for Lb4Key {}
unsafe impl aya::Pod for Lb4Service {}
unsafe impl aya::Pod for Lb4Backend {}
unsafe impl aya::Pod for Lb4ReverseNat {}
unsafe impl aya::Pod for Lb4Tuple {}
unsafe impl aya::Pod for Lb4CtEntry {}
unsafe impl aya::Pod for Lb4NatEntry {}
unsafe impl aya::Pod for Lb4DsrEntry {}
unsafe impl aya::Pod for Lb4FragKey {}
unsafe impl aya::Pod for Lb4FragPorts {}
unsafe impl aya::Pod for Lb4AffinityKey {}
unsafe impl aya::Pod for Lb4AffinityEntry {}
unsafe impl aya::Pod for LbConfig {}

assert_layout!(
    Lb4Key,
    c::SIZE_lb4_key,
    address = c::OFF_lb4_key_address,
    dport = c::OFF_lb4_key_dport,
    backend_slot = c::OFF_lb4_key_backend_slot,
    proto = c::OFF_lb4_key_proto,
    scope = c::OFF_lb4_key_scope
);
assert_layout!(
    Lb4Service,
    c::SIZE_lb4_service,
    backend_id = c::OFF_lb4_service_backend_id,
    count = c::OFF_lb4_service_count,
    rev_nat_index = c::OFF_lb4_service_rev_nat_index,
    mode = c::OFF_lb4_service_mode,
    algorithm = c::OFF_lb4_service_algorithm,
    flags = c::OFF_lb4_service_flags,
    affinity_timeout = c::OFF_lb4_service_affinity_timeout
);
assert_layout!(
    Lb4Backend,
    c::SIZE_lb4_backend,
    address = c::OFF_lb4_backend_address,
    port = c::OFF_lb4_backend_port,
    proto = c::OFF_lb4_backend_proto,
    flags = c::OFF_lb4_backend_flags
);
assert_layout!(
    Lb4ReverseNat,
    c::SIZE_lb4_reverse_nat,
    address = c::OFF_lb4_reverse_nat_address,
    port = c::OFF_lb4_reverse_nat_port
);
assert_layout!(
    Lb4Tuple,
    c::SIZE_lb4_tuple,
    saddr = c::OFF_lb4_tuple_saddr,
    daddr = c::OFF_lb4_tuple_daddr,
    sport = c::OFF_lb4_tuple_sport,
    dport = c::OFF_lb4_tuple_dport,
    proto = c::OFF_lb4_tuple_proto
);
assert_layout!(
    Lb4CtEntry,
    c::SIZE_lb4_ct_entry,
    backend_id = c::OFF_lb4_ct_entry_backend_id,
    rev_nat_index = c::OFF_lb4_ct_entry_rev_nat_index,
    fwd = c::OFF_lb4_ct_entry_fwd,
    nat_addr = c::OFF_lb4_ct_entry_nat_addr,
    nat_port = c::OFF_lb4_ct_entry_nat_port
);
assert_layout!(
    Lb4NatEntry,
    c::SIZE_lb4_nat_entry,
    client_addr = c::OFF_lb4_nat_entry_client_addr,
    client_port = c::OFF_lb4_nat_entry_client_port,
    rev_nat_index = c::OFF_lb4_nat_entry_rev_nat_index
);
assert_layout!(
    Lb4DsrEntry,
    c::SIZE_lb4_dsr_entry,
    vip = c::OFF_lb4_dsr_entry_vip,
    vport = c::OFF_lb4_dsr_entry_vport
);
assert_layout!(
    Lb4FragKey,
    c::SIZE_lb4_frag_key,
    saddr = c::OFF_lb4_frag_key_saddr,
    daddr = c::OFF_lb4_frag_key_daddr,
    id = c::OFF_lb4_frag_key_id,
    proto = c::OFF_lb4_frag_key_proto
);
assert_layout!(
    Lb4FragPorts,
    c::SIZE_lb4_frag_ports,
    sport = c::OFF_lb4_frag_ports_sport,
    dport = c::OFF_lb4_frag_ports_dport
);
assert_layout!(
    Lb4AffinityKey,
    c::SIZE_lb4_affinity_key,
    client_addr = c::OFF_lb4_affinity_key_client_addr,
    rev_nat_index = c::OFF_lb4_affinity_key_rev_nat_index
);
assert_layout!(
    Lb4AffinityEntry,
    c::SIZE_lb4_affinity_entry,
    backend_id = c::OFF_lb4_affinity_entry_backend_id,
    last_used_ns = c::OFF_lb4_affinity_entry_last_used_ns
);
assert_layout!(LbDev, c::SIZE_lb_dev, mac = c::OFF_lb_dev_mac);
assert_layout!(
    LbConfig,
    c::SIZE_lb_config,
    node_addr = c::OFF_lb_config_node_addr,
    node_mac = c::OFF_lb_config_node_mac,
    snat_port_min = c::OFF_lb_config_snat_port_min,
    snat_port_max = c::OFF_lb_config_snat_port_max,
    maglev_table_size = c::OFF_lb_config_maglev_table_size,
    hash_seed = c::OFF_lb_config_hash_seed,
    fib_memo_jiffies = c::OFF_lb_config_fib_memo_jiffies,
    ct_tick_shift = c::OFF_lb_config_ct_tick_shift,
    ct_timeout = c::OFF_lb_config_ct_timeout,
    node_ifindex = c::OFF_lb_config_node_ifindex
);

/// Counter indexes of `cilia_lb_counters` (`enum lb_counter` in lb_maps.h), in order.
pub const LB_COUNTER_NAMES: [&str; c::LB_C_MAX as usize] = [
    "miss",
    "fwd_snat",
    "fwd_dsr",
    "fwd_local",
    "rev_snat",
    "ct_hit",
    "ct_stale",
    "no_backend_drop",
    "no_backend_reject",
    "snat_port_retry",
    "snat_port_exhausted",
    "dsr_no_room",
    "frag_first",
    "frag_later_fwd",
    "frag_later_unknown",
    "icmp_err_flow",
    "malformed",
    "xmit_tx",
    "xmit_stack",
    "dsr_recorded",
    "dsr_reversed",
    "affinity_hit",
    "stale_slot",
    "fib_memo_hit",
    "ct_expired",
    "xmit_redirect",
    "xdp_to_tc",
    "other_host",
    "other_host_served",
];

/// One counter of `cilia_lb_counters`, by its C name without the `LB_C_` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LbCounter {
    Miss = 0,
    FwdSnat,
    FwdDsr,
    FwdLocal,
    RevSnat,
    CtHit,
    CtStale,
    NoBackendDrop,
    NoBackendReject,
    SnatPortRetry,
    SnatPortExhausted,
    DsrNoRoom,
    FragFirst,
    FragLaterFwd,
    FragLaterUnknown,
    IcmpErrFlow,
    Malformed,
    XmitTx,
    XmitStack,
    DsrRecorded,
    DsrReversed,
    AffinityHit,
    StaleSlot,
    FibMemoHit,
    CtExpired,
    XmitRedirect,
    XdpToTc,
    OtherHost,
    OtherHostServed,
}

const _: () = assert!(LbCounter::OtherHostServed as u32 + 1 == c::LB_C_MAX);
const _: () = assert!(c::LB_C_MAX <= c::CILIA_LB_COUNTERS_MAX);
