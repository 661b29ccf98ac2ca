//! API.md 4 and 5, BEHAVIOUR.md 3 and 4: rulesets, revisions, validation, generations,
//! publishing and rollback.

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, TestConfig, expect_error};

const GOOD_V1: &str = "rule evil_v1 { strings: $a = \"evil-one\" condition: $a }\n";
const GOOD_V2: &str = "rule evil_v2 { strings: $a = \"evil-two\" condition: $a }\n";
/// A good rule and a bad one: YARA-X builds the good one, but the revision is invalid.
const HALF_BAD: &str =
    "rule still_good { condition: true }\r\nrule broken { condition: no_such_identifier }\r\n";

backend_tests!(
    revisions_are_created_validated_and_activated_with_sync_off,
    an_invalid_revision_never_takes_scanning_down,
    publishing_with_sync_on_reports_and_rolls_back,
    publish_endpoints_refuse_when_sync_is_off,
    permissions_on_rulesets,
    bad_ruleset_input_is_refused,
    the_v2_list_filters_pages_and_echoes,
    enable_disable_and_delete_change_the_generation,
    a_restart_loads_or_recompiles_the_generation,
);

async fn json_of(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    body
}

async fn revisions_are_created_validated_and_activated_with_sync_off(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let body = json_of(
        app.save_ruleset(&app.admin_token, "Acme_Rules", GOOD_V1)
            .await,
        201,
    )
    .await;
    assert_eq!(body["code"], 201);
    assert_eq!(body["detail"]["name"], "Acme_Rules");
    assert_eq!(body["detail"]["revision"], 1);
    assert_eq!(body["detail"]["valid"], true);
    // The same text again creates no revision.
    let body = json_of(
        app.save_ruleset(&app.admin_token, "Acme_Rules", GOOD_V1)
            .await,
        200,
    )
    .await;
    assert_eq!(body["detail"]["revision"], 1);
    assert!(body["message"].as_str().unwrap().contains("unchanged"));
    let body = json_of(
        app.save_ruleset(&app.admin_token, "Acme_Rules", GOOD_V2)
            .await,
        200,
    )
    .await;
    assert_eq!(body["detail"]["revision"], 2);

    let item = app.wait_status("Acme_Rules", "active").await;
    assert_eq!(item["published_revision"], 2);
    assert_eq!(item["revision"], 2);
    assert_eq!(item["rule_count"], 1);
    assert_eq!(item["owner"], "admin");
    assert_eq!(app.active_rules(), vec!["Acme_Rules:evil_v2"]);

    let res = app
        .get(
            "/api/yara/ruleset/content/?name=Acme_Rules",
            &app.admin_token,
        )
        .await;
    let body = json_of(res, 200).await;
    assert_eq!(
        body,
        json!({"code": 200, "detail": {"name": "Acme_Rules", "content": GOOD_V2}})
    );
    let res = app
        .get("/api/yara/ruleset/Acme_Rules/revisions/", &app.admin_token)
        .await;
    let body = json_of(res, 200).await;
    assert_eq!(body["count"], 2);
    assert_eq!(body["results"][0]["revision"], 2, "newest first");
    assert_eq!(body["results"][0]["published"], true);
    assert_eq!(body["results"][1]["author"]["type"], "user");
    let res = app
        .get(
            "/api/yara/ruleset/Acme_Rules/revisions/1/",
            &app.admin_token,
        )
        .await;
    let body = json_of(res, 200).await;
    assert_eq!(body["content"], GOOD_V1);
    assert_eq!(body["sha256"].as_str().unwrap().len(), 64);
    let res = app
        .get(
            "/api/yara/ruleset/Acme_Rules/revisions/9/",
            &app.admin_token,
        )
        .await;
    expect_error(res, 404).await;
    let res = app
        .get(
            "/api/yara/ruleset/content/?name=Nope_Nope",
            &app.admin_token,
        )
        .await;
    expect_error(res, 404).await;
}

async fn an_invalid_revision_never_takes_scanning_down(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    json_of(
        app.save_ruleset(&app.admin_token, "Guarded", GOOD_V1).await,
        201,
    )
    .await;
    app.wait_status("Guarded", "active").await;
    let body = json_of(
        app.save_ruleset(&app.admin_token, "Guarded", HALF_BAD)
            .await,
        200,
    )
    .await;
    assert_eq!(body["detail"]["revision"], 2);
    assert_eq!(
        body["detail"]["valid"], false,
        "YARA-X built the good rule, still invalid"
    );
    let first = &body["detail"]["diagnostics"][0];
    assert_eq!(first["severity"], "error");
    assert_eq!(first["line"], 2);
    assert!(first["column"].as_u64().is_some());
    assert!(first["code"].as_str().unwrap().starts_with('E'));

    // The last valid published revision stays active; nothing of revision 2 is loaded.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let item = app.wait_status("Guarded", "active").await;
    assert_eq!(item["published_revision"], 1);
    assert_eq!(item["latest"]["valid"], false);
    assert_eq!(app.active_rules(), vec!["Guarded:evil_v1"]);
    let res = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);

    // A ruleset whose first revision is invalid is `invalid` and never loaded.
    json_of(
        app.save_ruleset(&app.admin_token, "Broken_From_Start", HALF_BAD)
            .await,
        201,
    )
    .await;
    assert_eq!(app.ruleset("Broken_From_Start").await["status"], "invalid");
    // A module YARA-X does not have is named in the diagnostic.
    let body = json_of(
        app.save_ruleset(
            &app.admin_token,
            "Magic_Rules",
            "import \"magic\"\nrule m { condition: true }",
        )
        .await,
        201,
    )
    .await;
    assert!(
        body["detail"]["diagnostics"][0]["message"]
            .as_str()
            .unwrap()
            .contains("magic")
    );
    assert_eq!(app.active_rules(), vec!["Guarded:evil_v1"]);
}

async fn publishing_with_sync_on_reports_and_rolls_back(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.yara_sync = true;
    let app = TestApp::spawn_with(config).await;
    json_of(
        app.save_ruleset(&app.admin_token, "Alpha", GOOD_V1).await,
        201,
    )
    .await;
    json_of(
        app.save_ruleset(&app.admin_token, "Bravo", HALF_BAD).await,
        201,
    )
    .await;
    assert_eq!(app.ruleset("Alpha").await["status"], "pending");
    assert_eq!(app.ruleset("Bravo").await["status"], "invalid");

    let res = app
        .request(Method::POST, "/api/yara/publish/all/", &app.admin_token)
        .send()
        .await
        .unwrap();
    let report = json_of(res, 200).await;
    assert_eq!(report["total_count"], 2);
    assert_eq!(report["successful_publish_count"], 1);
    let errors = report["error_messages"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["ruleset_name"], "Bravo");
    assert!(errors[0]["revision_id"].as_i64().is_some());
    assert!(
        errors[0]["message"].as_str().unwrap().contains("line 2"),
        "{}",
        errors[0]
    );
    app.wait_status("Alpha", "active").await;
    assert_eq!(app.active_rules(), vec!["Alpha:evil_v1"]);

    // A new valid revision waits for publishing.
    json_of(
        app.save_ruleset(&app.admin_token, "Alpha", GOOD_V2).await,
        200,
    )
    .await;
    let item = app.ruleset("Alpha").await;
    assert_eq!(item["published_revision"], 1);
    assert_eq!(item["status"], "active");
    let res = app
        .request(
            Method::POST,
            "/api/yara/publish/ruleset/Alpha/",
            &app.admin_token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(res, 200).await["message"],
        "Publishing Alpha ruleset!"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.active_rules() != vec!["Alpha:evil_v2"] {
        assert!(
            std::time::Instant::now() < deadline,
            "revision 2 never activated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Nothing left to publish.
    let res = app
        .request(Method::POST, "/api/yara/publish/Alpha", &app.admin_token)
        .send()
        .await
        .unwrap();
    let err = expect_error(res, 400).await;
    assert_eq!(err["code"], "nothing_to_publish");
    // Rollback to revision 1 (the seed form of the path).
    let res = app
        .request(
            Method::POST,
            "/api/yara/publish/Alpha/?revision=1",
            &app.admin_token,
        )
        .send()
        .await
        .unwrap();
    json_of(res, 200).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.active_rules() != vec!["Alpha:evil_v1"] {
        assert!(
            std::time::Instant::now() < deadline,
            "rollback never activated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(app.ruleset("Alpha").await["published_revision"], 1);
    // Publishing an invalid revision says why; an unknown one is refused; unknown ruleset 404.
    let res = app
        .request(
            Method::POST,
            "/api/yara/publish/ruleset/Bravo",
            &app.admin_token,
        )
        .send()
        .await
        .unwrap();
    let err = expect_error(res, 400).await;
    assert_eq!(err["code"], "invalid_revision");
    assert!(err["message"].as_str().unwrap().contains("line 2"));
    let res = app
        .request(
            Method::POST,
            "/api/yara/publish/Alpha?revision=7",
            &app.admin_token,
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 400).await;
    let res = app
        .request(
            Method::POST,
            "/api/yara/publish/Alpha?revision=x",
            &app.admin_token,
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 400).await;
    let res = app
        .request(
            Method::POST,
            "/api/yara/publish/Nobody_Here",
            &app.admin_token,
        )
        .send()
        .await
        .unwrap();
    expect_error(res, 404).await;
    // The sync state shows this node serving the latest generation.
    let sync = json_of(app.get("/api/yara/sync/", &app.admin_token).await, 200).await;
    assert_eq!(sync["enabled"], true);
    assert_eq!(sync["nodes"][0]["state"], "InSync");
    assert_eq!(sync["nodes"][0]["generation"], sync["generation"]);
}

async fn publish_endpoints_refuse_when_sync_is_off(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    json_of(
        app.save_ruleset(&app.admin_token, "Alpha", GOOD_V1).await,
        201,
    )
    .await;
    for path in [
        "/api/yara/publish/all",
        "/api/yara/publish/ruleset/Alpha",
        "/api/yara/publish/Alpha",
    ] {
        let res = app
            .request(Method::POST, path, &app.admin_token)
            .send()
            .await
            .unwrap();
        let err = expect_error(res, 403).await;
        assert_eq!(err["code"], "sync_disabled", "{path}");
    }
    for path in [
        "/api/yara/ticloud/time/",
        "/api/yara/ruleset/Alpha/cloud-retro-hunt/",
    ] {
        let res = app.get(path, &app.admin_token).await;
        let err = expect_error(res, 400).await;
        assert_eq!(err["code"], "cloud_unavailable");
    }
}

async fn permissions_on_rulesets(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.yara_sync = true;
    let app = TestApp::spawn_with(config).await;
    let alice = app.user("alice", false).await;
    let bob = app.user("bob", false).await;
    json_of(app.save_ruleset(&alice, "Alice_Rules", GOOD_V1).await, 201).await;
    expect_error(app.save_ruleset(&bob, "Alice_Rules", GOOD_V2).await, 403).await;
    for action in ["enable", "disable"] {
        let res = app
            .request(Method::POST, &format!("/api/yara/ruleset/{action}/"), &bob)
            .form(&[("name", "Alice_Rules"), ("analysis", "cloud")])
            .send()
            .await
            .unwrap();
        expect_error(res, 403).await;
    }
    let res = app
        .request(Method::DELETE, "/api/yara/ruleset/", &bob)
        .json(&json!({"analysis": "cloud", "name": "Alice_Rules"}))
        .send()
        .await
        .unwrap();
    expect_error(res, 403).await;
    let res = app
        .request(Method::POST, "/api/yara/publish/ruleset/Alice_Rules", &bob)
        .send()
        .await
        .unwrap();
    expect_error(res, 403).await;
    let res = app
        .request(Method::POST, "/api/yara/publish/all", &alice)
        .send()
        .await
        .unwrap();
    expect_error(res, 403).await;
    // The owner may publish her own; a superuser may change anyone's.
    let res = app
        .request(
            Method::POST,
            "/api/yara/publish/ruleset/Alice_Rules",
            &alice,
        )
        .send()
        .await
        .unwrap();
    json_of(res, 200).await;
    json_of(
        app.save_ruleset(&app.admin_token, "Alice_Rules", GOOD_V2)
            .await,
        200,
    )
    .await;
    assert_eq!(
        app.ruleset("Alice_Rules").await["owner"],
        "alice",
        "ownership stays"
    );
    // Everyone reads.
    let res = app
        .get("/api/yara/ruleset/content/?name=Alice_Rules", &bob)
        .await;
    assert_eq!(json_of(res, 200).await["detail"]["content"], GOOD_V2);
}

async fn bad_ruleset_input_is_refused(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.max_ruleset_bytes = Some(1000);
    let app = TestApp::spawn_with(config).await;
    for name in [
        "ab",
        "all",
        "ruleset",
        "a b",
        "dots.in.name",
        &"x".repeat(65),
    ] {
        let err = expect_error(app.save_ruleset(&app.admin_token, name, GOOD_V1).await, 400).await;
        assert!(err["errors"]["name"].is_array(), "{name}: {err}");
    }
    let err = expect_error(
        app.save_ruleset(&app.admin_token, "Empty_One", "  \n")
            .await,
        400,
    )
    .await;
    assert!(err["errors"]["content"].is_array());
    let include = "include \"other.yar\"\nrule x { condition: true }";
    let err = expect_error(
        app.save_ruleset(&app.admin_token, "Includer", include)
            .await,
        400,
    )
    .await;
    assert_eq!(err["code"], "include_not_allowed");
    let big = format!("rule big {{ condition: true }}\n//{}\n", "x".repeat(2000));
    let err = expect_error(
        app.save_ruleset(&app.admin_token, "Too_Big", &big).await,
        400,
    )
    .await;
    assert_eq!(err["code"], "too_large");
    let res = app
        .request(Method::POST, "/api/yara/ruleset/", &app.admin_token)
        .form(&[("name", "No_Content")])
        .send()
        .await
        .unwrap();
    expect_error(res, 400).await;
    let res = app
        .request(Method::POST, "/api/yara/ruleset/enable/", &app.admin_token)
        .form(&[("name", "Not_There")])
        .send()
        .await
        .unwrap();
    expect_error(res, 404).await;
    let res = app
        .get("/api/yara/ruleset/content/", &app.admin_token)
        .await;
    expect_error(res, 400).await;
    let listed = json_of(
        app.get("/api/yara/v2/rulesets/?type=all", &app.admin_token)
            .await,
        200,
    )
    .await;
    assert_eq!(listed["count"], 0, "nothing was stored: {listed}");
}

async fn the_v2_list_filters_pages_and_echoes(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.yara_sync = true;
    let app = TestApp::spawn_with(config).await;
    let alice = app.user("alice", false).await;
    json_of(app.save_ruleset(&alice, "Alice_One", GOOD_V1).await, 201).await;
    json_of(app.save_ruleset(&alice, "Alice_Two", HALF_BAD).await, 201).await;
    json_of(
        app.save_ruleset(&app.admin_token, "Admin_One", GOOD_V2)
            .await,
        201,
    )
    .await;
    let list = |q: &str| {
        let app = &app;
        let alice = alice.clone();
        let q = q.to_owned();
        async move {
            json_of(
                app.get(&format!("/api/yara/v2/rulesets/{q}"), &alice).await,
                200,
            )
            .await
        }
    };
    let mine = list("").await;
    assert_eq!(
        (
            mine["type"].as_str(),
            mine["status"].as_str(),
            mine["source"].as_str()
        ),
        (Some("my"), Some("all"), Some("all"))
    );
    assert_eq!(mine["count"], 2);
    assert_eq!(mine["next"], Value::Null);
    let names = |v: &Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&list("?type=all").await),
        vec!["Admin_One", "Alice_One", "Alice_Two"]
    );
    assert_eq!(names(&list("?type=user").await).len(), 3);
    assert_eq!(list("?type=system").await["count"], 0);
    assert_eq!(
        names(&list("?type=all&status=invalid").await),
        vec!["Alice_Two"]
    );
    assert_eq!(
        names(&list("?type=all&status=pending").await),
        vec!["Admin_One", "Alice_One"]
    );
    assert_eq!(list("?type=all&status=active").await["count"], 0);
    assert_eq!(list("?type=all&source=cloud").await["count"], 0);
    assert_eq!(list("?type=all&source=local").await["count"], 3);
    let page = list("?type=all&page=2&page_size=2").await;
    assert_eq!(page["count"], 3);
    assert_eq!(names(&page), vec!["Alice_Two"]);
    assert!(page["previous"].as_str().unwrap().contains("type=all"));
    assert_eq!(page["type"], "all");
    let item = &list("?type=all&status=invalid").await["results"][0];
    for key in [
        "owner",
        "system_ruleset",
        "cloud_synced",
        "last_matched",
        "malicious_match_count",
        "suspicious_match_count",
        "goodware_match_count",
        "unknown_match_count",
        "repository",
        "source_path",
        "revision",
        "published_revision",
        "rule_count",
    ] {
        assert!(item.get(key).is_some(), "{key} missing: {item}");
    }
    for bad in [
        "?type=yours",
        "?status=great",
        "?source=sky",
        "?page=1",
        "?page=0&page_size=5",
    ] {
        expect_error(
            app.get(&format!("/api/yara/v2/rulesets/{bad}"), &alice)
                .await,
            400,
        )
        .await;
    }
    expect_error(
        app.get("/api/yara/v2/rulesets/?type=all&page=5&page_size=2", &alice)
            .await,
        404,
    )
    .await;
}

async fn enable_disable_and_delete_change_the_generation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    json_of(
        app.save_ruleset(&app.admin_token, "Keep_Me", GOOD_V1).await,
        201,
    )
    .await;
    json_of(
        app.save_ruleset(&app.admin_token, "Toggle_Me", GOOD_V2)
            .await,
        201,
    )
    .await;
    app.wait_status("Toggle_Me", "active").await;
    app.wait_status("Keep_Me", "active").await;
    let post = |path: &'static str| {
        app.request(Method::POST, path, &app.admin_token)
            .form(&[
                ("name", "Toggle_Me"),
                ("analysis", "cloud"),
                ("publish", "True"),
            ])
            .send()
    };
    let body = json_of(post("/api/yara/ruleset/disable/").await.unwrap(), 200).await;
    assert_eq!(body["detail"]["name"], "Toggle_Me");
    app.wait_status("Toggle_Me", "disabled").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.active_rules() != vec!["Keep_Me:evil_v1"] {
        assert!(
            std::time::Instant::now() < deadline,
            "disable never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    json_of(post("/api/yara/ruleset/enable/").await.unwrap(), 200).await;
    app.wait_status("Toggle_Me", "active").await;
    let res = app
        .request(Method::DELETE, "/api/yara/ruleset/", &app.admin_token)
        .json(&json!({"analysis": "cloud", "name": "Toggle_Me", "publish": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(res, 200).await["message"], "Ruleset deleted.");
    expect_error(
        app.get("/api/yara/ruleset/Toggle_Me/", &app.admin_token)
            .await,
        404,
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.active_rules() != vec!["Keep_Me:evil_v1"] {
        assert!(std::time::Instant::now() < deadline, "delete never applied");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn a_restart_loads_or_recompiles_the_generation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    json_of(
        app.save_ruleset(&app.admin_token, "Survivor", GOOD_V1)
            .await,
        201,
    )
    .await;
    app.wait_status("Survivor", "active").await;
    let before = app.state.rulesets.current_generation().unwrap().number;

    // A second process on the same storage loads the stored artifact.
    let state = ruleyard::app::open_state((*app.state.settings).clone())
        .await
        .unwrap();
    state.rulesets.activator().start().await.unwrap();
    let loaded = state.rulesets.current_generation().unwrap();
    assert_eq!(loaded.number, before, "loaded, not rebuilt");
    let names: Vec<String> = loaded
        .rules
        .iter()
        .map(|r| r.identifier().to_owned())
        .collect();
    assert_eq!(names, vec!["evil_v1"]);

    // An artifact from another engine version is never loaded: the node recompiles.
    app.tamper_engine_version().await;
    let state = ruleyard::app::open_state((*app.state.settings).clone())
        .await
        .unwrap();
    state.rulesets.activator().start().await.unwrap();
    let loaded = state.rulesets.current_generation().unwrap();
    assert_eq!(loaded.number, before);
    let names: Vec<String> = loaded
        .rules
        .iter()
        .map(|r| r.identifier().to_owned())
        .collect();
    assert_eq!(names, vec!["evil_v1"], "recompiled from the revisions");
}
