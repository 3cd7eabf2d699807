//! Auto top-up: when a debit leaves an account's balance below the
//! threshold its holder chose, one off-session charge of the amount they
//! chose, within their monthly cap (calendar month, UTC).
//!
//! Who decides what: the account actor notices that a committed debit left
//! the balance low (its state serializes the account, so a burst of debits
//! asks once) and asks through [`AutoTriggers`]; the database decides
//! whether an attempt starts (at most one in flight per account, by a
//! unique index; the cap; the wait after a failure; a saved card); a worker
//! claims started attempts and charges them with a Stripe Idempotency-Key
//! made from the account and the attempt's own number, so that a retry, a
//! crash or another instance never charges twice, and the credit is keyed
//! by the PaymentIntent as every credit is.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::accounts::{card_words, Account, AccountStatus, Card};
use crate::clock::{civil_from_days, days_from_civil, DAY_MS};
use crate::ledger::AccountId;
use crate::messaging::notices::{AutoTopUpNotice, NewNotice, NoticeError, NoticeKind};
use crate::money::Money;
use crate::webhooks::NewEvent;

use super::BillingError;

/// The threshold when auto top-up is first turned on.
pub const DEFAULT_THRESHOLD: Money = Money::from_micros(2_000_000);
/// The amount charged each time, when first turned on; also the least.
pub const DEFAULT_AMOUNT: Money = Money::from_micros(10_000_000);
/// The monthly cap when first turned on.
pub const DEFAULT_CAP: Money = Money::from_micros(50_000_000);
/// The smallest amount an auto top-up may charge.
pub const MINIMUM_AMOUNT: Money = DEFAULT_AMOUNT;
/// The largest amount, threshold or cap accepted ($10 000).
const MAXIMUM: Money = Money::from_micros(10_000_000_000);

/// Where the holder turned it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConsentVia {
    Web,
    Sms,
    Api,
    Admin,
}

impl ConsentVia {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentVia::Web => "web",
            ConsentVia::Sms => "sms",
            ConsentVia::Api => "api",
            ConsentVia::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<ConsentVia> {
        match text {
            "web" => Some(ConsentVia::Web),
            "sms" => Some(ConsentVia::Sms),
            "api" => Some(ConsentVia::Api),
            "admin" => Some(ConsentVia::Admin),
            _ => None,
        }
    }
}

/// The holder's consent: when, through what, and the words they saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Consent {
    #[serde(rename = "at", serialize_with = "crate::clock::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at_ms: i64,
    pub via: ConsentVia,
    pub text: String,
}

/// An account's auto top-up setting, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoTopUpSettings {
    pub account_id: AccountId,
    pub enabled: bool,
    pub threshold: Money,
    pub amount: Money,
    pub monthly_cap: Money,
    /// The last turning on.
    pub consent: Option<Consent>,
    pub consecutive_failures: i64,
    /// No attempt starts before this (the wait after a failure).
    pub not_before_ms: i64,
    /// Why it turned itself off, if it did.
    pub paused_reason: Option<String>,
    pub updated_at_ms: i64,
}

impl AutoTopUpSettings {
    /// What an account that never turned it on has.
    pub fn off(account_id: AccountId) -> AutoTopUpSettings {
        AutoTopUpSettings {
            account_id,
            enabled: false,
            threshold: DEFAULT_THRESHOLD,
            amount: DEFAULT_AMOUNT,
            monthly_cap: DEFAULT_CAP,
            consent: None,
            consecutive_failures: 0,
            not_before_ms: 0,
            paused_reason: None,
            updated_at_ms: 0,
        }
    }
}

/// Where an attempt stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Started; not yet sent to Stripe.
    Pending,
    /// Sent to Stripe (or about to be) under a worker's lease.
    Charging,
    /// Stripe accepted it; its webhook will say how it ended.
    Processing,
    Succeeded,
    Declined,
    AuthenticationRequired,
    /// Stripe refused it for another reason.
    Failed,
    /// Its key was too old to send again, and Stripe, asked, had no charge
    /// for it: closed as not charged.
    NotCharged,
    /// Neither sent again nor confirmed with Stripe for longer than the
    /// configured time: never charged blind, left for the operator.
    Unknown,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Pending => "pending",
            AttemptStatus::Charging => "charging",
            AttemptStatus::Processing => "processing",
            AttemptStatus::Succeeded => "succeeded",
            AttemptStatus::Declined => "declined",
            AttemptStatus::AuthenticationRequired => "authentication_required",
            AttemptStatus::Failed => "failed",
            AttemptStatus::NotCharged => "not_charged",
            AttemptStatus::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<AttemptStatus> {
        match text {
            "pending" => Some(AttemptStatus::Pending),
            "charging" => Some(AttemptStatus::Charging),
            "processing" => Some(AttemptStatus::Processing),
            "succeeded" => Some(AttemptStatus::Succeeded),
            "declined" => Some(AttemptStatus::Declined),
            "authentication_required" => Some(AttemptStatus::AuthenticationRequired),
            "failed" => Some(AttemptStatus::Failed),
            "not_charged" => Some(AttemptStatus::NotCharged),
            "unknown" => Some(AttemptStatus::Unknown),
            _ => None,
        }
    }
}

/// One auto top-up attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoTopUpAttempt {
    pub id: i64,
    pub account_id: AccountId,
    /// The account's attempts are numbered 1, 2, …: the number is in the
    /// Stripe Idempotency-Key.
    pub n: i64,
    pub amount: Money,
    /// `YYYY-MM` (UTC) it counts toward.
    pub month: String,
    pub status: AttemptStatus,
    pub reason: Option<String>,
    pub order_id: Option<i64>,
    pub payment_intent_id: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The number of its last claim (0: never claimed): a worker renews
    /// the lease, sends the charge and puts it off only under its own.
    pub claim: i64,
}

impl AutoTopUpAttempt {
    /// The key of its order, and (prefixed) of its Stripe charge.
    pub fn charge_key(&self) -> String {
        format!("auto-top-up-{}-{}", self.account_id, self.n)
    }
}

/// Why an attempt did not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotStarted {
    Off,
    NoSavedCard,
    /// The balance is at or above the threshold.
    BalanceAbove,
    InFlight,
    /// Waiting after a failure until then.
    Waiting(i64),
    /// This month's charges would pass the cap.
    CapReached,
}

/// What asking for an attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    Started(AutoTopUpAttempt),
    NotStarted(NotStarted),
}

/// A change of the setting, checked, to store.
#[derive(Clone, Debug)]
pub struct SettingChange {
    pub account_id: AccountId,
    pub enabled: bool,
    pub threshold: Money,
    pub amount: Money,
    pub monthly_cap: Money,
    /// Recorded when it is turned on.
    pub consent: Option<Consent>,
    pub now_ms: i64,
}

/// What a holder (or admin) asks to change; absent fields keep their value.
#[derive(Clone, Debug, Default)]
pub struct SettingRequest {
    pub enabled: Option<bool>,
    pub threshold: Option<Money>,
    pub amount: Option<Money>,
    pub monthly_cap: Option<Money>,
}

/// What happens to the setting when an attempt ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterAttempt {
    /// Paid: the failure count goes back to zero.
    Success,
    /// One more failure: wait until `not_before_ms`, or turn off.
    Failure {
        not_before_ms: i64,
        turn_off: Option<String>,
    },
}

/// An attempt's end, with what it does to the setting and the notice to
/// send, in one transaction.
#[derive(Clone, Debug)]
pub struct AttemptEnd {
    pub attempt_id: i64,
    pub status: AttemptStatus,
    pub reason: Option<String>,
    pub payment_intent_id: Option<String>,
    /// The worker's claim the end is written under: it counts only while
    /// that claim is still the attempt's last (a worker whose lease ran out
    /// and whose attempt another claimed ends nothing). `None`: an end
    /// Stripe's event decided, which counts whoever holds the claim.
    pub claim: Option<i64>,
    pub after: AfterAttempt,
    pub notices: Vec<NewNotice>,
    /// Webhook events of the end (`auto_top_up.failed`, `…disabled`),
    /// committed with it.
    pub events: Vec<NewEvent>,
    pub now_ms: i64,
}

/// The operator's rules: the waits after the 1st, 2nd, … failure in a row,
/// and after how many it turns itself off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoTopUpPolicy {
    pub backoff: Vec<Duration>,
    pub max_failures: u32,
    /// How long a worker may take to hear from Stripe before another
    /// worker tries the attempt again (with the same key).
    pub lease: Duration,
    /// How long an attempt may stay undecided (Stripe neither answering
    /// the charge nor saying what became of it) before it is marked
    /// `unknown` and auto top-up is turned off: never charged blind.
    pub undecided_after: Duration,
}

impl Default for AutoTopUpPolicy {
    fn default() -> AutoTopUpPolicy {
        AutoTopUpPolicy {
            backoff: vec![
                Duration::from_secs(3_600),
                Duration::from_secs(6 * 3_600),
                Duration::from_secs(24 * 3_600),
            ],
            max_failures: 3,
            lease: Duration::from_secs(60),
            undecided_after: Duration::from_secs(3 * 86_400),
        }
    }
}

impl AutoTopUpPolicy {
    /// The wait after the `failures`th failure in a row (the last wait
    /// repeats).
    pub fn wait_after(&self, failures: i64) -> Duration {
        let index = usize::try_from(failures.max(1) - 1).unwrap_or(0);
        self.backoff
            .get(index)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::ZERO)
    }
}

/// The words a holder agrees to when turning it on.
pub fn consent_text(threshold: Money, amount: Money, cap: Money, card: Option<&Card>) -> String {
    format!(
        "When my SMS credit falls below {threshold}, charge {amount} to my {} \
         (at most {cap} a calendar month). I can turn this off at any time, \
         on the web or by texting AUTO OFF.",
        card_words(card)
    )
}

fn whole_cents(name: &str, amount: Money) -> Result<(), BillingError> {
    if !amount.is_positive() {
        return Err(BillingError::Invalid(format!("{name} must be positive")));
    }
    if amount.micros() % 10_000 != 0 {
        return Err(BillingError::Invalid(format!("{name} must be whole cents")));
    }
    if amount > MAXIMUM {
        return Err(BillingError::Invalid(format!(
            "{name} may be at most {MAXIMUM}"
        )));
    }
    Ok(())
}

/// Checks a request against the current setting and the account: the
/// change to store, or why not (nothing changes).
pub fn check_change(
    current: &AutoTopUpSettings,
    request: &SettingRequest,
    account: &Account,
    via: ConsentVia,
    now_ms: i64,
) -> Result<SettingChange, BillingError> {
    let enabled = request.enabled.unwrap_or(current.enabled);
    let threshold = request.threshold.unwrap_or(current.threshold);
    let amount = request.amount.unwrap_or(current.amount);
    let monthly_cap = request.monthly_cap.unwrap_or(current.monthly_cap);
    whole_cents("threshold", threshold)?;
    whole_cents("amount", amount)?;
    whole_cents("monthly_cap", monthly_cap)?;
    if amount.micros() % 1_000_000 != 0 {
        return Err(BillingError::Invalid(
            "amount must be whole dollars".to_string(),
        ));
    }
    if amount < MINIMUM_AMOUNT {
        return Err(BillingError::Invalid(format!(
            "amount must be at least {MINIMUM_AMOUNT}"
        )));
    }
    if monthly_cap < amount {
        return Err(BillingError::Invalid(format!(
            "monthly_cap ({monthly_cap}) must be at least the amount ({amount})"
        )));
    }
    if enabled {
        if account.status != AccountStatus::Active {
            return Err(BillingError::NotActive(account.id));
        }
        if account.stripe_payment_method_id.is_none() {
            return Err(BillingError::NoSavedCard);
        }
    }
    let terms_changed = threshold != current.threshold
        || amount != current.amount
        || monthly_cap != current.monthly_cap;
    let consent = (enabled && (!current.enabled || terms_changed)).then(|| Consent {
        at_ms: now_ms,
        via,
        text: consent_text(threshold, amount, monthly_cap, account.card.as_ref()),
    });
    Ok(SettingChange {
        account_id: account.id,
        enabled,
        threshold,
        amount,
        monthly_cap,
        consent,
        now_ms,
    })
}

/// The UTC calendar month of a time: (year, month 1–12).
pub fn year_month(now_ms: i64) -> (i64, i64) {
    let (year, month, _) = civil_from_days(now_ms.div_euclid(DAY_MS));
    (year, month)
}

/// `YYYY-MM` of a time (UTC).
pub fn month_key(now_ms: i64) -> String {
    let (year, month) = year_month(now_ms);
    format!("{year:04}-{month:02}")
}

/// The first millisecond of the next UTC month.
pub fn next_month_start_ms(now_ms: i64) -> i64 {
    let (year, month) = year_month(now_ms);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    days_from_civil(year, month, 1) * DAY_MS
}

/// Per account with auto top-up on: the threshold, and whether an attempt
/// has been asked for (and until when none will start).
#[derive(Clone, Copy, Debug)]
struct Trigger {
    threshold: Money,
    asked: bool,
    not_before_ms: i64,
}

/// What the account actors consult after each committed debit: the
/// accounts with auto top-up on (a cache of the settings, refreshed by the
/// worker), and the channel on which they ask for an attempt. Only the
/// accounts that turned it on take room here.
pub struct AutoTriggers {
    triggers: DashMap<AccountId, Trigger>,
    requests: mpsc::UnboundedSender<AccountId>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<AccountId>>>,
}

impl AutoTriggers {
    pub fn new() -> Arc<AutoTriggers> {
        let (requests, receiver) = mpsc::unbounded_channel();
        Arc::new(AutoTriggers {
            triggers: DashMap::new(),
            requests,
            receiver: Mutex::new(Some(receiver)),
        })
    }

    /// The requests, for the one worker that serves them.
    pub fn take_requests(&self) -> Option<mpsc::UnboundedReceiver<AccountId>> {
        self.receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Follows a setting: on with its threshold and wait, or off.
    pub fn follow(&self, settings: &AutoTopUpSettings) {
        if settings.enabled {
            let mut entry = self.triggers.entry(settings.account_id).or_insert(Trigger {
                threshold: settings.threshold,
                asked: false,
                not_before_ms: settings.not_before_ms,
            });
            entry.threshold = settings.threshold;
            entry.not_before_ms = settings.not_before_ms;
        } else {
            self.triggers.remove(&settings.account_id);
        }
    }

    /// Replaces every trigger with the settings read from the store (other
    /// instances' changes arrive this way), keeping what was asked.
    pub fn refresh(&self, enabled: &[(AccountId, Money, i64)]) {
        let keep: std::collections::HashSet<AccountId> = enabled
            .iter()
            .map(|(account_id, _, _)| *account_id)
            .collect();
        self.triggers
            .retain(|account_id, _| keep.contains(account_id));
        for (account_id, threshold, not_before_ms) in enabled {
            let mut entry = self.triggers.entry(*account_id).or_insert(Trigger {
                threshold: *threshold,
                asked: false,
                not_before_ms: *not_before_ms,
            });
            entry.threshold = *threshold;
            entry.not_before_ms = *not_before_ms;
        }
    }

    /// Whether a debit leaving `balance` would ask for an attempt now.
    pub fn would_ask(&self, account_id: AccountId, balance: Money, now_ms: i64) -> bool {
        self.triggers.get(&account_id).is_some_and(|trigger| {
            !trigger.asked && balance < trigger.threshold && now_ms >= trigger.not_before_ms
        })
    }

    /// After a committed debit left `balance`: asks for an attempt if one
    /// is due and none has been asked for. Answers whether it asked.
    pub fn ask(&self, account_id: AccountId, balance: Money, now_ms: i64) -> bool {
        let Some(mut trigger) = self.triggers.get_mut(&account_id) else {
            return false;
        };
        if trigger.asked || balance >= trigger.threshold || now_ms < trigger.not_before_ms {
            return false;
        }
        trigger.asked = true;
        drop(trigger);
        self.requests.send(account_id).is_ok()
    }

    /// An attempt ended, or did not start: the next low debit may ask
    /// again, from `not_before_ms`.
    pub fn settled(&self, account_id: AccountId, not_before_ms: i64) {
        if let Some(mut trigger) = self.triggers.get_mut(&account_id) {
            trigger.asked = false;
            trigger.not_before_ms = not_before_ms;
        }
    }

    /// An attempt is in flight (started by another instance, say).
    pub fn in_flight(&self, account_id: AccountId) {
        if let Some(mut trigger) = self.triggers.get_mut(&account_id) {
            trigger.asked = true;
        }
    }
}

/// A notice about an attempt (once per attempt and kind of news).
pub fn attempt_notice(
    attempt: &AutoTopUpAttempt,
    event: AutoTopUpNotice,
    now_ms: i64,
) -> Result<NewNotice, NoticeError> {
    let what = match &event {
        AutoTopUpNotice::TurnedOff { .. } => "off",
        _ => "failed",
    };
    NewNotice::new(
        attempt.account_id,
        NoticeKind::AutoTopUp { event },
        format!("auto-top-up-{what}:{}:{}", attempt.account_id, attempt.n),
        now_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_utc_calendar_months() {
        // 2026-11-23T12:00:00Z
        let now = 1_795_435_200_000;
        assert_eq!(month_key(now), "2026-11");
        assert_eq!(next_month_start_ms(now), 1_796_083_200_000); // 2026-12-01
        assert_eq!(month_key(1_796_083_200_000 - 1), "2026-11");
        assert_eq!(month_key(1_796_083_200_000), "2026-12");
        // December rolls over into January.
        assert_eq!(month_key(next_month_start_ms(1_796_083_200_000)), "2027-01");
        assert_eq!(month_key(0), "1970-01");
        // 2024-02-29 (a leap day) is in February.
        assert_eq!(month_key(1_709_164_800_000), "2024-02");
    }

    fn account(status: AccountStatus, card: bool) -> Account {
        Account {
            id: AccountId(3),
            phone: crate::accounts::PhoneNumber::parse("+14155550100").unwrap(),
            email: None,
            stripe_customer_id: Some("cus_1".into()),
            status,
            created_at_ms: 0,
            balance: Money::ZERO,
            seq: 0,
            low_balance_warned_at_ms: None,
            stripe_payment_method_id: card.then(|| "pm_1".to_string()),
            card: None,
            opt_out: None,
        }
    }

    #[test]
    fn turning_on_needs_an_active_account_with_a_card_and_sane_terms() {
        let current = AutoTopUpSettings::off(AccountId(3));
        let on = SettingRequest {
            enabled: Some(true),
            ..SettingRequest::default()
        };
        let active = account(AccountStatus::Active, true);
        let change = check_change(&current, &on, &active, ConsentVia::Web, 5).unwrap();
        assert_eq!(
            (
                change.enabled,
                change.amount,
                change.consent.map(|c| c.at_ms)
            ),
            (true, DEFAULT_AMOUNT, Some(5))
        );
        assert_eq!(
            check_change(
                &current,
                &on,
                &account(AccountStatus::Pending, true),
                ConsentVia::Web,
                5
            )
            .unwrap_err(),
            BillingError::NotActive(AccountId(3))
        );
        assert_eq!(
            check_change(
                &current,
                &on,
                &account(AccountStatus::Active, false),
                ConsentVia::Web,
                5
            )
            .unwrap_err(),
            BillingError::NoSavedCard
        );
        // Turning off needs nothing, and records no consent.
        let off = SettingRequest {
            enabled: Some(false),
            ..SettingRequest::default()
        };
        let change = check_change(
            &current,
            &off,
            &account(AccountStatus::Pending, false),
            ConsentVia::Sms,
            5,
        )
        .unwrap();
        assert!(!change.enabled && change.consent.is_none());
    }

    #[test]
    fn waits_grow_then_repeat() {
        let policy = AutoTopUpPolicy::default();
        assert_eq!(policy.wait_after(1), Duration::from_secs(3_600));
        assert_eq!(policy.wait_after(2), Duration::from_secs(6 * 3_600));
        assert_eq!(policy.wait_after(3), Duration::from_secs(24 * 3_600));
        assert_eq!(policy.wait_after(9), Duration::from_secs(24 * 3_600));
    }

    #[test]
    fn a_burst_asks_once() {
        let triggers = AutoTriggers::new();
        let mut requests = triggers.take_requests().unwrap();
        let account = AccountId(7);
        let mut settings = AutoTopUpSettings::off(account);
        settings.enabled = true;
        triggers.follow(&settings);
        let low = Money::from_micros(1_000_000);
        assert!(!triggers.ask(account, Money::from_micros(3_000_000), 0));
        assert!(triggers.would_ask(account, low, 0));
        assert!(triggers.ask(account, low, 0));
        for _ in 0..100 {
            assert!(!triggers.ask(account, low, 0));
        }
        assert_eq!(requests.try_recv().ok(), Some(account));
        assert!(requests.try_recv().is_err());
        triggers.settled(account, 1_000);
        assert!(!triggers.ask(account, low, 999));
        assert!(triggers.ask(account, low, 1_000));
    }
}
