//! SQLite backend: a file in the data directory, WAL mode, its own migrations folder.

use std::path::Path;
use std::time::Duration;

use sqlx::Executor;
use sqlx::any::AnyPoolOptions;

use super::{Backend, SqlStore, StoreError, StoreResult, migrations};

pub(super) async fn open(path: &Path) -> StoreResult<SqlStore> {
    let path = path
        .to_str()
        .ok_or_else(|| StoreError::Setup("the database path is not UTF-8".into()))?;
    let url = format!("sqlite://{path}?mode=rwc");
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                     PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                )
                .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    migrations::migrator(migrations::SQLITE)
        .await?
        .run(&pool)
        .await?;
    Ok(SqlStore::new(pool, Backend::Sqlite))
}
