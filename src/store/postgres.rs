//! PostgreSQL backend: the shared database of a cluster, its own migrations folder.

use std::time::Duration;

use sqlx::any::AnyPoolOptions;

use super::{Backend, SqlStore, StoreResult, migrations};

pub(super) async fn open(url: &str) -> StoreResult<SqlStore> {
    let pool = AnyPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await?;
    // The migrator takes an advisory lock, so nodes starting together migrate once.
    migrations::migrator(migrations::POSTGRES)
        .await?
        .run(&pool)
        .await?;
    Ok(SqlStore::new(pool, Backend::Postgres))
}
