//! Sign-in codes' texts, sent after the answer (so that the answer is the
//! same work for every number): so many at once per instance, each tried
//! again while Twilio is briefly unavailable and given up after a minute.
//! A server stopping gracefully waits a bounded while for the texts in
//! flight and counts those not sent as failed, in the log and the metrics.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::telemetry::SignInCodeCounts;

/// How long a code's text may take after the answer, waiting for its turn
/// and tries again included: past it, the text is given up (and logged).
pub const TEXT_WITHIN: Duration = Duration::from_secs(60);

/// The waits before trying a text again after Twilio was unavailable (a
/// 5xx, a 429, no connection: nothing was taken), well within
/// [`TEXT_WITHIN`].
const TRY_AGAIN_AFTER: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// What one try at a text came to.
pub enum Tried {
    /// Settled, with its outcome for the metrics (`sent`, `opted_out`,
    /// `refused`, `failed`; the try logged it).
    Settled(&'static str),
    /// Twilio was unavailable and took nothing: worth trying again.
    Unavailable(String),
}

/// One try at a text, made again while Twilio is unavailable.
pub type Attempt = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Tried> + Send>> + Send + Sync>;

/// The texts of sign-in codes of this instance.
pub struct CodeTexts {
    /// Turns to call Twilio: so many texts at once, the others wait theirs
    /// rather than opening as many calls.
    turns: Semaphore,
    /// The texts not settled yet, by a number of their own, with their
    /// destination: what a stopping server counts as failed.
    in_flight: Mutex<HashMap<u64, String>>,
    next_id: AtomicU64,
    /// Told each time a text settles (a stopping server waits on it).
    settled: Notify,
    /// Where the texts run: the thread that started the server, which
    /// outlives the HTTP workers (a worker's tasks end with it when the
    /// server stops).
    runner: actix_rt::ArbiterHandle,
    counts: Arc<SignInCodeCounts>,
}

impl CodeTexts {
    /// Texts that run on the current arbiter (the server's own thread),
    /// `at_once` at a time, counted into `counts`.
    pub fn new(at_once: usize, counts: Arc<SignInCodeCounts>) -> CodeTexts {
        CodeTexts {
            turns: Semaphore::new(at_once),
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            settled: Notify::new(),
            runner: actix_rt::Arbiter::current(),
            counts,
        }
    }

    fn in_flight(&self) -> MutexGuard<'_, HashMap<u64, String>> {
        // A panic elsewhere leaves the map as it was: still good to count.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a text to `country` after the answer: `attempt` is tried
    /// (again while Twilio is unavailable) within [`TEXT_WITHIN`]; what it
    /// came to is counted once.
    pub fn send(self: &Arc<Self>, country: String, attempt: Attempt) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.in_flight().insert(id, country.clone());
        let texts = Arc::clone(self);
        let running = self.runner.spawn(async move {
            let tries = texts.try_until_settled(&country, &attempt);
            let outcome = match actix_rt::time::timeout(TEXT_WITHIN, tries).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    tracing::error!(%country, "a sign-in code's text took too long: given up");
                    "failed"
                }
            };
            texts.settle(id, outcome);
        });
        if !running {
            tracing::error!("the server is stopping: a sign-in code was not texted");
            self.settle(id, "failed");
        }
    }

    async fn try_until_settled(&self, country: &str, attempt: &Attempt) -> &'static str {
        let mut waits = TRY_AGAIN_AFTER.iter();
        loop {
            let tried = {
                let Ok(_turn) = self.turns.acquire().await else {
                    return "failed";
                };
                attempt().await
            };
            match tried {
                Tried::Settled(outcome) => return outcome,
                Tried::Unavailable(detail) => match waits.next() {
                    Some(wait) => {
                        tracing::warn!(%country, %detail, "Twilio was unavailable for a sign-in code's text: trying again");
                        actix_rt::time::sleep(*wait).await;
                    }
                    None => {
                        tracing::error!(%country, %detail, "a sign-in code was not texted: Twilio stayed unavailable");
                        return "failed";
                    }
                },
            }
        }
    }

    /// Counts a text's outcome, unless a stopping server counted it
    /// already.
    fn settle(&self, id: u64, outcome: &'static str) {
        let settled = self.in_flight().remove(&id);
        if let Some(country) = settled {
            self.counts.count(&country, outcome);
        }
        self.settled.notify_one();
    }

    /// For a server that stops: waits up to `within` for the texts in
    /// flight, then counts those still not sent as failed and logs each.
    pub async fn finish(&self, within: Duration) {
        let waiting = self.in_flight().len();
        if waiting == 0 {
            return;
        }
        tracing::info!(
            waiting,
            "the server is stopping: waiting for sign-in codes' texts in flight"
        );
        let deadline = tokio::time::Instant::now() + within;
        while !self.in_flight().is_empty() {
            let settled = tokio::time::timeout_at(deadline, self.settled.notified()).await;
            if settled.is_err() {
                break;
            }
        }
        let left: Vec<String> = self
            .in_flight()
            .drain()
            .map(|(_, country)| country)
            .collect();
        for country in left {
            tracing::error!(%country, "a sign-in code was not texted before the server stopped: counted as failed");
            self.counts.count(&country, "failed");
        }
    }
}
