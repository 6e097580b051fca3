#!/usr/bin/env python3
"""Sends a bounded number of HTTPS requests, each on a new connection (so that a
TCP load balancer spreads them), and checks every answer's status.

Usage: send_requests.py --url https://127.0.0.1:PORT/path --count N --expect STATUS
                        [--token-file F] [--cafile CA] [--expect-user SUB]
                        [--expect-text TEXT]
Prints the statuses seen; exits 1 when any answer differs from --expect (or,
with --expect-user, when a 200's echoed X-User-Id is not SUB; with
--expect-text, when a body lacks TEXT).
"""

import argparse
import collections
import http.client
import json
import ssl
import sys
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--token-file")
    ap.add_argument("--cafile")
    ap.add_argument("--expect-user")
    ap.add_argument("--expect-text")
    ap.add_argument("--label", default="")
    ap.add_argument("--timeout", type=float, default=5.0, help="per request")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="for all of them")
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.url)
    ctx = ssl.create_default_context(cafile=a.cafile) if u.scheme == "https" else None
    headers = {"Connection": "close"}
    if a.token_file:
        headers["Authorization"] = "Bearer " + open(a.token_file).read().strip()
    statuses = collections.Counter()
    problems = []
    started = time.monotonic()
    for i in range(a.count):
        if time.monotonic() - started > a.max_seconds:
            statuses["not-sent"] += a.count - i
            problems.append(f"stopped after {a.max_seconds:g}s with {a.count - i} requests not sent")
            break
        try:
            if ctx:
                c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=a.timeout)
            else:
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=a.timeout)
            c.request("GET", u.path or "/", headers=headers)
            r = c.getresponse()
            body = r.read()
            c.close()
            statuses[r.status] += 1
            if r.status != a.expect and len(problems) < 5:
                problems.append(f"request {i}: {r.status} {body[:200]!r}")
            if r.status == a.expect and a.expect_text and a.expect_text.encode() not in body:
                statuses["wrong-body"] += 1
                if len(problems) < 5:
                    problems.append(f"request {i}: body lacks {a.expect_text!r}: {body[:200]!r}")
            if r.status == 200 and a.expect_user:
                seen = json.loads(body).get("x-user-id")
                if seen != a.expect_user:
                    statuses["wrong-user"] += 1
                    if len(problems) < 5:
                        problems.append(f"request {i}: upstream saw X-User-Id {seen!r}")
        except Exception as e:  # a refused or reset connection is a failure too
            statuses[type(e).__name__] += 1
            if len(problems) < 5:
                problems.append(f"request {i}: {e!r}")
    took = time.monotonic() - started
    seen = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items(), key=str))
    ok = statuses.get(a.expect, 0) == a.count and not problems
    print(f"  {a.label or a.url}: {a.count} requests in {took:.1f}s -> {seen} ({'all' if ok else 'NOT all'} {a.expect})")
    for p in problems:
        print(f"    {p}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
