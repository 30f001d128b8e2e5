//! Stage 3: raw RFC 5322 bytes → [`ParsedMessage`], with mail-parser.
//!
//! Pure and synchronous (no I/O, no store) so it can run on a blocking worker and be tested
//! against the fixture corpus. Everything the tracking rules need is extracted here, once;
//! the raw bytes are not looked at again except to hash or quarantine them.

use base64::Engine;
use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};

/// Upper bound of the plain-text body kept on an activity; Dynamics' description field is
/// about 1 MB as well. Longer bodies are cut at a character boundary and marked.
pub const MAX_BODY_CHARS: usize = 1 << 20;

/// An address with its display name, as written in a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailAddr {
    /// Lower-cased address (`None` for a group marker or an unparseable entry).
    pub address: Option<String>,
    pub name: Option<String>,
}

/// One attachment: what the activity records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAttachment {
    pub name: Option<String>,
    pub mime_type: String,
    pub size: u64,
    pub sha256: String,
    /// Why the attachment sink did not keep the file.
    pub skipped: Option<String>,
}

/// Receives each attachment's bytes while the parsed message still holds them, so a large file
/// is stored (or refused) without being copied again. Returns why it was not kept, if it was not.
pub type AttachmentSink<'a> = dyn FnMut(&ParsedAttachment, &[u8]) -> Option<String> + 'a;

/// Everything tracking needs from one message.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedMessage {
    pub subject: Option<String>,
    pub from: Option<MailAddr>,
    pub to: Vec<MailAddr>,
    pub cc: Vec<MailAddr>,
    pub bcc: Vec<MailAddr>,
    pub reply_to: Vec<MailAddr>,
    /// RFC 3339; `None` when missing or not a real date (e.g. day 32).
    pub date: Option<String>,
    /// With angle brackets.
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub thread_index: Option<String>,
    pub body_text: String,
    pub attachments: Vec<ParsedAttachment>,
    /// sha256 of the message without its trace headers: the dedup key when there is no
    /// Message-ID. Computed only then: hashing every message would cost as much as parsing it.
    pub content_hash: Option<String>,
    /// `Importance: high`, `X-Priority: 1` or `2`, or `Priority: urgent`: the activity's first
    /// importance when the mailbox has no `$Important` on it (DESIGN §4.15).
    pub high_importance: bool,
}

/// Whether the headers mark the message important, as Outlook and most clients write it.
fn high_importance(msg: &mail_parser::Message<'_>) -> bool {
    let text = |name: &str| {
        msg.header(name)
            .and_then(|v| v.as_text())
            .map(|s| s.trim().to_ascii_lowercase())
    };
    text("Importance").is_some_and(|v| v == "high")
        || text("X-Priority").is_some_and(|v| v.starts_with('1') || v.starts_with('2'))
        || text("Priority").is_some_and(|v| v == "urgent")
}

/// Why a message could not be parsed. It goes to quarantine with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("no RFC 5322 header could be read (is this a mail message at all?)")]
    NoHeaders,
    /// More `message/rfc822` (or digest) parts than [`MAX_MIME_DEPTH`]: mail-parser builds them
    /// as nested values that it walks and drops recursively, so a deep enough chain would
    /// overflow the stack of the thread parsing it.
    #[error("MIME nesting deeper than {0} levels (messages inside messages, or that many attached messages): not parsed")]
    TooDeep(usize),
    /// The nesting check ran out of its work budget (encoded parts over encoded parts).
    #[error("MIME structure too complex to check (encoded messages inside encoded messages): not parsed")]
    TooComplex,
}

/// Parses one message.
///
/// # Errors
/// [`ParseError`] when the bytes hold no message mail-parser can read; anything less broken
/// (bad boundaries, junk header lines, unknown charsets) still parses with what can be read.
pub fn parse_message(raw: &[u8]) -> Result<ParsedMessage, ParseError> {
    parse_message_with(raw, &mut |_, _| None)
}

/// [`parse_message`], handing every attachment's decoded bytes to `sink`.
///
/// Base64 attachments, most of a mailbox's bytes, are cut out of the copy of the message that
/// mail-parser reads and decoded here with a fast decoder instead (see [`DEFERRED_BASE64`]).
pub fn parse_message_with(
    raw: &[u8],
    sink: &mut AttachmentSink<'_>,
) -> Result<ParsedMessage, ParseError> {
    let cuts = deferrable_base64(raw);
    if cuts.is_empty() {
        return parse_inner(raw, true, sink, &[]);
    }
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::Empty);
    }
    // The skeleton: the message without the bodies of those attachments, the encoding field
    // of each renamed; where each field went in it, and each body's bytes.
    let cut_len: usize = cuts.iter().map(|c| c.body.len()).sum();
    let mut skeleton = Vec::with_capacity(raw.len() - cut_len);
    let mut at = 0;
    let mut deferred = Vec::with_capacity(cuts.len());
    for c in &cuts {
        let spot = skeleton.len() + (c.spot - at);
        skeleton.extend_from_slice(&raw[at..c.body.start]);
        skeleton[spot..spot + 6].copy_from_slice(DEFERRED_BASE64);
        deferred.push(Spot {
            spot,
            body: &raw[c.body.clone()],
        });
        at = c.body.end;
    }
    skeleton.extend_from_slice(&raw[at..]);
    match parse_deferred(&skeleton, true, sink, &deferred) {
        Err(Deferred::Fallback) => parse_inner(raw, true, sink, &[]),
        Err(Deferred::Parse(e)) => Err(e),
        Ok(mut p) => {
            if p.content_hash.is_some() {
                p.content_hash = Some(content_hash(raw));
            }
            Ok(p)
        }
    }
}

/// A base64 attachment cut out of the skeleton: where its encoding field's value is (in the
/// skeleton) and its encoded body (from the original message).
struct Spot<'a> {
    spot: usize,
    body: &'a [u8],
}

/// A base64 attachment found in the original message: its encoding value and its body.
struct Cut {
    spot: usize,
    body: std::ops::Range<usize>,
}

/// Stands in for `base64` in the Content-Transfer-Encoding field of an attachment cut out of
/// the skeleton that mail-parser reads. mail-parser runs a byte-at-a-time decoder over base64
/// parts, and a byte-at-a-time boundary search over other parts (measured: a quarter of a
/// sync's CPU time, as attachments are most of the bytes); cut out, the body is found with
/// `memchr` and decoded by [`decode_base64_lines`] several times faster. Any input where the
/// result could differ from mail-parser's takes the ordinary way.
const DEFERRED_BASE64: &[u8; 6] = b"x-ft64";

/// Why the fast path gave up: a real parse error, or a reason to parse the ordinary way.
enum Deferred {
    Parse(ParseError),
    Fallback,
}

impl From<ParseError> for Deferred {
    fn from(e: ParseError) -> Self {
        Deferred::Parse(e)
    }
}

/// The `base64` values of Content-Transfer-Encoding fields (at a line start) whose header block
/// names a Content-Type that mail-parser keeps as binary (not text, multipart or message), with
/// the body after that block: up to the next line starting with `--` (a base64 body has no
/// `-`), or the end. Only a guess: what mail-parser made of each is checked after parsing.
fn deferrable_base64(raw: &[u8]) -> Vec<Cut> {
    const NAME: &[u8] = b"content-transfer-encoding:";
    let mut out = Vec::new();
    // One SIMD pass for the usual spellings (others, rare, simply take the ordinary way).
    let hits = memchr::memmem::find_iter(raw, b"-Transfer-Encoding:")
        .chain(memchr::memmem::find_iter(raw, b"-transfer-encoding:"));
    let mut starts: Vec<usize> = hits
        .filter(|&i| i >= 7 && (i == 7 || raw[i - 8] == b'\n'))
        .map(|i| i - 7)
        .collect();
    starts.sort_unstable();
    // Each header block and each cut body is looked at once, so this stays linear in the
    // message: thousands of duplicated encoding fields once made it quadratic (14 s of CPU for
    // a 1 MB message; found by the fuzz tests). A second field in a block already seen is
    // skipped: mail-parser's own reading of the block is checked after parsing anyway.
    let mut seen_until = 0;
    for at in starts {
        if at < seen_until || !raw[at..at + NAME.len()].eq_ignore_ascii_case(NAME) {
            continue;
        }
        let mut v = at + NAME.len();
        while v < raw.len() && (raw[v] == b' ' || raw[v] == b'\t') {
            v += 1;
        }
        let Some(value) = raw.get(v..v + 6) else {
            continue;
        };
        let after = raw.get(v + 6).copied().unwrap_or(b'\n');
        if !value.eq_ignore_ascii_case(b"base64") || !matches!(after, b'\r' | b'\n') {
            continue;
        }
        let Some((blank, start)) = blank_line_after(raw, at) else {
            break; // no body follows: neither here nor for any later field
        };
        seen_until = start;
        if !block_type_is_binary(raw, at, blank) {
            continue;
        }
        let end = memchr::memmem::find(&raw[start..], b"\n--").map_or(raw.len(), |i| start + i + 1);
        seen_until = end;
        out.push(Cut {
            spot: v,
            body: start..end,
        });
    }
    out
}

/// The first empty line after `at` (LF or CRLF): where it starts (its preceding `\n`), and
/// where the body after it starts. One forward pass over the block, not over the message.
fn blank_line_after(raw: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut from = at;
    while let Some(i) = memchr::memchr(b'\n', &raw[from..]).map(|i| from + i) {
        match raw.get(i + 1..) {
            Some([b'\n', ..]) => return Some((i, i + 2)),
            Some([b'\r', b'\n', ..]) => return Some((i, i + 3)),
            _ => from = i + 1,
        }
    }
    None
}

/// Whether the header block around the line at `at` (ending at `end`) has exactly one
/// Content-Type field at a line start, naming a type that is not text, multipart or message.
fn block_type_is_binary(raw: &[u8], at: usize, end: usize) -> bool {
    // The block: back to the previous empty line (or the start), on to the next one.
    let mut start = at;
    while start >= 2 {
        let before = &raw[..start];
        if before.ends_with(b"\n\n") || before.ends_with(b"\n\r\n") {
            break;
        }
        match memchr::memrchr(b'\n', &raw[..start - 1]) {
            Some(i) => start = i + 1,
            None => {
                start = 0;
                break;
            }
        }
    }
    let block = &raw[start..end];
    let mut types = block
        .split(|&b| b == b'\n')
        .filter(|l| l.len() > 13 && l[..13].eq_ignore_ascii_case(b"content-type:"));
    let (Some(ct), None) = (types.next(), types.next()) else {
        return false;
    };
    let v = trim_start_ws(&ct[13..]);
    !(v.len() < 3
        || [&b"text"[..], b"multipart", b"message"]
            .iter()
            .any(|t| v.len() >= t.len() && v[..t.len()].eq_ignore_ascii_case(t)))
}

/// Decodes a base64 part body: lines of whole 4-character groups, padding only at the end,
/// nothing but the alphabet. `None` for anything else (then mail-parser's own lenient decoder
/// decides), so the bytes are always what it would give.
///
/// Why joined, then decoded at once with SIMD: decoding 76-character lines one call each was
/// a tenth of the first sync's CPU (400 MB of attachments in the 10,000-message folder); the
/// lines are checked here, copied together (memcpy) and decoded in one `base64-simd` pass.
/// Input it refuses (trailing bits, which mail-parser tolerates) takes the `base64` crate.
fn decode_base64_lines(body: &[u8]) -> Option<Vec<u8>> {
    let mut joined = Vec::with_capacity(body.len());
    let mut padded = false;
    let mut start = 0;
    while start < body.len() {
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
        let mut line = &body[start..end];
        while let [rest @ .., b'\r' | b' ' | b'\t'] = line {
            line = rest;
        }
        start = end + 1;
        if line.is_empty() {
            continue;
        }
        if padded || !line.len().is_multiple_of(4) {
            return None;
        }
        padded = line.ends_with(b"=");
        joined.extend_from_slice(line);
    }
    decode_base64_joined(&joined)
}

/// One base64 text without line breaks, padding canonical; trailing bits allowed.
fn decode_base64_joined(joined: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    base64_simd::STANDARD
        .decode_to_vec(joined)
        .ok()
        .or_else(|| ENGINE.decode(joined).ok())
}

fn parse_inner(
    raw: &[u8],
    recover: bool,
    sink: &mut AttachmentSink<'_>,
    deferred: &[Spot<'_>],
) -> Result<ParsedMessage, ParseError> {
    parse_deferred(raw, recover, sink, deferred).map_err(|e| match e {
        Deferred::Parse(e) => e,
        Deferred::Fallback => unreachable!("only a deferred parse falls back"),
    })
}

fn parse_deferred(
    raw: &[u8],
    recover: bool,
    sink: &mut AttachmentSink<'_>,
    deferred: &[Spot<'_>],
) -> Result<ParsedMessage, Deferred> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::Empty.into());
    }
    // On a skeleton this checks what mail-parser is about to read; the cut bodies are plain
    // base64 (no field, no nested message) and a fallback checks the whole message.
    check_depth(raw)?;
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or(ParseError::NoHeaders)?;
    if msg.headers().is_empty() {
        return Err(ParseError::NoHeaders.into());
    }
    let decoded_parts = decode_deferred(&msg, deferred)?;
    let mut body_text = String::new();
    for i in 0..msg.text_body_count() {
        if let Some(t) = msg.body_text(i) {
            push_text(&mut body_text, &t);
            if body_text.len() > MAX_BODY_CHARS {
                break;
            }
        }
    }
    let attachments = collect_attachments(&msg, &decoded_parts, recover, sink, &mut body_text);
    truncate_chars(&mut body_text, MAX_BODY_CHARS);
    let date = msg.date().filter(|d| d.is_valid()).map(|d| d.to_rfc3339());
    let message_id = msg.message_id().and_then(bracket);
    let no_id = message_id.is_none();
    Ok(ParsedMessage {
        subject: msg.subject().map(|s| s.trim().to_string()),
        from: addrs(msg.from()).into_iter().next(),
        to: addrs(msg.to()),
        cc: addrs(msg.cc()),
        bcc: addrs(msg.bcc()),
        reply_to: addrs(msg.reply_to()),
        date,
        message_id,
        in_reply_to: id_list(msg.in_reply_to()).into_iter().next(),
        references: id_list(msg.references()),
        thread_index: msg
            .header("Thread-Index")
            .and_then(|v| v.as_text())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        body_text,
        attachments,
        content_hash: no_id.then(|| content_hash(raw)),
        high_importance: high_importance(&msg),
    })
}

/// Each spot must be the encoding of a binary attachment of this message whose body in the
/// skeleton is empty (the cut was exactly its body), and the cut body must decode cleanly;
/// then the decoded bytes stand in for mail-parser's, by part id. Checked before any
/// attachment reaches the sink, so a fallback stores nothing twice.
fn decode_deferred(
    msg: &mail_parser::Message<'_>,
    deferred: &[Spot<'_>],
) -> Result<Vec<(u32, Vec<u8>)>, Deferred> {
    let mut decoded_parts: Vec<(u32, Vec<u8>)> = Vec::with_capacity(deferred.len());
    for d in deferred {
        let spot = d.spot as u32;
        let id = msg.attachments.iter().copied().find(|&id| {
            let p = &msg.parts[id as usize];
            p.offset_header <= spot && spot < p.offset_body
        });
        let Some(id) = id else {
            return Err(Deferred::Fallback);
        };
        let p = &msg.parts[id as usize];
        let empty_binary = matches!(
            &p.body,
            mail_parser::PartType::Binary(b) | mail_parser::PartType::InlineBinary(b) if b.is_empty()
        );
        if !empty_binary
            || p.is_encoding_problem
            || p.content_transfer_encoding() != Some("x-ft64")
            || decoded_parts.iter().any(|(d, _)| *d == id)
        {
            return Err(Deferred::Fallback);
        }
        let Some(decoded) = decode_base64_lines(d.body) else {
            return Err(Deferred::Fallback);
        };
        decoded_parts.push((id, decoded));
    }
    Ok(decoded_parts)
}

/// The addresses of a header, lower-cased, without empty entries.
fn addrs(a: Option<&Address>) -> Vec<MailAddr> {
    a.map(|a| {
        a.iter()
            .map(|x| MailAddr {
                address: x
                    .address()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty()),
                name: x
                    .name()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            })
            .filter(|m| m.address.is_some() || m.name.is_some())
            .collect()
    })
    .unwrap_or_default()
}

/// The message's attachments, each handed to the sink; text that mail-parser could not place
/// goes to `body_text` instead (see [`misplaced_text`]).
fn collect_attachments(
    msg: &mail_parser::Message<'_>,
    decoded_parts: &[(u32, Vec<u8>)],
    recover: bool,
    sink: &mut AttachmentSink<'_>,
    body_text: &mut String,
) -> Vec<ParsedAttachment> {
    let mut attachments = Vec::new();
    let mut recovered = Vec::new();
    for &id in &msg.attachments {
        let p = &msg.parts[id as usize];
        if let Some((_, d)) = decoded_parts.iter().find(|(i, _)| *i == id) {
            attach(p, d, sink, &mut attachments);
            continue;
        }
        if misplaced_text(p) {
            if body_text.trim().is_empty() {
                let multipart = p
                    .content_type()
                    .is_some_and(|ct| ct.ctype().eq_ignore_ascii_case("multipart"));
                match (multipart && recover)
                    .then(|| recover_multipart(p.contents(), sink))
                    .flatten()
                {
                    Some(inner) => {
                        push_text(body_text, &inner.body_text);
                        recovered.extend(inner.attachments);
                    }
                    None => {
                        if let Some(t) = p.text_contents() {
                            push_text(body_text, t);
                        }
                    }
                }
            }
            continue;
        }
        let decoded = undecoded_base64(p);
        attach(
            p,
            decoded.as_deref().unwrap_or(p.contents()),
            sink,
            &mut attachments,
        );
    }
    attachments.extend(recovered);
    attachments
}

/// A nameless text part that nobody marked as an attachment is message text that mail-parser
/// could not place: the body of a multipart whose boundary is wrong, or the inline
/// text/calendar alternative of an invitation. It is not a file.
fn misplaced_text(p: &mail_parser::MessagePart<'_>) -> bool {
    let ctype = p.content_type().map(|ct| ct.ctype().to_ascii_lowercase());
    let is_text = matches!(ctype.as_deref(), None | Some("text") | Some("multipart"));
    let disposed = p
        .content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
    is_text && !disposed && p.attachment_name().is_none() && p.message().is_none()
}

/// mail-parser leaves the last part of a multipart whose closing boundary is missing
/// undecoded: its decoded bytes, so its size and hash are the file's.
fn undecoded_base64(p: &mail_parser::MessagePart<'_>) -> Option<Vec<u8>> {
    if p.encoding != mail_parser::Encoding::None
        || !p
            .content_transfer_encoding()
            .is_some_and(|e| e.eq_ignore_ascii_case("base64"))
    {
        return None;
    }
    let clean: Vec<u8> = p
        .contents()
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .ok()
}

/// Records one attachment (its decoded `contents`) and hands it to the sink.
fn attach(
    p: &mail_parser::MessagePart<'_>,
    contents: &[u8],
    sink: &mut AttachmentSink<'_>,
    attachments: &mut Vec<ParsedAttachment>,
) {
    {
        let mime_type = p
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(st) => format!("{}/{}", ct.ctype(), st),
                None => ct.ctype().to_string(),
            })
            .unwrap_or_else(|| "application/octet-stream".into())
            .to_ascii_lowercase();
        // An attached message without a file name is named after its subject, as mail
        // clients show it.
        let name = p.attachment_name().map(str::to_string).or_else(|| {
            p.message()
                .and_then(|m| m.subject())
                .map(|s| format!("{s}.eml"))
        });
        let mut att = ParsedAttachment {
            name,
            mime_type,
            size: contents.len() as u64,
            sha256: hex::encode(Sha256::digest(contents)),
            skipped: None,
        };
        att.skipped = sink(&att, contents);
        attachments.push(att);
    }
}

/// A multipart whose declared boundary never occurs comes back unsplit. When its body starts
/// with a delimiter line (`--something`), parse it again with that boundary, so the text and
/// files inside are recovered instead of shown as raw MIME.
fn recover_multipart(body: &[u8], sink: &mut AttachmentSink<'_>) -> Option<ParsedMessage> {
    let text = std::str::from_utf8(body).ok()?;
    let first = text.lines().find(|l| !l.trim().is_empty())?.trim_end();
    let boundary = first.strip_prefix("--")?.trim_end_matches("--");
    if boundary.is_empty() || boundary.len() > 200 || boundary.contains('"') {
        return None;
    }
    let synthetic = format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n{text}");
    // Decide without the sink first: it stores files, and a recovery that is thrown away must
    // not have stored (or refused) any. This path is rare, so parsing twice is cheap enough.
    parse_inner(synthetic.as_bytes(), false, &mut |_, _| None, &[])
        .ok()
        .filter(|p| !p.body_text.trim().is_empty())?;
    parse_inner(synthetic.as_bytes(), false, sink, &[]).ok()
}

/// Most `message/rfc822` (or `multipart/digest`) levels a message may nest. Real mail stays in
/// single digits; with 2 MB thread stacks (the `std::thread::scope` workers of
/// `sync::process_batch`, and test threads) mail-parser overflows at about 1,400 levels in a
/// debug build, fewer if the caller is already deep.
pub const MAX_MIME_DEPTH: usize = 128;

/// mail-parser parses a base64 or quoted-printable encoded message part again, this many
/// levels deep (its `MAX_NESTED_ENCODED`); deeper ones stay binary.
const ENCODED_LEVELS: u32 = 3;

/// Rejects a message mail-parser could not parse within a bounded stack.
///
/// mail-parser handles multipart nesting with a heap stack, but every `message/*` part (and
/// every part of a `multipart/digest`) becomes a `Message` inside its parent's, and those are
/// dropped (and, below an encoded part, copied) recursively. So the number of such parts on
/// one branch must stay below what a 2 MB stack holds. [`nesting_bound`] over-approximates it
/// in linear time without parsing, so that no message that would go deeper gets through.
fn check_depth(raw: &[u8]) -> Result<(), ParseError> {
    let mut budget = raw.len().saturating_mul(8).saturating_add(1 << 20);
    match nesting_bound(raw, ENCODED_LEVELS, &mut budget) {
        None => Err(ParseError::TooComplex),
        Some(d) if d > MAX_MIME_DEPTH => Err(ParseError::TooDeep(MAX_MIME_DEPTH)),
        Some(_) => Ok(()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Cte {
    Base64,
    QuotedPrintable,
}

/// An upper bound of how many `Message` values mail-parser nests on one branch for `data`:
/// the number of `Content-Type` fields naming a `message/*` or `multipart/digest` type
/// (siblings counted too), plus, for each part that mail-parser would decode and parse again,
/// the bound of its decoded body. `None` when `budget` (bytes scanned) runs out.
///
/// Conservative by construction: a field is recognised on any line whose first non-blank
/// characters are its name, its value runs over every following line that starts with
/// whitespace, and a part's header block is taken as everything between two empty lines
/// (mail-parser's is never larger). Where an encoded part's body may start, every candidate
/// is decoded.
fn nesting_bound(data: &[u8], levels: u32, budget: &mut usize) -> Option<usize> {
    *budget = budget.checked_sub(data.len())?;
    #[derive(Clone, Copy, PartialEq)]
    enum Field {
        Other,
        Type { nests: bool },
        Encoding(Option<Cte>),
    }
    let mut count = 0usize;
    let mut digest_seen = false;
    // The field being read, and what the header block so far says.
    let mut field = Field::Other;
    let mut block_nests = false;
    let mut block_cte: Option<Cte> = None;
    let mut bodies: Vec<(Cte, usize)> = Vec::new();
    let finish = |f: Field, count: &mut usize, nests: &mut bool, cte: &mut Option<Cte>| match f {
        Field::Type { nests: true } => {
            *count += 1;
            *nests = true;
        }
        Field::Encoding(Some(e)) => *cte = Some(e),
        _ => {}
    };
    let mut start = 0;
    while start < data.len() {
        let end = memchr_nl(&data[start..]).map_or(data.len(), |i| start + i);
        let next = (end + 1).min(data.len());
        let line = &data[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let trimmed = trim_start_ws(line);
        if trimmed.is_empty() {
            // A blank (or white) line: where a body may start.
            let mut nests = block_nests;
            let mut cte = block_cte;
            let mut c = 0;
            finish(field, &mut c, &mut nests, &mut cte);
            if let Some(e) = cte.filter(|_| nests || digest_seen) {
                if bodies.last() != Some(&(e, next)) {
                    bodies.push((e, next));
                }
            }
            if line.is_empty() {
                // Truly empty: no header block spans it.
                finish(field, &mut count, &mut block_nests, &mut block_cte);
                field = Field::Other;
                block_nests = false;
                block_cte = None;
            }
        } else if header_name_is(trimmed, b"content-type") {
            finish(field, &mut count, &mut block_nests, &mut block_cte);
            let nests = nests_here(trimmed);
            digest_seen |= contains_ci(trimmed, b"digest");
            field = Field::Type { nests };
        } else if header_name_is(trimmed, b"content-transfer-encoding") {
            finish(field, &mut count, &mut block_nests, &mut block_cte);
            field = Field::Encoding(cte_of(trimmed));
        } else if trimmed.len() < line.len() {
            // Continuation of the field being read.
            match &mut field {
                Field::Type { nests } => {
                    *nests |= nests_here(trimmed);
                    digest_seen |= contains_ci(trimmed, b"digest");
                }
                Field::Encoding(e) => {
                    if e.is_none() {
                        *e = cte_of(trimmed);
                    }
                }
                Field::Other => {}
            }
        } else {
            finish(field, &mut count, &mut block_nests, &mut block_cte);
            field = Field::Other;
        }
        start = next;
    }
    finish(field, &mut count, &mut block_nests, &mut block_cte);
    let mut inner = 0;
    if levels > 0 && count > 0 {
        for (e, at) in bodies {
            let body = &data[at..];
            *budget = budget.checked_sub(body.len())?;
            let decoded = match e {
                Cte::Base64 => decode_base64_like_mail_parser(body),
                Cte::QuotedPrintable => decode_qp_loosely(body),
            };
            inner = inner.max(1 + nesting_bound(&decoded, levels - 1, budget)?);
        }
    }
    Some(count + inner)
}

fn memchr_nl(s: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', s)
}

fn trim_start_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// Whether `line` starts a field called `name`, read as mail-parser reads field names: leading
/// colons and any white space (even inside the name) are skipped, the name ends at `:`.
fn header_name_is(line: &[u8], name: &[u8]) -> bool {
    let mut i = 0;
    for b in line
        .iter()
        .skip_while(|b| b.is_ascii_whitespace() || **b == b':')
    {
        match b {
            b':' => return i == name.len(),
            b if b.is_ascii_whitespace() => {}
            b if i < name.len() && b.eq_ignore_ascii_case(&name[i]) => i += 1,
            _ => return false,
        }
    }
    false
}

fn contains_ci(s: &[u8], needle: &[u8]) -> bool {
    s.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A Content-Type value (or part of one) that mail-parser may turn into a nested `Message`.
fn nests_here(s: &[u8]) -> bool {
    contains_ci(s, b"message") || contains_ci(s, b"digest")
}

fn cte_of(s: &[u8]) -> Option<Cte> {
    if contains_ci(s, b"base64") {
        Some(Cte::Base64)
    } else if contains_ci(s, b"quoted-printable") {
        Some(Cte::QuotedPrintable)
    } else {
        None
    }
}

/// What mail-parser's base64 decoder yields for a part body: it skips white space, flushes at
/// `=`, and ends at `--` (a boundary) or at the first other character (then it does not
/// parse the part at all, so stopping there decodes a superset).
fn decode_base64_like_mail_parser(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() / 4 * 3);
    let (mut chunk, mut n) = (0u32, 0u8);
    let mut last = 0u8;
    for &ch in body {
        let v = match ch {
            b'A'..=b'Z' => Some(ch - b'A'),
            b'a'..=b'z' => Some(ch - b'a' + 26),
            b'0'..=b'9' => Some(ch - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        };
        match (v, ch) {
            (Some(v), _) => {
                chunk = (chunk << 6) | u32::from(v);
                n += 1;
                if n == 4 {
                    out.extend_from_slice(&chunk.to_be_bytes()[1..]);
                    (chunk, n) = (0, 0);
                }
            }
            (None, b'=') => {
                match n {
                    1 => out.push((chunk << 2) as u8),
                    2 => out.push((chunk >> 4) as u8),
                    3 => out.extend_from_slice(&((chunk >> 2) as u16).to_be_bytes()),
                    _ => {}
                }
                (chunk, n) = (0, 0);
            }
            (None, b'\n' | b'\r' | b' ' | b'\t') => {}
            (None, b'-') if last != b'-' => {}
            _ => break,
        }
        last = ch;
    }
    out
}

/// Quoted-printable decoding of `body` as mail-parser's decoder does it (CR dropped, `=XX`,
/// soft breaks, invalid escapes kept), but to the end instead of up to its boundary: what
/// mail-parser parses is a prefix of this.
fn decode_qp_loosely(body: &[u8]) -> Vec<u8> {
    #[derive(Clone, Copy, PartialEq)]
    enum St {
        Plain,
        Eq,
        Hex1(u8),
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(body.len());
    let mut st = St::Plain;
    let mut last = 0u8;
    for &ch in body {
        match (ch, st) {
            (b'=', _) => st = St::Eq,
            (b'\n', St::Eq) => st = St::Plain,
            (b'\n', _) => out.push(b'\n'),
            (b'\r', _) => {}
            (_, St::Plain) => out.push(ch),
            (_, St::Eq) => match hex(ch) {
                Some(h) => st = St::Hex1(h),
                None if !ch.is_ascii_whitespace() => {
                    st = St::Plain;
                    out.extend_from_slice(&[b'=', ch]);
                }
                None => {}
            },
            (_, St::Hex1(h)) => {
                st = St::Plain;
                match hex(ch) {
                    Some(l) => out.push((h << 4) | l),
                    None => out.extend_from_slice(&[b'=', last, ch]),
                }
            }
        }
        last = ch;
    }
    out
}

/// Normalises a message id to `<id>`; mail-parser strips the brackets, lettre and Dynamics keep them.
fn bracket(id: &str) -> Option<String> {
    let id = id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim();
    (!id.is_empty()).then(|| format!("<{id}>"))
}

fn id_list(v: &HeaderValue) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => t.split_whitespace().filter_map(bracket).collect(),
        HeaderValue::TextList(l) => l.iter().filter_map(|t| bracket(t)).collect(),
        _ => Vec::new(),
    }
}

fn push_text(body: &mut String, t: &str) {
    if !body.is_empty() {
        body.push('\n');
    }
    body.push_str(t);
}

fn truncate_chars(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("\n[… body truncated by foldertrack]");
    }
}

/// Header fields added on the way to the mailbox: they differ between two deliveries of the
/// same message, so they are left out of the hash that identifies it.
const TRACE_HEADERS: [&str; 4] = ["received", "return-path", "delivered-to", "x-original-to"];

/// sha256 (hex, prefixed `sha256:`) of the raw message minus its trace header fields
/// (DESIGN §4.7). Line endings are normalised to LF first, so a copy stored with LF and one
/// served with CRLF hash the same.
pub fn content_hash(raw: &[u8]) -> String {
    let mut h = Sha256::new();
    let mut in_headers = true;
    let mut skipping = false;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let content = line.strip_suffix(b"\n").unwrap_or(line);
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        if in_headers {
            if content.is_empty() {
                in_headers = false;
            } else if content[0] == b' ' || content[0] == b'\t' {
                if skipping {
                    continue;
                }
            } else {
                let name = content.split(|&b| b == b':').next().unwrap_or_default();
                let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
                skipping = TRACE_HEADERS.contains(&name.as_str());
                if skipping {
                    continue;
                }
            }
        }
        h.update(content);
        h.update(b"\n");
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
From: \"Bob B\" <Bob@Acme.com>\r\nTo: alice@example.com, Carol <carol@globex.com>\r\n\
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <abc@x>\r\nIn-Reply-To: <p1@x>\r\n\
References: <p0@x> <p1@x>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0100\r\n\r\nHello there\r\n";

    #[test]
    fn extracts_headers_parties_and_ids() {
        let p = parse_message(MSG).unwrap();
        assert_eq!(p.subject.as_deref(), Some("Grüße"));
        assert_eq!(
            p.from.as_ref().unwrap().address.as_deref(),
            Some("bob@acme.com")
        );
        assert_eq!(p.from.as_ref().unwrap().name.as_deref(), Some("Bob B"));
        assert_eq!(p.to.len(), 2);
        assert_eq!(p.message_id.as_deref(), Some("<abc@x>"));
        assert_eq!(p.in_reply_to.as_deref(), Some("<p1@x>"));
        assert_eq!(p.references, vec!["<p0@x>", "<p1@x>"]);
        assert_eq!(p.date.as_deref(), Some("2024-01-01T10:00:00+01:00"));
        assert!(p.body_text.contains("Hello there"));
    }

    #[test]
    fn hash_ignores_trace_headers_and_line_endings() {
        let other = [
            b"Received: from elsewhere\r\n  continued\r\nDelivered-To: x@y\r\n" as &[u8],
            &MSG[MSG.iter().position(|&b| b == b'\n').unwrap() + 1..],
        ]
        .concat();
        assert_eq!(content_hash(MSG), content_hash(&other));
        let lf: Vec<u8> = MSG.iter().copied().filter(|&b| b != b'\r').collect();
        assert_eq!(content_hash(MSG), content_hash(&lf));
        let changed = [MSG, b"x"].concat();
        assert_ne!(content_hash(MSG), content_hash(&changed));
    }

    #[test]
    fn empty_input_is_an_error_not_a_panic() {
        assert_eq!(parse_message(b""), Err(ParseError::Empty));
        assert_eq!(parse_message(b"\r\n\r\n"), Err(ParseError::Empty));
    }

    fn nested(depth: usize, ctype: &str) -> Vec<u8> {
        let mut m = Vec::new();
        for _ in 0..depth {
            m.extend_from_slice(format!("Subject: s\r\nContent-Type: {ctype}\r\n\r\n").as_bytes());
        }
        m.extend_from_slice(b"Subject: leaf\r\n\r\nhello\r\n");
        m
    }

    #[test]
    fn deep_message_nesting_is_refused_before_parsing() {
        assert!(parse_message(&nested(20, "message/rfc822")).is_ok());
        assert_eq!(
            parse_message(&nested(MAX_MIME_DEPTH + 1, "message/rfc822")),
            Err(ParseError::TooDeep(MAX_MIME_DEPTH))
        );
        // Far beyond what a 2 MB stack survives without the check.
        assert_eq!(
            parse_message(&nested(50_000, "Message/Global")),
            Err(ParseError::TooDeep(MAX_MIME_DEPTH))
        );
        // mail-parser ignores white space inside field names; so does the check.
        assert_eq!(
            parse_message(
                String::from_utf8(nested(MAX_MIME_DEPTH + 1, "message/rfc822"))
                    .unwrap()
                    .replace("Content-Type:", " Content - Type :")
                    .as_bytes()
            ),
            Err(ParseError::TooDeep(MAX_MIME_DEPTH))
        );
        assert!(ParseError::TooDeep(MAX_MIME_DEPTH)
            .to_string()
            .contains("MIME nesting deeper than 128 levels"));
    }

    #[test]
    fn nesting_hidden_in_an_encoded_part_is_counted() {
        let inner = nested(MAX_MIME_DEPTH, "message/rfc822");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&inner);
        let wrap = |cte: &str, body: &str| {
            format!(
                "Subject: outer\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
                 Content-Type: message/rfc822\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n--b--\r\n"
            )
        };
        let m = wrap("base64", &b64);
        assert_eq!(
            parse_message(m.as_bytes()),
            Err(ParseError::TooDeep(MAX_MIME_DEPTH))
        );
        // Quoted-printable can spell the field name in escapes.
        let qp = String::from_utf8(inner)
            .unwrap()
            .replace("Content-Type", "=43ontent-Ty=\r\npe");
        let m = wrap("quoted-printable", &qp);
        assert_eq!(
            parse_message(m.as_bytes()),
            Err(ParseError::TooDeep(MAX_MIME_DEPTH))
        );
        // Shallow encoded parts parse.
        let b64 = base64::engine::general_purpose::STANDARD.encode(nested(3, "message/rfc822"));
        assert!(parse_message(wrap("base64", &b64).as_bytes()).is_ok());
    }

    #[test]
    fn digest_parts_count_as_messages() {
        let mut m = b"Subject: d\r\n".to_vec();
        for i in 0..=MAX_MIME_DEPTH {
            m.extend_from_slice(
                format!("Content-Type: multipart/digest; boundary=d{i}\r\n\r\n--d{i}\r\n\r\n")
                    .as_bytes(),
            );
        }
        m.extend_from_slice(b"Subject: leaf\r\n\r\nhi\r\n");
        assert_eq!(parse_message(&m), Err(ParseError::TooDeep(MAX_MIME_DEPTH)));
    }

    #[test]
    fn guard_decoders_agree_with_mail_parser() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        let folded: Vec<u8> = b64
            .as_bytes()
            .chunks(76)
            .flat_map(|c| c.iter().copied().chain(*b"\r\n"))
            .collect();
        assert_eq!(decode_base64_like_mail_parser(&folded), data);
        assert_eq!(
            decode_base64_like_mail_parser(b"QUJD\r\n--b\r\nRUZH"),
            b"ABC"
        );
        assert_eq!(decode_base64_like_mail_parser(b"QQ==QkM="), b"ABC");
        assert_eq!(
            decode_qp_loosely(b"a=3Db=\r\nc=\r\n\r\nd=zz"),
            b"a=bc\nd=zz"
        );
    }

    #[test]
    fn deep_multipart_is_left_to_mail_parser() {
        // Multipart nesting lives on mail-parser's heap stack: not limited.
        let mut m = b"Subject: m\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n".to_vec();
        for i in 0..2000 {
            m.extend_from_slice(
                format!(
                    "--b{i}\r\nContent-Type: multipart/mixed; boundary=b{}\r\n\r\n",
                    i + 1
                )
                .as_bytes(),
            );
        }
        m.extend_from_slice(b"--b2000\r\nContent-Type: text/plain\r\n\r\ndeep\r\n");
        assert!(parse_message(&m).unwrap().body_text.contains("deep"));
    }
}

#[cfg(test)]
mod deferred_tests {
    use super::*;
    use base64::Engine;

    fn mail(parts: &[(&str, &str, &str)]) -> Vec<u8> {
        let mut m = String::from(
            "From: a@x.com\r\nTo: b@y.com\r\nSubject: s\r\nMessage-ID: <m@x>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n",
        );
        for (ctype, cte, body) in parts {
            m.push_str(&format!(
                "--BB\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; filename=\"f.bin\"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{body}\r\n"
            ));
        }
        m.push_str("--BB--\r\n");
        m.into_bytes()
    }

    /// The SIMD decoder and the `base64` crate agree on every length and every byte.
    #[test]
    fn joined_decoding_gives_the_base64_crates_bytes() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 131 + i / 7) as u8).collect();
        for n in (0..64).chain([999, 1000, 1001, 2999, 3000]) {
            let b = base64::engine::general_purpose::STANDARD.encode(&data[..n]);
            assert_eq!(
                decode_base64_joined(b.as_bytes()).as_deref(),
                Some(&data[..n])
            );
        }
        assert_eq!(decode_base64_joined(b"QQ=").as_deref(), None);
        assert_eq!(decode_base64_joined(b"Q!==").as_deref(), None);
    }

    fn wrapped(data: &[u8], width: usize) -> String {
        let b = base64::engine::general_purpose::STANDARD.encode(data);
        b.as_bytes()
            .chunks(width)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    /// What the fast path gives must be what mail-parser alone gives, for clean and odd input.
    #[test]
    fn cut_attachments_parse_exactly_like_mail_parser() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        let unpadded = wrapped(&data[..4999], 76).trim_end_matches('=').to_string();
        let cases = vec![
            mail(&[("application/pdf", "base64", &wrapped(&data, 76))]),
            mail(&[("application/pdf", "BASE64", &wrapped(&data, 72))]),
            mail(&[("application/pdf", "base64", &wrapped(&data, 75))]),
            mail(&[("application/pdf", "base64", &unpadded)]),
            mail(&[("application/pdf", "base64", "QQ==QkM=\r\nRA==")]),
            // Non-zero trailing bits: SIMD refuses them, mail-parser keeps the bytes.
            mail(&[("application/pdf", "base64", "QR==")]),
            mail(&[("application/pdf", "base64", &wrapped(&data, 20_000))]),
            mail(&[("application/pdf", "base64", "not base64 at all!")]),
            mail(&[
                ("image/png", "base64", &wrapped(&data[..10], 76)),
                ("application/zip", "base64", &wrapped(&data[3..], 64)),
            ]),
            mail(&[(
                "text/plain; charset=utf-8",
                "base64",
                &wrapped(b"text body here", 76),
            )]),
            mail(&[(
                "message/rfc822",
                "base64",
                &wrapped(b"Subject: inner\r\n\r\nhi\r\n", 76),
            )]),
            mail(&[(
                "application/pdf",
                "base64",
                &format!("{}\r\n--notourboundary\r\nAAAA", wrapped(&data, 76)),
            )]),
        ];
        for (i, raw) in cases.iter().enumerate() {
            assert!(
                !deferrable_base64(raw).is_empty() || i >= 9,
                "case {i} takes the fast path"
            );
            let mut seen_fast = Vec::new();
            let fast = parse_message_with(raw, &mut |a, b| {
                seen_fast.push((a.sha256.clone(), b.len()));
                None
            });
            let mut seen_slow = Vec::new();
            let slow = parse_inner(
                raw,
                true,
                &mut |a, b| {
                    seen_slow.push((a.sha256.clone(), b.len()));
                    None
                },
                &[],
            );
            assert_eq!(fast, slow, "case {i}");
            assert_eq!(
                seen_fast, seen_slow,
                "case {i}: the sink saw the same files"
            );
        }
        let p = parse_message(&cases[0]).unwrap();
        assert_eq!(p.attachments.len(), 1);
        let odd = parse_message(&cases[5]).unwrap();
        assert_eq!(
            odd.attachments[0].size, 1,
            "QR== is one byte, as mail-parser reads it"
        );
        assert_eq!(p.attachments[0].size, data.len() as u64);
        assert_eq!(p.attachments[0].sha256, hex::encode(Sha256::digest(&data)));
    }
}
