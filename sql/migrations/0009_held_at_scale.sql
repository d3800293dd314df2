-- jobengine 0009: what holds waiting jobs back, asked cheaply beside a large
-- ledger and without a race against the claim.
--
-- 1. held_v1 asked "are due jobs of this key waiting?" with status IN
--    ('pending', 'scheduled'), which matches none of the partial indexes
--    (each names one status): beside 10M finished jobs it read the whole
--    table (~0.9 s, seen in pg_stat_activity during the scale burn-down).
--    held_v2 asks one status at a time, as the indexes are written, and
--    returns at once when no limit is set.
-- 2. A daemon asks held_* just after a claim that left jobs behind. If a
--    rate limit's window was full when the claim looked and opened before
--    held_v1 looked, held_v1 saw an open window, reported no opening, and
--    the held job waited for the polling interval. held_v2 takes the
--    claim's own time (p_since) and reports any opening after it, past or
--    future: an opening already past means "claim again now". One that the
--    claim itself saw open (after p_since, before its window check) costs
--    one more claim, never a loop, because the next claim's time is later.
--    With p_since NULL it reports future openings only, as held_v1 did;
--    held_v1 is kept for daemons of 0.4.0 during a rolling upgrade.
-- 3. purge_jobs_v1 (a retention batch of 1,000 jobs) is planned with an
--    estimate far above its real cost whenever `jobs` lacks fresh column
--    statistics (after a big load or a big removal, before autovacuum's
--    ANALYZE): its NOT IN over the jobs still needed is costed as a scan of
--    an estimated 270k rows per candidate. Past jit_above_cost PostgreSQL
--    JIT-compiles the statement, with inlining and optimisation: 437 ms of
--    a 438 ms batch (auto_explain, 2.5M jobs without statistics), ~2,500
--    jobs/s; 11 ms with JIT off. A batch never runs long enough for JIT to
--    pay, so the function turns it off.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE FUNCTION jobengine.held_v2(p_queues text[], p_since timestamptz DEFAULT NULL)
RETURNS TABLE (concurrency_held boolean, rate_next_at timestamptz, limits_exist boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := statement_timestamp();
    v_since timestamptz := coalesce(p_since, statement_timestamp());
BEGIN
    IF NOT EXISTS (SELECT 1 FROM jobengine.concurrency_limits)
       AND NOT EXISTS (SELECT 1 FROM jobengine.rate_limits) THEN
        RETURN QUERY SELECT false, NULL::timestamptz, false;
        RETURN;
    END IF;
    -- The limited keys whose due jobs wait in these queues: two EXISTS
    -- each, one per status, so that each reads its partial index
    -- (jobs_claim_keyed_idx, jobs_pending_keyed_idx: the key comes first).
    RETURN QUERY
    WITH waiting AS MATERIALIZED (
        SELECT l.key FROM (SELECT c.key FROM jobengine.concurrency_limits c
                           UNION SELECT r.key FROM jobengine.rate_limits r) l
        WHERE EXISTS (SELECT 1 FROM jobengine.jobs w
                      WHERE w.status = 'scheduled' AND w.limit_key = l.key
                        AND w.queue = ANY (p_queues) AND w.run_at <= v_now)
           OR EXISTS (SELECT 1 FROM jobengine.jobs w
                      WHERE w.status = 'pending' AND w.limit_key = l.key
                        AND w.queue = ANY (p_queues) AND w.run_at <= v_now)
    )
    SELECT
        EXISTS (
            SELECT 1 FROM jobengine.concurrency_limits c JOIN waiting USING (key)
            WHERE (SELECT count(*) FROM jobengine.jobs r WHERE r.status = 'running' AND r.limit_key = c.key)
                  >= c.max_running),
        -- A window opens when the oldest of its key's latest max_starts
        -- starts leaves it. Starts that left the window stay in
        -- rate_limit_starts until the next claim of the key deletes them,
        -- so an opening since p_since is still found here.
        (SELECT min(o.opening)
         FROM jobengine.rate_limits rl JOIN waiting USING (key),
         LATERAL (SELECT count(*) AS n, min(s.started_at) + rl.per AS opening FROM (
                      SELECT s.started_at FROM jobengine.rate_limit_starts s
                      WHERE s.key = rl.key
                      ORDER BY s.started_at DESC LIMIT rl.max_starts) s) o
         WHERE o.n >= rl.max_starts AND o.opening > v_since),
        true;
END
$$;

CREATE OR REPLACE FUNCTION jobengine.held_v1(p_queues text[])
RETURNS TABLE (concurrency_held boolean, rate_next_at timestamptz, limits_exist boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM jobengine.held_v2(p_queues, NULL)
$$;

ALTER FUNCTION jobengine.purge_jobs_v1(timestamptz, integer, boolean) SET jit = off;
