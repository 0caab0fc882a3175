-- The PostgreSQL store's statements. Each runs inside the transaction its Python caller opens.
-- Fenced writes hold the run's row (FOR SHARE, or the UPDATE's own lock) so that a claim and
-- a stale attempt's write can never interleave: whichever comes second sees the other.

-- name: session_settings
-- Run on every new connection. The store's transactions wait on nothing but the database, so one
-- left idle this long belongs to a client that stopped (frozen, cut off by the network, its event
-- loop blocked): the server ends it, so the row locks it holds cannot keep other workers from
-- reclaiming its runs once their leases expire (a claim skips locked rows). A client that was
-- only slow finds its connection closed, which the store's retry boundary handles.
SET idle_in_transaction_session_timeout = '5s';

-- name: insert_session
INSERT INTO sessions (id, tenant, principal, created_at, updated_at)
VALUES (%(id)s, %(tenant)s, %(principal)s, %(now)s, %(now)s)
ON CONFLICT (id) DO NOTHING;

-- name: lock_session
-- Serializes, per session, the creation of runs (so arrival order is commit order), message
-- delivery and parking to wait for a message (so no wake-up falls between check and park).
SELECT tenant FROM sessions WHERE id = %(id)s FOR UPDATE;

-- name: insert_run
INSERT INTO runs (id, session_id, tenant, principal, roles, agent, agent_version, input, limits,
                  metadata, status, created_at)
VALUES (%(id)s, %(session_id)s, %(tenant)s, %(principal)s, %(roles)s::jsonb, %(agent)s, %(agent_version)s,
        %(input)s, %(limits)s::jsonb, %(metadata)s::jsonb, 'queued', %(now)s)
RETURNING *;

-- name: notify
SELECT pg_notify(%(channel)s, %(payload)s);

-- name: claim
-- Parked runs that are due and running runs whose lease expired come first (they have started
-- already); then queued runs that head their session (nothing earlier of the session is active
-- or queued). Queued runs are taken in turns across tenants: a tenant's k-th candidate counts as
-- its k-th plus the runs it has running now, lower turns first, and among equal turns the tenant
-- that started a run longest ago goes first; so one tenant's burst cannot starve the others.
-- `tenants` walks the distinct tenants with queued runs through the index (a loose index scan).
-- The best `slack` candidates are then locked with SKIP LOCKED, so concurrent claimers pass each
-- other without waiting; the WHERE of `picked` rechecks each row once it is locked.
WITH RECURSIVE tenants AS (
    (SELECT tenant FROM runs WHERE status = 'queued' ORDER BY tenant LIMIT 1)
    UNION ALL
    SELECT (SELECT r.tenant FROM runs AS r WHERE r.status = 'queued' AND r.tenant > t.tenant
             ORDER BY r.tenant LIMIT 1)
      FROM tenants AS t
     WHERE t.tenant IS NOT NULL
),
busy AS (
    SELECT tenant, count(*) AS running FROM runs WHERE status = 'running' GROUP BY tenant
),
turns AS MATERIALIZED (  -- once per tenant, not once per candidate
    SELECT t.tenant, COALESCE(b.running, 0) AS running,
           (SELECT max(s.started_at) FROM runs AS s WHERE s.tenant = t.tenant) AS served
      FROM tenants AS t
      LEFT JOIN busy AS b ON b.tenant = t.tenant
     WHERE t.tenant IS NOT NULL
),
queued AS (
    SELECT q.id, q.seq, u.served, u.running + row_number() OVER (PARTITION BY u.tenant ORDER BY q.seq) AS turn
      FROM turns AS u
     CROSS JOIN LATERAL (
          SELECT r.id, r.seq FROM runs AS r
           WHERE r.status = 'queued' AND r.tenant = u.tenant AND r.agent = ANY(%(agents)s)
             AND NOT EXISTS (SELECT 1 FROM runs AS o WHERE o.session_id = r.session_id
                                AND o.status IN ('queued', 'running', 'waiting')
                                AND (o.status <> 'queued' OR o.seq < r.seq))
           ORDER BY r.tenant, r.seq LIMIT %(limit)s) AS q
),
candidates AS (
    SELECT * FROM (
        (SELECT id, seq, 0 AS part, 0::bigint AS turn, wake_at AS at FROM runs
          WHERE status = 'waiting' AND wake_at <= %(now)s AND agent = ANY(%(agents)s)
          ORDER BY wake_at LIMIT %(limit)s)
        UNION ALL
        (SELECT id, seq, 0, 0, lease_expires_at FROM runs
          WHERE status = 'running' AND lease_expires_at < %(now)s AND agent = ANY(%(agents)s)
          ORDER BY lease_expires_at LIMIT %(limit)s)
        UNION ALL
        SELECT id, seq, 1, turn, served FROM queued
    ) AS c
    ORDER BY part, turn, at NULLS FIRST, seq
    LIMIT %(slack)s
),
picked AS (
    SELECT r.id, c.part, c.turn, c.at, c.seq FROM candidates AS c JOIN runs AS r ON r.id = c.id
     WHERE r.status = 'queued'
        OR (r.status = 'waiting' AND r.wake_at <= %(now)s)
        OR (r.status = 'running' AND r.lease_expires_at < %(now)s)
     ORDER BY c.part, c.turn, c.at NULLS FIRST, c.seq
     LIMIT %(limit)s
       FOR UPDATE OF r SKIP LOCKED
)
UPDATE runs
   SET status = 'running', lease_owner = %(owner)s, lease_expires_at = %(expires)s,
       attempt = attempt + 1, started_at = COALESCE(started_at, %(now)s), wake_at = NULL, wait_kind = NULL
  FROM picked
 WHERE runs.id = picked.id
RETURNING runs.*, picked.part AS pick_part, picked.turn AS pick_turn, picked.at AS pick_at, picked.seq AS pick_seq;

-- name: claim_one
WITH picked AS (
    SELECT id FROM runs AS r
     WHERE id = %(run_id)s AND agent = ANY(%(agents)s)
       AND ((status = 'queued' AND NOT EXISTS (
                SELECT 1 FROM runs AS o WHERE o.session_id = r.session_id
                   AND o.status IN ('queued', 'running', 'waiting') AND (o.status <> 'queued' OR o.seq < r.seq)))
            OR (status = 'waiting' AND wake_at <= %(now)s)
            OR (status = 'running' AND lease_expires_at < %(now)s))
       FOR UPDATE SKIP LOCKED
)
UPDATE runs
   SET status = 'running', lease_owner = %(owner)s, lease_expires_at = %(expires)s,
       attempt = attempt + 1, started_at = COALESCE(started_at, %(now)s), wake_at = NULL, wait_kind = NULL
  FROM picked
 WHERE runs.id = picked.id
RETURNING runs.*;

-- name: journals
SELECT * FROM steps WHERE run_id = ANY(%(run_ids)s) ORDER BY run_id, started_at, seq;

-- name: last_event_ids
SELECT run_id, max(id) AS last FROM events WHERE run_id = ANY(%(run_ids)s) GROUP BY run_id;

-- name: lease_owners
SELECT DISTINCT lease_owner FROM runs WHERE status = 'running' AND starts_with(lease_owner, %(prefix)s);

-- name: expire_leases
UPDATE runs SET lease_expires_at = %(expired)s WHERE status = 'running' AND lease_owner = ANY(%(owners)s::text[]);

-- name: renew
-- Cancel requests ride back on the renewal: the worker learns of them at its next heartbeat.
UPDATE runs SET lease_expires_at = %(expires)s, time_used = h.time_used
  FROM unnest(%(run_ids)s::text[], %(attempts)s::integer[], %(times)s::double precision[])
       AS h (id, attempt, time_used)
 WHERE runs.id = h.id AND runs.attempt = h.attempt AND runs.status = 'running'
RETURNING runs.id, runs.cancel_requested;

-- name: append_events
-- Events of steps in flight of many runs, each run's written only while its attempt holds it;
-- with `announce`, a NOTIFY per run tells the watchers in other processes to read them. Returns
-- the runs that were held (the others' events are not written).
WITH fence AS (
    SELECT r.id FROM runs AS r
      JOIN unnest(%(fence_runs)b::text[], %(fence_attempts)b::integer[]) AS f (id, attempt)
        ON r.id = f.id AND r.attempt = f.attempt AND r.status = 'running'
       FOR SHARE OF r
),
written AS (
    INSERT INTO events (run_id, id, type, data, created_at)
    SELECT e.run_id, e.id, e.type, e.data, %(now)s
      FROM unnest(%(event_runs)b::text[], %(event_ids)b::bigint[], %(event_types)b::text[],
                  %(event_data)b::text[]) AS e (run_id, id, type, data)
     WHERE e.run_id IN (SELECT id FROM fence)
)
SELECT id, CASE WHEN %(announce)s THEN pg_notify(%(channel)s, %(payload)s || id) END AS announced FROM fence;

-- name: fence_lock
SELECT session_id FROM runs
 WHERE id = %(run_id)s AND attempt = %(attempt)s AND status = 'running' FOR NO KEY UPDATE;

-- name: record_step
-- The step is written only while the attempt holds the run (`fence`), and its events only with it.
WITH fence AS (
    SELECT id FROM runs WHERE id = %(run_id)s AND attempt = %(fence_attempt)s AND status = 'running' FOR SHARE
),
step AS (
    INSERT INTO steps (run_id, seq, kind, name, input_hash, status, result, error, attempt, started_at,
                       finished_at)
    SELECT id, %(seq)s, %(kind)s, %(name)s, %(input_hash)s, %(status)s, %(result)s, %(error)s::jsonb,
           %(attempt)s, %(started_at)s, %(finished_at)s
      FROM fence
    ON CONFLICT (run_id, seq) DO UPDATE
       SET status = excluded.status, result = excluded.result, error = excluded.error,
           attempt = excluded.attempt, finished_at = excluded.finished_at
     WHERE steps.status = 'pending'
    RETURNING 1
),
written AS (
    INSERT INTO events (run_id, id, type, data, created_at)
    SELECT e.run_id, e.id, e.type, e.data, %(now)s
      FROM unnest(%(event_runs)b::text[], %(event_ids)b::bigint[], %(event_types)b::text[],
                  %(event_data)b::text[]) AS e (run_id, id, type, data)
     WHERE EXISTS (SELECT 1 FROM step)
)
SELECT count(*) AS written,
       CASE WHEN %(announce)s AND count(*) > 0 THEN pg_notify(%(channel)s, %(payload)s) END AS announced
  FROM step;

-- name: get_step
SELECT status, attempt FROM steps WHERE run_id = %(run_id)s AND seq = %(seq)s;

-- name: insert_events
INSERT INTO events (run_id, id, type, data, created_at)
SELECT e.run_id, e.id, e.type, e.data, %(now)s
  FROM unnest(%(event_runs)b::text[], %(event_ids)b::bigint[], %(event_types)b::text[], %(event_data)b::text[])
       AS e (run_id, id, type, data);

-- name: park
UPDATE runs
   SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL, time_used = %(time_used)s,
       wait_kind = %(wait_kind)s, wake_at = CASE WHEN cancel_requested THEN %(now)s ELSE %(wake_at)s END
 WHERE id = %(run_id)s AND attempt = %(attempt)s AND status = 'running'
RETURNING wake_at;

-- name: release
UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, time_used = %(time_used)s
 WHERE id = %(run_id)s AND attempt = %(attempt)s AND status = 'running';

-- name: finish
-- The outcome, the final events and the wake-up of the session's next run, in one statement;
-- it returns what folding the run into its session's values needs.
WITH done AS (
    UPDATE runs
       SET status = %(status)s, output = %(output)s, error = %(error)s::jsonb, time_used = %(time_used)s,
           finished_at = %(now)s, lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL
     WHERE id = %(run_id)s AND attempt = %(attempt)s AND status = 'running'
    RETURNING id, session_id, input
),
written AS (
    INSERT INTO events (run_id, id, type, data, created_at)
    SELECT e.run_id, e.id, e.type, e.data, %(now)s
      FROM unnest(%(event_runs)b::text[], %(event_ids)b::bigint[], %(event_types)b::text[],
                  %(event_data)b::text[]) AS e (run_id, id, type, data)
     WHERE EXISTS (SELECT 1 FROM done)
)
SELECT d.session_id, d.input, s."values", pg_notify(%(channel)s, %(payload)s) AS notified
  FROM done AS d JOIN sessions AS s ON s.id = d.session_id
   FOR UPDATE OF s;  -- held to the end of the transaction: the run's fold into the values loses no update

-- name: run_for_update
SELECT * FROM runs WHERE id = %(run_id)s FOR NO KEY UPDATE;

-- name: cancel_idle
UPDATE runs SET status = 'cancelled', finished_at = %(now)s, error = %(error)s::jsonb, wake_at = NULL,
       cancel_requested = true
 WHERE id = %(run_id)s AND status IN ('queued', 'waiting')
RETURNING *;

-- name: cancel_running
UPDATE runs SET cancel_requested = true WHERE id = %(run_id)s AND status = 'running' RETURNING *;

-- name: append_end_event
INSERT INTO events (run_id, id, type, data, created_at)
SELECT %(run_id)s, COALESCE(max(id), 0) + 1, 'end', %(data)s, %(now)s FROM events WHERE run_id = %(run_id)s;

-- name: get_run
SELECT * FROM runs WHERE id = %(run_id)s;

-- name: list_runs
SELECT * FROM runs {where} ORDER BY seq DESC LIMIT %(limit)s;

-- name: list_steps
SELECT * FROM steps WHERE run_id = %(run_id)s ORDER BY started_at, seq;

-- name: list_events
SELECT id, type, data FROM events WHERE run_id = %(run_id)s AND id > %(after)s ORDER BY id LIMIT %(limit)s;

-- name: deliver
-- The message, the wake-up of the session's run waiting for one and the workers' notification,
-- in one statement (run after lock_session, in a statement of its own: this one's snapshot must
-- come after the lock, so that it sees a run that parked just before).
WITH msg AS (
    INSERT INTO inbox (session_id, payload, created_at) VALUES (%(session_id)s, %(payload)s, %(now)s)
    RETURNING id
),
woken AS (
    UPDATE runs SET wake_at = %(now)s
     WHERE session_id = %(session_id)s AND status = 'waiting' AND wait_kind = 'message'
)
SELECT id, pg_notify(%(channel)s, %(payload_note)s) AS notified FROM msg;

-- name: pending_message
SELECT id FROM inbox WHERE session_id = %(session_id)s AND consumed_by IS NULL LIMIT 1;

-- name: consume_message
-- The session's oldest unread message, taken by the waiting step of a run its attempt holds, with
-- the events since the last write, in one statement. No row: the attempt lost the run; a row
-- without a message: none has come (the run parks, and parking looks once more under the lock).
WITH fence AS (
    SELECT session_id FROM runs WHERE id = %(run_id)s AND attempt = %(fence_attempt)s AND status = 'running' FOR SHARE
),
written AS (
    INSERT INTO events (run_id, id, type, data, created_at)
    SELECT e.run_id, e.id, e.type, e.data, %(started_at)s
      FROM unnest(%(event_runs)b::text[], %(event_ids)b::bigint[], %(event_types)b::text[],
                  %(event_data)b::text[]) AS e (run_id, id, type, data)
     WHERE EXISTS (SELECT 1 FROM fence)
),
msg AS (
    SELECT i.id, i.payload, i.created_at FROM inbox AS i
     WHERE i.session_id = (SELECT session_id FROM fence) AND i.consumed_by IS NULL
     ORDER BY i.id LIMIT 1 FOR UPDATE
),
taken AS (
    UPDATE inbox SET consumed_by = %(run_id)s, consumed_seq = %(seq)s WHERE id = (SELECT id FROM msg)
),
step AS (
    INSERT INTO steps (run_id, seq, kind, name, input_hash, status, result, error, attempt, started_at, finished_at)
    SELECT %(run_id)s, %(seq)s, %(kind)s, %(name)s, %(input_hash)s, %(status)s, msg.payload, %(error)s::jsonb,
           %(attempt)s, %(started_at)s, %(finished_at)s
      FROM msg
    ON CONFLICT (run_id, seq) DO UPDATE
       SET status = excluded.status, result = excluded.result, error = excluded.error,
           attempt = excluded.attempt, finished_at = excluded.finished_at
     WHERE steps.status = 'pending'
)
SELECT f.session_id, m.id, m.payload, m.created_at FROM fence AS f LEFT JOIN msg AS m ON true;

-- name: consumed_message
SELECT id, session_id, payload, created_at FROM inbox WHERE consumed_by = %(run_id)s AND consumed_seq = %(seq)s;

-- name: try_prune_lock
-- One pruner at a time across the fleet; the others skip their turn.
SELECT pg_try_advisory_xact_lock(hashtextextended(%(key)s, 0)) AS locked;

-- name: count_pruned
SELECT count(*) AS n FROM runs WHERE finished_at < %(before)s
   AND EXISTS (SELECT 1 FROM steps WHERE steps.run_id = runs.id);

-- name: prune_steps
DELETE FROM steps WHERE run_id IN (SELECT id FROM runs WHERE finished_at < %(before)s);

-- name: prune_events
DELETE FROM events WHERE run_id IN (SELECT id FROM runs WHERE finished_at < %(before)s);

-- name: stats
SELECT status, count(*) AS n, min(created_at) AS oldest FROM runs
 WHERE status IN ('queued', 'running', 'waiting') GROUP BY status;

-- name: stats_due
-- Parked runs whose timer fired or whose message arrived: work a worker must pick up now.
SELECT count(*) AS n FROM runs WHERE status = 'waiting' AND wake_at <= %(now)s;

-- name: admission_counts
-- The tenant's queued + running runs, and all queued runs.
SELECT (SELECT count(*) FROM runs WHERE tenant = %(tenant)s AND status IN ('queued', 'running')) AS active,
       (SELECT count(*) FROM runs WHERE status = 'queued') AS queued;

-- name: write_values
-- A session's new values and their checkpoint, keeping the newest %(keep)s checkpoints, in one
-- statement. Its parts see the checkpoints as they were before it: the new one is the keep-th.
WITH updated AS (
    UPDATE sessions SET "values" = %(values)s, updated_at = %(now)s WHERE id = %(session_id)s
),
saved AS (
    INSERT INTO checkpoints (session_id, run_id, "values", metadata, created_at)
    VALUES (%(session_id)s, %(run_id)s, %(values)s, %(metadata)s::jsonb, %(now)s)
)
DELETE FROM checkpoints WHERE session_id = %(session_id)s AND id <= (
    SELECT id FROM checkpoints WHERE session_id = %(session_id)s ORDER BY id DESC LIMIT 1 OFFSET %(keep)s - 1);

-- name: create_session
INSERT INTO sessions (id, tenant, principal, metadata, created_at, updated_at)
VALUES (%(id)s, %(tenant)s, %(principal)s, %(metadata)s::jsonb, %(now)s, %(now)s)
ON CONFLICT (id) DO NOTHING;

-- name: session_select
-- A session with its status derived from its runs; callers append their WHERE and ORDER BY.
SELECT * FROM (
    SELECT s.*, CASE
        WHEN EXISTS (SELECT 1 FROM runs AS r WHERE r.session_id = s.id
                        AND r.status IN ('queued', 'running', 'waiting')
                        AND (r.status <> 'waiting' OR r.wait_kind = 'sleep'))
            THEN 'busy'
        WHEN EXISTS (SELECT 1 FROM runs AS r WHERE r.session_id = s.id AND r.status = 'waiting') THEN 'interrupted'
        WHEN (SELECT r.status FROM runs AS r WHERE r.session_id = s.id AND r.finished_at IS NOT NULL
               ORDER BY r.finished_at DESC LIMIT 1) IN ('failed', 'timed_out', 'limit_exceeded') THEN 'error'
        ELSE 'idle' END AS session_status
    FROM sessions AS s) AS sess

-- name: set_session_metadata
UPDATE sessions SET metadata = %(metadata)s::jsonb, updated_at = %(now)s WHERE id = %(id)s;

-- name: lock_session_runs
-- Runs before their session, the order every other writer takes them in.
SELECT id, status FROM runs WHERE session_id = %(id)s ORDER BY id FOR UPDATE;

-- name: delete_session
WITH run_ids AS (SELECT id FROM runs WHERE session_id = %(id)s),
     s AS (DELETE FROM steps WHERE run_id IN (SELECT id FROM run_ids)),
     e AS (DELETE FROM events WHERE run_id IN (SELECT id FROM run_ids)),
     r AS (DELETE FROM runs WHERE session_id = %(id)s),
     i AS (DELETE FROM inbox WHERE session_id = %(id)s),
     c AS (DELETE FROM checkpoints WHERE session_id = %(id)s)
DELETE FROM sessions WHERE id = %(id)s;

-- name: list_checkpoints
SELECT * FROM checkpoints
 WHERE session_id = %(session_id)s AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
 ORDER BY id DESC LIMIT %(limit)s;

-- name: delete_run
WITH s AS (DELETE FROM steps WHERE run_id = %(run_id)s),
     e AS (DELETE FROM events WHERE run_id = %(run_id)s)
DELETE FROM runs WHERE id = %(run_id)s;

-- name: put_item
INSERT INTO items (tenant, namespace, key, value, created_at, updated_at)
VALUES (%(tenant)s, %(namespace)s, %(key)s, %(value)s, %(now)s, %(now)s)
ON CONFLICT (tenant, namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;

-- name: get_item
SELECT * FROM items WHERE tenant = %(tenant)s AND namespace = %(namespace)s AND key = %(key)s;

-- name: delete_item
DELETE FROM items WHERE tenant = %(tenant)s AND namespace = %(namespace)s AND key = %(key)s;

-- name: items_under
-- Everything at or below the prefix (U+001F separates the parts). starts_with and COLLATE "C"
-- keep the database's collation, which may ignore control characters, out of it.
SELECT * FROM items WHERE tenant = %(tenant)s
   AND (%(prefix)s = '' OR namespace = %(prefix)s OR starts_with(namespace, %(prefix)s || chr(31)))
   AND (%(needle)s::text IS NULL OR strpos(lower(value), %(needle)s) > 0)
 ORDER BY updated_at DESC, namespace COLLATE "C", key COLLATE "C";

-- name: namespaces
SELECT DISTINCT namespace COLLATE "C" AS namespace FROM items WHERE tenant = %(tenant)s
   AND (%(prefix)s = '' OR namespace = %(prefix)s OR starts_with(namespace, %(prefix)s || chr(31)))
 ORDER BY 1;

-- name: insert_api_key
INSERT INTO api_keys (id, key_hash, tenant, principal, roles, created_at)
VALUES (%(id)s, %(key_hash)s, %(tenant)s, %(principal)s, %(roles)s::jsonb, %(now)s);

-- name: find_api_key
SELECT * FROM api_keys WHERE key_hash = %(key_hash)s AND revoked_at IS NULL;

-- name: schema_version
SELECT COALESCE(max(version), 0) AS version FROM corral_migrations;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS corral_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version, name, checksum, extract(epoch FROM applied_at)::double precision AS applied_at
  FROM corral_migrations ORDER BY version;

-- name: record_migration
INSERT INTO corral_migrations (version, name, checksum) VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: migration_lock
SELECT pg_advisory_lock(hashtextextended(%(key)s, 0));

-- name: migration_unlock
SELECT pg_advisory_unlock(hashtextextended(%(key)s, 0));

-- name: schema_exists
SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s;

-- name: migrations_table_exists
SELECT to_regclass('corral_migrations') IS NOT NULL AS present;
