//! An in-memory engine: the tracking rules' unit tests run on it (no IMAP, no sled), and it is
//! the reference the conformance suite holds every engine to. A transaction works on a copy of
//! the state and swaps it in on success, so an error leaves nothing behind; one transaction
//! runs at a time.

use super::tx::{BatchTx, Broken, Counter, Engine, Findable, Lookups, Scans};
use super::ActivityLookup;
use crate::model::{
    Activity, Alert, AuditEntry, Direction, FolderState, QuarantineEntry, Record, Source,
};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// Everything the engine holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    pub activities: BTreeMap<u64, Activity>,
    by_dedup: BTreeMap<(String, &'static str), u64>,
    by_source: BTreeMap<String, u64>,
    by_token: BTreeMap<String, u64>,
    by_thread: BTreeMap<Vec<u8>, u64>,
    awaiting: BTreeSet<(String, u64)>,
    subjects: BTreeSet<(String, u64)>,
    pub records: BTreeMap<String, Record>,
    pub quarantine: BTreeMap<u64, (QuarantineEntry, Vec<u8>)>,
    /// (mailbox, text) → (times raised, last raised at).
    pub alerts: BTreeMap<(String, String), (u64, String)>,
    pub checkpoints: BTreeMap<(String, String), FolderState>,
    /// Every activity's audit trail, oldest first.
    pub audit: Vec<AuditEntry>,
    /// Activities untracked.
    pub untracked: BTreeSet<u64>,
    /// Synced fields, by activity.
    pub fields: BTreeMap<u64, crate::model::FieldState>,
    counters: BTreeMap<&'static str, u64>,
}

fn source_key(s: &Source) -> String {
    format!("{}\0{}\0{}\0{}", s.mailbox, s.folder, s.uidvalidity, s.uid)
}

fn sources(a: &Activity) -> Vec<&Source> {
    std::iter::once(&a.source).chain(&a.other_sources).collect()
}

/// The in-memory engine.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    state: Mutex<State>,
}

/// A transaction: a copy of the state.
pub(crate) struct MemTx {
    state: RefCell<State>,
}

impl Memory {
    /// A copy of the committed state, for a test to look at.
    pub(crate) fn snapshot(&self) -> State {
        self.state.lock().expect("memory engine poisoned").clone()
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().expect("memory engine poisoned"))
    }
}

impl State {
    fn activity(&self, id: u64) -> Option<Activity> {
        self.activities.get(&id).cloned()
    }
    fn by_dedup(&self, key: &str, d: Direction) -> Option<u64> {
        self.by_dedup.get(&(key.to_string(), d.as_str())).copied()
    }
    fn by_token(&self, t: &str) -> Option<u64> {
        self.by_token.get(&t.to_ascii_uppercase()).copied()
    }
}

macro_rules! lookups {
    ($ty:ty, $read:ident) => {
        impl Lookups for $ty {
            type Error = Broken;
            fn activity(&self, id: u64) -> Result<Option<Activity>, Broken> {
                Ok(self.$read(|s| s.activity(id)))
            }
            fn activity_by_dedup(&self, key: &str, d: Direction) -> Result<Option<u64>, Broken> {
                Ok(self.$read(|s| s.by_dedup(key, d)))
            }
            fn activity_by_source(&self, src: &Source) -> Result<Option<u64>, Broken> {
                Ok(self.$read(|s| s.by_source.get(&source_key(src)).copied()))
            }
            fn activity_by_token(&self, t: &str) -> Result<Option<u64>, Broken> {
                Ok(self.$read(|s| s.by_token(t)))
            }
            fn activity_by_thread(&self, b: &[u8]) -> Result<Option<u64>, Broken> {
                Ok(self.$read(|s| s.by_thread.get(b).copied()))
            }
            fn record(&self, r: &str) -> Result<Option<Record>, Broken> {
                Ok(self.$read(|s| s.records.get(r).cloned()))
            }
        }
    };
}

impl MemTx {
    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.borrow())
    }
    fn write<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.borrow_mut())
    }
}

lookups!(Memory, read);
lookups!(MemTx, read);

impl BatchTx for MemTx {
    fn is_quarantined(&self, src: &Source) -> Result<bool, Broken> {
        Ok(self.read(|s| s.quarantine.values().any(|(e, _)| e.source == *src)))
    }

    fn next_id(&self, c: Counter) -> Result<u64, Broken> {
        let name = match c {
            Counter::Activity => "activity",
            Counter::Quarantine => "quarantine",
        };
        Ok(self.write(|s| {
            let n = s.counters.entry(name).or_default();
            *n += 1;
            *n
        }))
    }

    fn insert_activity(&self, a: &Activity, find: Findable<'_>) -> Result<(), Broken> {
        self.write(|s| {
            if s.activities.contains_key(&a.id) {
                return Err(Broken(format!("activity {} written twice", a.id)));
            }
            s.by_dedup
                .insert((a.dedup_key.clone(), a.direction.as_str()), a.id);
            s.by_source.insert(source_key(&a.source), a.id);
            if let (Some(t), true) = (&a.token, find.by_token) {
                s.by_token.insert(t.to_ascii_uppercase(), a.id);
            }
            if find.awaiting_parent {
                for p in a.in_reply_to.iter().chain(&a.references) {
                    s.awaiting.insert((p.clone(), a.id));
                }
            }
            if let Some(ti) = a
                .thread_index
                .as_deref()
                .and_then(super::correlate::thread_bytes)
            {
                s.by_thread.insert(ti, a.id);
            }
            if let Some(k) = find.subject_key {
                s.subjects.insert((k.to_string(), a.id));
            }
            s.activities.insert(a.id, a.clone());
            Ok(())
        })
    }

    fn update_activity(&self, before: &Activity, after: &Activity) -> Result<(), Broken> {
        self.write(|s| {
            for src in sources(before) {
                s.by_source.remove(&source_key(src));
            }
            for src in sources(after) {
                s.by_source.insert(source_key(src), after.id);
            }
            s.activities.insert(after.id, after.clone());
            Ok(())
        })
    }

    fn insert_record_once(&self, r: &Record) -> Result<(), Broken> {
        self.write(|s| {
            s.records
                .entry(r.reference().to_string())
                .or_insert_with(|| r.clone());
        });
        Ok(())
    }

    fn raise_alert(&self, mailbox: &str, alert: &Alert, at: &str) -> Result<(), Broken> {
        self.write(|s| {
            let e = s
                .alerts
                .entry((mailbox.to_string(), alert.message.clone()))
                .or_default();
            e.0 += 1;
            e.1 = at.to_string();
        });
        Ok(())
    }

    fn quarantine(&self, e: &QuarantineEntry, raw: &[u8]) -> Result<(), Broken> {
        self.write(|s| s.quarantine.insert(e.id, (e.clone(), raw.to_vec())));
        Ok(())
    }

    fn put_checkpoint(&self, st: &FolderState) -> Result<(), Broken> {
        self.write(|s| {
            s.checkpoints
                .insert((st.mailbox.clone(), st.folder.clone()), st.clone())
        });
        Ok(())
    }

    fn append_audit(&self, e: &AuditEntry) -> Result<(), Broken> {
        self.write(|s| s.audit.push(e.clone()));
        Ok(())
    }

    fn is_untracked(&self, id: u64) -> Result<bool, Broken> {
        Ok(self.state.borrow().untracked.contains(&id))
    }

    fn set_untracked(&self, id: u64, untracked: bool) -> Result<(), Broken> {
        self.write(|s| match untracked {
            true => s.untracked.insert(id),
            false => s.untracked.remove(&id),
        });
        Ok(())
    }

    fn field_state(&self, id: u64) -> Result<Option<crate::model::FieldState>, Broken> {
        Ok(self.state.borrow().fields.get(&id).cloned())
    }

    fn put_field_state(&self, id: u64, st: &crate::model::FieldState) -> Result<(), Broken> {
        self.write(|s| s.fields.insert(id, st.clone()));
        Ok(())
    }

    fn delete_activity(&self, a: &Activity, _subject_key: Option<&str>) -> Result<(), Broken> {
        let id = a.id;
        self.write(|s| {
            s.activities.remove(&id);
            s.by_dedup.retain(|_, v| *v != id);
            s.by_source.retain(|_, v| *v != id);
            s.by_token.retain(|_, v| *v != id);
            s.by_thread.retain(|_, v| *v != id);
            s.awaiting.retain(|(_, v)| *v != id);
            s.subjects.retain(|(_, v)| *v != id);
            s.fields.remove(&id);
            s.untracked.remove(&id);
        });
        Ok(())
    }
}

impl Scans for Memory {
    fn awaiting_parent(&self, message_id: &str) -> Result<Vec<u64>, Broken> {
        Ok(self.read(|s| {
            s.awaiting
                .iter()
                .filter(|(m, _)| m == message_id)
                .map(|(_, id)| *id)
                .collect()
        }))
    }
    fn extending_thread(&self, bytes: &[u8]) -> Result<Vec<u64>, Broken> {
        Ok(self.read(|s| {
            s.by_thread
                .iter()
                .filter(|(k, _)| k.len() > bytes.len() && k.starts_with(bytes))
                .map(|(_, id)| *id)
                .collect()
        }))
    }
}

impl ActivityLookup for Memory {
    fn by_subject(&self, subject: &str) -> Vec<(u64, Vec<String>)> {
        self.read(|s| {
            s.subjects
                .iter()
                .filter(|(k, _)| k == subject)
                .filter_map(|(_, id)| s.activities.get(id))
                .map(|a| {
                    let addrs = a.from.iter().chain(&a.to).chain(&a.cc).chain(&a.bcc);
                    (a.id, addrs.filter_map(|p| p.address.clone()).collect())
                })
                .collect()
        })
    }
}

impl Engine for Memory {
    type Tx<'t> = MemTx;
    fn transaction<T>(&self, f: impl Fn(&MemTx) -> Result<T, Broken>) -> Result<T, Broken> {
        let mut committed = self.state.lock().expect("memory engine poisoned");
        let tx = MemTx {
            state: RefCell::new(committed.clone()),
        };
        let out = f(&tx)?;
        *committed = tx.state.into_inner();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_engine_passes_the_conformance_suite() {
        super::super::conformance::suite(&super::Memory::default());
    }
}
