#!/usr/bin/env python3
"""Checks the Grafana dashboard and the Prometheus rules against what a running
gateway really exports.

Usage:
  check_observability.py --metrics SCRAPE.txt --rules RULES.yaml \
      --dashboard DASHBOARD.json --promql-out DASHBOARD_EXPRS.rules.yaml

SCRAPE.txt is the text of a live gateway's /metrics. The checks:
  * every portcullis_* name used in an expression is an exported family, or the
    _bucket/_sum/_count series of an exported histogram (a bare histogram name
    selects nothing and is an error);
  * every portcullis:* name is a recording rule of RULES.yaml;
  * every other metric is one of the few documented external ones (`up` from
    Prometheus, kube_deployment_* from kube-state-metrics);
  * label names in selectors and in by()/without() exist on the metrics the
    expression uses, and values matched against a label whose values are all
    exported from start (auth result, key-fetch result, revocation kind,
    upstream error kind, reload result) are values that exist;
  * the dashboard is well formed: unique panel ids and refIds, every panel
    queries the ${datasource} variable, panels inside the 24-column grid and
    not overlapping, every $variable used is defined, and it covers what SREs
    need (request rate and latency per route, auth decisions, cache hit ratio,
    JWKS age, revocations, upstream errors, connections);
  * the dashboard's expressions, with Grafana's variables substituted, are
    written to --promql-out as recording rules so that `promtool check rules`
    parses every one of them.
"""

import argparse
import json
import re
import sys

import yaml

# Metrics that come from elsewhere, with the labels the rules and dashboard use.
EXTERNAL = {
    "up": {"job", "instance"},  # Prometheus itself
    "kube_deployment_status_replicas_unavailable": {"namespace", "deployment"},  # kube-state-metrics
    "kube_deployment_status_replicas_available": {"namespace", "deployment"},
    "kube_deployment_spec_replicas": {"namespace", "deployment"},
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
# Labels whose every value the gateway exports from its start, whatever the
# configuration, so a value that is not in the scrape is a typo. (issuer and
# upstream values depend on the configuration and are not checked.)
CLOSED_LABELS = {
    ("portcullis_auth_decisions_total", "result"),
    ("portcullis_jwks_refresh_total", "result"),
    ("portcullis_revocations", "kind"),
    ("portcullis_upstream_errors_total", "kind"),
    ("portcullis_config_reloads_total", "result"),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "sum", "min", "max", "avg", "count", "stddev", "stdvar",
    "topk", "bottomk", "quantile", "count_values", "group", "le",
}
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
}
DASHBOARD_MUST_USE = [
    "portcullis_requests_total",
    "portcullis_request_duration_seconds_bucket",
    "portcullis_auth_decisions_total",
    "portcullis_token_cache_hits_total",
    "portcullis_token_cache_misses_total",
    "portcullis_jwks_last_success_timestamp_seconds",
    "portcullis_jwks_keys",
    "portcullis_revocations",
    "portcullis_revocation_sync_errors_total",
    "portcullis_upstream_errors_total",
    "portcullis_connections_active",
]
RULES_MUST_USE = [
    "portcullis_jwks_last_success_timestamp_seconds",
    "portcullis_jwks_keys",
    "portcullis_auth_decisions_total",
    "portcullis_revocation_sync_errors_total",
    "portcullis_upstream_errors_total",
    "up",
]

errors = []


def err(msg):
    errors.append(msg)
    print(f"FAIL {msg}")


# --- the scrape ----------------------------------------------------------------


def parse_exposition(text):
    """Returns (families: name -> type, series: sample name -> {label: set(values)})."""
    families = {}
    series = {}
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            families[name] = kind.strip()
        elif line and not line.startswith("#"):
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
            if not m:
                continue
            labels = series.setdefault(m.group(1), {})
            for k, v in label_re.findall(m.group(3) or ""):
                labels.setdefault(k, set()).add(v)
    return families, series


# --- expressions -----------------------------------------------------------------

SELECTOR_RE = re.compile(r"(?<![A-Za-z0-9_:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
FUNC_RE = re.compile(r"\b([a-z_]+)\s*\(")
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
DURATION_RE = re.compile(r"\[[^\]]*\]")


def _blank(m):
    """Same length, so that positions in the blanked text match the original."""
    text = m.group(0)
    if text.startswith('"'):
        return '"' + "x" * (len(text) - 2) + '"'
    return " " * len(text)


def metric_refs(expr):
    """(name, matcher text or None) for each metric selector in the expression."""
    funcs = set(FUNC_RE.findall(expr))
    bare = STRING_RE.sub(_blank, expr)  # strings cannot hide names or braces
    bare = DURATION_RE.sub(_blank, bare)  # [5m], [$__rate_interval]
    bare = GROUPING_RE.sub(_blank, bare)  # by (route, le)
    bare = re.sub(r"\boffset\s+\S+", _blank, bare)
    refs = []
    for m in SELECTOR_RE.finditer(bare):
        name = m.group(1)
        if name in PROMQL_WORDS or (name in funcs and bare[m.end(1):].lstrip().startswith("(")):
            continue
        matchers = expr[m.start(2) + 1 : m.end(2) - 1] if m.group(2) else None
        refs.append((name, matchers))
    return refs


def family_of(name, families):
    """The exported family a series name belongs to, or None."""
    if name in families and families[name] not in ("histogram", "summary"):
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if families.get(base) in ("histogram", "summary"):
                return base
    return None


def check_expr(where, expr, families, series, records):
    used = set()
    label_pool = set(TARGET_LABELS)
    refs = metric_refs(expr)
    for name, matchers in refs:
        used.add(name)
        if name.startswith("portcullis_"):
            fam = family_of(name, families)
            if fam is None:
                if families.get(name) in ("histogram", "summary"):
                    err(f"{where}: {name} is a histogram: select {name}_bucket, _sum or _count")
                else:
                    err(f"{where}: {name} is not exported by the gateway")
                continue
            known = set(series.get(name, {}).keys())
            label_pool |= known
            for label, op, value in MATCHER_RE.findall(matchers or ""):
                if label not in known and label not in TARGET_LABELS:
                    err(f"{where}: {name} has no label {label!r} (it has: {', '.join(sorted(known)) or 'none'})")
                    continue
                if (fam, label) in CLOSED_LABELS and "$" not in value:
                    exported = series.get(name, {}).get(label, set())
                    if op in ("=", "!="):
                        wanted = [value]
                    elif re.fullmatch(r"[A-Za-z0-9_|]+", value):
                        wanted = value.split("|")
                    else:
                        wanted = []
                    for v in wanted:
                        if v not in exported:
                            err(f"{where}: {name}{{{label}{op}\"{value}\"}}: {v!r} is never exported (values: {', '.join(sorted(exported))})")
        elif name.startswith("portcullis:"):
            if name not in records:
                err(f"{where}: {name} is not a recording rule of the rules file")
            else:
                label_pool |= records[name]
        elif name in EXTERNAL:
            label_pool |= EXTERNAL[name]
            for label, _, _ in MATCHER_RE.findall(matchers or ""):
                if label not in EXTERNAL[name] and label not in TARGET_LABELS:
                    err(f"{where}: {name} is not expected to carry label {label!r}")
        else:
            err(f"{where}: {name}: not a portcullis metric nor a documented external one ({', '.join(sorted(EXTERNAL))})")
    for group in GROUPING_RE.findall(expr):
        for label in [x.strip() for x in group.split(",") if x.strip()]:
            if label == "le":
                if not any(n.endswith("_bucket") for n, _ in refs):
                    err(f"{where}: grouping by le without a _bucket series")
            elif label not in label_pool:
                err(f"{where}: groups by {label!r}, which none of its metrics carries")
    return used


# --- rules -------------------------------------------------------------------------


def load_rules(path):
    doc = yaml.safe_load(open(path))
    rules = [r for g in doc.get("groups", []) for r in g.get("rules", [])]
    return rules


def recorded_labels(rules, series):
    """Labels each recording rule keeps: its by() labels, or its inputs' labels."""
    records = {}
    for r in rules:
        if "record" not in r:
            continue
        expr = r["expr"]
        groups = GROUPING_RE.findall(expr)
        if groups:
            labels = {x.strip() for x in groups[-1].split(",") if x.strip()} - {"le"}
        else:
            labels = set(TARGET_LABELS)
            for name, _ in metric_refs(expr):
                labels |= set(series.get(name, {}).keys())
        records[r["record"]] = labels
    return records


# --- dashboard ---------------------------------------------------------------------


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def check_dashboard(dash):
    if not dash.get("uid") or not dash.get("title"):
        err("dashboard: uid and title are required")
    if not isinstance(dash.get("schemaVersion"), int):
        err("dashboard: schemaVersion missing")
    var_names = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    if "datasource" not in var_names:
        err("dashboard: no datasource variable")
    ids = set()
    boxes = []
    exprs = []
    for p in walk_panels(dash.get("panels", [])):
        pid = p.get("id")
        if pid in ids:
            err(f"dashboard: panel id {pid} used twice")
        ids.add(pid)
        g = p.get("gridPos", {})
        if g.get("x", 0) + g.get("w", 0) > 24:
            err(f"dashboard: panel {pid} {p.get('title')!r} is wider than the grid")
        boxes.append((pid, g.get("x", 0), g.get("y", 0), g.get("w", 0), g.get("h", 0)))
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            err(f"dashboard: panel {pid} {p.get('title')!r} does not use the ${{datasource}} variable")
        targets = p.get("targets", [])
        if not targets:
            err(f"dashboard: panel {pid} {p.get('title')!r} has no query")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)):
            err(f"dashboard: panel {pid} has duplicate refIds")
        for t in targets:
            if not t.get("expr"):
                err(f"dashboard: panel {pid} target {t.get('refId')} has no expr")
                continue
            exprs.append((f"dashboard panel {pid} {p.get('title')!r} {t.get('refId')}", t["expr"], pid, t.get("refId")))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]:
                err(f"dashboard: panels {a[0]} and {b[0]} overlap")
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]+)\)", q or "")
            if not m:
                err(f"dashboard: variable {v['name']}: expected label_values(selector, label)")
                continue
            exprs.append((f"dashboard variable {v['name']}", m.group(1), None, None))
            exprs.append((f"dashboard variable {v['name']} label", f"sum by ({m.group(2)}) ({m.group(1)})", None, None))
    for where, expr, _, _ in exprs:
        for var in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expr):
            if not var.startswith("__") and var not in var_names:
                err(f"{where}: uses ${var}, which is not a dashboard variable")
    return exprs


def substitute(expr):
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    expr = expr.replace('"$job"', '"portcullis"')
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


# --- main --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--rules", required=True)
    ap.add_argument("--dashboard", required=True)
    ap.add_argument("--promql-out", required=True)
    a = ap.parse_args()

    families, series = parse_exposition(open(a.metrics).read())
    portcullis_families = sorted(f for f in families if f.startswith("portcullis_"))
    print(f"the gateway exports {len(portcullis_families)} portcullis_* families")
    if not portcullis_families:
        err("the scrape holds no portcullis_* metric")

    rules = load_rules(a.rules)
    records = recorded_labels(rules, series)
    used_rules = set()
    for r in rules:
        name = r.get("record") or r.get("alert")
        used_rules |= check_expr(f"rules {name}", r["expr"], families, series, records)

    dash = json.load(open(a.dashboard))
    dash_exprs = check_dashboard(dash)
    used_dash = set()
    for where, expr, _, _ in dash_exprs:
        used_dash |= check_expr(where, expr, families, series, records)

    for m in DASHBOARD_MUST_USE:
        if m not in used_dash:
            err(f"dashboard: nothing shows {m}")
    for m in RULES_MUST_USE:
        if m not in used_rules and not any(
            m in r["expr"] for r in rules if r.get("record") and r["record"] in used_rules
        ):
            err(f"rules: no rule uses {m}")

    used_families = {family_of(n, families) for n in used_rules | used_dash if n.startswith("portcullis_")}
    unused = [f for f in portcullis_families if f not in used_families]
    print(f"dashboard and rules use {len(used_families - {None})} of them"
          + (f"; not shown anywhere: {', '.join(unused)}" if unused else ""))

    # The dashboard's expressions as recording rules, for `promtool check rules`.
    out = {"groups": [{"name": "dashboard-expressions", "rules": []}]}
    for i, (where, expr, pid, ref) in enumerate(dash_exprs):
        out["groups"][0]["rules"].append({"record": f"dashboard:expr_{i}", "expr": substitute(expr)})
    with open(a.promql_out, "w") as f:
        yaml.safe_dump(out, f, sort_keys=False, width=1000)

    n = len(dash_exprs) + len(rules)
    print(f"{n} expressions checked ({len(rules)} rules, {len(dash_exprs)} dashboard queries), {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
