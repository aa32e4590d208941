#!/bin/sh
# Put promtool at $1 (make ops-check: .venv/bin/promtool) if it is not there yet.
#
# The promtool on PATH if there is one; else the one in Debian's `prometheus` package,
# which ships it: the package is downloaded with `apt-get download` and only that binary is
# extracted, so no Prometheus service is installed or started. Elsewhere, install promtool
# from a Prometheus release or your distribution and put it on PATH.
set -eu
dest=$(realpath -m "$1")
[ -x "$dest" ] && exit 0
mkdir -p "$(dirname "$dest")"
if found=$(command -v promtool); then
    ln -sf "$found" "$dest"
    exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "install-promtool: no promtool on PATH and no apt-get to fetch Debian's:" \
         "install promtool (from a Prometheus release or your distribution), then run again" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
# The package lists may be missing or stale on a fresh machine: update once, then retry.
apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }
dpkg-deb -x prometheus_*.deb root
install -m 0755 root/usr/bin/promtool "$dest"
"$dest" --version 2>&1 | head -n 1
