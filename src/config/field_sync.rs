//! The `[field_sync]` table (global) and `[mailbox.field_sync]` (per mailbox): which fields of
//! an email activity sync with its message's flags, in which direction, and how often the
//! flags are scanned where the server cannot say what changed (DESIGN §4.15).
//!
//! As in Dynamics' field synchronization, the admin sets a direction per field; a mailbox's
//! table overrides the global one key by key.

use super::{ConfigError, Locator};
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// One `field_sync` table as written.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFieldSync {
    read: Option<Spanned<String>>,
    follow_up: Option<Spanned<String>>,
    importance: Option<Spanned<String>>,
    categories: Option<Spanned<String>>,
    flag_scan_interval: Option<Spanned<i64>>,
}

crate::model::text_enum! {
    /// Which way a field syncs between the CRM and the mailbox.
    pub enum SyncDirection {
        /// Not synced: each side keeps its own.
        None = "none",
        /// The mailbox's flag sets the CRM's field; a change in the CRM stays there.
        ToCrm = "to_crm",
        /// The CRM's field is written to the mailbox; a change in a mail client stays there.
        ToMailbox = "to_mailbox",
        /// Both ways; when both sides changed, the CRM wins (DESIGN §4.15).
        Both = "both",
    }
}

impl SyncDirection {
    /// A change in the mailbox reaches the CRM.
    pub fn to_crm(self) -> bool {
        matches!(self, SyncDirection::ToCrm | SyncDirection::Both)
    }
    /// A change in the CRM reaches the mailbox.
    pub fn to_mailbox(self) -> bool {
        matches!(self, SyncDirection::ToMailbox | SyncDirection::Both)
    }
}

/// A mailbox's field sync settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSync {
    /// `read` ↔ `\Seen`.
    pub read: SyncDirection,
    /// `follow_up` ↔ `\Flagged`.
    pub follow_up: SyncDirection,
    /// `importance` ↔ `$Important`.
    pub importance: SyncDirection,
    /// `categories` ↔ the other keywords.
    pub categories: SyncDirection,
    /// Without CONDSTORE, every tracked message's flags are fetched at most this often.
    pub flag_scan_interval: Duration,
}

impl Default for FieldSync {
    /// Dynamics' defaults for email: read state and importance come from the mailbox; follow-up
    /// flags and categories go both ways.
    fn default() -> FieldSync {
        FieldSync {
            read: SyncDirection::ToCrm,
            follow_up: SyncDirection::Both,
            importance: SyncDirection::ToCrm,
            categories: SyncDirection::Both,
            flag_scan_interval: Duration::from_secs(300),
        }
    }
}

/// The mailbox's settings: its own table's keys, else the global table's, else the defaults.
/// `prefix` names the table in errors (`field_sync` or `mailbox[2].field_sync`).
pub(super) fn check(
    loc: &Locator<'_>,
    prefix: &str,
    own: Option<&RawFieldSync>,
    global: Option<&RawFieldSync>,
) -> Result<FieldSync, ConfigError> {
    let d = FieldSync::default();
    let pick = |f: fn(&RawFieldSync) -> &Option<Spanned<String>>| {
        own.and_then(|r| f(r).as_ref().map(|v| (v, prefix.to_string())))
            .or_else(|| global.and_then(|r| f(r).as_ref().map(|v| (v, "field_sync".to_string()))))
    };
    let direction = |key: &str, v: Option<(&Spanned<String>, String)>, default| match v {
        None => Ok(default),
        Some((v, table)) => SyncDirection::from_text(v.get_ref()).ok_or_else(|| {
            loc.err(
                Some(v.span()),
                &format!("{table}.{key}"),
                "must be one of none, to_crm, to_mailbox, both",
            )
        }),
    };
    let interval = match own
        .and_then(|r| r.flag_scan_interval.as_ref().map(|v| (v, prefix)))
        .or_else(|| global.and_then(|r| r.flag_scan_interval.as_ref().map(|v| (v, "field_sync"))))
    {
        None => d.flag_scan_interval,
        Some((v, _)) if (1..=86_400).contains(v.get_ref()) => {
            Duration::from_secs(*v.get_ref() as u64)
        }
        Some((v, table)) => {
            return Err(loc.err(
                Some(v.span()),
                &format!("{table}.flag_scan_interval"),
                "must be a number of seconds from 1 to 86400",
            ))
        }
    };
    Ok(FieldSync {
        read: direction("read", pick(|r| &r.read), d.read)?,
        follow_up: direction("follow_up", pick(|r| &r.follow_up), d.follow_up)?,
        importance: direction("importance", pick(|r| &r.importance), d.importance)?,
        categories: direction("categories", pick(|r| &r.categories), d.categories)?,
        flag_scan_interval: interval,
    })
}
