#!/bin/bash
# Builds Waypoint and runs its unit, integration and e2e suites inside Debian 13 (trixie),
# with Debian 13's own packages: mbedTLS 3.6, libpq 17, PostgreSQL 17 and the rest.
#
#   scripts/debian13.sh check     build in build-debian13/ and run ctest there (make check-debian13)
#   scripts/debian13.sh prepare   only make (or verify) the cached Debian 13 system
#   scripts/debian13.sh shell [CMD...]   a root shell (or CMD) in it, source tree at /src
#   scripts/debian13.sh remove    unmount and delete the cached system (the next run remakes it)
#
# The system is made once with debootstrap from Debian's archive (the mirror the machine's
# own apt sources name; WP_DEBIAN_MIRROR overrides it) into $WP_CACHE/debian13/root
# (default /var/cache/waypoint), then the packages below are installed into it with its
# own apt, from trixie, trixie-updates and trixie-security (and the base system upgraded
# from them, as a maintained Debian 13 would be). The machine's apt sources are
# never touched. A stamp (a hash of the suite, the mirrors and the package list) marks a
# finished system: a later run with the same stamp reuses it without the network, a
# changed list or an unfinished one is made again from scratch.
#
# A run bind-mounts the checkout at /src (builds go to /src/build-debian13, so they stay
# in the checkout like build/ and build-asan/) and mounts /proc, /dev, /dev/pts, a fresh
# /dev/shm (PostgreSQL's shared memory) and /sys, then runs cmake, the build and ctest as
# root in the chroot. The test harness starts PostgreSQL as the chroot's `postgres` user
# with runuser, as on Debian 12. The chroot shares the machine's network; the tests use
# only the loopback. An EXIT trap kills whatever still runs inside the chroot (servers a
# failed test left) and unmounts everything, also on failure or Ctrl-C; the system is
# deleted only once nothing is mounted under it (rm --one-file-system besides).
#
# Environment: WP_CACHE, WP_DEBIAN_MIRROR, WP_DEBIAN_SECURITY_MIRROR, JOBS (default
# nproc), CTEST_ARGS (extra ctest arguments, e.g. "-L unit"), WP_DEBIAN13_BUILD (the
# build dir in the checkout, default build-debian13). docs/testing.md ("Debian 13").
set -euo pipefail

[ "$(id -u)" -eq 0 ] || {
    echo "debian13: must run as root (debootstrap, mount and chroot need it)" >&2
    exit 1
}
SRC=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${WP_CACHE:-/var/cache/waypoint}/debian13"
# Resolved: kill_inside compares it with /proc/PID/root.
CACHE=$(realpath "${WP_CACHE:-/var/cache/waypoint}/debian13")
ROOT=$CACHE/root
NEW=$CACHE/root.new
SUITE=trixie
BUILD=${WP_DEBIAN13_BUILD:-build-debian13}
JOBS=${JOBS:-$(nproc)}
CTEST_ARGS=${CTEST_ARGS:-}
PG_MAJOR=17

# Debian 13's packages for building, the unit/integration/e2e suites (psql, pgbench,
# python3 for the LocalAPI stand-in, openssl, ss, prometheus/promtool for the metrics
# tests, curl) and PostgreSQL 17 itself; hiredis and redis for the Redis-backed parts.
PKGS="build-essential cmake pkg-config
libmbedtls-dev libpq-dev libcurl4-openssl-dev libinih-dev libjansson-dev
libpg-query-dev libcmocka-dev libmicrohttpd-dev libhiredis-dev
postgresql-$PG_MAJOR postgresql-client-$PG_MAJOR python3 openssl procps iproute2
prometheus curl redis-server ca-certificates"

say() { echo "debian13: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# mirror_for SUITE: the URI of the machine's apt source for SUITE (deb822 .sources or
# one-line .list), so Debian 13 comes from the same mirror as Debian 12's packages.
mirror_for() {
    local want=$1 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v want="$want" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uri = ""; ok = 0
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
                    if ($i ~ /^Suites:/) {
                        n = split($i, s, /[ \t]+/)
                        for (j = 2; j <= n; j++) if (s[j] == want) ok = 1
                    }
                }
                if (ok && uri != "") { print uri; exit }
            }' "$f"
    done
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk -v want="$want" '$1 == "deb" { u = 2; if ($2 ~ /^\[/) { while ($u !~ /\]$/) u++; u++ }
                                 if ($(u + 1) == want) print $u }' || true
}

host_codename() { (. /etc/os-release && echo "${VERSION_CODENAME:-}"); }

MIRROR=${WP_DEBIAN_MIRROR:-$(mirror_for "$(host_codename)" | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${WP_DEBIAN_SECURITY_MIRROR:-$(mirror_for "$(host_codename)-security" | head -n 1)}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
# Bump when the way the system is set up changes, so old caches are remade.
LAYOUT=2
STAMP=$(printf '%s\n' "$LAYOUT" "$SUITE" "$MIRROR" "$SECURITY" $PKGS | sha256sum | cut -c1-16)

# ------------------------------------------------------------------ mounts ----

# mounts_under DIR: mount points at or below DIR, deepest first.
mounts_under() {
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
        sort -r
}

# kill_inside DIR: every process whose root is DIR (left by a failed test or build).
kill_inside() {
    local p r
    for p in /proc/[0-9]*; do
        r=$(readlink "$p/root" 2>/dev/null) || continue
        [ "$r" = "$1" ] && kill -KILL "${p#/proc/}" 2>/dev/null || true
    done
}

unmount_all() {
    local dir=$1 m tries
    [ -d "$dir" ] || return 0
    kill_inside "$dir"
    for tries in 1 2 3 4 5; do
        [ -z "$(mounts_under "$dir")" ] && return 0
        for m in $(mounts_under "$dir"); do
            umount "$m" 2>/dev/null || true
        done
        [ -z "$(mounts_under "$dir")" ] && return 0
        kill_inside "$dir"
        sleep 0.2
    done
    for m in $(mounts_under "$dir"); do
        say "lazy unmount of $m (busy)"
        umount -l "$m" || true
    done
    [ -z "$(mounts_under "$dir")" ] || die "still mounted under $dir: $(mounts_under "$dir" | tr '\n' ' ')"
}

# safe_rm DIR: deletes a chroot tree only when nothing is mounted in it.
safe_rm() {
    [ -e "$1" ] || return 0
    unmount_all "$1"
    rm -rf --one-file-system "$1"
}

# bind SRC DST: a private bind mount (nothing mounted below DST reaches SRC's mount).
bind() {
    mkdir -p "$2"
    mount --bind "$1" "$2"
    mount --make-private "$2"
}

mount_all() {
    local dir=$1
    MOUNTED=$dir
    mount -t proc proc "$dir/proc"
    bind /sys "$dir/sys"
    mount -o remount,bind,ro "$dir/sys" # nothing in the chroot has to change the machine
    bind /dev "$dir/dev"
    bind /dev/pts "$dir/dev/pts"
    mkdir -p "$dir/dev/shm"
    mount -t tmpfs -o mode=1777,nosuid,nodev shm "$dir/dev/shm"
}

MOUNTED=""
cleanup() {
    local rc=$?
    if [ -n "$MOUNTED" ]; then
        unmount_all "$MOUNTED" || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# in_root DIR CMD...: CMD as root in the chroot with a clean environment.
in_root() {
    local dir=$1
    shift
    chroot "$dir" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive "$@"
}

# in_root_bg DIR CMD...: in_root in the background, waited for, so that a signal to this
# script runs its traps at once (bash runs traps only after a foreground command ends)
# and the EXIT trap kills what runs inside.
in_root_bg() {
    in_root "$@" &
    wait $!
}

# ------------------------------------------------------------------ system ----

ensure_debootstrap() {
    command -v debootstrap >/dev/null && [ -e /usr/share/debootstrap/scripts/$SUITE ] && return
    say "installing debootstrap (machine's own apt, its own suite)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        debootstrap >&2 || {
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            debootstrap >&2
    }
    [ -e /usr/share/debootstrap/scripts/$SUITE ] || die "this debootstrap does not know $SUITE"
}

make_system() {
    local t0=$SECONDS
    ensure_debootstrap
    safe_rm "$NEW"
    say "debootstrap $SUITE from $MIRROR into $NEW"
    debootstrap --variant=minbase --components=main "$SUITE" "$NEW" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 || {
        tail -n 30 "$CACHE/debootstrap.log" >&2
        tail -n 30 "$NEW/debootstrap/debootstrap.log" >&2 2>/dev/null || true
        die "debootstrap failed (log: $CACHE/debootstrap.log)"
    }
    say "debootstrap took $((SECONDS - t0)) s"

    t0=$SECONDS
    cat >"$NEW/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    rm -f "$NEW/etc/apt/sources.list"
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        >"$NEW/etc/apt/apt.conf.d/90waypoint"
    # No daemon starts in the chroot while packages install (the tests start their own).
    printf '#!/bin/sh\nexit 101\n' >"$NEW/usr/sbin/policy-rc.d"
    chmod 755 "$NEW/usr/sbin/policy-rc.d"
    # postgresql-common would create (and try to start) a "main" cluster; the tests make
    # their own throwaway clusters.
    mkdir -p "$NEW/etc/postgresql-common/createcluster.d"
    echo "create_main_cluster = false" >"$NEW/etc/postgresql-common/createcluster.d/waypoint.conf"
    cp -L /etc/resolv.conf "$NEW/etc/resolv.conf"

    mount_all "$NEW"
    say "installing Debian 13's packages"
    # shellcheck disable=SC2086
    { in_root_bg "$NEW" apt-get update -q &&
        in_root_bg "$NEW" apt-get install -y -q -o Dpkg::Options::=--force-confold $PKGS &&
        in_root_bg "$NEW" apt-get dist-upgrade -y -q -o Dpkg::Options::=--force-confold &&
        in_root_bg "$NEW" apt-get clean; } >"$CACHE/install.log" 2>&1 || {
        tail -n 40 "$CACHE/install.log" >&2
        die "package install failed (log: $CACHE/install.log)"
    }
    in_root "$NEW" dpkg-query -W -f='${Package} ${Version}\n' >"$NEW/etc/waypoint-packages.txt"
    unmount_all "$NEW"
    MOUNTED=""
    rm -rf "$NEW/var/lib/apt/lists/"* "$NEW/tmp/"*
    echo "$STAMP" >"$NEW/etc/waypoint-stamp"
    safe_rm "$ROOT"
    mv "$NEW" "$ROOT"
    say "packages took $((SECONDS - t0)) s; the system is $(du -sh --one-file-system "$ROOT" | cut -f1)"
}

prepare() {
    mkdir -p "$CACHE"
    if [ -f "$ROOT/etc/waypoint-stamp" ] && [ "$(cat "$ROOT/etc/waypoint-stamp")" = "$STAMP" ]; then
        return
    fi
    say "no cached Debian 13 system with this package list: making one"
    make_system
}

# check_system: what the suites rely on is really there, named in the error if not.
check_system() {
    local v
    v=$(grep -E '^lib(mbedtls|pq)-dev |^postgresql-17 ' "$ROOT/etc/waypoint-packages.txt" | tr '\n' ' ')
    say "Debian $(cat "$ROOT/etc/debian_version"): $v"
    [ -x "$ROOT/usr/lib/postgresql/$PG_MAJOR/bin/initdb" ] ||
        die "no PostgreSQL $PG_MAJOR server in the Debian 13 system"
    in_root "$ROOT" id postgres >/dev/null || die "no postgres user in the Debian 13 system"
    in_root "$ROOT" runuser -u postgres -- "/usr/lib/postgresql/$PG_MAJOR/bin/postgres" -V >/dev/null ||
        die "runuser -u postgres does not work in the Debian 13 system"
}

# enter: mounts for a run, the checkout at /src, an empty /tmp.
enter() {
    # Under the lock nothing else uses the system: mounts or processes still there were
    # left by a run that was killed outright (kill -9), so its trap never ran.
    unmount_all "$ROOT"
    mount_all "$ROOT"
    bind "$SRC" "$ROOT/src"
    find "$ROOT/tmp" -mindepth 1 -xdev -delete 2>/dev/null || true
    chmod 1777 "$ROOT/tmp"
    check_system
}

# The Debian 13 build: PostgreSQL 17 from Debian, no real-tailnet test (Go; it runs in the
# Debian 12 build and exercises no library code that differs).
run_check() {
    local t0=$SECONDS rc=0
    in_root_bg "$ROOT" sh -c "cd /src &&
        cmake -S . -B '$BUILD' -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWP_TAILNET=OFF \
            -DWP_PG_VERSIONS=$PG_MAJOR -DWP_PG_BIN_$PG_MAJOR=/usr/lib/postgresql/$PG_MAJOR/bin >/dev/null &&
        cmake --build '$BUILD' -j '$JOBS'" || rc=$?
    say "configure + build took $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || die "the build failed inside Debian 13"
    t0=$SECONDS
    # shellcheck disable=SC2086
    in_root_bg "$ROOT" sh -c "cd '/src/$BUILD' && ctest --output-on-failure -j '$JOBS' $CTEST_ARGS" || rc=$?
    say "tests took $((SECONDS - t0)) s"
    return "$rc"
}

# One run at a time per cache (a second waits).
exec 9>"$CACHE.lock"
flock 9 || die "cannot lock $CACHE.lock"

case ${1:-check} in
prepare)
    prepare
    ;;
check)
    prepare
    enter
    run_check
    ;;
shell)
    shift
    prepare
    enter
    if [ $# -gt 0 ]; then
        in_root_bg "$ROOT" "$@"
    else
        in_root "$ROOT" bash -l
    fi
    ;;
remove)
    safe_rm "$NEW"
    safe_rm "$ROOT"
    say "removed the Debian 13 system in $CACHE"
    ;;
*)
    die "usage: $0 [check|prepare|shell [CMD...]|remove]"
    ;;
esac
