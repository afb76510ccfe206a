// SPDX-License-Identifier: GPL-2.0

//! Buffered block I/O for device-mapper targets (dm-bufio).
//!
//! A [`Client`] caches fixed-size blocks of a device, typically the metadata area of a target.
//! [`Client::read`] and [`Client::new_buffer`] return a [`Buffer`] that derefs to the block's
//! bytes (read-only) and releases the buffer (`dm_bufio_release()`) when dropped. Buffers are
//! modified with [`Buffer::write`] and [`Buffer::fill`], which mark what they change dirty;
//! dirty buffers are written back by [`Client::write_dirty_buffers`] (or in the background).
//! [`Client::commit_block`] ends a transaction with one cache flush: the dirty buffers are
//! written back, then one block (a superblock) goes around the cache with
//! `REQ_PREFLUSH | REQ_FUA`, as dm-snapshot's persistent store commits.
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
//! # Why there is no `&mut [u8]`
//!
//! dm-bufio writes back a dirty buffer whether it is held or not: `dm_bufio_write_dirty_buffers()`
//! and the watermark check inside any thread's `dm_bufio_read()` or `dm_bufio_new()` (and the
//! global cleaner) may start a write of a held buffer at any time, and that write reads the
//! buffer's memory (by DMA, or with a CPU copy on another thread for a RAM disk). A `&mut [u8]`
//! over the buffer would promise exclusive access that dm-bufio does not give, and which its
//! API cannot give: the state that would let us wait for or exclude write-back is private to
//! `dm-bufio.c`. So a buffer only derefs to `&[u8]` (nothing but its holder writes a held
//! buffer's memory, and concurrent reads are fine), and changes go through copying accessors
//! that take `&mut self` (so no reference to the memory is live while they copy) and mark the
//! changed range dirty *after* copying: a write-back that raced the copy and wrote a torn image
//! is always followed by another one of the final contents. Users that want to modify a block
//! in place, through a `&mut [u8]`, keep a private copy and write it back with
//! [`Buffer::write`].
//!
//! Each buffer carries a "validated" flag, cleared whenever dm-bufio loads the buffer with a
//! (new) block and by [`Client::new_buffer`], so that users can check a block's contents (say,
//! a checksum) once per read from the device rather than on every access.
//!
//! Users must be GPL modules that depend on `RUST_DM_ABSTRACTIONS`, which builds dm-bufio into
//! the kernel.
//!
//! C header: [`include/linux/dm-bufio.h`](srctree/include/linux/dm-bufio.h)
//!
//! # Examples
//!
//! ```
//! use kernel::device_mapper::{bufio::Client, DmDev};
//! use kernel::prelude::*;
//!
//! /// Increments the byte at the start of block 0 of `dev` and writes it to the device.
//! fn bump_counter(dev: &DmDev) -> Result {
//!     let client = KBox::pin_init(Client::new(dev, 4096, 1), GFP_KERNEL)?;
//!     {
//!         let mut block = client.read(0)?;
//!         let counter = block[0].wrapping_add(1);
//!         // Copies the byte into the buffer and marks it dirty.
//!         block.write(0, &[counter])?;
//!     }
//!     client.write_dirty_buffers()
//! }
//! ```

use crate::{
    alloc::VVec,
    bindings,
    block::bio::Sector,
    device_mapper::DmDev,
    error::{
        code::{EBUSY, EINVAL},
        from_err_ptr, to_result, Error, Result,
    },
    init::PinInit,
    new_spinlock,
    prelude::*,
    sync::SpinLock,
};
use core::{ops::Deref, ptr::NonNull};

/// `IOPRIO_DEFAULT` (`IOPRIO_PRIO_VALUE(IOPRIO_CLASS_NONE, 0)`), the I/O priority dm-bufio's own
/// I/O uses; bindgen cannot evaluate the inline function that computes it.
const IOPRIO_DEFAULT: u16 = 0;

/// The most buffers one client lets its users hold at the same time.
pub const MAX_HELD: usize = 32;

/// The blocks whose buffers are held.
struct Held {
    blocks: [Sector; MAX_HELD],
    len: usize,
}

/// Bit of a buffer's auxiliary byte: the user validated the buffer's contents.
const AUX_VALIDATED: u8 = 1 << 0;
/// Bit of a buffer's auxiliary byte: the buffer's data is initialised, holding the block's
/// contents (set whenever a [`Buffer`] is handed out). A buffer without it was just allocated
/// or recycled by dm-bufio for its block: its data may be uninitialised, and it is clean, so no
/// write-back reads it.
const AUX_LOADED: u8 = 1 << 1;

/// Clears the auxiliary byte of a buffer that dm-bufio (re)loads (`alloc_callback`).
///
/// Generic so that it is instantiated in the module using the client, like the `#[inline]`
/// functions here.
///
/// # Safety
///
/// `b` must be a buffer of a client created by [`Client::new`], which has one byte of
/// auxiliary data, and that no [`Buffer`] refers to.
// The type parameter only makes the function generic (see above).
#[allow(clippy::extra_unused_type_parameters)]
unsafe extern "C" fn clear_aux<T>(b: *mut bindings::dm_buffer) {
    // SAFETY: By the safety requirements the buffer has one byte of auxiliary data, which no
    // `Buffer` accesses concurrently.
    unsafe { bindings::dm_bufio_get_aux_data(b).cast::<u8>().write(0) };
}

/// A dm-bufio client on a device (C `struct dm_bufio_client`).
///
/// Destroyed (`dm_bufio_client_destroy()`, which writes back dirty buffers) when dropped.
///
/// # Invariants
///
/// `c` is a valid client created by `dm_bufio_client_create()` on the block device of `_dev`,
/// with one byte of auxiliary data per buffer that `clear_aux` clears whenever dm-bufio loads
/// the buffer with a block, and `block_size` its block size. Its sector offset is 0: block `b`
/// is sectors `b * block_size / 512` onwards of the device. `held` lists the blocks of all
/// live [`Buffer`]s of the client, each once. Every buffer of the client that has been handed
/// out as a [`Buffer`] since it was last loaded has `AUX_LOADED` set.
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
                // `clear_aux` whenever a buffer is (re)loaded, which dm-bufio does before the
                // buffer is in its cache (so before any `Buffer` can refer to it).
                let c = from_err_ptr(unsafe {
                    bindings::dm_bufio_client_create(
                        dev.bdev().as_raw(),
                        block_size,
                        reserved_buffers,
                        1,
                        Some(clear_aux::<()>),
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
            Ok(data) => {
                // SAFETY: `dm_bufio_read()` succeeded: `b` is a held buffer of `block`, with
                // auxiliary data, whose data `data` of the client's block size was read from
                // the device (now or earlier) or written by a `Buffer`, so is initialised;
                // `hold` recorded the block.
                let buffer = unsafe { Buffer::new(self, block, b, data) };
                // INVARIANT: The buffer is handed out.
                buffer.set_aux(buffer.aux() | AUX_LOADED);
                Ok(buffer)
            }
            Err(e) => {
                self.unhold(block);
                Err(e)
            }
        }
    }

    /// Returns the buffer of block `block` without reading the device (`dm_bufio_new()`), to
    /// overwrite the block entirely ([`Buffer::write`] marks what it writes dirty). Fails like
    /// [`Client::read`].
    ///
    /// The contents are the block's cached contents if a [`Buffer`] of the block was handed out
    /// before and dm-bufio still caches it, zeroes otherwise; the validated flag is clear
    /// either way. Zeroes are marked dirty, so that the cache never holds contents that the
    /// device will not (a block that dm-bufio had read in the background, say, but that nobody
    /// saw). A buffer handed out before is not zeroed because it may be dirty and under
    /// write-back: zeroing it would race that write.
    #[inline]
    pub fn new_buffer(&self, block: Sector) -> Result<Buffer<'_>> {
        self.hold(block)?;
        let mut b = core::ptr::null_mut();
        // SAFETY: By the type invariant the client is valid; `b` is valid for writes.
        let data = from_err_ptr(unsafe { bindings::dm_bufio_new(self.as_raw(), block, &mut b) });
        let data = match data {
            Ok(data) => data.cast::<u8>(),
            Err(e) => {
                self.unhold(block);
                return Err(e);
            }
        };
        // SAFETY: `dm_bufio_new()` succeeded, so `b` is a buffer held by us, which has one byte
        // of auxiliary data (type invariant), and no `Buffer` refers to it.
        let aux = unsafe { bindings::dm_bufio_get_aux_data(b).cast::<u8>() };
        // SAFETY: As above; `aux` is valid and only accessed by the holder of the buffer.
        if unsafe { aux.read() } & AUX_LOADED == 0 {
            // SAFETY: The data of the held buffer is valid for `block_size` bytes of writes
            // (uninitialised memory included). Without `AUX_LOADED` the buffer was allocated or
            // (re)loaded by dm-bufio, by this call or an earlier prefetch, and was not handed
            // out since (type invariant), so nobody dirtied it: no write-back reads it, and
            // nothing else accesses its data while we hold it.
            unsafe { core::ptr::write_bytes(data, 0, self.block_size) };
            // SAFETY: `b` is a buffer held by us.
            unsafe { bindings::dm_bufio_mark_buffer_dirty(b) };
        }
        // SAFETY: As above.
        unsafe { aux.write(AUX_LOADED) };
        // SAFETY: `b` is a held buffer of `block`, whose data `data` of the client's block size
        // is initialised: read or written earlier if `AUX_LOADED` was set (type invariant),
        // zeroed above otherwise; `hold` recorded the block.
        // INVARIANT: `AUX_LOADED` is set for the buffer handed out.
        Ok(unsafe { Buffer::new(self, block, b, data.cast()) })
    }

    /// Writes all dirty buffers, waits for the writes, then flushes the device's write cache
    /// (`dm_bufio_write_dirty_buffers()`).
    #[inline]
    pub fn write_dirty_buffers(&self) -> Result {
        // SAFETY: By the type invariant the client is valid.
        to_result(unsafe { bindings::dm_bufio_write_dirty_buffers(self.as_raw()) })
    }

    /// Writes all dirty buffers and waits for the writes, without flushing the device's write
    /// cache (`dm_bufio_write_dirty_buffers_no_flush()`): the writes have completed when it
    /// returns, so a later `REQ_PREFLUSH` makes them durable.
    #[inline]
    pub fn write_dirty_buffers_no_flush(&self) -> Result {
        // SAFETY: By the type invariant the client is valid.
        to_result(unsafe { bindings::dm_bufio_write_dirty_buffers_no_flush(self.as_raw()) })
    }

    /// Commits a transaction whose other blocks went through the cache: writes back every dirty
    /// buffer and waits for the writes ([`Client::write_dirty_buffers_no_flush`]), then writes
    /// `data` to block `block` around the cache, with `REQ_PREFLUSH | REQ_FUA` (`dm_io()`), and
    /// waits. When it returns `Ok`, everything written to the device before it (those buffers,
    /// and every other write that had completed) and then `data` are on stable storage, for the
    /// price of one cache flush; a crash before leaves the block unwritten, torn (the caller's
    /// checksum tells), or written with everything before it durable too. The cache then holds
    /// no buffer of the block, so the next [`Client::read`] of it reads `data` from the device.
    ///
    /// Fails with `EINVAL` unless `data` is one block long and the block lies on the device,
    /// and with `EBUSY` if a buffer of the block is held or [`MAX_HELD`] buffers are.
    pub fn commit_block(&self, block: Sector, data: &VVec<u8>) -> Result {
        self.with_block_held(block, data, Self::commit_held_block)
    }

    /// Checks `data` and `block` for a write of `data` to `block` around the cache, and runs
    /// `write` while the block is in the held list: no `Buffer` of it exists now, and none can
    /// be handed out meanwhile, so nothing dirties or reads the block's buffer.
    fn with_block_held(
        &self,
        block: Sector,
        data: &VVec<u8>,
        write: impl FnOnce(&Self, Sector, &VVec<u8>) -> Result,
    ) -> Result {
        if data.len() != self.block_size || block >= self.device_size() {
            return Err(EINVAL);
        }
        self.hold(block)?;
        let result = write(self, block, data);
        self.unhold(block);
        result
    }

    /// [`Client::commit_block`] once `block` is in the held list.
    fn commit_held_block(&self, block: Sector, data: &VVec<u8>) -> Result {
        self.write_dirty_buffers_no_flush()?;
        // The block's buffer, if cached, is clean now and not held (see `commit_block`), so
        // dm-bufio frees it: the cache cannot serve its old contents after the write below.
        // SAFETY: By the type invariant the client is valid.
        unsafe { bindings::dm_bufio_forget(self.as_raw(), block) };
        self.write_held_block_durably(block, data)
    }

    /// Writes `data` to block `block` around the cache, with `REQ_PREFLUSH | REQ_FUA`
    /// (`dm_io()`), and waits, without writing back any dirty buffer first (a journal commit,
    /// where [`Client::commit_block`] is a checkpoint). When it returns `Ok`, every write that
    /// had completed before it and then `data` are on stable storage; a crash before leaves the
    /// block unwritten, torn (the caller's checksum tells), or written with everything before
    /// it durable too. A buffer of the block that the cache holds stays there as it is: if it
    /// is dirty, its contents are written back later, over `data`.
    ///
    /// Fails with `EINVAL` unless `data` is one block long and the block lies on the device,
    /// and with `EBUSY` if a buffer of the block is held or [`MAX_HELD`] buffers are.
    pub fn write_block_durably(&self, block: Sector, data: &VVec<u8>) -> Result {
        self.with_block_held(block, data, Self::write_held_block_durably)
    }

    /// The write of [`Client::write_block_durably`], once `block` is in the held list.
    fn write_held_block_durably(&self, block: Sector, data: &VVec<u8>) -> Result {
        // CAST: A block size fits a `u64`; `block` is on the device, so the product does not
        // overflow (checked all the same).
        let sectors = (self.block_size >> 9) as u64;
        let mut region = bindings::dm_io_region {
            bdev: self._dev.bdev().as_raw(),
            sector: block.checked_mul(sectors).ok_or(EINVAL)?,
            count: sectors,
        };
        let mut req = bindings::dm_io_request {
            bi_opf: bindings::req_op_REQ_OP_WRITE
                | bindings::REQ_PREFLUSH
                | bindings::REQ_FUA
                | bindings::REQ_SYNC,
            // SAFETY: By the type invariant the client is valid.
            client: unsafe { bindings::dm_bufio_get_dm_io_client(self.as_raw()) },
            ..Default::default()
        };
        req.mem.type_ = bindings::dm_io_mem_type_DM_IO_VMA;
        // CAST: dm-io only reads the memory of a write.
        req.mem.ptr.vma = data.as_ptr().cast_mut().cast();
        // No notify function: dm_io() is synchronous.
        // SAFETY: `req` and `region` are valid for the call. `data` is `count` sectors of
        // vmalloc memory (a `VVec` of non-zero length, as `DM_IO_VMA` needs), borrowed, so
        // alive and unwritten until the synchronous `dm_io()` has returned, and with it the
        // I/O. The dm-io client is the bufio client's, valid as long as it is, and `_dev`
        // holds the block device.
        to_result(unsafe {
            bindings::dm_io(
                &mut req,
                1,
                &mut region,
                core::ptr::null_mut(),
                IOPRIO_DEFAULT,
            )
        })
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
/// Derefs to the block's bytes, read-only; [`Buffer::write`] and [`Buffer::fill`] change them
/// and mark the changed range dirty, so that it reaches the device. Released
/// (`dm_bufio_release()`) when dropped.
///
/// Dirty buffers may be written back in the background while they are held (as in C), so a
/// block being modified can reach the device half-updated; order updates accordingly. That
/// write-back reads the buffer's memory concurrently with its holder, which is why there is no
/// mutable access to it (see the [module documentation](self)).
///
/// # Invariants
///
/// `b` is a buffer of block `block` held by us, whose data of `len` bytes (the client's block
/// size) is at `data` and initialised, and `block` is recorded in the `held` list of `client`,
/// which outlives the buffer. Only the holder of the buffer writes the data; anything else
/// (write-back I/O) only reads it.
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
    /// `b` must be a buffer of `block` of `client`, held by the caller, with the client's block
    /// size of initialised data at `data`, and `block` must have been recorded in `client`'s
    /// held list for this buffer.
    #[inline]
    unsafe fn new(
        client: &'a Client,
        block: Sector,
        b: *mut bindings::dm_buffer,
        data: *mut core::ffi::c_void,
    ) -> Self {
        // INVARIANT: By the safety requirements; dm-bufio itself writes a buffer's data only
        // when it reads the block from the device, which happens before `dm_bufio_read()` or
        // `dm_bufio_new()` return it, never while the buffer is held.
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

    /// Returns the auxiliary byte of the buffer.
    #[inline]
    fn aux(&self) -> u8 {
        // SAFETY: By the type invariants the buffer is held and its client has one byte of
        // auxiliary data, which only the holder of the buffer accesses (and `clear_aux`, for
        // buffers that no one holds).
        unsafe {
            bindings::dm_bufio_get_aux_data(self.b.as_ptr())
                .cast::<u8>()
                .read()
        }
    }

    /// Sets the auxiliary byte of the buffer.
    #[inline]
    fn set_aux(&self, aux: u8) {
        // SAFETY: As in `aux`.
        unsafe {
            bindings::dm_bufio_get_aux_data(self.b.as_ptr())
                .cast::<u8>()
                .write(aux)
        };
    }

    /// Returns `true` if [`Buffer::set_validated`] was called since dm-bufio last loaded this
    /// buffer with its block (and since the last [`Client::new_buffer`] of the block).
    #[inline]
    pub fn is_validated(&self) -> bool {
        self.aux() & AUX_VALIDATED != 0
    }

    /// Records that the user checked (or produced) the buffer's contents.
    #[inline]
    pub fn set_validated(&self) {
        self.set_aux(self.aux() | AUX_VALIDATED);
    }

    /// Clears the validated flag, for contents that changed without being checked.
    #[inline]
    pub fn clear_validated(&self) {
        self.set_aux(self.aux() & !AUX_VALIDATED);
    }

    /// Returns the block number of the buffer.
    #[inline]
    pub fn block(&self) -> Sector {
        self.block
    }

    /// Checks that `len` bytes at `offset` are inside the buffer, and returns their end.
    #[inline]
    fn check_range(&self, offset: usize, len: usize) -> Result<usize> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(end),
            _ => Err(EINVAL),
        }
    }

    /// Copies `data` into the buffer at byte `offset` and marks that range dirty. Fails with
    /// `EINVAL` if the range does not fit in the buffer.
    ///
    /// A write-back of the buffer that overlaps the copy may write a mix of old and new
    /// contents; the range is marked dirty after the copy, so the final contents are written
    /// after it.
    #[inline]
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result {
        let end = self.check_range(offset, data.len())?;
        // SAFETY: `offset + data.len() <= len`, so the destination is inside the buffer's data,
        // which is valid for writes while we hold the buffer (type invariant). `data` cannot
        // overlap it: it is a shared reference, while `&mut self` excludes every reference to
        // the buffer's data derived from `self`, and the client hands out no other `Buffer` of
        // the block. For the same reason no Rust reference to the destination is live during
        // the copy. The only access that may happen concurrently is a read of the data by
        // write-back I/O started by dm-bufio (DMA, or a copy by the device's driver on another
        // CPU): that access is outside Rust, and what it reads is never relied on, because the
        // range is marked dirty below, after the copy, so it is written again with the final
        // contents.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.data.as_ptr().add(offset),
                data.len(),
            )
        };
        self.mark_partial_dirty(offset, end);
        Ok(())
    }

    /// Sets `len` bytes of the buffer at byte `offset` to `byte` and marks that range dirty.
    /// Fails with `EINVAL` if the range does not fit in the buffer.
    ///
    /// A concurrent write-back behaves as for [`Buffer::write`].
    #[inline]
    pub fn fill(&mut self, offset: usize, len: usize, byte: u8) -> Result {
        let end = self.check_range(offset, len)?;
        // SAFETY: `offset + len <= len` of the buffer; otherwise as in `write`: no Rust
        // reference to the destination is live, and a concurrent read by write-back I/O is
        // followed by another write-back because the range is marked dirty after this.
        unsafe { core::ptr::write_bytes(self.data.as_ptr().add(offset), byte, len) };
        self.mark_partial_dirty(offset, end);
        Ok(())
    }

    /// Marks the whole buffer dirty, to be written back (`dm_bufio_mark_buffer_dirty()`).
    ///
    /// [`Buffer::write`] and [`Buffer::fill`] mark what they change themselves; this writes
    /// the block back even if it did not change.
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
        // SAFETY: By the type invariant the data is valid and initialised for `len` bytes while
        // the buffer is held. Nothing writes it while the returned reference is live: only the
        // holder writes it, through `write` and `fill`, which take `&mut self`; no other
        // `Buffer` aliases it (the client hands out one buffer per block); and write-back I/O
        // only reads it.
        unsafe { core::slice::from_raw_parts(self.data.as_ptr(), self.len) }
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
