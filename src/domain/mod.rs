//! Types that parse, not validate: once a value of these types exists it is known good.
//!
//! No I/O here, and nothing from `http`, `store` or `sources`.

pub mod import;
pub mod repository;
pub mod ruleset;
pub mod sample;
pub mod time;
pub mod user;

pub use import::{FileRecord, FileState, ImportApplied, ImportBatch, RepoOutcome, UpdateRun};
pub use repository::{
    Branch, ImportPreference, NewRepository, RepoUrl, Repository, RepositoryFilter, RepositoryName,
    SourceType, SyncState,
};
pub use ruleset::{
    Author, Diagnostic, GenerationMember, Member, NewRevision, Origin, Revision, Ruleset,
    RulesetName, RulesetStatus, SavedRevision, StoredGeneration, ValidationOutcome,
};
pub use sample::{MatchRecord, MatchStats, Sample, ScannedSample};
pub use time::Timestamp;
pub use user::{User, Username};
