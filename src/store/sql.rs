//! The SQL shared by both backends, run through `sqlx::Any`.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use super::{Backend, Page, RepositoryClash, Store, StoreError, StoreResult, SystemRepositorySpec};
use crate::domain::{
    FileRecord, GenerationMember, ImportApplied, ImportBatch, ImportPreference, MatchStats, Member,
    NewRepository, NewRevision, RepoOutcome, Repository, RepositoryFilter, Revision, Ruleset,
    Sample, SavedRevision, ScannedSample, SourceType, StoredGeneration, SyncState, Timestamp,
    UpdateRun, User, Username,
};

#[derive(Clone)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// Serialises multi-statement writes on SQLite, which has one writer anyway.
    sqlite_writer: Arc<tokio::sync::Mutex<()>>,
}

impl SqlStore {
    pub(super) fn new(pool: AnyPool, backend: Backend) -> Self {
        SqlStore {
            pool,
            backend,
            sqlite_writer: Arc::default(),
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub(super) async fn write_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.sqlite_writer.lock().await),
            Backend::Postgres => None,
        }
    }
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn user_from_row(row: &AnyRow) -> StoreResult<User> {
    Ok(User {
        id: row.try_get("id")?,
        username: row.try_get("username")?,
        is_superuser: row.try_get::<i64, _>("is_superuser")? != 0,
        is_active: row.try_get::<i64, _>("is_active")? != 0,
    })
}

const REPOSITORY_COLUMNS: &str = "id, url, name, source_branch, source_type, token_ciphertext, \
     import_update_preferences, is_custom, user_id, created_at, last_modified, sync_commit, \
     sync_fetched_at, sync_error, sync_state";

fn repository_from_row(row: &AnyRow) -> StoreResult<Repository> {
    let preference: i64 = row.try_get("import_update_preferences")?;
    Ok(Repository {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        name: row.try_get("name")?,
        source_branch: row.try_get("source_branch")?,
        source_type: SourceType::from_code(row.try_get("source_type")?),
        token_ciphertext: row.try_get("token_ciphertext")?,
        import_update_preferences: ImportPreference::from_code(preference)
            .unwrap_or(ImportPreference::Manual),
        is_custom: row.try_get::<i64, _>("is_custom")? != 0,
        user_id: row.try_get("user_id")?,
        created_at: Timestamp(row.try_get("created_at")?),
        last_modified: Timestamp(row.try_get("last_modified")?),
        sync: SyncState {
            commit: row.try_get("sync_commit")?,
            fetched_at: row
                .try_get::<Option<i64>, _>("sync_fetched_at")?
                .map(Timestamp),
            error: row.try_get("sync_error")?,
            state: row.try_get("sync_state")?,
        },
    })
}

/// Maps a unique-constraint violation to [`StoreError::Conflict`].
fn conflict_or(err: sqlx::Error, what: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(what.to_owned())
        }
        _ => StoreError::Database(err),
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.backend
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("value")?),
            None => None,
        })
    }

    async fn put_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<String> {
        sqlx::query(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.pool)
        .await?;
        self.setting(key).await?.ok_or(StoreError::NotFound)
    }

    async fn user_count(&self) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        superuser: bool,
    ) -> StoreResult<User> {
        let row = sqlx::query(
            "INSERT INTO users (username, password_hash, is_superuser, is_active, created_at) \
             VALUES ($1, $2, $3, 1, $4) RETURNING id, username, is_superuser, is_active",
        )
        .bind(username.as_str())
        .bind(password_hash)
        .bind(flag(superuser))
        .bind(Timestamp::now().millis())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| conflict_or(e, "a user with that name already exists"))?;
        user_from_row(&row)
    }

    async fn user_with_password(&self, username: &str) -> StoreResult<Option<(User, String)>> {
        let row = sqlx::query(
            "SELECT id, username, is_superuser, is_active, password_hash FROM users \
             WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Some((user_from_row(&row)?, row.try_get("password_hash")?))),
            None => Ok(None),
        }
    }

    async fn create_token(&self, user_id: i64, token_hash: &str, label: &str) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_tokens (user_id, token_hash, label, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(token_hash)
        .bind(label)
        .bind(Timestamp::now().millis())
        .execute(&self.pool)
        .await
        .map_err(|e| conflict_or(e, "token collision"))?;
        Ok(())
    }

    async fn user_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(
            "SELECT u.id, u.username, u.is_superuser, u.is_active FROM api_tokens t \
             JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_repositories(
        &self,
        filter: RepositoryFilter,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Page<Repository>> {
        let condition = match filter {
            RepositoryFilter::All => "1 = 1",
            RepositoryFilter::User => "is_custom = 1",
            RepositoryFilter::System => "is_custom = 0",
        };
        let count_sql = format!("SELECT COUNT(*) AS n FROM repositories WHERE {condition}");
        let count: i64 = sqlx::query(&count_sql)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let list_sql = format!(
            "SELECT {REPOSITORY_COLUMNS} FROM repositories WHERE {condition} \
             ORDER BY id LIMIT $1 OFFSET $2"
        );
        let rows = sqlx::query(&list_sql)
            .bind(limit)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let items = rows
            .iter()
            .map(repository_from_row)
            .collect::<StoreResult<_>>()?;
        Ok(Page { count, items })
    }

    async fn repository(&self, id: i64) -> StoreResult<Option<Repository>> {
        let sql = format!("SELECT {REPOSITORY_COLUMNS} FROM repositories WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(repository_from_row).transpose()
    }

    async fn repository_clash(
        &self,
        new: &NewRepository,
        except_id: Option<i64>,
    ) -> StoreResult<RepositoryClash> {
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM repositories WHERE name = $1 AND id <> $4) AS names, \
               (SELECT COUNT(*) FROM repositories \
                  WHERE url = $2 AND source_branch = $3 AND id <> $4) AS urls",
        )
        .bind(new.name.as_str())
        .bind(new.url.as_str())
        .bind(new.source_branch.as_str())
        .bind(except_id.unwrap_or(-1))
        .fetch_one(&self.pool)
        .await?;
        Ok(RepositoryClash {
            name_taken: row.try_get::<i64, _>("names")? > 0,
            url_and_branch_taken: row.try_get::<i64, _>("urls")? > 0,
        })
    }

    async fn insert_repository(&self, new: &NewRepository) -> StoreResult<i64> {
        let now = Timestamp::now().millis();
        let row = sqlx::query(
            "INSERT INTO repositories (url, name, source_branch, source_type, token_ciphertext, \
               import_update_preferences, is_custom, user_id, created_at, last_modified) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING id",
        )
        .bind(new.url.as_str())
        .bind(new.name.as_str())
        .bind(new.source_branch.as_str())
        .bind(new.url.source_type().code())
        .bind(new.token_ciphertext.clone())
        .bind(new.import_update_preferences.code())
        .bind(flag(new.is_custom))
        .bind(new.user_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            conflict_or(
                e,
                "a repository with that name, or that URL and branch, exists",
            )
        })?;
        Ok(row.try_get("id")?)
    }

    async fn update_repository(&self, id: i64, new: &NewRepository) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE repositories SET url = $1, name = $2, source_branch = $3, source_type = $4, \
               token_ciphertext = $5, import_update_preferences = $6, last_modified = $7 \
             WHERE id = $8",
        )
        .bind(new.url.as_str())
        .bind(new.name.as_str())
        .bind(new.source_branch.as_str())
        .bind(new.url.source_type().code())
        .bind(new.token_ciphertext.clone())
        .bind(new.import_update_preferences.code())
        .bind(Timestamp::now().millis())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            conflict_or(
                e,
                "a repository with that name, or that URL and branch, exists",
            )
        })?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn delete_repository(
        &self,
        id: i64,
        remove_rulesets: bool,
        owner_id: Option<i64>,
    ) -> StoreResult<i64> {
        self.q_delete_repository(id, remove_rulesets, owner_id)
            .await
    }

    async fn sync_system_repositories(
        &self,
        repos: &[SystemRepositorySpec],
    ) -> StoreResult<Vec<String>> {
        let mut refused = Vec::new();
        let mut tx = self.pool.begin().await?;
        let existing =
            sqlx::query("SELECT id, url, source_branch FROM repositories WHERE is_custom = 0")
                .fetch_all(&mut *tx)
                .await?;
        let mut keep = Vec::new();
        for spec in repos {
            let found = existing.iter().find(|row| {
                row.try_get::<String, _>("url").ok().as_deref() == Some(spec.url.as_str())
                    && row.try_get::<String, _>("source_branch").ok().as_deref()
                        == Some(spec.source_branch.as_str())
            });
            let now = Timestamp::now().millis();
            match found {
                Some(row) => {
                    let id: i64 = row.try_get("id")?;
                    keep.push(id);
                    sqlx::query(
                        "UPDATE repositories SET name = $1, import_update_preferences = $2, \
                         source_type = $3 WHERE id = $4",
                    )
                    .bind(spec.name.as_str())
                    .bind(spec.import_update_preferences.code())
                    .bind(spec.url.source_type().code())
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| conflict_or(e, spec.name.as_str()))?;
                }
                None => {
                    let clash = sqlx::query(
                        "SELECT id FROM repositories WHERE name = $1 OR (url = $2 AND source_branch = $3)",
                    )
                    .bind(spec.name.as_str())
                    .bind(spec.url.as_str())
                    .bind(spec.source_branch.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    if clash.is_some() {
                        refused.push(spec.name.as_str().to_owned());
                        continue;
                    }
                    let row = sqlx::query(
                        "INSERT INTO repositories (url, name, source_branch, source_type, \
                           token_ciphertext, import_update_preferences, is_custom, user_id, \
                           created_at, last_modified) \
                         VALUES ($1, $2, $3, $4, NULL, $5, 0, NULL, $6, $6) RETURNING id",
                    )
                    .bind(spec.url.as_str())
                    .bind(spec.name.as_str())
                    .bind(spec.source_branch.as_str())
                    .bind(spec.url.source_type().code())
                    .bind(spec.import_update_preferences.code())
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| conflict_or(e, spec.name.as_str()))?;
                    keep.push(row.try_get("id")?);
                }
            }
        }
        for row in &existing {
            let id: i64 = row.try_get("id")?;
            if !keep.contains(&id) {
                sqlx::query("DELETE FROM repositories WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(refused)
    }

    async fn rulesets(&self) -> StoreResult<Vec<Ruleset>> {
        self.q_rulesets().await
    }

    async fn ruleset(&self, name: &str) -> StoreResult<Option<Ruleset>> {
        self.q_ruleset(name).await
    }

    async fn save_revision(&self, new: &NewRevision) -> StoreResult<SavedRevision> {
        self.q_save_revision(new).await
    }

    async fn revision(&self, ruleset_id: i64, number: i64) -> StoreResult<Option<Revision>> {
        self.q_revision(ruleset_id, number).await
    }

    async fn revisions(
        &self,
        ruleset_id: i64,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Page<Revision>> {
        self.q_revisions(ruleset_id, offset, limit).await
    }

    async fn delete_ruleset(&self, id: i64) -> StoreResult<()> {
        self.q_delete_ruleset(id).await
    }

    async fn set_ruleset_enabled(&self, id: i64, enabled: bool) -> StoreResult<()> {
        self.q_set_enabled(id, enabled).await
    }

    async fn publish(&self, picks: &[(i64, i64)]) -> StoreResult<()> {
        self.q_publish(picks).await
    }

    async fn active_members(&self) -> StoreResult<Vec<Member>> {
        self.q_active_members().await
    }

    async fn members_by_revision(&self, revision_ids: &[i64]) -> StoreResult<Vec<Member>> {
        self.q_members_by_revision(revision_ids).await
    }

    async fn insert_generation(
        &self,
        members: &[GenerationMember],
        failed: &[(i64, String)],
        engine_version: &str,
        artifact: Option<&[u8]>,
    ) -> StoreResult<i64> {
        self.q_insert_generation(members, failed, engine_version, artifact)
            .await
    }

    async fn latest_generation(&self) -> StoreResult<Option<StoredGeneration>> {
        self.q_latest_generation().await
    }

    async fn repository_files(
        &self,
        repository_id: i64,
        window: Option<(i64, i64)>,
    ) -> StoreResult<Page<FileRecord>> {
        self.q_repository_files(repository_id, window).await
    }

    async fn apply_import(&self, batch: &ImportBatch) -> StoreResult<ImportApplied> {
        self.q_apply_import(batch).await
    }

    async fn set_sync_state(
        &self,
        repository_id: i64,
        state: &str,
        error: Option<&str>,
    ) -> StoreResult<()> {
        self.q_set_sync_state(repository_id, state, error).await
    }

    async fn insert_run(&self, node: &str, trigger: &str, total: i64) -> StoreResult<i64> {
        self.q_insert_run(node, trigger, total).await
    }

    async fn record_run_repository(&self, run_id: i64, outcome: &RepoOutcome) -> StoreResult<()> {
        self.q_record_run_repository(run_id, outcome).await
    }

    async fn finish_run(&self, run_id: i64, state: &str) -> StoreResult<()> {
        self.q_finish_run(run_id, state).await
    }

    async fn interrupt_runs_of(&self, node: &str) -> StoreResult<u64> {
        self.q_interrupt_runs_of(node).await
    }

    async fn runs(&self, offset: i64, limit: i64) -> StoreResult<Page<UpdateRun>> {
        self.q_runs(offset, limit).await
    }

    async fn run(&self, id: i64) -> StoreResult<Option<(UpdateRun, Vec<RepoOutcome>)>> {
        self.q_run(id).await
    }

    async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        run_id: Option<i64>,
        expires_at: i64,
    ) -> StoreResult<Option<Option<i64>>> {
        self.q_take_lease(name, holder, run_id, expires_at).await
    }

    async fn set_lease_run(&self, name: &str, holder: &str, run_id: i64) -> StoreResult<()> {
        self.q_set_lease_run(name, holder, run_id).await
    }

    async fn renew_leases(&self, holder: &str, expires_at: i64) -> StoreResult<u64> {
        self.q_renew_leases(holder, expires_at).await
    }

    async fn release_leases_of_node(&self, node: &str) -> StoreResult<u64> {
        self.q_release_leases_of_node(node).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        self.q_release_lease(name, holder).await
    }

    async fn record_scans(
        &self,
        scans: &[ScannedSample],
        cap: i64,
        window_ms: i64,
    ) -> StoreResult<Vec<i64>> {
        self.q_record_scans(scans, cap, window_ms).await
    }

    async fn latest_generation_head(&self) -> StoreResult<Option<(i64, Timestamp)>> {
        self.q_latest_generation_head().await
    }

    async fn notify_generation(&self, number: i64) -> StoreResult<()> {
        self.q_notify_generation(number).await
    }

    async fn heartbeat(&self, name: &str, generation: Option<i64>) -> StoreResult<()> {
        self.q_heartbeat(name, generation).await
    }

    async fn nodes(&self) -> StoreResult<Vec<super::NodeBeat>> {
        self.q_nodes().await
    }

    async fn match_stats(&self) -> StoreResult<std::collections::HashMap<i64, MatchStats>> {
        self.q_match_stats().await
    }

    async fn samples_matching_all(
        &self,
        ruleset_ids: &[i64],
        window: Option<(i64, i64)>,
    ) -> StoreResult<Page<Sample>> {
        self.q_samples_matching_all(ruleset_ids, window).await
    }
}
