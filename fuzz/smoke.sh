#!/usr/bin/env bash
# Runs every fuzz target (the codec's and the broker's session) for a short while; fails if any of
# them finds a crash (a panic, a failed assertion, a timeout or an OOM).
#
# Environment:
#   FUZZ_SECONDS     seconds per target (default 20)
#   FUZZ_TARGET_DIR  cargo target dir for the fuzz build
#                    (default $HOME/.cache/confab/fuzz-target)
#   FUZZ_TARGETS     space-separated targets to run (default: all of them)
#
# Works on the stable toolchain: the targets are built without a sanitizer
# (`--sanitizer none`), which needs no nightly flags. The codec forbids
# unsafe code, so AddressSanitizer would add little.
set -euo pipefail

cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/confab/fuzz-target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list)
fi

failed=()
for target in "${targets[@]}"; do
    echo "smoke.sh: fuzzing '$target' for ${seconds}s" >&2
    # A target with committed seeds (session) starts from them.
    corpora=()
    if [[ -d "seeds/$target" ]]; then
        mkdir -p "corpus/$target"
        corpora=("corpus/$target" "seeds/$target")
    fi
    if ! cargo fuzz run "$target" --sanitizer none "${corpora[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1; then
        failed+=("$target")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "smoke.sh: crashes found in: ${failed[*]}" >&2
    echo "smoke.sh: reproducers are in $(pwd)/artifacts/<target>/;" \
        "replay one with: cargo fuzz run <target> --sanitizer none artifacts/<target>/<file>" >&2
    exit 1
fi
echo "smoke.sh: all ${#targets[@]} targets ran ${seconds}s without a crash" >&2
