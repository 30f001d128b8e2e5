#!/usr/bin/env bash
# Prints the library's module graph (what each top-level module of src/ imports), top layer
# first, and fails on an import cycle. The same checks run in the test suite
# (tests/module_graph.rs); DESIGN §2 draws this graph.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --quiet --test module_graph -- --nocapture --test-threads 1 print_module_graph no_import_cycle_among_modules
