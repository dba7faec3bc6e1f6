#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL server, for the tests that need one:
#
#   scripts/with-postgres.sh cargo test          # both engines
#   scripts/with-postgres.sh scripts/bench.sh    # the PostgreSQL section of the benchmark
#
# Starts a fresh cluster in a temp directory on a free loopback port (as the `postgres` user
# when run as root: the server refuses to run as root), creates the database `llmbatch_test`,
# exports LLMBATCH_TEST_PG=postgres://USER@127.0.0.1:PORT/llmbatch_test, runs the command, and
# stops and removes the cluster on exit, whatever the command did. The binaries are found on
# PATH or in /usr/lib/postgresql/*/bin (Debian: `apt-get install postgresql`).
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: scripts/with-postgres.sh COMMAND [ARG]..." >&2
    exit 2
fi

find_bin() {
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return
    fi
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    echo "PostgreSQL server binaries not found (Debian: apt-get install postgresql)" >&2
    exit 1
}
BIN=$(find_bin)

# A free port: the first one from a random start that nothing listens on.
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "no free loopback port found" >&2
    exit 1
}
PORT=$(free_port)

DIR=$(mktemp -d -t llmbatch-pg.XXXXXX)
chmod 755 "$DIR"
AS=()
USER_NAME=$(id -un)
if [ "$(id -u)" = 0 ]; then
    # The server refuses to run as root: the cluster belongs to `postgres`.
    id postgres >/dev/null 2>&1 || useradd --system --home-dir "$DIR" postgres
    chown postgres "$DIR"
    AS=(runuser -u postgres --)
    USER_NAME=postgres
fi

cleanup() {
    "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${AS[@]}" "$BIN/initdb" -D "$DIR/data" -U "$USER_NAME" -A trust --no-sync -E UTF8 \
    >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
# A test server: no fsync (its data is thrown away), room for several runners per test.
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
    -o "-k $DIR -p $PORT -h 127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
"${AS[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" llmbatch_test

export LLMBATCH_TEST_PG="postgres://$USER_NAME@127.0.0.1:$PORT/llmbatch_test"
# Where the tests find the server's tools and data directory (to restart it in a test).
export LLMBATCH_TEST_PG_BIN=$BIN
export LLMBATCH_TEST_PG_DATA=$DIR/data
echo "with-postgres: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') at $LLMBATCH_TEST_PG" >&2
"$@"
