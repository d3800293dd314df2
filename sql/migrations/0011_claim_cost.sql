-- jobengine 0011: the claim, cheaper per call, most of all with limit keys.
--
-- Measured on 2 cores (tests would not see it; bench/RESULTS.md has the
-- figures): the claim's PostgreSQL CPU per call, 20k waiting jobs, rolled
-- back. Where the time went, and what changed:
--
-- 1. Every call was planned again. PL/pgSQL keeps a statement's plan, but
--    the plan cache takes a custom plan whenever the generic one looks
--    dearer, and the claim's `LIMIT p_limit` always does (a generic plan
--    cannot see the limit): the plain claim of 3 jobs spent ~0.3 ms of its
--    ~0.8 planning. Every statement here is written for one plan (the
--    function already pins index scans), so the function now asks for the
--    generic plan (plan_cache_mode = force_generic_plan): the plain claim of
--    3 jobs 0.66 -> 0.42 ms, of 10 0.85 -> 0.62, of 60 2.20 -> 1.89.
-- 2. The keyed claim (when jobs with a limit_key wait) walked the keys with
--    two index probes each (one per status), then read each key's
--    candidates with two more scans, in a dozen statements. It now walks
--    jobs_waiting_keyed_idx (new: both waiting statuses, by key then claim
--    order), each step landing on the next key that has a claimable job and
--    on that job; try-locks the walked keys that have a limit in the same
--    statement; and in one more statement counts their limits, takes the
--    first job of every group that may start one (each key; the jobs
--    without a key as one more group), locks and claims them, records the
--    rate-limited starts and moves the rotation on. That is the whole claim
--    when it fills p_limit and every job taken is of the top priority level
--    among the groups' first jobs (then no job left out could outrank one
--    taken: each group's later jobs are behind its first). Otherwise (fewer
--    keys than the claim wants, or mixed priorities) the claim goes on as
--    before, each group's share in up to two rounds.
-- 3. A claim that came back short moved the rotation only past the keys it
--    took from, so p_limit + 16 keys in a row whose limits were full were
--    all the claim ever looked at: keys after them starved while those
--    stayed full (head-of-line blocking). A short claim now moves the
--    rotation past every key it walked.
--    Keyed claim of 3 jobs over 100 keys: 0.89 -> 0.72 ms; of 10: 1.26 ->
--    1.01; of 60: 3.54 -> 2.95 (medians of 4).
--
-- Same results, same locks; the limits are still counted in
-- a statement whose snapshot follows the key locks. The new index is built
-- by this migration (a lock on jobs while it builds: see the README's
-- Upgrading).
SET LOCAL search_path = pg_catalog, pg_temp;

-- Waiting jobs with a limit key, both statuses, by key then claim order:
-- the keyed claim's walk (one probe a key) and its candidates.
CREATE INDEX jobs_waiting_keyed_idx ON jobengine.jobs (limit_key, claim_order, id)
    WHERE status IN ('pending', 'scheduled') AND limit_key IS NOT NULL;

CREATE OR REPLACE FUNCTION jobengine.claim_v1(
    p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval,
    p_sealed boolean DEFAULT false
) RETURNS SETOF jobengine.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_bitmapscan = off
SET enable_seqscan = off
SET jobengine.claiming = 'on'
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_now timestamptz := statement_timestamp();
    v_aging double precision;
    v_queues text[] := p_queues;
    v_cursor text;
    v_max integer;
    v_keys text[];
    v_limited text[];
    v_locked text[];
    v_rate_keys text[];
    v_group_keys text[];
    v_group_allowed integer[];
    v_rate_now timestamptz;
    v_cap integer;
    v_pick bigint[];
    v_more boolean;
    v_claimed jobengine.jobs[];
    v_last text;
    v_first_ids bigint[];
    v_first_orders double precision[];
    v_final boolean;
BEGIN
    IF p_limit IS NULL OR p_limit <= 0 THEN
        RETURN;
    END IF;
    IF p_lease_ttl IS NULL OR p_lease_ttl <= interval '0' THEN
        RAISE EXCEPTION 'jobengine: claim: lease_ttl must be positive, not %', p_lease_ttl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Paused queues take nothing new.
    IF EXISTS (SELECT 1 FROM jobengine.queues q WHERE q.paused AND q.name = ANY (p_queues)) THEN
        SELECT array_agg(x.q) INTO v_queues FROM unnest(p_queues) AS x(q)
        WHERE NOT EXISTS (SELECT 1 FROM jobengine.queues q WHERE q.paused AND q.name = x.q);
        IF v_queues IS NULL THEN
            RETURN;
        END IF;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM jobengine.jobs s WHERE s.status = 'scheduled' AND s.limit_key IS NOT NULL)
       AND NOT EXISTS (SELECT 1 FROM jobengine.jobs p WHERE p.status = 'pending' AND p.limit_key IS NOT NULL) THEN
        RETURN QUERY
        WITH ready AS (
            SELECT s.id, s.claim_order FROM jobengine.jobs s
            WHERE s.status = 'scheduled' AND s.limit_key IS NULL AND s.queue = ANY (v_queues)
              AND s.run_at <= v_now AND s.kind = ANY (p_kinds) AND NOT (p_sealed AND s.requires_network)
              AND (s.depends_on = '{}' OR NOT EXISTS (
                  SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (s.depends_on) AND d.status <> 'completed'))
            ORDER BY s.claim_order, s.id
            LIMIT p_limit
            FOR NO KEY UPDATE SKIP LOCKED
        ), due AS (
            SELECT p.id, p.claim_order FROM jobengine.jobs p
            WHERE p.status = 'pending' AND p.limit_key IS NULL AND p.queue = ANY (v_queues)
              AND p.run_at <= v_now AND p.depends_on = '{}' AND p.kind = ANY (p_kinds)
              AND NOT (p_sealed AND p.requires_network)
            ORDER BY p.claim_order, p.id
            LIMIT p_limit
            FOR NO KEY UPDATE SKIP LOCKED
        ), chosen AS (
            SELECT c.id FROM (SELECT * FROM ready UNION ALL SELECT * FROM due) AS c
            ORDER BY c.claim_order, c.id
            LIMIT p_limit
        )
        UPDATE jobengine.jobs j
        SET status = 'running', status_reason = 'claimed',
            lease_owner = p_owner, lease_expires_at = v_now + p_lease_ttl
        FROM chosen
        WHERE j.id = chosen.id
        RETURNING j.*;
        RETURN;
    END IF;

    -- The keyed claim. One statement walks the keys from where this
    -- connection's last claim left off, each step finding the next key with
    -- a claimable job and that key's first such job (one probe of
    -- jobs_waiting_keyed_idx); then finds which of the keys have a limit, and
    -- try-locks those (a daemon holding a key's lock decides for it; the
    -- others leave it this time). The next statement's snapshot, taken after
    -- the locks, sees every claim their last holder committed.
    v_cursor := coalesce(current_setting('jobengine.claim_cursor', true), '');
    v_max := p_limit + 16;
    WITH RECURSIVE k(key, id, claim_order, n, wrapped) AS (
        SELECT v_cursor, NULL::bigint, NULL::double precision, 0, false
        UNION ALL
        SELECT x.limit_key, x.id, x.claim_order, k.n + 1, k.wrapped OR k.key IS NULL
        FROM k LEFT JOIN LATERAL (
            SELECT s.limit_key, s.id, s.claim_order FROM jobengine.jobs s
            WHERE s.status IN ('pending', 'scheduled') AND s.limit_key IS NOT NULL
              AND s.limit_key > coalesce(k.key, '')
              AND s.queue = ANY (v_queues) AND s.run_at <= v_now AND s.kind = ANY (p_kinds)
              AND NOT (p_sealed AND s.requires_network)
              AND (s.depends_on = '{}' OR (s.status = 'scheduled' AND NOT EXISTS (
                  SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (s.depends_on) AND d.status <> 'completed')))
            ORDER BY s.limit_key, s.claim_order, s.id LIMIT 1) x ON true
        WHERE k.n < v_max
          AND (k.key IS NOT NULL OR (NOT k.wrapped AND v_cursor <> ''))
          AND NOT (k.wrapped AND k.key >= v_cursor)
    ), walked AS MATERIALIZED (
        SELECT coalesce(array_agg(k.key ORDER BY k.n), '{}') AS keys,
               coalesce(array_agg(k.id ORDER BY k.n), '{}') AS ids,
               coalesce(array_agg(k.claim_order ORDER BY k.n), '{}') AS orders
        FROM k WHERE k.n > 0 AND k.key IS NOT NULL AND NOT (k.wrapped AND k.key > v_cursor)
    ), lim AS MATERIALIZED (
        SELECT c.key, false AS rate FROM jobengine.concurrency_limits c
        WHERE c.key = ANY ((SELECT w.keys FROM walked w)::text[])
        UNION ALL
        SELECT r.key, true FROM jobengine.rate_limits r WHERE r.key = ANY ((SELECT w.keys FROM walked w)::text[])
    ), locked AS MATERIALIZED (
        SELECT d.key FROM (SELECT DISTINCT l.key FROM lim l) d
        WHERE pg_try_advisory_xact_lock(1785755235, hashtext(d.key))
    )
    SELECT w.keys, w.ids, w.orders,
           (SELECT array_agg(DISTINCT l.key) FROM lim l),
           (SELECT coalesce(array_agg(x.key), '{}') FROM locked x),
           (SELECT array_agg(l.key) FROM lim l WHERE l.rate AND l.key IN (SELECT x.key FROM locked x)),
           coalesce((SELECT CASE WHEN s.value = 'off' THEN 1e9
                                 ELSE extract(epoch FROM s.value::interval)::double precision END
                     FROM jobengine.settings s WHERE s.name = 'priority_aging'), 60)
    INTO v_keys, v_first_ids, v_first_orders, v_limited, v_locked, v_rate_keys, v_aging
    FROM walked w;

    -- One statement: what each walked key may start (its limits counted now),
    -- and the first job of every group that may start one (each key, and the
    -- jobs without a key as one more group). That is the claim when it fills
    -- p_limit and no job left out could outrank one taken: every job left
    -- out is behind its group's first, so that holds when all the first jobs
    -- taken are of the top priority level among them. Then the jobs are
    -- locked (SKIP LOCKED, re-checked) and taken, rate-limited keys' starts
    -- recorded, and the next claim's rotation set to start after the last
    -- key that got a job (after every key walked, when the claim came back
    -- short).
    WITH rnow AS MATERIALIZED (
        SELECT clock_timestamp() AS t
    ), lim AS (
        SELECT w.key, w.id, w.claim_order, w.n,
               CASE WHEN NOT coalesce(w.key = ANY (v_limited), false) THEN p_limit
                    WHEN NOT w.key = ANY (v_locked) THEN 0
                    ELSE least(
                        p_limit,
                        (SELECT c.max_running - (SELECT count(*) FROM jobengine.jobs r
                                                 WHERE r.status = 'running' AND r.limit_key = w.key)
                         FROM jobengine.concurrency_limits c WHERE c.key = w.key),
                        (SELECT rl.max_starts - (SELECT count(*) FROM jobengine.rate_limit_starts s
                                                 WHERE s.key = w.key AND s.started_at > (SELECT t FROM rnow) - rl.per)
                         FROM jobengine.rate_limits rl WHERE rl.key = w.key))::integer
               END AS allowed
        FROM unnest(v_keys, v_first_ids, v_first_orders) WITH ORDINALITY AS w(key, id, claim_order, n)
    ), ranked AS MATERIALIZED (
        SELECT c.id, c.claim_order,
               floor((extract(epoch FROM v_now)::double precision - c.claim_order) / v_aging) AS level
        FROM (
            SELECT l.id, l.claim_order FROM lim l WHERE l.allowed > 0
            UNION ALL
            (SELECT u.id, u.claim_order FROM (
                (SELECT s.id, s.claim_order FROM jobengine.jobs s
                 WHERE s.status = 'scheduled' AND s.limit_key IS NULL
                   AND s.queue = ANY (v_queues) AND s.run_at <= v_now AND s.kind = ANY (p_kinds)
                   AND NOT (p_sealed AND s.requires_network)
                   AND (s.depends_on = '{}' OR NOT EXISTS (
                       SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (s.depends_on) AND d.status <> 'completed'))
                 ORDER BY s.claim_order, s.id LIMIT 1)
                UNION ALL
                (SELECT p.id, p.claim_order FROM jobengine.jobs p
                 WHERE p.status = 'pending' AND p.limit_key IS NULL
                   AND p.queue = ANY (v_queues) AND p.run_at <= v_now AND p.depends_on = '{}'
                   AND p.kind = ANY (p_kinds) AND NOT (p_sealed AND p.requires_network)
                 ORDER BY p.claim_order, p.id LIMIT 1)
             ) u ORDER BY u.claim_order, u.id LIMIT 1)
        ) c
    ), picked AS MATERIALIZED (
        SELECT r.id, r.level, r.claim_order FROM ranked r ORDER BY r.level DESC, r.claim_order, r.id LIMIT p_limit
    ), verdict AS MATERIALIZED (
        SELECT NOT EXISTS (SELECT 1 FROM ranked)
               OR ((SELECT count(*) FROM picked) >= p_limit
                   AND (SELECT min(p.level) FROM picked p) >= (SELECT max(r.level) FROM ranked r)) AS final
    ), chosen AS (
        SELECT j.id FROM picked p JOIN jobengine.jobs j ON j.id = p.id
        WHERE (SELECT v.final FROM verdict v)
          AND j.status IN ('scheduled', 'pending') AND j.run_at <= v_now
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ), claimed AS (
        UPDATE jobengine.jobs j
        SET status = 'running', status_reason = 'claimed',
            lease_owner = p_owner, lease_expires_at = v_now + p_lease_ttl
        FROM chosen
        WHERE j.id = chosen.id
        RETURNING j AS job, j.id, j.limit_key
    ), started AS (
        INSERT INTO jobengine.rate_limit_starts (key, started_at, job_id)
        SELECT c.limit_key, (SELECT t FROM rnow), c.id FROM claimed c WHERE c.limit_key = ANY (v_rate_keys)
    ), expired AS (
        -- (key by key through the (key, started_at) index, the subquery
        -- fenced by OFFSET 0 so that it stays inner: on its generic plan
        -- the join form read the whole table, a probe of rate_limits per row)
        DELETE FROM jobengine.rate_limit_starts s
        WHERE s.ctid = ANY (ARRAY(
            SELECT o.ctid FROM jobengine.rate_limits r
            CROSS JOIN LATERAL (
                SELECT x.ctid FROM jobengine.rate_limit_starts x
                WHERE x.key = r.key AND x.started_at <= (SELECT t FROM rnow) - r.per OFFSET 0) o
            WHERE r.key = ANY (v_rate_keys)))
    )
    SELECT (SELECT v.final FROM verdict v),
           (SELECT array_agg(c.job) FROM claimed c),
           (SELECT set_config('jobengine.claim_cursor', x.key, false) FROM (
                SELECT w.key FROM unnest(v_keys) WITH ORDINALITY AS w(key, n)
                WHERE (SELECT v.final FROM verdict v)
                  AND ((SELECT count(*) FROM claimed) < p_limit
                       OR w.key IN (SELECT c.limit_key FROM claimed c))
                ORDER BY w.n DESC LIMIT 1) x),
           -- (for the fallback below: the keys that may start jobs, what each may start, and when)
           (SELECT coalesce(array_agg(l.key ORDER BY l.n), '{}') FROM lim l WHERE l.allowed > 0),
           (SELECT coalesce(array_agg(l.allowed ORDER BY l.n), '{}') FROM lim l WHERE l.allowed > 0),
           (SELECT t FROM rnow)
    INTO v_final, v_claimed, v_last, v_group_keys, v_group_allowed, v_rate_now;
    IF v_final THEN
        IF v_claimed IS NOT NULL THEN
            RETURN QUERY SELECT * FROM unnest(v_claimed);
        END IF;
        RETURN;
    END IF;

    -- Otherwise (few keys, or priorities that differ): each group's share,
    -- in up to two rounds, from the keys and allowances counted above (their
    -- locks are still held; the windows' upkeep is done). The jobs without a
    -- key are one more group.
    v_cap := greatest(2, ceil(2.0 * p_limit / (cardinality(v_group_keys) + 1))::integer);
    FOR v_round IN 1..2 LOOP
        WITH groups AS (
            SELECT g.key, g.allowed, least(g.allowed, v_cap) AS take
            FROM unnest(v_group_keys, v_group_allowed) AS g(key, allowed)
        ), cand AS (
            SELECT g.key, g.allowed, g.take, c.id, c.claim_order FROM groups g,
            LATERAL (
                SELECT x.id, x.claim_order FROM (
                    (SELECT s.id, s.claim_order FROM jobengine.jobs s
                     WHERE s.status = 'scheduled' AND s.limit_key = g.key
                       AND s.queue = ANY (v_queues) AND s.run_at <= v_now AND s.kind = ANY (p_kinds)
                       AND NOT (p_sealed AND s.requires_network)
                       AND (s.depends_on = '{}' OR NOT EXISTS (
                           SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (s.depends_on) AND d.status <> 'completed'))
                     ORDER BY s.claim_order, s.id LIMIT g.take)
                    UNION ALL
                    (SELECT p.id, p.claim_order FROM jobengine.jobs p
                     WHERE p.status = 'pending' AND p.limit_key = g.key
                       AND p.queue = ANY (v_queues) AND p.run_at <= v_now AND p.depends_on = '{}'
                       AND p.kind = ANY (p_kinds) AND NOT (p_sealed AND p.requires_network)
                     ORDER BY p.claim_order, p.id LIMIT g.take)
                ) x ORDER BY x.claim_order, x.id LIMIT g.take
            ) c
            UNION ALL
            SELECT NULL, p_limit, least(p_limit, v_cap), u.id, u.claim_order FROM (
                (SELECT s.id, s.claim_order FROM jobengine.jobs s
                 WHERE s.status = 'scheduled' AND s.limit_key IS NULL
                   AND s.queue = ANY (v_queues) AND s.run_at <= v_now AND s.kind = ANY (p_kinds)
                   AND NOT (p_sealed AND s.requires_network)
                   AND (s.depends_on = '{}' OR NOT EXISTS (
                       SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (s.depends_on) AND d.status <> 'completed'))
                 ORDER BY s.claim_order, s.id LIMIT least(p_limit, v_cap))
                UNION ALL
                (SELECT p.id, p.claim_order FROM jobengine.jobs p
                 WHERE p.status = 'pending' AND p.limit_key IS NULL
                   AND p.queue = ANY (v_queues) AND p.run_at <= v_now AND p.depends_on = '{}'
                   AND p.kind = ANY (p_kinds) AND NOT (p_sealed AND p.requires_network)
                 ORDER BY p.claim_order, p.id LIMIT least(p_limit, v_cap))
                ORDER BY 2, 1 LIMIT least(p_limit, v_cap)
            ) u
        ), ranked AS (
            SELECT c.*, count(*) OVER (PARTITION BY c.key) AS found,
                   floor((extract(epoch FROM v_now)::double precision - c.claim_order) / v_aging) AS level,
                   row_number() OVER (PARTITION BY c.key ORDER BY c.claim_order, c.id) AS rank
            FROM cand c
        )
        SELECT array_agg(r.id ORDER BY r.level DESC, r.rank, r.claim_order, r.id),
               bool_or(r.found = r.take AND r.take < r.allowed)
        INTO v_pick, v_more
        FROM ranked r;
        EXIT WHEN coalesce(cardinality(v_pick), 0) >= p_limit OR NOT coalesce(v_more, false);
        v_cap := p_limit;
    END LOOP;
    IF v_pick IS NULL THEN
        RETURN;
    END IF;

    WITH chosen AS (
        SELECT j.id FROM unnest(v_pick) WITH ORDINALITY AS c(id, n)
        JOIN jobengine.jobs j ON j.id = c.id
        WHERE j.status IN ('scheduled', 'pending') AND j.run_at <= v_now
        ORDER BY c.n
        LIMIT p_limit
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ), claimed AS (
        UPDATE jobengine.jobs j
        SET status = 'running', status_reason = 'claimed',
            lease_owner = p_owner, lease_expires_at = v_now + p_lease_ttl
        FROM chosen
        WHERE j.id = chosen.id
        RETURNING j.*
    )
    SELECT array_agg(c) INTO v_claimed FROM claimed c;

    IF coalesce(cardinality(v_claimed), 0) < p_limit AND cardinality(v_keys) > 0 THEN
        -- (short: the next claim looks past the keys this one walked)
        PERFORM set_config('jobengine.claim_cursor', v_keys[cardinality(v_keys)], false);
    END IF;
    IF v_claimed IS NULL THEN
        RETURN;
    END IF;
    IF v_rate_keys IS NOT NULL THEN
        INSERT INTO jobengine.rate_limit_starts (key, started_at, job_id)
        SELECT c.limit_key, v_rate_now, c.id FROM unnest(v_claimed) c WHERE c.limit_key = ANY (v_rate_keys);
    END IF;
    -- Next time, start after the last key (in this claim's rotation) that got a job.
    SELECT k.key INTO v_last FROM unnest(v_keys) WITH ORDINALITY AS k(key, n)
    WHERE k.key IN (SELECT c.limit_key FROM unnest(v_claimed) c)
    ORDER BY k.n DESC LIMIT 1;
    IF v_last IS NOT NULL AND cardinality(v_claimed) >= p_limit THEN
        PERFORM set_config('jobengine.claim_cursor', v_last, false);
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_claimed);
END
$$;
