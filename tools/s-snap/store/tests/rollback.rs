//! Rolling the origin back to a snapshot: what is listed, what the origin reads meanwhile,
//! what is refused, and what a crash keeps. (The model test runs rollbacks among all other
//! operations, with crashes; these tests pin single cases down.)

mod common;

use common::*;
use s_snap_store::userspace::{Cache, MemDisk};
use s_snap_store::{
    Error, Location, OriginWrite, RollbackProgress, SnapWritePlan, SnapshotDiscard, Store,
};

fn open(disk: MemDisk) -> Store<Cache<MemDisk>> {
    Store::open(Cache::new(disk, BS, 32), CS).unwrap()
}

fn reopen(s: Store<Cache<MemDisk>>) -> Store<Cache<MemDisk>> {
    open(MemDisk::from_vec(s.into_io().into_disk().to_vec()))
}

/// Writes origin chunk `c` (copying it for the snapshots that share it) and commits.
fn origin_write(s: &mut Store<Cache<MemDisk>>, c: u64) -> Option<u64> {
    let cow = match s.origin_write_prepare(c).unwrap() {
        OriginWrite::Copy(p) => {
            let cow = p.cow();
            s.origin_write_complete(p).unwrap();
            Some(cow)
        }
        OriginWrite::Proceed | OriginWrite::AfterCommit => None,
        OriginWrite::RollBackFirst => panic!("chunk {c} is to be rolled back first"),
    };
    s.commit().unwrap();
    cow
}

/// Preserves chunk `c`'s origin data for the other snapshots (completing copies and committing
/// as asked) until its copy back may proceed.
fn prepare_copy_back(s: &mut Store<Cache<MemDisk>>, c: u64) {
    loop {
        match s.rollback_prepare(c).unwrap() {
            OriginWrite::Proceed => return,
            OriginWrite::AfterCommit => s.commit().unwrap(),
            OriginWrite::Copy(p) => s.origin_write_complete(p).unwrap(),
            OriginWrite::RollBackFirst => panic!("rollback_prepare never says so"),
        }
    }
}

/// Snapshot 1 with chunk 2 copied by an origin write, chunk 5 written by the snapshot, and
/// chunk 7 discarded after the snapshot wrote it (reads zeroes); snapshot 2 taken after.
fn two_snapshots() -> (Store<Cache<MemDisk>>, u64, u64) {
    let mut s = open(MemDisk::new(256 * BS));
    let one = s.create_snapshot(1).unwrap();
    let copy2 = origin_write(&mut s, 2).unwrap();
    let mut own5 = 0;
    for c in [5, 7] {
        let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(one, c).unwrap() else {
            panic!("unshare expected");
        };
        if c == 5 {
            own5 = u.to();
        }
        s.snapshot_write_complete(u).unwrap();
    }
    assert_eq!(
        s.snapshot_discard(one, 7).unwrap(),
        SnapshotDiscard::ReadsZeroes
    );
    s.commit().unwrap();
    s.create_snapshot(2).unwrap();
    s.commit().unwrap();
    (s, copy2, own5)
}

#[test]
fn the_origin_reads_as_the_snapshot_from_the_start() {
    let (mut s, copy2, own5) = two_snapshots();
    assert_eq!(s.start_rollback(1).unwrap(), 3);
    s.commit().unwrap();
    let one = s.snapshot_epoch(1).unwrap().unwrap();
    assert_eq!(
        s.rollback().unwrap(),
        Some(RollbackProgress {
            snapshot: one,
            total: 3,
            left: 3
        })
    );
    assert_eq!(s.origin_read_location(2).unwrap(), Location::Cow(copy2));
    assert_eq!(s.origin_read_location(5).unwrap(), Location::Cow(own5));
    assert_eq!(s.origin_read_location(7).unwrap(), Location::Zeroes);
    assert_eq!(s.origin_read_location(3).unwrap(), Location::Origin);
    let listed: Vec<u64> = std::iter::successors(s.next_rollback_chunk(0).unwrap(), |&c| {
        s.next_rollback_chunk(c + 1).unwrap()
    })
    .collect();
    assert_eq!(listed, [2, 5, 7]);
    check_store(&s);
    // Durable: the state and the list survive a reopen.
    let s = reopen(s);
    assert_eq!(s.rollback().unwrap().unwrap().left, 3);
    assert_eq!(s.origin_read_location(5).unwrap(), Location::Cow(own5));
    check_store(&s);
}

#[test]
fn a_chunk_copied_back_keeps_the_other_snapshots_data() {
    let (mut s, _, own5) = two_snapshots();
    s.start_rollback(1).unwrap();
    s.commit().unwrap();
    // Snapshot 2 reads chunk 5 from the origin: an origin write there is told to roll the
    // chunk back first, and the copy back preserves the origin's data for snapshot 2.
    assert_eq!(
        s.origin_write_prepare(5).unwrap(),
        OriginWrite::RollBackFirst
    );
    let two = s.snapshot_epoch(2).unwrap().unwrap();
    assert_eq!(s.snapshot_lookup(two, 5).unwrap(), Location::Origin);
    let OriginWrite::Copy(p) = s.rollback_prepare(5).unwrap() else {
        panic!("copy for snapshot 2 expected");
    };
    let kept = p.cow();
    s.origin_write_complete(p).unwrap();
    assert_eq!(s.rollback_prepare(5).unwrap(), OriginWrite::AfterCommit);
    s.commit().unwrap();
    assert_eq!(s.rollback_prepare(5).unwrap(), OriginWrite::Proceed);
    assert_eq!(s.snapshot_lookup(two, 5).unwrap(), Location::Cow(kept));
    assert_eq!(s.rollback_source(5).unwrap(), Location::Cow(own5));
    // (The caller copies `own5` over origin chunk 5 and flushes the origin device here.)
    s.rollback_chunk_done(5).unwrap();
    assert_eq!(s.origin_read_location(5).unwrap(), Location::Origin);
    assert_eq!(s.origin_write_prepare(5).unwrap(), OriginWrite::Proceed);
    assert_eq!(s.rollback().unwrap().unwrap().left, 2);
    s.commit().unwrap();
    // The rest, in chunk order; the last one ends the rollback.
    while let Some(c) = s.next_rollback_chunk(0).unwrap() {
        prepare_copy_back(&mut s, c);
        s.rollback_chunk_done(c).unwrap();
    }
    assert_eq!(s.rollback().unwrap(), None);
    assert!(!s.rolling_back());
    s.commit().unwrap();
    check_store(&s);
    // The snapshot stays, unchanged, and may be rolled back to again.
    let one = s.snapshot_epoch(1).unwrap().unwrap();
    assert_eq!(s.snapshot_lookup(one, 5).unwrap(), Location::Cow(own5));
    assert_eq!(s.start_rollback(1).unwrap(), 3);
    check_store(&s);
}

#[test]
fn what_a_rollback_refuses_meanwhile() {
    let (mut s, _, _) = two_snapshots();
    // Unknown or dropped ids; outstanding plans.
    assert_eq!(s.start_rollback(9), Err(Error::NotFound));
    let OriginWrite::Copy(p) = s.origin_write_prepare(11).unwrap() else {
        panic!("copy expected");
    };
    assert_eq!(s.start_rollback(1), Err(Error::Busy));
    s.abort_origin_write(p).unwrap();
    s.start_rollback(1).unwrap();
    s.commit().unwrap();
    let one = s.snapshot_epoch(1).unwrap().unwrap();
    // A second rollback, a new snapshot, and changes of the snapshot's data.
    assert_eq!(s.start_rollback(2), Err(Error::RollingBack));
    assert_eq!(s.start_rollback(1), Err(Error::RollingBack));
    assert_eq!(s.create_snapshot(3).err(), Some(Error::RollingBack));
    assert_eq!(s.delete_snapshot(1), Err(Error::RollingBack));
    assert_eq!(
        s.snapshot_write_prepare(one, 9).err(),
        Some(Error::RollingBack)
    );
    assert_eq!(s.snapshot_discard(one, 5).err(), Some(Error::RollingBack));
    // Other snapshots are free.
    s.delete_snapshot(2).unwrap();
    s.commit().unwrap();
    check_store(&s);
}

#[test]
fn a_crash_before_the_commit_lists_the_chunk_again() {
    let (mut s, _, _) = two_snapshots();
    s.start_rollback(1).unwrap();
    s.commit().unwrap();
    let committed = s.io().disk().to_vec();
    let OriginWrite::Copy(p) = s.rollback_prepare(2).unwrap() else {
        panic!("copy for snapshot 2 expected");
    };
    s.origin_write_complete(p).unwrap();
    s.commit().unwrap();
    let preserved = s.io().disk().to_vec();
    assert_eq!(s.rollback_prepare(2).unwrap(), OriginWrite::Proceed);
    s.rollback_chunk_done(2).unwrap();
    // Lost: the chunk is listed again and reads as the snapshot, and the copy for snapshot 2
    // is redone or kept.
    for img in [committed, preserved] {
        let mut s = open(MemDisk::from_vec(img));
        assert_eq!(s.rollback().unwrap().unwrap().left, 3);
        assert!(matches!(
            s.origin_read_location(2).unwrap(),
            Location::Cow(_)
        ));
        prepare_copy_back(&mut s, 2);
        s.rollback_chunk_done(2).unwrap();
        s.commit().unwrap();
        check_store(&s);
    }
}

#[test]
fn a_snapshot_equal_to_the_origin_needs_no_rollback() {
    let mut s = open(MemDisk::new(256 * BS));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    assert_eq!(s.start_rollback(1).unwrap(), 0);
    assert!(!s.rolling_back());
    assert_eq!(s.create_snapshot(2).map(|r| r.id()), Ok(2));
}

#[test]
fn a_rolling_back_store_sets_its_feature_flag() {
    let (mut s, _, _) = two_snapshots();
    s.start_rollback(1).unwrap();
    s.commit().unwrap();
    let at = s.info().superblock_slot as usize * BS + 116;
    let flags = u32::from_le_bytes(s.io().disk().to_vec()[at..at + 4].try_into().unwrap());
    assert_eq!(flags & 16, 16, "feature flag 4 while the rollback runs");
}
