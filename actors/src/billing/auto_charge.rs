//! The running of auto top-ups: starting an attempt when an account actor
//! asks, charging claimed attempts, ending them (with the wait, the
//! turning off and the notices failures bring), the card's end, and the
//! setting as holders and admins see and change it.

use serde::Serialize;

use super::auto_top_up::{
    attempt_notice, check_change, consent_text, month_key, next_month_start_ms, AfterAttempt,
    AttemptEnd, AttemptStatus, AutoTopUpAttempt, AutoTopUpSettings, Begin, Consent, ConsentVia,
    NotStarted, SettingRequest,
};
use super::checkout::{Billing, ChargeFailure, ChargeResult};
use super::orders::OrderType;
use super::BillingError;

/// What an attempt Stripe did not answer about shows (Stripe's words, and
/// what the request met, go to the log).
const NOT_ANSWERED: &str = "Stripe did not answer; the charge is asked again with the same key";
use crate::accounts::Card;
use crate::ledger::AccountId;
use crate::messaging::notices::{AutoTopUpNotice, NoticeKind};
use crate::store::{Store, StoreError};
use crate::webhooks::events::{auto_top_up_disabled, auto_top_up_failed, DisabledBecause};

/// Attempts charged per round (each claimed when its turn comes).
const ATTEMPTS_PER_ROUND: usize = 20;
/// Accounts the sweep starts attempts for per round.
const DUE_PER_SWEEP: i64 = 1_000;
/// Attempts shown with the setting.
const ATTEMPTS_SHOWN: i64 = 10;

/// The setting as holders and admins see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoTopUpView {
    pub enabled: bool,
    pub threshold_micros: i64,
    pub amount_micros: i64,
    pub monthly_cap_micros: i64,
    /// The saved card, or null.
    pub card: Option<Card>,
    /// The last turning on.
    pub consent: Option<Consent>,
    /// What auto top-ups have charged (or are charging) this month, UTC.
    pub month_charged_micros: i64,
    pub consecutive_failures: i64,
    /// Why it turned itself off, if it did.
    pub paused_reason: Option<String>,
    /// The latest first.
    pub attempts: Vec<AttemptView>,
    /// The words turning it on with these values agrees to (recorded as
    /// the consent when it is turned on).
    pub terms: String,
}

/// One attempt as holders and admins see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    /// When it started.
    #[serde(rename = "at", serialize_with = "crate::clock::rfc3339::serialize")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at_ms: i64,
    pub amount_micros: i64,
    pub status: AttemptStatus,
    pub reason: Option<String>,
}

impl From<&AutoTopUpAttempt> for AttemptView {
    fn from(attempt: &AutoTopUpAttempt) -> AttemptView {
        AttemptView {
            at_ms: attempt.created_at_ms,
            amount_micros: attempt.amount.micros(),
            status: attempt.status,
            reason: attempt.reason.clone(),
        }
    }
}

/// The account, and its setting (off with the defaults if never set).
async fn account_and_setting(
    store: &Store,
    account_id: AccountId,
) -> Result<(crate::accounts::Account, AutoTopUpSettings), BillingError> {
    let account = store
        .accounts()
        .get(account_id)
        .await?
        .ok_or(BillingError::AccountNotFound(account_id))?;
    let settings = store
        .auto_top_up()
        .auto_settings(account_id)
        .await?
        .unwrap_or_else(|| AutoTopUpSettings::off(account_id));
    Ok((account, settings))
}

/// The account's setting, card, month and last attempts (also for the
/// command line, which has no Stripe).
pub async fn view(
    store: &Store,
    account_id: AccountId,
    now_ms: i64,
) -> Result<AutoTopUpView, BillingError> {
    // The attempts first: an attempt's end and what it does to the setting
    // commit together, so the setting read after them is at least as new,
    // and the view never shows an ended attempt beside the setting before it.
    let auto = store.auto_top_up();
    let attempts = auto.auto_top_ups_of(account_id, ATTEMPTS_SHOWN).await?;
    let (account, settings) = account_and_setting(store, account_id).await?;
    let month_charged = auto.month_charged(account_id, month_key(now_ms)).await?;
    Ok(AutoTopUpView {
        enabled: settings.enabled,
        threshold_micros: settings.threshold.micros(),
        amount_micros: settings.amount.micros(),
        monthly_cap_micros: settings.monthly_cap.micros(),
        card: account
            .stripe_payment_method_id
            .as_ref()
            .and(account.card.clone()),
        consent: settings.consent,
        month_charged_micros: month_charged.micros(),
        consecutive_failures: settings.consecutive_failures,
        paused_reason: settings.paused_reason,
        attempts: attempts.iter().map(AttemptView::from).collect(),
        terms: consent_text(
            settings.threshold,
            settings.amount,
            settings.monthly_cap,
            account.card.as_ref(),
        ),
    })
}

/// Checks and stores a change of the setting; answers the account and the
/// setting stored. (A running server's account actors learn of it at
/// once when it made the change, else from the change note it leaves.)
pub async fn change(
    store: &Store,
    account_id: AccountId,
    request: SettingRequest,
    via: ConsentVia,
    now_ms: i64,
) -> Result<(crate::accounts::Account, AutoTopUpSettings), BillingError> {
    let (account, current) = account_and_setting(store, account_id).await?;
    let checked = check_change(&current, &request, &account, via, now_ms)?;
    let settings = store.auto_top_up().set_auto_settings(checked).await?;
    Ok((account, settings))
}

impl Billing {
    /// The account's setting, card, month and last attempts.
    pub async fn auto_top_up_view(
        &self,
        account_id: AccountId,
        now_ms: i64,
    ) -> Result<AutoTopUpView, BillingError> {
        view(&self.store, account_id, now_ms).await
    }

    /// Changes the setting (turning it on records the consent); refuses
    /// what cannot be (nothing changes). Turned on below the threshold, it
    /// starts a top-up at once.
    pub async fn set_auto_top_up(
        &self,
        account_id: AccountId,
        request: SettingRequest,
        via: ConsentVia,
        now_ms: i64,
    ) -> Result<AutoTopUpSettings, BillingError> {
        let (account, settings) = change(&self.store, account_id, request, via, now_ms).await?;
        let triggers = self.registry.auto_triggers();
        triggers.follow(&settings);
        if settings.enabled && account.balance < settings.threshold {
            self.request_auto_top_up(account_id, now_ms).await?;
        }
        Ok(settings)
    }

    /// Starts an attempt if the database agrees (an account actor asked,
    /// or the sweep found the account due); the trigger learns the answer.
    pub async fn request_auto_top_up(
        &self,
        account_id: AccountId,
        now_ms: i64,
    ) -> Result<Option<AutoTopUpAttempt>, BillingError> {
        let begun = self
            .store
            .auto_top_up()
            .begin_auto_top_up(account_id, month_key(now_ms), now_ms)
            .await?;
        let triggers = self.registry.auto_triggers();
        match begun {
            Begin::Started(attempt) => {
                triggers.in_flight(account_id);
                tracing::info!(%account_id, attempt = attempt.n, amount = %attempt.amount, "auto top-up started");
                Ok(Some(attempt))
            }
            Begin::NotStarted(NotStarted::InFlight) => {
                triggers.in_flight(account_id);
                Ok(None)
            }
            Begin::NotStarted(NotStarted::Waiting(until)) => {
                triggers.settled(account_id, until);
                Ok(None)
            }
            Begin::NotStarted(NotStarted::CapReached) => {
                tracing::info!(%account_id, "auto top-up not started: this month's cap is reached");
                triggers.settled(account_id, next_month_start_ms(now_ms));
                Ok(None)
            }
            Begin::NotStarted(
                NotStarted::Off | NotStarted::NoSavedCard | NotStarted::BalanceAbove,
            ) => {
                triggers.settled(account_id, 0);
                Ok(None)
            }
        }
    }

    /// Charges the attempts that are due, one after another, each claimed
    /// when its turn comes under a lease from then (so that no two workers
    /// charge one at once, and none claimed here waits past its lease
    /// behind the others; a crashed worker's attempt is claimed again when
    /// its lease runs out and sent with the same key). Answers how many it
    /// took up.
    pub async fn run_auto_top_ups(&self) -> Result<usize, BillingError> {
        let clock = std::sync::Arc::clone(self.registry.clock());
        let lease_ms = crate::clock::millis(self.settings.auto_top_up.lease);
        let mut taken = 0;
        while taken < ATTEMPTS_PER_ROUND {
            let now_ms = clock.now_ms();
            let claimed = self
                .store
                .auto_top_up()
                .claim_auto_top_ups(now_ms, now_ms.saturating_add(lease_ms), 1)
                .await?;
            if claimed.is_empty() {
                break;
            }
            for attempt in claimed {
                taken += 1;
                if let Err(error) = self.charge_attempt(&attempt, now_ms).await {
                    tracing::warn!(account_id = attempt.account_id.0, attempt = attempt.n, %error,
                        "auto top-up not decided; it is tried again when its lease runs out");
                }
            }
        }
        Ok(taken)
    }

    async fn charge_attempt(
        &self,
        attempt: &AutoTopUpAttempt,
        now_ms: i64,
    ) -> Result<(), BillingError> {
        let key = attempt.charge_key();
        let store = self.store.auto_top_up();
        let opened = self
            .open_charge(
                attempt.account_id,
                OrderType::AutoTopUp,
                attempt.amount,
                &key,
                None,
                now_ms,
            )
            .await;
        let (account, order) = match opened {
            Ok(opened) => opened,
            Err(BillingError::NoSavedCard) => {
                return self
                    .fail_attempt(
                        attempt,
                        AttemptStatus::Failed,
                        "no saved card".into(),
                        None,
                        now_ms,
                        Some(attempt.claim),
                    )
                    .await;
            }
            Err(BillingError::NotActive(_)) => {
                return self
                    .fail_attempt(
                        attempt,
                        AttemptStatus::Failed,
                        "the account is not active".into(),
                        None,
                        now_ms,
                        Some(attempt.claim),
                    )
                    .await;
            }
            Err(error) => return Err(error),
        };
        store.auto_top_up_ordered(attempt.id, order.id).await?;
        // Getting here may have taken a while (the card asked of Stripe):
        // the lease runs from now, and the charge is sent only while the
        // attempt is still under this worker's claim.
        let now_ms = self.registry.clock().now_ms();
        let lease_ms = crate::clock::millis(self.settings.auto_top_up.lease);
        if !store
            .renew_auto_top_up(attempt.id, attempt.claim, now_ms.saturating_add(lease_ms))
            .await?
        {
            tracing::info!(
                account_id = attempt.account_id.0,
                attempt = attempt.n,
                "auto top-up claimed by another worker meanwhile: not sent from here"
            );
            return Ok(());
        }
        // What Stripe answered for the key is the attempt's outcome whoever
        // holds the claim now (the holder sending the same key is answered
        // the same): written unguarded. What this worker decided on its own
        // (a card gone, Stripe not to be trusted any more) counts only
        // under its claim, as the holder may be charging meanwhile.
        match self.send_charge(account, order, &key, now_ms).await {
            Ok(ChargeResult::Credited {
                payment_intent_id, ..
            }) => {
                self.succeed_attempt(attempt, &payment_intent_id, now_ms, None)
                    .await
            }
            Ok(ChargeResult::Pending { payment_intent_id }) => {
                store
                    .auto_top_up_processing(attempt.id, payment_intent_id, now_ms)
                    .await?;
                Ok(())
            }
            Ok(ChargeResult::AuthenticationRequired) => {
                self.fail_attempt(
                    attempt,
                    AttemptStatus::AuthenticationRequired,
                    "the bank wants the card holder to confirm".into(),
                    Some(AutoTopUpNotice::AuthenticationRequired {
                        amount: attempt.amount,
                    }),
                    now_ms,
                    None,
                )
                .await
            }
            Ok(ChargeResult::Declined { message }) => {
                self.fail_attempt(
                    attempt,
                    AttemptStatus::Declined,
                    message.clone(),
                    Some(AutoTopUpNotice::Declined {
                        amount: attempt.amount,
                        message,
                    }),
                    now_ms,
                    None,
                )
                .await
            }
            Ok(ChargeResult::NotCharged) => {
                self.fail_attempt(
                    attempt,
                    AttemptStatus::NotCharged,
                    "Stripe, asked after a day, had no charge for it: not charged".into(),
                    None,
                    now_ms,
                    Some(attempt.claim),
                )
                .await
            }
            Err(ChargeFailure::Unavailable(said) | ChargeFailure::KeyRefused(said))
                if now_ms.saturating_sub(attempt.created_at_ms)
                    >= crate::clock::millis(self.settings.auto_top_up.undecided_after) =>
            {
                self.give_up_unknown(attempt, &said, now_ms, Some(attempt.claim))
                    .await
            }
            // Stripe may or may not have charged (or is still answering
            // another worker's request with the key, a 409; or it refused
            // this service's key, which an earlier request with the key
            // may not have met): asked again with the same key (it
            // answers what it did), after a short wait; after a day, the
            // key is not trusted and Stripe is asked what became of the
            // charge instead.
            Err(ChargeFailure::Unavailable(said)) => {
                self.put_off(attempt, said, NOT_ANSWERED.to_string(), now_ms, lease_ms)
                    .await
            }
            Err(ChargeFailure::KeyRefused(said)) => {
                self.put_off(attempt, said.clone(), said, now_ms, lease_ms)
                    .await
            }
            Err(ChargeFailure::Other(BillingError::Gateway(said))) => {
                // Stripe's words go to the log; the attempt, the holder's
                // view and the host's event say it in this service's.
                tracing::warn!(account_id = attempt.account_id.0, attempt = attempt.n, %said,
                    "Stripe refused an auto top-up's charge");
                self.fail_attempt(
                    attempt,
                    AttemptStatus::Failed,
                    "Stripe refused the charge (the card on file could not be charged)".into(),
                    Some(AutoTopUpNotice::Failed {
                        amount: attempt.amount,
                    }),
                    now_ms,
                    Some(attempt.claim),
                )
                .await
            }
            Err(ChargeFailure::Other(error)) => Err(error),
        }
    }

    async fn succeed_attempt(
        &self,
        attempt: &AutoTopUpAttempt,
        payment_intent_id: &str,
        now_ms: i64,
        claim: Option<i64>,
    ) -> Result<(), BillingError> {
        self.store
            .auto_top_up()
            .end_auto_top_up(AttemptEnd {
                attempt_id: attempt.id,
                status: AttemptStatus::Succeeded,
                reason: None,
                payment_intent_id: Some(payment_intent_id.to_string()),
                claim,
                after: AfterAttempt::Success,
                notices: Vec::new(),
                events: Vec::new(),
                now_ms,
            })
            .await?;
        self.registry.auto_triggers().settled(attempt.account_id, 0);
        Ok(())
    }

    /// An attempt Stripe could not be asked about for too long: marked
    /// `unknown`, auto top-up turned off with the reason where the
    /// operator sees it (the setting, the attempts, the reconciliation
    /// report), never charged blind.
    /// Puts an attempt Stripe did not decide off for `lease_ms`, to be
    /// sent again with the same key, showing `shown` (this service's
    /// words; what Stripe `said` goes to the log). Answers the error the
    /// worker logs.
    async fn put_off(
        &self,
        attempt: &AutoTopUpAttempt,
        said: String,
        shown: String,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<(), BillingError> {
        tracing::warn!(account_id = attempt.account_id.0, attempt = attempt.n, %said,
            "an auto top-up's charge was not decided; it is sent again with the same key");
        let retry_at = now_ms.saturating_add(lease_ms);
        self.store
            .auto_top_up()
            .auto_top_up_later(attempt.id, attempt.claim, retry_at, shown)
            .await?;
        Err(BillingError::Gateway(said))
    }

    async fn give_up_unknown(
        &self,
        attempt: &AutoTopUpAttempt,
        reason: &str,
        now_ms: i64,
        claim: Option<i64>,
    ) -> Result<(), BillingError> {
        let order = attempt
            .order_id
            .map_or("-".to_string(), |id| id.to_string());
        let paused = format!(
            "a charge (order {order}) could not be confirmed with Stripe: check it in Stripe before turning auto top-up on again"
        );
        tracing::warn!(account_id = attempt.account_id.0, attempt = attempt.n, %reason,
            "auto top-up undecided for too long: marked unknown and turned off");
        let events = vec![
            auto_top_up_failed(
                attempt.account_id,
                attempt.id,
                attempt.amount,
                "the charge could not be confirmed with Stripe",
                None,
                now_ms,
            )?,
            auto_top_up_disabled(
                attempt.account_id,
                DisabledBecause::UnknownCharge,
                &paused,
                format!("auto_top_up.disabled:attempt:{}", attempt.id),
                now_ms,
            )?,
        ];
        let after = self
            .store
            .auto_top_up()
            .end_auto_top_up(AttemptEnd {
                attempt_id: attempt.id,
                status: AttemptStatus::Unknown,
                reason: Some(
                    "undecided: Stripe neither answered nor could be asked what became of the charge"
                        .to_string(),
                ),
                payment_intent_id: None,
                claim,
                after: AfterAttempt::Failure {
                    not_before_ms: now_ms,
                    turn_off: Some(paused),
                },
                notices: Vec::new(),
                events,
                now_ms,
            })
            .await?;
        self.store.webhooks_ready().notify_one();
        self.settle_triggers(attempt, after, now_ms);
        Ok(())
    }

    /// The actors' triggers follow an ended attempt: the setting as it is
    /// now, or (none stored) no attempt before `not_before_ms`.
    fn settle_triggers(
        &self,
        attempt: &AutoTopUpAttempt,
        after: Option<AutoTopUpSettings>,
        not_before_ms: i64,
    ) {
        let triggers = self.registry.auto_triggers();
        match after {
            Some(settings) => {
                triggers.follow(&settings);
                triggers.settled(attempt.account_id, settings.not_before_ms);
            }
            None => triggers.settled(attempt.account_id, not_before_ms),
        }
    }

    /// One more failure in a row: the wait before the next attempt, or,
    /// at the limit, auto top-up off; the holder is told each time.
    async fn fail_attempt(
        &self,
        attempt: &AutoTopUpAttempt,
        status: AttemptStatus,
        reason: String,
        news: Option<AutoTopUpNotice>,
        now_ms: i64,
        claim: Option<i64>,
    ) -> Result<(), BillingError> {
        let store = self.store.auto_top_up();
        let settings = store
            .auto_settings(attempt.account_id)
            .await?
            .unwrap_or_else(|| AutoTopUpSettings::off(attempt.account_id));
        let policy = &self.settings.auto_top_up;
        let failures = settings.consecutive_failures + 1;
        let turn_off = failures >= i64::from(policy.max_failures);
        let not_before_ms =
            now_ms.saturating_add(crate::clock::millis(policy.wait_after(failures)));
        let mut notices = news
            .into_iter()
            .map(|event| attempt_notice(attempt, event, now_ms))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)?;
        if turn_off && settings.enabled {
            notices.push(
                attempt_notice(attempt, AutoTopUpNotice::TurnedOff { failures }, now_ms)
                    .map_err(StoreError::from)?,
            );
        }
        let mut events = vec![auto_top_up_failed(
            attempt.account_id,
            attempt.id,
            attempt.amount,
            &reason,
            (!turn_off).then_some(not_before_ms),
            now_ms,
        )?];
        if turn_off && settings.enabled {
            events.push(auto_top_up_disabled(
                attempt.account_id,
                DisabledBecause::Failures,
                &format!("{failures} failed tries in a row"),
                format!("auto_top_up.disabled:attempt:{}", attempt.id),
                now_ms,
            )?);
        }
        let after = store
            .end_auto_top_up(AttemptEnd {
                attempt_id: attempt.id,
                status,
                reason: Some(reason),
                payment_intent_id: None,
                claim,
                after: AfterAttempt::Failure {
                    not_before_ms,
                    turn_off: turn_off.then(|| format!("{failures} failed tries in a row")),
                },
                notices,
                events,
                now_ms,
            })
            .await?;
        self.settle_triggers(attempt, after, not_before_ms);
        self.store.notices_ready().notify_one();
        self.store.webhooks_ready().notify_one();
        Ok(())
    }

    /// `payment_intent.succeeded` for an order: its attempt (if any) has
    /// succeeded.
    pub(super) async fn auto_top_up_paid(
        &self,
        order_id: i64,
        payment_intent_id: &str,
        now_ms: i64,
    ) -> Result<(), BillingError> {
        if let Some(attempt) = self
            .store
            .auto_top_up()
            .auto_top_up_by_order(order_id)
            .await?
        {
            self.succeed_attempt(&attempt, payment_intent_id, now_ms, None)
                .await?;
        }
        Ok(())
    }

    /// `payment_intent.payment_failed` for an order: its attempt (if any)
    /// has failed.
    pub(super) async fn auto_top_up_failed_later(
        &self,
        order_id: i64,
        payment_intent_id: &str,
        now_ms: i64,
    ) -> Result<(), BillingError> {
        if let Some(attempt) = self
            .store
            .auto_top_up()
            .auto_top_up_by_order(order_id)
            .await?
        {
            tracing::info!(
                payment_intent_id,
                "an auto top-up's payment failed after processing"
            );
            self.fail_attempt(
                &attempt,
                AttemptStatus::Declined,
                "the payment failed".into(),
                Some(AutoTopUpNotice::Failed {
                    amount: attempt.amount,
                }),
                now_ms,
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// A card Stripe says is gone (detached, or expired): forgotten, and
    /// auto top-up paused with the holder told once.
    pub async fn forget_card(
        &self,
        payment_method_id: &str,
        now_ms: i64,
    ) -> Result<Option<AccountId>, BillingError> {
        let forgotten = self
            .store
            .auto_top_up()
            .forget_card(
                payment_method_id.to_string(),
                NoticeKind::AutoTopUp {
                    event: AutoTopUpNotice::CardForgotten,
                },
                now_ms,
            )
            .await?;
        if let Some(account_id) = forgotten {
            if let Some(settings) = self.store.auto_top_up().auto_settings(account_id).await? {
                self.registry.auto_triggers().follow(&settings);
            }
            self.store.notices_ready().notify_one();
        }
        Ok(forgotten)
    }

    /// Now and then: refreshes which accounts have auto top-up on (other
    /// instances' changes), and starts attempts for accounts that are due
    /// but were not asked for (a debit just before a crash, a setting
    /// turned on elsewhere). Answers how many started.
    pub async fn sweep_auto_top_ups(&self, now_ms: i64) -> Result<usize, BillingError> {
        let store = self.store.auto_top_up();
        let enabled = store.auto_enabled().await?;
        self.registry.auto_triggers().refresh(&enabled);
        let mut started = 0;
        for account_id in store.auto_due(now_ms, DUE_PER_SWEEP).await? {
            if self
                .request_auto_top_up(account_id, now_ms)
                .await?
                .is_some()
            {
                started += 1;
            }
        }
        Ok(started)
    }
}
