// SPDX-License-Identifier: GPL-2.0

//! Clock for `make bench`'s guest script (fio generates the load).
//!
//! The guest's busybox `date` has no sub-second field, and management
//! operations (a snapshot create, a table load) take milliseconds, so the
//! script reads the monotonic clock with `s-snap-bench now` before and after
//! each one and `s-snap-bench since T0` prints the seconds elapsed.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "The monotonic clock, for timing shell commands in the guest")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the monotonic clock in seconds (nanosecond resolution).
    Now,
    /// Print the seconds elapsed since T0, a reading of `now`.
    Since {
        /// A value `now` printed.
        t0: f64,
    },
}

fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Now => println!("{:.6}", monotonic()),
        Cmd::Since { t0 } => println!("{:.6}", monotonic() - t0),
    }
    Ok(())
}
