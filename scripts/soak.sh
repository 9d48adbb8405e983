#!/usr/bin/env bash
# The soak (not in CI): hours of half load on the real broker with a kill -9
# every 10 minutes and devices reconnecting all the time; nothing may be lost
# or repeated, and the broker's RSS and file descriptors must stay flat
# (bench/src/bin/soak.rs, docs/reliability.md "Soak").
#
#   scripts/soak.sh                                  3 hours, results in soak-out/
#   scripts/soak.sh --minutes 60 --out /tmp/soak1
#   scripts/soak.sh --minutes 30 --kill-every 120 --durability fsync
#
# Every option: scripts/soak.sh --help. Exit status 0 only without a violation.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
cd "$here/.."
cargo build --release --locked -p confab-broker -p confab-bench --bins
exec "$CARGO_TARGET_DIR/release/confab-soak" --bin "$CARGO_TARGET_DIR/release/confab" "$@"
