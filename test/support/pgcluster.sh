#!/bin/bash
# Throwaway PostgreSQL clusters for integration and end-to-end tests.
#
#   pgcluster.sh start DIR [--auth METHOD] [--pwenc ENC] [--set 'key = value']...
#                          [--owner-pid PID] [--hba-line 'LINE']...
#       initdb in DIR (created, chowned to postgres when running as root), pick a free
#       port, start the server, create the admin role and the test database, print
#       shell assignments (PORT=... ) on stdout and write them to DIR/cluster.env.
#       METHOD (pg_hba for TCP): trust | password | md5 | scram-sha-256 (default).
#       ENC (password_encryption): scram-sha-256 (default) | md5.
#       --owner-pid: stop the cluster when that process exits, even if it crashed, so a
#       failing test never leaves a server behind.
#   pgcluster.sh stop DIR      stop the server and delete DIR
#   pgcluster.sh psql DIR [psql args]   run psql as the superuser over the unix socket
#
# Server version: WP_PG_BIN names the bin directory to use (initdb, pg_ctl, postgres,
# psql), e.g. /var/cache/waypoint/pg/18/bin from scripts/pg-versions.sh; without it,
# Debian's newest /usr/lib/postgresql/*/bin (15 on Debian 12). cluster.env records
# BINDIR and the server's major version as PG_MAJOR, so tests can say which behaviour
# they expect where versions differ.
#
# The admin role (wp_admin / adminpw, CREATEROLE, owner of database appdb) is what the
# provisioning code logs in as. The superuser is reached only through the unix socket in
# DIR with trust, for test setup. Each cluster has its own dir and port, so tests run in
# parallel without clashing.
set -euo pipefail

ADMIN_USER=wp_admin
ADMIN_PASSWORD=adminpw
TEST_DB=appdb

pg_bindir() {
    local d
    if [ -n "${WP_PG_BIN:-}" ]; then
        if [ ! -x "$WP_PG_BIN/initdb" ]; then
            echo "pgcluster: no initdb in WP_PG_BIN=$WP_PG_BIN (install it: scripts/pg-versions.sh MAJOR)" >&2
            exit 1
        fi
        echo "$WP_PG_BIN"
        return
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return
        fi
    done
    echo "pgcluster: no PostgreSQL server binaries under /usr/lib/postgresql" >&2
    exit 1
}

BIN=$(pg_bindir)

# Major version of the server binaries ("postgres (PostgreSQL) 18.6" -> 18).
pg_major() {
    local v
    v=$("$BIN/postgres" -V) || exit 1
    v=${v#*) }
    echo "${v%%.*}"
}

as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_free() {
    ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

cmd_start() {
    local dir=$1
    shift
    local auth=scram-sha-256 pwenc=scram-sha-256 owner="" sets=() hba=()
    while [ $# -gt 0 ]; do
        case $1 in
        --auth) auth=$2; shift 2 ;;
        --pwenc) pwenc=$2; shift 2 ;;
        --set) sets+=("$2"); shift 2 ;;
        --hba-line) hba+=("$2"); shift 2 ;;
        --owner-pid) owner=$2; shift 2 ;;
        *) echo "pgcluster: unknown option $1" >&2; exit 2 ;;
        esac
    done
    case $auth in trust | password | md5 | scram-sha-256) ;; *)
        echo "pgcluster: bad --auth $auth" >&2; exit 2 ;;
    esac

    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        # The server runs as postgres: it must be able to reach DIR (mktemp -d parents
        # are 0700 root) and own it.
        chmod a+x "$(dirname "$dir")"
        chown postgres:postgres "$dir"
    fi
    chmod 700 "$dir"
    as_pg "$BIN/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=reject \
        -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }

    {
        echo "local all all trust"
        for l in "${hba[@]+"${hba[@]}"}"; do echo "$l"; done
        echo "host all all 127.0.0.1/32 $auth"
        echo "host all all ::1/128 $auth"
    } | as_pg tee "$dir/data/pg_hba.conf" >/dev/null

    local port="" try
    for try in 1 2 3 4 5 6 7 8 9 10; do
        port=$((20000 + RANDOM % 12000)) # below the ephemeral range (32768+)
        port_free "$port" || continue
        {
            echo "port = $port"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '$dir'"
            echo "password_encryption = '$pwenc'"
            echo "max_connections = 200"
            echo "fsync = off"
            echo "synchronous_commit = off"
            echo "full_page_writes = off"
            echo "logging_collector = off"
            for s in "${sets[@]+"${sets[@]}"}"; do echo "$s"; done
        } | as_pg tee "$dir/data/postgresql.auto.conf" >/dev/null
        if as_pg "$BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
            >"$dir/pg_ctl.log" 2>&1; then
            break
        fi
        port=""
    done
    if [ -z "$port" ]; then
        echo "pgcluster: could not start a server in $dir" >&2
        cat "$dir/server.log" >&2 2>/dev/null || true
        exit 1
    fi
    # Until setup succeeds and the reaper runs, a failing step must not leave the server
    # running with nothing left to stop it. (Expanded now: locals are gone when it runs.)
    trap "as_pg \"\$BIN/pg_ctl\" -D $(printf %q "$dir/data") -m immediate -w -t 30 stop \
        >/dev/null 2>&1 || true" EXIT

    as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres \
        >/dev/null <<SQL
CREATE ROLE $ADMIN_USER LOGIN CREATEROLE PASSWORD '$ADMIN_PASSWORD';
CREATE DATABASE $TEST_DB OWNER $ADMIN_USER;
SQL
    # PostgreSQL 15 no longer lets everyone create in public; the admin owns appdb and
    # its public schema so it can grant on the tables the tests create.
    as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d "$TEST_DB" \
        -c "ALTER SCHEMA public OWNER TO $ADMIN_USER" >/dev/null

    if [ -n "$owner" ]; then
        # Reaper: waits for the owning test process to exit, then stops the server.
        (
            exec >/dev/null 2>&1 </dev/null
            tail --pid="$owner" -f /dev/null
            "$0" stop "$dir"
        ) &
        disown
    fi

    trap - EXIT
    cat >"$dir/cluster.env" <<ENV
PORT=$port
HOST=127.0.0.1
SOCKET_DIR=$dir
ADMIN_USER=$ADMIN_USER
ADMIN_PASSWORD=$ADMIN_PASSWORD
TEST_DB=$TEST_DB
BINDIR=$BIN
PG_MAJOR=$(pg_major)
ENV
    cat "$dir/cluster.env"
}

cmd_stop() {
    local dir=$1
    [ -d "$dir" ] || return 0
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

cmd_psql() {
    local dir=$1
    shift
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
    as_pg "$BIN/psql" -X -h "$dir" -p "$PORT" -U postgres "$@"
}

case ${1:-} in
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
psql) shift; cmd_psql "$@" ;;
*) echo "usage: $0 start|stop|psql DIR ..." >&2; exit 2 ;;
esac
