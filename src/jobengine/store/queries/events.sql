-- Named queries on the audit trail: job_history and timeline_events.

-- name: history_for_job
SELECT id, job_id, from_status::text AS from_status, to_status::text AS to_status,
       attempt, occurred_at, reason, actor, role
FROM jobengine.job_history
-- (the ledger is partitioned by day: only days since the job was created)
WHERE job_id = $1
  AND occurred_at >= coalesce((SELECT created_at FROM jobengine.jobs WHERE id = $1), '-infinity')
ORDER BY id;

-- name: timeline_for_job
SELECT id, event_id::text AS event_id, job_id, event_type, occurred_at, envelope
FROM jobengine.timeline_events
WHERE job_id = $1
  AND occurred_at >= coalesce((SELECT created_at FROM jobengine.jobs WHERE id = $1), '-infinity')
ORDER BY id;

-- name: timeline_after
-- Events after the cursor (tx_id, id), in that order, but only from
-- transactions older than every one still open: a slow transaction's events
-- can then never appear behind a cursor that has already passed them.
SELECT id, event_id::text AS event_id, job_id, event_type, occurred_at, envelope,
       tx_id::text AS tx_id
FROM jobengine.timeline_events
WHERE (tx_id, id) > ($1::xid8, $2::bigint)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id, id
LIMIT $3;

-- name: timeline_head
-- Where a reader that wants only what comes next starts: just before the
-- oldest transaction still open, so none of its events can be passed over;
-- and the events after that point which had committed already (to skip).
SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint - 1) AS tx_id,
       ARRAY(SELECT event_id::text FROM jobengine.timeline_events
             WHERE tx_id >= pg_snapshot_xmin(pg_current_snapshot())) AS committed;
