//! Importing one repository (BEHAVIOUR.md 2): a reference check, an incremental fetch into the
//! repository's mirror, the commit's tree read without a work tree, only changed blobs read and
//! validated, and everything stored in one transaction.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use super::naming;
use crate::config::Settings;
use crate::domain::{
    Author, Diagnostic, FileRecord, FileState, ImportBatch, ImportPreference, NewRevision, Origin,
    RepoOutcome, Repository, ValidationOutcome,
};
use crate::rulesets::{Rulesets, sha256_hex};
use crate::secrets::SecretBox;
use crate::sources::fetch::{FetchLimits, fetch_branch};
use crate::sources::includes::inline_includes;
use crate::sources::tree::{FileKind, read_text, rule_files_known};
use crate::sources::{RemoteAuth, probe_remote};
use crate::store::Store;

/// What an import does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportMode {
    /// The update job: preference 1 updates imported files, preference 2 imports new ones too.
    Update,
    /// An explicit import: the given paths, or every rule file.
    Import { paths: Option<Vec<String>> },
}

/// Why an import did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportFailure {
    /// Paths asked for that the commit does not have.
    UnknownPaths(Vec<String>),
    /// The upstream could not be reached, refused, timed out, or its content could not be read.
    Upstream,
    /// Storage failed.
    Internal,
}

pub struct Importer {
    pub store: Arc<dyn Store>,
    pub rulesets: Arc<Rulesets>,
    pub secrets: Arc<SecretBox>,
    pub settings: Arc<Settings>,
    /// Set on shutdown: stops transfers.
    pub cancel: Arc<AtomicBool>,
}

type Step<T> = Result<T, (String, ImportFailure)>;

fn upstream<E: std::fmt::Display>(e: E) -> (String, ImportFailure) {
    (e.to_string(), ImportFailure::Upstream)
}

impl Importer {
    pub fn mirror_path(&self, repository_id: i64) -> PathBuf {
        self.settings
            .data_dir
            .join("mirrors")
            .join(format!("{repository_id}.git"))
    }

    /// Deletes a repository's mirror (after the repository is deleted).
    pub fn forget(&self, repository_id: i64) {
        let _ = std::fs::remove_dir_all(self.mirror_path(repository_id));
    }

    /// Imports `repo`; the outcome is what an update run records for it.
    pub async fn run(
        &self,
        repo: &Repository,
        mode: ImportMode,
    ) -> Result<RepoOutcome, (RepoOutcome, ImportFailure)> {
        let started = Instant::now();
        let mut outcome = RepoOutcome {
            repository: repo.id,
            name: repo.name.clone(),
            commit_before: repo.sync.commit.clone(),
            ..RepoOutcome::default()
        };
        let result = self.import(repo, &mode, &mut outcome).await;
        outcome.duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        match result {
            Ok(()) => Ok(outcome),
            Err((message, kind)) => {
                tracing::warn!(repository = repo.id, error = %message, "import failed");
                if let Err(e) = self
                    .store
                    .set_sync_state(repo.id, "error", Some(&message))
                    .await
                {
                    tracing::error!(error = %e, "cannot record the failure of an import");
                }
                outcome.error = Some(message);
                Err((outcome, kind))
            }
        }
    }

    fn auth(&self, repo: &Repository) -> Step<RemoteAuth> {
        let token: Option<SecretString> = match &repo.token_ciphertext {
            Some(sealed) => Some(self.secrets.open(sealed).map_err(|_| {
                (
                    "the stored access token cannot be decrypted with this node's key".to_owned(),
                    ImportFailure::Internal,
                )
            })?),
            None => None,
        };
        Ok(RemoteAuth {
            username: repo.source_type.token_username(),
            token,
        })
    }

    async fn import(
        &self,
        repo: &Repository,
        mode: &ImportMode,
        outcome: &mut RepoOutcome,
    ) -> Step<()> {
        let connect_timeout = Duration::from_secs(self.settings.connect_timeout_seconds);
        let fetch_timeout = Duration::from_secs(self.settings.fetch_timeout_seconds);
        // A run in which nothing changed costs a reference check.
        if *mode == ImportMode::Update && repo.sync.commit.is_some() {
            let auth = self.auth(repo)?;
            let (url, branch) = (repo.url.clone(), repo.source_branch.clone());
            let probe = tokio::task::spawn_blocking(move || {
                probe_remote(&url, &auth, Some(&branch), connect_timeout)
            });
            let tested = tokio::time::timeout(connect_timeout + Duration::from_secs(1), probe)
                .await
                .map_err(|_| {
                    upstream(format!(
                        "the remote did not answer within {} seconds",
                        connect_timeout.as_secs()
                    ))
                })?
                .map_err(upstream)?
                .map_err(upstream)?;
            if Some(&tested.commit) == repo.sync.commit.as_ref() {
                outcome.unchanged = true;
                outcome.commit_after = Some(tested.commit);
                self.store
                    .set_sync_state(repo.id, "fetched", None)
                    .await
                    .map_err(|e| (e.to_string(), ImportFailure::Internal))?;
                return Ok(());
            }
        }

        let mirror = self.mirror_path(repo.id);
        // This node holds the repository's lease: lock files in its mirror are left by a
        // process that died mid-fetch (kill -9), and would refuse every later fetch.
        clear_stale_locks(&mirror);
        let auth = self.auth(repo)?;
        let limits = FetchLimits {
            timeout: fetch_timeout,
            max_bytes: self.settings.max_repository_bytes,
        };
        let (url, branch, cancel) = (
            repo.url.clone(),
            repo.source_branch.clone(),
            self.cancel.clone(),
        );
        let mirror_for_fetch = mirror.clone();
        let fetch = tokio::task::spawn_blocking(move || {
            fetch_branch(&mirror_for_fetch, &url, &auth, &branch, &limits, &cancel)
        });
        let fetched = tokio::time::timeout(fetch_timeout + Duration::from_secs(5), fetch)
            .await
            .map_err(|_| {
                upstream(format!(
                    "the fetch did not finish within {} seconds",
                    fetch_timeout.as_secs()
                ))
            })?
            .map_err(upstream)?
            .map_err(upstream)?;
        let commit = fetched.commit;
        outcome.commit_after = Some(commit.clone());

        let stored: HashMap<String, FileRecord> = self
            .store
            .repository_files(repo.id, None)
            .await
            .map_err(|e| (e.to_string(), ImportFailure::Internal))?
            .items
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        // What the last import learnt of each blob: unchanged blobs are not read again.
        let known: HashMap<String, FileKind> = stored
            .values()
            .filter_map(|f| {
                let kind = match f.state {
                    FileState::Index => FileKind::Index,
                    FileState::Skipped if f.reason.as_deref() == Some("not UTF-8") => {
                        FileKind::Skipped("not UTF-8".into())
                    }
                    FileState::Skipped => return None,
                    _ => FileKind::Rule,
                };
                Some((f.blob_sha.clone(), kind))
            })
            .collect();
        let extensions = self.settings.rule_extensions.clone();
        let max_bytes = self.settings.max_ruleset_bytes;
        let (mirror_c, commit_c) = (mirror.clone(), commit.clone());
        let files = tokio::task::spawn_blocking(move || {
            rule_files_known(&mirror_c, &commit_c, &extensions, max_bytes, &known)
        })
        .await
        .map_err(upstream)?
        .map_err(upstream)?;

        let plan = self.plan(repo, mode, &files, stored, outcome).await?;
        let revisions = self
            .validate_all(repo, &mirror, &commit, plan.to_read)
            .await?;
        let batch = ImportBatch {
            repository_id: repo.id,
            commit,
            revisions,
            files: plan.entries,
            disable: plan.disable,
            reenable: plan.reenable,
        };
        let activation_needed = !batch.disable.is_empty() || !batch.reenable.is_empty();
        let applied = self
            .store
            .apply_import(&batch)
            .await
            .map_err(|e| (e.to_string(), ImportFailure::Internal))?;
        outcome.rulesets_created = applied.rulesets_created;
        outcome.revisions_created = applied.revisions_created;
        outcome.invalid_revisions = applied.invalid_revisions;
        if applied.published > 0 || activation_needed {
            self.rulesets.activator().request();
        }
        Ok(())
    }
}

fn clear_stale_locks(mirror: &std::path::Path) {
    let mut stack = vec![mirror.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "lock") {
                tracing::warn!(path = %path.display(), "removing a lock left by a dead fetch");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// A file to read and validate: (path, blob, ruleset name).
struct ToRead {
    path: String,
    blob_sha: String,
    name: crate::domain::RulesetName,
    /// An unchanged file read again for what it includes: dropped if it includes nothing.
    only_if_includes: bool,
}

struct Plan {
    entries: Vec<FileRecord>,
    to_read: Vec<ToRead>,
    disable: Vec<i64>,
    reenable: Vec<i64>,
}

impl Importer {
    /// Decides, per file of the new tree, what the index says and what must be read.
    async fn plan(
        &self,
        repo: &Repository,
        mode: &ImportMode,
        files: &[crate::sources::tree::TreeFile],
        stored: HashMap<String, FileRecord>,
        outcome: &mut RepoOutcome,
    ) -> Step<Plan> {
        let internal = |e: crate::store::StoreError| (e.to_string(), ImportFailure::Internal);
        let all = self.store.rulesets().await.map_err(internal)?;
        let mut taken: HashSet<String> = all.iter().map(|r| r.name.clone()).collect();
        let names: HashMap<i64, String> = all.into_iter().map(|r| (r.id, r.name)).collect();

        let asked: Option<HashSet<&str>> = match mode {
            ImportMode::Import { paths: Some(paths) } => {
                let present: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
                let unknown: Vec<String> = paths
                    .iter()
                    .filter(|p| !present.contains(p.as_str()))
                    .cloned()
                    .collect();
                if !unknown.is_empty() {
                    return Err((
                        format!(
                            "not rule files of the repository at this commit: {}",
                            unknown.join(", ")
                        ),
                        ImportFailure::UnknownPaths(unknown),
                    ));
                }
                Some(paths.iter().map(String::as_str).collect())
            }
            _ => None,
        };
        let import_new = match mode {
            ImportMode::Import { paths } => paths.is_none(),
            ImportMode::Update => repo.import_update_preferences == ImportPreference::AutoImport,
        };

        let mut plan = Plan {
            entries: Vec::new(),
            to_read: Vec::new(),
            disable: Vec::new(),
            reenable: Vec::new(),
        };
        let present: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        // Any file added, changed or removed may be one that an unchanged rule file includes.
        let tree_changed = files
            .iter()
            .any(|f| stored.get(&f.path).is_none_or(|p| p.blob_sha != f.blob_sha))
            || stored.keys().any(|path| !present.contains(path.as_str()));
        for file in files {
            let previous = stored.get(&file.path);
            match previous {
                None => outcome.files_added += 1,
                Some(p) if p.blob_sha != file.blob_sha || p.state == FileState::RemovedUpstream => {
                    outcome.files_changed += 1
                }
                Some(_) => {}
            }
            let record = |state: FileState,
                          ruleset_id: Option<i64>,
                          ruleset: Option<String>,
                          reason: Option<String>| FileRecord {
                path: file.path.clone(),
                blob_sha: file.blob_sha.clone(),
                ruleset_id,
                ruleset,
                state,
                reason,
            };
            match &file.kind {
                FileKind::Index => plan.entries.push(record(
                    FileState::Index,
                    None,
                    None,
                    Some("made only of include lines".into()),
                )),
                FileKind::Skipped(reason) => {
                    outcome.skipped_files += 1;
                    plan.entries
                        .push(record(FileState::Skipped, None, None, Some(reason.clone())));
                }
                FileKind::Rule => {
                    outcome.rule_files += 1;
                    let mapped = previous
                        .and_then(|p| p.ruleset_id)
                        .filter(|id| names.contains_key(id));
                    let wanted = mapped.is_some()
                        || import_new
                        || asked
                            .as_ref()
                            .is_some_and(|a| a.contains(file.path.as_str()));
                    if !wanted {
                        plan.entries
                            .push(record(FileState::Available, None, None, None));
                        continue;
                    }
                    let came_back = previous.is_some_and(|p| p.state == FileState::RemovedUpstream);
                    if let (Some(id), true) = (mapped, came_back) {
                        plan.reenable.push(id);
                    }
                    let same_blob = previous.is_some_and(|p| p.blob_sha == file.blob_sha);
                    if let (Some(id), true) = (mapped, same_blob) {
                        plan.entries
                            .push(record(FileState::Imported, Some(id), None, None));
                        if tree_changed {
                            // The file is the same, but what it includes may not be: it is read
                            // again, and kept only if it has includes (a text that comes out
                            // the same as its latest revision makes no new one).
                            plan.to_read.push(ToRead {
                                path: file.path.clone(),
                                blob_sha: file.blob_sha.clone(),
                                name: crate::domain::RulesetName::parse(&names[&id])
                                    .map_err(|e| (e, ImportFailure::Internal))?,
                                only_if_includes: true,
                            });
                        }
                        continue;
                    }
                    let name = match mapped {
                        Some(id) => crate::domain::RulesetName::parse(&names[&id])
                            .map_err(|e| (e, ImportFailure::Internal))?,
                        None => {
                            let name = naming::allocate(&file.path, &repo.name, &taken);
                            taken.insert(name.as_str().to_owned());
                            name
                        }
                    };
                    plan.entries.push(record(
                        FileState::Imported,
                        mapped,
                        Some(name.as_str().to_owned()),
                        None,
                    ));
                    plan.to_read.push(ToRead {
                        path: file.path.clone(),
                        blob_sha: file.blob_sha.clone(),
                        name,
                        only_if_includes: false,
                    });
                }
            }
        }
        for (path, previous) in &stored {
            if present.contains(path.as_str()) {
                continue;
            }
            let still_there = previous.ruleset_id.filter(|id| names.contains_key(id));
            if previous.state != FileState::RemovedUpstream {
                outcome.files_removed += 1;
            }
            if let Some(id) = still_there {
                // Kept with its mapping, so the ruleset comes back if the file does.
                if previous.state != FileState::RemovedUpstream {
                    plan.disable.push(id);
                }
                plan.entries.push(FileRecord {
                    state: FileState::RemovedUpstream,
                    ruleset: None,
                    reason: Some("removed upstream".into()),
                    ..previous.clone()
                });
            }
        }
        Ok(plan)
    }

    /// Reads the changed files, inlines their includes from the same commit, validates them
    /// (bounded by the cores) and makes their revisions.
    async fn validate_all(
        &self,
        repo: &Repository,
        mirror: &std::path::Path,
        commit: &str,
        to_read: Vec<ToRead>,
    ) -> Step<Vec<NewRevision>> {
        let (mirror_c, commit_c) = (mirror.to_owned(), commit.to_owned());
        let texts = tokio::task::spawn_blocking(
            move || -> Result<Vec<(ToRead, String, Vec<Diagnostic>)>, String> {
                let mut texts = Vec::with_capacity(to_read.len());
                for f in to_read {
                    let raw = read_text(&mirror_c, &f.blob_sha)?;
                    let inlined = inline_includes(&mirror_c, &commit_c, &f.path, &raw);
                    if f.only_if_includes && !inlined.has_includes {
                        continue;
                    }
                    let problems = inlined
                        .problems
                        .iter()
                        .map(|p| Diagnostic {
                            severity: "error".into(),
                            code: "include".into(),
                            message: p.message.clone(),
                            line: Some(p.line),
                            column: Some(1),
                        })
                        .collect();
                    texts.push((f, inlined.text, problems));
                }
                Ok(texts)
            },
        )
        .await
        .map_err(upstream)?
        .map_err(upstream)?;

        let mut tasks = tokio::task::JoinSet::new();
        for (index, (file, text, problems)) in texts.into_iter().enumerate() {
            let rulesets = self.rulesets.clone();
            tasks.spawn(async move {
                let outcome = rulesets.validate(file.name.as_str(), text.clone()).await;
                (index, file, text, problems, outcome)
            });
        }
        let mut done = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (index, file, text, problems, outcome) = joined.map_err(upstream)?;
            let mut outcome: ValidationOutcome =
                outcome.map_err(|e| (e.to_string(), ImportFailure::Internal))?;
            if !problems.is_empty() {
                outcome.valid = false;
                let mut all = problems;
                all.append(&mut outcome.diagnostics);
                outcome.diagnostics = all;
            }
            done.push((
                index,
                NewRevision {
                    name: file.name,
                    owner_id: repo.user_id,
                    origin: Origin::Repository {
                        id: repo.id,
                        path: file.path,
                    },
                    is_system: !repo.is_custom,
                    sha256: sha256_hex(&text),
                    content: text,
                    author: Author::Repository {
                        id: repo.id,
                        commit: commit.to_owned(),
                    },
                    outcome,
                    publish_if_valid: !self.rulesets.yara_sync(),
                },
            ));
        }
        done.sort_by_key(|(i, _)| *i);
        Ok(done.into_iter().map(|(_, r)| r).collect())
    }
}
