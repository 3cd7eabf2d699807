//! The README's quick start, run as it stands: every command of its block,
//! in an empty directory, against the real binary (on a free port instead
//! of 8080), so the README cannot drift from what the server does.

use std::process::Command;

const README: &str = include_str!("../README.md");
const MARKER: &str = "<!-- quick-start";

/// The shell block after the quick-start marker.
fn quick_start() -> &'static str {
    let after = &README[README.find(MARKER).expect("the README has a quick start")..];
    let start = after.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
    let end = after[start..].find("\n```").expect("the block ends");
    &after[start..start + end]
}

#[test]
fn the_readme_quick_start_runs_as_written() {
    let script = quick_start();
    assert!(script.contains("127.0.0.1:8080"), "{script}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let script = script.replace("127.0.0.1:8080", &address);
    let directory = tempfile::tempdir().unwrap();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_sms-credit"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("timeout")
        .args(["120", "sh", "-e", "-c", &script])
        .current_dir(directory.path())
        .env("PATH", path)
        .env("SMS_CREDIT_BIND", &address)
        .env_remove("SMS_CREDIT_DATABASE")
        .env_remove("SMS_CREDIT_CONFIG")
        .env_remove("SMS_CREDIT_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the quick start failed:\n{stdout}\n{stderr}"
    );
    for expected in [
        "account 1: token sct_",
        "\"balance_micros\":7500000",
        "\"segments\":1",
        "balance $7.50",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected} missing in:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        directory.path().join("sms-credit.db").exists(),
        "the database is ./sms-credit.db"
    );
}
