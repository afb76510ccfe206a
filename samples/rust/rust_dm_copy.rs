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
//!   hexadecimal bytes 0 to 7 and the sum of all its bytes.
//!
//! Counters live in a context shared by all `rust-copy` targets of the module.

use kernel::block::bio::Sector;
use kernel::device_mapper::{
    bufio, kcopyd, CtrError, CtrResultExt, DeviceIterator, DmBio, DmDev, MapResult, Registration,
    StatusFlags, StatusType, StatusWriter, Target, TargetCtx, TargetOperations,
};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::{c_str, str::CStr};

use core::fmt::Write;
use core::ops::ControlFlow;
use core::sync::atomic::{AtomicU64, Ordering};

const BLOCK_SIZE: u32 = 4096;
const BLOCK_SECTORS: Sector = (BLOCK_SIZE / 512) as Sector;

module! {
    type: RustDmCopyModule,
    name: "rust_dm_copy",
    author: "Rust for Linux Contributors",
    description: "Rust device-mapper sample using dm-bufio and dm-kcopyd",
    license: "GPL",
}

/// State shared by all `rust-copy` targets.
struct Counters {
    copies: AtomicU64,
    errors: AtomicU64,
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
        let kcopyd = kcopyd::Client::new().ctr_err(c_str!("Cannot create kcopyd client"))?;
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
                "copies={} errors={}",
                this.counters.copies.load(Ordering::Relaxed),
                this.counters.errors.load(Ordering::Relaxed)
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
            b"fill" => {
                let [block, byte] = args else {
                    return Err(EINVAL);
                };
                let block = this.block(target, block)?;
                let byte = u8::try_from(parse(byte)?)?;
                let client = &this.bufio;
                {
                    let mut buf = client.new_buffer(block)?;
                    buf.fill(byte);
                    buf.mark_dirty();
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

struct RustDmCopyModule {
    _reg: Pin<KBox<Registration<CopyTarget>>>,
}

impl kernel::Module for RustDmCopyModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let counters = Arc::new(
            Counters {
                copies: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            },
            GFP_KERNEL,
        )?;
        let reg = KBox::pin_init(
            Registration::new(c_str!("rust-copy"), [1, 0, 0], module, counters),
            GFP_KERNEL,
        )?;
        Ok(Self { _reg: reg })
    }
}
