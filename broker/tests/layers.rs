//! The broker's modules form layers: no import cycle between the top-level
//! modules of `broker/src` (docs/architecture.md lists the layers). This
//! reads the sources and fails with the cycle if one comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of a file under `src` (`sequencer/core.rs` -> `sequencer`).
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

fn visit(dir: &Path, root: &Path, graph: &mut BTreeMap<String, BTreeSet<String>>) {
    let entries = std::fs::read_dir(dir).expect("read src");
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            visit(&path, root, graph);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = path.strip_prefix(root).expect("under src");
        let from = module_of(rel);
        if from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read file");
        for line in text.lines() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let to: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !to.is_empty() && to != from {
                    graph.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    node: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in graph.get(node).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(start.to_owned());
            return Some(cycle);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(graph, start, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = BTreeMap::new();
    visit(&root, &root, &mut graph);
    assert!(graph.len() > 10, "the sources were not found: {graph:?}");
    for start in graph.keys() {
        let mut path = vec![start.clone()];
        let mut seen = BTreeSet::new();
        if let Some(cycle) = cycle_from(&graph, start, start, &mut path, &mut seen) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_ground_floor_imports_nothing_of_the_crate() {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/base.rs");
    let text = std::fs::read_to_string(base).expect("read base.rs");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("crate::") && !l.trim_start().starts_with("//")),
        "base.rs must not import the rest of the crate"
    );
}
