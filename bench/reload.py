#!/usr/bin/env python3
"""Reload latency and memory of plughost's hot plugging, on release builds, against 127.0.0.1.

For N swaps of one plugin file (a finished file renamed into place, as deploy tools do), measures
the time from the rename to the first response served by the new version (the client polls every
millisecond), and the server's own `served_after_ms` log figure. Then reports the worker's RSS
growth per reload and its RSS after `plughost recycle`.

    bench/reload.py [SWAPS]        (default 100)
"""
import json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWAPS = int(sys.argv[1]) if len(sys.argv) > 1 else 100


def patched(base, name, mark):
    """libmany.so with its module name (8 characters) and its marker (6 characters) replaced."""
    assert base.count(b"many_000") == 1 and base.count(b"mark-A") == 1, "markers not found in libmany.so"
    assert len(name) == 8 and len(mark) == 6
    return base.replace(b"many_000", name.encode(), 1).replace(b"mark-A", mark.encode(), 1)


def get(addr, path, token=None):
    request = urllib.request.Request(f"http://{addr}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None


def admin_token(addr, env):
    """A bearer token for the admin: the detail of /health (PIDs, images) is the admin's."""
    for offset in (0, 30, 60):
        code = totp(env["ADMIN_TOTP_SECRET"], time.time() + offset)
        request = urllib.request.Request(f"http://{addr}/rest/auth/token", method="POST",
                                         data=json.dumps({"uuid": env["ADMIN_UUID"], "totp": code}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return json.loads(r.read())["token"]
        except urllib.error.HTTPError:
            continue
    raise RuntimeError("no admin token")


def totp(secret, at):
    import base64, hashlib, hmac, struct
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    offset = digest[-1] & 15
    return f"{(struct.unpack('>I', digest[offset:offset + 4])[0] & 0x7fffffff) % 1000000:06d}"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "plughost", "-p", "many"], cwd=ROOT, check=True)
    base = open(os.path.join(ROOT, "target/release/libmany.so"), "rb").read()
    work = tempfile.mkdtemp()
    plugins = os.path.join(work, "plugins")
    os.mkdir(plugins)
    identity = subprocess.run([os.path.join(ROOT, "target/release/plughost"), "keygen", "--env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ, **dict(line.split("=", 1) for line in identity.split()), PLUGINS_DIR=plugins, DATA_DIR=os.path.join(work, "data"), BIND="127.0.0.1:0",
               RELOAD_LEAK_BUDGET_MB="0", RUST_LOG="info", LOG_FORMAT="json")
    log = open(os.path.join(work, "log"), "w+")
    server = subprocess.Popen([os.path.join(ROOT, "target/release/plughost")], env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        addr = server.stdout.readline().strip().rsplit("http://", 1)[1]
        token = admin_token(addr, env)
        target = os.path.join(plugins, "libswap.so")

        def swap(data):
            temp = os.path.join(plugins, ".libswap.so.tmp")
            with open(temp, "wb") as f:
                f.write(data)
            os.rename(temp, target)

        swap(patched(base, "swap_000", "mark-A"))
        while get(addr, "/rest/services/swap_000/which/")[0] != 200:
            time.sleep(0.01)
        worker = get(addr, "/health", token)[1]["process"]["pid"]
        rss_start = rss_kib(worker)
        latencies = []
        for i in range(SWAPS):
            mark = f"v{i:05d}"  # every version distinct: each is a new image that stays mapped
            started = time.monotonic()
            swap(patched(base, "swap_000", mark))
            while True:
                status, body = get(addr, "/rest/services/swap_000/which/")
                if status == 200 and body["mark"] == mark:
                    break
                time.sleep(0.001)
            latencies.append((time.monotonic() - started) * 1000)
        rss_after = rss_kib(worker)
        health = get(addr, "/health", token)[1]
        subprocess.run([os.path.join(ROOT, "target/release/plughost"), "recycle"], env=env, check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while get(addr, "/health", token)[1]["process"]["pid"] == worker and time.monotonic() < deadline:
            time.sleep(0.05)
        fresh = get(addr, "/health", token)[1]["process"]["pid"]
        time.sleep(0.5)
        rss_fresh = rss_kib(fresh)
        log.seek(0)
        served = [json.loads(l)["served_after_ms"] for l in log if "served_after_ms" in l]
        q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
        print(f"swaps                      {SWAPS} (rename of a finished {len(base) // 1024} KiB file)")
        print(f"rename → served (client)   median {statistics.median(latencies):.1f} ms, p95 {q(latencies, 0.95):.1f} ms, max {max(latencies):.1f} ms")
        print(f"event → swapped (server)   median {statistics.median(served):.2f} ms, p95 {q(served, 0.95):.2f} ms")
        print(f"worker RSS                 {rss_start} KiB at start, {rss_after} KiB after {SWAPS} reloads: +{(rss_after - rss_start) / SWAPS:.0f} KiB per reload")
        print(f"leaked images              {health['plugins']['images']['leaked']} ({health['plugins']['images']['leaked_bytes'] // 1024} KiB of files)")
        print(f"after plughost recycle     fresh worker {fresh}: {rss_fresh} KiB")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
