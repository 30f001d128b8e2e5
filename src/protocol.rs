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
    Sync {
        mailbox: Option<String>,
        /// Draw progress bars (stdout is a terminal and the sync runs in this process).
        #[serde(default)]
        progress: bool,
    },
    /// Activities as JSON lines or CSV (through the agent the answer is buffered; run here it
    /// streams, see [`export`]).
    ActivitiesExport {
        #[serde(flatten)]
        filter: ActivityFilter,
        format: Format,
    },
    /// Records in the shape `records import` reads.
    RecordsExport {
        rtype: Option<String>,
        format: Format,
    },
    Check {
        mailbox: Option<String>,
    },
    /// Records already read and checked by the CLI (so errors name the admin's file).
    RecordsPut {
        records: Vec<Record>,
        from: String,
    },
    RecordsList {
        rtype: Option<String>,
        json: bool,
    },
    RecordsShow {
        record: String,
        json: bool,
    },
    ActivitiesList {
        regarding: Option<String>,
        json: bool,
    },
    ActivitiesShow {
        id: u64,
        json: bool,
    },
    /// Set an activity's regarding by hand (reset to the folder's at the next pass, as in Dynamics).
    ActivitiesLink {
        id: u64,
        regarding: String,
    },
    Status {
        json: bool,
    },
    QuarantineList {
        json: bool,
    },
    QuarantineShow {
        id: u64,
    },
    QuarantineReplay {
        id: u64,
    },
    QuarantineDrop {
        id: u64,
    },
    /// The bytes of attachment `n` (1-based) of an activity.
    ActivitiesAttachment {
        id: u64,
        n: usize,
    },
    RulesList,
    /// Compose, queue and send an email activity.
    ActivitiesSend {
        outgoing: Outgoing,
    },
    OutboxList {
        json: bool,
    },
    OutboxRetry {
        id: u64,
    },
    OutboxCancel {
        id: u64,
    },
    /// Offline check of every rule: the record exists and the mailbox owner may write it.
    RulesCheck,
}

/// What a command printed and how it ended; this is also the control socket's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub stdout: String,
    /// Binary output (an attachment), base64 on the wire; written to stdout as bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// Error text for stderr, when `code` is not 0.
    pub stderr: String,
    pub code: u8,
}

impl Reply {
    pub fn ok(stdout: String) -> Reply {
        Reply {
            stdout,
            binary: None,
            stderr: String::new(),
            code: 0,
        }
    }

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
/// data dir), 1 for everything that went wrong at run time.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ConfigError>().is_some()
        || e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<FilterError>().is_some()
        || e.downcast_ref::<ImportError>().is_some()
        || matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::Locked { .. })
        )
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
    pub stdout: String,
    pub message: String,
}

/// A mistake in how the command was called: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub String);
