// SPDX-License-Identifier: GPL-2.0

//! The state shared by an `s-snap-origin` target and the `s-snap` targets of its snapshots:
//! the exception store on the COW device, the chunk copies in flight, and the worker that
//! does everything that may sleep.
//!
//! `map` never touches the store (it may not sleep): origin reads are remapped at once, and
//! so are origin writes and snapshot reads whose answer the worker left in the [`MapCache`];
//! every other bio is queued for the worker. The worker, under the pool's mutex, asks the store
//! what each bio needs, starts chunk copies with dm-kcopyd, commits, and issues the bios whose
//! data is safe. The ordering is the store's contract:
//!
//! - an origin write to a chunk that a snapshot still shares waits until the chunk was copied,
//!   the exception completed and a commit finished;
//! - a snapshot write to a chunk the snapshot does not own yet waits until the snapshot's
//!   current data was copied into a chunk of its own;
//! - REQ_PREFLUSH and REQ_FUA bios are issued only after a commit;
//! - an origin write, or a snapshot write that unshares, waits while snapshot reads of the
//!   chunk are in flight, so that a read never sees data written after it was issued and never
//!   reads a chunk that is being freed.
//!
//! At most one copy per chunk is in flight. The store refuses to commit while copies are
//! outstanding, so when a commit is wanted no new copy is started until those in flight are
//! done ("commit barrier"); bios held back meanwhile are retried after the commit.

use crate::cow::CowIo;
use crate::map_cache::MapCache;
use crate::origin::OriginTarget;
use crate::snapshot::SnapshotTarget;
use crate::store::{
    self, Location, OriginWrite, Reclaim, SnapWritePlan, SnapshotRef, Store, Usage,
};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kernel::{
    block::bio::{BioList, Sector},
    c_str,
    device_mapper::{
        kcopyd::{self, Region},
        DmBio, DmDev, StatusWriter,
    },
    new_condvar, new_mutex, new_spinlock,
    prelude::*,
    sync::{Arc, CondVar, Mutex, SpinLock},
    workqueue::{impl_has_work, new_work, OwnedQueue, Work, WorkItem},
};

/// Snapshot reads in flight are counted per bucket of chunks (a hash), so that the count needs
/// no allocation in `end_io`; an unrelated chunk sharing a bucket only delays a write a little.
const READ_BUCKETS: usize = 256;

/// Reclaim steps (exceptions freed) per worker run: the worker holds the pool's lock meanwhile,
/// so this bounds the delay that reclaiming a deleted snapshot adds to other I/O (a step costs
/// about 0.1 ms under TCG), while each run's commit serves this many frees.
const RECLAIM_STEPS: u64 = 256;

/// A bio of the origin target, queued for the worker.
pub(crate) type OriginBio = DmBio<OriginTarget>;
/// A bio of a snapshot target, queued for the worker.
pub(crate) type SnapBio = DmBio<SnapshotTarget>;

/// Per-bio data of snapshot bios.
#[derive(Clone, Copy, Default)]
pub(crate) struct SnapIo {
    /// The snapshot the bio is for.
    pub(crate) snap: Option<SnapshotRef>,
    /// `1 + bucket` of the read counter this bio holds, or 0.
    pub(crate) read_bucket: u16,
}

/// Per-bio data of origin bios.
#[derive(Clone, Copy, Default)]
pub(crate) struct OriginIo {
    /// The write is counted in [`Pool::writes_in_flight`].
    pub(crate) counted: bool,
}

/// Bios handed from `map` to the worker.
#[derive(Default)]
struct Inbox {
    origin: BioList<OriginBio>,
    snap: BioList<SnapBio>,
}

/// A copy of one chunk that kcopyd performs for a plan.
struct CopyJob {
    /// 0 while in flight, then [`COPY_OK`] or [`COPY_FAILED`].
    state: AtomicU32,
}

const COPY_OK: u32 = 1;
const COPY_FAILED: u32 = 2;

/// Counts the copy completions that still hold a reference to the pool.
///
/// The last reference to the pool should go in a target's destructor: then the pool's kcopyd
/// client is destroyed there, and its destruction waits until every completion has returned
/// into kcopyd, as a C target's `dtr` does; no module code is left running for a target that
/// device-mapper considers gone. (Dropped in a completion instead, the client would be
/// destroyed later, with the module pinned meanwhile.) So completions drop their pool
/// reference first and leave the tracker after, and a destructor waits for the tracker.
#[pin_data]
struct CopyTracker {
    #[pin]
    in_flight: SpinLock<u32>,
    #[pin]
    idle: CondVar,
}

impl CopyTracker {
    fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            in_flight <- new_spinlock!(0, "s_snap::CopyTracker::in_flight"),
            idle <- new_condvar!("s_snap::CopyTracker::idle"),
        })
    }

    fn start(&self) {
        *self.in_flight.lock() += 1;
    }

    fn finish(&self) {
        let mut n = self.in_flight.lock();
        *n -= 1;
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut n = self.in_flight.lock();
        while *n != 0 {
            self.idle.wait(&mut n);
        }
    }
}

enum PlanKind {
    Origin(store::CopyPlan),
    Unshare(store::UnsharePlan),
}

/// A chunk with a copy in flight, and the bios waiting for it.
struct Pending {
    chunk: u64,
    plan: PlanKind,
    job: Arc<CopyJob>,
    origin_waiters: BioList<OriginBio>,
    snap_waiters: BioList<SnapBio>,
}

/// Everything the worker and the message handlers change, under [`Pool::state`].
struct State {
    store: Store<CowIo>,
    pending: KVec<Pending>,
    /// Origin writes to issue after the next commit (and retry then).
    after_commit_origin: BioList<OriginBio>,
    /// Snapshot bios to issue after the next commit.
    after_commit_snap: BioList<SnapBio>,
    /// Origin writes held back (commit barrier, quiesce, reads in flight): retried later.
    held_origin: BioList<OriginBio>,
    /// Snapshot writes held back because reads of their chunk are in flight.
    held_snap: BioList<SnapBio>,
    /// The store changed since the last commit.
    dirty: bool,
    /// Message handlers waiting for copies and origin writes to drain.
    quiescing: u32,
    /// Ids of snapshots that have an active `s-snap` device.
    active: KVec<u32>,
    /// A store operation failed fatally: every bio that needs the store fails.
    failed: bool,
    /// Origin writes were failed because the COW device is full.
    cow_full: bool,
    /// The origin is suspended: the worker reclaims nothing, so that a suspended origin's
    /// COW device sees no metadata writes.
    suspended: bool,
    /// The reclaim of deleted snapshots waits for the next commit: for the space that commit
    /// gives back, or because it ran out of space and only other frees can help.
    reclaim_paused: bool,
}

/// Everything behind one COW device.
#[pin_data]
pub(crate) struct Pool {
    /// The origin device (a reference of its own, see [`DmDev`]).
    pub(crate) origin: DmDev,
    /// The COW device.
    pub(crate) cow: DmDev,
    /// Chunk size in sectors.
    pub(crate) chunk_sectors: u32,
    chunk_shift: u32,
    kcopyd: kcopyd::Client,
    copies: Arc<CopyTracker>,
    /// The worker's queue: in the I/O path, so it must make progress under memory pressure.
    wq: OwnedQueue,
    #[pin]
    state: Mutex<State>,
    #[pin]
    inbox: SpinLock<Inbox>,
    /// Store answers `map` may act on (see [`MapCache`] for the ordering rules).
    #[pin]
    map_cache: SpinLock<MapCache>,
    /// Signalled when copies or origin writes drain (see [`Pool::quiesce`]).
    #[pin]
    drained: CondVar,
    /// Origin writes issued to the origin device and not completed yet.
    writes_in_flight: AtomicU32,
    /// Snapshot reads in flight per bucket of chunks.
    reads_in_flight: [AtomicU32; READ_BUCKETS],
    /// The worker has bios waiting for reads to drain.
    read_waiters: AtomicBool,
    #[pin]
    work: Work<Pool>,
}

impl_has_work! {
    impl HasWork<Self> for Pool { self.work }
}

/// Why [`Pool::open`] failed, for the table error message.
pub(crate) enum OpenError {
    Store(store::Error),
    Kernel(Error),
}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        OpenError::Kernel(e)
    }
}

fn bucket(chunk: u64) -> usize {
    // Fibonacci hashing spreads neighbouring chunks over the buckets.
    (chunk.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % READ_BUCKETS
}

/// The error a bio gets when the store cannot serve it.
fn bio_error(e: store::Error) -> Error {
    match e {
        store::Error::NoSpace => ENOSPC,
        _ => EIO,
    }
}

impl Pool {
    /// Opens (or formats) the store on `cow` and creates the pool.
    pub(crate) fn open(
        origin: &DmDev,
        cow: &DmDev,
        chunk_sectors: u32,
    ) -> Result<Arc<Self>, OpenError> {
        let io = CowIo::new(cow, chunk_sectors)?;
        let store = Store::open(io, chunk_sectors).map_err(OpenError::Store)?;
        let mut map_cache = MapCache::new()?;
        map_cache.set_no_snapshots(store.usage().snapshots == 0);
        let kcopyd = kcopyd::Client::new(&crate::THIS_MODULE)?;
        let copies = Arc::pin_init(CopyTracker::new(), GFP_KERNEL)?;
        let wq = OwnedQueue::new(
            c_str!("s-snap"),
            OwnedQueue::MEM_RECLAIM,
            1,
            &crate::THIS_MODULE,
        )?;
        let pool = Arc::pin_init(
            pin_init!(Self {
                origin: origin.clone(),
                cow: cow.clone(),
                chunk_sectors,
                chunk_shift: chunk_sectors.trailing_zeros(),
                kcopyd,
                copies,
                wq,
                state <- new_mutex!(State {
                    store,
                    pending: KVec::new(),
                    after_commit_origin: BioList::default(),
                    after_commit_snap: BioList::default(),
                    held_origin: BioList::default(),
                    held_snap: BioList::default(),
                    dirty: false,
                    quiescing: 0,
                    active: KVec::new(),
                    failed: false,
                    cow_full: false,
                    suspended: false,
                    reclaim_paused: false,
                }, "s_snap::Pool::state"),
                inbox <- new_spinlock!(Inbox::default(), "s_snap::Pool::inbox"),
                map_cache <- new_spinlock!(map_cache, "s_snap::Pool::map_cache"),
                drained <- new_condvar!("s_snap::Pool::drained"),
                writes_in_flight: AtomicU32::new(0),
                reads_in_flight: [const { AtomicU32::new(0) }; READ_BUCKETS],
                read_waiters: AtomicBool::new(false),
                work <- new_work!("s_snap::Pool::work"),
            }),
            GFP_KERNEL,
        )?;
        Ok(pool)
    }

    /// The chunk holding origin sector `sector`.
    pub(crate) fn chunk_of(&self, sector: Sector) -> u64 {
        sector >> self.chunk_shift
    }

    fn chunk_mask(&self) -> Sector {
        Sector::from(self.chunk_sectors) - 1
    }

    /// The number of sectors to copy for `chunk`: the whole chunk, except at the end of an
    /// origin whose size is not a multiple of the chunk size, where only the sectors up to the
    /// origin's end exist (dm-snapshot clamps its copies the same way). The rest of such a COW
    /// chunk is never read: no target maps sectors past the end of the origin.
    fn copy_len(&self, chunk: u64) -> Sector {
        let start = chunk << self.chunk_shift;
        Sector::from(self.chunk_sectors).min(self.origin.nr_sectors().saturating_sub(start))
    }

    /// The first `len` sectors of chunk `chunk` of `dev`.
    fn chunk_region<'a>(&self, dev: &'a DmDev, chunk: u64, len: Sector) -> Region<'a> {
        Region::new(dev, chunk << self.chunk_shift, len)
    }

    /// Queues the worker.
    pub(crate) fn kick(self: &Arc<Self>) {
        // Already queued is fine: the queued run will see what this one would have.
        let _ = self.wq.enqueue(self.clone());
    }

    /// Hands an origin bio to the worker (from `map`: does not sleep).
    pub(crate) fn defer_origin(self: &Arc<Self>, bio: OriginBio) {
        self.inbox.lock().origin.push_back(bio);
        self.kick();
    }

    /// Hands a snapshot bio to the worker (from `map`: does not sleep).
    pub(crate) fn defer_snap(self: &Arc<Self>, bio: SnapBio) {
        self.inbox.lock().snap.push_back(bio);
        self.kick();
    }

    /// From `map`: whether an origin write may go to the origin at once, because the worker
    /// found its chunk unshared. If so the write is counted (see [`Pool::quiesced`]).
    pub(crate) fn origin_write_unshared(&self, bio: &mut OriginBio) -> bool {
        if bio.is_flush() || bio.is_fua() || !bio.has_data() {
            return false;
        }
        let chunk = self.chunk_of(bio.sector());
        // Counted before the look-up: see `MapCache`.
        self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
        if self.map_cache.lock().origin_unshared(chunk) {
            bio.per_io_mut().counted = true;
            true
        } else {
            self.origin_write_done();
            false
        }
    }

    /// From `map`: remaps a snapshot read to the COW device if the worker left the place of its
    /// chunk in the cache; the read then holds a read count like one the worker issues.
    pub(crate) fn snap_read_cached(self: &Arc<Self>, bio: &mut SnapBio, snap: SnapshotRef) -> bool {
        if bio.is_write() || !bio.has_data() {
            return false;
        }
        let sector = bio.sector();
        let chunk = self.chunk_of(sector);
        let b = bucket(chunk);
        // Counted before the look-up: see `MapCache`.
        self.reads_in_flight[b].fetch_add(1, Ordering::AcqRel);
        // CAST: `b < READ_BUCKETS`, which fits a `u16`.
        let read_bucket = b as u16 + 1;
        let cow = self.map_cache.lock().snapshot_chunk(snap.epoch(), chunk);
        match cow {
            Some(c) => {
                bio.per_io_mut().read_bucket = read_bucket;
                bio.remap(
                    self.cow.bdev(),
                    (c << self.chunk_shift) + (sector & self.chunk_mask()),
                );
                true
            }
            None => {
                self.snap_read_done(read_bucket);
                false
            }
        }
    }

    /// Called from `end_io` of a counted origin write.
    pub(crate) fn origin_write_done(&self) {
        if self.writes_in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_all();
        }
    }

    /// Called from `end_io` of a snapshot read that holds a read count.
    pub(crate) fn snap_read_done(self: &Arc<Self>, read_bucket: u16) {
        let Some(b) = (read_bucket as usize).checked_sub(1) else {
            return;
        };
        if let Some(count) = self.reads_in_flight.get(b) {
            if count.fetch_sub(1, Ordering::AcqRel) == 1
                && self.read_waiters.load(Ordering::Acquire)
            {
                self.kick();
            }
        }
    }

    fn reads_pending(&self, chunk: u64) -> bool {
        self.reads_in_flight[bucket(chunk)].load(Ordering::Acquire) != 0
    }

    // ---------------------------------------------------------------------------------------
    // The worker.
    // ---------------------------------------------------------------------------------------

    fn run_worker(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.read_waiters.store(false, Ordering::Release);
        self.complete_copies(&mut st);

        let retry_origin = core::mem::take(&mut st.held_origin);
        let retry_snap = core::mem::take(&mut st.held_snap);
        let (new_origin, new_snap) = {
            let mut inbox = self.inbox.lock();
            (inbox.origin.take(), inbox.snap.take())
        };
        self.process_origin_list(&mut st, retry_origin);
        self.process_snap_list(&mut st, retry_snap);
        self.process_origin_list(&mut st, new_origin);
        self.process_snap_list(&mut st, new_snap);

        self.reclaim_some(&mut st);
        self.commit_if_wanted(&mut st);
        if st.pending.is_empty() {
            self.drained.notify_all();
        }
    }

    /// Completes the plans whose copies finished and wakes their waiters.
    fn complete_copies(&self, st: &mut State) {
        let mut i = 0;
        while i < st.pending.len() {
            let state = st.pending[i].job.state.load(Ordering::Acquire);
            if state == 0 {
                i += 1;
                continue;
            }
            let mut p = st.pending.swap_remove(i);
            // Whose copy it was: see `copy_failed`.
            let failed_for = match &p.plan {
                PlanKind::Origin(_) => None,
                PlanKind::Unshare(plan) => Some(plan.snapshot()),
            };
            let result = if state == COPY_OK {
                match p.plan {
                    PlanKind::Origin(plan) => st.store.origin_write_complete(plan),
                    PlanKind::Unshare(plan) => st.store.snapshot_write_complete(plan),
                }
            } else {
                // One failed copy fails only the bios that need it: the plan is aborted, its
                // chunk freed, and the origin and every snapshot keep their data. The store
                // fails only if it cannot take the plan back.
                pr_err!(
                    "copy of chunk {} failed: failing the I/O that needs it\n",
                    p.chunk
                );
                let aborted = match p.plan {
                    PlanKind::Origin(plan) => st.store.abort_origin_write(plan),
                    PlanKind::Unshare(plan) => st.store.abort_snapshot_write(plan),
                };
                match aborted {
                    Ok(()) => {
                        st.dirty = true;
                        Self::copy_failed(
                            st,
                            &mut p.origin_waiters,
                            &mut p.snap_waiters,
                            failed_for,
                        );
                        continue;
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(()) => {
                    st.dirty = true;
                    // Origin writes go after the commit that makes the exception durable; the
                    // retry then issues them (or copies again for a snapshot created since).
                    st.after_commit_origin.append(&mut p.origin_waiters);
                    // A snapshot write now finds its own chunk: retry it at once.
                    st.held_snap.append(&mut p.snap_waiters);
                }
                Err(e) => {
                    self.note_error(st, e);
                    while let Some(bio) = p.origin_waiters.pop() {
                        bio.end(Err(bio_error(e)));
                    }
                    while let Some(bio) = p.snap_waiters.pop() {
                        bio.end(Err(bio_error(e)));
                    }
                }
            }
        }
    }

    /// Deals with the bios that waited for a copy that failed and was aborted: the origin's
    /// copy (`failed_for` is `None`) or the unshare of a chunk for snapshot `failed_for`. The
    /// writes that needed that very copy fail: origin writes for the origin's copy, writes of
    /// that snapshot for its unshare. Everything else is retried, since the store is as before
    /// the plan: reads (which never start a copy, so a retry cannot loop), and writes that
    /// need a copy of their own (which fail if that copy fails).
    fn copy_failed(
        st: &mut State,
        origin_waiters: &mut BioList<OriginBio>,
        snap_waiters: &mut BioList<SnapBio>,
        failed_for: Option<SnapshotRef>,
    ) {
        while let Some(bio) = origin_waiters.pop() {
            if failed_for.is_none() {
                bio.end(Err(EIO));
            } else {
                st.held_origin.push_back(bio);
            }
        }
        while let Some(bio) = snap_waiters.pop() {
            let needed_it = match (failed_for, bio.per_io().snap) {
                (Some(failed), Some(snap)) => bio.is_write() && failed == snap,
                _ => false,
            };
            if needed_it {
                bio.end(Err(EIO));
            } else {
                st.held_snap.push_back(bio);
            }
        }
    }

    fn note_error(&self, st: &mut State, e: store::Error) {
        if e.is_fatal() && !st.failed {
            pr_err!("exception store failed ({}): failing I/O\n", e);
            st.failed = true;
            self.map_cache.lock().clear();
        }
    }

    fn pending_index(st: &State, chunk: u64) -> Option<usize> {
        st.pending.iter().position(|p| p.chunk == chunk)
    }

    /// Whether no new copy may start: a commit is wanted, or a message handler quiesces.
    fn barrier(st: &State) -> bool {
        st.quiescing != 0
            || (!st.pending.is_empty()
                && (!st.after_commit_origin.is_empty() || !st.after_commit_snap.is_empty()))
    }

    fn process_origin_list(self: &Arc<Self>, st: &mut State, mut list: BioList<OriginBio>) {
        while let Some(bio) = list.pop() {
            self.process_origin(st, bio, false);
        }
    }

    fn process_snap_list(self: &Arc<Self>, st: &mut State, mut list: BioList<SnapBio>) {
        while let Some(bio) = list.pop() {
            self.process_snap(st, bio);
        }
    }

    /// Issues an origin bio whose chunk is safe to write. A bio that asks for durability
    /// (REQ_PREFLUSH, REQ_FUA) waits for a commit first, unless `committed` says that one
    /// finished since it arrived.
    fn issue_origin(&self, st: &mut State, mut bio: OriginBio, committed: bool) {
        if !committed && (bio.is_flush() || bio.is_fua()) {
            st.after_commit_origin.push_back(bio);
            return;
        }
        if bio.is_write() && bio.has_data() {
            bio.per_io_mut().counted = true;
            self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
        }
        bio.submit();
    }

    /// Decides what an origin write (or flush) needs, and starts it. `committed` is true for a
    /// bio that waited for a commit which has now finished.
    fn process_origin(self: &Arc<Self>, st: &mut State, bio: OriginBio, committed: bool) {
        if st.failed {
            bio.end(Err(EIO));
            return;
        }
        if !bio.has_data() {
            // An empty flush: issued to the origin after a commit.
            self.issue_origin(st, bio, committed);
            return;
        }
        let chunk = self.chunk_of(bio.sector());
        if let Some(i) = Self::pending_index(st, chunk) {
            st.pending[i].origin_waiters.push_back(bio);
            return;
        }
        // A write that waited for a commit goes on even while a message handler quiesces: the
        // handler waits for it, so that a snapshot created next does not copy its chunk again.
        if !committed && Self::barrier(st) {
            st.held_origin.push_back(bio);
            return;
        }
        if self.reads_pending(chunk) {
            self.read_waiters.store(true, Ordering::Release);
            st.held_origin.push_back(bio);
            // The last read may have ended before the flag was seen.
            if !self.reads_pending(chunk) {
                self.kick();
            }
            return;
        }
        match st.store.origin_write_prepare(chunk) {
            Ok(OriginWrite::Proceed) => {
                // Not while a handler quiesces: a snapshot it creates may share the chunk again,
                // and the handler emptied the cache already.
                if st.quiescing == 0 {
                    self.map_cache.lock().set_origin_unshared(chunk);
                }
                self.issue_origin(st, bio, committed)
            }
            Ok(OriginWrite::AfterCommit) => st.after_commit_origin.push_back(bio),
            Ok(OriginWrite::Copy(plan)) => {
                let len = self.copy_len(chunk);
                let from = self.chunk_region(&self.origin, chunk, len);
                let to = self.chunk_region(&self.cow, plan.cow(), len);
                match self.start_copy(st, chunk, from, to, PlanKind::Origin(plan)) {
                    Ok(i) => st.pending[i].origin_waiters.push_back(bio),
                    Err(e) => bio.end(Err(e)),
                }
            }
            Err(store::Error::NoSpace) => {
                // COW full: the origin keeps its data, the write fails, the snapshots stay
                // intact (see Documentation/admin-guide/device-mapper/shared-snapshot.rst).
                if !st.cow_full {
                    pr_err!("COW device full: failing origin writes that need a copy\n");
                    st.cow_full = true;
                }
                bio.end(Err(ENOSPC));
            }
            Err(e) => {
                self.note_error(st, e);
                bio.end(Err(bio_error(e)));
            }
        }
    }

    /// Starts copying for a plan; returns the index of its pending entry.
    fn start_copy(
        self: &Arc<Self>,
        st: &mut State,
        chunk: u64,
        from: Region<'_>,
        to: Region<'_>,
        plan: PlanKind,
    ) -> Result<usize> {
        let setup = (|| -> Result<Arc<CopyJob>> {
            st.pending.reserve(1, GFP_NOIO)?;
            let job = Arc::new(
                CopyJob {
                    state: AtomicU32::new(0),
                },
                GFP_NOIO,
            )?;
            let (pool, done, tracker) = (self.clone(), job.clone(), self.copies.clone());
            self.copies.start();
            let submitted = self.kcopyd.copy(&from, &[to], move |result| {
                let state = if result.is_ok() { COPY_OK } else { COPY_FAILED };
                done.state.store(state, Ordering::Release);
                pool.kick();
                // Before leaving the tracker (see `CopyTracker`).
                drop(pool);
                tracker.finish();
            });
            if let Err(e) = submitted {
                self.copies.finish();
                return Err(e);
            }
            Ok(job)
        })();
        match setup {
            Ok(job) => {
                // Cannot fail: capacity was reserved above.
                st.pending.push(
                    Pending {
                        chunk,
                        plan,
                        job,
                        origin_waiters: BioList::default(),
                        snap_waiters: BioList::default(),
                    },
                    GFP_NOIO,
                )?;
                Ok(st.pending.len() - 1)
            }
            Err(e) => {
                let aborted = match plan {
                    PlanKind::Origin(plan) => st.store.abort_origin_write(plan),
                    PlanKind::Unshare(plan) => st.store.abort_snapshot_write(plan),
                };
                if let Err(ae) = aborted {
                    self.note_error(st, ae);
                }
                Err(e)
            }
        }
    }

    /// Issues a snapshot bio, after a commit if it asks for durability.
    fn issue_snap(&self, st: &mut State, bio: SnapBio) {
        if bio.is_flush() || bio.is_fua() {
            st.after_commit_snap.push_back(bio);
        } else {
            bio.submit();
        }
    }

    fn process_snap(self: &Arc<Self>, st: &mut State, mut bio: SnapBio) {
        let Some(snap) = bio.per_io().snap else {
            bio.end(Err(EIO));
            return;
        };
        if st.failed {
            bio.end(Err(EIO));
            return;
        }
        if !bio.has_data() {
            // An empty flush: snapshot data lives on the COW device, which the commit flushes;
            // the flush is passed on to it as well for writes that went there directly.
            bio.set_dev(self.cow.bdev());
            st.after_commit_snap.push_back(bio);
            return;
        }
        let sector = bio.sector();
        let chunk = self.chunk_of(sector);
        let offset = sector & self.chunk_mask();
        if let Some(i) = Self::pending_index(st, chunk) {
            st.pending[i].snap_waiters.push_back(bio);
            return;
        }
        if !bio.is_write() {
            match st.store.snapshot_lookup(snap, chunk) {
                Ok(location) => {
                    let b = bucket(chunk);
                    self.reads_in_flight[b].fetch_add(1, Ordering::AcqRel);
                    // CAST: `b < READ_BUCKETS`, which fits a `u16`.
                    bio.per_io_mut().read_bucket = b as u16 + 1;
                    match location {
                        Location::Origin => bio.remap(self.origin.bdev(), sector),
                        Location::Cow(c) => {
                            self.map_cache
                                .lock()
                                .set_snapshot_chunk(snap.epoch(), chunk, c);
                            bio.remap(self.cow.bdev(), (c << self.chunk_shift) + offset)
                        }
                    }
                    bio.submit();
                }
                Err(e) => {
                    self.note_error(st, e);
                    bio.end(Err(bio_error(e)));
                }
            }
            return;
        }
        // The write may move the chunk: `map` must not send reads to the old place once the
        // reads in flight are known (see `MapCache`).
        self.map_cache
            .lock()
            .forget_snapshot_chunk(snap.epoch(), chunk);
        if self.reads_pending(chunk) {
            self.read_waiters.store(true, Ordering::Release);
            st.held_snap.push_back(bio);
            if !self.reads_pending(chunk) {
                self.kick();
            }
            return;
        }
        match st.store.snapshot_write_prepare(snap, chunk) {
            Ok(SnapWritePlan::Direct(c)) => {
                bio.remap(self.cow.bdev(), (c << self.chunk_shift) + offset);
                self.issue_snap(st, bio);
            }
            Ok(SnapWritePlan::Unshare(plan)) => {
                // The snapshot's current data of the chunk goes to its new chunk first, so that
                // a crash after the commit never exposes an unwritten chunk.
                let len = self.copy_len(chunk);
                let from = match plan.from() {
                    Location::Origin => self.chunk_region(&self.origin, chunk, len),
                    Location::Cow(c) => self.chunk_region(&self.cow, c, len),
                };
                let to = self.chunk_region(&self.cow, plan.to(), len);
                match self.start_copy(st, chunk, from, to, PlanKind::Unshare(plan)) {
                    Ok(i) => st.pending[i].snap_waiters.push_back(bio),
                    Err(e) => bio.end(Err(e)),
                }
            }
            Err(store::Error::NoSpace) => {
                if !st.cow_full {
                    pr_err!("COW device full: failing snapshot writes that need a chunk\n");
                    st.cow_full = true;
                }
                bio.end(Err(ENOSPC));
            }
            Err(e) => {
                self.note_error(st, e);
                bio.end(Err(bio_error(e)));
            }
        }
    }

    /// Gives back some of the space of deleted snapshots, after the bios of this run were
    /// dealt with; the commit that follows makes it durable, and the worker queues itself
    /// again while more is left. Not while a message handler quiesces or the origin is
    /// suspended.
    fn reclaim_some(self: &Arc<Self>, st: &mut State) {
        if st.failed
            || st.suspended
            || st.quiescing != 0
            || st.reclaim_paused
            || st.store.deleting_snapshots() == 0
        {
            return;
        }
        match st.store.reclaim(RECLAIM_STEPS) {
            Ok(Reclaim::Done) => st.dirty = true,
            Ok(Reclaim::More) => {
                st.dirty = true;
                self.kick();
            }
            Ok(Reclaim::NeedsCommit) => {
                st.dirty = true;
                st.reclaim_paused = true;
            }
            Err(store::Error::NoSpace) => {
                // Only frees by other operations can help: wait for their commit.
                st.reclaim_paused = true;
            }
            Err(e) => self.note_error(st, e),
        }
    }

    /// After a commit: the reclaim may go on (see [`Pool::reclaim_some`]).
    fn committed(self: &Arc<Self>, st: &mut State) {
        st.dirty = false;
        if core::mem::take(&mut st.reclaim_paused) && st.store.deleting_snapshots() != 0 {
            self.kick();
        }
    }

    /// Commits if bios wait for a commit or the store changed, once no copy is in flight; then
    /// issues or retries the bios that waited for it.
    fn commit_if_wanted(self: &Arc<Self>, st: &mut State) {
        let waiting = !st.after_commit_origin.is_empty() || !st.after_commit_snap.is_empty();
        if st.failed {
            // No commit will come: fail what waits for one.
            while let Some(bio) = st.after_commit_origin.pop() {
                bio.end(Err(EIO));
            }
            while let Some(bio) = st.after_commit_snap.pop() {
                bio.end(Err(EIO));
            }
            return;
        }
        if !(waiting || st.dirty) || !st.pending.is_empty() {
            return;
        }
        let result = st.store.commit();
        let mut origin = core::mem::take(&mut st.after_commit_origin);
        let mut snap = core::mem::take(&mut st.after_commit_snap);
        match result {
            Ok(()) => {
                self.committed(st);
                // Each one is checked again: a snapshot may have been created meanwhile, and
                // then its chunk needs a copy first. Normally this issues it.
                while let Some(bio) = origin.pop() {
                    self.process_origin(st, bio, true);
                }
                while let Some(bio) = snap.pop() {
                    bio.submit();
                }
                // Retry what the barrier held back, and commit again for what the checks
                // above left waiting.
                if !st.held_origin.is_empty()
                    || !st.held_snap.is_empty()
                    || !st.after_commit_origin.is_empty()
                {
                    self.kick();
                }
            }
            Err(e) => {
                self.note_error(st, e);
                while let Some(bio) = origin.pop() {
                    bio.end(Err(EIO));
                }
                while let Some(bio) = snap.pop() {
                    bio.end(Err(EIO));
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Messages, status and the targets' life cycle.
    // ---------------------------------------------------------------------------------------

    /// Stops new copies and waits until none are in flight and no origin write is in flight
    /// or waits for a commit, then runs `f`, commits, and lets I/O go again.
    fn quiesced<R, E: From<store::Error>>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut State) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut st = self.state.lock();
        st.quiescing += 1;
        // Before the in-flight counts are read: `map` raises them before it looks (`MapCache`).
        self.map_cache.lock().clear();
        while !st.pending.is_empty()
            || self.writes_in_flight.load(Ordering::Acquire) != 0
            || (!st.failed && !st.after_commit_origin.is_empty())
        {
            // Copies complete in the worker, which needs the lock we give up while waiting.
            self.kick();
            self.drained.wait(&mut st);
        }
        let result = if st.failed {
            Err(store::Error::Failed.into())
        } else {
            f(&mut st).and_then(|r| {
                st.dirty = true;
                let committed = st.store.commit();
                if let Err(e) = committed {
                    self.note_error(&mut st, e);
                    return Err(e.into());
                }
                self.committed(&mut st);
                let none = st.store.usage().snapshots == 0;
                self.map_cache.lock().set_no_snapshots(none);
                Ok(r)
            })
        };
        st.quiescing -= 1;
        drop(st);
        self.kick();
        result
    }

    /// `snapshot create <id>`.
    pub(crate) fn create_snapshot(self: &Arc<Self>, id: u32) -> Result<(), store::Error> {
        self.quiesced(|st| {
            let r = st.store.create_snapshot(id).map(|_| ());
            if let Err(e) = r {
                self.note_error(st, e);
            }
            r
        })
    }

    /// `snapshot delete <id>`: refused while an `s-snap` device of the snapshot is active.
    /// Returns once the deletion is committed; the worker reclaims the snapshot's space after
    /// (see `store/reclaim.rs`).
    pub(crate) fn delete_snapshot(self: &Arc<Self>, id: u32) -> Result<(), DeleteError> {
        self.quiesced(|st| {
            if st.active.contains(&id) {
                return Err(DeleteError::Active);
            }
            let r = st.store.delete_snapshot(id);
            if let Err(e) = r {
                self.note_error(st, e);
            }
            r.map_err(DeleteError::Store)
        })
    }

    /// Writes the origin's status: `: no snapshot`, or the count and the ids.
    pub(crate) fn write_snapshot_list(&self, out: &mut StatusWriter<'_>) -> core::fmt::Result {
        let st = self.state.lock();
        let count = st.store.usage().snapshots;
        if count == 0 {
            return out.write_str(": no snapshot");
        }
        write!(out, "{count}")?;
        for snap in st.store.snapshots() {
            match snap {
                Ok(snap) => write!(out, " {}", snap.id())?,
                Err(_) => return out.write_str(" (unreadable)"),
            }
        }
        Ok(())
    }

    /// Writes the reply of the `usage` message.
    pub(crate) fn write_usage(&self, out: &mut StatusWriter<'_>) -> core::fmt::Result {
        let st = self.state.lock();
        let Usage {
            chunk_size,
            total_chunks,
            data_chunks,
            metadata_chunks,
            free_chunks,
            shared_exceptions,
            private_exceptions,
            snapshots,
            deleting_snapshots,
        } = st.store.usage();
        writeln!(
            out,
            "chunk_sectors {} total_chunks {total_chunks} used_chunks {} data_chunks {data_chunks} \
             metadata_chunks {metadata_chunks} free_chunks {free_chunks} \
             shared_exceptions {shared_exceptions} private_exceptions {private_exceptions} \
             snapshots {snapshots} cow_full {} failed {} commit_sequence {} \
             deleting_snapshots {deleting_snapshots} reclaimed_chunks {}",
            chunk_size / 512,
            data_chunks + metadata_chunks,
            u8::from(st.cow_full),
            u8::from(st.failed),
            // Grows by one per metadata commit: what a benchmark divides by.
            st.store.info().seq,
            st.store.reclaimed_chunks(),
        )?;
        for snap in st.store.snapshots() {
            let Ok(snap) = snap else { break };
            let chunks = st.store.snapshot_usage(snap.id()).unwrap_or(0);
            writeln!(
                out,
                "snapshot {} chunks {chunks} active {}",
                snap.id(),
                u8::from(st.active.contains(&snap.id()))
            )?;
        }
        Ok(())
    }

    /// Looks up snapshot `id` and marks it active (for an `s-snap` ctr).
    pub(crate) fn activate(&self, id: u32) -> Result<SnapshotRef, ActivateError> {
        let mut st = self.state.lock();
        let snap = match st.store.snapshot_epoch(id) {
            Ok(Some(snap)) => snap,
            Ok(None) => return Err(ActivateError::NoSuchSnapshot),
            Err(e) => return Err(ActivateError::Store(e)),
        };
        if st.active.contains(&id) {
            return Err(ActivateError::AlreadyActive);
        }
        st.active
            .push(id, GFP_KERNEL)
            .map_err(|_| ActivateError::NoMemory)?;
        Ok(snap)
    }

    /// The `s-snap` device of snapshot `id` went away.
    pub(crate) fn deactivate(&self, id: u32) {
        let mut st = self.state.lock();
        if let Some(i) = st.active.iter().position(|&a| a == id) {
            st.active.swap_remove(i);
        }
    }

    /// Makes sure that only targets hold the pool: no copy completion and no worker run does
    /// any more. Called by a target's destructor, in process context, so that the last
    /// reference goes in a destructor (see [`CopyTracker`]).
    pub(crate) fn teardown(&self) {
        self.copies.wait_idle();
        self.wq.flush();
    }

    /// Reopens a failed store at its last commit, for a new table of the origin: the way back
    /// once the COW device works again. Does nothing to a store that did not fail. On error
    /// the pool stays failed, and nothing was written.
    ///
    /// The failed store's cache still holds dirty blocks of the transaction that failed, its
    /// in-progress superblock image among them; destroying that cache writes them back. That
    /// is safe only while the last commit's superblock is the newest one on the device, so the
    /// order is: check the device with a read-only store (which never writes), put that one in
    /// place of the failed store and drop the failed store, and only then open the store for
    /// writing, which writes a superblock of its own.
    pub(crate) fn reopen_if_failed(self: &Arc<Self>) -> Result<(), OpenError> {
        let mut st = self.state.lock();
        if !st.failed {
            return Ok(());
        }
        while !st.pending.is_empty() {
            self.kick();
            self.drained.wait(&mut st);
        }
        // What waited for a commit of the failed transaction fails: those bios were planned
        // against chunks that the reopened store knows nothing about.
        while let Some(bio) = st.after_commit_origin.pop() {
            bio.end(Err(EIO));
        }
        while let Some(bio) = st.after_commit_snap.pop() {
            bio.end(Err(EIO));
        }
        // A read-only open never formats and never writes: a COW device that lost its store
        // (zeroed, replaced) is refused here, not formatted.
        let checked = Store::open_existing(CowIo::new(&self.cow, self.chunk_sectors)?)
            .map_err(OpenError::Store)?;
        if checked.usage().chunk_size / 512 != u64::from(self.chunk_sectors) {
            return Err(OpenError::Store(store::Error::ChunkSizeMismatch));
        }
        // An active snapshot device must find its snapshot again.
        for &id in st.active.iter() {
            match checked.snapshot_epoch(id) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    pr_err!(
                        "cannot reopen the exception store: snapshot {} has an active device but is not in it\n",
                        id
                    );
                    return Err(OpenError::Store(store::Error::NotFound));
                }
                Err(e) => return Err(OpenError::Store(e)),
            }
        }
        // Drops the failed store: its cache writes back what it holds (see above).
        st.store = checked;
        let io = CowIo::new(&self.cow, self.chunk_sectors)?;
        st.store = Store::open(io, self.chunk_sectors).map_err(OpenError::Store)?;
        st.failed = false;
        st.cow_full = false;
        st.dirty = false;
        st.reclaim_paused = false;
        // Not while a message handler quiesces: it emptied the cache and relies on it.
        if st.quiescing == 0 {
            let none = st.store.usage().snapshots == 0;
            self.map_cache.lock().set_no_snapshots(none);
        }
        pr_info!("exception store reopened at its last commit\n");
        drop(st);
        // Whatever was held back is retried against the reopened store.
        self.kick();
        Ok(())
    }

    /// The origin was suspended: commits whatever the store holds, and reclaims nothing until
    /// [`Pool::resume`].
    pub(crate) fn suspend(self: &Arc<Self>) {
        self.state.lock().suspended = true;
        self.sync();
    }

    /// The origin was resumed: a reclaim left pending (by a suspend, a reload or a crash)
    /// goes on.
    pub(crate) fn resume(self: &Arc<Self>) {
        self.state.lock().suspended = false;
        self.kick();
    }

    /// Commits whatever the store holds (origin suspend, target teardown).
    pub(crate) fn sync(self: &Arc<Self>) {
        let mut st = self.state.lock();
        while !st.pending.is_empty() {
            self.kick();
            self.drained.wait(&mut st);
        }
        if st.failed {
            return;
        }
        match st.store.commit() {
            Ok(()) => self.committed(&mut st),
            Err(e) => self.note_error(&mut st, e),
        }
    }
}

/// Why `snapshot delete` failed.
pub(crate) enum DeleteError {
    /// An `s-snap` device of the snapshot is active.
    Active,
    /// The store refused or failed.
    Store(store::Error),
}

impl From<store::Error> for DeleteError {
    fn from(e: store::Error) -> Self {
        DeleteError::Store(e)
    }
}

/// Why an `s-snap` ctr could not use a snapshot.
pub(crate) enum ActivateError {
    NoSuchSnapshot,
    AlreadyActive,
    NoMemory,
    Store(store::Error),
}

impl WorkItem for Pool {
    type Pointer = Arc<Pool>;

    fn run(this: Arc<Pool>) {
        this.run_worker();
    }
}
