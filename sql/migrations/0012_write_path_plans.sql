-- jobengine 0012: the write path's plans, whatever the statistics and the
-- statement that came first in a session.
--
-- 1. finish_v1, release_v1, fail_v1 and renew_v1 locked the requested
--    attempts with one statement that joined the ids to jobs filtered on
--    `status = 'running'`. That filter matches the partial index
--    jobs_lease_idx (every running job), and whenever the statistics said
--    few jobs were running (taken before a burst of claims, or while the
--    queue was idle) the planner read that whole index, every running job
--    of every daemon, for each call (tests/test_query_plans.py: 2,000 rows
--    read to write 3 outcomes). The lock, one function for the four
--    (lock_attempts), now takes the rows by id alone (only jobs_pkey can
--    answer that), and whether each is still this owner's running attempt
--    is judged on the locked row; the answers for attempts not written come
--    from one function too (attempt_answers). Same answers ('done', 'busy', 'moved'),
--    same locks on the rows written; a row that is no longer the caller's
--    is now locked too until the call's transaction ends, and left as it is.
-- 2. PL/pgSQL keeps a statement's plan for the session, and the recorders'
--    plans were made with the size of the statement that first needed
--    them: after one claim of 5,000 jobs on a connection (a daemon with a
--    high concurrency, a reaper pass after a crash, a bulk cancel) the
--    update recorder's plan cost ~5M, past jit_above_cost, so PostgreSQL
--    (where it has JIT, as Debian's packages do, on by default) compiled it
--    again on every later status change on that connection: a claim of 10
--    took 45 ms instead of 1.6 (781 ms of JIT for a finish of 10 after a
--    claim of 20,000). The write path's functions and the statement-level
--    triggers now run with jit = off: their statements are short, and JIT
--    never pays for them.
SET LOCAL search_path = pg_catalog, pg_temp;

-- The rows of these attempts that are still `p_owner`'s running attempts,
-- locked (rows someone else holds locked are skipped: the callers answer
-- 'busy' for them). The lock is taken by id alone, so only jobs_pkey can
-- answer it; whether a row is still the caller's is judged on the locked row.
CREATE FUNCTION jobengine.lock_attempts(p_owner text, p_ids bigint[], p_attempts integer[])
RETURNS SETOF tid
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
BEGIN
    RETURN QUERY
    WITH locked AS MATERIALIZED (
        SELECT j.ctid, j.status, j.attempt AS held_attempt, j.lease_owner, t.attempt
        FROM unnest(p_ids, p_attempts) AS t(id, attempt) JOIN jobengine.jobs j ON j.id = t.id
        FOR NO KEY UPDATE OF j SKIP LOCKED
    )
    SELECT l.ctid FROM locked l
    WHERE l.status = 'running' AND l.held_attempt = l.attempt AND l.lease_owner = p_owner;
END
$$;

-- Each requested attempt's answer once those written are known: 'done'
-- (written), 'busy' (still `p_owner`'s running attempt: someone else held
-- the row locked; try again) or 'moved' (no longer this owner's attempt:
-- the outcome must be dropped), with the job's kind. The second look of the
-- four functions below when not every attempt was written.
CREATE FUNCTION jobengine.attempt_answers(p_owner text, p_ids bigint[], p_attempts integer[], p_done bigint[])
RETURNS TABLE (id bigint, attempt integer, outcome text, kind text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
    SELECT t.id, t.attempt, CASE
        WHEN t.id = ANY (p_done) THEN 'done'
        WHEN j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner THEN 'busy'
        ELSE 'moved' END, j.kind
    FROM unnest(p_ids, p_attempts) AS t(id, attempt) LEFT JOIN jobengine.jobs j ON j.id = t.id
$$;

-- running -> completed, with each attempt's result (JSON text).
CREATE OR REPLACE FUNCTION jobengine.finish_v1(
    p_owner text, p_ids bigint[], p_attempts integer[], p_results text[]
) RETURNS TABLE (id bigint, attempt integer, outcome text, kind text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    v_ids bigint[];
    v_attempts integer[];
    v_kinds text[];
BEGIN
    WITH upd AS (
        UPDATE jobengine.jobs j
        SET status = 'completed', status_reason = 'completed', result = r.result::jsonb
        FROM unnest(p_ids, p_results) AS r(id, result)
        WHERE j.ctid = ANY (ARRAY(SELECT jobengine.lock_attempts(p_owner, p_ids, p_attempts))) AND r.id = j.id
        RETURNING j.id, j.attempt, j.kind
    )
    SELECT array_agg(upd.id), array_agg(upd.attempt), array_agg(upd.kind) INTO v_ids, v_attempts, v_kinds FROM upd;
    IF coalesce(cardinality(v_ids), 0) = cardinality(p_ids) THEN
        -- all written: the common case needs no second look
        RETURN QUERY SELECT u.id, u.attempt, 'done'::text, u.kind FROM unnest(v_ids, v_attempts, v_kinds) AS u(id, attempt, kind);
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM jobengine.attempt_answers(p_owner, p_ids, p_attempts, v_ids);
END
$$;

-- running -> scheduled: given back at shutdown (not counted against max_retries).
CREATE OR REPLACE FUNCTION jobengine.release_v1(p_owner text, p_ids bigint[], p_attempts integer[])
RETURNS TABLE (id bigint, attempt integer, outcome text, kind text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    v_ids bigint[];
    v_attempts integer[];
    v_kinds text[];
BEGIN
    WITH upd AS (
        UPDATE jobengine.jobs j
        SET status = 'scheduled', status_reason = 'shutdown', run_at = statement_timestamp()
        WHERE j.ctid = ANY (ARRAY(SELECT jobengine.lock_attempts(p_owner, p_ids, p_attempts)))
        RETURNING j.id, j.attempt, j.kind
    )
    SELECT array_agg(upd.id), array_agg(upd.attempt), array_agg(upd.kind) INTO v_ids, v_attempts, v_kinds FROM upd;
    IF coalesce(cardinality(v_ids), 0) = cardinality(p_ids) THEN
        -- all written: the common case needs no second look
        RETURN QUERY SELECT u.id, u.attempt, 'done'::text, u.kind FROM unnest(v_ids, v_attempts, v_kinds) AS u(id, attempt, kind);
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM jobengine.attempt_answers(p_owner, p_ids, p_attempts, v_ids);
END
$$;

-- Extend the leases this owner still holds. A row someone else holds locked
-- is not waited for ('busy': the daemon's own deadline keeps counting).
CREATE OR REPLACE FUNCTION jobengine.renew_v1(
    p_owner text, p_ids bigint[], p_attempts integer[], p_lease_ttl interval
) RETURNS TABLE (id bigint, attempt integer, outcome text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    v_ids bigint[];
    v_attempts integer[];
BEGIN
    WITH upd AS (
        UPDATE jobengine.jobs j
        SET lease_expires_at = statement_timestamp() + jobengine.positive_ttl(p_lease_ttl)
        WHERE j.ctid = ANY (ARRAY(SELECT jobengine.lock_attempts(p_owner, p_ids, p_attempts)))
        RETURNING j.id, j.attempt
    )
    SELECT array_agg(upd.id), array_agg(upd.attempt) INTO v_ids, v_attempts FROM upd;
    IF coalesce(cardinality(v_ids), 0) = cardinality(p_ids) THEN
        -- all written: the common case needs no second look
        RETURN QUERY SELECT u.id, u.attempt, 'done'::text FROM unnest(v_ids, v_attempts) AS u(id, attempt);
        RETURN;
    END IF;
    RETURN QUERY SELECT a.id, a.attempt, a.outcome FROM jobengine.attempt_answers(p_owner, p_ids, p_attempts, v_ids) AS a;
END
$$;

-- running -> failed, and for attempts whose retry delay (seconds) is given,
-- failed -> scheduled at now + delay, in the same call (the decision is the
-- caller's: jobengine.domain.retry.retry_delay). NULL delay: failed for good.
CREATE OR REPLACE FUNCTION jobengine.fail_v1(
    p_owner text, p_ids bigint[], p_attempts integer[], p_reasons text[], p_errors text[],
    p_retry_delays double precision[]
) RETURNS TABLE (id bigint, attempt integer, outcome text, kind text, retry_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    v_done bigint[];
BEGIN
    WITH t AS (
        SELECT * FROM unnest(p_ids, p_reasons, p_errors) AS t(id, reason, error)
    ), upd AS (
        UPDATE jobengine.jobs j
        SET status = 'failed', status_reason = coalesce(t.reason, 'error'), last_error = t.error
        FROM t
        WHERE j.ctid = ANY (ARRAY(SELECT jobengine.lock_attempts(p_owner, p_ids, p_attempts))) AND t.id = j.id
        RETURNING j.id
    )
    SELECT coalesce(array_agg(upd.id), '{}') INTO v_done FROM upd;
    RETURN QUERY
    WITH t AS (
        SELECT * FROM unnest(p_ids, p_retry_delays) AS t(id, delay)
    ), r AS (
        SELECT * FROM jobengine.schedule_retries(
            ARRAY(SELECT t.id FROM t WHERE t.id = ANY (v_done)),
            ARRAY(SELECT t.delay FROM t WHERE t.id = ANY (v_done)), 'retry')
    )
    SELECT a.id, a.attempt, a.outcome, a.kind, r.run_at
    FROM jobengine.attempt_answers(p_owner, p_ids, p_attempts, v_done) AS a LEFT JOIN r ON r.id = a.id;
END
$$;

-- lock_attempts and attempt_answers keep PUBLIC's EXECUTE: they run with
-- the caller's rights and take only locks the caller could take with
-- SELECT ... FOR NO KEY UPDATE, or read what it could read.
-- Revoked, the daemons' role would lack them between `jobengine migrate` and
-- `jobengine migrate --roles`, and every finish and renewal, even of
-- daemons of the release before, would fail until then.

-- (2) JIT off for the write path and the statement-level triggers (their
-- plans last the session; the functions redefined above say it themselves).
ALTER FUNCTION jobengine.jobs_record_insert() SET jit = off;
ALTER FUNCTION jobengine.jobs_record_update() SET jit = off;
ALTER FUNCTION jobengine.jobs_guard_delete() SET jit = off;
ALTER FUNCTION jobengine.claim_v1(text, text[], text[], integer, interval, boolean) SET jit = off;
ALTER FUNCTION jobengine.reap_candidates_v1(integer) SET jit = off;
ALTER FUNCTION jobengine.reap_v1(bigint[], integer[], text[], double precision[]) SET jit = off;
ALTER FUNCTION jobengine.schedule_retries(bigint[], double precision[], text) SET jit = off;
ALTER FUNCTION jobengine.retry_candidates_v1(integer) SET jit = off;
ALTER FUNCTION jobengine.retry_v1(bigint[], double precision[], text) SET jit = off;
ALTER FUNCTION jobengine.promote_v1(text[], integer, boolean) SET jit = off;
ALTER FUNCTION jobengine.cascade_v1(integer) SET jit = off;
ALTER FUNCTION jobengine.cancel_v1(bigint[], text) SET jit = off;
ALTER FUNCTION jobengine.add_timeline_note(bigint[], text, text) SET jit = off;
ALTER FUNCTION jobengine.validate_dependencies(bigint[]) SET jit = off;
ALTER FUNCTION jobengine.relay_v1(integer) SET jit = off;
ALTER FUNCTION jobengine.held_v2(text[], timestamptz) SET jit = off;
ALTER FUNCTION jobengine.schedule_tick_v1(text, timestamptz, integer) SET jit = off;
