//! A timeline's filters (direction, mailbox, date range, with attachments, words in the
//! subject or body), read from the page's URL and written back into its "Older" link, so a
//! filtered view is a link a person can keep and share.

use crate::model::{Activity, Direction};
use serde::Deserialize;

/// The query string as the form sends it: every field a string, an empty one meaning "any".
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TimelineQuery {
    before: Option<String>,
    direction: Option<String>,
    mailbox: Option<String>,
    since: Option<String>,
    until: Option<String>,
    attachments: Option<String>,
    q: Option<String>,
}

/// What a timeline page shows: the filters as given (for the form) and checked.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Filter {
    pub direction: Option<Direction>,
    pub mailbox: Option<String>,
    /// `YYYY-MM-DD`, inclusive, compared with the mail's own Date (as its sender's clock gave it).
    pub since: Option<String>,
    pub until: Option<String>,
    pub attachments: bool,
    /// Words to find in the subject or body, as typed.
    pub q: Option<String>,
}

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn date(name: &str, v: &Option<String>) -> Result<Option<String>, String> {
    match given(v) {
        None => Ok(None),
        Some(d) if d.parse::<jiff::civil::Date>().is_ok() && d.len() == 10 => Ok(Some(d)),
        Some(d) => Err(format!("{name}: {d:?} is not a date (YYYY-MM-DD)")),
    }
}

impl TimelineQuery {
    /// The filters and the page's start (`before`), or what is wrong with them.
    pub(crate) fn parse(&self) -> Result<(Filter, Option<u64>), String> {
        let before = match given(&self.before) {
            None => None,
            Some(b) => Some(
                b.parse::<u64>()
                    .map_err(|_| format!("before: {b:?} is not an activity id"))?,
            ),
        };
        let direction = match given(&self.direction).as_deref() {
            None => None,
            Some("incoming") => Some(Direction::Incoming),
            Some("outgoing") => Some(Direction::Outgoing),
            Some(d) => return Err(format!("direction: {d:?} is not incoming or outgoing")),
        };
        let filter = Filter {
            direction,
            mailbox: given(&self.mailbox),
            since: date("since", &self.since)?,
            until: date("until", &self.until)?,
            attachments: given(&self.attachments).is_some(),
            q: given(&self.q),
        };
        Ok((filter, before))
    }
}

impl Filter {
    /// Whether `a` passes every filter that is set.
    pub(crate) fn matches(&self, a: &Activity) -> bool {
        let day = a.date.as_deref().and_then(|d| d.get(..10));
        let in_range = |bound: &Option<String>, ok: fn(&str, &str) -> bool| match bound {
            None => true,
            Some(b) => day.is_some_and(|d| ok(d, b)),
        };
        self.direction.is_none_or(|d| a.direction == d)
            && self.mailbox.as_ref().is_none_or(|m| {
                std::iter::once(&a.source)
                    .chain(&a.other_sources)
                    .any(|s| &s.mailbox == m)
            })
            && in_range(&self.since, |d, b| d >= b)
            && in_range(&self.until, |d, b| d <= b)
            && (!self.attachments || a.attachments.iter().any(|m| m.skipped.is_none()))
            && self.q.as_ref().is_none_or(|q| words_in(q, a))
    }

    /// Whether any filter is set.
    pub(crate) fn is_set(&self) -> bool {
        *self != Filter::default()
    }

    /// The filters as a query string (`&k=v…`, values percent-encoded), for the next page.
    pub(crate) fn query(&self) -> String {
        let mut out = String::new();
        let mut add = |k: &str, v: &str| {
            out.push('&');
            out.push_str(k);
            out.push('=');
            out.push_str(&super::pages::enc(v));
        };
        if let Some(d) = self.direction {
            add("direction", d.as_str());
        }
        for (k, v) in [
            ("mailbox", &self.mailbox),
            ("since", &self.since),
            ("until", &self.until),
            ("q", &self.q),
        ] {
            if let Some(v) = v {
                add(k, v);
            }
        }
        if self.attachments {
            add("attachments", "1");
        }
        out
    }
}

/// Every word of `q` is in the subject or the body, ignoring case.
fn words_in(q: &str, a: &Activity) -> bool {
    let subject = a.subject.as_deref().unwrap_or("").to_lowercase();
    let body = a.body_text.to_lowercase();
    q.split_whitespace()
        .map(str::to_lowercase)
        .all(|w| subject.contains(&w) || body.contains(&w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> TimelineQuery {
        let text: String = pairs
            .iter()
            .map(|(k, v)| format!("&{k}={}", super::super::pages::enc(v)))
            .collect();
        from_query(&text)
    }

    /// The query string as axum reads it for the handler.
    fn from_query(text: &str) -> TimelineQuery {
        let uri: axum::http::Uri = format!("/records/a/b?x=1{text}").parse().unwrap();
        axum::extract::Query::<TimelineQuery>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    #[test]
    fn empty_fields_mean_any_and_bad_ones_say_which_and_why() {
        let (f, before) = query(&[("direction", ""), ("q", " "), ("before", "")])
            .parse()
            .unwrap();
        assert!(!f.is_set());
        assert_eq!(before, None);
        for (k, v, says) in [
            ("since", "2024-13-01", "since"),
            ("until", "yesterday", "until"),
            ("direction", "sideways", "direction"),
            ("before", "x", "before"),
        ] {
            let e = query(&[(k, v)]).parse().unwrap_err();
            assert!(e.starts_with(says), "{e}");
        }
    }

    #[test]
    fn the_next_pages_query_gives_back_the_same_filter() {
        let (f, _) = query(&[
            ("direction", "outgoing"),
            ("mailbox", "alice & co"),
            ("since", "2024-01-01"),
            ("until", "2024-12-31"),
            ("attachments", "on"),
            ("q", "quote <b>"),
        ])
        .parse()
        .unwrap();
        assert!(f.is_set() && f.attachments);
        let again = from_query(&f.query()).parse().unwrap().0;
        assert_eq!(again, f);
    }
}
