-- The write path: every status change jobengine makes, through the database's
-- versioned functions (sql/migrations/0003_guarantees.sql). A daemon of the
-- next release may call *_v2 beside these while both run.

-- name: lifecycle_claim
-- The claimed rows, each with the claim's time; one row of NULLs but the
-- time when nothing was taken.
SELECT t.claim_at, c.*
FROM (SELECT statement_timestamp() AS claim_at) t
LEFT JOIN LATERAL jobengine.claim_v1($1, $2::text[], $3::text[], $4, $5::interval, $6) c ON true;

-- name: lifecycle_finish
SELECT * FROM jobengine.finish_v1($1, $2::bigint[], $3::integer[], $4::text[]);

-- name: lifecycle_fail
SELECT * FROM jobengine.fail_v1($1, $2::bigint[], $3::integer[], $4::text[], $5::text[],
                                $6::float8[]);

-- name: lifecycle_release
SELECT * FROM jobengine.release_v1($1, $2::bigint[], $3::integer[]);

-- name: lifecycle_renew
SELECT * FROM jobengine.renew_v1($1, $2::bigint[], $3::integer[], $4::interval);

-- name: lifecycle_reap_candidates
SELECT * FROM jobengine.reap_candidates_v1($1);

-- name: lifecycle_reap
SELECT * FROM jobengine.reap_v1($1::bigint[], $2::integer[], $3::text[], $4::float8[]);

-- name: lifecycle_retry_candidates
SELECT * FROM jobengine.retry_candidates_v1($1);

-- name: lifecycle_retry
SELECT * FROM jobengine.retry_v1($1::bigint[], $2::float8[], $3);

-- name: lifecycle_cancel
SELECT * FROM jobengine.cancel_v1($1::bigint[], $2);

-- name: lifecycle_promote
SELECT * FROM jobengine.promote_v1($1::text[], $2, $3);

-- name: lifecycle_cascade
SELECT * FROM jobengine.cascade_v1($1);

-- name: lifecycle_dag_changes
-- What changed since the cursor ($1, $2; NULL: the cursor of now), in the
-- ledger's last five minutes (older rows of a transaction that has only just
-- committed are left to the whole pass), at most $3 rows.
SELECT c.tx_id::text AS tx_id, c.id, c.ended, c.created, c.more, c.behind
FROM jobengine.dag_changes_v1($1::text::xid8, $2, statement_timestamp() - interval '5 minutes', $3) c;

-- name: lifecycle_dag_moves
SELECT m.id, m.kind, m.to_status::text AS to_status
FROM jobengine.dag_moves_v1($1::text[], $2::bigint[], $3::bigint[], $4, $5) m;

-- name: lifecycle_attempt_ends
-- How each attempt ended, read back after a write whose COMMIT went unanswered
-- (the connection was lost): the first transition out of `running` at that
-- attempt, and its reason; `still_ours` when the job is still running under
-- this owner's lease at that attempt (the write did not land).
SELECT a.id, a.attempt, e.to_status::text AS ended_as, e.reason AS ended_why,
       coalesce(j.status = 'running' AND j.attempt = a.attempt AND j.lease_owner = $1, false)
           AS still_ours
FROM unnest($2::bigint[], $3::integer[]) AS a(id, attempt)
LEFT JOIN jobengine.jobs j ON j.id = a.id
LEFT JOIN LATERAL (
    SELECT h.to_status, h.reason FROM jobengine.job_history h
    WHERE h.job_id = a.id AND h.attempt = a.attempt AND h.from_status = 'running'
    ORDER BY h.id LIMIT 1
) e ON true;

-- name: lifecycle_adoptable
-- After a claim whose COMMIT went unanswered: the jobs running under this
-- owner's lease at attempts it does not know it holds (the claim landed after all).
SELECT * FROM jobengine.jobs
WHERE status = 'running' AND lease_owner = $1
  AND (id, attempt) NOT IN (SELECT * FROM unnest($2::bigint[], $3::integer[]));
