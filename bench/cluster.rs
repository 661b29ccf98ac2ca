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
#[path = "support.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main]
async fn main() {
    let Some(dir) = support::corpora_or_skip() else {
        return;
    };
    let Ok(admin_url) = std::env::var("RULEYARD_BENCH_POSTGRES_URL") else {
        eprintln!(
            "skipped: set RULEYARD_BENCH_POSTGRES_URL (a PostgreSQL server to create a database on)"
        );
        return;
    };
    let binary = support::server_binary();
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
    let client = reqwest::Client::new();
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let name = format!("node-{i}");
        let env = [
            ("RULEYARD_DATABASE_URL", url.as_str()),
            ("RULEYARD_SECRET_KEY", key),
            ("RULEYARD_NODE_NAME", name.as_str()),
        ];
        nodes.push(support::Server::start(&binary, &env, client.clone()).await);
    }
    let mut count = 0;
    for (name, text) in support::corpus_rule_files(&dir) {
        nodes[0].save_ruleset(&name, &text).await;
        count += 1;
    }
    println!("{count} rulesets uploaded through node 1");
    let before = nodes[0].get_json("/api/yara/sync/").await["generation"].clone();
    let t = Instant::now();
    let report = nodes[0].post_json("/api/yara/publish/all").await;
    let mut first_node = None;
    let all = loop {
        let s = nodes[0].get_json("/api/yara/sync/").await;
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
            mib(support::memory_kib(node.pid()).0),
            mib(support::memory_kib(node.pid()).1)
        );
    }
    drop(nodes);
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}
