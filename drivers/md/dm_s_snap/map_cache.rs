// SPDX-License-Identifier: GPL-2.0

//! Answers of the exception store that `map` may reuse without the worker.
//!
//! Handing a bio to the worker costs a context switch and a store lookup under the pool's
//! mutex. Two answers stay true until the worker itself changes them, so `map` can act on them
//! directly:
//!
//! - an origin chunk that no snapshot shares any more (the store said
//!   [`OriginWrite::Proceed`](crate::store::OriginWrite::Proceed)) stays unshared until the next
//!   snapshot is created;
//! - a snapshot chunk that lives on the COW device stays where it is until that snapshot writes
//!   to the chunk (which may move it to a chunk of its own) or a snapshot is deleted.
//!
//! The pool fills the cache from the worker and empties (parts of) it, under the pool's mutex,
//! *before* it checks the in-flight counts that the changes wait for; `map` raises those counts
//! *before* it looks here. The cache's lock orders the two, so a bio either is counted before the
//! worker looks or misses the cache and goes to the worker. Entries are direct-mapped: a
//! colliding chunk evicts the older one, which only costs a trip to the worker.

use kernel::{alloc::KVVec, prelude::*};

/// Origin chunks known to be unshared (enough for 128 MiB of rewrites with 8 KiB chunks).
const ORIGIN_SLOTS: usize = 16384;
/// Snapshot chunks known to live on the COW device.
const SNAPSHOT_SLOTS: usize = 8192;

/// One snapshot chunk's place on the COW device.
#[derive(Clone, Copy, Default)]
struct SnapshotSlot {
    /// Epoch of the snapshot (never 0 for a snapshot), or 0 for an empty slot.
    epoch: u64,
    chunk: u64,
    cow: u64,
}

/// The cached answers; the pool keeps it behind a spinlock.
pub(crate) struct MapCache {
    /// `chunk + 1` of an unshared origin chunk, or 0.
    origin: KVVec<u64>,
    snapshot: KVVec<SnapshotSlot>,
    /// No snapshot exists: every origin write may go straight to the origin.
    no_snapshots: bool,
}

fn slot(chunk: u64, key: u64, slots: usize) -> usize {
    // Fibonacci hashing spreads neighbouring chunks over the slots.
    let h = (chunk ^ key.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // CAST: the top 32 bits fit a `usize`.
    (h >> 32) as usize % slots
}

impl MapCache {
    /// An empty cache (nothing known, not even that there are no snapshots).
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            origin: KVVec::from_elem(0, ORIGIN_SLOTS, GFP_KERNEL)?,
            snapshot: KVVec::from_elem(SnapshotSlot::default(), SNAPSHOT_SLOTS, GFP_KERNEL)?,
            no_snapshots: false,
        })
    }

    /// Whether an origin write to `chunk` needs no copy and no commit.
    pub(crate) fn origin_unshared(&self, chunk: u64) -> bool {
        self.no_snapshots || self.origin[slot(chunk, 0, ORIGIN_SLOTS)] == chunk.wrapping_add(1)
    }

    /// Records that `chunk` of the origin is no longer shared with any snapshot.
    pub(crate) fn set_origin_unshared(&mut self, chunk: u64) {
        self.origin[slot(chunk, 0, ORIGIN_SLOTS)] = chunk.wrapping_add(1);
    }

    /// Where `chunk` of the snapshot with `epoch` lives on the COW device, if known.
    pub(crate) fn snapshot_chunk(&self, epoch: u64, chunk: u64) -> Option<u64> {
        let s = &self.snapshot[slot(chunk, epoch, SNAPSHOT_SLOTS)];
        (s.epoch == epoch && s.chunk == chunk).then_some(s.cow)
    }

    /// Records that `chunk` of the snapshot with `epoch` lives in COW chunk `cow`.
    pub(crate) fn set_snapshot_chunk(&mut self, epoch: u64, chunk: u64, cow: u64) {
        self.snapshot[slot(chunk, epoch, SNAPSHOT_SLOTS)] = SnapshotSlot { epoch, chunk, cow };
    }

    /// Forgets `chunk` of the snapshot with `epoch` (a write to it may move it).
    pub(crate) fn forget_snapshot_chunk(&mut self, epoch: u64, chunk: u64) {
        let s = &mut self.snapshot[slot(chunk, epoch, SNAPSHOT_SLOTS)];
        if s.epoch == epoch && s.chunk == chunk {
            *s = SnapshotSlot::default();
        }
    }

    /// Forgets everything (a snapshot is created or deleted, or the store failed).
    pub(crate) fn clear(&mut self) {
        self.origin.as_mut_slice().fill(0);
        self.snapshot.as_mut_slice().fill(SnapshotSlot::default());
        self.no_snapshots = false;
    }

    /// Records whether the store holds no snapshot at all.
    pub(crate) fn set_no_snapshots(&mut self, none: bool) {
        self.no_snapshots = none;
    }
}
