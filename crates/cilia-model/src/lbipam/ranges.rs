//! The address ranges the pools offer: which pool each belongs to, whether it may allocate
//! (enabled, disabled, or silenced by a conflict), its free addresses and its usage.

use std::collections::HashMap;
use std::net::IpAddr;

use super::objects::{AllowFirstLastIps, Block, Pool};
use super::space::{Count, FreeSet, addr, bits};
use crate::selector::LabelSelector;

/// Whether a range may hand out new addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeState {
    /// Its pool is enabled and not in conflict: allocates.
    Active,
    /// Its pool has `spec.disabled: true`: keeps what it gave, gives nothing new.
    Disabled,
    /// Its pool overlaps an older pool or itself: gives nothing new.
    Conflicting,
}

/// One block of one pool, as an inclusive address range.
#[derive(Clone, Debug)]
pub(crate) struct IpRange {
    /// Index into [`PoolTable::pools`].
    pub(crate) pool: usize,
    pub(crate) v6: bool,
    pub(crate) start: u128,
    pub(crate) end: u128,
    /// First and last address are not handed out (`allowFirstLastIPs: No` on a CIDR of more
    /// than two addresses).
    pub(crate) reserve_ends: bool,
    pub(crate) state: RangeState,
    /// Addresses that can still be handed out; kept only for active ranges (empty otherwise).
    pub(crate) free: FreeSet,
    /// Addresses of the range (ends excluded when reserved) held by some Service.
    pub(crate) used: u128,
}

impl IpRange {
    pub(crate) fn contains(&self, v6: bool, b: u128) -> bool {
        self.v6 == v6 && self.start <= b && b <= self.end
    }

    pub(crate) fn is_reserved(&self, b: u128) -> bool {
        self.reserve_ends && (b == self.start || b == self.end)
    }

    /// Addresses the range can ever hand out.
    pub(crate) fn capacity(&self) -> Count {
        let span = Count::from_u128(self.end - self.start).add(Count::from_u128(1));
        if self.reserve_ends {
            span.saturating_sub(Count::from_u128(2))
        } else {
            span
        }
    }

    /// `from - to`, as Cilium prints a range in conflict messages.
    pub(crate) fn label(&self) -> String {
        format!(
            "{} - {}",
            addr(self.v6, self.start),
            addr(self.v6, self.end)
        )
    }

    fn overlaps(&self, other: &IpRange) -> bool {
        self.v6 == other.v6 && self.start <= other.end && other.start <= self.end
    }
}

/// Which Services a pool serves.
#[derive(Clone, Debug)]
pub(crate) enum PoolSelector {
    /// No `serviceSelector`: every Service.
    All,
    Matching(LabelSelector),
    /// An invalid selector selects no Service (Cilium would fail every allocation instead).
    Invalid,
}

/// One pool as the allocator sees it.
#[derive(Clone, Debug)]
pub(crate) struct PoolSlot {
    pub(crate) name: String,
    pub(crate) selector: PoolSelector,
    /// The `PoolConflict` message when the pool is in conflict.
    pub(crate) conflict: Option<String>,
    /// Indices into [`PoolTable::ranges`], in block order.
    pub(crate) ranges: Vec<usize>,
}

impl PoolSlot {
    pub(crate) fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        match &self.selector {
            PoolSelector::All => true,
            PoolSelector::Matching(sel) => sel.matches(labels),
            PoolSelector::Invalid => false,
        }
    }
}

/// All ranges of all pools, in allocation order: pools oldest first (creation time, then
/// name), blocks in spec order. Ranges of pools not in conflict never overlap, so an address
/// lies in at most one of them.
#[derive(Clone, Debug, Default)]
pub(crate) struct PoolTable {
    pub(crate) pools: Vec<PoolSlot>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) ranges: Vec<IpRange>,
    /// Ranges of pools not in conflict, sorted by (family, start), disjoint.
    lookup: Vec<(bool, u128, u128, usize)>,
    /// Ranges of pools in conflict (may overlap anything).
    conflicting: Vec<usize>,
}

/// A block as an inclusive range, or `None` when it is not a range (stop before start, mixed
/// families).
pub(crate) fn block_span(block: &Block) -> Option<(bool, u128, u128, bool)> {
    match block {
        Block::Cidr(net) => {
            let v6 = matches!(net, ipnet::IpNet::V6(_));
            Some((v6, bits(net.network()), bits(net.broadcast()), true))
        }
        Block::Range { start, stop } => {
            let stop = stop.unwrap_or(*start);
            if start.is_ipv6() != stop.is_ipv6() || bits(*start) > bits(stop) {
                return None;
            }
            Some((start.is_ipv6(), bits(*start), bits(stop), false))
        }
    }
}

impl PoolTable {
    /// Lays out the ranges of `pools` and settles conflicts: a pool overlapping itself, or an
    /// older pool not itself in conflict, is in conflict.
    pub(crate) fn build<'a>(pools: impl IntoIterator<Item = &'a Pool>) -> Self {
        let mut ordered: Vec<&Pool> = pools.into_iter().collect();
        ordered
            .sort_by(|a, b| (a.creation_timestamp, &a.name).cmp(&(b.creation_timestamp, &b.name)));
        let mut table = PoolTable::default();
        for (idx, pool) in ordered.iter().enumerate() {
            let selector = match &pool.service_selector {
                None => PoolSelector::All,
                Some(sel) if sel.validate().is_ok() => PoolSelector::Matching(sel.clone()),
                Some(_) => PoolSelector::Invalid,
            };
            let reserve = pool.allow_first_last_ips == Some(AllowFirstLastIps::No);
            let mut ranges = Vec::new();
            for block in &pool.blocks {
                let Some((v6, start, end, from_cidr)) = block_span(block) else {
                    continue;
                };
                ranges.push(table.ranges.len());
                table.ranges.push(IpRange {
                    pool: idx,
                    v6,
                    start,
                    end,
                    // Only CIDRs, and never when that would reserve the whole block.
                    reserve_ends: reserve && from_cidr && end - start >= 2,
                    state: RangeState::Active,
                    free: FreeSet::default(),
                    used: 0,
                });
            }
            table.by_name.insert(pool.name.clone(), idx);
            table.pools.push(PoolSlot {
                name: pool.name.clone(),
                selector,
                conflict: None,
                ranges,
            });
        }
        for idx in 0..table.pools.len() {
            table.pools[idx].conflict = table.conflict_of(idx);
        }
        for (idx, pool) in ordered.iter().enumerate() {
            let conflicting = table.pools[idx].conflict.is_some();
            for &r in &table.pools[idx].ranges.clone() {
                let range = &mut table.ranges[r];
                range.state = if conflicting {
                    RangeState::Conflicting
                } else if pool.disabled {
                    RangeState::Disabled
                } else {
                    RangeState::Active
                };
                if range.state == RangeState::Active {
                    let (mut lo, mut hi) = (range.start, range.end);
                    if range.reserve_ends {
                        lo += 1;
                        hi -= 1;
                    }
                    range.free = FreeSet::span(lo, hi);
                }
                if conflicting {
                    table.conflicting.push(r);
                } else {
                    table.lookup.push((range.v6, range.start, range.end, r));
                }
            }
        }
        table.lookup.sort();
        table
    }

    /// The conflict message of pool `idx`, given the verdicts of all older pools.
    fn conflict_of(&self, idx: usize) -> Option<String> {
        let own = &self.pools[idx];
        for &a in &own.ranges {
            for &b in &own.ranges {
                if a != b && self.ranges[a].overlaps(&self.ranges[b]) {
                    return Some(conflict_message(
                        &self.ranges[a],
                        &self.ranges[b],
                        &own.name,
                    ));
                }
            }
        }
        for older in &self.pools[..idx] {
            if older.conflict.is_some() {
                continue;
            }
            for &a in &own.ranges {
                for &b in &older.ranges {
                    if self.ranges[a].overlaps(&self.ranges[b]) {
                        return Some(conflict_message(
                            &self.ranges[a],
                            &self.ranges[b],
                            &older.name,
                        ));
                    }
                }
            }
        }
        None
    }

    /// The range of a pool not in conflict that holds `ip`, if any.
    pub(crate) fn settled_range_of(&self, ip: IpAddr) -> Option<usize> {
        let (v6, b) = (ip.is_ipv6(), bits(ip));
        let pos = self
            .lookup
            .partition_point(|&(fv6, start, _, _)| (fv6, start) <= (v6, b));
        let &(fv6, _, end, r) = self.lookup.get(pos.checked_sub(1)?)?;
        (fv6 == v6 && b <= end).then_some(r)
    }

    /// Every range holding `ip`: the settled one first, then ranges of pools in conflict.
    pub(crate) fn ranges_of(&self, ip: IpAddr) -> impl Iterator<Item = usize> + '_ {
        let (v6, b) = (ip.is_ipv6(), bits(ip));
        self.settled_range_of(ip).into_iter().chain(
            self.conflicting
                .iter()
                .copied()
                .filter(move |&r| self.ranges[r].contains(v6, b)),
        )
    }
}

fn conflict_message(own: &IpRange, other: &IpRange, other_pool: &str) -> String {
    format!(
        "Pool conflicts since range '{}' overlaps range '{}' from IP Pool '{}'",
        own.label(),
        other.label(),
        other_pool
    )
}
