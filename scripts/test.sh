#!/usr/bin/env bash
# The README's second command: install Dovecot, PostgreSQL and Chromium if missing, then run every test
# (unit, golden fixtures, the integration tests that start private Dovecot instances on
# loopback, and the test kit's own tests: `--workspace` includes crates/testkit), then the
# suites that matter for data again on PostgreSQL (FOLDERTRACK_TEST_ENGINE=postgres: each test
# gets a private PostgreSQL cluster that its configs name in `[store]`). The PostgreSQL fault
# tests (`--test pg_faults`: the database down, restarted, locked, full) start clusters of
# their own whatever the engine, so the first run covers them.
#
# Arguments go to the first (sled) run only. FOLDERTRACK_TEST_ENGINES=sled skips the
# PostgreSQL pass (e.g. while iterating on something else).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo test --workspace --features failpoints,demo "$@"
if [ "${FOLDERTRACK_TEST_ENGINES:-sled,postgres}" = sled ]; then
  exit 0
fi
echo "== the data suites again on PostgreSQL =="
export FOLDERTRACK_TEST_ENGINE=postgres
cargo test --features failpoints,demo \
  --test tracking --test crm --test durability --test crashloop --test outgoing --test web \
  --test browser
# One live test: an agent on PostgreSQL through a Dovecot restart (outage, recovery, status).
cargo test --features failpoints,demo --test live -- --exact \
  dovecot_restart_loses_nothing_and_status_shows_the_outage_and_the_recovery
