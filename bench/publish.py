#!/usr/bin/env python3
"""Publish → served on two replicas sharing MongoDB (nx-27017, from PyPI), with release builds.

    bench/publish.py [publications]

Starts nx-27017 and two plughost servers (separate plugins folders, one store), publishes
byte-patched versions of the release libmany.so through PUT /rest/admin/plugins/many on the first,
and times each from the upload to the first answer of the new version from both replicas. Run
bench/suite.py (or cargo build --release -p plughost -p many) first.
"""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite, subprocess, time, json, os, socket, tempfile, shutil, sys, statistics
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
port = free_port(); mdir = tempfile.mkdtemp()
mongo = subprocess.Popen([sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; sys.exit(main())", "--host", "127.0.0.1", "-p", str(port), "--db", mdir + "/nx.db", "--pid-file", mdir + "/nx.pid", "--log-file", mdir + "/nx.log"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(2)
env = {"MONGODB_URI": f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=1500", "MONGODB_DATABASE": "pubbench", "PUBLISH_SYNC_MS": "2000", "RUST_LOG": "warn"}
work_a = suite.plughost_work([]); work_b = suite.plughost_work([])
shutil.copy(f"{work_a}/.env", f"{work_b}/.env")
a = suite.Server(work_a, env=env); b = suite.Server(work_b, env=env)
token = suite.admin_token(work_a, a.addr)
base = open(f"{suite.RELEASE}/libmany.so", "rb").read()
times = []; puts = []; on_a = []
try:
    for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 8):
        mark = f"v{i:05d}"
        data = base.replace(b"mark-A", mark.encode(), 1)
        t0 = time.monotonic()
        st, body = suite.http(a.addr, "/rest/admin/plugins/many", "PUT", data, {"Authorization": f"Bearer {token}"})
        assert st == 201, (st, body)
        puts.append((time.monotonic() - t0) * 1000)
        pending = {a.addr, b.addr}
        while pending and time.monotonic() - t0 < 30:
            for addr in list(pending):
                st, body = suite.http(addr, "/rest/services/many_000/which/")
                if st == 200 and json.loads(body)["mark"] == mark:
                    pending.discard(addr)
                    if addr == a.addr:
                        on_a.append((time.monotonic() - t0) * 1000)
            time.sleep(0.005)
        assert not pending, "not served"
        times.append((time.monotonic() - t0) * 1000)
    print(f"release libmany.so {len(base)} bytes, PUBLISH_SYNC_MS=2000, {len(times)} publications")
    print(f"PUT (checks + store): median {statistics.median(puts):.0f} ms")
    print(f"publish -> served by the replica that took it: median {statistics.median(on_a):.0f} ms, max {max(on_a):.0f} ms")
    print(f"publish -> served by both replicas: median {statistics.median(times):.0f} ms, max {max(times):.0f} ms, all {[round(t) for t in times]}")
finally:
    a.stop(); b.stop(); mongo.terminate(); mongo.wait()
    for folder in (work_a, work_b, mdir):
        shutil.rmtree(folder, ignore_errors=True)
