#!/usr/bin/env python3
"""What identity costs: server CPU per request of a `tenant` function called with a bearer token
versus a `public` one under the same load (wrk, loopback, server on CPU 0, wrk on CPU 1, rounds
alternated), and the latency of POST /rest/auth/token on the embedded store and on MongoDB
(nx-27017, installed from PyPI if missing). Release builds; 127.0.0.1 only; stops by itself.

    bench/auth.py [ROUNDS] [SECONDS]      (defaults: 3 rounds of 5 s per target)
"""
import base64, hashlib, hmac, json, os, shutil, socket, statistics, struct, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/plughost")
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
PIN = os.cpu_count() >= 2


def totp(secret, at):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    offset = digest[-1] & 15
    return "%06d" % ((struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1000000)


def call(addr, method, path, body=None, token=None):
    request = urllib.request.Request(f"http://{addr}{path}", method=method, data=json.dumps(body).encode() if body is not None else None)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(work, extra):
    identity = subprocess.run([BIN, "keygen", "--env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ, **dict(l.split("=", 1) for l in identity.split()), PLUGINS_DIR=os.path.join(work, "plugins"),
               DATA_DIR=os.path.join(work, "data"), BIND="127.0.0.1:0", RUST_LOG="warn", **extra)
    cmd = (["taskset", "-c", "0"] if PIN else []) + [BIN]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=open(os.path.join(work, "log"), "w"), text=True)
    addr = server.stdout.readline().strip().rsplit("http://", 1)[1]
    return server, addr, env


def admin_token(addr, env):
    status, body = call(addr, "POST", "/rest/auth/token", {"uuid": env["ADMIN_UUID"], "totp": totp(env["ADMIN_TOTP_SECRET"], time.time())})
    assert status == 200, body
    return body["token"]


def exchange_latency(addr, admin, count=40):
    tenants = [call(addr, "POST", "/rest/admin/tenants", {"name": f"t{i}"}, admin)[1] for i in range(count)]
    times = []
    token = None
    for t in tenants:
        started = time.perf_counter()
        status, body = call(addr, "POST", "/rest/auth/token", {"uuid": t["uuid"], "totp": totp(t["secret"], time.time())})
        times.append((time.perf_counter() - started) * 1000)
        assert status == 200, body
        token = body["token"]
    return times, token


def cpu_per_request(addr, worker, path, token):
    ticks = os.sysconf("SC_CLK_TCK")
    read = lambda: sum(int(x) for x in open(f"/proc/{worker}/stat").read().rsplit(")", 1)[1].split()[11:13])
    cmd = (["taskset", "-c", "1"] if PIN else []) + ["wrk", "-t1", "-c32", f"-d{SECONDS}s"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    before = read()
    out = subprocess.run(cmd + [f"http://{addr}{path}"], capture_output=True, text=True, check=True).stdout
    after = read()
    requests = int(next(l for l in out.splitlines() if "requests in" in l).split()[0])
    bad = [l.strip() for l in out.splitlines() if "Non-2xx" in l or "Socket errors" in l]
    assert not bad, bad
    return (after - before) / ticks * 1e6 / requests


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "plughost", "-p", "secure"], cwd=ROOT, check=True)
    assert shutil.which("wrk"), "needs wrk: apt-get install wrk"
    results = {}
    mongo = None
    for store in ["sqlite", "mongodb"]:
        work = tempfile.mkdtemp()
        os.mkdir(os.path.join(work, "plugins"))
        shutil.copy(os.path.join(ROOT, "target/release/libsecure.so"), os.path.join(work, "plugins"))
        extra = {}
        if store == "mongodb":
            subprocess.run([sys.executable, "-c", "import nx_27017.nx_27017"], capture_output=True).returncode == 0 or \
                subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "nx-27017"], check=True)
            port = free_port()
            mongo = subprocess.Popen([sys.executable, "-c", "import sys; from nx_27017.nx_27017 import main; sys.exit(main())",
                                      "--host", "127.0.0.1", "-p", str(port), "--db", os.path.join(work, "nx.db"),
                                      "--pid-file", os.path.join(work, "nx.pid"), "--log-file", os.path.join(work, "nx.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            extra = {"MONGODB_URI": f"mongodb://127.0.0.1:{port}", "MONGODB_DATABASE": "bench"}
        server, addr, env = start(work, extra)
        try:
            admin = admin_token(addr, env)
            times, token = exchange_latency(addr, admin)
            results[store] = times
            if store == "sqlite":
                worker = call(addr, "GET", "/health", token=admin)[1]["process"]["pid"]
                cpu_per_request(addr, worker, "/rest/services/secure/status/", None)  # warm-up
                public, tenant = [], []
                for _ in range(ROUNDS):
                    public.append(cpu_per_request(addr, worker, "/rest/services/secure/status/", None))
                    tenant.append(cpu_per_request(addr, worker, "/rest/services/secure/whoami/", token))
                p, t = statistics.median(public), statistics.median(tenant)
                print(f"public `status`, no credentials      {p:.1f} µs CPU/request (median of {ROUNDS} rounds: {', '.join('%.1f' % x for x in public)})")
                print(f"tenant `whoami`, bearer token        {t:.1f} µs CPU/request ({', '.join('%.1f' % x for x in tenant)})")
                print(f"ratio                                {t / p:.3f}×")
        finally:
            server.terminate()
            server.wait(timeout=30)
            if mongo:
                mongo.kill()
                mongo.wait()
            shutil.rmtree(work, ignore_errors=True)
    for store, times in results.items():
        q = sorted(times)
        print(f"POST /rest/auth/token on {store:<8}     median {statistics.median(q):.2f} ms, p95 {q[int(0.95 * (len(q) - 1))]:.2f} ms ({len(q)} exchanges, one tenant each)")


if __name__ == "__main__":
    main()
