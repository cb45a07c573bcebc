#!/bin/bash
# `make demo`: Waypoint end to end on this machine, in about ten seconds.
#
#   scripts/demo.sh BUILD_DIR
#
# Starts a throwaway PostgreSQL cluster with a sample table, the LocalAPI stand-in
# playing tailscaled with one caller (alice@example.com on node laptop, granted
# readonly on appdb), and Waypoint on a free port; then connects with plain psql and no
# password, and shows what the grant allows and refuses. Builds nothing (make did) and
# removes everything on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
WAYPOINT=$BUILD/waypoint
PGCLUSTER=$ROOT/test/support/pgcluster.sh
STANDIN=$ROOT/test/support/localapi_standin.py
[ -x "$WAYPOINT" ] || { echo "demo: no waypoint binary in $BUILD (run make first)" >&2; exit 1; }

D=$(mktemp -d /tmp/waypoint-demo.XXXXXX)
chmod 755 "$D"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
    "$PGCLUSTER" stop "$D/pg" >/dev/null 2>&1 || true
    rm -rf "$D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { # prints the command as one would type it, then runs it
    local a line='$'
    for a in "$@"; do
        case $a in *[[:space:]]*) line+=" \"$a\"" ;; *) line+=" $a" ;; esac
    done
    printf '%s\n' "$line"
    "$@"
}
wait_for() { # seconds what command...
    local deadline=$((SECONDS + $1)) what=$2
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "demo: timed out waiting for $what" >&2; exit 1; }
        sleep 0.05
    done
}

say "1. A PostgreSQL cluster with a sample table"
"$PGCLUSTER" start "$D/pg" --owner-pid $$ >/dev/null
PG_PORT=$(. "$D/pg/cluster.env" && echo "$PORT")
PGPASSWORD=adminpw psql -X -q "host=127.0.0.1 port=$PG_PORT dbname=appdb user=wp_admin" <<'SQL'
CREATE TABLE orders (id int PRIMARY KEY, customer text, total numeric);
INSERT INTO orders VALUES (1, 'ada', 42.00), (2, 'grace', 17.50), (3, 'linus', 99.90);
SQL
echo "cluster on 127.0.0.1:$PG_PORT, database appdb, table orders (3 rows)"

say "2. tailscaled (the LocalAPI stand-in): alice@example.com on laptop, readonly on appdb"
cat >"$D/state.json" <<'JSON'
{"identities": [{"match": "*", "whois": {
  "Node": {"ID": 1, "StableID": "nALICE", "Name": "laptop.tail1234.ts.net.",
           "ComputedName": "laptop", "Addresses": ["100.64.0.1/32"]},
  "UserProfile": {"ID": 101, "LoginName": "alice@example.com", "DisplayName": "Alice"},
  "CapMap": {"redo.com/cap/waypoint": [
    {"backends": {"pg-main": {"pg": {"databases": {"appdb": {"permissions": ["readonly"]}}}}}}]}}}],
 "certs": {}}
JSON
python3 "$STANDIN" --socket "$D/tailscaled.sock" --state "$D/state.json" \
    --ready-file "$D/standin.ready" 2>"$D/standin.log" &
PIDS+=($!)
wait_for 15 "the stand-in" test -s "$D/standin.ready"
echo "the grant, as the tailnet policy file would carry it:"
echo '  "redo.com/cap/waypoint": [{"backends": {"pg-main": {"pg": {"databases": {"appdb": {"permissions": ["readonly"]}}}}}}]'

say "3. Waypoint in front of the cluster"
WP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$D/waypoint.toml" <<TOML
[tailscale]
socket = "$D/tailscaled.sock"

[[listeners]]
name = "pg-main"
listen = "127.0.0.1:$WP_PORT"
mode = "postgres"
backend = "127.0.0.1:$PG_PORT"
backend_tls = "disable"

[listeners.postgres]
admin_user = "wp_admin"
admin_password = "\${PG_ADMIN_PASSWORD}"
admin_database = "appdb"
TOML
PG_ADMIN_PASSWORD=adminpw "$WAYPOINT" -config "$D/waypoint.toml" 2>"$D/waypoint.log" &
PIDS+=($!)
wait_for 30 "Waypoint" grep -q 'event=ready' "$D/waypoint.log"
echo "waypoint listening on 127.0.0.1:$WP_PORT"

CONN="host=127.0.0.1 port=$WP_PORT dbname=appdb user=anyone sslmode=disable"
say "4. Connect with psql, no password: who am I in the database?"
run psql -X "$CONN" -c "SELECT current_user, session_user"
echo "Waypoint asked tailscaled who was calling (alice@example.com on laptop), created"
echo "the role wp_<user>_<node>_<database> = wp_alice_laptop_appdb with exactly the"
echo "granted privileges and a fresh random password, and logged in upstream as that role."
echo "The client's user name ('anyone') and password are ignored."

say "5. The readonly grant lets alice read"
run psql -X "$CONN" -c "SELECT * FROM orders ORDER BY id"

say "6. ...and not write (SQLSTATE 42501)"
run psql -X -v VERBOSITY=verbose "$CONN" -c "INSERT INTO orders VALUES (4, 'mallory', 0)" || true

say "7. One log line per connection"
grep 'event=conn_end' "$D/waypoint.log" | tail -n 1

say "Done"
echo "Everything above ran against real PostgreSQL and a real Waypoint; it is all removed now."
