// SPDX-License-Identifier: GPL-2.0

//! Rust device-mapper sample using dm-bufio and dm-kcopyd.
//!
//! The `rust-copy` target maps a linear range of a device like `rust-linear` (table:
//! `<dev_path> <offset>`) and answers messages that work on that range of the device from
//! process context:
//!
//! - `copy <from> <to> <count>`: copies `count` sectors with dm-kcopyd and waits for the copy;
//! - `copy-async <from> <to> <count>`: starts such a copy; its completion is counted and shown by
//!   `dmsetup status` (`copies=<done> errors=<failed>`);
//! - `fill <block> <byte>`: overwrites 4 KiB block `block` with `byte` through dm-bufio and
//!   writes it back;
//! - `read <block>`: reads 4 KiB block `block` through dm-bufio and replies with the
//!   hexadecimal bytes 0 to 7 and the sum of all its bytes;
//! - `copy-lengths <from> <to> <from count> <to count>`: asks for a copy whose source and
//!   destination differ in length (or are empty), which the kcopyd abstraction must refuse;
//! - `copy-last-ref <from> <to> <count>`: copies with a kcopyd client of its own whose last
//!   reference is dropped by the copy's completion, in kcopyd's worker;
//! - `queue-last-ref`: runs a work item that drops the last reference to its own work queue.
//!
//! The last two are counted in `dmsetup status` as `released=<n>`: they show that a kcopyd
//! client and a work queue may be dropped where destroying them at once would wait for itself.
//!
//! Counters live in a context shared by all `rust-copy` targets of the module.

use kernel::block::bio::Sector;
use kernel::device_mapper::{
    bufio, kcopyd, CtrError, CtrResultExt, DeviceIterator, DmBio, DmDev, MapResult, StatusFlags,
    StatusType, StatusWriter, Target, TargetCtx, TargetOperations,
};
use kernel::prelude::*;
use kernel::sync::{Arc, CondVar, SpinLock};
use kernel::workqueue::{impl_has_work, new_work, OwnedQueue, Work, WorkItem};
use kernel::{c_str, new_condvar, new_spinlock, str::CStr};

use core::fmt::Write;
use core::ops::ControlFlow;
use core::sync::atomic::{AtomicU64, Ordering};

const BLOCK_SIZE: u32 = 4096;
const BLOCK_SECTORS: Sector = (BLOCK_SIZE / 512) as Sector;

kernel::module_dm_targets! {
    targets: [{ type: CopyTarget, name: c_str!("rust-copy"), version: [1, 0, 0] }],
    context: init!(Counters {
        copies: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        released: AtomicU64::new(0),
    }),
    name: "rust_dm_copy",
    author: "Rust for Linux Contributors",
    description: "Rust device-mapper sample using dm-bufio and dm-kcopyd",
    license: "GPL",
}

/// State shared by all `rust-copy` targets.
struct Counters {
    copies: AtomicU64,
    errors: AtomicU64,
    /// Kcopyd clients and work queues dropped by their own completions or work items.
    released: AtomicU64,
}

/// Makes sure that a completion or work item holds the last reference to something: it waits
/// until the message handler has dropped its own.
#[pin_data]
struct Handoff {
    #[pin]
    released: SpinLock<bool>,
    #[pin]
    cond: CondVar,
}

impl Handoff {
    fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                released <- new_spinlock!(false, "rust_dm_copy::Handoff::released"),
                cond <- new_condvar!("rust_dm_copy::Handoff::cond"),
            }),
            GFP_KERNEL,
        )
    }

    fn release(&self) {
        *self.released.lock() = true;
        self.cond.notify_all();
    }

    fn wait(&self) {
        let mut released = self.released.lock();
        while !*released {
            self.cond.wait(&mut released);
        }
    }
}

/// A work queue and a work item queued on it, for `queue-last-ref`.
#[pin_data]
struct QueueOwner {
    wq: OwnedQueue,
    handoff: Arc<Handoff>,
    counters: Arc<Counters>,
    #[pin]
    work: Work<QueueOwner>,
}

impl_has_work! {
    impl HasWork<Self> for QueueOwner { self.work }
}

impl WorkItem for QueueOwner {
    type Pointer = Arc<QueueOwner>;

    fn run(this: Arc<QueueOwner>) {
        this.handoff.wait();
        let counters = this.counters.clone();
        // The last reference: this drops the queue this work item runs on.
        drop(this);
        counters.released.fetch_add(1, Ordering::Relaxed);
    }
}

#[pin_data]
struct CopyTarget {
    dev: DmDev,
    start: Sector,
    counters: Arc<Counters>,
    kcopyd: kcopyd::Client,
    #[pin]
    bufio: bufio::Client,
}

fn parse(arg: &CStr) -> Result<u64> {
    arg.to_str()?.parse::<u64>().map_err(|_| EINVAL)
}

impl CopyTarget {
    /// Returns the region of `count` sectors at `sector` of the target's range of the device.
    fn region(&self, target: &Target, sector: Sector, count: Sector) -> Result<kcopyd::Region<'_>> {
        let end = sector.checked_add(count).ok_or(EINVAL)?;
        if count == 0 || end > target.len() {
            return Err(EINVAL);
        }
        Ok(kcopyd::Region::new(&self.dev, self.start + sector, count))
    }

    fn copy(&self, target: &Target, args: &[&CStr], wait: bool) -> Result {
        let [from, to, count] = args else {
            return Err(EINVAL);
        };
        let count = parse(count)?;
        let from = self.region(target, parse(from)?, count)?;
        let to = [self.region(target, parse(to)?, count)?];
        if wait {
            let r = self.kcopyd.copy_sync(&from, &to);
            let counter = if r.is_ok() {
                &self.counters.copies
            } else {
                &self.counters.errors
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return r;
        }
        let counters = self.counters.clone();
        self.kcopyd.copy(&from, &to, move |result| {
            let counter = if result.is_ok() {
                &counters.copies
            } else {
                &counters.errors
            };
            counter.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// `copy-lengths`: regions of different (or no) lengths, which kcopyd cannot copy.
    fn copy_lengths(&self, target: &Target, args: &[&CStr]) -> Result {
        let [from, to, from_count, to_count] = args else {
            return Err(EINVAL);
        };
        let (from_count, to_count) = (parse(from_count)?, parse(to_count)?);
        let longest = from_count.max(to_count).max(1);
        // Check the range with the longest length, then build the regions as asked.
        let from = self.region(target, parse(from)?, longest)?.sector;
        let to = self.region(target, parse(to)?, longest)?.sector;
        let from = kcopyd::Region::new(&self.dev, from, from_count);
        let to = [kcopyd::Region::new(&self.dev, to, to_count)];
        let counters = self.counters.clone();
        self.kcopyd.copy(&from, &to, move |_| {
            counters.errors.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// `copy-last-ref`: the completion drops the last reference to its own client.
    fn copy_last_ref(&self, target: &Target, args: &[&CStr]) -> Result {
        let [from, to, count] = args else {
            return Err(EINVAL);
        };
        let count = parse(count)?;
        let from = self.region(target, parse(from)?, count)?;
        let to = [self.region(target, parse(to)?, count)?];
        let client = Arc::new(kcopyd::Client::new(&crate::THIS_MODULE)?, GFP_KERNEL)?;
        let handoff = Handoff::new()?;
        let (last, wait, counters) = (client.clone(), handoff.clone(), self.counters.clone());
        client.copy(&from, &to, move |result| {
            wait.wait();
            // Runs in kcopyd's worker, for a job of `last`: destroying the client here at once
            // would wait for this very job.
            drop(last);
            let counter = if result.is_ok() {
                &counters.released
            } else {
                &counters.errors
            };
            counter.fetch_add(1, Ordering::Relaxed);
        })?;
        drop(client);
        handoff.release();
        Ok(())
    }

    /// `queue-last-ref`: a work item drops the last reference to its own queue.
    fn queue_last_ref(&self) -> Result {
        let handoff = Handoff::new()?;
        let wq = OwnedQueue::new(c_str!("rust-dm-copy"), 0, 1, &crate::THIS_MODULE)?;
        let (wait, counters) = (handoff.clone(), self.counters.clone());
        let owner = Arc::pin_init(
            pin_init!(QueueOwner {
                wq,
                handoff: wait,
                counters,
                work <- new_work!("rust_dm_copy::QueueOwner::work"),
            }),
            GFP_KERNEL,
        )?;
        owner.wq.enqueue(owner.clone()).map_err(|_| EBUSY)?;
        drop(owner);
        handoff.release();
        Ok(())
    }

    fn block(&self, target: &Target, arg: &CStr) -> Result<Sector> {
        let block = parse(arg)?;
        // Blocks count from the target's offset on the device, which must be block aligned.
        if self.start % BLOCK_SECTORS != 0 || block >= target.len() / BLOCK_SECTORS {
            return Err(EINVAL);
        }
        Ok(self.start / BLOCK_SECTORS + block)
    }
}

#[vtable]
impl TargetOperations for CopyTarget {
    type Context = Counters;
    type PerIo = ();

    fn ctr(t: &mut TargetCtx<'_, Self>, args: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
        let [path, offset] = args else {
            return Err(CtrError::new(EINVAL, c_str!("Invalid argument count")));
        };
        let start = parse(offset).ctr_err(c_str!("Invalid device sector"))?;
        let dev = t.get_device(path).ctr_err(c_str!("Device lookup failed"))?;
        let kcopyd = kcopyd::Client::new(&crate::THIS_MODULE)
            .ctr_err(c_str!("Cannot create kcopyd client"))?;
        let counters = t.context().clone();
        t.set_num_flush_bios(1);
        let bufio = bufio::Client::new(&dev, BLOCK_SIZE, 1);
        KBox::pin_init(
            try_pin_init!(CopyTarget {
                dev,
                start,
                counters,
                kcopyd,
                bufio <- bufio,
            }? Error),
            GFP_KERNEL,
        )
        .ctr_err(c_str!("Cannot create the bufio client"))
    }

    fn map(this: Pin<&Self>, target: &Target, bio: DmBio<Self>) -> MapResult<Self> {
        bio.remap(this.dev.bdev(), this.start + target.offset(bio.sector()));
        MapResult::Remapped(bio)
    }

    fn status(
        this: Pin<&Self>,
        _target: &Target,
        ty: StatusType,
        _flags: StatusFlags,
        out: &mut StatusWriter<'_>,
    ) -> core::fmt::Result {
        match ty {
            StatusType::Info => write!(
                out,
                "copies={} errors={} released={}",
                this.counters.copies.load(Ordering::Relaxed),
                this.counters.errors.load(Ordering::Relaxed),
                this.counters.released.load(Ordering::Relaxed)
            ),
            StatusType::Table => write!(out, "{} {}", this.dev, this.start),
            StatusType::Ima => Ok(()),
        }
    }

    fn message(
        this: Pin<&Self>,
        target: &Target,
        args: &[&CStr],
        reply: &mut StatusWriter<'_>,
    ) -> Result {
        let Some((cmd, args)) = args.split_first() else {
            return Err(EINVAL);
        };
        match cmd.as_bytes() {
            b"copy" => this.copy(target, args, true),
            b"copy-async" => this.copy(target, args, false),
            b"copy-lengths" => this.copy_lengths(target, args),
            b"copy-last-ref" => this.copy_last_ref(target, args),
            b"queue-last-ref" => this.queue_last_ref(),
            b"fill" => {
                let [block, byte] = args else {
                    return Err(EINVAL);
                };
                let block = this.block(target, block)?;
                let byte = u8::try_from(parse(byte)?)?;
                let client = &this.bufio;
                {
                    let mut buf = client.new_buffer(block)?;
                    // Overwrites the whole block and marks it dirty.
                    buf.fill(0, BLOCK_SIZE as usize, byte)?;
                }
                client.write_dirty_buffers()?;
                client.issue_flush()
            }
            b"read" => {
                let [block] = args else {
                    return Err(EINVAL);
                };
                let block = this.block(target, block)?;
                let buf = this.bufio.read(block)?;
                for b in &buf[..8] {
                    write!(reply, "{:02x}", b)?;
                }
                let sum: u64 = buf.iter().map(|&b| u64::from(b)).sum();
                write!(reply, " {}", sum)?;
                Ok(())
            }
            _ => Err(EINVAL),
        }
    }

    fn iterate_devices(
        this: Pin<&Self>,
        target: &Target,
        devices: &mut DeviceIterator<'_>,
    ) -> ControlFlow<()> {
        devices.visit(&this.dev, this.start, target.len())
    }
}
