//! Documentation that cannot rot: every relative link and `#anchor` in the
//! README, ARCHITECTURE.md and `docs/` leads to a file and a heading that
//! exist; every error code the server can answer is in the integrator's
//! table, and every command of the command line in its page, and neither
//! lists one the code does not have; the command blocks marked as run are
//! run against the real binary and answer what they show. (The settings'
//! table is held to the code by `cli::every_setting_…`, the event types by
//! `webhooks::the_docs_and_the_api_list_every_event_type`, the quick start
//! by `quick_start`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The documentation's files, relative to the repository: the README,
/// ARCHITECTURE.md and every page of `docs/`.
fn documentation() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md"), PathBuf::from("ARCHITECTURE.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/ is there")
        .map(|entry| entry.expect("docs/ can be listed").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "md"))
        .map(|path| {
            path.strip_prefix(ROOT)
                .expect("under the repository")
                .to_path_buf()
        })
        .collect();
    pages.sort();
    assert!(pages.len() >= 5, "the pages of docs/: {pages:?}");
    files.extend(pages);
    files
}

fn read(file: &Path) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(file))
        .unwrap_or_else(|error| panic!("{}: {error}", file.display()))
}

/// The lines of a Markdown text outside fenced code blocks, with their
/// numbers (from 1).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            lines.push((index + 1, line));
        }
    }
    lines
}

/// GitHub's anchor for a heading: its text as rendered (code spans and
/// links by their text, emphasis gone), lower-cased, every character that
/// is not a letter, a digit, a space, `-` or `_` removed, spaces made `-`.
fn slug(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // A link is its text.
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](") else {
            break;
        };
        let Some(end) = rest[open + close..].find(')') else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..open + close]);
        rest = &rest[open + close + end + 1..];
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter(|character| character.is_alphanumeric() || matches!(character, ' ' | '-' | '_'))
        .map(|character| if character == ' ' { '-' } else { character })
        .collect()
}

/// The anchors of a Markdown text's headings, with GitHub's `-1`, `-2`
/// for a heading met again.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line
            .chars()
            .take_while(|character| *character == '#')
            .count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim());
        let count = seen.entry(base.clone()).or_insert(0);
        anchors.insert(if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        });
        *count += 1;
    }
    anchors
}

/// The targets of a Markdown text's inline links (`[text](target)`, the
/// text possibly over several lines), outside code blocks and code spans,
/// with the line each is on.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in prose_lines(text) {
        // Code spans are not links.
        let outside: String = line
            .split('`')
            .enumerate()
            .map(|(index, part)| if index % 2 == 0 { part } else { "" })
            .collect::<Vec<_>>()
            .join("``");
        let mut rest = outside.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else {
                break;
            };
            let target = &after[..end];
            if !target.contains(' ') && !target.is_empty() {
                found.push((number, target.to_string()));
            }
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn every_link_and_anchor_in_the_documentation_leads_somewhere() {
    let files = documentation();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = read(file);
        let directory = file.parent().unwrap_or(Path::new(""));
        for (line, target) in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let destination = if path.is_empty() {
                file.clone()
            } else {
                normalize(&directory.join(path))
            };
            let on_disk = Path::new(ROOT).join(&destination);
            if !on_disk.exists() {
                broken.push(format!(
                    "{}:{line}: {target}: no file {}",
                    file.display(),
                    destination.display()
                ));
                continue;
            }
            if let Some(anchor) = anchor {
                if on_disk.is_dir()
                    || on_disk
                        .extension()
                        .is_none_or(|extension| extension != "md")
                {
                    broken.push(format!(
                        "{}:{line}: {target}: an anchor into what is not a Markdown page",
                        file.display()
                    ));
                    continue;
                }
                let there = anchors(&read(&destination));
                if !there.contains(anchor) {
                    broken.push(format!(
                        "{}:{line}: {target}: {} has no heading #{anchor}",
                        file.display(),
                        destination.display()
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links that lead nowhere:\n{}",
        broken.join("\n")
    );
    assert!(checked > 100, "the links were found: {checked}");
}

/// `a/b/../c` as `a/c`.
fn normalize(path: &Path) -> PathBuf {
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for component in path.components() {
        match component {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::CurDir => {}
            other => parts.push(other.as_os_str()),
        }
    }
    parts.iter().collect()
}

#[test]
fn every_page_links_back_to_the_readme_and_the_readme_to_every_page() {
    let readme = read(Path::new("README.md"));
    for file in documentation().into_iter().skip(2) {
        let page = file.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            readme.contains(&format!("](docs/{page})")),
            "the README's contents do not list docs/{page}"
        );
        let text = read(&file);
        assert!(
            text.contains("](../README.md)"),
            "docs/{page} does not link back to the README"
        );
        for other in documentation().into_iter().skip(2) {
            let name = other.file_name().unwrap().to_str().unwrap();
            assert!(
                name == page || text.contains(&format!("]({name})")),
                "docs/{page} does not link to its neighbour {name}"
            );
        }
    }
}

#[test]
fn the_slugs_are_githubs() {
    assert_eq!(slug("The operator's console"), "the-operators-console");
    assert_eq!(
        slug("Moving a database: `sms-credit copy`"),
        "moving-a-database-sms-credit-copy"
    );
    assert_eq!(
        slug("Account holders: tokens, the web page and the live balance"),
        "account-holders-tokens-the-web-page-and-the-live-balance"
    );
    assert_eq!(slug("Disputes (chargebacks)"), "disputes-chargebacks");
    assert_eq!(
        slug("Refunds, disputes and instances together"),
        "refunds-disputes-and-instances-together"
    );
    let twice = anchors("# A\n\n## On Postgres\n\n```\n# not a heading\n```\n\n## On Postgres\n");
    assert_eq!(
        twice,
        BTreeSet::from([
            "a".to_string(),
            "on-postgres".to_string(),
            "on-postgres-1".to_string()
        ])
    );
}

/// Every `.rs` file under a directory.
fn rust_files(directory: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("the directory can be listed") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
}

/// The string literal right after `prefix` (spaces and line breaks
/// between allowed), wherever `prefix` occurs, if it is a code: lower-case
/// words joined by `_`.
fn codes_after(source: &str, prefix: &str) -> Vec<String> {
    source
        .match_indices(prefix)
        .filter_map(|(at, _)| {
            let rest = source[at + prefix.len()..].trim_start();
            let rest = rest.strip_prefix('{').unwrap_or(rest).trim_start();
            let literal = rest.strip_prefix('"')?;
            let code = &literal[..literal.find('"')?];
            let is_code = !code.is_empty()
                && code
                    .chars()
                    .all(|character| character.is_ascii_lowercase() || character == '_');
            is_code.then(|| code.to_string())
        })
        .collect()
}

/// Every error code the server can answer, read from the code that makes
/// them: `ApiError::code` and the mappings beside it in `src/error.rs`
/// (`… => "code"`), and every `ApiError::invalid("code", …)` and
/// `code: "code"` of the server's sources (the one place errors become
/// HTTP is `src/error.rs`; the codes those make are the only ones).
fn codes_in_the_code() -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("src"), &mut files);
    assert!(files.len() > 30, "the server's sources: {files:?}");
    let mut codes = BTreeSet::new();
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        codes.extend(codes_after(&source, "ApiError::invalid("));
        codes.extend(codes_after(&source, "code: "));
        if file.ends_with("src/error.rs") {
            codes.extend(codes_after(&source, "=>"));
            codes.extend(codes_after(&source, "return "));
        }
    }
    codes
}

/// The codes of the error table of docs/integrating.md.
fn codes_in_the_docs() -> BTreeSet<String> {
    let page = read(Path::new("docs/integrating.md"));
    let table = page
        .split("\n### Error codes\n")
        .nth(1)
        .expect("docs/integrating.md has its Error codes")
        .split("\n#")
        .next()
        .unwrap_or_default();
    table
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('`').nth(1))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_error_code_the_server_answers_is_in_the_integrators_table() {
    let answered = codes_in_the_code();
    // The reading of the code finds what it must.
    for code in [
        "invalid_json",
        "unsupported_destination",
        "not_applied",
        "insufficient_credit",
        "twilio_not_configured",
        "discount_code_unusable",
        "unknown_stored_value",
    ] {
        assert!(
            answered.contains(code),
            "{code} not found in the code: {answered:?}"
        );
    }
    let documented = codes_in_the_docs();
    let missing: Vec<_> = answered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "error codes the server answers that docs/integrating.md's table does not list: {missing:?}"
    );
    let stray: Vec<_> = documented.difference(&answered).collect();
    assert!(
        stray.is_empty(),
        "docs/integrating.md's table lists codes the server never answers: {stray:?}"
    );
}

/// Every command path of the command line (`accounts`, `accounts token`,
/// `accounts token issue`, …), from clap's own tree.
fn command_paths() -> Vec<Vec<String>> {
    use clap::CommandFactory;
    fn walk(command: &clap::Command, above: &[String], paths: &mut Vec<Vec<String>>) {
        for sub in command.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            let mut path = above.to_vec();
            path.push(sub.get_name().to_string());
            paths.push(path.clone());
            walk(sub, &path, paths);
        }
    }
    let mut paths = Vec::new();
    walk(&sms_credit::cli::Cli::command(), &[], &mut paths);
    paths
}

#[test]
fn every_command_is_in_the_command_line_page_and_nothing_else_is() {
    let page = read(Path::new("docs/command-line.md"));
    let block = page
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("docs/command-line.md has its list of commands");
    let lines: Vec<Vec<&str>> = block
        .lines()
        .filter(|line| line.starts_with("sms-credit "))
        .map(|line| {
            // The words of the command, before its comment.
            line.split(" #")
                .next()
                .unwrap_or_default()
                .split([' ', '|'])
                .collect()
        })
        .collect();
    let paths = command_paths();
    assert!(paths.len() > 30, "clap's commands: {paths:?}");
    let mut missing = Vec::new();
    for path in &paths {
        let listed = lines.iter().any(|words| {
            words.get(1) == Some(&path[0].as_str())
                && path[1..]
                    .iter()
                    .all(|name| words[2..].contains(&name.as_str()))
        });
        if !listed {
            missing.push(path.join(" "));
        }
    }
    assert!(
        missing.is_empty(),
        "commands docs/command-line.md does not list: {missing:?}"
    );
    let top: BTreeSet<&str> = paths
        .iter()
        .filter(|path| path.len() == 1)
        .map(|path| path[0].as_str())
        .collect();
    for words in &lines {
        assert!(
            words.get(1).is_some_and(|word| top.contains(word)),
            "docs/command-line.md lists a command there is not: {words:?}"
        );
    }
}

/// A command of a marked block (a line after `$ `), and the lines the
/// block shows it answer.
#[derive(Debug)]
struct Run {
    command: String,
    shown: Vec<String>,
}

/// The `console` blocks that follow a `<!-- runs: tests/docs.rs -->`
/// marker, in every page, with the page each is on.
fn runnable_blocks() -> Vec<(PathBuf, Vec<Run>)> {
    let mut blocks = Vec::new();
    for file in documentation() {
        let text = read(&file);
        for marked in text.split("\n<!-- runs: tests/docs.rs").skip(1) {
            let start = marked
                .find("```console\n")
                .expect("a console block after the marker")
                + "```console\n".len();
            let end = marked[start..].find("\n```").expect("the block ends");
            let mut commands: Vec<Run> = Vec::new();
            for line in marked[start..start + end].lines() {
                match line.strip_prefix("$ ") {
                    Some(command) => commands.push(Run {
                        command: command.to_string(),
                        shown: Vec::new(),
                    }),
                    None => commands
                        .last_mut()
                        .expect("a block starts with a command")
                        .shown
                        .push(line.to_string()),
                }
            }
            blocks.push((file.clone(), commands));
        }
    }
    blocks
}

/// A line's words, so that columns padded with spaces compare alike.
fn words(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_command_blocks_marked_as_run_answer_what_they_show() {
    let blocks = runnable_blocks();
    assert!(blocks.len() >= 2, "the marked blocks: {blocks:?}");
    let binary = Path::new(env!("CARGO_BIN_EXE_sms-credit"));
    for (file, commands) in blocks {
        let directory = tempfile::tempdir().unwrap();
        // One shell for the block, so that `$?` is the command before's;
        // each command's output (standard error too) ends at a marker.
        let script: String = commands
            .iter()
            .map(|Run { command, .. }| {
                format!(
                    "{{ {command}\n}} 2>&1; status=$?; echo '@@@ end of command'; (exit $status)\n"
                )
            })
            .collect();
        let output = std::process::Command::new("timeout")
            .args(["60", "sh", "-c", &script])
            .current_dir(directory.path())
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", binary.parent().unwrap().display()),
            )
            .env("HOME", directory.path())
            .env("TMPDIR", directory.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("sh runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let answers: Vec<&str> = stdout.split("@@@ end of command\n").collect();
        assert_eq!(
            answers.len(),
            commands.len() + 1,
            "{}: every command of the block ran within 60 s:\n{stdout}\n{}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        for (Run { command, shown }, answer) in commands.iter().zip(&answers) {
            // What the block shows is in the answer, line after line, in
            // its order (a block may show only part of a long answer).
            let mut answered = answer.lines().map(words);
            for line in shown {
                let wanted = words(line);
                assert!(
                    answered.any(|got| got == wanted),
                    "{}: `{command}` does not answer {line:?}; it answered:\n{answer}",
                    file.display()
                );
            }
        }
    }
}
