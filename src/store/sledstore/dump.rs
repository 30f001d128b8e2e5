//! Reading a whole sled store out, a row at a time, for `store copy --from-sled`
//! ([`crate::store::copy`]): every tree the product's methods only answer point questions
//! about (mailbox states, rule bindings, manual links, the lookups of the tracking rules, the
//! token counters in `meta`) streamed in key order, so a copy never holds the store in memory.

use super::{dec, keys, Result, SledStore, StoreError};
use crate::model::{Activity, QuarantineEntry};
use crate::store::{MailboxState, RuleBinding, StoredAlert};

/// A tracking token user's numbers, as sled keeps them in `meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenUser {
    pub user: String,
    pub number: u64,
    pub counter: u64,
}

/// The id counters of `meta`: the last value each handed out (0: none yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub activity: u64,
    pub quarantine: u64,
    pub outbox_uid: u64,
    pub token_users: u64,
}

fn text(tree: &'static str, b: &[u8]) -> Result<String> {
    String::from_utf8(b.to_vec()).map_err(|e| StoreError::Corrupt {
        tree,
        message: e.to_string(),
    })
}

/// Splits `a\0b` at its first NUL.
fn split(tree: &'static str, k: &[u8]) -> Result<(String, String)> {
    let i = k.iter().position(|b| *b == 0).ok_or(StoreError::Corrupt {
        tree,
        message: "key without its separator".into(),
    })?;
    Ok((text(tree, &k[..i])?, text(tree, &k[i + 1..])?))
}

/// A `text\0<id BE>` index key: the text and the id.
fn text_and_id(tree: &'static str, k: &[u8]) -> Result<(String, u64)> {
    if k.len() < 9 || k[k.len() - 9] != 0 {
        return Err(StoreError::Corrupt {
            tree,
            message: "index key without its id".into(),
        });
    }
    Ok((text(tree, &k[..k.len() - 9])?, keys::u64_suffix(k)))
}

impl SledStore {
    /// Every activity whole (its body read back from the packs), in id order from `after`
    /// (exclusive; 0: from the first).
    pub(crate) fn activities_from(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<Activity>> + '_ {
        let start = after.saturating_add(1).to_be_bytes();
        self.t.activities.range(start..).map(move |kv| {
            let (_, v) = kv?;
            self.dec_activity(&v)
        })
    }

    /// The highest activity id stored (0: none).
    pub(crate) fn last_activity_id(&self) -> Result<u64> {
        Ok(self
            .t
            .activities
            .last()?
            .map(|(k, _)| keys::u64_of(&k))
            .unwrap_or(0))
    }

    /// The lookups a tracking rule wrote for `a` besides its own fields: its token key when it
    /// is the activity its tracking token finds, and its Thread-Index key when it holds it.
    pub(crate) fn activity_keys(&self, a: &Activity) -> Result<(Option<String>, Option<Vec<u8>>)> {
        let id = a.id;
        let token = match &a.token {
            Some(t) => {
                let k = keys::token(t);
                let held = self.t.activity_by_token.get(&k)?;
                held.filter(|v| keys::u64_of(v) == id)
                    .map(|_| t.to_ascii_uppercase())
            }
            None => None,
        };
        let thread = match a
            .thread_index
            .as_deref()
            .and_then(crate::track::correlate::thread_bytes)
        {
            Some(b) => self
                .t
                .activity_by_thread
                .get(&b)?
                .filter(|v| keys::u64_of(v) == id)
                .map(|_| b),
            None => None,
        };
        Ok((token, thread))
    }

    /// Every (subject key, activity id) of smart matching's index.
    pub(crate) fn subject_keys(&self) -> impl Iterator<Item = Result<(String, u64)>> + '_ {
        self.t
            .activity_by_subject
            .iter()
            .map(|kv| text_and_id("activity_by_subject", &kv?.0))
    }

    /// Every (Message-ID, activity id) of activities awaiting a parent.
    pub(crate) fn awaiting_parents(&self) -> impl Iterator<Item = Result<(String, u64)>> + '_ {
        self.t
            .activity_by_parent
            .iter()
            .map(|kv| text_and_id("activity_by_parent", &kv?.0))
    }

    /// Ids of the activities linked by hand, in order.
    pub(crate) fn manual_link_ids(&self) -> impl Iterator<Item = Result<u64>> + '_ {
        self.t
            .manual_links
            .iter()
            .map(|kv| Ok(keys::u64_of(&kv?.0)))
    }

    /// Every rule binding: (mailbox, rule, binding), in key order.
    pub(crate) fn rule_bindings(
        &self,
    ) -> impl Iterator<Item = Result<(String, String, RuleBinding)>> + '_ {
        self.t.rule_bindings.iter().map(|kv| {
            let (k, v) = kv?;
            let (mailbox, rule) = split("rule_bindings", &k)?;
            Ok((mailbox, rule, dec("rule_bindings", &v)?))
        })
    }

    /// Every stored mailbox state (named), in name order.
    pub(crate) fn mailbox_states(&self) -> impl Iterator<Item = Result<MailboxState>> + '_ {
        self.t.mailboxes.iter().map(|kv| {
            let (k, v) = kv?;
            let st: MailboxState = dec("mailboxes", &v)?;
            Ok(MailboxState {
                name: text("mailboxes", &k)?,
                ..st
            })
        })
    }

    /// Every quarantined message with its raw bytes, in id order.
    pub(crate) fn quarantine_with_raw(
        &self,
    ) -> impl Iterator<Item = Result<(QuarantineEntry, Vec<u8>)>> + '_ {
        self.t.quarantine.iter().map(move |kv| {
            let (k, v) = kv?;
            let e: QuarantineEntry = dec("quarantine", &v)?;
            let raw = self
                .t
                .quarantine_raw
                .get(&k)?
                .map(|r| r.to_vec())
                .unwrap_or_default();
            Ok((e, raw))
        })
    }

    /// Every alert, in (mailbox, message) order.
    /// Every audit entry, by activity, oldest first.
    pub(crate) fn all_audit(&self) -> impl Iterator<Item = Result<crate::model::AuditEntry>> + '_ {
        self.t.audit.iter().map(|kv| dec("audit", &kv?.1))
    }

    /// Every activity's synced fields, by activity.
    pub(crate) fn all_fields(
        &self,
    ) -> impl Iterator<Item = Result<(u64, crate::model::FieldState)>> + '_ {
        self.t.fields.iter().map(|kv| {
            let (k, v) = kv?;
            Ok((super::keys::u64_of(&k), dec("fields", &v)?))
        })
    }

    pub(crate) fn all_alerts(&self) -> impl Iterator<Item = Result<StoredAlert>> + '_ {
        self.t.alerts.iter().map(|kv| dec("alerts", &kv?.1))
    }

    /// The sha256 of every blob, in order (read each with [`SledStore::blob`]).
    pub(crate) fn blob_keys(&self) -> impl Iterator<Item = Result<String>> + '_ {
        self.t.blobs.iter().map(|kv| text("blobs", &kv?.0))
    }

    /// The tracking token users and their counters, by user.
    pub(crate) fn token_users(&self) -> Result<Vec<TokenUser>> {
        let mut out = Vec::new();
        for kv in self.t.meta.scan_prefix("token_user:") {
            let (k, v) = kv?;
            let user = text("meta", &k["token_user:".len()..])?;
            let counter = self
                .t
                .meta
                .get(format!("token_counter:{user}"))?
                .map(|c| keys::u64_of(&c))
                .unwrap_or(0);
            out.push(TokenUser {
                user,
                number: keys::u64_of(&v),
                counter,
            });
        }
        Ok(out)
    }

    /// The id counters (see [`Counters`]).
    pub(crate) fn counters(&self) -> Result<Counters> {
        let get = |k: &str| -> Result<u64> {
            Ok(self.t.meta.get(k)?.map(|v| keys::u64_of(&v)).unwrap_or(0))
        };
        Ok(Counters {
            activity: get("next_activity_id")?,
            quarantine: get("next_quarantine_id")?,
            outbox_uid: get("next_outbox_uid")?,
            token_users: get("token_users")?,
        })
    }

    /// Every outbox entry, oldest first, a row at a time.
    pub(crate) fn outbox_iter(
        &self,
    ) -> impl Iterator<Item = Result<crate::store::OutboxEntry>> + '_ {
        self.t.outbox.iter().map(|kv| dec("outbox", &kv?.1))
    }
}

impl SledStore {
    /// Every (tracking token key, activity id) of the token lookup.
    pub(crate) fn token_keys(&self) -> impl Iterator<Item = Result<(String, u64)>> + '_ {
        self.t.activity_by_token.iter().map(|kv| {
            let (k, v) = kv?;
            Ok((text("activity_by_token", &k)?, keys::u64_of(&v)))
        })
    }

    /// Every (Thread-Index key, activity id) of the Thread-Index lookup.
    pub(crate) fn thread_keys(&self) -> impl Iterator<Item = Result<(Vec<u8>, u64)>> + '_ {
        self.t.activity_by_thread.iter().map(|kv| {
            let (k, v) = kv?;
            Ok((k.to_vec(), keys::u64_of(&v)))
        })
    }
}
