//! What ARCHITECTURE.md promises of the server's code itself, read from
//! its source: the `use` lines of `src/` draw no circle among its
//! modules, and the command line's functions stay short enough to read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a function of the command line (`src/cli/`) may be.
const MOST_LINES_OF_A_COMMAND_LINE_FUNCTION: usize = 80;

/// Every `.rs` file under `folder`, sorted.
fn rust_files(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn source_folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The server's top-level module a file belongs to (`routes` for
/// `src/routes/admin/mod.rs`, `limits` for `src/limits.rs`).
fn top_module(file: &Path) -> String {
    let relative = file.strip_prefix(source_folder()).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_str().unwrap().trim_end_matches(".rs").to_string()
}

/// The top-level modules that a file's code names as `crate::module`
/// (comments left out).
fn modules_named(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in text.lines() {
        // `split` yields at least one piece, even of an empty line.
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                named.insert(name);
            }
        }
    }
    named
}

/// A circle in `imports` that passes through `start`, if there is one.
fn circle_through(
    start: &str,
    imports: &BTreeMap<String, BTreeSet<String>>,
) -> Option<Vec<String>> {
    let mut paths = vec![vec![start.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = paths.pop() {
        let last = path.last().unwrap();
        for next in imports.get(last).into_iter().flatten() {
            if next == start {
                let mut circle = path.clone();
                circle.push(start.to_string());
                return Some(circle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                paths.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_servers_modules_import_no_circle() {
    let mut imports: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&source_folder()) {
        let module = top_module(&file);
        let text = std::fs::read_to_string(&file).unwrap();
        let mut named = modules_named(&text);
        named.remove(&module);
        imports.entry(module).or_default().extend(named);
    }
    assert!(
        imports["state"].contains("limits"),
        "the test reads the imports: {imports:?}"
    );
    let circles: Vec<Vec<String>> = imports
        .keys()
        .filter_map(|module| circle_through(module, &imports))
        .collect();
    assert!(
        circles.is_empty(),
        "modules of src/ import each other: {circles:?}"
    );
}

/// Whether a line (without its indentation) opens a function: `fn`, after
/// any of `pub(…)`, `async`, `const` and `unsafe`.
fn declares_a_function(code: &str) -> bool {
    let mut words = code.split_whitespace();
    let first_other = words
        .find(|word| !(word.starts_with("pub") || ["async", "const", "unsafe"].contains(word)));
    first_other == Some("fn")
}

#[test]
fn every_function_of_the_command_line_is_under_80_lines() {
    let mut too_long = Vec::new();
    for file in rust_files(&source_folder().join("cli")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (first, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            let indent = &line[..line.len() - code.len()];
            if !declares_a_function(code) || code.ends_with(';') {
                continue;
            }
            // rustfmt closes a function with `}` at its own indentation.
            let closing = format!("{indent}}}");
            let Some(last) = (first..lines.len()).find(|at| lines[*at] == closing) else {
                continue;
            };
            let length = last - first + 1;
            if length >= MOST_LINES_OF_A_COMMAND_LINE_FUNCTION {
                too_long.push(format!("{}:{} ({length} lines)", file.display(), first + 1));
            }
        }
    }
    assert!(
        too_long.is_empty(),
        "functions of {MOST_LINES_OF_A_COMMAND_LINE_FUNCTION} lines or more: {too_long:?}"
    );
}
