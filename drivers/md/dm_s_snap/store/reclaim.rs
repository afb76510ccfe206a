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
//! Steps 1 and 2 work leaf by leaf. A leaf whose every entry goes (all of
//! a snapshot's private exceptions, or shared exceptions that only deleted
//! snapshots needed: the common case once the oldest snapshots go) is
//! dropped whole, with the adjacent leaves after it under the same parent
//! whose every entry goes too: unlinked from their parent, which is sealed
//! once for them all, and freed without being copied, their data chunks
//! freed in runs with one change per bitmap block. Otherwise a leaf's
//! entries go in batches, as many as leave the leaf its minimum.
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

use super::btree::{DroppedLeaves, LeafEntries, LeafSpan, ScanEnd, DROP_LEAVES};
use super::error::{Error, Result};
use super::format::*;
use super::io::BlockIo;
use super::ops::{hi64, lo64, private_key, DELETING, DROPPED, ID_SPACE};
use super::space_map::QueuedFrees;
use super::txn::Store;

/// Exceptions one reclaim step removes at most from a leaf it does not drop
/// whole. They come from one leaf, so that the step shadows the path and
/// seals the leaf and each bitmap block once for all of them; the step keeps
/// them in arrays on the stack.
const RECLAIM_BATCH: usize = 64;

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

    /// Reclaims the space of deleted snapshots: frees at most `budget`
    /// exceptions (finishing a snapshot counts as one). Commits nothing: the
    /// caller commits, as for any other change.
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
            match self.reclaim_step(left) {
                Ok(None) => break Ok(Reclaim::Done),
                Ok(Some(done)) => left = left.saturating_sub(done.max(1)),
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

    /// One step of reclaim, freeing at most `max` exceptions, all from one
    /// leaf or, whole leaves, from adjacent leaves under one parent (then at
    /// least one leaf however many it holds); returns how many it freed (1
    /// when it finished a snapshot), or `None` when no deleted snapshot is
    /// left.
    fn reclaim_step(&mut self, max: u64) -> Result<Option<u64>> {
        let e = self.sb.deleting_epoch;
        if e == 0 {
            return Ok(None);
        }
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let freed = match self.reclaim_private(e, max)? {
            0 => self.reclaim_shared(e, max)?,
            n => n,
        };
        if freed != 0 {
            return Ok(Some(freed as u64));
        }
        self.remove_table_entries(e)?;
        self.sb.deleting_epoch = self.next_deleting()?.unwrap_or(0);
        self.reclaim_cursor = 0;
        self.touch();
        Ok(if self.sb.deleting_epoch == 0 {
            None
        } else {
            Some(1)
        })
    }

    /// Step 1: removes private exceptions of epoch `e`, from the first leaf
    /// that holds any: whole leaves that hold only `e`'s, as many as
    /// [`Store::drop_leaves`] takes within `max`, or else up to `max` (and
    /// [`RECLAIM_BATCH`]) of one leaf. Returns how many (0 if none is left).
    fn reclaim_private(&mut self, e: u64, max: usize) -> Result<usize> {
        match self.reclaim_private_leaves(e, max)? {
            0 => self.reclaim_private_batch(e, max.min(RECLAIM_BATCH)),
            n => Ok(n),
        }
    }

    /// Step 1 by whole leaves: drops the leaves that hold only private exceptions of epoch
    /// `e`, from the first leaf that holds any, as many as [`Store::drop_leaves`] takes
    /// within `max`; returns how many exceptions they held (0 if that leaf holds others too).
    /// Not inlined, nor is [`Store::reclaim_private_batch`]: each path has only its own
    /// arrays on the stack.
    #[inline(never)]
    fn reclaim_private_leaves(&mut self, e: u64, max: usize) -> Result<usize> {
        let Some(span) = self.leaf_from(TREE_PRIVATE, private_key(e, 0), None)? else {
            return Ok(0);
        };
        // It starts at or after e's first key: its last key tells whether all are e's.
        let Some((first, _)) = span.keys.filter(|&(_, last)| hi64(last) == e) else {
            return Ok(0);
        };
        // So do the leaves after it, whose keys are larger.
        let only_e = |leaf: &LeafEntries<'_>| -> Result<bool> {
            match leaf.len().checked_sub(1) {
                Some(last) => Ok(hi64(leaf.key(last)?) == e),
                None => Ok(false),
            }
        };
        let dropped = self.drop_reclaimed_leaves(TREE_PRIVATE, (first, span.len), max, only_e)?;
        self.sb.private = self.sb.private.saturating_sub(dropped.entries as u64);
        Ok(dropped.entries)
    }

    /// Step 1 in a leaf that is not dropped whole: removes up to `max` private exceptions
    /// of epoch `e` from the first leaf that holds any.
    #[inline(never)]
    fn reclaim_private_batch(&mut self, e: u64, max: usize) -> Result<usize> {
        let mut keys = [0u128; RECLAIM_BATCH];
        // Their data chunks; 0 (never a data chunk) for one that reads zeroes.
        let mut chunks = [0u64; RECLAIM_BATCH];
        let mut n = 0usize;
        let mut from = private_key(e, 0);
        // The first key >= `from` is in the leaf that would hold `from` or
        // starts the next one.
        for _ in 0..2 {
            let end = self.scan_leaf(TREE_PRIVATE, from, |k, v| {
                if hi64(k) != e || n == max {
                    return Ok(false);
                }
                if let (Some(ks), Some(cs)) = (keys.get_mut(n), chunks.get_mut(n)) {
                    *ks = k;
                    *cs = if v == PRIVATE_ZEROES { 0 } else { lo64(v) };
                    n += 1;
                }
                Ok(true)
            })?;
            match end {
                ScanEnd::Next(next) if n == 0 && next > from => from = next,
                ScanEnd::Next(_) if n == 0 => {
                    return Err(Error::Corrupt {
                        what: "btree: separators out of order",
                        block: 0,
                    })
                }
                _ => break,
            }
        }
        if n == 0 {
            return Ok(0);
        }
        let removed = self.remove_batch(TREE_PRIVATE, &keys, &mut chunks, n)?;
        self.sb.private = self.sb.private.saturating_sub(removed as u64);
        Ok(removed)
    }

    /// Removes a prefix of the first `n` of `keys` (one leaf's) from `tree` (as many as
    /// [`Store::remove_in_leaf`] can) and frees their data chunks, `chunks` (0: none);
    /// returns how many.
    fn remove_batch(
        &mut self,
        tree: usize,
        keys: &[u128],
        chunks: &mut [u64],
        n: usize,
    ) -> Result<usize> {
        let keys = keys.get(..n).ok_or(Error::Internal("reclaim batch"))?;
        self.ensure_beside_completions(self.op_need(tree))?;
        let removed = self.remove_in_leaf(tree, keys)?;
        let chunks = chunks
            .get_mut(..removed)
            .ok_or(Error::Internal("reclaim batch"))?;
        // Those that read zeroes (0) sort first.
        chunks.sort_unstable();
        let zeroes = chunks.iter().take_while(|&&c| c == 0).count();
        let chunks = chunks.get_mut(zeroes..).unwrap_or(&mut []);
        self.free_data_chunks(chunks)?;
        self.reclaimed += removed as u64;
        Ok(removed)
    }

    /// Step 2: removes shared exceptions whose range holds `e` and that no
    /// live snapshot needs, from the first leaf at or after the scan cursor
    /// that holds any: whole leaves of such exceptions, as many as
    /// [`Store::drop_leaves`] takes within `max`, or else up to `max` (and
    /// [`RECLAIM_BATCH`]) of one leaf. Returns how many (0 if none is left).
    fn reclaim_shared(&mut self, e: u64, max: usize) -> Result<usize> {
        match self.reclaim_shared_leaves(e, max)? {
            0 => self.reclaim_shared_batch(e, max.min(RECLAIM_BATCH)),
            n => Ok(n),
        }
    }

    /// Step 2 by whole leaves: drops the leaves of shared exceptions that all have the same
    /// range, which holds `e` and no live snapshot, from the first leaf at or after the scan
    /// cursor, as many as [`Store::drop_leaves`] takes within `max`; returns how many
    /// exceptions they held (0 if that leaf does not go whole). Not inlined, nor is
    /// [`Store::reclaim_shared_batch`]: each path has only its own arrays on the stack.
    #[inline(never)]
    fn reclaim_shared_leaves(&mut self, e: u64, max: usize) -> Result<usize> {
        let mut common = CommonRange::default();
        let Some(span) = self.leaf_from(TREE_SHARED, self.reclaim_cursor, Some(&mut common))?
        else {
            return Ok(0);
        };
        let (Some((first, _)), Some((lo, hi))) = (span.keys, common.range) else {
            return Ok(0);
        };
        if !self.only_for_deleted(&common, e)? {
            return Ok(0);
        }
        // The leaves after it go too if all their exceptions have the same range, which no
        // live snapshot needs either. Only the halves that hold the range are read.
        let same_range = |leaf: &LeafEntries<'_>| leaf.all_have(hi, lo);
        let dropped =
            self.drop_reclaimed_leaves(TREE_SHARED, (first, span.len), max, same_range)?;
        if dropped.leaves == 0 {
            return Ok(0);
        }
        self.sb.shared = self.sb.shared.saturating_sub(dropped.entries as u64);
        self.reclaim_cursor = dropped.after;
        Ok(dropped.entries)
    }

    /// Step 2 in leaves that are not dropped whole: removes up to `max` shared exceptions
    /// whose range holds `e` and that no live snapshot needs, all from the first leaf at or
    /// after the scan cursor that holds any.
    #[inline(never)]
    fn reclaim_shared_batch(&mut self, e: u64, max: usize) -> Result<usize> {
        let mut from = Some(self.reclaim_cursor);
        while let Some(f) = from {
            let mut found = [(0u128, 0u128); RECLAIM_BATCH];
            let mut nfound = 0usize;
            let mut seen: Option<u128> = None;
            let end = self.scan_leaf(TREE_SHARED, f, |k, v| {
                if nfound == max {
                    return Ok(false);
                }
                seen = Some(k);
                if hi64(v) <= e && e <= lo64(k) {
                    if let Some(slot) = found.get_mut(nfound) {
                        *slot = (k, v);
                        nfound += 1;
                    }
                }
                Ok(true)
            })?;
            if seen.is_some_and(|k| k < f) {
                return Err(Error::Corrupt {
                    what: "btree: keys out of order",
                    block: 0,
                });
            }
            // Where the scan goes on: after the last entry visited, or at the
            // next leaf.
            let after_seen = seen.map_or(Some(f), |k| k.checked_add(1));
            from = match end {
                ScanEnd::Stopped => after_seen,
                ScanEnd::Next(next) if next <= f => {
                    return Err(Error::Corrupt {
                        what: "btree: separators out of order",
                        block: 0,
                    })
                }
                ScanEnd::Next(next) => Some(next),
                ScanEnd::End => None,
            };
            // The cursor moves past this leaf's entries only once they are
            // removed: a step that fails for want of space (and is retried
            // after a commit) must not skip them.
            let past = from.or(after_seen).unwrap_or(f);
            let mut keys = [0u128; RECLAIM_BATCH];
            let mut chunks = [0u64; RECLAIM_BATCH];
            let mut n = 0usize;
            let mut live_in: Option<((u64, u64), bool)> = None;
            for &(k, v) in found.get(..nfound).unwrap_or(&[]) {
                let range = (hi64(v), lo64(k));
                let live = match live_in {
                    Some((r, live)) if r == range => live,
                    _ => {
                        let live = self.any_snapshot_in(range.0, range.1, DELETING)?;
                        live_in = Some((range, live));
                        live
                    }
                };
                if live
                    && self
                        .first_lacking(hi64(k), range.0, range.1, DELETING)?
                        .found
                {
                    continue;
                }
                if let (Some(ks), Some(cs)) = (keys.get_mut(n), chunks.get_mut(n)) {
                    *ks = k;
                    *cs = lo64(v);
                    n += 1;
                }
            }
            if n == 0 {
                self.reclaim_cursor = past;
                continue;
            }
            let removed = self.remove_batch(TREE_SHARED, &keys, &mut chunks, n)?;
            self.sb.shared = self.sb.shared.saturating_sub(removed as u64);
            // The next step goes on at the first one the leaf had no room to lose.
            self.reclaim_cursor = match keys.get(removed).filter(|_| removed < n) {
                Some(&k) => k,
                None => past,
            };
            return Ok(removed);
        }
        Ok(0)
    }

    /// The leaf of `tree` that holds the first key >= `from`, if it holds
    /// no key below `from` and is not the root: one the reclaim may drop
    /// whole. With `common`, the epoch range its shared exceptions have in
    /// common goes there.
    fn leaf_from(
        &self,
        tree: usize,
        from: u128,
        mut common: Option<&mut CommonRange>,
    ) -> Result<Option<LeafSpan>> {
        let mut span = self.leaf_visited(tree, from, common.as_deref_mut())?;
        if let (Some((_, last)), Some(next)) = (span.keys, span.next) {
            if last < from {
                if next <= from {
                    return Err(Error::Corrupt {
                        what: "btree: separators out of order",
                        block: 0,
                    });
                }
                span = self.leaf_visited(tree, next, common)?;
            }
        }
        Ok(match span.keys {
            Some((first, _)) if first >= from && !span.root => Some(span),
            _ => None,
        })
    }

    /// The leaf of `tree` that would hold `k`; with `common`, the epoch
    /// range of its shared exceptions goes there.
    fn leaf_visited(
        &self,
        tree: usize,
        k: u128,
        common: Option<&mut CommonRange>,
    ) -> Result<LeafSpan> {
        match common {
            None => self.leaf_span(tree, k),
            Some(c) => {
                *c = CommonRange::default();
                self.leaf_span_visiting(tree, k, |leaf| {
                    if leaf.len() != 0 {
                        let (key, v) = (leaf.key(0)?, leaf.val(0)?);
                        c.range = Some((hi64(v), lo64(key)));
                        c.uniform = leaf.all_have(lo64(key), hi64(v))?;
                    }
                    Ok(())
                })
            }
        }
    }

    /// Do the shared exceptions of a leaf, whose common range is `common`,
    /// all hold epoch `e` in that range, with no snapshot in it but deleted
    /// ones? (Then none is needed any more.)
    fn only_for_deleted(&self, common: &CommonRange, e: u64) -> Result<bool> {
        match common.range {
            Some((lo, hi)) if common.uniform && lo <= e && e <= hi => {
                Ok(!self.any_snapshot_in(lo, hi, DELETING)?)
            }
            _ => Ok(false),
        }
    }

    /// Drops whole leaves of `tree`, every entry of them reclaimed: the one
    /// that starts with `first.0` and holds `first.1` entries, and the leaves
    /// after it that `accept` takes, as many as [`Store::drop_leaves`] can
    /// in one descent within `max` entries. Frees their data chunks, runs of
    /// adjacent ones over all the leaves, and the leaves' blocks with one
    /// change of their bitmap block (if one holds them all). No leaf if the
    /// tree has no internal node.
    fn drop_reclaimed_leaves<A>(
        &mut self,
        tree: usize,
        first: (u128, usize),
        max: usize,
        accept: A,
    ) -> Result<DroppedLeaves>
    where
        A: FnMut(&LeafEntries<'_>) -> Result<bool>,
    {
        // What the step may allocate is checked before it changes anything, so that it
        // never fails halfway (its chunks freed, its leaves still there): the descent's
        // shadows, and one block of deferred frees, which holds more than a leaf. While
        // chunk frees are deferred (see `Store::free_data`), one leaf per step.
        if first.1 > DF_CAPACITY {
            return Err(Error::Internal(
                "reclaim: leaf larger than a deferred-free block",
            ));
        }
        let max_leaves = if self.journal_names_chunks() {
            1
        } else {
            DROP_LEAVES
        };
        self.ensure_beside_completions(self.op_need(tree))?;
        let mut frees = QueuedFrees::new();
        // The run of adjacent chunks not queued yet: (first, count).
        let mut run = (0u64, 0u64);
        let limit = (max_leaves, max);
        let dropped =
            self.drop_leaves(tree, first, limit, &mut frees, accept, |s, frees, vals| {
                // The low halves of the values; a private value has no high half.
                for &c in vals {
                    if tree == TREE_PRIVATE && c == lo64(PRIVATE_ZEROES) {
                        continue;
                    }
                    if run.1 != 0 && run.0.checked_add(run.1) == Some(c) {
                        run.1 += 1;
                        continue;
                    }
                    if run.1 != 0 {
                        s.queue_data_run(frees, run.0, run.1)?;
                    }
                    run = (c, 1);
                }
                Ok(())
            })?;
        if run.1 != 0 {
            self.queue_data_run(&mut frees, run.0, run.1)?;
        }
        self.flush_frees(&mut frees)?;
        self.reclaimed += dropped.entries as u64;
        Ok(dropped)
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

/// The epoch range `(lo, hi)` of a leaf's first shared exception, and whether
/// every shared exception of the leaf has it (`uniform`).
#[derive(Default)]
struct CommonRange {
    range: Option<(u64, u64)>,
    uniform: bool,
}
