//! BEHAVIOUR.md 6 and API.md 7: several nodes on one PostgreSQL database serve the same
//! generation within seconds of a publish; a node started later catches up by itself.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{TestDatabase, postgres_url};
use crate::process::{ServerProcess, node_env};

const KEY: &str = "Y2x1c3Rlci10ZXN0LWtleS0wMTIzNDU2Nzg5YWJjZGU=";

async fn start_node(
    database: &TestDatabase,
    data: &std::path::Path,
    logs: &std::path::Path,
    name: &'static str,
) -> ServerProcess {
    let envs = node_env(
        data,
        Some(&database.url),
        &[
            ("RULEYARD_NODE_NAME", name),
            ("RULEYARD_SECRET_KEY", KEY),
            ("RULEYARD_YARA_SYNC", "true"),
        ],
    );
    ServerProcess::start(envs, logs, name).await
}

async fn json(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn publish(node: &ServerProcess, name: &str, content: &str) {
    let (status, body) = json(
        node.request(Method::POST, "/api/yara/ruleset/")
            .form(&[("name", name), ("content", content)]),
    )
    .await;
    assert!(status == 200 || status == 201, "{body}");
    let (status, body) =
        json(node.request(Method::POST, &format!("/api/yara/publish/ruleset/{name}/"))).await;
    assert_eq!(status, 200, "{body}");
}

async fn scan_matches(node: &ServerProcess, data: &[u8]) -> Vec<String> {
    let (status, body) = json(
        node.request(Method::POST, "/api/yara/scan/")
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rule"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until every listed node is InSync on the newest generation and matches `rule`.
async fn converge(nodes: &[&ServerProcess], rule: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (_, sync) = json(nodes[0].request(Method::GET, "/api/yara/sync/")).await;
        let all_in_sync = sync["nodes"].as_array().is_some_and(|list| {
            list.len() >= nodes.len() && list.iter().all(|n| n["state"] == "InSync")
        });
        let mut all_match = all_in_sync;
        if all_in_sync {
            for node in nodes {
                all_match &= scan_matches(node, b"cluster-marker")
                    .await
                    .iter()
                    .any(|r| r == rule);
            }
        }
        if all_match {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not converged on {rule}: {sync}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_converge_on_a_publish_and_a_late_node_catches_up() {
    if postgres_url().is_none() {
        eprintln!("skipped: RULEYARD_TEST_POSTGRES_URL is not set");
        return;
    }
    let database = TestDatabase::create().await;
    let logs = tempfile::tempdir().unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let one = start_node(&database, dirs[0].path(), logs.path(), "node-1").await;
    let two = start_node(&database, dirs[1].path(), logs.path(), "node-2").await;
    let three = start_node(&database, dirs[2].path(), logs.path(), "node-3").await;

    let rule = |k: u32| {
        format!("rule cluster_v{k} {{ strings: $m = \"cluster-marker\" condition: $m }}\n")
    };
    publish(&one, "Cluster_Rules", &rule(1)).await;
    let took = converge(&[&one, &two, &three], "cluster_v1", Duration::from_secs(5)).await;
    eprintln!(
        "three nodes in sync {} ms after the publish",
        took.as_millis()
    );

    // More publishes, through other nodes; then a fourth node starts and serves the newest.
    publish(&two, "Cluster_Rules", &rule(2)).await;
    publish(&three, "Cluster_Rules", &rule(3)).await;
    converge(&[&one, &two, &three], "cluster_v3", Duration::from_secs(10)).await;
    let four = start_node(&database, dirs[3].path(), logs.path(), "node-4").await;
    converge(
        &[&one, &two, &three, &four],
        "cluster_v3",
        Duration::from_secs(10),
    )
    .await;
    let (_, sync) = json(four.request(Method::GET, "/api/yara/sync/")).await;
    assert_eq!(sync["enabled"], true);
    assert_eq!(sync["nodes"].as_array().unwrap().len(), 4);

    // `run` sent to three nodes at once: exactly one 200. A stalled upstream keeps it alive.
    let up = crate::upstream::Upstreams::new();
    up.repo(
        "slow",
        "main",
        &[("slow.yar", "rule slow_rule { condition: true }\n")],
    );
    let upstream = crate::upstream::AuthGitServer::start(up.root.path(), "tok").await;
    let (status, body) = json(one.request(Method::POST, "/api/yara/repositories/").json(
        &serde_json::json!({"url": upstream.url("slow"), "name": "slow", "api_token": "tok", "import_update_preferences": 1}),
    ))
    .await;
    assert_eq!(status, 201, "{body}");
    upstream
        .stall
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let run = |node: &ServerProcess| json(node.request(Method::POST, "/api/yara/update/run"));
    let (a, b, c) = tokio::join!(run(&one), run(&two), run(&three));
    let mut statuses = vec![a.0, b.0, c.0];
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 409, 409], "{a:?} {b:?} {c:?}");
    upstream
        .stall
        .store(false, std::sync::atomic::Ordering::Relaxed);

    // A node that stops heartbeating is Unavailable.
    drop(three);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, sync) = json(one.request(Method::GET, "/api/yara/sync/")).await;
        let state = sync["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "node-3")
            .map(|n| n["state"].clone());
        if state == Some(Value::from("Unavailable")) {
            break;
        }
        assert!(Instant::now() < deadline, "{sync}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
