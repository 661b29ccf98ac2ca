-- Scanned samples and what matched them.
CREATE TABLE samples (
    sha256     TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    filename   TEXT,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL
);

CREATE TABLE matches (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256         TEXT    NOT NULL REFERENCES samples(sha256) ON DELETE CASCADE,
    ruleset_id     INTEGER NOT NULL REFERENCES rulesets(id) ON DELETE CASCADE,
    rule           TEXT    NOT NULL,
    classification TEXT    NOT NULL,
    matched_at     INTEGER NOT NULL,
    UNIQUE (sha256, ruleset_id, rule)
);

CREATE INDEX matches_by_ruleset ON matches (ruleset_id, sha256);
