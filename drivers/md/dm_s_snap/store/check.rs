// SPDX-License-Identifier: GPL-2.0

//! Full consistency check of the current state (for tools and tests).

use super::error::{Error, Result};
use super::format::*;
use super::io::BlockIo;
use super::ops::{hi64, lo64, private_key, Location, DELETING, DROPPED, ID_SPACE, SNAPSHOT_FLAGS};
use super::txn::Store;
use core::fmt;

/// One inconsistency found by [`Store::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub what: &'static str,
    /// The metadata block concerned, if any.
    pub block: Option<u64>,
    /// A chunk number, epoch, count or key half concerned, if any.
    pub value: Option<u64>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)?;
        if let Some(b) = self.block {
            write!(f, " (block {b})")?;
        }
        if let Some(v) = self.value {
            write!(f, " [{v}]")?;
        }
        Ok(())
    }
}

/// A pending node of the depth-first walk.
#[derive(Clone, Copy)]
struct Frame {
    block: u64,
    level: u8,
    hi: Option<u128>,
    next: usize,
}

const EMPTY: Frame = Frame {
    block: 0,
    level: 0,
    hi: None,
    next: 0,
};

/// Counts gathered by the walk.
#[derive(Default)]
struct Counts {
    nodes: u64,
    data: u64,
    shared: u64,
    private: u64,
    /// Chunks a rollback has still to copy back.
    rollback: u64,
    live: u64,
    deleting: u64,
    dropped: u64,
}

/// Per-tree state while walking leaves in key order.
#[derive(Default)]
struct LeafState {
    prev: Option<(u128, u128)>,
}

struct Checker<'r> {
    report: &'r mut dyn FnMut(Problem),
    problems: u64,
}

impl Checker<'_> {
    fn bad(&mut self, what: &'static str, block: Option<u64>, value: Option<u64>) {
        self.problems += 1;
        (self.report)(Problem { what, block, value });
    }
}

fn mark(scratch: &mut [u8], nr: u64) -> Option<bool> {
    let byte = usize::try_from(nr / 8).ok()?;
    let p = scratch.get_mut(byte)?;
    let m = 1u8 << (nr % 8);
    let was = *p & m != 0;
    *p |= m;
    Some(was)
}

impl<I: BlockIo> Store<I> {
    /// Bytes of scratch memory [`Store::check`] needs (one bit per block).
    pub fn check_scratch_len(&self) -> usize {
        usize::try_from(self.g.nr_blocks.div_ceil(8)).unwrap_or(usize::MAX)
    }

    /// Verifies every invariant of the current state and calls `report` for
    /// each problem; returns the number of problems. `scratch` must hold
    /// [`Store::check_scratch_len`] bytes. Errors are returned only when the
    /// check cannot run (I/O error, scratch too small, plans outstanding).
    pub fn check(&self, scratch: &mut [u8], report: &mut dyn FnMut(Problem)) -> Result<u64> {
        if scratch.len() < self.check_scratch_len() {
            return Err(Error::Invalid("check scratch too small"));
        }
        if self.outstanding != 0 || self.journal.writing {
            return Err(Error::Busy);
        }
        scratch.fill(0);
        let mut ck = Checker {
            report,
            problems: 0,
        };
        for nr in 0..self.g.fixed_end {
            mark(scratch, nr);
        }
        for i in self.g.fixed_bitmaps..self.g.nr_bitmaps {
            mark(scratch, self.g.bitmap_slot(i, 0));
            mark(scratch, self.g.bitmap_slot(i, 1));
        }
        for i in 0..u64::from(self.sb.journal_blocks) {
            self.mark_block(&mut ck, scratch, self.sb.journal_start + i, "journal block");
        }
        // Chunks whose frees wait for the checkpoint, and the blocks listing them.
        let listed = self.deferred_frees(|nr, chunks| {
            self.mark_block(&mut ck, scratch, nr, "released block");
            for c in chunks {
                self.mark_data_chunk(&mut ck, scratch, c);
            }
            Ok(())
        });
        match listed {
            Ok(()) => {}
            Err(Error::Io(s)) => return Err(Error::Io(s)),
            Err(_) => ck.bad("deferred free list broken", Some(self.deferred_head), None),
        }
        let mut n = Counts::default();
        // Metadata blocks released in the running transaction.
        let mut gb = self.garbage_head;
        for _ in 0..self.garbage_count {
            match self.read_valid(gb, GARBAGE_MAGIC) {
                Ok(h) => {
                    self.mark_block(&mut ck, scratch, gb, "released block");
                    gb = rd64(&h, GB_NEXT)?;
                }
                Err(Error::Io(s)) => return Err(Error::Io(s)),
                Err(_) => {
                    ck.bad("released block list broken", Some(gb), None);
                    break;
                }
            }
        }
        for t in 0..NR_TREES {
            self.check_tree(&mut ck, scratch, t, &mut n)?;
        }
        self.check_space_map(&mut ck, scratch)?;
        let sb = &self.sb;
        if n.data != sb.data_chunks {
            ck.bad(
                "data chunk counter differs from the exceptions",
                None,
                Some(n.data),
            );
        }
        let fixed = self.g.fixed_end
            + 2 * self.g.grown_bitmaps()
            + u64::from(self.sb.journal_blocks)
            + self.deferred_blocks;
        if fixed + n.nodes != sb.meta_blocks {
            ck.bad(
                "metadata block counter differs from the btree nodes",
                None,
                Some(fixed + n.nodes),
            );
        }
        if n.shared != sb.shared {
            ck.bad("shared exception counter differs", None, Some(n.shared));
        }
        if n.private != sb.private {
            ck.bad("private exception counter differs", None, Some(n.private));
        }
        if n.live != sb.snapshots {
            ck.bad("snapshot counter differs", None, Some(n.live));
        }
        if n.rollback != sb.rollback_left {
            ck.bad(
                "rollback counter differs from its chunks",
                None,
                Some(n.rollback),
            );
        }
        // A rollback copies back from a snapshot that is not being deleted.
        if sb.rollback_epoch != 0
            && !self
                .lookup(TREE_SNAPS, sb.rollback_epoch as u128)?
                .is_some_and(|v| v & DELETING == 0)
        {
            ck.bad("rollback of no snapshot", None, Some(sb.rollback_epoch));
        }
        if n.dropped != sb.dropped {
            ck.bad("dropped snapshot counter differs", None, Some(n.dropped));
        }
        // The superblock names one of the deleted snapshots whose space is
        // being reclaimed, if there is any.
        let d = sb.deleting_epoch;
        let named = d != 0
            && self
                .lookup(TREE_SNAPS, d as u128)?
                .is_some_and(|v| v & DELETING != 0);
        if (n.deleting != 0) != named {
            ck.bad(
                "snapshot being deleted does not match the superblock",
                None,
                Some(d),
            );
        }
        Ok(ck.problems)
    }

    /// Marks metadata block `nr` used; false (and a problem) if it is
    /// outside the data area or used twice.
    fn mark_block(
        &self,
        ck: &mut Checker<'_>,
        scratch: &mut [u8],
        nr: u64,
        what: &'static str,
    ) -> bool {
        if !self.g.in_data_area(nr) {
            ck.bad(
                match what {
                    "btree node" => "btree node outside the data area",
                    "journal block" => "journal block outside the data area",
                    _ => "released block outside the data area",
                },
                None,
                Some(nr),
            );
            return false;
        }
        if mark(scratch, nr) == Some(true) {
            ck.bad("block referenced more than once", Some(nr), Some(nr));
            return false;
        }
        true
    }

    /// Marks the blocks of data chunk `c` used; false (and a problem) if it
    /// is outside the data area or any of its blocks is used twice.
    fn mark_data_chunk(&self, ck: &mut Checker<'_>, scratch: &mut [u8], c: u64) -> bool {
        if !self.g.chunk_in_data_area(c) {
            ck.bad("exception chunk outside the data area", None, Some(c));
            return false;
        }
        let first = self.g.chunk_block(c);
        let mut twice = false;
        for nr in first..first + self.g.chunk_blocks {
            twice |= mark(scratch, nr) == Some(true);
        }
        if twice {
            ck.bad("chunk referenced more than once", Some(first), Some(c));
        }
        !twice
    }

    fn check_tree(
        &self,
        ck: &mut Checker<'_>,
        scratch: &mut [u8],
        tree: usize,
        n: &mut Counts,
    ) -> Result<()> {
        let root = self.sb.roots.get(tree).copied().unwrap_or_default();
        let mut stack = [EMPTY; MAX_DEPTH];
        let mut sp = 0usize;
        let mut ls = LeafState::default();
        if root.depth == 0 || root.depth as usize > MAX_DEPTH {
            ck.bad("btree depth out of range", Some(root.block), None);
            return Ok(());
        }
        // Visit the root.
        if let Some(f) = self.visit(
            ck,
            scratch,
            tree,
            root.block,
            root.depth - 1,
            None,
            None,
            true,
            n,
            &mut ls,
        )? {
            stack[0] = f;
            sp = 1;
        }
        while let Some(&top) = sp.checked_sub(1).and_then(|i| stack.get(i)) {
            // Next child of an internal node.
            let child = {
                match self.read_node(top.block, tree, top.level) {
                    Ok((h, cnt)) if top.next < cnt => {
                        let c = self.child(&h, top.next)?;
                        let lo = self.key(&h, top.next)?;
                        let hi = if top.next + 1 < cnt {
                            Some(self.key(&h, top.next + 1)?)
                        } else {
                            top.hi
                        };
                        Some((c, lo, hi))
                    }
                    Ok(_) => None,
                    Err(Error::Io(s)) => return Err(Error::Io(s)),
                    Err(_) => None,
                }
            };
            match child {
                None => sp -= 1,
                Some((c, lo, hi)) => {
                    if let Some(f) = stack.get_mut(sp - 1) {
                        f.next += 1;
                    }
                    if let Some(f) = self.visit(
                        ck,
                        scratch,
                        tree,
                        c,
                        top.level - 1,
                        Some(lo),
                        hi,
                        false,
                        n,
                        &mut ls,
                    )? {
                        match stack.get_mut(sp) {
                            Some(slot) => {
                                *slot = f;
                                sp += 1;
                            }
                            None => ck.bad("btree deeper than the maximum", Some(c), None),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks one node; returns a frame if it is an internal node to walk.
    #[allow(clippy::too_many_arguments)]
    fn visit(
        &self,
        ck: &mut Checker<'_>,
        scratch: &mut [u8],
        tree: usize,
        nr: u64,
        level: u8,
        lo: Option<u128>,
        hi: Option<u128>,
        is_root: bool,
        n: &mut Counts,
        ls: &mut LeafState,
    ) -> Result<Option<Frame>> {
        if !self.mark_block(ck, scratch, nr, "btree node") {
            return Ok(None);
        }
        n.nodes += 1;
        let cnt = match self.read_node(nr, tree, level) {
            Ok((h, cnt)) => {
                // Padding and unused entry slots are zero.
                let f = NodeFormat::of(tree)?;
                let max = f.max_entries(level);
                let (vo, _) = f.val_off(level, cnt);
                let ve = f.vals_end(level);
                let zero =
                    |a: usize, b: usize| h.get(a..b).is_some_and(|r| r.iter().all(|&x| x == 0));
                if !zero(28, 32)
                    || !zero(f.key_off(cnt), f.key_off(max))
                    || !zero(vo, ve)
                    || !zero(ve, self.g.block_size)
                {
                    ck.bad("btree node: unused space not zero", Some(nr), None);
                }
                drop(h);
                cnt
            }
            Err(Error::Io(s)) => return Err(Error::Io(s)),
            Err(Error::Corrupt { what, block }) => {
                ck.bad(what, Some(block), None);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if is_root {
            if level > 0 && cnt < 2 {
                ck.bad("btree root with a single child", Some(nr), None);
            }
        } else if cnt == 0 || (hi.is_some() && cnt < NodeFormat::of(tree)?.min_entries(level)) {
            // The last node of each level (no upper bound) may hold fewer:
            // appends split it where they insert.
            ck.bad("btree node under-full", Some(nr), Some(cnt as u64));
        }
        // Keys: sorted, within bounds, first key equals the separator.
        let mut i = 0usize;
        let mut prev: Option<u128> = None;
        while i < cnt {
            let mut buf = [(0u128, 0u128); 32];
            let take = (cnt - i).min(buf.len());
            {
                let (h, _) = self.read_node(nr, tree, level)?;
                for (j, slot) in buf.iter_mut().enumerate().take(take) {
                    let k = self.key(&h, i + j)?;
                    let v = if level == 0 {
                        self.leaf_val(&h, i + j)?
                    } else {
                        self.child(&h, i + j)? as u128
                    };
                    *slot = (k, v);
                }
            }
            for (j, &(k, v)) in buf.iter().enumerate().take(take) {
                if let Some(p) = prev {
                    if k <= p {
                        ck.bad("btree keys not in ascending order", Some(nr), None);
                    }
                }
                if i + j == 0 {
                    if let Some(l) = lo {
                        if k != l {
                            ck.bad(
                                "btree separator differs from the child's first key",
                                Some(nr),
                                None,
                            );
                        }
                    }
                }
                if lo.is_some_and(|l| k < l) || hi.is_some_and(|h| k >= h) {
                    ck.bad("btree key outside its parent's range", Some(nr), None);
                }
                prev = Some(k);
                if level == 0 {
                    self.check_entry(ck, scratch, tree, k, v, n, ls)?;
                }
            }
            i += take;
        }
        if level == 0 {
            return Ok(None);
        }
        Ok(Some(Frame {
            block: nr,
            level,
            hi,
            next: 0,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn check_entry(
        &self,
        ck: &mut Checker<'_>,
        scratch: &mut [u8],
        tree: usize,
        k: u128,
        v: u128,
        n: &mut Counts,
        ls: &mut LeafState,
    ) -> Result<()> {
        let sb = &self.sb;
        match tree {
            TREE_SHARED => {
                n.shared += 1;
                let (c, hi, lo, cow) = (hi64(k), lo64(k), hi64(v), lo64(v));
                if lo == 0 || lo > hi || hi > sb.last_epoch {
                    ck.bad("shared exception: epoch range invalid", None, Some(c));
                }
                if let Some((pk, _)) = ls.prev {
                    if hi64(pk) == c && lo64(pk) >= lo {
                        ck.bad("shared exceptions of a chunk overlap", None, Some(c));
                    }
                }
                ls.prev = Some((k, v));
                if self.mark_data_chunk(ck, scratch, cow) {
                    n.data += 1;
                }
                // A snapshot deleted but not reclaimed yet still counts: the
                // reclaim frees its shared exceptions.
                if !self.first_lacking_any(c, lo, hi)? {
                    ck.bad("shared exception needed by no live snapshot", None, Some(c));
                }
            }
            TREE_PRIVATE if hi64(k) == ROLLBACK_KEY_EPOCH => {
                n.rollback += 1;
                let c = lo64(k);
                if sb.rollback_epoch == 0 {
                    ck.bad("chunk to roll back without a rollback", None, Some(c));
                } else if self.epoch_lookup(sb.rollback_epoch, c)? == Location::Origin {
                    ck.bad(
                        "chunk to roll back where its snapshot reads the origin",
                        None,
                        Some(c),
                    );
                }
            }
            TREE_PRIVATE => {
                n.private += 1;
                let e = hi64(k);
                // Live, or deleted and waiting for the reclaim.
                if self.lookup(TREE_SNAPS, e as u128)?.is_none() {
                    ck.bad("private exception of no live snapshot", None, Some(e));
                }
                if v == PRIVATE_ZEROES {
                    // Names no chunk; a module without the feature would read COW chunk 0.
                    if !sb.zeroes {
                        ck.bad(
                            "zero-reading private exception without its feature flag",
                            None,
                            Some(lo64(k)),
                        );
                    }
                } else if self.mark_data_chunk(ck, scratch, lo64(v)) {
                    n.data += 1;
                }
            }
            _ => {
                if k < ID_SPACE {
                    let e = lo64(k);
                    let flag = hi64(v);
                    let id = lo64(v);
                    if e == 0 || e > sb.last_epoch {
                        ck.bad("snapshot epoch out of range", None, Some(e));
                    }
                    if flag > 2 || id > u32::MAX as u64 {
                        ck.bad("snapshot table: bad epoch entry", None, Some(e));
                    }
                    let back = self.lookup(TREE_SNAPS, ID_SPACE | id as u128)?;
                    let matches = if v & DELETING != 0 {
                        n.deleting += 1;
                        // A newer snapshot may have taken the id of one
                        // that waits for the reclaim.
                        back.is_some_and(|b| b == DELETING | e as u128 || lo64(b) > e)
                    } else if v & DROPPED != 0 {
                        n.dropped += 1;
                        back == Some(DROPPED | e as u128)
                    } else {
                        n.live += 1;
                        back == Some(e as u128)
                    };
                    if !matches {
                        ck.bad("snapshot table: id index does not match", None, Some(id));
                    }
                } else {
                    let id = lo64(k);
                    if hi64(k) != 1 || id > u32::MAX as u64 {
                        ck.bad("snapshot table: bad id entry", None, Some(id));
                    }
                    let e = lo64(v);
                    let back = self.lookup(TREE_SNAPS, e as u128)?;
                    if hi64(v) > 2 || back != Some((v & SNAPSHOT_FLAGS) | id as u128) {
                        ck.bad("snapshot table: epoch index does not match", None, Some(id));
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a snapshot with epoch in `lo..=hi`, live or deleted and not
    /// reclaimed yet, has no private exception of chunk `c`.
    fn first_lacking_any(&self, c: u64, lo: u64, hi: u64) -> Result<bool> {
        // Like the allocation-path search, without the counter bound error
        // turning into a hard failure.
        let mut from = lo;
        let mut guard = 0u64;
        let limit = self.table_len_bound();
        while from <= hi && guard <= limit {
            guard += 1;
            let (k, _) = match self.ceil(TREE_SNAPS, from as u128)? {
                Some(x) => x,
                None => break,
            };
            if k >= ID_SPACE || lo64(k) > hi {
                break;
            }
            let e = lo64(k);
            if self.lookup(TREE_PRIVATE, private_key(e, c))?.is_none() {
                return Ok(true);
            }
            from = match e.checked_add(1) {
                Some(x) => x,
                None => break,
            };
        }
        Ok(false)
    }

    fn check_space_map(&self, ck: &mut Checker<'_>, scratch: &mut [u8]) -> Result<()> {
        let g = self.g;
        // Selector bits past the last bitmap block must be zero.
        {
            let h = self.io.read(self.selector_block())?;
            let first = SB_SELECTOR + usize::try_from(g.nr_bitmaps / 8).unwrap_or(0);
            let mut ok = true;
            if g.nr_bitmaps % 8 != 0 {
                let b = rd8(&h, first)?;
                if b >> (g.nr_bitmaps % 8) != 0 {
                    ok = false;
                }
            }
            let start = if g.nr_bitmaps % 8 != 0 {
                first + 1
            } else {
                first
            };
            if h.get(start..).is_some_and(|r| r.iter().any(|&x| x != 0)) {
                ok = false;
            }
            if !ok {
                ck.bad(
                    "superblock: selector bits set past the bitmap",
                    Some(self.sb_slot),
                    None,
                );
            }
        }
        {
            // Reserved superblock bytes are zero.
            let h = self.io.read(self.sb_slot)?;
            let mut ok = true;
            for t in 0..NR_TREES {
                let off = SB_ROOTS + t * SB_ROOT_SIZE + 9;
                ok &= h
                    .get(off..off + 7)
                    .is_some_and(|r| r.iter().all(|&x| x == 0));
            }
            let end = SB_ROLLBACK_LEFT + 8;
            ok &= h
                .get(end..SB_JOURNAL_START)
                .is_some_and(|r| r.iter().all(|&x| x == 0));
            ok &= h
                .get(SB_FIXED_BITMAPS + 4..SB_DROPPED)
                .is_some_and(|r| r.iter().all(|&x| x == 0));
            let end = SB_DROPPED + 8;
            ok &= h
                .get(end..SB_SELECTOR)
                .is_some_and(|r| r.iter().all(|&x| x == 0));
            if !ok {
                ck.bad(
                    "superblock: reserved bytes not zero",
                    Some(self.sb_slot),
                    None,
                );
            }
        }
        for i in 0..g.nr_bitmaps {
            let (cur, com) = match self.bitmap_versions(i) {
                Ok(x) => x,
                Err(Error::Io(s)) => return Err(Error::Io(s)),
                Err(Error::Corrupt { what, block }) => {
                    ck.bad(what, Some(block), None);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if com != cur {
                if let Err(Error::Corrupt { what, block }) = self.read_valid(com, BM_MAGIC) {
                    ck.bad(what, Some(block), None);
                }
            }
            let h = self.read_valid(cur, BM_MAGIC)?;
            if rd32(&h, BM_INDEX + 4)? != 0 {
                ck.bad("bitmap: reserved bytes not zero", Some(cur), None);
            }
            let first = i * g.bits_per_bitmap;
            let nbits = (g.nr_blocks - first).min(g.bits_per_bitmap);
            let words = g.bits_per_bitmap / 64;
            for w in 0..words {
                let off = BM_BITS + (w as usize) * 8;
                let bits = rd64(&h, off)?;
                let base = first + w * 64;
                let mut refd = 0u64;
                for b in 0..64u64 {
                    let c = base + b;
                    if w * 64 + b >= nbits {
                        break;
                    }
                    let byte = usize::try_from(c / 8).unwrap_or(usize::MAX);
                    if scratch.get(byte).is_some_and(|x| x & (1 << (c % 8)) != 0) {
                        refd |= 1 << b;
                    }
                }
                let valid = if (w + 1) * 64 <= nbits {
                    u64::MAX
                } else if w * 64 >= nbits {
                    0
                } else {
                    (1u64 << (nbits - w * 64)) - 1
                };
                if bits & !valid != 0 {
                    ck.bad("space map: bits set past the device end", Some(cur), None);
                }
                let diff = (bits & valid) ^ refd;
                if diff != 0 {
                    for b in 0..64u64 {
                        if diff & (1 << b) != 0 {
                            if bits & (1 << b) != 0 {
                                ck.bad(
                                    "space map: block allocated but not referenced (leak)",
                                    None,
                                    Some(base + b),
                                );
                            } else {
                                ck.bad(
                                    "space map: block referenced but free",
                                    None,
                                    Some(base + b),
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Kind of a live metadata block, for [`Store::visit_metadata`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKind {
    /// The newest valid superblock.
    Superblock,
    /// The current version of a bitmap block.
    Bitmap,
    /// A node of the shared exception tree.
    SharedNode,
    /// A node of the private exception tree.
    PrivateNode,
    /// A node of the snapshot table.
    SnapshotNode,
}

impl<I: BlockIo> Store<I> {
    /// Calls `f(block, kind, level)` for every live metadata block of the
    /// current state: the superblock, the current bitmap versions and every
    /// reachable btree node (level 0 = leaf). Unreadable nodes end the walk
    /// of their subtree with an error.
    pub fn visit_metadata(&self, f: &mut dyn FnMut(u64, MetaKind, u8)) -> Result<()> {
        f(self.sb_slot, MetaKind::Superblock, 0);
        for i in 0..self.g.nr_bitmaps {
            let (cur, _) = self.bitmap_versions(i)?;
            f(cur, MetaKind::Bitmap, 0);
        }
        for (t, kind) in [
            (TREE_SHARED, MetaKind::SharedNode),
            (TREE_PRIVATE, MetaKind::PrivateNode),
            (TREE_SNAPS, MetaKind::SnapshotNode),
        ] {
            let root = self.sb.roots.get(t).copied().unwrap_or_default();
            if root.depth == 0 || root.depth as usize > MAX_DEPTH {
                return Err(Error::Corrupt {
                    what: "btree depth out of range",
                    block: root.block,
                });
            }
            let mut stack = [(0u64, 0u8, 0usize); MAX_DEPTH];
            stack[0] = (root.block, root.depth - 1, 0);
            f(root.block, kind, root.depth - 1);
            let mut sp = 1usize;
            // Each node is entered once per parent entry; the walk is
            // bounded by the depth limit and the entry counts.
            while let Some(&(nr, level, next)) = sp.checked_sub(1).and_then(|i| stack.get(i)) {
                if level == 0 {
                    sp -= 1;
                    continue;
                }
                let child = {
                    let (h, n) = self.read_node(nr, t, level)?;
                    if next < n {
                        Some(self.child(&h, next)?)
                    } else {
                        None
                    }
                };
                match child {
                    None => sp -= 1,
                    Some(c) => {
                        if let Some(top) = stack.get_mut(sp - 1) {
                            top.2 += 1;
                        }
                        let slot = stack.get_mut(sp).ok_or(Error::Corrupt {
                            what: "btree deeper than the maximum",
                            block: c,
                        })?;
                        *slot = (c, level - 1, 0);
                        sp += 1;
                        f(c, kind, level - 1);
                    }
                }
            }
        }
        Ok(())
    }
}
