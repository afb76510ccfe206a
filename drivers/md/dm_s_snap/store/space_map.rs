// SPDX-License-Identifier: GPL-2.0

//! Space map: one bit per metadata block in ping-pong bitmap blocks. A data
//! chunk takes the aligned group of blocks it covers.
//!
//! Logical bitmap block `i` has two physical slots, `2 + 2i` and `3 + 2i`.
//! Bit `i` of the selector bits in the superblock names the slot holding the
//! committed version. The first change to block `i` in a transaction copies
//! the committed version into the other slot (stamped with the running
//! txid) and flips the selector bit in the in-progress superblock image.
//! A block is allocatable only if it is free in both the current and the
//! committed version, so blocks freed in a transaction are reused only after
//! the commit.

use super::error::{Error, Result};
use super::format::*;
use super::io::{BlockHandle, BlockIo};
use super::txn::Store;

impl<I: BlockIo> Store<I> {
    /// Selector bit of bitmap block `i` in the current state.
    pub(crate) fn selector(&self, i: u64) -> Result<u8> {
        let h = self.io.read(self.selector_block())?;
        let byte = usize::try_from(i / 8).map_err(|_| Error::Internal("bitmap index"))?;
        let v = rd8(&h, SB_SELECTOR + byte)?;
        Ok((v >> (i % 8)) & 1)
    }

    /// Checks a bitmap block's index field.
    fn check_bm_index(&self, b: &[u8], nr: u64, i: u64) -> Result<()> {
        if rd32(b, BM_INDEX)? as u64 != i {
            return Err(Error::Corrupt {
                what: "bitmap: wrong index",
                block: nr,
            });
        }
        Ok(())
    }

    /// Returns (slot block of the current version, slot block of the
    /// committed version) of bitmap block `i`.
    pub(crate) fn bitmap_versions(&self, i: u64) -> Result<(u64, u64)> {
        let s = self.selector(i)?;
        let cur = self.g.bitmap_slot(i, s);
        let h = self.read_valid(cur, BM_MAGIC)?;
        self.check_bm_index(&h, cur, i)?;
        let t = rd64(&h, OFF_TXID)?;
        if self.rw && t == self.cur {
            Ok((cur, self.g.bitmap_slot(i, s ^ 1)))
        } else {
            Ok((cur, cur))
        }
    }

    /// Sets (`set`) or clears the bits of blocks `first..first + len` in the
    /// current version, copying the bitmap block first if this transaction
    /// has not changed it yet. The range lies in one bitmap block (a block
    /// or a chunk). Returns how many of the blocks the committed version
    /// uses.
    pub(crate) fn bm_update(&mut self, first: u64, len: u64, set: bool) -> Result<u64> {
        self.bm_update_ranges(&[(first, len)], set)
    }

    /// [`Store::bm_update`] for several block ranges `(first, len)` that
    /// lie in one bitmap block, with one change of that block: the block is
    /// copied and sealed once for all of them. Returns how many of their
    /// blocks the committed version uses.
    pub(crate) fn bm_update_ranges(&mut self, ranges: &[(u64, u64)], set: bool) -> Result<u64> {
        let Some(&(first0, _)) = ranges.first() else {
            return Ok(0);
        };
        let i = first0 / self.g.bits_per_bitmap;
        for &(first, len) in ranges {
            let last = first
                .checked_add(len)
                .ok_or(Error::Internal("block range"))?;
            if len == 0 || !self.g.in_data_area(first) || last > self.g.nr_blocks {
                return Err(Error::Corrupt {
                    what: "space map: block outside the data area",
                    block: first,
                });
            }
            if first / self.g.bits_per_bitmap != i
                || first % self.g.bits_per_bitmap + len > self.g.bits_per_bitmap
            {
                return Err(Error::Internal("space map range straddles bitmap blocks"));
            }
        }
        self.touch();
        let s = self.selector(i)?;
        let cur = self.g.bitmap_slot(i, s);
        let other = self.g.bitmap_slot(i, s ^ 1);
        let bpb = self.g.bits_per_bitmap;
        let bit0 = |first: u64| first % bpb;
        // At most two handles at a time: the current copy, and the committed one or the copy
        // this transaction starts.
        let mut committed = 0;
        let h = self.read_valid(cur, BM_MAGIC)?;
        self.check_bm_index(&h, cur, i)?;
        if rd64(&h, OFF_TXID)? == self.cur {
            let mut h = h;
            {
                let c = self.read_valid(other, BM_MAGIC)?;
                self.check_bm_index(&c, other, i)?;
                for &(first, len) in ranges {
                    committed += count_bits(&c, bit0(first), len)?;
                }
            }
            for &(first, len) in ranges {
                flip_bits(&mut h, bit0(first), len, set, first)?;
            }
            seal(&self.io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
        } else {
            let mut dst = self.io.new_block(other)?;
            if dst.len() != self.g.block_size {
                return Err(Error::Io("block handle of wrong size"));
            }
            dst.copy_from_slice(&h);
            drop(h);
            // The committed version is the one copied.
            for &(first, len) in ranges {
                committed += count_bits(&dst, bit0(first), len)?;
            }
            for &(first, len) in ranges {
                flip_bits(&mut dst, bit0(first), len, set, first)?;
            }
            wr64(&mut dst, OFF_BLOCKNR, other)?;
            wr64(&mut dst, OFF_TXID, self.cur)?;
            seal(&self.io, &mut dst)?;
            dst.set_verified();
            dst.mark_dirty();
            drop(dst);
            let mut img = self.io.read(self.selector_block())?;
            let byte = usize::try_from(i / 8).map_err(|_| Error::Internal("bitmap index"))?;
            let sv = rd8(&img, SB_SELECTOR + byte)?;
            wr8(&mut img, SB_SELECTOR + byte, sv ^ (1 << (i % 8)))?;
            img.mark_dirty();
        }
        Ok(committed)
    }

    /// Finds, in bitmap block `i`, the first group of `group` blocks
    /// (aligned to `group`) free in both versions and starting at a bit in
    /// `from..to`. With `partial`, only a block (`group` must be 1) of a
    /// chunk that is not entirely free qualifies: metadata fills chunks
    /// already used by metadata before it takes a free chunk from the data.
    fn find_free(
        &self,
        i: u64,
        from: u64,
        to: u64,
        group: u64,
        partial: Option<u64>,
    ) -> Result<Option<u64>> {
        let from = from.next_multiple_of(group);
        if from >= to {
            return Ok(None);
        }
        let (cur, com) = self.bitmap_versions(i)?;
        let h = self.read_valid(cur, BM_MAGIC)?;
        let c = if com != cur {
            let c = self.read_valid(com, BM_MAGIC)?;
            self.check_bm_index(&c, com, i)?;
            Some(c)
        } else {
            None
        };
        let used = |w: u64| -> Result<u64> {
            let off = BM_BITS + (w as usize) * 8;
            let mut word = rd64(&h, off)?;
            if let Some(c) = &c {
                word |= rd64(c, off)?;
            }
            Ok(word)
        };
        if group >= 64 {
            // A group is `group / 64` whole words.
            let words = group / 64;
            let mut start = from;
            while start < to {
                let w0 = start / 64;
                let mut all_free = true;
                for w in w0..w0 + words {
                    if used(w)? != 0 {
                        all_free = false;
                        break;
                    }
                }
                if all_free {
                    return Ok(Some(start));
                }
                start += group;
            }
            return Ok(None);
        }
        let mut w = from / 64;
        let last = (to - 1) / 64;
        while w <= last {
            let word = used(w)?;
            let mut starts = match partial {
                // A chunk of one or more whole words: its blocks qualify
                // unless all of its words are free.
                Some(chunk) if chunk >= 64 => {
                    let w0 = w - w % (chunk / 64);
                    let mut chunk_free = true;
                    for x in w0..w0 + chunk / 64 {
                        if used(x)? != 0 {
                            chunk_free = false;
                            break;
                        }
                    }
                    if chunk_free {
                        0
                    } else {
                        !word
                    }
                }
                Some(chunk) => !word & !spread(free_groups(!word, chunk), chunk),
                None => free_groups(!word, group),
            };
            if w == from / 64 {
                starts &= u64::MAX << (from % 64);
            }
            if w == last && to % 64 != 0 {
                starts &= (1u64 << (to % 64)) - 1;
            }
            if starts != 0 {
                return Ok(Some(w * 64 + starts.trailing_zeros() as u64));
            }
            w += 1;
        }
        Ok(None)
    }

    /// Bits of bitmap block `i` that stand for blocks of the store.
    fn bits_in(&self, i: u64) -> u64 {
        let first = i * self.g.bits_per_bitmap;
        (self.g.nr_blocks - first).min(self.g.bits_per_bitmap)
    }

    /// Finds a free group of `group` blocks, trying block `hint` first and
    /// then every block after it, around the device.
    fn find_group(&self, group: u64, hint: u64) -> Result<Option<u64>> {
        let g = self.g;
        let hint = if hint < g.fixed_end || hint >= g.nr_blocks {
            g.fixed_end
        } else {
            hint
        };
        let i0 = hint / g.bits_per_bitmap;
        let j0 = hint % g.bits_per_bitmap;
        for n in 0..=g.nr_bitmaps {
            let i = (i0 + n) % g.nr_bitmaps;
            let (from, to) = if n == 0 {
                (j0, self.bits_in(i))
            } else if n == g.nr_bitmaps {
                (0, j0.min(self.bits_in(i)))
            } else {
                (0, self.bits_in(i))
            };
            if let Some(b) = self.find_free(i, from, to, group, None)? {
                return Ok(Some(i * g.bits_per_bitmap + b));
            }
        }
        Ok(None)
    }

    /// Marks `len` blocks from `first` allocated after checking that the
    /// allocator did not hand out the fixed area.
    fn take(&mut self, first: u64, len: u64) -> Result<()> {
        if !self.g.in_data_area(first) {
            return Err(Error::Corrupt {
                what: "space map: fixed area marked free",
                block: first,
            });
        }
        self.bm_update(first, len, true)?;
        Ok(())
    }

    /// Allocates a metadata block.
    pub(crate) fn alloc_meta(&mut self) -> Result<u64> {
        if self.allocatable()? == 0 {
            return Err(Error::NoSpace);
        }
        let g = self.g;
        let hint = self.sb.alloc_hint;
        // First a free block of a chunk metadata already uses, anywhere in
        // the hint's bitmap block (the blocks of nodes replaced by earlier
        // commits), so that metadata stays packed and whole chunks stay
        // free for data; then any free block from the hint on.
        let mut found = None;
        if g.chunk_blocks > 1 && hint >= g.fixed_end && hint < g.nr_blocks {
            let i = hint / g.bits_per_bitmap;
            if let Some(b) = self.find_free(i, 0, self.bits_in(i), 1, Some(g.chunk_blocks))? {
                found = Some(i * g.bits_per_bitmap + b);
            }
        }
        if found.is_none() {
            found = self.find_group(1, hint)?;
        }
        let nr = found.ok_or(Error::Corrupt {
            what: "space map: no free block although counters say so",
            block: 0,
        })?;
        self.take(nr, 1)?;
        self.sb.meta_blocks += 1;
        self.sb.alloc_hint = nr;
        Ok(nr)
    }

    /// Allocates a data chunk, keeping the metadata reserve free. Fails
    /// with [`Error::NoSpace`] when no whole chunk is free, even if enough
    /// blocks are (metadata occupies part of every partly free chunk).
    pub(crate) fn alloc_data(&mut self) -> Result<u64> {
        let g = self.g;
        // Besides the reserve, keep what the completions of the outstanding plans and of the
        // plan this chunk is for may need: a completion then never fails for want of space
        // (the target may have acknowledged the write that a completion records).
        let completions = (self.outstanding + 1).saturating_mul(self.completion_need());
        self.ensure(
            self.meta_reserve()
                .saturating_add(completions)
                .saturating_add(g.chunk_blocks),
        )?;
        let hint = self.sb.data_hint.saturating_mul(g.chunk_blocks);
        let first = self
            .find_group(g.chunk_blocks, hint)?
            .ok_or(Error::NoSpace)?;
        self.take(first, g.chunk_blocks)?;
        let c = first / g.chunk_blocks;
        self.sb.data_chunks += 1;
        self.sb.data_hint = if c + 1 >= g.nr_chunks { 0 } else { c + 1 };
        Ok(c)
    }

    /// Frees `len` blocks from `first` in the current version.
    fn free_blocks(&mut self, first: u64, len: u64) -> Result<()> {
        self.deferred += self.bm_update(first, len, false)?;
        Ok(())
    }

    /// Queues the `len` blocks from `first`, which one bitmap block holds, for
    /// [`Store::flush_frees`]: data chunks (`what`) or metadata blocks of an
    /// earlier transaction. Flushes the queue first if it holds another bitmap
    /// block's ranges or is full.
    fn queue_free(&mut self, q: &mut QueuedFrees, first: u64, len: u64, what: Freed) -> Result<()> {
        let bitmap = first / self.g.bits_per_bitmap;
        if q.len != 0 && q.bitmap != bitmap {
            self.flush_frees(q)?;
        }
        // Adjacent to the last range queued: one range (a run of chunks spread over leaves).
        if let Some(last) = q.len.checked_sub(1).and_then(|l| q.ranges.get_mut(l)) {
            if last.2 == what && last.0.checked_add(last.1) == Some(first) {
                last.1 += len;
                return Ok(());
            }
        }
        if q.len == QUEUED_FREES {
            self.flush_frees(q)?;
        }
        let slot = q
            .ranges
            .get_mut(q.len)
            .ok_or(Error::Internal("free queue"))?;
        *slot = (first, len, what);
        q.len += 1;
        q.bitmap = bitmap;
        Ok(())
    }

    /// Frees what `q` holds, with one change of its bitmap block, and counts
    /// it free.
    pub(crate) fn flush_frees(&mut self, q: &mut QueuedFrees) -> Result<()> {
        let n = core::mem::take(&mut q.len);
        let queued = q.ranges.get(..n).unwrap_or(&[]);
        let mut ranges = [(0u64, 0u64); QUEUED_FREES];
        let (mut data_blocks, mut meta_blocks) = (0u64, 0u64);
        for (r, &(first, len, what)) in ranges.iter_mut().zip(queued) {
            *r = (first, len);
            match what {
                Freed::Data => data_blocks += len,
                Freed::Meta => meta_blocks += len,
            }
        }
        self.deferred += self.bm_update_ranges(ranges.get(..n).unwrap_or(&[]), false)?;
        let underflow = |what| Error::Corrupt { what, block: 0 };
        self.sb.data_chunks = self
            .sb
            .data_chunks
            .checked_sub(data_blocks / self.g.chunk_blocks)
            .ok_or(underflow("data chunk counter underflow"))?;
        self.sb.meta_blocks = self
            .sb
            .meta_blocks
            .checked_sub(meta_blocks)
            .ok_or(underflow("metadata block counter underflow"))?;
        Ok(())
    }

    /// Frees a data chunk.
    ///
    /// While committed journal blocks follow the checkpoint, the chunk may be one they name
    /// (a copy made since the checkpoint): a crash before the next checkpoint replays its
    /// exception, so nothing may be written to it until then. It stays allocated in the
    /// bitmap, is counted free but not allocatable, and is listed for the next checkpoint
    /// to free ([`Store::release_deferred_frees`]).
    pub(crate) fn free_data(&mut self, c: u64) -> Result<()> {
        if !self.g.chunk_in_data_area(c) {
            return Err(Error::Corrupt {
                what: "space map: chunk outside the data area",
                block: c,
            });
        }
        if self.journal_names_chunks() {
            self.defer_free(c)?;
        } else {
            self.free_blocks(self.g.chunk_block(c), self.g.chunk_blocks)?;
        }
        self.sb.data_chunks = self.sb.data_chunks.checked_sub(1).ok_or(Error::Corrupt {
            what: "data chunk counter underflow",
            block: 0,
        })?;
        Ok(())
    }

    /// Frees data chunks `chunks` (sorted here), all runs of adjacent chunks
    /// that one bitmap block holds with one change of it: freeing a leaf's
    /// worth of chunks seals each bitmap block once, where
    /// [`Store::free_data`] seals it for every chunk.
    pub(crate) fn free_data_chunks(&mut self, chunks: &mut [u64]) -> Result<()> {
        chunks.sort_unstable();
        let mut q = QueuedFrees::new();
        let mut rest: &[u64] = chunks;
        while let Some((&first, _)) = rest.split_first() {
            let mut len = 1;
            while rest.get(len).copied() == first.checked_add(len as u64) {
                len += 1;
            }
            self.queue_data_run(&mut q, first, len as u64)?;
            rest = rest.get(len..).unwrap_or(&[]);
        }
        self.flush_frees(&mut q)
    }

    /// Queues the `len` adjacent data chunks from `first` in `q`, to be freed
    /// by [`Store::flush_frees`] with the other runs of their bitmap block.
    /// (Frees them at once while the journal names chunks: see
    /// [`Store::free_data`].)
    pub(crate) fn queue_data_run(
        &mut self,
        q: &mut QueuedFrees,
        first: u64,
        len: u64,
    ) -> Result<()> {
        let end = first
            .checked_add(len)
            .ok_or(Error::Internal("chunk range"))?;
        if self.journal_names_chunks() {
            for c in first..end {
                self.free_data(c)?;
            }
            return Ok(());
        }
        // One range per bitmap block the run touches, found without a division per chunk: a
        // reclaim frees runs of thousands of chunks.
        let mut c = first;
        while c < end {
            let outside = |block| Error::Corrupt {
                what: "space map: chunk outside the data area",
                block,
            };
            if !self.g.chunk_in_data_area(c) {
                return Err(outside(c));
            }
            let block = self.g.chunk_block(c);
            // The chunks whose first block the same bitmap block covers.
            let bitmap_end = (block / self.g.bits_per_bitmap)
                .checked_add(1)
                .and_then(|b| b.checked_mul(self.g.bits_per_bitmap))
                .map_or(u64::MAX, |b| b.div_ceil(self.g.chunk_blocks));
            let next = end.min(bitmap_end);
            // The chunks after `c` up to `next` are in the data area too if they are inside
            // the store: the fixed area ends before `c`, and the slots of a bitmap block added
            // by growth are its first two blocks, where its first chunks start: `c` would be
            // one of them.
            if next > self.g.nr_chunks {
                return Err(outside(self.g.nr_chunks));
            }
            self.queue_free(q, block, (next - c) * self.g.chunk_blocks, Freed::Data)?;
            c = next;
        }
        Ok(())
    }

    /// Lists data chunk `c` to be freed by the next checkpoint (see [`Store::free_data`]).
    fn defer_free(&mut self, c: u64) -> Result<()> {
        self.touch();
        let full = self.deferred_blocks == 0 || {
            let h = self.read_valid(self.deferred_head, DEFERRED_MAGIC)?;
            rd32(&h, DF_COUNT)? as usize >= DF_CAPACITY
        };
        if full {
            let nr = self.alloc_meta()?;
            let mut h =
                new_block_with_header(&self.io, self.g.block_size, nr, DEFERRED_MAGIC, self.cur)?;
            wr64(&mut h, DF_NEXT, self.deferred_head)?;
            seal(&self.io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
            self.deferred_head = nr;
            self.deferred_blocks += 1;
        }
        {
            let mut h = self.read_valid(self.deferred_head, DEFERRED_MAGIC)?;
            let n = rd32(&h, DF_COUNT)? as usize;
            wr64(&mut h, DF_ENTRIES + 8 * n, c)?;
            wr32(&mut h, DF_COUNT, n as u32 + 1)?;
            seal(&self.io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
        }
        // Counted free, allocatable only after the checkpoint.
        self.deferred = self.deferred.saturating_add(self.g.chunk_blocks);
        Ok(())
    }

    /// The deferred chunk frees, block by block: `f(block, chunks)` for each block of the
    /// list (for the checker).
    pub(crate) fn deferred_frees(
        &self,
        mut f: impl FnMut(u64, &mut dyn Iterator<Item = u64>) -> Result<()>,
    ) -> Result<()> {
        let mut nr = self.deferred_head;
        for _ in 0..self.deferred_blocks {
            let h = self.read_valid(nr, DEFERRED_MAGIC)?;
            if rd64(&h, OFF_TXID)? != self.cur {
                return Err(Error::Internal("deferred frees of another transaction"));
            }
            let n = (rd32(&h, DF_COUNT)? as usize).min(DF_CAPACITY);
            let next = rd64(&h, DF_NEXT)?;
            let mut chunks = (0..n).filter_map(|j| rd64(&h, DF_ENTRIES + 8 * j).ok());
            f(nr, &mut chunks)?;
            nr = next;
        }
        Ok(())
    }

    /// At a checkpoint: frees the chunks whose frees were deferred to it, and the blocks of
    /// their list (freed in their own transaction: their dirty buffers are written by the
    /// commit before anything can reuse them, as the released blocks').
    pub(crate) fn release_deferred_frees(&mut self) -> Result<()> {
        while self.deferred_blocks != 0 {
            let nr = self.deferred_head;
            let (next, n) = {
                let h = self.read_valid(nr, DEFERRED_MAGIC)?;
                if rd64(&h, OFF_TXID)? != self.cur {
                    return Err(Error::Internal("deferred frees of another transaction"));
                }
                (
                    rd64(&h, DF_NEXT)?,
                    (rd32(&h, DF_COUNT)? as usize).min(DF_CAPACITY),
                )
            };
            for j in 0..n {
                let c = {
                    let h = self.read_valid(nr, DEFERRED_MAGIC)?;
                    rd64(&h, DF_ENTRIES + 8 * j)?
                };
                if !self.g.chunk_in_data_area(c) {
                    return Err(Error::Corrupt {
                        what: "space map: deferred chunk outside the data area",
                        block: c,
                    });
                }
                self.bm_update(self.g.chunk_block(c), self.g.chunk_blocks, false)?;
            }
            // Unlinked before its block is freed, as the released blocks are.
            self.deferred_head = next;
            self.deferred_blocks -= 1;
            self.bm_update(nr, 1, false)?;
            self.sb.meta_blocks = self.sb.meta_blocks.checked_sub(1).ok_or(Error::Corrupt {
                what: "metadata block counter underflow",
                block: 0,
            })?;
        }
        self.deferred_head = 0;
        Ok(())
    }

    /// Frees a metadata block whose header txid is `txid`.
    pub(crate) fn free_meta(&mut self, nr: u64, txid: u64) -> Result<()> {
        let mut q = QueuedFrees::new();
        self.queue_free_meta(&mut q, nr, txid)?;
        self.flush_frees(&mut q)
    }

    /// Frees a metadata block whose header txid is `txid`; one of an earlier
    /// transaction is queued in `q`, for [`Store::flush_frees`].
    ///
    /// A block written in this transaction may still have a dirty buffer in
    /// the cache; if it were reused as part of a data chunk now, a later
    /// write-back of that buffer would overwrite the data. So it stays
    /// allocated, is linked into the garbage list and is freed at commit,
    /// after the commit's write-back.
    pub(crate) fn queue_free_meta(
        &mut self,
        q: &mut QueuedFrees,
        nr: u64,
        txid: u64,
    ) -> Result<()> {
        if txid != self.cur {
            return self.queue_free(q, nr, 1, Freed::Meta);
        }
        self.sb.meta_blocks = self.sb.meta_blocks.checked_sub(1).ok_or(Error::Corrupt {
            what: "metadata block counter underflow",
            block: 0,
        })?;
        {
            let mut h =
                new_block_with_header(&self.io, self.g.block_size, nr, GARBAGE_MAGIC, self.cur)?;
            wr64(&mut h, GB_NEXT, self.garbage_head)?;
            seal(&self.io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
        }
        self.garbage_head = nr;
        self.garbage_count += 1;
        self.touch();
        Ok(())
    }
}

/// Ranges of blocks to free queued per [`QueuedFrees`].
const QUEUED_FREES: usize = 8;

/// What a queued range of blocks held.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freed {
    /// Whole data chunks.
    Data,
    /// Metadata blocks.
    Meta,
}

/// Ranges of blocks that one bitmap block holds, queued to be freed with one
/// change of that block ([`Store::flush_frees`]): a reclaim step that frees
/// many leaves and runs of chunks copies and seals each bitmap block once,
/// not once per run. The counters change when the bitmap does, so that
/// nothing can count queued blocks as allocatable.
pub(crate) struct QueuedFrees {
    /// The bitmap block that holds the queued ranges.
    bitmap: u64,
    ranges: [(u64, u64, Freed); QUEUED_FREES],
    len: usize,
}

impl QueuedFrees {
    /// An empty queue.
    pub(crate) const fn new() -> Self {
        QueuedFrees {
            bitmap: 0,
            ranges: [(0, 0, Freed::Data); QUEUED_FREES],
            len: 0,
        }
    }
}

/// Byte offset and mask of bit `bit` of a bitmap block.
fn bit_pos(bit: u64) -> (usize, u8) {
    (BM_BITS + (bit / 8) as usize, 1u8 << (bit % 8))
}

/// Calls `f(offset, mask, bit)` for each byte of a bitmap block that holds
/// some of the bits `bit0..bit0 + len`, in order: `mask` selects them in the
/// byte, and `bit` is the first of them. A chunk's blocks or a run of
/// chunks take whole bytes, which are then handled at once.
fn for_each_bitmap_byte(
    bit0: u64,
    len: u64,
    mut f: impl FnMut(usize, u8, u64) -> Result<()>,
) -> Result<()> {
    let end = bit0
        .checked_add(len)
        .ok_or(Error::Internal("bitmap range"))?;
    let mut bit = bit0;
    while bit < end {
        let at = bit % 8;
        let n = (8 - at).min(end - bit);
        // n is 1..=8 and at + n <= 8: the mask fits in the byte.
        let mask = (((1u16 << n) - 1) << at) as u8;
        let (off, _) = bit_pos(bit);
        f(off, mask, bit)?;
        bit += n;
    }
    Ok(())
}

/// How many of the bits `bit0..bit0 + len` of a bitmap block are set.
pub(crate) fn count_bits(b: &[u8], bit0: u64, len: u64) -> Result<u64> {
    let mut set = 0u64;
    for_each_bitmap_byte(bit0, len, |off, mask, _| {
        set += u64::from((rd8(b, off)? & mask).count_ones());
        Ok(())
    })?;
    Ok(set)
}

/// Sets or clears `len` bits from `bit0` of a bitmap block; every one must
/// be in the other state (`first` names the first block, for the error).
pub(crate) fn flip_bits(b: &mut [u8], bit0: u64, len: u64, set: bool, first: u64) -> Result<()> {
    for_each_bitmap_byte(bit0, len, |off, mask, bit| {
        let v = rd8(b, off)?;
        let wrong = if set { v & mask } else { !v & mask };
        if wrong != 0 {
            let bad = bit - bit % 8 + u64::from(wrong.trailing_zeros());
            return Err(flip_error(set, first + (bad - bit0)));
        }
        wr8(b, off, v ^ mask)
    })
}

/// The bits of `free` that start an aligned run of `group` (a power of two
/// below 64) set bits.
fn free_groups(free: u64, group: u64) -> u64 {
    let mut runs = free;
    let mut shift = 1;
    while shift < group {
        runs &= runs >> shift;
        shift *= 2;
    }
    runs & group_starts(group)
}

/// Bits at the multiples of `group` (a power of two up to 64).
fn group_starts(group: u64) -> u64 {
    let mut starts = 0u64;
    let mut bit = 0;
    while bit < 64 {
        starts |= 1 << bit;
        bit += group;
    }
    starts
}

/// Extends each start bit of `starts` over its group of `group` bits (a
/// power of two below 64; the groups do not overlap, so nothing carries).
fn spread(starts: u64, group: u64) -> u64 {
    starts.wrapping_mul((1u64 << group) - 1)
}

/// The error for allocating an allocated block or freeing a free one.
pub(crate) fn flip_error(set: bool, nr: u64) -> Error {
    Error::Corrupt {
        what: if set {
            "space map: allocating an allocated block"
        } else {
            "space map: freeing a free block"
        },
        block: nr,
    }
}
