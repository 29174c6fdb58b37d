//! Keeps `docs/conformance.md` honest: every requirement R001-R131 has exactly one row, a valid
//! status, and every test the table names exists as a `fn` somewhere in the workspace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_sources(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// All function names defined in the workspace's Rust sources.
fn defined_fns() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_sources(&workspace_root(), &mut files);
    let mut names = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            let t = line.trim_start();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            let t = t.strip_prefix("async ").unwrap_or(t);
            if let Some(rest) = t.strip_prefix("fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    names
}

#[test]
fn conformance_table_is_complete_and_cites_real_tests() {
    let doc = std::fs::read_to_string(workspace_root().join("docs/conformance.md")).unwrap();
    let fns = defined_fns();
    let mut seen = BTreeSet::new();
    let mut errors = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| R")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", id, section, level, text, status, test, ""]
        if cells.len() < 8 {
            errors.push(format!("malformed row: {line}"));
            continue;
        }
        let (id, status, tests) = (cells[1], cells[5], cells[6]);
        if !seen.insert(id.to_string()) {
            errors.push(format!("{id} appears twice"));
        }
        match status {
            "open" => {}
            "n/a" => {
                if tests.is_empty() {
                    errors.push(format!("{id} is n/a without a reason"));
                }
            }
            "covered" => {
                let names: Vec<&str> = tests
                    .split(',')
                    .map(|t| t.trim().trim_matches('`'))
                    .map(|t| t.rsplit("::").next().unwrap_or(t))
                    .filter(|t| !t.is_empty())
                    .collect();
                if names.is_empty() {
                    errors.push(format!("{id} is covered but names no test"));
                }
                for n in names {
                    if !fns.contains(n) {
                        errors.push(format!(
                            "{id} cites `{n}`, which is not a fn in the workspace"
                        ));
                    }
                }
            }
            other => errors.push(format!("{id} has unknown status `{other}`")),
        }
    }
    for i in 1..=131 {
        let id = format!("R{i:03}");
        if !seen.contains(&id) {
            errors.push(format!("{id} has no row"));
        }
    }
    assert!(
        errors.is_empty(),
        "docs/conformance.md:\n{}",
        errors.join("\n")
    );
}
