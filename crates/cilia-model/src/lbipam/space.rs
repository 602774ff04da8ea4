//! Address arithmetic: addresses as integers, the free addresses of a range as a set of spans,
//! and counts too large for `u128` (a whole IPv6 space).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as an integer; families are kept apart by the caller.
pub(crate) fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The inverse of [`bits`].
pub(crate) fn addr(v6: bool, bits: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(bits))
    } else {
        // Callers only pass values that came from an IPv4 address.
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    }
}

/// The free addresses of one range as disjoint inclusive spans `start → end`. Taking the lowest
/// free address, taking a given one and giving one back are all `O(log spans)`, whatever the
/// size of the range (a `/8` or an IPv6 `/64` costs the same as a `/30`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FreeSet {
    spans: BTreeMap<u128, u128>,
}

impl FreeSet {
    /// The inclusive span `start..=end`.
    pub(crate) fn span(start: u128, end: u128) -> Self {
        let mut spans = BTreeMap::new();
        if start <= end {
            spans.insert(start, end);
        }
        Self { spans }
    }

    pub(crate) fn lowest(&self) -> Option<u128> {
        self.spans.keys().next().copied()
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, x: u128) -> bool {
        self.spans
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| x <= end)
    }

    /// Takes `x` out; false when it was not free.
    pub(crate) fn take(&mut self, x: u128) -> bool {
        let Some((&start, &end)) = self.spans.range(..=x).next_back() else {
            return false;
        };
        if x > end {
            return false;
        }
        self.spans.remove(&start);
        if start < x {
            self.spans.insert(start, x - 1);
        }
        if x < end {
            self.spans.insert(x + 1, end);
        }
        true
    }

    /// Gives `x` back, merging with neighbours; false when it was already free.
    pub(crate) fn give(&mut self, x: u128) -> bool {
        let left = self.spans.range(..=x).next_back().map(|(&s, &e)| (s, e));
        if let Some((_, end)) = left
            && x <= end
        {
            return false;
        }
        let mut start = x;
        let mut end = x;
        if let Some((ls, le)) = left
            && le.checked_add(1) == Some(x)
        {
            self.spans.remove(&ls);
            start = ls;
        }
        if let Some(next) = x.checked_add(1)
            && let Some(re) = self.spans.remove(&next)
        {
            end = re;
        }
        self.spans.insert(start, end);
        true
    }
}

/// A non-negative count of addresses, wide enough for sums of whole IPv6 spaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Count {
    /// Little-endian 64-bit limbs (256 bits).
    limbs: [u64; 4],
}

impl Count {
    pub(crate) fn from_u128(v: u128) -> Self {
        Self {
            limbs: [v as u64, (v >> 64) as u64, 0, 0],
        }
    }

    pub(crate) fn add(self, other: Self) -> Self {
        let mut out = [0u64; 4];
        let mut carry = 0u64;
        for (i, slot) in out.iter_mut().enumerate() {
            let (s1, c1) = self.limbs[i].overflowing_add(other.limbs[i]);
            let (s2, c2) = s1.overflowing_add(carry);
            *slot = s2;
            carry = u64::from(c1) + u64::from(c2);
        }
        Self { limbs: out }
    }

    /// `self - other`, floored at zero.
    pub(crate) fn saturating_sub(self, other: Self) -> Self {
        if self.lt(&other) {
            return Self::default();
        }
        let mut out = [0u64; 4];
        let mut borrow = 0u64;
        for (i, slot) in out.iter_mut().enumerate() {
            let (d1, b1) = self.limbs[i].overflowing_sub(other.limbs[i]);
            let (d2, b2) = d1.overflowing_sub(borrow);
            *slot = d2;
            borrow = u64::from(b1) + u64::from(b2);
        }
        Self { limbs: out }
    }

    fn lt(&self, other: &Self) -> bool {
        for i in (0..4).rev() {
            if self.limbs[i] != other.limbs[i] {
                return self.limbs[i] < other.limbs[i];
            }
        }
        false
    }

    fn is_zero(&self) -> bool {
        self.limbs.iter().all(|&l| l == 0)
    }

    /// Divides in place by `d`, returning the remainder.
    fn div_rem(&mut self, d: u64) -> u64 {
        let mut rem: u128 = 0;
        for i in (0..4).rev() {
            let cur = (rem << 64) | u128::from(self.limbs[i]);
            self.limbs[i] = (cur / u128::from(d)) as u64;
            rem = cur % u128::from(d);
        }
        rem as u64
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const CHUNK: u64 = 10_000_000_000_000_000_000;
        let mut n = *self;
        let mut chunks = Vec::new();
        loop {
            chunks.push(n.div_rem(CHUNK));
            if n.is_zero() {
                break;
            }
        }
        let mut out = format!("{}", chunks.pop().unwrap_or(0));
        while let Some(c) = chunks.pop() {
            out.push_str(&format!("{c:019}"));
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The free set hands out the lowest address and merges returned ones back into spans.
    #[test]
    fn free_set_takes_lowest_and_merges() {
        let mut f = FreeSet::span(10, 20);
        assert_eq!(f.lowest(), Some(10));
        assert!(f.take(10));
        assert!(!f.take(10));
        assert!(f.take(15));
        assert_eq!(f.lowest(), Some(11));
        assert!(!f.contains(15));
        assert!(f.give(15));
        assert!(!f.give(15));
        assert!(f.give(10));
        assert_eq!(f, FreeSet::span(10, 20));
        assert!(!f.take(21));
        let mut edge = FreeSet::span(u128::MAX - 1, u128::MAX);
        assert!(edge.take(u128::MAX));
        assert!(edge.give(u128::MAX));
        assert_eq!(edge, FreeSet::span(u128::MAX - 1, u128::MAX));
    }

    // Counts print in decimal past u128 (a whole IPv6 space and more).
    #[test]
    fn counts_print_big_decimals() {
        assert_eq!(Count::default().to_string(), "0");
        assert_eq!(Count::from_u128(65788).to_string(), "65788");
        let full = Count::from_u128(u128::MAX).add(Count::from_u128(1));
        assert_eq!(full.to_string(), "340282366920938463463374607431768211456");
        assert_eq!(
            full.add(full).to_string(),
            "680564733841876926926749214863536422912"
        );
        assert_eq!(
            full.saturating_sub(Count::from_u128(1)).to_string(),
            u128::MAX.to_string()
        );
        assert_eq!(
            Count::from_u128(1)
                .saturating_sub(Count::from_u128(2))
                .to_string(),
            "0"
        );
    }
}
