-- name: insert_session
INSERT INTO sessions (id, tenant, principal, created_at, updated_at) VALUES (:id, :tenant, :principal, :now, :now)
ON CONFLICT (id) DO NOTHING;

-- name: session_tenant
SELECT tenant FROM sessions WHERE id = :id;

-- name: insert_run
INSERT INTO runs (id, session_id, tenant, principal, roles, agent, agent_version, input, limits,
                  metadata, status, created_at)
VALUES (:id, :session_id, :tenant, :principal, :roles, :agent, :agent_version, :input, :limits,
        :metadata, 'queued', :now)
RETURNING *;

-- name: claim_candidates
-- Parked runs that are due and running runs whose lease expired come first (they were started
-- already), then queued runs whose session has nothing earlier active or queued; each part uses
-- its own partial index.
SELECT id FROM (
    SELECT id FROM runs WHERE status = 'waiting' AND wake_at <= :now
       AND agent IN (SELECT value FROM json_each(:agents)) ORDER BY wake_at LIMIT :limit)
UNION ALL
SELECT id FROM (
    SELECT id FROM runs WHERE status = 'running' AND lease_expires_at < :now
       AND agent IN (SELECT value FROM json_each(:agents)) ORDER BY lease_expires_at LIMIT :limit)
UNION ALL
SELECT id FROM (
    SELECT id FROM runs AS r
     WHERE status = 'queued' AND agent IN (SELECT value FROM json_each(:agents))
       AND NOT EXISTS (SELECT 1 FROM runs AS o WHERE o.session_id = r.session_id
                          AND (o.status IN ('running', 'waiting')
                               OR (o.status = 'queued' AND o.seq < r.seq)))
     ORDER BY seq LIMIT :limit)
LIMIT :limit;

-- name: claim_one
SELECT id FROM runs AS r
 WHERE id = :run_id AND agent IN (SELECT value FROM json_each(:agents))
   AND ((status = 'queued' AND NOT EXISTS (
            SELECT 1 FROM runs AS o WHERE o.session_id = r.session_id
               AND (o.status IN ('running', 'waiting') OR (o.status = 'queued' AND o.seq < r.seq))))
        OR (status = 'waiting' AND wake_at <= :now)
        OR (status = 'running' AND lease_expires_at < :now));

-- name: claim
-- The runs named in a JSON array; one statement for all (see insert_events).
UPDATE runs
   SET status = 'running', lease_owner = :owner, lease_expires_at = :expires,
       attempt = attempt + 1, started_at = COALESCE(started_at, :now), wake_at = NULL, wait_kind = NULL
 WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING *;

-- name: journal
SELECT * FROM steps WHERE run_id = :run_id ORDER BY started_at, seq;

-- name: last_event_id
SELECT COALESCE(MAX(id), 0) FROM events WHERE run_id = :run_id;

-- name: renew
-- :held is a JSON array of [run_id, attempt, time_used]; returns the ids still held.
UPDATE runs SET lease_expires_at = :expires, time_used = json_extract(h.value, '$[2]')
  FROM json_each(:held) AS h
 WHERE runs.id = json_extract(h.value, '$[0]') AND runs.attempt = json_extract(h.value, '$[1]')
   AND runs.status = 'running'
RETURNING runs.id;

-- name: lease_owners
SELECT DISTINCT lease_owner FROM runs
 WHERE status = 'running' AND lease_owner >= :prefix AND lease_owner < :prefix || char(1114111);

-- name: expire_leases
UPDATE runs SET lease_expires_at = :expired
 WHERE status = 'running' AND lease_owner IN (SELECT value FROM json_each(:owners));

-- name: cancel_flags
SELECT id FROM runs WHERE lease_owner = :owner AND status = 'running' AND cancel_requested = 1;

-- name: fence_check
SELECT session_id FROM runs WHERE id = :run_id AND attempt = :attempt AND status = 'running';

-- name: lost_fences
-- Of the [run_id, attempt] pairs in a JSON array, the runs not running under that attempt (their
-- attempts lost them): usually none, so the DB thread builds no rows at all.
SELECT json_extract(f.value, '$[0]') FROM json_each(:fences) AS f
 WHERE NOT EXISTS (SELECT 1 FROM runs
                    WHERE id = json_extract(f.value, '$[0]') AND attempt = json_extract(f.value, '$[1]')
                      AND status = 'running');

-- name: upsert_step
INSERT INTO steps (run_id, seq, kind, name, input_hash, status, result, error, attempt, started_at, finished_at)
SELECT :run_id, :seq, :kind, :name, :input_hash, :status, :result, :error, :attempt, :started_at, :finished_at
 WHERE EXISTS (SELECT 1 FROM runs WHERE id = :run_id AND attempt = :attempt AND status = 'running')
ON CONFLICT (run_id, seq) DO UPDATE
   SET status = excluded.status, result = excluded.result, error = excluded.error,
       attempt = excluded.attempt, finished_at = excluded.finished_at
 WHERE steps.status = 'pending';

-- name: insert_events
-- :events is a JSON array of [run_id, id, type, data]; data, an object, is stored as its JSON text.
-- One statement, not one per event: the DB thread drops and retakes the GIL around every
-- statement, and while the event loop is busy each retake can wait a whole switch interval.
INSERT INTO events (run_id, id, type, data, created_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), :now
  FROM json_each(:events);

-- name: park
UPDATE runs
   SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL, time_used = :time_used,
       wait_kind = :wait_kind, wake_at = CASE WHEN cancel_requested = 1 THEN :now ELSE :wake_at END
 WHERE id = :run_id AND attempt = :attempt AND status = 'running';

-- name: release
UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, time_used = :time_used
 WHERE id = :run_id AND attempt = :attempt AND status = 'running';

-- name: finish
UPDATE runs
   SET status = :status, output = :output, error = :error, time_used = :time_used,
       finished_at = :now, lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL
 WHERE id = :run_id AND attempt = :attempt AND status = 'running';

-- name: cancel_idle
UPDATE runs SET status = 'cancelled', finished_at = :now, error = :error, wake_at = NULL,
       cancel_requested = 1
 WHERE id = :run_id AND status IN ('queued', 'waiting');

-- name: cancel_running
UPDATE runs SET cancel_requested = 1 WHERE id = :run_id AND status = 'running';

-- name: append_end_event
INSERT INTO events (run_id, id, type, data, created_at)
SELECT :run_id, COALESCE(MAX(id), 0) + 1, 'end', :data, :now FROM events WHERE run_id = :run_id;

-- name: get_run
SELECT * FROM runs WHERE id = :run_id;

-- name: list_steps
SELECT * FROM steps WHERE run_id = :run_id ORDER BY started_at, seq;

-- name: list_events
SELECT id, type, data FROM events WHERE run_id = :run_id AND id > :after ORDER BY id LIMIT :limit;

-- name: insert_message
INSERT INTO inbox (session_id, payload, created_at) VALUES (:session_id, :payload, :now);

-- name: wake_waiting
UPDATE runs SET wake_at = :now WHERE session_id = :session_id AND status = 'waiting' AND wait_kind = 'message';

-- name: next_message
SELECT id, payload, created_at FROM inbox WHERE session_id = :session_id AND consumed_by IS NULL ORDER BY id LIMIT 1;

-- name: consume_message
UPDATE inbox SET consumed_by = :run_id, consumed_seq = :seq WHERE id = :id;

-- name: prune_steps
DELETE FROM steps WHERE run_id IN (SELECT id FROM runs WHERE finished_at < :before);

-- name: prune_events
DELETE FROM events WHERE run_id IN (SELECT id FROM runs WHERE finished_at < :before);

-- name: count_pruned
SELECT COUNT(*) FROM runs WHERE finished_at < :before
   AND EXISTS (SELECT 1 FROM steps WHERE steps.run_id = runs.id);

-- name: stats
SELECT status, COUNT(*), MIN(created_at) FROM runs
 WHERE status IN ('queued', 'running', 'waiting') GROUP BY status;

-- name: stats_due
-- Parked runs whose timer fired or whose message arrived: work a worker must pick up now.
SELECT COUNT(*) FROM runs WHERE status = 'waiting' AND wake_at <= :now;

-- name: admission_counts
-- The tenant's queued + running runs, and all queued runs; each count reads only its status's
-- partial index.
SELECT (SELECT COUNT(*) FROM runs WHERE status = 'queued' AND tenant = :tenant)
     + (SELECT COUNT(*) FROM runs WHERE status = 'running' AND tenant = :tenant),
       (SELECT COUNT(*) FROM runs WHERE status = 'queued');

-- name: session_values
SELECT "values", tenant FROM sessions WHERE id = :id;

-- name: set_session_values
UPDATE sessions SET "values" = :values, updated_at = :now WHERE id = :id;

-- name: insert_checkpoint
INSERT INTO checkpoints (session_id, run_id, "values", metadata, created_at)
VALUES (:session_id, :run_id, :values, :metadata, :now);

-- name: trim_checkpoints
DELETE FROM checkpoints WHERE session_id = :session_id AND id <= (
    SELECT id FROM checkpoints WHERE session_id = :session_id ORDER BY id DESC LIMIT 1 OFFSET :keep);

-- name: run_input
SELECT session_id, input FROM runs WHERE id = :run_id;

-- name: create_session
INSERT INTO sessions (id, tenant, principal, metadata, created_at, updated_at)
VALUES (:id, :tenant, :principal, :metadata, :now, :now)
ON CONFLICT (id) DO NOTHING;

-- name: session_select
-- A session with its status derived from its runs; search appends its WHERE clauses.
SELECT * FROM (
    SELECT s.*, CASE
        WHEN EXISTS (SELECT 1 FROM runs AS r WHERE r.session_id = s.id
                        AND (r.status IN ('queued', 'running') OR (r.status = 'waiting' AND r.wait_kind = 'sleep')))
            THEN 'busy'
        WHEN EXISTS (SELECT 1 FROM runs AS r WHERE r.session_id = s.id AND r.status = 'waiting') THEN 'interrupted'
        WHEN (SELECT r.status FROM runs AS r WHERE r.session_id = s.id AND r.finished_at IS NOT NULL
               ORDER BY r.finished_at DESC LIMIT 1) IN ('failed', 'timed_out', 'limit_exceeded') THEN 'error'
        ELSE 'idle' END AS session_status
    FROM sessions AS s) AS sess

-- name: set_session_metadata
UPDATE sessions SET metadata = :metadata, updated_at = :now WHERE id = :id;

-- name: count_session_active_runs
SELECT COUNT(*) FROM runs WHERE session_id = :id AND status IN ('queued', 'running', 'waiting');

-- name: delete_session_steps
DELETE FROM steps WHERE run_id IN (SELECT id FROM runs WHERE session_id = :id);

-- name: delete_session_events
DELETE FROM events WHERE run_id IN (SELECT id FROM runs WHERE session_id = :id);

-- name: delete_session_rest
DELETE FROM runs WHERE session_id = :id;

-- name: delete_session_inbox
DELETE FROM inbox WHERE session_id = :id;

-- name: delete_session_checkpoints
DELETE FROM checkpoints WHERE session_id = :id;

-- name: delete_session_row
DELETE FROM sessions WHERE id = :id;

-- name: list_checkpoints
SELECT * FROM checkpoints WHERE session_id = :session_id AND (:before IS NULL OR id < :before)
 ORDER BY id DESC LIMIT :limit;

-- name: delete_run_steps
DELETE FROM steps WHERE run_id = :run_id;

-- name: delete_run_events
DELETE FROM events WHERE run_id = :run_id;

-- name: delete_run_row
DELETE FROM runs WHERE id = :run_id;

-- name: put_item
INSERT INTO items (tenant, namespace, key, value, created_at, updated_at)
VALUES (:tenant, :namespace, :key, :value, :now, :now)
ON CONFLICT (tenant, namespace, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at;

-- name: get_item
SELECT * FROM items WHERE tenant = :tenant AND namespace = :namespace AND key = :key;

-- name: delete_item
DELETE FROM items WHERE tenant = :tenant AND namespace = :namespace AND key = :key;

-- name: items_under
-- Everything at or below the prefix: U+001F separates parts, U+0020 is the next code point.
SELECT * FROM items WHERE tenant = :tenant
   AND (:prefix = '' OR namespace = :prefix OR (namespace >= :prefix || char(31) AND namespace < :prefix || char(32)))
 ORDER BY updated_at DESC, namespace, key;

-- name: namespaces
SELECT DISTINCT namespace FROM items WHERE tenant = :tenant
   AND (:prefix = '' OR namespace = :prefix OR (namespace >= :prefix || char(31) AND namespace < :prefix || char(32)))
 ORDER BY namespace;

-- name: insert_api_key
INSERT INTO api_keys (id, key_hash, tenant, principal, roles, created_at)
VALUES (:id, :key_hash, :tenant, :principal, :roles, :now);

-- name: find_api_key
SELECT * FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL;
