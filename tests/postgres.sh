#!/usr/bin/env bash
# Starts the PostgreSQL server the store tests run against (tests/store_contract.rs and the
# unit tests in engine/src/store/postgres.rs): a throwaway cluster in $CASEWORK_PG_DIR
# (default /tmp/casework-pg), listening on 127.0.0.1:$CASEWORK_PG_PORT (default 54329) only,
# with trust authentication for 127.0.0.1 (test data only: never point it at real data).
#
# Idempotent: installs Debian's postgresql package when initdb is missing, creates the
# cluster on the first run, starts the server when it is not running, and waits until it
# accepts connections. Tests connect to
#   postgres://postgres@127.0.0.1:54329/postgres   (override with CASEWORK_TEST_POSTGRES)
set -euo pipefail

dir="${CASEWORK_PG_DIR:-/tmp/casework-pg}"
port="${CASEWORK_PG_PORT:-54329}"

find_bin() {
    local name="$1" found
    found="$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$found" ]; then
        echo "$found"
    elif command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
    fi
}

if [ -z "$(find_bin initdb)" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "postgres.sh: PostgreSQL is not installed; run this script as root (it installs Debian's postgresql package) or install it yourself" >&2
        exit 1
    fi
    echo "postgres.sh: installing PostgreSQL (Debian package postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y postgresql
fi
initdb="$(find_bin initdb)"
pg_ctl="$(find_bin pg_ctl)"
pg_isready="$(find_bin pg_isready)"
if [ -z "$initdb" ] || [ -z "$pg_ctl" ]; then
    echo "postgres.sh: initdb or pg_ctl not found after installing postgresql" >&2
    exit 1
fi

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user the package
# creates; as anyone else, as that user.
if [ "$(id -u)" = 0 ]; then
    user="postgres"
    if ! id "$user" >/dev/null 2>&1; then
        useradd --system --home-dir "$dir" --shell /usr/sbin/nologin "$user"
    fi
else
    user="$(id -un)"
fi
as_pg() {
    if [ "$(id -un)" = "$user" ]; then
        "$@"
    else
        runuser -u "$user" -- "$@"
    fi
}

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then
    chown "$user" "$dir"
fi
chmod 700 "$dir"
data="$dir/data"

if [ ! -f "$data/PG_VERSION" ]; then
    echo "postgres.sh: creating a cluster in $data"
    as_pg "$initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        echo "max_connections = 200"
        # Throwaway test data: durability is not what these tests measure.
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
    } >>"$data/postgresql.conf"
    # Only loopback TCP and the socket in $dir; no password (test cluster).
    cat >"$data/pg_hba.conf" <<EOF
local all all trust
host  all all 127.0.0.1/32 trust
EOF
    if [ "$(id -u)" = 0 ]; then
        chown "$user" "$data/postgresql.conf" "$data/pg_hba.conf"
    fi
fi

ready() {
    if [ -n "$pg_isready" ]; then
        "$pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres
    else
        as_pg "$pg_ctl" -D "$data" status >/dev/null 2>&1
    fi
}

if ! as_pg "$pg_ctl" -D "$data" status >/dev/null 2>&1; then
    echo "postgres.sh: starting PostgreSQL on 127.0.0.1:$port"
    as_pg "$pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null || {
        echo "postgres.sh: the server did not start; its log:" >&2
        tail -n 30 "$dir/server.log" >&2 || true
        exit 1
    }
fi

for _ in $(seq 1 60); do
    if ready; then
        echo "postgres.sh: PostgreSQL is ready at postgres://postgres@127.0.0.1:$port/postgres"
        exit 0
    fi
    sleep 1
done
echo "postgres.sh: PostgreSQL on 127.0.0.1:$port did not become ready; see $dir/server.log" >&2
exit 1
