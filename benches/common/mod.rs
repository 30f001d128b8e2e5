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
