// SPDX-License-Identifier: GPL-2.0

//! Copy-on-write B+tree with u128 keys and u128 values.
//!
//! * Leaves hold (key, value) pairs; internal nodes hold (key, child) pairs
//!   where the key is exactly the smallest key of the child's subtree.
//! * All leaves are at the same depth; non-root nodes hold at least
//!   `max / 2` entries; an internal root holds at least two.
//! * Insert splits full nodes on the way down, remove refills minimal nodes
//!   on the way down (borrow from or merge with a sibling), so every change
//!   is a single descent. A run of keys of one leaf is removed in one
//!   descent too ([`Store::remove_in_leaf`]), as far as the leaf keeps its
//!   minimum; refilling borrows half the difference from a sibling, so the
//!   next run finds room again. Nodes written by an earlier transaction are
//!   shadowed (copied to a new chunk, the old one freed after commit).
//! * Depth is bounded by [`MAX_DEPTH`]; every loop is bounded by it.
//! * At most three node handles are held at once, always for distinct block
//!   numbers (checked, so corrupt pointers cannot alias handles).
//!
//! u128 values are only compared, shifted and masked (no u128 division,
//! which the kernel does not provide).

use super::error::{Error, Result};
use super::format::*;
use super::io::{BlockHandle, BlockIo};
use super::space_map::QueuedFrees;
use super::txn::{Store, H};

/// Where a leaf scan ended.
pub(crate) enum ScanEnd {
    /// The callback asked to stop.
    Stopped,
    /// The leaf ended; the next leaf starts with this key.
    Next(u128),
    /// No more entries.
    End,
}

/// Where a leaf lies in the key space ([`Store::leaf_span`]).
pub(crate) struct LeafSpan {
    /// Its first and last key; `None` if it is empty (an empty root).
    pub(crate) keys: Option<(u128, u128)>,
    /// Its number of entries.
    pub(crate) len: usize,
    /// The first key of the next leaf, if any.
    pub(crate) next: Option<u128>,
    /// It is the root: the tree has no other node.
    pub(crate) root: bool,
}

/// Values [`Store::drop_leaves`] hands to its caller at a time: a quarter
/// of a leaf or more (up to 270 entries), in 512 bytes of stack.
pub(crate) const DROP_BATCH: usize = 64;

/// Leaves [`Store::drop_leaves`] drops at most in one descent.
pub(crate) const DROP_LEAVES: usize = 8;

fn corrupt(what: &'static str, block: u64) -> Error {
    Error::Corrupt { what, block }
}

/// The entries of a leaf, read with its format looked up once for all of
/// them: scans and reclaim steps read every entry of a leaf.
pub(crate) struct LeafEntries<'b> {
    b: &'b [u8],
    f: &'static NodeFormat,
    n: usize,
}

impl<'b> LeafEntries<'b> {
    /// The `n` entries of leaf `b` (as [`Store::read_node`] counted them).
    fn of(b: &'b [u8], n: usize) -> Result<Self> {
        Ok(LeafEntries {
            b,
            f: NodeFormat::of_node(b)?,
            n,
        })
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Key `i`.
    #[inline]
    pub(crate) fn key(&self, i: usize) -> Result<u128> {
        self.f.key.read(self.b, self.f.key_off(i))
    }

    /// Value `i`.
    #[inline]
    pub(crate) fn val(&self, i: usize) -> Result<u128> {
        self.f.val.read(self.b, self.f.val_off(0, i).0)
    }

    /// Reads the low halves of the values from `from` on into `out`, one per element.
    pub(crate) fn vals_lo(&self, from: usize, out: &mut [u64]) -> Result<()> {
        if from.checked_add(out.len()).map_or(true, |end| end > self.n) {
            return Err(Error::Internal("btree: values past a leaf's entries"));
        }
        let (base, stride) = self.f.val_off(0, from);
        for (j, v) in out.iter_mut().enumerate() {
            *v = self.f.val.read_lo(self.b, base + stride * j)?;
        }
        Ok(())
    }

    /// True if every entry has `key_lo` as the low half of its key and `val_hi` as the high
    /// half of its value (in the shared tree: the same epoch range), and there is one.
    pub(crate) fn all_have(&self, key_lo: u64, val_hi: u64) -> Result<bool> {
        let (key_base, key_stride) = (self.f.key_off(0), self.f.key.size());
        let (val_base, val_stride) = self.f.val_off(0, 0);
        for i in 0..self.n {
            let key = self.f.key.read_lo(self.b, key_base + key_stride * i)?;
            let val = self.f.val.read_hi(self.b, val_base + val_stride * i)?;
            if key != key_lo || val != val_hi {
                return Ok(false);
            }
        }
        Ok(self.n != 0)
    }
}

/// What [`Store::drop_leaves`] dropped.
pub(crate) struct DroppedLeaves {
    /// Leaves dropped.
    pub(crate) leaves: usize,
    /// Entries they held.
    pub(crate) entries: usize,
    /// Where the keys after them start: the first key of the leaf that
    /// followed the last of them under their parent, or else one past the
    /// last key they held.
    pub(crate) after: u128,
}

/// The internal nodes a descent went through, root first: the node, the
/// index of the entry it followed and the node's level.
#[derive(Default)]
struct Path {
    nodes: [(u64, usize, u8); MAX_DEPTH],
    len: usize,
}

impl Path {
    fn push(&mut self, nr: u64, idx: usize, level: u8) -> Result<()> {
        let slot = self
            .nodes
            .get_mut(self.len)
            .ok_or(corrupt("btree: deeper than the maximum", nr))?;
        *slot = (nr, idx, level);
        self.len += 1;
        Ok(())
    }

    fn nodes(&self) -> &[(u64, usize, u8)] {
        self.nodes.get(..self.len).unwrap_or(&[])
    }
}

impl<I: BlockIo> Store<I> {
    /// Reads and validates a node of `tree` at `level`; returns the handle
    /// and the number of entries.
    pub(crate) fn read_node(&self, nr: u64, tree: usize, level: u8) -> Result<(H<'_, I>, usize)> {
        if !self.g.in_data_area(nr) {
            return Err(corrupt("btree: pointer outside the data area", nr));
        }
        let h = self.read_valid(nr, NODE_MAGIC)?;
        if rd8(&h, NODE_TREE)? as usize != tree + 1 {
            return Err(corrupt("btree node: belongs to another tree", nr));
        }
        if rd8(&h, NODE_LEVEL)? != level {
            return Err(corrupt("btree node: wrong level", nr));
        }
        let n = rd16(&h, NODE_NR)? as usize;
        if n > NodeFormat::of(tree)?.max_entries(level) {
            return Err(corrupt("btree node: too many entries", nr));
        }
        if level > 0 && n == 0 {
            return Err(corrupt("btree node: empty internal node", nr));
        }
        Ok((h, n))
    }

    /// Reads a node that this transaction has already shadowed.
    fn write_node(&self, nr: u64, tree: usize, level: u8) -> Result<(H<'_, I>, usize)> {
        let (h, n) = self.read_node(nr, tree, level)?;
        if rd64(&h, OFF_TXID)? != self.cur {
            return Err(Error::Internal("btree: modifying an unshadowed node"));
        }
        Ok((h, n))
    }

    /// Key `i` of a node.
    #[inline]
    pub(crate) fn key(&self, b: &[u8], i: usize) -> Result<u128> {
        let f = NodeFormat::of_node(b)?;
        f.key.read(b, f.key_off(i))
    }

    /// Writes key `i` of a node.
    fn set_key(&self, b: &mut [u8], i: usize, k: u128) -> Result<()> {
        let f = NodeFormat::of_node(b)?;
        f.key.write(b, f.key_off(i), k)
    }

    /// Value `i` of a leaf.
    #[inline]
    pub(crate) fn leaf_val(&self, b: &[u8], i: usize) -> Result<u128> {
        let f = NodeFormat::of_node(b)?;
        f.val.read(b, f.val_off(0, i).0)
    }

    /// Writes value `i` of a leaf.
    fn set_leaf_val(&self, b: &mut [u8], i: usize, v: u128) -> Result<()> {
        let f = NodeFormat::of_node(b)?;
        f.val.write(b, f.val_off(0, i).0, v)
    }

    /// Child pointer `i` of an internal node.
    #[inline]
    pub(crate) fn child(&self, b: &[u8], i: usize) -> Result<u64> {
        let f = NodeFormat::of_node(b)?;
        rd64(b, f.val_off(1, i).0)
    }

    /// Index of the last key <= k, None if k < key 0 (or no keys).
    pub(crate) fn search_le(&self, b: &[u8], n: usize, k: u128) -> Result<Option<usize>> {
        // Invariant: keys[..lo] <= k, keys[hi..] > k (if sorted).
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(b, mid)? <= k {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo.checked_sub(1))
    }

    /// Index of the first key >= k (n if none).
    pub(crate) fn search_ge(&self, b: &[u8], n: usize, k: u128) -> Result<usize> {
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.key(b, mid)? < k {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    fn root(&self, tree: usize) -> Result<Root> {
        self.sb
            .roots
            .get(tree)
            .copied()
            .ok_or(Error::Internal("bad tree id"))
    }

    /// Looks up `k`; returns the value and the txid of its leaf.
    pub(crate) fn lookup_tx(&self, tree: usize, k: u128) -> Result<Option<(u128, u64)>> {
        let root = self.root(tree)?;
        let mut nr = root.block;
        let mut level = root.depth.wrapping_sub(1);
        for _ in 0..MAX_DEPTH {
            let (h, n) = self.read_node(nr, tree, level)?;
            if level == 0 {
                let i = self.search_ge(&h, n, k)?;
                if i < n && self.key(&h, i)? == k {
                    return Ok(Some((self.leaf_val(&h, i)?, rd64(&h, OFF_TXID)?)));
                }
                return Ok(None);
            }
            let idx = self.search_le(&h, n, k)?.unwrap_or(0);
            nr = self.child(&h, idx)?;
            level -= 1;
        }
        Err(corrupt("btree: deeper than the maximum", root.block))
    }

    /// Looks up `k`.
    pub(crate) fn lookup(&self, tree: usize, k: u128) -> Result<Option<u128>> {
        Ok(self.lookup_tx(tree, k)?.map(|(v, _)| v))
    }

    /// Largest entry with key <= k, with the txid of its leaf.
    pub(crate) fn floor_tx(&self, tree: usize, k: u128) -> Result<Option<(u128, u128, u64)>> {
        let root = self.root(tree)?;
        let mut nr = root.block;
        let mut level = root.depth.wrapping_sub(1);
        for _ in 0..MAX_DEPTH {
            let (h, n) = self.read_node(nr, tree, level)?;
            let idx = match self.search_le(&h, n, k)? {
                Some(i) => i,
                None => return Ok(None),
            };
            if level == 0 {
                let key = self.key(&h, idx)?;
                return Ok(Some((key, self.leaf_val(&h, idx)?, rd64(&h, OFF_TXID)?)));
            }
            nr = self.child(&h, idx)?;
            level -= 1;
        }
        Err(corrupt("btree: deeper than the maximum", root.block))
    }

    /// Smallest entry with key >= k.
    pub(crate) fn ceil(&self, tree: usize, k: u128) -> Result<Option<(u128, u128)>> {
        let mut found = None;
        let end = self.scan_leaf(tree, k, |key, v| {
            found = Some((key, v));
            Ok(false)
        })?;
        match end {
            ScanEnd::Stopped => {
                let r = found.ok_or(Error::Internal("scan result"))?;
                if r.0 < k {
                    return Err(corrupt("btree: keys out of order", 0));
                }
                Ok(Some(r))
            }
            ScanEnd::Next(next) => {
                if next <= k {
                    return Err(corrupt("btree: separators out of order", 0));
                }
                let v = self
                    .lookup(tree, next)?
                    .ok_or(corrupt("btree: separator is not a key", 0))?;
                Ok(Some((next, v)))
            }
            ScanEnd::End => Ok(None),
        }
    }

    /// Reads the leaf that would hold `k`: its handle, its number of
    /// entries and the first key of the next leaf, if any.
    fn find_leaf(&self, tree: usize, k: u128) -> Result<(H<'_, I>, usize, Option<u128>)> {
        let root = self.root(tree)?;
        let mut nr = root.block;
        let mut level = root.depth.wrapping_sub(1);
        let mut next: Option<u128> = None;
        for _ in 0..MAX_DEPTH {
            let (h, n) = self.read_node(nr, tree, level)?;
            if level == 0 {
                return Ok((h, n, next));
            }
            let idx = self.search_le(&h, n, k)?.unwrap_or(0);
            if idx + 1 < n {
                next = Some(self.key(&h, idx + 1)?);
            }
            nr = self.child(&h, idx)?;
            level -= 1;
        }
        Err(corrupt("btree: deeper than the maximum", root.block))
    }

    /// Visits the entries with key >= `from` in the leaf that would hold
    /// `from`, calling `f(key, value)` until it returns `false`.
    pub(crate) fn scan_leaf<F>(&self, tree: usize, from: u128, mut f: F) -> Result<ScanEnd>
    where
        F: FnMut(u128, u128) -> Result<bool>,
    {
        let (h, n, next) = self.find_leaf(tree, from)?;
        let mut i = self.search_ge(&h, n, from)?;
        let leaf = LeafEntries::of(&h, n)?;
        while i < n {
            if !f(leaf.key(i)?, leaf.val(i)?)? {
                return Ok(ScanEnd::Stopped);
            }
            i += 1;
        }
        Ok(match next {
            Some(k) => ScanEnd::Next(k),
            None => ScanEnd::End,
        })
    }

    /// Where the leaf that would hold `k` lies in the key space.
    pub(crate) fn leaf_span(&self, tree: usize, k: u128) -> Result<LeafSpan> {
        self.leaf_span_visiting(tree, k, |_| Ok(()))
    }

    /// Like [`Store::leaf_span`], calling `visit` with the leaf's entries: a caller that
    /// decides on the whole leaf reads it in the same look-up.
    pub(crate) fn leaf_span_visiting<F>(&self, tree: usize, k: u128, visit: F) -> Result<LeafSpan>
    where
        F: FnOnce(&LeafEntries<'_>) -> Result<()>,
    {
        let (h, n, next) = self.find_leaf(tree, k)?;
        let keys = match n.checked_sub(1) {
            Some(last) => Some((self.key(&h, 0)?, self.key(&h, last)?)),
            None => None,
        };
        visit(&LeafEntries::of(&h, n)?)?;
        Ok(LeafSpan {
            keys,
            len: n,
            next,
            root: self.root(tree)?.depth == 1,
        })
    }

    /// Returns a writable version of node `nr`, copying it if an earlier
    /// transaction wrote it.
    fn shadow(&mut self, nr: u64, tree: usize, level: u8) -> Result<u64> {
        let txid = {
            let (h, _) = self.read_node(nr, tree, level)?;
            rd64(&h, OFF_TXID)?
        };
        if txid == self.cur {
            return Ok(nr);
        }
        let new = self.alloc_meta()?;
        if new == nr {
            return Err(corrupt("space map: live node marked free", nr));
        }
        {
            let (old, _) = self.read_node(nr, tree, level)?;
            let mut h = self.io.new_block(new)?;
            if h.len() != self.g.block_size {
                return Err(Error::Io("block handle of wrong size"));
            }
            h.copy_from_slice(&old);
            drop(old);
            wr64(&mut h, OFF_BLOCKNR, new)?;
            wr64(&mut h, OFF_TXID, self.cur)?;
            seal(&self.io, &mut h)?;
            h.set_verified();
            h.mark_dirty();
        }
        self.free_meta(nr, txid)?;
        Ok(new)
    }

    /// Allocates and initializes a node holding the single entry (k0, v0).
    fn new_node(&mut self, tree: usize, level: u8, k0: u128, v0: u128) -> Result<u64> {
        let nr = self.alloc_meta()?;
        let mut h = new_block_with_header(&self.io, self.g.block_size, nr, NODE_MAGIC, self.cur)?;
        wr8(&mut h, NODE_TREE, tree as u8 + 1)?;
        wr8(&mut h, NODE_LEVEL, level)?;
        self.node_insert(&mut h, level, 0, 0, k0, v0)?;
        self.finish(&mut h)?;
        Ok(nr)
    }

    fn set_nr(b: &mut [u8], n: usize) -> Result<()> {
        wr16(
            b,
            NODE_NR,
            u16::try_from(n).map_err(|_| Error::Internal("entry count"))?,
        )
    }

    fn finish(&self, h: &mut H<'_, I>) -> Result<()> {
        seal(&self.io, h)?;
        h.set_verified();
        h.mark_dirty();
        Ok(())
    }

    /// Inserts entry (k, v) at position `pos` of a node holding `n` entries.
    fn node_insert(
        &self,
        b: &mut [u8],
        level: u8,
        n: usize,
        pos: usize,
        k: u128,
        v: u128,
    ) -> Result<()> {
        let f = NodeFormat::of_node(b)?;
        if n >= f.max_entries(level) || pos > n {
            return Err(Error::Internal("btree: insert into full node"));
        }
        // Checked before anything moves: a failed write leaves the node as it was.
        if !f.key.fits(k) || (level == 0 && !f.val.fits(v)) {
            return Err(Error::Limit("value too large for its on-disk field"));
        }
        let (vo, vs) = f.val_off(level, pos);
        let ks = f.key.size();
        move_bytes(b, f.key_off(pos), ks * (n - pos), f.key_off(pos + 1))?;
        move_bytes(b, vo, vs * (n - pos), vo + vs)?;
        f.key.write(b, f.key_off(pos), k)?;
        if level == 0 {
            f.val.write(b, vo, v)?;
        } else {
            wr64(b, vo, v as u64)?;
        }
        Self::set_nr(b, n + 1)
    }

    /// Removes entry `pos` of a node holding `n` entries.
    fn node_remove(&self, b: &mut [u8], level: u8, n: usize, pos: usize) -> Result<()> {
        self.node_remove_range(b, level, n, pos, 1)
    }

    /// Removes the `cnt` entries from `pos` of a node holding `n` entries.
    fn node_remove_range(
        &self,
        b: &mut [u8],
        level: u8,
        n: usize,
        pos: usize,
        cnt: usize,
    ) -> Result<()> {
        let end = pos.checked_add(cnt).filter(|&e| e <= n && cnt != 0);
        let end = end.ok_or(Error::Internal("btree: remove past end"))?;
        self.shift_entries(b, level, end, n - end, pos)?;
        self.zero_entries(b, n - cnt, n, level)?;
        Self::set_nr(b, n - cnt)
    }

    /// Value of entry `i` (child pointer widened for internal nodes).
    fn entry_val(&self, b: &[u8], level: u8, i: usize) -> Result<u128> {
        if level == 0 {
            self.leaf_val(b, i)
        } else {
            Ok(self.child(b, i)? as u128)
        }
    }

    /// Copies `cnt` entries from `src[sp..]` to `dst[dp..]` (same level).
    fn copy_entries(
        &self,
        dst: &mut [u8],
        dp: usize,
        src: &[u8],
        sp: usize,
        cnt: usize,
        level: u8,
    ) -> Result<()> {
        let f = NodeFormat::of_node(src)?;
        if NodeFormat::of_node(dst)? != f {
            return Err(Error::Internal("btree: copying entries between trees"));
        }
        copy_bytes(dst, f.key_off(dp), src, f.key_off(sp), f.key.size() * cnt)?;
        let (dvo, vs) = f.val_off(level, dp);
        let (svo, _) = f.val_off(level, sp);
        copy_bytes(dst, dvo, src, svo, vs * cnt)
    }

    /// Zeroes entries `from..to` (unused slots stay zero).
    fn zero_entries(&self, b: &mut [u8], from: usize, to: usize, level: u8) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        let f = NodeFormat::of_node(b)?;
        zero_bytes(b, f.key_off(from), f.key.size() * (to - from))?;
        let (vo, vs) = f.val_off(level, from);
        zero_bytes(b, vo, vs * (to - from))
    }

    /// Splits full child `child` (entry `pidx` of `parent`); returns the new
    /// right sibling and its first key.
    fn split(
        &mut self,
        tree: usize,
        parent: u64,
        pidx: usize,
        child: u64,
        level: u8,
        appends: bool,
    ) -> Result<(u64, u128)> {
        let (keep, sep, v0) = {
            let (c, n) = self.write_node(child, tree, level)?;
            if n < 2 {
                return Err(Error::Internal("btree: splitting a tiny node"));
            }
            // An insert past the last key of the tree (origin writes in
            // ascending chunk order) leaves the child full and starts the new
            // last node, so that such a tree fills its nodes; any other
            // insert splits in the middle.
            let keep = if appends { n - 1 } else { n - n / 2 };
            (keep, self.key(&c, keep)?, self.entry_val(&c, level, keep)?)
        };
        let sib = self.new_node(tree, level, sep, v0)?;
        if sib == child || sib == parent {
            return Err(corrupt("space map: live node marked free", sib));
        }
        {
            let (mut c, n) = self.write_node(child, tree, level)?;
            let (mut s, _) = self.write_node(sib, tree, level)?;
            let moved = n - keep;
            self.copy_entries(&mut s, 0, &c, keep, moved, level)?;
            Self::set_nr(&mut s, moved)?;
            self.zero_entries(&mut c, keep, n, level)?;
            Self::set_nr(&mut c, keep)?;
            self.finish(&mut c)?;
            self.finish(&mut s)?;
        }
        let (mut p, pn) = self.write_node(parent, tree, level + 1)?;
        self.node_insert(&mut p, level + 1, pn, pidx + 1, sep, sib as u128)?;
        self.finish(&mut p)?;
        Ok((sib, sep))
    }

    /// Shadows the root and returns it.
    fn shadow_root(&mut self, tree: usize) -> Result<Root> {
        let root = self.root(tree)?;
        if root.depth == 0 || root.depth as usize > MAX_DEPTH {
            return Err(corrupt("btree: depth out of range", root.block));
        }
        let nb = self.shadow(root.block, tree, root.depth - 1)?;
        let r = Root {
            block: nb,
            depth: root.depth,
        };
        if let Some(x) = self.sb.roots.get_mut(tree) {
            *x = r;
        }
        Ok(r)
    }

    /// Updates child pointer `idx` of `parent` if the child moved.
    fn repoint(
        &mut self,
        tree: usize,
        parent: u64,
        level: u8,
        idx: usize,
        old: u64,
        new: u64,
    ) -> Result<()> {
        if old == new {
            return Ok(());
        }
        if new == parent {
            return Err(corrupt("btree: node is its own child", parent));
        }
        let (mut p, _) = self.write_node(parent, tree, level)?;
        let off = NodeFormat::of(tree)?.val_off(level, idx).0;
        wr64(&mut p, off, new)?;
        self.finish(&mut p)
    }

    /// Inserts or replaces; returns the old value.
    pub(crate) fn insert(&mut self, tree: usize, k: u128, v: u128) -> Result<Option<u128>> {
        let f = NodeFormat::of(tree)?;
        if !f.key.fits(k) || !f.val.fits(v) {
            return Err(Error::Limit("value too large for its on-disk field"));
        }
        self.ensure(self.op_need(tree))?;
        self.touch();
        let mut root = self.shadow_root(tree)?;
        let rn = {
            let (_, n) = self.read_node(root.block, tree, root.depth - 1)?;
            n
        };
        if rn >= f.max_entries(root.depth - 1) {
            if root.depth as usize >= MAX_DEPTH {
                return Err(Error::Limit("btree depth"));
            }
            let (k0, appends) = {
                let (h, n) = self.read_node(root.block, tree, root.depth - 1)?;
                (self.key(&h, 0)?, k > self.key(&h, n - 1)?)
            };
            let nr = self.new_node(tree, root.depth, k0, root.block as u128)?;
            if nr == root.block {
                return Err(corrupt("space map: live node marked free", nr));
            }
            let old = root.block;
            root = Root {
                block: nr,
                depth: root.depth + 1,
            };
            if let Some(x) = self.sb.roots.get_mut(tree) {
                *x = root;
            }
            self.split(tree, nr, 0, old, root.depth - 2, appends)?;
        }
        let mut cur = root.block;
        let mut level = root.depth - 1;
        // `cur` is the last node of its level (the root is): keys beyond all
        // of the tree's land there.
        let mut at_edge = true;
        for _ in 0..MAX_DEPTH {
            if level == 0 {
                let (mut h, n) = self.write_node(cur, tree, 0)?;
                let i = self.search_ge(&h, n, k)?;
                if i < n && self.key(&h, i)? == k {
                    let old = self.leaf_val(&h, i)?;
                    self.set_leaf_val(&mut h, i, v)?;
                    self.finish(&mut h)?;
                    return Ok(Some(old));
                }
                self.node_insert(&mut h, 0, n, i, k, v)?;
                self.finish(&mut h)?;
                return Ok(None);
            }
            let (idx, child, last) = {
                let (mut h, n) = self.write_node(cur, tree, level)?;
                let idx = self.search_le(&h, n, k)?;
                let idx = match idx {
                    Some(i) => i,
                    None => {
                        // k becomes the smallest key of this subtree.
                        self.set_key(&mut h, 0, k)?;
                        self.finish(&mut h)?;
                        0
                    }
                };
                (idx, self.child(&h, idx)?, idx + 1 == n)
            };
            let child_at_edge = at_edge && last;
            if child == cur {
                return Err(corrupt("btree: node is its own child", cur));
            }
            let c2 = self.shadow(child, tree, level - 1)?;
            self.repoint(tree, cur, level, idx, child, c2)?;
            let (cn, appends) = {
                let (h, n) = self.read_node(c2, tree, level - 1)?;
                (n, child_at_edge && n > 0 && k > self.key(&h, n - 1)?)
            };
            let next = if cn >= f.max_entries(level - 1) {
                let (sib, sep) = self.split(tree, cur, idx, c2, level - 1, appends)?;
                if k >= sep {
                    at_edge = child_at_edge;
                    sib
                } else {
                    at_edge = false;
                    c2
                }
            } else {
                at_edge = child_at_edge;
                c2
            };
            cur = next;
            level -= 1;
        }
        Err(corrupt("btree: deeper than the maximum", cur))
    }

    /// Removes `k`; returns its value.
    pub(crate) fn remove(&mut self, tree: usize, k: u128) -> Result<Option<u128>> {
        if self.lookup(tree, k)?.is_none() {
            return Ok(None);
        }
        self.ensure(self.op_need(tree))?;
        self.touch();
        let (leaf, path) = self.descend_refilling(tree, k)?;
        let (old, newmin) = {
            let (mut h, n) = self.write_node(leaf, tree, 0)?;
            let i = self.search_ge(&h, n, k)?;
            if i >= n || self.key(&h, i)? != k {
                return Err(corrupt("btree: key vanished during remove", leaf));
            }
            let old = self.leaf_val(&h, i)?;
            self.node_remove(&mut h, 0, n, i)?;
            let newmin = if i == 0 && n > 1 {
                Some(self.key(&h, 0)?)
            } else {
                None
            };
            self.finish(&mut h)?;
            (old, newmin)
        };
        if let Some(m) = newmin {
            self.replace_separator(tree, path.nodes(), k, m)?;
        }
        Ok(Some(old))
    }

    /// Removes a prefix of `keys`, which must be ascending, present, and all
    /// in the leaf that holds the first of them (as a scan of one leaf finds
    /// them), in one descent: the path is shadowed and the leaf sealed once
    /// for all of them, where [`Store::remove`] pays that for each key.
    /// Returns how many it removed: as many as leave the leaf its minimum
    /// (the descent refilled it above that), or one entry if it is the last
    /// leaf of the tree, which may hold fewer; at least one. The caller
    /// removes the rest with another call.
    pub(crate) fn remove_in_leaf(&mut self, tree: usize, keys: &[u128]) -> Result<usize> {
        let Some(&first) = keys.first() else {
            return Ok(0);
        };
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Internal("btree: keys to remove not ascending"));
        }
        self.ensure(self.op_need(tree))?;
        let f = NodeFormat::of(tree)?;
        self.touch();
        let (leaf, path) = self.descend_refilling(tree, first)?;
        // The last leaf of the tree is on the path of last children.
        let mut last = true;
        for &(pb, pidx, plev) in path.nodes() {
            let (_, pn) = self.read_node(pb, tree, plev)?;
            last &= pidx + 1 == pn;
        }
        let vanished = corrupt("btree: key vanished during remove", leaf);
        let (removed, old_min, new_min) = {
            let (mut h, n) = self.write_node(leaf, tree, 0)?;
            let room = if path.nodes().is_empty() {
                n
            } else if last {
                n.saturating_sub(1)
            } else {
                n.saturating_sub(f.min_entries(0))
            };
            let take = keys.len().min(room);
            if take == 0 {
                return Err(Error::Internal(
                    "btree: no room to remove from a refilled leaf",
                ));
            }
            let run = keys
                .get(..take)
                .ok_or(Error::Internal("btree: run length"))?;
            let old_min = self.key(&h, 0)?;
            // Every key is looked for before the leaf changes: a failed
            // removal leaves it as it was.
            let start = self.search_ge(&h, n, first)?;
            let mut want = run.iter().copied();
            let mut next = want.next();
            for i in start..n {
                if next == Some(self.key(&h, i)?) {
                    next = want.next();
                }
            }
            if next.is_some() {
                return Err(vanished);
            }
            let mut next = run.first().copied();
            let mut rest = run.iter().copied().skip(1);
            let mut kept = start;
            for i in start..n {
                if next == Some(self.key(&h, i)?) {
                    next = rest.next();
                    continue;
                }
                if kept != i {
                    self.shift_entries(&mut h, 0, i, 1, kept)?;
                }
                kept += 1;
            }
            self.zero_entries(&mut h, kept, n, 0)?;
            Self::set_nr(&mut h, kept)?;
            let new_min = if kept > 0 {
                Some(self.key(&h, 0)?)
            } else {
                None
            };
            self.finish(&mut h)?;
            (take, old_min, new_min)
        };
        if let Some(m) = new_min.filter(|&m| m != old_min) {
            self.replace_separator(tree, path.nodes(), old_min, m)?;
        }
        Ok(removed)
    }

    /// Removes whole leaves, adjacent in key order: the one that starts with
    /// `first.0` and holds `first.1` entries (as [`Store::leaf_span`] found
    /// it), and the leaves after it under the same parent that `accept`
    /// takes, as long as they leave the parent its minimum, number at most
    /// `limit.0` in all and, before each is looked at, the entries taken
    /// number fewer than `limit.1`. All in one descent that stops at that
    /// parent: the leaves after the first are read through its child
    /// pointers, each once for `accept`, not found by descents of their own.
    ///
    /// The leaves are neither copied nor sealed, but unlinked and freed; the
    /// parent is sealed once and each bitmap block changed once for all of
    /// them. Before they are unlinked, `each(self, frees, chunks)` sees the
    /// low halves of their values (what the exceptions point to) in key
    /// order, [`DROP_BATCH`] at a time, to free them. The leaves' blocks are
    /// queued in `frees` too, which the caller flushes
    /// ([`Store::flush_frees`]): the bitmap block that holds the leaves and
    /// the chunks changes once for them all.
    ///
    /// Drops at least the first leaf; none, having changed only the shape of
    /// the path above it, if the tree has no internal node (the caller
    /// removes the keys with [`Store::remove_in_leaf`], which may empty a
    /// root leaf).
    pub(crate) fn drop_leaves<A, F>(
        &mut self,
        tree: usize,
        first: (u128, usize),
        limit: (usize, usize),
        frees: &mut QueuedFrees,
        mut accept: A,
        mut each: F,
    ) -> Result<DroppedLeaves>
    where
        A: FnMut(&LeafEntries<'_>) -> Result<bool>,
        F: FnMut(&mut Self, &mut QueuedFrees, &[u64]) -> Result<()>,
    {
        let none = DroppedLeaves {
            leaves: 0,
            entries: 0,
            after: first.0,
        };
        if self.root(tree)?.depth < 2 {
            return Ok(none);
        }
        self.ensure(self.op_need(tree))?;
        self.touch();
        let (parent, plevel, path) = self.descend_refilling_to(tree, first.0, 1)?;
        if plevel == 0 {
            return Ok(none);
        }
        if plevel != 1 {
            return Err(Error::Internal(
                "btree: descent stopped above the leaves' parents",
            ));
        }
        let f = NodeFormat::of(tree)?;
        // The leaves to drop: (block, txid, entries).
        let mut dropped = [(0u64, 0u64, 0usize); DROP_LEAVES];
        let (pidx, pn, count, entries, after) = {
            let (p, pn) = self.write_node(parent, tree, plevel)?;
            if pn < 2 {
                return Err(corrupt("btree: internal node with a single child", parent));
            }
            let pidx = self.search_le(&p, pn, first.0)?.unwrap_or(0);
            // A separator is the first key of its subtree.
            if self.key(&p, pidx)? != first.0 {
                return Err(Error::Internal(
                    "btree: dropped leaf does not start a subtree",
                ));
            }
            // The parent keeps its minimum; the root keeps one child, which then replaces it.
            let keep = if path.len == 0 {
                1
            } else {
                f.min_entries(plevel)
            };
            let room = pn
                .saturating_sub(keep)
                .min(pn - pidx)
                .min(limit.0)
                .min(DROP_LEAVES);
            let (mut count, mut entries, mut last_key) = (0usize, 0usize, first.0);
            while count < room {
                if count > 0 && entries >= limit.1 {
                    break;
                }
                let leaf = self.child(&p, pidx + count)?;
                if leaf == parent {
                    return Err(corrupt("btree: node is its own child", parent));
                }
                let sep = self.key(&p, pidx + count)?;
                let (h, n) = self.read_node(leaf, tree, 0)?;
                let l = LeafEntries::of(&h, n)?;
                if count == 0 {
                    if n != first.1 || n == 0 || l.key(0)? != first.0 {
                        return Err(Error::Internal(
                            "btree: dropped leaf changed since it was read",
                        ));
                    }
                } else {
                    if n == 0 || l.key(0)? != sep {
                        return Err(corrupt(
                            "btree separator differs from the child's first key",
                            leaf,
                        ));
                    }
                    if !accept(&l)? {
                        break;
                    }
                }
                last_key = l.key(n - 1)?;
                if let Some(slot) = dropped.get_mut(count) {
                    *slot = (leaf, rd64(&h, OFF_TXID)?, n);
                }
                count += 1;
                entries += n;
            }
            let after = if pidx + count < pn {
                self.key(&p, pidx + count)?
            } else {
                last_key.saturating_add(1)
            };
            (pidx, pn, count, entries, after)
        };
        if count == 0 {
            return Err(Error::Internal("btree: no room to drop a leaf"));
        }
        let mut vals = [0u64; DROP_BATCH];
        for &(leaf, _, len) in dropped.iter().take(count) {
            let mut done = 0;
            while done < len {
                let m = (len - done).min(DROP_BATCH);
                {
                    let (h, n) = self.read_node(leaf, tree, 0)?;
                    let out = vals.get_mut(..m).ok_or(Error::Internal("drop batch"))?;
                    LeafEntries::of(&h, n)?.vals_lo(done, out)?;
                }
                each(self, frees, vals.get(..m).unwrap_or(&[]))?;
                done += m;
            }
        }
        let new_min = {
            let (mut p, _) = self.write_node(parent, tree, plevel)?;
            self.node_remove_range(&mut p, plevel, pn, pidx, count)?;
            let new_min = self.key(&p, 0)?;
            self.finish(&mut p)?;
            new_min
        };
        for &(leaf, txid, _) in dropped.iter().take(count) {
            self.queue_free_meta(frees, leaf, txid)?;
        }
        if path.len == 0 && pn - count == 1 {
            // The root has one child left, which replaces it.
            let only = {
                let (p, _) = self.write_node(parent, tree, plevel)?;
                self.child(&p, 0)?
            };
            if let Some(x) = self.sb.roots.get_mut(tree) {
                *x = Root {
                    block: only,
                    depth: plevel,
                };
            }
            self.free_meta(parent, self.cur)?;
        } else if pidx == 0 {
            self.replace_separator(tree, path.nodes(), first.0, new_min)?;
        }
        Ok(DroppedLeaves {
            leaves: count,
            entries,
            after,
        })
    }

    /// Moves the entries `from..from + cnt` of a node at `level` to slots
    /// `to..to + cnt` (the ranges may overlap; entries they overwrite are
    /// lost).
    fn shift_entries(
        &self,
        b: &mut [u8],
        level: u8,
        from: usize,
        cnt: usize,
        to: usize,
    ) -> Result<()> {
        let f = NodeFormat::of_node(b)?;
        let ks = f.key.size();
        move_bytes(b, f.key_off(from), ks * cnt, f.key_off(to))?;
        let (fo, vs) = f.val_off(level, from);
        let (to_off, _) = f.val_off(level, to);
        move_bytes(b, fo, vs * cnt, to_off)
    }

    /// Writes `new` over every separator of `path` that equals `old`: the
    /// smallest key of a subtree changed from `old` to `new`.
    fn replace_separator(
        &self,
        tree: usize,
        path: &[(u64, usize, u8)],
        old: u128,
        new: u128,
    ) -> Result<()> {
        for &(pb, pidx, plev) in path {
            let (mut p, _) = self.write_node(pb, tree, plev)?;
            if self.key(&p, pidx)? == old {
                self.set_key(&mut p, pidx, new)?;
                self.finish(&mut p)?;
            }
        }
        Ok(())
    }

    /// Descends from the root to the leaf that would hold `k`, shadowing
    /// every node on the way and refilling each non-root node that holds
    /// only the minimum (borrowing from or merging with a sibling), so that
    /// every node of the returned path can lose one entry. Returns the leaf
    /// and the path of internal nodes above it.
    fn descend_refilling(&mut self, tree: usize, k: u128) -> Result<(u64, Path)> {
        match self.descend_refilling_to(tree, k, 0)? {
            (leaf, 0, path) => Ok((leaf, path)),
            _ => Err(Error::Internal("btree: descent stopped above the leaves")),
        }
    }

    /// [`Store::descend_refilling`] that stops at the node of level `stop`
    /// that would hold `k`, or above it if the tree is not that deep (a
    /// root collapse on the way can make it shallower). Returns the node,
    /// its level and the path above it; the node was shadowed and, unless it
    /// is the root, refilled, and the leaves under it were not touched.
    fn descend_refilling_to(&mut self, tree: usize, k: u128, stop: u8) -> Result<(u64, u8, Path)> {
        let f = NodeFormat::of(tree)?;
        let root = self.shadow_root(tree)?;
        let mut path = Path::default();
        let mut cur = root.block;
        let mut level = root.depth - 1;
        for _ in 0..=MAX_DEPTH {
            if level <= stop {
                return Ok((cur, level, path));
            }
            let (idx, n, child) = {
                let (h, n) = self.write_node(cur, tree, level)?;
                let idx = self.search_le(&h, n, k)?.unwrap_or(0);
                (idx, n, self.child(&h, idx)?)
            };
            if child == cur {
                return Err(corrupt("btree: node is its own child", cur));
            }
            let c2 = self.shadow(child, tree, level - 1)?;
            self.repoint(tree, cur, level, idx, child, c2)?;
            let cl = level - 1;
            let cn = {
                let (_, n) = self.read_node(c2, tree, cl)?;
                n
            };
            if cn > f.min_entries(cl) {
                path.push(cur, idx, level)?;
                cur = c2;
                level = cl;
                continue;
            }
            if n < 2 {
                return Err(corrupt("btree: internal node with a single child", cur));
            }
            let child_is_left = idx + 1 < n;
            let sidx = if child_is_left { idx + 1 } else { idx - 1 };
            let sib = {
                let (h, _) = self.write_node(cur, tree, level)?;
                self.child(&h, sidx)?
            };
            if sib == cur || sib == c2 {
                return Err(corrupt("btree: sibling pointer aliases a node", cur));
            }
            let sn = {
                let (_, n) = self.read_node(sib, tree, cl)?;
                n
            };
            let descend_idx;
            let descend;
            if sn > f.min_entries(cl) {
                // Borrow from the sibling: half the difference, so that a run of removals
                // (Store::remove_in_leaf) finds room in the child again, and no more than
                // leaves the sibling its minimum.
                let s2 = self.shadow(sib, tree, cl)?;
                self.repoint(tree, cur, level, sidx, sib, s2)?;
                if s2 == c2 || s2 == cur {
                    return Err(corrupt("space map: live node marked free", s2));
                }
                let newsep;
                {
                    let (mut c, cn) = self.write_node(c2, tree, cl)?;
                    let (mut s, sn) = self.write_node(s2, tree, cl)?;
                    let m = (sn.saturating_sub(cn) / 2)
                        .max(1)
                        .min(sn - f.min_entries(cl));
                    if cn + m > f.max_entries(cl) {
                        return Err(Error::Internal("btree: borrow overflow"));
                    }
                    if child_is_left {
                        self.copy_entries(&mut c, cn, &s, 0, m, cl)?;
                        self.shift_entries(&mut s, cl, m, sn - m, 0)?;
                        newsep = self.key(&s, 0)?;
                    } else {
                        self.shift_entries(&mut c, cl, 0, cn, m)?;
                        self.copy_entries(&mut c, 0, &s, sn - m, m, cl)?;
                        newsep = self.key(&c, 0)?;
                    }
                    self.zero_entries(&mut s, sn - m, sn, cl)?;
                    Self::set_nr(&mut c, cn + m)?;
                    Self::set_nr(&mut s, sn - m)?;
                    self.finish(&mut c)?;
                    self.finish(&mut s)?;
                }
                {
                    let (mut p, _) = self.write_node(cur, tree, level)?;
                    let at = if child_is_left { idx + 1 } else { idx };
                    self.set_key(&mut p, at, newsep)?;
                    self.finish(&mut p)?;
                }
                descend = c2;
                descend_idx = idx;
            } else {
                // Merge the right node into the left one.
                let (lidx, left, right) = if child_is_left {
                    (idx, c2, sib)
                } else {
                    let l2 = self.shadow(sib, tree, cl)?;
                    self.repoint(tree, cur, level, sidx, sib, l2)?;
                    if l2 == c2 || l2 == cur {
                        return Err(corrupt("space map: live node marked free", l2));
                    }
                    (sidx, l2, c2)
                };
                let rtx = {
                    let (mut l, ln) = self.write_node(left, tree, cl)?;
                    let (r, rn) = self.read_node(right, tree, cl)?;
                    if ln + rn > f.max_entries(cl) {
                        return Err(Error::Internal("btree: merge overflow"));
                    }
                    self.copy_entries(&mut l, ln, &r, 0, rn, cl)?;
                    Self::set_nr(&mut l, ln + rn)?;
                    self.finish(&mut l)?;
                    rd64(&r, OFF_TXID)?
                };
                let pn = {
                    let (mut p, pn) = self.write_node(cur, tree, level)?;
                    self.node_remove(&mut p, level, pn, lidx + 1)?;
                    self.finish(&mut p)?;
                    pn - 1
                };
                self.free_meta(right, rtx)?;
                if path.len == 0 && pn == 1 {
                    // Root collapse.
                    let r = self.root(tree)?;
                    if let Some(x) = self.sb.roots.get_mut(tree) {
                        *x = Root {
                            block: left,
                            depth: r.depth - 1,
                        };
                    }
                    self.free_meta(cur, self.cur)?;
                    cur = left;
                    level = cl;
                    continue;
                }
                descend = left;
                descend_idx = lidx;
            }
            path.push(cur, descend_idx, level)?;
            cur = descend;
            level = cl;
        }
        Err(corrupt("btree: deeper than the maximum", cur))
    }
}
