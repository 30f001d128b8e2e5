#!/usr/bin/env bash
# Benchmark: foldertrack sync of 10,000 messages vs the raw-fetch ceiling, same run, same Dovecot.
# Env knobs: BENCH_COUNT, BENCH_RUNS, BENCH_NAIVE=1 (adds the naive Python baseline), BENCH_SHARED.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
command -v /usr/bin/time >/dev/null || { SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo; $SUDO apt-get install -y time; }
cargo bench --bench sync
