#!/usr/bin/env python3
"""A stand-in for a fleet's HTTP ingest endpoint (tests/offline.rs): Python's own
http.server, not beltbox code. It takes POSTed JSON-lines batches and appends one line per
message to OUT as `id<TAB>idempotency-key` (and the message itself to OUT.jsonl), after
fsync, then answers 200.

While the file OUT.fail exists it answers 503 without keeping anything (a receiver that is
down or overloaded); while OUT.slow exists it waits 2 s before answering (a slow link).

usage: receiver.py PORTFILE OUT   (binds 127.0.0.1:0 and writes the port to PORTFILE)
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    port_file, out = sys.argv[1], sys.argv[2]

    class Ingest(BaseHTTPRequestHandler):
        def do_POST(self):
            try:
                self.ingest()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the uploader gave up waiting (its timeout): it sends again

        def ingest(self):
            n = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(n)
            if os.path.exists(out + ".slow"):
                time.sleep(2)
            if os.path.exists(out + ".fail"):
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b"ingest paused")
                return
            key = self.headers.get("Idempotency-Key", "")
            if self.headers.get("Content-Type") != "application/x-ndjson" or not key:
                self.send_response(400)
                self.end_headers()
                return
            lines, whole = [], []
            for line in body.split(b"\n"):
                if line.strip():
                    lines.append(json.loads(line)["id"] + "\t" + key + "\n")
                    whole.append(line + b"\n")
            with open(out + ".jsonl", "ab") as f:
                f.write(b"".join(whole))
            with open(out, "a") as f:
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(httpd.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
