-- Claims take the pending jobs of one model in (not_before, id) order and stop after a few.
-- jobs_claim (state, model, not_before) cannot give that order, so every claim read and
-- sorted every pending job of its model: 1 ms per claim at 2,000 pending, growing with the
-- queue. A partial index in exactly that order lets a claim read only the rows it takes
-- (and any it skips because another runner holds them).
CREATE INDEX jobs_pending ON jobs(model, not_before, id) WHERE state = 'pending';
-- attempts(job_id) is the leading column of UNIQUE (job_id, number): the second index only
-- cost every attempt's insert and finish.
DROP INDEX attempts_job;
