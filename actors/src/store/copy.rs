//! `sms-credit copy`: every row of one store into another that holds no
//! data yet (the way a user moves from the embedded SQLite file to Postgres,
//! or back). The source ([`Source`]) is opened to be read only, checked
//! (no instance running on it, its verify clean) before any target is
//! looked at, and read a page at a time in key order; the target takes
//! every page in one transaction, and commits it only when the export says
//! it read every table to its end ([`CopyMessage::Finished`], sent only
//! once no instance started on the source meanwhile), as many rows of each
//! arrived, and the target's verify, run inside that transaction, is clean
//! and agrees with the source's: a copy that fails anywhere leaves the
//! target empty.
//!
//! The tables and their columns are listed here once; both schemas have
//! them with the same names and values (times in Unix milliseconds, money in
//! micro-dollars, flags as 0/1), so rows move as they are.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{
    alive_at, running_instances_told, InstanceBeat, SourceStore, Store, StoreError, TestHold,
};
use crate::clock::Clock;
use crate::verify::VerifyReport;

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Text,
}

/// A table that is copied: its columns and the key that orders it.
#[derive(Debug)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, ColumnType)],
    /// Indexes into `columns` of the primary key, in order.
    pub key: &'static [usize],
    /// Whose `id` a sequence hands out (the target's is moved past the
    /// copied rows).
    pub has_id_sequence: bool,
    /// A table the migrations fill with a default row, replaced by the copy.
    pub seeded: bool,
}

impl Table {
    pub fn column_names(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn key_names(&self) -> String {
        self.key
            .iter()
            .map(|index| self.columns[*index].0)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The key of `row`, to read the next page after it.
    pub fn key_of(&self, row: &[CopyValue]) -> Vec<CopyValue> {
        self.key.iter().map(|index| row[*index].clone()).collect()
    }
}

use ColumnType::{Integer as I, Text as T};

/// Every table with data, parents before children. Not copied: which
/// instances are running (`instances`), SQLite's change notes for other
/// processes (`ledger_changes`), feed tickets (`feed_tickets`: they live
/// 30 s, and no instance runs during a copy), the legacy refund sweep's
/// claims (`stripe_refunds.claimed_until`: a lease of an instance), where
/// the sweep of expired grants stands (`grant_expiry_sweep`: the copy's
/// first round asks about every expired grant once more, which writes what
/// is due and nothing else) and the migration history (each side has its
/// own).
pub const TABLES: &[Table] = &[
    Table {
        name: "accounts",
        columns: &[
            ("id", I),
            ("phone", T),
            ("email", T),
            ("stripe_customer_id", T),
            ("status", T),
            ("created_at", I),
            ("stripe_payment_method_id", T),
            ("card_brand", T),
            ("card_last4", T),
            ("card_exp_month", I),
            ("card_exp_year", I),
            ("forgotten_payment_method_id", T),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "account_balances",
        columns: &[
            ("account_id", I),
            ("balance", I),
            ("seq", I),
            ("low_balance_warned_at", I),
            ("updated_at", I),
            ("grants", T),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "transactions",
        columns: &[
            ("account_id", I),
            ("seq", I),
            ("type", T),
            ("amount", I),
            ("balance_after", I),
            ("idempotency_key", T),
            ("order_id", I),
            ("description", T),
            ("created_at", I),
            ("reason", T),
            ("funded_by", T),
        ],
        key: &[0, 1],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "credit_grants",
        columns: &[
            ("account_id", I),
            ("id", I),
            ("category", T),
            ("source", T),
            ("order_id", I),
            ("amount", I),
            ("priority", I),
            ("granted_at", I),
            ("expires_at", I),
        ],
        key: &[0, 1],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "pricing",
        columns: &[("id", I), ("mode", T), ("sale_price", I), ("updated_at", I)],
        key: &[0],
        has_id_sequence: false,
        seeded: true,
    },
    Table {
        name: "discount_codes",
        columns: &[
            ("id", I),
            ("code", T),
            ("discount_type", T),
            ("value", I),
            ("max_uses", I),
            ("current_uses", I),
            ("active", I),
            ("stripe_coupon_id", T),
            ("created_at", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "orders",
        columns: &[
            ("id", I),
            ("account_id", I),
            ("order_type", T),
            ("amount", I),
            ("list_price", I),
            ("pricing_mode", T),
            ("stripe_session_id", T),
            ("stripe_payment_intent_id", T),
            ("discount_code_id", I),
            ("discount_released", I),
            ("charge_key", T),
            ("amount_refunded", I),
            ("status", T),
            ("created_at", I),
            ("completed_at", I),
            ("receipt_url", T),
            ("receipt_asked_at", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "order_refunds",
        columns: &[
            ("id", I),
            ("order_id", I),
            ("n", I),
            ("idempotency_key", T),
            ("amount", I),
            ("reason", T),
            ("status", T),
            ("stripe_refund_id", T),
            ("error", T),
            ("created_at", I),
            ("updated_at", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "stripe_events",
        columns: &[
            ("event_id", T),
            ("event_type", T),
            ("received_at", I),
            ("processed_at", I),
            ("outcome", T),
            ("payload", T),
            ("status", T),
            ("waiting_on", T),
            ("claimed_by", T),
            ("claimed_until", I),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "disputes",
        columns: &[
            ("dispute_id", T),
            ("order_id", I),
            ("account_id", I),
            ("charge_id", T),
            ("amount", I),
            ("reason", T),
            ("status", T),
            ("funds", T),
            ("respond_by", I),
            ("created_at", I),
            ("updated_at", I),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "stripe_refunds",
        columns: &[
            ("refund_id", T),
            ("order_id", I),
            ("amount", I),
            ("standing", T),
            ("stripe_status", T),
            ("recorded_by", T),
            ("recorded_at", I),
            ("updated_at", I),
            ("settled_at", I),
            ("sweep_left_because", T),
            ("told", I),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "account_tokens",
        columns: &[
            ("id", I),
            ("account_id", I),
            ("token_hash", T),
            ("created_at", I),
            ("revoked_at", I),
            ("expires_at", I),
            ("source", T),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "sign_in_codes",
        columns: &[
            ("id", I),
            ("phone", T),
            ("code_hash", T),
            ("client_address", T),
            ("created_at", I),
            ("expires_at", I),
            ("wrong_attempts", I),
            ("used_at", I),
            ("country", T),
            ("lifted", I),
            ("customer", I),
            ("capped", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "sign_in_wrong_codes",
        columns: &[
            ("id", I),
            ("phone", T),
            ("client_address", T),
            ("created_at", I),
            ("lifted", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "opt_outs",
        columns: &[
            ("phone", T),
            ("opted_out_at", I),
            ("via", T),
            ("keyword", T),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "sign_up_tokens",
        columns: &[
            ("token_hash", T),
            ("phone", T),
            ("created_at", I),
            ("expires_at", I),
            ("wrong_discount_codes", I),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "opt_ins",
        columns: &[("phone", T), ("opted_in_at", I)],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "inbound_messages",
        columns: &[
            ("message_sid", T),
            ("from_number", T),
            ("account_id", I),
            ("body", T),
            ("reply", T),
            ("created_at", I),
            ("state", T),
            ("claimed_by", T),
            ("claimed_until", I),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "messages",
        columns: &[
            ("id", I),
            ("account_id", I),
            ("kind", T),
            ("idempotency_key", T),
            ("to_number", T),
            ("country", T),
            ("encoding", T),
            ("segments", I),
            ("price_per_segment", I),
            ("carrier_cost_per_segment", I),
            ("charged", I),
            ("state", T),
            ("twilio_sid", T),
            ("twilio_status", T),
            ("refunded", I),
            ("actual_cost", I),
            ("price_checks", I),
            ("next_price_check_at", I),
            ("created_at", I),
            ("instance_id", T),
            ("body_sha256", T),
            ("voiding", I),
            ("next_sweep_at", I),
            ("swept_by", T),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "early_message_statuses",
        columns: &[("twilio_sid", T), ("status", T), ("received_at", I)],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "notices",
        columns: &[
            ("id", I),
            ("account_id", I),
            ("kind", T),
            ("dedupe_key", T),
            ("payload", T),
            ("state", T),
            ("attempts", I),
            ("next_attempt_at", I),
            ("claimed_until", I),
            ("created_at", I),
            ("sent_at", I),
            ("twilio_sid", T),
            ("last_error", T),
            ("after_message", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "auto_top_up_settings",
        columns: &[
            ("account_id", I),
            ("enabled", I),
            ("threshold", I),
            ("amount", I),
            ("monthly_cap", I),
            ("consent_at", I),
            ("consent_via", T),
            ("consent_text", T),
            ("consecutive_failures", I),
            ("not_before", I),
            ("paused_reason", T),
            ("updated_at", I),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "auto_top_ups",
        columns: &[
            ("id", I),
            ("account_id", I),
            ("n", I),
            ("amount", I),
            ("month", T),
            ("status", T),
            ("reason", T),
            ("order_id", I),
            ("payment_intent_id", T),
            ("claimed_until", I),
            ("created_at", I),
            ("updated_at", I),
            ("claims", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "webhook_endpoints",
        columns: &[
            ("id", T),
            ("url", T),
            ("events", T),
            ("description", T),
            ("enabled", I),
            ("disabled_reason", T),
            ("secret", T),
            ("previous_secret", T),
            ("previous_secret_until", I),
            ("failing_since", I),
            ("created_at", I),
            ("deleted", I),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "webhook_events",
        columns: &[
            ("id", T),
            ("type", T),
            ("account_id", I),
            ("dedupe_key", T),
            ("payload", T),
            ("created_at", I),
        ],
        key: &[0],
        has_id_sequence: false,
        seeded: false,
    },
    Table {
        name: "webhook_deliveries",
        columns: &[
            ("id", I),
            ("endpoint_id", T),
            ("event_id", T),
            ("state", T),
            ("attempts", I),
            ("next_attempt_at", I),
            ("claimed_until", I),
            ("claimed_by", T),
            ("created_at", I),
            ("finished_at", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "webhook_attempts",
        columns: &[
            ("id", I),
            ("delivery_id", I),
            ("endpoint_id", T),
            ("at", I),
            ("status_code", I),
            ("error", T),
            ("duration_ms", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
    Table {
        name: "backups",
        columns: &[
            ("id", I),
            ("taken_at", I),
            ("path", T),
            ("accounts", I),
            ("transactions", I),
            ("bytes", I),
            ("duration_ms", I),
        ],
        key: &[0],
        has_id_sequence: true,
        seeded: false,
    },
];

/// One value of a copied row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyValue {
    Null,
    Integer(i64),
    Text(String),
}

pub type CopyRow = Vec<CopyValue>;

/// Rows of one table, in key order.
#[derive(Debug)]
pub struct Page {
    pub table: &'static Table,
    pub rows: Vec<CopyRow>,
}

/// What the export hands the import.
#[derive(Debug)]
pub enum CopyMessage {
    /// Rows of one table, in key order.
    Page(Page),
    /// The last word: every table was read to its end. Without it (the
    /// export failed and hung up) the import writes nothing.
    Finished(Finished),
}

/// What the export read, for the import to check before it commits.
#[derive(Debug)]
pub struct Finished {
    /// Each table's row count.
    pub tables: Vec<(&'static str, u64)>,
    /// The source's verify report, when the target must agree with it
    /// (a copy, a restore; a backup's snapshot is read while writers go on,
    /// so its caller checks the file alone).
    pub source: Option<VerifyReport>,
}

/// What the import committed: each table's row count, and the target's
/// verify report, read in the transaction that committed them.
#[derive(Debug)]
pub struct Imported {
    pub tables: Vec<(&'static str, u64)>,
    pub target: VerifyReport,
}

/// Rows read from the source at a time.
pub const PAGE_ROWS: i64 = 1_000;

/// Why a copy did not happen (the target is left as it was).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the target already holds data (table {0}); copy only into a database with none")]
    TargetNotEmpty(&'static str),
    /// An SQLite file with tables but no sms-credit migration history:
    /// another program's database, refused before it is touched.
    #[error(
        "it is not an sms-credit database ({0}); copy only into a new file, an empty one, or \
         an sms-credit database that holds no data"
    )]
    TargetNotOurs(String),
    /// Something (another copy or restore, a server, `migrate`, a command
    /// that creates a database) put a file where this one's new SQLite
    /// file was to go while this one ran: it stays, and this one's is
    /// removed.
    #[error(
        "{0} was made by something else while this copy ran (another copy or restore, a server, \
         `migrate`, or a command that creates a database): it is left as it is, and nothing of \
         this copy is left"
    )]
    TargetMadeMeanwhile(String),
    #[error("{}", source_in_use(.instances, *.now_ms, *.fallback_timeout_ms))]
    SourceInUse {
        /// Each running instance: its id, its last heartbeat, and how long
        /// after it the instance counts as gone (its own timeout).
        instances: Vec<InstanceBeat>,
        now_ms: i64,
        /// The timeout `copy` judged an instance that does not say its own
        /// by (an earlier release's): copy's own setting.
        fallback_timeout_ms: i64,
    },
    /// An instance started on the source while its rows were read: what
    /// was read may not be one moment of it, so nothing is committed.
    #[error(
        "an instance started on the source during the copy ({}); nothing was written to the \
         target: stop it, and copy again",
        .0.iter().map(|instance| instance.id.as_str()).collect::<Vec<_>>().join(", ")
    )]
    SourceStarted(Vec<InstanceBeat>),
    /// The source's migration history is not this release's: its tables
    /// may not be the ones this release copies. Refused before anything
    /// is read or changed.
    #[error("{0}")]
    SourceNotCurrent(String),
    #[error(
        "table {table}: {exported} rows read from the source but {imported} written to the target"
    )]
    CountMismatch {
        table: &'static str,
        exported: u64,
        imported: u64,
    },
    #[error("verify is not clean on the {side}: {problems} problems")]
    NotClean { side: &'static str, problems: usize },
    #[error("the two sides differ after the copy: {0}")]
    Differs(String),
    /// The export hung up before it had read every table (its own error
    /// says why): nothing was written.
    #[error("the source was not read to its end; nothing was written to the target")]
    Unfinished,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What was copied, and both sides' verify reports.
#[derive(Debug)]
pub struct CopyReport {
    pub tables: Vec<(&'static str, u64)>,
    pub source: VerifyReport,
    pub target: VerifyReport,
}

/// Why a copy waits: who beats a heartbeat on the source, since when, and
/// when each counts as gone, so that an operator after a crash knows it is
/// a stale heartbeat, how long it lasts and what governs it.
fn source_in_use(instances: &[InstanceBeat], now_ms: i64, fallback_timeout_ms: i64) -> String {
    let seconds = |ms: i64| (ms.max(0) + 999) / 1_000;
    let (listed, clears_at) =
        running_instances_told(instances, now_ms, fallback_timeout_ms, "copy's own");
    format!(
        "instances are running on the source: {listed}. Stop them first, so that nothing changes \
         during the copy. If they are stopped already (a crash leaves its heartbeat behind), \
         each counts as gone once its own instance_timeout_secs \
         (SMS_CREDIT_INSTANCE_TIMEOUT_SECS, the setting it was started with) has passed since \
         its last heartbeat: copy again at {} (in {} s)",
        crate::clock::format_rfc3339_ms(clears_at),
        seconds(clears_at.saturating_sub(now_ms)),
    )
}

/// A copy's source, opened to be read only (`adapters::open_source`):
/// `copy`'s --from, or restore's copy of its backup.
pub struct Source {
    backend: Box<dyn SourceStore>,
    /// Test-only: the export stops just after it handed over its first
    /// page, until the test lets it go.
    hold_after_first_page: Mutex<Option<Arc<TestHold>>>,
}

impl Source {
    /// The handle to an adapter's source (made by `adapters::open_source`).
    pub fn new(backend: Box<dyn SourceStore>) -> Source {
        Source {
            backend,
            hold_after_first_page: Mutex::new(None),
        }
    }

    /// Test-only: the next copy from this source stops just after its
    /// first page went to the target, until the test releases the hold it
    /// is handed (so that a test can put another fill, or a server's
    /// start, in that moment).
    pub fn hold_after_first_page_for_testing(&self) -> Arc<TestHold> {
        let hold = Arc::new(TestHold::default());
        *self
            .hold_after_first_page
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::clone(&hold));
        hold
    }

    /// Where the first page has gone: stops there while a test holds it.
    async fn first_page_sent(&self) {
        let hold = self
            .hold_after_first_page
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(hold) = hold {
            hold.reached.add_permits(1);
            if let Ok(permit) = hold.released.acquire().await {
                permit.forget();
            }
        }
    }
}

/// Refuses a source that instances are using: one whose heartbeat is
/// younger than its own timeout (the servers' rule for an instance that is
/// gone, by the instance's own `instance_timeout_secs`, which its
/// heartbeat writes; `fallback_timeout_ms` for one that does not say).
pub async fn check_source_stopped(
    source: &Source,
    now_ms: i64,
    fallback_timeout_ms: i64,
) -> Result<(), CopyError> {
    let running = running_on(source, now_ms, fallback_timeout_ms).await?;
    if running.is_empty() {
        return Ok(());
    }
    Err(CopyError::SourceInUse {
        instances: running,
        now_ms,
        fallback_timeout_ms,
    })
}

/// The instances alive on `source` at `now_ms`, each by its own timeout.
async fn running_on(
    source: &Source,
    now_ms: i64,
    fallback_timeout_ms: i64,
) -> Result<Vec<InstanceBeat>, CopyError> {
    Ok(alive_at(
        source.backend.beats().await?,
        now_ms,
        fallback_timeout_ms,
    ))
}

/// The source's verify report; a source that is not clean is refused
/// (before any target is looked at).
pub async fn verify_source(source: &Source) -> Result<VerifyReport, CopyError> {
    let report = source.backend.verify().await?;
    if !report.is_clean() {
        return Err(CopyError::NotClean {
            side: "source",
            problems: report.problems.len(),
        });
    }
    Ok(report)
}

/// What a copy checks of its source once every row is read, before the
/// target may commit: that no instance started on it meanwhile (`copy`,
/// whose source is a database servers may start on; a restore reads a
/// copy of its own).
pub struct StillStopped {
    pub clock: Arc<dyn Clock>,
    /// The timeout an instance that does not say its own is judged by.
    pub fallback_timeout_ms: i64,
}

/// Copies every row of `source` (which nothing writes to meanwhile: a
/// stopped database, or a copy of a backup file), whose verify report is
/// `source_report` ([`verify_source`]), into `target` (which must hold no
/// data): the target commits only once every row is in, its verify agrees,
/// and, with `still_stopped`, no instance started on the source meanwhile.
/// `sms-credit copy` and `restore` are this.
pub async fn copy_rows(
    source: &Source,
    source_report: VerifyReport,
    target: &Store,
    still_stopped: Option<StillStopped>,
) -> Result<CopyReport, CopyError> {
    let (pages, receiver) = mpsc::channel::<CopyMessage>(4);
    let import = target.copying().import(receiver);
    let expected = source_report.clone();
    let export = async move {
        let mut counts = Vec::new();
        let mut first_page = true;
        for table in TABLES {
            let mut after = None;
            let mut count = 0_u64;
            loop {
                let rows = source
                    .backend
                    .export_page(table, after.take(), PAGE_ROWS)
                    .await?;
                let full = rows.len() as i64 == PAGE_ROWS;
                count += rows.len() as u64;
                after = rows.last().map(|row| table.key_of(row));
                if !rows.is_empty() {
                    if pages
                        .send(CopyMessage::Page(Page { table, rows }))
                        .await
                        .is_err()
                    {
                        // The target stopped taking pages: its error says why.
                        return Ok(counts);
                    }
                    if first_page {
                        first_page = false;
                        source.first_page_sent().await;
                    }
                }
                if !full {
                    break;
                }
            }
            counts.push((table.name, count));
        }
        source.backend.end_moment().await?;
        // Without the last word the import commits nothing.
        if let Some(check) = &still_stopped {
            let started =
                running_on(source, check.clock.now_ms(), check.fallback_timeout_ms).await?;
            if !started.is_empty() {
                return Err(CopyError::SourceStarted(started));
            }
        }
        finish(&pages, &counts, Some(expected)).await;
        Ok::<_, CopyError>(counts)
    };
    let (exported, imported) = futures_util::join!(export, import);
    // The export's error is the cause of the import's `Unfinished`.
    let exported = exported?;
    let imported = imported?;
    Ok(CopyReport {
        tables: exported,
        source: source_report,
        target: imported.target,
    })
}

/// Tells the import that the export read everything (it may commit). An
/// import that has stopped already has its own error to tell.
async fn finish(
    pages: &mpsc::Sender<CopyMessage>,
    counts: &[(&'static str, u64)],
    source: Option<VerifyReport>,
) {
    let _ = pages
        .send(CopyMessage::Finished(Finished {
            tables: counts.to_vec(),
            source,
        }))
        .await;
}

/// Copies one moment of `source`, which writers may be writing to, into
/// `target` (which must hold no data): every row read in one transaction
/// ([`super::CopyStore::export_snapshot`]), written in one that commits only
/// once the snapshot was read to its end and the target's verify is clean.
/// Answers each table's row count.
pub async fn copy_snapshot(
    source: &Store,
    target: &Store,
) -> Result<Vec<(&'static str, u64)>, CopyError> {
    let (pages, receiver) = mpsc::channel::<CopyMessage>(4);
    let export = async move {
        let counts = source.copying().export_snapshot(pages.clone()).await?;
        finish(&pages, &counts, None).await;
        Ok::<_, CopyError>(counts)
    };
    let (exported, imported) = futures_util::join!(export, target.copying().import(receiver));
    let exported = exported?;
    imported?;
    Ok(exported)
}

/// What an import checks, in its transaction, before it commits: as many
/// rows of each table as the export read, and a target whose verify is
/// clean and counts what the source's did. Shared by the adapters.
pub fn check_import(
    finished: &Finished,
    imported: &[(&'static str, u64)],
    target: &VerifyReport,
) -> Result<(), CopyError> {
    same_counts(&finished.tables, imported)?;
    if !target.is_clean() {
        return Err(CopyError::NotClean {
            side: "target",
            problems: target.problems.len(),
        });
    }
    if let Some(source) = &finished.source {
        if (source.accounts_checked, source.transactions_checked)
            != (target.accounts_checked, target.transactions_checked)
        {
            return Err(CopyError::Differs(format!(
                "{} accounts and {} transactions on the source, {} and {} on the target",
                source.accounts_checked,
                source.transactions_checked,
                target.accounts_checked,
                target.transactions_checked
            )));
        }
    }
    Ok(())
}

/// Every table exported arrived whole: as many rows imported as exported
/// (a table the import never saw counts none).
fn same_counts(
    exported: &[(&'static str, u64)],
    imported: &[(&'static str, u64)],
) -> Result<(), CopyError> {
    for (table, exported) in exported {
        let imported = imported
            .iter()
            .find(|(name, _)| name == table)
            .map_or(0, |(_, count)| *count);
        if imported != *exported {
            return Err(CopyError::CountMismatch {
                table,
                exported: *exported,
                imported,
            });
        }
    }
    Ok(())
}
