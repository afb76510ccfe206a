//! Test harness: drives a store like the target would and keeps a plain
//! model of what the origin and every snapshot must contain.
#![allow(dead_code, unreachable_pub, missing_docs)]

use s_snap_store::userspace::{Cache, Disk};
use s_snap_store::{
    BlockIo, CowFullPolicy, Error, Location, OriginWrite, Reclaim, SnapWritePlan, SnapshotDiscard,
    Store, Usage,
};
use std::collections::{BTreeMap, BTreeSet};

/// Chunk size used by the tests: 8 sectors = 4 KiB.
pub const CS: u32 = 8;
pub const BS: usize = 4096;

/// Contents of a chunk as far as the tests care: two 8-byte slots.
pub type Data = [u64; 2];

/// What a chunk that reads as zeroes holds.
pub const ZEROES: Data = [0, 0];

/// What COW data chunk `chunk` holds.
pub fn try_read_data_chunk<D: Disk>(s: &Store<Cache<D>>, chunk: u64) -> Option<Data> {
    let mut b = [0u8; 16];
    s.io().read_data(chunk, 0, &mut b).ok()?;
    Some([
        u64::from_le_bytes(b[..8].try_into().unwrap()),
        u64::from_le_bytes(b[8..].try_into().unwrap()),
    ])
}

/// What a snapshot reads of origin chunk `chunk` whose data is at `loc`, the origin holding
/// `origin`.
pub fn try_location_data<D: Disk>(
    s: &Store<Cache<D>>,
    loc: Location,
    origin: &[Data],
    chunk: u64,
) -> Option<Data> {
    match loc {
        Location::Origin => Some(origin[chunk as usize]),
        Location::Cow(x) => try_read_data_chunk(s, x),
        Location::Zeroes => Some(ZEROES),
    }
}

/// [`try_location_data`] of a store that must read.
pub fn location_data<D: Disk>(
    s: &Store<Cache<D>>,
    loc: Location,
    origin: &[Data],
    chunk: u64,
) -> Data {
    try_location_data(s, loc, origin, chunk).expect("read a data chunk")
}

/// Model of every live snapshot: id -> contents.
pub type Model = BTreeMap<u32, Vec<Data>>;

/// (txid, log position before commit, after commit, model) of a commit.
pub type CommitRec = (u64, usize, usize, Model);

pub struct Harness<D: Disk> {
    pub store: Option<Store<Cache<D>>>,
    /// Chunk size in sectors.
    pub cs: u32,
    /// What the origin device holds.
    pub origin: Vec<Data>,
    /// What the user wrote to the origin (including writes still waiting
    /// for a commit).
    pub user_origin: Vec<Data>,
    /// Model of every live snapshot.
    pub snaps: BTreeMap<u32, Vec<Data>>,
    /// Origin writes waiting for the next commit, in order.
    pub pending: Vec<(u64, usize, u64)>,
    pub next_val: u64,
    pub cache_cap: usize,
    pub chaos: Option<(u64, u32)>,
    /// Issue writes to chunks the snapshot already owns.
    pub allow_direct: bool,
    /// Position of the disk's write log, for crash tests.
    pub pos: fn(&D) -> usize,
    /// (log position, chunk, slot, value) of each origin write issued.
    pub origin_log: Vec<(usize, u64, usize, u64)>,
    /// (txid, log position before commit, after commit, model) per commit.
    pub commits: Vec<CommitRec>,
    pub nospace: u64,
    pub copies: u64,
    pub unshares: u64,
    pub discards: u64,
    /// The origin as each snapshot epoch was created with (epochs are never reused).
    pub born: BTreeMap<u64, Vec<Data>>,
    /// Snapshots dropped by the `drop` COW-full policy and not deleted.
    pub dropped: BTreeSet<u32>,
    /// The dropped snapshots as of each commit, by txid.
    pub dropped_at: BTreeMap<u64, BTreeSet<u32>>,
    /// Snapshots dropped so far (deleted ones included).
    pub drops: u64,
}

fn no_pos<D>(_: &D) -> usize {
    0
}

/// Identity of a store's durable state: the transaction id of its last checkpoint and the
/// journal blocks committed after it (a read-only open counts those a read-write open would
/// replay). It grows with every commit.
pub fn durable_id<D: Disk>(s: &Store<Cache<D>>) -> u64 {
    let i = s.info();
    i.committed_txid << 16 | u64::from(i.journal_blocks)
}

pub fn usage_baseline(u: &Usage) -> (u64, u64, u64, u64, u64) {
    (
        u.data_chunks,
        u.metadata_chunks,
        u.shared_exceptions,
        u.private_exceptions,
        u.snapshots,
    )
}

impl<D: Disk> Harness<D> {
    pub fn new(disk: D, origin_chunks: usize, cache_cap: usize) -> Harness<D> {
        Self::build(disk, origin_chunks, cache_cap, None, no_pos::<D>)
    }

    pub fn build(
        disk: D,
        origin_chunks: usize,
        cache_cap: usize,
        chaos: Option<(u64, u32)>,
        pos: fn(&D) -> usize,
    ) -> Harness<D> {
        Self::build_cs(disk, CS, origin_chunks, cache_cap, chaos, pos)
    }

    /// As [`Harness::build`], with chunks of `cs` sectors.
    pub fn build_cs(
        disk: D,
        cs: u32,
        origin_chunks: usize,
        cache_cap: usize,
        chaos: Option<(u64, u32)>,
        pos: fn(&D) -> usize,
    ) -> Harness<D> {
        let mut h = Harness {
            store: None,
            cs,
            origin: (0..origin_chunks as u64)
                .map(|c| [c << 32, (c << 32) | 1])
                .collect(),
            user_origin: vec![],
            snaps: BTreeMap::new(),
            pending: vec![],
            next_val: 1 << 48,
            cache_cap,
            chaos,
            allow_direct: true,
            pos,
            origin_log: vec![],
            commits: vec![],
            nospace: 0,
            copies: 0,
            unshares: 0,
            discards: 0,
            born: BTreeMap::new(),
            dropped: BTreeSet::new(),
            dropped_at: BTreeMap::new(),
            drops: 0,
        };
        h.user_origin = h.origin.clone();
        h.open_disk(disk);
        let txid = durable_id(h.s());
        h.commits
            .push((txid, 0, (h.pos)(h.s().io().disk()), BTreeMap::new()));
        h.dropped_at.insert(txid, BTreeSet::new());
        h
    }

    /// Sets the store's COW-full policy and commits it.
    pub fn set_policy(&mut self, policy: CowFullPolicy) {
        self.sm().set_cow_full_policy(policy).expect("set policy");
        self.commit();
        assert_eq!(self.s().cow_full_policy(), policy);
    }

    pub fn open_disk(&mut self, disk: D) {
        let io = Cache::new(disk, self.cs as usize * 512, self.cache_cap);
        if let Some((seed, n)) = self.chaos {
            io.set_writeback_chaos(seed, n);
        }
        self.store = Some(Store::open(io, self.cs).expect("open"));
    }

    pub fn s(&self) -> &Store<Cache<D>> {
        self.store.as_ref().unwrap()
    }

    pub fn sm(&mut self) -> &mut Store<Cache<D>> {
        self.store.as_mut().unwrap()
    }

    fn val(&mut self) -> u64 {
        self.next_val += 1;
        self.next_val
    }

    pub fn read_chunk(&self, chunk: u64) -> Data {
        try_read_data_chunk(self.s(), chunk).expect("read a data chunk")
    }

    pub fn write_chunk(&self, chunk: u64, d: Data) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d[0].to_le_bytes());
        b[8..].copy_from_slice(&d[1].to_le_bytes());
        self.s().io().write_data(chunk, 0, &b).unwrap();
    }

    fn loc_data(&self, loc: Location, chunk: u64) -> Data {
        location_data(self.s(), loc, &self.origin, chunk)
    }

    /// A snapshot's current view of a chunk, read through the store.
    pub fn view(&self, id: u32, chunk: u64) -> Data {
        let snap = self.s().snapshot_epoch(id).unwrap().expect("live snapshot");
        let loc = self.s().snapshot_lookup(snap, chunk).unwrap();
        self.loc_data(loc, chunk)
    }

    fn issue_origin(&mut self, chunk: u64, slot: usize, v: u64) {
        self.origin[chunk as usize][slot] = v;
        let p = (self.pos)(self.s().io().disk());
        self.origin_log.push((p, chunk, slot, v));
    }

    /// Drains pending origin writes (the target does this before a
    /// snapshot is created: the origin is suspended and flushed).
    pub fn quiesce(&mut self) {
        if !self.pending.is_empty() {
            self.commit();
        }
    }

    pub fn create(&mut self, id: u32) -> bool {
        self.quiesce();
        match self.sm().create_snapshot(id) {
            Ok(s) => {
                assert_eq!(s.id(), id);
                assert!(!self.snaps.contains_key(&id));
                let v = self.origin.clone();
                assert_eq!(v, self.user_origin);
                self.born.insert(s.epoch(), v.clone());
                self.snaps.insert(id, v);
                true
            }
            Err(Error::Exists) => {
                assert!(self.snaps.contains_key(&id) || self.dropped.contains(&id));
                false
            }
            Err(Error::NoSpace) => {
                self.nospace += 1;
                false
            }
            Err(e) => panic!("create {id}: {e:?}"),
        }
    }

    pub fn delete(&mut self, id: u32) -> bool {
        let before = durable_id(self.s());
        let r = self.sm().delete_snapshot(id);
        // A deletion only marks the snapshot: its space comes back through
        // `reclaim`.
        assert_eq!(durable_id(self.s()), before, "delete committed");
        match r {
            Ok(()) => {
                assert!(
                    self.snaps.remove(&id).is_some() || self.dropped.remove(&id),
                    "deleted unknown {id}"
                );
                true
            }
            Err(Error::NotFound) => {
                assert!(!self.snaps.contains_key(&id) && !self.dropped.contains(&id));
                false
            }
            Err(Error::NoSpace) => {
                // Not deleted.
                self.nospace += 1;
                assert!(self.snaps.contains_key(&id));
                assert!(self.s().snapshot_epoch(id).unwrap().is_some());
                false
            }
            Err(e) => panic!("delete {id}: {e:?}"),
        }
    }

    /// Reclaims deleted snapshots' space for at most `budget` steps, and
    /// commits when the store asks for it, as the target's worker does.
    pub fn reclaim(&mut self, budget: u64) {
        match self.sm().reclaim(budget) {
            Ok(Reclaim::NeedsCommit) => self.commit(),
            Ok(Reclaim::Done | Reclaim::More) => {}
            Err(Error::NoSpace) => self.nospace += 1,
            Err(e) => panic!("reclaim: {e:?}"),
        }
    }

    /// Deletes snapshot `id` and reclaims its space to the end, committing
    /// and checking the store after the deletion and after the reclaim.
    pub fn delete_and_reclaim(&mut self, id: u32) {
        self.delete(id);
        self.commit();
        self.check();
        self.reclaim_all();
        self.commit();
        self.check();
    }

    /// Creates snapshot 1 and copies the first `evens` even chunks for it,
    /// then snapshot 2 and copies odd chunks, which both need, until the
    /// store is full; commits. The shared leaves then hold exceptions that
    /// only snapshot 1 needs beside ones that snapshot 2 needs too, so that
    /// reclaiming snapshot 1 must copy (shadow) them rather than drop them.
    pub fn fill_interleaved(&mut self, evens: u64) {
        self.create(1);
        for c in 0..evens {
            self.origin_write(c * 2, 0);
        }
        self.commit();
        self.create(2);
        let mut c = 1;
        while self.nospace == 0 {
            self.origin_write(c, 1);
            c += 2;
        }
        self.commit();
    }

    /// Reclaims until every deleted snapshot's space is back.
    pub fn reclaim_all(&mut self) {
        for _ in 0..1_000_000 {
            match self.sm().reclaim(u64::MAX).expect("reclaim") {
                Reclaim::Done => return,
                Reclaim::More => {}
                Reclaim::NeedsCommit => self.commit(),
            }
        }
        panic!("reclaim made no progress");
    }

    pub fn origin_write(&mut self, chunk: u64, slot: usize) {
        let v = self.val();
        let queued = self.pending.iter().any(|p| p.0 == chunk);
        match self.sm().origin_write_prepare(chunk) {
            Ok(OriginWrite::RollBackFirst) => panic!("the harness starts no rollback"),
            Ok(OriginWrite::Proceed) => {
                if queued {
                    self.pending.push((chunk, slot, v));
                } else {
                    self.issue_origin(chunk, slot, v);
                }
            }
            Ok(OriginWrite::AfterCommit) => self.pending.push((chunk, slot, v)),
            Ok(OriginWrite::Copy(plan)) => {
                assert_eq!(plan.chunk(), chunk);
                let d = self.origin[chunk as usize];
                self.write_chunk(plan.cow(), d);
                match self.sm().origin_write_complete(plan) {
                    Ok(()) => {
                        self.copies += 1;
                        self.pending.push((chunk, slot, v));
                    }
                    Err(Error::NoSpace) => {
                        self.nospace += 1;
                        return;
                    }
                    Err(e) => panic!("origin complete: {e:?}"),
                }
            }
            Err(Error::NoSpace) if self.s().cow_full_policy() == CowFullPolicy::Drop => {
                if !self.drop_for(chunk) {
                    return;
                }
                // Every snapshot that needed the copy is gone: the write waits for the commit
                // that makes that durable.
                assert_eq!(
                    self.sm().origin_write_prepare(chunk),
                    Ok(OriginWrite::AfterCommit),
                    "origin write after dropping snapshots"
                );
                self.pending.push((chunk, slot, v));
            }
            Err(Error::NoSpace) => {
                self.nospace += 1;
                return;
            }
            Err(e) => panic!("origin prepare: {e:?}"),
        }
        self.user_origin[chunk as usize][slot] = v;
    }

    pub fn snap_write(&mut self, id: u32, chunk: u64, slot: usize) {
        let Some(snap) = self.s().snapshot_epoch(id).unwrap() else {
            assert!(!self.snaps.contains_key(&id));
            return;
        };
        let v = self.val();
        match self.sm().snapshot_write_prepare(snap, chunk) {
            Ok(SnapWritePlan::Direct(cow)) => {
                if !self.allow_direct {
                    return;
                }
                let mut d = self.read_chunk(cow);
                d[slot] = v;
                self.write_chunk(cow, d);
            }
            Ok(SnapWritePlan::Unshare(plan)) => {
                let mut d = self.loc_data(plan.from(), chunk);
                d[slot] = v;
                self.write_chunk(plan.to(), d);
                match self.sm().snapshot_write_complete(plan) {
                    Ok(()) => self.unshares += 1,
                    Err(Error::NoSpace) => {
                        self.nospace += 1;
                        return;
                    }
                    Err(e) => panic!("snapshot complete: {e:?}"),
                }
            }
            Err(Error::NoSpace) => {
                self.nospace += 1;
                return;
            }
            Err(e) => panic!("snapshot prepare: {e:?}"),
        }
        self.snaps.get_mut(&id).unwrap()[chunk as usize][slot] = v;
    }

    /// Drops the snapshots that need a copy of `chunk` (the `drop` policy found no space):
    /// exactly those whose data of the chunk is still the origin's. False if not even that
    /// fitted.
    fn drop_for(&mut self, chunk: u64) -> bool {
        // The snapshots that read the chunk from the origin need the copy.
        let needing: BTreeSet<u32> = self
            .snaps
            .keys()
            .copied()
            .filter(|&id| {
                let snap = self.s().snapshot_epoch(id).unwrap().unwrap();
                self.s().snapshot_lookup(snap, chunk).unwrap() == Location::Origin
            })
            .collect();
        let mut gone = vec![];
        let r = self
            .sm()
            .drop_snapshots_needing(chunk, &mut |s| gone.push(s.id()));
        for id in &gone {
            let m = self.snaps.remove(id).expect("dropped an unknown snapshot");
            assert_eq!(
                m[chunk as usize], self.origin[chunk as usize],
                "dropped snapshot {id} did not need the copy"
            );
            assert!(self.dropped.insert(*id));
            self.drops += 1;
        }
        if r.is_ok() {
            assert_eq!(gone.iter().copied().collect::<BTreeSet<_>>(), needing);
        }
        // The survivors keep their own data of the chunk.
        for (id, m) in &self.snaps {
            assert_eq!(self.view(*id, chunk), m[chunk as usize], "survivor {id}");
        }
        match r {
            Ok(n) => {
                assert_eq!(n, gone.len() as u64);
                true
            }
            Err(Error::NoSpace) => {
                self.nospace += 1;
                false
            }
            Err(e) => panic!("drop: {e:?}"),
        }
    }

    pub fn snap_read(&self, id: u32, chunk: u64) {
        if let Some(m) = self.snaps.get(&id) {
            assert_eq!(
                self.view(id, chunk),
                m[chunk as usize],
                "snapshot {id} chunk {chunk}"
            );
        }
    }

    /// Discards `chunk` of snapshot `id`: if the store frees the snapshot's
    /// own chunk, the snapshot reads the chunk as it was when it was created.
    pub fn snap_discard(&mut self, id: u32, chunk: u64) {
        let Some(snap) = self.s().snapshot_epoch(id).unwrap() else {
            return;
        };
        let private_before = self.s().usage().private_exceptions;
        match self.sm().snapshot_discard(snap, chunk) {
            Ok(SnapshotDiscard::ReadsItsCopy) => {
                assert_eq!(self.s().usage().private_exceptions, private_before - 1);
                let born = self.born[&snap.epoch()][chunk as usize];
                self.snaps.get_mut(&id).unwrap()[chunk as usize] = born;
                self.discards += 1;
            }
            Ok(SnapshotDiscard::ReadsZeroes) => {
                assert_eq!(self.s().usage().private_exceptions, private_before);
                self.snaps.get_mut(&id).unwrap()[chunk as usize] = ZEROES;
                self.discards += 1;
            }
            Ok(SnapshotDiscard::Kept) => {
                assert_eq!(self.s().usage().private_exceptions, private_before)
            }
            Err(e) => panic!("snapshot discard: {e:?}"),
        }
    }

    pub fn commit(&mut self) {
        let before = (self.pos)(self.s().io().disk());
        self.sm().commit().expect("commit");
        let after = (self.pos)(self.s().io().disk());
        let txid = durable_id(self.s());
        for (c, s, v) in std::mem::take(&mut self.pending) {
            self.issue_origin(c, s, v);
        }
        assert_eq!(self.origin, self.user_origin);
        if self.commits.last().map(|c| c.0) != Some(txid) {
            self.commits.push((txid, before, after, self.snaps.clone()));
        }
        self.dropped_at.insert(txid, self.dropped.clone());
    }

    /// Clean close and open again.
    pub fn reopen(&mut self) {
        self.commit();
        let io = self.store.take().unwrap().into_io();
        io.write_dirty().unwrap();
        let disk = io.into_disk();
        self.open_disk(disk);
        let txid = durable_id(self.s());
        assert_eq!(txid, self.commits.last().unwrap().0);
    }

    /// Simulates a crash: cached dirty blocks are lost (blocks written
    /// early stay on the device), the store reopens at its last commit.
    pub fn crash(&mut self) {
        let io = self.store.take().unwrap().into_io();
        io.drop_all();
        let disk = io.into_disk();
        self.open_disk(disk);
        let last = self.commits.last().unwrap();
        assert_eq!(durable_id(self.s()), last.0, "reopened at another commit");
        self.snaps = last.3.clone();
        self.dropped = self.dropped_at[&last.0].clone();
        self.pending.clear();
        self.user_origin = self.origin.clone();
    }

    /// Compares every snapshot and the origin with the model.
    pub fn verify_all(&self) {
        let ids: Vec<u32> = self.s().snapshots().map(|s| s.unwrap().id()).collect();
        let want: Vec<u32> = self.snaps.keys().copied().collect();
        assert_eq!(ids, want, "snapshot ids");
        for (id, m) in &self.snaps {
            for c in 0..m.len() as u64 {
                assert_eq!(self.view(*id, c), m[c as usize], "snapshot {id} chunk {c}");
            }
        }
        assert_eq!(self.s().usage().snapshots, self.snaps.len() as u64);
        let dropped: BTreeSet<u32> = self
            .s()
            .dropped_snapshots()
            .map(|s| s.unwrap().id())
            .collect();
        assert_eq!(dropped, self.dropped, "dropped snapshot ids");
        assert_eq!(
            self.s().usage().dropped_snapshots,
            self.dropped.len() as u64
        );
        for id in &self.dropped {
            assert_eq!(self.s().snapshot_epoch(*id).unwrap(), None);
            assert!(self.s().snapshot_dropped(*id).unwrap());
        }
    }

    pub fn check(&self) {
        check_store(self.s());
    }
}

/// The store holds at most this many block handles at once (the kernel's
/// dm-bufio client reserves buffers for it).
pub const MAX_HELD: u64 = 2;

pub fn check_store<D: Disk>(s: &Store<Cache<D>>) {
    assert!(
        s.io().stats().max_held <= MAX_HELD,
        "held {} blocks at once",
        s.io().stats().max_held
    );
    let mut scratch = vec![0u8; s.check_scratch_len()];
    let mut probs = vec![];
    s.check(&mut scratch, &mut |p| probs.push(p)).unwrap();
    assert!(probs.is_empty(), "check found problems: {probs:?}");
}

/// The store tests' generator (xorshift64), shared with the model test.
#[allow(unused_imports)]
pub use s_snap_store::model_test::Rng;
