//! Ruleset, revision and generation SQL, shared by both backends.
//!
//! Every write transaction starts with a write, so SQLite takes its write lock up front (no
//! read-to-write upgrade deadlock) and PostgreSQL locks the ruleset row before reading it.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Page, SqlStore, StoreError, StoreResult};
use crate::domain::{
    Author, Diagnostic, GenerationMember, Member, NewRevision, Origin, Revision, Ruleset,
    SavedRevision, StoredGeneration, Timestamp, ValidationOutcome,
};

const RULESET_SELECT: &str = "SELECT r.id, r.name, r.owner_id, u.username AS owner, \
     r.repository_id, r.source_path, r.enabled, r.is_system, r.latest_revision, \
     r.published_revision, r.removed_upstream, r.created_at, r.updated_at, r.capped_at, \
     v.valid AS latest_valid, v.rule_count AS latest_rule_count \
     FROM rulesets r LEFT JOIN users u ON u.id = r.owner_id \
     LEFT JOIN revisions v ON v.ruleset_id = r.id AND v.number = r.latest_revision";

const REVISION_COLUMNS: &str = "id, ruleset_id, number, content, sha256, author_user_id, \
     author_repository_id, author_commit, created_at, valid, diagnostics, rule_count";

fn ruleset_from_row(row: &AnyRow) -> StoreResult<Ruleset> {
    Ok(Ruleset {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        owner_id: row.try_get("owner_id")?,
        owner: row.try_get("owner")?,
        repository_id: row.try_get("repository_id")?,
        source_path: row.try_get("source_path")?,
        enabled: row.try_get::<i64, _>("enabled")? != 0,
        is_system: row.try_get::<i64, _>("is_system")? != 0,
        latest_revision: row.try_get("latest_revision")?,
        published_revision: row.try_get("published_revision")?,
        removed_upstream: row.try_get::<i64, _>("removed_upstream")? != 0,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        latest_valid: row.try_get::<Option<i64>, _>("latest_valid")?.unwrap_or(0) != 0,
        latest_rule_count: row
            .try_get::<Option<i64>, _>("latest_rule_count")?
            .unwrap_or(0),
        capped: row.try_get::<Option<i64>, _>("capped_at")?.is_some(),
    })
}

fn revision_from_row(row: &AnyRow) -> StoreResult<Revision> {
    let diagnostics: String = row.try_get("diagnostics")?;
    let diagnostics: Vec<Diagnostic> = serde_json::from_str(&diagnostics)
        .map_err(|e| StoreError::Setup(format!("stored diagnostics do not parse: {e}")))?;
    Ok(Revision {
        id: row.try_get("id")?,
        ruleset_id: row.try_get("ruleset_id")?,
        number: row.try_get("number")?,
        content: row.try_get("content")?,
        sha256: row.try_get("sha256")?,
        author_user_id: row.try_get("author_user_id")?,
        author_repository_id: row.try_get("author_repository_id")?,
        author_commit: row.try_get("author_commit")?,
        created_at: Timestamp(row.try_get("created_at")?),
        outcome: ValidationOutcome {
            valid: row.try_get::<i64, _>("valid")? != 0,
            diagnostics,
            rule_count: row.try_get("rule_count")?,
        },
    })
}

impl SqlStore {
    pub(super) async fn q_rulesets(&self) -> StoreResult<Vec<Ruleset>> {
        let sql = format!("{RULESET_SELECT} ORDER BY r.name");
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter().map(ruleset_from_row).collect()
    }

    pub(super) async fn q_ruleset(&self, name: &str) -> StoreResult<Option<Ruleset>> {
        let sql = format!("{RULESET_SELECT} WHERE r.name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(ruleset_from_row).transpose()
    }

    pub(super) async fn q_save_revision(&self, new: &NewRevision) -> StoreResult<SavedRevision> {
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let saved = save_revision_in(&mut tx, new, Timestamp::now().millis()).await?;
        if saved.new_revision {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        let ruleset = self
            .q_ruleset(new.name.as_str())
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(SavedRevision {
            ruleset,
            created_ruleset: saved.created,
            revision: saved.revision,
            new_revision: saved.new_revision,
            published: saved.published,
        })
    }

    pub(super) async fn q_revision(
        &self,
        ruleset_id: i64,
        number: i64,
    ) -> StoreResult<Option<Revision>> {
        let sql = format!(
            "SELECT {REVISION_COLUMNS} FROM revisions WHERE ruleset_id = $1 AND number = $2"
        );
        let row = sqlx::query(&sql)
            .bind(ruleset_id)
            .bind(number)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(revision_from_row).transpose()
    }

    pub(super) async fn q_revisions(
        &self,
        ruleset_id: i64,
        offset: i64,
        limit: i64,
    ) -> StoreResult<Page<Revision>> {
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM revisions WHERE ruleset_id = $1")
            .bind(ruleset_id)
            .fetch_one(self.pool())
            .await?
            .try_get("n")?;
        let sql = format!(
            "SELECT {REVISION_COLUMNS} FROM revisions WHERE ruleset_id = $1 \
             ORDER BY number DESC LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql)
            .bind(ruleset_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        Ok(Page {
            count,
            items: rows
                .iter()
                .map(revision_from_row)
                .collect::<StoreResult<_>>()?,
        })
    }

    pub(super) async fn q_delete_ruleset(&self, id: i64) -> StoreResult<()> {
        let _guard = self.write_guard().await;
        let done = sqlx::query("DELETE FROM rulesets WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub(super) async fn q_set_enabled(&self, id: i64, enabled: bool) -> StoreResult<()> {
        let _guard = self.write_guard().await;
        let done = sqlx::query(
            "UPDATE rulesets SET enabled = $1, updated_at = $2, \
             cap_lifted_at = CASE WHEN $1 = 1 AND capped_at IS NOT NULL THEN $2 \
               ELSE cap_lifted_at END, \
             capped_at = CASE WHEN $1 = 1 THEN NULL ELSE capped_at END WHERE id = $3",
        )
        .bind(i64::from(enabled))
        .bind(Timestamp::now().millis())
        .bind(id)
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub(super) async fn q_publish(&self, picks: &[(i64, i64)]) -> StoreResult<()> {
        let _guard = self.write_guard().await;
        let now = Timestamp::now().millis();
        let mut tx = self.pool().begin().await?;
        for (ruleset_id, number) in picks {
            sqlx::query(
                "UPDATE rulesets SET published_revision = $1, updated_at = $2 WHERE id = $3",
            )
            .bind(number)
            .bind(now)
            .bind(ruleset_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn q_active_members(&self) -> StoreResult<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT r.id AS ruleset_id, r.name AS ruleset, v.id AS revision_id, \
               v.number AS revision, v.content AS content \
             FROM rulesets r JOIN revisions v \
               ON v.ruleset_id = r.id AND v.number = r.published_revision \
             WHERE r.enabled = 1 AND v.valid = 1 ORDER BY r.name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(member_from_row).collect()
    }

    pub(super) async fn q_members_by_revision(&self, ids: &[i64]) -> StoreResult<Vec<Member>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT r.id AS ruleset_id, r.name AS ruleset, v.id AS revision_id, \
                   v.number AS revision, v.content AS content \
                 FROM revisions v JOIN rulesets r ON r.id = v.ruleset_id \
                 WHERE v.id IN ({}) ORDER BY r.name",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(self.pool()).await? {
                out.push(member_from_row(&row)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn q_insert_generation(
        &self,
        members: &[GenerationMember],
        failed: &[(i64, String)],
        engine_version: &str,
        artifact: Option<&[u8]>,
    ) -> StoreResult<i64> {
        let _guard = self.write_guard().await;
        let members =
            serde_json::to_string(members).map_err(|e| StoreError::Setup(e.to_string()))?;
        let failed = serde_json::to_string(failed).map_err(|e| StoreError::Setup(e.to_string()))?;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(
            "INSERT INTO generations (created_at, engine_version, members, failed, artifact) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(Timestamp::now().millis())
        .bind(engine_version)
        .bind(members)
        .bind(failed)
        .bind(artifact.map(<[u8]>::to_vec))
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get("id")?;
        // Keep the compiled artifacts of the last few generations only; the metadata stays.
        sqlx::query(
            "UPDATE generations SET artifact = NULL WHERE id <= $1 AND artifact IS NOT NULL",
        )
        .bind(id - 3)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub(super) async fn q_latest_generation(&self) -> StoreResult<Option<StoredGeneration>> {
        let row = sqlx::query(
            "SELECT id, created_at, engine_version, members, failed, artifact FROM generations \
             ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let parse = |e: serde_json::Error| StoreError::Setup(format!("stored generation: {e}"));
        Ok(Some(StoredGeneration {
            number: row.try_get("id")?,
            created_at: Timestamp(row.try_get("created_at")?),
            engine_version: row.try_get("engine_version")?,
            members: serde_json::from_str(&row.try_get::<String, _>("members")?).map_err(parse)?,
            failed: serde_json::from_str(&row.try_get::<String, _>("failed")?).map_err(parse)?,
            artifact: row.try_get("artifact")?,
        }))
    }
}

/// What [`save_revision_in`] did.
pub(super) struct SavedIn {
    pub ruleset_id: i64,
    pub created: bool,
    pub revision: i64,
    pub new_revision: bool,
    pub published: bool,
}

/// Stores one revision inside the caller's transaction (creating the ruleset when the name is
/// new). Content equal to the latest revision's stores nothing but the ruleset's touch.
pub(super) async fn save_revision_in(
    tx: &mut sqlx::AnyConnection,
    new: &NewRevision,
    now: i64,
) -> StoreResult<SavedIn> {
    let (repository_id, source_path) = match &new.origin {
        Origin::Local => (None, None),
        Origin::Repository { id, path } => (Some(*id), Some(path.clone())),
    };
    let created = sqlx::query(
        "INSERT INTO rulesets (name, owner_id, repository_id, source_path, enabled, \
           is_system, latest_revision, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 1, $5, 0, $6, $6) ON CONFLICT (name) DO NOTHING",
    )
    .bind(new.name.as_str())
    .bind(new.owner_id)
    .bind(repository_id)
    .bind(source_path)
    .bind(i64::from(new.is_system))
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    let row = sqlx::query(
        "UPDATE rulesets SET updated_at = $1 WHERE name = $2 RETURNING id, latest_revision",
    )
    .bind(now)
    .bind(new.name.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let ruleset_id: i64 = row.try_get("id")?;
    let latest: i64 = row.try_get("latest_revision")?;
    let latest_sha: Option<String> =
        sqlx::query("SELECT sha256 FROM revisions WHERE ruleset_id = $1 AND number = $2")
            .bind(ruleset_id)
            .bind(latest)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("sha256"))
            .transpose()?;
    if latest_sha.as_deref() == Some(new.sha256.as_str()) {
        return Ok(SavedIn {
            ruleset_id,
            created,
            revision: latest,
            new_revision: false,
            published: false,
        });
    }
    let number = latest + 1;
    let (user, repo, commit) = match &new.author {
        Author::User(id) => (Some(*id), None, None),
        Author::Repository { id, commit } => (None, Some(*id), Some(commit.clone())),
    };
    let diagnostics = serde_json::to_string(&new.outcome.diagnostics)
        .map_err(|e| StoreError::Setup(e.to_string()))?;
    sqlx::query(
        "INSERT INTO revisions (ruleset_id, number, content, sha256, author_user_id, \
           author_repository_id, author_commit, created_at, valid, diagnostics, rule_count) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(ruleset_id)
    .bind(number)
    .bind(new.content.as_str())
    .bind(new.sha256.as_str())
    .bind(user)
    .bind(repo)
    .bind(commit)
    .bind(now)
    .bind(i64::from(new.outcome.valid))
    .bind(diagnostics)
    .bind(new.outcome.rule_count)
    .execute(&mut *tx)
    .await?;
    let publish = new.publish_if_valid && new.outcome.valid;
    sqlx::query(
        "UPDATE rulesets SET latest_revision = $1, capped_at = NULL, \
           cap_lifted_at = CASE WHEN capped_at IS NULL THEN cap_lifted_at ELSE $4 END, \
           enabled = CASE WHEN removed_upstream = 1 THEN 1 ELSE enabled END, \
           removed_upstream = 0, \
           published_revision = CASE WHEN $2 = 1 THEN $1 ELSE published_revision END \
         WHERE id = $3",
    )
    .bind(number)
    .bind(i64::from(publish))
    .bind(ruleset_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(SavedIn {
        ruleset_id,
        created,
        revision: number,
        new_revision: true,
        published: publish,
    })
}

fn member_from_row(row: &AnyRow) -> StoreResult<Member> {
    Ok(Member {
        ruleset_id: row.try_get("ruleset_id")?,
        ruleset: row.try_get("ruleset")?,
        revision_id: row.try_get("revision_id")?,
        revision: row.try_get("revision")?,
        content: row.try_get("content")?,
    })
}
