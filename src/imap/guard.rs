//! Bounds on what a server may make us hold. async-imap reserves (and zero-fills) the full
//! size of a literal as soon as its `{N}` header arrives, up to 512 MiB, and keeps reading a
//! line until it ends: a hostile or broken server could make every connection hold half a
//! gigabyte. This lexer watches the bytes as they are read, follows IMAP's framing (lines,
//! and literals skipped by their announced size) and fails the read when a literal is larger
//! than any message we would fetch or a line is longer than any answer we expect.

use std::io;

#[derive(Debug, Clone)]
pub(crate) struct Guard {
    max_literal: u64,
    max_line: u64,
    /// Bytes of literal still to skip.
    literal_left: u64,
    line_len: u64,
    /// The line's last bytes, to spot a `{N}` (or `{N+}`) literal header before CRLF.
    tail: Vec<u8>,
}

impl Guard {
    pub(crate) fn new(max_literal: u64, max_line: u64) -> Guard {
        Guard {
            max_literal,
            max_line,
            literal_left: 0,
            line_len: 0,
            tail: Vec::with_capacity(32),
        }
    }

    /// Checks freshly read bytes.
    ///
    /// # Errors
    /// `InvalidData` naming what the server did, when it goes past a bound.
    pub(crate) fn check(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.literal_left > 0 {
                let n = self.literal_left.min(data.len() as u64);
                self.literal_left -= n;
                data = &data[n as usize..];
                continue;
            }
            let b = data[0];
            data = &data[1..];
            if b == b'\n' {
                let n = literal_size(&self.tail);
                self.tail.clear();
                self.line_len = 0;
                if let Some(n) = n {
                    if n > self.max_literal {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("the server announced a literal of {n} bytes, above the limit of {} (max_message_size): dropping the connection", self.max_literal),
                        ));
                    }
                    self.literal_left = n;
                }
                continue;
            }
            self.line_len += 1;
            if self.line_len > self.max_line {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the server sent a line longer than {} bytes without an end: dropping the connection", self.max_line),
                ));
            }
            if self.tail.len() == 32 {
                self.tail.remove(0);
            }
            self.tail.push(b);
        }
        Ok(())
    }
}

/// `…{123}\r` or `…{123+}\r` at the end of a line → 123.
fn literal_size(tail: &[u8]) -> Option<u64> {
    let t = tail.strip_suffix(b"\r").unwrap_or(tail);
    let t = t.strip_suffix(b"}")?;
    let t = t.strip_suffix(b"+").unwrap_or(t);
    let open = t.iter().rposition(|&c| c == b'{')?;
    let digits = &t[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_skipped_and_oversized_ones_refused() {
        let mut g = Guard::new(100, 50);
        g.check(b"* 1 FETCH (UID 5 BODY[] {10}\r\n0123456789)\r\n")
            .unwrap();
        // a literal whose content looks like a literal header and a long line is skipped
        g.check(b"* 2 FETCH (BODY[] {40}\r\n").unwrap();
        g.check(b"xxxxxxxxxxxxxxxxxxxxxxxxxxxx{999999}\r\nyy)\r\n")
            .unwrap();
        let e = Guard::new(100, 50)
            .check(b"* 3 FETCH (BODY[] {101}\r\n")
            .unwrap_err();
        assert!(e.to_string().contains("literal of 101 bytes"), "{e}");
        let e = Guard::new(100, 50).check(&[b'A'; 60]).unwrap_err();
        assert!(e.to_string().contains("line longer than 50"), "{e}");
        // split across reads
        let mut g = Guard::new(100, 50);
        g.check(b"* 4 FETCH (BODY[] {1").unwrap();
        assert!(g.check(b"000}\r\n").is_err());
    }
}
