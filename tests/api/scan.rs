//! API.md 6 and 5 (matches): scanning with the active rules, compared with YARA-X in process,
//! limits, and the match records.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, TestConfig, expect_error};

backend_tests!(
    scan_results_equal_yara_x_on_the_same_rules_and_files,
    bodies_names_limits_and_timeouts,
    matches_and_counters_follow_scans,
    concurrent_scans_are_all_recorded_under_their_digest,
    every_scan_sees_one_whole_generation,
    a_ruleset_over_the_match_cap_is_capped_until_edited,
    the_local_retro_hunt_rescans_kept_samples,
);

const CLASSIFIER: &str = r#"
import "pe"
rule elf_file : malicious { meta: kind = "elf" condition: uint32(0) == 0x464c457f }
rule pe_file : suspicious { condition: pe.is_pe }
rule has_glibc { strings: $g = "GLIBC_2." condition: $g }
rule marker : goodware { meta: ref = "a" ref = "b" strings: $m = "ruleyard-marker" condition: $m }
"#;
const NAMED: &str =
    "rule named_evil { condition: filename == \"evil.exe\" and extension == \"exe\" }\n";

async fn scan(app: &TestApp, path: &str, body: Vec<u8>) -> reqwest::Response {
    app.request(Method::POST, path, &app.admin_token)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Saves a ruleset as the admin, expecting `status`, and waits until it is active.
async fn save_active(app: &TestApp, name: &str, text: &str, status: u16) {
    let res = app.save_ruleset(&app.admin_token, name, text).await;
    assert_eq!(res.status(), status, "saving {name}");
    app.wait_status(name, "active").await;
}

async fn ok_json(res: reqwest::Response) -> Value {
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

fn matched(body: &Value) -> BTreeSet<String> {
    body["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}:{}",
                m["ruleset"].as_str().unwrap(),
                m["rule"].as_str().unwrap()
            )
        })
        .collect()
}

/// Real files from the system, a few hundred KiB each at most.
fn system_files() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["/usr/bin", "/usr/lib/x86_64-linux-gnu"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if out.len() >= 40 {
                break;
            }
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.is_file()
                && meta.len() < 512 * 1024
                && let Ok(bytes) = std::fs::read(&path)
            {
                out.push((path.display().to_string(), bytes));
            }
        }
    }
    out
}

async fn scan_results_equal_yara_x_on_the_same_rules_and_files(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    save_active(&app, "Classifier", CLASSIFIER, 201).await;
    let generation = app.state.rulesets.current_generation().unwrap();
    let mut files = system_files();
    assert!(files.len() >= 20, "real binaries to scan");
    files.push(("marker".into(), b"xx ruleyard-marker xx".to_vec()));
    files.push((
        "nothing".into(),
        b"plain text that matches nothing".to_vec(),
    ));
    let mut kinds = BTreeSet::new();
    for (name, bytes) in &files {
        let body = ok_json(scan(&app, "/api/yara/scan/", bytes.clone()).await).await;
        assert_eq!(body["generation"], generation.number);
        assert_eq!(body["size"], bytes.len());
        let mut scanner = yara_x::Scanner::new(&generation.rules);
        let expected: BTreeSet<String> = scanner
            .scan(bytes)
            .unwrap()
            .matching_rules()
            .map(|r| format!("{}:{}", r.namespace(), r.identifier()))
            .collect();
        let got = matched(&body);
        assert_eq!(got, expected, "{name}");
        kinds.extend(got);
    }
    assert!(
        kinds.contains("Classifier:elf_file") && kinds.contains("Classifier:marker"),
        "{kinds:?}"
    );
    let marker = ok_json(scan(&app, "/api/yara/scan/", b"ruleyard-marker".to_vec()).await).await;
    let m = &marker["matches"][0];
    assert_eq!(m["tags"], serde_json::json!(["goodware"]));
    assert_eq!(
        m["meta"]["ref"],
        serde_json::json!(["a", "b"]),
        "a repeated meta key keeps both values"
    );
    assert_eq!(marker["sha256"].as_str().unwrap().len(), 64);
}

async fn bodies_names_limits_and_timeouts(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.max_scan_bytes = Some(64 * 1024);
    config.scan_timeout_seconds = Some(1);
    let app = TestApp::spawn_with(config).await;
    save_active(&app, "Named", NAMED, 201).await;
    // The name sets the external variables; without it nothing matches.
    let body = ok_json(
        scan(
            &app,
            "/api/yara/scan/?filename=dir/evil.exe",
            b"MZ".to_vec(),
        )
        .await,
    )
    .await;
    assert!(matched(&body).contains("Named:named_evil"), "{body}");
    let body = ok_json(scan(&app, "/api/yara/scan/", b"MZ".to_vec()).await).await;
    assert!(!matched(&body).contains("Named:named_evil"));
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"MZ".to_vec()).file_name("evil.exe"),
    );
    let res = app
        .request(Method::POST, "/api/yara/scan", &app.admin_token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body = ok_json(res).await;
    assert!(
        matched(&body).contains("Named:named_evil"),
        "multipart file name: {body}"
    );
    // Empty file, a file at the limit, one byte over.
    let body = ok_json(scan(&app, "/api/yara/scan/", Vec::new()).await).await;
    assert_eq!(body["size"], 0);
    let body = ok_json(scan(&app, "/api/yara/scan/", vec![0xFF; 64 * 1024]).await).await;
    assert_eq!(body["size"], 64 * 1024);
    expect_error(
        scan(&app, "/api/yara/scan/", vec![0xFF; 64 * 1024 + 1]).await,
        413,
    )
    .await;
    let big = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![0xFF; 64 * 1024 + 1]).file_name("big.bin"),
    );
    let res = app
        .request(Method::POST, "/api/yara/scan/", &app.admin_token)
        .multipart(big)
        .send()
        .await
        .unwrap();
    expect_error(res, 413).await;
    // A scan over its time limit answers with what it has and says so. (Activated only now: a
    // busy machine could push the small scans above over the one-second limit too.)
    let slow = "rule slow { condition: for all i in (0..filesize) : (for all j in (0..1000000) : (uint8(i) != 0xFF)) }\n";
    save_active(&app, "Slow_Rules", slow, 201).await;
    let started = std::time::Instant::now();
    let body = ok_json(scan(&app, "/api/yara/scan/", vec![0u8; 32 * 1024]).await).await;
    assert_eq!(body["timed_out"], true, "{body}");
    assert!(started.elapsed().as_secs() < 30);
}

async fn matches_and_counters_follow_scans(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alpha = "rule alpha_hit : malicious { strings: $a = \"alpha\" condition: $a }\n";
    let bravo = "rule bravo_hit { strings: $b = \"bravo\" condition: $b }\n";
    assert_eq!(
        app.save_ruleset(&app.admin_token, "Alpha_Set", alpha)
            .await
            .status(),
        201
    );
    assert_eq!(
        app.save_ruleset(&app.admin_token, "Bravo_Set", bravo)
            .await
            .status(),
        201
    );
    app.wait_status("Alpha_Set", "active").await;
    app.wait_status("Bravo_Set", "active").await;
    let both = ok_json(
        scan(
            &app,
            "/api/yara/scan/?filename=both.bin",
            b"alpha and bravo".to_vec(),
        )
        .await,
    )
    .await;
    ok_json(scan(&app, "/api/yara/scan/", b"only alpha".to_vec()).await).await;
    ok_json(scan(&app, "/api/yara/scan/", b"only alpha".to_vec()).await).await;
    ok_json(scan(&app, "/api/yara/scan/", b"nothing here".to_vec()).await).await;
    let list = |q: &'static str| {
        let app = &app;
        async move { ok_json(app.get(q, &app.admin_token).await).await }
    };
    let one = list("/api/yara/v2/ruleset/matches/?name=Alpha_Set").await;
    assert_eq!(
        one["count"], 2,
        "two distinct samples matched Alpha_Set: {one}"
    );
    let two = list("/api/yara/v2/ruleset/matches/?name=Alpha_Set&name=Bravo_Set").await;
    assert_eq!(two["count"], 1);
    assert_eq!(two["results"][0]["sha256"], both["sha256"]);
    assert_eq!(two["results"][0]["filename"], "both.bin");
    let paged = list("/api/yara/v2/ruleset/matches/?name=Alpha_Set&page=2&page_size=1").await;
    assert_eq!(paged["results"].as_array().unwrap().len(), 1);
    assert!(
        paged["previous"]
            .as_str()
            .unwrap()
            .contains("name=Alpha_Set")
    );
    expect_error(
        app.get("/api/yara/v2/ruleset/matches/", &app.admin_token)
            .await,
        400,
    )
    .await;
    expect_error(
        app.get(
            "/api/yara/v2/ruleset/matches/?name=Nope_Nope",
            &app.admin_token,
        )
        .await,
        404,
    )
    .await;
    let rulesets = app.rulesets().await;
    assert_eq!(rulesets["Alpha_Set"]["malicious_match_count"], 2);
    assert_eq!(rulesets["Alpha_Set"]["unknown_match_count"], 0);
    assert_eq!(rulesets["Bravo_Set"]["unknown_match_count"], 1);
    assert!(rulesets["Alpha_Set"]["last_matched"].is_string());
}

/// Scans answer before their matches are written (in batches, in the background); a query made
/// after the answers still sees every one, each under the SHA-256 of what was sent.
async fn concurrent_scans_are_all_recorded_under_their_digest(backend: Backend) {
    use sha2::Digest;
    let app = TestApp::spawn(backend).await;
    let rule = "rule delta_hit : suspicious { strings: $d = \"delta\" condition: $d }\n";
    save_active(&app, "Delta_Set", rule, 201).await;
    // Distinct samples, one of them large enough to arrive in many chunks.
    let mut samples: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("delta sample {i}").into_bytes())
        .collect();
    let mut large = vec![0x5Au8; 3 * 1024 * 1024];
    large[1_000_000..1_000_005].copy_from_slice(b"delta");
    samples.push(large);
    let scans = samples.iter().enumerate().map(|(i, sample)| {
        let app = &app;
        async move {
            // Half raw bodies, half multipart forms.
            let res = if i % 2 == 0 {
                scan(app, "/api/yara/scan/", sample.clone()).await
            } else {
                let part =
                    reqwest::multipart::Part::bytes(sample.clone()).file_name(format!("s{i}"));
                app.request(Method::POST, "/api/yara/scan/", &app.admin_token)
                    .multipart(reqwest::multipart::Form::new().part("file", part))
                    .send()
                    .await
                    .unwrap()
            };
            ok_json(res).await
        }
    });
    let answers = futures::future::join_all(scans).await;
    let mut expected = BTreeSet::new();
    for (sample, answer) in samples.iter().zip(&answers) {
        let digest = hex::encode(sha2::Sha256::digest(sample));
        assert_eq!(
            answer["sha256"],
            digest.as_str(),
            "the digest of what was sent"
        );
        assert_eq!(answer["size"], sample.len());
        assert_eq!(
            matched(answer),
            BTreeSet::from(["Delta_Set:delta_hit".to_owned()])
        );
        expected.insert(digest);
    }
    let found = ok_json(
        app.get(
            "/api/yara/v2/ruleset/matches/?name=Delta_Set&page=1&page_size=100",
            &app.admin_token,
        )
        .await,
    )
    .await;
    let recorded: BTreeSet<String> = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sha256"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recorded, expected, "every answered scan is recorded");
    let rulesets = app.rulesets().await;
    assert_eq!(
        rulesets["Delta_Set"]["suspicious_match_count"],
        samples.len()
    );
}

async fn every_scan_sees_one_whole_generation(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(backend).await);
    let version =
        |k: usize| format!("rule a_{k} {{ condition: true }}\nrule b_{k} {{ condition: true }}\n");
    assert_eq!(
        app.save_ruleset(&app.admin_token, "Flipping", &version(0))
            .await
            .status(),
        201
    );
    app.wait_status("Flipping", "active").await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanner = {
        let (app, done) = (app.clone(), done.clone());
        tokio::spawn(async move {
            // Scan until the last version has been seen after all the writes.
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let body = ok_json(scan(&app, "/api/yara/scan/", b"x".to_vec()).await).await;
                let rules = matched(&body);
                let last = rules.contains("Flipping:a_8");
                seen.push((body["generation"].as_i64().unwrap(), rules));
                if (last && done.load(std::sync::atomic::Ordering::Relaxed))
                    || std::time::Instant::now() > deadline
                {
                    return seen;
                }
            }
        })
    };
    for k in 1..=8 {
        assert_eq!(
            app.save_ruleset(&app.admin_token, "Flipping", &version(k))
                .await
                .status(),
            200
        );
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = scanner.await.unwrap();
    let mut per_generation = std::collections::BTreeMap::new();
    for (generation, rules) in seen {
        assert_eq!(rules.len(), 2, "{rules:?}");
        let suffixes: BTreeSet<&str> = rules
            .iter()
            .map(|r| r.rsplit('_').next().unwrap())
            .collect();
        assert_eq!(suffixes.len(), 1, "a mix of generations: {rules:?}");
        let previous = per_generation.insert(generation, rules.clone());
        assert!(
            previous.is_none_or(|p| p == rules),
            "one generation, one rule set"
        );
    }
    assert!(
        per_generation.len() >= 2,
        "scans ran across activations: {per_generation:?}"
    );
}

async fn a_ruleset_over_the_match_cap_is_capped_until_edited(backend: Backend) {
    let mut config = TestConfig::new(backend);
    config.match_cap = Some(2);
    let app = TestApp::spawn_with(config).await;
    let catch_all = "rule everything { condition: true }\n";
    save_active(&app, "Catch_All", catch_all, 201).await;
    for sample in ["one", "two", "three"] {
        ok_json(scan(&app, "/api/yara/scan/", sample.as_bytes().to_vec()).await).await;
    }
    assert_eq!(app.ruleset("Catch_All").await["status"], "capped");
    let capped = app.rulesets().await;
    assert_eq!(capped["Catch_All"]["unknown_match_count"], 3);
    // Still scanning (the rule matches), but recording nothing more.
    let body = ok_json(scan(&app, "/api/yara/scan/", b"four".to_vec()).await).await;
    assert!(matched(&body).contains("Catch_All:everything"));
    assert_eq!(app.rulesets().await["Catch_All"]["unknown_match_count"], 3);
    let listed = ok_json(
        app.get(
            "/api/yara/v2/rulesets/?type=all&status=capped",
            &app.admin_token,
        )
        .await,
    )
    .await;
    assert_eq!(listed["count"], 1);
    // An edit lifts the cap.
    let edited = "rule everything { condition: true and true }\n";
    save_active(&app, "Catch_All", edited, 200).await;
    // Matches from before the edit no longer count toward the cap.
    ok_json(scan(&app, "/api/yara/scan/", b"five".to_vec()).await).await;
    assert_eq!(app.ruleset("Catch_All").await["status"], "active");
    assert_eq!(app.rulesets().await["Catch_All"]["unknown_match_count"], 4);
}

async fn the_local_retro_hunt_rescans_kept_samples(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let hunt = "/api/uploads/local-retro-hunt/";
    let status = ok_json(app.get(hunt, &app.admin_token).await).await;
    assert_eq!(status["status"]["state"], "NOT_STARTED");
    let mut shas = BTreeSet::new();
    for sample in ["old sample one", "old sample two", "nothing"] {
        let body = ok_json(scan(&app, "/api/yara/scan/", sample.as_bytes().to_vec()).await).await;
        assert!(body["matches"].as_array().unwrap().is_empty());
        shas.insert(body["sha256"].as_str().unwrap().to_owned());
    }
    // Samples are kept content-addressed in the data directory, by the background writer: on
    // disk once it has caught up with the scans answered.
    app.state.scanning.flush().await;
    for sha in &shas {
        let path = app
            .state
            .settings
            .data_dir
            .join("samples")
            .join(&sha[..2])
            .join(sha);
        assert!(path.is_file(), "{path:?}");
    }
    let later = "rule old_sample { strings: $a = \"old sample\" condition: $a }\n";
    save_active(&app, "Later_Rule", later, 201).await;
    let operate = |operation: &'static str| {
        let app = &app;
        async move {
            app.request(Method::POST, hunt, &app.admin_token)
                .form(&[("operation", operation)])
                .send()
                .await
                .unwrap()
        }
    };
    let started = ok_json(operate("START").await).await;
    assert_eq!(started["success"], true);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let status = ok_json(app.get(hunt, &app.admin_token).await).await;
        if status["status"]["state"] == "COMPLETED" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status["status"]["samples"], 3);
    assert_eq!(status["status"]["processed"], 3);
    assert!(status["status"]["started"].is_string() && status["status"]["stopped"].is_string());
    assert_eq!(status["status"]["history"].as_array().unwrap().len(), 1);
    let matches = ok_json(
        app.get(
            "/api/yara/v2/ruleset/matches/?name=Later_Rule",
            &app.admin_token,
        )
        .await,
    )
    .await;
    assert_eq!(
        matches["count"], 2,
        "the two old samples matched the new rule: {matches}"
    );
    // STOP after it finished: 412; an unknown operation: 400.
    let res = operate("STOP").await;
    assert_eq!(res.status(), 412);
    expect_error(operate("PAUSE").await, 400).await;
}

/// Before any generation is loaded, scans answer 503 and the node is not ready.
#[tokio::test]
async fn scans_before_any_generation_get_503() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let overrides = ruleyard::config::Overrides {
        data_dir: Some(dir.path().to_owned()),
        ..Default::default()
    };
    let settings = ruleyard::config::Settings::load(None, &overrides).unwrap();
    // The state alone: nothing has loaded or built a generation.
    let state = ruleyard::app::open_state(settings).await.unwrap();
    let user = state
        .store
        .create_user(
            &ruleyard::domain::Username::parse("early").unwrap(),
            "x",
            false,
        )
        .await
        .unwrap();
    let token = ruleyard::auth::new_token();
    state
        .store
        .create_token(user.id, &ruleyard::auth::token_hash(&token), "test")
        .await
        .unwrap();
    let router = ruleyard::http::router(state);
    let request = axum::http::Request::post("/api/yara/scan")
        .header("Authorization", format!("Token {token}"))
        .body(axum::body::Body::from("sample"))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 503);
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "not_ready");
    let ready = axum::http::Request::get("/readyz")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(router.oneshot(ready).await.unwrap().status(), 503);
}

/// The local retro hunt's history is the node's, in its data directory: it survives a restart
/// (here a `kill -9` and a new process on the same directory).
#[tokio::test]
async fn the_retro_hunt_history_survives_a_restart() {
    use crate::process::{ServerProcess, node_env};
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let hunt = "/api/uploads/local-retro-hunt/";
    let mut first = ServerProcess::start(node_env(data.path(), None, &[]), logs.path(), "a").await;
    let res = first
        .request(Method::POST, "/api/yara/ruleset/")
        .form(&[
            ("analysis", "cloud"),
            ("name", "Kept"),
            (
                "content",
                "rule kept { strings: $a = \"kept\" condition: $a }\n",
            ),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    // Scans answer 503 until the first generation is loaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for sample in ["kept sample", "another sample"] {
        loop {
            let res = first
                .request(Method::POST, "/api/yara/scan/")
                .body(sample)
                .send()
                .await
                .unwrap();
            if res.status() == 200 {
                break;
            }
            assert_eq!(res.status(), 503);
            assert!(std::time::Instant::now() < deadline, "no generation loaded");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let res = first
        .request(Method::POST, hunt)
        .form(&[("operation", "START")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let before = loop {
        let status = first.get_json(hunt).await;
        if status["status"]["state"] == "COMPLETED" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(before["status"]["processed"], 2, "{before}");
    first.kill();

    let second = ServerProcess::start(node_env(data.path(), None, &[]), logs.path(), "b").await;
    let after = second.get_json(hunt).await;
    assert_eq!(
        after["status"], before["status"],
        "the same hunt, state and history"
    );
    assert_eq!(after["status"]["history"].as_array().unwrap().len(), 1);
}
