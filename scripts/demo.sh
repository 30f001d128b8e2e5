#!/usr/bin/env bash
# The README's first command: install Dovecot if missing, build, run `foldertrack demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# A debug build: it shares its dependencies with the test build and takes half the time of the
# release profile (fat LTO, one codegen unit); a demo tracks a handful of messages either way.
# The `demo` feature brings the command and its private Dovecot (the test kit's sandbox).
cargo build --features demo
exec ./target/debug/foldertrack demo "$@"
