# Sourced by the other scripts: one target directory outside the clone,
# shared by every checkout, session and CI run, so RocksDB's C++ (about 25
# minutes on 2 cores) compiles once per machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/confab/target}"
