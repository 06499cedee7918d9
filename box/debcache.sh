#!/bin/sh
# usage: debcache.sh in|out CHROOT CACHE
# Moves downloaded .debs between hpnlab's cache and the chroot's apt archive (an mmdebstrap
# hook of build.sh): hard links where both sit on one file system, copies otherwise.
# mmdebstrap's own sync-in/sync-out copy the whole ~160 MB each way.
set -eu
archives=$2/var/cache/apt/archives
case $1 in
  in)  src=$3 dst=$archives ;;
  out) src=$archives dst=$3 ;;
  *)   echo "usage: $0 in|out CHROOT CACHE" >&2; exit 2 ;;
esac
mkdir -p "$dst"
for deb in "$src"/*.deb; do
  [ -e "$deb" ] || continue
  [ -e "$dst/${deb##*/}" ] && continue
  ln "$deb" "$dst/" 2>/dev/null || cp -p "$deb" "$dst/"
done
