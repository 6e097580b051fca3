#!/usr/bin/env python3
"""A trivial upstream for the deploy checks: answers every request with 200 and
a JSON body naming the identity headers the gateway forwarded.

Usage: echo_upstream.py PORT   (binds 127.0.0.1 only; runs until killed)
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body leave at once

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "x-user-id": self.headers.get("X-User-Id"),
            "x-token-issuer": self.headers.get("X-Token-Issuer"),
            "authorization-forwarded": "Authorization" in self.headers,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
