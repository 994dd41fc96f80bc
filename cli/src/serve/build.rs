//! The project's CGI programs, built with cargo before serving: a `.rs` file in the served
//! directory that is a binary target of the Cargo project around it (`cgi-bin/reload.rs`)
//! is served under its file's stem (`/cgi-bin/reload`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The built programs: URL name to executable.
pub type Built = BTreeMap<String, PathBuf>;

/// Builds the binary targets whose source lies in `dir` and says where each landed; an empty
/// map when `dir` has no Rust sources or lies in no Cargo project.
pub fn build_programs(dir: &Path) -> Result<Built, String> {
    let has_sources = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok())
        .any(|entry| entry.path().extension().is_some_and(|ext| ext == "rs"));
    let Some(manifest) = has_sources.then(|| find_manifest(dir)).flatten() else {
        return Ok(Built::new());
    };
    let targets = binary_targets(&manifest, dir)?;
    for stem in sources_without_target(dir, &targets) {
        eprintln!(
            "pso serve: {}/{stem}.rs is not a program of {}: add to it\n\n{}",
            dir.display(),
            manifest.display(),
            super::site::bin_entry(&stem, Path::new("cgi-bin"))
        );
    }
    if targets.is_empty() {
        return Ok(Built::new());
    }
    let mut build = Command::new(cargo());
    build
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--message-format=json-render-diagnostics");
    for (target, program) in &targets {
        build
            .arg(if program.example {
                "--example"
            } else {
                "--bin"
            })
            .arg(target);
    }
    eprintln!(
        "pso serve: building {} with cargo",
        targets
            .values()
            .map(|program| program.stem.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let output = build
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err("cargo build failed (its messages are above)".into());
    }
    let mut built = Built::new();
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(message) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(target), Some(executable)) = (
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) else {
            continue;
        };
        if let Some(program) = targets.get(target) {
            built.insert(program.stem.clone(), PathBuf::from(executable));
        }
    }
    Ok(built)
}

/// cargo itself when run by `cargo run`, else the one on the `PATH`.
fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The nearest `Cargo.toml` at or above `dir`.
fn find_manifest(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join("Cargo.toml"))
        .find(|manifest| manifest.is_file())
}

/// Binary targets (name to URL name) whose source file lies directly in `dir`.
/// The stems of the `.rs` files in `dir` that no binary target builds.
fn sources_without_target(dir: &Path, targets: &BTreeMap<String, Program>) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stems: Vec<String> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .filter_map(|path| path.file_stem()?.to_str().map(str::to_owned))
        .filter(|stem| !targets.values().any(|built| built.stem == *stem))
        .collect();
    stems.sort();
    stems
}

/// A program target of the project whose source is in the served directory.
struct Program {
    /// The source's file stem: the name it is served under.
    stem: String,
    /// An example target (`[[example]]`, as pso's own demonstration programs are) rather
    /// than a binary.
    example: bool,
}

fn binary_targets(manifest: &Path, dir: &Path) -> Result<BTreeMap<String, Program>, String> {
    let output = Command::new(cargo())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed for {}", manifest.display()));
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let mut targets = BTreeMap::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            let kind_is = |wanted: &str| {
                target["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == wanted))
            };
            let (is_bin, example) = (kind_is("bin"), kind_is("example"));
            let (Some(name), Some(source)) = (target["name"].as_str(), target["src_path"].as_str())
            else {
                continue;
            };
            let source = Path::new(source);
            let in_dir = source
                .parent()
                .and_then(|p| p.canonicalize().ok())
                .is_some_and(|p| p == dir);
            if (is_bin || example)
                && in_dir
                && let Some(stem) = source.file_stem().and_then(|s| s.to_str())
            {
                // Served only under a plain name: listing another would link to a 404.
                if super::site::is_plain_name(stem) {
                    let stem = stem.to_string();
                    targets.insert(name.to_string(), Program { stem, example });
                } else {
                    eprintln!(
                        "pso serve: not serving {}: a program's name is A-Z a-z 0-9 . _ - only",
                        source.display()
                    );
                }
            }
        }
    }
    Ok(targets)
}
