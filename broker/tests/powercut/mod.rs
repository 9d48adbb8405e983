//! A simulated power cut for the real `confab` binary: an LD_PRELOAD shim
//! (`shim.c`, built by the test with the system C compiler) remembers what
//! the broker made durable under its data directory; [`Disk::cut`] rebuilds
//! the directory from that alone, after the process was killed. See
//! `shim.c` for the model (what a fsync makes durable, directories
//! included).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the shim into `dir` and returns the library's path.
pub fn build_shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powercut/shim.c");
    let lib = dir.join("libpowercut.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .arg("-lpthread")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc}: {e}"));
    assert!(
        out.status.success(),
        "the power-cut shim does not build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lib
}

/// A data directory whose durable state the shim keeps in `shadow`.
pub struct Disk {
    pub data: PathBuf,
    pub shadow: PathBuf,
    lib: PathBuf,
}

impl Disk {
    /// A fresh data directory under `root`, with the shim built there.
    pub fn new(root: &Path) -> Disk {
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let data = data.canonicalize().unwrap();
        let shadow = root.join("shadow");
        Disk {
            lib: build_shim(root),
            data,
            shadow,
        }
    }

    /// Declares everything in the data directory durable (before a
    /// process starts on it): the shadow is rebuilt from it.
    pub fn baseline(&self) {
        let _ = std::fs::remove_dir_all(&self.shadow);
        std::fs::create_dir_all(self.shadow.join("files")).unwrap();
        std::fs::create_dir_all(self.shadow.join("dirs")).unwrap();
        for dir in dirs(&self.data) {
            let mut listing = String::new();
            for (name, path) in files(&dir) {
                let shadow_name = format!("b{}", std::fs::metadata(&path).unwrap().ino());
                std::fs::copy(&path, self.shadow.join("files").join(&shadow_name)).unwrap();
                listing.push_str(&format!("{name}\t{shadow_name}\n"));
            }
            std::fs::write(self.listing_path(&dir), listing).unwrap();
        }
    }

    /// The power cut, once the process is dead: the data directory becomes
    /// what was durable. Returns the bytes that were not (written and lost),
    /// as a rough measure.
    pub fn cut(&self) -> u64 {
        let mut lost = 0u64;
        for dir in dirs(&self.data) {
            let listing = std::fs::read_to_string(self.listing_path(&dir)).unwrap_or_default();
            let durable: BTreeMap<&str, &str> =
                listing.lines().filter_map(|l| l.split_once('\t')).collect();
            for (_, path) in files(&dir) {
                lost += std::fs::metadata(&path).map_or(0, |m| m.len());
                std::fs::remove_file(&path).unwrap();
            }
            for (name, shadow_name) in durable {
                let from = self.shadow.join("files").join(shadow_name);
                let to = dir.join(name);
                if from.exists() {
                    std::fs::copy(&from, &to).unwrap();
                    lost = lost.saturating_sub(std::fs::metadata(&to).unwrap().len());
                } else {
                    // Named, never synced: there, empty.
                    std::fs::write(&to, b"").unwrap();
                }
            }
        }
        lost
    }

    /// Environment variables that put the shim under a process.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), self.lib.display().to_string()),
            ("POWERCUT_DATA".into(), self.data.display().to_string()),
            ("POWERCUT_SHADOW".into(), self.shadow.display().to_string()),
        ]
    }

    fn listing_path(&self, dir: &Path) -> PathBuf {
        let rel = dir.strip_prefix(&self.data).unwrap();
        let key = if rel.as_os_str().is_empty() {
            "@root".to_owned()
        } else {
            rel.display().to_string().replace('/', "%")
        };
        self.shadow.join("dirs").join(key)
    }
}

/// `root` and every directory under it.
fn dirs(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(&all[i])
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.path())
            .collect();
        subs.sort();
        all.extend(subs);
        i += 1;
    }
    all
}

/// The regular files directly in `dir`, by name.
fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    v.sort();
    v
}
