// SPDX-License-Identifier: GPL-2.0

//! A model-checked workload for the shared snapshot targets that is meant to
//! be killed: the guest side of the VM kill test.
//!
//! `run` first checks what the previous boot left (see below), then writes
//! tagged 4 KiB blocks with `O_DIRECT` to the origin and to writable snapshots
//! and creates, deletes, activates and deactivates snapshots, at random but
//! reproducibly from `--seed` and `--boot`, until the VM is killed.  Once its
//! workload is running it prints `@@S-SNAP ARMED`, the line after which the
//! VM harness may kill the VM, and an operation that hangs is reported on a
//! `FAIL:` line.  `verify` only checks.
//!
//! **What was acknowledged.**  After every `fdatasync` of the devices written
//! since the previous one, the program records the model (what every device
//! holds, block by block) on a spare disk, in one of two alternating slots
//! with a sequence number and a checksum, and `fdatasync`s that disk: a record
//! torn by the kill fails its checksum and the other slot, one sync older, is
//! used.  A snapshot create or delete is preceded by a sync and a record naming
//! it as *pending*, and followed by a record of its result.
//!
//! **What may have changed since.**  Every block write uses a new tag that
//! names its boot, a sequence number and the device written, and the block's
//! contents are a function of tag and block index, so each tag is written to
//! exactly one block of one device.  The writes issued after the last record
//! are therefore exactly the tags of that record's boot, naming the device,
//! with a sequence number from the record's on (and at most
//! [`MAX_UNSYNCED_WRITES`] writes later, when a sync is forced).  After a kill,
//! each block of each device must hold its recorded tag or one of those; a
//! snapshot keeps what it was created with plus writes to its own device, so an
//! origin write never shows through.  The snapshot list must be the recorded
//! one, except that the pending snapshot may or may not exist; if it exists,
//! its contents follow the same rule (no write was issued after the pending
//! record: a created snapshot equals the recorded origin).  The workload then
//! continues from what it read back.

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use s_snap_guest_tools::{block_tag, fill_block, open_direct, AlignedBlock, Devices, Rig, BLOCK};

const RECORD_MAGIC: &[u8; 8] = b"SSNAPCRS";
/// Bytes of one record slot on the model disk; slot `n % 2` holds record `n`.
const SLOT_BYTES: u64 = 1 << 20;
/// The device field of a tag written to the origin (snapshot ids are smaller).
const ORIGIN_DEV: u32 = u32::MAX;
/// Most blocks one write covers.
const MAX_WRITE_BLOCKS: u64 = 8;
/// A sync is forced after this many writes, which bounds the tags that may
/// appear after a kill.
const MAX_UNSYNCED_WRITES: u32 = 16;
/// An operation still running after this long is reported as a hang (they
/// take well under a second): the kill would otherwise hide it.
const STALL: Duration = Duration::from_secs(4);

#[derive(Parser)]
#[command(
    about = "Killable workload on s-snap devices, checked after reboot against a durable model"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args)]
struct Common {
    #[command(flatten)]
    devices: Devices,
    /// Spare disk holding the records of the acknowledged model.
    #[arg(long)]
    model: String,
    /// Boot number, 1 for the first (tags name it; 1..255).
    #[arg(long)]
    boot: u32,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check what the previous boot left (unless this is the first), then run
    /// random operations, recording the model at every sync.
    Run {
        #[command(flatten)]
        common: Common,
        /// Random seed (with the boot number, determines the operations).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Number of operations (the VM is meant to be killed before the end).
        #[arg(long, default_value_t = 100_000)]
        ops: u32,
        /// Most snapshots alive at once.
        #[arg(long, default_value_t = 4)]
        max_snapshots: usize,
    },
    /// Check what the previous boot left and print the figures of all boots.
    Verify {
        #[command(flatten)]
        common: Common,
    },
}

/// A tag: boot (8 bits), sequence number in the boot (24 bits), device (32 bits).
fn tag(boot: u32, seq: u32, dev: u32) -> u64 {
    u64::from(boot) << 56 | u64::from(seq) << 32 | u64::from(dev)
}

fn tag_boot(tag: u64) -> u32 {
    (tag >> 56) as u32
}

fn tag_seq(tag: u64) -> u32 {
    (tag >> 32) as u32 & 0xff_ffff
}

fn tag_dev(tag: u64) -> u32 {
    tag as u32
}

/// A snapshot operation that was issued after a record, or none.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pending {
    None,
    Create(u32),
    Delete(u32),
}

/// What a record holds: the acknowledged model and the run's figures so far.
#[derive(Clone)]
struct State {
    /// The boot that wrote the record.
    boot: u32,
    /// Tags of `boot` with a sequence number from this on were not yet issued.
    next_seq: u32,
    pending: Pending,
    /// Snapshot ids are never reused: the next create uses this one.
    next_id: u32,
    origin: Vec<u64>,
    snapshots: BTreeMap<u32, Vec<u64>>,
    /// Operations done up to the last record of each boot.
    ops_per_boot: Vec<u32>,
    /// Checks of a killed boot's state, and the blocks they read back.
    kills_verified: u32,
    blocks_verified: u64,
}

/// FNV-1a: enough to tell a torn record from a whole one.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl State {
    fn encode(&self) -> Vec<u8> {
        let (kind, id) = match self.pending {
            Pending::None => (0, 0),
            Pending::Create(id) => (1, id),
            Pending::Delete(id) => (2, id),
        };
        let mut words = vec![
            u64::from(self.boot),
            u64::from(self.next_seq),
            kind,
            u64::from(id),
            u64::from(self.next_id),
            u64::from(self.kills_verified),
            self.blocks_verified,
            self.ops_per_boot.len() as u64,
        ];
        words.extend(self.ops_per_boot.iter().map(|&n| u64::from(n)));
        words.push(self.origin.len() as u64);
        words.extend(&self.origin);
        words.push(self.snapshots.len() as u64);
        for (&id, tags) in &self.snapshots {
            words.push(u64::from(id));
            words.extend(tags);
        }
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let mut words = bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
        let mut next = || words.next().context("short record");
        let boot = u32::try_from(next()?)?;
        let next_seq = u32::try_from(next()?)?;
        let kind = next()?;
        let id = u32::try_from(next()?)?;
        let pending = match kind {
            0 => Pending::None,
            1 => Pending::Create(id),
            2 => Pending::Delete(id),
            _ => bail!("bad pending kind {kind}"),
        };
        let next_id = u32::try_from(next()?)?;
        let kills_verified = u32::try_from(next()?)?;
        let blocks_verified = next()?;
        let boots = next()?;
        let ops_per_boot = (0..boots)
            .map(|_| Ok(u32::try_from(next()?)?))
            .collect::<Result<_>>()?;
        let blocks = next()?;
        let origin = (0..blocks).map(|_| next()).collect::<Result<_>>()?;
        let mut snapshots = BTreeMap::new();
        for _ in 0..next()? {
            let id = u32::try_from(next()?)?;
            snapshots.insert(id, (0..blocks).map(|_| next()).collect::<Result<_>>()?);
        }
        Ok(Self {
            boot,
            next_seq,
            pending,
            next_id,
            origin,
            snapshots,
            ops_per_boot,
            kills_verified,
            blocks_verified,
        })
    }
}

/// The two record slots on the model disk.
struct Journal {
    file: File,
    /// Sequence number of the newest record.
    seq: u64,
}

impl Journal {
    /// Open the model disk; return the newest whole record, if any.
    fn open(path: &str) -> Result<(Self, Option<State>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("open {path}"))?;
        let mut newest: Option<(u64, State)> = None;
        for slot in 0..2 {
            let mut head = [0u8; 32];
            file.read_exact_at(&mut head, slot * SLOT_BYTES)?;
            if &head[..8] != RECORD_MAGIC {
                continue;
            }
            let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
            let (seq, len, sum) = (word(8), word(16), word(24));
            if len > SLOT_BYTES - 32 {
                continue;
            }
            let mut body = vec![0u8; len as usize];
            file.read_exact_at(&mut body, slot * SLOT_BYTES + 32)?;
            if checksum(&body) != sum || seq % 2 != slot {
                println!("record slot {slot}: torn (sequence {seq}), not used");
                continue;
            }
            if newest.as_ref().is_none_or(|(s, _)| seq > *s) {
                newest = Some((seq, State::decode(&body)?));
            }
        }
        let seq = newest.as_ref().map_or(0, |(s, _)| *s);
        Ok((Self { file, seq }, newest.map(|(_, state)| state)))
    }

    /// Write `state` as the next record, durably.
    fn write(&mut self, state: &State) -> Result<()> {
        let body = state.encode();
        ensure!(
            body.len() as u64 <= SLOT_BYTES - 32,
            "model too large for a record slot"
        );
        self.seq += 1;
        let mut bytes = RECORD_MAGIC.to_vec();
        for word in [self.seq, body.len() as u64, checksum(&body)] {
            bytes.extend(word.to_le_bytes());
        }
        bytes.extend(body);
        self.file.write_all_at(&bytes, self.seq % 2 * SLOT_BYTES)?;
        self.file.sync_data().context("fdatasync the model disk")
    }
}

/// Read every block of `path`: its tag, or `None` if it holds no written block.
fn read_tags(path: &str, blocks: usize) -> Result<Vec<Option<u64>>> {
    let file = open_direct(path)?;
    let mut buf = AlignedBlock::new();
    let mut scratch = vec![0u8; BLOCK];
    (0..blocks as u64)
        .map(|index| {
            file.read_exact_at(buf.bytes(), index * BLOCK as u64)
                .with_context(|| format!("read block {index} of {path}"))?;
            Ok(block_tag(buf.bytes(), index, &mut scratch))
        })
        .collect()
}

/// What one check of a killed boot's state found.
struct Checked {
    /// The devices as read back: the model to continue from.
    origin: Vec<u64>,
    snapshots: BTreeMap<u32, Vec<u64>>,
    blocks: u64,
    /// Blocks that hold a write issued after the last record.
    later: u64,
}

/// Compare one device read back with its recorded tags (see the module comment).
fn check_device(
    rec: &State,
    dev: u32,
    path: &str,
    recorded: &[u64],
    found: &[Option<u64>],
    later: &mut u64,
) -> Result<Vec<u64>> {
    let after_record = |t: u64| {
        tag_boot(t) == rec.boot
            && tag_dev(t) == dev
            && tag_seq(t) >= rec.next_seq
            && u64::from(tag_seq(t) - rec.next_seq)
                < u64::from(MAX_UNSYNCED_WRITES) * MAX_WRITE_BLOCKS
    };
    let mut bad = Vec::new();
    let mut tags = Vec::with_capacity(found.len());
    for (index, (&want, &got)) in recorded.iter().zip(found).enumerate() {
        match got {
            Some(t) if t == want => tags.push(t),
            Some(t) if t != 0 && after_record(t) => {
                *later += 1;
                tags.push(t);
            }
            _ => {
                let got = got.map_or("no written block".into(), |t| format!("tag {t:#x}"));
                bad.push(format!(
                    "block {index}: recorded tag {want:#x}, found {got}"
                ));
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "{path}: {} of {} blocks hold neither the acknowledged data nor a later write, e.g. {}",
            bad.len(),
            found.len(),
            bad[..bad.len().min(5)].join("; ")
        );
    }
    Ok(tags)
}

/// Load the origin and check every device against the record `rec`.
fn check_after_kill(rig: &mut Rig, rec: &State) -> Result<Checked> {
    let blocks = rec.origin.len();
    let ids = rig.snapshot_ids()?;
    for id in &ids {
        ensure!(
            rec.snapshots.contains_key(id) || rec.pending == Pending::Create(*id),
            "snapshot {id} exists but was never created (recorded: {:?}, pending {:?})",
            rec.snapshots.keys().collect::<Vec<_>>(),
            rec.pending
        );
    }
    for id in rec.snapshots.keys() {
        ensure!(
            ids.contains(id) || rec.pending == Pending::Delete(*id),
            "snapshot {id} was lost (present: {ids:?}, pending {:?})",
            rec.pending
        );
    }
    let mut later = 0;
    let path = Rig::origin_path();
    let found = read_tags(&path, blocks)?;
    let origin = check_device(rec, ORIGIN_DEV, &path, &rec.origin, &found, &mut later)?;
    let mut snapshots = BTreeMap::new();
    for &id in &ids {
        // A snapshot created after the record holds the recorded origin.
        let recorded = rec.snapshots.get(&id).unwrap_or(&rec.origin);
        let path = rig.activate(id)?;
        let found = read_tags(&path, blocks)?;
        snapshots.insert(
            id,
            check_device(rec, id, &path, recorded, &found, &mut later)?,
        );
        rig.deactivate(id)?;
    }
    let pending = match rec.pending {
        Pending::None => String::new(),
        Pending::Create(id) | Pending::Delete(id) => format!(
            ", pending {} of snapshot {id}: {}",
            if matches!(rec.pending, Pending::Create(_)) {
                "create"
            } else {
                "delete"
            },
            if ids.contains(&id) {
                "present"
            } else {
                "absent"
            }
        ),
    };
    let checked = Checked {
        blocks: (blocks * (1 + ids.len())) as u64,
        origin,
        snapshots,
        later,
    };
    println!(
        "ok: state of boot {} after the kill: {} ops acknowledged; origin and {} snapshots, \
         {} blocks verified, {} of them hold a write issued after the last sync{pending}",
        rec.boot,
        rec.ops_per_boot.last().copied().unwrap_or(0),
        ids.len(),
        checked.blocks,
        checked.later,
    );
    Ok(checked)
}

/// The workload of one boot.
struct Workload {
    rig: Rig,
    journal: Journal,
    /// The model as issued; what is acknowledged right after a sync.
    state: State,
    origin: File,
    snapshot_files: BTreeMap<u32, File>,
    /// Devices written since the last sync.
    dirty: BTreeSet<u32>,
    unsynced_writes: u32,
    ops_done: u32,
    buf: AlignedBlock,
}

impl Workload {
    /// `fdatasync` the written devices, then record the model with `pending`.
    fn sync(&mut self, pending: Pending) -> Result<()> {
        for dev in std::mem::take(&mut self.dirty) {
            let file = if dev == ORIGIN_DEV {
                &self.origin
            } else {
                &self.snapshot_files[&dev]
            };
            file.sync_data()
                .with_context(|| format!("fdatasync device {dev:#x}"))?;
        }
        self.unsynced_writes = 0;
        self.state.pending = pending;
        *self.state.ops_per_boot.last_mut().expect("this boot") = self.ops_done;
        self.journal.write(&self.state)
    }

    fn write(&mut self, dev: u32, first: u64, count: u64) -> Result<()> {
        let boot = self.state.boot;
        for index in first..first + count {
            ensure!(
                self.state.next_seq < 1 << 24,
                "tag sequence numbers exhausted"
            );
            let tag = tag(boot, self.state.next_seq, dev);
            self.state.next_seq += 1;
            fill_block(self.buf.bytes(), tag, index);
            let (file, tags) = if dev == ORIGIN_DEV {
                (&self.origin, &mut self.state.origin)
            } else {
                (
                    &self.snapshot_files[&dev],
                    self.state.snapshots.get_mut(&dev).context("model")?,
                )
            };
            file.write_all_at(self.buf.bytes(), index * BLOCK as u64)
                .with_context(|| format!("write block {index} of device {dev:#x}"))?;
            tags[index as usize] = tag;
        }
        self.dirty.insert(dev);
        self.unsynced_writes += 1;
        if self.unsynced_writes >= MAX_UNSYNCED_WRITES {
            self.sync(Pending::None)?;
        }
        Ok(())
    }

    fn activate(&mut self, id: u32) -> Result<()> {
        let path = self.rig.activate(id)?;
        self.snapshot_files.insert(id, open_direct(&path)?);
        Ok(())
    }

    /// Remove a snapshot device, after a sync if it was written to.
    fn deactivate(&mut self, id: u32) -> Result<()> {
        if self.dirty.contains(&id) {
            self.sync(Pending::None)?;
        }
        self.snapshot_files.remove(&id);
        self.rig.deactivate(id)
    }

    fn create(&mut self) -> Result<()> {
        let id = self.state.next_id;
        self.state.next_id += 1;
        self.sync(Pending::Create(id))?;
        self.rig.message(&format!("snapshot create {id}"))?;
        let origin = self.state.origin.clone();
        self.state.snapshots.insert(id, origin);
        self.sync(Pending::None)
    }

    fn delete(&mut self, id: u32) -> Result<()> {
        self.sync(Pending::Delete(id))?;
        self.deactivate(id)?;
        self.rig.message(&format!("snapshot delete {id}"))?;
        self.state.snapshots.remove(&id);
        self.sync(Pending::None)
    }

    fn run(&mut self, rng: &mut SmallRng, ops: u32, max_snapshots: usize) -> Result<()> {
        let blocks = self.state.origin.len() as u64;
        let pick = |rng: &mut SmallRng, ids: Vec<u32>| ids[rng.gen_range(0..ids.len())];
        let mut counts = BTreeMap::<&str, u32>::new();
        let current = watch_for_stalls();
        for op in 0..ops {
            let active: Vec<u32> = self.snapshot_files.keys().copied().collect();
            let inactive: Vec<u32> = (self.state.snapshots.keys())
                .filter(|id| !self.snapshot_files.contains_key(id))
                .copied()
                .collect();
            let kind = match rng.gen_range(0..100) {
                0..=44 => "origin-write",
                45..=59 if !active.is_empty() => "snapshot-write",
                60..=67 => "sync",
                68..=74 if self.state.snapshots.len() < max_snapshots => "create",
                75..=79 if !self.state.snapshots.is_empty() => "delete",
                80..=87 if !inactive.is_empty() => "activate",
                88..=91 if !active.is_empty() => "deactivate",
                _ => "origin-write",
            };
            *current.lock().expect("watchdog") = Some((op, kind, Instant::now()));
            match kind {
                "origin-write" | "snapshot-write" => {
                    let first = rng.gen_range(0..blocks);
                    let count = rng.gen_range(1..=MAX_WRITE_BLOCKS).min(blocks - first);
                    let dev = if kind == "origin-write" {
                        ORIGIN_DEV
                    } else {
                        pick(rng, active)
                    };
                    self.write(dev, first, count)
                }
                "sync" => self.sync(Pending::None),
                "create" => self.create(),
                "delete" => {
                    let id = pick(rng, self.state.snapshots.keys().copied().collect());
                    self.delete(id)
                }
                "activate" => self.activate(pick(rng, inactive)),
                _ => self.deactivate(pick(rng, active)),
            }
            .with_context(|| format!("op {op}: {kind}"))?;
            *current.lock().expect("watchdog") = None;
            *counts.entry(kind).or_default() += 1;
            self.ops_done = op + 1;
            if self.ops_done.is_multiple_of(100) {
                println!(
                    "run: boot {}: {} ops, {} snapshots, {} records",
                    self.state.boot,
                    self.ops_done,
                    self.state.snapshots.len(),
                    self.journal.seq
                );
            }
        }
        self.sync(Pending::None)?;
        println!(
            "run: boot {}: all {ops} operations done {counts:?} (the VM was not killed)",
            self.state.boot
        );
        Ok(())
    }
}

/// The operation in progress: number, kind and start.
type Current = Arc<Mutex<Option<(u32, &'static str, Instant)>>>;

/// Report, once, an operation that runs longer than [`STALL`], with a line the
/// VM harness fails a killed boot on.
fn watch_for_stalls() -> Current {
    let current = Current::default();
    let watched = current.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        if let Some((op, kind, since)) = *watched.lock().expect("watchdog") {
            if since.elapsed() > STALL {
                println!("FAIL: op {op} ({kind}) has not returned after {STALL:?}");
                return;
            }
        }
    });
    current
}

/// Load the origin and, unless this is the first boot, check it against the
/// newest record; return the rig and the state to continue from.
fn start(common: &Common) -> Result<(Rig, Journal, Option<State>)> {
    ensure!((1..256).contains(&common.boot), "boot must be 1..255");
    let (journal, rec) = Journal::open(&common.model)?;
    let mut rig = Rig::load_origin(&common.devices).context("load the origin table")?;
    let Some(rec) = rec else {
        ensure!(
            common.boot == 1,
            "no record on {} after boot 1",
            common.model
        );
        return Ok((rig, journal, None));
    };
    ensure!(
        rec.boot < common.boot,
        "the newest record is of boot {}",
        rec.boot
    );
    let checked = check_after_kill(&mut rig, &rec)?;
    let state = State {
        origin: checked.origin,
        snapshots: checked.snapshots,
        kills_verified: rec.kills_verified + 1,
        blocks_verified: rec.blocks_verified + checked.blocks,
        ..rec
    };
    Ok((rig, journal, Some(state)))
}

fn run(common: &Common, seed: u64, ops: u32, max_snapshots: usize) -> Result<()> {
    let (rig, journal, state) = start(common)?;
    let blocks = (rig.size * 512 / BLOCK as u64) as usize;
    let mut state = state.unwrap_or(State {
        boot: 0,
        next_seq: 0,
        pending: Pending::None,
        next_id: 0,
        origin: vec![0; blocks],
        snapshots: BTreeMap::new(),
        ops_per_boot: Vec::new(),
        kills_verified: 0,
        blocks_verified: 0,
    });
    state.boot = common.boot;
    state.next_seq = 0;
    state.ops_per_boot.push(0);
    let mut workload = Workload {
        origin: open_direct(&Rig::origin_path())?,
        rig,
        journal,
        state,
        snapshot_files: BTreeMap::new(),
        // What was read back becomes acknowledged: make it durable first.
        dirty: BTreeSet::from([ORIGIN_DEV]),
        unsynced_writes: 0,
        ops_done: 0,
        buf: AlignedBlock::new(),
    };
    workload.sync(Pending::None)?;
    println!("@@S-SNAP ARMED");
    let mut rng = SmallRng::seed_from_u64(seed ^ u64::from(common.boot) << 32);
    workload.run(&mut rng, ops, max_snapshots)
}

fn verify(common: &Common) -> Result<()> {
    let (mut rig, _, state) = start(common)?;
    let state = state.context("nothing recorded to verify")?;
    println!(
        "ok: {} boots, {} kills, every state after a kill verified; ops acknowledged per \
         killed boot {:?}; {} blocks verified",
        common.boot, state.kills_verified, state.ops_per_boot, state.blocks_verified
    );
    rig.remove_all()
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            common,
            seed,
            ops,
            max_snapshots,
        } => run(&common, seed, ops, max_snapshots),
        Cmd::Verify { common } => verify(&common),
    }
}
