//! TLS is on by default and cannot be bypassed silently: a certificate from an unknown CA is
//! refused, the admin's `ca_file` makes it trusted, STARTTLS upgrades, and a server that does
//! not offer STARTTLS is an error, never a plaintext fallback.

use std::path::Path;
use testkit::pki::{pki, unrelated_ca};
use testkit::sandbox::SandboxOptions;
use testkit::*;

/// A Dovecot with TLS (a certificate from a private CA), alice's tracked folder with one
/// message, the records; returns the CA's path.
fn tls_env() -> (Env, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("ft-pki-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let (ca, files) = pki(&dir);
    let e = env_with(SandboxOptions {
        tls: Some(files),
        ..cast()
    });
    e.create_folders("alice", &["INBOX/Tracked", "INBOX/Tracked/Acme"]);
    e.imap("alice")
        .append("INBOX/Tracked/Acme", &mail("over tls", "<tls@x>"));
    e.write_config(&Config::new());
    e.import_records(RECORDS);
    (e, ca)
}

/// Alice over TLS `mode` on `port`, trusting `ca` when given.
fn config_tls(e: &Env, mode: &str, port: u16, ca: Option<&Path>) {
    e.write_config(&Config::new().mailbox(e.mailbox("alice").tls(mode, port, ca).rule(acme())));
}

/// `sync` fails on the server's certificate: exit 1, a TLS error naming the certificate,
/// nothing tracked.
fn assert_certificate_refused(e: &Env) {
    let o = e.run(&["sync"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("TLS with 127.0.0.1") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    assert!(e.activities().is_empty());
}

#[test]
fn tls_certificate_from_unknown_ca_is_rejected_by_default() {
    let (e, _ca) = tls_env();
    config_tls(&e, "implicit", e.dovecot.tls_port.unwrap(), None);
    assert_certificate_refused(&e);
}

#[test]
fn starttls_refuses_a_certificate_from_an_unknown_ca() {
    let (e, _ca) = tls_env();
    // Neither the public roots nor a private CA that did not sign the server's certificate.
    config_tls(&e, "starttls", e.dovecot.port, None);
    assert_certificate_refused(&e);
    let other = unrelated_ca(&e.work);
    config_tls(&e, "starttls", e.dovecot.port, Some(&other));
    assert_certificate_refused(&e);
    let o = e.run(&["check"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("[FAIL]"), "{out}");
}

#[test]
fn tls_private_ca_is_accepted_with_ca_file_implicit_and_starttls() {
    let (e, ca) = tls_env();
    config_tls(&e, "implicit", e.dovecot.tls_port.unwrap(), Some(&ca));
    e.ok(&["sync"]);
    assert_eq!(e.activities().len(), 1);
    let check = e.ok(&["check"]);
    assert!(
        check.contains("implicit TLS (certificate verified)"),
        "{check}"
    );
    config_tls(&e, "starttls", e.dovecot.port, Some(&ca));
    let check = e.ok(&["check"]);
    assert!(check.contains("STARTTLS (certificate verified)"), "{check}");
}

#[test]
fn starttls_not_offered_is_an_error_never_a_plaintext_fallback() {
    let e = env(); // ssl = no: no STARTTLS
    e.write_config(&Config::new());
    e.import_records(RECORDS);
    config_tls(&e, "starttls", e.dovecot.port, None);
    let o = e.run(&["sync"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not offer STARTTLS"), "{err}");
    assert!(
        !e.dovecot.log_tail(200).contains("Login: user=<alice>"),
        "no login may happen in plaintext"
    );
}
