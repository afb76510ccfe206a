// SPDX-License-Identifier: GPL-2.0

//! The `s-snap-origin` target: `<origin dev> <COW dev> S <chunk size> [<#feature args>
//! <feature arg>...]`; the feature arguments are `low_water <free chunks>` and
//! `cow_full_policy <error|drop>`.
//!
//! Maps the origin device one to one. Reads pass straight through, and so do writes to chunks
//! that no snapshot shares any more; other writes and flushes go to the pool's worker, which
//! preserves what the snapshots still share before the write reaches the origin. Snapshots are
//! created and deleted with `dmsetup message`.

use crate::pool::{DeleteError, OriginIo, Pool, RollbackError};
use crate::store::{self, CowFullPolicy};
use crate::{parse_u32, parse_u64, Registry};
use core::fmt::Write;
use core::ops::ControlFlow;
use kernel::{
    block::bio::SECTOR_SHIFT,
    c_str,
    device_mapper::{
        events::TableEvents, CtrError, CtrResultExt, DeviceIterator, DmBio, DmDev, EndIoResult,
        MapResult, QueueLimits, StatusFlags, StatusType, StatusWriter, Target, TargetBio,
        TargetCtx, TargetOperations,
    },
    prelude::*,
    str::CStr,
    sync::Arc,
};

/// An `s-snap-origin` target.
pub(crate) struct OriginTarget {
    registry: Arc<Registry>,
    pool: Arc<Pool>,
    origin: DmDev,
    cow: DmDev,
    features: Features,
    /// This target's table, for the pool's events once the table is live.
    events: Arc<TableEvents>,
}

/// The optional feature arguments after the chunk size.
#[derive(Clone, Copy, Default)]
struct Features {
    /// `low_water <free chunks>`: a dm event when free space falls to this.
    low_water: Option<u64>,
    /// `cow_full_policy <error|drop>`: set on the COW device when the table becomes live.
    cow_full_policy: Option<CowFullPolicy>,
}

/// The word of a COW-full policy in tables and messages.
fn policy_name(policy: CowFullPolicy) -> &'static str {
    match policy {
        CowFullPolicy::Error => "error",
        CowFullPolicy::Drop => "drop",
    }
}

/// A COW-full policy from its word.
fn parse_policy(word: &[u8]) -> Option<CowFullPolicy> {
    match word {
        b"error" => Some(CowFullPolicy::Error),
        b"drop" => Some(CowFullPolicy::Drop),
        _ => None,
    }
}

impl Features {
    /// Parses `[<#feature args> <feature arg>...]`.
    fn parse(args: &[&CStr]) -> Result<Self, CtrError> {
        let mut features = Features::default();
        let Some((count, args)) = args.split_first() else {
            return Ok(features);
        };
        let count = count.to_str().ok().and_then(parse_u32);
        if count.map(|c| c as usize) != Some(args.len()) {
            return Err(CtrError::new(
                EINVAL,
                c_str!("Invalid feature argument count: <#feature args> must count the arguments after it"),
            ));
        }
        let mut rest = args;
        while let Some((name, tail)) = rest.split_first() {
            match name.as_bytes() {
                b"low_water" => {
                    let Some((value, tail)) = tail.split_first() else {
                        return Err(CtrError::new(
                            EINVAL,
                            c_str!("Feature low_water needs a number of free chunks"),
                        ));
                    };
                    let chunks = value
                        .to_str()
                        .ok()
                        .and_then(parse_u64)
                        .filter(|&c| c > 0)
                        .ok_or(CtrError::new(
                            EINVAL,
                            c_str!("Invalid low_water: a number of free chunks from 1"),
                        ))?;
                    if features.low_water.replace(chunks).is_some() {
                        return Err(CtrError::new(
                            EINVAL,
                            c_str!("Feature low_water given twice"),
                        ));
                    }
                    rest = tail;
                }
                b"cow_full_policy" => {
                    let Some((word, tail)) = tail.split_first() else {
                        return Err(CtrError::new(
                            EINVAL,
                            c_str!("Feature cow_full_policy needs error or drop"),
                        ));
                    };
                    let policy = parse_policy(word.as_bytes()).ok_or(CtrError::new(
                        EINVAL,
                        c_str!("Invalid cow_full_policy: error or drop"),
                    ))?;
                    if features.cow_full_policy.replace(policy).is_some() {
                        return Err(CtrError::new(
                            EINVAL,
                            c_str!("Feature cow_full_policy given twice"),
                        ));
                    }
                    rest = tail;
                }
                _ => {
                    return Err(CtrError::new(
                        EINVAL,
                        c_str!("Unknown feature argument (expected: low_water <free chunks> | cow_full_policy <error|drop>)"),
                    ))
                }
            }
        }
        Ok(features)
    }

    /// Writes the feature arguments back as the table line has them (nothing if none).
    fn write(&self, out: &mut StatusWriter<'_>) -> core::fmt::Result {
        let count =
            2 * (u8::from(self.low_water.is_some()) + u8::from(self.cow_full_policy.is_some()));
        if count == 0 {
            return Ok(());
        }
        write!(out, " {count}")?;
        if let Some(chunks) = self.low_water {
            write!(out, " low_water {chunks}")?;
        }
        if let Some(policy) = self.cow_full_policy {
            write!(out, " cow_full_policy {}", policy_name(policy))?;
        }
        Ok(())
    }
}

/// The messages the origin takes, for the log line of an unknown one.
const MESSAGES: &str = "snapshot create <id> | snapshot delete <id> | snapshot rollback <id> | \
                        usage | cow_full_policy <error|drop>";

/// At most this many characters of a bad message word are echoed in the log.
const MAX_ECHO: usize = 24;

fn store_error(e: store::Error) -> CtrError {
    let (code, msg) = match e {
        store::Error::NotAStore => (
            EINVAL,
            c_str!("COW device holds data that is not an exception store: refusing to use it"),
        ),
        store::Error::DeviceTooSmall => (
            EINVAL,
            c_str!("COW device is smaller than the exception store needs (a store never shrinks)"),
        ),
        store::Error::InvalidChunkSize => (
            EINVAL,
            c_str!("Invalid chunk size: a power of two from 8 to 1024 sectors"),
        ),
        store::Error::ChunkSizeMismatch => (
            EINVAL,
            c_str!("Chunk size differs from the one the exception store was created with"),
        ),
        store::Error::Unsupported("superblock feature flags") => (
            EINVAL,
            c_str!("Exception store uses features this module does not know (nothing was written)"),
        ),
        store::Error::Unsupported(_) => (
            EINVAL,
            c_str!("Exception store has an unsupported format version (this module reads version 2 only; nothing was written)"),
        ),
        store::Error::Corrupt { .. } => (
            EIO,
            c_str!("Exception store metadata is corrupt (run s-snap-tool check)"),
        ),
        _ => (EIO, c_str!("Cannot read the exception store")),
    };
    CtrError::new(code, msg)
}

impl OriginTarget {
    /// `snapshot rollback <id>`.
    fn rollback(&self, id: u32) -> Result {
        let dev = self.origin.name();
        self.pool
            .start_rollback(id)
            .map(|_| ())
            .map_err(|e| match e {
                RollbackError::Active => {
                    pr_err!("{}: snapshot {} has an active s-snap device\n", dev, id);
                    EBUSY
                }
                RollbackError::Store(e) => {
                    let (code, why) = match e {
                        store::Error::NotFound => (ENOENT, "does not exist"),
                        store::Error::RollingBack => {
                            (EBUSY, "cannot be rolled back to: a rollback runs")
                        }
                        store::Error::NoSpace => {
                            (ENOSPC, "cannot be rolled back to: no metadata space")
                        }
                        _ => (EIO, "cannot be rolled back to"),
                    };
                    pr_err!("{}: snapshot {} {} ({})\n", dev, id, why, e);
                    code
                }
            })
    }

    fn message_inner(&self, args: &[&CStr], reply: &mut StatusWriter<'_>) -> Result {
        let dev = self.origin.name();
        let words: KVec<&str> = {
            let mut v = KVec::with_capacity(args.len(), GFP_KERNEL)?;
            for a in args {
                let Ok(word) = a.to_str() else {
                    pr_err!("{}: message is not valid UTF-8 text\n", dev);
                    return Err(EINVAL);
                };
                v.push(word, GFP_KERNEL)?;
            }
            v
        };
        match words.as_slice() {
            ["snapshot", op @ ("create" | "delete" | "rollback"), id] => {
                let Some(id) = parse_u32(id) else {
                    // A log record has room for a short echo only, and then the reason.
                    let more = if id.chars().nth(MAX_ECHO).is_some() {
                        "..."
                    } else {
                        ""
                    };
                    pr_err!(
                        "{}: invalid snapshot id '{:.*}{}'\n",
                        dev,
                        MAX_ECHO,
                        id,
                        more
                    );
                    return Err(EINVAL);
                };
                if *op == "rollback" {
                    self.rollback(id)
                } else if *op == "create" {
                    self.pool.create_snapshot(id).map_err(|e| {
                        let (code, why) = match e {
                            store::Error::Exists => (EEXIST, "already exists"),
                            store::Error::RollingBack => {
                                (EBUSY, "cannot be created while a rollback runs")
                            }
                            store::Error::NoSpace | store::Error::Limit(_) => {
                                (ENOSPC, "does not fit in the exception store")
                            }
                            _ => (EIO, "cannot be created"),
                        };
                        pr_err!("{}: snapshot {} {} ({})\n", dev, id, why, e);
                        code
                    })
                } else {
                    self.pool.delete_snapshot(id).map_err(|e| match e {
                        DeleteError::Active => {
                            pr_err!("{}: snapshot {} has an active s-snap device\n", dev, id);
                            EBUSY
                        }
                        DeleteError::Store(e) => {
                            let (code, why) = match e {
                                store::Error::NotFound => (ENOENT, "does not exist"),
                                store::Error::NoSpace => {
                                    (ENOSPC, "cannot be deleted: no metadata space")
                                }
                                store::Error::RollingBack => {
                                    (EBUSY, "cannot be deleted: the origin is rolled back to it")
                                }
                                _ => (EIO, "cannot be deleted"),
                            };
                            pr_err!("{}: snapshot {} {} ({})\n", dev, id, why, e);
                            code
                        }
                    })
                }
            }
            ["usage"] => self.pool.write_usage(reply).map_err(|_| ENOSPC),
            ["cow_full_policy", word] => {
                let Some(policy) = parse_policy(word.as_bytes()) else {
                    pr_err!(
                        "{}: invalid COW-full policy '{:.*}' (expected: error | drop)\n",
                        dev,
                        MAX_ECHO,
                        word
                    );
                    return Err(EINVAL);
                };
                self.pool.set_cow_full_policy(policy).map_err(|e| {
                    pr_err!("{}: COW-full policy not set ({})\n", dev, e);
                    match e {
                        store::Error::NoSpace => ENOSPC,
                        _ => EIO,
                    }
                })
            }
            _ => {
                pr_err!("{}: unknown message (expected: {})\n", dev, MESSAGES);
                Err(EINVAL)
            }
        }
    }
}

#[vtable]
impl TargetOperations for OriginTarget {
    type Context = Registry;
    type PerIo = OriginIo;

    fn ctr(t: &mut TargetCtx<'_, Self>, args: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
        let [origin_path, cow_path, store_type, chunk, feature_args @ ..] = args else {
            return Err(CtrError::new(
                EINVAL,
                c_str!("Invalid argument count: <origin dev> <COW dev> S <chunk size> [<#feature args> <feature arg>...]"),
            ));
        };
        if store_type.as_bytes() != b"S" {
            return Err(CtrError::new(
                EINVAL,
                c_str!("Unsupported exception store type: only S (shared) is supported"),
            ));
        }
        let chunk_sectors = chunk
            .to_str()
            .ok()
            .and_then(parse_u32)
            .filter(|&c| {
                c.is_power_of_two()
                    && (store::MIN_CHUNK_SECTORS..=store::MAX_CHUNK_SECTORS).contains(&c)
            })
            .ok_or(CtrError::new(
                EINVAL,
                c_str!("Invalid chunk size: a power of two from 8 to 1024 sectors"),
            ))?;
        let features = Features::parse(feature_args)?;
        let events = t
            .table_events()
            .ctr_err(c_str!("Cannot allocate the table's event handle"))?;
        let origin = t
            .get_device(origin_path)
            .ctr_err(c_str!("Cannot get origin device"))?;
        let cow = t
            .get_device(cow_path)
            .ctr_err(c_str!("Cannot get COW device"))?;
        if origin.dev_t() == cow.dev_t() {
            return Err(CtrError::new(
                EINVAL,
                c_str!("Origin and COW must be different devices"),
            ));
        }
        if t.len() > origin.nr_sectors() {
            return Err(CtrError::new(
                EINVAL,
                c_str!("Target is larger than the origin device"),
            ));
        }
        // Origin chunk numbers take 6 bytes in the store (1 EiB with 4 KiB chunks).
        if origin.nr_sectors().div_ceil(u64::from(chunk_sectors)) > store::MAX_ORIGIN_CHUNKS {
            return Err(CtrError::new(
                EINVAL,
                c_str!("Origin device has more chunks than the exception store can number"),
            ));
        }
        t.set_max_io_len(chunk_sectors.into())
            .ctr_err(c_str!("Cannot set the chunk size as maximum I/O size"))?;
        // Discards come one chunk at a time (io_hints sets the chunk as their maximum size).
        t.set_num_discard_bios(1);
        t.set_max_discard_granularity(true);
        t.set_num_flush_bios(1);
        let registry = t.context().clone();
        let pool = registry.attach_origin(&origin, &cow, chunk_sectors, store_error)?;
        KBox::pin(
            Self {
                registry: registry.clone(),
                pool: pool.clone(),
                origin,
                cow,
                features,
                events,
            },
            GFP_KERNEL,
        )
        .map_err(|_| {
            registry.detach_origin(&pool);
            CtrError::new(ENOMEM, c_str!("Cannot allocate target"))
        })
    }

    fn map(this: Pin<&Self>, t: &Target, mut bio: DmBio<Self>) -> MapResult<Self> {
        bio.remap(this.pool.origin.bdev(), t.offset(bio.sector()));
        // While a rollback runs, reads too: a chunk may read from where the snapshot's data is.
        if this.pool.rolling_back()
            || ((bio.is_write() || bio.is_flush()) && !this.pool.origin_write_unshared(&mut bio))
        {
            this.pool.defer_origin(bio);
            MapResult::Submitted
        } else {
            MapResult::Remapped(bio)
        }
    }

    fn end_io(
        this: Pin<&Self>,
        _t: &Target,
        bio: &TargetBio<Self>,
        _status: &mut Result,
    ) -> EndIoResult {
        if bio.per_io().counted {
            this.pool.origin_write_done();
        }
        EndIoResult::Done
    }

    fn io_hints(this: Pin<&Self>, _t: &Target, limits: &mut QueueLimits) {
        // Discards pass down to the origin, within its own limits, one chunk at a time: the
        // worker checks per chunk that no snapshot shares it.
        // The maximum is a power of two (device-mapper splits at multiples of it), so that
        // no discard crosses a chunk boundary.
        let chunk_bytes = this.pool.chunk_sectors << SECTOR_SHIFT;
        let max = limits.max_hw_discard_sectors().min(this.pool.chunk_sectors);
        if max != 0 {
            limits.set_max_hw_discard_sectors(1 << max.ilog2());
            limits.set_discard_granularity(limits.discard_granularity().max(chunk_bytes));
        }
    }

    fn status(
        this: Pin<&Self>,
        _t: &Target,
        kind: StatusType,
        _flags: StatusFlags,
        out: &mut StatusWriter<'_>,
    ) -> core::fmt::Result {
        match kind {
            StatusType::Info => this.pool.write_snapshot_list(out),
            StatusType::Table => {
                write!(
                    out,
                    "{} {} S {}",
                    this.origin.name(),
                    this.cow.name(),
                    this.pool.chunk_sectors
                )?;
                this.features.write(out)
            }
            StatusType::Ima => Ok(()),
        }
    }

    fn message(
        this: Pin<&Self>,
        _t: &Target,
        args: &[&CStr],
        reply: &mut StatusWriter<'_>,
    ) -> Result {
        this.message_inner(args, reply)
    }

    fn postsuspend(this: Pin<&Self>, _t: &Target) {
        // Whatever was written before the suspend is durable once it completes.
        this.pool.suspend();
    }

    fn resume(this: Pin<&Self>, _t: &Target) {
        // This table is live now: the pool's events go to it.
        this.pool
            .bind_events(this.events.clone(), this.features.low_water.unwrap_or(0));
        // A COW device that grew since the store was opened (or formatted) is used now.
        this.pool.grow_into_cow_device();
        if let Some(policy) = this.features.cow_full_policy {
            if let Err(e) = this.pool.set_cow_full_policy(policy) {
                pr_err!(
                    "{}: COW-full policy {} not set ({})\n",
                    this.origin.name(),
                    policy_name(policy),
                    e
                );
            }
        }
        this.pool.resume();
    }

    fn iterate_devices(
        this: Pin<&Self>,
        t: &Target,
        devices: &mut DeviceIterator<'_>,
    ) -> ControlFlow<()> {
        devices.visit(&this.origin, 0, t.len())
    }
}

impl Drop for OriginTarget {
    fn drop(&mut self) {
        self.pool.sync();
        self.pool.teardown();
        self.registry.detach_origin(&self.pool);
    }
}
