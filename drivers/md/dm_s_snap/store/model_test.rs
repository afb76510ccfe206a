// SPDX-License-Identifier: GPL-2.0

//! The store's model test, in the store's own source: random operations
//! checked against a plain model of what the origin and every snapshot
//! hold, wherever the store runs.
//!
//! The kernel runs it as the KUnit suite `dm_s_snap_store`
//! (`CONFIG_DM_S_SNAP_KUNIT_TEST`, on a memory device of the module's own),
//! userspace as a cargo test (feature `model-test` of `s-snap-store`), so the
//! store is tested by the same code in both places. Like the rest of the
//! store it needs neither `std` nor an allocator: the model is small enough
//! to live on the stack, and the caller gives the device.
//!
//! The test drives the store as the target does: an origin write copies
//! first if the store says so and waits for a commit, a snapshot write
//! unshares, a snapshot is created after pending origin writes reached the
//! origin, deleted snapshots are reclaimed in bounded steps. A chunk's data
//! is modelled by a tag, written to the COW device's data chunk by
//! [`TestDevice::write_tag`]. A crash ([`TestDevice::crash`]) loses the
//! device cache's unwritten blocks; the store must reopen at its last commit
//! with the model of that commit. At the end the store's own checker must
//! find nothing, and deleting every snapshot must give all space back.

use super::{
    BlockIo, CowFullPolicy, Error, Location, OriginDiscard, OriginWrite, Reclaim, SnapWritePlan,
    SnapshotDiscard, SnapshotRef, Store,
};
use core::fmt;

/// Origin chunks the test writes.
pub const ORIGIN_CHUNKS: usize = 16;
/// Live snapshots at most.
pub const MAX_SNAPSHOTS: usize = 4;
/// Largest device the test takes, in 4 KiB blocks (its checker's scratch
/// memory is on the stack).
pub const MAX_DEVICE_BLOCKS: u64 = 4096;

/// A device under the test: metadata blocks through [`BlockIo`], and data
/// chunks.
pub trait TestDevice: BlockIo {
    /// Writes `tag` to COW data chunk `chunk`, around the metadata cache
    /// (as dm-kcopyd copies do).
    fn write_tag(&self, chunk: u64, tag: u64) -> super::Result<()>;
    /// Reads the tag of COW data chunk `chunk`.
    fn read_tag(&self, chunk: u64) -> super::Result<u64>;
    /// A crash: dirty blocks the cache did not write yet are lost; blocks
    /// it wrote early stay on the device.
    fn crash(&self);
    /// Called between two operations, and between the steps of a long one: where a kernel
    /// test gives the CPU away (`cond_resched()`), since a run takes seconds, or tens of
    /// seconds on a checking kernel.
    fn between_operations(&self) {}
}

/// What a run does.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Chunk size in sectors.
    pub chunk_sectors: u32,
    /// Seed of the operation sequence (not 0).
    pub seed: u64,
    /// Number of random operations.
    pub ops: u32,
    /// Crash and reopen at random points (writes to chunks a snapshot owns
    /// are then left out: they are not transactional).
    pub crashes: bool,
    /// The `drop` COW-full policy: an origin write whose copy finds no space drops the
    /// snapshots that need it, which the model checks, and never fails.
    pub drop_when_full: bool,
}

/// What a run did, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Chunk copies before origin writes.
    pub copies: u64,
    /// Snapshot writes that unshared a chunk.
    pub unshares: u64,
    /// Commits.
    pub commits: u64,
    /// Crashes.
    pub crashes: u64,
    /// Operations refused for lack of space.
    pub no_space: u64,
    /// Snapshots dropped for origin writes (the `drop` policy).
    pub dropped: u64,
    /// Snapshot chunks read and compared with the model.
    pub reads: u64,
    /// Snapshot discards that freed a chunk and left the snapshot reading its copy.
    pub discards: u64,
    /// Snapshot discards that freed a chunk and left it reading as zeroes.
    pub zeroed: u64,
    /// Rollbacks of the origin started.
    pub rollbacks: u64,
    /// Chunks copied back by rollbacks.
    pub rolled_back: u64,
}

/// Why a run failed: the step and what differed.
#[derive(Clone, Copy, Debug)]
pub struct Failure {
    /// Operation number (`u32::MAX` for the final checks).
    pub step: u32,
    /// What went wrong.
    pub what: &'static str,
    /// Snapshot id, chunk or count involved.
    pub a: u64,
    /// Expected value or second figure.
    pub b: u64,
    /// Value found.
    pub c: u64,
    /// The store's error, if one.
    pub error: Option<Error>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "model test failed at step {}: {} ({}, {:#x}, {:#x})",
            self.step, self.what, self.a, self.b, self.c
        )?;
        if let Some(e) = &self.error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

type Outcome<T> = core::result::Result<T, Failure>;

/// xorshift64, the generator of the store's tests: they need repeatable
/// sequences, not good ones. The state must not be 0.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (not 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A chunk's contents: kernel stacks are small, and a test run writes far
/// fewer than 2^32 chunks.
type Tag = u32;

/// The tag of a chunk that reads as zeroes; written data never has it (tags
/// count up from the origin's, which start at `1 << 16`).
const ZEROES: Tag = 0;

/// What the model knows of one live snapshot.
#[derive(Clone, Copy)]
struct SnapModel {
    id: u32,
    epoch: u64,
    /// What the snapshot holds.
    data: [Tag; ORIGIN_CHUNKS],
    /// The origin when it was created (what a discarded chunk reads).
    born: [Tag; ORIGIN_CHUNKS],
    /// Dropped for an origin write: unreadable, listed until deleted.
    dropped: bool,
}

/// The model: what the devices must hold.
#[derive(Clone, Copy)]
struct Model {
    /// What the origin device holds.
    origin: [Tag; ORIGIN_CHUNKS],
    /// Origin writes waiting for a commit: the latest value per chunk, 0 for
    /// none.
    pending: [Tag; ORIGIN_CHUNKS],
    snaps: [Option<SnapModel>; MAX_SNAPSHOTS],
    /// The slot of the snapshot the origin is rolled back to, while a rollback runs.
    rollback: Option<usize>,
    /// The chunks the running rollback has still to copy back.
    rolling: [bool; ORIGIN_CHUNKS],
}

impl Model {
    /// What the origin reads (the device, or the snapshot a rollback copies back from).
    fn origin_view(&self, chunk: usize) -> Tag {
        match self.rollback.and_then(|slot| self.snaps[slot]) {
            Some(m) if self.rolling[chunk] => m.data[chunk],
            _ => self.origin[chunk],
        }
    }

    /// Live snapshots.
    fn snapshot_count(&self) -> u64 {
        self.snaps.iter().flatten().filter(|s| !s.dropped).count() as u64
    }

    /// Dropped snapshots.
    fn dropped_count(&self) -> u64 {
        self.snaps.iter().flatten().filter(|s| s.dropped).count() as u64
    }

    /// The `i`-th snapshot's slot, live or dropped (modulo their number), if any.
    fn pick(&self, i: u64) -> Option<usize> {
        let n = self.snaps.iter().flatten().count() as u64;
        if n == 0 {
            return None;
        }
        let k = (i % n) as usize;
        self.snaps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .nth(k)
            .map(|(slot, _)| slot)
    }
}

struct Run<D: TestDevice> {
    store: Option<Store<D>>,
    p: Params,
    rng: Rng,
    model: Model,
    /// The model as of the last commit.
    committed: Model,
    next_tag: Tag,
    step: u32,
    sum: Summary,
}

impl<D: TestDevice> Run<D> {
    fn fail(&self, what: &'static str, a: u64, b: u64, c: u64) -> Failure {
        Failure {
            step: self.step,
            what,
            a,
            b,
            c,
            error: None,
        }
    }

    fn error(&self, what: &'static str, e: Error) -> Failure {
        Failure {
            error: Some(e),
            ..self.fail(what, 0, 0, 0)
        }
    }

    fn s(&mut self) -> Outcome<&mut Store<D>> {
        let f = self.fail("store is gone", 0, 0, 0);
        self.store.as_mut().ok_or(f)
    }

    fn snapshot_ref(&mut self, id: u32) -> Outcome<SnapshotRef> {
        match self.s()?.snapshot_epoch(id) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(self.fail("live snapshot unknown to the store", id.into(), 0, 0)),
            Err(e) => Err(self.error("snapshot_epoch", e)),
        }
    }

    fn tag(&mut self) -> Tag {
        self.next_tag += 1;
        self.next_tag
    }

    fn commit(&mut self) -> Outcome<()> {
        if let Err(e) = self.s()?.commit() {
            return Err(self.error("commit", e));
        }
        self.sum.commits += 1;
        // The writes that waited for the commit reach the origin now.
        for c in 0..ORIGIN_CHUNKS {
            if self.model.pending[c] != 0 {
                self.model.origin[c] = self.model.pending[c];
                self.model.pending[c] = 0;
            }
        }
        self.committed = self.model;
        Ok(())
    }

    fn origin_write(&mut self, chunk: usize) -> Outcome<()> {
        let tag = self.tag();
        let r = self.s()?.origin_write_prepare(chunk as u64);
        let proceed = match r {
            Ok(OriginWrite::Proceed) => true,
            Ok(OriginWrite::AfterCommit) => false,
            Ok(OriginWrite::RollBackFirst) => {
                if !self.model.rolling[chunk] || self.model.rollback.is_none() {
                    return Err(self.fail(
                        "rollback first of a chunk not listed",
                        chunk as u64,
                        0,
                        0,
                    ));
                }
                // Then the write goes on, as the target retries it.
                return match self.roll_back_chunk(chunk)? {
                    true => self.origin_write(chunk),
                    false => Ok(()),
                };
            }
            Ok(OriginWrite::Copy(plan)) => {
                if plan.chunk() != chunk as u64 {
                    return Err(self.fail("copy plan of another chunk", chunk as u64, 0, 0));
                }
                let d = self.model.origin[chunk].into();
                let cow = plan.cow();
                if let Err(e) = self.s()?.io().write_tag(cow, d) {
                    return Err(self.error("write_tag", e));
                }
                match self.s()?.origin_write_complete(plan) {
                    Ok(()) => self.sum.copies += 1,
                    Err(Error::NoSpace) => {
                        self.sum.no_space += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(self.error("origin_write_complete", e)),
                }
                false
            }
            Err(Error::NoSpace) if self.p.drop_when_full => {
                if !self.drop_for(chunk)? {
                    return Ok(());
                }
                match self.s()?.origin_write_prepare(chunk as u64) {
                    Ok(OriginWrite::AfterCommit) => false,
                    Ok(_) => return Err(self.fail("write after a drop not AfterCommit", 0, 0, 0)),
                    Err(e) => return Err(self.error("origin_write_prepare after a drop", e)),
                }
            }
            Err(Error::NoSpace) => {
                self.sum.no_space += 1;
                return Ok(());
            }
            Err(e) => return Err(self.error("origin_write_prepare", e)),
        };
        // A write behind a queued one to the same chunk queues too.
        if proceed && self.model.pending[chunk] == 0 {
            self.model.origin[chunk] = tag;
        } else {
            self.model.pending[chunk] = tag;
        }
        Ok(())
    }

    /// Drops the snapshots that need a copy of `chunk`: exactly the live ones that read it
    /// from the origin. False if not even that fitted (the write fails then).
    fn drop_for(&mut self, chunk: usize) -> Outcome<bool> {
        let mut needing = [false; MAX_SNAPSHOTS];
        for (slot, need) in needing.iter_mut().enumerate() {
            let Some(m) = self.model.snaps[slot].filter(|m| !m.dropped) else {
                continue;
            };
            let snap = self.snapshot_ref(m.id)?;
            match self.s()?.snapshot_lookup(snap, chunk as u64) {
                Ok(l) => *need = l == Location::Origin,
                Err(e) => return Err(self.error("snapshot_lookup", e)),
            }
        }
        let mut gone = [None; MAX_SNAPSHOTS];
        let mut n = 0;
        let r = self.s()?.drop_snapshots_needing(chunk as u64, &mut |s| {
            if let Some(g) = gone.get_mut(n) {
                *g = Some(s.id());
            }
            n += 1;
        });
        if n > MAX_SNAPSHOTS {
            return Err(self.fail("more snapshots dropped than exist", n as u64, 0, 0));
        }
        for id in gone.iter().flatten() {
            let slot = self
                .model
                .snaps
                .iter()
                .position(|s| s.is_some_and(|m| m.id == *id && !m.dropped));
            match slot {
                Some(slot) if needing[slot] => {
                    needing[slot] = false;
                    if let Some(m) = self.model.snaps[slot].as_mut() {
                        m.dropped = true;
                    }
                    self.sum.dropped += 1;
                }
                _ => {
                    return Err(self.fail(
                        "dropped a snapshot that needed no copy",
                        (*id).into(),
                        0,
                        0,
                    ))
                }
            }
        }
        match r {
            Ok(k) if k != n as u64 => Err(self.fail("drop count", 0, n as u64, k)),
            Ok(_) => match needing.iter().position(|&x| x) {
                Some(slot) => Err(self.fail(
                    "a snapshot needing the copy was kept",
                    slot as u64,
                    chunk as u64,
                    0,
                )),
                None => Ok(true),
            },
            Err(Error::NoSpace) => {
                self.sum.no_space += 1;
                Ok(false)
            }
            Err(e) => Err(self.error("drop_snapshots_needing", e)),
        }
    }

    /// A live snapshot's model, or `None` for an empty slot or a dropped snapshot, which the
    /// store must know as dropped.
    fn live(&mut self, slot: usize) -> Outcome<Option<SnapModel>> {
        let Some(m) = self.model.snaps[slot] else {
            return Ok(None);
        };
        if !m.dropped {
            return Ok(Some(m));
        }
        let s = self.s()?;
        match (s.snapshot_epoch(m.id), s.snapshot_dropped(m.id)) {
            (Ok(None), Ok(true)) => Ok(None),
            _ => Err(self.fail("dropped snapshot not listed as dropped", m.id.into(), 0, 0)),
        }
    }

    fn snapshot_write(&mut self, slot: usize, chunk: usize) -> Outcome<()> {
        let Some(m) = self.live(slot)? else {
            return Ok(());
        };
        let snap = self.snapshot_ref(m.id)?;
        let tag = self.tag();
        match self.s()?.snapshot_write_prepare(snap, chunk as u64) {
            Ok(SnapWritePlan::Direct(cow)) => {
                if self.p.crashes {
                    return Ok(());
                }
                if let Err(e) = self.s()?.io().write_tag(cow, tag.into()) {
                    return Err(self.error("write_tag", e));
                }
            }
            Ok(SnapWritePlan::Unshare(plan)) => {
                // The tag stands for a whole chunk written: no copy of the
                // old data is needed.
                if let Err(e) = self.s()?.io().write_tag(plan.to(), tag.into()) {
                    return Err(self.error("write_tag", e));
                }
                match self.s()?.snapshot_write_complete(plan) {
                    Ok(()) => self.sum.unshares += 1,
                    Err(Error::NoSpace) => {
                        self.sum.no_space += 1;
                        return Ok(());
                    }
                    Err(e) => return Err(self.error("snapshot_write_complete", e)),
                }
            }
            Err(Error::NoSpace) => {
                self.sum.no_space += 1;
                return Ok(());
            }
            // Its data is the rollback's source.
            Err(Error::RollingBack) if self.model.rollback == Some(slot) => return Ok(()),
            Err(e) => return Err(self.error("snapshot_write_prepare", e)),
        }
        if let Some(m) = self.model.snaps[slot].as_mut() {
            m.data[chunk] = tag;
        }
        Ok(())
    }

    /// What snapshot `id` reads of `chunk`, through the store.
    fn view(&mut self, id: u32, chunk: usize) -> Outcome<Tag> {
        let snap = self.snapshot_ref(id)?;
        let loc = match self.s()?.snapshot_lookup(snap, chunk as u64) {
            Ok(l) => l,
            Err(e) => return Err(self.error("snapshot_lookup", e)),
        };
        self.read_location(loc, chunk)
    }

    /// Starts rolling the origin back to the snapshot in `slot`, as the message does: after the
    /// queued origin writes, and committed before it returns. Every chunk it does not list
    /// must already hold the snapshot's data.
    fn start_rollback(&mut self, slot: usize) -> Outcome<()> {
        let Some(m) = self.model.snaps[slot] else {
            return Ok(());
        };
        if self.model.pending.iter().any(|&t| t != 0) {
            self.commit()?;
        }
        let running = self.model.rollback.is_some();
        match self.s()?.start_rollback(m.id) {
            Ok(n) => {
                if running || m.dropped {
                    return Err(self.fail("rollback started wrongly", m.id.into(), 0, 0));
                }
                let mut listed = 0;
                for c in 0..ORIGIN_CHUNKS {
                    let pending = match self.s()?.rollback_pending(c as u64) {
                        Ok(p) => p,
                        Err(e) => return Err(self.error("rollback_pending", e)),
                    };
                    if pending {
                        listed += 1;
                    } else if m.data[c] != self.model.origin[c] {
                        return Err(self.fail(
                            "rollback leaves out a chunk where the snapshot differs",
                            m.id.into(),
                            c as u64,
                            0,
                        ));
                    }
                    self.model.rolling[c] = pending;
                }
                if listed != n {
                    return Err(self.fail("rollback count", m.id.into(), listed, n));
                }
                self.model.rollback = if n == 0 { None } else { Some(slot) };
                self.sum.rollbacks += 1;
                self.commit()
            }
            Err(Error::RollingBack) if running => Ok(()),
            Err(Error::NotFound) if m.dropped => Ok(()),
            Err(Error::NoSpace) => {
                self.sum.no_space += 1;
                Ok(())
            }
            Err(e) => Err(self.error("start_rollback", e)),
        }
    }

    /// Copies `chunk` back for the running rollback, as the target does: the origin's data
    /// preserved for the other snapshots first, committed, then the snapshot's data copied over
    /// the origin chunk. False if there was no space for it.
    fn roll_back_chunk(&mut self, chunk: usize) -> Outcome<bool> {
        let Some(m) = self.model.rollback.and_then(|slot| self.model.snaps[slot]) else {
            return Err(self.fail("rollback of a chunk without a rollback", chunk as u64, 0, 0));
        };
        for _ in 0..4 {
            match self.s()?.rollback_prepare(chunk as u64) {
                Ok(OriginWrite::Proceed) => {
                    let got = match self.s()?.rollback_source(chunk as u64) {
                        Ok(loc) => self.read_location(loc, chunk)?,
                        Err(e) => return Err(self.error("rollback_source", e)),
                    };
                    if got != m.data[chunk] {
                        return Err(self.fail(
                            "rollback copies other data",
                            chunk as u64,
                            m.data[chunk].into(),
                            got.into(),
                        ));
                    }
                    self.model.origin[chunk] = got;
                    match self.s()?.rollback_chunk_done(chunk as u64) {
                        Ok(()) => {}
                        Err(Error::NoSpace) => {
                            self.sum.no_space += 1;
                            return Ok(false);
                        }
                        Err(e) => return Err(self.error("rollback_chunk_done", e)),
                    }
                    self.model.rolling[chunk] = false;
                    self.sum.rolled_back += 1;
                    if !self.model.rolling.iter().any(|&r| r) {
                        self.model.rollback = None;
                    }
                    if self.s()?.rolling_back() != self.model.rollback.is_some() {
                        return Err(self.fail("rollback end", chunk as u64, 0, 0));
                    }
                    return Ok(true);
                }
                Ok(OriginWrite::AfterCommit) => self.commit()?,
                Ok(OriginWrite::Copy(plan)) => {
                    let d = self.model.origin[chunk].into();
                    if let Err(e) = self.s()?.io().write_tag(plan.cow(), d) {
                        return Err(self.error("write_tag", e));
                    }
                    match self.s()?.origin_write_complete(plan) {
                        Ok(()) => self.sum.copies += 1,
                        Err(Error::NoSpace) => {
                            self.sum.no_space += 1;
                            return Ok(false);
                        }
                        Err(e) => return Err(self.error("origin_write_complete", e)),
                    }
                    self.commit()?;
                }
                Ok(OriginWrite::RollBackFirst) => {
                    return Err(self.fail("rollback_prepare asks for a rollback", 0, 0, 0))
                }
                Err(Error::NoSpace) if self.p.drop_when_full => {
                    if !self.drop_for(chunk)? {
                        return Ok(false);
                    }
                    self.commit()?;
                }
                Err(Error::NoSpace) => {
                    self.sum.no_space += 1;
                    return Ok(false);
                }
                Err(e) => return Err(self.error("rollback_prepare", e)),
            }
        }
        Err(self.fail("rollback of a chunk makes no progress", chunk as u64, 0, 0))
    }

    /// Up to `steps` chunks copied back, in chunk order, as the target's background work does.
    /// False if the rollback is not finished.
    fn rollback_steps(&mut self, steps: u64) -> Outcome<bool> {
        for _ in 0..steps {
            let next = match self.s()?.next_rollback_chunk(0) {
                Ok(n) => n,
                Err(e) => return Err(self.error("next_rollback_chunk", e)),
            };
            let want = self.model.rolling.iter().position(|&r| r);
            let Some(c) = next else {
                return match want {
                    None => Ok(true),
                    Some(c) => Err(self.fail("chunk to roll back not listed", c as u64, 0, 0)),
                };
            };
            if want != Some(c as usize) {
                return Err(self.fail("next chunk to roll back", c, 0, 0));
            }
            if !self.roll_back_chunk(c as usize)? {
                return Ok(false);
            }
        }
        Ok(self.model.rollback.is_none())
    }

    /// What a location holds of `chunk` (the origin device for [`Location::Origin`]).
    fn read_location(&mut self, loc: Location, chunk: usize) -> Outcome<Tag> {
        match loc {
            Location::Origin => Ok(self.model.origin[chunk]),
            Location::Cow(cow) => match self.s()?.io().read_tag(cow) {
                Ok(t) => Ok(t as Tag),
                Err(e) => Err(self.error("read_tag", e)),
            },
            Location::Zeroes => Ok(ZEROES),
        }
    }

    /// The origin reads what the model says, during a rollback too.
    fn origin_read(&mut self, chunk: usize) -> Outcome<()> {
        if self.model.pending[chunk] != 0 {
            // A write waits for a commit: the device holds the older data until then.
            return Ok(());
        }
        let want = self.model.origin_view(chunk);
        let got = match self.s()?.origin_read_location(chunk as u64) {
            Ok(loc) => self.read_location(loc, chunk)?,
            Err(e) => return Err(self.error("origin_read_location", e)),
        };
        if got != want {
            return Err(self.fail(
                "origin reads other data",
                chunk as u64,
                want.into(),
                got.into(),
            ));
        }
        Ok(())
    }

    fn snapshot_read(&mut self, slot: usize, chunk: usize) -> Outcome<()> {
        let Some(m) = self.live(slot)? else {
            return Ok(());
        };
        let got = self.view(m.id, chunk)?;
        self.sum.reads += 1;
        if got != m.data[chunk] {
            return Err(self.fail(
                "snapshot reads other data",
                m.id.into(),
                m.data[chunk].into(),
                got.into(),
            ));
        }
        Ok(())
    }

    fn create(&mut self, id: u32) -> Outcome<()> {
        let Some(slot) = self.model.snaps.iter().position(|s| s.is_none()) else {
            return Ok(());
        };
        // The target suspends the origin first: queued writes reach it.
        if self.model.pending.iter().any(|&t| t != 0) {
            self.commit()?;
        }
        let rolling = self.model.rollback.is_some();
        match self.s()?.create_snapshot(id) {
            Ok(r) => {
                if rolling {
                    return Err(self.fail("created a snapshot during a rollback", id.into(), 0, 0));
                }
                if r.id() != id || self.model.snaps.iter().flatten().any(|s| s.id == id) {
                    return Err(self.fail("created a snapshot whose id is live", id.into(), 0, 0));
                }
                self.model.snaps[slot] = Some(SnapModel {
                    id,
                    epoch: r.epoch(),
                    data: self.model.origin,
                    born: self.model.origin,
                    dropped: false,
                });
            }
            Err(Error::Exists) => {
                if !self.model.snaps.iter().flatten().any(|s| s.id == id) {
                    return Err(self.fail("id of no live snapshot exists", id.into(), 0, 0));
                }
            }
            Err(Error::RollingBack) if rolling => {}
            Err(Error::NoSpace) => self.sum.no_space += 1,
            Err(e) => return Err(self.error("create_snapshot", e)),
        }
        Ok(())
    }

    fn delete(&mut self, slot: usize) -> Outcome<()> {
        let Some(m) = self.model.snaps[slot] else {
            return Ok(());
        };
        let source = self.model.rollback == Some(slot);
        match self.s()?.delete_snapshot(m.id) {
            Ok(()) if source => {
                return Err(self.fail("deleted the snapshot of a rollback", m.id.into(), 0, 0))
            }
            Ok(()) => self.model.snaps[slot] = None,
            Err(Error::RollingBack) if source => {}
            Err(Error::NoSpace) => self.sum.no_space += 1,
            Err(e) => return Err(self.error("delete_snapshot", e)),
        }
        Ok(())
    }

    fn discard(&mut self, slot: usize, chunk: usize) -> Outcome<()> {
        let Some(m) = self.live(slot)? else {
            return Ok(());
        };
        let snap = self.snapshot_ref(m.id)?;
        if snap.epoch() != m.epoch {
            return Err(self.fail("snapshot epoch changed", m.id.into(), m.epoch, snap.epoch()));
        }
        match self.s()?.snapshot_discard(snap, chunk as u64) {
            // The snapshot's own chunk is gone: it reads its creation-time
            // data again, or zeroes.
            Ok(SnapshotDiscard::ReadsItsCopy) => {
                if let Some(m) = self.model.snaps[slot].as_mut() {
                    m.data[chunk] = m.born[chunk];
                }
                self.sum.discards += 1;
            }
            Ok(SnapshotDiscard::ReadsZeroes) => {
                if let Some(m) = self.model.snaps[slot].as_mut() {
                    m.data[chunk] = ZEROES;
                }
                self.sum.zeroed += 1;
            }
            Ok(SnapshotDiscard::Kept) => {}
            Err(Error::RollingBack) if self.model.rollback == Some(slot) => {}
            Err(e) => return Err(self.error("snapshot_discard", e)),
        }
        Ok(())
    }

    /// An origin discard that may reach the origin must be one that no
    /// live snapshot reads from the origin.
    fn origin_discard(&mut self, chunk: usize) -> Outcome<()> {
        match self.s()?.origin_discard_prepare(chunk as u64) {
            Ok(OriginDiscard::Keep) => Ok(()),
            Ok(OriginDiscard::Pass | OriginDiscard::AfterCommit) => {
                for slot in 0..MAX_SNAPSHOTS {
                    let Some(m) = self.live(slot)? else {
                        continue;
                    };
                    let snap = self.snapshot_ref(m.id)?;
                    match self.s()?.snapshot_lookup(snap, chunk as u64) {
                        Ok(Location::Origin) => {
                            return Err(self.fail(
                                "origin discard allowed on a chunk a snapshot reads",
                                m.id.into(),
                                chunk as u64,
                                0,
                            ))
                        }
                        Ok(Location::Cow(_) | Location::Zeroes) => {}
                        Err(e) => return Err(self.error("snapshot_lookup", e)),
                    }
                }
                Ok(())
            }
            Err(e) => Err(self.error("origin_discard_prepare", e)),
        }
    }

    fn reclaim(&mut self, budget: u64) -> Outcome<()> {
        match self.s()?.reclaim(budget) {
            Ok(Reclaim::NeedsCommit) => self.commit(),
            Ok(Reclaim::Done | Reclaim::More) => Ok(()),
            Err(Error::NoSpace) => {
                self.sum.no_space += 1;
                Ok(())
            }
            Err(e) => Err(self.error("reclaim", e)),
        }
    }

    fn reclaim_all(&mut self) -> Outcome<()> {
        for _ in 0..100_000 {
            self.s()?.io().between_operations();
            match self.s()?.reclaim(u64::MAX) {
                Ok(Reclaim::Done) => return Ok(()),
                Ok(Reclaim::More) => {}
                Ok(Reclaim::NeedsCommit) => self.commit()?,
                Err(e) => return Err(self.error("reclaim", e)),
            }
        }
        Err(self.fail("reclaim makes no progress", 0, 0, 0))
    }

    fn open(&mut self, dev: D) -> Outcome<()> {
        match Store::open(dev, self.p.chunk_sectors) {
            Ok(s) => {
                self.store = Some(s);
                Ok(())
            }
            Err(e) => Err(self.error("open", e)),
        }
    }

    /// A clean shutdown and open.
    fn reopen(&mut self) -> Outcome<()> {
        self.commit()?;
        let txid = self.s()?.info().committed_txid;
        let Some(s) = self.store.take() else {
            return Err(self.fail("store is gone", 0, 0, 0));
        };
        let dev = s.into_io();
        if let Err(e) = dev.write_dirty() {
            return Err(self.error("write_dirty", e));
        }
        self.open(dev)?;
        let now = self.s()?.info().committed_txid;
        if now != txid {
            return Err(self.fail("reopened at another commit", 0, txid, now));
        }
        Ok(())
    }

    /// A crash: the store reopens at its last commit.
    fn crash(&mut self) -> Outcome<()> {
        let Some(s) = self.store.take() else {
            return Err(self.fail("store is gone", 0, 0, 0));
        };
        let dev = s.into_io();
        dev.crash();
        self.open(dev)?;
        self.sum.crashes += 1;
        self.model = self.committed;
        Ok(())
    }

    /// Every live snapshot, every chunk.
    fn verify_all(&mut self) -> Outcome<()> {
        let live = self.model.snapshot_count();
        let usage = self.s()?.usage();
        if usage.snapshots != live {
            return Err(self.fail("snapshot count", 0, live, usage.snapshots));
        }
        let dropped = self.model.dropped_count();
        if usage.dropped_snapshots != dropped {
            return Err(self.fail(
                "dropped snapshot count",
                0,
                dropped,
                usage.dropped_snapshots,
            ));
        }
        for slot in 0..MAX_SNAPSHOTS {
            for chunk in 0..ORIGIN_CHUNKS {
                self.snapshot_read(slot, chunk)?;
            }
        }
        for chunk in 0..ORIGIN_CHUNKS {
            self.origin_read(chunk)?;
        }
        if self.s()?.rolling_back() != self.model.rollback.is_some() {
            return Err(self.fail("rollback running", 0, 0, 0));
        }
        Ok(())
    }

    /// The store's own checker finds nothing.
    fn check(&mut self) -> Outcome<()> {
        let mut scratch = [0u8; MAX_DEVICE_BLOCKS as usize / 8];
        let mut problems = 0u64;
        let mut first = None;
        let r = self.s()?.check(&mut scratch, &mut |p| {
            problems += 1;
            first.get_or_insert((p.what, p.value.unwrap_or(0)));
        });
        match (r, first) {
            (Ok(_), None) => Ok(()),
            // The first problem the checker found, with its value.
            (Ok(_), Some((what, value))) => Err(self.fail(what, problems, value, 0)),
            (Err(e), _) => Err(self.error("check", e)),
        }
    }

    fn one_op(&mut self) -> Outcome<()> {
        let r = self.rng.next();
        let chunk = (r >> 8) as usize % ORIGIN_CHUNKS;
        let pick = r >> 24;
        match r % 100 {
            0..=29 => self.origin_write(chunk),
            30..=44 => match self.model.pick(pick) {
                Some(slot) => self.snapshot_write(slot, chunk),
                None => Ok(()),
            },
            45..=54 => match self.model.pick(pick) {
                Some(slot) => self.snapshot_read(slot, chunk),
                None => Ok(()),
            },
            55..=59 => self.origin_read(chunk),
            60..=67 => self.create((pick % 16) as u32),
            68..=72 => match self.model.pick(pick) {
                Some(slot) => self.delete(slot),
                None => Ok(()),
            },
            73..=76 => match self.model.pick(pick) {
                Some(slot) => self.discard(slot, chunk),
                None => Ok(()),
            },
            77..=79 => self.origin_discard(chunk),
            80..=83 => self.reclaim(1 + pick % 8),
            84 => match self.model.pick(pick) {
                Some(slot) => self.start_rollback(slot),
                None => Ok(()),
            },
            85 => self.rollback_steps(1 + pick % 4).map(|_| ()),
            86..=93 => self.commit(),
            94..=95 => self.reopen(),
            96..=97 if self.p.crashes => self.crash(),
            _ => self.verify_all(),
        }
    }

    fn final_checks(&mut self) -> Outcome<()> {
        self.step = u32::MAX;
        self.commit()?;
        self.verify_all()?;
        self.check()?;
        self.reopen()?;
        self.verify_all()?;
        self.check()?;
        // Deleting every snapshot gives all space back. The snapshot of a running rollback
        // stays until the rollback, which the space of the others lets finish, has ended.
        for slot in 0..MAX_SNAPSHOTS {
            self.delete(slot)?;
        }
        self.commit()?;
        self.reclaim_all()?;
        self.commit()?;
        if !self.rollback_steps(ORIGIN_CHUNKS as u64 + 1)? {
            return Err(self.fail("a rollback cannot finish", 0, 0, 0));
        }
        self.commit()?;
        self.verify_all()?;
        for slot in 0..MAX_SNAPSHOTS {
            self.delete(slot)?;
            if self.model.snaps[slot].is_some() {
                return Err(self.fail("a snapshot cannot be deleted", slot as u64, 0, 0));
            }
        }
        self.commit()?;
        self.reclaim_all()?;
        self.commit()?;
        self.check()?;
        let u = self.s()?.usage();
        if u.data_chunks != 0 || u.shared_exceptions != 0 || u.private_exceptions != 0 {
            return Err(self.fail(
                "space left after deleting every snapshot",
                u.data_chunks,
                u.shared_exceptions,
                u.private_exceptions,
            ));
        }
        self.reopen()?;
        self.check()
    }
}

/// Formats `dev` (which must be zeroed) and runs the test on it.
pub fn run<D: TestDevice>(dev: D, p: Params) -> Result<Summary, Failure> {
    let fail = |what, a| Failure {
        step: 0,
        what,
        a,
        b: 0,
        c: 0,
        error: None,
    };
    if p.seed == 0 {
        return Err(fail("seed must not be 0", 0));
    }
    if dev.nr_blocks() > MAX_DEVICE_BLOCKS {
        return Err(fail("device larger than the test takes", dev.nr_blocks()));
    }
    let mut origin = [0; ORIGIN_CHUNKS];
    for (c, t) in origin.iter_mut().enumerate() {
        *t = (c as Tag + 1) << 16;
    }
    let model = Model {
        origin,
        pending: [0; ORIGIN_CHUNKS],
        snaps: [None; MAX_SNAPSHOTS],
        rollback: None,
        rolling: [false; ORIGIN_CHUNKS],
    };
    let mut run = Run {
        store: None,
        p,
        rng: Rng(p.seed),
        model,
        committed: model,
        next_tag: 1 << 24,
        step: 0,
        sum: Summary::default(),
    };
    run.open(dev)?;
    if p.drop_when_full {
        if let Err(e) = run.s()?.set_cow_full_policy(CowFullPolicy::Drop) {
            return Err(run.error("set_cow_full_policy", e));
        }
        run.commit()?;
    }
    while run.step < p.ops {
        run.one_op()?;
        run.step += 1;
        run.s()?.io().between_operations();
    }
    run.final_checks()?;
    Ok(run.sum)
}
