//! The house rules of `src/`, read from the source: the layers of `src/lib.rs` (each module
//! imports only from the layers below it, and `wsgi` and `external` not from each other), and
//! no source file over 800 lines of non-test code. (Clippy holds the others: a `// SAFETY:`
//! reason for every `unsafe` block, no function over 100 lines; see Cargo.toml's `[lints]`.)

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom to top, as `src/lib.rs` states them. Modules on one line share a layer.
const LAYERS: &[&[&str]] = &[
    &["proto"],
    &["base"],
    &["seam"],
    &["net"],
    &["server"],
    &["pool"],
    &["wsgi", "external"],
    &["app"],
];

/// Most lines of non-test code in one source file.
const MAX_FILE_LINES: usize = 800;

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The top-level module a file under `src/` belongs to (`None` for lib.rs, main.rs, bin/).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    layer_of(name).map(|_| name.to_string())
}

/// The code of a file before its `#[cfg(test)]` module, without comments.
fn non_test_code(text: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        lines.push((number + 1, line));
    }
    lines
}

/// The modules of the crate a line names: `crate::NAME` and `$crate::NAME`.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut named = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        let after = &rest[at + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if before.is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_') && !name.is_empty() {
            named.push(name);
        }
        rest = after;
    }
    // `use crate::{a, b}` names several at once.
    if let Some(group) = code.trim().strip_prefix("use crate::{") {
        named.extend(
            group
                .split([',', '}', ';'])
                .map(|item| item.trim().split("::").next().unwrap_or("").to_string())
                .filter(|item| !item.is_empty()),
        );
    }
    named
}

#[test]
fn every_module_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for file in sources(&src) {
        let Some(module) = top_module(&src, &file) else {
            continue;
        };
        *seen.entry(module.clone()).or_default() += 1;
        let own = layer_of(&module).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        for (number, line) in non_test_code(&text) {
            for target in crate_paths(line) {
                let Some(layer) = layer_of(&target) else {
                    violations.push(format!(
                        "{}:{number}: names crate::{target}, which is no layer",
                        file.display()
                    ));
                    continue;
                };
                let upward = layer > own;
                let sideways = layer == own && target != module;
                if upward || sideways || (module == "proto" && target != "proto") {
                    violations.push(format!(
                        "{}:{number}: {module} (layer {own}) imports {target} (layer {layer}): {}",
                        file.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layer rule broken:\n{}",
        violations.join("\n")
    );
    // The rule is checked on something: every layer has its files.
    for layer in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(seen.contains_key(*layer), "no files for layer {layer}");
    }
}

#[test]
fn the_crate_root_keeps_its_modules_private_and_states_the_layers() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for layer in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            lib.contains(&format!("\nmod {layer};")),
            "src/lib.rs does not declare `mod {layer};` (private)"
        );
        let stated = lib
            .lines()
            .any(|line| line.starts_with("//! - ") && line.contains(&format!("`{layer}`")));
        assert!(
            stated,
            "src/lib.rs's module doc does not state the layer of {layer}"
        );
    }
}

#[test]
fn no_source_file_is_over_800_lines_of_non_test_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long: Vec<String> = sources(&src)
        .into_iter()
        .filter_map(|file| {
            let text = fs::read_to_string(&file).unwrap();
            let lines = non_test_code(&text).len();
            (lines > MAX_FILE_LINES).then(|| format!("{}: {lines} lines", file.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_FILE_LINES} lines:\n{}",
        long.join("\n")
    );
}
