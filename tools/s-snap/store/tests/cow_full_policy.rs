//! The COW-full policy: `error` fails origin writes that need a copy when the COW device is
//! full, `drop` drops the snapshots that need it and lets the write go on. The policy is kept
//! in the superblock; dropped snapshots stay listed until they are deleted.

mod common;

use common::*;
use s_snap_store::userspace::{Cache, MemDisk};
use s_snap_store::{BlockIo, CowFullPolicy, Error, OriginWrite, Store};

/// A harness on a COW device of `blocks` 4 KiB chunks over `origin_chunks` origin chunks.
fn small(blocks: usize, origin_chunks: usize) -> Harness<MemDisk> {
    Harness::new(MemDisk::new(blocks * BS), origin_chunks, 16)
}

#[test]
fn policy_is_kept_in_the_superblock() {
    let mut h = small(64, 64);
    assert_eq!(h.s().cow_full_policy(), CowFullPolicy::Error);
    h.set_policy(CowFullPolicy::Drop);
    h.reopen();
    assert_eq!(h.s().cow_full_policy(), CowFullPolicy::Drop);
    // Not committed: a crash brings the old policy back.
    h.sm().set_cow_full_policy(CowFullPolicy::Error).unwrap();
    h.crash();
    assert_eq!(h.s().cow_full_policy(), CowFullPolicy::Drop);
    h.set_policy(CowFullPolicy::Error);
    h.reopen();
    assert_eq!(h.s().cow_full_policy(), CowFullPolicy::Error);
    h.check();
}

#[test]
fn error_policy_fails_the_write_and_keeps_every_snapshot() {
    let mut h = small(100, 160);
    assert!(h.create(1));
    for c in 0..160 {
        h.origin_write(c, 0);
    }
    h.commit();
    assert!(h.nospace > 0, "the COW device never filled");
    assert_eq!(h.drops, 0);
    h.verify_all();
    h.check();
}

#[test]
fn drop_policy_keeps_the_origin_writable() {
    let mut h = small(110, 200);
    h.set_policy(CowFullPolicy::Drop);
    // Snapshot 1 gets its own copies of chunks 0..8, so that it does not need a later copy of
    // those chunks; snapshot 2 and 3 then share everything with the origin.
    assert!(h.create(1));
    for c in 0..8 {
        h.origin_write(c, 0);
    }
    assert!(h.create(2));
    assert!(h.create(3));
    h.commit();
    let mut writes = 0;
    for round in 0..3 {
        for c in 0..200 {
            h.origin_write(c, round % 2);
            writes += 1;
        }
        h.commit();
        h.verify_all();
    }
    assert_eq!(h.nospace, 0, "an origin write failed");
    assert!(h.drops > 0, "the COW device never filled");
    // The origin holds every write.
    assert_eq!(h.origin, h.user_origin);
    assert!(writes > 0);
    let u = h.s().usage();
    assert_eq!(u.dropped_snapshots, h.dropped.len() as u64);
    h.check();
    // A dropped snapshot cannot be read or written, and its id stays taken.
    let id = *h.dropped.iter().next().unwrap();
    assert_eq!(h.s().snapshot_epoch(id).unwrap(), None);
    assert_eq!(h.sm().create_snapshot(id).err(), Some(Error::Exists));
    // Deleting the dropped snapshots gives their space back.
    let data_before = h.s().usage().data_chunks;
    for id in h.dropped.clone() {
        assert!(h.delete(id));
    }
    h.commit();
    h.reclaim_all();
    h.commit();
    assert!(h.s().usage().data_chunks <= data_before);
    assert_eq!(h.s().usage().dropped_snapshots, 0);
    h.verify_all();
    h.check();
    // The id is free again.
    assert!(h.create(id));
    h.reopen();
    h.verify_all();
    h.check();
}

#[test]
fn only_the_snapshots_needing_the_copy_are_dropped() {
    // Chunk 0 was copied for snapshot 1; snapshots 2 and 3 came after that copy and still share
    // chunk 0 with the origin. With the COW device full, a write of chunk 0 drops 2 and 3 and
    // keeps 1, whose data of the chunk is on the COW device.
    let mut h = small(100, 160);
    assert!(h.create(1));
    h.origin_write(0, 0);
    h.commit();
    assert!(h.create(2));
    assert!(h.create(3));
    // Fill the COW device with copies of other chunks for snapshots 1 to 3, under the `error`
    // policy, until writes fail even right after a commit.
    let mut c = 1;
    while c < 160 {
        let failed = h.nospace;
        h.origin_write(c, 0);
        h.commit();
        if h.nospace > failed {
            h.origin_write(c, 0);
            if h.nospace > failed + 1 {
                break;
            }
        }
        c += 1;
    }
    assert!(h.nospace > 0, "the COW device never filled");
    assert_eq!(h.drops, 0);
    let failed = h.nospace;
    h.set_policy(CowFullPolicy::Drop);
    h.origin_write(0, 1);
    h.commit();
    assert_eq!(h.nospace, failed, "the write failed");
    assert_eq!(h.drops, 2);
    assert!(h.snaps.contains_key(&1), "snapshot 1 was dropped");
    assert!(h.dropped.contains(&2) && h.dropped.contains(&3));
    h.verify_all();
    h.check();
}

#[test]
fn a_crash_before_the_commit_undoes_the_drop() {
    let mut h = small(100, 160);
    h.set_policy(CowFullPolicy::Drop);
    assert!(h.create(1));
    h.commit();
    let mut c = 0;
    while h.drops == 0 && c < 160 {
        h.origin_write(c, 0);
        c += 1;
    }
    assert_eq!(h.drops, 1, "the COW device never filled");
    // The write waits for the commit; a crash before it leaves snapshot 1 intact.
    assert!(!h.pending.is_empty());
    h.crash();
    assert!(h.snaps.contains_key(&1));
    assert!(h.dropped.is_empty());
    h.verify_all();
    h.check();
}

#[test]
fn a_dropped_snapshot_keeps_shared_data_until_deleted() {
    // Snapshots 1 and 2 share a copy of chunk 0. Snapshot 2 is dropped (for chunk 1), then
    // snapshot 1 is deleted and reclaimed: the copy of chunk 0 stays while the dropped snapshot
    // is listed (the store's checker counts it as a user of the copy), and goes once it is
    // deleted too.
    let mut h = small(100, 160);
    h.set_policy(CowFullPolicy::Drop);
    assert!(h.create(1));
    assert!(h.create(2));
    h.origin_write(0, 0);
    h.commit();
    let shared = h.s().usage().shared_exceptions;
    assert_eq!(shared, 1);
    let mut c = 1;
    while h.drops == 0 && c < 160 {
        h.origin_write(c, 0);
        c += 1;
    }
    h.commit();
    assert!(h.dropped.contains(&2) && h.dropped.contains(&1));
    h.verify_all();
    h.check();
    assert!(h.delete(1));
    h.commit();
    h.reclaim_all();
    h.commit();
    h.check();
    assert!(h.delete(2));
    h.commit();
    h.reclaim_all();
    h.commit();
    let u = h.s().usage();
    assert_eq!(
        (u.data_chunks, u.shared_exceptions, u.private_exceptions),
        (0, 0, 0)
    );
    h.check();
}

#[test]
fn nothing_is_dropped_for_a_write_that_needs_no_copy() {
    let mut h = small(64, 64);
    h.set_policy(CowFullPolicy::Drop);
    assert!(h.create(1));
    h.origin_write(0, 0);
    h.commit();
    let mut gone = vec![];
    assert_eq!(
        h.sm()
            .drop_snapshots_needing(0, &mut |s| gone.push(s.id()))
            .unwrap(),
        0
    );
    assert!(gone.is_empty());
    assert_eq!(h.sm().origin_write_prepare(0), Ok(OriginWrite::Proceed));
    h.verify_all();
}

#[test]
fn a_store_with_dropped_snapshots_opens_read_only_and_checks_clean() {
    let mut h = small(100, 160);
    h.set_policy(CowFullPolicy::Drop);
    assert!(h.create(1));
    for c in 0..160 {
        h.origin_write(c, 0);
    }
    h.commit();
    assert!(h.drops > 0);
    let io = h.store.take().unwrap().into_io();
    io.write_dirty().unwrap();
    let disk = io.into_disk();
    let s = Store::open_existing(Cache::new(disk, BS, 8)).unwrap();
    assert_eq!(s.usage().dropped_snapshots, 1);
    assert_eq!(s.cow_full_policy(), CowFullPolicy::Drop);
    let ids: Vec<u32> = s.dropped_snapshots().map(|x| x.unwrap().id()).collect();
    assert_eq!(ids, [1]);
    assert!(s.snapshot_usage(1).unwrap() > 0);
    check_store(&s);
}
