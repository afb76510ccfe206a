// SPDX-License-Identifier: GPL-2.0

//! The exception store's block I/O over dm-bufio: one buffer is one 4 KiB metadata block of the
//! COW device, whatever the chunk size.
//!
//! The store modifies blocks in place, through `&mut [u8]` ([`BlockHandle`] is `DerefMut`), but
//! a dm-bufio buffer must not be mutably borrowed: dm-bufio may write back a dirty buffer while
//! it is held, reading its memory concurrently (see [`bufio`]). So a [`CowBlock`] reads the
//! buffer in place until the store first borrows it mutably, and from then on works on a
//! private shadow copy, which it copies back into the buffer with [`bufio::Buffer::write`]
//! (marking it dirty) when it is released, if the store marked it dirty. A modified block thus
//! costs two extra copies of the block (buffer to shadow, except for [`BlockIo::new_block`]
//! whose contents the store overwrites anyway, and back); reads copy nothing. The copies are
//! the price of soundness: the public dm-bufio API offers no way to keep write-back away from
//! a held buffer, and modified blocks are few per transaction (a btree path, a bitmap, the
//! superblock image).
//!
//! Shadows come from a pool allocated with the [`CowIo`], one per handle the store holds at a
//! time (at most two, as `store/io.rs` documents), so that the I/O path does not allocate.

use crate::store::{self, BlockHandle, BlockIo};
use core::cell::Cell;
use kernel::{
    alloc::VVec,
    block::bio::Sector,
    crc32c::crc32c,
    device_mapper::{bufio, DmDev},
    prelude::*,
    sync::Arc,
};

/// Buffers kept in reserve so that the store always makes progress: it holds at most a
/// btree path (the store bounds tree depth to 16) plus a few blocks at once.
const RESERVED_BUFFERS: u32 = 20;

/// Shadow blocks allocated up front: the store holds at most two handles at a time.
const SHADOWS: usize = 2;

/// Writes the image of a journal block, which `Store::journal_commit_start` handed out, while
/// the store goes on: the pool's commit work holds one during the write.
pub(crate) struct JournalWriter {
    client: Arc<bufio::Client>,
}

impl JournalWriter {
    /// Writes `image` to block `nr` around the cache, with `REQ_PREFLUSH | REQ_FUA`, and
    /// waits (see [`bufio::Client::write_block_durably`]).
    pub(crate) fn write(&self, nr: u64, image: &VVec<u8>) -> Result<(), store::Error> {
        self.client.write_block_durably(nr, image).map_err(io_error)
    }
}

/// Metadata access to the COW device through a dm-bufio client.
///
/// # Invariants
///
/// Every shadow in `shadows` (and of every live [`CowBlock`]) is `block_size` bytes long, the
/// client's block size.
pub(crate) struct CowIo {
    /// Shared with the [`JournalWriter`]s handed out, which write outside the store's lock.
    client: Arc<bufio::Client>,
    /// The device's size in metadata blocks, as of creation or [`CowIo::update_size`].
    nr_blocks: Cell<u64>,
    block_size: usize,
    /// Spare shadow blocks. A [`Cell`] suffices: the store is used by one thread at a time
    /// (it is behind the pool's mutex), and `CowIo` is `Send` but not `Sync`.
    shadows: [Cell<Option<VVec<u8>>>; SHADOWS],
}

impl CowIo {
    /// Creates a client with blocks of [`store::META_BLOCK_SIZE`] bytes.
    pub(crate) fn new(cow: &DmDev) -> Result<Self> {
        const BLOCK_SECTORS: Sector = (store::META_BLOCK_SIZE / 512) as Sector;
        let nr_blocks = cow.nr_sectors() / BLOCK_SECTORS;
        let client = Arc::pin_init(
            bufio::Client::new(cow, store::META_BLOCK_SIZE as u32, RESERVED_BUFFERS),
            GFP_KERNEL,
        )?;
        let block_size = client.block_size() as usize;
        let shadows: [Cell<Option<VVec<u8>>>; SHADOWS] = Default::default();
        for shadow in &shadows {
            // Vmalloc memory: `commit_block` hands a shadow to dm_io as `DM_IO_VMA`.
            shadow.set(Some(VVec::from_elem(0, block_size, GFP_KERNEL)?));
        }
        // INVARIANT: The shadows are `block_size` bytes long.
        Ok(Self {
            client,
            nr_blocks: Cell::new(nr_blocks),
            block_size,
            shadows,
        })
    }

    /// Takes the size of `cow` again (it may have grown since; see `Store::grow`).
    pub(crate) fn update_size(&self, cow: &DmDev) {
        const BLOCK_SECTORS: Sector = (store::META_BLOCK_SIZE / 512) as Sector;
        self.nr_blocks.set(cow.nr_sectors() / BLOCK_SECTORS);
    }

    /// A writer of journal blocks for commits made outside the store's lock (see
    /// `Store::journal_commit_start`).
    pub(crate) fn journal_writer(&self) -> JournalWriter {
        JournalWriter {
            client: self.client.clone(),
        }
    }

    /// Takes a shadow block from the pool, or allocates one if the pool is empty (which the
    /// store's limit of two handles rules out; it is a fallback only).
    fn take_shadow(&self) -> Result<VVec<u8>, store::Error> {
        if let Some(shadow) = self.shadows.iter().find_map(Cell::take) {
            return Ok(shadow);
        }
        // GFP_NOIO: the store works for the I/O path of the snapshot devices, which must not
        // wait for I/O to them to reclaim memory.
        VVec::from_elem(0, self.block_size, GFP_NOIO)
            .map_err(|_| store::Error::Io("out of memory for a shadow block"))
    }

    /// Puts a shadow block back into the pool (freeing one if the pool is full).
    fn put_shadow(&self, shadow: VVec<u8>) {
        let mut spare = Some(shadow);
        for slot in &self.shadows {
            spare = slot.replace(spare);
            if spare.is_none() {
                return;
            }
        }
        // The pool was full: `spare` is an extra shadow allocated by `take_shadow`, freed here.
    }

    /// Wraps a buffer of this client into a handle; `copy` tells whether the store needs the
    /// buffer's contents in the shadow.
    fn block<'a>(
        &'a self,
        buffer: bufio::Buffer<'a>,
        copy: bool,
    ) -> Result<CowBlock<'a>, store::Error> {
        let shadow = self.take_shadow()?;
        // INVARIANT: The shadow is `block_size` bytes long (type invariant of `CowIo`).
        Ok(CowBlock {
            io: self,
            buffer,
            shadow,
            shadowed: false,
            copy,
            dirty: false,
            verified: false,
        })
    }
}

/// A held chunk of metadata.
///
/// Its contents are those of `buffer` until the store first borrows them mutably; from then on
/// (`shadowed`) those of `shadow`, which go back into `buffer` when the handle is dropped, if
/// it was marked dirty. Otherwise they are discarded, and the cached block keeps its contents:
/// the store marks every block it modifies dirty (an unmarked change could be lost at any
/// eviction anyway). The verified flag follows the contents: the buffer's validated flag
/// until shadowing starts, then `verified`, which becomes the buffer's flag when the shadow is
/// copied back.
///
/// # Invariants
///
/// `shadow` is as long as `buffer` (the client's block size).
pub(crate) struct CowBlock<'a> {
    io: &'a CowIo,
    buffer: bufio::Buffer<'a>,
    shadow: VVec<u8>,
    /// The contents are in `shadow`.
    shadowed: bool,
    /// Whether to copy the buffer into the shadow when shadowing starts: not for a block from
    /// [`BlockIo::new_block`], whose contents are undefined.
    copy: bool,
    /// The store marked the block dirty.
    dirty: bool,
    /// The store validated the shadow's contents (meaningful once `shadowed`).
    verified: bool,
}

impl core::ops::Deref for CowBlock<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.shadowed {
            &self.shadow
        } else {
            &self.buffer
        }
    }
}

impl core::ops::DerefMut for CowBlock<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        if !self.shadowed {
            self.shadowed = true;
            if self.copy {
                // The lengths are equal (type invariant).
                self.shadow.copy_from_slice(&self.buffer);
                self.verified = self.buffer.is_validated();
            } else {
                self.verified = false;
            }
        }
        &mut self.shadow
    }
}

impl BlockHandle for CowBlock<'_> {
    fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn is_verified(&self) -> bool {
        if self.shadowed {
            self.verified
        } else {
            self.buffer.is_validated()
        }
    }

    fn set_verified(&mut self) {
        if self.shadowed {
            self.verified = true;
        } else {
            self.buffer.set_validated();
        }
    }
}

impl Drop for CowBlock<'_> {
    fn drop(&mut self) {
        if self.dirty {
            if self.shadowed {
                // Cannot fail: the shadow is as long as the buffer (type invariant).
                let _ = self.buffer.write(0, &self.shadow);
                if self.verified {
                    self.buffer.set_validated();
                } else {
                    self.buffer.clear_validated();
                }
            } else {
                self.buffer.mark_dirty();
            }
        }
        self.io
            .put_shadow(core::mem::replace(&mut self.shadow, VVec::new()));
    }
}

fn io_error(_: Error) -> store::Error {
    store::Error::Io("COW device")
}

impl BlockIo for CowIo {
    type Block<'a> = CowBlock<'a>;

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn nr_blocks(&self) -> u64 {
        self.nr_blocks.get()
    }

    fn read(&self, nr: u64) -> Result<CowBlock<'_>, store::Error> {
        let buffer = self.client.read(nr).map_err(io_error)?;
        self.block(buffer, true)
    }

    fn new_block(&self, nr: u64) -> Result<CowBlock<'_>, store::Error> {
        let buffer = self.client.new_buffer(nr).map_err(io_error)?;
        self.block(buffer, false)
    }

    fn write_dirty(&self) -> Result<(), store::Error> {
        self.client.write_dirty_buffers().map_err(io_error)
    }

    fn flush(&self) -> Result<(), store::Error> {
        self.client.issue_flush().map_err(io_error)
    }

    fn commit_block(&self, mut block: CowBlock<'_>) -> Result<(), store::Error> {
        let nr = block.buffer.block();
        // dm-bufio writes the block around its cache from memory of our own, and only once
        // the handle (and with it the buffer) is released: copy the contents to a spare shadow.
        let mut data = self.take_shadow()?;
        // The lengths are equal (type invariants of `CowIo` and `CowBlock`).
        data.copy_from_slice(&block);
        // The cache must not write the block: only the commit below does.
        block.dirty = false;
        drop(block);
        let committed = self.client.commit_block(nr, &data).map_err(io_error);
        self.put_shadow(data);
        committed
    }

    fn write_durably(&self, nr: u64, data: &[u8]) -> Result<(), store::Error> {
        // As for a commit: the write goes around the cache, from a copy.
        let mut shadow = self.take_shadow()?;
        if shadow.len() != data.len() {
            self.put_shadow(shadow);
            return Err(store::Error::Io("journal block of wrong size"));
        }
        shadow.copy_from_slice(data);
        let written = self
            .client
            .write_block_durably(nr, &shadow)
            .map_err(io_error);
        self.put_shadow(shadow);
        written
    }

    fn crc32c(&self, seed: u32, data: &[u8]) -> u32 {
        crc32c(seed, data)
    }
}
