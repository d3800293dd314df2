-- Named queries on running jobs' leases.

-- name: lease_renew_many
-- Extend the leases this owner still holds; the ids that come back kept theirs.
UPDATE jobengine.jobs AS j
SET lease_expires_at = coalesce($4::timestamptz, now()) + $5::interval
FROM unnest($2::bigint[], $3::integer[]) AS t(id, attempt)
WHERE j.id = t.id AND j.attempt = t.attempt
  AND j.status = 'running' AND j.lease_owner = $1
RETURNING j.id;

-- name: lease_reap_expired
-- running -> failed (lease_expired) for jobs whose lease ran out; safe to run
-- from every daemon at once (SKIP LOCKED). The caller applies the retry policy
-- in the same transaction.
UPDATE jobengine.jobs AS j
SET status = 'failed', status_reason = 'lease_expired',
    updated_at = coalesce($1::timestamptz, now()),
    last_error = 'LeaseExpired: the lease held by ' || coalesce(j.lease_owner, '?')
                 || ' expired at ' || j.lease_expires_at::text
WHERE j.id IN (
    SELECT r.id FROM jobengine.jobs r
    WHERE r.status = 'running' AND r.lease_expires_at < coalesce($1::timestamptz, now())
    ORDER BY r.lease_expires_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
RETURNING j.*;
