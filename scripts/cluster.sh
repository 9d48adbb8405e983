#!/usr/bin/env bash
# Starts a local Confab cluster to try: one nats-server with JetStream on
# 127.0.0.1:4222 (data in a temporary directory) and three `confab serve
# --cluster` nodes, a (TCP 127.0.0.1:7400), b (7410) and c (7420), dev
# authentication, QUIC off. Connect clients to any of them; a publish to a
# room is forwarded to the room's owner, and every node serves every
# room's history (docs/cluster.md, "Status"). Ctrl-C stops everything.
#
# The nats-server comes from $CONFAB_NATS_SERVER, else
# bench/peers/install.sh's venv (installed if missing), else PATH.
# Extra arguments go to every `confab serve`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"

nats="${CONFAB_NATS_SERVER:-$HOME/.cache/confab/peers-venv/bin/nats-server}"
if [ ! -x "$nats" ]; then
    if command -v nats-server >/dev/null 2>&1; then
        nats="$(command -v nats-server)"
    else
        bash "$here/../bench/peers/install.sh" >/dev/null
    fi
fi

cargo build --release --locked -p confab-broker --bin confab
confab="$CARGO_TARGET_DIR/release/confab"

work="$(mktemp -d -t confab-cluster.XXXXXX)"
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT INT TERM

"$nats" -a 127.0.0.1 -p 4222 -js -sd "$work/nats" &
pids+=($!)
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
    sleep 0.1
done

port=7400
for id in a b c; do
    "$confab" serve --cluster nats://127.0.0.1:4222 --node-id "$id" \
        --advertise "127.0.0.1:$port" --listen "127.0.0.1:$port" \
        --listen-quic off --data-dir "$work/$id" "$@" &
    pids+=($!)
    echo "node $id: 127.0.0.1:$port"
    port=$((port + 10))
done
wait -n
