#!/usr/bin/env bash
# Runs the whole test suite (release profile, the same one clippy and the
# benches use, so everything compiles once): the Rust workspace, then the
# TypeScript SDK against the built broker, in Node and headless Chromium
# (scripts/test-web.sh). Arguments go to `cargo test` and skip the
# TypeScript part.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
cd "$here/.."
cargo test --release --locked --workspace "$@"
if [ $# -eq 0 ]; then
    "$here/test-web.sh"
fi
