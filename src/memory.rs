//! Giving freed memory back to the system while the agent idles. glibc keeps the memory that
//! large FETCH answers and parsed batches used in its per-thread arenas; with 1,000 mailboxes
//! an idle agent's RSS doubled once each had fetched mail (55 → 106 MB), and stayed there.
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

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
