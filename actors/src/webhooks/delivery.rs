//! The policy of a delivery: at least once, the same event id on every
//! try; waits that grow (about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, then every
//! 10 h) for three days, like Stripe's; `410 Gone` disables the endpoint at
//! once, and an endpoint that has failed for three days is disabled. A
//! try decides only while the delivery is still under its claim
//! ([`Attempted::claim`]); disabling an endpoint ends what it had not
//! taken yet ([`ENDED_DISABLED`]).

use serde::Serialize;

use super::endpoints::Endpoint;
use super::events::NewEvent;

const SECOND_MS: i64 = 1000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// The wait after each failed try, by number of tries; the last repeats.
pub const WAITS_MS: [i64; 6] = [
    5 * SECOND_MS,
    5 * MINUTE_MS,
    30 * MINUTE_MS,
    2 * HOUR_MS,
    5 * HOUR_MS,
    10 * HOUR_MS,
];

/// How long an event is tried, and how long an endpoint may fail before
/// it is disabled.
pub const GIVE_UP_AFTER_MS: i64 = 3 * 24 * HOUR_MS;

/// How long one try may take before it counts as failed.
pub const TIMEOUT_MS: i64 = 10 * SECOND_MS;

/// A delivery claimed by one worker, under a lease.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub id: i64,
    /// Tries so far, this one included.
    pub attempts: i64,
    pub event_id: String,
    pub event_type: String,
    /// The event's body, exactly as signed.
    pub payload: String,
    pub created_at_ms: i64,
    pub endpoint: Endpoint,
}

/// What one try came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TryResult {
    /// The endpoint answered with this status.
    Answered(u16),
    /// No answer: refused, reset, timed out, or a resolved address refused.
    NoAnswer(String),
}

/// What becomes of the delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Tried again from this moment.
    Retry {
        at_ms: i64,
    },
    /// Tried for three days: given up.
    GaveUp,
}

/// One try to record, with what it means for the delivery and endpoint.
#[derive(Debug)]
pub struct Attempted {
    pub delivery_id: i64,
    /// The claim the try was made under: the delivery's number of tries
    /// when it was claimed ([`ClaimedDelivery::attempts`]). Only while the
    /// delivery is still under that claim does the try decide anything.
    pub claim: i64,
    pub endpoint_id: String,
    pub at_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub outcome: DeliveryOutcome,
    /// The endpoint is disabled, for this reason, with the event that
    /// tells the other endpoints.
    pub disable: Option<(String, NewEvent)>,
}

/// How a try's record was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TryRecorded {
    /// The delivery was still under the try's claim: its outcome decided
    /// the delivery and the endpoint.
    Applied,
    /// The claim was no longer the try's (its lease ran out and another
    /// claim took the delivery, or the delivery was ended): the try is
    /// listed among the endpoint's tries, and changed nothing else.
    Late,
}

/// What an operation that only an enabled endpoint takes came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForEnabled<T> {
    Done(T),
    /// The endpoint is disabled: nothing was made.
    Disabled,
    NotFound,
}

/// Why a delivery ended without being made, as its endpoint's deliveries
/// list shows it: the endpoint was disabled (by the admin, or by the
/// server after a `410 Gone` or three days of failures).
pub const ENDED_DISABLED: &str = "not sent: the endpoint was disabled";

/// Decides what a try means.
pub fn decide(delivery: &ClaimedDelivery, result: &TryResult, now_ms: i64) -> DecidedTry {
    let ok = matches!(result, TryResult::Answered(status) if (200..300).contains(status));
    if ok {
        return DecidedTry {
            outcome: DeliveryOutcome::Delivered,
            disable: None,
        };
    }
    if matches!(result, TryResult::Answered(410)) {
        return DecidedTry {
            outcome: DeliveryOutcome::GaveUp,
            disable: Some("the endpoint answered 410 Gone".into()),
        };
    }
    let failing_since = delivery.endpoint.failing_since_ms.unwrap_or(now_ms);
    let next = next_attempt(delivery.attempts, delivery.created_at_ms, now_ms);
    // Failing for three days: by the clock, or because this delivery was
    // tried for its three days and nothing reached the endpoint meanwhile.
    let failing_for_days = now_ms - failing_since >= GIVE_UP_AFTER_MS
        || (next.is_none() && failing_since <= delivery.created_at_ms);
    let disable = failing_for_days.then(|| "every delivery failed for three days".to_string());
    let outcome = match next {
        Some(at_ms) if disable.is_none() => DeliveryOutcome::Retry { at_ms },
        _ => DeliveryOutcome::GaveUp,
    };
    DecidedTry { outcome, disable }
}

/// [`decide`]'s answer.
#[derive(Debug, PartialEq, Eq)]
pub struct DecidedTry {
    pub outcome: DeliveryOutcome,
    pub disable: Option<String>,
}

/// When to try again after `attempts` failed tries of a delivery made at
/// `created_at_ms`; `None` once three days have passed.
pub fn next_attempt(attempts: i64, created_at_ms: i64, now_ms: i64) -> Option<i64> {
    // `attempts` counts the try just made, so it is at least 1; the waits
    // are by that count, the last one repeating.
    let tries = attempts.clamp(1, WAITS_MS.len() as i64);
    let index = (tries - 1) as usize;
    let at_ms = now_ms + WAITS_MS[index];
    (at_ms - created_at_ms <= GIVE_UP_AFTER_MS).then_some(at_ms)
}

/// One try, as the admin reads it.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptRecord {
    pub event_id: String,
    pub event_type: String,
    #[serde(rename = "at", serialize_with = "crate::clock::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at_ms: i64,
    /// The endpoint's status code, when it answered.
    pub status_code: Option<u16>,
    /// Why there was no good answer (never the endpoint's body).
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// What one pass of pruning removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Deliveries made or ended before the cut, with their tries.
    pub deliveries: usize,
    /// Events from before the cut that no delivery needs any more.
    pub events: usize,
}

/// The deliveries not yet made, for metrics.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct DeliveryStats {
    pub pending: i64,
    /// When the oldest pending delivery was made.
    pub oldest_pending_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_then_stop_after_three_days() {
        assert_eq!(next_attempt(1, 0, 0), Some(5_000));
        assert_eq!(next_attempt(2, 0, 5_000), Some(5_000 + 300_000));
        assert_eq!(next_attempt(6, 0, 0), Some(10 * HOUR_MS));
        assert_eq!(next_attempt(40, 0, 0), Some(10 * HOUR_MS));
        assert_eq!(next_attempt(9, 0, GIVE_UP_AFTER_MS - HOUR_MS), None);
        let mut now = 0;
        let mut tries = 0;
        while let Some(at) = next_attempt(tries + 1, 0, now) {
            tries += 1;
            now = at;
        }
        // The 11 waits: 5 s, 5 min, 30 min, 2 h, 5 h, then 10 h six times
        // (67 h 35 min 5 s in all); a twelfth try would be past 72 h.
        assert_eq!(tries, 11);
        assert_eq!(now, 67 * HOUR_MS + 35 * MINUTE_MS + 5 * SECOND_MS);
    }
}
