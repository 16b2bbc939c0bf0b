//! Repository rules kept under `cargo test`, in the manner of rust-analyzer's `tidy`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn bundled_fixtures_match_their_generator() {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fixtures", "--check"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// CI must run exactly the test command the README gives.
#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let command = readme
        .lines()
        .find(|l| l.trim_start().starts_with("cargo test"))
        .expect("the README names a `cargo test` command")
        .trim();
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run does not run the README's `{command}`"
    );
}

/// Every library source file starts with a `//!` doc comment, and no library code
/// calls `todo!` or `unimplemented!`.
#[test]
fn library_sources_are_documented_and_complete() {
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        visit(&src, &mut |path, text| {
            if !text.trim_start().starts_with("//!") {
                problems.push(format!("{}: no //! module doc", path.display()));
            }
            // Spelled in pieces so that this file does not trip its own rule.
            let markers = [concat!("todo", "!("), concat!("unimplemented", "!(")];
            if markers.iter().any(|m| text.contains(m)) {
                problems.push(format!("{}: todo!/unimplemented!", path.display()));
            }
        });
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn visit(dir: &Path, check: &mut dyn FnMut(&Path, &str)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            visit(&path, check);
        } else if path.extension().is_some_and(|e| e == "rs") {
            check(&path, &std::fs::read_to_string(&path).unwrap());
        }
    }
}
