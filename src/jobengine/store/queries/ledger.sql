-- Named queries on the ledger: partitions, relaying, retention, verification.

-- name: ledger_prepare
SELECT jobengine.ledger_prepare_v1($1::integer);

-- name: ledger_partitions
SELECT name, range_from, range_to FROM jobengine.ledger_partitions();

-- name: ledger_notify_mode
SELECT coalesce((SELECT value FROM jobengine.settings WHERE name = 'notify_mode'), 'direct');

-- name: ledger_relay
SELECT jobengine.relay_v1($1::integer);

-- name: ledger_now
SELECT statement_timestamp();

-- name: retention_try_lock
-- Transaction-level: held by a transaction kept open for the whole pass, so it
-- means the same directly and behind a transaction pooler (which would lend a
-- session lock's server connection to someone else between statements).
SELECT pg_try_advisory_xact_lock(7666530082071394662);

-- name: retention_purge
SELECT removed, oldest, newest FROM jobengine.purge_jobs_v1($1::timestamptz, $2::integer, $3::boolean);

-- name: retention_drop
SELECT name, range_from, range_to, rows, max_id FROM jobengine.ledger_drop_v1($1::timestamptz, $2::boolean);

-- name: retention_record
SELECT jobengine.retention_record_v1($1::boolean, $2::interval, $3::interval, $4::bigint, $5::timestamptz,
                                     $6::timestamptz, $7::timestamptz, $8::bigint, $9::jsonb,
                                     $10::timestamptz, $11::integer, $12::interval);

-- name: retention_analyze
SELECT jobengine.ledger_analyze_v1();

-- name: retention_log_recent
SELECT id, ran_at, actor, role, dry_run, finished_jobs, audit, jobs_removed, jobs_finished_before,
       jobs_oldest_finished, jobs_newest_finished, ledger_rows_removed, partitions_dropped,
       ledger_removed_before, partitions_created, duration
FROM jobengine.retention_log ORDER BY id DESC LIMIT $1;

-- name: verify_job_range
-- The smallest and largest job id in the ledger or in jobs.
SELECT least((SELECT min(job_id) FROM jobengine.ledger), (SELECT min(id) FROM jobengine.jobs)) AS lo,
       greatest((SELECT max(job_id) FROM jobengine.ledger), (SELECT max(id) FROM jobengine.jobs)) AS hi;

-- name: verify_range
SELECT job_id, ledger_id, problem FROM jobengine.verify_ledger_v1($1::bigint, $2::bigint);

-- name: health_tables
-- Size and dead tuples of jobengine's tables (the ledger summed over its partitions).
SELECT t.name, sum(pg_table_size(t.oid))::bigint AS table_bytes,
       sum(pg_indexes_size(t.oid))::bigint AS index_bytes,
       sum(coalesce(s.n_live_tup, 0))::bigint AS live_rows,
       sum(coalesce(s.n_dead_tup, 0))::bigint AS dead_rows
FROM (SELECT c.oid, CASE WHEN c.relispartition AND c.relname LIKE 'ledger\_%' THEN 'ledger'
                         ELSE c.relname::text END AS name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'jobengine' AND c.relkind = 'r') t
LEFT JOIN pg_stat_user_tables s ON s.relid = t.oid
WHERE t.name IN ('jobs', 'ledger', 'retention_log')
GROUP BY t.name ORDER BY t.name;

-- name: health_horizon
-- What holds back vacuum: the oldest open transaction, the xmin horizon of
-- sessions, replication slots and prepared transactions (ages in seconds / xids).
SELECT
    (SELECT extract(epoch FROM max(statement_timestamp() - a.xact_start))
     FROM pg_stat_activity a WHERE a.xact_start IS NOT NULL AND a.pid <> pg_backend_pid()
       AND a.backend_type = 'client backend') AS oldest_transaction_seconds,
    (SELECT max(age(a.backend_xmin)) FROM pg_stat_activity a
     WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()) AS session_xmin_age,
    (SELECT max(greatest(age(s.xmin), age(s.catalog_xmin))) FROM pg_replication_slots s) AS slot_xmin_age,
    (SELECT count(*) FROM pg_replication_slots s WHERE NOT s.active) AS inactive_slots,
    (SELECT max(age(p.transaction)) FROM pg_prepared_xacts p) AS prepared_xact_age,
    age(datfrozenxid) AS database_xid_age
FROM pg_database WHERE datname = current_database();

-- name: health_retention
-- How far retention is behind: the last pass, the oldest finished job and
-- ledger day still there, and rows waiting in the default partition.
SELECT
    (SELECT max(r.ran_at) FROM jobengine.retention_log r WHERE NOT r.dry_run) AS last_pass,
    (SELECT min(j.finished_at) FROM jobengine.jobs j
     WHERE j.status IN ('completed', 'cancelled', 'failed')) AS oldest_finished,
    (SELECT min(p.range_from) FROM jobengine.ledger_partitions() p) AS oldest_partition,
    (SELECT max(p.range_to) FROM jobengine.ledger_partitions() p) AS newest_partition_end,
    (SELECT count(*) FROM jobengine.ledger_default) AS default_rows,
    statement_timestamp() AS now;

-- name: ledger_seal
-- Seal the days that ended $1 ago and are not sealed yet ($2: the first day, on the first pass).
SELECT day, rows, digest, sealed_at, actor FROM jobengine.ledger_seal_v1($1::interval, $2::date);

-- name: ledger_seals
SELECT day, rows, digest, sealed_at, actor FROM jobengine.ledger_seals
WHERE $1::date IS NULL OR day >= $1 ORDER BY day;

-- name: ledger_day_check
-- A sealed day as it stands: whether retention may have removed its rows
-- (then it is not read), else its rows and digest now.
SELECT r.removed, d.rows, d.digest
FROM (SELECT ((($1::date + 1)::timestamp AT TIME ZONE 'UTC') <= jobengine.ledger_removed_before())
             AS removed) r
LEFT JOIN LATERAL (SELECT * FROM jobengine.ledger_day_digest($1::date) WHERE NOT r.removed) d ON true;
