-- Streamed answers (issue 13): a new outcome `stall`, and each attempt's streaming metrics as
-- columns, so `report latency` reads percentiles from an index instead of parsing JSON.
-- SQLite cannot change a CHECK constraint in place, so `attempts` is rebuilt (SQLite's
-- documented 12-step procedure; the migration runs with foreign keys off and checks them
-- before it commits).
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
                     'unavailable', 'empty', 'parse', 'lost', 'interrupted', 'stall')),
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
    ttft_ms      REAL,            -- request sent → first chunk with generated text (streamed only)
    tpot_ms      REAL,            -- (e2e − ttft) / (output tokens − 1)
    e2e_ms       REAL,            -- request sent → last byte of the answer (HTTP only)
    output_tokens INTEGER,        -- from usage / eval_count
    max_gap_ms   REAL,            -- longest silence between chunks once the stream started
    UNIQUE (job_id, number)
);
INSERT INTO attempts_new (id, job_id, number, model, batch, runner_id, endpoint, timeout_s,
        started_at, finished_at, duration_ms, outcome, charged, exit_code, signal, http_status,
        output, reasoning, raw_output, stderr, error, timings)
    SELECT id, job_id, number, model, batch, runner_id, endpoint, timeout_s, started_at,
        finished_at, duration_ms, outcome, charged, exit_code, signal, http_status, output,
        reasoning, raw_output, stderr, error, timings
    FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;
CREATE INDEX attempts_latency ON attempts(model, outcome, duration_ms, started_at);
CREATE INDEX attempts_finished ON attempts(finished_at);
CREATE INDEX attempts_truncated ON attempts(model)
    WHERE json_extract(timings, '$.done_reason') = 'length';
CREATE INDEX attempts_timed ON attempts(model) WHERE timings IS NOT NULL;
-- Percentiles of the streaming metrics per model, read in order (no sort) from these; only
-- streamed attempts are in them, so a database of command models pays nothing.
CREATE INDEX attempts_ttft ON attempts(model, ttft_ms, outcome, started_at)
    WHERE ttft_ms IS NOT NULL;
CREATE INDEX attempts_tpot ON attempts(model, tpot_ms, outcome, started_at)
    WHERE tpot_ms IS NOT NULL;
CREATE INDEX attempts_gap ON attempts(model, outcome, max_gap_ms, started_at)
    WHERE max_gap_ms IS NOT NULL;
