//! One folder's sync from its checkpoint (DESIGN §3), as a [`FolderSync`] whose steps are
//! methods in the order they run: the unchanged check (STATUS against the checkpoint), open
//! (EXAMINE or SELECT, the rule binding), the start UID (a changed UIDVALIDITY re-reads the
//! folder), re-links (a changed rule, regardings set by hand), the fetch/commit pipeline, the
//! `$Tracked` write-back, and the final checkpoint.
//!
//! The pipeline overlaps I/O and CPU: while batch *n* is parsed and committed on blocking
//! workers, batch *n+1* is read from the server, so memory stays bounded by a few batches.

use super::{process_batch, FolderReport, FolderRun, SyncError, Tracked};
use crate::config::{FetchLimits, MailboxConfig};
use crate::imap::fetch::{self, Batch, RawMessage, Selected};
use crate::imap::{timed, ImapSession, Peer};
use crate::model::Source;
use crate::store::{
    BatchItem, BatchOutcome, Committed, FolderState, RuleBinding, Store, StoreError,
};
use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Everything one folder's sync reads, and what it found in the store before it began.
pub(crate) struct FolderSync<'a> {
    pub mb: &'a Arc<MailboxConfig>,
    pub t: &'a Tracked,
    pub limits: &'a FetchLimits,
    pub store: &'a Arc<Store>,
    /// Checked between batches: a cancelled sync commits the batch in hand and stops.
    pub cancel: Option<&'a CancellationToken>,
    pub run: &'a FolderRun<'a>,
    /// The checkpoint before this sync.
    prev: Option<FolderState>,
    /// The regarding the folder's rule gives now.
    regarding: Option<String>,
    /// Activities of this folder whose regarding was set by hand: (activity id, UID).
    manual: Vec<(u64, u32)>,
}

/// What the fetch/commit pipeline committed.
#[derive(Default)]
struct Committing {
    total: BatchOutcome,
    tracked_uids: Vec<u32>,
    created: Vec<u64>,
}

impl<'a> FolderSync<'a> {
    /// Reads the folder's checkpoint, the rule's regarding and the hand-set links.
    ///
    /// # Errors
    /// The store cannot be read.
    pub fn new(
        mb: &'a Arc<MailboxConfig>,
        t: &'a Tracked,
        limits: &'a FetchLimits,
        store: &'a Arc<Store>,
        cancel: Option<&'a CancellationToken>,
        run: &'a FolderRun<'a>,
    ) -> Result<FolderSync<'a>, SyncError> {
        Ok(FolderSync {
            prev: store.folder_state(&mb.name, &t.folder.name)?,
            regarding: super::folder_regarding(t, store),
            manual: store.manual_links_in(&mb.name, &t.folder.name)?,
            mb,
            t,
            limits,
            store,
            cancel,
            run,
        })
    }

    /// Syncs the folder; `None` when its STATUS shows nothing to do.
    ///
    /// # Errors
    /// IMAP errors (the caller drops the session) and store errors; what was committed stays.
    pub async fn run(
        self,
        session: &mut ImapSession,
        peer: &Peer,
    ) -> Result<Option<FolderReport>, SyncError> {
        if self.unchanged(session, peer).await? {
            return Ok(None);
        }
        let sel = self.open(session, peer).await?;
        let mut report = FolderReport {
            folder: self.t.folder.name.clone(),
            uidvalidity: sel.uidvalidity,
            ..Default::default()
        };
        let start_after = self.start_uid(&sel, &mut report)?;
        report.relinked_by_rule = self.relink(session, peer, &sel, start_after).await?;
        let uids = fetch::new_uids(session, peer, start_after, sel.exists).await?;
        report.new_messages = uids.len();
        let batches = fetch::plan_batches(&uids, self.limits);
        let last_of_all = batches
            .last()
            .map_or(start_after, |b| b.last_uid().max(start_after));
        let fetched = !batches.is_empty();
        if fetched {
            if let Some(p) = self.run.progress {
                p.folder_started(&self.mb.name, &self.t.folder.name, uids.len() as u64);
            }
            let done = self
                .pipeline(session, peer, &sel, start_after, batches)
                .await?;
            self.write_back(session, peer, &sel, &done.tracked_uids)
                .await;
            report.outcome = done.total;
            report.created = done.created;
        }
        self.complete(&sel, last_of_all, fetched)?;
        report.flags = super::flags::scan(&self, session, peer, &sel, start_after == 0).await?;
        Ok(Some(report))
    }

    /// STATUS against the checkpoint: the same UIDVALIDITY and UIDNEXT (and no rule change, no
    /// hand-set link to reset) means nothing arrived and the folder need not be opened.
    async fn unchanged(&self, session: &mut ImapSession, peer: &Peer) -> Result<bool, SyncError> {
        let Some(p) = &self.prev else {
            return Ok(false);
        };
        let (m, f) = (&self.mb.name, &self.t.folder.name);
        let metrics = crate::metrics::metrics();
        metrics.checkpoint(m, f, p.last_uid, p.synced_uid_next);
        // A folder whose last scan saw a HIGHESTMODSEQ has CONDSTORE: STATUS says whether
        // any flag changed since.
        let items = match p.highest_modseq {
            0 => "(UIDNEXT UIDVALIDITY)",
            _ => "(UIDNEXT UIDVALIDITY HIGHESTMODSEQ)",
        };
        let st = timed(
            peer,
            "STATUS",
            session.status(&self.t.folder.server_name, items),
        )
        .await?;
        if let Some(n) = st
            .uid_next
            .filter(|_| st.uid_validity == Some(p.uidvalidity))
        {
            metrics.server_uid_next(m, f, n);
        }
        let same = p.synced_at(st.uid_validity, st.uid_next);
        let interval = self.mb.field_sync.flag_scan_interval.as_secs();
        let modseq = st.highest_modseq.filter(|_| p.highest_modseq > 0);
        let flags_due = super::flags::due(p, modseq, interval);
        Ok(same && !flags_due && p.regarding == self.regarding && self.manual.is_empty())
    }

    /// EXAMINE (or SELECT, to write the keyword back), and bind an exact rule to the folder's
    /// identity so a rename keeps it tracked.
    async fn open(&self, session: &mut ImapSession, peer: &Peer) -> Result<Selected, SyncError> {
        let (mb, t) = (self.mb, self.t);
        let fs = &mb.field_sync;
        let pushes = [fs.read, fs.follow_up, fs.importance, fs.categories]
            .iter()
            .any(|d| d.to_mailbox());
        let write = mb.crm.tracked_keyword.is_some() || pushes;
        let sel = fetch::open(session, peer, &t.folder.server_name, &t.folder.name, write).await?;
        crate::metrics::metrics().server_uid_next(&mb.name, &t.folder.name, sel.uid_next);
        if t.other.is_none() && !t.rule.folder.contains('*') {
            self.store.put_rule_binding(
                &mb.name,
                &t.rule.folder,
                &RuleBinding {
                    folder: t.folder.name.clone(),
                    uidvalidity: sel.uidvalidity,
                },
            )?;
        }
        Ok(sel)
    }

    /// The UID to fetch after: the checkpoint's, or 0 when UIDVALIDITY changed (a reset, or the
    /// folder deleted and re-created under the same name: every UID may now name another
    /// message, so the folder is re-read and dedup by Message-ID matches what was tracked).
    fn start_uid(&self, sel: &Selected, report: &mut FolderReport) -> Result<u32, SyncError> {
        match &self.prev {
            Some(p) if p.uidvalidity == sel.uidvalidity => Ok(p.last_uid),
            Some(p) => {
                tracing::warn!(
                    old = p.uidvalidity,
                    new = sel.uidvalidity,
                    "UIDVALIDITY changed: re-reading the folder, matching by Message-ID"
                );
                self.store.add_alert(
                    &self.mb.name,
                    crate::track::warning(format!(
                        "folder `{}`: UIDVALIDITY changed from {} to {} (reset, or deleted and re-created); re-read it and matched tracked mail by Message-ID",
                        self.t.folder.name, p.uidvalidity, sel.uidvalidity
                    )),
                )?;
                report.uidvalidity_reset = true;
                Ok(0)
            }
            None => Ok(0),
        }
    }

    /// A changed rule re-links the messages still in the folder; a regarding set by hand is
    /// reset to the folder's (Dynamics does both, DESIGN §4.4–4.6). Returns how many moved.
    async fn relink(
        &self,
        session: &mut ImapSession,
        peer: &Peer,
        sel: &Selected,
        start_after: u32,
    ) -> Result<u32, SyncError> {
        let rule_changed = self
            .prev
            .as_ref()
            .is_some_and(|p| p.uidvalidity == sel.uidvalidity && p.regarding != self.regarding);
        if !(rule_changed && self.regarding.is_some()) && self.manual.is_empty() {
            return Ok(0);
        }
        let present: HashSet<u32> = if sel.exists == 0 {
            HashSet::new()
        } else {
            timed(peer, "UID SEARCH ALL", session.uid_search("ALL")).await?
        };
        let mut n = 0;
        if let (true, Some(r)) = (rule_changed, &self.regarding) {
            for uid in present.iter().filter(|u| **u <= start_after) {
                let src = Source {
                    mailbox: self.mb.name.clone(),
                    folder: self.t.folder.name.clone(),
                    uidvalidity: sel.uidvalidity,
                    uid: *uid,
                };
                if let Some(id) = self.store.activity_by_source(&src)? {
                    n += self.relink_one(id, r)? as u32;
                }
            }
            tracing::info!(to = %r, relinked = n, "folder rule's regarding changed: re-linked the messages still in the folder");
        }
        for (id, uid) in &self.manual {
            // A folder without a regarding keeps the hand-set one (DESIGN §4.4–4.5).
            if let (Some(r), true) = (&self.regarding, present.contains(uid)) {
                n += self.relink_one(*id, r)? as u32;
            }
            self.store.clear_manual_link(*id)?;
        }
        self.store.flush()?;
        Ok(n)
    }

    /// Links activity `id` to `regarding` unless it already is; whether it moved.
    fn relink_one(&self, id: u64, regarding: &str) -> Result<bool, StoreError> {
        let moved = self
            .store
            .activity(id)?
            .is_some_and(|a| a.regarding.as_deref() != Some(regarding));
        if moved {
            let actor = format!("rule:{}/{}", self.mb.name, self.t.folder.name);
            self.store.relink(id, Some(regarding), &actor)?;
        }
        Ok(moved)
    }

    /// The checkpoint after `last_uid` (its `synced_uid_next` is the previous one until every
    /// batch is in: see [`FolderSync::complete`]).
    fn checkpoint(&self, sel: &Selected, last_uid: u32) -> FolderState {
        let same = self
            .prev
            .as_ref()
            .filter(|p| p.uidvalidity == sel.uidvalidity);
        FolderState {
            mailbox: self.mb.name.clone(),
            folder: self.t.folder.name.clone(),
            uidvalidity: sel.uidvalidity,
            last_uid,
            uid_next: sel.uid_next,
            messages: sel.exists,
            last_sync: Some(crate::time::humantime_now()),
            rule: Some(self.t.rule.folder.clone()),
            regarding: self.regarding.clone(),
            synced_uid_next: same.map_or(0, |p| p.synced_uid_next),
            highest_modseq: same.map_or(0, |p| p.highest_modseq),
            flags_scanned_at: same.map_or(0, |p| p.flags_scanned_at),
        }
    }

    /// Fetches the batches (producer) while parsing and committing the previous ones
    /// (consumer); at most one batch waits between them.
    async fn pipeline(
        &self,
        session: &mut ImapSession,
        peer: &Peer,
        sel: &Selected,
        start_after: u32,
        batches: Vec<Batch>,
    ) -> Result<Committing, SyncError> {
        let (tx, rx) = mpsc::channel::<(Batch, Vec<RawMessage>)>(1);
        let cancel = self.cancel;
        let keyword_written = self
            .mb
            .crm
            .tracked_keyword
            .as_deref()
            .filter(|_| sel.keywords);
        let producer = async move {
            for b in batches {
                if cancel.is_some_and(|c| c.is_cancelled()) {
                    break; // shutting down: what was fetched is committed, the rest waits
                }
                let mut msgs = fetch::fetch_batch(session, peer, &b).await?;
                if let Some(k) = keyword_written {
                    // The flags each message will have once the keyword is written back.
                    for m in &mut msgs {
                        m.flags.get_or_insert_with(Vec::new).push(k.to_string());
                    }
                }
                if tx.send((b, msgs)).await.is_err() {
                    break; // the consumer failed; its error is the one reported
                }
            }
            Ok::<_, SyncError>(())
        };
        let ((), done) = tokio::try_join!(producer, self.consume(rx, sel, start_after))?;
        Ok(done)
    }

    /// Batches are parsed (every core) while the previous ones commit (one thread): commits
    /// stay in order, one at a time, and parsing only reads the store.
    ///
    /// Why batches are grouped: a batch parsed while the previous commit still runs does not
    /// wait for it; it waits, with the next one at most ([`MAX_GROUP`]), and they commit
    /// together in one transaction as soon as that commit is done (not only when another batch
    /// comes: a slow fetch does not hold a parsed batch back). Where the commit is the slow
    /// stage (PostgreSQL: a round trip per statement, a dozen statements per commit), commits
    /// grow by themselves and the parsing threads keep working; where parsing is (sled), every
    /// batch commits alone as before. A group is one transaction and one checkpoint, as a
    /// batch is.
    async fn consume(
        &self,
        mut rx: mpsc::Receiver<(Batch, Vec<RawMessage>)>,
        sel: &Selected,
        start_after: u32,
    ) -> Result<Committing, SyncError> {
        let mut done = Committing::default();
        let mut committing: Option<tokio::task::JoinHandle<Commit>> = None;
        let mut group = Group::default();
        loop {
            let next = match committing.as_mut() {
                Some(h) if group.batches > 0 => tokio::select! {
                    commit = h => Next::Committed(commit),
                    received = rx.recv() => Next::Received(received),
                },
                _ => Next::Received(rx.recv().await),
            };
            let (batch, msgs) = match next {
                Next::Committed(commit) => {
                    self.committed(&mut done, commit?)?;
                    committing = Some(self.commit_group(std::mem::take(&mut group), sel));
                    continue;
                }
                Next::Received(Some(received)) => received,
                Next::Received(None) => break,
            };
            let last = batch.last_uid().max(start_after);
            group.add(self.parse(sel, batch, msgs).await?, last);
            let busy = committing.as_ref().is_some_and(|h| !h.is_finished());
            if busy && group.batches < MAX_GROUP {
                continue;
            }
            if let Some(h) = committing.take() {
                self.committed(&mut done, h.await?)?;
            }
            committing = Some(self.commit_group(std::mem::take(&mut group), sel));
        }
        if let Some(h) = committing.take() {
            self.committed(&mut done, h.await?)?;
        }
        if group.batches > 0 {
            let h = self.commit_group(group, sel);
            self.committed(&mut done, h.await?)?;
        }
        Ok(done)
    }

    /// Parses and tracks a fetched batch on the blocking threads (every core).
    async fn parse(
        &self,
        sel: &Selected,
        batch: Batch,
        msgs: Vec<RawMessage>,
    ) -> Result<(Vec<BatchItem>, u64), SyncError> {
        let (mb, store, t) = (self.mb.clone(), self.store.clone(), self.t.clone());
        let (uidvalidity, n) = (sel.uidvalidity, msgs.len() as u64);
        let items = tokio::task::spawn_blocking(move || {
            process_batch(&mb, &t, uidvalidity, &batch, msgs, &store)
        })
        .await?;
        Ok((items, n))
    }

    /// Starts the commit of a group of parsed batches on a thread of its own.
    fn commit_group(&self, group: Group, sel: &Selected) -> tokio::task::JoinHandle<Commit> {
        let cp = self.checkpoint(sel, group.last);
        let (mb, store) = (self.mb.clone(), self.store.clone());
        tokio::task::spawn_blocking(move || {
            #[cfg(feature = "failpoints")]
            hold_batch(&mb.name, group.last);
            (
                store.commit_batch(&group.items, &cp, &mb.name),
                group.last,
                group.messages,
            )
        })
    }

    /// Counts a committed batch into `done`, the metrics and the progress bar.
    fn committed(
        &self,
        done: &mut Committing,
        (result, last, n): (Result<Committed, StoreError>, u32, u64),
    ) -> Result<(), SyncError> {
        let metrics = crate::metrics::metrics();
        let (m, f) = (&self.mb.name, &self.t.folder.name);
        let Committed {
            outcome: out,
            tracked_uids,
            created,
        } = result.inspect_err(|_| metrics.messages(m, f, "failed", n))?;
        done.tracked_uids.extend(tracked_uids);
        done.created.extend(created.iter().map(|a| a.id));
        for (what, k) in [
            ("tracked", out.created),
            ("merged", out.merged),
            ("replayed", out.replayed),
            ("quarantined", out.quarantined),
            ("skipped", out.skipped),
        ] {
            metrics.messages(m, f, what, k.into());
        }
        metrics.latency(
            m,
            self.run.detected.elapsed().as_secs_f64(),
            out.created + out.merged,
        );
        metrics.checkpoint(m, f, last, 0);
        if let Some(p) = self.run.progress {
            p.advanced(m, f, n);
        }
        tracing::debug!(
            mailbox = %m,
            last_uid = last,
            created = out.created,
            merged = out.merged,
            quarantined = out.quarantined,
            "batch committed"
        );
        done.total += out;
        Ok(())
    }

    /// Sets the keyword on what was tracked, after the commit (a keyword never claims what the
    /// store does not hold). A failure is logged: tracking is unaffected.
    async fn write_back(
        &self,
        session: &mut ImapSession,
        peer: &Peer,
        sel: &Selected,
        uids: &[u32],
    ) {
        let Some(k) = self.mb.crm.tracked_keyword.as_deref() else {
            return;
        };
        if !sel.keywords || uids.is_empty() {
            return;
        }
        if let Err(e) = fetch::store_keyword(session, peer, uids, k).await {
            tracing::warn!(error = %e, "could not set the {k} keyword; tracking is unaffected");
        }
    }

    /// When every batch is in (or there was none), the checkpoint takes the folder's UIDNEXT:
    /// from then on an unchanged STATUS means nothing to do. A sync cut short by shutdown
    /// leaves it as its last batch set it.
    fn complete(&self, sel: &Selected, last_of_all: u32, fetched: bool) -> Result<(), SyncError> {
        let (m, f) = (&self.mb.name, &self.t.folder.name);
        let all_in = !fetched
            || self
                .store
                .folder_state(m, f)?
                .is_some_and(|st| st.last_uid >= last_of_all);
        if all_in {
            self.store.put_folder_state(&FolderState {
                synced_uid_next: sel.uid_next,
                ..self.checkpoint(sel, last_of_all)
            })?;
            self.store.flush()?;
            crate::metrics::metrics().checkpoint(m, f, last_of_all, sel.uid_next);
        }
        Ok(())
    }
}

/// A commit's result, with the last UID and the number of messages it covers.
type Commit = (Result<Committed, StoreError>, u32, u64);

/// At most this many parsed batches wait for one commit (a bound on the memory they hold).
const MAX_GROUP: usize = 2;

/// What the consumer waits for: the running commit's end, or the next fetched batch.
enum Next {
    Committed(std::result::Result<Commit, tokio::task::JoinError>),
    Received(Option<(Batch, Vec<RawMessage>)>),
}

/// Parsed batches waiting to commit together.
#[derive(Default)]
struct Group {
    items: Vec<BatchItem>,
    /// The last UID of the last batch: the group's checkpoint.
    last: u32,
    messages: u64,
    batches: usize,
}

impl Group {
    fn add(&mut self, (items, messages): (Vec<BatchItem>, u64), last: u32) {
        self.items.extend(items);
        self.last = last;
        self.messages += messages;
        self.batches += 1;
        tracing::debug!(last_uid = last, waiting = self.batches, "batch parsed");
    }
}

/// Test builds only (`--features failpoints`): while the file `FOLDERTRACK_HOLD_BATCH` names
/// exists, a batch is held in hand before its commit, so that the fencing test can pause the
/// agent (SIGSTOP) with a batch in hand and let its lease lapse.
#[cfg(feature = "failpoints")]
fn hold_batch(mailbox: &str, last_uid: u32) {
    let Some(path) = std::env::var_os("FOLDERTRACK_HOLD_BATCH") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    if path.exists() {
        tracing::warn!(
            mailbox,
            last_uid,
            "failpoint FOLDERTRACK_HOLD_BATCH: holding the batch before its commit"
        );
        while path.exists() {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        tracing::warn!(
            mailbox,
            last_uid,
            "failpoint FOLDERTRACK_HOLD_BATCH: committing the held batch"
        );
    }
}
