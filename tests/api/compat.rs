//! API.md 1.1 and 1.5: paths, no redirects, one error shape, request ids.

use serde_json::Value;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, expect_error};

backend_tests!(
    paths_are_normalised_without_redirects,
    unknown_routes_and_methods_get_the_error_shape,
    request_ids_are_kept_or_made,
);

async fn paths_are_normalised_without_redirects(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    for path in [
        "/api/yara/repositories",
        "/api/yara/repositories/",
        "//api//yara/repositories//",
        "/api/yara/%72epositories/",
    ] {
        let res = app.get(path, &app.admin_token).await;
        assert_eq!(res.status(), 200, "{path}");
        let body: Value = res.json().await.unwrap();
        assert!(body["count"].is_i64(), "{path}");
    }
}

async fn unknown_routes_and_methods_get_the_error_shape(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let res = app.get("/api/yara/nothing-here/", &app.admin_token).await;
    expect_error(res, 404).await;
    let res = app
        .request(
            reqwest::Method::PATCH,
            "/api/yara/repositories/",
            &app.admin_token,
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 405).await;
    let res = app
        .request(
            reqwest::Method::POST,
            "/api/yara/repositories/",
            &app.admin_token,
        )
        .header("Content-Type", "text/plain")
        .body("url=x")
        .send()
        .await
        .unwrap();
    expect_error(res, 415).await;
}

async fn request_ids_are_kept_or_made(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let res = app
        .request(
            reqwest::Method::GET,
            "/api/yara/repositories/",
            &app.admin_token,
        )
        .header("X-Request-Id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-123");
    let res = app.get("/api/yara/repositories/", &app.admin_token).await;
    let made = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 36, "a UUID: {made}");
}
