-- jobengine 0004: the ledger for years.
--
-- * One physical, append-only table, jobengine.ledger, holds every history
--   and timeline row; job_history and timeline_events are views over it with
--   the columns they always had (the timeline's envelope and event_id are
--   derived when read, not stored).
-- * The ledger is partitioned by day (UTC) on occurred_at; retention drops
--   whole partitions (never a big DELETE) and removes finished jobs in small
--   batches through purge_jobs_v1, the only way a job row can go.
-- * Every ledger row carries a sha256 hash chained per job, computed by the
--   database in the statement that writes the row; verify_ledger_v1 checks
--   the chains (and jobs.ledger_head, the newest hash of each job).
-- * Notifications can be relayed outside the producer's commit
--   (settings.notify_mode = 'relayed'): the rows are written as always, and
--   one daemon at a time (relay_v1) sends the same notifications in commit
--   order, many per transaction, so that committing a job does not take the
--   cluster-wide NOTIFY lock.

SET LOCAL search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------
-- Settings: how notifications are sent.
-- ---------------------------------------------------------------------------

ALTER TABLE jobengine.settings DROP CONSTRAINT settings_name_known;
ALTER TABLE jobengine.settings ADD CONSTRAINT settings_name_known
    CHECK (name IN ('max_payload_bytes', 'max_lease_ttl', 'notify_mode'));
ALTER TABLE jobengine.settings DROP CONSTRAINT settings_value_valid;
ALTER TABLE jobengine.settings ADD CONSTRAINT settings_value_valid CHECK (
    CASE name
        WHEN 'max_payload_bytes' THEN value ~ '^[1-9][0-9]{0,17}$'
        WHEN 'max_lease_ttl' THEN value ~ '^[0-9 a-z:.]+$'
        WHEN 'notify_mode' THEN value IN ('direct', 'relayed')
    END);
INSERT INTO jobengine.settings (name, value) VALUES ('notify_mode', 'direct');

-- Whether the lifecycle's triggers leave notifying to the relay.
CREATE FUNCTION jobengine.notify_relayed() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT EXISTS (SELECT 1 FROM jobengine.settings s
                   WHERE s.name = 'notify_mode' AND s.value = 'relayed');
END;

-- ---------------------------------------------------------------------------
-- The hash chain.
-- ---------------------------------------------------------------------------

-- A ledger row's hash: sha256 over the previous row's hash (empty for a
-- job's first row) and the row's canonical text: every field the row
-- records, '|'-separated; times as microseconds since the epoch and no
-- floating-point or date text (so no session setting changes it); the
-- free-text fields (reason, actor, role) quoted as SQL literals, so no text
-- can pass for another field; names (event type, kind, queue) cannot hold
-- '|' or quotes. Each parameter is used once and the function is STABLE,
-- so the planner inlines it wherever it is called (a real SQL function call
-- would cost more than the hash).
CREATE FUNCTION jobengine.ledger_hash(
    prev bytea, job_id bigint, event_type text, from_status jobengine.job_status,
    to_status jobengine.job_status, attempt integer, occurred_at timestamptz, reason text,
    actor text, role text, kind text, queue text, prev_at timestamptz
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT sha256(prev || convert_to(concat_ws('|',
        job_id, event_type, coalesce(from_status::text, ''), to_status::text, attempt,
        round(date_part('epoch', occurred_at) * 1000000)::bigint,
        coalesce(round(date_part('epoch', prev_at) * 1000000)::bigint, -1),
        kind, queue, quote_nullable(reason), quote_nullable(actor), quote_nullable(role)), 'UTF8'));
END;

-- The hash of a job's creation row, from the job row itself (what the
-- creation recorded cannot change before the job's first transition).
CREATE FUNCTION jobengine.creation_hash(
    id bigint, created_at timestamptz, actor text, role text, kind text, queue text
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT jobengine.ledger_hash(''::bytea, id, 'job.created', NULL, 'pending', 0, created_at,
                                 'created', actor, role, kind, queue, NULL);
END;

-- The newest hash of a job ('' for a job whose rows were all written before
-- 0004: its chain starts with its next row).
ALTER TABLE jobengine.jobs ADD COLUMN ledger_head bytea NOT NULL DEFAULT ''::bytea;
COMMENT ON COLUMN jobengine.jobs.ledger_head IS
    'The hash of the newest ledger row of this job (empty: its rows so far were written before 0004).';

-- A new job's head is its creation row's hash, and its newest ledger time its
-- creation time, whatever the insert said.
CREATE FUNCTION jobengine.jobs_chain_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := NEW.created_at;
    NEW.ledger_head := jobengine.creation_hash(NEW.id, NEW.created_at, NEW.status_actor, NEW.status_role,
                                               NEW.kind, NEW.queue);
    RETURN NEW;
END
$$;
CREATE TRIGGER jobs_chain_insert BEFORE INSERT ON jobengine.jobs
    FOR EACH ROW EXECUTE FUNCTION jobengine.jobs_chain_insert();
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_chain_insert;

-- ---------------------------------------------------------------------------
-- The ledger.
-- ---------------------------------------------------------------------------

CREATE SEQUENCE jobengine.ledger_id_seq AS bigint;

CREATE TABLE jobengine.ledger (
    id bigint NOT NULL DEFAULT nextval('jobengine.ledger_id_seq'),
    tx_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    job_id bigint NOT NULL,
    occurred_at timestamptz NOT NULL,
    -- when this job's previous row was written (NULL on its creation row):
    -- tells verification whether a missing predecessor is retention's doing
    prev_at timestamptz,
    attempt integer NOT NULL,
    from_status jobengine.job_status,
    to_status jobengine.job_status NOT NULL,
    -- a note about the job (e.g. held by sealed mode), not a transition
    note boolean NOT NULL DEFAULT false,
    event_type text NOT NULL,
    kind text NOT NULL,
    queue text NOT NULL,
    reason text,
    actor text NOT NULL,
    role text NOT NULL,
    -- NULL only on rows written before 0004 ("before chaining")
    hash bytea,
    prev_hash bytea,
    -- the event_id such rows were given; others derive theirs from id
    legacy_event_id uuid
) PARTITION BY RANGE (occurred_at);
ALTER SEQUENCE jobengine.ledger_id_seq OWNED BY jobengine.ledger.id;
COMMENT ON TABLE jobengine.ledger IS
    'The audit ledger: one row per transition or note; read it as job_history and timeline_events.';

CREATE INDEX ledger_job_idx ON jobengine.ledger (job_id, id);
CREATE INDEX ledger_cursor_idx ON jobengine.ledger (tx_id, id);

-- Rows outside every daily partition land here (no daemon made partitions
-- for a while); ledger_prepare_v1 moves them into their day.
CREATE TABLE jobengine.ledger_default PARTITION OF jobengine.ledger DEFAULT;

-- A ledger row's event_id: its own from before 0004, else one derived from
-- its id (unique, stable, an opaque uuid).
CREATE FUNCTION jobengine.ledger_event_id(id bigint, legacy uuid) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce(legacy, (
        '6a6f6265-0000-8000-' || substr(lpad(to_hex(id), 16, '0'), 1, 4) || '-'
        || substr(lpad(to_hex(id), 16, '0'), 5, 12))::uuid);
END;

-- Only retention (ledger_drop_v1, and ledger_prepare_v1 moving rows out of
-- the default partition) may remove rows: it marks its own transaction, as
-- the schema owner, which no other role can do for it.
CREATE FUNCTION jobengine.retention_in_progress() RETURNS boolean
LANGUAGE sql
BEGIN ATOMIC
    SELECT coalesce(current_setting('jobengine.retention', true), '') = pg_current_xact_id()::text
       AND pg_has_role(CURRENT_USER,
                       (SELECT c.relowner FROM pg_class c WHERE c.oid = 'jobengine.jobs'::regclass),
                       'USAGE');
END;

CREATE FUNCTION jobengine.ledger_guard() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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

CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON jobengine.ledger
    FOR EACH ROW EXECUTE FUNCTION jobengine.ledger_guard();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON jobengine.ledger
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER ledger_no_truncate BEFORE TRUNCATE ON jobengine.ledger_default
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();
ALTER TABLE jobengine.ledger ENABLE ALWAYS TRIGGER ledger_append_only;
ALTER TABLE jobengine.ledger ENABLE ALWAYS TRIGGER ledger_no_truncate;
ALTER TABLE jobengine.ledger_default ENABLE ALWAYS TRIGGER ledger_no_truncate;

-- The partition of one UTC day.
CREATE FUNCTION jobengine.ledger_partition_name(day date) RETURNS text
LANGUAGE sql IMMUTABLE
BEGIN ATOMIC
    SELECT 'ledger_' || to_char(day, 'YYYYMMDD');
END;

-- Create the daily partitions from p_from (default: yesterday) to p_days_ahead
-- days from today, moving any rows the default partition holds for them.
-- Returns how many partitions it created. Locks briefly (lock_timeout 2 s):
-- a daemon calls it again later if it could not.
CREATE FUNCTION jobengine.ledger_prepare_v1(p_days_ahead integer DEFAULT 7, p_from date DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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

-- The ledger's daily partitions: name, day, bounds.
CREATE FUNCTION jobengine.ledger_partitions()
RETURNS TABLE (name text, range_from timestamptz, range_to timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.relname::text,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz,
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'jobengine.ledger'::regclass
      AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    ORDER BY 2
$$;

-- ---------------------------------------------------------------------------
-- What was there before: every row moves into the ledger, unchained.
-- ---------------------------------------------------------------------------

SELECT jobengine.ledger_prepare_v1(7, (
    SELECT CASE WHEN min(t.occurred_at) IS NOT NULL
                THEN greatest(min(t.occurred_at AT TIME ZONE 'UTC')::date,
                              (statement_timestamp() AT TIME ZONE 'UTC')::date - 3650) END
    FROM jobengine.timeline_events t));

INSERT INTO jobengine.ledger (id, tx_id, job_id, occurred_at, prev_at, attempt, from_status, to_status,
                              note, event_type, kind, queue, reason, actor, role, hash, prev_hash,
                              legacy_event_id)
SELECT t.id, t.tx_id, t.job_id, t.occurred_at, NULL, (t.envelope ->> 'attempt')::integer,
       (t.envelope ->> 'from_status')::jobengine.job_status,
       (t.envelope ->> 'to_status')::jobengine.job_status,
       jobengine.transition_event_type((t.envelope ->> 'from_status')::jobengine.job_status,
                                       (t.envelope ->> 'to_status')::jobengine.job_status)
           IS DISTINCT FROM t.event_type,
       t.event_type, t.envelope ->> 'kind', t.envelope ->> 'queue', t.envelope ->> 'reason',
       coalesce(t.envelope ->> 'actor', 'sql'), coalesce(h.role, ''), NULL, NULL, t.event_id
FROM jobengine.timeline_events t
LEFT JOIN LATERAL (
    SELECT h.role FROM jobengine.job_history h
    WHERE h.job_id = t.job_id AND h.occurred_at = t.occurred_at
      AND h.to_status = (t.envelope ->> 'to_status')::jobengine.job_status
    ORDER BY h.id LIMIT 1
) h ON true
ORDER BY t.id;

SELECT setval('jobengine.ledger_id_seq',
              coalesce((SELECT max(l.id) FROM jobengine.ledger l), 0) + 1, false);

-- Where chaining began: rows with a smaller id may carry no hash.
CREATE TABLE jobengine.ledger_epoch (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    chained_from bigint NOT NULL,
    migrated_at timestamptz NOT NULL DEFAULT statement_timestamp()
);
COMMENT ON TABLE jobengine.ledger_epoch IS
    'Rows of jobengine.ledger with id < chained_from were written before hash chaining (0004).';
INSERT INTO jobengine.ledger_epoch (chained_from)
SELECT coalesce((SELECT max(l.id) FROM jobengine.ledger l), 0) + 1;
CREATE TRIGGER ledger_epoch_fixed BEFORE UPDATE OR DELETE ON jobengine.ledger_epoch
    FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER ledger_epoch_no_truncate BEFORE TRUNCATE ON jobengine.ledger_epoch
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();
ALTER TABLE jobengine.ledger_epoch ENABLE ALWAYS TRIGGER ledger_epoch_fixed;
ALTER TABLE jobengine.ledger_epoch ENABLE ALWAYS TRIGGER ledger_epoch_no_truncate;

DROP TABLE jobengine.timeline_events;
DROP TABLE jobengine.job_history;

CREATE VIEW jobengine.job_history AS
SELECT l.id, l.job_id, l.from_status, l.to_status, l.attempt, l.occurred_at, l.reason, l.actor, l.role
FROM jobengine.ledger l
WHERE NOT l.note;
COMMENT ON VIEW jobengine.job_history IS 'One row per transition (the ledger without its notes).';

CREATE VIEW jobengine.timeline_events AS
SELECT l.id, jobengine.ledger_event_id(l.id, l.legacy_event_id) AS event_id, l.job_id, l.event_type,
       l.occurred_at,
       jobengine.envelope(jobengine.ledger_event_id(l.id, l.legacy_event_id), l.event_type, l.occurred_at,
                          l.job_id, l.kind, l.queue, CASE WHEN l.note THEN l.to_status ELSE l.from_status END,
                          l.to_status, l.attempt, l.actor, l.reason) AS envelope,
       l.tx_id
FROM jobengine.ledger l;
COMMENT ON VIEW jobengine.timeline_events IS
    'One event per transition or note, with its envelope (built when read).';

-- ---------------------------------------------------------------------------
-- Writing the ledger: the lifecycle's triggers.
-- ---------------------------------------------------------------------------

-- Columns the database keeps: ledger_head joins the lifecycle's own.
DROP TRIGGER jobs_guard_columns ON jobengine.jobs;
CREATE OR REPLACE FUNCTION jobengine.jobs_guard_columns() RETURNS trigger
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
CREATE TRIGGER jobs_guard_columns
    BEFORE UPDATE OF attempt, released, status_reason, status_actor, status_role, result, last_error,
                     created_at, scheduled_at, started_at, finished_at, updated_at, lease_owner,
                     lease_expires_at, ledger_head
    ON jobengine.jobs FOR EACH ROW WHEN (OLD.status IS NOT DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobengine.jobs_guard_columns();
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_guard_columns;

-- The transition guard also chains the job's hash: NEW.ledger_head is the
-- hash of the row (two for a claim from pending) the recorder will write.
CREATE OR REPLACE FUNCTION jobengine.jobs_guard_transition() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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

-- The recorders write one ledger row per transition (and NOTIFY it, unless
-- the relay does).
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
               jobengine.envelope(jobengine.ledger_event_id(e.id, NULL), 'job.created', e.occurred_at,
                                  e.job_id, e.kind, e.queue, NULL, 'pending', 0, e.actor, 'created')::text))
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
                jobengine.envelope(jobengine.ledger_event_id(e.id, NULL), e.event_type, e.occurred_at, e.job_id,
                                   e.kind, e.queue, e.from_status, e.to_status, e.attempt, e.actor,
                                   e.reason)::text)) FROM e WHERE NOT v_relayed)
         + (SELECT count(*) FROM w) + (SELECT count(*) FROM x)
    INTO n_changed;
    RETURN NULL;
END
$$;

-- A note about jobs (not a transition), e.g. sealed mode holding one: a
-- ledger row chained like any other, by the daemon's role only. The role
-- recorded is the session's (the function runs as the schema owner).
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
                jobengine.envelope(jobengine.ledger_event_id(e.id, NULL), p_event_type, e.occurred_at, e.job_id,
                                   e.kind, e.queue, e.to_status, e.to_status, e.attempt, v_actor,
                                   p_reason)::text)) FROM e WHERE NOT v_relayed)
    INTO n, n_sent;
    PERFORM set_config('jobengine.noting', '', true);
    RETURN n;
END
$$;

-- ---------------------------------------------------------------------------
-- Relayed notifications.
-- ---------------------------------------------------------------------------

-- How far the relay has notified: (tx_id, id) as the event cursor.
CREATE TABLE jobengine.relay_cursor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    tx_id xid8 NOT NULL,
    id bigint NOT NULL,
    relayed_at timestamptz NOT NULL DEFAULT statement_timestamp()
);
COMMENT ON TABLE jobengine.relay_cursor IS
    'The newest ledger row (tx_id, id) whose notifications relay_v1 has sent.';
INSERT INTO jobengine.relay_cursor (tx_id, id) VALUES (pg_current_xact_id(), 9223372036854775807);

-- Switching to relayed: everything from transactions still open may need
-- relaying (at worst a few of them are notified twice); older ones are done.
CREATE OR REPLACE FUNCTION jobengine.settings_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.name = 'max_lease_ttl' AND NEW.value::interval < interval '1 minute' THEN
        RAISE EXCEPTION 'jobengine: setting max_lease_ttl must be an interval of at least 1 minute, not %', NEW.value
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

-- Send the notifications of up to p_limit new ledger rows, in commit order
-- (only rows of transactions older than every open one: none can appear
-- behind the cursor later), and advance the cursor in the same
-- transaction. One caller at a time: -1 when another is relaying, -2 when
-- notifications are not relayed (notify_mode = 'direct').
CREATE FUNCTION jobengine.relay_v1(p_limit integer DEFAULT 1000)
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
        SELECT count(pg_notify('jobengine_events', jobengine.envelope(
                   jobengine.ledger_event_id(o.id, o.legacy_event_id), o.event_type, o.occurred_at, o.job_id,
                   o.kind, o.queue, CASE WHEN o.note THEN o.to_status ELSE o.from_status END, o.to_status,
                   o.attempt, o.actor, o.reason)::text)) AS n
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

-- ---------------------------------------------------------------------------
-- Retention.
-- ---------------------------------------------------------------------------

CREATE TABLE jobengine.retention_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ran_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    actor text NOT NULL,
    role text NOT NULL DEFAULT session_user,
    dry_run boolean NOT NULL,
    -- the policy applied (NULL: forever)
    finished_jobs interval,
    audit interval,
    -- finished jobs removed (or that would be): how many, finished when
    jobs_removed bigint NOT NULL DEFAULT 0,
    jobs_finished_before timestamptz,
    jobs_oldest_finished timestamptz,
    jobs_newest_finished timestamptz,
    -- ledger rows removed with their partitions: [{name, from, to, rows, max_id}]
    ledger_rows_removed bigint NOT NULL DEFAULT 0,
    partitions_dropped jsonb NOT NULL DEFAULT '[]',
    -- what verification needs: any ledger row older than this may be gone
    ledger_removed_before timestamptz,
    partitions_created integer NOT NULL DEFAULT 0,
    duration interval,
    CONSTRAINT retention_log_partitions_array CHECK (jsonb_typeof(partitions_dropped) = 'array')
);
COMMENT ON TABLE jobengine.retention_log IS
    'One row per retention pass: what it removed (or, dry, would have), and where the ledger now begins.';
CREATE TRIGGER retention_log_append_only BEFORE UPDATE OR DELETE ON jobengine.retention_log
    FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER retention_log_no_truncate BEFORE TRUNCATE ON jobengine.retention_log
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();
ALTER TABLE jobengine.retention_log ENABLE ALWAYS TRIGGER retention_log_append_only;
ALTER TABLE jobengine.retention_log ENABLE ALWAYS TRIGGER retention_log_no_truncate;

-- Where the ledger may legitimately begin: the newest boundary a pass used.
CREATE FUNCTION jobengine.ledger_removed_before() RETURNS timestamptz
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT coalesce(max(r.ledger_removed_before), '-infinity'::timestamptz)
    FROM jobengine.retention_log r WHERE NOT r.dry_run;
END;

-- Jobs leave only through retention: a hand DELETE is refused, whoever sends it.
DROP TRIGGER jobs_no_delete ON jobengine.jobs;
CREATE FUNCTION jobengine.jobs_guard_delete() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF jobengine.retention_in_progress() THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'jobengine: jobs are removed only by the retention policy (jobengine retention run): DELETE refused'
        USING ERRCODE = 'restrict_violation', TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END
$$;
CREATE TRIGGER jobs_no_delete BEFORE DELETE ON jobengine.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.jobs_guard_delete();
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_no_delete;

-- Finished jobs, oldest first.
CREATE INDEX jobs_finished_idx ON jobengine.jobs (finished_at)
    WHERE status IN ('completed', 'cancelled', 'failed');

-- The jobs an unfinished job depends on (retention keeps them). One status
-- at a time, so that each reads its partial index: a status IN (...) list
-- would read the whole jobs table.
CREATE FUNCTION jobengine.dependencies_needed() RETURNS SETOF bigint
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT unnest(w.depends_on) FROM jobengine.jobs w WHERE w.status = 'pending' AND w.depends_on <> '{}'
    UNION
    SELECT unnest(w.depends_on) FROM jobengine.jobs w WHERE w.status = 'scheduled' AND w.depends_on <> '{}'
    UNION
    SELECT unnest(w.depends_on) FROM jobengine.jobs w WHERE w.status = 'running' AND w.depends_on <> '{}';
END;

-- Remove up to p_limit finished jobs (completed, cancelled, or failed with no
-- retry left) that finished before p_before, except those an unfinished job
-- depends on. Their ledger rows stay until their partition goes. With
-- p_dry_run, remove nothing and count every job that would go (no limit).
CREATE FUNCTION jobengine.purge_jobs_v1(p_before timestamptz, p_limit integer, p_dry_run boolean DEFAULT false)
RETURNS TABLE (removed bigint, oldest timestamptz, newest timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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
    RETURN QUERY
    WITH c AS (
        SELECT j.id FROM jobengine.jobs j
        WHERE j.status IN ('completed', 'cancelled', 'failed') AND j.finished_at < p_before
          AND (j.status <> 'failed' OR j.attempt - j.released > j.max_retries)
        ORDER BY j.finished_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), d AS (
        DELETE FROM jobengine.jobs j USING c
        WHERE j.id = c.id AND c.id NOT IN (SELECT n.id FROM jobengine.dependencies_needed() AS n(id))
        RETURNING j.finished_at
    )
    SELECT count(*), min(d.finished_at), max(d.finished_at) FROM d;
    PERFORM set_config('jobengine.retention', '', true);
END
$$;

-- Drop the ledger's daily partitions that end at or before p_before (and
-- delete rows of that age from the default partition). Stops at the first
-- partition it cannot lock within a second (the next pass goes on).
CREATE FUNCTION jobengine.ledger_drop_v1(p_before timestamptz, p_dry_run boolean DEFAULT false)
RETURNS TABLE (name text, range_from timestamptz, range_to timestamptz, rows bigint, max_id bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
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

-- Write a pass's record (the daemon's role cannot write the table itself).
CREATE FUNCTION jobengine.retention_record_v1(
    p_dry_run boolean, p_finished_jobs interval, p_audit interval, p_jobs_removed bigint,
    p_jobs_finished_before timestamptz, p_jobs_oldest timestamptz, p_jobs_newest timestamptz,
    p_ledger_rows_removed bigint, p_partitions_dropped jsonb, p_ledger_removed_before timestamptz,
    p_partitions_created integer, p_duration interval
) RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO jobengine.retention_log (actor, role, dry_run, finished_jobs, audit, jobs_removed,
                                         jobs_finished_before, jobs_oldest_finished, jobs_newest_finished,
                                         ledger_rows_removed, partitions_dropped, ledger_removed_before,
                                         partitions_created, duration)
    VALUES (coalesce(nullif(current_setting('jobengine.actor', true), ''), 'sql'), session_user, p_dry_run,
            p_finished_jobs, p_audit, p_jobs_removed, p_jobs_finished_before, p_jobs_oldest, p_jobs_newest,
            p_ledger_rows_removed, coalesce(p_partitions_dropped, '[]'),
            CASE WHEN p_dry_run THEN NULL ELSE p_ledger_removed_before END,
            p_partitions_created, p_duration)
    RETURNING id
$$;

-- Autovacuum never analyzes a partitioned parent: the engine does.
CREATE FUNCTION jobengine.ledger_analyze_v1() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    ANALYZE jobengine.ledger;
END
$$;

-- ---------------------------------------------------------------------------
-- Verification: which jobs' rows are not as the database wrote them.
-- ---------------------------------------------------------------------------

-- The exact check of these jobs' chains, row by row: one row per problem
-- (none: intact), naming the row. verify_ledger_v1 calls it for the jobs
-- its quick pass could not clear.
CREATE FUNCTION jobengine.verify_ledger_jobs(p_ids bigint[])
RETURNS TABLE (job_id bigint, ledger_id bigint, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows come in (job_id, id) order from the index (a span is a small part of
-- a day's partition): no scan of the whole day, no sort, no hash table;
-- callers run spans side by side instead of parallel workers
SET work_mem = '64MB' SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off
SET enable_hashagg = off SET max_parallel_workers_per_gather = 0
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

-- A 64-bit key of a chain link: a hash and the time of its row. A chain's
-- links cancel out under XOR: the keys of every row's (prev_hash, prev_at)
-- XOR the keys of every row's (hash, occurred_at) leave the newest row's.
CREATE FUNCTION jobengine.ledger_link_key(h bytea, at timestamptz) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN h IS NULL OR h = ''::bytea THEN 0::bigint ELSE
        ((get_byte(h, 0)::bigint << 56) | (get_byte(h, 1)::bigint << 48) | (get_byte(h, 2)::bigint << 40)
         | (get_byte(h, 3)::bigint << 32) | (get_byte(h, 4)::bigint << 24) | (get_byte(h, 5)::bigint << 16)
         | (get_byte(h, 6)::bigint << 8) | get_byte(h, 7)::bigint)
        # round(date_part('epoch', at) * 1000000)::bigint END;
END;

-- Jobs with ids in [p_from, p_to) whose ledger rows were altered, removed
-- or inserted outside the engine (one row per problem found; none: intact).
-- Also returns, as problem NULL, one row with how many rows it checked.
--
-- One pass over the rows in (job_id, id) order recomputes every row's hash
-- and folds each job's links (ledger_link_key): a job whose rows are each
-- intact, whose links cancel out to its newest row, and whose newest row is
-- its ledger_head, is intact. The few that are not cleared (tampered with,
-- or trimmed by retention) get the exact, row-by-row check.
CREATE FUNCTION jobengine.verify_ledger_v1(p_from bigint, p_to bigint)
RETURNS TABLE (job_id bigint, ledger_id bigint, problem text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- rows come in (job_id, id) order from the index (a span is a small part of
-- a day's partition): no scan of the whole day, no sort, no hash table;
-- callers run spans side by side instead of parallel workers
SET work_mem = '64MB' SET enable_sort = off SET enable_bitmapscan = off SET enable_seqscan = off
SET enable_hashagg = off SET max_parallel_workers_per_gather = 0
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

-- ---------------------------------------------------------------------------
-- Who may call what.
-- ---------------------------------------------------------------------------

REVOKE EXECUTE ON FUNCTION
    jobengine.ledger_prepare_v1(integer, date),
    jobengine.relay_v1(integer),
    jobengine.purge_jobs_v1(timestamptz, integer, boolean),
    jobengine.ledger_drop_v1(timestamptz, boolean),
    jobengine.retention_record_v1(boolean, interval, interval, bigint, timestamptz, timestamptz, timestamptz,
                                  bigint, jsonb, timestamptz, integer, interval),
    jobengine.ledger_analyze_v1(),
    jobengine.verify_ledger_v1(bigint, bigint),
    jobengine.verify_ledger_jobs(bigint[])
FROM PUBLIC;

-- The views and tables replaced here keep their readers (roles.sql, when
-- applied, grants the rest).
DO $$
BEGIN
    IF to_regrole('jobengine_daemon') IS NOT NULL AND to_regrole('jobengine_app') IS NOT NULL THEN
        GRANT SELECT ON jobengine.job_history, jobengine.timeline_events, jobengine.ledger,
                        jobengine.retention_log, jobengine.relay_cursor, jobengine.ledger_epoch
            TO jobengine_daemon, jobengine_app;
        GRANT EXECUTE ON FUNCTION
            jobengine.ledger_prepare_v1(integer, date),
            jobengine.relay_v1(integer),
            jobengine.purge_jobs_v1(timestamptz, integer, boolean),
            jobengine.ledger_drop_v1(timestamptz, boolean),
            jobengine.retention_record_v1(boolean, interval, interval, bigint, timestamptz, timestamptz,
                                          timestamptz, bigint, jsonb, timestamptz, integer, interval),
            jobengine.ledger_analyze_v1(),
            jobengine.verify_ledger_v1(bigint, bigint)
            TO jobengine_daemon;
    END IF;
END
$$;
