-- Every node reports the generation it serves, with a heartbeat.
CREATE TABLE nodes (
    name       TEXT PRIMARY KEY,
    generation BIGINT,
    last_seen  BIGINT NOT NULL
);
