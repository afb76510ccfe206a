// SPDX-License-Identifier: GPL-2.0

//! Commits: when the worker commits, and what it releases after a commit.
//!
//! A commit of nothing but completed origin copies is one journal block (see
//! `store/journal.rs`). The worker seals it and hands its write to the commit work, on a queue
//! of its own, and goes on: new bios are planned and copied while the block's flush is in
//! flight, and what they complete goes into the next block (the second dirty set of
//! dm-clone). The bios that waited for the block are released when its write ends, and the
//! next block is written after it. Copies in flight do not stop a journal commit, which
//! records only completed copies; it waits only until as many bios wait for it as copies are
//! in flight, so that one flush serves a batch.
//!
//! Any other commit is a checkpoint, which the store cannot make while copy plans are
//! outstanding or a journal write is in flight: it is made as soon as bios wait for a commit
//! (or the store changed) and neither is; while bios wait for it, no new copy (or whole-chunk
//! snapshot write) starts (the commit barrier), so that it comes. Every commit serves every
//! bio that waits for it (group commit). There is no periodic commit: nothing needs one,
//! since every bio that needs durability waits for a commit of its own. A suspend or a
//! teardown commits a checkpoint.

use super::{OriginBio, Pool, SnapBio, State};
use crate::cow::JournalWriter;
use crate::store;
use kernel::{alloc::VVec, block::bio::BioList, prelude::*, sync::Arc};

/// Whether a commit may have given space back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Freed {
    /// A checkpoint, or a commit that may have been one.
    Maybe,
    /// A journal block, or nothing to write.
    Nothing,
}

/// A journal block for the commit work to write.
struct JournalWrite {
    nr: u64,
    image: VVec<u8>,
    writer: JournalWriter,
}

/// What the next commit is for: the bios waiting for it, and changes of the store; and the
/// journal write in flight, with the bios waiting for it.
pub(super) struct Committer {
    /// Origin writes to issue after the next commit (each is checked again then).
    origin: BioList<OriginBio>,
    /// Snapshot bios to issue after the next commit.
    snap: BioList<SnapBio>,
    /// The store changed since the last commit.
    dirty: bool,
    /// Origin writes to issue once the journal write in flight ended.
    writing_origin: BioList<OriginBio>,
    /// Snapshot bios to issue once the journal write in flight ended.
    writing_snap: BioList<SnapBio>,
    /// The journal write for the commit work to make.
    job: Option<JournalWrite>,
    /// The buffer journal images are copied to; with the job while a write is in flight.
    image: Option<VVec<u8>>,
}

impl Committer {
    /// A committer with a buffer for journal images of `block_size` bytes.
    pub(super) fn new(block_size: usize) -> Result<Self> {
        Ok(Self {
            origin: BioList::default(),
            snap: BioList::default(),
            dirty: false,
            writing_origin: BioList::default(),
            writing_snap: BioList::default(),
            job: None,
            // Vmalloc memory: the write hands it to dm-io as `DM_IO_VMA`.
            image: Some(VVec::from_elem(0, block_size, GFP_KERNEL)?),
        })
    }

    /// `bio` is issued (or checked again) once the next commit finished.
    pub(super) fn after_commit_origin(&mut self, bio: OriginBio) {
        self.origin.push_back(bio);
    }

    /// `bio` needs nothing but the next commit, as the store said at handler generation
    /// `gen`: it is issued once that commit finished, without asking the store again unless
    /// a message handler changed the store meanwhile.
    pub(super) fn after_commit_ready_origin(&mut self, mut bio: OriginBio, gen: u64) {
        bio.per_io_mut().ready_at_gen = gen;
        self.origin.push_back(bio);
    }

    /// `bio` is issued once the next commit finished.
    pub(super) fn after_commit_snap(&mut self, bio: SnapBio) {
        self.snap.push_back(bio);
    }

    /// The store changed: commit even if no bio waits.
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// A commit (or the start of a journal write) covers every change the store made so far.
    pub(super) fn mark_clean(&mut self) {
        self.dirty = false;
    }

    /// How many bios wait for the next commit.
    fn waiters(&self) -> usize {
        self.origin.len() + self.snap.len()
    }

    /// Bios wait for a commit.
    pub(super) fn waiting(&self) -> bool {
        !self.origin.is_empty() || !self.snap.is_empty()
    }

    /// Origin writes wait for a commit (a message handler waits for them).
    pub(super) fn origin_waiting(&self) -> bool {
        !self.origin.is_empty()
    }

    /// A commit is due: bios wait for one, or the store changed.
    fn wanted(&self) -> bool {
        self.waiting() || self.dirty
    }

    /// Fails every bio that waits: no commit will come, or the one they waited for failed.
    pub(super) fn fail_waiters(&mut self) {
        Self::fail(&mut self.origin, &mut self.snap);
    }

    /// The running transaction is given up (a failed store is reopened at its last commit):
    /// what waited for its commit fails, and its changes are gone.
    pub(super) fn drop_transaction(&mut self) {
        self.fail_waiters();
        self.dirty = false;
    }

    fn fail(origin: &mut BioList<OriginBio>, snap: &mut BioList<SnapBio>) {
        while let Some(bio) = origin.pop() {
            bio.end(Err(EIO));
        }
        while let Some(bio) = snap.pop() {
            bio.end(Err(EIO));
        }
    }
}

impl Pool {
    /// Whether no new copy may start: bios wait for a checkpoint, which copies in flight
    /// would put off, or a message handler quiesces.
    ///
    /// A checkpoint comes at the end of the worker's run once no copy is outstanding, and a
    /// copy started before it would put it off again (a stream of writes that each start one
    /// would put it off for good). A journal commit needs no such wait.
    pub(super) fn barrier(st: &State) -> bool {
        st.quiescing != 0 || (st.commits.waiting() && !Self::next_commit_is_journal(st))
    }

    /// Whether the next commit will be a journal block: nothing but completed origin copies
    /// goes into it (a rollback's chunks copied back are taken off its list in front of a
    /// commit, which needs a checkpoint).
    fn next_commit_is_journal(st: &State) -> bool {
        st.rolled_back.is_empty() && st.store.next_commit_is_journal()
    }

    /// Commits if bios wait for a commit or the store changed: a journal block at once, whose
    /// write the commit work makes; a checkpoint once no copy is in flight. Issues or retries
    /// the bios that waited for it once it is durable.
    pub(super) fn commit_if_wanted(self: &Arc<Self>, st: &mut State) {
        if st.failed {
            // No commit will come: fail what waits for one.
            st.commits.fail_waiters();
            return;
        }
        // The end of a journal write in flight runs the worker again.
        if !st.commits.wanted() || st.store.journal_writing() {
            return;
        }
        let journal = Self::next_commit_is_journal(st);
        if !journal && !st.pending.is_empty() {
            return;
        }
        // Group commit: a journal commit beside copies in flight waits until as many bios
        // wait for it as copies are in flight, so that one flush serves a batch (their
        // completions run the worker again).
        if journal && st.commits.waiters() < st.pending.len() {
            return;
        }
        self.before_commit(st);
        if journal {
            if let Some(image) = st.commits.image.take() {
                self.start_journal_write(st, image);
                return;
            }
        }
        let result = st.store.commit();
        let origin = core::mem::take(&mut st.commits.origin);
        let snap = core::mem::take(&mut st.commits.snap);
        st.commits.mark_clean();
        self.commit_ended(st, result, origin, snap, Freed::Maybe);
    }

    /// Seals the journal block for the bios that wait for a commit and queues its write.
    fn start_journal_write(self: &Arc<Self>, st: &mut State, mut image: VVec<u8>) {
        let started = st.store.journal_commit_start(&mut image);
        let origin = core::mem::take(&mut st.commits.origin);
        let snap = core::mem::take(&mut st.commits.snap);
        st.commits.mark_clean();
        match started {
            Ok(Some(nr)) => {
                st.commits.writing_origin = origin;
                st.commits.writing_snap = snap;
                st.commits.job = Some(JournalWrite {
                    nr,
                    image,
                    writer: st.store.io().journal_writer(),
                });
                // Not queued already: only one write is in flight, and its job was taken.
                let _ = self.commit_wq.enqueue::<_, 2>(self.clone());
            }
            // Nothing to write: the running transaction is durable.
            Ok(None) => {
                st.commits.image = Some(image);
                self.commit_ended(st, Ok(()), origin, snap, Freed::Nothing);
            }
            Err(e) => {
                st.commits.image = Some(image);
                self.commit_ended(st, Err(e), origin, snap, Freed::Nothing);
            }
        }
    }

    /// The commit work: writes the journal block the worker sealed, then releases the bios
    /// that waited for it and runs the worker for the next one.
    pub(super) fn write_journal(self: &Arc<Self>) {
        let Some(job) = self.state.lock().commits.job.take() else {
            return;
        };
        let written = job.writer.write(job.nr, &job.image);
        drop(job.writer);
        let mut st = self.state.lock();
        st.commits.image = Some(job.image);
        let origin = core::mem::take(&mut st.commits.writing_origin);
        let snap = core::mem::take(&mut st.commits.writing_snap);
        let ended = st.store.journal_commit_end(written);
        self.commit_ended(&mut st, ended, origin, snap, Freed::Nothing);
        // What waited meanwhile gets the next commit; `sync` and message handlers wait for
        // the write to end.
        self.kick();
        self.drained.notify_all();
    }

    /// A commit ended with `result`: issues (or checks again) the bios that waited for it, or
    /// fails them.
    fn commit_ended(
        self: &Arc<Self>,
        st: &mut State,
        result: Result<(), store::Error>,
        mut origin: BioList<OriginBio>,
        mut snap: BioList<SnapBio>,
        freed: Freed,
    ) {
        match result {
            Ok(()) => {
                if freed == Freed::Maybe {
                    self.committed(st);
                }
                // Each one is checked again: a snapshot may have been created meanwhile, and
                // then its chunk needs a copy first (`process_origin` skips the store's check
                // when no message handler ran since the bio was found ready). Normally this
                // issues it.
                while let Some(bio) = origin.pop() {
                    self.process_origin(st, bio, true);
                }
                while let Some(bio) = snap.pop() {
                    bio.submit();
                }
                // Retry what the barrier held back, and commit again for what the checks
                // above left waiting.
                if !st.held_origin.is_empty()
                    || !st.held_snap.is_empty()
                    || st.commits.origin_waiting()
                {
                    self.kick();
                }
            }
            Err(e) => {
                self.note_error(st, e);
                Committer::fail(&mut origin, &mut snap);
            }
        }
    }

    /// After a commit that may have given space back (a checkpoint releases what the
    /// transaction freed; a journal block frees nothing): the reclaim may go on (see
    /// [`Pool::reclaim_some`]), and so may a rollback that waited for space.
    pub(super) fn committed(self: &Arc<Self>, st: &mut State) {
        st.reclaim_steps = 0;
        // The rollback's background copy goes on (the commit may have brought space back).
        st.rollback_waits_for_space = false;
        if st.store.rolling_back() {
            self.kick();
        }
        if core::mem::take(&mut st.reclaim_paused) && st.store.deleting_snapshots() != 0 {
            self.kick();
        }
    }

    /// Whether a checkpoint must wait: copies or a journal write are in flight.
    pub(super) fn checkpoint_waits(st: &State) -> bool {
        !st.pending.is_empty() || st.store.journal_writing()
    }

    /// Commits whatever the store holds (origin suspend, target teardown), as a checkpoint: a
    /// suspended or removed origin leaves no journal to replay, so tools reading the COW
    /// device see everything.
    ///
    /// No new copy starts meanwhile (as for a message handler): journal commits overlap
    /// copies, so under a stream of origin writes there might otherwise never be a moment
    /// with neither a copy nor a journal write in flight.
    pub(crate) fn sync(self: &Arc<Self>) {
        let mut st = self.state.lock();
        st.quiescing += 1;
        while Self::checkpoint_waits(&st) {
            self.kick();
            self.drained.wait(&mut st);
        }
        if !st.failed {
            self.before_commit(&mut st);
            match st.store.checkpoint() {
                Ok(()) => {
                    st.commits.mark_clean();
                    self.committed(&mut st)
                }
                Err(e) => self.note_error(&mut st, e),
            }
        }
        st.quiescing -= 1;
        drop(st);
        // What the barrier held back goes on.
        self.kick();
    }
}
