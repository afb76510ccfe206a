// SPDX-License-Identifier: GPL-2.0

//! The end of a target, and the reopening of a failed store by a table reload.

use super::{OpenError, Pool};
use crate::cow::CowIo;
use crate::store::{self, Store};
use kernel::{prelude::*, sync::Arc};

impl Pool {
    /// Makes sure that only targets hold the pool: no copy completion and no worker run does
    /// any more. Called by a target's destructor, in process context, so that the last
    /// reference goes in a destructor (see [`CopyTracker`]).
    pub(crate) fn teardown(&self) {
        self.copies.wait_idle();
        // The worker queues journal writes, whose end runs the worker again: flush both until
        // no write is in flight (after the target's `sync`, the first round finds none).
        loop {
            self.wq.flush();
            self.commit_wq.flush();
            if !self.state.lock().store.journal_writing() {
                break;
            }
        }
        self.wq.flush();
    }

    /// Reopens a failed store at its last commit, for a new table of the origin: the way back
    /// once the COW device works again. Does nothing to a store that did not fail. On error
    /// the pool stays failed, and nothing was written.
    ///
    /// The failed store's cache still holds dirty blocks of the transaction that failed, its
    /// in-progress superblock image among them; destroying that cache writes them back. That
    /// is safe only while the last commit's superblock is the newest one on the device, so the
    /// order is: check the device with a read-only store (which never writes), put that one in
    /// place of the failed store and drop the failed store, and only then open the store for
    /// writing, which writes a superblock of its own.
    pub(crate) fn reopen_if_failed(self: &Arc<Self>) -> Result<(), OpenError> {
        let mut st = self.state.lock();
        if !st.failed {
            return Ok(());
        }
        while Self::checkpoint_waits(&st) {
            self.kick();
            self.drained.wait(&mut st);
        }
        // What waited for a commit of the failed transaction fails: those bios were planned
        // against chunks that the reopened store knows nothing about.
        st.commits.drop_transaction();
        // A read-only open never formats and never writes: a COW device that lost its store
        // (zeroed, replaced) is refused here, not formatted.
        let checked = Store::open_existing(CowIo::new(&self.cow)?).map_err(OpenError::Store)?;
        if checked.usage().chunk_size / 512 != u64::from(self.chunk_sectors) {
            return Err(OpenError::Store(store::Error::ChunkSizeMismatch));
        }
        // An active snapshot device must find its snapshot again.
        for &id in st.active.iter() {
            match checked.snapshot_epoch(id) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    pr_err!(
                        "cannot reopen the exception store: snapshot {} has an active device but is not in it\n",
                        id
                    );
                    return Err(OpenError::Store(store::Error::NotFound));
                }
                Err(e) => return Err(OpenError::Store(e)),
            }
        }
        // Drops the failed store: its cache writes back what it holds (see above).
        st.store = checked;
        let io = CowIo::new(&self.cow)?;
        st.store = Store::open(io, self.chunk_sectors).map_err(OpenError::Store)?;
        st.failed = false;
        st.cow_full = false;
        st.reclaim_paused = false;
        // Chunks copied back but not taken off the failed transaction's list are copied again.
        while st.rolled_back.pop().is_some() {}
        st.rollback_stalled = false;
        self.rolling_back.store(
            st.store.rolling_back(),
            core::sync::atomic::Ordering::Release,
        );
        // Not while a message handler quiesces: it emptied the cache and relies on it.
        if st.quiescing == 0 {
            let none = st.store.usage().snapshots == 0;
            self.map_cache.lock().set_no_snapshots(none);
        }
        pr_info!("exception store reopened at its last commit\n");
        drop(st);
        // Whatever was held back is retried against the reopened store.
        self.kick();
        Ok(())
    }
}
