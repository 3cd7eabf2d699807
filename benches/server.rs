//! The release server binary as a child process for the HTTP benchmarks:
//! started on a free port with a database and settings, its log drained.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

/// A running `sms-credit serve`; killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts the server on `database` with `env` set (the admin token and
    /// whatever the benchmark needs), and waits until it listens.
    pub fn start(database: &str, env: &[(&str, &str)]) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sms-credit"));
        command
            .arg("serve")
            .env("SMS_CREDIT_DATABASE", database)
            .env("SMS_CREDIT_BIND", "127.0.0.1:0")
            .env("RUST_LOG", "warn,sms_credit::startup=info")
            .env("NO_COLOR", "1")
            .env_remove("SMS_CREDIT_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = std::io::BufReader::new(stderr).lines();
        let port: u16 = loop {
            let line = lines.next().expect("the server starts").unwrap();
            if let Some(rest) = line.split("port=").nth(1) {
                break rest
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
