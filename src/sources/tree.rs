//! Reading a commit of a bare mirror without checking it out: the rule files of its tree (by
//! extension, any case), each classified as a rule file, an index file or skipped with the
//! reason, and the text of a blob exactly as stored (CRLF and a missing final newline kept).
//!
//! Must not import `http` or `store`.

use std::collections::HashMap;
use std::path::Path;

use git2::{ObjectType, Odb, Oid, Repository, Tree};

use super::includes::is_index;

/// What a rule file of the tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A rule file to import.
    Rule,
    /// Only `include` lines and comments: listed, not imported.
    Index,
    /// Not imported, with the reason: "symlink", "submodule", "too large (N bytes)", "not UTF-8".
    Skipped(String),
}

/// One file of the tree whose name has a rule extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Repository-relative, `/`-separated.
    pub path: String,
    /// The blob (for a submodule, the commit it points at).
    pub blob_sha: String,
    pub size: u64,
    pub kind: FileKind,
}

/// Every file of the commit's tree whose name ends with one of `extensions` (like ".yar", ".yara",
/// compared case-insensitively), sorted by path. Symlinks and submodules with such names are
/// Skipped with the reason; blobs over `max_bytes` Skipped; non-UTF-8 Skipped; a file made only
/// of `include "..."` lines, comments (// and /* */) and blank lines, with at least one include,
/// is `Index`.
pub fn rule_files(
    mirror: &Path,
    commit: &str,
    extensions: &[String],
    max_bytes: u64,
) -> Result<Vec<TreeFile>, String> {
    rule_files_known(mirror, commit, extensions, max_bytes, &HashMap::new())
}

/// [`rule_files`], reusing the kind already known for a blob (by its id) instead of reading it:
/// an update reads only the blobs that changed since the last import.
pub fn rule_files_known(
    mirror: &Path,
    commit: &str,
    extensions: &[String],
    max_bytes: u64,
    known: &HashMap<String, FileKind>,
) -> Result<Vec<TreeFile>, String> {
    let repo = open(mirror)?;
    let oid = Oid::from_str(commit).map_err(|_| format!("`{commit}` is not a commit id"))?;
    let tree = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(|e| format!("commit {commit} cannot be read: {}", e.message()))?;
    let odb = repo.odb().map_err(|e| e.message().to_owned())?;
    let extensions: Vec<Vec<u8>> = extensions
        .iter()
        .map(|e| {
            let e = e.to_ascii_lowercase();
            if e.starts_with('.') {
                e
            } else {
                format!(".{e}")
            }
            .into_bytes()
        })
        .collect();
    let walk = Walk {
        repo: &repo,
        odb: &odb,
        extensions: &extensions,
        max_bytes,
        known,
    };
    let mut files = Vec::new();
    walk.tree(&tree, "", &mut files)?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The text of a blob, as stored.
pub fn read_text(mirror: &Path, blob_sha: &str) -> Result<String, String> {
    let repo = open(mirror)?;
    let oid = Oid::from_str(blob_sha).map_err(|_| format!("`{blob_sha}` is not a blob id"))?;
    let blob = repo
        .find_blob(oid)
        .map_err(|e| format!("blob {blob_sha} cannot be read: {}", e.message()))?;
    String::from_utf8(blob.content().to_vec()).map_err(|_| format!("blob {blob_sha} is not UTF-8"))
}

fn open(mirror: &Path) -> Result<Repository, String> {
    Repository::open_bare(mirror)
        .map_err(|e| format!("the local mirror cannot be opened: {}", e.message()))
}

struct Walk<'a> {
    repo: &'a Repository,
    odb: &'a Odb<'a>,
    extensions: &'a [Vec<u8>],
    max_bytes: u64,
    known: &'a HashMap<String, FileKind>,
}

impl Walk<'_> {
    fn tree(&self, tree: &Tree<'_>, prefix: &str, files: &mut Vec<TreeFile>) -> Result<(), String> {
        let failed = |e: git2::Error| e.message().to_owned();
        for entry in tree.iter() {
            let name = entry.name_bytes();
            let path = format!("{prefix}{}", String::from_utf8_lossy(name));
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let sub = self.repo.find_tree(entry.id()).map_err(failed)?;
                    self.tree(&sub, &format!("{path}/"), files)?;
                }
                _ if !self.wanted(name) => {}
                Some(ObjectType::Commit) => files.push(TreeFile {
                    path,
                    blob_sha: entry.id().to_string(),
                    size: 0,
                    kind: FileKind::Skipped("submodule".into()),
                }),
                Some(ObjectType::Blob) => {
                    let id = entry.id();
                    let (size, _) = self.odb.read_header(id).map_err(failed)?;
                    let size = size as u64;
                    let kind = if entry.filemode() == 0o120000 {
                        FileKind::Skipped("symlink".into())
                    } else if size > self.max_bytes {
                        FileKind::Skipped(format!("too large ({size} bytes)"))
                    } else if let Some(kind) = self
                        .known
                        .get(&id.to_string())
                        .filter(|_| std::str::from_utf8(name).is_ok())
                    {
                        kind.clone()
                    } else {
                        let blob = self.repo.find_blob(id).map_err(failed)?;
                        match std::str::from_utf8(blob.content()) {
                            Err(_) => FileKind::Skipped("not UTF-8".into()),
                            Ok(_) if std::str::from_utf8(name).is_err() => {
                                FileKind::Skipped("not UTF-8".into())
                            }
                            Ok(text) if is_index(text) => FileKind::Index,
                            Ok(_) => FileKind::Rule,
                        }
                    };
                    files.push(TreeFile {
                        path,
                        blob_sha: id.to_string(),
                        size,
                        kind,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn wanted(&self, name: &[u8]) -> bool {
        let name = name.to_ascii_lowercase();
        self.extensions.iter().any(|e| name.ends_with(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::testing::{Upstream, git};

    fn yar() -> Vec<String> {
        vec![".yar".into(), ".yara".into()]
    }

    fn kinds(files: &[TreeFile]) -> Vec<(&str, FileKind)> {
        files
            .iter()
            .map(|f| (f.path.as_str(), f.kind.clone()))
            .collect()
    }

    #[test]
    fn known_blobs_are_not_read_again() {
        let (mirror, commit) = Upstream::mirror_of(&[
            ("a.yar", b"rule a { condition: true }\n"),
            ("b.yar", b"rule b { condition: true }\n"),
        ]);
        let first = rule_files(mirror.path(), &commit, &yar(), 1 << 20).unwrap();
        assert!(first.iter().all(|f| f.kind == FileKind::Rule));
        // A kind recorded for a blob is trusted as it is: the blob is not read to find it.
        let known = HashMap::from([(first[0].blob_sha.clone(), FileKind::Index)]);
        let again = rule_files_known(mirror.path(), &commit, &yar(), 1 << 20, &known).unwrap();
        assert_eq!(again[0].kind, FileKind::Index);
        assert_eq!(again[1].kind, FileKind::Rule);
    }

    #[test]
    fn lists_rule_files_with_their_kind_sorted_by_path() {
        let crlf = "rule one {\r\n  condition: true\r\n}";
        let index = "// all rules\ninclude \"A.YAR\"\n/* more\n*/\n\n  include \"b.yara\" // b\n";
        let (mirror, commit) = Upstream::mirror_of(&[
            ("A.YAR", b"rule a { condition: true }\n"),
            ("b.yara", b"rule b { condition: true }\n"),
            ("notes.txt", b"not a rule"),
            ("big.yar", &[b'a'; 2000]),
            ("bin.yar", &[0xff, 0xfe, 0x00, 0x41]),
            ("index.yar", index.as_bytes()),
            (
                "mixed.yar",
                b"include \"b.yara\"\nrule m { condition: true }\n",
            ),
            ("Old (2019) rules/with space.yar", crlf.as_bytes()),
            ("dir.yar/inner.Yara", b"rule i { condition: true }\n"),
        ]);
        let files = rule_files(mirror.path(), &commit, &yar(), 1000).unwrap();
        assert_eq!(
            kinds(&files),
            vec![
                ("A.YAR", FileKind::Rule),
                ("Old (2019) rules/with space.yar", FileKind::Rule),
                ("b.yara", FileKind::Rule),
                (
                    "big.yar",
                    FileKind::Skipped("too large (2000 bytes)".into())
                ),
                ("bin.yar", FileKind::Skipped("not UTF-8".into())),
                ("dir.yar/inner.Yara", FileKind::Rule),
                ("index.yar", FileKind::Index),
                ("mixed.yar", FileKind::Rule),
            ]
        );
        let spaced = &files[1];
        assert_eq!(spaced.size, crlf.len() as u64);
        assert_eq!(read_text(mirror.path(), &spaced.blob_sha).unwrap(), crlf);
        assert!(read_text(mirror.path(), &files[4].blob_sha).is_err());
    }

    #[test]
    fn symlinks_and_submodules_are_skipped() {
        let upstream = Upstream::new();
        upstream
            .write("real.yar", "rule r { condition: true }\n")
            .symlink("link.yar", "real.yar")
            .symlink("escape.yar", "/etc/passwd");
        let first = upstream.commit("files");
        let gitlink = format!("160000,{first},vendor.yar");
        git(
            &upstream.dir(),
            &["update-index", "--add", "--cacheinfo", &gitlink],
        );
        git(&upstream.dir(), &["commit", "-q", "-m", "submodule"]);
        let commit = git(&upstream.dir(), &["rev-parse", "HEAD"]);
        let mirror = tempfile::tempdir().unwrap();
        crate::sources::fetch_branch(
            mirror.path(),
            &upstream.file_url(),
            &crate::sources::testing::no_auth(),
            "main",
            &crate::sources::testing::limits(),
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
        let files = rule_files(mirror.path(), &commit, &yar(), 1 << 20).unwrap();
        assert_eq!(
            kinds(&files),
            vec![
                ("escape.yar", FileKind::Skipped("symlink".into())),
                ("link.yar", FileKind::Skipped("symlink".into())),
                ("real.yar", FileKind::Rule),
                ("vendor.yar", FileKind::Skipped("submodule".into())),
            ]
        );
        assert_eq!(files[3].blob_sha, first);
    }

    #[test]
    fn extensions_are_configurable_with_or_without_the_dot() {
        let (mirror, commit) = Upstream::mirror_of(&[
            ("x.rule", b"rule x { condition: true }\n"),
            ("y.RULE", b"rule y { condition: true }\n"),
            ("z.yar", b"rule z { condition: true }\n"),
            ("capsule", b"no extension\n"),
        ]);
        for extensions in [vec!["rule".to_owned()], vec![".Rule".to_owned()]] {
            let files = rule_files(mirror.path(), &commit, &extensions, 1000).unwrap();
            let paths: Vec<_> = files.iter().map(|f| f.path.as_str()).collect();
            assert_eq!(paths, ["x.rule", "y.RULE"]);
        }
    }

    #[test]
    fn an_unknown_commit_is_an_error() {
        let (mirror, _) = Upstream::mirror_of(&[("a.yar", b"rule a { condition: true }\n")]);
        let missing = "0123456789012345678901234567890123456789";
        assert!(rule_files(mirror.path(), missing, &yar(), 1000).is_err());
        assert!(rule_files(mirror.path(), "main", &yar(), 1000).is_err());
    }

    #[test]
    fn the_mandiant_bundle_has_173_rule_files() {
        let bundle =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/mandiant-rtcm.bundle");
        if !bundle.exists() {
            eprintln!("skipped: {} is absent", bundle.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bundle = bundle.display().to_string();
        git(dir.path(), &["clone", "-q", "--bare", &bundle, "mirror"]);
        let mirror = dir.path().join("mirror");
        let commit = git(&mirror, &["rev-parse", "HEAD"]);
        let files = rule_files(&mirror, &commit, &yar(), 1 << 20).unwrap();
        let yar_files = files.iter().filter(|f| f.path.ends_with(".yar")).count();
        assert_eq!(yar_files, 173);
        assert!(files.iter().any(|f| f.path.contains(' ')));
        assert!(files.iter().all(|f| f.kind == FileKind::Rule), "{files:?}");
    }
}
