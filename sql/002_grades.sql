-- Grading: rubrics (prompt templates for grader models) and the parsed verdicts of grade jobs.

CREATE TABLE rubrics (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    body       TEXT NOT NULL,   -- the template, with {prompt}, {output} and item variables
    pass_field TEXT,            -- which parsed field is the pass/fail verdict
    score_field TEXT,           -- which parsed field is the score
    scale_min  REAL,
    scale_max  REAL,
    fields     TEXT NOT NULL DEFAULT '[]', -- JSON array of the field names the grader must give
    UNIQUE (name, body)
);

CREATE TABLE grades (
    job_id        INTEGER PRIMARY KEY REFERENCES jobs(id),  -- the grade job
    graded_job_id INTEGER NOT NULL REFERENCES jobs(id),
    attempt_id    INTEGER NOT NULL REFERENCES attempts(id),
    grader        TEXT NOT NULL,
    pass          INTEGER,      -- 1 / 0, NULL when the rubric has no verdict
    score         REAL,
    reason        TEXT,
    fields        TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX grades_graded ON grades(graded_job_id);
