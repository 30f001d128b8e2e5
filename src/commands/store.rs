//! `store copy --from-sled DIR`: moves a sled store into the PostgreSQL database of the
//! config's `[store]` ([`crate::store::copy`] does the work), prints a table of what it copied
//! and verified. Exit 0 when every kind verifies, 1 on a mismatch or a failure, 2 when the
//! command cannot run as asked (not a PostgreSQL config, no sled store in DIR, a held data
//! dir, a target that is not empty).

use crate::config::{Config, StoreEngine};
use crate::protocol::{PartialFailure, Reply, UsageError};
use crate::store::copy::{copy, CopyError, Report};
use crate::store::pg::PgStore;
use crate::store::{SledStore, StoreError};
use anyhow::{anyhow, Context};
use std::path::Path;

/// Runs the copy from the sled data dir `dir` into the config's PostgreSQL store; progress
/// lines go to stderr as it goes.
pub fn copy_from_sled(config: &Config, dir: &Path) -> Reply {
    crate::store::blocking(|| Reply::from_result(run(config, dir)))
}

fn run(config: &Config, dir: &Path) -> anyhow::Result<String> {
    let StoreEngine::Postgres(settings) = &config.store else {
        return Err(UsageError(
            "store copy writes into the PostgreSQL store the config names, and this config's \
             [store] is sled: set [store] engine = \"postgres\" with url or url_env, then run \
             it again"
                .into(),
        )
        .into());
    };
    if !dir.join("db").is_dir() {
        return Err(UsageError(format!(
            "{} holds no sled store (no db/ in it): give --from-sled the data_dir of the \
             sled config",
            dir.display()
        ))
        .into());
    }
    let source =
        std::fs::canonicalize(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let sled = SledStore::open(&source, config.cache_bytes).map_err(|e| match e {
        StoreError::Locked { .. } => anyhow::Error::new(e).context(format!(
            "store copy reads the sled store in {} directly: stop the agent (foldertrack run) \
             that uses it first",
            source.display()
        )),
        e => anyhow::Error::new(e),
    })?;
    let url = settings
        .url()
        .map_err(|e| anyhow::Error::new(UsageError(e)))?;
    let pg = PgStore::open_with(&url, settings).map_err(StoreError::from)?;
    let source_text = source.display().to_string();
    eprintln!(
        "foldertrack: copying the sled store {source_text} into PostgreSQL ({})",
        pg.target()
    );
    let started = std::time::Instant::now();
    let report = copy(&sled, &pg, &source_text, &mut |line| {
        eprintln!("foldertrack: {line}")
    })
    .map_err(|e| match e {
        CopyError::Refused(m) => anyhow::Error::new(UsageError(m)),
        CopyError::Store(e) => anyhow::Error::new(e)
            .context("store copy stopped; run the same command again to resume"),
        CopyError::Interrupted(m) => anyhow!("{m}; run the same command again to resume"),
    })?;
    let text = table(&report, started.elapsed());
    if report.verified() {
        return Ok(text);
    }
    let differ: Vec<&str> = report
        .lines
        .iter()
        .filter(|l| !l.verified())
        .map(|l| l.kind)
        .collect();
    Err(PartialFailure {
        stdout: text,
        message: format!(
            "the copy does not match the sled store: {} differ (see the table). If the sled \
             store changed since the copy started (an agent ran on it), copy it again into a \
             new, empty database",
            differ.join(", ")
        ),
    }
    .into())
}

/// The summary: per kind, the sled count, the copied count, and whether counts and checksums
/// agree (with both checksums when they do not).
fn table(r: &Report, took: std::time::Duration) -> String {
    let mut out = String::new();
    if let Some(p) = &r.resumed {
        out.push_str(&format!("resumed an interrupted copy at phase {p}\n"));
    }
    out.push_str(&format!(
        "{:<16} {:>10} {:>10}  {}\n",
        "KIND", "SLED", "COPIED", "VERIFIED"
    ));
    for l in &r.lines {
        let v = match l.verified() {
            true => "yes".to_string(),
            false => format!(
                "NO (checksum sled {} postgres {})",
                &l.source_sum[..16],
                &l.target_sum[..16]
            ),
        };
        out.push_str(&format!(
            "{:<16} {:>10} {:>10}  {v}\n",
            l.kind, l.source, l.copied
        ));
    }
    out.push_str(&format!(
        "{} activities written by this run; took {:.1} s\n",
        r.activities_this_run,
        took.as_secs_f64()
    ));
    if r.verified() {
        out.push_str(
            "copy verified: point the agent's config at PostgreSQL and start it; keep the sled \
             data dir until you are satisfied\n",
        );
    }
    out
}
