//! Parties (DESIGN §4.9): each address on a message resolved to CRM records.
//!
//! From resolves to one record, in Dynamics' order systemuser > contact > account > lead >
//! other types, preferring records the mailbox owner owns; To/Cc/Bcc resolve to every record
//! that has the address. An address nothing matches stays as `addressused`.

use crate::model::{Party, Record};
use crate::parse::MailAddr;
use crate::track::RecordLookup;

/// An address shared by this many records or more is too common to mean anyone (Dynamics
/// leaves such parties unresolved).
pub(crate) const AMBIGUOUS_AT: usize = 100;

fn type_rank(t: &str) -> u8 {
    match t {
        "systemuser" => 0,
        "contact" => 1,
        "account" => 2,
        "lead" => 3,
        _ => 4,
    }
}

fn matches(addr: &MailAddr, records: &dyn RecordLookup) -> Vec<Record> {
    match &addr.address {
        Some(a) => {
            let found = records.by_email(a);
            if found.len() >= AMBIGUOUS_AT {
                Vec::new()
            } else {
                found
            }
        }
        None => Vec::new(),
    }
}

/// The sender: at most one record.
pub(crate) fn resolve_from(addr: &MailAddr, owner: &str, records: &dyn RecordLookup) -> Party {
    let mut found = matches(addr, records);
    found.sort_by_key(|r| {
        (
            type_rank(&r.rtype),
            r.owner.as_deref() != Some(owner),
            r.rtype.clone(),
            r.key.clone(),
        )
    });
    Party {
        address: addr.address.clone(),
        name: addr.name.clone(),
        record: found.first().map(|r| r.reference().to_string()),
        records: Vec::new(),
    }
}

/// A recipient: every matching record.
pub(crate) fn resolve_recipient(addr: &MailAddr, records: &dyn RecordLookup) -> Party {
    let mut found = matches(addr, records);
    found.sort_by_key(|r| (type_rank(&r.rtype), r.rtype.clone(), r.key.clone()));
    let refs: Vec<String> = found.iter().map(|r| r.reference().to_string()).collect();
    Party {
        address: addr.address.clone(),
        name: addr.name.clone(),
        record: refs.first().cloned(),
        records: if refs.len() > 1 { refs } else { Vec::new() },
    }
}
