//! What the benchmarks share: a server process on a free loopback port with its own data
//! directory, logged in as `admin`; the rule files of the corpora; a process's memory.
#![allow(dead_code)] // each benchmark uses a part

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::corpus;

const PASSWORD: &str = "bench-password";

/// The server binary: the first argument, else this repository's release build.
pub fn server_binary() -> String {
    std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/ruleyard").into())
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A `ruleyard serve` process, killed on drop.
pub struct Server {
    child: Child,
    pub base: String,
    /// `Token …` of `admin`.
    pub auth: String,
    pub client: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server (YARA Sync on, warnings only in its log) with `env` on top, waits until
    /// it is ready and logs in.
    pub async fn start(binary: &str, env: &[(&str, &str)], client: reqwest::Client) -> Server {
        let data = tempfile::tempdir().expect("a data directory");
        let port = free_port();
        let child = Command::new(binary)
            .arg("serve")
            .env("RULEYARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("RULEYARD_DATA_DIR", data.path())
            .env("RULEYARD_ADMIN_PASSWORD", PASSWORD)
            .env("RULEYARD_YARA_SYNC", "true")
            .env("RULEYARD_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the server");
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            auth: String::new(),
            client,
            _data: data,
        };
        let ready = Instant::now();
        loop {
            if let Ok(r) = server
                .client
                .get(format!("{}/readyz", server.base))
                .send()
                .await
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
        let token: Value = server
            .client
            .post(format!("{}/api-token-auth/", server.base))
            .form(&[("username", "admin"), ("password", PASSWORD)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        server.auth = format!("Token {}", token["token"].as_str().unwrap());
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET path` as admin, the answer's JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let request = self.client.get(format!("{}{path}", self.base));
        self.json(request).await
    }

    /// `POST path` (no body) as admin, the answer's JSON.
    pub async fn post_json(&self, path: &str) -> Value {
        let request = self.client.post(format!("{}{path}", self.base));
        self.json(request).await
    }

    /// `POST path` with a JSON body as admin; the answer must be a success.
    pub async fn post_body(&self, path: &str, body: &Value) -> Value {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let answer: Value = res.json().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Value {
        request
            .header("Authorization", &self.auth)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The generation this node serves, from `/api/yara/sync/`.
    pub async fn serving_generation(&self) -> Option<i64> {
        self.get_json("/api/yara/sync/").await["nodes"][0]["generation"].as_i64()
    }

    /// Saves a ruleset; whether its revision is valid.
    pub async fn save_ruleset(&self, name: &str, text: &str) -> bool {
        let request = self
            .client
            .post(format!("{}/api/yara/ruleset/", self.base))
            .form(&[("name", name), ("content", text)]);
        self.json(request).await["detail"]["valid"] == true
    }
}

/// The corpora folder, or `None` after saying why the benchmark is skipped.
pub fn corpora_or_skip() -> Option<std::path::PathBuf> {
    let dir = corpus::corpora_dir();
    if dir.is_none() {
        eprintln!("skipped: no corpora (set RULEYARD_CORPORA or provide ../shared/corpora)");
    }
    dir
}

/// (name, text) of every rule file of the corpora without includes, named `b<bundle>_<file>`.
pub fn corpus_rule_files(dir: &std::path::Path) -> Vec<(String, String)> {
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
    files
}

/// (VmRSS, VmHWM) of a process in KiB (0 when unknown).
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
