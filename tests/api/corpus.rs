//! Every rule file of the real corpora in `../shared/corpora`, uploaded through the API as a
//! ruleset: the server's verdict must equal a direct YARA-X compile of the same text with the
//! same options, and its diagnostics must carry line and column.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::Value;

use crate::backend_tests;
use crate::helpers::{Backend, TestApp, TestConfig};

backend_tests!(every_corpus_file_gets_the_verdict_yara_x_gives);

/// `../shared/corpora` next to the repository, when it is there.
pub fn corpora_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora");
    dir.join("MANIFEST.md").is_file().then_some(dir)
}

/// The rule files (`.yar`, `.yara`, `.rule`) of a bundle's HEAD, as (path, bytes).
pub fn rule_files(bundle: &Path) -> Vec<(String, Vec<u8>)> {
    let work = tempfile::tempdir().unwrap();
    let bare = work.path().join("repo.git");
    let ok = Command::new("git")
        .args(["-c", "init.defaultBranch=main", "clone", "-q", "--bare"])
        .arg(bundle)
        .arg(&bare)
        .status()
        .unwrap()
        .success();
    assert!(ok, "clone {}", bundle.display());
    let archive = Command::new("git")
        .arg("--git-dir")
        .arg(&bare)
        .args(["archive", "--format=tar", "HEAD"])
        .output()
        .unwrap();
    assert!(archive.status.success());
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&tree)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        tar.stdin
            .take()
            .unwrap()
            .write_all(&archive.stdout)
            .unwrap();
    }
    assert!(tar.wait().unwrap().success());
    let mut out: Vec<(String, Vec<u8>)> = crate::helpers::files_below(&tree)
        .into_iter()
        .filter(|(p, _)| {
            let ext = p
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase();
            matches!(ext.as_str(), "yar" | "yara" | "rule") && !p.is_symlink()
        })
        .map(|(p, b)| (p.strip_prefix(&tree).unwrap().display().to_string(), b))
        .collect();
    out.sort();
    out
}

/// A direct compile with the options the server promises (BEHAVIOUR.md 3).
fn direct_verdict(source: &str) -> bool {
    let mut compiler = yara_x::Compiler::new();
    compiler.relaxed_re_syntax(true).enable_includes(false);
    for name in ["filename", "filepath", "extension", "filetype", "owner"] {
        compiler.define_global(name, "").unwrap();
    }
    compiler.new_namespace("direct");
    let _ = compiler.add_source(source);
    compiler.errors().is_empty()
}

async fn every_corpus_file_gets_the_verdict_yara_x_gives(backend: Backend) {
    let Some(dir) = corpora_dir() else {
        eprintln!("skipped: ../shared/corpora is not there");
        return;
    };
    let mut config = TestConfig::new(backend);
    // Review mode: uploads are validated, nothing is compiled into a generation meanwhile.
    config.yara_sync = true;
    let app = Arc::new(TestApp::spawn_with(config).await);
    let mut files = Vec::new();
    for bundle in [
        "reversinglabs",
        "signature-base",
        "bartblaze",
        "mandiant-rtcm",
        "inquest",
    ] {
        for (path, bytes) in rule_files(&dir.join(format!("{bundle}.bundle"))) {
            files.push((bundle, path, bytes));
        }
    }
    assert!(
        files.len() > 1000,
        "the corpora hold over a thousand rule files"
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = tokio::task::JoinSet::new();
    let mut skipped_non_utf8 = 0;
    for (i, (bundle, path, bytes)) in files.into_iter().enumerate() {
        let Ok(text) = String::from_utf8(bytes) else {
            skipped_non_utf8 += 1;
            continue;
        };
        let app = app.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            let name = format!("c{i}_{}", bundle.replace('-', "_"));
            let res = app.save_ruleset(&app.admin_token, &name, &text).await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap();
            let expected = tokio::task::spawn_blocking({
                let text = text.clone();
                move || direct_verdict(&text)
            })
            .await
            .unwrap();
            (format!("{bundle}/{path}"), text, status, body, expected)
        });
    }
    let (mut valid, mut invalid, mut includes) = (0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        let (file, text, status, body, expected) = joined.unwrap();
        if ruleyard::rules::contains_include(&text) {
            assert_eq!(status, 400, "{file}: {body}");
            assert_eq!(body["code"], "include_not_allowed", "{file}");
            includes += 1;
            continue;
        }
        assert_eq!(status, 201, "{file}: {body}");
        assert_eq!(
            body["detail"]["valid"], expected,
            "{file}: verdict differs from YARA-X: {body}"
        );
        for d in body["detail"]["diagnostics"].as_array().unwrap() {
            if d["severity"] == "error" {
                assert!(
                    d["line"].as_u64().is_some() && d["column"].as_u64().is_some(),
                    "{file}: {d}"
                );
            }
        }
        if expected {
            valid += 1;
        } else {
            invalid += 1;
            assert!(
                body["detail"]["diagnostics"][0]["severity"] == "error",
                "{file}"
            );
        }
    }
    eprintln!(
        "corpus: {valid} valid, {invalid} invalid, {includes} refused for include, \
         {skipped_non_utf8} not UTF-8"
    );
    assert!(valid > 1000);
    assert!(
        invalid >= 1,
        "GlowSpark_Downloader.rule does not compile in any engine"
    );
}
