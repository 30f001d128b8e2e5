//! Who is reading, and what they may see. An admin (the token) sees everything. A person named
//! by the reverse proxy is a `systemuser` record and reads under the CRM's security model
//! (DESIGN §4.11), the same rule that decides what their mail may be linked to: records they
//! own, records owned by nobody or shared, records a team of theirs may write; an activity when
//! its regarding record is one of those, or when it came from a mailbox of theirs.

use crate::model::{Activity, Record, RecordRef, Writer};
use crate::store::Store;
use std::cell::RefCell;
use std::collections::HashMap;

/// The reader of a page.
#[derive(Debug, Clone)]
pub(crate) enum Viewer {
    Admin,
    User(Writer),
}

impl Viewer {
    pub(crate) fn can_read_record(&self, r: &Record) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::User(w) => w.can_write(r),
        }
    }

    /// Whether the mailbox whose owner is `owner` (`systemuser:KEY`) is this reader's.
    pub(crate) fn owns(&self, owner: &str) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::User(w) => w.user == owner,
        }
    }
}

/// One page's answers about activities, with the records it looked up kept (a timeline asks
/// about the same few records 25 times). A record that cannot be read from the store counts
/// as not readable: the page shows less rather than too much.
pub(crate) struct Access<'a> {
    viewer: &'a Viewer,
    store: &'a Store,
    /// Mailbox name → its owner, from the configuration.
    owners: HashMap<String, String>,
    records: RefCell<HashMap<String, bool>>,
}

impl<'a> Access<'a> {
    pub(crate) fn new(
        viewer: &'a Viewer,
        store: &'a Store,
        config: &crate::config::Config,
    ) -> Access<'a> {
        Access {
            viewer,
            store,
            owners: config
                .mailboxes
                .iter()
                .map(|m| (m.name.clone(), m.owner.to_string()))
                .collect(),
            records: RefCell::default(),
        }
    }

    /// Whether the reader may see the record named `reference` (`type:key`).
    pub(crate) fn record(&self, reference: &str) -> bool {
        if matches!(self.viewer, Viewer::Admin) {
            return true;
        }
        if let Some(&known) = self.records.borrow().get(reference) {
            return known;
        }
        let readable = reference
            .split_once(':')
            .and_then(|(t, k)| self.store.record(&RecordRef::new(t, k)).ok().flatten())
            .is_some_and(|r| self.viewer.can_read_record(&r));
        self.records
            .borrow_mut()
            .insert(reference.to_string(), readable);
        readable
    }

    /// Whether the reader may see `a`.
    pub(crate) fn activity(&self, a: &Activity) -> bool {
        matches!(self.viewer, Viewer::Admin)
            || a.regarding.as_deref().is_some_and(|r| self.record(r))
            || std::iter::once(&a.source)
                .chain(&a.other_sources)
                .filter_map(|s| self.owners.get(&s.mailbox))
                .any(|o| self.viewer.owns(o))
    }
}
