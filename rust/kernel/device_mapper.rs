// SPDX-License-Identifier: GPL-2.0

//! Device-mapper targets.
//!
//! A device-mapper target type turns a line of a table (`<start> <len> <type> <args...>`) into a
//! target instance that maps the bios sent to its range of the mapped device. A driver
//! implements [`TargetOperations`] for the private data of one target instance, and declares its
//! module and the target types it provides with [`module_dm_targets!`](crate::module_dm_targets),
//! which registers them when the module is loaded and unregisters them only when it is unloaded.
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
//! - The target types of a module and the [`TargetOperations::Context`] they share stay
//!   registered and alive from the module's load to its unload: device-mapper holds a reference
//!   on the module from the lookup of a type by a table line until the target is destroyed.
//! - [`TargetOperations::map`] runs in the context of the submitter of the bio, which may be in
//!   a memory reclaim path or hold locks: it must not sleep or allocate with `GFP_KERNEL`.
//!   [`TargetOperations::end_io`] runs in bio completion context, typically hard or soft
//!   interrupt context: it must not sleep.
//!
//! # Module and symbol availability
//!
//! These abstractions (`CONFIG_RUST_DM_ABSTRACTIONS`) call device-mapper, dm-bufio and
//! libcrc32c from the kernel crate, which is built in, so they exist only where those are built
//! in too: the option depends on `BLK_DEV_DM=y` and selects `DM_BUFIO` and `LIBCRC32C` (as
//! `RUST_PHYLIB_ABSTRACTIONS` depends on `PHYLIB=y`). Targets that use them depend on it.
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
pub mod events;
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
use core::{
    cell::UnsafeCell,
    fmt,
    marker::PhantomData,
    ops::ControlFlow,
    pin::Pin,
    ptr::NonNull,
    sync::atomic::{AtomicBool, Ordering},
};

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
    ///
    /// # Examples
    ///
    /// ```
    /// use kernel::{c_str, device_mapper::CtrError, prelude::*};
    ///
    /// let e = CtrError::new(EINVAL, c_str!("Invalid argument count"));
    /// assert_eq!(e.error(), EINVAL);
    /// assert_eq!(e.message().map(|m| m.as_bytes()), Some(&b"Invalid argument count"[..]));
    /// // Without a message, device-mapper logs "Unknown error".
    /// assert!(CtrError::from(ENOMEM).message().is_none());
    /// assert_eq!(Error::from(e), EINVAL);
    /// ```
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
    ///
    /// There is no delayed variant: `DM_MAPIO_DELAY_REQUEUE` is only implemented for
    /// request-based device-mapper, and bio-based device-mapper (the only kind these targets
    /// can be used with, as they have no `clone_and_map_rq`) calls `BUG()` on it.
    Requeue(DmBio<T>),
}

/// Result of [`TargetOperations::end_io`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndIoResult {
    /// The bio is complete (`DM_ENDIO_DONE`).
    Done,
    /// Push the bio back to be mapped again (`DM_ENDIO_REQUEUE`).
    ///
    /// As for [`MapResult::Requeue`] there is no delayed variant: bio-based device-mapper calls
    /// `BUG()` on `DM_ENDIO_DELAY_REQUEUE`.
    Requeue,
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
///
/// # Examples
///
/// ```
/// use kernel::device_mapper::Mode;
///
/// assert!(Mode::READ_WRITE.is_write());
/// assert!(!Mode::READ.is_write());
/// ```
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
/// `Self` is the private data of one target instance. The type's name and version are given
/// where it is registered, in [`module_dm_targets!`](crate::module_dm_targets).
#[macros::vtable]
pub trait TargetOperations: Sized + Send + Sync + 'static {
    /// State shared by all targets of this type and by the other target types of the same
    /// module, which must all have the same `Context`: it is created by the module's
    /// [`module_dm_targets!`](crate::module_dm_targets) when the module is loaded, dropped when
    /// it is unloaded, and handed to every constructor ([`TargetCtx::context`]).
    type Context: Send + Sync + 'static;

    /// Per-bio data (C `per_io_data_size`), reached from a bio with [`TargetBio::per_io`].
    ///
    /// It is set to `Default::default()` before every [`TargetOperations::map`] call and is
    /// never dropped, so it must not need dropping; its alignment must not exceed that of
    /// `struct bio`, which device-mapper places right after it (both are checked at compile
    /// time). Use `()` for none.
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
    /// The bio is being completed: device-mapper calls this from the bio's completion
    /// (`bi_end_io`) and finishes that completion when this returns, so `bio` is only a
    /// reference. It is valid, and so is its per-bio data, but the target must not keep it,
    /// end it or submit it; to have it mapped again, return [`EndIoResult::Requeue`].
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
    /// Detached when the target is destroyed (see [`TargetCtx::table_events`]).
    events: Option<Arc<events::TableEvents>>,
}

/// The constructor's view of a new target: settings and device lookup.
///
/// Derefs to [`Target`] for the target's range and table mode.
///
/// # Invariants
///
/// - `ti` is a target of type `T` under construction: the constructor of `T` runs for it for
///   `'a`, and nothing else accesses its fields meanwhile (device-mapper builds a table
///   before making it visible to anyone else).
/// - `context` is the context of the module that registered `T`'s target type.
/// - `devs` holds every device opened with `dm_get_device()` for `ti` through this value; the
///   caller puts them with `dm_put_device()` when the constructor fails, or when the target is
///   destroyed.
/// - `events` holds the [`TableEvents`](events::TableEvents) handle made for `ti`, if any; the
///   caller detaches it when the constructor fails, or when the target is destroyed.
pub struct TargetCtx<'a, T: TargetOperations> {
    ti: &'a Target,
    context: &'a Arc<T::Context>,
    devs: &'a mut KVec<NonNull<bindings::dm_dev>>,
    events: &'a mut Option<Arc<events::TableEvents>>,
}

impl<'a, T: TargetOperations> TargetCtx<'a, T> {
    /// Returns the context shared by the target types of the module, created by its
    /// [`module_dm_targets!`](crate::module_dm_targets).
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
        // SAFETY: By the type invariant `ti` is a target under construction; `path` is a
        // NUL-terminated string and `dev` is valid for writes.
        to_result(unsafe {
            bindings::dm_get_device(self.ti.as_raw(), path.as_char_ptr(), mode.0, &mut dev)
        })?;
        let dev = NonNull::new(dev).ok_or(EINVAL)?;
        // INVARIANT: The device is recorded for `dm_put_device()`. This does not allocate (room
        // was reserved above), so it cannot fail and leave the device unrecorded.
        self.devs.push(dev, GFP_KERNEL)?;
        // SAFETY: `dev` was just returned by `dm_get_device()`, so it is valid with an open
        // block device.
        Ok(unsafe { DmDev::new(dev) })
    }

    /// Returns the handle through which code outside the target's callbacks (a worker)
    /// signals events on this target's table; see [`events`]. Every call returns the same
    /// handle. It signals nothing once the target is destroyed.
    pub fn table_events(&mut self) -> Result<Arc<events::TableEvents>> {
        if let Some(events) = self.events.as_ref() {
            return Ok(events.clone());
        }
        // SAFETY: By the type invariant `ti` is a valid target under construction, whose
        // `table` device-mapper set before calling the constructor.
        let table = NonNull::new(unsafe { (*self.ti.as_raw()).table }).ok_or(EINVAL)?;
        // SAFETY: `table` is the table of the target under construction; the handle is
        // recorded below, and by the type invariant the caller detaches it when the
        // constructor fails or the target is destroyed.
        let events = unsafe { events::TableEvents::new(table) }?;
        *self.events = Some(events.clone());
        Ok(events)
    }

    fn set(&mut self, f: impl FnOnce(&mut bindings::dm_target)) {
        // SAFETY: By the type invariant the target is under construction and only its
        // constructor, which `&mut self` stands for, accesses its fields: the `&mut` is unique
        // for the call of `f`, which gets no other access to the target.
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
        // SAFETY: By the type invariant the target is under construction.
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

    /// Asks device-mapper to split discards so that none crosses a multiple of the maximum
    /// discard size (the `max_hw_discard_sectors` the target sets in
    /// [`TargetOperations::io_hints`]): with that size set to its chunk size, a target sees every
    /// discard within one chunk.
    pub fn set_max_discard_granularity(&mut self, v: bool) {
        self.set(|ti| ti.set_max_discard_granularity(v));
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
/// `dm_put_device()` then, exactly once.
///
/// A `DmDev` also holds a reference on the block device's `struct device` (`get_device()`). That
/// reference only keeps the `struct block_device` (and its disk) allocated, so that a `DmDev`
/// may be cloned, sent to workers and outlive its target without its methods touching freed
/// memory; it does not keep the device open, and neither do the bios remapped to it, which take
/// no reference on their device. A target must therefore send I/O to a `DmDev` only while the
/// target is live: device-mapper waits for the bios it gave to the target before destroying it,
/// and the target must wait (in its destructor at the latest) for the I/O it started itself.
/// I/O sent after that goes to a device that may have been closed and reopened by someone else,
/// or deleted (in which case the block layer fails it).
///
/// Dropping the last reference to a block device may sleep.
///
/// # Invariants
///
/// `bdev` is a block device on which this value holds a `bd_device` reference, so it stays
/// allocated; `dm_dev` is the `struct dm_dev` it came from, only dereferenced while its target
/// is known to be live; `name` is NUL-terminated.
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
        const NAME_LEN: usize = 16;
        // SAFETY: By the safety requirements `dev` is valid. Only raw pointers are made: the
        // `dm_dev` is shared with the other tables that use the device.
        let (bdev, name_src) = unsafe { ((*dev.as_ptr()).bdev, &raw const (*dev.as_ptr()).name) };
        // SAFETY: The device is open, so `bdev` is valid; take a reference on it. The pointer is
        // raw: other CPUs change the reference count of the `struct device` concurrently.
        unsafe { bindings::get_device(&raw mut (*bdev).bd_device) };
        let mut name = [0u8; NAME_LEN];
        // CAST: `c_char` and `u8` have the same size and any bits are valid for both; copying
        // one `[c_char; NAME_LEN]` checks at compile time that `dm_dev::name` has that length.
        // SAFETY: `name_src` points to `dm_dev::name`, which device-mapper does not change while
        // the device is open, and `name` is a local array of the same size.
        unsafe {
            core::ptr::copy_nonoverlapping(
                name_src,
                name.as_mut_ptr().cast::<[c_char; NAME_LEN]>(),
                1,
            )
        };
        name[NAME_LEN - 1] = 0;
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
        // SAFETY: By the type invariant `bdev` is allocated; take another reference. The pointer
        // is raw: other CPUs change the reference count of the `struct device` concurrently.
        unsafe { bindings::get_device(&raw mut (*self.bdev.as_ptr()).bd_device) };
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
        // SAFETY: By the type invariant we hold a reference on the block device, which we give
        // back. The pointer is raw: other CPUs change the reference count concurrently.
        unsafe { bindings::put_device(&raw mut (*self.bdev.as_ptr()).bd_device) };
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
/// Derefs to [`Bio`]; gives access to the target's typed per-bio data. It is seen either by
/// the owner of the bio (through a [`DmBio`]), or by [`TargetOperations::end_io`] while the bio
/// is being completed.
///
/// # Invariants
///
/// `self.0` is a dm clone that device-mapper sent to a target of type `T`, and that went through
/// the target's `map` callback: it is preceded by `size_of::<T::PerIo>()` bytes of per-bio
/// data (the target's `per_io_data_size`), initialised before `T::map` was called. A
/// `&TargetBio<T>` is only made while the bio is not freed and nobody else works on it: its
/// holder either owns the bio in flight, or is part of its completion (the `end_io` callback),
/// which device-mapper finishes only after the reference ends.
#[repr(transparent)]
pub struct TargetBio<T: TargetOperations>(Bio, PhantomData<T>);

impl<T: TargetOperations> TargetBio<T> {
    /// # Safety
    ///
    /// `ptr` must point to a bio that satisfies the type invariants for `'a`.
    unsafe fn from_raw<'a>(ptr: *mut bindings::bio) -> &'a Self {
        // CAST: `TargetBio` is a transparent wrapper around `Bio`, itself around `struct bio`.
        // SAFETY: By the safety requirements the bio is valid for `'a`, and it satisfies the
        // invariants of `Bio` (not freed, worked on by the holder only) as well as ours.
        unsafe { &*ptr.cast::<Self>() }
    }

    fn per_io_ptr(&self) -> *mut T::PerIo {
        let size = core::mem::size_of::<T::PerIo>();
        if size == 0 {
            return NonNull::dangling().as_ptr();
        }
        // SAFETY: By the type invariant the bio is a dm clone for a target of type `T`, whose
        // `per_io_data_size` is `size`, so the per-bio data precedes it.
        unsafe { bindings::dm_per_bio_data(self.0.as_raw(), size).cast() }
    }

    /// Returns the per-bio data of the target.
    pub fn per_io(&self) -> &T::PerIo {
        // SAFETY: By the type invariant the per-bio data is initialised, and it lives as long
        // as the bio, which outlives `self`. It is only reached through the bio, which only the
        // holder of `self` works on (and `TargetBio` is not `Sync`), so nothing changes it
        // while the returned reference lives.
        unsafe { &*self.per_io_ptr() }
    }

    /// Returns the number of this bio among the bios a flush, discard, ... was split into for
    /// this target (`dm_bio_get_target_bio_nr()`).
    #[inline]
    pub fn target_bio_nr(&self) -> u32 {
        // SAFETY: By the type invariant the bio is a valid dm clone.
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
///
/// # Invariants
///
/// `self.0` owns a bio in flight that satisfies the invariants of [`TargetBio<T>`]: a dm clone
/// sent to a target of type `T`, with initialised per-bio data.
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
        // SAFETY: By the type invariant the per-bio data is initialised and lives as long as
        // the bio, which we own; `&mut self` gives exclusive access to the bio and so to it.
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
        // SAFETY: By the type invariant the owned bio satisfies the invariants of `TargetBio<T>`
        // while we own it, which we do while `self` is borrowed.
        unsafe { TargetBio::from_raw(self.0.as_raw()) }
    }
}

// SAFETY: `DmBio` owns a bio in flight, as `OwnedBio` does.
unsafe impl<T: TargetOperations> BioOwner for DmBio<T> {
    fn into_raw(self) -> *mut bindings::bio {
        self.0.into_raw()
    }

    unsafe fn from_raw(ptr: *mut bindings::bio) -> Self {
        // INVARIANT: By the safety requirements `ptr` came from `into_raw` of a `DmBio<T>`, so it
        // is a bio of a target of type `T` with initialised per-bio data.
        // SAFETY: As above; that `DmBio<T>` gave its ownership of the bio in flight to us.
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
///
/// # Invariants
///
/// `ti` is a constructed target whose `iterate_devices` callback is running for `'a`,
/// `callout` and `data` are the callout and its argument that device-mapper passed to that
/// call, and `devs` are the devices the target opened, which stay open while it is live.
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
            // SAFETY: By the type invariant `callout` and `data` come from device-mapper for
            // this live target, and `dev.dm_dev` is one of the target's open devices.
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
///
/// # Invariants
///
/// A `&QueueLimits` or `&mut QueueLimits` points to a valid `struct queue_limits` that nobody
/// else accesses for the lifetime of the reference: the limits that device-mapper computes for
/// one target of a table (a local variable of `dm_calculate_queue_limits()`).
#[repr(transparent)]
pub struct QueueLimits(Opaque<bindings::queue_limits>);

macro_rules! limits_accessors {
    ($($(#[$m:meta])* $field:ident, $set:ident: $t:ty;)*) => {
        $(
            $(#[$m])*
            pub fn $field(&self) -> $t {
                // SAFETY: By the type invariant the limits are valid and not written by anyone
                // else while `self` is borrowed.
                unsafe { (*self.0.get()).$field }
            }

            $(#[$m])*
            pub fn $set(&mut self, v: $t) {
                // SAFETY: By the type invariant the limits are valid and nobody else accesses
                // them while `self` is borrowed.
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

/// Storage for the context shared by the target types of a module, in the module's static
/// memory.
///
/// [`module_dm_targets!`](crate::module_dm_targets) puts one in a `static` next to the
/// module's [`TargetType`]s, which reach it from `ti->type` in their constructor. The context
/// cannot live in the module's state itself: the types are registered (and may be used) before
/// the module's initialisation returns that state and the `module!` macro moves it to its
/// final place. The module's state owns the context all the same: its [`Registration`] stores it
/// here when the module is loaded and drops it when the module is unloaded.
///
/// # Invariants
///
/// `claimed` is set by the one [`Registration`] that may use the slot, before it writes
/// `context`. That registration sets `context` to `Some` before it registers any type built
/// with this slot, and takes it back only once all of them are unregistered and no constructor
/// of them runs (in the module's exit), so `context` holds the context whenever a constructor
/// of one of them runs.
pub struct ContextSlot<C> {
    claimed: AtomicBool,
    context: UnsafeCell<Option<Arc<C>>>,
}

// SAFETY: The slot is shared by the constructors of the module's target types, which may run
// on any thread and only read it while no one writes it (by the type invariant); giving them an
// `&Arc<C>` is sound across threads because `C: Send + Sync`.
unsafe impl<C: Send + Sync> Sync for ContextSlot<C> {}

impl<C> ContextSlot<C> {
    /// Creates an empty slot, for a `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self {
            claimed: AtomicBool::new(false),
            context: UnsafeCell::new(None),
        }
    }

    /// Returns the context.
    ///
    /// # Safety
    ///
    /// The caller must be a constructor of a target type built with this slot, called by
    /// device-mapper.
    unsafe fn get(&self) -> Option<&Arc<C>> {
        // SAFETY: By the type invariant and the safety requirements, nobody writes `context`
        // while a constructor of a type built with this slot runs.
        unsafe { (*self.context.get()).as_ref() }
    }
}

/// A device-mapper target type (C `struct target_type`), in the static memory of a module.
///
/// [`module_dm_targets!`](crate::module_dm_targets) builds the module's target types in a
/// `static` with [`TargetType::new`], and registers them with a [`Registration`].
///
/// Static memory is what device-mapper needs: it calls the callbacks through `ti->type` for as
/// long as a target of the type exists, and `dm_put_target_type()` reads `tt->module` after the
/// last target of a table is destroyed. The memory of a `static` lasts until the module is
/// unloaded, which cannot happen while device-mapper holds a reference on the module, as it does
/// from looking a type up until the target it made is destroyed.
///
/// # Invariants
///
/// `tt` has the callbacks of `Adapter<T>` for a `T: TargetOperations<Context = C>`, whose
/// constructor takes the context from `context`. Its `module` is only written by the
/// registration that claimed `context`, before it registers the type.
pub struct TargetType<C: 'static> {
    tt: Opaque<bindings::target_type>,
    context: &'static ContextSlot<C>,
}

// SAFETY: Device-mapper uses the target type from any thread, under its own lock where it
// changes it (`tt->list`); the abstraction only writes `tt->module` before registering it, once
// (by the invariants of `TargetType` and `ContextSlot`). The context slot is `Sync`.
unsafe impl<C: Send + Sync> Sync for TargetType<C> {}

impl<C: Send + Sync> TargetType<C> {
    /// Builds the target type of `T`, named `name` (the type in table lines) with the given
    /// version, whose targets share the context in `context`.
    ///
    /// This is where the per-bio data of `T` is checked: it must not need dropping, and its
    /// alignment must not exceed that of `struct bio`, which device-mapper places right after
    /// it (the per-bio data is at the bio minus its size, a multiple of its alignment, minus
    /// offsets within device-mapper structures that are multiples of the bio's alignment).
    pub const fn new<T: TargetOperations<Context = C>>(
        name: &'static CStr,
        version: [u32; 3],
        context: &'static ContextSlot<C>,
    ) -> Self {
        const {
            assert!(
                !core::mem::needs_drop::<T::PerIo>(),
                "per-bio data must not need dropping"
            );
            assert!(
                core::mem::align_of::<T::PerIo>() <= core::mem::align_of::<bindings::bio>(),
                "per-bio data alignment exceeds that of `struct bio`"
            );
        };
        // INVARIANT: The callbacks are those of `Adapter<T>`, `T::Context` is `C` and `module`
        // is null until the type is registered.
        Self {
            tt: Opaque::new(bindings::target_type {
                name: name.as_char_ptr(),
                version,
                ctr: Some(Adapter::<T>::ctr_callback),
                dtr: Some(Adapter::<T>::dtr_callback),
                map: Some(Adapter::<T>::map_callback),
                end_io: if T::HAS_END_IO {
                    Some(Adapter::<T>::end_io_callback)
                } else {
                    None
                },
                status: if T::HAS_STATUS {
                    Some(Adapter::<T>::status_callback)
                } else {
                    None
                },
                message: if T::HAS_MESSAGE {
                    Some(Adapter::<T>::message_callback)
                } else {
                    None
                },
                presuspend: if T::HAS_PRESUSPEND {
                    Some(Adapter::<T>::presuspend_callback)
                } else {
                    None
                },
                postsuspend: if T::HAS_POSTSUSPEND {
                    Some(Adapter::<T>::postsuspend_callback)
                } else {
                    None
                },
                preresume: if T::HAS_PRERESUME {
                    Some(Adapter::<T>::preresume_callback)
                } else {
                    None
                },
                resume: if T::HAS_RESUME {
                    Some(Adapter::<T>::resume_callback)
                } else {
                    None
                },
                iterate_devices: if T::HAS_ITERATE_DEVICES {
                    Some(Adapter::<T>::iterate_devices_callback)
                } else {
                    None
                },
                io_hints: if T::HAS_IO_HINTS {
                    Some(Adapter::<T>::io_hints_callback)
                } else {
                    None
                },
                // SAFETY: All zeroes is valid for the other fields: no features, a null module
                // (set when registering), unset callbacks and an empty list head, which
                // `dm_register_target()` initialises.
                ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
            }),
            context,
        }
    }
}

/// The registration of the target types of a module with device-mapper.
///
/// [`module_dm_targets!`](crate::module_dm_targets) makes it in the module's initialisation and
/// keeps it in the module's state, which is dropped when the module is unloaded: only then does
/// it unregister the types (`dm_unregister_target()`) and drop their context.
///
/// That is the only time it is safe to do so. Device-mapper keeps using a target type after
/// looking it up by name, holding nothing but a reference on the module: it calls the
/// constructor without a lock (so a constructor can start after the type was unregistered), then
/// the other callbacks while the target lives, and reads `tt->module` when the target is gone.
/// So a registration that safe code could drop while the module is loaded could free the context
/// under a running constructor. There is therefore no safe way to make one:
/// [`Registration::register`] is `unsafe`, for the macro to call, and this does not compile
/// (not compiled as a doc test: the kernel's doc-test runner cannot check that a test fails to
/// compile):
///
/// ```ignore
/// # use kernel::device_mapper::{
/// #     ContextSlot, CtrError, DmBio, MapResult, Registration, Target, TargetCtx, TargetType,
/// #     TargetOperations,
/// # };
/// # use kernel::{c_str, prelude::*, str::CStr};
/// # struct Nothing;
/// # #[vtable]
/// # impl TargetOperations for Nothing {
/// #     type Context = ();
/// #     type PerIo = ();
/// #     fn ctr(_: &mut TargetCtx<'_, Self>, _: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
/// #         Err(CtrError::from(EINVAL))
/// #     }
/// #     fn map(_: Pin<&Self>, _: &Target, bio: DmBio<Self>) -> MapResult<Self> {
/// #         MapResult::Kill(bio)
/// #     }
/// # }
/// static CONTEXT: ContextSlot<()> = ContextSlot::new();
/// static TYPES: [TargetType<()>; 1] =
///     [TargetType::new::<Nothing>(c_str!("nothing"), [1, 0, 0], &CONTEXT)];
///
/// fn register_and_drop_early(module: &'static ThisModule) -> Result {
///     // error[E0133]: call to unsafe function `Registration::register` is unsafe.
///     let registration =
///         Registration::register(module, &TYPES, &CONTEXT, kernel::init::zeroed())?;
///     drop(registration);
///     Ok(())
/// }
/// ```
///
/// # Invariants
///
/// Every type in `types` is registered with device-mapper with its `module` set, and was built
/// with the slot `context`, which this registration claimed and which holds the context.
pub struct Registration<C: Send + Sync + 'static> {
    types: &'static [TargetType<C>],
    context: &'static ContextSlot<C>,
}

impl<C: Send + Sync + 'static> Registration<C> {
    /// Creates the context with `init` and registers `types` with device-mapper on behalf of
    /// `module`.
    ///
    /// Fails with `EBUSY` if `context` was already claimed by another call (the slot and the
    /// types are registered once per module load), and with `EINVAL` if a type of `types` does
    /// not use `context`. If registering a type fails, those already registered are unregistered
    /// again and the error is returned; the context is then leaked rather than dropped, since a
    /// constructor may have started for a type that was registered for a while. (That only
    /// helps a built-in module: the kernel frees a loadable module whose initialisation failed
    /// even if references on it are held, a limitation that C modules registering several target
    /// types share.)
    ///
    /// # Safety
    ///
    /// The returned value must only be dropped by the exit function of `module`, when
    /// device-mapper holds no reference on the module, so that no target of the types exists and
    /// no constructor of them runs. For a built-in module it must never be dropped.
    pub unsafe fn register<E>(
        module: &'static ThisModule,
        types: &'static [TargetType<C>],
        context: &'static ContextSlot<C>,
        init: impl PinInit<C, E>,
    ) -> Result<Self>
    where
        Error: From<E>,
    {
        if types.iter().any(|t| !core::ptr::eq(t.context, context)) {
            return Err(EINVAL);
        }
        // Only one caller can see `false`. The writes below are published to the constructors
        // by `dm_register_target()`, which takes device-mapper's lock, not by this flag.
        if context.claimed.swap(true, Ordering::Relaxed) {
            return Err(EBUSY);
        }
        let ctx = Arc::pin_init(init, GFP_KERNEL)?;
        // SAFETY: We claimed the slot, so nobody else writes it, and no type using it is
        // registered yet, so no constructor reads it.
        unsafe { *context.context.get() = Some(ctx) };
        for (i, t) in types.iter().enumerate() {
            let tt = t.tt.get();
            // SAFETY: The type is not registered yet, and by the invariants of `TargetType` and
            // `ContextSlot` only we, who claimed its slot, write its `module`.
            unsafe { (*tt).module = module.as_ptr() };
            // SAFETY: `tt` is a fully initialised target type in static memory, which lasts as
            // long as the module.
            if let Err(e) = to_result(unsafe { bindings::dm_register_target(tt) }) {
                for t in types[..i].iter().rev() {
                    // SAFETY: We registered `t` above.
                    unsafe { bindings::dm_unregister_target(t.tt.get()) };
                }
                return Err(e);
            }
        }
        // INVARIANT: All the types are registered with their `module` set and use `context`,
        // which we claimed and filled.
        Ok(Self { types, context })
    }
}

impl<C: Send + Sync + 'static> Drop for Registration<C> {
    fn drop(&mut self) {
        for t in self.types.iter().rev() {
            // SAFETY: By the type invariant `t` is registered.
            unsafe { bindings::dm_unregister_target(t.tt.get()) };
        }
        // SAFETY: By the safety requirements of `register` we are dropped when no constructor of
        // the types runs, and none can start now that they are unregistered; by the type
        // invariant of the slot only we, who claimed it, write it.
        let ctx = unsafe { (*self.context.context.get()).take() };
        drop(ctx);
    }
}

/// The C callbacks of the target type of `T`.
struct Adapter<T>(PhantomData<T>);

impl<T: TargetOperations> Adapter<T> {
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
        // SAFETY: Device-mapper calls this with a valid target of our type under construction,
        // whose `type` points to the `tt` field of the `TargetType<T::Context>` that has our
        // callbacks; it is in static memory, which lasts as long as the module.
        let tt = unsafe { &*crate::container_of!((*ti).type_, TargetType<T::Context>, tt) };
        // SAFETY: We are the constructor of a type built with `tt.context` (by the invariant of
        // `TargetType`), called by device-mapper.
        let Some(context) = (unsafe { tt.context.get() }) else {
            // Cannot happen: the registration fills the slot before registering the type.
            return ENXIO.to_errno();
        };
        // SAFETY: As above, `ti` is a valid target, for longer than this call.
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
        let mut events = None;
        // INVARIANT: `ti` is under construction by this call of the constructor of `T`, and
        // `context` is that of `T`'s module; `devs` is put and `events` detached below on
        // failure, and by `dtr_callback` otherwise.
        let res = T::ctr(
            &mut TargetCtx {
                ti: target,
                context,
                devs: &mut devs,
                events: &mut events,
            },
            &args,
        );
        let res = res.and_then(|data| {
            KBox::new(
                TargetState {
                    data,
                    devs: KVec::new(),
                    events: None,
                },
                GFP_KERNEL,
            )
            .map_err(CtrError::from)
        });
        match res {
            Ok(mut state) => {
                state.devs = devs;
                state.events = events;
                // SAFETY: The target is under construction; `dtr_callback` frees the state.
                unsafe { (*ti).private = KBox::into_raw(state).cast() };
                0
            }
            Err(e) => {
                // The private data (if any) is already dropped; release the devices.
                if let Some(events) = events {
                    events.detach();
                }
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
        let TargetState { data, devs, events } = KBox::into_inner(state);
        drop(data);
        // Before the table can go: see `TableEvents`.
        if let Some(events) = events {
            events.detach();
        }
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
            // bytes of per-bio data, suitably aligned (see `TargetType::new`).
            unsafe {
                bindings::dm_per_bio_data(bio, core::mem::size_of::<T::PerIo>())
                    .cast::<T::PerIo>()
                    .write(T::PerIo::default())
            };
        }
        // INVARIANT: The bio is a dm clone sent to this target of type `T`, and its per-bio data
        // was initialised above.
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
        // SAFETY: Device-mapper calls `end_io` for a constructed target of our type with a valid
        // status pointer, and with a clone that it sent to this target (every clone goes through
        // `map`, see `__map_bio()`). It calls `end_io` from the clone's completion
        // (`clone_endio()`), which nobody else works on and which frees the clone only after we
        // return, so the bio satisfies the invariants of `TargetBio<T>` for this call.
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

/// Declares a kernel module that provides device-mapper target types.
///
/// It takes the list of target types, each a [`TargetOperations`] implementation with the name
/// used in table lines (a `&'static CStr`) and a version, then optionally the initialiser of the
/// context shared by the types (`context:`, an initialiser that
/// [`Arc::pin_init`](crate::init::InPlaceInit::pin_init) accepts, such as `pin_init!(...)`,
/// `init!(...)` or a function returning one; without it, the context is `()`), then the fields
/// of [`module!`](crate::prelude::module) (`name`, `author`, `description`, `license`, ...).
///
/// It builds the C `struct target_type` of every type in a `static` array with
/// [`TargetType::new`], next to a `static` [`ContextSlot`] for the context. When the module is
/// loaded, it creates the context and registers the types ([`Registration::register`]); if one
/// fails to register, those already registered are unregistered again and loading fails. The
/// types are unregistered and the context is dropped only when the module is unloaded, when
/// device-mapper holds no reference on the module: no target of the types exists then, and no
/// constructor runs. Safe code has no other way to register a target type, so it cannot
/// unregister one, or free its memory or context, while device-mapper still uses it.
///
/// All the types must have the same [`TargetOperations::Context`]: that of the first one. This
/// is checked at compile time.
///
/// # Examples
///
/// ```
/// # mod module_dm_targets_sample {
/// use core::sync::atomic::{AtomicU64, Ordering};
/// use kernel::device_mapper::{
///     CtrError, CtrResultExt, DmBio, DmDev, MapResult, Target, TargetCtx, TargetOperations,
/// };
/// use kernel::prelude::*;
/// use kernel::{c_str, str::CStr, sync::Arc};
///
/// /// Counts the targets ever made, by both types.
/// struct Stats {
///     targets: AtomicU64,
/// }
///
/// /// Maps its range onto the start of a device.
/// struct Passthrough {
///     dev: DmDev,
///     stats: Arc<Stats>,
/// }
///
/// #[vtable]
/// impl TargetOperations for Passthrough {
///     type Context = Stats;
///     type PerIo = ();
///
///     fn ctr(t: &mut TargetCtx<'_, Self>, args: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
///         let [path] = args else {
///             return Err(CtrError::new(EINVAL, c_str!("Invalid argument count")));
///         };
///         let dev = t.get_device(path).ctr_err(c_str!("Device lookup failed"))?;
///         let stats = t.context().clone();
///         stats.targets.fetch_add(1, Ordering::Relaxed);
///         KBox::pin(Self { dev, stats }, GFP_KERNEL).ctr_err(c_str!("Cannot allocate context"))
///     }
///
///     fn map(this: Pin<&Self>, t: &Target, bio: DmBio<Self>) -> MapResult<Self> {
///         bio.remap(this.dev.bdev(), t.offset(bio.sector()));
///         MapResult::Remapped(bio)
///     }
/// }
///
/// /// Fails all I/O.
/// struct Failing;
///
/// #[vtable]
/// impl TargetOperations for Failing {
///     type Context = Stats;
///     type PerIo = ();
///
///     fn ctr(t: &mut TargetCtx<'_, Self>, _args: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
///         t.context().targets.fetch_add(1, Ordering::Relaxed);
///         KBox::pin(Self, GFP_KERNEL).ctr_err(c_str!("Cannot allocate context"))
///     }
///
///     fn map(_this: Pin<&Self>, _t: &Target, bio: DmBio<Self>) -> MapResult<Self> {
///         MapResult::Kill(bio)
///     }
/// }
///
/// kernel::module_dm_targets! {
///     targets: [
///         { type: Passthrough, name: c_str!("passthrough"), version: [1, 0, 0] },
///         { type: Failing, name: c_str!("failing"), version: [1, 0, 0] },
///     ],
///     context: init!(Stats { targets: AtomicU64::new(0) }),
///     name: "dm_passthrough",
///     author: "Rust for Linux Contributors",
///     description: "Sample device-mapper target types",
///     license: "GPL",
/// }
/// # }
/// ```
///
/// A type whose `Context` differs from that of the first type is refused at compile time (not
/// compiled as a doc test: the kernel's doc-test runner cannot check compile errors):
///
/// ```ignore
/// # mod module_dm_targets_mismatch {
/// # use kernel::device_mapper::{CtrError, DmBio, MapResult, Target, TargetCtx, TargetOperations};
/// # use kernel::{c_str, prelude::*, str::CStr};
/// # struct A;
/// # #[vtable]
/// # impl TargetOperations for A {
/// #     type Context = ();
/// #     type PerIo = ();
/// #     fn ctr(_: &mut TargetCtx<'_, Self>, _: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
/// #         Err(CtrError::from(EINVAL))
/// #     }
/// #     fn map(_: Pin<&Self>, _: &Target, bio: DmBio<Self>) -> MapResult<Self> {
/// #         MapResult::Kill(bio)
/// #     }
/// # }
/// # struct B;
/// # #[vtable]
/// # impl TargetOperations for B {
/// #     type Context = u32;
/// #     type PerIo = ();
/// #     fn ctr(_: &mut TargetCtx<'_, Self>, _: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
/// #         Err(CtrError::from(EINVAL))
/// #     }
/// #     fn map(_: Pin<&Self>, _: &Target, bio: DmBio<Self>) -> MapResult<Self> {
/// #         MapResult::Kill(bio)
/// #     }
/// # }
/// // error[E0308]: mismatched types: expected `&ContextSlot<()>`, found `&ContextSlot<u32>`.
/// kernel::module_dm_targets! {
///     targets: [
///         { type: A, name: c_str!("a"), version: [1, 0, 0] },
///         { type: B, name: c_str!("b"), version: [1, 0, 0] },
///     ],
///     name: "dm_mismatch",
///     license: "GPL",
/// }
/// # }
/// ```
#[macro_export]
macro_rules! module_dm_targets {
    (@context $first:ty $(, $rest:ty)*) => {
        <$first as $crate::device_mapper::TargetOperations>::Context
    };
    (@count $($type:ty),*) => {
        0usize $(+ $crate::module_dm_targets!(@one $type))*
    };
    (@one $type:ty) => {
        1usize
    };
    (
        targets: [
            $({ type: $type:ty, name: $name:expr, version: $version:expr $(,)? }),+ $(,)?
        ],
        context: $context:expr,
        $($fields:tt)*
    ) => {
        /// The module's state: the registration of its device-mapper target types.
        struct DmTargetsModule {
            _targets: $crate::device_mapper::Registration<
                $crate::module_dm_targets!(@context $($type),+)
            >,
        }

        $crate::prelude::module! {
            type: DmTargetsModule,
            $($fields)*
        }

        const _: () = {
            type Context = $crate::module_dm_targets!(@context $($type),+);

            // Nothing else can name these statics: they are only reached by the registration
            // below and, from `ti->type`, by device-mapper and the callbacks.
            static CONTEXT: $crate::device_mapper::ContextSlot<Context> =
                $crate::device_mapper::ContextSlot::new();
            static TYPES: [
                $crate::device_mapper::TargetType<Context>;
                $crate::module_dm_targets!(@count $($type),+)
            ] = [
                $($crate::device_mapper::TargetType::new::<$type>($name, $version, &CONTEXT)),+
            ];

            impl $crate::Module for DmTargetsModule {
                fn init(module: &'static $crate::ThisModule) -> $crate::error::Result<Self> {
                    // Outside of the `unsafe` block: it is the module's code.
                    let context = $context;
                    // SAFETY: The registration is kept in the module's state, which `module!`
                    // keeps to itself and drops only in the module's exit function, when
                    // device-mapper holds no reference on the module (a built-in module is
                    // never unloaded, so its state is never dropped). Should this function be
                    // called again, that registration fails, as `CONTEXT` is already claimed.
                    let targets = unsafe {
                        $crate::device_mapper::Registration::register(
                            module, &TYPES, &CONTEXT, context,
                        )
                    }?;
                    Ok(Self { _targets: targets })
                }
            }
        };
    };
    (
        targets: [$($targets:tt)*],
        $($fields:tt)*
    ) => {
        $crate::module_dm_targets! {
            targets: [$($targets)*],
            context: $crate::init::zeroed::<()>(),
            $($fields)*
        }
    };
}
