#!/bin/bash
# `make compat`: five real PostgreSQL drivers through Waypoint with TLS.
#
# Starts what the e2e tests start (test/e2e/lib.sh): a throwaway cluster with database
# myapp (owned by the admin role, with a table "items"), the LocalAPI stand-in giving
# alice@example.com on node laptop a grant on myapp, and the real waypoint binary with
# tls_mode = "require" and a test certificate from cert_file. Then each driver's program
# (test/compat/<driver>/) runs its checks and prints "check NAME pass|fail|na DETAIL"
# lines; this script prints them as one table and exits non-zero if any check failed or
# is missing.
#
# Drivers install from their registries, at the versions pinned in the driver dirs, into
# a cache outside the checkout that survives between runs:
#   $WP_CACHE/compat/venv  psycopg + asyncpg (pip cache in .../pip)
#   $WP_CACHE/compat/node  npm ci from the committed package-lock.json (cache .../npm)
#   $WP_CACHE/compat/m2    Maven's local repository for pgjdbc + HikariCP
#   $WP_CACHE/compat/go    the pgx binary (modules in Go's default module cache)
# A driver is reinstalled only when its pin file changes.
#
# Knobs: WP_CACHE (default /var/cache/waypoint), COMPAT_DRIVERS (default all five),
# COMPAT_GRANT (default readwrite; set readonly to see the checks that need writes
# fail), COMPAT_TABLE (also write the table, as markdown, to this file), COMPAT_LOGS
# (keep each driver's stdout and stderr in this directory).
. "$(dirname "$0")/../e2e/lib.sh"

HERE=$E2E_SRC/test/compat
CACHE=${WP_CACHE:-/var/cache/waypoint}/compat
DRIVERS=${COMPAT_DRIVERS:-pgx psycopg asyncpg pgjdbc node}
GRANT=${COMPAT_GRANT:-readwrite}
CHECKS="connect_tls types prepared_x100 errors rollback copy_in copy_out cancel listen_notify result_20mb pool_20 readonly direct_tls tls_resume"
# Drivers that resume TLS sessions when told to (docs/tls.md); the others never do.
RESUMERS="pgx pgjdbc node"
DRIVER_TIMEOUT=300

log() { echo "compat: $*" >&2; }

# ------------------------------------------------------------------ installs ----

# stamp_ok DIR FILES...: true when DIR/.stamp matches the hash of FILES (the pins).
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
stamp_ok() {
    local dir=$1
    shift
    [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$(stamp_of "$@")" ]
}

install_python() { # psycopg and asyncpg share one venv
    local req=$HERE/psycopg/requirements.txt
    stamp_ok "$CACHE/venv" "$req" && return 0
    log "installing psycopg/asyncpg into $CACHE/venv"
    rm -rf "$CACHE/venv"
    python3 -m venv "$CACHE/venv"
    "$CACHE/venv/bin/pip" install -q --disable-pip-version-check --cache-dir "$CACHE/pip" -r "$req"
    stamp_of "$req" >"$CACHE/venv/.stamp"
}

install_node() {
    local d=$CACHE/node
    stamp_ok "$d" "$HERE/node/package.json" "$HERE/node/package-lock.json" && return 0
    log "installing node-postgres into $d"
    rm -rf "$d"
    mkdir -p "$d"
    cp "$HERE/node/package.json" "$HERE/node/package-lock.json" "$d/"
    (cd "$d" && npm ci --cache "$CACHE/npm" --no-audit --no-fund --loglevel=error >/dev/null)
    stamp_of "$HERE/node/package.json" "$HERE/node/package-lock.json" >"$d/.stamp"
}

install_pgjdbc() { # Maven resolves the jars and writes the class path
    local d=$CACHE/pgjdbc
    stamp_ok "$d" "$HERE/pgjdbc/pom.xml" && return 0
    log "resolving pgjdbc with Maven into $CACHE/m2"
    rm -rf "$d"
    mkdir -p "$d"
    mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$CACHE/m2" -f "$HERE/pgjdbc/pom.xml" \
        dependency:build-classpath -Dmdep.outputFile="$d/classpath.txt" >"$d/mvn.log" 2>&1 ||
        { cat "$d/mvn.log" >&2; return 1; }
    stamp_of "$HERE/pgjdbc/pom.xml" >"$d/.stamp"
}

install_pgx() { # go build is incremental; modules come from Go's module cache
    mkdir -p "$CACHE/go"
    (cd "$HERE/pgx" && go build -mod=readonly -buildvcs=false -o "$CACHE/go/pgx-compat" .)
}

install_driver() {
    case $1 in
    pgx) install_pgx ;;
    psycopg | asyncpg) install_python ;;
    pgjdbc) install_pgjdbc ;;
    node) install_node ;;
    *) log "unknown driver $1"; return 1 ;;
    esac
}

driver_cmd() { # sets CMD to the command that runs driver $1's checks
    case $1 in
    pgx) CMD=("$CACHE/go/pgx-compat") ;;
    psycopg) CMD=("$CACHE/venv/bin/python" "$HERE/psycopg/compat.py") ;;
    asyncpg) CMD=("$CACHE/venv/bin/python" "$HERE/asyncpg/compat.py") ;;
    pgjdbc) CMD=(java -cp "$(cat "$CACHE/pgjdbc/classpath.txt")" "$HERE/pgjdbc/Compat.java") ;;
    node) CMD=(env NODE_PATH="$CACHE/node/node_modules" node "$HERE/node/compat.js") ;;
    esac
}

# ------------------------------------------------------------------ set-up ----

e2e_init
for tool in go python3 java mvn node npm openssl psql keytool curl; do
    command -v "$tool" >/dev/null || fail "make compat needs $tool on PATH"
done
mkdir -p "$CACHE"
t_install=$SECONDS
for d in $DRIVERS; do
    install_driver "$d" || fail "could not install $d"
done
log "installs took $((SECONDS - t_install)) s"

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=waypoint-db.example.com" \
    -addext "subjectAltName=DNS:waypoint-db.example.com,IP:127.0.0.1" \
    -keyout "$T/server.key" -out "$T/server.crt" 2>/dev/null

# pgjdbc's DefaultJavaSSLFactory verifies against the JVM's trust store.
keytool -importcert -noprompt -alias waypoint -file "$T/server.crt" -keystore "$T/trust.p12" \
    -storetype PKCS12 -storepass changeit >/dev/null 2>&1 || fail "keytool could not make a trust store"
export WP_TRUSTSTORE=$T/trust.p12

e2e_cluster
super_sql -c "CREATE DATABASE myapp OWNER wp_admin"
PGPASSWORD=adminpw psql -X -qAt -v ON_ERROR_STOP=1 \
    "host=127.0.0.1 port=$PG_PORT dbname=myapp user=wp_admin" -c \
    "CREATE TABLE items (id bigserial PRIMARY KEY, driver text NOT NULL, t text, b bytea, n bigint)"
e2e_identity "{\"myapp\": {\"permissions\": [\"$GRANT\"]}}"
e2e_standin
METRICS_PORT=$(free_port)
E2E_TOP="[metrics]
listen = \"127.0.0.1:$METRICS_PORT\"" e2e_config "tls_mode = \"require\"
use_tailscale_tls = false
cert_file = \"$T/server.crt\"
key_file = \"$T/server.key\""
e2e_waypoint

# The direct_tls checks go through a relay that records each connection's first byte:
# 16 (a TLS handshake record) proves the driver really skipped the SSLRequest.
python3 "$HERE/first_byte_relay.py" --to "$WP_PORT" --log "$T/direct.log" \
    --ready-file "$T/relay.ready" 2>"$T/relay.log" &
E2E_PIDS+=($!)
e2e_wait 15 "the first-byte relay" '[ -s "$T/relay.ready" ]'
: >"$T/direct.log"
WP_DIRECT_PORT=$(cat "$T/relay.ready")

export WP_HOST=127.0.0.1 WP_PORT WP_DIRECT_PORT WP_DB=myapp WP_ROLE=wp_alice_laptop_myapp

# ------------------------------------------------------------------ run ----

# direct_verdict DRIVER FIRST_LINE: turns a reported direct_tls pass into a failure when
# the driver's connections to the relay (lines FIRST_LINE.. of direct.log) did not all
# open with a TLS record.
direct_verdict() {
    local bytes
    bytes=$(tail -n +"$2" "$T/direct.log" | sort -u | tr '\n' ' ')
    if grep -q '^check direct_tls pass' "$T/$1.out" && [ "$bytes" != "16 " ]; then
        sed -i "s/^check direct_tls pass .*/check direct_tls fail first bytes seen by the relay: ${bytes:-none}/" "$T/$1.out"
    fi
}

# handshakes KIND: Waypoint's waypoint_tls_handshakes_total{kind=KIND} for the listener.
handshakes() {
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" |
        sed -n "s/^waypoint_tls_handshakes_total{listener=\"pg-main\",kind=\"$1\"} //p"
}

# resume_verdict DRIVER FULL RESUMED: the drivers run one after another, so the counter
# deltas over a driver's run are its handshakes. A resuming driver's tls_resume check
# passes only if Waypoint counted at least 3 resumptions (its connects 2-4); for the
# others the row says how many full and resumed handshakes they made (none resumed).
resume_verdict() {
    local d=$1 full=$2 res=$3 counts="Waypoint counted $2 full, $3 resumed handshakes"
    case " $RESUMERS " in
    *" $d "*)
        if grep -q '^check tls_resume pass' "$T/$d.out"; then
            if [ "$res" -ge 3 ]; then
                sed -i "s/^check tls_resume pass \(.*\)/check tls_resume pass \1; $counts/" "$T/$d.out"
            else
                sed -i "s/^check tls_resume pass .*/check tls_resume fail $counts, want at least 3 resumed/" "$T/$d.out"
            fi
        fi
        ;;
    *)
        if [ "$res" -eq 0 ] && [ "$full" -gt 0 ]; then
            echo "check tls_resume na never resumes (docs/tls.md): $counts; all its other checks ran over TLS" >>"$T/$d.out"
        else
            echo "check tls_resume fail $counts, want only full ones" >>"$T/$d.out"
        fi
        ;;
    esac
}

for d in $DRIVERS; do
    t0=$SECONDS
    rc=0
    driver_cmd "$d"
    first=$(($(wc -l <"$T/direct.log") + 1))
    full0=$(handshakes full) res0=$(handshakes resumed)
    timeout "$DRIVER_TIMEOUT" "${CMD[@]}" >"$T/$d.out" 2>"$T/$d.err" || rc=$?
    direct_verdict "$d" "$first"
    resume_verdict "$d" $(($(handshakes full) - full0)) $(($(handshakes resumed) - res0))
    log "$d: exit $rc in $((SECONDS - t0)) s"
    [ -z "${COMPAT_LOGS:-}" ] || { mkdir -p "$COMPAT_LOGS" && cp "$T/$d.out" "$T/$d.err" "$COMPAT_LOGS/"; }
    [ "$rc" -eq 0 ] || { tail -n 20 "$T/$d.err" >&2; BAD_EXIT="${BAD_EXIT:-} $d"; }
done

# ------------------------------------------------------------------ table ----

# result DRIVER CHECK -> pass | fail | na | missing
result() { awk -v c="$2" '$1 == "check" && $2 == c { print $3; exit }' "$T/$1.out"; }
version() { awk '$1 == "version" { print $3; exit }' "$T/$1.out"; }

table=$T/table.md
{
    printf '| check |'
    for d in $DRIVERS; do printf ' %s %s |' "$d" "$(version "$d")"; done
    printf '\n|---|'
    for d in $DRIVERS; do printf -- '---|'; done
    printf '\n'
    for c in $CHECKS; do
        printf '| %s |' "$c"
        for d in $DRIVERS; do
            r=$(result "$d" "$c")
            printf ' %s |' "${r:-missing}"
        done
        printf '\n'
    done
    echo
    echo "Notes (failures, n/a, and where a driver does a check its own way):"
    echo
    for d in $DRIVERS; do
        awk -v d="$d" '$1 == "check" && ($3 != "pass" || $4 == "NOTE:") { $1 = ""; printf "- %s%s\n", d, $0 }' "$T/$d.out"
    done
} >"$table"
cat "$table"
[ -z "${COMPAT_TABLE:-}" ] || cp "$table" "$COMPAT_TABLE"

npass=0 nfail=0 nna=0
for d in $DRIVERS; do
    for c in $CHECKS; do
        case $(result "$d" "$c") in
        pass) npass=$((npass + 1)) ;;
        na) nna=$((nna + 1)) ;;
        *) nfail=$((nfail + 1)) ;;
        esac
    done
done
for d in ${BAD_EXIT:-}; do
    echo "compat: the $d program exited non-zero (its stderr is above)"
    nfail=$((nfail + 1))
done
echo "compat: $npass passed, $nfail failed, $nna skipped"
[ "$nfail" -eq 0 ] || fail "$nfail driver checks failed"
pass "all drivers"
