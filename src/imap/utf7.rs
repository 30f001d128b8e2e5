//! Modified UTF-7 for IMAP folder names (RFC 3501 §5.1.3). async-imap quotes names but does not
//! encode them, so a folder called `Kunden/Müller` would otherwise be sent as raw UTF-8.

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// Encodes a Unicode folder name. The agent only sends names the server listed (already
/// encoded); the demo creates its folders from config names.
#[cfg(any(test, feature = "demo"))]
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out.push('-');
        pending.clear();
    };
    for c in s.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// A folder name that is not modified UTF-7 as RFC 3501 §5.1.3 defines it. Names come from the
/// server, so a lenient decoder lets the server choose what foldertrack sees: `&AC8-` (an
/// encoded `/`) would turn one folder into a path of two, and `&AAo-` would put a newline into
/// logs, alerts and commands built from the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not modified UTF-7 (RFC 3501 §5.1.3): {0}")]
pub(crate) struct Utf7Error(pub &'static str);

/// Decodes a folder name from the server, strictly: `&-` is `&`; `&…-` is modified base64 of
/// UTF-16 that must end on a character, with zero padding bits, and must not encode printable
/// ASCII (which represents itself) nor control characters; unencoded characters must not be
/// control characters either. Unencoded non-ASCII is let through: some servers send UTF-8
/// names, and refusing them would stop tracking folders that worked.
///
/// # Errors
/// The name breaks one of those rules; the caller reports the folder and does not track it
/// (see [`escape_raw`] for showing it), rather than mapping it onto another name.
pub(crate) fn decode(s: &str) -> Result<String, Utf7Error> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        push_raw(&mut out, &rest[..pos])?;
        let after = &rest[pos + 1..];
        let end = after
            .find('-')
            .ok_or(Utf7Error("`&` starts a base64 run that has no closing `-`"))?;
        let enc = &after[..end];
        if enc.is_empty() {
            out.push('&');
        } else {
            out.push_str(&decode_b64(enc)?);
        }
        rest = &after[end + 1..];
    }
    push_raw(&mut out, rest)?;
    Ok(out)
}

fn push_raw(out: &mut String, raw: &str) -> Result<(), Utf7Error> {
    if raw.chars().any(char::is_control) {
        return Err(Utf7Error("the name holds a control character"));
    }
    out.push_str(raw);
    Ok(())
}

fn decode_b64(enc: &str) -> Result<String, Utf7Error> {
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut bytes = Vec::new();
    for c in enc.bytes() {
        let v = B64.iter().position(|&b| b == c).ok_or(Utf7Error(
            "a base64 run holds a character outside modified base64",
        ))? as u32;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            bytes.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    if bits != 0 || nbits >= 6 || bytes.len() % 2 != 0 {
        return Err(Utf7Error(
            "a base64 run does not end on a whole UTF-16 character",
        ));
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let text =
        String::from_utf16(&units).map_err(|_| Utf7Error("a base64 run is not valid UTF-16"))?;
    if text.chars().any(|c| (' '..='~').contains(&c)) {
        return Err(Utf7Error(
            "a base64 run encodes printable ASCII, which must represent itself",
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Utf7Error("a base64 run encodes a control character"));
    }
    Ok(text)
}

/// A name as the server sent it, for showing a folder whose name does not decode: control
/// characters as `\xNN` (`\u{NN}` above ASCII), everything else as it is.
pub(crate) fn escape_raw(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            c if c.is_control() && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_examples_round_trip() {
        assert_eq!(
            encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(
            decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").unwrap(),
            "~peter/mail/台北/日本語"
        );
        assert_eq!(encode("Kunden & Müller"), "Kunden &- M&APw-ller");
        for s in ["INBOX", "Ä", "a&b", "😀 emoji", "Entwürfe", "", "raw ü"] {
            assert_eq!(decode(&encode(s)).unwrap(), s);
        }
        assert_eq!(decode("M&APw-ller").unwrap(), "Müller");
    }

    /// The old decoder accepted all of these, mapping them onto other names.
    #[test]
    fn strict_decoding_refuses_what_rfc3501_forbids() {
        for (bad, why) in [
            ("INBOX/&AC8-evil", "printable ASCII"),  // an encoded `/`
            ("&AGE-", "printable ASCII"),            // an encoded `a`
            ("a&AAo-b", "control"),                  // a newline
            ("a&AA0ACg-b", "control"),               // CR LF
            ("&AAA-", "control"),                    // NUL
            ("&AJs-", "control"),                    // C1 CSI
            ("a\nb", "control"),                     // unencoded
            ("a\u{1b}[2Jb", "control"),              // unencoded ESC
            ("bad&%%-x", "outside modified base64"), // not base64
            ("M&APw", "no closing"),                 // unterminated
            ("&APx-", "whole UTF-16"),               // padding bits set
            ("&AP-", "whole UTF-16"),                // half a character
            ("&AOQA-", "whole UTF-16"),              // three bytes
            ("&2D0AYQ-", "UTF-16"),                  // lone high surrogate
        ] {
            let e = decode(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn raw_names_are_shown_escaped() {
        assert_eq!(escape_raw("a\nb\u{1b}&AC8-"), "a\\x0ab\\x1b&AC8-");
    }
}
