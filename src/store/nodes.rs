//! SQL of node heartbeats and the latest generation's number.

use sqlx::Row;

use super::{SqlStore, Store, StoreResult};
use crate::domain::Timestamp;

/// The PostgreSQL channel on which nodes announce new generations.
pub const GENERATION_CHANNEL: &str = "ruleyard_generation";

/// One node as its last heartbeat left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBeat {
    pub name: String,
    pub generation: Option<i64>,
    pub last_seen: Timestamp,
}

impl SqlStore {
    pub(super) async fn q_latest_generation_head(&self) -> StoreResult<Option<(i64, Timestamp)>> {
        let row = sqlx::query("SELECT id, created_at FROM generations ORDER BY id DESC LIMIT 1")
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| Ok((r.try_get("id")?, Timestamp(r.try_get("created_at")?))))
            .transpose()
    }

    pub(super) async fn q_notify_generation(&self, number: i64) -> StoreResult<()> {
        if self.backend() == super::Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(GENERATION_CHANNEL)
                .bind(number.to_string())
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }

    pub(super) async fn q_heartbeat(&self, name: &str, generation: Option<i64>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO nodes (name, generation, last_seen) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET generation = excluded.generation, \
               last_seen = excluded.last_seen",
        )
        .bind(name)
        .bind(generation)
        .bind(Timestamp::now().millis())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    pub(super) async fn q_nodes(&self) -> StoreResult<Vec<NodeBeat>> {
        let rows = sqlx::query("SELECT name, generation, last_seen FROM nodes ORDER BY name")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NodeBeat {
                    name: r.try_get("name")?,
                    generation: r.try_get("generation")?,
                    last_seen: Timestamp(r.try_get("last_seen")?),
                })
            })
            .collect()
    }
}
