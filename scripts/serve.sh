#!/usr/bin/env bash
# Starts a development broker: TCP 127.0.0.1:7400, QUIC 127.0.0.1:7401,
# WebSocket ws://127.0.0.1:7402/ws (for browsers; `confab serve` alone keeps
# it off), data in ./confab-data, dev authentication. Extra arguments go to
# `confab serve` (`--listen-ws off` turns the WebSocket listener off).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
ws=(--listen-ws 127.0.0.1:7402)
for arg in "$@"; do
  case "$arg" in --listen-ws|--listen-ws=*) ws=() ;; esac
done
exec cargo run --release --locked -p confab-broker --bin confab -- serve "${ws[@]}" "$@"
