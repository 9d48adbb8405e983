#!/usr/bin/env bash
# Damaged data directories under the real broker (broker/tests/corruption.rs,
# docs/reliability.md "Corruption"): seeded bit flips and truncations in WAL,
# table and MANIFEST files; `confab admin verify` must name every one and
# the broker must never serve a wrong byte.
#
#   scripts/corruption.sh                          what CI runs: 90 injections, seed 17
#   scripts/corruption.sh --injections 600 --seed 5
#   scripts/corruption.sh --only 41 --seed 17      replay one injection; its directory is kept
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
cd "$here/.."
while [ $# -gt 0 ]; do
    case "$1" in
        --injections) export CORRUPTION_INJECTIONS="$2"; shift 2 ;;
        --seed) export CORRUPTION_SEED="$2"; shift 2 ;;
        --only) export CORRUPTION_ONLY="$2"; shift 2 ;;
        *) echo "usage: $0 [--injections N] [--seed S] [--only I]" >&2; exit 2 ;;
    esac
done
exec cargo test --release --locked -p confab-broker --test corruption -- --nocapture
