//! `/openapi.json` matches the routes: every registered route is documented,
//! every documented operation is routed.

use std::collections::BTreeSet;

use actix_web::http::StatusCode;
use sms_credit::openapi::{document, OPERATIONS};

use crate::helpers::{TestApp, ADMIN_TOKEN};

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

#[actix_rt::test]
async fn every_route_is_in_the_document_and_every_documented_route_exists() {
    let mut routes = registered(include_str!("../src/routes/mod.rs"), "");
    routes.extend(registered(
        include_str!("../src/routes/admin/mod.rs"),
        "/v1/admin",
    ));
    // The webhook resources are registered with web::resource(...).route(...).
    let source = include_str!("../src/routes/mod.rs");
    for chunk in source.split("web::resource(\"").skip(1) {
        let path = chunk.split('"').next().unwrap();
        let method = chunk
            .split(".route(web::")
            .nth(1)
            .unwrap()
            .split('(')
            .next()
            .unwrap();
        routes.insert((method.to_string(), path.to_string()));
    }
    assert!(routes.len() > 30, "the parse found the routes: {routes:?}");
    let documented: BTreeSet<(String, String)> = OPERATIONS
        .iter()
        .map(|operation| (operation.method.to_string(), operation.path.to_string()))
        .collect();
    assert_eq!(
        routes.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "registered but not documented"
    );
    assert_eq!(
        documented.difference(&routes).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not registered"
    );

    let app = TestApp::spawn().await;
    let (status, served) = app.request("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, document());
    assert_eq!(served["openapi"], "3.1.0");
    for operation in OPERATIONS {
        let path = operation
            .path
            .replace("{id}", "1")
            .replace("{code}", "NOPE");
        let (status, body) = app
            .request(
                &operation.method.to_uppercase(),
                &path,
                Some(ADMIN_TOKEN),
                None,
            )
            .await;
        let unrouted =
            status == StatusCode::NOT_FOUND && body["error"]["message"] == "no such route";
        assert!(
            !unrouted,
            "{} {} is documented but not routed",
            operation.method, operation.path
        );
        let documented = &served["paths"][operation.path][operation.method];
        assert!(
            documented["responses"].is_object(),
            "{} {}",
            operation.method,
            operation.path
        );
    }
    let (status, body) = app.request("GET", "/v1/not-a-route", None, None).await;
    assert_eq!(
        (status, body["error"]["message"].as_str()),
        (StatusCode::NOT_FOUND, Some("no such route"))
    );
}
