//! `sync`: one pass over every tracked folder (or one mailbox's), run here, with a line per
//! folder and a total.

use super::progress;
use crate::config::Config;
use crate::protocol::{PartialFailure, UsageError};
use crate::store::Store;
use anyhow::Result;
use std::sync::Arc;

/// `sync [--mailbox M]`: one pass, then a line per folder and a one-line total. With
/// `progress`, a bar per folder is drawn on stderr while it runs. `Err` when any mailbox failed
/// (after the others were synced).
pub(crate) async fn sync(
    config: &Config,
    store: &Arc<Store>,
    only: Option<&str>,
    progress: bool,
) -> Result<String> {
    if let Some(m) = only {
        anyhow::ensure!(
            config.mailbox(m).is_some(),
            UsageError(format!(
                "no mailbox named `{m}` in {}",
                config.path.display()
            ))
        );
    }
    let store = store.clone();
    let bars = progress.then(progress::Bars::new);
    let reports = crate::sync::sync_all(
        config,
        &store,
        only,
        bars.as_ref().map(|b| b as &dyn crate::sync::Progress),
    )
    .await;
    drop(bars);
    let mut out = String::new();
    let mut failed = Vec::new();
    let mut total = crate::store::BatchOutcome::default();
    let mut new = 0;
    for r in &reports {
        for f in &r.folders {
            total += f.outcome;
            new += f.new_messages;
        }
        for f in &r.folders {
            out.push_str(&format!(
                "{}: {}: {} new, {} tracked, {} merged with existing, {} already tracked, {} quarantined{}\n",
                r.mailbox,
                f.folder,
                f.new_messages,
                f.outcome.created,
                f.outcome.merged,
                f.outcome.replayed,
                f.outcome.quarantined,
                if f.uidvalidity_reset { " (UIDVALIDITY changed: folder re-read)" } else { "" }
            ));
        }
        if r.unchanged > 0 {
            out.push_str(&format!(
                "{}: {} folder(s) unchanged since the last pass\n",
                r.mailbox, r.unchanged
            ));
        }
        if r.folders.is_empty() && r.unchanged == 0 && r.error.is_none() {
            out.push_str(&format!(
                "{}: no tracked folder found on the server (see `foldertrack check`)\n",
                r.mailbox
            ));
        }
        if let Some(e) = &r.error {
            failed.push(format!("{}: {e}", r.mailbox));
        }
    }
    out.push_str(&format!(
        "total: {} mailbox(es), {} failed; {new} new, {} tracked, {} merged with existing, {} already tracked, {} quarantined\n",
        reports.len(),
        failed.len(),
        total.created,
        total.merged,
        total.replayed,
        total.quarantined
    ));
    if !failed.is_empty() {
        return Err(PartialFailure {
            stdout: out,
            message: format!(
                "sync failed for {} mailbox(es):\n  {}",
                failed.len(),
                failed.join("\n  ")
            ),
        }
        .into());
    }
    Ok(out)
}
