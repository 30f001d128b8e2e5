//! Dates and times: RFC 3339 in and out, on [`jiff`].
//!
//! A leaf module (it knows no other part of foldertrack) so that every module formats and
//! parses times the same way. It replaces hand-written calendar arithmetic that dropped the UTC
//! offset of a time with fractional seconds (`2026-11-28T10:00:00.5+01:00` was read as 10:00
//! UTC, so `export --since` was off by the offset). Times are kept as strings in the store
//! (RFC 3339 UTC, whole seconds), and compared as seconds since the epoch.

use jiff::civil::{Date, DateTime};
use jiff::tz::Offset;
use jiff::Timestamp;

/// RFC 3339 UTC with whole seconds, from the system clock: `2026-11-28T09:00:00Z`.
pub(crate) fn humantime_now() -> String {
    rfc3339_utc(unix_now())
}

/// Seconds since the epoch, from the system clock.
pub(crate) fn unix_now() -> i64 {
    Timestamp::now().as_second()
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`. Seconds outside jiff's range
/// (years before -9999 or after 9999) are clamped to its ends rather than failing: a time is
/// shown, never an error, and no real timestamp gets there.
pub(crate) fn rfc3339_utc(secs: i64) -> String {
    let ts = Timestamp::from_second(secs).unwrap_or(if secs < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Reads a date or time, for comparing times written in different zones: RFC 3339 with `Z` or
/// an offset (fractional seconds allowed, truncated), a date and time without an offset (taken
/// as UTC), or a bare `YYYY-MM-DD` (midnight UTC).
///
/// # Errors
/// Not one of those forms, or not a real date (`2026-02-30`); the message says which forms.
pub(crate) fn try_parse_date(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t.as_second());
    }
    let utc = |dt: DateTime| Offset::UTC.to_timestamp(dt).map(Timestamp::as_second);
    // A time without an offset: only when it has one, the parse above said why it failed.
    if s.len() > 10 && !has_offset(s) {
        if let Ok(dt) = s.parse::<DateTime>() {
            return utc(dt).map_err(|e| e.to_string());
        }
    }
    if s.len() == 10 {
        if let Ok(d) = s.parse::<Date>() {
            return utc(d.to_datetime(jiff::civil::Time::midnight())).map_err(|e| e.to_string());
        }
    }
    Err(format!(
        "`{s}` is not a date or time: write 2026-11-28, 2026-11-28T09:30:00Z or 2026-11-28T10:30:00+01:00"
    ))
}

/// `true` when the time part of `s` carries a zone (`Z`, `+hh:mm`, `-hh:mm`).
fn has_offset(s: &str) -> bool {
    let time = s.get(10..).unwrap_or("");
    time.contains(['Z', 'z', '+']) || time.contains('-')
}

/// [`try_parse_date`] for dates foldertrack wrote itself or checked on the way in (activity
/// dates, alert and outage times): seconds since the epoch, or 0 for an unreadable one, so that
/// one bad stored value cannot stop a comparison (it sorts as the oldest).
pub(crate) fn parse_date(s: &str) -> i64 {
    try_parse_date(s).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_seconds_keep_their_offset() {
        // The regression: the hand-written parser read this as 10:00:00 UTC.
        assert_eq!(
            parse_date("2026-11-28T10:00:00.5+01:00"),
            parse_date("2026-11-28T09:00:00Z")
        );
        assert_eq!(
            parse_date("2026-11-28T10:00:00.123456-02:30"),
            parse_date("2026-11-28T12:30:00Z")
        );
    }

    #[test]
    fn forms_and_errors() {
        let t = parse_date("2026-11-28T09:30:00Z");
        assert_eq!(rfc3339_utc(t), "2026-11-28T09:30:00Z");
        assert_eq!(parse_date("2026-11-28T10:30:00+01:00"), t);
        assert_eq!(parse_date("2026-11-28T09:30:00"), t, "no offset: UTC");
        assert_eq!(parse_date("2026-11-28 09:30:00Z"), t);
        assert_eq!(parse_date("2026-11-28"), t - 9 * 3600 - 30 * 60);
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert!(rfc3339_utc(i64::MAX).starts_with("9999-12-"), "clamped");
        for bad in [
            "yesterday",
            "2026-11-28T9:30",
            "2026-02-30",
            "2026-13-01",
            "",
        ] {
            assert!(try_parse_date(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_date("garbage"), 0);
        assert!(humantime_now().ends_with('Z'));
        assert!((unix_now() - parse_date(&humantime_now())).abs() <= 1);
    }
}
