// SPDX-License-Identifier: GPL-2.0

//! Guest-side workload for the shared snapshot targets, checked against a model.
//!
//! Drives the real `dmsetup`: loads `s-snap-origin` over an origin and a COW
//! device, creates and deletes snapshots with `dmsetup message`, activates
//! `s-snap` devices, and writes tagged 4 KiB blocks with `O_DIRECT` to the
//! origin and to snapshot devices.  An in-memory model holds, for every device,
//! the tag each block should carry; `verify` reads every block of every device
//! back and compares.  The model can be saved to a spare disk so that a later
//! boot checks persistence.

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use s_snap_guest_tools::{fill_block, open_direct, AlignedBlock, Devices, Rig, BLOCK};

const MODEL_MAGIC: &[u8; 8] = b"SSNAPMDL";

#[derive(Parser)]
#[command(about = "Block workloads on s-snap-origin/s-snap devices, checked against a model")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the origin target, run random operations, verify every device.
    Run {
        #[command(flatten)]
        devices: Devices,
        /// Number of operations.
        #[arg(long, default_value_t = 500)]
        ops: u32,
        /// Random seed (the run is reproducible from it).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Most snapshots alive at once.
        #[arg(long, default_value_t = 8)]
        max_snapshots: usize,
        /// Only blocks below this index are written (to make overlaps likely).
        #[arg(long, default_value_t = 4096)]
        hot_blocks: u64,
        /// Save the final model here (a spare disk) for a later `verify`.
        #[arg(long)]
        save_model: Option<String>,
        /// Remove and reload every device this often (0: never).
        #[arg(long, default_value_t = 0)]
        reload_every: u32,
    },
    /// Load the origin target and check every device against a saved model.
    Verify {
        #[command(flatten)]
        devices: Devices,
        /// Where `run --save-model` saved the model.
        #[arg(long)]
        model: String,
    },
}

fn write_blocks(path: &str, first: u64, tags: &[u64]) -> Result<()> {
    let file = open_direct(path)?;
    let mut buf = AlignedBlock::new();
    for (i, &tag) in tags.iter().enumerate() {
        let index = first + i as u64;
        fill_block(buf.bytes(), tag, index);
        file.write_all_at(buf.bytes(), index * BLOCK as u64)
            .with_context(|| format!("write block {index} of {path}"))?;
    }
    Ok(())
}

/// Blocks beyond the written range are checked one in this many: they must all still be
/// zero, and a sample shows that no write strayed there without reading the whole device.
const SAMPLE_STRIDE: u64 = 61;

/// Compare the blocks of `path` with `expected`: all blocks below `written`, and a sample of
/// those above; errors name the first bad blocks.
fn verify_device(path: &str, expected: &[u64], written: u64) -> Result<()> {
    let file = open_direct(path)?;
    let mut buf = AlignedBlock::new();
    let mut want = vec![0u8; BLOCK];
    let mut bad = Vec::new();
    let checked = (0..expected.len() as u64)
        .filter(|&i| i < written || i % SAMPLE_STRIDE == 0 || i + 1 == expected.len() as u64);
    for index in checked {
        let tag = expected[index as usize];
        file.read_exact_at(buf.bytes(), index * BLOCK as u64)
            .with_context(|| format!("read block {index} of {path}"))?;
        fill_block(&mut want, tag, index);
        if buf.bytes() != want.as_slice() {
            let found = u64::from_le_bytes(buf.bytes()[..8].try_into()?);
            bad.push(format!("block {index}: want tag {tag}, found {found:#x}"));
        }
    }
    if !bad.is_empty() {
        bail!(
            "{path}: {} of {} blocks differ from the model, e.g. {}",
            bad.len(),
            expected.len(),
            bad[..bad.len().min(5)].join("; ")
        );
    }
    Ok(())
}

/// What every device should contain.
struct Model {
    origin: Vec<u64>,
    snapshots: BTreeMap<u32, Vec<u64>>,
}

impl Model {
    fn save(&self, path: &str) -> Result<()> {
        let mut bytes = MODEL_MAGIC.to_vec();
        bytes.extend((self.origin.len() as u64).to_le_bytes());
        bytes.extend((self.snapshots.len() as u64).to_le_bytes());
        for tags in std::iter::once(&self.origin).chain(self.snapshots.values()) {
            tags.iter().for_each(|t| bytes.extend(t.to_le_bytes()));
        }
        for id in self.snapshots.keys() {
            bytes.extend(u64::from(*id).to_le_bytes());
        }
        let file = OpenOptions::new().write(true).open(path)?;
        file.write_all_at(&bytes, 0)?;
        file.sync_all()?;
        Ok(())
    }

    fn load(path: &str) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("open {path}"))?;
        let mut head = [0u8; 24];
        file.read_exact_at(&mut head, 0)?;
        ensure!(&head[..8] == MODEL_MAGIC, "{path} holds no saved model");
        let blocks = u64::from_le_bytes(head[8..16].try_into()?) as usize;
        let snaps = u64::from_le_bytes(head[16..24].try_into()?) as usize;
        let mut body = vec![0u8; (blocks * (snaps + 1) + snaps) * 8];
        file.read_exact_at(&mut body, 24)?;
        let words: Vec<u64> = body
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let mut vectors = words[..blocks * (snaps + 1)].chunks(blocks.max(1));
        let origin = vectors.next().map(<[u64]>::to_vec).unwrap_or_default();
        let ids = &words[blocks * (snaps + 1)..];
        let snapshots = ids
            .iter()
            .map(|&id| Ok((u32::try_from(id)?, vectors.next().unwrap_or(&[]).to_vec())))
            .collect::<Result<_>>()?;
        Ok(Self { origin, snapshots })
    }
}

/// Check the snapshot list and every device (activating each snapshot).
fn verify_all(rig: &mut Rig, model: &Model) -> Result<()> {
    let ids = rig.snapshot_ids()?;
    let want: Vec<u32> = model.snapshots.keys().copied().collect();
    ensure!(ids == want, "snapshot list {ids:?}, model has {want:?}");
    verify_device(&Rig::origin_path(), &model.origin, rig.written).context("origin")?;
    for (&id, tags) in &model.snapshots {
        let was_active = rig.active.contains_key(&id);
        let path = match rig.active.get(&id) {
            Some(p) => p.clone(),
            None => rig.activate(id)?,
        };
        verify_device(&path, tags, rig.written).with_context(|| format!("snapshot {id}"))?;
        if !was_active {
            rig.deactivate(id)?;
        }
    }
    Ok(())
}

fn run(
    devices: &Devices,
    ops: u32,
    seed: u64,
    max_snapshots: usize,
    hot_blocks: u64,
    save_model: Option<&str>,
    reload_every: u32,
) -> Result<()> {
    let mut rig = Rig::load_origin(devices)?;
    let blocks = rig.size * 512 / BLOCK as u64;
    let hot = hot_blocks.min(blocks);
    // Writes start below `hot` and are at most 8 blocks long.
    rig.written = hot + 8;
    ensure!(hot > 0, "origin too small");
    let mut model = Model {
        origin: vec![0; blocks as usize],
        snapshots: BTreeMap::new(),
    };
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut next_tag = seed << 32 | 1;
    let mut counts = BTreeMap::<&str, u32>::new();

    for op in 0..ops {
        let choice = rng.gen_range(0..100);
        let kind = match choice {
            0..=44 => "origin-write",
            45..=59 if !rig.active.is_empty() => "snapshot-write",
            60..=69 if model.snapshots.len() < max_snapshots => "create",
            70..=76 if !model.snapshots.is_empty() => "delete",
            77..=84 if model.snapshots.len() > rig.active.len() => "activate",
            85..=89 if !rig.active.is_empty() => "deactivate",
            90..=92 => "verify",
            _ => "origin-write",
        };
        *counts.entry(kind).or_default() += 1;
        match kind {
            "origin-write" | "snapshot-write" => {
                let first = rng.gen_range(0..hot);
                let count = rng.gen_range(1..=8).min(blocks - first);
                let tags: Vec<u64> = (0..count)
                    .map(|_| {
                        next_tag += 1;
                        next_tag
                    })
                    .collect();
                let (path, target) = if kind == "origin-write" {
                    (Rig::origin_path(), &mut model.origin)
                } else {
                    let ids: Vec<u32> = rig.active.keys().copied().collect();
                    let id = ids[rng.gen_range(0..ids.len())];
                    let tags = model.snapshots.get_mut(&id).context("model")?;
                    (rig.active[&id].clone(), tags)
                };
                write_blocks(&path, first, &tags).with_context(|| format!("op {op}: {kind}"))?;
                target[first as usize..(first + count) as usize].copy_from_slice(&tags);
            }
            "create" => {
                let id = loop {
                    let id = rng.gen_range(0..1000);
                    if !model.snapshots.contains_key(&id) {
                        break id;
                    }
                };
                rig.message(&format!("snapshot create {id}"))
                    .with_context(|| format!("op {op}"))?;
                model.snapshots.insert(id, model.origin.clone());
            }
            "delete" => {
                let ids: Vec<u32> = model.snapshots.keys().copied().collect();
                let id = ids[rng.gen_range(0..ids.len())];
                rig.deactivate(id)?;
                rig.message(&format!("snapshot delete {id}"))
                    .with_context(|| format!("op {op}"))?;
                model.snapshots.remove(&id);
            }
            "activate" => {
                let ids: Vec<u32> = model
                    .snapshots
                    .keys()
                    .filter(|id| !rig.active.contains_key(id))
                    .copied()
                    .collect();
                rig.activate(ids[rng.gen_range(0..ids.len())])?;
            }
            "deactivate" => {
                let ids: Vec<u32> = rig.active.keys().copied().collect();
                rig.deactivate(ids[rng.gen_range(0..ids.len())])?;
            }
            _ => verify_all(&mut rig, &model).with_context(|| format!("op {op}: verify"))?,
        }
        if reload_every > 0 && op % reload_every == reload_every - 1 {
            rig.remove_all()?;
            rig = Rig::load_origin(devices)?;
            rig.written = hot + 8;
            *counts.entry("reload").or_default() += 1;
        }
    }
    verify_all(&mut rig, &model).context("final verify")?;
    println!(
        "workload: {ops} operations {counts:?}, {} snapshots left, all devices equal the model",
        model.snapshots.len()
    );
    if let Some(path) = save_model {
        model.save(path)?;
    }
    rig.remove_all()
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run {
            devices,
            ops,
            seed,
            max_snapshots,
            hot_blocks,
            save_model,
            reload_every,
        } => run(
            &devices,
            ops,
            seed,
            max_snapshots,
            hot_blocks,
            save_model.as_deref(),
            reload_every,
        ),
        Cmd::Verify { devices, model } => {
            ensure!(Path::new(&model).exists(), "{model} does not exist");
            let model = Model::load(&model)?;
            let mut rig = Rig::load_origin(&devices)?;
            verify_all(&mut rig, &model)?;
            println!(
                "verify: origin and {} snapshots equal the saved model",
                model.snapshots.len()
            );
            rig.remove_all()
        }
    }
}
