//! Fetching one branch of a remote into a bare mirror that is kept between runs, through libgit2
//! (`git2`): no tags, only new objects on later fetches, a hard time limit, a size limit and a
//! cancel flag that really stop the transfer. Blocking: callers use `spawn_blocking`.
//!
//! Owns the mirror's `refs/heads/*`; must not import `http` or `store`.

use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, FetchOptions, Oid, Reference, RemoteCallbacks, RemoteRedirect, Repository,
};

use super::git::{ConnectionFailure, RemoteAuth, answer_once, classify, init_timeouts, redactor};

/// Bounds of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Wall-clock limit from the start of the fetch; also libgit2's per-socket-read timeout.
    pub timeout: Duration,
    /// The transfer stops once more than this many bytes were received.
    pub max_bytes: u64,
}

/// A successful fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The commit the branch points at (now `refs/heads/<branch>` in the mirror).
    pub commit: String,
    /// Bytes received by this fetch (0 when the mirror already had every object).
    pub received_bytes: u64,
}

/// Fetches `branch` of `url` into the bare mirror at `mirror` (created when absent), without
/// tags, incrementally (only new objects are transferred on later calls). Returns the commit the
/// branch points at. Stops the transfer (the transfer-progress callback returning false) when
/// `limits.timeout` has passed since the start, when more than `limits.max_bytes` were received,
/// or when `cancel` is set.
///
/// The limits are checked whenever libgit2 reports progress; while it waits on a silent socket,
/// its socket timeout (set by [`init_timeouts`]) ends the wait.
pub fn fetch_branch(
    mirror: &Path,
    url: &str,
    auth: &RemoteAuth,
    branch: &str,
    limits: &FetchLimits,
    cancel: &AtomicBool,
) -> Result<Fetched, ConnectionFailure> {
    init_timeouts(limits.timeout);
    let watch = Watch::new(limits, cancel);
    if !watch.keep_going(0) {
        return Err(watch.failure());
    }
    let full_ref = format!("refs/heads/{branch}");
    if !Reference::is_valid_name(&full_ref) {
        return Err(ConnectionFailure::BranchMissing(branch.to_owned()));
    }
    let repo = open_mirror(mirror)?;
    let redact = redactor(auth);
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| ConnectionFailure::Other(redact(e.message())))?;

    let asked = Cell::new(0u32);
    let mut callbacks = RemoteCallbacks::new();
    callbacks.credentials(answer_once(auth, &asked));
    callbacks.transfer_progress(|p| watch.keep_going(p.received_bytes() as u64));
    callbacks.sideband_progress(|_| watch.keep_going(0));
    let mut options = FetchOptions::new();
    options
        .remote_callbacks(callbacks)
        .download_tags(AutotagOption::None)
        .update_fetchhead(false)
        .follow_redirects(RemoteRedirect::Initial);

    // Download only: the reference is checked against the advertisement and set below, because
    // a refspec that matches nothing upstream "succeeds" and would leave a stale ref in place.
    let refspec = format!("+{full_ref}:{full_ref}");
    let downloaded = remote.download(&[refspec.as_str()], Some(&mut options));
    let failed = |e: &git2::Error| match watch.stopped.get() {
        Some(_) => watch.failure(),
        None => classify(e, asked.get() > 0, limits.timeout, &redact),
    };
    if let Err(e) = downloaded {
        return Err(failed(&e));
    }
    let advertised = remote
        .list()
        .map_err(|e| failed(&e))?
        .iter()
        .find(|head| head.name() == full_ref)
        .map(|head| head.oid());
    let received_bytes = remote.stats().received_bytes() as u64;
    let _ = remote.disconnect();
    let Some(oid) = advertised else {
        return Err(ConnectionFailure::BranchMissing(branch.to_owned()));
    };
    store_ref(&repo, &full_ref, oid)?;
    Ok(Fetched {
        commit: oid.to_string(),
        received_bytes,
    })
}

/// Opens the bare mirror, creating it when the folder is absent or empty.
fn open_mirror(mirror: &Path) -> Result<Repository, ConnectionFailure> {
    let local = |e: git2::Error| {
        ConnectionFailure::Other(format!("the local mirror is unusable: {}", e.message()))
    };
    if mirror.join("HEAD").exists() {
        Repository::open_bare(mirror).map_err(local)
    } else {
        Repository::init_bare(mirror).map_err(local)
    }
}

/// Points `full_ref` at `oid`, after checking the commit really arrived.
fn store_ref(repo: &Repository, full_ref: &str, oid: Oid) -> Result<(), ConnectionFailure> {
    let local = |e: git2::Error| {
        ConnectionFailure::Other(format!("the local mirror is unusable: {}", e.message()))
    };
    repo.find_commit(oid).map_err(local)?;
    repo.reference(full_ref, oid, true, "ruleyard fetch")
        .map_err(local)?;
    Ok(())
}

/// Why the transfer was stopped from a callback.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Timeout,
    TooLarge,
    Cancelled,
}

/// The limits checked from libgit2's progress callbacks; remembers why it said stop.
struct Watch<'a> {
    started: Instant,
    limits: &'a FetchLimits,
    cancel: &'a AtomicBool,
    stopped: Cell<Option<Stop>>,
}

impl<'a> Watch<'a> {
    fn new(limits: &'a FetchLimits, cancel: &'a AtomicBool) -> Self {
        Watch {
            started: Instant::now(),
            limits,
            cancel,
            stopped: Cell::new(None),
        }
    }

    /// False (and the reason remembered) once the transfer must stop.
    fn keep_going(&self, received_bytes: u64) -> bool {
        let stop = if self.cancel.load(Ordering::Relaxed) {
            Some(Stop::Cancelled)
        } else if received_bytes > self.limits.max_bytes {
            Some(Stop::TooLarge)
        } else if self.started.elapsed() > self.limits.timeout {
            Some(Stop::Timeout)
        } else {
            None
        };
        if stop.is_some() && self.stopped.get().is_none() {
            self.stopped.set(stop);
        }
        stop.is_none()
    }

    fn failure(&self) -> ConnectionFailure {
        match self.stopped.get() {
            Some(Stop::TooLarge) => ConnectionFailure::TooLarge(self.limits.max_bytes),
            Some(Stop::Cancelled) => ConnectionFailure::Cancelled,
            Some(Stop::Timeout) | None => ConnectionFailure::Timeout(self.limits.timeout.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use secrecy::SecretString;

    use super::*;
    use crate::sources::testing::{
        Daemon, HttpGit, Upstream, git, limits, no_auth, noise, proxy_setting_flag, silent_port,
    };

    fn fetch(mirror: &Path, url: &str, branch: &str) -> Result<Fetched, ConnectionFailure> {
        fetch_branch(
            mirror,
            url,
            &no_auth(),
            branch,
            &limits(),
            &AtomicBool::new(false),
        )
    }

    /// A fetch of `main` into a fresh mirror with the given limits and cancel flag.
    fn limited(
        url: &str,
        secs: u64,
        max_bytes: u64,
        cancel: &AtomicBool,
    ) -> Result<(), ConnectionFailure> {
        let mirror = tempfile::tempdir().unwrap();
        let limits = FetchLimits {
            timeout: Duration::from_secs(secs),
            max_bytes,
        };
        let outcome = fetch_branch(mirror.path(), url, &no_auth(), "main", &limits, cancel);
        let has_ref = Repository::open_bare(mirror.path())
            .is_ok_and(|repo| repo.find_reference("refs/heads/main").is_ok());
        assert_eq!(has_ref, outcome.is_ok(), "a failed fetch leaves no branch");
        outcome.map(|_| ())
    }

    /// An upstream of about 1 MB in 100 files.
    fn sizeable() -> Upstream {
        let upstream = Upstream::new();
        for i in 0..100 {
            upstream.write(&format!("rules/r{i}.yar"), noise(i, 10_000));
        }
        upstream.commit("first");
        upstream
    }

    fn mirror_ref(mirror: &Path, branch: &str) -> String {
        let repo = Repository::open_bare(mirror).unwrap();
        let reference = repo
            .find_reference(&format!("refs/heads/{branch}"))
            .unwrap();
        reference.target().unwrap().to_string()
    }

    #[test]
    fn first_and_incremental_fetch_over_git_daemon() {
        let upstream = sizeable();
        upstream.write("tag-me.yar", "rule t { condition: true }\n");
        let first_commit = upstream.commit("tagged");
        git(&upstream.dir(), &["tag", "v1"]);
        let daemon = Daemon::serve(upstream.base());
        let mirror = tempfile::tempdir().unwrap();
        let mirror = mirror.path().join("mirrors/one");

        let first = fetch(&mirror, &daemon.url("repo"), "main").unwrap();
        assert_eq!(first.commit, first_commit);
        assert!(first.received_bytes > 500_000, "{first:?}");
        assert_eq!(mirror_ref(&mirror, "main"), first_commit);
        let repo = Repository::open_bare(&mirror).unwrap();
        assert!(repo.find_reference("refs/tags/v1").is_err(), "no tags");

        upstream.write("rules/r7.yar", "rule changed { condition: false }\n");
        let second_commit = upstream.commit("second");
        let second = fetch(&mirror, &daemon.url("repo"), "main").unwrap();
        assert_eq!(second.commit, second_commit);
        assert!(second.received_bytes > 0);
        assert!(
            second.received_bytes * 10 < first.received_bytes,
            "{second:?} against {first:?}"
        );
        assert_eq!(mirror_ref(&mirror, "main"), second_commit);

        let unchanged = fetch(&mirror, &daemon.url("repo"), "main").unwrap();
        assert_eq!(unchanged.commit, second_commit);
        assert_eq!(unchanged.received_bytes, 0);
    }

    #[test]
    fn first_and_incremental_fetch_over_file_url() {
        let upstream = sizeable();
        let mirror = tempfile::tempdir().unwrap();
        let first = fetch(mirror.path(), &upstream.file_url(), "main").unwrap();
        upstream.write("new.yar", "rule n { condition: true }\n");
        let commit = upstream.commit("second");
        let second = fetch(mirror.path(), &upstream.file_url(), "main").unwrap();
        assert_eq!(second.commit, commit);
        assert!(second.received_bytes < first.received_bytes, "{second:?}");
    }

    #[test]
    fn other_branches_are_stored_under_their_own_name() {
        let upstream = Upstream::new();
        upstream.write("a.yar", "rule a { condition: true }\n");
        upstream.commit("a");
        git(&upstream.dir(), &["checkout", "-q", "-b", "feature/x"]);
        upstream.write("b.yar", "rule b { condition: true }\n");
        let commit = upstream.commit("b");
        let mirror = tempfile::tempdir().unwrap();
        let fetched = fetch(mirror.path(), &upstream.file_url(), "feature/x").unwrap();
        assert_eq!(fetched.commit, commit);
        assert_eq!(mirror_ref(mirror.path(), "feature/x"), commit);
    }

    #[test]
    fn a_missing_branch_is_branch_missing_even_after_an_earlier_fetch() {
        let upstream = Upstream::new();
        upstream.write("a.yar", "rule a { condition: true }\n");
        upstream.commit("a");
        git(&upstream.dir(), &["branch", "old"]);
        let daemon = Daemon::serve(upstream.base());
        let mirror = tempfile::tempdir().unwrap();
        for url in [upstream.file_url(), daemon.url("repo")] {
            assert_eq!(
                fetch(mirror.path(), &url, "nope"),
                Err(ConnectionFailure::BranchMissing("nope".into()))
            );
        }
        fetch(mirror.path(), &daemon.url("repo"), "old").unwrap();
        git(&upstream.dir(), &["branch", "-D", "old"]);
        assert_eq!(
            fetch(mirror.path(), &daemon.url("repo"), "old"),
            Err(ConnectionFailure::BranchMissing("old".into()))
        );
        assert_eq!(
            fetch(mirror.path(), &daemon.url("repo"), "bad*name"),
            Err(ConnectionFailure::BranchMissing("bad*name".into()))
        );
    }

    #[test]
    fn a_missing_repository_is_not_found() {
        let upstream = Upstream::new();
        let daemon = Daemon::serve(upstream.base());
        let mirror = tempfile::tempdir().unwrap();
        let missing = format!("file://{}/nothing-here", upstream.base().display());
        assert_eq!(
            fetch(mirror.path(), &missing, "main"),
            Err(ConnectionFailure::NotFound)
        );
        assert_eq!(
            fetch(mirror.path(), &daemon.url("nothing-here"), "main"),
            Err(ConnectionFailure::NotFound)
        );
    }

    #[test]
    fn a_server_that_never_answers_times_out() {
        let url = format!("git://127.0.0.1:{}/repo", silent_port());
        let started = Instant::now();
        let outcome = limited(&url, 2, 1 << 20, &AtomicBool::new(false));
        assert_eq!(outcome, Err(ConnectionFailure::Timeout(2)));
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(6), "{elapsed:?}");
    }

    #[test]
    fn more_than_max_bytes_is_too_large() {
        let upstream = sizeable();
        let daemon = Daemon::serve(upstream.base());
        for url in [daemon.url("repo"), upstream.file_url()] {
            let outcome = limited(&url, 30, 50_000, &AtomicBool::new(false));
            assert_eq!(outcome, Err(ConnectionFailure::TooLarge(50_000)), "{url}");
        }
    }

    #[test]
    fn a_cancel_flag_cancels_before_or_during_the_transfer() {
        let upstream = sizeable();
        let outcome = limited(&upstream.file_url(), 30, u64::MAX, &AtomicBool::new(true));
        assert_eq!(outcome, Err(ConnectionFailure::Cancelled));

        let daemon = Daemon::serve(upstream.base());
        let cancel = Arc::new(AtomicBool::new(false));
        let port = proxy_setting_flag(daemon.port(), 20_000, cancel.clone());
        let url = format!("git://127.0.0.1:{port}/repo");
        assert_eq!(
            limited(&url, 30, u64::MAX, &cancel),
            Err(ConnectionFailure::Cancelled)
        );
    }

    #[test]
    fn tokens_go_through_basic_authentication_only() {
        let upstream = sizeable();
        let token = "s3cret-t0ken";
        let server = HttpGit::serve(upstream.base(), token);
        let mirror = tempfile::tempdir().unwrap();
        let with = |token: Option<&str>| RemoteAuth {
            username: "x-access-token",
            token: token.map(|t| SecretString::from(t.to_owned())),
        };
        let no_cancel = AtomicBool::new(false);
        let fetched = fetch_branch(
            mirror.path(),
            &server.url("repo"),
            &with(Some(token)),
            "main",
            &limits(),
            &no_cancel,
        )
        .unwrap();
        assert!(fetched.received_bytes > 500_000);
        for wrong in [Some("wrong-token"), None] {
            let refused_before = server.refused.load(Ordering::SeqCst);
            let outcome = fetch_branch(
                mirror.path(),
                &server.url("repo"),
                &with(wrong),
                "main",
                &limits(),
                &no_cancel,
            );
            assert_eq!(outcome, Err(ConnectionFailure::AuthRefused));
            let refused = server.refused.load(Ordering::SeqCst) - refused_before;
            assert!(refused <= 2, "asked {refused} times");
        }
    }

    #[test]
    fn a_timeout_seen_during_the_transfer_stops_it() {
        let watch_limits = FetchLimits {
            timeout: Duration::ZERO,
            max_bytes: u64::MAX,
        };
        let cancel = AtomicBool::new(false);
        let watch = Watch::new(&watch_limits, &cancel);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!watch.keep_going(0));
        assert_eq!(watch.failure(), ConnectionFailure::Timeout(0));
    }
}
