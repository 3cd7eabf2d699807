//! What goes wrong in the store: the port's error, and the stored value
//! this release does not know. At the bottom: it imports no domain module,
//! so domain errors can wrap it without a circle.

/// What went wrong in the store. Cloneable, because one failed commit
/// answers every caller in its batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("could not open the database {path}: {reason}")]
    Open { path: String, reason: String },
    /// There is no sms-credit database where the settings say (no file, or
    /// a file or Postgres database without its tables), and the store was
    /// opened not to make one: nothing was made.
    #[error("there is no sms-credit database at {database}: {reason}; nothing was created")]
    Missing { database: String, reason: String },
    #[error("could not migrate the database: {0}")]
    Migration(String),
    #[error("the commit failed and nothing in it was applied: {0}")]
    CommitFailed(String),
    /// The connection was lost as the commit was sent: whether it was
    /// applied is not known. Never read as "not applied": a caller looks
    /// (by the write's idempotency key) before it does anything else.
    #[error(
        "the connection was lost as the commit was sent; whether it was applied is not known: {0}"
    )]
    CommitUnknown(String),
    #[error(
        "the ledger on disk has moved on under this write (another writer?); nothing was applied"
    )]
    Conflict,
    #[error("not applied, because an earlier write of the same account failed")]
    Aborted,
    /// As `Conflict`, with where the account stands as the store found it
    /// in the same transaction (its snapshot and grants): the writer
    /// computes again from it without reading it back.
    #[error(
        "the ledger on disk has moved on under this write (now at seq {}); nothing was applied",
        .0.snapshot.seq
    )]
    MovedOn(Box<crate::ledger::Standing>),
    /// The ledger already holds a row of this account with the write's
    /// idempotency key (the unique index decided): nothing was applied; the
    /// caller answers with what that row says.
    #[error("the ledger already holds this idempotency key for the account; nothing was applied")]
    DuplicateKey,
    #[error("the store is shut down")]
    Closed,
    #[error("database error: {0}")]
    Database(String),
    /// The database broke a deadlock or a serialization conflict with
    /// another instance's transaction by giving up this one: nothing was
    /// applied, and running it again is safe.
    #[error("the database gave way to another instance's transaction: {0}; nothing was applied")]
    Contention(String),
    /// A value read back that this release does not know: never read as
    /// some default, because a default could move money.
    #[error("the database holds a value this release does not know: {0}")]
    UnknownValue(UnknownValue),
    /// An account's credit grants cannot be used (`why`): its snapshot
    /// names grants it cannot read, they do not sum to its balance, or
    /// they were never made (a database the backfill has not run on). No
    /// row is decided without them, and a retry cannot succeed until an
    /// operator repairs the account: not a failure of the store to retry.
    #[error(
        "the credit grants of account {account_id} cannot be used ({why}); nothing was changed: \
         sms-credit verify names what is wrong, and sms-credit migrate, run with every server \
         stopped, makes the grants again from the ledger"
    )]
    GrantsUnusable { account_id: i64, why: String },
}

/// A stored value outside what its column may hold, with the row it is in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{table} row {row}: unknown {column} '{value}'")]
pub struct UnknownValue {
    pub table: &'static str,
    /// The row's key, as text (`12`, or `account 3 seq 7`).
    pub row: String,
    pub column: &'static str,
    pub value: String,
}

impl UnknownValue {
    pub fn new(
        table: &'static str,
        row: impl ToString,
        column: &'static str,
        value: impl Into<String>,
    ) -> UnknownValue {
        UnknownValue {
            table,
            row: row.to_string(),
            column,
            value: value.into(),
        }
    }
}

/// Why an account could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateAccountError {
    #[error("an account with phone number {0} already exists")]
    PhoneTaken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An operation's error that may be a store error underneath: lets an
/// adapter see a transient failure (a deadlock with another instance)
/// inside an operation's own error type and run the batch again.
pub trait StoreCause {
    fn store_cause(&self) -> Option<&StoreError>;
}

impl StoreCause for StoreError {
    fn store_cause(&self) -> Option<&StoreError> {
        Some(self)
    }
}

impl StoreCause for CreateAccountError {
    fn store_cause(&self) -> Option<&StoreError> {
        match self {
            CreateAccountError::Store(error) => Some(error),
            CreateAccountError::PhoneTaken(_) => None,
        }
    }
}
