//! Giving freed memory back to the system while the agent idles. An allocator keeps the memory
//! that large FETCH answers and parsed batches used (glibc in its arenas, jemalloc until its
//! decay); with 1,000 mailboxes an idle agent's RSS doubled once each had fetched mail
//! (55 → 106 MB on glibc), and stayed there.
//! Workers mark that they fetched; a background task trims at most every few seconds, so a
//! burst of passes costs one trim, and the last pass of a burst is always followed by one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

static FETCHED: AtomicBool = AtomicBool::new(false);

/// How often the trimmer looks.
const EVERY: Duration = Duration::from_secs(3);

/// Marks that mail was fetched: the next round of the trimmer gives memory back.
pub(crate) fn fetched() {
    FETCHED.store(true, Ordering::Relaxed);
}

/// Runs until `cancel`: every few seconds, after mail was fetched, returns free pages.
pub(crate) async fn trimmer(cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = cancel.cancelled() => return,
        }
        if FETCHED.swap(false, Ordering::Relaxed) {
            trim();
        }
    }
}

/// How freed memory goes back: set by the binary for its allocator (jemalloc there); glibc's
/// `malloc_trim` for a library caller that keeps the system allocator.
static TRIM: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets how the trimmer gives memory back (once, before the agent starts; later calls are
/// ignored).
pub fn set_trim(f: fn()) {
    let _ = TRIM.set(f);
}

fn trim() {
    if let Some(f) = TRIM.get() {
        return f();
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
