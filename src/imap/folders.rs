//! Folder listing: every folder with its hierarchy separator and SPECIAL-USE flags, and the
//! mapping between the server's names and the config form (`/` separated, decoded UTF-8).

use super::{timed, ImapError, ImapSession, Peer};
use async_imap::types::NameAttribute;
use futures::TryStreamExt;

/// One folder as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Folder {
    /// The name exactly as the server spells it (modified UTF-7, server separator).
    pub server_name: String,
    /// Config form: decoded, with `/` as the separator.
    pub name: String,
    pub separator: Option<char>,
    pub selectable: bool,
    /// SPECIAL-USE `\Sent` (RFC 6154).
    pub sent: bool,
}

/// imap-proto hands over a quoted mailbox name with its escapes still in (`Say \"hi\"`); the
/// name itself has none. async-imap escapes again when it quotes a name for EXAMINE.
pub fn unescape(quoted: &str) -> String {
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
pub fn to_config_name(server_name: &str, sep: Option<char>) -> String {
    let decoded = super::utf7::decode(server_name);
    match sep {
        Some(s) if s != '/' => decoded.replace(s, "/"),
        _ => decoded,
    }
}

/// Config form → server name (encoded, with the server's separator).
pub fn to_server_name(config_name: &str, sep: Option<char>) -> String {
    let joined = match sep {
        Some(s) if s != '/' => config_name.replace('/', &s.to_string()),
        _ => config_name.to_string(),
    };
    super::utf7::encode(&joined)
}

/// Lists every folder (`LIST "" "*"`).
pub async fn list(session: &mut ImapSession, peer: &Peer) -> Result<Vec<Folder>, ImapError> {
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
            Folder {
                server_name: unescape(n.name()),
                name: to_config_name(&unescape(n.name()), sep),
                separator: sep,
                selectable: !attrs.iter().any(|a| matches!(a, NameAttribute::NoSelect)),
                sent: attrs.iter().any(|a| matches!(a, NameAttribute::Sent)),
            }
        })
        .collect())
}

/// The mailbox's Sent folder: the configured one, else the one flagged `\Sent`, else a folder
/// called `Sent` (servers without SPECIAL-USE).
pub fn find_sent<'a>(folders: &'a [Folder], configured: Option<&str>) -> Option<&'a Folder> {
    match configured {
        Some(name) => folders.iter().find(|f| f.name == name),
        None => folders.iter().find(|f| f.sent).or_else(|| {
            folders.iter().find(|f| {
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
            to_config_name("INBOX.Kunden.M&APw-ller", Some('.')),
            "INBOX/Kunden/Müller"
        );
        assert_eq!(
            to_server_name("INBOX/Kunden/Müller", Some('.')),
            "INBOX.Kunden.M&APw-ller"
        );
        assert_eq!(to_server_name("INBOX/A", Some('/')), "INBOX/A");
        assert_eq!(to_config_name("INBOX", None), "INBOX");
    }
}
