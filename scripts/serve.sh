#!/usr/bin/env bash
# Starts a broker on the embedded default: TCP 127.0.0.1:7400, data in
# ./confab-data, dev authentication. Extra arguments go to `confab serve`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
exec cargo run --release --locked -p confab-broker --bin confab -- serve "$@"
