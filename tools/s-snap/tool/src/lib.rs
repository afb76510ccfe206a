//! Command line of `s-snap-tool`, shared by the tool itself (`src/main.rs`)
//! and by `s-snap-tool-man` (`src/bin/s-snap-tool-man.rs`), which renders it
//! into manual pages with `clap_mangen`.
//!
//! The doc comments below are the tool's `--help` texts and the man pages'
//! text: the first paragraph is the short help (`-h`, and the man page's
//! NAME line for a command), the whole comment the long help (`--help`, and
//! the man page's DESCRIPTION).

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Check or dump the exception store of a dm shared-snapshot COW device.
///
/// The s-snap-origin device-mapper target keeps any number of snapshots of
/// one origin device in a single COW device: the copies of origin chunks,
/// the snapshots' own chunks and all the metadata (the exception store).
/// The layout and the rules the store obeys are described in dm-s-snap(7)
/// and in Documentation/admin-guide/device-mapper/shared-snapshot.rst.
///
/// s-snap-tool opens such a COW device, or an image file of one, read-only
/// and never writes to it. "check" verifies the store and "dump" prints it.
/// Use it on a device that no s-snap-origin target has loaded: a loaded
/// target keeps changing the store while it is read.
#[derive(Parser, Debug)]
#[command(name = "s-snap-tool", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Verify every invariant of the store (exit 0: clean, 1: problems,
    /// 2: usage or I/O error).
    ///
    /// Opens the store at its last checkpoint and walks all of its metadata: the
    /// B+trees of shared exceptions, private exceptions and snapshots (node
    /// depth, fill and key order), the exceptions (every COW chunk inside the
    /// data area and used once, epoch ranges that do not overlap and that a
    /// live snapshot needs), the snapshot table, the space map (every block
    /// in use allocated, nothing allocated that is not in use) and the
    /// counts of chunks, exceptions and snapshots the store keeps.
    ///
    /// Each problem is printed on a line of its own starting with "error:",
    /// then a line "PATH: N problem(s) found". A clean store gives one line
    /// "PATH: clean (...)" with the transaction id, the number of snapshots
    /// and exceptions and the chunks in use. Origin copies committed through
    /// the journal after the checkpoint are not part of it: the line counts
    /// the journal blocks that the next read-write open (a table load)
    /// replays. A suspended or removed origin leaves none.
    ///
    /// Exit status: 0 if the store is clean; 1 if problems were found, or if
    /// the device holds no s-snap store or one that cannot be opened (corrupt
    /// superblocks, unsupported format version); 2 on a usage error or an I/O
    /// error.
    Check {
        /// COW device or image file.
        ///
        /// A block device or a regular file holding an s-snap exception
        /// store; it is opened read-only.
        path: PathBuf,
        /// Print at most this many problems (all are counted).
        ///
        /// The count on the last line includes the problems that were not
        /// printed.
        #[arg(long, default_value_t = 1000)]
        max_problems: u64,
    },
    /// Print the superblock, usage, snapshots and exceptions.
    ///
    /// Prints the superblock's fields, the space usage (chunks in use for
    /// data and for metadata, free chunks, exception and snapshot counts),
    /// every snapshot (id, epoch and number of exceptions), every shared
    /// exception (origin chunk, range of snapshot epochs, COW chunk) and
    /// every private exception (snapshot epoch, chunk, COW chunk), as of the
    /// last checkpoint; the superblock part says how many journal blocks the
    /// next read-write open replays. The store is not checked first: run
    /// "s-snap-tool check" for that.
    ///
    /// Exit status: 0 on success; 1 if the device holds no s-snap store or
    /// its metadata cannot be read (corrupt, unsupported format version); 2
    /// on a usage error, an I/O error or an error writing the output.
    Dump {
        /// COW device or image file.
        ///
        /// A block device or a regular file holding an s-snap exception
        /// store; it is opened read-only.
        path: PathBuf,
        /// Print JSON instead of text.
        ///
        /// One JSON object with the members "superblock", "usage" and
        /// "snapshots", and "shared_exceptions" and "private_exceptions"
        /// unless --no-exceptions is given.
        #[arg(long)]
        json: bool,
        /// Leave out the exception lists.
        ///
        /// The lists have one entry per exception and can be long; the
        /// exception counts are still printed.
        #[arg(long)]
        no_exceptions: bool,
    },
}
