#!/bin/sh
# Fetches Debian 13's mbedTLS 3.6 LTS packages and unpacks them for a second build.
#
#   scripts/mbedtls-3.6.sh        prints the unpacked root (with usr/include, usr/lib/...)
#
# Debian 12 ships mbedTLS 2.28 (upstream support ended with 2024); Debian 13 ships 3.6 LTS.
# Waypoint builds against both from one code base (docs/tls.md). This script downloads
# Debian 13's four packages from the same mirror the machine's own apt sources use, with a
# PRIVATE apt configuration (its own sources file, lists and cache under the cache dir):
# the machine's apt sources never learn about trixie, so nothing from trixie can ever be
# installed by accident. `apt-get download` verifies the packages against trixie's signed
# Release file (debian-archive-keyring has the trixie keys), then `dpkg-deb -x` unpacks
# them into the cache; nothing is installed. The libraries need glibc 2.33+, which
# Debian 12 has, so the test binaries run here with an rpath into the cache.
#
# Cache: $WP_CACHE/mbedtls-3.6 (default /var/cache/waypoint/mbedtls-3.6). Idempotent: a
# tree whose .stamp names the expected packages is reused with no network. Progress goes
# to stderr; the unpacked root is the only line on stdout.
set -eu

CACHE=${WP_CACHE:-/var/cache/waypoint}/mbedtls-3.6
PKGS="libmbedtls-dev libmbedtls21 libmbedx509-7 libmbedcrypto16"

say() { echo "mbedtls-3.6: $*" >&2; }
die() { say "$*"; exit 1; }

root=$CACHE/root
if [ -f "$root/.stamp" ] && [ "$(cat "$root/.stamp")" = "$PKGS" ] &&
    [ -f "$root/usr/include/mbedtls/build_info.h" ]; then
    echo "$root"
    exit 0
fi

# The mirror the machine already uses for Debian itself (deb822 or one-line sources).
mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' |
    grep -v -- '-security' | head -n 1)
[ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list |
    awk '{print $2}' | grep -v -- '-security' | head -n 1)
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list*"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "$keyring missing (apt-get install debian-archive-keyring)"

say "fetching $PKGS (trixie) from $mirror into $CACHE"
mkdir -p "$CACHE/apt/archives/partial" "$CACHE/lists/partial" "$CACHE/debs"
chmod a+rx "$CACHE" "$(dirname "$CACHE")"
cat >"$CACHE/sources.list" <<EOF
deb [signed-by=$keyring] $mirror trixie main
EOF
# Only this private configuration is used: no machine sources, its own lists and cache.
set -- -o Dir::Etc::SourceList="$CACHE/sources.list" -o Dir::Etc::SourceParts=/dev/null \
    -o Dir::State::Lists="$CACHE/lists" -o Dir::Cache="$CACHE/apt" \
    -o APT::Architecture="$(dpkg --print-architecture)" -o Debug::NoLocking=1 -q
apt-get "$@" update >&2 || die "apt-get update (private trixie sources) failed"
(cd "$CACHE/debs" && rm -f ./*.deb && apt-get "$@" download $PKGS >&2) ||
    die "apt-get download $PKGS failed"

work=$(mktemp -d "$CACHE/.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
for deb in "$CACHE"/debs/*.deb; do
    dpkg-deb -x "$deb" "$work" || die "dpkg-deb -x $deb failed"
done
[ -f "$work/usr/include/mbedtls/build_info.h" ] || die "unpacked tree has no mbedTLS 3 headers"
# The -dev package's .so symlinks point at the runtime packages' files, all unpacked here.
lib=$(dirname "$(find "$work/usr/lib" -name 'libmbedtls.so' | head -n 1)")
[ -e "$lib/libmbedtls.so" ] || die "libmbedtls.so missing from the unpacked tree"
chmod -R a+rX "$work"
echo "$PKGS" >"$work/.stamp"
rm -rf "$root"
mv "$work" "$root"
trap - EXIT
echo "$root"
