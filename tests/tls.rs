//! TLS is on by default and cannot be bypassed silently: a certificate from an unknown CA is
//! refused, the admin's `ca_file` makes it trusted, STARTTLS upgrades, and a server that does
//! not offer STARTTLS is an error, never a plaintext fallback.

mod common;
use common::pki::pki;
use common::*;
use foldertrack::sandbox::SandboxOptions;

fn tls_env() -> (Env, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("ft-pki-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let (ca, files) = pki(&dir);
    let e = env_with(SandboxOptions {
        tls: Some(files),
        ..Default::default()
    });
    let mut c = e.imap("alice");
    c.create("INBOX/Tracked");
    c.create("INBOX/Tracked/Acme");
    c.append(
        "INBOX/Tracked/Acme",
        &message(
            "bob@acme.com",
            "alice@example.com",
            "over tls",
            Some("<tls@x>"),
        ),
    );
    e.import_records_via_config();
    (e, ca)
}

trait ConfigTls {
    fn import_records_via_config(&self);
    fn config_tls(&self, tls: &str, port: u16, ca: Option<&std::path::Path>);
}

impl ConfigTls for Env {
    fn import_records_via_config(&self) {
        self.write_config(&[], "");
        self.import_records(RECORDS);
    }
    fn config_tls(&self, tls: &str, port: u16, ca: Option<&std::path::Path>) {
        let ca_line = ca
            .map(|p| format!("ca_file = \"{}\"\n", p.display()))
            .unwrap_or_default();
        let t = format!(
            "data_dir = \"data\"\n[[mailbox]]\nname = \"alice\"\nowner = \"systemuser:alice\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\n{ca_line}user = \"alice\"\npassword_file = \"password\"\n  [[mailbox.rule]]\n  folder = \"INBOX/Tracked/Acme\"\n  regarding = \"account:acme\"\n"
        );
        std::fs::write(self.work.join("foldertrack.toml"), t).unwrap();
    }
}

#[test]
fn tls_certificate_from_unknown_ca_is_rejected_by_default() {
    let (e, _ca) = tls_env();
    e.config_tls("implicit", e.dovecot.tls_port.unwrap(), None);
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
fn tls_private_ca_is_accepted_with_ca_file_implicit_and_starttls() {
    let (e, ca) = tls_env();
    e.config_tls("implicit", e.dovecot.tls_port.unwrap(), Some(&ca));
    e.ok(&["sync"]);
    assert_eq!(e.activities().len(), 1);
    let check = e.ok(&["check"]);
    assert!(
        check.contains("implicit TLS (certificate verified)"),
        "{check}"
    );
    e.config_tls("starttls", e.dovecot.port, Some(&ca));
    let check = e.ok(&["check"]);
    assert!(check.contains("STARTTLS (certificate verified)"), "{check}");
}

#[test]
fn starttls_not_offered_is_an_error_never_a_plaintext_fallback() {
    let e = env(); // ssl = no: no STARTTLS
    e.import_records_via_config();
    e.config_tls("starttls", e.dovecot.port, None);
    let o = e.run(&["sync"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not offer STARTTLS"), "{err}");
    assert!(
        !e.dovecot.log_tail(200).contains("Login: user=<alice>"),
        "no login may happen in plaintext"
    );
}
