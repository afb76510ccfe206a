// SPDX-License-Identifier: GPL-2.0

//! Rolling the origin back to a snapshot (see `store/rollback.rs`): the message, origin reads
//! while chunks are still to be copied back, and the copy back itself, in the background or
//! before an origin write to such a chunk.
//!
//! While a rollback runs, `map` hands every origin bio to the worker ([`Pool::rolling_back`]).
//! A chunk is copied back like an origin write that needs a copy: the origin's data is first
//! preserved for the other snapshots that share it (and committed), then kcopyd copies the
//! snapshot's data over the origin chunk (or zeroes it). The store takes the chunk off its list
//! only in front of the next commit, after a flush of the origin device: a commit never says
//! that a chunk is back before its data is durable on the origin. Until then the chunk reads as
//! the snapshot (the same data), and an origin write to it waits for that commit. As for an
//! origin write, the copy back waits while snapshot reads of the chunk are in flight: they may
//! read the origin's old data, which the chunk holds until then.

use super::{bio_error, copies::PlanKind, OriginBio, Pool, State};
use crate::store::{self, Location, OriginWrite};
use core::sync::atomic::Ordering;
use kernel::{prelude::*, sync::Arc};

/// Chunks the background copies back at most at once.
const ROLLBACK_IN_FLIGHT: usize = 16;

/// Chunks copied back after which the background waits for a commit: copies that keep
/// following each other would otherwise put the commit off (it waits until none is in
/// flight), and with it the durable progress and the memory of the list.
const ROLLBACK_PER_COMMIT: usize = 256;

/// Why `snapshot rollback` failed.
pub(crate) enum RollbackError {
    /// An `s-snap` device of the snapshot is active: its data could change under the copy.
    Active,
    /// The store refused or failed.
    Store(store::Error),
}

impl From<store::Error> for RollbackError {
    fn from(e: store::Error) -> Self {
        RollbackError::Store(e)
    }
}

/// What starting the copy back of a chunk did.
pub(super) enum ChunkRollback {
    /// A copy is in flight for it: its pending entry.
    Started(usize),
    /// It waits for the next commit (of the origin data preserved for other snapshots, or of
    /// its own copy back).
    AfterCommit,
    /// Snapshot reads of the origin chunk are in flight: the copy back must not overwrite it
    /// under them. Tried again once they have ended (they wake the worker).
    ReadsInFlight,
}

impl Pool {
    /// Whether a rollback runs: `map` sends every origin bio to the worker then.
    pub(crate) fn rolling_back(&self) -> bool {
        self.rolling_back.load(Ordering::Acquire)
    }

    /// `snapshot rollback <id>`: from its return on, the origin reads as snapshot `id`, and the
    /// worker copies the snapshot's data back in the background. Refused while an `s-snap`
    /// device of the snapshot is active. Returns the number of chunks to copy back.
    pub(crate) fn start_rollback(self: &Arc<Self>, id: u32) -> Result<u64, RollbackError> {
        let chunks = self.quiesced(|st| {
            if st.active.contains(&id) {
                return Err(RollbackError::Active);
            }
            let r = st.store.start_rollback(id);
            if let Err(e) = r {
                self.note_error(st, e);
            }
            // Before the commit that makes it durable: no origin bio may pass `map` unseen
            // once it is (the quiesced handler holds new copies and writes back meanwhile).
            if st.store.rolling_back() {
                self.rolling_back.store(true, Ordering::Release);
            }
            Ok(r?)
        })?;
        pr_info!(
            "{}: rolling back to snapshot {}: {} chunks to copy back\n",
            self.origin.name(),
            id,
            chunks
        );
        Ok(chunks)
    }

    /// Serves an origin read while a rollback runs: from where the snapshot's data is for a
    /// chunk still to be copied back, from the origin otherwise.
    pub(super) fn rollback_read(&self, st: &mut State, bio: OriginBio, chunk: u64) {
        match st.store.origin_read_location(chunk) {
            Ok(Location::Origin) => bio.submit(),
            Ok(Location::Cow(c)) => {
                // The snapshot's data cannot move while the rollback runs (see
                // `store/rollback.rs`): no read count is needed.
                let offset = bio.sector() & self.chunk_mask();
                bio.remap(self.cow.bdev(), (c << self.chunk_shift) + offset);
                bio.submit();
            }
            Ok(Location::Zeroes) => {
                bio.zero_fill();
                bio.end(Ok(()));
            }
            Err(e) => {
                self.note_error(st, e);
                bio.end(Err(bio_error(e)));
            }
        }
    }

    /// Starts copying `chunk` back (a chunk the running rollback lists): the origin's data
    /// first preserved for the other snapshots, then the snapshot's data copied over it.
    pub(super) fn roll_back_chunk(
        self: &Arc<Self>,
        st: &mut State,
        chunk: u64,
    ) -> Result<ChunkRollback, store::Error> {
        if st.rolled_back.contains(&chunk) {
            return Ok(ChunkRollback::AfterCommit);
        }
        let len = self.copy_len(chunk);
        let to = self.chunk_region(&self.origin, chunk, len);
        let (from, plan) = match st.store.rollback_prepare(chunk)? {
            OriginWrite::Copy(plan) => {
                st.cow_full = false;
                let to = self.chunk_region(&self.cow, plan.cow(), len);
                let from = self.chunk_region(&self.origin, chunk, len);
                return match self.start_copy(st, chunk, Some(from), to, PlanKind::Origin(plan)) {
                    Ok(i) => Ok(ChunkRollback::Started(i)),
                    Err(_) => Err(store::Error::Io("cannot start a copy")),
                };
            }
            OriginWrite::AfterCommit => {
                st.commits.mark_dirty();
                return Ok(ChunkRollback::AfterCommit);
            }
            OriginWrite::Proceed if self.reads_pending(chunk) => {
                self.in_flight.read_waiters.store(true, Ordering::Release);
                // The last one may have ended before the flag was seen.
                if !self.reads_pending(chunk) {
                    self.kick();
                }
                return Ok(ChunkRollback::ReadsInFlight);
            }
            OriginWrite::Proceed => match st.store.rollback_source(chunk)? {
                Location::Cow(c) => (Some(self.chunk_region(&self.cow, c, len)), chunk),
                Location::Zeroes => (None, chunk),
                Location::Origin => return Err(store::Error::Internal("rollback from the origin")),
            },
            OriginWrite::RollBackFirst => {
                return Err(store::Error::Internal(
                    "rollback_prepare asks for a rollback",
                ))
            }
        };
        match self.start_copy(st, chunk, from, to, PlanKind::Rollback(plan)) {
            Ok(i) => Ok(ChunkRollback::Started(i)),
            Err(_) => Err(store::Error::Io("cannot start a copy back")),
        }
    }

    /// A chunk's copy back finished: the store takes it off its list before the next commit.
    pub(super) fn chunk_rolled_back(&self, st: &mut State, chunk: u64) {
        if st.rolled_back.push(chunk, GFP_NOIO).is_err() {
            // Copied again later: the copy is idempotent.
            return;
        }
        st.commits.mark_dirty();
    }

    /// In front of every commit: makes the chunks copied back durable on the origin device,
    /// and takes them off the store's list. A failed flush keeps them listed (copied again).
    pub(super) fn before_commit(&self, st: &mut State) {
        if st.rolled_back.is_empty() {
            return;
        }
        if let Err(e) = self.origin.bdev().flush() {
            pr_err!(
                "{}: flush of the origin failed ({:?}): chunks copied back stay listed\n",
                self.origin.name(),
                e
            );
            while st.rolled_back.pop().is_some() {}
            st.rollback_stalled = true;
            return;
        }
        while let Some(chunk) = st.rolled_back.pop() {
            match st.store.rollback_chunk_done(chunk) {
                // Still listed: copied again later.
                Ok(()) | Err(store::Error::NoSpace) => {}
                Err(e) => self.note_error(st, e),
            }
        }
        if !st.store.rolling_back() && self.rolling_back.swap(false, Ordering::AcqRel) {
            pr_info!("{}: rollback finished\n", self.origin.name());
            Self::raise_event(st);
        }
    }

    /// Copies back some of the chunks the running rollback lists, after the bios of this run
    /// were dealt with, keeping up to [`ROLLBACK_IN_FLIGHT`] in flight. Not while the commit
    /// barrier holds new copies back (see [`Pool::barrier`]) or the origin is suspended.
    pub(super) fn rollback_some(self: &Arc<Self>, st: &mut State) {
        if st.failed
            || st.suspended
            || st.rollback_stalled
            || st.rollback_waits_for_space
            || !st.store.rolling_back()
            || Self::barrier(st)
            || st.rolled_back.len() >= ROLLBACK_PER_COMMIT
        {
            return;
        }
        let mut from = 0;
        while st.pending.len() < ROLLBACK_IN_FLIGHT {
            let chunk = match st.store.next_rollback_chunk(from) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    self.note_error(st, e);
                    return;
                }
            };
            from = chunk + 1;
            if Self::pending_index(st, chunk).is_some() || st.rolled_back.contains(&chunk) {
                continue;
            }
            match self.roll_back_chunk(st, chunk) {
                Ok(ChunkRollback::Started(_) | ChunkRollback::ReadsInFlight) => {}
                // Its commit comes at the end of this run; the next run goes on.
                Ok(ChunkRollback::AfterCommit) => break,
                Err(store::Error::NoSpace) => {
                    // Retried after the next commit, which may bring space back.
                    Self::note_cow_full(st, "the copy back of a rollback");
                    st.rollback_waits_for_space = true;
                    break;
                }
                Err(e) => {
                    pr_err!(
                        "{}: copy back of chunk {} not started ({})\n",
                        self.origin.name(),
                        chunk,
                        e
                    );
                    self.note_error(st, e);
                    st.rollback_stalled = true;
                    break;
                }
            }
        }
    }
}
