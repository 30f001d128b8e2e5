//! Folder rules (DESIGN §4.1–4.2): which rule, if any, tracks a folder, and what record it
//! links the folder's mail to.

#![warn(missing_docs)]

use crate::config::{LookupBy, Regarding, Rule};
use crate::model::{Alert, AlertLevel, RecordRef};
use crate::track::RecordLookup;

/// The rule that tracks a folder, with the `*` capture for pattern rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleMatch<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// What `*` stood for in a pattern rule (`None` for an exact one).
    pub capture: Option<String>,
}

/// Compares one folder level; `INBOX` is case-insensitive in IMAP (RFC 3501 §5.1), the rest is not.
fn seg_eq(i: usize, a: &str, b: &str) -> bool {
    if i == 0 && a.eq_ignore_ascii_case("INBOX") {
        b.eq_ignore_ascii_case("INBOX")
    } else {
        a == b
    }
}

/// Finds the rule for `folder` (config form, `/` separated). An exact rule beats a pattern;
/// between patterns the first in the file wins. `*` stands for exactly one folder level, so
/// `INBOX/Customers/*` tracks `INBOX/Customers/Acme` but neither `INBOX/Customers` itself nor
/// `INBOX/Customers/Acme/Old` (give that one its own rule).
pub fn match_folder<'a>(rules: &'a [Rule], folder: &str) -> Option<RuleMatch<'a>> {
    let segs: Vec<&str> = folder.split('/').collect();
    let mut best: Option<RuleMatch<'a>> = None;
    for rule in rules {
        let pat: Vec<&str> = rule.folder.split('/').collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut capture = None;
        let ok = pat.iter().zip(&segs).enumerate().all(|(i, (p, s))| {
            if *p == "*" {
                capture = Some((*s).to_string());
                true
            } else {
                seg_eq(i, p, s)
            }
        });
        if !ok {
            continue;
        }
        if capture.is_none() {
            return Some(RuleMatch {
                rule,
                capture: None,
            });
        }
        if best.is_none() {
            best = Some(RuleMatch { rule, capture });
        }
    }
    best
}

/// Resolves the record a matched rule names. `Err` is the alert to raise when the rule points
/// at nothing: the mail is then tracked unlinked, never dropped.
pub(crate) fn resolve_regarding(
    m: &RuleMatch<'_>,
    records: &dyn RecordLookup,
) -> Result<Option<RecordRef>, Alert> {
    match &m.rule.regarding {
        Regarding::None => Ok(None),
        Regarding::Fixed(r) => match records.get(r) {
            Some(_) => Ok(Some(r.clone())),
            None => Err(Alert {
                level: AlertLevel::Warning,
                message: format!(
                    "rule for folder `{}` links to {r}, which is not in the records: tracked unlinked (import the record, then re-run)",
                    m.rule.folder
                ),
            }),
        },
        Regarding::Lookup { rtype, by } => {
            let cap = m.capture.as_deref().unwrap_or_default();
            let found = match by {
                LookupBy::Key => records.get(&RecordRef::new(rtype.clone(), cap)).map(|r| vec![r]).unwrap_or_default(),
                LookupBy::Name => records.by_name(rtype, cap),
            };
            match found.as_slice() {
                [one] => Ok(Some(one.reference())),
                [] => Err(Alert {
                    level: AlertLevel::Warning,
                    message: format!(
                        "folder `{}` matches rule `{}` but no {rtype} has the {} `{cap}`: tracked unlinked",
                        m.rule.folder.replace('*', cap),
                        m.rule.folder,
                        if *by == LookupBy::Name { "name" } else { "key" }
                    ),
                }),
                many => Err(Alert {
                    level: AlertLevel::Warning,
                    message: format!(
                        "{} records of type {rtype} are named `{cap}` ({}): tracked unlinked; make the name unique or use by = \"key\"",
                        many.len(),
                        many.iter().map(|r| r.reference().to_string()).collect::<Vec<_>>().join(", ")
                    ),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LookupBy;

    fn rules() -> Vec<Rule> {
        vec![
            Rule {
                folder: "INBOX/Customers/*".into(),
                regarding: Regarding::Lookup {
                    rtype: "account".into(),
                    by: LookupBy::Name,
                },
            },
            Rule {
                folder: "INBOX/Customers/Special".into(),
                regarding: Regarding::None,
            },
            Rule {
                folder: "INBOX/Tracked/Acme".into(),
                regarding: Regarding::Fixed(RecordRef::new("account", "acme")),
            },
        ]
    }

    #[test]
    fn exact_rule_beats_pattern_and_star_is_one_level() {
        let r = rules();
        let m = match_folder(&r, "INBOX/Customers/Special").unwrap();
        assert_eq!(m.rule.folder, "INBOX/Customers/Special");
        let m = match_folder(&r, "INBOX/Customers/Globex Inc").unwrap();
        assert_eq!(m.capture.as_deref(), Some("Globex Inc"));
        assert!(match_folder(&r, "INBOX/Customers").is_none());
        assert!(match_folder(&r, "INBOX/Customers/A/B").is_none());
        assert!(
            match_folder(&r, "Inbox/Tracked/Acme").is_some(),
            "INBOX is case-insensitive"
        );
        assert!(
            match_folder(&r, "INBOX/tracked/acme").is_none(),
            "other levels are not"
        );
    }
}
