// SPDX-License-Identifier: GPL-2.0

//! The metadata journal: a commit of origin copies for the price of one block.
//!
//! A commit of the B+trees (a *checkpoint*) writes every block the transaction changed and
//! then the superblock. Most commits of a busy origin record nothing but origin copies: each
//! inserted one shared exception and took one data chunk. Such a commit writes one journal
//! block instead, with `REQ_PREFLUSH | REQ_FUA`, listing the key and value of every exception
//! inserted since the last commit; the transaction goes on, so its shadowed B+tree nodes and
//! bitmap copies serve the next commits too, and the blocks it changed are written by the next
//! checkpoint.
//!
//! The journal area is a run of blocks named by the superblock (format-time; a store formatted
//! without one commits every transaction as a checkpoint). Journal block `i` follows block
//! `i - 1` of the same checkpoint: it carries the checkpoint's committed transaction id and its
//! index, and a checksum over what it holds. A checkpoint starts the journal again at block 0,
//! which makes every block written after the previous checkpoint stale.
//!
//! Opening read-write replays the journal: the longest run of valid blocks from block 0 that
//! name the superblock's checkpoint. First every recorded data chunk is taken, then every
//! exception inserted, so that no B+tree node the inserts allocate lands on a recorded chunk.
//! The replayed changes form the new session's running transaction, and its journal commits
//! go on after the replayed blocks: the durable state is the same before and after the open.
//!
//! Any other change (snapshot create or delete, snapshot writes, discards, reclaim, rollback,
//! growth, a copy given up) makes the next commit a checkpoint: a chunk it frees must not be
//! taken by an origin copy that only the journal records, and replay knows origin copies only.
//! A commit whose records do not fit in one block, or that finds the area full, is a
//! checkpoint too.
//!
//! A journal block is built in the cache while the transaction runs, in the last block of the
//! area (the *staging block*, never replayed): a cached block, marked dirty and sealed at each
//! record, whose magic says it is still open. The cache may write it back at any time, to the
//! staging block only. The commit gives it the magic, number and checksum of journal block
//! `i` and writes that image to block `i` around the cache; journal blocks themselves are
//! never dirty in the cache, so no write-back of an older image can land on one after its
//! commit.

use super::error::{Error, Result};
use super::format::*;
use super::io::{BlockHandle, BlockIo};
use super::txn::Store;

/// Blocks of the journal area of a store with `nr_blocks` metadata blocks: 1/64 of it, at
/// most [`JOURNAL_MAX_BLOCKS`]; none below 4 blocks (stores of under 1 MiB).
pub(crate) fn journal_size(nr_blocks: u64) -> u32 {
    let n = (nr_blocks / 64).min(JOURNAL_MAX_BLOCKS);
    if n < 4 {
        0
    } else {
        // At most 256.
        n as u32
    }
}

/// Bits of [`JournalState::writing_keys`]: a key the filter holds is one of the block being
/// written with a probability of about 0.9 at a full block.
const WRITING_FILTER_BITS: usize = 1024;

/// The journal's position in the running transaction.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JournalState {
    /// Journal blocks committed since the last checkpoint.
    pub(crate) committed: u32,
    /// Journal block `committed` is being written (see [`Store::journal_commit_start`]); the
    /// block being built is the next one.
    pub(crate) writing: bool,
    /// The keys recorded in the block being written, as a Bloom filter of one hash: an
    /// exception not in it is not in that block.
    pub(crate) writing_keys: [u64; WRITING_FILTER_BITS / 64],
    /// Records in the journal block being built.
    pub(crate) records: u32,
    /// The running transaction changed more than the journal can record: the next commit is a
    /// checkpoint.
    pub(crate) checkpoint_needed: bool,
    /// A change the journal records is being made (see [`Store::touch`]).
    pub(crate) recording: bool,
    /// An origin copy since the last commit is not in the journal (it could not take it).
    pub(crate) unrecorded_copy: bool,
}

fn corrupt(what: &'static str, block: u64) -> Error {
    Error::Corrupt { what, block }
}

/// The bit of key `k` in [`JournalState::writing_keys`].
fn writing_filter_bit(k: u128) -> (usize, u64) {
    // Fibonacci hashing of both halves: neighbouring chunks spread over the filter.
    let h = ((k as u64) ^ ((k >> 64) as u64).rotate_left(29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // CAST: The top 10 bits, below `WRITING_FILTER_BITS`.
    let bit = (h >> 54) as usize;
    (bit / 64, 1 << (bit % 64))
}

impl<I: BlockIo> Store<I> {
    /// Journal blocks of the area: all but the staging block.
    fn journal_slots(&self) -> u32 {
        self.sb.journal_blocks.saturating_sub(1)
    }

    /// Index of the journal block being built: the one after the block being written, if any.
    fn building_index(&self) -> u32 {
        self.journal.committed + u32::from(self.journal.writing)
    }

    /// Committed journal blocks, or one being written, may name data chunks: a chunk freed
    /// now must not be reused before the next checkpoint.
    pub(crate) fn journal_names_chunks(&self) -> bool {
        self.journal.committed > 0 || self.journal.writing
    }

    /// Block number of the staging block, where the next journal block is built.
    fn staging_block(&self) -> Result<u64> {
        self.journal_block(0)?;
        Ok(self.sb.journal_start + u64::from(self.journal_slots()))
    }

    /// Block number of journal block `i`.
    fn journal_block(&self, i: u32) -> Result<u64> {
        if i >= self.journal_slots() {
            return Err(Error::Internal("journal index past the area"));
        }
        self.sb
            .journal_start
            .checked_add(u64::from(i))
            .ok_or(Error::Internal("journal block number"))
    }

    /// Validates the image of journal block `i`, at block `nr` (block `i`, or the staging
    /// block), written after the checkpoint `checkpoint`, committed (`magic`
    /// [`JOURNAL_MAGIC`]) or being built ([`JOURNAL_OPEN_MAGIC`]); returns its record count,
    /// or `None` if it is not one (never written since, torn, stale, or other magic).
    fn journal_records(
        &self,
        b: &[u8],
        nr: u64,
        i: u32,
        checkpoint: u64,
        magic: u32,
    ) -> Result<Option<usize>> {
        if rd32(b, OFF_MAGIC)? != magic
            || rd64(b, OFF_BLOCKNR)? != nr
            || rd64(b, JL_CHECKPOINT)? != checkpoint
            || rd32(b, JL_INDEX)? != i
        {
            return Ok(None);
        }
        let count = rd32(b, JL_COUNT)? as usize;
        if count == 0
            || count > JL_CAPACITY
            || journal_crc(&self.io, b, count)? != rd32(b, OFF_CRC)?
        {
            return Ok(None);
        }
        Ok(Some(count))
    }

    /// Record `j` of a journal block: the key and the value of a shared exception.
    fn journal_record(b: &[u8], j: usize) -> Result<(u128, u128)> {
        let off = JL_RECORDS + j * JL_RECORD_SIZE;
        let k = rd64(b, off)? as u128 | (rd64(b, off + 8)? as u128) << 64;
        let v = rd64(b, off + 16)? as u128 | (rd64(b, off + 24)? as u128) << 64;
        Ok((k, v))
    }

    /// The running transaction must be committed as a checkpoint.
    pub(crate) fn needs_checkpoint(&mut self) {
        self.journal.checkpoint_needed = true;
    }

    /// The running transaction changed: every change goes through here. Unless it is part of
    /// a change the journal records ([`Store::recorded`]), the next commit is a checkpoint.
    pub(crate) fn touch(&mut self) {
        self.dirty = true;
        if !self.journal.recording {
            self.journal.checkpoint_needed = true;
        }
    }

    /// Runs `f`, a part of a change that the journal records (an origin copy: the chunk it
    /// takes, the exception it inserts), or that replay recreates from the journal.
    pub(crate) fn recorded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let was = core::mem::replace(&mut self.journal.recording, true);
        let r = f(self);
        self.journal.recording = was;
        r
    }

    /// Every change of the running transaction is durable: in the last checkpoint or in a
    /// committed journal block. An exception in a B+tree leaf the running transaction wrote
    /// is then no reason to wait for a commit.
    pub(crate) fn running_txn_durable(&self) -> bool {
        !self.dirty
            || (self.journal.records == 0
                && !self.journal.checkpoint_needed
                && !self.journal.writing)
    }

    /// Whether shared exception `k`, in a B+tree leaf the running transaction wrote, is
    /// durable. Only origin copies insert shared exceptions, so it is unless it was inserted
    /// since the last commit: recorded in the journal block being built or being written, or
    /// not recorded.
    pub(crate) fn shared_exception_durable(&self, k: u128) -> Result<bool> {
        if self.journal.unrecorded_copy {
            return Ok(false);
        }
        let (word, bit) = writing_filter_bit(k);
        if self.journal.writing && self.journal.writing_keys[word] & bit != 0 {
            return Ok(false);
        }
        let count = self.journal.records as usize;
        if count == 0 {
            return Ok(true);
        }
        let i = self.building_index();
        let nr = self.staging_block()?;
        let h = self.io.read(nr)?;
        if self.journal_records(&h, nr, i, self.sb.committed_txid, JOURNAL_OPEN_MAGIC)?
            != Some(count)
        {
            return Err(corrupt("journal: block being built changed", nr));
        }
        for j in 0..count {
            if Self::journal_record(&h, j)?.0 == k {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether the next commit can be a journal block: nothing but origin copies changed, the
    /// area has room, and space is not short. The blocks a transaction frees (the B+tree nodes
    /// and bitmap blocks it copied) become reusable only at a checkpoint, and the longer it
    /// runs, the more they are: once they reach an eighth of what is free, or free space
    /// nears the metadata reserve, commits are checkpoints again, so that no allocation fails
    /// for space a checkpoint would give back.
    pub(crate) fn journal_commit_possible(&self) -> bool {
        if self.journal.checkpoint_needed || self.building_index() >= self.journal_slots() {
            return false;
        }
        let Ok(free) = self.allocatable() else {
            return false;
        };
        let held_back = self.deferred.saturating_add(self.garbage_count);
        free >= 4 * self.meta_reserve() && held_back <= free / 8
    }

    /// Whether the next commit will be a journal block (see
    /// [`Store::journal_commit_possible`]), once a journal write in flight has ended.
    pub fn next_commit_is_journal(&self) -> bool {
        self.journal_commit_possible()
    }

    /// Records the shared exception `(k, v)` an origin copy just inserted, in the journal
    /// block being built; if the journal cannot take it, the next commit is a checkpoint.
    pub(crate) fn journal_origin_copy(&mut self, k: u128, v: u128) -> Result<()> {
        let count = self.journal.records as usize;
        if !self.journal_commit_possible() || count >= JL_CAPACITY {
            self.needs_checkpoint();
            self.journal.unrecorded_copy = true;
            return Ok(());
        }
        let i = self.building_index();
        let nr = self.staging_block()?;
        let mut h = if count == 0 {
            let mut h = new_block_with_header(
                &self.io,
                self.g.block_size,
                nr,
                JOURNAL_OPEN_MAGIC,
                self.cur,
            )?;
            wr64(&mut h, JL_CHECKPOINT, self.sb.committed_txid)?;
            wr32(&mut h, JL_INDEX, i)?;
            h
        } else {
            let h = self.io.read(nr)?;
            if self.journal_records(&h, nr, i, self.sb.committed_txid, JOURNAL_OPEN_MAGIC)?
                != Some(count)
            {
                return Err(corrupt("journal: block being built changed", nr));
            }
            h
        };
        let off = JL_RECORDS + count * JL_RECORD_SIZE;
        wr64(&mut h, off, k as u64)?;
        wr64(&mut h, off + 8, (k >> 64) as u64)?;
        wr64(&mut h, off + 16, v as u64)?;
        wr64(&mut h, off + 24, (v >> 64) as u64)?;
        wr32(&mut h, JL_COUNT, (count + 1) as u32)?;
        let crc = journal_crc(&self.io, &h, count + 1)?;
        wr32(&mut h, OFF_CRC, crc)?;
        h.set_verified();
        h.mark_dirty();
        self.journal.records += 1;
        Ok(())
    }

    /// Commits the running transaction by writing the journal block being built (if it holds
    /// any record: otherwise every change is durable already), and waits.
    pub(crate) fn journal_commit(&mut self) -> Result<()> {
        let staging = self.staging_block()?;
        let Some(nr) = self.seal_journal_block(None)? else {
            return Ok(());
        };
        // Whatever fails now, the block is no longer being written.
        let written = self
            .io
            .read(staging)
            .and_then(|h| self.io.write_durably(nr, &h));
        self.end_journal_write(written)
    }

    /// Starts a journal commit whose write the caller makes, so that the transaction goes on
    /// while it is in flight: seals the journal block being built, copies its image into
    /// `image` (one block) and returns the block number to write it to with `REQ_PREFLUSH |
    /// REQ_FUA` (as [`BlockIo::write_durably`] does); `None` if there is nothing to write (no
    /// record since the last commit: the running transaction is durable).
    ///
    /// Until [`Store::journal_commit_end`] reports the write, the exceptions of the block are
    /// not durable, records go to the next block, and no other commit can be made
    /// ([`Error::Busy`]). A crash meanwhile recovers with or without the block. Copy plans may
    /// be outstanding: the block records only completed copies.
    ///
    /// Errors: [`Error::Busy`] unless [`Store::commit_beside_plans_possible`] (a journal block
    /// cannot commit the running transaction, or a write is in flight).
    pub fn journal_commit_start(&mut self, image: &mut [u8]) -> Result<Option<u64>> {
        self.writable()?;
        if self.journal.writing || !self.journal_commit_possible() {
            return Err(Error::Busy);
        }
        if image.len() != self.g.block_size {
            return Err(Error::Invalid("journal image of wrong size"));
        }
        let r = self.seal_journal_block(Some(image));
        self.guard(r)
    }

    /// Reports the write of the block [`Store::journal_commit_start`] returned: once `written`
    /// is `Ok`, its exceptions are durable. A failed write fails the store: whether the block
    /// reached the device is unknown, and the next commit would have to follow it.
    pub fn journal_commit_end(&mut self, written: Result<()>) -> Result<()> {
        if !self.journal.writing {
            return Err(Error::Invalid("no journal write in flight"));
        }
        let r = self.end_journal_write(written);
        self.guard(r)
    }

    /// Whether a journal write started by [`Store::journal_commit_start`] is in flight.
    pub fn journal_writing(&self) -> bool {
        self.journal.writing
    }

    /// Turns the block being built into the committed image of its journal block, in the
    /// staging block's buffer, copies it into `image` if given, and marks the block as being
    /// written; returns its block number, or `None` if it holds no record.
    fn seal_journal_block(&mut self, image: Option<&mut [u8]>) -> Result<Option<u64>> {
        if self.journal.records == 0 {
            return Ok(None);
        }
        let i = self.building_index();
        let staging = self.staging_block()?;
        let nr = self.journal_block(i)?;
        let count = self.journal.records as usize;
        let mut h = self.io.read(staging)?;
        if self.journal_records(&h, staging, i, self.sb.committed_txid, JOURNAL_OPEN_MAGIC)?
            != Some(count)
        {
            return Err(corrupt("journal: block being built changed", staging));
        }
        let mut keys = [0u64; WRITING_FILTER_BITS / 64];
        for j in 0..count {
            let (word, bit) = writing_filter_bit(Self::journal_record(&h, j)?.0);
            keys[word] |= bit;
        }
        // The staging block becomes block i's committed image (the next record starts it
        // again); the cache may write that to the staging block too, where it is never read.
        wr32(&mut h, OFF_MAGIC, JOURNAL_MAGIC)?;
        wr64(&mut h, OFF_BLOCKNR, nr)?;
        let crc = journal_crc(&self.io, &h, count)?;
        wr32(&mut h, OFF_CRC, crc)?;
        h.mark_dirty();
        if let Some(image) = image {
            image.copy_from_slice(&h);
        }
        self.journal.writing = true;
        self.journal.writing_keys = keys;
        self.journal.records = 0;
        Ok(Some(nr))
    }

    /// The write of the block being written ended with `written`. Any error fails the store:
    /// the block may or may not have reached the device, and the block being built names the
    /// index after it.
    fn end_journal_write(&mut self, written: Result<()>) -> Result<()> {
        self.journal.writing = false;
        self.journal.writing_keys = [0; WRITING_FILTER_BITS / 64];
        if written.is_err() {
            self.failed = true;
        }
        written?;
        self.journal.committed += 1;
        self.commits = self.commits.saturating_add(1);
        Ok(())
    }

    /// Journal blocks that follow the superblock's checkpoint (read-only opens report them;
    /// a read-write open replays them).
    pub(crate) fn count_journal(&self) -> Result<u32> {
        let mut n = 0;
        while n < self.journal_slots() {
            let nr = self.journal_block(n)?;
            let h = self.io.read(nr)?;
            if self
                .journal_records(&h, nr, n, self.sb.committed_txid, JOURNAL_MAGIC)?
                .is_none()
            {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    /// Replays the journal into the running transaction (see the module documentation).
    pub(crate) fn replay_journal(&mut self) -> Result<()> {
        let blocks = self.count_journal()?;
        let checkpoint = self.sb.committed_txid;
        // Every recorded chunk first, then every insert.
        for pass in 0..2 {
            for i in 0..blocks {
                let nr = self.journal_block(i)?;
                let count = {
                    let h = self.io.read(nr)?;
                    self.journal_records(&h, nr, i, checkpoint, JOURNAL_MAGIC)?
                        .ok_or(corrupt("journal: block changed during replay", nr))?
                };
                for j in 0..count {
                    let (k, v) = {
                        let h = self.io.read(nr)?;
                        Self::journal_record(&h, j)?
                    };
                    if pass == 0 {
                        self.recorded(|s| s.replay_take(nr, v))?;
                    } else {
                        self.recorded(|s| s.replay_insert(nr, k, v))?;
                    }
                }
            }
        }
        self.journal = JournalState {
            committed: blocks,
            ..JournalState::default()
        };
        Ok(())
    }

    /// Takes the data chunk of recorded exception value `v` (journal block `nr`).
    fn replay_take(&mut self, nr: u64, v: u128) -> Result<()> {
        let c = v as u64;
        if !self.g.chunk_in_data_area(c) {
            return Err(corrupt("journal: recorded chunk outside the data area", nr));
        }
        let committed = self.bm_update(self.g.chunk_block(c), self.g.chunk_blocks, true)?;
        if committed != 0 {
            return Err(corrupt(
                "journal: recorded chunk used by the checkpoint",
                nr,
            ));
        }
        self.sb.data_chunks = self.sb.data_chunks.saturating_add(1);
        Ok(())
    }

    /// Inserts recorded shared exception `(k, v)` (journal block `nr`).
    fn replay_insert(&mut self, nr: u64, k: u128, v: u128) -> Result<()> {
        let (hi, lo) = (k as u64, (v >> 64) as u64);
        if lo == 0 || lo > hi || hi > self.sb.last_epoch {
            return Err(corrupt("journal: recorded epoch range invalid", nr));
        }
        if self.lookup(TREE_SHARED, k)?.is_some() {
            return Err(corrupt("journal: recorded exception exists", nr));
        }
        self.ensure(self.op_need(TREE_SHARED))?;
        self.insert(TREE_SHARED, k, v)?;
        self.sb.shared = self.sb.shared.saturating_add(1);
        Ok(())
    }
}
