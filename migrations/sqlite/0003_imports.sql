-- The per-repository file index, update runs with per-repository outcomes, and leases.
CREATE TABLE repository_files (
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    path          TEXT    NOT NULL,
    blob_sha      TEXT    NOT NULL,
    ruleset_id    INTEGER REFERENCES rulesets(id) ON DELETE SET NULL,
    state         TEXT    NOT NULL,
    reason        TEXT,
    PRIMARY KEY (repository_id, path)
);

CREATE TABLE update_runs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    node               TEXT    NOT NULL,
    trigger            TEXT    NOT NULL,
    state              TEXT    NOT NULL,
    started_at         INTEGER NOT NULL,
    ended_at           INTEGER,
    repositories_total INTEGER NOT NULL,
    repositories_done  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE update_run_repositories (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id            INTEGER NOT NULL REFERENCES update_runs(id) ON DELETE CASCADE,
    repository_id     INTEGER,
    name              TEXT    NOT NULL,
    outcome           TEXT    NOT NULL
);

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT    NOT NULL,
    run_id     INTEGER,
    expires_at INTEGER NOT NULL
);
