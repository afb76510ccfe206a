// SPDX-License-Identifier: GPL-2.0

//! What the guest programs share: `O_DIRECT` block buffers, tagged block
//! contents and `dmsetup`.

use anyhow::{bail, ensure, Context, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

/// The I/O unit of the guest programs: 4 KiB.
pub const BLOCK: usize = 4096;

/// A buffer of 4 KiB blocks aligned for `O_DIRECT` (one block unless made
/// with [`AlignedBlock::with_blocks`]).
pub struct AlignedBlock {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBlock {
    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, BLOCK).expect("valid layout")
    }

    /// A zeroed buffer of one block.
    pub fn new() -> Self {
        Self::with_blocks(1)
    }

    /// A zeroed buffer of `blocks` blocks (at least one).
    pub fn with_blocks(blocks: usize) -> Self {
        let len = blocks.max(1) * BLOCK;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(Self::layout(len)) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, len }
    }

    /// The buffer's bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_blocks` with the same layout.
        unsafe { dealloc(self.ptr, Self::layout(self.len)) }
    }
}

impl Default for AlignedBlock {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the buffer is owned memory, like a `Box<[u8]>`.
unsafe impl Send for AlignedBlock {}

/// The content a block with `tag` at `index` carries (tag 0: all zeroes): the
/// tag and the index in its first 16 bytes, then a pattern derived from both,
/// so a block in the wrong place or from the wrong write is recognised.
pub fn fill_block(buf: &mut [u8], tag: u64, index: u64) {
    if tag == 0 {
        buf.fill(0);
        return;
    }
    let mut state = tag ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for word in buf.chunks_exact_mut(8) {
        // xorshift64: cheap, and different for every (tag, block).
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    buf[..8].copy_from_slice(&tag.to_le_bytes());
    buf[8..16].copy_from_slice(&index.to_le_bytes());
}

/// Opens a block device for `O_DIRECT` reads and writes.
pub fn open_direct(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {path}"))
}

/// Runs `dmsetup` with `args`; its standard output, or an error with its
/// standard error.
pub fn dmsetup(args: &[&str]) -> Result<String> {
    let out = Command::new("dmsetup")
        .args(args)
        .output()
        .context("run dmsetup")?;
    if !out.status.success() {
        bail!(
            "dmsetup {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The size of a block device in 512-byte sectors.
pub fn sectors(path: &str) -> Result<u64> {
    let out = Command::new("blockdev").args(["--getsz", path]).output()?;
    ensure!(out.status.success(), "blockdev --getsz {path} failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
