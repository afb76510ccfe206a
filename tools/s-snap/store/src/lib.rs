//! `s-snap-store`: the exception store of the dm shared-snapshot target for
//! userspace.
//!
//! The store itself is the kernel-shared, `no_std`, allocation-free source
//! in `drivers/md/dm_s_snap/store/`, included here unchanged. The `std`
//! feature (default) adds [`userspace`]: block devices (memory, sparse
//! memory, file, crash-simulating) and a bounded write-back block cache
//! implementing [`BlockIo`].
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs, unreachable_pub, rust_2018_idioms)]

#[cfg(any(feature = "std", test))]
extern crate std;

#[path = "../../../../drivers/md/dm_s_snap/store/mod.rs"]
mod store;
pub use store::*;

#[cfg(feature = "std")]
pub mod userspace;

#[cfg(test)]
mod btree_tests;
#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod space_map_tests;
