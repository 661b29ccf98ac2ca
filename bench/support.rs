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

/// Seconds of CPU that each thread of process `pid` has used, by thread name (`comm`).
pub fn thread_cpu(pid: u32) -> Vec<(String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| stat_cpu(&stat))
        .collect()
}

/// Seconds of CPU that process `pid` has used, its ended threads included.
pub fn process_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_cpu(&stat))
        .map_or(0.0, |(_, seconds)| seconds)
}

/// Seconds of CPU that this process has used.
pub fn own_cpu() -> f64 {
    process_cpu(std::process::id())
}

/// The name and the CPU seconds (user and system) of a `/proc/…/stat` line.
fn stat_cpu(stat: &str) -> Option<(String, f64)> {
    // `pid (comm) state ppid …`: the name may hold spaces and parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: the 12th and 13th after the name.
    let ticks = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((name, ticks / clock_tick()))
}

/// The machine's busy and idle CPU seconds so far, summed over its cores (`/proc/stat`).
pub fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    let busy = ticks.iter().take(8).sum::<f64>() - idle;
    (busy / clock_tick(), idle / clock_tick())
}

fn clock_tick() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tick > 0 { tick as f64 } else { 100.0 }
}
