// SPDX-License-Identifier: GPL-2.0

//! The background reclaim of deleted snapshots' space (see `store/reclaim.rs`), and the origin
//! suspension that stops it.

use super::{Pool, State};
use crate::store::{self, Reclaim};
use kernel::sync::Arc;

/// Exceptions freed per worker run (a reclaim step drops whole B+tree leaves, adjacent ones under
/// one parent, or removes up to 64 exceptions of one leaf; a run makes at least one step). The
/// worker holds the pool's lock meanwhile, so this bounds the delay that reclaiming a deleted
/// snapshot adds to bios and messages. A whole leaf holds up to 213 shared exceptions, so a run
/// drops about five: a step seals the leaves' parent and changes each bitmap block once for all
/// of them, where one leaf per step paid that for each.
const RECLAIM_STEPS: u64 = 1024;

/// Exceptions freed after which the worker commits even if nothing else asks for a commit: the
/// frees of a transaction become reusable only when it commits, and a crash loses the work of
/// an uncommitted one (the reclaim then does it again). Bios that need a commit get one sooner,
/// and it carries the reclaim done so far.
const RECLAIM_COMMIT_STEPS: u64 = 16384;

impl Pool {
    /// Gives back some of the space of deleted snapshots, after the bios of this run were
    /// dealt with; the commit that follows makes it durable, and the worker queues itself
    /// again while more is left; the step that finishes the last deleted snapshot raises a
    /// device-mapper event. Not while a message handler quiesces or the origin is suspended.
    pub(super) fn reclaim_some(self: &Arc<Self>, st: &mut State) {
        if st.failed
            || st.suspended
            || st.quiescing != 0
            || st.reclaim_paused
            || st.store.deleting_snapshots() == 0
        {
            return;
        }
        let result = st.store.reclaim(RECLAIM_STEPS);
        st.reclaim_steps += RECLAIM_STEPS;
        match result {
            Ok(Reclaim::Done) => {
                st.commits.mark_dirty();
                // A monitor waiting for space to come back (`dmsetup wait`) need not poll
                // `usage`, which shows `deleting_snapshots 0` from now on.
                Self::raise_event(st);
            }
            Ok(Reclaim::More) => {
                if st.reclaim_steps >= RECLAIM_COMMIT_STEPS {
                    st.commits.mark_dirty();
                }
                self.kick();
            }
            Ok(Reclaim::NeedsCommit) => {
                st.commits.mark_dirty();
                st.reclaim_paused = true;
            }
            Err(store::Error::NoSpace) => {
                // Only frees by other operations can help: wait for their commit.
                st.reclaim_paused = true;
            }
            Err(e) => self.note_error(st, e),
        }
    }

    /// The origin was suspended: commits whatever the store holds, and reclaims nothing until
    /// [`Pool::resume`].
    pub(crate) fn suspend(self: &Arc<Self>) {
        self.state.lock().suspended = true;
        self.sync();
    }

    /// The origin was resumed: a reclaim left pending (by a suspend, a reload or a crash)
    /// goes on.
    pub(crate) fn resume(self: &Arc<Self>) {
        let mut st = self.state.lock();
        st.suspended = false;
        // A rollback stopped by an I/O error is tried again.
        st.rollback_stalled = false;
        drop(st);
        self.kick();
    }
}
