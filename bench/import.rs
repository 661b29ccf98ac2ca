//! Benchmarks of imports and update runs, against git and YARA-X doing the same work directly.
//!
//! cargo build --release --bin ruleyard --example bench_import
//! target/release/examples/bench_import [path/to/ruleyard]
//!
//! 1. Importing each corpus bundle from a local `git daemon`, against `git clone --bare` of the
//!    same repository plus compiling each of its rule files with YARA-X (goal: at most 1.5).
//! 2. An update run over 50 unchanged repositories, against 50 `git ls-remote` of the same
//!    repositories (goal: at most 2).

#[path = "corpus.rs"]
mod corpus;
#[path = "support.rs"]
mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "b")
        .env("GIT_AUTHOR_EMAIL", "b@b")
        .env("GIT_COMMITTER_NAME", "b")
        .env("GIT_COMMITTER_EMAIL", "b@b")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

fn compile_each(files: &[(String, String)]) {
    for (_, text) in files {
        let mut compiler = yara_x::Compiler::new();
        compiler.relaxed_re_syntax(true).enable_includes(false);
        for name in ["filename", "filepath", "extension", "filetype", "owner"] {
            compiler.define_global(name, "").unwrap();
        }
        let _ = compiler.add_source(text.as_str());
        let _ = compiler.build();
    }
}

/// Starts an update run and waits for its end; the run.
async fn run_and_wait(server: &support::Server) -> Value {
    let run = server.post_body("/api/yara/update/run", &json!({})).await;
    let id = run["run_id"].as_i64().unwrap();
    loop {
        let r = server
            .get_json(&format!("/api/yara/update/runs/{id}"))
            .await;
        if r["state"] != "running" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() {
    let Some(dir) = support::corpora_or_skip() else {
        return;
    };
    let binary = support::server_binary();
    let up = tempfile::tempdir().unwrap();
    for bundle in corpus::BUNDLES {
        git(
            up.path(),
            &[
                "-c",
                "init.defaultBranch=main",
                "clone",
                "-q",
                "--bare",
                dir.join(format!("{bundle}.bundle")).to_str().unwrap(),
                &format!("{bundle}.git"),
            ],
        );
    }
    let daemon_port = support::free_port();
    let _daemon = Kill(
        Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={daemon_port}"),
                &format!("--base-path={}", up.path().display()),
                up.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));

    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("ruleyard.toml");
    std::fs::write(
        &config,
        "rule_extensions = [\".yar\", \".yara\", \".rule\"]\nsystem_repositories = []\n",
    )
    .unwrap();
    let server = support::Server::start(
        &binary,
        &[
            ("RULEYARD_CONFIG", config.to_str().unwrap()),
            ("RULEYARD_UPDATE_INTERVAL_SECONDS", "0"),
        ],
        reqwest::Client::new(),
    )
    .await;

    println!(
        "## import of each corpus from git daemon, against git clone --bare + YARA-X per file"
    );
    let (mut total_ours, mut total_base) = (0.0, 0.0);
    for bundle in corpus::BUNDLES {
        let url = format!("git://127.0.0.1:{daemon_port}/{bundle}.git");
        let clone_dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        git(clone_dir.path(), &["clone", "-q", "--bare", &url, "x.git"]);
        let files = corpus::rule_files(&clone_dir.path().join("x.git"));
        compile_each(&files);
        let baseline = t.elapsed().as_secs_f64();
        let created = server
            .post_body(
                "/api/yara/repositories/",
                &json!({"url": url, "name": bundle}),
            )
            .await;
        let id = created["id"].as_i64().unwrap();
        let t = Instant::now();
        let outcome = server
            .post_body(&format!("/api/yara/repositories/{id}/import/"), &json!({}))
            .await;
        let ours = t.elapsed().as_secs_f64();
        total_ours += ours;
        total_base += baseline;
        println!(
            "{bundle:15} {:4} files, {:4} rulesets: ruleyard {ours:6.2} s, baseline {baseline:6.2} s, ratio {:.2}",
            files.len(),
            outcome["rulesets_created"],
            ours / baseline
        );
    }
    println!(
        "all five: ruleyard {total_ours:.2} s, baseline {total_base:.2} s, ratio {:.2} (goal <= 1.5)",
        total_ours / total_base
    );

    println!("## update run over 50 unchanged repositories, against 50 git ls-remote");
    let small = up.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    for i in 0..50 {
        let work = small.join(format!("w{i}"));
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(
            work.join("r.yar"),
            format!("rule r{i} {{ condition: true }}\n"),
        )
        .unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "r"]);
        git(
            &small,
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                &format!("s{i}.git"),
            ],
        );
        server.post_body("/api/yara/repositories/", &json!({"url": format!("git://127.0.0.1:{daemon_port}/small/s{i}.git"), "name": format!("small {i}"), "import_update_preferences": 1})).await;
    }
    let first = run_and_wait(&server).await;
    assert_eq!(first["state"], "succeeded", "{first}");
    let t = Instant::now();
    let second = run_and_wait(&server).await;
    let ours = t.elapsed().as_secs_f64();
    let unchanged = second["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["unchanged"] == true)
        .count();
    let t = Instant::now();
    for i in 0..50 {
        let ok = Command::new("git")
            .args([
                "ls-remote",
                &format!("git://127.0.0.1:{daemon_port}/small/s{i}.git"),
                "refs/heads/main",
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    let baseline = t.elapsed().as_secs_f64();
    println!(
        "run: {ours:.3} s ({unchanged} of 50 unchanged, plus the five corpora as manual), 50 x git ls-remote: {baseline:.3} s, ratio {:.2} (goal <= 2)",
        ours / baseline
    );
}
