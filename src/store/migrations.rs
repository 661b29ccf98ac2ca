//! The schema migrations of both backends, embedded in the binary.
//!
//! They are listed here instead of found by `sqlx::migrate!`: that macro alone would make every
//! build compile sqlx's macro crates and a second copy of both database drivers for the compiler
//! to run. Each migration is read the way sqlx reads a migrations folder (version and
//! description from the file name, checksum of the text), and a test compares the list with
//! sqlx's own reading of the folders, so a database that an earlier build migrated agrees with
//! this one, and a file added to a folder but not to this list fails the tests.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

/// A migration as embedded: its file name and its text.
type Embedded = (&'static str, &'static str);

/// Both folders hold the same file names (a migration one backend does not need is a comment
/// there), so one list names them.
macro_rules! embedded {
    ($($file:literal),+ $(,)?) => {
        /// `migrations/sqlite`, in order.
        pub(super) const SQLITE: &[Embedded] =
            &[$(($file, include_str!(concat!("../../migrations/sqlite/", $file)))),+];
        /// `migrations/postgres`, in order.
        pub(super) const POSTGRES: &[Embedded] =
            &[$(($file, include_str!(concat!("../../migrations/postgres/", $file)))),+];
    };
}

embedded!(
    "0001_foundation.sql",
    "0002_rulesets.sql",
    "0003_imports.sql",
    "0004_matches.sql",
    "0005_capped.sql",
    "0006_nodes.sql",
);

/// The migrator of one backend's list (it takes the database's migration lock, as sqlx's does).
pub(super) async fn migrator(list: &'static [Embedded]) -> Result<Migrator, MigrateError> {
    Migrator::new(List(list)).await
}

#[derive(Debug)]
struct List(&'static [Embedded]);

impl MigrationSource<'static> for List {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        let migrations = self
            .0
            .iter()
            .map(|&(name, sql)| migration(name, sql))
            .collect::<Result<Vec<_>, _>>()
            .map(|mut list| {
                list.sort_by_key(|m| m.version);
                list
            });
        Box::pin(std::future::ready(migrations))
    }
}

/// One migration from its file name (`<version>_<description>.sql`) and text, as sqlx's folder
/// reader makes it.
fn migration(name: &'static str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, rest) = name
        .split_once('_')
        .filter(|(_, rest)| rest.ends_with(".sql"))
        .ok_or_else(|| format!("migration file name {name:?} is not <version>_<name>.sql"))?;
    let version: i64 = version
        .parse()
        .map_err(|_| format!("migration file name {name:?} has no numeric version"))?;
    let kind = MigrationType::from_filename(rest);
    let description = rest.trim_end_matches(kind.suffix()).replace('_', " ");
    Ok(Migration::new(
        version,
        Cow::Owned(description),
        kind,
        Cow::Borrowed(sql),
        sql.starts_with("-- no-transaction"),
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// What sqlx compares with a database's record of applied migrations, plus the rest of what
    /// it runs.
    fn identity(m: &Migration) -> (i64, String, Vec<u8>, bool, bool, String) {
        (
            m.version,
            m.description.to_string(),
            m.checksum.to_vec(),
            m.no_tx,
            m.migration_type.is_reversible(),
            m.sql.to_string(),
        )
    }

    #[tokio::test]
    async fn the_embedded_lists_are_the_folders_as_sqlx_reads_them() {
        for (dir, list) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dir);
            let from_folder = Migrator::new(folder.as_path()).await.unwrap();
            let embedded = migrator(list).await.unwrap();
            assert_eq!(
                embedded.iter().map(identity).collect::<Vec<_>>(),
                from_folder.iter().map(identity).collect::<Vec<_>>(),
                "migrations/{dir} and the embedded list differ"
            );
            assert!(embedded.iter().count() >= 6, "{dir}: too few migrations");
        }
    }

    #[test]
    fn a_misnamed_migration_is_refused() {
        assert!(migration("foundation.sql", "").is_err());
        assert!(migration("x1_foundation.sql", "").is_err());
        assert!(migration("0001_foundation.txt", "").is_err());
        let m = migration("0007_more_tables.sql", "-- no-transaction\nSELECT 1;").unwrap();
        assert_eq!(
            (m.version, &*m.description, m.no_tx),
            (7, "more tables", true)
        );
    }
}
