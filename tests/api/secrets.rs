//! BEHAVIOUR.md 7: an access token is nowhere in plain text — not in the data directory, the
//! database, the logs, or a response — after create, update, list and a failed connection test.
//! Runs the real binary as a process so that its whole log output is captured.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestDatabase, contains, files_below};
use crate::process::{ServerProcess, node_env, ruleyard};
use crate::upstream::{AuthGitServer, Upstreams};

backend_tests!(access_tokens_never_appear_in_plain_text);

async fn access_tokens_never_appear_in_plain_text(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let database = match backend {
        Backend::Postgres => Some(TestDatabase::create().await),
        Backend::Sqlite => None,
    };
    let envs = node_env(
        data.path(),
        database.as_ref().map(|d| d.url.as_str()),
        &[
            ("RULEYARD_LOG", "debug"),
            ("RULEYARD_CONNECT_TIMEOUT_SECONDS", "5"),
        ],
    );
    let server = ServerProcess::start(envs.clone(), logs.path(), "serve").await;
    let base = server.base.clone();
    let client = reqwest::Client::new();

    // A user and a token made with the command line, as an operator would.
    let mut create = ruleyard(&envs)
        .args(["user", "create", "carol"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        create
            .stdin
            .take()
            .unwrap()
            .write_all(b"carol-password\n")
            .unwrap();
    }
    let out = create.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ruleyard(&envs)
        .args(["token", "create", "carol"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let api_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(api_token.len(), 40);

    let first = "first-secret-9f1c2b7d";
    let second = "second-secret-4e8a0c6f";
    let wrong = "wrong-secret-7d3b9e21";
    let up = Upstreams::new();
    up.repo(
        "private",
        "main",
        &[("r.yar", "rule r { condition: true }\n")],
    );
    let server_one = AuthGitServer::start(up.root.path(), first).await;
    let server_two = AuthGitServer::start(up.root.path(), second).await;
    let mut responses = String::new();
    let auth = format!("Token {api_token}");
    let mut call = async |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = client
            .request(method, format!("{base}{path}"))
            .header("Authorization", &auth);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        responses.push_str(&text);
        (status, text)
    };
    let (status, text) = call(
        reqwest::Method::POST,
        "/api/yara/repositories/".into(),
        Some(json!({"url": server_one.url("private"), "name": "secret-test-repo", "api_token": first})),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_i64()
        .unwrap();
    let path = format!("/api/yara/repositories/{id}/");
    let (status, _) = call(
        reqwest::Method::PUT,
        path.clone(),
        Some(json!({"url": server_one.url("private"), "name": "secret-test-repo", "api_token": "********"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        reqwest::Method::PUT,
        path.clone(),
        Some(json!({"url": server_two.url("private"), "name": "secret-test-repo", "api_token": second})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, text) = call(
        reqwest::Method::PUT,
        path.clone(),
        Some(json!({"url": server_two.url("private"), "name": "secret-test-repo", "api_token": wrong})),
    )
    .await;
    assert_eq!(status, 404, "{text}");
    let (status, text) = call(reqwest::Method::GET, "/api/yara/repositories/".into(), None).await;
    assert_eq!(status, 200);
    assert!(text.contains("********"));
    let (status, _) = call(reqwest::Method::GET, path.clone(), None).await;
    assert_eq!(status, 200);
    drop(server);

    let mut places: Vec<(String, Vec<u8>)> = files_below(data.path())
        .into_iter()
        .chain(files_below(logs.path()))
        .map(|(p, b)| (p.display().to_string(), b))
        .collect();
    places.push(("responses".into(), responses.into_bytes()));
    if let Some(db) = &database {
        let dump = Command::new("pg_dump")
            .arg(&db.url)
            .output()
            .expect("pg_dump");
        assert!(
            dump.status.success(),
            "{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        places.push(("pg_dump".into(), dump.stdout));
    }
    // The search is real: it finds what is stored in plain text.
    assert!(
        places.iter().any(|(_, b)| contains(b, "secret-test-repo")),
        "the repository name is stored somewhere we searched"
    );
    assert!(
        places
            .iter()
            .any(|(p, b)| p.ends_with("serve.err") && contains(b, "connection test failed")),
        "the failed connection test was logged"
    );
    for secret in [first, second, wrong] {
        for (place, bytes) in &places {
            assert!(!contains(bytes, secret), "{secret} found in {place}");
        }
    }
}
