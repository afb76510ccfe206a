// SPDX-License-Identifier: GPL-2.0

//! Snapshot and exception operations.

use super::btree::ScanEnd;
use super::error::{Error, Result};
use super::format::*;
use super::io::BlockIo;
use super::txn::Store;

/// Flag in snapshot table values: the snapshot is being deleted.
pub(crate) const DELETING: u128 = 1 << 64;
/// Flag in snapshot table values: the snapshot was dropped because the COW device was full.
/// Origin writes no longer preserve its data; what it holds stays until it is deleted.
pub(crate) const DROPPED: u128 = 1 << 65;
/// Every flag of snapshot table values: an entry with none is a live snapshot.
pub(crate) const SNAPSHOT_FLAGS: u128 = DELETING | DROPPED;
/// Snapshot table key space of the id index.
pub(crate) const ID_SPACE: u128 = 1 << 64;
const LOW: u128 = u64::MAX as u128;

pub(crate) fn shared_key(chunk: u64, hi: u64) -> u128 {
    ((chunk as u128) << 64) | hi as u128
}

pub(crate) fn shared_val(lo: u64, cow: u64) -> u128 {
    ((lo as u128) << 64) | cow as u128
}

pub(crate) fn private_key(epoch: u64, chunk: u64) -> u128 {
    ((epoch as u128) << 64) | chunk as u128
}

pub(crate) fn hi64(x: u128) -> u64 {
    (x >> 64) as u64
}

pub(crate) fn lo64(x: u128) -> u64 {
    (x & LOW) as u64
}

/// A live snapshot: its user id and its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRef {
    pub(crate) id: u32,
    pub(crate) epoch: u64,
}

impl SnapshotRef {
    /// The user-chosen id.
    pub fn id(&self) -> u32 {
        self.id
    }
    /// The epoch (creation order, never reused).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Where a snapshot's data of a chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// On the origin device, same chunk.
    Origin,
    /// On the COW device, in this chunk.
    Cow(u64),
    /// Nowhere: the chunk reads as zeroes. The snapshot discarded its own copy of the chunk
    /// where no copy of the chunk from its own time was kept (see [`Store::snapshot_discard`]).
    Zeroes,
}

/// A copy the caller must make before an origin write: copy origin chunk
/// [`CopyPlan::chunk`] to COW chunk [`CopyPlan::cow`], then call
/// [`Store::origin_write_complete`] (or [`Store::abort_origin_write`]).
#[derive(Debug, PartialEq, Eq)]
pub struct CopyPlan {
    chunk: u64,
    cow: u64,
}

impl CopyPlan {
    /// Origin chunk to copy.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }
    /// COW chunk to copy it to.
    pub fn cow(&self) -> u64 {
        self.cow
    }
}

/// What must happen before an origin write to a chunk may be issued.
#[derive(Debug, PartialEq, Eq)]
pub enum OriginWrite {
    /// Every snapshot's data of the chunk is preserved by committed
    /// metadata: the write may be issued now.
    Proceed,
    /// No copy is needed, but the preservation relies on metadata of the
    /// running transaction: issue the write after the next commit.
    AfterCommit,
    /// Copy first, complete the plan, commit, then issue the write.
    Copy(CopyPlan),
    /// The running rollback has still to copy the chunk back (see [`Store::rollback_prepare`]):
    /// the origin device does not hold the origin's data of it yet. Prepare the write again
    /// once it is copied back.
    RollBackFirst,
}

/// What a discard of a snapshot chunk did (see [`Store::snapshot_discard`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotDiscard {
    /// Nothing: the snapshot holds no COW chunk of its own for the chunk.
    Kept,
    /// The snapshot's own COW chunk was freed; it reads the copy of the chunk from its own time
    /// that is kept for other snapshots.
    ReadsItsCopy,
    /// The snapshot's own COW chunk was freed; it reads the chunk as zeroes.
    ReadsZeroes,
}

impl SnapshotDiscard {
    /// Whether a COW chunk was freed (reusable after the next commit).
    pub fn freed(self) -> bool {
        self != SnapshotDiscard::Kept
    }
}

/// What a discard of an origin chunk may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginDiscard {
    /// No snapshot needs the origin's data of the chunk, by committed metadata: the discard
    /// may go down to the origin now.
    Pass,
    /// As [`OriginDiscard::Pass`], but by metadata of the running transaction: after the next
    /// commit.
    AfterCommit,
    /// A snapshot still shares the origin's data of the chunk: the discard must not reach the
    /// origin (discarded data is undefined, so dropping it is correct).
    Keep,
}

/// Plan for a snapshot write to a chunk the snapshot does not own yet.
#[derive(Debug, PartialEq, Eq)]
pub struct UnsharePlan {
    snap: SnapshotRef,
    chunk: u64,
    from: Location,
    to: u64,
}

impl UnsharePlan {
    /// The snapshot written.
    pub fn snapshot(&self) -> SnapshotRef {
        self.snap
    }
    /// The chunk written.
    pub fn chunk(&self) -> u64 {
        self.chunk
    }
    /// The snapshot's current data of the chunk, to be copied to
    /// [`UnsharePlan::to`] unless the write covers the whole chunk.
    pub fn from(&self) -> Location {
        self.from
    }
    /// The new COW chunk of the snapshot.
    pub fn to(&self) -> u64 {
        self.to
    }
}

/// How to perform a snapshot write.
#[derive(Debug, PartialEq, Eq)]
pub enum SnapWritePlan {
    /// The snapshot owns this COW chunk: write it directly.
    Direct(u64),
    /// Copy (if partial), write, then [`Store::snapshot_write_complete`].
    Unshare(UnsharePlan),
}

/// Space and object counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Chunk size in bytes.
    pub chunk_size: u64,
    /// Chunks managed by the store.
    pub total_chunks: u64,
    /// Chunks holding copied data (including those of outstanding plans).
    pub data_chunks: u64,
    /// Chunks' worth of metadata: `metadata_blocks` in 4 KiB blocks,
    /// rounded up to whole chunks.
    pub metadata_chunks: u64,
    /// `total_chunks - data_chunks - metadata_chunks`.
    pub free_chunks: u64,
    /// Metadata blocks of 4 KiB in use (fixed area and btree nodes).
    pub metadata_blocks: u64,
    /// Shared exceptions.
    pub shared_exceptions: u64,
    /// Private exceptions.
    pub private_exceptions: u64,
    /// Live snapshots.
    pub snapshots: u64,
    /// Deleted snapshots whose space is not reclaimed yet.
    pub deleting_snapshots: u64,
    /// Snapshots dropped because the COW device was full, not deleted yet.
    pub dropped_snapshots: u64,
}

/// What happens when a copy an origin write needs finds the COW device full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CowFullPolicy {
    /// The origin write fails with `ENOSPC`; every snapshot stays intact.
    Error,
    /// The snapshots that need the copy are dropped and the origin write goes on
    /// (see [`Store::drop_snapshots_needing`]).
    Drop,
}

/// A shared exception: origin chunk `chunk` as it was before being
/// overwritten is in COW chunk `cow` for the snapshots with epoch in
/// `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedException {
    /// Origin chunk.
    pub chunk: u64,
    /// Lowest epoch.
    pub lo: u64,
    /// Highest epoch.
    pub hi: u64,
    /// COW chunk.
    pub cow: u64,
}

/// A private exception: the snapshot with epoch `epoch` has its own data of
/// chunk `chunk` in COW chunk `cow`, or reads it as zeroes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivateException {
    /// Snapshot epoch.
    pub epoch: u64,
    /// Chunk.
    pub chunk: u64,
    /// COW chunk; `None` for a chunk that reads as zeroes ([`Location::Zeroes`]).
    pub cow: Option<u64>,
}

/// Superblock facts, for tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreInfo {
    /// On-disk format version.
    pub version: u32,
    /// Chunk size in 512-byte sectors.
    pub chunk_sectors: u32,
    /// Chunks managed.
    pub nr_chunks: u64,
    /// Logical bitmap blocks.
    pub nr_bitmaps: u64,
    /// First 4 KiB block after the fixed area.
    pub fixed_end: u64,
    /// Superblock slot in use (0 or 1).
    pub superblock_slot: u64,
    /// Superblock sequence number.
    pub seq: u64,
    /// Last committed transaction.
    pub committed_txid: u64,
    /// Highest transaction id that may have been used.
    pub reserved_txid: u64,
    /// Last epoch handed out.
    pub last_epoch: u64,
    /// Next 4 KiB block the metadata allocator tries.
    pub alloc_hint: u64,
    /// Next chunk the data allocator tries.
    pub data_hint: u64,
    /// Epoch of a snapshot whose deletion is unfinished (0: none).
    pub deleting_epoch: u64,
    /// (root block, depth) of the shared, private and snapshot trees.
    pub roots: [(u64, u8); 3],
    /// Entries of a leaf / internal node of the shared-exception tree at
    /// most.
    pub node_capacity: (u64, u64),
    /// First block and length of the journal area (0, 0 for none).
    pub journal_area: (u64, u32),
    /// Journal blocks committed since the checkpoint `committed_txid` (a read-only open
    /// counts those it would replay). The durable state is the checkpoint and these.
    pub journal_blocks: u32,
}

/// Result of looking for a live snapshot that lacks a private exception.
pub(crate) struct Lacking {
    pub(crate) found: bool,
    /// The epoch of the first snapshot found lacking one (if `found`).
    pub(crate) first: u64,
    /// A private exception that made a snapshot not lack a copy is in a
    /// leaf written by the running transaction.
    uncommitted: bool,
}

/// The entries of one tree in key order from a start key, found one at a
/// time by a successor search (so that no block stays held between items).
pub(crate) struct Entries<'a, I: BlockIo> {
    store: &'a Store<I>,
    tree: usize,
    next: Option<u128>,
}

impl<I: BlockIo> Entries<'_, I> {
    /// The next entry; after an error or the last entry, always `None`.
    pub(crate) fn next_entry(&mut self) -> Option<Result<(u128, u128)>> {
        let from = self.next?;
        match self.store.ceil(self.tree, from) {
            Ok(Some((k, v))) => {
                self.next = k.checked_add(1);
                Some(Ok((k, v)))
            }
            Ok(None) => {
                self.next = None;
                None
            }
            Err(e) => {
                self.next = None;
                Some(Err(e))
            }
        }
    }

    fn stop(&mut self) {
        self.next = None;
    }
}

/// Iterator over live (or dropped) snapshots in ascending id order.
pub struct Snapshots<'a, I: BlockIo> {
    entries: Entries<'a, I>,
    /// The flags of the entries listed: none for live snapshots, [`DROPPED`] for dropped ones.
    flags: u128,
}

impl<I: BlockIo> Iterator for Snapshots<'_, I> {
    type Item = Result<SnapshotRef>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (k, v) = match self.entries.next_entry()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e)),
            };
            // The id half of the snapshot table ends the listing.
            if hi64(k) != 1 {
                self.entries.stop();
                return None;
            }
            if v & SNAPSHOT_FLAGS != self.flags {
                continue;
            }
            let Ok(id) = u32::try_from(lo64(k)) else {
                self.entries.stop();
                return Some(Err(Error::Corrupt {
                    what: "snapshot table: id out of range",
                    block: 0,
                }));
            };
            return Some(Ok(SnapshotRef { id, epoch: lo64(v) }));
        }
    }
}

/// Iterator over shared exceptions in (chunk, hi) order.
pub struct SharedExceptions<'a, I: BlockIo> {
    entries: Entries<'a, I>,
}

impl<I: BlockIo> Iterator for SharedExceptions<'_, I> {
    type Item = Result<SharedException>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.entries.next_entry()?.map(|(k, v)| SharedException {
            chunk: hi64(k),
            hi: lo64(k),
            lo: hi64(v),
            cow: lo64(v),
        }))
    }
}

/// Iterator over private exceptions in (epoch, chunk) order.
pub struct PrivateExceptions<'a, I: BlockIo> {
    entries: Entries<'a, I>,
}

impl<I: BlockIo> Iterator for PrivateExceptions<'_, I> {
    type Item = Result<PrivateException>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.entries.next_entry()?.map(|(k, v)| PrivateException {
            epoch: hi64(k),
            chunk: lo64(k),
            cow: (v != PRIVATE_ZEROES).then_some(lo64(v)),
        }))
    }
}

impl<I: BlockIo> Store<I> {
    pub(crate) fn entries(&self, tree: usize, from: Option<u128>) -> Entries<'_, I> {
        Entries {
            store: self,
            tree,
            next: from,
        }
    }

    /// The epoch of live snapshot `id`, if any.
    pub fn snapshot_epoch(&self, id: u32) -> Result<Option<SnapshotRef>> {
        match self.lookup(TREE_SNAPS, ID_SPACE | id as u128)? {
            Some(v) if v & SNAPSHOT_FLAGS == 0 => Ok(Some(SnapshotRef { id, epoch: lo64(v) })),
            _ => Ok(None),
        }
    }

    /// Whether snapshot `id` was dropped (and not deleted yet).
    pub fn snapshot_dropped(&self, id: u32) -> Result<bool> {
        Ok(self
            .lookup(TREE_SNAPS, ID_SPACE | id as u128)?
            .is_some_and(|v| v & SNAPSHOT_FLAGS == DROPPED))
    }

    /// Live snapshots in ascending id order.
    pub fn snapshots(&self) -> Snapshots<'_, I> {
        Snapshots {
            entries: self.entries(TREE_SNAPS, Some(ID_SPACE)),
            flags: 0,
        }
    }

    /// Dropped snapshots (see [`Store::drop_snapshots_needing`]) in ascending id order.
    pub fn dropped_snapshots(&self) -> Snapshots<'_, I> {
        Snapshots {
            entries: self.entries(TREE_SNAPS, Some(ID_SPACE)),
            flags: DROPPED,
        }
    }

    /// Shared exceptions in (chunk, hi) order.
    pub fn shared_exceptions(&self) -> SharedExceptions<'_, I> {
        SharedExceptions {
            entries: self.entries(TREE_SHARED, Some(0)),
        }
    }

    /// Private exceptions in (epoch, chunk) order (not the list of a rollback, under epoch 0).
    pub fn private_exceptions(&self) -> PrivateExceptions<'_, I> {
        PrivateExceptions {
            entries: self.entries(TREE_PRIVATE, Some(private_key(1, 0))),
        }
    }

    /// Space and object counts of the current state.
    pub fn usage(&self) -> Usage {
        let s = &self.sb;
        Usage {
            chunk_size: u64::from(self.g.chunk_sectors) * 512,
            total_chunks: self.g.nr_chunks,
            data_chunks: s.data_chunks,
            metadata_chunks: s.meta_blocks.div_ceil(self.g.chunk_blocks),
            free_chunks: self
                .g
                .nr_chunks
                .saturating_sub(s.data_chunks)
                .saturating_sub(s.meta_blocks.div_ceil(self.g.chunk_blocks)),
            metadata_blocks: s.meta_blocks,
            shared_exceptions: s.shared,
            private_exceptions: s.private,
            snapshots: s.snapshots,
            deleting_snapshots: self.deleting,
            dropped_snapshots: s.dropped,
        }
    }

    /// The COW-full policy kept in the superblock.
    pub fn cow_full_policy(&self) -> CowFullPolicy {
        if self.sb.drop_when_full {
            CowFullPolicy::Drop
        } else {
            CowFullPolicy::Error
        }
    }

    /// Sets the COW-full policy; it is kept from the next commit on.
    pub fn set_cow_full_policy(&mut self, policy: CowFullPolicy) -> Result<()> {
        self.writable()?;
        let drop_when_full = policy == CowFullPolicy::Drop;
        if self.sb.drop_when_full != drop_when_full {
            self.sb.drop_when_full = drop_when_full;
            self.touch();
        }
        Ok(())
    }

    /// Superblock facts of the current state.
    pub fn info(&self) -> StoreInfo {
        let r = |t: usize| {
            self.sb
                .roots
                .get(t)
                .map(|r| (r.block, r.depth))
                .unwrap_or((0, 0))
        };
        StoreInfo {
            version: VERSION,
            chunk_sectors: self.g.chunk_sectors,
            nr_chunks: self.g.nr_chunks,
            nr_bitmaps: self.g.nr_bitmaps,
            fixed_end: self.g.fixed_end,
            superblock_slot: self.sb_slot,
            seq: self.sb.seq,
            committed_txid: self.sb.committed_txid,
            reserved_txid: self.sb.reserved_txid,
            last_epoch: self.sb.last_epoch,
            alloc_hint: self.sb.alloc_hint,
            data_hint: self.sb.data_hint,
            deleting_epoch: self.sb.deleting_epoch,
            roots: [r(TREE_SHARED), r(TREE_PRIVATE), r(TREE_SNAPS)],
            node_capacity: NodeFormat::of(TREE_SHARED)
                .map(|f| (f.leaf_max as u64, f.int_max as u64))
                .unwrap_or((0, 0)),
            journal_area: (self.sb.journal_start, self.sb.journal_blocks),
            journal_blocks: self.journal.committed,
        }
    }

    /// Is there a snapshot with epoch in `lo..=hi` whose table entry carries none of the flags
    /// in `skip`? If not, no chunk's shared exception with that range is needed by any (see
    /// [`Store::first_lacking`]), whatever private exceptions there are.
    pub(crate) fn any_snapshot_in(&self, lo: u64, hi: u64, skip: u128) -> Result<bool> {
        let limit = self.table_len_bound();
        let mut from = lo;
        for _ in 0..limit {
            if from > hi {
                return Ok(false);
            }
            let Some((k, v)) = self.ceil(TREE_SNAPS, from as u128)? else {
                return Ok(false);
            };
            if k >= ID_SPACE || lo64(k) > hi {
                return Ok(false);
            }
            if v & skip == 0 {
                return Ok(true);
            }
            from = match lo64(k).checked_add(1) {
                Some(x) => x,
                None => return Ok(false),
            };
        }
        Err(Error::Corrupt {
            what: "snapshot table longer than its counter",
            block: 0,
        })
    }

    /// Is there a snapshot with epoch in `lo..=hi` that has no private exception for `chunk`,
    /// among those whose table entry carries none of the flags in `skip`? Stops at the first
    /// one. Origin writes skip deleted and dropped snapshots ([`SNAPSHOT_FLAGS`]); the removal
    /// of shared exceptions skips only deleted ones ([`DELETING`]), so that a dropped
    /// snapshot's data stays where it is until the snapshot is deleted.
    pub(crate) fn first_lacking(
        &self,
        chunk: u64,
        lo: u64,
        hi: u64,
        skip: u128,
    ) -> Result<Lacking> {
        let mut r = Lacking {
            found: false,
            first: 0,
            uncommitted: false,
        };
        let mut from = lo;
        // The table holds the live snapshots and those whose space is being reclaimed.
        let limit = self.table_len_bound();
        let mut n = 0u64;
        while from <= hi {
            n += 1;
            if n > limit {
                return Err(Error::Corrupt {
                    what: "snapshot table longer than its counter",
                    block: 0,
                });
            }
            let (k, v) = match self.ceil(TREE_SNAPS, from as u128)? {
                Some(x) => x,
                None => break,
            };
            if k >= ID_SPACE || lo64(k) > hi {
                break;
            }
            let e = lo64(k);
            if v & skip == 0 {
                match self.lookup_tx(TREE_PRIVATE, private_key(e, chunk))? {
                    None => {
                        r.found = true;
                        r.first = e;
                        return Ok(r);
                    }
                    Some((_, tx)) => {
                        if tx == self.cur && !self.running_txn_durable() {
                            r.uncommitted = true;
                        }
                    }
                }
            }
            from = match e.checked_add(1) {
                Some(x) => x,
                None => break,
            };
        }
        Ok(r)
    }

    /// Newest shared exception of `chunk`: (hi, its leaf's txid).
    fn newest_shared(&self, chunk: u64) -> Result<Option<(u64, u64)>> {
        match self.floor_tx(TREE_SHARED, shared_key(chunk, u64::MAX))? {
            Some((k, _, tx)) if hi64(k) == chunk => Ok(Some((lo64(k), tx))),
            _ => Ok(None),
        }
    }

    /// The shared exception of `chunk` covering `epoch`, as (key, value).
    fn covering_shared(&self, chunk: u64, epoch: u64) -> Result<Option<(u128, u128)>> {
        match self.ceil(TREE_SHARED, shared_key(chunk, epoch))? {
            Some((k, v)) if hi64(k) == chunk && hi64(v) <= epoch => Ok(Some((k, v))),
            _ => Ok(None),
        }
    }

    /// Where snapshot `snap` has its data of `chunk`.
    ///
    /// `snap` must be a live snapshot (from [`Store::snapshot_epoch`]); for a
    /// deleted one the answer is meaningless (but no error).
    pub fn snapshot_lookup(&self, snap: SnapshotRef, chunk: u64) -> Result<Location> {
        self.epoch_lookup(snap.epoch, chunk)
    }

    /// Where the snapshot with epoch `epoch` has its data of `chunk`.
    pub(crate) fn epoch_lookup(&self, epoch: u64, chunk: u64) -> Result<Location> {
        if let Some(v) = self.lookup(TREE_PRIVATE, private_key(epoch, chunk))? {
            return self.private_location(v);
        }
        match self.covering_shared(chunk, epoch)? {
            Some((_, v)) => Ok(Location::Cow(self.exception_chunk(v)?)),
            None => Ok(Location::Origin),
        }
    }

    /// The COW chunk an exception value names. One in the fixed area
    /// (superblocks, bitmaps) is corrupt metadata: reading it would return
    /// metadata as snapshot data, writing it would destroy the store.
    fn exception_chunk(&self, v: u128) -> Result<u64> {
        let c = lo64(v);
        if !self.g.chunk_in_data_area(c) {
            return Err(Error::Corrupt {
                what: "exception: chunk outside the data area",
                block: c,
            });
        }
        Ok(c)
    }

    /// Where a private exception value says the snapshot's data is.
    fn private_location(&self, v: u128) -> Result<Location> {
        if v == PRIVATE_ZEROES {
            Ok(Location::Zeroes)
        } else {
            Ok(Location::Cow(self.exception_chunk(v)?))
        }
    }

    /// Creates snapshot `id` (it sees the origin as it is now).
    pub fn create_snapshot(&mut self, id: u32) -> Result<SnapshotRef> {
        self.writable()?;
        let r = self.create_inner(id);
        self.guard(r)
    }

    fn create_inner(&mut self, id: u32) -> Result<SnapshotRef> {
        // It would share origin chunks whose data is not on the origin device yet.
        self.not_rolling_back()?;
        // The id of a snapshot whose space is still being reclaimed is free again: the new
        // snapshot takes over the id index, and the reclaim leaves it alone (see
        // `reclaim.rs`).
        if let Some(v) = self.lookup(TREE_SNAPS, ID_SPACE | id as u128)? {
            if v & DELETING == 0 {
                return Err(Error::Exists);
            }
        }
        let epoch = self
            .sb
            .last_epoch
            .checked_add(1)
            .filter(|&e| e <= MAX_EPOCH)
            .ok_or(Error::Limit("epoch counter"))?;
        // A create must not eat into the metadata reserve: a full store has to stay able to
        // delete snapshots (which shadows snapshot-table nodes) to get space back.
        self.ensure(self.meta_reserve() + 2 * self.op_need(TREE_SNAPS) + 2)?;
        self.insert(TREE_SNAPS, epoch as u128, id as u128)?;
        self.insert(TREE_SNAPS, ID_SPACE | id as u128, epoch as u128)?;
        self.sb.last_epoch = epoch;
        self.sb.snapshots = self.sb.snapshots.saturating_add(1);
        Ok(SnapshotRef { id, epoch })
    }

    /// Prepares an origin write to `chunk`.
    pub fn origin_write_prepare(&mut self, chunk: u64) -> Result<OriginWrite> {
        self.writable()?;
        let r = self.origin_prepare_inner(chunk);
        self.guard(r)
    }

    fn origin_prepare_inner(&mut self, chunk: u64) -> Result<OriginWrite> {
        if self.rollback_pending(chunk)? {
            return Ok(OriginWrite::RollBackFirst);
        }
        self.preserve_for_origin_write(chunk)
    }

    /// What an origin write of `chunk` needs so that the snapshots keep their data.
    pub(crate) fn preserve_for_origin_write(&mut self, chunk: u64) -> Result<OriginWrite> {
        Ok(match self.origin_chunk_needed(chunk)? {
            OriginDiscard::Keep => {
                // Recorded with the copy's exception when it completes.
                let cow = self.recorded(|s| s.alloc_data())?;
                self.outstanding += 1;
                OriginWrite::Copy(CopyPlan { chunk, cow })
            }
            OriginDiscard::AfterCommit => OriginWrite::AfterCommit,
            OriginDiscard::Pass => OriginWrite::Proceed,
        })
    }

    /// Whether a discard of origin `chunk` may reach the origin. It changes nothing: a chunk
    /// that snapshots still share keeps its data (no copy is made for a discard).
    pub fn origin_discard_prepare(&self, chunk: u64) -> Result<OriginDiscard> {
        self.writable()?;
        if self.rollback_pending(chunk)? {
            // The rollback will write the chunk; until then its data is elsewhere.
            return Ok(OriginDiscard::Keep);
        }
        self.origin_chunk_needed(chunk)
    }

    /// Drops every live snapshot that needs a copy of origin `chunk` before it is written (those
    /// the copy of [`Store::origin_write_prepare`] would be for), calling `dropped` for each,
    /// and returns how many were dropped. For the [`CowFullPolicy::Drop`] policy, when that copy
    /// finds no space.
    ///
    /// One copy serves all of them, so dropping only some would not make the write possible;
    /// the snapshots that already hold their own data of the chunk are kept. A dropped
    /// snapshot can no longer be read ([`Store::snapshot_epoch`] does not find it), its id
    /// stays taken and its space stays in use until it is deleted, as a snapshot that
    /// dm-snapshot invalidates keeps its COW device. Until the next commit an origin write of
    /// the chunk gets [`OriginWrite::AfterCommit`]: a crash before then must find the snapshots
    /// still intact.
    ///
    /// Errors: [`Error::NoSpace`] if not even the snapshot table can be updated (beside what the
    /// completions of outstanding plans may need); the snapshots dropped before stay dropped.
    pub fn drop_snapshots_needing(
        &mut self,
        chunk: u64,
        dropped: &mut dyn FnMut(SnapshotRef),
    ) -> Result<u64> {
        self.writable()?;
        let r = self.drop_inner(chunk, dropped);
        self.guard(r)
    }

    fn drop_inner(&mut self, chunk: u64, dropped: &mut dyn FnMut(SnapshotRef)) -> Result<u64> {
        let hi_prev = self.newest_shared(chunk)?.map(|x| x.0).unwrap_or(0);
        let last = self.sb.last_epoch;
        let mut from = hi_prev.saturating_add(1);
        let mut n = 0;
        while from <= last {
            let lacking = self.first_lacking(chunk, from, last, SNAPSHOT_FLAGS)?;
            if !lacking.found {
                break;
            }
            let e = lacking.first;
            let idv = self
                .lookup(TREE_SNAPS, e as u128)?
                .ok_or(Error::Internal("lacking snapshot vanished"))?;
            let id = u32::try_from(lo64(idv)).map_err(|_| Error::Corrupt {
                what: "snapshot table: id out of range",
                block: 0,
            })?;
            self.ensure_beside_completions(2 * self.op_need(TREE_SNAPS) + 2)?;
            self.insert(TREE_SNAPS, e as u128, DROPPED | id as u128)?;
            self.insert(TREE_SNAPS, ID_SPACE | id as u128, DROPPED | e as u128)?;
            self.sb.snapshots = self.sb.snapshots.saturating_sub(1);
            self.sb.dropped = self.sb.dropped.saturating_add(1);
            // Origin writes wait for the commit that makes the drop durable.
            self.max_deleted_epoch = self.max_deleted_epoch.max(e);
            dropped(SnapshotRef { id, epoch: e });
            n += 1;
            from = match e.checked_add(1) {
                Some(x) => x,
                None => break,
            };
        }
        Ok(n)
    }

    /// Whether a snapshot still needs the origin's data of `chunk` (`Keep`), or whether the
    /// data may change now (`Pass`) or once the running transaction is committed.
    fn origin_chunk_needed(&self, chunk: u64) -> Result<OriginDiscard> {
        let (hi_prev, s_tx) = self.newest_shared(chunk)?.unwrap_or((0, 0));
        let mut wait = s_tx == self.cur
            && hi_prev != 0
            && !self.shared_exception_durable(shared_key(chunk, hi_prev))?;
        if hi_prev < self.sb.last_epoch {
            let l = self.first_lacking(chunk, hi_prev + 1, self.sb.last_epoch, SNAPSHOT_FLAGS)?;
            if l.found {
                return Ok(OriginDiscard::Keep);
            }
            wait |= l.uncommitted || self.max_deleted_epoch > hi_prev;
        }
        Ok(if wait {
            OriginDiscard::AfterCommit
        } else {
            OriginDiscard::Pass
        })
    }

    /// Records the copy of `plan` (its data must have been written). The
    /// origin write may be issued after the next commit.
    pub fn origin_write_complete(&mut self, plan: CopyPlan) -> Result<()> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.writable()?;
        let r = self.origin_complete_inner(plan);
        self.guard(r)
    }

    fn origin_complete_inner(&mut self, plan: CopyPlan) -> Result<()> {
        let c = plan.chunk;
        let hi_prev = self.newest_shared(c)?.map(|x| x.0).unwrap_or(0);
        let last = self.sb.last_epoch;
        let lacking = if hi_prev < last {
            self.first_lacking(c, hi_prev + 1, last, SNAPSHOT_FLAGS)?
        } else {
            Lacking {
                found: false,
                first: 0,
                uncommitted: false,
            }
        };
        if lacking.found {
            if let Err(e) = self.ensure(self.op_need(TREE_SHARED)) {
                self.free_data(plan.cow)?;
                return Err(e);
            }
            // The range starts at the first snapshot that lacks its own copy, not at
            // `hi_prev + 1`: the snapshots between have private exceptions, and the origin may
            // have been written since they were created without a copy for them, so this copy
            // is not their data. Every snapshot in the range is newer than the first lacking
            // one, which lacked a copy since its creation (privates are only ever removed
            // where a shared exception covers the snapshot), so no origin write reached the
            // chunk since: the copy is each one's data, which `snapshot_discard` relies on.
            let (k, v) = (shared_key(c, last), shared_val(lacking.first, plan.cow));
            self.recorded(|s| s.insert(TREE_SHARED, k, v))?;
            self.sb.shared = self.sb.shared.saturating_add(1);
            self.journal_origin_copy(k, v)
        } else {
            // Meanwhile no snapshot needs it (deleted, or all unshared).
            self.free_data(plan.cow)
        }
    }

    /// Gives up a copy plan and frees its chunk.
    pub fn abort_origin_write(&mut self, plan: CopyPlan) -> Result<()> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.writable()?;
        let r = self.free_data(plan.cow);
        self.guard(r)
    }

    /// Prepares a write to `chunk` of snapshot `snap`.
    pub fn snapshot_write_prepare(
        &mut self,
        snap: SnapshotRef,
        chunk: u64,
    ) -> Result<SnapWritePlan> {
        self.writable()?;
        let r = self.snap_prepare_inner(snap, chunk);
        self.guard(r)
    }

    fn snap_prepare_inner(&mut self, snap: SnapshotRef, chunk: u64) -> Result<SnapWritePlan> {
        if self.snapshot_epoch(snap.id)? != Some(snap) {
            return Err(Error::NotFound);
        }
        self.not_rollback_source(snap.epoch)?;
        let from = match self.lookup(TREE_PRIVATE, private_key(snap.epoch, chunk))? {
            // A chunk that reads as zeroes gets a COW chunk of its own, like a shared one.
            Some(PRIVATE_ZEROES) => Location::Zeroes,
            Some(v) => return Ok(SnapWritePlan::Direct(self.exception_chunk(v)?)),
            None => match self.covering_shared(chunk, snap.epoch)? {
                Some((_, v)) => Location::Cow(self.exception_chunk(v)?),
                None => Location::Origin,
            },
        };
        let to = self.alloc_data()?;
        self.outstanding += 1;
        Ok(SnapWritePlan::Unshare(UnsharePlan {
            snap,
            chunk,
            from,
            to,
        }))
    }

    /// Records that the snapshot now owns `plan.to()` for the chunk. Frees
    /// the shared exception it leaves if no live snapshot needs it.
    pub fn snapshot_write_complete(&mut self, plan: UnsharePlan) -> Result<()> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.writable()?;
        let r = self.snap_complete_inner(plan);
        self.guard(r)
    }

    fn snap_complete_inner(&mut self, plan: UnsharePlan) -> Result<()> {
        let (e, c) = (plan.snap.epoch, plan.chunk);
        if self.snapshot_epoch(plan.snap.id)? != Some(plan.snap) {
            self.free_data(plan.to)?;
            return Err(Error::NotFound);
        }
        // The plan replaces a chunk that reads as zeroes, or adds the snapshot's first own copy.
        let replaces = match self.lookup(TREE_PRIVATE, private_key(e, c))? {
            None => false,
            Some(PRIVATE_ZEROES) if plan.from == Location::Zeroes => true,
            Some(_) => {
                self.free_data(plan.to)?;
                return Err(Error::Invalid("two unshare plans for one snapshot chunk"));
            }
        };
        if let Err(err) = self.ensure(self.completion_need()) {
            self.free_data(plan.to)?;
            return Err(err);
        }
        self.insert(TREE_PRIVATE, private_key(e, c), plan.to as u128)?;
        if !replaces {
            self.sb.private = self.sb.private.saturating_add(1);
        }
        if let Some((k, v)) = self.covering_shared(c, e)? {
            if !self.first_lacking(c, hi64(v), lo64(k), DELETING)?.found {
                self.remove(TREE_SHARED, k)?;
                self.free_data(lo64(v))?;
                self.sb.shared = self.sb.shared.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// Gives up an unshare plan and frees its chunk.
    pub fn abort_snapshot_write(&mut self, plan: UnsharePlan) -> Result<()> {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.writable()?;
        let r = self.free_data(plan.to);
        self.guard(r)
    }

    /// Discards snapshot `snap`'s own copy of `chunk` (a discard that covers the whole chunk):
    /// its COW chunk is freed (reusable after the commit, like every free).
    ///
    /// Where a copy of the chunk from the snapshot's own time is kept for other snapshots, the
    /// private exception is removed and the snapshot reads that copy again
    /// ([`SnapshotDiscard::ReadsItsCopy`]). Otherwise the exception stays, naming no chunk, and
    /// the snapshot reads zeroes ([`SnapshotDiscard::ReadsZeroes`]): removed, it would make the
    /// snapshot read the origin, whose data may be newer than the snapshot and which origin
    /// writes would not preserve for it (they take snapshots up to the newest copy's range as
    /// preserved). Discarded data is undefined; zeroes are stable and leak nothing.
    ///
    /// A chunk the snapshot shares, or that reads as zeroes already, is left as it is
    /// ([`SnapshotDiscard::Kept`]): its data belongs to the origin or other snapshots too.
    /// `NoSpace` if the B+tree update would take space that the completions of outstanding
    /// plans may need (nothing changed then).
    pub fn snapshot_discard(&mut self, snap: SnapshotRef, chunk: u64) -> Result<SnapshotDiscard> {
        self.writable()?;
        let r = self.snap_discard_inner(snap, chunk);
        self.guard(r)
    }

    fn snap_discard_inner(&mut self, snap: SnapshotRef, chunk: u64) -> Result<SnapshotDiscard> {
        if self.snapshot_epoch(snap.id)? != Some(snap) {
            return Err(Error::NotFound);
        }
        self.not_rollback_source(snap.epoch)?;
        let key = private_key(snap.epoch, chunk);
        let cow = match self.lookup(TREE_PRIVATE, key)? {
            None | Some(PRIVATE_ZEROES) => return Ok(SnapshotDiscard::Kept),
            Some(v) => self.exception_chunk(v)?,
        };
        self.ensure_beside_completions(self.op_need(TREE_PRIVATE))?;
        let outcome = if self.covering_shared(chunk, snap.epoch)?.is_some() {
            self.remove(TREE_PRIVATE, key)?;
            self.sb.private = self.sb.private.saturating_sub(1);
            SnapshotDiscard::ReadsItsCopy
        } else {
            self.insert(TREE_PRIVATE, key, PRIVATE_ZEROES)?;
            self.sb.zeroes = true;
            SnapshotDiscard::ReadsZeroes
        };
        self.free_data(cow)?;
        Ok(outcome)
    }

    /// Number of COW chunks that hold snapshot `id`'s data (live or dropped): its own, and
    /// the copies it shares. Scans all exceptions.
    pub fn snapshot_usage(&self, id: u32) -> Result<u64> {
        let e = match self.lookup(TREE_SNAPS, ID_SPACE | id as u128)? {
            Some(v) if v & DELETING == 0 => lo64(v),
            _ => return Err(Error::NotFound),
        };
        let mut n = 0u64;
        let mut it = PrivateExceptions {
            entries: self.entries(TREE_PRIVATE, Some(private_key(e, 0))),
        };
        for p in &mut it {
            let p = p?;
            if p.epoch != e {
                break;
            }
            // A chunk that reads as zeroes occupies none.
            n += u64::from(p.cow.is_some());
        }
        let mut from = Some(0u128);
        while let Some(f) = from {
            let mut hit = None;
            let end = self.scan_leaf(TREE_SHARED, f, |k, v| {
                if hi64(v) <= e && e <= lo64(k) {
                    hit = Some(k);
                    Ok(false)
                } else {
                    Ok(true)
                }
            })?;
            from = match end {
                ScanEnd::Stopped => {
                    let k = hit.ok_or(Error::Internal("scan result"))?;
                    if k < f {
                        return Err(Error::Corrupt {
                            what: "btree: keys out of order",
                            block: 0,
                        });
                    }
                    if self
                        .lookup(TREE_PRIVATE, private_key(e, hi64(k)))?
                        .is_none()
                    {
                        n += 1;
                    }
                    k.checked_add(1)
                }
                ScanEnd::Next(nx) => {
                    if nx <= f {
                        return Err(Error::Corrupt {
                            what: "btree: separators out of order",
                            block: 0,
                        });
                    }
                    Some(nx)
                }
                ScanEnd::End => None,
            };
        }
        Ok(n)
    }
}
