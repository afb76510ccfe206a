//! I/O errors while the space of a deleted snapshot is reclaimed.
//!
//! A snapshot with many exceptions is deleted on a nearly full device while
//! a copy plan is outstanding; the plan is then aborted, and the reclaim
//! (`finish_reclaim()`, which commits midway whenever metadata space runs
//! out, releasing the garbage list of each of those transactions) and a
//! last commit run. A read, write or flush error is injected at every I/O
//! point of that in turn; the store's error contract must hold: the call
//! fails, a fatal error marks the store failed (every later call returns
//! `Failed` and does no I/O, so a retried commit cannot free blocks twice),
//! and reopening the device without faults finds the last commit intact
//! (check clean, snapshots equal the model of that commit), from where the
//! reclaim goes on.

mod common;

use common::*;
use s_snap_store::userspace::{Cache, Disk, MemDisk};
use s_snap_store::{Error, OriginWrite, Store};
use std::cell::Cell;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

const DEV_CHUNKS: usize = 8000;
const ORIGIN_CHUNKS: usize = 16384;
/// The origin chunk of the copy plan held across the deletion (no other
/// write touches it).
const PLAN_CHUNK: u64 = ORIGIN_CHUNKS as u64 - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
}

/// A memory device that fails one chosen I/O (a transient error: the same
/// request succeeds when issued again).
struct FaultDisk {
    inner: MemDisk,
    /// Reads, writes and flushes issued so far.
    count: [Cell<u64>; 3],
    /// The I/O to fail: kind and absolute index.
    fail: Cell<Option<(Kind, u64)>>,
}

impl FaultDisk {
    fn new(inner: MemDisk) -> FaultDisk {
        FaultDisk {
            inner,
            count: Default::default(),
            fail: Cell::new(None),
        }
    }

    fn counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.count[i].get())
    }

    /// Fails the `k`-th I/O of `kind` from now on (0 = the next one).
    fn arm(&self, kind: Kind, k: u64) {
        self.fail
            .set(Some((kind, self.count[kind as usize].get() + k)));
    }

    fn io(&self, kind: Kind) -> io::Result<()> {
        let c = &self.count[kind as usize];
        let n = c.get();
        c.set(n + 1);
        if self.fail.get() == Some((kind, n)) {
            return Err(io::Error::other("injected I/O error"));
        }
        Ok(())
    }
}

impl Disk for FaultDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.io(Kind::Read)?;
        self.inner.read_at(off, buf)
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        self.io(Kind::Write)?;
        self.inner.write_at(off, data)
    }
    fn flush(&self) -> io::Result<()> {
        self.io(Kind::Flush)?;
        self.inner.flush()
    }
}

/// The committed starting point of every case.
struct Base {
    img: Vec<u8>,
    txid: u64,
    origin: Vec<Data>,
    /// Snapshots 1 and 2 (the state of `txid`).
    before: Model,
    /// Snapshot 2 only (any commit after the deletion).
    after: Model,
}

/// Metadata reserve of the store (see `Store::meta_reserve`).
fn reserve<D: Disk>(h: &Harness<D>) -> u64 {
    16 + 8 * h.s().info().roots.iter().map(|r| r.1 as u64).sum::<u64>()
}

fn build_base() -> Base {
    let mut h = Harness::new(MemDisk::new(DEV_CHUNKS * BS), ORIGIN_CHUNKS, 64);
    h.create(1);
    // Shared exceptions only snapshot 1 needs: the deletion frees them.
    for c in 0..400 {
        h.origin_write(3 * c + 1, 0);
    }
    h.commit();
    // Enough private exceptions that reclaiming them shadows more btree
    // nodes than the metadata reserve holds.
    for c in 0..6000 {
        h.snap_write(1, 2 * c, 0);
    }
    h.commit();
    h.create(2);
    // Fill the device until just above the reserve, committing so that
    // the free count is exact (no deferred frees). Allocation keeps back
    // more than the reserve (what the completions of outstanding plans may
    // need), so the fill also ends at the first write refused for space.
    let mut c = 0;
    loop {
        let (free, res) = (h.s().usage().free_chunks, reserve(&h));
        if free <= res + 3 || h.nospace > 0 {
            break;
        }
        for _ in 0..((free - res - 3) / 2).max(1) {
            h.origin_write(c, 1);
            c += 1;
        }
        h.commit();
    }
    h.check();
    assert!(h.s().usage().free_chunks > reserve(&h), "filled too far");
    let txid = h.s().info().committed_txid;
    let before = h.snaps.clone();
    let mut after = before.clone();
    after.remove(&1);
    let origin = h.origin.clone();
    let io = h.store.take().unwrap().into_io();
    Base {
        img: io.into_disk().to_vec(),
        txid,
        origin,
        before,
        after,
    }
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(build_base)
}

/// Compares the store with `model` (a sample of chunks, offset by `seed`)
/// and checks it.
fn verify<D: Disk>(s: &Store<Cache<D>>, model: &Model, origin: &[Data], seed: u64) {
    let ids: Vec<u32> = s.snapshots().map(|x| x.unwrap().id()).collect();
    let want: Vec<u32> = model.keys().copied().collect();
    assert_eq!(ids, want, "snapshot ids");
    for (id, m) in model {
        let snap = s.snapshot_epoch(*id).unwrap().unwrap();
        let sample = (seed % 13..m.len() as u64).step_by(13);
        for c in sample.chain(0..32).chain([PLAN_CHUNK]) {
            let got = location_data(s, s.snapshot_lookup(snap, c).unwrap(), origin, c);
            assert_eq!(got, m[c as usize], "snapshot {id} chunk {c}");
        }
    }
    check_store(s);
}

/// What a case's commit did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// No fault was armed: the commit succeeded using this much I/O.
    Clean([u64; 3]),
    /// The commit failed with this (fatal) error; the contract held.
    Failed(Error),
}

/// Sets up the pending deletion on a copy of the base image, runs the
/// commit with `fault` armed, and checks the contract.
fn case(b: &Base, fault: Option<(Kind, u64)>) -> Outcome {
    let disk = FaultDisk::new(MemDisk::from_vec(b.img.clone()));
    let mut s = Store::open(Cache::new(disk, BS, 64), CS).expect("open");
    let plan = match s.origin_write_prepare(PLAN_CHUNK) {
        Ok(OriginWrite::Copy(p)) => p,
        r => panic!("no copy plan: {r:?}"),
    };
    s.delete_snapshot(1).expect("delete");
    let info = s.info();
    assert_ne!(
        info.deleting_epoch, 0,
        "the deletion left no reclaim pending"
    );
    assert_eq!(
        info.committed_txid, b.txid,
        "committed with a plan outstanding"
    );
    s.abort_origin_write(plan).expect("abort");
    let start = s.io().disk().counts();
    if let Some((kind, k)) = fault {
        s.io().disk().arm(kind, k);
    }
    // The reclaim commits midway when metadata space runs out, then the
    // last commit: every I/O of that is a fault point.
    let r = s.finish_reclaim().and_then(|()| s.commit());
    let Some(fault) = fault else {
        r.expect("commit without faults");
        let info = s.info();
        assert_eq!(info.deleting_epoch, 0, "reclaim not finished");
        assert!(
            info.committed_txid > b.txid + 1,
            "reclaim did not commit midway"
        );
        let end = s.io().disk().counts();
        verify(&s, &b.after, &b.origin, 0);
        return Outcome::Clean([0, 1, 2].map(|i| end[i] - start[i]));
    };
    let e = match r {
        Ok(()) => panic!("commit succeeded despite {fault:?}"),
        Err(e) => e,
    };
    assert!(e.is_fatal(), "an I/O error came back as {e:?}");
    // Failed: every later call says so and touches nothing. A second
    // commit in particular must not release the garbage list again.
    let io_at_failure = s.io().disk().counts();
    assert_eq!(s.commit(), Err(Error::Failed), "second commit");
    assert_eq!(s.commit(), Err(Error::Failed), "third commit");
    assert_eq!(s.create_snapshot(77).err(), Some(Error::Failed), "create");
    assert_eq!(s.delete_snapshot(2).err(), Some(Error::Failed), "delete");
    assert_eq!(
        s.origin_write_prepare(PLAN_CHUNK).err(),
        Some(Error::Failed),
        "origin write"
    );
    assert_eq!(
        s.io().disk().counts(),
        io_at_failure,
        "I/O after the store failed"
    );
    // Reopen without faults (the failed transaction's cached blocks are
    // lost, as nothing more is written after a failure).
    let disk = s.into_io().into_disk();
    disk.fail.set(None);
    let ro = Store::open_existing(Cache::new(disk.inner, BS, 64)).expect("reopen read-only");
    let t = ro.info().committed_txid;
    // Before the first midway commit the deletion is not durable; after
    // it, every commit shows snapshot 1 gone and nothing else changed.
    let model = if t == b.txid { &b.before } else { &b.after };
    assert!(t >= b.txid, "reopened at txid {t} before {}", b.txid);
    let seed = fault.1 * 3 + fault.0 as u64;
    verify(&ro, model, &b.origin, seed);
    let mut rw = Store::open(ro.into_io(), CS).expect("reopen");
    // A reclaim cut short goes on after the reopen.
    rw.finish_reclaim().expect("reclaim after reopen");
    assert_eq!(rw.info().deleting_epoch, 0, "reclaim left pending");
    verify(&rw, model, &b.origin, seed + 1);
    rw.commit().expect("commit after reopen");
    Outcome::Failed(e)
}

/// Runs the fault cases of `kinds` at every I/O point of the commit and
/// reports every point where the contract broke.
fn every_point(kinds: &[Kind]) {
    let b = base();
    let Outcome::Clean(n) = case(b, None) else {
        unreachable!()
    };
    eprintln!("commit without faults: {n:?} reads/writes/flushes");
    let mut bad = vec![];
    let mut cases = 0;
    for &kind in kinds {
        for k in 0..n[kind as usize] {
            cases += 1;
            match catch_unwind(AssertUnwindSafe(|| case(b, Some((kind, k))))) {
                Ok(Outcome::Failed(_)) => {}
                Ok(o) => bad.push(format!("{kind:?} {k}: {o:?}")),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    bad.push(format!("{kind:?} {k}: {msg}"));
                }
            }
        }
    }
    eprintln!("{cases} fault points, {} broke the contract", bad.len());
    assert!(
        bad.is_empty(),
        "{} of {cases} fault points broke the contract:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn commit_resuming_deletion_read_errors() {
    every_point(&[Kind::Read]);
}

#[test]
fn commit_resuming_deletion_write_and_flush_errors() {
    every_point(&[Kind::Write, Kind::Flush]);
}
