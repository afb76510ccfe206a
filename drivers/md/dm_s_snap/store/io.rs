// SPDX-License-Identifier: GPL-2.0

//! Block I/O abstraction of the exception store.
//!
//! It mirrors dm-bufio: [`BlockIo::read`] is `dm_bufio_read`,
//! [`BlockIo::new_block`] is `dm_bufio_new`, [`BlockHandle::mark_dirty`] is
//! `dm_bufio_mark_buffer_dirty`, dropping a handle is `dm_bufio_release`,
//! [`BlockIo::write_dirty`] is `dm_bufio_write_dirty_buffers` (which ends
//! with a cache flush), [`BlockIo::flush`] is `dm_bufio_issue_flush` and
//! [`BlockIo::commit_block`] is a write-back without a flush followed by
//! one block written around the cache with `REQ_PREFLUSH | REQ_FUA`.
//!
//! Semantics the store relies on (and nothing more):
//!
//! * A dirty block may be written to disk at any time, also while it is held
//!   and before [`BlockIo::write_dirty`] is called (cache eviction,
//!   write-back). The store recomputes a block's checksum before it releases
//!   a handle it modified, and makes sure that uncommitted blocks on disk are
//!   never taken for committed ones.
//! * [`BlockIo::write_dirty`] returns after every block that was dirty when it
//!   was called has been written and a cache flush that followed them has
//!   completed: everything written before it returns, those blocks and any
//!   other writes to the device that completed before it (chunk copies), is
//!   on stable storage (or it returns an error). The store commits with it
//!   alone: a separate flush after it would be a second, empty one, and each
//!   flush costs a disk's cache flush time.
//! * [`BlockIo::flush`] returns after everything written before it is on
//!   stable storage.
//! * [`BlockIo::commit_block`] writes every dirty block and waits for the
//!   writes, then writes the contents of the handle it is given to that
//!   handle's block with `REQ_PREFLUSH | REQ_FUA`, and returns after that
//!   write completed: then everything written before (those blocks, chunk
//!   copies) and the block are on stable storage, for one cache flush, and
//!   a crash at any moment before leaves the block unwritten, or written
//!   with everything before it durable. The handle must not be marked dirty
//!   (write-back could otherwise write the block before the rest); reading
//!   the block again returns the contents written.
//! * A handle's changes reach the cache when it is dropped, and only if it
//!   was marked dirty (the kernel's handles work on a private copy of the
//!   block, so that no `&mut [u8]` to a buffer that write-back may be
//!   reading ever exists): the store marks every block it modifies dirty,
//!   and never calls [`BlockIo::write_dirty`] while it holds a handle to a
//!   modified block.
//! * The store never holds two handles to the same block at the same time,
//!   and never more than two handles at all (so a dm-bufio client with two
//!   or more reserved buffers always makes progress).

use super::error::Error;
use core::ops::{Deref, DerefMut};

/// A held metadata block: its contents are the block's bytes.
///
/// The handle releases the block when dropped.
pub trait BlockHandle: Deref<Target = [u8]> + DerefMut {
    /// Marks the block dirty: it will be written by the next
    /// [`BlockIo::write_dirty`] at the latest.
    fn mark_dirty(&mut self);
    /// True if the store validated these contents (checksum) since they were
    /// last read from disk. A freshly read block must report `false`.
    fn is_verified(&self) -> bool;
    /// Records that the store validated (or itself produced) the contents.
    /// The flag must be cleared whenever the block is re-read from disk.
    fn set_verified(&mut self);
}

/// Cached block access to the COW device in metadata blocks of
/// [`META_BLOCK_SIZE`](super::META_BLOCK_SIZE) (4 KiB) bytes, whatever the
/// chunk size.
pub trait BlockIo {
    /// A held block.
    type Block<'a>: BlockHandle
    where
        Self: 'a;

    /// Block size in bytes: the store refuses any other than 4096.
    fn block_size(&self) -> usize;
    /// Size of the device in blocks.
    fn nr_blocks(&self) -> u64;
    /// Reads a block (from the cache if present).
    fn read(&self, nr: u64) -> Result<Self::Block<'_>, Error>;
    /// Gets a block without reading it: its contents are undefined and the
    /// caller overwrites all of them.
    fn new_block(&self, nr: u64) -> Result<Self::Block<'_>, Error>;
    /// Writes all dirty blocks, waits for the writes, then flushes the
    /// device's write cache and waits for that.
    fn write_dirty(&self) -> Result<(), Error>;
    /// Issues a cache flush (REQ_PREFLUSH) to the device and waits for it.
    fn flush(&self) -> Result<(), Error>;
    /// Writes all dirty blocks and waits for the writes (no cache flush),
    /// then writes the contents of `block`, which is not marked dirty, to
    /// its block with REQ_PREFLUSH | REQ_FUA and waits for that: the commit
    /// of a transaction whose last block is `block` (see the module
    /// documentation).
    fn commit_block(&self, block: Self::Block<'_>) -> Result<(), Error>;
    /// Writes `data` (one block) to block `nr` around the cache with REQ_PREFLUSH | REQ_FUA and
    /// waits for that, without writing any dirty block first: when it returns, every write
    /// that completed before it, and then `data`, are on stable storage (a journal commit).
    /// The store never has a dirty block `nr` in the cache, nor holds one.
    fn write_durably(&self, nr: u64, data: &[u8]) -> Result<(), Error>;
    /// Raw CRC-32C (Castagnoli) update without pre- or post-inversion, like
    /// the kernel's `crc32c(seed, data, len)`. The store computes checksums
    /// as `!crc32c(!0, data)`, which is the standard CRC-32C.
    fn crc32c(&self, seed: u32, data: &[u8]) -> u32;
}
