//! API.md 2: repositories, with real upstreams on loopback.

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, TestConfig, expect_error};
use crate::upstream::{AuthGitServer, GitDaemon, StallServer, Upstreams, closed_port};

const RULE: &str = "rule test_rule { strings: $a = \"evil\" condition: $a }\n";

backend_tests!(
    create_resolves_the_default_branch_and_lists_the_item,
    list_filters_and_paginates_with_absolute_links,
    connection_test_over_git_daemon_explains_each_failure,
    connection_test_with_basic_auth_token,
    stalled_and_unreachable_upstreams_fail_by_the_timeout,
    update_replaces_fields_and_keeps_or_clears_the_token,
    permissions_of_regular_users_and_superusers,
    system_repositories_come_from_configuration,
    bad_input_gets_a_clear_4xx_and_stores_nothing,
    local_sources_are_refused_unless_allowed,
    bodies_as_form_and_multipart_are_accepted,
);

async fn create_resolves_the_default_branch_and_lists_the_item(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let up = Upstreams::new();
    up.repo("rl", "develop", &[("yara/a.yara", RULE)]);
    up.repo("plain", "main", &[("a.yar", RULE)]);
    up.repo("old", "master", &[("a.yar", RULE)]);

    let id = app
        .create_repository(
            &app.admin_token,
            json!({"url": up.file_url("rl"), "name": "RL mirror", "import_update_preferences": 2}),
        )
        .await;
    let item = app.repository(id).await;
    assert_eq!(item["source_branch"], "develop", "the remote HEAD wins");
    assert_eq!(item["source_type"], 4);
    assert_eq!(item["api_token"], "");
    assert_eq!(item["is_custom"], true);
    assert_eq!(item["import_update_preferences"], 2);
    assert_eq!(item["name"], "RL mirror");
    assert_eq!(item["url"], up.file_url("rl"));
    assert!(item["user"].is_i64());
    let modified = item["last_modified"].as_str().unwrap();
    assert!(
        modified.ends_with('Z') && modified.len() == 24,
        "{modified}"
    );
    assert_eq!(item["sync"]["state"], "never_fetched");

    // An empty branch means "not given".
    let id = app
        .create_repository(
            &app.admin_token,
            json!({"url": up.file_url("plain"), "name": "plain", "source_branch": ""}),
        )
        .await;
    assert_eq!(app.repository(id).await["source_branch"], "main");
    assert_eq!(app.repository(id).await["import_update_preferences"], 0);
    let id = app
        .create_repository(
            &app.admin_token,
            json!({"url": up.file_url("old"), "name": "old"}),
        )
        .await;
    assert_eq!(app.repository(id).await["source_branch"], "master");

    let listed = app.all_repositories().await;
    let names: Vec<&str> = listed.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"RL mirror") && names.contains(&"plain") && names.contains(&"old"));
    // The same URL and branch cannot be added twice, even under another name.
    let res = app
        .post_json(
            "/api/yara/repositories/",
            &app.admin_token,
            &json!({"url": up.file_url("plain"), "name": "plain again"}),
        )
        .await;
    let body = expect_error(res, 400).await;
    assert!(body["errors"]["url"].is_array(), "{body}");
}

async fn list_filters_and_paginates_with_absolute_links(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let up = Upstreams::new();
    for i in 0..3 {
        up.repo(&format!("r{i}"), "main", &[("a.yar", RULE)]);
        app.create_repository(
            &app.admin_token,
            json!({"url": up.file_url(&format!("r{i}")), "name": format!("repo {i}")}),
        )
        .await;
    }
    let list = |q: &'static str| {
        let app = &app;
        async move {
            let res = app
                .get(&format!("/api/yara/repositories/{q}"), &app.admin_token)
                .await;
            assert_eq!(res.status(), 200, "{q}");
            res.json::<Value>().await.unwrap()
        }
    };
    let all = list("").await;
    assert_eq!(
        all["count"], 4,
        "three custom and the default system repository"
    );
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["previous"], Value::Null);
    let system = list("?active_filter=system").await;
    assert_eq!(system["count"], 1);
    assert_eq!(system["results"][0]["is_custom"], false);
    assert_eq!(system["results"][0]["user"], Value::Null);
    assert_eq!(system["results"][0]["source_branch"], "develop");
    let user = list("?active_filter=user").await;
    assert_eq!(user["count"], 3);
    assert!(
        user["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["is_custom"] == true)
    );

    let first = list("?active_filter=all&page_size=3").await;
    assert_eq!(first["results"].as_array().unwrap().len(), 3);
    let next = first["next"].as_str().expect("a next link");
    assert!(next.starts_with(&app.address), "absolute: {next}");
    assert!(
        next.contains("active_filter=all")
            && next.contains("page_size=3")
            && next.contains("page=2")
    );
    // The client follows `next` verbatim.
    let second: Value = app
        .client
        .get(next)
        .header("Authorization", format!("Token {}", app.admin_token))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["results"].as_array().unwrap().len(), 1);
    assert_eq!(second["next"], Value::Null);
    assert!(second["previous"].as_str().unwrap().contains("page=1"));

    for bad in [
        "page=0",
        "page=abc",
        "page_size=-1",
        "page=99999999999999999999999",
        "active_filter=mine",
    ] {
        let res = app
            .get(&format!("/api/yara/repositories/?{bad}"), &app.admin_token)
            .await;
        expect_error(res, 400).await;
    }
    let res = app
        .get("/api/yara/repositories/?page=9", &app.admin_token)
        .await;
    expect_error(res, 404).await;
    let capped = list("?page_size=5000").await;
    assert_eq!(capped["results"].as_array().unwrap().len(), 4);
}

async fn connection_test_over_git_daemon_explains_each_failure(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let up = Upstreams::new();
    up.repo("develop-head", "develop", &[("r.yara", RULE)]);
    let daemon = GitDaemon::start(up.root.path());

    let id = app
        .create_repository(
            &app.admin_token,
            json!({"url": daemon.url("develop-head"), "name": "over git"}),
        )
        .await;
    let item = app.repository(id).await;
    assert_eq!(item["source_branch"], "develop");
    assert_eq!(item["source_type"], 0);

    let cases = [
        (
            json!({"url": daemon.url("missing"), "name": "missing"}),
            "not found",
        ),
        (
            json!({"url": daemon.url("develop-head"), "name": "nobranch", "source_branch": "nope"}),
            "branch `nope` does not exist",
        ),
    ];
    for (body, expected) in cases {
        let before = app.all_repositories().await.len();
        let res = app
            .post_json("/api/yara/repositories/", &app.admin_token, &body)
            .await;
        let err = expect_error(res, 404).await;
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
        assert_eq!(err["code"], "connection_test_failed");
        assert_eq!(app.all_repositories().await.len(), before, "nothing stored");
    }
}

async fn connection_test_with_basic_auth_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let up = Upstreams::new();
    up.repo("private", "main", &[("r.yar", RULE)]);
    let token = "s3cr3t-token-for-auth-test";
    let server = AuthGitServer::start(up.root.path(), token).await;

    for (given, label) in [
        (json!("wrong-token"), "wrong"),
        (json!(""), "none"),
        (Value::Null, "absent"),
    ] {
        let mut body = json!({"url": server.url("private"), "name": format!("private {label}")});
        if !given.is_null() {
            body["api_token"] = given;
        }
        let res = app
            .post_json("/api/yara/repositories/", &app.admin_token, &body)
            .await;
        let err = expect_error(res, 404).await;
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("authentication was refused"),
            "{label}: {err}"
        );
        assert!(!err.to_string().contains("wrong-token"));
    }
    let id = app
        .create_repository(
            &app.admin_token,
            json!({"url": server.url("private"), "name": "private", "api_token": token}),
        )
        .await;
    let item = app.repository(id).await;
    assert_eq!(item["api_token"], "********");
    assert!(!item.to_string().contains(token));
    // The token travelled as HTTP basic authentication.
    let seen = server.seen_auth.lock().unwrap().clone();
    assert!(seen.iter().any(|h| h.starts_with("Basic ")), "{seen:?}");
    let res = app
        .post_json(
            "/api/yara/repositories/",
            &app.admin_token,
            &json!({"url": server.url("absent"), "name": "absent", "api_token": token}),
        )
        .await;
    let err = expect_error(res, 404).await;
    assert!(
        err["message"].as_str().unwrap().contains("not found"),
        "{err}"
    );
}

async fn stalled_and_unreachable_upstreams_fail_by_the_timeout(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.connect_timeout_seconds = 2;
    let app = TestApp::spawn_with(config).await;
    let stall = StallServer::start();
    for url in [
        format!("http://127.0.0.1:{}/x.git", stall.port),
        format!("git://127.0.0.1:{}/x.git", stall.port),
    ] {
        let started = std::time::Instant::now();
        let res = app
            .post_json(
                "/api/yara/repositories/",
                &app.admin_token,
                &json!({"url": url, "name": "stalled"}),
            )
            .await;
        let err = expect_error(res, 404).await;
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("did not answer within 2 seconds"),
            "{err}"
        );
        assert!(
            started.elapsed().as_secs() < 30,
            "the timeout ended the test"
        );
    }
    let res = app
        .post_json(
            "/api/yara/repositories/",
            &app.admin_token,
            &json!({"url": format!("http://127.0.0.1:{}/x.git", closed_port()), "name": "closed"}),
        )
        .await;
    let err = expect_error(res, 404).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{err}"
    );
}

async fn update_replaces_fields_and_keeps_or_clears_the_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let up = Upstreams::new();
    up.repo("private", "main", &[("r.yar", RULE)]);
    up.repo("public", "develop", &[("r.yar", RULE)]);
    let token = "token-kept-across-updates";
    let server = AuthGitServer::start(up.root.path(), token).await;
    let id = app
        .create_repository(
            &app.admin_token,
            json!({"url": server.url("private"), "name": "priv", "api_token": token}),
        )
        .await;
    let path = format!("/api/yara/repositories//{id}/");
    // "********" keeps the stored token: the connection test still passes.
    let res = app
        .put_json(
            &path,
            &app.admin_token,
            &json!({"url": server.url("private"), "name": "renamed", "api_token": "********",
                    "import_update_preferences": 1, "source_branch": "main"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["message"],
        "Repository updated."
    );
    let item = app.repository(id).await;
    assert_eq!(item["name"], "renamed");
    assert_eq!(item["import_update_preferences"], 1);
    assert_eq!(item["api_token"], "********");
    // Absent clears it: the private remote now refuses, and nothing changes.
    let res = app
        .put_json(
            &path,
            &app.admin_token,
            &json!({"url": server.url("private"), "name": "cleared"}),
        )
        .await;
    let err = expect_error(res, 404).await;
    assert!(err["message"].as_str().unwrap().contains("authentication"));
    assert_eq!(app.repository(id).await["name"], "renamed");
    // A full replacement to a public source clears the token.
    let res = app
        .put_json(
            &path,
            &app.admin_token,
            &json!({"url": up.file_url("public"), "name": "public now", "api_token": ""}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let item = app.repository(id).await;
    assert_eq!(item["api_token"], "");
    assert_eq!(item["source_branch"], "develop");
    assert_eq!(item["source_type"], 4);
    let res = app
        .put_json(
            "/api/yara/repositories/999999/",
            &app.admin_token,
            &json!({"url": up.file_url("public"), "name": "x"}),
        )
        .await;
    expect_error(res, 404).await;
}

async fn permissions_of_regular_users_and_superusers(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice", false).await;
    let bob = app.user("bob", false).await;
    let root = app.user("root", true).await;
    let up = Upstreams::new();
    up.repo("a", "main", &[("r.yar", RULE)]);
    up.repo("b", "main", &[("r.yar", RULE)]);
    up.repo("c", "main", &[("r.yar", RULE)]);
    let a = app
        .create_repository(&alice, json!({"url": up.file_url("a"), "name": "alice's"}))
        .await;
    let b = app
        .create_repository(&bob, json!({"url": up.file_url("b"), "name": "bob's"}))
        .await;
    let bob_id = app.repository(b).await["user"].clone();
    assert_ne!(app.repository(a).await["user"], bob_id);

    let update = json!({"url": up.file_url("b"), "name": "taken over"});
    let res = app
        .put_json(&format!("/api/yara/repositories/{b}/"), &alice, &update)
        .await;
    expect_error(res, 403).await;
    let res = app
        .delete(&format!("/api/yara/repositories/{b}/"), &alice)
        .await;
    expect_error(res, 400).await;
    assert_eq!(app.repository(b).await["name"], "bob's");

    let system_id = app
        .all_repositories()
        .await
        .iter()
        .find(|r| r["is_custom"] == false)
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let res = app
        .put_json(
            &format!("/api/yara/repositories/{system_id}/"),
            &alice,
            &json!({"url": up.file_url("c"), "name": "mine now"}),
        )
        .await;
    expect_error(res, 403).await;
    for token in [&alice, &root] {
        let res = app
            .delete(&format!("/api/yara/repositories/{system_id}/"), token)
            .await;
        let err = expect_error(res, 400).await;
        assert_eq!(err["code"], "system_repository");
    }

    // A superuser may change and delete anyone's custom repository.
    let res = app
        .put_json(&format!("/api/yara/repositories/{b}/"), &root, &update)
        .await;
    assert_eq!(res.status(), 200);
    let item = app.repository(b).await;
    assert_eq!(item["user"], bob_id, "a superuser's update keeps the owner");
    assert_eq!(item["name"], "taken over");
    let res = app
        .delete(
            &format!("/api/yara/repositories/{b}/?shouldRemoveRulesets=true"),
            &root,
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["message"],
        "Repository deleted."
    );
    let res = app
        .delete(
            &format!("/api/yara/repositories/{a}/?shouldRemoveRulesets=False"),
            &alice,
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .delete(&format!("/api/yara/repositories/{a}/"), &alice)
        .await;
    expect_error(res, 404).await;
    let res = app.delete("/api/yara/repositories/abc/", &alice).await;
    expect_error(res, 404).await;
    // Everyone may list.
    let res = app.get("/api/yara/repositories/", &bob).await;
    assert_eq!(res.status(), 200);
}

async fn system_repositories_come_from_configuration(backend: Backend) {
    let up = Upstreams::new();
    up.repo("sys", "develop", &[("r.yara", RULE)]);
    up.repo("other", "main", &[("r.yara", RULE)]);
    let mut config = TestConfig::new(backend);
    config.system_repositories = Some(vec![ruleyard::config::SystemRepository {
        url: up.file_url("sys"),
        name: "Local mirror".into(),
        branch: "develop".into(),
        import_update_preferences: 1,
    }]);
    let app = TestApp::spawn_with(config).await;
    let system: Vec<Value> = app
        .all_repositories()
        .await
        .into_iter()
        .filter(|r| r["is_custom"] == false)
        .collect();
    assert_eq!(system.len(), 1, "configuration replaces the default");
    assert_eq!(system[0]["name"], "Local mirror");
    assert_eq!(system[0]["import_update_preferences"], 1);
    let id = system[0]["id"].as_i64().unwrap();
    // A superuser may update a system repository (it stays a system repository).
    let res = app
        .put_json(
            &format!("/api/yara/repositories/{id}/"),
            &app.admin_token,
            &json!({"url": up.file_url("sys"), "name": "Local mirror", "import_update_preferences": 0}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let item = app.repository(id).await;
    assert_eq!(item["is_custom"], false);
    assert_eq!(item["import_update_preferences"], 0);
}

async fn bad_input_gets_a_clear_4xx_and_stores_nothing(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.max_body_bytes = Some(4096);
    let app = TestApp::spawn_with(config).await;
    let up = Upstreams::new();
    up.repo("ok", "main", &[("r.yar", RULE)]);
    let before = app.all_repositories().await.len();
    let post_raw = |body: &'static str| {
        app.request(Method::POST, "/api/yara/repositories/", &app.admin_token)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    let err = expect_error(post_raw("{\"url\": ").await.unwrap(), 400).await;
    assert_eq!(err["code"], "malformed_json");
    expect_error(post_raw("[1, 2]").await.unwrap(), 400).await;
    let err = expect_error(post_raw("{}").await.unwrap(), 400).await;
    assert!(
        err["errors"]["url"].is_array() && err["errors"]["name"].is_array(),
        "{err}"
    );

    let secret_url = "https://user:hunter2secret@github.com/acme/rules";
    let cases = [
        (json!({"url": secret_url, "name": "creds"}), "url"),
        (
            json!({"url": "https://ghp_tok@github.com/acme/rules", "name": "creds"}),
            "url",
        ),
        (
            json!({"url": "ftp://example.org/rules", "name": "ftp"}),
            "url",
        ),
        (json!({"url": "not a url", "name": "nope"}), "url"),
        (
            json!({"url": up.file_url("ok"), "name": "x".repeat(129)}),
            "name",
        ),
        (
            json!({"url": up.file_url("ok"), "name": {"nested": true}}),
            "name",
        ),
        (
            json!({"url": up.file_url("ok"), "name": "p", "import_update_preferences": 3}),
            "import_update_preferences",
        ),
        (
            json!({"url": up.file_url("ok"), "name": "p", "import_update_preferences": "often"}),
            "import_update_preferences",
        ),
        (
            json!({"url": up.file_url("ok"), "name": "p", "source_branch": "bad branch"}),
            "source_branch",
        ),
        (
            json!({"url": up.file_url("ok"), "name": "p", "api_token": ["a", "b"]}),
            "api_token",
        ),
    ];
    for (body, field) in cases {
        let res = app
            .post_json("/api/yara/repositories/", &app.admin_token, &body)
            .await;
        let err = expect_error(res, 400).await;
        assert!(err["errors"][field].is_array(), "{field}: {err}");
        assert!(!err.to_string().contains("hunter2secret"), "{err}");
    }
    // Duplicate name.
    app.create_repository(
        &app.admin_token,
        json!({"url": up.file_url("ok"), "name": "dup"}),
    )
    .await;
    let res = app
        .post_json(
            "/api/yara/repositories/",
            &app.admin_token,
            &json!({"url": up.file_url("ok"), "name": "dup", "source_branch": "main"}),
        )
        .await;
    let err = expect_error(res, 400).await;
    assert!(err["errors"]["name"].is_array());
    // Over the body limit.
    let huge = json!({"url": up.file_url("ok"), "name": "big", "pad": "x".repeat(10_000)});
    let res = app
        .post_json("/api/yara/repositories/", &app.admin_token, &huge)
        .await;
    expect_error(res, 413).await;
    assert_eq!(
        app.all_repositories().await.len(),
        before + 1,
        "only `dup` was stored"
    );
}

async fn local_sources_are_refused_unless_allowed(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.allow_local_sources = false;
    let app = TestApp::spawn_with(config).await;
    let up = Upstreams::new();
    up.repo("local", "main", &[("r.yar", RULE)]);
    let res = app
        .post_json(
            "/api/yara/repositories/",
            &app.admin_token,
            &json!({"url": up.file_url("local"), "name": "local"}),
        )
        .await;
    let err = expect_error(res, 400).await;
    assert!(
        err["errors"]["url"][0]
            .as_str()
            .unwrap()
            .contains("not allowed")
    );
}

async fn bodies_as_form_and_multipart_are_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let up = Upstreams::new();
    up.repo("f", "main", &[("r.yar", RULE)]);
    up.repo("m", "main", &[("r.yar", RULE)]);
    let res = app
        .request(Method::POST, "/api/yara/repositories", &app.admin_token)
        .form(&[
            ("url", up.file_url("f")),
            ("name", "form".into()),
            ("import_update_preferences", "1".into()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    assert_eq!(app.repository(id).await["import_update_preferences"], 1);
    let form = reqwest::multipart::Form::new()
        .text("url", up.file_url("m"))
        .text("name", "multipart")
        .text("import_update_preferences", "2");
    let res = app
        .request(Method::POST, "/api/yara/repositories/", &app.admin_token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    assert_eq!(app.repository(id).await["import_update_preferences"], 2);
}
