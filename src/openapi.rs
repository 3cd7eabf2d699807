//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, built
//! from one table ([`OPERATIONS`]); a test holds it to the routes that are
//! actually registered.

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

/// Who may call an operation.
#[derive(Clone, Copy)]
pub enum Access {
    Public,
    Admin,
    HostApplication,
    AccountToken,
    /// An account token or a feed ticket, or the admin token.
    FeedCaller,
    TwilioSignature,
    StripeSignature,
}

/// A request body field: name, JSON type, required.
type Field = (&'static str, &'static str, bool);

/// One documented operation.
pub struct Operation {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// JSON body fields; `None` for no JSON body.
    pub body: Option<&'static [Field]>,
    /// The status of success.
    pub success: u16,
    /// What success returns, when it is not JSON.
    pub content_type: &'static str,
}

const JSON: &str = "application/json";

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    access: Access,
    body: Option<&'static [Field]>,
    success: u16,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        access,
        body,
        success,
        content_type: JSON,
    }
}

const fn with_content(mut operation: Operation, content_type: &'static str) -> Operation {
    operation.content_type = content_type;
    operation
}

use Access::*;

/// Every route of the server.
pub const OPERATIONS: &[Operation] = &[
    op("get", "/healthz", "The process answers.", Public, None, 200),
    op(
        "get",
        "/readyz",
        "The store answers a read.",
        Public,
        None,
        200,
    ),
    with_content(
        op(
            "get",
            "/metrics",
            "Metrics in Prometheus text format.",
            Public,
            None,
            200,
        ),
        "text/plain",
    ),
    op("get", "/openapi.json", "This document.", Public, None, 200),
    with_content(
        op(
            "get",
            "/account",
            "The account holder's web page.",
            Public,
            None,
            200,
        ),
        "text/html",
    ),
    op(
        "post",
        "/v1/quote",
        "What a message to a number will cost.",
        Public,
        Some(&[
            ("to", "string", true),
            ("body", "string", true),
            ("smart_encoding", "boolean", false),
        ]),
        200,
    ),
    op(
        "post",
        "/v1/checkout/access",
        "Start a Stripe Checkout for initial access.",
        Public,
        Some(&[
            ("phone", "string", true),
            ("email", "string", true),
            ("discount_code", "string", false),
        ]),
        200,
    ),
    op(
        "post",
        "/v1/checkout/topup",
        "Start a Stripe Checkout for a $10 top-up.",
        AccountToken,
        None,
        200,
    ),
    op(
        "post",
        "/v1/messages",
        "Send an SMS charged to an account (reserve, send, resolve once).",
        HostApplication,
        Some(&[
            ("account_id", "integer", false),
            ("to", "string", false),
            ("body", "string", true),
            ("idempotency_key", "string", true),
        ]),
        200,
    ),
    op(
        "get",
        "/v1/accounts/me",
        "The token's own account.",
        AccountToken,
        None,
        200,
    ),
    op(
        "get",
        "/v1/accounts/{id}",
        "An account and its balance (own account only).",
        AccountToken,
        None,
        200,
    ),
    op(
        "get",
        "/v1/accounts/{id}/transactions",
        "The account's ledger: ?after_seq=&limit= or ?latest=.",
        AccountToken,
        None,
        200,
    ),
    op(
        "post",
        "/v1/accounts/{id}/feed-tickets",
        "A single-use ticket (30 s) to open the feed from a browser.",
        AccountToken,
        None,
        201,
    ),
    op(
        "get",
        "/v1/accounts/{id}/feed",
        "Websocket: the snapshot, then every committed change; ?since=SEQ replays; ?ticket=.",
        FeedCaller,
        None,
        101,
    ),
    op(
        "get",
        "/v1/admin/feed",
        "Websocket: every account's committed changes (admin token or ?ticket=).",
        FeedCaller,
        None,
        101,
    ),
    op(
        "post",
        "/v1/admin/feed-tickets",
        "A single-use ticket for the admin feed.",
        Admin,
        None,
        201,
    ),
    op(
        "post",
        "/webhooks/twilio/sms",
        "Twilio inbound SMS (signed): commands, answered in TwiML.",
        TwilioSignature,
        None,
        200,
    ),
    op(
        "post",
        "/webhooks/twilio/status",
        "Twilio status callbacks (signed).",
        TwilioSignature,
        None,
        200,
    ),
    op(
        "post",
        "/webhooks/stripe",
        "Stripe events (signed).",
        StripeSignature,
        None,
        200,
    ),
    op(
        "post",
        "/v1/admin/accounts",
        "Create an active account.",
        Admin,
        Some(&[("phone", "string", true), ("email", "string", false)]),
        201,
    ),
    op(
        "get",
        "/v1/admin/accounts",
        "List or search accounts: ?q=&after_id=&limit=.",
        Admin,
        None,
        200,
    ),
    op(
        "get",
        "/v1/admin/accounts/{id}",
        "An account with its balance.",
        Admin,
        None,
        200,
    ),
    op(
        "post",
        "/v1/admin/accounts/{id}/adjustments",
        "A signed correction (may go below zero).",
        Admin,
        Some(&[
            ("amount_micros", "integer", true),
            ("reason", "string", true),
            ("idempotency_key", "string", true),
        ]),
        200,
    ),
    op(
        "get",
        "/v1/admin/accounts/{id}/transactions",
        "The ledger, oldest first: ?after_seq=&limit=.",
        Admin,
        None,
        200,
    ),
    with_content(
        op(
            "get",
            "/v1/admin/accounts/{id}/transactions.csv",
            "The whole ledger as CSV.",
            Admin,
            None,
            200,
        ),
        "text/csv",
    ),
    op(
        "get",
        "/v1/admin/accounts/{id}/orders",
        "The account's Stripe orders.",
        Admin,
        None,
        200,
    ),
    op(
        "post",
        "/v1/admin/accounts/{id}/tokens",
        "Issue an account token (shown once).",
        Admin,
        None,
        201,
    ),
    op(
        "delete",
        "/v1/admin/accounts/{id}/tokens",
        "Revoke every token of the account.",
        Admin,
        None,
        200,
    ),
    op(
        "post",
        "/v1/admin/accounts/{id}/tokens/rotate",
        "Revoke every token and issue a new one.",
        Admin,
        None,
        201,
    ),
    op(
        "get",
        "/v1/admin/verify",
        "Recompute every account from its ledger.",
        Admin,
        None,
        200,
    ),
    op(
        "get",
        "/v1/admin/pricing",
        "The pricing mode of access.",
        Admin,
        None,
        200,
    ),
    op(
        "put",
        "/v1/admin/pricing",
        "Set the pricing mode: launch, rrp or sale.",
        Admin,
        Some(&[
            ("mode", "string", true),
            ("sale_price_micros", "integer", false),
        ]),
        200,
    ),
    op(
        "post",
        "/v1/admin/discount-codes",
        "Create a percent or fixed discount code.",
        Admin,
        Some(&[
            ("code", "string", true),
            ("type", "string", true),
            ("percent", "integer", false),
            ("amount_micros", "integer", false),
            ("max_uses", "integer", false),
        ]),
        201,
    ),
    op(
        "get",
        "/v1/admin/discount-codes",
        "Every discount code.",
        Admin,
        None,
        200,
    ),
    op(
        "patch",
        "/v1/admin/discount-codes/{code}",
        "Activate or deactivate a code.",
        Admin,
        Some(&[("active", "boolean", true)]),
        200,
    ),
    op(
        "get",
        "/v1/admin/accounts/{id}/notices",
        "The SMS notices queued for an account and where each stands.",
        Admin,
        None,
        200,
    ),
    op(
        "get",
        "/v1/admin/stripe-events",
        "Stripe events received and what became of each.",
        Admin,
        None,
        200,
    ),
    op(
        "get",
        "/v1/admin/reconciliation",
        "Charged vs Twilio's actual cost, per country.",
        Admin,
        None,
        200,
    ),
    op(
        "post",
        "/v1/admin/reconciliation/check-prices",
        "Fetch Twilio's prices that are due now.",
        Admin,
        None,
        200,
    ),
];

fn security(access: Access) -> Value {
    match access {
        Public | TwilioSignature | StripeSignature => json!([]),
        Admin => json!([{"adminToken": []}]),
        HostApplication => json!([{"apiKey": []}]),
        AccountToken => json!([{"accountToken": []}]),
        FeedCaller => json!([{"accountToken": []}, {"adminToken": []}, {"feedTicket": []}]),
    }
}

fn operation_object(operation: &Operation) -> Value {
    let mut object = Map::new();
    object.insert("summary".into(), json!(operation.summary));
    object.insert("security".into(), security(operation.access));
    let mut parameters: Vec<Value> = operation
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{'))
        .filter_map(|segment| segment.split('}').next())
        .map(|name| {
            let schema = if name == "id" { "integer" } else { "string" };
            json!({"name": name, "in": "path", "required": true, "schema": {"type": schema}})
        })
        .collect();
    match operation.access {
        TwilioSignature => parameters.push(json!({"name": "X-Twilio-Signature", "in": "header", "required": true, "schema": {"type": "string"}})),
        StripeSignature => parameters.push(json!({"name": "Stripe-Signature", "in": "header", "required": true, "schema": {"type": "string"}})),
        _ => {}
    }
    if !parameters.is_empty() {
        object.insert("parameters".into(), json!(parameters));
    }
    if let Some(fields) = operation.body {
        let properties: Map<String, Value> = fields
            .iter()
            .map(|(name, kind, _)| (name.to_string(), json!({"type": kind})))
            .collect();
        let required: Vec<&str> = fields
            .iter()
            .filter(|(_, _, required)| *required)
            .map(|(name, _, _)| *name)
            .collect();
        object.insert(
            "requestBody".into(),
            json!({"required": true, "content": {JSON: {"schema": {
                "type": "object", "additionalProperties": false,
                "properties": properties, "required": required
            }}}}),
        );
    } else if matches!(operation.access, TwilioSignature) {
        object.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}}),
        );
    } else if matches!(operation.access, StripeSignature) {
        object.insert(
            "requestBody".into(),
            json!({"required": true, "content": {JSON: {"schema": {"type": "object"}}}}),
        );
    }
    let success_content = if operation.success == 101 {
        json!(null)
    } else if matches!(operation.access, TwilioSignature) {
        json!({"text/xml": {"schema": {"type": "string"}}})
    } else if operation.content_type == JSON {
        json!({JSON: {"schema": {"type": "object"}}})
    } else {
        json!({operation.content_type: {"schema": {"type": "string"}}})
    };
    let mut success = json!({"description": "success"});
    if !success_content.is_null() {
        success["content"] = success_content;
    }
    let error = json!({"description": "an error", "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}});
    object.insert(
        "responses".into(),
        json!({operation.success.to_string(): success, "4XX": error, "5XX": error}),
    );
    Value::Object(object)
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for operation in OPERATIONS {
        let item = paths
            .entry(operation.path.to_string())
            .or_insert_with(|| json!({}));
        item[operation.method] = operation_object(operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "sms-credit",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Sells and spends prepaid SMS credit. Amounts are integer micro-dollars in fields named *_micros."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "SMS_CREDIT_ADMIN_TOKEN"},
                "apiKey": {"type": "http", "scheme": "bearer", "description": "SMS_CREDIT_API_KEY (the host application)"},
                "accountToken": {"type": "http", "scheme": "bearer", "description": "An account token (sct_…); on the feed also as a websocket subprotocol next to sms-credit-feed"},
                "feedTicket": {"type": "apiKey", "in": "query", "name": "ticket", "description": "A single-use feed ticket"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}
                    }}}
                }
            }
        }
    })
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}
