//! The `foldertrack` command line: parses arguments, loads the checked configuration, calls
//! the library and maps errors to exit codes (0 ok, 1 runtime failure, 2 usage or config).

use clap::{CommandFactory, Parser, Subcommand};
use foldertrack::commands;
use foldertrack::config::Config;
use foldertrack::protocol::{Reply, Request};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "foldertrack",
    version,
    about = "Track mail dragged into IMAP folders as CRM email activities",
    long_about = "foldertrack watches the tracked folders of IMAP mailboxes and files each message \
                  as an email activity in its embedded CRM store, linked to the record the folder's \
                  rule names, the way Dynamics 365 folder tracking does."
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "FOLDERTRACK_CONFIG",
        default_value = "foldertrack.toml"
    )]
    config: PathBuf,
    /// The data dir (control socket, local files; sled's store), instead of the config's
    /// `data_dir`: one config file then serves several agents on one host.
    #[arg(long, global = true, env = "FOLDERTRACK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log lines on stderr as text, or as one JSON object per line (for log collectors).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "FOLDERTRACK_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum MailboxCmd {
    /// Ask the agent that works the mailbox to hand it back; another agent takes it.
    Release {
        /// The mailbox's name in the config.
        name: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

impl From<ExportFormat> for foldertrack::export::Format {
    fn from(f: ExportFormat) -> Self {
        match f {
            ExportFormat::Jsonl => foldertrack::export::Format::Jsonl,
            ExportFormat::Csv => foldertrack::export::Format::Csv,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Watch every mailbox (IDLE, or polling) until SIGINT/SIGTERM; SIGHUP reloads the config.
    Run,
    /// Serve the web pages (`[web]`) without running an agent: for a reader beside the agents
    /// of a PostgreSQL store, or a sled store no agent holds. Until SIGINT/SIGTERM.
    Web,
    /// One pass over every tracked folder, then exit.
    Sync {
        /// Only this mailbox.
        #[arg(long)]
        mailbox: Option<String>,
    },
    /// Test each mailbox like Dynamics' "Test & Enable": connection, TLS, login, capabilities, rules.
    Check {
        #[arg(long)]
        mailbox: Option<String>,
    },
    /// CRM records: import, add, list, show.
    Records {
        #[command(subcommand)]
        cmd: RecordsCmd,
    },
    /// Tracked email activities.
    Activities {
        #[command(subcommand)]
        cmd: ActivitiesCmd,
    },
    /// The folder rules: list them, or check their records and permissions before they run.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Email activities on their way out over SMTP: list, retry, cancel.
    Outbox {
        #[command(subcommand)]
        cmd: OutboxCmd,
    },
    /// Messages that could not be tracked, kept with their raw bytes.
    Quarantine {
        #[command(subcommand)]
        cmd: QuarantineCmd,
    },
    /// The agents sharing a PostgreSQL store, and the mailboxes each works.
    Agents {
        #[arg(long)]
        json: bool,
    },
    /// One mailbox: `mailbox release NAME` asks its agent to hand it back (maintenance).
    Mailbox {
        #[command(subcommand)]
        cmd: MailboxCmd,
    },
    /// Per mailbox and folder: state, checkpoints, lag, errors, outages, alerts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The store itself: `store copy --from-sled DIR` moves a sled store into PostgreSQL.
    Store {
        #[command(subcommand)]
        cmd: StoreCmd,
    },
    /// Start a private Dovecot with sample mail, folders and rules, and track it.
    #[cfg(feature = "demo")]
    Demo {
        /// Where the demo keeps its config and store.
        #[arg(long, default_value = "foldertrack-demo")]
        dir: PathBuf,
        /// Leave the demo Dovecot running, to play with it.
        #[arg(long)]
        keep: bool,
    },
    /// Print a shell completion script: `foldertrack completions bash > /etc/bash_completion.d/foldertrack`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy a sled data dir (stop its agent first) into the empty PostgreSQL database of this
    /// config's [store], then verify counts and checksums; run again to resume.
    Copy {
        /// The sled store's data dir.
        #[arg(long = "from-sled", value_name = "DIR")]
        from_sled: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCmd {
    List,
    Check,
}

#[derive(Subcommand)]
enum OutboxCmd {
    List {
        #[arg(long)]
        json: bool,
    },
    /// Send a queued, failed or in-doubt ("unknown") activity now.
    Retry { id: u64 },
    /// Never send it.
    Cancel { id: u64 },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    List {
        #[arg(long)]
        json: bool,
    },
    Show {
        id: u64,
    },
    /// Track it again with the current configuration (after fixing what made it fail).
    Replay {
        id: u64,
    },
    /// Forget it.
    Drop {
        id: u64,
    },
}

#[derive(Subcommand)]
enum RecordsCmd {
    /// Import JSON lines or CSV (type,key,name,emails,owner); all or nothing.
    Import { file: PathBuf },
    /// Add or replace one record.
    Add {
        /// type:key, e.g. contact:bob
        record: String,
        #[arg(long)]
        name: Option<String>,
        /// An email address (repeat for more).
        #[arg(long = "email")]
        emails: Vec<String>,
        /// Owning user, systemuser:KEY.
        #[arg(long)]
        owner: Option<String>,
    },
    List {
        #[arg(long = "type")]
        rtype: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Show {
        record: String,
        #[arg(long)]
        json: bool,
    },
    /// Write every record (or those of one type) to stdout, in the shape `records import` reads.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        #[arg(long = "type")]
        rtype: Option<String>,
    },
}

#[derive(Subcommand)]
enum ActivitiesCmd {
    List {
        /// Only activities regarding this record (type:key).
        #[arg(long)]
        regarding: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Show {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Write attachment N (from 1) of an activity to stdout: `... attachment 7 1 > file.pdf`.
    Attachment { id: u64, n: usize },
    /// Send an email activity from a mailbox over its SMTP server, with a tracking token in the
    /// subject; the Sent copy is appended to the mailbox's Sent folder, and replies correlate.
    Send(commands::outbox::SendArgs),
    /// Set the regarding by hand (a folder rule with a regarding resets it at the next pass).
    Link {
        id: u64,
        /// type:key
        regarding: String,
    },
    /// Untrack it: it stays in the CRM, its message loses the tracked keyword and is not
    /// tracked again where it is (a new drag into a tracked folder tracks it again).
    Untrack {
        id: u64,
        /// Also delete it from the store (mail tracked by mistake): the activity, its body and
        /// the attachments no other activity shares; only its audit trail stays.
        #[arg(long)]
        delete: bool,
        /// Why, for the audit trail (with --delete).
        #[arg(long, requires = "delete")]
        reason: Option<String>,
    },
    /// Change its synced fields in the CRM; each goes to every mailbox copy where its
    /// direction (`[field_sync]`) sends CRM changes to the mailbox.
    Set {
        id: u64,
        /// on or off (`\Seen`).
        #[arg(long, value_parser = ["on", "off"])]
        read: Option<String>,
        /// on or off (`\Flagged`).
        #[arg(long, value_parser = ["on", "off"])]
        follow_up: Option<String>,
        /// high or normal (`$Important`).
        #[arg(long, value_parser = ["high", "normal"])]
        importance: Option<String>,
        /// +NAME adds a category, -NAME removes one (repeatable; an IMAP keyword in the
        /// mailbox).
        #[arg(long, allow_hyphen_values = true)]
        category: Vec<String>,
    },
    /// Its audit trail, newest first: created, re-linked (by a move, a rule, by hand, a
    /// correlation), copies added, untracked.
    History {
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// Write activities to stdout as JSON lines or CSV (streamed), e.g. for a CRM import.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Only activities tracked at or after this date or time (2026-11-28, 2026-11-28T09:30:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only activities regarding this record (type:key).
        #[arg(long)]
        regarding: Option<String>,
        /// Each activity with its audit trail (`history`; in CSV a last column, a JSON array).
        #[arg(long)]
        history: bool,
    },
}

fn init_logs(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("foldertrack={default},warn"))
    });
    // async-imap logs every command and response at debug/trace level, the LOGIN password and
    // message bodies included: whatever RUST_LOG asks, nothing below INFO passes from it (or from
    // imap-proto). Found by the reliability test that greps trace logs for the password.
    // The hint matters: without it `log` records (sled emits many at debug/trace) were all
    // converted to tracing events and then dropped, 3 % of a sync's CPU time.
    let hint = filter
        .max_level_hint()
        .unwrap_or(tracing_subscriber::filter::LevelFilter::TRACE);
    let no_secrets = tracing_subscriber::filter::filter_fn(|m| {
        let imap = m.target().starts_with("async_imap") || m.target().starts_with("imap_proto");
        !(imap && *m.level() > tracing::Level::INFO)
    })
    .with_max_level_hint(hint);
    use tracing_subscriber::prelude::*;
    // The same filters in both formats: the JSON layer must not let async-imap's trace lines
    // (with the LOGIN password) through either.
    let layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter).with_filter(no_secrets))
        .init();
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// An `activities` subcommand's request, or the reply of one that is done already (an export
/// streamed from here, an argument refused).
async fn activities_request(cmd: ActivitiesCmd, config: &Config) -> Result<Request, Reply> {
    Ok(match cmd {
        ActivitiesCmd::List { regarding, json } => Request::ActivitiesList { regarding, json },
        ActivitiesCmd::Show { id, json } => Request::ActivitiesShow { id, json },
        ActivitiesCmd::Link { id, regarding } => Request::ActivitiesLink {
            id,
            regarding,
            user: commands::activities::invoking_user(),
        },
        ActivitiesCmd::History { id, json } => Request::ActivitiesHistory { id, json },
        ActivitiesCmd::Untrack { id, delete, reason } => Request::ActivitiesUntrack {
            id,
            delete,
            reason,
            user: commands::activities::invoking_user(),
        },
        ActivitiesCmd::Set {
            id,
            read,
            follow_up,
            importance,
            category,
        } => Request::ActivitiesSet {
            id,
            read: read.map(|v| v == "on"),
            follow_up: follow_up.map(|v| v == "on"),
            importance,
            categories: category,
            user: commands::activities::invoking_user(),
        },
        ActivitiesCmd::Attachment { id, n } => Request::ActivitiesAttachment { id, n },
        ActivitiesCmd::Send(args) => commands::outbox::send_request(args).map_err(Reply::failed)?,
        ActivitiesCmd::Export {
            format,
            since,
            regarding,
            history,
        } => {
            let req = Request::ActivitiesExport {
                filter: foldertrack::export::ActivityFilter {
                    since,
                    regarding,
                    history,
                },
                format: format.into(),
            };
            return Err(commands::export(req, config, &mut std::io::stdout().lock()).await);
        }
    })
}

async fn run(cli: Cli) -> Reply {
    let fail = Reply::failed;
    if let Command::Completions { shell } = &cli.command {
        let mut out = Vec::new();
        clap_complete::generate(*shell, &mut Cli::command(), "foldertrack", &mut out);
        return Reply::ok(String::from_utf8_lossy(&out).into_owned());
    }
    #[cfg(feature = "demo")]
    if let Command::Demo { dir, keep } = &cli.command {
        return match commands::demo::run(dir, *keep).await {
            Ok(out) => Reply::ok(out),
            Err(e) => fail(e),
        };
    }
    let mut config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return fail(e.into()),
    };
    if let Some(dir) = &cli.data_dir {
        config.override_data_dir(dir);
    }
    let req = match cli.command {
        Command::Run => {
            return match foldertrack::supervisor::run(cli.config.clone(), config, shutdown_signal())
                .await
            {
                Ok(()) => Reply::ok(String::new()),
                Err(e) => fail(e),
            }
        }
        Command::Web => {
            return match foldertrack::supervisor::web(config, shutdown_signal()).await {
                Ok(()) => Reply::ok(String::new()),
                Err(e) => fail(e),
            }
        }
        Command::Sync { mailbox } => Request::Sync {
            mailbox,
            progress: std::io::IsTerminal::is_terminal(&std::io::stdout()),
        },
        Command::Check { mailbox } => Request::Check { mailbox },
        Command::Records { cmd } => match cmd {
            RecordsCmd::Import { file } => match commands::records::import_request(&file) {
                Ok(r) => r,
                Err(e) => return fail(e),
            },
            RecordsCmd::Add {
                record,
                name,
                emails,
                owner,
            } => match commands::records::add_request(&record, name, emails, owner) {
                Ok(r) => r,
                Err(e) => return fail(e),
            },
            RecordsCmd::List { rtype, json } => Request::RecordsList { rtype, json },
            RecordsCmd::Show { record, json } => Request::RecordsShow { record, json },
            RecordsCmd::Export { format, rtype } => {
                let req = Request::RecordsExport {
                    rtype,
                    format: format.into(),
                };
                return commands::export(req, &config, &mut std::io::stdout().lock()).await;
            }
        },
        Command::Activities { cmd } => match activities_request(cmd, &config).await {
            Ok(r) => r,
            Err(reply) => return reply,
        },
        Command::Rules { cmd } => match cmd {
            RulesCmd::List => Request::RulesList,
            RulesCmd::Check => Request::RulesCheck,
        },
        Command::Quarantine { cmd } => match cmd {
            QuarantineCmd::List { json } => Request::QuarantineList { json },
            QuarantineCmd::Show { id } => Request::QuarantineShow { id },
            QuarantineCmd::Replay { id } => Request::QuarantineReplay { id },
            QuarantineCmd::Drop { id } => Request::QuarantineDrop { id },
        },
        Command::Outbox { cmd } => match cmd {
            OutboxCmd::List { json } => Request::OutboxList { json },
            OutboxCmd::Retry { id } => Request::OutboxRetry { id },
            OutboxCmd::Cancel { id } => Request::OutboxCancel { id },
        },
        Command::Status { json } => Request::Status { json },
        Command::Agents { json } => Request::Agents { json },
        Command::Mailbox {
            cmd: MailboxCmd::Release { name },
        } => Request::MailboxRelease { name },
        Command::Store {
            cmd: StoreCmd::Copy { from_sled },
        } => return commands::store::copy_from_sled(&config, &from_sled),
        #[cfg(feature = "demo")]
        Command::Demo { .. } => unreachable!("handled above"),
        Command::Completions { .. } => unreachable!("handled above"),
    };
    commands::dispatch(req, &config).await
}

/// jemalloc, one arena, small thread caches: the first sync is about a fifth faster than on
/// glibc, at the same peak RSS. glibc with one arena (it kept 140 MB in its per-thread arenas
/// otherwise) made every thread wait on that arena's lock: 10 % of the sync's CPU time went to
/// futex waits. jemalloc's default (an arena per CPU, big thread caches) was as fast but kept
/// 95 MB; these settings keep 59 MB (README Performance, measured A/B in one run).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol before `main`: one arena; thread caches only
/// for blocks up to 1 KiB (bigger ones, the mail buffers, go back to the arena at once);
/// freed pages returned to the system without the "muzzy" middle state.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: Option<&'static u8> =
    Some(&b"narenas:1,tcache_max:1024,muzzy_decay_ms:0\0"[0]);

/// The agent's memory trimmer (`foldertrack::memory`) gives jemalloc's freed pages back to the
/// system at once after mail was fetched, instead of after its 10 s decay.
fn purge_freed_pages() {
    // SAFETY: "arena.4096.purge" (4096 = MALLCTL_ARENAS_ALL) takes and returns no data: both
    // pointers null, length 0; the name is NUL-terminated.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"arena.4096.purge".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    debug_assert_eq!(rc, 0, "jemalloc refused arena.4096.purge");
}

/// One IMAP connection per mailbox: 1,000 mailboxes need more descriptors than the usual soft
/// limit of 1,024. Raise the soft limit to the hard one (no privilege needed).
fn raise_fd_limit() {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Everything foldertrack creates (the data dir, sled's files, blob packs, the control socket,
/// the demo's files) is for its own user alone, whatever umask it was started with: the store
/// holds every tracked mail. Set before any thread or file exists.
fn private_umask() {
    #[cfg(unix)]
    // SAFETY: umask only sets this process's file creation mask.
    unsafe {
        libc::umask(0o077);
    }
}

fn main() -> ExitCode {
    private_umask();
    foldertrack::memory::set_trim(purge_freed_pages);
    raise_fd_limit();
    let cli = Cli::parse();
    init_logs(cli.verbose, cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("foldertrack: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let reply = rt.block_on(run(cli));
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        print!(
            "{}",
            foldertrack::commands::show::escape_controls(&reply.stdout)
        );
    } else {
        print!("{}", reply.stdout);
    }
    if let Some(b64) = &reply.binary {
        use base64::Engine;
        use std::io::Write;
        match base64::engine::general_purpose::STANDARD.decode(b64) {
            Ok(bytes) => {
                if let Err(e) = std::io::stdout().write_all(&bytes) {
                    eprintln!("foldertrack: writing to stdout: {e}");
                    return ExitCode::from(1);
                }
            }
            Err(e) => {
                eprintln!("foldertrack: bad binary answer: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if !reply.stderr.is_empty() {
        eprintln!("foldertrack: {}", reply.stderr);
    }
    ExitCode::from(reply.code)
}

#[cfg(test)]
mod tests {
    /// jemalloc's own reading of its options: the settings above are taken (a misnamed
    /// `malloc_conf` symbol would leave an arena per CPU), and the trimmer's purge is accepted.
    #[test]
    fn the_allocator_runs_with_one_arena_and_purges() {
        let mut narenas: u32 = 0;
        let mut len = std::mem::size_of::<u32>();
        // SAFETY: "opt.narenas" is an unsigned int; the out pointer and its length match.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"opt.narenas".as_ptr(),
                (&mut narenas as *mut u32).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!((rc, narenas), (0, 1));
        super::purge_freed_pages();
    }
}
