// SPDX-License-Identifier: GPL-2.0

//! Snapshot bios in the worker: reads remapped to where the snapshot's data is, writes to a
//! chunk of the snapshot's own (after unsharing it).

use super::{bio_error, bucket, copies::PlanKind, Pool, SnapBio, State};
use crate::store::{self, Location, SnapWritePlan, SnapshotRef};
use core::sync::atomic::Ordering;
use kernel::{
    block::bio::{BioList, Operation, Sector},
    prelude::*,
    sync::Arc,
};

impl Pool {
    pub(super) fn process_snap_list(self: &Arc<Self>, st: &mut State, mut list: BioList<SnapBio>) {
        while let Some(bio) = list.pop() {
            self.process_snap(st, bio);
        }
    }

    pub(super) fn process_snap(self: &Arc<Self>, st: &mut State, bio: SnapBio) {
        let Some(snap) = bio.per_io().snap else {
            bio.end(Err(EIO));
            return;
        };
        if st.failed || Self::snapshot_dropped(st, snap) {
            bio.end(Err(EIO));
            return;
        }
        if bio.op() == Operation::Discard {
            let chunk = self.chunk_of(bio.sector());
            match Self::pending_index(st, chunk) {
                Some(i) => st.pending[i].snap_waiters.push_back(bio),
                None => self.snap_discard(st, bio, snap, chunk),
            }
            return;
        }
        if !bio.has_data() {
            // An empty flush: snapshot data lives on the COW device, which the commit flushes;
            // the flush is passed on to it as well for writes that went there directly.
            bio.set_dev(self.cow.bdev());
            st.commits.after_commit_snap(bio);
            return;
        }
        let chunk = self.chunk_of(bio.sector());
        if let Some(i) = Self::pending_index(st, chunk) {
            st.pending[i].snap_waiters.push_back(bio);
            return;
        }
        if bio.is_write() {
            self.snap_write(st, bio, snap, chunk);
        } else {
            self.snap_read(st, bio, snap, chunk);
        }
    }

    /// Whether `snap` was dropped (the `drop` COW-full policy): its device fails all I/O.
    fn snapshot_dropped(st: &State, snap: SnapshotRef) -> bool {
        // Only a store that dropped snapshots pays for the look-up.
        st.store.usage().dropped_snapshots != 0
            && !matches!(st.store.snapshot_epoch(snap.id()), Ok(Some(s)) if s == snap)
    }

    /// Sends a read of snapshot `snap` to where the snapshot's data of `chunk` is, holding a
    /// read count of the chunk until it completes; completes it with zeroes for a chunk that
    /// reads as zeroes.
    fn snap_read(&self, st: &mut State, mut bio: SnapBio, snap: SnapshotRef, chunk: u64) {
        let sector = bio.sector();
        let cow = match st.store.snapshot_lookup(snap, chunk) {
            Ok(Location::Origin) => None,
            Ok(Location::Cow(c)) => Some(c),
            Ok(Location::Zeroes) => {
                // Nothing to read (the snapshot discarded its own copy of the chunk), so no read
                // count to hold either.
                bio.zero_fill();
                bio.end(Ok(()));
                return;
            }
            Err(e) => {
                self.note_error(st, e);
                bio.end(Err(bio_error(e)));
                return;
            }
        };
        let b = bucket(chunk);
        self.in_flight.reads[b].fetch_add(1, Ordering::AcqRel);
        // CAST: `b < READ_BUCKETS`, which fits a `u16`.
        bio.per_io_mut().read_bucket = b as u16 + 1;
        match cow {
            None => bio.remap(self.origin.bdev(), sector),
            Some(c) => {
                self.map_cache
                    .lock()
                    .set_snapshot_chunk(snap.epoch(), chunk, c);
                bio.remap(
                    self.cow.bdev(),
                    (c << self.chunk_shift) + (sector & self.chunk_mask()),
                )
            }
        }
        bio.submit();
    }

    /// Writes to `chunk` of snapshot `snap`: in place if the snapshot owns a COW chunk for it,
    /// otherwise after the snapshot's current data was copied into a new chunk of its own.
    fn snap_write(self: &Arc<Self>, st: &mut State, bio: SnapBio, snap: SnapshotRef, chunk: u64) {
        let offset = bio.sector() & self.chunk_mask();
        // The write may move the chunk: `map` must not send reads to the old place once the
        // reads in flight are known (see `MapCache`).
        self.map_cache
            .lock()
            .forget_snapshot_chunk(snap.epoch(), chunk);
        let Some(mut bio) = self.hold_while(st, bio, |pool| pool.reads_pending(chunk)) else {
            return;
        };
        // No new plan while a commit is wanted (or a handler quiesces), as for origin writes:
        // a stream of unshares would keep plans outstanding, and the commit (which a flush or
        // an origin write may wait for) would never come. Retried after the commit.
        if Self::barrier(st) {
            st.held_snap.push_back(bio);
            return;
        }
        match st.store.snapshot_write_prepare(snap, chunk) {
            Ok(SnapWritePlan::Direct(c)) => {
                // A discard must not free the chunk (which may then be reused) while this write
                // to it is in flight.
                let b = bucket(chunk);
                self.in_flight.direct_writes[b].fetch_add(1, Ordering::AcqRel);
                // CAST: `b < READ_BUCKETS`, which fits a `u16`.
                bio.per_io_mut().direct_write_bucket = b as u16 + 1;
                bio.remap(self.cow.bdev(), (c << self.chunk_shift) + offset);
                self.issue_snap(st, bio);
            }
            Ok(SnapWritePlan::Unshare(plan)) => {
                // A chunk was allocated: the COW device is not full (any more).
                st.cow_full = false;
                // A write of the whole chunk needs none of its current data.
                let (bio, plan) = if self.overwrites_chunk(&bio, chunk) {
                    match self.start_overwrite(st, bio, plan) {
                        Ok(()) => return,
                        Err(back) => back,
                    }
                } else {
                    (bio, plan)
                };
                // The snapshot's current data of the chunk goes to its new chunk first, so that
                // a crash after the commit never exposes an unwritten chunk.
                let len = self.copy_len(chunk);
                let from = match plan.from() {
                    Location::Origin => Some(self.chunk_region(&self.origin, chunk, len)),
                    Location::Cow(c) => Some(self.chunk_region(&self.cow, c, len)),
                    Location::Zeroes => None,
                };
                let to = self.chunk_region(&self.cow, plan.to(), len);
                match self.start_copy(st, chunk, from, to, PlanKind::Unshare(plan)) {
                    Ok(i) => st.pending[i].snap_waiters.push_back(bio),
                    Err(e) => bio.end(Err(e)),
                }
            }
            Err(store::Error::NoSpace) => {
                Self::note_cow_full(st, "snapshot writes that need a chunk");
                bio.end(Err(ENOSPC));
            }
            Err(e) => {
                self.note_error(st, e);
                bio.end(Err(bio_error(e)));
            }
        }
    }

    /// Discards `chunk` of snapshot `snap`: a discard that covers the whole chunk frees the
    /// snapshot's own copy of it, after which the snapshot reads the copy of its own time that
    /// the store keeps for other snapshots, or zeroes (see `Store::snapshot_discard`). Nothing
    /// goes down: what the snapshot shares belongs to the origin and the other snapshots too,
    /// and a discard of part of a chunk frees nothing (discarded data is undefined, so keeping
    /// it is correct). Completed at once; like a write, the discard is durable after the next
    /// commit.
    fn snap_discard(self: &Arc<Self>, st: &mut State, bio: SnapBio, snap: SnapshotRef, chunk: u64) {
        let start: Sector = chunk << self.chunk_shift;
        if bio.sector() != start || bio.sectors() < self.copy_len(chunk) {
            bio.end(Ok(()));
            return;
        }
        // The chunk may be freed: `map` must not send reads to it any more, and the reads and
        // writes in flight to it must end before it can be reused (see `MapCache`).
        self.map_cache
            .lock()
            .forget_snapshot_chunk(snap.epoch(), chunk);
        let busy = |pool: &Self| pool.reads_pending(chunk) || pool.direct_writes_pending(chunk);
        let Some(bio) = self.hold_while(st, bio, busy) else {
            return;
        };
        if Self::barrier(st) {
            st.held_snap.push_back(bio);
            return;
        }
        match st.store.snapshot_discard(snap, chunk) {
            Ok(discarded) => {
                if discarded.freed() {
                    // The chunk is free for reuse after a commit: make one.
                    st.commits.mark_dirty();
                }
                bio.end(Ok(()))
            }
            // Not even the B+tree update fits beside what outstanding completions may need: the
            // discard frees nothing, which is correct for a discard.
            Err(store::Error::NoSpace) => bio.end(Ok(())),
            Err(e) => {
                self.note_error(st, e);
                bio.end(Err(bio_error(e)));
            }
        }
    }

    /// Holds `bio` (retried later) while `busy` says that I/O to its chunk is in flight, or
    /// gives it back. The end of the last such I/O wakes the worker.
    fn hold_while(
        self: &Arc<Self>,
        st: &mut State,
        bio: SnapBio,
        busy: impl Fn(&Self) -> bool,
    ) -> Option<SnapBio> {
        if !busy(self) {
            return Some(bio);
        }
        self.in_flight.read_waiters.store(true, Ordering::Release);
        st.held_snap.push_back(bio);
        // The last one may have ended before the flag was seen.
        if !busy(self) {
            self.kick();
        }
        None
    }

    /// Issues a snapshot bio, after a commit if it asks for durability.
    pub(super) fn issue_snap(&self, st: &mut State, bio: SnapBio) {
        if bio.is_flush() || bio.is_fua() {
            st.commits.after_commit_snap(bio);
        } else {
            bio.submit();
        }
    }
}
