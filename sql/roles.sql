-- jobengine's least-privilege roles: `jobengine migrate --roles` applies this
-- (idempotent). Both are NOLOGIN groups; grant them to your login roles:
--   CREATE ROLE worker LOGIN PASSWORD '...' IN ROLE jobengine_daemon;
--   CREATE ROLE webapp LOGIN PASSWORD '...' IN ROLE jobengine_app;
--
-- jobengine_daemon: everything `jobengine run` / `jobengine api` need: read
--   all, insert jobs, change jobs (the database still guards every status
--   change), claim, write timeline notes.
-- jobengine_app: insert jobs, read everything, cancel with
--   UPDATE jobengine.jobs SET status = 'cancelled' (status and status_reason
--   are the only columns it may change; any other transition is refused).
-- Neither may write job_history or timeline_events: only the database's own
-- triggers do (they run as the schema owner), and neither may delete jobs.

DO $$
BEGIN
    IF to_regrole('jobengine_daemon') IS NULL THEN
        CREATE ROLE jobengine_daemon NOLOGIN;
    END IF;
    IF to_regrole('jobengine_app') IS NULL THEN
        CREATE ROLE jobengine_app NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA jobengine TO jobengine_daemon, jobengine_app;
GRANT SELECT ON ALL TABLES IN SCHEMA jobengine TO jobengine_daemon, jobengine_app;

GRANT INSERT, UPDATE ON jobengine.jobs TO jobengine_daemon;
GRANT EXECUTE ON FUNCTION
    jobengine.claim_jobs(text, text[], text[], integer, interval, timestamptz, boolean),
    jobengine.add_timeline_note(bigint[], text, text)
    TO jobengine_daemon;

GRANT INSERT (kind, queue, payload, priority, run_at, depends_on, max_retries, retry_policy,
              timeout, requires_network, idempotency_key)
    ON jobengine.jobs TO jobengine_app;
GRANT UPDATE (status, status_reason) ON jobengine.jobs TO jobengine_app;

-- What the roles must never have, in case someone granted it by hand.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON jobengine.job_history, jobengine.timeline_events
    FROM jobengine_daemon, jobengine_app;
REVOKE DELETE, TRUNCATE ON jobengine.jobs FROM jobengine_daemon, jobengine_app;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON jobengine.schema_migrations
    FROM jobengine_daemon, jobengine_app;
