//! Benchmark of the exception store (not a test).
//!
//! `cargo bench -p s-snap-store` builds 10^6 shared exceptions over 64
//! snapshots on a sparse in-memory device behind a bounded write-back cache
//! and prints lookups/s, origin-write allocations/s, the time to delete one
//! snapshot, open time and metadata bytes per exception.
//!
//! Environment: `S_SNAP_BENCH_EXCEPTIONS` (default 1000000),
//! `S_SNAP_BENCH_SNAPSHOTS` (64), `S_SNAP_BENCH_CHUNK_SECTORS` (8 = 4 KiB),
//! `S_SNAP_BENCH_CACHE_MIB` (64), `S_SNAP_BENCH_SEQUENTIAL` (0; 1: each
//! snapshot's origin writes go in ascending chunk order, as a linear copy or
//! a fill does), `S_SNAP_BENCH_COMMIT_EVERY` (1000; 1 commits after every
//! origin write, as a target does at queue depth 1),
//! `S_SNAP_BENCH_WRITES_ONLY` (0; 1 stops after the origin writes, so that a
//! profiler sees them alone).

#![allow(clippy::float_arithmetic)]

use s_snap_store::userspace::{Cache, SparseDisk};
use s_snap_store::{BlockIo, Location, OriginWrite, Store, META_BLOCK_SIZE};
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use s_snap_store::model_test::Rng;

fn main() {
    let exceptions = env("S_SNAP_BENCH_EXCEPTIONS", 1_000_000);
    let nsnap = env("S_SNAP_BENCH_SNAPSHOTS", 64).max(1);
    let cs = env("S_SNAP_BENCH_CHUNK_SECTORS", 8) as u32;
    let cache_mib = env("S_SNAP_BENCH_CACHE_MIB", 64);
    // 1 is what a target does at queue depth 1: one commit per copied chunk.
    let commit_every = env("S_SNAP_BENCH_COMMIT_EVERY", 1000).max(1);
    let sequential = env("S_SNAP_BENCH_SEQUENTIAL", 0) != 0;
    let writes_only = env("S_SNAP_BENCH_WRITES_ONLY", 0) != 0;
    let bs = cs as usize * 512;
    let cache_blocks = (cache_mib << 20) as usize / META_BLOCK_SIZE;
    let origin_chunks: u64 = 1 << 20;
    let per_snap = exceptions / nsnap;
    let dev_chunks = exceptions + exceptions / 8 + 4096;
    println!(
        "s-snap store benchmark: {exceptions} shared exceptions, {nsnap} snapshots, \
         chunk {bs} B, cache {cache_mib} MiB ({cache_blocks} blocks), device {dev_chunks} chunks, \
         {} origin writes",
        if sequential { "sequential" } else { "random" }
    );

    let disk = SparseDisk::new(dev_chunks * bs as u64);
    let mut s = Store::open(Cache::new(disk, bs, cache_blocks), cs).expect("format");

    // Origin writes: prepare + complete, commit every 1000.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let t = Instant::now();
    let mut allocs = 0u64;
    let mut ops = 0u64;
    let mut commit_time = 0.0f64;
    let mut last_written = vec![];
    for id in 0..nsnap as u32 {
        s.create_snapshot(id).unwrap();
        last_written.clear();
        let mut done = 0;
        let mut next = 0;
        while done < per_snap {
            let c = if sequential {
                next += 1;
                (next - 1) % origin_chunks
            } else {
                rng.next() % origin_chunks
            };
            match s.origin_write_prepare(c).unwrap() {
                OriginWrite::Copy(p) => {
                    s.origin_write_complete(p).unwrap();
                    allocs += 1;
                    done += 1;
                    last_written.push(c);
                }
                OriginWrite::Proceed | OriginWrite::AfterCommit => {}
                OriginWrite::RollBackFirst => unreachable!("no rollback runs"),
            }
            ops += 1;
            if ops % commit_every == 0 {
                let tc = Instant::now();
                s.commit().unwrap();
                commit_time += tc.elapsed().as_secs_f64();
            }
        }
    }
    s.commit().unwrap();
    let el = t.elapsed().as_secs_f64();
    println!(
        "origin writes: {ops} prepares, {allocs} copy allocations in {el:.2} s: \
         {:.0} allocations/s (prepare+complete, commit every {commit_every} writes; {:.2} s in commits)",
        allocs as f64 / el,
        commit_time
    );
    if writes_only {
        let st = s.io().stats();
        println!(
            "cache: {} block reads from the device, {} hits",
            st.reads, st.hits
        );
        return;
    }
    let u = s.usage();
    let info = s.info();
    let fixed = info.fixed_end;
    let block = META_BLOCK_SIZE as u64;
    let meta_bytes = (u.metadata_blocks - fixed) * block;
    let exc = u.shared_exceptions + u.private_exceptions;
    println!(
        "usage: {} shared exceptions, {} metadata blocks of 4 KiB ({} fixed), tree depths {:?}; \
         metadata {:.1} bytes per exception (btree nodes), {:.1} incl. bitmaps/superblocks",
        u.shared_exceptions,
        u.metadata_blocks,
        fixed,
        info.roots.iter().map(|r| r.1).collect::<Vec<_>>(),
        meta_bytes as f64 / exc as f64,
        (u.metadata_blocks * block) as f64 / exc as f64
    );

    // Lookups: random snapshot and chunk.
    let snaps: Vec<_> = s.snapshots().map(|x| x.unwrap()).collect();
    let n = 1_000_000u64;
    let t = Instant::now();
    let mut cow = 0u64;
    for _ in 0..n {
        let snap = snaps[(rng.next() % snaps.len() as u64) as usize];
        if let Location::Cow(_) = s.snapshot_lookup(snap, rng.next() % origin_chunks).unwrap() {
            cow += 1;
        }
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "lookups: {n} random (snapshot, chunk) in {el:.2} s: {:.0} lookups/s ({cow} hit an exception)",
        n as f64 / el
    );
    // Lookups of chunks that have exceptions (all hit the shared tree).
    let t = Instant::now();
    for _ in 0..n {
        let snap = snaps[(rng.next() % snaps.len() as u64) as usize];
        let _ = s.snapshot_lookup(snap, rng.next() % 1024).unwrap();
    }
    let el = t.elapsed().as_secs_f64();
    println!("lookups (hot 1024 chunks): {:.0} lookups/s", n as f64 / el);

    // Origin writes to chunks already copied for every snapshot: the
    // common case, no copy needed.
    s.commit().unwrap();
    let t = Instant::now();
    let mut proceed = 0u64;
    for _ in 0..n {
        let c = last_written[(rng.next() % last_written.len() as u64) as usize];
        match s.origin_write_prepare(c).unwrap() {
            OriginWrite::Proceed => proceed += 1,
            OriginWrite::AfterCommit => {}
            OriginWrite::Copy(p) => s.abort_origin_write(p).unwrap(),
            OriginWrite::RollBackFirst => unreachable!("no rollback runs"),
        }
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "origin write prepare, chunk already copied: {:.0} prepares/s ({proceed} of {n} may proceed at once)",
        n as f64 / el
    );
    let io = s.into_io();
    let st = io.stats();
    println!(
        "cache: {} reads, {} writes ({} early), {} hits",
        st.reads, st.writes, st.early_writes, st.hits
    );
    io.drop_all();
    let disk = io.into_disk();

    // Open time (cold cache).
    let t = Instant::now();
    let mut s = Store::open(Cache::new(disk, bs, cache_blocks), cs).unwrap();
    println!(
        "open (read-write, cold cache): {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Delete one snapshot in the middle.
    let victim = nsnap as u32 / 2;
    let before = s.usage();
    let t = Instant::now();
    s.delete_snapshot(victim).unwrap();
    s.commit().unwrap();
    let el = t.elapsed().as_secs_f64();
    println!("delete snapshot {victim}: {el:.3} s (incl. commit)");
    // Its space comes back in the background reclaim, timed apart.
    let t = Instant::now();
    s.finish_reclaim().unwrap();
    s.commit().unwrap();
    let el = t.elapsed().as_secs_f64();
    let after = s.usage();
    let freed = before.shared_exceptions - after.shared_exceptions;
    println!(
        "reclaim: {el:.3} s (incl. commit), freed {} data chunks, {freed} shared exceptions: \
         {:.0} ns per exception",
        before.data_chunks - after.data_chunks,
        el * 1e9 / freed.max(1) as f64
    );

    // Full check.
    let t = Instant::now();
    let mut scratch = vec![0u8; s.check_scratch_len()];
    let probs = s.check(&mut scratch, &mut |p| eprintln!("{p}")).unwrap();
    println!(
        "check: {probs} problems in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let io = s.into_io();
    io.write_dirty().unwrap();
    let disk = io.into_disk();
    println!(
        "sparse device holds {} MiB of written pages",
        disk.resident_bytes() >> 20
    );
    let t = Instant::now();
    let s = Store::open_existing(Cache::new(disk, bs, cache_blocks)).unwrap();
    println!(
        "open (read-only, cold cache): {:.3} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    drop(s);
}
