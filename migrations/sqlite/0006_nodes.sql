-- Every node reports the generation it serves, with a heartbeat.
CREATE TABLE nodes (
    name       TEXT PRIMARY KEY,
    generation INTEGER,
    last_seen  INTEGER NOT NULL
);
