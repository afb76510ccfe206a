// SPDX-License-Identifier: GPL-2.0

//! Rolling the origin back to a snapshot.
//!
//! [`Store::start_rollback`] records, in one transaction, the snapshot and every origin chunk
//! where the snapshot's data is not the origin's (a private exception of the snapshot, or a
//! shared exception whose range holds it): private-tree keys under [`ROLLBACK_KEY_EPOCH`],
//! which no snapshot has. From its commit on, the origin reads as the snapshot: a chunk still
//! listed reads from where the snapshot's data is ([`Store::origin_read_location`]), every
//! other chunk from the origin. The caller then copies the listed chunks back, in the
//! background or before an origin write to one of them:
//!
//! 1. [`Store::rollback_prepare`] preserves the origin's data of the chunk for the other
//!    snapshots that share it, exactly as an origin write does ([`OriginWrite`]);
//! 2. the caller copies the snapshot's data ([`Store::rollback_source`]) over the origin chunk
//!    and makes it durable on the origin device;
//! 3. [`Store::rollback_chunk_done`] takes the chunk off the list; the last one ends the
//!    rollback.
//!
//! A crash anywhere leaves the chunk listed until a commit after step 3, so it reads as the
//! snapshot and is copied again: the copy is idempotent, since nothing changes the
//! snapshot's data while the rollback runs. To keep it so, the snapshot can be neither
//! written, discarded nor deleted, and no snapshot is created (it would share origin chunks
//! whose data is still elsewhere), until the rollback has ended ([`Error::RollingBack`]).
//! Other snapshots keep their data: step 1 is the ordinary copy-on-write.

use super::error::{Error, Result};
use super::format::*;
use super::io::BlockIo;
use super::ops::{hi64, lo64, private_key, Location, OriginWrite, SnapshotRef, DELETING, ID_SPACE};
use super::txn::Store;

/// A rollback in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollbackProgress {
    /// The snapshot the origin is rolled back to (its id and epoch).
    pub snapshot: SnapshotRef,
    /// Chunks to copy back when the rollback started.
    pub total: u64,
    /// Chunks still to copy back.
    pub left: u64,
}

impl<I: BlockIo> Store<I> {
    /// The rollback in progress, if any.
    pub fn rollback(&self) -> Result<Option<RollbackProgress>> {
        let e = self.sb.rollback_epoch;
        if e == 0 {
            return Ok(None);
        }
        let v = self.lookup(TREE_SNAPS, e as u128)?.ok_or(Error::Corrupt {
            what: "rollback: snapshot not in the table",
            block: 0,
        })?;
        let id = u32::try_from(lo64(v)).map_err(|_| Error::Corrupt {
            what: "snapshot table: id out of range",
            block: 0,
        })?;
        Ok(Some(RollbackProgress {
            snapshot: SnapshotRef { id, epoch: e },
            total: self.sb.rollback_total,
            left: self.sb.rollback_left,
        }))
    }

    /// Whether a rollback is in progress.
    pub fn rolling_back(&self) -> bool {
        self.sb.rollback_epoch != 0
    }

    /// Fails with [`Error::RollingBack`] while a rollback runs.
    pub(crate) fn not_rolling_back(&self) -> Result<()> {
        if self.rolling_back() {
            Err(Error::RollingBack)
        } else {
            Ok(())
        }
    }

    /// Fails with [`Error::RollingBack`] if the origin is rolled back to the snapshot with
    /// epoch `epoch`: its data must not change until then.
    pub(crate) fn not_rollback_source(&self, epoch: u64) -> Result<()> {
        if self.sb.rollback_epoch == epoch {
            Err(Error::RollingBack)
        } else {
            Ok(())
        }
    }

    /// Starts rolling the origin back to live snapshot `id`: from the next commit on, the
    /// origin reads as the snapshot (see the module documentation). The snapshot stays. Returns
    /// the number of chunks to copy back; with none (the snapshot reads the origin everywhere)
    /// no rollback is recorded.
    ///
    /// The work is proportional to the exceptions of the store (one pass over them), and one
    /// B+tree insert per chunk to copy back.
    ///
    /// Errors: [`Error::NotFound`] for no live snapshot `id`; [`Error::RollingBack`] while a
    /// rollback runs; [`Error::Busy`] while copy plans are outstanding; [`Error::NoSpace`] if
    /// the list of chunks does not fit the metadata space (nothing changed then).
    pub fn start_rollback(&mut self, id: u32) -> Result<u64> {
        self.writable()?;
        if self.outstanding != 0 || self.journal.writing {
            return Err(Error::Busy);
        }
        self.not_rolling_back()?;
        let r = self.start_rollback_inner(id);
        self.guard(r)
    }

    fn start_rollback_inner(&mut self, id: u32) -> Result<u64> {
        let snap = self.snapshot_epoch(id)?.ok_or(Error::NotFound)?;
        let e = snap.epoch();
        // Count first, so that a list that does not fit changes nothing.
        let mut n = 0u64;
        let mut from = 0u64;
        while let Some(c) = self.next_differing_chunk(e, from)? {
            n += 1;
            from = match c.checked_add(1) {
                Some(x) => x,
                None => break,
            };
        }
        if n == 0 {
            return Ok(0);
        }
        let f = NodeFormat::of(TREE_PRIVATE)?;
        // Appending keys in order splits each full leaf in two halves; internal nodes take a
        // fraction of that again. Not from the metadata reserve, as for a create.
        let leaves = n.div_ceil((f.leaf_max / 2).max(1) as u64);
        self.ensure(self.meta_reserve() + self.op_need(TREE_PRIVATE) + 2 * (leaves + 2))?;
        let mut from = 0u64;
        let mut listed = 0u64;
        while let Some(c) = self.next_differing_chunk(e, from)? {
            self.insert(
                TREE_PRIVATE,
                private_key(ROLLBACK_KEY_EPOCH, c),
                // The value is unused: the snapshot's data is looked up when needed.
                0,
            )?;
            listed += 1;
            from = match c.checked_add(1) {
                Some(x) => x,
                None => break,
            };
        }
        if listed != n {
            return Err(Error::Internal("rollback list changed while written"));
        }
        self.sb.rollback_epoch = e;
        self.sb.rollback_total = n;
        self.sb.rollback_left = n;
        self.touch();
        Ok(n)
    }

    /// The first origin chunk from `from` on where the snapshot with epoch `e` does not read
    /// the origin: it has a private exception, or a shared exception's range holds it.
    fn next_differing_chunk(&self, e: u64, from: u64) -> Result<Option<u64>> {
        let private = match self.ceil(TREE_PRIVATE, private_key(e, from))? {
            Some((k, _)) if hi64(k) == e => Some(lo64(k)),
            _ => None,
        };
        // The shared exceptions of chunks before the private one found (or all after
        // `from`), in key order, until one holds `e`.
        let mut shared = None;
        let mut it = self.entries(TREE_SHARED, Some((from as u128) << 64));
        while let Some(x) = it.next_entry() {
            let (k, v) = x?;
            let c = hi64(k);
            if private.is_some_and(|p| c >= p) {
                break;
            }
            if hi64(v) <= e && e <= lo64(k) {
                shared = Some(c);
                break;
            }
        }
        Ok(match (private, shared) {
            (Some(p), Some(s)) => Some(p.min(s)),
            (p, s) => p.or(s),
        })
    }

    /// Whether origin `chunk` is still to be copied back by the running rollback.
    pub fn rollback_pending(&self, chunk: u64) -> Result<bool> {
        if !self.rolling_back() {
            return Ok(false);
        }
        Ok(self
            .lookup(TREE_PRIVATE, private_key(ROLLBACK_KEY_EPOCH, chunk))?
            .is_some())
    }

    /// The first chunk from `from` on that the running rollback has still to copy back.
    pub fn next_rollback_chunk(&self, from: u64) -> Result<Option<u64>> {
        if !self.rolling_back() {
            return Ok(None);
        }
        Ok(
            match self.ceil(TREE_PRIVATE, private_key(ROLLBACK_KEY_EPOCH, from))? {
                Some((k, _)) if hi64(k) == ROLLBACK_KEY_EPOCH => Some(lo64(k)),
                _ => None,
            },
        )
    }

    /// Where the origin's data of `chunk` is: on the origin, or, for a chunk the running
    /// rollback has still to copy back, where the snapshot's data is.
    pub fn origin_read_location(&self, chunk: u64) -> Result<Location> {
        if self.rollback_pending(chunk)? {
            self.rollback_source(chunk)
        } else {
            Ok(Location::Origin)
        }
    }

    /// Where the data that the running rollback copies to origin `chunk` is (a chunk it has
    /// still to copy back).
    pub fn rollback_source(&self, chunk: u64) -> Result<Location> {
        let e = self.sb.rollback_epoch;
        if e == 0 {
            return Err(Error::Invalid("no rollback is running"));
        }
        match self.epoch_lookup(e, chunk)? {
            Location::Origin => Err(Error::Corrupt {
                what: "rollback: a listed chunk has no data of its snapshot",
                block: chunk,
            }),
            loc => Ok(loc),
        }
    }

    /// Prepares the copy back of `chunk` (still to be copied back): what an origin write of it
    /// needs first, so that the other snapshots keep the origin's data. With
    /// [`OriginWrite::Proceed`] the caller copies [`Store::rollback_source`] over the origin
    /// chunk, makes it durable, and calls [`Store::rollback_chunk_done`].
    pub fn rollback_prepare(&mut self, chunk: u64) -> Result<OriginWrite> {
        self.writable()?;
        if !self.rollback_pending(chunk)? {
            return Err(Error::Invalid("chunk is not to be copied back"));
        }
        let r = self.preserve_for_origin_write(chunk);
        self.guard(r)
    }

    /// Takes `chunk` off the list of the running rollback: the snapshot's data of it is on the
    /// origin device, durably (the caller flushed the origin device after the copy). The
    /// last chunk ends the rollback. `NoSpace` if the B+tree update would take space that the
    /// completions of outstanding plans may need (nothing changed then).
    pub fn rollback_chunk_done(&mut self, chunk: u64) -> Result<()> {
        self.writable()?;
        let r = self.rollback_done_inner(chunk);
        self.guard(r)
    }

    fn rollback_done_inner(&mut self, chunk: u64) -> Result<()> {
        if !self.rollback_pending(chunk)? {
            return Err(Error::Invalid("chunk is not to be copied back"));
        }
        self.ensure_beside_completions(self.op_need(TREE_PRIVATE))?;
        self.remove(TREE_PRIVATE, private_key(ROLLBACK_KEY_EPOCH, chunk))?;
        self.sb.rollback_left = self.sb.rollback_left.saturating_sub(1);
        if self.sb.rollback_left == 0 {
            if self.next_rollback_chunk(0)?.is_some() {
                return Err(Error::Corrupt {
                    what: "rollback: chunks listed beyond its counter",
                    block: 0,
                });
            }
            self.sb.rollback_epoch = 0;
            self.sb.rollback_total = 0;
        }
        Ok(())
    }

    /// Whether `id` names the snapshot the origin is rolled back to (live, dropped or being
    /// deleted).
    pub(crate) fn is_rollback_snapshot(&self, id: u32) -> Result<bool> {
        if !self.rolling_back() {
            return Ok(false);
        }
        Ok(matches!(
            self.lookup(TREE_SNAPS, ID_SPACE | id as u128)?,
            Some(v) if v & DELETING == 0 && lo64(v) == self.sb.rollback_epoch
        ))
    }
}
