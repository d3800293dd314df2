-- Scheduling: queues (paused or not), concurrency and rate limits, periodic
-- jobs (sql/migrations/0005_scheduling.sql). The claim itself enforces all
-- of it; these are what operators and the schedule ticker read and write.

-- name: queue_overview
-- Every queue that has jobs or a row in jobengine.queues: counts by status,
-- paused or not, and the oldest due job still waiting. Bounded on a table of
-- millions (it feeds /metrics): the statuses jobs pass through (pending,
-- scheduled, running) are counted exactly, each through its partial
-- indexes; the settled ones exactly while the table is small (under 200,000
-- rows by the planner's count), else from a 1% sample of its pages, scaled
-- (`estimated`).
WITH big AS (
    SELECT coalesce((SELECT c.reltuples > 200000 FROM pg_class c
                     WHERE c.oid = 'jobengine.jobs'::regclass), false) AS big
), live AS (
    SELECT j.queue, 'pending' AS status, count(*) AS n FROM jobengine.jobs j
    WHERE j.status = 'pending' AND j.limit_key IS NULL GROUP BY 1
    UNION ALL
    SELECT j.queue, 'pending', count(*) FROM jobengine.jobs j
    WHERE j.status = 'pending' AND j.limit_key IS NOT NULL GROUP BY 1
    UNION ALL
    SELECT j.queue, 'scheduled', count(*) FROM jobengine.jobs j
    WHERE j.status = 'scheduled' AND j.limit_key IS NULL GROUP BY 1
    UNION ALL
    SELECT j.queue, 'scheduled', count(*) FROM jobengine.jobs j
    WHERE j.status = 'scheduled' AND j.limit_key IS NOT NULL GROUP BY 1
    UNION ALL
    SELECT j.queue, 'running', count(*) FROM jobengine.jobs j
    WHERE j.status = 'running' GROUP BY 1
), settled AS (
    SELECT j.queue, j.status::text AS status, count(*) AS n FROM jobengine.jobs j
    WHERE j.status IN ('completed', 'failed', 'cancelled') AND NOT (SELECT b.big FROM big b)
    GROUP BY 1, 2
    UNION ALL
    SELECT s.queue, s.status::text, (count(*) * 100)::bigint FROM jobengine.jobs s TABLESAMPLE SYSTEM (1)
    WHERE s.status IN ('completed', 'failed', 'cancelled') AND (SELECT b.big FROM big b)
    GROUP BY 1, 2
), counts AS (
    SELECT c.queue, c.status, sum(c.n)::bigint AS n
    FROM (SELECT * FROM live UNION ALL SELECT * FROM settled) c GROUP BY 1, 2
), names AS (
    SELECT c.queue AS name FROM counts c UNION SELECT q.name FROM jobengine.queues q
)
SELECT n.name,
       coalesce(q.paused, false) AS paused,
       q.changed_by, q.changed_at,
       coalesce((SELECT jsonb_object_agg(c.status, c.n) FROM counts c WHERE c.queue = n.name), '{}') AS counts,
       (SELECT b.big FROM big b) AS estimated,
       (SELECT min(w.run_at) FROM (  -- (each arm through its partial index)
            SELECT p.run_at FROM jobengine.jobs p WHERE p.status = 'pending' AND p.limit_key IS NULL
              AND p.queue = n.name AND p.run_at <= statement_timestamp()
            UNION ALL
            SELECT p.run_at FROM jobengine.jobs p WHERE p.status = 'pending' AND p.limit_key IS NOT NULL
              AND p.queue = n.name AND p.run_at <= statement_timestamp()
            UNION ALL
            SELECT s.run_at FROM jobengine.jobs s WHERE s.status = 'scheduled' AND s.limit_key IS NULL
              AND s.queue = n.name AND s.run_at <= statement_timestamp()
            UNION ALL
            SELECT s.run_at FROM jobengine.jobs s WHERE s.status = 'scheduled' AND s.limit_key IS NOT NULL
              AND s.queue = n.name AND s.run_at <= statement_timestamp()
        ) w) AS oldest_waiting,
       statement_timestamp() AS now
FROM names n LEFT JOIN jobengine.queues q ON q.name = n.name
ORDER BY n.name;

-- name: queue_paused_names
SELECT q.name FROM jobengine.queues q WHERE q.paused ORDER BY q.name;

-- name: queue_set_paused
INSERT INTO jobengine.queues (name, paused) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
RETURNING name, paused, changed_by, changed_at;

-- name: limit_list
-- Every limit with what it holds now: running jobs of the key, starts in the
-- current window, and due jobs waiting (held, when the limit is full).
WITH keys AS (
    SELECT c.key FROM jobengine.concurrency_limits c UNION SELECT r.key FROM jobengine.rate_limits r
)
SELECT k.key, c.max_running, r.max_starts, r.per,
       (SELECT count(*) FROM jobengine.jobs j WHERE j.status = 'running' AND j.limit_key = k.key) AS running,
       (SELECT count(*) FROM jobengine.rate_limit_starts s
        WHERE s.key = k.key AND s.started_at > statement_timestamp() - r.per) AS recent_starts,
       -- (one status at a time: each is then read through its keyed partial index,
       -- where a status IN list would read the whole jobs table)
       (SELECT count(*) FROM jobengine.jobs w
        WHERE w.status = 'pending' AND w.limit_key = k.key AND w.run_at <= statement_timestamp())
       + (SELECT count(*) FROM jobengine.jobs w
          WHERE w.status = 'scheduled' AND w.limit_key = k.key
            AND w.run_at <= statement_timestamp()) AS waiting
FROM keys k
LEFT JOIN jobengine.concurrency_limits c ON c.key = k.key
LEFT JOIN jobengine.rate_limits r ON r.key = k.key
ORDER BY k.key;

-- name: limit_set_concurrency
INSERT INTO jobengine.concurrency_limits (key, max_running) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET max_running = excluded.max_running
RETURNING key;

-- name: limit_set_rate
INSERT INTO jobengine.rate_limits (key, max_starts, per) VALUES ($1, $2, $3)
ON CONFLICT (key) DO UPDATE SET max_starts = excluded.max_starts, per = excluded.per
RETURNING key;

-- name: limit_remove_concurrency
DELETE FROM jobengine.concurrency_limits WHERE key = $1 RETURNING key;

-- name: limit_remove_rate
DELETE FROM jobengine.rate_limits WHERE key = $1 RETURNING key;

-- name: limit_held
-- What holds waiting jobs of these queues back, with any rate-limit window
-- opened since $2 (the time of the claim that left them behind; see held_v2).
SELECT * FROM jobengine.held_v2($1::text[], $2::timestamptz);

-- name: schedule_list
SELECT s.*, statement_timestamp() AS now FROM jobengine.schedules s ORDER BY s.name;

-- name: schedule_get
SELECT s.*, statement_timestamp() AS now FROM jobengine.schedules s WHERE s.name = $1;

-- name: schedule_upsert
-- Create or redefine a schedule; an unchanged definition writes nothing
-- (every daemon upserts its config's schedules when it starts). enabled
-- NULL keeps a schedule's state (paused from the CLI stays paused).
INSERT INTO jobengine.schedules AS s
    (name, cron, every, kind, queue, payload, priority, limit_key, timezone, enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10::boolean, true))
ON CONFLICT (name) DO UPDATE SET
    cron = excluded.cron, every = excluded.every, kind = excluded.kind, queue = excluded.queue,
    payload = excluded.payload, priority = excluded.priority, limit_key = excluded.limit_key,
    timezone = excluded.timezone, enabled = coalesce($10::boolean, s.enabled)
WHERE (s.cron, s.every, s.kind, s.queue, s.payload, s.priority, s.limit_key, s.timezone, s.enabled)
      IS DISTINCT FROM
      (excluded.cron, excluded.every, excluded.kind, excluded.queue, excluded.payload, excluded.priority,
       excluded.limit_key, excluded.timezone, coalesce($10::boolean, s.enabled))
RETURNING s.name;

-- name: schedule_remove
DELETE FROM jobengine.schedules WHERE name = $1 RETURNING name;

-- name: schedule_set_enabled
UPDATE jobengine.schedules SET enabled = $2 WHERE name = $1 RETURNING name;

-- name: schedule_tick
SELECT jobengine.schedule_tick_v1($1, $2, $3);
