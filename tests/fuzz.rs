//! Property tests for the parse and track stages (DESIGN §2, stages 3–4): the real fixtures in
//! `fixtures/mail/` are mutated (truncated, bit-flipped, spliced, bloated, nested, flooded with
//! boundaries, salted with garbage) and every result must be *tracked or quarantined*:
//! `parse_message_with` returns `Ok` (and then `track::build` makes a draft) or `Err` (the
//! quarantine reason), never panics, never overflows the stack, and stays within bounded time
//! and memory.
//!
//! Every case runs on a test thread, whose stack is the 2 MB default, as are the
//! `std::thread::scope` workers `sync::process_batch` parses on. Memory is measured with a
//! counting global allocator, per thread, and time as the thread's CPU time. The case counts
//! (about 3,100 generated cases) are set so that the whole file runs
//! in well under a minute in a debug build on two cores; `FUZZ_CASES_SCALE=10` multiplies them
//! for a longer local run.

use foldertrack::config::{
    AuthMethod, LookupBy, MailboxConfig, OtherMail, PasswordSource, Regarding, Rule, TlsMode,
    UnresolvedSender,
};
use foldertrack::model::{Direction, Draft, Record, RecordRef, Source};
use foldertrack::parse::{
    parse_message, parse_message_with, ParseError, ParsedAttachment, ParsedMessage, MAX_BODY_CHARS,
};
use foldertrack::track::testing::MemRecords;
use foldertrack::track::{self, rules::RuleMatch, ActivityLookup, FolderContext};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::Config as ProptestConfig;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Memory: the test kit's counting allocator, read per thread.

#[global_allocator]
static ALLOC: testkit::alloc::Counting = testkit::alloc::Counting;

// ---------------------------------------------------------------------------------------------
// Fixtures and the tracking context.

struct Fixture {
    name: String,
    raw: Vec<u8>,
}

/// Every fixture; the 8 MB one (009) is last, and only [`small`] ones are mutated per case.
fn fixtures() -> &'static [Fixture] {
    static F: OnceLock<Vec<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mail");
        let mut v: Vec<Fixture> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .map(|p| Fixture {
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                raw: std::fs::read(&p).unwrap(),
            })
            .collect();
        v.sort_by_key(|f| (f.raw.len() > 1 << 20, f.name.clone()));
        assert!(v.len() >= 30, "fixtures/mail/ holds the corpus");
        v
    })
}

/// The fixtures small enough to mutate thousands of times.
fn small() -> &'static [Fixture] {
    let all = fixtures();
    let n = all.iter().take_while(|f| f.raw.len() <= 1 << 20).count();
    &all[..n]
}

fn fixture(name_prefix: &str) -> &'static [u8] {
    &fixtures()
        .iter()
        .find(|f| f.name.starts_with(name_prefix))
        .unwrap()
        .raw
}

fn rec(rtype: &str, key: &str, email: &str, owner: Option<&str>, teams: &[&str]) -> Record {
    Record {
        rtype: rtype.into(),
        key: key.into(),
        name: key.into(),
        emails: if email.is_empty() {
            Vec::new()
        } else {
            vec![email.into()]
        },
        owner: owner.map(Into::into),
        shared: false,
        teams: teams.iter().map(|t| t.to_string()).collect(),
    }
}

/// The fuzz tests' tiny in-memory CRM.
fn standard_records() -> MemRecords {
    MemRecords(vec![
        rec("systemuser", "alice", "alice@example.com", None, &["sales"]),
        rec(
            "contact",
            "bob",
            "bob@acme.com",
            Some("systemuser:alice"),
            &[],
        ),
        rec(
            "account",
            "Acme",
            "info@acme.com",
            Some("systemuser:alice"),
            &[],
        ),
        // Owned by someone else and not shared: the "may not write" path.
        rec("account", "Initech", "", Some("systemuser:zed"), &[]),
        rec("lead", "dave", "dave@initech.com", None, &[]),
    ])
}

/// Every subject correlates with one earlier activity between Bob and Alice.
struct Activities;

impl ActivityLookup for Activities {
    fn by_subject(&self, _subject: &str) -> Vec<(u64, Vec<String>)> {
        vec![(
            7,
            vec!["bob@acme.com".to_string(), "alice@example.com".to_string()],
        )]
    }
}

fn mailbox(variant: u8) -> MailboxConfig {
    let mut crm = foldertrack::config::CrmSettings::default();
    match variant % 4 {
        1 => {
            crm.smart_matching = true;
            crm.unresolved_sender = UnresolvedSender::Contact;
        }
        2 => {
            crm.unresolved_sender = UnresolvedSender::Lead;
            crm.track_other_mail = OtherMail::Known;
        }
        3 => {
            crm.smart_matching = true;
            crm.track_other_mail = OtherMail::Replies;
        }
        _ => {}
    }
    MailboxConfig {
        name: "alice".into(),
        owner: RecordRef::new("systemuser", "alice"),
        host: "127.0.0.1".into(),
        port: 143,
        tls: TlsMode::None,
        ca_file: None,
        user: "alice".into(),
        address: Some("alice@example.com".into()),
        password: PasswordSource::Env("FOLDERTRACK_FUZZ_UNUSED".into()),
        auth: AuthMethod::Login,
        oauth: None,
        sent_folder: None,
        rules: vec![
            Rule {
                folder: "INBOX/Acme".into(),
                regarding: Regarding::Fixed(RecordRef::new("account", "Acme")),
            },
            Rule {
                folder: "INBOX/Customers/*".into(),
                regarding: Regarding::Lookup {
                    rtype: "account".into(),
                    by: LookupBy::Name,
                },
            },
            Rule {
                folder: "INBOX/Projects".into(),
                regarding: Regarding::None,
            },
        ],
        watch: Default::default(),
        crm,
        field_sync: Default::default(),
        max_message_bytes: foldertrack::config::FetchLimits::default().max_message_bytes,
        command_timeout: std::time::Duration::from_secs(120),
        smtp: None,
    }
}

/// Tracks `parsed` the way `sync::track_one` does, in one of four folder situations.
fn track_it(parsed: ParsedMessage, variant: u8, size: u64) -> Draft {
    let mb = mailbox(variant);
    let records = standard_records();
    let (folder, is_sent, other) = match variant % 4 {
        0 => ("INBOX/Acme", false, None),
        1 => ("INBOX/Customers/Initech", false, None),
        2 => ("Sent", true, Some(OtherMail::Known)),
        _ => ("INBOX", false, Some(OtherMail::Replies)),
    };
    let rule = other
        .is_none()
        .then(|| track::rules::match_folder(&mb.rules, folder))
        .flatten();
    let rule: Option<RuleMatch<'_>> = rule;
    let ctx = FolderContext {
        mailbox: &mb,
        folder: folder.into(),
        is_sent,
        rule,
        other,
        writer: track::writer_of(&mb, &records),
    };
    let source = Source {
        mailbox: mb.name.clone(),
        folder: folder.into(),
        uidvalidity: 1,
        uid: 42,
    };
    track::build(parsed, &ctx, source, size, &records, &Activities)
}

// ---------------------------------------------------------------------------------------------
// The property every input must satisfy.

/// CPU-time bound per message (parse + track) on the parsing thread, generous for unoptimised
/// builds. CPU time, not wall time, so that the other tests running in parallel on a two-core
/// machine do not make it flaky; [`MAX_WALL`] still catches a hang.
const MAX_TIME: Duration = Duration::from_secs(2);
const MAX_WALL: Duration = Duration::from_secs(10);

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Heap bound per message: a fixed allowance plus a multiple of the input. What the parser may
/// legitimately hold is the decoded parts (≤ the input), their text (≤ 3× for lossy UTF-8),
/// the part table and the activity copy; anything beyond this is runaway growth.
fn max_heap(input: usize) -> usize {
    32 * 1024 * 1024 + 40 * input
}

/// What one message became.
#[derive(Debug)]
enum Outcome {
    Tracked,
    Quarantined(ParseError),
}

/// Parses and tracks `raw`, asserting everything the agent relies on. Panics (so the test
/// fails) on any violation, and of course on any panic inside parse or track.
fn check(raw: &[u8], variant: u8) -> Outcome {
    let base = testkit::alloc::reset_thread_peak();
    let start = Instant::now();
    let cpu_start = thread_cpu();
    let mut seen: Vec<(u64, usize, String)> = Vec::new();
    let mut sink = |a: &ParsedAttachment, bytes: &[u8]| -> Option<String> {
        seen.push((a.size, bytes.len(), a.sha256.clone()));
        // Refuse some, as the real sink does for big or blocked files.
        (a.size > 64 * 1024).then(|| "over max_attachment_size".to_string())
    };
    let parsed = parse_message_with(raw, &mut sink);
    let outcome = match parsed {
        Ok(p) => {
            assert!(
                p.body_text.len() <= MAX_BODY_CHARS + 100,
                "body_text is {} bytes, over MAX_BODY_CHARS",
                p.body_text.len()
            );
            assert_eq!(
                p.attachments.len(),
                seen.len(),
                "every attachment goes through the sink exactly once"
            );
            // The sink may see them in another order (files recovered from a broken multipart
            // are listed last), so compare as sets.
            for (size, got, _) in &seen {
                assert_eq!(*size, *got as u64, "attachment size ≠ bytes the sink got");
            }
            let mut listed: Vec<(u64, &str)> = p
                .attachments
                .iter()
                .map(|a| (a.size, a.sha256.as_str()))
                .collect();
            let mut sunk: Vec<(u64, &str)> = seen
                .iter()
                .map(|(size, _, sha)| (*size, sha.as_str()))
                .collect();
            listed.sort_unstable();
            sunk.sort_unstable();
            assert_eq!(
                listed, sunk,
                "the attachments listed are the ones the sink got"
            );
            for a in &p.attachments {
                assert_eq!(a.sha256.len(), 64);
                assert!(
                    a.size <= raw.len() as u64,
                    "attachment larger than the message"
                );
                if a.size > 64 * 1024 {
                    assert!(a.skipped.is_some(), "sink's refusal is recorded");
                }
            }
            // Each attachment needs at least a delimiter line or a header in the input.
            assert!(
                p.attachments.len() <= raw.len() / 4 + 4,
                "{} attachments from {} bytes",
                p.attachments.len(),
                raw.len()
            );
            if p.message_id.is_none() {
                assert!(p.content_hash.is_some(), "no Message-ID: hashed instead");
            }
            let (body_len, n_att) = (p.body_text.len(), p.attachments.len());
            let draft = track_it(p, variant, raw.len() as u64);
            let a = &draft.activity;
            assert!(!a.dedup_key.is_empty(), "a tracked message has a dedup key");
            assert_eq!(a.body_text.len(), body_len);
            assert_eq!(a.attachments.len(), n_att);
            assert_eq!(a.size, raw.len() as u64);
            if variant % 4 == 2 {
                assert_eq!(a.direction, Direction::Outgoing, "Sent is outgoing");
            }
            Outcome::Tracked
        }
        Err(e) => {
            assert!(!e.to_string().is_empty(), "a quarantine reason is given");
            Outcome::Quarantined(e)
        }
    };
    let took = thread_cpu() - cpu_start;
    let wall = start.elapsed();
    let heap = testkit::alloc::thread_peak_since(base);
    assert!(
        took < MAX_TIME && wall < MAX_WALL,
        "took {took:?} of CPU ({wall:?} wall) for a {} byte message ({outcome:?})",
        raw.len()
    );
    assert!(
        heap <= max_heap(raw.len()),
        "peak heap {heap} bytes for a {} byte message ({outcome:?})",
        raw.len()
    );
    outcome
}

// ---------------------------------------------------------------------------------------------
// Message surgery.

/// Length of the header block, including the blank line that ends it (or all of `raw`).
fn header_end(raw: &[u8]) -> usize {
    let mut i = 0;
    while i < raw.len() {
        let line_end = raw[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| i + p + 1);
        let line = &raw[i..line_end];
        if line == b"\n" || line == b"\r\n" {
            return line_end;
        }
        i = line_end;
    }
    raw.len()
}

/// The header fields (each ending with its line break), without the blank line after them.
fn headers_of(raw: &[u8]) -> &[u8] {
    let end = header_end(raw);
    let h = &raw[..end];
    if h.ends_with(b"\n\r\n") {
        &h[..end - 2]
    } else if h.ends_with(b"\n\n") {
        &h[..end - 1]
    } else {
        h
    }
}

/// Removes every `name:` field (with its continuation lines) from the header block.
fn drop_field(m: &mut Vec<u8>, name: &[u8]) {
    let end = header_end(m);
    let mut out = Vec::with_capacity(m.len());
    let mut dropping = false;
    for line in m[..end].split_inclusive(|&b| b == b'\n') {
        let cont = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !cont {
            dropping = line.len() > name.len()
                && line[..name.len()].eq_ignore_ascii_case(name)
                && line[name.len()] == b':';
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(&m[end..]);
    *m = out;
}

/// `inner` as the only part of a multipart, as an encoded `message/rfc822` (RFC 2045 forbids
/// that encoding for messages, but mail-parser decodes and parses such parts again).
fn encoded_rfc822(inner: &[u8], base64: bool) -> Vec<u8> {
    use base64::Engine;
    let mut m = b"From: Bob <bob@acme.com>\r\nTo: alice@example.com\r\nSubject: encoded\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"enc\"\r\n\r\n--enc\r\n"
        .to_vec();
    if base64 {
        m.extend_from_slice(
            b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        for chunk in b64.as_bytes().chunks(76) {
            m.extend_from_slice(chunk);
            m.extend_from_slice(b"\r\n");
        }
    } else {
        m.extend_from_slice(
            b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
        );
        for &b in inner {
            if b == b'=' || b >= 0x7f || (b < 0x20 && b != b'\r' && b != b'\n') {
                m.extend_from_slice(format!("={b:02X}").as_bytes());
            } else {
                m.push(b);
            }
        }
    }
    m.extend_from_slice(b"\r\n--enc--\r\n");
    m
}

/// `inner` at the bottom of `depth` levels of `multipart/digest`, whose parts (without a
/// Content-Type) are messages by default.
fn nested_digest(depth: usize, inner: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(depth * 64 + inner.len());
    m.extend_from_slice(b"From: list@acme.com\r\nSubject: digest\r\n");
    for i in 0..depth {
        m.extend_from_slice(
            format!("Content-Type: multipart/digest; boundary=\"d{i}\"\r\n\r\n--d{i}\r\n\r\n")
                .as_bytes(),
        );
    }
    m.extend_from_slice(inner);
    m
}

/// A message whose body is `n` levels of multipart, each the only part of its parent, with
/// `leaf` innermost.
fn nested_multipart(depth: usize, same_boundary: bool, closed: bool, leaf: &[u8]) -> Vec<u8> {
    let b = |i: usize| {
        if same_boundary {
            "b".to_string()
        } else {
            format!("b{i}")
        }
    };
    let mut m = Vec::with_capacity(depth * 64 + leaf.len() + 256);
    m.extend_from_slice(
        b"From: Bob <bob@acme.com>\r\nTo: alice@example.com\r\nSubject: nested\r\n\
Message-ID: <nested@fuzz>\r\nMIME-Version: 1.0\r\n",
    );
    m.extend_from_slice(
        format!(
            "Content-Type: multipart/mixed; boundary=\"{}\"\r\n\r\n",
            b(0)
        )
        .as_bytes(),
    );
    for i in 0..depth {
        m.extend_from_slice(
            format!(
                "--{}\r\nContent-Type: multipart/mixed; boundary=\"{}\"\r\n\r\n",
                b(i),
                b(i + 1)
            )
            .as_bytes(),
        );
    }
    m.extend_from_slice(format!("--{}\r\n", b(depth)).as_bytes());
    m.extend_from_slice(leaf);
    m.extend_from_slice(b"\r\n");
    if closed {
        for i in (0..=depth).rev() {
            m.extend_from_slice(format!("--{}--\r\n", b(i)).as_bytes());
        }
    }
    m
}

/// `inner` wrapped in `depth` levels of `message/rfc822`.
fn nested_rfc822(depth: usize, inner: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(depth * 80 + inner.len());
    for i in 0..depth {
        m.extend_from_slice(
            format!(
                "From: level{i}@acme.com\r\nSubject: Fwd {i}\r\nContent-Type: message/rfc822\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    m.extend_from_slice(inner);
    m
}

/// A multipart whose boundary is declared, then delimited `lines` times and never closed.
fn endless_boundaries(lines: usize, with_headers: bool, tail: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(lines * 48 + tail.len() + 256);
    m.extend_from_slice(
        b"From: Bob <bob@acme.com>\r\nTo: alice@example.com\r\nSubject: endless\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"xyz\"\r\n\r\npreamble\r\n",
    );
    for i in 0..lines {
        m.extend_from_slice(b"--xyz\r\n");
        if with_headers && i % 2 == 0 {
            m.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\nx\r\n");
        }
    }
    m.extend_from_slice(tail);
    m
}

#[derive(Debug, Clone, Copy)]
enum SpliceAt {
    /// Before the target's own headers.
    Prepend,
    /// After the target's headers, before the blank line.
    Append,
    /// Instead of the target's headers.
    Replace,
}

#[derive(Debug, Clone, Copy)]
enum HugeKind {
    Subject,
    To,
    ContentTypeParam,
    References,
    NoColon,
}

/// One way of damaging a message.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    FlipBytes(Vec<(Index, u8)>),
    SpliceHeaders {
        donor: Index,
        at: SpliceAt,
    },
    DuplicateHeaders(usize),
    HugeHeader {
        kind: HugeKind,
        len: usize,
        /// Folded every this many bytes (`None`: one physical line).
        fold: Option<usize>,
    },
    WrapMultipart {
        depth: usize,
        same_boundary: bool,
        closed: bool,
    },
    WrapRfc822(usize),
    WrapDigest(usize),
    WrapEncoded {
        base64: bool,
    },
    EndlessBoundaries {
        lines: usize,
        with_headers: bool,
    },
    Garbage {
        at: Index,
        in_headers: bool,
        bytes: Vec<u8>,
    },
    ManyTo(usize),
}

impl Mutation {
    fn apply(&self, m: &mut Vec<u8>) {
        match self {
            Mutation::Truncate(i) => {
                let at = if m.is_empty() { 0 } else { i.index(m.len()) };
                m.truncate(at);
            }
            Mutation::FlipBytes(flips) => {
                if !m.is_empty() {
                    for (i, x) in flips {
                        let at = i.index(m.len());
                        m[at] ^= x.max(&1);
                    }
                }
            }
            Mutation::SpliceHeaders { donor, at } => {
                let donor = headers_of(&donor.get(small()).raw).to_vec();
                let end = headers_of(m).len();
                match at {
                    SpliceAt::Prepend => m.splice(0..0, donor),
                    SpliceAt::Append => m.splice(end..end, donor),
                    SpliceAt::Replace => m.splice(0..end, donor),
                };
            }
            Mutation::DuplicateHeaders(times) => {
                // At most 2 MB more: the point is many fields, not a big message.
                let h = headers_of(m).to_vec();
                let times = (*times).min((2 << 20) / h.len().max(1));
                m.splice(0..0, h.repeat(times));
            }
            Mutation::HugeHeader { kind, len, fold } => {
                let (prefix, unit): (&[u8], &[u8]) = match kind {
                    HugeKind::Subject => {
                        (b"Subject: ", b"Gr\xc3\xbc\xc3\x9fe =?utf-8?q?x=C3=BC?= ")
                    }
                    HugeKind::To => (b"To: ", b"\"A, B\" <a@b.example>, "),
                    HugeKind::ContentTypeParam => (
                        b"Content-Type: multipart/mixed; boundary=\"",
                        b"0123456789abcdef",
                    ),
                    HugeKind::References => (b"References: ", b"<id@host.example> "),
                    HugeKind::NoColon => (b"", b"no colon at all "),
                };
                let mut line = Vec::with_capacity(len + len / 8 + 64);
                line.extend_from_slice(prefix);
                let mut since_fold = 0;
                while line.len() < *len {
                    line.extend_from_slice(unit);
                    since_fold += unit.len();
                    if let Some(f) = fold {
                        if since_fold >= *f {
                            line.extend_from_slice(b"\r\n ");
                            since_fold = 0;
                        }
                    }
                }
                if matches!(kind, HugeKind::ContentTypeParam) {
                    line.push(b'"');
                }
                line.extend_from_slice(b"\r\n");
                m.splice(0..0, line);
            }
            Mutation::WrapMultipart {
                depth,
                same_boundary,
                closed,
            } => {
                *m = nested_multipart(*depth, *same_boundary, *closed, m);
            }
            Mutation::WrapRfc822(depth) => {
                *m = nested_rfc822(*depth, m);
            }
            Mutation::WrapDigest(depth) => {
                *m = nested_digest(*depth, m);
            }
            Mutation::WrapEncoded { base64 } => {
                *m = encoded_rfc822(m, *base64);
            }
            Mutation::EndlessBoundaries {
                lines,
                with_headers,
            } => {
                *m = endless_boundaries(*lines, *with_headers, m);
            }
            Mutation::Garbage {
                at,
                in_headers,
                bytes,
            } => {
                let span = if *in_headers { header_end(m) } else { m.len() };
                let pos = at.index(span + 1);
                m.splice(pos..pos, bytes.iter().copied());
            }
            Mutation::ManyTo(n) => {
                drop_field(m, b"to");
                let mut line = b"To: ".to_vec();
                for i in 0..*n {
                    if i > 0 {
                        line.extend_from_slice(b",\r\n ");
                    }
                    line.extend_from_slice(
                        format!("\"User {i}\" <user{i}@acme{}.com>", i % 7).as_bytes(),
                    );
                }
                line.extend_from_slice(b"\r\n");
                m.splice(0..0, line);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies: one per kind of damage, and a combined one.

fn truncate() -> impl Strategy<Value = Mutation> {
    any::<Index>().prop_map(Mutation::Truncate)
}

fn flip_bytes() -> impl Strategy<Value = Mutation> {
    prop::collection::vec((any::<Index>(), any::<u8>()), 1..64).prop_map(Mutation::FlipBytes)
}

fn splice_headers() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (
            any::<Index>(),
            prop_oneof![
                Just(SpliceAt::Prepend),
                Just(SpliceAt::Append),
                Just(SpliceAt::Replace)
            ]
        )
            .prop_map(|(donor, at)| Mutation::SpliceHeaders { donor, at }),
        (1usize..50).prop_map(Mutation::DuplicateHeaders),
    ]
}

fn huge_header() -> impl Strategy<Value = Mutation> {
    (
        prop_oneof![
            Just(HugeKind::Subject),
            Just(HugeKind::To),
            Just(HugeKind::ContentTypeParam),
            Just(HugeKind::References),
            Just(HugeKind::NoColon),
        ],
        100_000usize..400_000,
        prop_oneof![
            Just(None),
            (1usize..200).prop_map(Some),
            (200usize..5000).prop_map(Some)
        ],
    )
        .prop_map(|(kind, len, fold)| Mutation::HugeHeader { kind, len, fold })
}

fn deep_nesting() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (50usize..=500, any::<bool>(), any::<bool>()).prop_map(|(depth, same_boundary, closed)| {
            Mutation::WrapMultipart {
                depth,
                same_boundary,
                closed,
            }
        }),
        (50usize..=500).prop_map(Mutation::WrapRfc822),
        (50usize..=500).prop_map(Mutation::WrapDigest),
    ]
}

/// Nesting split across encoded layers: each layer alone is shallow.
fn encoded_nesting() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(
        prop_oneof![
            (1usize..=100).prop_map(Mutation::WrapRfc822),
            (1usize..=100).prop_map(Mutation::WrapDigest),
            any::<bool>().prop_map(|base64| Mutation::WrapEncoded { base64 }),
        ],
        1..8,
    )
}

fn endless() -> impl Strategy<Value = Mutation> {
    (1_000usize..20_000, any::<bool>()).prop_map(|(lines, with_headers)| {
        Mutation::EndlessBoundaries {
            lines,
            with_headers,
        }
    })
}

fn garbage() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        Just(0u8),
        Just(0xffu8),
        Just(b'\r'),
        Just(b'\n'),
        Just(b':'),
        Just(b'"'),
        Just(b'='),
        Just(b'?'),
        0x80u8..=0xff,
        any::<u8>(),
    ];
    (
        any::<Index>(),
        any::<bool>(),
        prop::collection::vec(byte, 1..256),
    )
        .prop_map(|(at, in_headers, bytes)| Mutation::Garbage {
            at,
            in_headers,
            bytes,
        })
}

fn many_to() -> impl Strategy<Value = Mutation> {
    prop_oneof![1usize..1_000, 1_000usize..=10_000].prop_map(Mutation::ManyTo)
}

fn any_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => truncate(),
        3 => flip_bytes(),
        2 => splice_headers(),
        1 => huge_header(),
        1 => deep_nesting(),
        1 => any::<bool>().prop_map(|base64| Mutation::WrapEncoded { base64 }),
        1 => endless(),
        3 => garbage(),
        1 => many_to(),
    ]
}

/// A small fixture and the folder situation it is tracked in.
fn base() -> impl Strategy<Value = (Index, u8)> {
    (any::<Index>(), 0u8..4)
}

fn mutated(base: (Index, u8), muts: &[Mutation]) -> (Vec<u8>, u8) {
    let mut m = base.0.get(small()).raw.clone();
    for x in muts {
        x.apply(&mut m);
    }
    (m, base.1)
}

/// `FUZZ_CASES_SCALE` (default 1) multiplies every case count.
fn cases(n: u32) -> ProptestConfig {
    let scale = std::env::var("FUZZ_CASES_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    ProptestConfig {
        cases: n * scale,
        // Failures are turned into the plain #[test]s at the end of this file by hand, not
        // written to a proptest-regressions directory.
        failure_persistence: None,
        // Shrinking 100 KB inputs is slow; a minute of it is plenty to find a small case.
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(600))]
    #[test]
    fn truncated_fixtures_are_tracked_or_quarantined(b in base(), m in truncate()) {
        let (raw, v) = mutated(b, &[m]);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(600))]
    #[test]
    fn bit_flipped_fixtures_are_tracked_or_quarantined(b in base(), m in flip_bytes()) {
        let (raw, v) = mutated(b, &[m]);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(400))]
    #[test]
    fn spliced_and_duplicated_headers_are_tracked_or_quarantined(
        b in base(),
        m in prop::collection::vec(splice_headers(), 1..4),
    ) {
        let (raw, v) = mutated(b, &m);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(60))]
    #[test]
    fn huge_header_lines_are_tracked_or_quarantined(b in base(), m in huge_header()) {
        let (raw, v) = mutated(b, &[m]);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(120))]
    #[test]
    fn deep_nesting_is_tracked_or_quarantined(b in base(), m in deep_nesting()) {
        let (raw, v) = mutated(b, &[m]);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(150))]
    #[test]
    fn nesting_across_encoded_layers_is_tracked_or_quarantined(
        b in base(),
        m in encoded_nesting(),
    ) {
        let (raw, v) = mutated(b, &m);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(60))]
    #[test]
    fn endless_boundaries_are_tracked_or_quarantined(b in base(), m in endless()) {
        let (raw, v) = mutated(b, &[m]);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(600))]
    #[test]
    fn garbage_bytes_are_tracked_or_quarantined(
        b in base(),
        m in prop::collection::vec(garbage(), 1..6),
    ) {
        let (raw, v) = mutated(b, &m);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(40))]
    #[test]
    fn thousands_of_recipients_are_tracked(b in base(), m in many_to()) {
        let (raw, v) = mutated(b, &[m]);
        match check(&raw, v) {
            Outcome::Tracked => {}
            Outcome::Quarantined(e) => panic!("a long To list is not a reason to quarantine: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(cases(500))]
    #[test]
    fn combined_mutations_are_tracked_or_quarantined(
        b in base(),
        m in prop::collection::vec(any_mutation(), 1..5),
    ) {
        let (raw, v) = mutated(b, &m);
        check(&raw, v);
    }
}

proptest! {
    #![proptest_config(cases(6))]
    #[test]
    fn the_large_fixture_survives_truncation_and_flips(
        cut in any::<Index>(),
        flips in prop::collection::vec((any::<Index>(), any::<u8>()), 1..16),
        v in 0u8..4,
    ) {
        let mut m = fixture("009").to_vec();
        Mutation::FlipBytes(flips).apply(&mut m);
        Mutation::Truncate(cut).apply(&mut m);
        check(&m, v);
    }
}

// ---------------------------------------------------------------------------------------------
// The nastiest shapes, pinned.

#[test]
fn every_unmutated_fixture_is_tracked() {
    for f in fixtures() {
        for v in 0..4 {
            match check(&f.raw, v) {
                Outcome::Tracked => {}
                Outcome::Quarantined(e) => panic!("{}: quarantined: {e}", f.name),
            }
        }
    }
}

#[test]
fn multipart_nested_1000_levels() {
    for (same, closed) in [(false, true), (false, false), (true, true), (true, false)] {
        let raw = nested_multipart(1000, same, closed, fixture("001"));
        check(&raw, 0);
    }
}

fn quarantined_too_deep(raw: &[u8]) {
    match check(raw, 0) {
        Outcome::Quarantined(ParseError::TooDeep(_)) => {}
        other => panic!("not quarantined as too deep: {other:?}"),
    }
}

#[test]
fn rfc822_nested_1000_levels() {
    quarantined_too_deep(&nested_rfc822(1000, fixture("004")));
}

/// Before the depth check this overflowed the stack (mail-parser drops nested messages
/// recursively): 100,000 levels in 3.7 MB.
#[test]
fn rfc822_nested_100k_levels() {
    quarantined_too_deep(&nested_rfc822(100_000, fixture("001")));
}

#[test]
fn digest_nested_100k_levels() {
    quarantined_too_deep(&nested_digest(100_000, fixture("001")));
}

/// The nesting hidden in a base64 or quoted-printable message part, which mail-parser decodes
/// and parses again (and copies recursively).
#[test]
fn encoded_part_hiding_20k_levels() {
    for base64 in [true, false] {
        let inner = nested_rfc822(20_000, fixture("001"));
        quarantined_too_deep(&encoded_rfc822(&inner, base64));
        let twice = encoded_rfc822(&encoded_rfc822(&inner, base64), !base64);
        quarantined_too_deep(&twice);
    }
}

/// Shallow enough at each encoded layer, too deep in total.
#[test]
fn nesting_split_over_three_encoded_layers() {
    let mut m = fixture("002").to_vec();
    for base64 in [true, false, true] {
        m = encoded_rfc822(&nested_rfc822(60, &m), base64);
    }
    quarantined_too_deep(&m);
}

/// Real forwarding chains stay far below the limit.
#[test]
fn a_forwarding_chain_of_20_is_tracked() {
    let mut m = fixture("010").to_vec();
    for base64 in [false, true, false] {
        m = encoded_rfc822(&nested_rfc822(5, &m), base64);
    }
    let raw = nested_rfc822(5, &m);
    assert!(matches!(check(&raw, 0), Outcome::Tracked));
}

#[test]
fn multipart_nested_100k_levels() {
    let raw = nested_multipart(100_000, false, true, fixture("001"));
    check(&raw, 0);
}

#[test]
fn header_line_of_1_mb() {
    for kind in [
        HugeKind::Subject,
        HugeKind::To,
        HugeKind::ContentTypeParam,
        HugeKind::References,
        HugeKind::NoColon,
    ] {
        let mut raw = fixture("006").to_vec();
        Mutation::HugeHeader {
            kind,
            len: 1 << 20,
            fold: None,
        }
        .apply(&mut raw);
        check(&raw, 0);
    }
}

#[test]
fn boundary_delimited_100k_times_never_closed() {
    for with_headers in [false, true] {
        let raw = endless_boundaries(100_000, with_headers, fixture("007"));
        check(&raw, 1);
    }
}

#[test]
fn ten_thousand_to_addresses() {
    let mut raw = fixture("029").to_vec();
    Mutation::ManyTo(10_000).apply(&mut raw);
    match check(&raw, 1) {
        Outcome::Tracked => {
            let p = parse_message(&raw).unwrap();
            assert!(p.to.len() >= 10_000, "{} To addresses", p.to.len());
        }
        Outcome::Quarantined(e) => panic!("quarantined: {e}"),
    }
}

/// Found by `spliced_and_duplicated_headers_…`: a 1 MB message whose header holds thousands of
/// `Content-Transfer-Encoding: base64` fields (LF line ends) took 14 s of CPU, as the fast
/// base64 path searched the rest of the message again for every field. Now linear.
#[test]
fn twenty_thousand_base64_encoding_fields() {
    for binary in [false, true] {
        let mut raw = String::from("From: a@x\nTo: b@x\nSubject: dup\nMessage-ID: <dup@x>\n");
        raw.push_str(if binary {
            "Content-Type: application/octet-stream\n"
        } else {
            "Content-Type: text/plain\n"
        });
        for _ in 0..20_000 {
            raw.push_str("Content-Transfer-Encoding: base64\n");
        }
        raw.push_str("\naGVsbG8gd29ybGQ=\n");
        for _ in 0..8_000 {
            raw.push_str("Content-Transfer-Encoding: base64 in a body line, not a field\n");
        }
        check(raw.as_bytes(), 0);
    }
}
