-- Sweeps: repeated samples of one (batch, item, model), and an answer cache keyed on the
-- exact request. Repeats are numbered 1..N on the job; a cached attempt keeps the key it was
-- answered under and the attempt it was answered from.
ALTER TABLE jobs ADD COLUMN repeat INTEGER NOT NULL DEFAULT 1 CHECK (repeat >= 1);
DROP INDEX jobs_generate_key;
CREATE UNIQUE INDEX jobs_generate_key ON jobs(batch, item_id, model, repeat) WHERE kind = 'generate';

-- The outcome CHECK gains `cached`: SQLite changes a CHECK only by rebuilding the table
-- (foreign keys are off while migrations run; see db::migrate).
CREATE TABLE attempts_new (
    id           INTEGER PRIMARY KEY,
    job_id       INTEGER NOT NULL REFERENCES jobs(id),
    number       INTEGER NOT NULL,
    model        TEXT NOT NULL,
    batch        TEXT NOT NULL,
    runner_id    INTEGER REFERENCES runners(id),
    endpoint     TEXT,
    timeout_s    REAL,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    duration_ms  INTEGER,
    outcome      TEXT CHECK (outcome IN ('ok', 'timeout', 'exit', 'crash', 'spawn', 'http',
                     'unavailable', 'empty', 'parse', 'lost', 'interrupted', 'cached')),
    charged      INTEGER,
    exit_code    INTEGER,
    signal       INTEGER,
    http_status  INTEGER,
    output       TEXT,
    reasoning    TEXT,
    raw_output   TEXT,
    stderr       TEXT,
    error        TEXT,
    timings      TEXT,
    cache_key    TEXT,            -- hash of the exact request (see src/cache.rs)
    cached_from  INTEGER,         -- for `cached`: the attempt whose answer was reused
    UNIQUE (job_id, number)
);
INSERT INTO attempts_new (id, job_id, number, model, batch, runner_id, endpoint, timeout_s,
        started_at, finished_at, duration_ms, outcome, charged, exit_code, signal, http_status,
        output, reasoning, raw_output, stderr, error, timings)
    SELECT id, job_id, number, model, batch, runner_id, endpoint, timeout_s,
        started_at, finished_at, duration_ms, outcome, charged, exit_code, signal, http_status,
        output, reasoning, raw_output, stderr, error, timings
    FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;
CREATE INDEX attempts_latency ON attempts(model, outcome, duration_ms, started_at);
CREATE INDEX attempts_finished ON attempts(finished_at);
CREATE INDEX attempts_truncated ON attempts(model)
    WHERE json_extract(timings, '$.done_reason') = 'length';
CREATE INDEX attempts_timed ON attempts(model) WHERE timings IS NOT NULL;
-- A cache lookup: the newest answer given under a key.
CREATE INDEX attempts_cache ON attempts(cache_key, id) WHERE outcome = 'ok';
