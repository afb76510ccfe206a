// SPDX-License-Identifier: GPL-2.0

//! Growing the store into a larger COW device.
//!
//! The fixed area at the start of the device has the slots of the bitmap blocks the store was
//! formatted with; it cannot grow in place, since metadata and data follow it. A bitmap block
//! that growth adds keeps its two slots in the first two blocks it covers instead (the first
//! chunk it covers, which metadata may share), and the superblock records how many bitmap
//! blocks have their slots in the fixed area (feature flag [`SB_FLAG_GROWN`], so that a module
//! that does not know this layout refuses the store). Growth is one transaction: the new bitmap
//! blocks are written in space the committed state does not use, and the commit's superblock
//! write switches to the new size, so a crash leaves the old size or the new one.

use super::error::{Error, Result};
use super::format::*;
use super::io::{BlockHandle, BlockIo};
use super::txn::Store;

impl<I: BlockIo> Store<I> {
    /// Grows the store to manage `nr_chunks` chunks (at most what the device holds and the
    /// format allows, see [`Store::grow_target`]), from the next commit on. Returns the chunks
    /// the store manages now; a smaller `nr_chunks` changes nothing (shrinking is refused when
    /// the store is opened on a device smaller than it).
    ///
    /// Errors: [`Error::Busy`] while plans are outstanding.
    pub fn grow(&mut self, nr_chunks: u64) -> Result<u64> {
        self.writable()?;
        if self.outstanding != 0 || self.journal.writing {
            return Err(Error::Busy);
        }
        let r = self.grow_inner(nr_chunks);
        self.guard(r)
    }

    /// The chunks a store growing towards `nr_chunks` chunks gets: no more than the device
    /// holds and the selector bits allow, and not ending inside the chunk that holds the slots
    /// of an added bitmap block (such a tail is left unused).
    pub fn grow_target(&self, nr_chunks: u64) -> u64 {
        let g = self.g;
        // Neither `chunk_blocks` nor `bits_per_bitmap` is 0 (see `Geometry::new`).
        let per_chunk = g.chunk_blocks.max(1);
        let per_bitmap = g.bits_per_bitmap.max(1);
        let mut n = nr_chunks
            .min(Geometry::max_chunks(g.chunk_sectors))
            .min(self.io.nr_blocks() / per_chunk);
        loop {
            let blocks = n * per_chunk;
            let bitmaps = blocks.div_ceil(per_bitmap);
            if bitmaps <= g.nr_bitmaps {
                return n;
            }
            let last_first = (bitmaps - 1) * per_bitmap;
            if blocks >= last_first + 2 * per_chunk.max(2) {
                return n;
            }
            // A bitmap block covers whole chunks (its size is a multiple of every chunk).
            n = last_first / per_chunk;
        }
    }

    fn grow_inner(&mut self, nr_chunks: u64) -> Result<u64> {
        let old = self.g;
        let target = self.grow_target(nr_chunks);
        if target <= old.nr_chunks {
            return Ok(old.nr_chunks);
        }
        let g = Geometry::grown(old.chunk_sectors, target, old.fixed_bitmaps)?;
        for i in old.nr_bitmaps..g.nr_bitmaps {
            self.write_added_bitmap(&g, i)?;
        }
        let added = g.grown_bitmaps() - old.grown_bitmaps();
        self.sb.nr_chunks = target;
        self.sb.nr_bitmaps = u32::try_from(g.nr_bitmaps).map_err(|_| Error::Internal("bitmaps"))?;
        self.sb.meta_blocks += 2 * added;
        self.g = g;
        self.touch();
        Ok(target)
    }

    /// Writes slot 0 of added bitmap block `i`: every block free but its own two slots. It
    /// carries the committed transaction's id, as if committed: the first change in this
    /// transaction then shadows it into slot 1 like any bitmap block, and until the commit
    /// nothing refers to it (its selector bit is 0, as for every bitmap past the old count).
    fn write_added_bitmap(&self, g: &Geometry, i: u64) -> Result<()> {
        let nr = g.bitmap_slot(i, 0);
        let mut h =
            new_block_with_header(&self.io, g.block_size, nr, BM_MAGIC, self.sb.committed_txid)?;
        wr32(
            &mut h,
            BM_INDEX,
            u32::try_from(i).map_err(|_| Error::Internal("bitmap index"))?,
        )?;
        // Bits 0 and 1: the slots, the first two blocks this bitmap block covers.
        wr8(&mut h, BM_BITS, 0b11)?;
        seal(&self.io, &mut h)?;
        h.set_verified();
        h.mark_dirty();
        Ok(())
    }
}
