//! Deleting snapshots: the deletion itself is small and immediate, the space
//! comes back in bounded reclaim steps, which resume after a crash, queue
//! up behind each other and leave a reused id alone.

mod common;

use common::*;
use s_snap_store::userspace::MemDisk;
use s_snap_store::Reclaim;

/// A harness with snapshot `id` that holds `n` private and `n` shared
/// exceptions.
fn with_exceptions(h: &mut Harness<MemDisk>, id: u32, n: u64) {
    h.create(id);
    for c in 0..n {
        h.snap_write(id, c, 0);
        h.origin_write(n + c, 1);
    }
    h.commit();
}

#[test]
fn delete_costs_the_same_whatever_the_snapshot_holds() {
    let mut h = Harness::new(MemDisk::new(4096 * BS), 2048, 64);
    with_exceptions(&mut h, 1, 1000);
    with_exceptions(&mut h, 2, 10);
    let before = h.s().usage();
    // Blocks written by each deletion's transaction: a few snapshot-table
    // nodes, the same for 1000 exceptions as for 10.
    let mut writes = vec![];
    for id in [1, 2] {
        let w0 = h.s().io().stats().writes;
        h.delete(id);
        h.commit();
        writes.push(h.s().io().stats().writes - w0);
    }
    assert_eq!(writes[0], writes[1], "blocks written by the two deletes");
    let u = h.s().usage();
    assert_eq!(u.snapshots, 0);
    assert_eq!(u.deleting_snapshots, 2);
    assert_eq!(
        u.data_chunks, before.data_chunks,
        "space freed before the reclaim"
    );
    h.check();
    h.reclaim_all();
    h.commit();
    let u = h.s().usage();
    assert_eq!(
        (u.data_chunks, u.shared_exceptions, u.private_exceptions),
        (0, 0, 0)
    );
    assert_eq!(u.deleting_snapshots, 0);
    assert_eq!(h.s().info().deleting_epoch, 0);
    h.check();
}

#[test]
fn reclaim_resumes_after_a_crash_and_a_reopen() {
    let mut h = Harness::new(MemDisk::new(4096 * BS), 1024, 16);
    with_exceptions(&mut h, 1, 300);
    with_exceptions(&mut h, 2, 300);
    h.delete(1);
    h.commit();
    // Part of the reclaim is committed, part is lost in the crash.
    h.reclaim(100);
    h.commit();
    h.reclaim(50);
    h.crash();
    assert_eq!(h.s().usage().deleting_snapshots, 1);
    assert_ne!(h.s().info().deleting_epoch, 0);
    h.verify_all();
    h.check();
    h.reopen();
    assert_eq!(h.s().usage().deleting_snapshots, 1);
    h.reclaim_all();
    h.commit();
    assert_eq!(h.s().usage().deleting_snapshots, 0);
    // Snapshot 2 keeps every one of its chunks.
    h.verify_all();
    h.check();
    assert_eq!(h.s().snapshot_usage(2).unwrap(), 600);
}

#[test]
fn deletions_queue_and_are_reclaimed_in_small_steps() {
    let mut h = Harness::new(MemDisk::new(4096 * BS), 512, 32);
    for id in 1..=5 {
        with_exceptions(&mut h, id, 40);
    }
    for id in [4, 1, 3] {
        h.delete(id);
        h.commit();
    }
    assert_eq!(h.s().usage().deleting_snapshots, 3);
    let mut steps = 0;
    loop {
        let r = h.sm().reclaim(7).expect("reclaim");
        steps += 1;
        h.commit();
        h.check();
        h.verify_all();
        match r {
            Reclaim::Done => break,
            Reclaim::More | Reclaim::NeedsCommit => {}
        }
        assert!(steps < 10_000);
    }
    assert!(steps > 10, "the budget was not kept ({steps} calls)");
    assert_eq!(h.s().usage().deleting_snapshots, 0);
    let ids: Vec<u32> = h.s().snapshots().map(|s| s.unwrap().id()).collect();
    assert_eq!(ids, vec![2, 5]);
}

#[test]
fn an_id_reused_while_its_old_snapshot_is_reclaimed_keeps_the_new_one() {
    let mut h = Harness::new(MemDisk::new(4096 * BS), 512, 32);
    with_exceptions(&mut h, 7, 100);
    h.delete(7);
    h.commit();
    // Id 7 is free at once, while epoch 1 still waits for its reclaim.
    assert!(
        h.create(7),
        "id 7 refused while its old snapshot is reclaimed"
    );
    for c in 0..50 {
        h.snap_write(7, c, 1);
        h.origin_write(300 + c, 0);
    }
    h.commit();
    h.check();
    // Deleted again before the first reclaim finished: two epochs of id 7
    // wait.
    h.reclaim(30);
    h.commit();
    h.delete(7);
    h.commit();
    assert_eq!(h.s().usage().deleting_snapshots, 2);
    h.check();
    assert!(h.create(7));
    h.snap_write(7, 3, 0);
    h.commit();
    h.reclaim_all();
    h.commit();
    h.check();
    h.verify_all();
    let u = h.s().usage();
    assert_eq!((u.snapshots, u.deleting_snapshots), (1, 0));
    assert_eq!(h.s().snapshot_usage(7).unwrap(), 1);
    h.reopen();
    h.verify_all();
    h.check();
}
