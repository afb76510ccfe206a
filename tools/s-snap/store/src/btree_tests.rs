//! Unit tests of the B+tree against `std::collections::BTreeMap`.

use crate::store::testing::{
    LeafEntries, QueuedFrees, DROP_LEAVES, TREE_PRIVATE, TREE_SHARED, TREE_SNAPS,
};
use crate::userspace::{Cache, MemDisk};
use crate::{BlockIo, Store};
use std::collections::BTreeMap;
use std::vec;

fn store(chunks: usize, cache: usize) -> Store<Cache<MemDisk>> {
    let disk = MemDisk::new(chunks * 4096);
    let io = Cache::new(disk, 4096, cache);
    Store::open(io, 8).expect("format")
}

use crate::model_test::Rng;

fn check_clean(s: &Store<Cache<MemDisk>>) {
    let mut scratch = vec![0u8; s.check_scratch_len()];
    let mut probs = vec![];
    // Raw btree tests bypass the exception counters and the space map's
    // data accounting, so only structural problems matter here.
    s.check(&mut scratch, &mut |p| probs.push(p)).unwrap();
    let structural: std::vec::Vec<_> = probs
        .iter()
        .filter(|p| p.what.starts_with("btree") || p.what.contains("referenced more than once"))
        .collect();
    assert!(structural.is_empty(), "{structural:?}");
}

fn compare(s: &Store<Cache<MemDisk>>, tree: usize, m: &BTreeMap<u128, u128>, rng: &mut Rng) {
    // Full ordered iteration through ceil.
    let mut from = 0u128;
    let mut it = m.iter();
    loop {
        let got = s.ceil(tree, from).unwrap();
        let want = it.next().map(|(k, v)| (*k, *v));
        assert_eq!(got, want);
        match got {
            Some((k, _)) => from = k + 1,
            None => break,
        }
    }
    // Random probes: lookup, floor, ceil.
    for _ in 0..200 {
        let k = (rng.next() % 5000) as u128 | ((rng.next() % 3) as u128) << 64;
        assert_eq!(s.lookup(tree, k).unwrap(), m.get(&k).copied());
        let fl = s.floor_tx(tree, k).unwrap().map(|(a, b, _)| (a, b));
        assert_eq!(fl, m.range(..=k).next_back().map(|(a, b)| (*a, *b)));
        let ce = s.ceil(tree, k).unwrap();
        assert_eq!(ce, m.range(k..).next().map(|(a, b)| (*a, *b)));
    }
}

#[test]
fn insert_remove_random_vs_btreemap() {
    for seed in 1..=4u64 {
        let mut s = store(4096, 64);
        let mut rng = Rng(seed * 0x9E37_79B9);
        let mut m = BTreeMap::new();
        for step in 0..12_000u32 {
            let k = (rng.next() % 5000) as u128 | ((rng.next() % 3) as u128) << 64;
            if rng.next() % 3 == 0 {
                assert_eq!(
                    s.remove(TREE_SHARED, k).unwrap(),
                    m.remove(&k),
                    "step {step}"
                );
            } else {
                // A value the shared tree can hold: 5 and 4 bytes.
                let v = (rng.next() % (1 << 40)) as u128 | ((rng.next() % (1 << 32)) as u128) << 64;
                assert_eq!(
                    s.insert(TREE_SHARED, k, v).unwrap(),
                    m.insert(k, v),
                    "step {step}"
                );
            }
            if step % 997 == 0 {
                s.commit().unwrap();
            }
        }
        compare(&s, TREE_SHARED, &m, &mut rng);
        check_clean(&s);
        // Remove everything: the tree collapses to one empty leaf.
        let keys: std::vec::Vec<u128> = m.keys().copied().collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(s.remove(TREE_SHARED, *k).unwrap().is_some());
            if i % 1500 == 0 {
                s.commit().unwrap();
            }
        }
        assert_eq!(s.info().roots[0].1, 1, "depth after removing all");
        assert_eq!(s.ceil(TREE_SHARED, 0).unwrap(), None);
        s.commit().unwrap();
        check_clean(&s);
    }
}

/// The keys of the leaf that holds `from`, from `from` on.
fn leaf_keys(s: &Store<Cache<MemDisk>>, tree: usize, from: u128) -> std::vec::Vec<u128> {
    let mut keys = vec![];
    s.scan_leaf(tree, from, |k, _| {
        keys.push(k);
        Ok(true)
    })
    .unwrap();
    keys
}

#[test]
fn removing_runs_of_a_leaf_keeps_the_tree_valid() {
    // Random inserts half-fill the nodes, appends fill them; runs removed
    // from one leaf at a time, first or last of its parent, take leaves to
    // their minimum, and the refills before the next run borrow and merge
    // in every direction, down to the root's collapse. Seed 5 appends
    // 80,000 keys: a tree of depth 3 whose last nodes of each level hold
    // few entries.
    for seed in 1..=5u64 {
        let keys = if seed == 5 { 80_000 } else { 20_000u128 };
        let mut s = store(if seed == 5 { 16384 } else { 8192 }, 48);
        let mut rng = Rng(seed * 0x51_7CC1_B727);
        let mut m = BTreeMap::new();
        for k in 0..keys {
            let k = if seed % 2 == 0 || seed == 5 {
                k << 4
            } else {
                (rng.next() % 400_000) as u128
            };
            let v = k as u64 as u128 + (1 << 39);
            s.insert(TREE_PRIVATE, k, v).unwrap();
            m.insert(k, v);
        }
        s.commit().unwrap();
        check_clean(&s);
        if seed == 5 {
            assert_eq!(s.info().roots[1].1, 3, "depth");
        }
        let every = if seed == 5 { 211 } else { 13 };
        let mut round = 0u32;
        // Drops of more than one leaf in one descent.
        let mut multi_drops = 0u32;
        while !m.is_empty() {
            round += 1;
            let probe = (rng.next() % (keys as u64 * 16 + 20_000)) as u128;
            let from = m
                .range(probe..)
                .next()
                .or(m.iter().next_back())
                .map(|(k, _)| *k)
                .unwrap();
            let in_leaf = leaf_keys(&s, TREE_PRIVATE, from);
            // Whole leaves, one or a few adjacent ones, unless the leaf is the root.
            let span = s.leaf_span(TREE_PRIVATE, from).unwrap();
            if rng.next() % 4 == 0 && !span.root {
                // The leaf and up to three after it, with the first key of the leaf after each.
                let mut want = vec![];
                let mut next_of = vec![];
                let mut span = span;
                for _ in 0..1 + rng.next() % 4 {
                    let (first, last) = span.keys.unwrap();
                    let in_leaf = leaf_keys(&s, TREE_PRIVATE, first);
                    assert_eq!(
                        (Some(&first), Some(&last)),
                        (in_leaf.first(), in_leaf.last())
                    );
                    assert_eq!(span.len, in_leaf.len());
                    want.push(in_leaf);
                    next_of.push(span.next);
                    let Some(next) = span.next else { break };
                    span = s.leaf_span(TREE_PRIVATE, next).unwrap();
                }
                // Stop after the leaves wanted by the limit on leaves, by refusing the
                // next one, or by the limit on entries.
                let before_last: usize = want[..want.len() - 1].iter().map(|l| l.len()).sum();
                let mode = rng.next() % 3;
                let limit = match mode {
                    0 => (want.len(), usize::MAX),
                    1 => (DROP_LEAVES, usize::MAX),
                    _ => (DROP_LEAVES, before_last + 1),
                };
                let mut looked = 0usize;
                let mut seen = std::vec::Vec::new();
                let mut frees = QueuedFrees::new();
                let first = (want[0][0], want[0].len());
                let dropped = s
                    .drop_leaves(
                        TREE_PRIVATE,
                        first,
                        limit,
                        &mut frees,
                        |leaf: &LeafEntries<'_>| {
                            looked += 1;
                            let keys: std::vec::Vec<u128> =
                                (0..leaf.len()).map(|i| leaf.key(i).unwrap()).collect();
                            match want.get(looked) {
                                Some(w) => assert_eq!(&keys, w, "leaf offered to accept"),
                                None => assert!(mode == 1, "a leaf past the limits offered"),
                            }
                            Ok(mode != 1 || looked < want.len())
                        },
                        |_, _, vals| {
                            seen.extend_from_slice(vals);
                            Ok(())
                        },
                    )
                    .unwrap();
                s.flush_frees(&mut frees).unwrap();
                // At least the first; more only as far as they share its parent.
                let n = dropped.leaves;
                assert!(n >= 1 && n <= want.len());
                multi_drops += u32::from(n > 1);
                let gone: std::vec::Vec<u128> = want[..n].concat();
                assert_eq!(dropped.entries, gone.len());
                let vals: std::vec::Vec<u64> = gone.iter().map(|k| m[k] as u64).collect();
                assert_eq!(seen, vals, "values handed out by drop_leaves");
                // The scan goes on at the next leaf, or just past the last key dropped.
                let last = *gone.last().unwrap();
                assert!(
                    dropped.after == last + 1 || Some(dropped.after) == next_of[n - 1],
                    "after {} for last key {last} and next leaf {:?}",
                    dropped.after,
                    next_of[n - 1]
                );
                for k in &gone {
                    m.remove(k);
                }
                for rest in &want[n..] {
                    assert_eq!(
                        &leaf_keys(&s, TREE_PRIVATE, rest[0]),
                        rest,
                        "leaf not dropped"
                    );
                }
                continue;
            }
            // All of them, every other one, or the first few.
            let run: std::vec::Vec<u128> = match rng.next() % 3 {
                0 => in_leaf,
                1 => in_leaf.into_iter().step_by(2).collect(),
                _ => in_leaf
                    .into_iter()
                    .take(1 + (rng.next() % 40) as usize)
                    .collect(),
            };
            let removed = s.remove_in_leaf(TREE_PRIVATE, &run).unwrap();
            assert!(removed >= 1 && removed <= run.len());
            for k in &run[..removed] {
                m.remove(k);
            }
            if round % every == 0 {
                s.commit().unwrap();
                compare(&s, TREE_PRIVATE, &m, &mut rng);
                check_clean(&s);
            }
        }
        assert!(multi_drops > 0, "no drop of adjacent leaves at once");
        assert_eq!(s.info().roots[1].1, 1, "depth after removing all");
        assert_eq!(s.ceil(TREE_PRIVATE, 0).unwrap(), None);
        s.commit().unwrap();
        check_clean(&s);
    }
}

#[test]
fn a_run_that_is_not_in_the_leaf_is_refused() {
    let mut s = store(4096, 32);
    for k in 0..2000u128 {
        s.insert(TREE_PRIVATE, k * 2, k + (1 << 39)).unwrap();
    }
    s.commit().unwrap();
    // Descending keys, and a key that is not in the tree.
    assert!(s.remove_in_leaf(TREE_PRIVATE, &[4, 2]).is_err());
    assert!(s.remove_in_leaf(TREE_PRIVATE, &[2, 3]).is_err());
}

#[test]
fn deep_tree_sequential_and_reverse() {
    // Private tree: 270 entries per leaf, 225 per internal node; 120k
    // sequential keys fill the nodes (appends split at the end) and give
    // depth 3, reverse removal exercises the borrow/merge path.
    const N: u128 = 120_000;
    let mut s = store(8192, 32);
    let mut m = BTreeMap::new();
    for k in 0..N {
        s.insert(TREE_PRIVATE, k << 3, k + (1 << 39)).unwrap();
        m.insert(k << 3, k + (1 << 39));
        if k % 5000 == 0 {
            s.commit().unwrap();
        }
    }
    assert!(s.info().roots[1].1 >= 3, "depth {}", s.info().roots[1].1);
    let mut rng = Rng(77);
    compare(&s, TREE_PRIVATE, &m, &mut rng);
    s.commit().unwrap();
    check_clean(&s);
    for k in (0..N).rev() {
        if k % 3 != 0 {
            assert_eq!(s.remove(TREE_PRIVATE, k << 3).unwrap(), Some(k + (1 << 39)));
            m.remove(&(k << 3));
        }
        if k % 7000 == 0 {
            s.commit().unwrap();
        }
    }
    compare(&s, TREE_PRIVATE, &m, &mut rng);
    s.commit().unwrap();
    check_clean(&s);
    // Reopen from disk and compare again.
    let io = s.into_io();
    io.write_dirty().ok();
    let disk = io.into_disk();
    let s = Store::open(Cache::new(disk, 4096, 16), 8).unwrap();
    compare(&s, TREE_PRIVATE, &m, &mut rng);
    check_clean(&s);
}

#[test]
fn three_trees_independent() {
    let mut s = store(2048, 16);
    for k in 0..3000u128 {
        s.insert(TREE_SHARED, k, 1).unwrap();
        s.insert(TREE_PRIVATE, k * 2, 2).unwrap();
        s.insert(TREE_SNAPS, k * 3, 3).unwrap();
    }
    s.commit().unwrap();
    for k in 0..3000u128 {
        assert_eq!(s.lookup(TREE_SHARED, k).unwrap(), Some(1));
        assert_eq!(s.lookup(TREE_PRIVATE, k * 2).unwrap(), Some(2));
        assert_eq!(s.lookup(TREE_SNAPS, k * 3).unwrap(), Some(3));
    }
    check_clean(&s);
}

/// Metadata blocks beyond those of a freshly formatted store.
fn nodes_used(s: &Store<Cache<MemDisk>>, fresh: u64) -> u64 {
    s.usage().metadata_blocks - fresh
}

#[test]
fn appends_fill_nodes_and_random_inserts_half_fill_them() {
    // The shared tree holds 213 entries per leaf.
    const N: u64 = 100_000;
    let mut s = store(8192, 64);
    let fresh = s.usage().metadata_blocks;
    for k in 0..N as u128 {
        // Values outside the device: the check ignores them as chunks.
        s.insert(TREE_SHARED, k << 64 | 1, 1 << 30 | k).unwrap();
    }
    s.commit().unwrap();
    check_clean(&s);
    // Full leaves but one entry: N / 212 leaves plus a few internal nodes.
    let appended = nodes_used(&s, fresh);
    assert!(
        appended <= N / 212 + 4,
        "{appended} nodes for {N} appended keys"
    );
    // The same keys in random order: nodes between half and fully full.
    let mut s = store(8192, 64);
    let mut rng = Rng(5);
    let mut keys: std::vec::Vec<u128> = (0..N as u128).map(|k| k << 64 | 1).collect();
    for i in (1..keys.len()).rev() {
        keys.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    for k in keys {
        s.insert(TREE_SHARED, k, 1 << 30 | k >> 64).unwrap();
    }
    s.commit().unwrap();
    check_clean(&s);
    let random = nodes_used(&s, fresh);
    assert!(
        random > N / 213 && random <= 2 * N / 213 + 8,
        "{random} nodes"
    );
}

#[test]
fn values_beyond_their_field_are_refused_and_change_nothing() {
    let mut s = store(2048, 16);
    for k in 0..1000u128 {
        s.insert(TREE_SHARED, k << 64 | 3, 1 << 30 | k).unwrap();
    }
    s.commit().unwrap();
    let before = s.info();
    // Origin chunks take 6 bytes, epochs 4, COW chunks 5.
    for (k, v) in [
        (1u128 << 112, 0u128),
        (1 << 32, 0),
        (5 << 64, 1 << 40),
        (5 << 64, 1 << 96),
    ] {
        assert_eq!(
            s.insert(TREE_SHARED, k, v).err(),
            Some(crate::Error::Limit("value too large for its on-disk field")),
            "{k:#x} -> {v:#x}"
        );
    }
    assert_eq!(
        s.lookup(TREE_SHARED, 5 << 64 | 3).unwrap(),
        Some(1 << 30 | 5)
    );
    s.commit().unwrap();
    assert_eq!(s.info().roots, before.roots);
    check_clean(&s);
}
