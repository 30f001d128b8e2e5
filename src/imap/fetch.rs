//! Reading messages: SELECT/EXAMINE with UIDVALIDITY, the list of new UIDs with their sizes,
//! batches bounded by count and bytes, and `UID FETCH … BODY.PEEK[]` so nothing is marked read.

use super::{timed, ImapError, ImapSession, Peer};
use crate::config::FetchLimits;
use futures::TryStreamExt;

/// The state of a folder as SELECT/EXAMINE reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selected {
    pub uidvalidity: u32,
    pub uid_next: u32,
    pub exists: u32,
    /// Opened read-write and PERMANENTFLAGS has `\*`: keywords can be stored.
    pub keywords: bool,
    /// HIGHESTMODSEQ (RFC 7162), when the server keeps mod-sequences (CONDSTORE, enabled at
    /// login): flag changes can then be asked for with `CHANGEDSINCE`.
    pub highest_modseq: Option<u64>,
}

/// One fetched message.
#[derive(Debug, Clone)]
pub(crate) struct RawMessage {
    pub uid: u32,
    pub size: u64,
    pub raw: Vec<u8>,
    /// Its flags when fetched (`None` for a message not read from a folder: a replay).
    pub flags: Option<Vec<String>>,
}

/// A unit of work: the messages fetched together and committed in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// (uid, size) to fetch.
    pub fetch: Vec<(u32, u64)>,
    /// (uid, size) over the hard size limit: not fetched, quarantined with the reason.
    pub oversize: Vec<(u32, u64)>,
}

impl Batch {
    /// The checkpoint after this batch: its highest UID.
    pub(crate) fn last_uid(&self) -> u32 {
        self.fetch
            .iter()
            .chain(&self.oversize)
            .map(|(u, _)| *u)
            .max()
            .unwrap_or(0)
    }
    pub(crate) fn bytes(&self) -> u64 {
        self.fetch.iter().map(|(_, s)| s).sum()
    }
}

/// Opens `server_name` read-only (EXAMINE): tracking only reads.
pub(crate) async fn examine(
    session: &mut ImapSession,
    peer: &Peer,
    server_name: &str,
    config_name: &str,
) -> Result<Selected, ImapError> {
    open(session, peer, server_name, config_name, false).await
}

/// Opens a folder, read-only (EXAMINE) or read-write (SELECT, for keyword write-back). Reading
/// uses `BODY.PEEK[]` either way, so nothing is marked read.
pub(crate) async fn open(
    session: &mut ImapSession,
    peer: &Peer,
    server_name: &str,
    config_name: &str,
    write: bool,
) -> Result<Selected, ImapError> {
    let verb = if write { "SELECT" } else { "EXAMINE" };
    let r = tokio::time::timeout(peer.timeout, async {
        if write {
            session.select(server_name).await
        } else {
            session.examine(server_name).await
        }
    })
    .await
    .map_err(|_| ImapError::Timeout {
        addr: peer.addr.clone(),
        what: format!("{verb} {config_name}"),
        secs: peer.timeout.as_secs(),
    })?;
    let mb = r.map_err(|e| match e {
        async_imap::error::Error::No(m) | async_imap::error::Error::Bad(m) => {
            ImapError::FolderMissing {
                addr: peer.addr.clone(),
                folder: config_name.to_string(),
                message: m,
            }
        }
        other => ImapError::Protocol {
            addr: peer.addr.clone(),
            what: format!("{verb} {config_name}"),
            message: other.to_string(),
        },
    })?;
    let uidvalidity = mb.uid_validity.ok_or_else(|| ImapError::Protocol {
        addr: peer.addr.clone(),
        what: format!("{verb} {config_name}"),
        message: "the server sent no UIDVALIDITY, so UIDs cannot be trusted".into(),
    })?;
    Ok(Selected {
        uidvalidity,
        uid_next: mb.uid_next.unwrap_or(0),
        exists: mb.exists,
        keywords: write
            && mb
                .permanent_flags
                .iter()
                .any(|f| matches!(f, async_imap::types::Flag::MayCreate)),
        highest_modseq: mb.highest_modseq.filter(|m| *m > 0),
    })
}

/// Sets `keyword` on `uids` of the selected folder (write-back, so mail clients show what is
/// tracked). Silent: the server sends no FETCH back.
pub(crate) async fn store_keyword(
    session: &mut ImapSession,
    peer: &Peer,
    uids: &[u32],
    keyword: &str,
) -> Result<(), ImapError> {
    for chunk in uids.chunks(500) {
        let cmd = format!(
            "UID STORE {} +FLAGS.SILENT ({keyword})",
            uid_set(chunk.iter().copied())
        );
        timed(peer, "UID STORE", session.run_command_and_check_ok(&cmd)).await?;
    }
    Ok(())
}

/// UIDs above `after` with their sizes, ascending. `UID FETCH n:*` returns the last message
/// even when its UID is below `n` (RFC 3501 §6.4.8), hence the filter.
pub(crate) async fn new_uids(
    session: &mut ImapSession,
    peer: &Peer,
    after: u32,
    exists: u32,
) -> Result<Vec<(u32, u64)>, ImapError> {
    if exists == 0 {
        return Ok(Vec::new());
    }
    let set = format!("{}:*", after.saturating_add(1));
    // Streamed, not collected: every `Fetch` owns its response buffer (about 4 KB), so a
    // collected list of a 50,000-message folder held 200 MB at the start of the pass, and
    // with one malloc arena that stayed the process's RSS (found with heaptrack).
    let mut out: Vec<(u32, u64)> = timed(peer, "UID FETCH (RFC822.SIZE)", async {
        let mut s = session.uid_fetch(&set, "(UID RFC822.SIZE)").await?;
        let mut out = Vec::new();
        while let Some(f) = s.try_next().await? {
            if let Some(uid) = f.uid.filter(|u| *u > after) {
                out.push((uid, u64::from(f.size.unwrap_or(0))));
            }
        }
        Ok::<_, async_imap::error::Error>(out)
    })
    .await?;
    out.sort_unstable();
    out.dedup_by_key(|(u, _)| *u);
    Ok(out)
}

/// Splits the new UIDs into batches of at most `batch_messages` messages and `batch_bytes`
/// bytes (a single larger message gets a batch of its own).
pub(crate) fn plan_batches(uids: &[(u32, u64)], limits: &FetchLimits) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut cur = Batch::default();
    for &(uid, size) in uids {
        if size > limits.max_message_bytes {
            cur.oversize.push((uid, size));
            continue;
        }
        if !cur.fetch.is_empty()
            && (cur.fetch.len() >= limits.batch_messages || cur.bytes() + size > limits.batch_bytes)
        {
            batches.push(std::mem::take(&mut cur));
        }
        cur.fetch.push((uid, size));
    }
    if !cur.fetch.is_empty() || !cur.oversize.is_empty() {
        batches.push(cur);
    }
    batches
}

/// Compresses UIDs (ascending) into an IMAP sequence set: `1:5,7,9:12`.
pub(crate) fn uid_set(uids: impl IntoIterator<Item = u32>) -> String {
    let mut out = String::new();
    let mut run: Option<(u32, u32)> = None;
    let push = |out: &mut String, (a, b): (u32, u32)| {
        if !out.is_empty() {
            out.push(',');
        }
        if a == b {
            out.push_str(&a.to_string());
        } else {
            out.push_str(&format!("{a}:{b}"));
        }
    };
    for u in uids {
        run = match run {
            Some((a, b)) if u == b + 1 => Some((a, u)),
            Some(r) => {
                push(&mut out, r);
                Some((u, u))
            }
            None => Some((u, u)),
        };
    }
    if let Some(r) = run {
        push(&mut out, r);
    }
    out
}

/// Fetches the bodies of one batch with `BODY.PEEK[]`. Messages expunged meanwhile are simply
/// missing from the result. The whole response stream is drained before returning.
pub(crate) async fn fetch_batch(
    session: &mut ImapSession,
    peer: &Peer,
    batch: &Batch,
) -> Result<Vec<RawMessage>, ImapError> {
    if batch.fetch.is_empty() {
        return Ok(Vec::new());
    }
    let set = uid_set(batch.fetch.iter().map(|(u, _)| *u));
    let first = batch.fetch[0].0;
    let last = batch.last_uid();
    timed(peer, "UID FETCH (BODY.PEEK[])", async {
        let mut stream = session
            .uid_fetch(&set, "(UID RFC822.SIZE FLAGS BODY.PEEK[])")
            .await?;
        let mut out = Vec::with_capacity(batch.fetch.len());
        while let Some(f) = stream.try_next().await? {
            let (Some(uid), Some(body)) = (f.uid, f.body()) else {
                continue;
            };
            if uid < first || uid > last {
                continue;
            }
            out.push(RawMessage {
                uid,
                size: u64::from(f.size.unwrap_or(body.len() as u32)),
                raw: body.to_vec(),
                flags: Some(f.flags().map(|f| flag_text(&f)).collect()),
            });
        }
        Ok(out)
    })
    .await
}

/// A flag as IMAP writes it (`\\Seen`, `$Important`).
pub(crate) fn flag_text(f: &async_imap::types::Flag<'_>) -> String {
    use async_imap::types::Flag;
    match f {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => "\\Recent".into(),
        Flag::MayCreate => "\\*".into(),
        Flag::Custom(c) => c.to_string(),
    }
}

/// The flags of the messages in `sets` (UID sets, each one command so no command line grows
/// without bound: [`uid_sets`]); with `changed_since`, only of those whose flags changed after
/// that mod-sequence (RFC 7162 `CHANGEDSINCE`). Also returns the highest MODSEQ the answers
/// carried.
pub(crate) async fn fetch_flags(
    session: &mut ImapSession,
    peer: &Peer,
    sets: &[String],
    changed_since: Option<u64>,
) -> Result<(Vec<(u32, Vec<String>)>, u64), ImapError> {
    let mut out = Vec::new();
    let mut top = 0;
    let query = match changed_since {
        Some(m) => format!("(UID FLAGS) (CHANGEDSINCE {m})"),
        None => "(UID FLAGS)".to_string(),
    };
    for set in sets {
        timed(peer, "UID FETCH (FLAGS)", async {
            let mut stream = session.uid_fetch(set, &query).await?;
            while let Some(f) = stream.try_next().await? {
                let Some(uid) = f.uid else { continue };
                top = top.max(f.modseq.unwrap_or(0));
                out.push((uid, f.flags().map(|f| flag_text(&f)).collect()));
            }
            Ok(())
        })
        .await?;
    }
    out.sort_by_key(|(u, _)| *u);
    out.dedup_by_key(|(u, _)| *u);
    Ok((out, top))
}

/// `uids` as UID sets of at most 2,000 UIDs each.
pub(crate) fn uid_sets(uids: &[u32]) -> Vec<String> {
    uids.chunks(2000)
        .map(|c| uid_set(c.iter().copied()))
        .collect()
}

/// Adds `add` and removes `remove` on `uid` of the selected folder (silent: no FETCH back).
pub(crate) async fn store_flags(
    session: &mut ImapSession,
    peer: &Peer,
    uid: u32,
    add: &[String],
    remove: &[String],
) -> Result<(), ImapError> {
    for (sign, flags) in [("+", add), ("-", remove)] {
        if flags.is_empty() {
            continue;
        }
        let cmd = format!("UID STORE {uid} {sign}FLAGS.SILENT ({})", flags.join(" "));
        timed(peer, "UID STORE", session.run_command_and_check_ok(&cmd)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_compress_runs() {
        assert_eq!(uid_set([1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set([9]), "9");
        assert_eq!(uid_set([]), "");
    }

    #[test]
    fn batches_respect_count_bytes_and_hard_limit() {
        let l = FetchLimits {
            batch_messages: 3,
            batch_bytes: 100,
            max_message_bytes: 1000,
        };
        let uids = [
            (1, 10),
            (2, 10),
            (3, 10),
            (4, 10),
            (5, 95),
            (6, 5000),
            (7, 200),
            (8, 1),
        ];
        let b = plan_batches(&uids, &l);
        let fetched: Vec<Vec<u32>> = b
            .iter()
            .map(|b| b.fetch.iter().map(|x| x.0).collect())
            .collect();
        assert_eq!(
            fetched,
            vec![vec![1, 2, 3], vec![4], vec![5], vec![7], vec![8]]
        );
        assert_eq!(
            b[2].oversize,
            vec![(6, 5000)],
            "oversize rides with the batch it falls in"
        );
        assert_eq!(b[2].last_uid(), 6);
        assert_eq!(
            b.iter().map(|b| b.last_uid()).collect::<Vec<_>>(),
            vec![3, 4, 6, 7, 8]
        );
    }
}
