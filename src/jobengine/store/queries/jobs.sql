-- Named queries on jobengine.jobs. Noun first, so related queries sort together.

-- name: job_insert
-- A new job (pending). With an idempotency key already taken, no row comes back.
INSERT INTO jobengine.jobs
    (kind, queue, payload, priority, run_at, depends_on, max_retries, retry_policy,
     timeout, requires_network, idempotency_key)
VALUES ($1, $2, $3, $4, coalesce($5::timestamptz, now()), $6, $7, $8, $9, $10, $11)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING *;

-- name: job_get
SELECT * FROM jobengine.jobs WHERE id = $1;

-- name: job_get_by_idempotency_key
SELECT * FROM jobengine.jobs WHERE idempotency_key = $1;

-- name: job_get_many
SELECT * FROM jobengine.jobs WHERE id = ANY ($1::bigint[]) ORDER BY id;

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

-- name: job_transition_many
-- The one write path for status changes: a guarded compare-and-set, batched.
-- A row changes only if it is still in from_status and, where given, still
-- at this attempt and held by this lease owner; the ids that come back are
-- the rows that changed, so the caller learns which it lost.
UPDATE jobengine.jobs AS j
SET status = t.to_status,
    status_reason = coalesce(t.reason, j.status_reason),
    result = CASE WHEN t.to_status = 'completed' THEN t.result::jsonb ELSE j.result END,
    last_error = coalesce(t.error, j.last_error),
    run_at = coalesce(t.run_at, j.run_at),
    updated_at = coalesce($10::timestamptz, now())
FROM unnest($1::bigint[], $2::jobengine.job_status[], $3::jobengine.job_status[],
            $4::integer[], $5::text[], $6::text[], $7::text[], $8::text[], $9::timestamptz[])
     AS t(id, from_status, to_status, attempt, lease_owner, reason, result, error, run_at)
WHERE j.id = t.id
  AND j.status = t.from_status
  AND (t.attempt IS NULL OR j.attempt = t.attempt)
  AND (t.lease_owner IS NULL OR j.lease_owner = t.lease_owner)
RETURNING j.id, j.attempt, j.released, j.max_retries, j.retry_policy;

-- name: job_claim_batch
-- Claim the best runnable jobs (scheduled, or due and dependency-free
-- pending) with a lease.
SELECT * FROM jobengine.claim_jobs($1, $2::text[], $3::text[], $4, $5::interval, $6::timestamptz,
                                   $7);

-- name: job_promote_ready
-- pending -> scheduled for due jobs whose dependencies all completed. Only jobs
-- that have dependencies: the claim itself promotes dependency-free jobs.
UPDATE jobengine.jobs AS j
SET status = 'scheduled', status_reason = 'ready', updated_at = coalesce($2::timestamptz, now())
WHERE j.id IN (
    SELECT p.id FROM jobengine.jobs p
    WHERE p.status = 'pending' AND p.depends_on <> '{}' AND p.queue = ANY ($1::text[])
      AND p.run_at <= coalesce($2::timestamptz, now())
      AND NOT ($3::boolean AND p.requires_network)
      AND NOT EXISTS (
          SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (p.depends_on) AND d.status <> 'completed')
    ORDER BY p.id
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
RETURNING j.id;

-- name: job_waiting_exists
-- Whether any pending job waits on dependencies (the scheduler's cheap gate).
SELECT EXISTS (
    SELECT 1 FROM jobengine.jobs WHERE status = 'pending' AND depends_on <> '{}'
);

-- name: job_cancel_orphans
-- pending -> cancelled for jobs with a dependency that was cancelled or failed
-- for good. Run until it returns nothing to cancel down the whole DAG.
UPDATE jobengine.jobs AS j
SET status = 'cancelled', status_reason = 'dependency_failed',
    updated_at = coalesce($1::timestamptz, now()),
    last_error = 'dependency ' || (
        SELECT min(x.id) FROM jobengine.jobs x
        WHERE x.id = ANY (j.depends_on)
          AND (x.status = 'cancelled' OR (x.status = 'failed' AND x.attempt - x.released > x.max_retries))
    ) || ' ended failed or cancelled'
WHERE j.id IN (
    SELECT p.id FROM jobengine.jobs p
    WHERE p.status = 'pending' AND p.depends_on <> '{}'
      AND EXISTS (
          SELECT 1 FROM jobengine.jobs x
          WHERE x.id = ANY (p.depends_on)
            AND (x.status = 'cancelled' OR (x.status = 'failed' AND x.attempt - x.released > x.max_retries)))
    ORDER BY p.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING j.id, j.attempt, j.released, j.max_retries, j.retry_policy;

-- name: job_next_due
-- When the next pending or scheduled job of these queues becomes due (NULL: none waiting).
SELECT min(run_at) FROM jobengine.jobs
WHERE status IN ('pending', 'scheduled') AND queue = ANY ($1::text[])
  AND run_at > coalesce($2::timestamptz, now());

-- name: job_retryable_lock
-- Failed jobs that still have retries left (failed by hand, or by a worker
-- that died between recording a failure and its retry), locked for retrying.
SELECT * FROM jobengine.jobs
WHERE status = 'failed' AND attempt - released <= max_retries
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: job_timeline_note
SELECT jobengine.add_timeline_note($1::bigint[], $2, $3);

-- name: job_network_holds_lock
-- Pending jobs that need the network and carry no job.held note yet (sealed
-- mode notes each once), locked so two sealed daemons do not both note one.
SELECT j.id FROM jobengine.jobs j
WHERE j.status = 'pending' AND j.requires_network AND j.queue = ANY ($1::text[])
  AND NOT EXISTS (
      SELECT 1 FROM jobengine.timeline_events e
      WHERE e.job_id = j.id AND e.event_type = 'job.held')
ORDER BY j.id
LIMIT $2
FOR UPDATE SKIP LOCKED;
