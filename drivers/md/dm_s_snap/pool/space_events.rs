// SPDX-License-Identifier: GPL-2.0

//! Device-mapper events about the store's space and health, for `dmsetup wait` and monitors
//! such as dmeventd: free space falling to the low-water mark, the COW device becoming full,
//! the space of deleted snapshots coming back, the store failing. Each raises one event when it
//! happens; the low-water event comes again after free space rose above the mark and fell to it
//! again.
//!
//! The events go to the table of the origin target that was resumed last, as dm-thin's go to
//! its pool target's table: a reloaded table takes over when it becomes live.

use super::{Pool, State};
use kernel::{device_mapper::events::TableEvents, prelude::*, sync::Arc};

/// Where events go, and the low-water mark.
#[derive(Default)]
pub(super) struct SpaceEvents {
    /// The live origin table's events, once an origin target was resumed.
    table: Option<Arc<TableEvents>>,
    /// Free chunks at or below which the low-water event is raised (0: never).
    low_water: u64,
    /// Free space is at or below the mark, and the event for that was raised.
    below_low_water: bool,
}

impl Pool {
    /// The origin target of a table that becomes live: its events and low-water mark apply
    /// from now on.
    pub(crate) fn bind_events(&self, table: Arc<TableEvents>, low_water: u64) {
        let mut st = self.state.lock();
        st.space_events.table = Some(table);
        // A resume with the same mark does not raise its event again.
        if st.space_events.low_water != low_water {
            st.space_events.low_water = low_water;
            st.space_events.below_low_water = false;
        }
        self.check_low_water(&mut st);
    }

    /// The low-water mark, for `usage`.
    pub(super) fn low_water(st: &State) -> u64 {
        st.space_events.low_water
    }

    /// Raises an event on the live origin table.
    pub(super) fn raise_event(st: &State) {
        if let Some(table) = &st.space_events.table {
            table.signal();
        }
    }

    /// Raises the low-water event if free space just reached the mark.
    pub(super) fn check_low_water(&self, st: &mut State) {
        let low_water = st.space_events.low_water;
        if low_water == 0 {
            return;
        }
        let free = st.store.usage().free_chunks;
        if free > low_water {
            st.space_events.below_low_water = false;
        } else if !st.space_events.below_low_water {
            st.space_events.below_low_water = true;
            pr_info!(
                "{}: free space reached the low-water mark ({} chunks free, mark {})\n",
                self.cow.name(),
                free,
                low_water
            );
            Self::raise_event(st);
        }
    }

    /// An operation found the COW device full (`what` names what fails from now on): logged
    /// and signalled once, until a chunk could be allocated again.
    pub(super) fn note_cow_full(st: &mut State, what: &str) {
        if !st.cow_full {
            pr_err!("COW device full: failing {}\n", what);
            st.cow_full = true;
            Self::raise_event(st);
        }
    }
}
