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
    /// Starts `workers` threads (at least one).
    pub fn new(workers: usize) -> Self {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("scan-{i}"))
                .spawn(move || worker(&rx))
                .expect("start a scan worker");
        }
        ScanPool {
            jobs: Mutex::new(tx),
        }
    }

    /// Scans `data` with `generation`, bounded by `timeout`.
    pub async fn scan(
        &self,
        generation: Arc<LoadedGeneration>,
        data: bytes::Bytes,
        globals: ScanGlobals,
        timeout: Duration,
    ) -> ScanOutcome {
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
            });
        let failed = |message: &str| ScanOutcome {
            matches: Vec::new(),
            timed_out: false,
            error: Some(message.to_owned()),
            duration: Duration::ZERO,
        };
        if sent.is_err() {
            return failed("the scan workers stopped");
        }
        answer
            .await
            .unwrap_or_else(|_| failed("a scan worker stopped during the scan"))
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
    match result {
        Ok(results) => ScanOutcome {
            matches: results.matching_rules().map(|r| rule_match(&r)).collect(),
            timed_out: false,
            error: None,
            duration,
        },
        Err(yara_x::ScanError::Timeout) => ScanOutcome {
            matches: Vec::new(),
            timed_out: true,
            error: None,
            duration,
        },
        Err(e) => ScanOutcome {
            matches: Vec::new(),
            timed_out: false,
            error: Some(e.to_string()),
            duration,
        },
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
