-- jobengine 0013: an outcome or a renewal is planned once a session, not on
-- every call.
--
-- PL/pgSQL keeps each statement's plan, but the plan cache makes a custom
-- plan for every call whenever the generic plan looks dearer than the
-- custom ones, and with array parameters it always does: a custom plan sees
-- a one-element array, the generic one assumes ten. So finish_v1,
-- release_v1, renew_v1, fail_v1 and lock_attempts planned their statements
-- again on every call; and the SQL functions with SET clauses that fail_v1
-- calls (attempt_answers, schedule_retries) are never inlined and, on
-- PostgreSQL before 18, planned on every call whatever their arguments. A
-- daemon that finishes jobs one at a time (a steady trickle, every job its
-- own batch) paid it for each job: `perf` of a claim/finish loop of one job
-- found 13% of the backend's time in the planner, all of it in these
-- statements (claim_v1 already runs its generic plan: 0011).
--
-- 1. The four functions and lock_attempts ask for the generic plan. Their
--    statements were written for one plan: lock_attempts locks by id alone
--    (jobs_pkey, 0012), the updates take the rows by ctid.
-- 2. attempt_answers gets an SQL-standard body and no SET clauses, so that
--    its callers' statements inline it (its names are bound now, with only
--    pg_catalog on the path; tests/test_guarantees.py checks every function
--    is pinned one way or the other).
-- 3. schedule_retries becomes PL/pgSQL with the generic plan, and returns at
--    once when no attempt has a retry delay (a final failure ran an UPDATE of
--    no rows, with its statement-level triggers, for nothing).
--
-- Same answers, same locks, same rows written.
SET LOCAL search_path = pg_catalog, pg_temp;

ALTER FUNCTION jobengine.finish_v1(text, bigint[], integer[], text[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION jobengine.release_v1(text, bigint[], integer[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION jobengine.renew_v1(text, bigint[], integer[], interval)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION jobengine.fail_v1(text, bigint[], integer[], text[], text[], double precision[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION jobengine.lock_attempts(text, bigint[], integer[])
    SET plan_cache_mode = force_generic_plan;

-- For attempts not written: 'done' (written after all), 'busy' (still the
-- caller's, held locked elsewhere) or 'moved' (no longer the caller's), with
-- the kind. Inlined into the caller's statement (no SET clauses: its names
-- were bound when this migration created it).
CREATE OR REPLACE FUNCTION jobengine.attempt_answers(p_owner text, p_ids bigint[], p_attempts integer[], p_done bigint[])
RETURNS TABLE (id bigint, attempt integer, outcome text, kind text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT t.id, t.attempt, CASE
        WHEN t.id = ANY (p_done) THEN 'done'
        WHEN j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner THEN 'busy'
        ELSE 'moved' END, j.kind
    FROM unnest(p_ids, p_attempts) AS t(id, attempt) LEFT JOIN jobengine.jobs j ON j.id = t.id;
END;

-- failed -> scheduled at now + delay (seconds) for each failed job whose
-- delay is not NULL; rows someone else holds locked are left.
CREATE OR REPLACE FUNCTION jobengine.schedule_retries(p_ids bigint[], p_delays double precision[], p_reason text)
RETURNS TABLE (id bigint, run_at timestamptz)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF coalesce(cardinality(array_remove(p_delays, NULL)), 0) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH t AS (SELECT * FROM unnest(p_ids, p_delays) AS t(id, delay) WHERE t.delay IS NOT NULL),
    locked AS (
        SELECT j.id FROM jobengine.jobs j JOIN t ON t.id = j.id
        WHERE j.status = 'failed'
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ), upd AS (
        UPDATE jobengine.jobs j
        SET status = 'scheduled', status_reason = p_reason,
            run_at = statement_timestamp() + make_interval(secs => greatest(t.delay, 0))
        FROM t, locked
        WHERE j.id = t.id AND locked.id = t.id
        RETURNING j.id, j.run_at
    )
    SELECT upd.id, upd.run_at FROM upd;
END
$$;
