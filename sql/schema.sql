-- jobengine: the canonical schema, the current state of all of sql/migrations/ applied
-- in order (a normalised pg_dump; rebuilt by `python sql/build_schema.py`). A test
-- (tests/test_migrations.py) keeps the two identical. Install with:
--   psql -v ON_ERROR_STOP=1 -f sql/schema.sql
-- (jobengine migrate is the usual way: it also upgrades.)

--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: jobengine; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA jobengine;

--
-- Name: job_status; Type: TYPE; Schema: jobengine; Owner: -
--

CREATE TYPE jobengine.job_status AS ENUM (
    'pending',
    'scheduled',
    'running',
    'completed',
    'failed',
    'cancelled'
);

--
-- Name: add_timeline_note(bigint[], text, text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.add_timeline_note(p_job_ids bigint[], p_event_type text, p_reason text) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $_$
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
$_$;

--
-- Name: session_actor(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.session_actor() RETURNS text
    LANGUAGE sql STABLE
    BEGIN ATOMIC
 SELECT COALESCE(NULLIF(current_setting('jobengine.actor'::text, true), ''::text),
         CASE
             WHEN (current_setting('application_name'::text, true) ~~ 'jobengine:_%'::text) THEN substr(current_setting('application_name'::text, true), 11)
             ELSE NULL::text
         END, 'sql'::text) AS "coalesce";
END;

--
-- Name: writer_trusted(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.writer_trusted() RETURNS boolean
    LANGUAGE sql STABLE
    BEGIN ATOMIC
 SELECT ((to_regrole('jobengine_daemon'::text) IS NULL) OR pg_has_role(CURRENT_USER, 'jobengine_daemon'::name, 'MEMBER'::text) OR has_schema_privilege(CURRENT_USER, 'jobengine'::text, 'CREATE'::text));
END;

--
-- Name: current_actor(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.current_actor() RETURNS text
    LANGUAGE sql STABLE
    BEGIN ATOMIC
 SELECT
         CASE
             WHEN jobengine.writer_trusted() THEN jobengine.session_actor()
             ELSE 'sql'::text
         END AS "case";
END;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: jobs; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.jobs (
    id bigint NOT NULL,
    kind text NOT NULL,
    queue text DEFAULT 'default'::text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    status jobengine.job_status DEFAULT 'pending'::jobengine.job_status NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    run_at timestamp with time zone DEFAULT now() NOT NULL,
    depends_on bigint[] DEFAULT '{}'::bigint[] NOT NULL,
    attempt integer DEFAULT 0 NOT NULL,
    released integer DEFAULT 0 NOT NULL,
    max_retries integer DEFAULT 3 NOT NULL,
    retry_policy jsonb,
    timeout interval,
    requires_network boolean DEFAULT false NOT NULL,
    idempotency_key text,
    lease_owner text,
    lease_expires_at timestamp with time zone,
    result jsonb,
    last_error text,
    status_reason text DEFAULT 'created'::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    scheduled_at timestamp with time zone,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    status_actor text DEFAULT jobengine.current_actor() NOT NULL,
    status_role text DEFAULT CURRENT_USER NOT NULL,
    ledger_head bytea DEFAULT '\x'::bytea NOT NULL,
    limit_key text,
    claim_order double precision,
    CONSTRAINT jobs_limit_key_valid CHECK (((limit_key IS NULL) OR ((limit_key <> ''::text) AND (length(limit_key) <= 200)))),
    CONSTRAINT jobs_max_retries_must_not_be_negative CHECK ((max_retries >= 0)),
    CONSTRAINT jobs_payload_must_be_a_json_object CHECK ((jsonb_typeof(payload) = 'object'::text)),
    CONSTRAINT jobs_retry_policy_must_be_an_object_or_null CHECK (((retry_policy IS NULL) OR (jsonb_typeof(retry_policy) = 'object'::text))),
    CONSTRAINT jobs_status_reason_at_most_200_chars CHECK ((length(status_reason) <= 200)),
    CONSTRAINT jobs_timeout_must_be_positive CHECK (((timeout IS NULL) OR (timeout > '00:00:00'::interval)))
);

--
-- Name: COLUMN jobs.ledger_head; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON COLUMN jobengine.jobs.ledger_head IS 'The hash of the newest ledger row of this job (empty: its rows so far were written before 0004).';

--
-- Name: COLUMN jobs.limit_key; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON COLUMN jobengine.jobs.limit_key IS 'Groups jobs under jobengine.concurrency_limits and jobengine.rate_limits (and for fair claiming).';

--
-- Name: COLUMN jobs.claim_order; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON COLUMN jobengine.jobs.claim_order IS 'The claim''s order: run_at (epoch seconds) less priority x settings.priority_aging; kept by the database.';

--
-- Name: attempt_answers(text, bigint[], integer[], bigint[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.attempt_answers(p_owner text, p_ids bigint[], p_attempts integer[], p_done bigint[]) RETURNS TABLE(id bigint, attempt integer, outcome text, kind text)
    LANGUAGE sql STABLE
    BEGIN ATOMIC
 SELECT t.id,
     t.attempt,
         CASE
             WHEN (t.id = ANY (attempt_answers.p_done)) THEN 'done'::text
             WHEN ((j.status = 'running'::jobengine.job_status) AND (j.attempt = t.attempt) AND (j.lease_owner = attempt_answers.p_owner)) THEN 'busy'::text
             ELSE 'moved'::text
         END AS "case",
     j.kind
    FROM (UNNEST(attempt_answers.p_ids, attempt_answers.p_attempts) t(id, attempt)
      LEFT JOIN jobengine.jobs j ON ((j.id = t.id)));
END;

--
-- Name: cancel_v1(bigint[], text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.cancel_v1(p_ids bigint[], p_reason text DEFAULT NULL::text) RETURNS TABLE(id bigint, from_status jobengine.job_status, status jobengine.job_status, kind text)
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET lock_timeout TO '5s'
    SET jit TO 'off'
    AS $$
    WITH target AS (
        SELECT j.id, j.status FROM jobengine.jobs j
        WHERE j.id = ANY (p_ids) AND j.status IN ('pending', 'scheduled', 'running')
        ORDER BY j.id
        FOR NO KEY UPDATE
    ), upd AS (
        UPDATE jobengine.jobs j
        SET status = 'cancelled', status_reason = coalesce(p_reason, 'cancelled_by_user')
        FROM target WHERE j.id = target.id
        RETURNING j.id
    )
    SELECT t.id, target.status,
           CASE WHEN upd.id IS NOT NULL THEN 'cancelled'::jobengine.job_status ELSE j.status END,
           j.kind
    FROM unnest(p_ids) AS t(id)
    LEFT JOIN target ON target.id = t.id
    LEFT JOIN upd ON upd.id = t.id
    LEFT JOIN jobengine.jobs j ON j.id = t.id
$$;

--
-- Name: cancelled_dependents(bigint); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.cancelled_dependents(p_id bigint) RETURNS bigint[]
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    WITH RECURSIVE down(id) AS (
        SELECT j.id FROM jobengine.jobs j
        WHERE j.depends_on @> ARRAY[p_id] AND j.status = 'cancelled'
          AND j.status_reason = 'dependency_failed'
        UNION
        SELECT j.id FROM down d JOIN jobengine.jobs j ON j.depends_on @> ARRAY[d.id]
        WHERE j.status = 'cancelled' AND j.status_reason = 'dependency_failed'
    )
    SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM down
$$;

--
-- Name: cascade_v1(integer); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.cascade_v1(p_limit integer) RETURNS TABLE(id bigint, kind text)
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $$
    UPDATE jobengine.jobs AS j
    SET status = 'cancelled', status_reason = 'dependency_failed',
        last_error = 'dependency ' || (
            SELECT min(x.id) FROM jobengine.jobs x
            WHERE x.id = ANY (j.depends_on)
              AND (x.status = 'cancelled' OR (x.status = 'failed' AND x.attempt - x.released > x.max_retries))
        ) || ' ended failed or cancelled'
    WHERE j.id IN (
        SELECT p.id FROM jobengine.jobs p
        WHERE p.status = 'pending' AND p.depends_on <> '{}'
          AND EXISTS (
              SELECT 1 FROM jobengine.jobs x
              WHERE x.id = ANY (p.depends_on)
                AND (x.status = 'cancelled' OR (x.status = 'failed' AND x.attempt - x.released > x.max_retries)))
        ORDER BY p.id
        LIMIT p_limit
        FOR NO KEY UPDATE SKIP LOCKED
    )
    RETURNING j.id, j.kind
$$;

--
-- Name: check_lease(bigint, timestamp with time zone, timestamp with time zone); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.check_lease(p_job_id bigint, p_expires timestamp with time zone, p_now timestamp with time zone) RETURNS void
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_max interval;
BEGIN
    IF p_expires IS NULL OR p_expires <= p_now THEN
        RAISE EXCEPTION 'jobengine: job %: a running job''s lease must end in the future, not at %', p_job_id, p_expires
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_lease_bounded', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    -- (Leases of a minute or less need no look-up: max_lease_ttl is at least a minute.)
    IF p_expires > p_now + interval '1 minute' THEN
        v_max := jobengine.max_lease_ttl();
        IF p_expires > p_now + v_max THEN
            RAISE EXCEPTION 'jobengine: job %: a lease may last at most % (jobengine.settings max_lease_ttl), not until %',
                p_job_id, v_max, p_expires
                USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_lease_bounded', TABLE = 'jobs', SCHEMA = 'jobengine';
        END IF;
    END IF;
END
$$;

--
-- Name: claim_jobs(text, text[], text[], integer, interval, timestamp with time zone, boolean); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.claim_jobs(p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone, p_sealed boolean DEFAULT false) RETURNS SETOF jobengine.jobs
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT * FROM jobengine.claim_v1(p_owner, p_queues, p_kinds, p_limit, p_lease_ttl, p_sealed)
$$;

--
-- Name: settings; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.settings (
    name text NOT NULL,
    value text NOT NULL,
    CONSTRAINT settings_name_known CHECK ((name = ANY (ARRAY['max_payload_bytes'::text, 'max_lease_ttl'::text, 'notify_mode'::text, 'priority_aging'::text]))),
    CONSTRAINT settings_value_valid CHECK (
CASE name
    WHEN 'max_payload_bytes'::text THEN (value ~ '^[1-9][0-9]{0,17}$'::text)
    WHEN 'max_lease_ttl'::text THEN (value ~ '^[0-9 a-z:.]+$'::text)
    WHEN 'notify_mode'::text THEN (value = ANY (ARRAY['direct'::text, 'relayed'::text]))
    WHEN 'priority_aging'::text THEN ((value = 'off'::text) OR (value ~ '^[0-9 a-z:.]+$'::text))
    ELSE NULL::boolean
END)
);

--
-- Name: TABLE settings; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.settings IS 'Limits that protect the server; only the schema owner may change them.';

--
-- Name: priority_aging_seconds(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.priority_aging_seconds() RETURNS double precision
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT COALESCE(( SELECT
                 CASE
                     WHEN (s.value = 'off'::text) THEN ('1000000000'::numeric)::double precision
                     ELSE (EXTRACT(epoch FROM (s.value)::interval))::double precision
                 END AS "extract"
            FROM jobengine.settings s
           WHERE (s.name = 'priority_aging'::text)), (60)::double precision) AS "coalesce";
END;

--
-- Name: claim_order(timestamp with time zone, integer); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.claim_order(p_run_at timestamp with time zone, p_priority integer) RETURNS double precision
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT ((EXTRACT(epoch FROM p_run_at))::double precision -
         CASE
             WHEN (p_priority = 0) THEN (0)::double precision
             ELSE ((p_priority)::double precision * jobengine.priority_aging_seconds())
         END);
END;

--
-- Name: claim_order_of(jobengine.job_status, bigint[], timestamp with time zone, integer); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.claim_order_of(p_status jobengine.job_status, p_depends_on bigint[], p_run_at timestamp with time zone, p_priority integer) RETURNS double precision
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT
         CASE
             WHEN ((p_status = 'pending'::jobengine.job_status) AND (p_depends_on <> '{}'::bigint[])) THEN 'Infinity'::double precision
             ELSE jobengine.claim_order(p_run_at, p_priority)
         END AS claim_order;
END;

--
-- Name: claim_v1(text, text[], text[], integer, interval, boolean); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.claim_v1(p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval, p_sealed boolean DEFAULT false) RETURNS SETOF jobengine.jobs
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_bitmapscan TO 'off'
    SET enable_seqscan TO 'off'
    SET "jobengine.claiming" TO 'on'
    SET plan_cache_mode TO 'force_generic_plan'
    SET jit TO 'off'
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

--
-- Name: ledger_hash(bytea, bigint, text, jobengine.job_status, jobengine.job_status, integer, timestamp with time zone, text, text, text, text, text, timestamp with time zone); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_hash(prev bytea, job_id bigint, event_type text, from_status jobengine.job_status, to_status jobengine.job_status, attempt integer, occurred_at timestamp with time zone, reason text, actor text, role text, kind text, queue text, prev_at timestamp with time zone) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT sha256((prev || convert_to(concat_ws('|'::text, job_id, event_type, COALESCE((from_status)::text, ''::text), (to_status)::text, attempt, (round((date_part('epoch'::text, occurred_at) * (1000000)::double precision)))::bigint, COALESCE((round((date_part('epoch'::text, prev_at) * (1000000)::double precision)))::bigint, ('-1'::integer)::bigint), kind, queue, quote_nullable(reason), quote_nullable(actor), quote_nullable(role)), 'UTF8'::name))) AS sha256;
END;

--
-- Name: creation_hash(bigint, timestamp with time zone, text, text, text, text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.creation_hash(id bigint, created_at timestamp with time zone, actor text, role text, kind text, queue text) RETURNS bytea
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT jobengine.ledger_hash('\x'::bytea, id, 'job.created'::text, NULL::jobengine.job_status, 'pending'::jobengine.job_status, 0, created_at, 'created'::text, actor, role, kind, queue, NULL::timestamp with time zone) AS ledger_hash;
END;

--
-- Name: cron_problem(text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.cron_problem(p_expr text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    v_names constant text[] := ARRAY['minute', 'hour', 'day-of-month', 'month', 'day-of-week'];
    v_lo constant integer[] := ARRAY[0, 0, 1, 1, 0];
    v_hi constant integer[] := ARRAY[59, 23, 31, 12, 7];
    v_months constant text[] := ARRAY['jan', 'feb', 'mar', 'apr', 'may', 'jun',
                                      'jul', 'aug', 'sep', 'oct', 'nov', 'dec'];
    v_days constant text[] := ARRAY['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
    v_month_days constant integer[] := ARRAY[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    v_fields text[];
    v_field text;
    v_item text;
    m text[];
    a integer;
    b integer;
    v_min_dom integer := 32;
    v_max_month_days integer := 0;
BEGIN
    IF p_expr IS NULL THEN
        RETURN NULL;
    END IF;
    IF lower(btrim(p_expr)) IN ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly') THEN
        RETURN NULL;
    END IF;
    v_fields := regexp_split_to_array(btrim(p_expr), '\s+');
    IF btrim(p_expr) = '' OR cardinality(v_fields) <> 5 THEN
        RETURN format('expected 5 fields (minute hour day-of-month month day-of-week), got %s in %L',
                      CASE WHEN btrim(p_expr) = '' THEN 0 ELSE cardinality(v_fields) END, p_expr);
    END IF;
    FOR i IN 1..5 LOOP
        v_field := lower(v_fields[i]);
        IF i = 4 THEN
            FOR n IN 1..12 LOOP
                v_field := replace(v_field, v_months[n], n::text);
            END LOOP;
        ELSIF i = 5 THEN
            FOR n IN 1..7 LOOP
                v_field := replace(v_field, v_days[n], (n - 1)::text);
            END LOOP;
        END IF;
        FOREACH v_item IN ARRAY string_to_array(v_field, ',') LOOP
            m := regexp_match(v_item, '^(\*|([0-9]{1,4})(-([0-9]{1,4}))?)(/([0-9]{1,4}))?$');
            IF m IS NULL THEN
                RETURN format('%s field %L: %L is not *, a number, a range or a step', v_names[i], v_fields[i],
                              v_item);
            END IF;
            IF m[6] IS NOT NULL AND m[6]::integer = 0 THEN
                RETURN format('%s field %L: a step must be at least 1', v_names[i], v_fields[i]);
            END IF;
            IF m[2] IS NOT NULL THEN
                a := m[2]::integer;
                b := coalesce(m[4]::integer, a);
                IF a < v_lo[i] OR a > v_hi[i] OR b < v_lo[i] OR b > v_hi[i] THEN
                    RETURN format('%s field %L: values must be from %s to %s', v_names[i], v_fields[i],
                                  v_lo[i], v_hi[i]);
                END IF;
                IF b < a THEN
                    RETURN format('%s field %L: range %s-%s goes backwards', v_names[i], v_fields[i], a, b);
                END IF;
                IF i = 3 THEN
                    v_min_dom := least(v_min_dom, a);
                ELSIF i = 4 THEN
                    FOR n IN a..b LOOP
                        v_max_month_days := greatest(v_max_month_days, v_month_days[n]);
                    END LOOP;
                END IF;
            ELSIF i = 3 THEN
                v_min_dom := 1;
            ELSIF i = 4 THEN
                v_max_month_days := 31;
            END IF;
        END LOOP;
    END LOOP;
    IF v_min_dom > v_max_month_days AND v_fields[5] = '*' THEN
        RETURN format('day-of-month field %L: no month in %L has that day', v_fields[3], v_fields[4]);
    END IF;
    RETURN NULL;
END
$_$;

--
-- Name: dag_changes_v1(xid8, bigint, timestamp with time zone, integer); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.dag_changes_v1(p_tx xid8, p_id bigint, p_after timestamp with time zone, p_limit integer) RETURNS TABLE(tx_id xid8, id bigint, ended bigint[], created bigint[], more boolean, behind boolean)
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET enable_seqscan TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: dag_dependents(bigint[], bigint[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.dag_dependents(p_ended bigint[], p_created bigint[]) RETURNS bigint[]
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET enable_seqscan TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: dag_moves_v1(text[], bigint[], bigint[], integer, boolean); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.dag_moves_v1(p_queues text[], p_ended bigint[], p_created bigint[], p_limit integer, p_sealed boolean DEFAULT false) RETURNS TABLE(id bigint, kind text, to_status jobengine.job_status)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET enable_seqscan TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: default_reason(jobengine.job_status, jobengine.job_status); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.default_reason(from_status jobengine.job_status, to_status jobengine.job_status) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT
         CASE
             WHEN (from_status IS NULL) THEN 'created'::text
             WHEN (to_status = 'cancelled'::jobengine.job_status) THEN 'cancelled_by_user'::text
             WHEN (from_status = 'pending'::jobengine.job_status) THEN 'ready'::text
             WHEN (to_status = 'running'::jobengine.job_status) THEN 'claimed'::text
             WHEN (to_status = 'completed'::jobengine.job_status) THEN 'completed'::text
             WHEN (to_status = 'failed'::jobengine.job_status) THEN 'error'::text
             WHEN ((from_status = 'running'::jobengine.job_status) AND (to_status = 'scheduled'::jobengine.job_status)) THEN 'released'::text
             WHEN (from_status = 'failed'::jobengine.job_status) THEN 'retry'::text
             ELSE NULL::text
         END AS "case";
END;

--
-- Name: dependencies_needed(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.dependencies_needed() RETURNS SETOF bigint
    LANGUAGE sql STABLE
    BEGIN ATOMIC
 SELECT unnest(w.depends_on) AS unnest
    FROM jobengine.jobs w
   WHERE ((w.status = 'pending'::jobengine.job_status) AND (w.depends_on <> '{}'::bigint[]))
 UNION
  SELECT unnest(w.depends_on) AS unnest
    FROM jobengine.jobs w
   WHERE ((w.status = 'scheduled'::jobengine.job_status) AND (w.limit_key IS NULL) AND (w.depends_on <> '{}'::bigint[]))
 UNION
  SELECT unnest(w.depends_on) AS unnest
    FROM jobengine.jobs w
   WHERE ((w.status = 'scheduled'::jobengine.job_status) AND (w.limit_key IS NOT NULL) AND (w.depends_on <> '{}'::bigint[]))
 UNION
  SELECT unnest(w.depends_on) AS unnest
    FROM jobengine.jobs w
   WHERE ((w.status = 'running'::jobengine.job_status) AND (w.depends_on <> '{}'::bigint[]));
END;

--
-- Name: engine_reason(text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.engine_reason(reason text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT (reason = ANY (ARRAY['created'::text, 'ready'::text, 'claimed'::text, 'completed'::text, 'error'::text, 'timeout'::text, 'lease_expired'::text, 'retry'::text, 'operator_retry'::text, 'shutdown'::text, 'released'::text, 'dependency_failed'::text, 'egress_blocked'::text]));
END;

--
-- Name: envelope(uuid, text, timestamp with time zone, bigint, text, text, jobengine.job_status, jobengine.job_status, integer, text, text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.envelope(event_id uuid, event_type text, occurred_at timestamp with time zone, job_id bigint, kind text, queue text, from_status jobengine.job_status, to_status jobengine.job_status, attempt integer, actor text, reason text) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT jsonb_build_object('event_id', event_id, 'event_type', event_type, 'schema_version', 1, 'occurred_at', occurred_at, 'job_id', job_id, 'kind', kind, 'queue', queue, 'from_status', from_status, 'to_status', to_status, 'attempt', attempt, 'actor', actor, 'reason', reason) AS jsonb_build_object;
END;

--
-- Name: envelope_text(uuid, text, timestamp with time zone, bigint, text, text, jobengine.job_status, jobengine.job_status, integer, text, text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.envelope_text(event_id uuid, event_type text, occurred_at timestamp with time zone, job_id bigint, kind text, queue text, from_status jobengine.job_status, to_status jobengine.job_status, attempt integer, actor text, reason text) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT (((((((((((((((((((((('{"kind": '::text || COALESCE((to_json(kind))::text, 'null'::text)) || ', "actor": '::text) || COALESCE((to_json(actor))::text, 'null'::text)) || ', "queue": '::text) || COALESCE((to_json(queue))::text, 'null'::text)) || ', "job_id": '::text) || COALESCE((job_id)::text, 'null'::text)) || ', "reason": '::text) || COALESCE((to_json(reason))::text, 'null'::text)) || ', "attempt": '::text) || COALESCE((attempt)::text, 'null'::text)) || ', "event_id": '::text) || COALESCE((('"'::text || (event_id)::text) || '"'::text), 'null'::text)) || ', "to_status": '::text) || COALESCE((('"'::text || (to_status)::text) || '"'::text), 'null'::text)) || ', "event_type": '::text) || COALESCE((to_json(event_type))::text, 'null'::text)) || ', "from_status": '::text) || COALESCE((('"'::text || (from_status)::text) || '"'::text), 'null'::text)) || ', "occurred_at": '::text) || COALESCE((to_json(occurred_at))::text, 'null'::text)) || ', "schema_version": 1}'::text);
END;

--
-- Name: fail_v1(text, bigint[], integer[], text[], text[], double precision[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.fail_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_reasons text[], p_errors text[], p_retry_delays double precision[]) RETURNS TABLE(id bigint, attempt integer, outcome text, kind text, retry_at timestamp with time zone)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: finish_v1(text, bigint[], integer[], text[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.finish_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_results text[]) RETURNS TABLE(id bigint, attempt integer, outcome text, kind text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: held_v1(text[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.held_v1(p_queues text[]) RETURNS TABLE(concurrency_held boolean, rate_next_at timestamp with time zone, limits_exist boolean)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT * FROM jobengine.held_v2(p_queues, NULL)
$$;

--
-- Name: held_v2(text[], timestamp with time zone); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.held_v2(p_queues text[], p_since timestamp with time zone DEFAULT NULL::timestamp with time zone) RETURNS TABLE(concurrency_held boolean, rate_next_at timestamp with time zone, limits_exist boolean)
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
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

--
-- Name: job_content_ok(text, text, jsonb, jsonb, bigint); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.job_content_ok(kind text, queue text, payload jsonb, retry_policy jsonb, max_bytes bigint) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT ((kind ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$'::text) AND (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$'::text) AND (octet_length((payload)::text) <= max_bytes) AND ((retry_policy IS NULL) OR ((jsonb_typeof(retry_policy) = 'object'::text) AND ((retry_policy - ARRAY['strategy'::text, 'base_delay'::text, 'max_delay'::text, 'jitter'::text]) = '{}'::jsonb) AND (COALESCE((retry_policy ->> 'strategy'::text), 'exponential'::text) = ANY (ARRAY['fixed'::text, 'linear'::text, 'exponential'::text])) AND (COALESCE(jsonb_typeof((retry_policy -> 'strategy'::text)), 'string'::text) = 'string'::text) AND (COALESCE(jsonb_typeof((retry_policy -> 'base_delay'::text)), 'number'::text) = 'number'::text) AND (COALESCE(jsonb_typeof((retry_policy -> 'max_delay'::text)), 'number'::text) = 'number'::text) AND (COALESCE(jsonb_typeof((retry_policy -> 'jitter'::text)), 'boolean'::text) = 'boolean'::text) AND (COALESCE(((retry_policy ->> 'base_delay'::text))::numeric, (0)::numeric) >= (0)::numeric) AND (COALESCE(((retry_policy ->> 'max_delay'::text))::numeric, (0)::numeric) >= (0)::numeric))));
END;

--
-- Name: jobs_chain_insert(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_chain_insert() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    NEW.updated_at := NEW.created_at;
    NEW.ledger_head := jobengine.creation_hash(NEW.id, NEW.created_at, NEW.status_actor, NEW.status_role,
                                               NEW.kind, NEW.queue);
    NEW.claim_order := jobengine.claim_order_of(NEW.status, NEW.depends_on, NEW.run_at, NEW.priority);
    RETURN NEW;
END
$$;

--
-- Name: jobs_claim_order_update(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_claim_order_update() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
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

--
-- Name: jobs_guard_columns(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_guard_columns() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_column text;
BEGIN
    v_column := CASE
        WHEN NEW.attempt IS DISTINCT FROM OLD.attempt THEN 'attempt'
        WHEN NEW.released IS DISTINCT FROM OLD.released THEN 'released'
        WHEN NEW.status_reason IS DISTINCT FROM OLD.status_reason THEN 'status_reason'
        WHEN NEW.status_actor IS DISTINCT FROM OLD.status_actor THEN 'status_actor'
        WHEN NEW.status_role IS DISTINCT FROM OLD.status_role THEN 'status_role'
        WHEN NEW.result IS DISTINCT FROM OLD.result THEN 'result'
        WHEN NEW.last_error IS DISTINCT FROM OLD.last_error THEN 'last_error'
        WHEN NEW.created_at IS DISTINCT FROM OLD.created_at THEN 'created_at'
        WHEN NEW.scheduled_at IS DISTINCT FROM OLD.scheduled_at THEN 'scheduled_at'
        WHEN NEW.started_at IS DISTINCT FROM OLD.started_at THEN 'started_at'
        WHEN NEW.finished_at IS DISTINCT FROM OLD.finished_at THEN 'finished_at'
        WHEN NEW.lease_owner IS DISTINCT FROM OLD.lease_owner THEN 'lease_owner'
    END;
    -- A note (add_timeline_note, as the schema owner) moves the head and the
    -- time of the job's newest ledger row; nothing else may.
    IF v_column IS NULL AND (NEW.updated_at IS DISTINCT FROM OLD.updated_at
                             OR NEW.ledger_head IS DISTINCT FROM OLD.ledger_head) THEN
        IF coalesce(current_setting('jobengine.noting', true), '') <> pg_current_xact_id()::text
           OR NOT pg_has_role(CURRENT_USER, (SELECT c.relowner FROM pg_class c WHERE c.oid = TG_RELID), 'USAGE') THEN
            v_column := CASE WHEN NEW.updated_at IS DISTINCT FROM OLD.updated_at
                             THEN 'updated_at' ELSE 'ledger_head' END;
        END IF;
    END IF;
    IF v_column IS NOT NULL THEN
        RAISE EXCEPTION 'jobengine: job %: % changes only with a status transition', OLD.id, v_column
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_lifecycle_columns', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    IF NEW.lease_expires_at IS DISTINCT FROM OLD.lease_expires_at THEN
        IF OLD.status <> 'running' THEN
            RAISE EXCEPTION 'jobengine: job %: only a running job holds a lease (it is %)', OLD.id, OLD.status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_lease_bounded', TABLE = 'jobs', SCHEMA = 'jobengine';
        END IF;
        IF NOT jobengine.lease_ok(NEW.lease_expires_at, statement_timestamp()) THEN
            PERFORM jobengine.check_lease(OLD.id, NEW.lease_expires_at, statement_timestamp());
        END IF;
    END IF;
    RETURN NEW;
END
$$;

--
-- Name: jobs_guard_delete(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_guard_delete() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $$
BEGIN
    IF jobengine.retention_in_progress() THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'jobengine: jobs are removed only by the retention policy (jobengine retention run): DELETE refused'
        USING ERRCODE = 'restrict_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END
$$;

--
-- Name: jobs_guard_transition(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_guard_transition() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_now timestamptz := statement_timestamp();
    v_trusted boolean := jobengine.writer_trusted();
    v_blocker record;
    v_reason text;
    v_prev bytea;
    v_prev_at timestamptz;
BEGIN
    IF jobengine.transition_event_type(OLD.status, NEW.status) IS NULL
       -- The claim (claim_v1) takes a due, dependency-free job straight from
       -- pending to running in one statement; the recorder writes both steps
       -- (pending -> scheduled -> running). Only a trusted role inside the
       -- claim, whose definition sets jobengine.claiming; the setting alone
       -- gives an untrusted role nothing.
       AND NOT (OLD.status = 'pending' AND NEW.status = 'running' AND v_trusted
                AND coalesce(current_setting('jobengine.claiming', true), '') = 'on')
    THEN
        RAISE EXCEPTION 'jobengine: illegal transition for job %: % -> %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_status_transition', TABLE = 'jobs', SCHEMA = 'jobengine',
                  HINT = 'see the lifecycle table in the jobengine README';
    END IF;
    IF NOT v_trusted AND NEW.status <> 'cancelled' THEN
        RAISE EXCEPTION 'jobengine: job %: role % may only cancel jobs, not move them % -> %',
            OLD.id, current_user, OLD.status, NEW.status
            USING ERRCODE = 'insufficient_privilege', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    -- A job runs only after every job it depends on completed (completed is
    -- final, and depends_on is frozen once pending is left, so checking on
    -- the way in is enough).
    IF NEW.status IN ('scheduled', 'running') AND NEW.depends_on <> '{}' THEN
        SELECT d.id, d.status INTO v_blocker FROM jobengine.jobs d
        WHERE d.id = ANY (NEW.depends_on) AND d.status <> 'completed'
        ORDER BY d.id LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'jobengine: job % cannot become %: its dependency % is %, not completed',
                OLD.id, NEW.status, v_blocker.id, v_blocker.status
                USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_dependencies_completed', TABLE = 'jobs', SCHEMA = 'jobengine';
        END IF;
    END IF;

    -- Why: the writer's reason if it gave one, else the transition's default;
    -- a role that is not trusted cannot pass its change off as the engine's.
    v_reason := CASE WHEN NEW.status_reason IS DISTINCT FROM OLD.status_reason THEN NEW.status_reason
                     ELSE jobengine.default_reason(OLD.status, NEW.status) END;
    IF NOT v_trusted AND jobengine.engine_reason(v_reason) AND v_reason <> 'cancelled_by_user' THEN
        RAISE EXCEPTION 'jobengine: job %: reason % is the engine''s own; role % may give its own words',
            OLD.id, quote_literal(v_reason), current_user
            USING ERRCODE = 'insufficient_privilege', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    NEW.status_reason := v_reason;
    -- Who and when come from the database, not from the writer.
    NEW.status_actor := CASE WHEN v_trusted
                             THEN jobengine.session_actor()
                             ELSE 'sql' END;
    NEW.status_role := current_user;
    NEW.updated_at := v_now;
    NEW.created_at := OLD.created_at;
    NEW.attempt := OLD.attempt;
    NEW.released := OLD.released;
    IF NEW.status <> 'completed' THEN
        NEW.result := OLD.result;
    END IF;
    IF NEW.status NOT IN ('failed', 'cancelled') THEN
        NEW.last_error := OLD.last_error;
    END IF;
    NEW.scheduled_at := OLD.scheduled_at;
    NEW.started_at := OLD.started_at;
    NEW.finished_at := OLD.finished_at;

    IF NEW.status = 'running' THEN
        -- Entering running counts an attempt, and a running job always holds
        -- a bounded lease: one given by hand without an expiry gets 30 s.
        NEW.attempt := OLD.attempt + 1;
        NEW.started_at := v_now;
        NEW.finished_at := NULL;
        IF OLD.status = 'pending' THEN
            NEW.scheduled_at := v_now;
        END IF;
        IF NEW.lease_expires_at IS NULL OR NEW.lease_expires_at IS NOT DISTINCT FROM OLD.lease_expires_at THEN
            NEW.lease_expires_at := v_now + interval '30 seconds';
        END IF;
        NEW.lease_owner := coalesce(NEW.lease_owner, NEW.status_actor);
        IF NOT jobengine.lease_ok(NEW.lease_expires_at, v_now) THEN
            PERFORM jobengine.check_lease(OLD.id, NEW.lease_expires_at, v_now);
        END IF;
    ELSE
        NEW.lease_owner := NULL;
        NEW.lease_expires_at := NULL;
        IF NEW.status = 'scheduled' THEN
            NEW.scheduled_at := v_now;
            IF OLD.status = 'running' THEN
                NEW.released := OLD.released + 1;  -- given back: not counted against max_retries
            END IF;
        ELSE
            NEW.finished_at := v_now;
        END IF;
    END IF;

    -- The chain: from the job's newest row.
    v_prev := OLD.ledger_head;
    v_prev_at := OLD.updated_at;
    IF OLD.status = 'pending' AND NEW.status = 'running' THEN
        v_prev := jobengine.ledger_hash(v_prev, OLD.id, 'job.scheduled', 'pending', 'scheduled',
                                        NEW.attempt - 1, v_now, 'ready', NEW.status_actor, NEW.status_role,
                                        NEW.kind, NEW.queue, v_prev_at);
        NEW.ledger_head := jobengine.ledger_hash(v_prev, OLD.id, 'job.started', 'scheduled', 'running',
                                                 NEW.attempt, v_now, NEW.status_reason, NEW.status_actor,
                                                 NEW.status_role, NEW.kind, NEW.queue, v_now);
    ELSE
        NEW.ledger_head := jobengine.ledger_hash(v_prev, OLD.id,
                                                 jobengine.transition_event_type(OLD.status, NEW.status),
                                                 OLD.status, NEW.status, NEW.attempt, v_now, NEW.status_reason,
                                                 NEW.status_actor, NEW.status_role, NEW.kind, NEW.queue,
                                                 v_prev_at);
    END IF;
    RETURN NEW;
END
$$;

--
-- Name: jobs_record_insert(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_record_insert() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
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

--
-- Name: jobs_record_update(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_record_update() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
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

--
-- Name: jobs_refuse_id_change(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_refuse_id_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RAISE EXCEPTION 'jobengine: job %: id cannot change', OLD.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_id_immutable', TABLE = 'jobs', SCHEMA = 'jobengine';
END
$$;

--
-- Name: jobs_validate_content(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_validate_content() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    max_bytes bigint := jobengine.max_payload_bytes();
BEGIN
    IF NOT jobengine.job_content_ok(NEW.kind, NEW.queue, NEW.payload, NEW.retry_policy, max_bytes) THEN
        PERFORM jobengine.raise_invalid_job(NEW.id, NEW.kind, NEW.queue, NEW.payload, NEW.retry_policy, max_bytes);
    END IF;
    RETURN NEW;
END
$$;

--
-- Name: jobs_validate_dependencies(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.jobs_validate_dependencies() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'jobengine: job %: depends_on cannot change once the job left pending (it is %)', OLD.id, OLD.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_frozen', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    -- One dependency change at a time, database-wide: a cycle needs two.
    PERFORM pg_advisory_xact_lock(7666530082071394660);
    PERFORM jobengine.validate_dependencies(ARRAY[NEW.id]);
    RETURN NULL;
END
$$;

--
-- Name: max_lease_ttl(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.max_lease_ttl() RETURNS interval
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RETURN coalesce((SELECT s.value::interval FROM jobengine.settings s WHERE s.name = 'max_lease_ttl'),
                    interval '1 hour');
END
$$;

--
-- Name: lease_ok(timestamp with time zone, timestamp with time zone); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.lease_ok(p_expires timestamp with time zone, p_now timestamp with time zone) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT
         CASE
             WHEN ((p_expires IS NULL) OR (p_expires <= p_now)) THEN false
             WHEN (p_expires <= (p_now + '00:01:00'::interval)) THEN true
             ELSE (p_expires <= (p_now + jobengine.max_lease_ttl()))
         END AS "case";
END;

--
-- Name: ledger_analyze_v1(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_analyze_v1() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    ANALYZE jobengine.ledger;
END
$$;

--
-- Name: ledger_day_digest(date); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_day_digest(p_day date, OUT rows bigint, OUT digest bytea) RETURNS record
    LANGUAGE plpgsql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_sort TO 'off'
    SET max_parallel_workers_per_gather TO '0'
    SET jit TO 'off'
    AS $$
DECLARE
    v_from constant timestamptz := p_day::timestamp AT TIME ZONE 'UTC';
    v_to constant timestamptz := (p_day + 1)::timestamp AT TIME ZONE 'UTC';
    v_tx xid8 := '0'::xid8;
    v_id bigint := -1;
    v_n bigint;
    v_chunk bytea;
BEGIN
    IF p_day IS NULL THEN
        RAISE EXCEPTION 'jobengine: ledger_day_digest: the day must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    rows := 0;
    digest := sha256(convert_to('jobengine ledger day ' || p_day::text, 'UTF8'));
    LOOP
        WITH c AS MATERIALIZED (
            SELECT l.tx_id, l.id, l.hash FROM jobengine.ledger l
            WHERE l.occurred_at >= v_from AND l.occurred_at < v_to
              AND (l.tx_id, l.id) > (v_tx, v_id)
            ORDER BY l.tx_id, l.id
            LIMIT 50000
        ), last AS (
            SELECT c.tx_id, c.id FROM c ORDER BY c.tx_id DESC, c.id DESC LIMIT 1
        )
        SELECT (SELECT count(*) FROM c),
               (SELECT sha256(string_agg(coalesce(c.hash, '\x00'::bytea) || int8send(c.id), ''::bytea
                                         ORDER BY c.tx_id, c.id)) FROM c),
               last.tx_id, last.id
        INTO v_n, v_chunk, v_tx, v_id
        FROM last;
        EXIT WHEN NOT FOUND OR v_n = 0;
        rows := rows + v_n;
        digest := sha256(digest || v_chunk);
        EXIT WHEN v_n < 50000;
    END LOOP;
END
$$;

--
-- Name: ledger_drop_v1(timestamp with time zone, boolean); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_drop_v1(p_before timestamp with time zone, p_dry_run boolean DEFAULT false) RETURNS TABLE(name text, range_from timestamp with time zone, range_to timestamp with time zone, rows bigint, max_id bigint)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    p record;
    v_rows bigint;
    v_max bigint;
BEGIN
    IF p_before IS NULL OR p_before > statement_timestamp() THEN
        RAISE EXCEPTION 'jobengine: ledger_drop_v1: the boundary must be a time in the past, not %', p_before
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('lock_timeout', '1s', true);
    FOR p IN SELECT * FROM jobengine.ledger_partitions() lp WHERE lp.range_to <= p_before ORDER BY lp.range_from LOOP
        EXECUTE format('SELECT count(*), max(id) FROM jobengine.%I', p.name) INTO v_rows, v_max;
        IF NOT p_dry_run THEN
            BEGIN
                EXECUTE format('DROP TABLE jobengine.%I', p.name);
            EXCEPTION WHEN lock_not_available THEN
                RETURN;
            END;
        END IF;
        name := p.name; range_from := p.range_from; range_to := p.range_to; rows := v_rows; max_id := v_max;
        RETURN NEXT;
    END LOOP;
    SELECT count(*), max(d.id) INTO v_rows, v_max FROM jobengine.ledger_default d WHERE d.occurred_at < p_before;
    IF v_rows > 0 THEN
        IF NOT p_dry_run THEN
            PERFORM set_config('jobengine.retention', pg_current_xact_id()::text, true);
            DELETE FROM jobengine.ledger_default d WHERE d.occurred_at < p_before;
            PERFORM set_config('jobengine.retention', '', true);
        END IF;
        name := 'ledger_default'; range_from := NULL; range_to := p_before; rows := v_rows; max_id := v_max;
        RETURN NEXT;
    END IF;
END
$$;

--
-- Name: ledger_event_id(bigint, uuid); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_event_id(id bigint, legacy uuid) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT COALESCE(legacy, (((('6a6f6265-0000-8000-'::text || substr(lpad(to_hex(id), 16, '0'::text), 1, 4)) || '-'::text) || substr(lpad(to_hex(id), 16, '0'::text), 5, 12)))::uuid) AS "coalesce";
END;

--
-- Name: ledger_guard(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_guard() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF TG_OP = 'DELETE' AND jobengine.retention_in_progress() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'jobengine: the ledger (%.%) is append-only: % refused; rows leave only through the retention policy',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END
$$;

--
-- Name: ledger_link_key(bytea, timestamp with time zone); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_link_key(h bytea, at timestamp with time zone) RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT
         CASE
             WHEN ((h IS NULL) OR (h = '\x'::bytea)) THEN (0)::bigint
             ELSE ((((((((((get_byte(h, 0))::bigint << 56) | ((get_byte(h, 1))::bigint << 48)) | ((get_byte(h, 2))::bigint << 40)) | ((get_byte(h, 3))::bigint << 32)) | ((get_byte(h, 4))::bigint << 24)) | ((get_byte(h, 5))::bigint << 16)) | ((get_byte(h, 6))::bigint << 8)) | (get_byte(h, 7))::bigint) # (round((date_part('epoch'::text, at) * (1000000)::double precision)))::bigint)
         END AS "case";
END;

--
-- Name: ledger_partition_name(date); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_partition_name(day date) RETURNS text
    LANGUAGE sql IMMUTABLE
    BEGIN ATOMIC
 SELECT ('ledger_'::text || to_char((day)::timestamp with time zone, 'YYYYMMDD'::text));
END;

--
-- Name: ledger_partitions(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_partitions() RETURNS TABLE(name text, range_from timestamp with time zone, range_to timestamp with time zone)
    LANGUAGE sql STABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT c.relname::text,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'jobengine.ledger'::regclass
      AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    ORDER BY 2
$$;

--
-- Name: ledger_prepare_v1(integer, date); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_prepare_v1(p_days_ahead integer DEFAULT 7, p_from date DEFAULT NULL::date) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_today date := (statement_timestamp() AT TIME ZONE 'UTC')::date;
    v_day date;
    v_name text;
    v_lo timestamptz;
    v_hi timestamptz;
    n integer := 0;
BEGIN
    IF p_days_ahead IS NULL OR p_days_ahead < 0 OR p_days_ahead > 366 THEN
        RAISE EXCEPTION 'jobengine: ledger_prepare_v1: days ahead must be between 0 and 366, not %', p_days_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_from IS NOT NULL AND p_from < v_today - 3660 THEN
        RAISE EXCEPTION 'jobengine: ledger_prepare_v1: % is more than ten years ago', p_from
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM set_config('lock_timeout', '2s', true);
    FOR v_day IN SELECT d::date FROM generate_series(coalesce(p_from, v_today - 1), v_today + p_days_ahead,
                                                      interval '1 day') AS g(d)
    LOOP
        v_name := jobengine.ledger_partition_name(v_day);
        CONTINUE WHEN to_regclass('jobengine.' || v_name) IS NOT NULL;
        v_lo := v_day::timestamp AT TIME ZONE 'UTC';
        v_hi := (v_day + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE jobengine.%I (LIKE jobengine.ledger INCLUDING DEFAULTS)', v_name);
        -- Rows that waited in the default partition move to their day first.
        IF EXISTS (SELECT 1 FROM jobengine.ledger_default d WHERE d.occurred_at >= v_lo AND d.occurred_at < v_hi) THEN
            PERFORM set_config('jobengine.retention', pg_current_xact_id()::text, true);
            EXECUTE format('WITH moved AS (DELETE FROM jobengine.ledger_default d'
                           ' WHERE d.occurred_at >= %L AND d.occurred_at < %L RETURNING d.*)'
                           ' INSERT INTO jobengine.%I SELECT * FROM moved', v_lo, v_hi, v_name);
            PERFORM set_config('jobengine.retention', '', true);
        END IF;
        EXECUTE format('ALTER TABLE jobengine.ledger ATTACH PARTITION jobengine.%I FOR VALUES FROM (%L) TO (%L)',
                       v_name, v_lo, v_hi);
        EXECUTE format('CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON jobengine.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite()', v_name);
        EXECUTE format('ALTER TABLE jobengine.%I ENABLE ALWAYS TRIGGER ledger_no_truncate', v_name);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

--
-- Name: retention_log; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.retention_log (
    id bigint NOT NULL,
    ran_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL,
    actor text NOT NULL,
    role text DEFAULT SESSION_USER NOT NULL,
    dry_run boolean NOT NULL,
    finished_jobs interval,
    audit interval,
    jobs_removed bigint DEFAULT 0 NOT NULL,
    jobs_finished_before timestamp with time zone,
    jobs_oldest_finished timestamp with time zone,
    jobs_newest_finished timestamp with time zone,
    ledger_rows_removed bigint DEFAULT 0 NOT NULL,
    partitions_dropped jsonb DEFAULT '[]'::jsonb NOT NULL,
    ledger_removed_before timestamp with time zone,
    partitions_created integer DEFAULT 0 NOT NULL,
    duration interval,
    CONSTRAINT retention_log_partitions_array CHECK ((jsonb_typeof(partitions_dropped) = 'array'::text))
);

--
-- Name: TABLE retention_log; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.retention_log IS 'One row per retention pass: what it removed (or, dry, would have), and where the ledger now begins.';

--
-- Name: ledger_removed_before(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_removed_before() RETURNS timestamp with time zone
    LANGUAGE sql STABLE
    BEGIN ATOMIC
 SELECT COALESCE(max(r.ledger_removed_before), '-infinity'::timestamp with time zone) AS "coalesce"
    FROM jobengine.retention_log r
   WHERE (NOT r.dry_run);
END;

--
-- Name: ledger_seals; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.ledger_seals (
    day date NOT NULL,
    rows bigint NOT NULL,
    digest bytea NOT NULL,
    sealed_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL,
    actor text NOT NULL,
    CONSTRAINT ledger_seals_digest_check CHECK ((length(digest) = 32)),
    CONSTRAINT ledger_seals_rows_check CHECK ((rows >= 0))
);

--
-- Name: TABLE ledger_seals; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.ledger_seals IS 'One row per sealed UTC day of the ledger: its rows and their digest (export it: jobengine audit seals).';

--
-- Name: ledger_seal_v1(interval, date); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.ledger_seal_v1(p_grace interval DEFAULT '01:00:00'::interval, p_first date DEFAULT NULL::date) RETURNS SETOF jobengine.ledger_seals
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_day date;
    v_last date;
    v_digest record;
    v_row jobengine.ledger_seals;
BEGIN
    IF p_grace IS NULL OR p_grace < interval '0' THEN
        RAISE EXCEPTION 'jobengine: ledger_seal_v1: the grace period must be 0 or more, not %', p_grace
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the newest day that ended p_grace ago
    v_last := ((statement_timestamp() - p_grace) AT TIME ZONE 'UTC')::date - 1;
    SELECT max(s.day) + 1 INTO v_day FROM jobengine.ledger_seals s;
    v_day := coalesce(v_day, p_first, v_last);
    WHILE v_day <= v_last LOOP
        SELECT * INTO v_digest FROM jobengine.ledger_day_digest(v_day);
        INSERT INTO jobengine.ledger_seals (day, rows, digest, actor)
        VALUES (v_day, v_digest.rows, v_digest.digest, jobengine.current_actor())
        RETURNING * INTO v_row;
        RETURN NEXT v_row;
        v_day := v_day + 1;
    END LOOP;
END
$$;

--
-- Name: lock_attempts(text, bigint[], integer[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.lock_attempts(p_owner text, p_ids bigint[], p_attempts integer[]) RETURNS SETOF tid
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: max_payload_bytes(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.max_payload_bytes() RETURNS bigint
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RETURN coalesce((SELECT s.value::bigint FROM jobengine.settings s WHERE s.name = 'max_payload_bytes'),
                    1048576::bigint);
END
$$;

--
-- Name: may_only_cancel(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.may_only_cancel() RETURNS boolean
    LANGUAGE sql STABLE
    BEGIN ATOMIC
 SELECT (NOT jobengine.writer_trusted());
END;

--
-- Name: notify_relayed(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.notify_relayed() RETURNS boolean
    LANGUAGE plpgsql STABLE PARALLEL SAFE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM jobengine.settings s WHERE s.name = 'notify_mode' AND s.value = 'relayed');
END
$$;

--
-- Name: positive_ttl(interval); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.positive_ttl(p_lease_ttl interval) RETURNS interval
    LANGUAGE plpgsql IMMUTABLE
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF p_lease_ttl IS NULL OR p_lease_ttl <= interval '0' THEN
        RAISE EXCEPTION 'jobengine: lease_ttl must be positive, not %', p_lease_ttl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_lease_ttl;
END
$$;

--
-- Name: promote_v1(text[], integer, boolean); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.promote_v1(p_queues text[], p_limit integer, p_sealed boolean DEFAULT false) RETURNS TABLE(id bigint, kind text)
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
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

--
-- Name: purge_jobs_v1(timestamp with time zone, integer, boolean); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.purge_jobs_v1(p_before timestamp with time zone, p_limit integer, p_dry_run boolean DEFAULT false) RETURNS TABLE(removed bigint, oldest timestamp with time zone, newest timestamp with time zone)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $$
BEGIN
    IF p_before IS NULL OR p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'jobengine: purge_jobs_v1: needs a time and a limit between 1 and 100000 (got %, %)',
            p_before, p_limit USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_dry_run THEN
        RETURN QUERY
        SELECT count(*), min(j.finished_at), max(j.finished_at) FROM jobengine.jobs j
        WHERE j.status IN ('completed', 'cancelled', 'failed') AND j.finished_at < p_before
          AND (j.status <> 'failed' OR j.attempt - j.released > j.max_retries)
          AND j.id NOT IN (SELECT n.id FROM jobengine.dependencies_needed() AS n(id));
        RETURN;
    END IF;
    PERFORM set_config('jobengine.retention', pg_current_xact_id()::text, true);
    -- (the batch is locked first, so no one can update or move its rows
    -- before the DELETE finds them by tuple id; a row updated since this
    -- statement's snapshot is rechecked by the lock, and left for the next
    -- batch)
    RETURN QUERY
    WITH d AS (
        DELETE FROM jobengine.jobs j
        WHERE j.ctid = ANY (ARRAY(
            SELECT c.ctid FROM jobengine.jobs c
            WHERE c.status IN ('completed', 'cancelled', 'failed') AND c.finished_at < p_before
              AND (c.status <> 'failed' OR c.attempt - c.released > c.max_retries)
              AND c.id NOT IN (SELECT n.id FROM jobengine.dependencies_needed() AS n(id))
            ORDER BY c.finished_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED))
        RETURNING j.finished_at
    )
    SELECT count(*), min(d.finished_at), max(d.finished_at) FROM d;
    PERFORM set_config('jobengine.retention', '', true);
END
$$;

--
-- Name: raise_invalid_job(bigint, text, text, jsonb, jsonb, bigint); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.raise_invalid_job(id bigint, kind text, queue text, payload jsonb, retry_policy jsonb, max_bytes bigint) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
BEGIN
    IF kind !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        RAISE EXCEPTION 'jobengine: job %: kind % is invalid: use 1-100 characters from A-Z a-z 0-9 _ . : - starting with a letter or digit',
            id, quote_literal(kind)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_kind_format', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    IF queue !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        RAISE EXCEPTION 'jobengine: job %: queue % is invalid: use 1-100 characters from A-Z a-z 0-9 _ . : - starting with a letter or digit',
            id, quote_literal(queue)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_queue_format', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    IF octet_length(payload::text) > max_bytes THEN
        RAISE EXCEPTION 'jobengine: job %: payload is % bytes, over the limit of % bytes (jobengine.max_payload_bytes)',
            id, octet_length(payload::text), max_bytes
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_payload_size', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    IF jsonb_typeof(retry_policy) = 'object'
       AND coalesce(retry_policy ->> 'strategy', 'exponential') NOT IN ('fixed', 'linear', 'exponential') THEN
        RAISE EXCEPTION 'jobengine: job %: retry_policy.strategy % is unknown: use fixed, linear or exponential',
            id, coalesce(quote_literal(retry_policy ->> 'strategy'), 'null')
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_retry_policy_valid', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    RAISE EXCEPTION 'jobengine: job %: retry_policy % is invalid: expected {"strategy": "fixed"|"linear"|"exponential", "base_delay": seconds >= 0, "max_delay": seconds >= 0, "jitter": true|false}',
        id, retry_policy
        USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_retry_policy_valid', TABLE = 'jobs', SCHEMA = 'jobengine';
END
$_$;

--
-- Name: reap_candidates_v1(integer); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.reap_candidates_v1(p_limit integer) RETURNS TABLE(id bigint, attempt integer, released integer, max_retries integer, retry_policy jsonb, lease_owner text, lease_expires_at timestamp with time zone)
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $$
    SELECT r.id, r.attempt, r.released, r.max_retries, r.retry_policy, r.lease_owner, r.lease_expires_at
    FROM jobengine.jobs r
    WHERE r.status = 'running' AND r.lease_expires_at < statement_timestamp()
    ORDER BY r.lease_expires_at
    LIMIT p_limit
    FOR NO KEY UPDATE SKIP LOCKED
$$;

--
-- Name: reap_v1(bigint[], integer[], text[], double precision[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.reap_v1(p_ids bigint[], p_attempts integer[], p_owners text[], p_retry_delays double precision[]) RETURNS TABLE(id bigint, outcome text, kind text, retry_at timestamp with time zone)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $$
DECLARE
    v_done bigint[];
BEGIN
    WITH t AS (SELECT * FROM unnest(p_ids, p_attempts, p_owners) AS t(id, attempt, owner)),
    upd AS (
        UPDATE jobengine.jobs j
        SET status = 'failed', status_reason = 'lease_expired',
            last_error = 'LeaseExpired: the lease held by ' || coalesce(j.lease_owner, '?')
                         || ' expired at ' || j.lease_expires_at::text
        FROM t
        WHERE j.id = t.id AND j.status = 'running' AND j.attempt = t.attempt
          AND j.lease_owner IS NOT DISTINCT FROM t.owner
          AND j.lease_expires_at < statement_timestamp()
        RETURNING j.id
    )
    SELECT coalesce(array_agg(upd.id), '{}') INTO v_done FROM upd;
    RETURN QUERY
    WITH t AS (SELECT * FROM unnest(p_ids, p_retry_delays) AS t(id, delay)),
    r AS (
        SELECT * FROM jobengine.schedule_retries(
            ARRAY(SELECT t.id FROM t WHERE t.id = ANY (v_done)),
            ARRAY(SELECT t.delay FROM t WHERE t.id = ANY (v_done)), 'retry')
    )
    SELECT t.id, CASE WHEN t.id = ANY (v_done) THEN 'done' ELSE 'moved' END, j.kind, r.run_at
    FROM t LEFT JOIN jobengine.jobs j ON j.id = t.id LEFT JOIN r ON r.id = t.id;
END
$$;

--
-- Name: refuse_rewrite(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.refuse_rewrite() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    RAISE EXCEPTION 'jobengine: %.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END
$$;

--
-- Name: relay_v1(integer); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.relay_v1(p_limit integer DEFAULT 1000) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
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

--
-- Name: release_v1(text, bigint[], integer[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.release_v1(p_owner text, p_ids bigint[], p_attempts integer[]) RETURNS TABLE(id bigint, attempt integer, outcome text, kind text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: renew_v1(text, bigint[], integer[], interval); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.renew_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_lease_ttl interval) RETURNS TABLE(id bigint, attempt integer, outcome text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: retention_in_progress(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.retention_in_progress() RETURNS boolean
    LANGUAGE sql
    BEGIN ATOMIC
 SELECT ((COALESCE(current_setting('jobengine.retention'::text, true), ''::text) = (pg_current_xact_id())::text) AND pg_has_role(CURRENT_USER, ( SELECT c.relowner
            FROM pg_class c
           WHERE (c.oid = ('jobengine.jobs'::regclass)::oid)), 'USAGE'::text));
END;

--
-- Name: retention_record_v1(boolean, interval, interval, bigint, timestamp with time zone, timestamp with time zone, timestamp with time zone, bigint, jsonb, timestamp with time zone, integer, interval); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.retention_record_v1(p_dry_run boolean, p_finished_jobs interval, p_audit interval, p_jobs_removed bigint, p_jobs_finished_before timestamp with time zone, p_jobs_oldest timestamp with time zone, p_jobs_newest timestamp with time zone, p_ledger_rows_removed bigint, p_partitions_dropped jsonb, p_ledger_removed_before timestamp with time zone, p_partitions_created integer, p_duration interval) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    INSERT INTO jobengine.retention_log (actor, role, dry_run, finished_jobs, audit, jobs_removed,
                                         jobs_finished_before, jobs_oldest_finished, jobs_newest_finished,
                                         ledger_rows_removed, partitions_dropped, ledger_removed_before,
                                         partitions_created, duration)
    VALUES (jobengine.session_actor(), session_user, p_dry_run,
            p_finished_jobs, p_audit, p_jobs_removed, p_jobs_finished_before, p_jobs_oldest, p_jobs_newest,
            p_ledger_rows_removed, coalesce(p_partitions_dropped, '[]'),
            CASE WHEN p_dry_run THEN NULL ELSE p_ledger_removed_before END,
            p_partitions_created, p_duration)
    RETURNING id
$$;

--
-- Name: retry_candidates_v1(integer); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.retry_candidates_v1(p_limit integer) RETURNS TABLE(id bigint, attempt integer, released integer, max_retries integer, retry_policy jsonb)
    LANGUAGE sql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $$
    SELECT j.id, j.attempt, j.released, j.max_retries, j.retry_policy FROM jobengine.jobs j
    WHERE j.status = 'failed' AND j.attempt - j.released <= j.max_retries
    ORDER BY j.id
    LIMIT p_limit
    FOR NO KEY UPDATE SKIP LOCKED
$$;

--
-- Name: retry_v1(bigint[], double precision[], text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.retry_v1(p_ids bigint[], p_delays double precision[] DEFAULT NULL::double precision[], p_reason text DEFAULT 'operator_retry'::text) RETURNS TABLE(id bigint, retried boolean, run_at timestamp with time zone, stays_cancelled bigint[], kind text)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET lock_timeout TO '5s'
    SET jit TO 'off'
    AS $$
BEGIN
    -- Wait (briefly) for failed rows someone holds: an operator expects an answer.
    PERFORM 1 FROM jobengine.jobs j WHERE j.id = ANY (p_ids) AND j.status = 'failed' FOR NO KEY UPDATE;
    RETURN QUERY
    WITH r AS (
        SELECT * FROM jobengine.schedule_retries(
            p_ids, coalesce(p_delays, array_fill(0::double precision, ARRAY[cardinality(p_ids)])),
            p_reason)
    )
    SELECT t.id, r.id IS NOT NULL, r.run_at,
           CASE WHEN r.id IS NOT NULL THEN jobengine.cancelled_dependents(t.id) ELSE '{}' END,
           j.kind
    FROM unnest(p_ids) AS t(id) LEFT JOIN r ON r.id = t.id LEFT JOIN jobengine.jobs j ON j.id = t.id;
END
$$;

--
-- Name: schedule_retries(bigint[], double precision[], text); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.schedule_retries(p_ids bigint[], p_delays double precision[], p_reason text) RETURNS TABLE(id bigint, run_at timestamp with time zone)
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    SET plan_cache_mode TO 'force_generic_plan'
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

--
-- Name: schedule_tick_key(text, timestamp with time zone); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.schedule_tick_key(p_name text, p_tick timestamp with time zone) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT ((((('schedule:'::text || p_name) || ':'::text) || to_char((p_tick AT TIME ZONE 'UTC'::text), 'YYYY-MM-DD"T"HH24:MI:SS'::text)) ||
         CASE
             WHEN (((EXTRACT(microseconds FROM p_tick))::bigint % (1000000)::bigint) <> 0) THEN to_char((p_tick AT TIME ZONE 'UTC'::text), '.US'::text)
             ELSE ''::text
         END) || 'Z'::text);
END;

--
-- Name: schedule_tick_v1(text, timestamp with time zone, integer); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.schedule_tick_v1(p_name text, p_tick timestamp with time zone, p_missed integer DEFAULT 0) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $$
DECLARE
    v_schedule jobengine.schedules;
    v_job bigint;
BEGIN
    IF p_tick IS NULL OR p_tick > statement_timestamp() + interval '1 second' THEN
        RAISE EXCEPTION 'jobengine: schedule_tick_v1: tick % is not due yet', p_tick
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE jobengine.schedules s SET last_tick = p_tick
    WHERE s.name = p_name AND s.enabled
      AND (s.last_tick < p_tick OR (s.last_tick IS NULL AND p_tick >= date_trunc('second', s.created_at)))
    RETURNING s.* INTO v_schedule;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO jobengine.jobs (kind, queue, payload, priority, run_at, limit_key, idempotency_key)
    VALUES (v_schedule.kind, v_schedule.queue, v_schedule.payload, v_schedule.priority, p_tick,
            v_schedule.limit_key, jobengine.schedule_tick_key(p_name, p_tick))
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_job;
    IF v_job IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE jobengine.schedules s SET last_job_id = v_job WHERE s.name = p_name;
    IF coalesce(p_missed, 0) > 0 THEN
        PERFORM jobengine.add_timeline_note(
            ARRAY[v_job], 'job.schedule_missed',
            format('schedule %s: %s earlier tick%s missed while no daemon ran; this job is for the latest (%s)',
                   p_name, p_missed, CASE WHEN p_missed = 1 THEN ' was' ELSE 's were' END,
                   jobengine.schedule_tick_key(p_name, p_tick)));
    END IF;
    RETURN v_job;
END
$$;

--
-- Name: schedules_check(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.schedules_check() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    v_problem text;
    v_field text;
BEGIN
    IF NEW.name IS NULL OR NEW.name !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        v_field := 'name';
        v_problem := 'must be 1 to 100 letters, digits or _.:- (starting with a letter or digit)';
    ELSIF (NEW.cron IS NULL) = (NEW.every IS NULL) THEN
        v_field := CASE WHEN NEW.cron IS NULL THEN 'cron' ELSE 'every' END;
        v_problem := 'give exactly one of cron and every';
    ELSIF NEW.every IS NOT NULL AND NEW.every < interval '1 second' THEN
        v_field := 'every';
        v_problem := format('must be at least 1 second, not %s', NEW.every);
    ELSIF NEW.every IS NOT NULL AND (extract(month FROM NEW.every) <> 0 OR extract(year FROM NEW.every) <> 0) THEN
        v_field := 'every';
        v_problem := format('must be a fixed length (days, hours, minutes, seconds), not %s; use cron for months', NEW.every);
    ELSIF NEW.cron IS NOT NULL AND jobengine.cron_problem(NEW.cron) IS NOT NULL THEN
        v_field := 'cron';
        v_problem := jobengine.cron_problem(NEW.cron);
    ELSIF NOT EXISTS (SELECT 1 FROM pg_timezone_names z WHERE z.name = NEW.timezone) THEN
        v_field := 'timezone';
        v_problem := format('unknown time zone %L (use an IANA name such as Europe/Berlin)', NEW.timezone);
    ELSIF NEW.kind IS NULL OR NEW.kind !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        v_field := 'kind';
        v_problem := 'use 1-100 characters from A-Z a-z 0-9 _ . : - starting with a letter or digit (as jobs do)';
    ELSIF NEW.queue IS NULL OR NEW.queue !~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$' THEN
        v_field := 'queue';
        v_problem := 'use 1-100 characters from A-Z a-z 0-9 _ . : - starting with a letter or digit (as jobs do)';
    ELSIF jsonb_typeof(NEW.payload) IS DISTINCT FROM 'object' THEN
        v_field := 'payload';
        v_problem := 'must be a JSON object';
    ELSIF NEW.limit_key IS NOT NULL AND (NEW.limit_key = '' OR length(NEW.limit_key) > 200) THEN
        v_field := 'limit_key';
        v_problem := 'must be 1 to 200 characters';
    END IF;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'jobengine: schedule %: %: %', coalesce(quote_ident(NEW.name), '(no name)'), v_field, v_problem
            USING ERRCODE = 'check_violation', CONSTRAINT = 'schedules_' || v_field || '_valid',
                  COLUMN = v_field, TABLE = 'schedules', SCHEMA = 'jobengine';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- A new timing starts from now: ticks before the change are not "missed".
        IF (NEW.cron, NEW.every, NEW.timezone) IS DISTINCT FROM (OLD.cron, OLD.every, OLD.timezone)
           AND NEW.last_tick IS NOT DISTINCT FROM OLD.last_tick THEN
            NEW.last_tick := NULL;
            NEW.created_at := statement_timestamp();
        END IF;
        IF NEW.enabled AND NOT OLD.enabled AND NEW.last_tick IS NOT DISTINCT FROM OLD.last_tick THEN
            -- resumed: ticks from while it was paused are skipped, not run
            NEW.last_tick := NULL;
            NEW.created_at := statement_timestamp();
        END IF;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.last_tick IS NOT DISTINCT FROM OLD.last_tick THEN
        NEW.changed_by := jobengine.current_actor();
        NEW.changed_at := statement_timestamp();
    END IF;
    RETURN NEW;
END
$_$;

--
-- Name: scheduling_stamp(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.scheduling_stamp() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    NEW.changed_by := jobengine.current_actor();
    NEW.changed_at := statement_timestamp();
    RETURN NEW;
END
$$;

--
-- Name: scheduling_wake(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.scheduling_wake() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF TG_TABLE_NAME = 'queues' THEN
        PERFORM pg_notify('jobengine_wake', n.name || ':ready')
        FROM (SELECT DISTINCT c.name FROM changed c WHERE NOT c.paused) n;
    ELSIF TG_TABLE_NAME = 'schedules' THEN
        PERFORM pg_notify('jobengine_wake', '*:schedules');
    ELSE
        PERFORM pg_notify('jobengine_wake', '*:ready');
    END IF;
    RETURN NULL;
END
$$;

--
-- Name: settings_check(); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.settings_check() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    IF NEW.name = 'max_lease_ttl' AND NEW.value::interval < interval '1 minute' THEN
        RAISE EXCEPTION 'jobengine: setting max_lease_ttl must be an interval of at least 1 minute, not %', NEW.value
            USING ERRCODE = 'check_violation', TABLE = 'settings', SCHEMA = 'jobengine';
    END IF;
    IF NEW.name = 'priority_aging' AND NEW.value <> 'off'
       AND (NEW.value::interval < interval '1 second' OR NEW.value::interval > interval '1 day') THEN
        RAISE EXCEPTION 'jobengine: setting priority_aging must be ''off'' or an interval from 1 second to 1 day, not %', NEW.value
            USING ERRCODE = 'check_violation', TABLE = 'settings', SCHEMA = 'jobengine';
    END IF;
    IF NEW.name = 'notify_mode' AND NEW.value = 'relayed'
       AND (TG_OP = 'INSERT' OR OLD.value IS DISTINCT FROM 'relayed') THEN
        UPDATE jobengine.relay_cursor
        SET tx_id = pg_snapshot_xmin(pg_current_snapshot()), id = 0, relayed_at = statement_timestamp();
    END IF;
    RETURN NEW;
END
$$;

--
-- Name: transition_event_type(jobengine.job_status, jobengine.job_status); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.transition_event_type(from_status jobengine.job_status, to_status jobengine.job_status) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    BEGIN ATOMIC
 SELECT
         CASE
             WHEN ((from_status IS NULL) AND (to_status = 'pending'::jobengine.job_status)) THEN 'job.created'::text
             WHEN ((from_status = 'pending'::jobengine.job_status) AND (to_status = 'scheduled'::jobengine.job_status)) THEN 'job.scheduled'::text
             WHEN ((from_status = 'pending'::jobengine.job_status) AND (to_status = 'cancelled'::jobengine.job_status)) THEN 'job.cancelled'::text
             WHEN ((from_status = 'scheduled'::jobengine.job_status) AND (to_status = 'running'::jobengine.job_status)) THEN 'job.started'::text
             WHEN ((from_status = 'scheduled'::jobengine.job_status) AND (to_status = 'cancelled'::jobengine.job_status)) THEN 'job.cancelled'::text
             WHEN ((from_status = 'running'::jobengine.job_status) AND (to_status = 'completed'::jobengine.job_status)) THEN 'job.completed'::text
             WHEN ((from_status = 'running'::jobengine.job_status) AND (to_status = 'failed'::jobengine.job_status)) THEN 'job.failed'::text
             WHEN ((from_status = 'running'::jobengine.job_status) AND (to_status = 'cancelled'::jobengine.job_status)) THEN 'job.cancelled'::text
             WHEN ((from_status = 'running'::jobengine.job_status) AND (to_status = 'scheduled'::jobengine.job_status)) THEN 'job.released'::text
             WHEN ((from_status = 'failed'::jobengine.job_status) AND (to_status = 'scheduled'::jobengine.job_status)) THEN 'job.retry_scheduled'::text
             ELSE NULL::text
         END AS "case";
END;

--
-- Name: validate_dependencies(bigint[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.validate_dependencies(ids bigint[]) RETURNS void
    LANGUAGE plpgsql
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET jit TO 'off'
    AS $$
DECLARE
    bad record;
    visited bigint[];
BEGIN
    -- Each dependency must exist, and keeps existing while this transaction
    -- runs: the key-share lock holds off a concurrent removal.
    SELECT j.id, d.dep INTO bad
    FROM jobengine.jobs j, unnest(j.depends_on) AS d(dep)
    WHERE j.id = ANY (ids)
      AND (d.dep IS NULL OR NOT EXISTS (SELECT 1 FROM jobengine.jobs x WHERE x.id = d.dep))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'jobengine: job % depends on job %, which does not exist', bad.id, coalesce(bad.dep::text, 'NULL')
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'jobs_depends_on_exists', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    PERFORM 1 FROM jobengine.jobs x
    WHERE x.id IN (SELECT d.dep FROM jobengine.jobs j, unnest(j.depends_on) AS d(dep) WHERE j.id = ANY (ids))
    FOR KEY SHARE;
    -- Walk the dependency graph from each changed job; reaching the start
    -- again is a cycle.
    WITH RECURSIVE walk(start, node) AS (
        SELECT j.id, d.dep FROM jobengine.jobs j, unnest(j.depends_on) AS d(dep) WHERE j.id = ANY (ids)
        UNION
        SELECT w.start, d.dep
        FROM walk w JOIN jobengine.jobs x ON x.id = w.node, unnest(x.depends_on) AS d(dep)
        WHERE w.node <> w.start
    )
    SELECT min(start) FILTER (WHERE node = start), array_agg(DISTINCT node)
    INTO bad.id, visited FROM walk;
    IF bad.id IS NOT NULL THEN
        RAISE EXCEPTION 'jobengine: job %: depends_on would create a dependency cycle', bad.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_acyclic', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    -- Under REPEATABLE READ or SERIALIZABLE the walk read a snapshot: locking
    -- what it read fails (serialization_failure, retry the transaction) if a
    -- concurrent change to those jobs committed after it.
    IF visited IS NOT NULL AND current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM 1 FROM jobengine.jobs x WHERE x.id = ANY (visited) FOR SHARE;
    END IF;
END
$$;

--
-- Name: verify_ledger_jobs(bigint[]); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.verify_ledger_jobs(p_ids bigint[]) RETURNS TABLE(job_id bigint, ledger_id bigint, problem text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET work_mem TO '64MB'
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_seqscan TO 'off'
    SET enable_hashagg TO 'off'
    SET max_parallel_workers_per_gather TO '0'
    AS $$
DECLARE
    v_chained_from bigint := (SELECT e.chained_from FROM jobengine.ledger_epoch e LIMIT 1);
    v_removed_before timestamptz := jobengine.ledger_removed_before();
BEGIN
    RETURN QUERY
    WITH r AS MATERIALIZED (
        SELECT l.job_id, l.id, l.hash, l.prev_hash, l.prev_at, l.note, l.event_type, l.occurred_at,
               l.hash = jobengine.ledger_hash(l.prev_hash, l.job_id, l.event_type, l.from_status, l.to_status,
                                              l.attempt, l.occurred_at, l.reason, l.actor, l.role, l.kind,
                                              l.queue, l.prev_at) AS hash_ok,
               lag(l.id) OVER w AS before_id, lag(l.hash) OVER w AS before_hash,
               lag(l.occurred_at) OVER w AS before_at, lead(l.id) OVER w IS NULL AS newest
        FROM jobengine.ledger l
        WHERE l.job_id = ANY (p_ids)
        WINDOW w AS (PARTITION BY l.job_id ORDER BY l.id)
    ), found AS (
        SELECT r.job_id, r.id, CASE
            WHEN r.hash IS NULL THEN
                CASE WHEN r.id >= v_chained_from THEN 'a row without a hash (written outside the engine)' END
            WHEN NOT r.hash_ok OR r.prev_hash IS NULL THEN 'a row was altered (its hash does not match what it records)'
            WHEN r.before_id IS NULL THEN
                CASE WHEN r.event_type = 'job.created' AND NOT r.note THEN
                          CASE WHEN r.prev_hash <> '' OR r.prev_at IS NOT NULL THEN 'the creation row was altered' END
                     WHEN r.prev_at IS NULL THEN 'a first row that is not the job''s creation (inserted outside the engine)'
                     WHEN r.prev_at >= v_removed_before THEN 'rows before this one were removed (not by retention)'
                END
            WHEN r.before_hash IS NULL THEN
                CASE WHEN r.prev_hash <> '' THEN 'the chain does not start where the rows from before chaining end' END
            WHEN r.prev_hash <> r.before_hash OR r.prev_at IS DISTINCT FROM r.before_at THEN
                'a row before this one was removed, altered or inserted outside the engine'
        END AS problem
        FROM r
    ), tails AS (
        -- The job row knows its newest hash: rows removed from the end show.
        SELECT j.id AS job_id, t.id, CASE
            WHEN j.ledger_head = '' THEN
                CASE WHEN t.hash IS NOT NULL THEN 'the job''s newest hash does not match its ledger' END
            WHEN t.id IS NULL THEN
                CASE WHEN j.updated_at >= v_removed_before
                     THEN 'all of its ledger rows were removed (not by retention)' END
            WHEN t.hash IS DISTINCT FROM j.ledger_head THEN 'its newest ledger rows were removed or altered'
        END AS problem
        FROM jobengine.jobs j
        LEFT JOIN (SELECT r.job_id, r.id, r.hash FROM r WHERE r.newest) t ON t.job_id = j.id
        WHERE j.id = ANY (p_ids)
    )
    SELECT f.job_id, f.id, f.problem FROM found f WHERE f.problem IS NOT NULL
    UNION ALL
    SELECT t.job_id, t.id, t.problem FROM tails t WHERE t.problem IS NOT NULL;
END
$$;

--
-- Name: verify_ledger_v1(bigint, bigint); Type: FUNCTION; Schema: jobengine; Owner: -
--

CREATE FUNCTION jobengine.verify_ledger_v1(p_from bigint, p_to bigint) RETURNS TABLE(job_id bigint, ledger_id bigint, problem text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET work_mem TO '64MB'
    SET enable_sort TO 'off'
    SET enable_bitmapscan TO 'off'
    SET enable_seqscan TO 'off'
    SET enable_hashagg TO 'off'
    SET max_parallel_workers_per_gather TO '0'
    AS $$
DECLARE
    v_chained_from bigint := (SELECT e.chained_from FROM jobengine.ledger_epoch e LIMIT 1);
    v_removed_before timestamptz := jobengine.ledger_removed_before();
    v_suspects bigint[];
    v_emptied bigint[];
    v_rows bigint;
BEGIN
    WITH agg AS (
        SELECT l.job_id, count(*) AS n,
               bool_and(CASE WHEN l.hash IS NULL THEN l.id < v_chained_from
                             ELSE l.prev_hash IS NOT NULL AND l.hash = jobengine.ledger_hash(
                                 l.prev_hash, l.job_id, l.event_type, l.from_status, l.to_status,
                                 l.attempt, l.occurred_at, l.reason, l.actor, l.role, l.kind,
                                 l.queue, l.prev_at) END) AS rows_ok,
               bit_xor(jobengine.ledger_link_key(l.prev_hash, CASE WHEN l.prev_hash = ''::bytea THEN NULL
                                                                   ELSE l.prev_at END)
                       # jobengine.ledger_link_key(l.hash, l.occurred_at))
                   FILTER (WHERE l.hash IS NOT NULL) AS links,
               max(ARRAY[l.id, jobengine.ledger_link_key(l.hash, l.occurred_at)])
                   FILTER (WHERE l.hash IS NOT NULL) AS newest
        FROM jobengine.ledger l
        WHERE l.job_id >= p_from AND l.job_id < p_to
        GROUP BY l.job_id
    ), judged AS (
        SELECT coalesce(a.job_id, j.id) AS job_id, CASE
            WHEN a.job_id IS NULL THEN
                CASE WHEN j.ledger_head <> ''::bytea AND j.updated_at >= v_removed_before THEN 'emptied' END
            WHEN NOT a.rows_ok THEN 'suspect'
            WHEN a.newest IS NULL THEN
                CASE WHEN j.ledger_head IS NOT NULL AND j.ledger_head <> ''::bytea THEN 'suspect' END
            WHEN a.links <> a.newest[2] THEN 'suspect'
            WHEN j.id IS NOT NULL AND a.newest[2] <> jobengine.ledger_link_key(j.ledger_head, j.updated_at)
                THEN 'suspect'
        END AS verdict, a.n
        FROM agg a
        FULL JOIN (SELECT * FROM jobengine.jobs WHERE id >= p_from AND id < p_to) j ON j.id = a.job_id
    )
    SELECT array_agg(d.job_id) FILTER (WHERE d.verdict = 'suspect'),
           array_agg(d.job_id) FILTER (WHERE d.verdict = 'emptied'),
           coalesce(sum(d.n), 0)
    INTO v_suspects, v_emptied, v_rows
    FROM judged d;

    RETURN QUERY SELECT e.id, NULL::bigint, 'all of its ledger rows were removed (not by retention)'
    FROM unnest(v_emptied) AS e(id);
    IF v_suspects IS NOT NULL THEN
        RETURN QUERY SELECT v.job_id, v.ledger_id, v.problem FROM jobengine.verify_ledger_jobs(v_suspects) v;
    END IF;
    RETURN QUERY SELECT NULL::bigint, v_rows, NULL::text;
END
$$;

--
-- Name: concurrency_limits; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.concurrency_limits (
    key text NOT NULL,
    max_running integer NOT NULL,
    changed_by text DEFAULT jobengine.current_actor() NOT NULL,
    changed_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL,
    CONSTRAINT concurrency_limits_key_valid CHECK (((key <> ''::text) AND (length(key) <= 200))),
    CONSTRAINT concurrency_limits_max_running_positive CHECK ((max_running > 0))
);

--
-- Name: TABLE concurrency_limits; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.concurrency_limits IS 'Never more than max_running jobs with this limit_key running at once, across all daemons.';

--
-- Name: ledger; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.ledger (
    id bigint NOT NULL,
    tx_id xid8 DEFAULT pg_current_xact_id() NOT NULL,
    job_id bigint NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    prev_at timestamp with time zone,
    attempt integer NOT NULL,
    from_status jobengine.job_status,
    to_status jobengine.job_status NOT NULL,
    note boolean DEFAULT false NOT NULL,
    event_type text NOT NULL,
    kind text NOT NULL,
    queue text NOT NULL,
    reason text,
    actor text NOT NULL,
    role text NOT NULL,
    hash bytea,
    prev_hash bytea,
    legacy_event_id uuid
)
PARTITION BY RANGE (occurred_at);

--
-- Name: TABLE ledger; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.ledger IS 'The audit ledger: one row per transition or note; read it as job_history and timeline_events.';

--
-- Name: job_history; Type: VIEW; Schema: jobengine; Owner: -
--

CREATE VIEW jobengine.job_history AS
 SELECT l.id,
    l.job_id,
    l.from_status,
    l.to_status,
    l.attempt,
    l.occurred_at,
    l.reason,
    l.actor,
    l.role
   FROM jobengine.ledger l
  WHERE (NOT l.note);

--
-- Name: VIEW job_history; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON VIEW jobengine.job_history IS 'One row per transition (the ledger without its notes).';

--
-- Name: jobs_id_seq; Type: SEQUENCE; Schema: jobengine; Owner: -
--

ALTER TABLE jobengine.jobs ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME jobengine.jobs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: ledger_id_seq; Type: SEQUENCE; Schema: jobengine; Owner: -
--

CREATE SEQUENCE jobengine.ledger_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

--
-- Name: ledger_id_seq; Type: SEQUENCE OWNED BY; Schema: jobengine; Owner: -
--

ALTER SEQUENCE jobengine.ledger_id_seq OWNED BY jobengine.ledger.id;

--
-- Name: ledger_default; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.ledger_default (
    id bigint DEFAULT nextval('jobengine.ledger_id_seq'::regclass) NOT NULL,
    tx_id xid8 DEFAULT pg_current_xact_id() NOT NULL,
    job_id bigint NOT NULL,
    occurred_at timestamp with time zone NOT NULL,
    prev_at timestamp with time zone,
    attempt integer NOT NULL,
    from_status jobengine.job_status,
    to_status jobengine.job_status NOT NULL,
    note boolean DEFAULT false NOT NULL,
    event_type text NOT NULL,
    kind text NOT NULL,
    queue text NOT NULL,
    reason text,
    actor text NOT NULL,
    role text NOT NULL,
    hash bytea,
    prev_hash bytea,
    legacy_event_id uuid
);

--
-- Name: ledger_epoch; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.ledger_epoch (
    only_row boolean DEFAULT true NOT NULL,
    chained_from bigint NOT NULL,
    migrated_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL,
    CONSTRAINT ledger_epoch_only_row_check CHECK (only_row)
);

--
-- Name: TABLE ledger_epoch; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.ledger_epoch IS 'Rows of jobengine.ledger with id < chained_from were written before hash chaining (0004).';

--
-- Name: queues; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.queues (
    name text NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    changed_by text DEFAULT jobengine.current_actor() NOT NULL,
    changed_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL,
    CONSTRAINT queues_name_valid CHECK (((name <> ''::text) AND (length(name) <= 200)))
);

--
-- Name: TABLE queues; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.queues IS 'Queues an operator paused or resumed (no row: not paused). A paused queue gets no new claims.';

--
-- Name: rate_limit_starts; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.rate_limit_starts (
    key text NOT NULL,
    started_at timestamp with time zone NOT NULL,
    job_id bigint NOT NULL
);

--
-- Name: TABLE rate_limit_starts; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.rate_limit_starts IS 'The starts of rate-limited keys within their window (the claim keeps it).';

--
-- Name: rate_limits; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.rate_limits (
    key text NOT NULL,
    max_starts integer NOT NULL,
    per interval NOT NULL,
    changed_by text DEFAULT jobengine.current_actor() NOT NULL,
    changed_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL,
    CONSTRAINT rate_limits_key_valid CHECK (((key <> ''::text) AND (length(key) <= 200))),
    CONSTRAINT rate_limits_max_starts_valid CHECK (((max_starts > 0) AND (max_starts <= 1000000))),
    CONSTRAINT rate_limits_per_valid CHECK (((per >= '00:00:00.001'::interval) AND (per <= '31 days'::interval)))
);

--
-- Name: TABLE rate_limits; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.rate_limits IS 'Never more than max_starts starts of jobs with this limit_key in any window of length per, across all daemons.';

--
-- Name: relay_cursor; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.relay_cursor (
    only_row boolean DEFAULT true NOT NULL,
    tx_id xid8 NOT NULL,
    id bigint NOT NULL,
    relayed_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL,
    CONSTRAINT relay_cursor_only_row_check CHECK (only_row)
);

--
-- Name: TABLE relay_cursor; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.relay_cursor IS 'The newest ledger row (tx_id, id) whose notifications relay_v1 has sent.';

--
-- Name: retention_log_id_seq; Type: SEQUENCE; Schema: jobengine; Owner: -
--

ALTER TABLE jobengine.retention_log ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME jobengine.retention_log_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: schedules; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.schedules (
    name text NOT NULL,
    cron text,
    every interval,
    kind text NOT NULL,
    queue text DEFAULT 'default'::text NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    limit_key text,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    last_tick timestamp with time zone,
    last_job_id bigint,
    created_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL,
    changed_by text DEFAULT jobengine.current_actor() NOT NULL,
    changed_at timestamp with time zone DEFAULT statement_timestamp() NOT NULL
);

--
-- Name: TABLE schedules; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON TABLE jobengine.schedules IS 'Periodic jobs: each due tick of cron (in timezone) or every creates one job, however many daemons run.';

--
-- Name: schema_migrations; Type: TABLE; Schema: jobengine; Owner: -
--

CREATE TABLE jobengine.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: timeline_events; Type: VIEW; Schema: jobengine; Owner: -
--

CREATE VIEW jobengine.timeline_events AS
 SELECT l.id,
    jobengine.ledger_event_id(l.id, l.legacy_event_id) AS event_id,
    l.job_id,
    l.event_type,
    l.occurred_at,
    jobengine.envelope(jobengine.ledger_event_id(l.id, l.legacy_event_id), l.event_type, l.occurred_at, l.job_id, l.kind, l.queue,
        CASE
            WHEN l.note THEN l.to_status
            ELSE l.from_status
        END, l.to_status, l.attempt, l.actor, l.reason) AS envelope,
    l.tx_id
   FROM jobengine.ledger l;

--
-- Name: VIEW timeline_events; Type: COMMENT; Schema: jobengine; Owner: -
--

COMMENT ON VIEW jobengine.timeline_events IS 'One event per transition or note, with its envelope (built when read).';

--
-- Name: ledger_default; Type: TABLE ATTACH; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.ledger ATTACH PARTITION jobengine.ledger_default DEFAULT;

--
-- Name: ledger id; Type: DEFAULT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.ledger ALTER COLUMN id SET DEFAULT nextval('jobengine.ledger_id_seq'::regclass);

--
-- Name: concurrency_limits concurrency_limits_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.concurrency_limits
    ADD CONSTRAINT concurrency_limits_pkey PRIMARY KEY (key);

--
-- Name: jobs jobs_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

--
-- Name: ledger_epoch ledger_epoch_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.ledger_epoch
    ADD CONSTRAINT ledger_epoch_pkey PRIMARY KEY (only_row);

--
-- Name: ledger_seals ledger_seals_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.ledger_seals
    ADD CONSTRAINT ledger_seals_pkey PRIMARY KEY (day);

--
-- Name: queues queues_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.queues
    ADD CONSTRAINT queues_pkey PRIMARY KEY (name);

--
-- Name: rate_limits rate_limits_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.rate_limits
    ADD CONSTRAINT rate_limits_pkey PRIMARY KEY (key);

--
-- Name: relay_cursor relay_cursor_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.relay_cursor
    ADD CONSTRAINT relay_cursor_pkey PRIMARY KEY (only_row);

--
-- Name: retention_log retention_log_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.retention_log
    ADD CONSTRAINT retention_log_pkey PRIMARY KEY (id);

--
-- Name: schedules schedules_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.schedules
    ADD CONSTRAINT schedules_pkey PRIMARY KEY (name);

--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

--
-- Name: settings settings_pkey; Type: CONSTRAINT; Schema: jobengine; Owner: -
--

ALTER TABLE ONLY jobengine.settings
    ADD CONSTRAINT settings_pkey PRIMARY KEY (name);

--
-- Name: jobs_claim_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_claim_idx ON jobengine.jobs USING btree (claim_order, id) WHERE ((status = 'scheduled'::jobengine.job_status) AND (limit_key IS NULL));

--
-- Name: jobs_claim_keyed_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_claim_keyed_idx ON jobengine.jobs USING btree (limit_key, claim_order, id) WHERE ((status = 'scheduled'::jobengine.job_status) AND (limit_key IS NOT NULL));

--
-- Name: jobs_failed_cancelled_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_failed_cancelled_idx ON jobengine.jobs USING btree (status, id) WHERE (status = ANY (ARRAY['failed'::jobengine.job_status, 'cancelled'::jobengine.job_status]));

--
-- Name: jobs_finished_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_finished_idx ON jobengine.jobs USING btree (finished_at) WHERE (status = ANY (ARRAY['completed'::jobengine.job_status, 'cancelled'::jobengine.job_status, 'failed'::jobengine.job_status]));

--
-- Name: jobs_idempotency_key_unique; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE UNIQUE INDEX jobs_idempotency_key_unique ON jobengine.jobs USING btree (idempotency_key) WHERE (idempotency_key IS NOT NULL);

--
-- Name: jobs_lease_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_lease_idx ON jobengine.jobs USING btree (lease_expires_at) WHERE (status = 'running'::jobengine.job_status);

--
-- Name: jobs_pending_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_pending_idx ON jobengine.jobs USING btree (claim_order, id) WHERE ((status = 'pending'::jobengine.job_status) AND (limit_key IS NULL));

--
-- Name: jobs_pending_keyed_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_pending_keyed_idx ON jobengine.jobs USING btree (limit_key, claim_order, id) WHERE ((status = 'pending'::jobengine.job_status) AND (limit_key IS NOT NULL));

--
-- Name: jobs_retryable_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_retryable_idx ON jobengine.jobs USING btree (id) WHERE ((status = 'failed'::jobengine.job_status) AND ((attempt - released) <= max_retries));

--
-- Name: jobs_running_key_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_running_key_idx ON jobengine.jobs USING btree (limit_key) WHERE ((status = 'running'::jobengine.job_status) AND (limit_key IS NOT NULL));

--
-- Name: jobs_waiting_deps_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_waiting_deps_idx ON jobengine.jobs USING gin (depends_on) WITH (fastupdate=off) WHERE ((status = 'pending'::jobengine.job_status) AND (cardinality(depends_on) > 0));

--
-- Name: jobs_waiting_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_waiting_idx ON jobengine.jobs USING btree (id) WHERE ((status = 'pending'::jobengine.job_status) AND (depends_on <> '{}'::bigint[]));

--
-- Name: jobs_waiting_keyed_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX jobs_waiting_keyed_idx ON jobengine.jobs USING btree (limit_key, claim_order, id) WHERE ((status = ANY (ARRAY['pending'::jobengine.job_status, 'scheduled'::jobengine.job_status])) AND (limit_key IS NOT NULL));

--
-- Name: ledger_cursor_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX ledger_cursor_idx ON ONLY jobengine.ledger USING btree (tx_id, id);

--
-- Name: ledger_job_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX ledger_job_idx ON ONLY jobengine.ledger USING btree (job_id, id);

--
-- Name: ledger_default_job_id_id_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX ledger_default_job_id_id_idx ON jobengine.ledger_default USING btree (job_id, id);

--
-- Name: ledger_default_tx_id_id_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX ledger_default_tx_id_id_idx ON jobengine.ledger_default USING btree (tx_id, id);

--
-- Name: rate_limit_starts_key_idx; Type: INDEX; Schema: jobengine; Owner: -
--

CREATE INDEX rate_limit_starts_key_idx ON jobengine.rate_limit_starts USING btree (key, started_at);

--
-- Name: ledger_default_job_id_id_idx; Type: INDEX ATTACH; Schema: jobengine; Owner: -
--

ALTER INDEX jobengine.ledger_job_idx ATTACH PARTITION jobengine.ledger_default_job_id_id_idx;

--
-- Name: ledger_default_tx_id_id_idx; Type: INDEX ATTACH; Schema: jobengine; Owner: -
--

ALTER INDEX jobengine.ledger_cursor_idx ATTACH PARTITION jobengine.ledger_default_tx_id_id_idx;

--
-- Name: concurrency_limits concurrency_limits_stamp; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER concurrency_limits_stamp BEFORE INSERT OR UPDATE ON jobengine.concurrency_limits FOR EACH ROW EXECUTE FUNCTION jobengine.scheduling_stamp();

--
-- Name: concurrency_limits concurrency_limits_wake; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER concurrency_limits_wake AFTER INSERT OR DELETE OR UPDATE ON jobengine.concurrency_limits FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

--
-- Name: jobs jobs_chain_insert; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_chain_insert BEFORE INSERT ON jobengine.jobs FOR EACH ROW EXECUTE FUNCTION jobengine.jobs_chain_insert();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_chain_insert;

--
-- Name: jobs jobs_claim_order; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_claim_order BEFORE UPDATE OF run_at, priority, claim_order, limit_key, depends_on ON jobengine.jobs FOR EACH ROW EXECUTE FUNCTION jobengine.jobs_claim_order_update();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_claim_order;

--
-- Name: jobs jobs_guard_columns; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_guard_columns BEFORE UPDATE OF attempt, released, status_reason, status_actor, status_role, result, last_error, created_at, scheduled_at, started_at, finished_at, updated_at, lease_owner, lease_expires_at, ledger_head ON jobengine.jobs FOR EACH ROW WHEN ((NOT (old.status IS DISTINCT FROM new.status))) EXECUTE FUNCTION jobengine.jobs_guard_columns();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_guard_columns;

--
-- Name: jobs jobs_guard_transition; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_guard_transition BEFORE UPDATE OF status ON jobengine.jobs FOR EACH ROW WHEN ((old.status IS DISTINCT FROM new.status)) EXECUTE FUNCTION jobengine.jobs_guard_transition();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_guard_transition;

--
-- Name: jobs jobs_no_delete; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_no_delete BEFORE DELETE ON jobengine.jobs FOR EACH STATEMENT EXECUTE FUNCTION jobengine.jobs_guard_delete();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_no_delete;

--
-- Name: jobs jobs_no_truncate; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_no_truncate BEFORE TRUNCATE ON jobengine.jobs FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_no_truncate;

--
-- Name: jobs jobs_record_insert; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_record_insert AFTER INSERT ON jobengine.jobs REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION jobengine.jobs_record_insert();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_record_insert;

--
-- Name: jobs jobs_record_update; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_record_update AFTER UPDATE ON jobengine.jobs REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION jobengine.jobs_record_update();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_record_update;

--
-- Name: jobs jobs_refuse_id_change; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_refuse_id_change BEFORE UPDATE OF id ON jobengine.jobs FOR EACH ROW WHEN ((old.id IS DISTINCT FROM new.id)) EXECUTE FUNCTION jobengine.jobs_refuse_id_change();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_refuse_id_change;

--
-- Name: jobs jobs_validate_content; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_validate_content BEFORE UPDATE OF kind, queue, payload, retry_policy ON jobengine.jobs FOR EACH ROW EXECUTE FUNCTION jobengine.jobs_validate_content();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_validate_content;

--
-- Name: jobs jobs_validate_dependencies; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER jobs_validate_dependencies AFTER UPDATE OF depends_on ON jobengine.jobs FOR EACH ROW WHEN ((old.depends_on IS DISTINCT FROM new.depends_on)) EXECUTE FUNCTION jobengine.jobs_validate_dependencies();

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_validate_dependencies;

--
-- Name: ledger ledger_append_only; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER ledger_append_only BEFORE DELETE OR UPDATE ON jobengine.ledger FOR EACH ROW EXECUTE FUNCTION jobengine.ledger_guard();

ALTER TABLE jobengine.ledger ENABLE ALWAYS TRIGGER ledger_append_only;

--
-- Name: ledger_epoch ledger_epoch_fixed; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER ledger_epoch_fixed BEFORE DELETE OR UPDATE ON jobengine.ledger_epoch FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.ledger_epoch ENABLE ALWAYS TRIGGER ledger_epoch_fixed;

--
-- Name: ledger_epoch ledger_epoch_no_truncate; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER ledger_epoch_no_truncate BEFORE TRUNCATE ON jobengine.ledger_epoch FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.ledger_epoch ENABLE ALWAYS TRIGGER ledger_epoch_no_truncate;

--
-- Name: ledger ledger_no_truncate; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON jobengine.ledger FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.ledger ENABLE ALWAYS TRIGGER ledger_no_truncate;

--
-- Name: ledger_default ledger_no_truncate; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON jobengine.ledger_default FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.ledger_default ENABLE ALWAYS TRIGGER ledger_no_truncate;

--
-- Name: ledger_seals ledger_seals_append_only; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER ledger_seals_append_only BEFORE DELETE OR UPDATE ON jobengine.ledger_seals FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.ledger_seals ENABLE ALWAYS TRIGGER ledger_seals_append_only;

--
-- Name: ledger_seals ledger_seals_no_truncate; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER ledger_seals_no_truncate BEFORE TRUNCATE ON jobengine.ledger_seals FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.ledger_seals ENABLE ALWAYS TRIGGER ledger_seals_no_truncate;

--
-- Name: queues queues_stamp; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER queues_stamp BEFORE INSERT OR UPDATE ON jobengine.queues FOR EACH ROW EXECUTE FUNCTION jobengine.scheduling_stamp();

--
-- Name: queues queues_wake_delete; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER queues_wake_delete AFTER DELETE ON jobengine.queues REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

--
-- Name: queues queues_wake_insert; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER queues_wake_insert AFTER INSERT ON jobengine.queues REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

--
-- Name: queues queues_wake_update; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER queues_wake_update AFTER UPDATE ON jobengine.queues REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

--
-- Name: rate_limits rate_limits_stamp; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER rate_limits_stamp BEFORE INSERT OR UPDATE ON jobengine.rate_limits FOR EACH ROW EXECUTE FUNCTION jobengine.scheduling_stamp();

--
-- Name: rate_limits rate_limits_wake; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER rate_limits_wake AFTER INSERT OR DELETE OR UPDATE ON jobengine.rate_limits FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

--
-- Name: retention_log retention_log_append_only; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER retention_log_append_only BEFORE DELETE OR UPDATE ON jobengine.retention_log FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.retention_log ENABLE ALWAYS TRIGGER retention_log_append_only;

--
-- Name: retention_log retention_log_no_truncate; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER retention_log_no_truncate BEFORE TRUNCATE ON jobengine.retention_log FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();

ALTER TABLE jobengine.retention_log ENABLE ALWAYS TRIGGER retention_log_no_truncate;

--
-- Name: schedules schedules_check; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER schedules_check BEFORE INSERT OR UPDATE ON jobengine.schedules FOR EACH ROW EXECUTE FUNCTION jobengine.schedules_check();

--
-- Name: schedules schedules_wake; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER schedules_wake AFTER INSERT OR DELETE OR UPDATE ON jobengine.schedules FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

--
-- Name: settings settings_check; Type: TRIGGER; Schema: jobengine; Owner: -
--

CREATE TRIGGER settings_check BEFORE INSERT OR UPDATE ON jobengine.settings FOR EACH ROW EXECUTE FUNCTION jobengine.settings_check();

ALTER TABLE jobengine.settings ENABLE ALWAYS TRIGGER settings_check;

--
-- Name: FUNCTION add_timeline_note(p_job_ids bigint[], p_event_type text, p_reason text); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.add_timeline_note(p_job_ids bigint[], p_event_type text, p_reason text) FROM PUBLIC;

--
-- Name: FUNCTION cancel_v1(p_ids bigint[], p_reason text); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.cancel_v1(p_ids bigint[], p_reason text) FROM PUBLIC;

--
-- Name: FUNCTION cascade_v1(p_limit integer); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.cascade_v1(p_limit integer) FROM PUBLIC;

--
-- Name: FUNCTION claim_jobs(p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval, p_now timestamp with time zone, p_sealed boolean); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.claim_jobs(p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval, p_now timestamp with time zone, p_sealed boolean) FROM PUBLIC;

--
-- Name: FUNCTION claim_v1(p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval, p_sealed boolean); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.claim_v1(p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval, p_sealed boolean) FROM PUBLIC;

--
-- Name: FUNCTION dag_changes_v1(p_tx xid8, p_id bigint, p_after timestamp with time zone, p_limit integer); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.dag_changes_v1(p_tx xid8, p_id bigint, p_after timestamp with time zone, p_limit integer) FROM PUBLIC;

--
-- Name: FUNCTION dag_dependents(p_ended bigint[], p_created bigint[]); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.dag_dependents(p_ended bigint[], p_created bigint[]) FROM PUBLIC;

--
-- Name: FUNCTION dag_moves_v1(p_queues text[], p_ended bigint[], p_created bigint[], p_limit integer, p_sealed boolean); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.dag_moves_v1(p_queues text[], p_ended bigint[], p_created bigint[], p_limit integer, p_sealed boolean) FROM PUBLIC;

--
-- Name: FUNCTION fail_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_reasons text[], p_errors text[], p_retry_delays double precision[]); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.fail_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_reasons text[], p_errors text[], p_retry_delays double precision[]) FROM PUBLIC;

--
-- Name: FUNCTION finish_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_results text[]); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.finish_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_results text[]) FROM PUBLIC;

--
-- Name: FUNCTION ledger_analyze_v1(); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.ledger_analyze_v1() FROM PUBLIC;

--
-- Name: FUNCTION ledger_drop_v1(p_before timestamp with time zone, p_dry_run boolean); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.ledger_drop_v1(p_before timestamp with time zone, p_dry_run boolean) FROM PUBLIC;

--
-- Name: FUNCTION ledger_prepare_v1(p_days_ahead integer, p_from date); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.ledger_prepare_v1(p_days_ahead integer, p_from date) FROM PUBLIC;

--
-- Name: FUNCTION promote_v1(p_queues text[], p_limit integer, p_sealed boolean); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.promote_v1(p_queues text[], p_limit integer, p_sealed boolean) FROM PUBLIC;

--
-- Name: FUNCTION purge_jobs_v1(p_before timestamp with time zone, p_limit integer, p_dry_run boolean); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.purge_jobs_v1(p_before timestamp with time zone, p_limit integer, p_dry_run boolean) FROM PUBLIC;

--
-- Name: FUNCTION reap_candidates_v1(p_limit integer); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.reap_candidates_v1(p_limit integer) FROM PUBLIC;

--
-- Name: FUNCTION reap_v1(p_ids bigint[], p_attempts integer[], p_owners text[], p_retry_delays double precision[]); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.reap_v1(p_ids bigint[], p_attempts integer[], p_owners text[], p_retry_delays double precision[]) FROM PUBLIC;

--
-- Name: FUNCTION relay_v1(p_limit integer); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.relay_v1(p_limit integer) FROM PUBLIC;

--
-- Name: FUNCTION release_v1(p_owner text, p_ids bigint[], p_attempts integer[]); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.release_v1(p_owner text, p_ids bigint[], p_attempts integer[]) FROM PUBLIC;

--
-- Name: FUNCTION renew_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_lease_ttl interval); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.renew_v1(p_owner text, p_ids bigint[], p_attempts integer[], p_lease_ttl interval) FROM PUBLIC;

--
-- Name: FUNCTION retention_record_v1(p_dry_run boolean, p_finished_jobs interval, p_audit interval, p_jobs_removed bigint, p_jobs_finished_before timestamp with time zone, p_jobs_oldest timestamp with time zone, p_jobs_newest timestamp with time zone, p_ledger_rows_removed bigint, p_partitions_dropped jsonb, p_ledger_removed_before timestamp with time zone, p_partitions_created integer, p_duration interval); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.retention_record_v1(p_dry_run boolean, p_finished_jobs interval, p_audit interval, p_jobs_removed bigint, p_jobs_finished_before timestamp with time zone, p_jobs_oldest timestamp with time zone, p_jobs_newest timestamp with time zone, p_ledger_rows_removed bigint, p_partitions_dropped jsonb, p_ledger_removed_before timestamp with time zone, p_partitions_created integer, p_duration interval) FROM PUBLIC;

--
-- Name: FUNCTION retry_candidates_v1(p_limit integer); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.retry_candidates_v1(p_limit integer) FROM PUBLIC;

--
-- Name: FUNCTION retry_v1(p_ids bigint[], p_delays double precision[], p_reason text); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.retry_v1(p_ids bigint[], p_delays double precision[], p_reason text) FROM PUBLIC;

--
-- Name: FUNCTION schedule_retries(p_ids bigint[], p_delays double precision[], p_reason text); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.schedule_retries(p_ids bigint[], p_delays double precision[], p_reason text) FROM PUBLIC;

--
-- Name: FUNCTION schedule_tick_v1(p_name text, p_tick timestamp with time zone, p_missed integer); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.schedule_tick_v1(p_name text, p_tick timestamp with time zone, p_missed integer) FROM PUBLIC;

--
-- Name: FUNCTION verify_ledger_jobs(p_ids bigint[]); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.verify_ledger_jobs(p_ids bigint[]) FROM PUBLIC;

--
-- Name: FUNCTION verify_ledger_v1(p_from bigint, p_to bigint); Type: ACL; Schema: jobengine; Owner: -
--

REVOKE ALL ON FUNCTION jobengine.verify_ledger_v1(p_from bigint, p_to bigint) FROM PUBLIC;

--
-- PostgreSQL database dump complete
--

-- ===== data: the owner's settings =====

--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Data for Name: settings; Type: TABLE DATA; Schema: jobengine; Owner: -
--

INSERT INTO jobengine.settings VALUES ('max_payload_bytes', '1048576');
INSERT INTO jobengine.settings VALUES ('max_lease_ttl', '1 hour');
INSERT INTO jobengine.settings VALUES ('notify_mode', 'direct');
INSERT INTO jobengine.settings VALUES ('priority_aging', '1 minute');

--
-- PostgreSQL database dump complete
--

-- ===== data: where the ledger's chaining and relaying begin =====

INSERT INTO jobengine.ledger_epoch (chained_from) VALUES (1);
INSERT INTO jobengine.relay_cursor (tx_id, id) VALUES (pg_current_xact_id(), 9223372036854775807);

-- ===== bookkeeping: the migrations this schema equals, so `jobengine migrate` finds nothing to do =====

INSERT INTO jobengine.schema_migrations (version, name, checksum) VALUES
    (1, 'lifecycle', '8618960b3a0a93b2322701929ebb939acba318dde5f31e372fcb492881d26d7d'),
    (2, 'claim', '86d63803a175883f4540732205a839bba3f261f4b8751194f6a5cd3efd1e7753'),
    (3, 'guarantees', '27211b450eedd1f26736df466bb8260d53fc4f01324b14269708a1d1114bfec5'),
    (4, 'ledger', 'cd1ee12508dab55da6154eef8d6a222780ed4d0ab36d8bc7b245829d2497461f'),
    (5, 'scheduling', 'e2cea6fd40364e71ed5da3eea03e99416b39e6f8b21a09557cb9700fa4c212a0'),
    (6, 'poolers', 'c632b430b56b671b750a8e6da5a70382607e62e11bee80389c4aeb814f92349e'),
    (7, 'ledger_seals', 'c1308c32461d95b9ad988b12355b7e29c20911b5c039df413c689587f7e51cf3'),
    (8, 'write_path', '458957f89e5cf9e6e39b4568b91629836abaa3a7f0a982c2d7ec779049f039d9'),
    (9, 'held_at_scale', '896d0660c6c3b17ab6d566671583b74ca0a3da56d132a6ac69187e70aeafd714'),
    (10, 'retention_at_scale', 'ca3605125f15490ebd7ac1c13a120a248bdcf4a60e30c1e8b69a5809f42fe217'),
    (11, 'claim_cost', '3c33725fbd691428280c61127c205925b0d180b1b4d5d73d35dffebb8358e839'),
    (12, 'write_path_plans', '6323066efdc4715a1ec70f70f55c4650a4ec499e6cf4b8e07eb0857a25bbb66f'),
    (13, 'plans_once', 'b91c33e37bb16b7af842b45350be7b29dd4290ee9df0d95b89c91c02ceb929d2'),
    (14, 'dag_passes', 'd2c4b5c85b06ec9fe84a2d04ca74442d3328c9dca7000f34b9b9512ba807193f');
