// SPDX-License-Identifier: GPL-2.0

//! Commits: when the worker commits, and what it releases after a commit.
//!
//! The store cannot commit while copy plans are outstanding, so a commit is made as soon as
//! bios wait for one (or the store changed) and no copy is in flight; while bios wait for a
//! commit, no new copy (or whole-chunk snapshot write) starts (the commit barrier), so that
//! the commit comes. Every commit serves every bio that waits for it (group commit). There is no
//! periodic commit: nothing needs one, since every bio that needs durability waits for a
//! commit of its own. The store makes a commit of nothing but origin copies one journal block
//! (see `store/journal.rs`); a suspend or a teardown commits a checkpoint.

use super::{OriginBio, Pool, SnapBio, State};
use kernel::{block::bio::BioList, prelude::*, sync::Arc};

/// What the next commit is for: the bios waiting for it, and changes of the store.
#[derive(Default)]
pub(super) struct Committer {
    /// Origin writes to issue after the next commit (each is checked again then).
    origin: BioList<OriginBio>,
    /// Snapshot bios to issue after the next commit.
    snap: BioList<SnapBio>,
    /// The store changed since the last commit.
    dirty: bool,
}

impl Committer {
    /// `bio` is issued (or checked again) once the next commit finished.
    pub(super) fn after_commit_origin(&mut self, bio: OriginBio) {
        self.origin.push_back(bio);
    }

    /// Every bio of `bios` is issued (or checked again) once the next commit finished.
    pub(super) fn after_commit_origins(&mut self, bios: &mut BioList<OriginBio>) {
        self.origin.append(bios);
    }

    /// `bio` is issued once the next commit finished.
    pub(super) fn after_commit_snap(&mut self, bio: SnapBio) {
        self.snap.push_back(bio);
    }

    /// The store changed: commit even if no bio waits.
    pub(super) fn mark_dirty(&mut self) {
        self.dirty = true;
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
    /// Whether no new copy may start: bios wait for a commit, or a message handler quiesces.
    ///
    /// Also while no copy is in flight: the commit comes at the end of the worker's run, once
    /// none is outstanding, and a copy started before it would put it off again (a stream of
    /// writes that each start one would put it off for good).
    pub(super) fn barrier(st: &State) -> bool {
        st.quiescing != 0 || st.commits.waiting()
    }

    /// Commits if bios wait for a commit or the store changed, once no copy is in flight; then
    /// issues or retries the bios that waited for it.
    pub(super) fn commit_if_wanted(self: &Arc<Self>, st: &mut State) {
        if st.failed {
            // No commit will come: fail what waits for one.
            st.commits.fail_waiters();
            return;
        }
        if !st.commits.wanted() || !st.pending.is_empty() {
            return;
        }
        self.before_commit(st);
        let result = st.store.commit();
        let mut origin = core::mem::take(&mut st.commits.origin);
        let mut snap = core::mem::take(&mut st.commits.snap);
        match result {
            Ok(()) => {
                self.committed(st);
                // Each one is checked again: a snapshot may have been created meanwhile, and
                // then its chunk needs a copy first. Normally this issues it.
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

    /// After a commit: the reclaim may go on (see [`Pool::reclaim_some`]).
    pub(super) fn committed(self: &Arc<Self>, st: &mut State) {
        st.commits.dirty = false;
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

    /// Commits whatever the store holds (origin suspend, target teardown), as a checkpoint: a
    /// suspended or removed origin leaves no journal to replay, so tools reading the COW
    /// device see everything.
    pub(crate) fn sync(self: &Arc<Self>) {
        let mut st = self.state.lock();
        while !st.pending.is_empty() {
            self.kick();
            self.drained.wait(&mut st);
        }
        if st.failed {
            return;
        }
        self.before_commit(&mut st);
        match st.store.checkpoint() {
            Ok(()) => self.committed(&mut st),
            Err(e) => self.note_error(&mut st, e),
        }
    }
}
