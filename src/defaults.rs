//! Defaults of settings that the configuration fills in and lower modules act on.
//!
//! A leaf module (it knows no other part of foldertrack): `config` names these values without
//! importing the modules that use them, which import `config` (no import cycle).

use std::time::Duration;

/// How long one IMAP command may take before the connection is considered dead, unless the
/// configuration's `command_timeout` says otherwise.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How long one SQL statement on PostgreSQL may run before the server cancels it, unless
/// `[store] statement_timeout` says otherwise.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
