//! Imports from repositories and update runs: the file index, the batch one repository's update
//! stores, and the per-repository outcome a run records.

use serde::{Deserialize, Serialize};

use super::{NewRevision, Timestamp};

/// The state of a rule file in a repository's file index (API.md 2, ext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Imported,
    Available,
    Index,
    Skipped,
    RemovedUpstream,
}

impl FileState {
    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Imported => "imported",
            FileState::Available => "available",
            FileState::Index => "index",
            FileState::Skipped => "skipped",
            FileState::RemovedUpstream => "removed_upstream",
        }
    }

    pub fn parse(raw: &str) -> Self {
        match raw {
            "imported" => FileState::Imported,
            "index" => FileState::Index,
            "skipped" => FileState::Skipped,
            "removed_upstream" => FileState::RemovedUpstream,
            _ => FileState::Available,
        }
    }
}

/// One row of a repository's file index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub blob_sha: String,
    pub ruleset_id: Option<i64>,
    /// The ruleset's name, when listed.
    pub ruleset: Option<String>,
    pub state: FileState,
    pub reason: Option<String>,
}

/// Everything one repository's update stores, in one transaction.
#[derive(Debug, Clone)]
pub struct ImportBatch {
    pub repository_id: i64,
    pub commit: String,
    pub revisions: Vec<NewRevision>,
    /// The whole new file index; `ruleset` names a ruleset the batch creates, resolved to its id.
    pub files: Vec<FileRecord>,
    /// Rulesets whose file was removed upstream: disabled and marked.
    pub disable: Vec<i64>,
    /// Rulesets whose file came back: enabled again.
    pub reenable: Vec<i64>,
}

/// What storing a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportApplied {
    pub rulesets_created: i64,
    pub revisions_created: i64,
    pub invalid_revisions: i64,
    pub published: i64,
}

/// The outcome of one repository in an update run or an explicit import (BEHAVIOUR.md 5).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoOutcome {
    pub repository: i64,
    pub name: String,
    pub commit_before: Option<String>,
    pub commit_after: Option<String>,
    pub files_added: i64,
    pub files_changed: i64,
    pub files_removed: i64,
    pub rulesets_created: i64,
    pub revisions_created: i64,
    pub invalid_revisions: i64,
    pub rule_files: i64,
    pub skipped_files: i64,
    pub unchanged: bool,
    pub duration_ms: i64,
    pub error: Option<String>,
}

/// One execution of the update job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateRun {
    pub id: i64,
    pub node: String,
    pub trigger: String,
    pub state: String,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub repositories_total: i64,
    pub repositories_done: i64,
}
