// SPDX-License-Identifier: GPL-2.0

//! CRC-32C (Castagnoli), as used by ext4, btrfs and the device-mapper persistent data formats.
//!
//! The kernel's `crc32c()` uses the CPU's CRC32 instruction where there is one.
//!
//! C header: [`include/linux/crc32c.h`](srctree/include/linux/crc32c.h)

use crate::bindings;

/// Updates the CRC-32C `crc` with `data`, without pre- or post-inversion (C `crc32c()`).
///
/// The standard CRC-32C of `data` is `!crc32c(!0, data)`.
///
/// Users must select `LIBCRC32C` in Kconfig: `crc32c()` may live in a module
/// (`libcrc32c.ko`), so this function is `#[inline]` and only instantiated in the module that
/// calls it, which then depends on `libcrc32c`.
///
/// # Examples
///
/// ```
/// use kernel::crc32c::crc32c;
///
/// assert_eq!(!crc32c(!0, b"123456789"), 0xe306_9283);
/// ```
#[inline]
pub fn crc32c(crc: u32, data: &[u8]) -> u32 {
    let mut crc = crc;
    // `crc32c()` takes the length as `unsigned int`: feed larger slices in parts.
    for part in data.chunks(u32::MAX as usize) {
        // CAST: `chunks()` yields at most `u32::MAX` bytes.
        let len = part.len() as u32;
        // SAFETY: `part` is valid for reads of `len` bytes.
        crc = unsafe { bindings::crc32c(crc, part.as_ptr().cast(), len) };
    }
    crc
}
