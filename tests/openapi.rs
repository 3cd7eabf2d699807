//! `/openapi.json` is derived from the handlers and matches the routes:
//! every registered route is documented, every documented operation is
//! routed; request bodies, queries and answers are typed, with formats and
//! enums; and a route asked with another method answers 405 with `Allow`.

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use serde_json::Value;
use sms_credit::openapi::document;

use crate::helpers::{TestApp, ADMIN_TOKEN};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// The (method, path) pairs registered with `.route("…", web::method()…)`
/// in a routes file, under `prefix`.
fn registered(source: &str, prefix: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let Some(path) = chunk
            .trim_start()
            .strip_prefix('"')
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let Some(method) = chunk
            .split("web::")
            .nth(1)
            .and_then(|rest| rest.split('(').next())
        else {
            continue;
        };
        routes.insert((method.to_string(), format!("{prefix}{path}")));
    }
    routes
}

fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_string(), path.clone()));
            }
        }
    }
    operations
}

/// The schema a `$ref` points to, or the schema itself.
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap();
            &document["components"]["schemas"][name]
        }
        None => schema,
    }
}

#[actix_rt::test]
async fn every_route_is_in_the_document_and_every_documented_route_exists() {
    let mut routes = registered(include_str!("../src/routes/mod.rs"), "");
    routes.extend(registered(
        include_str!("../src/routes/admin/mod.rs"),
        "/v1/admin",
    ));
    assert!(routes.len() > 35, "the parse found the routes: {routes:?}");
    let document = document();
    let operations = documented(document);
    assert_eq!(
        routes.difference(&operations).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "registered but not documented"
    );
    assert_eq!(
        operations.difference(&routes).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not registered"
    );

    let app = TestApp::spawn().await;
    let (status, served) = app.request("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&served, document);
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    for (method, path) in &operations {
        let concrete = path.replace("{id}", "1").replace("{code}", "NOPE");
        let (status, body) = app
            .request(&method.to_uppercase(), &concrete, Some(ADMIN_TOKEN), None)
            .await;
        let unrouted = matches!(
            status,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) && matches!(body["error"]["code"].as_str(), Some("method_not_allowed"))
            || body["error"]["message"] == "no such route";
        assert!(!unrouted, "{method} {path} is documented but not routed");
        let operation = &served["paths"][path][method];
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.contains_key("4XX") && responses.contains_key("5XX"),
            "{method} {path}: {responses:?}"
        );
        let success = responses
            .iter()
            .find(|(code, _)| code.starts_with('2') || code.as_str() == "101")
            .unwrap_or_else(|| panic!("{method} {path} documents its success"));
        if success.0 != "101" {
            assert!(
                success.1["content"].is_object(),
                "{method} {path}: the success body is described"
            );
        }
    }
}

#[actix_rt::test]
async fn the_document_types_bodies_queries_and_answers() {
    let document = document();
    let operation = |method: &str, path: &str| &document["paths"][path][method];
    // Query parameters are declared.
    let parameters = |method: &str, path: &str| -> BTreeSet<String> {
        operation(method, path)["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|parameter| parameter["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        parameters("get", "/v1/admin/accounts"),
        ["after_id", "limit", "q"].map(String::from).into()
    );
    assert!(parameters("get", "/v1/accounts/{id}/transactions")
        .is_superset(&["after_seq", "latest", "limit"].map(String::from).into()));
    assert!(parameters("get", "/v1/admin/accounts/{id}/transactions").contains("after_seq"));
    assert!(parameters("get", "/v1/accounts/{id}/feed").contains("since"));

    // Enums and formats.
    let request_schema = |method: &str, path: &str| {
        resolve(
            document,
            &operation(method, path)["requestBody"]["content"]["application/json"]["schema"],
        )
        .clone()
    };
    let pricing = request_schema("put", "/v1/admin/pricing");
    let mode = resolve(document, &pricing["properties"]["mode"]);
    assert_eq!(mode["enum"], serde_json::json!(["launch", "rrp", "sale"]));
    let code = request_schema("post", "/v1/admin/discount-codes");
    let kind = resolve(document, &code["properties"]["type"]);
    assert_eq!(kind["enum"], serde_json::json!(["percent", "fixed"]));
    let account = request_schema("post", "/v1/admin/accounts");
    assert_eq!(account["properties"]["phone"]["format"], "e164");
    assert_eq!(account["properties"]["email"]["format"], "email");
    let access = request_schema("post", "/v1/checkout/access");
    assert_eq!(access["properties"]["email"]["format"], "email");

    // Answers are their types, not bare objects.
    let answer = |method: &str, path: &str, status: &str| {
        resolve(
            document,
            &operation(method, path)["responses"][status]["content"]["application/json"]["schema"],
        )
        .clone()
    };
    let view = answer("get", "/v1/admin/accounts/{id}", "200");
    assert!(view["properties"]["balance_micros"].is_object(), "{view}");
    // Amounts are shown exactly: no answer's text says one is rounded.
    let holder = answer("get", "/v1/accounts/me", "200");
    let said = holder["properties"]["balance"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(said.contains("exactly"), "{holder}");
    let text = document.to_string();
    assert!(
        !text.contains("rounded toward zero"),
        "a rounded amount is documented"
    );
    let quote = answer("post", "/v1/quote", "200");
    assert!(quote["properties"]["segments"].is_object(), "{quote}");
    let orders = answer("get", "/v1/admin/accounts/{id}/orders", "200");
    assert!(orders["properties"]["orders"].is_object(), "{orders}");
    assert!(document["components"]["securitySchemes"]["adminToken"].is_object());
}

#[actix_rt::test]
async fn another_method_on_any_route_is_405_with_allow_and_the_error_body() {
    let app = TestApp::spawn().await;
    for (method, path, allowed) in [
        ("GET", "/webhooks/stripe", "POST"),
        ("PUT", "/webhooks/twilio/sms", "POST"),
        ("DELETE", "/v1/quote", "POST"),
        ("POST", "/healthz", "GET"),
        ("PATCH", "/v1/admin/accounts", "GET, POST"),
        ("PUT", "/v1/admin/accounts/7/tokens", "DELETE, GET, POST"),
        ("DELETE", "/v1/admin/pricing", "GET, PUT"),
    ] {
        let method_value = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
        let mut response = app
            .client
            .request(method_value, app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(
            response.headers().get("Allow").unwrap(),
            allowed,
            "{method} {path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "method_not_allowed",
            "{method} {path}"
        );
    }
    let (status, body) = app.request("GET", "/v1/not-a-route", None, None).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("no such route"))
    );
}

/// Every operation the document says takes the admin token answers a caller
/// without it (none, a wrong one, a customer's token) `401` and nothing
/// else: no figure, no list, no hint of what exists.
#[actix_rt::test]
async fn every_admin_route_tells_a_caller_without_the_admin_token_nothing() {
    let app = TestApp::spawn().await;
    let account = app.create_account("+14155550160").await;
    app.post_adjustment(account, 4_321_000, "seen").await;
    let customer = app.issue_token(account).await;
    let document = document();
    let admin_routes: Vec<(String, String)> = documented(document)
        .into_iter()
        .filter(|(method, path)| {
            let schemes = document["paths"][path][method]["security"].as_array();
            path != "/v1/admin/feed"
                && schemes.is_some_and(|schemes| {
                    schemes
                        .iter()
                        .all(|scheme| scheme.get("adminToken").is_some())
                })
        })
        .map(|(method, path)| {
            let concrete = path
                .replace("{id}", &account.to_string())
                .replace("{code}", "NOPE");
            (method.to_uppercase(), concrete)
        })
        .collect();
    assert!(
        admin_routes.len() > 35,
        "the admin routes were found: {admin_routes:?}"
    );
    // First without any token: 401, every one.
    for (method, path) in &admin_routes {
        let (status, body) = app.request(method, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        assert_eq!(
            body["error"]["code"], "unauthorized",
            "{method} {path}: {body}"
        );
        assert!(
            !body.to_string().contains("4321"),
            "{method} {path}: {body}"
        );
    }
    // Then a wrong token and a customer's: wrong tokens count against the
    // address, so after a few the answer is 429 (which says no more).
    for (method, path) in &admin_routes {
        for token in ["not-the-admin-token-at-all", customer.as_str()] {
            let (status, body) = app.request(method, path, Some(token), None).await;
            let unauthorized =
                status == StatusCode::UNAUTHORIZED && body["error"]["code"] == "unauthorized";
            let slowed = status == StatusCode::TOO_MANY_REQUESTS
                && body["error"]["code"] == "too_many_attempts";
            assert!(
                unauthorized || slowed,
                "{method} {path} with {token}: {status} {body}"
            );
            assert!(
                !body.to_string().contains("4321"),
                "{method} {path}: {body}"
            );
        }
    }
}
