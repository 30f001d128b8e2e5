//! Deleting an activity for good (`activities untrack --delete`: mail tracked by mistake): the
//! activity and its index entries in one transaction with its audit entry, then the blobs
//! (attachments, body) that no other activity and no outgoing message uses. A blob's bytes
//! are overwritten with zeros in its pack file, not only unindexed: private mail must not stay
//! readable on disk. (sled may keep the activity's old record in its log until it compacts.)

use super::{dec, Result, SledStore, StoreError};
use crate::model::Activity;
use crate::store::{blobs_of, Deleted};
use crate::track::batch;
use crate::track::tx::Engine;
use std::collections::BTreeSet;
use std::fs::OpenOptions;

impl SledStore {
    /// Deletes activity `id` ([`batch::delete`]) and the blobs only it used; `None` when
    /// there is no such activity.
    pub(crate) fn delete_activity(
        &self,
        id: u64,
        subject_key: Option<&str>,
        actor: &str,
        reason: Option<&str>,
    ) -> Result<Option<Deleted>> {
        let at = crate::time::humantime_now();
        let gone = Engine::transaction(self, |tx| {
            batch::delete(tx, id, subject_key, actor, reason, &at)
        })?;
        let Some(a) = gone else {
            return Ok(None);
        };
        let mut candidates = blobs_of(&a);
        let total = candidates.len() as u32;
        self.drop_used(&mut candidates)?;
        for sha in &candidates {
            self.delete_blob(sha)?;
        }
        self.flush()?;
        Ok(Some(Deleted {
            blobs_deleted: candidates.len() as u32,
            blobs_kept: total - candidates.len() as u32,
        }))
    }

    /// Removes from `shas` every blob another activity or an outbox entry still uses (one
    /// pass over the store: a deletion is rare, and correctness matters more than its speed).
    fn drop_used(&self, shas: &mut BTreeSet<String>) -> Result<()> {
        for kv in self.t.activities.iter() {
            if shas.is_empty() {
                return Ok(());
            }
            let a: Activity = dec("activities", &kv?.1)?;
            for sha in blobs_of(&a) {
                shas.remove(&sha);
            }
        }
        for e in self.outbox_iter() {
            shas.remove(&e?.raw_sha256);
        }
        Ok(())
    }

    /// Unindexes a blob and zeroes its bytes in the pack file.
    fn delete_blob(&self, sha256: &str) -> Result<()> {
        let Some(loc) = self.t.blobs.remove(sha256.as_bytes())? else {
            return Ok(());
        };
        let (n, off, len) = super::blob_location(sha256, &loc)?;
        let io = |source| StoreError::Io {
            dir: self.dir.clone(),
            source,
        };
        // Not the appending writer: an O_APPEND handle ignores the offset.
        let f = OpenOptions::new()
            .write(true)
            .open(self.dir.join("blobs").join(format!("pack-{n}")))
            .map_err(io)?;
        use std::os::unix::fs::FileExt;
        f.write_all_at(&vec![0; len as usize], off).map_err(io)?;
        f.sync_data().map_err(io)
    }
}
