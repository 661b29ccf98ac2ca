//! The update job across processes: a run cut short by `kill -9`, and two nodes sharing one
//! PostgreSQL database (one run at a time, a lapsed lease taken over).

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_tests;
use crate::helpers::{Backend, TestDatabase, postgres_url};
use crate::process::{ServerProcess, node_env, wait_run_state};
use crate::upstream::{AuthGitServer, Upstreams};

backend_tests!(a_run_cut_short_by_a_crash_is_interrupted_and_the_next_succeeds);

const RULE: &str = "rule crash_rule { strings: $a = \"crash\" condition: $a }\n";

async fn create_repo(server: &ServerProcess, url: &str, name: &str) -> i64 {
    let res = server
        .request(Method::POST, "/api/yara/repositories/")
        .json(
            &json!({"url": url, "name": name, "api_token": "tok", "import_update_preferences": 2}),
        )
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    body["id"].as_i64().unwrap_or_else(|| panic!("{body}"))
}

async fn json_status(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

async fn start_run(server: &ServerProcess) -> (u16, Value) {
    let res = server
        .request(Method::POST, "/api/yara/update/run")
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn repository_rulesets(server: &ServerProcess, id: i64) -> usize {
    let body = server.get_json("/api/yara/v2/rulesets/?type=all").await;
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["repository"] == id)
        .count()
}

async fn a_run_cut_short_by_a_crash_is_interrupted_and_the_next_succeeds(backend: Backend) {
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let database = match backend {
        Backend::Postgres => Some(TestDatabase::create().await),
        Backend::Sqlite => None,
    };
    let up = Upstreams::new();
    up.repo("victim", "main", &[("crash.yar", RULE)]);
    let upstream = AuthGitServer::start(up.root.path(), "tok").await;
    let envs = node_env(
        data.path(),
        database.as_ref().map(|d| d.url.as_str()),
        &[
            ("RULEYARD_NODE_NAME", "node-a"),
            ("RULEYARD_FETCH_TIMEOUT_SECONDS", "60"),
            ("RULEYARD_CONNECT_TIMEOUT_SECONDS", "60"),
        ],
    );
    let mut server = ServerProcess::start(envs.clone(), logs.path(), "first").await;
    let repo = create_repo(&server, &upstream.url("victim"), "victim").await;
    upstream
        .stall
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = start_run(&server).await;
    assert_eq!(status, 200, "{body}");
    let run = body["run_id"].as_i64().unwrap();
    wait_run_state(&server, run, |r| r["state"] == "running").await;
    server.kill();

    // The same node starts again: its run was cut short.
    let server = ServerProcess::start(envs, logs.path(), "second").await;
    let record = wait_run_state(&server, run, |r| r["state"] != "running").await;
    assert_eq!(record["state"], "interrupted", "{record}");
    assert!(record["ended_at"].is_string());
    assert_eq!(
        repository_rulesets(&server, repo).await,
        0,
        "nothing half-imported"
    );
    upstream
        .stall
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (status, body) = start_run(&server).await;
    assert_eq!(
        status, 200,
        "the lease of the dead run does not block: {body}"
    );
    let next = body["run_id"].as_i64().unwrap();
    let record = wait_run_state(&server, next, |r| r["state"] != "running").await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(repository_rulesets(&server, repo).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_database_share_one_job() {
    if postgres_url().is_none() {
        eprintln!("skipped: RULEYARD_TEST_POSTGRES_URL is not set");
        return;
    }
    let database = TestDatabase::create().await;
    let logs = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let up = Upstreams::new();
    up.repo("shared", "main", &[("shared.yar", RULE)]);
    let upstream = AuthGitServer::start(up.root.path(), "tok").await;
    let key = "Y2x1c3Rlci10ZXN0LWtleS0wMTIzNDU2Nzg5YWJjZGU=".to_owned();
    let common = |node: &'static str| {
        vec![
            ("RULEYARD_NODE_NAME", node),
            ("RULEYARD_SECRET_KEY", key.as_str()),
            ("RULEYARD_JOB_LEASE_SECONDS", "2"),
            ("RULEYARD_FETCH_TIMEOUT_SECONDS", "60"),
            ("RULEYARD_CONNECT_TIMEOUT_SECONDS", "60"),
        ]
    };
    let mut a = ServerProcess::start(
        node_env(data_a.path(), Some(&database.url), &common("node-a")),
        logs.path(),
        "a",
    )
    .await;
    let b = ServerProcess::start(
        node_env(data_b.path(), Some(&database.url), &common("node-b")),
        logs.path(),
        "b",
    )
    .await;
    let repo = create_repo(&a, &upstream.url("shared"), "shared").await;
    upstream
        .stall
        .store(true, std::sync::atomic::Ordering::Relaxed);

    // Both at once: exactly one 200.
    let (first, second) = tokio::join!(start_run(&a), start_run(&b));
    let statuses = [first.0, second.0];
    assert!(
        statuses.contains(&200) && statuses.contains(&409),
        "{statuses:?}"
    );
    let (winner, run) = if first.0 == 200 {
        (&a, &first.1)
    } else {
        (&b, &second.1)
    };
    let run = run["run_id"].as_i64().unwrap();
    let (_, again) = start_run(if first.0 == 200 { &b } else { &a }).await;
    assert_eq!(again["code"], "job_running");
    let record = wait_run_state(winner, run, |r| r["state"] == "running").await;

    // Kill the node that holds the lease; once it lapses, the other node runs the job and the
    // killed run shows `interrupted`.
    let survivor = if record["node"] == "node-a" {
        a.kill();
        &b
    } else {
        drop(b);
        &a
    };
    upstream
        .stall
        .store(false, std::sync::atomic::Ordering::Relaxed);
    // The next *scheduled* run happens on the survivor once the lease lapses.
    let (status, _) =
        json_status(survivor.request(Method::POST, "/api/yara/update/set-interval/1")).await;
    assert_eq!(status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let next = loop {
        let runs = survivor.get_json("/api/yara/update/runs/").await;
        let scheduled = runs["results"].as_array().unwrap().iter().find(|r| {
            r["trigger"] == "scheduled" && r["state"] == "succeeded" && r["node"] != record["node"]
        });
        if let Some(run) = scheduled {
            break run["id"].as_i64().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled run took over: {runs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    json_status(survivor.request(Method::POST, "/api/yara/update/set-interval/0")).await;
    let killed = wait_run_state(survivor, run, |r| r["state"] != "running").await;
    assert_eq!(killed["state"], "interrupted", "{killed}");
    let record = wait_run_state(survivor, next, |r| r["state"] != "running").await;
    assert_eq!(record["state"], "succeeded", "{record}");
    assert_eq!(repository_rulesets(survivor, repo).await, 1);
}
