//! The CLI's requests and the agent's replies: what travels over the control socket (one JSON
//! [`Request`] line in, one JSON [`Reply`] line out), and how an outcome becomes an exit code.
//!
//! Its own module, below `commands`, `control` and `supervisor`, so that each of them can name
//! the protocol without importing the others: the CLI builds requests, `control` carries
//! them, `commands` answers them. It knows only the types a request carries (records, an
//! outgoing message, an export's filter) and the errors that decide an exit code.

use crate::config::ConfigError;
use crate::export::{ActivityFilter, FilterError, Format};
use crate::model::Record;
use crate::outbox::Outgoing;
use crate::records_io::ImportError;
use crate::store::StoreError;
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// A command that reads or changes the store. The CLI builds one from its arguments; it runs
/// here in-process, or, when a running agent holds the store, inside that agent (it arrives
/// over the control socket as JSON), so an admin never has to stop the agent to look.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// `sync`: one pass here; through the agent, a wake-up of its tasks.
    Sync {
        /// Only this mailbox.
        mailbox: Option<String>,
        /// Draw progress bars (stdout is a terminal and the sync runs in this process).
        #[serde(default)]
        progress: bool,
    },
    /// Activities as JSON lines or CSV (through the agent the answer is buffered; run here it
    /// streams, see `commands::export`).
    ActivitiesExport {
        /// Which activities (`--since`, `--regarding`).
        #[serde(flatten)]
        filter: ActivityFilter,
        /// JSON lines or CSV.
        format: Format,
    },
    /// Records in the shape `records import` reads.
    RecordsExport {
        /// Only records of this type.
        rtype: Option<String>,
        /// JSON lines or CSV.
        format: Format,
    },
    /// `check`: Test & Enable, per mailbox.
    Check {
        /// Only this mailbox.
        mailbox: Option<String>,
    },
    /// Records already read and checked by the CLI (so errors name the admin's file).
    RecordsPut {
        /// The records, all written or none.
        records: Vec<Record>,
        /// Where they came from, for messages (a file name, or the command line).
        from: String,
    },
    /// `records list`.
    RecordsList {
        /// Only records of this type.
        rtype: Option<String>,
        /// JSON instead of a table.
        json: bool,
    },
    /// `records show`.
    RecordsShow {
        /// `type:key`, as typed (checked where it runs).
        record: String,
        /// JSON instead of text.
        json: bool,
    },
    /// `activities list`.
    ActivitiesList {
        /// Only activities regarding this record (`type:key`).
        regarding: Option<String>,
        /// JSON instead of a table.
        json: bool,
    },
    /// `activities show`.
    ActivitiesShow {
        /// The activity.
        id: u64,
        /// JSON instead of text.
        json: bool,
    },
    /// Set an activity's regarding by hand (reset to the folder's at the next pass, as in Dynamics).
    ActivitiesLink {
        /// The activity.
        id: u64,
        /// The record it now regards (`type:key`).
        regarding: String,
        /// Who asked (the Unix user running the command), for the audit trail.
        #[serde(default)]
        user: String,
    },
    /// `activities untrack ID`: the activity stays, its message is untracked.
    ActivitiesUntrack {
        /// The activity.
        id: u64,
        /// Delete it from the store too (`--delete`).
        #[serde(default)]
        delete: bool,
        /// Why (`--reason`), for the audit trail.
        #[serde(default)]
        reason: Option<String>,
        /// Who asked (the Unix user running the command), for the audit trail.
        #[serde(default)]
        user: String,
    },
    /// `activities set ID …`: its synced fields changed in the CRM.
    ActivitiesSet {
        /// The activity.
        id: u64,
        /// Read or not.
        read: Option<bool>,
        /// Flagged for follow-up or not.
        follow_up: Option<bool>,
        /// `high` or `normal`.
        importance: Option<String>,
        /// `+NAME` adds a category, `-NAME` removes one.
        categories: Vec<String>,
        /// Who asked (the Unix user running the command), for the audit trail.
        #[serde(default)]
        user: String,
    },
    /// `activities history ID`: its audit trail, newest first.
    ActivitiesHistory {
        /// The activity (it may have been deleted since).
        id: u64,
        /// A JSON array instead of a table.
        json: bool,
    },
    /// `agents`: the agents sharing the PostgreSQL store and what each holds.
    Agents {
        /// JSON instead of a table.
        json: bool,
    },
    /// `mailbox release NAME`: asks the mailbox's owner to hand it back.
    MailboxRelease {
        /// The mailbox's name in the config.
        name: String,
    },
    /// `status`.
    Status {
        /// The JSON report (README "Status") instead of text.
        json: bool,
    },
    /// `quarantine list`.
    QuarantineList {
        /// JSON instead of a table.
        json: bool,
    },
    /// `quarantine show`.
    QuarantineShow {
        /// The quarantined message.
        id: u64,
    },
    /// `quarantine replay`: track it again with the current configuration.
    QuarantineReplay {
        /// The quarantined message.
        id: u64,
    },
    /// `quarantine drop`.
    QuarantineDrop {
        /// The quarantined message.
        id: u64,
    },
    /// The bytes of attachment `n` (1-based) of an activity.
    ActivitiesAttachment {
        /// The activity.
        id: u64,
        /// Which attachment, from 1.
        n: usize,
    },
    /// `rules list`.
    RulesList,
    /// Compose, queue and send an email activity.
    ActivitiesSend {
        /// The message, read and checked by the CLI (attachments included).
        outgoing: Outgoing,
    },
    /// `outbox list`.
    OutboxList {
        /// JSON instead of a table.
        json: bool,
    },
    /// `outbox retry`: send a queued, failed or in-doubt entry now.
    OutboxRetry {
        /// The entry (its activity's id).
        id: u64,
    },
    /// `outbox cancel`: never send it.
    OutboxCancel {
        /// The entry (its activity's id).
        id: u64,
    },
    /// Offline check of every rule: the record exists and the mailbox owner may write it.
    RulesCheck,
}

/// What a command printed and how it ended; this is also the control socket's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// Text for stdout (escaped by the CLI when stdout is a terminal).
    pub stdout: String,
    /// Binary output (an attachment), base64 on the wire; written to stdout as bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Error text for stderr, when `code` is not 0.
    pub stderr: String,
    /// The process's exit code: 0 ok, 1 runtime failure, 2 the caller's mistake.
    pub code: u8,
}

impl Reply {
    /// Success, with `stdout` as the output.
    pub fn ok(stdout: String) -> Reply {
        Reply {
            stdout,
            binary: None,
            stderr: String::new(),
            code: 0,
        }
    }

    /// Failure: the error's text for stderr, and the exit code it calls for.
    pub fn failed(e: anyhow::Error) -> Reply {
        Reply::from_result(Err(e))
    }

    /// The reply for a command's outcome: its text, or its error with the exit code the error
    /// calls for ([`exit_code`]); a [`PartialFailure`] keeps what it printed.
    pub(crate) fn from_result(r: Result<String>) -> Reply {
        match r {
            Ok(stdout) => Reply {
                stdout,
                binary: None,
                stderr: String::new(),
                code: 0,
            },
            Err(e) => match e.downcast::<PartialFailure>() {
                Ok(p) => Reply {
                    stdout: p.stdout,
                    binary: None,
                    stderr: p.message,
                    code: 1,
                },
                Err(e) => Reply {
                    stdout: String::new(),
                    binary: None,
                    stderr: format!("{e:#}"),
                    code: exit_code(&e),
                },
            },
        }
    }
}

/// Exit code for an error: 2 for the caller's mistakes (usage, config, input file, a held
/// data dir, credentials or a database name the PostgreSQL server refuses), 1 for everything
/// that went wrong at run time (a database that is down included).
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ConfigError>().is_some()
        || e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<FilterError>().is_some()
        || e.downcast_ref::<ImportError>().is_some()
        || matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::Locked { .. } | StoreError::AgentRunning { .. })
        )
        || matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Postgres(p)) if p.is_refused())
    {
        2
    } else {
        1
    }
}

/// A command that did part of its work: what it printed goes to stdout, the failure to stderr,
/// and the exit code is 1.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct PartialFailure {
    /// What the command printed before (or besides) the failure.
    pub stdout: String,
    /// The failure, for stderr.
    pub message: String,
}

/// A mistake in how the command was called: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);
