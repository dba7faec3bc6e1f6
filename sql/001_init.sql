-- The first schema: models, the items and jobs queue, the append-only attempts log and runners.
-- Times are integer milliseconds since the Unix epoch; durations are milliseconds.

CREATE TABLE models (
    name         TEXT PRIMARY KEY,
    backend      TEXT NOT NULL CHECK (backend IN ('command', 'ollama', 'openai')),
    command      TEXT,                       -- template, for the command backend
    endpoints    TEXT NOT NULL DEFAULT '[]', -- JSON array of base URLs, for HTTP backends
    timeout_s    REAL,                       -- NULL = default
    timeout_auto INTEGER NOT NULL DEFAULT 0,
    concurrency  INTEGER NOT NULL DEFAULT 1 CHECK (concurrency >= 1),
    max_attempts INTEGER NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    settings     TEXT NOT NULL DEFAULT '{}', -- JSON: options, keep_alive, think, system, format
    api_key_env  TEXT,                       -- the variable's name; the key itself is never stored
    updated_at   INTEGER NOT NULL
);

-- One row per input record of a batch: the rendered prompt and the record's variables.
CREATE TABLE items (
    batch   TEXT NOT NULL,
    item_id TEXT NOT NULL,
    prompt  TEXT NOT NULL,
    vars    TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (batch, item_id)
) WITHOUT ROWID;

CREATE TABLE runners (
    id           INTEGER PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    pid_start    TEXT,            -- process start time, guards against pid reuse
    boot_id      TEXT,            -- a runner of an older boot is dead
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    stopped_at   INTEGER,
    stop_reason  TEXT
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    batch            TEXT NOT NULL,
    item_id          TEXT NOT NULL,
    model            TEXT NOT NULL,
    kind             TEXT NOT NULL DEFAULT 'generate' CHECK (kind IN ('generate', 'grade')),
    parent_id        INTEGER REFERENCES jobs(id),  -- the graded job, for kind = 'grade'
    rubric_id        INTEGER,                      -- for kind = 'grade'
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,   -- attempt rows so far: numbers 1..attempts
    charged          INTEGER NOT NULL DEFAULT 0,   -- attempts counted against the budget
    max_attempts     INTEGER,                      -- NULL = the model's setting
    not_before       INTEGER NOT NULL DEFAULT 0,   -- backoff: not claimed before this time
    runner_id        INTEGER REFERENCES runners(id),
    lease_token      INTEGER,
    lease_expires_at INTEGER,
    attempt_id       INTEGER,                      -- the current, or the successful, attempt
    last_outcome     TEXT,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    FOREIGN KEY (batch, item_id) REFERENCES items(batch, item_id)
);
CREATE UNIQUE INDEX jobs_generate_key ON jobs(batch, item_id, model) WHERE kind = 'generate';
CREATE UNIQUE INDEX jobs_grade_key ON jobs(parent_id, model, rubric_id) WHERE kind = 'grade';
CREATE INDEX jobs_claim ON jobs(state, model, not_before);
CREATE INDEX jobs_runner ON jobs(runner_id) WHERE state = 'running';

-- Append-only: one row per try. A row is written at claim and completed once; never deleted.
CREATE TABLE attempts (
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
                     'unavailable', 'empty', 'parse', 'lost', 'interrupted')),
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
CREATE INDEX attempts_latency ON attempts(model, outcome, duration_ms);
CREATE INDEX attempts_finished ON attempts(finished_at);
