#!/usr/bin/env python3
"""Instructions per request, counted by valgrind's callgrind: repeatable whatever else the machine
is doing, unlike CPU time. Runs plughost (release, --no-supervisor) under callgrind for each
configuration, warms it up, zeroes the counters, sends N keep-alive requests from one client, and
divides the instructions executed by N. System-call time in the kernel is not counted.

    bench/instructions.py [N] [PATH]     (defaults: 2000, /rest/services/hello-world/a/b/?x=1)
    CONFIGS="baseline RUST_LOG=warn,METRICS=off RUST_LOG=info" bench/instructions.py
    CONFIGS="RUST_LOG=warn,METRICS=off RUST_LOG=warn,METRICS=off,TOKEN=1" ...   (TOKEN=1: secure/echo, with a bearer token)
    CONFIGS="... RUST_LOG=warn,PATH=/rest/services/hello-world2/a/b/?x=1"   (PATH=: call another path)
    KEEP_DUMPS=/tmp/profiles bench/instructions.py   (keeps each dump, for callgrind_annotate)
    VALGRIND_ARGS="--cache-sim=yes --branch-sim=yes" bench/instructions.py   (simulated cache and branch misses)

`baseline` is bench/baseline, the bare warp handler. Under callgrind everything runs ~50 times
slower, so INLINE_CALL_MAX_US is raised to 20 ms: quick functions are then called inline, as they
are at full speed.
"""
import http.client, os, re, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
PATH = sys.argv[2] if len(sys.argv) > 2 else "/rest/services/hello-world/a/b/?x=1"
CONFIGS = os.environ.get(
    "CONFIGS",
    "RUST_LOG=warn,METRICS=off RUST_LOG=warn,METRICS=admin RUST_LOG=info,METRICS=off RUST_LOG=info,METRICS=admin",
).split()
EXAMPLES = ["module1", "module2", "product_v1", "product_v2", "hello", "secure"]
# A public function never looks at credentials: TOKEN=1 calls module1's echo for authenticated
# callers instead (secure/echo, the same work).
TOKEN_PATH = "/rest/services/secure/echo/a/b/?x=1"


def requests(port, count, headers=None, path=PATH):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(count):
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
    conn.close()


def admin_token(work, data_dir, port):
    """A bearer token for the admin, from a current TOTP code."""
    import json
    env_text = open(f"{work}/.env").read()
    uuid = re.search(r"^ADMIN_UUID=(.+)$", env_text, re.M).group(1).strip()
    code = subprocess.run([f"{ROOT}/target/release/plughost", "totp", uuid, "--env-file", f"{work}/.env"],
                          env=dict(os.environ, DATA_DIR=data_dir), capture_output=True, text=True,
                          check=True).stdout.split()[0]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/rest/auth/token", body=json.dumps({"uuid": uuid, "totp": code}),
                 headers={"content-type": "application/json"})
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body
    return json.loads(body)["token"]


def total_instructions(out_file):
    with open(out_file) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {out_file}")


def measure(work, config):
    # A data folder per configuration: TOTP codes are single-use, and two runs may fall in one step.
    data_dir = f"{work}/data-" + re.sub(r"[^\w.-]", "_", config)
    env = dict(os.environ, PLUGINS_DIR=f"{work}/plugins", DATA_DIR=data_dir, BIND="127.0.0.1:0",
               INLINE_CALL_MAX_US="20000")
    if config == "baseline":
        command = [f"{ROOT}/target/release/bench-baseline", "127.0.0.1:0"]
    else:
        command = [f"{ROOT}/target/release/plughost", "serve", "--no-supervisor", "--env-file", f"{work}/.env"]
    with_token = False
    path = PATH
    for pair in config.split(",") if config != "baseline" else []:
        key, value = pair.split("=", 1)
        if key == "TOKEN":  # not a setting: call secure/echo with the admin's bearer token
            with_token = value == "1"
            if with_token and path == PATH:
                path = TOKEN_PATH
            continue
        if key == "PATH":  # not a setting: the path to call instead of the default
            path = value
            continue
        env[key] = value
    out = f"{work}/callgrind.out"
    for old in os.listdir(work):
        if old.startswith("callgrind.out"):
            os.remove(os.path.join(work, old))
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=yes",
         *os.environ.get("VALGRIND_ARGS", "").split(), *command],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=work)
    try:
        line = server.stdout.readline()
        port = int(re.search(r":(\d+)\s*$", line).group(1))
        headers = {"Authorization": f"Bearer {admin_token(work, data_dir, port)}"} if with_token else None
        requests(port, 200, headers, path)  # warm-up: lazy statics, connection set-up, caches
        subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
        requests(port, N, headers, path)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, stdout=subprocess.DEVNULL)
        time.sleep(0.5)
    finally:
        server.kill()  # the counters are dumped already
        server.wait(timeout=60)
    dumps = sorted(f for f in os.listdir(work) if re.fullmatch(r"callgrind\.out\.\d+", f))
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump in {work}")
    keep = os.environ.get("KEEP_DUMPS")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(os.path.join(work, dumps[0]), os.path.join(keep, re.sub(r"[^\w.-]", "_", config) + ".callgrind"))
    return total_instructions(os.path.join(work, dumps[0])) / N


def main():
    packages = ["-p", "plughost", "-p", "bench-baseline"] + [a for n in EXAMPLES for a in ("-p", n)]
    subprocess.run(["cargo", "build", "--release", "-q", *packages], cwd=ROOT, check=True)
    work = tempfile.mkdtemp()
    try:
        os.makedirs(f"{work}/plugins")
        for name in EXAMPLES:
            shutil.copy(f"{ROOT}/target/release/lib{name}.so", f"{work}/plugins/")
        with open(f"{work}/.env", "w") as f:
            subprocess.run([f"{ROOT}/target/release/plughost", "keygen", "--env"], stdout=f, check=True)
        results = [(config, measure(work, config)) for config in CONFIGS]
        first = results[0][1]
        print(f"GET {PATH}, {N} requests per configuration, instructions per request (callgrind)")
        for config, per_request in results:
            print(f"  {config:<36} {per_request:>10,.0f}   {per_request / first:.3f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
