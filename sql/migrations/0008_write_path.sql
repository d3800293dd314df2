-- jobengine 0008: the per-statement costs of the write path.
--
-- Measured with perf on PostgreSQL 15 (bench/RESULTS.md, "0.5.0: the write
-- path's fixed costs"): two things every writing statement paid for,
-- whatever its size.
--
-- 1. The settings readers (notify_relayed, max_payload_bytes,
--    max_lease_ttl) were SQL functions whose body holds a sub-select. A SQL
--    function with a sub-select is never inlined, and a SQL function that is
--    not inlined is planned again on every call (PL/pgSQL's `v := f()` calls
--    it through the SQL-function executor, which keeps no plan across
--    statements). Every INSERT into jobs planned two of them, every status
--    change one: ~100 µs of a single-job insert's ~585. As PL/pgSQL
--    functions their one query is planned once per session.
-- 2. The notification sent for each ledger row built its envelope as jsonb
--    and printed it (jsonb_build_object, then jsonb_out): 5.6 µs a row.
--    envelope_text writes the same text directly (1.8 µs). It is the same
--    text byte for byte: jsonb prints keys by length, then bytewise, with
--    ", " and ": " between them, and JSON strings with the same escaping as
--    to_json; tests/test_schema.py compares the two over awkward values.
--    The views keep envelope() (a jsonb column); only what is sent changes.
-- 3. Reads of waiting jobs by a status list (status IN ('pending',
--    'scheduled')) match none of the partial indexes, whose predicates name
--    one status and whether limit_key is set: on a table of 10M finished
--    jobs each was a scan of the whole table. dependencies_needed (read by
--    every retention batch: 1.6 s a batch of 1,000 at 10M, ~700 jobs/s) now
--    asks one status at a time, as the partial indexes are written.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE OR REPLACE FUNCTION jobengine.notify_relayed() RETURNS boolean
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM jobengine.settings s WHERE s.name = 'notify_mode' AND s.value = 'relayed');
END
$$;

CREATE OR REPLACE FUNCTION jobengine.max_payload_bytes() RETURNS bigint
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((SELECT s.value::bigint FROM jobengine.settings s WHERE s.name = 'max_payload_bytes'),
                    1048576::bigint);
END
$$;

CREATE OR REPLACE FUNCTION jobengine.max_lease_ttl() RETURNS interval
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN coalesce((SELECT s.value::interval FROM jobengine.settings s WHERE s.name = 'max_lease_ttl'),
                    interval '1 hour');
END
$$;

-- envelope(...)::text, written directly: keys in jsonb's order (by length,
-- then bytewise), the same separators and string escaping.
CREATE FUNCTION jobengine.envelope_text(
    event_id uuid, event_type text, occurred_at timestamptz, job_id bigint, kind text, queue text,
    from_status jobengine.job_status, to_status jobengine.job_status, attempt integer, actor text, reason text
) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT '{"kind": ' || coalesce(to_json(kind)::text, 'null')
        || ', "actor": ' || coalesce(to_json(actor)::text, 'null')
        || ', "queue": ' || coalesce(to_json(queue)::text, 'null')
        || ', "job_id": ' || coalesce(job_id::text, 'null')
        || ', "reason": ' || coalesce(to_json(reason)::text, 'null')
        || ', "attempt": ' || coalesce(attempt::text, 'null')
        || ', "event_id": ' || coalesce('"' || event_id::text || '"', 'null')
        || ', "to_status": ' || coalesce('"' || to_status::text || '"', 'null')
        || ', "event_type": ' || coalesce(to_json(event_type)::text, 'null')
        || ', "from_status": ' || coalesce('"' || from_status::text || '"', 'null')
        || ', "occurred_at": ' || coalesce(to_json(occurred_at)::text, 'null')
        || ', "schema_version": 1}';
END;

-- The writers that send envelopes, as in 0004 but for envelope_text.

CREATE OR REPLACE FUNCTION jobengine.jobs_record_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    max_bytes bigint := jobengine.max_payload_bytes();
    v_relayed boolean := jobengine.notify_relayed();
    bad record;
    ids bigint[];
    n_sent bigint;
BEGIN
    SELECT n.id, n.status INTO bad FROM new_jobs n WHERE n.status <> 'pending' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'jobengine: job % must be inserted as pending, not %', bad.id, bad.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_status_transition', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    -- A new job starts its life at the beginning: no attempts, lease or outcome.
    SELECT n.id INTO bad FROM new_jobs n
    WHERE n.attempt <> 0 OR n.released <> 0 OR n.lease_owner IS NOT NULL OR n.lease_expires_at IS NOT NULL
       OR n.result IS NOT NULL OR n.last_error IS NOT NULL OR n.started_at IS NOT NULL
       OR n.finished_at IS NOT NULL OR n.scheduled_at IS NOT NULL OR n.status_reason <> 'created'
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'jobengine: job % must be inserted new: attempt, released, lease, result, last_error, status_reason and the started/scheduled/finished times are the database''s to set', bad.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_lifecycle_columns', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    SELECT n.* INTO bad FROM new_jobs n
    WHERE NOT jobengine.job_content_ok(n.kind, n.queue, n.payload, n.retry_policy, max_bytes) LIMIT 1;
    IF FOUND THEN
        PERFORM jobengine.raise_invalid_job(bad.id, bad.kind, bad.queue, bad.payload, bad.retry_policy, max_bytes);
    END IF;
    SELECT array_agg(n.id) INTO ids FROM new_jobs n WHERE n.depends_on <> '{}';
    IF ids IS NOT NULL THEN
        PERFORM jobengine.validate_dependencies(ids);
    END IF;

    WITH e AS (
        INSERT INTO jobengine.ledger (job_id, occurred_at, prev_at, attempt, from_status, to_status, event_type,
                                      kind, queue, reason, actor, role, hash, prev_hash)
        SELECT n.id, n.created_at, NULL, 0, NULL, 'pending', 'job.created', n.kind, n.queue, 'created',
               n.status_actor, n.status_role, n.ledger_head, ''::bytea
        FROM new_jobs n
        RETURNING id, job_id, occurred_at, kind, queue, actor
    )
    -- (with the relay, `e` is written and nothing sent: the filter is a constant)
    SELECT count(pg_notify('jobengine_events',
               jobengine.envelope_text(jobengine.ledger_event_id(e.id, NULL), 'job.created', e.occurred_at,
                                  e.job_id, e.kind, e.queue, NULL, 'pending', 0, e.actor, 'created')))
    INTO n_sent FROM e WHERE NOT v_relayed;

    IF NOT v_relayed THEN
        PERFORM pg_notify('jobengine_wake', q.queue || ':new') FROM (SELECT DISTINCT n.queue FROM new_jobs n) q;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION jobengine.jobs_record_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_relayed boolean;
    n_changed bigint;
BEGIN
    -- Statements that touch no status (lease renewals) or no row at all (an
    -- empty claim) leave here, at the cost of one tuplestore peek.
    PERFORM 1 FROM new_jobs LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    v_relayed := jobengine.notify_relayed();
    WITH moved0 AS MATERIALIZED (
        SELECT n.id, o.status AS old_status, n.status AS new_status, n.attempt,
               n.kind, n.queue, n.status_reason AS reason, n.updated_at AS occurred_at,
               n.status_actor AS actor, n.status_role AS role, n.ledger_head AS head,
               o.ledger_head AS prev, o.updated_at AS prev_at
        FROM new_jobs n JOIN old_jobs o ON o.id = n.id
        WHERE n.status IS DISTINCT FROM o.status
    ), moved AS MATERIALIZED (
        -- a claim straight from pending took two steps: the first one's hash
        SELECT m.*, CASE WHEN m.old_status = 'pending' AND m.new_status = 'running' THEN
                   jobengine.ledger_hash(m.prev, m.id, 'job.scheduled', 'pending', 'scheduled', m.attempt - 1,
                                         m.occurred_at, 'ready', m.actor, m.role, m.kind, m.queue, m.prev_at)
               END AS step1
        FROM moved0 m
    ), c AS MATERIALIZED (
        SELECT m.id, s.from_status, s.to_status, s.attempt, m.kind, m.queue, s.reason, m.occurred_at,
               m.actor, m.role, s.step, s.event_type, s.prev_at, s.prev_hash, s.hash
        FROM moved m
        CROSS JOIN LATERAL (
            SELECT m.old_status AS from_status, m.new_status AS to_status, m.attempt, m.reason, 1 AS step,
                   jobengine.transition_event_type(m.old_status, m.new_status) AS event_type,
                   m.prev_at, m.prev AS prev_hash, m.head AS hash
            WHERE m.step1 IS NULL
            UNION ALL
            SELECT 'pending'::jobengine.job_status, 'scheduled'::jobengine.job_status, m.attempt - 1, 'ready', 1,
                   'job.scheduled', m.prev_at, m.prev, m.step1
            WHERE m.step1 IS NOT NULL
            UNION ALL
            SELECT 'scheduled'::jobengine.job_status, 'running'::jobengine.job_status, m.attempt, m.reason, 2,
                   'job.started', m.occurred_at, m.step1, m.head
            WHERE m.step1 IS NOT NULL
        ) AS s
    ), e AS (
        INSERT INTO jobengine.ledger (job_id, occurred_at, prev_at, attempt, from_status, to_status, event_type,
                                      kind, queue, reason, actor, role, hash, prev_hash)
        SELECT c.id, c.occurred_at, c.prev_at, c.attempt, c.from_status, c.to_status, c.event_type,
               c.kind, c.queue, c.reason, c.actor, c.role, c.hash, c.prev_hash
        FROM c ORDER BY c.id, c.step
        RETURNING id, job_id, occurred_at, event_type, kind, queue, from_status, to_status, attempt, actor, reason
    ), w AS (
        -- by where jobs ended up (a claim from pending wakes no one)
        SELECT pg_notify('jobengine_wake', q.queue || q.what)
        FROM (SELECT DISTINCT m.queue,
                     CASE WHEN m.new_status = 'scheduled' THEN ':ready' ELSE ':done' END AS what
              FROM moved0 m WHERE m.new_status <> 'running' AND NOT v_relayed) q
    ), x AS (
        -- running -> cancelled: tell the daemons (ids chunked to stay far
        -- below the NOTIFY payload limit)
        SELECT pg_notify('jobengine_cancel', string_agg(k.id::text, ','))
        FROM (SELECT m.id, (row_number() OVER (ORDER BY m.id) - 1) / 500 AS chunk
              FROM moved0 m WHERE m.old_status = 'running' AND m.new_status = 'cancelled' AND NOT v_relayed) k
        GROUP BY k.chunk
    )
    SELECT (SELECT count(pg_notify('jobengine_events',
                jobengine.envelope_text(jobengine.ledger_event_id(e.id, NULL), e.event_type, e.occurred_at, e.job_id,
                                   e.kind, e.queue, e.from_status, e.to_status, e.attempt, e.actor,
                                   e.reason))) FROM e WHERE NOT v_relayed)
         + (SELECT count(*) FROM w) + (SELECT count(*) FROM x)
    INTO n_changed;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION jobengine.add_timeline_note(p_job_ids bigint[], p_event_type text, p_reason text)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
    n_sent bigint;
    v_relayed boolean := jobengine.notify_relayed();
    v_actor text := coalesce(nullif(current_setting('jobengine.actor', true), ''), 'sql');
BEGIN
    IF p_event_type !~ '^job\.[a-z_]+$' OR EXISTS (
        SELECT 1 FROM unnest(enum_range(NULL::jobengine.job_status) || NULL::jobengine.job_status) AS a(s),
                      unnest(enum_range(NULL::jobengine.job_status)) AS b(s)
        WHERE jobengine.transition_event_type(a.s, b.s) = p_event_type) THEN
        RAISE EXCEPTION 'jobengine: % is not a valid note type: use job.<word>, not a transition''s type', p_event_type
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('jobengine.noting', pg_current_xact_id()::text, true);
    WITH c AS MATERIALIZED (
        SELECT j.id, j.status, j.attempt, j.kind, j.queue, statement_timestamp() AS occurred_at,
               j.ledger_head AS prev, j.updated_at AS prev_at
        FROM jobengine.jobs j WHERE j.id = ANY (p_job_ids)
        ORDER BY j.id
        FOR NO KEY UPDATE
    ), h AS MATERIALIZED (
        SELECT c.*, jobengine.ledger_hash(c.prev, c.id, p_event_type, c.status, c.status, c.attempt,
                                          c.occurred_at, p_reason, v_actor, session_user::text, c.kind, c.queue,
                                          c.prev_at) AS hash
        FROM c
    ), u AS (
        UPDATE jobengine.jobs j SET ledger_head = h.hash, updated_at = h.occurred_at
        FROM h WHERE j.id = h.id
    ), e AS (
        INSERT INTO jobengine.ledger (job_id, occurred_at, prev_at, attempt, from_status, to_status, note,
                                      event_type, kind, queue, reason, actor, role, hash, prev_hash)
        SELECT h.id, h.occurred_at, h.prev_at, h.attempt, h.status, h.status, true, p_event_type, h.kind,
               h.queue, p_reason, v_actor, session_user::text, h.hash, h.prev
        FROM h ORDER BY h.id
        RETURNING id, job_id, occurred_at, kind, queue, to_status, attempt
    )
    SELECT (SELECT count(*) FROM e),
           (SELECT count(pg_notify('jobengine_events',
                jobengine.envelope_text(jobengine.ledger_event_id(e.id, NULL), p_event_type, e.occurred_at, e.job_id,
                                   e.kind, e.queue, e.to_status, e.to_status, e.attempt, v_actor,
                                   p_reason))) FROM e WHERE NOT v_relayed)
    INTO n, n_sent;
    PERFORM set_config('jobengine.noting', '', true);
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION jobengine.relay_v1(p_limit integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cursor record;
    v_last record;
    n integer;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'jobengine: relay_v1: limit must be between 1 and 100000, not %', p_limit
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT jobengine.notify_relayed() THEN
        RETURN -2;
    END IF;
    IF NOT pg_try_advisory_xact_lock(7666530082071394661) THEN
        RETURN -1;
    END IF;
    SELECT r.tx_id, r.id INTO v_cursor FROM jobengine.relay_cursor r;
    WITH b AS MATERIALIZED (
        SELECT l.* FROM jobengine.ledger l
        WHERE (l.tx_id, l.id) > (v_cursor.tx_id, v_cursor.id)
          AND l.tx_id < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY l.tx_id, l.id
        LIMIT p_limit
    ), ev AS (
        SELECT count(pg_notify('jobengine_events', jobengine.envelope_text(
                   jobengine.ledger_event_id(o.id, o.legacy_event_id), o.event_type, o.occurred_at, o.job_id,
                   o.kind, o.queue, CASE WHEN o.note THEN o.to_status ELSE o.from_status END, o.to_status,
                   o.attempt, o.actor, o.reason))) AS n
        FROM (SELECT * FROM b ORDER BY b.tx_id, b.id) o
    ), wk AS (
        SELECT count(pg_notify('jobengine_wake', q.queue || q.what)) AS n
        FROM (SELECT DISTINCT b.queue,
                     CASE b.to_status WHEN 'pending' THEN ':new' WHEN 'scheduled' THEN ':ready' ELSE ':done' END
                         AS what
              FROM b WHERE NOT b.note AND b.to_status <> 'running') q
    ), cx AS (
        SELECT count(pg_notify('jobengine_cancel', k.ids)) AS n
        FROM (SELECT string_agg(c.job_id::text, ',') AS ids
              FROM (SELECT b.job_id, (row_number() OVER (ORDER BY b.job_id) - 1) / 500 AS chunk
                    FROM b WHERE NOT b.note AND b.from_status = 'running' AND b.to_status = 'cancelled') c
              GROUP BY c.chunk) k
    ), newest AS (
        SELECT b.tx_id, b.id FROM b ORDER BY b.tx_id DESC, b.id DESC LIMIT 1
    )
    SELECT ev.n, newest.tx_id AS tx_id, newest.id AS id INTO v_last
    FROM ev CROSS JOIN wk CROSS JOIN cx LEFT JOIN newest ON true;
    n := v_last.n;
    IF n > 0 THEN
        UPDATE jobengine.relay_cursor
        SET tx_id = v_last.tx_id, id = v_last.id, relayed_at = statement_timestamp();
    END IF;
    RETURN n;
END
$$;

-- Jobs that still need the jobs they depend on, one status (and so one
-- partial index) at a time: never a scan of the finished jobs.
CREATE OR REPLACE FUNCTION jobengine.dependencies_needed() RETURNS SETOF bigint
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT unnest(w.depends_on) FROM jobengine.jobs w
    WHERE w.status = 'pending' AND w.depends_on <> '{}'
    UNION
    SELECT unnest(w.depends_on) FROM jobengine.jobs w
    WHERE w.status = 'scheduled' AND w.limit_key IS NULL AND w.depends_on <> '{}'
    UNION
    SELECT unnest(w.depends_on) FROM jobengine.jobs w
    WHERE w.status = 'scheduled' AND w.limit_key IS NOT NULL AND w.depends_on <> '{}'
    UNION
    SELECT unnest(w.depends_on) FROM jobengine.jobs w
    WHERE w.status = 'running' AND w.depends_on <> '{}';
END;
