-- What the HTTP API needs: session values and checkpoints, long-term memory items, API keys
-- (the tables and columns of sqlite/0002_threads_items_keys.sql). Values and item values are JSON
-- text, kept verbatim like the other user data.
ALTER TABLE sessions ADD COLUMN "values" text NOT NULL DEFAULT '{}';
ALTER TABLE sessions ADD COLUMN updated_at double precision NOT NULL DEFAULT 0;
UPDATE sessions SET updated_at = created_at;
CREATE INDEX sessions_tenant ON sessions (tenant, updated_at);

CREATE TABLE checkpoints (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id text NOT NULL,
    run_id     text,
    "values"   text NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}',
    created_at double precision NOT NULL
);
CREATE INDEX checkpoints_session ON checkpoints (session_id, id);

CREATE TABLE items (
    tenant     text NOT NULL,
    namespace  text NOT NULL,  -- the parts joined by U+001F
    key        text NOT NULL,
    value      text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (tenant, namespace, key)
);

CREATE TABLE api_keys (
    id         text PRIMARY KEY,
    key_hash   text NOT NULL UNIQUE,
    tenant     text NOT NULL,
    principal  text NOT NULL,
    roles      jsonb NOT NULL DEFAULT '[]',
    created_at double precision NOT NULL,
    revoked_at double precision
);
