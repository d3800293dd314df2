-- jobengine 0007: the ledger's days sealed, so a consistent rewrite shows too.
--
-- Verification (verify_ledger_v1) finds any row altered, removed or inserted
-- outside the engine, but not a whole chain rewritten consistently by
-- someone who knows the algorithm (a superuser): nothing inside the database
-- can tell that from the original. A copy kept outside can. Once a day ends
-- (by an hour: statements running across midnight have committed), one
-- daemon at a time seals it: the digest of that UTC day's ledger rows in
-- commit order, a sha256 chained over chunks of 50,000 rows' (hash, id),
-- written to jobengine.ledger_seals and logged (to the journal, under
-- systemd). `jobengine audit verify --seals FILE` recomputes each day of an
-- exported copy still in the ledger and names the days that differ.

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE TABLE jobengine.ledger_seals (
    -- a UTC day of ledger rows (their occurred_at)
    day date PRIMARY KEY,
    rows bigint NOT NULL CHECK (rows >= 0),
    digest bytea NOT NULL CHECK (length(digest) = 32),
    sealed_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    actor text NOT NULL
);
COMMENT ON TABLE jobengine.ledger_seals IS
    'One row per sealed UTC day of the ledger: its rows and their digest (export it: jobengine audit seals).';
CREATE TRIGGER ledger_seals_append_only BEFORE UPDATE OR DELETE ON jobengine.ledger_seals
    FOR EACH ROW EXECUTE FUNCTION jobengine.refuse_rewrite();
CREATE TRIGGER ledger_seals_no_truncate BEFORE TRUNCATE ON jobengine.ledger_seals
    FOR EACH STATEMENT EXECUTE FUNCTION jobengine.refuse_rewrite();
ALTER TABLE jobengine.ledger_seals ENABLE ALWAYS TRIGGER ledger_seals_append_only;
ALTER TABLE jobengine.ledger_seals ENABLE ALWAYS TRIGGER ledger_seals_no_truncate;

-- The digest of one UTC day of ledger rows, as it stands: its rows in commit
-- order ((tx_id, id): the relay's order, read through each partition's
-- ledger_cursor_idx), 50,000 at a time; each chunk's sha256 over every row's
-- hash and id is chained onto the day's digest so far. The id is in it so
-- that a row deleted and written again (a new id) changes the day too.
CREATE FUNCTION jobengine.ledger_day_digest(p_day date, OUT rows bigint, OUT digest bytea)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_from constant timestamptz := p_day::timestamp AT TIME ZONE 'UTC';
    v_to constant timestamptz := (p_day + 1)::timestamp AT TIME ZONE 'UTC';
    v_tx xid8 := '0'::xid8;
    v_id bigint := -1;
    v_n bigint;
    v_chunk bytea;
BEGIN
    IF p_day IS NULL THEN
        RAISE EXCEPTION 'jobengine: ledger_day_digest: the day must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    rows := 0;
    digest := sha256(convert_to('jobengine ledger day ' || p_day::text, 'UTF8'));
    LOOP
        WITH c AS MATERIALIZED (
            SELECT l.tx_id, l.id, l.hash FROM jobengine.ledger l
            WHERE l.occurred_at >= v_from AND l.occurred_at < v_to
              AND (l.tx_id, l.id) > (v_tx, v_id)
            ORDER BY l.tx_id, l.id
            LIMIT 50000
        ), last AS (
            SELECT c.tx_id, c.id FROM c ORDER BY c.tx_id DESC, c.id DESC LIMIT 1
        )
        SELECT (SELECT count(*) FROM c),
               (SELECT sha256(string_agg(coalesce(c.hash, '\x00'::bytea) || int8send(c.id), ''::bytea
                                         ORDER BY c.tx_id, c.id)) FROM c),
               last.tx_id, last.id
        INTO v_n, v_chunk, v_tx, v_id
        FROM last;
        EXIT WHEN NOT FOUND OR v_n = 0;
        rows := rows + v_n;
        digest := sha256(digest || v_chunk);
        EXIT WHEN v_n < 50000;
    END LOOP;
END
$$;

-- Seal every day not sealed yet that ended at least p_grace ago, oldest
-- first, starting after the newest sealed day (or, on the first pass, at
-- p_first: yesterday unless given). One session at a time (the caller holds
-- retention's lock); the days it sealed come back.
CREATE FUNCTION jobengine.ledger_seal_v1(p_grace interval DEFAULT interval '1 hour',
                                         p_first date DEFAULT NULL)
RETURNS SETOF jobengine.ledger_seals
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_day date;
    v_last date;
    v_digest record;
    v_row jobengine.ledger_seals;
BEGIN
    IF p_grace IS NULL OR p_grace < interval '0' THEN
        RAISE EXCEPTION 'jobengine: ledger_seal_v1: the grace period must be 0 or more, not %', p_grace
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the newest day that ended p_grace ago
    v_last := ((statement_timestamp() - p_grace) AT TIME ZONE 'UTC')::date - 1;
    SELECT max(s.day) + 1 INTO v_day FROM jobengine.ledger_seals s;
    v_day := coalesce(v_day, p_first, v_last);
    WHILE v_day <= v_last LOOP
        SELECT * INTO v_digest FROM jobengine.ledger_day_digest(v_day);
        INSERT INTO jobengine.ledger_seals (day, rows, digest, actor)
        VALUES (v_day, v_digest.rows, v_digest.digest, jobengine.current_actor())
        RETURNING * INTO v_row;
        RETURN NEXT v_row;
        v_day := v_day + 1;
    END LOOP;
END
$$;
