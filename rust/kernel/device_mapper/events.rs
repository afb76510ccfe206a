// SPDX-License-Identifier: GPL-2.0

//! Table events signalled from outside a target's callbacks.
//!
//! A target raises a device-mapper event (`dm_table_event()`) to wake `dmsetup wait` and
//! monitors such as dmeventd: a pool that runs low on space, a store that failed. Inside its
//! callbacks a target can use [`Target::event`](super::Target::event), but such conditions are
//! usually found by a worker, which holds no `dm_target` and may outlive the table it would
//! signal (a pool shared by the tables of several reloads, say). A [`TableEvents`] handle is
//! for that worker: device-mapper's destructor of the target detaches it from the table, after
//! which signalling does nothing, so no handle can reach a table that was freed.
//!
//! C header: [`include/linux/device-mapper.h`](srctree/include/linux/device-mapper.h)
//!
//! # Examples
//!
//! ```
//! use kernel::device_mapper::{events::TableEvents, TargetCtx, TargetOperations};
//! use kernel::{prelude::*, sync::Arc};
//!
//! /// A worker's state: raises an event once when free space falls to `low_water`.
//! struct Space {
//!     events: Option<Arc<TableEvents>>,
//!     low_water: u64,
//!     signalled: bool,
//! }
//!
//! impl Space {
//!     fn free_changed(&mut self, free: u64) {
//!         if free > self.low_water {
//!             self.signalled = false;
//!         } else if !self.signalled {
//!             self.signalled = true;
//!             if let Some(events) = &self.events {
//!                 events.signal();
//!             }
//!         }
//!     }
//! }
//!
//! /// In a constructor: the handle for the worker.
//! fn handle<T: TargetOperations>(t: &mut TargetCtx<'_, T>) -> Result<Arc<TableEvents>> {
//!     t.table_events()
//! }
//!
//! let mut space = Space { events: None, low_water: 10, signalled: false };
//! space.free_changed(5);
//! assert!(space.signalled);
//! space.free_changed(50);
//! assert!(!space.signalled);
//! ```

use crate::{
    bindings, new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
};
use core::ptr::NonNull;

/// The table a [`TableEvents`] signals.
struct TablePtr(NonNull<bindings::dm_table>);

// SAFETY: A `TablePtr` is only a pointer: it is used (to call `dm_table_event()`, which may be
// called from any thread in process context) only under the mutex of its `TableEvents`, whose
// invariant keeps the table alive meanwhile.
unsafe impl Send for TablePtr {}

/// A handle that signals events on the table of one target (`dm_table_event()`), from any
/// thread in process context, for as long as the target exists; afterwards it does nothing.
///
/// Made by [`TargetCtx::table_events`](super::TargetCtx::table_events).
///
/// # Invariants
///
/// While `table` holds a pointer, it points to the table of a target that was constructed
/// with this handle and is not destroyed yet: the target's destructor (or its failed
/// constructor) takes the pointer out, under the mutex, before the table can be freed.
#[pin_data]
pub struct TableEvents {
    #[pin]
    table: Mutex<Option<TablePtr>>,
}

impl TableEvents {
    /// # Safety
    ///
    /// `table` must be the table of a target under construction, and the handle must be
    /// [detached](Self::detach) before that target is destroyed, or before its constructor
    /// returns if it fails.
    pub(super) unsafe fn new(table: NonNull<bindings::dm_table>) -> Result<Arc<Self>> {
        // INVARIANT: By the safety requirements the table lives until `detach` is called.
        Arc::pin_init(
            pin_init!(Self {
                table <- new_mutex!(Some(TablePtr(table)), "TableEvents::table"),
            }),
            GFP_KERNEL,
        )
    }

    /// Signals an event on the table (`dm_table_event()`); does nothing once the target was
    /// destroyed. Events that nobody waits for are only counted.
    ///
    /// Takes a mutex (and so does `dm_table_event()`): call it in process context only.
    pub fn signal(&self) {
        let table = self.table.lock();
        if let Some(t) = table.as_ref() {
            // SAFETY: By the type invariant the table is alive while the pointer is there, and
            // we hold the mutex, which `detach` needs to take it out.
            unsafe { bindings::dm_table_event(t.0.as_ptr()) };
        }
    }

    /// Forgets the table: signalling does nothing from now on.
    pub(super) fn detach(&self) {
        // INVARIANT: The pointer goes; the target may be destroyed once this returns.
        *self.table.lock() = None;
    }
}
