//! What one process tells the others sharing the database, in the notes
//! its commits leave (SQLite's `ledger_changes` rows, Postgres's
//! `pg_notify` payloads): `account:first-last` for ledger rows it wrote,
//! `auto:account` for an auto top-up setting it changed, `tokens:account`
//! for an account's tokens it revoked. Both adapters
//! read and write this one grammar.

use crate::ledger::AccountId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeNote {
    /// Rows `first..=last` of an account's ledger.
    Rows(AccountId, i64, i64),
    /// An account's auto top-up setting.
    AutoTopUp(AccountId),
    /// An account's tokens (revoked or rotated).
    Tokens(AccountId),
}

const AUTO_TOP_UP: &str = "auto";
const TOKENS: &str = "tokens";

/// The note that an account's tokens were revoked or rotated.
pub(crate) fn tokens(account_id: AccountId) -> String {
    format!("{TOKENS}:{account_id}")
}

/// The note that an account's auto top-up setting changed.
pub(crate) fn auto_top_up(account_id: AccountId) -> String {
    format!("{AUTO_TOP_UP}:{account_id}")
}

/// The note that rows `first..=last` of an account were written.
pub(crate) fn rows(account_id: AccountId, first: i64, last: i64) -> String {
    format!("{account_id}:{first}-{last}")
}

/// One note; a malformed one is `None` (it names nothing this release
/// could read, and is skipped).
pub(crate) fn parse(pair: &str) -> Option<ChangeNote> {
    let (subject, detail) = pair.split_once(':')?;
    if subject == AUTO_TOP_UP {
        return Some(ChangeNote::AutoTopUp(AccountId(detail.parse().ok()?)));
    }
    if subject == TOKENS {
        return Some(ChangeNote::Tokens(AccountId(detail.parse().ok()?)));
    }
    let (first, last) = detail.split_once('-')?;
    Some(ChangeNote::Rows(
        AccountId(subject.parse().ok()?),
        first.parse().ok()?,
        last.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_read_back_what_was_written() {
        assert_eq!(
            parse(&rows(AccountId(7), 12, 14)),
            Some(ChangeNote::Rows(AccountId(7), 12, 14))
        );
        assert_eq!(
            parse(&auto_top_up(AccountId(9))),
            Some(ChangeNote::AutoTopUp(AccountId(9)))
        );
        assert_eq!(
            parse(&tokens(AccountId(4))),
            Some(ChangeNote::Tokens(AccountId(4)))
        );
        for garbage in ["garbage", "7:1", "auto:x", "x:1-2", ":"] {
            assert_eq!(parse(garbage), None, "{garbage}");
        }
    }
}
