//! A one-request HTTP client for the agent's `/metrics` and `/healthz` (and the web pages):
//! the request as given, the whole answer read until the server closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

/// Sends `request` as it is to `addr`: (status code, head, body).
pub fn raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, head.to_string(), body.to_string())
}

/// GET `path` from `addr` with `Host: localhost`, checking Content-Length against the body:
/// (status code, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (code, head, body) = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    );
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|l| l.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(body.len(), len, "Content-Length matches the body");
    (code, body)
}
