#!/usr/bin/env bash
# Runs the whole test suite (release profile, the same one clippy and the
# benches use, so everything compiles once).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
cd "$here/.."
cargo test --release --locked --workspace "$@"
