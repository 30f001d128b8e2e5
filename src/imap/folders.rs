//! Folder listing: every folder with its hierarchy separator and SPECIAL-USE flags, and the
//! mapping between the server's names and the config form (`/` separated, decoded UTF-8).

use super::utf7::Utf7Error;
use super::{timed, ImapError, ImapSession, Peer};
use async_imap::types::NameAttribute;
use futures::TryStreamExt;

/// One folder as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Folder {
    /// The name exactly as the server spells it (modified UTF-7, server separator).
    pub server_name: String,
    /// Config form: decoded, with `/` as the separator.
    pub name: String,
    pub separator: Option<char>,
    pub selectable: bool,
    /// SPECIAL-USE `\Sent` (RFC 6154).
    pub sent: bool,
    /// Why the server's name does not decode, for a folder that is then never tracked (nor
    /// taken as the Sent folder): its `name` is the server's, escaped, and `selectable` false.
    pub invalid: Option<String>,
}

/// imap-proto hands over a quoted mailbox name with its escapes still in (`Say \"hi\"`); the
/// name itself has none. async-imap escapes again when it quotes a name for EXAMINE.
pub(crate) fn unescape(quoted: &str) -> String {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Server name → config form.
///
/// # Errors
/// The name is not modified UTF-7 ([`super::utf7::decode`]).
pub(crate) fn to_config_name(server_name: &str, sep: Option<char>) -> Result<String, Utf7Error> {
    let decoded = super::utf7::decode(server_name)?;
    Ok(match sep {
        Some(s) if s != '/' => decoded.replace(s, "/"),
        _ => decoded,
    })
}

/// Config form → server name (encoded, with the server's separator). Only the demo needs it:
/// it creates its folders; the agent works on the names the server lists.
#[cfg(any(test, feature = "demo"))]
pub(crate) fn to_server_name(config_name: &str, sep: Option<char>) -> String {
    let joined = match sep {
        Some(s) if s != '/' => config_name.replace('/', &s.to_string()),
        _ => config_name.to_string(),
    };
    super::utf7::encode(&joined)
}

/// Lists every folder (`LIST "" "*"`).
pub(crate) async fn list(session: &mut ImapSession, peer: &Peer) -> Result<Vec<Folder>, ImapError> {
    let names: Vec<_> = timed(peer, "LIST", async {
        let stream = session.list(Some(""), Some("\"*\"")).await?;
        stream.try_collect::<Vec<_>>().await
    })
    .await?;
    Ok(names
        .iter()
        .map(|n| {
            let sep = n.delimiter().and_then(|d| d.chars().next());
            let attrs = n.attributes();
            let server_name = unescape(n.name());
            match to_config_name(&server_name, sep) {
                Ok(name) => Folder {
                    server_name,
                    name,
                    separator: sep,
                    selectable: !attrs.iter().any(|a| matches!(a, NameAttribute::NoSelect)),
                    sent: attrs.iter().any(|a| matches!(a, NameAttribute::Sent)),
                    invalid: None,
                },
                Err(e) => invalid_folder(server_name, sep, e),
            }
        })
        .collect())
}

/// A folder whose name does not decode: shown as the server spells it (escaped), never
/// tracked. Mapping it onto a "repaired" name could make it match a rule meant for another
/// folder.
fn invalid_folder(server_name: String, sep: Option<char>, e: Utf7Error) -> Folder {
    let shown = match sep {
        Some(s) if s != '/' => server_name.replace(s, "/"),
        _ => server_name.clone(),
    };
    let name = super::utf7::escape_raw(&shown);
    tracing::warn!(folder = %name, error = %e, "a folder name from the server does not decode; it is not tracked");
    Folder {
        server_name,
        name,
        separator: sep,
        selectable: false,
        sent: false,
        invalid: Some(e.to_string()),
    }
}

/// The mailbox's Sent folder: the configured one, else the one flagged `\Sent`, else a folder
/// called `Sent` (servers without SPECIAL-USE).
pub(crate) fn find_sent<'a>(folders: &'a [Folder], configured: Option<&str>) -> Option<&'a Folder> {
    let folders = folders.iter().filter(|f| f.invalid.is_none());
    match configured {
        Some(name) => folders.clone().find(|f| f.name == name),
        None => folders.clone().find(|f| f.sent).or_else(|| {
            folders.clone().find(|f| {
                f.name.eq_ignore_ascii_case("Sent") || f.name.eq_ignore_ascii_case("INBOX/Sent")
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_names_lose_their_escapes() {
        assert_eq!(unescape(r#"Say \"hi\" \\ there"#), r#"Say "hi" \ there"#);
        assert_eq!(unescape("INBOX.Plain"), "INBOX.Plain");
    }

    #[test]
    fn names_map_between_config_and_server_form() {
        assert_eq!(
            to_config_name("INBOX.Kunden.M&APw-ller", Some('.')).unwrap(),
            "INBOX/Kunden/Müller"
        );
        // An encoded separator is not a separator: the old decoder made this `INBOX/a/b`.
        assert!(to_config_name("INBOX.a&AC4-b", Some('.')).is_err());
        let f = invalid_folder("INBOX.a&AC4-b".into(), Some('.'), Utf7Error("test"));
        assert_eq!(f.name, "INBOX/a&AC4-b");
        assert!(!f.selectable);
        assert!(find_sent(&[Folder { sent: true, ..f }], None).is_none());
        assert_eq!(
            to_server_name("INBOX/Kunden/Müller", Some('.')),
            "INBOX.Kunden.M&APw-ller"
        );
        assert_eq!(to_server_name("INBOX/A", Some('/')), "INBOX/A");
        assert_eq!(to_config_name("INBOX", None).unwrap(), "INBOX");
    }
}
