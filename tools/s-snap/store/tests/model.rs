//! Property tests: random operation sequences against a plain model.

mod common;

use common::*;
use proptest::prelude::*;
use s_snap_store::userspace::{MemDisk, SparseDisk};

#[derive(Debug, Clone)]
enum Op {
    Create(u32),
    Delete(u16),
    OriginWrite(u64, usize),
    SnapWrite(u16, u64, usize),
    SnapRead(u16, u64),
    SnapDiscard(u16, u64),
    Commit,
    Reopen,
    Crash,
    /// Reclaim deleted snapshots' space for this many steps.
    Reclaim(u64),
}

fn op_strategy(max_id: u32, chunks: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..max_id).prop_map(Op::Create),
        2 => any::<u16>().prop_map(Op::Delete),
        12 => (0..chunks, 0..2usize).prop_map(|(c, s)| Op::OriginWrite(c, s)),
        6 => (any::<u16>(), 0..chunks, 0..2usize).prop_map(|(i, c, s)| Op::SnapWrite(i, c, s)),
        4 => (any::<u16>(), 0..chunks).prop_map(|(i, c)| Op::SnapRead(i, c)),
        2 => (any::<u16>(), 0..chunks).prop_map(|(i, c)| Op::SnapDiscard(i, c)),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
        2 => (1..8u64).prop_map(Op::Reclaim),
    ]
}

fn op_strategy_crash(max_id: u32, chunks: u64) -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => op_strategy(max_id, chunks),
        1 => Just(Op::Crash),
    ]
}

/// Chunk sizes the property tests pick from: 4 KiB (one metadata block),
/// 8 KiB, 64 KiB and 512 KiB (the largest).
fn chunk_sectors() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![8u32, 16, 128, 1024])
}

/// Picks the `i`-th live snapshot (modulo), if any.
fn pick(h: &Harness<SparseDisk>, i: u16) -> Option<u32> {
    let n = h.snaps.len();
    if n == 0 {
        return None;
    }
    h.snaps.keys().nth(i as usize % n).copied()
}

fn run(ops: &[Op], cs: u32, dev_chunks: usize, origin_chunks: usize, cache: usize) {
    run_with(ops, cs, dev_chunks, origin_chunks, cache, None)
}

fn run_with(
    ops: &[Op],
    cs: u32,
    dev_chunks: usize,
    origin_chunks: usize,
    cache: usize,
    chaos: Option<(u64, u32)>,
) {
    // Sparse: only the metadata blocks and the few bytes the harness writes
    // per data chunk take memory, whatever the chunk size.
    let mut h = Harness::build_cs(
        SparseDisk::new((dev_chunks * cs as usize * 512) as u64),
        cs,
        origin_chunks,
        cache,
        chaos,
        |_| 0,
    );
    // Writes to chunks a snapshot owns are not transactional; with crashes
    // in the sequence the model cannot tell whether they survive.
    h.allow_direct = !ops.iter().any(|o| matches!(o, Op::Crash));
    let baseline = usage_baseline(&h.s().usage());
    for op in ops {
        match *op {
            Op::Create(id) => {
                h.create(id);
            }
            Op::Delete(i) => {
                if let Some(id) = pick(&h, i) {
                    h.delete(id);
                }
            }
            Op::OriginWrite(c, s) => h.origin_write(c, s),
            Op::SnapWrite(i, c, s) => {
                if let Some(id) = pick(&h, i) {
                    h.snap_write(id, c, s);
                }
            }
            Op::SnapRead(i, c) => {
                if let Some(id) = pick(&h, i) {
                    h.snap_read(id, c);
                }
            }
            Op::SnapDiscard(i, c) => {
                if let Some(id) = pick(&h, i) {
                    h.snap_discard(id, c);
                }
            }
            Op::Commit => h.commit(),
            Op::Reopen => h.reopen(),
            Op::Crash => h.crash(),
            Op::Reclaim(n) => h.reclaim(n),
        }
    }
    h.commit();
    if std::env::var("SSNAP_STATS").is_ok() {
        eprintln!(
            "ops {} snaps {} copies {} unshares {} discards {} nospace {} usage {:?}",
            ops.len(),
            h.snaps.len(),
            h.copies,
            h.unshares,
            h.discards,
            h.nospace,
            h.s().usage()
        );
    }
    h.verify_all();
    h.check();
    h.reopen();
    h.verify_all();
    h.check();
    // Deleting everything returns to the freshly formatted usage.
    let ids: Vec<u32> = h.snaps.keys().copied().collect();
    for id in ids {
        h.delete(id);
    }
    h.commit();
    h.check();
    h.reclaim_all();
    h.commit();
    h.check();
    assert_eq!(
        usage_baseline(&h.s().usage()),
        baseline,
        "usage after deleting all"
    );
    assert_eq!(h.s().info().deleting_epoch, 0);
    h.reopen();
    h.check();
    assert_eq!(usage_baseline(&h.s().usage()), baseline);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Roomy device, few snapshots, many writes.
    #[test]
    fn model_roomy(
        ops in prop::collection::vec(op_strategy(12, 300), 1..1500),
        cs in chunk_sectors(),
    ) {
        run(&ops, cs, 2048, 300, 32);
    }

    /// Few chunks and snapshots: the same chunk is written by the origin and
    /// the snapshots, discarded and copied again many times over. (The wide
    /// cases above rarely repeat a chunk: they missed a copy whose range
    /// covered a snapshot it was not the data of, which this case finds.)
    #[test]
    fn model_few_chunks(
        ops in prop::collection::vec(op_strategy(6, 6), 1..1500),
        cs in chunk_sectors(),
    ) {
        run(&ops, cs, 2048, 6, 32);
    }

    /// Small device: NoSpace happens; tiny cache: constant early write-back.
    #[test]
    fn model_small_device(
        ops in prop::collection::vec(op_strategy(40, 150), 1..1200),
        cs in chunk_sectors(),
    ) {
        run(&ops, cs, 200, 150, 6);
    }

    /// Crashes (cached dirty blocks lost, early-written ones kept) at random
    /// points, with extra random early write-back.
    #[test]
    fn model_with_crashes(
        ops in prop::collection::vec(op_strategy_crash(30, 120), 1..1200),
        seed in any::<u64>(),
        cs in chunk_sectors(),
    ) {
        run_with(&ops, cs, 400, 120, 8, Some((seed, 3)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 10,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Hundreds of live snapshots (well past 64).
    #[test]
    fn model_many_snapshots(
        creates in 200usize..260,
        ops in prop::collection::vec(op_strategy(400, 32), 200..600),
    ) {
        let mut all: Vec<Op> = (0..creates as u32)
            .flat_map(|i| [Op::Create(i * 7 % 400), Op::OriginWrite(i as u64 % 32, (i % 2) as usize)])
            .collect();
        all.extend(ops);
        run(&all, CS, 4096, 32, 64);
    }
}

#[test]
fn nospace_is_reported_and_recoverable() {
    // Fill a small device with copies until NoSpace, then delete and go on.
    let mut h = Harness::new(MemDisk::new(128 * BS), 200, 16);
    let baseline = usage_baseline(&h.s().usage());
    h.create(1);
    for c in 0..200 {
        h.origin_write(c, 0);
    }
    assert!(h.nospace > 0, "device never filled");
    h.commit();
    h.verify_all();
    h.check();
    h.delete_and_reclaim(1);
    assert_eq!(usage_baseline(&h.s().usage()), baseline);
    h.create(2);
    for c in 0..20 {
        h.origin_write(c, 1);
    }
    h.commit();
    h.verify_all();
    h.check();
}

#[test]
fn deleting_middle_snapshot_reclaims_exactly() {
    let mut h = Harness::new(MemDisk::new(2048 * BS), 64, 32);
    for id in [10, 20, 30] {
        h.create(id);
        for c in 0..64 {
            h.origin_write(c, (c % 2) as usize);
        }
    }
    h.commit();
    let u = h.s().usage();
    // One shared exception per (chunk, snapshot interval).
    assert_eq!(u.shared_exceptions, 3 * 64);
    h.delete(20);
    h.commit();
    // Deleted, but its space is still there until the reclaim runs.
    assert_eq!(h.s().usage().shared_exceptions, 3 * 64);
    assert_eq!(h.s().usage().deleting_snapshots, 1);
    h.verify_all();
    h.check();
    h.reclaim_all();
    h.commit();
    assert_eq!(h.s().usage().deleting_snapshots, 0);
    // Snapshot 20's interval was needed by it alone.
    assert_eq!(h.s().usage().shared_exceptions, 2 * 64);
    h.verify_all();
    h.check();
    // Unsharing every chunk of 10 frees its shared exceptions.
    for c in 0..64 {
        h.snap_write(10, c, 0);
    }
    h.commit();
    assert_eq!(h.s().usage().shared_exceptions, 64);
    assert_eq!(h.s().usage().private_exceptions, 64);
    assert_eq!(h.s().snapshot_usage(10).unwrap(), 64);
    assert_eq!(h.s().snapshot_usage(30).unwrap(), 64);
    h.verify_all();
    h.check();
}
