#!/usr/bin/env bash
# Runs the TypeScript SDK's tests (client-ts/) against the release broker
# binary: Node tests (codec, golden vectors, SDK against a mock and the real
# broker) and headless Chromium tests (playwright-core driving Debian's
# chromium; no browser download). Installs chromium (Debian) and the npm
# packages (from client-ts/package-lock.json) if they are missing. Needs
# Node.js 20 or newer and a built broker (scripts/test.sh builds it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
cd "$here/../client-ts"

if ! command -v node >/dev/null 2>&1 || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    echo "test-web: Node.js 20 or newer is needed (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
fi
if [ ! -x /usr/bin/chromium ]; then
    echo "test-web: installing chromium (Debian)" >&2
    sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get install -y --no-install-recommends chromium >/dev/null \
        || { "${sudo_cmd[@]}" apt-get update >/dev/null && "${sudo_cmd[@]}" apt-get install -y --no-install-recommends chromium >/dev/null; }
fi
# npm ci when node_modules is missing or older than the lockfile.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    npm ci --no-audit --no-fund
fi
bin="$CARGO_TARGET_DIR/release/confab"
if [ ! -x "$bin" ]; then
    echo "test-web: no broker binary at $bin; build it first (scripts/test.sh does)" >&2
    exit 1
fi
# CONFAB_* variables are broker settings: give the binary's path to npm only.
CONFAB_BIN="$bin" npm test
CONFAB_BIN="$bin" npm run test:browser
