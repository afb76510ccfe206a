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
//! A client hands out one buffer at a time: the buffer methods take `&mut self`, so the
//! borrow checker guarantees that no two [`Buffer`]s alias the same block, and dm-bufio's rule
//! that a thread holds at most one buffer (unless it holds reserved buffers) is kept. Share a
//! client between threads with a [`Mutex`](crate::sync::Mutex).
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
//!     let mut client = Client::new(dev, 4096, 1)?;
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
    error::{from_err_ptr, to_result, Result},
};
use core::{
    marker::PhantomData,
    ops::{Deref, DerefMut},
    ptr::NonNull,
};

/// A dm-bufio client on a device (C `struct dm_bufio_client`).
///
/// Destroyed (`dm_bufio_client_destroy()`, which writes back dirty buffers) when dropped.
///
/// # Invariants
///
/// `c` is a valid client created by `dm_bufio_client_create()` on the block device of `_dev`,
/// and `block_size` its block size.
pub struct Client {
    c: NonNull<bindings::dm_bufio_client>,
    block_size: usize,
    // Keeps the block device structure alive as long as the client.
    _dev: DmDev,
}

// SAFETY: A dm-bufio client may be used and destroyed from any thread; the functions taking
// `&self` lock internally.
unsafe impl Send for Client {}
// SAFETY: See above.
unsafe impl Sync for Client {}

impl Client {
    /// Creates a client caching blocks of `block_size` bytes (a power of two, at least 512) of
    /// `dev`, keeping `reserved_buffers` buffers allocated so that reads can progress under
    /// memory pressure.
    #[inline]
    pub fn new(dev: &DmDev, block_size: u32, reserved_buffers: u32) -> Result<Self> {
        // SAFETY: `dev` holds the block device; no callbacks and no auxiliary data.
        let c = from_err_ptr(unsafe {
            bindings::dm_bufio_client_create(
                dev.bdev().as_raw(),
                block_size,
                reserved_buffers,
                0,
                None,
                None,
                0,
            )
        })?;
        // INVARIANT: `dm_bufio_client_create()` succeeded.
        Ok(Self {
            // SAFETY: `from_err_ptr` returned a valid (non-null) pointer.
            c: unsafe { NonNull::new_unchecked(c) },
            block_size: block_size as usize,
            _dev: dev.clone(),
        })
    }

    fn as_raw(&self) -> *mut bindings::dm_bufio_client {
        self.c.as_ptr()
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
    /// Takes `&mut self`: no buffer may be held and no I/O be in progress.
    #[inline]
    pub fn set_sector_offset(&mut self, start: Sector) {
        // SAFETY: By the type invariant the client is valid; `&mut self` excludes held buffers.
        unsafe { bindings::dm_bufio_set_sector_offset(self.as_raw(), start) };
    }

    /// Sets the minimum number of buffers kept in the cache (`dm_bufio_set_minimum_buffers()`).
    #[inline]
    pub fn set_minimum_buffers(&self, n: u32) {
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_set_minimum_buffers(self.as_raw(), n) };
    }

    /// Reads block `block` (from the cache or the device) and returns its buffer
    /// (`dm_bufio_read()`).
    #[inline]
    pub fn read(&mut self, block: Sector) -> Result<Buffer<'_>> {
        let mut b = core::ptr::null_mut();
        // SAFETY: By the type invariant the client is valid; `b` is valid for writes.
        let data = from_err_ptr(unsafe { bindings::dm_bufio_read(self.as_raw(), block, &mut b) })?;
        // SAFETY: `dm_bufio_read()` succeeded: `b` is a held buffer whose data is `data`, of the
        // client's block size.
        Ok(unsafe { Buffer::new(b, data, self.block_size) })
    }

    /// Returns the buffer of block `block` without reading the device (`dm_bufio_new()`), to
    /// overwrite the block entirely. The returned data is zeroed; mark it dirty to write it.
    #[inline]
    pub fn new_buffer(&mut self, block: Sector) -> Result<Buffer<'_>> {
        let mut b = core::ptr::null_mut();
        // SAFETY: By the type invariant the client is valid; `b` is valid for writes.
        let data = from_err_ptr(unsafe { bindings::dm_bufio_new(self.as_raw(), block, &mut b) })?;
        // SAFETY: `dm_bufio_new()` succeeded: `b` is a held buffer whose data is `data`, of the
        // client's block size. The data may be uninitialised, so zero it before exposing it.
        Ok(unsafe {
            core::ptr::write_bytes(data.cast::<u8>(), 0, self.block_size);
            Buffer::new(b, data, self.block_size)
        })
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
    pub fn forget(&mut self, block: Sector) {
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_forget(self.as_raw(), block) };
    }
}

impl Drop for Client {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: By the type invariant the client is valid; no buffer is held since buffers
        // borrow the client.
        unsafe { bindings::dm_bufio_client_destroy(self.as_raw()) };
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
/// `b` is a buffer held by us, whose data of `len` bytes is at `data`; the client borrowed for
/// `'a` outlives it.
pub struct Buffer<'a> {
    b: NonNull<bindings::dm_buffer>,
    data: NonNull<u8>,
    len: usize,
    _p: PhantomData<&'a mut Client>,
}

impl Buffer<'_> {
    /// # Safety
    ///
    /// `b` must be a buffer held by the caller, with `len` bytes of data at `data`, of a client
    /// that stays valid and is exclusively borrowed for the buffer's lifetime.
    #[inline]
    unsafe fn new(b: *mut bindings::dm_buffer, data: *mut core::ffi::c_void, len: usize) -> Self {
        // INVARIANT: By the safety requirements.
        Self {
            // SAFETY: A held buffer is not null.
            b: unsafe { NonNull::new_unchecked(b) },
            // SAFETY: The data of a buffer is not null.
            data: unsafe { NonNull::new_unchecked(data.cast()) },
            len,
            _p: PhantomData,
        }
    }

    /// Returns the block number of the buffer.
    #[inline]
    pub fn block(&self) -> Sector {
        // SAFETY: By the type invariant the buffer is held.
        unsafe { bindings::dm_bufio_get_block_number(self.b.as_ptr()) }
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
        // held, and no other `Buffer` aliases it (the client is exclusively borrowed).
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
    }
}
