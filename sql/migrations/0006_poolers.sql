-- jobengine 0006: the writer's name survives a transaction pooler.
--
-- Behind PgBouncer in transaction mode a client's statements run on whichever
-- server connection is free, so a session setting (jobengine.actor, given at
-- start-up) would name the wrong writer, and PgBouncer refuses unknown
-- start-up parameters anyway. What PgBouncer does carry per client is
-- application_name: it sets it again on every server connection it lends the
-- client. jobengine's pooled connections therefore name themselves
-- `jobengine:<actor>`, and every place that read jobengine.actor now reads
-- jobengine.session_actor(): jobengine.actor if set, else the name after
-- `jobengine:` in application_name, else 'sql'. Who may pass for the engine
-- is unchanged (jobengine.writer_trusted(), by role).

SET LOCAL search_path = pg_catalog, pg_temp;

CREATE FUNCTION jobengine.session_actor() RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT coalesce(
        nullif(current_setting('jobengine.actor', true), ''),
        CASE WHEN current_setting('application_name', true) LIKE 'jobengine:_%'
             THEN substr(current_setting('application_name', true), 11) END,
        'sql');
END;

CREATE OR REPLACE FUNCTION jobengine.current_actor() RETURNS text
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT CASE WHEN jobengine.writer_trusted() THEN jobengine.session_actor() ELSE 'sql' END;
END;

-- The functions that read the setting inline (the status guard, timeline
-- notes, the retention record) are redefined with the one expression
-- replaced, so their bodies stay exactly as their migrations wrote them.
DO $$
DECLARE
    v_old constant text := $q$coalesce(nullif(current_setting('jobengine.actor', true), ''), 'sql')$q$;
    r record;
BEGIN
    FOR r IN
        SELECT p.oid, pg_get_functiondef(p.oid) AS def
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'jobengine' AND p.prosrc LIKE '%' || v_old || '%'
    LOOP
        EXECUTE replace(r.def, v_old, 'jobengine.session_actor()');
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'jobengine' AND p.proname <> 'session_actor'
                 AND p.prosrc LIKE '%current_setting(''jobengine.actor''%') THEN
        RAISE EXCEPTION 'jobengine 0006: a function still reads jobengine.actor itself';
    END IF;
END;
$$;
