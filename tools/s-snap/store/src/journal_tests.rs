//! Unit tests of the journal that steer the allocator.

use crate::userspace::{Cache, MemDisk};
use crate::{Location, OriginWrite, SnapWritePlan, Store};

const BS: usize = 4096;

fn read(s: &Store<Cache<MemDisk>>, chunk: u64) -> u8 {
    let mut b = [0u8; 1];
    s.io().read_data(chunk, 0, &mut b).unwrap();
    b[0]
}

/// The reviewer's scenario: a copy committed by the journal, its shared exception removed by
/// an unshare (so its chunk is freed in a transaction not committed yet), then an allocation
/// that would take that chunk and a crash. The replay brings the exception back, so the
/// chunk must still hold the copy.
#[test]
fn a_chunk_the_journal_names_is_not_reused_before_the_checkpoint() {
    let io = Cache::new(MemDisk::new(2048 * BS), BS, 256);
    let mut s = Store::open(io, 8).unwrap();
    let snap = s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    // The copy of origin chunk 0 (its old data: 0xAA), committed by a journal block.
    let OriginWrite::Copy(plan) = s.origin_write_prepare(0).unwrap() else {
        panic!("copy expected");
    };
    let c = plan.cow();
    s.io().write_data(c, 0, &[0xAA; BS]).unwrap();
    s.origin_write_complete(plan).unwrap();
    s.commit().unwrap();
    assert_eq!(s.info().journal_blocks, 1);
    // The snapshot gets a copy of its own: the shared one goes and its chunk is freed.
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(snap, 0).unwrap() else {
        panic!("unshare expected");
    };
    s.io().write_data(u.to(), 0, &[0xCC; BS]).unwrap();
    s.snapshot_write_complete(u).unwrap();
    // The next copy is steered to the freed chunk.
    s.sb.data_hint = c;
    let OriginWrite::Copy(plan) = s.origin_write_prepare(1).unwrap() else {
        panic!("copy expected");
    };
    assert_ne!(plan.cow(), c, "a chunk the journal names was reused");
    s.io().write_data(plan.cow(), 0, &[0xBB; BS]).unwrap();
    s.origin_write_complete(plan).unwrap();
    // Crash before the checkpoint: the journal block comes back, and with it the copy.
    let io = s.into_io();
    io.drop_all();
    let s = Store::open(io, 8).unwrap();
    let snap = s.snapshot_epoch(1).unwrap().unwrap();
    assert_eq!(s.snapshot_lookup(snap, 0).unwrap(), Location::Cow(c));
    assert_eq!(read(&s, c), 0xAA);
}

/// The same while the journal block that names the chunk is still being written: it may reach
/// the device, so its chunks are held back as a committed block's are.
#[test]
fn a_chunk_of_a_journal_block_in_flight_is_not_reused_before_the_checkpoint() {
    use crate::BlockIo;
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
    let mut image = [0u8; BS];
    let nr = s.journal_commit_start(&mut image).unwrap().unwrap();
    // While the block is in flight, the snapshot unshares the chunk and a copy is steered to
    // the chunk that frees.
    let SnapWritePlan::Unshare(u) = s.snapshot_write_prepare(snap, 0).unwrap() else {
        panic!("unshare expected");
    };
    s.io().write_data(u.to(), 0, &[0xCC; BS]).unwrap();
    s.snapshot_write_complete(u).unwrap();
    s.sb.data_hint = c;
    let OriginWrite::Copy(plan) = s.origin_write_prepare(1).unwrap() else {
        panic!("copy expected");
    };
    assert_ne!(plan.cow(), c, "a chunk of the block in flight was reused");
    s.io().write_data(plan.cow(), 0, &[0xBB; BS]).unwrap();
    s.origin_write_complete(plan).unwrap();
    // The block lands; a crash follows before the checkpoint.
    s.io().write_durably(nr, &image).unwrap();
    s.journal_commit_end(Ok(())).unwrap();
    let io = s.into_io();
    io.drop_all();
    let s = Store::open(io, 8).unwrap();
    let snap = s.snapshot_epoch(1).unwrap().unwrap();
    assert_eq!(s.snapshot_lookup(snap, 0).unwrap(), Location::Cow(c));
    assert_eq!(read(&s, c), 0xAA);
}
