//! `TestApp`: the real server on port 0 with a fresh data directory and database (SQLite, or a
//! fresh PostgreSQL database when `RULEYARD_TEST_POSTGRES_URL` is set), and a client.

use std::path::{Path, PathBuf};

use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::Executor;

use ruleyard::config::{Overrides, Settings};

pub const ADMIN_PASSWORD: &str = "admin-test-password";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates one test per backend from `async fn name(backend: Backend)`; the PostgreSQL one
/// says so and returns when `RULEYARD_TEST_POSTGRES_URL` is not set.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::helpers::postgres_url().is_none() {
                        eprintln!("skipped: RULEYARD_TEST_POSTGRES_URL is not set");
                        return;
                    }
                    super::$name($crate::helpers::Backend::Postgres).await
                }
            )*
        }
    };
}

pub fn postgres_url() -> Option<String> {
    std::env::var("RULEYARD_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A fresh PostgreSQL database, dropped when this value is dropped.
pub struct TestDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let admin_url = postgres_url().expect("RULEYARD_TEST_POSTGRES_URL");
        let name = format!("ruleyard_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("connect to the test PostgreSQL server");
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create a test database");
        let mut url = url::Url::parse(&admin_url).expect("a valid PostgreSQL URL");
        url.set_path(&format!("/{name}"));
        TestDatabase {
            url: url.to_string(),
            name,
            admin_url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// The settings a test server starts with.
pub struct TestConfig {
    pub backend: Backend,
    pub allow_local_sources: bool,
    pub connect_timeout_seconds: u64,
    pub max_body_bytes: Option<u64>,
    /// System repositories for the configuration file (None: the default one).
    pub system_repositories: Option<Vec<ruleyard::config::SystemRepository>>,
    pub yara_sync: bool,
    pub max_ruleset_bytes: Option<u64>,
    pub fetch_timeout_seconds: u64,
    pub update_interval_seconds: u64,
    pub rule_extensions: Option<Vec<String>>,
    pub max_scan_bytes: Option<u64>,
    pub scan_timeout_seconds: Option<u64>,
    pub match_cap: Option<u64>,
}

impl TestConfig {
    pub fn new(backend: Backend) -> Self {
        TestConfig {
            backend,
            allow_local_sources: true,
            connect_timeout_seconds: 3,
            max_body_bytes: None,
            system_repositories: None,
            yara_sync: false,
            max_ruleset_bytes: None,
            fetch_timeout_seconds: 60,
            update_interval_seconds: 3600,
            rule_extensions: None,
            max_scan_bytes: None,
            scan_timeout_seconds: None,
            match_cap: None,
        }
    }
}

pub struct TestApp {
    pub address: String,
    /// Kept alive for the server's lifetime.
    _data_dir: tempfile::TempDir,
    pub client: reqwest::Client,
    pub admin_token: String,
    /// Dropped (with its database) after the server.
    _database: Option<TestDatabase>,
    pub state: ruleyard::app::AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(TestConfig::new(backend)).await
    }

    pub async fn spawn_with(config: TestConfig) -> TestApp {
        let data_dir = tempfile::tempdir().expect("temporary data directory");
        let database = match config.backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(TestDatabase::create().await),
        };
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(data_dir.path().to_owned()),
            database_url: database.as_ref().map(|d| d.url.clone()),
            admin_password: Some(ADMIN_PASSWORD.into()),
            allow_local_sources: Some(config.allow_local_sources),
            connect_timeout_seconds: Some(config.connect_timeout_seconds),
            max_body_bytes: config.max_body_bytes,
            yara_sync: Some(config.yara_sync),
            fetch_timeout_seconds: Some(config.fetch_timeout_seconds),
            update_interval_seconds: Some(config.update_interval_seconds),
            max_scan_bytes: config.max_scan_bytes,
            scan_timeout_seconds: config.scan_timeout_seconds,
            match_cap: config.match_cap,
            ..Default::default()
        };
        #[derive(serde::Serialize)]
        struct File<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            max_ruleset_bytes: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            rule_extensions: Option<&'a [String]>,
            #[serde(skip_serializing_if = "Option::is_none")]
            system_repositories: Option<&'a [ruleyard::config::SystemRepository]>,
        }
        let config_file = data_dir.path().join("ruleyard.toml");
        let text = toml::to_string(&File {
            max_ruleset_bytes: config.max_ruleset_bytes,
            rule_extensions: config.rule_extensions.as_deref(),
            system_repositories: config.system_repositories.as_deref(),
        })
        .unwrap();
        std::fs::write(&config_file, text).unwrap();
        let settings = Settings::load(Some(&config_file), &overrides).expect("test settings");
        let app = ruleyard::app::build(settings).await.expect("server starts");
        let address = format!("http://{}", app.local_addr());
        let state = app.state.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut app = TestApp {
            address,
            _data_dir: data_dir,
            client,
            admin_token: String::new(),
            _database: database,
            state,
            shutdown: Some(tx),
        };
        app.admin_token = app.login("admin", ADMIN_PASSWORD).await;
        app
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// `POST /api-token-auth/`, returning the token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let res = self
            .client
            .post(self.url("/api-token-auth/"))
            .form(&[("username", username), ("password", password)])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "login of {username}");
        let body: Value = res.json().await.unwrap();
        body["token"].as_str().expect("a token").to_owned()
    }

    /// Creates a user through the store (as `ruleyard user create` does) and logs it in.
    pub async fn user(&self, name: &str, superuser: bool) -> String {
        let password = format!("{name}-password");
        let hash = ruleyard::auth::hash_password(&password);
        self.state
            .store
            .create_user(
                &ruleyard::domain::Username::parse(name).unwrap(),
                &hash,
                superuser,
            )
            .await
            .expect("create user");
        self.login(name, &password).await
    }

    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header("Authorization", format!("Token {token}"))
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, token).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::POST, path, token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put_json(&self, path: &str, token: &str, body: &Value) -> Response {
        self.request(Method::PUT, path, token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.request(Method::DELETE, path, token)
            .send()
            .await
            .unwrap()
    }

    /// Creates a repository and returns its id, asserting 201.
    pub async fn create_repository(&self, token: &str, body: Value) -> i64 {
        let res = self
            .post_json("/api/yara/repositories/", token, &body)
            .await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "create repository: {body}");
        assert_eq!(body["message"], "Repository created.");
        body["id"].as_i64().expect("an id")
    }

    /// `POST /api/yara/ruleset/` as the SDK sends it (a form with `analysis=cloud`).
    pub async fn save_ruleset(&self, token: &str, name: &str, content: &str) -> Response {
        self.request(Method::POST, "/api/yara/ruleset/", token)
            .form(&[("analysis", "cloud"), ("name", name), ("content", content)])
            .send()
            .await
            .unwrap()
    }

    /// `GET /api/yara/ruleset/{name}/` as the admin.
    pub async fn ruleset(&self, name: &str) -> Value {
        let res = self
            .get(&format!("/api/yara/ruleset/{name}/"), &self.admin_token)
            .await;
        assert_eq!(res.status(), 200, "ruleset {name}");
        res.json().await.unwrap()
    }

    /// Waits (up to 20 s) until the ruleset shows `status`, and returns its detail.
    pub async fn wait_status(&self, name: &str, status: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let item = self.ruleset(name).await;
            if item["status"] == status {
                return item;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} never became {status}: {item}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Marks every stored generation as built by an engine that is not this one.
    pub async fn tamper_engine_version(&self) {
        let url = match &self._database {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", self.state.settings.sqlite_path().display()),
        };
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        conn.execute("UPDATE generations SET engine_version = 'yara-x 0.0.1'")
            .await
            .unwrap();
    }

    /// `POST /api/yara/update/run` as the admin; returns the run id.
    pub async fn start_run(&self) -> i64 {
        let res = self
            .request(Method::POST, "/api/yara/update/run/", &self.admin_token)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["message"], "Job running!");
        body["run_id"].as_i64().unwrap()
    }

    /// Waits (up to 120 s) for a run to end; returns its record.
    pub async fn wait_run(&self, id: i64) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let res = self
                .get(&format!("/api/yara/update/runs/{id}/"), &self.admin_token)
                .await;
            assert_eq!(res.status(), 200);
            let run: Value = res.json().await.unwrap();
            if run["state"] != "running" {
                return run;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "run {id} never ended: {run}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Every ruleset (v2 list, type all), by name.
    pub async fn rulesets(&self) -> std::collections::BTreeMap<String, Value> {
        let res = self
            .get("/api/yara/v2/rulesets/?type=all", &self.admin_token)
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap().to_owned(), r.clone()))
            .collect()
    }

    /// A repository's whole file index.
    pub async fn files(&self, id: i64) -> Vec<Value> {
        let res = self
            .get(
                &format!("/api/yara/repositories/{id}/files/?page_size=1000"),
                &self.admin_token,
            )
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["results"].as_array().unwrap().clone()
    }

    /// The names of the rules in the generation this node serves.
    pub fn active_rules(&self) -> Vec<String> {
        let generation = self
            .state
            .rulesets
            .current_generation()
            .expect("a generation is loaded");
        let mut names: Vec<String> = generation
            .rules
            .iter()
            .map(|r| format!("{}:{}", r.namespace(), r.identifier()))
            .collect();
        names.sort();
        names
    }

    pub async fn repository(&self, id: i64) -> Value {
        let res = self
            .get(&format!("/api/yara/repositories/{id}/"), &self.admin_token)
            .await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// Every repository of the list (page size 1000), as the admin sees it.
    pub async fn all_repositories(&self) -> Vec<Value> {
        let res = self
            .get("/api/yara/repositories/?page_size=1000", &self.admin_token)
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["results"].as_array().unwrap().clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts the status and the error shape of API.md 1.5, returning the body.
pub async fn expect_error(res: Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(json!(null));
    assert_eq!(got, status, "unexpected status, body: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without message: {body}"
    );
    assert!(
        body["code"].as_str().is_some(),
        "error without code: {body}"
    );
    body
}

/// Recursively collects the bytes of every file below `dir`.
pub fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
