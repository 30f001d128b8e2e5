#!/usr/bin/env bash
# The benchmarks, in one command (results are printed as Markdown tables):
#  1. sync: raw pump, naive Python ingest (when ../shared/bench is there) and `foldertrack sync`
#     of 1,000, 10,000 and 50,000 messages, same run, same Dovecot (benches/sync.rs);
#  2. scale: 1,000 mailboxes on one agent, 10,000 messages delivered while it runs, latency
#     under that load (benches/scale.rs).
# Knobs: BENCH_SIZES (1000,10000,50000), BENCH_RUNS (3), BENCH_NAIVE (1), BENCH_NAIVE_SIZE
# (10000), BENCH_PG (1; 0 skips the PostgreSQL row), BENCH_SHARED (../shared/bench), BENCH_SCALE (1; 0 skips it), SCALE_ENGINE (sled; postgres), SCALE_MAILBOXES (1000),
# SCALE_MESSAGES (10000), SCALE_TRIALS (100), BENCH_LATENCY (0; 1 adds benches/latency.rs),
# BENCH_AGENTS (0; 1 adds benches/agents.rs: 2,000 mailboxes over 2 agents on PostgreSQL, with
# AGENTS_MAILBOXES, AGENTS_COUNT, AGENTS_MESSAGES, AGENTS_TRIALS),
# BENCH_FLAGS (0; 1 adds benches/flags.rs: the pass that picks up 100 flag changes in 10,000
# tracked messages, with and without CONDSTORE; FLAGS_MESSAGES, FLAGS_CHANGED, FLAGS_RUNS),
# BENCH_WEB (0; 1 adds benches/web.rs: a record's timeline of 10,000 activities on the web pages,
# the first page p50/p90/p99 and the memory while paging through all of them, on sled and
# PostgreSQL; WEB_ACTIVITIES, WEB_REQUESTS, WEB_ENGINES),
# BENCH_BIN_B (a second foldertrack binary: its sync row beside the first, runs alternating, for A/B),
# BENCH_CONFIG (extra top-level foldertrack.toml lines for the sync bench, e.g. "batch_bytes = 16777216").
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || { SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo; $SUDO apt-get install -y time; }
export BENCH_SIZES=${BENCH_SIZES:-1000,10000,50000} BENCH_NAIVE=${BENCH_NAIVE:-1}
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(dovecot --version 2>/dev/null | cut -d' ' -f1)"
cargo bench --bench sync
if [ "${BENCH_SCALE:-1}" = 1 ]; then
  # one connection per mailbox: the agent needs more file descriptors than mailboxes
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  cargo bench --bench scale
fi
if [ "${BENCH_LATENCY:-0}" = 1 ]; then cargo bench --bench latency; fi
if [ "${BENCH_FLAGS:-0}" = 1 ]; then cargo bench --bench flags; fi
if [ "${BENCH_WEB:-0}" = 1 ]; then cargo bench --bench web; fi
if [ "${BENCH_AGENTS:-0}" = 1 ]; then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  cargo bench --bench agents
fi
