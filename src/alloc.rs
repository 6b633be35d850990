//! The global allocator: mimalloc, counted, and configured in the program so that the module's
//! memory is right-sized without any environment variable.
//!
//! Counting: every allocation and reallocation adds one to a relaxed atomic counter, exposed as
//! `edgefilter_heap_allocations_total` in `/metrics`. The steady-state data path is meant to
//! allocate nothing per message; the counter is how `scripts/streaming.sh` checks that. Its cost is
//! one uncontended atomic add per allocation.
//!
//! Configuring: mimalloc commits a whole arena's worth of memory eagerly on Linux, where it
//! assumes overcommit (`arena_eager_commit` = 2), which shows as about 20 MiB of resident memory
//! for a module that needs 3 to 5. [`configure`] turns that off before the first allocation, from
//! a constructor that runs before Rust's runtime allocates anything.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Heap allocations (and reallocations) since the process started.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Relaxed)
}

/// mimalloc, counting what it allocates.
pub struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        mimalloc::MiMalloc.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        mimalloc::MiMalloc.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        mimalloc::MiMalloc.realloc(ptr, layout, new_size)
    }
}

/// Sets mimalloc's options unless the environment already names them (`MIMALLOC_*` still wins,
/// for experiments). Called from a constructor, before `main` and before any allocation.
pub fn configure() {
    use libmimalloc_sys::{mi_option_set, mi_option_t};
    // `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e` (v2, the version the mimalloc
    // crate builds by default); libmimalloc-sys does not name it.
    const ARENA_EAGER_COMMIT: mi_option_t = 4;
    if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
        // SAFETY: sets one integer option; mimalloc reads options under its own rules.
        unsafe { mi_option_set(ARENA_EAGER_COMMIT, 0) };
    }
}
