-- jobengine 0014: a DAG pass reads what changed, not every waiting job.
--
-- The scheduler's pass (promote_v1, cascade_v1) reads every pending job that
-- waits on dependencies and probes each one's dependencies, and a daemon
-- runs one after every burst of `done` notifications (at most one per 10
-- ms). With 2,000 children waiting on a parent that had not finished, each
-- pass cost ~8 ms of PostgreSQL CPU with nothing to do, and a burn-down of
-- 20k unrelated jobs beside them paid +35 µs of PostgreSQL CPU a job; with
-- 20,000 waiting, the burn-down ran at 0.6x (bench/RESULTS.md).
--
-- A pass now asks what changed since the last one, from the ledger (the
-- same gap-free order the relay reads: rows of transactions that have
-- ended, by (tx_id, id)): the jobs that ended (their dependents may be ready
-- or must be cancelled) and the jobs created (they may be ready already).
-- Then it cascades and promotes among those alone, through a new index of
-- the waiting jobs by their dependencies (GIN, partial: jobs without
-- dependencies never enter it). The whole pass (promote_v1, cascade_v1)
-- stays for what no ledger row announces (a waiting job's `run_at` coming,
-- a pending job's `depends_on` changed by hand, a daemon starting) and as
-- the polling fallback.
--
-- And the claim read past every job waiting on dependencies: they are
-- pending, in jobs_pending_idx by claim order like the jobs ready to run, and
-- the claim skips them one heap row at a time (`depends_on = '{}'` is no
-- column of the index). 20,000 of them inserted before the jobs being
-- claimed made a claim of 10 cost 5.3 ms instead of 1.4. A job waiting on
-- dependencies now sorts last ('Infinity') until it is promoted, when it
-- takes the order its run_at and priority give, as before: the claim's
-- scan stops before the waiting ones.
SET LOCAL search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------
-- The claim order of a job waiting on dependencies.
-- ---------------------------------------------------------------------------

-- A pending job with dependencies sorts after every job it could be claimed
-- with (it cannot be: the claim takes pending jobs without dependencies);
-- any other job by run_at and priority (jobengine.claim_order).
CREATE FUNCTION jobengine.claim_order_of(p_status jobengine.job_status, p_depends_on bigint[],
                                         p_run_at timestamptz, p_priority integer)
RETURNS double precision
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN p_status = 'pending' AND p_depends_on <> '{}' THEN 'Infinity'::double precision
                ELSE jobengine.claim_order(p_run_at, p_priority) END;
END;

CREATE OR REPLACE FUNCTION jobengine.jobs_chain_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := NEW.created_at;
    NEW.ledger_head := jobengine.creation_hash(NEW.id, NEW.created_at, NEW.status_actor, NEW.status_role,
                                               NEW.kind, NEW.queue);
    NEW.claim_order := jobengine.claim_order_of(NEW.status, NEW.depends_on, NEW.run_at, NEW.priority);
    RETURN NEW;
END
$$;

-- As before (0005), and a pending job's depends_on changed by hand moves it
-- in or out of the waiting ones' place; promotion sets claim_order (to be
-- computed here) in the same statement as the status.
CREATE OR REPLACE FUNCTION jobengine.jobs_claim_order_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.limit_key IS DISTINCT FROM OLD.limit_key AND (OLD.status = 'running' OR NEW.status = 'running') THEN
        RAISE EXCEPTION 'jobengine: job %: limit_key cannot change while the job runs', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_limit_key_fixed', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    IF NEW.run_at IS DISTINCT FROM OLD.run_at OR NEW.priority IS DISTINCT FROM OLD.priority
       OR NEW.claim_order IS DISTINCT FROM OLD.claim_order OR NEW.depends_on IS DISTINCT FROM OLD.depends_on THEN
        NEW.claim_order := jobengine.claim_order_of(NEW.status, NEW.depends_on, NEW.run_at, NEW.priority);
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER jobs_claim_order ON jobengine.jobs;
CREATE TRIGGER jobs_claim_order BEFORE UPDATE OF run_at, priority, claim_order, limit_key, depends_on
    ON jobengine.jobs
    FOR EACH ROW EXECUTE FUNCTION jobengine.jobs_claim_order_update();
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_claim_order;

-- The jobs waiting now (their new order comes from the trigger).
UPDATE jobengine.jobs SET claim_order = 'Infinity'
WHERE status = 'pending' AND depends_on <> '{}';

-- promote_v1 as before, setting the promoted jobs' claim order.
CREATE OR REPLACE FUNCTION jobengine.promote_v1(p_queues text[], p_limit integer, p_sealed boolean DEFAULT false)
RETURNS TABLE (id bigint, kind text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    UPDATE jobengine.jobs AS j
    SET status = 'scheduled', status_reason = 'ready', claim_order = NULL
    WHERE j.id IN (
        SELECT p.id FROM jobengine.jobs p
        WHERE p.status = 'pending' AND p.depends_on <> '{}' AND p.queue = ANY (p_queues)
          AND p.run_at <= statement_timestamp()
          AND NOT (p_sealed AND p.requires_network)
          AND NOT EXISTS (
              SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (p.depends_on) AND d.status <> 'completed')
        ORDER BY p.id
        LIMIT p_limit
        FOR NO KEY UPDATE SKIP LOCKED
    )
    RETURNING j.id, j.kind
$$;

-- ---------------------------------------------------------------------------
-- Passes over what changed.
-- ---------------------------------------------------------------------------

-- Waiting jobs by the jobs they wait on: "who depends on these?". Without
-- GIN's pending list (fastupdate): every scan reads that list whole, against
-- every key asked for, so a pass asking for 200 ended jobs beside 2,000 new
-- waiting ones took 8 ms until a vacuum merged it; each job inserted with
-- dependencies pays its entries into the tree instead.
CREATE INDEX jobs_waiting_deps_idx ON jobengine.jobs USING gin (depends_on)
    WITH (fastupdate = off)
    WHERE status = 'pending' AND cardinality(depends_on) > 0;

-- What changed since the cursor (p_tx, p_id): the ledger's rows of ended
-- transactions after it (at most p_limit), as the jobs that ended
-- (completed, failed or cancelled) and the jobs created; the new cursor; and
-- whether rows remain to read: more than p_limit (`more`: the caller makes a
-- whole pass instead), or rows of transactions that committed after the
-- oldest one still running, which the next look will read (`behind`).
-- p_after bounds the read to the ledger's recent days (a row written
-- before it, by a transaction that has only just committed, is left to the
-- whole pass). A NULL cursor answers with the cursor of now and nothing else.
CREATE FUNCTION jobengine.dag_changes_v1(p_tx xid8, p_id bigint, p_after timestamptz, p_limit integer)
RETURNS TABLE (tx_id xid8, id bigint, ended bigint[], created bigint[], more boolean, behind boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
-- (by ledger_cursor_idx, whatever the statistics say: a day's partition not
-- analyzed yet made the planner read it whole for `behind`, 7 ms a pass)
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_xmin xid8 := pg_snapshot_xmin(pg_current_snapshot());
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'jobengine: dag_changes_v1: limit must be between 1 and 100000, not %', p_limit
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_tx IS NULL OR p_id IS NULL THEN
        -- (every row below the oldest running transaction is final: a whole
        -- pass that starts after this sees all of them)
        RETURN QUERY SELECT v_xmin, 0::bigint, '{}'::bigint[], '{}'::bigint[], false, false;
        RETURN;
    END IF;
    RETURN QUERY
    WITH b AS MATERIALIZED (
        SELECT l.tx_id, l.id, l.job_id, l.from_status, l.to_status, l.note FROM jobengine.ledger l
        WHERE (l.tx_id, l.id) > (p_tx, p_id) AND l.tx_id < v_xmin
          AND l.occurred_at >= p_after
        ORDER BY l.tx_id, l.id
        LIMIT p_limit
    ), last AS (
        SELECT b.tx_id, b.id FROM b ORDER BY b.tx_id DESC, b.id DESC LIMIT 1
    )
    SELECT coalesce((SELECT x.tx_id FROM last x), p_tx),
           coalesce((SELECT x.id FROM last x), p_id),
           coalesce((SELECT array_agg(DISTINCT b.job_id) FROM b
                     WHERE NOT b.note AND b.to_status IN ('completed', 'failed', 'cancelled')), '{}'),
           coalesce((SELECT array_agg(DISTINCT b.job_id) FROM b
                     WHERE NOT b.note AND b.from_status IS NULL), '{}'),
           (SELECT count(*) FROM b) >= p_limit,
           EXISTS (SELECT 1 FROM jobengine.ledger l
                   WHERE l.tx_id >= v_xmin AND l.occurred_at >= p_after);
END
$$;

-- The waiting jobs among the dependents of p_ended and the jobs p_created.
-- (`cardinality(depends_on) > 0` is the GIN index's own predicate, which no
-- other index serves: whatever the statistics say, the plan reads the
-- dependents through it, never every waiting job; on a table not analyzed
-- yet, the planner took jobs_waiting_idx whole, thinking it held one row.)
CREATE FUNCTION jobengine.dag_dependents(p_ended bigint[], p_created bigint[]) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN ARRAY(
        SELECT c.id FROM jobengine.jobs c
        WHERE c.status = 'pending' AND cardinality(c.depends_on) > 0 AND c.depends_on && p_ended
        UNION
        SELECT c.id FROM jobengine.jobs c
        WHERE c.id = ANY (p_created) AND c.status = 'pending' AND cardinality(c.depends_on) > 0
        ORDER BY 1);
END
$$;

-- cascade_v1 and promote_v1 among the dependents of p_ended and the jobs
-- p_created alone (looked up once, for both): `pending -> cancelled`
-- (dependency_failed) for those with a dependency that failed for good or
-- was cancelled, then `pending -> scheduled` for those of the rest that are
-- due and whose dependencies all completed; each at most p_limit. (One
-- generic plan a session: a custom one cost more to make than to run.)
CREATE FUNCTION jobengine.dag_moves_v1(
    p_queues text[], p_ended bigint[], p_created bigint[], p_limit integer, p_sealed boolean DEFAULT false
) RETURNS TABLE (id bigint, kind text, to_status jobengine.job_status)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET jit = off
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_ids bigint[] := jobengine.dag_dependents(p_ended, p_created);
BEGIN
    IF cardinality(v_ids) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    UPDATE jobengine.jobs AS j
    SET status = 'cancelled', status_reason = 'dependency_failed',
        last_error = 'dependency ' || (
            SELECT min(x.id) FROM jobengine.jobs x
            WHERE x.id = ANY (j.depends_on)
              AND (x.status = 'cancelled' OR (x.status = 'failed' AND x.attempt - x.released > x.max_retries))
        ) || ' ended failed or cancelled'
    WHERE j.id IN (
        SELECT p.id FROM jobengine.jobs p
        WHERE p.id = ANY (v_ids)
          AND p.status = 'pending' AND p.depends_on <> '{}'
          AND EXISTS (
              SELECT 1 FROM jobengine.jobs x
              WHERE x.id = ANY (p.depends_on)
                AND (x.status = 'cancelled' OR (x.status = 'failed' AND x.attempt - x.released > x.max_retries)))
        ORDER BY p.id
        LIMIT p_limit
        FOR NO KEY UPDATE SKIP LOCKED
    )
    RETURNING j.id, j.kind, j.status;
    -- (this statement sees the cancellations: those are no longer pending)
    RETURN QUERY
    UPDATE jobengine.jobs AS j
    SET status = 'scheduled', status_reason = 'ready', claim_order = NULL
    WHERE j.id IN (
        SELECT p.id FROM jobengine.jobs p
        WHERE p.id = ANY (v_ids)
          AND p.status = 'pending' AND p.depends_on <> '{}' AND p.queue = ANY (p_queues)
          AND p.run_at <= statement_timestamp()
          AND NOT (p_sealed AND p.requires_network)
          AND NOT EXISTS (
              SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (p.depends_on) AND d.status <> 'completed')
        ORDER BY p.id
        LIMIT p_limit
        FOR NO KEY UPDATE SKIP LOCKED
    )
    RETURNING j.id, j.kind, j.status;
END
$$;

-- The daemon's, like the rest of the write path (roles.sql grants them).
REVOKE EXECUTE ON FUNCTION
    jobengine.dag_dependents(bigint[], bigint[]),
    jobengine.dag_changes_v1(xid8, bigint, timestamptz, integer),
    jobengine.dag_moves_v1(text[], bigint[], bigint[], integer, boolean)
FROM PUBLIC;
DO $$
BEGIN
    IF to_regrole('jobengine_daemon') IS NOT NULL THEN
        GRANT EXECUTE ON FUNCTION
            jobengine.dag_dependents(bigint[], bigint[]),
            jobengine.dag_changes_v1(xid8, bigint, timestamptz, integer),
            jobengine.dag_moves_v1(text[], bigint[], bigint[], integer, boolean)
            TO jobengine_daemon;
    END IF;
END
$$;
