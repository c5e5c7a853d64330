#!/usr/bin/env python3
"""Asynchronous jobs through one replica, on the embedded store and on MongoDB (nx-27017), with
release builds.

    bench/jobs.py [JOBS]        (default 2000)

For each store: queues JOBS calls of the `flaky` fixture's `tally` (it appends the job id to a file
and returns) from 8 client threads with `Prefer: respond-async`, and times them until the last one
ran: jobs per second, queueing and running. Then, on the idle server, queues 200 jobs one at a time
and reads each record: time from queueing (`created_at`) to the start of the call (`started_at`),
p50 and p99. Last, with the queue empty, counts the store operations the server makes in 10 s
(`plughost_store_operation_duration_seconds_count`, less the scrapes' own): the idle store load.
Builds what it needs (cargo build --release -p plughost -p flaky).
"""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import http.client, json, re, shutil, socket, statistics, subprocess, tempfile, threading, time
from datetime import datetime

import suite

JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
THREADS = 8


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port


def queue_many(addr, count, log, first):
    """Queues `count` tally jobs over one keep-alive connection."""
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"log": log})
    for _ in range(count):
        conn.request("POST", "/rest/services/flaky/tally/", body=body,
                     headers={"Prefer": "respond-async", "Content-Type": "application/json"})
        response = conn.getresponse()
        answer = response.read()
        assert response.status == 202, (response.status, answer)
        first.append(json.loads(answer)["id"])
    conn.close()


def lines(path):
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def millis(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def store_operations(addr, token):
    """Store operations counted so far, by operation."""
    status, body = suite.http(addr, "/metrics", headers={"Authorization": f"Bearer {token}"})
    assert status == 200, body
    counts = {}
    for line in body.decode().splitlines():
        m = re.match(r'plughost_store_operation_duration_seconds_count\{(.*)\} (\d+)', line)
        if m:
            op = re.search(r'operation="([^"]+)"', m.group(1)).group(1)
            counts[op] = counts.get(op, 0) + int(m.group(2))
    return counts


def run(name, env):
    work = suite.plughost_work(["flaky"])
    log = f"{work}/tally.log"
    server = suite.Server(work, env=dict(env, RUST_LOG="warn", JOBS_POLL_MS="500"))
    try:
        token = suite.admin_token(work, server.addr)
        # Throughput: JOBS queued from 8 threads, timed to the last execution.
        ids = []
        per = JOBS // THREADS
        started = time.monotonic()
        threads = [threading.Thread(target=queue_many, args=(server.addr, per, log, ids)) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        queued_after = time.monotonic() - started
        total = per * THREADS
        while lines(log) < total and time.monotonic() - started < 600:
            time.sleep(0.01)
        ran_after = time.monotonic() - started
        assert lines(log) == total, f"{lines(log)} of {total} ran"
        # Latency on an idle server: one job at a time.
        os.remove(log)
        single = []
        for _ in range(200):
            queue_many(server.addr, 1, log, single)
            time.sleep(0.02)
        while lines(log) < 200:
            time.sleep(0.01)
        waits = []
        for job_id in single:
            status, body = suite.http(server.addr, f"/rest/jobs/{job_id}")
            job = json.loads(body)
            waits.append(millis(job["started_at"]) - millis(job["created_at"]))
        waits.sort()
        # Idle: the queue is empty; operations over 10 s, less the two scrapes' own.
        time.sleep(2)
        before = store_operations(server.addr, token)
        time.sleep(10)
        after = store_operations(server.addr, token)
        delta = {op: after.get(op, 0) - before.get(op, 0) for op in after}
        delta = {op: n for op, n in delta.items() if n}
        scrape = delta.pop("job_counts", 0)
        idle = sum(delta.values()) / 10
        return {
            "store": name, "jobs": total,
            "queued_per_s": total / queued_after, "ran_per_s": total / ran_after,
            "start_p50_ms": statistics.median(waits), "start_p99_ms": waits[int(len(waits) * 0.99) - 1],
            "idle_ops_per_s": idle, "idle_ops": delta, "scrape_ops": scrape,
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "plughost", "-p", "flaky"], cwd=suite.ROOT, check=True)
    results = [run("sqlite", {})]
    port, mdir = free_port(), tempfile.mkdtemp()
    mongo = subprocess.Popen(
        [sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; sys.exit(main())", "--host", "127.0.0.1",
         "-p", str(port), "--db", mdir + "/nx.db", "--pid-file", mdir + "/nx.pid", "--log-file", mdir + "/nx.log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        uri = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=1500"
        results.append(run("mongodb (nx-27017)", {"MONGODB_URI": uri, "MONGODB_DATABASE": "jobbench"}))
    finally:
        mongo.terminate(); mongo.wait()
        shutil.rmtree(mdir, ignore_errors=True)
    print(f"{'store':<20} {'jobs':>6} {'queued/s':>9} {'ran/s':>7} {'start p50':>10} {'start p99':>10} {'idle ops/s':>11}")
    for r in results:
        print(f"{r['store']:<20} {r['jobs']:>6} {r['queued_per_s']:>9.0f} {r['ran_per_s']:>7.0f} "
              f"{r['start_p50_ms']:>8.1f}ms {r['start_p99_ms']:>8.1f}ms {r['idle_ops_per_s']:>11.1f}   {r['idle_ops']}")


if __name__ == "__main__":
    main()
