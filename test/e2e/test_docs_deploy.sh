#!/bin/bash
# The deployment docs match reality (issue 11 item 5): every configuration block in
# docs/operations.md marked `<!-- doc-test: check-config -->` loads with the real
# binary's -check-config, and the grant block marked `<!-- doc-test: policy -->` is
# valid JSON whose `ip` grant opens each block's listen port and whose app grant names
# each block's listener under the capability Waypoint reads.
. "$(dirname "$0")/lib.sh"
e2e_init

DOC="$E2E_SRC/docs/operations.md"
# extract MARKER N: the N-th fenced block after a "<!-- doc-test: MARKER -->" line.
extract() {
    awk -v marker="<!-- doc-test: $1 -->" -v want="$2" '
        $0 == marker { armed = 1; next }
        armed && /^```/ && !inside { inside = 1; n++; next }
        inside && /^```/ { inside = 0; armed = 0; next }
        inside && n == want { print }
    ' "$DOC"
}

extract policy 1 >"$T/policy.json"
[ -s "$T/policy.json" ] || fail "no policy block in $DOC"
count=0
for i in 1 2 3 4 5 6; do
    extract check-config "$i" >"$T/doc$i.toml"
    [ -s "$T/doc$i.toml" ] || break
    count=$i
    out=$(PG_ADMIN_PASSWORD=x "$WAYPOINT" -check-config -config "$T/doc$i.toml" 2>&1) ||
        fail "doc block $i does not load: $out"
    pass "doc block $i loads with -check-config"
    listen=$(sed -n 's/^listen = "\([^"]*\)".*/\1/p' <<<"$out")
    name=$(sed -n 's/^name = "\([^"]*\)".*/\1/p' <<<"$out")
    cap=$(sed -n 's/^capability = "\([^"]*\)".*/\1/p' <<<"$out")
    python3 - "$T/policy.json" "${listen##*:}" "$name" "$cap" <<'PY' || fail "doc block $i and the grant disagree"
import json, sys
pol = json.load(open(sys.argv[1]))
port, name, cap = sys.argv[2], sys.argv[3], sys.argv[4]
grants = pol["grants"]
assert any("tcp:" + port in g.get("ip", []) for g in grants), "no ip grant for tcp:" + port
apps = [r for g in grants for r in g.get("app", {}).get(cap, [])]
assert apps, "no app grant for capability " + cap
assert all(name in r["backends"] for r in apps), "app grant lacks listener " + name
for g in grants:
    assert all(d.startswith("tag:") for d in g["dst"]), "dst must be the tagged node"
PY
    pass "doc block $i: the grant opens port ${listen##*:} and names listener $name"
done
[ "$count" -ge 2 ] || fail "expected the kernel-TUN and userspace blocks, found $count"
assert_contains "$(cat "$T/doc1.toml" "$T/doc2.toml")" 'listen = "127.0.0.1:' \
    "the userspace-networking block listens on 127.0.0.1"
