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
}

/// Why a message could not be parsed. It goes to quarantine with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("no RFC 5322 header could be read (is this a mail message at all?)")]
    NoHeaders,
}

/// Parses one message.
///
/// # Errors
/// [`ParseError`] when the bytes hold no message mail-parser can read; anything less broken
/// (bad boundaries, junk header lines, unknown charsets) still parses with what can be read.
pub fn parse_message(raw: &[u8]) -> Result<ParsedMessage, ParseError> {
    parse_inner(raw, true, &mut |_, _| None)
}

/// [`parse_message`], handing every attachment's decoded bytes to `sink`.
pub fn parse_message_with(
    raw: &[u8],
    sink: &mut AttachmentSink<'_>,
) -> Result<ParsedMessage, ParseError> {
    parse_inner(raw, true, sink)
}

fn parse_inner(
    raw: &[u8],
    recover: bool,
    sink: &mut AttachmentSink<'_>,
) -> Result<ParsedMessage, ParseError> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::Empty);
    }
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or(ParseError::NoHeaders)?;
    if msg.headers().is_empty() {
        return Err(ParseError::NoHeaders);
    }
    let addrs = |a: Option<&Address>| -> Vec<MailAddr> {
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
    };
    let mut body_text = String::new();
    for i in 0..msg.text_body_count() {
        if let Some(t) = msg.body_text(i) {
            push_text(&mut body_text, &t);
            if body_text.len() > MAX_BODY_CHARS {
                break;
            }
        }
    }

    let mut attachments = Vec::new();
    let mut recovered = Vec::new();
    for p in msg.attachments() {
        // A nameless text part that nobody marked as an attachment is message text that
        // mail-parser could not place: the body of a multipart whose boundary is wrong, or
        // the inline text/calendar alternative of an invitation. It is not a file.
        let ctype = p.content_type().map(|ct| ct.ctype().to_ascii_lowercase());
        let is_multipart = ctype.as_deref() == Some("multipart");
        let is_text = ctype.is_none() || ctype.as_deref() == Some("text") || is_multipart;
        let disposed = p
            .content_disposition()
            .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"));
        if is_text && !disposed && p.attachment_name().is_none() && p.message().is_none() {
            if body_text.trim().is_empty() {
                match (is_multipart && recover)
                    .then(|| recover_multipart(p.contents(), sink))
                    .flatten()
                {
                    Some(inner) => {
                        push_text(&mut body_text, &inner.body_text);
                        recovered.extend(inner.attachments);
                    }
                    None => {
                        if let Some(t) = p.text_contents() {
                            push_text(&mut body_text, t);
                        }
                    }
                }
            }
            continue;
        }
        let decoded;
        let mut contents = p.contents();
        // mail-parser leaves the last part of a multipart whose closing boundary is missing
        // undecoded; decode it here so its size and hash are the file's.
        if p.encoding == mail_parser::Encoding::None
            && p.content_transfer_encoding()
                .is_some_and(|e| e.eq_ignore_ascii_case("base64"))
        {
            let clean: Vec<u8> = contents
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            if let Ok(d) = base64::engine::general_purpose::STANDARD.decode(&clean) {
                decoded = d;
                contents = &decoded;
            }
        }
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
    attachments.extend(recovered);
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
    })
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
    parse_inner(synthetic.as_bytes(), false, sink)
        .ok()
        .filter(|p| !p.body_text.trim().is_empty())
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
}
