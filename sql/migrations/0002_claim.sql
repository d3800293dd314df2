-- jobengine 0002: the claim, in one round trip.
--
-- Due jobs with no dependencies go pending -> scheduled here (the scheduler
-- handles jobs with dependencies), then the best runnable jobs go scheduled
-- -> running with a lease. Both steps are ordinary guarded UPDATEs, so each writes its own
-- history rows, timeline events and notifications.

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
AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_ready integer;
BEGIN
    IF p_limit IS NULL OR p_limit <= 0 THEN
        RETURN;
    END IF;

    -- Promote only when too few jobs are ready to claim, and then a few
    -- batches' worth at once: every statement carries a fixed cost (its
    -- audit trigger), so a backlog is promoted in fewer, larger statements.
    SELECT count(*) INTO v_ready FROM (
        SELECT 1 FROM jobengine.jobs s
        WHERE s.status = 'scheduled' AND s.queue = ANY (p_queues) AND s.run_at <= v_now
          AND s.kind = ANY (p_kinds) AND NOT (p_sealed AND s.requires_network)
        LIMIT p_limit
    ) AS ready;
    IF v_ready < p_limit THEN
        UPDATE jobengine.jobs j
        SET status = 'scheduled', status_reason = 'ready', updated_at = v_now
        WHERE j.id IN (
            SELECT p.id FROM jobengine.jobs p
            WHERE p.status = 'pending' AND p.queue = ANY (p_queues) AND p.run_at <= v_now
              AND p.depends_on = '{}' AND p.kind = ANY (p_kinds)
              AND NOT (p_sealed AND p.requires_network)
            ORDER BY p.priority DESC, p.run_at, p.id
            LIMIT least(greatest(4 * p_limit, 100), 1000)
            FOR UPDATE SKIP LOCKED
        );
    END IF;

    RETURN QUERY
    UPDATE jobengine.jobs j
    SET status = 'running', status_reason = 'claimed', updated_at = v_now,
        lease_owner = p_owner, lease_expires_at = v_now + p_lease_ttl
    WHERE j.id IN (
        SELECT s.id FROM jobengine.jobs s
        WHERE s.status = 'scheduled' AND s.queue = ANY (p_queues) AND s.run_at <= v_now
          AND s.kind = ANY (p_kinds)
          AND NOT (p_sealed AND s.requires_network)
        ORDER BY s.priority DESC, s.run_at, s.id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    )
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
               jsonb_build_object(
                   'event_id', c.event_id, 'event_type', p_event_type, 'schema_version', 1,
                   'occurred_at', c.occurred_at, 'job_id', c.id, 'kind', c.kind, 'queue', c.queue,
                   'from_status', c.status, 'to_status', c.status, 'attempt', c.attempt,
                   'actor', jobengine.current_actor(), 'reason', p_reason)
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
