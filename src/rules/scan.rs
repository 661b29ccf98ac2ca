//! Scanning: a pool of worker threads, one per core, each reusing its own YARA-X scanner over
//! the shared compiled rules of a generation until a newer generation arrives. A scan runs
//! entirely on the generation it was handed.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Map, Value};

use super::LoadedGeneration;

/// One rule that matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleMatch {
    pub ruleset: String,
    pub rule: String,
    pub tags: Vec<String>,
    /// Metadata; a key a rule repeats (signature-base does) holds the list of its values.
    pub meta: Map<String, Value>,
}

/// What a scan found.
#[derive(Debug, Clone)]
pub struct ScanOutcome {
    pub matches: Vec<RuleMatch>,
    pub timed_out: bool,
    pub error: Option<String>,
    pub duration: Duration,
}

/// The external variables a scan sets from the file's name (BEHAVIOUR.md 3).
#[derive(Debug, Clone, Default)]
pub struct ScanGlobals {
    pub filename: String,
    pub filepath: String,
    pub extension: String,
}

impl ScanGlobals {
    pub fn from_name(name: Option<&str>) -> Self {
        let Some(path) = name.filter(|n| !n.is_empty()) else {
            return ScanGlobals::default();
        };
        let filename = path.rsplit(['/', '\\']).next().unwrap_or(path).to_owned();
        let extension = match filename.rfind('.') {
            Some(dot) if dot + 1 < filename.len() => filename[dot + 1..].to_ascii_lowercase(),
            _ => String::new(),
        };
        ScanGlobals {
            filename,
            filepath: path.to_owned(),
            extension,
        }
    }
}

struct Job {
    generation: Arc<LoadedGeneration>,
    data: bytes::Bytes,
    globals: ScanGlobals,
    timeout: Duration,
    reply: tokio::sync::oneshot::Sender<ScanOutcome>,
}

pub struct ScanPool {
    jobs: Mutex<Sender<Job>>,
}

impl ScanPool {
    /// Starts `workers` threads (at least one). They run at a lower CPU priority than the
    /// threads that serve requests: when every core is scanning, a request's short steps (reading
    /// the body, answering, the next request's arrival) still get a core at once instead of
    /// waiting for a scan's time slice to end, so the scan workers are not left waiting for work.
    pub fn new(workers: usize) -> Self {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("scan-{i}"))
                .spawn(move || {
                    lower_priority();
                    worker(&rx)
                })
                .expect("start a scan worker");
        }
        ScanPool {
            jobs: Mutex::new(tx),
        }
    }

    /// Queues a scan of `data` with `generation`, bounded by `timeout`, at once; the future
    /// waits for its outcome, so the caller can do other work while a worker scans.
    pub fn scan(
        &self,
        generation: Arc<LoadedGeneration>,
        data: bytes::Bytes,
        globals: ScanGlobals,
        timeout: Duration,
    ) -> impl Future<Output = ScanOutcome> + Send + use<> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Job {
                generation,
                data,
                globals,
                timeout,
                reply,
            })
            .is_ok();
        let failed = |message: &str| ScanOutcome {
            matches: Vec::new(),
            timed_out: false,
            error: Some(message.to_owned()),
            duration: Duration::ZERO,
        };
        async move {
            if !sent {
                return failed("the scan workers stopped");
            }
            answer
                .await
                .unwrap_or_else(|_| failed("a scan worker stopped during the scan"))
        }
    }
}

/// How much lower than the server's other threads the scan workers run (a `nice` increment).
const SCAN_NICENESS: i32 = 10;

/// Lowers the calling thread's CPU priority by [`SCAN_NICENESS`] (Linux sets it per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread; no memory is shared with the kernel.
        let done = unsafe {
            let tid = libc::gettid();
            let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
            libc::setpriority(
                libc::PRIO_PROCESS,
                tid as libc::id_t,
                now.saturating_add(SCAN_NICENESS),
            )
        };
        if done != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot lower a scan worker's priority"
            );
        }
    }
}

fn next_job(rx: &Mutex<Receiver<Job>>) -> Option<Job> {
    rx.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .recv()
        .ok()
}

/// Keeps one scanner per generation: jobs on the same generation reuse it.
fn worker(rx: &Mutex<Receiver<Job>>) {
    let mut pending = next_job(rx);
    while let Some(first) = pending.take() {
        let generation = first.generation.clone();
        let rules = generation.rules.clone();
        let mut scanner = yara_x::Scanner::new(&rules);
        let mut job = Some(first);
        while let Some(current) = job.take() {
            if current.generation.number != generation.number {
                pending = Some(current);
                break;
            }
            let outcome = run(&mut scanner, &current);
            let _ = current.reply.send(outcome);
            job = next_job(rx);
            if job.is_none() {
                return;
            }
        }
    }
}

fn run(scanner: &mut yara_x::Scanner<'_>, job: &Job) -> ScanOutcome {
    scanner.set_timeout(job.timeout);
    for (name, value) in [
        ("filename", &job.globals.filename),
        ("filepath", &job.globals.filepath),
        ("extension", &job.globals.extension),
    ] {
        let _ = scanner.set_global(name, value.as_str());
    }
    let started = Instant::now();
    let result = scanner.scan(&job.data);
    let duration = started.elapsed();
    let (matches, timed_out, error) = match result {
        Ok(results) => (
            results.matching_rules().map(|r| rule_match(&r)).collect(),
            false,
            None,
        ),
        Err(yara_x::ScanError::Timeout) => (Vec::new(), true, None),
        Err(e) => (Vec::new(), false, Some(e.to_string())),
    };
    ScanOutcome {
        matches,
        timed_out,
        error,
        duration,
    }
}

fn rule_match(rule: &yara_x::Rule<'_, '_>) -> RuleMatch {
    let mut meta = Map::new();
    for (key, value) in rule.metadata() {
        let value = match value {
            yara_x::MetaValue::Integer(i) => Value::from(i),
            yara_x::MetaValue::Float(f) => Value::from(f),
            yara_x::MetaValue::Bool(b) => Value::from(b),
            yara_x::MetaValue::String(s) => Value::from(s),
            yara_x::MetaValue::Bytes(b) => Value::from(b.to_string()),
        };
        match meta.get_mut(key) {
            None => {
                meta.insert(key.to_owned(), value);
            }
            Some(Value::Array(values)) => values.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
    RuleMatch {
        ruleset: rule.namespace().to_owned(),
        rule: rule.identifier().to_owned(),
        tags: rule.tags().map(|t| t.identifier().to_owned()).collect(),
        meta,
    }
}

/// The classification a match gets from its rule's tags.
pub fn classify(tags: &[String]) -> &'static str {
    let has = |t: &str| tags.iter().any(|tag| tag.eq_ignore_ascii_case(t));
    if has("malicious") {
        "malicious"
    } else if has("suspicious") {
        "suspicious"
    } else if has("goodware") {
        "goodware"
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globals_come_from_the_name() {
        let g = ScanGlobals::from_name(Some("dir/sub/Evil.EXE"));
        assert_eq!(g.filename, "Evil.EXE");
        assert_eq!(g.filepath, "dir/sub/Evil.EXE");
        assert_eq!(g.extension, "exe");
        assert_eq!(ScanGlobals::from_name(None).filename, "");
    }

    /// The `nice` value of a thread (or of the process), from its `stat` file.
    #[cfg(target_os = "linux")]
    fn niceness(stat: &str) -> i32 {
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        // After the name: state is field 3 of stat(5), nice is field 19.
        fields[19 - 3].parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn scan_workers_run_below_the_request_threads() {
        let _pool = ScanPool::new(2);
        let base = niceness(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
        let mut workers = Vec::new();
        // The workers lower their priority as their first step; give them a moment to start.
        for _ in 0..100 {
            workers.clear();
            for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                if comm.trim_end().starts_with("scan-") {
                    let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
                    workers.push(niceness(&stat));
                }
            }
            if workers.len() >= 2 && workers.iter().all(|n| *n > base) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(workers.len() >= 2, "the pool's threads are found");
        let expected = (base + SCAN_NICENESS).min(19);
        assert!(
            workers.iter().all(|n| *n == expected),
            "scan workers at nice {expected} (the rest at {base}): {workers:?}"
        );
    }

    #[test]
    fn classification_follows_tags() {
        assert_eq!(classify(&["Suspicious".into()]), "suspicious");
        assert_eq!(
            classify(&["malicious".into(), "goodware".into()]),
            "malicious"
        );
        assert_eq!(classify(&[]), "unknown");
    }
}
