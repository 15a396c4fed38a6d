#!/usr/bin/env bash
# Run every test of the workspace (the library, the test kit and the CLI) with every
# feature, against a throwaway PostgreSQL that scripts/pg.sh starts and stops. Extra
# arguments go to `cargo test` (e.g. a test target, a name filter).
#
#   scripts/test.sh
#   scripts/test.sh --test conformance postgres::
#   scripts/test.sh --test crash
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/pg.sh cargo test --workspace --all-features "$@"
