-- What the HTTP API needs: session values and checkpoints, long-term memory items, API keys.
ALTER TABLE sessions ADD COLUMN "values" TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sessions ADD COLUMN updated_at REAL NOT NULL DEFAULT 0;
UPDATE sessions SET updated_at = created_at;
CREATE INDEX sessions_tenant ON sessions(tenant, updated_at);

CREATE TABLE checkpoints (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL,
    run_id      TEXT,
    "values"    TEXT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL
);
CREATE INDEX checkpoints_session ON checkpoints(session_id, id);

CREATE TABLE items (
    tenant      TEXT NOT NULL,
    namespace   TEXT NOT NULL,  -- the parts joined by U+001F
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (tenant, namespace, key)
) WITHOUT ROWID;

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    tenant      TEXT NOT NULL,
    principal   TEXT NOT NULL,
    roles       TEXT NOT NULL DEFAULT '[]',
    created_at  REAL NOT NULL,
    revoked_at  REAL
);
