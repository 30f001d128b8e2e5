#!/usr/bin/env bash
# The README's second command: install Dovecot if missing, then run every test (unit, golden
# fixtures, the integration tests that start private Dovecot instances on loopback, and the test
# kit's own tests: `--workspace` includes crates/testkit).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo test --workspace --features failpoints,demo "$@"
