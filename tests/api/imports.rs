//! BEHAVIOUR.md 2 and 5, API.md 2 (ext) and 3: imports, the file index, the update job, its
//! cadence, its lease and its record of runs.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::corpus::corpora_dir;
use crate::helpers::{Backend, TestApp, TestConfig, expect_error};
use crate::upstream::{AuthGitServer, GitDaemon, Upstreams};

const RULE_A: &str = "rule a_rule { strings: $a = \"alpha\" condition: $a }\n";
const RULE_B: &str = "rule b_rule { strings: $b = \"bravo\" condition: $b }\n";
const RULE_C: &str = "rule c_rule { strings: $c = \"charlie\" condition: $c }\n";

backend_tests!(
    corpus_upstream_moves_forward_and_only_changed_files_get_revisions,
    preferences_decide_what_a_run_imports,
    removed_files_disable_their_rulesets_and_come_back,
    includes_are_inlined_from_the_same_commit_and_index_files_skipped,
    explicit_import_of_a_manual_repository,
    a_stalled_upstream_makes_the_run_partial_and_the_others_import,
    a_second_run_while_one_is_alive_gets_409,
    the_cadence_is_persisted_and_takes_effect_at_once,
    deleting_a_repository_keeps_or_removes_its_rulesets,
    a_run_read_while_it_records_counts_exactly_the_outcomes_it_shows,
);

/// Path to ruleset item, for the rulesets of one repository.
async fn by_path(app: &TestApp, repo: i64) -> BTreeMap<String, Value> {
    app.rulesets()
        .await
        .into_values()
        .filter(|r| r["repository"] == repo)
        .map(|r| (r["source_path"].as_str().unwrap().to_owned(), r))
        .collect()
}

/// The rule files an upstream range touched: (modified, added, deleted).
fn rule_changes(up: &Upstreams, name: &str, old: &str, new: &str) -> [BTreeSet<String>; 3] {
    let diff = up.git_in(name, &["diff", "--name-status", "--no-renames", old, new]);
    let mut sets: [BTreeSet<String>; 3] = Default::default();
    for line in diff.lines() {
        let (status, path) = line.split_once('\t').unwrap();
        let lower = path.to_ascii_lowercase();
        if ![".yar", ".yara", ".rule"]
            .iter()
            .any(|e| lower.ends_with(e))
        {
            continue;
        }
        let slot = match status {
            "M" => 0,
            "A" => 1,
            "D" => 2,
            other => panic!("unexpected diff status {other}"),
        };
        sets[slot].insert(path.to_owned());
    }
    sets
}

/// Every corpus, served by `git daemon` or by `git http-backend` behind basic authentication,
/// imported at an older commit and then moved to HEAD: revisions exactly for the rule files
/// that changed between the two commits, new files imported only under preference 2.
async fn corpus_upstream_moves_forward_and_only_changed_files_get_revisions(backend: Backend) {
    let Some(dir) = corpora_dir() else {
        eprintln!("skipped: ../shared/corpora is not there");
        return;
    };
    let mut config = TestConfig::new(backend);
    config.rule_extensions = Some(vec![".yar".into(), ".yara".into(), ".rule".into()]);
    let app = TestApp::spawn_with(config).await;
    let up = Upstreams::new();
    let token = "corpus-token";
    let daemon_bundles = ["reversinglabs", "bartblaze", "inquest"];
    let bundles = [
        "reversinglabs",
        "signature-base",
        "bartblaze",
        "mandiant-rtcm",
        "inquest",
    ];
    let mut heads = BTreeMap::new();
    for bundle in bundles {
        up.clone_bundle(bundle, &dir.join(format!("{bundle}.bundle")));
        let branch = up
            .git_in(bundle, &["symbolic-ref", "--short", "HEAD"])
            .trim()
            .to_owned();
        let head = up.git_in(bundle, &["rev-parse", &branch]).trim().to_owned();
        let old = up
            .git_in(bundle, &["rev-parse", &format!("{branch}~12")])
            .trim()
            .to_owned();
        up.git_in(
            bundle,
            &["update-ref", &format!("refs/heads/{branch}"), &old],
        );
        heads.insert(bundle, (branch, old, head));
    }
    let daemon = GitDaemon::start(up.root.path());
    let http = AuthGitServer::start(up.root.path(), token).await;
    let mut ids = BTreeMap::new();
    for bundle in bundles {
        let body = if daemon_bundles.contains(&bundle) {
            json!({"url": daemon.url(bundle), "name": bundle, "import_update_preferences": 2})
        } else {
            json!({"url": http.url(bundle), "name": bundle, "api_token": token, "import_update_preferences": 2})
        };
        ids.insert(bundle, app.create_repository(&app.admin_token, body).await);
    }
    // The same bartblaze over the other transport, preference 1, its files imported by hand.
    let manual = app
        .create_repository(
            &app.admin_token,
            json!({"url": http.url("bartblaze"), "name": "bartblaze-update-only", "api_token": token, "import_update_preferences": 1}),
        )
        .await;
    let res = app
        .post_json(
            &format!("/api/yara/repositories/{manual}/import/"),
            &app.admin_token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);

    let run = app.wait_run(app.start_run().await).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let mut before = BTreeMap::new();
    for bundle in bundles {
        let (_, old, _) = &heads[bundle];
        let rulesets = by_path(&app, ids[bundle]).await;
        let files = app.files(ids[bundle]).await;
        let imported = files.iter().filter(|f| f["state"] == "imported").count();
        assert_eq!(
            rulesets.len(),
            imported,
            "{bundle}: every imported file is a ruleset"
        );
        assert!(rulesets.values().all(|r| r["revision"] == 1), "{bundle}");
        let outcome = run["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["repository"] == ids[bundle])
            .unwrap();
        assert_eq!(&outcome["commit_after"], old, "{bundle}");
        before.insert(bundle, rulesets);
    }
    let manual_before = by_path(&app, manual).await;

    for bundle in bundles {
        let (branch, _, head) = &heads[bundle];
        up.git_in(
            bundle,
            &["update-ref", &format!("refs/heads/{branch}"), head],
        );
    }
    let run = app.wait_run(app.start_run().await).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let mut changed_anywhere = 0;
    for bundle in bundles {
        let (_, old, head) = &heads[bundle];
        let [modified, added, deleted] = rule_changes(&up, bundle, old, head);
        changed_anywhere += modified.len() + added.len();
        let index: BTreeMap<String, Value> = app
            .files(ids[bundle])
            .await
            .into_iter()
            .map(|f| (f["path"].as_str().unwrap().to_owned(), f))
            .collect();
        // Index and skipped files are not rulesets: compare over what was imported.
        let imported = |p: &String| index.get(p).is_some_and(|f| f["state"] == "imported");
        let after = by_path(&app, ids[bundle]).await;
        let revised: BTreeSet<String> = after
            .iter()
            .filter(|(p, r)| r["revision"] == 2 && before[bundle].contains_key(*p))
            .map(|(p, _)| p.clone())
            .collect();
        let expected: BTreeSet<String> = modified.iter().filter(|p| imported(p)).cloned().collect();
        assert_eq!(
            revised, expected,
            "{bundle}: new revisions exactly for the modified files"
        );
        for path in added.iter().filter(|p| imported(p)) {
            assert_eq!(
                after[path]["revision"], 1,
                "{bundle}: {path} imported (preference 2)"
            );
        }
        for path in deleted.iter().filter(|p| before[bundle].contains_key(*p)) {
            assert_eq!(
                after[path]["status"], "disabled",
                "{bundle}: {path} removed upstream"
            );
        }
        let outcome = run["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["repository"] == ids[bundle])
            .unwrap();
        assert_eq!(&outcome["commit_after"], head, "{bundle}");
        assert_eq!(
            outcome["files_removed"],
            deleted.len(),
            "{bundle}: {outcome}"
        );
    }
    assert!(changed_anywhere > 0, "the ranges change rule files");
    // Preference 1: changed imported files get revisions, added files only become available.
    let (_, old, head) = &heads["bartblaze"];
    let [modified, added, _] = rule_changes(&up, "bartblaze", old, head);
    let manual_after = by_path(&app, manual).await;
    for path in &modified {
        if manual_before.contains_key(path) {
            assert_eq!(manual_after[path]["revision"], 2, "{path}");
        }
    }
    let files = app.files(manual).await;
    for path in &added {
        assert!(
            !manual_after.contains_key(path),
            "{path} is not imported under preference 1"
        );
        let entry = files.iter().find(|f| f["path"] == path.as_str()).unwrap();
        assert!(
            entry["state"] == "available"
                || entry["state"] == "skipped"
                || entry["state"] == "index",
            "{entry}"
        );
    }
    // Nothing changed upstream: a reference check each, no new revision.
    let run = app.wait_run(app.start_run().await).await;
    for outcome in run["repositories"].as_array().unwrap() {
        assert_eq!(outcome["unchanged"], true, "{outcome}");
        assert_eq!(outcome["revisions_created"], 0);
    }
}

async fn preferences_decide_what_a_run_imports(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let up = Upstreams::new();
    for name in ["manual", "update", "auto"] {
        up.repo(name, "main", &[("rules/alpha.yar", RULE_A)]);
    }
    let mut ids = BTreeMap::new();
    for (pref, name) in [(0, "manual"), (1, "update"), (2, "auto")] {
        let id = app
            .create_repository(
                &app.admin_token,
                json!({"url": up.file_url(name), "name": format!("repo-{name}"), "import_update_preferences": pref}),
            )
            .await;
        ids.insert(name, id);
    }
    let run = app.wait_run(app.start_run().await).await;
    assert_eq!(
        run["progress"]["total"], 2,
        "the manual repository is not touched: {run}"
    );
    assert!(app.files(ids["manual"]).await.is_empty());
    assert_eq!(app.files(ids["update"]).await[0]["state"], "available");
    assert!(by_path(&app, ids["update"]).await.is_empty());
    let auto = by_path(&app, ids["auto"]).await;
    assert_eq!(auto["rules/alpha.yar"]["name"], "alpha");
    assert_eq!(app.files(ids["auto"]).await[0]["state"], "imported");
    // Import the update-only repository's file by hand; then a change upstream revises it and a
    // new file stays available.
    let res = app
        .post_json(
            &format!("/api/yara/repositories/{}/import/", ids["update"]),
            &app.admin_token,
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let update = by_path(&app, ids["update"]).await;
    assert_eq!(
        update["rules/alpha.yar"]["name"], "repo-update_alpha",
        "the name `alpha` is taken"
    );
    for name in ["update", "auto"] {
        up.commit(
            name,
            "main",
            &[
                ("rules/alpha.yar", Some(RULE_B)),
                ("rules/new.yar", Some(RULE_C)),
            ],
        );
    }
    app.wait_run(app.start_run().await).await;
    let update = by_path(&app, ids["update"]).await;
    assert_eq!(update["rules/alpha.yar"]["revision"], 2);
    assert!(!update.contains_key("rules/new.yar"));
    let files = app.files(ids["update"]).await;
    let new = files.iter().find(|f| f["path"] == "rules/new.yar").unwrap();
    assert_eq!(new["state"], "available");
    let auto = by_path(&app, ids["auto"]).await;
    assert_eq!(auto["rules/alpha.yar"]["revision"], 2);
    assert_eq!(auto["rules/new.yar"]["revision"], 1);
    // With YARA Sync off, imported valid revisions become active.
    app.wait_status(auto["rules/new.yar"]["name"].as_str().unwrap(), "active")
        .await;
}

async fn removed_files_disable_their_rulesets_and_come_back(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let up = Upstreams::new();
    up.repo("r", "main", &[("alpha.yar", RULE_A), ("bravo.yar", RULE_B)]);
    let id = app
        .create_repository(
            &app.admin_token,
            json!({"url": up.file_url("r"), "name": "r", "import_update_preferences": 2}),
        )
        .await;
    app.wait_run(app.start_run().await).await;
    up.commit("r", "main", &[("bravo.yar", None)]);
    let run = app.wait_run(app.start_run().await).await;
    assert_eq!(run["repositories"][0]["files_removed"], 1);
    let rulesets = by_path(&app, id).await;
    assert_eq!(
        rulesets["bravo.yar"]["status"], "disabled",
        "disabled, never deleted"
    );
    let files = app.files(id).await;
    assert!(
        files
            .iter()
            .any(|f| f["path"] == "bravo.yar" && f["state"] == "removed_upstream")
    );
    up.commit("r", "main", &[("bravo.yar", Some(RULE_C))]);
    app.wait_run(app.start_run().await).await;
    let rulesets = by_path(&app, id).await;
    assert_eq!(
        rulesets["bravo.yar"]["revision"], 2,
        "back with a new revision"
    );
    assert_eq!(rulesets["bravo.yar"]["name"], "bravo", "the same ruleset");
    app.wait_status("bravo", "active").await;
}

async fn includes_are_inlined_from_the_same_commit_and_index_files_skipped(backend: Backend) {
    let up = Upstreams::new();
    up.repo(
        "inc",
        "main",
        &[
            ("common/strings.yar", RULE_A),
            (
                "rules/main.yar",
                "include \"../common/strings.yar\"\nrule uses { condition: a_rule }\n",
            ),
            (
                "rules/escape.yar",
                "include \"../../etc/passwd\"\nrule x { condition: true }\n",
            ),
            (
                "index.yar",
                "// all rules\ninclude \"rules/main.yar\"\ninclude \"common/strings.yar\"\n",
            ),
            (
                "big.yar",
                &format!("rule big {{ condition: true }}\n//{}\n", "x".repeat(20_000)),
            ),
        ],
    );
    let mut config = TestConfig::new(backend);
    config.max_ruleset_bytes = Some(10_000);
    let app = TestApp::spawn_with(config).await;
    let id = app
        .create_repository(
            &app.admin_token,
            json!({"url": up.file_url("inc"), "name": "inc", "import_update_preferences": 2}),
        )
        .await;
    app.wait_run(app.start_run().await).await;
    let files: BTreeMap<String, Value> = app
        .files(id)
        .await
        .into_iter()
        .map(|f| (f["path"].as_str().unwrap().to_owned(), f))
        .collect();
    assert_eq!(files["index.yar"]["state"], "index");
    assert_eq!(files["big.yar"]["state"], "skipped");
    assert!(
        files["big.yar"]["reason"]
            .as_str()
            .unwrap()
            .contains("large")
    );
    let rulesets = by_path(&app, id).await;
    assert_eq!(rulesets["rules/main.yar"]["name"], "main");
    app.wait_status("main", "active").await;
    let main = app.ruleset("main").await;
    assert_eq!(
        main["latest"]["valid"], true,
        "the include was inlined: {main}"
    );
    assert_eq!(rulesets["rules/escape.yar"]["status"], "invalid");
    let detail = app.ruleset("escape").await;
    let message = detail["latest"]["diagnostics"][0]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("passwd"), "{message}");
    assert!(!rulesets.contains_key("index.yar"));

    // Only the included file changes upstream: the file that includes it gets a revision with
    // the new text; one whose includes did not change gets none.
    up.commit(
        "inc",
        "main",
        &[(
            "common/strings.yar",
            Some("rule a_rule { strings: $a = \"alpha-two\" condition: $a }\n"),
        )],
    );
    let run = app.wait_run(app.start_run().await).await;
    let outcome = &run["repositories"][0];
    assert_eq!(outcome["files_changed"], 1, "{outcome}");
    assert_eq!(
        outcome["revisions_created"], 2,
        "strings.yar and main.yar, not escape.yar: {outcome}"
    );
    let main = app.ruleset("main").await;
    assert_eq!(main["latest"]["revision"], 2, "{main}");
    assert_eq!(main["latest"]["valid"], true, "{main}");
    let content: Value = app
        .get("/api/yara/ruleset/content?name=main", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let text = content["detail"]["content"].as_str().unwrap();
    assert!(text.contains("alpha-two"), "{text}");
    assert_eq!(app.ruleset("escape").await["latest"]["revision"], 1);
}

async fn explicit_import_of_a_manual_repository(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice", false).await;
    let bob = app.user("bob", false).await;
    let up = Upstreams::new();
    up.repo(
        "m",
        "main",
        &[
            ("one.yar", RULE_A),
            ("two.yara", RULE_B),
            ("notes.txt", "x"),
        ],
    );
    let id = app
        .create_repository(&alice, json!({"url": up.file_url("m"), "name": "manual"}))
        .await;
    let path = format!("/api/yara/repositories/{id}/import/");
    expect_error(app.post_json(&path, &bob, &json!({})).await, 403).await;
    let err = expect_error(
        app.post_json(&path, &alice, &json!({"paths": ["nope.yar"]}))
            .await,
        400,
    )
    .await;
    assert!(
        err["errors"]["paths"][0]
            .as_str()
            .unwrap()
            .contains("nope.yar")
    );
    let res = app
        .post_json(&path, &alice, &json!({"paths": ["one.yar"]}))
        .await;
    let outcome: Value = res.json().await.unwrap();
    assert_eq!(outcome["rulesets_created"], 1, "{outcome}");
    assert_eq!(outcome["rule_files"], 2);
    let files: BTreeMap<String, String> = app
        .files(id)
        .await
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_owned(),
                f["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        files,
        BTreeMap::from([
            ("one.yar".into(), "imported".into()),
            ("two.yara".into(), "available".into())
        ])
    );
    let res = app.post_json(&path, &alice, &json!({})).await;
    let outcome: Value = res.json().await.unwrap();
    assert_eq!(outcome["rulesets_created"], 1);
    let rulesets = by_path(&app, id).await;
    assert_eq!(rulesets.len(), 2);
    assert_eq!(
        rulesets["one.yar"]["owner"], "alice",
        "owned by the repository's owner"
    );
    let repo = app.repository(id).await;
    assert_eq!(repo["sync"]["state"], "fetched");
    assert_eq!(
        repo["sync"]["commit"],
        up.git_in("m", &["rev-parse", "main"]).trim()
    );
}

async fn a_stalled_upstream_makes_the_run_partial_and_the_others_import(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.fetch_timeout_seconds = 3;
    config.connect_timeout_seconds = 3;
    let app = TestApp::spawn_with(config).await;
    let up = Upstreams::new();
    up.repo("good", "main", &[("g.yar", RULE_A)]);
    up.repo("slow", "main", &[("s.yar", RULE_B)]);
    let server = AuthGitServer::start(up.root.path(), "tok").await;
    let good = app
        .create_repository(
            &app.admin_token,
            json!({"url": up.file_url("good"), "name": "good", "import_update_preferences": 2}),
        )
        .await;
    let slow = app
        .create_repository(&app.admin_token, json!({"url": server.url("slow"), "name": "slow", "api_token": "tok", "import_update_preferences": 2}))
        .await;
    server
        .stall
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    let run = app.wait_run(app.start_run().await).await;
    assert!(
        started.elapsed().as_secs() < 60,
        "the timeout stopped the transfer"
    );
    assert_eq!(run["state"], "partial", "{run}");
    let outcomes: BTreeMap<i64, Value> = run["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["repository"].as_i64().unwrap(), o.clone()))
        .collect();
    assert!(
        outcomes[&slow]["error"]
            .as_str()
            .unwrap()
            .contains("seconds"),
        "{}",
        outcomes[&slow]
    );
    assert!(!outcomes[&slow]["error"].as_str().unwrap().contains("tok@"));
    assert_eq!(outcomes[&good]["error"], Value::Null);
    assert_eq!(by_path(&app, good).await.len(), 1);
    assert!(
        by_path(&app, slow).await.is_empty(),
        "nothing half-imported"
    );
    assert_eq!(app.repository(slow).await["sync"]["state"], "error");
}

async fn a_second_run_while_one_is_alive_gets_409(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.fetch_timeout_seconds = 4;
    config.connect_timeout_seconds = 4;
    let app = TestApp::spawn_with(config).await;
    let alice = app.user("alice", false).await;
    let up = Upstreams::new();
    up.repo("slow", "main", &[("s.yar", RULE_B)]);
    let server = AuthGitServer::start(up.root.path(), "tok").await;
    app.create_repository(&app.admin_token, json!({"url": server.url("slow"), "name": "slow", "api_token": "tok", "import_update_preferences": 1}))
        .await;
    server
        .stall
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let first = app.start_run().await;
    let res = app
        .request(Method::POST, "/api/yara/update/run", &app.admin_token)
        .send()
        .await
        .unwrap();
    let err = expect_error(res, 409).await;
    assert_eq!(err["message"], "Job is already running");
    assert_eq!(err["code"], "job_running");
    let status: Value = app
        .get("/api/yara/update/", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["running"]["id"], first);
    expect_error(
        app.request(Method::POST, "/api/yara/update/run", &alice)
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    let run = app.wait_run(first).await;
    assert_eq!(run["state"], "failed");
    // The lease is released: the next run starts.
    server
        .stall
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let run = app.wait_run(app.start_run().await).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let runs: Value = app
        .get("/api/yara/update/runs/", &app.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(runs["count"], 2);
    assert_eq!(runs["results"][0]["id"], run["id"], "newest first");
}

async fn the_cadence_is_persisted_and_takes_effect_at_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice", false).await;
    let post = |path: String, token: String| {
        let app = &app;
        async move {
            app.request(Method::POST, &path, &token)
                .send()
                .await
                .unwrap()
        }
    };
    let admin = app.admin_token.clone();
    let res = post("/api/yara/update/set-interval/600/".into(), admin.clone()).await;
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"message": "Job cadence configured to 600!"})
    );
    let status: Value = app
        .get("/api/yara/update/", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["interval_seconds"], 600);
    assert_eq!(status["enabled"], true);
    assert!(status["next_run_at"].is_string());
    for bad in ["-1", "abc", "2592001", "1.5", "+5"] {
        expect_error(
            post(
                format!("/api/yara/update/set-interval/{bad}"),
                admin.clone(),
            )
            .await,
            400,
        )
        .await;
    }
    expect_error(
        post("/api/yara/update/set-interval/5".into(), alice.clone()).await,
        403,
    )
    .await;
    expect_error(
        post("/api/yara/update/reset-interval".into(), alice.clone()).await,
        403,
    )
    .await;
    let res = post("/api/yara/update/set-interval/0".into(), admin.clone()).await;
    assert_eq!(res.status(), 200);
    let status: Value = app
        .get("/api/yara/update/", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["enabled"], false);
    assert_eq!(status["next_run_at"], Value::Null);
    let res = post("/api/yara/update/reset-interval/".into(), admin.clone()).await;
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"message": "Job cadence configured to 3600!"})
    );
    // A short cadence starts runs without a restart.
    post("/api/yara/update/set-interval/1".into(), admin.clone()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let runs: Value = app
            .get("/api/yara/update/runs/", &admin)
            .await
            .json()
            .await
            .unwrap();
        if runs["count"].as_i64().unwrap() >= 2 {
            assert!(
                runs["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| r["trigger"] == "scheduled")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler never ran: {runs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    post("/api/yara/update/set-interval/0".into(), admin.clone()).await;
}

async fn deleting_a_repository_keeps_or_removes_its_rulesets(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.user("alice", false).await;
    let up = Upstreams::new();
    up.repo("keep", "main", &[("keep_me.yar", RULE_A)]);
    up.repo("drop", "main", &[("drop_me.yar", RULE_B)]);
    let keep = app
        .create_repository(
            &alice,
            json!({"url": up.file_url("keep"), "name": "keep", "import_update_preferences": 2}),
        )
        .await;
    let gone = app
        .create_repository(
            &alice,
            json!({"url": up.file_url("drop"), "name": "drop", "import_update_preferences": 2}),
        )
        .await;
    app.wait_run(app.start_run().await).await;
    app.wait_status("keep_me", "active").await;
    app.wait_status("drop_me", "active").await;
    let res = app
        .delete(
            &format!("/api/yara/repositories/{keep}/?shouldRemoveRulesets=False"),
            &alice,
        )
        .await;
    assert_eq!(res.status(), 200);
    let kept = app.ruleset("keep_me").await;
    assert_eq!(kept["repository"], Value::Null, "now a local ruleset");
    assert_eq!(kept["owner"], "alice");
    assert_eq!(kept["status"], "active");
    let res = app
        .delete(
            &format!("/api/yara/repositories/{gone}/?shouldRemoveRulesets=True"),
            &alice,
        )
        .await;
    assert_eq!(res.status(), 200);
    expect_error(app.get("/api/yara/ruleset/drop_me/", &alice).await, 404).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.active_rules() != vec!["keep_me:a_rule"] {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            app.active_rules()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `GET /api/yara/update/runs/{id}/` while the run records outcomes: its `progress.done` is always
/// the number of outcomes in the same answer (a client computing "done of total" from either
/// must get the same number).
async fn a_run_read_while_it_records_counts_exactly_the_outcomes_it_shows(backend: Backend) {
    const REPOSITORIES: i64 = 80;
    let app = TestApp::spawn(backend).await;
    let store = app.state.store.clone();
    let run = store
        .insert_run("elsewhere", "manual", REPOSITORIES)
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for repository in 1..=REPOSITORIES {
            let outcome = ruleyard::domain::RepoOutcome {
                repository,
                name: format!("repo-{repository}"),
                ..Default::default()
            };
            store.record_run_repository(run, &outcome).await.unwrap();
        }
        store.finish_run(run, "succeeded").await.unwrap();
    });
    let path = format!("/api/yara/update/runs/{run}/");
    let mut reads = 0;
    loop {
        let res = app.get(&path, &app.admin_token).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        let shown = body["repositories"].as_array().unwrap().len() as i64;
        assert_eq!(
            body["progress"]["done"], shown,
            "read {reads}: progress and outcomes disagree: {body}"
        );
        reads += 1;
        if body["state"] == "succeeded" {
            assert_eq!(shown, REPOSITORIES);
            break;
        }
    }
    writer.await.unwrap();
    assert!(reads > 1, "the run was read while it recorded");
}
