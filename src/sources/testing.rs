//! Test support for `sources`: real upstream repositories built with the git CLI in temporary
//! folders, a `git daemon` on a free loopback port, and mirrors fetched from them. Tests only.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::fetch::{FetchLimits, fetch_branch};
use super::git::RemoteAuth;

/// Runs git in `dir` with a fixed identity and date; panics with its stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@ruleyard.invalid")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@ruleyard.invalid")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("the git CLI runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// An upstream repository with a work tree, under `<root>/repo`.
pub struct Upstream {
    root: TempDir,
}

impl Upstream {
    pub fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("repo")).unwrap();
        let upstream = Upstream { root };
        git(
            &upstream.dir(),
            &["-c", "init.defaultBranch=main", "init", "-q"],
        );
        upstream
    }

    /// The folder `git daemon` serves (`--base-path`).
    pub fn base(&self) -> &Path {
        self.root.path()
    }

    pub fn dir(&self) -> PathBuf {
        self.root.path().join("repo")
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.dir().display())
    }

    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) -> &Self {
        let file = self.dir().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, content).unwrap();
        self
    }

    pub fn symlink(&self, path: &str, target: &str) -> &Self {
        std::os::unix::fs::symlink(target, self.dir().join(path)).unwrap();
        self
    }

    /// Commits everything and returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        git(&self.dir(), &["add", "-A"]);
        git(&self.dir(), &["commit", "-q", "-m", message]);
        git(&self.dir(), &["rev-parse", "HEAD"])
    }

    /// A commit of the given files; returns the mirror fetched from it over `file://` and the
    /// commit id.
    pub fn mirror_of(files: &[(&str, &[u8])]) -> (TempDir, String) {
        let upstream = Upstream::new();
        for (path, content) in files {
            upstream.write(path, content);
        }
        let commit = upstream.commit("files");
        let mirror = tempfile::tempdir().unwrap();
        let fetched = fetch_branch(
            mirror.path(),
            &upstream.file_url(),
            &no_auth(),
            "main",
            &limits(),
            &AtomicBool::new(false),
        )
        .expect("a file:// fetch works");
        assert_eq!(fetched.commit, commit);
        (mirror, commit)
    }
}

pub fn no_auth() -> RemoteAuth {
    RemoteAuth {
        username: "x-access-token",
        token: None,
    }
}

pub fn limits() -> FetchLimits {
    FetchLimits {
        timeout: Duration::from_secs(30),
        max_bytes: 512 << 20,
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `git daemon` serving every repository under a folder; killed on drop.
pub struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    pub fn serve(base: &Path) -> Self {
        let port = free_port();
        // `git daemon` runs `git-daemon` as a child that a kill of `git` would leave running:
        // start the daemon itself, so that drop ends it.
        let exec_path = git(base, &["--exec-path"]);
        let base = base.display().to_string();
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={base}"))
            .arg(&base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let daemon = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that accepts connections, reads the request and never answers.
pub fn silent_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            let _ = stream.read(&mut [0u8; 512]);
            held.push(stream);
        }
    });
    port
}

/// A loopback TCP proxy to `port` that sets `flag` once the server has sent more than
/// `threshold` bytes (before forwarding the bytes that crossed it). Returns the proxy's port.
pub fn proxy_setting_flag(port: u16, threshold: usize, flag: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                return;
            };
            let (mut to_server, mut from_client) =
                (server.try_clone().unwrap(), client.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut from_client, &mut to_server));
            let (mut from_server, mut to_client) = (server, client);
            let flag = flag.clone();
            std::thread::spawn(move || {
                let (mut seen, mut buf) = (0, [0u8; 4096]);
                while let Ok(n @ 1..) = from_server.read(&mut buf) {
                    seen += n;
                    if seen > threshold {
                        flag.store(true, Ordering::SeqCst);
                    }
                    if to_client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    proxy_port
}

/// `git http-backend` behind HTTP basic authentication (the password must be `token`), served
/// by axum on a thread of its own; stopped on drop.
pub struct HttpGit {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// How many requests came without the right credentials.
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Clone)]
struct Cgi {
    base: PathBuf,
    token: String,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpGit {
    pub fn serve(base: &Path, token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let cgi = Cgi {
            base: base.to_owned(),
            token: token.to_owned(),
            refused: Arc::default(),
        };
        let refused = cgi.refused.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().fallback(http_backend).with_state(cgi);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        HttpGit {
            port,
            stop: Some(stop),
            refused,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for HttpGit {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn http_backend(
    axum::extract::State(cgi): axum::extract::State<Cgi>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{StatusCode, header};
    use base64::Engine;
    let password = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok()?.strip_prefix("Basic ").map(str::to_owned))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|b| b.split_once(':').map(|(_, p)| p.to_owned()));
    if password.as_deref() != Some(cgi.token.as_str()) {
        cgi.refused.fetch_add(1, Ordering::SeqCst);
        return axum::response::Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")
            .body(axum::body::Body::empty())
            .unwrap();
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
    let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    let raw = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("git")
            .arg("http-backend")
            .env("GIT_PROJECT_ROOT", &cgi.base)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", parts.method.as_str())
            .env("PATH_INFO", parts.uri.path())
            .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
            .env(
                "CONTENT_TYPE",
                content_type
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
            )
            .env("CONTENT_LENGTH", body.len().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        child.wait_with_output().unwrap().stdout
    })
    .await
    .unwrap();
    // A CGI answer: headers (with `Status:`), a blank line, the body.
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let mut response = axum::response::Response::builder();
    for line in String::from_utf8_lossy(&raw[..end]).lines() {
        let (name, value) = line.split_once(':').unwrap();
        match name {
            "Status" => response = response.status(value.trim()[..3].parse::<u16>().unwrap()),
            name => response = response.header(name, value.trim()),
        }
    }
    response
        .body(axum::body::Body::from(raw[end + 4..].to_vec()))
        .unwrap()
}

/// Deterministic, poorly compressible text of about `len` bytes.
pub fn noise(seed: u64, len: usize) -> String {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = String::with_capacity(len + 64);
    while out.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(&format!("{:016x}", state ^ (state >> 29)));
        if out.len() % 80 < 16 {
            out.push('\n');
        }
    }
    out
}
