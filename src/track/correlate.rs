//! Correlation (DESIGN §4.10): which earlier activity a message answers, in Dynamics' order,
//! inside the batch transaction; and late correlation after a pass, for the replies that were
//! tracked before the message they answer (folders are read one after another).

use super::tx::{Engine, Lookups};
use crate::model::{Activity, Correlation, CorrelationMethod, Direction, RecordRef, Writer};

/// `a` was written no later than `b` (by Date; unknown dates do not rule a match out).
pub(crate) fn not_after(a: &Activity, b: &Activity) -> bool {
    dated_not_after(a.date.as_deref(), b.date.as_deref())
}

/// [`not_after`] of two `Date` headers: an undated one is never later.
fn dated_not_after(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => crate::time::parse_date(x) <= crate::time::parse_date(y),
        _ => true,
    }
}

impl super::tx::Head {
    /// [`not_after`] of the activity this is the head of and `b`.
    pub(crate) fn not_after(&self, b: &Activity) -> bool {
        dated_not_after(self.date.as_deref(), b.date.as_deref())
    }
}

/// Decoded Outlook Thread-Index (22-byte header + 5 bytes per reply), or `None`.
pub(crate) fn thread_bytes(ti: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD
        .decode(ti.trim())
        .ok()?;
    (b.len() >= 22 && (b.len() - 22) % 5 == 0).then_some(b)
}

/// Correlation in Dynamics' order: In-Reply-To, References (newest first), the tracking token
/// (an earlier message with it), then an Outlook Thread-Index that extends a tracked one's.
pub(crate) fn correlate<L: Lookups + ?Sized>(
    l: &L,
    a: &Activity,
) -> Result<Option<Correlation>, L::Error> {
    let found =
        |method: CorrelationMethod, activity: u64| Ok(Some(Correlation { method, activity }));
    let by_id = |m: &str| -> Result<Option<u64>, L::Error> {
        for d in [Direction::Outgoing, Direction::Incoming] {
            if let Some(id) = l.activity_by_dedup(m, d)?.filter(|id| *id != a.id) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    };
    if let Some(m) = a.in_reply_to.as_deref() {
        if let Some(id) = by_id(m)? {
            return found(CorrelationMethod::InReplyTo, id);
        }
    }
    for r in a.references.iter().rev() {
        if let Some(id) = by_id(r)? {
            return found(CorrelationMethod::References, id);
        }
    }
    if let Some(t) = &a.token {
        if let Some(id) = l.activity_by_token(t)?.filter(|id| *id != a.id) {
            let earlier = l.activity_head(id)?;
            if earlier.is_some_and(|e| e.not_after(a)) {
                return found(CorrelationMethod::Token, id);
            }
        }
    }
    if let Some(ti) = a.thread_index.as_deref().and_then(thread_bytes) {
        let mut len = ti.len();
        while len > 22 {
            len -= 5;
            if let Some(id) = l.activity_by_thread(&ti[..len])? {
                return found(CorrelationMethod::ThreadIndex, id);
            }
        }
    }
    Ok(None)
}

/// Late correlation: for each activity created in a pass, tries again against everything
/// committed, and links the activities tracked earlier that turn out to answer it (by
/// In-Reply-To/References, token, Thread-Index). A late-correlated activity inherits the
/// regarding like an early one, if `writer` may write it. With `smart` (the mailbox's token
/// format), smart matching runs too. Returns how many activities were correlated.
pub(crate) fn recorrelate<E: Engine>(
    e: &E,
    created: &[Activity],
    writer: &Writer,
    smart: Option<&crate::token::TokenFormat>,
) -> Result<u32, E::Error> {
    let mut n = 0;
    let ids: Vec<&str> = created
        .iter()
        .filter_map(|x| x.message_id.as_deref())
        .collect();
    let waiting = e.awaiting_parents(&ids)?;
    for x in created {
        if x.correlation.is_none() {
            let c = match correlate(e, x)? {
                Some(c) => Some(c),
                None => smart.map(|t| smart_match(e, x, t)).transpose()?.flatten(),
            };
            if let Some(c) = c {
                n += u32::from(correlate_late(e, x.id, c, writer)?);
            }
        }
        for (child, method) in children(e, x, &waiting)? {
            let Some(c) = e.activity(child)? else {
                continue;
            };
            if c.correlation.is_some() || child == x.id || !not_after(x, &c) {
                continue;
            }
            let method = if method == CorrelationMethod::References && c.in_reply_to == x.message_id
            {
                CorrelationMethod::InReplyTo
            } else {
                method
            };
            let to_x = Correlation {
                method,
                activity: x.id,
            };
            n += u32::from(correlate_late(e, child, to_x, writer)?);
        }
    }
    Ok(n)
}

/// [`recorrelate`] for activities given by id, read back a few hundred at a time (through
/// [`Lookups::activities_for_correlation`]: their headers, not their bodies), so memory does
/// not grow with the pass.
pub(crate) fn recorrelate_ids<E: Engine>(
    e: &E,
    ids: &[u64],
    writer: &Writer,
    smart: Option<&crate::token::TokenFormat>,
) -> Result<u32, E::Error> {
    let mut n = 0;
    for chunk in ids.chunks(256) {
        let created = e.activities_for_correlation(chunk, smart.is_some())?;
        n += recorrelate(e, &created, writer, smart)?;
    }
    Ok(n)
}

/// Activities tracked before `x` that may answer it: they name its Message-ID, extend its
/// Thread-Index, or carry its token.
/// `waiting` holds what awaits the Message-IDs of the activities being recorrelated.
fn children<E: Engine>(
    e: &E,
    x: &Activity,
    waiting: &[(String, u64)],
) -> Result<Vec<(u64, CorrelationMethod)>, E::Error> {
    let mut out = Vec::new();
    if let Some(m) = &x.message_id {
        for (_, id) in waiting.iter().filter(|(w, _)| w == m) {
            out.push((*id, CorrelationMethod::References));
        }
    }
    if let Some(ti) = x.thread_index.as_deref().and_then(thread_bytes) {
        for id in e.extending_thread(&ti)? {
            out.push((id, CorrelationMethod::ThreadIndex));
        }
    }
    if let Some(t) = &x.token {
        if let Some(other) = e.activity_by_token(t)?.filter(|o| *o != x.id) {
            out.push((other, CorrelationMethod::Token));
        }
    }
    Ok(out)
}

/// Smart matching (DESIGN §4.10): an earlier activity with the same subject words and at
/// least two addresses in common.
fn smart_match<E: Engine>(
    e: &E,
    x: &Activity,
    token: &crate::token::TokenFormat,
) -> Result<Option<Correlation>, E::Error> {
    let Some(subject) = x.subject.as_deref() else {
        return Ok(None);
    };
    let norm = super::normalise_subject(subject, token);
    if norm.split_whitespace().count() < 2 {
        return Ok(None);
    }
    let mine: Vec<&str> = x
        .from
        .iter()
        .chain(&x.to)
        .chain(&x.cc)
        .filter_map(|p| p.address.as_deref())
        .collect();
    let mut best: Option<u64> = None;
    for (id, addrs) in e.by_subject(&norm) {
        let shared = addrs.iter().filter(|a| mine.contains(&a.as_str())).count();
        if id == x.id || shared < 2 || best.is_some_and(|b| b <= id) {
            continue;
        }
        if e.activity(id)?
            .is_some_and(|earlier| not_after(&earlier, x))
        {
            best = Some(id);
        }
    }
    Ok(best.map(|activity| Correlation {
        method: CorrelationMethod::Smart,
        activity,
    }))
}

/// Sets activity `id`'s correlation to `c` in one transaction, and the regarding it inherits
/// from `c`'s activity when it has none and `writer` may write that record.
fn correlate_late<E: Engine>(
    e: &E,
    id: u64,
    c: Correlation,
    writer: &Writer,
) -> Result<bool, E::Error> {
    e.transaction(|tx| {
        let Some(before) = tx.activity(id)? else {
            return Ok(false);
        };
        let mut after = before.clone();
        after.correlation = Some(c.clone());
        if after.inherits && after.regarding.is_none() {
            if let Some(r) = tx.activity_head(c.activity)?.and_then(|p| p.regarding) {
                let record = match r.parse::<RecordRef>() {
                    Ok(_) => tx.record(&r)?,
                    Err(_) => None,
                };
                if record.is_none_or(|rec| writer.can_write(&rec)) {
                    after.regarding = Some(r);
                }
            }
        }
        use super::tx::BatchTx as _;
        tx.update_activity(&before, &after)?;
        let entry = |action, field: &str, old, new| crate::model::AuditEntry {
            activity: id,
            at: crate::time::humantime_now(),
            actor: "correlation".into(),
            action,
            field: Some(field.into()),
            old,
            new,
        };
        tx.append_audit(&entry(
            crate::model::AuditAction::Correlated,
            "correlation",
            None,
            Some(format!("{} of activity {}", c.method, c.activity)),
        ))?;
        if after.regarding != before.regarding {
            tx.append_audit(&entry(
                crate::model::AuditAction::Relinked,
                "regarding",
                before.regarding.clone(),
                after.regarding.clone(),
            ))?;
        }
        Ok(true)
    })
}
