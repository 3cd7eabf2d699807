//! The sweep of expired grants (#36): an account nobody touches gets the
//! expiry row of a grant that expired with credit left within one round,
//! not at its next change. Each round reads, from where the sweep stands,
//! the grants whose expiry has passed (an index of the grants that expire,
//! never the ledger) and asks each one's account actor, once a round,
//! [`ExpireDue`]: the actor writes the expiry rows due through the path
//! every change takes first (this module changes no balance), and answers
//! once they are durable. Where the sweep stands (`swept_until`, shared by
//! every instance) moves past a grant only once its account answered, so a
//! restart goes on from there, and a grant that expired while no instance
//! ran is found by the first round.
//!
//! Several instances may sweep at once: the same grants are then asked
//! about twice, which writes nothing more (the account's snapshot, with
//! what is left of each grant, is guarded by every write: the second actor
//! finds the grant's remainder taken). An account whose actor does not
//! answer holds the sweep's place for [`HOLD_ROUNDS`] rounds (every later
//! grant is still asked about each round); after that, or at once for an
//! account that does not exist, the grant is left to its account's next
//! change (which writes the expiry row first, as every change does; no
//! debit draws on an expired grant meanwhile) and the error is logged.
//!
//! Where the sweep stands can pass a grant that still holds expired credit:
//! one left so, one committed behind it (by an instance whose clock is
//! behind, or more than [`EXPIRY_SWEEP_SETTLE_MS`] late), or credit given
//! back to an expired grant whose expiry row was then not written (a
//! failed write, a crash). So every [`LOOK_BACK_EVERY_MS`] (and from the
//! first round) the sweep also looks back: the accounts of the grants that
//! expired within [`LOOK_BACK_MS`] before now, at or before where the sweep
//! stood when the look back began, are asked once more (an account with
//! nothing due writes nothing) — one page of them a round, after the
//! round's own work, so a long look back never holds the sweep up; a page
//! that fails is read again by the next round.

use std::collections::{HashMap, HashSet};

use futures_util::stream::{self, StreamExt};

use crate::account_actor::ExpireDue;
use crate::error::LedgerError;
use crate::ledger::AccountId;
use crate::registry::Registry;
use crate::store::ports::GrantExpiry;
use crate::store::StoreError;

/// How often (of the clock) a round runs; the first at the start.
pub const EXPIRY_SWEEP_EVERY_MS: i64 = 30_000;

/// How long after a grant's expiry the sweep still reads it again: where
/// the sweep stands never passes a grant that expired less than this
/// before the round, so a grant committed a moment after a round read past
/// its place (one made to expire within seconds, or by an instance whose
/// clock is behind) is still found. Such a grant is asked about in two
/// rounds; none more than that.
pub const EXPIRY_SWEEP_SETTLE_MS: i64 = 5_000;

/// How many rounds an account whose actor fails to answer holds where the
/// sweep stands, before its grant is left to the account's next change.
pub const HOLD_ROUNDS: u32 = 10;

/// How long a round waits for an account's actor to answer.
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// How often (of the clock) a round also looks back behind where the
/// sweep stands.
pub const LOOK_BACK_EVERY_MS: i64 = 6 * 3_600_000;

/// How far back (of grants' expiries) a look back goes.
pub const LOOK_BACK_MS: i64 = 7 * 86_400_000;

/// The grants read at once.
const BATCH: i64 = 500;

/// The accounts asked at once.
const ASKED_AT_ONCE: usize = 16;

/// What a round came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpiryRound {
    /// The accounts asked, and that answered: nothing is due any more.
    pub answered: Vec<AccountId>,
    /// The accounts whose actors did not answer (logged).
    pub failed: Vec<AccountId>,
    /// The grants left to their accounts' next change (logged).
    pub left: Vec<GrantExpiry>,
    /// Where the sweep stands after the round.
    pub swept_until: Option<GrantExpiry>,
    /// The accounts a look back asked (behind where the sweep stands)
    /// that answered; those that failed are logged (and in `failed`
    /// only if the forward part asked them too).
    pub looked_back: Vec<AccountId>,
}

/// The sweep of one instance: the registry it asks through, and how many
/// rounds in a row each account that fails has failed.
pub struct ExpirySweep {
    registry: Registry,
    failing: HashMap<AccountId, u32>,
    /// When this sweep's last look back began (`None`: none yet).
    looked_back_at: Option<i64>,
    /// The look back under way, if one is.
    looking_back: Option<LookBack>,
}

/// A look back under way: where it began, how far it has read, and where
/// it ends (where the sweep stood when it began).
#[derive(Clone, Copy, Debug)]
struct LookBack {
    began_at_ms: i64,
    read_after: GrantExpiry,
    until: GrantExpiry,
    asked: usize,
}

impl ExpirySweep {
    /// How many rounds in a row `account_id` has failed, this one
    /// counted: the count is this instance's memory, not a stored value,
    /// and an account it does not hold failed none of the rounds before.
    fn rounds_failed(&self, account_id: AccountId) -> u32 {
        self.failing.get(&account_id).copied().unwrap_or(0) + 1
    }

    pub fn new(registry: Registry) -> ExpirySweep {
        ExpirySweep {
            registry,
            failing: HashMap::new(),
            looked_back_at: None,
            looking_back: None,
        }
    }

    /// One round at `now_ms`: every grant expired by then, from where the
    /// sweep stands, its account asked once; then where the sweep stands
    /// moves past the grants whose accounts answered (or that are left),
    /// up to the first that holds it, and never past a grant that expired
    /// within [`EXPIRY_SWEEP_SETTLE_MS`]. A store that cannot be read or
    /// written ends the round with its error (the next round goes on).
    pub async fn round(&mut self, now_ms: i64) -> Result<ExpiryRound, StoreError> {
        let store = self.registry.store().clone();
        let start = store.grant_expiry().swept_until().await?;
        let settled_before = now_ms.saturating_sub(EXPIRY_SWEEP_SETTLE_MS);
        let mut outcomes: HashMap<AccountId, Result<(), LedgerError>> = HashMap::new();
        let mut round = ExpiryRound {
            swept_until: start,
            ..ExpiryRound::default()
        };
        let mut read_after = start;
        let mut advance_to = None;
        // Set by the first grant the sweep may not pass yet.
        let mut held = false;
        loop {
            let due = store
                .grant_expiry()
                .expired_grants(read_after, now_ms, BATCH)
                .await?;
            let asked: Vec<AccountId> = {
                let mut seen = HashSet::new();
                due.iter()
                    .map(|grant| grant.account_id)
                    .filter(|account_id| {
                        !outcomes.contains_key(account_id) && seen.insert(*account_id)
                    })
                    .collect()
            };
            for (account_id, answer) in self.ask(asked).await {
                match &answer {
                    Ok(()) => round.answered.push(account_id),
                    Err(error) => {
                        round.failed.push(account_id);
                        tracing::warn!(%account_id, %error, "could not expire an account's expired grants; the next round asks again");
                    }
                }
                outcomes.insert(account_id, answer);
            }
            for grant in &due {
                if held {
                    break;
                }
                if grant.expires_at_ms > settled_before {
                    held = true;
                    break;
                }
                match outcomes.get(&grant.account_id) {
                    Some(Ok(())) => advance_to = Some(*grant),
                    // Every account read was asked (none is left out).
                    None => held = true,
                    Some(Err(error)) => {
                        let rounds = self.rounds_failed(grant.account_id);
                        let missing = matches!(error, LedgerError::AccountNotFound(_));
                        if missing || rounds >= HOLD_ROUNDS {
                            tracing::error!(
                                account_id = %grant.account_id,
                                grant_id = grant.grant_id,
                                %error,
                                failed_rounds = rounds,
                                "the sweep leaves an expired grant to its account's next change, which writes its expiry row first"
                            );
                            round.left.push(*grant);
                            advance_to = Some(*grant);
                        } else {
                            held = true;
                        }
                    }
                }
            }
            read_after = due.last().copied().or(read_after);
            if (due.len() as i64) < BATCH {
                break;
            }
        }
        // How many rounds in a row each account has failed: only those that
        // failed this round are remembered.
        self.failing = round
            .failed
            .iter()
            .map(|account_id| (*account_id, self.rounds_failed(*account_id)))
            .collect();
        if let Some(to) = advance_to.filter(|to| Some(*to) > start) {
            round.swept_until = store.grant_expiry().advance_swept_until(to).await?;
        }
        let look_back_due = self
            .looked_back_at
            .is_none_or(|at| now_ms.saturating_sub(at) >= LOOK_BACK_EVERY_MS);
        if let (None, true, Some(until)) = (self.looking_back, look_back_due, start) {
            self.looking_back = Some(LookBack {
                began_at_ms: now_ms,
                read_after: GrantExpiry {
                    expires_at_ms: now_ms.saturating_sub(LOOK_BACK_MS),
                    account_id: AccountId(i64::MIN),
                    grant_id: i64::MIN,
                },
                until,
                asked: 0,
            });
            self.looked_back_at = Some(now_ms);
        }
        if let Some(look_back) = self.looking_back {
            // A page that fails is read again by the next round; the
            // round's own work stands.
            match self.look_back(look_back, &outcomes, &mut round).await {
                Ok(next) => self.looking_back = next,
                Err(error) => {
                    tracing::warn!(%error, "could not read the grants of a look back behind where the sweep stands; the next round reads them again")
                }
            }
        }
        Ok(round)
    }

    /// One page of a look back: the accounts of the next grants it reads
    /// (that expired at or before where it ends) asked once more, but those
    /// the round asked already. Answers the look back as it goes on, or
    /// `None` once it has read every grant it looks at.
    async fn look_back(
        &self,
        mut look_back: LookBack,
        outcomes: &HashMap<AccountId, Result<(), LedgerError>>,
        round: &mut ExpiryRound,
    ) -> Result<Option<LookBack>, StoreError> {
        let due = self
            .registry
            .store()
            .grant_expiry()
            .expired_grants(
                Some(look_back.read_after),
                look_back.until.expires_at_ms,
                BATCH,
            )
            .await?;
        let within: Vec<&GrantExpiry> = due
            .iter()
            .filter(|grant| **grant <= look_back.until)
            .collect();
        let asked: Vec<AccountId> = {
            let mut seen = HashSet::new();
            within
                .iter()
                .map(|grant| grant.account_id)
                .filter(|account_id| !outcomes.contains_key(account_id) && seen.insert(*account_id))
                .collect()
        };
        look_back.asked += asked.len();
        for (account_id, answer) in self.ask(asked).await {
            match answer {
                Ok(()) => round.looked_back.push(account_id),
                Err(error) => {
                    tracing::warn!(%account_id, %error, "could not expire an account's expired grants behind where the sweep stands; the next look back asks again")
                }
            }
        }
        if let Some(last) = due.last() {
            look_back.read_after = *last;
        }
        if (due.len() as i64) < BATCH || within.len() < due.len() {
            tracing::info!(
                accounts = look_back.asked,
                took_ms = self
                    .registry
                    .clock()
                    .now_ms()
                    .saturating_sub(look_back.began_at_ms),
                "the expiry sweep looked back behind where it stands"
            );
            return Ok(None);
        }
        Ok(Some(look_back))
    }

    /// Asks each account, [`ASKED_AT_ONCE`] at a time, to write its expiry
    /// rows due; an actor that cannot answer within [`ANSWER_WITHIN`]
    /// fails for its account (the round goes on).
    async fn ask(&self, accounts: Vec<AccountId>) -> Vec<(AccountId, Result<(), LedgerError>)> {
        let registry = self.registry.clone();
        stream::iter(accounts)
            .map(|account_id| {
                let registry = registry.clone();
                async move {
                    let answer =
                        tokio::time::timeout(ANSWER_WITHIN, registry.send(account_id, ExpireDue))
                            .await
                            .unwrap_or(Err(LedgerError::Busy));
                    (account_id, answer)
                }
            })
            .buffer_unordered(ASKED_AT_ONCE)
            .collect()
            .await
    }
}
