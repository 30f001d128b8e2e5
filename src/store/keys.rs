//! Key layouts of the index trees. Parts are joined with NUL (never valid in the parts) and
//! numbers are big-endian or zero-padded, so that sled's byte order is the order we scan in.

use crate::model::{Direction, Source};

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// `email\0type:key`
pub(crate) fn record_email(email: &str, rref: &str) -> Vec<u8> {
    join(&[email.to_ascii_lowercase().as_bytes(), rref.as_bytes()])
}

pub(crate) fn record_email_prefix(email: &str) -> Vec<u8> {
    let mut k = email.to_ascii_lowercase().into_bytes();
    k.push(0);
    k
}

/// `type\0lower(name)\0type:key`
pub(crate) fn record_name(rtype: &str, name: &str, rref: &str) -> Vec<u8> {
    join(&[
        rtype.as_bytes(),
        name.to_lowercase().as_bytes(),
        rref.as_bytes(),
    ])
}

pub(crate) fn record_name_prefix(rtype: &str, name: &str) -> Vec<u8> {
    let mut k = join(&[rtype.as_bytes(), name.to_lowercase().as_bytes()]);
    k.push(0);
    k
}

/// `dedup-key\0direction`
pub(crate) fn msgid(dedup_key: &str, d: Direction) -> Vec<u8> {
    join(&[dedup_key.as_bytes(), d.as_str().as_bytes()])
}

/// `mailbox\0folder\0uidvalidity\0uid`, numbers zero-padded.
pub(crate) fn source(s: &Source) -> Vec<u8> {
    join(&[
        s.mailbox.as_bytes(),
        s.folder.as_bytes(),
        format!("{:010}", s.uidvalidity).as_bytes(),
        format!("{:010}", s.uid).as_bytes(),
    ])
}

/// The prefix of every [`source`] key of one folder under one UIDVALIDITY.
pub(crate) fn source_prefix(mailbox: &str, folder: &str, uidvalidity: u32) -> Vec<u8> {
    let mut k = join(&[
        mailbox.as_bytes(),
        folder.as_bytes(),
        format!("{uidvalidity:010}").as_bytes(),
    ]);
    k.push(0);
    k
}

/// `mailbox\0folder`
pub(crate) fn folder(mailbox: &str, folder: &str) -> Vec<u8> {
    join(&[mailbox.as_bytes(), folder.as_bytes()])
}

/// `mailbox\0message`: one entry per distinct alert.
pub(crate) fn alert(mailbox: &str, message: &str) -> Vec<u8> {
    join(&[mailbox.as_bytes(), message.as_bytes()])
}

/// A tracking token, compared case-insensitively.
pub(crate) fn token(t: &str) -> Vec<u8> {
    t.to_ascii_uppercase().into_bytes()
}

/// `type:key\0<id BE>`
pub(crate) fn regarding(r: &str, id: u64) -> Vec<u8> {
    join(&[r.as_bytes(), &id.to_be_bytes()])
}

/// The name under which `activity_by_regarding` lists the activities a record is a party of:
/// its reference behind a 0x01 byte, which no reference starts with, so both lists of a record
/// are ranges of one tree (no extra tree for every transaction to take).
pub(crate) fn party_of(r: &str) -> String {
    format!("\u{1}{r}")
}

pub(crate) fn regarding_prefix(r: &str) -> Vec<u8> {
    let mut k = r.as_bytes().to_vec();
    k.push(0);
    k
}

/// The big-endian u64 at the end of a key.
pub(crate) fn u64_suffix(k: &[u8]) -> u64 {
    u64_of(&k[k.len().saturating_sub(8)..])
}

pub(crate) fn u64_of(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[8 - n..].copy_from_slice(&v[v.len() - n..]);
    u64::from_be_bytes(b)
}
