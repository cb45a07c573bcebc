#!/bin/bash
# TLS the way clients connect (issue 11 item 4), with the defaults: tls_mode optional,
# use_tailscale_tls = true, no cert_file. Waypoint reads the node's CertDomains from
# tailscaled's /localapi/v0/status, so
#   - a client connecting by IP (no SNI) gets the node's certificate;
#   - the short MagicDNS name (host=waypoint-db) is expanded to the cert domain;
#   - with no certificate source at all, SSLRequest is answered N: libpq's default
#     sslmode=prefer costs one connection and no conn_refused line. Logged once, at
#     start and on reload.
. "$(dirname "$0")/lib.sh"
e2e_init

FQDN=waypoint-db.tail1234.ts.net
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$FQDN" \
    -addext "subjectAltName=DNS:$FQDN" -keyout "$T/ts.key" -out "$T/ts.crt" 2>/dev/null

e2e_cluster
E2E_CERTS='{}' # tailscaled without HTTPS certificates: CertDomains null
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
e2e_config
e2e_waypoint

# -- no certificate source: 'N' -------------------------------------------------------
e2e_wait 5 "the tls_unavailable line" log_has 'event=tls_unavailable'
assert_contains "$(log_line tls_unavailable)" "CertDomains" "start: logged why TLS is unavailable"
assert_eq 1 "$(log_count tls_unavailable)" "logged once at start"

ends=$(log_count conn_end)
out=$(E2E_SSLMODE=prefer wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "sslmode=prefer without a certificate source connects"
e2e_wait 5 "conn_end" '[ "$(log_count conn_end)" -gt '"$ends"' ]'
assert_contains "$(log_line conn_end)" "tls=0" "... in plaintext"
assert_eq 0 "$(log_count conn_refused)" "... with no refused first attempt (one connection)"
assert_eq "$((ends + 1))" "$(log_count conn_end)" "... exactly one connection"
out=$(E2E_SSLMODE=require wpsql "" -c "SELECT 1" 2>&1) && fail "sslmode=require succeeded without a certificate"
assert_contains "$out" "does not support SSL" "sslmode=require: the server says it has no SSL"

e2e_reload
assert_eq 2 "$(log_count tls_unavailable)" "logged once more on reload"

# -- tailscaled gains the node's certificate ---------------------------------------------
E2E_CERTS="{\"$FQDN\": {\"key\": \"$T/ts.key\", \"cert\": \"$T/ts.crt\"}}"
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_reload
assert_eq 2 "$(log_count tls_unavailable)" "with CertDomains: no new tls_unavailable line"

subject() { # extra s_client args
    openssl s_client -connect "127.0.0.1:$WP_PORT" -starttls postgres "$@" </dev/null 2>/dev/null |
        openssl x509 -noout -subject 2>/dev/null | sed 's/^subject=//; s/ //g'
}
assert_eq "CN=$FQDN" "$(subject -noservername)" "no SNI: the node's Tailscale certificate"
assert_eq "CN=$FQDN" "$(subject -servername waypoint-db)" "short name: expanded to $FQDN"
assert_eq "CN=$FQDN" "$(subject -servername WAYPOINT-DB.tail1234.ts.net)" "full name, any case"
assert_eq "" "$(subject -servername other.tail1234.ts.net)" "a name that is not a cert domain: no certificate"

ends=$(log_count conn_end)
out=$(E2E_SSLMODE=require wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "sslmode=require by IP (no SNI)"
out=$(PGAPPNAME=e2e psql -X -qAt -v ON_ERROR_STOP=1 \
    "host=waypoint-db hostaddr=127.0.0.1 port=$WP_PORT dbname=appdb user=ignored sslmode=require connect_timeout=10" \
    -c "SELECT current_user" 2>&1)
assert_eq "wp_alice_laptop_appdb" "$out" "sslmode=require by short name (host=waypoint-db)"
e2e_wait 5 "two conn_end lines" '[ "$(log_count conn_end)" -ge '"$((ends + 2))"' ]'
assert_eq 2 "$(grep 'event=conn_end' "$T/waypoint.log" | tail -n 2 | grep -c 'tls=1')" "both over TLS"

ends=$(log_count conn_end)
refused=$(log_count conn_refused)
out=$(E2E_SSLMODE=prefer wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "sslmode=prefer by IP"
e2e_wait 5 "conn_end" '[ "$(log_count conn_end)" -gt '"$ends"' ]'
assert_contains "$(log_line conn_end)" "tls=1" "sslmode=prefer by IP is encrypted"
assert_eq "$refused" "$(log_count conn_refused)" "sslmode=prefer: no refused first attempt"
