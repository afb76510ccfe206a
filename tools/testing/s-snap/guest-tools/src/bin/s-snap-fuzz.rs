// SPDX-License-Identifier: GPL-2.0

//! Bounded, seeded fuzzing of the shared snapshot targets' user interface through the real
//! `dmsetup`: table lines of `s-snap-origin` and `s-snap` (random argument lists, and
//! mutations of valid lines loaded as new devices or as a reload of the live origin), and
//! `dmsetup message` strings sent to a live origin and to a snapshot device.
//!
//! Every case must finish within a time limit, accepted or refused. A refusal by the kernel
//! must come with a reason in the kernel log. Where the documentation fixes the answer, the
//! answer must be that one: a message is predicted from its grammar and the snapshots that
//! exist (accepted, or refused with the documented error), a table whose arguments break the
//! documented syntax must be refused. Accepted cases are undone (devices removed, snapshots
//! deleted), and between batches the live origin must still work and the snapshots of it
//! must still hold what they held.

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Instant;

use s_snap_guest_tools::hostile::{
    block_digests, dm, dmsetup_run, open_direct_read, origin_message, printable, KernelLog, Run,
};
use s_snap_guest_tools::{
    fill_block, open_direct, sectors, status_snapshot_ids, AlignedBlock, BLOCK, ORIGIN_NAME,
};
/// Name of the devices the table cases create.
const SCRATCH: &str = "fz";
/// Snapshots that exist throughout; 1 and 2 have active devices (so no message can delete
/// them), 3 has none (so `s-snap` tables and deletes of it can succeed).
const BASELINE: [u32; 3] = [1, 2, 3];
const ACTIVE: [u32; 2] = [1, 2];
const CHUNK: u32 = 16;

#[derive(Parser)]
#[command(about = "Seeded fuzzing of s-snap tables and messages through dmsetup")]
struct Cli {
    /// Origin device of the live origin.
    #[arg(long, default_value = "/dev/vda")]
    origin: String,
    /// COW device of the live origin.
    #[arg(long, default_value = "/dev/vdb")]
    cow: String,
    /// A spare device for table cases to use as an origin.
    #[arg(long, default_value = "/dev/vdc")]
    spare_origin: String,
    /// A spare device for table cases to use as a COW device.
    #[arg(long, default_value = "/dev/vdd")]
    spare_cow: String,
    /// A device too small to hold a store.
    #[arg(long, default_value = "/dev/vde")]
    tiny: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tables with random argument lists.
    #[arg(long, default_value_t = 500)]
    tables: u32,
    /// Mutations of valid table lines.
    #[arg(long, default_value_t = 500)]
    mutations: u32,
    /// Random and mutated messages.
    #[arg(long, default_value_t = 1000)]
    messages: u32,
    /// Cases between two checks of the live devices.
    #[arg(long, default_value_t = 150)]
    batch: u32,
}

// ---------------------------------------------------------------------------------------------
// What the kernel and dmsetup do with the bytes they get.
// ---------------------------------------------------------------------------------------------

/// The kernel's `isspace` (lib/ctype.c: 0xa0 is a space too).
fn kernel_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0xa0)
}

/// The kernel's `dm_split_args`: words split at spaces, a backslash quotes the next byte.
fn split_args(input: &[u8]) -> Vec<Vec<u8>> {
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while i < input.len() && kernel_space(input[i]) {
            i += 1;
        }
        if i >= input.len() {
            return words;
        }
        let mut word = Vec::new();
        while i < input.len() {
            if input[i] == b'\\' && i + 1 < input.len() {
                word.push(input[i + 1]);
                i += 2;
                continue;
            }
            if kernel_space(input[i]) {
                i += 1;
                break;
            }
            word.push(input[i]);
            i += 1;
        }
        words.push(word);
    }
}

/// glibc `strtoull(s, &end, 10)` accepting only if all of `s` is used, as dmsetup parses the
/// message sector: leading spaces, a sign (a minus wraps), digits, no overflow.
fn dmsetup_sector(s: &[u8]) -> Option<u64> {
    let s = {
        let start = s
            .iter()
            .position(|&b| !b.is_ascii_whitespace())
            .unwrap_or(s.len());
        &s[start..]
    };
    let (negative, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if negative { v.wrapping_neg() } else { v })
}

/// How the documentation reads a number: `Some(true)` valid, `Some(false)` invalid, `None`
/// when the documentation does not settle it (leading zeros beyond ten digits).
fn documented_number(word: &[u8], valid: impl Fn(u64) -> bool) -> Option<bool> {
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return Some(false);
    }
    let significant = &word[word.iter().position(|&b| b != b'0').unwrap_or(word.len())..];
    if significant.len() > 20 {
        return Some(false);
    }
    let value: u128 = std::str::from_utf8(significant)
        .ok()
        .filter(|s| !s.is_empty())
        .map_or(Some(0), |s| s.parse().ok())
        .unwrap_or(u128::MAX);
    let ok = u64::try_from(value).is_ok_and(&valid);
    if ok && word.len() > 10 {
        None
    } else {
        Some(ok)
    }
}

fn documented_id(word: &[u8]) -> Option<bool> {
    documented_number(word, |v| v <= u64::from(u32::MAX))
}

fn documented_chunk(word: &[u8]) -> Option<bool> {
    documented_number(word, |v| v.is_power_of_two() && (8..=1024).contains(&v))
}

/// The id a valid id word names (the kernel's parse: up to ten digits).
fn id_value(word: &[u8]) -> Option<u32> {
    if word.is_empty() || word.len() > 10 || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(word).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    TableRandom,
    TableMutated,
    ReloadMutated,
    MessageRandom,
    MessageMutated,
    MessageLong,
    MessageToSnapshot,
}

/// One case: a dmsetup command.
enum Case {
    /// `dmsetup create fz` with the table as `--table` or on standard input.
    Create { table: Vec<u8>, stdin: bool },
    /// `dmsetup load work` (an inactive table for the live origin; cleared after).
    Reload { table: Vec<u8> },
    /// `dmsetup message DEVICE SECTOR WORDS...`.
    Message {
        device: &'static str,
        sector: Vec<u8>,
        words: Vec<Vec<u8>>,
    },
}

impl Case {
    fn describe(&self) -> String {
        match self {
            Case::Create { table, stdin } => format!(
                "dmsetup create {SCRATCH} {}'{}'",
                if *stdin { "<<< " } else { "--table " },
                printable(table)
            ),
            Case::Reload { table } => {
                format!("dmsetup load {ORIGIN_NAME} --table '{}'", printable(table))
            }
            Case::Message {
                device,
                sector,
                words,
            } => format!(
                "dmsetup -- message {device} '{}' '{}'",
                printable(sector),
                printable(&words.join(&b' '))
            ),
        }
    }
}

/// What a case must do.
#[derive(Debug, PartialEq)]
enum Expect {
    Accept,
    /// Refused by the kernel with this error.
    Refuse(&'static str),
    /// Refused by dmsetup or by the kernel, for any reason.
    RefuseAny,
    /// Refused by dmsetup before any ioctl.
    DmsetupRefuses,
    /// The documentation does not decide (devices, dm core): anything but a hang.
    Either,
}

const EINVAL: &str = "Invalid argument";
const EEXIST: &str = "File exists";
const ENOENT: &str = "No such file or directory";
const EBUSY: &str = "Device or resource busy";

/// A message that changes the snapshot list, as the kernel should read it.
enum MessageOp {
    Create(u32),
    Delete(u32),
    Usage,
    None,
}

/// The snapshots of the live origin as the test knows them.
struct Model {
    snapshots: BTreeSet<u32>,
    active: BTreeSet<u32>,
    /// Origin size in sectors.
    sectors: u64,
}

impl Model {
    /// What `dmsetup message <device> <sector> <words>` must do (see the "Messages" section
    /// of shared-snapshot.rst).
    fn predict_message(
        &self,
        to_origin: bool,
        sector: &[u8],
        words: &[Vec<u8>],
    ) -> (Expect, MessageOp) {
        let refuse = |e| (Expect::Refuse(e), MessageOp::None);
        let Some(sector) = dmsetup_sector(sector) else {
            return (Expect::DmsetupRefuses, MessageOp::None);
        };
        // dmsetup joins its arguments with single spaces; the kernel splits them again.
        let args = split_args(&words.join(&b' '));
        let Some(first) = args.first() else {
            return refuse(EINVAL);
        };
        if first.starts_with(b"@") {
            // dm core's own messages (@cancel_deferred_remove, @stats_*).
            return (Expect::Either, MessageOp::None);
        }
        if sector >= self.sectors || !to_origin {
            return refuse(EINVAL);
        }
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        match args.as_slice() {
            [b"usage"] => (Expect::Accept, MessageOp::Usage),
            [b"snapshot", op @ (b"create" | b"delete"), id] => {
                let Some(id) = id_value(id) else {
                    return refuse(EINVAL);
                };
                let exists = self.snapshots.contains(&id);
                match (*op == b"create", exists) {
                    (true, true) => refuse(EEXIST),
                    (true, false) => (Expect::Accept, MessageOp::Create(id)),
                    (false, false) => refuse(ENOENT),
                    (false, true) if self.active.contains(&id) => refuse(EBUSY),
                    (false, true) => (Expect::Accept, MessageOp::Delete(id)),
                }
            }
            _ => refuse(EINVAL),
        }
    }

    /// Whether a table line must be refused for its syntax or for the snapshot it names
    /// ("Tables" in shared-snapshot.rst). Only single lines whose start and length are plain
    /// numbers are judged, and devices only by the names `env` knows.
    fn predict_table(&self, table: &[u8], env: &Env) -> Expect {
        if table.contains(&b'\n') {
            return Expect::Either;
        }
        let tokens: Vec<&[u8]> = table.split(|&b| b == b' ').collect();
        let plain = |t: &[u8]| -> Option<u64> {
            if t.is_empty() || t.len() > 18 || !t.iter().all(u8::is_ascii_digit) {
                return None;
            }
            std::str::from_utf8(t).ok()?.parse().ok()
        };
        let (Some(start), Some(len), Some(&target)) = (
            tokens.first().and_then(|t| plain(t)),
            tokens.get(1).and_then(|t| plain(t)),
            tokens.get(2),
        ) else {
            return Expect::Either;
        };
        // dmsetup drops everything from a "#" on (a comment).
        let params = tokens[3..].join(&b' ');
        let params = params.split(|&b| b == b'#').next().unwrap_or_default();
        let args = split_args(params);
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let origin_size = |path: &[u8]| env.sizes.get(path).copied();
        match target {
            b"s-snap-origin" => {
                let bad_syntax = start != 0
                    || len == 0
                    || args.len() != 4
                    || args[2] != b"S"
                    || documented_chunk(args[3]) == Some(false)
                    || args[0] == args[1]
                    || origin_size(args[0]).is_some_and(|s| len > s);
                if bad_syntax {
                    Expect::RefuseAny
                } else {
                    Expect::Either
                }
            }
            b"s-snap" => {
                if start != 0
                    || len == 0
                    || args.len() != 2
                    || documented_id(args[1]) == Some(false)
                {
                    return Expect::RefuseAny;
                }
                let path = args[0];
                if origin_size(path).is_some_and(|s| len > s) {
                    return Expect::RefuseAny;
                }
                if !env.origin_names.contains(path) {
                    // No other device has an origin target loaded.
                    return if env.sizes.contains_key(path) || !path.starts_with(b"/dev/") {
                        Expect::RefuseAny
                    } else {
                        Expect::Either
                    };
                }
                match id_value(args[1]) {
                    Some(id) if self.snapshots.contains(&id) && !self.active.contains(&id) => {
                        // The plain form is documented to work; other spellings may differ.
                        if args[1].len() > 1 && args[1][0] == b'0' {
                            Expect::Either
                        } else {
                            Expect::Accept
                        }
                    }
                    Some(id) if self.active.contains(&id) => Expect::Refuse(EBUSY),
                    Some(_) => Expect::Refuse(ENOENT),
                    None => Expect::Either,
                }
            }
            _ => Expect::Either,
        }
    }
}

/// The devices the cases draw from.
struct Env {
    origin: String,
    cow: String,
    origin_sectors: u64,
    spare_origin: String,
    spare_origin_sectors: u64,
    spare_cow: String,
    /// The names of the live origin's origin device: its path and `major:minor`.
    origin_names: BTreeSet<Vec<u8>>,
    /// Paths and `major:minor` names the test knows, and their sizes in sectors.
    sizes: BTreeMap<Vec<u8>, u64>,
    /// Path-like tokens, existing or not.
    paths: Vec<Vec<u8>>,
}

impl Env {
    fn new(cli: &Cli) -> Result<Self> {
        let mut sizes = BTreeMap::new();
        let mut origin_names = BTreeSet::new();
        let mut paths: Vec<Vec<u8>> = [
            "/dev/nonexistent",
            "/dev/null",
            "/dev/",
            "/dev/vda1",
            "0:0",
            "4095:1048575",
            "254:99999999999",
            "-1:-1",
            "/dev/mapper/",
            "/dev/mapper/fz",
        ]
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
        let devices = [
            cli.origin.clone(),
            cli.cow.clone(),
            cli.spare_origin.clone(),
            cli.spare_cow.clone(),
            cli.tiny.clone(),
            format!("/dev/mapper/{ORIGIN_NAME}"),
            "/dev/mapper/snap1".to_string(),
            "/dev/mapper/snap3".to_string(),
        ];
        for d in &devices {
            paths.push(d.as_bytes().to_vec());
            let Ok(meta) = std::fs::metadata(d) else {
                continue;
            };
            let size = sectors(d)?;
            sizes.insert(d.as_bytes().to_vec(), size);
            let rdev = meta.rdev();
            let numbers = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
            sizes.insert(numbers.as_bytes().to_vec(), size);
            if *d == cli.origin {
                origin_names.insert(d.as_bytes().to_vec());
                origin_names.insert(numbers.as_bytes().to_vec());
            }
            paths.push(numbers.into_bytes());
        }
        Ok(Self {
            origin: cli.origin.clone(),
            cow: cli.cow.clone(),
            origin_sectors: sectors(&cli.origin)?,
            spare_origin: cli.spare_origin.clone(),
            spare_origin_sectors: sectors(&cli.spare_origin)?,
            spare_cow: cli.spare_cow.clone(),
            origin_names,
            sizes,
            paths,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------------------

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "8",
    "16",
    "32",
    "1024",
    "2048",
    "12",
    "-16",
    "-1",
    "-0",
    "+16",
    "016",
    "0016",
    "00000000016",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "0x10",
    "1e3",
    "16k",
    "1.5",
    "\u{ff11}\u{ff16}",
];

const WORDS: &[&str] = &[
    "snapshot",
    "create",
    "delete",
    "usage",
    "Snapshot",
    "CREATE",
    "Usage",
    "snap",
    "snapshots",
    "remove",
    "status",
    "help",
    "S",
    "s",
    "P",
    "N",
    "-",
    "--",
    "\\",
    "\\ ",
    "a\\ b",
];

fn random_ascii(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.gen_range(0x21..0x7fu8)).collect()
}

/// Any bytes but NUL (which cannot be in an argument).
fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.gen_range(1..=255u8)).collect()
}

fn random_number(rng: &mut SmallRng) -> Vec<u8> {
    match rng.gen_range(0..4) {
        0 => rng.gen::<u32>().to_string().into_bytes(),
        1 => rng.gen::<u64>().to_string().into_bytes(),
        2 => "9".repeat(rng.gen_range(20..2000)).into_bytes(),
        _ => NUMBERS.choose(rng).unwrap().as_bytes().to_vec(),
    }
}

fn random_token(rng: &mut SmallRng, env: &Env) -> Vec<u8> {
    match rng.gen_range(0..20) {
        0..=5 => env.paths.choose(rng).unwrap().clone(),
        6..=10 => random_number(rng),
        11..=13 => WORDS.choose(rng).unwrap().as_bytes().to_vec(),
        14 | 15 => {
            let n = rng.gen_range(1..20);
            random_ascii(rng, n)
        }
        16 => {
            let n = rng.gen_range(1..20);
            random_bytes(rng, n)
        }
        17 => {
            // Below 4 KiB: dmsetup reads a table line's target type into a 4 KiB stack
            // buffer without a bound (its _parse_line), and a mutation may put this there.
            let n = rng.gen_range(256..4000);
            random_ascii(rng, n)
        }
        18 => Vec::new(),
        _ => b"s-snap-origin".to_vec(),
    }
}

fn join(tokens: &[Vec<u8>]) -> Vec<u8> {
    tokens.join(&b' ')
}

/// A table line with the right start and length and a random argument list.
fn random_table(rng: &mut SmallRng, env: &Env) -> Vec<u8> {
    let target: &[u8] = if rng.gen_bool(0.5) {
        b"s-snap-origin"
    } else {
        b"s-snap"
    };
    let len = match rng.gen_range(0..8) {
        0 => env.origin_sectors + 1,
        1 => 8,
        2 => env.spare_origin_sectors,
        _ => env.origin_sectors,
    };
    let mut tokens = vec![b"0".to_vec(), len.to_string().into_bytes(), target.to_vec()];
    for _ in 0..rng.gen_range(0..8) {
        tokens.push(random_token(rng, env));
    }
    join(&tokens)
}

/// The valid lines mutations start from: one that creates a new origin on the spare
/// devices, the live origin's own line, and a snapshot device of snapshot 3.
fn valid_tables(env: &Env) -> [Vec<Vec<u8>>; 3] {
    let t = |s: String| s.split(' ').map(|w| w.as_bytes().to_vec()).collect();
    [
        t(format!(
            "0 {} s-snap-origin {} {} S {CHUNK}",
            env.spare_origin_sectors, env.spare_origin, env.spare_cow
        )),
        t(format!(
            "0 {} s-snap-origin {} {} S {CHUNK}",
            env.origin_sectors, env.origin, env.cow
        )),
        t(format!("0 {} s-snap {} 3", env.origin_sectors, env.origin)),
    ]
}

/// One mutation of a token list.
fn mutate(
    rng: &mut SmallRng,
    tokens: &mut Vec<Vec<u8>>,
    replacement: impl FnOnce(&mut SmallRng) -> Vec<u8>,
) {
    let n = tokens.len();
    match rng.gen_range(0..8) {
        0 if n > 0 => {
            tokens.remove(rng.gen_range(0..n));
        }
        1 if n > 0 => {
            let i = rng.gen_range(0..n);
            let t = tokens[i].clone();
            tokens.insert(i, t);
        }
        2 if n > 1 => {
            let (i, j) = (rng.gen_range(0..n), rng.gen_range(0..n));
            tokens.swap(i, j);
        }
        3 | 4 if n > 0 => {
            let i = rng.gen_range(0..n);
            tokens[i] = replacement(rng);
        }
        5 => {
            let i = rng.gen_range(0..=n);
            tokens.insert(i, replacement(rng));
        }
        6 if n > 1 => {
            // Two words run together, or glued by a quoted space (one word with a space).
            let i = rng.gen_range(0..n - 1);
            let next = tokens.remove(i + 1);
            if rng.gen_bool(0.5) {
                tokens[i].extend(b"\\ ");
            }
            tokens[i].extend(next);
        }
        _ => {
            // A separator the kernel also splits at, or a case change.
            if n > 0 {
                let i = rng.gen_range(0..n);
                match rng.gen_range(0..3) {
                    0 => tokens[i].push(*[b'\t', 0xa0, 0x0b].choose(rng).unwrap()),
                    1 => tokens[i].make_ascii_uppercase(),
                    _ => tokens[i].insert(0, b'0'),
                }
            }
        }
    }
}

fn mutated_table(rng: &mut SmallRng, env: &Env) -> (Vec<u8>, bool) {
    let bases = valid_tables(env);
    let mut tokens = bases.choose(rng).unwrap().clone();
    for _ in 0..rng.gen_range(1..=3) {
        match rng.gen_range(0..10) {
            0 => {
                // Wrong start or length.
                let v = [
                    "1".to_string(),
                    (env.origin_sectors - 1).to_string(),
                    (env.origin_sectors + 1).to_string(),
                    (env.origin_sectors * 2).to_string(),
                    "0".into(),
                    "18446744073709551615".into(),
                ];
                let i = rng.gen_range(0..2);
                tokens[i] = v.choose(rng).unwrap().as_bytes().to_vec();
            }
            1 => {
                let chunks = [
                    "8", "1024", "2048", "4", "24", "0", "512", "17", "-16", "16k",
                ];
                if let Some(last) = tokens.last_mut() {
                    *last = chunks.choose(rng).unwrap().as_bytes().to_vec();
                }
            }
            _ => mutate(rng, &mut tokens, |r| random_token(r, env)),
        }
    }
    let mut table = join(&tokens);
    // Sometimes a second line: the same target again, or a linear piece after it.
    let stdin = rng.gen_bool(0.15);
    if stdin {
        table.push(b'\n');
        if rng.gen_bool(0.5) {
            table.extend(join(&tokens));
        } else {
            // Starting where the first line ends, if it says so.
            table.extend(tokens.get(1).cloned().unwrap_or_default());
            table.extend(format!(" 8 linear {} 0", env.spare_origin).as_bytes());
        }
        table.push(b'\n');
    }
    (table, stdin)
}

fn valid_message(rng: &mut SmallRng) -> Vec<Vec<u8>> {
    let id = match rng.gen_range(0..6) {
        0 => *BASELINE.choose(rng).unwrap(),
        1 => u32::MAX,
        2 => 0,
        _ => rng.gen_range(4..100_000),
    };
    let words: &[&str] = match rng.gen_range(0..5) {
        0 => &["usage"],
        1 | 2 => &["snapshot", "create"],
        _ => &["snapshot", "delete"],
    };
    let mut v: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    if v.len() == 2 {
        v.push(id.to_string().into_bytes());
    }
    v
}

fn message_word(rng: &mut SmallRng) -> Vec<u8> {
    match rng.gen_range(0..10) {
        0..=3 => WORDS.choose(rng).unwrap().as_bytes().to_vec(),
        4..=6 => random_number(rng),
        7 => {
            let n = rng.gen_range(1..12);
            random_ascii(rng, n)
        }
        8 => {
            let n = rng.gen_range(1..12);
            random_bytes(rng, n)
        }
        _ => Vec::new(),
    }
}

fn long_message(rng: &mut SmallRng) -> Vec<Vec<u8>> {
    let size = *[1usize << 10, 4 << 10, 16 << 10, 60 << 10]
        .choose(rng)
        .unwrap();
    match rng.gen_range(0..3) {
        0 => vec![
            b"snapshot".to_vec(),
            b"create".to_vec(),
            "1".repeat(size).into_bytes(),
        ],
        1 => {
            let mut v = vec![b"usage".to_vec()];
            while v.iter().map(Vec::len).sum::<usize>() < size {
                v.push(message_word(rng));
            }
            v
        }
        _ => vec![random_ascii(rng, size)],
    }
}

fn message_sector(rng: &mut SmallRng, sectors: u64) -> Vec<u8> {
    if rng.gen_bool(0.9) {
        return b"0".to_vec();
    }
    let s = [
        (sectors - 1).to_string(),
        sectors.to_string(),
        "18446744073709551615".into(),
        "18446744073709551616".into(),
        "-1".into(),
        " 0".into(),
        "+0".into(),
        "0x0".into(),
        String::new(),
        "abc".into(),
    ];
    s.choose(rng).unwrap().as_bytes().to_vec()
}

fn generate(rng: &mut SmallRng, kind: Kind, env: &Env) -> Case {
    let sectors = env.origin_sectors;
    match kind {
        Kind::TableRandom => Case::Create {
            table: random_table(rng, env),
            stdin: false,
        },
        Kind::TableMutated => {
            let (table, stdin) = mutated_table(rng, env);
            Case::Create { table, stdin }
        }
        Kind::ReloadMutated => Case::Reload {
            table: mutated_table(rng, env)
                .0
                .split(|&b| b == b'\n')
                .next()
                .unwrap()
                .to_vec(),
        },
        Kind::MessageRandom => Case::Message {
            device: ORIGIN_NAME,
            sector: message_sector(rng, sectors),
            words: (0..rng.gen_range(1..6))
                .map(|_| message_word(rng))
                .collect(),
        },
        Kind::MessageMutated => {
            let mut words = valid_message(rng);
            for _ in 0..rng.gen_range(0..=2) {
                mutate(rng, &mut words, message_word);
            }
            if words.is_empty() {
                words.push(Vec::new());
            }
            Case::Message {
                device: ORIGIN_NAME,
                sector: message_sector(rng, sectors),
                words,
            }
        }
        Kind::MessageLong => Case::Message {
            device: ORIGIN_NAME,
            sector: b"0".to_vec(),
            words: long_message(rng),
        },
        Kind::MessageToSnapshot => Case::Message {
            device: "snap1",
            sector: b"0".to_vec(),
            words: valid_message(rng),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The live devices.
// ---------------------------------------------------------------------------------------------

fn write_pattern(path: &str, blocks: std::ops::Range<u64>, tag: u64) -> Result<()> {
    let file = open_direct(path)?;
    let mut buf = AlignedBlock::new();
    for i in blocks {
        fill_block(buf.bytes(), tag, i);
        file.write_all_at(buf.bytes(), i * BLOCK as u64)
            .with_context(|| format!("write block {i} of {path}"))?;
    }
    Ok(())
}

fn snapshot_table(env: &Env, id: u32) -> String {
    format!("0 {} s-snap {} {id}", env.origin_sectors, env.origin)
}

/// The live origin, its snapshots and what they must keep holding.
struct Live {
    blocks: u64,
    /// Digests of the active snapshot devices as they were made.
    baseline: BTreeMap<u32, Vec<Option<u64>>>,
}

impl Live {
    fn set_up(cli: &Cli, env: &Env) -> Result<Self> {
        let table = format!(
            "0 {} s-snap-origin {} {} S {CHUNK}",
            env.origin_sectors, cli.origin, cli.cow
        );
        dm(&["create", ORIGIN_NAME, "--table", &table])?;
        let path = format!("/dev/mapper/{ORIGIN_NAME}");
        let blocks = env.origin_sectors * 512 / BLOCK as u64;
        write_pattern(&path, 0..blocks, 1)?;
        for (i, id) in BASELINE.iter().enumerate() {
            origin_message(&format!("snapshot create {id}"))?;
            // Each snapshot differs from the next in a part of the origin.
            let first = i as u64 * blocks / 4;
            write_pattern(&path, first..first + blocks / 4, 2 + i as u64)?;
        }
        let mut baseline = BTreeMap::new();
        for id in ACTIVE {
            dm(&[
                "create",
                &format!("snap{id}"),
                "--table",
                &snapshot_table(env, id),
            ])?;
            let d = block_digests(&format!("/dev/mapper/snap{id}"), blocks)?;
            ensure!(
                d.iter().all(Option::is_some),
                "snapshot {id} has unreadable blocks"
            );
            baseline.insert(id, d);
        }
        Ok(Self { blocks, baseline })
    }

    /// The live origin still takes writes and reads them back, the snapshots still hold what
    /// they held, the snapshot list is the model's and no stray device exists.
    fn check(&self, model: &Model, round: u64) -> Result<()> {
        let path = format!("/dev/mapper/{ORIGIN_NAME}");
        // Another block each time; most are still shared with snapshot 3 and need a copy.
        let block = (round * 7) % self.blocks;
        let tag = 1000 + round;
        write_pattern(&path, block..block + 1, tag)?;
        let file = open_direct_read(&path)?;
        let mut buf = AlignedBlock::new();
        file.read_exact_at(buf.bytes(), block * BLOCK as u64)?;
        let mut want = vec![0u8; BLOCK];
        fill_block(&mut want, tag, block);
        ensure!(
            buf.bytes() == want.as_slice(),
            "origin block {block} reads back wrong"
        );
        for (id, want) in &self.baseline {
            let got = block_digests(&format!("/dev/mapper/snap{id}"), self.blocks)?;
            let bad = got.iter().zip(want).filter(|(g, w)| g != w).count();
            ensure!(
                bad == 0,
                "snapshot {id}: {bad} blocks changed or unreadable"
            );
        }
        let ids = status_snapshot_ids()?;
        let want: Vec<u32> = model.snapshots.iter().copied().collect();
        ensure!(ids == want, "snapshot list {ids:?}, expected {want:?}");
        let mut names: Vec<String> = dm(&["ls"])?
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        names.sort();
        ensure!(names == ["snap1", "snap2", "work"], "devices: {names:?}");
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running cases.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    run: u32,
    accepted: u32,
    kernel_refused: u32,
    dmsetup_refused: u32,
}

fn execute(case: &Case) -> Result<Run> {
    match case {
        Case::Create {
            table,
            stdin: false,
        } => dmsetup_run(&[b"create", SCRATCH.as_bytes(), b"--table", table], None),
        Case::Create { table, stdin: true } => {
            dmsetup_run(&[b"create", SCRATCH.as_bytes()], Some(table))
        }
        Case::Reload { table } => {
            dmsetup_run(&[b"load", ORIGIN_NAME.as_bytes(), b"--table", table], None)
        }
        Case::Message {
            device,
            sector,
            words,
        } => {
            // "--": words that start with "-" are message words, not dmsetup options.
            let mut args: Vec<&[u8]> = vec![b"--", b"message", device.as_bytes(), sector];
            args.extend(words.iter().map(Vec::as_slice));
            dmsetup_run(&args, None)
        }
    }
}

/// A log line with what varies (device numbers, ids, echoed input) taken out, to count the
/// kinds of reasons given.
fn reason_kind(line: &str) -> String {
    let mut kind = String::new();
    let mut quoted = false;
    for c in line.chars().take(120) {
        match c {
            '\'' => {
                quoted = !quoted;
                kind.push_str(if quoted { "'..." } else { "'" });
            }
            _ if quoted => {}
            '0'..='9' if kind.ends_with('N') => {}
            '0'..='9' => kind.push('N'),
            _ => kind.push(c),
        }
    }
    kind
}

/// Where a case ended.
enum Outcome {
    Accepted,
    KernelRefused,
    DmsetupRefused,
}

/// Runs a case, checks its answer and undoes what it did; returns where it ended and what
/// was expected.
fn run_case(
    case: &Case,
    env: &Env,
    model: &mut Model,
    log: &mut KernelLog,
    reasons: &mut BTreeMap<String, u32>,
) -> Result<(Outcome, Expect)> {
    let (expect, op) = match case {
        Case::Create { table, .. } => (model.predict_table(table, env), MessageOp::None),
        Case::Reload { table } => (
            match model.predict_table(table, env) {
                // A line that breaks the syntax is refused as a reload too; whether a valid
                // one is depends on what it loads (its own pool, another origin, a snapshot).
                Expect::RefuseAny => Expect::RefuseAny,
                _ => Expect::Either,
            },
            MessageOp::None,
        ),
        Case::Message {
            device,
            sector,
            words,
        } => model.predict_message(*device == ORIGIN_NAME, sector, words),
    };
    let run = execute(case)?;
    let logged = log.drain()?;
    let reason: Vec<String> = logged
        .into_iter()
        .filter(|l| l.level <= 3)
        .map(|l| l.text)
        .collect();
    for r in &reason {
        *reasons.entry(reason_kind(r)).or_default() += 1;
    }
    let answer = if run.ok {
        "accepted".to_string()
    } else if run.kernel_refused() {
        format!("refused: {}", run.errno_text())
    } else {
        format!("refused by dmsetup: {}", run.stderr.trim())
    };
    let matches = match &expect {
        Expect::Accept => run.ok,
        Expect::Refuse(e) => run.kernel_refused() && run.errno_text() == *e,
        Expect::RefuseAny => !run.ok,
        Expect::DmsetupRefuses => !run.ok && !run.kernel_refused(),
        Expect::Either => true,
    };
    if !matches {
        bail!(
            "{}: expected {expect:?}, got {answer}\nkernel log: {reason:?}",
            case.describe()
        );
    }
    if run.kernel_refused() && reason.is_empty() {
        bail!(
            "{}: {answer} with no reason in the kernel log",
            case.describe()
        );
    }
    if run.kernel_refused() {
        return Ok((Outcome::KernelRefused, expect));
    }
    if !run.ok {
        return Ok((Outcome::DmsetupRefused, expect));
    }
    match case {
        Case::Create { .. } => {
            // An accepted device must answer table and status queries and go away.
            dm(&["table", SCRATCH]).context("table of an accepted device")?;
            dm(&["status", SCRATCH]).context("status of an accepted device")?;
            dm(&["remove", SCRATCH]).context("remove an accepted device")?;
        }
        Case::Reload { .. } => {
            dm(&["clear", ORIGIN_NAME]).context("clear an accepted reload")?;
        }
        Case::Message { .. } => {
            match op {
                MessageOp::Create(id) => {
                    model.snapshots.insert(id);
                }
                MessageOp::Delete(id) => {
                    model.snapshots.remove(&id);
                }
                MessageOp::Usage => {
                    // One line of figures, then one per snapshot.
                    ensure!(
                        run.stdout.starts_with(&format!("chunk_sectors {CHUNK} "))
                            && run.stdout.lines().count() == 1 + model.snapshots.len(),
                        "{}: usage reply {:?}",
                        case.describe(),
                        run.stdout
                    );
                }
                MessageOp::None => {}
            }
            let ids = status_snapshot_ids()?;
            let want: Vec<u32> = model.snapshots.iter().copied().collect();
            ensure!(
                ids == want,
                "{}: snapshot list {ids:?} after it, expected {want:?}",
                case.describe()
            );
            // Back to the baseline snapshots.
            for id in want.iter().filter(|id| !BASELINE.contains(id)) {
                origin_message(&format!("snapshot delete {id}"))?;
                model.snapshots.remove(id);
            }
            for id in BASELINE {
                if model.snapshots.insert(id) {
                    origin_message(&format!("snapshot create {id}"))?;
                }
            }
            log.drain()?;
        }
    }
    Ok((Outcome::Accepted, expect))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut log = KernelLog::open()?;
    let env = Env::new(&cli)?;
    let live = Live::set_up(&cli, &env)?;
    let env = Env::new(&cli)?; // now with the snapshot devices
    let mut model = Model {
        snapshots: BASELINE.into_iter().collect(),
        active: ACTIVE.into_iter().collect(),
        sectors: env.origin_sectors,
    };
    log.drain()?;

    let mut rng = SmallRng::seed_from_u64(cli.seed);
    let mut schedule = Vec::new();
    let messages = cli.messages;
    for (kind, n) in [
        (Kind::TableRandom, cli.tables),
        (Kind::TableMutated, cli.mutations * 3 / 4),
        (Kind::ReloadMutated, cli.mutations / 4),
        (Kind::MessageRandom, messages * 4 / 10),
        (Kind::MessageMutated, messages * 5 / 10),
        (Kind::MessageLong, messages / 20),
        (Kind::MessageToSnapshot, messages / 20),
    ] {
        schedule.extend(std::iter::repeat_n(kind, n as usize));
    }
    schedule.shuffle(&mut rng);

    let mut counts: BTreeMap<Kind, Counts> = BTreeMap::new();
    let started = Instant::now();
    let mut checks = 0;
    let mut check_time = 0.0;
    // Exact answers, required refusals, open answers.
    let mut predicted = [0u32; 3];
    let mut reasons = BTreeMap::new();
    for (i, &kind) in schedule.iter().enumerate() {
        let case = generate(&mut rng, kind, &env);
        let (outcome, expect) = run_case(&case, &env, &mut model, &mut log, &mut reasons)
            .with_context(|| format!("case {i} ({kind:?}): {}", case.describe()))?;
        predicted[match expect {
            Expect::Accept | Expect::Refuse(_) | Expect::DmsetupRefuses => 0,
            Expect::RefuseAny => 1,
            Expect::Either => 2,
        }] += 1;
        let c = counts.entry(kind).or_default();
        c.run += 1;
        match outcome {
            Outcome::Accepted => c.accepted += 1,
            Outcome::KernelRefused => c.kernel_refused += 1,
            Outcome::DmsetupRefused => c.dmsetup_refused += 1,
        }
        if (i + 1) % cli.batch as usize == 0 || i + 1 == schedule.len() {
            let t = Instant::now();
            live.check(&model, i as u64)
                .with_context(|| format!("check after case {i}"))?;
            log.drain()?;
            log.clear_dmesg()?;
            checks += 1;
            check_time += t.elapsed().as_secs_f64();
        }
    }
    let mut total = Counts::default();
    for (kind, c) in &counts {
        println!(
            "ok: {kind:?}: {} cases, {} accepted, {} refused by the kernel, {} refused by dmsetup",
            c.run, c.accepted, c.kernel_refused, c.dmsetup_refused
        );
        total.run += c.run;
        total.accepted += c.accepted;
        total.kernel_refused += c.kernel_refused;
        total.dmsetup_refused += c.dmsetup_refused;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ok: {} cases in {secs:.0} s ({:.0} ms each, checks {check_time:.0} s): {} accepted and \
         undone, {} refused ({} by the kernel, each with its reason in the kernel log at once, \
         {} by dmsetup before any ioctl)",
        total.run,
        (secs - check_time) * 1000.0 / f64::from(total.run.max(1)),
        total.accepted,
        total.kernel_refused + total.dmsetup_refused,
        total.kernel_refused,
        total.dmsetup_refused
    );
    println!(
        "ok: answers fixed by the documentation: {} exactly (accepted, or refused with its \
         error), {} refused as they must be; {} left to the devices",
        predicted[0], predicted[1], predicted[2]
    );
    println!("ok: {checks} checks of the live origin and its snapshots passed");
    let mut by_count: Vec<(u32, String)> = reasons.into_iter().map(|(k, n)| (n, k)).collect();
    by_count.sort_by(|a, b| b.cmp(a));
    println!(
        "kernel log lines of the refusals, by kind ({} kinds):",
        by_count.len()
    );
    for (n, kind) in by_count.iter().take(25) {
        println!("{n:6} {kind}");
    }
    for id in ACTIVE {
        dm(&["remove", &format!("snap{id}")])?;
    }
    dm(&["remove", ORIGIN_NAME])?;
    log.drain()?;
    log.clear_dmesg()?;
    Ok(())
}
