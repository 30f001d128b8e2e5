//! What a batch transaction has created but not yet sent: the new activities, written at
//! commit with one statement per table ([`super::bulk`]) instead of several statements per
//! activity, and the lookups the rules make on them meanwhile. A batch's later messages see
//! its earlier ones here (a copy in the same batch merges into them, a reply correlates to
//! them), as they would see rows already inserted.

use super::bulk::NewActivity;
use crate::model::{Activity, Direction, Source};
use std::collections::HashMap;

/// The activities a transaction created, in order, with their lookups.
#[derive(Default)]
pub(super) struct Pending {
    new: Vec<NewActivity>,
    /// Message-IDs (In-Reply-To, References) of new activities that correlated to nothing.
    awaiting: Vec<(String, u64)>,
    by_id: HashMap<u64, usize>,
    by_dedup: HashMap<(String, Direction), u64>,
    by_source: HashMap<Source, u64>,
    by_token: HashMap<String, u64>,
    by_thread: HashMap<Vec<u8>, u64>,
}

impl Pending {
    /// Adds a new activity. Its token and Thread-Index keys are taken from an earlier new
    /// activity that held them: one activity per key, the newest written (as on sled).
    pub(super) fn push(&mut self, n: NewActivity, awaiting_parent: bool) {
        let a = &n.activity;
        let id = a.id;
        if let Some(t) = &n.token_key {
            if let Some(prev) = self.by_token.insert(t.clone(), id) {
                self.with_mut(prev, |p| p.token_key = None);
            }
        }
        if let Some(t) = &n.thread_key {
            if let Some(prev) = self.by_thread.insert(t.clone(), id) {
                self.with_mut(prev, |p| p.thread_key = None);
            }
        }
        if awaiting_parent {
            for m in a.in_reply_to.iter().chain(&a.references) {
                self.awaiting.push((m.clone(), id));
            }
        }
        self.by_dedup.insert((a.dedup_key.clone(), a.direction), id);
        for s in std::iter::once(&a.source).chain(&a.other_sources) {
            self.by_source.insert(s.clone(), id);
        }
        self.by_id.insert(id, self.new.len());
        self.new.push(n);
    }

    fn with_mut(&mut self, id: u64, f: impl FnOnce(&mut NewActivity)) {
        if let Some(i) = self.by_id.get(&id) {
            f(&mut self.new[*i]);
        }
    }

    pub(super) fn activity(&self, id: u64) -> Option<&Activity> {
        self.by_id.get(&id).map(|i| &self.new[*i].activity)
    }

    /// Replaces a new activity by its updated self (its lookups stay: updates leave them);
    /// `false` when `a` is not a new one.
    pub(super) fn update(&mut self, a: &Activity) -> bool {
        let Some(i) = self.by_id.get(&a.id).copied() else {
            return false;
        };
        for s in std::iter::once(&a.source).chain(&a.other_sources) {
            self.by_source.insert(s.clone(), a.id);
        }
        self.new[i].activity = a.clone();
        true
    }

    pub(super) fn by_dedup(&self, key: &str, d: Direction) -> Option<u64> {
        self.by_dedup.get(&(key.to_string(), d)).copied()
    }

    /// The new activity that holds source `s`, if any: it holds it over any written one.
    pub(super) fn by_source(&self, s: &Source) -> Option<u64> {
        self.by_source
            .get(s)
            .copied()
            .filter(|id| self.holds(*id, s))
    }

    fn holds(&self, id: u64, s: &Source) -> bool {
        self.activity(id)
            .is_some_and(|a| a.source == *s || a.other_sources.contains(s))
    }

    pub(super) fn by_token(&self, key: &str) -> Option<u64> {
        self.by_token.get(key).copied()
    }

    pub(super) fn by_thread(&self, key: &[u8]) -> Option<u64> {
        self.by_thread.get(key).copied()
    }

    /// Everything, to be written; the set is empty afterwards.
    pub(super) fn take(&mut self) -> (Vec<NewActivity>, Vec<(String, u64)>) {
        let out = (
            std::mem::take(&mut self.new),
            std::mem::take(&mut self.awaiting),
        );
        *self = Pending::default();
        out
    }
}
