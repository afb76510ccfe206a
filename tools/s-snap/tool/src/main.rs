//! `s-snap-tool`: check and dump the exception store of a dm shared-snapshot
//! COW device (an image file or a block device, opened read-only).
//!
//! Exit status of `check`: 0 clean, 1 problems found (or not a store),
//! 2 usage or I/O error.
//!
//! The command line (`Cli`) is defined in `src/lib.rs`, where
//! `s-snap-tool-man` finds it to write the manual pages.

use anyhow::Context;
use clap::Parser;
use s_snap_store::userspace::{Cache, FileDisk};
use s_snap_store::{CowFullPolicy, Error as StoreError, Store, META_BLOCK_SIZE};
use s_snap_tool::{Cli, Cmd};
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Errors that end the tool.
#[derive(Debug, thiserror::Error)]
enum ToolError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: not an s-snap exception store (no valid superblock)")]
    NotAStore(String),
    #[error("{path}")]
    Store { path: String, source: StoreError },
}

impl ToolError {
    /// Exit status for this error.
    fn status(&self) -> u8 {
        match self {
            ToolError::Open { .. } => 2,
            ToolError::Store {
                source: StoreError::Io(_),
                ..
            } => 2,
            _ => 1,
        }
    }
}

fn open_store(path: &Path) -> Result<Store<Cache<FileDisk>>, ToolError> {
    let p = path.display().to_string();
    let disk = FileDisk::open(path, false).map_err(|source| ToolError::Open {
        path: p.clone(),
        source,
    })?;
    // Metadata blocks are 4 KiB whatever the chunk size; the tool reads no
    // chunk data, so the cache's chunk size does not matter. 64 MiB of
    // cache at most.
    let io = Cache::new(disk, META_BLOCK_SIZE, (64 << 20) / META_BLOCK_SIZE);
    Store::open_existing(io).map_err(|source| match source {
        StoreError::NotAStore => ToolError::NotAStore(p.clone()),
        source => ToolError::Store { path: p, source },
    })
}

fn check(path: &Path, max_problems: u64) -> Result<u8, ToolError> {
    let store = open_store(path)?;
    let mut scratch = vec![0u8; store.check_scratch_len()];
    let mut shown = 0u64;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let n = store
        .check(&mut scratch, &mut |p| {
            if shown < max_problems {
                let _ = writeln!(out, "error: {p}");
            }
            shown += 1;
        })
        .map_err(|source| ToolError::Store {
            path: path.display().to_string(),
            source,
        })?;
    let u = store.usage();
    if n == 0 {
        let _ = writeln!(
            out,
            "{}: clean (txid {}{}, {} snapshots and {} being deleted, {} shared and {} private exceptions, {} of {} chunks used)",
            path.display(),
            store.info().committed_txid,
            match store.info().journal_blocks {
                0 => String::new(),
                n => format!(" and {n} journal block(s) to replay"),
            },
            u.snapshots,
            u.deleting_snapshots,
            u.shared_exceptions,
            u.private_exceptions,
            u.data_chunks + u.metadata_chunks,
            u.total_chunks
        );
        Ok(0)
    } else {
        let _ = writeln!(out, "{}: {n} problem(s) found", path.display());
        Ok(1)
    }
}

#[derive(Serialize)]
struct JsonSnapshot {
    id: u32,
    epoch: u64,
    exceptions: u64,
    /// Dropped by the `drop` COW-full policy (unreadable until deleted).
    dropped: bool,
}

#[derive(Serialize)]
struct JsonShared {
    chunk: u64,
    lo: u64,
    hi: u64,
    cow: u64,
}

#[derive(Serialize)]
struct JsonPrivate {
    epoch: u64,
    chunk: u64,
    /// `null` for a chunk the snapshot discarded, which reads as zeroes.
    cow: Option<u64>,
}

#[derive(Serialize)]
struct JsonRoot {
    block: u64,
    depth: u8,
}

#[derive(Serialize)]
struct JsonSuper {
    version: u32,
    chunk_sectors: u32,
    nr_chunks: u64,
    nr_bitmaps: u64,
    fixed_end: u64,
    superblock_slot: u64,
    seq: u64,
    committed_txid: u64,
    reserved_txid: u64,
    last_epoch: u64,
    alloc_hint: u64,
    data_hint: u64,
    deleting_epoch: u64,
    shared_root: JsonRoot,
    private_root: JsonRoot,
    snapshot_root: JsonRoot,
    /// First block of the journal area (0: the store has none).
    journal_start: u64,
    /// Blocks of the journal area.
    journal_blocks: u32,
    /// Journal blocks committed after the checkpoint, which the next read-write open replays
    /// (what `dump` shows is the checkpoint without them).
    journal_to_replay: u32,
}

#[derive(Serialize)]
struct JsonUsage {
    chunk_size: u64,
    total_chunks: u64,
    data_chunks: u64,
    metadata_chunks: u64,
    metadata_blocks: u64,
    free_chunks: u64,
    shared_exceptions: u64,
    private_exceptions: u64,
    snapshots: u64,
    deleting_snapshots: u64,
    dropped_snapshots: u64,
    cow_full_policy: &'static str,
}

/// A rollback of the origin to a snapshot in progress.
#[derive(Serialize)]
struct JsonRollback {
    snapshot: u32,
    epoch: u64,
    total_chunks: u64,
    chunks_left: u64,
}

#[derive(Serialize)]
struct JsonDump {
    superblock: JsonSuper,
    usage: JsonUsage,
    /// `null` when no rollback runs.
    rollback: Option<JsonRollback>,
    snapshots: Vec<JsonSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_exceptions: Option<Vec<JsonShared>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    private_exceptions: Option<Vec<JsonPrivate>>,
}

fn gather(store: &Store<Cache<FileDisk>>, exceptions: bool) -> Result<JsonDump, StoreError> {
    let i = store.info();
    let u = store.usage();
    let root = |r: (u64, u8)| JsonRoot {
        block: r.0,
        depth: r.1,
    };
    let mut snapshots = vec![];
    for (list, dropped) in [
        (store.snapshots(), false),
        (store.dropped_snapshots(), true),
    ] {
        for s in list {
            let s = s?;
            snapshots.push(JsonSnapshot {
                id: s.id(),
                epoch: s.epoch(),
                exceptions: store.snapshot_usage(s.id())?,
                dropped,
            });
        }
    }
    let (shared, private) = if exceptions {
        let mut sh = vec![];
        for e in store.shared_exceptions() {
            let e = e?;
            sh.push(JsonShared {
                chunk: e.chunk,
                lo: e.lo,
                hi: e.hi,
                cow: e.cow,
            });
        }
        let mut pr = vec![];
        for e in store.private_exceptions() {
            let e = e?;
            pr.push(JsonPrivate {
                epoch: e.epoch,
                chunk: e.chunk,
                cow: e.cow,
            });
        }
        (Some(sh), Some(pr))
    } else {
        (None, None)
    };
    Ok(JsonDump {
        superblock: JsonSuper {
            version: i.version,
            chunk_sectors: i.chunk_sectors,
            nr_chunks: i.nr_chunks,
            nr_bitmaps: i.nr_bitmaps,
            fixed_end: i.fixed_end,
            superblock_slot: i.superblock_slot,
            seq: i.seq,
            committed_txid: i.committed_txid,
            reserved_txid: i.reserved_txid,
            last_epoch: i.last_epoch,
            alloc_hint: i.alloc_hint,
            data_hint: i.data_hint,
            deleting_epoch: i.deleting_epoch,
            shared_root: root(i.roots[0]),
            private_root: root(i.roots[1]),
            snapshot_root: root(i.roots[2]),
            journal_start: i.journal_area.0,
            journal_blocks: i.journal_area.1,
            journal_to_replay: i.journal_blocks,
        },
        usage: JsonUsage {
            chunk_size: u.chunk_size,
            total_chunks: u.total_chunks,
            data_chunks: u.data_chunks,
            metadata_chunks: u.metadata_chunks,
            metadata_blocks: u.metadata_blocks,
            free_chunks: u.free_chunks,
            shared_exceptions: u.shared_exceptions,
            private_exceptions: u.private_exceptions,
            snapshots: u.snapshots,
            deleting_snapshots: u.deleting_snapshots,
            dropped_snapshots: u.dropped_snapshots,
            cow_full_policy: match store.cow_full_policy() {
                CowFullPolicy::Error => "error",
                CowFullPolicy::Drop => "drop",
            },
        },
        rollback: store.rollback()?.map(|r| JsonRollback {
            snapshot: r.snapshot.id(),
            epoch: r.snapshot.epoch(),
            total_chunks: r.total,
            chunks_left: r.left,
        }),
        snapshots,
        shared_exceptions: shared,
        private_exceptions: private,
    })
}

fn print_text(d: &JsonDump, out: &mut impl Write) -> std::io::Result<()> {
    let s = &d.superblock;
    writeln!(out, "superblock:")?;
    writeln!(out, "  version          {}", s.version)?;
    writeln!(
        out,
        "  chunk size       {} sectors ({} bytes)",
        s.chunk_sectors,
        s.chunk_sectors as u64 * 512
    )?;
    writeln!(out, "  chunks           {}", s.nr_chunks)?;
    writeln!(
        out,
        "  bitmap blocks    {} (fixed area: 4 KiB blocks 0..{})",
        s.nr_bitmaps, s.fixed_end
    )?;
    writeln!(out, "  slot / seq       {} / {}", s.superblock_slot, s.seq)?;
    writeln!(out, "  committed txid   {}", s.committed_txid)?;
    writeln!(out, "  reserved txid    {}", s.reserved_txid)?;
    writeln!(out, "  last epoch       {}", s.last_epoch)?;
    writeln!(
        out,
        "  alloc hint       block {}, chunk {}",
        s.alloc_hint, s.data_hint
    )?;
    writeln!(out, "  deleting epoch   {}", s.deleting_epoch)?;
    for (name, r) in [
        ("shared root", &s.shared_root),
        ("private root", &s.private_root),
        ("snapshot root", &s.snapshot_root),
    ] {
        writeln!(out, "  {name:<16} block {} depth {}", r.block, r.depth)?;
    }
    if s.journal_blocks == 0 {
        writeln!(out, "  journal          none")?;
    } else {
        writeln!(
            out,
            "  journal          blocks {}..{}, {} to replay at the next read-write open",
            s.journal_start,
            s.journal_start + u64::from(s.journal_blocks),
            s.journal_to_replay
        )?;
    }
    let u = &d.usage;
    writeln!(out, "usage:")?;
    writeln!(out, "  chunk size       {}", u.chunk_size)?;
    writeln!(out, "  total chunks     {}", u.total_chunks)?;
    writeln!(out, "  data chunks      {}", u.data_chunks)?;
    writeln!(
        out,
        "  metadata chunks  {} ({} blocks of 4 KiB)",
        u.metadata_chunks, u.metadata_blocks
    )?;
    writeln!(out, "  free chunks      {}", u.free_chunks)?;
    writeln!(out, "  shared exc.      {}", u.shared_exceptions)?;
    writeln!(out, "  private exc.     {}", u.private_exceptions)?;
    writeln!(out, "  being deleted    {}", u.deleting_snapshots)?;
    writeln!(out, "  dropped          {}", u.dropped_snapshots)?;
    writeln!(out, "  COW-full policy  {}", u.cow_full_policy)?;
    match &d.rollback {
        Some(r) => writeln!(
            out,
            "rollback: to snapshot {} (epoch {}), {} of {} chunks left to copy back",
            r.snapshot, r.epoch, r.chunks_left, r.total_chunks
        )?,
        None => writeln!(out, "rollback: none")?,
    }
    writeln!(out, "snapshots: {}", d.snapshots.len())?;
    for sn in &d.snapshots {
        writeln!(
            out,
            "  id {:<10} epoch {:<10} exceptions {}{}",
            sn.id,
            sn.epoch,
            sn.exceptions,
            if sn.dropped { " dropped" } else { "" }
        )?;
    }
    if let Some(sh) = &d.shared_exceptions {
        writeln!(out, "shared exceptions: {}", sh.len())?;
        for e in sh {
            writeln!(
                out,
                "  chunk {:<12} epochs {}..={} -> cow {}",
                e.chunk, e.lo, e.hi, e.cow
            )?;
        }
    }
    if let Some(pr) = &d.private_exceptions {
        writeln!(out, "private exceptions: {}", pr.len())?;
        for e in pr {
            match e.cow {
                Some(cow) => writeln!(
                    out,
                    "  epoch {:<10} chunk {:<12} -> cow {cow}",
                    e.epoch, e.chunk
                )?,
                None => writeln!(
                    out,
                    "  epoch {:<10} chunk {:<12} -> zeroes",
                    e.epoch, e.chunk
                )?,
            }
        }
    }
    Ok(())
}

fn dump(path: &Path, json: bool, no_exceptions: bool) -> anyhow::Result<u8> {
    let store = open_store(path)?;
    let d = gather(&store, !no_exceptions).map_err(|source| ToolError::Store {
        path: path.display().to_string(),
        source,
    })?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        serde_json::to_writer_pretty(&mut out, &d).context("writing JSON")?;
        writeln!(out)?;
    } else {
        print_text(&d, &mut out).context("writing output")?;
    }
    out.flush()?;
    Ok(0)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let r: anyhow::Result<u8> = match cli.cmd {
        Cmd::Check { path, max_problems } => check(&path, max_problems).map_err(Into::into),
        Cmd::Dump {
            path,
            json,
            no_exceptions,
        } => dump(&path, json, no_exceptions),
    };
    match r {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("s-snap-tool: {e:#}");
            let code = e
                .downcast_ref::<ToolError>()
                .map(|t| t.status())
                .unwrap_or(2);
            ExitCode::from(code)
        }
    }
}
