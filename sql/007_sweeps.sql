-- Sweeps (issue 15): repeated samples of one (batch, item, model), and an answer cache keyed
-- on the exact request. Repeats are numbered 1..N on the job; every attempt keeps the key of
-- its request, and a `cached` attempt the attempt it was answered from. (`cached` itself is
-- already admitted by the outcome CHECK of 004.)
ALTER TABLE jobs ADD COLUMN repeat INTEGER NOT NULL DEFAULT 1 CHECK (repeat >= 1);
DROP INDEX jobs_generate_key;
CREATE UNIQUE INDEX jobs_generate_key ON jobs(batch, item_id, model, repeat) WHERE kind = 'generate';

ALTER TABLE attempts ADD COLUMN cache_key TEXT;      -- hash of the exact request (src/cache.rs)
ALTER TABLE attempts ADD COLUMN cached_from INTEGER; -- for `cached`: the attempt whose answer was reused
-- A cache lookup: the newest `ok` answer given under a key.
CREATE INDEX attempts_cache ON attempts(cache_key, id) WHERE outcome = 'ok';
