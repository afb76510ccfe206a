// SPDX-License-Identifier: GPL-2.0

//! On-disk format: constants, layout, byte access helpers and the
//! superblock. See `Documentation/admin-guide/device-mapper/shared-snapshot.rst`.

use super::error::{Error, Result};
use super::io::BlockIo;

/// Superblock magic ("SSsb" little-endian).
pub(crate) const SB_MAGIC: u32 = u32::from_le_bytes(*b"SSsb");
/// Bitmap block magic.
pub(crate) const BM_MAGIC: u32 = u32::from_le_bytes(*b"SSbm");
/// B+tree node magic.
pub(crate) const NODE_MAGIC: u32 = u32::from_le_bytes(*b"SSbt");
/// Magic of a metadata block released within its own transaction.
pub(crate) const GARBAGE_MAGIC: u32 = u32::from_le_bytes(*b"SSgb");
/// Magic of a journal block.
pub(crate) const JOURNAL_MAGIC: u32 = u32::from_le_bytes(*b"SSjl");
/// Magic of a block of the list of deferred chunk frees (see `Store::free_data`).
pub(crate) const DEFERRED_MAGIC: u32 = u32::from_le_bytes(*b"SSdf");
/// Magic of a journal block still being built (in the staging block, which the cache may
/// write at any time): replay never takes it.
pub(crate) const JOURNAL_OPEN_MAGIC: u32 = u32::from_le_bytes(*b"SSjo");

/// On-disk format version. Version 1 used one metadata block per chunk; a
/// store of another version is refused, never converted or overwritten.
pub(crate) const VERSION: u32 = 2;

/// Size of every metadata block (superblock, bitmap, btree node) and the
/// unit of the space map, whatever the chunk size.
pub(crate) const BLOCK_SIZE: usize = 4096;
/// [`BLOCK_SIZE`] in 512-byte sectors.
pub(crate) const BLOCK_SECTORS: u32 = 8;

/// Common header: crc32c, magic, block number, txid.
pub(crate) const OFF_CRC: usize = 0;
pub(crate) const OFF_MAGIC: usize = 4;
pub(crate) const OFF_BLOCKNR: usize = 8;
pub(crate) const OFF_TXID: usize = 16;
/// Size of the common header plus the type specific header words.
pub(crate) const HDR_SIZE: usize = 32;

/// Superblock fields.
pub(crate) const SB_VERSION: usize = 24;
pub(crate) const SB_CHUNK_SECTORS: usize = 28;
pub(crate) const SB_SEQ: usize = 32;
pub(crate) const SB_NR_CHUNKS: usize = 40;
pub(crate) const SB_RESERVED_TXID: usize = 48;
pub(crate) const SB_LAST_EPOCH: usize = 56;
/// Next block the metadata allocator tries.
pub(crate) const SB_ALLOC_HINT: usize = 64;
pub(crate) const SB_DATA_CHUNKS: usize = 72;
/// Metadata blocks in use, including the fixed area.
pub(crate) const SB_META_BLOCKS: usize = 80;
pub(crate) const SB_SHARED: usize = 88;
pub(crate) const SB_PRIVATE: usize = 96;
pub(crate) const SB_SNAPSHOTS: usize = 104;
pub(crate) const SB_NR_BITMAPS: usize = 112;
/// Feature flags (u32): a store with a flag this version does not know is
/// refused.
pub(crate) const SB_FLAGS: usize = 116;
/// Feature flag: when a copy for an origin write finds no space, the snapshots that need it
/// are dropped and the write goes on (the `drop` COW-full policy).
pub(crate) const SB_FLAG_DROP_WHEN_FULL: u32 = 1 << 0;
/// Feature flag: the snapshot table holds dropped snapshots (entries carrying `DROPPED`),
/// which a module without the policy would take for live ones.
pub(crate) const SB_FLAG_DROPPED: u32 = 1 << 1;
/// Feature flag: the store was grown, and the bitmap blocks from [`SB_FIXED_BITMAPS`] on have
/// their slots in the space they cover (see [`Geometry::bitmap_slot`]).
pub(crate) const SB_FLAG_GROWN: u32 = 1 << 2;
/// Feature flag: private exceptions may hold [`PRIVATE_ZEROES`] (a chunk the snapshot
/// discarded reads as zeroes), which a module without it would take for COW chunk 0. Set by
/// the first such exception and kept.
pub(crate) const SB_FLAG_ZEROES: u32 = 1 << 3;
/// Feature flag: a rollback of the origin to a snapshot is in progress ([`SB_ROLLBACK_EPOCH`]);
/// a module without rollbacks would serve the origin's old data and take the chunks left to
/// roll back for private exceptions of no snapshot.
pub(crate) const SB_FLAG_ROLLBACK: u32 = 1 << 4;
/// Feature flag: the store has a metadata journal ([`SB_JOURNAL_START`], [`SB_JOURNAL_BLOCKS`]):
/// a commit may be a journal block beside the superblock's state, which a module that does not
/// replay it must not ignore.
pub(crate) const SB_FLAG_JOURNAL: u32 = 1 << 5;
/// The feature flags this version knows.
pub(crate) const SB_KNOWN_FLAGS: u32 = SB_FLAG_DROP_WHEN_FULL
    | SB_FLAG_DROPPED
    | SB_FLAG_GROWN
    | SB_FLAG_ZEROES
    | SB_FLAG_ROLLBACK
    | SB_FLAG_JOURNAL;
/// Private exception value that names no COW chunk: the snapshot reads the chunk as zeroes.
/// COW chunk 0 holds the superblocks, so it is never a data chunk.
pub(crate) const PRIVATE_ZEROES: u128 = 0;
pub(crate) const SB_DELETING_EPOCH: usize = 120;
pub(crate) const SB_ROOTS: usize = 128;
/// Each root record: u64 block, u8 depth, 7 bytes zero.
pub(crate) const SB_ROOT_SIZE: usize = 16;
/// Next chunk the data allocator tries.
pub(crate) const SB_DATA_HINT: usize = 176;
/// The metadata block size in bytes, [`BLOCK_SIZE`] (u32).
pub(crate) const SB_BLOCK_SIZE: usize = 184;
/// Epoch of the snapshot the origin is being rolled back to (u64), 0 if none.
pub(crate) const SB_ROLLBACK_EPOCH: usize = 192;
/// Chunks the running rollback had to copy back when it started (u64).
pub(crate) const SB_ROLLBACK_TOTAL: usize = 200;
/// Chunks the running rollback has still to copy back (u64): entries of the private tree under
/// [`ROLLBACK_KEY_EPOCH`].
pub(crate) const SB_ROLLBACK_LEFT: usize = 208;
/// Blocks of the journal area (u32), 0 if the store has none.
pub(crate) const SB_JOURNAL_BLOCKS: usize = 188;
/// First block of the journal area (u64), 0 if the store has none. Bytes 216 .. 232 stay
/// zero: room for the root record of a fourth tree (see "Room for later versions").
pub(crate) const SB_JOURNAL_START: usize = 232;
/// Private-tree keys `(ROLLBACK_KEY_EPOCH << 64) | chunk` name the origin chunks a rollback
/// has still to copy back; no snapshot has epoch 0.
pub(crate) const ROLLBACK_KEY_EPOCH: u64 = 0;
/// Bitmap blocks whose slots are in the fixed area (u32), for a grown store; 0 when all are.
pub(crate) const SB_FIXED_BITMAPS: usize = 240;
/// Dropped snapshots (u64): listed, unreadable, their space kept until they are deleted.
pub(crate) const SB_DROPPED: usize = 248;
/// First byte of the bitmap slot selector bits.
pub(crate) const SB_SELECTOR: usize = 256;

/// Journal block: the transaction id in the header is that of the writer's running
/// transaction; at 24 the committed transaction id of the checkpoint it follows (u64), at 32
/// its index in the journal area (u32), at 36 its record count (u32), records from 40. Its
/// checksum covers bytes 4 to the end of the last record (see [`journal_crc`]).
pub(crate) const JL_CHECKPOINT: usize = 24;
/// See [`JL_CHECKPOINT`].
pub(crate) const JL_INDEX: usize = 32;
/// See [`JL_CHECKPOINT`].
pub(crate) const JL_COUNT: usize = 36;
/// See [`JL_CHECKPOINT`].
pub(crate) const JL_RECORDS: usize = 40;
/// A journal record: the key and the value of a shared exception an origin copy inserted (two
/// u128, little-endian).
pub(crate) const JL_RECORD_SIZE: usize = 32;
/// Records a journal block holds.
pub(crate) const JL_CAPACITY: usize = (BLOCK_SIZE - JL_RECORDS) / JL_RECORD_SIZE;
/// Most blocks of a journal area: 1 MiB.
pub(crate) const JOURNAL_MAX_BLOCKS: u64 = 256;

/// Bitmap block: u32 index at 24, u32 zero at 28, bits from 32.
pub(crate) const BM_INDEX: usize = 24;
pub(crate) const BM_BITS: usize = HDR_SIZE;

/// B+tree node: u8 tree at 24, u8 level at 25, u16 nr entries at 26,
/// u32 zero at 28, keys from 32.
pub(crate) const NODE_TREE: usize = 24;
pub(crate) const NODE_LEVEL: usize = 25;
pub(crate) const NODE_NR: usize = 26;
pub(crate) const NODE_KEYS: usize = HDR_SIZE;

/// Garbage block: u64 next at 24.
pub(crate) const GB_NEXT: usize = 24;

/// Block of deferred chunk frees: the next block of the list at 24 (u64, 0 for none), the
/// entry count at 32 (u32), entries (u64 chunk numbers) from 40.
pub(crate) const DF_NEXT: usize = 24;
/// See [`DF_NEXT`].
pub(crate) const DF_COUNT: usize = 32;
/// See [`DF_NEXT`].
pub(crate) const DF_ENTRIES: usize = 40;
/// Entries of a block of deferred chunk frees.
pub(crate) const DF_CAPACITY: usize = (BLOCK_SIZE - DF_ENTRIES) / 8;

/// Maximum B+tree depth (levels, a root leaf is depth 1).
pub(crate) const MAX_DEPTH: usize = 16;

/// Tree ids (also stored in every node).
pub(crate) const TREE_SHARED: usize = 0;
pub(crate) const TREE_PRIVATE: usize = 1;
pub(crate) const TREE_SNAPS: usize = 2;
pub(crate) const NR_TREES: usize = 3;

/// Smallest and largest chunk size in 512-byte sectors.
pub(crate) const MIN_CHUNK_SECTORS: u32 = 8;
pub(crate) const MAX_CHUNK_SECTORS: u32 = 1024;

/// Free chunks a store needs beyond its fixed area and three root nodes.
pub(crate) const MIN_FREE_CHUNKS: u64 = 16;

/// Selector bits in the superblock, hence the largest number of bitmap
/// blocks.
const MAX_BITMAPS: u64 = ((BLOCK_SIZE - SB_SELECTOR) * 8) as u64;
/// Blocks covered by one bitmap block: 32,512, a multiple of 128 (the
/// largest chunk in blocks), so that no chunk straddles two bitmap blocks.
pub(crate) const BITS_PER_BITMAP: u64 = ((BLOCK_SIZE - BM_BITS) * 8) as u64;

/// Reads a little-endian u16.
pub(crate) fn rd16(b: &[u8], off: usize) -> Result<u16> {
    let end = off
        .checked_add(2)
        .ok_or(Error::Internal("offset overflow"))?;
    let s = b
        .get(off..end)
        .ok_or(Error::Internal("read past block end"))?;
    let a: [u8; 2] = s.try_into().map_err(|_| Error::Internal("slice size"))?;
    Ok(u16::from_le_bytes(a))
}

/// Reads a little-endian u32.
pub(crate) fn rd32(b: &[u8], off: usize) -> Result<u32> {
    let end = off
        .checked_add(4)
        .ok_or(Error::Internal("offset overflow"))?;
    let s = b
        .get(off..end)
        .ok_or(Error::Internal("read past block end"))?;
    let a: [u8; 4] = s.try_into().map_err(|_| Error::Internal("slice size"))?;
    Ok(u32::from_le_bytes(a))
}

/// Reads a little-endian u64.
pub(crate) fn rd64(b: &[u8], off: usize) -> Result<u64> {
    let end = off
        .checked_add(8)
        .ok_or(Error::Internal("offset overflow"))?;
    let s = b
        .get(off..end)
        .ok_or(Error::Internal("read past block end"))?;
    let a: [u8; 8] = s.try_into().map_err(|_| Error::Internal("slice size"))?;
    Ok(u64::from_le_bytes(a))
}

/// Writes bytes at an offset.
pub(crate) fn wr_bytes(b: &mut [u8], off: usize, v: &[u8]) -> Result<()> {
    let end = off
        .checked_add(v.len())
        .ok_or(Error::Internal("offset overflow"))?;
    let s = b
        .get_mut(off..end)
        .ok_or(Error::Internal("write past block end"))?;
    s.copy_from_slice(v);
    Ok(())
}

/// Writes a little-endian u16.
pub(crate) fn wr16(b: &mut [u8], off: usize, v: u16) -> Result<()> {
    wr_bytes(b, off, &v.to_le_bytes())
}

/// Writes a little-endian u32.
pub(crate) fn wr32(b: &mut [u8], off: usize, v: u32) -> Result<()> {
    wr_bytes(b, off, &v.to_le_bytes())
}

/// Writes a little-endian u64.
pub(crate) fn wr64(b: &mut [u8], off: usize, v: u64) -> Result<()> {
    wr_bytes(b, off, &v.to_le_bytes())
}

/// Reads one byte.
pub(crate) fn rd8(b: &[u8], off: usize) -> Result<u8> {
    b.get(off)
        .copied()
        .ok_or(Error::Internal("read past block end"))
}

/// Writes one byte.
pub(crate) fn wr8(b: &mut [u8], off: usize, v: u8) -> Result<()> {
    let p = b
        .get_mut(off)
        .ok_or(Error::Internal("write past block end"))?;
    *p = v;
    Ok(())
}

/// Moves `len` bytes inside a block from `src` to `dst` (overlap allowed).
pub(crate) fn move_bytes(b: &mut [u8], src: usize, len: usize, dst: usize) -> Result<()> {
    let se = src
        .checked_add(len)
        .ok_or(Error::Internal("offset overflow"))?;
    let de = dst
        .checked_add(len)
        .ok_or(Error::Internal("offset overflow"))?;
    if se > b.len() || de > b.len() {
        return Err(Error::Internal("move past block end"));
    }
    b.copy_within(src..se, dst);
    Ok(())
}

/// Copies `len` bytes from `src[soff..]` to `dst[doff..]`.
pub(crate) fn copy_bytes(
    dst: &mut [u8],
    doff: usize,
    src: &[u8],
    soff: usize,
    len: usize,
) -> Result<()> {
    let se = soff
        .checked_add(len)
        .ok_or(Error::Internal("offset overflow"))?;
    let s = src
        .get(soff..se)
        .ok_or(Error::Internal("copy past block end"))?;
    wr_bytes(dst, doff, s)
}

/// Fills `len` bytes at `off` with zero.
pub(crate) fn zero_bytes(b: &mut [u8], off: usize, len: usize) -> Result<()> {
    let end = off
        .checked_add(len)
        .ok_or(Error::Internal("offset overflow"))?;
    let s = b
        .get_mut(off..end)
        .ok_or(Error::Internal("zero past block end"))?;
    s.fill(0);
    Ok(())
}

/// Standard CRC-32C of a block, covering every byte but the crc field.
pub(crate) fn block_crc<I: BlockIo>(io: &I, b: &[u8]) -> u32 {
    let data = b.get(OFF_MAGIC..).unwrap_or(&[]);
    !io.crc32c(!0, data)
}

/// A new block `nr` of `io` (whose blocks are `block_size` bytes), zeroed, with the common
/// header: `magic`, the block number and `txid`. Not sealed: the caller fills it in first.
pub(crate) fn new_block_with_header<I: BlockIo>(
    io: &I,
    block_size: usize,
    nr: u64,
    magic: u32,
    txid: u64,
) -> Result<I::Block<'_>> {
    let mut h = io.new_block(nr)?;
    if h.len() != block_size {
        return Err(Error::Io("block handle of wrong size"));
    }
    h.fill(0);
    wr32(&mut h, OFF_MAGIC, magic)?;
    wr64(&mut h, OFF_BLOCKNR, nr)?;
    wr64(&mut h, OFF_TXID, txid)?;
    Ok(h)
}

/// Stores the checksum of a block.
pub(crate) fn seal<I: BlockIo>(io: &I, b: &mut [u8]) -> Result<()> {
    let c = block_crc(io, b);
    wr32(b, OFF_CRC, c)
}

/// CRC-32C of a journal block holding `count` records: bytes 4 up to the end of the last
/// record (a journal commit checksums what it writes, not the whole block).
pub(crate) fn journal_crc<I: BlockIo>(io: &I, b: &[u8], count: usize) -> Result<u32> {
    let end = count
        .checked_mul(JL_RECORD_SIZE)
        .and_then(|n| n.checked_add(JL_RECORDS))
        .ok_or(Error::Internal("journal record count"))?;
    let covered = b
        .get(OFF_MAGIC..end)
        .ok_or(Error::Internal("journal block too short"))?;
    Ok(!io.crc32c(!0, covered))
}

/// True if the stored checksum matches.
pub(crate) fn crc_ok<I: BlockIo>(io: &I, b: &[u8]) -> bool {
    match rd32(b, OFF_CRC) {
        Ok(c) => c == block_crc(io, b),
        Err(_) => false,
    }
}

/// How a u128 key or value is stored in a node: its low and its high 64-bit
/// half, little-endian, cut to `lo` and `hi` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packing {
    lo: usize,
    hi: usize,
}

impl Packing {
    /// Bytes taken in a node.
    pub(crate) const fn size(self) -> usize {
        self.lo + self.hi
    }

    /// True if `x` can be stored.
    pub(crate) fn fits(self, x: u128) -> bool {
        fits(x as u64, self.lo) && fits((x >> 64) as u64, self.hi)
    }

    /// Reads a packed value at `off`.
    #[inline]
    pub(crate) fn read(self, b: &[u8], off: usize) -> Result<u128> {
        // Both halves from one bounds-checked window of 16 bytes, where the block has them:
        // scans and reclaim steps read every entry of a leaf.
        if let Some(w) = off.checked_add(16).and_then(|e| b.get(off..e)) {
            let half = |at: usize, width: usize| -> Result<u64> {
                let eight: [u8; 8] = at
                    .checked_add(8)
                    .and_then(|e| w.get(at..e))
                    .and_then(|s| s.try_into().ok())
                    .ok_or(Error::Internal("integer too wide"))?;
                Ok(u64::from_le_bytes(eight) & low_bytes_mask(width))
            };
            let lo = half(0, self.lo)?;
            let hi = half(self.lo, self.hi)?;
            return Ok(((hi as u128) << 64) | lo as u128);
        }
        let lo = rd_uint(b, off, self.lo)?;
        let hi = rd_uint(b, off + self.lo, self.hi)?;
        Ok(((hi as u128) << 64) | lo as u128)
    }

    /// Reads the low half of a packed value at `off`: one load, where a
    /// caller needs one half of every entry of a leaf.
    #[inline]
    pub(crate) fn read_lo(self, b: &[u8], off: usize) -> Result<u64> {
        rd_uint(b, off, self.lo)
    }

    /// Reads the high half of a packed value at `off`.
    #[inline]
    pub(crate) fn read_hi(self, b: &[u8], off: usize) -> Result<u64> {
        let at = off
            .checked_add(self.lo)
            .ok_or(Error::Internal("offset overflow"))?;
        rd_uint(b, at, self.hi)
    }

    /// Writes `x` packed at `off`; fails, writing nothing, if it does not fit.
    pub(crate) fn write(self, b: &mut [u8], off: usize, x: u128) -> Result<()> {
        if !self.fits(x) {
            return Err(Error::Limit("value too large for its on-disk field"));
        }
        wr_uint(b, off, self.lo, x as u64)?;
        wr_uint(b, off + self.lo, self.hi, (x >> 64) as u64)
    }
}

/// The mask of the low `width` bytes of a u64 (all of it from 8 on).
#[inline]
fn low_bytes_mask(width: usize) -> u64 {
    match width {
        0 => 0,
        1..=7 => (1u64 << (8 * width)) - 1,
        _ => u64::MAX,
    }
}

/// True if `v` fits in `width` bytes.
fn fits(v: u64, width: usize) -> bool {
    width >= 8 || v >> (8 * width) == 0
}

/// Reads a little-endian unsigned integer of `width` (0 to 8) bytes.
#[inline]
fn rd_uint(b: &[u8], off: usize, width: usize) -> Result<u64> {
    if width > 8 {
        return Err(Error::Internal("integer too wide"));
    }
    // B+tree searches and scans read keys and values of every width many times per node:
    // load 8 bytes and mask where the block has them. A fixed-size load, not a copy of
    // `width` bytes, which the kernel's build makes a call to memcpy.
    if let Some(eight) = off.checked_add(8).and_then(|e| b.get(off..e)) {
        let a: [u8; 8] = eight
            .try_into()
            .map_err(|_| Error::Internal("slice size"))?;
        let v = u64::from_le_bytes(a);
        return Ok(if width == 8 {
            v
        } else {
            v & ((1u64 << (8 * width)) - 1)
        });
    }
    let end = off
        .checked_add(width)
        .ok_or(Error::Internal("offset overflow"))?;
    let mut a = [0u8; 8];
    let s = b
        .get(off..end)
        .ok_or(Error::Internal("read past block end"))?;
    a.get_mut(..width)
        .ok_or(Error::Internal("integer too wide"))?
        .copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// Writes the low `width` (0 to 8) bytes of `v`, little-endian.
fn wr_uint(b: &mut [u8], off: usize, width: usize, v: u64) -> Result<()> {
    let a = v.to_le_bytes();
    wr_bytes(
        b,
        off,
        a.get(..width).ok_or(Error::Internal("integer too wide"))?,
    )
}

/// Bytes of a child pointer (a block number) in an internal node.
const CHILD_SIZE: usize = 8;

/// The layout of the nodes of one tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NodeFormat {
    pub(crate) key: Packing,
    pub(crate) val: Packing,
    /// Maximum entries of a leaf node.
    pub(crate) leaf_max: usize,
    /// Maximum entries of an internal node.
    pub(crate) int_max: usize,
}

/// Largest origin chunk number plus one: origin chunks take 6 bytes.
pub(crate) const MAX_ORIGIN_CHUNKS: u64 = 1 << 48;
/// Largest snapshot epoch: epochs take 4 bytes.
pub(crate) const MAX_EPOCH: u64 = u32::MAX as u64;

/// Node formats of the shared-exception tree, the private-exception tree
/// and the snapshot table, in tree id order.
///
/// * Shared: key `(chunk << 64) | hi`, value `(lo << 64) | cow`: 6-byte
///   origin chunk, 4-byte epochs, 5-byte COW chunk; 19 bytes an entry.
/// * Private: key `(epoch << 64) | chunk`, value `cow` (or [`PRIVATE_ZEROES`]): 15 bytes.
/// * Snapshot table: keys `epoch` and `(1 << 64) | id`, values `id` or
///   `epoch` with the deleting flag at bit 64: 10 bytes.
const NODE_FORMATS: [NodeFormat; NR_TREES] = [
    NodeFormat::new(Packing { lo: 4, hi: 6 }, Packing { lo: 5, hi: 4 }),
    NodeFormat::new(Packing { lo: 6, hi: 4 }, Packing { lo: 5, hi: 0 }),
    NodeFormat::new(Packing { lo: 4, hi: 1 }, Packing { lo: 4, hi: 1 }),
];

impl NodeFormat {
    const fn new(key: Packing, val: Packing) -> NodeFormat {
        NodeFormat {
            key,
            val,
            leaf_max: (BLOCK_SIZE - NODE_KEYS) / (key.size() + val.size()),
            int_max: (BLOCK_SIZE - NODE_KEYS) / (key.size() + CHILD_SIZE),
        }
    }

    /// The format of tree `tree`.
    pub(crate) fn of(tree: usize) -> Result<&'static NodeFormat> {
        NODE_FORMATS.get(tree).ok_or(Error::Internal("tree id"))
    }

    /// The format of a node, from the tree id in its header (which
    /// `read_node` has checked).
    #[inline]
    pub(crate) fn of_node(b: &[u8]) -> Result<&'static NodeFormat> {
        let t = rd8(b, NODE_TREE)?;
        NODE_FORMATS
            .get(usize::from(t).wrapping_sub(1))
            .ok_or(Error::Internal("node of no tree"))
    }

    /// Maximum entries of a node at `level` (0 = leaf).
    #[inline]
    pub(crate) fn max_entries(&self, level: u8) -> usize {
        if level == 0 {
            self.leaf_max
        } else {
            self.int_max
        }
    }

    /// Minimum entries of a non-root node at `level` that is not the last of
    /// its level.
    pub(crate) fn min_entries(&self, level: u8) -> usize {
        self.max_entries(level) / 2
    }

    /// Offset of key `i` of a node at `level`.
    #[inline]
    pub(crate) fn key_off(&self, i: usize) -> usize {
        NODE_KEYS + self.key.size() * i
    }

    /// Offset of value `i` for a node at `level`, and the value size.
    #[inline]
    pub(crate) fn val_off(&self, level: u8, i: usize) -> (usize, usize) {
        let max = self.max_entries(level);
        let base = NODE_KEYS + self.key.size() * max;
        if level == 0 {
            (base + self.val.size() * i, self.val.size())
        } else {
            (base + CHILD_SIZE * i, CHILD_SIZE)
        }
    }

    /// Offset of the end of the value array of a node at `level`.
    pub(crate) fn vals_end(&self, level: u8) -> usize {
        self.val_off(level, self.max_entries(level)).0
    }
}

/// Geometry derived from the chunk size and the number of chunks.
///
/// Metadata lives in blocks of [`BLOCK_SIZE`] bytes, numbered from the
/// start of the device; chunk `c` is the aligned group of
/// [`Geometry::chunk_blocks`] blocks starting at block `c * chunk_blocks`.
/// The space map has one bit per block: a data chunk takes a whole group,
/// a metadata block a single block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Metadata block size in bytes ([`BLOCK_SIZE`]).
    pub(crate) block_size: usize,
    /// Chunk size in 512-byte sectors.
    pub(crate) chunk_sectors: u32,
    /// Blocks per chunk (1 to 128).
    pub(crate) chunk_blocks: u64,
    /// Number of chunks managed by the store.
    pub(crate) nr_chunks: u64,
    /// Number of blocks managed by the store, `nr_chunks * chunk_blocks`.
    pub(crate) nr_blocks: u64,
    /// Number of logical bitmap blocks.
    pub(crate) nr_bitmaps: u64,
    /// Bitmap blocks whose slots are in the fixed area: all but those added by growth.
    pub(crate) fixed_bitmaps: u64,
    /// Blocks covered by one bitmap block.
    pub(crate) bits_per_bitmap: u64,
    /// First block after the fixed area (superblocks and bitmap slots).
    pub(crate) fixed_end: u64,
}

impl Geometry {
    /// Checks a chunk size in sectors.
    pub(crate) fn valid_chunk_sectors(cs: u32) -> bool {
        cs.is_power_of_two() && (MIN_CHUNK_SECTORS..=MAX_CHUNK_SECTORS).contains(&cs)
    }

    /// Largest number of chunks a store with this chunk size can manage
    /// (limited by the selector bits in the superblock: about 3.7 TiB).
    pub(crate) fn max_chunks(chunk_sectors: u32) -> u64 {
        let k = u64::from((chunk_sectors / BLOCK_SECTORS).max(1));
        MAX_BITMAPS * BITS_PER_BITMAP / k
    }

    /// Blocks of the fixed area of a store of `nr_chunks` chunks.
    fn fixed_blocks(chunk_blocks: u64, nr_chunks: u64) -> u64 {
        let bitmaps = nr_chunks
            .saturating_mul(chunk_blocks)
            .div_ceil(BITS_PER_BITMAP);
        bitmaps.saturating_mul(2).saturating_add(2)
    }

    /// Chunks a store of `nr_chunks` chunks needs: the chunks its fixed
    /// area and three root nodes touch, plus [`MIN_FREE_CHUNKS`].
    fn needed_chunks(chunk_blocks: u64, nr_chunks: u64) -> u64 {
        Self::fixed_blocks(chunk_blocks, nr_chunks)
            .saturating_add(NR_TREES as u64)
            .div_ceil(chunk_blocks.max(1))
            .saturating_add(MIN_FREE_CHUNKS)
    }

    /// Smallest number of chunks a store with this chunk size needs.
    pub(crate) fn min_chunks(chunk_sectors: u32) -> u64 {
        let k = u64::from((chunk_sectors / BLOCK_SECTORS).max(1));
        let mut n = Self::needed_chunks(k, 1);
        // More chunks may need more bitmap blocks; a few rounds settle it.
        for _ in 0..4 {
            n = Self::needed_chunks(k, n);
        }
        n
    }

    /// Computes the geometry; `nr_chunks` is clamped to the maximum.
    pub(crate) fn new(chunk_sectors: u32, nr_chunks: u64) -> Result<Geometry> {
        if !Self::valid_chunk_sectors(chunk_sectors) {
            return Err(Error::InvalidChunkSize);
        }
        let chunk_blocks = u64::from(chunk_sectors / BLOCK_SECTORS);
        let nr_chunks = nr_chunks.min(Self::max_chunks(chunk_sectors));
        let nr_blocks = nr_chunks * chunk_blocks;
        let nr_bitmaps = nr_blocks.div_ceil(BITS_PER_BITMAP);
        let fixed_end = Self::fixed_blocks(chunk_blocks, nr_chunks);
        if nr_chunks < Self::needed_chunks(chunk_blocks, nr_chunks) {
            return Err(Error::DeviceTooSmall);
        }
        Ok(Geometry {
            block_size: BLOCK_SIZE,
            chunk_sectors,
            chunk_blocks,
            nr_chunks,
            nr_blocks,
            nr_bitmaps,
            fixed_bitmaps: nr_bitmaps,
            bits_per_bitmap: BITS_PER_BITMAP,
            fixed_end,
        })
    }

    /// The geometry of a store formatted with `fixed_bitmaps` bitmap blocks and grown to
    /// `nr_chunks` chunks: the fixed area stays as it was, and each bitmap block added by
    /// growth keeps its two slots in the first two blocks it covers.
    pub(crate) fn grown(
        chunk_sectors: u32,
        nr_chunks: u64,
        fixed_bitmaps: u64,
    ) -> Result<Geometry> {
        let mut g = Self::new(chunk_sectors, nr_chunks)?;
        if fixed_bitmaps == 0 || fixed_bitmaps > g.nr_bitmaps {
            return Err(Error::Invalid("bitmap blocks of the fixed area"));
        }
        g.fixed_bitmaps = fixed_bitmaps;
        g.fixed_end = 2 + 2 * fixed_bitmaps;
        // Each added bitmap block covers at least the chunk that holds its slots and one more.
        let last_first = (g.nr_bitmaps - 1) * g.bits_per_bitmap;
        if g.nr_bitmaps > fixed_bitmaps && g.nr_blocks < last_first + 2 * g.chunk_blocks.max(2) {
            return Err(Error::Invalid(
                "grown size ends in the slots of a bitmap block",
            ));
        }
        Ok(g)
    }

    /// Bitmap blocks added by growth.
    pub(crate) fn grown_bitmaps(&self) -> u64 {
        self.nr_bitmaps - self.fixed_bitmaps
    }

    /// True if block `nr` is a slot of a bitmap block added by growth.
    pub(crate) fn grown_slot(&self, nr: u64) -> bool {
        // `bits_per_bitmap` is never 0; the checked forms keep a panic path out of the I/O path.
        let bitmap = nr.checked_div(self.bits_per_bitmap).unwrap_or(0);
        let bit = nr.checked_rem(self.bits_per_bitmap).unwrap_or(0);
        bitmap >= self.fixed_bitmaps && bit < 2
    }

    /// True if block `nr` may be a btree node.
    pub(crate) fn in_data_area(&self, nr: u64) -> bool {
        nr >= self.fixed_end && nr < self.nr_blocks && !self.grown_slot(nr)
    }

    /// True if chunk `c` may hold data: inside the store and clear of the
    /// fixed area and of the slots of bitmap blocks added by growth (a
    /// bitmap block covers whole chunks, so its first chunk holds them).
    pub(crate) fn chunk_in_data_area(&self, c: u64) -> bool {
        let first = c * self.chunk_blocks;
        c < self.nr_chunks && first >= self.fixed_end && !self.grown_slot(first)
    }

    /// First block of chunk `c`.
    pub(crate) fn chunk_block(&self, c: u64) -> u64 {
        c * self.chunk_blocks
    }

    /// Physical block of slot `s` of bitmap block `i`: in the fixed area, or for a bitmap
    /// block added by growth, the first two blocks it covers.
    pub(crate) fn bitmap_slot(&self, i: u64, s: u8) -> u64 {
        if i < self.fixed_bitmaps {
            2 + 2 * i + (s as u64 & 1)
        } else {
            i * self.bits_per_bitmap + (s as u64 & 1)
        }
    }
}

/// A btree root: block and depth (number of levels, 1 = root is a leaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Root {
    pub(crate) block: u64,
    pub(crate) depth: u8,
}

/// The scalar superblock state (the selector bits stay in the blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SbState {
    pub(crate) chunk_sectors: u32,
    pub(crate) nr_chunks: u64,
    pub(crate) nr_bitmaps: u32,
    /// Bitmap blocks whose slots are in the fixed area ([`SB_FIXED_BITMAPS`]; `nr_bitmaps`
    /// for a store never grown).
    pub(crate) fixed_bitmaps: u32,
    pub(crate) seq: u64,
    pub(crate) committed_txid: u64,
    pub(crate) reserved_txid: u64,
    pub(crate) last_epoch: u64,
    /// Next block the metadata allocator tries.
    pub(crate) alloc_hint: u64,
    /// Next chunk the data allocator tries.
    pub(crate) data_hint: u64,
    pub(crate) data_chunks: u64,
    pub(crate) meta_blocks: u64,
    pub(crate) shared: u64,
    pub(crate) private: u64,
    pub(crate) snapshots: u64,
    /// Dropped snapshots (see [`SB_DROPPED`]).
    pub(crate) dropped: u64,
    /// The COW-full policy is `drop` ([`SB_FLAG_DROP_WHEN_FULL`]).
    pub(crate) drop_when_full: bool,
    /// Private exceptions may read as zeroes ([`SB_FLAG_ZEROES`]).
    pub(crate) zeroes: bool,
    /// See [`SB_ROLLBACK_EPOCH`], [`SB_ROLLBACK_TOTAL`] and [`SB_ROLLBACK_LEFT`].
    pub(crate) rollback_epoch: u64,
    pub(crate) rollback_total: u64,
    pub(crate) rollback_left: u64,
    pub(crate) deleting_epoch: u64,
    pub(crate) roots: [Root; NR_TREES],
    /// See [`SB_JOURNAL_START`] and [`SB_JOURNAL_BLOCKS`].
    pub(crate) journal_start: u64,
    pub(crate) journal_blocks: u32,
}

impl SbState {
    /// Decodes the scalar fields (no validation beyond reading).
    pub(crate) fn decode(b: &[u8]) -> Result<SbState> {
        let mut roots = [Root::default(); NR_TREES];
        for (t, r) in roots.iter_mut().enumerate() {
            let off = SB_ROOTS + t * SB_ROOT_SIZE;
            r.block = rd64(b, off)?;
            r.depth = rd8(b, off + 8)?;
        }
        Ok(SbState {
            chunk_sectors: rd32(b, SB_CHUNK_SECTORS)?,
            nr_chunks: rd64(b, SB_NR_CHUNKS)?,
            nr_bitmaps: rd32(b, SB_NR_BITMAPS)?,
            fixed_bitmaps: match rd32(b, SB_FIXED_BITMAPS)? {
                0 => rd32(b, SB_NR_BITMAPS)?,
                n => n,
            },
            seq: rd64(b, SB_SEQ)?,
            committed_txid: rd64(b, OFF_TXID)?,
            reserved_txid: rd64(b, SB_RESERVED_TXID)?,
            last_epoch: rd64(b, SB_LAST_EPOCH)?,
            alloc_hint: rd64(b, SB_ALLOC_HINT)?,
            data_hint: rd64(b, SB_DATA_HINT)?,
            data_chunks: rd64(b, SB_DATA_CHUNKS)?,
            meta_blocks: rd64(b, SB_META_BLOCKS)?,
            shared: rd64(b, SB_SHARED)?,
            private: rd64(b, SB_PRIVATE)?,
            snapshots: rd64(b, SB_SNAPSHOTS)?,
            dropped: rd64(b, SB_DROPPED)?,
            drop_when_full: rd32(b, SB_FLAGS)? & SB_FLAG_DROP_WHEN_FULL != 0,
            zeroes: rd32(b, SB_FLAGS)? & SB_FLAG_ZEROES != 0,
            rollback_epoch: rd64(b, SB_ROLLBACK_EPOCH)?,
            rollback_total: rd64(b, SB_ROLLBACK_TOTAL)?,
            rollback_left: rd64(b, SB_ROLLBACK_LEFT)?,
            deleting_epoch: rd64(b, SB_DELETING_EPOCH)?,
            roots,
            journal_start: rd64(b, SB_JOURNAL_START)?,
            journal_blocks: rd32(b, SB_JOURNAL_BLOCKS)?,
        })
    }

    /// Encodes the header and scalar fields into `b` (selector bits and the
    /// checksum are left alone). `blocknr` is the slot's own number.
    pub(crate) fn encode(&self, b: &mut [u8], blocknr: u64) -> Result<()> {
        wr32(b, OFF_MAGIC, SB_MAGIC)?;
        wr64(b, OFF_BLOCKNR, blocknr)?;
        wr64(b, OFF_TXID, self.committed_txid)?;
        wr32(b, SB_VERSION, VERSION)?;
        wr32(b, SB_CHUNK_SECTORS, self.chunk_sectors)?;
        wr64(b, SB_SEQ, self.seq)?;
        wr64(b, SB_NR_CHUNKS, self.nr_chunks)?;
        wr64(b, SB_RESERVED_TXID, self.reserved_txid)?;
        wr64(b, SB_LAST_EPOCH, self.last_epoch)?;
        wr64(b, SB_ALLOC_HINT, self.alloc_hint)?;
        wr64(b, SB_DATA_CHUNKS, self.data_chunks)?;
        wr64(b, SB_META_BLOCKS, self.meta_blocks)?;
        wr64(b, SB_SHARED, self.shared)?;
        wr64(b, SB_PRIVATE, self.private)?;
        wr64(b, SB_SNAPSHOTS, self.snapshots)?;
        wr32(b, SB_NR_BITMAPS, self.nr_bitmaps)?;
        let mut flags = 0;
        if self.drop_when_full {
            flags |= SB_FLAG_DROP_WHEN_FULL;
        }
        if self.dropped != 0 {
            flags |= SB_FLAG_DROPPED;
        }
        let grown = self.fixed_bitmaps != self.nr_bitmaps;
        if grown {
            flags |= SB_FLAG_GROWN;
        }
        if self.zeroes {
            flags |= SB_FLAG_ZEROES;
        }
        if self.rollback_epoch != 0 {
            flags |= SB_FLAG_ROLLBACK;
        }
        if self.journal_blocks != 0 {
            flags |= SB_FLAG_JOURNAL;
        }
        wr32(b, SB_FLAGS, flags)?;
        wr64(b, SB_DELETING_EPOCH, self.deleting_epoch)?;
        for (t, r) in self.roots.iter().enumerate() {
            let off = SB_ROOTS + t * SB_ROOT_SIZE;
            wr64(b, off, r.block)?;
            wr8(b, off + 8, r.depth)?;
            zero_bytes(b, off + 9, 7)?;
        }
        wr64(b, SB_DATA_HINT, self.data_hint)?;
        wr32(b, SB_BLOCK_SIZE, BLOCK_SIZE as u32)?;
        wr32(b, SB_JOURNAL_BLOCKS, self.journal_blocks)?;
        wr64(b, SB_ROLLBACK_EPOCH, self.rollback_epoch)?;
        wr64(b, SB_ROLLBACK_TOTAL, self.rollback_total)?;
        wr64(b, SB_ROLLBACK_LEFT, self.rollback_left)?;
        let end = SB_ROLLBACK_LEFT + 8;
        zero_bytes(b, end, SB_JOURNAL_START - end)?;
        wr64(b, SB_JOURNAL_START, self.journal_start)?;
        wr32(
            b,
            SB_FIXED_BITMAPS,
            if grown { self.fixed_bitmaps } else { 0 },
        )?;
        zero_bytes(b, SB_FIXED_BITMAPS + 4, SB_DROPPED - SB_FIXED_BITMAPS - 4)?;
        wr64(b, SB_DROPPED, self.dropped)?;
        let end = SB_DROPPED + 8;
        zero_bytes(b, end, SB_SELECTOR - end)?;
        Ok(())
    }
}
