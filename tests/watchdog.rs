//! Makes a hung test fail instead of hanging the run: every test that
//! starts a server or opens a test database is watched from then on, and
//! one still running after `SMS_CREDIT_TEST_TIMEOUT_SECS` (300 by default)
//! ends the whole test binary, naming the test. A hung test would
//! otherwise cost a CI run its whole time limit and say nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How long one test may run.
fn limit() -> Duration {
    let seconds = std::env::var("SMS_CREDIT_TEST_TIMEOUT_SECS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(seconds)
}

/// A watched test: its name, when it started and how long it may run.
type Running = (String, Instant, Duration);

/// The tests being watched.
fn running() -> &'static Mutex<HashMap<u64, Running>> {
    static RUNNING: OnceLock<Mutex<HashMap<u64, Running>>> = OnceLock::new();
    RUNNING.get_or_init(|| {
        std::thread::Builder::new()
            .name("test watchdog".to_string())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                let over = running()
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .find(|(_, started, limit)| started.elapsed() > *limit)
                    .cloned();
                if let Some((name, _, limit)) = over {
                    // Written to the process's stderr itself: this thread was
                    // started by a test, and `eprintln!` would go to that
                    // test's captured output, lost with the exit.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "\ntest {name} is still running after {} s: it waits on something \
                         without a bound. Ending the test run here (the other tests' results \
                         are lost; run that test alone to see where it waits).",
                        limit.as_secs()
                    );
                    std::process::exit(101);
                }
            })
            .expect("the watchdog thread starts");
        Mutex::new(HashMap::new())
    })
}

/// The watch on the current test; ends with its thread (libtest runs each
/// test on a thread of its own).
struct Watched(u64);

impl Drop for Watched {
    fn drop(&mut self) {
        running()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

thread_local! {
    static WATCHED: RefCell<Option<Watched>> = const { RefCell::new(None) };
}

/// Watches the test running on this thread (once; later calls do nothing).
pub fn watch() {
    watch_for(limit());
}

/// Watches the test running on this thread, which may run `times` as long
/// as a test may (one that does a great deal of work on purpose: its bound
/// is still a bound), also when it is watched already.
pub fn watch_longer(times: u32) {
    let longer = limit() * times;
    watch_for(longer);
    WATCHED.with(|watched| {
        if let Some(Watched(id)) = &*watched.borrow() {
            if let Some(entry) = running()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(id)
            {
                entry.2 = longer;
            }
        }
    });
}

fn watch_for(limit: Duration) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    WATCHED.with(|watched| {
        let mut watched = watched.borrow_mut();
        if watched.is_none() {
            let id = NEXT.fetch_add(1, Ordering::Relaxed);
            // libtest names each test's thread after the test; a thread it
            // did not make is still watched, under a plain name.
            let name = std::thread::current()
                .name()
                .unwrap_or("(a test)")
                .to_string();
            running()
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, (name, Instant::now(), limit));
            *watched = Some(Watched(id));
        }
    });
}
