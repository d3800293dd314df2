-- jobengine 0001: the job lifecycle, guarded and recorded by the database itself.
--
-- Every status change, whoever makes it (the daemon, the API, or a hand-written
-- UPDATE), is checked against the transition table and writes one
-- job_history row, one timeline_events row and one NOTIFY on jobengine_events,
-- in the same transaction. The audit writing is done per *statement* (AFTER
-- triggers with transition tables), because a daemon moves jobs in batches and
-- per-row inserts are where job engines lose their speed.

CREATE SCHEMA IF NOT EXISTS jobengine;

CREATE TYPE jobengine.job_status AS ENUM
    ('pending', 'scheduled', 'running', 'completed', 'failed', 'cancelled');

-- The transition table. NULL as from_status is the insert. Returns the
-- timeline event type, or NULL when the transition is not allowed. Kept as an
-- IMMUTABLE CASE so the per-row guard costs no table lookup.
CREATE FUNCTION jobengine.transition_event_type(
    from_status jobengine.job_status, to_status jobengine.job_status
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN from_status IS NULL AND to_status = 'pending' THEN 'job.created'
        WHEN from_status = 'pending' AND to_status = 'scheduled' THEN 'job.scheduled'
        WHEN from_status = 'pending' AND to_status = 'cancelled' THEN 'job.cancelled'
        WHEN from_status = 'scheduled' AND to_status = 'running' THEN 'job.started'
        WHEN from_status = 'scheduled' AND to_status = 'cancelled' THEN 'job.cancelled'
        WHEN from_status = 'running' AND to_status = 'completed' THEN 'job.completed'
        WHEN from_status = 'running' AND to_status = 'failed' THEN 'job.failed'
        WHEN from_status = 'running' AND to_status = 'cancelled' THEN 'job.cancelled'
        WHEN from_status = 'running' AND to_status = 'scheduled' THEN 'job.released'
        WHEN from_status = 'failed' AND to_status = 'scheduled' THEN 'job.retry_scheduled'
    END
$$;

-- The reason recorded when the writer gave none (a hand-written UPDATE, say).
CREATE FUNCTION jobengine.default_reason(
    from_status jobengine.job_status, to_status jobengine.job_status
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN from_status IS NULL THEN 'created'
        WHEN to_status = 'cancelled' THEN 'cancelled_by_user'
        WHEN from_status = 'pending' THEN 'ready'
        WHEN to_status = 'running' THEN 'claimed'
        WHEN to_status = 'completed' THEN 'completed'
        WHEN to_status = 'failed' THEN 'error'
        WHEN from_status = 'running' AND to_status = 'scheduled' THEN 'released'
        WHEN from_status = 'failed' THEN 'retry'
    END
$$;

-- Who made a change: the daemon, API and CLI set jobengine.actor on their
-- connections; anything else (psql, an app's driver) is recorded as 'sql'.
CREATE FUNCTION jobengine.current_actor() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(nullif(current_setting('jobengine.actor', true), ''), 'sql')
$$;

-- Whether the current role may only cancel jobs: a member of jobengine_app
-- that is not also jobengine_daemon (see `jobengine migrate --roles`).
-- Superusers are members of every role, so never restricted.
CREATE FUNCTION jobengine.may_only_cancel() RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT CASE
        WHEN to_regrole('jobengine_app') IS NULL OR to_regrole('jobengine_daemon') IS NULL
            THEN false
        ELSE pg_has_role(current_user, 'jobengine_app', 'MEMBER')
             AND NOT pg_has_role(current_user, 'jobengine_daemon', 'MEMBER')
    END
$$;

-- The payload size limit in bytes: ALTER DATABASE ... SET
-- jobengine.max_payload_bytes = ... changes it; 1 MiB when unset.
CREATE FUNCTION jobengine.max_payload_bytes() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(nullif(current_setting('jobengine.max_payload_bytes', true), '')::bigint, 1048576)
$$;

CREATE TABLE jobengine.jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    queue text NOT NULL DEFAULT 'default',
    payload jsonb NOT NULL DEFAULT '{}',
    status jobengine.job_status NOT NULL DEFAULT 'pending',
    priority integer NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    depends_on bigint[] NOT NULL DEFAULT '{}',
    attempt integer NOT NULL DEFAULT 0,
    -- attempts given back at shutdown: counted in attempt, not against max_retries
    released integer NOT NULL DEFAULT 0,
    max_retries integer NOT NULL DEFAULT 3,
    retry_policy jsonb,
    timeout interval,
    requires_network boolean NOT NULL DEFAULT false,
    idempotency_key text,
    lease_owner text,
    lease_expires_at timestamptz,
    result jsonb,
    last_error text,
    -- why the job entered its current status (the reason of its last history row)
    status_reason text NOT NULL DEFAULT 'created',
    created_at timestamptz NOT NULL DEFAULT now(),
    scheduled_at timestamptz,
    started_at timestamptz,
    finished_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jobs_payload_must_be_a_json_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT jobs_max_retries_must_not_be_negative CHECK (max_retries >= 0),
    CONSTRAINT jobs_timeout_must_be_positive CHECK (timeout IS NULL OR timeout > interval '0'),
    CONSTRAINT jobs_retry_policy_must_be_an_object_or_null
        CHECK (retry_policy IS NULL OR jsonb_typeof(retry_policy) = 'object'),
    CONSTRAINT jobs_status_reason_at_most_200_chars CHECK (length(status_reason) <= 200)
);

-- Claiming: only runnable rows are indexed, so the index stays small and the
-- claim stays an index scan however many finished jobs the table holds.
-- Queue and kind are filters, not leading columns: the scan then runs in
-- claim order and stops at the batch size, instead of sorting the backlog.
CREATE INDEX jobs_claim_idx ON jobengine.jobs (priority DESC, run_at, id)
    WHERE status = 'scheduled';
CREATE INDEX jobs_pending_idx ON jobengine.jobs (priority DESC, run_at, id)
    WHERE status = 'pending';
CREATE INDEX jobs_lease_idx ON jobengine.jobs (lease_expires_at)
    WHERE status = 'running';
-- Failed jobs that still have retries left (normally empty: the daemon
-- re-schedules in the same transaction that records the failure).
CREATE INDEX jobs_retryable_idx ON jobengine.jobs (id)
    WHERE status = 'failed' AND attempt - released <= max_retries;
-- Jobs waiting on dependencies, for DAG promotion and failure cascades.
CREATE INDEX jobs_waiting_idx ON jobengine.jobs (id)
    WHERE status = 'pending' AND depends_on <> '{}';
-- A second job with the same idempotency key is refused. Partial, so the
-- many jobs without a key cost this index nothing on every status change.
CREATE UNIQUE INDEX jobs_idempotency_key_unique ON jobengine.jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Operator listings of jobs that went wrong, paged by id. (Active statuses
-- have their partial indexes above; completed jobs are most of the table, so
-- a primary-key scan finds them.)
CREATE INDEX jobs_failed_cancelled_idx ON jobengine.jobs (status, id)
    WHERE status IN ('failed', 'cancelled');

CREATE TABLE jobengine.job_history (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id bigint NOT NULL,
    from_status jobengine.job_status,
    to_status jobengine.job_status NOT NULL,
    attempt integer NOT NULL,
    occurred_at timestamptz NOT NULL,
    reason text,
    actor text NOT NULL
);
CREATE INDEX job_history_job_idx ON jobengine.job_history (job_id, id);

CREATE TABLE jobengine.timeline_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id uuid NOT NULL,
    job_id bigint NOT NULL,
    event_type text NOT NULL,
    occurred_at timestamptz NOT NULL,
    envelope jsonb NOT NULL,
    -- The writing transaction. Readers page by (tx_id, id) and stop below the
    -- oldest transaction still open, so an event committed late by a slow
    -- transaction is never skipped (ids alone are assigned before commit).
    tx_id xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX timeline_events_job_idx ON jobengine.timeline_events (job_id, id);
CREATE INDEX timeline_events_cursor_idx ON jobengine.timeline_events (tx_id, id);

-- ---------------------------------------------------------------------------
-- Validation of new and changed rows, one statement at a time.
-- ---------------------------------------------------------------------------

-- Whether a job's content is acceptable. Cheap enough to run on every row of
-- a bulk insert; when it says no, raise_invalid_job says exactly why.
CREATE FUNCTION jobengine.job_content_ok(
    kind text, queue text, payload jsonb, retry_policy jsonb, max_bytes bigint
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT kind ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$'
       AND queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$'
       -- the JSON text's size, as a client sends it (not the compressed datum)
       AND octet_length(payload::text) <= max_bytes
       AND (retry_policy IS NULL OR (
            jsonb_typeof(retry_policy) = 'object'
            AND retry_policy - ARRAY['strategy', 'base_delay', 'max_delay', 'jitter'] = '{}'
            AND coalesce(retry_policy ->> 'strategy', 'exponential') IN ('fixed', 'linear', 'exponential')
            AND coalesce(jsonb_typeof(retry_policy -> 'strategy'), 'string') = 'string'
            AND coalesce(jsonb_typeof(retry_policy -> 'base_delay'), 'number') = 'number'
            AND coalesce(jsonb_typeof(retry_policy -> 'max_delay'), 'number') = 'number'
            AND coalesce(jsonb_typeof(retry_policy -> 'jitter'), 'boolean') = 'boolean'
            AND coalesce((retry_policy ->> 'base_delay')::numeric, 0) >= 0
            AND coalesce((retry_policy ->> 'max_delay')::numeric, 0) >= 0))
$$;

-- Raise the error that says what is wrong with a job job_content_ok refused.
CREATE FUNCTION jobengine.raise_invalid_job(
    id bigint, kind text, queue text, payload jsonb, retry_policy jsonb, max_bytes bigint
) RETURNS void
LANGUAGE plpgsql
AS $$
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
$$;

-- Refuse a dependency on a job that does not exist, and any dependency cycle
-- through the jobs `ids`.
CREATE FUNCTION jobengine.validate_dependencies(ids bigint[]) RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    bad record;
BEGIN
    SELECT j.id, d.dep INTO bad
    FROM jobengine.jobs j, unnest(j.depends_on) AS d(dep)
    WHERE j.id = ANY (ids)
      AND (d.dep IS NULL OR NOT EXISTS (SELECT 1 FROM jobengine.jobs x WHERE x.id = d.dep))
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'jobengine: job % depends on job %, which does not exist', bad.id, coalesce(bad.dep::text, 'NULL')
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'jobs_depends_on_exists', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    -- Walk the dependency graph from each changed job; reaching the start
    -- again is a cycle. UNION (not UNION ALL) stops the walk on a cycle that
    -- does not pass through the start.
    WITH RECURSIVE walk(start, node) AS (
        SELECT j.id, d.dep FROM jobengine.jobs j, unnest(j.depends_on) AS d(dep) WHERE j.id = ANY (ids)
        UNION
        SELECT w.start, d.dep
        FROM walk w JOIN jobengine.jobs x ON x.id = w.node, unnest(x.depends_on) AS d(dep)
        WHERE w.node <> w.start
    )
    SELECT start INTO bad FROM walk WHERE node = start LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'jobengine: job %: depends_on would create a dependency cycle', bad.start
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_depends_on_acyclic', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------
-- The guard: one cheap per-row check that a status change is allowed, and
-- the bookkeeping that follows from it.
-- ---------------------------------------------------------------------------

CREATE FUNCTION jobengine.jobs_guard_transition() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF jobengine.transition_event_type(OLD.status, NEW.status) IS NULL
       -- The claim (jobengine.claim_jobs) takes a due job straight from
       -- pending to running in one statement; the recorder writes both steps
       -- it takes, pending -> scheduled -> running, so the history is still a
       -- path through the table. Only with the claim's flag set.
       AND NOT (OLD.status = 'pending' AND NEW.status = 'running'
                AND coalesce(current_setting('jobengine.claiming', true), '') = 'on')
    THEN
        RAISE EXCEPTION 'jobengine: illegal transition for job %: % -> %', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_status_transition', TABLE = 'jobs', SCHEMA = 'jobengine',
                  HINT = 'see the lifecycle table in the jobengine README';
    END IF;
    IF NEW.status <> 'cancelled' AND jobengine.may_only_cancel() THEN
        RAISE EXCEPTION 'jobengine: job %: role % may only cancel jobs, not move them % -> %',
            OLD.id, current_user, OLD.status, NEW.status
            USING ERRCODE = 'insufficient_privilege', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    -- A writer that did not set these (a hand-written UPDATE) gets the defaults.
    IF NEW.updated_at IS NOT DISTINCT FROM OLD.updated_at THEN
        NEW.updated_at := now();
    END IF;
    IF NEW.status_reason IS NOT DISTINCT FROM OLD.status_reason THEN
        NEW.status_reason := jobengine.default_reason(OLD.status, NEW.status);
    END IF;
    IF NEW.status = 'running' THEN
        -- Entering running counts an attempt, and a running job always holds a
        -- lease: one given by hand gets 30 s, after which the reaper takes over.
        NEW.attempt := OLD.attempt + 1;
        NEW.started_at := NEW.updated_at;
        NEW.finished_at := NULL;
        IF OLD.status = 'pending' THEN
            NEW.scheduled_at := NEW.updated_at;
        END IF;
        IF NEW.lease_expires_at IS NULL OR NEW.lease_expires_at IS NOT DISTINCT FROM OLD.lease_expires_at THEN
            NEW.lease_owner := coalesce(NEW.lease_owner, jobengine.current_actor());
            NEW.lease_expires_at := NEW.updated_at + interval '30 seconds';
        END IF;
    ELSE
        NEW.lease_owner := NULL;
        NEW.lease_expires_at := NULL;
        IF NEW.status = 'scheduled' THEN
            NEW.scheduled_at := NEW.updated_at;
            IF OLD.status = 'running' THEN
                NEW.released := OLD.released + 1;
            END IF;
        ELSE
            NEW.finished_at := NEW.updated_at;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_guard_transition
    BEFORE UPDATE OF status ON jobengine.jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobengine.jobs_guard_transition();

-- The id is the job's identity in history and timeline: it never changes.
CREATE FUNCTION jobengine.jobs_refuse_id_change() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'jobengine: job %: id cannot change', OLD.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_id_immutable', TABLE = 'jobs', SCHEMA = 'jobengine';
END
$$;

CREATE TRIGGER jobs_refuse_id_change
    BEFORE UPDATE OF id ON jobengine.jobs
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION jobengine.jobs_refuse_id_change();

-- ---------------------------------------------------------------------------
-- The recorder: history, timeline and NOTIFY for a whole statement at once.
-- ---------------------------------------------------------------------------

-- The EventEnvelope (the contract's keys), in one place: every timeline row
-- and every notification on jobengine_events is built here. A one-expression
-- SQL function, so the planner inlines it: it costs no call.
CREATE FUNCTION jobengine.envelope(
    event_id uuid, event_type text, occurred_at timestamptz, job_id bigint, kind text,
    queue text, from_status jobengine.job_status, to_status jobengine.job_status,
    attempt integer, actor text, reason text
) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT jsonb_build_object(
        'event_id', event_id, 'event_type', event_type, 'schema_version', 1,
        'occurred_at', occurred_at, 'job_id', job_id, 'kind', kind, 'queue', queue,
        'from_status', from_status, 'to_status', to_status, 'attempt', attempt,
        'actor', actor, 'reason', reason)
$$;

-- Both recorders below build the envelope with jobengine.envelope. Payload and result never go in it (NOTIFY's 8000-byte limit).
-- pg_notify is called per transition: listeners get one message per change.
-- Two extra, per-statement channels let daemons wake without parsing every
-- envelope: jobengine_wake (payload: "<queue>:new" for inserted jobs,
-- "<queue>:ready" for jobs that became scheduled, "<queue>:done" for jobs that
-- finished, which may free their dependents)
-- and jobengine_cancel (payload: ids of running jobs just cancelled).

-- The recorders run with their owner's rights (SECURITY DEFINER): roles that
-- may change jobs need no right to write history or timeline rows themselves.
CREATE FUNCTION jobengine.jobs_record_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    who text := jobengine.current_actor();
    max_bytes bigint := jobengine.max_payload_bytes();
    bad record;
    ids bigint[];
    n_sent bigint;
BEGIN
    SELECT n.id, n.status INTO bad FROM new_jobs n WHERE n.status <> 'pending' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'jobengine: job % must be inserted as pending, not %', bad.id, bad.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_status_transition', TABLE = 'jobs', SCHEMA = 'jobengine';
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

    WITH c AS (
        SELECT n.id, NULL::jobengine.job_status AS from_status, n.status AS to_status, n.attempt,
               n.kind, n.queue, n.status_reason AS reason, n.created_at AS occurred_at,
               gen_random_uuid() AS event_id
        FROM new_jobs n
    ), h AS (
        INSERT INTO jobengine.job_history (job_id, from_status, to_status, attempt, occurred_at, reason, actor)
        SELECT c.id, c.from_status, c.to_status, c.attempt, c.occurred_at, c.reason, who FROM c
    ), e AS (
        INSERT INTO jobengine.timeline_events (event_id, job_id, event_type, occurred_at, envelope)
        SELECT c.event_id, c.id, 'job.created', c.occurred_at,
               jobengine.envelope(c.event_id, 'job.created', c.occurred_at, c.id, c.kind,
                                  c.queue, c.from_status, c.to_status, c.attempt, who, c.reason)
        FROM c
        RETURNING envelope
    )
    SELECT count(pg_notify('jobengine_events', e.envelope::text)) INTO n_sent FROM e;

    PERFORM pg_notify('jobengine_wake', q.queue || ':new') FROM (SELECT DISTINCT n.queue FROM new_jobs n) q;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_record_insert
    AFTER INSERT ON jobengine.jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.jobs_record_insert();

CREATE FUNCTION jobengine.jobs_record_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    who text;
    n_changed bigint;
BEGIN
    -- Most statements that touch no status (lease renewals) or no row at all
    -- (an empty claim) leave here, at the cost of one tuplestore peek.
    PERFORM 1 FROM new_jobs LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    who := jobengine.current_actor();
    WITH moved AS MATERIALIZED (
        SELECT n.id, o.status AS old_status, n.status AS new_status, n.attempt,
               n.kind, n.queue, n.status_reason AS reason, n.updated_at AS occurred_at
        FROM new_jobs n JOIN old_jobs o ON o.id = n.id
        WHERE n.status IS DISTINCT FROM o.status
    ), c AS MATERIALIZED (
        -- one step per transition; a claim straight from pending took two
        SELECT m.id, s.from_status, s.to_status, s.attempt, m.kind, m.queue, s.reason,
               m.occurred_at, s.step, gen_random_uuid() AS event_id,
               jobengine.transition_event_type(s.from_status, s.to_status) AS event_type
        FROM moved m
        CROSS JOIN LATERAL (
            SELECT m.old_status AS from_status, m.new_status AS to_status,
                   m.attempt, m.reason, 1 AS step
            WHERE NOT (m.old_status = 'pending' AND m.new_status = 'running')
            UNION ALL
            SELECT 'pending'::jobengine.job_status, 'scheduled'::jobengine.job_status,
                   m.attempt - 1, 'ready', 1
            WHERE m.old_status = 'pending' AND m.new_status = 'running'
            UNION ALL
            SELECT 'scheduled'::jobengine.job_status, 'running'::jobengine.job_status,
                   m.attempt, m.reason, 2
            WHERE m.old_status = 'pending' AND m.new_status = 'running'
        ) AS s
    ), h AS (
        INSERT INTO jobengine.job_history (job_id, from_status, to_status, attempt, occurred_at, reason, actor)
        SELECT c.id, c.from_status, c.to_status, c.attempt, c.occurred_at, c.reason, who
        FROM c ORDER BY c.id, c.step
    ), e AS (
        INSERT INTO jobengine.timeline_events (event_id, job_id, event_type, occurred_at, envelope)
        SELECT c.event_id, c.id, c.event_type, c.occurred_at,
               jobengine.envelope(c.event_id, c.event_type, c.occurred_at, c.id, c.kind,
                                  c.queue, c.from_status, c.to_status, c.attempt, who, c.reason)
        FROM c ORDER BY c.id, c.step
        RETURNING envelope
    ), w AS (
        -- by where jobs ended up (a claim from pending wakes no one)
        SELECT pg_notify('jobengine_wake', q.queue || q.what)
        FROM (SELECT DISTINCT m.queue,
                     CASE WHEN m.new_status = 'scheduled' THEN ':ready' ELSE ':done' END AS what
              FROM moved m WHERE m.new_status <> 'running') q
    ), x AS (
        -- running -> cancelled: tell the daemons (ids chunked to stay far
        -- below the NOTIFY payload limit)
        SELECT pg_notify('jobengine_cancel', string_agg(k.id::text, ','))
        FROM (SELECT m.id, (row_number() OVER (ORDER BY m.id) - 1) / 500 AS chunk
              FROM moved m WHERE m.old_status = 'running' AND m.new_status = 'cancelled') k
        GROUP BY k.chunk
    )
    SELECT (SELECT count(pg_notify('jobengine_events', e.envelope::text)) FROM e)
         + (SELECT count(*) FROM w) + (SELECT count(*) FROM x)
    INTO n_changed;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_record_update
    AFTER UPDATE ON jobengine.jobs
    REFERENCING OLD TABLE AS old_jobs NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.jobs_record_update();

-- Content changed after insert is validated like new content. Row triggers
-- limited to the columns concerned: the daemon's status changes never set
-- them, so they cost the hot path nothing.
CREATE FUNCTION jobengine.jobs_validate_content() RETURNS trigger
LANGUAGE plpgsql
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

CREATE TRIGGER jobs_validate_content
    BEFORE UPDATE OF kind, queue, payload, retry_policy ON jobengine.jobs
    FOR EACH ROW EXECUTE FUNCTION jobengine.jobs_validate_content();

-- A changed depends_on must name existing jobs and close no cycle. AFTER ROW
-- triggers run at the end of the statement, so the walk sees every row the
-- statement changed.
CREATE FUNCTION jobengine.jobs_validate_dependencies() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM jobengine.validate_dependencies(ARRAY[NEW.id]);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_validate_dependencies
    AFTER UPDATE OF depends_on ON jobengine.jobs
    FOR EACH ROW WHEN (OLD.depends_on IS DISTINCT FROM NEW.depends_on)
    EXECUTE FUNCTION jobengine.jobs_validate_dependencies();

-- ---------------------------------------------------------------------------
-- The audit trail is append-only; jobs are never deleted (their history
-- would lose its subject).
-- ---------------------------------------------------------------------------

CREATE FUNCTION jobengine.refuse_rewrite() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'jobengine: %.% is append-only: % refused', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END
$$;

CREATE TRIGGER job_history_append_only
    BEFORE UPDATE OR DELETE ON jobengine.job_history
    FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER job_history_no_truncate
    BEFORE TRUNCATE ON jobengine.job_history
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER timeline_events_append_only
    BEFORE UPDATE OR DELETE ON jobengine.timeline_events
    FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER timeline_events_no_truncate
    BEFORE TRUNCATE ON jobengine.timeline_events
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER jobs_no_delete
    BEFORE DELETE ON jobengine.jobs
    FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER jobs_no_truncate
    BEFORE TRUNCATE ON jobengine.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();
