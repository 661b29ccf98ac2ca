//! Real upstream git servers on loopback: `git daemon` (git://), `git http-backend` behind a
//! small HTTP server that demands basic authentication, a server that accepts and never
//! answers, and a port where nothing listens. The git CLI only builds the test repositories.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.org")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.org")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A folder of bare repositories to serve.
pub struct Upstreams {
    pub root: tempfile::TempDir,
}

impl Upstreams {
    pub fn new() -> Self {
        Upstreams {
            root: tempfile::tempdir().expect("temporary folder"),
        }
    }

    /// A bare repository `<name>.git` whose HEAD is `branch`, with one commit of `files`.
    pub fn repo(&self, name: &str, branch: &str, files: &[(&str, &str)]) -> PathBuf {
        let work = self.root.path().join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", branch]);
        for (path, content) in files {
            let file = work.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "initial rules"]);
        let bare = self.root.path().join(format!("{name}.git"));
        git(
            self.root.path(),
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                bare.to_str().unwrap(),
            ],
        );
        bare
    }

    /// A bare clone of a corpus bundle, served as `<name>.git`.
    pub fn clone_bundle(&self, name: &str, bundle: &Path) -> PathBuf {
        let bare = self.root.path().join(format!("{name}.git"));
        git(
            self.root.path(),
            &[
                "-c",
                "init.defaultBranch=main",
                "clone",
                "-q",
                "--bare",
                bundle.to_str().unwrap(),
                bare.to_str().unwrap(),
            ],
        );
        bare
    }

    /// Runs git in a bare repository and returns its standard output.
    pub fn git_in(&self, name: &str, args: &[&str]) -> String {
        let dir = self.root.path().join(format!("{name}.git"));
        let out = Command::new("git")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Adds a commit to `<name>.git`'s branch that writes (or, with `None`, removes) files.
    pub fn commit(&self, name: &str, branch: &str, changes: &[(&str, Option<&str>)]) {
        let work = self.root.path().join(format!("{name}-edit"));
        let _ = std::fs::remove_dir_all(&work);
        let bare = self.root.path().join(format!("{name}.git"));
        git(
            self.root.path(),
            &[
                "clone",
                "-q",
                "-b",
                branch,
                bare.to_str().unwrap(),
                work.to_str().unwrap(),
            ],
        );
        for (path, content) in changes {
            let file = work.join(path);
            match content {
                Some(text) => {
                    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                    std::fs::write(file, text).unwrap();
                }
                None => std::fs::remove_file(file).unwrap(),
            }
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "change rules"]);
        git(&work, &["push", "-q", "origin", branch]);
    }

    pub fn file_url(&self, name: &str) -> String {
        format!(
            "file://{}",
            self.root.path().join(format!("{name}.git")).display()
        )
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port}");
}

/// `git daemon` serving every repository below a folder.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> Self {
        let port = free_port();
        // `git daemon` forks `git-daemon`: run that directly so killing it ends the server.
        let exec_path = String::from_utf8(
            Command::new("git")
                .arg("--exec-path")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let child = Command::new(PathBuf::from(exec_path.trim()).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                base.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        wait_for_port(port);
        GitDaemon { child, port }
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `git http-backend` behind HTTP basic authentication: the password must equal `token`.
pub struct AuthGitServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// Every `Authorization` header the server saw, to check what clients sent.
    pub seen_auth: Arc<Mutex<Vec<String>>>,
    /// While set, every request is accepted and never answered.
    pub stall: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone)]
struct CgiState {
    root: PathBuf,
    token: String,
    seen_auth: Arc<Mutex<Vec<String>>>,
    stall: Arc<std::sync::atomic::AtomicBool>,
}

impl AuthGitServer {
    pub async fn start(root: &Path, token: &str) -> Self {
        let state = CgiState {
            root: root.to_owned(),
            token: token.to_owned(),
            seen_auth: Arc::default(),
            stall: Arc::default(),
        };
        let seen_auth = state.seen_auth.clone();
        let stall = state.stall.clone();
        let app = axum::Router::new().fallback(serve_cgi).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        AuthGitServer {
            addr,
            shutdown: Some(tx),
            seen_auth,
            stall,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.addr)
    }
}

impl Drop for AuthGitServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn unauthorized() -> Response {
    Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")
        .body(Body::from("authentication required"))
        .unwrap()
}

fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, p)| p.to_owned())
}

async fn serve_cgi(State(state): State<CgiState>, req: Request) -> Response {
    if state.stall.load(std::sync::atomic::Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    if let Some(h) = req.headers().get(header::AUTHORIZATION) {
        state
            .seen_auth
            .lock()
            .unwrap()
            .push(h.to_str().unwrap_or_default().to_owned());
    }
    if basic_password(req.headers()).as_deref() != Some(state.token.as_str()) {
        return unauthorized();
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap();
    let exec_path = String::from_utf8(
        Command::new("git")
            .arg("--exec-path")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let backend = PathBuf::from(exec_path.trim()).join("git-http-backend");
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(backend)
            .env_clear()
            .env("GIT_PROJECT_ROOT", &state.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REMOTE_USER", "tester")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", parts.uri.path())
            .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
            .env("CONTENT_TYPE", content_type)
            .env("CONTENT_LENGTH", body.len().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git http-backend");
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    cgi_response(&output.stdout)
}

fn cgi_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Body::empty())
            .unwrap();
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut builder = Response::builder().status(StatusCode::OK);
    for line in head.lines() {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("status") {
                let code: u16 = value
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(500);
                builder = builder.status(code);
            } else if let Ok(v) = HeaderValue::from_str(value) {
                builder = builder.header(name.trim(), v);
            }
        }
    }
    builder.body(Body::from(raw[end + sep..].to_vec())).unwrap()
}

/// Accepts connections and never answers, until dropped.
pub struct StallServer {
    pub port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl StallServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((socket, _)) => held.push(socket),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        StallServer { port, stop }
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A loopback port where nothing listens.
pub fn closed_port() -> u16 {
    free_port()
}
