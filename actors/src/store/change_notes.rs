//! What one process tells the others sharing the database, in the notes
//! its commits leave (SQLite's `ledger_changes` rows, Postgres's
//! `pg_notify` payloads): `account:first-last:balance:warned:grants` for
//! ledger rows it wrote and where they left the account (`warned` empty
//! when the account was never warned, `grants` what is left of each grant
//! as the snapshot stores it; the older `account:first-last:balance:warned`
//! and `account:first-last` still read),
//! `auto:account` for an auto top-up setting it changed, `tokens:account`
//! for an account's tokens it revoked. Both adapters read and write this
//! one grammar.

use crate::grants::decode_remaining;
use crate::ledger::{AccountId, Snapshot, Standing};
use crate::money::Money;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChangeNote {
    /// Rows `first..=last` of an account's ledger, and the account's
    /// snapshot after them when the note says it (a process that knows it
    /// needs to read nothing back to catch up).
    Rows {
        account_id: AccountId,
        first: i64,
        last: i64,
        after: Option<Standing>,
    },
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

/// The longest grants a note carries: an account with more live grants
/// than fit is told without them (the other processes' actors read them
/// before their next write), so that a note stays small (and within
/// Postgres's payload limit).
pub(crate) const MAX_NOTED_GRANTS: usize = 1_024;

/// The note that rows `first..=after.seq` of an account were written,
/// leaving it at `after` with `grants` (the snapshot's text).
pub(crate) fn rows(account_id: AccountId, first: i64, after: &Snapshot, grants: &str) -> String {
    let warned = after
        .low_balance_warned_at_ms
        .map_or(String::new(), |at| at.to_string());
    let mut note = format!(
        "{account_id}:{first}-{}:{}:{warned}",
        after.seq,
        after.balance.micros()
    );
    if grants.len() <= MAX_NOTED_GRANTS {
        note.push(':');
        note.push_str(grants);
    }
    note
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
    // The grants, last, have colons of their own.
    let mut parts = detail.splitn(4, ':');
    let (first, last) = parts.next()?.split_once('-')?;
    let (first, last): (i64, i64) = (first.parse().ok()?, last.parse().ok()?);
    let after = match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) => None,
        (Some(balance), Some(warned), grants) => Some(Standing {
            snapshot: Snapshot {
                balance: Money::from_micros(balance.parse().ok()?),
                seq: last,
                low_balance_warned_at_ms: match warned {
                    "" => None,
                    at => Some(at.parse().ok()?),
                },
            },
            grants: match grants {
                None => None,
                Some(text) => Some(decode_remaining(text).ok()?),
            },
        }),
        _ => return None,
    };
    Some(ChangeNote::Rows {
        account_id: AccountId(subject.parse().ok()?),
        first,
        last,
        after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_read_back_what_was_written() {
        for after in [
            Snapshot {
                balance: Money::from_micros(-56_500),
                seq: 14,
                low_balance_warned_at_ms: Some(1_700_000_000_000),
            },
            Snapshot {
                balance: Money::from_micros(9_000_000),
                seq: 14,
                low_balance_warned_at_ms: None,
            },
        ] {
            for grants in ["", "0:-5,12:3"] {
                assert_eq!(
                    parse(&rows(AccountId(7), 12, &after, grants)),
                    Some(ChangeNote::Rows {
                        account_id: AccountId(7),
                        first: 12,
                        last: 14,
                        after: Some(Standing {
                            snapshot: after,
                            grants: Some(decode_remaining(grants).unwrap()),
                        }),
                    })
                );
            }
        }
        // Too many grants to carry: the snapshot alone.
        let many = vec!["12:3"; MAX_NOTED_GRANTS].join(",");
        let after = Snapshot {
            balance: Money::from_micros(5),
            seq: 14,
            low_balance_warned_at_ms: None,
        };
        assert_eq!(
            parse(&rows(AccountId(7), 12, &after, &many)),
            Some(ChangeNote::Rows {
                account_id: AccountId(7),
                first: 12,
                last: 14,
                after: Some(Standing {
                    snapshot: after,
                    grants: None,
                }),
            })
        );
        assert_eq!(
            parse("7:12-14"),
            Some(ChangeNote::Rows {
                account_id: AccountId(7),
                first: 12,
                last: 14,
                after: None,
            })
        );
        assert_eq!(
            parse(&auto_top_up(AccountId(9))),
            Some(ChangeNote::AutoTopUp(AccountId(9)))
        );
        assert_eq!(
            parse(&tokens(AccountId(4))),
            Some(ChangeNote::Tokens(AccountId(4)))
        );
        for garbage in [
            "garbage",
            "7:1",
            "auto:x",
            "x:1-2",
            ":",
            "7:1-2:x:",
            "7:1-2:5:x",
            "7:1-2:5",
            "7:1-2:5:::",
            "7:1-2:5::12:x",
            "7:1-2:5::12:0",
        ] {
            assert_eq!(parse(garbage), None, "{garbage}");
        }
    }
}
