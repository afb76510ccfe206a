// SPDX-License-Identifier: GPL-2.0

//! Snapshot writes that overwrite a whole chunk: no copy first.
//!
//! A write to a chunk that the snapshot does not own yet normally copies the snapshot's
//! current data into a new chunk and then writes there. A write that covers the whole chunk
//! (up to the origin's end for the last, partial chunk) overwrites all of that copy, so it is
//! sent straight to the new chunk instead, and its completion completes the plan, as a copy's
//! completion does (dm-snapshot's `start_full_bio()` does the same). The exception is recorded
//! only once the write succeeded, so a failed or cut write leaves the snapshot as it was; like
//! any snapshot write it is durable once a later flush (or the commit it waits for, with
//! REQ_FUA) returned. Bios that ask for durability take the copy path, which commits before
//! issuing them.
//!
//! The write's `end_io` runs in interrupt context and cannot reach the pool's lists, so it
//! reports into one of a fixed set of slots, which the worker hands out; with all slots in
//! use a write takes the copy path.

use super::{
    copies::{DataWrite, PlanKind, COPY_FAILED, COPY_OK},
    Pool, SnapBio, State,
};
use crate::store::UnsharePlan;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use kernel::{block::bio::Sector, prelude::*, sync::Arc};

/// The number of whole-chunk snapshot writes that may be in flight at once.
const OVERWRITE_SLOTS: usize = 64;

/// The slots through which whole-chunk snapshot writes report their completion.
pub(super) struct Overwrites {
    /// Bit `n` is set while slot `n` belongs to a write in flight or to its pending plan.
    claimed: AtomicU64,
    /// Per slot: 0 while the write is in flight, then [`COPY_OK`] or [`COPY_FAILED`].
    results: [AtomicU32; OVERWRITE_SLOTS],
}

impl Overwrites {
    pub(super) const fn new() -> Self {
        Self {
            claimed: AtomicU64::new(0),
            results: [const { AtomicU32::new(0) }; OVERWRITE_SLOTS],
        }
    }

    /// Takes a free slot, if there is one. Only the worker claims and releases slots (under
    /// the pool's mutex), so the free slot found stays free until it is claimed here.
    fn claim(&self) -> Option<usize> {
        let claimed = self.claimed.load(Ordering::Acquire);
        let slot = (!claimed).trailing_zeros() as usize;
        if slot >= OVERWRITE_SLOTS {
            return None;
        }
        self.results[slot].store(0, Ordering::Release);
        self.claimed.fetch_or(1 << slot, Ordering::AcqRel);
        Some(slot)
    }

    /// Gives back a slot whose plan the worker completed.
    pub(super) fn release(&self, slot: usize) {
        self.claimed.fetch_and(!(1u64 << slot), Ordering::AcqRel);
    }

    /// The result in `slot`: 0 while its write is in flight.
    pub(super) fn result(&self, slot: usize) -> u32 {
        self.results
            .get(slot)
            .map_or(COPY_FAILED, |r| r.load(Ordering::Acquire))
    }

    /// Records the completion of the write of `slot` (from `end_io`).
    fn finish(&self, slot: usize, ok: bool) {
        if let Some(r) = self.results.get(slot) {
            r.store(if ok { COPY_OK } else { COPY_FAILED }, Ordering::Release);
        }
    }
}

impl Pool {
    /// Whether a snapshot write to `chunk` covers all of the chunk's data, and may be issued
    /// without a copy.
    pub(super) fn overwrites_chunk(&self, bio: &SnapBio, chunk: u64) -> bool {
        let start: Sector = chunk << self.chunk_shift;
        bio.sector() == start
            && bio.sectors() >= self.copy_len(chunk)
            && !bio.is_flush()
            && !bio.is_fua()
    }

    /// Sends a write that overwrites all of `plan`'s chunk straight to the new chunk; its
    /// completion completes the plan. Gives the bio and the plan back if no slot (or no memory
    /// for the pending entry) is free: then it takes the copy path.
    pub(super) fn start_overwrite(
        &self,
        st: &mut State,
        mut bio: SnapBio,
        plan: UnsharePlan,
    ) -> Result<(), (SnapBio, UnsharePlan)> {
        if st.pending.reserve(1, GFP_NOIO).is_err() {
            return Err((bio, plan));
        }
        let Some(slot) = self.overwrites.claim() else {
            return Err((bio, plan));
        };
        let chunk = plan.chunk();
        let to = plan.to();
        if let Err(e) = self.add_pending(
            st,
            chunk,
            PlanKind::Unshare(plan),
            DataWrite::Overwrite(slot),
        ) {
            self.overwrites.release(slot);
            bio.end(Err(e));
            return Ok(());
        }
        bio.remap(self.cow.bdev(), to << self.chunk_shift);
        // CAST: `slot < OVERWRITE_SLOTS`, which fits a `u8` with one added.
        bio.per_io_mut().overwrite_slot = slot as u8 + 1;
        bio.submit();
        Ok(())
    }

    /// Called from `end_io` of a snapshot bio: if it overwrote a chunk, its plan may complete.
    pub(crate) fn snap_write_done(self: &Arc<Self>, overwrite_slot: u8, ok: bool) {
        let Some(slot) = (overwrite_slot as usize).checked_sub(1) else {
            return;
        };
        self.overwrites.finish(slot, ok);
        self.kick();
    }
}
