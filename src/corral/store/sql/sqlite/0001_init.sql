-- Sessions, runs, the step journal, events and the per-session inbox.
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    principal   TEXT,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL
);

CREATE TABLE runs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
    id               TEXT NOT NULL UNIQUE,
    session_id       TEXT NOT NULL REFERENCES sessions(id),
    tenant           TEXT NOT NULL,
    principal        TEXT,
    roles            TEXT NOT NULL DEFAULT '[]',
    agent            TEXT NOT NULL,
    agent_version    TEXT NOT NULL,
    input            TEXT NOT NULL,
    limits           TEXT NOT NULL,
    metadata         TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL,
    output           TEXT,
    error            TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at REAL,
    wake_at          REAL,
    wait_kind        TEXT,
    time_used        REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL
);
CREATE INDEX runs_queued ON runs(seq) WHERE status = 'queued';
CREATE INDEX runs_waiting ON runs(wake_at) WHERE status = 'waiting';
CREATE INDEX runs_leased ON runs(lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_session ON runs(session_id, status);
CREATE INDEX runs_finished ON runs(finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    seq         TEXT NOT NULL,     -- position: "7", or "7.2.1" inside a gather branch
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    input_hash  TEXT NOT NULL,
    status      TEXT NOT NULL,
    result      TEXT,
    error       TEXT,
    attempt     INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE events (
    run_id     TEXT NOT NULL,
    id         INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, id)
) WITHOUT ROWID;

CREATE TABLE inbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   REAL NOT NULL,
    consumed_by  TEXT,
    consumed_seq TEXT
);
CREATE INDEX inbox_pending ON inbox(session_id, id) WHERE consumed_by IS NULL;
