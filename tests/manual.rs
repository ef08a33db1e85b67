//! The manual page: it renders without a warning, documents every option `--help` lists,
//! and names every file in `contrib/`.

mod common;

use std::path::Path;
use std::process::Command;

fn manual() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/scgi-wsgi.1"))
        .expect("man/scgi-wsgi.1")
}

#[test]
fn renders_without_warnings() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/scgi-wsgi.1");
    let out = Command::new("groff")
        .args(["-man", "-ww", "-z"])
        .arg(&page)
        .output()
        .expect("groff (installed by .ci/setup)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "groff -man -ww -z:\n{stderr}"
    );
    // And it says something: the rendered text has every section.
    let text = Command::new("groff")
        .args(["-man", "-Tutf8", "-P-cbou"])
        .arg(&page)
        .output()
        .expect("groff");
    let text = String::from_utf8_lossy(&text.stdout);
    for section in [
        "SYNOPSIS",
        "OPTIONS",
        "HANDLING MODELS",
        "ENVIRON",
        "SIGNALS",
        "FRONTENDS",
        "EXAMPLES",
    ] {
        assert!(text.contains(section), "no {section} section");
    }
}

#[test]
fn documents_every_option_of_help() {
    let help = Command::new(common::BIN)
        .arg("--help")
        .output()
        .expect("scgi-wsgi --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let page = manual();
    let mut missing = Vec::new();
    for word in help.split(|c: char| c.is_whitespace() || c == ',') {
        let Some(name) = word.strip_prefix("--") else {
            continue;
        };
        let name: String = name
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if name.is_empty() {
            continue;
        }
        // groff source writes each hyphen as \-.
        let escaped = format!("\\-\\-{}", name.replace('-', "\\-"));
        if !page.contains(&escaped) {
            missing.push(format!("--{name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "options in --help but not in man/scgi-wsgi.1: {missing:?}"
    );
}

#[test]
fn names_every_contrib_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = manual();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for dir in std::fs::read_dir(root.join("contrib")).unwrap() {
        for file in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            assert!(
                page.contains(&rel.replace('-', "\\-")),
                "the manual does not name {rel}"
            );
            assert!(
                readme.contains(&format!("({rel})")),
                "README.md does not link {rel}"
            );
        }
    }
}
