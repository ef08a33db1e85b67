//! The house rules of `src/`, read from the source: the layers of `src/lib.rs` (each module
//! imports only from the layers below it, and `wsgi` and `external` not from each other), no
//! import circle among any of the crate's modules (files), and no source file over 800 lines
//! of non-test code. (Clippy holds the others: a `// SAFETY:`
//! reason for every `unsafe` block, no function over 100 lines; see Cargo.toml's `[lints]`.)

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The layers, bottom to top, as `src/lib.rs` states them. Modules on one line share a layer.
const LAYERS: &[&[&str]] = &[
    &["proto", "client"],
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
                let standalone = matches!(module.as_str(), "proto" | "client") && target != module;
                if upward || sideways || standalone {
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

/// The module path of a file under `src/` (`server::accept`; `server` for `server/mod.rs`),
/// or `None` for the binaries.
fn module_path(src: &Path, file: &Path) -> Option<Vec<String>> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin" || p == "main.rs") {
        return None;
    }
    let last = parts.pop()?;
    match last.as_str() {
        "mod.rs" | "lib.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    Some(parts)
}

/// A line of code with its comment and the contents of its string literals taken out.
fn code_only(line: &str) -> String {
    let mut out = String::new();
    let mut in_string = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_string => {
                chars.next();
            }
            '"' => {
                in_string = !in_string;
                out.push('"');
            }
            '/' if !in_string && chars.peek() == Some(&'/') => break,
            c if !in_string => out.push(c),
            _ => {}
        }
    }
    out
}

/// The paths a piece of code names (`a::b::c`), with `use` groups spelled out one level
/// (`use super::{x, y::z}` names `super::x` and `super::y::z`).
fn named_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let trimmed = code.trim();
    if let Some(rest) = trimmed
        .strip_prefix("pub use ")
        .or_else(|| trimmed.strip_prefix("pub(crate) use "))
        .or_else(|| trimmed.strip_prefix("pub(super) use "))
        .or_else(|| trimmed.strip_prefix("use "))
    {
        if let Some((prefix, group)) = rest.split_once("::{") {
            for item in group.split([',', '}', ';']) {
                let item = item.trim();
                if !item.is_empty() {
                    paths.push(format!("{prefix}::{item}"));
                }
            }
        }
    }
    let mut current = String::new();
    let mut words = Vec::new();
    for c in code.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$' {
            current.push(c);
        } else if !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
    }
    paths.extend(words.into_iter().filter(|w| w.contains("::")));
    paths
        .into_iter()
        .map(|p| {
            p.split("::")
                .map(|s| s.trim().trim_start_matches('$').to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .collect()
}

/// The module a path names from module `from`, if it is one of `modules` (the longest prefix
/// that is a module).
fn resolve(from: &[String], path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut absolute: Vec<String> = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "self" => from.to_vec(),
        "super" => from[..from.len().checked_sub(1)?].to_vec(),
        first => {
            // A child module named by its name alone.
            let mut child = from.to_vec();
            child.push(first.to_string());
            if !modules.contains(&child) {
                return None;
            }
            from.to_vec()
        }
    };
    let rest = match path[0].as_str() {
        "crate" | "self" | "super" => &path[1..],
        _ => path,
    };
    let mut best = modules.contains(&absolute).then(|| absolute.clone());
    for segment in rest {
        absolute.push(segment.clone());
        if modules.contains(&absolute) {
            best = Some(absolute.clone());
        }
    }
    best
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files: Vec<(Vec<String>, PathBuf)> = sources(&src)
        .into_iter()
        .filter_map(|file| module_path(&src, &file).map(|m| (m, file)))
        .collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    let mut example: BTreeMap<(Vec<String>, Vec<String>), String> = BTreeMap::new();
    for (module, file) in &files {
        let text = fs::read_to_string(file).unwrap();
        for (number, line) in non_test_code(&text) {
            let code = code_only(line);
            if code.trim_start().starts_with("mod ") || code.trim_start().starts_with("pub mod ") {
                continue;
            }
            for path in named_paths(&code) {
                let Some(target) = resolve(module, &path, &modules) else {
                    continue;
                };
                if &target != module {
                    edges.entry(module.clone()).or_default().insert(target.clone());
                    example
                        .entry((module.clone(), target))
                        .or_insert_with(|| format!("{}:{number}: {}", file.display(), line.trim()));
                }
            }
        }
    }
    assert!(
        edges.values().map(BTreeSet::len).sum::<usize>() > 50,
        "the import graph was not read"
    );
    // A cycle is an edge back to a module on the current search path.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        cycles: &mut Vec<Vec<Vec<String>>>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            cycles.push(path[at..].to_vec());
            return;
        }
        if !done.insert(node.clone()) {
            return;
        }
        path.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, path, done, cycles);
        }
        path.pop();
    }
    let mut cycles = Vec::new();
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        visit(node, &edges, &mut Vec::new(), &mut done, &mut cycles);
    }
    let described: Vec<String> = cycles
        .iter()
        .map(|cycle| {
            let steps: Vec<String> = cycle
                .iter()
                .zip(cycle.iter().cycle().skip(1))
                .map(|(a, b)| example[&(a.clone(), b.clone())].clone())
                .collect();
            format!("  {}", steps.join("\n  "))
        })
        .collect();
    assert!(cycles.is_empty(), "import circles:\n{}", described.join("\n\n"));
}
