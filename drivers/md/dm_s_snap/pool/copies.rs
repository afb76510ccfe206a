// SPDX-License-Identifier: GPL-2.0

//! Chunk copies: the plans the store hands out for origin writes and snapshot unshares, the
//! kcopyd copies that carry them out (or the snapshot write that overwrites the whole chunk,
//! see [`super::overwrites`]), and their completion in the worker. At most one plan per chunk
//! is in flight; bios of a chunk with a plan in flight wait on its [`Pending`].

use super::{bio_error, OriginBio, Pool, SnapBio, State};
use crate::store::{self, SnapshotRef};
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::{
    block::bio::{BioList, Operation, Sector},
    device_mapper::{
        kcopyd::{CopyResult, Region},
        DmDev,
    },
    new_condvar, new_spinlock,
    prelude::*,
    sync::{Arc, CondVar, SpinLock},
};

/// A copy of one chunk that kcopyd performs for a plan.
pub(super) struct CopyJob {
    /// 0 while in flight, then [`COPY_OK`] or [`COPY_FAILED`].
    state: AtomicU32,
}

pub(super) const COPY_OK: u32 = 1;
pub(super) const COPY_FAILED: u32 = 2;

/// Counts the copy completions that still hold a reference to the pool.
///
/// The last reference to the pool should go in a target's destructor: then the pool's kcopyd
/// client is destroyed there, and its destruction waits until every completion has returned
/// into kcopyd, as a C target's `dtr` does; no module code is left running for a target that
/// device-mapper considers gone. (Dropped in a completion instead, the client would be
/// destroyed later, with the module pinned meanwhile.) So completions drop their pool
/// reference first and leave the tracker after, and a destructor waits for the tracker.
#[pin_data]
pub(super) struct CopyTracker {
    #[pin]
    in_flight: SpinLock<u32>,
    #[pin]
    idle: CondVar,
}

impl CopyTracker {
    pub(super) fn new() -> impl PinInit<Self> {
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

    pub(super) fn wait_idle(&self) {
        let mut n = self.in_flight.lock();
        while *n != 0 {
            self.idle.wait(&mut n);
        }
    }
}

pub(super) enum PlanKind {
    Origin(store::CopyPlan),
    Unshare(store::UnsharePlan),
    /// The copy back of this chunk by a rollback (see `pool/rollback.rs`).
    Rollback(u64),
}

/// What puts the data of a plan in place, and reports when it is done.
pub(super) enum DataWrite {
    /// A kcopyd copy of the chunk.
    Copy(Arc<CopyJob>),
    /// A snapshot write that covers the whole chunk, sent straight to the plan's new chunk; its
    /// `end_io` reports into this slot of [`Pool::overwrites`].
    Overwrite(usize),
}

/// Which data write of a plan failed, and so which waiting bios fail with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FailedWrite {
    /// The copy for an origin write: the origin writes of the chunk fail.
    OriginCopy,
    /// The copy that unshares a chunk for this snapshot: its writes of the chunk fail.
    Unshare(SnapshotRef),
    /// A snapshot write that overwrote the whole chunk: it ended with its own error already.
    Overwrite,
}

/// A chunk with a plan in flight, and the bios waiting for it.
pub(super) struct Pending {
    chunk: u64,
    plan: PlanKind,
    data: DataWrite,
    pub(super) origin_waiters: BioList<OriginBio>,
    pub(super) snap_waiters: BioList<SnapBio>,
}

impl Pool {
    /// The number of sectors to copy for `chunk`: the whole chunk, except at the end of an
    /// origin whose size is not a multiple of the chunk size, where only the sectors up to the
    /// origin's end exist (dm-snapshot clamps its copies the same way). The rest of such a COW
    /// chunk is never read: no target maps sectors past the end of the origin.
    pub(super) fn copy_len(&self, chunk: u64) -> Sector {
        let start = chunk << self.chunk_shift;
        Sector::from(self.chunk_sectors).min(self.origin.nr_sectors().saturating_sub(start))
    }

    /// The first `len` sectors of chunk `chunk` of `dev`.
    pub(super) fn chunk_region<'a>(&self, dev: &'a DmDev, chunk: u64, len: Sector) -> Region<'a> {
        Region::new(dev, chunk << self.chunk_shift, len)
    }

    pub(super) fn pending_index(st: &State, chunk: u64) -> Option<usize> {
        st.pending.iter().position(|p| p.chunk == chunk)
    }

    /// Starts copying `from` to `to` for a plan, or writing zeroes to `to` if `from` is
    /// `None` (a chunk that reads as zeroes); returns the index of its pending entry.
    pub(super) fn start_copy(
        self: &Arc<Self>,
        st: &mut State,
        chunk: u64,
        from: Option<Region<'_>>,
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
            let finished = move |result: CopyResult| {
                let state = if result.is_ok() { COPY_OK } else { COPY_FAILED };
                done.state.store(state, Ordering::Release);
                pool.kick();
                // Before leaving the tracker (see `CopyTracker`).
                drop(pool);
                tracker.finish();
            };
            let submitted = match from {
                Some(from) => self.kcopyd.copy(&from, &[to], finished),
                None => self.kcopyd.zero(&[to], finished),
            };
            if let Err(e) = submitted {
                self.copies.finish();
                return Err(e);
            }
            Ok(job)
        })();
        match setup {
            Ok(job) => {
                // Cannot fail: capacity was reserved above.
                self.add_pending(st, chunk, plan, DataWrite::Copy(job))
            }
            Err(e) => {
                let aborted = match plan {
                    PlanKind::Origin(plan) => st.store.abort_origin_write(plan),
                    PlanKind::Unshare(plan) => st.store.abort_snapshot_write(plan),
                    PlanKind::Rollback(_) => Ok(()),
                };
                if let Err(ae) = aborted {
                    self.note_error(st, ae);
                }
                Err(e)
            }
        }
    }

    /// Records a plan whose data write is started. Room for the entry must have been reserved
    /// in `st.pending`, so that this cannot fail: a plan lost here would hold back every
    /// commit, so if it fails anyway the store is failed rather than left to hang.
    pub(super) fn add_pending(
        &self,
        st: &mut State,
        chunk: u64,
        plan: PlanKind,
        data: DataWrite,
    ) -> Result<usize> {
        let entry = Pending {
            chunk,
            plan,
            data,
            origin_waiters: BioList::default(),
            snap_waiters: BioList::default(),
        };
        if let Err(e) = st.pending.push(entry, GFP_NOIO) {
            self.note_error(
                st,
                store::Error::Internal("no room reserved for a pending plan"),
            );
            return Err(e.into());
        }
        Ok(st.pending.len() - 1)
    }

    /// Completes the plans whose copies finished and wakes their waiters.
    pub(super) fn complete_copies(&self, st: &mut State) {
        let mut i = 0;
        while i < st.pending.len() {
            let state = match &st.pending[i].data {
                DataWrite::Copy(job) => job.state.load(Ordering::Acquire),
                DataWrite::Overwrite(slot) => self.overwrites.result(*slot),
            };
            if state == 0 {
                i += 1;
                continue;
            }
            let mut p = st.pending.swap_remove(i);
            // What fails if the data write failed: see `copy_failed`.
            let failed = match (&p.plan, &p.data) {
                (_, DataWrite::Overwrite(slot)) => {
                    self.overwrites.release(*slot);
                    FailedWrite::Overwrite
                }
                // A failed copy back fails the origin writes that waited for it, like a
                // failed copy for them.
                (PlanKind::Origin(_) | PlanKind::Rollback(_), DataWrite::Copy(_)) => {
                    FailedWrite::OriginCopy
                }
                (PlanKind::Unshare(plan), DataWrite::Copy(_)) => {
                    FailedWrite::Unshare(plan.snapshot())
                }
            };
            // The origin's copy covers every snapshot that lacked the chunk: once it is
            // committed, the origin writes that waited for it need nothing more.
            let origin_copy = matches!(p.plan, PlanKind::Origin(_));
            let result = if state == COPY_OK {
                match p.plan {
                    PlanKind::Origin(plan) => st.store.origin_write_complete(plan),
                    PlanKind::Unshare(plan) => st.store.snapshot_write_complete(plan),
                    PlanKind::Rollback(chunk) => {
                        self.chunk_rolled_back(st, chunk);
                        Ok(())
                    }
                }
            } else {
                // One failed copy fails only the bios that need it: the plan is aborted, its
                // chunk freed, and the origin and every snapshot keep their data. The store
                // fails only if it cannot take the plan back.
                if failed != FailedWrite::Overwrite {
                    pr_err!(
                        "copy of chunk {} failed: failing the I/O that needs it\n",
                        p.chunk
                    );
                }
                let aborted = match p.plan {
                    PlanKind::Origin(plan) => st.store.abort_origin_write(plan),
                    PlanKind::Unshare(plan) => st.store.abort_snapshot_write(plan),
                    PlanKind::Rollback(_) => {
                        // Not again until the origin resumes: the origin device failed.
                        st.rollback_stalled = true;
                        Ok(())
                    }
                };
                match aborted {
                    Ok(()) => {
                        st.commits.mark_dirty();
                        Self::copy_failed(st, &mut p.origin_waiters, &mut p.snap_waiters, failed);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(()) => {
                    st.commits.mark_dirty();
                    // Origin writes go after the commit that makes the exception durable; the
                    // retry then issues them (or copies again for a snapshot created since).
                    while let Some(bio) = p.origin_waiters.pop() {
                        if origin_copy {
                            st.commits.after_commit_ready_origin(bio, st.handler_gen);
                        } else {
                            st.commits.after_commit_origin(bio);
                        }
                    }
                    // A snapshot write now finds its own chunk: retry it at once.
                    st.held_snap.append(&mut p.snap_waiters);
                }
                Err(e) => {
                    if failed == FailedWrite::Overwrite && state == COPY_OK {
                        // The write was acknowledged and its exception cannot be recorded (the
                        // store keeps the space a completion needs, so this is not for want of
                        // space): fail the store rather than let the snapshot read its old
                        // data without an error. A reload reopens it at its last commit, as
                        // after a crash, which loses unflushed writes just the same.
                        pr_err!(
                            "written chunk {} of a snapshot cannot be recorded ({})\n",
                            p.chunk,
                            e
                        );
                        self.note_error(st, store::Error::Internal("unrecorded snapshot write"));
                    }
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

    /// Deals with the bios that waited for a data write that failed and whose plan was
    /// aborted. The writes that needed that very copy fail: origin writes for the origin's
    /// copy, writes of that snapshot for its unshare. Everything else is retried, since the
    /// store is as before the plan: reads (which never start a copy, so a retry cannot loop),
    /// and writes that need a copy of their own (which fail if that copy fails). A failed
    /// overwrite ended with its own error, and every waiter is retried.
    pub(super) fn copy_failed(
        st: &mut State,
        origin_waiters: &mut BioList<OriginBio>,
        snap_waiters: &mut BioList<SnapBio>,
        failed: FailedWrite,
    ) {
        // A discard never needed a copy: it is retried.
        while let Some(bio) = origin_waiters.pop() {
            if failed == FailedWrite::OriginCopy && bio.op() != Operation::Discard {
                bio.end(Err(EIO));
            } else {
                st.held_origin.push_back(bio);
            }
        }
        while let Some(bio) = snap_waiters.pop() {
            let needed_it = match (failed, bio.per_io().snap) {
                (FailedWrite::Unshare(failed), Some(snap)) => {
                    bio.is_write() && bio.op() != Operation::Discard && failed == snap
                }
                _ => false,
            };
            if needed_it {
                bio.end(Err(EIO));
            } else {
                st.held_snap.push_back(bio);
            }
        }
    }
}
