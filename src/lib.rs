//! foldertrack: mail dragged into tracked IMAP folders becomes CRM email activities, the way
//! Dynamics 365 folder tracking files it, for any IMAP server.
//!
//! Data flows one way, one module per stage (DESIGN §2):
//! [`config`] → `imap` (connect, folders, fetch) → [`parse`] → [`track`] → [`store`],
//! driven per mailbox by `sync`. `records_io` imports CRM records, [`commands`] holds
//! what the CLI commands do, so that `main.rs` only parses arguments.
//!
//! Modules and items are `pub(crate)` unless the binary (`src/main.rs`, a crate of its own),
//! `tests/` or `benches/` need them; each `pub` module below says who. The `pub` modules of
//! this list are held to documenting what they export (`missing_docs`).

pub(crate) mod agent;
// The CLI commands: `main.rs` dispatches requests and builds some of them here.
#[warn(missing_docs)]
pub mod commands;
// The checked configuration: `main.rs` loads it; `tests/fuzz.rs` builds mailboxes directly.
pub mod config;
pub(crate) mod control;
pub(crate) mod defaults;
// `main.rs` names the export format and filter; `tests/ops.rs` reads the CSV columns.
#[warn(missing_docs)]
pub mod export;
pub(crate) mod http;
pub(crate) mod imap;
// Mailbox leases: which mailboxes this agent works when several share a PostgreSQL store.
pub(crate) mod lease;
pub mod memory;
pub(crate) mod metrics;
// The shared data types, which `tests/fuzz.rs` builds and checks.
#[warn(missing_docs)]
pub mod model;
// Only `oauth::TokenSource`, a field of `config::MailboxConfig`.
#[warn(missing_docs)]
pub mod oauth;
// Only `outbox::Outgoing`, which `protocol::Request` carries.
#[warn(missing_docs)]
pub mod outbox;
// Stage 3, which `tests/fuzz.rs` and `tests/fixtures_parse.rs` drive directly.
pub mod parse;
// What `main.rs` sends and prints: requests and replies.
#[warn(missing_docs)]
pub mod protocol;
pub(crate) mod records_io;
pub(crate) mod smtp;
// `tests/cli.rs` holds a data dir open with `store::Store::open`.
#[warn(missing_docs)]
pub mod store;
// `main.rs` runs the agent: `supervisor::run`.
#[warn(missing_docs)]
pub mod supervisor;
pub(crate) mod sync;
pub(crate) mod time;
// Only `token::TokenFormat`, a field of `config::CrmSettings`.
#[warn(missing_docs)]
pub mod token;
// Stage 4, which `tests/fuzz.rs` drives directly.
pub mod track;
pub(crate) mod watch;
// The web pages for people (`[web]`): records' timelines, activities, mailboxes.
pub(crate) mod web;
pub(crate) mod worker;
