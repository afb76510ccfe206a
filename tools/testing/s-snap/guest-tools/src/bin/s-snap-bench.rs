// SPDX-License-Identifier: GPL-2.0

//! Guest-side micro benchmark for `make bench` (fio does not fit the initramfs).
//!
//! `io` issues 4 KiB `O_DIRECT` reads or writes, one at a time (queue depth 1),
//! to a block device: sequentially, at uniformly random blocks, or at the first
//! block of distinct randomly chosen units ("first writes" to units that were
//! never copied, when a unit is at least a snapshot chunk).  It stops after
//! `--count` I/Os or `--seconds`, whichever comes first.  `time` runs a command
//! and times it.  Both print one CSV line:
//!
//! `@@BENCH,<target>,<n>,<test>,<ops>,<seconds>,<iops>,<MB/s>,<ms per op>`
//!
//! where `<target>,<n>,<test>` is the `--label`.

use anyhow::{ensure, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use s_snap_guest_tools::{AlignedBlock, BLOCK};

#[derive(Parser)]
#[command(about = "Timed 4 KiB O_DIRECT I/O and timed commands, printed as @@BENCH CSV lines")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pattern {
    /// Consecutive blocks from --offset.
    Seq,
    /// Uniformly random blocks of the region (repeats possible).
    Rand,
    /// The first block of --set distinct random units of --unit blocks
    /// (seeded), cycled through until --count.
    Distinct,
}

#[derive(Subcommand)]
enum Cmd {
    /// Timed 4 KiB I/O, one at a time.
    Io {
        /// "target,n,test" printed at the start of the CSV line.
        #[arg(long)]
        label: String,
        /// Block device (or file) to use.
        #[arg(long)]
        dev: String,
        /// Write (default: read).
        #[arg(long)]
        write: bool,
        #[arg(long, value_enum, default_value = "rand")]
        pattern: Pattern,
        /// First 4 KiB block of the region.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Region size in 4 KiB blocks (rand, distinct).
        #[arg(long, default_value_t = 16384)]
        region: u64,
        /// Unit size in 4 KiB blocks (distinct).
        #[arg(long, default_value_t = 2)]
        unit: u64,
        /// Number of I/Os.
        #[arg(long, default_value_t = 2000)]
        count: u64,
        /// Distinct units (distinct; default: --count).
        #[arg(long)]
        set: Option<u64>,
        /// Stop earlier after this many seconds (0: no limit).
        #[arg(long, default_value_t = 0.0)]
        seconds: f64,
        /// Random seed: the same seed gives the same blocks in the same order.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run a command and time it.
    Time {
        #[arg(long)]
        label: String,
        /// Operations the command performs (for the per-op time).
        #[arg(long, default_value_t = 1)]
        ops: u64,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
}

fn report(label: &str, ops: u64, secs: f64, bytes_per_op: u64) {
    let secs = secs.max(1e-9);
    let iops = ops as f64 / secs;
    let mbps = iops * bytes_per_op as f64 / 1e6;
    let ms = if ops > 0 {
        secs * 1000.0 / ops as f64
    } else {
        0.0
    };
    println!("@@BENCH,{label},{ops},{secs:.4},{iops:.1},{mbps:.3},{ms:.4}");
}

/// The blocks to access, in order.
fn blocks(
    pattern: Pattern,
    offset: u64,
    region: u64,
    unit: u64,
    count: u64,
    set: u64,
    seed: u64,
) -> Result<Vec<u64>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    Ok(match pattern {
        Pattern::Seq => (offset..offset + count).collect(),
        Pattern::Rand => {
            ensure!(region > 0, "empty region");
            (0..count)
                .map(|_| offset + rng.gen_range(0..region))
                .collect()
        }
        Pattern::Distinct => {
            ensure!(unit > 0, "unit must be at least one block");
            let units = region / unit;
            ensure!(set > 0, "empty set");
            ensure!(
                set <= units,
                "{set} distinct units wanted, the region has {units}"
            );
            // A whole permutation, so that a smaller --set with the same seed
            // is a prefix of a larger one (rewrites hit what was written).
            let mut chosen: Vec<u64> = (0..units).map(|u| offset + u * unit).collect();
            chosen.shuffle(&mut rng);
            chosen.truncate(set as usize);
            chosen
                .iter()
                .copied()
                .cycle()
                .take(count as usize)
                .collect()
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn io(
    label: &str,
    dev: &str,
    write: bool,
    pattern: Pattern,
    offset: u64,
    region: u64,
    unit: u64,
    count: u64,
    set: u64,
    seconds: f64,
    seed: u64,
) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .with_context(|| format!("open {dev}"))?;
    let list = blocks(pattern, offset, region, unit, count, set, seed)?;
    let mut buf = AlignedBlock::new();
    for (i, b) in buf.bytes().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ seed as u8 | 1;
    }
    let limit = (seconds > 0.0).then(|| Duration::from_secs_f64(seconds));
    let start = Instant::now();
    let mut done = 0;
    for &block in &list {
        let pos = block * BLOCK as u64;
        if write {
            file.write_all_at(buf.bytes(), pos)
        } else {
            file.read_exact_at(buf.bytes(), pos)
        }
        .with_context(|| {
            format!(
                "{} block {block} of {dev}",
                if write { "write" } else { "read" }
            )
        })?;
        done += 1;
        if let Some(limit) = limit {
            // Checking the clock every 16 I/Os costs nothing measurable.
            if done % 16 == 0 && start.elapsed() >= limit {
                break;
            }
        }
    }
    report(label, done, start.elapsed().as_secs_f64(), BLOCK as u64);
    Ok(())
}

fn time(label: &str, ops: u64, command: &[String]) -> Result<()> {
    let start = Instant::now();
    let status = Command::new(&command[0])
        .args(&command[1..])
        .status()
        .with_context(|| format!("run {}", command[0]))?;
    let secs = start.elapsed().as_secs_f64();
    ensure!(status.success(), "{} failed: {status}", command.join(" "));
    report(label, ops, secs, 0);
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Io {
            label,
            dev,
            write,
            pattern,
            offset,
            region,
            unit,
            count,
            set,
            seconds,
            seed,
        } => {
            let set = set.unwrap_or(count);
            io(
                &label, &dev, write, pattern, offset, region, unit, count, set, seconds, seed,
            )
        }
        Cmd::Time {
            label,
            ops,
            command,
        } => time(&label, ops, &command),
    }
}
