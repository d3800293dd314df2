-- jobengine 0010: sealing a day reads it once, in index order, whatever the
-- statistics say.
--
-- ledger_day_digest (behind every seal, `audit verify --seals` and the
-- doctor's seal check) walks a day of ledger rows in (tx_id, id) order, 50,000
-- rows a step, from the last row of the step before. A day's partition is
-- sealed an hour after the day ends; before autovacuum has analyzed it (a
-- partition filled in one day often has not been), the planner estimates a
-- few thousand matching rows and answers each step with a parallel sequential
-- scan of the whole partition and a sort: seen at 29k rows/s, 214 s for a day
-- of 6.2M rows, each step reading every row again. With statistics it picks
-- the index, but also JIT-compiles every step (~12 ms) and starts two
-- parallel workers for it. A step is small by design, so the function pins
-- the plan its loop is written for: the (tx_id, id) index in order, no
-- sort, no bitmap, no parallel workers, no JIT. Measured on the same 2 cores:
-- 1.05M rows/s with or without statistics (3.75M rows in 3.6 s; 6.2M in
-- 5.8 s).

SET LOCAL search_path = pg_catalog, pg_temp;

ALTER FUNCTION jobengine.ledger_day_digest(date)
    SET enable_seqscan = off
    SET enable_bitmapscan = off
    SET enable_sort = off
    SET max_parallel_workers_per_gather = 0
    SET jit = off;
