//! The flag scan of one folder (DESIGN §4.15), the step after the new mail: which tracked
//! messages' flags changed since the last scan, applied to their activities (and the CRM's
//! changes written back) in one transaction with the checkpoint that covers them.
//!
//! With CONDSTORE (RFC 7162) the server says what changed: `UID FETCH … (FLAGS)
//! (CHANGEDSINCE m)` with the HIGHESTMODSEQ the last scan covered, so a pass reads only the
//! changes. Without it, the flags of every tracked UID are fetched, in chunks, at most every
//! `flag_scan_interval`. Expunges need no scan: a message moved out of tracking or deleted
//! keeps its activity (DESIGN §4.5).

use super::folder::FolderSync;
use super::SyncError;
use crate::imap::fetch::{self, Selected};
use crate::imap::{ImapSession, Peer};
use crate::model::Source;
use crate::store::FolderState;

/// What a folder's flag scan did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlagReport {
    /// Messages whose flags were read.
    pub flags_read: u32,
    /// Activity fields the mailbox changed.
    pub fields_changed: u32,
    /// Fields changed on both sides since they last agreed.
    pub field_conflicts: u32,
    /// Activities untracked by removing the tracked keyword.
    pub untracked: u32,
    /// Copies written the CRM's values.
    pub pushed: u32,
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the folder's flags are to be scanned in this pass, from its checkpoint `cp` and
/// what STATUS said of its HIGHESTMODSEQ (`None`: no CONDSTORE).
pub(super) fn due(cp: &FolderState, status_modseq: Option<u64>, interval_secs: u64) -> bool {
    match status_modseq {
        Some(m) => m != cp.highest_modseq,
        None => unix_now().saturating_sub(cp.flags_scanned_at) >= interval_secs,
    }
}

/// Scans the folder's flags after its new mail is in (the checkpoint `complete` wrote is
/// read back and moved on with the scan, in the transaction that applies it). `read_all`:
/// this pass read the folder from its first message, so every tracked message came with its
/// flags; otherwise a folder never scanned (tracked by a version without field sync) has
/// every tracked message's flags read once, which gives those activities their fields.
pub(super) async fn scan(
    fs: &FolderSync<'_>,
    session: &mut ImapSession,
    peer: &Peer,
    sel: &Selected,
    read_all: bool,
) -> Result<FlagReport, SyncError> {
    let (mb, folder) = (fs.mb, &fs.t.folder.name);
    let Some(cp) = fs.store.folder_state(&mb.name, folder)? else {
        return Ok(FlagReport::default());
    };
    let interval = mb.field_sync.flag_scan_interval.as_secs();
    let since = match sel.highest_modseq {
        _ if cp.flags_scanned_at == 0 && !read_all => None,
        Some(_) if cp.highest_modseq > 0 => Some(cp.highest_modseq),
        // The first scan with CONDSTORE: what was fetched carried its flags; what changed
        // since SELECT (the keyword write-back among it) is asked for, so the checkpoint
        // ends past our own changes and nothing another client did meanwhile is missed.
        Some(m) => Some(m),
        None if !due(&cp, None, interval) => return Ok(FlagReport::default()),
        None => None,
    };
    let uids = fs.store.tracked_uids(&mb.name, folder, sel.uidvalidity)?;
    let final_cp = |top: u64| {
        let mut c = cp.clone();
        c.highest_modseq = sel
            .highest_modseq
            .unwrap_or(0)
            .max(top)
            .max(cp.highest_modseq);
        c.flags_scanned_at = unix_now();
        c
    };
    let mut report = FlagReport::default();
    let chunks: Vec<&[u32]> = uids.chunks(SCAN_CHUNK).collect();
    let mut top = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let (found, t) = read_chunk(session, peer, chunk, since).await?;
        top = top.max(t);
        // Only the last chunk moves the checkpoint on: a scan cut short is read again whole.
        let last = i + 1 == chunks.len();
        let at = if last { final_cp(top) } else { cp.clone() };
        apply_chunk(fs, session, peer, sel, found, &at, &mut report).await?;
    }
    if chunks.is_empty() {
        apply_chunk(
            fs,
            session,
            peer,
            sel,
            Vec::new(),
            &final_cp(0),
            &mut report,
        )
        .await?;
    }
    if report
        != (FlagReport {
            flags_read: report.flags_read,
            ..Default::default()
        })
    {
        tracing::info!(folder = %folder, ?report, "flag changes synced");
    }
    Ok(report)
}

/// Tracked UIDs per scan step: the first scan after a write-back finds every message changed
/// (our own keyword), and 50,000 flag lists with their activities in one step were a third of
/// the first sync's peak RSS.
const SCAN_CHUNK: usize = 2000;

/// The flags of one chunk of tracked UIDs: changed since `since` (CONDSTORE, over the chunk's
/// UID range, untracked ones dropped) or all of them.
async fn read_chunk(
    session: &mut ImapSession,
    peer: &Peer,
    chunk: &[u32],
    since: Option<u64>,
) -> Result<(Vec<(u32, Vec<String>)>, u64), SyncError> {
    let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
    Ok(match since {
        Some(m) => {
            let range = [format!("{first}:{last}")];
            let (found, top) = fetch::fetch_flags(session, peer, &range, Some(m)).await?;
            (keep_tracked(found, chunk), top)
        }
        None => fetch::fetch_flags(session, peer, &fetch::uid_sets(chunk), None).await?,
    })
}

/// Applies one chunk's flags with checkpoint `cp` and writes back what the CRM changed.
async fn apply_chunk(
    fs: &FolderSync<'_>,
    session: &mut ImapSession,
    peer: &Peer,
    sel: &Selected,
    found: Vec<(u32, Vec<String>)>,
    cp: &FolderState,
    report: &mut FlagReport,
) -> Result<(), SyncError> {
    let found: Vec<(Source, Vec<String>)> = found
        .into_iter()
        .map(|(uid, flags)| {
            let s = Source {
                mailbox: fs.mb.name.clone(),
                folder: fs.t.folder.name.clone(),
                uidvalidity: sel.uidvalidity,
                uid,
            };
            (s, flags)
        })
        .collect();
    let out = fs.store.apply_flag_scan(&found, fs.mb, cp)?;
    report.flags_read += found.len() as u32;
    report.fields_changed += out.changed;
    report.field_conflicts += out.conflicts;
    report.untracked += out.untracked;
    report.pushed += push(fs, session, peer, sel, out.pushes).await?;
    Ok(())
}

/// The answers about tracked UIDs only (`uids` is sorted).
fn keep_tracked(found: Vec<(u32, Vec<String>)>, uids: &[u32]) -> Vec<(u32, Vec<String>)> {
    found
        .into_iter()
        .filter(|(u, _)| uids.binary_search(u).is_ok())
        .collect()
}

/// Writes the CRM's values to the copies in this folder (`UID STORE`), keywords only where
/// PERMANENTFLAGS allows them (one warning otherwise, no retry loop), and records what the
/// server took. How many copies were written.
pub(super) async fn push(
    fs: &FolderSync<'_>,
    session: &mut ImapSession,
    peer: &Peer,
    sel: &Selected,
    mut pushes: Vec<crate::track::fields::Push>,
) -> Result<u32, SyncError> {
    if pushes.is_empty() {
        return Ok(0);
    }
    let mut warned = false;
    let mut done = Vec::new();
    for p in &mut pushes {
        if !sel.keywords {
            let before = p.clone();
            p.system_only();
            if !warned && before != *p {
                tracing::warn!(folder = %fs.t.folder.name, "the server keeps no keywords in this folder (no \\* in PERMANENTFLAGS): importance and categories are not written to the mailbox");
                warned = true;
            }
        }
        if p.is_empty() {
            continue;
        }
        match fetch::store_flags(session, peer, p.source.uid, &p.add, &p.remove).await {
            Ok(()) => done.push(p.clone()),
            Err(e) => {
                tracing::warn!(uid = p.source.uid, error = %e, "could not write the CRM's fields to the message; tried again at the next scan")
            }
        }
    }
    fs.store.record_pushed(&done)?;
    Ok(done.len() as u32)
}
