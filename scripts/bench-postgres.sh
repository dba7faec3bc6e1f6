#!/usr/bin/env bash
# The PostgreSQL section of scripts/bench.sh: jobs/s of 1, 2 and 4 runners sharing one
# PostgreSQL queue against 1 runner on SQLite, on `cat` jobs; claim latency p50/p99; the
# connections each runner holds; and the check that no job ran twice.
#
#   scripts/with-postgres.sh scripts/bench-postgres.sh     # a throwaway server on this machine
#   BENCH_PG=postgres://… scripts/bench-postgres.sh        # an existing, empty database
#
# Environment: BENCH_JOBS (default 2000), BENCH_RUNS (default 1), BENCH_BIN (a built llmbatch
# to measure instead of building this tree's, e.g. to compare two versions). Prints one table.
set -euo pipefail
cd "$(dirname "$0")/.."
PG=${BENCH_PG:-${LLMBATCH_TEST_PG:-}}
[ -n "$PG" ] || { echo "no PostgreSQL: run scripts/with-postgres.sh scripts/bench-postgres.sh" >&2; exit 2; }
JOBS=${BENCH_JOBS:-2000}
RUNS=${BENCH_RUNS:-1}
WORK=$(mktemp -d -t llmbatch-pgbench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
say() { printf '%s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.4f\n", e - s }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# pct P: the nearest-rank P-th percentile of the numbers on stdin
pct() { sort -g | awk -v p="$1" '{ v[NR] = $1 } END { r = int(NR * p / 100); if (r < NR * p / 100) r++; if (r < 1) r = 1; print v[r] }'; }

if [ -n "${BENCH_BIN:-}" ]; then
    B=$BENCH_BIN
else
    say "building (release)"
    cargo build --release --quiet --bin llmbatch
    B=$PWD/target/release/llmbatch
fi
awk -v n="$JOBS" 'BEGIN { print "id,prompt"; for (i = 1; i <= n; i++) printf "%d,prompt number %d: tell me a joke\n", i, i }' >"$WORK/p.csv"

psql_q() { psql "$PG" -Atqc "$1"; }
# A fresh queue in the PostgreSQL database: llmbatch's tables dropped and made again.
reset_pg() {
    psql_q "DROP TABLE IF EXISTS grades, rubrics, attempts, jobs, items, runners, models, llmbatch_schema CASCADE; DROP FUNCTION IF EXISTS llmbatch_now_ms()" >/dev/null
    $B -q --db "$PG" models set cat --backend command --command cat --concurrency 2 >/dev/null
    $B -q --db "$PG" enqueue --model cat "$WORK/p.csv" >/dev/null
}

# run_pg N: N runners at once, 2 slots each; prints seconds. Claim timings go to claims.N.
run_pg() {
    reset_pg
    local s pids=() i
    s=$(now)
    for i in $(seq 1 "$1"); do
        RUST_LOG=llmbatch::claim=debug $B -q --log-file "$WORK/log.$1.$i" --db "$PG" run --jobs 2 &
        pids+=($!)
    done
    # Connections per runner, sampled while they work through one psql session kept open:
    # a new psql per sample costs about 0.1 s of CPU (client, and a server backend forked and
    # set up), which on 2 cores would be measured as llmbatch's slowness.
    local peak=0 n
    coproc SAMPLER { psql "$PG" -Atq 2>/dev/null; }
    while kill -0 "${pids[0]}" 2>/dev/null; do
        echo "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = 'llmbatch';" >&"${SAMPLER[1]}"
        read -r -t 5 n <&"${SAMPLER[0]}" || n=0
        [ "$n" -gt "$peak" ] && peak=$n
        sleep 0.1
    done
    exec {SAMPLER[1]}>&-
    wait "$SAMPLER_PID" 2>/dev/null || true
    for p in "${pids[@]}"; do wait "$p"; done
    elapsed "$s"
    echo "$peak" >"$WORK/conns.$1"
    cat "$WORK"/log."$1".* | sed -n 's/.*claim took \([0-9.]*\) ms.*/\1/p' >>"$WORK/claims.$1"
    local twice ok
    twice=$(psql_q "SELECT COUNT(*) FROM (SELECT job_id FROM attempts WHERE outcome = 'ok' GROUP BY job_id HAVING COUNT(*) > 1) t")
    ok=$(psql_q "SELECT COUNT(*) FROM jobs WHERE state = 'done'")
    [ "$twice" = 0 ] && [ "$ok" = "$JOBS" ] ||
        { say "PostgreSQL, $1 runner(s): $ok of $JOBS done, $twice job(s) ran twice"; exit 1; }
}
run_sqlite() {
    rm -f "$WORK"/s.db*
    LLMBATCH_DB=$WORK/s.db $B -q models set cat --backend command --command cat --concurrency 2 >/dev/null
    LLMBATCH_DB=$WORK/s.db $B -q enqueue --model cat "$WORK/p.csv" >/dev/null
    local s; s=$(now)
    LLMBATCH_DB=$WORK/s.db $B -q run --jobs 2
    elapsed "$s"
}

for n in 1 2 4; do : >"$WORK/t.pg$n"; : >"$WORK/claims.$n"; done
: >"$WORK/t.sqlite"
for r in $(seq 1 "$RUNS"); do
    say "run $r of $RUNS: SQLite, 1 runner"
    run_sqlite >>"$WORK/t.sqlite"
    for n in 1 2 4; do
        say "run $r of $RUNS: PostgreSQL, $n runner(s)"
        run_pg "$n" >>"$WORK/t.pg$n"
    done
done
R_sqlite=$(rate "$JOBS" "$(median <"$WORK/t.sqlite")")
for n in 1 2 4; do
    eval "R_pg$n=$(rate "$JOBS" "$(median <"$WORK/t.pg$n")")"
    eval "P50_$n=$(pct 50 <"$WORK/claims.$n")"
    eval "P99_$n=$(pct 99 <"$WORK/claims.$n")"
    eval "C_$n=$(awk -v c="$(cat "$WORK/conns.$n")" -v n="$n" 'BEGIN { printf "%.1f", c / n }')"
done
met=$(awk -v a="$R_pg2" -v b="$R_sqlite" 'BEGIN { print (a >= 0.5 * b ? "yes" : "NO") }')
cat <<EOF

PostgreSQL section — $(date -u +%Y-%m-%d), $(nproc) cores, server on this machine; $JOBS jobs of \`cat\`, 2 slots per runner, median of $RUNS run(s)

| runners | engine | jobs/s | × 1 runner on SQLite | claim p50 (ms) | claim p99 (ms) | connections per runner |
|---:|---|---:|---:|---:|---:|---:|
| 1 | SQLite | $R_sqlite | 1.00× | | | |
| 1 | PostgreSQL | $R_pg1 | $(ratio "$R_pg1" "$R_sqlite")× | $P50_1 | $P99_1 | $C_1 |
| 2 | PostgreSQL | $R_pg2 | $(ratio "$R_pg2" "$R_sqlite")× | $P50_2 | $P99_2 | $C_2 |
| 4 | PostgreSQL | $R_pg4 | $(ratio "$R_pg4" "$R_sqlite")× | $P50_4 | $P99_4 | $C_4 |

target: 2 runners on PostgreSQL ≥ 0.5× 1 runner on SQLite: $met; every run: each job done once, no job ran twice
EOF
