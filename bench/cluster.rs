//! Benchmark: time from a publish to every node `InSync`, with the five corpora published, and
//! each node's memory.
//!
//! cargo build --release --bin ruleyard --example bench_cluster
//! RULEYARD_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   target/release/examples/bench_cluster [path/to/ruleyard]
//!
//! Three nodes share a fresh PostgreSQL database (created and dropped here). All corpus rule
//! files are uploaded through node 1 (not timed); `publish/all` through node 1 is timed until
//! every node reports the new generation `InSync`. Baseline: the same generation built by node 1
//! alone (the publish until node 1 serves it).

#[path = "corpus.rs"]
mod corpus;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Node {
    child: Child,
    base: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn memory_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::main]
async fn main() {
    let Some(dir) = corpus::corpora_dir() else {
        eprintln!("skipped: no corpora (set RULEYARD_CORPORA or provide ../shared/corpora)");
        return;
    };
    let Ok(admin_url) = std::env::var("RULEYARD_BENCH_POSTGRES_URL") else {
        eprintln!(
            "skipped: set RULEYARD_BENCH_POSTGRES_URL (a PostgreSQL server to create a database on)"
        );
        return;
    };
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/ruleyard").into());
    let db = format!("ruleyard_bench_{}", std::process::id());
    let psql = |sql: &str| {
        let ok = Command::new("psql")
            .arg(&admin_url)
            .args(["-q", "-c", sql])
            .status()
            .unwrap()
            .success();
        assert!(ok, "psql {sql}");
    };
    psql(&format!("CREATE DATABASE {db}"));
    let mut url = url::Url::parse(&admin_url).unwrap();
    url.set_path(&format!("/{db}"));
    let key = "YmVuY2gtY2x1c3Rlci1rZXktMDEyMzQ1Njc4OWFiY2Q=";
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, data) in dirs.iter().enumerate() {
        let port = free_port();
        let child = Command::new(&binary)
            .arg("serve")
            .env("RULEYARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("RULEYARD_DATA_DIR", data.path())
            .env("RULEYARD_DATABASE_URL", url.as_str())
            .env("RULEYARD_SECRET_KEY", key)
            .env("RULEYARD_NODE_NAME", format!("node-{}", i + 1))
            .env("RULEYARD_ADMIN_PASSWORD", "bench-password")
            .env("RULEYARD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start a node");
        nodes.push(Node {
            child,
            base: format!("http://127.0.0.1:{port}"),
        });
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    let token = loop {
        if let Ok(res) = client
            .post(format!("{}/api-token-auth/", nodes[0].base))
            .form(&[("username", "admin"), ("password", "bench-password")])
            .send()
            .await
            && res.status() == 200
        {
            break res.json::<Value>().await.unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nodes did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let auth = format!("Token {token}");
    for node in &nodes[1..] {
        while client
            .get(format!("{}/readyz", node.base))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut count = 0;
    for (b, bundle) in corpus::BUNDLES.iter().enumerate() {
        for (i, (_, text)) in corpus::rule_files(&dir.join(format!("{bundle}.bundle")))
            .into_iter()
            .enumerate()
        {
            if ruleyard::rules::contains_include(&text) {
                continue;
            }
            let name = format!("b{b}_{i}");
            client
                .post(format!("{}/api/yara/ruleset/", nodes[0].base))
                .header("Authorization", &auth)
                .form(&[("name", name.as_str()), ("content", text.as_str())])
                .send()
                .await
                .unwrap();
            count += 1;
        }
    }
    println!("{count} rulesets uploaded through node 1");
    let sync = |base: String| {
        let (client, auth) = (client.clone(), auth.clone());
        async move {
            client
                .get(format!("{base}/api/yara/sync/"))
                .header("Authorization", auth)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let before = sync(nodes[0].base.clone()).await["generation"].clone();
    let t = Instant::now();
    let report: Value = client
        .post(format!("{}/api/yara/publish/all", nodes[0].base))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut first_node = None;
    let all = loop {
        let s = sync(nodes[0].base.clone()).await;
        let list = s["nodes"].as_array().cloned().unwrap_or_default();
        if first_node.is_none()
            && s["generation"] != before
            && list
                .iter()
                .any(|n| n["name"] == "node-1" && n["state"] == "InSync")
        {
            first_node = Some(t.elapsed());
        }
        if s["generation"] != before
            && list.len() == 3
            && list.iter().all(|n| n["state"] == "InSync")
        {
            break t.elapsed();
        }
        assert!(t.elapsed() < Duration::from_secs(300), "never in sync: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = first_node.unwrap_or(all);
    println!(
        "publish/all: {} of {} published",
        report["successful_publish_count"], report["total_count"]
    );
    println!(
        "generation served by node 1 after {:.2} s; all three nodes InSync after {:.2} s; ratio all/first {:.2}",
        first.as_secs_f64(),
        all.as_secs_f64(),
        all.as_secs_f64() / first.as_secs_f64()
    );
    for (i, node) in nodes.iter().enumerate() {
        println!(
            "node-{}: VmRSS {:.0} MiB, VmHWM {:.0} MiB",
            i + 1,
            memory_mib(node.child.id(), "VmRSS:"),
            memory_mib(node.child.id(), "VmHWM:")
        );
    }
    drop(nodes);
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}
