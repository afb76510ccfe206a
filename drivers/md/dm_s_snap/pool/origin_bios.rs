// SPDX-License-Identifier: GPL-2.0

//! Origin bios in the worker: what an origin write needs (nothing, a commit, a copy), and
//! issuing it once its chunk is safe to write.

use super::{bio_error, copies::PlanKind, rollback::ChunkRollback, OriginBio, Pool, State};
use crate::store::{self, CowFullPolicy, OriginDiscard, OriginWrite};
use core::sync::atomic::Ordering;
use kernel::{
    block::bio::{BioList, Operation},
    prelude::*,
    sync::Arc,
};

impl Pool {
    pub(super) fn process_origin_list(
        self: &Arc<Self>,
        st: &mut State,
        mut list: BioList<OriginBio>,
    ) {
        while let Some(bio) = list.pop() {
            self.process_origin(st, bio, false);
        }
    }

    /// Decides what an origin write (or flush) needs, and starts it. `committed` is true for a
    /// bio that waited for a commit which has now finished.
    pub(super) fn process_origin(
        self: &Arc<Self>,
        st: &mut State,
        mut bio: OriginBio,
        committed: bool,
    ) {
        // Good for the commit that releases the bio only: a bio that waits again is marked again.
        let ready_at_gen = core::mem::take(&mut bio.per_io_mut().ready_at_gen);
        if st.failed {
            bio.end(Err(EIO));
            return;
        }
        let discard = bio.op() == Operation::Discard;
        if !bio.has_data() && !discard {
            // An empty flush: issued to the origin after a commit.
            self.issue_origin(st, bio, committed);
            return;
        }
        let chunk = self.chunk_of(bio.sector());
        if let Some(i) = Self::pending_index(st, chunk) {
            st.pending[i].origin_waiters.push_back(bio);
            return;
        }
        if !bio.is_write() {
            // `map` sends reads here only while a rollback runs.
            self.rollback_read(st, bio, chunk);
            return;
        }
        // A write that waited for a commit goes on even while a message handler quiesces: the
        // handler waits for it, so that a snapshot created next does not copy its chunk again.
        if !committed && Self::barrier(st) {
            st.held_origin.push_back(bio);
            return;
        }
        if self.reads_pending(chunk) {
            self.in_flight.read_waiters.store(true, Ordering::Release);
            st.held_origin.push_back(bio);
            // The last read may have ended before the flag was seen.
            if !self.reads_pending(chunk) {
                self.kick();
            }
            return;
        }
        if discard {
            self.origin_discard(st, bio, chunk);
            return;
        }
        // A write released by the commit it was found to need alone proceeds: no snapshot was
        // created (nor a rollback started) since, as no message handler ran. That saves the
        // store a look-up for most first writes.
        let ready = committed && ready_at_gen == st.handler_gen && !st.store.rolling_back();
        let needs = if ready {
            Ok(OriginWrite::Proceed)
        } else {
            st.store.origin_write_prepare(chunk)
        };
        match needs {
            Ok(OriginWrite::Proceed) => {
                // Not while a handler quiesces: a snapshot it creates may share the chunk again,
                // and the handler emptied the cache already.
                if st.quiescing == 0 {
                    self.map_cache.lock().set_origin_unshared(chunk);
                }
                self.issue_origin(st, bio, committed)
            }
            Ok(OriginWrite::AfterCommit) => {
                st.commits.after_commit_ready_origin(bio, st.handler_gen)
            }
            Ok(OriginWrite::RollBackFirst) => self.roll_back_for_write(st, bio, chunk, committed),
            Ok(OriginWrite::Copy(plan)) => {
                // A chunk was allocated: the COW device is not full (any more).
                st.cow_full = false;
                let len = self.copy_len(chunk);
                let from = self.chunk_region(&self.origin, chunk, len);
                let to = self.chunk_region(&self.cow, plan.cow(), len);
                match self.start_copy(st, chunk, Some(from), to, PlanKind::Origin(plan)) {
                    Ok(i) => st.pending[i].origin_waiters.push_back(bio),
                    Err(e) => bio.end(Err(e)),
                }
            }
            Err(e) => self.origin_write_failed(st, bio, chunk, committed, e),
        }
    }

    /// An origin write whose copy could not be planned: with no space, the COW-full policy
    /// decides (drop the snapshots that need the copy, or fail the write); other errors fail
    /// it.
    fn origin_write_failed(
        self: &Arc<Self>,
        st: &mut State,
        bio: OriginBio,
        chunk: u64,
        committed: bool,
        e: store::Error,
    ) {
        match e {
            store::Error::NoSpace if st.store.cow_full_policy() == CowFullPolicy::Drop => {
                if self.drop_snapshots_for(st, chunk) {
                    // Nothing needs the copy now: the write waits for the commit of the drop.
                    self.process_origin(st, bio, committed);
                } else {
                    Self::note_cow_full(st, "origin writes that need a copy");
                    bio.end(Err(ENOSPC));
                }
            }
            store::Error::NoSpace => {
                // COW full: the origin keeps its data, the write fails, the snapshots stay
                // intact (see Documentation/admin-guide/device-mapper/shared-snapshot.rst).
                Self::note_cow_full(st, "origin writes that need a copy");
                bio.end(Err(ENOSPC));
            }
            e => {
                self.note_error(st, e);
                bio.end(Err(bio_error(e)));
            }
        }
    }

    /// An origin write to a chunk that the running rollback has still to copy back: the copy
    /// back comes first, then the write is checked again.
    fn roll_back_for_write(
        self: &Arc<Self>,
        st: &mut State,
        bio: OriginBio,
        chunk: u64,
        committed: bool,
    ) {
        match self.roll_back_chunk(st, chunk) {
            Ok(ChunkRollback::Started(i)) => st.pending[i].origin_waiters.push_back(bio),
            Ok(ChunkRollback::AfterCommit) => st.commits.after_commit_origin(bio),
            Ok(ChunkRollback::ReadsInFlight) => st.held_origin.push_back(bio),
            Err(e) => self.origin_write_failed(st, bio, chunk, committed, e),
        }
    }

    /// The `drop` COW-full policy: drops the snapshots that need a copy of `chunk`, which found
    /// no space, so that the origin write goes on. Each is logged, and one event is raised;
    /// their `s-snap` devices fail I/O from now on (see `process_snap`). False if nothing was
    /// dropped (not even the snapshot table could be updated): the write fails then.
    fn drop_snapshots_for(&self, st: &mut State, chunk: u64) -> bool {
        let cow = self.cow.name();
        let result = st.store.drop_snapshots_needing(chunk, &mut |snap| {
            pr_err!(
                "{}: COW device full: dropped snapshot {} to copy origin chunk {} (delete it to get its space back)\n",
                cow,
                snap.id(),
                chunk
            );
        });
        match result {
            Ok(0) => false,
            Ok(_) => {
                // `map` must not send reads of a dropped snapshot anywhere any more.
                self.map_cache.lock().clear();
                st.commits.mark_dirty();
                Self::raise_event(st);
                true
            }
            Err(store::Error::NoSpace) => false,
            Err(e) => {
                self.note_error(st, e);
                false
            }
        }
    }

    /// Passes a discard of (part of) `chunk` down to the origin if no snapshot shares the
    /// chunk, and drops it otherwise: the snapshots need the data, and discarded data is
    /// undefined, so keeping it is correct. No copy is made for a discard.
    fn origin_discard(&self, st: &mut State, bio: OriginBio, chunk: u64) {
        if bio.end_sector() > (chunk + 1) << self.chunk_shift {
            // Discards come one chunk at a time (`io_hints`); keep anything else.
            bio.end(Ok(()));
            return;
        }
        match st.store.origin_discard_prepare(chunk) {
            Ok(OriginDiscard::Pass) => self.issue_origin(st, bio, false),
            Ok(OriginDiscard::AfterCommit) => st.commits.after_commit_origin(bio),
            Ok(OriginDiscard::Keep) => bio.end(Ok(())),
            Err(e) => {
                self.note_error(st, e);
                bio.end(Err(bio_error(e)));
            }
        }
    }

    /// Issues an origin bio whose chunk is safe to write. A bio that asks for durability
    /// (REQ_PREFLUSH, REQ_FUA) waits for a commit first, unless `committed` says that one
    /// finished since it arrived.
    pub(super) fn issue_origin(&self, st: &mut State, mut bio: OriginBio, committed: bool) {
        if !committed && (bio.is_flush() || bio.is_fua()) {
            st.commits.after_commit_ready_origin(bio, st.handler_gen);
            return;
        }
        // Discards count as writes: a snapshot created next must not see one land.
        if bio.is_write() && (bio.has_data() || bio.op() == Operation::Discard) {
            bio.per_io_mut().counted = true;
            self.in_flight.origin_writes.fetch_add(1, Ordering::AcqRel);
        }
        bio.submit();
    }
}
