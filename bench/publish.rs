//! Benchmark: publishing every ruleset made from the five corpora, against compiling the same
//! sources with YARA-X directly (one namespace each) in this process.
//!
//! cargo build --release --bin ruleyard --example bench_publish
//! target/release/examples/bench_publish [path/to/ruleyard]
//!
//! Prints the ratio (goal: at most 1.2) and the server's peak memory (VmHWM).

#[path = "corpus.rs"]
mod corpus;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}

fn direct_compile(sources: &[(String, String)]) -> (Duration, usize) {
    let started = Instant::now();
    let mut compiler = yara_x::Compiler::new();
    compiler.relaxed_re_syntax(true).enable_includes(false);
    for name in ["filename", "filepath", "extension", "filetype", "owner"] {
        compiler.define_global(name, "").unwrap();
    }
    for (name, text) in sources {
        compiler.new_namespace(name);
        compiler.add_source(text.as_str()).expect("valid sources");
    }
    let rules = compiler.build();
    let bytes = rules.serialize().expect("serialize");
    let count = rules.iter().count();
    drop(bytes);
    (started.elapsed(), count)
}

#[tokio::main]
async fn main() {
    let Some(dir) = corpus::corpora_dir() else {
        eprintln!("skipped: no corpora (set RULEYARD_CORPORA or provide ../shared/corpora)");
        return;
    };
    let binary = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/ruleyard").into());
    let mut files = Vec::new();
    for (b, bundle) in corpus::BUNDLES.iter().enumerate() {
        for (i, (_, text)) in corpus::rule_files(&dir.join(format!("{bundle}.bundle")))
            .into_iter()
            .enumerate()
        {
            if !ruleyard::rules::contains_include(&text) {
                files.push((format!("b{b}_{i}"), text));
            }
        }
    }
    println!(
        "{} rule files from {} bundles",
        files.len(),
        corpus::BUNDLES.len()
    );

    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(&binary)
            .arg("serve")
            .env("RULEYARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("RULEYARD_DATA_DIR", data.path())
            .env("RULEYARD_ADMIN_PASSWORD", "bench-password")
            .env("RULEYARD_YARA_SYNC", "true")
            .env("RULEYARD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start the server"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token: Value = client
        .post(format!("{base}/api-token-auth/"))
        .form(&[("username", "admin"), ("password", "bench-password")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = format!("Token {}", token["token"].as_str().unwrap());

    let upload = Instant::now();
    let mut valid = Vec::new();
    for (name, text) in &files {
        let body: Value = client
            .post(format!("{base}/api/yara/ruleset/"))
            .header("Authorization", &auth)
            .form(&[("name", name.as_str()), ("content", text.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["detail"]["valid"] == true {
            valid.push((name.clone(), text.clone()));
        }
    }
    println!(
        "uploaded and validated {} files in {:.1} s ({} valid)",
        files.len(),
        upload.elapsed().as_secs_f64(),
        valid.len()
    );
    let sync = |client: reqwest::Client, base: String, auth: String| async move {
        let v: Value = client
            .get(format!("{base}/api/yara/sync/"))
            .header("Authorization", auth)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["nodes"][0]["generation"].as_i64()
    };
    let before = sync(client.clone(), base.clone(), auth.clone()).await;

    let started = Instant::now();
    let report: Value = client
        .post(format!("{base}/api/yara/publish/all"))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    loop {
        let now = sync(client.clone(), base.clone(), auth.clone()).await;
        if now.is_some() && now != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish = started.elapsed();
    let peak = peak_rss_kib(server.0.id()).unwrap_or(0);

    let (direct, rules) = direct_compile(&valid);
    println!(
        "publish/all: {} published of {}; generation active after {:.2} s",
        report["successful_publish_count"],
        report["total_count"],
        publish.as_secs_f64()
    );
    println!(
        "direct YARA-X compile + serialize of the same {} sources ({rules} rules): {:.2} s",
        valid.len(),
        direct.as_secs_f64()
    );
    println!(
        "ratio publish/direct: {:.2} (goal <= 1.2); server peak memory (VmHWM): {:.0} MiB",
        publish.as_secs_f64() / direct.as_secs_f64(),
        peak as f64 / 1024.0
    );
}
