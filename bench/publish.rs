//! Benchmark: publishing every ruleset made from the five corpora, against compiling the same
//! sources with YARA-X directly (one namespace each) in this process.
//!
//! cargo build --release --bin ruleyard --example bench_publish
//! target/release/examples/bench_publish [path/to/ruleyard]
//!
//! Prints the ratio (goal: at most 1.2) and the server's peak memory (VmHWM).

#[path = "corpus.rs"]
mod corpus;
#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

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
    let Some(dir) = support::corpora_or_skip() else {
        return;
    };
    let binary = support::server_binary();
    let files = support::corpus_rule_files(&dir);
    println!(
        "{} rule files from {} bundles",
        files.len(),
        corpus::BUNDLES.len()
    );

    let server = support::Server::start(&binary, &[], reqwest::Client::new()).await;
    let upload = Instant::now();
    let mut valid = Vec::new();
    for (name, text) in &files {
        if server.save_ruleset(name, text).await {
            valid.push((name.clone(), text.clone()));
        }
    }
    println!(
        "uploaded and validated {} files in {:.1} s ({} valid)",
        files.len(),
        upload.elapsed().as_secs_f64(),
        valid.len()
    );
    let before = server.serving_generation().await;

    let started = Instant::now();
    let report = server.post_json("/api/yara/publish/all").await;
    loop {
        let now = server.serving_generation().await;
        if now.is_some() && now != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publish = started.elapsed();
    let (_, peak) = support::memory_kib(server.pid());

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
