//! `sync`'s progress bars: one per folder with new mail, drawn on stderr while the pass runs
//! (only when stdout is a terminal; scripts get the plain per-folder lines and total).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::sync::Mutex;

/// The bars of one `sync`.
pub(crate) struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<(String, String), ProgressBar>>,
}

impl Bars {
    pub(crate) fn new() -> Bars {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl crate::sync::Progress for Bars {
    fn folder_started(&self, mailbox: &str, folder: &str, new_messages: u64) {
        let bar = self.multi.add(ProgressBar::new(new_messages));
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {pos}/{len} messages, {per_sec}, eta {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(format!("{mailbox}: {folder}"));
        if let Ok(mut b) = self.bars.lock() {
            b.insert((mailbox.to_string(), folder.to_string()), bar);
        }
    }

    fn advanced(&self, mailbox: &str, folder: &str, messages: u64) {
        if let Ok(b) = self.bars.lock() {
            if let Some(bar) = b.get(&(mailbox.to_string(), folder.to_string())) {
                bar.inc(messages);
            }
        }
    }

    fn folder_done(&self, mailbox: &str, folder: &str) {
        if let Ok(mut b) = self.bars.lock() {
            if let Some(bar) = b.remove(&(mailbox.to_string(), folder.to_string())) {
                bar.finish_and_clear();
            }
        }
    }
}
