-- Users, API tokens (hashes only), settings, repositories.
-- Flags and timestamps are integers (milliseconds since the epoch) so one SQL text serves
-- SQLite and PostgreSQL through sqlx::Any.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    is_superuser  INTEGER NOT NULL DEFAULT 0,
    is_active     INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash TEXT    NOT NULL UNIQUE,
    label      TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE repositories (
    id                        INTEGER PRIMARY KEY AUTOINCREMENT,
    url                       TEXT    NOT NULL,
    name                      TEXT    NOT NULL UNIQUE,
    source_branch             TEXT    NOT NULL,
    source_type               INTEGER NOT NULL,
    token_ciphertext          TEXT,
    import_update_preferences INTEGER NOT NULL,
    is_custom                 INTEGER NOT NULL,
    user_id                   INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at                INTEGER NOT NULL,
    last_modified             INTEGER NOT NULL,
    sync_commit               TEXT,
    sync_fetched_at           INTEGER,
    sync_error                TEXT,
    sync_state                TEXT    NOT NULL DEFAULT 'never_fetched',
    UNIQUE (url, source_branch)
);
