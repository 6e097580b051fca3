#!/usr/bin/env python3
"""Open N keep-alive connections to a loopback HTTP/1.1 server, send one
authenticated GET on each, read the answer, keep them all open and idle,
sample the target's RSS, then close them all.

Prints one JSON object on stdout:
  {"opened": .., "ok": .., "statuses": {...}, "errors": {...},
   "rss_before_kb": .., "rss_held_kb": .., "rss_after_close_kb": ..,
   "open_seconds": .., "active_gauge": ..}

Bounded: every connect/read has a timeout and the whole run has --deadline.
usage: idle_conns.py --host 127.0.0.1 --port P --token T --pids "1 2" [--n 10000]
"""
import argparse
import asyncio
import json
import sys
import time
import urllib.request


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def gauge(url, name):
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except Exception:
        return None
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith(name):
            found = True
            total += float(line.rsplit(" ", 1)[1])
    return total if found else None


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v.strip())
        elif k == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size = int((await reader.readline()).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def run(args):
    pids = [int(p) for p in args.pids.split()]
    req = (
        f"GET / HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"Authorization: Bearer {args.token}\r\n\r\n"
    ).encode()
    sem = asyncio.Semaphore(args.parallel)
    conns = []
    statuses = {}
    errors = {}

    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), 10)
            except Exception as e:  # noqa: BLE001
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                return
            conns.append(w)
            try:
                w.write(req)
                await w.drain()
                st = await asyncio.wait_for(read_response(r), 10)
                statuses[st] = statuses.get(st, 0) + 1
            except Exception as e:  # noqa: BLE001
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    rss_before = rss_kb(pids)
    t0 = time.time()
    await asyncio.gather(*(one() for _ in range(args.n)))
    open_s = time.time() - t0
    await asyncio.sleep(args.settle)
    rss_held = rss_kb(pids)
    active = gauge(args.metrics, args.gauge)
    for w in conns:
        w.close()
    for w in conns:
        try:
            await asyncio.wait_for(w.wait_closed(), 2)
        except Exception:  # noqa: BLE001
            pass
    await asyncio.sleep(args.settle)
    rss_after = rss_kb(pids)
    return {
        "opened": len(conns),
        "ok": statuses.get(200, 0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "errors": errors,
        "rss_before_kb": rss_before,
        "rss_held_kb": rss_held,
        "rss_after_close_kb": rss_after,
        "open_seconds": round(open_s, 2),
        "active_gauge": active,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--pids", required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--parallel", type=int, default=200)
    p.add_argument("--settle", type=float, default=1.0)
    p.add_argument("--deadline", type=float, default=90.0)
    p.add_argument("--metrics", default="")
    p.add_argument("--gauge", default="portcullis_connections_active")
    args = p.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loopback only")
    try:
        out = asyncio.run(asyncio.wait_for(run(args), args.deadline))
    except asyncio.TimeoutError:
        out = {"error": f"deadline of {args.deadline}s exceeded"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
