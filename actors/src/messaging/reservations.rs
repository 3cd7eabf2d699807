//! The sweep of open reservations. A message whose reservation was never
//! resolved — its instance stopped, its request was dropped mid-send,
//! Twilio did not answer, or recording Twilio's answer failed — is resolved
//! by asking Twilio what became of it: found among the messages Twilio
//! lists, it is marked sent and its debit stands; not found, once no send
//! of it can still be under way, its cost is given back; Twilio not
//! answering, it is left for the next sweep.

use sha2::{Digest, Sha256};

use super::records::{
    MarkSentError, MessageRecord, MessageState, OpenReservation, ReservationSweep, VoidStart,
};
use super::{ListedMessage, Messaging, MessagingError};
use crate::ledger::IdempotencyKey;

/// How old a live instance's reservation is before the sweep takes it: its
/// own send (Twilio answers or times out within 15 s) is long over.
pub const LOOK_AFTER_MS: i64 = 2 * 60_000;
/// How old a reservation is before Twilio's not showing it means it was not
/// sent (of an instance that stopped: as soon as Twilio shows nothing).
pub const GIVE_BACK_AFTER_MS: i64 = 10 * 60_000;
/// How long a sweep holds a reservation it took: no other sweep takes it
/// meanwhile (unless the sweeping instance stops), and one Twilio did not
/// answer about is asked again after it.
pub const SWEEP_LEASE_MS: i64 = 60_000;
/// How far before its reservation a message Twilio created may be its send
/// (the two clocks may differ).
const MATCH_BEFORE_MS: i64 = 60_000;
/// How far after its reservation a message Twilio created may be its send
/// (the send follows the debit within seconds; this allows for a slow one).
const MATCH_AFTER_MS: i64 = 5 * 60_000;
/// Reservations taken at a time.
const SWEEP_BATCH: i64 = 20;

/// The SHA-256 (hex) of a message's body: kept with its reservation, so the
/// sweep tells its send among Twilio's messages without keeping the text.
pub fn body_sha256(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

/// What a sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Found at Twilio: marked sent, the debit kept.
    pub sent: usize,
    /// Not sent: the cost given back (or, with no debit, simply closed).
    pub given_back: usize,
    /// Left reserved: Twilio did not answer, or it is too early to say.
    pub left: usize,
}

/// What became of one reservation.
enum Resolution {
    Sent,
    GivenBack,
    Left,
    /// Another flow resolved it meanwhile (its own send, another sweep).
    ResolvedElsewhere,
}

impl Messaging {
    /// Resolves the open reservations due (see the module's doc): those of
    /// instances that stopped (no heartbeat for longer than their own
    /// instance timeout; `timeout_ms`, this instance's own, for one that
    /// does not say) and those of live instances older than
    /// [`LOOK_AFTER_MS`]. Each is
    /// taken under a lease, so that instances sweeping at once share them
    /// out; its state moves only from reserved, once, so a send answered
    /// late and the sweep never both resolve it.
    pub async fn resolve_reservations(
        &self,
        now_ms: i64,
        timeout_ms: i64,
    ) -> Result<SweepReport, MessagingError> {
        let mut report = SweepReport::default();
        loop {
            let taken = self
                .store
                .messages()
                .claim_open_reservations(ReservationSweep {
                    instance_id: self.store.instance_id().to_string(),
                    now_ms,
                    fallback_timeout_ms: timeout_ms,
                    stale_before_ms: now_ms.saturating_sub(LOOK_AFTER_MS),
                    lease_until_ms: now_ms.saturating_add(SWEEP_LEASE_MS),
                    limit: SWEEP_BATCH,
                })
                .await?;
            if taken.is_empty() {
                return Ok(report);
            }
            // Each one taken is under the lease now: the next claim takes
            // others, so the loop ends.
            for open in taken {
                match self.resolve_one(&open, now_ms).await {
                    Ok(Resolution::Sent) => report.sent += 1,
                    Ok(Resolution::GivenBack) => report.given_back += 1,
                    Ok(Resolution::Left) => report.left += 1,
                    Ok(Resolution::ResolvedElsewhere) => {}
                    Err(error) => {
                        tracing::warn!(
                            message_id = open.message.id,
                            %error,
                            "could not resolve an open reservation; the next sweep tries again"
                        );
                        report.left += 1;
                    }
                }
            }
        }
    }

    async fn resolve_one(
        &self,
        open: &OpenReservation,
        now_ms: i64,
    ) -> Result<Resolution, MessagingError> {
        let record = &open.message;
        // Whether the debit committed (its answer may have been lost): a
        // refund keyed to a debit that never happened would create money.
        let debited = match record.account_id {
            Some(account_id) => self
                .store
                .ledger()
                .entry_by_key(account_id, IdempotencyKey::message(record.id))
                .await?
                .is_some(),
            None => false,
        };
        let no_send_under_way =
            open.owner_gone || now_ms.saturating_sub(record.created_at_ms) >= GIVE_BACK_AFTER_MS;
        if open.voiding {
            // Giving the cost back had begun: finished, whatever Twilio says.
            return self.give_back(record, debited).await;
        }
        if !debited {
            // The send follows the debit's answer: no debit, no send.
            return if no_send_under_way {
                self.give_back(record, false).await
            } else {
                Ok(Resolution::Left)
            };
        }
        let listed = match self
            .sender
            .sent_to(
                &record.to,
                record.created_at_ms.saturating_sub(MATCH_BEFORE_MS),
            )
            .await
        {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(
                    message_id = record.id,
                    %error,
                    "Twilio did not say whether a message was sent; asked again later"
                );
                return Ok(Resolution::Left);
            }
        };
        for found in sends_of(open, listed) {
            let check_at =
                now_ms.saturating_add(crate::clock::millis(self.settings.price_check_delay));
            let marked = self
                .store
                .messages()
                .mark_sent(record.id, found.sid.clone(), found.status.clone(), check_at)
                .await;
            match marked {
                Ok((Some(message), early_status))
                    if message.state == MessageState::Sent
                        && message.twilio_sid.as_deref() == Some(found.sid.as_str()) =>
                {
                    tracing::info!(
                        message_id = record.id,
                        twilio_sid = %found.sid,
                        "an open reservation was found sent at Twilio: the debit stands"
                    );
                    // A warning this message's debit set off was waiting for it.
                    self.store.notices_ready().notify_one();
                    // The status Twilio lists if the message never left it
                    // (final: it outranks an earlier one Twilio called back
                    // with meanwhile, which applies otherwise).
                    let status = if found.status == "failed" {
                        Some(found.status.clone())
                    } else {
                        early_status
                    };
                    if let Some(status) = status {
                        self.handle_status(&found.sid, &status, now_ms).await?;
                    }
                    return Ok(Resolution::Sent);
                }
                Ok(_) => return Ok(Resolution::ResolvedElsewhere),
                // That one is another message's send: the next, if any.
                Err(MarkSentError::SidTaken(_)) => continue,
                Err(MarkSentError::Store(error)) => return Err(error.into()),
            }
        }
        if no_send_under_way {
            self.give_back(record, true).await
        } else {
            Ok(Resolution::Left)
        }
    }

    async fn give_back(
        &self,
        record: &MessageRecord,
        debited: bool,
    ) -> Result<Resolution, MessagingError> {
        Ok(match self.void(record, debited).await? {
            VoidStart::Started => {
                tracing::info!(
                    message_id = record.id,
                    debited,
                    "an open reservation was not sent: its cost is given back"
                );
                Resolution::GivenBack
            }
            VoidStart::Resolved(_) => Resolution::ResolvedElsewhere,
        })
    }
}

/// The messages Twilio lists that may be this reservation's send, oldest
/// first: the same body (by its hash; a reservation of an earlier release,
/// which kept none, takes any) created in the reservation's window. Two
/// reservations of one body to one number take one each: a message's sid
/// is recorded for one message only.
fn sends_of(open: &OpenReservation, listed: Vec<ListedMessage>) -> Vec<ListedMessage> {
    let created = open.message.created_at_ms;
    let window = created.saturating_sub(MATCH_BEFORE_MS)..=created.saturating_add(MATCH_AFTER_MS);
    let mut sends: Vec<ListedMessage> = listed
        .into_iter()
        .filter(|listed| window.contains(&listed.created_at_ms))
        .filter(|listed| {
            open.body_sha256
                .as_deref()
                .is_none_or(|hash| hash == body_sha256(&listed.body))
        })
        .collect();
    sends.sort_by(|one, other| {
        (one.created_at_ms, &one.sid).cmp(&(other.created_at_ms, &other.sid))
    });
    sends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::records::{MessageKind, MessageRecord};
    use crate::money::Money;

    fn open(body: Option<&str>, created_at_ms: i64) -> OpenReservation {
        OpenReservation {
            message: MessageRecord {
                id: 1,
                account_id: None,
                kind: MessageKind::Outbound,
                idempotency_key: Some("k".into()),
                to: "+14155550100".into(),
                country: "US".into(),
                encoding: "GSM-7".into(),
                segments: 1,
                price_per_segment: Money::from_micros(7_900),
                charged: Money::from_micros(7_900),
                state: MessageState::Reserved,
                twilio_sid: None,
                twilio_status: None,
                refunded: false,
                actual_cost: None,
                created_at_ms,
            },
            body_sha256: body.map(body_sha256),
            voiding: false,
            owner_gone: false,
        }
    }

    fn listed(sid: &str, body: &str, created_at_ms: i64) -> ListedMessage {
        ListedMessage {
            sid: sid.into(),
            body: body.into(),
            status: "delivered".into(),
            created_at_ms,
        }
    }

    #[test]
    fn a_send_is_the_same_body_in_the_window_oldest_first() {
        let at = 1_800_000_000_000;
        let found = sends_of(
            &open(Some("Storm at 3pm"), at),
            vec![
                listed("SM4", "Storm at 3pm", at + 4_000),
                listed("SM3", "Storm at 4pm", at + 1_000),
                listed("SM2", "Storm at 3pm", at + 2_000),
                listed("SM1", "Storm at 3pm", at - MATCH_BEFORE_MS - 1_000),
                listed("SM5", "Storm at 3pm", at + MATCH_AFTER_MS + 1_000),
            ],
        );
        let sids: Vec<&str> = found.iter().map(|found| found.sid.as_str()).collect();
        assert_eq!(sids, ["SM2", "SM4"]);
    }

    #[test]
    fn a_reservation_without_a_body_hash_takes_any_body_in_its_window() {
        let at = 1_800_000_000_000;
        let found = sends_of(&open(None, at), vec![listed("SM1", "anything", at)]);
        assert_eq!(found.len(), 1);
    }
}
