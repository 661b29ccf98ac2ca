//! The connection test: the remote's reference advertisement through libgit2 (`git2`), no
//! `git` process. It resolves the branch to use and classifies every failure. Also the pieces
//! every transfer shares: socket timeouts, credentials answered once, redaction, classification.

use std::cell::Cell;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use git2::{Cred, CredentialType, Direction, ErrorClass, ErrorCode, Remote, RemoteCallbacks};
use secrecy::{ExposeSecret, SecretString};

/// Credentials for one remote: HTTP basic authentication built in memory.
pub struct RemoteAuth {
    pub username: &'static str,
    pub token: Option<SecretString>,
}

/// A successful connection test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionTest {
    /// The branch to use: the one asked for, else the remote's HEAD, else `main`, else `master`.
    pub branch: String,
    /// The commit that branch points at.
    pub commit: String,
}

/// Why a connection test failed; each maps to one clear message (never with the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionFailure {
    #[error("the repository was not found at that URL")]
    NotFound,
    #[error("authentication was refused: the access token is missing, wrong or lacks access")]
    AuthRefused,
    #[error("the branch `{0}` does not exist in the repository")]
    BranchMissing(String),
    #[error("the repository has no branch to use (no default branch, no `main`, no `master`)")]
    NoBranch,
    #[error("the host could not be reached: {0}")]
    Unreachable(String),
    #[error("the remote did not answer within {0} seconds")]
    Timeout(u64),
    #[error("the remote answered with an error: {0}")]
    Other(String),
    #[error("the transfer was stopped after more than {0} bytes (the size limit)")]
    TooLarge(u64),
    #[error("the transfer was cancelled")]
    Cancelled,
}

/// The socket timeout libgit2 currently uses, in milliseconds (0: never set).
static SOCKET_TIMEOUT_MS: Mutex<i32> = Mutex::new(0);

/// Sets libgit2's socket timeouts (connect and per-read), which bound every blocking network
/// call, so a stalled server cannot hold a thread forever. They are process-wide: the smallest
/// timeout asked for wins, so no caller waits longer on a silent socket than it asked for.
pub fn init_timeouts(timeout: Duration) {
    let ms = i32::try_from(timeout.as_millis())
        .unwrap_or(i32::MAX)
        .max(1);
    let mut current = SOCKET_TIMEOUT_MS
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if *current == 0 || ms < *current {
        *current = ms;
        // SAFETY: writes are serialised by the mutex; libgit2 copies these plain integers
        // when it opens a socket, and they only ever decrease.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms);
            let _ = git2::opts::set_server_timeout_in_milliseconds(ms);
        }
    }
}

/// Replaces the token, if any, by `********` in a message from libgit2 or the server.
pub(crate) fn redactor(auth: &RemoteAuth) -> impl Fn(&str) -> String + '_ {
    move |message: &str| match &auth.token {
        Some(t) if !t.expose_secret().is_empty() => message.replace(t.expose_secret(), "********"),
        _ => message.to_owned(),
    }
}

/// The credentials callback: HTTP basic authentication built in memory, answered once. libgit2
/// calls it again after every refusal, so later calls give up instead of looping; `asked` counts
/// the calls (a failure after one means the credentials were refused).
pub(crate) fn answer_once<'a>(
    auth: &'a RemoteAuth,
    asked: &'a Cell<u32>,
) -> impl FnMut(&str, Option<&str>, CredentialType) -> Result<Cred, git2::Error> + 'a {
    move |_url, _user_from_url, allowed| {
        asked.set(asked.get() + 1);
        if asked.get() > 1 {
            return Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                "authentication refused",
            ));
        }
        match &auth.token {
            Some(token) if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                Cred::userpass_plaintext(auth.username, token.expose_secret())
            }
            _ => Err(git2::Error::new(
                ErrorCode::Auth,
                ErrorClass::Http,
                "authentication required",
            )),
        }
    }
}

/// Lists the remote's references and resolves the branch. Blocking.
pub fn probe_remote(
    url: &str,
    auth: &RemoteAuth,
    wanted_branch: Option<&str>,
    timeout: Duration,
) -> Result<ConnectionTest, ConnectionFailure> {
    init_timeouts(timeout);
    let redact = redactor(auth);
    let mut remote =
        Remote::create_detached(url).map_err(|e| ConnectionFailure::Other(redact(e.message())))?;
    let asked = Cell::new(0u32);
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(answer_once(auth, &asked));

    let connection = remote
        .connect_auth(Direction::Fetch, Some(callbacks), None)
        .map_err(|e| classify(&e, asked.get() > 0, timeout, &redact))?;
    let heads = connection
        .list()
        .map_err(|e| classify(&e, asked.get() > 0, timeout, &redact))?;
    let commit_of = |branch: &str| {
        let full = format!("refs/heads/{branch}");
        heads
            .iter()
            .find(|h| h.name() == full)
            .map(|h| h.oid().to_string())
    };
    let resolved = match wanted_branch {
        Some(branch) => {
            let commit =
                commit_of(branch).ok_or_else(|| ConnectionFailure::BranchMissing(branch.into()))?;
            return Ok(ConnectionTest {
                branch: branch.to_owned(),
                commit,
            });
        }
        None => {
            let head_target = connection
                .default_branch()
                .ok()
                .and_then(|buf| buf.as_str().map(str::to_owned))
                .and_then(|name| name.strip_prefix("refs/heads/").map(str::to_owned));
            head_target
                .into_iter()
                .chain(["main".to_owned(), "master".to_owned()])
                .find_map(|b| commit_of(&b).map(|c| (b, c)))
        }
    };
    match resolved {
        Some((branch, commit)) => Ok(ConnectionTest { branch, commit }),
        None => Err(ConnectionFailure::NoBranch),
    }
}

/// Maps a libgit2 error to the failure shown to users, with the token redacted.
pub(crate) fn classify(
    e: &git2::Error,
    credentials_asked: bool,
    timeout: Duration,
    redact: &dyn Fn(&str) -> String,
) -> ConnectionFailure {
    let message = e.message().to_ascii_lowercase();
    if e.code() == ErrorCode::Auth
        || message.contains("status code: 401")
        || message.contains("status code: 403")
        || (credentials_asked && message.contains("authentication"))
    {
        return ConnectionFailure::AuthRefused;
    }
    if message.contains("timed out") || message.contains("timeout") {
        return ConnectionFailure::Timeout(timeout.as_secs());
    }
    if message.contains("status code: 404")
        || message.contains("could not find repository")
        || message.contains("failed to resolve path")
        || message.contains("not a git repository")
        || message.contains("repository not exported")
        || message.contains("not found")
        || message.contains("does not exist")
        || e.code() == ErrorCode::NotFound
    {
        return ConnectionFailure::NotFound;
    }
    if message.contains("failed to connect")
        || message.contains("connection refused")
        || message.contains("failed to resolve")
        || message.contains("no route to host")
        || message.contains("network is unreachable")
        || e.class() == ErrorClass::Net && message.contains("connect")
    {
        return ConnectionFailure::Unreachable(redact(e.message()));
    }
    // git daemon closes the connection without a word for a path it does not serve.
    if message.contains("early eof") || message.contains("unexpected eof") {
        return ConnectionFailure::NotFound;
    }
    ConnectionFailure::Other(redact(e.message()))
}
