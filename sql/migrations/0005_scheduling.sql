-- jobengine 0005: scheduling — periodic jobs, limits, paused queues, fair claiming.
--
-- Every rule is data (tables any SQL client with the daemon's role may
-- change) and is enforced inside the claim, atomically, so no race between
-- daemons can break it:
-- * jobengine.queues: a paused queue gets no new claims (running jobs finish).
-- * jobs.limit_key groups jobs; jobengine.concurrency_limits caps how many of
--   a key run at once, jobengine.rate_limits how many start in any window of
--   length `per` (an exact sliding window: the starts are kept, in
--   jobengine.rate_limit_starts, not a daemon's memory).
-- * Fair claiming: the claim takes jobs round-robin across limit keys (the
--   jobs without a key are one more group) within the same priority, and
--   priorities age: a job gains one priority level for every
--   settings.priority_aging it waits (jobs.claim_order holds the resulting
--   order, fixed when the job becomes due to wait).
-- * jobengine.schedules: cron or interval schedules; each due tick creates
--   one job (schedule_tick_v1), however many daemons run.

SET LOCAL search_path = pg_catalog, pg_temp;

-- ---------------------------------------------------------------------------
-- Settings: how fast priorities age.
-- ---------------------------------------------------------------------------

ALTER TABLE jobengine.settings DROP CONSTRAINT settings_name_known;
ALTER TABLE jobengine.settings ADD CONSTRAINT settings_name_known
    CHECK (name IN ('max_payload_bytes', 'max_lease_ttl', 'notify_mode', 'priority_aging'));
ALTER TABLE jobengine.settings DROP CONSTRAINT settings_value_valid;
ALTER TABLE jobengine.settings ADD CONSTRAINT settings_value_valid CHECK (
    CASE name
        WHEN 'max_payload_bytes' THEN value ~ '^[1-9][0-9]{0,17}$'
        WHEN 'max_lease_ttl' THEN value ~ '^[0-9 a-z:.]+$'
        WHEN 'notify_mode' THEN value IN ('direct', 'relayed')
        WHEN 'priority_aging' THEN value = 'off' OR value ~ '^[0-9 a-z:.]+$'
    END);

CREATE OR REPLACE FUNCTION jobengine.settings_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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
INSERT INTO jobengine.settings (name, value) VALUES ('priority_aging', '1 minute');

-- Seconds of waiting worth one priority level ('off': 1e9, so that priority
-- always wins over any wait).
CREATE FUNCTION jobengine.priority_aging_seconds() RETURNS double precision
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT coalesce((SELECT CASE WHEN s.value = 'off' THEN 1e9
                                 ELSE extract(epoch FROM s.value::interval)::double precision END
                     FROM jobengine.settings s WHERE s.name = 'priority_aging'), 60);
END;

-- ---------------------------------------------------------------------------
-- Jobs: the limit key and the claim order.
-- ---------------------------------------------------------------------------

ALTER TABLE jobengine.jobs ADD COLUMN limit_key text;
ALTER TABLE jobengine.jobs ADD CONSTRAINT jobs_limit_key_valid
    CHECK (limit_key IS NULL OR (limit_key <> '' AND length(limit_key) <= 200));
COMMENT ON COLUMN jobengine.jobs.limit_key IS
    'Groups jobs under jobengine.concurrency_limits and jobengine.rate_limits (and for fair claiming).';

-- Seconds since the epoch, less the job's priority times priority_aging: the
-- claim takes the smallest first. A job that has waited priority_aging
-- longer than another counts one priority level higher.
ALTER TABLE jobengine.jobs ADD COLUMN claim_order double precision;
COMMENT ON COLUMN jobengine.jobs.claim_order IS
    'The claim''s order: run_at (epoch seconds) less priority x settings.priority_aging; kept by the database.';

-- (Priority 0, most jobs, needs no look at the setting.)
CREATE FUNCTION jobengine.claim_order(p_run_at timestamptz, p_priority integer) RETURNS double precision
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT extract(epoch FROM p_run_at)::double precision
           - CASE WHEN p_priority = 0 THEN 0
                  ELSE p_priority::double precision * jobengine.priority_aging_seconds() END;
END;

UPDATE jobengine.jobs SET claim_order = jobengine.claim_order(run_at, priority)
WHERE status IN ('pending', 'scheduled');

CREATE OR REPLACE FUNCTION jobengine.jobs_chain_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := NEW.created_at;
    NEW.ledger_head := jobengine.creation_hash(NEW.id, NEW.created_at, NEW.status_actor, NEW.status_role,
                                               NEW.kind, NEW.queue);
    NEW.claim_order := jobengine.claim_order(NEW.run_at, NEW.priority);
    RETURN NEW;
END
$$;

-- The order follows run_at and priority (a retry's new run_at, an operator's
-- new priority); a running job's key cannot change (it counts against its
-- key's limits), nor anyone set claim_order by hand.
CREATE FUNCTION jobengine.jobs_claim_order_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.limit_key IS DISTINCT FROM OLD.limit_key AND (OLD.status = 'running' OR NEW.status = 'running') THEN
        RAISE EXCEPTION 'jobengine: job %: limit_key cannot change while the job runs', OLD.id
            USING ERRCODE = 'check_violation', CONSTRAINT = 'jobs_limit_key_fixed', TABLE = 'jobs', SCHEMA = 'jobengine';
    END IF;
    IF NEW.run_at IS DISTINCT FROM OLD.run_at OR NEW.priority IS DISTINCT FROM OLD.priority
       OR NEW.claim_order IS DISTINCT FROM OLD.claim_order THEN
        NEW.claim_order := jobengine.claim_order(NEW.run_at, NEW.priority);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER jobs_claim_order BEFORE UPDATE OF run_at, priority, claim_order, limit_key ON jobengine.jobs
    FOR EACH ROW EXECUTE FUNCTION jobengine.jobs_claim_order_update();
ALTER TABLE jobengine.jobs ENABLE ALWAYS TRIGGER jobs_claim_order;

-- The claim's indexes: jobs without a key in claim order; jobs with one by
-- key, then claim order (the claim visits the keys one by one); running jobs
-- by key (what a concurrency limit counts).
DROP INDEX jobengine.jobs_claim_idx;
DROP INDEX jobengine.jobs_pending_idx;
CREATE INDEX jobs_claim_idx ON jobengine.jobs (claim_order, id)
    WHERE status = 'scheduled' AND limit_key IS NULL;
CREATE INDEX jobs_pending_idx ON jobengine.jobs (claim_order, id)
    WHERE status = 'pending' AND limit_key IS NULL;
CREATE INDEX jobs_claim_keyed_idx ON jobengine.jobs (limit_key, claim_order, id)
    WHERE status = 'scheduled' AND limit_key IS NOT NULL;
CREATE INDEX jobs_pending_keyed_idx ON jobengine.jobs (limit_key, claim_order, id)
    WHERE status = 'pending' AND limit_key IS NOT NULL;
CREATE INDEX jobs_running_key_idx ON jobengine.jobs (limit_key)
    WHERE status = 'running' AND limit_key IS NOT NULL;

-- ---------------------------------------------------------------------------
-- Queues, limits.
-- ---------------------------------------------------------------------------

CREATE TABLE jobengine.queues (
    name text PRIMARY KEY CONSTRAINT queues_name_valid CHECK (name <> '' AND length(name) <= 200),
    paused boolean NOT NULL DEFAULT false,
    -- who changed it last, and when (kept by the database)
    changed_by text NOT NULL DEFAULT jobengine.current_actor(),
    changed_at timestamptz NOT NULL DEFAULT statement_timestamp()
);
COMMENT ON TABLE jobengine.queues IS
    'Queues an operator paused or resumed (no row: not paused). A paused queue gets no new claims.';

CREATE TABLE jobengine.concurrency_limits (
    key text PRIMARY KEY CONSTRAINT concurrency_limits_key_valid CHECK (key <> '' AND length(key) <= 200),
    max_running integer NOT NULL CONSTRAINT concurrency_limits_max_running_positive CHECK (max_running > 0),
    changed_by text NOT NULL DEFAULT jobengine.current_actor(),
    changed_at timestamptz NOT NULL DEFAULT statement_timestamp()
);
COMMENT ON TABLE jobengine.concurrency_limits IS
    'Never more than max_running jobs with this limit_key running at once, across all daemons.';

CREATE TABLE jobengine.rate_limits (
    key text PRIMARY KEY CONSTRAINT rate_limits_key_valid CHECK (key <> '' AND length(key) <= 200),
    max_starts integer NOT NULL CONSTRAINT rate_limits_max_starts_valid CHECK (max_starts > 0 AND max_starts <= 1000000),
    per interval NOT NULL CONSTRAINT rate_limits_per_valid
        CHECK (per >= interval '1 millisecond' AND per <= interval '31 days'),
    changed_by text NOT NULL DEFAULT jobengine.current_actor(),
    changed_at timestamptz NOT NULL DEFAULT statement_timestamp()
);
COMMENT ON TABLE jobengine.rate_limits IS
    'Never more than max_starts starts of jobs with this limit_key in any window of length per, across all daemons.';

-- The starts a rate limit counts (written by the claim; older than the
-- window, removed by the next claim of the key).
CREATE TABLE jobengine.rate_limit_starts (
    key text NOT NULL,
    started_at timestamptz NOT NULL,
    job_id bigint NOT NULL
);
CREATE INDEX rate_limit_starts_key_idx ON jobengine.rate_limit_starts (key, started_at);
COMMENT ON TABLE jobengine.rate_limit_starts IS
    'The starts of rate-limited keys within their window (the claim keeps it).';

-- Whoever changes a row is recorded; a queue resumed, a limit raised or
-- removed wakes the daemons ('*' : every queue), so held jobs start at once.
CREATE FUNCTION jobengine.scheduling_stamp() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.changed_by := jobengine.current_actor();
    NEW.changed_at := statement_timestamp();
    RETURN NEW;
END
$$;

CREATE FUNCTION jobengine.scheduling_wake() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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

CREATE TRIGGER queues_stamp BEFORE INSERT OR UPDATE ON jobengine.queues
    FOR EACH ROW EXECUTE FUNCTION jobengine.scheduling_stamp();
CREATE TRIGGER queues_wake_insert AFTER INSERT ON jobengine.queues
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();
CREATE TRIGGER queues_wake_update AFTER UPDATE ON jobengine.queues
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();
CREATE TRIGGER queues_wake_delete AFTER DELETE ON jobengine.queues
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

CREATE TRIGGER concurrency_limits_stamp BEFORE INSERT OR UPDATE ON jobengine.concurrency_limits
    FOR EACH ROW EXECUTE FUNCTION jobengine.scheduling_stamp();
CREATE TRIGGER concurrency_limits_wake AFTER INSERT OR UPDATE OR DELETE ON jobengine.concurrency_limits
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();
CREATE TRIGGER rate_limits_stamp BEFORE INSERT OR UPDATE ON jobengine.rate_limits
    FOR EACH ROW EXECUTE FUNCTION jobengine.scheduling_stamp();
CREATE TRIGGER rate_limits_wake AFTER INSERT OR UPDATE OR DELETE ON jobengine.rate_limits
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

-- ---------------------------------------------------------------------------
-- Schedules.
-- ---------------------------------------------------------------------------

-- What is wrong with a 5-field cron expression (NULL: nothing). Fields:
-- minute, hour, day of month, month (1-12 or jan-dec), day of week (0-7 or
-- sun-sat, 0 and 7 are Sunday); each a list of *, N, N-M, with an optional
-- /step. Also @hourly, @daily (@midnight), @weekly, @monthly, @yearly
-- (@annually). A day that no month has (31 February) is refused too.
CREATE FUNCTION jobengine.cron_problem(p_expr text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
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
$$;

CREATE TABLE jobengine.schedules (
    name text PRIMARY KEY,
    cron text,
    every interval,
    kind text NOT NULL,
    queue text NOT NULL DEFAULT 'default',
    payload jsonb NOT NULL DEFAULT '{}',
    priority integer NOT NULL DEFAULT 0,
    limit_key text,
    timezone text NOT NULL DEFAULT 'UTC',
    enabled boolean NOT NULL DEFAULT true,
    -- the latest tick that created a job (kept by schedule_tick_v1), and that job
    last_tick timestamptz,
    last_job_id bigint,
    created_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    changed_by text NOT NULL DEFAULT jobengine.current_actor(),
    changed_at timestamptz NOT NULL DEFAULT statement_timestamp()
);
COMMENT ON TABLE jobengine.schedules IS
    'Periodic jobs: each due tick of cron (in timezone) or every creates one job, however many daemons run.';

-- Refuses a schedule that could not run, naming it and the field.
CREATE FUNCTION jobengine.schedules_check() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
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
$$;
CREATE TRIGGER schedules_check BEFORE INSERT OR UPDATE ON jobengine.schedules
    FOR EACH ROW EXECUTE FUNCTION jobengine.schedules_check();
CREATE TRIGGER schedules_wake AFTER INSERT OR UPDATE OR DELETE ON jobengine.schedules
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.scheduling_wake();

-- The idempotency key of a schedule's tick: schedule:<name>:<RFC 3339 UTC>.
CREATE FUNCTION jobengine.schedule_tick_key(p_name text, p_tick timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT 'schedule:' || p_name || ':'
           || to_char(p_tick AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN extract(microseconds FROM p_tick)::bigint % 1000000 <> 0
                   THEN to_char(p_tick AT TIME ZONE 'UTC', '.US') ELSE '' END
           || 'Z';
END;

-- Create the job of one due tick of a schedule, once: the first caller for a
-- tick later than the schedule's last one creates it (with the idempotency
-- key schedule:<name>:<tick>) and moves last_tick; everyone else gets NULL.
-- p_missed: how many earlier ticks were missed (no daemon ran); the job's
-- timeline says so.
CREATE FUNCTION jobengine.schedule_tick_v1(p_name text, p_tick timestamptz, p_missed integer DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
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

-- ---------------------------------------------------------------------------
-- The claim, with pauses, limits and fairness.
-- ---------------------------------------------------------------------------

-- Claim the best runnable jobs with a lease: scheduled jobs whose
-- dependencies completed, and due dependency-free pending jobs (straight to
-- running; the recorder writes both steps), of queues not paused, as the
-- limits allow, round-robin across limit keys within a priority level.
-- Plans are kept independent of statistics (no bitmap or sequential scan
-- of a freshly loaded backlog that ANALYZE has not seen yet).
--
-- Without keyed jobs waiting (the common case) it is one statement, as
-- before 0005, in claim order. With keyed jobs:
-- * Keys: up to p_limit + 16 keys with waiting jobs, found by a skip scan of
--   the keyed indexes (one probe per key), starting after the last key this
--   connection claimed from, so successive claims rotate through any number
--   of keys.
-- * Limits are enforced under a per-key advisory lock held until the claim
--   commits: a claim that finds a key's lock taken (another claim is
--   deciding for that key) leaves the key to it. The counts are read by a
--   statement that starts after the lock was taken, so they see every claim
--   committed before. Running jobs count, leases expired or not, until they
--   leave running, and only the claim enters it: a limit is never exceeded.
-- * Candidates are read without locking: a share of the claim per group
--   (each key, and the jobs without a key as one more group), at most what
--   its limit allows, ranked within the group; they are taken in order of
--   priority level, then rank, then claim order; a second round takes more
--   from the groups that had more when the first falls short. Only the jobs
--   taken are locked (SKIP LOCKED, re-checked when locked, the next
--   candidate standing in for one that was taken meanwhile).
CREATE OR REPLACE FUNCTION jobengine.claim_v1(
    p_owner text, p_queues text[], p_kinds text[], p_limit integer, p_lease_ttl interval,
    p_sealed boolean DEFAULT false
) RETURNS SETOF jobengine.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET enable_bitmapscan = off
SET enable_seqscan = off
SET jobengine.claiming = 'on'
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

    -- The keys to look at this time, rotating from where this connection left off.
    v_cursor := coalesce(current_setting('jobengine.claim_cursor', true), '');
    v_max := p_limit + 16;
    -- (a row with key NULL: the end of the keys was reached; the next step
    -- wraps around to the first key, then goes on up to the cursor)
    WITH RECURSIVE k(key, n, wrapped) AS (
        SELECT v_cursor, 0, false
        UNION ALL
        SELECT (SELECT least(
                    (SELECT s.limit_key FROM jobengine.jobs s
                     WHERE s.status = 'scheduled' AND s.limit_key IS NOT NULL
                       AND s.limit_key > coalesce(k.key, '')
                     ORDER BY s.limit_key LIMIT 1),
                    (SELECT p.limit_key FROM jobengine.jobs p
                     WHERE p.status = 'pending' AND p.limit_key IS NOT NULL
                       AND p.limit_key > coalesce(k.key, '')
                     ORDER BY p.limit_key LIMIT 1))),
               k.n + 1, k.wrapped OR k.key IS NULL
        FROM k
        WHERE k.n < v_max
          AND (k.key IS NOT NULL OR (NOT k.wrapped AND v_cursor <> ''))
          AND NOT (k.wrapped AND k.key >= v_cursor)
    )
    SELECT array_agg(k.key ORDER BY k.n) INTO v_keys FROM k
    WHERE k.n > 0 AND k.key IS NOT NULL AND NOT (k.wrapped AND k.key > v_cursor);
    v_keys := coalesce(v_keys, '{}');

    -- Keys under a limit, and of those the ones this claim may decide for.
    SELECT array_agg(l.key ORDER BY l.key) INTO v_limited FROM (
        SELECT c.key FROM jobengine.concurrency_limits c WHERE c.key = ANY (v_keys)
        UNION
        SELECT r.key FROM jobengine.rate_limits r WHERE r.key = ANY (v_keys)) l;
    v_group_keys := v_keys;
    v_group_allowed := array_fill(p_limit, ARRAY[cardinality(v_keys)]);
    IF v_limited IS NOT NULL THEN
        SELECT array_agg(l.key ORDER BY l.key) INTO v_locked FROM unnest(v_limited) AS l(key)
        WHERE pg_try_advisory_xact_lock(1785755235, hashtext(l.key));
        v_locked := coalesce(v_locked, '{}');
        -- (a new statement, a new snapshot: claims committed by the lock's
        -- previous holder are counted)
        v_rate_now := clock_timestamp();
        SELECT array_agg(r.key) INTO v_rate_keys FROM jobengine.rate_limits r WHERE r.key = ANY (v_locked);
        IF v_rate_keys IS NOT NULL THEN
            DELETE FROM jobengine.rate_limit_starts s
            USING jobengine.rate_limits r
            WHERE r.key = ANY (v_rate_keys) AND s.key = r.key AND s.started_at <= v_rate_now - r.per;
        END IF;
        SELECT array_agg(g.key ORDER BY g.n), array_agg(g.allowed ORDER BY g.n) INTO v_group_keys, v_group_allowed
        FROM (
            SELECT k.key, k.n,
                   CASE WHEN NOT k.key = ANY (v_limited) THEN p_limit
                        WHEN NOT k.key = ANY (v_locked) THEN 0
                        ELSE least(
                            p_limit,
                            (SELECT c.max_running - (SELECT count(*) FROM jobengine.jobs r
                                                     WHERE r.status = 'running' AND r.limit_key = k.key)
                             FROM jobengine.concurrency_limits c WHERE c.key = k.key),
                            (SELECT rl.max_starts - (SELECT count(*) FROM jobengine.rate_limit_starts s
                                                     WHERE s.key = k.key AND s.started_at > v_rate_now - rl.per)
                             FROM jobengine.rate_limits rl WHERE rl.key = k.key))::integer
                   END AS allowed
            FROM unnest(v_keys) WITH ORDINALITY AS k(key, n)) g
        WHERE g.allowed > 0;
    END IF;
    v_group_keys := coalesce(v_group_keys, '{}');
    v_group_allowed := coalesce(v_group_allowed, '{}');
    v_aging := coalesce((SELECT CASE WHEN s.value = 'off' THEN 1e9
                                     ELSE extract(epoch FROM s.value::interval)::double precision END
                         FROM jobengine.settings s WHERE s.name = 'priority_aging'), 60);

    -- (the jobs without a key are one more group)
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
    IF v_last IS NOT NULL THEN
        PERFORM set_config('jobengine.claim_cursor', v_last, false);
    END IF;
    RETURN QUERY SELECT * FROM unnest(v_claimed);
END
$$;

-- What holds this daemon's waiting jobs back, so it knows when to look
-- again without polling: whether due jobs of these queues wait on a
-- concurrency limit that is full (they start when a job of the key ends:
-- watch for 'done'), the earliest time a rate-limited key's window lets a
-- start through, and whether there are limits at all (none: no need to ask
-- again until one is set, which notifies '*:ready').
CREATE FUNCTION jobengine.held_v1(p_queues text[])
RETURNS TABLE (concurrency_held boolean, rate_next_at timestamptz, limits_exist boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT
        EXISTS (
            SELECT 1 FROM jobengine.concurrency_limits c
            WHERE (SELECT count(*) FROM jobengine.jobs r WHERE r.status = 'running' AND r.limit_key = c.key)
                  >= c.max_running
              AND EXISTS (SELECT 1 FROM jobengine.jobs w
                          WHERE w.status IN ('pending', 'scheduled') AND w.limit_key = c.key
                            AND w.queue = ANY (p_queues) AND w.run_at <= statement_timestamp())),
        -- a full window opens when its oldest start that still counts leaves it
        (SELECT min(w.oldest + rl.per)
         FROM jobengine.rate_limits rl,
         LATERAL (SELECT count(*) AS n, min(s.started_at) AS oldest FROM (
                      SELECT s.started_at FROM jobengine.rate_limit_starts s
                      WHERE s.key = rl.key AND s.started_at > statement_timestamp() - rl.per
                      ORDER BY s.started_at DESC LIMIT rl.max_starts) s) w
         WHERE w.n >= rl.max_starts
           AND EXISTS (SELECT 1 FROM jobengine.jobs j
                       WHERE j.status IN ('pending', 'scheduled') AND j.limit_key = rl.key
                         AND j.queue = ANY (p_queues) AND j.run_at <= statement_timestamp())
        ),
        EXISTS (SELECT 1 FROM jobengine.concurrency_limits) OR EXISTS (SELECT 1 FROM jobengine.rate_limits)
$$;

-- ---------------------------------------------------------------------------
-- Who may do what.
-- ---------------------------------------------------------------------------

REVOKE EXECUTE ON FUNCTION jobengine.schedule_tick_v1(text, timestamptz, integer) FROM PUBLIC;

DO $$
BEGIN
    IF to_regrole('jobengine_daemon') IS NOT NULL AND to_regrole('jobengine_app') IS NOT NULL THEN
        GRANT SELECT ON jobengine.queues, jobengine.concurrency_limits, jobengine.rate_limits,
                        jobengine.rate_limit_starts, jobengine.schedules
            TO jobengine_daemon, jobengine_app;
        GRANT INSERT (limit_key) ON jobengine.jobs TO jobengine_daemon, jobengine_app;
        GRANT INSERT, UPDATE, DELETE ON jobengine.queues, jobengine.concurrency_limits,
                                        jobengine.rate_limits, jobengine.schedules
            TO jobengine_daemon;
        GRANT INSERT, DELETE ON jobengine.rate_limit_starts TO jobengine_daemon;
        GRANT EXECUTE ON FUNCTION jobengine.schedule_tick_v1(text, timestamptz, integer) TO jobengine_daemon;
    END IF;
END
$$;
