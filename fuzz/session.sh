#!/usr/bin/env bash
# Runs the `session` fuzz target for hours: the broker's session state
# machine driven by scripts of frames (see fuzz/harness/session.rs).
#
#   fuzz/session.sh --hours 1            # one hour
#   fuzz/session.sh --minutes 20         # or minutes
#   fuzz/session.sh --hours 8 --jobs 2   # two processes (cores)
#
# The corpus grows in fuzz/corpus/session (git-ignored; kept between
# runs), seeded from fuzz/seeds/session. Crashes and invariant failures are
# written to fuzz/artifacts/session/.
#
# Environment:
#   FUZZ_TARGET_DIR  cargo target dir (default $HOME/.cache/confab/fuzz-target)
#   FUZZ_RSS_MB      libFuzzer's -rss_limit_mb (default 2048)
set -euo pipefail

cd "$(dirname "$0")"

seconds=3600
jobs=1
while (($#)); do
    case "$1" in
        --hours) seconds=$(($2 * 3600)); shift 2 ;;
        --minutes) seconds=$(($2 * 60)); shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        *) echo "usage: $0 [--hours N | --minutes N | --seconds N] [--jobs N]" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/confab/fuzz-target}"
rss="${FUZZ_RSS_MB:-2048}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "session.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

mkdir -p corpus/session artifacts/session
echo "session.sh: fuzzing 'session' for ${seconds}s with ${jobs} job(s)" >&2
status=0
extra=()
if ((jobs > 1)); then
    extra=(-jobs="$jobs" -workers="$jobs")
fi
cargo fuzz run session --sanitizer none corpus/session seeds/session -- \
    -max_total_time="$seconds" -rss_limit_mb="$rss" -timeout=30 \
    -max_len=2048 -print_final_stats=1 "${extra[@]}" || status=$?

if ((status != 0)); then
    echo "session.sh: the target failed (status $status); inputs are in $(pwd)/artifacts/session/" >&2
    echo "session.sh: replay one with:" \
        "cargo fuzz run session --sanitizer none artifacts/session/<file>" >&2
    echo "session.sh: once fixed, copy it to fuzz/regressions/session/<what-it-was>;" \
        "cargo test --release -p confab-broker --test session_fuzz replays it" >&2
    exit "$status"
fi
echo "session.sh: no finding in ${seconds}s; corpus: $(ls corpus/session | wc -l) inputs" >&2
