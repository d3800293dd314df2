-- jobengine 0002: the claim, in one statement and one round trip.
--
-- The best runnable jobs go to running with a lease: jobs already scheduled
-- (retries, jobs whose dependencies completed) and due dependency-free jobs
-- still pending, which the claim takes straight to running. That is one
-- guarded UPDATE; the recorder writes both steps such a job took (pending ->
-- scheduled -> running: two history rows, two timeline events, two
-- notifications), so the audit trail is the same as with two statements, at
-- the cost of one.

CREATE FUNCTION jobengine.claim_jobs(
    p_owner text,
    p_queues text[],
    p_kinds text[],
    p_limit integer,
    p_lease_ttl interval,
    p_now timestamptz DEFAULT NULL,
    p_sealed boolean DEFAULT false
) RETURNS SETOF jobengine.jobs
LANGUAGE plpgsql
-- The claim walks a partial index in claim order and stops at the batch
-- size. On a table without fresh statistics (just bulk-loaded) the planner
-- would rather bitmap-scan the whole backlog and sort it; this keeps the
-- plan independent of statistics.
SET enable_bitmapscan = off
-- Lets the guard accept pending -> running for this statement only.
SET jobengine.claiming = 'on'
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
BEGIN
    IF p_limit IS NULL OR p_limit <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH ready AS (
        SELECT s.id, s.priority, s.run_at FROM jobengine.jobs s
        WHERE s.status = 'scheduled' AND s.queue = ANY (p_queues) AND s.run_at <= v_now
          AND s.kind = ANY (p_kinds) AND NOT (p_sealed AND s.requires_network)
        ORDER BY s.priority DESC, s.run_at, s.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), due AS (
        SELECT p.id, p.priority, p.run_at FROM jobengine.jobs p
        WHERE p.status = 'pending' AND p.queue = ANY (p_queues) AND p.run_at <= v_now
          AND p.depends_on = '{}' AND p.kind = ANY (p_kinds)
          AND NOT (p_sealed AND p.requires_network)
        ORDER BY p.priority DESC, p.run_at, p.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), chosen AS (
        SELECT c.id FROM (SELECT * FROM ready UNION ALL SELECT * FROM due) AS c
        ORDER BY c.priority DESC, c.run_at, c.id
        LIMIT p_limit
    )
    UPDATE jobengine.jobs j
    SET status = 'running', status_reason = 'claimed', updated_at = v_now,
        lease_owner = p_owner, lease_expires_at = v_now + p_lease_ttl
    FROM chosen
    WHERE j.id = chosen.id
    RETURNING j.*;
END
$$;

-- A note on a job's timeline that is not a status change (a job held by
-- sealed mode, an egress attempt blocked, ...). Recorded and notified exactly
-- like a transition's event, with from_status = to_status = the job's status.
CREATE FUNCTION jobengine.add_timeline_note(
    p_job_ids bigint[], p_event_type text, p_reason text
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    IF p_event_type !~ '^job\.[a-z_]+$' OR p_event_type IN (
        'job.created', 'job.scheduled', 'job.started', 'job.completed', 'job.failed',
        'job.cancelled', 'job.released', 'job.retry_scheduled') THEN
        RAISE EXCEPTION 'jobengine: % is not a valid note type: use job.<word>, not a transition''s type', p_event_type
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH c AS (
        SELECT j.id, j.status, j.attempt, j.kind, j.queue, gen_random_uuid() AS event_id, now() AS occurred_at
        FROM jobengine.jobs j WHERE j.id = ANY (p_job_ids)
    ), e AS (
        INSERT INTO jobengine.timeline_events (event_id, job_id, event_type, occurred_at, envelope)
        SELECT c.event_id, c.id, p_event_type, c.occurred_at,
               jobengine.envelope(c.event_id, p_event_type, c.occurred_at, c.id, c.kind,
                                  c.queue, c.status, c.status, c.attempt,
                                  jobengine.current_actor(), p_reason)
        FROM c ORDER BY c.id
        RETURNING envelope
    )
    SELECT count(pg_notify('jobengine_events', e.envelope::text)) INTO n FROM e;
    RETURN n;
END
$$;

-- Only daemons claim and write notes (see `jobengine migrate --roles`).
REVOKE EXECUTE ON FUNCTION jobengine.claim_jobs(text, text[], text[], integer, interval, timestamptz, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION jobengine.add_timeline_note(bigint[], text, text) FROM PUBLIC;
