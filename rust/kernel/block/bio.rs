// SPDX-License-Identifier: GPL-2.0

//! Block I/O units (`struct bio`).
//!
//! A [`Bio`] describes one I/O to a contiguous range of sectors of a block device. This module
//! gives bio-based drivers (for example device-mapper targets, `kernel::device_mapper`) what
//! they need to look at a bio, to redirect it to another device and sector, and to complete or
//! resubmit it:
//!
//! - [`Bio`] is the borrowed view of a bio that a driver has been given access to. It is only
//!   ever handed out by reference and is not [`Sync`]: whoever holds the reference is the one
//!   context working on the bio.
//! - [`OwnedBio`] is a bio in flight that the driver has taken responsibility for. It must be
//!   either [submitted](OwnedBio::submit) or [ended](OwnedBio::end); dropping it ends the bio
//!   with an I/O error, so a bio is never leaked.
//! - [`BioList`] is an intrusive FIFO of owned bios (C `struct bio_list`, linked through
//!   `bi_next`), which needs no allocation and can be kept inside a
//!   [`SpinLock`](crate::sync::SpinLock) to defer bios to a worker.
//!
//! # Contexts
//!
//! Bios are submitted from process context, but a bio may be submitted while the submitter holds
//! locks or is in a memory reclaim path, and bios complete in interrupt context. None of the
//! methods here sleep, with the exception of [`OwnedBio::submit`] which may block in the block
//! layer's throttling like `submit_bio_noacct()` does.
//!
//! C header: [`include/linux/bio.h`](srctree/include/linux/bio.h)

use crate::{
    bindings,
    error::{to_result, Result},
    types::Opaque,
};
use core::{fmt, marker::PhantomData, ptr::NonNull};

/// A sector number or count, in units of 512 bytes (C `sector_t`).
pub type Sector = u64;

/// The shift to convert between bytes and sectors (C `SECTOR_SHIFT`).
pub const SECTOR_SHIFT: u32 = bindings::SECTOR_SHIFT;

/// The size of a sector in bytes (C `SECTOR_SIZE`).
pub const SECTOR_SIZE: u32 = 1 << SECTOR_SHIFT;

/// The operation a bio performs (C `enum req_op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Read sectors from the device.
    Read,
    /// Write sectors to the device.
    Write,
    /// Flush the volatile write cache (without data).
    Flush,
    /// Discard sectors.
    Discard,
    /// Securely erase sectors.
    SecureErase,
    /// Write zeroes to sectors.
    WriteZeroes,
    /// Any other operation (zone management, driver private), with its C value.
    Other(u32),
}

impl Operation {
    fn from_raw(op: bindings::req_op) -> Self {
        match op {
            bindings::req_op_REQ_OP_READ => Self::Read,
            bindings::req_op_REQ_OP_WRITE => Self::Write,
            bindings::req_op_REQ_OP_FLUSH => Self::Flush,
            bindings::req_op_REQ_OP_DISCARD => Self::Discard,
            bindings::req_op_REQ_OP_SECURE_ERASE => Self::SecureErase,
            bindings::req_op_REQ_OP_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Other(other),
        }
    }
}

/// Operation flags of a bio (the upper bits of C `blk_opf_t`).
///
/// # Examples
///
/// ```
/// use kernel::block::bio::Flags;
///
/// let fua = Flags::FUA;
/// assert!(fua.contains(Flags::FUA));
/// assert!(!fua.contains(Flags::PREFLUSH));
/// assert_eq!(fua.as_raw(), kernel::bindings::REQ_FUA);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Flags(bindings::blk_opf_t);

impl Flags {
    /// The request is synchronous (`REQ_SYNC`).
    pub const SYNC: Flags = Flags(bindings::REQ_SYNC);
    /// Metadata I/O (`REQ_META`).
    pub const META: Flags = Flags(bindings::REQ_META);
    /// Forced unit access: the data must be on stable storage on completion (`REQ_FUA`).
    pub const FUA: Flags = Flags(bindings::REQ_FUA);
    /// Flush the volatile write cache before the data of this bio is written (`REQ_PREFLUSH`).
    pub const PREFLUSH: Flags = Flags(bindings::REQ_PREFLUSH);
    /// The submitter does not want to wait (`REQ_NOWAIT`).
    pub const NOWAIT: Flags = Flags(bindings::REQ_NOWAIT);

    /// Returns `true` if all flags in `other` are set in `self`.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Returns the raw C value.
    pub fn as_raw(self) -> bindings::blk_opf_t {
        self.0
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Flags({:#x})", self.0)
    }
}

/// A block device (C `struct block_device`), only ever used by reference.
///
/// # Invariants
///
/// A `&BlockDevice` points to a valid `struct block_device` for the lifetime of the reference.
#[repr(transparent)]
pub struct BlockDevice(Opaque<bindings::block_device>);

// SAFETY: The methods of `BlockDevice` only read fields that the block layer keeps stable for
// the lifetime of the device or that it updates atomically, so they may be used from any thread.
unsafe impl Sync for BlockDevice {}
// SAFETY: `BlockDevice` is only used by reference; see the `Sync` implementation.
unsafe impl Send for BlockDevice {}

impl BlockDevice {
    /// Creates a reference from a raw pointer.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `struct block_device` that stays valid for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::block_device) -> &'a Self {
        // CAST: `BlockDevice` is a transparent wrapper around `struct block_device`.
        // SAFETY: By the safety requirements the pointer is valid for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    /// Returns the raw pointer.
    pub fn as_raw(&self) -> *mut bindings::block_device {
        self.0.get()
    }

    /// Returns the device number (C `dev_t`).
    pub fn dev_t(&self) -> u32 {
        // SAFETY: By the type invariant the pointer is valid; `bd_dev` never changes.
        unsafe { (*self.as_raw()).bd_dev }
    }

    /// Returns the size of the device in sectors (`bdev_nr_sectors()`).
    pub fn nr_sectors(&self) -> Sector {
        // SAFETY: By the type invariant the pointer is valid.
        unsafe { bindings::bdev_nr_sectors(self.as_raw()) }
    }

    /// Returns the logical block size of the device in bytes (`bdev_logical_block_size()`).
    pub fn logical_block_size(&self) -> u32 {
        // SAFETY: By the type invariant the pointer is valid.
        unsafe { bindings::bdev_logical_block_size(self.as_raw()) }
    }

    /// Returns the physical block size of the device in bytes (`bdev_physical_block_size()`).
    pub fn physical_block_size(&self) -> u32 {
        // SAFETY: By the type invariant the pointer is valid.
        unsafe { bindings::bdev_physical_block_size(self.as_raw()) }
    }

    /// Flushes the device's volatile write cache (`blkdev_issue_flush()`): the writes that
    /// completed before the call are durable when it returns successfully.
    ///
    /// Sleeps until the flush completes: call it from process context only.
    pub fn flush(&self) -> Result {
        // SAFETY: By the type invariant the pointer is valid; the function takes no other
        // argument and keeps no reference after it returns.
        to_result(unsafe { bindings::blkdev_issue_flush(self.as_raw()) })
    }
}

/// A block I/O unit (C `struct bio`), seen by the context currently working on it.
///
/// This type is only used by reference. The reference is handed out by abstractions that
/// guarantee that the bio stays valid, that nobody ends or frees it and that nobody else
/// accesses it for the lifetime of the reference: an in-flight bio owned by an [`OwnedBio`] or
/// given to the device-mapper `map` callback, or a bio in the middle of its completion, as in
/// the device-mapper `end_io` callback (which runs from `bio_endio()`, before the bio is given
/// back to its submitter). No method of `Bio` ends the bio. It is not [`Sync`], so the
/// reference cannot be shared with another thread; this is what makes the methods that change
/// the bio through a shared reference sound, like for [`core::cell::Cell`].
///
/// # Invariants
///
/// A `&Bio` points to a valid, initialised `struct bio` that is neither freed nor ended by
/// anyone else, nor accessed by anyone else, for the lifetime of the reference. It is either in
/// flight or in its completion.
#[repr(transparent)]
pub struct Bio(Opaque<bindings::bio>);

impl Bio {
    /// Creates a reference from a raw pointer.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid `struct bio`, in flight or in its completion, that the
    /// caller works on exclusively, and that nobody else ends or frees, for `'a`.
    pub unsafe fn from_raw<'a>(ptr: *mut bindings::bio) -> &'a Self {
        // CAST: `Bio` is a transparent wrapper around `struct bio`.
        // SAFETY: By the safety requirements the pointer is valid for `'a`.
        unsafe { &*ptr.cast::<Self>() }
    }

    /// Returns the raw pointer.
    pub fn as_raw(&self) -> *mut bindings::bio {
        self.0.get()
    }

    /// Returns the first sector of the bio (`bi_iter.bi_sector`).
    pub fn sector(&self) -> Sector {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access.
        unsafe { (*self.as_raw()).bi_iter.bi_sector }
    }

    /// Sets the first sector of the bio, for example to remap it.
    pub fn set_sector(&self, sector: Sector) {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access.
        unsafe { (*self.as_raw()).bi_iter.bi_sector = sector };
    }

    /// Returns the remaining size of the bio in bytes (`bi_iter.bi_size`).
    pub fn size(&self) -> u32 {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access.
        unsafe { (*self.as_raw()).bi_iter.bi_size }
    }

    /// Returns the remaining size of the bio in sectors (`bio_sectors()`).
    pub fn sectors(&self) -> Sector {
        Sector::from(self.size() >> SECTOR_SHIFT)
    }

    /// Returns the sector after the last sector of the bio (`bio_end_sector()`).
    pub fn end_sector(&self) -> Sector {
        self.sector() + self.sectors()
    }

    fn opf(&self) -> bindings::blk_opf_t {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access.
        unsafe { (*self.as_raw()).bi_opf }
    }

    /// Returns the operation of the bio (`bio_op()`).
    pub fn op(&self) -> Operation {
        Operation::from_raw(self.opf() & bindings::REQ_OP_MASK)
    }

    /// Returns the flags of the bio.
    pub fn flags(&self) -> Flags {
        Flags(self.opf() & !bindings::REQ_OP_MASK)
    }

    /// Returns `true` if the bio transfers data to the device (`op_is_write()`).
    pub fn is_write(&self) -> bool {
        self.opf() & 1 != 0
    }

    /// Returns `true` if the bio has the preflush flag set (`REQ_PREFLUSH`).
    pub fn is_preflush(&self) -> bool {
        self.flags().contains(Flags::PREFLUSH)
    }

    /// Returns `true` if the bio has the forced unit access flag set (`REQ_FUA`).
    pub fn is_fua(&self) -> bool {
        self.flags().contains(Flags::FUA)
    }

    /// Returns `true` if the bio needs a cache flush before or after its data
    /// (`op_is_flush()`: `REQ_PREFLUSH` or `REQ_FUA`).
    pub fn is_flush(&self) -> bool {
        self.opf() & (bindings::REQ_FUA | bindings::REQ_PREFLUSH) != 0
    }

    /// Returns `true` if the bio carries data pages (`bio_has_data()`); `false` for flushes
    /// without data, discards and the like.
    pub fn has_data(&self) -> bool {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access.
        unsafe { bindings::bio_has_data(self.as_raw()) }
    }

    /// Returns the device the bio is directed to.
    pub fn bdev(&self) -> Option<&BlockDevice> {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access.
        let bdev = unsafe { (*self.as_raw()).bi_bdev };
        if bdev.is_null() {
            None
        } else {
            // SAFETY: A bio takes no reference on its device, but a bio may only be submitted
            // to a device that its submitter keeps open until the bio has completed (for
            // device-mapper clones, the table keeps its devices open until its bios are done),
            // and an open device's `struct block_device` is valid. The returned reference does
            // not outlive the borrow of the bio, which by the type invariant is in flight or
            // completing.
            Some(unsafe { BlockDevice::from_raw(bdev) })
        }
    }

    /// Directs the bio to another block device (`bio_set_dev()`).
    pub fn set_dev(&self, bdev: &BlockDevice) {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access;
        // `bdev` is valid by its type invariant.
        unsafe { bindings::bio_set_dev(self.as_raw(), bdev.as_raw()) };
    }

    /// Directs the bio to `bdev` at `sector`: a remap.
    pub fn remap(&self, bdev: &BlockDevice, sector: Sector) {
        self.set_dev(bdev);
        self.set_sector(sector);
    }

    /// Fills the data of the bio with zeroes (`zero_fill_bio()`), for example to complete a
    /// read of an unmapped range.
    pub fn zero_fill(&self) {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access.
        unsafe { bindings::zero_fill_bio(self.as_raw()) };
    }

    /// Advances the bio by `bytes` (`bio_advance()`): its sector, size and data iterator move
    /// forward. `bytes` is capped at the remaining size.
    pub fn advance(&self, bytes: u32) {
        let bytes = bytes.min(self.size());
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access, and
        // `bytes` is at most the remaining size.
        unsafe { bindings::bio_advance(self.as_raw(), bytes) };
    }

    /// Returns the completion status of the bio as a [`Result`] (`bi_status`).
    pub fn status(&self) -> Result {
        // SAFETY: By the type invariant the pointer is valid and we have exclusive access.
        let status = unsafe { (*self.as_raw()).bi_status };
        status_to_result(status)
    }
}

impl fmt::Debug for Bio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bio")
            .field("op", &self.op())
            .field("flags", &self.flags())
            .field("sector", &self.sector())
            .field("size", &self.size())
            .finish()
    }
}

/// Converts a C `blk_status_t` into a [`Result`].
///
/// # Examples
///
/// ```
/// use kernel::block::bio::{result_to_status, status_to_result};
/// use kernel::prelude::*;
///
/// // The two conversions are inverse for the errors a block status can carry.
/// assert_eq!(status_to_result(result_to_status(Ok(()))), Ok(()));
/// assert_eq!(status_to_result(result_to_status(Err(EIO))), Err(EIO));
/// assert_eq!(status_to_result(result_to_status(Err(ENOSPC))), Err(ENOSPC));
/// ```
pub fn status_to_result(status: bindings::blk_status_t) -> Result {
    if u32::from(status) == bindings::BLK_STS_OK {
        Ok(())
    } else {
        // SAFETY: `blk_status_to_errno` accepts any status.
        to_result(unsafe { bindings::blk_status_to_errno(status) })
    }
}

/// Converts a [`Result`] into a C `blk_status_t`.
pub fn result_to_status(result: Result) -> bindings::blk_status_t {
    match result {
        // CAST: `BLK_STS_OK` is 0 and fits every integer type.
        Ok(()) => bindings::BLK_STS_OK as bindings::blk_status_t,
        Err(e) => e.to_blk_status(),
    }
}

/// A bio in flight that the owner of this value is responsible for.
///
/// The owner must finish the bio: either [`submit`](Self::submit) it (after remapping it) or
/// [`end`](Self::end) it. Dropping an `OwnedBio` ends the bio with an I/O error, so that the
/// submitter is never left waiting.
///
/// # Invariants
///
/// `self.0` points to a valid bio that is in flight, that nobody else accesses and whose
/// completion is the responsibility of this value.
pub struct OwnedBio(NonNull<Bio>);

// SAFETY: A bio may be submitted or completed from any thread.
unsafe impl Send for OwnedBio {}

impl OwnedBio {
    /// Takes ownership of a bio.
    ///
    /// # Safety
    ///
    /// `ptr` must point to a valid bio in flight that the caller is responsible for completing,
    /// and the caller transfers that responsibility to the returned value.
    pub unsafe fn from_raw(ptr: *mut bindings::bio) -> Self {
        // INVARIANT: By the safety requirements.
        // SAFETY: A valid pointer is not null.
        Self(unsafe { NonNull::new_unchecked(ptr.cast()) })
    }

    /// Gives up ownership, returning the raw pointer. The caller becomes responsible for
    /// completing the bio.
    pub fn into_raw(self) -> *mut bindings::bio {
        let ptr = self.as_raw();
        core::mem::forget(self);
        ptr
    }

    /// Submits the bio to the device and sector it is directed to (`submit_bio_noacct()`).
    ///
    /// This must be called from process or soft interrupt context (like a workqueue), not
    /// from hard interrupt context; it may block for throttling.
    pub fn submit(self) {
        let ptr = self.into_raw();
        // SAFETY: We owned the bio, which is valid, and pass the responsibility for it to the
        // block layer.
        unsafe { bindings::submit_bio_noacct(ptr) };
    }

    /// Completes the bio with `result` (`bio_endio()`). May be called from any context.
    pub fn end(self, result: Result) {
        let ptr = self.into_raw();
        // SAFETY: We owned the bio, which is valid, so we may set its status and complete it.
        unsafe {
            (*ptr).bi_status = result_to_status(result);
            bindings::bio_endio(ptr);
        }
    }
}

impl core::ops::Deref for OwnedBio {
    type Target = Bio;

    fn deref(&self) -> &Bio {
        // SAFETY: By the type invariant the bio is valid and only accessed through `self`.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for OwnedBio {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we are responsible for completing the valid bio.
        unsafe { bindings::bio_io_error(self.as_raw()) };
    }
}

impl fmt::Debug for OwnedBio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Owning wrappers of bios that can be linked into a [`BioList`].
///
/// # Safety
///
/// Implementors must be owners of a bio in flight in the sense of [`OwnedBio`]:
/// [`into_raw`](Self::into_raw) gives up that ownership and [`from_raw`](Self::from_raw) takes
/// it back, and the bio's `bi_next` field is not used while the value exists.
pub unsafe trait BioOwner: Sized {
    /// Gives up ownership, returning the raw pointer.
    fn into_raw(self) -> *mut bindings::bio;

    /// Takes back ownership of a bio given up by [`into_raw`](Self::into_raw).
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`into_raw`](Self::into_raw) of the same type, and not have been
    /// taken back yet.
    unsafe fn from_raw(ptr: *mut bindings::bio) -> Self;
}

// SAFETY: `OwnedBio` owns a bio in flight, as required.
unsafe impl BioOwner for OwnedBio {
    fn into_raw(self) -> *mut bindings::bio {
        OwnedBio::into_raw(self)
    }

    unsafe fn from_raw(ptr: *mut bindings::bio) -> Self {
        // SAFETY: By the safety requirements, `ptr` came from `into_raw`, so we may take back
        // ownership.
        unsafe { OwnedBio::from_raw(ptr) }
    }
}

/// An intrusive FIFO list of owned bios (C `struct bio_list`), linked through `bi_next`.
///
/// Pushing and popping neither allocates nor sleeps, so a `BioList` can be kept in a
/// [`SpinLock`](crate::sync::SpinLock) and filled from a device-mapper `map` callback, then
/// drained by a worker. Bios still in the list when it is dropped are ended with an I/O error.
///
/// # Examples
///
/// ```
/// use kernel::block::bio::BioList;
///
/// fn resubmit_all(list: &mut BioList) {
///     while let Some(bio) = list.pop() {
///         bio.submit();
///     }
/// }
/// ```
///
/// # Invariants
///
/// Every bio in `self.list` is owned by the list, was given up with [`BioOwner::into_raw`] of
/// `B`, and its `bi_next` is only used by the list.
pub struct BioList<B: BioOwner = OwnedBio> {
    list: bindings::bio_list,
    _p: PhantomData<B>,
}

// SAFETY: The list owns its bios; sending the list sends them, which is fine if `B` may be sent.
unsafe impl<B: BioOwner + Send> Send for BioList<B> {}

impl<B: BioOwner> BioList<B> {
    /// Creates an empty list.
    pub const fn new() -> Self {
        // INVARIANT: The list is empty.
        Self {
            list: bindings::bio_list {
                head: core::ptr::null_mut(),
                tail: core::ptr::null_mut(),
            },
            _p: PhantomData,
        }
    }

    /// Returns `true` if the list is empty.
    pub fn is_empty(&self) -> bool {
        self.list.head.is_null()
    }

    /// Returns the number of bios in the list. Walks the list.
    pub fn len(&self) -> usize {
        // SAFETY: `self.list` is a valid list by the type invariant.
        unsafe { bindings::bio_list_size(&self.list) as usize }
    }

    /// Adds a bio at the end of the list.
    pub fn push_back(&mut self, bio: B) {
        let ptr = bio.into_raw();
        // INVARIANT: The list now owns the bio.
        // SAFETY: `self.list` is a valid list and `ptr` a valid bio that we own.
        unsafe { bindings::bio_list_add(&mut self.list, ptr) };
    }

    /// Adds a bio at the front of the list.
    pub fn push_front(&mut self, bio: B) {
        let ptr = bio.into_raw();
        // INVARIANT: The list now owns the bio.
        // SAFETY: `self.list` is a valid list and `ptr` a valid bio that we own.
        unsafe { bindings::bio_list_add_head(&mut self.list, ptr) };
    }

    /// Removes and returns the first bio of the list.
    pub fn pop(&mut self) -> Option<B> {
        // SAFETY: `self.list` is a valid list by the type invariant.
        let ptr = unsafe { bindings::bio_list_pop(&mut self.list) };
        if ptr.is_null() {
            None
        } else {
            // SAFETY: By the type invariant, bios in the list came from `B::into_raw`; the
            // bio was removed from the list so ownership goes back to the caller.
            Some(unsafe { B::from_raw(ptr) })
        }
    }

    /// Moves all bios of `other` to the end of `self`, leaving `other` empty.
    pub fn append(&mut self, other: &mut Self) {
        // SAFETY: Both lists are valid; the bios of `other` are of the same type and move to
        // `self`, and `other` is reinitialised to the empty list.
        unsafe { bindings::bio_list_merge_init(&mut self.list, &mut other.list) };
    }

    /// Takes all bios out of the list, leaving it empty.
    pub fn take(&mut self) -> Self {
        core::mem::take(self)
    }
}

impl<B: BioOwner> Default for BioList<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: BioOwner> Drop for BioList<B> {
    fn drop(&mut self) {
        while let Some(bio) = self.pop() {
            drop(bio);
        }
    }
}
