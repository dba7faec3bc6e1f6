-- Streamed answers (issue 13): each attempt's streaming metrics as columns, so `report latency`
-- reads percentiles from an index instead of parsing JSON. (The `stall` outcome is already
-- admitted by 004's CHECK.)
ALTER TABLE attempts ADD COLUMN ttft_ms REAL;        -- request sent → first chunk with generated text (streamed only)
ALTER TABLE attempts ADD COLUMN tpot_ms REAL;        -- (e2e − ttft) / (output tokens − 1)
ALTER TABLE attempts ADD COLUMN e2e_ms REAL;         -- request sent → last byte of the answer (HTTP only)
ALTER TABLE attempts ADD COLUMN output_tokens INTEGER; -- from usage / eval_count
ALTER TABLE attempts ADD COLUMN max_gap_ms REAL;     -- longest silence between chunks once the stream started
-- Percentiles of the streaming metrics per model, read in order (no sort) from these; only
-- streamed attempts are in them, so a database of command models pays nothing.
CREATE INDEX attempts_ttft ON attempts(model, ttft_ms, outcome, started_at)
    WHERE ttft_ms IS NOT NULL;
CREATE INDEX attempts_tpot ON attempts(model, tpot_ms, outcome, started_at)
    WHERE tpot_ms IS NOT NULL;
CREATE INDEX attempts_gap ON attempts(model, outcome, max_gap_ms, started_at)
    WHERE max_gap_ms IS NOT NULL;
