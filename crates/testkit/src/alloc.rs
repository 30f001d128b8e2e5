//! A counting allocator, for tests that measure memory in bytes rather than RSS: the figures
//! do not depend on the allocator's own retention or on the machine. A test binary installs it
//! with `#[global_allocator] static ALLOC: testkit::alloc::Counting = testkit::alloc::Counting;`.
//!
//! Two counts, both of bytes allocated minus bytes freed: one for the calling thread (with its
//! peak), for a measurement that other threads of the test binary must not disturb; one for the
//! whole process, for code that allocates on threads of its own (sled's flusher and I/O).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

/// The allocator: the system one, with the counts kept beside it.
pub struct Counting;

/// Bytes allocated minus bytes freed by the whole process.
static PROCESS: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Bytes allocated minus bytes freed on this thread since it started.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Highest `LIVE` seen since the last [`reset_thread_peak`].
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    PROCESS.fetch_add(delta, Relaxed);
    // `try_with`: the allocator also runs while thread locals are torn down.
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Bytes the whole process holds now (meaningful as a difference of two readings).
pub fn process_live() -> isize {
    PROCESS.load(Relaxed)
}

/// Starts a measurement on this thread: returns the baseline its peak is measured from.
pub fn reset_thread_peak() -> isize {
    let now = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(now));
    now
}

/// The most this thread held above `base` since [`reset_thread_peak`] returned it.
pub fn thread_peak_since(base: isize) -> usize {
    (PEAK.with(Cell::get) - base).max(0) as usize
}
