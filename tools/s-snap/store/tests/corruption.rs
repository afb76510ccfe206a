//! Corruption tests: random byte flips in metadata blocks (raw, and
//! re-checksummed so that structural validation is reached) and truncated
//! images. Opening, checking, reading and writing must fail cleanly or
//! succeed; never panic, never hang (a watchdog enforces a time limit per
//! case).

mod common;

use common::*;
use s_snap_store::userspace::{Cache, MemDisk};
use s_snap_store::{OriginWrite, SnapWritePlan, Store};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

const DEV_CHUNKS: usize = 512;
const ORIGIN_CHUNKS: usize = 300;

/// A valid store with two-level trees, its snapshot model and origin.
fn base_image() -> (Vec<u8>, BTreeMap<u32, Vec<Data>>, Vec<Data>) {
    let mut h = Harness::new(MemDisk::new(DEV_CHUNKS * BS), ORIGIN_CHUNKS, 64);
    for id in [5, 6, 7] {
        h.create(id);
        for c in 0..ORIGIN_CHUNKS as u64 / 3 {
            h.origin_write((c * 7 + id as u64) % ORIGIN_CHUNKS as u64, 0);
        }
        h.commit();
    }
    for c in 0..40 {
        h.snap_write(6, c * 3, 1);
    }
    h.delete(7);
    h.create(8);
    h.commit();
    h.check();
    let info = h.s().info();
    assert!(info.roots[0].1 >= 2, "shared tree should have two levels");
    let model = h.snaps.clone();
    let origin = h.origin.clone();
    let io = h.store.take().unwrap().into_io();
    (io.into_disk().to_vec(), model, origin)
}

/// Live metadata blocks of a valid image.
fn live_metadata(img: &[u8]) -> Vec<usize> {
    let s = Store::open_existing(Cache::new(MemDisk::from_vec(img.to_vec()), BS, 16)).unwrap();
    let mut v = vec![];
    s.visit_metadata(&mut |b, _, _| v.push(b as usize)).unwrap();
    v
}

/// Blocks that look like metadata (live or dead).
fn metadata_chunks(img: &[u8]) -> Vec<usize> {
    let magics: [&[u8; 4]; 3] = [b"SSsb", b"SSbm", b"SSbt"];
    (0..img.len() / BS)
        .filter(|&c| magics.iter().any(|m| &img[c * BS + 4..c * BS + 8] == *m))
        .collect()
}

fn reseal(img: &mut [u8], chunk: usize) {
    let b = &mut img[chunk * BS..(chunk + 1) * BS];
    let crc = crc32c::crc32c(&b[4..]);
    b[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Exercises a possibly corrupt image. Returns true if it opened and the
/// check found nothing, and whether the contents equal the model.
fn exercise(img: Vec<u8>, model: &BTreeMap<u32, Vec<Data>>, origin: &[Data]) -> (bool, bool) {
    let mut clean = false;
    let mut same = true;
    // Read-only: open, check, read everything.
    if let Ok(s) = Store::open_existing(Cache::new(MemDisk::from_vec(img.clone()), BS, 16)) {
        let mut scratch = vec![0u8; s.check_scratch_len()];
        let mut n = 0u64;
        if let Ok(p) = s.check(&mut scratch, &mut |_| n += 1) {
            clean = p == 0;
        }
        let snaps: Vec<_> = s.snapshots().take(100).collect();
        let mut ids = vec![];
        for snap in snaps.iter().flatten() {
            ids.push(snap.id());
            let m = model.get(&snap.id());
            for c in 0..ORIGIN_CHUNKS as u64 {
                let got = s
                    .snapshot_lookup(*snap, c)
                    .ok()
                    .and_then(|loc| try_location_data(&s, loc, origin, c));
                if m.map(|m| Some(m[c as usize])) != Some(got) {
                    same = false;
                }
            }
            let _ = s.snapshot_usage(snap.id());
        }
        if ids != model.keys().copied().collect::<Vec<_>>() {
            same = false;
        }
        let _ = s.shared_exceptions().take(5000).count();
        let _ = s.private_exceptions().take(5000).count();
    } else {
        same = false;
    }
    // Read-write: a few operations.
    if let Ok(mut s) = Store::open(Cache::new(MemDisk::from_vec(img), BS, 16), CS) {
        for c in 0..20u64 {
            match s.origin_write_prepare(c * 13) {
                Ok(OriginWrite::Copy(p)) => {
                    let _ = s.origin_write_complete(p);
                }
                Ok(_) => {}
                Err(e) if e.is_fatal() => break,
                Err(_) => {}
            }
        }
        if let Ok(Some(snap)) = s.snapshot_epoch(6) {
            for c in 0..10u64 {
                match s.snapshot_write_prepare(snap, c * 5) {
                    Ok(SnapWritePlan::Unshare(p)) => {
                        let _ = s.snapshot_write_complete(p);
                    }
                    Ok(SnapWritePlan::Direct(_)) => {}
                    Err(_) => break,
                }
            }
        }
        let _ = s.delete_snapshot(5);
        let _ = s.create_snapshot(9);
        let _ = s.commit();
    }
    (clean, same)
}

/// Runs `f` on a worker thread per case with a time limit.
fn guarded<F>(cases: u64, f: F)
where
    F: Fn(u64) + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        for i in 0..cases {
            f(i);
            if tx.send(i).is_err() {
                return;
            }
        }
    });
    for i in 0..cases {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("case {i} did not finish in 30 s"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Err(e) = worker.join() {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn raw_flips_fail_cleanly_or_are_harmless() {
    let (img, model, origin) = base_image();
    assert_eq!(exercise(img.clone(), &model, &origin), (true, true));
    let meta = metadata_chunks(&img);
    assert!(meta.len() > 8);
    let txid = Store::open_existing(Cache::new(MemDisk::from_vec(img.clone()), BS, 16))
        .unwrap()
        .info()
        .committed_txid;
    guarded(3000, move |i| {
        let mut rng = Rng(0xC0FFEE + i * 7919);
        let mut bad = img.clone();
        let chunk = meta[rng.below(meta.len() as u64) as usize];
        let flips = 1 + rng.below(3);
        for _ in 0..flips {
            // Half of the flips hit the first 256 bytes (headers).
            let off = if rng.below(2) == 0 {
                rng.below(256)
            } else {
                rng.below(BS as u64)
            } as usize;
            bad[chunk * BS + off] ^= 1 << rng.below(8);
        }
        let (clean, same) = exercise(bad.clone(), &model, &origin);
        // Checksums protect every metadata block: a store that checks
        // clean must hold exactly the original contents; except that a
        // damaged newest superblock makes the store fall back to the
        // previous commit (as after a torn superblock write).
        if clean && !same {
            assert!(
                chunk < 2,
                "case {i}: flip in chunk {chunk} passed check but changed contents"
            );
            let s = Store::open_existing(Cache::new(MemDisk::from_vec(bad), BS, 16)).unwrap();
            assert!(
                s.info().committed_txid < txid,
                "case {i}: superblock flip changed contents"
            );
        }
    });
}

#[test]
fn resealed_flips_never_panic() {
    let (img, model, origin) = base_image();
    let meta = live_metadata(&img);
    eprintln!("{} live metadata blocks", meta.len());
    use std::sync::atomic::{AtomicU64, Ordering};
    static CLEAN: AtomicU64 = AtomicU64::new(0);
    static SAME: AtomicU64 = AtomicU64::new(0);
    guarded(6000, move |i| {
        let mut rng = Rng(0xBADC0DE + i * 104_729);
        let mut bad = img.clone();
        let nchunks = 1 + rng.below(2);
        for _ in 0..nchunks {
            let chunk = meta[rng.below(meta.len() as u64) as usize];
            let flips = 1 + rng.below(4);
            for _ in 0..flips {
                let off = match rng.below(4) {
                    0 => 4 + rng.below(60),
                    1 => 64 + rng.below(192),
                    _ => 4 + rng.below(BS as u64 - 4),
                } as usize;
                let v = if rng.below(3) == 0 {
                    rng.next() as u8
                } else {
                    bad[chunk * BS + off] ^ (1 << rng.below(8))
                };
                bad[chunk * BS + off] = v;
            }
            reseal(&mut bad, chunk);
        }
        let (clean, same) = exercise(bad, &model, &origin);
        CLEAN.fetch_add(clean as u64, Ordering::Relaxed);
        SAME.fetch_add(same as u64, Ordering::Relaxed);
    });
    let (c, s) = (CLEAN.load(Ordering::Relaxed), SAME.load(Ordering::Relaxed));
    eprintln!("resealed flips: {c} of 6000 checked clean, {s} kept the contents");
    // Most structural damage to live blocks must be detected.
    assert!(c < 1500, "check passed {c} of 6000 damaged stores");
}

#[test]
fn truncated_images_fail_cleanly() {
    let (img, model, origin) = base_image();
    guarded(200, move |i| {
        let mut rng = Rng(0x7777 + i);
        let len = match i {
            0 => 0,
            1 => BS,
            2 => 2 * BS,
            3 => img.len() - 1,
            4 => img.len() - BS,
            _ => rng.below(img.len() as u64) as usize,
        };
        let bad = img[..len].to_vec();
        let (clean, _) = exercise(bad.clone(), &model, &origin);
        if len < img.len() - BS + 1 {
            assert!(
                !clean,
                "case {i}: truncated to {len} bytes but opened clean"
            );
            // A truncated store is not reformatted.
            if len >= 2 * BS {
                let r = Store::open(Cache::new(MemDisk::from_vec(bad), BS, 16), CS);
                assert!(r.is_err(), "case {i}: truncated store opened read-write");
            }
        }
    });
}

#[test]
fn not_a_store_is_left_alone() {
    // Random data in the superblock chunks: NotAStore, and nothing written.
    for seed in 1..50u64 {
        let mut rng = Rng(seed);
        let mut img = vec![0u8; 64 * BS];
        for b in img[..2 * BS].iter_mut() {
            *b = rng.next() as u8;
        }
        if seed % 3 == 0 {
            // Only the second superblock chunk is non-zero.
            img[..BS].fill(0);
        }
        let disk = MemDisk::from_vec(img.clone());
        let r = Store::open(Cache::new(disk, BS, 16), CS);
        let Err(e) = r else {
            panic!("random data opened as a store");
        };
        assert_eq!(e, s_snap_store::Error::NotAStore);
    }
    // A store opened with another chunk size.
    let (img, _, _) = base_image();
    let r = Store::open(
        Cache::new(MemDisk::from_vec(img.clone()), 2 * BS, 16),
        2 * CS,
    );
    assert_eq!(r.err(), Some(s_snap_store::Error::ChunkSizeMismatch));
    // Too small devices.
    for chunks in [0usize, 1, 2, 5, 20] {
        let r = Store::open(Cache::new(MemDisk::new(chunks * BS), BS, 16), CS);
        assert_eq!(
            r.err(),
            Some(s_snap_store::Error::DeviceTooSmall),
            "{chunks} chunks"
        );
    }
}

/// Losing the newest superblock (the chunk reads back as zeros) leaves the
/// in-progress image in the other slot. That is a damaged store: it must be
/// refused as corrupt, never taken for an unfinished format and formatted
/// again, which would drop every snapshot without a word.
#[test]
fn zeroed_newest_superblock_is_refused_not_formatted() {
    let (mut img, _, _) = base_image();
    let seq = |img: &[u8], slot: usize| {
        u64::from_le_bytes(img[slot * BS + 32..slot * BS + 40].try_into().unwrap())
    };
    let newest = if seq(&img, 0) > seq(&img, 1) { 0 } else { 1 };
    let other = 1 - newest;
    // What an open store writes to the other slot (start_image): a copy
    // of the newest superblock, unsealed, with its own block number and
    // sequence number 0.
    img.copy_within(newest * BS..(newest + 1) * BS, other * BS);
    img[other * BS..other * BS + 4].fill(0);
    img[other * BS + 8..other * BS + 16].copy_from_slice(&(other as u64).to_le_bytes());
    img[other * BS + 32..other * BS + 40].fill(0);
    img[newest * BS..(newest + 1) * BS].fill(0);
    let disk = MemDisk::from_vec(img.clone());
    match Store::open(Cache::new(disk, BS, 16), CS) {
        Err(s_snap_store::Error::Corrupt { .. }) => {}
        Err(e) => panic!("refused, but not as corrupt: {e}"),
        Ok(s) => panic!(
            "opened with {} snapshots: the store was formatted again",
            s.usage().snapshots
        ),
    }
}
