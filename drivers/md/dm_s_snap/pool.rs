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
//!   current data was copied into a chunk of its own, unless it overwrites the whole chunk:
//!   then it goes to the new chunk at once, and the chunk becomes the snapshot's once it
//!   completed (see [`overwrites`]);
//! - REQ_PREFLUSH and REQ_FUA bios are issued only after a commit;
//! - an origin write, or a snapshot write that unshares, waits while snapshot reads of the
//!   chunk are in flight, so that a read never sees data written after it was issued and never
//!   reads a chunk that is being freed.
//!
//! At most one copy per chunk is in flight. A commit of completed origin copies is a journal
//! block, written while the worker goes on and copies continue (see [`commit`]). Any other
//! commit is a checkpoint, which the store refuses while copies are outstanding, so when one
//! is wanted no new copy is started until those in flight are done ("commit barrier"); bios
//! held back meanwhile are retried after the commit.

//!
//! The worker's parts live in files of their own: [`copies`] (chunk copies and their
//! completion), [`overwrites`] (snapshot writes that need no copy), [`origin_bios`] and
//! [`snapshot_bios`] (what each bio needs), [`space_events`] (dm events about space and
//! failures), [`growth`] (a COW device that grew), [`commit`] (when
//! to commit and what a commit releases), [`reclaim`] (deleted snapshots' space), [`messages`]
//! (messages and status) and [`lifecycle`] (teardown and reopening a failed store).

mod commit;
mod copies;
mod growth;
mod lifecycle;
mod messages;
mod origin_bios;
mod overwrites;
mod reclaim;
mod rollback;
mod snapshot_bios;
mod space_events;

pub(crate) use messages::{ActivateError, DeleteError};
pub(crate) use rollback::RollbackError;

use crate::cow::CowIo;
use crate::map_cache::MapCache;
use crate::origin::OriginTarget;
use crate::snapshot::SnapshotTarget;
use crate::store::{self, SnapshotRef, Store};
use commit::Committer;
use copies::{CopyTracker, Pending};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use kernel::{
    block::bio::{BioList, Sector},
    c_str,
    device_mapper::{kcopyd, DmBio, DmDev},
    new_condvar, new_mutex, new_spinlock,
    prelude::*,
    sync::{Arc, CondVar, Mutex, SpinLock},
    workqueue::{impl_has_work, new_work, OwnedQueue, Work, WorkItem},
};
use overwrites::Overwrites;
use space_events::SpaceEvents;

/// Snapshot reads in flight are counted per bucket of chunks (a hash), so that the count needs
/// no allocation in `end_io`; an unrelated chunk sharing a bucket only delays a write a little.
const READ_BUCKETS: usize = 256;

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
    /// `1 + slot` of [`Overwrites`] if the bio is a write that overwrites a whole chunk, or 0.
    pub(crate) overwrite_slot: u8,
    /// `1 + bucket` of the direct-write counter this bio holds, or 0.
    pub(crate) direct_write_bucket: u16,
}

/// I/O in flight: snapshot I/O per bucket of chunks, and origin writes.
struct InFlight {
    /// Snapshot reads: a chunk's data does not move or change under them.
    reads: [AtomicU32; READ_BUCKETS],
    /// Snapshot writes sent straight to a chunk the snapshot owns: a discard frees such a
    /// chunk only once they have ended.
    direct_writes: [AtomicU32; READ_BUCKETS],
    /// Origin writes issued to the origin device and not completed yet.
    origin_writes: AtomicU32,
    /// The worker has bios waiting for reads (or direct writes) to drain.
    read_waiters: AtomicBool,
}

/// Per-bio data of origin bios.
#[derive(Clone, Copy, Default)]
pub(crate) struct OriginIo {
    /// The write is counted in `Pool::in_flight.origin_writes`.
    pub(crate) counted: bool,
    /// The [`State::handler_gen`] at which the write was found to need nothing but the next
    /// commit (0: never): if no message handler changed the store since, it proceeds after
    /// that commit without asking the store again (see `Pool::process_origin`).
    pub(crate) ready_at_gen: u64,
}

/// Bios handed from `map` to the worker.
#[derive(Default)]
struct Inbox {
    origin: BioList<OriginBio>,
    snap: BioList<SnapBio>,
}

/// Everything the worker and the message handlers change, under [`Pool::state`].
struct State {
    store: Store<CowIo>,
    pending: KVec<Pending>,
    /// The bios waiting for the next commit, and whether the store changed.
    commits: Committer,
    /// Origin writes held back (commit barrier, quiesce, reads in flight): retried later.
    held_origin: BioList<OriginBio>,
    /// Snapshot writes held back because reads of their chunk are in flight.
    held_snap: BioList<SnapBio>,
    /// Message handlers waiting for copies and origin writes to drain.
    quiescing: u32,
    /// Counts the message handlers that changed the store (from 1): what an origin write
    /// needs may have grown with each (a snapshot created, a rollback started).
    handler_gen: u64,
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
    /// Reclaim steps run since the last commit (see `pool/reclaim.rs`).
    reclaim_steps: u64,
    /// Chunks the running rollback copied back, to take off the store's list in front of the
    /// next commit (see `pool/rollback.rs`).
    rolled_back: KVec<u64>,
    /// The rollback's background copy stopped after an I/O error, until the origin resumes.
    rollback_stalled: bool,
    /// The rollback's background copy found no space: retried after the next commit.
    rollback_waits_for_space: bool,
    /// Where space and health events go, and the low-water mark.
    space_events: SpaceEvents,
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
    /// Completions of snapshot writes that overwrite a whole chunk.
    overwrites: Overwrites,
    /// The worker's queue: in the I/O path, so it must make progress under memory pressure.
    wq: OwnedQueue,
    /// The commit work's queue (journal writes, see `pool/commit.rs`): of its own, so that
    /// the worker goes on while a write is in flight.
    commit_wq: OwnedQueue,
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
    /// Snapshot I/O in flight per bucket of chunks.
    in_flight: InFlight,
    /// A rollback runs: `map` sends every origin bio to the worker.
    rolling_back: AtomicBool,
    #[pin]
    work: Work<Pool>,
    /// Writes the journal block the worker sealed.
    #[pin]
    commit_work: Work<Pool, 2>,
}

impl_has_work! {
    impl HasWork<Self> for Pool { self.work }
    impl HasWork<Self, 2> for Pool { self.commit_work }
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
        let io = CowIo::new(cow)?;
        // A COW device grown since the format is grown into when the origin table becomes live
        // (`Pool::grow_into_cow_device`).
        let store = Store::open(io, chunk_sectors).map_err(OpenError::Store)?;
        let rolling_back = AtomicBool::new(store.rolling_back());
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
        let commit_wq = OwnedQueue::new(
            c_str!("s-snap-commit"),
            OwnedQueue::MEM_RECLAIM,
            1,
            &crate::THIS_MODULE,
        )?;
        let state = State {
            store,
            pending: KVec::new(),
            commits: Committer::new(store::META_BLOCK_SIZE)?,
            held_origin: BioList::default(),
            held_snap: BioList::default(),
            quiescing: 0,
            handler_gen: 1,
            active: KVec::new(),
            failed: false,
            cow_full: false,
            suspended: false,
            reclaim_paused: false,
            reclaim_steps: 0,
            rolled_back: KVec::new(),
            rollback_stalled: false,
            rollback_waits_for_space: false,
            space_events: SpaceEvents::default(),
        };
        let pool = Arc::pin_init(
            pin_init!(Self {
                origin: origin.clone(),
                cow: cow.clone(),
                chunk_sectors,
                chunk_shift: chunk_sectors.trailing_zeros(),
                kcopyd,
                copies,
                overwrites: Overwrites::new(),
                wq,
                commit_wq,
                state <- new_mutex!(state, "s_snap::Pool::state"),
                inbox <- new_spinlock!(Inbox::default(), "s_snap::Pool::inbox"),
                map_cache <- new_spinlock!(map_cache, "s_snap::Pool::map_cache"),
                drained <- new_condvar!("s_snap::Pool::drained"),
                in_flight: InFlight {
                    reads: [const { AtomicU32::new(0) }; READ_BUCKETS],
                    direct_writes: [const { AtomicU32::new(0) }; READ_BUCKETS],
                    origin_writes: AtomicU32::new(0),
                    read_waiters: AtomicBool::new(false),
                },
                rolling_back,
                work <- new_work!("s_snap::Pool::work"),
                commit_work <- new_work!("s_snap::Pool::commit_work"),
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

    /// Queues the worker.
    pub(crate) fn kick(self: &Arc<Self>) {
        // Already queued is fine: the queued run will see what this one would have.
        let _ = self.wq.enqueue::<_, 0>(self.clone());
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
        self.in_flight.origin_writes.fetch_add(1, Ordering::AcqRel);
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
        self.in_flight.reads[b].fetch_add(1, Ordering::AcqRel);
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
        if self.in_flight.origin_writes.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_all();
        }
    }

    /// Called from `end_io` of a snapshot read that holds a read count.
    pub(crate) fn snap_read_done(self: &Arc<Self>, read_bucket: u16) {
        let Some(b) = (read_bucket as usize).checked_sub(1) else {
            return;
        };
        if let Some(count) = self.in_flight.reads.get(b) {
            if count.fetch_sub(1, Ordering::AcqRel) == 1
                && self.in_flight.read_waiters.load(Ordering::Acquire)
            {
                self.kick();
            }
        }
    }

    /// Called from `end_io` of a snapshot write that holds a direct-write count.
    pub(crate) fn snap_direct_write_done(self: &Arc<Self>, direct_write_bucket: u16) {
        let Some(b) = (direct_write_bucket as usize).checked_sub(1) else {
            return;
        };
        if let Some(count) = self.in_flight.direct_writes.get(b) {
            if count.fetch_sub(1, Ordering::AcqRel) == 1
                && self.in_flight.read_waiters.load(Ordering::Acquire)
            {
                self.kick();
            }
        }
    }

    fn direct_writes_pending(&self, chunk: u64) -> bool {
        self.in_flight.direct_writes[bucket(chunk)].load(Ordering::Acquire) != 0
    }

    fn reads_pending(&self, chunk: u64) -> bool {
        self.in_flight.reads[bucket(chunk)].load(Ordering::Acquire) != 0
    }

    fn run_worker(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.in_flight.read_waiters.store(false, Ordering::Release);
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
        self.rollback_some(&mut st);
        self.commit_if_wanted(&mut st);
        self.check_low_water(&mut st);
        if st.pending.is_empty() {
            self.drained.notify_all();
        }
    }

    fn note_error(&self, st: &mut State, e: store::Error) {
        if e.is_fatal() && !st.failed {
            pr_err!("exception store failed ({}): failing I/O\n", e);
            st.failed = true;
            self.map_cache.lock().clear();
            Self::raise_event(st);
        }
    }
}

impl WorkItem for Pool {
    type Pointer = Arc<Pool>;

    fn run(this: Arc<Pool>) {
        this.run_worker();
    }
}

impl WorkItem<2> for Pool {
    type Pointer = Arc<Pool>;

    fn run(this: Arc<Pool>) {
        this.write_journal();
    }
}
