// SPDX-License-Identifier: GPL-2.0

//! Device-mapper targets.
//!
//! A device-mapper target type turns a line of a table (`<start> <len> <type> <args...>`) into a
//! target instance that maps the bios sent to its range of the mapped device. A driver
//! implements [`TargetOperations`] for its private per-target data and registers it with a
//! [`Registration`], which unregisters the target type when dropped.
//!
//! # Ownership and contexts
//!
//! - [`TargetOperations::ctr`] runs in process context, may sleep and allocate, and returns the
//!   private data of the new target. It gets a [`TargetCtx`] to open devices
//!   ([`TargetCtx::get_device`]) and to adjust the target's settings. On failure it returns a
//!   [`CtrError`] whose static message device-mapper shows in the kernel log as
//!   `device-mapper: table: <dev>: <type>: <message> (-EINVAL)`.
//! - The private data is owned by the target and dropped exactly once, when the target is
//!   destroyed (the C `dtr`). Devices obtained in `ctr` are released (`dm_put_device()`) by the
//!   abstraction right after the private data is dropped.
//! - The other callbacks receive the private data as `Pin<&Self>`. `map`, `end_io`, `status`,
//!   `message` and `iterate_devices` may run concurrently with each other (hence `Self: Sync`);
//!   any mutable state must be behind a lock or atomics in the private data.
//! - [`TargetOperations::map`] runs in the context of the submitter of the bio, which may be in
//!   a memory reclaim path or hold locks: it must not sleep or allocate with `GFP_KERNEL`.
//!   [`TargetOperations::end_io`] runs in bio completion context, typically hard or soft
//!   interrupt context: it must not sleep.
//!
//! # Module and symbol availability
//!
//! Device-mapper may be built as a module (`dm-mod.ko`) while this crate is built in. Every
//! non-generic function here that calls into device-mapper is `#[inline]`, so that it is only
//! instantiated in the (GPL) module using it, which then depends on `dm-mod`.
//!
//! C header: [`include/linux/device-mapper.h`](srctree/include/linux/device-mapper.h)
//!
//! # Examples
//!
//! A target that maps its whole range onto the start of one device:
//!
//! ```
//! use kernel::block::bio::BlockDevice;
//! use kernel::device_mapper::{
//!     CtrError, CtrResultExt, DmBio, DmDev, MapResult, Target, TargetCtx, TargetOperations,
//! };
//! use kernel::prelude::*;
//! use kernel::{c_str, str::CStr};
//!
//! struct Passthrough {
//!     dev: DmDev,
//! }
//!
//! #[vtable]
//! impl TargetOperations for Passthrough {
//!     type Context = ();
//!     type PerIo = ();
//!
//!     fn ctr(t: &mut TargetCtx<'_, Self>, args: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
//!         let [path] = args else {
//!             return Err(CtrError::new(EINVAL, c_str!("Invalid argument count")));
//!         };
//!         let dev = t.get_device(path).ctr_err(c_str!("Device lookup failed"))?;
//!         KBox::pin(Self { dev }, GFP_KERNEL).ctr_err(c_str!("Cannot allocate context"))
//!     }
//!
//!     fn map(this: Pin<&Self>, t: &Target, bio: DmBio<Self>) -> MapResult<Self> {
//!         bio.remap(this.dev.bdev(), t.offset(bio.sector()));
//!         MapResult::Remapped(bio)
//!     }
//! }
//! ```

pub mod bufio;
pub mod kcopyd;

use crate::{
    alloc::{flags::GFP_KERNEL, AllocError, KBox, KVec},
    bindings,
    block::bio::{self, Bio, BioOwner, BlockDevice, OwnedBio, Sector},
    error::{code::*, from_result, to_result, Error, Result, VTABLE_DEFAULT_ERROR},
    ffi::{c_char, c_int, c_uint, c_void},
    init::PinInit,
    prelude::*,
    str::CStr,
    sync::Arc,
    types::Opaque,
    ThisModule,
};
use core::{fmt, marker::PhantomData, ops::ControlFlow, pin::Pin, ptr::NonNull};

/// An error of a target constructor: an error code and the message device-mapper logs.
///
/// Use [`CtrError::new`], or [`CtrResultExt::ctr_err`] to attach a message to any fallible
/// call. An [`Error`] converts into a `CtrError` without a message, in which case
/// device-mapper logs "Unknown error".
///
/// # Examples
///
/// ```
/// use kernel::{c_str, device_mapper::{CtrError, CtrResultExt}, prelude::*, str::CStr};
///
/// fn parse_offset(arg: &CStr) -> Result<u64, CtrError> {
///     let s = arg.to_str().ctr_err(c_str!("Invalid device sector"))?;
///     s.parse::<u64>().map_err(|_| CtrError::new(EINVAL, c_str!("Invalid device sector")))
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CtrError {
    error: Error,
    msg: Option<&'static CStr>,
}

impl CtrError {
    /// Creates an error with a message shown in the kernel log.
    pub const fn new(error: Error, msg: &'static CStr) -> Self {
        Self {
            error,
            msg: Some(msg),
        }
    }

    /// Returns the error code.
    pub fn error(&self) -> Error {
        self.error
    }

    /// Returns the message, if any.
    pub fn message(&self) -> Option<&'static CStr> {
        self.msg
    }
}

impl From<Error> for CtrError {
    fn from(error: Error) -> Self {
        Self { error, msg: None }
    }
}

impl From<AllocError> for CtrError {
    fn from(_: AllocError) -> Self {
        Self::new(ENOMEM, crate::c_str!("Cannot allocate memory"))
    }
}

impl From<CtrError> for Error {
    fn from(e: CtrError) -> Self {
        e.error
    }
}

/// Attaches a constructor error message to a [`Result`].
pub trait CtrResultExt<T> {
    /// Maps the error to a [`CtrError`] with `msg`.
    fn ctr_err(self, msg: &'static CStr) -> Result<T, CtrError>;
}

impl<T, E: Into<Error>> CtrResultExt<T> for Result<T, E> {
    fn ctr_err(self, msg: &'static CStr) -> Result<T, CtrError> {
        self.map_err(|e| CtrError::new(e.into(), msg))
    }
}

/// Result of [`TargetOperations::map`]: what happens to the bio.
///
/// The variants that carry the bio give it back to device-mapper. A target that keeps the bio
/// (to submit or end it later, from any context) returns [`MapResult::Submitted`]; so does a
/// target that already ended or submitted it.
pub enum MapResult<T: TargetOperations> {
    /// The bio was remapped (device and sector): device-mapper submits it (`DM_MAPIO_REMAPPED`).
    Remapped(DmBio<T>),
    /// The target took care of the bio (`DM_MAPIO_SUBMITTED`).
    Submitted,
    /// Fail the bio with an I/O error (`DM_MAPIO_KILL`).
    Kill(DmBio<T>),
    /// Push the bio back to be mapped again (`DM_MAPIO_REQUEUE`), only honoured while the
    /// device is being suspended with `--noflush`; otherwise the I/O fails.
    Requeue(DmBio<T>),
    /// Like [`MapResult::Requeue`], after a delay (`DM_MAPIO_DELAY_REQUEUE`).
    DelayRequeue(DmBio<T>),
}

/// Result of [`TargetOperations::end_io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndIoResult {
    /// The bio is complete (`DM_ENDIO_DONE`).
    Done,
    /// Push the bio back to be mapped again (`DM_ENDIO_REQUEUE`).
    Requeue,
    /// Like [`EndIoResult::Requeue`], after a delay (`DM_ENDIO_DELAY_REQUEUE`).
    DelayRequeue,
}

/// Which status [`TargetOperations::status`] is asked for (C `status_type_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusType {
    /// Run-time information (`dmsetup status`).
    Info,
    /// The table line arguments (`dmsetup table`).
    Table,
    /// Measurement data for IMA (`key=value,...;`).
    Ima,
}

/// Flags of a status request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusFlags(c_uint);

impl StatusFlags {
    /// Returns `true` if the caller asked not to flush (`DM_STATUS_NOFLUSH_FLAG`), so the
    /// target should not wait for I/O to get the status.
    pub fn noflush(self) -> bool {
        // `DM_STATUS_NOFLUSH_FLAG` of `drivers/md/dm.h`.
        const DM_STATUS_NOFLUSH_FLAG: c_uint = 1 << 0;
        self.0 & DM_STATUS_NOFLUSH_FLAG != 0
    }
}

/// The open mode of a table or device (C `blk_mode_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode(bindings::blk_mode_t);

impl Mode {
    /// Open for reading.
    pub const READ: Mode = Mode(bindings::BLK_OPEN_READ);
    /// Open for reading and writing.
    pub const READ_WRITE: Mode = Mode(bindings::BLK_OPEN_READ | bindings::BLK_OPEN_WRITE);

    /// Returns `true` if the mode allows writing.
    pub fn is_write(self) -> bool {
        self.0 & bindings::BLK_OPEN_WRITE != 0
    }
}

/// The operations of a device-mapper target type.
///
/// `Self` is the private data of one target instance.
#[macros::vtable]
pub trait TargetOperations: Sized + Send + Sync + 'static {
    /// State shared by all targets of this type, and possibly with other target types of the
    /// same module: it is given to [`Registration::new`] and handed to every constructor.
    type Context: Send + Sync;

    /// Per-bio data (C `per_io_data_size`), reached from a bio with [`TargetBio::per_io`].
    ///
    /// It is set to `Default::default()` before every [`TargetOperations::map`] call and is
    /// never dropped, so it must not need dropping; its alignment must not exceed 8. Use `()`
    /// for none.
    type PerIo: Default + Send;

    /// Constructs a target from the arguments of its table line.
    ///
    /// Runs in process context and may sleep.
    fn ctr(target: &mut TargetCtx<'_, Self>, args: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError>;

    /// Maps a bio.
    ///
    /// Must not sleep (see the [module documentation](self)).
    fn map(this: Pin<&Self>, target: &Target, bio: DmBio<Self>) -> MapResult<Self>;

    /// Called when a bio mapped by this target completes, with its status, which it may
    /// change.
    ///
    /// Runs in bio completion context (often interrupt context): must not sleep.
    fn end_io(
        _this: Pin<&Self>,
        _target: &Target,
        _bio: &TargetBio<Self>,
        _status: &mut Result,
    ) -> EndIoResult {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }

    /// Writes the status line (`dmsetup status`) or the table arguments (`dmsetup table`).
    ///
    /// Output that does not fit is cut, and device-mapper retries with a larger buffer.
    fn status(
        _this: Pin<&Self>,
        _target: &Target,
        _type: StatusType,
        _flags: StatusFlags,
        _out: &mut StatusWriter<'_>,
    ) -> fmt::Result {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }

    /// Handles `dmsetup message`. Text written to `reply` is returned to the caller and printed
    /// by `dmsetup`.
    ///
    /// Runs in process context and may sleep.
    fn message(
        _this: Pin<&Self>,
        _target: &Target,
        _args: &[&CStr],
        _reply: &mut StatusWriter<'_>,
    ) -> Result {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }

    /// Called before the device is suspended; I/O may still be in flight.
    fn presuspend(_this: Pin<&Self>, _target: &Target) {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }

    /// Called once the device is suspended and no I/O is in flight.
    fn postsuspend(_this: Pin<&Self>, _target: &Target) {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }

    /// Called before the device is resumed; an error aborts the resume.
    fn preresume(_this: Pin<&Self>, _target: &Target) -> Result {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }

    /// Called when the device is resumed.
    fn resume(_this: Pin<&Self>, _target: &Target) {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }

    /// Reports every range of an underlying device used by the target to `devices`.
    ///
    /// Device-mapper uses this to check that the ranges are within the devices and to combine
    /// their queue limits.
    fn iterate_devices(
        _this: Pin<&Self>,
        _target: &Target,
        _devices: &mut DeviceIterator<'_>,
    ) -> ControlFlow<()> {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }

    /// Adjusts the queue limits of the mapped device.
    fn io_hints(_this: Pin<&Self>, _target: &Target, _limits: &mut QueueLimits) {
        crate::build_error(VTABLE_DEFAULT_ERROR)
    }
}

/// A target instance (C `struct dm_target`), as seen by its callbacks.
///
/// # Invariants
///
/// A `&Target` points to a valid `struct dm_target` whose table is live for the lifetime of
/// the reference.
#[repr(transparent)]
pub struct Target(Opaque<bindings::dm_target>);

// SAFETY: The methods of `Target` read fields that do not change after the constructor, or call
// C functions that may be called concurrently.
unsafe impl Sync for Target {}

impl Target {
    /// # Safety
    ///
    /// `ptr` must point to a valid `struct dm_target` that stays valid for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::dm_target) -> &'a Self {
        // CAST: `Target` is a transparent wrapper around `struct dm_target`.
        // SAFETY: By the safety requirements.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn as_raw(&self) -> *mut bindings::dm_target {
        self.0.get()
    }

    /// Returns the first sector of the target in the mapped device (`ti->begin`).
    pub fn begin(&self) -> Sector {
        // SAFETY: By the type invariant; `begin` does not change after construction.
        unsafe { (*self.as_raw()).begin }
    }

    /// Returns the length of the target in sectors (`ti->len`).
    pub fn len(&self) -> Sector {
        // SAFETY: By the type invariant; `len` does not change after construction.
        unsafe { (*self.as_raw()).len }
    }

    /// Returns `true` if the target has length 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns `sector` of the mapped device relative to the start of the target
    /// (`dm_target_offset()`).
    pub fn offset(&self, sector: Sector) -> Sector {
        sector.wrapping_sub(self.begin())
    }

    /// Returns the maximum I/O size of the target in sectors (0: no limit).
    pub fn max_io_len(&self) -> u32 {
        // SAFETY: By the type invariant; set only by the constructor.
        unsafe { (*self.as_raw()).max_io_len }
    }

    /// Returns the open mode of the table (`dm_table_get_mode()`).
    #[inline]
    pub fn table_mode(&self) -> Mode {
        // SAFETY: By the type invariant the target and its table are valid.
        Mode(unsafe { bindings::dm_table_get_mode((*self.as_raw()).table) })
    }

    /// Returns `true` if the mapped device is suspended (`dm_suspended()`).
    #[inline]
    pub fn is_suspended(&self) -> bool {
        // SAFETY: By the type invariant the target is valid.
        unsafe { bindings::dm_suspended(self.as_raw()) != 0 }
    }

    /// Returns `true` if the mapped device is being suspended without flushing
    /// (`dm_noflush_suspending()`).
    #[inline]
    pub fn is_noflush_suspending(&self) -> bool {
        // SAFETY: By the type invariant the target is valid.
        unsafe { bindings::dm_noflush_suspending(self.as_raw()) != 0 }
    }

    /// Signals an event on the mapped device to waiting userspace (`dm_table_event()`).
    ///
    /// May sleep.
    #[inline]
    pub fn event(&self) {
        // SAFETY: By the type invariant the target and its table are valid.
        unsafe { bindings::dm_table_event((*self.as_raw()).table) };
    }
}

/// The state of one target instance, owned by the target through `ti->private`.
struct TargetState<T> {
    data: Pin<KBox<T>>,
    devs: KVec<NonNull<bindings::dm_dev>>,
}

/// The constructor's view of a new target: settings and device lookup.
///
/// Derefs to [`Target`] for the target's range and table mode.
pub struct TargetCtx<'a, T: TargetOperations> {
    ti: &'a Target,
    context: &'a Arc<T::Context>,
    devs: &'a mut KVec<NonNull<bindings::dm_dev>>,
}

impl<'a, T: TargetOperations> TargetCtx<'a, T> {
    /// Returns the context given to the [`Registration`] of this target type.
    pub fn context(&self) -> &'a Arc<T::Context> {
        self.context
    }

    /// Opens a device by path or `major:minor` with the table's mode (`dm_get_device()`).
    ///
    /// The device stays open until the target is destroyed.
    #[inline]
    pub fn get_device(&mut self, path: &CStr) -> Result<DmDev> {
        let mode = self.ti.table_mode();
        self.get_device_mode(path, mode)
    }

    /// Like [`TargetCtx::get_device`], with an explicit mode.
    #[inline]
    pub fn get_device_mode(&mut self, path: &CStr, mode: Mode) -> Result<DmDev> {
        // Make room first, so that the device can always be recorded for `dm_put_device()`.
        self.devs.reserve(1, GFP_KERNEL)?;
        let mut dev: *mut bindings::dm_dev = core::ptr::null_mut();
        // SAFETY: `ti` is a target under construction, `path` is a NUL-terminated string.
        to_result(unsafe {
            bindings::dm_get_device(self.ti.as_raw(), path.as_char_ptr(), mode.0, &mut dev)
        })?;
        let dev = NonNull::new(dev).ok_or(EINVAL)?;
        // This does not allocate: room was reserved above.
        self.devs.push(dev, GFP_KERNEL)?;
        // SAFETY: `dev` was just returned by `dm_get_device()`, and it is released by the
        // abstraction only when the target is destroyed.
        Ok(unsafe { DmDev::new(dev) })
    }

    fn set(&mut self, f: impl FnOnce(&mut bindings::dm_target)) {
        // SAFETY: The target is under construction and only the constructor accesses it.
        f(unsafe { &mut *self.ti.as_raw() })
    }

    /// Sets the number of empty flush bios the target receives for a flush (0 to not receive
    /// flushes).
    pub fn set_num_flush_bios(&mut self, n: u32) {
        self.set(|ti| ti.num_flush_bios = n);
    }

    /// Sets the number of bios the target receives for a discard.
    pub fn set_num_discard_bios(&mut self, n: u32) {
        self.set(|ti| ti.num_discard_bios = n);
    }

    /// Sets the number of bios the target receives for a secure erase.
    pub fn set_num_secure_erase_bios(&mut self, n: u32) {
        self.set(|ti| ti.num_secure_erase_bios = n);
    }

    /// Sets the number of bios the target receives for a write-zeroes.
    pub fn set_num_write_zeroes_bios(&mut self, n: u32) {
        self.set(|ti| ti.num_write_zeroes_bios = n);
    }

    /// Asks device-mapper to split bios so that none crosses a multiple of `len` sectors of the
    /// target (`dm_set_target_max_io_len()`), for example at chunk boundaries.
    #[inline]
    pub fn set_max_io_len(&mut self, len: Sector) -> Result {
        // SAFETY: The target is under construction.
        to_result(unsafe { bindings::dm_set_target_max_io_len(self.ti.as_raw(), len) })
    }

    /// Makes the target receive flushes even if no underlying device needs them.
    pub fn set_flush_supported(&mut self, v: bool) {
        self.set(|ti| ti.set_flush_supported(v));
    }

    /// Makes the target receive discards even if no underlying device supports them.
    pub fn set_discards_supported(&mut self, v: bool) {
        self.set(|ti| ti.set_discards_supported(v));
    }

    /// Declares that flushes may bypass `map` and go straight to the devices reported by
    /// [`TargetOperations::iterate_devices`] (only for targets that pass flushes through).
    pub fn set_flush_bypasses_map(&mut self, v: bool) {
        self.set(|ti| ti.set_flush_bypasses_map(v));
    }

    /// Declares that bios the target keeps in `map` are accounted when the target submits them
    /// with [`DmBio::submit`] rather than when `map` returns.
    pub fn set_accounts_remapped_io(&mut self, v: bool) {
        self.set(|ti| ti.set_accounts_remapped_io(v));
    }
}

impl<T: TargetOperations> core::ops::Deref for TargetCtx<'_, T> {
    type Target = Target;

    fn deref(&self) -> &Target {
        self.ti
    }
}

/// A device opened by a target with [`TargetCtx::get_device`] (C `struct dm_dev`).
///
/// The device stays open until the target that opened it is destroyed; the abstraction calls
/// `dm_put_device()` then, exactly once. A `DmDev` itself holds a reference to the block device
/// structure, so it may be cloned, sent to workers and even outlive the target safely (I/O to a
/// device that the target no longer has open fails or is refused by the block layer, but does
/// not touch freed memory).
///
/// Dropping the last reference to a block device may sleep.
///
/// # Invariants
///
/// `bdev` is a valid block device on which this value holds a `bd_device` reference; `dm_dev`
/// is the `struct dm_dev` it came from (only dereferenced while its target is known to be
/// live); `name` is NUL-terminated.
pub struct DmDev {
    bdev: NonNull<bindings::block_device>,
    dm_dev: NonNull<bindings::dm_dev>,
    name: [u8; 16],
}

// SAFETY: A `DmDev` only holds a reference count on the block device, which may be dropped from
// any thread, and the methods only read immutable data.
unsafe impl Send for DmDev {}
// SAFETY: See above.
unsafe impl Sync for DmDev {}

impl DmDev {
    /// # Safety
    ///
    /// `dev` must be a valid `struct dm_dev` with an open block device.
    unsafe fn new(dev: NonNull<bindings::dm_dev>) -> Self {
        // SAFETY: By the safety requirements `dev` is valid.
        let (bdev, name_src) = unsafe { ((*dev.as_ptr()).bdev, &(*dev.as_ptr()).name) };
        // SAFETY: The device is open, so `bdev` is valid; take a reference on it.
        unsafe { bindings::get_device(&mut (*bdev).bd_device) };
        let mut name = [0u8; 16];
        // CAST: `c_char` and `u8` have the same size and any bits are valid for both.
        // SAFETY: `name_src` is 16 bytes long, `name` too, and they do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(name_src.as_ptr().cast::<u8>(), name.as_mut_ptr(), 16)
        };
        name[15] = 0;
        // INVARIANT: We hold a reference on `bdev`; `name` is NUL-terminated.
        Self {
            // SAFETY: An open `dm_dev` has a block device.
            bdev: unsafe { NonNull::new_unchecked(bdev) },
            dm_dev: dev,
            name,
        }
    }

    /// Returns the block device.
    pub fn bdev(&self) -> &BlockDevice {
        // SAFETY: By the type invariant we hold a reference on the block device.
        unsafe { BlockDevice::from_raw(self.bdev.as_ptr()) }
    }

    /// Returns the device number.
    pub fn dev_t(&self) -> u32 {
        self.bdev().dev_t()
    }

    /// Returns the major device number.
    pub fn major(&self) -> u32 {
        self.dev_t() >> bindings::MINORBITS
    }

    /// Returns the minor device number.
    pub fn minor(&self) -> u32 {
        self.dev_t() & ((1 << bindings::MINORBITS) - 1)
    }

    /// Returns the name as device-mapper prints it in tables: `major:minor`.
    pub fn name(&self) -> &CStr {
        let len = self.name.iter().position(|&c| c == 0).unwrap_or(15);
        // SAFETY: By the type invariant `name[len]` is the first NUL.
        unsafe { CStr::from_bytes_with_nul_unchecked(&self.name[..=len]) }
    }

    /// Returns the size of the device in sectors.
    pub fn nr_sectors(&self) -> Sector {
        self.bdev().nr_sectors()
    }

    /// Returns the logical block size of the device in bytes.
    pub fn logical_block_size(&self) -> u32 {
        self.bdev().logical_block_size()
    }
}

impl Clone for DmDev {
    fn clone(&self) -> Self {
        // SAFETY: By the type invariant `bdev` is valid; take another reference.
        unsafe { bindings::get_device(&mut (*self.bdev.as_ptr()).bd_device) };
        // INVARIANT: The clone holds its own reference.
        Self {
            bdev: self.bdev,
            dm_dev: self.dm_dev,
            name: self.name,
        }
    }
}

impl Drop for DmDev {
    fn drop(&mut self) {
        // SAFETY: By the type invariant we hold a reference on the block device.
        unsafe { bindings::put_device(&mut (*self.bdev.as_ptr()).bd_device) };
    }
}

impl fmt::Display for DmDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.name(), f)
    }
}

impl fmt::Debug for DmDev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DmDev({})", self.name())
    }
}

/// A bio sent to a target of type `T`, seen by reference (a dm clone of the original bio).
///
/// Derefs to [`Bio`]; gives access to the target's typed per-bio data.
#[repr(transparent)]
pub struct TargetBio<T: TargetOperations>(Bio, PhantomData<T>);

impl<T: TargetOperations> TargetBio<T> {
    /// # Safety
    ///
    /// `ptr` must satisfy the requirements of [`Bio::from_raw`] and be a bio that device-mapper
    /// sent to a target of type `T`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::bio) -> &'a Self {
        // CAST: `TargetBio` is a transparent wrapper around `Bio`, itself around `struct bio`.
        // SAFETY: By the safety requirements.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn per_io_ptr(&self) -> *mut T::PerIo {
        let size = core::mem::size_of::<T::PerIo>();
        if size == 0 {
            return NonNull::dangling().as_ptr();
        }
        // SAFETY: The bio is a dm clone for a target of type `T`, whose `per_io_data_size` is
        // `size`, so the per-bio data precedes it.
        unsafe { bindings::dm_per_bio_data(self.0.as_raw(), size).cast() }
    }

    /// Returns the per-bio data of the target.
    pub fn per_io(&self) -> &T::PerIo {
        // SAFETY: The per-bio data is initialised before `map` and lives as long as the bio,
        // which outlives `self`; it is only reached through the bio, which `self` has
        // exclusive (non-`Sync`) access to.
        unsafe { &*self.per_io_ptr() }
    }

    /// Returns the number of this bio among the bios a flush, discard, ... was split into for
    /// this target (`dm_bio_get_target_bio_nr()`).
    #[inline]
    pub fn target_bio_nr(&self) -> u32 {
        // SAFETY: The bio is a dm clone.
        unsafe { bindings::dm_bio_get_target_bio_nr(self.0.as_raw()) }
    }
}

impl<T: TargetOperations> core::ops::Deref for TargetBio<T> {
    type Target = Bio;

    fn deref(&self) -> &Bio {
        &self.0
    }
}

/// An owned bio sent to a target of type `T` (see [`OwnedBio`] for the ownership rules).
///
/// It is handed to [`TargetOperations::map`]. Returning it in a [`MapResult`] gives it back to
/// device-mapper; keeping it (in a [`BioList`](bio::BioList), a work item, ...) and returning
/// [`MapResult::Submitted`] defers it: the target must then [`submit`](Self::submit) or
/// [`end`](Self::end) it later, from any context. Dropping it ends it with an I/O error.
pub struct DmBio<T: TargetOperations>(OwnedBio, PhantomData<T>);

impl<T: TargetOperations> DmBio<T> {
    /// Submits the bio after the target remapped it (`dm_submit_bio_remap()`), which also does
    /// the I/O accounting if the target set [`TargetCtx::set_accounts_remapped_io`].
    ///
    /// Must be called from process or soft interrupt context (e.g. a workqueue).
    #[inline]
    pub fn submit(self) {
        let ptr = self.into_raw();
        // SAFETY: `ptr` is a dm clone that we owned; ownership passes to device-mapper.
        unsafe { bindings::dm_submit_bio_remap(ptr, core::ptr::null_mut()) };
    }

    /// Completes the bio with `result`. May be called from any context.
    pub fn end(self, result: Result) {
        self.0.end(result)
    }

    /// Completes the bio asking device-mapper to requeue it (`BLK_STS_DM_REQUEUE`), honoured
    /// while the device is being suspended with `--noflush`.
    pub fn requeue(self) {
        let ptr = self.into_raw();
        // SAFETY: We owned the valid bio, so we may set its status and complete it.
        unsafe {
            (*ptr).bi_status = bindings::BLK_STS_DM_REQUEUE;
            bindings::bio_endio(ptr);
        }
    }

    /// Returns the per-bio data of the target, mutably.
    pub fn per_io_mut(&mut self) -> &mut T::PerIo {
        // SAFETY: See `TargetBio::per_io`; `&mut self` gives exclusive access to the bio.
        unsafe { &mut *self.per_io_ptr() }
    }

    /// Drops the target type, keeping ownership of the bio.
    pub fn into_owned_bio(self) -> OwnedBio {
        let DmBio(bio, _) = self;
        bio
    }
}

impl<T: TargetOperations> core::ops::Deref for DmBio<T> {
    type Target = TargetBio<T>;

    fn deref(&self) -> &TargetBio<T> {
        // SAFETY: The owned bio is a dm clone for a target of type `T`, valid and exclusively
        // ours while `self` is borrowed.
        unsafe { TargetBio::from_raw(self.0.as_raw()) }
    }
}

// SAFETY: `DmBio` owns a bio in flight, as `OwnedBio` does.
unsafe impl<T: TargetOperations> BioOwner for DmBio<T> {
    fn into_raw(self) -> *mut bindings::bio {
        self.0.into_raw()
    }

    unsafe fn from_raw(ptr: *mut bindings::bio) -> Self {
        // SAFETY: By the safety requirements `ptr` came from `into_raw` of a `DmBio<T>`.
        Self(unsafe { OwnedBio::from_raw(ptr) }, PhantomData)
    }
}

impl<T: TargetOperations> fmt::Debug for DmBio<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A writer into the result buffer of `status` or `message`, like C `DMEMIT`.
///
/// The buffer always stays NUL-terminated. Text that does not fit is cut and the write returns
/// [`fmt::Error`]; the buffer is then left full, which device-mapper takes as a request to retry
/// with a larger buffer.
pub struct StatusWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'a> StatusWriter<'a> {
    /// # Safety
    ///
    /// `result` must be valid for writes of `maxlen` bytes for `'a`.
    unsafe fn from_raw(result: *mut c_char, maxlen: c_uint) -> Self {
        let buf: &'a mut [u8] = if result.is_null() || maxlen == 0 {
            &mut []
        } else {
            // SAFETY: By the safety requirements.
            unsafe { core::slice::from_raw_parts_mut(result.cast(), maxlen as usize) }
        };
        if let Some(b) = buf.first_mut() {
            *b = 0;
        }
        Self {
            buf,
            pos: 0,
            overflow: false,
        }
    }

    /// Returns the number of bytes written (without the terminating NUL).
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Returns `true` if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Returns `true` if some output did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }
}

impl fmt::Write for StatusWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the NUL.
        let room = self.buf.len().saturating_sub(self.pos + 1);
        let n = s.len().min(room);
        self.buf[self.pos..self.pos + n].copy_from_slice(&s.as_bytes()[..n]);
        self.pos += n;
        if let Some(b) = self.buf.get_mut(self.pos) {
            *b = 0;
        }
        if n < s.len() {
            self.overflow = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

/// The callout of `iterate_devices`, to which a target reports the device ranges it uses.
pub struct DeviceIterator<'a> {
    ti: *mut bindings::dm_target,
    callout: bindings::iterate_devices_callout_fn,
    data: *mut c_void,
    devs: &'a [NonNull<bindings::dm_dev>],
    ret: c_int,
}

impl DeviceIterator<'_> {
    /// Reports that the target uses `len` sectors of `dev` starting at `start`.
    ///
    /// Returns [`ControlFlow::Break`] when device-mapper wants the iteration to stop. Devices
    /// that were not opened by this target are skipped.
    pub fn visit(&mut self, dev: &DmDev, start: Sector, len: Sector) -> ControlFlow<()> {
        if self.ret != 0 {
            return ControlFlow::Break(());
        }
        // Only pass devices opened by this target, which are live while it is.
        if !self.devs.contains(&dev.dm_dev) {
            return ControlFlow::Continue(());
        }
        if let Some(callout) = self.callout {
            // SAFETY: `callout` and `data` come from device-mapper for this live target, and
            // `dev.dm_dev` is one of the target's open devices.
            self.ret = unsafe { callout(self.ti, dev.dm_dev.as_ptr(), start, len, self.data) };
        }
        if self.ret != 0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Queue limits of a mapped device (C `struct queue_limits`), given to
/// [`TargetOperations::io_hints`].
#[repr(transparent)]
pub struct QueueLimits(Opaque<bindings::queue_limits>);

macro_rules! limits_accessors {
    ($($(#[$m:meta])* $field:ident, $set:ident: $t:ty;)*) => {
        $(
            $(#[$m])*
            pub fn $field(&self) -> $t {
                // SAFETY: `self` is valid and exclusively borrowed during `io_hints`.
                unsafe { (*self.0.get()).$field }
            }

            $(#[$m])*
            pub fn $set(&mut self, v: $t) {
                // SAFETY: `self` is valid and exclusively borrowed during `io_hints`.
                unsafe { (*self.0.get()).$field = v };
            }
        )*
    };
}

impl QueueLimits {
    limits_accessors! {
        /// Logical block size in bytes.
        logical_block_size, set_logical_block_size: u32;
        /// Physical block size in bytes.
        physical_block_size, set_physical_block_size: u32;
        /// Minimum (preferred) I/O size in bytes.
        io_min, set_io_min: u32;
        /// Optimal I/O size in bytes.
        io_opt, set_io_opt: u32;
        /// Chunk size in sectors (I/O is not merged across chunks).
        chunk_sectors, set_chunk_sectors: u32;
        /// Maximum discard size in sectors supported by the hardware.
        max_hw_discard_sectors, set_max_hw_discard_sectors: u32;
        /// Discard granularity in bytes.
        discard_granularity, set_discard_granularity: u32;
    }
}

/// A registered device-mapper target type.
///
/// Created with [`Registration::new`] into pinned memory (for example with `KBox::pin_init`),
/// it registers the type with device-mapper (`dm_register_target()`) and unregisters it when
/// dropped.
///
/// Device-mapper holds a reference on the module for every live target, so a registration kept
/// in the module's state (the usual case) outlives all its targets. It must not be dropped
/// earlier while targets of the type exist.
///
/// # Invariants
///
/// `tt` is registered with device-mapper, and its callbacks are those of `T`.
#[pin_data(PinnedDrop)]
pub struct Registration<T: TargetOperations> {
    context: Arc<T::Context>,
    #[pin]
    tt: Opaque<bindings::target_type>,
    _p: PhantomData<T>,
}

// SAFETY: The registration can be dropped from any thread; the context is `Send + Sync`.
unsafe impl<T: TargetOperations> Send for Registration<T> {}
// SAFETY: `&Registration` gives access to nothing but the `Sync` context.
unsafe impl<T: TargetOperations> Sync for Registration<T> {}

impl<T: TargetOperations> Registration<T> {
    /// Registers a target type named `name` with the given version, sharing `context` with all
    /// its targets.
    pub fn new(
        name: &'static CStr,
        version: [u32; 3],
        module: &'static ThisModule,
        context: Arc<T::Context>,
    ) -> impl PinInit<Self, Error> {
        const {
            assert!(
                !core::mem::needs_drop::<T::PerIo>(),
                "per-bio data must not need dropping"
            );
            assert!(
                core::mem::align_of::<T::PerIo>() <= 8,
                "per-bio data alignment exceeds 8"
            );
        };
        let tt_init = move |slot: *mut Opaque<bindings::target_type>| -> Result {
            let tt = Opaque::raw_get(slot);
            // SAFETY: `slot` is valid for writes; an all-zero `target_type` is valid (all
            // callbacks unset).
            unsafe {
                tt.write(core::mem::zeroed());
                (*tt).name = name.as_char_ptr();
                (*tt).module = module.as_ptr();
                (*tt).version = version;
                (*tt).ctr = Some(Self::ctr_callback);
                (*tt).dtr = Some(Self::dtr_callback);
                (*tt).map = Some(Self::map_callback);
                if T::HAS_END_IO {
                    (*tt).end_io = Some(Self::end_io_callback);
                }
                if T::HAS_STATUS {
                    (*tt).status = Some(Self::status_callback);
                }
                if T::HAS_MESSAGE {
                    (*tt).message = Some(Self::message_callback);
                }
                if T::HAS_PRESUSPEND {
                    (*tt).presuspend = Some(Self::presuspend_callback);
                }
                if T::HAS_POSTSUSPEND {
                    (*tt).postsuspend = Some(Self::postsuspend_callback);
                }
                if T::HAS_PRERESUME {
                    (*tt).preresume = Some(Self::preresume_callback);
                }
                if T::HAS_RESUME {
                    (*tt).resume = Some(Self::resume_callback);
                }
                if T::HAS_ITERATE_DEVICES {
                    (*tt).iterate_devices = Some(Self::iterate_devices_callback);
                }
                if T::HAS_IO_HINTS {
                    (*tt).io_hints = Some(Self::io_hints_callback);
                }
            }
            // SAFETY: `tt` is fully initialised and pinned (it is a pinned field of the
            // registration being initialised, whose `context` is initialised before it).
            to_result(unsafe { bindings::dm_register_target(tt) })
        };
        try_pin_init!(Self {
            context,
            // SAFETY: On success the closure fully initialised the slot (and registered it);
            // on failure it left nothing that needs to be dropped.
            tt <- unsafe { crate::init::pin_init_from_closure(tt_init) },
            _p: PhantomData,
        }? Error)
    }

    /// Returns the context shared by the targets of this type.
    pub fn context(&self) -> &Arc<T::Context> {
        &self.context
    }

    /// # Safety
    ///
    /// `ti` must be a valid target of this type: its `type` points to `self.tt`.
    unsafe fn from_target<'a>(ti: *mut bindings::dm_target) -> &'a Self {
        // SAFETY: `ti->type` points to the `tt` field of a pinned, live `Registration<T>`
        // (device-mapper holds a module reference, so the registration outlives the target).
        // CAST: `Opaque<target_type>` is transparent over `target_type`.
        unsafe {
            &*crate::container_of!(
                (*ti).type_.cast::<Opaque<bindings::target_type>>(),
                Self,
                tt
            )
        }
    }

    /// # Safety
    ///
    /// `ti` must be a constructed target of this type (the constructor succeeded and the
    /// destructor has not run).
    unsafe fn state<'a>(ti: *mut bindings::dm_target) -> &'a TargetState<T> {
        // SAFETY: `ti->private` was set by `ctr_callback` to a `TargetState<T>` that lives until
        // `dtr_callback`.
        unsafe { &*(*ti).private.cast::<TargetState<T>>() }
    }

    /// # Safety
    ///
    /// `argv` must point to `argc` valid NUL-terminated strings that outlive `'a`.
    unsafe fn args<'a>(argc: c_uint, argv: *mut *mut c_char) -> Result<KVec<&'a CStr>> {
        let mut args = KVec::with_capacity(argc as usize, GFP_KERNEL)?;
        for i in 0..argc as usize {
            // SAFETY: By the safety requirements `argv[i]` is a valid string.
            let arg = unsafe { CStr::from_char_ptr(*argv.add(i)) };
            args.push(arg, GFP_KERNEL)?;
        }
        Ok(args)
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a target of this type under construction and `argv` must point to `argc`
    /// valid strings, as device-mapper guarantees for `target_type::ctr`.
    unsafe extern "C" fn ctr_callback(
        ti: *mut bindings::dm_target,
        argc: c_uint,
        argv: *mut *mut c_char,
    ) -> c_int {
        // SAFETY: Device-mapper calls this with a valid target of our type under construction
        // and valid arguments.
        let reg = unsafe { Self::from_target(ti) };
        // SAFETY: As above.
        let target = unsafe { Target::from_raw(ti) };
        let per_io = core::mem::size_of::<T::PerIo>();
        // SAFETY: The target is under construction, we may set its fields.
        unsafe { (*ti).per_io_data_size = per_io as c_uint };

        let set_error = |msg: &'static CStr| {
            // CAST: device-mapper never writes through `ti->error`; the string is static.
            // SAFETY: The target is under construction.
            unsafe { (*ti).error = msg.as_char_ptr() as *mut c_char };
        };

        // SAFETY: By the C contract `argv` has `argc` strings that outlive the call.
        let args = match unsafe { Self::args(argc, argv) } {
            Ok(args) => args,
            Err(e) => {
                set_error(crate::c_str!("Cannot allocate argument array"));
                return e.to_errno();
            }
        };
        let mut devs = KVec::new();
        let res = T::ctr(
            &mut TargetCtx {
                ti: target,
                context: &reg.context,
                devs: &mut devs,
            },
            &args,
        );
        let res = res.and_then(|data| {
            KBox::new(
                TargetState {
                    data,
                    devs: KVec::new(),
                },
                GFP_KERNEL,
            )
            .map_err(CtrError::from)
        });
        match res {
            Ok(mut state) => {
                state.devs = devs;
                // SAFETY: The target is under construction; `dtr_callback` frees the state.
                unsafe { (*ti).private = KBox::into_raw(state).cast() };
                0
            }
            Err(e) => {
                // The private data (if any) is already dropped; release the devices.
                for dev in devs.iter() {
                    // SAFETY: `dev` came from `dm_get_device()` for this target and was not
                    // put yet.
                    unsafe { bindings::dm_put_device(ti, dev.as_ptr()) };
                }
                if let Some(msg) = e.message() {
                    set_error(msg);
                }
                e.error().to_errno()
            }
        }
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a target of this type whose constructor succeeded, and this must be the only
    /// call for it, as device-mapper guarantees for `target_type::dtr`.
    unsafe extern "C" fn dtr_callback(ti: *mut bindings::dm_target) {
        // SAFETY: Device-mapper calls the destructor once, for a target whose constructor
        // succeeded; `private` is the state boxed by `ctr_callback`.
        let state = unsafe { KBox::from_raw((*ti).private.cast::<TargetState<T>>()) };
        // SAFETY: The target is being destroyed; nobody reads `private` any more.
        unsafe { (*ti).private = core::ptr::null_mut() };
        let TargetState { data, devs } = KBox::into_inner(state);
        drop(data);
        for dev in devs.iter() {
            // SAFETY: `dev` came from `dm_get_device()` for this target and was not put yet.
            unsafe { bindings::dm_put_device(ti, dev.as_ptr()) };
        }
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type and `bio` a dm clone sent to it, as
    /// device-mapper guarantees for `target_type::map`.
    unsafe extern "C" fn map_callback(
        ti: *mut bindings::dm_target,
        bio: *mut bindings::bio,
    ) -> c_int {
        // SAFETY: Device-mapper calls `map` for a constructed target of our type.
        let state = unsafe { Self::state(ti) };
        // SAFETY: As above.
        let target = unsafe { Target::from_raw(ti) };
        if core::mem::size_of::<T::PerIo>() != 0 {
            // SAFETY: `bio` is a dm clone for this target, preceded by `per_io_data_size`
            // bytes of per-bio data, suitably aligned (see `Registration::new`).
            unsafe {
                bindings::dm_per_bio_data(bio, core::mem::size_of::<T::PerIo>())
                    .cast::<T::PerIo>()
                    .write(T::PerIo::default())
            };
        }
        // SAFETY: Device-mapper hands the bio to `map`, which is responsible for it until it
        // returns it.
        let owned = DmBio::<T>(unsafe { OwnedBio::from_raw(bio) }, PhantomData);
        let give_back = |b: DmBio<T>, ret: u32, status: Option<bindings::blk_status_t>| {
            let p = b.into_raw();
            if p == bio {
                // CAST: The `DM_MAPIO_*` values are small.
                return ret as c_int;
            }
            // The target returned another bio that it owned; deal with that one here.
            // SAFETY: `p` came from `into_raw` of an owned `DmBio<T>`.
            let other = unsafe { DmBio::<T>::from_raw(p) };
            match status {
                None => other.submit(),
                Some(s) => {
                    let p = other.into_raw();
                    // SAFETY: We own the valid bio and complete it.
                    unsafe {
                        (*p).bi_status = s;
                        bindings::bio_endio(p);
                    }
                }
            }
            bindings::DM_MAPIO_SUBMITTED as c_int
        };
        match T::map(state.data.as_ref(), target, owned) {
            MapResult::Remapped(b) => give_back(b, bindings::DM_MAPIO_REMAPPED, None),
            MapResult::Submitted => bindings::DM_MAPIO_SUBMITTED as c_int,
            MapResult::Kill(b) => {
                give_back(b, bindings::DM_MAPIO_KILL, Some(bindings::BLK_STS_IOERR))
            }
            MapResult::Requeue(b) => give_back(
                b,
                bindings::DM_MAPIO_REQUEUE,
                Some(bindings::BLK_STS_DM_REQUEUE),
            ),
            MapResult::DelayRequeue(b) => give_back(
                b,
                bindings::DM_MAPIO_DELAY_REQUEUE,
                Some(bindings::BLK_STS_DM_REQUEUE),
            ),
        }
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type, `bio` a bio it mapped and `error` valid
    /// for reads and writes, as device-mapper guarantees for `target_type::end_io`.
    unsafe extern "C" fn end_io_callback(
        ti: *mut bindings::dm_target,
        bio: *mut bindings::bio,
        error: *mut bindings::blk_status_t,
    ) -> c_int {
        // SAFETY: Device-mapper calls `end_io` for a constructed target of our type, with a bio
        // it mapped and a valid status pointer.
        let (state, target, tbio, status) = unsafe {
            (
                Self::state(ti),
                Target::from_raw(ti),
                TargetBio::<T>::from_raw(bio),
                *error,
            )
        };
        let old = bio::status_to_result(status);
        let mut new = old;
        let ret = T::end_io(state.data.as_ref(), target, tbio, &mut new);
        if new != old {
            // SAFETY: `error` is valid for writes.
            unsafe { *error = bio::result_to_status(new) };
        }
        // CAST: The `DM_ENDIO_*` values are small.
        (match ret {
            EndIoResult::Done => bindings::DM_ENDIO_DONE,
            EndIoResult::Requeue => bindings::DM_ENDIO_REQUEUE,
            EndIoResult::DelayRequeue => bindings::DM_ENDIO_DELAY_REQUEUE,
        }) as c_int
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type and `result` valid for writes of `maxlen`
    /// bytes, as device-mapper guarantees for `target_type::status`.
    unsafe extern "C" fn status_callback(
        ti: *mut bindings::dm_target,
        type_: bindings::status_type_t,
        flags: c_uint,
        result: *mut c_char,
        maxlen: c_uint,
    ) {
        // SAFETY: Device-mapper calls `status` for a constructed target of our type, with a
        // result buffer of `maxlen` bytes.
        let (state, target, mut out) = unsafe {
            (
                Self::state(ti),
                Target::from_raw(ti),
                StatusWriter::from_raw(result, maxlen),
            )
        };
        let ty = match type_ {
            bindings::status_type_t_STATUSTYPE_INFO => StatusType::Info,
            bindings::status_type_t_STATUSTYPE_TABLE => StatusType::Table,
            _ => StatusType::Ima,
        };
        // Overflow is reported to userspace through the full buffer.
        let _ = T::status(
            state.data.as_ref(),
            target,
            ty,
            StatusFlags(flags),
            &mut out,
        );
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type, `argv` must point to `argc` valid strings
    /// and `result` be valid for writes of `maxlen` bytes, as device-mapper guarantees for
    /// `target_type::message`.
    unsafe extern "C" fn message_callback(
        ti: *mut bindings::dm_target,
        argc: c_uint,
        argv: *mut *mut c_char,
        result: *mut c_char,
        maxlen: c_uint,
    ) -> c_int {
        from_result(|| {
            // SAFETY: Device-mapper calls `message` for a constructed target of our type, with
            // `argc` strings and a result buffer of `maxlen` bytes.
            let (state, target, mut out, args) = unsafe {
                (
                    Self::state(ti),
                    Target::from_raw(ti),
                    StatusWriter::from_raw(result, maxlen),
                    Self::args(argc, argv)?,
                )
            };
            T::message(state.data.as_ref(), target, &args, &mut out)?;
            // In 6.12, 1 tells device-mapper that the result buffer holds a reply.
            Ok(if out.is_empty() && !out.overflowed() {
                0
            } else {
                1
            })
        })
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type.
    unsafe extern "C" fn presuspend_callback(ti: *mut bindings::dm_target) {
        // SAFETY: Called for a constructed target of our type.
        let (state, target) = unsafe { (Self::state(ti), Target::from_raw(ti)) };
        T::presuspend(state.data.as_ref(), target);
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type.
    unsafe extern "C" fn postsuspend_callback(ti: *mut bindings::dm_target) {
        // SAFETY: Called for a constructed target of our type.
        let (state, target) = unsafe { (Self::state(ti), Target::from_raw(ti)) };
        T::postsuspend(state.data.as_ref(), target);
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type.
    unsafe extern "C" fn preresume_callback(ti: *mut bindings::dm_target) -> c_int {
        // SAFETY: Called for a constructed target of our type.
        let (state, target) = unsafe { (Self::state(ti), Target::from_raw(ti)) };
        from_result(|| T::preresume(state.data.as_ref(), target).map(|()| 0))
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type.
    unsafe extern "C" fn resume_callback(ti: *mut bindings::dm_target) {
        // SAFETY: Called for a constructed target of our type.
        let (state, target) = unsafe { (Self::state(ti), Target::from_raw(ti)) };
        T::resume(state.data.as_ref(), target);
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type and `callout`/`data` a callout of
    /// device-mapper, as it guarantees for `target_type::iterate_devices`.
    unsafe extern "C" fn iterate_devices_callback(
        ti: *mut bindings::dm_target,
        callout: bindings::iterate_devices_callout_fn,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: Called for a constructed target of our type.
        let (state, target) = unsafe { (Self::state(ti), Target::from_raw(ti)) };
        let mut it = DeviceIterator {
            ti,
            callout,
            data,
            devs: &state.devs,
            ret: 0,
        };
        let _ = T::iterate_devices(state.data.as_ref(), target, &mut it);
        it.ret
    }

    /// Device-mapper callback.
    ///
    /// # Safety
    ///
    /// `ti` must be a constructed target of this type and `limits` valid for reads and writes.
    unsafe extern "C" fn io_hints_callback(
        ti: *mut bindings::dm_target,
        limits: *mut bindings::queue_limits,
    ) {
        // SAFETY: Called for a constructed target of our type, with valid limits that we may
        // change.
        let (state, target, limits) = unsafe {
            (
                Self::state(ti),
                Target::from_raw(ti),
                &mut *limits.cast::<QueueLimits>(),
            )
        };
        T::io_hints(state.data.as_ref(), target, limits);
    }
}

#[pinned_drop]
impl<T: TargetOperations> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: By the type invariant `tt` is registered.
        unsafe { bindings::dm_unregister_target(self.tt.get()) };
    }
}
