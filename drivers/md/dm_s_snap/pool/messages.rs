// SPDX-License-Identifier: GPL-2.0

//! Messages and status: snapshot create and delete with the origin quiesced, the snapshot
//! list and the `usage` reply, and the `s-snap` devices' use of their snapshots.

use super::{Pool, State};
use crate::store::{self, CowFullPolicy, SnapshotRef, Usage};
use core::fmt::Write;
use core::sync::atomic::Ordering;
use kernel::{device_mapper::StatusWriter, prelude::*, sync::Arc};

impl Pool {
    /// Stops new copies and waits until none are in flight and no origin write is in flight
    /// or waits for a commit, then runs `f`, commits, and lets I/O go again.
    pub(super) fn quiesced<R, E: From<store::Error>>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut State) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut st = self.state.lock();
        st.quiescing += 1;
        // Before the in-flight counts are read: `map` raises them before it looks (`MapCache`).
        self.map_cache.lock().clear();
        while Self::checkpoint_waits(&st)
            || self.in_flight.origin_writes.load(Ordering::Acquire) != 0
            || (!st.failed && st.commits.origin_waiting())
        {
            // Copies complete in the worker, which needs the lock we give up while waiting.
            self.kick();
            self.drained.wait(&mut st);
        }
        let result = if st.failed {
            Err(store::Error::Failed.into())
        } else {
            f(&mut st).and_then(|r| {
                st.handler_gen = st.handler_gen.wrapping_add(1).max(1);
                st.commits.mark_dirty();
                self.before_commit(&mut st);
                let committed = st.store.commit();
                if let Err(e) = committed {
                    self.note_error(&mut st, e);
                    return Err(e.into());
                }
                st.commits.mark_clean();
                self.committed(&mut st);
                let none = st.store.usage().snapshots == 0;
                self.map_cache.lock().set_no_snapshots(none);
                Ok(r)
            })
        };
        st.quiescing -= 1;
        drop(st);
        self.kick();
        result
    }

    /// `snapshot create <id>`.
    pub(crate) fn create_snapshot(self: &Arc<Self>, id: u32) -> Result<(), store::Error> {
        self.quiesced(|st| {
            let r = st.store.create_snapshot(id).map(|_| ());
            if let Err(e) = r {
                self.note_error(st, e);
            }
            r
        })
    }

    /// `snapshot delete <id>`: refused while an `s-snap` device of the snapshot is active.
    /// Returns once the deletion is committed; the worker reclaims the snapshot's space after
    /// (see `store/reclaim.rs`).
    pub(crate) fn delete_snapshot(self: &Arc<Self>, id: u32) -> Result<(), DeleteError> {
        self.quiesced(|st| {
            if st.active.contains(&id) {
                return Err(DeleteError::Active);
            }
            let r = st.store.delete_snapshot(id);
            if let Err(e) = r {
                self.note_error(st, e);
            }
            r.map_err(DeleteError::Store)
        })
    }

    /// `cow_full_policy <error|drop>`, or the feature argument of a table that becomes live:
    /// sets the policy kept on the COW device, and commits it.
    pub(crate) fn set_cow_full_policy(
        self: &Arc<Self>,
        policy: CowFullPolicy,
    ) -> Result<(), store::Error> {
        if self.state.lock().store.cow_full_policy() == policy {
            return Ok(());
        }
        self.quiesced(|st| {
            let r = st.store.set_cow_full_policy(policy);
            if let Err(e) = r {
                self.note_error(st, e);
            }
            r
        })
    }

    /// Writes the origin's status: `: no snapshot`, or the count and the ids (of live
    /// snapshots; dropped ones are listed by `usage`).
    pub(crate) fn write_snapshot_list(&self, out: &mut StatusWriter<'_>) -> core::fmt::Result {
        let st = self.state.lock();
        let count = st.store.usage().snapshots;
        if count == 0 {
            return out.write_str(": no snapshot");
        }
        write!(out, "{count}")?;
        for snap in st.store.snapshots() {
            match snap {
                Ok(snap) => write!(out, " {}", snap.id())?,
                Err(_) => return out.write_str(" (unreadable)"),
            }
        }
        Ok(())
    }

    /// Writes the reply of the `usage` message.
    pub(crate) fn write_usage(&self, out: &mut StatusWriter<'_>) -> core::fmt::Result {
        let st = self.state.lock();
        let Usage {
            chunk_size,
            total_chunks,
            data_chunks,
            metadata_chunks,
            free_chunks,
            shared_exceptions,
            private_exceptions,
            snapshots,
            deleting_snapshots,
            dropped_snapshots,
            metadata_blocks,
        } = st.store.usage();
        let policy = match st.store.cow_full_policy() {
            CowFullPolicy::Error => "error",
            CowFullPolicy::Drop => "drop",
        };
        let (rollback_snapshot, rollback_left, rollback_total) = match st.store.rollback() {
            Ok(Some(r)) => (RollbackId(Some(r.snapshot.id())), r.left, r.total),
            _ => (RollbackId(None), 0, 0),
        };
        writeln!(
            out,
            "chunk_sectors {} total_chunks {total_chunks} used_chunks {} data_chunks {data_chunks} \
             metadata_chunks {metadata_chunks} free_chunks {free_chunks} \
             shared_exceptions {shared_exceptions} private_exceptions {private_exceptions} \
             snapshots {snapshots} cow_full {} failed {} commit_sequence {} \
             deleting_snapshots {deleting_snapshots} reclaimed_chunks {} \
             metadata_blocks {metadata_blocks} low_water {} cow_full_policy {policy} \
             dropped_snapshots {dropped_snapshots} rollback_snapshot {rollback_snapshot} \
             rollback_chunks_left {rollback_left} rollback_chunks_total {rollback_total} \
             commits {}",
            chunk_size / 512,
            data_chunks + metadata_chunks,
            u8::from(st.cow_full),
            u8::from(st.failed),
            // Grows by one per checkpoint (and store open), not per journal block.
            st.store.info().seq,
            st.store.reclaimed_chunks(),
            Self::low_water(&st),
            // Every commit since the store was opened, journal blocks included: what a
            // benchmark divides by.
            st.store.commits(),
        )?;
        // Live snapshots, then the dropped ones, marked.
        for (list, mark) in [
            (st.store.snapshots(), ""),
            (st.store.dropped_snapshots(), " dropped 1"),
        ] {
            for snap in list {
                let Ok(snap) = snap else { break };
                let chunks = st.store.snapshot_usage(snap.id()).unwrap_or(0);
                writeln!(
                    out,
                    "snapshot {} chunks {chunks} active {}{mark}",
                    snap.id(),
                    u8::from(st.active.contains(&snap.id()))
                )?;
            }
        }
        Ok(())
    }

    /// Looks up snapshot `id` and marks it active (for an `s-snap` ctr).
    pub(crate) fn activate(&self, id: u32) -> Result<SnapshotRef, ActivateError> {
        let mut st = self.state.lock();
        let snap = match st.store.snapshot_epoch(id) {
            Ok(Some(snap)) => snap,
            Ok(None) if st.store.snapshot_dropped(id).unwrap_or(false) => {
                return Err(ActivateError::Dropped)
            }
            Ok(None) => return Err(ActivateError::NoSuchSnapshot),
            Err(e) => return Err(ActivateError::Store(e)),
        };
        if st.active.contains(&id) {
            return Err(ActivateError::AlreadyActive);
        }
        // Its data must not change while the origin is rolled back to it.
        if matches!(st.store.rollback(), Ok(Some(r)) if r.snapshot.id() == id) {
            return Err(ActivateError::RollingBack);
        }
        st.active
            .push(id, GFP_KERNEL)
            .map_err(|_| ActivateError::NoMemory)?;
        Ok(snap)
    }

    /// The `s-snap` device of snapshot `id` went away.
    pub(crate) fn deactivate(&self, id: u32) {
        let mut st = self.state.lock();
        if let Some(i) = st.active.iter().position(|&a| a == id) {
            st.active.swap_remove(i);
        }
    }
}

/// The snapshot of a running rollback in `usage`: its id, or `none`.
struct RollbackId(Option<u32>);

impl core::fmt::Display for RollbackId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("none"),
        }
    }
}

/// Why `snapshot delete` failed.
pub(crate) enum DeleteError {
    /// An `s-snap` device of the snapshot is active.
    Active,
    /// The store refused or failed.
    Store(store::Error),
}

impl From<store::Error> for DeleteError {
    fn from(e: store::Error) -> Self {
        DeleteError::Store(e)
    }
}

/// Why an `s-snap` ctr could not use a snapshot.
pub(crate) enum ActivateError {
    NoSuchSnapshot,
    /// Dropped because the COW device was full (the `drop` policy).
    Dropped,
    AlreadyActive,
    /// The origin is being rolled back to it.
    RollingBack,
    NoMemory,
    Store(store::Error),
}
