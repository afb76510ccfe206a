//! The metadata journal: a commit of origin copies is one journal block,
//! everything else (and a full journal) a checkpoint, and a read-write open
//! replays what the journal holds.

mod common;

use common::*;
use s_snap_store::userspace::{Cache, MemDisk};
use s_snap_store::{OriginWrite, Store};

/// A store of 2,048 blocks (8 MiB): a journal of 32 blocks.
fn open(disk: MemDisk) -> Store<Cache<MemDisk>> {
    Store::open(Cache::new(disk, BS, 256), CS).unwrap()
}

/// Copies origin chunk `c` for the snapshots (the data write is the test's
/// business; the store only needs it done before the completion).
fn copy<D: s_snap_store::userspace::Disk>(s: &mut Store<Cache<D>>, c: u64) {
    match s.origin_write_prepare(c).unwrap() {
        OriginWrite::Copy(plan) => s.origin_write_complete(plan).unwrap(),
        r => panic!("chunk {c}: {r:?}"),
    }
}

fn journal_blocks(s: &Store<Cache<MemDisk>>) -> u32 {
    s.info().journal_blocks
}

#[test]
fn a_commit_of_origin_copies_writes_one_journal_block() {
    let mut s = open(MemDisk::new(2048 * BS));
    assert_eq!(s.info().journal_area.1, 32);
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    let txid = s.info().committed_txid;
    for round in 1..=5u32 {
        let before = s.io().stats();
        for c in 0..3 {
            copy(&mut s, u64::from(round) * 10 + c);
        }
        s.commit().unwrap();
        let after = s.io().stats();
        // One block (the journal block) and its preflush and FUA; the
        // B+tree and bitmap changes stay in the cache.
        assert_eq!(
            after.writes - before.writes,
            1,
            "round {round}: blocks written"
        );
        assert_eq!(after.flushes - before.flushes, 2, "round {round}: flushes");
        assert_eq!(s.info().committed_txid, txid, "round {round}: checkpointed");
        assert_eq!(journal_blocks(&s), round);
    }
    assert_eq!(s.usage().shared_exceptions, 15);
    check_store(&s);
}

/// `Store::commits` counts journal blocks and checkpoints alike (the superblock's sequence
/// number only checkpoints), and not a commit that had nothing to write or that failed.
#[test]
fn commits_count_journal_blocks_and_checkpoints() {
    use s_snap_store::Error;
    let mut s = open(MemDisk::new(2048 * BS));
    assert_eq!(s.commits(), 0);
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    assert_eq!(s.commits(), 1, "the checkpoint of a snapshot create");
    let seq = s.info().seq;
    for c in 0..4 {
        copy(&mut s, c);
        s.commit().unwrap();
    }
    assert_eq!((s.commits(), s.info().seq), (5, seq), "four journal blocks");
    s.commit().unwrap();
    assert_eq!(s.commits(), 5, "nothing to write");
    s.checkpoint().unwrap();
    assert_eq!((s.commits(), s.info().seq), (6, seq + 1), "a checkpoint");
    // A journal write that fails is no commit.
    copy(&mut s, 10);
    let mut image = vec![0u8; BS];
    s.journal_commit_start(&mut image).unwrap().unwrap();
    assert_eq!(s.commits(), 6, "a journal write in flight");
    let failed = Error::Io("test: write failed");
    assert_eq!(s.journal_commit_end(Err(failed)), Err(failed));
    assert_eq!(s.commits(), 6);
}

#[test]
fn a_crash_keeps_what_the_journal_committed() {
    let mut s = open(MemDisk::new(2048 * BS));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    let checkpoint = s.info().committed_txid;
    for c in 0..40 {
        copy(&mut s, c);
        if c % 4 == 3 {
            s.commit().unwrap();
        }
    }
    // Copies 40 and 41 are not committed: the crash loses them.
    copy(&mut s, 40);
    copy(&mut s, 41);
    let io = s.into_io();
    io.drop_all();
    let disk = io.into_disk();
    // A read-only open sees the checkpoint and counts the journal blocks.
    let ro = Store::open_existing(Cache::new(MemDisk::from_vec(disk.to_vec()), BS, 64)).unwrap();
    assert_eq!(ro.info().committed_txid, checkpoint);
    assert_eq!(journal_blocks(&ro), 10);
    assert_eq!(ro.usage().shared_exceptions, 0);
    check_store(&ro);
    // A read-write open replays them.
    let mut s = open(disk);
    assert_eq!(
        (s.info().committed_txid, journal_blocks(&s)),
        (checkpoint, 10)
    );
    assert_eq!(s.usage().shared_exceptions, 40);
    assert_eq!(s.usage().data_chunks, 40);
    let snap = s.snapshot_epoch(1).unwrap().unwrap();
    let mut cows: Vec<u64> = (0..40)
        .map(|c| match s.snapshot_lookup(snap, c).unwrap() {
            s_snap_store::Location::Cow(x) => x,
            l => panic!("chunk {c}: {l:?}"),
        })
        .collect();
    cows.sort_unstable();
    cows.dedup();
    assert_eq!(cows.len(), 40, "replayed exceptions share chunks");
    assert_eq!(
        s.snapshot_lookup(snap, 40).unwrap(),
        s_snap_store::Location::Origin
    );
    check_store(&s);
    // The session goes on after the replayed blocks, and a crash after it
    // replays both.
    copy(&mut s, 40);
    s.commit().unwrap();
    assert_eq!(journal_blocks(&s), 11);
    let io = s.into_io();
    io.drop_all();
    let s = open(io.into_disk());
    assert_eq!(journal_blocks(&s), 11);
    assert_eq!(s.usage().shared_exceptions, 41);
    check_store(&s);
}

#[test]
fn other_changes_and_a_full_journal_commit_a_checkpoint() {
    let mut s = open(MemDisk::new(2048 * BS));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    copy(&mut s, 0);
    s.commit().unwrap();
    assert_eq!(journal_blocks(&s), 1);
    // A snapshot create is not an origin copy.
    let txid = s.info().committed_txid;
    s.create_snapshot(2).unwrap();
    copy(&mut s, 1);
    s.commit().unwrap();
    assert!(s.info().committed_txid > txid, "create not checkpointed");
    assert_eq!(journal_blocks(&s), 0);
    // 31 journal commits fill the area (its last block is where journal blocks are
    // built); the 32nd commit is a checkpoint.
    let txid = s.info().committed_txid;
    for c in 0..31 {
        copy(&mut s, 100 + c);
        s.commit().unwrap();
        assert_eq!(s.info().committed_txid, txid);
    }
    assert_eq!(journal_blocks(&s), 31);
    copy(&mut s, 200);
    s.commit().unwrap();
    assert!(
        s.info().committed_txid > txid,
        "full journal not checkpointed"
    );
    assert_eq!(journal_blocks(&s), 0);
    // So does a forced checkpoint, and a commit with nothing new does
    // nothing.
    copy(&mut s, 201);
    s.commit().unwrap();
    let (txid, w) = (s.info().committed_txid, s.io().stats().writes);
    s.commit().unwrap();
    assert_eq!((s.info().committed_txid, s.io().stats().writes), (txid, w));
    s.checkpoint().unwrap();
    assert!(s.info().committed_txid > txid);
    assert_eq!(journal_blocks(&s), 0);
    check_store(&s);
}

#[test]
fn a_store_under_one_mebibyte_has_no_journal() {
    let mut s = open(MemDisk::new(255 * BS));
    assert_eq!(s.info().journal_area, (0, 0));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    let txid = s.info().committed_txid;
    copy(&mut s, 0);
    s.commit().unwrap();
    assert!(
        s.info().committed_txid > txid,
        "no checkpoint without a journal"
    );
    check_store(&s);
}

#[test]
fn an_origin_write_waits_only_for_copies_not_yet_committed() {
    let mut s = open(MemDisk::new(2048 * BS));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    copy(&mut s, 5);
    // The copy is not durable yet: a second write of the chunk waits.
    assert_eq!(s.origin_write_prepare(5).unwrap(), OriginWrite::AfterCommit);
    s.commit().unwrap();
    // Journal-committed, in a leaf of the running transaction: it goes.
    assert_eq!(journal_blocks(&s), 1);
    assert_eq!(s.origin_write_prepare(5).unwrap(), OriginWrite::Proceed);
    // Another copy in the same leaf, not committed, holds back only its own
    // chunk.
    copy(&mut s, 6);
    assert_eq!(s.origin_write_prepare(5).unwrap(), OriginWrite::Proceed);
    assert_eq!(s.origin_write_prepare(6).unwrap(), OriginWrite::AfterCommit);
}

/// A journal write the caller makes (the kernel's commit work): the transaction goes on while
/// it is in flight, and a crash before, during or after it recovers a consistent state.
#[test]
fn a_journal_write_in_flight_lets_the_transaction_go_on() {
    use s_snap_store::{BlockIo, Error};
    let mut s = open(MemDisk::new(2048 * BS));
    s.create_snapshot(1).unwrap();
    s.commit().unwrap();
    for c in 0..3 {
        copy(&mut s, c);
    }
    // A copy in flight does not hold a journal commit back: it records completed copies.
    let OriginWrite::Copy(plan) = s.origin_write_prepare(10).unwrap() else {
        panic!("copy expected");
    };
    assert!(s.commit_beside_plans_possible());
    let mut image = vec![0u8; BS];
    let nr = s
        .journal_commit_start(&mut image)
        .unwrap()
        .expect("a block to write");
    assert!(s.journal_writing());
    // Until the write is reported, its copies are not durable and no other commit is made.
    assert_eq!(s.origin_write_prepare(0).unwrap(), OriginWrite::AfterCommit);
    assert_eq!(s.commit(), Err(Error::Busy));
    assert_eq!(s.checkpoint(), Err(Error::Busy));
    assert_eq!(s.journal_commit_start(&mut image), Err(Error::Busy));
    assert!(!s.commit_beside_plans_possible());
    // The transaction goes on: what completes now goes into the next block.
    s.origin_write_complete(plan).unwrap();
    copy(&mut s, 3);
    let before_write = s.io().disk().to_vec();
    s.io().write_durably(nr, &image).unwrap();
    let after_write = s.io().disk().to_vec();
    s.journal_commit_end(Ok(())).unwrap();
    assert!(!s.journal_writing());
    assert_eq!(s.origin_write_prepare(0).unwrap(), OriginWrite::Proceed);
    assert_eq!(s.origin_write_prepare(3).unwrap(), OriginWrite::AfterCommit);
    s.commit().unwrap();
    assert_eq!(journal_blocks(&s), 2);
    assert_eq!(s.usage().shared_exceptions, 5);
    check_store(&s);
    let after_next = s.io().disk().to_vec();
    for (image, blocks, shared) in [
        (before_write, 0, 0),
        (after_write, 1, 3),
        (after_next, 2, 5),
    ] {
        let s = open(MemDisk::from_vec(image));
        assert_eq!(
            (journal_blocks(&s), s.usage().shared_exceptions),
            (blocks, shared)
        );
        check_store(&s);
    }
}

/// A journal write that fails leaves the device in doubt: the store fails, and a reopen
/// finds a consistent state.
#[test]
fn a_failed_journal_write_fails_the_store() {
    use s_snap_store::Error;
    // Whatever the error (even one that is not fatal elsewhere): the block may have reached
    // the device, and the block being built already names the index after it.
    for error in [Error::Io("test: write failed"), Error::NoSpace] {
        let mut s = open(MemDisk::new(2048 * BS));
        s.create_snapshot(1).unwrap();
        s.commit().unwrap();
        copy(&mut s, 0);
        let mut image = vec![0u8; BS];
        s.journal_commit_start(&mut image).unwrap().unwrap();
        copy(&mut s, 1);
        assert_eq!(s.journal_commit_end(Err(error)), Err(error));
        assert!(!s.journal_writing());
        assert_eq!(s.origin_write_prepare(2).map(|_| ()), Err(Error::Failed));
        assert_eq!(s.commit(), Err(Error::Failed));
        let io = s.into_io();
        io.drop_all();
        let s = open(io.into_disk());
        assert_eq!(s.usage().shared_exceptions, 0);
        check_store(&s);
    }
}

/// A memory disk whose writes or flushes fail once armed.
struct FailingDisk {
    inner: MemDisk,
    fail_writes: std::cell::Cell<bool>,
    fail_flushes: std::cell::Cell<bool>,
}

impl s_snap_store::userspace::Disk for FailingDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(off, buf)
    }
    fn write_at(&self, off: u64, data: &[u8]) -> std::io::Result<()> {
        if self.fail_writes.get() {
            return Err(std::io::Error::other("injected write error"));
        }
        self.inner.write_at(off, data)
    }
    fn flush(&self) -> std::io::Result<()> {
        if self.fail_flushes.get() {
            return Err(std::io::Error::other("injected flush error"));
        }
        self.inner.flush()
    }
}

/// A journal commit whose write or flush fails fails the store, and leaves no write in flight
/// (a target waiting for one would wait for ever); reopened, the store holds the last commit
/// and is consistent.
#[test]
fn a_journal_commit_that_fails_fails_the_store() {
    use s_snap_store::userspace::Disk;
    use s_snap_store::Error;
    for fail_writes in [true, false] {
        let disk = FailingDisk {
            inner: MemDisk::new(2048 * BS),
            fail_writes: false.into(),
            fail_flushes: false.into(),
        };
        let mut s = Store::open(Cache::new(disk, BS, 256), CS).unwrap();
        s.create_snapshot(1).unwrap();
        s.commit().unwrap();
        copy(&mut s, 0);
        s.commit().unwrap();
        copy(&mut s, 1);
        let disk = s.io().disk();
        disk.fail_writes.set(fail_writes);
        disk.fail_flushes.set(!fail_writes);
        assert!(matches!(s.commit(), Err(Error::Io(_))), "{fail_writes}");
        assert!(!s.journal_writing());
        assert_eq!(s.origin_write_prepare(2).map(|_| ()), Err(Error::Failed));
        let io = s.into_io();
        io.drop_all();
        let disk = io.into_disk();
        let mut image = vec![0u8; disk.size() as usize];
        disk.read_at(0, &mut image).unwrap();
        let s = open(MemDisk::from_vec(image));
        assert_eq!(journal_blocks(&s), 1);
        assert_eq!(s.usage().shared_exceptions, 1);
        check_store(&s);
    }
}
