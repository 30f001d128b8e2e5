#!/usr/bin/env bash
# The README's second command: install Dovecot if missing, then run every test (unit, golden
# fixtures, and the integration tests that start private Dovecot instances on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo test --features failpoints "$@"
