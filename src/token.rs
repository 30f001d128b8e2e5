//! Dynamics 365 tracking tokens: the short code such as `CRM:0001002` that server-side sync
//! appends to the subject of every email sent from the CRM.
//!
//! Why it exists: a reply keeps the subject (plus `RE:`/`AW:`/`[EXT]` decorations), so the
//! token comes back even when the customer's client drops `In-Reply-To`/`References`, and
//! incoming mail can still be correlated to the sent activity. Dynamics builds the token from
//! four organisation settings (Settings › Email › Email Tracking, formerly System Settings ›
//! Email), mirrored by [`TokenFormat`]:
//!
//! * a prefix (default `CRM:`),
//! * a base digit 0–9, so that several organisations or deployments sharing a mail system
//!   produce disjoint tokens,
//! * the sending user's number, zero-padded to `user_digits` (default 3),
//! * a per-user counter, zero-padded to `counter_digits` (default 3), which starts over when
//!   it runs out of digits.
//!
//! Because the counter wraps (after 999 mails per user with the defaults), a token is not
//! unique forever: callers should treat a match as a strong hint to be confirmed
//! (participants, date), not as a primary key.
//!
//! A leaf module (it knows no other part of foldertrack): the configuration holds a
//! [`TokenFormat`], tracking and the store match with it, and none of them has to import
//! another for it.

use serde::{Deserialize, Serialize};

/// Longest subject [`TokenFormat::append`] produces, counted in `char`s (Unicode scalar
/// values), not bytes. Note that a CRM that counts UTF-16 units sees characters outside the
/// BMP (most emoji) as two.
pub(crate) const MAX_SUBJECT_CHARS: usize = 255;

/// Longest prefix [`TokenFormat::validate`] accepts: the token must stay short next to the
/// subject it shares the 255 characters with.
pub(crate) const MAX_PREFIX_CHARS: usize = 20;

/// Marks a subject that [`TokenFormat::append`] had to shorten.
const ELLIPSIS: char = '…';

/// Tracking token format, as configured in the CRM. Missing fields take the Dynamics defaults,
/// so a config only needs to name what it changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenFormat {
    /// Text before the digits, e.g. `CRM:`. Matched case-insensitively by `TokenFormat::find`.
    pub prefix: String,
    /// First digit after the prefix (0–9), telling organisations/deployments apart.
    pub base_digit: u8,
    /// Width of the user number (1–9).
    pub user_digits: u8,
    /// Width of the counter (1–9).
    pub counter_digits: u8,
}

impl Default for TokenFormat {
    /// The Dynamics defaults: `CRM:` + base 0 + 3 user digits + 3 counter digits.
    fn default() -> Self {
        TokenFormat {
            prefix: "CRM:".to_string(),
            base_digit: 0,
            user_digits: 3,
            counter_digits: 3,
        }
    }
}

/// A tracking token found in a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Token {
    /// The token with the prefix as configured (whatever case the subject used) and its digits,
    /// e.g. `CRM:0001002`; equal to what [`TokenFormat::make`] gives for the same values, so it
    /// can be compared with stored tokens directly.
    pub text: String,
    /// The base digit; compare it with [`TokenFormat::base_digit`] to tell tokens of this
    /// deployment from those of another organisation sharing the mail system.
    pub base: u8,
    /// The user number.
    pub user: u32,
    /// The counter.
    pub counter: u64,
}

impl TokenFormat {
    /// Checks the settings, returning an error message that says what to change.
    ///
    /// * The prefix is 1–20 characters of printable ASCII without spaces:
    ///   anything else may be RFC 2047-encoded, folded or trimmed by mail clients and gateways,
    ///   and the token would no longer come back verbatim.
    /// * The prefix must not end with a digit, or it would run into the token's digits and the
    ///   boundary between them could not be found again.
    /// * The base digit is 0–9 and both widths are 1–9, as in Dynamics (9 digits also keep the
    ///   user number within `u32`).
    pub(crate) fn validate(&self) -> Result<(), String> {
        let p = &self.prefix;
        let len = p.chars().count();
        if len == 0 {
            return Err(format!(
                "tracking token prefix is empty: set it to 1–{MAX_PREFIX_CHARS} printable ASCII \
                 characters, e.g. \"CRM:\""
            ));
        }
        if len > MAX_PREFIX_CHARS {
            return Err(format!(
                "tracking token prefix {p:?} is {len} characters long: shorten it to at most \
                 {MAX_PREFIX_CHARS}"
            ));
        }
        if let Some(c) = p.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "tracking token prefix {p:?} contains {c:?}: use only printable ASCII characters \
                 without spaces, as mail clients may encode, fold or trim anything else"
            ));
        }
        if p.ends_with(|c: char| c.is_ascii_digit()) {
            return Err(format!(
                "tracking token prefix {p:?} ends with a digit, which would run into the token's \
                 digits: end it with a non-digit such as ':' or '#'"
            ));
        }
        if self.base_digit > 9 {
            return Err(format!(
                "tracking token base_digit is {}: use a single digit 0–9",
                self.base_digit
            ));
        }
        for (name, value) in [
            ("user_digits", self.user_digits),
            ("counter_digits", self.counter_digits),
        ] {
            if !(1..=9).contains(&value) {
                return Err(format!(
                    "tracking token {name} is {value}: use a width from 1 to 9 (Dynamics default 3)"
                ));
            }
        }
        Ok(())
    }

    /// The base digit actually used; an unvalidated out-of-range value is clamped to 9 so that
    /// [`make`](Self::make) and [`find`](Self::find) agree and never panic.
    fn base(&self) -> u8 {
        self.base_digit.min(9)
    }

    /// User-number width actually used (clamped to 1–9, see [`base`](Self::base)).
    fn user_width(&self) -> u8 {
        self.user_digits.clamp(1, 9)
    }

    /// Counter width actually used (clamped to 1–9, see [`base`](Self::base)).
    fn counter_width(&self) -> u8 {
        self.counter_digits.clamp(1, 9)
    }

    /// The token for user number `user` and counter `n`.
    ///
    /// Both are reduced modulo their width (`10^user_digits`, `10^counter_digits`): Dynamics
    /// starts the counter over when it runs out of digits rather than growing the token, so a
    /// fixed width is what replies carry back and what [`find`](Self::find) expects. With the
    /// defaults, counter 1000 gives `…000`.
    ///
    /// Meant for a [validated](Self::validate) format; out-of-range widths or base are clamped
    /// rather than panicking.
    pub(crate) fn make(&self, user: u32, n: u64) -> String {
        let uw = self.user_width();
        let cw = self.counter_width();
        let user = u64::from(user) % 10u64.pow(u32::from(uw));
        let counter = n % 10u64.pow(u32::from(cw));
        format!(
            "{}{}{:0uw$}{:0cw$}",
            self.prefix,
            self.base(),
            user,
            counter,
            uw = usize::from(uw),
            cw = usize::from(cw),
        )
    }

    /// `subject` + `" "` + `token`, at most [`MAX_SUBJECT_CHARS`] characters.
    ///
    /// The token goes at the end, as Dynamics puts it, and must survive whole: a subject cut
    /// later by a gateway or the CRM would cut the token first. So a long subject is shortened
    /// here instead, at a `char` boundary, with trailing whitespace trimmed and `…` marking
    /// the cut. Trailing whitespace of the subject is trimmed in any case, and an empty (or
    /// blank) subject gives just the token. Lengths are counted in `char`s, not bytes, so
    /// Japanese or emoji subjects keep as many characters as ASCII ones. (A cut may still fall
    /// inside a multi-`char` grapheme such as a ZWJ emoji sequence.) A `token` longer than the
    /// limit is returned alone and whole, never cut.
    pub(crate) fn append(&self, subject: &str, token: &str) -> String {
        let subject = subject.trim_end();
        if subject.is_empty() {
            return token.to_string();
        }
        let sep = if token.is_empty() { "" } else { " " };
        let budget = MAX_SUBJECT_CHARS.saturating_sub(token.chars().count() + sep.len());
        if subject.chars().count() <= budget {
            return format!("{subject}{sep}{token}");
        }
        // Keep room for the ellipsis.
        let keep = budget.saturating_sub(1);
        let end = subject
            .char_indices()
            .nth(keep)
            .map_or(subject.len(), |(i, _)| i);
        let cut = subject.get(..end).unwrap_or_default().trim_end();
        if cut.is_empty() {
            return token.to_string();
        }
        format!("{cut}{ELLIPSIS}{sep}{token}")
    }

    /// Finds the tracking token in a subject.
    ///
    /// Looks anywhere, not just at the end: clients prepend `RE:`/`FW:`/`AW:`, gateways add
    /// `[EXT]`, users wrap the token in brackets or type more after it. The prefix matches
    /// case-insensitively (`crm:0001002` counts) since clients and people change case. A match
    /// needs exactly `1 + user_digits + counter_digits` ASCII digits right after the prefix,
    /// not followed by another digit: anything shorter or longer is some other number (an
    /// order or ticket number), not a token of this format.
    ///
    /// When several tokens appear, the last one wins: each tracked message sent from the CRM
    /// appends its own token, so the last one belongs to the most recent sent activity, the
    /// one being answered.
    ///
    /// The base digit is returned, not checked: compare [`Token::base`] with
    /// [`base_digit`](Self::base_digit) to ignore other organisations' tokens.
    pub(crate) fn find(&self, subject: &str) -> Option<Token> {
        let prefix = self.prefix.as_bytes();
        if prefix.is_empty() {
            return None;
        }
        let uw = usize::from(self.user_width());
        let cw = usize::from(self.counter_width());
        let want = 1 + uw + cw;
        let bytes = subject.as_bytes();
        // Byte-wise matching is sound: the prefix is ASCII (or at least valid UTF-8 compared
        // exactly), so a match always starts and ends at a char boundary. Scanning from the end
        // makes the first hit the last token.
        let start = bytes
            .windows(prefix.len())
            .enumerate()
            .rev()
            .filter(|(_, w)| w.eq_ignore_ascii_case(prefix))
            .map(|(i, _)| i + prefix.len())
            .find(|&start| {
                bytes
                    .get(start..)
                    .unwrap_or_default()
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count()
                    == want
            })?;
        let digits = subject.get(start..start + want)?;
        let (base, rest) = digits.split_at(1);
        let (user, counter) = rest.split_at(uw);
        // All ASCII digits, at most 9 per field: these parses cannot fail or overflow.
        Some(Token {
            text: format!("{}{digits}", self.prefix),
            base: base.parse().ok()?,
            user: user.parse().ok()?,
            counter: counter.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(prefix: &str, base: u8, user_digits: u8, counter_digits: u8) -> TokenFormat {
        TokenFormat {
            prefix: prefix.to_string(),
            base_digit: base,
            user_digits,
            counter_digits,
        }
    }

    fn tok(text: &str, base: u8, user: u32, counter: u64) -> Token {
        Token {
            text: text.to_string(),
            base,
            user,
            counter,
        }
    }

    // --- defaults and validation ---

    #[test]
    fn defaults_are_dynamics_defaults() {
        let f = TokenFormat::default();
        assert_eq!(f, fmt("CRM:", 0, 3, 3));
        assert_eq!(f.validate(), Ok(()));
    }

    #[test]
    fn validate_accepts_edges() {
        assert_eq!(fmt("X", 9, 1, 9).validate(), Ok(()));
        assert_eq!(fmt(&"A".repeat(20), 0, 9, 1).validate(), Ok(()));
        assert_eq!(fmt("TKT#", 5, 2, 5).validate(), Ok(()));
        assert_eq!(
            fmt("A1:", 0, 3, 3).validate(),
            Ok(()),
            "digits inside are fine"
        );
        assert_eq!(fmt("[~!]", 0, 3, 3).validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_prefix() {
        let cases = [
            ("", "empty"),
            ("ABCDEFGHIJKLMNOPQRSTU", "at most 20"),
            ("CRM :", "without spaces"),
            ("CRM\t", "without spaces"),
            ("CRM\u{7f}", "printable ASCII"),
            ("CRM→", "printable ASCII"),
            ("ＣＲＭ:", "printable ASCII"),
            ("CRM1", "ends with a digit"),
            ("9", "ends with a digit"),
        ];
        for (prefix, needle) in cases {
            let err = fmt(prefix, 0, 3, 3).validate().unwrap_err();
            assert!(err.contains("prefix"), "{prefix:?}: {err}");
            assert!(err.contains(needle), "{prefix:?}: {err}");
        }
    }

    #[test]
    fn validate_counts_prefix_in_chars() {
        // 20 non-ASCII chars are rejected for being non-ASCII, not for a byte length > 20.
        let err = fmt(&"é".repeat(20), 0, 3, 3).validate().unwrap_err();
        assert!(err.contains("printable ASCII"), "{err}");
    }

    #[test]
    fn validate_rejects_bad_numbers() {
        let err = fmt("CRM:", 10, 3, 3).validate().unwrap_err();
        assert!(err.contains("base_digit") && err.contains("0–9"), "{err}");
        for (u, c, name) in [
            (0, 3, "user_digits"),
            (10, 3, "user_digits"),
            (3, 0, "counter_digits"),
            (3, 10, "counter_digits"),
            (3, 255, "counter_digits"),
        ] {
            let err = fmt("CRM:", 0, u, c).validate().unwrap_err();
            assert!(err.contains(name) && err.contains("1 to 9"), "{err}");
        }
    }

    #[test]
    fn serde_fills_defaults_and_rejects_unknown_fields() {
        let f: TokenFormat = toml::from_str("prefix = \"TKT#\"\ncounter_digits = 5").unwrap();
        assert_eq!(f, fmt("TKT#", 0, 3, 5));
        let f: TokenFormat = toml::from_str("").unwrap();
        assert_eq!(f, TokenFormat::default());
        assert!(toml::from_str::<TokenFormat>("prefx = \"X:\"").is_err());

        let f = fmt("TKT#", 4, 2, 6);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(serde_json::from_str::<TokenFormat>(&json).unwrap(), f);
        let t = tok("CRM:0001002", 0, 1, 2);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Token>(&json).unwrap(), t);
    }

    // --- make ---

    #[test]
    fn make_defaults() {
        let f = TokenFormat::default();
        assert_eq!(f.make(1, 2), "CRM:0001002");
        assert_eq!(f.make(0, 0), "CRM:0000000");
        assert_eq!(f.make(999, 999), "CRM:0999999");
        assert_eq!(f.make(42, 7), "CRM:0042007");
    }

    #[test]
    fn make_wraps_counter_and_user() {
        let f = TokenFormat::default();
        assert_eq!(f.make(1, 1000), "CRM:0001000");
        assert_eq!(f.make(1, 1001), "CRM:0001001");
        assert_eq!(f.make(1, 123_456), "CRM:0001456");
        assert_eq!(f.make(1, u64::MAX), "CRM:0001615");
        assert_eq!(f.make(1000, 2), "CRM:0000002");
        assert_eq!(f.make(1234, 2), "CRM:0234002");
        assert_eq!(f.make(u32::MAX, 2), "CRM:0295002");
    }

    #[test]
    fn make_custom_format() {
        let f = fmt("TKT#", 3, 2, 5);
        assert_eq!(f.make(42, 7), "TKT#34200007");
        assert_eq!(f.make(142, 100_007), "TKT#34200007");
        assert_eq!(fmt("CRM:", 7, 3, 3).make(1, 2), "CRM:7001002");
        assert_eq!(fmt("X", 0, 1, 1).make(5, 15), "X055");
    }

    #[test]
    fn make_widest_format() {
        let f = fmt("CRM:", 9, 9, 9);
        assert_eq!(f.make(u32::MAX, u64::MAX), "CRM:9294967295709551615");
        assert_eq!(f.make(1, 2), "CRM:9000000001000000002");
    }

    #[test]
    fn make_never_panics_on_unvalidated_format() {
        assert_eq!(fmt("CRM:", 12, 0, 0).make(12, 34), "CRM:924");
        assert_eq!(
            fmt("CRM:", 0, 200, 200).make(1, 2),
            "CRM:0000000001000000002"
        );
        assert_eq!(fmt("", 0, 3, 3).make(1, 2), "0001002");
    }

    // --- append ---

    #[test]
    fn append_short_subject() {
        let f = TokenFormat::default();
        assert_eq!(
            f.append("Quote for 40 widgets", "CRM:0001002"),
            "Quote for 40 widgets CRM:0001002"
        );
        assert_eq!(f.append("Quote  \t ", "CRM:0001002"), "Quote CRM:0001002");
        assert_eq!(f.append("", "CRM:0001002"), "CRM:0001002");
        assert_eq!(f.append("   ", "CRM:0001002"), "CRM:0001002");
        assert_eq!(f.append("Quote", ""), "Quote");
    }

    #[test]
    fn append_exact_fit_is_not_cut() {
        let f = TokenFormat::default();
        let token = f.make(1, 2);
        let subject = "a".repeat(MAX_SUBJECT_CHARS - 1 - token.len());
        let out = f.append(&subject, &token);
        assert_eq!(out.chars().count(), MAX_SUBJECT_CHARS);
        assert_eq!(out, format!("{subject} {token}"));
        assert!(!out.contains(ELLIPSIS));
    }

    #[test]
    fn append_one_over_is_cut() {
        let f = TokenFormat::default();
        let token = f.make(1, 2);
        let subject = "a".repeat(MAX_SUBJECT_CHARS - token.len());
        let out = f.append(&subject, &token);
        assert_eq!(out.chars().count(), MAX_SUBJECT_CHARS);
        let kept = "a".repeat(MAX_SUBJECT_CHARS - token.len() - 2);
        assert_eq!(out, format!("{kept}… {token}"));
    }

    #[test]
    fn append_long_ascii_subject() {
        let f = TokenFormat::default();
        let token = f.make(12, 345);
        let subject = "Quote for widgets ".repeat(40);
        let out = f.append(&subject, &token);
        assert!(out.chars().count() <= MAX_SUBJECT_CHARS);
        assert!(out.ends_with(&format!("… {token}")), "{out}");
        assert!(out.starts_with("Quote for widgets Quote"));
        assert_eq!(f.find(&out).map(|t| t.text), Some(token));
    }

    #[test]
    fn append_trims_whitespace_before_ellipsis() {
        let f = TokenFormat::default();
        let token = f.make(1, 2);
        // The cut falls right after a run of spaces, which must not end up before the "…".
        let keep = MAX_SUBJECT_CHARS - 1 - token.len() - 1;
        let subject = format!("{}     {}", "a".repeat(keep - 5), "b".repeat(50));
        let out = f.append(&subject, &token);
        assert_eq!(out, format!("{}… {token}", "a".repeat(keep - 5)));
    }

    #[test]
    fn append_blank_after_cut_gives_token() {
        let f = TokenFormat::default();
        let subject = format!("{}x", " ".repeat(400));
        assert_eq!(f.append(&subject, "CRM:0001002"), "CRM:0001002");
    }

    #[test]
    fn append_japanese_counts_chars_not_bytes() {
        let f = TokenFormat::default();
        let token = f.make(7, 8);
        // 243 chars (729 bytes) fit exactly next to an 11-char token.
        let fits = "見".repeat(MAX_SUBJECT_CHARS - 1 - token.len());
        let out = f.append(&fits, &token);
        assert_eq!(out, format!("{fits} {token}"));
        assert!(out.len() > MAX_SUBJECT_CHARS);

        let long = "お見積もりの件について".repeat(30);
        let out = f.append(&long, &token);
        assert_eq!(out.chars().count(), MAX_SUBJECT_CHARS);
        assert!(out.starts_with("お見積もりの件について"));
        assert!(out.ends_with(&format!("… {token}")));
        assert_eq!(f.find(&out).map(|t| t.text), Some(token));
    }

    #[test]
    fn append_emoji_subject() {
        let f = TokenFormat::default();
        let token = f.make(1, 2);
        let long = "🎉📦".repeat(200);
        let out = f.append(&long, &token);
        assert_eq!(out.chars().count(), MAX_SUBJECT_CHARS);
        assert!(out.ends_with(&format!("… {token}")));
        // Whole code points only: 242 emoji survive before the ellipsis.
        let kept: String = out.chars().take_while(|&c| c != ELLIPSIS).collect();
        assert_eq!(kept.chars().count(), MAX_SUBJECT_CHARS - token.len() - 2);
        assert!(kept.chars().all(|c| c == '🎉' || c == '📦'));
    }

    #[test]
    fn append_mixed_scripts_never_exceeds_limit() {
        let f = fmt("TKT#", 1, 9, 9);
        let token = f.make(123_456_789, 987_654_321);
        let pieces = ["a", "é", "見", "🎉", " ", "ß", "\u{301}"];
        for len in [
            0usize, 1, 100, 200, 230, 231, 232, 233, 234, 254, 255, 256, 300, 1000,
        ] {
            let subject: String = (0..len).map(|i| pieces[i % pieces.len()]).collect();
            let out = f.append(&subject, &token);
            assert!(out.chars().count() <= MAX_SUBJECT_CHARS, "len {len}: {out}");
            assert!(out.ends_with(&token), "len {len}");
            assert_eq!(f.find(&out).map(|t| t.text), Some(token.clone()));
        }
    }

    #[test]
    fn append_oversized_token_is_kept_whole() {
        let f = TokenFormat::default();
        let token = "T".repeat(300);
        assert_eq!(f.append("Subject", &token), token);
    }

    // --- find ---

    #[test]
    fn find_plain_and_reply_prefixes() {
        let f = TokenFormat::default();
        let want = Some(tok("CRM:0001002", 0, 1, 2));
        for subject in [
            "Quote for 40 widgets CRM:0001002",
            "RE: Quote for 40 widgets CRM:0001002",
            "RE: AW: Quote CRM:0001002",
            "FW: Fwd: WG: Quote CRM:0001002",
            "[EXT] RE: Quote CRM:0001002 ",
            "CRM:0001002",
            "CRM:0001002 at the start",
            "Quote CRM:0001002abc",
            "Quote (CRM:0001002)",
            "件名CRM:0001002です",
        ] {
            assert_eq!(f.find(subject), want, "{subject}");
        }
    }

    #[test]
    fn find_is_case_insensitive_and_normalises() {
        let f = TokenFormat::default();
        let want = Some(tok("CRM:0001002", 0, 1, 2));
        assert_eq!(f.find("Quote [crm:0001002]"), want);
        assert_eq!(f.find("re: quote Crm:0001002"), want);
        // Configured lower case: the text follows the configuration.
        let lower = fmt("crm:", 0, 3, 3);
        assert_eq!(
            lower.find("RE: Quote CRM:0001002"),
            Some(tok("crm:0001002", 0, 1, 2))
        );
    }

    #[test]
    fn find_last_token_wins() {
        let f = TokenFormat::default();
        assert_eq!(
            f.find("RE: Quote CRM:0001002 FW: Order CRM:0042017"),
            Some(tok("CRM:0042017", 0, 42, 17))
        );
        // A later non-token does not hide an earlier token.
        assert_eq!(
            f.find("Quote CRM:0001002 re CRM:12 and CRM:00010020"),
            Some(tok("CRM:0001002", 0, 1, 2))
        );
    }

    #[test]
    fn find_rejects_wrong_digit_count() {
        let f = TokenFormat::default();
        for subject in [
            "Quote CRM:000100",
            "Quote CRM:00010",
            "Quote CRM:",
            "Quote CRM:x0001002",
            "Quote CRM: 0001002",
            "Quote CRM:00010020",
            "Quote CRM:0001002123",
            "Quote 0001002",
            "Quote CRM0001002",
            "Quote CRM;0001002",
            "",
        ] {
            assert_eq!(f.find(subject), None, "{subject}");
        }
        // A non-digit right after the digits ends the token.
        assert_eq!(
            f.find("Quote CRM:0001002.5"),
            Some(tok("CRM:0001002", 0, 1, 2))
        );
        // Full-width digits are not ASCII digits.
        assert_eq!(f.find("Quote CRM:０００１００２"), None);
    }

    #[test]
    fn find_returns_foreign_base() {
        let f = TokenFormat::default();
        assert_eq!(
            f.find("RE: Quote CRM:5001002"),
            Some(tok("CRM:5001002", 5, 1, 2))
        );
    }

    #[test]
    fn find_custom_format() {
        let f = fmt("TKT#", 3, 2, 5);
        assert_eq!(
            f.find("AW: Ticket tkt#34200007 reopened"),
            Some(tok("TKT#34200007", 3, 42, 7))
        );
        // Default-width token is not one of this format.
        assert_eq!(f.find("Ticket TKT#0001002"), None);
        assert_eq!(f.find("Ticket CRM:34200007"), None);
    }

    #[test]
    fn find_overlapping_prefix_candidates() {
        // "::" matches at two positions in ":::0001002"; only the second has the digits.
        let f = fmt("::", 0, 3, 3);
        assert_eq!(f.find("Quote :::0001002"), Some(tok("::0001002", 0, 1, 2)));
    }

    #[test]
    fn find_with_empty_prefix_finds_nothing() {
        assert_eq!(fmt("", 0, 3, 3).find("Quote 0001002"), None);
    }

    #[test]
    fn find_roundtrips_make() {
        let formats = [
            TokenFormat::default(),
            fmt("TKT#", 3, 2, 5),
            fmt("X", 9, 1, 1),
            fmt("crm:", 0, 9, 9),
            fmt("[Ref:", 4, 4, 6),
        ];
        let users = [0u32, 1, 7, 42, 999, 1000, 12_345, u32::MAX];
        let counters = [0u64, 1, 2, 999, 1000, 1001, 99_999, 123_456_789, u64::MAX];
        for f in &formats {
            assert_eq!(f.validate(), Ok(()));
            let umod = 10u64.pow(u32::from(f.user_digits));
            let cmod = 10u64.pow(u32::from(f.counter_digits));
            for &u in &users {
                for &n in &counters {
                    let token = f.make(u, n);
                    let subject = f.append("RE: Quote for 40 widgets", &token);
                    let found = f.find(&subject).expect(&subject);
                    assert_eq!(found.text, token);
                    assert_eq!(found.base, f.base_digit);
                    assert_eq!(u64::from(found.user), u64::from(u) % umod);
                    assert_eq!(found.counter, n % cmod);
                    let upper = subject.to_uppercase();
                    assert_eq!(f.find(&upper).map(|t| t.text), Some(token));
                }
            }
        }
    }
}
