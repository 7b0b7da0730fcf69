//! Replays the fuzz seed corpus (`fuzz/corpus/<target>/`) and every recorded fuzz finding
//! (`worker/tests/data/fuzz-regressions/<target>/`) through the matching
//! [`lynx_worker::fuzz`] target, so that CI re-checks them without AFL. A target panics on a
//! bug, which fails the test with the file's name.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

/// The fuzz targets by the name of their folders.
const TARGETS: [(&str, Target); 4] = [
    ("image", lynx_worker::fuzz::image),
    ("video", lynx_worker::fuzz::video),
    ("tokenizer_decode", lynx_worker::fuzz::tokenizer_decode),
    ("request", lynx_worker::fuzz::request),
];

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The files of `dir`, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()).unwrap_or_default())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Runs every file of `dir` through `target`; returns how many there were.
fn replay(dir: &Path, target: Target) -> usize {
    let inputs = files(dir);
    for path in &inputs {
        let data =
            std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let run = std::panic::catch_unwind(|| target(&data));
        assert!(run.is_ok(), "fuzz input {} panics", path.display());
    }
    inputs.len()
}

#[test]
fn seed_corpus_passes_every_target() {
    lynx_worker::fuzz::init().unwrap_or_else(|e| panic!("{e}"));
    for (name, target) in TARGETS {
        let dir = repo().join("fuzz/corpus").join(name);
        let n = replay(&dir, target);
        assert!(n > 0, "no seed in {}", dir.display());
    }
}

#[test]
fn recorded_fuzz_findings_pass_every_target() {
    lynx_worker::fuzz::init().unwrap_or_else(|e| panic!("{e}"));
    let root = repo().join("worker/tests/data/fuzz-regressions");
    let mut total = 0;
    for (name, target) in TARGETS {
        total += replay(&root.join(name), target);
    }
    // A folder of an unknown target would never be replayed.
    for path in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = path.file_name();
        let name = name.to_str().unwrap_or_default();
        assert!(
            name == "README.md" || TARGETS.iter().any(|(t, _)| *t == name),
            "{} is not the folder of a fuzz target",
            path.path().display()
        );
    }
    assert!(total > 0, "no recorded finding under {}", root.display());
}
