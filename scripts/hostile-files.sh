#!/usr/bin/env bash
# Measures how meshd's file reading copes with issue 13's hostile files, as a
# user would meet them: each file is checked with `meshctl analyze
# --catalog`, which reads and parses a catalog exactly as meshd's watcher
# does, and /usr/bin/time reports wall time, CPU time and peak RSS. The
# figures are in docs/performance.md ("Hostile files").
#
# Usage: scripts/hostile-files.sh [MESHCTL]
#   MESHCTL  a meshctl binary to measure (default: built from this checkout).
#            Build one from an older commit to compare, e.g.
#              git worktree add /tmp/old bfcc7a3 && (cd /tmp/old && go build -o /tmp/meshctl-old ./cmd/meshctl)
#              scripts/hostile-files.sh /tmp/meshctl-old
#
# Every run is bounded, so an old build cannot hang the machine or take its
# memory: TIMEOUT seconds of wall time (default 60), and 2 GiB of address
# space (what /dev/zero is read until).
set -euo pipefail

cd "$(dirname "$0")/.."
timeout_s="${TIMEOUT:-60}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

meshctl="${1:-}"
if [[ -z "$meshctl" ]]; then
  meshctl="$work/meshctl"
  go build -o "$meshctl" ./cmd/meshctl
fi

# labels N: a catalog whose one endpoint has N labels.
labels() {
  printf 'services:\n  - name: web\n    endpoints:\n      - address: 10.0.0.1\n        port: 80\n        labels:\n'
  seq 0 $(($1 - 1)) | sed 's/.*/          k&: v/'
}
# labels_json N: the same as JSON, with the first label repeated at the end.
labels_json() {
  printf '{"services": [{"name": "web", "endpoints": [{"address": "10.0.0.1", "port": 80, "labels": {\n'
  seq 0 $(($1 - 1)) | sed 's/.*/  "k&": "v",/'
  printf '  "k0": "again"\n}}]}]}\n'
}
# services_json N: a valid JSON catalog of N services, one per line, the
# last one repeating its "protocol" key.
services_json() {
  printf '{"services": [\n'
  seq 0 $(($1 - 2)) | sed 's/.*/  {"name": "svc-&", "protocol": "http", "endpoints": [{"address": "10.1.0.1", "port": 8080}]},/'
  printf '  {"name": "last", "protocol": "http", "protocol": "tcp"}\n]}\n'
}

labels 64000 >"$work/keys-64k.yaml"
labels 400000 >"$work/keys-400k.yaml"
labels_json 64000 >"$work/keys-64k-repeated.json"
services_json 12000 >"$work/repeated-key.json"
{ labels 1; yes '# padding' | head -c $((64 << 20)) || true; } >"$work/64mib.yaml"
mkfifo "$work/fifo.yaml"
ln -s /dev/zero "$work/zero.yaml"

printf '%-24s %9s %9s %8s %10s  %s\n' file size wall cpu peak-rss result
for f in keys-64k.yaml keys-400k.yaml keys-64k-repeated.json repeated-key.json 64mib.yaml fifo.yaml zero.yaml; do
  path="$work/$f"
  size="$(stat -Lc %s "$path" 2>/dev/null || echo -)"
  [[ -p "$path" || -c "$path" ]] && size=-
  out="$work/out"
  set +e
  /usr/bin/time -o "$work/time" -f '%e %U %S %M' \
    prlimit --as=$((2 << 30)) -- timeout "$timeout_s" "$meshctl" analyze --catalog "$path" >"$out" 2>&1
  code=$?
  set -e
  # GNU time puts "Command exited with non-zero status N" first.
  read -r wall user sys rss < <(tail -n 1 "$work/time") || true
  case "$code" in
    124) result="still running after ${timeout_s}s (killed)" ;;
    *) result="$(grep -m1 -o 'error: .*' "$out" | cut -c1-110 || true)"
       [[ -z "$result" ]] && result="$(grep -m1 -iE 'fatal|out of memory|cannot allocate' "$out" | cut -c1-110 || true)"
       [[ -z "$result" ]] && result="exit $code" ;;
  esac
  cpu="$(awk -v u="${user:-0}" -v s="${sys:-0}" 'BEGIN { printf "%.2f", u + s }')"
  printf '%-24s %9s %8ss %7ss %7d MB  %s\n' "$f" "$size" "${wall:--}" "$cpu" "$(( ${rss:-0} / 1024 ))" "$result"
done
