//! Replays every finding of the session fuzz target (fuzz/regressions/session)
//! and its seed corpus (fuzz/seeds/session) through the fuzz harness, which
//! checks the same invariants as the fuzzer (see fuzz/harness/session.rs).
//! A plain `#[test]`: the harness owns its runtime.

#[path = "../../fuzz/harness/session.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn inputs(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn replay(dir: &str) -> usize {
    let files = inputs(dir);
    for file in &files {
        let data = std::fs::read(file).expect("read an input");
        eprintln!("replaying {}", file.display());
        harness::run(&data);
    }
    files.len()
}

#[test]
fn every_finding_and_seed_replays_clean() {
    let findings = replay("fuzz/regressions/session");
    let seeds = replay("fuzz/seeds/session");
    assert!(seeds > 0, "the seed corpus is not empty");
    eprintln!("{findings} findings and {seeds} seeds replayed");
}

/// The empty input and a few fixed ones: the harness itself works.
#[test]
fn fixed_inputs_replay_clean() {
    harness::run(&[]);
    harness::run(&[0]);
    harness::run(&[7, 1, 0, 0]);
}
