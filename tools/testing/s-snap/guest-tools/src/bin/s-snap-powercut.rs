// SPDX-License-Identifier: GPL-2.0

//! Power cuts, recorded with dm-log-writes and replayed.
//!
//! `record` runs a seeded workload on `s-snap-origin` whose origin and COW devices are two
//! `linear` slices of one `log-writes` device. Every write that reaches either device is
//! therefore logged, in completion order, in one log, and any prefix of the log is a state a
//! power cut can leave behind. After each `fdatasync` and each snapshot create or delete
//! returns, the workload puts a mark `pc-<n>` into the log. What it did (writes with their
//! tags, syncs, creates, deletes, marks) goes to a model file.
//!
//! `replay-check` rebuilds the devices as they were after chosen prefixes of the log (every
//! flush or FUA entry, every mark and a seeded sample of the entries in between) and, at each,
//! checks that `s-snap-tool check` finds the store clean, that the target loads, and that
//! every write synced before the last mark is there, on the origin and in each snapshot that
//! existed at that mark. Data written later may or may not be there, but nothing older than
//! what was synced and nothing never written may show up.
//!
//! What counts as synced: an origin write once `fdatasync` of the origin returned; a
//! snapshot's own write once `fdatasync` of that snapshot device returned; the data a
//! snapshot shares with the origin once the origin was synced after the create (before that,
//! any origin data it could have been created from). A snapshot exists once `snapshot
//! create` returned (the documentation says it returns once the snapshot is committed). The
//! documentation promises no commit for `snapshot delete`, so a deleted snapshot is only
//! required to be gone once a later sync or create returned; until then it may still be
//! there, with its data intact (the figures count how often that was seen).
//!
//! One log for both devices keeps their relative order, at a price: a flush of either slice
//! flushes the whole log-writes device, so the test cannot tell whether the target flushes
//! the right one of two separate disks.

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Instant;

use s_snap_guest_tools::{fill_block, open_direct, sectors, AlignedBlock, BLOCK};

/// dm-log-writes on-disk format (drivers/md/dm-log-writes.c): a super block in the first
/// logical block of the log device, then per entry one logical block holding
/// `struct log_write_entry` (and, for a mark, its text right after it), followed by the
/// written data (`nr_sectors` logical blocks) unless the entry is a discard or a mark.
const LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
const LOG_VERSION: u64 = 1;
const LOG_FLUSH: u64 = 1 << 0;
const LOG_FUA: u64 = 1 << 1;
const LOG_DISCARD: u64 = 1 << 2;
const LOG_MARK: u64 = 1 << 3;
/// The mark the log-writes destructor appends.
const LOG_END_MARK: &[u8] = b"dm-log-writes-end";
/// Prefix of the workload's marks: `pc-<n>`.
const MARK_PREFIX: &str = "pc-";

/// Recording devices: the log-writes device, its two slices, the origin target.
const LOG_DEV: &str = "pclog";
const ORIGIN_SLICE: &str = "pcorigin";
const COW_SLICE: &str = "pccow";
const WORK: &str = "pcwork";
/// Replay devices: a transient dm-snapshot of the replay disk (so checking never changes
/// the rebuilt state), its two slices, the origin target.
const REPLAY_SNAP: &str = "pcreplay";
const REPLAY_ORIGIN: &str = "pcrorigin";
const REPLAY_COW: &str = "pcrcow";
const REPLAY_WORK: &str = "pcrwork";

/// Blocks at and above the hot range are never written; one in this many is read to show
/// that they stayed zero.
const SAMPLE_STRIDE: u64 = 127;
/// `_IO(0x12, 97)`: write back and drop a block device's page cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// Blocks read per `O_DIRECT` read when verifying.
const READ_BLOCKS: usize = 16;

#[derive(Parser)]
#[command(about = "Power cuts on s-snap-origin: record with dm-log-writes, replay and check")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the workload over a log-writes device and save the model.
    Record(RecordArgs),
    /// Rebuild the crash states the log holds and check each against the model.
    ReplayCheck(ReplayArgs),
    /// Any log of one device, no model: list its flush/FUA points, or write the state a power
    /// cut after its first entries leaves onto a device that holds the logged device's initial
    /// content (for tests whose check is a shell script).
    Replay(ReplayPrefixArgs),
}

#[derive(clap::Args)]
struct ReplayPrefixArgs {
    /// A dm-log-writes log device.
    #[arg(long)]
    log: String,
    /// The device to write the entries to; without `--entries`, nothing is written.
    #[arg(long)]
    replay: Option<String>,
    /// Write entries 0 .. N-1. Without it, print the entry count and the flush/FUA points
    /// (the entry counts after which a flush or FUA completed).
    #[arg(long)]
    entries: Option<usize>,
}

#[derive(clap::Args)]
struct RecordArgs {
    /// The disk that holds the origin (first part) and the COW device (the rest).
    #[arg(long)]
    data: String,
    /// The log device.
    #[arg(long)]
    log: String,
    /// Size of the origin part in MiB.
    #[arg(long, default_value_t = 16)]
    origin_mib: u64,
    /// Chunk size in 512-byte sectors.
    #[arg(long, default_value_t = 16)]
    chunk_sectors: u32,
    /// Number of operations.
    #[arg(long, default_value_t = 40)]
    ops: u32,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only blocks below this index are written.
    #[arg(long, default_value_t = 256)]
    hot_blocks: u64,
    /// Most snapshots alive at once.
    #[arg(long, default_value_t = 3)]
    max_snapshots: usize,
    /// Where the model goes.
    #[arg(long)]
    model: String,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The log device `record` wrote.
    #[arg(long)]
    log: String,
    /// A disk at least as large as the recorded data disk: it is zeroed, then the log is
    /// replayed onto it.
    #[arg(long)]
    replay: String,
    /// A disk for the transient dm-snapshot that takes the checks' writes.
    #[arg(long)]
    scratch: String,
    /// The model `record` saved.
    #[arg(long)]
    model: String,
    /// Random seed for the sample of points between flushes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Points between flushes to check (default: as many as there are flush/FUA points).
    #[arg(long)]
    between: Option<usize>,
    /// Check only the states at the marks.
    #[arg(long)]
    marks_only: bool,
    /// Negative control: expect of each state what the next mark promises, which a
    /// state before that mark cannot hold; the check must then fail.
    #[arg(long)]
    against_next_mark: bool,
}

/// A device the workload writes: the origin or a snapshot (by id; ids are never reused).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Dev {
    Origin,
    Snap(u32),
}

impl std::fmt::Display for Dev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dev::Origin => write!(f, "o"),
            Dev::Snap(id) => write!(f, "{id}"),
        }
    }
}

impl std::str::FromStr for Dev {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(if s == "o" {
            Dev::Origin
        } else {
            Dev::Snap(s.parse()?)
        })
    }
}

/// What the workload did, each recorded once it returned.
#[derive(Clone, Copy, Debug)]
enum Event {
    /// A 4 KiB block write completed.
    Write { dev: Dev, block: u64, tag: u64 },
    /// `fdatasync` of the device returned.
    Sync(Dev),
    /// `snapshot create` returned.
    Create(u32),
    /// `snapshot delete` returned.
    Delete(u32),
    /// `mark pc-<n>` returned: the mark is in the log after every write completed before.
    Mark(u32),
}

/// The recording's geometry and what happened.
struct Model {
    origin_sectors: u64,
    cow_sectors: u64,
    chunk_sectors: u32,
    hot_blocks: u64,
    events: Vec<Event>,
}

impl Model {
    fn save(&self, path: &str) -> Result<()> {
        let mut text = format!(
            "powercut {} {} {} {}\n",
            self.origin_sectors, self.cow_sectors, self.chunk_sectors, self.hot_blocks
        );
        for e in &self.events {
            match e {
                Event::Write { dev, block, tag } => writeln!(text, "W {dev} {block} {tag}"),
                Event::Sync(dev) => writeln!(text, "S {dev}"),
                Event::Create(id) => writeln!(text, "C {id}"),
                Event::Delete(id) => writeln!(text, "D {id}"),
                Event::Mark(n) => writeln!(text, "M {n}"),
            }?;
        }
        std::fs::write(path, text).with_context(|| format!("write {path}"))
    }

    fn load(path: &str) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
        let mut lines = text.lines();
        let head: Vec<u64> = lines
            .next()
            .and_then(|l| l.strip_prefix("powercut "))
            .context("not a powercut model")?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        ensure!(head.len() == 4, "bad model header");
        let mut events = Vec::new();
        for line in lines {
            let w: Vec<&str> = line.split_whitespace().collect();
            events.push(match w.as_slice() {
                ["W", dev, block, tag] => Event::Write {
                    dev: dev.parse()?,
                    block: block.parse()?,
                    tag: tag.parse()?,
                },
                ["S", dev] => Event::Sync(dev.parse()?),
                ["C", id] => Event::Create(id.parse()?),
                ["D", id] => Event::Delete(id.parse()?),
                ["M", n] => Event::Mark(n.parse()?),
                _ => bail!("bad model line {line:?}"),
            });
        }
        Ok(Self {
            origin_sectors: head[0],
            cow_sectors: head[1],
            chunk_sectors: u32::try_from(head[2])?,
            hot_blocks: head[3],
            events,
        })
    }
}

/// Device-mapper control through its ioctls (include/uapi/linux/dm-ioctl.h), used instead
/// of running dmsetup: under TCG each dmsetup run costs about 80 ms, and the replay sets up
/// and tears down several devices at each of hundreds of crash states.
mod dm {
    use anyhow::{bail, Context, Result};
    use s_snap_guest_tools::AlignedBlock;
    use std::fs::File;
    use std::os::fd::AsRawFd;

    /// `sizeof(struct dm_ioctl)`, where the data of every command starts.
    const HEADER: usize = 312;
    /// `sizeof(struct dm_target_spec)`.
    const SPEC: usize = 40;
    /// Blocks of 4 KiB in the ioctl buffer.
    const BUFFER_BLOCKS: usize = 4;
    /// Commands: number and name.
    const DEV_CREATE: (u64, &str) = (3, "DM_DEV_CREATE");
    const DEV_REMOVE: (u64, &str) = (4, "DM_DEV_REMOVE");
    /// Without DM_SUSPEND_FLAG: resume, making the loaded table live.
    const DEV_SUSPEND: (u64, &str) = (6, "DM_DEV_SUSPEND");
    const TABLE_LOAD: (u64, &str) = (9, "DM_TABLE_LOAD");
    const TABLE_STATUS: (u64, &str) = (12, "DM_TABLE_STATUS");
    const TARGET_MSG: (u64, &str) = (14, "DM_TARGET_MSG");
    const BUFFER_FULL_FLAG: u32 = 1 << 8;

    /// A mapped device: its name and the `major:minor` tables refer to it by.
    pub(crate) struct Device {
        pub(crate) name: String,
        pub(crate) devno: String,
        /// The node devtmpfs made for it.
        pub(crate) path: String,
    }

    /// `/dev/mapper/control`.
    pub(crate) struct Control(File);

    fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
        buf[at..at + bytes.len()].copy_from_slice(bytes);
    }

    fn u32_at(buf: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
    }

    impl Control {
        pub(crate) fn open() -> Result<Self> {
            let f = File::options()
                .read(true)
                .write(true)
                .open("/dev/mapper/control")
                .context("open /dev/mapper/control")?;
            Ok(Self(f))
        }

        /// Issues command `cmd` on device `name` with `data` after the header; returns the
        /// buffer the kernel filled in.
        fn call(
            &self,
            (cmd, cmd_name): (u64, &str),
            name: &str,
            targets: u32,
            data: &[u8],
        ) -> Result<AlignedBlock> {
            let mut block = AlignedBlock::with_blocks(BUFFER_BLOCKS);
            let buf = block.bytes();
            let size = buf.len();
            if name.len() >= 128 || HEADER + data.len() > size {
                bail!("{cmd_name} {name}: too long");
            }
            // version 4.0.0, data_size, data_start, target_count; flags 0; name.
            for (i, v) in [4u32, 0, 0, size as u32, HEADER as u32, targets]
                .iter()
                .enumerate()
            {
                put(buf, 4 * i, &v.to_le_bytes());
            }
            put(buf, 48, name.as_bytes());
            put(buf, HEADER, data);
            // _IOWR(0xfd, cmd, struct dm_ioctl)
            let request = (3 << 30) | ((HEADER as u64) << 16) | (0xfd << 8) | cmd;
            // SAFETY: `buf` is a writable buffer of `data_size` bytes, as the command expects.
            let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, buf.as_mut_ptr()) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error()).context(format!("{cmd_name} {name}"));
            }
            if u32_at(buf, 28) & BUFFER_FULL_FLAG != 0 {
                bail!("{cmd_name} {name}: reply too long");
            }
            Ok(block)
        }

        /// Creates device `name` with the one-target table `table` (`start length type
        /// parameters`, as for dmsetup) and activates it.
        pub(crate) fn create(&self, name: &str, table: &str) -> Result<Device> {
            let mut words = table.splitn(4, ' ');
            let mut num = || -> Result<u64> { Ok(words.next().context("short table")?.parse()?) };
            let (start, len) = (num()?, num()?);
            let kind = words.next().context("no target type")?;
            let params = words.next().unwrap_or("");
            let mut spec = vec![0u8; SPEC];
            put(&mut spec, 0, &start.to_le_bytes());
            put(&mut spec, 8, &len.to_le_bytes());
            put(
                &mut spec,
                24,
                kind.as_bytes().get(..15).unwrap_or(kind.as_bytes()),
            );
            spec.extend(params.as_bytes());
            spec.push(0);
            let mut reply = self.call(DEV_CREATE, name, 0, &[])?;
            let dev = u64::from_le_bytes(reply.bytes()[40..48].try_into()?);
            let loaded = self
                .call(TABLE_LOAD, name, 1, &spec)
                .and_then(|_| self.call(DEV_SUSPEND, name, 0, &[]));
            if let Err(e) = loaded {
                let _ = self.remove(name);
                return Err(e).context(format!("table {table:?}"));
            }
            // new_encode_dev()
            let (major, minor) = ((dev >> 8) & 0xfff, (dev & 0xff) | ((dev >> 12) & 0xfff00));
            Ok(Device {
                name: name.to_string(),
                devno: format!("{major}:{minor}"),
                path: format!("/dev/dm-{minor}"),
            })
        }

        pub(crate) fn remove(&self, name: &str) -> Result<()> {
            self.call(DEV_REMOVE, name, 0, &[]).map(drop)
        }

        /// The status line of the device's (only) target, without start, length and type.
        pub(crate) fn status(&self, name: &str) -> Result<String> {
            let mut reply = self.call(TABLE_STATUS, name, 0, &[])?;
            let buf = reply.bytes();
            let start = u32_at(buf, 16) as usize + SPEC;
            let text = buf[start..].split(|&b| b == 0).next().unwrap_or(&[]);
            Ok(String::from_utf8_lossy(text).into_owned())
        }

        /// `dmsetup message NAME 0 MESSAGE`.
        pub(crate) fn message(&self, name: &str, message: &str) -> Result<()> {
            let mut data = vec![0u8; 8];
            data.extend(message.as_bytes());
            data.push(0);
            self.call(TARGET_MSG, name, 0, &data)
                .with_context(|| format!("message {message:?} to {name}"))
                .map(drop)
        }
    }
}

/// The snapshot ids the status of an s-snap-origin device lists.
fn snapshot_ids(dm: &dm::Control, origin: &str) -> Result<Vec<u32>> {
    // "<count> <id>..." or ": no snapshot".
    let status = dm.status(origin)?;
    let words: Vec<&str> = status.split_whitespace().collect();
    if words.first() == Some(&":") {
        return Ok(Vec::new());
    }
    let count: usize = words.first().context("empty status")?.parse()?;
    let ids = words[1..]
        .iter()
        .map(|w| w.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()?;
    ensure!(ids.len() == count, "status count {count} but ids {ids:?}");
    Ok(ids)
}

/// Writes zeroes over the first `sectors` sectors of `path`.
fn zero(path: &str, sectors: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("open {path}"))?;
    let zeros = vec![0u8; 1 << 20];
    let end = sectors * 512;
    for at in (0..end).step_by(zeros.len()) {
        let n = (end - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
    }
    file.sync_all().with_context(|| format!("zero {path}"))
}

// ------------------------------------------------------------------------------------------
// record
// ------------------------------------------------------------------------------------------

struct Recorder {
    dm: dm::Control,
    origin_sectors: u64,
    /// `major:minor` of the origin slice, for snapshot tables.
    origin_slice: String,
    events: Vec<Event>,
    marks: u32,
    /// Open `O_DIRECT` files of the origin and the active snapshot devices.
    files: BTreeMap<Dev, File>,
    /// Devices written since their last sync.
    dirty: BTreeSet<Dev>,
}

impl Recorder {
    fn mark(&mut self) -> Result<()> {
        let n = self.marks;
        self.dm
            .message(LOG_DEV, &format!("mark {MARK_PREFIX}{n}"))?;
        self.events.push(Event::Mark(n));
        self.marks += 1;
        Ok(())
    }

    fn write(&mut self, dev: Dev, first: u64, tags: &[u64]) -> Result<()> {
        let file = &self.files[&dev];
        let mut buf = AlignedBlock::new();
        for (i, &tag) in tags.iter().enumerate() {
            let block = first + i as u64;
            fill_block(buf.bytes(), tag, block);
            file.write_all_at(buf.bytes(), block * BLOCK as u64)
                .with_context(|| format!("write block {block} of {dev}"))?;
            self.events.push(Event::Write { dev, block, tag });
        }
        self.dirty.insert(dev);
        Ok(())
    }

    fn sync(&mut self, dev: Dev) -> Result<()> {
        self.files[&dev]
            .sync_data()
            .with_context(|| format!("fdatasync {dev}"))?;
        self.events.push(Event::Sync(dev));
        self.dirty.remove(&dev);
        self.mark()
    }

    fn activate(&mut self, id: u32) -> Result<()> {
        let table = format!(
            "0 {} s-snap {} {id}",
            self.origin_sectors, self.origin_slice
        );
        let snap = self.dm.create(&format!("pcsnap{id}"), &table)?;
        self.files.insert(Dev::Snap(id), open_direct(&snap.path)?);
        Ok(())
    }

    fn deactivate(&mut self, id: u32) -> Result<()> {
        // Closed first: an open device cannot be removed.
        if self.files.remove(&Dev::Snap(id)).is_some() {
            self.dirty.remove(&Dev::Snap(id));
            self.dm.remove(&format!("pcsnap{id}"))?;
        }
        Ok(())
    }
}

fn record(args: &RecordArgs) -> Result<()> {
    let (data, chunk_sectors, ops) = (args.data.as_str(), args.chunk_sectors, args.ops);
    let data_sectors = sectors(data)?;
    let origin_sectors = args.origin_mib * 2048;
    ensure!(
        origin_sectors < data_sectors,
        "{data} is too small for the origin and a COW device"
    );
    let cow_sectors = data_sectors - origin_sectors;
    let origin_blocks = origin_sectors * 512 / BLOCK as u64;
    let hot = args.hot_blocks.min(origin_blocks);
    ensure!(hot >= 8, "too few hot blocks");

    // The replay starts from zeroed devices: so does the recording.
    zero(data, data_sectors)?;
    let dm = dm::Control::open()?;
    let log_dev = dm.create(
        LOG_DEV,
        &format!("0 {data_sectors} log-writes {data} {}", args.log),
    )?;
    let origin_slice = dm.create(
        ORIGIN_SLICE,
        &format!("0 {origin_sectors} linear {} 0", log_dev.devno),
    )?;
    let cow_slice = dm.create(
        COW_SLICE,
        &format!("0 {cow_sectors} linear {} {origin_sectors}", log_dev.devno),
    )?;
    let work = dm.create(
        WORK,
        &format!(
            "0 {origin_sectors} s-snap-origin {} {} S {chunk_sectors}",
            origin_slice.devno, cow_slice.devno
        ),
    )?;
    let mut rec = Recorder {
        dm,
        origin_sectors,
        origin_slice: origin_slice.devno.clone(),
        events: Vec::new(),
        marks: 0,
        files: BTreeMap::new(),
        dirty: BTreeSet::new(),
    };
    // Mark 0: the store is formatted and open.
    rec.mark()?;
    rec.files.insert(Dev::Origin, open_direct(&work.path)?);

    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut next_tag = args.seed << 32;
    let mut next_id = 0u32;
    let mut live: Vec<u32> = Vec::new();
    let mut counts = BTreeMap::<&str, u32>::new();
    for op in 0..ops {
        let active: Vec<u32> = rec
            .files
            .keys()
            .filter_map(|d| match d {
                Dev::Snap(id) => Some(*id),
                Dev::Origin => None,
            })
            .collect();
        let kind = match rng.gen_range(0..100) {
            0..=39 => "origin-write",
            40..=59 if !active.is_empty() => "snapshot-write",
            60..=71 => "sync",
            72..=79 if live.len() < args.max_snapshots => "create",
            // Also when no more snapshots may be created.
            72..=86 if live.len() > 1 => "delete",
            87..=94 if live.len() > active.len() => "activate",
            95..=97 if !active.is_empty() => "deactivate",
            _ => "origin-write",
        };
        *counts.entry(kind).or_default() += 1;
        let context = || format!("op {op}: {kind}");
        match kind {
            "origin-write" | "snapshot-write" => {
                let dev = if kind == "origin-write" {
                    Dev::Origin
                } else {
                    Dev::Snap(*active.choose(&mut rng).expect("an active snapshot"))
                };
                let first = rng.gen_range(0..hot);
                let count = rng.gen_range(1..=4).min(hot - first);
                let tags: Vec<u64> = (0..count)
                    .map(|_| {
                        next_tag += 1;
                        next_tag
                    })
                    .collect();
                rec.write(dev, first, &tags).with_context(context)?;
            }
            "sync" => {
                // A device with unsynced writes if there is one, else the origin.
                let dirty: Vec<Dev> = rec.dirty.iter().copied().collect();
                let dev = dirty.choose(&mut rng).copied().unwrap_or(Dev::Origin);
                rec.sync(dev).with_context(context)?;
            }
            "create" => {
                let id = next_id;
                next_id += 1;
                rec.dm
                    .message(WORK, &format!("snapshot create {id}"))
                    .with_context(context)?;
                rec.events.push(Event::Create(id));
                live.push(id);
                rec.mark()?;
            }
            "delete" => {
                let id = live.swap_remove(rng.gen_range(0..live.len()));
                rec.deactivate(id)?;
                rec.dm
                    .message(WORK, &format!("snapshot delete {id}"))
                    .with_context(context)?;
                rec.events.push(Event::Delete(id));
                rec.mark()?;
            }
            "activate" => {
                let idle: Vec<u32> = live
                    .iter()
                    .filter(|id| !active.contains(id))
                    .copied()
                    .collect();
                rec.activate(*idle.choose(&mut rng).expect("an idle snapshot"))
                    .with_context(context)?;
            }
            _ => rec
                .deactivate(*active.choose(&mut rng).expect("an active snapshot"))
                .with_context(context)?,
        }
    }
    // Everything synced at the end, so the last states have all the data to check.
    for dev in rec.dirty.clone() {
        rec.sync(dev)?;
    }
    let ids = snapshot_ids(&rec.dm, WORK)?;
    live.sort_unstable();
    ensure!(
        ids == live,
        "snapshot list {ids:?}, the workload has {live:?}"
    );
    for id in live.iter().copied() {
        rec.deactivate(id)?;
    }
    rec.files.clear();
    let status = rec.dm.status(LOG_DEV)?;
    ensure!(
        !status.contains("logging_disabled"),
        "dm-log-writes stopped logging (log device full?): {status}"
    );
    for dev in [work, cow_slice, origin_slice, log_dev] {
        rec.dm.remove(&dev.name)?;
    }
    let writes = rec
        .events
        .iter()
        .filter(|e| matches!(e, Event::Write { .. }))
        .count();
    println!(
        "ok: recorded {ops} operations {counts:?}: {writes} block writes, {} marks, {} snapshots left",
        rec.marks,
        live.len()
    );
    Model {
        origin_sectors,
        cow_sectors,
        chunk_sectors,
        hot_blocks: hot,
        events: rec.events,
    }
    .save(&args.model)
}

// ------------------------------------------------------------------------------------------
// The log
// ------------------------------------------------------------------------------------------

struct LogEntry {
    /// First sector written, in logical blocks of the logged device.
    sector: u64,
    nr_sectors: u64,
    flags: u64,
    /// The data written, or a mark's text.
    payload: Vec<u8>,
}

impl LogEntry {
    fn describe(&self, sector_size: u64, origin_sectors: u64, chunk_sectors: u32) -> String {
        let mut flags = String::new();
        for (bit, name) in [
            (LOG_FLUSH, "FLUSH"),
            (LOG_FUA, "FUA"),
            (LOG_DISCARD, "DISCARD"),
            (LOG_MARK, "MARK"),
        ] {
            if self.flags & bit != 0 {
                flags += name;
                flags += " ";
            }
        }
        if self.flags & LOG_MARK != 0 {
            return format!("{flags}{:?}", String::from_utf8_lossy(&self.payload));
        }
        if self.nr_sectors == 0 {
            return flags;
        }
        let s = self.sector * sector_size / 512;
        let len = self.nr_sectors * sector_size / 512;
        let p = &self.payload;
        let what = if s < origin_sectors {
            format!("origin sector {s} (block {}), tag {}", s / 8, le64(p, 0))
        } else {
            let c = s - origin_sectors;
            let chunk = c / u64::from(chunk_sectors);
            // Metadata blocks start with a checksum and a magic "SS..".
            if p.len() >= 24 && &p[4..6] == b"SS" {
                let magic = String::from_utf8_lossy(&p[4..8]);
                let txid = le64(p, 16);
                format!(
                    "COW sector {c} (chunk {chunk}): {magic} of block {}, txid {txid}",
                    le64(p, 8)
                )
            } else {
                format!(
                    "COW sector {c} (chunk {chunk}): data, first word {:#x}",
                    le64(p, 0)
                )
            }
        };
        format!("{flags}write {len} sectors at {what}")
    }
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads every entry of a dm-log-writes log; returns the logical block size and the entries.
fn read_log(path: &str) -> Result<(u64, Vec<LogEntry>)> {
    let mut log = BufReader::with_capacity(1 << 20, File::open(path).context("open log")?);
    let mut head = vec![0u8; 512];
    log.read_exact(&mut head)?;
    ensure!(
        le64(&head, 0) == LOG_MAGIC,
        "{path}: no dm-log-writes super block"
    );
    ensure!(
        le64(&head, 8) == LOG_VERSION,
        "{path}: log version {}",
        le64(&head, 8)
    );
    let entries = le64(&head, 16);
    let sector_size = u64::from(u32::from_le_bytes(head[24..28].try_into()?));
    ensure!(
        sector_size >= 512 && sector_size.is_power_of_two(),
        "{path}: sector size {sector_size}"
    );
    let ss = sector_size as usize;
    // The rest of the super block's logical block.
    std::io::copy(
        &mut (&mut log).take(sector_size - 512),
        &mut std::io::sink(),
    )?;
    let mut out = Vec::with_capacity(entries as usize);
    let mut block = vec![0u8; ss];
    for i in 0..entries {
        log.read_exact(&mut block)
            .with_context(|| format!("{path}: entry {i} of {entries}"))?;
        let (sector, nr_sectors, flags, data_len) = (
            le64(&block, 0),
            le64(&block, 8),
            le64(&block, 16),
            le64(&block, 24) as usize,
        );
        let payload = if flags & LOG_MARK != 0 {
            ensure!(data_len <= ss - 32, "entry {i}: mark of {data_len} bytes");
            block[32..32 + data_len].to_vec()
        } else if flags & LOG_DISCARD != 0 {
            Vec::new()
        } else {
            let mut data = vec![0u8; nr_sectors as usize * ss];
            log.read_exact(&mut data)
                .with_context(|| format!("{path}: data of entry {i}"))?;
            data
        };
        out.push(LogEntry {
            sector,
            nr_sectors,
            flags,
            payload,
        });
    }
    Ok((sector_size, out))
}

// ------------------------------------------------------------------------------------------
// What a crash state must hold
// ------------------------------------------------------------------------------------------

/// The tags a block may hold; the first is the one synced (or 0), the others were written
/// later.
type Allowed = Vec<u64>;

/// What a crash state after mark `n` (and before mark `n + 1`) must show.
struct Expect {
    origin: Vec<Allowed>,
    /// Snapshots that must exist, with what their blocks may hold.
    must: BTreeMap<u32, Vec<Allowed>>,
    /// Snapshots that may exist (being created or deleted at the crash), checked if present.
    may: BTreeMap<u32, Vec<Allowed>>,
    /// Of `may`: deleted before the mark with no commit promised since (the documentation
    /// promises none for delete).
    deleted_uncommitted: BTreeSet<u32>,
}

/// Per device and block, the writes as (event index, tag), in order.
type Writes = BTreeMap<Dev, Vec<Vec<(usize, u64)>>>;

struct Oracle<'a> {
    events: &'a [Event],
    hot: usize,
    /// Event index of mark n.
    marks: Vec<usize>,
    writes: Writes,
    /// Event index of each snapshot's create and delete.
    created: BTreeMap<u32, usize>,
    deleted: BTreeMap<u32, usize>,
    /// Where each tag was written (for messages).
    tag_event: HashMap<u64, usize>,
}

impl<'a> Oracle<'a> {
    fn new(model: &'a Model) -> Result<Self> {
        let hot = model.hot_blocks as usize;
        let mut o = Oracle {
            events: &model.events,
            hot,
            marks: Vec::new(),
            writes: BTreeMap::new(),
            created: BTreeMap::new(),
            deleted: BTreeMap::new(),
            tag_event: HashMap::new(),
        };
        o.writes.insert(Dev::Origin, vec![Vec::new(); hot]);
        for (i, e) in model.events.iter().enumerate() {
            match *e {
                Event::Write { dev, block, tag } => {
                    let per_block = o.writes.entry(dev).or_insert_with(|| vec![Vec::new(); hot]);
                    per_block
                        .get_mut(block as usize)
                        .context("write beyond the hot range")?
                        .push((i, tag));
                    o.tag_event.insert(tag, i);
                }
                Event::Mark(n) => {
                    ensure!(n as usize == o.marks.len(), "marks out of order");
                    o.marks.push(i);
                }
                Event::Create(id) => {
                    o.created.insert(id, i);
                }
                Event::Delete(id) => {
                    o.deleted.insert(id, i);
                }
                Event::Sync(_) => {}
            }
        }
        Ok(o)
    }

    fn last_sync(&self, dev: Dev, before: usize) -> Option<usize> {
        (0..before)
            .rev()
            .find(|&i| matches!(self.events[i], Event::Sync(d) if d == dev))
    }

    /// The tag of the last write in `writes` before event `before`, or 0.
    fn last_before(writes: &[(usize, u64)], before: usize) -> u64 {
        writes
            .iter()
            .take_while(|(i, _)| *i < before)
            .last()
            .map_or(0, |&(_, t)| t)
    }

    /// Tags of `writes` with event index in `from..to`.
    fn between(writes: &[(usize, u64)], from: usize, to: usize) -> impl Iterator<Item = u64> + '_ {
        writes
            .iter()
            .filter(move |(i, _)| (from..to).contains(i))
            .map(|&(_, t)| t)
    }

    /// For a crash after mark `n` (None: before mark 0).
    fn expect(&self, n: Option<usize>) -> Expect {
        // Events before `lo` returned before the mark; those before `hi` may have reached
        // the disks.
        let lo = n.map_or(0, |n| self.marks[n]);
        let hi = self
            .marks
            .get(n.map_or(0, |n| n + 1))
            .copied()
            .unwrap_or(self.events.len());
        let origin_sync = self.last_sync(Dev::Origin, lo);
        let ow = &self.writes[&Dev::Origin];
        let origin: Vec<Allowed> = ow
            .iter()
            .map(|w| {
                let synced = origin_sync.map_or(0, |s| Self::last_before(w, s));
                let later = Self::between(w, origin_sync.unwrap_or(0), hi);
                std::iter::once(synced).chain(later).collect()
            })
            .collect();
        let none = vec![Vec::new(); self.hot];
        let mut exp = Expect {
            origin,
            must: BTreeMap::new(),
            may: BTreeMap::new(),
            deleted_uncommitted: BTreeSet::new(),
        };
        for (&id, &c) in &self.created {
            if c >= hi {
                continue;
            }
            let dev = Dev::Snap(id);
            let own = self.writes.get(&dev).unwrap_or(&none);
            let own_sync = self.last_sync(dev, lo);
            let blocks: Vec<Allowed> = (0..self.hot)
                .map(|b| {
                    let own_synced = own_sync
                        .map(|s| Self::last_before(&own[b], s))
                        .filter(|&t| t != 0);
                    if let Some(t) = own_synced {
                        let later = Self::between(&own[b], own_sync.unwrap_or(0), hi);
                        return std::iter::once(t).chain(later).collect();
                    }
                    // The snapshot's own data is not synced: what it inherited from the
                    // origin, which is durable only once the origin was synced after the
                    // create, plus whatever it wrote itself.
                    let inherited: Vec<u64> = match origin_sync {
                        Some(s) if s > c => vec![Self::last_before(&ow[b], c)],
                        _ => {
                            std::iter::once(origin_sync.map_or(0, |s| Self::last_before(&ow[b], s)))
                                .chain(Self::between(&ow[b], origin_sync.unwrap_or(0), c))
                                .collect()
                        }
                    };
                    inherited
                        .into_iter()
                        .chain(Self::between(&own[b], c, hi))
                        .collect()
                })
                .collect();
            match self.deleted.get(&id) {
                Some(&d) if d < lo => {
                    // Deleted before the mark: gone for good once a commit is promised
                    // since (a sync, or a create, which returns after its commit).
                    let committed = self.events[d..lo]
                        .iter()
                        .any(|e| matches!(e, Event::Sync(_) | Event::Create(_)));
                    if !committed {
                        exp.deleted_uncommitted.insert(id);
                        exp.may.insert(id, blocks);
                    }
                }
                // Created before the mark and not deleted before the next one.
                Some(&d) if d >= hi && c < lo => {
                    exp.must.insert(id, blocks);
                }
                None if c < lo => {
                    exp.must.insert(id, blocks);
                }
                // Being created or deleted at the crash.
                _ => {
                    exp.may.insert(id, blocks);
                }
            }
        }
        exp
    }

    /// Where a tag came from, for messages.
    fn origin_of(&self, tag: u64) -> String {
        match self.tag_event.get(&tag) {
            None if tag == 0 => "never written".into(),
            None => "no write of the workload".into(),
            Some(&i) => {
                let after = self.marks.iter().filter(|&&m| m < i).count();
                format!(
                    "{:?} at event {i}, after mark {}",
                    self.events[i],
                    after as i64 - 1
                )
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// replay-check
// ------------------------------------------------------------------------------------------

/// Figures of the replay.
#[derive(Default)]
struct Tally {
    points: usize,
    passed: usize,
    store_clean: usize,
    not_a_store: usize,
    blocks_checked: u64,
    snapshots_checked: usize,
    deleted_present: usize,
    /// Points whose disk state and mark equal those of the point checked before.
    same_state: usize,
    secs_checking: f64,
    secs_tool: f64,
    secs_verify: f64,
}

/// Compares the first `hot` blocks of `path` with `allowed`, and a sample of the rest with
/// zero. Returns the number of blocks read, or the mismatches.
fn verify(
    path: &str,
    allowed: &[Allowed],
    total_blocks: u64,
    oracle: &Oracle<'_>,
) -> Result<std::result::Result<u64, Vec<String>>> {
    let file = open_direct(path)?;
    let mut buf = AlignedBlock::with_blocks(READ_BLOCKS);
    let mut want = vec![0u8; BLOCK];
    let mut bad = Vec::new();
    let mut check = |index: u64, got: &[u8], allowed: &[u64], bad: &mut Vec<String>| {
        let tag = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
        fill_block(&mut want, tag, index);
        if got != want.as_slice() {
            bad.push(format!(
                "block {index}: garbage (first word {tag:#x}), may hold {allowed:?}"
            ));
        } else if !allowed.contains(&tag) {
            bad.push(format!(
                "block {index}: tag {tag} ({}), may hold {allowed:?} (the first was synced)",
                oracle.origin_of(tag)
            ));
        }
    };
    let hot = allowed.len() as u64;
    let mut first = 0;
    while first < hot {
        let n = (hot - first).min(READ_BLOCKS as u64) as usize;
        let bytes = &mut buf.bytes()[..n * BLOCK];
        file.read_exact_at(bytes, first * BLOCK as u64)
            .with_context(|| format!("read {path} at block {first}"))?;
        for (k, got) in bytes.chunks_exact(BLOCK).enumerate() {
            let index = first + k as u64;
            check(index, got, &allowed[index as usize], &mut bad);
        }
        first += n as u64;
    }
    let mut read = hot;
    for index in (hot..total_blocks).filter(|i| i % SAMPLE_STRIDE == 0 || i + 1 == total_blocks) {
        let got = &mut buf.bytes()[..BLOCK];
        file.read_exact_at(got, index * BLOCK as u64)
            .with_context(|| format!("read {path} at block {index}"))?;
        check(index, got, &[0], &mut bad);
        read += 1;
    }
    Ok(if bad.is_empty() { Ok(read) } else { Err(bad) })
}

/// `s-snap-tool check` of a device: (exit status, output).
fn store_check(path: &str, tally: &mut Tally) -> Result<(i32, String)> {
    let t = Instant::now();
    // The tool reads through the page cache: drop what an earlier check left there.
    let dev = File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: BLKFLSBUF takes no argument.
    if unsafe { libc::ioctl(dev.as_raw_fd(), BLKFLSBUF) } < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("BLKFLSBUF {path}"));
    }
    drop(dev);
    let out = Command::new("s-snap-tool")
        .args(["check", path])
        .output()
        .context("run s-snap-tool")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    tally.secs_tool += t.elapsed().as_secs_f64();
    Ok((out.status.code().unwrap_or(-1), text.trim().to_string()))
}

/// The devices of one check, removed (newest first) when dropped.
struct ReplayDevices<'a> {
    dm: &'a dm::Control,
    devices: Vec<dm::Device>,
}

impl ReplayDevices<'_> {
    /// Creates a device; returns its `major:minor` and its path.
    fn add(&mut self, name: &str, table: &str) -> Result<(String, String)> {
        let dev = self.dm.create(name, table)?;
        let out = (dev.devno.clone(), dev.path.clone());
        self.devices.push(dev);
        Ok(out)
    }

    fn remove(&mut self, name: &str) -> Result<()> {
        self.dm.remove(name)?;
        self.devices.retain(|d| d.name != name);
        Ok(())
    }
}

impl Drop for ReplayDevices<'_> {
    fn drop(&mut self) {
        for dev in self.devices.iter().rev() {
            let _ = self.dm.remove(&dev.name);
        }
    }
}

/// Checks one crash state (the replay disk as it is now); returns the problems found.
fn check_point(
    dm: &dm::Control,
    model: &Model,
    oracle: &Oracle<'_>,
    mark: Option<usize>,
    exp: &Expect,
    args: &ReplayArgs,
    tally: &mut Tally,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let total = model.origin_sectors + model.cow_sectors;
    let mut devs = ReplayDevices {
        dm,
        devices: Vec::new(),
    };
    let (base, _) = devs.add(
        REPLAY_SNAP,
        &format!("0 {total} snapshot {} {} N 8", args.replay, args.scratch),
    )?;
    let (origin, _) = devs.add(
        REPLAY_ORIGIN,
        &format!("0 {} linear {base} 0", model.origin_sectors),
    )?;
    let (cow, cow_path) = devs.add(
        REPLAY_COW,
        &format!(
            "0 {} linear {base} {}",
            model.cow_sectors, model.origin_sectors
        ),
    )?;

    let (rc, out) = store_check(&cow_path, tally)?;
    match rc {
        0 => tally.store_clean += 1,
        // Before mark 0 the store may not be formatted yet.
        1 if mark.is_none() && out.contains("not an s-snap exception store") => {
            tally.not_a_store += 1
        }
        _ => problems.push(format!("s-snap-tool check of the crash state: {out}")),
    }

    let table = format!(
        "0 {} s-snap-origin {origin} {cow} S {}",
        model.origin_sectors, model.chunk_sectors
    );
    let work_path = match devs.add(REPLAY_WORK, &table) {
        Ok((_, path)) => path,
        Err(e) => {
            problems.push(format!("the origin table does not load: {e:#}"));
            return Ok(problems);
        }
    };
    let origin_blocks = model.origin_sectors * 512 / BLOCK as u64;
    let t = Instant::now();
    let origin_verified = verify(&work_path, &exp.origin, origin_blocks, oracle)?;
    tally.secs_verify += t.elapsed().as_secs_f64();
    match origin_verified {
        Ok(n) => tally.blocks_checked += n,
        Err(bad) => problems.push(format!(
            "origin: {} blocks wrong: {}",
            bad.len(),
            bad[..bad.len().min(4)].join("; ")
        )),
    }
    let ids = snapshot_ids(dm, REPLAY_WORK)?;
    for &id in exp.must.keys() {
        if !ids.contains(&id) {
            problems.push(format!("snapshot {id} is missing"));
        }
    }
    for &id in &ids {
        let Some(allowed) = exp.must.get(&id).or_else(|| exp.may.get(&id)) else {
            problems.push(format!("snapshot {id} exists but should not"));
            continue;
        };
        if exp.deleted_uncommitted.contains(&id) {
            tally.deleted_present += 1;
        }
        let name = format!("pcrsnap{id}");
        let (_, path) = devs.add(
            &name,
            &format!("0 {} s-snap {origin} {id}", model.origin_sectors),
        )?;
        let t = Instant::now();
        let verified = verify(&path, allowed, origin_blocks, oracle)?;
        tally.secs_verify += t.elapsed().as_secs_f64();
        match verified {
            Ok(n) => {
                tally.blocks_checked += n;
                tally.snapshots_checked += 1;
            }
            Err(bad) => problems.push(format!(
                "snapshot {id}: {} blocks wrong: {}",
                bad.len(),
                bad[..bad.len().min(4)].join("; ")
            )),
        }
        devs.remove(&name)?;
    }
    // What the target left after opening (and finishing an interrupted deletion) must be a
    // clean store too.
    devs.remove(REPLAY_WORK)?;
    let (rc, out) = store_check(&cow_path, tally)?;
    if rc != 0 {
        problems.push(format!("s-snap-tool check after the target ran: {out}"));
    }
    Ok(problems)
}

fn replay_check(args: &ReplayArgs) -> Result<()> {
    let started = Instant::now();
    let (log, replay) = (&args.log, args.replay.as_str());
    let model = Model::load(&args.model)?;
    let oracle = Oracle::new(&model)?;
    let (sector_size, entries) = read_log(log)?;
    let total = model.origin_sectors + model.cow_sectors;
    ensure!(
        sectors(replay)? >= total,
        "{replay} is smaller than the recorded disk"
    );
    ensure!(
        entries.last().map(|e| e.payload.as_slice()) == Some(LOG_END_MARK),
        "the log does not end with the {:?} mark",
        String::from_utf8_lossy(LOG_END_MARK)
    );

    // Which mark each entry follows, checking the marks are the workload's, in order.
    let mut mark_at = Vec::with_capacity(entries.len());
    let mut marks_seen = 0usize;
    for (i, e) in entries.iter().enumerate() {
        if e.flags & LOG_MARK != 0 && e.payload != LOG_END_MARK {
            let text = String::from_utf8_lossy(&e.payload);
            ensure!(
                text == format!("{MARK_PREFIX}{marks_seen}"),
                "entry {i}: mark {text:?}, expected {MARK_PREFIX}{marks_seen}"
            );
            marks_seen += 1;
        }
        mark_at.push(marks_seen.checked_sub(1));
    }
    ensure!(
        marks_seen == oracle.marks.len(),
        "the log holds {marks_seen} marks, the model {}",
        oracle.marks.len()
    );

    let durable = |e: &LogEntry| e.flags & (LOG_FLUSH | LOG_FUA) != 0;
    let mut flush_points: Vec<usize> = (0..entries.len())
        .filter(|&i| durable(&entries[i]))
        .collect();
    let mark_points: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].flags & LOG_MARK != 0)
        .collect();
    let mut others: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].flags & (LOG_FLUSH | LOG_FUA | LOG_MARK) == 0)
        .collect();
    let mut rng = SmallRng::seed_from_u64(args.seed);
    others.shuffle(&mut rng);
    others.truncate(args.between.unwrap_or(flush_points.len()));
    let fua = entries.iter().filter(|e| e.flags & LOG_FUA != 0).count();
    let writes = entries.iter().filter(|e| e.nr_sectors > 0).count();
    let discards = entries
        .iter()
        .filter(|e| e.flags & LOG_DISCARD != 0)
        .count();
    let bytes: usize = entries.iter().map(|e| e.payload.len()).sum();
    println!(
        "ok: log: {} entries ({writes} writes, {} KiB; {} flush/FUA of which {fua} FUA, {} marks, \
         {discards} discards), sector size {sector_size}",
        entries.len(),
        bytes / 1024,
        flush_points.len(),
        mark_points.len(),
    );

    if args.marks_only {
        flush_points.clear();
        others.clear();
    }
    let points: BTreeSet<usize> = flush_points
        .iter()
        .chain(&mark_points)
        .chain(&others)
        .copied()
        .collect();

    let target = OpenOptions::new()
        .read(true)
        .write(true)
        .open(replay)
        .with_context(|| format!("open {replay}"))?;
    // Replaying starts from zeroed devices, as the recording did.
    zero(replay, total)?;
    let dm = dm::Control::open()?;
    let mut tally = Tally::default();
    let mut failures = Vec::new();
    let mut applied = 0;
    // The state and mark of the point checked last, and whether it passed.
    let mut last: Option<(Option<usize>, bool)> = None;
    for &p in &points {
        if tally.points % 50 == 0 && tally.points > 0 {
            println!(
                "replay: {} of {} points, {:.0} s",
                tally.points,
                points.len(),
                started.elapsed().as_secs_f64()
            );
        }
        let changed = apply_entries(&target, &entries, applied..p + 1, sector_size, total * 512)?;
        applied = p + 1;
        tally.points += 1;
        // A flush right after a flush, or a mark: the same crash state as the point before,
        // with the same expectations, so the same outcome.
        match last {
            Some((mark, ok)) if !changed && mark == mark_at[p] => {
                tally.same_state += 1;
                if ok {
                    tally.passed += 1;
                } else {
                    failures.push(p);
                }
                continue;
            }
            _ => {}
        }
        target.sync_data()?;
        let t = Instant::now();
        let expect_mark = if args.against_next_mark {
            Some(mark_at[p].map_or(0, |n| n + 1).min(oracle.marks.len() - 1))
        } else {
            mark_at[p]
        };
        let exp = oracle.expect(expect_mark);
        let problems = check_point(&dm, &model, &oracle, mark_at[p], &exp, args, &mut tally)
            .with_context(|| format!("replay point {p}"))?;
        tally.secs_checking += t.elapsed().as_secs_f64();
        last = Some((mark_at[p], problems.is_empty()));
        if problems.is_empty() {
            tally.passed += 1;
            continue;
        }
        // One line for every failure, details for the first few.
        println!(
            "FAIL: point {p} (after mark {:?}): {}",
            mark_at[p],
            problems.join(" | ")
        );
        if failures.len() < 3 {
            let mut report = format!(
                "details: crash after log entry {p} of {} (after mark {:?}):\n",
                entries.len(),
                mark_at[p]
            );
            for q in problems {
                writeln!(report, "  {q}")?;
            }
            writeln!(report, "  log entries around it:")?;
            for (i, e) in entries
                .iter()
                .enumerate()
                .take(p + 4)
                .skip(p.saturating_sub(8))
            {
                writeln!(
                    report,
                    "  {} {i}: {}",
                    if i == p { "->" } else { "  " },
                    e.describe(sector_size, model.origin_sectors, model.chunk_sectors)
                )?;
            }
            print!("{report}");
        }
        failures.push(p);
    }
    println!(
        "ok: replay points tried {} ({} flush/FUA, {} marks, {} between; {} distinct crash \
         states, the others equal to the point before), passed {}",
        tally.points,
        flush_points.len(),
        mark_points.len(),
        others.len(),
        tally.points - tally.same_state,
        tally.passed
    );
    println!(
        "ok: store clean at {} points, not yet formatted at {}; {} snapshot devices and {} blocks \
         checked; deleted snapshots still present after delete returned (not promised): {}; {:.1} s \
         (checking {:.1} s: s-snap-tool {:.1} s, reading {:.1} s)",
        tally.store_clean,
        tally.not_a_store,
        tally.snapshots_checked,
        tally.blocks_checked,
        tally.deleted_present,
        started.elapsed().as_secs_f64(),
        tally.secs_checking,
        tally.secs_tool,
        tally.secs_verify,
    );
    ensure!(
        failures.is_empty(),
        "{} of {} crash states failed, at log entries {:?}",
        failures.len(),
        tally.points,
        &failures[..failures.len().min(20)]
    );
    Ok(())
}

/// Writes log entries `range` onto `target` (of `size` bytes); returns whether any wrote.
fn apply_entries(
    target: &File,
    entries: &[LogEntry],
    range: std::ops::Range<usize>,
    sector_size: u64,
    size: u64,
) -> Result<bool> {
    let zeros = vec![0u8; 64 << 10];
    let mut changed = false;
    for (i, e) in entries.iter().enumerate().take(range.end).skip(range.start) {
        let at = e.sector * sector_size;
        let len = e.nr_sectors * sector_size;
        ensure!(
            e.flags & LOG_MARK != 0 || at + len <= size,
            "entry {i} writes beyond the disk"
        );
        if e.flags & LOG_DISCARD != 0 {
            // Discarded data may read back as anything; zero is one such thing.
            let mut off = 0;
            while off < len {
                let n = (len - off).min(zeros.len() as u64) as usize;
                target.write_all_at(&zeros[..n], at + off)?;
                off += n as u64;
            }
            changed = true;
        } else if e.flags & LOG_MARK == 0 && !e.payload.is_empty() {
            target.write_all_at(&e.payload, at)?;
            changed = true;
        }
    }
    Ok(changed)
}

fn replay_prefix(args: &ReplayPrefixArgs) -> Result<()> {
    let (sector_size, entries) = read_log(&args.log)?;
    let Some(n) = args.entries else {
        let points: Vec<String> = (0..entries.len())
            .filter(|&i| entries[i].flags & (LOG_FLUSH | LOG_FUA) != 0)
            .map(|i| (i + 1).to_string())
            .collect();
        println!(
            "entries {} flush_points {}",
            entries.len(),
            points.join(" ")
        );
        return Ok(());
    };
    ensure!(n <= entries.len(), "the log has {} entries", entries.len());
    let replay = args.replay.as_deref().context("--entries needs --replay")?;
    let target = OpenOptions::new()
        .write(true)
        .open(replay)
        .with_context(|| format!("open {replay}"))?;
    apply_entries(&target, &entries, 0..n, sector_size, sectors(replay)? * 512)?;
    target.sync_all()?;
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Record(args) => record(&args),
        Cmd::ReplayCheck(args) => replay_check(&args),
        Cmd::Replay(args) => replay_prefix(&args),
    }
}
