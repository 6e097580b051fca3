#!/usr/bin/env bash
# portcullis load benchmark: one command, loopback only, bounded in time.
# See benches/load/README.md for what it measures and how to read the table.
#
#   benches/load/run.sh                 # DURATION=10 s per target
#   DURATION=5 benches/load/run.sh      # quicker
#
# Every target runs with one worker pinned to core $TARGET_CPU (default 0);
# the load generator (wrk / h2load) and the shared upstream are pinned to
# core $LOAD_CPU (default 1). A target's CPU cost is read from its own
# /proc/<pid>/stat (utime + stime of its whole process tree) before and after
# the run and divided by the requests it completed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

DURATION="${DURATION:-10}"             # seconds per measured target
ROUNDS="${ROUNDS:-3}"                  # every target is measured once per round; the table shows medians
CONNS="${CONNS:-64}"                   # wrk -c
H2_CONNS="${H2_CONNS:-64}"             # h2load -c
H2_STREAMS="${H2_STREAMS:-4}"          # h2load -m (concurrent streams per connection)
IDLE_CONNS="${IDLE_CONNS:-10000}"      # idle keep-alive connections for the memory test
POOL_RATE="${POOL_RATE:-32000}"        # pool size = POOL_RATE * (DURATION + 2) tokens
TARGET_CPU="${TARGET_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
BASE_PORT="${BASE_PORT:-18000}"
ACCESS_LOGS="${ACCESS_LOGS:-on}"       # nginx proxy / HAProxy write one access-log line per request, like portcullis
KEEP_RUN_DIR="${KEEP_RUN_DIR:-0}"      # 1: keep the temporary folder (configs, logs, wrk output)
SKIP_BUILD="${SKIP_BUILD:-0}"
CACHE="$HERE/.work"                    # keys and token pools, reused across runs (git-ignored)
RESULTS="$HERE/results.md"

ISS="https://idp.bench.test/"
AUD="bench"
FIXED_SUB="bench-user"

UP_PORT=$BASE_PORT
DIRECT_PORT=$((BASE_PORT + 1))
NGX_PORT=$((BASE_PORT + 2))
HAP_PORT=$((BASE_PORT + 3))
HAPJWT_PORT=$((BASE_PORT + 4))
PC_PORT=$((BASE_PORT + 10))
PC_ADMIN=$((BASE_PORT + 11))
HAPTLS_PORT=$((BASE_PORT + 20))
PCTLS_PORT=$((BASE_PORT + 21))
PCTLS_ADMIN=$((BASE_PORT + 22))

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 && "$DURATION" -le 120 ]] \
    || die "DURATION must be 1..120 seconds (got $DURATION)"
[[ "$IDLE_CONNS" =~ ^[0-9]+$ && "$IDLE_CONNS" -le 30000 ]] || die "IDLE_CONNS must be <= 30000"
[[ "$ROUNDS" =~ ^[0-9]+$ && "$ROUNDS" -ge 1 && "$ROUNDS" -le 9 ]] || die "ROUNDS must be 1..9 (got $ROUNDS)"

# ---------------------------------------------------------------- 1. tools
install_missing() {
    local need=()
    command -v nginx >/dev/null || need+=(nginx)
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v wrk >/dev/null || need+=(wrk)
    command -v h2load >/dev/null || need+=(nghttp2-client)
    command -v openssl >/dev/null || need+=(openssl)
    command -v curl >/dev/null || need+=(curl)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v python3 >/dev/null || need+=(python3)
    if ! python3 -c 'import cryptography' 2>/dev/null && ! /usr/bin/python3 -c 'import cryptography' 2>/dev/null; then
        need+=(python3-cryptography)
    fi
    if ((${#need[@]})); then
        log "installing from Debian packages: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if python3 -c 'import cryptography' 2>/dev/null; then PY=python3; else PY=/usr/bin/python3; fi
    local hv
    hv="$(haproxy -v | awk 'NR == 1 { print $3 }' | grep -oE '^[0-9]+\.[0-9]+')"
    awk -v v="$hv" 'BEGIN { split(v, a, "."); exit !(a[1] > 2 || (a[1] == 2 && a[2] >= 5)) }' \
        || die "HAProxy $hv has no jwt_verify (needs 2.5+)"
}
install_missing

ulimit -n 65536 2>/dev/null || ulimit -n 32768 2>/dev/null || true
NOFILE="$(ulimit -n)"

if [[ "$SKIP_BUILD" != 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release 2>&1 | tail -2) >&2
fi
PORTCULLIS="${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis"
[[ -x "$PORTCULLIS" ]] || die "no $PORTCULLIS"

RUN="$(mktemp -d /tmp/portcullis-load.XXXXXX)"
mkdir -p "$RUN/logs" "$RUN/out" "$CACHE"
CLK_TCK="$(getconf CLK_TCK)"

# ------------------------------------------------------ processes and cleanup
PIDS=()
declare -A ALIVE=()   # pids started here and not yet stopped (never signal a reaped, maybe reused pid)
tree_pids() {
    local p=$1 c
    [[ -d /proc/$p ]] || return 0
    echo "$p"
    for c in $(pgrep -P "$p" 2>/dev/null || true); do tree_pids "$c"; done
}
stop_pid() {
    local p=$1 all i
    [[ -n "${ALIVE[$p]:-}" ]] || return 0
    unset "ALIVE[$p]"
    all="$(tree_pids "$p")"
    [[ -n "$all" ]] || return 0
    # shellcheck disable=SC2086
    kill -TERM $all 2>/dev/null || true
    for i in $(seq 1 50); do
        if [[ ! -d /proc/$p ]] || grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    all="$(tree_pids "$p")"
    # shellcheck disable=SC2086
    [[ -z "$all" ]] || kill -KILL $all 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
cleanup() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [[ "$KEEP_RUN_DIR" == 1 ]]; then log "run folder kept: $RUN"; else rm -rf "$RUN"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_on CORE NAME CMD...: start CMD pinned to CORE; its pid lands in LAST_PID
start_on() {
    local core=$1 name=$2
    shift 2
    taskset -c "$core" "$@" >"$RUN/logs/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    ALIVE[$LAST_PID]=1
}

tree_ticks() {  # tree_ticks PID AWK-EXPR: a sum over a process tree of fields of /proc/<pid>/stat
    local t=0 p f
    for p in $(tree_pids "$1"); do
        f="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null)" || continue
        # after "pid (comm) ": state is field 1, utime field 12, stime field 13
        t=$((t + $(awk "{print $2}" <<<"$f")))
    done
    echo "$t"
}
cpu_ticks() { tree_ticks "$1" '$12 + $13'; }  # utime + stime, in clock ticks
user_ticks() { tree_ticks "$1" '$12'; }       # utime alone (system time is the rest)
ctx_switches() {  # voluntary + involuntary context switches of every thread of a process tree
    local t=0 p
    for p in $(tree_pids "$1"); do
        t=$((t + $(cat /proc/"$p"/task/*/status 2>/dev/null | awk '/^(nonvoluntary_|voluntary_)ctxt_switches/ { s += $2 } END { print s + 0 }')))
    done
    echo "$t"
}
rss_kb() {  # VmRSS of a process tree, in kB
    local t=0 p v
    for p in $(tree_pids "$1"); do
        v="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

http_code() {  # http_code URL [curl args...]
    local url=$1
    shift
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" "$url" 2>/dev/null || true
}
port_busy() { [[ "$(http_code "http://127.0.0.1:$1/")" != 000 ]]; }
# wait_up URL EXPECT [curl args]: wait up to 15 s for URL to answer (EXPECT = "any" or a
# status); gives up early when the process LAST_PID has exited
wait_up() {
    local url=$1 want=$2 i c
    shift 2
    for i in $(seq 1 150); do
        if [[ -n "${LAST_PID:-}" ]] && { [[ ! -d /proc/$LAST_PID ]] || grep -q '^State:.*Z' "/proc/$LAST_PID/status" 2>/dev/null; }; then
            return 1
        fi
        c="$(http_code "$url" "$@")"
        if [[ "$want" == any && "$c" != 000 ]] || [[ "$c" == "$want" ]]; then return 0; fi
        sleep 0.1
    done
    return 1
}

md() { local t=${1//$'\n'/ }; t=${t//$'\r'/}; echo "${t//|/\\|}"; }   # one Markdown table cell
st() { [[ -n "$2" ]] && echo "$1$2$1" || true; }                         # strike through
calc() { awk "BEGIN { printf \"%.${2:-1}f\", ($1) }"; }
to_ms() {  # wrk latency "812.00us" / "1.23ms" / "1.02s" / "1.50m" -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.1f", v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
        else printf "" }'
}

for p in $UP_PORT $DIRECT_PORT $NGX_PORT $HAP_PORT $HAPJWT_PORT $PC_PORT $PC_ADMIN $HAPTLS_PORT $PCTLS_PORT $PCTLS_ADMIN; do
    ! port_busy "$p" || die "127.0.0.1:$p is already in use (set BASE_PORT)"
done

# ------------------------------------------------------------ keys and tokens
keys() {
    local alg=$1 dir="$CACHE/keys/$1"
    if [[ ! -f "$dir/private.pem" ]]; then
        rm -rf "$dir"
        "$PORTCULLIS" keygen --alg "$alg" --out "$dir" >&2
    fi
    [[ -f "$dir/public.pem" ]] || openssl pkey -in "$dir/private.pem" -pubout -out "$dir/public.pem" 2>/dev/null
    $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys"][0]["kid"])' "$dir/jwks.json"
}
RS_KID="$(keys RS256)"
ES_KID="$(keys ES256)"
$PY - "$CACHE/keys/RS256/jwks.json" "$CACHE/keys/ES256/jwks.json" >"$RUN/jwks.json" <<'EOF'
import json, sys
keys = []
for p in sys.argv[1:]:
    keys += json.load(open(p))["keys"]
print(json.dumps({"keys": keys}, indent=2))
EOF

mint_fixed() {
    "$PORTCULLIS" token mint --key "$CACHE/keys/$1/private.pem" --iss "$ISS" --aud "$AUD" \
        --sub "$FIXED_SUB" --ttl 2h
}
RS_TOKEN="$(mint_fixed RS256)"
ES_TOKEN="$(mint_fixed ES256)"
flip_sig() {  # change one character in the middle of the signature
    local t=$1 sig pos c n
    sig="${t##*.}"
    pos=$((${#sig} / 2))
    c="${sig:pos:1}"
    if [[ "$c" == A ]]; then n=B; else n=A; fi
    echo "${t%.*}.${sig:0:pos}${n}${sig:pos+1}"
}
RS_BAD="$(flip_sig "$RS_TOKEN")"
ES_BAD="$(flip_sig "$ES_TOKEN")"

POOL_SIZE=$((POOL_RATE * (DURATION + 2)))
pool() {  # pool ALG KID -> path of a pool of >= POOL_SIZE distinct valid tokens
    local alg=$1 kid=$2 file="$CACHE/pool-$1.txt" meta="$CACHE/pool-$1.meta"
    local now count created mkid
    now="$(date +%s)"
    if [[ -f "$file" && -f "$meta" ]]; then
        read -r count created mkid <"$meta" || true
        if [[ "${mkid:-}" == "$kid" && "${count:-0}" -ge "$POOL_SIZE" && $((now - ${created:-0})) -lt 43200 ]]; then
            echo "$file"
            return 0
        fi
    fi
    log "minting $POOL_SIZE distinct $alg tokens (cached in $CACHE for 12 h)"
    $PY "$HERE/mint.py" --key "$CACHE/keys/$alg/private.pem" --kid "$kid" --alg "$alg" \
        --iss "$ISS" --aud "$AUD" --count "$POOL_SIZE" --ttl $((20 * 3600)) --sub-prefix "u" \
        --out "$file" --procs "$(nproc)" >&2
    echo "$POOL_SIZE $now $kid" >"$meta"
    echo "$file"
}
RS_POOL="$(pool RS256 "$RS_KID")"
ES_POOL="$(pool ES256 "$ES_KID")"

# TLS certificate for the HTTP/2 runs (self-signed, P-256, like `portcullis demo`)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$RUN/server.key" -out "$RUN/server.crt" 2>/dev/null
cat "$RUN/server.crt" "$RUN/server.key" >"$RUN/server.pem"

# -------------------------------------------------------------- configurations
nginx_conf() {  # nginx_conf NAME PORT echo|proxy
    local name=$1 port=$2 kind=$3 alog="access_log off;" body
    if [[ "$kind" == proxy && "$ACCESS_LOGS" == on ]]; then
        alog="access_log $RUN/logs/$name.access.log combined buffer=64k flush=1s;"
    fi
    if [[ "$kind" == echo ]]; then
        # the upstream: answers 200 with the X-User-Id it received, so a
        # sanity check can see which identity reached it
        body="location / { default_type text/plain; add_header X-Bench-Upstream 1 always; return 200 \"\$http_x_user_id\"; }"
    else
        body="location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
    fi
    mkdir -p "$RUN/nginx-$name"
    cat >"$RUN/nginx-$name.conf" <<EOF
user root;
worker_processes 1;
daemon off;
master_process on;
pid $RUN/nginx-$name/nginx.pid;
error_log $RUN/logs/$name.error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections $((NOFILE / 2)); }
http {
    client_body_temp_path $RUN/nginx-$name/body;
    proxy_temp_path $RUN/nginx-$name/proxy;
    fastcgi_temp_path $RUN/nginx-$name/fastcgi;
    uwsgi_temp_path $RUN/nginx-$name/uwsgi;
    scgi_temp_path $RUN/nginx-$name/scgi;
    $alog
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    upstream up { server 127.0.0.1:$UP_PORT; keepalive 256; keepalive_requests 100000000; keepalive_timeout 120s; }
    server {
        listen 127.0.0.1:$port backlog=4096;
        $body
    }
}
EOF
    echo "$RUN/nginx-$name.conf"
}

haproxy_conf() {  # haproxy_conf NAME PORT plain|jwt-RS256|jwt-ES256|tls
    local name=$1 port=$2 kind=$3 fe logl=""
    [[ "$ACCESS_LOGS" == on ]] && logl="log stdout format raw local0"
    case "$kind" in
        plain) fe="bind 127.0.0.1:$port" ;;
        tls) fe="bind 127.0.0.1:$port ssl crt $RUN/server.pem alpn h2,http/1.1" ;;
        jwt-*)
            local alg=${kind#jwt-}
            # the alg allowlist is an ACL on the token's header; jwt_verify gets
            # the literal algorithm, never the token's own alg
            fe="bind 127.0.0.1:$port
    acl alg_allowed http_auth_bearer,jwt_header_query('\$.alg') -m str $alg
    http-request deny deny_status 401 unless alg_allowed
    http-request deny deny_status 401 unless { http_auth_bearer,jwt_verify(\"$alg\",\"$CACHE/keys/$alg/public.pem\") -m int 1 }
    http-request set-var(txn.iss) http_auth_bearer,jwt_payload_query('\$.iss')
    http-request set-var(txn.aud) http_auth_bearer,jwt_payload_query('\$.aud')
    http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date()
    http-request deny deny_status 401 unless { var(txn.iss) -m str $ISS }
    http-request deny deny_status 401 unless { var(txn.aud) -m str $AUD }
    http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }
    http-request set-header X-User-Id %[http_auth_bearer,jwt_payload_query('\$.sub')]
    http-request del-header Authorization"
            ;;
    esac
    cat >"$RUN/haproxy-$name.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
    $logl
defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
    maxconn 4000
frontend fe
    $fe
    default_backend up
backend up
    server s1 127.0.0.1:$UP_PORT
EOF
    echo "$RUN/haproxy-$name.cfg"
}

portcullis_conf() {  # portcullis_conf NAME PORT ADMIN plain|tls
    local name=$1 port=$2 admin=$3 kind=$4 tls=""
    [[ "$kind" == tls ]] && tls='tls = { cert = "server.crt", key = "server.key" }'
    cat >"$RUN/portcullis-$name.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
$tls
http2 = true
workers = 1
max_connections = 40000

[admin]
listen = "127.0.0.1:$admin"

[token]
cache_entries = 100000

[[issuer]]
id = "bench"
issuer = "$ISS"
jwks_file = "jwks.json"
audiences = ["$AUD"]
algorithms = ["RS256", "ES256"]

[identity]
headers = { "X-User-Id" = "sub" }

[upstream.echo]
endpoints = ["http://127.0.0.1:$UP_PORT"]

[[route]]
id = "bench"
path_prefix = "/"
upstream = "echo"
auth = "required"
EOF
    echo "$RUN/portcullis-$name.toml"
}

# ---------------------------------------------------------------- results
ORDER=()
declare -A LABEL STATUS RPS P50 P99 REQS CPU UCPU PERCORE RSS NOTE CTXSW CSW
add_target() { ORDER+=("$1"); LABEL[$1]=$2; STATUS[$1]="not run"; NOTE[$1]=""; }
add_note() { NOTE[$1]="${NOTE[$1]:+${NOTE[$1]}; }$2"; }

# sanity ID URL TOKEN BAD_TOKEN EXPECT_SUB(empty: no auth) [h2]
# Valid token -> 200 from the upstream (and, with auth, the upstream saw the
# token's sub as X-User-Id even when the client sent a forged one); flipped
# signature -> 401; no token -> 401.
sanity() {
    local id=$1 url=$2 tok=$3 bad=$4 sub=$5 h2=${6:-} args=(-s -m 5) out code ver body
    [[ "$url" == https* ]] && args+=(-k)
    [[ -n "$h2" ]] && args+=(--http2)
    out="$(curl "${args[@]}" -D "$RUN/out/$id.hdr" -o "$RUN/out/$id.body" -w '%{http_code} %{http_version}' \
        -H "Authorization: Bearer $tok" -H "X-User-Id: mallory" "$url" 2>&1)" || true
    read -r code ver <<<"$out"
    body="$(cat "$RUN/out/$id.body" 2>/dev/null || true)"
    if [[ "$code" != 200 ]]; then
        body="$(tr -s '\r\n\t' '   ' <<<"$body")"
        SANITY_WHY="valid token got HTTP ${code:-none} (body: ${body:0:160})"
        return 1
    fi
    if ! grep -qi '^x-bench-upstream: 1' "$RUN/out/$id.hdr"; then
        SANITY_WHY="valid token got 200 but not from the upstream (no X-Bench-Upstream header)"
        return 1
    fi
    if [[ -n "$h2" && "$ver" != 2 ]]; then
        SANITY_WHY="asked for HTTP/2 over TLS, got HTTP/$ver"
        return 1
    fi
    [[ -z "$sub" ]] && return 0
    if [[ "$body" != "$sub" ]]; then
        SANITY_WHY="valid token: 200, but the upstream saw X-User-Id '${body:0:100}' instead of '$sub'"
        return 1
    fi
    code="$(http_code "$url" "${args[@]}" -H "Authorization: Bearer $bad")"
    if [[ "$code" != 401 ]]; then
        SANITY_WHY="token with a flipped signature got HTTP $code, expected 401"
        return 1
    fi
    code="$(http_code "$url" "${args[@]}")"
    if [[ "$code" != 401 ]]; then
        SANITY_WHY="request without a token got HTTP $code, expected 401"
        return 1
    fi
    return 0
}

# wrk_run ID PID PORT fixed TOKEN | wrk_run ID PID PORT pool FILE
wrk_run() {
    local id=$1 pid=$2 port=$3 mode=$4 arg=$5
    local out="$RUN/out/$id.wrk" c0 c1 u0 x0 n rps non2xx sockerr
    local cmd=(taskset -c "$LOAD_CPU" timeout $((DURATION + 60)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency)
    if [[ "$mode" == fixed ]]; then
        cmd+=(-H "Authorization: Bearer $arg")
    else
        cmd+=(-s "$HERE/pool.lua")
    fi
    x0="$(ctx_switches "$pid")"
    c0="$(cpu_ticks "$pid")"
    u0="$(user_ticks "$pid")"
    if ! BENCH_TOKENS="$arg" "${cmd[@]}" "http://127.0.0.1:$port/" >"$out" 2>&1; then
        STATUS[$id]="NOT MEASURED: wrk failed ($(tail -1 "$out"))"
        return 1
    fi
    c1="$(cpu_ticks "$pid")"
    CTXSW[$id]=$(($(ctx_switches "$pid") - x0))
    n="$(awk '/requests in/ {print $1; exit}' "$out")"
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$out")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out")"
    sockerr="$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$out")"
    record "$id" "$pid" "${n:-0}" "$rps" "$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")" \
        "$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")" $((c1 - c0)) "${non2xx:-0}" "${sockerr:-0}" \
        $(($(user_ticks "$pid") - u0))
    if [[ "$mode" == pool ]]; then
        local line used exhausted
        line="$(grep '^pool_used=' "$out" || true)"
        used="$(sed -E 's/.*pool_used=([0-9]+).*/\1/' <<<"$line")"
        exhausted="$(sed -E 's/.*pool_exhausted=([0-9]+).*/\1/' <<<"$line")"
        add_note "$id" "${used:-?} distinct tokens"
        if [[ "${exhausted:-0}" == 1 ]]; then
            add_note "$id" "POOL EXHAUSTED: wrk stopped early, req/s understated (raise POOL_RATE); CPU/req still valid"
        fi
    fi
}

# h2_run ID PID PORT TOKEN
h2_run() {
    local id=$1 pid=$2 port=$3 tok=$4
    local out="$RUN/out/$id.h2load" lat="$RUN/out/$id.h2log" c0 c1 u0 x0 n rps bad
    x0="$(ctx_switches "$pid")"
    c0="$(cpu_ticks "$pid")"
    u0="$(user_ticks "$pid")"
    if ! taskset -c "$LOAD_CPU" timeout $((DURATION + 60)) h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DURATION" \
        --log-file="$lat" -H "authorization: Bearer $tok" "https://127.0.0.1:$port/" >"$out" 2>&1; then
        STATUS[$id]="NOT MEASURED: h2load failed ($(tail -1 "$out"))"
        return 1
    fi
    c1="$(cpu_ticks "$pid")"
    CTXSW[$id]=$(($(ctx_switches "$pid") - x0))
    n="$(awk '/^requests:/ {print $8}' "$out")"            # "N succeeded"
    rps="$(awk '/^finished in/ {print $4}' "$out")"
    bad="$(awk '/^status codes:/ {print $5 + $7 + $9}' "$out")"  # 3xx + 4xx + 5xx
    local p50 p99
    read -r p50 p99 < <(awk -F'\t' '{print $3}' "$lat" | sort -n | awk '{a[NR] = $1} END {
        if (NR == 0) { print "", ""; exit }
        i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
        printf "%.3f %.3f\n", a[i50] / 1000, a[i99] / 1000 }')
    local failed
    failed="$(awk '/^requests:/ {print $10 + $12 + $14}' "$out")"
    record "$id" "$pid" "${n:-0}" "$rps" "$p50" "$p99" $((c1 - c0)) "${bad:-0}" "${failed:-0}" \
        $(($(user_ticks "$pid") - u0))
    add_note "$id" "$(awk '/^Application protocol:/ {printf "%s", $3}' "$out") $(awk '/^Cipher:/ {printf "%s", $2}' "$out") -c$H2_CONNS -m$H2_STREAMS"
}

# record ID PID REQUESTS RPS P50 P99 TICKS NON2XX ERRORS
record() {
    local id=$1 pid=$2 n=$3 rps=$4 p50=$5 p99=$6 ticks=$7 non2xx=$8 errs=$9 user=${10}
    REQS[$id]=$n
    RPS[$id]=$(calc "${rps:-0}" 0)
    P50[$id]=$p50
    P99[$id]=$p99
    RSS[$id]=$(calc "$(rss_kb "$pid") / 1024" 1)
    if [[ "$n" -gt 0 ]]; then
        CPU[$id]=$(calc "$ticks * 1000000 / $CLK_TCK / $n" 1)
        UCPU[$id]=$(calc "$user * 1000000 / $CLK_TCK / $n" 1)
        CSW[$id]=$(calc "${CTXSW[$id]:-0} / $n" 2)
        if [[ "$ticks" -gt 0 ]]; then PERCORE[$id]=$(calc "$n * $CLK_TCK / $ticks" 0); else PERCORE[$id]=""; fi
    fi
    STATUS[$id]=ok
    if [[ "$n" -le 0 ]]; then
        STATUS[$id]="INVALID: no request completed"
    elif [[ "$non2xx" -gt 0 ]]; then
        STATUS[$id]="INVALID: $non2xx of $n answers were not 2xx"
    elif [[ "$errs" -gt 0 ]] && awk -v e="$errs" -v n="$n" 'BEGIN { exit !(e > n / 1000) }'; then
        STATUS[$id]="INVALID: $errs socket errors"
    elif [[ "$errs" -gt 0 ]]; then
        add_note "$id" "$errs socket errors"
    fi
    log "$id: ${STATUS[$id]}: $n requests, ${RPS[$id]} req/s, CPU ${CPU[$id]:-?} us/req, p99 ${P99[$id]} ms"
}

metric() {  # metric ADMIN_PORT NAME -> sum of the series
    curl -s -m 3 "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d", s }'
}

# ----------------------------------------------------------------- targets
# measure ID KIND ...: start the target pinned to TARGET_CPU, sanity-check it,
# load it, stop it. A target that fails its sanity check is not measured.
bench_nginx() {  # ID PORT echo|proxy
    local id=$1 port=$2 kind=$3 conf pid
    conf="$(nginx_conf "$id" "$port" "$kind")"
    start_on "$TARGET_CPU" "$id" nginx -e "$RUN/logs/$id.error.log" -c "$conf"
    pid=$LAST_PID
    if ! wait_up "http://127.0.0.1:$port/" any; then
        STATUS[$id]="NOT MEASURED: did not start ($(tail -2 "$RUN/logs/$id.log" | tr '\n' ' '))"
    elif ! sanity "$id" "http://127.0.0.1:$port/" "$RS_TOKEN" "$RS_BAD" ""; then
        STATUS[$id]="SANITY FAILED, not measured: $SANITY_WHY"
    else
        wrk_run "$id" "$pid" "$port" fixed "$RS_TOKEN" || true
    fi
    stop_pid "$pid"
}

bench_haproxy() {  # ID PORT plain|tls|jwt-RS256|jwt-ES256 [pool FILE]
    local id=$1 port=$2 kind=$3 conf pid url tok bad sub="" h2=""
    conf="$(haproxy_conf "$id" "$port" "$kind")"
    if ! haproxy -c -q -f "$conf" >"$RUN/logs/$id.check" 2>&1; then
        STATUS[$id]="NOT MEASURED: config refused: $(head -3 "$RUN/logs/$id.check" | tr '\n' ' ')"
        return 0
    fi
    start_on "$TARGET_CPU" "$id" haproxy -db -f "$conf"
    pid=$LAST_PID
    url="http://127.0.0.1:$port/"
    tok=$RS_TOKEN bad=$RS_BAD
    case "$kind" in
        tls) url="https://127.0.0.1:$port/" h2=1 ;;
        jwt-RS256) sub=$FIXED_SUB ;;
        jwt-ES256) sub=$FIXED_SUB tok=$ES_TOKEN bad=$ES_BAD ;;
    esac
    if ! wait_up "$url" any -k; then
        STATUS[$id]="NOT MEASURED: did not start ($(tail -2 "$RUN/logs/$id.log" | tr '\n' ' '))"
    elif ! sanity "$id" "$url" "$tok" "$bad" "$sub" "$h2"; then
        STATUS[$id]="SANITY FAILED, not measured: $SANITY_WHY"
    elif [[ "$kind" == tls ]]; then
        h2_run "$id" "$pid" "$port" "$tok" || true
    elif [[ "${4:-}" == pool ]]; then
        wrk_run "$id" "$pid" "$port" pool "$5" || true
    else
        wrk_run "$id" "$pid" "$port" fixed "$tok" || true
    fi
    stop_pid "$pid"
}

# bench_portcullis ID plain|tls ALG fixed|pool
bench_portcullis() {
    local id=$1 kind=$2 alg=$3 mode=$4 conf pid port admin url tok bad poolf h0 m0 h1 m1 h2=""
    if [[ "$kind" == tls ]]; then port=$PCTLS_PORT admin=$PCTLS_ADMIN url="https://127.0.0.1:$PCTLS_PORT/" h2=1
    else port=$PC_PORT admin=$PC_ADMIN url="http://127.0.0.1:$PC_PORT/"; fi
    if [[ "$alg" == RS256 ]]; then tok=$RS_TOKEN bad=$RS_BAD poolf=$RS_POOL
    else tok=$ES_TOKEN bad=$ES_BAD poolf=$ES_POOL; fi
    conf="$(portcullis_conf "$id" "$port" "$admin" "$kind")"
    if ! "$PORTCULLIS" check --config "$conf" >"$RUN/logs/$id.check" 2>&1; then
        STATUS[$id]="NOT MEASURED: portcullis check refused the config: $(head -3 "$RUN/logs/$id.check" | tr '\n' ' ')"
        return 0
    fi
    start_on "$TARGET_CPU" "$id" env RUST_LOG=info "$PORTCULLIS" run --config "$conf"
    pid=$LAST_PID
    if ! wait_up "http://127.0.0.1:$admin/readyz" 200; then
        STATUS[$id]="NOT MEASURED: not ready within 15 s ($(tail -2 "$RUN/logs/$id.log" | tr '\n' ' '))"
    elif ! sanity "$id" "$url" "$tok" "$bad" "$FIXED_SUB" "$h2"; then
        STATUS[$id]="SANITY FAILED, not measured: $SANITY_WHY"
    else
        h0="$(metric "$admin" portcullis_token_cache_hits_total)"
        m0="$(metric "$admin" portcullis_token_cache_misses_total)"
        if [[ "$kind" == tls ]]; then
            h2_run "$id" "$pid" "$port" "$tok" || true
        elif [[ "$mode" == pool ]]; then
            wrk_run "$id" "$pid" "$port" pool "$poolf" || true
        else
            wrk_run "$id" "$pid" "$port" fixed "$tok" || true
        fi
        h1="$(metric "$admin" portcullis_token_cache_hits_total)"
        m1="$(metric "$admin" portcullis_token_cache_misses_total)"
        add_note "$id" "cache hits $((h1 - h0)), misses $((m1 - m0))"
        # a never-repeating run must have verified (missed) on ~every request
        if [[ "$mode" == pool && "${STATUS[$id]}" == ok ]] &&
            awk -v m="$((m1 - m0))" -v n="${REQS[$id]:-0}" 'BEGIN { exit !(m < 0.99 * n) }'; then
            STATUS[$id]="INVALID: only $((m1 - m0)) cache misses for ${REQS[$id]} requests (tokens repeated?)"
        fi
    fi
    stop_pid "$pid"
}

# memory: idle RSS of a fresh portcullis, then with IDLE_CONNS idle keep-alive connections
MEM_STATUS="not run" MEM_IDLE="" MEM_HELD="" MEM_DELTA="" MEM_AFTER="" MEM_NOTE=""
bench_memory() {
    local conf pid out
    conf="$(portcullis_conf memory "$PC_PORT" "$PC_ADMIN" plain)"
    if [[ "$NOFILE" -lt $((IDLE_CONNS + 2000)) ]]; then
        MEM_STATUS="NOT MEASURED: ulimit -n is $NOFILE, need $((IDLE_CONNS + 2000))"
        return 0
    fi
    start_on "$TARGET_CPU" memory env RUST_LOG=info "$PORTCULLIS" run --config "$conf"
    pid=$LAST_PID
    if ! wait_up "http://127.0.0.1:$PC_ADMIN/readyz" 200; then
        MEM_STATUS="NOT MEASURED: not ready"
    elif ! sanity memory "http://127.0.0.1:$PC_PORT/" "$RS_TOKEN" "$RS_BAD" "$FIXED_SUB"; then
        MEM_STATUS="SANITY FAILED, not measured: $SANITY_WHY"
    else
        sleep 1
        MEM_IDLE=$(calc "$(rss_kb "$pid") / 1024" 1)
        out="$(taskset -c "$LOAD_CPU" timeout 150 "$PY" "$HERE/idle_conns.py" --port "$PC_PORT" --token "$RS_TOKEN" \
            --pids "$(tree_pids "$pid" | tr '\n' ' ')" --n "$IDLE_CONNS" --deadline 120 \
            --metrics "http://127.0.0.1:$PC_ADMIN/metrics" 2>"$RUN/logs/idle_conns.err")" || true
        echo "$out" >"$RUN/out/memory.json"
        local fields
        fields="$($PY -c '
import json, sys
d = json.loads(sys.argv[1] or "{}")
if "error" in d or "opened" not in d:
    print("ERR", d.get("error", "no output")); sys.exit()
print(d["opened"], d["ok"], d["rss_before_kb"], d["rss_held_kb"], d["rss_after_close_kb"],
      d["open_seconds"], int(d["active_gauge"] or 0), json.dumps(d["statuses"]).replace(" ", ""),
      json.dumps(d["errors"]).replace(" ", ""))' "$out" 2>&1)" || fields="ERR $out"
        if [[ "$fields" == ERR* ]]; then
            MEM_STATUS="NOT MEASURED: ${fields#ERR } $(tail -2 "$RUN/logs/idle_conns.err" | tr '\n' ' ')"
        else
            local opened ok before held after secs active st er
            read -r opened ok before held after secs active st er <<<"$fields"
            MEM_HELD=$(calc "$held / 1024" 1)
            MEM_DELTA=$(calc "($held - $before) / 1024" 1)
            MEM_AFTER=$(calc "$after / 1024" 1)
            MEM_NOTE="$opened connections opened in ${secs}s, $ok answered 200 (statuses $st, errors $er), portcullis_connections_active=$active while held"
            if [[ "$ok" -lt $((IDLE_CONNS * 99 / 100)) || "$active" -lt $((IDLE_CONNS * 99 / 100)) ]]; then
                MEM_STATUS="INVALID: fewer than 99% of $IDLE_CONNS connections were open and served"
            else
                MEM_STATUS=ok
            fi
        fi
    fi
    stop_pid "$pid"
    log "memory: $MEM_STATUS idle ${MEM_IDLE} MB, held ${MEM_HELD} MB (+${MEM_DELTA} MB)"
}

# openssl_verify_us: one RSA-2048 verify in µs by `openssl speed` on the target core ("" if unknown)
openssl_verify_us() {
    local out="$RUN/out/openssl-speed.txt" per_s
    taskset -c "$TARGET_CPU" timeout 60 openssl speed -seconds 3 rsa2048 >"$out" 2>/dev/null || true
    # the header names the columns ("sign verify sign/s verify/s ..."); the data
    # row starts with "rsa 2048 bits", so column k of the header is field k+3
    per_s="$(awk '/verify\/s/ { for (i = 1; i <= NF; i++) if ($i == "verify/s") k = i }
                  /^rsa *2048 bits/ && k { print $(k + 3) }' "$out" | tail -1)"
    if [[ -n "$per_s" ]]; then calc "1000000 / $per_s" 2; fi
}

# Rounds: a target's figures from each round it passed, or its first failure.
# The per-target figures that rounds collect; ALL_<name>[id] holds one per round.
ROUND_FIGURES=(CPU UCPU RPS P50 P99 PERCORE CSW REQS)
declare -A ROUND_BAD ALL_CPU ALL_UCPU ALL_RPS ALL_P50 ALL_P99 ALL_PERCORE ALL_CSW ALL_REQS
ALL_VERIFY=""
snapshot() {  # snapshot ID ROUND: after the target's measurement in that round
    local id=$1 round=$2 f
    if [[ "${STATUS[$id]}" == ok && -n "${CPU[$id]:-}" ]]; then
        for f in "${ROUND_FIGURES[@]}"; do
            local -n fig_all="ALL_$f" fig_one="$f"
            fig_all[$id]+="${fig_one[$id]:-} "
            unset -n fig_all fig_one
        done
    elif [[ -z "${ROUND_BAD[$id]:-}" ]]; then
        ROUND_BAD[$id]="${STATUS[$id]} (round $round of $ROUNDS)"
    fi
}
median() {  # median of the numbers in $1 (the lower middle one of an even count)
    tr ' ' '\n' <<<"$1" | { grep -v '^$' || true; } | sort -g | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }'
}

# ------------------------------------------------------------------ the run
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
T_START=$(date +%s)

# the shared upstream, pinned with the load generator
start_on "$LOAD_CPU" upstream nginx -e "$RUN/logs/upstream.error.log" -c "$(nginx_conf upstream "$UP_PORT" echo)"
wait_up "http://127.0.0.1:$UP_PORT/" 200 || die "the upstream nginx did not start: $(cat "$RUN/logs/upstream.log")"

add_target direct "direct to the upstream (nginx return 200)"
add_target nginx "nginx plain reverse proxy (no auth)"
add_target haproxy "HAProxy plain reverse proxy (no auth)"
add_target haproxy_jwt_rs "HAProxy jwt_verify RS256, every token new"
add_target haproxy_jwt_es "HAProxy jwt_verify ES256, every token new"
add_target pc_cached_rs "portcullis RS256, repeated token (cache hit)"
add_target pc_cached_es "portcullis ES256, repeated token (cache hit)"
add_target pc_unique_rs "portcullis RS256, every token new"
add_target pc_unique_es "portcullis ES256, every token new"
add_target haproxy_h2 "HAProxy h2 over TLS (no auth), h2load"
add_target pc_h2 "portcullis h2 over TLS, RS256 repeated token, h2load"

for round in $(seq 1 "$ROUNDS"); do
    log "round $round of $ROUNDS: openssl speed -seconds 3 rsa2048 (pinned to core $TARGET_CPU)"
    v="$(openssl_verify_us)" || v=""
    ALL_VERIFY+="$v "
    log "RSA-2048 verify: ${v:-?} us"
    log "round $round of $ROUNDS: measuring, ${DURATION}s per target"
    for id in "${ORDER[@]}"; do STATUS[$id]="not run"; NOTE[$id]=""; done
    bench_nginx direct "$DIRECT_PORT" echo; snapshot direct "$round"
    bench_nginx nginx "$NGX_PORT" proxy; snapshot nginx "$round"
    bench_haproxy haproxy "$HAP_PORT" plain; snapshot haproxy "$round"
    bench_haproxy haproxy_jwt_rs "$HAPJWT_PORT" jwt-RS256 pool "$RS_POOL"; snapshot haproxy_jwt_rs "$round"
    bench_haproxy haproxy_jwt_es "$HAPJWT_PORT" jwt-ES256 pool "$ES_POOL"; snapshot haproxy_jwt_es "$round"
    bench_portcullis pc_cached_rs plain RS256 fixed; snapshot pc_cached_rs "$round"
    bench_portcullis pc_cached_es plain ES256 fixed; snapshot pc_cached_es "$round"
    bench_portcullis pc_unique_rs plain RS256 pool; snapshot pc_unique_rs "$round"
    bench_portcullis pc_unique_es plain ES256 pool; snapshot pc_unique_es "$round"
    bench_haproxy haproxy_h2 "$HAPTLS_PORT" tls; snapshot haproxy_h2 "$round"
    bench_portcullis pc_h2 tls RS256 fixed; snapshot pc_h2 "$round"
done
VERIFY_US="$(median "$ALL_VERIFY")"
if [[ -n "$VERIFY_US" ]]; then VERIFY_S=$(calc "1000000 / $VERIFY_US" 1); else VERIFY_S=""; fi
# A target that failed in any round is shown failed: a gateway that fails
# its sanity check once must not be shown by its good rounds.
for id in "${ORDER[@]}"; do
    if [[ -n "${ROUND_BAD[$id]:-}" ]]; then
        STATUS[$id]="${ROUND_BAD[$id]}"
    elif [[ -n "${ALL_CPU[$id]:-}" ]]; then
        for f in "${ROUND_FIGURES[@]}"; do
            declare -n fig_all="ALL_$f" fig_one="$f"
            fig_one[$id]="$(median "${fig_all[$id]}")"
            unset -n fig_all fig_one
        done
        if ((ROUNDS > 1)); then add_note "$id" "CPU µs/req by round: ${ALL_CPU[$id]% }"; fi
    fi
done
bench_memory

LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"
T_END=$(date +%s)

# ------------------------------------------------------------------ report
ok() { [[ "${STATUS[$1]}" == ok && -n "${CPU[$1]:-}" ]]; }
GOALS=()
INFO=()
goal() { GOALS+=("| $1 | $2 | $3 | $4 | $(md "$5") |"); }
verdict_le() { awk -v r="$1" -v g="$2" 'BEGIN { print (r <= g) ? "PASS" : "FAIL" }'; }
verdict_ge() { awk -v r="$1" -v g="$2" 'BEGIN { print (r >= g) ? "PASS" : "FAIL" }'; }
why_na() { local s="" i; for i in "$@"; do ok "$i" || s+="${s:+, }$i: ${STATUS[$i]}"; done; echo "n/a ($s)"; }

if ok pc_cached_rs && ok nginx; then
    r=$(calc "${CPU[pc_cached_rs]} / ${CPU[nginx]}" 2)
    goal "Repeated tokens: portcullis cached CPU/req / nginx CPU/req" "${CPU[pc_cached_rs]} / ${CPU[nginx]} µs" "$r" "<= 1.00" "$(verdict_le "$r" 1)"
else goal "Repeated tokens: portcullis cached CPU/req / nginx CPU/req" "" "" "<= 1.00" "$(why_na pc_cached_rs nginx)"; fi

if ok pc_unique_rs && ok nginx && [[ -n "$VERIFY_US" ]]; then
    budget=$(calc "${CPU[nginx]} + 1.15 * $VERIFY_US" 1)
    r=$(calc "${CPU[pc_unique_rs]} / $budget" 2)
    goal "Every token new (RS256): portcullis CPU/req / (nginx CPU/req + 1.15 × RSA-2048 verify)" "${CPU[pc_unique_rs]} / (${CPU[nginx]} + 1.15 × $VERIFY_US = $budget) µs" "$r" "<= 1.00" "$(verdict_le "$r" 1)"
elif [[ -z "$VERIFY_US" ]]; then goal "Every token new (RS256): portcullis CPU/req / (nginx CPU/req + 1.15 × RSA-2048 verify)" "" "" "<= 1.00" "n/a (openssl speed gave no verify/s)"
else goal "Every token new (RS256): portcullis CPU/req / (nginx CPU/req + 1.15 × RSA-2048 verify)" "" "" "<= 1.00" "$(why_na pc_unique_rs nginx)"; fi

if ok pc_unique_rs && ok haproxy_jwt_rs && [[ -n "${PERCORE[haproxy_jwt_rs]}" ]]; then
    r=$(calc "${PERCORE[pc_unique_rs]} / ${PERCORE[haproxy_jwt_rs]}" 2)
    goal "Every token new (RS256): portcullis req per CPU-second / HAProxy jwt_verify's" "${PERCORE[pc_unique_rs]} / ${PERCORE[haproxy_jwt_rs]}" "$r" ">= 1.50" "$(verdict_ge "$r" 1.5)"
    INFO+=("- Every token new (RS256), raw req/s (load generator and upstream share core $LOAD_CPU, so this is noisier): portcullis / HAProxy jwt_verify = ${RPS[pc_unique_rs]} / ${RPS[haproxy_jwt_rs]} = $(calc "${RPS[pc_unique_rs]} / ${RPS[haproxy_jwt_rs]}" 2)")
else goal "Every token new (RS256): portcullis req per CPU-second / HAProxy jwt_verify's" "" "" ">= 1.50" "$(why_na pc_unique_rs haproxy_jwt_rs)"; fi

if ok pc_h2 && ok haproxy_h2; then
    r=$(calc "${CPU[pc_h2]} / ${CPU[haproxy_h2]}" 2)
    goal "HTTP/2 over TLS: portcullis (auth, cached) CPU/req / HAProxy (no auth) CPU/req" "${CPU[pc_h2]} / ${CPU[haproxy_h2]} µs" "$r" "<= 1.00" "$(verdict_le "$r" 1)"
else goal "HTTP/2 over TLS: portcullis (auth, cached) CPU/req / HAProxy (no auth) CPU/req" "" "" "<= 1.00" "$(why_na pc_h2 haproxy_h2)"; fi

if [[ "$MEM_STATUS" == ok || -n "$MEM_IDLE" ]]; then
    goal "Idle RSS of portcullis" "$MEM_IDLE MB" "" "<= 15 MB" "$(verdict_le "$MEM_IDLE" 15)"
else goal "Idle RSS of portcullis" "" "" "<= 15 MB" "n/a ($MEM_STATUS)"; fi
if [[ "$MEM_STATUS" == ok ]]; then
    goal "RSS added by $IDLE_CONNS idle keep-alive connections" "$MEM_DELTA MB ($MEM_IDLE → $MEM_HELD MB)" "" "<= 40 MB" "$(verdict_le "$MEM_DELTA" 40)"
else goal "RSS added by $IDLE_CONNS idle keep-alive connections" "${MEM_DELTA:+$MEM_DELTA MB}" "" "<= 40 MB" "n/a ($MEM_STATUS)"; fi

# for information: ES256 against HAProxy ES256, and the cost of the verify itself
if ok pc_unique_es && ok haproxy_jwt_es && [[ -n "${PERCORE[haproxy_jwt_es]}" ]]; then
    INFO+=("- Every token new (ES256): portcullis req per CPU-second / HAProxy jwt_verify's = ${PERCORE[pc_unique_es]} / ${PERCORE[haproxy_jwt_es]} = $(calc "${PERCORE[pc_unique_es]} / ${PERCORE[haproxy_jwt_es]}" 2)")
fi
# Each goal's ratio within each round, where the peer and portcullis ran
# minutes apart: the spread says how far one round's ratio can be trusted.
ratio_by_round() {  # ratio_by_round "A..." "B...": a/b round by round
    awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) printf "%s%.2f", (i > 1 ? " " : ""), x[i] / y[i] }'
}
budget_by_round() {  # budget_by_round "A..." "NGINX..." "VERIFY...": a/(nginx + 1.15 verify)
    awk -v a="$1" -v b="$2" -v c="$3" 'BEGIN { n = split(a, x, " "); split(b, y, " "); m = split(c, z, " ")
        if (m != n) exit
        for (i = 1; i <= n; i++) printf "%s%.2f", (i > 1 ? " " : ""), x[i] / (y[i] + 1.15 * z[i]) }'
}
if ((ROUNDS > 1)); then
    R=()
    ok pc_cached_rs && ok nginx && R+=("repeated tokens $(ratio_by_round "${ALL_CPU[pc_cached_rs]}" "${ALL_CPU[nginx]}")")
    ok pc_unique_rs && ok nginx && R+=("every token new $(budget_by_round "${ALL_CPU[pc_unique_rs]}" "${ALL_CPU[nginx]}" "$ALL_VERIFY")")
    ok pc_unique_rs && ok haproxy_jwt_rs && R+=("per core vs HAProxy jwt_verify $(ratio_by_round "${ALL_PERCORE[pc_unique_rs]}" "${ALL_PERCORE[haproxy_jwt_rs]}")")
    ok pc_h2 && ok haproxy_h2 && R+=("h2 over TLS $(ratio_by_round "${ALL_CPU[pc_h2]}" "${ALL_CPU[haproxy_h2]}")")
    if ((${#R[@]})); then
        line=""
        for r in "${R[@]}"; do line+="${line:+; }$r"; done
        INFO+=("- Goal ratios round by round (each round measures the peer and portcullis minutes apart): $line")
    fi
fi
if ok pc_unique_rs && ok pc_cached_rs; then
    INFO+=("- RS256 verification cost in portcullis (unique − cached CPU/req) = $(calc "${CPU[pc_unique_rs]} - ${CPU[pc_cached_rs]}" 1) µs; openssl's RSA-2048 verify = ${VERIFY_US:-?} µs")
fi
if ok pc_unique_es && ok pc_cached_es; then
    INFO+=("- ES256 verification cost in portcullis (unique − cached CPU/req) = $(calc "${CPU[pc_unique_es]} - ${CPU[pc_cached_es]}" 1) µs")
fi
if ok pc_cached_rs && ok direct; then
    INFO+=("- Proxy overhead over the bare upstream: portcullis cached $(calc "${CPU[pc_cached_rs]} - ${CPU[direct]}" 1) µs/req$(ok nginx && echo ", nginx $(calc "${CPU[nginx]} - ${CPU[direct]}" 1) µs/req")$(ok haproxy && echo ", HAProxy $(calc "${CPU[haproxy]} - ${CPU[direct]}" 1) µs/req")")
fi
if ok pc_cached_rs && ok nginx; then
    user_sys() { echo "${UCPU[$1]} user + $(calc "${CPU[$1]} - ${UCPU[$1]}" 1) system"; }
    INFO+=("- CPU per request split into user and system time (µs): portcullis cached $(user_sys pc_cached_rs), nginx $(user_sys nginx)$(ok haproxy && echo ", HAProxy $(user_sys haproxy)")")
fi

REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null)" ]]; then REV+=" (+ uncommitted changes in src/)"; fi

{
    echo "# portcullis load benchmark: results"
    echo
    echo "Generated by \`benches/load/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'), $((T_END - T_START)) s of measuring."
    echo
    echo "- portcullis $REV; $(nginx -v 2>&1 | sed 's/^nginx version: //'); HAProxy $(haproxy -v | awk 'NR == 1 {print $3}'); $(wrk -v 2>&1 | awk 'NR == 1 {print "wrk " $2}' || true); $(h2load --version | awk 'NR == 1'); $(openssl version | awk '{print $1, $2}')"
    echo "- $(nproc) cores, $(uname -sr); targets pinned to core $TARGET_CPU with one worker; wrk/h2load and the upstream pinned to core $LOAD_CPU"
    echo "- load: wrk -t1 -c$CONNS -d${DURATION}s --latency (HTTP/1.1 keep-alive); h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D $DURATION (h2 over TLS)"
    echo "- tokens: RS256 ${#RS_TOKEN} bytes, ES256 ${#ES_TOKEN} bytes (header typ/alg/kid; iss, aud, sub, iat, exp, jti); pools of $POOL_SIZE distinct tokens per algorithm"
    echo "- access logs: ${ACCESS_LOGS} for the nginx proxy and HAProxy (portcullis always writes its access log; here to a file)"
    echo "- machine load average (1/5/15 min): $LOAD_START at start, $LOAD_END at end: other work on this machine makes req/s and latency noisy; CPU/req is the target's own time"
    echo "- rounds: $ROUNDS; each round measures every target once, in the table's order; each figure is the median of the rounds (per-round CPU/req in the notes), and a target that failed in any round is shown failed"
    echo "- RSA-2048 verify (openssl speed -seconds 3 rsa2048, core $TARGET_CPU, median of the rounds: ${ALL_VERIFY% } µs): ${VERIFY_S:-?} verify/s = **${VERIFY_US:-?} µs**"
    echo
    echo "## Targets"
    echo
    echo "| target | status | req/s | p50 ms | p99 ms | requests | CPU µs/req | of it user | req per CPU-second | ctx switches/req | RSS MB after | notes |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for id in "${ORDER[@]}"; do
        # numbers of a run that got non-2xx answers are struck through: a
        # gateway that answers 401 fast must never look fast
        s=""
        [[ "${STATUS[$id]}" == INVALID* ]] && s="~~"
        echo "| ${LABEL[$id]} | $(md "${STATUS[$id]}") | $(st "$s" "${RPS[$id]:-}") | $(st "$s" "${P50[$id]:-}") | $(st "$s" "${P99[$id]:-}") | ${REQS[$id]:-} | $(st "$s" "${CPU[$id]:-}") | $(st "$s" "${UCPU[$id]:-}") | $(st "$s" "${PERCORE[$id]:-}") | ${CSW[$id]:-} | ${RSS[$id]:-} | $(md "${NOTE[$id]}") |"
    done
    echo
    echo "Memory (fresh portcullis, plaintext listener): $MEM_STATUS; idle ${MEM_IDLE:-?} MB; with $IDLE_CONNS idle keep-alive connections ${MEM_HELD:-?} MB (+${MEM_DELTA:-?} MB); after closing them ${MEM_AFTER:-?} MB. ${MEM_NOTE}"
    echo
    echo "## Goals"
    echo
    echo "| goal | measured | ratio | goal | verdict |"
    echo "|---|---|---:|---|---|"
    printf '%s\n' "${GOALS[@]}"
    if ((${#INFO[@]})); then
        echo
        echo "For information:"
        echo
        printf '%s\n' "${INFO[@]}"
    fi
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
echo
cat "$RESULTS"
log "written to $RESULTS"
