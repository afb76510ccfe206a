// SPDX-License-Identifier: GPL-2.0

//! Bounded-time concurrent stress of the shared snapshot targets, checked against a model.
//!
//! For `--seconds`, these threads run at once on one `s-snap-origin` device:
//!
//! - origin writers, each owning a disjoint set of origin blocks, write tagged runs with
//!   `O_DIRECT` and read their own blocks back;
//! - snapshot slots, each with one active `s-snap` device, read and write random runs, and
//!   every few seconds verify the whole device, remove it, delete the snapshot, create a new
//!   one and activate it;
//! - a manager creates and deletes a pool of snapshots without devices, activating half of
//!   them to verify them before deletion, and checks `usage` and `status` meanwhile.
//!
//! The model.  Every block carries a tag naming the write that produced it (see
//! [`describe`]).  The origin model is exact because each origin block has one writer.
//! Snapshot creation races origin writes on purpose (the kernel quiesces the origin, see
//! shared-snapshot.rst): a writer's writes that completed before the `snapshot create`
//! message was sent are in the snapshot, those issued after it returned are not, and of those
//! in between (the creation window) the snapshot holds a prefix in issue order, because a
//! writer issues a write only after its previous one completed.  The write at the cut may be split (dm splits
//! bios at chunk boundaries), so each of its blocks may be old or new.  Every snapshot read
//! narrows the cuts still possible; a read that no cut explains is an error, and a block once
//! read must read the same until the snapshot itself writes it.
//!
//! At the end every device is verified, the origin table is reloaded and everything is
//! verified again, the `usage` figures are compared with those the model predicts
//! (see [`check_usage`]), every snapshot is deleted and the store must be back to its size
//! after format.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use s_snap_guest_tools::{
    dmsetup, fill_block, open_direct, sectors, status_snapshot_ids, AlignedBlock, BLOCK,
    ORIGIN_NAME,
};

/// The longest run one read or write covers, in blocks.
const MAX_RUN: u64 = 16;
/// Origin blocks above the middle are owned in stripes of this many blocks, so origin writes
/// there span several chunks; below it, block by block, so writers share every chunk.
const STRIPE: u64 = 8;
/// Half of the I/O goes to this many blocks around the middle, so that origin writes, copies
/// and snapshot I/O meet on the same chunks.
const HOT_BLOCKS: u64 = 256;
/// Origin writes each writer remembers for the windows of snapshot creations.
const LOG_KEEP: usize = 1 << 16;
/// Tag sources (top byte of a tag).
const ORIGIN_SOURCE: u64 = 0x10;
const SLOT_SOURCE: u64 = 0x20;

#[derive(Parser)]
/// Timed concurrent I/O on an s-snap origin and snapshots while snapshots are created and
/// deleted, checked against a model.
struct Cli {
    /// Origin block device.
    #[arg(long, default_value = "/dev/vda")]
    origin: String,
    /// COW block device (must hold a fresh store or zeroes).
    #[arg(long, default_value = "/dev/vdb")]
    cow: String,
    /// Chunk size in 512-byte sectors.
    #[arg(long, default_value_t = 16)]
    chunk_sectors: u64,
    /// How long the concurrent phase runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Random seed: the operations each thread chooses follow from it (their interleaving
    /// does not).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Origin writer threads.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Snapshot slots: threads with an active snapshot device each.
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Most snapshots without a device the manager keeps.
    #[arg(long, default_value_t = 4)]
    pool: usize,
}

/// A tag: who wrote the block (top byte) and the source's block sequence number.
fn tag(source: u64, seq: u64) -> u64 {
    source << 56 | seq
}

/// A tag in words, for error messages.
fn describe(tag: u64) -> String {
    let seq = tag & ((1 << 56) - 1);
    match tag >> 56 {
        0 if tag == 0 => "zeroes (never written)".into(),
        s if (ORIGIN_SOURCE..ORIGIN_SOURCE + 16).contains(&s) => {
            format!("origin writer {} block #{seq}", s - ORIGIN_SOURCE)
        }
        s if (SLOT_SOURCE..SLOT_SOURCE + 16).contains(&s) => {
            format!("slot {} block #{seq}", s - SLOT_SOURCE)
        }
        _ => format!("unknown tag {tag:#x}"),
    }
}

/// The tag of block `index` as read in `data`, if `data` is exactly what `fill_block` wrote
/// for that tag at that index.
fn block_tag(data: &[u8], index: u64, scratch: &mut [u8]) -> Result<u64> {
    let tag = u64::from_le_bytes(data[..8].try_into()?);
    fill_block(scratch, tag, index);
    if data != scratch {
        let at = u64::from_le_bytes(data[8..16].try_into()?);
        bail!(
            "block {index} is not a whole tagged block: header says {} of block {at}",
            describe(tag)
        );
    }
    Ok(tag)
}

/// One write: tags of consecutive blocks from `start`.
#[derive(Clone)]
struct Run {
    start: u64,
    tags: Vec<u64>,
}

impl Run {
    fn tag_at(&self, block: u64) -> Option<u64> {
        let i = block.checked_sub(self.start)? as usize;
        self.tags.get(i).copied()
    }
}

/// The writes an origin writer issued, by issue number.
#[derive(Default)]
struct WriteLog {
    /// Issue number of `runs[0]`.
    first: u64,
    runs: VecDeque<Run>,
}

impl WriteLog {
    fn issued(&self) -> u64 {
        self.first + self.runs.len() as u64
    }

    /// Records a write about to be issued; its issue number.
    fn push(&mut self, run: Run) -> u64 {
        if self.runs.len() == LOG_KEEP {
            self.runs.pop_front();
            self.first += 1;
        }
        self.runs.push_back(run);
        self.issued() - 1
    }

    fn range(&self, lo: u64, hi: u64) -> Result<Vec<Run>> {
        ensure!(lo >= self.first, "a creation window outlived the write log");
        let skip = (lo - self.first) as usize;
        Ok(self
            .runs
            .iter()
            .skip(skip)
            .take((hi - lo) as usize)
            .cloned()
            .collect())
    }
}

/// The origin's content, and how many writes of each writer it holds.
struct OriginModel {
    tags: Vec<u64>,
    completed: Vec<u64>,
}

/// One writer's writes that were in the window of a snapshot creation.
struct Window {
    writes: Vec<Run>,
    /// `cuts[k]`: the snapshot may hold writes `..k` whole, any part of write `k`, none after.
    cuts: Vec<bool>,
}

impl Window {
    fn new(writes: Vec<Run>) -> Self {
        let cuts = vec![true; writes.len() + 1];
        Self { writes, cuts }
    }

    /// Keeps the cuts under which `block` (holding `base` before the window) reads `found`;
    /// whether any is left.
    fn observe(&mut self, block: u64, base: u64, found: u64) -> bool {
        let mut whole = base;
        let mut any = false;
        for (k, cut) in self.cuts.iter_mut().enumerate() {
            let partial = self.writes.get(k).and_then(|w| w.tag_at(block));
            *cut &= found == whole || Some(found) == partial;
            any |= *cut;
            if let Some(t) = partial {
                whole = t;
            }
        }
        any
    }
}

/// What one snapshot holds.
struct SnapModel {
    id: u32,
    /// Each block's tag where `known`, else its tag before the creation window.
    tags: Vec<u64>,
    known: Vec<bool>,
    /// Per origin writer.
    windows: Vec<Window>,
    /// Chunks the snapshot wrote (each has a private exception).
    written_chunks: BTreeSet<u64>,
}

#[derive(Default)]
struct Stats {
    origin_writes: AtomicU64,
    origin_blocks_written: AtomicU64,
    origin_reads: AtomicU64,
    snap_writes: AtomicU64,
    snap_blocks_written: AtomicU64,
    snap_reads: AtomicU64,
    creates: AtomicU64,
    raced_creates: AtomicU64,
    raced_writes: AtomicU64,
    /// Of the writes in creation windows of snapshots verified whole: held by the snapshot
    /// for certain, missing for certain, either (no block read tells).
    raced_in: AtomicU64,
    raced_out: AtomicU64,
    raced_open: AtomicU64,
    deletes: AtomicU64,
    activations: AtomicU64,
    verified_blocks: AtomicU64,
    usage_checks: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The `usage` reply.
struct Usage {
    fields: BTreeMap<String, u64>,
    /// id -> (chunks, active)
    snapshots: BTreeMap<u32, (u64, bool)>,
}

impl Usage {
    fn get(&self, name: &str) -> Result<u64> {
        self.fields
            .get(name)
            .copied()
            .with_context(|| format!("usage reply lacks {name}"))
    }
}

struct Shared {
    origin_dev: String,
    sectors: u64,
    blocks: u64,
    chunk_blocks: u64,
    writers: usize,
    deadline: Instant,
    stop: AtomicBool,
    origin: Mutex<OriginModel>,
    logs: Vec<Mutex<WriteLog>>,
    next_id: AtomicU32,
    stats: Stats,
}

impl Shared {
    /// Any error stops every thread, so that it is reported at once.
    fn stop_on_error<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.stop.store(true, Ordering::Relaxed);
        }
        result
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }

    fn origin_path() -> String {
        format!("/dev/mapper/{ORIGIN_NAME}")
    }

    /// The middle of the origin: block-owned below, stripe-owned above.
    fn split(&self) -> u64 {
        self.blocks / 2 / STRIPE * STRIPE
    }

    /// The blocks an origin write containing `block` may cover: (first, count).
    fn stripe(&self, block: u64) -> (u64, u64) {
        if block < self.split() {
            (block, 1)
        } else {
            let first = block - (block - self.split()) % STRIPE;
            (first, STRIPE.min(self.blocks - first))
        }
    }

    /// The origin writer that owns `block`.
    fn owner(&self, block: u64) -> usize {
        let unit = if block < self.split() {
            block
        } else {
            (block - self.split()) / STRIPE
        };
        (unit % self.writers as u64) as usize
    }

    /// A block to start an I/O at: half of them in the hot middle.
    fn pick(&self, rng: &mut SmallRng) -> u64 {
        let hot = HOT_BLOCKS.min(self.blocks);
        if rng.gen_bool(0.5) {
            (self.split() + self.blocks - hot / 2 + rng.gen_range(0..hot)) % self.blocks
        } else {
            rng.gen_range(0..self.blocks)
        }
    }

    fn message(&self, text: &str) -> Result<String> {
        let mut args = vec!["message", ORIGIN_NAME, "0"];
        args.extend(text.split_whitespace());
        dmsetup(&args)
    }

    /// The usage once the worker has reclaimed the space of every deleted snapshot: the
    /// space figures of a model then match exactly.
    fn settled_usage(&self) -> Result<Usage> {
        for _ in 0..2400 {
            let usage = self.usage()?;
            if usage.get("deleting_snapshots")? == 0 {
                return Ok(usage);
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("deleted snapshots still not reclaimed after 120 s")
    }

    fn usage(&self) -> Result<Usage> {
        let reply = self.message("usage")?;
        let mut lines = reply.lines();
        let words: Vec<&str> = lines
            .next()
            .context("empty usage reply")?
            .split_whitespace()
            .collect();
        let mut fields = BTreeMap::new();
        for pair in words.chunks(2) {
            ensure!(pair.len() == 2, "odd usage line: {reply}");
            // The word-valued fields: this test runs the default policy and no rollback.
            match pair[0] {
                "cow_full_policy" => {
                    ensure!(pair[1] == "error", "COW-full policy {:?}", pair[1]);
                    continue;
                }
                "rollback_snapshot" => {
                    ensure!(pair[1] == "none", "a rollback runs: {:?}", pair[1]);
                    continue;
                }
                _ => {}
            }
            fields.insert(pair[0].to_string(), pair[1].parse()?);
        }
        let mut snapshots = BTreeMap::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["snapshot", id, "chunks", n, "active", a] => {
                    snapshots.insert(id.parse()?, (n.parse()?, a == "1"));
                }
                _ => bail!("unexpected usage line {line:?}"),
            }
        }
        Ok(Usage { fields, snapshots })
    }

    fn snapshot_path(id: u32) -> String {
        format!("/dev/mapper/snap{id}")
    }

    fn activate(&self, id: u32) -> Result<String> {
        let table = format!("0 {} s-snap {} {id}", self.sectors, self.origin_dev);
        dmsetup(&["create", &format!("snap{id}"), "--table", &table])?;
        add(&self.stats.activations, 1);
        Ok(Self::snapshot_path(id))
    }

    fn deactivate(&self, id: u32) -> Result<()> {
        dmsetup(&["remove", &format!("snap{id}")]).map(|_| ())
    }

    /// Creates a new snapshot while origin writes go on; its model.
    fn create(&self) -> Result<SnapModel> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tags, lo) = {
            let origin = self.origin.lock().unwrap();
            (origin.tags.clone(), origin.completed.clone())
        };
        self.message(&format!("snapshot create {id}"))?;
        let mut windows = Vec::new();
        for (log, lo) in self.logs.iter().zip(lo) {
            let log = log.lock().unwrap();
            windows.push(Window::new(log.range(lo, log.issued())?));
        }
        let mut known = vec![true; self.blocks as usize];
        let mut raced = 0;
        for run in windows.iter().flat_map(|w| &w.writes) {
            raced += 1;
            for b in run.start..run.start + run.tags.len() as u64 {
                known[b as usize] = false;
            }
        }
        add(&self.stats.creates, 1);
        if raced > 0 {
            add(&self.stats.raced_creates, 1);
            add(&self.stats.raced_writes, raced);
        }
        Ok(SnapModel {
            id,
            tags,
            known,
            windows,
            written_chunks: BTreeSet::new(),
        })
    }

    fn delete(&self, id: u32) -> Result<()> {
        self.message(&format!("snapshot delete {id}"))?;
        add(&self.stats.deletes, 1);
        Ok(())
    }

    /// Reads every block of `file` and passes (block, tag) to `check`.
    fn verify_device(
        &self,
        file: &File,
        mut check: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        const AT_ONCE: u64 = 16;
        let mut buf = AlignedBlock::with_blocks(AT_ONCE as usize);
        let mut scratch = vec![0u8; BLOCK];
        for first in (0..self.blocks).step_by(AT_ONCE as usize) {
            let count = AT_ONCE.min(self.blocks - first);
            let bytes = &mut buf.bytes()[..count as usize * BLOCK];
            file.read_exact_at(bytes, first * BLOCK as u64)
                .with_context(|| format!("read blocks {first}..{}", first + count))?;
            for (i, data) in bytes.chunks_exact(BLOCK).enumerate() {
                let block = first + i as u64;
                check(block, block_tag(data, block, &mut scratch)?)?;
            }
        }
        add(&self.stats.verified_blocks, self.blocks);
        Ok(())
    }

    fn verify_origin(&self, file: &File, tags: &[u64]) -> Result<()> {
        self.verify_device(file, |b, found| {
            let want = tags[b as usize];
            ensure!(
                found == want,
                "origin block {b}: read {}, the model holds {}",
                describe(found),
                describe(want)
            );
            Ok(())
        })
    }

    fn verify_snapshot(&self, file: &File, snap: &mut SnapModel) -> Result<()> {
        self.verify_device(file, |b, found| snap.check(self, b, found))
            .with_context(|| format!("snapshot {}", snap.id))
    }

    /// Activates snapshot `snap`, verifies it and removes its device.
    fn verify_inactive(&self, snap: &mut SnapModel) -> Result<()> {
        let path = self.activate(snap.id)?;
        let file = open_direct(&path)?;
        self.verify_snapshot(&file, snap)?;
        drop(file);
        self.deactivate(snap.id)
    }
}

impl SnapModel {
    /// Checks that block `b` of the snapshot may read `found`, and remembers it.  (Callers
    /// name the snapshot in the error's context.)
    fn check(&mut self, shared: &Shared, b: u64, found: u64) -> Result<()> {
        let i = b as usize;
        if self.known[i] {
            ensure!(
                found == self.tags[i],
                "block {b}: read {}, the model holds {}",
                describe(found),
                describe(self.tags[i])
            );
            return Ok(());
        }
        let window = &mut self.windows[shared.owner(b)];
        if !window.observe(b, self.tags[i], found) {
            let in_window: Vec<String> = window
                .writes
                .iter()
                .enumerate()
                .filter_map(|(k, w)| w.tag_at(b).map(|t| format!("#{k}: {}", describe(t))))
                .collect();
            bail!(
                "block {b}: read {}, but before the creation it held {} and the writes in its \
                 window were [{}]; no cut of them explains it together with the blocks read \
                 before",
                describe(found),
                describe(self.tags[i]),
                in_window.join(", ")
            );
        }
        self.tags[i] = found;
        self.known[i] = true;
        Ok(())
    }

    /// Counts how the creation windows of this (verified) snapshot resolved.
    fn tally(&self, stats: &Stats) {
        for w in &self.windows {
            let first = w.cuts.iter().position(|&c| c).unwrap_or(0) as u64;
            let last = w.cuts.iter().rposition(|&c| c).unwrap_or(0) as u64;
            let n = w.writes.len() as u64;
            add(&stats.raced_in, first);
            add(&stats.raced_out, n.saturating_sub(last + 1));
            add(&stats.raced_open, n.min(last + 1) - first);
        }
    }

    fn wrote(&mut self, shared: &Shared, start: u64, tags: &[u64]) {
        for (i, &t) in tags.iter().enumerate() {
            let b = start + i as u64;
            self.tags[b as usize] = t;
            self.known[b as usize] = true;
            self.written_chunks.insert(b / shared.chunk_blocks);
        }
    }
}

fn write_run(file: &File, buf: &mut AlignedBlock, start: u64, tags: &[u64]) -> Result<()> {
    let bytes = &mut buf.bytes()[..tags.len() * BLOCK];
    for (i, (block, &t)) in bytes.chunks_exact_mut(BLOCK).zip(tags).enumerate() {
        fill_block(block, t, start + i as u64);
    }
    file.write_all_at(bytes, start * BLOCK as u64)
        .with_context(|| format!("write blocks {start}..{}", start + tags.len() as u64))
}

/// Reads `count` blocks from `start` and passes (block, tag) to `check`.
fn read_run(
    file: &File,
    buf: &mut AlignedBlock,
    start: u64,
    count: u64,
    mut check: impl FnMut(u64, u64) -> Result<()>,
) -> Result<()> {
    let bytes = &mut buf.bytes()[..count as usize * BLOCK];
    file.read_exact_at(bytes, start * BLOCK as u64)
        .with_context(|| format!("read blocks {start}..{}", start + count))?;
    let mut scratch = vec![0u8; BLOCK];
    for (i, data) in bytes.chunks_exact(BLOCK).enumerate() {
        let block = start + i as u64;
        check(block, block_tag(data, block, &mut scratch)?)?;
    }
    Ok(())
}

/// Origin writer `t`: writes runs of its own blocks and reads them back.
fn origin_writer(shared: &Shared, t: usize, seed: u64) -> Result<()> {
    let mut rng = SmallRng::seed_from_u64(seed ^ (0x100 + t as u64));
    let file = open_direct(&Shared::origin_path())?;
    let mut buf = AlignedBlock::with_blocks(STRIPE as usize);
    let mut seq = 0;
    let pick_own = |rng: &mut SmallRng| loop {
        let b = shared.pick(rng);
        if shared.owner(b) == t {
            return shared.stripe(b);
        }
    };
    while shared.running() {
        let (first, count) = pick_own(&mut rng);
        let start = rng.gen_range(first..first + count);
        let len = rng.gen_range(1..=first + count - start);
        let tags: Vec<u64> = (0..len)
            .map(|_| {
                seq += 1;
                tag(ORIGIN_SOURCE + t as u64, seq)
            })
            .collect();
        let run = Run {
            start,
            tags: tags.clone(),
        };
        let issued = shared.logs[t].lock().unwrap().push(run);
        write_run(&file, &mut buf, start, &tags)?;
        {
            let mut origin = shared.origin.lock().unwrap();
            origin.tags[start as usize..(start + len) as usize].copy_from_slice(&tags);
            ensure!(origin.completed[t] == issued, "writer {t} lost count");
            origin.completed[t] += 1;
        }
        add(&shared.stats.origin_writes, 1);
        add(&shared.stats.origin_blocks_written, len);
        if rng.gen_ratio(1, 4) {
            // Only this thread changes these blocks: the model is exact for them.
            let (first, count) = pick_own(&mut rng);
            let want = shared.origin.lock().unwrap().tags[first as usize..(first + count) as usize]
                .to_vec();
            read_run(&file, &mut buf, first, count, |b, found| {
                let w = want[(b - first) as usize];
                ensure!(
                    found == w,
                    "origin block {b}: read {}, the model holds {}",
                    describe(found),
                    describe(w)
                );
                Ok(())
            })?;
            add(&shared.stats.origin_reads, 1);
        }
    }
    Ok(())
}

/// Snapshot slot `s`: I/O on one active snapshot, replaced every few seconds.  Returns the
/// last snapshot, left active.
fn slot(shared: &Shared, s: usize, seed: u64) -> Result<SnapModel> {
    let mut rng = SmallRng::seed_from_u64(seed ^ (0x200 + s as u64));
    let mut buf = AlignedBlock::with_blocks(MAX_RUN as usize);
    let mut seq = 0;
    let mut snap = shared.create()?;
    loop {
        let file = open_direct(&shared.activate(snap.id)?)?;
        let until = Instant::now() + Duration::from_millis(rng.gen_range(1000..4000));
        while shared.running() && Instant::now() < until {
            let start = shared.pick(&mut rng);
            let len = rng.gen_range(1..=MAX_RUN.min(shared.blocks - start));
            if rng.gen_ratio(2, 3) {
                read_run(&file, &mut buf, start, len, |b, found| {
                    snap.check(shared, b, found)
                })
                .with_context(|| format!("snapshot {}", snap.id))?;
                add(&shared.stats.snap_reads, 1);
            } else {
                let tags: Vec<u64> = (0..len)
                    .map(|_| {
                        seq += 1;
                        tag(SLOT_SOURCE + s as u64, seq)
                    })
                    .collect();
                write_run(&file, &mut buf, start, &tags)
                    .with_context(|| format!("snapshot {}", snap.id))?;
                snap.wrote(shared, start, &tags);
                add(&shared.stats.snap_writes, 1);
                add(&shared.stats.snap_blocks_written, len);
            }
        }
        shared.verify_snapshot(&file, &mut snap)?;
        if !shared.running() {
            return Ok(snap);
        }
        snap.tally(&shared.stats);
        drop(file);
        shared.deactivate(snap.id)?;
        shared.delete(snap.id)?;
        snap = shared.create()?;
    }
}

/// Creates and deletes snapshots without devices, and checks `usage` and `status`.
/// Returns the snapshots left.
fn manager(shared: &Shared, pool_max: usize, seed: u64) -> Result<Vec<SnapModel>> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x300);
    let mut pool: Vec<SnapModel> = Vec::new();
    let mut last_check = Instant::now();
    while shared.running() {
        thread::sleep(Duration::from_millis(rng.gen_range(50..300)));
        if !shared.running() {
            break;
        }
        if pool.len() < pool_max && (pool.is_empty() || rng.gen_ratio(3, 5)) {
            pool.push(shared.create()?);
        } else if !pool.is_empty() {
            let mut snap = pool.swap_remove(rng.gen_range(0..pool.len()));
            if rng.gen_bool(0.5) {
                shared.verify_inactive(&mut snap)?;
                snap.tally(&shared.stats);
            }
            shared.delete(snap.id)?;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            // Slots change their snapshots meanwhile; only the pool's are known here.
            let usage = shared.usage()?;
            ensure!(
                usage.get("failed")? == 0 && usage.get("cow_full")? == 0,
                "store failed or full: {:?}",
                usage.fields
            );
            let listed = status_snapshot_ids()?;
            for snap in &pool {
                ensure!(
                    usage
                        .snapshots
                        .get(&snap.id)
                        .is_some_and(|&(_, active)| !active),
                    "usage does not list snapshot {} as inactive",
                    snap.id
                );
                ensure!(
                    listed.contains(&snap.id),
                    "status lacks snapshot {}",
                    snap.id
                );
            }
            add(&shared.stats.usage_checks, 1);
            last_check = Instant::now();
        }
    }
    Ok(pool)
}

/// Exception counts `usage` reported, and how many shared exceptions copy a chunk version
/// that another one holds too.
struct Exceptions {
    shared: u64,
    private: u64,
    duplicates: u64,
}

/// Compares `usage` with what the model predicts.  Exactly: the snapshot list, one private
/// exception per chunk a snapshot wrote, and per snapshot the chunks it occupies (those it
/// wrote or where it differs from the origin).  Shared exceptions: at least one per chunk
/// version that live snapshots hold without a private copy and the origin no longer has, at
/// most one per such snapshot and chunk.  More than one copy of a version can still happen
/// when a snapshot is created while an origin write, its copy done, waits for snapshot reads
/// of its chunk: the write is then copied again for the new snapshot (writes that only wait
/// for the commit are issued before the creation).  The snapshots' models must be fully known
/// (verified).
fn check_usage(
    shared: &Shared,
    origin: &[u64],
    snaps: &[&SnapModel],
    active: &BTreeSet<u32>,
) -> Result<Exceptions> {
    let usage = shared.settled_usage()?;
    let cb = shared.chunk_blocks as usize;
    let mut versions_total = 0u64;
    let mut holders_total = 0u64;
    let mut per_snapshot = vec![0u64; snaps.len()];
    for (c, origin_version) in origin.chunks(cb).enumerate() {
        let mut versions = HashSet::new();
        for (i, snap) in snaps.iter().enumerate() {
            let version = &snap.tags[c * cb..c * cb + origin_version.len()];
            let private = snap.written_chunks.contains(&(c as u64));
            if private || version != origin_version {
                per_snapshot[i] += 1;
            }
            if !private && version != origin_version {
                versions.insert(version);
                holders_total += 1;
            }
        }
        versions_total += versions.len() as u64;
    }
    let private: u64 = snaps.iter().map(|s| s.written_chunks.len() as u64).sum();
    let shared_exceptions = usage.get("shared_exceptions")?;
    ensure!(
        (versions_total..=holders_total).contains(&shared_exceptions),
        "usage shared_exceptions is {shared_exceptions}, the model says {versions_total} \
         versions held by {holders_total} snapshot chunks: {:?}",
        usage.fields
    );
    let want = [
        ("snapshots", snaps.len() as u64),
        ("private_exceptions", private),
        ("data_chunks", shared_exceptions + private),
        (
            "used_chunks",
            usage.get("data_chunks")? + usage.get("metadata_chunks")?,
        ),
        (
            "free_chunks",
            usage.get("total_chunks")? - usage.get("used_chunks")?,
        ),
        ("cow_full", 0),
        ("failed", 0),
    ];
    for (name, value) in want {
        ensure!(
            usage.get(name)? == value,
            "usage {name} is {}, the model says {value}: {:?}",
            usage.get(name)?,
            usage.fields
        );
    }
    let mut ids: Vec<u32> = snaps.iter().map(|s| s.id).collect();
    ids.sort_unstable();
    let listed: Vec<u32> = usage.snapshots.keys().copied().collect();
    ensure!(
        listed == ids,
        "usage lists {listed:?}, the model has {ids:?}"
    );
    ensure!(status_snapshot_ids()? == ids, "status differs from {ids:?}");
    for (snap, want) in snaps.iter().zip(per_snapshot) {
        let (chunks, is_active) = usage.snapshots[&snap.id];
        ensure!(
            chunks == want && is_active == active.contains(&snap.id),
            "usage says snapshot {} has {chunks} chunks, active {is_active}; the model says \
             {want}, active {}",
            snap.id,
            active.contains(&snap.id)
        );
    }
    Ok(Exceptions {
        shared: shared_exceptions,
        private,
        duplicates: shared_exceptions - versions_total,
    })
}

fn load_origin(cli: &Cli, size: u64) -> Result<()> {
    let table = format!(
        "0 {size} s-snap-origin {} {} S {}",
        cli.origin, cli.cow, cli.chunk_sectors
    );
    dmsetup(&["create", ORIGIN_NAME, "--table", &table]).map(|_| ())
}

fn mib(blocks: u64) -> u64 {
    (blocks * BLOCK as u64) >> 20
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure!(
        cli.chunk_sectors >= 8 && cli.chunk_sectors.is_power_of_two(),
        "chunk size must be a power of two of at least 8 sectors"
    );
    ensure!(
        (1..=16).contains(&cli.writers) && cli.slots <= 16,
        "1 to 16 writers, at most 16 slots"
    );
    let size = sectors(&cli.origin)?;
    let blocks = size * 512 / BLOCK as u64;
    ensure!(blocks >= 2 * HOT_BLOCKS, "origin too small");
    load_origin(&cli, size)?;
    let shared = Shared {
        origin_dev: cli.origin.clone(),
        sectors: size,
        blocks,
        chunk_blocks: cli.chunk_sectors * 512 / BLOCK as u64,
        writers: cli.writers,
        deadline: Instant::now() + Duration::from_secs(cli.seconds),
        stop: AtomicBool::new(false),
        origin: Mutex::new(OriginModel {
            tags: vec![0; blocks as usize],
            completed: vec![0; cli.writers],
        }),
        logs: (0..cli.writers).map(|_| Mutex::default()).collect(),
        next_id: AtomicU32::new(SmallRng::seed_from_u64(cli.seed).gen_range(0..u32::MAX / 2)),
        stats: Stats::default(),
    };
    let format_usage = shared.usage()?;
    ensure!(
        format_usage.get("snapshots")? == 0 && format_usage.get("data_chunks")? == 0,
        "the COW device must hold a fresh store"
    );
    let baseline_used = format_usage.get("used_chunks")?;

    let started = Instant::now();
    let (slots, pool) = thread::scope(|scope| {
        let writers: Vec<_> = (0..cli.writers)
            .map(|t| {
                let shared = &shared;
                scope.spawn(move || shared.stop_on_error(origin_writer(shared, t, cli.seed)))
            })
            .collect();
        let slots: Vec<_> = (0..cli.slots)
            .map(|s| {
                let shared = &shared;
                scope.spawn(move || shared.stop_on_error(slot(shared, s, cli.seed)))
            })
            .collect();
        let manager = scope.spawn(|| shared.stop_on_error(manager(&shared, cli.pool, cli.seed)));
        let mut errors = Vec::new();
        for (t, w) in writers.into_iter().enumerate() {
            if let Err(e) = w.join().expect("writer panicked") {
                errors.push(format!("origin writer {t}: {e:#}"));
            }
        }
        let mut models = Vec::new();
        for (s, h) in slots.into_iter().enumerate() {
            match h.join().expect("slot panicked") {
                Ok(m) => models.push(m),
                Err(e) => errors.push(format!("slot {s}: {e:#}")),
            }
        }
        let pool = match manager.join().expect("manager panicked") {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("manager: {e:#}"));
                Vec::new()
            }
        };
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok((models, pool))
    })?;
    let ran = started.elapsed().as_secs_f64();
    let st = &shared.stats;
    println!(
        "ok: concurrent phase ran {ran:.1} s (seed {}): origin {} writes ({} blocks) and {} \
         read-backs by {} writers; snapshots {} writes ({} blocks) and {} reads by {} slots; \
         {} creates ({} with origin writes in their window, {} such writes), {} deletes, {} \
         activations, {} usage/status checks",
        cli.seed,
        get(&st.origin_writes),
        get(&st.origin_blocks_written),
        get(&st.origin_reads),
        cli.writers,
        get(&st.snap_writes),
        get(&st.snap_blocks_written),
        get(&st.snap_reads),
        cli.slots,
        get(&st.creates),
        get(&st.raced_creates),
        get(&st.raced_writes),
        get(&st.deletes),
        get(&st.activations),
        get(&st.usage_checks),
    );
    let during = get(&st.verified_blocks);

    // Everything stopped: the origin model is exact, the snapshots' models narrow further.
    let origin = shared.origin.lock().unwrap().tags.clone();
    let mut snaps: Vec<SnapModel> = slots.into_iter().chain(pool).collect();
    let active: BTreeSet<u32> = snaps[..cli.slots].iter().map(|s| s.id).collect();
    shared
        .verify_origin(&open_direct(&Shared::origin_path())?, &origin)
        .context("final origin check")?;
    for snap in &mut snaps {
        if active.contains(&snap.id) {
            let file = open_direct(&Shared::snapshot_path(snap.id))?;
            shared.verify_snapshot(&file, snap)?;
        } else {
            shared.verify_inactive(snap)?;
        }
    }
    let refs: Vec<&SnapModel> = snaps.iter().collect();
    let ex = check_usage(&shared, &origin, &refs, &active)?;
    println!(
        "ok: origin and {} snapshots equal the model; usage agrees with it: {} private \
         exceptions and the chunks of every snapshot exactly, {} shared exceptions ({} of them \
         second copies of a version)",
        snaps.len(),
        ex.private,
        ex.shared,
        ex.duplicates
    );

    // The store must hold across a reload of the origin table.
    for id in &active {
        shared.deactivate(*id)?;
    }
    dmsetup(&["remove", ORIGIN_NAME])?;
    load_origin(&cli, size)?;
    shared
        .verify_origin(&open_direct(&Shared::origin_path())?, &origin)
        .context("origin after reload")?;
    for snap in &mut snaps {
        shared
            .verify_inactive(snap)
            .context("after reloading the origin")?;
    }
    let refs: Vec<&SnapModel> = snaps.iter().collect();
    let after = check_usage(&shared, &origin, &refs, &BTreeSet::new()).context("after reload")?;
    ensure!(
        (after.shared, after.private) == (ex.shared, ex.private),
        "reloading changed the exception counts"
    );
    println!(
        "ok: after reloading the origin table, origin and {} snapshots equal the model, usage \
         unchanged",
        snaps.len()
    );

    // Deleting every snapshot gives every chunk back.
    for snap in &snaps {
        snap.tally(st);
        shared.delete(snap.id)?;
    }
    let usage = shared.settled_usage()?;
    for (name, want) in [
        ("snapshots", 0),
        ("data_chunks", 0),
        ("shared_exceptions", 0),
        ("private_exceptions", 0),
        ("used_chunks", baseline_used),
    ] {
        ensure!(
            usage.get(name)? == want,
            "after deleting every snapshot, usage {name} is {}, want {want}: {:?}",
            usage.get(name)?,
            usage.fields
        );
    }
    ensure!(
        status_snapshot_ids()?.is_empty(),
        "status still lists snapshots"
    );
    shared
        .verify_origin(&open_direct(&Shared::origin_path())?, &origin)
        .context("origin after deleting every snapshot")?;
    dmsetup(&["remove", ORIGIN_NAME])?;
    println!(
        "ok: deleting all {} snapshots returned used_chunks to {baseline_used}, its value after \
         format; origin intact",
        snaps.len()
    );
    println!(
        "ok: of the {} origin writes in the creation windows of snapshots verified whole, {} \
         are in the snapshot, {} are not, {} undecided (no block read tells)",
        get(&st.raced_in) + get(&st.raced_out) + get(&st.raced_open),
        get(&st.raced_in),
        get(&st.raced_out),
        get(&st.raced_open)
    );
    let verified = get(&st.verified_blocks);
    println!(
        "ok: verified {verified} blocks ({} MiB) against the model in whole-device checks, \
         {during} blocks ({} MiB) of them by the stress threads, besides their random reads",
        mib(verified),
        mib(during)
    );
    Ok(())
}
