#!/usr/bin/env python3
"""Mint a pool of distinct JWTs (RS256 or ES256) for the load benchmark.

Each token is what `portcullis token mint` would produce (header typ/alg/kid,
claims iss/aud/sub/iat/exp/jti) but with a distinct `sub` and `jti`, so no two
tokens in a pool are equal and a verified-token cache can never hit.

Only `cryptography` is needed (Debian: python3-cryptography). Signing runs in
several processes; RSA-2048 signing is ~1 ms per token per core.

usage: mint.py --key private.pem --kid KID --alg RS256 --iss I --aud A
               --count N --ttl SECONDS --sub-prefix u --out FILE [--procs 2]
"""
import argparse
import base64
import json
import multiprocessing
import os
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


_KEY = None
_ARGS = None


def _init(key_pem: bytes, args_dict: dict):
    global _KEY, _ARGS
    _KEY = serialization.load_pem_private_key(key_pem, password=None)
    _ARGS = args_dict


def _sign(signing_input: bytes) -> bytes:
    if _ARGS["alg"] == "RS256":
        assert isinstance(_KEY, rsa.RSAPrivateKey)
        return _KEY.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    assert isinstance(_KEY, ec.EllipticCurvePrivateKey)
    der = _KEY.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _mint_range(bounds):
    start, end = bounds
    a = _ARGS
    header = b64u(
        json.dumps({"typ": "JWT", "alg": a["alg"], "kid": a["kid"]}, separators=(",", ":")).encode()
    )
    out = []
    for i in range(start, end):
        claims = {
            "iss": a["iss"],
            "aud": a["aud"],
            "sub": f"{a['sub_prefix']}{i}",
            "iat": a["iat"],
            "exp": a["exp"],
            "jti": f"{a['run']}-{i:08d}",
        }
        payload = b64u(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        out.append(f"{header}.{payload}.{b64u(_sign(signing_input))}")
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--key", required=True)
    p.add_argument("--kid", required=True)
    p.add_argument("--alg", required=True, choices=["RS256", "ES256"])
    p.add_argument("--iss", required=True)
    p.add_argument("--aud", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--ttl", type=int, default=20 * 3600)
    p.add_argument("--sub-prefix", default="u")
    p.add_argument("--out", required=True)
    p.add_argument("--procs", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()

    now = int(time.time())
    shared = {
        "alg": args.alg,
        "kid": args.kid,
        "iss": args.iss,
        "aud": args.aud,
        "sub_prefix": args.sub_prefix,
        "iat": now - 60,
        "exp": now + args.ttl,
        "run": f"{now:x}",
    }
    with open(args.key, "rb") as f:
        key_pem = f.read()

    chunk = 2000
    ranges = [(s, min(s + chunk, args.count)) for s in range(0, args.count, chunk)]
    tmp = args.out + ".tmp"
    t0 = time.time()
    with open(tmp, "w") as out:
        if args.procs > 1 and args.count > chunk:
            with multiprocessing.Pool(args.procs, initializer=_init, initargs=(key_pem, shared)) as pool:
                for toks in pool.imap(_mint_range, ranges):
                    out.write("\n".join(toks) + "\n")
        else:
            _init(key_pem, shared)
            for r in ranges:
                out.write("\n".join(_mint_range(r)) + "\n")
    os.replace(tmp, args.out)
    print(
        f"minted {args.count} {args.alg} tokens in {time.time() - t0:.1f}s -> {args.out}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
