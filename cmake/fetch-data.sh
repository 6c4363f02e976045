#!/usr/bin/env bash
# Fetches the real data sets the examples run on, from the machine's own Debian archive, into one
# directory (default /var/tmp/procflow-data; override with $PROCFLOW_DATA or the first argument).
# Idempotent: a file that is already there is kept. Installing bible-kjv needs root (apt-get); without
# root the script prints the exact command and fails. Fails (exit 1) if any data set is missing at the end.
#
#   Packages     the Debian package index(es) `apt-get update` leaves in /var/lib/apt/lists/,
#                decompressed with `apt-helper cat-file` and concatenated          -> packages_etl
#   bible-kjv.txt  the King James Bible from the bible-kjv package (`bible -f gen1:1-rev22:21`) -> word_count
#   tor-geoipdb/usr/share/tor/geoip  Tor's IPv4-to-country table, from the tor-geoipdb .deb
#                unpacked with `dpkg-deb -x` (tor itself is not installed)           -> geoip_etl
set -euo pipefail
data="${1:-${PROCFLOW_DATA:-/var/tmp/procflow-data}}"
mkdir -p "$data"
data="$(cd "$data" && pwd)"
export DEBIAN_FRONTEND=noninteractive
root=0; [ "$(id -u)" -eq 0 ] && root=1

updated=0
apt_update() {  # at most once per run, and only as root
  if [ $updated -eq 0 ] && [ $root -eq 1 ]; then apt-get update -qq; updated=1; fi
}

# 1. Packages index
if [ ! -s "$data/Packages" ]; then
  shopt -s nullglob
  lists=(/var/lib/apt/lists/*_Packages /var/lib/apt/lists/*_Packages.*)
  if [ ${#lists[@]} -eq 0 ]; then apt_update; lists=(/var/lib/apt/lists/*_Packages /var/lib/apt/lists/*_Packages.*); fi
  shopt -u nullglob
  if [ ${#lists[@]} -eq 0 ]; then
    echo "fetch-data: no Packages index in /var/lib/apt/lists; run: sudo apt-get update" >&2
    exit 1
  fi
  tmp="$data/Packages.tmp-$$"
  : >"$tmp"
  for f in "${lists[@]}"; do
    # apt-helper handles .lz4/.gz/.xz; separate files by a blank line so records never merge.
    /usr/lib/apt/apt-helper cat-file "$f" >>"$tmp"
    printf '\n' >>"$tmp"
  done
  mv "$tmp" "$data/Packages"
  echo "fetch-data: $data/Packages ($(grep -c '^Package:' "$data/Packages") records from ${#lists[@]} index files)"
fi

# 2. bible-kjv text
if [ ! -s "$data/bible-kjv.txt" ]; then
  if ! command -v bible >/dev/null 2>&1; then
    if [ $root -eq 0 ]; then
      echo "fetch-data: word_count needs the bible-kjv package; run: sudo apt-get install -y bible-kjv" >&2
      exit 1
    fi
    apt_update
    apt-get install -y -qq --no-install-recommends bible-kjv >/dev/null
  fi
  bible -f gen1:1-rev22:21 >"$data/bible-kjv.txt.tmp-$$"
  mv "$data/bible-kjv.txt.tmp-$$" "$data/bible-kjv.txt"
  echo "fetch-data: $data/bible-kjv.txt ($(wc -c <"$data/bible-kjv.txt") bytes)"
fi

# 3. tor-geoipdb, unpacked without installing
geoip="$data/tor-geoipdb/usr/share/tor/geoip"
if [ ! -s "$geoip" ]; then
  work="$data/tor-geoipdb.tmp-$$"
  rm -rf "$work"; mkdir -p "$work"
  if ! (cd "$work" && apt-get download -qq tor-geoipdb >/dev/null 2>&1); then
    apt_update
    (cd "$work" && apt-get download -qq tor-geoipdb)
  fi
  dpkg-deb -x "$work"/tor-geoipdb_*.deb "$work/root"
  rm -rf "$data/tor-geoipdb"
  mv "$work/root" "$data/tor-geoipdb"
  rm -rf "$work"
  echo "fetch-data: $geoip ($(grep -vc '^#' "$geoip") rows)"
fi

for f in "$data/Packages" "$data/bible-kjv.txt" "$geoip"; do
  [ -s "$f" ] || { echo "fetch-data: missing $f" >&2; exit 1; }
done
echo "fetch-data: data sets ready in $data"
