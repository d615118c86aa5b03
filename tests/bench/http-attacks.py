#!/usr/bin/env python3
"""The service under attack and under camera frames, two binaries side by side (issue #14).

    python3 tests/bench/http-attacks.py BEFORE_BINARY AFTER_BINARY [--quick]

For each binary, in one run on this machine (the table in docs/service.md):

1. digits throughput: `beltbox loadgen` (the AFTER binary's, for both), 32 connections, at
   $RATE req/s (default 6000, about what the new server sustains here) and at 2x: served
   req/s and p99;
2. attack: 100 slow sockets (a request head at 1 byte/s, reconnecting when closed) plus 3
   stalled large bodies (Content-Length 2650000, one byte sent, reconnecting), while
   loadgen offers $RATE / 2: the share of good requests served;
3. RSS: 60 concurrent clients sending 2 MB JSON frames (UINT8 [760, 760]) with a 64 MiB
   budget, each retrying its 503s until served: VmHWM of the service vs the budget (the
   AFTER binary also with `memory.strict_rss = true`);
4. 1080p: a 1920x1080 RGB UINT8 frame (binary extension) to the MobileNetV2-shaped INT8
   model, 40 times in sequence: end-to-end p50/p95 as the client sees it, and the
   service's CPU time and minor page faults per request (/proc/PID/stat): what returning
   request memory to the kernel costs the model run.

Only the Python standard library; prints a table. A benchmark, not a test: nothing asserts.
"""
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

RATE = int(os.environ.get("RATE", "6000"))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INFER = "/v2/models/{}/infer"


def start(binary, *args):
    proc = subprocess.Popen(
        [binary, "run", "--listen", "127.0.0.1:0", *args],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RUST_LOG": "info"},
    )
    url = None
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            url = m.group(1)
        if "ready: serving" in line:
            threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
            host, port = url.rsplit(":", 1)
            return proc, host, int(port)
    proc.kill()
    sys.exit(f"{binary} did not become ready")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def loadgen(gen, port, rate, seconds):
    """One loadgen step; a failed run (e.g. no connection accepted) counts as 0 served."""
    p = subprocess.run(
        [gen, "loadgen", "--url", f"http://127.0.0.1:{port}", "--rates", str(rate),
         "--duration", f"{seconds}s", "--connections", "32", "--json"],
        capture_output=True, text=True,
    )
    if p.returncode != 0:
        print(f"loadgen at {rate} req/s failed: {p.stderr.strip()}", file=sys.stderr)
        return {"sent": rate * seconds, "ok": 0, "throughput_rps": 0.0, "p99_ms": float("nan")}
    return json.loads(p.stdout)[0]


def field(step, *names):
    for n in names:
        if n in step:
            return step[n]
    raise KeyError(f"none of {names} in {sorted(step)}")


class Attack:
    """100 slowloris sockets and 3 stalled large bodies, reconnecting when closed."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.slow, daemon=True)] + [
            threading.Thread(target=self.stalled, daemon=True) for _ in range(3)
        ]

    def connect(self):
        try:
            return socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            return None

    def slow(self):
        head = b"POST /v2/models/digits-int8-qdq/infer HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000
        socks = [[self.connect(), 0] for _ in range(100)]
        while not self.stop.is_set():
            for entry in socks:
                s, i = entry
                try:
                    if s is None:
                        raise OSError
                    s.send(head[i % len(head):i % len(head) + 1])
                    entry[1] = i + 1
                except OSError:
                    if s is not None:
                        s.close()
                    entry[0], entry[1] = self.connect(), 0
            self.stop.wait(1.0)

    def stalled(self):
        head = (b"POST /v2/models/digits-int8-qdq/infer HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 2650000\r\n\r\n{")
        while not self.stop.is_set():
            s = self.connect()
            if s is None:
                self.stop.wait(0.1)
                continue
            try:
                s.sendall(head)
                s.settimeout(30)
                s.recv(4096)  # returns when the server answers (408) or closes
            except OSError:
                pass
            s.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        self.stop.set()


def rss_run(binary, *extra):
    proc, host, port = start(binary, "--budget", "64MiB", *extra)
    side = 760
    data = ",".join(str(i * 7 % 256) for i in range(side * side))
    body = ('{"inputs":[{"name":"input","shape":[%d,%d],"datatype":"UINT8","data":[%s]}]}'
            % (side, side, data)).encode()
    served, refused, failed = [0], [0], [0]
    lock = threading.Lock()

    def client(i):
        for attempt in range(400):
            try:
                c = http.client.HTTPConnection(host, port, timeout=120)
                c.request("POST", INFER.format("digits-int8-qdq"), body=body,
                          headers={"Content-Type": "application/json"})
                r = c.getresponse()
                r.read()
                c.close()
            except OSError:
                with lock:
                    failed[0] += 1
                time.sleep(0.1)
                continue
            if r.status == 200:
                with lock:
                    served[0] += 1
                return
            with lock:
                refused[0] += 1
            time.sleep(0.05 + (i * 37 + attempt * 11) % 100 / 1000)

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - t0
    peak = vm_hwm(proc.pid)
    stop(proc)
    return peak, served[0], refused[0], failed[0], took, len(body)


def cpu_and_faults(pid):
    """(CPU seconds, minor page faults) of a process so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3; minflt 10, utime 14, stime 15 (proc(5)).
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[7])


def frame_run(binary, runs, *extra):
    proc, host, port = start(binary, "--model", "mobilenetv2-bench-int8-qdq", *extra)
    h, w = 1080, 1920
    pixels = bytes((x * 255 // w + y) % 256 for y in range(h) for x in range(w) for _ in range(3))
    header = json.dumps({"inputs": [{"name": "input", "shape": [h, w, 3], "datatype": "UINT8",
                                     "parameters": {"binary_data_size": len(pixels)}}]}).encode()
    body = header + pixels
    lat, statuses = [], {}
    c = http.client.HTTPConnection(host, port, timeout=120)
    for i in range(runs + 2):
        t0 = time.perf_counter()
        c.request("POST", INFER.format("mobilenetv2-bench-int8-qdq"), body=body,
                  headers={"Content-Type": "application/octet-stream",
                           "Inference-Header-Content-Length": str(len(header))})
        r = c.getresponse()
        r.read()
        if i == 1:
            cpu0, faults0 = cpu_and_faults(proc.pid)
        if i >= 2:  # warm-up
            lat.append((time.perf_counter() - t0) * 1000)
            statuses[r.status] = statuses.get(r.status, 0) + 1
        if r.will_close:
            c.close()
            c = http.client.HTTPConnection(host, port, timeout=120)
    cpu1, faults1 = cpu_and_faults(proc.pid)
    stop(proc)
    lat.sort()
    return (statuses, statistics.median(lat), lat[int(0.95 * (len(lat) - 1))],
            (cpu1 - cpu0) * 1000 / runs, (faults1 - faults0) / runs)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    before, after = sys.argv[1], sys.argv[2]
    quick = "--quick" in sys.argv
    seconds = 3 if quick else 8
    rows = {}
    for name, binary in (("before", before), ("after", after)):
        r = rows[name] = {}
        proc, _, port = start(binary)
        # RATE is about what the new server sustains on this machine (loadgen shares its
        # two cores): at RATE, at 2x RATE, and RATE / 2 under attack.
        cap = loadgen(after, port, RATE, seconds)
        over = loadgen(after, port, 2 * RATE, seconds)
        r["capacity"] = (RATE, field(cap, "throughput_rps"), field(cap, "p99_ms"))
        r["overload"] = (2 * RATE, field(over, "throughput_rps"), field(over, "p99_ms"))
        half = RATE // 2
        with Attack(port):
            atk = loadgen(after, port, half, seconds * 2)
        sent = field(atk, "sent")
        ok = field(atk, "ok")
        r["attack"] = (half, ok, sent, field(atk, "p99_ms"))
        stop(proc)
        r["rss"] = rss_run(binary)
        if name == "after":
            strict = os.path.join(os.environ.get("TMPDIR", "/tmp"), "beltbox-strict-rss.toml")
            with open(strict, "w") as f:
                f.write("[memory]\nstrict_rss = true\n")
            r["rss_strict"] = rss_run(binary, "--config", strict)
            r["frame_strict"] = frame_run(binary, 10 if quick else 40, "--config", strict)
        r["frame"] = frame_run(binary, 10 if quick else 40)
        print(f"{name}: {r}", file=sys.stderr)

    print("| | before | after |")
    print("|---|---:|---:|")
    b, a = rows["before"], rows["after"]
    for row, key in (("digits, offered req/s: served, p99", "capacity"), ("digits at 2x: served, p99", "overload")):
        print(f"| {row} | {b[key][0]}: {b[key][1]:.0f}, {b[key][2]:.2f} ms | {a[key][0]}: {a[key][1]:.0f}, {a[key][2]:.2f} ms |")
    for row, key in (("100 slow + 3 stalled sockets: good requests served", "attack"),):
        cells = []
        for x in (b, a):
            rate, ok, sent, p99 = x[key]
            cells.append(f"{ok} of {sent} ({100.0 * ok / max(sent, 1):.1f} %) at {rate} req/s, p99 {p99:.2f} ms")
        print(f"| {row} | {cells[0]} | {cells[1]} |")
    cells = []
    for x in (b, a):
        peak, served, refused, failed, took, size = x["rss"]
        cells.append(f"VmHWM {peak / 2**20:.1f} MiB; {served}/60 served, {refused} x 503, {failed} resets, {took:.1f} s")
    print(f"| 60 concurrent 2 MB JSON frames, 64 MiB budget | {cells[0]} | {cells[1]} |")
    peak, served, refused, failed, took, size = a["rss_strict"]
    print(f"| the same, memory.strict_rss = true | — | VmHWM {peak / 2**20:.1f} MiB; {served}/60 served, {refused} x 503, {failed} resets, {took:.1f} s |")
    cells = []
    for x in (b, a):
        statuses, p50, p95, cpu, faults = x["frame"]
        cells.append(f"{statuses}: p50 {p50:.1f} ms, p95 {p95:.1f} ms; service CPU {cpu:.1f} ms, {faults:.0f} page faults per request")
    print(f"| 1080p UINT8 frame, MobileNetV2 INT8, end to end | {cells[0]} | {cells[1]} |")
    statuses, p50, p95, cpu, faults = a["frame_strict"]
    print(f"| the same, memory.strict_rss = true | — | {statuses}: p50 {p50:.1f} ms, p95 {p95:.1f} ms; service CPU {cpu:.1f} ms, {faults:.0f} page faults per request |")


if __name__ == "__main__":
    main()
