// SPDX-License-Identifier: GPL-2.0

//! What the hostile-input programs (`s-snap-fuzz`, `s-snap-corrupt`) share: `dmsetup` runs
//! with a time limit, the kernel log read as it grows, device sizes and block digests.

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use crate::{AlignedBlock, BLOCK, ORIGIN_NAME};

/// Longest a `dmsetup` run may take under TCG before it counts as a hang.
pub const DMSETUP_LIMIT: Duration = Duration::from_secs(60);

/// How a command ended.
pub struct Run {
    /// Exit status 0.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// `dmsetup` got as far as an ioctl, which the kernel refused.
    pub fn kernel_refused(&self) -> bool {
        !self.ok && self.stderr.contains("ioctl on")
    }

    /// The error text of a refused ioctl ("Invalid argument", ...).
    pub fn errno_text(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| l.contains("ioctl on"))
            .and_then(|l| l.rsplit("failed: ").next())
            .map(str::trim)
            .unwrap_or("")
    }
}

/// Runs `program` with byte-string arguments (they may be any bytes but NUL) and optional
/// standard input; fails if it is still running after `limit` (it is then killed).
pub fn run_timed(
    program: &str,
    args: &[&[u8]],
    stdin: Option<&[u8]>,
    limit: Duration,
) -> Result<Run> {
    let mut child = Command::new(program)
        .args(args.iter().map(|a| OsStr::from_bytes(a)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {program}"))?;
    // A watchdog kills the child at the limit; the answer on the channel stops it earlier.
    let pid = child.id() as libc::pid_t;
    let (done, wait) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        let expired = wait.recv_timeout(limit) == Err(RecvTimeoutError::Timeout);
        if expired {
            // SAFETY: kill(2) has no memory effects. The child is reaped before the answer
            // is sent, so a kill racing with its exit can only hit a pid freed an instant ago.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        expired
    });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("stdin")?;
        // A child that exits without reading gives EPIPE: that is its answer, not ours.
        let _ = pipe.write_all(input);
    }
    let output = child.wait_with_output();
    let _ = done.send(());
    let expired = watchdog.join().unwrap_or(true);
    let output = output.with_context(|| format!("wait for {program}"))?;
    if expired {
        bail!(
            "{program} {} did not finish within {} s (hang)",
            printable(&args.join(&b' ')),
            limit.as_secs()
        );
    }
    let text = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
    Ok(Run {
        ok: output.status.success(),
        stdout: text(output.stdout),
        stderr: text(output.stderr),
    })
}

/// `dmsetup` with byte-string arguments, within [`DMSETUP_LIMIT`].
pub fn dmsetup_run(args: &[&[u8]], stdin: Option<&[u8]>) -> Result<Run> {
    run_timed("dmsetup", args, stdin, DMSETUP_LIMIT)
}

/// `dmsetup` that must succeed, within [`DMSETUP_LIMIT`] (a hang fails the test rather than
/// the VM's time limit); its standard output.
pub fn dm(args: &[&str]) -> Result<String> {
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let run = dmsetup_run(&bytes, None)?;
    if !run.ok {
        bail!("dmsetup {}: {}", args.join(" "), run.stderr.trim());
    }
    Ok(run.stdout)
}

/// `dmsetup message` to the origin device that must succeed; the words are split at spaces.
pub fn origin_message(words: &str) -> Result<String> {
    let mut args = vec!["message", ORIGIN_NAME, "0"];
    args.extend(words.split(' '));
    dm(&args)
}

/// Bytes shown safely in a report: printable ASCII as is, the rest as `\xNN`, long runs cut.
pub fn printable(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(200) {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > 200 {
        s.push_str(&format!("...({} bytes)", bytes.len()));
    }
    s
}

/// What a kernel prints when something went wrong; the same list as the harness
/// (tools/testing/s-snap/vmtest.py), which reads the log only at the end of a test, when a
/// long test may have pushed early reports out of the ring buffer.
const KERNEL_PROBLEMS: &[&str] = &[
    "WARNING: ",
    "BUG: ",
    "BUG at ",
    "kernel BUG",
    "Oops",
    "Kernel panic",
    "general protection fault",
    "KASAN",
    "UBSAN",
    "new suspected memory leak",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "rust_panic",
    "panicked at",
    "Call Trace:",
    "blocked for more than",
];

/// One kernel log record.
pub struct LogLine {
    /// Syslog priority: 3 is an error, 4 a warning.
    pub level: u8,
    pub text: String,
}

/// The kernel log, read through /dev/kmsg from where it stood when opened.
pub struct KernelLog {
    kmsg: File,
}

impl KernelLog {
    /// Opens the log; only records written after this are read.
    pub fn open() -> Result<Self> {
        let kmsg = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("open /dev/kmsg")?;
        // SAFETY: lseek on a file descriptor we own.
        if unsafe { libc::lseek(kmsg.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            bail!("seek /dev/kmsg: {}", std::io::Error::last_os_error());
        }
        Ok(Self { kmsg })
    }

    /// Empties the buffer `dmesg` reads (after [`KernelLog::drain`] has read and checked the
    /// records), so that the harness's end-of-test dump over the slow serial console stays
    /// short after thousands of refusals. Readers of /dev/kmsg, this one included, are not
    /// affected.
    pub fn clear_dmesg(&mut self) -> Result<()> {
        // SAFETY: SYSLOG_ACTION_CLEAR (5) takes no buffer.
        if unsafe { libc::klogctl(5, std::ptr::null_mut(), 0) } < 0 {
            bail!("clear the kernel log: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The records written since the last call. Fails, printing it, on any report of a
    /// kernel problem, and if records were lost (the ring buffer overran between calls).
    pub fn drain(&mut self) -> Result<Vec<LogLine>> {
        let mut lines = Vec::new();
        let mut buf = vec![0u8; 16384];
        loop {
            match self.kmsg.read(&mut buf) {
                Ok(0) => break,
                // "prio,seq,time,flags;text\n" then " KEY=value" dictionary lines.
                Ok(n) => {
                    let record = String::from_utf8_lossy(&buf[..n]);
                    let (head, text) = record.split_once(';').unwrap_or(("", &record));
                    let prio: u32 = head.split(',').next().unwrap_or("").parse().unwrap_or(0);
                    let text = text.lines().next().unwrap_or("").to_string();
                    if KERNEL_PROBLEMS.iter().any(|p| text.contains(p)) {
                        println!("kernel log: {text}");
                        bail!("the kernel reported a problem: {text}");
                    }
                    lines.push(LogLine {
                        level: (prio & 7) as u8,
                        text,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    bail!("the kernel log overran between two reads: records were lost")
                }
                Err(e) => return Err(e).context("read /dev/kmsg"),
            }
        }
        Ok(lines)
    }
}

/// A 64-bit digest of a block (FNV-1a over words: enough to tell blocks apart).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for w in bytes.chunks(8) {
        let mut v = [0u8; 8];
        v[..w.len()].copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(v)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Opens a device for `O_DIRECT` reads only (snapshot devices are read while in use).
pub fn open_direct_read(path: &str) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {path}"))
}

/// Blocks read by one request of [`block_digests`].
const READ_BLOCKS: usize = 16;

/// The digest of every 4 KiB block of `path` (`None`: the read failed), up to `blocks`.
/// Reads 64 KiB at a time and block by block where such a read fails, so that every
/// unreadable block is found.
pub fn block_digests(path: &str, blocks: u64) -> Result<Vec<Option<u64>>> {
    let file = open_direct_read(path)?;
    let mut buf = AlignedBlock::with_blocks(READ_BLOCKS);
    let mut one = AlignedBlock::new();
    let mut out = Vec::with_capacity(blocks as usize);
    let mut first = 0;
    while first < blocks {
        let n = (blocks - first).min(READ_BLOCKS as u64) as usize;
        let bytes = &mut buf.bytes()[..n * BLOCK];
        if file.read_exact_at(bytes, first * BLOCK as u64).is_ok() {
            out.extend(bytes.chunks(BLOCK).map(|b| Some(digest(b))));
        } else {
            for i in first..first + n as u64 {
                out.push(
                    file.read_exact_at(one.bytes(), i * BLOCK as u64)
                        .ok()
                        .map(|_| digest(one.bytes())),
                );
            }
        }
        first += n as u64;
    }
    Ok(out)
}
