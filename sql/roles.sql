-- jobengine's least-privilege roles: `jobengine migrate --roles` applies this
-- (idempotent). Both are NOLOGIN groups; grant them to your login roles:
--   CREATE ROLE worker LOGIN PASSWORD '...' IN ROLE jobengine_daemon;
--   CREATE ROLE webapp LOGIN PASSWORD '...' IN ROLE jobengine_app;
--
-- jobengine_daemon: everything `jobengine run` / `jobengine api` need: read
--   all, insert jobs, change jobs (the database still guards every status
--   change), the versioned write path (claim_v1, finish_v1, ...), timeline notes.
--   Only members of this role (and the schema owner) are recorded under the
--   name they give in jobengine.actor.
-- jobengine_app: insert jobs, read everything, cancel with
--   UPDATE jobengine.jobs SET status = 'cancelled' (status and status_reason
--   are the only columns it may change; any other transition is refused).
-- Neither may write the ledger (job_history and timeline_events are views
-- over jobengine.ledger): only the database's own triggers do (they run as
-- the schema owner), and neither may delete jobs: retention (purge_jobs_v1,
-- ledger_drop_v1, granted to daemons) is the only way rows leave.

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

-- Inserting: the job's content only. Who inserted it, its status and the
-- lifecycle columns are the database's to fill in (column defaults).
REVOKE INSERT ON jobengine.jobs FROM jobengine_daemon, jobengine_app;
GRANT INSERT (kind, queue, payload, priority, run_at, depends_on, max_retries, retry_policy,
              timeout, requires_network, idempotency_key, limit_key)
    ON jobengine.jobs TO jobengine_daemon, jobengine_app;
-- Daemons change jobs (every change still guarded by the database) through
-- the versioned write path.
GRANT UPDATE ON jobengine.jobs TO jobengine_daemon;
GRANT EXECUTE ON FUNCTION
    jobengine.claim_v1(text, text[], text[], integer, interval, boolean),
    jobengine.claim_jobs(text, text[], text[], integer, interval, timestamptz, boolean),
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
    jobengine.dag_dependents(bigint[], bigint[]),
    jobengine.dag_changes_v1(xid8, bigint, timestamptz, integer),
    jobengine.dag_moves_v1(text[], bigint[], bigint[], integer, boolean),
    jobengine.cancel_v1(bigint[], text),
    jobengine.add_timeline_note(bigint[], text, text),
    jobengine.ledger_prepare_v1(integer, date),
    jobengine.relay_v1(integer),
    jobengine.purge_jobs_v1(timestamptz, integer, boolean),
    jobengine.ledger_drop_v1(timestamptz, boolean),
    jobengine.retention_record_v1(boolean, interval, interval, bigint, timestamptz, timestamptz,
                                  timestamptz, bigint, jsonb, timestamptz, integer, interval),
    jobengine.ledger_analyze_v1(),
    jobengine.verify_ledger_v1(bigint, bigint),
    jobengine.ledger_seal_v1(interval, date),
    jobengine.schedule_tick_v1(text, timestamptz, integer)
    TO jobengine_daemon;

-- Scheduling's rules (queues paused, limits, schedules) are the operators':
-- daemons (and the CLI/API running as them) change them; apps read them.
-- The claim keeps the rate limits' window of starts.
GRANT INSERT, UPDATE, DELETE ON jobengine.queues, jobengine.concurrency_limits,
    jobengine.rate_limits, jobengine.schedules TO jobengine_daemon;
GRANT INSERT, DELETE ON jobengine.rate_limit_starts TO jobengine_daemon;

-- Apps cancel: a plain UPDATE of status (and their own status_reason), or cancel_v1.
GRANT UPDATE (status, status_reason) ON jobengine.jobs TO jobengine_app;
GRANT EXECUTE ON FUNCTION jobengine.cancel_v1(bigint[], text) TO jobengine_app;

-- What the roles must never have, in case someone granted it by hand.
REVOKE INSERT, UPDATE, DELETE ON jobengine.job_history, jobengine.timeline_events
    FROM jobengine_daemon, jobengine_app;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON jobengine.ledger, jobengine.retention_log,
    jobengine.relay_cursor, jobengine.ledger_epoch, jobengine.ledger_seals
    FROM jobengine_daemon, jobengine_app;
REVOKE DELETE, TRUNCATE ON jobengine.jobs FROM jobengine_daemon, jobengine_app;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON jobengine.queues, jobengine.concurrency_limits,
    jobengine.rate_limits, jobengine.rate_limit_starts, jobengine.schedules FROM jobengine_app;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON jobengine.schema_migrations, jobengine.settings
    FROM jobengine_daemon, jobengine_app;
