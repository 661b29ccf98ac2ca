-- Rulesets, their immutable revisions, and generations (what is active).
CREATE TABLE rulesets (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT    NOT NULL UNIQUE,
    owner_id           INTEGER REFERENCES users(id) ON DELETE SET NULL,
    repository_id      INTEGER REFERENCES repositories(id) ON DELETE SET NULL,
    source_path        TEXT,
    enabled            INTEGER NOT NULL DEFAULT 1,
    is_system          INTEGER NOT NULL DEFAULT 0,
    latest_revision    INTEGER NOT NULL DEFAULT 0,
    published_revision INTEGER,
    removed_upstream   INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);

CREATE TABLE revisions (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    ruleset_id           INTEGER NOT NULL REFERENCES rulesets(id) ON DELETE CASCADE,
    number               INTEGER NOT NULL,
    content              TEXT    NOT NULL,
    sha256               TEXT    NOT NULL,
    author_user_id       INTEGER REFERENCES users(id) ON DELETE SET NULL,
    author_repository_id INTEGER REFERENCES repositories(id) ON DELETE SET NULL,
    author_commit        TEXT,
    created_at           INTEGER NOT NULL,
    valid                INTEGER NOT NULL,
    diagnostics          TEXT    NOT NULL,
    rule_count           INTEGER NOT NULL,
    UNIQUE (ruleset_id, number)
);

CREATE TABLE generations (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at     INTEGER NOT NULL,
    engine_version TEXT    NOT NULL,
    members        TEXT    NOT NULL,
    failed         TEXT    NOT NULL,
    artifact       BLOB
);
