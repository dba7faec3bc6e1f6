-- Streamed answers (SQLite's 005): each attempt's streaming metrics as columns.
ALTER TABLE attempts ADD COLUMN ttft_ms DOUBLE PRECISION;
ALTER TABLE attempts ADD COLUMN tpot_ms DOUBLE PRECISION;
ALTER TABLE attempts ADD COLUMN e2e_ms DOUBLE PRECISION;
ALTER TABLE attempts ADD COLUMN output_tokens BIGINT;
ALTER TABLE attempts ADD COLUMN max_gap_ms DOUBLE PRECISION;
CREATE INDEX attempts_ttft ON attempts(model, ttft_ms, outcome, started_at) WHERE ttft_ms IS NOT NULL;
CREATE INDEX attempts_tpot ON attempts(model, tpot_ms, outcome, started_at) WHERE tpot_ms IS NOT NULL;
CREATE INDEX attempts_gap ON attempts(model, outcome, max_gap_ms, started_at) WHERE max_gap_ms IS NOT NULL;
