//! Reservations left open are resolved by asking Twilio: a send whose
//! answer was lost, whose request was dropped mid-send, or whose sent mark
//! failed to commit, on a live instance or one that stopped. Found at
//! Twilio, the message is sent and stays charged; not found once no send
//! can be under way, its cost is given back once; Twilio not answering,
//! it waits for the next sweep. Two instances sweeping at once resolve
//! each message once, and one Twilio message is never two messages' send.

use std::sync::Arc;
use std::time::Duration;

use awc::http::StatusCode;
use serde_json::{json, Value};
use sms_credit::startup::Core;
use sms_credit_actors::clock::{Clock, ManualClock};
use sms_credit_actors::messaging::records::{MessageRecord, MessageState};
use sms_credit_actors::messaging::reservations::SweepReport;
use sms_credit_actors::messaging::{MessagingError, OutboundRequest};
use sms_credit_actors::{AccountId, IdempotencyKey};

use crate::database::TestDatabase;
use crate::fake_twilio::{FakeTwilio, SendMode};
use crate::helpers::{fresh_directory, test_settings, with_twilio, TestApp, ADMIN_TOKEN};
use crate::ledger_actors::{assert_verified, credit, new_account};
use crate::twilio::account_with_balance;

const START_MS: i64 = 1_795_253_400_000;
/// What "Storm at 3pm" costs to a US number.
const COST: i64 = 56_500;
const MINUTE_MS: i64 = 60_000;
/// An instance counts as gone this long after its last heartbeat (the
/// default setting).
const TIMEOUT_MS: i64 = 30_000;

/// A core (no HTTP, no background jobs: the test runs the sweeps) with
/// Twilio at `fake`, on `clock`, and an account holding `micros`.
async fn core_with_account(
    directory: &TestDatabase,
    fake: &FakeTwilio,
    clock: &ManualClock,
    phone: &str,
    micros: i64,
) -> (Core, AccountId) {
    let core = start_core(directory, fake, clock);
    let account = new_account(&core, phone).await;
    core.registry
        .send(account, credit(micros, "seed"))
        .await
        .unwrap();
    (core, account)
}

fn start_core(directory: &TestDatabase, fake: &FakeTwilio, clock: &ManualClock) -> Core {
    start_core_judged_after(
        directory,
        fake,
        clock,
        Duration::from_millis(TIMEOUT_MS as u64),
    )
}

/// A core whose instance counts as gone `timeout` after its last
/// heartbeat (its `instance_timeout_secs`).
fn start_core_judged_after(
    directory: &TestDatabase,
    fake: &FakeTwilio,
    clock: &ManualClock,
    timeout: Duration,
) -> Core {
    let mut settings = with_twilio(test_settings(directory), &fake.base_url);
    settings.database.instance_timeout = timeout;
    Core::start(&settings, Arc::new(clock.clone())).unwrap()
}

fn request(account: AccountId, body: &str, key: &str) -> OutboundRequest {
    OutboundRequest {
        account_id: Some(account),
        to: None,
        body: body.into(),
        idempotency_key: key.into(),
    }
}

/// One sweep by `core`, as its instance job runs it: its heartbeat first
/// (it is alive), then the sweep with the instance timeout.
async fn sweep(core: &Core, clock: &ManualClock) -> SweepReport {
    sweep_judging_by(core, clock, TIMEOUT_MS).await
}

/// A sweep by `core` whose own instance timeout is `timeout_ms`.
async fn sweep_judging_by(core: &Core, clock: &ManualClock, timeout_ms: i64) -> SweepReport {
    beat(core, clock).await;
    core.messaging
        .as_ref()
        .unwrap()
        .resolve_reservations(clock.now_ms(), timeout_ms)
        .await
        .unwrap()
}

/// `core`'s heartbeat, now.
async fn beat(core: &Core, clock: &ManualClock) {
    core.store
        .instances()
        .heartbeat(
            core.store.instance_id().to_string(),
            clock.now_ms(),
            core.store.instance_timeout_ms(),
        )
        .await
        .unwrap();
}

/// The account's committed balance, read from the database (another
/// instance's actor may not have heard of this one's writes yet).
async fn balance(core: &Core, account: AccountId) -> i64 {
    core.store
        .ledger()
        .snapshot(account)
        .await
        .unwrap()
        .expect("the account has a balance")
        .balance
        .micros()
}

async fn messages(core: &Core, account: AccountId) -> Vec<MessageRecord> {
    let mut messages = core
        .store
        .messages()
        .messages_of(account, 100)
        .await
        .unwrap();
    messages.retain(|message| message.charged.is_positive());
    messages.reverse();
    messages
}

/// Whether the ledger holds a row of the account under `key`.
async fn has_row(core: &Core, account: AccountId, key: IdempotencyKey) -> bool {
    core.store
        .ledger()
        .entry_by_key(account, key)
        .await
        .unwrap()
        .is_some()
}

on_both_stores!(a_message_twilio_took_whose_sent_mark_failed_is_found_and_stays_charged);
/// Twilio takes the message; recording that fails to commit. The host is
/// told the outcome is unknown (never "not sent"), a retry is in progress,
/// and the low-balance warning its debit set off waits. The sweep leaves
/// it alone while its own send could still be under way, then asks
/// Twilio, finds it, and marks it sent: the debit stands, nothing is given
/// back, the warning goes out, and the same key answers the message.
async fn a_message_twilio_took_whose_sent_mark_failed_is_found_and_stays_charged() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    fake.use_clock(Arc::new(clock.clone()));
    // Below $2.00 after the message: a warning waits for it.
    let (core, account) =
        core_with_account(&directory, &fake, &clock, "+14155553000", 2_050_000).await;
    let messaging = core.messaging.clone().unwrap();
    // The reservation and the debit commit; the sent mark does not.
    core.store.fail_commit_after_for_testing(Some(2));
    let sent = messaging
        .send_outbound(request(account, "Storm at 3pm", "mark-fails"), START_MS)
        .await;
    assert!(
        matches!(sent, Err(MessagingError::OutcomeUnknown(_))),
        "{sent:?}"
    );
    let taken = fake.sent();
    assert_eq!(taken.len(), 1, "Twilio took it: {taken:?}");
    let again = messaging
        .send_outbound(request(account, "Storm at 3pm", "mark-fails"), START_MS)
        .await;
    assert_eq!(again, Err(MessagingError::InProgress));
    assert_eq!(balance(&core, account).await, 2_050_000 - COST);
    assert_eq!(messaging.deliver_notices().await.unwrap(), 0, "it waits");

    // Its own send could still be under way: left alone, Twilio not asked.
    clock.advance_ms(MINUTE_MS);
    assert_eq!(sweep(&core, &clock).await, SweepReport::default());
    assert_eq!(fake.lists_asked(), 0);

    clock.advance_ms(2 * MINUTE_MS);
    let report = sweep(&core, &clock).await;
    assert_eq!(report.sent, 1, "{report:?}");
    let [message] = &messages(&core, account).await[..] else {
        panic!("one message");
    };
    assert_eq!(message.state, MessageState::Sent);
    assert_eq!(message.twilio_sid.as_deref(), Some(taken[0].sid.as_str()));
    assert_eq!(
        balance(&core, account).await,
        2_050_000 - COST,
        "still charged"
    );
    assert!(!has_row(&core, account, IdempotencyKey::message_void(message.id)).await);
    let answered = messaging
        .send_outbound(
            request(account, "Storm at 3pm", "mark-fails"),
            clock.now_ms(),
        )
        .await
        .unwrap();
    assert!(answered.replayed, "{answered:?}");
    assert_eq!(answered.message.twilio_sid, message.twilio_sid);
    // The warning went on once the message was resolved.
    assert_eq!(messaging.deliver_notices().await.unwrap(), 1);
    assert!(fake.sent()[1].body.contains("credit is low"));

    clock.advance_ms(30 * MINUTE_MS);
    assert_eq!(sweep(&core, &clock).await, SweepReport::default());
    assert_eq!(balance(&core, account).await, 2_050_000 - COST);
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_message_twilio_lists_failed_is_given_back_whatever_it_called_back_before);
/// The sent mark of a message Twilio took fails; Twilio calls back `sent`
/// (kept, as the sid is not recorded yet) and later fails the message,
/// whose `failed` callback never arrives. The sweep finds it listed
/// `failed`: that final status, not the earlier `sent`, settles it, and
/// its cost is given back once.
async fn a_message_twilio_lists_failed_is_given_back_whatever_it_called_back_before() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    fake.use_clock(Arc::new(clock.clone()));
    let (core, account) =
        core_with_account(&directory, &fake, &clock, "+14155553005", 5_000_000).await;
    let messaging = core.messaging.clone().unwrap();
    core.store.fail_commit_after_for_testing(Some(2));
    let sent = messaging
        .send_outbound(request(account, "Storm at 3pm", "listed-failed"), START_MS)
        .await;
    assert!(
        matches!(sent, Err(MessagingError::OutcomeUnknown(_))),
        "{sent:?}"
    );
    let taken = fake.sent();
    assert_eq!(taken.len(), 1, "Twilio took it: {taken:?}");
    messaging
        .handle_status(&taken[0].sid, "sent", START_MS)
        .await
        .unwrap();
    fake.list_status(Some("failed"));

    clock.advance_ms(3 * MINUTE_MS);
    let report = sweep(&core, &clock).await;
    assert_eq!(report.sent, 1, "{report:?}");
    let [message] = &messages(&core, account).await[..] else {
        panic!("one message");
    };
    assert_eq!(
        (message.twilio_status.as_deref(), message.refunded),
        (Some("failed"), true),
        "a message Twilio failed is given back: {message:?}"
    );
    assert_eq!(balance(&core, account).await, 5_000_000, "nothing charged");
    clock.advance_ms(30 * MINUTE_MS);
    sweep(&core, &clock).await;
    assert_eq!(balance(&core, account).await, 5_000_000, "given back once");
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_send_twilio_never_took_is_given_back_once_when_no_send_can_be_under_way);
/// Twilio drops the connection without taking the message: the host is
/// told the outcome is unknown. Twilio showing nothing two minutes on, the
/// message is left (a send could still appear); at ten minutes with Twilio
/// not answering, left too; once Twilio answers with nothing, its cost is
/// given back, once, and the same key answers "not sent".
async fn a_send_twilio_never_took_is_given_back_once_when_no_send_can_be_under_way() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    fake.use_clock(Arc::new(clock.clone()));
    let (core, account) =
        core_with_account(&directory, &fake, &clock, "+14155553010", 5_000_000).await;
    let messaging = core.messaging.clone().unwrap();
    fake.set_mode(SendMode::DropUntaken);
    let sent = messaging
        .send_outbound(request(account, "Storm at 3pm", "untaken"), START_MS)
        .await;
    assert!(
        matches!(sent, Err(MessagingError::OutcomeUnknown(_))),
        "{sent:?}"
    );
    assert!(fake.sent().is_empty());
    fake.set_mode(SendMode::Accept);
    assert_eq!(balance(&core, account).await, 5_000_000 - COST);

    clock.advance_ms(3 * MINUTE_MS);
    let report = sweep(&core, &clock).await;
    assert_eq!(report.left, 1, "too early to say: {report:?}");
    assert_eq!(fake.lists_asked(), 1);
    assert_eq!(
        messages(&core, account).await[0].state,
        MessageState::Reserved
    );

    clock.advance_ms(8 * MINUTE_MS);
    fake.fail_lists(true);
    let report = sweep(&core, &clock).await;
    assert_eq!(report.left, 1, "Twilio did not answer: {report:?}");
    assert_eq!(
        messages(&core, account).await[0].state,
        MessageState::Reserved
    );
    assert_eq!(balance(&core, account).await, 5_000_000 - COST);

    // Under the last sweep's lease: not asked again before it ends.
    fake.fail_lists(false);
    assert_eq!(sweep(&core, &clock).await, SweepReport::default());
    clock.advance_ms(MINUTE_MS);
    let report = sweep(&core, &clock).await;
    assert_eq!(report.given_back, 1, "{report:?}");
    let [message] = &messages(&core, account).await[..] else {
        panic!("one message");
    };
    assert_eq!(message.state, MessageState::Voided);
    assert_eq!(balance(&core, account).await, 5_000_000);
    assert!(has_row(&core, account, IdempotencyKey::message_void(message.id)).await);
    clock.advance_ms(30 * MINUTE_MS);
    assert_eq!(sweep(&core, &clock).await, SweepReport::default());
    assert_eq!(balance(&core, account).await, 5_000_000, "given back once");
    let again = messaging
        .send_outbound(request(account, "Storm at 3pm", "untaken"), clock.now_ms())
        .await;
    assert!(matches!(again, Err(MessagingError::KeySpent)), "{again:?}");
    assert!(fake.sent().is_empty(), "never sent again");
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(an_instance_with_a_longer_timeout_is_alive_to_one_with_a_shorter_one);
/// An instance started with a 300 s timeout (it beats every 75 s) beats,
/// then reserves a message whose send is in flight (Twilio has not
/// answered). 3 s on, an instance with a 2 s timeout sweeps: by its own
/// timeout the first is gone, by the first's own it is alive, so the
/// reservation is left to it: nothing is claimed, Twilio is not asked,
/// nothing is given back.
async fn an_instance_with_a_longer_timeout_is_alive_to_one_with_a_shorter_one() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    fake.use_clock(Arc::new(clock.clone()));
    let patient = start_core_judged_after(&directory, &fake, &clock, Duration::from_secs(300));
    let account = new_account(&patient, "+14155553015").await;
    patient
        .registry
        .send(account, credit(5_000_000, "seed"))
        .await
        .unwrap();
    beat(&patient, &clock).await;
    fake.set_mode(SendMode::DropUntaken);
    let sent = patient
        .messaging
        .clone()
        .unwrap()
        .send_outbound(
            request(account, "Storm at 3pm", "in-flight"),
            clock.now_ms(),
        )
        .await;
    assert!(
        matches!(sent, Err(MessagingError::OutcomeUnknown(_))),
        "{sent:?}"
    );
    fake.set_mode(SendMode::Accept);

    clock.advance_ms(3_000);
    let hasty = start_core_judged_after(&directory, &fake, &clock, Duration::from_secs(2));
    assert_eq!(
        sweep_judging_by(&hasty, &clock, 2_000).await,
        SweepReport::default(),
        "the reservation of a live instance is its own"
    );
    // An earlier release's server wrote no timeout beside its heartbeat:
    // its name (`…-300000ms`) says it.
    assert!(patient.store.instance_id().ends_with("-300000ms"));
    directory.execute("UPDATE instances SET timeout_ms = NULL");
    assert_eq!(
        sweep_judging_by(&hasty, &clock, 2_000).await,
        SweepReport::default(),
        "judged by the timeout its name says"
    );
    assert_eq!(fake.lists_asked(), 0, "Twilio was not asked");
    assert_eq!(
        messages(&patient, account).await[0].state,
        MessageState::Reserved
    );
    assert_eq!(balance(&patient, account).await, 5_000_000 - COST);
    hasty.shutdown().await;
    patient.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(two_instances_sweeping_at_once_resolve_each_message_once);
/// Four messages left open on one account: one Twilio took; two of one
/// body, of which Twilio took one; one Twilio never took. Two instances
/// sweep at once: each message is resolved once, the Twilio message of
/// the twins is the send of one of them only, and the cost of the two not
/// sent is given back once each.
async fn two_instances_sweeping_at_once_resolve_each_message_once() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    fake.use_clock(Arc::new(clock.clone()));
    let (first, account) =
        core_with_account(&directory, &fake, &clock, "+14155553020", 5_000_000).await;
    let second = start_core(&directory, &fake, &clock);
    let messaging = first.messaging.clone().unwrap();
    for (body, key, mode) in [
        ("Storm at 3pm", "taken", SendMode::TakeThenDrop),
        ("Storm at 4pm", "twin-1", SendMode::TakeThenDrop),
        ("Storm at 4pm", "twin-2", SendMode::DropUntaken),
        ("Storm at 5pm", "untaken", SendMode::DropUntaken),
    ] {
        fake.set_mode(mode);
        let sent = messaging
            .send_outbound(request(account, body, key), clock.now_ms())
            .await;
        assert!(
            matches!(sent, Err(MessagingError::OutcomeUnknown(_))),
            "{sent:?}"
        );
        clock.advance_ms(1_000);
    }
    fake.set_mode(SendMode::Accept);
    assert_eq!(fake.sent().len(), 2);
    assert_eq!(balance(&first, account).await, 5_000_000 - 4 * COST);

    clock.advance_ms(11 * MINUTE_MS);
    let (one, other) =
        futures_util::future::join(sweep(&first, &clock), sweep(&second, &clock)).await;
    assert_eq!(
        (one.sent + other.sent, one.given_back + other.given_back),
        (2, 2),
        "{one:?} {other:?}"
    );
    let resolved = messages(&first, account).await;
    let states: Vec<(&str, Option<&str>)> = resolved
        .iter()
        .map(|message| (message.state.as_str(), message.twilio_sid.as_deref()))
        .collect();
    let taken = fake.sent();
    let (taken_sid, twin_sid) = (taken[0].sid.as_str(), taken[1].sid.as_str());
    assert_eq!(states[0], ("sent", Some(taken_sid)), "{states:?}");
    assert!(
        states[1..3] == [("sent", Some(twin_sid)), ("voided", None)]
            || states[1..3] == [("voided", None), ("sent", Some(twin_sid))],
        "one twin is the send, the other given back: {states:?}"
    );
    assert_eq!(states[3], ("voided", None), "{states:?}");
    for message in &resolved {
        let void = IdempotencyKey::message_void(message.id);
        assert_eq!(
            has_row(&first, account, void).await,
            message.state == MessageState::Voided,
            "{message:?}"
        );
    }
    assert_eq!(balance(&first, account).await, 5_000_000 - 2 * COST);

    clock.advance_ms(30 * MINUTE_MS);
    let (one, other) =
        futures_util::future::join(sweep(&first, &clock), sweep(&second, &clock)).await;
    assert_eq!(
        (one, other),
        (SweepReport::default(), SweepReport::default())
    );
    assert_eq!(balance(&first, account).await, 5_000_000 - 2 * COST);
    first.shutdown().await;
    second.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_stopped_instances_reservation_that_twilio_sent_is_kept_not_refunded);
/// An instance stops with two messages open, which its own sweep had taken
/// under its lease (Twilio not answering): Twilio took one, and never the
/// other. Another instance's sweep takes them at once (the lease lapsed
/// with the instance that held it) and asks Twilio: the one it took is
/// sent and stays charged; the other's cost is given back at once (no send
/// of a stopped instance can still be under way).
async fn a_stopped_instances_reservation_that_twilio_sent_is_kept_not_refunded() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    fake.use_clock(Arc::new(clock.clone()));
    let (stopped, account) =
        core_with_account(&directory, &fake, &clock, "+14155553030", 5_000_000).await;
    let messaging = stopped.messaging.clone().unwrap();
    for (body, key, mode) in [
        ("Storm at 3pm", "taken", SendMode::TakeThenDrop),
        ("Storm at 4pm", "untaken", SendMode::DropUntaken),
    ] {
        fake.set_mode(mode);
        let sent = messaging
            .send_outbound(request(account, body, key), clock.now_ms())
            .await;
        assert!(
            matches!(sent, Err(MessagingError::OutcomeUnknown(_))),
            "{sent:?}"
        );
    }
    fake.set_mode(SendMode::Accept);
    // Its own sweep took them, Twilio not answering, under its lease.
    clock.advance_ms(3 * MINUTE_MS);
    fake.fail_lists(true);
    let report = sweep(&stopped, &clock).await;
    assert_eq!(report.left, 2, "{report:?}");
    fake.fail_lists(false);
    drop(messaging);
    stopped.shutdown().await;

    // The lease of an instance that stopped lapses with it.
    let survivor = start_core(&directory, &fake, &clock);
    let report = sweep(&survivor, &clock).await;
    assert_eq!((report.sent, report.given_back), (1, 1), "{report:?}");
    let resolved = messages(&survivor, account).await;
    assert_eq!(resolved[0].state, MessageState::Sent);
    assert_eq!(
        resolved[0].twilio_sid.as_deref(),
        Some(fake.sent()[0].sid.as_str())
    );
    assert_eq!(resolved[1].state, MessageState::Voided);
    assert!(
        !has_row(
            &survivor,
            account,
            IdempotencyKey::message_void(resolved[0].id)
        )
        .await
    );
    assert_eq!(balance(&survivor, account).await, 5_000_000 - COST);
    survivor.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_reservation_whose_debit_may_not_have_happened_is_given_back_only_if_it_did);
/// The debit's commit answer is lost and looking it up fails: the message
/// stays reserved, and nothing was sent. The sweep looks the debit up by
/// its key: it happened, so once no send can be under way its cost is
/// given back. A reservation whose debit never happened is closed with
/// nothing given back (a refund of a debit that did not happen would make
/// money).
async fn a_reservation_whose_debit_may_not_have_happened_is_given_back_only_if_it_did() {
    let fake = FakeTwilio::start().await;
    let directory = fresh_directory();
    let clock = ManualClock::new(START_MS);
    fake.use_clock(Arc::new(clock.clone()));
    let (core, account) =
        core_with_account(&directory, &fake, &clock, "+14155553040", 5_000_000).await;
    let messaging = core.messaging.clone().unwrap();
    // The reservation commits; the debit commits and its answer is lost;
    // the account's read goes through, and the debit's lookup fails.
    core.store.lose_commit_answer_after_for_testing(1);
    core.store.fail_read_after_for_testing(Some(1));
    let sent = messaging
        .send_outbound(request(account, "Storm at 3pm", "lost-debit"), START_MS)
        .await;
    assert!(
        matches!(
            sent,
            Err(MessagingError::Ledger(
                sms_credit_actors::LedgerError::Store(
                    sms_credit_actors::StoreError::CommitUnknown(_)
                )
            ))
        ),
        "{sent:?}"
    );
    assert!(fake.sent().is_empty());
    // A reservation whose debit never happened (as a debit interrupted
    // before its commit leaves it).
    let mut never = core
        .store
        .messages()
        .messages_of(account, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(never.state, MessageState::Reserved);
    let (unreserved, fresh) = core
        .store
        .messages()
        .reserve_outbound(sms_credit_actors::messaging::records::NewMessage {
            account_id: Some(account),
            kind: sms_credit_actors::messaging::records::MessageKind::Outbound,
            idempotency_key: Some("never-debited".into()),
            to: never.to.clone(),
            country: never.country.clone(),
            encoding: never.encoding.clone(),
            segments: never.segments,
            price_per_segment: never.price_per_segment,
            carrier_cost_per_segment: never.price_per_segment,
            charged: never.charged,
            state: MessageState::Reserved,
            twilio_sid: None,
            next_price_check_at: None,
            created_at_ms: START_MS,
            instance_id: Some(core.store.instance_id().to_string()),
            body_sha256: None,
        })
        .await
        .unwrap();
    assert!(fresh);
    never = unreserved;
    assert_eq!(balance(&core, account).await, 5_000_000 - COST);

    clock.advance_ms(3 * MINUTE_MS);
    let report = sweep(&core, &clock).await;
    assert_eq!(report.left, 2, "{report:?}");
    clock.advance_ms(8 * MINUTE_MS);
    let report = sweep(&core, &clock).await;
    assert_eq!(report.given_back, 2, "{report:?}");
    let resolved = messages(&core, account).await;
    assert!(
        resolved
            .iter()
            .all(|message| message.state == MessageState::Voided),
        "{resolved:?}"
    );
    assert!(has_row(&core, account, IdempotencyKey::message_void(resolved[0].id)).await);
    assert!(!has_row(&core, account, IdempotencyKey::message_void(never.id)).await);
    assert_eq!(
        balance(&core, account).await,
        5_000_000,
        "given back once, and only it"
    );
    core.shutdown().await;
    assert_verified(&directory);
}

/// A server with Twilio at `fake`, on `clock`, whose instance job (and so
/// the sweep) runs every second.
async fn app_sweeping_every_second(fake: &FakeTwilio, clock: &ManualClock) -> TestApp {
    let directory = fresh_directory();
    let mut settings = with_twilio(test_settings(&directory), &fake.base_url);
    settings.database.instance_timeout = Duration::from_secs(2);
    fake.use_clock(Arc::new(clock.clone()));
    TestApp::spawn_with_clock(directory, settings, clock.clone()).await
}

/// Waits (up to 10 s) until the account's only charged message is in
/// `state`, and answers it.
async fn message_becomes(app: &TestApp, account: i64, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app
            .request(
                "GET",
                &format!("/v1/admin/accounts/{account}/messages"),
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let charged: Vec<&Value> = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|message| message["charged_micros"].as_i64() > Some(0))
            .collect();
        assert_eq!(charged.len(), 1, "{body}");
        if charged[0]["state"] == state {
            return charged[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message is not {state} within 10 s: {body}"
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_stores!(a_send_twilio_did_not_answer_is_told_unknown_and_then_answered_sent);
/// Twilio takes the message and drops the connection: the host is told
/// `504 send_outcome_unknown`, not "not sent"; the same key answers
/// `409 in_progress` while it is open. The server's own sweep finds it at
/// Twilio: the same key then answers the message, sent once, charged once.
async fn a_send_twilio_did_not_answer_is_told_unknown_and_then_answered_sent() {
    let fake = FakeTwilio::start().await;
    let clock = ManualClock::new(START_MS);
    let app = app_sweeping_every_second(&fake, &clock).await;
    let account = account_with_balance(&app, "+14155553050", 5_000_000).await;
    let message = json!({"account_id": account, "body": "Storm at 3pm", "idempotency_key": "lost"});
    fake.set_mode(SendMode::TakeThenDrop);
    let (status, body) = app.post_message(message.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("send_outcome_unknown")),
        "{body}"
    );
    fake.set_mode(SendMode::Accept);
    let (status, body) = app.post_message(message.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("in_progress")),
        "{body}"
    );
    assert_eq!(app.balance_micros(account).await, 5_000_000 - COST);

    clock.advance_ms(3 * MINUTE_MS);
    let sent = message_becomes(&app, account, "sent").await;
    let taken = fake.sent();
    assert_eq!(taken.len(), 1, "sent once: {taken:?}");
    assert_eq!(sent["twilio_sid"], taken[0].sid.as_str());
    let (status, body) = app.post_message(message).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replayed"], true);
    assert_eq!(body["message"]["twilio_sid"], taken[0].sid.as_str());
    assert_eq!(fake.sent().len(), 1, "not sent again");
    assert_eq!(app.balance_micros(account).await, 5_000_000 - COST);
    let directory = app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(a_send_whose_request_was_dropped_mid_way_is_resolved_by_the_sweep);
/// Twilio takes the message but is slow to answer, and the host's client
/// gives up and disconnects: nothing of the request is left to resolve the
/// reservation on its live instance. The server's sweep asks Twilio and
/// marks it sent; the same key answers it, charged once.
async fn a_send_whose_request_was_dropped_mid_way_is_resolved_by_the_sweep() {
    let fake = FakeTwilio::start().await;
    let clock = ManualClock::new(START_MS);
    let app = app_sweeping_every_second(&fake, &clock).await;
    let account = account_with_balance(&app, "+14155553060", 5_000_000).await;
    let message =
        json!({"account_id": account, "body": "Storm at 3pm", "idempotency_key": "dropped"});
    fake.hold_taken("Storm");
    let (client, url) = (app.client.clone(), app.url("/v1/messages"));
    let body = message.clone();
    let sending = actix_rt::spawn(async move {
        let _ = client
            .post(url)
            .insert_header((
                "Authorization",
                format!("Bearer {}", crate::helpers::API_KEY),
            ))
            .send_json(&body)
            .await;
    });
    fake.wait_for_held(1).await;
    assert_eq!(fake.sent().len(), 1, "Twilio took it");
    // The client disconnects.
    sending.abort();
    let _ = sending.await;
    assert_eq!(
        message_becomes(&app, account, "reserved").await["state"],
        "reserved"
    );

    clock.advance_ms(3 * MINUTE_MS);
    let sent = message_becomes(&app, account, "sent").await;
    let taken = fake.sent();
    assert_eq!(sent["twilio_sid"], taken[0].sid.as_str());
    let (status, body) = app.post_message(message).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["replayed"], true);
    assert_eq!(app.balance_micros(account).await, 5_000_000 - COST);
    // Twilio's answer, if the server still waited for it, changes nothing.
    fake.release();
    assert_eq!(
        message_becomes(&app, account, "sent").await["twilio_sid"],
        taken[0].sid.as_str()
    );
    assert_eq!(fake.sent().len(), 1);
    assert_eq!(app.balance_micros(account).await, 5_000_000 - COST);
    let directory = app.stop().await;
    assert_verified(&directory);
}
