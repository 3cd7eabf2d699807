//! The one place where errors become HTTP answers: every error body is
//! `{"error": {"code": "...", "message": "..."}}`, including those of actix's
//! own extractors (bad JSON, oversized bodies, bad paths).

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use sms_credit_actors::billing::BillingError;
use sms_credit_actors::books::BooksError;
use sms_credit_actors::messaging::MessagingError;
use sms_credit_actors::rating::RatingError;
use sms_credit_actors::sign_in::SignInError;
use sms_credit_actors::store::CreateAccountError;
use sms_credit_actors::supervisor::SmsError;
use sms_credit_actors::webhooks::manage::WebhookError;
use sms_credit_actors::{LedgerError, StoreError};

/// Why a request was not done.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is wrong; `code` says how.
    #[error("{message}")]
    InvalidRequest { code: &'static str, message: String },
    #[error("the request body is larger than this endpoint accepts")]
    PayloadTooLarge,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// An anonymous purchase of access without a proved phone.
    #[error("prove the phone first: ask for a code (POST /v1/sign-in/code), then sign in with it (POST /v1/sign-in) for a sign-up token")]
    SignUpRequired,
    /// The account has as many feeds open as it may.
    #[error("this account has {0} feeds open, as many as it may: close one first")]
    TooManyFeeds(usize),
    /// Too many wrong tokens from this address: try again after the wait.
    #[error("too many wrong tokens from this address; try again in {} s", .0.as_secs().max(1))]
    TooManyAttempts(std::time::Duration),
    /// Too many calls to the anonymous routes from this address.
    #[error("too many requests from this address; try again in {} s", .0.as_secs().max(1))]
    TooManyRequests(std::time::Duration),
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the state of what it names; `code` says how.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A paid or privileged feature whose credentials are not configured.
    /// `message` is in the caller's words; the setting that would turn it
    /// on (`variable`) goes to the log, never to a customer.
    #[error("{message}")]
    NotConfigured {
        code: &'static str,
        message: &'static str,
        variable: &'static str,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    CreateAccount(#[from] CreateAccountError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rating(#[from] RatingError),
    #[error(transparent)]
    Billing(#[from] BillingError),
    /// The books could not be made from the ledger.
    #[error(transparent)]
    Books(#[from] BooksError),
    /// This server is reading as many books as it reads at once: nothing
    /// was read; try again after the wait.
    #[error("this server is already reading {at_once} books at once, as many as it reads; nothing was read: try again in {} s", retry_after.as_secs().max(1))]
    BooksBusy {
        at_once: usize,
        retry_after: std::time::Duration,
    },
    /// A webhook whose signature does not verify.
    #[error("{0}")]
    BadSignature(String),
    /// A Twilio webhook whose `X-Twilio-Signature` does not verify.
    #[error("the X-Twilio-Signature header is missing or wrong")]
    Forbidden,
    #[error(transparent)]
    Messaging(#[from] MessagingError),
    #[error(transparent)]
    Sms(#[from] SmsError),
    #[error(transparent)]
    SignIn(#[from] SignInError),
    /// A supervisor or worker that answers requests has stopped (the
    /// server is shutting down): nothing was done.
    #[error("the server is stopping; nothing was done, retry shortly")]
    Stopping,
    /// The path is a route, but not for this method; the `Allow` list.
    #[error("this route takes {0}")]
    MethodNotAllowed(String),
    /// A fault of the server itself (it is logged).
    #[error("internal error: {0}")]
    Internal(String),
}

/// The store error inside an error, if that is what it comes down to.
fn store_cause(error: &ApiError) -> Option<&StoreError> {
    match error {
        ApiError::Store(store)
        | ApiError::CreateAccount(CreateAccountError::Store(store))
        | ApiError::Ledger(LedgerError::Store(store))
        | ApiError::Billing(BillingError::Store(store))
        | ApiError::Books(BooksError::Store(store))
        | ApiError::Billing(BillingError::Ledger(LedgerError::Store(store)))
        | ApiError::Messaging(MessagingError::Store(store))
        | ApiError::Messaging(MessagingError::Ledger(LedgerError::Store(store)))
        | ApiError::Sms(SmsError::Store(store))
        | ApiError::Sms(SmsError::Ledger(LedgerError::Store(store)))
        | ApiError::SignIn(SignInError::Store(store)) => Some(store),
        _ => None,
    }
}

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> ApiError {
        match error {
            WebhookError::Invalid { field, message } => ApiError::InvalidRequest {
                code: match field {
                    "url" => "invalid_url",
                    "events" => "invalid_events",
                    "since" => "invalid_since",
                    _ => "invalid_request",
                },
                message: format!("{field}: {message}"),
            },
            WebhookError::NotFound(_) => ApiError::NotFound(error.to_string()),
            WebhookError::Disabled(_) => ApiError::Conflict {
                code: "endpoint_disabled",
                message: error.to_string(),
            },
            WebhookError::Store(error) => ApiError::Store(error),
        }
    }
}

impl ApiError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            code,
            message: message.into(),
        }
    }

    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match store_cause(self) {
            Some(StoreError::UnknownValue(_)) => return "unknown_stored_value",
            Some(StoreError::GrantsUnusable { .. }) => return "grants_unusable",
            _ => {}
        }
        match self {
            ApiError::InvalidRequest { code, .. } => code,
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::SignUpRequired => "sign_up_required",
            ApiError::TooManyAttempts(_) => "too_many_attempts",
            ApiError::TooManyRequests(_) => "too_many_requests",
            ApiError::TooManyFeeds(_) => "too_many_feeds",
            ApiError::SignIn(error) => match error {
                SignInError::InvalidCode => "invalid_code",
                SignInError::NotYet => "no_access_yet",
                SignInError::Wait { .. } => "too_many_codes",
                SignInError::TooManyWrongCodes { .. } => "too_many_wrong_codes",
                SignInError::Destination(rating) => ApiError::Rating(rating.clone()).code(),
                SignInError::NotSent(_) => "code_not_sent",
                SignInError::Store(_) => "store_unavailable",
            },
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict { code, .. } => code,
            ApiError::NotConfigured { code, .. } => code,
            ApiError::Ledger(error) => match error {
                LedgerError::AccountNotFound(_) => "account_not_found",
                LedgerError::InsufficientCredit { .. } => "insufficient_credit",
                LedgerError::IdempotencyConflict { .. } => "idempotency_conflict",
                LedgerError::InvalidKey(_) => "invalid_idempotency_key",
                LedgerError::InvalidAmount(_) => "invalid_amount",
                LedgerError::InvalidGrant(_) => "invalid_grant",
                LedgerError::ExpiryPassed => "invalid_expires_at",
                LedgerError::Overflow => "amount_out_of_range",
                LedgerError::Busy => "busy",
                LedgerError::Store(StoreError::CommitUnknown(_)) => "outcome_unknown",
                LedgerError::Store(_) | LedgerError::Interrupted | LedgerError::Passivated => {
                    "not_applied"
                }
            },
            ApiError::CreateAccount(CreateAccountError::PhoneTaken(_)) => "phone_taken",
            ApiError::Store(StoreError::CommitUnknown(_)) => "outcome_unknown",
            ApiError::CreateAccount(CreateAccountError::Store(_)) | ApiError::Store(_) => {
                "store_unavailable"
            }
            ApiError::Rating(error) => match error {
                RatingError::InvalidNumber(_) => "invalid_phone",
                RatingError::NoCountry { .. } | RatingError::UnsupportedDestination { .. } => {
                    "unsupported_destination"
                }
                RatingError::BodyTooLong { .. } => "body_too_long",
                RatingError::Overflow => "amount_out_of_range",
            },
            ApiError::Billing(error) => match error {
                BillingError::UnknownDiscountCode(_) => "unknown_discount_code",
                BillingError::InactiveDiscountCode(_) => "inactive_discount_code",
                BillingError::DiscountCodeUsedUp(_) => "discount_code_used_up",
                BillingError::BelowMinimumCharge(_) => "below_minimum_charge",
                BillingError::DailyLimit(_) => "daily_limit",
                BillingError::AlreadyActive(_) => "already_active",
                BillingError::AccountNotFound(_) => "account_not_found",
                BillingError::NoSavedCard => "no_saved_card",
                BillingError::NotActive(_) => "account_not_active",
                BillingError::Invalid(_) => "invalid_request",
                BillingError::OrderNotFound(_) => "order_not_found",
                BillingError::NotRefundable(_) => "not_refundable",
                BillingError::RefundRefused(_) => "refund_refused",
                BillingError::RefundNotMade(_) => "refund_not_made",
                BillingError::RefundMismatch(_) => "refund_mismatch",
                BillingError::Gateway(_)
                | BillingError::GatewayUnavailable(_)
                | BillingError::GatewayMissing(_)
                | BillingError::GatewayKeyRefused(_) => "stripe_error",
                BillingError::Busy(_) => "busy",
                BillingError::Ledger(_) | BillingError::Store(_) => "not_applied",
            },
            ApiError::BooksBusy { .. } => "books_busy",
            ApiError::Books(error) => match error {
                BooksError::Unbookable { .. } => "ledger_inconsistent",
                BooksError::Overflow => "amount_out_of_range",
                BooksError::Store(_) => "store_unavailable",
            },
            ApiError::BadSignature(_) | ApiError::Forbidden => "bad_signature",
            ApiError::Messaging(error) => match error {
                MessagingError::Rating(rating) => ApiError::Rating(rating.clone()).code(),
                MessagingError::Ledger(ledger) => ApiError::Ledger(ledger.clone()).code(),
                MessagingError::Store(_) => "store_unavailable",
                MessagingError::AccountNotFound(_) => "account_not_found",
                MessagingError::UnknownNumber(_) => "unknown_number",
                MessagingError::NumberMismatch { .. } => "number_mismatch",
                MessagingError::NoDestination => "no_destination",
                MessagingError::InvalidKey(_) => "invalid_idempotency_key",
                MessagingError::InProgress => "in_progress",
                MessagingError::RecipientOptedOut => "recipient_opted_out",
                MessagingError::NotSent(_)
                | MessagingError::Unavailable(_)
                | MessagingError::Refused { .. } => "twilio_error",
                MessagingError::KeySpent => "idempotency_key_spent",
                MessagingError::OutcomeUnknown(_) => "send_outcome_unknown",
            },
            ApiError::Sms(SmsError::Busy) => "busy",
            ApiError::Sms(_) => "not_applied",
            ApiError::Stopping => "stopping",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// What the client is told. Store failures are told without internals;
    /// their causes go to the log.
    fn public_message(&self) -> String {
        match store_cause(self) {
            Some(StoreError::UnknownValue(unknown)) => {
                return format!(
                    "the database holds a value this release does not know ({unknown}); nothing was changed"
                )
            }
            // Why goes to the log; the caller learns that asking again is
            // no use until the account is repaired.
            Some(StoreError::GrantsUnusable { account_id, .. }) => {
                return format!(
                    "the credit of account {account_id} cannot be used, so nothing was changed: \
                     an operator must repair the account (sms-credit verify names what is \
                     wrong); asking again will not help until then"
                )
            }
            _ => {}
        }
        match self {
            ApiError::Ledger(
                LedgerError::Store(_) | LedgerError::Interrupted | LedgerError::Passivated,
            ) => {
                "the operation was not applied; retry it with the same idempotency key".to_string()
            }
            ApiError::CreateAccount(CreateAccountError::Store(_))
            | ApiError::Store(_)
            | ApiError::Books(BooksError::Store(_)) => {
                "the store is unavailable; nothing was changed".to_string()
            }
            ApiError::Billing(BillingError::Ledger(_) | BillingError::Store(_))
            | ApiError::Messaging(MessagingError::Store(_))
            | ApiError::Sms(_) => "the operation was not completed; retry it".to_string(),
            ApiError::Messaging(MessagingError::Ledger(ledger)) => {
                ApiError::Ledger(ledger.clone()).public_message()
            }
            ApiError::Internal(_) => "the server failed; nothing was changed".to_string(),
            // A provider's own words go to the log only (they may name keys
            // or accounts); the request id in `X-Request-Id` finds them.
            ApiError::Billing(
                BillingError::Gateway(_)
                | BillingError::GatewayUnavailable(_)
                | BillingError::GatewayMissing(_)
                | BillingError::GatewayKeyRefused(_),
            ) => {
                "the payment provider did not complete the request; the X-Request-Id header names it in the server's log".to_string()
            }
            ApiError::SignIn(SignInError::NotSent(_)) => {
                "the code could not be sent just now; try again in a minute".to_string()
            }
            ApiError::SignIn(SignInError::Store(_)) => {
                "the store is unavailable; nothing was changed".to_string()
            }
            ApiError::Messaging(MessagingError::OutcomeUnknown(_)) => {
                "Twilio may have taken the message but did not say so: whether it was sent is not known yet. It is charged until settled (within about ten minutes): sent, it stays charged; not sent, its cost is given back. Send the same idempotency key again to learn which (409 in_progress until then); never a new key, which would send it again".to_string()
            }
            ApiError::Messaging(
                MessagingError::NotSent(_)
                | MessagingError::Unavailable(_)
                | MessagingError::Refused { .. },
            ) => {
                "the carrier did not take the message, and its cost was given back; to try again, send it with a new idempotency key (this one is spent); the X-Request-Id header names it in the server's log".to_string()
            }
            other => other.to_string(),
        }
    }
}

/// Every error the API answers: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail<'a> {
    /// Stable and machine-readable (`insufficient_credit`, `invalid_json`, …).
    code: &'a str,
    /// For people.
    message: String,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        // What the database holds is at fault, not the request nor the
        // store's reach: a 500, which no client retries as a 503 invites.
        if let Some(StoreError::UnknownValue(_) | StoreError::GrantsUnusable { .. }) =
            store_cause(self)
        {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized | ApiError::SignUpRequired => StatusCode::UNAUTHORIZED,
            ApiError::TooManyAttempts(_)
            | ApiError::TooManyRequests(_)
            | ApiError::TooManyFeeds(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::NotConfigured { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Ledger(error) => match error {
                LedgerError::AccountNotFound(_) => StatusCode::NOT_FOUND,
                LedgerError::InsufficientCredit { .. } => StatusCode::PAYMENT_REQUIRED,
                LedgerError::IdempotencyConflict { .. } => StatusCode::CONFLICT,
                LedgerError::InvalidKey(_)
                | LedgerError::InvalidAmount(_)
                | LedgerError::InvalidGrant(_)
                | LedgerError::ExpiryPassed
                | LedgerError::Overflow => StatusCode::BAD_REQUEST,
                LedgerError::Busy
                | LedgerError::Store(_)
                | LedgerError::Interrupted
                | LedgerError::Passivated => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::CreateAccount(CreateAccountError::PhoneTaken(_)) => StatusCode::CONFLICT,
            ApiError::CreateAccount(CreateAccountError::Store(_)) | ApiError::Store(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Rating(
                RatingError::NoCountry { .. } | RatingError::UnsupportedDestination { .. },
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Rating(_) => StatusCode::BAD_REQUEST,
            ApiError::Billing(error) => match error {
                BillingError::OrderNotFound(_) => StatusCode::NOT_FOUND,
                BillingError::NotRefundable(_)
                | BillingError::RefundRefused(_)
                | BillingError::RefundNotMade(_)
                | BillingError::RefundMismatch(_) => StatusCode::CONFLICT,
                BillingError::UnknownDiscountCode(_) | BillingError::AccountNotFound(_) => {
                    StatusCode::NOT_FOUND
                }
                BillingError::InactiveDiscountCode(_)
                | BillingError::DiscountCodeUsedUp(_)
                | BillingError::DailyLimit(_)
                | BillingError::AlreadyActive(_)
                | BillingError::NotActive(_) => StatusCode::CONFLICT,
                BillingError::BelowMinimumCharge(_) | BillingError::NoSavedCard => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                BillingError::Invalid(_) => StatusCode::BAD_REQUEST,
                BillingError::Gateway(_)
                | BillingError::GatewayUnavailable(_)
                | BillingError::GatewayMissing(_)
                | BillingError::GatewayKeyRefused(_) => StatusCode::BAD_GATEWAY,
                BillingError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                BillingError::Ledger(_) | BillingError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::BooksBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Books(error) => match error {
                // What the ledger holds is at fault, not the request.
                BooksError::Unbookable { .. } | BooksError::Overflow => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                BooksError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::BadSignature(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::Messaging(error) => match error {
                MessagingError::Rating(rating) => ApiError::Rating(rating.clone()).status_code(),
                MessagingError::Ledger(ledger) => ApiError::Ledger(ledger.clone()).status_code(),
                MessagingError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                MessagingError::AccountNotFound(_) | MessagingError::UnknownNumber(_) => {
                    StatusCode::NOT_FOUND
                }
                MessagingError::NumberMismatch { .. }
                | MessagingError::NoDestination
                | MessagingError::InvalidKey(_) => StatusCode::BAD_REQUEST,
                MessagingError::InProgress
                | MessagingError::RecipientOptedOut
                | MessagingError::KeySpent => StatusCode::CONFLICT,
                MessagingError::NotSent(_)
                | MessagingError::Unavailable(_)
                | MessagingError::Refused { .. } => StatusCode::BAD_GATEWAY,
                // Twilio did not answer in time (or its answer could not be
                // recorded): whether the message went is settled later.
                MessagingError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            },
            ApiError::SignIn(error) => match error {
                SignInError::InvalidCode => StatusCode::UNAUTHORIZED,
                SignInError::NotYet => StatusCode::CONFLICT,
                SignInError::Wait { .. } | SignInError::TooManyWrongCodes { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                SignInError::Destination(rating) => ApiError::Rating(rating.clone()).status_code(),
                SignInError::NotSent(_) => StatusCode::BAD_GATEWAY,
                SignInError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::Sms(_) | ApiError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        match self {
            // The operator's choice, not a fault.
            ApiError::NotConfigured { variable, .. } => {
                tracing::debug!(code = self.code(), "feature not configured: set {variable}")
            }
            _ if status.is_server_error() => {
                tracing::error!(code = self.code(), error = %self, "request failed")
            }
            _ => {}
        }
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::TooManyAttempts(wait)
            | ApiError::TooManyRequests(wait)
            | ApiError::BooksBusy {
                retry_after: wait, ..
            } => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response.insert_header((header::RETRY_AFTER, seconds.max(1).to_string()));
            }
            ApiError::SignIn(
                SignInError::Wait { retry_after_ms }
                | SignInError::TooManyWrongCodes { retry_after_ms },
            ) => {
                let seconds = (retry_after_ms + 999) / 1000;
                response.insert_header((header::RETRY_AFTER, seconds.max(1).to_string()));
            }
            ApiError::Ledger(LedgerError::Busy)
            | ApiError::Billing(BillingError::Busy(_))
            | ApiError::Sms(SmsError::Busy) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.public_message(),
            },
        })
    }
}

/// Bad or oversized JSON bodies, in the common error body.
pub fn json_error(error: JsonPayloadError, _request: &HttpRequest) -> actix_web::Error {
    let api_error = match &error {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge
        }
        JsonPayloadError::ContentType => ApiError::invalid(
            "unsupported_content_type",
            "the body must be JSON (Content-Type: application/json)",
        ),
        JsonPayloadError::Deserialize(cause) => {
            ApiError::invalid("invalid_json", format!("invalid JSON body: {cause}"))
        }
        other => ApiError::invalid("invalid_body", format!("could not read the body: {other}")),
    };
    api_error.into()
}

/// Bad path parameters (for example a non-numeric account id).
pub fn path_error(error: PathError, _request: &HttpRequest) -> actix_web::Error {
    ApiError::invalid("invalid_path", format!("invalid path parameter: {error}")).into()
}

/// Bad query strings.
pub fn query_error(error: QueryPayloadError, _request: &HttpRequest) -> actix_web::Error {
    ApiError::invalid("invalid_query", format!("invalid query string: {error}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_supervisor_is_not_a_store_failure() {
        let stopping = ApiError::Stopping;
        assert_eq!(stopping.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(stopping.code(), "stopping");
        assert_eq!(
            ApiError::Store(StoreError::Closed).code(),
            "store_unavailable",
            "what a closed mailbox used to be reported as"
        );
    }

    #[test]
    fn an_unknown_stored_value_is_a_500_that_names_its_row() {
        let unknown = StoreError::UnknownValue(sms_credit_actors::store::UnknownValue::new(
            "orders",
            12,
            "order_type",
            "gift",
        ));
        for error in [
            ApiError::Store(unknown.clone()),
            ApiError::Ledger(LedgerError::Store(unknown.clone())),
            ApiError::Billing(BillingError::Store(unknown.clone())),
        ] {
            assert_eq!(error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(error.code(), "unknown_stored_value");
            assert!(error
                .public_message()
                .contains("orders row 12: unknown order_type 'gift'"));
        }
    }

    #[test]
    fn grants_that_cannot_be_used_are_a_500_that_no_retry_mends_through_every_door() {
        let unusable = StoreError::GrantsUnusable {
            account_id: 7,
            why: "they hold $5.70 in all, but the balance is $5.699".into(),
        };
        let ledger = LedgerError::Store(unusable.clone());
        for error in [
            ApiError::Ledger(ledger.clone()),
            ApiError::Billing(BillingError::Ledger(ledger.clone())),
            ApiError::Messaging(MessagingError::Ledger(ledger.clone())),
            ApiError::Sms(SmsError::Ledger(ledger)),
            ApiError::Store(unusable.clone()),
        ] {
            assert_eq!(error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(error.code(), "grants_unusable");
            let told = error.public_message();
            assert!(
                told.contains("account 7") && told.contains("an operator must repair"),
                "{told}"
            );
            // Why is for the log; the caller is never told to retry.
            assert!(!told.contains("5.699") && !told.contains("retry"), "{told}");
        }
    }
}
