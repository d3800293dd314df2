-- Named queries of the web dashboard (`jobengine.store.dashboard`).
--
-- Every one is bounded whatever the size of jobengine.jobs: each reads
-- through an existing index and stops after a given number of rows (the
-- `LIMIT $n` inside), so a table of ten million finished jobs costs the
-- same as one of ten thousand. Where an exact count would read more than
-- that, the store asks the planner for its estimate instead
-- (`dashboard_estimate*`) and says so. They run in a transaction with
-- sequential and bitmap scans off and custom plans forced
-- (`DashboardStore._reading`), so that a status given as a parameter still
-- selects the partial index made for it and no plan reads a whole table.

-- name: dashboard_count
-- Queues of up to $1 jobs in status $2. Planned for its values (custom
-- plans), each half is read through that status's partial index: for pending
-- and scheduled jobs one index without a limit key and one with; running,
-- failed and cancelled have one index for both halves, completed the index
-- of finished jobs (reading the status from the row).
SELECT s.queue, count(*) AS n FROM (
    (SELECT j.queue FROM jobengine.jobs j
     WHERE j.status = $2::jobengine.job_status AND j.limit_key IS NULL LIMIT $1)
    UNION ALL
    (SELECT j.queue FROM jobengine.jobs j
     WHERE j.status = $2::jobengine.job_status AND j.limit_key IS NOT NULL LIMIT $1)
    LIMIT $1
) s GROUP BY s.queue;

-- name: dashboard_estimate
-- The planner's estimate of the jobs in status $1 (from the table's statistics).
EXPLAIN (FORMAT JSON) SELECT 1 FROM jobengine.jobs WHERE status = $1::jobengine.job_status;

-- name: dashboard_estimate_queue
EXPLAIN (FORMAT JSON)
SELECT 1 FROM jobengine.jobs WHERE status = $1::jobengine.job_status AND queue = $2::text;

-- name: dashboard_queue_names
-- Queue names known without reading jobs: those of jobengine.queues and of
-- schedules, and the most common ones in the jobs table's statistics.
SELECT q.name FROM jobengine.queues q
UNION SELECT s.queue FROM jobengine.schedules s
UNION SELECT v.name FROM pg_stats p, unnest(p.most_common_vals::text::text[]) AS v(name)
      WHERE p.schemaname = 'jobengine' AND p.tablename = 'jobs' AND p.attname = 'queue';

-- name: dashboard_minutes
-- Per minute of the last $1 (the current one so far), the jobs that finished
-- in it. How many: counted through jobs_finished_idx alone (an index-only
-- scan of their finished_at, up to $3 a minute, the first to finish;
-- counted_to is the last of them). Their split by status and pickup latency:
-- from a sample spread evenly over what was counted (every k-th finished_at
-- of the minute, at most $2 of them, each read back with up to $4 jobs that
-- finished at that same moment, the batch it belongs to; each pick weighs 1,
-- shared among its jobs), so that a burst is sampled as much as it weighs.
-- With at most $2 jobs in a minute (and batches of at most $4), every job is
-- read and the split is exact. The store scales counts up from the share of
-- the minute `counted_to` covers when there were more than $3.
-- The pickup latency of a job's last attempt: from when it was due (its
-- run_at, or when it became scheduled, e.g. after its dependencies) to when
-- it started; a job claimed straight from pending has scheduled_at =
-- started_at, so its due time is its run_at (or its creation).
WITH b AS (
    SELECT m.t, least(m.t + interval '1 minute', statement_timestamp()) AS t_end
    FROM generate_series(date_trunc('minute', statement_timestamp()) - ($1::integer - 1) * interval '1 minute',
                         date_trunc('minute', statement_timestamp()), interval '1 minute') AS m(t)
), m AS (
    SELECT b.t, b.t_end, n.counted, n.counted_to, n.times
    FROM b CROSS JOIN LATERAL (
        SELECT count(*) AS counted, max(y.finished_at) AS counted_to,
               array_agg(y.finished_at ORDER BY y.finished_at) AS times
        FROM (
            SELECT j.finished_at FROM jobengine.jobs j
            WHERE j.status IN ('completed', 'cancelled', 'failed')
              AND j.finished_at >= b.t AND j.finished_at < b.t_end
            ORDER BY j.finished_at
            LIMIT $3
        ) y
    ) n
)
SELECT m.t AS minute, extract(epoch FROM m.t_end - m.t)::float8 AS seconds,
       m.counted, extract(epoch FROM m.counted_to - m.t)::float8 AS counted_span,
       s.picks, s.completed, s.failed, s.cancelled, s.latency_p50, s.latency_p95
FROM m CROSS JOIN LATERAL (
    SELECT count(DISTINCT r.rn) AS picks,
           coalesce(sum(r.w) FILTER (WHERE r.status = 'completed'), 0)::float8 AS completed,
           coalesce(sum(r.w) FILTER (WHERE r.status = 'failed'), 0)::float8 AS failed,
           coalesce(sum(r.w) FILTER (WHERE r.status = 'cancelled'), 0)::float8 AS cancelled,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY r.latency) AS latency_p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency) AS latency_p95
    FROM (
        SELECT p.rn, g.status, g.latency, 1.0 / count(*) OVER (PARTITION BY p.rn) AS w
        FROM unnest(m.times) WITH ORDINALITY AS p(at, rn)
        CROSS JOIN LATERAL (
            SELECT j.status,
                   extract(epoch FROM j.started_at - CASE
                       WHEN j.scheduled_at < j.started_at THEN greatest(j.scheduled_at, j.run_at)
                       ELSE greatest(j.run_at, j.created_at) END)::float8 AS latency
            FROM jobengine.jobs j
            WHERE j.status IN ('completed', 'cancelled', 'failed') AND j.finished_at = p.at
            LIMIT $4
        ) g
        WHERE p.rn % greatest(1, ceil(m.counted / $2::float8))::bigint = 0
    ) r
) s
ORDER BY m.t;

-- name: dashboard_oldest_waiting
-- The due job that has waited longest (pending or scheduled, run_at passed),
-- among the first $1 of each waiting index: in claim order for the jobs
-- without a limit key (the oldest come first there), any $1 for the keyed,
-- and the oldest $1 waiting on dependencies (they sort last in claim order).
SELECT w.*, statement_timestamp() AS now FROM (
    (SELECT j.* FROM jobengine.jobs j
     WHERE j.status = 'pending' AND j.depends_on <> '{}' AND j.run_at <= statement_timestamp()
     ORDER BY j.id LIMIT $1)
    UNION ALL
    (SELECT j.* FROM jobengine.jobs j
     WHERE j.status = 'scheduled' AND j.limit_key IS NULL AND j.run_at <= statement_timestamp()
     ORDER BY j.claim_order, j.id LIMIT $1)
    UNION ALL
    (SELECT j.* FROM jobengine.jobs j
     WHERE j.status = 'pending' AND j.limit_key IS NULL AND j.run_at <= statement_timestamp()
     ORDER BY j.claim_order, j.id LIMIT $1)
    UNION ALL
    (SELECT j.* FROM jobengine.jobs j
     WHERE j.status = 'scheduled' AND j.limit_key IS NOT NULL AND j.run_at <= statement_timestamp()
     LIMIT $1)
    UNION ALL
    (SELECT j.* FROM jobengine.jobs j
     WHERE j.status = 'pending' AND j.limit_key IS NOT NULL AND j.run_at <= statement_timestamp()
     LIMIT $1)
) w
ORDER BY w.run_at, w.id
LIMIT 1;

-- name: dashboard_jobs
-- One page of jobs, newest first, before the id $1: the filters are applied
-- to at most $2 jobs read in id order (through the index for the status, if
-- one keeps id order, else the primary key), so that a filter few jobs
-- match costs $2 rows, not the table. scanned_to is the last id read: the
-- next page starts there when this one is not full.
WITH c AS MATERIALIZED (
    SELECT j.id, j.kind, j.queue, j.payload FROM jobengine.jobs j
    WHERE j.id < $1 AND ($3::jobengine.job_status IS NULL OR j.status = $3)
    ORDER BY j.id DESC
    LIMIT $2
), hits AS (
    SELECT c.id FROM c
    WHERE ($4::text IS NULL OR c.kind = $4)
      AND ($5::text IS NULL OR c.queue = $5)
      AND ($6::jsonb IS NULL OR c.payload @> $6)
    ORDER BY c.id DESC
    LIMIT $7
)
SELECT j.*, (SELECT count(*) FROM c) AS scanned, (SELECT min(c.id) FROM c) AS scanned_to
FROM hits h JOIN jobengine.jobs j ON j.id = h.id
UNION ALL
-- (one row without a job when nothing matched, so the scan's extent still comes back)
SELECT (NULL::jobengine.jobs).*, (SELECT count(*) FROM c), (SELECT min(c.id) FROM c)
WHERE NOT EXISTS (SELECT 1 FROM hits)
ORDER BY id DESC NULLS LAST;

-- name: dashboard_newest_id
SELECT max(j.id) FROM jobengine.jobs j;

-- name: dashboard_children
-- The jobs that depend on $1: those still waiting on dependencies (the
-- partial index the cascade reads), and any other among the $2 jobs created
-- after it (a job depends on jobs that exist when it is created; only an
-- UPDATE of a pending job's depends_on can point to an older one).
SELECT * FROM (
    (SELECT j.* FROM jobengine.jobs j
     WHERE j.status = 'pending' AND j.depends_on <> '{}' AND j.depends_on @> ARRAY[$1::bigint]
     ORDER BY j.id LIMIT $3)
    UNION
    (SELECT j.* FROM jobengine.jobs j
     WHERE j.id > $1 AND j.id <= $1 + $2 AND j.depends_on @> ARRAY[$1::bigint]
     ORDER BY j.id LIMIT $3)
) k
ORDER BY k.id
LIMIT $3;
