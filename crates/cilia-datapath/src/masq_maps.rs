//! `#[repr(C)]` mirrors of the masquerading maps declared in `ebpf/lib/masq_maps.h`, checked against
//! the C declarations at compile time. Addresses and ports are kept as the C side keeps them: network
//! byte order in native integers (convert with [`crate::lb_maps::be32`] / [`crate::lb_maps::ip_of`]).

use std::mem::{offset_of, size_of};

use crate::maps::c;

/// A flow's tuple as on the wire (ICMP echo: the identifier is `sport` going out, `dport` coming
/// back); key of `cilia_snat_v4_external`. `dir` is [`c::MASQ_DIR_OUT`] or [`c::MASQ_DIR_IN`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Masq4Tuple {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: [u8; 2],
}

/// What a keyed packet's source (OUT) or destination (IN) becomes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Masq4NatEntry {
    pub to_addr: u32,
    pub to_port: u16,
    /// `MASQ_NAT_F_*` ([`c::MASQ_NAT_F_CLOSING`]: a TCP FIN or RST went through this entry).
    pub flags: u16,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the flow got its port.
    pub created_ns: u64,
    /// CLOCK_MONOTONIC of the last packet translated through this entry, refreshed at most once a
    /// second by the datapath.
    pub seen_ns: u64,
}

impl Masq4NatEntry {
    pub fn closing(&self) -> bool {
        u32::from(self.flags) & c::MASQ_NAT_F_CLOSING != 0
    }
}

/// A fragmented reply datagram (key of `cilia_masq_frag_v4`, value: the pod address, `__be32`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Masq4FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub pad: u8,
}

/// Node facts of the masquerading programs (slot 0 of `cilia_masq_config`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MasqConfig {
    pub node_addr: u32,
    pub pod_net: u32,
    pub pod_mask: u32,
    pub hash_seed: u32,
    /// Host order.
    pub port_min: u16,
    pub port_max: u16,
    pub flags: u32,
}

/// Verdict counters (`cilia_masq_counters`), by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum MasqCounter {
    Snat = 0,
    SnatNew,
    Collision,
    NoPort,
    Excluded,
    Unsupported,
    RevNat,
    Frag,
    RevNatIcmpError,
    RevNatFrag,
    /// Draining: pod packets of flows without a NAT entry, passed untouched.
    DrainPass,
}

// SAFETY: plain-old-data, every bit pattern valid, explicit padding (checked below).
unsafe impl aya::Pod for Masq4Tuple {}
unsafe impl aya::Pod for Masq4NatEntry {}
unsafe impl aya::Pod for MasqConfig {}
unsafe impl aya::Pod for Masq4FragKey {}

const _: () = {
    assert!(size_of::<Masq4Tuple>() == c::SIZE_masq4_tuple);
    assert!(offset_of!(Masq4Tuple, saddr) == c::OFF_masq4_tuple_saddr);
    assert!(offset_of!(Masq4Tuple, daddr) == c::OFF_masq4_tuple_daddr);
    assert!(offset_of!(Masq4Tuple, sport) == c::OFF_masq4_tuple_sport);
    assert!(offset_of!(Masq4Tuple, dport) == c::OFF_masq4_tuple_dport);
    assert!(offset_of!(Masq4Tuple, proto) == c::OFF_masq4_tuple_proto);
    assert!(offset_of!(Masq4Tuple, dir) == c::OFF_masq4_tuple_dir);
    assert!(size_of::<Masq4NatEntry>() == c::SIZE_masq4_nat_entry);
    assert!(offset_of!(Masq4NatEntry, to_addr) == c::OFF_masq4_nat_entry_to_addr);
    assert!(offset_of!(Masq4NatEntry, to_port) == c::OFF_masq4_nat_entry_to_port);
    assert!(offset_of!(Masq4NatEntry, flags) == c::OFF_masq4_nat_entry_flags);
    assert!(offset_of!(Masq4NatEntry, created_ns) == c::OFF_masq4_nat_entry_created_ns);
    assert!(offset_of!(Masq4NatEntry, seen_ns) == c::OFF_masq4_nat_entry_seen_ns);
    // The LPM key is aya's `Key<u32>`: prefix length then the address.
    assert!(size_of::<aya::maps::lpm_trie::Key<u32>>() == c::SIZE_ipmasq4_key);
    assert!(c::OFF_ipmasq4_key_prefixlen == 0 && c::OFF_ipmasq4_key_addr == 4);
    assert!(size_of::<MasqConfig>() == c::SIZE_masq_config);
    assert!(offset_of!(MasqConfig, node_addr) == c::OFF_masq_config_node_addr);
    assert!(offset_of!(MasqConfig, pod_net) == c::OFF_masq_config_pod_net);
    assert!(offset_of!(MasqConfig, pod_mask) == c::OFF_masq_config_pod_mask);
    assert!(offset_of!(MasqConfig, hash_seed) == c::OFF_masq_config_hash_seed);
    assert!(offset_of!(MasqConfig, port_min) == c::OFF_masq_config_port_min);
    assert!(offset_of!(MasqConfig, port_max) == c::OFF_masq_config_port_max);
    assert!(offset_of!(MasqConfig, flags) == c::OFF_masq_config_flags);
    assert!(MasqCounter::DrainPass as u32 + 1 == c::MASQ_C_MAX);
    assert!(size_of::<Masq4FragKey>() == c::SIZE_masq4_frag_key);
    assert!(offset_of!(Masq4FragKey, saddr) == c::OFF_masq4_frag_key_saddr);
    assert!(offset_of!(Masq4FragKey, daddr) == c::OFF_masq4_frag_key_daddr);
    assert!(offset_of!(Masq4FragKey, id) == c::OFF_masq4_frag_key_id);
    assert!(offset_of!(Masq4FragKey, proto) == c::OFF_masq4_frag_key_proto);
};
