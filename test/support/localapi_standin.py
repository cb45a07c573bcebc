#!/usr/bin/env python3
"""LocalAPI stand-in: answers tailscaled's LocalAPI `whois` and `cert` on a unix socket.

Tests cannot run a real tailscaled, so this server plays its part (spec section 2):
same paths, status codes, bodies, headers and JSON field names as tailscaled's
ipn/localapi handlers, with identities taken from a JSON state file that tests may
rewrite at any time (the file is re-read whenever it changes, so identities can change
while Waypoint sessions are open).

    python3 localapi_standin.py --socket PATH --state FILE [--ready-file PATH]
                                [--owner-pid PID]

Behaviour copied from tailscaled (ipn/localapi/localapi.go, cert.go):
  * Every /localapi/ request carrying a Referer or Origin header, or whose Host is not
    "local-tailscaled.sock" (or empty, which only HTTP/1.0 can send), gets
    403 "invalid localapi request". tailscaled also accepts localhost / loopback Host
    values, but only when the LocalAPI requires a password (macOS GUI) or in its own
    tests; neither applies to the Linux unix socket, so the stand-in refuses them.
  * HTTP/1.1 without Host: 400 (Go's net/http rejects it before any handler runs).
  * GET /localapi/v0/whois?addr=IP:PORT[&proto=tcp|udp] ("[v6]:port"); a bare IP is
    also accepted (looked up with port 0), as is "nodekey:<hex>" (matched against
    Node.Key). Missing addr: 400 "missing 'addr' parameter"; unparsable: 400 "invalid
    'addr' parameter"; no identity: 404 "no match for IP:port"; else 200 with the
    tab-indented JSON {"Node": ..., "UserProfile": ..., "CapMap": ...} (CapMap null when
    empty, as Go encodes a nil map).
  * The lookup is LocalBackend.WhoIs (ipn/ipnlocal/local.go): first the node that owns
    the IP (the port does not matter, nor does proto); otherwise, for a non-zero port,
    the proxymap (net/proxymap) that a userspace-networking tailscaled keeps for the
    local ip:port of every TCP connection and UDP flow it relays to a local service.
    Those are separate tables: with proto the lookup uses only that one ("tcp" or
    "udp"; tailscaled does not validate proto, so any other value matches nothing and
    the answer is the same 404), without proto TCP first, then UDP. tailscaled retries
    a proxymap miss for ~180 ms (a registration race); the stand-in answers at once.
  * GET /localapi/v0/cert/<domain>?type=cert|crt|key|pair: key/cert PEM as text/plain;
    an unknown domain is a 500 with tailscaled's wording; a bad type is a 400.
  * GET /localapi/v0/status[?peers=false]: ipnstate.Status (Version, BackendState,
    TailscaleIPs, Self, MagicDNSSuffix, CurrentTailnet, CertDomains, Peer, User, ...);
    CertDomains are the state's "cert_domains", else the names under "certs" (null when
    none, as Go encodes a nil slice); "self" may set Self's DNSName / TailscaleIPs.
  * Unknown paths: 404 "404 page not found".
  * Errors are text/plain; charset=utf-8 with a trailing newline (Go's http.Error).
Stand-in additions: methods other than GET/HEAD/POST get 405 (tailscaled's whois and
cert handlers do not look at the method); faults (below) simulate a broken tailscaled.

State file (JSON; write it atomically, e.g. to a temp name then rename; a missing or
empty file means "no identities"):
  {"identities": [{"match": "100.64.0.1:12345" | "100.64.0.1" | "[fd7a::1]:5" | "*",
                   "whois": {"Node": {...}, "UserProfile": {...}, "CapMap": {...}},
                   "fault": null}],
   "proxymap": {"tcp": {"127.0.0.1:41000": "100.64.0.1"},
                "udp": {"127.0.0.1:41001": "100.64.0.2"}},
   "certs": {"db.tail1234.ts.net": {"key": "/path/key.pem", "cert": "/path/cert.pem"}},
   "fault": null}
Matching (the node-by-address step): exact ip:port first, then ip. Then the proxymap,
whose values are Tailscale IPs resolved by match key or by an identity's
Node.Addresses (a mapped IP no identity owns is a 404, as in tailscaled). "*" matches last: it
stands for a tailscaled that knows every address, so tests about the proxymap must not
use it. A fault ("hang", "500", "403", "404",
"malformed", "close") either applies to every request (top level) or to requests that
match that identity:
  hang       send nothing until the client gives up (closes the connection)
  500 / 403  tailscaled's error statuses with its wording
  404        a 404 that is not tailscaled's "no match" answer (e.g. a proxy's)
  malformed  200 application/json with a truncated JSON body
  close      drop the connection without any response

Once listening, the --ready-file is written (atomically, containing the pid), or
"ready" is printed to stdout. Each request is logged to stderr, and so is each client
connection ("connection opened"), so tests can see keep-alive reuse.
"""

import argparse
import email.parser
import http.client
import ipaddress
import json
import os
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler

LOCALAPI_HOST = "local-tailscaled.sock"
TAILSCALE_VERSION = "1.80.0-standin"
TAILSCALE_CAP = "113"
CSP = ("default-src 'none'; frame-ancestors 'none'; script-src 'none'; "
       "script-src-elem 'none'; script-src-attr 'none'")
FAULTS = (None, "hang", "500", "403", "404", "malformed", "close")
HANG_MAX_SECONDS = 120  # a hung request never outlives a forgotten test by much
NODEKEY_RE = re.compile(r"nodekey:[0-9a-f]{64}")
PORT_RE = re.compile(r"[0-9]{1,5}")
STATE_MAX_BYTES = 16 << 20


class StateError(Exception):
    pass


class State:
    """The state file, re-read on every request and re-parsed when its bytes change.

    Comparing bytes rather than mtime: two atomic rewrites within one kernel clock tick
    can leave (inode, size, mtime) identical, and a test that swaps identities must
    never be answered from the old file. The file is small, so reading it is cheap.
    """

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.raw = None
        self.data = {"identities": [], "certs": {}, "fault": None}
        self.error = None
        # Encoded WhoIs bodies of the current state, by identity: Python's JSON encoder
        # falls back to pure Python with indent, which was a third of a request's cost,
        # and benchmarks should measure Waypoint, not this stand-in. Replaced (not
        # cleared) with the state, so a request holding the old state cannot fill the
        # new state's cache.
        self.bodies = {}

    def get(self):
        with self.lock:
            try:
                with open(self.path, "rb") as f:
                    raw = f.read(STATE_MAX_BYTES + 1)
            except FileNotFoundError:
                raw = b""
            except OSError as e:
                raise StateError("reading state file %s: %s" % (self.path, e))
            if raw != self.raw:
                self.raw = raw
                self._load(raw)
                self.bodies = {}
            if self.error:
                raise StateError(self.error)
            return self.data

    def whois_body(self, data, ident):
        """The WhoIs JSON for ident (an identity of data, the state get() returned)."""
        with self.lock:
            cache = self.bodies if data is self.data else {}
        body = cache.get(id(ident))
        if body is None:
            w = ident["whois"]
            res = {"Node": w.get("Node"), "UserProfile": w.get("UserProfile"),
                   "CapMap": w.get("CapMap") or None}
            for k, val in w.items():  # anything else the test put there, verbatim
                res.setdefault(k, val)
            body = json.dumps(res, indent="\t", ensure_ascii=False).encode()
            cache[id(ident)] = body
        return body

    def _load(self, raw):
        if raw == b"":
            self.data, self.error = {"identities": [], "certs": {}, "fault": None}, None
            return
        try:
            if len(raw) > STATE_MAX_BYTES:
                raise StateError("larger than %d bytes" % STATE_MAX_BYTES)
            data = json.loads(raw)
            validate_state(data)
            self.data, self.error = data, None
            log("state loaded: %d identities, %d certs, fault=%s" % (
                len(data.get("identities", [])), len(data.get("certs", {})),
                data.get("fault")))
        except (ValueError, StateError) as e:
            self.error = "bad state file %s: %s" % (self.path, e)
            log(self.error)


def validate_state(data):
    if not isinstance(data, dict):
        raise StateError("top level is not an object")
    if data.get("fault") not in FAULTS:
        raise StateError("unknown fault %r" % (data.get("fault"),))
    idents = data.get("identities", [])
    if not isinstance(idents, list):
        raise StateError("identities is not an array")
    for i, ident in enumerate(idents):
        if not isinstance(ident, dict) or not isinstance(ident.get("match"), str):
            raise StateError("identities[%d] needs a string 'match'" % i)
        if ident["match"] != "*" and parse_match(ident["match"]) is None:
            raise StateError("identities[%d].match %r is not ip, ip:port or *" %
                             (i, ident["match"]))
        if ident.get("fault") not in FAULTS:
            raise StateError("identities[%d]: unknown fault %r" % (i, ident.get("fault")))
        if ident.get("fault") is None and not isinstance(ident.get("whois"), dict):
            raise StateError("identities[%d] needs a 'whois' object" % i)
    pm = data.get("proxymap", {})
    if not isinstance(pm, dict):
        raise StateError("proxymap is not an object")
    for proto, m in pm.items():
        if proto not in ("tcp", "udp") or not isinstance(m, dict):
            raise StateError("proxymap[%r]: want \"tcp\" or \"udp\" with an object" % proto)
        for k, v in m.items():
            if parse_addr_port(k) is None or not isinstance(v, str) or parse_ip(v) is None:
                raise StateError("proxymap[%r][%r]: want \"ip:port\": \"tailscale ip\"" %
                                 (proto, k))
    cds = data.get("cert_domains", [])
    if not isinstance(cds, list) or not all(isinstance(d, str) for d in cds):
        raise StateError("cert_domains is not an array of strings")
    certs = data.get("certs", {})
    if not isinstance(certs, dict):
        raise StateError("certs is not an object")
    for name, c in certs.items():
        if not isinstance(c, dict) or not isinstance(c.get("key"), str) \
                or not isinstance(c.get("cert"), str):
            raise StateError("certs[%r] needs 'key' and 'cert' paths" % name)


def parse_addr_port(v):
    """netip.ParseAddrPort: "1.2.3.4:5" or "[v6]:5"; returns (ip, port) or None."""
    if v.startswith("["):
        end = v.find("]")
        if end < 0 or v[end + 1:end + 2] != ":":
            return None
        host, port = v[1:end], v[end + 2:]
        if "." in host and ":" not in host:
            return None  # [1.2.3.4]:5 is not accepted by Go either
    else:
        host, sep, port = v.rpartition(":")
        if not sep or ":" in host:
            return None
    ip = parse_ip(host)
    if ip is None or not PORT_RE.fullmatch(port) or int(port) > 65535:
        return None
    return ip, int(port)


def parse_ip(s):
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def parse_match(m):
    """A state-file match key: (ip, port) or (ip, None)."""
    ip = parse_ip(m)
    if ip is not None:
        return ip, None
    return parse_addr_port(m)


def node_addresses(ident):
    """The IPs of an identity's Node.Addresses ("100.64.0.1/32" -> 100.64.0.1)."""
    node = (ident.get("whois") or {}).get("Node") or {}
    out = []
    for a in node.get("Addresses") or []:
        ip = parse_ip(a.split("/", 1)[0]) if isinstance(a, str) else None
        if ip is not None:
            out.append(ip)
    return out


def node_by_addr(idents, ip, port, by_addresses=False):
    """tailscaled's NodeByAddr through the stand-in's match keys: exact ip:port, then ip
    (a test may pin a port to model one connection); with by_addresses, then a node
    owning ip in Node.Addresses (how a proxymap's Tailscale IP is resolved)."""
    by_ip = by_addr = None
    for ident in idents:
        if ident["match"] == "*":
            continue
        mip, mport = parse_match(ident["match"])
        if mip == ip and mport is not None and mport == port:
            return ident
        if mip == ip and mport is None and by_ip is None:
            by_ip = ident
        if by_addresses and by_addr is None and ip in node_addresses(ident):
            by_addr = ident
    return by_ip or by_addr


def proxymap_lookup(state, proto, ip, port):
    """proxymap.Mapper.WhoIsIPPort: the Tailscale IP registered for a local ip:port
    under exactly this proto ("tcp" or "udp"; any other proto matches nothing)."""
    for key, tsip in ((state.get("proxymap") or {}).get(proto) or {}).items():
        if parse_addr_port(key) == (ip, port):
            return parse_ip(tsip)
    return None


def find_identity(state, ip, port, nodekey, proto=""):
    """LocalBackend.WhoIs: the node owning ip; else (port != 0) the proxymap entry for
    ip:port under proto, or without proto TCP first, then UDP; then "*". Returns the
    identity entry or None."""
    idents = state.get("identities", [])
    if nodekey is not None:
        for ident in idents:
            node = (ident.get("whois") or {}).get("Node") or {}
            if node.get("Key") == nodekey:
                return ident
        return None
    ident = node_by_addr(idents, ip, port)
    if ident is not None:
        return ident
    if port:
        for tryproto in ([proto] if proto else ["tcp", "udp"]):
            tsip = proxymap_lookup(state, tryproto, ip, port)
            if tsip is not None:
                # A mapped IP no node owns is a miss, as in tailscaled.
                return node_by_addr(idents, tsip, 0, by_addresses=True)
    for ident in idents:
        if ident["match"] == "*":
            return ident
    return None


def log(msg):
    sys.stderr.write("localapi-standin[%d]: %s\n" % (os.getpid(), msg))
    sys.stderr.flush()


def _parse_headers(fp, _class=http.client.HTTPMessage):
    """http.client.parse_headers without the email parser for plain "Name: value" lines
    (what curl sends): the email parser was a fifth of a request's cost. Anything else
    (folded lines, a line without a colon) goes through the email parser as before."""
    lines = http.client._read_headers(fp)
    if lines[-1] not in (b"\r\n", b"\n") or \
            any(line[:1].isspace() or b":" not in line for line in lines[:-1]):
        return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))
    msg = _class()
    for line in lines[:-1]:
        name, _, value = line.decode("iso-8859-1").partition(":")
        msg[name] = value.strip()
    return msg


http.client.parse_headers = _parse_headers  # http.server looks it up at call time


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like tailscaled's net/http server
    server_version = "standin"

    # -- plumbing ---------------------------------------------------------------

    def setup(self):
        # One line per client connection: tests count these to prove keep-alive reuse.
        super().setup()
        log("connection opened")

    def address_string(self):
        return "unix"

    def log_message(self, fmt, *args):
        log(fmt % args)

    def send_response(self, code, message=None):
        # net/http sends Date but no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def reply(self, code, body, ctype, headers=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def http_error(self, code, msg):
        """Go's http.Error: text/plain, nosniff, message plus newline."""
        self.reply(code, (msg + "\n").encode(), "text/plain; charset=utf-8",
                   [("X-Content-Type-Options", "nosniff")])

    def localapi_headers(self):
        return [("Tailscale-Version", TAILSCALE_VERSION), ("Tailscale-Cap", TAILSCALE_CAP),
                ("Content-Security-Policy", CSP), ("X-Frame-Options", "DENY"),
                ("X-Content-Type-Options", "nosniff")]

    # -- methods ------------------------------------------------------------------

    def do_GET(self):
        self.dispatch()

    def do_HEAD(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def not_allowed(self):
        self.http_error(405, "use GET")

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = not_allowed

    # -- routing --------------------------------------------------------------------

    def dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        host = self.headers.get("Host")
        if host is None and self.request_version == "HTTP/1.1":
            self.http_error(400, "Bad Request: missing required Host header")
            return
        if not path.startswith("/localapi/"):
            self.http_error(404, "404 page not found")
            return
        if self.headers.get("Referer") or self.headers.get("Origin") or \
                (host or "") not in ("", LOCALAPI_HOST):
            log("refused: Host=%r Referer=%r Origin=%r" % (
                host, self.headers.get("Referer"), self.headers.get("Origin")))
            self.http_error(403, "invalid localapi request")
            return
        try:
            state = self.server.state.get()
        except StateError as e:
            self.http_error(500, "stand-in: %s" % e)
            return
        query = self.form(url.query)
        if path == "/localapi/v0/whois":
            self.serve_whois(state, query)
        elif path == "/localapi/v0/status":
            self.serve_status(state, query)
        elif path.startswith("/localapi/v0/cert/"):
            self.serve_cert(state, path[len("/localapi/v0/cert/"):], query)
        else:
            self.http_error(404, "404 page not found")

    def form(self, query):
        """r.FormValue: URL query, plus a urlencoded POST body."""
        form = urllib.parse.parse_qs(query, keep_blank_values=True)
        if self.command == "POST":
            n = int(self.headers.get("Content-Length") or 0)
            if 0 < n <= 65536:
                body = self.rfile.read(n).decode("utf-8", "replace")
                for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items():
                    form.setdefault(k, []).extend(v)
        return {k: v[0] for k, v in form.items()}

    # -- faults -----------------------------------------------------------------------

    def apply_fault(self, fault, denied_msg):
        """Returns True when the fault answered (or swallowed) the request."""
        if fault is None:
            return False
        log("fault %s" % fault)
        if fault == "hang":
            self.hang()
        elif fault == "500":
            self.http_error(500, "server has no local backend")
        elif fault == "403":
            self.http_error(403, denied_msg)
        elif fault == "404":  # a 404 that is not tailscaled's "no match" (e.g. a proxy)
            self.http_error(404, "404 page not found")
        elif fault == "malformed":
            self.reply(200, b'{"Node": {"ID": 1, "StableID": "n', "application/json",
                       self.localapi_headers())
        elif fault == "close":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return True

    def hang(self):
        """Sends nothing until the client closes its end (or HANG_MAX_SECONDS)."""
        deadline = time.monotonic() + HANG_MAX_SECONDS
        self.close_connection = True
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.connection], [], [], 1.0)
            if r:
                try:
                    if not self.connection.recv(4096):
                        break
                except OSError:
                    break
        log("hang ended")

    # -- handlers -----------------------------------------------------------------------

    def serve_whois(self, state, q):
        if self.apply_fault(state.get("fault"), "whois access denied"):
            return
        v = q.get("addr", "")
        if v == "":
            self.http_error(400, "missing 'addr' parameter")
            return
        ip = port = nodekey = None
        if v.startswith("nodekey:"):
            if not NODEKEY_RE.fullmatch(v):
                self.http_error(400, "invalid nodekey in 'addr' parameter")
                return
            nodekey = v
        else:
            ip = parse_ip(v)
            if ip is not None:
                port = 0
            else:
                ap = parse_addr_port(v)
                if ap is None:
                    self.http_error(400, "invalid 'addr' parameter")
                    return
                ip, port = ap
        ident = find_identity(state, ip, port, nodekey, q.get("proto", ""))
        if ident is None:
            self.http_error(404, "no match for IP:port")
            return
        if self.apply_fault(ident.get("fault"), "whois access denied"):
            return
        body = self.server.state.whois_body(state, ident)
        self.reply(200, body, "application/json", self.localapi_headers())

    def serve_status(self, state, q):
        """serveStatus: ipnstate.Status, tab-indented by json.Encoder (trailing newline).
        peers=false (StatusWithoutPeers, what tailscale's client library asks for
        CertDomains) leaves Peer null."""
        if self.apply_fault(state.get("fault"), "status access denied"):
            return
        body = (json.dumps(status_json(state, defbool(q.get("peers", ""), True)),
                           indent="\t") + "\n").encode()
        self.reply(200, body, "application/json", self.localapi_headers())

    def serve_cert(self, state, domain, q):
        if self.apply_fault(state.get("fault"), "cert access denied"):
            return
        certs = state.get("certs", {})
        if domain not in certs:
            self.http_error(500, cert_domain_error(domain, sorted(certs)))
            return
        try:
            with open(certs[domain]["key"], "rb") as f:
                key = f.read()
            with open(certs[domain]["cert"], "rb") as f:
                cert = f.read()
        except OSError as e:
            self.http_error(500, "stand-in: reading cert files: %s" % e)
            return
        kind = q.get("type", "")
        if kind in ("", "crt", "cert"):
            body = cert
        elif kind == "key":
            body = key
        elif kind == "pair":
            body = key + cert
        else:
            self.http_error(400, 'invalid type; want "cert" (default), "key", or "pair"')
            return
        self.reply(200, body, "text/plain", self.localapi_headers())


def defbool(v, default):
    """localapi's defBool: strconv.ParseBool, else the default."""
    v = v.strip() if isinstance(v, str) else ""
    if v in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if v in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    return default


def cert_domains(state):
    """The node's CertDomains: state "cert_domains" if given, else the "certs" names
    (the cert endpoint permits exactly those, as tailscaled permits its CertDomains)."""
    if "cert_domains" in state:
        return state.get("cert_domains") or None
    return sorted(state.get("certs", {})) or None  # Go encodes a nil slice as null


def status_json(state, peers):
    """ipnstate.Status as tailscaled encodes it (field names and order of the Go struct)."""
    cds = cert_domains(state)
    me = state.get("self") or {}
    ips = me.get("TailscaleIPs") or ["100.64.0.100", "fd7a:115c:a1e0::100"]
    dns = me.get("DNSName") or ((cds[0] + ".") if cds else "waypoint-db.tail1234.ts.net.")
    suffix = dns.rstrip(".").split(".", 1)[1] if "." in dns.rstrip(".") else ""
    self_status = {
        "ID": me.get("ID", "nSELF"), "PublicKey": "nodekey:" + "0" * 64,
        "HostName": dns.split(".", 1)[0], "DNSName": dns, "OS": "linux", "UserID": 1,
        "TailscaleIPs": ips, "AllowedIPs": [ip + ("/32" if "." in ip else "/128") for ip in ips],
        "Tags": me.get("Tags"), "Addrs": None, "CurAddr": "", "Relay": "", "RxBytes": 0,
        "TxBytes": 0, "Created": "0001-01-01T00:00:00Z", "LastWrite": "0001-01-01T00:00:00Z",
        "LastSeen": "0001-01-01T00:00:00Z", "LastHandshake": "0001-01-01T00:00:00Z",
        "Online": True, "ExitNode": False, "ExitNodeOption": False, "Active": False,
        "PeerAPIURL": None, "InNetworkMap": True, "InMagicSock": False, "InEngine": False}
    return {
        "Version": TAILSCALE_VERSION, "TUN": False, "BackendState": "Running",
        "HaveNodeKey": True, "AuthURL": "", "TailscaleIPs": ips, "Self": self_status,
        "Health": None, "MagicDNSSuffix": suffix,
        "CurrentTailnet": {"Name": "example.com", "MagicDNSSuffix": suffix,
                           "MagicDNSEnabled": True},
        "CertDomains": cds, "Peer": {} if peers else None,
        "User": {"1": {"ID": 1, "LoginName": "admin@example.com", "DisplayName": "Admin",
                       "ProfilePicURL": ""}},
        "ClientVersion": None}


def cert_domain_error(domain, okay):
    """tailscaled's checkCertDomain wording."""
    if domain == "":
        return "missing domain name"
    if not okay:
        return "your Tailscale account does not support getting TLS certs"
    if len(okay) == 1:
        return 'invalid domain "%s"; only "%s" is permitted' % (domain, okay[0])
    return 'invalid domain "%s"; must be one of [%s]' % (
        domain, " ".join('"%s"' % d for d in okay))


class Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True      # a hung handler must not keep the process alive
    block_on_close = False
    # socketserver's default backlog is 5: a burst of connects (a driver's pool of 20)
    # then finds the unix socket full and connect() fails at once with EAGAIN. Go's
    # listener, which tailscaled uses, takes the system maximum.
    request_queue_size = socket.SOMAXCONN


def write_ready(path):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write("%d\n" % os.getpid())
    os.rename(tmp, path)


def watch_owner(pid):
    """Watchdog, not synchronisation: checks twice a second that the owner lives."""
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            log("owner %d is gone; exiting" % pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        except PermissionError:
            pass
        time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser(description="tailscaled LocalAPI stand-in for tests")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--ready-file")
    ap.add_argument("--owner-pid", type=int,
                    help="exit when this process is gone (so a crashed test leaves nothing)")
    args = ap.parse_args()

    if os.path.exists(args.socket):
        os.unlink(args.socket)  # a stale socket from a crashed run
    server = Server(args.socket, Handler)
    server.state = State(args.state)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if args.owner_pid:
        threading.Thread(target=watch_owner, args=(args.owner_pid,), daemon=True).start()
    log("listening on %s (state %s)" % (args.socket, args.state))
    if args.ready_file:
        write_ready(args.ready_file)
    else:
        print("ready", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        try:
            os.unlink(args.socket)
        except OSError:
            pass
        log("stopped")


if __name__ == "__main__":
    main()
