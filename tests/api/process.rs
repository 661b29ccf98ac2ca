//! The real `ruleyard` binary as a process: for tests that capture its whole output, kill it, or
//! run several nodes on one database.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::ADMIN_PASSWORD;

/// `ruleyard` with exactly these environment variables (and PATH).
pub fn ruleyard(envs: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ruleyard"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The environment of one node: its own port, the given data directory and database.
pub fn node_env(
    data_dir: &Path,
    database_url: Option<&str>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut envs = vec![
        ("RULEYARD_LISTEN", format!("127.0.0.1:{}", free_port())),
        ("RULEYARD_DATA_DIR", data_dir.display().to_string()),
        ("RULEYARD_ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
        ("RULEYARD_ALLOW_LOCAL_SOURCES", "true".to_owned()),
        ("RULEYARD_YARA_SYNC", "false".to_owned()),
    ];
    if let Some(url) = database_url {
        envs.push(("RULEYARD_DATABASE_URL", url.to_owned()));
    }
    for (key, value) in extra {
        envs.retain(|(k, _)| k != key);
        envs.push((key, (*value).to_owned()));
    }
    envs
}

/// A running `ruleyard serve`, killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub base: String,
    pub token: String,
}

impl ServerProcess {
    /// Starts the server with `envs`, its output going to `logs/<name>.out|.err`, and logs in.
    pub async fn start(envs: Vec<(&'static str, String)>, logs: &Path, name: &str) -> Self {
        let listen = envs
            .iter()
            .find(|(k, _)| *k == "RULEYARD_LISTEN")
            .map(|(_, v)| v.clone())
            .expect("RULEYARD_LISTEN");
        let log = |ext: &str| -> PathBuf { logs.join(format!("{name}.{ext}")) };
        let child = ruleyard(&envs)
            .arg("serve")
            .stdout(std::fs::File::create(log("out")).unwrap())
            .stderr(std::fs::File::create(log("err")).unwrap())
            .spawn()
            .expect("start ruleyard serve");
        let mut server = ServerProcess {
            child,
            base: format!("http://{listen}"),
            token: String::new(),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(res) = client.get(format!("{}/healthz", server.base)).send().await
                && res.status() == 200
            {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "the server exited: {status}: {}",
                    std::fs::read_to_string(log("err")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let res = client
            .post(format!("{}/api-token-auth/", server.base))
            .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        server.token = res.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        server
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("Token {}", self.token))
    }

    /// `GET path` as the admin, its JSON body.
    pub async fn get_json(&self, path: &str) -> Value {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `/api/yara/update/runs/{id}` until `accept` holds for it (up to 60 s).
pub async fn wait_run_state(
    server: &ServerProcess,
    id: i64,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = server
            .get_json(&format!("/api/yara/update/runs/{id}"))
            .await;
        if accept(&run) {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id}: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
