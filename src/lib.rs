//! foldertrack: mail dragged into tracked IMAP folders becomes CRM email activities, the way
//! Dynamics 365 folder tracking files it, for any IMAP server.
//!
//! Data flows one way, one module per stage (DESIGN §2):
//! [`config`] → [`imap`] (connect, folders, fetch) → [`parse`] → [`track`] → [`store`],
//! driven per mailbox by [`sync`]. [`records_io`] imports CRM records, [`commands`] holds
//! what the CLI commands do, so that `main.rs` only parses arguments.

pub(crate) mod agent;
#[warn(missing_docs)]
pub mod commands;
pub mod config;
pub(crate) mod control;
pub(crate) mod defaults;
#[warn(missing_docs)]
pub mod export;
pub(crate) mod http;
pub(crate) mod imap;
pub(crate) mod metrics;
#[warn(missing_docs)]
pub mod model;
#[warn(missing_docs)]
pub mod oauth;
#[warn(missing_docs)]
pub mod outbox;
pub mod parse;
#[warn(missing_docs)]
pub mod protocol;
pub(crate) mod records_io;
pub(crate) mod smtp;
#[warn(missing_docs)]
pub mod store;
#[warn(missing_docs)]
pub mod supervisor;
pub(crate) mod sync;
pub(crate) mod time;
#[warn(missing_docs)]
pub mod token;
pub mod track;
pub(crate) mod watch;
pub(crate) mod worker;
