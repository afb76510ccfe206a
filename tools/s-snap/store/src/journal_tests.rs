//! Unit tests of the journal that steer the allocator.

use crate::userspace::{Cache, MemDisk};
use crate::{Location, OriginWrite, SnapWritePlan, Store};

const BS: usize = 4096;

fn read(s: &Store<Cache<MemDisk>>, chunk: u64) -> u8 {
    let mut b = [0u8; 1];
    s.io().read_data(chunk, 0, &mut b).unwrap();
    b[0]
}

/// A store with one snapshot and the completed (not committed) copy of origin chunk 0, whose
/// old data is 0xAA; returns the store, the snapshot and the copy's chunk.
fn with_copy_of_chunk_0() -> (Store<Cache<MemDisk>>, crate::SnapshotRef, u64) {
    let io = Cache::new(MemDisk::new(2048 * BS), BS, 256);
    let mut s = Store::open(io, 8).unwrap();
    let snap = s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    let OriginWrite::Copy(plan) = s.origin_write_prepare(0).unwrap() else {
        panic!("copy expected");
    };
    let c = plan.cow();
    s.io().write_data(c, 0, &[0xAA; BS]).unwrap();
    s.origin_write_complete(plan).unwrap();
    (s, snap, c)
}

/// The snapshot gets a copy of chunk 0 of its own, so the shared one goes and its chunk `c`
/// is freed; then the copy of origin chunk 1 is steered to `c`, which it must not get.
fn unshare_and_steer_a_copy_to(s: &mut Store<Cache<MemDisk>>, snap: crate::SnapshotRef, c: u64) {
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(snap, 0).unwrap() else {
        panic!("unshare expected");
    };
    s.io().write_data(u.to(), 0, &[0xCC; BS]).unwrap();
    s.snapshot_write_complete(u).unwrap();
    s.sb.data_hint = c;
    let OriginWrite::Copy(plan) = s.origin_write_prepare(1).unwrap() else {
        panic!("copy expected");
    };
    assert_ne!(plan.cow(), c, "a chunk the journal names was reused");
    s.io().write_data(plan.cow(), 0, &[0xBB; BS]).unwrap();
    s.origin_write_complete(plan).unwrap();
}

/// Crashes before the checkpoint: the journal block comes back, and with it the copy of
/// chunk 0 in `c`.
fn crash_and_find_the_copy(s: Store<Cache<MemDisk>>, c: u64) {
    let io = s.into_io();
    io.drop_all();
    let s = Store::open(io, 8).unwrap();
    let snap = s.snapshot_epoch(1).unwrap().unwrap();
    assert_eq!(s.snapshot_lookup(snap, 0).unwrap(), Location::Cow(c));
    assert_eq!(read(&s, c), 0xAA);
}

/// The reviewer's scenario: a copy committed by the journal, its shared exception removed by
/// an unshare (so its chunk is freed in a transaction not committed yet), then an allocation
/// that would take that chunk and a crash. The replay brings the exception back, so the
/// chunk must still hold the copy.
#[test]
fn a_chunk_the_journal_names_is_not_reused_before_the_checkpoint() {
    let (mut s, snap, c) = with_copy_of_chunk_0();
    s.commit().unwrap();
    assert_eq!(s.info().journal_blocks, 1);
    unshare_and_steer_a_copy_to(&mut s, snap, c);
    crash_and_find_the_copy(s, c);
}

/// The same while the journal block that names the chunk is still being written: it may reach
/// the device, so its chunks are held back as a committed block's are.
#[test]
fn a_chunk_of_a_journal_block_in_flight_is_not_reused_before_the_checkpoint() {
    use crate::BlockIo;
    let (mut s, snap, c) = with_copy_of_chunk_0();
    let mut image = [0u8; BS];
    let nr = s.journal_commit_start(&mut image).unwrap().unwrap();
    unshare_and_steer_a_copy_to(&mut s, snap, c);
    // The block lands.
    s.io().write_durably(nr, &image).unwrap();
    s.journal_commit_end(Ok(())).unwrap();
    crash_and_find_the_copy(s, c);
}
