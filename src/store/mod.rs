//! Persistence: the [`Store`] trait, with SQLite and PostgreSQL backends.
//!
//! Both backends share one SQL text through `sqlx::Any` (flags and timestamps are integers,
//! placeholders are `$n`); each backend owns its connection setup and its migrations folder.
//! The store returns domain types, never rows, and must not import `http`.

mod imports;
mod migrations;
mod nodes;
mod postgres;
mod rulesets;
mod samples;
mod sql;
mod sqlite;

use async_trait::async_trait;

use crate::domain::{
    FileRecord, GenerationMember, ImportApplied, ImportBatch, MatchStats, Member, NewRepository,
    NewRevision, RepoOutcome, Repository, RepositoryFilter, Revision, Ruleset, Sample,
    SavedRevision, ScannedSample, StoredGeneration, UpdateRun, User, Username,
};

pub use nodes::{GENERATION_CHANNEL, NodeBeat};
pub use sql::SqlStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Setup(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A page of a list and the total number of items.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub count: i64,
    pub items: Vec<T>,
}

/// What makes a new repository clash with stored ones (API.md 2: unique name, unique url+branch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepositoryClash {
    pub name_taken: bool,
    pub url_and_branch_taken: bool,
}

/// A system repository as configuration declares it, already parsed.
pub type SystemRepositorySpec = NewRepository;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// A trivial round trip, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    async fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()>;
    /// Stores the value only when the key is absent; returns the value now stored.
    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String>;

    async fn user_count(&self) -> StoreResult<i64>;
    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        superuser: bool,
    ) -> StoreResult<User>;
    /// The user and its password hash.
    async fn user_with_password(&self, username: &str) -> StoreResult<Option<(User, String)>>;
    async fn create_token(&self, user_id: i64, token_hash: &str, label: &str) -> StoreResult<()>;
    async fn user_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<User>>;

    async fn list_repositories(
        &self,
        filter: RepositoryFilter,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Page<Repository>>;
    async fn repository(&self, id: i64) -> StoreResult<Option<Repository>>;
    async fn repository_clash(
        &self,
        new: &NewRepository,
        except_id: Option<i64>,
    ) -> StoreResult<RepositoryClash>;
    async fn insert_repository(&self, new: &NewRepository) -> StoreResult<i64>;
    async fn update_repository(&self, id: i64, new: &NewRepository) -> StoreResult<()>;
    /// Deletes a repository; its rulesets are deleted too (`remove_rulesets`) or stay as local
    /// rulesets owned by `owner_id`. Returns how many rulesets were touched.
    async fn delete_repository(
        &self,
        id: i64,
        remove_rulesets: bool,
        owner_id: Option<i64>,
    ) -> StoreResult<i64>;
    /// Makes the stored system repositories equal to configuration: adds the new ones, updates
    /// the known ones (matched by URL and branch), removes those configuration dropped.
    /// Returns the names that could not be added because a custom repository holds the name.
    async fn sync_system_repositories(
        &self,
        repos: &[SystemRepositorySpec],
    ) -> StoreResult<Vec<String>>;

    /// Every ruleset, by name, with its latest revision's validity and rule count.
    async fn rulesets(&self) -> StoreResult<Vec<Ruleset>>;
    async fn ruleset(&self, name: &str) -> StoreResult<Option<Ruleset>>;
    /// Stores a revision in one transaction (creating the ruleset when the name is new); content
    /// equal to the latest revision's creates nothing.
    async fn save_revision(&self, new: &NewRevision) -> StoreResult<SavedRevision>;
    async fn revision(&self, ruleset_id: i64, number: i64) -> StoreResult<Option<Revision>>;
    async fn revisions(
        &self,
        ruleset_id: i64,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Page<Revision>>;
    async fn delete_ruleset(&self, id: i64) -> StoreResult<()>;
    async fn set_ruleset_enabled(&self, id: i64, enabled: bool) -> StoreResult<()>;
    /// Sets the published revision of each (ruleset id, revision number), in one transaction.
    async fn publish(&self, picks: &[(i64, i64)]) -> StoreResult<()>;
    /// The published, valid revisions of enabled rulesets: what the next generation holds.
    async fn active_members(&self) -> StoreResult<Vec<Member>>;
    /// The texts of the given revisions (to recompile a stored generation).
    async fn members_by_revision(&self, revision_ids: &[i64]) -> StoreResult<Vec<Member>>;
    async fn insert_generation(
        &self,
        members: &[GenerationMember],
        failed: &[(i64, String)],
        engine_version: &str,
        artifact: Option<&[u8]>,
    ) -> StoreResult<i64>;
    async fn latest_generation(&self) -> StoreResult<Option<StoredGeneration>>;

    /// A repository's file index (a window of it, or all of it).
    async fn repository_files(
        &self,
        repository_id: i64,
        window: Option<(i64, i64)>,
    ) -> StoreResult<Page<FileRecord>>;
    /// Stores one repository's update in one transaction.
    async fn apply_import(&self, batch: &ImportBatch) -> StoreResult<ImportApplied>;
    async fn set_sync_state(
        &self,
        repository_id: i64,
        state: &str,
        error: Option<&str>,
    ) -> StoreResult<()>;

    async fn insert_run(&self, node: &str, trigger: &str, total: i64) -> StoreResult<i64>;
    async fn record_run_repository(&self, run_id: i64, outcome: &RepoOutcome) -> StoreResult<()>;
    async fn finish_run(&self, run_id: i64, state: &str) -> StoreResult<()>;
    /// Marks the runs a node left `running` (it crashed) as `interrupted`.
    async fn interrupt_runs_of(&self, node: &str) -> StoreResult<u64>;
    async fn runs(&self, offset: i64, limit: i64) -> StoreResult<Page<UpdateRun>>;
    async fn run(&self, id: i64) -> StoreResult<Option<(UpdateRun, Vec<RepoOutcome>)>>;

    /// Takes a lease when free or lapsed: `None` when someone else holds it, else the run id
    /// the lapsed lease named (a run cut short).
    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        run_id: Option<i64>,
        expires_at: i64,
    ) -> StoreResult<Option<Option<i64>>>;
    async fn set_lease_run(&self, name: &str, holder: &str, run_id: i64) -> StoreResult<()>;
    /// Extends every lease this holder has; returns how many it still had.
    async fn renew_leases(&self, holder: &str, expires_at: i64) -> StoreResult<u64>;
    /// Releases the leases a node's earlier process left (it restarted).
    async fn release_leases_of_node(&self, node: &str) -> StoreResult<u64>;
    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()>;

    /// Records scanned samples and the rules that matched them, in order, in one transaction. A
    /// ruleset that matched more than `cap` samples in the `window_ms` before a scan becomes
    /// capped (and records nothing more); the ids of those capped now are returned.
    async fn record_scans(
        &self,
        scans: &[ScannedSample],
        cap: i64,
        window_ms: i64,
    ) -> StoreResult<Vec<i64>>;
    /// Per ruleset: distinct matching samples per classification, and the last match.
    async fn match_stats(&self) -> StoreResult<std::collections::HashMap<i64, MatchStats>>;
    /// The number and creation time of the newest generation, if any (without its artifact).
    async fn latest_generation_head(&self) -> StoreResult<Option<(i64, crate::domain::Timestamp)>>;
    /// Tells the other nodes a generation was stored (PostgreSQL `NOTIFY`; nothing on SQLite).
    async fn notify_generation(&self, number: i64) -> StoreResult<()>;
    /// This node's heartbeat, with the generation it serves.
    async fn heartbeat(&self, name: &str, generation: Option<i64>) -> StoreResult<()>;
    async fn nodes(&self) -> StoreResult<Vec<NodeBeat>>;

    /// Samples that matched every one of the rulesets, newest first.
    async fn samples_matching_all(
        &self,
        ruleset_ids: &[i64],
        window: Option<(i64, i64)>,
    ) -> StoreResult<Page<Sample>>;
}

/// Opens the store the settings name, creating the data directory and applying migrations.
pub async fn open(settings: &crate::config::Settings) -> StoreResult<SqlStore> {
    use secrecy::ExposeSecret;
    sqlx::any::install_default_drivers();
    match &settings.database_url {
        Some(url) if url.expose_secret().starts_with("postgres") => {
            postgres::open(url.expose_secret()).await
        }
        Some(url) => {
            let path = url
                .expose_secret()
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            sqlite::open(std::path::Path::new(path)).await
        }
        None => {
            std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
                StoreError::Setup(format!(
                    "cannot create the data directory {}: {e}",
                    settings.data_dir.display()
                ))
            })?;
            sqlite::open(&settings.sqlite_path()).await
        }
    }
}
