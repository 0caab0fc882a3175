-- Sessions, runs, the step journal, events and the per-session inbox: the tables and column
-- names of sqlite/0001_init.sql. Times are epoch seconds (double precision) as everywhere in the
-- Store interface. Values that user code reads back (inputs, outputs, step results, event data,
-- messages) are kept as the exact JSON text the engine wrote: jsonb would reorder object keys,
-- and replay must hand back what the first execution saw.
CREATE TABLE sessions (
    id         text PRIMARY KEY,
    tenant     text NOT NULL,
    principal  text,
    metadata   jsonb NOT NULL DEFAULT '{}',
    created_at double precision NOT NULL
);

CREATE TABLE runs (
    seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- arrival order
    id               text NOT NULL UNIQUE,
    session_id       text NOT NULL REFERENCES sessions (id),
    tenant           text NOT NULL,
    principal        text,
    roles            jsonb NOT NULL DEFAULT '[]',
    agent            text NOT NULL,
    agent_version    text NOT NULL,
    input            text NOT NULL,
    limits           jsonb NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL CHECK (status IN ('queued', 'running', 'waiting', 'succeeded', 'failed',
                                                     'cancelled', 'timed_out', 'limit_exceeded')),
    output           text,
    error            jsonb,
    attempt          integer NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at double precision,
    wake_at          double precision,
    wait_kind        text CHECK (wait_kind IN ('sleep', 'message')),
    time_used        double precision NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       double precision NOT NULL,
    started_at       double precision,
    finished_at      double precision
);
-- The claim reads each kind of runnable run through its own partial index.
CREATE INDEX runs_queued ON runs (tenant, seq) WHERE status = 'queued';
CREATE INDEX runs_waiting ON runs (wake_at) WHERE status = 'waiting';
CREATE INDEX runs_leased ON runs (lease_expires_at) WHERE status = 'running';
-- A session runs one run at a time: the claim looks for its earlier active runs here.
CREATE INDEX runs_active ON runs (session_id, seq) WHERE status IN ('queued', 'running', 'waiting');
CREATE INDEX runs_session ON runs (session_id, seq);
-- The tenant served longest ago goes first (per-tenant fairness).
CREATE INDEX runs_tenant_started ON runs (tenant, started_at);
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE steps (
    run_id      text NOT NULL,
    seq         text NOT NULL,  -- position: "7", or "7.2.1" inside a gather branch
    kind        text NOT NULL,
    name        text NOT NULL,
    input_hash  text NOT NULL,
    status      text NOT NULL,
    result      text,
    error       jsonb,
    attempt     integer NOT NULL,
    started_at  double precision NOT NULL,
    finished_at double precision,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE events (
    run_id     text NOT NULL,
    id         bigint NOT NULL,
    type       text NOT NULL,
    data       text NOT NULL,
    created_at double precision NOT NULL,
    PRIMARY KEY (run_id, id)
);

CREATE TABLE inbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id   text NOT NULL,
    payload      text NOT NULL,
    created_at   double precision NOT NULL,
    consumed_by  text,
    consumed_seq text
);
CREATE INDEX inbox_pending ON inbox (session_id, id) WHERE consumed_by IS NULL;
