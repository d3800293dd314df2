-- Named queries on jobengine.jobs. Noun first, so related queries sort together.

-- name: job_insert
-- A new job (pending). With an idempotency key already taken, no row comes back.
INSERT INTO jobengine.jobs
    (kind, queue, payload, priority, run_at, depends_on, max_retries, retry_policy,
     timeout, requires_network, idempotency_key, limit_key)
VALUES ($1, $2, $3, $4, coalesce($5::timestamptz, now()), $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *;

-- name: job_get
SELECT * FROM jobengine.jobs WHERE id = $1;

-- name: job_get_by_idempotency_key
SELECT * FROM jobengine.jobs WHERE idempotency_key = $1;

-- name: job_get_many
SELECT * FROM jobengine.jobs WHERE id = ANY ($1::bigint[]) ORDER BY id;

-- name: job_results
-- The results of those of these jobs that completed (a DAG passes data down).
SELECT id, result FROM jobengine.jobs WHERE id = ANY ($1::bigint[]) AND status = 'completed';

-- name: job_list
-- One page of jobs in id order, after the cursor $4, filtered when given.
SELECT * FROM jobengine.jobs
WHERE ($1::jobengine.job_status IS NULL OR status = $1)
  AND ($2::text IS NULL OR kind = $2)
  AND ($3::text IS NULL OR queue = $3)
  AND id > coalesce($4::bigint, 0)
ORDER BY id
LIMIT $5;

-- name: job_count_by_status
SELECT status::text AS status, count(*) AS n FROM jobengine.jobs GROUP BY status;

-- name: job_next_due
-- When the next pending or scheduled job of these queues comes due after $2
-- (the claimer's last claim; default: now), and in how many seconds by the
-- database's clock: zero or less when one came due since then (NULL: none).
-- A claim that ran just before a job came due did not take it, and asking
-- only for jobs due after now would miss it until the polling interval.
-- One read per partial index of waiting jobs (a status list would match
-- none of them and read the whole table, finished jobs and all).
SELECT n.at, extract(epoch FROM n.at - statement_timestamp())::float8 AS due_in
FROM (SELECT least(
    (SELECT min(run_at) FROM jobengine.jobs
     WHERE status = 'scheduled' AND limit_key IS NULL AND queue = ANY ($1::text[])
       AND run_at > coalesce($2::timestamptz, statement_timestamp())),
    (SELECT min(run_at) FROM jobengine.jobs
     WHERE status = 'scheduled' AND limit_key IS NOT NULL AND queue = ANY ($1::text[])
       AND run_at > coalesce($2::timestamptz, statement_timestamp())),
    (SELECT min(run_at) FROM jobengine.jobs
     WHERE status = 'pending' AND limit_key IS NULL AND queue = ANY ($1::text[])
       AND run_at > coalesce($2::timestamptz, statement_timestamp())),
    (SELECT min(run_at) FROM jobengine.jobs
     WHERE status = 'pending' AND limit_key IS NOT NULL AND queue = ANY ($1::text[])
       AND run_at > coalesce($2::timestamptz, statement_timestamp()))
) AS at) n;

-- name: job_waiting_exists
-- Whether any pending job waits on dependencies (the scheduler's cheap gate).
SELECT EXISTS (
    SELECT 1 FROM jobengine.jobs WHERE status = 'pending' AND depends_on <> '{}'
);

-- name: job_timeline_note
SELECT jobengine.add_timeline_note($1::bigint[], $2, $3);

-- name: job_network_holds_lock
-- Pending jobs that need the network and carry no job.held note yet (sealed
-- mode notes each once), locked so two sealed daemons do not both note one.
SELECT j.id FROM jobengine.jobs j
WHERE j.status = 'pending' AND j.requires_network AND j.queue = ANY ($1::text[])
  AND NOT EXISTS (
      SELECT 1 FROM jobengine.timeline_events e
      WHERE e.job_id = j.id AND e.occurred_at >= j.created_at AND e.event_type = 'job.held')
ORDER BY j.id
LIMIT $2
FOR UPDATE SKIP LOCKED;
