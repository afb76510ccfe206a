// SPDX-License-Identifier: GPL-2.0

//! Space map: one bit per chunk in ping-pong bitmap blocks.
//!
//! Logical bitmap block `i` has two physical slots, `2 + 2i` and `3 + 2i`.
//! Bit `i` of the selector bits in the superblock names the slot holding the
//! committed version. The first change to block `i` in a transaction copies
//! the committed version into the other slot (stamped with the running
//! txid) and flips the selector bit in the in-progress superblock image.
//! A chunk is allocatable only if it is free in both the current and the
//! committed version, so chunks freed in a transaction are reused only after
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

    /// Sets (`set`) or clears a chunk's bit in the current version, copying
    /// the bitmap block first if this transaction has not changed it yet.
    /// Returns the chunk's bit in the committed version.
    pub(crate) fn bm_update(&mut self, nr: u64, set: bool) -> Result<bool> {
        if !self.g.in_data_area(nr) {
            return Err(Error::Corrupt {
                what: "space map: chunk outside the data area",
                block: nr,
            });
        }
        self.dirty = true;
        let i = nr / self.g.bits_per_bitmap;
        let bit = (nr % self.g.bits_per_bitmap) as usize;
        let off = BM_BITS + bit / 8;
        let mask = 1u8 << (bit % 8);
        let s = self.selector(i)?;
        let cur = self.g.bitmap_slot(i, s);
        let other = self.g.bitmap_slot(i, s ^ 1);
        let this_txn = {
            let h = self.read_valid(cur, BM_MAGIC)?;
            self.check_bm_index(&h, cur, i)?;
            rd64(&h, OFF_TXID)? == self.cur
        };
        if this_txn {
            let committed = {
                let c = self.read_valid(other, BM_MAGIC)?;
                self.check_bm_index(&c, other, i)?;
                rd8(&c, off)? & mask != 0
            };
            let mut h = self.read_valid(cur, BM_MAGIC)?;
            let v = rd8(&h, off)?;
            if (v & mask != 0) == set {
                return Err(flip_error(set, nr));
            }
            wr8(&mut h, off, v ^ mask)?;
            seal(&self.io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
            Ok(committed)
        } else {
            let src = self.read_valid(cur, BM_MAGIC)?;
            let v = rd8(&src, off)?;
            if (v & mask != 0) == set {
                return Err(flip_error(set, nr));
            }
            let mut dst = self.io.new_block(other)?;
            if dst.len() != self.g.block_size {
                return Err(Error::Io("block handle of wrong size"));
            }
            dst.copy_from_slice(&src);
            drop(src);
            wr64(&mut dst, OFF_BLOCKNR, other)?;
            wr64(&mut dst, OFF_TXID, self.cur)?;
            wr8(&mut dst, off, v ^ mask)?;
            seal(&self.io, &mut dst)?;
            dst.set_verified();
            dst.mark_dirty();
            drop(dst);
            let mut img = self.io.read(self.selector_block())?;
            let byte = usize::try_from(i / 8).map_err(|_| Error::Internal("bitmap index"))?;
            let sv = rd8(&img, SB_SELECTOR + byte)?;
            wr8(&mut img, SB_SELECTOR + byte, sv ^ (1 << (i % 8)))?;
            img.mark_dirty();
            Ok(v & mask != 0)
        }
    }

    /// Finds a chunk free in both versions of bitmap block `i` with bit
    /// index in `from..to`.
    fn find_free(&self, i: u64, from: u64, to: u64) -> Result<Option<u64>> {
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
        let mut w = from / 64;
        let last = (to - 1) / 64;
        while w <= last {
            let off = BM_BITS + (w as usize) * 8;
            let mut word = rd64(&h, off)?;
            if let Some(c) = &c {
                word |= rd64(c, off)?;
            }
            let mut free = !word;
            if w == from / 64 {
                free &= u64::MAX << (from % 64);
            }
            if w == last && to % 64 != 0 {
                free &= (1u64 << (to % 64)) - 1;
            }
            if free != 0 {
                return Ok(Some(w * 64 + free.trailing_zeros() as u64));
            }
            w += 1;
        }
        Ok(None)
    }

    /// Allocates one chunk.
    pub(crate) fn alloc(&mut self) -> Result<u64> {
        if self.allocatable()? == 0 {
            return Err(Error::NoSpace);
        }
        let g = self.g;
        let mut hint = self.sb.alloc_hint;
        if hint < g.fixed_end || hint >= g.nr_chunks {
            hint = g.fixed_end;
        }
        let i0 = hint / g.bits_per_bitmap;
        let j0 = hint % g.bits_per_bitmap;
        let bits_in = |i: u64| -> u64 {
            let first = i * g.bits_per_bitmap;
            (g.nr_chunks - first).min(g.bits_per_bitmap)
        };
        let mut found = None;
        for n in 0..=g.nr_bitmaps {
            let i = (i0 + n) % g.nr_bitmaps;
            let (from, to) = if n == 0 {
                (j0, bits_in(i))
            } else if n == g.nr_bitmaps {
                (0, j0.min(bits_in(i)))
            } else {
                (0, bits_in(i))
            };
            if let Some(b) = self.find_free(i, from, to)? {
                found = Some(i * g.bits_per_bitmap + b);
                break;
            }
        }
        let nr = found.ok_or(Error::Corrupt {
            what: "space map: no free chunk although counters say so",
            block: 0,
        })?;
        if !g.in_data_area(nr) {
            return Err(Error::Corrupt {
                what: "space map: fixed area marked free",
                block: nr,
            });
        }
        self.bm_update(nr, true)?;
        self.sb.alloc_hint = if nr + 1 >= g.nr_chunks {
            g.fixed_end
        } else {
            nr + 1
        };
        Ok(nr)
    }

    /// Allocates a metadata chunk.
    pub(crate) fn alloc_meta(&mut self) -> Result<u64> {
        let nr = self.alloc()?;
        self.sb.meta_chunks += 1;
        Ok(nr)
    }

    /// Allocates a data chunk, keeping the metadata reserve free.
    pub(crate) fn alloc_data(&mut self) -> Result<u64> {
        self.ensure(self.meta_reserve() + 1)?;
        let nr = self.alloc()?;
        self.sb.data_chunks += 1;
        Ok(nr)
    }

    /// Frees a chunk in the current version.
    fn free_chunk(&mut self, nr: u64) -> Result<()> {
        if self.bm_update(nr, false)? {
            self.deferred += 1;
        }
        Ok(())
    }

    /// Frees a data chunk.
    pub(crate) fn free_data(&mut self, nr: u64) -> Result<()> {
        self.free_chunk(nr)?;
        self.sb.data_chunks = self.sb.data_chunks.checked_sub(1).ok_or(Error::Corrupt {
            what: "data chunk counter underflow",
            block: 0,
        })?;
        Ok(())
    }

    /// Frees a metadata block whose header txid is `txid`.
    ///
    /// A block written in this transaction may still have a dirty buffer in
    /// the cache; if it were reused as a data chunk now, a later write-back
    /// of that buffer would overwrite the data. So it stays allocated, is
    /// linked into the garbage list and is freed at commit, after the
    /// commit's write-back.
    pub(crate) fn free_meta(&mut self, nr: u64, txid: u64) -> Result<()> {
        self.sb.meta_chunks = self.sb.meta_chunks.checked_sub(1).ok_or(Error::Corrupt {
            what: "metadata chunk counter underflow",
            block: 0,
        })?;
        if txid == self.cur {
            {
                let mut h = self.io.new_block(nr)?;
                if h.len() != self.g.block_size {
                    return Err(Error::Io("block handle of wrong size"));
                }
                h.fill(0);
                wr32(&mut h, OFF_MAGIC, GARBAGE_MAGIC)?;
                wr64(&mut h, OFF_BLOCKNR, nr)?;
                wr64(&mut h, OFF_TXID, self.cur)?;
                wr64(&mut h, GB_NEXT, self.garbage_head)?;
                seal(&self.io, &mut h)?;
                h.set_verified();
                h.mark_dirty();
            }
            self.garbage_head = nr;
            self.garbage_count += 1;
            self.dirty = true;
            Ok(())
        } else {
            self.free_chunk(nr)
        }
    }
}

/// The error for allocating an allocated chunk or freeing a free one.
fn flip_error(set: bool, nr: u64) -> Error {
    Error::Corrupt {
        what: if set {
            "space map: allocating an allocated chunk"
        } else {
            "space map: freeing a free chunk"
        },
        block: nr,
    }
}
