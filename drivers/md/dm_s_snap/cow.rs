// SPDX-License-Identifier: GPL-2.0

//! The exception store's block I/O over dm-bufio: one buffer is one chunk of the COW device.

use crate::store::{self, BlockHandle, BlockIo};
use kernel::{
    block::bio::Sector,
    crc32c::crc32c,
    device_mapper::{bufio, DmDev},
    prelude::*,
};

/// Buffers kept in reserve so that the store always makes progress: it holds at most a
/// btree path (the store bounds tree depth to 16) plus a few blocks at once.
const RESERVED_BUFFERS: u32 = 20;

/// Metadata access to the COW device through a dm-bufio client.
pub(crate) struct CowIo {
    client: Pin<KBox<bufio::Client>>,
    nr_blocks: u64,
}

impl CowIo {
    /// Creates a client with one block per chunk of `chunk_sectors` sectors.
    pub(crate) fn new(cow: &DmDev, chunk_sectors: u32) -> Result<Self> {
        let client = KBox::pin_init(
            bufio::Client::new(cow, chunk_sectors * 512, RESERVED_BUFFERS),
            GFP_KERNEL,
        )?;
        let nr_blocks = cow.nr_sectors() / Sector::from(chunk_sectors);
        Ok(Self { client, nr_blocks })
    }
}

/// A held chunk of metadata.
pub(crate) struct CowBlock<'a> {
    buffer: bufio::Buffer<'a>,
}

impl core::ops::Deref for CowBlock<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buffer
    }
}

impl core::ops::DerefMut for CowBlock<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buffer
    }
}

impl BlockHandle for CowBlock<'_> {
    fn mark_dirty(&mut self) {
        self.buffer.mark_dirty();
    }

    fn is_verified(&self) -> bool {
        self.buffer.is_validated()
    }

    fn set_verified(&mut self) {
        self.buffer.set_validated();
    }
}

fn io_error(_: Error) -> store::Error {
    store::Error::Io("COW device")
}

impl BlockIo for CowIo {
    type Block<'a> = CowBlock<'a>;

    fn block_size(&self) -> usize {
        self.client.block_size() as usize
    }

    fn nr_blocks(&self) -> u64 {
        self.nr_blocks
    }

    fn read(&self, nr: u64) -> Result<CowBlock<'_>, store::Error> {
        let buffer = self.client.as_ref().get_ref().read(nr).map_err(io_error)?;
        Ok(CowBlock { buffer })
    }

    fn new_block(&self, nr: u64) -> Result<CowBlock<'_>, store::Error> {
        let buffer = self
            .client
            .as_ref()
            .get_ref()
            .new_buffer(nr)
            .map_err(io_error)?;
        Ok(CowBlock { buffer })
    }

    fn write_dirty(&self) -> Result<(), store::Error> {
        self.client.write_dirty_buffers().map_err(io_error)
    }

    fn flush(&self) -> Result<(), store::Error> {
        self.client.issue_flush().map_err(io_error)
    }

    fn crc32c(&self, seed: u32, data: &[u8]) -> u32 {
        crc32c(seed, data)
    }
}
