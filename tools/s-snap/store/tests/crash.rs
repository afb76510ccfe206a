//! Crash tests: a device with a volatile write cache records the write
//! stream of a workload; for every write point the durable state after a
//! power failure is rebuilt (unflushed writes dropped, kept in random
//! subsets, or the last one torn) and the store must open at the last
//! committed transaction, equal the model of that commit and pass check.

mod common;

use common::*;
use s_snap_store::userspace::{Cache, CrashDisk, Event, MemDisk, Survival};
use s_snap_store::{Error, Store};
use std::collections::BTreeMap;

const ORIGIN_CHUNKS: usize = 24;

thread_local! {
    /// Recoveries that found a snapshot deletion pending.
    static PENDING: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Recoveries that replayed journal blocks.
    static REPLAYED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn log_len(d: &CrashDisk) -> usize {
    d.log_len()
}

/// Runs a workload on a crash disk; returns the harness (with logs). An `origin_heavy` one is
/// mostly origin writes and commits, which the journal commits (snapshot creations, deletions
/// and writes, which need checkpoints, are rare).
fn workload(
    seed: u64,
    ops: usize,
    dev_chunks: usize,
    cs: u32,
    origin_heavy: bool,
) -> Harness<CrashDisk> {
    let disk = CrashDisk::new(vec![0; dev_chunks * cs as usize * 512]);
    let mut h = Harness::build_cs(disk, cs, ORIGIN_CHUNKS, 8, Some((seed, 3)), log_len);
    // Writes to chunks a snapshot already owns are not transactional
    // (like any block device without a flush), so the crash model skips
    // them.
    h.allow_direct = false;
    let mut rng = Rng(seed | 1);
    let mut next_id = 1u32;
    for i in 0..ops {
        let op = if origin_heavy {
            // One op in 40 of each kind but origin writes (4..=11) and commits (16..=18).
            match rng.below(40) {
                0 => 0,
                1 => 3,
                2..=25 => 4,
                26..=36 => 16,
                37 => 12,
                38 => 19,
                _ => 21,
            }
        } else {
            rng.below(22)
        };
        match op {
            0..=2 => {
                h.create(next_id);
                next_id += 1;
            }
            3 => {
                if !h.snaps.is_empty() {
                    let k = rng.below(h.snaps.len() as u64) as usize;
                    let id = *h.snaps.keys().nth(k).unwrap();
                    h.delete(id);
                }
            }
            4..=11 => h.origin_write(rng.below(ORIGIN_CHUNKS as u64), rng.below(2) as usize),
            12..=15 => {
                if !h.snaps.is_empty() {
                    let k = rng.below(h.snaps.len() as u64) as usize;
                    let id = *h.snaps.keys().nth(k).unwrap();
                    h.snap_write(id, rng.below(ORIGIN_CHUNKS as u64), rng.below(2) as usize);
                }
            }
            16..=18 => h.commit(),
            19..=20 => h.reclaim(1 + rng.below(6)),
            _ => {
                if i % 3 == 0 {
                    h.reopen();
                } else {
                    h.commit();
                }
            }
        }
    }
    h.commit();
    h
}

/// The origin device as it was after the first `k` events.
fn origin_at(h: &Harness<CrashDisk>, k: usize) -> Vec<Data> {
    let mut o: Vec<Data> = (0..h.origin.len() as u64)
        .map(|c| [c << 32, (c << 32) | 1])
        .collect();
    for &(p, c, s, v) in &h.origin_log {
        if p <= k {
            o[c as usize][s] = v;
        }
    }
    o
}

fn verify(s: &Store<Cache<MemDisk>>, model: &BTreeMap<u32, Vec<Data>>, origin: &[Data], ctx: &str) {
    let ids: Vec<u32> = s.snapshots().map(|x| x.unwrap().id()).collect();
    let want: Vec<u32> = model.keys().copied().collect();
    assert_eq!(ids, want, "{ctx}: snapshot ids");
    for (id, m) in model {
        let snap = s.snapshot_epoch(*id).unwrap().unwrap();
        // Large models are sampled (a different offset per call).
        let step = if m.len() <= 4096 { 1 } else { 17 };
        let first = (ctx.len() as u64 * 7) % step;
        for c in (first..m.len() as u64).step_by(step as usize) {
            let got = location_data(s, s.snapshot_lookup(snap, c).unwrap(), origin, c);
            assert_eq!(got, m[c as usize], "{ctx}: snapshot {id} chunk {c}");
        }
    }
    check_store(s);
}

/// Rebuilds the device after a crash after `k` events and checks it.
fn recover(
    h: &Harness<CrashDisk>,
    initial: &[u8],
    log: &[Event],
    k: usize,
    how: Survival,
    go_on: bool,
) {
    recover_from(h, initial, log, 0, k, how, go_on)
}

/// Like `recover`, with `base` the durable image after the first `start`
/// events (`start` right after a flush).
fn recover_from(
    h: &Harness<CrashDisk>,
    base: &[u8],
    log: &[Event],
    start: usize,
    k: usize,
    how: Survival,
    go_on: bool,
) {
    let img = CrashDisk::image_at(base, &log[start..], k - start, how);
    let ctx = format!("crash after {k} events ({how:?})");
    let chunk_bytes = h.cs as usize * 512;
    // The committed state as found.
    let (t, pending) =
        match Store::open_existing(Cache::new(MemDisk::from_vec(img.clone()), chunk_bytes, 16)) {
            Ok(s) => (durable_id(&s), s.info().deleting_epoch != 0),
            // Not formatted yet: a read-write open formats.
            Err(_) => (1 << 16, false),
        };
    let io = Cache::new(MemDisk::from_vec(img), chunk_bytes, 16);
    let mut s = Store::open(io, h.cs).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    // Commits whose superblock write may have reached the disk, and the
    // newest one that surely did.
    let surely = h
        .commits
        .iter()
        .filter(|c| c.2 <= k)
        .map(|c| c.0)
        .max()
        .unwrap_or(0);
    PENDING.with(|p| p.set(p.get() + pending as u64));
    REPLAYED.with(|r| r.set(r.get() + u64::from(t & 0xffff != 0)));
    let entry = h
        .commits
        .iter()
        .find(|c| c.0 == t)
        .unwrap_or_else(|| panic!("{ctx}: opened at unknown txid {t}"));
    assert!(t >= surely, "{ctx}: lost committed txid {surely} (got {t})");
    assert!(
        entry.1 <= k,
        "{ctx}: txid {t} committed after the crash point"
    );
    let origin = origin_at(h, k);
    verify(&s, &entry.3, &origin, &ctx);
    if go_on {
        // Keep working on the recovered store: new transactions must not
        // pick up blocks the crashed transaction left behind.
        let mut model = entry.3.clone();
        let ids: Vec<u32> = model.keys().copied().collect();
        if let Some(&id) = ids.first() {
            s.delete_snapshot(id).unwrap();
            model.remove(&id);
        }
        s.finish_reclaim().unwrap();
        // Creates keep the metadata reserve for deletes, so on the small
        // devices they may be refused for space: that is an answer, not a bug.
        for id in [1000, 1001] {
            match s.create_snapshot(id) {
                Ok(_) => {
                    model.insert(id, origin.clone());
                }
                Err(Error::NoSpace) => {}
                Err(e) => panic!("{ctx}: create {id}: {e}"),
            }
            s.commit().unwrap();
        }
        let io = s.into_io();
        let s = Store::open(io, h.cs).unwrap();
        verify(&s, &model, &origin, &format!("{ctx}, continued"));
    }
}

fn crash_all_points(seed: u64, ops: usize, dev_chunks: usize) {
    crash_all_points_cs(seed, ops, dev_chunks, CS)
}

fn crash_all_points_cs(seed: u64, ops: usize, dev_chunks: usize, cs: u32) {
    crash_all_points_of(seed, ops, dev_chunks, cs, false);
}

/// Returns the journal commits of the workload.
fn crash_all_points_of(
    seed: u64,
    ops: usize,
    dev_chunks: usize,
    cs: u32,
    origin_heavy: bool,
) -> usize {
    let replayed_before = REPLAYED.with(|r| r.get());
    let h = workload(seed, ops, dev_chunks, cs, origin_heavy);
    assert!(h.copies > 0 && h.commits.len() > 3, "workload too small");
    let st = h.s().io().stats();
    assert!(st.early_writes > 0, "no early write-back happened");
    let disk = h.store.as_ref().unwrap().io().disk();
    let log = disk.log();
    let initial = disk.initial().to_vec();
    let mut points = 0;
    for k in 0..=log.len() {
        recover(&h, &initial, &log, k, Survival::DropAll, k % 4 == 0);
        recover(
            &h,
            &initial,
            &log,
            k,
            Survival::Subset(seed ^ k as u64),
            k % 4 == 1,
        );
        recover(
            &h,
            &initial,
            &log,
            k,
            Survival::TornLast(seed ^ (k as u64) << 1, k % 2 == 0),
            k % 4 == 2,
        );
        points += 1;
    }
    // Where the workload committed through the journal, some crash points come after such a
    // commit, and their recovery must replay it.
    let replayed = REPLAYED.with(|r| r.get()) - replayed_before;
    let journal_commits = h.commits.iter().filter(|c| c.0 & 0xffff != 0).count();
    assert!(
        journal_commits == 0 || replayed > 0,
        "no recovery replayed the journal ({journal_commits} journal commits)"
    );
    eprintln!(
        "seed {seed}: {} events, {} commits, {} copies, {} unshares, {} NoSpace, {} early writes, {points} crash points x 3, {journal_commits} journal commits, {replayed} recoveries replayed the journal",
        log.len(),
        h.commits.len(),
        h.copies,
        h.unshares,
        h.nospace,
        st.early_writes
    );
    journal_commits
}

/// Mostly origin copies, on a store with a journal of 8 blocks: most commits are journal
/// blocks, a full journal forces a checkpoint, and recoveries replay runs of journal blocks
/// (and go on writing after them).
#[test]
fn crash_every_write_point_origin_copies_journaled() {
    for (seed, cs) in [(0x5eed_0010, CS), (0x5eed_0011, 16)] {
        let journal_commits = crash_all_points_of(seed, 500, 512 * 8 / cs as usize, cs, true);
        assert!(journal_commits > 20, "{journal_commits} journal commits");
    }
}

/// Chunks of two metadata blocks: data chunks and metadata share the
/// space map's groups.
#[test]
fn crash_every_write_point_8k_chunks() {
    crash_all_points_cs(0x5eed_0008, 300, 128, 16);
}

/// Chunks of 16 metadata blocks on a small device (the usual 64 KiB).
#[test]
fn crash_every_write_point_64k_chunks() {
    crash_all_points_cs(0x5eed_0064, 300, 48, 128);
}

#[test]
fn crash_every_write_point_seed1() {
    crash_all_points(0x5eed_0001, 200, 256);
}

#[test]
fn crash_every_write_point_seed2() {
    crash_all_points(0x5eed_0002, 300, 256);
}

#[test]
fn crash_every_write_point_seed3() {
    crash_all_points(0x5eed_0003, 400, 512);
}

/// A small device: NoSpace, deletions that commit midway.
#[test]
fn crash_every_write_point_small_device() {
    crash_all_points(0x5eed_0004, 400, 64);
}

#[test]
fn crash_every_write_point_seed5() {
    crash_all_points(0x5eed_0005, 500, 128);
}

/// Crashes at every write point of a snapshot deletion and its reclaim on
/// a full device, which commits midway: the store reopens with the reclaim
/// pending and finishes it.
#[test]
fn crash_during_delete_that_commits_midway() {
    // The leaves that snapshot 1's exceptions share with snapshot 2's are
    // shadowed by the reclaim (a leaf only for deleted snapshots is dropped
    // whole, which allocates nothing), and they are more than the full
    // device has free blocks: more than the metadata reserve and what
    // allocation keeps back for outstanding completions.
    let disk = CrashDisk::new(vec![0; 20000 * BS]);
    let mut h = Harness::build(disk, 40000, 64, Some((11, 4)), log_len);
    h.allow_direct = false;
    h.fill_interleaved(12000);
    let before = h.s().info().committed_txid;
    // The crash window starts right after the last flush: what came before
    // is durable (early write-back may have written blocks since).
    let disk = h.s().io().disk();
    let start = disk.log().iter().rposition(|e| *e == Event::Flush).unwrap() + 1;
    h.delete(1);
    h.commit();
    h.reclaim_all();
    h.commit();
    assert!(h.s().info().committed_txid > before + 2, "no midway commit");
    let disk = h.s().io().disk();
    let log = disk.log();
    let base = CrashDisk::image_at(disk.initial(), &log, start, Survival::DropAll);
    // Every 256th write point, plus every point near a flush (where the
    // superblock writes are): the window has tens of thousands of events,
    // and each recovery rebuilds an 80 MB image.
    let near_flush =
        |k: usize| log[k.saturating_sub(3)..(k + 3).min(log.len())].contains(&Event::Flush);
    let mut points = 0;
    for k in start..=log.len() {
        if (k - start) % 256 != 0 && !near_flush(k) {
            continue;
        }
        points += 1;
        recover_from(&h, &base, &log, start, k, Survival::DropAll, k % 256 == 0);
        recover_from(&h, &base, &log, start, k, Survival::Subset(k as u64), false);
    }
    let pending_seen = PENDING.with(|p| p.get());
    eprintln!(
        "{} events in the deletion, {points} crash points x 2, {pending_seen} recoveries with the deletion pending",
        log.len() - start
    );
    assert!(pending_seen > 0);
}
