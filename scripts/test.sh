#!/usr/bin/env bash
# Run every test with every feature, against a throwaway PostgreSQL that scripts/pg.sh
# starts and stops. Extra arguments go to `cargo test` (e.g. a test name filter).
#
#   scripts/test.sh
#   scripts/test.sh --test conformance postgres::
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/pg.sh cargo test --all-features "$@"
