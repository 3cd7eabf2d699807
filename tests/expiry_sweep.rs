//! The sweep of expired grants (#36): an account nobody touches gets the
//! expiry row of a grant that expired with credit left within one round of
//! the sweep (every 30 s of the clock), dated when the grant expired, with
//! `credit.expired` once; two instances sweeping one database write one
//! expiry row per grant; where the sweep stands survives a restart (the
//! grants it passed are not asked about again) and a grant that expired
//! while the server was down is expired by the first round at the start;
//! an account whose actor cannot answer holds the sweep for a bounded
//! number of rounds, never for ever. On both stores.

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};
use sms_credit_actors::clock::{format_rfc3339_ms, ManualClock};
use sms_credit_actors::expiry_sweep::{
    ExpirySweep, EXPIRY_SWEEP_EVERY_MS, HOLD_ROUNDS, LOOK_BACK_EVERY_MS, LOOK_BACK_MS,
};
use sms_credit_actors::grants::Category;
use sms_credit_actors::store::ports::GrantExpiry;
use sms_credit_actors::{AccountId, ExpireDue, IdempotencyKey, LedgerError, Money, Refund};

use crate::database::TestDatabase;
use crate::grants::{adjust, core_at, draws, message_debit, paid_credit, DAY_MS, NOW_MS};
use crate::helpers::{fresh_directory, TestApp, ADMIN_TOKEN};
use crate::ledger_actors::{assert_verified, new_account};
use crate::webhook_receiver::Receiver;

/// How long a test waits, in real time, for what a round does once the
/// clock has moved past its period (the sweep looks at the clock every
/// second).
const ROUND_WAIT: Duration = Duration::from_secs(15);

/// Waits (up to [`ROUND_WAIT`]) until `done` holds, naming `what` if it
/// never does.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + ROUND_WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "waited {} s for {what}",
            ROUND_WAIT.as_secs()
        );
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An account's expiry rows as `seq:created_at:amount`, in order.
fn expiry_rows(directory: &TestDatabase, account: i64) -> Vec<String> {
    directory
        .texts(&format!(
            "SELECT seq || ':' || created_at || ':' || amount FROM transactions
              WHERE account_id = {account} AND type = 'expiry' ORDER BY seq"
        ))
        .into_iter()
        .map(Option::unwrap)
        .collect()
}

/// Where the sweep stands, as `expires_at:account:grant` (none: nowhere).
fn swept_until(directory: &TestDatabase) -> Option<String> {
    directory
        .texts(
            "SELECT swept_until || ':' || swept_account_id || ':' || swept_grant_id
               FROM grant_expiry_sweep",
        )
        .remove(0)
}

async fn post_adjustment(app: &TestApp, account: i64, body: Value) {
    let (status, answer) = app
        .request(
            "POST",
            &format!("/v1/admin/accounts/{account}/adjustments"),
            Some(ADMIN_TOKEN),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

on_both_stores!(an_untouched_accounts_grant_is_expired_within_one_round_of_the_sweep);
/// Nothing touches the account after its grants are made. Once the clock
/// is past the promotional grant's expiry, the next round (due at once:
/// the clock moved on by more than its period) writes the expiry row,
/// dated when the grant expired; the balance is the paid credit;
/// `credit.expired` says when it expired and is itself dated when it was
/// written. A second round asks the actor again (the grant expired less
/// than the settling time before the first), which writes nothing: one
/// row, one event.
async fn an_untouched_accounts_grant_is_expired_within_one_round_of_the_sweep() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let settings = crate::webhooks::webhook_settings(&directory);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let receiver = Receiver::start().await;
    let (_, secret) =
        crate::webhooks::add_endpoint(&app, &receiver.url, json!(["credit.expired"])).await;
    receiver.trust(&secret);
    let account = app.create_account("+14155550430").await;
    let expires_at = NOW_MS + DAY_MS;
    post_adjustment(
        &app,
        account,
        json!({"amount_micros": 2_000_000, "reason": "welcome", "idempotency_key": "welcome",
               "expires_at": format_rfc3339_ms(expires_at)}),
    )
    .await;
    post_adjustment(
        &app,
        account,
        json!({"amount_micros": 1_000_000, "reason": "paid outside Stripe",
               "idempotency_key": "paid", "category": "paid"}),
    )
    .await;
    assert_eq!(app.balance_micros(account).await, 3_000_000);

    // The round is written a moment after the expiry, and dated at it.
    let written_at = expires_at + 1_000;
    clock.set_ms(written_at);
    wait_for(
        &format!("the sweep to write the expiry row of account {account}'s grant 1"),
        || !expiry_rows(&directory, account).is_empty(),
    )
    .await;
    assert_eq!(
        expiry_rows(&directory, account),
        vec![format!("3:{expires_at}:-2000000")],
        "one expiry row, dated when the grant expired"
    );
    assert_eq!(app.balance_micros(account).await, 1_000_000);
    let expired = receiver.accepted("credit.expired", 1).await;
    assert_eq!(
        expired[0].body["data"],
        json!({"account_id": account, "seq": 3, "balance_micros": 1_000_000,
               "grant_id": 1, "expired_micros": 2_000_000,
               "expired_at": format_rfc3339_ms(expires_at)})
    );
    assert_eq!(expired[0].body["created_at"], format_rfc3339_ms(written_at));

    // The next round asks again, finds nothing due, and passes the grant.
    clock.set_ms(written_at + EXPIRY_SWEEP_EVERY_MS);
    let passed = format!("{expires_at}:{account}:1");
    wait_for("a second round to pass the grant", || {
        swept_until(&directory).as_deref() == Some(passed.as_str())
    })
    .await;
    assert_eq!(expiry_rows(&directory, account).len(), 1, "one expiry row");
    assert_eq!(
        directory.number(&format!(
            "SELECT COUNT(*) FROM webhook_events WHERE type = 'credit.expired' AND account_id = {account}"
        )),
        1,
        "one credit.expired"
    );
    assert_eq!(
        receiver
            .received()
            .iter()
            .filter(|received| received.kind() == "credit.expired")
            .count(),
        1
    );
    app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(an_expiry_that_leaves_less_than_the_next_message_costs_tells_balance_depleted_once);
/// An expiry row that leaves an account less than one segment to its own
/// number costs (5.65¢ to the US) is `balance.depleted`, as an adjustment
/// or a refund that does: one account is left 1¢ of paid credit, the other
/// nothing. Told once: the sweep's next round and a later change that
/// stays below make no second.
async fn an_expiry_that_leaves_less_than_the_next_message_costs_tells_balance_depleted_once() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let settings = crate::webhooks::webhook_settings(&directory);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let receiver = Receiver::start().await;
    let (_, secret) =
        crate::webhooks::add_endpoint(&app, &receiver.url, json!(["balance.depleted"])).await;
    receiver.trust(&secret);
    let expires_at = NOW_MS + DAY_MS;
    let mut accounts = Vec::new();
    for (index, paid) in [10_000, 0].into_iter().enumerate() {
        let account = app
            .create_account(&format!("+1415555043{}", 5 + index))
            .await;
        post_adjustment(
            &app,
            account,
            json!({"amount_micros": 2_000_000, "reason": "welcome", "idempotency_key": "welcome",
                   "expires_at": format_rfc3339_ms(expires_at)}),
        )
        .await;
        if paid > 0 {
            post_adjustment(
                &app,
                account,
                json!({"amount_micros": paid, "reason": "paid outside Stripe",
                       "idempotency_key": "paid", "category": "paid"}),
            )
            .await;
        }
        accounts.push((account, paid));
    }

    let written_at = expires_at + 1_000;
    clock.set_ms(written_at);
    let depleted = receiver.accepted("balance.depleted", accounts.len()).await;
    let mut told: Vec<(i64, i64)> = depleted
        .iter()
        .map(|received| {
            (
                received.body["data"]["account_id"].as_i64().unwrap(),
                received.body["data"]["balance_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    told.sort_unstable();
    let mut expected = accounts.clone();
    expected.sort_unstable();
    assert_eq!(told, expected, "{depleted:?}");
    for (account, _) in &accounts {
        let expiry = expiry_rows(&directory, *account);
        assert_eq!(expiry.len(), 1, "account {account}: {expiry:?}");
        let seq: i64 = expiry[0].split(':').next().unwrap().parse().unwrap();
        let told_of = depleted
            .iter()
            .find(|received| received.body["data"]["account_id"] == *account)
            .unwrap();
        assert_eq!(told_of.body["data"]["seq"], seq, "the expiry row's");
    }

    // Once: the next round finds nothing due, and a change that stays
    // below one segment crosses nothing.
    clock.set_ms(written_at + EXPIRY_SWEEP_EVERY_MS);
    let passed = format!("{expires_at}:{}:1", accounts[1].0);
    wait_for("a second round to pass both grants", || {
        swept_until(&directory).as_deref() == Some(passed.as_str())
    })
    .await;
    let (status, answer) = app.post_adjustment(accounts[0].0, -1_000, "less").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    for (account, _) in &accounts {
        assert_eq!(
            directory.number(&format!(
                "SELECT COUNT(*) FROM webhook_events WHERE type = 'balance.depleted' AND account_id = {account}"
            )),
            1,
            "one balance.depleted for account {account}"
        );
    }
    app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(two_instances_sweeping_one_database_write_one_expiry_row_per_grant);
/// Two servers on one database and one clock, each with its own sweep:
/// both rounds find the same grants, and every grant that expired with
/// credit left gets one expiry row (each account's snapshot, with its
/// grants, is guarded by every write). Grants spent to nothing get none.
async fn two_instances_sweeping_one_database_write_one_expiry_row_per_grant() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let settings = crate::helpers::test_settings(&directory);
    let first = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let second = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    let mut accounts = Vec::new();
    for index in 0..6 {
        let account = first.create_account(&format!("+1415555044{index}")).await;
        // Two expiring grants each, at different moments, and paid credit.
        for (grant, expires_in) in [(1, DAY_MS + index * 1_000), (2, DAY_MS + 500)] {
            post_adjustment(
                &second,
                account,
                json!({"amount_micros": 1_000_000 * grant, "reason": "promotion",
                       "idempotency_key": format!("promotion-{grant}"),
                       "expires_at": format_rfc3339_ms(NOW_MS + expires_in)}),
            )
            .await;
        }
        post_adjustment(
            &first,
            account,
            json!({"amount_micros": 500_000, "reason": "paid", "idempotency_key": "paid",
                   "category": "paid"}),
        )
        .await;
        accounts.push(account);
    }
    clock.set_ms(NOW_MS + DAY_MS + 10 * 1_000);
    for account in &accounts {
        wait_for(&format!("both expiry rows of account {account}"), || {
            expiry_rows(&directory, *account).len() >= 2
        })
        .await;
    }
    // Both instances' next rounds ask again, and pass every grant.
    clock.set_ms(NOW_MS + DAY_MS + 10 * 1_000 + EXPIRY_SWEEP_EVERY_MS);
    let last = format!("{}:{}:1", NOW_MS + DAY_MS + 5_000, accounts[5]);
    wait_for("the rounds to pass every grant", || {
        swept_until(&directory).as_deref() == Some(last.as_str())
    })
    .await;
    for (index, account) in accounts.iter().enumerate() {
        let expiry_of_1 = NOW_MS + DAY_MS + index as i64 * 1_000;
        let expiry_of_2 = NOW_MS + DAY_MS + 500;
        // In the order the grants expired, each dated at its expiry.
        let mut expected = [(expiry_of_1, -1_000_000_i64), (expiry_of_2, -2_000_000_i64)];
        expected.sort();
        let expected: Vec<String> = expected
            .iter()
            .enumerate()
            .map(|(at, (dated, amount))| format!("{}:{dated}:{amount}", 4 + at))
            .collect();
        assert_eq!(
            expiry_rows(&directory, *account),
            expected,
            "account {account}"
        );
        assert_eq!(first.balance_micros(*account).await, 500_000);
    }
    assert_eq!(
        directory.number("SELECT COUNT(*) FROM webhook_events WHERE type = 'credit.expired'"),
        12,
        "one credit.expired per grant"
    );
    first.stop().await;
    second.stop().await;
    assert_verified(&directory);
}

on_both_stores!(concurrent_rounds_ask_the_same_accounts_and_take_each_remainder_once);
/// Two instances' rounds at the same moment, one of whose actors has taken
/// the other's writes from their change notes (so it reads when the last
/// row was dated before it dates an expiry row): both read the same
/// grants, both ask every account and are answered, and each grant's
/// remainder is taken by one row, dated when it expired.
async fn concurrent_rounds_ask_the_same_accounts_and_take_each_remainder_once() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let first = core_at(&directory, &clock);
    let second = core_at(&directory, &clock);
    let expires_at = NOW_MS + 60_000;
    let mut accounts = Vec::new();
    for index in 0..4 {
        let account = new_account(&first, &format!("+1415555045{index}")).await;
        first
            .registry
            .send(
                account,
                adjust(2_000_000, "welcome", None, None, Some(expires_at)),
            )
            .await
            .unwrap();
        // The second spends some of it: the first's actor hears of it.
        let spent = second
            .registry
            .send(account, message_debit(250_000, index + 1))
            .await
            .unwrap();
        assert_eq!(draws(&spent.entry), vec![(1, "promotional", 250_000)]);
        accounts.push(account);
    }
    let now = expires_at + 10_000;
    clock.set_ms(now);
    let mut on_first = ExpirySweep::new(first.registry.clone());
    let mut on_second = ExpirySweep::new(second.registry.clone());
    let (first_round, second_round) =
        futures_util::join!(on_first.round(now), on_second.round(now));
    for round in [first_round.unwrap(), second_round.unwrap()] {
        let mut answered = round.answered.clone();
        answered.sort();
        assert_eq!(answered, accounts, "{round:?}");
        assert!(
            round.failed.is_empty() && round.left.is_empty(),
            "{round:?}"
        );
    }
    for account in &accounts {
        assert_eq!(
            expiry_rows(&directory, account.0),
            vec![format!("3:{expires_at}:-1750000")],
            "account {account}"
        );
        for core in [&first, &second] {
            let balance = core
                .registry
                .send(*account, sms_credit_actors::GetBalance)
                .await
                .unwrap();
            assert_eq!(balance.balance, Money::ZERO);
        }
    }
    assert_eq!(
        swept_until(&directory),
        Some(format!("{expires_at}:{}:1", accounts[3]))
    );
    first.shutdown().await;
    second.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(where_the_sweep_stands_survives_a_restart_and_what_expired_meanwhile_is_found);
/// A round passes an expired grant; the instance stops; another grant
/// expires while none runs. The next instance's first round sweeps only
/// that one: the grants the sweep passed are not swept again (its first
/// look back asks their accounts once more, which writes nothing).
async fn where_the_sweep_stands_survives_a_restart_and_what_expired_meanwhile_is_found() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let early = new_account(&core, "+14155550460").await;
    let late = new_account(&core, "+14155550461").await;
    for (account, expires_at) in [(early, NOW_MS + 60_000), (late, NOW_MS + DAY_MS)] {
        core.registry
            .send(
                account,
                adjust(1_000_000, "welcome", None, None, Some(expires_at)),
            )
            .await
            .unwrap();
    }
    let mut sweep = ExpirySweep::new(core.registry.clone());
    let nothing_yet = sweep.round(NOW_MS).await.unwrap();
    assert!(nothing_yet.answered.is_empty(), "{nothing_yet:?}");
    assert_eq!(nothing_yet.swept_until, None);
    clock.set_ms(NOW_MS + 120_000);
    let first = sweep.round(NOW_MS + 120_000).await.unwrap();
    assert_eq!(first.answered, vec![early]);
    let passed = GrantExpiry {
        expires_at_ms: NOW_MS + 60_000,
        account_id: early,
        grant_id: 1,
    };
    assert_eq!(first.swept_until, Some(passed));
    core.shutdown().await;

    // Down while the late grant expires; then started again.
    clock.set_ms(NOW_MS + DAY_MS + 60_000);
    let core = core_at(&directory, &clock);
    let mut sweep = ExpirySweep::new(core.registry.clone());
    let after_restart = sweep.round(NOW_MS + DAY_MS + 60_000).await.unwrap();
    assert_eq!(after_restart.answered, vec![late], "{after_restart:?}");
    assert_eq!(after_restart.looked_back, vec![early], "{after_restart:?}");
    assert_eq!(
        after_restart.swept_until,
        Some(GrantExpiry {
            expires_at_ms: NOW_MS + DAY_MS,
            account_id: late,
            grant_id: 1,
        })
    );
    for (account, dated) in [(early, NOW_MS + 60_000), (late, NOW_MS + DAY_MS)] {
        assert_eq!(
            expiry_rows(&directory, account.0),
            vec![format!("2:{dated}:-1000000")]
        );
    }
    core.shutdown().await;
    assert_verified(&directory);
}

on_both_stores!(a_grant_that_expired_while_the_server_was_down_is_expired_by_the_first_round);
/// The server stops before the grant's expiry and starts after it: the
/// round at the start writes the expiry row, the clock not moved since.
async fn a_grant_that_expired_while_the_server_was_down_is_expired_by_the_first_round() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let settings = crate::helpers::test_settings(&directory);
    let app = TestApp::spawn_with_clock(directory.clone(), settings.clone(), clock.clone()).await;
    let account = app.create_account("+14155550470").await;
    let expires_at = NOW_MS + DAY_MS;
    post_adjustment(
        &app,
        account,
        json!({"amount_micros": 2_000_000, "reason": "welcome", "idempotency_key": "welcome",
               "expires_at": format_rfc3339_ms(expires_at)}),
    )
    .await;
    let directory = app.stop().await;
    clock.set_ms(expires_at + 3_600_000);
    let app = TestApp::spawn_with_clock(directory.clone(), settings, clock.clone()).await;
    wait_for(
        &format!("the first round at the start to expire account {account}'s grant"),
        || !expiry_rows(&directory, account).is_empty(),
    )
    .await;
    assert_eq!(
        expiry_rows(&directory, account),
        vec![format!("2:{expires_at}:-2000000")]
    );
    assert_eq!(app.balance_micros(account).await, 0);
    app.stop().await;
    assert_verified(&directory);
}

on_both_stores!(
    an_account_whose_actor_cannot_answer_holds_the_sweep_for_a_bounded_number_of_rounds
);
/// An account whose grants cannot be used (its snapshot's grants do not
/// sum to its balance: no row can be decided) fails every round. It holds
/// where the sweep stands for `HOLD_ROUNDS` rounds, while the grants after
/// it are still expired each round; then it is left to its next change,
/// and the sweep goes on past it.
async fn an_account_whose_actor_cannot_answer_holds_the_sweep_for_a_bounded_number_of_rounds() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let broken = new_account(&core, "+14155550480").await;
    let fine = new_account(&core, "+14155550481").await;
    for (account, expires_at) in [(broken, NOW_MS + 60_000), (fine, NOW_MS + 120_000)] {
        core.registry
            .send(
                account,
                adjust(1_000_000, "welcome", None, None, Some(expires_at)),
            )
            .await
            .unwrap();
    }
    core.shutdown().await;
    directory.execute(&format!(
        "UPDATE account_balances SET grants = '1:400000' WHERE account_id = {broken}"
    ));
    let core = core_at(&directory, &clock);
    let now = NOW_MS + 600_000;
    clock.set_ms(now);
    let mut sweep = ExpirySweep::new(core.registry.clone());
    for round in 1..HOLD_ROUNDS {
        let held = sweep.round(now).await.unwrap();
        assert_eq!(held.failed, vec![broken], "round {round}: {held:?}");
        assert_eq!(held.answered, vec![fine], "round {round}: {held:?}");
        assert!(held.left.is_empty(), "round {round}: {held:?}");
        assert_eq!(
            held.swept_until, None,
            "round {round} holds where the sweep stands"
        );
    }
    assert_eq!(
        expiry_rows(&directory, fine.0).len(),
        1,
        "expired in the first round"
    );
    let last = sweep.round(now).await.unwrap();
    let left = GrantExpiry {
        expires_at_ms: NOW_MS + 60_000,
        account_id: broken,
        grant_id: 1,
    };
    assert_eq!(last.left, vec![left], "{last:?}");
    assert_eq!(
        last.swept_until,
        Some(GrantExpiry {
            expires_at_ms: NOW_MS + 120_000,
            account_id: fine,
            grant_id: 1,
        })
    );
    // An account that does not exist is an error the sweep passes at once
    // (no grant can name one: the schema refuses it).
    let missing = core.registry.send(AccountId(999_999), ExpireDue).await;
    assert!(
        matches!(missing, Err(LedgerError::AccountNotFound(_))),
        "{missing:?}"
    );
    // Its next change is refused too, until the operator mends it: no row
    // is decided on grants that cannot be used.
    let refused = core.registry.send(broken, ExpireDue).await;
    assert!(matches!(refused, Err(LedgerError::Store(_))), "{refused:?}");
    let after = sweep.round(now).await.unwrap();
    assert!(
        after.answered.is_empty() && after.failed.is_empty(),
        "{after:?}"
    );
    assert_eq!(expiry_rows(&directory, fine.0).len(), 1);
    core.shutdown().await;
}

on_both_stores!(an_expiry_row_is_dated_when_its_grant_expired_never_before_the_row_before_it);
/// A message drew on promotional credit before it expired; the actor is
/// asked after the expiry (the row is dated at it); the message is then
/// voided, giving its cost back to the expired grant, which expires again
/// at once: that row is dated with the void, not before it. No debit draws
/// on the expired grant, and `ExpireDue` with nothing due answers at once.
async fn an_expiry_row_is_dated_when_its_grant_expired_never_before_the_row_before_it() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let account = new_account(&core, "+14155550490").await;
    let expires_at = NOW_MS + 60_000;
    core.registry
        .send(
            account,
            adjust(
                2_000_000,
                "welcome",
                Some(Category::Promotional),
                None,
                Some(expires_at),
            ),
        )
        .await
        .unwrap();
    core.registry
        .send(account, paid_credit(1_000_000, "top-up"))
        .await
        .unwrap();
    core.registry
        .send(account, ExpireDue)
        .await
        .expect("nothing is due: answered at once");
    let spent = core
        .registry
        .send(account, message_debit(300_000, 1))
        .await
        .unwrap();
    assert_eq!(draws(&spent.entry), vec![(1, "promotional", 300_000)]);

    clock.set_ms(expires_at + 30_000);
    core.registry.send(account, ExpireDue).await.unwrap();
    assert_eq!(
        expiry_rows(&directory, account.0),
        vec![format!("4:{expires_at}:-1700000")]
    );
    // A moment after the expiry, a debit never draws on the expired grant.
    let debit = core
        .registry
        .send(account, message_debit(100_000, 2))
        .await
        .unwrap();
    assert_eq!(draws(&debit.entry), vec![(2, "paid", 100_000)]);

    let voided_at = expires_at + 45_000;
    clock.set_ms(voided_at);
    let void = core
        .registry
        .send(
            account,
            Refund {
                amount: Money::from_micros(300_000),
                idempotency_key: IdempotencyKey::message_void(1),
                description: "SMS not sent".into(),
                order_id: None,
                event: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(void.entry.seq, 6);
    assert_eq!(void.entry.created_at_ms, voided_at);
    core.shutdown().await;
    assert_eq!(
        expiry_rows(&directory, account.0),
        vec![
            format!("4:{expires_at}:-1700000"),
            format!("7:{voided_at}:-300000"),
        ]
    );
    assert_eq!(
        directory.number(&format!(
            "SELECT balance FROM account_balances WHERE account_id = {account}"
        )),
        900_000
    );
    assert_verified(&directory);
}

on_both_stores!(grants_behind_where_the_sweep_stands_are_expired_by_a_look_back);
/// Where the sweep stands has passed two grants that still hold expired
/// credit (committed behind it by an instance whose clock was behind, or
/// left after an account failed `HOLD_ROUNDS` rounds, or credit given back
/// whose expiry row was then not written): the forward sweep never reads
/// them again, but the first round's look back asks their accounts, which
/// write the expiry rows. The next look back comes `LOOK_BACK_EVERY_MS`
/// later, and asks only about grants that expired within `LOOK_BACK_MS`.
async fn grants_behind_where_the_sweep_stands_are_expired_by_a_look_back() {
    let directory = fresh_directory();
    let clock = ManualClock::new(NOW_MS);
    let core = core_at(&directory, &clock);
    let first = new_account(&core, "+14155550490").await;
    let second = new_account(&core, "+14155550491").await;
    for (account, expires_at) in [(first, NOW_MS + 60_000), (second, NOW_MS + 120_000)] {
        core.registry
            .send(
                account,
                adjust(1_000_000, "welcome", None, None, Some(expires_at)),
            )
            .await
            .unwrap();
    }
    core.shutdown().await;
    // The sweep stands past both, their expiry rows never written.
    directory.execute(&format!(
        "UPDATE grant_expiry_sweep SET swept_until = {}, swept_account_id = {}, swept_grant_id = 1",
        NOW_MS + 120_000,
        second.0
    ));
    let now = NOW_MS + 600_000;
    clock.set_ms(now);
    let core = core_at(&directory, &clock);
    let mut sweep = ExpirySweep::new(core.registry.clone());
    let round = sweep.round(now).await.unwrap();
    assert!(round.answered.is_empty(), "the forward sweep: {round:?}");
    let mut looked_back = round.looked_back.clone();
    looked_back.sort();
    assert_eq!(looked_back, vec![first, second], "{round:?}");
    for (account, dated) in [(first, NOW_MS + 60_000), (second, NOW_MS + 120_000)] {
        assert_eq!(
            expiry_rows(&directory, account.0),
            vec![format!("2:{dated}:-1000000")],
            "account {account}"
        );
    }
    // No look back until `LOOK_BACK_EVERY_MS` later.
    let next = sweep.round(now + EXPIRY_SWEEP_EVERY_MS).await.unwrap();
    assert!(next.looked_back.is_empty(), "{next:?}");
    let later = sweep.round(now + LOOK_BACK_EVERY_MS).await.unwrap();
    assert_eq!(later.looked_back.len(), 2, "{later:?}");
    // A grant that expired more than `LOOK_BACK_MS` before is not asked
    // about.
    let long_after = now + LOOK_BACK_MS + LOOK_BACK_EVERY_MS;
    clock.set_ms(long_after);
    let too_old = sweep.round(long_after).await.unwrap();
    assert!(too_old.looked_back.is_empty(), "{too_old:?}");
    for account in [first, second] {
        assert_eq!(expiry_rows(&directory, account.0).len(), 1);
    }
    core.shutdown().await;
    assert_verified(&directory);
}
