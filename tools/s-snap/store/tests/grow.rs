//! Growing the store into a larger COW device: within the bitmap blocks it has and with
//! added ones (whose slots live in the space they cover), the data kept exactly, shrinking
//! refused, and a crash at any write of the growth leaving the old size or the new one.

mod common;

use common::*;
use s_snap_store::userspace::{Cache, CrashDisk, MemDisk, Survival};
use s_snap_store::{BlockIo, Error, Store};

/// Closes the harness's store cleanly and reopens it on the same image grown to `chunks`
/// chunks (the store still has its old size), as a table reload after the COW device grew.
fn extend_device(h: &mut Harness<MemDisk>, chunks: u64) {
    h.commit();
    let io = h.store.take().unwrap().into_io();
    io.write_dirty().unwrap();
    let mut img = io.into_disk().to_vec();
    img.resize((chunks * u64::from(h.cs) * 512) as usize, 0);
    h.open_disk(MemDisk::from_vec(img));
}

/// Writes origin chunks from `from` on until `copies` more copies were made or the COW
/// device is full; returns the chunk after the last one written.
fn copy_until(h: &mut Harness<MemDisk>, from: u64, copies: u64, origin_chunks: u64) -> u64 {
    let (c0, n0) = (h.copies, h.nospace);
    let mut c = from;
    while c < origin_chunks && h.copies - c0 < copies && h.nospace == n0 {
        h.origin_write(c, 0);
        c += 1;
    }
    h.commit();
    c
}

/// A harness on a COW device of `chunks` chunks of `cs` sectors, with snapshot 1.
fn with_snapshot(cs: u32, chunks: u64, origin_chunks: usize) -> Harness<MemDisk> {
    let mut h = Harness::build_cs(
        MemDisk::new((chunks * u64::from(cs) * 512) as usize),
        cs,
        origin_chunks,
        32,
        None,
        |_| 0,
    );
    assert!(h.create(1));
    h
}

fn grow_case(cs: u32, chunks: u64, grown: u64, origin_chunks: usize) {
    let mut h = with_snapshot(cs, chunks, origin_chunks);
    // Fill the COW device with copies for snapshot 1.
    let next = copy_until(&mut h, 0, u64::MAX, origin_chunks as u64);
    assert!(h.nospace > 0, "cs {cs}: the COW device never filled");
    let full = h.s().usage();
    extend_device(&mut h, grown);
    assert_eq!(
        h.s().usage().total_chunks,
        chunks,
        "a reopen grew the store"
    );
    assert_eq!(h.sm().grow(u64::MAX), Ok(grown));
    h.commit();
    let u = h.s().usage();
    assert_eq!(u.total_chunks, grown);
    assert!(u.free_chunks > full.free_chunks);
    h.verify_all();
    h.check();
    // The new space takes copies, for a snapshot created after the growth too.
    let failed = h.nospace;
    let next = copy_until(&mut h, next, 200, origin_chunks as u64);
    assert_eq!(h.nospace, failed, "cs {cs}: no space after growing");
    assert!(h.create(2));
    copy_until(&mut h, next, 100, origin_chunks as u64);
    h.verify_all();
    h.check();
    h.reopen();
    assert_eq!(h.s().usage().total_chunks, grown);
    h.verify_all();
    h.check();
    // Deleting everything gives every chunk back.
    for id in [1, 2] {
        assert!(h.delete(id));
    }
    h.commit();
    h.reclaim_all();
    h.commit();
    assert_eq!(h.s().usage().data_chunks, 0);
    h.check();
}

#[test]
fn grow_within_the_bitmap_blocks() {
    grow_case(CS, 256, 1024, 1200);
}

/// 4 KiB chunks: a bitmap block covers 32,512 chunks; growth adds a second one.
#[test]
fn grow_with_an_added_bitmap_block() {
    grow_case(CS, 32_400, 33_200, 34_000);
}

/// 64 KiB chunks: a bitmap block covers 2,032 chunks; growth adds two.
#[test]
fn grow_with_added_bitmap_blocks_64k_chunks() {
    grow_case(128, 2_000, 4_300, 4_600);
}

#[test]
fn grow_target_rules() {
    // Formatted at 32,500 chunks, opened on a device of 32,600.
    let s = Store::open(Cache::new(MemDisk::new(32_500 * BS), BS, 8), CS).unwrap();
    let mut img = s.into_io().into_disk().to_vec();
    img.resize(32_600 * BS, 0);
    let mut s = Store::open(Cache::new(MemDisk::from_vec(img), BS, 8), CS).unwrap();
    assert_eq!(s.usage().total_chunks, 32_500);
    // Not past the device.
    assert_eq!(s.grow_target(u64::MAX), 32_600);
    // Not ending inside the slots of an added bitmap block: 32,512 + 3 is trimmed to 32,512.
    assert_eq!(s.grow_target(32_515), 32_512);
    assert_eq!(s.grow_target(32_516), 32_516);
    // Smaller: nothing changes.
    assert_eq!(s.grow(100), Ok(32_500));
    assert_eq!(s.grow(32_515), Ok(32_512));
    s.commit().unwrap();
    assert_eq!(s.usage().total_chunks, 32_512);
    check_store(&s);
}

#[test]
fn shrinking_is_refused_and_plans_block_growth() {
    let mut h = Harness::new(MemDisk::new(256 * BS), 300, 16);
    assert!(h.create(1));
    h.origin_write(0, 0);
    extend_device(&mut h, 512);
    // A plan outstanding: no growth (the completion would race the geometry change).
    let plan = match h.sm().origin_write_prepare(5).unwrap() {
        s_snap_store::OriginWrite::Copy(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(h.sm().grow(512), Err(Error::Busy));
    h.sm().abort_origin_write(plan).unwrap();
    assert_eq!(h.sm().grow(512), Ok(512));
    h.commit();
    // Shrunk below the grown size: refused, and nothing written.
    let io = h.store.take().unwrap().into_io();
    io.write_dirty().unwrap();
    let mut img = io.into_disk().to_vec();
    img.truncate(400 * BS);
    let before = img.clone();
    let r = Store::open(Cache::new(MemDisk::from_vec(img), BS, 8), CS);
    assert_eq!(r.err(), Some(Error::DeviceTooSmall));
    let r = Store::open_existing(Cache::new(MemDisk::from_vec(before.clone()), BS, 8));
    assert_eq!(r.err(), Some(Error::DeviceTooSmall));
}

/// A power cut at any write of a growth: the store opens at the old size or at the new one,
/// checks clean and holds the snapshot's data.
fn crash_during_growth(cs: u32, chunks: u64, grown: u64, origin_chunks: usize) {
    let mut h = with_snapshot(cs, chunks, origin_chunks);
    copy_until(&mut h, 0, 64, origin_chunks as u64);
    let model = h.snaps.clone();
    let origin = h.origin.clone();
    h.commit();
    let io = h.store.take().unwrap().into_io();
    io.write_dirty().unwrap();
    let mut img = io.into_disk().to_vec();
    img.resize((grown * u64::from(cs) * 512) as usize, 0);
    let chunk_bytes = cs as usize * 512;
    let mut s = Store::open(Cache::new(CrashDisk::new(img), chunk_bytes, 8), cs).unwrap();
    assert_eq!(s.grow(u64::MAX), Ok(grown));
    s.commit().unwrap();
    let disk = s.io().disk();
    let log = disk.log();
    let initial = disk.initial().to_vec();
    let mut sizes = [false; 2];
    for k in 0..=log.len() {
        for how in [
            Survival::DropAll,
            Survival::Subset(k as u64 | 1),
            Survival::TornLast(k as u64 | 1, k % 2 == 0),
        ] {
            let img = CrashDisk::image_at(&initial, &log, k, how);
            let ctx = format!("crash after {k} of {} events ({how:?})", log.len());
            let s = Store::open(Cache::new(MemDisk::from_vec(img), chunk_bytes, 8), cs)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            let total = s.usage().total_chunks;
            assert!(total == chunks || total == grown, "{ctx}: {total} chunks");
            sizes[usize::from(total == grown)] = true;
            check_store(&s);
            let snap = s.snapshot_epoch(1).unwrap().unwrap();
            for (c, want) in model[&1].iter().enumerate() {
                let loc = s.snapshot_lookup(snap, c as u64).unwrap();
                let got = location_data(&s, loc, &origin, c as u64);
                assert_eq!(&got, want, "{ctx}: chunk {c}");
            }
        }
    }
    assert_eq!(sizes, [true, true], "not both sizes seen");
}

#[test]
fn crash_during_growth_within_a_bitmap_block() {
    crash_during_growth(CS, 256, 1024, 300);
}

#[test]
fn crash_during_growth_with_added_bitmap_blocks() {
    crash_during_growth(128, 2_000, 4_300, 2_100);
}

/// 512 KiB chunks, the largest: a bitmap block covers 254 chunks; growth adds two, each
/// slot chunk shared with metadata.
#[test]
fn grow_with_added_bitmap_blocks_512k_chunks() {
    grow_case(1024, 200, 700, 800);
}
