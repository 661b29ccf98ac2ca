//! API.md 1.3: token authentication and `POST /api-token-auth/`.

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{ADMIN_PASSWORD, Backend, TestApp, expect_error};

backend_tests!(
    api_routes_need_a_valid_token,
    login_gives_a_working_token_and_refuses_bad_credentials,
    health_endpoints_need_no_token,
);

async fn api_routes_need_a_valid_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let res = app
        .client
        .get(app.url("/api/yara/repositories/"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["www-authenticate"], "Token");
    let err = expect_error(res, 401).await;
    assert_eq!(err["code"], "not_authenticated");
    for header in ["Token nope", "Basic abc", "Token", "Token a b"] {
        let res = app
            .client
            .get(app.url("/api/yara/repositories/"))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["www-authenticate"], "Token", "{header}");
        expect_error(res, 401).await;
    }
    let res = app.get("/api/yara/repositories/", &app.admin_token).await;
    assert_eq!(res.status(), 200);
}

async fn login_gives_a_working_token_and_refuses_bad_credentials(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // JSON works as well as a form.
    let res = app
        .client
        .post(app.url("/api-token-auth"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let token = res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 40);
    assert_eq!(
        app.get("/api/yara/repositories/", &token).await.status(),
        200
    );
    for body in [
        json!({"username": "admin", "password": "wrong"}),
        json!({"username": "ghost", "password": "whatever"}),
        json!({"username": "admin"}),
        json!({}),
    ] {
        let res = app
            .client
            .post(app.url("/api-token-auth/"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let err = expect_error(res, 400).await;
        assert!(!err.to_string().contains(ADMIN_PASSWORD));
    }
    // Only hashes are stored: the token is nowhere in the database as written.
    let stored = app.state.store.user_by_token_hash(&token).await.unwrap();
    assert!(stored.is_none(), "the raw token is not a stored key");
}

async fn health_endpoints_need_no_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let res = app.client.get(app.url("/readyz/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["database"], "ok");
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("# TYPE ruleyard_scans_total counter"),
        "{text}"
    );
    assert!(text.contains("ruleyard_up{node="), "{text}");
    let generation = app.state.rulesets.current_generation().unwrap().number;
    assert!(
        text.contains(&format!(
            "ruleyard_generation{{node=\"{}\"}} {generation}",
            app.state.settings.node_name.replace(['\\', '"'], "_")
        )),
        "{text}"
    );
}
