//! Tests of the s-snap-tool binary on images made with the store crate.

use s_snap_store::userspace::{Cache, FileDisk};
use s_snap_store::{BlockIo, OriginWrite, SnapWritePlan, SnapshotDiscard, Store};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BS: usize = 4096;

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_s-snap-tool"))
        .args(args)
        .output()
        .expect("run s-snap-tool")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("s-snap-tool-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Formats an image file and fills it with snapshots and exceptions.
fn make_image(path: &Path, chunks: u64, chunk_sectors: u32) {
    let bs = chunk_sectors as usize * 512;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(chunks * bs as u64).unwrap();
    drop(f);
    let disk = FileDisk::open(path, true).unwrap();
    let mut s = Store::open(Cache::new(disk, bs, 64), chunk_sectors).unwrap();
    for id in [3u32, 1, 2] {
        s.create_snapshot(id).unwrap();
        for c in 0..150u64 {
            if let OriginWrite::Copy(p) = s.origin_write_prepare(c * 3 + id as u64).unwrap() {
                s.origin_write_complete(p).unwrap();
            }
        }
        s.commit().unwrap();
    }
    let snap = s.snapshot_epoch(2).unwrap().unwrap();
    for c in 0..20u64 {
        if let SnapWritePlan::Unshare(p) = s.snapshot_write_prepare(snap, c).unwrap() {
            s.snapshot_write_complete(p).unwrap();
        }
    }
    // Chunks 0 and 1 have no copy of snapshot 2's time: discarded, they read as zeroes.
    for c in [0, 1] {
        assert_eq!(
            s.snapshot_discard(snap, c).unwrap(),
            SnapshotDiscard::ReadsZeroes
        );
    }
    s.commit().unwrap();
    s.io().flush().unwrap();
}

fn live_leaf(path: &Path) -> u64 {
    let disk = FileDisk::open(path, false).unwrap();
    let s = Store::open_existing(Cache::new(disk, BS, 64)).unwrap();
    let mut leaf = None;
    s.visit_metadata(&mut |b, k, level| {
        if k == s_snap_store::MetaKind::SharedNode && level == 0 && leaf.is_none() {
            leaf = Some(b);
        }
    })
    .unwrap();
    leaf.unwrap()
}

#[test]
fn help_and_usage_errors() {
    let o = tool(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("check") && text.contains("dump"));
    assert_eq!(tool(&[]).status.code(), Some(2));
    assert_eq!(tool(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(tool(&["check"]).status.code(), Some(2));
    let o = tool(&["check", "/nonexistent/s-snap-image"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot open"));
}

#[test]
fn clean_image_passes_and_dumps() {
    let img = tmp("clean.img");
    make_image(&img, 2048, 8);
    let p = img.to_str().unwrap();
    let o = tool(&["check", p]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("clean"), "{out}");

    let o = tool(&["dump", p]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("snapshots: 3"), "{out}");
    assert!(out.contains("shared exceptions:"), "{out}");
    assert!(out.contains("private exceptions: 20"), "{out}");
    assert_eq!(out.matches("-> zeroes").count(), 2, "{out}");
    assert!(out.contains("rollback: none"), "{out}");

    let o = tool(&["dump", "--json", p]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<u64> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "ascending ids");
    assert_eq!(v["superblock"]["chunk_sectors"], 8);
    let private = v["private_exceptions"].as_array().unwrap();
    assert_eq!(private.len(), 20);
    assert_eq!(private.iter().filter(|e| e["cow"].is_null()).count(), 2);
    let shared = v["shared_exceptions"].as_array().unwrap().len() as u64;
    assert_eq!(v["usage"]["shared_exceptions"].as_u64().unwrap(), shared);
    assert!(shared > 300);
    std::fs::remove_file(&img).ok();
}

#[test]
fn other_chunk_size_is_probed() {
    let img = tmp("cs64.img");
    make_image(&img, 1024, 64);
    let o = tool(&["check", img.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = tool(&["dump", "--json", "--no-exceptions", img.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["superblock"]["chunk_sectors"], 64);
    assert!(v.get("shared_exceptions").is_none());
    std::fs::remove_file(&img).ok();
}

#[test]
fn corrupt_image_fails_with_exit_1() {
    let img = tmp("corrupt.img");
    make_image(&img, 2048, 8);
    let leaf = live_leaf(&img);
    // Flip one byte in a live btree leaf.
    let mut data = std::fs::read(&img).unwrap();
    data[leaf as usize * BS + 100] ^= 0x40;
    std::fs::write(&img, &data).unwrap();
    let o = tool(&["check", img.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("checksum"), "{out}");
    assert!(out.contains("problem"), "{out}");
    // dump reports the error too.
    let o = tool(&["dump", img.to_str().unwrap()]);
    assert_ne!(o.status.code(), Some(0));
    std::fs::remove_file(&img).ok();
}

#[test]
fn zeroed_or_foreign_device_is_not_a_store() {
    let img = tmp("zero.img");
    std::fs::write(&img, vec![0u8; 64 * BS]).unwrap();
    let o = tool(&["check", img.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not an s-snap exception store"));
    // Nothing was written.
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0));
    std::fs::remove_file(&img).ok();
}

#[test]
fn a_rollback_in_progress_is_shown_and_checks_clean() {
    let img = tmp("rollback.img");
    make_image(&img, 2048, 8);
    {
        let disk = FileDisk::open(&img, true).unwrap();
        let mut s = Store::open(Cache::new(disk, BS, 64), 8).unwrap();
        let n = s.start_rollback(2).unwrap();
        assert!(n > 20, "{n} chunks to copy back");
        s.commit().unwrap();
        s.io().flush().unwrap();
    }
    let p = img.to_str().unwrap();
    let o = tool(&["check", p]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = tool(&["dump", "--no-exceptions", p]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("rollback: to snapshot 2 (epoch 3), "), "{out}");
    let o = tool(&["dump", "--json", p]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["rollback"]["snapshot"], 2);
    assert_eq!(v["rollback"]["chunks_left"], v["rollback"]["total_chunks"]);
    // The list of chunks to copy back is not among the private exceptions.
    assert_eq!(v["private_exceptions"].as_array().unwrap().len(), 20);
    std::fs::remove_file(&img).ok();
}
