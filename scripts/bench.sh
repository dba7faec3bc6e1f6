#!/usr/bin/env bash
# Benchmark: is llmbatch ever the bottleneck? Prints one table of medians and ratios.
#
#   scripts/bench.sh                  # full: 10,000 jobs, 1,000,000 prompts, 3 alternating runs
#   BENCH_QUICK=1 scripts/bench.sh    # quick look: 2,000 jobs, 100,000 prompts, 1 run
#   scripts/with-postgres.sh scripts/bench.sh   # and the PostgreSQL section (scripts/bench-postgres.sh)
#
# Environment: BENCH_RUNS (alternating runs per measurement), BENCH_JOBS (jobs for the runner
# comparison), BENCH_BIG (prompts for enqueue / report), BENCH_DIR (work directory, default a
# temp dir, removed at the end unless BENCH_KEEP=1).
#
# What is compared (all on the same prompts, 2 at a time, `cat` as the "model"):
#   llmbatch     run --jobs 2 on a command model `cat` with concurrency 2: a child process per
#                attempt, every claim and result committed (WAL, synchronous=NORMAL)
#   parallel     GNU parallel -j2 --joblog LOG 'cat < {}'   (bookkeeping in a joblog)
#   xargs        xargs -P2 -n1 cat                          (no bookkeeping at all)
#   spawn limit  examples/spawn_limit.rs: 2 threads spawning cat with piped stdin, nothing else
#   + commits    the same loop committing twice per job, synchronous=NORMAL and FULL
# and: enqueue of BENCH_BIG prompts; every report section over BENCH_BIG attempts;
# re-enqueueing BENCH_JOBS done prompts; a run with nothing to do; peak RSS of run over
# 10 x BENCH_JOBS jobs against BENCH_JOBS jobs; `run --cache` answering BENCH_CACHE jobs
# (default 100,000) whose identical requests were answered in another batch.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
    RUNS=${BENCH_RUNS:-1}; JOBS=${BENCH_JOBS:-2000}; BIG=${BENCH_BIG:-100000}
else
    RUNS=${BENCH_RUNS:-3}; JOBS=${BENCH_JOBS:-10000}; BIG=${BENCH_BIG:-1000000}
fi
MEM_JOBS=$((JOBS * 10))
CACHE=${BENCH_CACHE:-100000}
WORK=${BENCH_DIR:-$(mktemp -d -t llmbatch-bench.XXXXXX)}
mkdir -p "$WORK"
[ "${BENCH_KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT

say() { printf '%s\n' "$*" >&2; }
need() { # need COMMAND PACKAGE: install with apt-get when missing
    command -v "$1" >/dev/null 2>&1 && return
    say "installing $2 (for $1)"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y -qq "$2" >/dev/null 2>&1 ||
        { $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq "$2" >/dev/null; }
}
need parallel parallel
need sqlite3 sqlite3
[ -x /usr/bin/time ] || need /usr/bin/time time

say "building (release)"
cargo build --release --quiet --bin llmbatch --example spawn_limit
B=$ROOT/target/release/llmbatch
LIMIT=$ROOT/target/release/examples/spawn_limit

now() { date +%s.%N; }
# elapsed START: seconds since START
elapsed() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.4f\n", e - s }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# rate N SECONDS: jobs per second
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", n / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
ok_if() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { r = (op == "<" ? v < t : v >= t); print (r ? "yes" : "NO") }'; }

prompts_csv() { # prompts_csv N FILE
    awk -v n="$1" 'BEGIN { print "id,prompt"; for (i = 1; i <= n; i++) printf "%d,prompt number %d: tell me a joke\n", i, i }' >"$2"
}

say "preparing $JOBS prompts"
prompts_csv "$JOBS" "$WORK/p.csv"
tail -n +2 "$WORK/p.csv" | cut -d, -f2- >"$WORK/p.txt"
mkdir -p "$WORK/files"
awk -v dir="$WORK/files" '{ f = sprintf("%s/%06d", dir, NR); printf "%s", $0 > f; close(f) }' "$WORK/p.txt"
ls "$WORK/files" | sed "s|^|$WORK/files/|" >"$WORK/files.txt"

export LLMBATCH_DB=$WORK/template.db
$B -q models set cat --backend command --command cat --concurrency 2 >/dev/null
$B -q enqueue --model cat "$WORK/p.csv" >/dev/null

run_llmbatch() {
    rm -f "$WORK"/run.db*
    cp "$WORK/template.db" "$WORK/run.db"
    local s; s=$(now)
    LLMBATCH_DB=$WORK/run.db $B -q run --jobs 2
    elapsed "$s"
}
run_parallel() {
    local s; s=$(now)
    parallel -j2 --joblog "$WORK/joblog" 'cat < {}' <"$WORK/files.txt" >/dev/null
    elapsed "$s"
}
run_xargs() {
    local s; s=$(now)
    xargs -P2 -n1 cat <"$WORK/files.txt" >/dev/null
    elapsed "$s"
}
run_limit() { local r; r=$("$LIMIT" "$WORK/p.txt" 2 "$@"); awk -v n="$JOBS" -v r="$r" 'BEGIN { printf "%.4f\n", n / r }'; }

: >"$WORK/t.llmbatch"; : >"$WORK/t.parallel"; : >"$WORK/t.xargs"; : >"$WORK/t.limit"
: >"$WORK/t.normal"; : >"$WORK/t.full"
for r in $(seq 1 "$RUNS"); do
    say "runner comparison, run $r of $RUNS ($JOBS jobs each)"
    run_llmbatch >>"$WORK/t.llmbatch"
    run_parallel >>"$WORK/t.parallel"
    run_xargs >>"$WORK/t.xargs"
    run_limit >>"$WORK/t.limit"
    run_limit --commit NORMAL "$WORK/limit.db" >>"$WORK/t.normal"
    run_limit --commit FULL "$WORK/limit.db" >>"$WORK/t.full"
done
for t in llmbatch parallel xargs limit normal full; do
    eval "R_$t=$(rate "$JOBS" "$(median <"$WORK/t.$t")")"
done
# Every attempt recorded?
ATT=$(sqlite3 "$WORK/run.db" "SELECT COUNT(*) FROM attempts WHERE outcome = 'ok'")
[ "$ATT" = "$JOBS" ] || { say "llmbatch recorded $ATT ok attempts, expected $JOBS"; exit 1; }

say "re-enqueue of $JOBS done prompts, and a run with nothing to do"
: >"$WORK/t.reenq"; : >"$WORK/t.noop"
for r in $(seq 1 $((RUNS + 2))); do
    s=$(now); LLMBATCH_DB=$WORK/run.db $B -q enqueue --model cat "$WORK/p.csv" >/dev/null; elapsed "$s" >>"$WORK/t.reenq"
    s=$(now); LLMBATCH_DB=$WORK/run.db $B -q run; elapsed "$s" >>"$WORK/t.noop"
done
T_reenq=$(grep . "$WORK/t.reenq" | median); T_noop=$(grep . "$WORK/t.noop" | median)

say "enqueue of $BIG prompts"
prompts_csv "$BIG" "$WORK/big.csv"
: >"$WORK/t.enqueue"
for r in $(seq 1 "$RUNS"); do
    rm -f "$WORK"/big.db*
    s=$(now); LLMBATCH_DB=$WORK/big.db $B -q enqueue --model cat --batch big "$WORK/big.csv" >/dev/null
    elapsed "$s" >>"$WORK/t.enqueue"
done
T_enqueue=$(grep . "$WORK/t.enqueue" | median)

say "report over $BIG attempts"
# Attempts are made by SQL: two models, 6 days of history, 2 % timeouts, 1 % exits, Ollama
# timings on a tenth; every job done or failed, one attempt each.
NOW_MS=$(($(date +%s) * 1000))
sqlite3 "$WORK/big.db" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
UPDATE jobs SET model = 'cat-b' WHERE id % 2 = 0;
INSERT INTO attempts (id, job_id, number, model, batch, timeout_s, started_at, finished_at,
                      duration_ms, outcome, charged, exit_code, output, timings)
SELECT id, id, 1, model, batch, 300,
       $NOW_MS - 6 * 86400000 + id * (6 * 86400000 / $BIG),
       $NOW_MS - 6 * 86400000 + id * (6 * 86400000 / $BIG) + (id * 7919) % 20000,
       (id * 7919) % 20000,
       CASE WHEN id % 50 = 0 THEN 'timeout' WHEN id % 100 = 1 THEN 'exit' ELSE 'ok' END,
       1, CASE WHEN id % 100 = 1 THEN 1 END, 'out ' || id,
       CASE WHEN id % 10 = 3 THEN json_object('total_duration', ((id * 7919) % 20000) * 900000,
            'load_duration', CASE WHEN id % 100 = 3 THEN 2000000000 ELSE 20000000 END,
            'prompt_eval_duration', 100000000, 'eval_duration', ((id * 7919) % 20000) * 800000,
            'eval_count', (id * 7919) % 2000) END
FROM jobs;
UPDATE jobs SET attempts = 1, charged = 1, attempt_id = id,
       state = CASE WHEN id % 50 = 0 OR id % 100 = 1 THEN 'failed' ELSE 'done' END,
       last_outcome = CASE WHEN id % 50 = 0 THEN 'timeout' WHEN id % 100 = 1 THEN 'exit' ELSE 'ok' END;
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
: >"$WORK/t.report"; : >"$WORK/t.breakdown"
for r in $(seq 1 $((RUNS + 2))); do
    s=$(now)
    LLMBATCH_DB=$WORK/big.db $B -q report status latency failures timeouts throughput runners \
        >"$WORK/report.txt"
    elapsed "$s" >>"$WORK/t.report"
    s=$(now)
    LLMBATCH_DB=$WORK/big.db $B -q report latency --breakdown >"$WORK/breakdown.txt"
    elapsed "$s" >>"$WORK/t.breakdown"
done
T_report=$(grep . "$WORK/t.report" | median)
T_breakdown=$(grep . "$WORK/t.breakdown" | median)

say "peak memory of run over $MEM_JOBS and $JOBS jobs"
rss() { # rss N: peak RSS (KiB) of run over N fresh jobs
    rm -f "$WORK"/mem.db*
    prompts_csv "$1" "$WORK/mem.csv"
    LLMBATCH_DB=$WORK/mem.db $B -q models set cat --backend command --command cat --concurrency 2 >/dev/null
    LLMBATCH_DB=$WORK/mem.db $B -q enqueue --model cat "$WORK/mem.csv" >/dev/null
    LLMBATCH_DB=$WORK/mem.db /usr/bin/time -f %M -o "$WORK/rss" $B -q run --jobs 2
    cat "$WORK/rss"
}
RSS_BIG=$(rss "$MEM_JOBS"); RSS_SMALL=$(rss "$JOBS")
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

say "run --cache over $CACHE answered jobs"
# Batch a is answered for real (cat, 4 at a time); batch b asks the same: every job from the
# cache, no process started.
rm -f "$WORK"/cache.db*
prompts_csv "$CACHE" "$WORK/cache.csv"
export LLMBATCH_DB=$WORK/cache.db
$B -q enqueue --model cat --batch a "$WORK/cache.csv" >/dev/null
$B -q models set cat --backend command --command cat --concurrency 4 >/dev/null
$B -q run --jobs 4
: >"$WORK/t.cache"
for r in $(seq 1 "$RUNS"); do
    sqlite3 "$WORK/cache.db" "DELETE FROM attempts WHERE batch = 'b'; DELETE FROM jobs WHERE batch = 'b'; DELETE FROM items WHERE batch = 'b';"
    $B -q enqueue --model cat --batch b "$WORK/cache.csv" >/dev/null
    s=$(now); $B -q run --cache --batch b; elapsed "$s" >>"$WORK/t.cache"
done
unset LLMBATCH_DB
T_cache=$(grep . "$WORK/t.cache" | median)
HITS=$(sqlite3 "$WORK/cache.db" "SELECT COUNT(*) FROM attempts WHERE batch = 'b' AND outcome = 'cached'")
[ "$HITS" = "$CACHE" ] || { say "run --cache answered $HITS jobs, expected $CACHE"; exit 1; }

LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
cat <<EOF

llmbatch benchmark — $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), load average at the end $LOAD
median of $RUNS alternating run(s); $JOBS jobs of \`cat\`, 2 at a time

| measurement | llmbatch | reference | ratio | target | met |
|---|---:|---:|---:|---:|:-:|
| jobs/s vs GNU parallel -j2 --joblog | $R_llmbatch | $R_parallel | $(ratio "$R_llmbatch" "$R_parallel")× | ≥ 4× | $(ok_if "$(ratio "$R_llmbatch" "$R_parallel")" ">=" 4) |
| jobs/s vs xargs -P2 (no bookkeeping) | $R_llmbatch | $R_xargs | $(ratio "$R_llmbatch" "$R_xargs")× | ≥ 1.0× | $(ok_if "$(ratio "$R_llmbatch" "$R_xargs")" ">=" 1.0) |
| jobs/s vs spawn limit (2 threads, no bookkeeping) | $R_llmbatch | $R_limit | $(ratio "$R_llmbatch" "$R_limit")× | ≥ 0.7× | $(ok_if "$(ratio "$R_llmbatch" "$R_limit")" ">=" 0.7) |
| spawn limit + 2 commits/job, synchronous=NORMAL | | $R_normal | $(ratio "$R_normal" "$R_limit")× of limit | | |
| spawn limit + 2 commits/job, synchronous=FULL | | $R_full | $(ratio "$R_full" "$R_normal")× of NORMAL | | |
| enqueue $BIG prompts × 1 model (s) | $T_enqueue | | | < 5 s | $(ok_if "$T_enqueue" "<" 5) |
| report status latency failures timeouts throughput runners, $BIG attempts (s) | $T_report | | | < 0.5 s | $(ok_if "$T_report" "<" 0.5) |
| report latency --breakdown, $BIG attempts ($((BIG / 10)) with Ollama timings) (s) | $T_breakdown | | | | |
| re-enqueue $JOBS done prompts (s) | $T_reenq | | | < 0.1 s | $(ok_if "$T_reenq" "<" 0.1) |
| run with nothing to do (s) | $T_noop | | | < 0.1 s | $(ok_if "$T_noop" "<" 0.1) |
| run --cache, $CACHE jobs all answered from the cache (s) | $T_cache | | | < 10 s | $(ok_if "$T_cache" "<" 10) |
| peak RSS of run, $MEM_JOBS jobs (MiB) | $(mib "$RSS_BIG") | $(mib "$RSS_SMALL") ($JOBS jobs) | $(ratio "$RSS_BIG" "$RSS_SMALL")× | < 64 MiB, ≤ 1.10× | $(ok_if "$(mib "$RSS_BIG")" "<" 64) / $(ok_if "$(ratio "$RSS_BIG" "$RSS_SMALL")" "<" 1.101) |
EOF

# The PostgreSQL section: with a server given (BENCH_PG, or LLMBATCH_TEST_PG under
# scripts/with-postgres.sh), jobs/s of 1, 2 and 4 runners sharing one queue against 1 runner
# on SQLite, claim latency and connections per runner.
if [ -n "${BENCH_PG:-${LLMBATCH_TEST_PG:-}}" ]; then
    BENCH_JOBS=$JOBS BENCH_RUNS=$RUNS "$ROOT/scripts/bench-postgres.sh"
else
    say "PostgreSQL section skipped: run scripts/with-postgres.sh scripts/bench.sh (or set BENCH_PG)"
fi
