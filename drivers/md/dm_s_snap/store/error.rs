// SPDX-License-Identifier: GPL-2.0

//! Error type of the exception store.

use core::fmt;

/// Every error the exception store returns.
///
/// Details are static strings so that the type needs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The block I/O layer failed (read, write or flush error).
    Io(&'static str),
    /// Metadata on the device is inconsistent.
    Corrupt {
        /// What is wrong.
        what: &'static str,
        /// The metadata block (chunk number) where it was found.
        block: u64,
    },
    /// The device holds neither a valid store nor zeroes in its two
    /// superblock chunks; nothing was written.
    NotAStore,
    /// The device is too small for the store's fixed area plus a minimum
    /// of free chunks, or smaller than when it was formatted.
    DeviceTooSmall,
    /// The chunk size is not a power of two between 8 and 1024 sectors,
    /// or the block I/O layer's block size does not match it.
    InvalidChunkSize,
    /// The chunk size given by the table differs from the stored one.
    ChunkSizeMismatch,
    /// The on-disk format version is not supported.
    Unsupported(&'static str),
    /// No free chunk is left (or only the metadata reserve is left).
    NoSpace,
    /// A snapshot with this id already exists.
    Exists,
    /// No snapshot with this id exists.
    NotFound,
    /// The store was opened read-only.
    ReadOnly,
    /// The operation needs that no copy plan is outstanding.
    Busy,
    /// The operation is refused while the origin is rolled back to a snapshot.
    RollingBack,
    /// An argument or a plan is not valid for the current state.
    Invalid(&'static str),
    /// A design limit was reached (tree depth, epoch counter, ...).
    Limit(&'static str),
    /// An earlier error left the in-memory transaction unusable; the
    /// store must be dropped and opened again (uncommitted work is lost).
    Failed,
    /// An internal invariant of the store code did not hold (a bug).
    Internal(&'static str),
}

impl Error {
    /// True for errors after which the current transaction cannot go on.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::Io(_) | Error::Corrupt { .. } | Error::Internal(_) | Error::Failed
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(s) => write!(f, "I/O error: {s}"),
            Error::Corrupt { what, block } => {
                write!(f, "metadata corrupt at block {block}: {what}")
            }
            Error::NotAStore => f.write_str(
                "not an s-snap exception store (and its superblock chunks are not zeroed)",
            ),
            Error::DeviceTooSmall => f.write_str("device too small"),
            Error::InvalidChunkSize => {
                f.write_str("invalid chunk size (must be a power of two, 8..=1024 sectors)")
            }
            Error::ChunkSizeMismatch => {
                f.write_str("chunk size differs from the one the store was formatted with")
            }
            Error::Unsupported(s) => write!(f, "unsupported: {s}"),
            Error::NoSpace => f.write_str("no free chunk left on the COW device"),
            Error::Exists => f.write_str("snapshot id already exists"),
            Error::NotFound => f.write_str("no such snapshot"),
            Error::ReadOnly => f.write_str("store opened read-only"),
            Error::Busy => f.write_str("copy plans are outstanding"),
            Error::RollingBack => f.write_str("the origin is being rolled back to a snapshot"),
            Error::Invalid(s) => write!(f, "invalid: {s}"),
            Error::Limit(s) => write!(f, "limit reached: {s}"),
            Error::Failed => f.write_str("store failed earlier; reopen it"),
            Error::Internal(s) => write!(f, "internal error: {s}"),
        }
    }
}

impl core::error::Error for Error {}

/// Result type of the exception store.
pub type Result<T> = core::result::Result<T, Error>;
