//! Property: any sequence of credits, debits, refunds and adjustments, with
//! repeated idempotency keys, keeps the ledger summing to the balance,
//! never lets a debit go below zero, and makes replays change nothing. A
//! plain in-memory model predicts every answer. Adjustments make grants of
//! either category and any priority, and positive refunds give back the
//! debits of messages (`msg-void:N` returns `msg:N`): afterwards every
//! grant's remaining is what the ledger says (verify's check).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use proptest::prelude::*;
use sms_credit_actors::grants::{Category, Priority};
use sms_credit_actors::{
    Adjust, Credit, Debit, GetBalance, LedgerError, Money, Receipt, Refund, TransactionKind,
};

use crate::database::{StoreKind, TestDatabase};
use crate::helpers::test_settings;
use crate::ledger_actors::{assert_verified, key, new_account};
use sms_credit::startup::Core;
use sms_credit_actors::clock::ManualClock;
use std::sync::Arc;

#[derive(Clone, Debug)]
struct Operation {
    kind: TransactionKind,
    /// Signed as it would stand in the ledger.
    amount: i64,
    key: String,
    /// A positive adjustment's grant: paid (else promotional), priority.
    paid: bool,
    priority: u8,
}

fn operation() -> impl Strategy<Value = Operation> {
    let kind = prop_oneof![
        Just(TransactionKind::Credit),
        Just(TransactionKind::Debit),
        Just(TransactionKind::Refund),
        Just(TransactionKind::Adjustment),
    ];
    // Few keys, so that keys repeat, with the same and with other amounts.
    (
        kind,
        1_i64..3_000,
        any::<bool>(),
        0_u8..10,
        any::<bool>(),
        0_u8..=100,
    )
        .prop_map(|(kind, thousands, negative, key_index, paid, priority)| {
            let magnitude = thousands * 1_000;
            let amount = match kind {
                TransactionKind::Credit => magnitude,
                TransactionKind::Debit => -magnitude,
                TransactionKind::Refund | TransactionKind::Adjustment if negative => -magnitude,
                _ => magnitude,
            };
            // A debit is a message's and a positive refund gives one back
            // (of the same number, debited or not), so that their keys
            // meet; the others share a namespace of their own.
            let key = match kind {
                TransactionKind::Debit => format!("msg:{key_index}"),
                TransactionKind::Refund if amount > 0 => format!("msg-void:{key_index}"),
                _ => format!("key-{key_index}"),
            };
            Operation {
                kind,
                amount,
                key,
                paid,
                priority,
            }
        })
}

/// What the model expects of one operation.
#[derive(Debug, PartialEq)]
enum Expected {
    Applied { seq: i64, balance_after: i64 },
    Replayed { seq: i64 },
    Conflict,
    InsufficientCredit,
}

struct Model {
    balance: i64,
    seq: i64,
    /// Key → (kind, amount, seq, the grant's terms if a positive
    /// adjustment made one) of the row it made.
    used: HashMap<String, Used>,
}

/// What a key made: (kind, amount, seq, the grant's terms).
type Used = (TransactionKind, i64, i64, Option<(bool, u8)>);

/// The terms of the grant a positive adjustment asks for (part of what its
/// key stands for).
fn grant_terms(operation: &Operation) -> Option<(bool, u8)> {
    (operation.kind == TransactionKind::Adjustment && operation.amount > 0)
        .then_some((operation.paid, operation.priority))
}

impl Model {
    fn apply(&mut self, operation: &Operation) -> Expected {
        if let Some((kind, amount, seq, terms)) = self.used.get(&operation.key) {
            let same_terms = grant_terms(operation).is_none() || *terms == grant_terms(operation);
            return if *kind == operation.kind && *amount == operation.amount && same_terms {
                Expected::Replayed { seq: *seq }
            } else {
                Expected::Conflict
            };
        }
        let balance_after = self.balance + operation.amount;
        if operation.kind == TransactionKind::Debit && balance_after < 0 {
            return Expected::InsufficientCredit;
        }
        self.seq += 1;
        self.balance = balance_after;
        self.used.insert(
            operation.key.clone(),
            (
                operation.kind,
                operation.amount,
                self.seq,
                grant_terms(operation),
            ),
        );
        Expected::Applied {
            seq: self.seq,
            balance_after,
        }
    }
}

fn observed(answer: &Result<Receipt, LedgerError>) -> Expected {
    match answer {
        Ok(receipt) if receipt.replayed => Expected::Replayed {
            seq: receipt.entry.seq,
        },
        Ok(receipt) => Expected::Applied {
            seq: receipt.entry.seq,
            balance_after: receipt.entry.balance_after.micros(),
        },
        Err(LedgerError::IdempotencyConflict { .. }) => Expected::Conflict,
        Err(LedgerError::InsufficientCredit { .. }) => Expected::InsufficientCredit,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

fn run_sequence(operations: Vec<Operation>, pipelined: bool, store: StoreKind) {
    let directory = TestDatabase::of(store);
    actix_rt::System::new().block_on(async {
        // The debits are messages' (`msg:N`) with no message behind them:
        // no low-balance warning, which would wait for its message.
        let mut settings = test_settings(&directory);
        settings.server.passivate_after = Duration::from_secs(3600);
        settings.messages.low_balance_threshold = Money::ZERO;
        let core = Core::start(&settings, Arc::new(ManualClock::new(1_795_253_400_000))).unwrap();
        let account = new_account(&core, "+14155550300").await;
        let send = |operation: Operation| {
            let registry = core.registry.clone();
            async move {
                let idempotency_key = key(&operation.key);
                let amount = Money::from_micros(operation.amount);
                match operation.kind {
                    TransactionKind::Credit => {
                        registry
                            .send(
                                account,
                                Credit {
                                    event: None,
                                    amount,
                                    idempotency_key,
                                    description: String::new(),
                                    order_id: None,
                                    source: sms_credit_actors::grants::GrantSource::Migration,
                                },
                            )
                            .await
                    }
                    TransactionKind::Debit => {
                        registry
                            .send(
                                account,
                                Debit {
                                    one_segment: None,
                                    amount: -amount,
                                    idempotency_key,
                                    description: String::new(),
                                },
                            )
                            .await
                    }
                    TransactionKind::Refund => {
                        registry
                            .send(
                                account,
                                Refund {
                                    event: None,
                                    amount,
                                    idempotency_key,
                                    description: String::new(),
                                    order_id: None,
                                },
                            )
                            .await
                    }
                    TransactionKind::Adjustment => {
                        registry
                            .send(
                                account,
                                Adjust {
                                    amount,
                                    idempotency_key,
                                    reason: String::new(),
                                    description: None,
                                    category: (operation.amount > 0).then_some(if operation.paid {
                                        Category::Paid
                                    } else {
                                        Category::Promotional
                                    }),
                                    priority: (operation.amount > 0).then(|| {
                                        Priority::new(i64::from(operation.priority)).unwrap()
                                    }),
                                    expires_at_ms: None,
                                },
                            )
                            .await
                    }
                    TransactionKind::Expiry => unreachable!("no operation is an expiry"),
                }
            }
        };
        // Pipelined: all sent at once, in order (join_all polls in order, so
        // the mailbox holds them in sequence order) and committed in batches.
        let answers = if pipelined {
            join_all(operations.iter().cloned().map(send)).await
        } else {
            let mut answers = Vec::new();
            for operation in operations.iter().cloned() {
                answers.push(send(operation).await);
            }
            answers
        };
        let mut model = Model {
            balance: 0,
            seq: 0,
            used: HashMap::new(),
        };
        for (operation, answer) in operations.iter().zip(&answers) {
            assert_eq!(observed(answer), model.apply(operation), "{operation:?}");
        }
        let snapshot = core.registry.send(account, GetBalance).await.unwrap();
        assert_eq!(
            (snapshot.balance.micros(), snapshot.seq),
            (model.balance, model.seq)
        );
        core.shutdown().await;
    });
    assert_verified(&directory);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn sequential_operations_keep_the_ledger_exact_on_sqlite(operations in proptest::collection::vec(operation(), 1..25)) {
        run_sequence(operations, false, StoreKind::Sqlite);
    }

    #[test]
    fn sequential_operations_keep_the_ledger_exact_on_postgres(operations in proptest::collection::vec(operation(), 1..25)) {
        run_sequence(operations, false, StoreKind::Postgres);
    }

    #[test]
    fn pipelined_operations_keep_the_ledger_exact_on_sqlite(operations in proptest::collection::vec(operation(), 1..60)) {
        run_sequence(operations, true, StoreKind::Sqlite);
    }

    #[test]
    fn pipelined_operations_keep_the_ledger_exact_on_postgres(operations in proptest::collection::vec(operation(), 1..60)) {
        run_sequence(operations, true, StoreKind::Postgres);
    }
}
