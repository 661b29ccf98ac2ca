//! SQL of the file index, imports, update runs and leases, shared by both backends.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::rulesets::save_revision_in;
use super::{Page, SqlStore, StoreError, StoreResult};
use crate::domain::{
    FileRecord, FileState, ImportApplied, ImportBatch, RepoOutcome, Timestamp, UpdateRun,
};

fn file_from_row(row: &AnyRow) -> StoreResult<FileRecord> {
    Ok(FileRecord {
        path: row.try_get("path")?,
        blob_sha: row.try_get("blob_sha")?,
        ruleset_id: row.try_get("ruleset_id")?,
        ruleset: row.try_get("ruleset")?,
        state: FileState::parse(&row.try_get::<String, _>("state")?),
        reason: row.try_get("reason")?,
    })
}

fn run_from_row(row: &AnyRow) -> StoreResult<UpdateRun> {
    Ok(UpdateRun {
        id: row.try_get("id")?,
        node: row.try_get("node")?,
        trigger: row.try_get("trigger")?,
        state: row.try_get("state")?,
        started_at: Timestamp(row.try_get("started_at")?),
        ended_at: row.try_get::<Option<i64>, _>("ended_at")?.map(Timestamp),
        repositories_total: row.try_get("repositories_total")?,
        repositories_done: row.try_get("repositories_done")?,
    })
}

const FILE_SELECT: &str = "SELECT f.path, f.blob_sha, f.ruleset_id, r.name AS ruleset, f.state, \
     f.reason FROM repository_files f LEFT JOIN rulesets r ON r.id = f.ruleset_id \
     WHERE f.repository_id = $1 ORDER BY f.path";

const RUN_COLUMNS: &str =
    "id, node, trigger, state, started_at, ended_at, repositories_total, repositories_done";

impl SqlStore {
    pub(super) async fn q_repository_files(
        &self,
        repository_id: i64,
        window: Option<(i64, i64)>,
    ) -> StoreResult<Page<FileRecord>> {
        let count: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM repository_files WHERE repository_id = $1")
                .bind(repository_id)
                .fetch_one(self.pool())
                .await?
                .try_get("n")?;
        let rows = match window {
            Some((offset, limit)) => {
                let sql = format!("{FILE_SELECT} LIMIT $2 OFFSET $3");
                sqlx::query(&sql)
                    .bind(repository_id)
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(self.pool())
                    .await?
            }
            None => {
                sqlx::query(FILE_SELECT)
                    .bind(repository_id)
                    .fetch_all(self.pool())
                    .await?
            }
        };
        Ok(Page {
            count,
            items: rows.iter().map(file_from_row).collect::<StoreResult<_>>()?,
        })
    }

    pub(super) async fn q_apply_import(&self, batch: &ImportBatch) -> StoreResult<ImportApplied> {
        let _guard = self.write_guard().await;
        let now = Timestamp::now().millis();
        let mut tx = self.pool().begin().await?;
        // The first statement writes: it takes the write lock (SQLite) or the row lock.
        sqlx::query(
            "UPDATE repositories SET sync_commit = $1, sync_fetched_at = $2, sync_error = NULL, \
               sync_state = 'fetched' WHERE id = $3",
        )
        .bind(batch.commit.as_str())
        .bind(now)
        .bind(batch.repository_id)
        .execute(&mut *tx)
        .await?;
        let mut applied = ImportApplied::default();
        let mut created_ids = std::collections::HashMap::new();
        for revision in &batch.revisions {
            let saved = save_revision_in(&mut tx, revision, now).await?;
            created_ids.insert(revision.name.as_str().to_owned(), saved.ruleset_id);
            applied.rulesets_created += i64::from(saved.created);
            if saved.new_revision {
                applied.revisions_created += 1;
                applied.invalid_revisions += i64::from(!revision.outcome.valid);
            }
            applied.published += i64::from(saved.published);
        }
        for id in &batch.disable {
            sqlx::query(
                "UPDATE rulesets SET enabled = 0, removed_upstream = 1, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        for id in &batch.reenable {
            sqlx::query(
                "UPDATE rulesets SET enabled = 1, removed_upstream = 0, \
                   cap_lifted_at = CASE WHEN capped_at IS NULL THEN cap_lifted_at ELSE $1 END, \
                   capped_at = NULL, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM repository_files WHERE repository_id = $1")
            .bind(batch.repository_id)
            .execute(&mut *tx)
            .await?;
        for file in &batch.files {
            let ruleset_id = file.ruleset_id.or_else(|| {
                file.ruleset
                    .as_ref()
                    .and_then(|name| created_ids.get(name).copied())
            });
            sqlx::query(
                "INSERT INTO repository_files (repository_id, path, blob_sha, ruleset_id, state, reason) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(batch.repository_id)
            .bind(file.path.as_str())
            .bind(file.blob_sha.as_str())
            .bind(ruleset_id)
            .bind(file.state.as_str())
            .bind(file.reason.clone())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(applied)
    }

    pub(super) async fn q_set_sync_state(
        &self,
        repository_id: i64,
        state: &str,
        error: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE repositories SET sync_state = $1, sync_error = $2, sync_fetched_at = $3 \
             WHERE id = $4",
        )
        .bind(state)
        .bind(error)
        .bind(Timestamp::now().millis())
        .bind(repository_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub(super) async fn q_delete_repository(
        &self,
        id: i64,
        remove_rulesets: bool,
        owner_id: Option<i64>,
    ) -> StoreResult<i64> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let touched = if remove_rulesets {
            sqlx::query("DELETE FROM rulesets WHERE repository_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            // They stay, as local rulesets owned by the repository's owner.
            sqlx::query(
                "UPDATE rulesets SET repository_id = NULL, is_system = 0, \
                   owner_id = COALESCE(owner_id, $1) WHERE repository_id = $2",
            )
            .bind(owner_id)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        let done = sqlx::query("DELETE FROM repositories WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(i64::try_from(touched).unwrap_or(i64::MAX))
    }

    pub(super) async fn q_insert_run(
        &self,
        node: &str,
        trigger: &str,
        total: i64,
    ) -> StoreResult<i64> {
        let row = sqlx::query(
            "INSERT INTO update_runs (node, trigger, state, started_at, repositories_total) \
             VALUES ($1, $2, 'running', $3, $4) RETURNING id",
        )
        .bind(node)
        .bind(trigger)
        .bind(Timestamp::now().millis())
        .bind(total)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get("id")?)
    }

    pub(super) async fn q_record_run_repository(
        &self,
        run_id: i64,
        outcome: &RepoOutcome,
    ) -> StoreResult<()> {
        let _guard = self.write_guard().await;
        let text = serde_json::to_string(outcome).map_err(|e| StoreError::Setup(e.to_string()))?;
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "UPDATE update_runs SET repositories_done = repositories_done + 1 WHERE id = $1",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO update_run_repositories (run_id, repository_id, name, outcome) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(run_id)
        .bind(outcome.repository)
        .bind(outcome.name.as_str())
        .bind(text)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn q_finish_run(&self, run_id: i64, state: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE update_runs SET state = $1, ended_at = $2 WHERE id = $3 AND state = 'running'",
        )
        .bind(state)
        .bind(Timestamp::now().millis())
        .bind(run_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub(super) async fn q_interrupt_runs_of(&self, node: &str) -> StoreResult<u64> {
        Ok(sqlx::query(
            "UPDATE update_runs SET state = 'interrupted', ended_at = $1 \
             WHERE state = 'running' AND node = $2",
        )
        .bind(Timestamp::now().millis())
        .bind(node)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    pub(super) async fn q_runs(&self, offset: i64, limit: i64) -> StoreResult<Page<UpdateRun>> {
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM update_runs")
            .fetch_one(self.pool())
            .await?
            .try_get("n")?;
        let sql =
            format!("SELECT {RUN_COLUMNS} FROM update_runs ORDER BY id DESC LIMIT $1 OFFSET $2");
        let rows = sqlx::query(&sql)
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        Ok(Page {
            count,
            items: rows.iter().map(run_from_row).collect::<StoreResult<_>>()?,
        })
    }

    pub(super) async fn q_run(
        &self,
        id: i64,
    ) -> StoreResult<Option<(UpdateRun, Vec<RepoOutcome>)>> {
        // One statement, so one snapshot: the run's progress counts exactly the outcomes read
        // with it, even while the run records another (PostgreSQL gives each statement of a
        // READ COMMITTED transaction its own snapshot).
        let columns: Vec<String> = RUN_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect();
        let sql = format!(
            "SELECT {}, o.outcome FROM update_runs r \
             LEFT JOIN update_run_repositories o ON o.run_id = r.id \
             WHERE r.id = $1 ORDER BY o.id",
            columns.join(", ")
        );
        let rows = sqlx::query(&sql).bind(id).fetch_all(self.pool()).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: Option<String> = row.try_get("outcome")?;
            if let Some(text) = text {
                outcomes.push(
                    serde_json::from_str(&text).map_err(|e| StoreError::Setup(e.to_string()))?,
                );
            }
        }
        Ok(Some((run_from_row(first)?, outcomes)))
    }

    /// Takes the lease `name` for `holder` until `expires_at` when it is free or lapsed.
    /// Returns `None` when another holder has it, else the run id the lapsed lease named.
    pub(super) async fn q_take_lease(
        &self,
        name: &str,
        holder: &str,
        run_id: Option<i64>,
        expires_at: i64,
    ) -> StoreResult<Option<Option<i64>>> {
        let _guard = self.write_guard().await;
        let now = Timestamp::now().millis();
        let previous: Option<(String, Option<i64>, i64)> =
            sqlx::query("SELECT holder, run_id, expires_at FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(self.pool())
                .await?
                .map(|r| -> StoreResult<_> {
                    Ok((
                        r.try_get("holder")?,
                        r.try_get("run_id")?,
                        r.try_get("expires_at")?,
                    ))
                })
                .transpose()?;
        let taken = sqlx::query(
            "INSERT INTO leases (name, holder, run_id, expires_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, run_id = excluded.run_id, \
               expires_at = excluded.expires_at WHERE leases.expires_at < $5",
        )
        .bind(name)
        .bind(holder)
        .bind(run_id)
        .bind(expires_at)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected()
            > 0;
        if !taken {
            return Ok(None);
        }
        // A released lease has expiry 0; a lapsed one kept its expiry: its holder died, so the
        // other leases it held (its repositories) are released with it.
        match previous {
            Some((previous_holder, run, expires_at))
                if previous_holder != holder && expires_at > 0 =>
            {
                sqlx::query("UPDATE leases SET expires_at = 0 WHERE holder = $1")
                    .bind(previous_holder)
                    .execute(self.pool())
                    .await?;
                Ok(Some(run))
            }
            _ => Ok(Some(None)),
        }
    }

    pub(super) async fn q_set_lease_run(
        &self,
        name: &str,
        holder: &str,
        run_id: i64,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE leases SET run_id = $1 WHERE name = $2 AND holder = $3")
            .bind(run_id)
            .bind(name)
            .bind(holder)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub(super) async fn q_renew_leases(&self, holder: &str, expires_at: i64) -> StoreResult<u64> {
        Ok(
            sqlx::query("UPDATE leases SET expires_at = $1 WHERE holder = $2 AND expires_at > 0")
                .bind(expires_at)
                .bind(holder)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    pub(super) async fn q_release_leases_of_node(&self, node: &str) -> StoreResult<u64> {
        let prefix = format!("{node}#");
        Ok(sqlx::query(
            "UPDATE leases SET expires_at = 0 WHERE substr(holder, 1, length($1)) = $1 \
             AND expires_at > 0",
        )
        .bind(prefix)
        .execute(self.pool())
        .await?
        .rows_affected())
    }

    pub(super) async fn q_release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
