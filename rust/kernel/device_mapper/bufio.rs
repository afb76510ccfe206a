// SPDX-License-Identifier: GPL-2.0

//! Buffered block I/O for device-mapper targets (dm-bufio).
//!
//! A [`Client`] caches fixed-size blocks of a device, typically the metadata area of a target.
//! [`Client::read`] and [`Client::new_buffer`] return a [`Buffer`] that derefs to the block's
//! bytes and releases the buffer (`dm_bufio_release()`) when dropped. Modified buffers are
//! marked dirty and written back by [`Client::write_dirty_buffers`] (or in the background).
//!
//! All operations may sleep; use them from process context (constructor, workqueues), never
//! from a target's `map` or `end_io`.
//!
//! Buffers are handed out through `&self`, so a client can be shared between threads and
//! several buffers can be held at once, as dm-bufio allows. To keep Rust's aliasing rules, a
//! client refuses (with `EBUSY`) to hand out a second buffer for a block that is already held,
//! and at most [`MAX_HELD`] buffers may be held at a time. A client creates enough reserved
//! buffers for its users to make progress under memory pressure while they hold several.
//!
//! Each buffer carries a "validated" flag, cleared whenever dm-bufio loads the buffer with a
//! (new) block, so that users can check a block's contents (say, a checksum) once per read from
//! the device rather than on every access.
//!
//! Users must be GPL modules and select `DM_BUFIO` in Kconfig. Because dm-bufio may be a module
//! while this crate is built in, every function here is `#[inline]`: it is instantiated only
//! in the module that uses it, which then depends on `dm-bufio.ko`.
//!
//! C header: [`include/linux/dm-bufio.h`](srctree/include/linux/dm-bufio.h)
//!
//! # Examples
//!
//! ```
//! use kernel::block::bio::Sector;
//! use kernel::device_mapper::{bufio::Client, DmDev};
//! use kernel::prelude::*;
//!
//! fn bump_counter(dev: &DmDev) -> Result {
//!     let client = KBox::pin_init(Client::new(dev, 4096, 1), GFP_KERNEL)?;
//!     {
//!         let mut block = client.read(0)?;
//!         block[0] = block[0].wrapping_add(1);
//!         block.mark_dirty();
//!     }
//!     client.write_dirty_buffers()
//! }
//! ```

use crate::{
    bindings,
    block::bio::Sector,
    device_mapper::DmDev,
    error::{code::EBUSY, from_err_ptr, to_result, Error, Result},
    init::PinInit,
    new_spinlock,
    prelude::*,
    sync::SpinLock,
};
use core::{
    ops::{Deref, DerefMut},
    ptr::NonNull,
};

/// The most buffers one client lets its users hold at the same time.
pub const MAX_HELD: usize = 32;

/// The blocks whose buffers are held.
struct Held {
    blocks: [Sector; MAX_HELD],
    len: usize,
}

/// Clears the validated flag of a buffer that dm-bufio (re)loads (`alloc_callback`).
///
/// Generic so that it is instantiated in the module using the client, like the `#[inline]`
/// functions here (dm-bufio may be a module).
///
/// # Safety
///
/// `b` must be a buffer of a client created by [`Client::new`], which has one byte of
/// auxiliary data.
// The type parameter only makes the function generic (see above).
#[allow(clippy::extra_unused_type_parameters)]
unsafe extern "C" fn clear_validated<T>(b: *mut bindings::dm_buffer) {
    // SAFETY: By the safety requirements the buffer has one byte of auxiliary data.
    unsafe { bindings::dm_bufio_get_aux_data(b).cast::<u8>().write(0) };
}

/// A dm-bufio client on a device (C `struct dm_bufio_client`).
///
/// Destroyed (`dm_bufio_client_destroy()`, which writes back dirty buffers) when dropped.
///
/// # Invariants
///
/// `c` is a valid client created by `dm_bufio_client_create()` on the block device of `_dev`,
/// with one byte of auxiliary data per buffer, and `block_size` its block size. `held` lists
/// the blocks of all live [`Buffer`]s of the client, each once.
#[pin_data]
pub struct Client {
    c: RawClient,
    block_size: usize,
    // Keeps the block device structure alive as long as the client.
    _dev: DmDev,
    #[pin]
    held: SpinLock<Held>,
}

// SAFETY: A dm-bufio client may be used and destroyed from any thread; the functions taking
// `&self` lock internally, and `held` is behind a lock.
unsafe impl Send for Client {}
// SAFETY: See above.
unsafe impl Sync for Client {}

impl Client {
    /// Creates a client caching blocks of `block_size` bytes (a power of two, at least 512) of
    /// `dev`, keeping `reserved_buffers` buffers allocated so that users holding that many
    /// buffers at once always make progress under memory pressure.
    #[inline]
    pub fn new(dev: &DmDev, block_size: u32, reserved_buffers: u32) -> impl PinInit<Self, Error> {
        let dev = dev.clone();
        try_pin_init!(Self {
            c: {
                // SAFETY: `dev` holds the block device; one byte of auxiliary data, cleared by
                // `clear_validated` whenever a buffer is (re)loaded.
                let c = from_err_ptr(unsafe {
                    bindings::dm_bufio_client_create(
                        dev.bdev().as_raw(),
                        block_size,
                        reserved_buffers,
                        1,
                        Some(clear_validated::<()>),
                        None,
                        0,
                    )
                })?;
                // SAFETY: `from_err_ptr` returned a valid (non-null) pointer.
                RawClient(unsafe { NonNull::new_unchecked(c) })
            },
            block_size: block_size as usize,
            _dev: dev,
            held <- new_spinlock!(
                Held {
                    blocks: [0; MAX_HELD],
                    len: 0,
                },
                "bufio::Client::held"
            ),
        }? Error)
    }

    /// Records that a buffer of `block` is about to be handed out.
    fn hold(&self, block: Sector) -> Result {
        let mut held = self.held.lock();
        let len = held.len;
        if len == MAX_HELD || held.blocks[..len].contains(&block) {
            return Err(EBUSY);
        }
        held.blocks[len] = block;
        held.len = len + 1;
        Ok(())
    }

    /// Records that the buffer of `block` was released.
    fn unhold(&self, block: Sector) {
        let mut held = self.held.lock();
        let len = held.len;
        if let Some(i) = held.blocks[..len].iter().position(|&b| b == block) {
            held.blocks[i] = held.blocks[len - 1];
            held.len = len - 1;
        }
    }

    fn as_raw(&self) -> *mut bindings::dm_bufio_client {
        self.c.0.as_ptr()
    }

    /// Returns the block size in bytes.
    #[inline]
    pub fn block_size(&self) -> u32 {
        // CAST: The block size came from a `u32`.
        self.block_size as u32
    }

    /// Returns the size of the device in blocks (`dm_bufio_get_device_size()`).
    #[inline]
    pub fn device_size(&self) -> Sector {
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_get_device_size(self.as_raw()) }
    }

    /// Makes block 0 start at sector `start` of the device (`dm_bufio_set_sector_offset()`).
    ///
    /// Meant to be called right after creation; fails with `EBUSY` while buffers are held.
    #[inline]
    pub fn set_sector_offset(&self, start: Sector) -> Result {
        let held = self.held.lock();
        if held.len != 0 {
            return Err(EBUSY);
        }
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_set_sector_offset(self.as_raw(), start) };
        Ok(())
    }

    /// Sets the minimum number of buffers kept in the cache (`dm_bufio_set_minimum_buffers()`).
    #[inline]
    pub fn set_minimum_buffers(&self, n: u32) {
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_set_minimum_buffers(self.as_raw(), n) };
    }

    /// Reads block `block` (from the cache or the device) and returns its buffer
    /// (`dm_bufio_read()`). Fails with `EBUSY` if a buffer of the block is held already, or if
    /// [`MAX_HELD`] buffers are.
    #[inline]
    pub fn read(&self, block: Sector) -> Result<Buffer<'_>> {
        self.hold(block)?;
        let mut b = core::ptr::null_mut();
        // SAFETY: By the type invariant the client is valid; `b` is valid for writes.
        let data = from_err_ptr(unsafe { bindings::dm_bufio_read(self.as_raw(), block, &mut b) });
        match data {
            // SAFETY: `dm_bufio_read()` succeeded: `b` is a held buffer of `block` whose data
            // is `data`, of the client's block size; `hold` recorded the block.
            Ok(data) => Ok(unsafe { Buffer::new(self, block, b, data) }),
            Err(e) => {
                self.unhold(block);
                Err(e)
            }
        }
    }

    /// Returns the buffer of block `block` without reading the device (`dm_bufio_new()`), to
    /// overwrite the block entirely. The returned data is zeroed; mark it dirty to write it.
    /// Fails like [`Client::read`].
    #[inline]
    pub fn new_buffer(&self, block: Sector) -> Result<Buffer<'_>> {
        self.hold(block)?;
        let mut b = core::ptr::null_mut();
        // SAFETY: By the type invariant the client is valid; `b` is valid for writes.
        let data = from_err_ptr(unsafe { bindings::dm_bufio_new(self.as_raw(), block, &mut b) });
        match data {
            Ok(data) => {
                // SAFETY: `dm_bufio_new()` succeeded: `b` is a held buffer of `block` whose
                // data is `data`, of the client's block size; `hold` recorded the block. The
                // data may be uninitialised, so zero it before exposing it.
                Ok(unsafe {
                    core::ptr::write_bytes(data.cast::<u8>(), 0, self.block_size);
                    Buffer::new(self, block, b, data)
                })
            }
            Err(e) => {
                self.unhold(block);
                Err(e)
            }
        }
    }

    /// Starts reading `n` blocks from `block` into the cache in the background
    /// (`dm_bufio_prefetch()`).
    #[inline]
    pub fn prefetch(&self, block: Sector, n: u32) {
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_prefetch(self.as_raw(), block, n) };
    }

    /// Writes all dirty buffers and waits for the writes (`dm_bufio_write_dirty_buffers()`).
    #[inline]
    pub fn write_dirty_buffers(&self) -> Result {
        // SAFETY: By the type invariant the client is valid.
        to_result(unsafe { bindings::dm_bufio_write_dirty_buffers(self.as_raw()) })
    }

    /// Starts writing all dirty buffers without waiting
    /// (`dm_bufio_write_dirty_buffers_async()`).
    #[inline]
    pub fn write_dirty_buffers_async(&self) {
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_write_dirty_buffers_async(self.as_raw()) };
    }

    /// Sends a cache flush to the device and waits for it (`dm_bufio_issue_flush()`).
    #[inline]
    pub fn issue_flush(&self) -> Result {
        // SAFETY: By the type invariant the client is valid.
        to_result(unsafe { bindings::dm_bufio_issue_flush(self.as_raw()) })
    }

    /// Drops block `block` from the cache if it is not held, without writing it
    /// (`dm_bufio_forget()`).
    #[inline]
    pub fn forget(&self, block: Sector) {
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_forget(self.as_raw(), block) };
    }
}

/// The C client, destroyed when dropped.
///
/// A separate type so that its `Drop` can be `#[inline]` (the drop glue of [`Client`] is then
/// instantiated in the module using it, like everything else here). It is the first field of
/// [`Client`], so it is destroyed before the device reference is dropped.
struct RawClient(NonNull<bindings::dm_bufio_client>);

impl Drop for RawClient {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: The pointer is a valid client (type invariant of `Client`); no buffer is held
        // since buffers borrow the client.
        unsafe { bindings::dm_bufio_client_destroy(self.0.as_ptr()) };
    }
}

/// A held dm-bufio buffer (C `struct dm_buffer`): the data of one block.
///
/// Derefs to the block's bytes. Changes reach the device only if the buffer is marked dirty.
/// Released (`dm_bufio_release()`) when dropped.
///
/// Dirty buffers may be written back in the background while they are held (as in C), so a
/// block being modified can reach the device half-updated; order updates accordingly.
///
/// # Invariants
///
/// `b` is a buffer of block `block` held by us, whose data of `len` bytes is at `data`, and
/// `block` is recorded in the `held` list of `client`, which outlives the buffer.
pub struct Buffer<'a> {
    client: &'a Client,
    block: Sector,
    b: NonNull<bindings::dm_buffer>,
    data: NonNull<u8>,
    len: usize,
}

impl<'a> Buffer<'a> {
    /// # Safety
    ///
    /// `b` must be a buffer of `block` held by the caller, with the client's block size of data
    /// at `data`, and `block` must have been recorded in `client`'s held list for this buffer.
    #[inline]
    unsafe fn new(
        client: &'a Client,
        block: Sector,
        b: *mut bindings::dm_buffer,
        data: *mut core::ffi::c_void,
    ) -> Self {
        // INVARIANT: By the safety requirements.
        Self {
            client,
            block,
            // SAFETY: A held buffer is not null.
            b: unsafe { NonNull::new_unchecked(b) },
            // SAFETY: The data of a buffer is not null.
            data: unsafe { NonNull::new_unchecked(data.cast()) },
            len: client.block_size,
        }
    }

    /// Returns `true` if [`Buffer::set_validated`] was called since dm-bufio last loaded this
    /// buffer with its block.
    #[inline]
    pub fn is_validated(&self) -> bool {
        // SAFETY: By the type invariant the buffer is held, and its client has one byte of
        // auxiliary data, which only `clear_validated` and these two methods access.
        unsafe {
            bindings::dm_bufio_get_aux_data(self.b.as_ptr())
                .cast::<u8>()
                .read()
                != 0
        }
    }

    /// Records that the user checked (or produced) the buffer's contents.
    #[inline]
    pub fn set_validated(&self) {
        // SAFETY: As in `is_validated`.
        unsafe {
            bindings::dm_bufio_get_aux_data(self.b.as_ptr())
                .cast::<u8>()
                .write(1)
        };
    }

    /// Returns the block number of the buffer.
    #[inline]
    pub fn block(&self) -> Sector {
        self.block
    }

    /// Marks the whole buffer dirty, to be written back (`dm_bufio_mark_buffer_dirty()`).
    #[inline]
    pub fn mark_dirty(&self) {
        // SAFETY: By the type invariant the buffer is held.
        unsafe { bindings::dm_bufio_mark_buffer_dirty(self.b.as_ptr()) };
    }

    /// Marks bytes `start..end` of the buffer dirty (`dm_bufio_mark_partial_buffer_dirty()`).
    /// The range is clamped to the buffer.
    #[inline]
    pub fn mark_partial_dirty(&self, start: usize, end: usize) {
        let end = end.min(self.len);
        if start >= end {
            return;
        }
        // CAST: Both are at most the block size, which is a `u32`.
        // SAFETY: By the type invariant the buffer is held; `start < end <= len`.
        unsafe {
            bindings::dm_bufio_mark_partial_buffer_dirty(self.b.as_ptr(), start as u32, end as u32)
        };
    }
}

impl Deref for Buffer<'_> {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: By the type invariant the data is valid for `len` bytes while the buffer is
        // held, and no other `Buffer` aliases it (the client hands out one buffer per block).
        unsafe { core::slice::from_raw_parts(self.data.as_ptr(), self.len) }
    }
}

impl DerefMut for Buffer<'_> {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: As for `deref`, and `&mut self` is exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.data.as_ptr(), self.len) }
    }
}

impl Drop for Buffer<'_> {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: By the type invariant we hold the buffer.
        unsafe { bindings::dm_bufio_release(self.b.as_ptr()) };
        self.client.unhold(self.block);
    }
}
