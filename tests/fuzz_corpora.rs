//! Replays the committed fuzz corpora (fuzz/seeds/TARGET/, subfolders included) through the
//! same target bodies the cargo-fuzz binaries in fuzz/ run (`pgmoat::fuzz_targets`), so a plain
//! `cargo test` on stable Rust checks every seed and every crash input kept as a regression.
//! See docs/fuzzing.md.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use pgmoat::fuzz_targets;

/// A fuzz target's body: any bytes in, a panic only when a property fails.
type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("startup_packet", fuzz_targets::startup_packet),
    ("framing", fuzz_targets::framing),
    ("scram_server", fuzz_targets::scram_server),
    ("error_response", fuzz_targets::error_response),
    ("admin_command", fuzz_targets::admin_command),
    ("userlist", fuzz_targets::userlist),
    ("connstr", fuzz_targets::connstr),
    ("toml_config", fuzz_targets::toml_config),
    ("idle_classifier", fuzz_targets::idle_classifier),
    ("statement_renaming", fuzz_targets::statement_renaming),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            found.push(path);
        }
    }
}

fn replay(name: &str) {
    let (_, target) = TARGETS.iter().find(|(n, _)| *n == name).unwrap();
    let mut files = Vec::new();
    files_under(&fuzz_dir().join("seeds").join(name), &mut files);
    files.sort();
    assert!(!files.is_empty(), "fuzz/seeds/{name} has no seeds");
    for file in &files {
        let data = std::fs::read(file).unwrap();
        if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
            panic!("fuzz target {name} failed on {}", file.display());
        }
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
    };
}

replay_tests!(
    startup_packet,
    framing,
    scram_server,
    error_response,
    admin_command,
    userlist,
    connstr,
    toml_config,
    idle_classifier,
    statement_renaming,
);

/// Every cargo-fuzz target has a replay here and a seed folder, and every seed folder a target.
#[test]
fn every_target_is_replayed() {
    let names = |dir: &str, strip: &str| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(fuzz_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(strip).map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    let mut known: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    known.sort();
    assert_eq!(names("fuzz_targets", ".rs"), known, "fuzz/fuzz_targets");
    assert_eq!(names("seeds", ""), known, "fuzz/seeds");
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for name in &known {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
