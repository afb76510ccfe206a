// SPDX-License-Identifier: GPL-2.0

//! Device-mapper shared snapshots: the `s-snap-origin` and `s-snap` targets.
//!
//! Many snapshots of one origin device share one COW device: an origin write copies a chunk
//! once however many snapshots need it, and deleting a snapshot gives its space back. The user
//! interface is that of FUJITA Tomonori's 2008 "dm snapshot: shared exception store" series:
//!
//! ```text
//! s-snap-origin <origin dev> <COW dev> S <chunk size>
//! s-snap <origin dev> <snapshot id>
//! dmsetup message <origin> 0 snapshot create <id>
//! dmsetup message <origin> 0 snapshot delete <id>
//! dmsetup message <origin> 0 snapshot rollback <id>
//! dmsetup message <origin> 0 usage
//! ```
//!
//! See `Documentation/admin-guide/device-mapper/shared-snapshot.rst`.

use kernel::{
    c_str,
    device_mapper::{CtrError, DmDev},
    new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
};

mod cow;
mod map_cache;
mod origin;
mod pool;
mod snapshot;
pub mod store;
#[cfg(CONFIG_DM_S_SNAP_KUNIT_TEST)]
mod store_kunit;

use pool::{OpenError, Pool};

// Both target types share the `Registry` of pools: a snapshot target finds its pool there.
kernel::module_dm_targets! {
    targets: [
        { type: origin::OriginTarget, name: c_str!("s-snap-origin"), version: [1, 2, 0] },
        { type: snapshot::SnapshotTarget, name: c_str!("s-snap"), version: [1, 1, 0] },
    ],
    context: Registry::new(),
    name: "dm_s_snap",
    author: "The dm shared snapshot developers",
    description: "device-mapper shared snapshots (s-snap-origin, s-snap)",
    license: "GPL",
}

/// Parses a decimal `u32` (snapshot ids, chunk sizes).
pub(crate) fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a decimal `u64`: digits only (no sign, no spaces), at most 20 of them.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The table error for a store that cannot be opened.
fn open_error(e: OpenError, store_error: fn(store::Error) -> CtrError) -> CtrError {
    match e {
        OpenError::Store(e) => store_error(e),
        OpenError::Kernel(e) => CtrError::from(e),
    }
}

/// A pool and the targets using it.
struct Entry {
    pool: Arc<Pool>,
    origins: u32,
    snapshots: u32,
}

/// The pools of the loaded targets, found by origin or COW device.
///
/// A pool lives as long as an origin target (several during a table reload) or a snapshot
/// target uses it. Snapshot targets can only be created while an origin target is loaded.
#[pin_data]
pub(crate) struct Registry {
    #[pin]
    entries: Mutex<KVec<Entry>>,
}

impl Registry {
    fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            entries <- new_mutex!(KVec::new(), "s_snap::Registry::entries"),
        })
    }

    /// Finds or opens the pool of an origin target.
    pub(crate) fn attach_origin(
        &self,
        origin: &DmDev,
        cow: &DmDev,
        chunk_sectors: u32,
        store_error: fn(store::Error) -> CtrError,
    ) -> Result<Arc<Pool>, CtrError> {
        let mut entries = self.entries.lock();
        for e in entries.iter_mut() {
            let same_origin = e.pool.origin.dev_t() == origin.dev_t();
            let same_cow = e.pool.cow.dev_t() == cow.dev_t();
            if same_origin && same_cow {
                // A table reload, or the origin loaded again while snapshot devices are active.
                if e.pool.chunk_sectors != chunk_sectors {
                    return Err(store_error(store::Error::ChunkSizeMismatch));
                }
                e.origins += 1;
                let pool = e.pool.clone();
                drop(entries);
                // Loading the origin table again is how a failed store is reopened. That waits
                // for copies and reads the COW device: not under the registry's lock, which
                // every ctr and dtr of every pool takes. The attachment counted above keeps the
                // entry meanwhile.
                if let Err(e) = pool.reopen_if_failed() {
                    self.detach_origin(&pool);
                    return Err(open_error(e, store_error));
                }
                return Ok(pool);
            }
            if same_cow {
                return Err(CtrError::new(
                    EBUSY,
                    c_str!("COW device is in use by another origin"),
                ));
            }
            if same_origin {
                return Err(CtrError::new(
                    EBUSY,
                    c_str!("Origin device is in use with another COW device"),
                ));
            }
            if e.pool.origin.dev_t() == cow.dev_t() || e.pool.cow.dev_t() == origin.dev_t() {
                return Err(CtrError::new(
                    EBUSY,
                    c_str!("Device is in use by another s-snap-origin"),
                ));
            }
        }
        entries.reserve(1, GFP_KERNEL)?;
        let pool =
            Pool::open(origin, cow, chunk_sectors).map_err(|e| open_error(e, store_error))?;
        entries.push(
            Entry {
                pool: pool.clone(),
                origins: 1,
                snapshots: 0,
            },
            GFP_KERNEL,
        )?;
        Ok(pool)
    }

    /// Finds the pool of the origin target loaded on `origin`, for a snapshot target.
    pub(crate) fn attach_snapshot(&self, origin: &DmDev) -> Option<Arc<Pool>> {
        let mut entries = self.entries.lock();
        let e = entries
            .iter_mut()
            .find(|e| e.origins > 0 && e.pool.origin.dev_t() == origin.dev_t())?;
        e.snapshots += 1;
        Some(e.pool.clone())
    }

    fn detach(&self, pool: &Pool, origin: bool) {
        let mut entries = self.entries.lock();
        let Some(i) = entries
            .iter()
            .position(|e| e.pool.cow.dev_t() == pool.cow.dev_t())
        else {
            return;
        };
        let e = &mut entries[i];
        if origin {
            e.origins = e.origins.saturating_sub(1);
        } else {
            e.snapshots = e.snapshots.saturating_sub(1);
        }
        if e.origins == 0 && e.snapshots == 0 {
            entries.swap_remove(i);
        }
    }

    /// An origin target of `pool` went away.
    pub(crate) fn detach_origin(&self, pool: &Pool) {
        self.detach(pool, true);
    }

    /// A snapshot target of `pool` went away.
    pub(crate) fn detach_snapshot(&self, pool: &Pool) {
        self.detach(pool, false);
    }
}
