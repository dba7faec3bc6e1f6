#!/usr/bin/env bash
# The whole llmbatch pipeline on the fixtures, in a temporary database, with no network:
# models set → enqueue → run (a timeout, a crash, a retry) → report → kill -9 and run again →
# the rerun pipeline → grading with two graders → export → the leaderboard and the HTML page
# (written to target/llmbatch-report.html, or $PAGE). Builds in release mode first.
#
#   bash scripts/demo.sh            # the database is removed at the end
#   KEEP=1 bash scripts/demo.sh     # keep it and print where it is
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FIX=$ROOT/fixtures
M=$FIX/models

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; }

step "Build (release)"
cargo build --release --locked --quiet
LB=$ROOT/target/release/llmbatch
llmbatch() { show "llmbatch $*"; "$LB" "$@"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/llmbatch-demo.XXXXXX")
cleanup() {
    if [[ -n "${KEEP:-}" ]]; then
        echo "kept: $WORK (LLMBATCH_DB=$WORK/demo.db)"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
export LLMBATCH_DB=$WORK/demo.db
unset RUST_LOG
START=$SECONDS

step "Models: fake ones from fixtures/models (any command reading a prompt on stdin will do)"
llmbatch models set echo     --backend command --command "$M/echo"           --concurrency 4
llmbatch models set thinker  --backend command --command "$M/thinking"       --concurrency 2
llmbatch models set slowpoke --backend command --command "$M/slow 1"         --concurrency 2
llmbatch models set flaky    --backend command --command "$M/flaky"          --concurrency 2
llmbatch models set crashy   --backend command --command "$M/crash"          --max-attempts 2
llmbatch models set stuck    --backend command --command "$M/hang"           --timeout 2 --max-attempts 1 --concurrency 3
llmbatch models list

step "Enqueue: 8 joke prompts (CSV + template) × 6 models; again, to show it is idempotent"
llmbatch enqueue --template "$FIX/joke-template.txt" \
    --model echo --model thinker --model slowpoke --model flaky --model crashy --model stuck \
    "$FIX/jokes.csv"
llmbatch enqueue --template "$FIX/joke-template.txt" \
    --model echo --model thinker --model slowpoke --model flaky --model crashy --model stuck \
    "$FIX/jokes.csv"

step "Run: one lane per model; 'stuck' ignores SIGTERM and is killed at 2 s (+1 s grace), 'crashy' dies of SIGSEGV, 'flaky' fails once then succeeds"
code=0
llmbatch run --kill-grace 1 --retry-base 0.5 || code=$?
echo "exit code: $code (3 = some jobs failed, as they should here)"
[[ $code -eq 3 ]] || { echo "demo: expected exit code 3" >&2; exit 1; }

step "Report: status, latency percentiles, failures by kind"
llmbatch report

step "A failed job keeps its last error; a retried one is done with no error left"
llmbatch report jobs --model stuck --model flaky --batch jokes --format csv

step "Crash recovery: kill -9 a runner mid-batch, then just run again"
llmbatch enqueue --model slowpoke --batch recovery "$FIX/jokes.csv" --template "$FIX/joke-template.txt"
show "llmbatch run --batch recovery &   # then kill -9 it after 1.5 s"
"$LB" -q run --batch recovery &
pid=$!
sleep 1.5
{ kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true
llmbatch report status --batch recovery
llmbatch run --batch recovery
llmbatch report status --batch recovery

step "Rerun pipeline: which timed-out jobs would go back to the queue (dry run)"
show "llmbatch report jobs --state failed --outcome timeout --format ids | llmbatch resume --ids-file - --dry-run"
"$LB" report jobs --state failed --outcome timeout --format ids | "$LB" resume --ids-file - --dry-run

step "Grade: two fake graders score the jokes (one fair, one that says nothing is a joke)"
llmbatch models set judge-fair  --backend command --command "$FIX/graders/fair ma" --timeout 30 --concurrency 4
llmbatch models set judge-harsh --backend command --command "$FIX/graders/harsh"   --timeout 30 --concurrency 4
llmbatch grade --grader judge-fair --grader judge-harsh --rubric joke --batch jokes
llmbatch run --batch jokes || true
llmbatch report grades --batch jokes

step "Export: one record per output, with its grades"
show "llmbatch export --batch jokes --with-grades --format csv | head -n 3"
"$LB" export --batch jokes --with-grades --format csv | head -n 3

step "Leaderboard: which model is best, and on what evidence"
llmbatch report models

step "The page: one self-contained HTML file (charts inline, works offline)"
PAGE=${PAGE:-$ROOT/target/llmbatch-report.html}
show "llmbatch report --format html > $PAGE"
"$LB" report --format html > "$PAGE"
echo "wrote $PAGE ($(wc -c < "$PAGE") bytes): open it in a browser"

step "Done in $((SECONDS - START)) s (after the build)"
