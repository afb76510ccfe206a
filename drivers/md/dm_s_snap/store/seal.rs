// SPDX-License-Identifier: GPL-2.0

//! Deferred checksums: a block modified in the running transaction is sealed (its checksum
//! computed) once, when the transaction commits, rather than at every change.
//!
//! One first write changes the same few blocks several times in one transaction: a bitmap
//! block for every block it allocates, a B+tree node when it is shadowed and again when its
//! child pointer or an entry changes. Sealing at every change computed 10 checksums of 4 KiB
//! per first write at queue depth 1, for 4.3 blocks written (measured with the userspace
//! cache); a checksum costs more than the change itself. So a change only notes its block,
//! and [`Store::seal_pending`] seals each noted block once, before the commit writes it.
//!
//! The cache may write a dirty block back at any time, and then evict it: reading a noted
//! block back finds a stale checksum. Such a block belongs to the running transaction, no
//! committed state refers to it, and its contents are those the store wrote, so
//! [`Store::read_valid`] accepts a noted block whatever its checksum (its other header checks
//! still apply). A crash loses the transaction, and with it every block that was never
//! sealed. When the list is full, a change seals its block at once, as it did before.

use super::error::{Error, Result};
use super::format::seal;
use super::io::{BlockHandle, BlockIo};
use super::txn::Store;
use core::cell::Cell;

/// Blocks that can wait for the commit to be sealed: more than a transaction of one first
/// write touches (a B+tree path per tree, two bitmap blocks, released blocks), so that at
/// queue depth 1 every block is sealed once.
const PENDING_SEALS: usize = 64;

/// The blocks of the running transaction whose checksum is computed at commit.
///
/// `Cell`s, so that a change can note its block while it holds a handle (which borrows the
/// store's I/O): the store is used by one thread at a time.
pub(crate) struct PendingSeals {
    blocks: [Cell<u64>; PENDING_SEALS],
    len: Cell<usize>,
}

impl PendingSeals {
    pub(crate) fn new() -> Self {
        Self {
            blocks: core::array::from_fn(|_| Cell::new(0)),
            len: Cell::new(0),
        }
    }

    fn noted(&self) -> &[Cell<u64>] {
        self.blocks.get(..self.len.get()).unwrap_or(&[])
    }

    /// Whether block `nr` waits for its checksum.
    pub(crate) fn contains(&self, nr: u64) -> bool {
        self.noted().iter().any(|b| b.get() == nr)
    }

    /// Notes block `nr`; false if the list is full.
    fn push(&self, nr: u64) -> bool {
        let n = self.len.get();
        match self.blocks.get(n) {
            Some(slot) => {
                slot.set(nr);
                self.len.set(n + 1);
                true
            }
            None => false,
        }
    }

    fn pop(&self) -> Option<u64> {
        let n = self.len.get().checked_sub(1)?;
        self.len.set(n);
        self.blocks.get(n).map(Cell::get)
    }
}

impl<I: BlockIo> Store<I> {
    /// Seals block `nr`, whose contents `b` the running transaction changed: at commit, or at
    /// once if too many blocks wait.
    pub(crate) fn seal_later(&self, nr: u64, b: &mut [u8]) -> Result<()> {
        if self.pending_seals.contains(nr) || self.pending_seals.push(nr) {
            Ok(())
        } else {
            seal(&self.io, b)
        }
    }

    /// Seals every block that waits for its checksum: the commit calls it once nothing else
    /// will change before its write-back.
    pub(crate) fn seal_pending(&mut self) -> Result<()> {
        while let Some(nr) = self.pending_seals.pop() {
            let mut h = self.io.read(nr)?;
            if h.len() != self.g.block_size {
                return Err(Error::Io("block handle of wrong size"));
            }
            seal(&self.io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
        }
        Ok(())
    }
}
