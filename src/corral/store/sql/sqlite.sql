-- name: insert_session
INSERT INTO sessions (id, tenant, principal, created_at) VALUES (:id, :tenant, :principal, :now)
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
-- Queued runs whose session has nothing earlier active or queued, parked runs that are due,
-- and running runs whose lease expired; each part uses its own partial index.
SELECT id FROM (
    SELECT id FROM runs AS r
     WHERE status = 'queued' AND agent IN (SELECT value FROM json_each(:agents))
       AND NOT EXISTS (SELECT 1 FROM runs AS o WHERE o.session_id = r.session_id
                          AND (o.status IN ('running', 'waiting')
                               OR (o.status = 'queued' AND o.seq < r.seq)))
     ORDER BY seq LIMIT :limit)
UNION ALL
SELECT id FROM (
    SELECT id FROM runs WHERE status = 'waiting' AND wake_at <= :now
       AND agent IN (SELECT value FROM json_each(:agents)) ORDER BY wake_at LIMIT :limit)
UNION ALL
SELECT id FROM (
    SELECT id FROM runs WHERE status = 'running' AND lease_expires_at < :now
       AND agent IN (SELECT value FROM json_each(:agents)) ORDER BY lease_expires_at LIMIT :limit)
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
UPDATE runs
   SET status = 'running', lease_owner = :owner, lease_expires_at = :expires,
       attempt = attempt + 1, started_at = COALESCE(started_at, :now), wake_at = NULL, wait_kind = NULL
 WHERE id = :id
RETURNING *;

-- name: journal
SELECT * FROM steps WHERE run_id = :run_id ORDER BY started_at, seq;

-- name: last_event_id
SELECT COALESCE(MAX(id), 0) FROM events WHERE run_id = :run_id;

-- name: renew
UPDATE runs SET lease_expires_at = :expires, time_used = :time_used
 WHERE id = :run_id AND attempt = :attempt AND status = 'running';

-- name: cancel_flags
SELECT id FROM runs WHERE lease_owner = :owner AND status = 'running' AND cancel_requested = 1;

-- name: fence_check
SELECT session_id FROM runs WHERE id = :run_id AND attempt = :attempt AND status = 'running';

-- name: upsert_step
INSERT INTO steps (run_id, seq, kind, name, input_hash, status, result, error, attempt, started_at, finished_at)
SELECT :run_id, :seq, :kind, :name, :input_hash, :status, :result, :error, :attempt, :started_at, :finished_at
 WHERE EXISTS (SELECT 1 FROM runs WHERE id = :run_id AND attempt = :attempt AND status = 'running')
ON CONFLICT (run_id, seq) DO UPDATE
   SET status = excluded.status, result = excluded.result, error = excluded.error,
       attempt = excluded.attempt, finished_at = excluded.finished_at
 WHERE steps.status = 'pending';

-- name: insert_event
INSERT INTO events (run_id, id, type, data, created_at) VALUES (?, ?, ?, ?, ?);

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
