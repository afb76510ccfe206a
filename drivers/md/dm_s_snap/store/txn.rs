// SPDX-License-Identifier: GPL-2.0

//! The store object: format, open, transactions and commit.

use super::error::{Error, Result};
use super::format::*;
use super::io::{BlockHandle, BlockIo};
use super::journal::{journal_size, JournalState};

/// A held block of the store's I/O.
pub(crate) type H<'a, I> = <I as BlockIo>::Block<'a>;

/// The exception store of one COW device.
///
/// All metadata lives on the device and is reached through the [`BlockIo`]
/// cache; the object itself holds only a few counters.
pub struct Store<I: BlockIo> {
    pub(crate) io: I,
    pub(crate) g: Geometry,
    /// Current (in-transaction) superblock state.
    pub(crate) sb: SbState,
    /// Superblock slot (0 or 1) holding the newest valid superblock.
    pub(crate) sb_slot: u64,
    /// Transaction id of the running transaction (0 when read-only).
    pub(crate) cur: u64,
    pub(crate) rw: bool,
    pub(crate) failed: bool,
    /// Something was modified since the last commit.
    pub(crate) dirty: bool,
    /// Copy plans handed out and neither completed nor aborted.
    pub(crate) outstanding: u64,
    /// Blocks freed in this transaction that the committed state still uses.
    pub(crate) deferred: u64,
    /// Metadata blocks allocated and released in this transaction: a list
    /// linked through the blocks themselves, released at commit.
    pub(crate) garbage_head: u64,
    pub(crate) garbage_count: u64,
    /// Highest epoch of a snapshot deleted in this transaction (0: none).
    pub(crate) max_deleted_epoch: u64,
    /// Resume point of the shared-exception scan of a pending delete.
    pub(crate) reclaim_cursor: u128,
    /// Deleted snapshots whose space is not reclaimed yet (counted at open).
    pub(crate) deleting: u64,
    /// Chunks freed by the reclaim since open.
    pub(crate) reclaimed: u64,
    /// Commits made since open, checkpoints and journal blocks (see [`Store::commits`]).
    pub(crate) commits: u64,
    /// The journal's position (see `journal.rs`).
    pub(crate) journal: JournalState,
    /// Head and length of the list of chunk frees deferred to the next checkpoint (see
    /// `Store::free_data`).
    pub(crate) deferred_head: u64,
    pub(crate) deferred_blocks: u64,
}

/// What a superblock slot holds.
enum Slot {
    Zero,
    Valid,
    /// The in-progress image an open store keeps in the slot that does not
    /// hold the newest superblock (unsealed, sequence number 0): proof that
    /// a store was formatted here.
    Image,
    /// Invalid; `true` if its first sector carries the superblock magic.
    Invalid(bool),
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Reads the chunk size (sectors) from the first sector of a superblock
/// slot, if it looks like one of this format version.
pub(crate) fn superblock_chunk_sectors(first_sector: &[u8], slot: u64) -> Option<u32> {
    let magic = rd32(first_sector, OFF_MAGIC).ok()?;
    let nr = rd64(first_sector, OFF_BLOCKNR).ok()?;
    let cs = rd32(first_sector, SB_CHUNK_SECTORS).ok()?;
    let version = rd32(first_sector, SB_VERSION).ok()?;
    if magic == SB_MAGIC && version == VERSION && nr == slot && Geometry::valid_chunk_sectors(cs) {
        Some(cs)
    } else {
        None
    }
}

impl<I: BlockIo> Store<I> {
    /// Opens the store read-write, formatting the device if both superblock
    /// blocks are entirely zero. `chunk_sectors` comes from the table and
    /// must equal the stored chunk size; `io` has blocks of 4 KiB.
    ///
    /// A device holding anything else gets [`Error::NotAStore`] and nothing
    /// is written. Opening reads the two superblocks only.
    pub fn open(io: I, chunk_sectors: u32) -> Result<Store<I>> {
        if !Geometry::valid_chunk_sectors(chunk_sectors) {
            return Err(Error::InvalidChunkSize);
        }
        if io.block_size() != BLOCK_SIZE {
            return Err(Error::Invalid("metadata block size is not 4 KiB"));
        }
        if io.nr_blocks() < 2 {
            return Err(Error::DeviceTooSmall);
        }
        {
            // A store of another format version is refused before anything
            // could take it for an unfinished format (a version 1 store
            // with chunks over 4 KiB has no superblock at block 1).
            let h = io.read(0)?;
            if rd32(&h, OFF_MAGIC)? == SB_MAGIC && rd32(&h, SB_VERSION)? != VERSION {
                return Err(Error::Unsupported("superblock format version"));
            }
            // A store formatted with another chunk size: say so rather than
            // "not a store".
            if let Some(cs) = superblock_chunk_sectors(&h, 0) {
                if cs != chunk_sectors {
                    return Err(Error::ChunkSizeMismatch);
                }
            }
        }
        let s0 = Self::classify(&io, 0)?;
        let s1 = Self::classify(&io, 1)?;
        let format = match (&s0, &s1) {
            (Slot::Zero, Slot::Zero) => true,
            // A format whose superblock write was torn: slot 1 is written
            // only after a successful format, so no data can exist yet. Its
            // first sector (written atomically) holds sequence number 1 and
            // a checksum, so it is never taken for an in-progress image; an
            // image beside a zeroed newest superblock is a store whose
            // superblock was lost, not an unfinished format.
            (Slot::Invalid(true), Slot::Zero) => true,
            _ => false,
        };
        if format {
            Self::format(&io, chunk_sectors)?;
        }
        Self::open_rw(io, Some(chunk_sectors))
    }

    /// Opens an existing store read-only (nothing is ever written); `io` has
    /// blocks of 4 KiB.
    pub fn open_existing(io: I) -> Result<Store<I>> {
        let (slot, st) = Self::pick_superblock(&io)?;
        let g = Self::validate_state(&io, &st, None)?;
        let mut s = Self::new_obj(io, g, st, slot, 0, false);
        s.count_deleting()?;
        // Reported, not replayed: nothing is written.
        s.journal.committed = s.count_journal()?;
        Ok(s)
    }

    fn new_obj(io: I, g: Geometry, sb: SbState, sb_slot: u64, cur: u64, rw: bool) -> Store<I> {
        Store {
            io,
            g,
            sb,
            sb_slot,
            cur,
            rw,
            failed: false,
            dirty: false,
            outstanding: 0,
            deferred: 0,
            garbage_head: 0,
            garbage_count: 0,
            max_deleted_epoch: 0,
            reclaim_cursor: 0,
            deleting: 0,
            reclaimed: 0,
            commits: 0,
            journal: JournalState::default(),
            deferred_head: 0,
            deferred_blocks: 0,
        }
    }

    /// Counts the deleted snapshots waiting for their space to be
    /// reclaimed, and checks that the superblock names one of them.
    fn count_deleting(&mut self) -> Result<()> {
        // Before the count is known, every epoch ever handed out bounds the walk.
        let (first, count) = self.deleted_epochs(self.sb.last_epoch.saturating_add(1))?;
        let d = self.sb.deleting_epoch;
        let named = d != 0
            && self
                .lookup(TREE_SNAPS, d as u128)?
                .is_some_and(|v| v & super::ops::DELETING != 0);
        if first.is_some() != named {
            return Err(Error::Corrupt {
                what: "superblock: snapshot being deleted does not match the snapshot table",
                block: 0,
            });
        }
        self.deleting = count;
        Ok(())
    }

    fn classify(io: &I, slot: u64) -> Result<Slot> {
        let h = io.read(slot)?;
        if h.len() != io.block_size() {
            return Err(Error::Io("block handle of wrong size"));
        }
        if is_zero(&h) {
            return Ok(Slot::Zero);
        }
        match Self::decode_sb(io, &h, slot) {
            Ok(_) => Ok(Slot::Valid),
            Err(_) => {
                let magic = rd32(&h, OFF_MAGIC)? == SB_MAGIC;
                if magic && rd64(&h, SB_SEQ)? == 0 && rd32(&h, OFF_CRC)? == 0 {
                    Ok(Slot::Image)
                } else {
                    Ok(Slot::Invalid(magic))
                }
            }
        }
    }

    /// Validates a superblock block's header and decodes it.
    pub(crate) fn decode_sb(io: &I, b: &[u8], slot: u64) -> Result<SbState> {
        let bad = |what| Error::Corrupt { what, block: slot };
        if rd32(b, OFF_MAGIC)? != SB_MAGIC {
            return Err(bad("superblock: bad magic"));
        }
        // Before the checksum: version 1 checksummed a whole chunk.
        if rd32(b, SB_VERSION)? != VERSION {
            return Err(Error::Unsupported("superblock format version"));
        }
        if !crc_ok(io, b) {
            return Err(bad("superblock: bad checksum"));
        }
        if rd64(b, OFF_BLOCKNR)? != slot {
            return Err(bad("superblock: wrong block number"));
        }
        if rd32(b, SB_BLOCK_SIZE)? as usize != BLOCK_SIZE {
            return Err(bad("superblock: metadata block size is not 4 KiB"));
        }
        // Feature flags: a later version sets one for each structure an
        // older module must not ignore (see "Room for later versions" in
        // the documentation).
        let flags = rd32(b, SB_FLAGS)?;
        if flags & !SB_KNOWN_FLAGS != 0 {
            return Err(Error::Unsupported("superblock feature flags"));
        }
        let st = SbState::decode(b)?;
        if (flags & SB_FLAG_DROPPED != 0) != (st.dropped != 0) {
            return Err(bad(
                "superblock: dropped-snapshot flag and counter disagree",
            ));
        }
        if (flags & SB_FLAG_GROWN != 0) != (rd32(b, SB_FIXED_BITMAPS)? != 0) {
            return Err(bad(
                "superblock: grown flag and fixed bitmap count disagree",
            ));
        }
        if (flags & SB_FLAG_ROLLBACK != 0) != (st.rollback_epoch != 0)
            || (st.rollback_epoch == 0) != (st.rollback_left == 0)
            || st.rollback_left > st.rollback_total
        {
            return Err(bad("superblock: rollback fields disagree"));
        }
        if (flags & SB_FLAG_JOURNAL != 0) != (st.journal_blocks != 0) {
            return Err(bad("superblock: journal flag and area disagree"));
        }
        if st.seq == 0 {
            return Err(bad("superblock: sequence number 0 (unfinished)"));
        }
        Ok(st)
    }

    fn pick_superblock(io: &I) -> Result<(u64, SbState)> {
        let mut best: Option<(u64, SbState)> = None;
        let mut unsupported = None;
        let mut magic = false;
        for slot in 0..2u64 {
            let h = io.read(slot)?;
            if h.len() != io.block_size() {
                return Err(Error::Io("block handle of wrong size"));
            }
            magic |= rd32(&h, OFF_MAGIC)? == SB_MAGIC;
            match Self::decode_sb(io, &h, slot) {
                Ok(st) => {
                    let better = match &best {
                        None => true,
                        Some((_, b)) => st.seq > b.seq,
                    };
                    if better {
                        best = Some((slot, st));
                    }
                }
                Err(Error::Unsupported(what)) => unsupported = Some(what),
                Err(_) => {}
            }
        }
        match best {
            Some(b) => Ok(b),
            None => match unsupported {
                Some(what) => Err(Error::Unsupported(what)),
                // A store whose superblocks are both damaged, not foreign data.
                None if magic => Err(Error::Corrupt {
                    what: "superblock: no valid copy",
                    block: 0,
                }),
                None => Err(Error::NotAStore),
            },
        }
    }

    /// Checks the superblock state against the device and returns the
    /// geometry.
    fn validate_state(io: &I, st: &SbState, table_cs: Option<u32>) -> Result<Geometry> {
        let bad = |what| Error::Corrupt { what, block: 0 };
        if !Geometry::valid_chunk_sectors(st.chunk_sectors) {
            return Err(bad("superblock: invalid chunk size"));
        }
        if let Some(cs) = table_cs {
            if cs != st.chunk_sectors {
                return Err(Error::ChunkSizeMismatch);
            }
        }
        if io.block_size() != BLOCK_SIZE {
            return Err(Error::Invalid("metadata block size is not 4 KiB"));
        }
        if st.nr_chunks > Geometry::max_chunks(st.chunk_sectors) {
            return Err(bad("superblock: more chunks than the format allows"));
        }
        let k = u64::from(st.chunk_sectors / BLOCK_SECTORS);
        if io.nr_blocks() / k < st.nr_chunks {
            return Err(Error::DeviceTooSmall);
        }
        let g = match Geometry::grown(st.chunk_sectors, st.nr_chunks, st.fixed_bitmaps.into()) {
            Ok(g) => g,
            Err(Error::DeviceTooSmall) => return Err(bad("superblock: chunk count too small")),
            Err(Error::Invalid(_)) => return Err(bad("superblock: bitmap counts do not fit")),
            Err(e) => return Err(e),
        };
        if g.nr_chunks != st.nr_chunks || g.nr_bitmaps != st.nr_bitmaps as u64 {
            return Err(bad("superblock: bitmap count does not match chunk count"));
        }
        if st.committed_txid == 0 || st.reserved_txid < st.committed_txid {
            return Err(bad("superblock: transaction ids inconsistent"));
        }
        if st.reserved_txid > u64::MAX / 2 {
            return Err(bad("superblock: transaction id out of range"));
        }
        for r in st.roots.iter() {
            if !g.in_data_area(r.block) {
                return Err(bad("superblock: btree root outside the data area"));
            }
            if r.depth == 0 || r.depth as usize > MAX_DEPTH {
                return Err(bad("superblock: btree depth out of range"));
            }
        }
        let used = st
            .data_chunks
            .checked_mul(g.chunk_blocks)
            .and_then(|d| d.checked_add(st.meta_blocks))
            .ok_or(bad("superblock: usage counters overflow"))?;
        if used > g.nr_blocks
            || st.meta_blocks < g.fixed_end + 2 * g.grown_bitmaps() + NR_TREES as u64
        {
            return Err(bad("superblock: usage counters out of range"));
        }
        if st.journal_blocks != 0 {
            let end = st.journal_start.checked_add(u64::from(st.journal_blocks));
            let inside = end.is_some_and(|end| end <= g.nr_blocks)
                && (st.journal_start..st.journal_start + u64::from(st.journal_blocks))
                    .all(|nr| g.in_data_area(nr));
            if !inside || st.journal_blocks as u64 > JOURNAL_MAX_BLOCKS {
                return Err(bad("superblock: journal area outside the data area"));
            }
        } else if st.journal_start != 0 {
            return Err(bad("superblock: journal area without blocks"));
        }
        if st.shared > st.nr_chunks || st.private > st.nr_chunks {
            return Err(bad("superblock: exception counters out of range"));
        }
        if st.deleting_epoch > st.last_epoch || st.snapshots > st.last_epoch {
            return Err(bad("superblock: snapshot counters out of range"));
        }
        Ok(g)
    }

    /// Writes a fresh store.
    fn format(io: &I, chunk_sectors: u32) -> Result<()> {
        let g = Geometry::new(
            chunk_sectors,
            io.nr_blocks() / u64::from(chunk_sectors / BLOCK_SECTORS),
        )?;
        let bs = g.block_size;
        let txid = 1u64;
        // The fixed area, the three root leaves and the journal area are allocated.
        let journal_start = g.fixed_end + NR_TREES as u64;
        let journal_blocks = journal_size(g.nr_blocks);
        let used_end = journal_start + u64::from(journal_blocks);
        for i in 0..g.nr_bitmaps {
            let nr = g.bitmap_slot(i, 0);
            let mut h = new_block_with_header(io, bs, nr, BM_MAGIC, txid)?;
            wr32(
                &mut h,
                BM_INDEX,
                u32::try_from(i).map_err(|_| Error::Internal("bitmap index"))?,
            )?;
            let first = i * g.bits_per_bitmap;
            let last = first + g.bits_per_bitmap;
            let mut c = first;
            while c < used_end.min(last) {
                let bit = (c - first) as usize;
                let off = BM_BITS + bit / 8;
                let v = rd8(&h, off)? | (1u8 << (bit % 8));
                wr8(&mut h, off, v)?;
                c += 1;
            }
            seal(io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
        }
        for t in 0..NR_TREES {
            let nr = g.fixed_end + t as u64;
            let mut h = new_block_with_header(io, bs, nr, NODE_MAGIC, txid)?;
            wr8(&mut h, NODE_TREE, t as u8 + 1)?;
            wr8(&mut h, NODE_LEVEL, 0)?;
            wr16(&mut h, NODE_NR, 0)?;
            seal(io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
        }
        // Zeroed, so that no block of an earlier store on the device passes for a journal
        // block of this one.
        for nr in journal_start..used_end {
            let mut h = io.new_block(nr)?;
            h.fill(0);
            h.mark_dirty();
        }
        io.write_dirty()?;
        let mut roots = [Root::default(); NR_TREES];
        for (t, r) in roots.iter_mut().enumerate() {
            r.block = g.fixed_end + t as u64;
            r.depth = 1;
        }
        let st = SbState {
            chunk_sectors,
            nr_chunks: g.nr_chunks,
            nr_bitmaps: u32::try_from(g.nr_bitmaps).map_err(|_| Error::Internal("bitmaps"))?,
            fixed_bitmaps: u32::try_from(g.nr_bitmaps).map_err(|_| Error::Internal("bitmaps"))?,
            seq: 1,
            committed_txid: txid,
            reserved_txid: txid,
            last_epoch: 0,
            alloc_hint: used_end,
            data_hint: used_end.div_ceil(g.chunk_blocks),
            data_chunks: 0,
            meta_blocks: used_end,
            shared: 0,
            private: 0,
            snapshots: 0,
            dropped: 0,
            drop_when_full: false,
            zeroes: false,
            rollback_epoch: 0,
            rollback_total: 0,
            rollback_left: 0,
            deleting_epoch: 0,
            roots,
            journal_start: if journal_blocks == 0 {
                0
            } else {
                journal_start
            },
            journal_blocks,
        };
        let mut h = io.new_block(0)?;
        if h.len() != bs {
            return Err(Error::Io("block handle of wrong size"));
        }
        h.fill(0);
        st.encode(&mut h, 0)?;
        seal(io, &mut h)?;
        h.set_verified();
        h.mark_dirty();
        drop(h);
        io.write_dirty()
    }

    fn open_rw(io: I, table_cs: Option<u32>) -> Result<Store<I>> {
        let (slot, mut st) = Self::pick_superblock(&io)?;
        let g = Self::validate_state(&io, &st, table_cs)?;
        // Reserve a transaction id no crashed writer can have used.
        let cur = st
            .reserved_txid
            .checked_add(1)
            .ok_or(Error::Limit("transaction id"))?;
        st.reserved_txid = cur;
        st.seq = st.seq.checked_add(1).ok_or(Error::Limit("sequence"))?;
        if st.alloc_hint < g.fixed_end || st.alloc_hint >= g.nr_blocks {
            st.alloc_hint = g.fixed_end;
        }
        if st.data_hint >= g.nr_chunks {
            st.data_hint = 0;
        }
        let other = 1 - slot;
        {
            let src = io.read(slot)?;
            let mut dst = io.new_block(other)?;
            if dst.len() != g.block_size || src.len() != g.block_size {
                return Err(Error::Io("block handle of wrong size"));
            }
            dst.copy_from_slice(&src);
            st.encode(&mut dst, other)?;
            seal(&io, &mut dst)?;
            dst.set_verified();
            dst.mark_dirty();
        }
        io.write_dirty()?;
        let mut s = Self::new_obj(io, g, st, other, cur, true);
        s.start_image()?;
        // A reclaim left unfinished goes on when the owner calls `reclaim`.
        s.count_deleting()?;
        s.replay_journal()?;
        Ok(s)
    }

    /// Creates the in-progress superblock image in the slot that does not
    /// hold the newest superblock: a copy with sequence number 0, which is
    /// never valid, so it is harmless if written early.
    fn start_image(&mut self) -> Result<()> {
        let img = 1 - self.sb_slot;
        let src = self.io.read(self.sb_slot)?;
        // The image carries the committed selector bits: it must come from
        // the superblock just committed, never from a stale cached copy (its
        // sequence number tells; the checksum was checked when it was read or
        // is the one just computed).
        if rd32(&src, OFF_MAGIC)? != SB_MAGIC || rd64(&src, SB_SEQ)? != self.sb.seq {
            return Err(Error::Internal(
                "cached superblock is not the committed one",
            ));
        }
        let mut dst = self.io.new_block(img)?;
        if dst.len() != self.g.block_size || src.len() != self.g.block_size {
            return Err(Error::Io("block handle of wrong size"));
        }
        dst.copy_from_slice(&src);
        wr64(&mut dst, SB_SEQ, 0)?;
        wr64(&mut dst, OFF_BLOCKNR, img)?;
        wr32(&mut dst, OFF_CRC, 0)?;
        dst.mark_dirty();
        Ok(())
    }

    /// The block holding the bitmap slot selector bits of the current state.
    pub(crate) fn selector_block(&self) -> u64 {
        if self.rw {
            1 - self.sb_slot
        } else {
            self.sb_slot
        }
    }

    /// Fails unless the store may be modified.
    pub(crate) fn writable(&self) -> Result<()> {
        if self.failed {
            Err(Error::Failed)
        } else if !self.rw {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Marks the store failed if `r` is a fatal error.
    pub(crate) fn guard<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_fatal() {
                self.failed = true;
            }
        }
        r
    }

    /// Reads a block and validates checksum, magic, block number and txid.
    pub(crate) fn read_valid(&self, nr: u64, magic: u32) -> Result<H<'_, I>> {
        let mut h = self.io.read(nr)?;
        if h.len() != self.g.block_size {
            return Err(Error::Io("block handle of wrong size"));
        }
        let what = |m: u32, s: [&'static str; 4]| -> &'static str {
            match m {
                BM_MAGIC => s[0],
                NODE_MAGIC => s[1],
                GARBAGE_MAGIC => s[2],
                _ => s[3],
            }
        };
        if !h.is_verified() {
            if !crc_ok(&self.io, &h) {
                let w = what(
                    magic,
                    [
                        "bitmap: bad checksum",
                        "btree node: bad checksum",
                        "released block: bad checksum",
                        "bad checksum",
                    ],
                );
                return Err(Error::Corrupt { what: w, block: nr });
            }
            h.set_verified();
        }
        if rd32(&h, OFF_MAGIC)? != magic {
            let w = what(
                magic,
                [
                    "bitmap: bad magic",
                    "btree node: bad magic",
                    "released block: bad magic",
                    "bad magic",
                ],
            );
            return Err(Error::Corrupt { what: w, block: nr });
        }
        if rd64(&h, OFF_BLOCKNR)? != nr {
            return Err(Error::Corrupt {
                what: "block records a different block number",
                block: nr,
            });
        }
        let t = rd64(&h, OFF_TXID)?;
        if !(t <= self.sb.committed_txid || (self.rw && t == self.cur)) {
            return Err(Error::Corrupt {
                what: "block from an uncommitted transaction",
                block: nr,
            });
        }
        Ok(h)
    }

    /// Blocks that may be allocated now (free in the current and in the
    /// committed state, and not released metadata of this transaction).
    pub(crate) fn allocatable(&self) -> Result<u64> {
        let bad = Error::Corrupt {
            what: "space counters inconsistent",
            block: 0,
        };
        self.sb
            .data_chunks
            .checked_mul(self.g.chunk_blocks)
            .and_then(|d| self.g.nr_blocks.checked_sub(d))
            .and_then(|x| x.checked_sub(self.sb.meta_blocks))
            .and_then(|x| x.checked_sub(self.deferred))
            .and_then(|x| x.checked_sub(self.garbage_count))
            .ok_or(bad)
    }

    /// Fails with [`Error::NoSpace`] unless `n` blocks can be allocated.
    pub(crate) fn ensure(&self, n: u64) -> Result<()> {
        if self.allocatable()? < n {
            Err(Error::NoSpace)
        } else {
            Ok(())
        }
    }

    /// Blocks kept free for metadata: data allocations fail before.
    pub(crate) fn meta_reserve(&self) -> u64 {
        let d: u64 = self.sb.roots.iter().map(|r| r.depth as u64).sum();
        16 + 8 * d
    }

    /// Blocks the completion of one plan may allocate: a private exception inserted and a
    /// shared one removed (an unshare), or a shared one inserted (an origin copy).
    pub(crate) fn completion_need(&self) -> u64 {
        self.op_need(TREE_PRIVATE) + self.op_need(TREE_SHARED)
    }

    /// Fails with `NoSpace` unless `n` blocks can be allocated beside what the completions of
    /// the outstanding plans may need: work that is not a completion (a discard, a reclaim step)
    /// must not take the space an acknowledged write's completion relies on.
    pub(crate) fn ensure_beside_completions(&self, n: u64) -> Result<()> {
        self.ensure(n.saturating_add(self.outstanding.saturating_mul(self.completion_need())))
    }

    /// Blocks one btree insert or remove may allocate in `tree`.
    pub(crate) fn op_need(&self, tree: usize) -> u64 {
        let d = self.sb.roots.get(tree).map(|r| r.depth as u64).unwrap_or(0);
        // And a block of deferred chunk frees.
        2 * d + 4
    }

    /// Commits the running transaction: all changes since the previous
    /// commit become durable atomically. Does nothing if nothing changed.
    ///
    /// Fails with [`Error::Busy`] while a journal write is in flight
    /// ([`Store::journal_commit_start`]), or while copy plans are outstanding unless the commit
    /// is a journal block ([`Store::commit_beside_plans_possible`]): a plan changes nothing the
    /// journal records until it completes, so its chunk is free again after a crash.
    pub fn commit(&mut self) -> Result<()> {
        self.writable()?;
        if !self.commit_beside_plans_possible() {
            return Err(Error::Busy);
        }
        if !self.dirty {
            return Ok(());
        }
        // All of it goes through guard(): an I/O error or corruption there
        // leaves the transaction half done (the garbage list released, a
        // superblock write cut short), and a later call must get `Failed`
        // rather than build on it.
        let r = if self.journal_commit_possible() {
            self.journal_commit()
        } else {
            self.commit_inner()
        };
        self.guard(r)
    }

    /// Whether [`Store::commit`] may run now: no journal write is in flight, and no copy plan
    /// is outstanding or the commit is a journal block, which records only completed origin
    /// copies.
    pub fn commit_beside_plans_possible(&self) -> bool {
        !self.journal.writing && (self.outstanding == 0 || self.journal_commit_possible())
    }

    /// Commits the running transaction as a checkpoint of the B+trees, even if a journal
    /// block could commit it (for a clean stop: the journal is then empty). Fails with
    /// [`Error::Busy`] while copy plans are outstanding or a journal write is in flight.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.writable()?;
        if self.outstanding != 0 || self.journal.writing {
            return Err(Error::Busy);
        }
        if !self.dirty {
            return Ok(());
        }
        let r = self.commit_inner();
        self.guard(r)
    }

    fn commit_inner(&mut self) -> Result<()> {
        if self.outstanding != 0 || self.journal.writing {
            return Err(Error::Busy);
        }
        // Release the metadata blocks freed in their own transaction; their
        // dirty buffers are written below before anything can reuse them.
        // Each entry is unlinked from the list before its block is freed,
        // so that however far this gets before an error, the list names
        // only blocks still allocated: running it again never frees a block
        // twice. (A block whose free then fails is only leaked in memory:
        // the error is fatal, and a reopen drops the transaction.)
        while self.garbage_count != 0 {
            let nr = self.garbage_head;
            let next = {
                let h = self.read_valid(nr, GARBAGE_MAGIC)?;
                if rd64(&h, OFF_TXID)? != self.cur {
                    return Err(Error::Internal("released block of another transaction"));
                }
                rd64(&h, GB_NEXT)?
            };
            self.garbage_head = next;
            self.garbage_count -= 1;
            self.bm_update(nr, 1, false)?;
        }
        // The last entry links to 0 (the head of an empty list); keep that
        // true even if a damaged list is longer than its count.
        self.garbage_head = 0;
        self.release_deferred_frees()?;

        // One write with REQ_PREFLUSH | REQ_FUA commits: the new superblock
        // goes to the slot of the in-progress image once every other dirty
        // block is written, and its preflush makes those (and the chunk
        // copies of the transaction) durable before it.
        let mut st = self.sb;
        st.committed_txid = self.cur;
        st.reserved_txid = self.cur.checked_add(1).ok_or(Error::Limit("txid"))?;
        st.seq = st.seq.checked_add(1).ok_or(Error::Limit("sequence"))?;
        let img = 1 - self.sb_slot;
        {
            let mut h = self.io.read(img)?;
            if h.len() != self.g.block_size {
                return Err(Error::Io("block handle of wrong size"));
            }
            st.encode(&mut h, img)?;
            seal(&self.io, &mut h)?;
            self.io.commit_block(h)?;
        }
        self.sb = st;
        self.sb_slot = img;
        self.commits = self.commits.saturating_add(1);
        self.cur = st.reserved_txid;
        self.deferred = 0;
        self.dirty = false;
        self.max_deleted_epoch = 0;
        self.journal = JournalState::default();
        self.start_image()
    }

    /// Commits made since the store was opened: checkpoints, which advance the superblock's
    /// sequence number (`StoreInfo::seq`), and journal blocks, which do not. A commit with
    /// nothing to write is not counted.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Gives access to the block I/O object.
    pub fn io(&self) -> &I {
        &self.io
    }

    /// Drops the store (without committing) and returns the I/O object.
    pub fn into_io(self) -> I {
        self.io
    }
}
