#!/bin/bash
# Callgrind profile of single TLS handshakes on Waypoint's server side (issue 18): one
# full and one resumed handshake per protocol version and key-exchange group, for the
# Waypoint binary given. Instruction counts are repeatable, unlike timings on a shared
# machine. Prints one Markdown row per handshake: instructions spent inside
# tls_server_accept (inclusive: the handshake, its key exchange and signature).
#
#   bench/tls_profile.sh [BUILD_DIR]      (default build; e.g. build-mbedtls36)
#
# Waypoint runs under valgrind with the e2e harness (throwaway cluster, LocalAPI
# stand-in, a P-256 ECDSA file certificate). The client is openssl s_client with
# -starttls postgres, which saves its session (-sess_out) and offers it again
# (-sess_in); callgrind's counters are zeroed and dumped around each handshake with
# callgrind_control, so each row is exactly one handshake.
set -euo pipefail
BUILD=${1:-build}
SRC=$(cd "$(dirname "$0")/.." && pwd)
case $BUILD in /*) ;; *) BUILD=$SRC/$BUILD ;; esac
export WP_BINARY_DIR=$BUILD E2E_NAME=tls_profile
. "$SRC/test/e2e/lib.sh"
e2e_init
command -v valgrind >/dev/null || fail "valgrind is not installed"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=db.example.com" -addext "subjectAltName=DNS:db.example.com" \
    -keyout "$T/file.key" -out "$T/file.crt" 2>/dev/null
e2e_cluster
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
E2E_STARTUP_TIMEOUT=60s e2e_config "cert_file = \"$T/file.crt\"
key_file = \"$T/file.key\""
: >"$T/waypoint.log"
E2E_ADMIN_PASSWORD=adminpw valgrind --tool=callgrind --callgrind-out-file="$T/cg.out" \
    --dump-instr=no --collect-atstart=yes "$WAYPOINT" -config "$T/waypoint.toml" 2>>"$T/waypoint.log" &
WP_PID=$!
E2E_PIDS+=("$WP_PID")
e2e_wait 180 "waypoint under valgrind" 'grep -q "event=ready" "$T/waypoint.log"'

LIB=$("$WAYPOINT" -version | sed 's/^waypoint [^,]*, //')
n=0
# shake NAME s_client-args...: one handshake, its instructions in tls_server_accept.
shake() {
    local name=$1
    shift
    n=$((n + 1))
    callgrind_control -z "$WP_PID" >/dev/null
    local out
    out=$({
        local end=$((SECONDS + 60))
        while [ -n "${SESS_OUT:-}" ] && [ ! -s "$SESS_OUT" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.05; done
    } | timeout 120 openssl s_client -connect "127.0.0.1:$WP_PORT" -starttls postgres \
        -servername db.example.com ${SESS_OUT:+-sess_out "$SESS_OUT"} "$@" 2>/dev/null || true)
    local verdict proto
    verdict=$(echo "$out" | sed -n 's/^\(New\|Reused\), .*/\1/p' | sed -n 1p)
    proto=$(echo "$out" | sed -n 's/^ *Protocol *: *//p' | sed -n 1p)
    local kx
    kx=$(echo "$out" | sed -n 's/^Server Temp Key: \(.*\), [0-9]* bits$/\1/p' | sed -n 1p)
    callgrind_control -d "hs$n" "$WP_PID" >/dev/null
    local f
    f=$(ls -t "$T"/cg.out* 2>/dev/null | sed -n 1p)
    [ "${PROFILE_DEBUG:-0}" = 1 ] && { ls -la "$T" >&2; echo "$out" >&2; echo "file $f" >&2; }
    cp "$f" /tmp/cgkeep/$(basename "$WAYPOINT_DIRNAME")-$n 2>/dev/null || cp "$f" /tmp/cgkeep/hs$n; local ir
    ir=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null | awk '/tls_server_accept/ {gsub(",", "", $1); print $1}' | sed -n 1p)
    echo "| $LIB | $name | ${verdict:-?} ${proto} ${kx:-(no key exchange)} | $(awk -v i="${ir:-0}" 'BEGIN{printf "%.2f M", i/1e6}') |"
}

# Warm-up (not shown): the first connection under valgrind pays for translating code.
SESS_OUT="" shake warm-up -tls1_2 >/dev/null
shake warm-up -tls1_2 >/dev/null

echo "| build | handshake (client's groups) | s_client saw | instructions in tls_server_accept |"
echo "|---|---|---|---|"
for v in tls1_2 tls1_3; do
    "$WAYPOINT" -version | grep -q "TLS 1.3" || [ "$v" = tls1_2 ] || continue
    # libpq's and Go's default order (X25519 first; an ECDSA P-256 certificate also needs
    # P-256 listed for TLS 1.2), and P-256 alone.
    for g in X25519:P-256 P-256; do
        rm -f "$T/s.$v.$g"
        SESS_OUT="$T/s.$v.$g" shake "$v $g full" "-$v" -groups "$g"
        SESS_OUT="" shake "$v $g resumed" "-$v" -groups "$g" -sess_in "$T/s.$v.$g"
    done
done
