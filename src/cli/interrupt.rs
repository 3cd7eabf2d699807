//! What a command makes only while it runs (restore's copy of its backup,
//! a new SQLite database filled under another name before it is put in
//! place), removed if the command is stopped part-way: Ctrl-C (SIGINT) or
//! SIGTERM removes it, then ends the command as the signal would have
//! (exit 130 or 143). A command that ends any other way removes it itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// What is removed if a signal stops the command, each under its number.
static TO_REMOVE: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);
/// Whether the thread that waits for the signals was started.
static WATCHING: OnceLock<bool> = OnceLock::new();

/// While it lives, its path is removed if the command is stopped by a
/// signal; dropped, it is not (its owner removes it, or keeps it).
pub struct RemovedOnStop {
    number: u64,
}

impl Drop for RemovedOnStop {
    fn drop(&mut self) {
        TO_REMOVE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(number, _)| *number != self.number);
    }
}

/// Removes `path` (a directory with what it holds, or an SQLite file with
/// its log) if a signal stops the command while the answer lives.
pub fn remove_on_stop(path: &Path) -> RemovedOnStop {
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    TO_REMOVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((number, path.to_path_buf()));
    WATCHING.get_or_init(watch);
    RemovedOnStop { number }
}

/// Starts the thread that waits for SIGINT and SIGTERM; answers whether it
/// listens (when it cannot, the signals end the command as they would,
/// leaving what is registered behind).
fn watch() -> bool {
    let (ready, listening) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new()
        .name("stop-signals".to_string())
        .spawn(move || {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(runtime) = actix_rt::Runtime::new() else {
                let _ = ready.send(false);
                return;
            };
            let code = runtime.block_on(async move {
                let (Ok(mut interrupt), Ok(mut terminate)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) else {
                    let _ = ready.send(false);
                    return None;
                };
                let _ = ready.send(true);
                tokio::select! {
                    _ = interrupt.recv() => Some(130),
                    _ = terminate.recv() => Some(143),
                }
            });
            if let Some(code) = code {
                let removed = remove_all();
                if removed.is_empty() {
                    eprintln!("stopped; nothing it made while it ran was left to remove");
                } else {
                    eprintln!(
                        "stopped; removed what it made while it ran: {}",
                        removed.join(", ")
                    );
                }
                std::process::exit(code);
            }
        });
    started.is_ok() && listening.recv().unwrap_or(false)
}

/// Removes what is registered; answers what was there to remove.
fn remove_all() -> Vec<String> {
    let paths = std::mem::take(&mut *TO_REMOVE.lock().unwrap_or_else(PoisonError::into_inner));
    let mut removed = Vec::new();
    for (_, path) in paths {
        if path.is_dir() {
            if std::fs::remove_dir_all(&path).is_ok() {
                removed.push(path.display().to_string());
            }
            continue;
        }
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            if std::fs::remove_file(&file).is_ok() {
                removed.push(std::path::Path::new(&file).display().to_string());
            }
        }
    }
    removed
}
