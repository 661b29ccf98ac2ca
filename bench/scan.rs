//! Benchmark: scanning real files through the HTTP API with the five corpora published, against
//! YARA-X in process and libyara (through yara-python) on the same rules and the same files.
//!
//! cargo build --release --bin ruleyard --example bench_scan
//! target/release/examples/bench_scan [path/to/ruleyard]
//!
//! The files: a few hundred regular files of /usr/bin and the largest libraries (up to 20 MiB)
//! of /usr/lib/x86_64-linux-gnu, read into memory once. As many clients as cores: concurrent
//! HTTP clients for the server, threads with their own scanner for the baselines. Each variant
//! scans every file once to warm up; then `ROUNDS` rounds each time one pass of every variant,
//! one after the other, so that load from elsewhere on the machine hits all of them alike.
//!
//! yara-python runs `bench/scan_yara_python.py` with `RULEYARD_PYTHON`, else `.venv/bin/python`
//! of this repository, else `python3`; without yara-python that baseline is skipped.
//!
//! Prints throughput per variant (median pass), the ratios ruleyard/yara-x (goal: at least 0.9)
//! and ruleyard/yara-python (goal: above 1) as the median of the rounds' ratios and as the
//! ratio of the fastest passes, and the server's memory with the corpora loaded.

#[path = "corpus.rs"]
mod corpus;
#[path = "support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ruleyard::rules::ScanGlobals;
use serde_json::{Value, json};

/// Regular files taken from /usr/bin, spread evenly over its sorted listing.
const BIN_FILES: usize = 300;
/// The largest libraries of /usr/lib/x86_64-linux-gnu no larger than `MAX_FILE`.
const LIBRARIES: usize = 8;
const MAX_FILE: u64 = 20 * 1024 * 1024;
const ROUNDS: usize = 7;
/// The server's default scan timeout, used by both baselines too.
const SCAN_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const PYTHON_LIMIT: Duration = Duration::from_secs(1800);

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct File {
    path: String,
    /// Leaked once so that every request body borrows it without a copy.
    data: &'static [u8],
}

fn regular_files(dir: &Path) -> Vec<(PathBuf, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(meta) = std::fs::symlink_metadata(entry.path())
            && meta.is_file()
            && meta.len() > 0
            && meta.len() <= MAX_FILE
        {
            found.push((entry.path(), meta.len(), meta.ino()));
        }
    }
    found.sort();
    found
}

fn pick_files() -> Vec<File> {
    let bins = regular_files(Path::new("/usr/bin"));
    let take = BIN_FILES.min(bins.len());
    let mut chosen: Vec<PathBuf> = (0..take)
        .map(|k| bins[k * bins.len() / take].0.clone())
        .collect();
    let mut libs: Vec<(PathBuf, u64, u64)> = regular_files(Path::new("/usr/lib/x86_64-linux-gnu"))
        .into_iter()
        .filter(|(p, _, _)| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".so"))
        })
        .collect();
    libs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    libs.dedup_by_key(|(_, _, inode)| *inode);
    chosen.extend(libs.into_iter().take(LIBRARIES).map(|(p, _, _)| p));
    let mut files: Vec<File> = chosen
        .into_iter()
        .filter_map(|path| {
            let data = std::fs::read(&path).ok()?;
            Some(File {
                path: path.display().to_string(),
                data: Box::leak(data.into_boxed_slice()),
            })
        })
        .collect();
    // Largest first, so that no client is left with a large file at the end of a pass.
    files.sort_by(|a, b| b.data.len().cmp(&a.data.len()).then(a.path.cmp(&b.path)));
    files
}

/// What one pass over every file found.
#[derive(Default)]
struct Pass {
    elapsed: Duration,
    /// Matching rules per file, in file order.
    matches: Vec<usize>,
    timed_out: usize,
    errors: usize,
    /// Time spent inside `Scanner::scan`, summed over the files (the server reports its own).
    scanning: Duration,
    /// Where the machine's CPU went during the pass.
    cpu: CpuSplit,
}

/// The machine's CPU during a pass, in core-seconds.
#[derive(Default, Clone, Copy)]
struct CpuSplit {
    /// The server's scan workers.
    server_scans: f64,
    /// The server's other threads: HTTP, hashing, recording, SQLite.
    server_rest: f64,
    /// This process: the HTTP clients, or the in-process scanner threads.
    bench: f64,
    /// Everything else on the machine, kernel included.
    others: f64,
    idle: f64,
}

/// CPU counters at one moment.
struct CpuMark {
    server: f64,
    server_scans: f64,
    bench: f64,
    busy: f64,
    idle: f64,
}

impl CpuMark {
    fn now(server: u32) -> Self {
        let (busy, idle) = support::machine_cpu();
        CpuMark {
            server: support::process_cpu(server),
            server_scans: support::thread_cpu(server)
                .iter()
                .filter(|(name, _)| name.starts_with("scan-"))
                .map(|(_, seconds)| seconds)
                .sum(),
            bench: support::own_cpu(),
            busy,
            idle,
        }
    }

    fn since(&self, start: &CpuMark) -> CpuSplit {
        let server_scans = self.server_scans - start.server_scans;
        let server = self.server - start.server;
        let bench = self.bench - start.bench;
        CpuSplit {
            server_scans,
            server_rest: server - server_scans,
            bench,
            others: (self.busy - start.busy - server - bench).max(0.0),
            idle: self.idle - start.idle,
        }
    }
}

impl Pass {
    fn total(&self) -> usize {
        self.matches.iter().sum()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn http_pass(
    client: &reqwest::Client,
    url: &str,
    auth: &str,
    files: &Arc<Vec<File>>,
    clients: usize,
) -> Pass {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, auth) = (client.clone(), url.to_owned(), auth.to_owned());
        let (files, next) = (files.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut found = Vec::new();
            let (mut timed_out, mut errors, mut scanning) = (0, 0, Duration::ZERO);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(file) = files.get(i) else { break };
                let answer = client
                    .post(&url)
                    .query(&[("filename", file.path.as_str())])
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/octet-stream")
                    .body(file.data)
                    .send()
                    .await;
                let body = match answer {
                    Ok(r) if r.status() == 200 => r.json::<Value>().await.ok(),
                    Ok(r) => {
                        eprintln!("scan of {}: HTTP {}", file.path, r.status());
                        None
                    }
                    Err(e) => {
                        eprintln!("scan of {}: {e}", file.path);
                        None
                    }
                };
                match body {
                    Some(v) => {
                        timed_out += usize::from(v["timed_out"] == true);
                        let ms = v["duration_ms"].as_f64().unwrap_or(0.0);
                        scanning += Duration::from_secs_f64(ms / 1000.0);
                        let n = v["matches"].as_array().map_or(0, Vec::len);
                        found.push((i, n));
                    }
                    None => errors += 1,
                }
            }
            (found, timed_out, errors, scanning)
        }));
    }
    let mut pass = Pass {
        matches: vec![0; files.len()],
        ..Pass::default()
    };
    for task in tasks {
        let (found, timed_out, errors, scanning) = task.await.expect("client task");
        pass.scanning += scanning;
        for (i, n) in found {
            pass.matches[i] = n;
        }
        pass.timed_out += timed_out;
        pass.errors += errors;
    }
    pass.elapsed = started.elapsed();
    pass
}

fn compile_yara_x(sources: &[(String, String)]) -> yara_x::Rules {
    let mut compiler = yara_x::Compiler::new();
    compiler.relaxed_re_syntax(true).enable_includes(false);
    for name in ruleyard::rules::EXTERNALS {
        compiler.define_global(name, "").unwrap();
    }
    for (name, text) in sources {
        compiler.new_namespace(name);
        compiler.add_source(text.as_str()).expect("valid sources");
    }
    compiler.build()
}

fn yara_x_pass(rules: &yara_x::Rules, files: &[File], threads: usize) -> Pass {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    type Found = (Vec<(usize, usize)>, usize, usize, Duration);
    let results: Vec<Found> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut scanner = yara_x::Scanner::new(rules);
                    scanner.set_timeout(SCAN_TIMEOUT);
                    let mut found = Vec::new();
                    let (mut timed_out, mut errors, mut scanning) = (0, 0, Duration::ZERO);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = files.get(i) else { break };
                        let globals = ScanGlobals::from_name(Some(&file.path));
                        for (name, value) in [
                            ("filename", globals.filename),
                            ("filepath", globals.filepath),
                            ("extension", globals.extension),
                        ] {
                            scanner.set_global(name, value.as_str()).unwrap();
                        }
                        let scan_started = Instant::now();
                        let result = scanner.scan(file.data);
                        scanning += scan_started.elapsed();
                        match result {
                            Ok(results) => {
                                let names: Vec<(String, String)> = results
                                    .matching_rules()
                                    .map(|r| (r.namespace().to_owned(), r.identifier().to_owned()))
                                    .collect();
                                found.push((i, names.len()));
                            }
                            Err(yara_x::ScanError::Timeout) => timed_out += 1,
                            Err(_) => errors += 1,
                        }
                    }
                    (found, timed_out, errors, scanning)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut pass = Pass {
        elapsed: started.elapsed(),
        matches: vec![0; files.len()],
        ..Pass::default()
    };
    for (found, timed_out, errors, scanning) in results {
        pass.scanning += scanning;
        for (i, n) in found {
            pass.matches[i] = n;
        }
        pass.timed_out += timed_out;
        pass.errors += errors;
    }
    pass
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("RULEYARD_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.is_file() {
        venv
    } else {
        "python3".into()
    }
}

/// The yara-python baseline, a child process that scans every file on each `pass` line.
struct YaraPython {
    child: Child,
    input: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    _work: tempfile::TempDir,
}

impl Drop for YaraPython {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl YaraPython {
    /// Starts the script (it compiles, reads the files and warms up); with what it compiled.
    fn start(
        sources: &[(String, String)],
        files: &[File],
        threads: usize,
    ) -> Result<(Self, Value), String> {
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = work.path().join("sources");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (name, text) in sources {
            std::fs::write(dir.join(format!("{name}.yar")), text).map_err(|e| e.to_string())?;
        }
        let job = json!({
            "threads": threads,
            "timeout": SCAN_TIMEOUT.as_secs(),
            "sources": sources.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            "files": files.iter().map(|f| &f.path).collect::<Vec<_>>(),
        });
        std::fs::write(work.path().join("job.json"), job.to_string()).map_err(|e| e.to_string())?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/scan_yara_python.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg(work.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python().display()))?;
        let input = child.stdin.take().expect("piped");
        let output = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(output)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = YaraPython {
            child,
            input,
            lines,
            _work: work,
        };
        let compiled = me.answer()?;
        Ok((me, compiled))
    }

    fn answer(&mut self) -> Result<Value, String> {
        match self.lines.recv_timeout(PYTHON_LIMIT) {
            Ok(line) => serde_json::from_str(&line).map_err(|e| format!("{e}: {line}")),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(format!("no answer in {} s", PYTHON_LIMIT.as_secs()))
            }
            Err(_) => Err(match self.child.wait() {
                Ok(status) => format!("the script ended with {status}"),
                Err(e) => e.to_string(),
            }),
        }
    }

    fn pass(&mut self) -> Result<Pass, String> {
        use std::io::Write;
        writeln!(self.input, "pass").map_err(|e| e.to_string())?;
        self.input.flush().map_err(|e| e.to_string())?;
        let v = self.answer()?;
        let count = |key: &str| v[key].as_u64().unwrap_or(0) as usize;
        Ok(Pass {
            elapsed: Duration::from_secs_f64(v["elapsed_s"].as_f64().ok_or("no elapsed_s")?),
            matches: v["matches"]
                .as_array()
                .ok_or("no matches")?
                .iter()
                .map(|n| n.as_u64().unwrap_or(0) as usize)
                .collect(),
            timed_out: count("timed_out"),
            errors: count("errors"),
            scanning: Duration::ZERO,
            cpu: CpuSplit::default(),
        })
    }
}

/// Prints the median pass of a variant; its median time.
fn report(label: &str, passes: &[Pass], bytes: u64, files: usize, threads: usize) -> f64 {
    let secs = median(passes.iter().map(|p| p.elapsed.as_secs_f64()).collect());
    let pass = passes
        .iter()
        .find(|p| p.elapsed.as_secs_f64() == secs)
        .expect("the median is one of the passes");
    println!(
        "{label:<36} {:>6.1} MB/s {:>6.1} files/s ({secs:.2} s; {} rule matches, {} timed out, \
         {} errors)",
        bytes as f64 / 1e6 / secs,
        files as f64 / secs,
        pass.total(),
        pass.timed_out,
        pass.errors
    );
    if !pass.scanning.is_zero() {
        println!(
            "{:<36} time inside Scanner::scan {:.2} s: busy {:.0}% of {threads} x {secs:.2} s",
            "",
            pass.scanning.as_secs_f64(),
            100.0 * pass.scanning.as_secs_f64() / (threads as f64 * secs)
        );
    }
    let cpu = pass.cpu;
    if cpu.bench + cpu.server_scans > 0.0 {
        let mut parts = Vec::new();
        if cpu.server_scans + cpu.server_rest > 0.0 {
            parts.push(format!("server scan workers {:.2}", cpu.server_scans));
            parts.push(format!("server HTTP and the rest {:.2}", cpu.server_rest));
            parts.push(format!("benchmark clients {:.2}", cpu.bench));
        } else {
            parts.push(format!("scanner threads {:.2}", cpu.bench));
        }
        parts.push(format!("other processes {:.2}", cpu.others));
        parts.push(format!("idle {:.2}", cpu.idle));
        println!("{:<36} CPU, core-seconds: {}", "", parts.join(", "));
    }
    secs
}

fn differing(a: &Pass, b: &Pass) -> usize {
    a.matches
        .iter()
        .zip(&b.matches)
        .filter(|(x, y)| x != y)
        .count()
}

#[tokio::main]
async fn main() {
    let Some(dir) = support::corpora_or_skip() else {
        return;
    };
    let binary = support::server_binary();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rule_files = support::corpus_rule_files(&dir);
    let files = Arc::new(pick_files());
    let bytes: u64 = files.iter().map(|f| f.data.len() as u64).sum();
    let libs = files
        .iter()
        .filter(|f| !f.path.starts_with("/usr/bin/"))
        .count();
    let largest = files.iter().map(|f| f.data.len()).max().unwrap_or(0);
    println!(
        "{} files ({} from /usr/bin, {libs} libraries), {:.1} MB in all, largest {:.1} MB; \
         {cores} cores, {cores} clients or threads per variant",
        files.len(),
        files.len() - libs,
        bytes as f64 / 1e6,
        largest as f64 / 1e6
    );

    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let server = support::Server::start(&binary, &[], client.clone()).await;
    let pid = server.pid();
    let (base, auth) = (server.base.clone(), server.auth.clone());

    let mut valid = Vec::new();
    for (name, text) in &rule_files {
        if server.save_ruleset(name, text).await {
            valid.push((name.clone(), text.clone()));
        }
    }
    let before = server.serving_generation().await;
    let report_all = server.post_json("/api/yara/publish/all").await;
    let published = Instant::now();
    let generation = loop {
        let now = server.serving_generation().await;
        if let Some(number) = now
            && now != before
        {
            break number;
        }
        assert!(
            published.elapsed() < Duration::from_secs(300),
            "the generation did not become active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rules = compile_yara_x(&valid);
    let rule_count = rules.iter().count();
    println!(
        "{} rule files from {} bundles, {} valid; {} published as generation {generation} \
         ({rule_count} rules)",
        rule_files.len(),
        corpus::BUNDLES.len(),
        valid.len(),
        report_all["successful_publish_count"],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = support::memory_kib(pid);
    println!(
        "server memory with the corpora loaded, before scanning: VmRSS {:.0} MiB, VmHWM {:.0} MiB",
        mib(rss),
        mib(hwm)
    );

    let mut py = match YaraPython::start(&valid, &files, cores) {
        Ok((py, compiled)) => {
            println!(
                "yara-python {}: compiled {} of {} rule files ({} of {rule_count} rules) in \
                 {:.1} s; libyara rejected {} alone and {} together",
                compiled["yara_version"].as_str().unwrap_or("?"),
                compiled["kept"],
                valid.len(),
                compiled["rules"],
                compiled["compile_s"].as_f64().unwrap_or(f64::NAN),
                compiled["rejected_alone"],
                compiled["rejected_together"]
            );
            Some(py)
        }
        Err(why) => {
            println!("yara-python: skipped ({why})");
            None
        }
    };

    let url = format!("{base}/api/yara/scan/");
    let warm = http_pass(&client, &url, &auth, &files, cores).await;
    assert_eq!(warm.errors, 0, "every scan answers 200");
    let warm_x = yara_x_pass(&rules, &files, cores);
    let (mut http, mut yx, mut yp) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let mark = CpuMark::now(pid);
        let mut pass = http_pass(&client, &url, &auth, &files, cores).await;
        pass.cpu = CpuMark::now(pid).since(&mark);
        http.push(pass);
        let mark = CpuMark::now(pid);
        let mut pass = yara_x_pass(&rules, &files, cores);
        pass.cpu = CpuMark::now(pid).since(&mark);
        yx.push(pass);
        let mut line = format!(
            "round {round}: ruleyard {:.2} s, yara-x {:.2} s",
            http[round - 1].elapsed.as_secs_f64(),
            yx[round - 1].elapsed.as_secs_f64()
        );
        if let Some(p) = py.as_mut() {
            match p.pass() {
                Ok(pass) => {
                    line += &format!(", yara-python {:.2} s", pass.elapsed.as_secs_f64());
                    yp.push(pass);
                }
                Err(why) => {
                    println!("yara-python: stopped ({why})");
                    py = None;
                    yp.clear();
                }
            }
        }
        println!("{line}");
    }
    let (rss_after, hwm_after) = support::memory_kib(pid);
    drop(server);
    drop(py);

    println!("throughput, median of {ROUNDS} passes over every file:");
    report(
        &format!("ruleyard HTTP, {cores} clients"),
        &http,
        bytes,
        files.len(),
        cores,
    );
    report(
        &format!("YARA-X {} in process, {cores} threads", yara_x::VERSION),
        &yx,
        bytes,
        files.len(),
        cores,
    );
    if !yp.is_empty() {
        report(
            &format!("yara-python, {cores} threads"),
            &yp,
            bytes,
            files.len(),
            cores,
        );
    }
    println!(
        "files whose number of matching rules differs from YARA-X in process: ruleyard {}, \
         yara-python {} (of {})",
        differing(&warm, &warm_x),
        yp.first()
            .map_or_else(|| "-".into(), |p| differing(p, &warm_x).to_string()),
        files.len()
    );
    // The median of the rounds' ratios, and the ratio of the fastest passes (the least
    // disturbed by other load on the machine).
    let ratios = |baseline: &[Pass]| {
        let best = |passes: &[Pass]| passes.iter().map(|p| p.elapsed).min().unwrap_or_default();
        (
            median(
                http.iter()
                    .zip(baseline)
                    .map(|(h, b)| b.elapsed.as_secs_f64() / h.elapsed.as_secs_f64())
                    .collect(),
            ),
            best(baseline).as_secs_f64() / best(&http).as_secs_f64(),
        )
    };
    let (of_rounds, of_best) = ratios(&yx);
    println!(
        "ratio ruleyard/yara-x (throughput): {of_rounds:.2} median of the rounds, {of_best:.2} \
         fastest passes (goal >= 0.9)"
    );
    if !yp.is_empty() {
        let (of_rounds, of_best) = ratios(&yp);
        println!(
            "ratio ruleyard/yara-python (throughput): {of_rounds:.2} median of the rounds, \
             {of_best:.2} fastest passes (goal > 1)"
        );
    }
    println!(
        "server memory after scanning: VmRSS {:.0} MiB, VmHWM {:.0} MiB",
        mib(rss_after),
        mib(hwm_after)
    );
}
