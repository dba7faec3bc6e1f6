-- Indexes that keep `report` fast over millions of attempts (all sections under 0.5 s at 1 M).
-- attempts_latency gains started_at, so percentiles over a --since window (and the timeout
-- advice's 7 days) read only the index; p95/p99 are found scanning down from the top.
DROP INDEX attempts_latency;
CREATE INDEX attempts_latency ON attempts(model, outcome, duration_ms, started_at);
-- Truncated answers, counted by `report failures` without reading every attempt's timings.
CREATE INDEX attempts_truncated ON attempts(model)
    WHERE json_extract(timings, '$.done_reason') = 'length';
-- Attempts with backend timings (HTTP models), for `report latency --breakdown`.
CREATE INDEX attempts_timed ON attempts(model) WHERE timings IS NOT NULL;
