// SPDX-License-Identifier: GPL-2.0

//! Growing the store into a COW device that grew (see `store/grow.rs`): when an origin table
//! becomes live, the store takes the device's new size, online and in one commit.

use super::Pool;
use kernel::{block::bio::Sector, prelude::*, sync::Arc};

impl Pool {
    /// Grows the store to the COW device's size, if the device grew. Copies in flight end
    /// first (the store refuses to grow while plans are outstanding); origin I/O goes on
    /// around it. Logged, as is a device larger than the store can manage.
    pub(crate) fn grow_into_cow_device(self: &Arc<Self>) {
        let present = self.cow.nr_sectors() / Sector::from(self.chunk_sectors);
        let before = {
            let st = self.state.lock();
            if st.failed {
                return;
            }
            st.store.usage().total_chunks
        };
        if present <= before {
            return;
        }
        let grown = self.quiesced(|st| {
            st.store.io().update_size(&self.cow);
            let r = st.store.grow(present);
            match r {
                Ok(n) if n > before => {
                    // Space came back: writes that found the device full may go on.
                    st.cow_full = false;
                }
                Ok(_) => {}
                Err(e) => self.note_error(st, e),
            }
            r
        });
        let cow = self.cow.name();
        match grown {
            Ok(now) => {
                if now > before {
                    pr_info!(
                        "{}: exception store grew from {} to {} chunks\n",
                        cow,
                        before,
                        now
                    );
                }
                if present > now {
                    pr_info!(
                        "{}: the exception store uses {} of the COW device's {} chunks\n",
                        cow,
                        now,
                        present
                    );
                }
            }
            Err(e) => pr_err!("{}: exception store not grown ({})\n", cow, e),
        }
    }
}
