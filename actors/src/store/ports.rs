//! The storage port: every operation the domain asks of a durable store,
//! grouped by what it is about, each with its own typed result and error.
//! Adapters (SQLite in `sqlite/`, Postgres in `postgres/`) implement these
//! traits and keep their SQL to themselves; the domain never sees a
//! connection.
//!
//! Every write is durable when its future answers: an adapter answers only
//! after the transaction that holds the write has committed.

use std::future::Future;
use std::pin::Pin;

use crate::access_tokens::{LiveToken, TokenRecord};
use crate::accounts::{Account, Card, Email, NewAccount, PhoneNumber};
use crate::billing::auto_top_up::{
    AttemptEnd, AttemptStatus, AutoTopUpAttempt, AutoTopUpSettings, Begin, SettingChange,
};
use crate::billing::discounts::{Discount, DiscountCode};
use crate::billing::disputes::{DisputeRecord, DisputeUpdate, OrderClaims};
use crate::billing::event_log::{EventRecord, EventStatus};
use crate::billing::orders::{DailyCap, NewOrder, Order, OrderStatus};
use crate::billing::pricing::Pricing;
use crate::billing::refunds::{OpenRefund, Opened, RefundRequest};
use crate::billing::stripe_refunds::{
    LegacyOrder, OrderRefunds, RefundsAsRead, RefundsSeen, StripeRefund,
};
use crate::billing::BillingError;
use crate::books::{BooksError, CreditBooks, Period};
use crate::feed_tickets::{NewFeedTicket, RedeemedTicket};
use crate::grants::{CreditGrant, Funding, Remaining};
use crate::ledger::{AccountId, IdempotencyKey, LedgerEntry, Snapshot, Standing};
use crate::messaging::notices::{Notice, NoticeKind, NoticeState};
use crate::messaging::records::{
    MarkSentError, MessageRecord, NewMessage, OpenReservation, ReservationSweep, SentCost,
    VoidStart,
};
use crate::money::Money;
use crate::opt_outs::{OptChange, OptOut, OptOutVia};
use crate::reports::{AccountActivity, Attention, CountryMargin, HourFigures};
use crate::sign_in::{CodeOpened, CodeRequest, CountryCodes, PhoneCodesQuery, Redeem, Redeemed};
use crate::verify::VerifyReport;
use crate::webhooks::delivery::Attempted;
use crate::webhooks::{
    AttemptRecord, ClaimedDelivery, DeliveryStats, Endpoint, EndpointChange, ForEnabled,
    NewEndpoint, NewEvent, Pruned, SigningSecret, TryRecorded,
};

use super::backup::BackupRecord;
use super::copy::{CopyError, CopyMessage, CopyRow, Imported, Table};
use super::{CreateAccountError, InstanceBeat, LedgerWrite, StoreError};

/// What every operation returns: a future that owns what it needs, so it
/// can be awaited on any thread.
pub type StoreFuture<T, E = StoreError> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// What an account actor loads when it is activated: where the account
/// stands, and the lasting facts of the grants its snapshot names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    pub standing: Standing,
    pub facts: Vec<CreditGrant>,
    /// When the row at the snapshot's `seq` was dated (its `created_at`):
    /// an expiry row is never dated before the row before it. Read only
    /// when one of those grants expires (else no expiry row can be due);
    /// `None` when not read, or when the account has no row.
    pub last_row_at_ms: Option<i64>,
}

/// What an order's committed refund rows took back from the account in
/// all (a positive amount), and from which grants (net, per grant).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TakenBackRows {
    pub amount: Money,
    pub funding: Funding,
}

impl TakenBackRows {
    /// What an order's refund rows (each amount and funding) took back.
    pub fn of_rows(
        order_id: i64,
        rows: Vec<(Money, Funding)>,
    ) -> Result<TakenBackRows, StoreError> {
        let out_of_range =
            || StoreError::Database(format!("order {order_id}: refunds out of range"));
        // A take-back draws exactly what it takes. One without its funding
        // (an earlier release's server wrote it after the upgrade) is never
        // read as having taken from no grant: what is given back for it
        // would go to no grant it came from.
        if let Some((amount, _)) = rows.iter().find(|(amount, funding)| {
            amount.is_negative() && funding.total().ok() != Some(-*amount)
        }) {
            return Err(StoreError::Database(format!(
                "order {order_id}: a refund row took back {} without saying from which credit \
                 grants (an earlier release's server wrote it after the upgrade); nothing was \
                 changed: sms-credit migrate, run with every server stopped, gives it its funding",
                -*amount
            )));
        }
        let amount = rows
            .iter()
            .try_fold(Money::ZERO, |sum, (amount, _)| sum.checked_add(*amount))
            .map_err(|_| out_of_range())?;
        let funding =
            Funding::net(rows.iter().map(|(_, funding)| funding)).map_err(|_| out_of_range())?;
        Ok(TakenBackRows {
            amount: -amount,
            funding,
        })
    }
}

/// An account's grants, for the listings: every grant's lasting facts
/// (oldest first) and what is left of each (`None`: not backfilled yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountGrants {
    pub grants: Vec<CreditGrant>,
    pub remaining: Option<Vec<Remaining>>,
}

/// The ledger and the account actors' snapshots.
pub trait LedgerStore: Send + Sync {
    /// Queues a ledger row with the snapshot it leads to. `write.done` is
    /// answered once the transaction that holds it has committed (group
    /// commit), or with why it was not applied: the snapshot on disk was not
    /// `write.previous` (`Conflict`), an earlier write of the same account
    /// and generation failed (`Aborted`), or the commit failed.
    fn submit(&self, write: LedgerWrite) -> Result<(), StoreError>;
    /// The committed snapshot of an account; `None` if there is no such account.
    fn snapshot(&self, account_id: AccountId) -> StoreFuture<Option<Snapshot>>;
    /// The committed snapshot, what is left of each grant and the facts of
    /// those grants, read at one moment; `None` if there is no such account.
    fn activation(&self, account_id: AccountId) -> StoreFuture<Option<Activation>>;
    /// The lasting facts of some of an account's grants (those that exist).
    fn grants_by_id(&self, account_id: AccountId, ids: Vec<i64>) -> StoreFuture<Vec<CreditGrant>>;
    /// Every grant of an account and what is left of each; `None` if there
    /// is no such account.
    fn account_grants(&self, account_id: AccountId) -> StoreFuture<Option<AccountGrants>>;
    /// The committed row of an account with this idempotency key.
    fn entry_by_key(
        &self,
        account_id: AccountId,
        key: IdempotencyKey,
    ) -> StoreFuture<Option<LedgerEntry>>;
    /// Rows with `seq > after_seq`, oldest first, at most `limit`.
    fn entries_after(
        &self,
        account_id: AccountId,
        after_seq: i64,
        limit: i64,
    ) -> StoreFuture<Vec<LedgerEntry>>;
    /// The newest rows, newest first, at most `limit`.
    fn latest_entries(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<LedgerEntry>>;
    /// The snapshot and the rows after `after_seq`, read at one moment.
    fn snapshot_and_entries_after(
        &self,
        account_id: AccountId,
        after_seq: i64,
        limit: i64,
    ) -> StoreFuture<(Option<Snapshot>, Vec<LedgerEntry>)>;
    /// Whether any committed row of the account left its balance at or
    /// above `amount` (has the account ever had that much).
    fn ever_reached(&self, account_id: AccountId, amount: Money) -> StoreFuture<bool>;
    /// What the committed refund rows of an order took back from the
    /// account in all (a positive amount; zero when none did), and from
    /// which grants.
    fn taken_back(&self, account_id: AccountId, order_id: i64) -> StoreFuture<TakenBackRows>;
    /// Recomputes every account from its ledger (see [`crate::verify`]).
    fn verify(&self) -> StoreFuture<VerifyReport>;
    /// Answers once everything submitted before it has committed or failed.
    fn flush(&self) -> StoreFuture<()>;
    /// Answers once the database answers a read (readiness).
    fn ping(&self) -> StoreFuture<()>;
}

/// A grant with an expiry, as the sweep of expired grants finds it: its
/// place in the sweep's order (its expiry, then its account, then its id),
/// which is also how far the sweep has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantExpiry {
    /// Unix milliseconds.
    pub expires_at_ms: i64,
    pub account_id: AccountId,
    pub grant_id: i64,
}

/// The sweep of expired grants: the grants whose expiry has passed, found
/// by an index of the grants that expire (never by the ledger), and where
/// the sweep stands, shared by every instance.
pub trait GrantExpiryStore: Send + Sync {
    /// How far the sweep has gone: every grant at or before this place had
    /// its account's actor asked (or was left to the account's next
    /// change); `None` before the first.
    fn swept_until(&self) -> StoreFuture<Option<GrantExpiry>>;
    /// The grants after `after` (every one when `None`) that expire at or
    /// before `until_ms`, in the sweep's order, at most `limit`; whether
    /// they have credit left is the actor's to say.
    fn expired_grants(
        &self,
        after: Option<GrantExpiry>,
        until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<GrantExpiry>>;
    /// Moves where the sweep stands forward to `to`, never back (another
    /// instance's round may have gone further); answers where it stands.
    fn advance_swept_until(&self, to: GrantExpiry) -> StoreFuture<Option<GrantExpiry>>;
}

/// Accounts.
pub trait AccountStore: Send + Sync {
    /// Creates an account with a zero balance.
    fn create(&self, account: NewAccount, now_ms: i64) -> StoreFuture<Account, CreateAccountError>;
    /// An account with its committed balance.
    fn get(&self, account_id: AccountId) -> StoreFuture<Option<Account>>;
    fn by_phone(&self, phone: PhoneNumber) -> StoreFuture<Option<Account>>;
    /// Accounts in id order after `after_id`, at most `limit`; with `search`,
    /// only those whose phone or email contains it (or whose id it is).
    fn list(&self, search: Option<String>, after_id: i64, limit: i64) -> StoreFuture<Vec<Account>>;
    /// What the service owes its customers (the sum of positive balances)
    /// and how many accounts have less than `threshold`.
    fn balance_totals(&self, threshold: Money) -> StoreFuture<(Money, i64)>;
    /// Links an account to its Stripe customer unless it has one already;
    /// answers the customer id the account ends up with.
    fn set_stripe_customer(
        &self,
        account_id: AccountId,
        customer_id: String,
    ) -> StoreFuture<String>;
}

/// Account tokens, kept only as hashes.
pub trait TokenStore: Send + Sync {
    /// Stores a new token's hash; `false` (and nothing stored) if there is
    /// no such account.
    fn issue(&self, account_id: AccountId, token_hash: String, now_ms: i64) -> StoreFuture<bool>;
    /// Revokes every live token of an account; answers how many.
    fn revoke_all(&self, account_id: AccountId, now_ms: i64) -> StoreFuture<usize>;
    /// Revokes every live token and stores a new one, in one transaction;
    /// answers how many were revoked, or `None` if there is no such account.
    fn rotate(
        &self,
        account_id: AccountId,
        token_hash: String,
        now_ms: i64,
    ) -> StoreFuture<Option<usize>>;
    /// The account a live token (by hash) belongs to: not revoked, and not
    /// expired at `now_ms`.
    fn account_of(&self, token_hash: String, now_ms: i64) -> StoreFuture<Option<LiveToken>>;
    /// Every token of an account, newest first (what is known of them,
    /// never the token).
    fn list(&self, account_id: AccountId) -> StoreFuture<Vec<TokenRecord>>;
}

/// Feed tickets, kept only as hashes, shared by every instance.
pub trait FeedTicketStore: Send + Sync {
    /// Stores a new ticket; in the same transaction, deletes a bounded
    /// number of tickets expired at `now_ms` (nobody can use them).
    fn issue(&self, ticket: NewFeedTicket, now_ms: i64) -> StoreFuture<()>;
    /// Deletes the ticket of this hash and answers it, only if it has not
    /// expired at `now_ms`, in one statement: of any number of callers on
    /// any instances, one at most gets it.
    fn redeem(&self, ticket_hash: String, now_ms: i64) -> StoreFuture<Option<RedeemedTicket>>;
}

/// Codes texted to phones and the sign-up tokens of proved phones.
pub trait SignInStore: Send + Sync {
    /// Stores a code unless a limit of the phone or the address forbids
    /// it (checked in the same transaction, against every instance's
    /// codes): per phone and asking address, per phone in all of the hour
    /// and of the day (but codes the admin lifted), per address. Past a
    /// cap of the hour (every code counts), a phone without an account
    /// gets a code stored as never to be texted ([`CodeOpened::Capped`]).
    /// A stored code replaces the asking address's live ones for the
    /// phone but its newest ([`crate::sign_in::LIVE_CODES_PER_ADDRESS`]),
    /// and past [`crate::sign_in::LIVE_CODES_PER_PHONE`] live ones the
    /// oldest.
    fn open_code(&self, request: CodeRequest) -> StoreFuture<CodeOpened>;
    /// Checks a proof for a phone; if it holds, stores the account token
    /// (the phone has an active account) or the sign-up token (it has
    /// none), in the same transaction that uses the code up (and ends the
    /// other codes its address asked for). A code is tried against the
    /// phone's live codes, as far as the address's wrong codes for the
    /// phone allow ([`crate::sign_in::WrongCodes::standing`]: all, its own
    /// only, or none: [`Redeemed::Wait`]), and not against a code tried
    /// [`crate::sign_in::WRONG_CODES_PER_CODE`] times but from the address
    /// that asked for it. A wrong one counts against the address and the
    /// codes it was tried against.
    fn redeem(&self, request: Redeem) -> StoreFuture<Redeemed>;
    /// The phone a live sign-up token (by hash) was given for.
    fn sign_up_phone(&self, token_hash: String, now_ms: i64) -> StoreFuture<Option<PhoneNumber>>;
    /// Counts a wrong discount code against a sign-up token (by hash); at
    /// `limit` the token is deleted (used up). Answers whether it was.
    fn wrong_discount_code(&self, token_hash: String, limit: i64) -> StoreFuture<bool>;
    /// Lifts the phone's limits: its codes stored so far no longer count
    /// against its totals (they still count against the addresses that
    /// asked, and the caps of the hour), its live codes end, and the wrong
    /// codes tried for it are marked lifted (they still count against
    /// their addresses, see [`crate::sign_in::WrongCodes`]); answers how
    /// many codes were lifted.
    fn lift_limits(&self, phone: PhoneNumber, now_ms: i64) -> StoreFuture<i64>;
    /// The phones with at least so many codes (of all kinds, lifted ones
    /// too) in the last hour or day, with those counts, the most of the day
    /// first.
    fn codes_by_phone(&self, query: PhoneCodesQuery) -> StoreFuture<Vec<(PhoneNumber, i64, i64)>>;
    /// The codes stored since `since_ms`, by priced destination (every
    /// instance's), the most within the caps first.
    fn codes_by_country(&self, since_ms: i64) -> StoreFuture<Vec<CountryCodes>>;
}

/// How the domain prices access: from the current pricing and the
/// discount of the code reserved (if any), the list price and the amount
/// to charge, or a refusal (which undoes the reservation).
pub type PriceAccess = fn(&Pricing, Option<Discount>) -> Result<(Money, Money), BillingError>;

/// An access order to open, with its (pending) account.
pub struct AccessOrderRequest {
    pub phone: PhoneNumber,
    pub email: Email,
    /// A normalized discount code, one use of which is reserved.
    pub discount_code: Option<String>,
    pub price: PriceAccess,
    pub now_ms: i64,
}

/// An order that Stripe says is paid.
pub struct OrderCompletion {
    pub order_id: i64,
    /// What Stripe says was paid.
    pub paid: Money,
    pub payment_intent_id: Option<String>,
    /// The Stripe customer the account is linked to, if not linked yet.
    pub customer: Option<(AccountId, String)>,
    /// Initial access: the account becomes active.
    pub activate: Option<AccountId>,
    pub now_ms: i64,
}

/// Pricing, discount codes and orders.
pub trait BillingStore: Send + Sync {
    fn pricing(&self) -> StoreFuture<Pricing>;
    fn set_pricing(&self, pricing: Pricing, now_ms: i64) -> StoreFuture<()>;
    /// Creates a code; `None` if the code exists already.
    fn create_discount_code(
        &self,
        code: String,
        discount: Discount,
        max_uses: Option<i64>,
        now_ms: i64,
    ) -> StoreFuture<Option<DiscountCode>>;
    fn discount_codes(&self) -> StoreFuture<Vec<DiscountCode>>;
    /// Turns a code on or off; `None` if there is no such code.
    fn set_discount_code_active(
        &self,
        code: String,
        active: bool,
    ) -> StoreFuture<Option<DiscountCode>>;
    /// Finds or creates the phone's pending account (refusing an active
    /// one), reserves one use of the discount code, prices the order and
    /// records it as pending: all or nothing, so that a code's `max_uses`
    /// holds however many checkouts race for its last use.
    fn open_access_order(
        &self,
        request: AccessOrderRequest,
    ) -> StoreFuture<(Account, Order), BillingError>;
    /// Records a pending order for an active account.
    fn open_order(
        &self,
        order: NewOrder,
        now_ms: i64,
    ) -> StoreFuture<(Account, Order), BillingError>;
    /// The order of an off-session charge by its caller's key (created if
    /// new) with the account, which must have a saved card.
    /// With a cap, a new order that would take the day's charges of its kind
    /// past the limit is refused (`DailyLimit`), decided in the same
    /// transaction; an order found again by its key is never refused.
    fn open_off_session_order(
        &self,
        order: NewOrder,
        charge_key: String,
        cap: Option<DailyCap>,
        now_ms: i64,
    ) -> StoreFuture<(Account, Order), BillingError>;
    fn set_order_session(&self, order_id: i64, session_id: String) -> StoreFuture<()>;
    /// Records the PaymentIntent of an order that has none yet.
    fn set_order_payment_intent(&self, order_id: i64, payment_intent_id: String)
        -> StoreFuture<()>;
    /// Claims the asking of Stripe for a paid order's receipt at
    /// `asked_at_ms`, before it is asked: `true` (and `asked_at_ms`
    /// recorded as when it was asked) only if no receipt is learnt and it
    /// was never asked, or last asked at or before `last_asked_by_ms`;
    /// `false` if another listing (of this instance or another) claimed it
    /// first, or learnt it. Decided in one statement, so that of listings
    /// at once one alone asks.
    fn claim_receipt_ask(
        &self,
        order_id: i64,
        asked_at_ms: i64,
        last_asked_by_ms: i64,
    ) -> StoreFuture<bool>;
    /// Records the receipt Stripe gave for a paid order (one learnt
    /// already is kept).
    fn record_receipt(&self, order_id: i64, receipt_url: String) -> StoreFuture<()>;
    /// Ends, as failed, up to `limit` pending orders opened before
    /// `opened_before_ms` that hold a discount code's use and never got a
    /// Checkout Session (the server stopped, or the request was dropped,
    /// between the two), giving each use back; answers their ids.
    fn end_unopened_orders(&self, opened_before_ms: i64, limit: i64) -> StoreFuture<Vec<i64>>;
    /// Ends a pending order as failed or expired and gives back the
    /// discount use it reserved (once), with its `payment.failed` event if
    /// it has one; `false` if it was not pending.
    fn end_order(
        &self,
        order_id: i64,
        status: OrderStatus,
        event: Option<NewEvent>,
    ) -> StoreFuture<bool>;
    /// Marks an order paid (idempotent), links the customer and activates
    /// the account, in one transaction.
    fn complete_order(&self, completion: OrderCompletion) -> StoreFuture<()>;
    /// Records a refund request, checked against its order in the same
    /// transaction: the order paid, the amount (or, without one, all that
    /// is left) not more than remains unrefunded and not asked already;
    /// the next number on the order. A known idempotency key answers that
    /// request.
    fn open_refund(&self, refund: OpenRefund) -> StoreFuture<Opened, BillingError>;
    /// What Stripe said of a refund request: its refund's id, or why not.
    fn refund_settled(
        &self,
        refund_id: i64,
        outcome: Result<String, String>,
        now_ms: i64,
    ) -> StoreFuture<RefundRequest>;
    /// An order's refund requests, oldest first.
    fn refunds_of(&self, order_id: i64) -> StoreFuture<Vec<RefundRequest>>;
    /// Stripe reports the refund of a refund request failed (or canceled)
    /// after it was made: the request, if it is still `requested`, or
    /// `succeeded` with this refund (or with none recorded), becomes
    /// `failed` with `error`. Answers the request as it stands.
    fn refund_failed_later(
        &self,
        request_id: i64,
        stripe_refund_id: String,
        error: String,
        now_ms: i64,
    ) -> StoreFuture<RefundRequest>;
    /// Records the refunds Stripe reported of an order, in one transaction
    /// taken after any other on the same order (its row locked first): a
    /// refund not known is recorded as it stands (counted, or failed); a
    /// counted one reported failed or canceled is failed, never the other
    /// way; with `replace_legacy`, the order's legacy record is replaced; a
    /// replaced record marked settled is marked so no more if anything was
    /// recorded (see [`BillingStore::legacy_replacement_settled`]).
    /// The order's refunded figure becomes what its refunds that stand come
    /// to (`refunded` once that reaches what was paid, `completed` again if
    /// a failure brings it below). A refund recorded for another order, or
    /// with another amount, is refused (`BillingError::RefundMismatch`) and
    /// nothing is recorded. Answers the order's refunds as they stand.
    fn record_refunds(&self, seen: RefundsSeen) -> StoreFuture<OrderRefunds, BillingError>;
    /// The refunds of an order recorded by their Stripe id (and its legacy
    /// record, if it has one), oldest first.
    fn stripe_refunds(&self, order_id: i64) -> StoreFuture<Vec<StripeRefund>>;
    /// Orders still the sweep's (see [`BillingStore::legacy_orders_left`])
    /// not claimed at `now_ms` (no claim, or one that ran out), at most
    /// `limit`, lowest first, each
    /// claimed until `lease_until_ms` in the same write (Postgres: rows
    /// another instance is claiming are skipped).
    fn claim_legacy_orders(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<LegacyOrder>>;
    /// How many orders are still the sweep's, claimed or not: those that
    /// hold a legacy record, or whose record was replaced and not yet
    /// settled, and that the sweep has not left.
    fn legacy_orders_left(&self) -> StoreFuture<i64>;
    /// The PaymentIntent of the newest order that has one, other than
    /// `excluding`: the payment the sweep asks Stripe about to prove that
    /// the API key sees this service's payments before it believes Stripe
    /// knows no PaymentIntent of an order (`None`: no other order has one).
    fn newest_payment_intent(&self, excluding: Vec<i64>) -> StoreFuture<Option<String>>;
    /// Gives up the sweep's claims of these orders (the round ended before
    /// it got to them) where they are still the round's own, claimed
    /// until `lease_until_ms` (a claim another round made since, once the
    /// lease ran out, stands): the next round may take them.
    fn release_legacy_claims(&self, order_ids: Vec<i64>, lease_until_ms: i64) -> StoreFuture<()>;
    /// Marks the order's replaced legacy record settled (its credit
    /// settled with every refund recorded of it), only if its refunds
    /// still stand as they were read before the settling (`as_read`: a
    /// refund recorded or failed since is not settled yet) — on Postgres
    /// with the order's row locked, as a recording locks it —: the sweep
    /// takes it no more, until a refund of it is recorded or fails
    /// ([`BillingStore::record_refunds`] takes the mark away). Answers
    /// whether this marked it.
    fn legacy_replacement_settled(
        &self,
        order_id: i64,
        as_read: RefundsAsRead,
        now_ms: i64,
    ) -> StoreFuture<bool>;
    /// Tells the host application of a refund otherwise than by a ledger
    /// row of its own (its row took nothing): marks the refund told and
    /// records `event` (its `payment.refunded`) in one transaction, unless
    /// it is marked told already. Answers whether this told it.
    fn tell_refund(&self, refund_id: String, event: NewEvent) -> StoreFuture<bool>;
    /// Leaves the order's legacy record (or its replacement) to the sweep
    /// no more, `because` (kept with it): it can never replace or settle
    /// it. Answers whether this left it.
    fn leave_legacy_record(&self, order_id: i64, because: String) -> StoreFuture<bool>;
    /// Records a dispute, or moves a known one forward (its funds only
    /// forward, its status never from closed back to open nor from a
    /// chargeback back to an inquiry); answers it as it stands.
    fn record_dispute(&self, update: DisputeUpdate) -> StoreFuture<DisputeRecord>;
    /// What an order's refunds and disputes claim of its credit, read in
    /// one statement; `None` if there is no such order.
    fn claims(&self, order_id: i64) -> StoreFuture<Option<OrderClaims>>;
    fn order(&self, order_id: i64) -> StoreFuture<Option<Order>>;
    fn order_by_session(&self, session_id: String) -> StoreFuture<Option<Order>>;
    fn order_by_payment_intent(&self, payment_intent_id: String) -> StoreFuture<Option<Order>>;
    fn orders_of(&self, account_id: AccountId) -> StoreFuture<Vec<Order>>;
    /// Saves the card to charge off-session on the account of a Stripe
    /// customer, with what the holder knows it by (when Stripe said; a
    /// method saved without it keeps the details only if it is the same).
    fn save_card(
        &self,
        customer_id: String,
        payment_method_id: String,
        card: Option<Card>,
    ) -> StoreFuture<()>;
}

/// Auto top-up: the setting, its attempts, and the saved card's end.
pub trait AutoTopUpStore: Send + Sync {
    /// The account's setting; `None` if it was never set.
    fn auto_settings(&self, account_id: AccountId) -> StoreFuture<Option<AutoTopUpSettings>>;
    /// Stores a checked change (turning on also clears the failure count
    /// and the wait, and records the consent).
    fn set_auto_settings(&self, change: SettingChange) -> StoreFuture<AutoTopUpSettings>;
    /// Starts an attempt if the database agrees: on, a saved card, the
    /// balance below the threshold, none in flight, no wait, within this
    /// month's cap; all checked in the transaction that inserts it.
    fn begin_auto_top_up(
        &self,
        account_id: AccountId,
        month: String,
        now_ms: i64,
    ) -> StoreFuture<Begin>;
    /// Pending attempts, and charging ones whose lease ran out, moved to
    /// `charging` under a lease until `lease_until_ms`, oldest first, at
    /// most `limit`; each claim numbered (the attempt's `claim`).
    fn claim_auto_top_ups(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<AutoTopUpAttempt>>;
    /// Extends to `lease_until_ms` the lease of an attempt still `charging`
    /// under claim `claim`; `false` when another claim has taken it (or it
    /// ended): its charge is then not this worker's to send.
    fn renew_auto_top_up(
        &self,
        attempt_id: i64,
        claim: i64,
        lease_until_ms: i64,
    ) -> StoreFuture<bool>;
    /// Links the attempt's order.
    fn auto_top_up_ordered(&self, attempt_id: i64, order_id: i64) -> StoreFuture<()>;
    /// Stripe accepted the charge but has not finished it: `processing`
    /// until its webhook says.
    fn auto_top_up_processing(
        &self,
        attempt_id: i64,
        payment_intent_id: String,
        now_ms: i64,
    ) -> StoreFuture<()>;
    /// Stripe could not be reached (or was still answering the same key):
    /// tried again (same key) from `at_ms`; only while the attempt is
    /// still under claim `claim`.
    fn auto_top_up_later(
        &self,
        attempt_id: i64,
        claim: i64,
        at_ms: i64,
        reason: String,
    ) -> StoreFuture<()>;
    /// Ends an attempt still in flight, with its effect on the setting and
    /// its notice, in one transaction; `None` if it had ended already.
    fn end_auto_top_up(&self, end: AttemptEnd) -> StoreFuture<Option<AutoTopUpSettings>>;
    fn auto_top_up_by_order(&self, order_id: i64) -> StoreFuture<Option<AutoTopUpAttempt>>;
    /// The account's attempts, the latest first.
    fn auto_top_ups_of(
        &self,
        account_id: AccountId,
        limit: i64,
    ) -> StoreFuture<Vec<AutoTopUpAttempt>>;
    /// What the account's attempts of `month` have charged or are charging.
    fn month_charged(&self, account_id: AccountId, month: String) -> StoreFuture<Money>;
    /// Every attempt ever, by status: how many and how much.
    fn auto_top_up_totals(&self) -> StoreFuture<Vec<(AttemptStatus, i64, Money)>>;
    /// Every account with auto top-up on: threshold and wait.
    fn auto_enabled(&self) -> StoreFuture<Vec<(AccountId, Money, i64)>>;
    /// Accounts on, below their threshold, not waiting, none in flight.
    fn auto_due(&self, now_ms: i64, limit: i64) -> StoreFuture<Vec<AccountId>>;
    /// Forgets a card Stripe says is gone: the account's card, and its auto
    /// top-up paused with `notice` queued (once) if it was on. Answers the
    /// account, if one had that card.
    fn forget_card(
        &self,
        payment_method_id: String,
        notice: NoticeKind,
        now_ms: i64,
    ) -> StoreFuture<Option<AccountId>>;
}

/// A Stripe event as received, before it is decided.
pub struct ReceivedEvent {
    pub event_id: String,
    pub event_type: String,
    /// The event in the core's words (`StripeEvent` as JSON), or `None`
    /// when it could not be read.
    pub payload: Option<String>,
    /// The instance that received it, and until when it may apply it
    /// alone (another instance receiving it meanwhile waits).
    pub instance_id: String,
    pub lease_until_ms: i64,
    pub now_ms: i64,
}

/// What receiving an event came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reception {
    /// Decided before (applied, ignored, expired, failed): nothing to do.
    Decided(EventStatus),
    /// This instance applies it now (it was new, waiting, or its earlier
    /// claim lapsed).
    Claimed,
    /// Another instance is applying it right now.
    Busy,
}

/// What became of an event.
pub struct EventDecision {
    pub event_id: String,
    pub status: EventStatus,
    /// What a waiting event waits for (for example `payment_intent:pi_1`).
    pub waiting_on: Option<String>,
    pub detail: String,
    pub now_ms: i64,
}

/// Stripe's events, each decided once.
pub trait StripeEventStore: Send + Sync {
    /// Records an event the first time it is seen and claims it for this
    /// instance unless it is decided or another instance's claim is live.
    fn receive(&self, event: ReceivedEvent) -> StoreFuture<Reception>;
    /// Records what became of an event (and lets go of its claim). An event
    /// already decided stays so.
    fn decide(&self, decision: EventDecision) -> StoreFuture<()>;
    /// The waiting events that wait for any of `keys`, oldest first.
    fn waiting_on(&self, keys: Vec<String>) -> StoreFuture<Vec<EventRecord>>;
    /// The waiting events whose key is `key_prefix` followed by the
    /// PaymentIntent of an order that is no longer pending (what they
    /// waited for exists now), oldest first, at most `limit`, from after
    /// `after` (received at, event id) when given: what a sweep wakes when
    /// the event that should have woken them could not. A sweep goes on
    /// from where the last batch ended, so events that wait on whatever
    /// comes (their order exists, but not what they need of it) never
    /// keep the ones behind them waiting.
    fn waiting_unblocked(
        &self,
        key_prefix: String,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> StoreFuture<Vec<EventRecord>>;
    /// Gives up on events still waiting that were received before
    /// `received_before_ms`; answers how many.
    fn expire_waiting(&self, received_before_ms: i64, now_ms: i64) -> StoreFuture<usize>;
    /// Events, newest first, optionally of one status.
    fn list(&self, status: Option<EventStatus>, limit: i64) -> StoreFuture<Vec<EventRecord>>;
}

/// What claiming an inbound SMS came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundClaim {
    /// This instance answers it now.
    Mine,
    /// It was answered before: the reply it got (`None`: no reply).
    Answered(Option<String>),
    /// Another instance is answering it right now.
    Busy,
    /// (`record_inbound` only) This instance answered it, with no reply:
    /// the number has opted out of texts.
    Withheld,
}

/// An inbound SMS answered, with the cost of its reply.
pub struct InboundRecord {
    pub message_sid: String,
    /// The instance answering it.
    pub instance_id: String,
    pub from: String,
    pub account_id: Option<AccountId>,
    pub body: String,
    pub reply: Option<String>,
    /// The reply as a service message, recorded only if this MessageSid is new.
    pub reply_cost: Option<NewMessage>,
    pub now_ms: i64,
    /// The sender's number, when it is one (`from` as a phone number).
    pub phone: Option<PhoneNumber>,
    /// What the text does to the number's subscription (STOP, START),
    /// applied with the answer, once.
    pub opt_change: Option<OptChange>,
    /// The reply is not sent (nor costed) if the number has opted out,
    /// as the store has it when the answer is recorded.
    pub withhold_if_opted_out: bool,
}

/// A message whose Twilio price is due to be looked up.
pub struct PriceCheck {
    pub message_id: i64,
    pub twilio_sid: String,
    /// Looks so far.
    pub checks: i64,
}

/// Messages sent and received.
pub trait MessageStore: Send + Sync {
    /// Records a reserved outbound message, or finds the earlier one with
    /// the same account and idempotency key; `true` when it is new.
    fn reserve_outbound(&self, message: NewMessage) -> StoreFuture<(MessageRecord, bool)>;
    /// Forgets a reservation whose debit was refused (nothing was reserved).
    fn forget_reservation(&self, message_id: i64) -> StoreFuture<()>;
    /// Moves a message still reserved, and not being voided, to sent with
    /// Twilio's sid; answers it as it then stands (sent with this sid only
    /// if the move was made here, or before with the same sid), and a
    /// status Twilio reported for the sid before it was recorded. A sid
    /// another message holds is refused ([`MarkSentError::SidTaken`]),
    /// also when two instances record it at once.
    fn mark_sent(
        &self,
        message_id: i64,
        twilio_sid: String,
        twilio_status: String,
        price_check_at: i64,
    ) -> StoreFuture<(Option<MessageRecord>, Option<String>), MarkSentError>;
    /// Begins giving a reserved message's cost back: from then on it is
    /// never marked sent, only voided (again, if a void stopped half-way).
    /// A message resolved already is answered as it stands.
    fn begin_void(&self, message_id: i64) -> StoreFuture<VoidStart>;
    /// Moves a reserved message to voided; `false` if it was not reserved.
    fn mark_voided(&self, message_id: i64) -> StoreFuture<bool>;
    /// Reservations to resolve: still reserved, not under the lease of a
    /// sweep by a live instance, and either reserved before
    /// `stale_before_ms` or reserved longer than `fallback_timeout_ms` ago
    /// by an instance that is gone (a crash between the debit and the
    /// send). An instance is gone once its last heartbeat is older than its
    /// own timeout (`instances.timeout_ms`; `fallback_timeout_ms` for a row
    /// without it): each is judged by its own, never by the sweeper's. Each is put
    /// under the sweeping instance's lease in the same transaction (on
    /// Postgres, rows another instance is taking are skipped), oldest
    /// first; a lease taken by an instance that stopped since lapses with
    /// it.
    fn claim_open_reservations(&self, sweep: ReservationSweep)
        -> StoreFuture<Vec<OpenReservation>>;
    /// Records a status Twilio reported; a status for a sid not recorded
    /// yet is kept for [`MessageStore::mark_sent`] (and `None` answered).
    fn record_status(
        &self,
        twilio_sid: String,
        status: String,
        now_ms: i64,
    ) -> StoreFuture<Option<MessageRecord>>;
    /// Marks a message refunded; `false` if it already was.
    fn mark_refunded(&self, message_id: i64) -> StoreFuture<bool>;
    /// Records a service message (not charged, but costed).
    fn record_service(&self, message: NewMessage) -> StoreFuture<MessageRecord>;
    /// The reply a MessageSid got if it was answered before (`Some(reply)`,
    /// where `reply` is `None` for "no reply") and, if not, the account of
    /// `phone`: read at one moment.
    fn inbound_reply_and_account(
        &self,
        message_sid: String,
        phone: Option<PhoneNumber>,
    ) -> StoreFuture<(Option<Option<String>>, Option<Account>)>;
    /// Claims an inbound SMS for this instance before a command with an
    /// effect outside the store (a charge) runs, so that a retry of the same
    /// MessageSid reaching another instance waits for this one's reply.
    /// Taken over when the claim is this instance's, has lapsed or was let
    /// go ([`MessageStore::release_inbound`]); the same call renews it.
    fn claim_inbound(
        &self,
        message_sid: String,
        from: String,
        body: String,
        instance_id: String,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreFuture<InboundClaim>;
    /// Records an inbound SMS and its reply (and the reply's cost), unless
    /// its MessageSid was answered before (then the reply it got) or
    /// another instance is answering it. A claim of this instance on it,
    /// or a claim let go, becomes the answer (`Mine`: this reply was
    /// recorded; `Withheld`: no reply was, the number having opted out).
    /// Its `opt_change` is applied in the same transaction, only with a
    /// new answer.
    fn record_inbound(&self, inbound: InboundRecord) -> StoreFuture<InboundClaim>;
    /// Lets go of this instance's claim on an inbound SMS without an answer
    /// (what it asked for has no known outcome yet: a charge Stripe did not
    /// answer), so that a retry of the MessageSid, on any instance, claims
    /// it at once and asks again; records the cost of the reply sent
    /// meanwhile, if any. `false` when the claim was not this instance's.
    fn release_inbound(
        &self,
        message_sid: String,
        instance_id: String,
        reply_cost: Option<NewMessage>,
    ) -> StoreFuture<bool>;
    /// Sent messages whose Twilio price is due; each is put off to
    /// `lease_until` in the same transaction, so that no other worker looks
    /// it up at the same time.
    fn claim_price_checks(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<PriceCheck>>;
    /// Stores Twilio's price, or when to look again (`None`: give up).
    fn record_price_check(
        &self,
        message_id: i64,
        actual_cost: Option<Money>,
        next_check_at: Option<i64>,
    ) -> StoreFuture<()>;
    /// What every sent message cost, for the reconciliation report.
    fn sent_costs(&self) -> StoreFuture<Vec<SentCost>>;
    /// Pending notices that are due, each moved to `sending` under a lease
    /// until `lease_until_ms` (its attempts counted), oldest first.
    fn claim_notices(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> StoreFuture<Vec<Notice>>;
    /// An account's messages, newest first.
    fn messages_of(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<MessageRecord>>;
    /// The low-balance warning still `pending` that waits for an outbound
    /// message (its debit set it off), if there is one.
    fn pending_warning_after(&self, message_id: i64) -> StoreFuture<Option<i64>>;
    /// An account's notices, newest first.
    fn notices_of(&self, account_id: AccountId, limit: i64) -> StoreFuture<Vec<Notice>>;
    /// Notices still `sending` after their lease (their worker stopped
    /// mid-send) become `unknown`; answers how many.
    fn abandon_stale_notices(&self, now_ms: i64) -> StoreFuture<usize>;
    /// A notice Twilio took, with what it cost (a service message), in one
    /// transaction.
    fn notice_sent(
        &self,
        notice_id: i64,
        twilio_sid: String,
        cost: NewMessage,
        now_ms: i64,
    ) -> StoreFuture<()>;
    /// A notice to try again from `next_attempt_at`.
    fn notice_retry(&self, notice_id: i64, next_attempt_at: i64, error: String) -> StoreFuture<()>;
    /// A notice that will not be sent (again): `failed` or `unknown`.
    fn notice_ended(&self, notice_id: i64, state: NoticeState, error: String) -> StoreFuture<()>;
}

/// The instances (processes) sharing the database.
pub trait InstanceStore: Send + Sync {
    /// Records this instance as alive now (at start, then every few
    /// seconds), and how long after this heartbeat it counts as gone to the
    /// others (its own `instance_timeout_secs`: each instance is judged by
    /// its own, see [`MessageStore::claim_open_reservations`]).
    fn heartbeat(
        &self,
        instance_id: String,
        now_ms: i64,
        timeout_ms: Option<i64>,
    ) -> StoreFuture<()>;
    /// Forgets this instance (a clean stop): what it left is anyone's.
    fn leave(&self, instance_id: String) -> StoreFuture<()>;
}

/// A copy's source (`copy`'s --from, restore's copy of its backup), opened
/// to be read only (`adapters::open_source`): never migrated, never written,
/// its journal mode never changed; a source whose migration history is not
/// this release's is refused when it is opened.
pub trait SourceStore: Send + Sync {
    /// Every instance that has a row (its last heartbeat and own timeout),
    /// read as it is now, outside the copy's moment (a connection of its
    /// own): whether it is alive is judged by its own timeout.
    fn beats(&self) -> StoreFuture<Vec<InstanceBeat>>;
    /// The verify report of the whole source, read in the copy's moment:
    /// the first read of the source's rows begins one read transaction
    /// (SQLite's read snapshot, Postgres' `REPEATABLE READ`) that every
    /// page is read in too, until [`SourceStore::end_moment`], so that
    /// what a copy holds is one moment of its source.
    fn verify(&self) -> StoreFuture<VerifyReport>;
    /// Up to `limit` rows of `table` whose key comes after `after` (from
    /// the first when `None`), in key order, read in the copy's moment.
    fn export_page(
        &self,
        table: &'static Table,
        after: Option<CopyRow>,
        limit: i64,
    ) -> StoreFuture<Vec<CopyRow>>;
    /// Ends the copy's moment (its read transaction), once every row is
    /// read.
    fn end_moment(&self) -> StoreFuture<()>;
}

/// Moving every row from one store to another (`sms-credit copy`).
pub trait CopyStore: Send + Sync {
    /// Up to `limit` rows of `table` whose key comes after `after` (from
    /// the first when `None`), in key order.
    fn export_page(
        &self,
        table: &'static Table,
        after: Option<CopyRow>,
        limit: i64,
    ) -> StoreFuture<Vec<CopyRow>>;
    /// Checks that this store holds no data, then writes every page it
    /// receives, all in one transaction, which commits only when the export
    /// says it finished and [`super::copy::check_import`] passes on what
    /// the transaction holds (its verify read inside it); without the
    /// export's last word, or with a check that fails, nothing is written.
    fn import(
        &self,
        pages: tokio::sync::mpsc::Receiver<CopyMessage>,
    ) -> StoreFuture<Imported, CopyError>;
    /// Every row of every copied table as one moment of the database (one
    /// read transaction: SQLite's read snapshot, Postgres' `REPEATABLE
    /// READ`), handed over a page at a time while writers go on; answers
    /// each table's row count (the caller sends the last word).
    fn export_snapshot(
        &self,
        pages: tokio::sync::mpsc::Sender<CopyMessage>,
    ) -> StoreFuture<Vec<(&'static str, u64)>, CopyError>;
    /// Writes one moment of the whole database into a new SQLite file at
    /// `path` with the database's own means, beside the writers, and
    /// answers `true` (SQLite: `VACUUM INTO`); answers `false` when it has
    /// none (Postgres: its rows go through [`CopyStore::export_snapshot`]).
    fn snapshot_file(&self, path: std::path::PathBuf) -> StoreFuture<bool>;
    /// Empties the tables a copy leaves out (the running instances, change
    /// notes, feed tickets), so that a file made by
    /// [`CopyStore::snapshot_file`] holds what any backup holds and nothing
    /// of the processes that were running on its source.
    fn forget_processes(&self) -> StoreFuture<()>;
}

/// The record of the backups taken (`sms-credit backup`).
pub trait BackupStore: Send + Sync {
    /// Records a backup just put in place.
    fn record_backup(&self, backup: BackupRecord) -> StoreFuture<()>;
    /// The backup taken last (by the time its snapshot was read).
    fn last_backup(&self) -> StoreFuture<Option<BackupRecord>>;
}

/// Numbers that opted out of texts (see `opt_outs`).
pub trait OptOutStore: Send + Sync {
    /// The number's opt-out, if it opted out.
    fn opt_out_of(&self, phone: PhoneNumber) -> StoreFuture<Option<OptOut>>;
    /// Records that the number opted out; an opt-out already recorded
    /// stands as it was.
    fn record_opt_out(
        &self,
        phone: PhoneNumber,
        via: OptOutVia,
        keyword: Option<String>,
        now_ms: i64,
    ) -> StoreFuture<()>;
    /// Records that the carrier refused to text the number (Twilio's
    /// 21610) for a message sent at `sent_at_ms` (`None`: not known),
    /// unless the number opted back in (START) after that message was
    /// sent: answers whether the opt-out was recorded (or already stood).
    fn record_carrier_opt_out(
        &self,
        phone: PhoneNumber,
        sent_at_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreFuture<bool>;
}

/// A store: every port, from one adapter.
pub trait Backend:
    LedgerStore
    + GrantExpiryStore
    + AccountStore
    + TokenStore
    + FeedTicketStore
    + SignInStore
    + BillingStore
    + StripeEventStore
    + MessageStore
    + OptOutStore
    + AutoTopUpStore
    + InstanceStore
    + CopyStore
    + BackupStore
    + WebhookStore
    + ReportStore
{
}

/// What the operator's console charts.
pub trait ReportStore: Send + Sync {
    /// Payments, refunds, messages and segments by hour since `since_ms`.
    fn activity(&self, since_ms: i64) -> StoreFuture<Vec<HourFigures>>;
    /// Messages sent since `since_ms` by destination country: charged
    /// against the carrier's price.
    fn margins(&self, since_ms: i64) -> StoreFuture<Vec<CountryMargin>>;
    /// What needs the operator's attention: balances below `threshold`,
    /// auto top-ups off with a reason, notices not sent, messages
    /// reserved before `reserved_before_ms`, and disputes still open;
    /// each list at most `limit`.
    fn attention(
        &self,
        threshold: Money,
        reserved_before_ms: i64,
        limit: i64,
    ) -> StoreFuture<Attention>;
    /// Whether auto top-up is on, and the last balance change, of these
    /// accounts (those that exist).
    fn account_activity(&self, account_ids: Vec<i64>) -> StoreFuture<Vec<AccountActivity>>;
    /// The books of `period`: every ledger row made before its end, with
    /// its funding and the grant it made, placed by [`crate::books`] in
    /// one read of one moment of the ledger (a row with its funding
    /// missing, or an account whose grants were never made, is an error),
    /// asked for at `as_of_ms` (the caller's clock, taken just before):
    /// with, from the same moment, whether the expiry sweep stands past
    /// every grant that expired before the period's end, so that the books
    /// say whether the period is closed.
    fn credit_books(&self, period: Period, as_of_ms: i64) -> StoreFuture<CreditBooks, BooksError>;
}

/// Webhooks: the endpoints, the outbox of events and their deliveries.
/// Events made by a change are committed by the operation that makes the
/// change (a ledger write, an order's completion, …); those here are for
/// events of their own.
pub trait WebhookStore: Send + Sync {
    fn create_endpoint(&self, endpoint: NewEndpoint) -> StoreFuture<Endpoint>;
    /// Every endpoint not removed, oldest first.
    fn endpoints(&self) -> StoreFuture<Vec<Endpoint>>;
    fn endpoint(&self, id: String) -> StoreFuture<Option<Endpoint>>;
    /// Applies a change; enabling clears the failure record and the reason
    /// it was disabled; disabling ends every delivery not yet made (each
    /// listed among its tries as
    /// [`ENDED_DISABLED`](crate::webhooks::delivery::ENDED_DISABLED)), in the same
    /// transaction, at `now_ms`. `None` if there is no such endpoint.
    fn update_endpoint(
        &self,
        id: String,
        change: EndpointChange,
        now_ms: i64,
    ) -> StoreFuture<Option<Endpoint>>;
    /// Removes an endpoint: nothing more is delivered to it, and every
    /// delivery not yet made is ended; its history stays until pruned.
    /// `false` if there was none.
    fn remove_endpoint(&self, id: String, now_ms: i64) -> StoreFuture<bool>;
    /// A new secret; the current one keeps signing beside it until
    /// `previous_until_ms`.
    fn rotate_secret(
        &self,
        id: String,
        secret: SigningSecret,
        previous_until_ms: i64,
    ) -> StoreFuture<Option<Endpoint>>;
    /// Commits an event (once per dedupe key) and its deliveries, one per
    /// enabled endpoint that takes it; `false` if its key was there
    /// already. (Callers of the operations that make deliveries tell the
    /// worker: `Store::webhooks_ready`.)
    fn record_event(&self, event: NewEvent) -> StoreFuture<bool>;
    /// Commits an event for one enabled endpoint only (the test event),
    /// whatever its filter.
    fn record_test_event(
        &self,
        endpoint_id: String,
        event: NewEvent,
    ) -> StoreFuture<ForEnabled<()>>;
    /// Due deliveries of enabled endpoints (pending and due, or sending
    /// with a lapsed lease), moved to `sending` under a lease until
    /// `lease_until_ms` by `instance`, each claim numbered by the
    /// delivery's tries; at most `per_endpoint` sending per endpoint,
    /// across every instance on the database (the count and the claim
    /// are made under the endpoint's lock).
    fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        per_endpoint: i64,
        limit: i64,
        instance: String,
    ) -> StoreFuture<Vec<ClaimedDelivery>>;
    /// Records one try and, only if the delivery is still under the try's
    /// claim, its consequences (the delivery's state, the endpoint's
    /// failure record, disabling it — which ends its other deliveries —
    /// and telling the others), in one transaction. A try whose claim was
    /// lost is recorded as a try alone: [`TryRecorded::Late`].
    fn attempted(&self, attempt: Attempted) -> StoreFuture<TryRecorded>;
    /// An endpoint's tries (and deliveries ended unsent), the latest first.
    fn attempts_of(&self, endpoint_id: String, limit: i64) -> StoreFuture<Vec<AttemptRecord>>;
    /// Delivers again, with their ids, the events created since `since_ms`
    /// that the endpoint's filter takes (an enabled endpoint only); how
    /// many.
    fn replay(
        &self,
        endpoint_id: String,
        since_ms: i64,
        now_ms: i64,
    ) -> StoreFuture<ForEnabled<usize>>;
    /// Ends up to `limit` deliveries not yet made of endpoints that are
    /// disabled or removed (those an event committed beside the change
    /// that disabled it may have made); how many.
    fn end_deliveries_of_disabled(&self, now_ms: i64, limit: i64) -> StoreFuture<usize>;
    /// Removes up to `limit` deliveries made or ended before `before_ms`
    /// with their tries, then up to `limit` events created before it that
    /// no delivery needs any more.
    fn prune(&self, before_ms: i64, limit: i64) -> StoreFuture<Pruned>;
    /// Deliveries not yet made (pending or sending).
    fn delivery_stats(&self) -> StoreFuture<DeliveryStats>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn funding(text: &str) -> Funding {
        Funding::decode(text).unwrap()
    }

    #[test]
    fn an_orders_take_back_without_its_funding_is_an_error_not_nothing_taken() {
        let taken = TakenBackRows::of_rows(
            7,
            vec![
                (Money::from_micros(-4_000), funding("1:p:3000;0:p:1000")),
                (Money::from_micros(500), funding("0:p:-500")),
            ],
        )
        .unwrap();
        assert_eq!(taken.amount, Money::from_micros(3_500));
        assert_eq!(taken.funding, funding("1:p:3000;0:p:500"));
        // A give-back may make a grant of what it gives: it says no more.
        assert!(TakenBackRows::of_rows(7, vec![(Money::from_micros(500), Funding::NONE)]).is_ok());
        let error = TakenBackRows::of_rows(
            7,
            vec![
                (Money::from_micros(-4_000), funding("1:p:3000;0:p:1000")),
                (Money::from_micros(-1_000), Funding::NONE),
            ],
        )
        .unwrap_err();
        assert!(
            error.to_string().contains(
                "order 7: a refund row took back $0.001 without saying from which credit grants"
            ),
            "{error}"
        );
    }
}
