-- jobengine 0003: the guarantees hold for every writer.
--
-- What 0001/0002 left open, each closed here in the database itself, so that
-- it holds whoever writes (the daemon, the API, an app's role, psql):
-- * every function pins search_path and qualifies its names, so no caller can
--   shadow an operator or a function the checks use;
-- * entering scheduled or running needs every dependency completed; a job's
--   depends_on is frozen once it left pending; cycle checks are serialised;
-- * the lifecycle's own columns (attempt, released, timestamps, reason,
--   result, error, who) change only with a transition, and take their values
--   from the database (its clock, its count), not from the writer;
-- * who is recorded is who wrote: a role that is not a daemon cannot name
--   itself, and every history row carries the database role;
-- * leases are bounded, owned, and renewed without waiting on row locks;
-- * limits that protect the server live in jobengine.settings, which only the
--   schema owner may change;
-- * the lifecycle's triggers fire under session_replication_role = replica too;
-- * status changes are one small SQL API with versioned names (claim_v1,
--   finish_v1, fail_v1, release_v1, renew_v1, reap_v1, cancel_v1, retry_v1,
--   promote_v1, cascade_v1), so daemons of two releases can run side by side.

-- Everything below is created with nothing but pg_catalog on the path, so
-- what the SQL-standard bodies bind to is the system's own.
SET LOCAL search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------
-- Settings only the schema owner can change.
-- ---------------------------------------------------------------------------

CREATE TABLE jobengine.settings (
    name text PRIMARY KEY,
    value text NOT NULL,
    CONSTRAINT settings_name_known CHECK (name IN ('max_payload_bytes', 'max_lease_ttl')),
    CONSTRAINT settings_value_valid CHECK (
        CASE name
            WHEN 'max_payload_bytes' THEN value ~ '^[1-9][0-9]{0,17}$'
            WHEN 'max_lease_ttl' THEN value ~ '^[0-9 a-z:.]+$'
        END)
);
COMMENT ON TABLE jobengine.settings IS
    'Limits that protect the server; only the schema owner may change them.';

-- A database-level `jobengine.max_payload_bytes` (how 0001 was configured) carries over.
INSERT INTO jobengine.settings (name, value) VALUES
    ('max_payload_bytes',
     coalesce(nullif(pg_catalog.current_setting('jobengine.max_payload_bytes', true), ''), '1048576')),
    ('max_lease_ttl', '1 hour');

-- An interval setting must parse and be positive (the CHECK only screens characters).
CREATE FUNCTION jobengine.settings_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.name = 'max_lease_ttl' AND NEW.value::interval < interval '1 minute' THEN
        RAISE EXCEPTION 'jobengine: setting max_lease_ttl must be an interval of at least 1 minute, not %', NEW.value
            USING ERRCODE = 'check_violation', TABLE = 'settings', SCHEMA = 'jobengine';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER settings_check BEFORE INSERT OR UPDATE ON jobengine.settings
    FOR EACH ROW EXECUTE FUNCTION jobengine.settings_check();

-- Helpers the checks call on every row are SQL-standard bodies (BEGIN
-- ATOMIC): their names are resolved once, when they are created (under this
-- migration's pinned search_path), so no caller's search_path reaches them,
-- and the planner still inlines them into the statement that uses them.
-- Functions with a body run at call time (plpgsql, and SQL given as a
-- string) pin their search_path instead.

CREATE OR REPLACE FUNCTION jobengine.max_payload_bytes() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce((SELECT s.value::bigint FROM jobengine.settings s WHERE s.name = 'max_payload_bytes'),
                    1048576);
END;

CREATE FUNCTION jobengine.max_lease_ttl() RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce((SELECT s.value::interval FROM jobengine.settings s WHERE s.name = 'max_lease_ttl'),
                    interval '1 hour');
END;

-- ---------------------------------------------------------------------------
-- Who writes.
-- ---------------------------------------------------------------------------

-- Whether the current role may drive the whole lifecycle and name itself in
-- the ledger: with the least-privilege roles installed, a member of
-- jobengine_daemon, the schema's owner, or a superuser; without them, every
-- role (one trusted login, the default set-up). Decided only from the role
-- the database says is running the statement.
CREATE FUNCTION jobengine.writer_trusted() RETURNS boolean
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT to_regrole('jobengine_daemon') IS NULL
        OR pg_has_role(current_user, 'jobengine_daemon', 'MEMBER')
        OR has_schema_privilege(current_user, 'jobengine', 'CREATE');
END;

-- Who made a change, as the ledger records it: a trusted writer's own name
-- (jobengine.actor: the daemon's id, 'api', 'cli'), else 'sql'. A role that is
-- not trusted cannot pass for a daemon by setting jobengine.actor.
CREATE OR REPLACE FUNCTION jobengine.current_actor() RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT CASE WHEN jobengine.writer_trusted()
                THEN coalesce(nullif(current_setting('jobengine.actor', true), ''), 'sql')
                ELSE 'sql' END;
END;

-- Kept for callers of 0001: a role that may only cancel is one not trusted.
CREATE OR REPLACE FUNCTION jobengine.may_only_cancel() RETURNS boolean
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT NOT jobengine.writer_trusted();
END;

-- The writer of a job's last status change, set by the database: the
-- recorders copy them into the ledger. (Defaults run as the inserting role.)
ALTER TABLE jobengine.jobs ADD COLUMN status_actor text NOT NULL DEFAULT 'sql';
ALTER TABLE jobengine.jobs ALTER COLUMN status_actor SET DEFAULT jobengine.current_actor();
ALTER TABLE jobengine.jobs ADD COLUMN status_role text NOT NULL DEFAULT '';
ALTER TABLE jobengine.jobs ALTER COLUMN status_role SET DEFAULT current_user;

-- The database role that made each change ('' for rows written before 0003).
ALTER TABLE jobengine.job_history ADD COLUMN role text NOT NULL DEFAULT '';

-- ---------------------------------------------------------------------------
-- 0001's functions: the row-level helpers become SQL-standard bodies; the
-- rest pin their search_path.
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION jobengine.transition_event_type(
    from_status jobengine.job_status, to_status jobengine.job_status
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
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
    END;
END;

CREATE OR REPLACE FUNCTION jobengine.default_reason(
    from_status jobengine.job_status, to_status jobengine.job_status
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN from_status IS NULL THEN 'created'
        WHEN to_status = 'cancelled' THEN 'cancelled_by_user'
        WHEN from_status = 'pending' THEN 'ready'
        WHEN to_status = 'running' THEN 'claimed'
        WHEN to_status = 'completed' THEN 'completed'
        WHEN to_status = 'failed' THEN 'error'
        WHEN from_status = 'running' AND to_status = 'scheduled' THEN 'released'
        WHEN from_status = 'failed' THEN 'retry'
    END;
END;

CREATE OR REPLACE FUNCTION jobengine.job_content_ok(
    kind text, queue text, payload jsonb, retry_policy jsonb, max_bytes bigint
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
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
            AND coalesce((retry_policy ->> 'max_delay')::numeric, 0) >= 0));
END;

CREATE OR REPLACE FUNCTION jobengine.envelope(
    event_id uuid, event_type text, occurred_at timestamptz, job_id bigint, kind text,
    queue text, from_status jobengine.job_status, to_status jobengine.job_status,
    attempt integer, actor text, reason text
) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT jsonb_build_object(
        'event_id', event_id, 'event_type', event_type, 'schema_version', 1,
        'occurred_at', occurred_at, 'job_id', job_id, 'kind', kind, 'queue', queue,
        'from_status', from_status, 'to_status', to_status, 'attempt', attempt,
        'actor', actor, 'reason', reason);
END;

ALTER FUNCTION jobengine.raise_invalid_job(bigint, text, text, jsonb, jsonb, bigint)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION jobengine.jobs_refuse_id_change() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION jobengine.refuse_rewrite() SET search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------
-- Dependencies: existing, acyclic, frozen once the job left pending, and
-- checked under a lock so two concurrent changes cannot close a cycle.
-- ---------------------------------------------------------------------------

-- pg_advisory_xact_lock key taken by every depends_on change ("jobdag").
CREATE OR REPLACE FUNCTION jobengine.validate_dependencies(ids bigint[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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

CREATE OR REPLACE FUNCTION jobengine.jobs_validate_dependencies() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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

-- ---------------------------------------------------------------------------
-- The guard, rewritten: the transition table, the roles, the dependencies,
-- and the lifecycle columns, all decided here.
-- ---------------------------------------------------------------------------

-- Reasons only the engine gives (a writer that is not trusted may give its own).
CREATE FUNCTION jobengine.engine_reason(reason text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT reason IN ('created', 'ready', 'claimed', 'completed', 'error', 'timeout',
                      'lease_expired', 'retry', 'operator_retry', 'shutdown', 'released',
                      'dependency_failed', 'egress_blocked');
END;

CREATE OR REPLACE FUNCTION jobengine.jobs_guard_transition() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_now timestamptz := statement_timestamp();
    v_trusted boolean := jobengine.writer_trusted();
    v_blocker record;
    v_reason text;
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
                             THEN coalesce(nullif(current_setting('jobengine.actor', true), ''), 'sql')
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
    RETURN NEW;
END
$$;

-- A lease must end in the future and within jobengine.settings' max_lease_ttl
-- (leases of a minute or less need no look-up: max_lease_ttl is at least that).
CREATE FUNCTION jobengine.lease_ok(p_expires timestamptz, p_now timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE
        WHEN p_expires IS NULL OR p_expires <= p_now THEN false
        WHEN p_expires <= p_now + interval '1 minute' THEN true
        ELSE p_expires <= p_now + jobengine.max_lease_ttl()
    END;
END;

-- Raise the error that says why lease_ok refused a lease.
CREATE FUNCTION jobengine.check_lease(p_job_id bigint, p_expires timestamptz, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
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

-- Outside a transition, the lifecycle's columns do not move, and a lease is
-- only ever extended (or shortened) by its owner while the job runs.
CREATE FUNCTION jobengine.jobs_guard_columns() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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
        WHEN NEW.updated_at IS DISTINCT FROM OLD.updated_at THEN 'updated_at'
        WHEN NEW.lease_owner IS DISTINCT FROM OLD.lease_owner THEN 'lease_owner'
    END;
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

CREATE TRIGGER jobs_guard_columns
    BEFORE UPDATE OF attempt, released, status_reason, status_actor, status_role, result, last_error,
                     created_at, scheduled_at, started_at, finished_at, updated_at,
                     lease_owner, lease_expires_at
    ON jobengine.jobs
    FOR EACH ROW WHEN (OLD.status IS NOT DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobengine.jobs_guard_columns();

-- Content checks read the owner's limits.
CREATE OR REPLACE FUNCTION jobengine.jobs_validate_content() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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

-- ---------------------------------------------------------------------------
-- The recorders: who comes from the row the guard (or the insert's column
-- defaults, evaluated as the inserting role) filled in.
-- ---------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION jobengine.jobs_record_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
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

    WITH c AS (
        SELECT n.id, NULL::jobengine.job_status AS from_status, n.status AS to_status, n.attempt,
               n.kind, n.queue, n.status_reason AS reason, n.created_at AS occurred_at,
               n.status_actor AS actor, n.status_role AS role, gen_random_uuid() AS event_id
        FROM new_jobs n
    ), h AS (
        INSERT INTO jobengine.job_history (job_id, from_status, to_status, attempt, occurred_at, reason, actor, role)
        SELECT c.id, c.from_status, c.to_status, c.attempt, c.occurred_at, c.reason, c.actor, c.role FROM c
    ), e AS (
        INSERT INTO jobengine.timeline_events (event_id, job_id, event_type, occurred_at, envelope)
        SELECT c.event_id, c.id, 'job.created', c.occurred_at,
               jobengine.envelope(c.event_id, 'job.created', c.occurred_at, c.id, c.kind,
                                  c.queue, c.from_status, c.to_status, c.attempt, c.actor, c.reason)
        FROM c
        RETURNING envelope
    )
    SELECT count(pg_notify('jobengine_events', e.envelope::text)) INTO n_sent FROM e;

    PERFORM pg_notify('jobengine_wake', q.queue || ':new') FROM (SELECT DISTINCT n.queue FROM new_jobs n) q;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION jobengine.jobs_record_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n_changed bigint;
BEGIN
    -- Statements that touch no status (lease renewals) or no row at all (an
    -- empty claim) leave here, at the cost of one tuplestore peek.
    PERFORM 1 FROM new_jobs LIMIT 1;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    WITH moved AS MATERIALIZED (
        SELECT n.id, o.status AS old_status, n.status AS new_status, n.attempt,
               n.kind, n.queue, n.status_reason AS reason, n.updated_at AS occurred_at,
               n.status_actor AS actor, n.status_role AS role
        FROM new_jobs n JOIN old_jobs o ON o.id = n.id
        WHERE n.status IS DISTINCT FROM o.status
    ), c AS MATERIALIZED (
        -- one step per transition; a claim straight from pending took two
        SELECT m.id, s.from_status, s.to_status, s.attempt, m.kind, m.queue, s.reason,
               m.occurred_at, m.actor, m.role, s.step, gen_random_uuid() AS event_id,
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
        INSERT INTO jobengine.job_history (job_id, from_status, to_status, attempt, occurred_at, reason, actor, role)
        SELECT c.id, c.from_status, c.to_status, c.attempt, c.occurred_at, c.reason, c.actor, c.role
        FROM c ORDER BY c.id, c.step
    ), e AS (
        INSERT INTO jobengine.timeline_events (event_id, job_id, event_type, occurred_at, envelope)
        SELECT c.event_id, c.id, c.event_type, c.occurred_at,
               jobengine.envelope(c.event_id, c.event_type, c.occurred_at, c.id, c.kind,
                                  c.queue, c.from_status, c.to_status, c.attempt, c.actor, c.reason)
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

-- A note on a job's timeline that is not a status change. Only daemons may
-- write one (EXECUTE), so the actor is the daemon's own name. A note can
-- never pass for a transition: every transition's event type is refused.
CREATE OR REPLACE FUNCTION jobengine.add_timeline_note(
    p_job_ids bigint[], p_event_type text, p_reason text
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
    v_actor text := coalesce(nullif(current_setting('jobengine.actor', true), ''), 'sql');
BEGIN
    IF p_event_type !~ '^job\.[a-z_]+$' OR EXISTS (
        SELECT 1 FROM unnest(enum_range(NULL::jobengine.job_status) || NULL::jobengine.job_status) AS a(s),
                      unnest(enum_range(NULL::jobengine.job_status)) AS b(s)
        WHERE jobengine.transition_event_type(a.s, b.s) = p_event_type) THEN
        RAISE EXCEPTION 'jobengine: % is not a valid note type: use job.<word>, not a transition''s type', p_event_type
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH c AS (
        SELECT j.id, j.status, j.attempt, j.kind, j.queue, gen_random_uuid() AS event_id,
               statement_timestamp() AS occurred_at
        FROM jobengine.jobs j WHERE j.id = ANY (p_job_ids)
    ), e AS (
        INSERT INTO jobengine.timeline_events (event_id, job_id, event_type, occurred_at, envelope)
        SELECT c.event_id, c.id, p_event_type, c.occurred_at,
               jobengine.envelope(c.event_id, p_event_type, c.occurred_at, c.id, c.kind,
                                  c.queue, c.status, c.status, c.attempt, v_actor, p_reason)
        FROM c ORDER BY c.id
        RETURNING envelope
    )
    SELECT count(pg_notify('jobengine_events', e.envelope::text)) INTO n FROM e;
    RETURN n;
END
$$;

-- ---------------------------------------------------------------------------
-- The write path: every status change the engine makes, as versioned
-- functions. Writers say what they expect (status, attempt, lease owner); a
-- row that moved on is reported, never overwritten. Rows locked by someone
-- else are skipped and reported 'busy', so one app's open transaction cannot
-- hold up a daemon's other jobs.
-- ---------------------------------------------------------------------------

-- Claim the best runnable jobs with a lease: scheduled jobs whose
-- dependencies completed, and due dependency-free pending jobs (straight to
-- running; the recorder writes both steps). The plan is kept independent of
-- statistics (no bitmap scan of a freshly loaded backlog).
CREATE FUNCTION jobengine.claim_v1(
    p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval,
    p_sealed boolean DEFAULT false
) RETURNS SETOF jobengine.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_bitmapscan = off
SET jobengine.claiming = 'on'
AS $$
DECLARE
    v_now timestamptz := statement_timestamp();
BEGIN
    IF p_limit IS NULL OR p_limit <= 0 THEN
        RETURN;
    END IF;
    IF p_lease_ttl IS NULL OR p_lease_ttl <= interval '0' THEN
        RAISE EXCEPTION 'jobengine: claim: lease_ttl must be positive, not %', p_lease_ttl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH ready AS (
        SELECT s.id, s.priority, s.run_at FROM jobengine.jobs s
        WHERE s.status = 'scheduled' AND s.queue = ANY (p_queues) AND s.run_at <= v_now
          AND s.kind = ANY (p_kinds) AND NOT (p_sealed AND s.requires_network)
          AND (s.depends_on = '{}' OR NOT EXISTS (
              SELECT 1 FROM jobengine.jobs d WHERE d.id = ANY (s.depends_on) AND d.status <> 'completed'))
        ORDER BY s.priority DESC, s.run_at, s.id
        LIMIT p_limit
        FOR NO KEY UPDATE SKIP LOCKED
    ), due AS (
        SELECT p.id, p.priority, p.run_at FROM jobengine.jobs p
        WHERE p.status = 'pending' AND p.queue = ANY (p_queues) AND p.run_at <= v_now
          AND p.depends_on = '{}' AND p.kind = ANY (p_kinds)
          AND NOT (p_sealed AND p.requires_network)
        ORDER BY p.priority DESC, p.run_at, p.id
        LIMIT p_limit
        FOR NO KEY UPDATE SKIP LOCKED
    ), chosen AS (
        SELECT c.id FROM (SELECT * FROM ready UNION ALL SELECT * FROM due) AS c
        ORDER BY c.priority DESC, c.run_at, c.id
        LIMIT p_limit
    )
    UPDATE jobengine.jobs j
    SET status = 'running', status_reason = 'claimed',
        lease_owner = p_owner, lease_expires_at = v_now + p_lease_ttl
    FROM chosen
    WHERE j.id = chosen.id
    RETURNING j.*;
END
$$;

-- 0002's claim, for daemons of release 0.1.0 during a rolling upgrade; its
-- p_now is ignored (times come from the database clock now).
CREATE OR REPLACE FUNCTION jobengine.claim_jobs(
    p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval,
    p_now timestamptz DEFAULT NULL, p_sealed boolean DEFAULT false
) RETURNS SETOF jobengine.jobs
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT * FROM jobengine.claim_v1(p_owner, p_queues, p_kinds, p_limit, p_lease_ttl, p_sealed)
$$;

-- The answers below, per requested attempt: 'done', 'busy' (someone else
-- holds the row locked: nothing waited for, nothing changed, try again) or
-- 'moved' (no longer this owner's attempt: the outcome must be dropped).
-- Each write is one statement: the rows still held are locked (SKIP LOCKED),
-- changed, and the rest are told apart by a look at their committed state.
-- (plpgsql, not SQL, for the plan cache: these run many times a second.)

-- running -> completed, with each attempt's result (JSON text).
CREATE FUNCTION jobengine.finish_v1(
    p_owner text, p_ids bigint[], p_attempts integer[], p_results text[]
) RETURNS TABLE (id bigint, attempt integer, outcome text, kind text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_attempts integer[];
    v_kinds text[];
BEGIN
    WITH held AS (
        SELECT j.ctid FROM jobengine.jobs j
        JOIN unnest(p_ids, p_attempts) AS t(id, attempt) ON t.id = j.id
        WHERE j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ), upd AS (
        UPDATE jobengine.jobs j
        SET status = 'completed', status_reason = 'completed', result = r.result::jsonb
        FROM unnest(p_ids, p_results) AS r(id, result)
        WHERE j.ctid = ANY (ARRAY(SELECT held.ctid FROM held)) AND r.id = j.id
        RETURNING j.id, j.attempt, j.kind
    )
    SELECT array_agg(upd.id), array_agg(upd.attempt), array_agg(upd.kind) INTO v_ids, v_attempts, v_kinds FROM upd;
    IF coalesce(cardinality(v_ids), 0) = cardinality(p_ids) THEN
        -- all written: the common case needs no second look
        RETURN QUERY SELECT u.id, u.attempt, 'done'::text, u.kind FROM unnest(v_ids, v_attempts, v_kinds) AS u(id, attempt, kind);
        RETURN;
    END IF;
    RETURN QUERY
    SELECT t.id, t.attempt, CASE
        WHEN t.id = ANY (v_ids) THEN 'done'
        WHEN j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner THEN 'busy'
        ELSE 'moved' END, j.kind
    FROM unnest(p_ids, p_attempts) AS t(id, attempt) LEFT JOIN jobengine.jobs j ON j.id = t.id;
END
$$;

-- running -> scheduled: given back at shutdown (not counted against max_retries).
CREATE FUNCTION jobengine.release_v1(p_owner text, p_ids bigint[], p_attempts integer[])
RETURNS TABLE (id bigint, attempt integer, outcome text, kind text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_attempts integer[];
    v_kinds text[];
BEGIN
    WITH held AS (
        SELECT j.ctid FROM jobengine.jobs j
        JOIN unnest(p_ids, p_attempts) AS t(id, attempt) ON t.id = j.id
        WHERE j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ), upd AS (
        UPDATE jobengine.jobs j
        SET status = 'scheduled', status_reason = 'shutdown', run_at = statement_timestamp()
        WHERE j.ctid = ANY (ARRAY(SELECT held.ctid FROM held))
        RETURNING j.id, j.attempt, j.kind
    )
    SELECT array_agg(upd.id), array_agg(upd.attempt), array_agg(upd.kind) INTO v_ids, v_attempts, v_kinds FROM upd;
    IF coalesce(cardinality(v_ids), 0) = cardinality(p_ids) THEN
        -- all written: the common case needs no second look
        RETURN QUERY SELECT u.id, u.attempt, 'done'::text, u.kind FROM unnest(v_ids, v_attempts, v_kinds) AS u(id, attempt, kind);
        RETURN;
    END IF;
    RETURN QUERY
    SELECT t.id, t.attempt, CASE
        WHEN t.id = ANY (v_ids) THEN 'done'
        WHEN j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner THEN 'busy'
        ELSE 'moved' END, j.kind
    FROM unnest(p_ids, p_attempts) AS t(id, attempt) LEFT JOIN jobengine.jobs j ON j.id = t.id;
END
$$;

-- A lease's length as given, or an error when it is not positive.
CREATE FUNCTION jobengine.positive_ttl(p_lease_ttl interval) RETURNS interval
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_lease_ttl IS NULL OR p_lease_ttl <= interval '0' THEN
        RAISE EXCEPTION 'jobengine: lease_ttl must be positive, not %', p_lease_ttl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_lease_ttl;
END
$$;

-- Extend the leases this owner still holds. A row someone else holds locked
-- is not waited for ('busy': the daemon's own deadline keeps counting).
CREATE FUNCTION jobengine.renew_v1(
    p_owner text, p_ids bigint[], p_attempts integer[], p_lease_ttl interval
) RETURNS TABLE (id bigint, attempt integer, outcome text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
    v_attempts integer[];
BEGIN
    WITH held AS (
        SELECT j.ctid FROM jobengine.jobs j
        JOIN unnest(p_ids, p_attempts) AS t(id, attempt) ON t.id = j.id
        WHERE j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ), upd AS (
        UPDATE jobengine.jobs j
        SET lease_expires_at = statement_timestamp() + jobengine.positive_ttl(p_lease_ttl)
        WHERE j.ctid = ANY (ARRAY(SELECT held.ctid FROM held))
        RETURNING j.id, j.attempt
    )
    SELECT array_agg(upd.id), array_agg(upd.attempt) INTO v_ids, v_attempts FROM upd;
    IF coalesce(cardinality(v_ids), 0) = cardinality(p_ids) THEN
        -- all written: the common case needs no second look
        RETURN QUERY SELECT u.id, u.attempt, 'done'::text FROM unnest(v_ids, v_attempts) AS u(id, attempt);
        RETURN;
    END IF;
    RETURN QUERY
    SELECT t.id, t.attempt, CASE
        WHEN t.id = ANY (v_ids) THEN 'done'
        WHEN j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner THEN 'busy'
        ELSE 'moved' END
    FROM unnest(p_ids, p_attempts) AS t(id, attempt) LEFT JOIN jobengine.jobs j ON j.id = t.id;
END
$$;

-- failed -> scheduled at now + delay for failed jobs (skipped if someone else
-- holds them). Internal to fail_v1, reap_v1 and retry_v1.
CREATE FUNCTION jobengine.schedule_retries(p_ids bigint[], p_delays double precision[], p_reason text)
RETURNS TABLE (id bigint, run_at timestamptz)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    WITH t AS (SELECT * FROM unnest(p_ids, p_delays) AS t(id, delay) WHERE t.delay IS NOT NULL),
    locked AS (
        SELECT j.id FROM jobengine.jobs j JOIN t ON t.id = j.id
        WHERE j.status = 'failed'
        FOR NO KEY UPDATE OF j SKIP LOCKED
    )
    UPDATE jobengine.jobs j
    SET status = 'scheduled', status_reason = p_reason,
        run_at = statement_timestamp() + make_interval(secs => greatest(t.delay, 0))
    FROM t, locked
    WHERE j.id = t.id AND locked.id = t.id
    RETURNING j.id, j.run_at
$$;

-- running -> failed, and for attempts whose retry delay (seconds) is given,
-- failed -> scheduled at now + delay, in the same call (the decision is the
-- caller's: jobengine.domain.retry.retry_delay). NULL delay: failed for good.
CREATE FUNCTION jobengine.fail_v1(
    p_owner text, p_ids bigint[], p_attempts integer[], p_reasons text[], p_errors text[],
    p_retry_delays double precision[]
) RETURNS TABLE (id bigint, attempt integer, outcome text, kind text, retry_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_done bigint[];
BEGIN
    WITH t AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_reasons, p_errors) AS t(id, attempt, reason, error)
    ), held AS (
        SELECT j.id FROM jobengine.jobs j JOIN t ON t.id = j.id
        WHERE j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner
        FOR NO KEY UPDATE OF j SKIP LOCKED
    ), upd AS (
        UPDATE jobengine.jobs j
        SET status = 'failed', status_reason = coalesce(t.reason, 'error'), last_error = t.error
        FROM t, held
        WHERE j.id = held.id AND t.id = held.id
        RETURNING j.id
    )
    SELECT coalesce(array_agg(upd.id), '{}') INTO v_done FROM upd;
    RETURN QUERY
    WITH t AS (
        SELECT * FROM unnest(p_ids, p_attempts, p_retry_delays) AS t(id, attempt, delay)
    ), r AS (
        SELECT * FROM jobengine.schedule_retries(
            ARRAY(SELECT t.id FROM t WHERE t.id = ANY (v_done)),
            ARRAY(SELECT t.delay FROM t WHERE t.id = ANY (v_done)), 'retry')
    )
    SELECT t.id, t.attempt, CASE
        WHEN t.id = ANY (v_done) THEN 'done'
        WHEN j.status = 'running' AND j.attempt = t.attempt AND j.lease_owner = p_owner THEN 'busy'
        ELSE 'moved' END, j.kind, r.run_at
    FROM t LEFT JOIN jobengine.jobs j ON j.id = t.id LEFT JOIN r ON r.id = t.id;
END
$$;

-- Running jobs whose lease expired, locked for the caller's transaction (the
-- caller decides their retries, then calls reap_v1 in the same transaction).
CREATE FUNCTION jobengine.reap_candidates_v1(p_limit integer)
RETURNS TABLE (id bigint, attempt integer, released integer, max_retries integer,
               retry_policy jsonb, lease_owner text, lease_expires_at timestamptz)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r.id, r.attempt, r.released, r.max_retries, r.retry_policy, r.lease_owner, r.lease_expires_at
    FROM jobengine.jobs r
    WHERE r.status = 'running' AND r.lease_expires_at < statement_timestamp()
    ORDER BY r.lease_expires_at
    LIMIT p_limit
    FOR NO KEY UPDATE SKIP LOCKED
$$;

-- running -> failed (lease_expired) for expired leases, and the retries
-- decided for them, at once.
CREATE FUNCTION jobengine.reap_v1(
    p_ids bigint[], p_attempts integer[], p_owners text[], p_retry_delays double precision[]
) RETURNS TABLE (id bigint, outcome text, kind text, retry_at timestamptz)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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

-- An operator's cancel: any job that has not ended -> cancelled, with no
-- worker fencing (a running handler is interrupted through jobengine_cancel).
-- Per id: the status it left (NULL when it was not cancelled), the status it
-- is in now (NULL: no such job), and its kind.
CREATE FUNCTION jobengine.cancel_v1(p_ids bigint[], p_reason text DEFAULT NULL)
RETURNS TABLE (id bigint, from_status jobengine.job_status, status jobengine.job_status,
               kind text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
-- An operator's action waits for a busy row, but not forever.
SET lock_timeout = '5s'
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

-- Dependents of `p_id`, down the whole DAG, that were cancelled because a
-- dependency failed: a retry of `p_id` does not bring them back (cancelled
-- is final); they must be submitted again.
CREATE FUNCTION jobengine.cancelled_dependents(p_id bigint) RETURNS bigint[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
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

-- failed -> scheduled, due after each delay (seconds): an operator's retry
-- (reason operator_retry, delay 0) or the daemon's retry of a job failed by
-- hand with attempts left (reason retry). Per id: whether it was retried,
-- when it runs, its kind, and the dependents that stay cancelled.
CREATE FUNCTION jobengine.retry_v1(
    p_ids bigint[], p_delays double precision[] DEFAULT NULL, p_reason text DEFAULT 'operator_retry'
) RETURNS TABLE (id bigint, retried boolean, run_at timestamptz, stays_cancelled bigint[],
                 kind text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
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

-- pending -> scheduled for due jobs of these queues whose dependencies all
-- completed (the claim itself takes dependency-free jobs).
CREATE FUNCTION jobengine.promote_v1(p_queues text[], p_limit integer, p_sealed boolean DEFAULT false)
RETURNS TABLE (id bigint, kind text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE jobengine.jobs AS j
    SET status = 'scheduled', status_reason = 'ready'
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

-- pending -> cancelled (dependency_failed) for jobs with a dependency that was
-- cancelled or failed for good; call until it returns nothing to go down the DAG.
CREATE FUNCTION jobengine.cascade_v1(p_limit integer)
RETURNS TABLE (id bigint, kind text)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
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

-- Failed jobs that still have attempts left (failed by hand), locked for the
-- caller's transaction, which decides their retries and calls retry_v1.
CREATE FUNCTION jobengine.retry_candidates_v1(p_limit integer)
RETURNS TABLE (id bigint, attempt integer, released integer, max_retries integer, retry_policy jsonb)
LANGUAGE sql SET search_path = pg_catalog, pg_temp
AS $$
    SELECT j.id, j.attempt, j.released, j.max_retries, j.retry_policy FROM jobengine.jobs j
    WHERE j.status = 'failed' AND j.attempt - j.released <= j.max_retries
    ORDER BY j.id
    LIMIT p_limit
    FOR NO KEY UPDATE SKIP LOCKED
$$;

-- ---------------------------------------------------------------------------
-- Who may call what: the write path is the daemon's; an app may cancel.
-- ---------------------------------------------------------------------------

REVOKE EXECUTE ON FUNCTION
    jobengine.claim_v1(text, text[], text[], integer, interval, boolean),
    jobengine.finish_v1(text, bigint[], integer[], text[]),
    jobengine.release_v1(text, bigint[], integer[]),
    jobengine.fail_v1(text, bigint[], integer[], text[], text[], double precision[]),
    jobengine.schedule_retries(bigint[], double precision[], text),
    jobengine.reap_candidates_v1(integer),
    jobengine.reap_v1(bigint[], integer[], text[], double precision[]),
    jobengine.renew_v1(text, bigint[], integer[], interval),
    jobengine.retry_v1(bigint[], double precision[], text),
    jobengine.retry_candidates_v1(integer),
    jobengine.promote_v1(text[], integer, boolean),
    jobengine.cascade_v1(integer),
    jobengine.cancel_v1(bigint[], text)
FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- The lifecycle's triggers fire whatever session_replication_role says
-- (replica would otherwise skip every one of them, append-only included).
-- ---------------------------------------------------------------------------

ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_guard_transition;
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_guard_columns;
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_refuse_id_change;
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_record_insert;
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_record_update;
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_validate_content;
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_validate_dependencies;
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_no_delete;
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_no_truncate;
ALTER TABLE jobengine.job_history ENABLE ALWAYS TRIGGER job_history_append_only;
ALTER TABLE jobengine.job_history ENABLE ALWAYS TRIGGER job_history_no_truncate;
ALTER TABLE jobengine.timeline_events ENABLE ALWAYS TRIGGER timeline_events_append_only;
ALTER TABLE jobengine.timeline_events ENABLE ALWAYS TRIGGER timeline_events_no_truncate;
ALTER TABLE jobengine.settings ENABLE ALWAYS TRIGGER settings_check;
