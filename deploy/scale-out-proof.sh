#!/usr/bin/env bash
# Scale-out proof: three gateways behind one TCP load balancer share their
# revocations through one Redis, so a token revoked on ONE replica is refused
# by ALL of them within a second.
#
#   bash deploy/scale-out-proof.sh          (from the repository root, after `cargo build`)
#
# On loopback only, bounded, and everything it starts it stops:
#   - one redis-server, three `portcullis run` (TLS, each with its own
#     revocation store, all with the same Redis), a trivial echo upstream, and
#     HAProxy in TCP mode (TLS passes through) balancing the three round robin,
#     with health checks on each gateway's /readyz;
#   - a token minted with `portcullis keygen` + `portcullis token mint`;
#   - REQUESTS (300) requests through HAProxy, each on a new connection: all
#     must be 200, the upstream must see the token's subject, and every replica
#     must have served some;
#   - the token's jti revoked on replica 2's admin API only; one second later,
#     requests through HAProxy and directly to each replica must all be 401
#     "token revoked", and every replica must have counted its own
#     result="revoked" refusals; a second token, not revoked, still passes.
# Prints PASS or FAIL and exits non-zero on failure.
# Environment: PORTCULLIS_BIN (default target/debug/portcullis), REQUESTS (300).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${PORTCULLIS_BIN:-$ROOT/target/debug/portcullis}
REQUESTS=${REQUESTS:-300}
AFTER=30 # requests through HAProxy after the revocation
DIRECT=10 # requests straight to each replica after the revocation

say() { printf '%s\n' "$*"; }
step() { printf '\n--- %s\n' "$*"; }

WORK=$(mktemp -d /tmp/portcullis-scale-out.XXXXXX)
PIDS=()
RESULT=FAIL
PASSED=0 # steps 1-4 below
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "$RESULT" != PASS ] && [ -d "$WORK" ]; then
    for f in "$WORK"/gw*/gateway.log; do
      [ -f "$f" ] || continue
      say "--- last lines of $f"
      grep -v '"msg":"access"' "$f" | tail -5 || true
    done
  fi
  rm -rf "$WORK"
  say ""
  if [ "$RESULT" = PASS ]; then
    say "scale-out: $PASSED passed, 0 failed"
  else
    say "scale-out: $PASSED passed, 1 failed"
  fi
  say "scale-out proof: $RESULT"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  say "FAIL: $*"
  exit 1
}

# ---------------------------------------------------------------------------
step "tools"
[ -x "$BIN" ] || fail "no gateway binary at $BIN: run 'cargo build' first (or set PORTCULLIS_BIN)"
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
say "$(haproxy -v | head -1)"
say "$(redis-server --version)"

# Nine free loopback ports: redis, upstream, haproxy, and TLS + admin for each gateway.
read -r P_REDIS P_UP P_LB P_G1 P_A1 P_G2 P_A2 P_G3 P_A3 <<<"$(python3 - <<'EOF'
import socket
socks = []
for _ in range(9):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
GW_PORTS=("$P_G1" "$P_G2" "$P_G3")
ADMIN_PORTS=("$P_A1" "$P_A2" "$P_A3")

wait_for() { # DESCRIPTION SECONDS COMMAND...
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "timed out after ${secs}s waiting for $what"
}
status_of() { curl -s -m 5 -o /dev/null -w '%{http_code}' "$@"; }
is_200() { [ "$(status_of "$1")" = 200 ]; }

# ---------------------------------------------------------------------------
step "redis, upstream, keys"
mkdir -p "$WORK/redis"
redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$WORK/redis" --daemonize no --loglevel warning >"$WORK/redis/redis.log" 2>&1 &
PIDS+=($!)
wait_for "redis" 10 bash -c "[ \"\$(redis-cli -p $P_REDIS ping)\" = PONG ]"
say "redis-server on 127.0.0.1:$P_REDIS"

python3 deploy/tools/echo_upstream.py "$P_UP" &
PIDS+=($!)
wait_for "the upstream" 10 is_200 "http://127.0.0.1:$P_UP/"
say "echo upstream on 127.0.0.1:$P_UP"

"$BIN" keygen --alg ES256 --out "$WORK/keys" >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$WORK/server.key" -out "$WORK/server.crt" -days 2 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
openssl rand -base64 32 >"$WORK/admin.token"
say "issuer keys (ES256), a self-signed server certificate and an admin token in $WORK"

# ---------------------------------------------------------------------------
step "three gateways sharing one Redis"
for i in 1 2 3; do
  d=$WORK/gw$i
  mkdir -p "$d"
  cat >"$d/portcullis.toml" <<EOF
[server]
listen = ["127.0.0.1:${GW_PORTS[i - 1]}"]
tls = { cert = "../server.crt", key = "../server.key" }
shutdown_grace = "5s"
workers = 2
[admin]
listen = "127.0.0.1:${ADMIN_PORTS[i - 1]}"
token_file = "../admin.token"
[[issuer]]
id = "main"
issuer = "https://idp.example.com/"
jwks_file = "../keys/jwks.json"
audiences = ["https://api.example.com"]
algorithms = ["ES256"]
max_lifetime = "1h"
[identity]
headers = { "X-User-Id" = "sub" }
[revocation]
store = "revocations.log"
redis = { url = "redis://127.0.0.1:$P_REDIS/0", prefix = "portcullis-proof:" }
[upstream.echo]
endpoints = ["http://127.0.0.1:$P_UP"]
[[route]]
id = "orders"
path_prefix = "/orders"
upstream = "echo"
auth = "required"
EOF
  "$BIN" check --config "$d/portcullis.toml" >/dev/null || fail "gateway $i: configuration refused"
  RUST_LOG=warn "$BIN" run --config "$d/portcullis.toml" >"$d/gateway.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do
  # Ready means keys loaded and the first Redis sync done.
  wait_for "gateway $i to be ready" 30 is_200 "http://127.0.0.1:${ADMIN_PORTS[i - 1]}/readyz"
  say "gateway $i: https://127.0.0.1:${GW_PORTS[i - 1]}  admin http://127.0.0.1:${ADMIN_PORTS[i - 1]}  ready: $(curl -s -m 5 "http://127.0.0.1:${ADMIN_PORTS[i - 1]}/readyz")"
done

# ---------------------------------------------------------------------------
step "HAProxy, TCP mode, round robin, health checks on /readyz"
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 512
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend portcullis
    bind 127.0.0.1:$P_LB
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /readyz
    default-server inter 1s fall 2 rise 1
    server gw1 127.0.0.1:$P_G1 check port $P_A1
    server gw2 127.0.0.1:$P_G2 check port $P_A2
    server gw3 127.0.0.1:$P_G3 check port $P_A3
EOF
haproxy -c -q -f "$WORK/haproxy.cfg" || fail "haproxy refused its configuration"
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
wait_for "HAProxy" 10 bash -c "(: </dev/tcp/127.0.0.1/$P_LB)"
say "HAProxy on 127.0.0.1:$P_LB -> gw1, gw2, gw3"

# ---------------------------------------------------------------------------
step "tokens"
mint() { # SUB
  "$BIN" token mint --key "$WORK/keys/private.pem" --iss https://idp.example.com/ \
    --aud https://api.example.com --sub "$1" --ttl 10m
}
mint alice >"$WORK/alice.token"
mint bob >"$WORK/bob.token"
JTI=$(python3 - "$WORK/alice.token" <<'EOF'
import base64, json, sys
payload = open(sys.argv[1]).read().strip().split(".")[1]
print(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])
EOF
)
say "alice's token: jti $JTI; bob's token: a second, unrelated one"

served_200() { # ADMIN_PORT -> requests answered 200 on route orders
  curl -s -m 5 "http://127.0.0.1:$1/metrics" |
    awk '/^portcullis_requests_total\{/ && /route="orders"/ && /status="200"/ {n += $NF} END {print n + 0}'
}
counter() { # ADMIN_PORT METRIC_LINE_PREFIX
  curl -s -m 5 "http://127.0.0.1:$1/metrics" | awk -v p="$2" 'index($0, p) == 1 {print $NF; found = 1} END {if (!found) print 0}'
}

send() { # LABEL URL COUNT EXPECT TOKEN [extra args]
  local label=$1 url=$2 count=$3 expect=$4 token=$5
  shift 5
  python3 deploy/tools/send_requests.py --label "$label" --url "$url" --count "$count" \
    --expect "$expect" --token-file "$token" --cafile "$WORK/server.crt" "$@"
}

# ---------------------------------------------------------------------------
step "1. $REQUESTS requests through HAProxy with alice's token: all must be 200"
send "through HAProxy" "https://127.0.0.1:$P_LB/orders/1" "$REQUESTS" 200 "$WORK/alice.token" \
  --expect-user alice || fail "not every request through HAProxy succeeded"
total=0
for i in 1 2 3; do
  n=$(served_200 "${ADMIN_PORTS[i - 1]}")
  say "  gateway $i served $n of them"
  [ "$n" -gt 0 ] || fail "gateway $i served none: HAProxy did not spread the load"
  total=$((total + n))
done
[ "$total" -eq "$REQUESTS" ] || fail "the gateways counted $total successful requests, not $REQUESTS"
PASSED=$((PASSED + 1))

# ---------------------------------------------------------------------------
step "2. revoke alice's token (jti) on gateway 2's admin API only"
code=$(curl -s -m 5 -o "$WORK/revoke.json" -w '%{http_code}' -X POST \
  -H "Authorization: Bearer $(cat "$WORK/admin.token")" -H 'Content-Type: application/json' \
  "http://127.0.0.1:$P_A2/revocations" -d "{\"jti\": \"$JTI\"}")
say "  POST http://127.0.0.1:$P_A2/revocations -> $code $(cat "$WORK/revoke.json")"
[ "$code" = 201 ] || fail "the revocation was not acknowledged (201)"
say "  in Redis: $(redis-cli -p "$P_REDIS" --scan --pattern 'portcullis-proof:*' | wc -l) key(s) under portcullis-proof:"
PASSED=$((PASSED + 1))
sleep 1

# ---------------------------------------------------------------------------
step "3. one second later: alice's token refused everywhere (401 token revoked)"
ok=1
send "through HAProxy" "https://127.0.0.1:$P_LB/orders/1" "$AFTER" 401 "$WORK/alice.token" \
  --expect-text "token revoked" || ok=0
for i in 1 2 3; do
  send "gateway $i directly" "https://127.0.0.1:${GW_PORTS[i - 1]}/orders/1" "$DIRECT" 401 \
    "$WORK/alice.token" --expect-text "token revoked" || ok=0
done
[ "$ok" = 1 ] || fail "a revoked token was not refused everywhere"
for i in 1 2 3; do
  revoked=$(counter "${ADMIN_PORTS[i - 1]}" 'portcullis_auth_decisions_total{issuer="main",result="revoked"}')
  entries=$(counter "${ADMIN_PORTS[i - 1]}" 'portcullis_revocations{kind="jti"}')
  say "  gateway $i: revocation entries (jti) $entries, refusals counted as revoked $revoked"
  [ "$entries" = 1 ] || fail "gateway $i does not hold the revocation"
  [ "$revoked" -ge "$DIRECT" ] || fail "gateway $i did not count its refusals as revoked"
done
PASSED=$((PASSED + 1))

# ---------------------------------------------------------------------------
step "4. control: bob's token, not revoked, still passes through HAProxy"
send "through HAProxy" "https://127.0.0.1:$P_LB/orders/2" "$AFTER" 200 "$WORK/bob.token" \
  --expect-user bob || fail "an unrelated token was refused"
PASSED=$((PASSED + 1))

RESULT=PASS
