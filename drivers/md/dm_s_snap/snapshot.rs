// SPDX-License-Identifier: GPL-2.0

//! The `s-snap` target: `<origin dev> <snapshot id>`.
//!
//! A writable view of one snapshot of an origin whose `s-snap-origin` target is loaded. Every
//! bio goes to the pool's worker, which finds where the snapshot's data of the chunk lives
//! (a COW chunk or the origin) and, for a write, gives the snapshot a chunk of its own first.

use crate::pool::{ActivateError, Pool, SnapIo};
use crate::store::{self, SnapshotRef};
use crate::{parse_u32, Registry};
use core::fmt::Write;
use core::ops::ControlFlow;
use kernel::{
    block::bio::SECTOR_SHIFT,
    c_str,
    device_mapper::{
        CtrError, CtrResultExt, DeviceIterator, DmBio, DmDev, EndIoResult, MapResult, QueueLimits,
        StatusFlags, StatusType, StatusWriter, Target, TargetBio, TargetCtx, TargetOperations,
    },
    prelude::*,
    str::CStr,
    sync::Arc,
};

/// An `s-snap` target.
pub(crate) struct SnapshotTarget {
    registry: Arc<Registry>,
    pool: Arc<Pool>,
    snap: SnapshotRef,
    origin: DmDev,
    // Holds the COW device open for as long as the snapshot is active, and makes it show in
    // `dmsetup deps`.
    cow: DmDev,
}

#[vtable]
impl TargetOperations for SnapshotTarget {
    type Context = Registry;
    type PerIo = SnapIo;

    fn ctr(t: &mut TargetCtx<'_, Self>, args: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
        let [origin_path, id] = args else {
            return Err(CtrError::new(
                EINVAL,
                c_str!("Invalid argument count: <origin dev> <snapshot id>"),
            ));
        };
        let id = id
            .to_str()
            .ok()
            .and_then(parse_u32)
            .ok_or(CtrError::new(EINVAL, c_str!("Invalid snapshot id")))?;
        let origin = t
            .get_device(origin_path)
            .ctr_err(c_str!("Cannot get origin device"))?;
        if t.len() > origin.nr_sectors() {
            return Err(CtrError::new(
                EINVAL,
                c_str!("Target is larger than the origin device"),
            ));
        }
        let registry = t.context().clone();
        let pool = registry.attach_snapshot(&origin).ok_or(CtrError::new(
            ENODEV,
            c_str!("No s-snap-origin target is loaded on this origin device"),
        ))?;
        let setup = (|| {
            let cow = t
                .get_device(pool.cow.name())
                .ctr_err(c_str!("Cannot get the origin's COW device"))?;
            t.set_max_io_len(pool.chunk_sectors.into())
                .ctr_err(c_str!("Cannot set the chunk size as maximum I/O size"))?;
            // Discards come one chunk at a time (io_hints sets the chunk as their maximum
            // size); they free the snapshot's own chunks and need no support below.
            t.set_num_discard_bios(1);
            t.set_discards_supported(true);
            t.set_max_discard_granularity(true);
            t.set_num_flush_bios(1);
            let snap = pool.activate(id).map_err(|e| match e {
                ActivateError::NoSuchSnapshot => {
                    CtrError::new(ENOENT, c_str!("No snapshot with this id exists"))
                }
                ActivateError::Dropped => CtrError::new(
                    EIO,
                    c_str!("The snapshot was dropped when the COW device was full: delete it"),
                ),
                ActivateError::AlreadyActive => CtrError::new(
                    EBUSY,
                    c_str!("The snapshot already has an active s-snap device"),
                ),
                ActivateError::RollingBack => CtrError::new(
                    EBUSY,
                    c_str!("The origin is being rolled back to this snapshot"),
                ),
                ActivateError::NoMemory => CtrError::from(ENOMEM),
                ActivateError::Store(store::Error::Corrupt { .. }) => {
                    CtrError::new(EIO, c_str!("Exception store metadata is corrupt"))
                }
                ActivateError::Store(_) => {
                    CtrError::new(EIO, c_str!("Cannot read the exception store"))
                }
            })?;
            Ok((cow, snap))
        })();
        let (cow, snap) = match setup {
            Ok(v) => v,
            Err(e) => {
                registry.detach_snapshot(&pool);
                return Err(e);
            }
        };
        KBox::pin(
            Self {
                registry: registry.clone(),
                pool: pool.clone(),
                snap,
                origin,
                cow,
            },
            GFP_KERNEL,
        )
        .map_err(|_| {
            pool.deactivate(id);
            registry.detach_snapshot(&pool);
            CtrError::new(ENOMEM, c_str!("Cannot allocate target"))
        })
    }

    fn map(this: Pin<&Self>, t: &Target, mut bio: DmBio<Self>) -> MapResult<Self> {
        bio.set_sector(t.offset(bio.sector()));
        bio.per_io_mut().snap = Some(this.snap);
        if this.pool.snap_read_cached(&mut bio, this.snap) {
            return MapResult::Remapped(bio);
        }
        this.pool.defer_snap(bio);
        MapResult::Submitted
    }

    fn end_io(
        this: Pin<&Self>,
        _t: &Target,
        bio: &TargetBio<Self>,
        status: &mut Result,
    ) -> EndIoResult {
        let io = bio.per_io();
        this.pool.snap_read_done(io.read_bucket);
        this.pool.snap_write_done(io.overwrite_slot, status.is_ok());
        this.pool.snap_direct_write_done(io.direct_write_bucket);
        EndIoResult::Done
    }

    fn status(
        this: Pin<&Self>,
        _t: &Target,
        kind: StatusType,
        _flags: StatusFlags,
        out: &mut StatusWriter<'_>,
    ) -> core::fmt::Result {
        match kind {
            StatusType::Info => out.write_str("Unknown"),
            StatusType::Table => write!(out, "{} {}", this.origin.name(), this.snap.id()),
            StatusType::Ima => Ok(()),
        }
    }

    fn io_hints(this: Pin<&Self>, _t: &Target, limits: &mut QueueLimits) {
        // A discard frees the snapshot's own copy of each chunk it covers entirely.
        limits.set_max_hw_discard_sectors(this.pool.chunk_sectors);
        limits.set_discard_granularity(this.pool.chunk_sectors << SECTOR_SHIFT);
    }

    fn postsuspend(this: Pin<&Self>, _t: &Target) {
        this.pool.sync();
    }

    fn iterate_devices(
        this: Pin<&Self>,
        t: &Target,
        devices: &mut DeviceIterator<'_>,
    ) -> ControlFlow<()> {
        devices.visit(&this.origin, 0, t.len())?;
        devices.visit(&this.cow, 0, this.cow.nr_sectors())
    }
}

impl Drop for SnapshotTarget {
    fn drop(&mut self) {
        self.pool.sync();
        self.pool.teardown();
        self.pool.deactivate(self.snap.id());
        self.registry.detach_snapshot(&self.pool);
    }
}
