#!/usr/bin/env bash
# The README's first command: install Dovecot if missing, build, run `foldertrack demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release
exec ./target/release/foldertrack demo "$@"
