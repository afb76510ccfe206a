// SPDX-License-Identifier: GPL-2.0

//! Asynchronous copies between devices for device-mapper targets (dm-kcopyd).
//!
//! A [`Client`] copies a [`Region`] of one device to up to
//! [`MAX_DESTINATIONS`] regions of other devices (or zeroes them) in the background, through
//! dm-kcopyd's own workqueue and page pool, and calls a completion closure with the result when
//! done. [`Client::copy_sync`] waits for the copy instead.
//!
//! dm-kcopyd rather than dm-io: kcopyd reads and writes in sub-jobs through its reserved pages,
//! so copies of any size make progress under memory pressure, from any context that may
//! allocate with `GFP_NOIO`; the completion runs in kcopyd's worker (process context), which is
//! where targets like snapshots continue their work (e.g. submit the bios that waited for a
//! copy-on-write). A one-chunk synchronous copy is just [`Client::copy_sync`].
//!
//! Dropping the client may sleep and must happen in process context (a work item counts).
//! Outside work items it waits for all the client's copies to complete
//! (`dm_kcopyd_client_destroy()`). In a work item it must not wait: a completion may drop the
//! last owner of its own client (a closure may hold the only reference to the structure that
//! owns the client), and the wait would never end. So a client dropped in a work item, which
//! includes a target's `dtr` run by device-mapper's deferred remove, is destroyed later, from
//! `system_unbound_wq`, and the drop returns before its copies have completed. Their
//! completions are code of the module given to [`Client::new`]: a deferred drop takes a
//! reference to that module, which the C helper (vmlinux code) puts only once
//! `dm_kcopyd_client_destroy()` has returned, that is after the last completion has returned.
//! Taken at the drop, the reference cannot stop an unload already under way by then: the
//! module must not be unloading yet, as for any of its code that runs.
//!
//! The regions' devices are kept referenced until each copy completes.
//!
//! The source and every destination of a copy have the same length: kcopyd allocates its
//! pages for the first destination and reads and writes each region over that page list, so
//! the abstraction refuses copies whose regions differ in length, or are empty.
//!
//! C header: [`include/linux/dm-kcopyd.h`](srctree/include/linux/dm-kcopyd.h)
//!
//! # Examples
//!
//! ```
//! use kernel::device_mapper::{kcopyd::{Client, Region}, DmDev};
//! use kernel::prelude::*;
//!
//! fn backup_first_chunk(kc: &Client, origin: &DmDev, cow: &DmDev) -> Result {
//!     let from = Region::new(origin, 0, 16);
//!     let to = [Region::new(cow, 2048, 16)];
//!     kc.copy(&from, &to, |result| {
//!         if let Err(e) = result {
//!             pr_err!("copy failed: {:?}\n", e);
//!         }
//!     })
//! }
//! ```

use crate::{
    alloc::{flags::GFP_NOIO, KBox},
    bindings,
    block::bio::Sector,
    device_mapper::DmDev,
    error::{code::*, from_err_ptr, Error, Result},
    ffi::{c_int, c_ulong, c_void},
    new_condvar, new_spinlock,
    prelude::*,
    sync::{Arc, CondVar, SpinLock},
    ThisModule,
};
use core::ptr::NonNull;

/// The maximum number of destination regions of one copy (`DM_KCOPYD_MAX_REGIONS`).
pub const MAX_DESTINATIONS: usize = bindings::DM_KCOPYD_MAX_REGIONS as usize;

/// A range of sectors of a device.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    /// The device.
    pub dev: &'a DmDev,
    /// The first sector.
    pub sector: Sector,
    /// The number of sectors.
    pub count: Sector,
}

impl<'a> Region<'a> {
    /// Creates a region of `count` sectors of `dev` from `sector`.
    pub fn new(dev: &'a DmDev, sector: Sector, count: Sector) -> Self {
        Self { dev, sector, count }
    }

    fn to_raw(self) -> bindings::dm_io_region {
        bindings::dm_io_region {
            bdev: self.dev.bdev().as_raw(),
            sector: self.sector,
            count: self.count,
        }
    }
}

/// The failure of a copy: whether reading failed, and which destinations failed to be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyError {
    /// Reading the source failed.
    pub read_failed: bool,
    /// Bit `i` is set if writing destination `i` failed.
    pub write_failed: u64,
}

impl From<CopyError> for Error {
    fn from(_: CopyError) -> Error {
        EIO
    }
}

/// The result of a copy given to its completion.
pub type CopyResult = core::result::Result<(), CopyError>;

/// A dm-kcopyd client (C `struct dm_kcopyd_client`).
///
/// Dropping it may sleep and must happen in process context (a work item counts); see the
/// [module documentation](self) for when it waits for the client's copies.
///
/// # Invariants
///
/// `kc` is a valid client created by `dm_kcopyd_client_create()`; `reaper` was allocated by
/// `dm_kcopyd_reaper_alloc()` for it, with the module given to [`Client::new`] (whose code its
/// completions are) as owner, and is neither queued nor freed yet.
pub struct Client {
    kc: NonNull<bindings::dm_kcopyd_client>,
    reaper: NonNull<c_void>,
}

// SAFETY: A kcopyd client may be used from and destroyed on any thread.
unsafe impl Send for Client {}
// SAFETY: Submitting copies is thread-safe.
unsafe impl Sync for Client {}

/// A submitted copy: the completion and the devices it keeps referenced.
struct Job<F> {
    done: F,
    _devs: KVec<DmDev>,
}

impl Client {
    /// Creates a client, with the default (no) throttling. May sleep.
    ///
    /// `module` is the module whose code the completions of the client's copies are (usually
    /// `&THIS_MODULE`): if the client is dropped in a work item, it is kept loaded until the
    /// client is destroyed.
    #[inline]
    pub fn new(module: &'static ThisModule) -> Result<Self> {
        // SAFETY: No requirements on the owner (null for built-in code), which is only stored;
        // the result is checked for null.
        let reaper = NonNull::new(unsafe { bindings::dm_kcopyd_reaper_alloc(module.as_ptr()) })
            .ok_or(ENOMEM)?;
        // SAFETY: A null throttle is allowed.
        let kc = from_err_ptr(unsafe { bindings::dm_kcopyd_client_create(core::ptr::null_mut()) });
        let kc = match kc {
            // SAFETY: `from_err_ptr` returned a valid, hence non-null, pointer.
            Ok(kc) => unsafe { NonNull::new_unchecked(kc) },
            Err(e) => {
                // SAFETY: `reaper` was allocated above and is not used any more.
                unsafe { bindings::dm_kcopyd_reaper_free(reaper.as_ptr()) };
                return Err(e);
            }
        };
        // INVARIANT: Creation succeeded; the reaper is unused and owned by `module`.
        Ok(Self { kc, reaper })
    }

    /// The kcopyd completion callback of a job submitted by [`Client::submit`].
    ///
    /// # Safety
    ///
    /// `context` must be a `Job<F>` boxed by [`Client::submit`], and this must be the only
    /// call for it.
    unsafe extern "C" fn notify<F: FnOnce(CopyResult) + Send + 'static>(
        read_err: c_int,
        write_err: c_ulong,
        context: *mut c_void,
    ) {
        // SAFETY: `context` is the job boxed by `submit`, and kcopyd calls this once.
        let job = unsafe { KBox::from_raw(context.cast::<Job<F>>()) };
        let Job { done, _devs } = KBox::into_inner(job);
        let result = if read_err != 0 || write_err != 0 {
            Err(CopyError {
                read_failed: read_err != 0,
                // CAST: `c_ulong` is at most 64 bits wide.
                write_failed: write_err as u64,
            })
        } else {
            Ok(())
        };
        done(result);
    }

    fn submit<F: FnOnce(CopyResult) + Send + 'static>(
        &self,
        from: Option<&Region<'_>>,
        to: &[Region<'_>],
        done: F,
    ) -> Result {
        if to.is_empty() || to.len() > MAX_DESTINATIONS {
            return Err(EINVAL);
        }
        // kcopyd sizes its page list by `to[0].count` and walks it unchecked for the source and
        // every destination: a longer region would run off the list (a NULL dereference in the
        // kcopyd worker), a shorter one would leave pages unread or unwritten, and an empty one
        // never gets its pages (`kcopyd_get_pages()` loops).
        let count = to[0].count;
        if count == 0
            || to.iter().any(|r| r.count != count)
            || from.is_some_and(|r| r.count != count)
        {
            return Err(EINVAL);
        }
        let mut devs = KVec::with_capacity(to.len() + 1, GFP_NOIO)?;
        let mut dests = [bindings::dm_io_region {
            bdev: core::ptr::null_mut(),
            sector: 0,
            count: 0,
        }; MAX_DESTINATIONS];
        for (d, r) in dests.iter_mut().zip(to) {
            *d = r.to_raw();
            devs.push(r.dev.clone(), GFP_NOIO)?;
        }
        let mut src = from.map(|r| r.to_raw());
        if let Some(r) = from {
            devs.push(r.dev.clone(), GFP_NOIO)?;
        }
        let job = KBox::new(Job { done, _devs: devs }, GFP_NOIO)?;
        let context = KBox::into_raw(job).cast::<c_void>();
        // CAST: `to.len()` is at most `MAX_DESTINATIONS`.
        let n = to.len() as u32;
        // SAFETY: The client is valid; the regions are copied by kcopyd and their devices are
        // kept referenced by the job until `notify::<F>` frees it.
        unsafe {
            match src.as_mut() {
                Some(src) => bindings::dm_kcopyd_copy(
                    self.kc.as_ptr(),
                    src,
                    n,
                    dests.as_mut_ptr(),
                    0,
                    Some(Self::notify::<F>),
                    context,
                ),
                None => bindings::dm_kcopyd_zero(
                    self.kc.as_ptr(),
                    n,
                    dests.as_mut_ptr(),
                    0,
                    Some(Self::notify::<F>),
                    context,
                ),
            }
        };
        Ok(())
    }

    /// Copies `from` to every region of `to` (one to [`MAX_DESTINATIONS`] regions, each as long
    /// as `from`, which must not be empty) in the background, then calls `done` with the result
    /// from kcopyd's worker (process context).
    ///
    /// May be called from process context, including a target's workers; it allocates with
    /// `GFP_NOIO` and may block while kcopyd throttles. Fails with `EINVAL` if the regions are
    /// empty or differ in length. On error `done` is not called.
    pub fn copy<F: FnOnce(CopyResult) + Send + 'static>(
        &self,
        from: &Region<'_>,
        to: &[Region<'_>],
        done: F,
    ) -> Result {
        self.submit(Some(from), to, done)
    }

    /// Writes zeroes to every region of `to` (all of the same, non-zero, length) in the
    /// background, then calls `done` like [`Client::copy`].
    pub fn zero<F: FnOnce(CopyResult) + Send + 'static>(
        &self,
        to: &[Region<'_>],
        done: F,
    ) -> Result {
        self.submit(None, to, done)
    }

    /// Copies `from` to `to` and waits for the copy to complete. Sleeps.
    #[inline]
    pub fn copy_sync(&self, from: &Region<'_>, to: &[Region<'_>]) -> Result {
        let wait = Arc::pin_init(
            pin_init!(SyncWait {
                result <- new_spinlock!(None, "kcopyd::SyncWait::result"),
                done <- new_condvar!("kcopyd::SyncWait::done"),
            }),
            GFP_NOIO,
        )?;
        let w = wait.clone();
        self.copy(from, to, move |r| {
            *w.result.lock() = Some(r);
            w.done.notify_all();
        })?;
        let mut guard = wait.result.lock();
        loop {
            if let Some(r) = *guard {
                return r.map_err(Error::from);
            }
            wait.done.wait(&mut guard);
        }
    }
}

#[pin_data]
struct SyncWait {
    #[pin]
    result: SpinLock<Option<CopyResult>>,
    #[pin]
    done: CondVar,
}

impl Drop for Client {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: By the type invariant the client is valid and the reaper unused; both are
        // handed over and not used after this. The helper destroys the client at once (waiting
        // for all its copies) only outside work items, so never from the client's own
        // completions, which run in kcopyd's worker. In a work item it defers the destruction
        // and holds a reference to the reaper's owner, the module of the completions, until the
        // last of them has returned.
        unsafe {
            bindings::dm_kcopyd_client_destroy_reaped(self.reaper.as_ptr(), self.kc.as_ptr())
        };
    }
}
