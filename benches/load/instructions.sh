#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind (callgrind): a figure
# that does not move with the machine's other load, for A/B comparisons.
#
#   benches/load/instructions.sh                      # the current release build
#   benches/load/instructions.sh path/to/portcullis   # another build, e.g. an older commit's
#   NEW=1 benches/load/instructions.sh                # every request a token never seen before
#   FAST_PATH=false benches/load/instructions.sh      # every request on hyper's server (the general path)
#
# One gateway (workers = 1, RS256 issuer, repeated token, access log on)
# runs under callgrind in front of a small Python upstream on loopback.
# With NEW=1 each request carries a distinct token (minted by mint.py), so
# every request pays the signature check.
# It is measured twice, after WARM then WARM + N sequential keep-alive
# requests; the difference divided by N is the cost of one request, with
# start-up left out. Under valgrind SHA-256 takes its portable path (no SHA
# extensions), so token hashing weighs more here than on the real CPU.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
N="${N:-1000}"
WARM="${WARM:-300}"
PORT="${PORT:-18601}"
UP_PORT=$((PORT + 1))
ADMIN_PORT=$((PORT + 2))

command -v valgrind >/dev/null || { sudo apt-get install -y valgrind >/dev/null 2>&1 || apt-get install -y valgrind >/dev/null; }
BIN="${1:-}"
if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --quiet)
    BIN="$ROOT/target/release/portcullis"
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

WORK="$(mktemp -d)"
UP_PID=""
cleanup() {
    # The upstream holds this script's output open: it goes even when kept.
    [ -n "$UP_PID" ] && kill "$UP_PID" 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] && { echo "kept $WORK" >&2; return; }
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" keygen --alg RS256 --out "$WORK/k" >/dev/null
TOKENS="$WORK/tokens.txt"
if [ "${NEW:-0}" = 1 ]; then
    if python3 -c 'import cryptography' 2>/dev/null; then PY=python3; else PY=/usr/bin/python3; fi
    KID="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys"][0]["kid"])' "$WORK/k/jwks.json")"
    # Both measurements draw from the front of the same list, so the extra N
    # requests of the second one are tokens the first never sent either.
    $PY "$HERE/mint.py" --key "$WORK/k/private.pem" --kid "$KID" --alg RS256 \
        --iss https://idp.instructions.test/ --aud bench --count $((WARM + N)) --ttl 3600 \
        --sub-prefix u --out "$TOKENS" --procs "$(nproc)" >&2
else
    "$BIN" token mint --key "$WORK/k/private.pem" --iss https://idp.instructions.test/ \
        --aud bench --sub bench-user --ttl 1h >"$TOKENS"
fi
cat >"$WORK/p.toml" <<EOF
[server]
listen = ["127.0.0.1:$PORT"]
workers = 1
fast_path = ${FAST_PATH:-true}
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
[[issuer]]
id = "main"
issuer = "https://idp.instructions.test/"
jwks_file = "k/jwks.json"
audiences = ["bench"]
algorithms = ["RS256"]
[identity]
headers = { "X-User-Id" = "sub" }
[upstream.u]
endpoints = ["http://127.0.0.1:$UP_PORT"]
[[route]]
path_prefix = "/"
upstream = "u"
EOF

# The upstream: HTTP/1.1 keep-alive, a fixed answer; its cost is not counted.
python3 - "$UP_PORT" <<'EOF' &
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(64)
def serve(c):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                return
            buf += d
        _, buf = buf.split(b"\r\n\r\n", 1)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
UP_PID=$!

# Sequential requests on one kept-alive connection; each must be a 200.
cat >"$WORK/requests.py" <<'EOF'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
tokens = open(sys.argv[3]).read().split()
c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
for i in range(n):
    c.request("GET", "/", headers={"Authorization": "Bearer " + tokens[i % len(tokens)]})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"request answered {r.status}, not 200")
EOF

measure() {
    local requests="$1" out="$WORK/callgrind.$1"
    (cd "$WORK" && exec valgrind --tool=callgrind --callgrind-out-file="$out" "$BIN" run --config p.toml \
        >/dev/null 2>"$WORK/valgrind.$1.log") &
    local pid=$!
    for _ in $(seq 1 200); do
        curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && break
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/valgrind.$1.log" >&2; exit 1; }
        sleep 0.3
    done
    python3 "$WORK/requests.py" "$PORT" "$requests" "$TOKENS"
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    count "$out"
}

# The run's instructions, less aws-lc's one-time collection of CPU jitter
# entropy at start-up: about 420 million instructions whose number changes
# from run to run (it times the CPU), which the subtraction below would
# otherwise carry as noise of several hundred instructions per request.
count() {
    python3 - "$1" <<'PY'
import re, sys
names, total, jitter, callee, pending = {}, None, 0, "", False
def name(v):
    m = re.match(r"\((\d+)\)(?:\s+(.*))?", v)
    if not m:
        return v
    if m.group(2):
        names[m.group(1)] = m.group(2)
    return names.get(m.group(1), "")
for line in open(sys.argv[1], errors="replace"):
    if line.startswith(("summary:", "totals:")) and total is None:
        total = int(line.split()[1])
    elif line.startswith("fn="):
        name(line[3:].strip())
    elif line.startswith("cfn="):
        callee = name(line[4:].strip())
    elif line.startswith("calls="):
        pending = callee.endswith("tree_jitter_initialize_once")
    elif pending and line[:1].isdigit() or pending and line[:1] in "+-*":
        jitter += int(line.split()[1])
        pending = False
print(total - jitter)
PY
}

low="$(measure "$WARM")"
high="$(measure $((WARM + N)))"
echo "binary: $BIN"
echo "instructions: $low after $WARM requests, $high after $((WARM + N))"
echo "instructions per request: $(((high - low) / N))"
