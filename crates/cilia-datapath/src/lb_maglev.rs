//! The consistent-hashing lookup table behind `loadBalancer.algorithm: maglev`: a pure function from a
//! backend set to a table of `maglev.tableSize` entries that the datapath indexes with a flow hash.
//!
//! Why not the Maglev paper's population loop: it balances to ±1 entry, but removing one backend also
//! moves some entries of *other* backends (the paper's own 3-backend example moves entry 6 from A to
//! C when B goes; see the test below), so flows of healthy backends break on every removal when no
//! conntrack entry covers them (another node takes over the flow, or the entry was evicted). Here
//! each entry picks its backend by rendezvous hashing (highest score of hash(backend, entry) wins):
//! removing a backend moves exactly the entries it owned, adding one takes entries only from others,
//! and every node computes the same table from the same set. The price is statistical balance
//! (binomial: with 16381 entries and 100 backends, about ±8% per backend at one standard deviation)
//! instead of Maglev's exact one, and O(entries × backends) work, done only when a set changes.

use crate::maps::c;

/// `maglev.tableSize` default.
pub const DEFAULT_TABLE_SIZE: u32 = c::CILIA_LB_MAGLEV_TABLE_DEFAULT;

/// The table sizes Cilium accepts for `maglev.tableSize` (primes).
pub const ALLOWED_TABLE_SIZES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// Table size and hash seed (`maglev.hashSeed`) of every maglev table on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevParams {
    pub table_size: u32,
    pub seed: u64,
}

impl Default for MaglevParams {
    fn default() -> Self {
        MaglevParams {
            table_size: DEFAULT_TABLE_SIZE,
            seed: 0,
        }
    }
}

/// splitmix64's finaliser.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of a backend's identity (FNV-1a, then mixed with the seed).
fn key_hash(key: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h ^ mix64(seed))
}

/// The lookup table: entry `i` holds the index (into `backends`) of the backend that owns it.
/// `backends` are stable identities (e.g. `"10.244.1.5:8080/TCP"`), so every node agrees; duplicates
/// are the caller's bug. Empty when there is no backend.
pub fn lookup_table<K: AsRef<[u8]>>(backends: &[K], table_size: u32, seed: u64) -> Vec<usize> {
    if backends.is_empty() {
        return Vec::new();
    }
    let keys: Vec<u64> = backends
        .iter()
        .map(|k| key_hash(k.as_ref(), seed))
        .collect();
    (0..u64::from(table_size))
        .map(|entry| {
            let salt = entry.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut best = 0;
            let mut best_score = 0u64;
            for (i, k) in keys.iter().enumerate() {
                let score = mix64(k ^ salt);
                // Ties (practically never) go to the smaller key, independent of input order.
                if i == 0 || score > best_score || (score == best_score && keys[i] < keys[best]) {
                    best = i;
                    best_score = score;
                }
            }
            best
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080/TCP", i / 250, i % 250 + 1))
            .collect()
    }

    fn owners(table: &[usize], set: &[String]) -> Vec<String> {
        table.iter().map(|&i| set[i].clone()).collect()
    }

    // Removing any one backend moves exactly the entries it owned, for every backend of every set
    // size tried: the flows of the others stay where they were.
    #[test]
    fn removing_a_backend_moves_only_its_entries() {
        for n in 1..=12 {
            let set = names(n);
            let before = owners(&lookup_table(&set, 251, 7), &set);
            for gone in 0..n {
                let rest: Vec<String> = set
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != gone)
                    .map(|(_, s)| s.clone())
                    .collect();
                let after = owners(&lookup_table(&rest, 251, 7), &rest);
                if rest.is_empty() {
                    assert!(after.is_empty());
                    continue;
                }
                for (e, (b, a)) in before.iter().zip(&after).enumerate() {
                    if *b != set[gone] {
                        assert_eq!(
                            a, b,
                            "n={n} removing {}: entry {e} moved from {b} to {a}",
                            set[gone]
                        );
                    } else {
                        assert_ne!(a, b, "n={n}: entry {e} still on the removed backend");
                    }
                }
            }
        }
    }

    // Adding a backend only takes entries away from others; nothing moves between the old ones.
    #[test]
    fn adding_a_backend_only_takes_entries() {
        let set = names(9);
        let before = owners(&lookup_table(&set[..8], 4093, 1), &set[..8]);
        let after = owners(&lookup_table(&set, 4093, 1), &set);
        for (b, a) in before.iter().zip(&after) {
            assert!(a == b || *a == set[8], "{b} -> {a}");
        }
        assert!(
            after.iter().any(|a| *a == set[8]),
            "the new backend owns entries"
        );
    }

    // Input order does not matter: the table depends on the set only.
    #[test]
    fn order_independent_and_deterministic() {
        let set = names(6);
        let mut rev = set.clone();
        rev.reverse();
        assert_eq!(
            owners(&lookup_table(&set, 1021, 3), &set),
            owners(&lookup_table(&rev, 1021, 3), &rev)
        );
        assert_eq!(lookup_table(&set, 1021, 3), lookup_table(&set, 1021, 3));
        assert_ne!(
            lookup_table(&set, 1021, 3),
            lookup_table(&set, 1021, 4),
            "the seed matters"
        );
    }

    // Every entry is filled, with every backend, and loads stay within 5 standard deviations of the
    // binomial mean at the default size.
    #[test]
    fn balanced_within_binomial_bounds() {
        for n in [2usize, 10, 100] {
            let set = names(n);
            let t = lookup_table(&set, DEFAULT_TABLE_SIZE, 0);
            assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
            let mut load = vec![0usize; n];
            for i in &t {
                load[*i] += 1;
            }
            let m = f64::from(DEFAULT_TABLE_SIZE);
            let p = 1.0 / n as f64;
            let (mean, sd) = (m * p, (m * p * (1.0 - p)).sqrt());
            for (i, l) in load.iter().enumerate() {
                assert!(
                    (*l as f64 - mean).abs() <= 5.0 * sd,
                    "n={n}: backend {i} owns {l}, expected {mean:.0} ± {:.0}",
                    5.0 * sd
                );
            }
        }
    }

    #[test]
    fn empty_set_has_no_table() {
        assert!(lookup_table::<String>(&[], 251, 0).is_empty());
    }

    /// The Maglev paper's population loop (Eisenbud et al. 2016, §3.4), only to show why it is not used.
    fn paper_population(perms: &[Vec<usize>], m: usize) -> Vec<usize> {
        let mut next = vec![0usize; perms.len()];
        let mut table = vec![usize::MAX; m];
        let mut filled = 0;
        loop {
            for (i, p) in perms.iter().enumerate() {
                let mut c = p[next[i]];
                while table[c] != usize::MAX {
                    next[i] += 1;
                    c = p[next[i]];
                }
                table[c] = i;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }

    // The paper's example (M=7, backends B0..B2 with its permutations): removing B1 moves entry 6
    // from B0 to B2, a flow of a backend that did not change.
    #[test]
    fn paper_population_moves_other_backends_entries() {
        let b0 = vec![3, 0, 4, 1, 5, 2, 6];
        let b1 = vec![0, 2, 4, 6, 1, 3, 5];
        let b2 = vec![3, 4, 5, 6, 0, 1, 2];
        let all = paper_population(&[b0.clone(), b1, b2.clone()], 7);
        assert_eq!(all, vec![1, 0, 1, 0, 2, 2, 0]);
        let without_b1 = paper_population(&[b0, b2], 7);
        // Renumber: index 1 is now B2.
        assert_eq!(without_b1, vec![0, 0, 0, 0, 1, 1, 1]);
        assert_eq!((all[6], without_b1[6]), (0, 1), "entry 6: B0 -> B2");
    }
}
