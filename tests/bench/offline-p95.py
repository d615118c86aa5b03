#!/usr/bin/env python3
"""What the result spool costs the service (docs/offline.md, "What it costs"), measured side
by side in one run with the release binary.

Configurations, interleaved over ROUNDS rounds so drift (thermal, neighbours) hits them alike:
  off        spool.enabled = false
  on         the spool at the default commit interval (0: sync at once; answers arriving
             during a sync share the next one), no upload sink
  on-2ms     the spool with commit_interval_ms = 2 (each sync waits 2 ms for company)
  hammered   the spool at the default interval, and the uploader retrying as fast as it may
             (backoff 10-50 ms) against an MQTT broker that refuses connections and an HTTP
             receiver that answers every batch after 2 s with 503 (tests/offline/receiver.py)

Each round of each configuration starts the service, warms it, then sends REQUESTS requests
open-loop at RATE per second from 4 client threads (Python's http.client, a golden digit as
a KServe BYTES input). It prints, per configuration, the median over rounds of:
  - the end-to-end p95 (client clock: request sent -> answer read), which includes the
    acknowledgement wait (the record's group commit) when the spool is on;
  - the inference-stage p95 (the answer's `inference_us` parameter);
and the spool's fsync cost from /metrics: syncs, records per sync, mean fdatasync time, and
fdatasync time per record.

usage: cargo build --release && python3 tests/bench/offline-p95.py [ROUNDS] [RATE] [REQUESTS] [MODEL]
(MODEL: a bundled package, default digits-int8-qdq; its first golden input is sent)
"""
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BELTBOX", os.path.join(ROOT, "target/release/beltbox"))
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
RATE = float(sys.argv[2]) if len(sys.argv) > 2 else 200.0
REQUESTS = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
MODEL = sys.argv[4] if len(sys.argv) > 4 else "digits-int8-qdq"
THREADS = 4


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def body():
    golden = os.path.join(ROOT, "models", MODEL, "golden")
    first = sorted(n for n in os.listdir(golden) if not n.endswith(".out.npy"))[0]
    with open(os.path.join(golden, first), "rb") as f:
        img = f.read()
    head = json.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(img) + 4}}]}).encode()
    return head + len(img).to_bytes(4, "little") + img, len(head)


def p95(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.95 * len(xs)))]


def run_load(port, n, rate):
    data, hlen = body()
    e2e, inf = [], []
    lock = threading.Lock()
    t0 = time.perf_counter() + 0.05
    period = THREADS / rate

    def client(k):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for i in range(k, n, THREADS):
            due = t0 + (i // THREADS) * period + k * period / THREADS
            d = due - time.perf_counter()
            if d > 0:
                time.sleep(d)
            c.request("POST", "/v2/models/%s/infer" % MODEL, data,
                      {"Inference-Header-Content-Length": str(hlen),
                       "Content-Type": "application/octet-stream"})
            r = c.getresponse()
            b = r.read()
            end = time.perf_counter()
            if r.status != 200:
                raise SystemExit("HTTP %d: %s" % (r.status, b[:200]))
            p = json.loads(b)["parameters"]
            with lock:
                # From the scheduled time (open loop): a request sent late because the one
                # before it was slow counts that wait.
                e2e.append((end - due) * 1e3)
                inf.append(p["inference_us"] / 1e3)
        c.close()

    ts = [threading.Thread(target=client, args=(k,)) for k in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return p95(e2e), p95(inf)


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    m = {}
    for line in c.getresponse().read().decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
    return m


def main():
    if not os.access(BIN, os.X_OK):
        sys.exit("no %s: run cargo build --release first (or set BELTBOX)" % BIN)
    w = tempfile.mkdtemp()
    rx = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests/offline/receiver.py"),
                           os.path.join(w, "rx.port"), os.path.join(w, "rx")])
    for flag in ("rx.slow", "rx.fail"):
        open(os.path.join(w, flag), "w").close()
    while not os.path.exists(os.path.join(w, "rx.port")):
        time.sleep(0.05)
    rx_url = "http://127.0.0.1:%s/ingest" % open(os.path.join(w, "rx.port")).read()
    dead_mqtt = "mqtt://127.0.0.1:%d" % free_port()
    extra = {
        "off": "[spool]\nenabled = false\n",
        "on": "",
        "on-2ms": "[spool]\ncommit_interval_ms = 2\n",
        "hammered": '[upload]\nmqtt = "%s"\nhttp = "%s"\nbackoff_min_ms = 10\nbackoff_max_ms = 50\ntimeout_ms = 1000\n'
                    % (dead_mqtt, rx_url),
    }
    res = {k: {"e2e": [], "inf": [], "sync": []} for k in extra}
    try:
        for r in range(1, ROUNDS + 1):
            for name, text in extra.items():
                cfg = os.path.join(w, name + ".toml")
                with open(cfg, "w") as f:
                    f.write('state_dir = "%s"\n[models]\nload = ["%s"]\n[ota]\nrecent_frames = 0\npoll_interval_s = 0\n%s'
                            % (os.path.join(w, "state-%s-%d" % (name, r)), MODEL, text))
                port = free_port()
                env = dict(os.environ, RUST_LOG="error")
                env.pop("NOTIFY_SOCKET", None)
                svc = subprocess.Popen([BIN, "run", "--config", cfg, "--listen", "127.0.0.1:%d" % port],
                                       env=env, stderr=subprocess.DEVNULL)
                try:
                    for _ in range(200):
                        try:
                            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                            c.request("GET", "/v2/health/ready")
                            if c.getresponse().status == 200:
                                break
                        except OSError:
                            pass
                        time.sleep(0.05)
                    run_load(port, 200, RATE)  # warm-up
                    e2e, inf = run_load(port, REQUESTS, RATE)
                    m = metrics(port)
                finally:
                    svc.terminate()
                    svc.wait()
                res[name]["e2e"].append(e2e)
                res[name]["inf"].append(inf)
                line = "round %d %-9s e2e p95 %6.3f ms, inference p95 %6.3f ms" % (r, name, e2e, inf)
                if name != "off":
                    recs = m["beltbox_spool_written_seq"]
                    syncs = max(m["beltbox_spool_syncs_total"], 1)
                    secs = m["beltbox_spool_sync_seconds_total"]
                    fails = sum(v for k, v in m.items() if k.startswith("beltbox_upload_failures_total"))
                    res[name]["sync"].append((recs, syncs, secs))
                    line += "; %d records, %d syncs (%.1f records/sync), fdatasync %.3f ms mean, %.1f us per record" % (
                        recs, syncs, recs / syncs, 1e3 * secs / syncs, 1e6 * secs / max(recs, 1))
                    if fails:
                        line += "; upload failures %d" % fails
                print(line, flush=True)
    finally:
        rx.kill()
    off_e2e = statistics.median(res["off"]["e2e"])
    off_inf = statistics.median(res["off"]["inf"])
    print("\n%s: median over %d rounds, %d requests at %.0f/s each:" % (MODEL, ROUNDS, REQUESTS, RATE))
    for name in extra:
        e, i = statistics.median(res[name]["e2e"]), statistics.median(res[name]["inf"])
        print("  %-9s e2e p95 %6.3f ms (%+6.1f %% vs off), inference p95 %6.3f ms (%+6.1f %% vs off)"
              % (name, e, 100 * (e / off_e2e - 1), i, 100 * (i / off_inf - 1)))


if __name__ == "__main__":
    main()
