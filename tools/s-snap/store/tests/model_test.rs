//! The store's own model test (`model_test`, which the kernel runs as the
//! KUnit suite `dm_s_snap_store`) on the userspace cache: the same
//! parameters as the kernel's cases pass here, and a device that loses
//! writes makes it fail.

use s_snap_store::model_test::{self, Params, MAX_DEVICE_BLOCKS};
use s_snap_store::userspace::{Cache, Disk, MemDisk};
use s_snap_store::{min_chunks, META_BLOCK_SIZE};
use std::cell::Cell;
use std::io;

/// A zeroed device of `chunks` chunks of `cs` sectors behind a cache of
/// `cache` blocks that also writes one released dirty block in four early.
fn device<D: Disk>(disk: D, cs: u32, cache: usize) -> Cache<D> {
    let c = Cache::new(disk, cs as usize * 512, cache);
    c.set_writeback_chaos(7, 4);
    c
}

fn mem(cs: u32, chunks: u64) -> MemDisk {
    MemDisk::new((chunks * u64::from(cs) * 512) as usize)
}

/// The kernel suite's cases (`drivers/md/dm_s_snap/store_kunit.rs`), here.
#[test]
fn kernel_cases_pass_in_userspace() {
    // Snapshot discards of both kinds: back to the copy of the snapshot's time, and to zeroes.
    let (mut discards, mut zeroed) = (0, 0);
    // Rollbacks started, and chunks they copied back.
    let (mut rollbacks, mut rolled_back) = (0, 0);
    for (cs, chunks, crashes) in [(8, 256, false), (16, 128, true), (128, 24, true)] {
        for seed in 1..=8u64 {
            let p = Params {
                chunk_sectors: cs,
                seed: seed * 0x9e37_79b9,
                ops: 3000,
                crashes,
                drop_when_full: false,
            };
            let s = model_test::run(device(mem(cs, chunks), cs, 8), p)
                .unwrap_or_else(|f| panic!("chunk {cs} seed {seed}: {f}"));
            assert!(s.copies > 0 && s.reads > 0 && s.commits > 0, "{s:?}");
            assert_eq!(s.crashes > 0, crashes, "{s:?}");
            discards += s.discards;
            zeroed += s.zeroed;
            rollbacks += s.rollbacks;
            rolled_back += s.rolled_back;
        }
    }
    assert!(
        discards > 0 && zeroed > 0,
        "{discards} discards, {zeroed} zeroed"
    );
    assert!(
        rollbacks > 0 && rolled_back > rollbacks,
        "{rollbacks} rollbacks, {rolled_back} chunks copied back"
    );
    eprintln!("{rollbacks} rollbacks, {rolled_back} chunks copied back");
}

/// A device just large enough: most writes find no space.
#[test]
fn smallest_device() {
    for cs in [8u32, 16, 128, 1024] {
        let chunks = min_chunks(cs) + 2;
        let p = Params {
            chunk_sectors: cs,
            seed: 3,
            ops: 2000,
            crashes: true,
            drop_when_full: false,
        };
        let s = model_test::run(device(mem(cs, chunks), cs, 4), p)
            .unwrap_or_else(|f| panic!("chunk {cs}: {f}"));
        assert!(s.no_space > 0, "{s:?}");
    }
}

/// A disk whose writes stop reaching it after a while, as a disk that
/// acknowledges writes it loses.
struct LosingDisk {
    inner: MemDisk,
    writes_left: Cell<u64>,
}

impl Disk for LosingDisk {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(off, buf)
    }
    fn write_at(&self, off: u64, data: &[u8]) -> io::Result<()> {
        if self.writes_left.get() == 0 {
            return Ok(());
        }
        self.writes_left.set(self.writes_left.get() - 1);
        self.inner.write_at(off, data)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The test can fail: on a disk that loses writes it reports the step.
#[test]
fn fails_on_a_device_that_loses_writes() {
    let disk = LosingDisk {
        inner: mem(8, 256),
        writes_left: Cell::new(200),
    };
    let p = Params {
        chunk_sectors: 8,
        seed: 5,
        ops: 3000,
        crashes: false,
        drop_when_full: false,
    };
    let f = model_test::run(device(disk, 8, 8), p).expect_err("lost writes went unnoticed");
    assert!(f.step < 3000 || f.step == u32::MAX, "{f}");
}

/// Bad parameters are refused, not run.
#[test]
fn refuses_what_it_cannot_test() {
    let p = Params {
        chunk_sectors: 8,
        seed: 0,
        ops: 10,
        crashes: false,
        drop_when_full: false,
    };
    assert!(model_test::run(device(mem(8, 64), 8, 8), p).is_err());
    let p = Params { seed: 1, ..p };
    let big = (MAX_DEVICE_BLOCKS + 1) * META_BLOCK_SIZE as u64 / 4096;
    assert!(model_test::run(device(mem(8, big), 8, 8), p).is_err());
}

/// The `drop` policy on small devices: origin writes that find no space drop exactly the
/// snapshots that need their copy (checked by the model at each drop), through crashes.
#[test]
fn drop_policy_on_small_devices() {
    for (cs, extra) in [
        (8u32, 40),
        (8, 56),
        (16, 24),
        (16, 40),
        (128, 24),
        (128, 40),
    ] {
        for seed in 1..=4u64 {
            let chunks = min_chunks(cs) + extra;
            let p = Params {
                chunk_sectors: cs,
                seed: seed * 0x9e37_79b9,
                ops: 2000,
                crashes: true,
                drop_when_full: true,
            };
            let s = model_test::run(device(mem(cs, chunks), cs, 4), p)
                .unwrap_or_else(|f| panic!("chunk {cs} +{extra} seed {seed}: {f}"));
            assert!(
                s.dropped > 0 && s.copies > 0,
                "chunk {cs} +{extra} seed {seed}: {s:?}"
            );
        }
    }
}
