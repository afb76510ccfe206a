// SPDX-License-Identifier: GPL-2.0

//! Deleting snapshots, and reclaiming their space in the background.
//!
//! [`Store::delete_snapshot`] only marks the snapshot deleted in the
//! snapshot table (its epoch and id entries carry [`DELETING`]): from the
//! commit that follows, the snapshot is gone for every reader and for every
//! origin write, however many exceptions it holds. Its space comes back
//! later, in bounded steps of [`Store::reclaim`], which the target's worker
//! runs between I/O (ZFS's asynchronous destroy works the same way):
//!
//! 1. the private exceptions of the snapshot are removed and their chunks
//!    freed;
//! 2. every shared exception whose epoch range holds the snapshot and that
//!    no live snapshot needs any more is removed and its chunk freed;
//! 3. the snapshot's table entries are removed.
//!
//! Any number of snapshots may be waiting: they are reclaimed one after the
//! other, in epoch order. The one in progress is the superblock's
//! `deleting_epoch`; the others are found by their [`DELETING`] flag. The
//! state is all on disk, so after a crash or a reload the reclaim resumes
//! where the last commit left it (the in-memory scan cursor restarts from
//! the first shared exception, which costs time, never correctness).
//!
//! The id of a snapshot being reclaimed may be used by a new snapshot at
//! once: the id index then names the new epoch, and step 3 removes an id
//! entry only while it still names the reclaimed epoch.

use super::btree::ScanEnd;
use super::error::{Error, Result};
use super::format::*;
use super::io::BlockIo;
use super::ops::{hi64, lo64, private_key, DELETING, DROPPED, ID_SPACE};
use super::txn::Store;

/// What [`Store::reclaim`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Every deleted snapshot's space is back (in the running transaction).
    Done,
    /// The step budget ran out; call again.
    More,
    /// Metadata space ran out, and a commit gives some back (this
    /// transaction freed blocks that become reusable then): commit (when no
    /// plan is outstanding), then call again.
    NeedsCommit,
}

impl<I: BlockIo> Store<I> {
    /// Deletes snapshot `id`, live or dropped: from the next commit on it is
    /// gone, and its id may be used again. Its space is reclaimed by
    /// [`Store::reclaim`].
    ///
    /// Errors: [`Error::NotFound`]; [`Error::NoSpace`] if not even the
    /// snapshot table can be updated. The snapshot then still exists.
    pub fn delete_snapshot(&mut self, id: u32) -> Result<()> {
        self.writable()?;
        let r = self.delete_inner(id);
        self.guard(r)
    }

    fn delete_inner(&mut self, id: u32) -> Result<()> {
        if self.is_rollback_snapshot(id)? {
            return Err(Error::RollingBack);
        }
        let v = match self.lookup(TREE_SNAPS, ID_SPACE | id as u128)? {
            Some(v) if v & DELETING == 0 => v,
            _ => return Err(Error::NotFound),
        };
        let was_dropped = v & DROPPED != 0;
        let e = lo64(v);
        self.ensure(2 * self.op_need(TREE_SNAPS) + 2)?;
        self.insert(TREE_SNAPS, ID_SPACE | id as u128, DELETING | e as u128)?;
        self.insert(TREE_SNAPS, e as u128, DELETING | id as u128)?;
        if was_dropped {
            self.sb.dropped = self.sb.dropped.saturating_sub(1);
        } else {
            self.sb.snapshots = self.sb.snapshots.saturating_sub(1);
        }
        self.deleting = self.deleting.saturating_add(1);
        self.max_deleted_epoch = self.max_deleted_epoch.max(e);
        if self.sb.deleting_epoch == 0 {
            self.sb.deleting_epoch = e;
            self.reclaim_cursor = 0;
        }
        Ok(())
    }

    /// Number of deleted snapshots whose space is not reclaimed yet.
    pub fn deleting_snapshots(&self) -> u64 {
        self.deleting
    }

    /// Chunks freed by [`Store::reclaim`] since the store was opened.
    pub fn reclaimed_chunks(&self) -> u64 {
        self.reclaimed
    }

    /// Reclaims the space of deleted snapshots, for at most `budget` steps
    /// (a step frees one exception or finishes one snapshot). Commits
    /// nothing: the caller commits, as for any other change.
    ///
    /// [`Error::NoSpace`] means that metadata space ran out and a commit
    /// would not help: the reclaim can go on only once other operations
    /// freed space.
    pub fn reclaim(&mut self, budget: u64) -> Result<Reclaim> {
        self.writable()?;
        let mut left = budget;
        let r = loop {
            if left == 0 {
                break Ok(Reclaim::More);
            }
            left -= 1;
            match self.reclaim_step() {
                Ok(true) => break Ok(Reclaim::Done),
                Ok(false) => {}
                Err(Error::NoSpace) if self.deferred != 0 || self.garbage_count != 0 => {
                    break Ok(Reclaim::NeedsCommit)
                }
                Err(e) => break Err(e),
            }
        };
        self.guard(r)
    }

    /// Runs the reclaim to its end, committing whenever metadata space runs
    /// out and a commit gives some back (for tools and tests; the target
    /// reclaims in steps). Fails with [`Error::NoSpace`] if a commit would
    /// not help, and with [`Error::Busy`] if it cannot be made because plans
    /// are outstanding.
    pub fn finish_reclaim(&mut self) -> Result<()> {
        loop {
            match self.reclaim(u64::MAX)? {
                Reclaim::Done => return Ok(()),
                Reclaim::More => {}
                Reclaim::NeedsCommit => self.commit()?,
            }
        }
    }

    /// One step of reclaim; returns true when no deleted snapshot is left.
    fn reclaim_step(&mut self) -> Result<bool> {
        let e = self.sb.deleting_epoch;
        if e == 0 {
            return Ok(true);
        }
        if self.reclaim_private(e)? || self.reclaim_shared(e)? {
            return Ok(false);
        }
        self.remove_table_entries(e)?;
        self.sb.deleting_epoch = self.next_deleting()?.unwrap_or(0);
        self.reclaim_cursor = 0;
        self.dirty = true;
        Ok(self.sb.deleting_epoch == 0)
    }

    /// Step 1: removes one private exception of epoch `e`; false if none is
    /// left.
    fn reclaim_private(&mut self, e: u64) -> Result<bool> {
        let Some((k, v)) = self.ceil(TREE_PRIVATE, private_key(e, 0))? else {
            return Ok(false);
        };
        if hi64(k) != e {
            return Ok(false);
        }
        self.ensure_beside_completions(self.op_need(TREE_PRIVATE))?;
        if self.remove(TREE_PRIVATE, k)?.is_none() {
            return Err(Error::Corrupt {
                what: "btree: found key cannot be removed",
                block: 0,
            });
        }
        if v != PRIVATE_ZEROES {
            self.free_data(lo64(v))?;
        }
        self.sb.private = self.sb.private.saturating_sub(1);
        self.reclaimed += 1;
        Ok(true)
    }

    /// Step 2: removes the next shared exception, from the scan cursor on,
    /// whose range holds `e` and that no live snapshot needs; false if none
    /// is left.
    fn reclaim_shared(&mut self, e: u64) -> Result<bool> {
        let mut from = Some(self.reclaim_cursor);
        while let Some(f) = from {
            let mut hit = None;
            let end = self.scan_leaf(TREE_SHARED, f, |k, v| {
                if hi64(v) <= e && e <= lo64(k) {
                    hit = Some((k, v));
                    Ok(false)
                } else {
                    Ok(true)
                }
            })?;
            match end {
                ScanEnd::Stopped => {
                    let (k, v) = hit.ok_or(Error::Internal("scan result"))?;
                    if k < f {
                        return Err(Error::Corrupt {
                            what: "btree: keys out of order",
                            block: 0,
                        });
                    }
                    self.reclaim_cursor = k;
                    if !self
                        .first_lacking(hi64(k), hi64(v), lo64(k), DELETING)?
                        .found
                    {
                        self.ensure_beside_completions(self.op_need(TREE_SHARED))?;
                        if self.remove(TREE_SHARED, k)?.is_none() {
                            return Err(Error::Corrupt {
                                what: "btree: found key cannot be removed",
                                block: 0,
                            });
                        }
                        self.free_data(lo64(v))?;
                        self.sb.shared = self.sb.shared.saturating_sub(1);
                        self.reclaimed += 1;
                        self.reclaim_cursor = k.saturating_add(1);
                        return Ok(true);
                    }
                    from = k.checked_add(1);
                }
                ScanEnd::Next(n) => {
                    if n <= f {
                        return Err(Error::Corrupt {
                            what: "btree: separators out of order",
                            block: 0,
                        });
                    }
                    from = Some(n);
                }
                ScanEnd::End => from = None,
            }
            if let Some(f) = from {
                self.reclaim_cursor = f;
            }
        }
        Ok(false)
    }

    /// Step 3: removes the table entries of reclaimed epoch `e`. The id
    /// entry goes only if it still names `e`: a new snapshot may have taken
    /// the id meanwhile.
    fn remove_table_entries(&mut self, e: u64) -> Result<()> {
        self.ensure_beside_completions(2 * self.op_need(TREE_SNAPS) + 2)?;
        let idv = self.remove(TREE_SNAPS, e as u128)?.ok_or(Error::Corrupt {
            what: "snapshot table: deleting snapshot vanished",
            block: 0,
        })?;
        let id_key = ID_SPACE | lo64(idv) as u128;
        if self.lookup(TREE_SNAPS, id_key)? == Some(DELETING | e as u128) {
            self.remove(TREE_SNAPS, id_key)?;
        }
        self.deleting = self.deleting.saturating_sub(1);
        Ok(())
    }

    /// The lowest epoch marked deleted in the snapshot table, if any.
    fn next_deleting(&self) -> Result<Option<u64>> {
        Ok(self.deleted_epochs(self.table_len_bound())?.0)
    }

    /// Walks the epoch half of the snapshot table, which holds at most
    /// `limit` entries: the lowest epoch marked deleted, and how many are.
    pub(crate) fn deleted_epochs(&self, limit: u64) -> Result<(Option<u64>, u64)> {
        let (mut first, mut count) = (None, 0u64);
        let mut from = 1u128;
        for _ in 0..limit {
            let Some((k, v)) = self.ceil(TREE_SNAPS, from)? else {
                return Ok((first, count));
            };
            if k >= ID_SPACE {
                return Ok((first, count));
            }
            if v & DELETING != 0 {
                first = first.or(Some(lo64(k)));
                count += 1;
            }
            from = k + 1;
        }
        Err(Error::Corrupt {
            what: "snapshot table longer than its counter",
            block: 0,
        })
    }

    /// The most look-ups a walk of the epoch half of the snapshot table
    /// makes: one per entry (the live snapshots, the dropped ones and the
    /// deleted ones not reclaimed yet) and one past the last.
    pub(crate) fn table_len_bound(&self) -> u64 {
        self.sb
            .snapshots
            .saturating_add(self.sb.dropped)
            .saturating_add(self.deleting)
            .saturating_add(1)
    }
}
