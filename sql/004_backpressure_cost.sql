-- Backpressure and hosted APIs (issue 10): pacing and prices per model, and the outcome
-- `throttled` (a 429 / 503 / "server busy" answer: the server's backpressure, never charged).
-- SQLite cannot change a CHECK constraint in place, so `attempts` is rebuilt with the wider
-- list (the migration runner turns foreign keys off around migrations, as SQLite's documented
-- procedure asks). The list also admits `stall` and `cached`, the outcomes DESIGN.md plans
-- next, so adding them later needs no second rebuild of the largest table.

ALTER TABLE models ADD COLUMN rpm INTEGER CHECK (rpm IS NULL OR rpm >= 1);        -- requests per minute
ALTER TABLE models ADD COLUMN tpm INTEGER CHECK (tpm IS NULL OR tpm >= 1);        -- tokens per minute
ALTER TABLE models ADD COLUMN price_in REAL CHECK (price_in IS NULL OR price_in >= 0);    -- USD per 1M input tokens
ALTER TABLE models ADD COLUMN price_out REAL CHECK (price_out IS NULL OR price_out >= 0);  -- USD per 1M output tokens

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
                     'unavailable', 'empty', 'parse', 'lost', 'interrupted', 'throttled',
                     'stall', 'cached')),
    charged      INTEGER,         -- 1 when the attempt counts against the job's budget
    exit_code    INTEGER,
    signal       INTEGER,
    http_status  INTEGER,
    output       TEXT,
    reasoning    TEXT,            -- thinking kept apart from the answer
    raw_output   TEXT,            -- the text as the model sent it, when it differs from output
    stderr       TEXT,
    error        TEXT,
    timings      TEXT,            -- JSON: backend timings and token counts
    UNIQUE (job_id, number)
);
INSERT INTO attempts_new SELECT * FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;
CREATE INDEX attempts_latency ON attempts(model, outcome, duration_ms, started_at);
CREATE INDEX attempts_finished ON attempts(finished_at);
CREATE INDEX attempts_truncated ON attempts(model)
    WHERE json_extract(timings, '$.done_reason') = 'length';
CREATE INDEX attempts_timed ON attempts(model) WHERE timings IS NOT NULL;
