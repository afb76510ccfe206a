// SPDX-License-Identifier: GPL-2.0

//! Rust device-mapper linear target sample.
//!
//! The `rust-linear` target maps a linear range of a device, like the C `linear` target
//! (`drivers/md/dm-linear.c`), with the same table syntax: `<dev_path> <offset>`.

use kernel::block::bio::Sector;
use kernel::device_mapper::{
    CtrError, CtrResultExt, DeviceIterator, DmBio, DmDev, MapResult, StatusFlags, StatusType,
    StatusWriter, Target, TargetCtx, TargetOperations,
};
use kernel::prelude::*;
use kernel::{c_str, str::CStr};

use core::fmt::Write;
use core::ops::ControlFlow;

const NAME: &CStr = c_str!("rust-linear");
const VERSION: [u32; 3] = [1, 0, 0];

kernel::module_dm_targets! {
    targets: [{ type: Linear, name: NAME, version: VERSION }],
    name: "rust_dm_linear",
    author: "Rust for Linux Contributors",
    description: "Rust device-mapper linear target sample",
    license: "GPL",
}

/// One `rust-linear` target: the device and the sector of it where the target starts.
struct Linear {
    dev: DmDev,
    start: Sector,
}

impl Linear {
    fn map_sector(&self, target: &Target, sector: Sector) -> Sector {
        self.start + target.offset(sector)
    }
}

/// Parses an unsigned decimal sector number.
fn parse_sector(arg: &CStr) -> Option<Sector> {
    arg.to_str().ok()?.parse::<Sector>().ok()
}

#[vtable]
impl TargetOperations for Linear {
    type Context = ();
    type PerIo = ();

    fn ctr(t: &mut TargetCtx<'_, Self>, args: &[&CStr]) -> Result<Pin<KBox<Self>>, CtrError> {
        let [path, offset] = args else {
            return Err(CtrError::new(EINVAL, c_str!("Invalid argument count")));
        };
        let start =
            parse_sector(offset).ok_or(CtrError::new(EINVAL, c_str!("Invalid device sector")))?;
        let dev = t.get_device(path).ctr_err(c_str!("Device lookup failed"))?;

        t.set_num_flush_bios(1);
        t.set_num_discard_bios(1);
        t.set_num_secure_erase_bios(1);
        t.set_num_write_zeroes_bios(1);
        t.set_flush_bypasses_map(true);

        KBox::pin(Linear { dev, start }, GFP_KERNEL)
            .ctr_err(c_str!("Cannot allocate linear context"))
    }

    fn map(this: Pin<&Self>, target: &Target, bio: DmBio<Self>) -> MapResult<Self> {
        bio.remap(this.dev.bdev(), this.map_sector(target, bio.sector()));
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
            StatusType::Info => Ok(()),
            StatusType::Table => write!(out, "{} {}", this.dev, this.start),
            StatusType::Ima => write!(
                out,
                "target_name={},target_version={}.{}.{},device_name={},start={};",
                NAME, VERSION[0], VERSION[1], VERSION[2], this.dev, this.start
            ),
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
