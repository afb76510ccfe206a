// SPDX-License-Identifier: GPL-2.0

//! What the guest programs share: `O_DIRECT` block buffers.

use std::alloc::{alloc_zeroed, dealloc, Layout};

/// The I/O unit of the guest programs: 4 KiB.
pub const BLOCK: usize = 4096;

/// A 4 KiB buffer aligned for `O_DIRECT`.
pub struct AlignedBlock {
    ptr: *mut u8,
}

impl AlignedBlock {
    fn layout() -> Layout {
        Layout::from_size_align(BLOCK, BLOCK).expect("valid layout")
    }

    /// A zeroed buffer.
    pub fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(Self::layout()) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr }
    }

    /// The buffer's bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to BLOCK bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, BLOCK) }
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { dealloc(self.ptr, Self::layout()) }
    }
}

impl Default for AlignedBlock {
    fn default() -> Self {
        Self::new()
    }
}
