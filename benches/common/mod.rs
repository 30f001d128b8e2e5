//! What the bench binaries share beyond the test kit: percentiles, env knobs, and the agent
//! started the benches' way (fresh data dir, chosen log lines on a channel).

#![allow(dead_code)]

use std::path::Path;
use testkit::{Agent, AgentSpec};

/// p50, p90 and p99 of `v`.
pub fn pct(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.9), p(0.99))
}

/// A numeric knob from the environment, or `default`.
pub fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `foldertrack run` in `work` with a fresh data dir and waits until it is running; its
/// log lines that hold any of `wanted` come time-stamped on [`Agent::lines`]. With the env
/// variable `debug_var` set, every line is echoed.
pub fn start_agent(work: &Path, debug_var: &str, wanted: &[&str]) -> Agent {
    let _ = std::fs::remove_dir_all(work.join("data"));
    AgentSpec::new(&testkit::env::foldertrack_bin(), work)
        .watch(wanted)
        .echo(std::env::var(debug_var).is_ok())
        .start()
}

/// A short business mail from one of 50 senders to `user`, numbered `i`; `tag` names the bench
/// in its subject and Message-ID (`<tag-i-user@bench>`).
pub fn message(tag: &str, user: &str, i: usize) -> String {
    format!(
        "From: Bob <bob{n}@acme.com>\r\nTo: {user}@example.com\r\nSubject: {tag} {i}\r\nMessage-ID: <{tag}-{i}-{user}@bench>\r\nDate: Mon, 2 Sep 2024 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello {user}, about order {i}.\r\n{body}\r\n",
        n = i % 50,
        body = "Some text of a realistic length for a short business mail. ".repeat(20)
    )
}

/// The resident set of process `pid`, kB (0 when it cannot be read).
pub fn rss_kb(pid: u32) -> u64 {
    proc_kb(pid, "VmRSS")
}

/// A kB field (`VmRSS`, `VmHWM`) of `/proc/PID/status` (0 when it cannot be read).
pub fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many mailboxes a `status --json` reports idle.
pub fn idle_count(st: &serde_json::Value) -> usize {
    st["mailboxes"].as_array().map_or(0, |a| {
        a.iter()
            .filter(|m| m["live"]["state"].as_str() == Some("idle"))
            .count()
    })
}
