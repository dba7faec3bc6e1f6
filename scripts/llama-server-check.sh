#!/usr/bin/env bash
# Checks llmbatch's streaming metrics against a real server: llama.cpp's `llama-server`, built
# from the llama-cpp-python sdist on PyPI, serving a tiny random-weight GGUF written here with
# the `gguf` package (scripts/tiny_gguf.py). For each attempt, llmbatch's TTFT is compared with
# the server's own prompt_ms and llmbatch's decode rate (1 / TPOT) with its predicted_per_second.
# Not part of `cargo test`: the build takes minutes. Exit 0 when every figure is within
# tolerance, 1 otherwise.
#
#   scripts/llama-server-check.sh                     # build (once), serve, run, compare
#   CHECK_DIR=/tmp/llcheck CHECK_JOBS=40 scripts/llama-server-check.sh
#
# Settings: CHECK_DIR (work directory, kept; the build is reused), CHECK_JOBS (prompts, 20),
# CHECK_TOKENS (max_tokens, 128), CHECK_PORT (18080), LLAMA_CPP_PYTHON (sdist version, 0.3.36),
# CHECK_THREADS (server threads, 1: a steady pace on a busy machine).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
dir=${CHECK_DIR:-/tmp/llmbatch-llama-check}
jobs=${CHECK_JOBS:-20}
tokens=${CHECK_TOKENS:-128}
port=${CHECK_PORT:-18080}
version=${LLAMA_CPP_PYTHON:-0.3.36}
threads=${CHECK_THREADS:-1}
mkdir -p "$dir"
cd "$dir"

say() { printf '== %s\n' "$*" >&2; }

if [ ! -x venv/bin/python ]; then
    say "python venv with cmake, gguf, numpy"
    python3 -m venv venv
    venv/bin/pip install -q cmake gguf numpy
fi
export PATH="$dir/venv/bin:$PATH"

server=$dir/build/bin/llama-server
if [ ! -x "$server" ]; then
    say "llama-cpp-python $version sdist → llama-server (a few minutes)"
    pip download -q --no-binary llama-cpp-python --no-deps "llama-cpp-python==$version" -d sdist
    tar xzf "sdist/llama_cpp_python-$version.tar.gz"
    # No network at build or run time: no prebuilt web UI, no HTTPS.
    cmake -S "llama_cpp_python-$version/vendor/llama.cpp" -B build -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF >build.log 2>&1
    nice cmake --build build --target llama-server -j "$(nproc)" >>build.log 2>&1 \
        || { tail -20 build.log >&2; exit 1; }
fi

[ -f tiny.gguf ] || python "$here/scripts/tiny_gguf.py" tiny.gguf

if [ -z "${LLMBATCH:-}" ]; then
    say "building llmbatch (release)"
    (cd "$here" && cargo build --release --locked -q)
fi
bin=${LLMBATCH:-$here/target/release/llmbatch}

say "llama-server on 127.0.0.1:$port"
"$server" -m tiny.gguf --host 127.0.0.1 --port "$port" -t "$threads" -c 2048 -np 1 \
    >server.log 2>&1 &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    kill -0 $server_pid 2>/dev/null || { cat server.log >&2; exit 1; }
    sleep 0.2
done

export LLMBATCH_DB=$dir/check.db
rm -f "$LLMBATCH_DB" "$LLMBATCH_DB"-wal "$LLMBATCH_DB"-shm
"$bin" models set tiny --backend openai --endpoint "http://127.0.0.1:$port" --timeout 120 \
    --stall-timeout 10s --option max_tokens="$tokens" --option ignore_eos=true \
    --option temperature=0 >/dev/null
{
    echo "id,prompt"
    for i in $(seq 1 "$jobs"); do echo "$i,Tell me story number $i about a lighthouse."; done
} >prompts.csv
"$bin" enqueue --model tiny prompts.csv >/dev/null
say "running $jobs prompts"
"$bin" -q run
"$bin" report latency --model tiny

python - "$LLMBATCH_DB" <<'EOF'
import json, sqlite3, statistics, sys

rows = sqlite3.connect(sys.argv[1]).execute(
    "SELECT ttft_ms, tpot_ms, output_tokens, e2e_ms, timings FROM attempts "
    "WHERE outcome = 'ok' AND ttft_ms IS NOT NULL").fetchall()
if not rows:
    sys.exit("no streamed successful attempt to compare")
ttft_gap, rate_ratio, tokens_ok = [], [], 0
for ttft, tpot, n, e2e, timings in rows:
    s = json.loads(timings).get("server_timings") or {}
    # TTFT = prompt processing + the first token's decode + HTTP: at least the server's prompt_ms.
    first_token_ms = 1000.0 / s["predicted_per_second"]
    ttft_gap.append(ttft - s["prompt_ms"] - first_token_ms)
    rate_ratio.append((1000.0 / tpot) / s["predicted_per_second"])
    tokens_ok += n == s["predicted_n"]
med = statistics.median
print(f"attempts compared: {len(rows)}; output tokens equal to the server's predicted_n: {tokens_ok}")
print(f"server prompt_ms median {med(json.loads(r[4])['server_timings']['prompt_ms'] for r in rows):.2f}, "
      f"predicted_per_second median {med(json.loads(r[4])['server_timings']['predicted_per_second'] for r in rows):.1f}")
print(f"llmbatch TTFT median {med(r[0] for r in rows):.2f} ms, 1/TPOT median {med(1000.0 / r[1] for r in rows):.1f} tok/s")
print(f"TTFT − (prompt_ms + one token): median {med(ttft_gap):.2f} ms, max {max(ttft_gap):.2f} ms")
print(f"(1/TPOT) / predicted_per_second: median {med(rate_ratio):.3f}, range {min(rate_ratio):.3f}–{max(rate_ratio):.3f}")
# Tolerances: TTFT may exceed the server's own prompt + first-token time only by HTTP and
# scheduling overhead (≤ 25 ms median on loopback), never undercut it by more than clock noise;
# the decode rates agree within 10 % (median) — the server times decode alone, llmbatch sees
# it through the chunked HTTP stream.
ok = (-2.0 <= med(ttft_gap) <= 25.0 and 0.90 <= med(rate_ratio) <= 1.10 and tokens_ok == len(rows))
print("within tolerance" if ok else "OUT OF TOLERANCE")
sys.exit(0 if ok else 1)
EOF
