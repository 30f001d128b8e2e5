//! The one blocking IMAP client of the tests and benches: set-up (folders, mail, flags) and raw
//! protocol work (IDLE, a cut session) against the sandbox Dovecot.
//!
//! It panics on any failure, naming the command: a set-up step that fails is the test's failure.
//! It speaks what the tests need and no more: tagged commands, untagged lines with their literals
//! skipped, and pipelined APPEND with LITERAL+ (one round trip for a thousand messages).

use crate::PASSWORD;
use base64::Engine as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A connection to the sandbox Dovecot on 127.0.0.1.
pub struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    tag: u32,
    /// The INBOX namespace's hierarchy separator (`'.'` until a login looked it up).
    pub sep: char,
}

/// The server's answer to one command.
#[derive(Debug)]
pub struct Reply {
    /// The tagged line without the tag, e.g. `OK Logged in`.
    pub status: String,
    /// The untagged lines before it (literals skipped), without line ends.
    pub lines: Vec<String>,
}

impl Reply {
    /// Whether the server answered OK.
    pub fn ok(&self) -> bool {
        self.status.starts_with("OK")
    }
}

impl Imap {
    /// Connects and checks the `* OK` greeting; not logged in.
    pub fn connect(port: u16) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the sandbox Dovecot");
        // No test waits 10 s for an answer that is coming: a silent server is a failure.
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        s.set_nodelay(true).ok();
        let w = s.try_clone().expect("clone the IMAP socket");
        let mut c = Imap {
            r: BufReader::new(s),
            w,
            tag: 0,
            sep: '.',
        };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "greeting: {greeting}");
        c
    }

    /// Connects and logs in as `user` with the sandbox password [`PASSWORD`].
    pub fn login(port: u16, user: &str) -> Imap {
        Imap::login_with(port, user, PASSWORD)
    }

    /// Connects, logs in, and looks up the hierarchy separator (so that [`Imap::name`] maps
    /// config-form folder names for this server).
    pub fn login_with(port: u16, user: &str, password: &str) -> Imap {
        let mut c = Imap::connect(port);
        c.cmd(&format!("LOGIN {} {}", quote(user), quote(password)));
        let list = c.cmd("LIST \"\" \"\"");
        if let Some(sep) = list
            .iter()
            .find(|l| l.starts_with("* LIST"))
            .and_then(|l| l.split('"').nth(1))
            .and_then(|q| q.chars().next())
        {
            c.sep = sep;
        }
        c
    }

    /// One line from the server, with its line end; panics when the connection is closed.
    pub fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let n = self
            .r
            .read_until(b'\n', &mut buf)
            .expect("read from the sandbox Dovecot");
        assert!(n > 0, "the IMAP connection was closed");
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Sends raw bytes, e.g. `DONE\r\n` to end an IDLE.
    pub fn send(&mut self, raw: &str) {
        self.try_send(raw).expect("write to the sandbox Dovecot");
    }

    /// Sends raw bytes to a connection that may be cut already.
    pub fn try_send(&mut self, raw: &str) -> std::io::Result<()> {
        self.w.write_all(raw.as_bytes())
    }

    /// Everything the server still sends until it closes the connection (errors end it too):
    /// for checking that a session was cut.
    pub fn rest(&mut self) -> String {
        let mut out = Vec::new();
        let _ = self.r.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends one command and reads its answer, whatever it is.
    pub fn command(&mut self, c: &str) -> Reply {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        self.send(&format!("{tag} {c}\r\n"));
        self.read_reply(&tag)
    }

    /// Sends one command; returns the untagged lines. Panics unless the answer is OK.
    pub fn cmd(&mut self, c: &str) -> Vec<String> {
        let reply = self.command(c);
        assert!(reply.ok(), "IMAP `{c}` failed: {reply:?}");
        reply.lines
    }

    /// Sends one command; whether it was OK, and the untagged lines.
    pub fn try_cmd(&mut self, c: &str) -> (bool, Vec<String>) {
        let reply = self.command(c);
        (reply.ok(), reply.lines)
    }

    fn read_reply(&mut self, tag: &str) -> Reply {
        let prefix = format!("{tag} ");
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            if let Some(rest) = l.strip_prefix(&prefix) {
                return Reply {
                    status: rest.trim_end().to_string(),
                    lines,
                };
            }
            // Skip a literal in untagged data (a FETCH of a body).
            if let Some(len) = l
                .trim_end()
                .strip_suffix('}')
                .and_then(|x| x.rsplit('{').next())
                .and_then(|n| n.parse::<usize>().ok())
            {
                let mut buf = vec![0; len];
                self.r
                    .read_exact(&mut buf)
                    .expect("read a literal from the sandbox Dovecot");
            }
            lines.push(l.trim_end().to_string());
        }
    }

    /// Folder in config form (`/` between levels, Unicode) → its name on this server.
    pub fn name(&self, folder: &str) -> String {
        server_name(folder, self.sep)
    }

    /// Creates a folder (config form).
    pub fn create(&mut self, folder: &str) {
        let n = quote(&self.name(folder));
        self.cmd(&format!("CREATE {n}"));
    }

    /// APPENDs many messages pipelined with LITERAL+ (one round trip for all), with `flags`
    /// (e.g. `\Seen`, or empty).
    pub fn append_many(&mut self, folder: &str, msgs: &[Vec<u8>], flags: &str) {
        let n = quote(&self.name(folder));
        let first = self.tag + 1;
        let mut buf = Vec::new();
        for m in msgs {
            self.tag += 1;
            buf.extend_from_slice(
                format!("t{} APPEND {n} ({flags}) {{{}+}}\r\n", self.tag, m.len()).as_bytes(),
            );
            buf.extend_from_slice(m);
            buf.extend_from_slice(b"\r\n");
            if buf.len() > 1 << 20 {
                self.w
                    .write_all(&buf)
                    .expect("APPEND to the sandbox Dovecot");
                buf.clear();
            }
        }
        self.w
            .write_all(&buf)
            .expect("APPEND to the sandbox Dovecot");
        for t in first..=self.tag {
            let reply = self.read_reply(&format!("t{t}"));
            assert!(reply.ok(), "APPEND to {folder} failed: {reply:?}");
        }
    }

    /// APPENDs one message.
    pub fn append(&mut self, folder: &str, msg: &[u8]) {
        self.append_many(folder, &[msg.to_vec()], "");
    }

    /// FLAGS of every message of a folder, one `* n FETCH` line each, by UID.
    pub fn flags(&mut self, folder: &str) -> Vec<String> {
        let n = quote(&self.name(folder));
        self.cmd(&format!("EXAMINE {n}"));
        self.cmd("UID FETCH 1:* (FLAGS)")
            .into_iter()
            .filter(|l| l.contains("FETCH"))
            .collect()
    }

    /// Messages in a folder (STATUS MESSAGES).
    pub fn count(&mut self, folder: &str) -> usize {
        let n = quote(&self.name(folder));
        let lines = self.cmd(&format!("STATUS {n} (MESSAGES)"));
        lines
            .iter()
            .find_map(|l| {
                l.split("MESSAGES ")
                    .nth(1)?
                    .trim_end_matches(')')
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no MESSAGES in {lines:?}"))
    }
}

/// An IMAP quoted string.
pub fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Config form → server name: `/` becomes `sep`, then modified UTF-7 (RFC 3501 §5.1.3).
///
/// Written here with the `base64` crate's IMAP alphabet rather than taken from foldertrack (the
/// test kit must not depend on it), which also makes it an independent check of its encoder.
pub fn server_name(folder: &str, sep: char) -> String {
    let joined: String = folder
        .chars()
        .map(|c| if c == '/' { sep } else { c })
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::IMAP_MUTF7,
        base64::engine::general_purpose::NO_PAD,
    );
    let mut out = String::new();
    let mut wide: Vec<u8> = Vec::new();
    let flush = |wide: &mut Vec<u8>, out: &mut String| {
        if !wide.is_empty() {
            out.push('&');
            out.push_str(&engine.encode(&*wide));
            out.push('-');
            wide.clear();
        }
    };
    for c in joined.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut wide, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                wide.extend_from_slice(&u.to_be_bytes());
            }
        }
    }
    flush(&mut wide, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_follow_rfc_3501() {
        assert_eq!(server_name("INBOX/Tracked/Acme", '.'), "INBOX.Tracked.Acme");
        assert_eq!(server_name("INBOX/Tracked", '/'), "INBOX/Tracked");
        assert_eq!(server_name("Ärger", '.'), "&AMQ-rger");
        assert_eq!(
            server_name("Kunden/Müller & Söhne", '.'),
            "Kunden.M&APw-ller &- S&APY-hne"
        );
        // RFC 3501's own example.
        assert_eq!(
            server_name("~peter/mail/台北/日本語", '/'),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(quote("Say \"hi\" \\"), "\"Say \\\"hi\\\" \\\\\"");
    }
}
