//! SQL of scanned samples and their matches, shared by both backends.

use std::collections::HashMap;

use sqlx::Row;

use super::{Page, SqlStore, StoreResult};
use crate::domain::{MatchStats, Sample, ScannedSample, Timestamp};

impl SqlStore {
    pub(super) async fn q_record_scans(
        &self,
        scans: &[ScannedSample],
        cap: i64,
        window_ms: i64,
    ) -> StoreResult<Vec<i64>> {
        if scans.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.write_guard().await;
        let mut tx = self.pool().begin().await?;
        let mut capped = Vec::new();
        for ScannedSample { sample, matches } in scans {
            // Recorded at the time of the scan, not of this (possibly later, batched) write.
            let now = sample.last_seen.millis();
            let window_start = now.saturating_sub(window_ms);
            sqlx::query(
                "INSERT INTO samples (sha256, size, filename, first_seen, last_seen) \
                 VALUES ($1, $2, $3, $4, $4) ON CONFLICT (sha256) DO UPDATE SET \
                   last_seen = excluded.last_seen, \
                   filename = COALESCE(excluded.filename, samples.filename)",
            )
            .bind(sample.sha256.as_str())
            .bind(sample.size)
            .bind(sample.filename.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let mut touched: Vec<i64> = matches.iter().map(|m| m.ruleset_id).collect();
            touched.sort_unstable();
            touched.dedup();
            for id in &touched {
                let row =
                    sqlx::query("SELECT capped_at, cap_lifted_at FROM rulesets WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                // A ruleset deleted since the scan records nothing.
                let Some(row) = row else { continue };
                // A capped ruleset records nothing until it is edited or re-enabled.
                if row.try_get::<Option<i64>, _>("capped_at")?.is_some() {
                    continue;
                }
                // Matches from before the cap was last lifted no longer count.
                let since = row
                    .try_get::<Option<i64>, _>("cap_lifted_at")?
                    .map_or(window_start, |lifted| lifted.max(window_start));
                for m in matches.iter().filter(|m| m.ruleset_id == *id) {
                    sqlx::query(
                        "INSERT INTO matches (sha256, ruleset_id, rule, classification, matched_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sha256, ruleset_id, rule) DO UPDATE \
                           SET matched_at = excluded.matched_at, classification = excluded.classification",
                    )
                    .bind(sample.sha256.as_str())
                    .bind(m.ruleset_id)
                    .bind(m.rule.as_str())
                    .bind(m.classification.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                let recent: i64 = sqlx::query(
                    "SELECT COUNT(DISTINCT sha256) AS n FROM matches \
                     WHERE ruleset_id = $1 AND matched_at >= $2",
                )
                .bind(id)
                .bind(since)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
                if recent > cap {
                    sqlx::query("UPDATE rulesets SET capped_at = $1 WHERE id = $2")
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    capped.push(*id);
                }
            }
        }
        tx.commit().await?;
        Ok(capped)
    }

    pub(super) async fn q_match_stats(&self) -> StoreResult<HashMap<i64, MatchStats>> {
        let rows = sqlx::query(
            "SELECT ruleset_id, classification, COUNT(DISTINCT sha256) AS n, \
               MAX(matched_at) AS last FROM matches GROUP BY ruleset_id, classification",
        )
        .fetch_all(self.pool())
        .await?;
        let mut stats: HashMap<i64, MatchStats> = HashMap::new();
        for row in rows {
            let entry = stats.entry(row.try_get("ruleset_id")?).or_default();
            let n: i64 = row.try_get("n")?;
            match row.try_get::<String, _>("classification")?.as_str() {
                "malicious" => entry.malicious += n,
                "suspicious" => entry.suspicious += n,
                "goodware" => entry.goodware += n,
                _ => entry.unknown += n,
            }
            let last = Timestamp(row.try_get("last")?);
            entry.last_matched = Some(entry.last_matched.map_or(last, |l| l.max(last)));
        }
        Ok(stats)
    }

    pub(super) async fn q_samples_matching_all(
        &self,
        ruleset_ids: &[i64],
        window: Option<(i64, i64)>,
    ) -> StoreResult<Page<Sample>> {
        let n = ruleset_ids.len();
        let placeholders: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
        let condition = format!(
            "(SELECT COUNT(DISTINCT m.ruleset_id) FROM matches m WHERE m.sha256 = s.sha256 \
               AND m.ruleset_id IN ({})) = ${}",
            placeholders.join(", "),
            n + 1
        );
        let count_sql = format!("SELECT COUNT(*) AS n FROM samples s WHERE {condition}");
        let mut count = sqlx::query(&count_sql);
        for id in ruleset_ids {
            count = count.bind(*id);
        }
        let count: i64 = count
            .bind(n as i64)
            .fetch_one(self.pool())
            .await?
            .try_get("n")?;
        let (offset, limit) = window.unwrap_or((0, i64::MAX / 2));
        let list_sql = format!(
            "SELECT s.sha256, s.size, s.filename, s.first_seen, s.last_seen FROM samples s \
             WHERE {condition} ORDER BY s.last_seen DESC, s.sha256 LIMIT ${} OFFSET ${}",
            n + 2,
            n + 3
        );
        let mut list = sqlx::query(&list_sql);
        for id in ruleset_ids {
            list = list.bind(*id);
        }
        let rows = list
            .bind(n as i64)
            .bind(limit)
            .bind(offset)
            .fetch_all(self.pool())
            .await?;
        let items = rows
            .iter()
            .map(|row| {
                Ok(Sample {
                    sha256: row.try_get("sha256")?,
                    size: row.try_get("size")?,
                    filename: row.try_get("filename")?,
                    first_seen: Timestamp(row.try_get("first_seen")?),
                    last_seen: Timestamp(row.try_get("last_seen")?),
                })
            })
            .collect::<StoreResult<_>>()?;
        Ok(Page { count, items })
    }
}
