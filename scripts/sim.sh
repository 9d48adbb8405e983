#!/usr/bin/env bash
# The deterministic simulation (broker/src/sim, docs/reliability.md).
#
#   scripts/sim.sh                  the seeds CI runs (2,000, plus the regression seeds)
#   scripts/sim.sh --seeds 100000   a long run
#   scripts/sim.sh --seeds N --from F   seeds F..F+N
#   scripts/sim.sh --seed 1234      replay one seed exactly and print its summary
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
cd "$here/.."
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) export SIM_SEEDS="$2"; shift 2 ;;
        --from) export SIM_FIRST="$2"; shift 2 ;;
        --seed) export SIM_SEED="$2"; shift 2 ;;
        *) echo "usage: $0 [--seeds N [--from F]] [--seed S]" >&2; exit 2 ;;
    esac
done
exec cargo test --release --locked -p confab-broker --lib sim:: -- --nocapture
