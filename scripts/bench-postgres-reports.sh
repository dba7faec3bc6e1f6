#!/usr/bin/env bash
# Reads on a big PostgreSQL queue: time and peak RSS of `report`, `report --format html` and
# `export` over BENCH_ATTEMPTS attempts (default 200,000) written by SQL, as scripts/bench.sh
# writes its SQLite history: two models, 6 days, 2 % timeouts, 1 % exits, Ollama timings on a
# tenth, every job done or failed with one attempt.
#
#   scripts/with-postgres.sh scripts/bench-postgres-reports.sh   # a throwaway server here
#   BENCH_PG=postgres://… scripts/bench-postgres-reports.sh      # a database of your own:
#                                                                # llmbatch's tables are replaced
#
# Environment: BENCH_ATTEMPTS, BENCH_RUNS (default 3; the median time and the largest RSS
# are shown), BENCH_BIN (a binary to measure instead of building target/release/llmbatch).
set -euo pipefail
cd "$(dirname "$0")/.."
PG=${BENCH_PG:-${LLMBATCH_TEST_PG:-}}
[ -n "$PG" ] || { echo "no PostgreSQL: run scripts/with-postgres.sh scripts/bench-postgres-reports.sh" >&2; exit 2; }
N=${BENCH_ATTEMPTS:-200000}
RUNS=${BENCH_RUNS:-3}
export PGOPTIONS="-c client_min_messages=warning"
WORK=$(mktemp -d -t llmbatch-pgreports.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
say() { printf '%s\n' "$*" >&2; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if [ -n "${BENCH_BIN:-}" ]; then
    B=$BENCH_BIN
else
    say "building (release)"
    cargo build --release --quiet --bin llmbatch
    B=$PWD/target/release/llmbatch
fi
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

say "writing $N attempts"
psql "$PG" -Atqc "DROP TABLE IF EXISTS grades, rubrics, attempts, jobs, items, runners, models, llmbatch_schema CASCADE; DROP FUNCTION IF EXISTS llmbatch_now_ms()" >/dev/null
$B -q --db "$PG" models set cat --backend command --command cat >/dev/null
psql "$PG" -q -v ON_ERROR_STOP=1 >/dev/null <<SQL
BEGIN;
INSERT INTO items (batch, item_id, prompt)
SELECT 'big', g::text, 'prompt number ' || g FROM generate_series(1, $N) g;
INSERT INTO jobs (id, batch, item_id, model, state, attempts, charged, attempt_id,
                  last_outcome, created_at, updated_at)
OVERRIDING SYSTEM VALUE
SELECT g, 'big', g::text, CASE WHEN g % 2 = 0 THEN 'cat-b' ELSE 'cat' END,
       CASE WHEN g % 50 = 0 OR g % 100 = 1 THEN 'failed' ELSE 'done' END, 1, 1, g,
       CASE WHEN g % 50 = 0 THEN 'timeout' WHEN g % 100 = 1 THEN 'exit' ELSE 'ok' END,
       t.now - 6 * 86400000, t.now - 6 * 86400000 + g * (6 * 86400000 / $N)
FROM generate_series(1, $N) g, (SELECT llmbatch_now_ms() AS now) t;
INSERT INTO attempts (id, job_id, number, model, batch, timeout_s, started_at, finished_at,
                      duration_ms, outcome, charged, exit_code, output, timings)
OVERRIDING SYSTEM VALUE
SELECT j.id, j.id, 1, j.model, j.batch, 300, j.updated_at,
       j.updated_at + (j.id * 7919) % 20000, (j.id * 7919) % 20000, j.last_outcome, 1,
       CASE WHEN j.id % 100 = 1 THEN 1 END, 'out ' || j.id,
       CASE WHEN j.id % 10 = 3 THEN json_build_object(
            'total_duration', ((j.id * 7919) % 20000) * 900000,
            'load_duration', CASE WHEN j.id % 100 = 3 THEN 2000000000 ELSE 20000000 END,
            'prompt_eval_duration', 100000000,
            'eval_duration', ((j.id * 7919) % 20000) * 800000,
            'eval_count', (j.id * 7919) % 2000)::text END
FROM jobs j;
SELECT setval(pg_get_serial_sequence('jobs', 'id'), $N);
SELECT setval(pg_get_serial_sequence('attempts', 'id'), $N);
COMMIT;
ANALYZE;
SQL

# measure NAME ARGS…: median seconds and largest peak RSS (MiB) of RUNS runs.
measure() {
    local name=$1
    shift
    : >"$WORK/t"
    : >"$WORK/m"
    for _ in $(seq 1 "$RUNS"); do
        /usr/bin/time -f "%e %M" -o "$WORK/one" "$B" -q --db "$PG" "$@" >"$WORK/out"
        awk '{ print $1 }' "$WORK/one" >>"$WORK/t"
        awk '{ print $2 }' "$WORK/one" >>"$WORK/m"
    done
    printf '| %s | %s s | %s MiB | %s |\n' "$name" "$(median <"$WORK/t")" \
        "$(sort -g "$WORK/m" | tail -1 | awk '{ printf "%.1f", $1 / 1024 }')" \
        "$(wc -c <"$WORK/out" | awk '{ printf "%.1f MB", $1 / 1e6 }')"
}

echo "| read over $N attempts | time (median of $RUNS) | peak RSS | output |"
echo "|---|---:|---:|---:|"
measure "report" report
measure "report status latency failures timeouts throughput runners" \
    report status latency failures timeouts throughput runners
measure "report --format html" report --format html
measure "export --format jsonl" export --format jsonl
measure "export --format csv" export --format csv
