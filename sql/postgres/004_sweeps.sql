-- Sweeps (SQLite's 007): repeats of one (batch, item, model), and the answer cache.
ALTER TABLE jobs ADD COLUMN repeat BIGINT NOT NULL DEFAULT 1 CHECK (repeat >= 1);
DROP INDEX jobs_generate_key;
CREATE UNIQUE INDEX jobs_generate_key ON jobs(batch, item_id, model, repeat) WHERE kind = 'generate';
ALTER TABLE attempts ADD COLUMN cache_key TEXT;
ALTER TABLE attempts ADD COLUMN cached_from BIGINT;
CREATE INDEX attempts_cache ON attempts(cache_key, id) WHERE outcome = 'ok';
