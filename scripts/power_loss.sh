#!/usr/bin/env bash
# Power cuts under the real broker (broker/tests/power_loss.rs,
# docs/reliability.md "Power loss").
#
#   scripts/power_loss.sh                    what CI runs: 12 cycles in fsync mode, the wal canaries
#   scripts/power_loss.sh --cycles 500       a long fsync run (about 1.1 s a cycle here)
#   scripts/power_loss.sh --cycles 200 --seed 7
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
cd "$here/.."
filter=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cycles) export POWER_CUT_CYCLES="$2"; filter=fsync_mode; shift 2 ;;
        --seed) export POWER_CUT_SEED="$2"; shift 2 ;;
        *) echo "usage: $0 [--cycles N] [--seed S]" >&2; exit 2 ;;
    esac
done
exec cargo test --release --locked -p confab-broker --test power_loss -- --nocapture $filter
