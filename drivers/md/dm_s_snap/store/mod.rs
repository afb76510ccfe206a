// SPDX-License-Identifier: GPL-2.0

//! Exception store of the device-mapper shared-snapshot target.
//!
//! This source is compiled unchanged into the kernel module (as module
//! `store` of the `dm_s_snap` crate) and into userspace tools and tests
//! (crate `s-snap-store`). It is safe Rust without `std`, `alloc` or any
//! external crate; all metadata memory comes from the block handles
//! of a [`BlockIo`] implementation (dm-bufio in the kernel).
//!
//! Model: every snapshot has a user id and an epoch (creation order). A
//! *shared exception* `(chunk, lo..=hi) -> cow` says that the origin data
//! of `chunk` from before its overwrite is in `cow` for every snapshot with
//! epoch in `lo..=hi`; a *private exception* `(epoch, chunk) -> cow` holds
//! a writable snapshot's own data. Three copy-on-write B+trees (shared,
//! private, snapshot table) and a ping-pong bitmap space map live on the COW
//! device; a transaction becomes durable by writing one of two superblocks.
//!
//! The on-disk format, the crash consistency argument and the caller's
//! ordering contract are documented in
//! `Documentation/admin-guide/device-mapper/shared-snapshot.rst`.
//!
//! Caller contract in short:
//!
//! * The data of a [`CopyPlan`] / [`UnsharePlan`] must be written before the
//!   plan is completed, and plans must be completed or aborted before a
//!   checkpoint ([`Store::commit`] returns [`Error::Busy`] otherwise, unless
//!   the commit is a journal block, which records only completed plans; see
//!   [`Store::commit_beside_plans_possible`]).
//! * An origin write for which [`Store::origin_write_prepare`] did not say
//!   [`OriginWrite::Proceed`] must not be issued before a commit that
//!   started after the plan was completed (or after the answer) has
//!   finished.
//! * REQ_PREFLUSH / REQ_FUA on the origin or a snapshot must trigger a
//!   commit before the bio completes.
//! * At most one plan per origin chunk (origin or snapshot write) may be
//!   outstanding; the target serializes writes per chunk.
//! * Chunks freed by an operation (exceptions of deleted snapshots, shared
//!   exceptions no longer needed) may be reused after the next commit; the
//!   target must not have I/O in flight to them across that commit.
//! * [`Store::delete_snapshot`] only marks a snapshot deleted; its space
//!   comes back through [`Store::reclaim`], which the owner calls in bounded
//!   steps (and commits after, like any change).

mod btree;
mod check;
mod error;
mod format;
mod grow;
mod io;
mod journal;
#[cfg(any(CONFIG_DM_S_SNAP_KUNIT_TEST, feature = "model-test"))]
pub mod model_test;
mod ops;
mod reclaim;
mod rollback;
mod space_map;
mod txn;

pub use check::{MetaKind, Problem};
pub use error::{Error, Result};
pub use io::{BlockHandle, BlockIo};
pub use ops::{
    CopyPlan, CowFullPolicy, Location, OriginDiscard, OriginWrite, PrivateException,
    PrivateExceptions, SharedException, SharedExceptions, SnapWritePlan, SnapshotDiscard,
    SnapshotRef, Snapshots, StoreInfo, UnsharePlan, Usage,
};
pub use reclaim::Reclaim;
pub use rollback::RollbackProgress;
pub use txn::Store;

/// Size in bytes of a metadata block: the block size [`BlockIo`] must
/// have, whatever the chunk size.
pub const META_BLOCK_SIZE: usize = format::BLOCK_SIZE;
/// Largest origin size in chunks: origin chunk numbers take 6 bytes on
/// disk.
pub const MAX_ORIGIN_CHUNKS: u64 = format::MAX_ORIGIN_CHUNKS;
/// Smallest chunk size in 512-byte sectors (4 KiB).
pub const MIN_CHUNK_SECTORS: u32 = format::MIN_CHUNK_SECTORS;
/// Largest chunk size in 512-byte sectors (512 KiB).
pub const MAX_CHUNK_SECTORS: u32 = format::MAX_CHUNK_SECTORS;

/// Largest number of chunks a store with this chunk size manages; larger
/// devices use only this many.
pub fn max_chunks(chunk_sectors: u32) -> u64 {
    if format::Geometry::valid_chunk_sectors(chunk_sectors) {
        format::Geometry::max_chunks(chunk_sectors)
    } else {
        0
    }
}

/// Smallest device (in chunks) that can hold a store with this chunk size.
pub fn min_chunks(chunk_sectors: u32) -> u64 {
    if format::Geometry::valid_chunk_sectors(chunk_sectors) {
        format::Geometry::min_chunks(chunk_sectors)
    } else {
        0
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Internal access for the wrapper crate's unit tests.
    pub(crate) use super::btree::{LeafEntries, DROP_LEAVES};
    pub(crate) use super::format::{BM_BITS, TREE_PRIVATE, TREE_SHARED, TREE_SNAPS};
    pub(crate) use super::space_map::{count_bits, flip_bits, flip_error, QueuedFrees};
}
