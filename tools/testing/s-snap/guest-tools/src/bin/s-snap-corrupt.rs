// SPDX-License-Identifier: GPL-2.0

//! Corrupted exception stores loaded by the real `s-snap-origin` target.
//!
//! The pristine store on `--cow` (origin `--origin`, made beforehand, e.g. by
//! `s-snap-workload`) is read once: its superblocks, bitmap slots and every B+tree node are
//! located from the on-disk format (shared-snapshot.rst), and the data of the origin and of
//! every snapshot is hashed block by block through the target. Then each trial copies the
//! store to `--scratch`, applies one corruption, loads the origin target over it and checks
//! what the kernel makes of it:
//!
//! - refused: `dmsetup` fails and the kernel log says why; a store refused for any reason but
//!   corrupt metadata was not written to;
//! - accepted: the origin and every snapshot are read in full, then an origin write, a
//!   snapshot write and a snapshot create and delete are tried, and the devices removed.
//!   Reads may fail (EIO) but must never return wrong data, and the snapshot list must not
//!   change silently, where the corruption hit a block the format checksums; a session
//!   without errors must leave a store that loads again with the same snapshots. Corruptions
//!   written with a valid checksum (fields set to hostile values) may change data, which the
//!   format cannot detect, but must not hurt the kernel.
//!
//! Truncated COW devices and foreign data must be refused; a longer COW device and an origin
//! of another size must work. The kernel log is watched throughout for reports of kernel
//! problems, and every trial must end with its devices removed.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::time::Instant;

use s_snap_guest_tools::hostile::{
    block_digests, dm, dmsetup_run, origin_message, run_timed, KernelLog, DMSETUP_LIMIT,
};
use s_snap_guest_tools::{
    open_direct, sectors, status_snapshot_ids, AlignedBlock, BLOCK, ORIGIN_NAME,
};
/// A dm-linear view of the scratch device (shorter or longer than the store).
const COW_VIEW: &str = "cowview";
/// A dm-linear origin of another size.
const ORIGIN_VIEW: &str = "originview";
/// A scratch device some foreign target formats.
const FOREIGN: &str = "foreign";
/// Id of the snapshot the trials create and delete.
const PROBE_ID: &str = "4000000000";

#[derive(Parser)]
#[command(about = "Load corrupted copies of an exception store with the s-snap-origin target")]
struct Cli {
    /// Origin device of the pristine store.
    #[arg(long, default_value = "/dev/vda")]
    origin: String,
    /// COW device holding the pristine store (never loaded, only read).
    #[arg(long, default_value = "/dev/vdb")]
    cow: String,
    /// Device the corrupted copies are made on (at least as large as --cow).
    #[arg(long, default_value = "/dev/vdc")]
    scratch: String,
    /// A spare device (longer views, foreign targets' data device).
    #[arg(long, default_value = "/dev/vdd")]
    spare: String,
    /// Chunk size of the pristine store, in sectors.
    #[arg(long, default_value_t = 8)]
    chunk_sectors: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// B+tree leaves and internal nodes (besides the roots) to corrupt.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
}

// ---------------------------------------------------------------------------------------------
// The on-disk format (Documentation/admin-guide/device-mapper/shared-snapshot.rst).
// ---------------------------------------------------------------------------------------------

const SB_MAGIC: &[u8; 4] = b"SSsb";
const BM_MAGIC: &[u8; 4] = b"SSbm";
const NODE_MAGIC: &[u8; 4] = b"SSbt";
const TREE_NAMES: [&str; 3] = ["shared-exception", "private-exception", "snapshot-table"];

/// Size of every metadata block (superblock, bitmap, B+tree node), whatever the chunk size.
const META_BLOCK: usize = 4096;

/// Packed key and value sizes of the shared-exception, private-exception and snapshot-table
/// trees; a value's COW chunk is its first 5 bytes.
const KEY_SIZE: [usize; 3] = [10, 10, 5];
const VAL_SIZE: [usize; 3] = [9, 5, 5];
const COW_SIZE: usize = 5;

/// Entries of a leaf of `tree`.
fn leaf_max(tree: usize) -> usize {
    (META_BLOCK - 32) / (KEY_SIZE[tree] + VAL_SIZE[tree])
}

/// Entries of an internal node of `tree` (children are u64).
fn int_max(tree: usize) -> usize {
    (META_BLOCK - 32) / (KEY_SIZE[tree] + 8)
}

/// A little-endian unsigned integer of `width` bytes at `off`.
fn rd_uint(b: &[u8], off: usize, width: usize) -> u64 {
    let mut a = [0u8; 8];
    a[..width].copy_from_slice(&b[off..off + width]);
    u64::from_le_bytes(a)
}

/// Superblock field offsets.
mod sb {
    pub const SLOT: usize = 8;
    pub const TXID: usize = 16;
    pub const VERSION: usize = 24;
    pub const CHUNK: usize = 28;
    pub const SEQ: usize = 32;
    pub const NR_CHUNKS: usize = 40;
    pub const RESERVED_TXID: usize = 48;
    pub const LAST_EPOCH: usize = 56;
    pub const ALLOC_HINT: usize = 64;
    pub const DATA_CHUNKS: usize = 72;
    pub const META_BLOCKS: usize = 80;
    pub const SHARED: usize = 88;
    pub const SNAPSHOTS: usize = 104;
    pub const NBM: usize = 112;
    pub const FLAGS: usize = 116;
    pub const DELETING: usize = 120;
    pub const ROOTS: usize = 128;
    pub const SELECTOR: usize = 256;
}

fn crc32c(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82f6_3b78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Whether a metadata block's checksum (bytes 4.. of the block) is right.
fn crc_ok(b: &[u8]) -> bool {
    rd32(b, 0) == crc32c(&b[4..])
}

/// Stores the right checksum.
fn seal(b: &mut [u8]) {
    let c = crc32c(&b[4..]);
    b[..4].copy_from_slice(&c.to_le_bytes());
}

fn rd32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn rd64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn rd16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().expect("2 bytes"))
}

/// A B+tree node of the pristine store.
#[derive(Clone, Copy, Debug)]
struct Node {
    block: u64,
    tree: usize,
    level: u8,
    entries: usize,
}

/// Where everything is in the pristine store.
struct Layout {
    /// Metadata block size: every block number below counts these.
    block_bytes: usize,
    nr_chunks: u64,
    nbm: u64,
    newest_sb: u64,
    other_sb_seq: Option<u64>,
    committed_txid: u64,
    roots: [(u64, u8); 3],
    /// Slots of each bitmap block: (committed, other).
    bitmaps: Vec<(u64, u64)>,
    nodes: Vec<Node>,
    /// Blocks holding an old B+tree node that no tree references.
    stale: Vec<u64>,
    /// Blocks that hold anything of the store: 1 + the highest allocated one.
    prefix: u64,
    /// Snapshot ids by epoch, from the snapshot table.
    epochs: BTreeMap<u64, u32>,
    /// The private exceptions: (epoch, origin chunk).
    private: Vec<(u64, u64)>,
}

/// Block `n` of an image of the store, for blocks of `chunk_bytes`.
fn chunk(image: &[u8], chunk_bytes: usize, n: u64) -> &[u8] {
    let start = n as usize * chunk_bytes;
    &image[start..start + chunk_bytes]
}

/// The valid superblock slot with the highest sequence number.
fn newest_superblock(image: &[u8], chunk_bytes: usize) -> Result<u64> {
    let valid = |n: u64| {
        let b = chunk(image, chunk_bytes, n);
        &b[4..8] == SB_MAGIC && crc_ok(b) && rd64(b, sb::SLOT) == n && rd64(b, sb::SEQ) != 0
    };
    (0..2)
        .filter(|&n| valid(n))
        .max_by_key(|&n| rd64(chunk(image, chunk_bytes, n), sb::SEQ))
        .context("the pristine store has no valid superblock")
}

/// The two slots of each bitmap block, the committed one (named by the selector bits) first.
fn bitmap_slots(superblock: &[u8]) -> Vec<(u64, u64)> {
    let nbm = u64::from(rd32(superblock, sb::NBM));
    (0..nbm)
        .map(|i| {
            let sel = u64::from(superblock[sb::SELECTOR + i as usize / 8] >> (i % 8) & 1);
            (2 + 2 * i + sel, 2 + 2 * i + (1 - sel))
        })
        .collect()
}

/// 1 + the highest chunk the committed bitmaps mark allocated: how much of the device a
/// copy of the store must take. `image` needs to hold the fixed area only.
fn allocated_prefix(image: &[u8], chunk_bytes: usize, bitmaps: &[(u64, u64)]) -> Result<u64> {
    let bits = (chunk_bytes - 32) * 8;
    let mut prefix = 2 + 2 * bitmaps.len() as u64;
    for (i, &(slot, _)) in bitmaps.iter().enumerate() {
        let b = chunk(image, chunk_bytes, slot);
        ensure!(
            &b[4..8] == BM_MAGIC && crc_ok(b),
            "bad bitmap in the pristine store"
        );
        if let Some(j) = (0..bits).rev().find(|j| b[32 + j / 8] >> (j % 8) & 1 != 0) {
            prefix = prefix.max((i * bits + j) as u64 + 1);
        }
    }
    Ok(prefix)
}

impl Layout {
    /// Finds everything in `image`, the store's blocks in use, for a store of
    /// `chunk_sectors` chunks.
    fn read(image: &[u8], chunk_sectors: u32) -> Result<Self> {
        let chunk_bytes = META_BLOCK;
        let block = |n: u64| chunk(image, chunk_bytes, n);
        let newest_sb = newest_superblock(image, chunk_bytes)?;
        let other = 1 - newest_sb;
        let other_sb_seq = (&block(other)[4..8] == SB_MAGIC).then(|| rd64(block(other), sb::SEQ));
        let s = block(newest_sb);
        ensure!(rd32(s, sb::CHUNK) == chunk_sectors, "chunk size differs");
        let nr_chunks = rd64(s, sb::NR_CHUNKS);
        let nbm = u64::from(rd32(s, sb::NBM));
        let mut roots = [(0, 0); 3];
        for (t, r) in roots.iter_mut().enumerate() {
            let off = sb::ROOTS + 16 * t;
            *r = (rd64(s, off), s[off + 8]);
        }
        let bitmaps = bitmap_slots(s);
        let prefix = allocated_prefix(image, chunk_bytes, &bitmaps)?;
        ensure!(
            image.len() >= prefix as usize * chunk_bytes,
            "the image is shorter than the chunks in use"
        );
        let mut nodes = Vec::new();
        let mut epochs = BTreeMap::new();
        let mut private = Vec::new();
        for (tree, &(root, depth)) in roots.iter().enumerate() {
            let mut level_nodes = vec![root];
            for level in (0..depth).rev() {
                let mut next = Vec::new();
                for &n in &level_nodes {
                    ensure!(n < prefix, "node {n} beyond the allocated chunks");
                    let b = block(n);
                    ensure!(
                        &b[4..8] == NODE_MAGIC && crc_ok(b) && b[25] == level,
                        "bad node {n} in the pristine store"
                    );
                    let entries = usize::from(rd16(b, 26));
                    nodes.push(Node {
                        block: n,
                        tree,
                        level,
                        entries,
                    });
                    let (ks, vs) = (KEY_SIZE[tree], VAL_SIZE[tree]);
                    for i in 0..entries {
                        let key = 32 + ks * i;
                        if level > 0 {
                            next.push(rd64(b, 32 + ks * int_max(tree) + 8 * i));
                        } else if tree == 1 {
                            // Key (epoch << 64) | chunk: 6 bytes of chunk, 4 of epoch.
                            private.push((rd_uint(b, key + 6, 4), rd_uint(b, key, 6)));
                        } else if tree == 2 && b[key + 4] == 0 {
                            // Snapshot table, epoch half: key epoch, value id (4 bytes each).
                            let id = rd32(b, 32 + ks * leaf_max(tree) + vs * i);
                            epochs.insert(rd_uint(b, key, 4), id);
                        }
                    }
                }
                level_nodes = next;
            }
        }
        let live: BTreeSet<u64> = nodes.iter().map(|n| n.block).collect();
        let stale = (2 + 2 * nbm..prefix)
            .filter(|&n| {
                let b = block(n);
                !live.contains(&n) && &b[4..8] == NODE_MAGIC && rd64(b, 8) == n && crc_ok(b)
            })
            .collect();
        Ok(Self {
            block_bytes: chunk_bytes,
            nr_chunks,
            nbm,
            newest_sb,
            other_sb_seq,
            committed_txid: rd64(s, sb::TXID),
            roots,
            bitmaps,
            nodes,
            stale,
            prefix,
            epochs,
            private,
        })
    }

    fn fixed_end(&self) -> u64 {
        2 + 2 * self.nbm
    }

    fn describe(&self) -> String {
        let mut s = format!(
            "store: {} chunks of {} KiB, {} bitmap blocks, {} in use; superblock slot {} \
             newest, the other slot {}; ",
            self.nr_chunks,
            self.block_bytes / 1024,
            self.nbm,
            self.prefix,
            self.newest_sb,
            match self.other_sb_seq {
                Some(0) => "an in-progress image (sequence 0)".to_string(),
                Some(seq) => format!("a superblock of sequence {seq}"),
                None => "not a superblock".to_string(),
            }
        );
        for (t, name) in TREE_NAMES.iter().enumerate() {
            let nodes: Vec<&Node> = self.nodes.iter().filter(|n| n.tree == t).collect();
            let leaves: Vec<&&Node> = nodes.iter().filter(|n| n.level == 0).collect();
            let _ = write!(
                s,
                "{name} tree: depth {}, {} nodes, {} entries; ",
                self.roots[t].1,
                nodes.len(),
                leaves.iter().map(|n| n.entries).sum::<usize>()
            );
        }
        let _ = write!(
            s,
            "{} stale nodes, {} snapshots",
            self.stale.len(),
            self.epochs.len()
        );
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Trials.
// ---------------------------------------------------------------------------------------------

/// Bytes to write into a block: (offset, bytes).
type Fields = Vec<(usize, Vec<u8>)>;

/// A change to one chunk of the pristine copy.
#[derive(Clone, Debug)]
enum Edit {
    /// Flip these bits (bit numbers within the chunk).
    Flip(Vec<usize>),
    Zero,
    /// Random bytes from this seed.
    Fill(u64),
    /// Overwrite bytes (offset, little-endian value) and store the right checksum again.
    Reseal(Fields),
}

/// What the scratch device holds before the load.
#[derive(Clone, Debug)]
enum Setup {
    Pristine,
    /// The pristine copy, opened and closed once more by the target (which moves the newest
    /// superblock to the other slot), then `Edit` applied to chunk `u64`.
    Edit(u64, Edit, bool),
    /// Zeroed, then written by another tool.
    Foreign(Foreign),
}

#[derive(Clone, Copy, Debug)]
enum Foreign {
    /// Random bytes over the first chunks.
    Random,
    /// An ext4 file system made by mkfs.ext4.
    Ext4,
    /// A dm-thin pool's metadata device.
    ThinMetadata,
    /// A persistent dm-snapshot COW device.
    SnapshotCow,
    /// An exception store made with another chunk size.
    OtherChunkSize(u32),
}

/// What the origin target gets as its COW device.
#[derive(Clone, Copy, Debug)]
enum CowDevice {
    Scratch,
    /// The scratch device cut to this many sectors.
    Cut(u64),
    /// The scratch device followed by the spare one.
    Longer,
}

/// What the origin target gets as its origin device.
#[derive(Clone, Copy, Debug)]
enum OriginDevice {
    Pristine,
    /// A linear view of this many sectors (beyond the origin's end: the spare device).
    Sized(u64),
}

/// What a trial must see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Want {
    /// Accepted, with every device equal to the pristine store and no I/O error.
    Intact,
    /// Refused, with a reason in the kernel log.
    Refused,
    /// Refused, or accepted without silently wrong data or snapshot list (the corruption
    /// hit a checksummed block).
    Detected,
    /// Anything but a kernel problem or a device that cannot be removed (the corruption
    /// carries a valid checksum).
    Survived,
}

#[derive(Clone, Debug)]
struct Trial {
    name: String,
    setup: Setup,
    cow: CowDevice,
    origin: OriginDevice,
    chunk_sectors: u32,
    want: Want,
}

impl Trial {
    /// A trial on the scratch device and the pristine origin, with the store's chunk size.
    fn new(name: String, setup: Setup, want: Want, chunk_sectors: u32) -> Self {
        Self {
            name,
            setup,
            cow: CowDevice::Scratch,
            origin: OriginDevice::Pristine,
            chunk_sectors,
            want,
        }
    }
}

/// `count` different random bit numbers within bytes `bytes` of a chunk.
fn random_bits(rng: &mut SmallRng, bytes: std::ops::Range<usize>, count: usize) -> Vec<usize> {
    rand::seq::index::sample(rng, bytes.len() * 8, count)
        .into_iter()
        .map(|bit| bytes.start * 8 + bit)
        .collect()
}

fn le(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn trials(layout: &Layout, cli: &Cli, origin_sectors: u64, rng: &mut SmallRng) -> Vec<Trial> {
    let cs = cli.chunk_sectors;
    let b = layout.block_bytes;
    let mut out = vec![Trial::new(
        "pristine copy".into(),
        Setup::Pristine,
        Want::Intact,
        cs,
    )];

    // Checksummed blocks: bit flips, zeroed and random chunks.
    let mut places: Vec<(String, u64)> = vec![
        ("newest superblock".into(), layout.newest_sb),
        ("other superblock slot".into(), 1 - layout.newest_sb),
    ];
    for (i, &(live, other)) in layout.bitmaps.iter().enumerate() {
        places.push((format!("bitmap {i}, committed slot"), live));
        places.push((format!("bitmap {i}, other slot"), other));
    }
    for (t, name) in TREE_NAMES.iter().enumerate() {
        places.push((format!("{name} root"), layout.roots[t].0));
    }
    let roots: BTreeSet<u64> = layout.roots.iter().map(|r| r.0).collect();
    let mut inner: Vec<&Node> = layout
        .nodes
        .iter()
        .filter(|n| !roots.contains(&n.block))
        .collect();
    inner.shuffle(rng);
    for n in inner.iter().take(cli.nodes) {
        places.push((
            format!(
                "{} {} (level {})",
                TREE_NAMES[n.tree],
                if n.level == 0 { "leaf" } else { "node" },
                n.level
            ),
            n.block,
        ));
    }
    if let Some(&s) = layout.stale.first() {
        places.push(("stale node".into(), s));
    }
    // The superblocks once more with the newest in the other slot: which slot holds it
    // depends on the store's history.
    let reopened = places.len();
    places.push((
        "newest superblock after one more open".into(),
        1 - layout.newest_sb,
    ));
    places.push((
        "other superblock slot after one more open".into(),
        layout.newest_sb,
    ));
    for (i, (name, chunk)) in places.iter().enumerate() {
        let reopen = i >= reopened;
        let trial =
            |name, edit| Trial::new(name, Setup::Edit(*chunk, edit, reopen), Want::Detected, cs);
        for (range, what) in [(0..32, "in the header"), (32..b, "in the body")] {
            let n = rng.gen_range(1..=3);
            out.push(trial(
                format!("{name} (block {chunk}): {n} bits flipped {what}"),
                Edit::Flip(random_bits(rng, range, n)),
            ));
        }
        out.push(trial(format!("{name} (block {chunk}): zeroed"), Edit::Zero));
        out.push(trial(
            format!("{name} (block {chunk}): random bytes"),
            Edit::Fill(rng.gen()),
        ));
    }

    // Fields set to hostile values, with a valid checksum.
    let sbn = layout.newest_sb;
    let n = layout.nr_chunks;
    let mut sealed: Vec<(String, u64, Fields)> = vec![
        (
            "chunk count + 1".into(),
            sbn,
            vec![(sb::NR_CHUNKS, le(n + 1))],
        ),
        (
            "chunk count 2^64 - 1".into(),
            sbn,
            vec![(sb::NR_CHUNKS, le(u64::MAX))],
        ),
        ("chunk count 10".into(), sbn, vec![(sb::NR_CHUNKS, le(10))]),
        (
            "bitmap count + 1".into(),
            sbn,
            vec![(sb::NBM, (layout.nbm as u32 + 1).to_le_bytes().to_vec())],
        ),
        (
            "chunk size 16".into(),
            sbn,
            vec![(sb::CHUNK, 16u32.to_le_bytes().to_vec())],
        ),
        (
            "chunk size 12".into(),
            sbn,
            vec![(sb::CHUNK, 12u32.to_le_bytes().to_vec())],
        ),
        (
            "format version 2".into(),
            sbn,
            vec![(sb::VERSION, 2u32.to_le_bytes().to_vec())],
        ),
        ("committed txid 0".into(), sbn, vec![(sb::TXID, le(0))]),
        (
            "reserved txid 2^64 - 1".into(),
            sbn,
            vec![(sb::RESERVED_TXID, le(u64::MAX))],
        ),
        ("last epoch 0".into(), sbn, vec![(sb::LAST_EPOCH, le(0))]),
        (
            "last epoch 1 (epochs reused)".into(),
            sbn,
            vec![(sb::LAST_EPOCH, le(1)), (sb::SNAPSHOTS, le(0))],
        ),
        (
            "allocation hint 2^64 - 1".into(),
            sbn,
            vec![(sb::ALLOC_HINT, le(u64::MAX))],
        ),
        (
            "data chunk counter 0".into(),
            sbn,
            vec![(sb::DATA_CHUNKS, le(0))],
        ),
        (
            "metadata chunk counter 2^63".into(),
            sbn,
            vec![(sb::META_BLOCKS, le(1 << 63))],
        ),
        (
            "shared exception counter 0".into(),
            sbn,
            vec![(sb::SHARED, le(0))],
        ),
        (
            "snapshot counter 0".into(),
            sbn,
            vec![(sb::SNAPSHOTS, le(0))],
        ),
        (
            "flags 1".into(),
            sbn,
            vec![(sb::FLAGS, 1u32.to_le_bytes().to_vec())],
        ),
        (
            "deleting epoch 2^63".into(),
            sbn,
            vec![(sb::DELETING, le(1 << 63))],
        ),
        (
            "slot number of the other slot".into(),
            sbn,
            vec![(sb::SLOT, le(1 - sbn))],
        ),
        (
            "all bitmap selectors flipped".into(),
            sbn,
            vec![(sb::SELECTOR, vec![0xff])],
        ),
    ];
    if let Some(&e) = layout.epochs.keys().next() {
        // Resumes the deletion of a live snapshot at open: that snapshot goes.
        sealed.push((
            "deleting epoch of a live snapshot".into(),
            sbn,
            vec![(sb::DELETING, le(e))],
        ));
    }
    for (t, name) in TREE_NAMES.iter().enumerate() {
        let off = sb::ROOTS + 16 * t;
        let depth = layout.roots[t].1;
        let other_root = layout.roots[(t + 1) % 3].0;
        for (what, block) in [
            ("0", 0),
            ("the chunk count", n),
            ("another tree's root", other_root),
        ] {
            sealed.push((
                format!("{name} root pointing at {what}"),
                sbn,
                vec![(off, le(block))],
            ));
        }
        for d in [0u8, depth + 1] {
            sealed.push((
                format!("{name} root depth {d}"),
                sbn,
                vec![(off + 8, vec![d])],
            ));
        }
    }
    // Nodes: header fields, order of keys, and values that point anywhere.
    let pick = |tree: usize, level: u8| -> Option<Node> {
        layout
            .nodes
            .iter()
            .rfind(|n| n.tree == tree && n.level == level && n.entries >= 2)
            .copied()
    };
    for (t, name) in TREE_NAMES.iter().enumerate() {
        let Some(leaf) = pick(t, 0) else { continue };
        let k = leaf.block;
        let (ks, vs) = (KEY_SIZE[t], VAL_SIZE[t]);
        let val = 32 + ks * leaf_max(t);
        let mut fields: Vec<(String, Fields)> = vec![
            ("level 1".into(), vec![(25, vec![1])]),
            (
                "tree id of another tree".into(),
                vec![(24, vec![((t + 1) % 3 + 1) as u8])],
            ),
            (
                "entries + 1".into(),
                vec![(26, ((leaf.entries + 1) as u16).to_le_bytes().to_vec())],
            ),
            (
                "65535 entries".into(),
                vec![(26, u16::MAX.to_le_bytes().to_vec())],
            ),
            (
                "txid of a later transaction".into(),
                vec![(16, le(layout.committed_txid + 5))],
            ),
            (
                "first key above the last".into(),
                vec![(32, vec![0xff; ks])],
            ),
        ];
        if t != 2 {
            for (what, chunk) in [
                ("superblock slot 0", 0),
                ("the chunk count", n),
                ("a B+tree node", layout.roots[2].0),
            ] {
                fields.push((
                    format!("every exception's COW chunk set to {what}"),
                    (0..leaf.entries)
                        .map(|i| (val + vs * i, le(chunk)[..COW_SIZE].to_vec()))
                        .collect(),
                ));
            }
        }
        for (what, edits) in fields {
            sealed.push((format!("{name} leaf (chunk {k}): {what}"), k, edits));
        }
        if let Some(node) = pick(t, 1) {
            let child = 32 + ks * int_max(t);
            for (what, target) in [
                ("itself", node.block),
                ("0", 0),
                ("another tree's root", layout.roots[(t + 1) % 3].0),
            ] {
                sealed.push((
                    format!(
                        "{name} node (chunk {}): first child pointing at {what}",
                        node.block
                    ),
                    node.block,
                    vec![(child, le(target))],
                ));
            }
        }
    }
    if let Some(&(live, _)) = layout.bitmaps.first() {
        sealed.push((
            "bitmap 0: every chunk free".into(),
            live,
            vec![(32, vec![0; b - 32])],
        ));
        sealed.push((
            "bitmap 0: every chunk allocated".into(),
            live,
            vec![(32, vec![0xff; b - 32])],
        ));
        sealed.push((
            "bitmap 0: index 1".into(),
            live,
            vec![(24, 1u32.to_le_bytes().to_vec())],
        ));
    }
    for (name, chunk, edits) in sealed {
        out.push(Trial::new(
            format!("valid checksum, {name}"),
            Setup::Edit(chunk, Edit::Reseal(edits), false),
            Want::Survived,
            cs,
        ));
    }

    // COW devices shorter than the store, and longer.
    let chunk_sectors = u64::from(cs);
    let block_sectors = (layout.block_bytes / 512) as u64;
    for (what, sectors) in [
        ("one chunk", chunk_sectors),
        ("the superblocks only", 2 * block_sectors),
        ("the fixed area", layout.fixed_end() * block_sectors),
        ("the blocks in use", layout.prefix * block_sectors),
        ("half the store", n / 2 * chunk_sectors),
        ("the store less one chunk", (n - 1) * chunk_sectors),
    ] {
        out.push(Trial {
            cow: CowDevice::Cut(sectors),
            ..Trial::new(
                format!("COW device cut to {what} ({sectors} sectors)"),
                Setup::Pristine,
                Want::Refused,
                cs,
            )
        });
    }
    out.push(Trial {
        cow: CowDevice::Longer,
        ..Trial::new(
            "COW device longer than the store".into(),
            Setup::Pristine,
            Want::Intact,
            cs,
        )
    });
    // Foreign data, another chunk size, another origin size.
    for (name, foreign) in [
        ("random bytes", Foreign::Random),
        ("an ext4 file system", Foreign::Ext4),
        ("dm-thin pool metadata", Foreign::ThinMetadata),
        ("a dm-snapshot COW device", Foreign::SnapshotCow),
        (
            "a store with twice the chunk size",
            Foreign::OtherChunkSize(cs * 2),
        ),
    ] {
        out.push(Trial::new(
            format!("foreign data: {name}"),
            Setup::Foreign(foreign),
            Want::Refused,
            cs,
        ));
    }
    for (what, sectors) in [
        ("half the size", origin_sectors / 2),
        ("a larger size", origin_sectors + 8 * chunk_sectors),
    ] {
        out.push(Trial {
            origin: OriginDevice::Sized(sectors),
            ..Trial::new(
                format!("origin of {what}"),
                Setup::Pristine,
                Want::Intact,
                cs,
            )
        });
    }
    for other in [cs * 2, cs / 2] {
        out.push(Trial::new(
            format!("loaded with chunk size {other}"),
            Setup::Pristine,
            Want::Refused,
            other,
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Devices.
// ---------------------------------------------------------------------------------------------

/// Reads `len` bytes at `offset` with `O_DIRECT`.
fn read_direct(path: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
    let file = open_direct(path)?;
    let mut buf = AlignedBlock::with_blocks(len.div_ceil(BLOCK));
    let bytes = &mut buf.bytes()[..len];
    file.read_exact_at(bytes, offset)
        .with_context(|| format!("read {path}"))?;
    Ok(bytes.to_vec())
}

/// Writes `data` at `offset` with `O_DIRECT`.
fn write_direct(path: &str, offset: u64, data: &[u8]) -> Result<()> {
    let file = open_direct(path)?;
    let mut buf = AlignedBlock::with_blocks((1 << 20) / BLOCK);
    for (i, part) in data.chunks(1 << 20).enumerate() {
        let b = &mut buf.bytes()[..part.len()];
        b.copy_from_slice(part);
        file.write_all_at(b, offset + (i << 20) as u64)
            .with_context(|| format!("write {path}"))?;
    }
    Ok(())
}

/// Removes every device a trial may have made (snapshot devices first), but the linear
/// views under the origin target if `keep_views`.
fn remove_all(keep_views: bool) -> Result<()> {
    let names = dm(&["ls"])?;
    let mut names: Vec<&str> = names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "No")
        .collect();
    // Snapshot devices, then the origin, then the views under them.
    names.sort_by_key(|n| match *n {
        ORIGIN_NAME => 1,
        COW_VIEW | ORIGIN_VIEW | FOREIGN => 2,
        _ => 0,
    });
    for name in names {
        if keep_views && [COW_VIEW, ORIGIN_VIEW].contains(&name) {
            continue;
        }
        dm(&["remove", name]).with_context(|| format!("remove {name}"))?;
    }
    Ok(())
}

/// The pristine store, the devices and what the data must be.
struct Rig {
    cli: Cli,
    layout: Layout,
    /// The pristine store's chunks in use.
    image: Vec<u8>,
    origin_sectors: u64,
    scratch_sectors: u64,
    spare_sectors: u64,
    /// Digests of the origin and of each snapshot, by id.
    origin_data: Vec<Option<u64>>,
    snapshots: BTreeMap<u32, Vec<Option<u64>>>,
    /// An origin block that every snapshot still shares with the origin (a write to it needs
    /// a copy first) and its pristine bytes.
    shared_block: u64,
    shared_bytes: Vec<u8>,
    /// A snapshot and a block of it that its own chunk holds (a private exception).
    private_write: Option<(u32, u64)>,
}

/// What one trial saw.
#[derive(Default)]
struct Seen {
    refused: Option<String>,
    listed: Vec<u32>,
    list_error: bool,
    /// The store was loaded again after a session without errors, and what went wrong then.
    reloaded: bool,
    second_session: Option<String>,
    activation_errors: usize,
    blocks_read: u64,
    read_errors: u64,
    wrong_blocks: u64,
    missing_snapshots: usize,
    extra_snapshots: usize,
    origin_write_failed: bool,
    snapshot_write_failed: bool,
    create_failed: bool,
    store_failed_logged: bool,
    written_while_refused: bool,
    /// Data written through a device ended up over the store's metadata.
    metadata_overwritten: bool,
}

impl Rig {
    fn blocks(&self) -> u64 {
        self.origin_sectors * 512 / BLOCK as u64
    }

    /// Writes what the scratch device must hold for `setup`.
    fn prepare(&self, setup: &Setup) -> Result<()> {
        let scratch = &self.cli.scratch;
        match setup {
            Setup::Pristine => write_direct(scratch, 0, &self.image),
            Setup::Edit(chunk, edit, reopen) => {
                write_direct(scratch, 0, &self.image)?;
                if *reopen {
                    dm(&[
                        "create",
                        ORIGIN_NAME,
                        "--table",
                        &self.table(scratch, self.cli.chunk_sectors),
                    ])?;
                    dm(&["remove", ORIGIN_NAME])?;
                }
                let b = self.layout.block_bytes;
                let mut block = read_direct(scratch, *chunk * b as u64, b)?;
                match edit {
                    Edit::Flip(bits) => {
                        for &bit in bits {
                            block[bit / 8] ^= 1 << (bit % 8);
                        }
                    }
                    Edit::Zero => block.fill(0),
                    Edit::Fill(seed) => SmallRng::seed_from_u64(*seed).fill(&mut block[..]),
                    Edit::Reseal(edits) => {
                        for (off, bytes) in edits {
                            block[*off..off + bytes.len()].copy_from_slice(bytes);
                        }
                        seal(&mut block);
                    }
                }
                write_direct(scratch, *chunk * b as u64, &block)
            }
            Setup::Foreign(foreign) => {
                write_direct(scratch, 0, &vec![0; self.image.len().max(4 << 20)])?;
                self.make_foreign(*foreign)
            }
        }
    }

    /// The origin table over the pristine origin and `cow`.
    fn table(&self, cow: &str, chunk_sectors: u32) -> String {
        format!(
            "0 {} s-snap-origin {} {cow} S {chunk_sectors}",
            self.origin_sectors, self.cli.origin
        )
    }

    fn make_foreign(&self, foreign: Foreign) -> Result<()> {
        let (scratch, spare) = (&self.cli.scratch, &self.cli.spare);
        match foreign {
            Foreign::Random => {
                let mut bytes = vec![0u8; 64 * self.layout.block_bytes];
                SmallRng::seed_from_u64(self.cli.seed).fill(&mut bytes[..]);
                write_direct(scratch, 0, &bytes)
            }
            Foreign::Ext4 => {
                let run = run_timed(
                    "mkfs.ext4",
                    &[
                        b"-q",
                        b"-F",
                        b"-E",
                        b"lazy_itable_init=1,lazy_journal_init=1",
                        scratch.as_bytes(),
                    ],
                    None,
                    DMSETUP_LIMIT,
                )?;
                ensure!(run.ok, "mkfs.ext4: {}", run.stderr);
                Ok(())
            }
            Foreign::ThinMetadata => {
                let table = format!(
                    "0 {} thin-pool {scratch} {spare} 128 0",
                    self.spare_sectors / 128 * 128
                );
                dm(&["create", FOREIGN, "--table", &table])?;
                dm(&["remove", FOREIGN])?;
                Ok(())
            }
            Foreign::SnapshotCow => {
                let table = format!("0 {} snapshot {spare} {scratch} P 8", self.spare_sectors);
                dm(&["create", FOREIGN, "--table", &table])?;
                dm(&["remove", FOREIGN])?;
                Ok(())
            }
            Foreign::OtherChunkSize(cs) => {
                dm(&["create", ORIGIN_NAME, "--table", &self.table(scratch, cs)])?;
                origin_message("snapshot create 1")?;
                dm(&["remove", ORIGIN_NAME])?;
                Ok(())
            }
        }
    }

    /// The COW and origin paths of a trial, making the linear views it needs.
    fn devices(&self, t: &Trial) -> Result<(String, String)> {
        let scratch = &self.cli.scratch;
        let cow = match t.cow {
            CowDevice::Scratch => scratch.clone(),
            CowDevice::Cut(sectors) => {
                dm(&[
                    "create",
                    COW_VIEW,
                    "--table",
                    &format!("0 {sectors} linear {scratch} 0"),
                ])?;
                format!("/dev/mapper/{COW_VIEW}")
            }
            CowDevice::Longer => {
                let table = format!(
                    "0 {} linear {scratch} 0\n{} {} linear {} 0\n",
                    self.scratch_sectors, self.scratch_sectors, self.spare_sectors, self.cli.spare
                );
                let run = dmsetup_run(&[b"create", COW_VIEW.as_bytes()], Some(table.as_bytes()))?;
                ensure!(run.ok, "create {COW_VIEW}: {}", run.stderr);
                format!("/dev/mapper/{COW_VIEW}")
            }
        };
        let origin = match t.origin {
            OriginDevice::Pristine => self.cli.origin.clone(),
            OriginDevice::Sized(sectors) => {
                let mut table = format!(
                    "0 {} linear {} 0\n",
                    sectors.min(self.origin_sectors),
                    self.cli.origin
                );
                if sectors > self.origin_sectors {
                    let _ = writeln!(
                        table,
                        "{} {} linear {} 0",
                        self.origin_sectors,
                        sectors - self.origin_sectors,
                        self.cli.spare
                    );
                }
                let run =
                    dmsetup_run(&[b"create", ORIGIN_VIEW.as_bytes()], Some(table.as_bytes()))?;
                ensure!(run.ok, "create {ORIGIN_VIEW}: {}", run.stderr);
                format!("/dev/mapper/{ORIGIN_VIEW}")
            }
        };
        Ok((cow, origin))
    }

    fn origin_size(&self, t: &Trial) -> u64 {
        match t.origin {
            OriginDevice::Pristine => self.origin_sectors,
            OriginDevice::Sized(s) => s,
        }
    }

    /// Runs one trial; the caller removes the devices.
    fn run(&self, t: &Trial, log: &mut KernelLog) -> Result<Seen> {
        let mut seen = Seen::default();
        self.prepare(&t.setup)?;
        let (cow, origin) = self.devices(t)?;
        log.drain()?;
        // What the first chunks hold, to see whether a refused load wrote to them.
        let watched = (64 * self.layout.block_bytes).min(self.scratch_sectors as usize * 512);
        let before = read_direct(&self.cli.scratch, 0, watched)?;
        let size = self.origin_size(t);
        let table = format!(
            "0 {size} s-snap-origin {origin} {cow} S {}",
            t.chunk_sectors
        );
        let load = || {
            dmsetup_run(
                &[
                    b"create",
                    ORIGIN_NAME.as_bytes(),
                    b"--table",
                    table.as_bytes(),
                ],
                None,
            )
        };
        let run = load()?;
        let logged = log.drain()?;
        if !run.ok {
            ensure!(
                run.kernel_refused(),
                "dmsetup refused the table itself: {}",
                run.stderr
            );
            let reason = logged
                .iter()
                .find_map(|l| {
                    l.text
                        .split_once("s-snap-origin: ")
                        .map(|(_, r)| r.to_string())
                })
                .with_context(|| {
                    format!(
                        "refused ({}) without an s-snap-origin error in the kernel log",
                        run.errno_text()
                    )
                })?;
            if !reason.contains("corrupt") {
                seen.written_while_refused = read_direct(&self.cli.scratch, 0, watched)? != before;
            }
            seen.refused = Some(reason);
            return Ok(seen);
        }
        self.exercise(&origin, size, &mut seen)?;
        seen.store_failed_logged = log
            .drain()?
            .iter()
            .any(|l| l.text.contains("exception store failed"));
        // What the session left must open again, with the same snapshots.
        if !seen.store_failed_logged && !seen.list_error {
            seen.reloaded = true;
            remove_all(true)?;
            let run = load()?;
            seen.second_session = if !run.ok {
                Some(format!("refused: {}", run.errno_text()))
            } else {
                match status_snapshot_ids() {
                    Ok(ids) if ids == seen.listed => None,
                    Ok(ids) => Some(format!("snapshots {ids:?} instead of {:?}", seen.listed)),
                    Err(e) => Some(format!("{e:#}")),
                }
            };
            log.drain()?;
        }
        Ok(seen)
    }

    /// Reads everything of an accepted store, then writes and creates a snapshot.
    fn exercise(&self, origin: &str, size: u64, seen: &mut Seen) -> Result<()> {
        let blocks = (size * 512 / BLOCK as u64).min(self.blocks());
        let compare = |seen: &mut Seen, got: &[Option<u64>], want: &[Option<u64>]| {
            for (g, w) in got.iter().zip(want) {
                match g {
                    None => seen.read_errors += 1,
                    Some(_) if g != w => seen.wrong_blocks += 1,
                    Some(_) => seen.blocks_read += 1,
                }
            }
        };
        let origin_path = format!("/dev/mapper/{ORIGIN_NAME}");
        let got = block_digests(&origin_path, blocks)?;
        compare(seen, &got, &self.origin_data);
        let listed = match status_snapshot_ids() {
            Ok(ids) => ids,
            Err(_) => {
                seen.list_error = true;
                Vec::new()
            }
        };
        seen.listed = listed.clone();
        if !seen.list_error {
            seen.missing_snapshots = self
                .snapshots
                .keys()
                .filter(|id| !listed.contains(id))
                .count();
            seen.extra_snapshots = listed
                .iter()
                .filter(|id| !self.snapshots.contains_key(id))
                .count();
        }
        let mut active = Vec::new();
        for (&id, want) in &self.snapshots {
            let table = format!("0 {size} s-snap {origin} {id}");
            let name = format!("snap{id}");
            let run = dmsetup_run(
                &[b"create", name.as_bytes(), b"--table", table.as_bytes()],
                None,
            )?;
            if !run.ok {
                seen.activation_errors += 1;
                continue;
            }
            let got = block_digests(&format!("/dev/mapper/{name}"), blocks)?;
            compare(seen, &got, want);
            active.push(id);
        }
        // An origin write to a block no snapshot has a copy of: the copy comes first, and
        // every snapshot keeps the old data.
        let w = self.shared_block;
        let data = self.written_data();
        if w < blocks {
            seen.origin_write_failed = write_direct(&origin_path, w * BLOCK as u64, &data).is_err();
            for id in &active {
                match read_direct(&format!("/dev/mapper/snap{id}"), w * BLOCK as u64, BLOCK) {
                    Ok(got) if got != self.shared_bytes => seen.wrong_blocks += 1,
                    Ok(_) => {}
                    Err(_) => seen.read_errors += 1,
                }
            }
        }
        // A snapshot write, where the snapshot has a chunk of its own if one does (written in
        // place, where its private exception says).
        let target = self
            .private_write
            .filter(|(id, block)| active.contains(id) && *block < blocks)
            .or(active.first().map(|&id| (id, 0)));
        if let Some((id, block)) = target {
            let path = format!("/dev/mapper/snap{id}");
            seen.snapshot_write_failed = write_direct(&path, block * BLOCK as u64, &data).is_err();
        }
        seen.create_failed = origin_message(&format!("snapshot create {PROBE_ID}")).is_err()
            || origin_message(&format!("snapshot delete {PROBE_ID}")).is_err();
        Ok(())
    }

    /// The data the exercise writes to the origin and to a snapshot.
    fn written_data(&self) -> Vec<u8> {
        self.shared_bytes.iter().map(|b| b ^ 0x5a).collect()
    }

    /// Whether the data the exercise wrote landed on a chunk of the fixed area or on a
    /// B+tree node of the pristine store (where only a checksum-valid exception with a
    /// hostile COW chunk can put it).
    fn metadata_overwritten(&self) -> Result<bool> {
        let b = self.layout.block_bytes;
        let data = self.written_data();
        let fixed = (0..self.layout.fixed_end()).chain(self.layout.nodes.iter().map(|n| n.block));
        for chunk in fixed {
            if read_direct(&self.cli.scratch, chunk * b as u64, BLOCK)? == data {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Puts back the origin block an exercise wrote.
    fn restore_origin(&self) -> Result<()> {
        write_direct(
            &self.cli.origin,
            self.shared_block * BLOCK as u64,
            &self.shared_bytes,
        )
    }
}

fn set_up(cli: Cli, log: &mut KernelLog) -> Result<Rig> {
    let chunk_bytes = cli.chunk_sectors as usize * 512;
    // The superblocks, then the bitmaps, then every block in use.
    let head = read_direct(&cli.cow, 0, 2 * META_BLOCK)?;
    let sb = chunk(&head, META_BLOCK, newest_superblock(&head, META_BLOCK)?).to_vec();
    let bitmaps = bitmap_slots(&sb);
    let fixed = read_direct(&cli.cow, 0, (2 + 2 * bitmaps.len()) * META_BLOCK)?;
    let prefix = allocated_prefix(&fixed, META_BLOCK, &bitmaps)?;
    let image = read_direct(&cli.cow, 0, prefix as usize * META_BLOCK)?;
    let layout = Layout::read(&image, cli.chunk_sectors)?;
    let origin_sectors = sectors(&cli.origin)?;
    let scratch_sectors = sectors(&cli.scratch)?;
    let spare_sectors = sectors(&cli.spare)?;
    ensure!(
        scratch_sectors >= layout.nr_chunks * u64::from(cli.chunk_sectors),
        "the scratch device is smaller than the store"
    );
    let blocks = origin_sectors * 512 / BLOCK as u64;
    let origin_data = block_digests(&cli.origin, blocks)?;
    let mut rig = Rig {
        cli,
        layout,
        image,
        origin_sectors,
        scratch_sectors,
        spare_sectors,
        origin_data,
        snapshots: BTreeMap::new(),
        shared_block: 0,
        shared_bytes: Vec::new(),
        private_write: None,
    };
    // The snapshots' data, through the target, from a pristine copy.
    rig.prepare(&Setup::Pristine)?;
    let table = rig.table(&rig.cli.scratch, rig.cli.chunk_sectors);
    dm(&["create", ORIGIN_NAME, "--table", &table])?;
    for id in status_snapshot_ids()? {
        let name = format!("snap{id}");
        let table = format!("0 {} s-snap {} {id}", rig.origin_sectors, rig.cli.origin);
        dm(&["create", &name, "--table", &table])?;
        let d = block_digests(&format!("/dev/mapper/{name}"), blocks)?;
        ensure!(
            d.iter().all(Option::is_some),
            "pristine snapshot {id} has read errors"
        );
        rig.snapshots.insert(id, d);
    }
    remove_all(false)?;
    log.drain()?;
    ensure!(
        !rig.snapshots.is_empty(),
        "the pristine store has no snapshot"
    );
    ensure!(
        rig.snapshots.len() == rig.layout.epochs.len(),
        "{} snapshots listed, {} in the snapshot table",
        rig.snapshots.len(),
        rig.layout.epochs.len()
    );
    // The first block where every snapshot equals the origin (the workload's blocks carry
    // unique tags, so none has a copy of it).
    let w = (0..blocks as usize)
        .find(|&i| rig.snapshots.values().all(|d| d[i] == rig.origin_data[i]))
        .context("no origin block is shared by every snapshot")?;
    rig.shared_block = w as u64;
    rig.shared_bytes = read_direct(&rig.cli.origin, w as u64 * BLOCK as u64, BLOCK)?;
    let blocks_per_chunk = (chunk_bytes / BLOCK) as u64;
    rig.private_write = rig.layout.private.iter().find_map(|(epoch, chunk)| {
        let id = *rig.layout.epochs.get(epoch)?;
        Some((id, chunk * blocks_per_chunk))
    });
    Ok(rig)
}

impl Seen {
    /// One line for the trial's report.
    fn summary(&self) -> String {
        let Some(reason) = &self.refused else {
            let mut s = format!(
                "accepted: {} snapshots, {} blocks right, {} wrong, {} unreadable",
                self.listed.len(),
                self.blocks_read,
                self.wrong_blocks,
                self.read_errors
            );
            for (failed, what) in [
                (self.list_error, "snapshot list unreadable"),
                (self.activation_errors > 0, "snapshot devices refused"),
                (self.origin_write_failed, "origin write failed"),
                (self.snapshot_write_failed, "snapshot write failed"),
                (self.create_failed, "snapshot create/delete failed"),
                (self.store_failed_logged, "store failed"),
                (self.metadata_overwritten, "data written over metadata"),
            ] {
                if failed {
                    s.push_str(", ");
                    s.push_str(what);
                }
            }
            match (&self.second_session, self.reloaded) {
                (Some(problem), _) => s.push_str(&format!(", loaded again: {problem}")),
                (None, true) => s.push_str(", loaded again"),
                _ => {}
            }
            return s;
        };
        format!("refused: {reason}")
    }

    /// What a trial that wants `want` must not have seen.
    fn problems(&self, want: Want, pristine: usize) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(reason) = &self.refused {
            if want == Want::Intact {
                v.push(format!("refused: {reason}"));
            }
            if self.written_while_refused {
                v.push(format!("refused ({reason}) but the COW device was written"));
            }
            return v;
        }
        let silent =
            self.wrong_blocks > 0 || self.missing_snapshots > 0 || self.extra_snapshots > 0;
        let errors = self.read_errors > 0 || self.activation_errors > 0 || self.list_error;
        match want {
            Want::Refused => v.push("accepted".into()),
            Want::Intact if silent || errors => v.push("accepted, but not intact".into()),
            Want::Detected if silent => {
                v.push("accepted with silently wrong data or snapshot list".into())
            }
            _ => {}
        }
        if self.metadata_overwritten && want != Want::Survived {
            v.push("data written through a device landed on the store's metadata".into());
        }
        if let (Some(problem), Want::Intact | Want::Detected) = (&self.second_session, want) {
            v.push(format!(
                "loaded again after a session without errors: {problem}"
            ));
        }
        if !v.is_empty() {
            v.push(format!(
                "{} of the {pristine} snapshots missing, {} unknown ones listed, {} blocks \
                 wrong",
                self.missing_snapshots, self.extra_snapshots, self.wrong_blocks
            ));
        }
        v
    }
}

/// Counts over the trials that want the same.
#[derive(Default)]
struct Tally {
    trials: u64,
    refused: u64,
    accepted: u64,
    read_errors: u64,
    blocks_read: u64,
    wrong_blocks: u64,
    reloaded: u64,
    metadata_overwritten: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut log = KernelLog::open()?;
    let seed = cli.seed;
    let rig = set_up(cli, &mut log)?;
    println!("ok: {}", rig.layout.describe());
    let mut rng = SmallRng::seed_from_u64(seed);
    let list = trials(&rig.layout, &rig.cli, rig.origin_sectors, &mut rng);
    let started = Instant::now();
    let mut defects = Vec::new();
    let mut tallies: BTreeMap<Want, Tally> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    for (i, t) in list.iter().enumerate() {
        let seen = rig
            .run(t, &mut log)
            .with_context(|| format!("trial {i}: {}", t.name));
        remove_all(false).with_context(|| format!("trial {i}: {}: remove the devices", t.name))?;
        rig.restore_origin()?;
        log.drain()?;
        let mut seen = seen?;
        if seen.refused.is_none() {
            seen.metadata_overwritten = rig.metadata_overwritten()?;
        }
        let c = tallies.entry(t.want).or_default();
        c.trials += 1;
        match &seen.refused {
            Some(reason) => {
                c.refused += 1;
                *reasons.entry(reason.clone()).or_default() += 1;
            }
            None => {
                c.accepted += 1;
                c.read_errors += seen.read_errors;
                c.blocks_read += seen.blocks_read;
                c.wrong_blocks += seen.wrong_blocks;
                c.reloaded += u64::from(seen.reloaded);
                c.metadata_overwritten += u64::from(seen.metadata_overwritten);
            }
        }
        println!("trial {i}: {}: {}", t.name, seen.summary());
        let problems = seen.problems(t.want, rig.snapshots.len());
        if !problems.is_empty() {
            println!("DEFECT: trial {i}: {}: {}", t.name, problems.join("; "));
            defects.push(format!("trial {i}: {}: {}", t.name, problems[0]));
        }
    }
    let mut total = Tally::default();
    for (want, c) in &tallies {
        println!(
            "ok: {want:?}: {} trials, {} refused at load, {} accepted ({} loaded again), {} \
             blocks read right, {} wrong, {} read errors",
            c.trials,
            c.refused,
            c.accepted,
            c.reloaded,
            c.blocks_read,
            c.wrong_blocks,
            c.read_errors
        );
        total.trials += c.trials;
        total.refused += c.refused;
        total.accepted += c.accepted;
        total.read_errors += c.read_errors;
        total.wrong_blocks += c.wrong_blocks;
    }
    let sealed = tallies.get(&Want::Survived);
    let sealed_wrong = sealed.map_or(0, |c| c.wrong_blocks);
    println!(
        "ok: {} corrupted images tried in {:.0} s: {} refused at load, {} accepted, {} read \
         errors, {} blocks of wrong data ({} of them through fields given a valid checksum)",
        total.trials,
        started.elapsed().as_secs_f64(),
        total.refused,
        total.accepted,
        total.read_errors,
        total.wrong_blocks,
        sealed_wrong
    );
    println!(
        "ok: {} sessions with fields given a valid checksum wrote user data over the store's \
         metadata (an exception's COW chunk is used as it is)",
        sealed.map_or(0, |c| c.metadata_overwritten)
    );
    for (reason, n) in &reasons {
        println!("{n:5} refused: {reason}");
    }
    log.clear_dmesg()?;
    if !defects.is_empty() {
        bail!(
            "{} trials went wrong:\n{}",
            defects.len(),
            defects.join("\n")
        );
    }
    Ok(())
}
