//! A throw-away PKI for the TLS tests (IMAP and SMTP).

use crate::sandbox::TlsFiles;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// A private CA and a server certificate for 127.0.0.1 and localhost signed by it, written as
/// PEM files into `dir`; returns the CA's path and the server's files.
pub fn pki(dir: &Path) -> (PathBuf, TlsFiles) {
    let (ca_cert, ca_key) = ca("foldertrack test CA");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server certificate parameters");
    let leaf_key = KeyPair::generate().expect("server key");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("signing the server certificate");
    std::fs::create_dir_all(dir).expect("creating the PKI dir");
    let (ca_pem, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_pem, ca_cert.pem()).expect("writing ca.pem");
    std::fs::write(&cert, leaf_cert.pem()).expect("writing server.pem");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("writing server.key");
    (
        ca_pem,
        TlsFiles {
            cert_pem: cert,
            key_pem: key,
        },
    )
}

/// Another CA that signed nothing the servers present: trusting only it must fail.
pub fn unrelated_ca(dir: &Path) -> PathBuf {
    let (cert, _) = ca("unrelated test CA");
    std::fs::create_dir_all(dir).expect("creating the PKI dir");
    let p = dir.join("unrelated-ca.pem");
    std::fs::write(&p, cert.pem()).expect("writing unrelated-ca.pem");
    p
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("CA key");
    let cert = ca.self_signed(&key).expect("self-signing the CA");
    (cert, key)
}
