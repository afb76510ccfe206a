//! API behaviour: open rules, read-only stores, plan bookkeeping and the
//! origin-write answers.

mod common;

use common::*;
use s_snap_store::userspace::{Cache, FileDisk, MemDisk};
use s_snap_store::{
    min_chunks, BlockIo, Error, Location, OriginDiscard, OriginWrite, SnapWritePlan,
    SnapshotDiscard, Store,
};

fn open(disk: MemDisk) -> Store<Cache<MemDisk>> {
    Store::open(Cache::new(disk, BS, 32), CS).unwrap()
}

#[test]
fn device_size_rules() {
    let min = min_chunks(CS);
    assert_eq!(min, 23);
    assert_eq!(
        Store::open(Cache::new(MemDisk::new((min as usize - 1) * BS), BS, 8), CS).err(),
        Some(Error::DeviceTooSmall)
    );
    let s = open(MemDisk::new(min as usize * BS));
    assert_eq!(s.usage().total_chunks, min);
    // A device grown after format: only the format-time size is used.
    let mut img = s.into_io().into_disk().to_vec();
    img.resize(4 * min as usize * BS, 0);
    let s = open(MemDisk::from_vec(img));
    assert_eq!(s.usage().total_chunks, min);
    // Shrunk below the format-time size: refused.
    let mut img = s.into_io().into_disk().to_vec();
    img.truncate((min as usize - 1) * BS);
    assert_eq!(
        Store::open(Cache::new(MemDisk::from_vec(img), BS, 8), CS).err(),
        Some(Error::DeviceTooSmall)
    );
    // Invalid chunk sizes.
    for cs in [0u32, 4, 12, 2048] {
        let r = Store::open(Cache::new(MemDisk::new(64 * BS), BS, 8), cs);
        assert_eq!(r.err(), Some(Error::InvalidChunkSize), "{cs}");
    }
}

#[test]
fn device_size_rules_with_large_chunks() {
    // 64 KiB chunks: the fixed area and the three roots (7 blocks of 4 KiB)
    // share chunk 0, and 16 whole chunks must be free beyond.
    let cs = 128;
    let chunk = cs as usize * 512;
    let min = min_chunks(cs);
    assert_eq!(min, 17);
    assert_eq!(
        Store::open(
            Cache::new(MemDisk::new((min as usize - 1) * chunk), chunk, 8),
            cs
        )
        .err(),
        Some(Error::DeviceTooSmall)
    );
    // A device that is not a multiple of the chunk size: the tail is unused.
    let mut s = Store::open(
        Cache::new(
            MemDisk::new(min as usize * chunk + 3 * 4096 + 512),
            chunk,
            8,
        ),
        cs,
    )
    .unwrap();
    let u = s.usage();
    // Two superblocks, two bitmap slots, three root leaves and the journal area, all in
    // the first chunk.
    let journal = s.info().journal_area.1 as u64;
    assert_eq!(journal, 4, "journal blocks: 1/64 of the store");
    assert_eq!(
        (u.total_chunks, u.metadata_chunks, u.metadata_blocks),
        (min, 1, 7 + journal)
    );
    assert_eq!(u.free_chunks, min - 1);
    // Every whole chunk but the first can hold data.
    s.create_snapshot(1).unwrap();
    let mut copies = 0;
    for c in 0..min {
        match s.origin_write_prepare(c) {
            Ok(OriginWrite::Copy(plan)) => {
                s.origin_write_complete(plan).unwrap();
                copies += 1;
            }
            Err(Error::NoSpace) => break,
            other => panic!("chunk {c}: {other:?}"),
        }
    }
    // The metadata reserve (40 blocks here), what one completion may need (12) and the
    // nodes written keep some chunks back.
    assert!(copies >= min - 5, "only {copies} copies in {min} chunks");
    s.commit().unwrap();
    check_store(&s);
}

/// A store of format version 1 (one metadata block per chunk) is refused
/// and left untouched: its second superblock is not at block 1, so taking
/// it for an unfinished format would destroy it.
#[test]
fn version_1_store_is_refused_and_not_written() {
    let chunk = 128 * 512;
    let mut img = vec![0u8; 64 * chunk];
    img[4..8].copy_from_slice(b"SSsb");
    img[24..28].copy_from_slice(&1u32.to_le_bytes());
    img[28..32].copy_from_slice(&128u32.to_le_bytes());
    img[32..40].copy_from_slice(&7u64.to_le_bytes());
    let path = std::env::temp_dir().join(format!("s-snap-v1-{}.img", std::process::id()));
    std::fs::write(&path, &img).unwrap();
    let disk = FileDisk::open(&path, true).unwrap();
    let r = Store::open(Cache::new(disk, chunk, 8), 128);
    assert_eq!(
        r.err(),
        Some(Error::Unsupported("superblock format version"))
    );
    let after = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(after == img, "the version 1 store was written");
    let io = Cache::new(MemDisk::from_vec(img), chunk, 8);
    assert_eq!(
        Store::open_existing(io).err(),
        Some(Error::Unsupported("superblock format version"))
    );
}

/// Sets the feature flags of both superblocks of a store image (and their checksums).
/// Sets the feature flags of both superblocks to `flags`, keeping the journal's (bit 5),
/// which goes with the journal area every store of this size has.
fn set_feature_flags(img: &mut [u8], flags: u32) {
    for slot in 0..2 {
        let b = &mut img[slot * 4096..(slot + 1) * 4096];
        let old = u32::from_le_bytes(b[116..120].try_into().unwrap());
        b[116..120].copy_from_slice(&(flags | old & 32).to_le_bytes());
        let crc = crc32c::crc32c(&b[4..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A store with a feature flag set (a structure of a later version that
/// this one must not ignore) is refused, read-only and read-write.
#[test]
fn unknown_feature_flags_are_refused() {
    let mut s = open(MemDisk::new(256 * BS));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    let mut img = s.into_io().into_disk().to_vec();
    // Bits 0 to 5 are this version's (drop policy, dropped snapshots, grown,
    // zero-reading exceptions, rollback, journal).
    set_feature_flags(&mut img, 64);
    let flags = Some(Error::Unsupported("superblock feature flags"));
    let io = Cache::new(MemDisk::from_vec(img.clone()), BS, 8);
    assert_eq!(Store::open_existing(io).err(), flags);
    let io = Cache::new(MemDisk::from_vec(img), BS, 8);
    assert_eq!(Store::open(io, CS).err(), flags);
}

/// A known feature flag without the superblock field it goes with (dropped snapshots without
/// a count, grown without a fixed bitmap count) is corruption, not a store to open.
#[test]
fn known_feature_flags_must_match_their_fields() {
    for flag in [2u32, 4] {
        let mut s = open(MemDisk::new(256 * BS));
        s.create_snapshot(1).unwrap();
        s.commit().unwrap();
        let mut img = s.into_io().into_disk().to_vec();
        set_feature_flags(&mut img, flag);
        let io = Cache::new(MemDisk::from_vec(img), BS, 8);
        assert!(
            matches!(Store::open_existing(io).err(), Some(Error::Corrupt { .. })),
            "flag {flag}"
        );
    }
}

#[test]
fn read_only_store_refuses_changes_and_writes_nothing() {
    let mut s = open(MemDisk::new(256 * BS));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    let img = s.into_io().into_disk().to_vec();
    let mut ro = Store::open_existing(Cache::new(MemDisk::from_vec(img.clone()), BS, 8)).unwrap();
    assert_eq!(ro.create_snapshot(2).err(), Some(Error::ReadOnly));
    assert_eq!(ro.delete_snapshot(1).err(), Some(Error::ReadOnly));
    assert_eq!(ro.origin_write_prepare(0).err(), Some(Error::ReadOnly));
    assert_eq!(ro.commit().err(), Some(Error::ReadOnly));
    assert_eq!(ro.snapshots().count(), 1);
    let io = ro.into_io();
    io.write_dirty().unwrap();
    assert!(io.into_disk().to_vec() == img, "read-only open wrote");
}

#[test]
fn plans_block_commit_and_abort_frees() {
    let mut s = open(MemDisk::new(256 * BS));
    let base = s.usage();
    let snap = s.create_snapshot(7).unwrap();
    let OriginWrite::Copy(p) = s.origin_write_prepare(3).unwrap() else {
        panic!("copy expected");
    };
    assert_eq!(s.usage().data_chunks, base.data_chunks + 1);
    assert_eq!(s.commit().err(), Some(Error::Busy));
    s.abort_origin_write(p).unwrap();
    assert_eq!(s.usage().data_chunks, base.data_chunks);
    s.commit().unwrap();
    // The copy is needed again after the abort.
    let OriginWrite::Copy(p) = s.origin_write_prepare(3).unwrap() else {
        panic!("copy expected");
    };
    let cow = p.cow();
    s.origin_write_complete(p).unwrap();
    assert_eq!(s.snapshot_lookup(snap, 3).unwrap(), Location::Cow(cow));
    // Not committed yet: further writes must wait for the commit.
    assert_eq!(s.origin_write_prepare(3).unwrap(), OriginWrite::AfterCommit);
    s.commit().unwrap();
    assert_eq!(s.origin_write_prepare(3).unwrap(), OriginWrite::Proceed);
    // Unshare plan aborted.
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(snap, 9).unwrap() else {
        panic!("unshare expected");
    };
    assert_eq!(u.from(), Location::Origin);
    s.abort_snapshot_write(u).unwrap();
    // A plan whose snapshot was deleted meanwhile frees its chunk.
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(snap, 9).unwrap() else {
        panic!("unshare expected");
    };
    let OriginWrite::Copy(p) = s.origin_write_prepare(4).unwrap() else {
        panic!("copy expected");
    };
    s.delete_snapshot(7).unwrap();
    assert_eq!(s.snapshot_write_complete(u).err(), Some(Error::NotFound));
    s.origin_write_complete(p).unwrap();
    s.finish_reclaim().unwrap();
    s.commit().unwrap();
    let u = s.usage();
    assert_eq!((u.data_chunks, u.shared_exceptions, u.snapshots), (0, 0, 0));
    assert_eq!(u.metadata_chunks, base.metadata_chunks);
    check_store(&s);
}

#[test]
fn deleted_snapshot_makes_origin_writes_wait() {
    let mut s = open(MemDisk::new(256 * BS));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    // The only snapshot is deleted but not committed: a crash would bring
    // it back, so the origin write must wait for the commit.
    s.delete_snapshot(1).unwrap();
    assert_eq!(s.origin_write_prepare(5).unwrap(), OriginWrite::AfterCommit);
    s.commit().unwrap();
    assert_eq!(s.origin_write_prepare(5).unwrap(), OriginWrite::Proceed);
    // Snapshot ids are reusable after deletion; epochs are not.
    let a = s.create_snapshot(1).unwrap();
    assert_eq!(a.epoch(), 2);
    assert_eq!(s.create_snapshot(1).err(), Some(Error::Exists));
    assert_eq!(s.delete_snapshot(99).err(), Some(Error::NotFound));
}

#[test]
fn private_writes_of_all_snapshots_need_no_copy() {
    let mut s = open(MemDisk::new(512 * BS));
    let snaps: Vec<_> = (0..5)
        .map(|i| s.create_snapshot(100 - i).unwrap())
        .collect();
    for snap in &snaps {
        let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(*snap, 2).unwrap() else {
            panic!("unshare expected");
        };
        s.snapshot_write_complete(u).unwrap();
        assert!(matches!(
            s.snapshot_write_prepare(*snap, 2).unwrap(),
            SnapWritePlan::Direct(_)
        ));
    }
    // Every snapshot owns chunk 2: no copy, but the privates are not
    // committed yet.
    assert_eq!(s.origin_write_prepare(2).unwrap(), OriginWrite::AfterCommit);
    s.commit().unwrap();
    assert_eq!(s.origin_write_prepare(2).unwrap(), OriginWrite::Proceed);
    // Listing is by ascending id.
    let ids: Vec<u32> = s.snapshots().map(|x| x.unwrap().id()).collect();
    assert_eq!(ids, vec![96, 97, 98, 99, 100]);
    check_store(&s);
}

/// Deletes snapshot `victim` of a nearly full store and reclaims it all;
/// returns whether the reclaim had to commit midway to get metadata space.
fn reclaim_on_full_device(h: &mut Harness<MemDisk>, victim: u32) -> bool {
    let before = h.s().info().committed_txid;
    let u = h.s().usage();
    assert!(u.free_chunks < 120, "{u:?}");
    h.delete(victim);
    h.reclaim_all();
    let after = h.s().info().committed_txid;
    h.commit();
    assert_eq!(h.s().info().deleting_epoch, 0);
    h.verify_all();
    h.check();
    after > before
}

#[test]
fn reclaim_on_full_device_commits_midway_and_resumes() {
    // A nearly full device: reclaiming a snapshot whose exceptions share
    // leaves with those a live snapshot needs takes fresh metadata blocks
    // (the leaves' shadow copies), more than are free; the reclaim asks for
    // a commit of what it has done and goes on.
    let mut h = Harness::new(MemDisk::new(30000 * BS), 80000, 64);
    let baseline = usage_baseline(&h.s().usage());
    h.fill_interleaved(20000);
    assert!(
        reclaim_on_full_device(&mut h, 1),
        "reclaim did not commit midway"
    );
    h.delete_and_reclaim(2);
    assert_eq!(usage_baseline(&h.s().usage()), baseline);
}

#[test]
fn reclaim_of_whole_leaves_needs_no_free_metadata() {
    // Snapshot 1's 20,000 private exceptions fill leaves of their own (270
    // entries each), more leaves than the full device has free blocks at
    // the end: each is dropped whole, which copies nothing, so the reclaim
    // needs no commit midway.
    let mut h = Harness::new(MemDisk::new(30000 * BS), 80000, 64);
    let baseline = usage_baseline(&h.s().usage());
    h.create(1);
    for c in 0..20000 {
        h.snap_write(1, c * 3, 0);
    }
    h.commit();
    h.create(2);
    let mut c = 0;
    while h.nospace == 0 {
        h.origin_write(c, 1);
        c += 1;
    }
    h.commit();
    assert!(
        !reclaim_on_full_device(&mut h, 1),
        "reclaim committed midway"
    );
    h.delete_and_reclaim(2);
    assert_eq!(usage_baseline(&h.s().usage()), baseline);
}

#[test]
fn whole_leaf_reclaim_keeps_the_leaf_another_snapshot_needs() {
    // Chunks 0..1500 are copied while snapshot 1 is alone (exceptions of
    // epoch range [1, 1], about seven whole leaves), chunks 1500..3000 after
    // snapshot 2 was created (range [1, 2]), in the leaves right after them
    // under the same parent. Reclaiming snapshot 1 drops the first leaves in
    // runs, reading the ones after the first through the parent; the leaf
    // where the ranges change, and every leaf of the second range, must
    // stay: snapshot 2 reads them.
    let mut h = Harness::new(MemDisk::new(20000 * BS), 4000, 64);
    h.create(1);
    for c in 0..1500 {
        h.origin_write(c, 0);
    }
    h.commit();
    h.create(2);
    for c in 1500..3000 {
        h.origin_write(c, 0);
    }
    h.commit();
    assert_eq!(h.s().usage().shared_exceptions, 3000);
    h.delete_and_reclaim(1);
    assert_eq!(h.s().usage().shared_exceptions, 1500);
    assert_eq!(h.s().usage().data_chunks, 1500);
    h.verify_all();
}

#[test]
fn full_store_can_still_delete_snapshots() {
    // Fill a small store with snapshots until the snapshot table has no room:
    // creates must stop while the metadata reserve is intact, so that every
    // snapshot can still be deleted and the space comes back.
    // 64 blocks: the snapshot table's leaves hold 406 entries (203
    // snapshots), so a few fill what the metadata reserve leaves.
    let mut s = open(MemDisk::new(64 * BS));
    let baseline = s.usage();
    let mut created = 0u32;
    loop {
        match s.create_snapshot(created) {
            Ok(_) => {
                s.commit().unwrap();
                created += 1;
            }
            Err(Error::NoSpace) => break,
            Err(e) => panic!("create {created}: {e}"),
        }
        assert!(created < 100_000, "the store never filled up");
    }
    assert!(created > 64, "only {created} snapshots fit");
    for id in 0..created {
        s.delete_snapshot(id)
            .unwrap_or_else(|e| panic!("delete {id} of a full store: {e}"));
        s.commit().unwrap();
    }
    // Every deletion is still waiting for its space: one reclaim takes
    // them all back.
    assert_eq!(s.usage().deleting_snapshots, u64::from(created));
    check_store(&s);
    s.finish_reclaim().unwrap();
    s.commit().unwrap();
    check_store(&s);
    let after = s.usage();
    assert_eq!(usage_baseline(&after), usage_baseline(&baseline));
    assert_eq!(after.snapshots, 0);
}

#[test]
fn outstanding_plans_complete_on_a_full_store() {
    // The target may acknowledge a whole-chunk snapshot write before its plan
    // completes, so a completion must never fail for want of space: every
    // plan prepared until the store is full completes, however many are
    // outstanding at once. Chunks in a scattered order, so that the
    // completions split many leaves of the private tree in one transaction.
    for (chunk_sectors, blocks) in [(8u32, 32768usize), (128, 4096)] {
        let disk = MemDisk::new(blocks * BS);
        let mut s = Store::open(Cache::new(disk, BS, 256), chunk_sectors).unwrap();
        let snap = s.create_snapshot(1).unwrap();
        s.commit().unwrap();
        let origin_chunks = 1u64 << 20;
        let mut plans = Vec::new();
        for i in 0..origin_chunks {
            // A bijection of 0..2^20 (odd multiplier), far apart in key order.
            let chunk = i.wrapping_mul(0x9e37_79b1) & (origin_chunks - 1);
            match s.snapshot_write_prepare(snap, chunk) {
                Ok(SnapWritePlan::Unshare(p)) => plans.push(p),
                Ok(SnapWritePlan::Direct(_)) => panic!("chunk {chunk} owned already"),
                Err(Error::NoSpace) => break,
                Err(e) => panic!("prepare {chunk}: {e}"),
            }
        }
        assert!(plans.len() > 8, "only {} plans fit", plans.len());
        let n = plans.len();
        for (i, p) in plans.into_iter().enumerate() {
            s.snapshot_write_complete(p)
                .unwrap_or_else(|e| panic!("{chunk_sectors}: completion {i} of {n}: {e}"));
        }
        s.commit().unwrap();
        assert_eq!(s.usage().private_exceptions, n as u64);
        check_store(&s);
    }
}

#[test]
fn discard_frees_a_snapshots_own_chunk_where_a_copy_of_its_time_is_kept() {
    let mut s = open(MemDisk::new(256 * BS));
    let a = s.create_snapshot(1).unwrap();
    let b = s.create_snapshot(2).unwrap();
    // Chunk 3: a copy both snapshots share, made by an origin write; then
    // snapshot 1 writes it and owns a chunk (snapshot 2 keeps the copy).
    let OriginWrite::Copy(p) = s.origin_write_prepare(3).unwrap() else {
        panic!("copy expected");
    };
    let shared = p.cow();
    s.origin_write_complete(p).unwrap();
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(a, 3).unwrap() else {
        panic!("unshare expected");
    };
    let own3 = u.to();
    s.snapshot_write_complete(u).unwrap();
    s.commit().unwrap();
    let before = s.usage();
    // What a snapshot shares stays.
    assert_eq!(s.snapshot_discard(b, 3).unwrap(), SnapshotDiscard::Kept);
    assert_eq!(s.snapshot_discard(a, 7).unwrap(), SnapshotDiscard::Kept);
    assert_eq!(s.snapshot_lookup(a, 3).unwrap(), Location::Cow(own3));
    assert_eq!(s.usage(), before);
    // Chunk 3: freed, and snapshot 1 reads the copy of its own time again.
    assert_eq!(
        s.snapshot_discard(a, 3).unwrap(),
        SnapshotDiscard::ReadsItsCopy
    );
    assert_eq!(s.snapshot_discard(a, 3).unwrap(), SnapshotDiscard::Kept);
    assert_eq!(s.snapshot_lookup(a, 3).unwrap(), Location::Cow(shared));
    assert_eq!(s.snapshot_lookup(b, 3).unwrap(), Location::Cow(shared));
    let after = s.usage();
    assert_eq!(after.data_chunks, before.data_chunks - 1);
    assert_eq!(after.private_exceptions, before.private_exceptions - 1);
    s.commit().unwrap();
    check_store(&s);
    // Durable, and origin writes need no copy for it (the copy stays).
    let mut s = open(MemDisk::from_vec(s.into_io().into_disk().to_vec()));
    let a = s.snapshot_epoch(1).unwrap().unwrap();
    assert_eq!(s.snapshot_lookup(a, 3).unwrap(), Location::Cow(shared));
    assert_eq!(s.usage().data_chunks, before.data_chunks - 1);
    assert_eq!(s.origin_write_prepare(3).unwrap(), OriginWrite::Proceed);
    // Deleting snapshot 2 keeps the copy snapshot 1 now reads.
    s.delete_snapshot(2).unwrap();
    s.finish_reclaim().unwrap();
    s.commit().unwrap();
    assert_eq!(s.snapshot_lookup(a, 3).unwrap(), Location::Cow(shared));
    check_store(&s);
    // A deleted snapshot has nothing to discard.
    s.delete_snapshot(1).unwrap();
    assert_eq!(s.snapshot_discard(a, 3).err(), Some(Error::NotFound));
}

#[test]
fn origin_discard_reaches_the_origin_only_where_no_snapshot_shares_it() {
    let mut s = open(MemDisk::new(256 * BS));
    assert_eq!(s.origin_discard_prepare(4).unwrap(), OriginDiscard::Pass);
    let a = s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    // The snapshot shares every origin chunk; a discard changes nothing.
    let before = s.usage();
    assert_eq!(s.origin_discard_prepare(4).unwrap(), OriginDiscard::Keep);
    assert_eq!(s.usage(), before);
    // Copied by an origin write: passed once that is committed.
    let OriginWrite::Copy(p) = s.origin_write_prepare(4).unwrap() else {
        panic!("copy expected");
    };
    s.origin_write_complete(p).unwrap();
    assert_eq!(
        s.origin_discard_prepare(4).unwrap(),
        OriginDiscard::AfterCommit
    );
    // The snapshot's own copy: the same.
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(a, 6).unwrap() else {
        panic!("unshare expected");
    };
    s.snapshot_write_complete(u).unwrap();
    assert_eq!(
        s.origin_discard_prepare(6).unwrap(),
        OriginDiscard::AfterCommit
    );
    s.commit().unwrap();
    assert_eq!(s.origin_discard_prepare(4).unwrap(), OriginDiscard::Pass);
    assert_eq!(s.origin_discard_prepare(6).unwrap(), OriginDiscard::Pass);
    // A second snapshot shares chunk 6 with the origin again.
    s.create_snapshot(2).unwrap();
    s.commit().unwrap();
    assert_eq!(s.origin_discard_prepare(6).unwrap(), OriginDiscard::Keep);
    check_store(&s);
}

#[test]
fn discards_leave_the_space_outstanding_completions_need() {
    // Snapshot 1 owns chunks all over its private tree, each also kept as
    // a copy of its time for snapshot 2 (committed); plans of snapshot 2
    // then fill the store; discarding snapshot 1's chunks rewrites B+tree
    // nodes, and the chunks they free come back only after a commit. The
    // discards must not take the space the outstanding completions rely on
    // (a completion may record an acknowledged write).
    let mut s = Store::open(Cache::new(MemDisk::new(65536 * BS), BS, 256), 8).unwrap();
    let one = s.create_snapshot(1).unwrap();
    let two = s.create_snapshot(2).unwrap();
    let scatter = |i: u64| i.wrapping_mul(0x9e37_79b1) & ((1 << 20) - 1);
    let owned: Vec<u64> = (0..20000).map(scatter).collect();
    for &c in &owned {
        let OriginWrite::Copy(p) = s.origin_write_prepare(c).unwrap() else {
            panic!("copy expected");
        };
        s.origin_write_complete(p).unwrap();
    }
    s.commit().unwrap();
    for &c in &owned {
        let SnapWritePlan::Unshare(p) = s.snapshot_write_prepare(one, c).unwrap() else {
            panic!("unshare expected");
        };
        s.snapshot_write_complete(p).unwrap();
    }
    s.commit().unwrap();
    let mut plans = Vec::new();
    for i in 20000.. {
        match s.snapshot_write_prepare(two, scatter(i)) {
            Ok(SnapWritePlan::Unshare(p)) => plans.push(p),
            Ok(SnapWritePlan::Direct(_)) => panic!("owned already"),
            Err(Error::NoSpace) => break,
            Err(e) => panic!("prepare: {e}"),
        }
    }
    let (mut freed, mut refused) = (0, 0);
    for &c in &owned {
        match s.snapshot_discard(one, c) {
            Ok(SnapshotDiscard::ReadsItsCopy) => freed += 1,
            Ok(other) => panic!("chunk {c} was owned, with a copy kept: {other:?}"),
            Err(Error::NoSpace) => refused += 1,
            Err(e) => panic!("discard {c}: {e}"),
        }
    }
    let n = plans.len();
    for (i, p) in plans.into_iter().enumerate() {
        s.snapshot_write_complete(p)
            .unwrap_or_else(|e| panic!("completion {i} of {n} after {freed} discards: {e}"));
    }
    assert!(
        refused > 0,
        "no discard was refused ({freed} freed): discards may take the space kept for completions"
    );
    s.commit().unwrap();
    check_store(&s);
    assert_eq!(s.usage().private_exceptions, 20000 - freed + n as u64);
}

#[test]
fn discard_without_a_copy_of_its_time_frees_the_chunk_and_reads_zeroes() {
    // Snapshot 1's copy of chunk 4 was freed when it wrote the chunk (no
    // other snapshot of its range needed it), and the origin has been
    // written since: removing its own chunk would make it read the origin,
    // and origin writes would not preserve that for it (its epoch is below
    // the newest copy's range). So the discard frees the chunk and leaves
    // the snapshot reading zeroes.
    let mut s = open(MemDisk::new(256 * BS));
    let a = s.create_snapshot(1).unwrap();
    let OriginWrite::Copy(p) = s.origin_write_prepare(4).unwrap() else {
        panic!("copy expected");
    };
    s.origin_write_complete(p).unwrap();
    s.create_snapshot(2).unwrap();
    s.commit().unwrap();
    let OriginWrite::Copy(p) = s.origin_write_prepare(4).unwrap() else {
        panic!("copy expected");
    };
    s.origin_write_complete(p).unwrap();
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(a, 4).unwrap() else {
        panic!("unshare expected");
    };
    s.snapshot_write_complete(u).unwrap();
    // Chunk 6: written by both snapshots first, then by the origin (no
    // copy needed: every snapshot owned the chunk).
    for id in [1, 2] {
        let snap = s.snapshot_epoch(id).unwrap().unwrap();
        let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(snap, 6).unwrap() else {
            panic!("unshare expected");
        };
        s.snapshot_write_complete(u).unwrap();
    }
    s.commit().unwrap();
    assert_eq!(s.origin_write_prepare(6).unwrap(), OriginWrite::Proceed);
    let committed = s.io().disk().to_vec();
    let before = s.usage();
    let chunks_of_1 = s.snapshot_usage(1).unwrap();
    for chunk in [4, 6] {
        assert_eq!(
            s.snapshot_discard(a, chunk).unwrap(),
            SnapshotDiscard::ReadsZeroes,
            "chunk {chunk}"
        );
        assert_eq!(s.snapshot_lookup(a, chunk).unwrap(), Location::Zeroes);
        // Once is enough: a chunk reading zeroes holds nothing to free.
        assert_eq!(s.snapshot_discard(a, chunk).unwrap(), SnapshotDiscard::Kept);
    }
    let after = s.usage();
    assert_eq!(after.data_chunks, before.data_chunks - 2);
    // The exceptions stay (naming no chunk): the snapshot's view still
    // differs from the origin, and origin writes need no copy for it. The
    // snapshot occupies two chunks less.
    assert_eq!(after.private_exceptions, before.private_exceptions);
    assert_eq!(s.snapshot_usage(1).unwrap(), chunks_of_1 - 2);
    assert_eq!(s.origin_write_prepare(6).unwrap(), OriginWrite::AfterCommit);
    s.commit().unwrap();
    assert_eq!(s.origin_write_prepare(6).unwrap(), OriginWrite::Proceed);
    assert_eq!(s.origin_discard_prepare(6).unwrap(), OriginDiscard::Pass);
    check_store(&s);
    // A crash before that commit finds the chunks as they were.
    let old = open(MemDisk::from_vec(committed));
    let old_a = old.snapshot_epoch(1).unwrap().unwrap();
    assert!(matches!(
        old.snapshot_lookup(old_a, 4).unwrap(),
        Location::Cow(_)
    ));
    assert_eq!(old.usage().data_chunks, before.data_chunks);
    // Durable; a write of part of the chunk unshares it from zeroes (the
    // driver zeroes the new chunk first), which replaces the exception.
    let mut s = open(MemDisk::from_vec(s.into_io().into_disk().to_vec()));
    let a = s.snapshot_epoch(1).unwrap().unwrap();
    assert_eq!(s.snapshot_lookup(a, 4).unwrap(), Location::Zeroes);
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(a, 4).unwrap() else {
        panic!("unshare expected");
    };
    assert_eq!(u.from(), Location::Zeroes);
    let own = u.to();
    s.snapshot_write_complete(u).unwrap();
    assert_eq!(s.snapshot_lookup(a, 4).unwrap(), Location::Cow(own));
    assert_eq!(s.usage().private_exceptions, after.private_exceptions);
    assert_eq!(s.usage().data_chunks, after.data_chunks + 1);
    assert_eq!(
        s.snapshot_write_prepare(a, 4).unwrap(),
        SnapWritePlan::Direct(own)
    );
    s.commit().unwrap();
    check_store(&s);
    // Deleting the snapshots gives every chunk back.
    s.delete_snapshot(1).unwrap();
    s.delete_snapshot(2).unwrap();
    s.finish_reclaim().unwrap();
    s.commit().unwrap();
    assert_eq!(s.usage().data_chunks, 0);
    assert_eq!(s.usage().private_exceptions, 0);
    check_store(&s);
}

#[test]
fn a_zero_reading_exception_is_refused_by_a_store_without_the_feature() {
    // The exception names COW chunk 0, which an older module would read as
    // snapshot data: the feature flag must make it refuse the store, and the
    // checker must catch an exception without the flag.
    let mut s = open(MemDisk::new(256 * BS));
    let a = s.create_snapshot(1).unwrap();
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(a, 2).unwrap() else {
        panic!("unshare expected");
    };
    s.snapshot_write_complete(u).unwrap();
    s.commit().unwrap();
    // The feature flags but the journal's.
    let flags = |s: &Store<Cache<MemDisk>>| {
        let at = s.info().superblock_slot as usize * BS + 116;
        u32::from_le_bytes(s.io().disk().to_vec()[at..at + 4].try_into().unwrap()) & !32
    };
    assert_eq!(flags(&s), 0);
    assert_eq!(
        s.snapshot_discard(a, 2).unwrap(),
        SnapshotDiscard::ReadsZeroes
    );
    s.commit().unwrap();
    assert_eq!(flags(&s), 8, "feature flag 3 set");
    // Without the flag, the checker rejects the store.
    let mut img = s.into_io().into_disk().to_vec();
    set_feature_flags(&mut img, 0);
    let s = open(MemDisk::from_vec(img));
    let mut scratch = vec![0u8; s.check_scratch_len()];
    let mut problems = vec![];
    s.check(&mut scratch, &mut |p| problems.push(p.what))
        .unwrap();
    assert!(
        problems.contains(&"zero-reading private exception without its feature flag"),
        "{problems:?}"
    );
}

#[test]
fn a_copy_made_after_an_unpreserved_origin_write_is_not_an_older_snapshots_data() {
    // Snapshot 1 owns chunk 4, so an origin write changes the chunk without a
    // copy. Snapshot 2 is created after it; the next origin write copies the
    // chunk for snapshot 2 only. That copy is not snapshot 1's data: its range
    // must leave snapshot 1 out, and discarding snapshot 1's own chunk must not
    // make it read that copy (found by the store's model test, which the kernel
    // runs as KUnit): it reads zeroes.
    let mut s = open(MemDisk::new(256 * BS));
    let a = s.create_snapshot(1).unwrap();
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(a, 4).unwrap() else {
        panic!("unshare expected");
    };
    let own = u.to();
    s.snapshot_write_complete(u).unwrap();
    s.commit().unwrap();
    assert_eq!(s.origin_write_prepare(4).unwrap(), OriginWrite::Proceed);
    let b = s.create_snapshot(2).unwrap();
    let OriginWrite::Copy(p) = s.origin_write_prepare(4).unwrap() else {
        panic!("copy expected");
    };
    let copy = p.cow();
    s.origin_write_complete(p).unwrap();
    s.commit().unwrap();
    let ranges: Vec<(u64, u64)> = s
        .shared_exceptions()
        .map(|x| x.unwrap())
        .filter(|x| x.chunk == 4)
        .map(|x| (x.lo, x.hi))
        .collect();
    assert_eq!(ranges, [(b.epoch(), b.epoch())]);
    assert_eq!(s.snapshot_lookup(a, 4).unwrap(), Location::Cow(own));
    assert_eq!(
        s.snapshot_discard(a, 4).unwrap(),
        SnapshotDiscard::ReadsZeroes
    );
    assert_eq!(s.snapshot_lookup(a, 4).unwrap(), Location::Zeroes);
    assert_eq!(s.snapshot_lookup(b, 4).unwrap(), Location::Cow(copy));
    check_store(&s);
}

/// A cache too small for one transaction writes changed blocks back early and evicts them;
/// reading them back within the transaction finds them intact (each was sealed when changed),
/// and the commit and a reopen from disk leave a store that checks clean.
#[test]
fn blocks_written_back_early_and_evicted_read_back_within_the_transaction() {
    let mut s = Store::open(Cache::new(MemDisk::new(4096 * BS), BS, 4), CS).unwrap();
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    let mut copies = vec![];
    for chunk in (0..600u64).map(|i| i * 37 % 1000) {
        match s.origin_write_prepare(chunk).unwrap() {
            OriginWrite::Copy(p) => {
                copies.push((chunk, p.cow()));
                s.origin_write_complete(p).unwrap();
            }
            other => panic!("chunk {chunk}: {other:?}"),
        }
    }
    assert!(
        s.io().stats().early_writes > 100,
        "the cache wrote few blocks early: {:?}",
        s.io().stats()
    );
    let snap = s.snapshot_epoch(1).unwrap().unwrap();
    for &(chunk, cow) in &copies {
        assert_eq!(s.snapshot_lookup(snap, chunk).unwrap(), Location::Cow(cow));
    }
    s.commit().unwrap();
    check_store(&s);
    let disk = s.into_io().into_disk();
    let s = Store::open(Cache::new(disk, BS, 4), CS).unwrap();
    check_store(&s);
    let snap = s.snapshot_epoch(1).unwrap().unwrap();
    for &(chunk, cow) in &copies {
        assert_eq!(s.snapshot_lookup(snap, chunk).unwrap(), Location::Cow(cow));
    }
}
