//! The PostgreSQL schema and its versioned migrations. The tables are the product's reporting
//! surface (DESIGN §5.1): a person or a reporting tool reads `activities`, `parties`, `sources`
//! with plain SQL, so every field of an activity is a column or a child row, never an opaque
//! blob. The SQL stays within what CockroachDB and YugabyteDB also run: no advisory locks, no
//! LISTEN/NOTIFY, ids from sequences rather than a counter row every writer updates.

use super::PgError;
use postgres::{GenericClient, IsolationLevel};

/// The migrations, in order: `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. A
/// migration is never edited once released; a change is a new one.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8];

/// The schema version this binary writes and reads.
pub(crate) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Version 1: activities and their child rows, records, quarantine, alerts, checkpoints.
const V1: &str = r#"
CREATE SEQUENCE activity_id_seq;
CREATE SEQUENCE quarantine_id_seq;

-- One row per tracked email. `date` is the header's value as parsed, `date_at` the same as a
-- timestamp for range queries (NULL when unparsable). `token_key`, `thread_key` and
-- `subject_key` are lookups the tracking rules make (set at insert, at most one activity per
-- token and per Thread-Index); `token` and `thread_index` are the values as found.
CREATE TABLE activities (
    id                   bigint PRIMARY KEY,
    dedup_key            text NOT NULL,
    direction            text NOT NULL,
    subject              text,
    message_id           text,
    date                 text,
    date_at              timestamptz,
    regarding            text,
    in_reply_to          text,
    token                text,
    token_key            text,
    thread_index         text,
    thread_key           bytea,
    subject_key          text,
    correlation_method   text,
    correlation_activity bigint,
    inherits             boolean NOT NULL,
    tracked_at           text NOT NULL,
    size                 bigint NOT NULL,
    body_text            text NOT NULL,
    body_blob            text,
    alerts               jsonb NOT NULL,
    UNIQUE (dedup_key, direction)
);
CREATE UNIQUE INDEX activities_token_key ON activities (token_key);
CREATE UNIQUE INDEX activities_thread_key ON activities (thread_key);
CREATE INDEX activities_subject_key ON activities (subject_key, id);
CREATE INDEX activities_regarding ON activities (regarding, id);
CREATE INDEX activities_date_at ON activities (date_at);

-- Where the copies of an activity live: position 0 is the first source, then other_sources.
CREATE TABLE sources (
    mailbox     text NOT NULL,
    folder      text NOT NULL,
    uidvalidity bigint NOT NULL,
    uid         bigint NOT NULL,
    activity_id bigint NOT NULL REFERENCES activities (id),
    position    integer NOT NULL,
    PRIMARY KEY (mailbox, folder, uidvalidity, uid)
);
CREATE INDEX sources_activity ON sources (activity_id, position);

CREATE TABLE parties (
    activity_id bigint NOT NULL REFERENCES activities (id),
    role        text NOT NULL CHECK (role IN ('from', 'to', 'cc', 'bcc')),
    position    integer NOT NULL,
    address     text,
    name        text,
    record      text,
    records     text[] NOT NULL,
    PRIMARY KEY (activity_id, role, position)
);
CREATE INDEX parties_address ON parties (address);
CREATE INDEX parties_record ON parties (record);

CREATE TABLE activity_references (
    activity_id bigint NOT NULL REFERENCES activities (id),
    position    integer NOT NULL,
    message_id  text NOT NULL,
    PRIMARY KEY (activity_id, position)
);

-- Activities that correlated to nothing yet, by a Message-ID they name (In-Reply-To,
-- References): late correlation links them when that message is tracked.
CREATE TABLE awaiting_parent (
    message_id  text NOT NULL,
    activity_id bigint NOT NULL REFERENCES activities (id),
    PRIMARY KEY (message_id, activity_id)
);

CREATE TABLE attachments (
    activity_id bigint NOT NULL REFERENCES activities (id),
    position    integer NOT NULL,
    name        text,
    mime_type   text NOT NULL,
    size        bigint NOT NULL,
    sha256      text NOT NULL,
    skipped     text,
    PRIMARY KEY (activity_id, position)
);

CREATE TABLE records (
    reference text PRIMARY KEY,
    type      text NOT NULL,
    key       text NOT NULL,
    name      text NOT NULL,
    owner     text,
    shared    boolean NOT NULL,
    teams     text[] NOT NULL,
    emails    text[] NOT NULL
);

CREATE TABLE quarantine (
    id          bigint PRIMARY KEY,
    mailbox     text NOT NULL,
    folder      text NOT NULL,
    uidvalidity bigint NOT NULL,
    uid         bigint NOT NULL,
    reason      text NOT NULL,
    size        bigint NOT NULL,
    at          text NOT NULL,
    raw         bytea NOT NULL
);
CREATE INDEX quarantine_source ON quarantine (mailbox, folder, uidvalidity, uid);

-- An alert raised again updates its row (count, last time) instead of adding one.
CREATE TABLE alerts (
    mailbox  text NOT NULL,
    message  text NOT NULL,
    level    text NOT NULL,
    count    bigint NOT NULL,
    first_at text NOT NULL,
    at       text NOT NULL,
    PRIMARY KEY (mailbox, message)
);

CREATE TABLE checkpoints (
    mailbox         text NOT NULL,
    folder          text NOT NULL,
    uidvalidity     bigint NOT NULL,
    last_uid        bigint NOT NULL,
    uid_next        bigint NOT NULL,
    messages        bigint NOT NULL,
    last_sync       text,
    rule            text,
    regarding       text,
    synced_uid_next bigint NOT NULL,
    PRIMARY KEY (mailbox, folder)
);
"#;

/// Version 2: what the product keeps besides the tracking rules' tables, so that one database
/// (and one backup of it) is the whole state: blobs, each mailbox's health, links made by
/// hand, rule bindings, the outbox and the tracking token counters.
const V2: &str = r#"
-- Attachments, outgoing messages as sent: content-addressed, shared by every activity.
CREATE TABLE blobs (
    sha256 text PRIMARY KEY,
    bytes  bytea NOT NULL
);

-- Each mailbox's incoming health for `status` (last attempt, success, error, outages).
CREATE TABLE mailbox_state (
    mailbox text PRIMARY KEY,
    state   jsonb NOT NULL
);

-- Activities whose regarding was set by hand (`activities link`): a rule does not move them.
CREATE TABLE manual_links (
    activity_id bigint PRIMARY KEY REFERENCES activities (id)
);

-- The folder (by UIDVALIDITY) an exact rule is bound to, so a renamed folder stays tracked.
CREATE TABLE rule_bindings (
    mailbox     text NOT NULL,
    rule        text NOT NULL,
    folder      text NOT NULL,
    uidvalidity bigint NOT NULL,
    PRIMARY KEY (mailbox, rule)
);

-- Email activities created in the CRM on their way out: `state` for SQL, `entry` the whole.
CREATE TABLE outbox (
    activity_id bigint PRIMARY KEY REFERENCES activities (id),
    mailbox     text NOT NULL,
    message_id  text NOT NULL,
    state       text NOT NULL,
    entry       jsonb NOT NULL
);
CREATE INDEX outbox_state ON outbox (state);
CREATE SEQUENCE outbox_uid_seq;

-- Tracking token numbers: a row per user (its number, fixed at its first send, and its
-- counter), so writers of different users never update one row.
CREATE SEQUENCE token_user_seq;
CREATE TABLE token_users (
    user_ref text PRIMARY KEY,
    number   bigint NOT NULL UNIQUE,
    counter  bigint NOT NULL
);

CREATE INDEX records_type ON records (type);
"#;

/// Version 3: attachments and bodies are stored out of line without compression. Attachments
/// are mostly compressed already (PDF, images, archives), and compressing every value on
/// write (pglz) was half of the database's time in a first sync. PostgreSQL's own tuning:
/// on a distributed SQL engine that lacks `SET STORAGE`, this migration is the one to skip.
const V3: &str = r#"
ALTER TABLE blobs ALTER COLUMN bytes SET STORAGE EXTERNAL;
ALTER TABLE activities ALTER COLUMN body_text SET STORAGE EXTERNAL;
"#;

/// Version 4: several agents on one database (DESIGN §5.2). `agents` is who is alive (each
/// renews `last_seen`); `leases` says which agent works each mailbox until when. `epoch` is
/// the fencing token: every grant bumps it, and every batch commit of the mailbox checks it in
/// its own transaction, so an owner that was paused past its lease cannot write after the next
/// owner was granted. Times are the database's `now()`, never an agent's clock.
const V4: &str = r#"
CREATE TABLE agents (
    name       text PRIMARY KEY,
    instance   text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL
);
CREATE TABLE leases (
    mailbox           text PRIMARY KEY,
    agent             text,
    epoch             bigint NOT NULL DEFAULT 0,
    until             timestamptz,
    granted_at        timestamptz,
    release_requested boolean NOT NULL DEFAULT false
);
CREATE INDEX leases_agent ON leases (agent);
"#;

/// Version 5: the audit trail of activities, appended and never rewritten (no foreign key:
/// an activity's entries outlive it), and the activities untracked.
const V5: &str = r#"
CREATE TABLE audit (
    seq         bigserial PRIMARY KEY,
    activity_id bigint NOT NULL,
    at          text NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    field       text,
    old         text,
    new         text
);
CREATE INDEX audit_activity ON audit (activity_id, seq);
-- Activities untracked by hand: their message stays out of tracking where it is.
CREATE TABLE untracked (
    activity_id bigint PRIMARY KEY REFERENCES activities (id)
);
"#;

/// Version 6: two-way sync with the mailbox (DESIGN §4.15). `activity_fields` has an
/// activity's synced fields as columns (for reports: what is flagged for follow-up, its
/// categories) and, in `copies`, what each mailbox copy last looked like (the sync's own
/// bookkeeping, read and written only with its row). Checkpoints keep the HIGHESTMODSEQ a
/// flag scan covered and when the last one ran.
const V6: &str = r#"
CREATE TABLE activity_fields (
    activity_id bigint PRIMARY KEY REFERENCES activities (id),
    read        boolean NOT NULL,
    follow_up   boolean NOT NULL,
    importance  text NOT NULL,
    categories  text[] NOT NULL,
    copies      jsonb NOT NULL
);
CREATE INDEX activity_fields_follow_up ON activity_fields (follow_up) WHERE follow_up;
ALTER TABLE checkpoints ADD COLUMN highest_modseq bigint NOT NULL DEFAULT 0;
ALTER TABLE checkpoints ADD COLUMN flags_scanned_at bigint NOT NULL DEFAULT 0;
"#;

/// Version 7: a record's timeline on the web pages lists the activities where it is a party
/// too, newest first, a page at a time: the parties' record index gains the activity id, so a
/// page is an index range instead of a sort of every party row of the record.
const V7: &str = r#"
CREATE INDEX parties_record_activity ON parties (record, activity_id);
DROP INDEX parties_record;
"#;

/// Version 8: the rows the sync writes with every activity (its sources, parties, references,
/// attachments, awaiting parent and synced fields) keep no foreign key. Each child row is
/// written in the transaction that writes its activity, and deleting an activity deletes them
/// in the same transaction (the test `pg_a_deleted_activity_leaves_no_row_that_names_it`
/// finds every table with an `activity_id` column), so the keys guarded against nothing this
/// engine does; but PostgreSQL checked each of the 71,000 child rows of a 10,000-message sync
/// against `activities` (a lookup and a row lock each), on the commit's one connection, the
/// sync's slowest stage: 8 % of its wall time in an A/B. The relation stays documented for
/// reporting tools (`COMMENT ON COLUMN`) and every join works as before. Rows written by
/// hand (untracked, manual links, the outbox) keep theirs: they are few.
const V8: &str = r#"
ALTER TABLE sources DROP CONSTRAINT sources_activity_id_fkey;
ALTER TABLE parties DROP CONSTRAINT parties_activity_id_fkey;
ALTER TABLE activity_references DROP CONSTRAINT activity_references_activity_id_fkey;
ALTER TABLE attachments DROP CONSTRAINT attachments_activity_id_fkey;
ALTER TABLE awaiting_parent DROP CONSTRAINT awaiting_parent_activity_id_fkey;
ALTER TABLE activity_fields DROP CONSTRAINT activity_fields_activity_id_fkey;
COMMENT ON COLUMN sources.activity_id IS 'activities.id (written and deleted with it)';
COMMENT ON COLUMN parties.activity_id IS 'activities.id (written and deleted with it)';
COMMENT ON COLUMN activity_references.activity_id IS 'activities.id (written and deleted with it)';
COMMENT ON COLUMN attachments.activity_id IS 'activities.id (written and deleted with it)';
COMMENT ON COLUMN awaiting_parent.activity_id IS 'activities.id (written and deleted with it)';
COMMENT ON COLUMN activity_fields.activity_id IS 'activities.id (written and deleted with it)';
"#;

/// Brings the database's schema up to [`VERSION`], in one transaction, and refuses a database
/// whose schema is newer than this binary knows (an older binary would misread it). Two
/// processes migrating at once: one of them fails on `schema_version`'s primary key and
/// nothing of its attempt is written; it can open again.
pub(crate) fn migrate(client: &mut postgres::Client) -> Result<(), PgError> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .start()?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let found = version(&mut tx)?;
    if found > VERSION {
        return Err(PgError::SchemaTooNew {
            found,
            known: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// The highest schema version applied (0 on an empty database).
pub(crate) fn version(c: &mut impl GenericClient) -> Result<i32, PgError> {
    let row = c.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?;
    Ok(row.get(0))
}
