// SPDX-License-Identifier: GPL-2.0

//! What the guest programs share: `O_DIRECT` block buffers, tagged block
//! contents, and the `dmsetup` rig of the origin and snapshot devices.

use anyhow::{bail, ensure, Context, Result};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;

pub mod hostile;

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

// --- Tagged blocks and the dmsetup rig, shared by the model-checked workloads ---

/// The dm name of the origin device.
pub const ORIGIN_NAME: &str = "work";

/// The devices under test, as command line options.
#[derive(clap::Args, Clone)]
pub struct Devices {
    /// Origin block device.
    #[arg(long, default_value = "/dev/vda")]
    pub origin: String,
    /// COW block device.
    #[arg(long, default_value = "/dev/vdb")]
    pub cow: String,
    /// Chunk size in 512-byte sectors.
    #[arg(long, default_value_t = 16)]
    pub chunk_sectors: u32,
}

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

/// The snapshot ids `dmsetup status` of the origin device lists.
pub fn status_snapshot_ids() -> Result<Vec<u32>> {
    // "0 <len> s-snap-origin <count> <id>..." or ": no snapshot".
    let status = dmsetup(&["status", ORIGIN_NAME])?;
    let words: Vec<&str> = status.split_whitespace().collect();
    if words.get(3) == Some(&":") {
        return Ok(Vec::new());
    }
    let count: usize = words.get(3).context("short status")?.parse()?;
    let ids = words[4..]
        .iter()
        .map(|w| w.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()?;
    ensure!(ids.len() == count, "status count {count} but ids {ids:?}");
    Ok(ids)
}

/// The loaded origin target and the snapshot devices activated on it.
pub struct Rig {
    pub devices: Devices,
    pub size: u64,
    pub active: BTreeMap<u32, String>,
    /// Blocks at and above this index are never written by the workload.
    pub written: u64,
}

impl Rig {
    pub fn load_origin(devices: &Devices) -> Result<Self> {
        let size = sectors(&devices.origin)?;
        let table = format!(
            "0 {size} s-snap-origin {} {} S {}",
            devices.origin, devices.cow, devices.chunk_sectors
        );
        dmsetup(&["create", ORIGIN_NAME, "--table", &table])?;
        Ok(Self {
            devices: devices.clone(),
            size,
            active: BTreeMap::new(),
            written: u64::MAX,
        })
    }

    pub fn origin_path() -> String {
        format!("/dev/mapper/{ORIGIN_NAME}")
    }

    pub fn snapshot_ids(&self) -> Result<Vec<u32>> {
        status_snapshot_ids()
    }

    pub fn message(&self, text: &str) -> Result<String> {
        let mut args = vec!["message", ORIGIN_NAME, "0"];
        args.extend(text.split_whitespace());
        dmsetup(&args)
    }

    pub fn activate(&mut self, id: u32) -> Result<String> {
        let name = format!("snap{id}");
        let table = format!("0 {} s-snap {} {id}", self.size, self.devices.origin);
        dmsetup(&["create", &name, "--table", &table])?;
        let path = format!("/dev/mapper/{name}");
        self.active.insert(id, path.clone());
        Ok(path)
    }

    pub fn deactivate(&mut self, id: u32) -> Result<()> {
        if self.active.remove(&id).is_some() {
            dmsetup(&["remove", &format!("snap{id}")])?;
        }
        Ok(())
    }

    pub fn remove_all(&mut self) -> Result<()> {
        for id in self.active.keys().copied().collect::<Vec<_>>() {
            self.deactivate(id)?;
        }
        dmsetup(&["remove", ORIGIN_NAME])?;
        Ok(())
    }
}

/// The tag of a block read back at `index`: `Some(tag)` if it holds exactly what
/// [`fill_block`] writes for that tag and index (`Some(0)`: all zeroes), `None` if it
/// holds anything else.  `scratch` is a block-sized buffer.
pub fn block_tag(block: &[u8], index: u64, scratch: &mut [u8]) -> Option<u64> {
    let tag = u64::from_le_bytes(block[..8].try_into().ok()?);
    fill_block(scratch, tag, index);
    (block == scratch).then_some(tag)
}
