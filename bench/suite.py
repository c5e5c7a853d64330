#!/usr/bin/env python3
"""plughost's benchmark suite: release builds, loopback only, bounded in time, one command.

    bench/suite.py [--rounds 3] [--seconds 5] [--swaps 100] [--reloads 1000] [--quick]

Throughput targets (each its own server, pinned to CPU 0; wrk pinned to CPU 1 when there are two
CPUs) are alternated over the rounds, and each figure is the median over rounds:
  baseline        bench/baseline: a bare warp 0.4 handler doing the echo's work, nothing else
  echo            plughost, module1 only: GET /rest/services/v1/hello-world/a/b/?x=1
  token           the same echo (secure/echo, for authenticated callers) with a bearer token
  decoded         module2's echo, which decodes its kwargs and encodes them again (req.kwargs()),
                  where module1's passes them through (req.kwargs_raw())
  modules-1000    the echo with 999 more modules loaded (byte-patched copies of plugins/fixtures/many)
  baseline-64k    POST of a 64 KiB JSON object to the baseline
  body-64k        the same POST to plughost's echo
  sandbox         the same echo in the sandbox tier (ADMIN_ISOLATION=process): server CPU counts
                  the worker processes too
  echo-c1, sandbox-c1  the two echoes with one connection (latency-bound: every response pays
                  the load generator's wake-up, which is costly across CPUs on a VM)
plus: reload latency over N swaps (file renamed into place -> first response from the new
version), RSS after M reloads without and with recycling, start-up time with 100 plugins, and
the sandbox worker's cold start.

Writes bench/results/latest.{json,md,svg}; the README shows the table and the chart.
"""
import argparse, datetime, json, os, re, shutil, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
RESULTS = os.path.join(ROOT, "bench", "results")
ECHO_PATH = "/rest/services/v1/hello-world/a/b/?x=1"
TOKEN_PATH = "/rest/services/secure/echo/a/b/?x=1"
DECODED_PATH = "/rest/services/module2/hello-world2/a/b/?x=1"
TWO_CPUS = os.cpu_count() and os.cpu_count() >= 2
SERVER_CPU = ["taskset", "-c", "0"] if TWO_CPUS else []
LOAD_CPU = ["taskset", "-c", "1"] if TWO_CPUS else []


def sh(*args, **kw):
    return subprocess.run(list(args), check=True, **kw)


def build():
    packages = ["plughost", "bench-baseline", "module1", "module2", "secure", "many", "rogue"]
    sh("cargo", "build", "--release", "-q", *[a for p in packages for a in ("-p", p)], cwd=ROOT)


def many(base, i):
    """libmany.so as module many_NNN (its 8-byte name patched in place)."""
    assert base.count(b"many_000") == 1, "marker not found in libmany.so"
    return base.replace(b"many_000", f"many_{i:03d}".encode(), 1)


class Server:
    """A server process (plughost --no-supervisor or the baseline) on a free loopback port."""

    def __init__(self, work, kind="plughost", env=None, plugins_dir=None):
        self.work = work
        if kind == "baseline":
            command = [f"{RELEASE}/bench-baseline", "127.0.0.1:0"]
            full_env = dict(os.environ)
        else:
            command = [f"{RELEASE}/plughost", "serve", "--no-supervisor", "--env-file", f"{work}/.env"]
            full_env = dict(os.environ, PLUGINS_DIR=plugins_dir or f"{work}/plugins", DATA_DIR=f"{work}/data",
                            BIND="127.0.0.1:0", RUST_LOG="info")
            full_env.update(env or {})
        self.started = time.monotonic()
        self.stderr = open(f"{work}/server.log", "ab")
        self.proc = subprocess.Popen(SERVER_CPU + command, env=full_env, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, cwd=work)
        line = self.proc.stdout.readline()
        self.ready_after = time.monotonic() - self.started
        match = re.search(r"http://([0-9.]+:\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"{kind} did not start: {line!r}; see {work}/server.log")
        self.addr = match.group(1)

    def cpu_seconds(self):
        """CPU of the server, of its children that ended, and of those still running (sandbox workers)."""
        def stat(pid):
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()

        fields = stat(self.proc.pid)
        ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
        for task in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                children = open(f"/proc/{self.proc.pid}/task/{task}/children").read().split()
            except OSError:
                continue
            for child in children:
                try:
                    child_fields = stat(child)
                except OSError:
                    continue
                ticks += int(child_fields[11]) + int(child_fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def status_kib(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def http(addr, path, method="GET", body=None, headers=None, timeout=10):
    request = urllib.request.Request(f"http://{addr}{path}", data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def totp(secret, at):
    import base64, hashlib, hmac, struct
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    digest = hmac.new(key, struct.pack(">Q", int(at) // 30), hashlib.sha1).digest()
    offset = digest[-1] & 15
    return "%06d" % ((struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF) % 1_000_000)


def admin_token(work, addr):
    env = dict(l.strip().split("=", 1) for l in open(f"{work}/.env") if "=" in l)
    for offset in (0, 30, 60):
        body = json.dumps({"uuid": env["ADMIN_UUID"], "totp": totp(env["ADMIN_TOTP_SECRET"], time.time() + offset)})
        status, answer = http(addr, "/rest/auth/token", "POST", body.encode(), {"Content-Type": "application/json"})
        if status == 200:
            return json.loads(answer)["token"]
    raise RuntimeError(f"no admin token: {answer!r}")


def wrk(server, path, seconds, headers=(), script=None, connections=32):
    """Load for `seconds`; returns req/s, p50/p99 (ms), server CPU µs per request, peak RSS MiB."""
    extra = [a for h in headers for a in ("-H", h)] + (["-s", script] if script else [])
    url = f"http://{server.addr}{path}"
    sh(*LOAD_CPU, "wrk", "-t1", "-c16", "-d1s", *extra, url, stdout=subprocess.DEVNULL)  # warm-up
    before = server.cpu_seconds()
    out = subprocess.run(LOAD_CPU + ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
                         check=True, capture_output=True, text=True).stdout
    cpu = server.cpu_seconds() - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"{bad.group(1)} failed responses from {url}:\n{out}")

    def latency(pct):
        value, unit = re.search(rf"^\s+{pct}%\s+([0-9.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {
        "rps": requests / seconds,
        "p50_ms": latency(50),
        "p99_ms": latency(99),
        "cpu_us": cpu * 1e6 / requests,
        "rss_mib": server.status_kib("VmHWM") / 1024,
    }


def plughost_work(plugins, extra_many=0):
    work = tempfile.mkdtemp(prefix="plughost-bench-")
    os.makedirs(f"{work}/plugins")
    for name in plugins:
        shutil.copy(f"{RELEASE}/lib{name}.so", f"{work}/plugins/")
    if extra_many:
        base = open(f"{RELEASE}/libmany.so", "rb").read()
        for i in range(1, extra_many + 1):
            with open(f"{work}/plugins/libmany_{i:03d}.so", "wb") as f:
                f.write(many(base, i))
    with open(f"{work}/.env", "w") as f:
        sh(f"{RELEASE}/plughost", "keygen", "--env", stdout=f)
    return work


def throughput(args):
    body = json.dumps({"pad": "y" * (64 * 1024 - 11)})
    assert len(body) == 64 * 1024, len(body)
    script = os.path.join(tempfile.mkdtemp(prefix="plughost-bench-"), "post.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = {json.dumps(body)}\n")
    works = {
        "echo": plughost_work(["module1"]),
        "decoded": plughost_work(["module2"]),
        "token": plughost_work(["module1", "secure"]),
        "modules-1000": plughost_work(["module1"], extra_many=999),
        "sandbox": plughost_work(["module1"]),
        "baseline": tempfile.mkdtemp(prefix="plughost-bench-"),
    }
    targets = [
        ("baseline", "baseline", None, ECHO_PATH, None),
        ("echo", "plughost", "echo", ECHO_PATH, None),
        ("token", "plughost", "token", TOKEN_PATH, "token"),
        # The same echo written the obvious way: kwargs decoded into a map and encoded again.
        ("decoded", "plughost", "decoded", DECODED_PATH, None),
        ("modules-1000", "plughost", "modules-1000", ECHO_PATH, None),
        ("baseline-64k", "baseline", None, "/rest/services/v1/hello-world/", script),
        ("body-64k", "plughost", "echo", "/rest/services/v1/hello-world/", script),
        ("sandbox", "plughost", "sandbox", ECHO_PATH, None),
        # One connection: every response pays the load generator's wake-up, for both.
        ("echo-c1", "plughost", "echo", ECHO_PATH, None),
        ("sandbox-c1", "plughost", "sandbox", ECHO_PATH, None),
    ]
    if args.targets:
        targets = [t for t in targets if t[0] in args.targets.split(",")]
    samples = {name: [] for name, *_ in targets}
    for round_ in range(args.rounds):
        for name, kind, work_key, path, extra in targets:
            work = works[work_key or "baseline"]
            # 32 connections: as many workers, all on the server's CPU (they inherit its affinity).
            env = SANDBOX_ENV if name.startswith("sandbox") else None
            server = Server(work, kind, env=env)
            try:
                headers = []
                lua = None
                if extra == "token":
                    headers = [f"Authorization: Bearer {admin_token(work, server.addr)}"]
                elif extra:
                    lua = extra
                status, _ = http(server.addr, path, "POST" if lua else "GET",
                                 body.encode() if lua else None, dict(h.split(": ", 1) for h in headers) | ({"Content-Type": "application/json"} if lua else {}))
                if status != 200:
                    raise RuntimeError(f"{name}: {path} answered {status}")
                result = wrk(server, path, args.seconds, headers, lua, 1 if name.endswith("-c1") else 32)
            finally:
                server.stop()
            samples[name].append(result)
            print(f"  round {round_ + 1} {name:<13} {result['rps']:>9.0f} req/s  {result['cpu_us']:6.1f} µs CPU/req", flush=True)
    medians = {name: {k: statistics.median(s[k] for s in runs) for k in runs[0]} for name, runs in samples.items()}
    for work in works.values():
        shutil.rmtree(work, ignore_errors=True)
    return medians, samples


SANDBOX_ENV = {"ADMIN_ISOLATION": "process", "SANDBOX_MAX_CONCURRENCY": "32", "RUST_LOG": "warn"}


def cold_start(args):
    """A worker's cold start, `count` times: the rogue fixture's `exit` kills its worker, and the
    next call waits for a fresh one (process start, confinement, library load, manifest)."""
    work = plughost_work(["rogue"])
    server = Server(work, env=dict(SANDBOX_ENV, SANDBOX_QUARANTINE_CRASHES="1000000", SANDBOX_WARM_WORKERS="0"))
    calls = []
    try:
        for _ in range(args.cold_starts):
            status, answer = http(server.addr, "/rest/services/rogue/exit/", headers=server_auth(work, server))
            assert status == 502, (status, answer)
            started = time.monotonic()
            status, _ = http(server.addr, "/rest/services/rogue/hello/", headers=server_auth(work, server))
            assert status == 200, status
            calls.append((time.monotonic() - started) * 1000)
        metrics = http(server.addr, "/metrics", headers=server_auth(work, server))[1].decode()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    total = float(re.search(r"^plughost_sandbox_worker_start_seconds_sum (\S+)", metrics, re.M).group(1))
    count = float(re.search(r"^plughost_sandbox_worker_start_seconds_count (\S+)", metrics, re.M).group(1))
    calls.sort()
    out = {"starts": int(count), "mean_start_ms": total / count * 1000, "first_call_median_ms": statistics.median(calls),
           "first_call_p95_ms": calls[int(len(calls) * 0.95) - 1]}
    print(f"  cold start: mean {out['mean_start_ms']:.1f} ms over {out['starts']} starts; first call median "
          f"{out['first_call_median_ms']:.1f} ms", flush=True)
    return out


_tokens = {}


def server_auth(work, server):
    if server.addr not in _tokens:
        _tokens[server.addr] = admin_token(work, server.addr)
    return {"Authorization": f"Bearer {_tokens[server.addr]}"}


def swap_file(dst_dir, name, data):
    tmp = os.path.join(dst_dir, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(dst_dir, name))


def reloads(args):
    """Reload latency over `swaps` swaps, then RSS after `reloads` reloads, without and with recycling."""
    base = open(f"{RELEASE}/libmany.so", "rb").read()
    assert base.count(b"mark-A") == 1, "marker not found in libmany.so"

    def version(i):
        # Every version distinct: each is a new image that stays mapped until a recycle.
        return base.replace(b"mark-A", f"v{i:05d}".encode(), 1)

    out = {}
    for recycle in ((True,) if os.environ.get("ONLY_RECYCLE") else (False, True)):
        work = plughost_work([])
        swap_file(f"{work}/plugins", "libmany.so", version(0))
        env = {"RUST_LOG": "warn", "RELOAD_LEAK_BUDGET_MB": "64" if recycle else "0"}
        if recycle:
            # Under the supervisor: the worker is recycled when leaked images pass 64 MiB.
            env_all = dict(os.environ, PLUGINS_DIR=f"{work}/plugins", DATA_DIR=f"{work}/data", BIND="127.0.0.1:0", **env)
            log = open(f"{work}/server.log", "ab")
            proc = subprocess.Popen([f"{RELEASE}/plughost", "serve", "--env-file", f"{work}/.env"], env=env_all,
                                    stdout=subprocess.PIPE, stderr=log, text=True, cwd=work)
            addr = re.search(r"http://([0-9.]+:\d+)", proc.stdout.readline()).group(1)
            server = None
        else:
            server = Server(work, env=env)
            addr, proc = server.addr, server.proc
        latencies = []
        count = args.reloads
        try:
            for i in range(1, count + 1):
                mark = f"v{i:05d}"
                started = time.monotonic()
                swap_file(f"{work}/plugins", "libmany.so", version(i))
                deadline = started + 10
                while True:
                    status, answer = http(addr, "/rest/services/many_000/which/")
                    if status == 200 and json.loads(answer)["mark"] == mark:
                        break
                    if time.monotonic() > deadline:
                        shutil.copy(f"{work}/server.log", "/tmp/plughost-bench-failed.log")
                        raise RuntimeError(f"swap {i} not served within 10 s (last answer {status}: {answer[:200]!r}); "
                                           "server log in /tmp/plughost-bench-failed.log")
                    time.sleep(0.001)
                if i <= args.swaps and not recycle:
                    latencies.append((time.monotonic() - started) * 1000)
            time.sleep(1.5)
            # The detail of /health (PIDs, images) is the admin's.
            health = json.loads(http(addr, "/health", headers={"Authorization": f"Bearer {admin_token(work, addr)}"})[1])
            worker = health["process"]["pid"]
            with open(f"/proc/{worker}/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
            leaked = health["plugins"]["images"]["leaked"]
        finally:
            if server:
                server.stop()
            else:
                proc.terminate()
                proc.wait(timeout=30)
            shutil.rmtree(work, ignore_errors=True)
        key = "with_recycling" if recycle else "without_recycling"
        out[key] = {"reloads": count, "rss_mib": rss, "leaked_images_now": leaked}
        if latencies:
            latencies.sort()
            out["reload_latency_ms"] = {
                "swaps": len(latencies),
                "median": statistics.median(latencies),
                "p95": latencies[int(len(latencies) * 0.95) - 1],
                "max": latencies[-1],
            }
        print(f"  {count} reloads {key.replace('_', ' ')}: RSS {rss:.1f} MiB, {leaked} leaked images now", flush=True)
    return out


def startup(args):
    work = plughost_work(["module1"], extra_many=99)
    times = []
    try:
        for _ in range(5):
            shutil.rmtree(f"{work}/data", ignore_errors=True)
            server = Server(work, env={"RUST_LOG": "warn"})
            times.append(server.ready_after * 1000)
            status, listing = http(server.addr, "/rest/services/__dir__/")
            server.stop()
            assert status == 200 and len(json.loads(listing)["modules"]) == 100, "not all 100 plugins loaded"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"plugins": 100, "median_ms": statistics.median(times), "runs_ms": times}


def machine():
    model = "unknown CPU"
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "model": model, "kernel": os.uname().release, "commit": commit or "unknown"}


TARGET_LABELS = {
    "baseline": "bare warp handler (baseline)",
    "echo": "plughost, public echo",
    "token": "plughost, echo with a bearer token",
    "decoded": "plughost, echo that decodes its kwargs (module2)",
    "modules-1000": "plughost, echo, 1,000 modules loaded",
    "baseline-64k": "bare warp, 64 KiB JSON POST",
    "body-64k": "plughost, 64 KiB JSON POST",
    "sandbox": "plughost, echo in the sandbox tier",
    "echo-c1": "plughost, public echo, 1 connection",
    "sandbox-c1": "plughost, sandbox echo, 1 connection",
}


def report(meta, medians, samples, reload, start, cold):
    reference = {"baseline": "baseline", "echo": "baseline", "token": "baseline", "decoded": "baseline",
                 "modules-1000": "echo", "baseline-64k": "baseline-64k", "body-64k": "baseline-64k",
                 "sandbox": "echo", "echo-c1": "baseline", "sandbox-c1": "echo-c1"}
    ratio_name = {"baseline": "baseline", "echo": "baseline", "token": "baseline", "decoded": "baseline", "modules-1000": "echo (1 module)",
                  "baseline-64k": "baseline 64k", "body-64k": "baseline 64k", "sandbox": "echo in-process",
                  "echo-c1": "baseline (32 connections)", "sandbox-c1": "echo in-process, 1 connection"}
    lines = [
        f"Measured {meta['date']} on {meta['cpus']} CPUs ({meta['model']}, Linux {meta['kernel']}), commit {meta['commit']}; "
        f"median of {meta['rounds']} rounds of {meta['seconds']} s, server on CPU 0, wrk -t1 -c32 (-c1 where said) on CPU 1, 127.0.0.1.",
        "",
        "The ratio is the median over rounds of this target's CPU per request divided by its reference's in the same "
        "round (the two ran seconds apart), which is steadier than a ratio of medians on a shared machine.",
        "",
        "| target | req/s | p50 | p99 | server CPU per request | ratio | peak RSS |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, m in medians.items():
        ratio = f"{paired_ratio(samples, name, reference[name]):.2f}× {ratio_name[name]}"
        if name == "echo-c1":
            ratio = "(reference for the line below)"
        lines.append(f"| {TARGET_LABELS[name]} | {m['rps']:,.0f} | {m['p50_ms']:.2f} ms | {m['p99_ms']:.2f} ms | "
                     f"{m['cpu_us']:.1f} µs | {ratio} | {m['rss_mib']:.1f} MiB |")
    rl = reload.get("reload_latency_ms", {})
    lines += [
        "",
        "| other figure | value |",
        "|---|---|",
        f"| reload latency (file renamed into place → first response from the new version), {rl.get('swaps', 0)} swaps | "
        f"median {rl.get('median', 0):.1f} ms, p95 {rl.get('p95', 0):.1f} ms, max {rl.get('max', 0):.1f} ms |",
        f"| RSS after {reload['without_recycling']['reloads']} reloads, no recycling | {reload['without_recycling']['rss_mib']:.1f} MiB |",
        f"| RSS after {reload['with_recycling']['reloads']} reloads, recycling at 64 MiB leaked | {reload['with_recycling']['rss_mib']:.1f} MiB |",
        f"| start-up with {start['plugins']} plugins (spawn → listening) | median {start['median_ms']:.0f} ms of 5 |",
        f"| sandbox worker cold start (process start, confinement, library load), {cold['starts']} starts | "
        f"mean {cold['mean_start_ms']:.1f} ms; first call after a crash: median {cold['first_call_median_ms']:.1f} ms, "
        f"p95 {cold['first_call_p95_ms']:.1f} ms |",
    ]
    return "\n".join(lines) + "\n"


def paired_ratio(samples, name, reference):
    """The median over rounds of target / reference CPU per request, each pair from one round."""
    pairs = [t["cpu_us"] / r["cpu_us"] for t, r in zip(samples.get(name, []), samples.get(reference, []))]
    return statistics.median(pairs) if pairs else float("nan")


def chart(medians):
    """A horizontal bar chart of server CPU per request, as SVG."""
    rows = list(medians.items())
    width, bar_left, row_h = 760, 300, 34
    top = 40
    height = top + row_h * len(rows) + 30
    most = max(m["cpu_us"] for _, m in rows)
    scale = (width - bar_left - 90) / most
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="24" font-size="15" font-weight="bold">Server CPU per request (µs, lower is better)</text>',
    ]
    for i, (name, m) in enumerate(rows):
        y = top + i * row_h
        colour = "#8c8c8c" if name.startswith("baseline") else "#2f6db5"
        w = m["cpu_us"] * scale
        parts.append(f'<text x="{bar_left - 8}" y="{y + 19}" text-anchor="end">{TARGET_LABELS[name]}</text>')
        parts.append(f'<rect x="{bar_left}" y="{y + 4}" width="{w:.1f}" height="{row_h - 10}" fill="{colour}"/>')
        parts.append(f'<text x="{bar_left + w + 6:.1f}" y="{y + 19}">{m["cpu_us"]:.1f}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--reloads", type=int, default=1000)
    parser.add_argument("--cold-starts", type=int, default=50)
    parser.add_argument("--targets", help="with --only throughput: a comma-separated subset, e.g. echo,sandbox")
    parser.add_argument("--only", choices=["throughput", "cold-start"], help="run one part and print it (no files written)")
    parser.add_argument("--report-only", action="store_true", help="render bench/results/latest.json again (table, chart, README)")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s, 20 swaps, 100 reloads: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.swaps, args.reloads, args.cold_starts = 1, 2, 20, 100, 10
    if args.report_only:
        saved = json.load(open(f"{RESULTS}/latest.json"))
        write_results(saved["meta"], saved["throughput"], saved["samples"], saved["reloads"], saved["startup"], saved["cold_start"])
        return
    if shutil.which("wrk") is None:
        sys.exit("bench/suite.py needs wrk: apt-get install wrk")
    build()
    meta = {"date": datetime.date.today().isoformat(), "rounds": args.rounds, "seconds": args.seconds, **machine()}
    if args.only == "cold-start":
        print(json.dumps(cold_start(args), indent=1))
        return
    if args.only == "throughput":
        medians, _ = throughput(args)
        print(json.dumps(medians, indent=1))
        return
    print("throughput:", flush=True)
    medians, samples = throughput(args)
    print("reloads:", flush=True)
    reload = reloads(args)
    print("start-up:", flush=True)
    start = startup(args)
    print("sandbox cold start:", flush=True)
    cold = cold_start(args)
    write_results(meta, medians, samples, reload, start, cold)


def write_results(meta, medians, samples, reload, start, cold):
    table = report(meta, medians, samples, reload, start, cold)
    os.makedirs(RESULTS, exist_ok=True)
    with open(f"{RESULTS}/latest.json", "w") as f:
        json.dump({"meta": meta, "throughput": medians, "samples": samples, "reloads": reload, "startup": start,
                   "cold_start": cold}, f, indent=1)
    with open(f"{RESULTS}/latest.md", "w") as f:
        f.write(table)
    with open(f"{RESULTS}/latest.svg", "w") as f:
        f.write(chart(medians))
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    begin_mark, end_mark = "<!-- bench:start -->\n", "<!-- bench:end -->"
    if begin_mark in text and end_mark in text:
        before, rest = text.split(begin_mark, 1)
        after = rest.split(end_mark, 1)[1]
        block = table + "\n![Server CPU per request](bench/results/latest.svg)\n"
        with open(readme, "w") as f:
            f.write(before + begin_mark + block + end_mark + after)
    print()
    print(table)
    print(f"written: {RESULTS}/latest.json, latest.md, latest.svg, and the table in README.md")


if __name__ == "__main__":
    main()
