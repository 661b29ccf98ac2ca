//! The rule files of the corpora bundles, extracted with git (shared by the benchmarks).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const BUNDLES: [&str; 5] = [
    "reversinglabs",
    "signature-base",
    "bartblaze",
    "mandiant-rtcm",
    "inquest",
];

/// `RULEYARD_CORPORA`, else `../shared/corpora` beside the repository.
pub fn corpora_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RULEYARD_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora"));
    dir.join("MANIFEST.md").is_file().then_some(dir)
}

/// (path, text) of every UTF-8 `.yar`/`.yara`/`.rule` file at the bundle's HEAD.
pub fn rule_files(bundle: &Path) -> Vec<(String, String)> {
    let work = tempfile::tempdir().expect("temporary folder");
    let bare = work.path().join("repo.git");
    let status = Command::new("git")
        .args(["-c", "init.defaultBranch=main", "clone", "-q", "--bare"])
        .arg(bundle)
        .arg(&bare)
        .status()
        .expect("git");
    assert!(status.success(), "git clone {}", bundle.display());
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut archive = Command::new("git")
        .arg("--git-dir")
        .arg(&bare)
        .args(["archive", "--format=tar", "HEAD"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("git archive");
    let status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&tree)
        .stdin(archive.stdout.take().expect("piped"))
        .status()
        .expect("tar");
    assert!(status.success() && archive.wait().expect("git archive").success());
    let mut files = Vec::new();
    let mut stack = vec![tree.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let ext = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if matches!(ext.as_str(), "yar" | "yara" | "rule")
                    && let Ok(text) = std::fs::read_to_string(&path)
                {
                    let rel = path.strip_prefix(&tree).unwrap().display().to_string();
                    files.push((rel, text));
                }
            }
        }
    }
    files.sort();
    files
}
