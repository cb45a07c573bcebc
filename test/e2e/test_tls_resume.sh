#!/bin/bash
# TLS session resumption toward clients (issue 18): a real client we control (OpenSSL's
# s_client with -starttls postgres, saving and reusing its session) resumes by session
# ticket and, with tickets off on its side, by session ID (the cache); the handshakes
# show in waypoint_tls_handshakes_total{kind="full|resumed"}. A session never crosses
# listeners (two listeners, one certificate: listener B gives a full handshake for A's
# session) nor certificates (a session from the file certificate, offered with an SNI
# that selects the Tailscale certificate, gets a full handshake), and SIGHUP starts
# afresh. Runs with TLS 1.2 and, where the build speaks it, TLS 1.3.
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_mkcert file db.example.com
e2e_mkcert ts waypoint.tail1234.ts.net

e2e_cluster
E2E_CERTS="{\"waypoint.tail1234.ts.net\": {\"key\": \"$T/ts.key\", \"cert\": \"$T/ts.crt\"}}"
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
METRICS_PORT=$(free_port)
PORT_B=$(free_port)
E2E_TOP="[metrics]
listen = \"127.0.0.1:$METRICS_PORT\"" e2e_config "cert_file = \"$T/file.crt\"
key_file = \"$T/file.key\""
cat >>"$T/waypoint.toml" <<TOML

[[listeners]]
name = "pg-b"
listen = "127.0.0.1:$PORT_B"
mode = "postgres"
backend = "127.0.0.1:$PG_PORT"
backend_tls = "disable"
cert_file = "$T/file.crt"
key_file = "$T/file.key"

[listeners.postgres]
admin_user = "wp_admin"
admin_password = "\${E2E_ADMIN_PASSWORD}"
admin_database = "appdb"
user_prefix = "wpb_"
TOML
e2e_waypoint

handshakes() { # listener kind
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" |
        sed -n "s/^waypoint_tls_handshakes_total{listener=\"$1\",kind=\"$2\"} //p"
}
# connect PORT SNI VERSION [s_client args...]: "New" or "Reused" (s_client's verdict).
# With SESS_OUT=file, s_client's input stays open until it has saved the session there
# (polled against a deadline): a TLS 1.3 ticket arrives after the handshake.
connect() {
    local port=$1 sni=$2 ver=$3
    shift 3
    local out=${SESS_OUT:-}
    [ -z "$out" ] || set -- "$@" -sess_out "$out"
    {
        local end=$((SECONDS + 10))
        while [ -n "$out" ] && [ ! -s "$out" ] && [ "$SECONDS" -lt "$end" ]; do sleep 0.02; done
    } | timeout 20 openssl s_client -connect "127.0.0.1:$port" -starttls postgres \
        -servername "$sni" "-$ver" "$@" 2>/dev/null | sed -n 's/^\(New\|Reused\), TLS.*/\1/p' |
        head -n 1
}

check_version() { # tls1_2 | tls1_3
    local v=$1 f0 r0
    f0=$(handshakes pg-main full)
    r0=$(handshakes pg-main resumed)
    rm -f "$T/sess.$v"
    assert_eq "New" "$(SESS_OUT="$T/sess.$v" connect "$WP_PORT" db.example.com "$v")" "$v: first connect is a full handshake"
    [ -s "$T/sess.$v" ] || fail "$v: s_client saved no session"
    assert_eq "Reused" "$(connect "$WP_PORT" db.example.com "$v" -sess_in "$T/sess.$v")" "$v: the saved session (ticket) resumes"
    e2e_wait 5 "$v: resumed handshake counted" '[ "$(handshakes pg-main resumed)" -eq $((r0 + 1)) ]'
    e2e_wait 5 "$v: full handshake counted" '[ "$(handshakes pg-main full)" -eq $((f0 + 1)) ]'
    assert_eq "New" "$(connect "$PORT_B" db.example.com "$v" -sess_in "$T/sess.$v")" "$v: listener B does not accept listener A's session"
    assert_eq "New" "$(connect "$WP_PORT" waypoint.tail1234.ts.net "$v" -sess_in "$T/sess.$v")" "$v: a session never resumes under another certificate"
    assert_eq "0" "$(handshakes pg-b resumed)" "$v: listener B counted no resumption"
}

check_version tls1_2

# Session ID (the cache): the client does not ask for a ticket.
rm -f "$T/sess.id"
assert_eq "New" "$(SESS_OUT="$T/sess.id" connect "$WP_PORT" db.example.com tls1_2 -no_ticket)" "cache: first connect is a full handshake"
assert_eq "Reused" "$(connect "$WP_PORT" db.example.com tls1_2 -no_ticket -sess_in "$T/sess.id")" "cache: the session ID resumes"
assert_eq "New" "$(connect "$PORT_B" db.example.com tls1_2 -no_ticket -sess_in "$T/sess.id")" "cache: listener B does not know listener A's session ID"
assert_eq "New" "$(connect "$WP_PORT" waypoint.tail1234.ts.net tls1_2 -no_ticket -sess_in "$T/sess.id")" "cache: a session ID never resumes under another certificate"

if "$WAYPOINT" -version | grep -q "TLS 1.3"; then
    check_version tls1_3
else
    out=$(openssl s_client -connect "127.0.0.1:$WP_PORT" -starttls postgres -tls1_3 </dev/null 2>&1 || true)
    assert_not_contains "$out" "TLSv1.3" "a TLS 1.2-only build does not claim TLS 1.3"
fi

# A real client through the whole connection: psql (libpq never resumes) still works.
out=$(E2E_SSLMODE=require wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "libpq over TLS still connects"

# SIGHUP builds new ticket keys and an empty cache: old sessions do not resume.
e2e_reload
assert_eq "New" "$(connect "$WP_PORT" db.example.com tls1_2 -sess_in "$T/sess.tls1_2")" "after SIGHUP the old ticket is not accepted"
assert_eq "New" "$(connect "$WP_PORT" db.example.com tls1_2 -no_ticket -sess_in "$T/sess.id")" "after SIGHUP the old session ID is not accepted"

# Resumption can be turned off per listener.
sed -i "0,/^key_file = .*/s//&\ntls_ticket_lifetime = \"0s\"\ntls_session_cache_size = 0/" "$T/waypoint.toml"
e2e_reload
rm -f "$T/sess.off"
SESS_OUT="$T/sess.off" connect "$WP_PORT" db.example.com tls1_2 >/dev/null
assert_eq "New" "$(connect "$WP_PORT" db.example.com tls1_2 -sess_in "$T/sess.off")" "tickets and cache off: no resumption"

# tls_max_version = "1.2" on listener B: a client that offers TLS 1.3 gets TLS 1.2 there
# and resumes by a TLS 1.2 ticket (no key exchange: why a deployment on the 3.6 build
# whose clients resume would cap); listener A still negotiates the highest version.
sed -i '/^name = "pg-b"$/a tls_max_version = "1.2"' "$T/waypoint.toml"
e2e_reload
proto() { # PORT [s_client args...]: "New TLSv1.x" or "Reused TLSv1.x", or "" when refused
    timeout 20 openssl s_client -connect "127.0.0.1:$1" -starttls postgres -servername db.example.com \
        "${@:2}" </dev/null 2>/dev/null | sed -n 's/^\(New\|Reused\), \(TLSv1\.[23]\).*/\1 \2/p' | head -n 1
}
rm -f "$T/sess.capped"
assert_eq "New TLSv1.2" "$(proto "$PORT_B" -sess_out "$T/sess.capped")" "tls_max_version 1.2: a client offering TLS 1.3 gets TLS 1.2"
assert_eq "Reused TLSv1.2" "$(proto "$PORT_B" -sess_in "$T/sess.capped")" "tls_max_version 1.2: it resumes by a TLS 1.2 ticket"
if "$WAYPOINT" -version | grep -q "TLS 1.3"; then
    assert_eq "" "$(proto "$PORT_B" -tls1_3)" "tls_max_version 1.2: a client that speaks only TLS 1.3 is refused"
    assert_eq "New TLSv1.3" "$(proto "$WP_PORT")" "without tls_max_version the same client gets TLS 1.3"
fi
