//! Backups (`sms-credit backup`): what is recorded of each one taken, so
//! that the console and `/metrics` can say when the last one was.

use serde::Serialize;

/// How long the database may go without a backup before the console lists
/// it under what needs attention: a day.
pub const BACKUP_DUE_AFTER_MS: i64 = 24 * 60 * 60 * 1000;

/// One backup put in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackupRecord {
    /// When its snapshot was read: the moment of the
    /// database it holds.
    #[serde(
        rename = "taken_at",
        serialize_with = "crate::clock::rfc3339::serialize"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub taken_at_ms: i64,
    /// Where the file was put.
    pub path: String,
    pub accounts: i64,
    /// Ledger rows.
    pub transactions: i64,
    /// The file's size.
    pub bytes: i64,
    /// How long the backup took, from the snapshot to the file in place.
    pub duration_ms: i64,
}

impl BackupRecord {
    /// Whether, at `now_ms`, this backup is older than a day.
    pub fn is_overdue(&self, now_ms: i64) -> bool {
        now_ms.saturating_sub(self.taken_at_ms) > BACKUP_DUE_AFTER_MS
    }
}
