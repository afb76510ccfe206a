// SPDX-License-Identifier: GPL-2.0

//! The exception store's model test as the KUnit suite `dm_s_snap_store`.
//!
//! The same source that userspace tests (`store/model_test.rs`), compiled into the module and
//! run in the kernel on a device in memory with a write-back cache of its own, so that the
//! store is proven where it runs, under the checking kernel's KASAN and debug assertions too.
//! The cases are those of `tools/s-snap/store/tests/model_test.rs`.

use crate::store::{
    min_chunks,
    model_test::{self, Failure, Params, TestDevice},
    BlockHandle, BlockIo, Error, META_BLOCK_SIZE,
};
use core::{
    cell::{Cell, RefCell},
    fmt,
    ops::{Deref, DerefMut},
};
use kernel::{
    alloc::{flags::GFP_KERNEL, KVec, VVec},
    crc32c::crc32c,
};

kernel::kunit_test_suite!(
    dm_s_snap_store,
    [
        #[slow]
        model_4k_chunks,
        #[slow]
        model_8k_chunks_with_crashes,
        #[slow]
        model_64k_chunks_with_crashes,
        #[slow]
        model_smallest_devices,
        #[slow]
        model_drop_when_full
    ]
);

/// Seeds per case: each is one random sequence of operations.
const SEEDS: u64 = 8;
/// Operations per sequence.
const OPS: u32 = 3000;

fn model_4k_chunks() -> Result<(), CaseError> {
    run_seeds(8, 256, false)
}

fn model_8k_chunks_with_crashes() -> Result<(), CaseError> {
    run_seeds(16, 128, true)
}

fn model_64k_chunks_with_crashes() -> Result<(), CaseError> {
    run_seeds(128, 24, true)
}

/// Devices just large enough to hold a store: most writes find no space.
fn model_smallest_devices() -> Result<(), CaseError> {
    for chunk_sectors in [8, 16, 128, 1024] {
        let params = Params {
            chunk_sectors,
            seed: 3,
            ops: 2000,
            crashes: true,
            drop_when_full: false,
        };
        let chunks = min_chunks(chunk_sectors) + 2;
        let summary = model_test::run(MemDevice::new(chunk_sectors, chunks)?, params)?;
        if summary.no_space == 0 {
            return Err(CaseError::Expected("a smallest device to run out of space"));
        }
    }
    Ok(())
}

/// The `drop` COW-full policy on devices that fill: every drop is checked against the model.
fn model_drop_when_full() -> Result<(), CaseError> {
    for (chunk_sectors, extra) in [(8, 40), (16, 24), (128, 24)] {
        for seed in 1..=4 {
            let params = Params {
                chunk_sectors,
                seed: seed * 0x9e37_79b9,
                ops: 2000,
                crashes: true,
                drop_when_full: true,
            };
            let chunks = min_chunks(chunk_sectors) + extra;
            let summary = model_test::run(MemDevice::new(chunk_sectors, chunks)?, params)?;
            if summary.dropped == 0 || summary.copies == 0 {
                return Err(CaseError::Expected("a full device to drop snapshots"));
            }
        }
    }
    Ok(())
}

fn run_seeds(chunk_sectors: u32, chunks: u64, crashes: bool) -> Result<(), CaseError> {
    for seed in 1..=SEEDS {
        let params = Params {
            chunk_sectors,
            seed: seed * 0x9e37_79b9,
            ops: OPS,
            crashes,
            drop_when_full: false,
        };
        let summary = model_test::run(MemDevice::new(chunk_sectors, chunks)?, params)?;
        if summary.copies == 0 || summary.reads == 0 || (summary.crashes > 0) != crashes {
            return Err(CaseError::Expected("copies, reads and crashes as asked"));
        }
    }
    Ok(())
}

/// Why a test case failed.
enum CaseError {
    NoMemory,
    Model(Failure),
    Expected(&'static str),
}

impl From<Failure> for CaseError {
    fn from(f: Failure) -> Self {
        CaseError::Model(f)
    }
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaseError::NoMemory => f.write_str("no memory for the test device"),
            CaseError::Model(m) => m.fmt(f),
            CaseError::Expected(what) => write!(f, "expected {what}"),
        }
    }
}

/// A COW device in memory behind a write-back cache: a released dirty block stays in the cache
/// (a crash loses it) or, one time in four, is written at once, as dm-bufio may write a dirty
/// buffer whenever it likes.
struct MemDevice {
    /// What the device holds.
    disk: RefCell<VVec<u8>>,
    /// The cache's dirty blocks, at their device offsets.
    cache: RefCell<VVec<u8>>,
    dirty: RefCell<KVec<bool>>,
    chunk_bytes: usize,
    /// State of the xorshift that picks the blocks written early.
    writeback: Cell<u64>,
}

impl MemDevice {
    fn new(chunk_sectors: u32, chunks: u64) -> Result<Self, CaseError> {
        let chunk_bytes = chunk_sectors as usize * 512;
        let bytes = usize::try_from(chunks)
            .ok()
            .and_then(|c| c.checked_mul(chunk_bytes))
            .ok_or(CaseError::Expected("a device size that fits in memory"))?;
        let blocks = bytes / META_BLOCK_SIZE;
        let zeroed = || VVec::from_elem(0u8, bytes, GFP_KERNEL).map_err(|_| CaseError::NoMemory);
        Ok(Self {
            disk: RefCell::new(zeroed()?),
            cache: RefCell::new(zeroed()?),
            dirty: RefCell::new(
                KVec::from_elem(false, blocks, GFP_KERNEL).map_err(|_| CaseError::NoMemory)?,
            ),
            chunk_bytes,
            writeback: Cell::new(0x2545_f491_4f6c_dd1d),
        })
    }

    fn block_range(&self, nr: u64) -> Result<core::ops::Range<usize>, Error> {
        let nr = usize::try_from(nr).map_err(|_| Error::Io("block beyond the device"))?;
        if nr >= self.dirty.borrow().len() {
            return Err(Error::Io("block beyond the device"));
        }
        Ok(nr * META_BLOCK_SIZE..(nr + 1) * META_BLOCK_SIZE)
    }

    /// A copy of block `nr` as the cache sees it.
    fn copy_of(&self, nr: u64) -> Result<KVec<u8>, Error> {
        let range = self.block_range(nr)?;
        let mut data = KVec::with_capacity(META_BLOCK_SIZE, GFP_KERNEL)
            .map_err(|_| Error::Io("no memory for a block"))?;
        let cached = self.dirty.borrow()[nr as usize];
        let from = if cached { &self.cache } else { &self.disk };
        data.extend_from_slice(&from.borrow()[range], GFP_KERNEL)
            .map_err(|_| Error::Io("no memory for a block"))?;
        Ok(data)
    }

    fn write_block(&self, nr: usize) {
        let range = nr * META_BLOCK_SIZE..(nr + 1) * META_BLOCK_SIZE;
        self.disk.borrow_mut()[range.clone()].copy_from_slice(&self.cache.borrow()[range]);
        self.dirty.borrow_mut()[nr] = false;
    }

    /// A dirty block comes back from the store.
    fn release_dirty(&self, nr: u64, data: &[u8]) {
        let Ok(range) = self.block_range(nr) else {
            return;
        };
        self.cache.borrow_mut()[range].copy_from_slice(data);
        self.dirty.borrow_mut()[nr as usize] = true;
        let mut x = self.writeback.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.writeback.set(x);
        if x % 4 == 0 {
            self.write_block(nr as usize);
        }
    }

    fn chunk_range(&self, chunk: u64, len: usize) -> Result<core::ops::Range<usize>, Error> {
        let start = usize::try_from(chunk)
            .ok()
            .and_then(|c| c.checked_mul(self.chunk_bytes))
            .filter(|&s| s + len <= self.disk.borrow().len())
            .ok_or(Error::Io("data chunk beyond the device"))?;
        Ok(start..start + len)
    }
}

/// A block the store holds: a copy, which goes back to the cache when released if it was
/// marked dirty.
struct MemBlock<'a> {
    dev: &'a MemDevice,
    nr: u64,
    data: KVec<u8>,
    dirty: bool,
    verified: bool,
}

impl Deref for MemBlock<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl DerefMut for MemBlock<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl BlockHandle for MemBlock<'_> {
    fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    fn is_verified(&self) -> bool {
        self.verified
    }

    fn set_verified(&mut self) {
        self.verified = true;
    }
}

impl Drop for MemBlock<'_> {
    fn drop(&mut self) {
        if self.dirty {
            self.dev.release_dirty(self.nr, &self.data);
        }
    }
}

impl BlockIo for MemDevice {
    type Block<'a> = MemBlock<'a>;

    fn block_size(&self) -> usize {
        META_BLOCK_SIZE
    }

    fn nr_blocks(&self) -> u64 {
        self.dirty.borrow().len() as u64
    }

    fn read(&self, nr: u64) -> Result<MemBlock<'_>, Error> {
        Ok(MemBlock {
            dev: self,
            nr,
            data: self.copy_of(nr)?,
            dirty: false,
            verified: false,
        })
    }

    fn new_block(&self, nr: u64) -> Result<MemBlock<'_>, Error> {
        self.block_range(nr)?;
        let data = KVec::from_elem(0u8, META_BLOCK_SIZE, GFP_KERNEL)
            .map_err(|_| Error::Io("no memory for a block"))?;
        Ok(MemBlock {
            dev: self,
            nr,
            data,
            dirty: false,
            verified: false,
        })
    }

    fn write_dirty(&self) -> Result<(), Error> {
        let blocks = self.dirty.borrow().len();
        for nr in 0..blocks {
            if self.dirty.borrow()[nr] {
                self.write_block(nr);
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        Ok(())
    }

    fn commit_block(&self, block: MemBlock<'_>) -> Result<(), Error> {
        if block.dirty {
            return Err(Error::Internal("commit block marked dirty"));
        }
        self.write_dirty()?;
        let range = self.block_range(block.nr)?;
        self.disk.borrow_mut()[range].copy_from_slice(&block.data);
        Ok(())
    }

    fn write_durably(&self, nr: u64, data: &[u8]) -> Result<(), Error> {
        let range = self.block_range(nr)?;
        if data.len() != range.len() {
            return Err(Error::Io("journal block of wrong size"));
        }
        self.disk.borrow_mut()[range.clone()].copy_from_slice(data);
        self.cache.borrow_mut()[range].copy_from_slice(data);
        Ok(())
    }

    fn crc32c(&self, seed: u32, data: &[u8]) -> u32 {
        crc32c(seed, data)
    }
}

impl TestDevice for MemDevice {
    fn write_tag(&self, chunk: u64, tag: u64) -> Result<(), Error> {
        let whole = self.chunk_range(chunk, self.chunk_bytes)?;
        // A later write-back would overwrite the data: the store must never give out a chunk
        // whose metadata is still dirty.
        let first = whole.start / META_BLOCK_SIZE;
        let last = whole.end / META_BLOCK_SIZE;
        if self.dirty.borrow()[first..last].iter().any(|&d| d) {
            return Err(Error::Internal("data write over a dirty metadata block"));
        }
        let range = self.chunk_range(chunk, 8)?;
        self.disk.borrow_mut()[range].copy_from_slice(&tag.to_le_bytes());
        Ok(())
    }

    fn read_tag(&self, chunk: u64) -> Result<u64, Error> {
        let range = self.chunk_range(chunk, 8)?;
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&self.disk.borrow()[range]);
        Ok(u64::from_le_bytes(tag))
    }

    fn crash(&self) {
        for d in self.dirty.borrow_mut().iter_mut() {
            *d = false;
        }
    }

    // A kernel built without preemption runs nothing else on this CPU meanwhile: on the
    // checking kernel under emulation, RCU reported a stall in the middle of one seed.
    fn between_operations(&self) {
        kernel::task::cond_resched();
    }
}
