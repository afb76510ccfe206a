//! A device with several bitmap blocks: allocation wraps across them, and
//! crashes (losing cached dirty blocks after early write-back of others)
//! followed by more transactions never resurrect stale bitmap slots.

mod common;

use common::*;
use s_snap_store::userspace::SparseDisk;

#[test]
fn several_bitmap_blocks_with_crashes() {
    // 4 KiB chunks: one bitmap block covers 32512 chunks; use 3.
    let chunks: u64 = 3 * 32512 - 100;
    let origin_chunks = 40_000usize;
    let mut h = Harness::build(
        SparseDisk::new(chunks * BS as u64),
        origin_chunks,
        48,
        Some((7, 5)),
        |_| 0,
    );
    h.allow_direct = false;
    let baseline = usage_baseline(&h.s().usage());
    let mut rng = Rng(0xABCDEF);
    let mut next_id = 1;
    let mut crashes = 0;
    let mut early = 0;
    let mut max_hint = 0;
    for round in 0..40 {
        if round % 3 == 0 {
            h.create(next_id);
            next_id += 1;
        }
        for _ in 0..3000 {
            let c = rng.next() % origin_chunks as u64;
            h.origin_write(c, (c % 2) as usize);
        }
        for _ in 0..300 {
            if let Some(&id) = h.snaps.keys().next_back() {
                h.snap_write(id, rng.next() % origin_chunks as u64, 1);
            }
        }
        if round % 4 == 3 {
            // Uncommitted work is lost; some of it was written early.
            early += h.s().io().stats().early_writes;
            h.crash();
            crashes += 1;
        } else {
            h.commit();
        }
        max_hint = max_hint.max(h.s().info().alloc_hint);
        if round % 6 == 5 && h.snaps.len() > 1 {
            let id = *h.snaps.keys().next().unwrap();
            h.delete(id);
            h.commit();
            h.reclaim(4000);
            h.commit();
        }
    }
    let used = h.s().usage();
    eprintln!("{used:?}, max hint {max_hint}, {} unshares", h.unshares);
    assert!(crashes >= 5);
    assert!(early > 100, "{early} early writes before crashes");
    // The allocator got into the third bitmap block.
    assert!(max_hint > 2 * 32512, "max hint {max_hint}");
    assert!(used.private_exceptions > 0);
    h.verify_all();
    h.check();
    h.reopen();
    h.verify_all();
    h.check();
    let ids: Vec<u32> = h.snaps.keys().copied().collect();
    for id in ids {
        h.delete(id);
    }
    h.commit();
    h.check();
    h.reclaim_all();
    h.commit();
    h.check();
    assert_eq!(usage_baseline(&h.s().usage()), baseline);
    assert_eq!(h.s().info().nr_bitmaps, 3);
}
