#!/bin/bash
# Client-side TLS: sslmode=require, certificate choice by SNI (file certificate vs the
# Tailscale *.ts.net certificate from the LocalAPI), direct TLS with ALPN, and tls_mode
# require/off, switched with SIGHUP (which also reloads certificates).
. "$(dirname "$0")/lib.sh"
e2e_init

e2e_mkcert file db.example.com
e2e_mkcert ts waypoint.tail1234.ts.net

e2e_cluster
E2E_CERTS="{\"waypoint.tail1234.ts.net\": {\"key\": \"$T/ts.key\", \"cert\": \"$T/ts.crt\"}}"
e2e_identity '{"appdb": {"permissions": ["readonly"]}}'
e2e_standin
write_config() { # tls_mode
    e2e_config "tls_mode = \"$1\"
cert_file = \"$T/file.crt\"
key_file = \"$T/file.key\""
}
write_config optional
e2e_waypoint

subject() { # extra s_client args
    openssl s_client -connect "127.0.0.1:$WP_PORT" "$@" </dev/null 2>/dev/null |
        openssl x509 -noout -subject 2>/dev/null | sed 's/^subject=//; s/ //g'
}

out=$(E2E_SSLMODE=require wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "sslmode=require works"
e2e_wait 5 "conn_end" log_has 'event=conn_end'
assert_contains "$(log_line conn_end)" "tls=1" "conn_end records TLS"

assert_eq "CN=db.example.com" "$(subject -starttls postgres -servername db.example.com)" "SNI db.example.com: file certificate"
assert_eq "CN=waypoint.tail1234.ts.net" "$(subject -starttls postgres -servername waypoint.tail1234.ts.net)" "SNI *.ts.net: Tailscale certificate"
assert_eq "CN=db.example.com" "$(subject -starttls postgres -noservername)" "no SNI: file certificate"

# Direct TLS (PostgreSQL 17 sslnegotiation=direct): ALPN "postgresql" is required.
out=$(openssl s_client -connect "127.0.0.1:$WP_PORT" -alpn postgresql -servername db.example.com </dev/null 2>&1 || true)
assert_contains "$out" "ALPN protocol: postgresql" "direct TLS with ALPN postgresql is accepted"
assert_eq "" "$(subject -servername db.example.com)" "direct TLS without ALPN is refused"

# Certificates are reloaded on SIGHUP.
e2e_mkcert file db2.example.com
e2e_reload
assert_eq "CN=db2.example.com" "$(subject -starttls postgres -noservername)" "SIGHUP reloads the file certificate"

write_config require
e2e_reload
out=$(wpsql "" -c "SELECT 1" 2>&1) && fail "plaintext accepted with tls_mode=require"
assert_contains "$out" "SSL required" "tls_mode=require: plaintext refused with 'SSL required'"
out=$(E2E_SSLMODE=require wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "tls_mode=require: TLS client accepted"

write_config off
e2e_reload
out=$(E2E_SSLMODE=require wpsql "" -c "SELECT 1" 2>&1) && fail "sslmode=require accepted with tls_mode=off"
assert_contains "$out" "does not support SSL" "tls_mode=off + sslmode=require fails cleanly"
out=$(wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "tls_mode=off: plaintext works"

# An invalid file is rejected on SIGHUP and the old configuration keeps serving.
echo "this is not valid" >>"$T/waypoint.toml"
e2e_reload
log_has 'event=reload_rejected' || fail "invalid config not rejected"
out=$(wpsql "" -c "SELECT current_user")
assert_eq "wp_alice_laptop_appdb" "$out" "invalid reload: old configuration still serves"
