"""scripts/test-containers' checks: docker/docker-compose.yml brought up with podman-compose (two
plughost replicas, the MongoDB stand-in, nginx), exercised through nginx on 127.0.0.1, stopped,
brought up again; then deploy/k8s's Deployment played by podman. Prints `N passed, N failed`.

    python3 tests/containers/check.py RELEASE_DIR   (scripts/test-containers calls it)
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import kube  # noqa: E402
import stack  # noqa: E402
from stack import run  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROJECT = "plughost-test"
EDGE = ("127.0.0.1", 8080)
REPLICAS = ("plughost-1", "plughost-2")

results = []


def check(name, passed, detail=""):
    results.append((name, bool(passed)))
    print(f"{'PASS' if passed else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    return bool(passed)


def without_ids(value):
    """A JSON answer with its error_id removed (it differs on every call)."""
    if isinstance(value, dict):
        return {key: item for key, item in value.items() if key != "error_id"}
    return value


def readme_examples(api):
    """The quickstart's three calls and the whoami without credentials, as the README prints them."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    quickstart = readme[readme.index("## Quickstart"):readme.index("## Identity")]
    expected = [json.loads(line) for line in quickstart.splitlines() if line.startswith("{")]
    got = [
        api.get("/rest/services/hello/greet/?name=Ada&times=2")[2],
        api.request(
            "POST", "/rest/services/sample-one/42/?a=1",
            {"args": [1, 2, 3], "__map__": {"parm_1": "id"}},
        )[2],
        api.get("/rest/services/api-name/")[2],
    ]
    for example, (want, have) in zip(["hello/greet", "sample-one", "api-name"], zip(expected, got)):
        want, have = without_ids(want), without_ids(have)
        check(f"README example {example} answers as the README says", want == have,
              "" if want == have else f"README {want}, got {have}")
    status, _, body = api.get("/rest/services/secure/whoami/")
    check("README: a tenant function without credentials is 401 AUTHORIZATION_HEADER_MISSING",
          status == 401 and body.get("error") == "AUTHORIZATION_HEADER_MISSING", f"{status} {body}")


def layers(health_body):
    return {layer["name"]: layer for layer in health_body["sandbox"]["layers"]}


def machine_layers(release):
    """The layers a plughost server running as uid 10001 gets on this machine outside any container
    (what the kernel allows a non-root server): the container must not report fewer."""
    work = tempfile.mkdtemp(prefix="plughost-layers-")
    os.chmod(work, 0o777)
    # A copy uid 10001 can run wherever the build tree is.
    shutil.copy(f"{release}/plughost", f"{work}/plughost")
    env_text = run(f"{release}/plughost", "keygen", "--env")
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    env.update(PLUGINS_DIR=f"{work}/plugins", DATA_DIR=f"{work}/data", BIND="127.0.0.1:0",
               PATH=os.environ["PATH"])
    os.mkdir(f"{work}/plugins", 0o777)
    os.chmod(f"{work}/plugins", 0o777)
    log = open(f"{work}/log", "w")
    server = subprocess.Popen(
        ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", f"{work}/plughost",
         "serve"], env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        found = None
        while not found and time.monotonic() < deadline:
            time.sleep(0.2)
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(f"{work}/log").read())
        if not found:
            raise RuntimeError(f"the host server did not start: {open(f'{work}/log').read()[-2000:]}")
        api = stack.Http("127.0.0.1", int(found.group(1)))
        admin = env["ADMIN_UUID"]
        code = subprocess.run([f"{release}/plughost", "totp", admin], env=env, cwd=work,
                              capture_output=True, text=True).stdout.strip()
        status, _, body = api.request("POST", "/rest/auth/token", {"uuid": admin, "totp": code})
        if status != 200:
            raise RuntimeError(f"host server token: {status} {body}")
        return layers(api.get("/health", token=body["token"])[2])
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def tenant_checks(api, compose, admin_token, release, allowed):
    """Enrols a tenant through nginx, exchanges its code, publishes the rogue fixture into its own
    namespace and calls it: it must run sandboxed inside the container with every layer this
    machine allows a non-root server."""
    replica = compose.container("plughost-1")
    status, _, tenant = api.request(
        "POST", "/rest/admin/tenants", {"name": "Container Test"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    check("the admin enrols a tenant through nginx", status in (200, 201) and "uuid" in tenant,
          f"{status}")
    uuid = tenant["uuid"]
    tenant_token = stack.token(api, replica, uuid)
    check("the tenant exchanges a TOTP code (from `plughost totp` in the image) for a token",
          bool(tenant_token))
    rogue = open(f"{release}/librogue.so", "rb").read()
    status, _, body = api.request(
        "PUT", "/rest/tenant/plugins/rogue", rogue,
        headers={"Authorization": f"Bearer {tenant_token}", "Content-Type": "application/octet-stream"},
    )
    check("the tenant publishes a plugin into its own namespace", status in (200, 201), f"{status} {body}")
    deadline = time.monotonic() + 30
    while True:
        status, _, hello = api.get("/rest/services/rogue/hello/", token=tenant_token)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    check("the tenant calls its function through nginx", status == 200, f"{status} {hello}")
    check("it runs in a worker of its own PID namespace (pid 2, no parent visible)",
          isinstance(hello, dict) and hello.get("pid") == 2 and hello.get("ppid") == 0, f"{hello}")
    env = api.get("/rest/services/rogue/env/", token=tenant_token)[2]
    check("it sees none of the container's environment (no SECRET_KEY, no MONGODB_URI)",
          isinstance(env, dict) and env.get("variables") == [], f"{env}")
    read = api.get("/rest/services/rogue/read/?path=/var/lib/plughost/data", token=tenant_token)[2]
    check("it cannot read the server's data folder",
          isinstance(read, dict) and read.get("denied") is True, f"{read}")
    connect = api.get("/rest/services/rogue/connect/?port=8080", token=tenant_token)[2]
    check("it cannot connect to the server's port",
          isinstance(connect, dict) and connect.get("denied") is True, f"{connect}")
    health = layers(api.get("/health", token=admin_token)[2])
    active = sorted(name for name, layer in health.items() if layer["active"])
    missing = sorted(name for name, layer in allowed.items()
                     if layer["active"] and not health.get(name, {}).get("active"))
    detail = f"{len(active)} of {len(health)} active in the container: " + ", ".join(
        f"{name} unavailable ({layer['detail']})" for name, layer in health.items() if not layer["active"]
    )
    check("the container's sandbox has every layer a non-root server gets on this machine",
          not missing, detail + (f"; missing {missing}" if missing else ""))
    return uuid, tenant_token


def published_everywhere(compose, path, timeout=30):
    """Waits until each replica, asked on its own port, serves the path; returns {replica: status}."""
    deadline = time.monotonic() + timeout
    statuses = {}
    while time.monotonic() < deadline:
        statuses = {r: stack.curl_inside(compose.container(r), path)[0] for r in REPLICAS}
        if all(status == 200 for status in statuses.values()):
            break
        time.sleep(0.5)
    return statuses


def publish_checks(api, compose, admin_token, release):
    plugin = open(f"{release}/libsleepy.so", "rb").read()
    status, _, body = api.request(
        "PUT", "/rest/admin/plugins/sleepy", plugin,
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/octet-stream"},
    )
    check("the admin publishes a plugin once, through nginx", status in (200, 201), f"{status} {body}")
    started = time.monotonic()
    statuses = published_everywhere(compose, "/rest/services/sleepy/nap/?ms=1")
    check("both replicas serve it, each asked on its own port",
          all(s == 200 for s in statuses.values()),
          f"{statuses} after {time.monotonic() - started:.1f} s")


def access_count(container, marker):
    logs = subprocess.run(["podman", "logs", container], capture_output=True, text=True)
    return (logs.stdout + logs.stderr).count(marker)


def stop_under_load(compose):
    """Stops one replica while a steady load runs through nginx, then starts it again."""
    load = stack.Load(*EDGE, "/rest/services/hello/greet/?name=load").start()
    time.sleep(3)
    victim = compose.container("plughost-2")
    started = time.monotonic()
    compose("stop", "plughost-2")
    stopped_in = time.monotonic() - started
    exit_code = stack.inspect(victim, "{{.State.ExitCode}}")
    time.sleep(3)
    during = load.ok
    compose("start", "plughost-2")
    stack.wait_healthy([victim])
    time.sleep(2)
    # Access log lines name the module and function, not the query: count the replica's lines for
    # another function than the steady load's.
    marker = '"module":"sleepy","function":"nap"'
    before = access_count(victim, marker)
    after = stack.Load(*EDGE, "/rest/services/sleepy/nap/?ms=0", clients=2).start()
    time.sleep(4)
    after.stop()
    load.stop()
    served = access_count(victim, marker) - before
    total = load.ok + len(load.failures)
    check("a replica stopped under steady load through nginx: zero failed requests",
          not load.failures and not after.failures and during > 0,
          f"{total} requests, {len(load.failures)} failed {load.failures[:3]}; "
          f"the replica stopped in {stopped_in:.1f} s with exit code {exit_code}")
    check("started again, the replica takes traffic through nginx again", served > 0,
          f"{served} of {after.ok} requests answered by it")
    return stopped_in


def restart_checks(api, compose, admin_token, tenant_uuid, tenant_token):
    """Stops the stack (every plughost container exits 0 in its grace period), removes its
    containers, brings it up again: tenants, published plugins and the store are still there."""
    names = [compose.container(r) for r in REPLICAS]
    started = time.monotonic()
    compose("stop")
    took = time.monotonic() - started
    codes = {name: stack.inspect(name, "{{.State.ExitCode}}") for name in names}
    check("the stack stops: every plughost container exits 0 within its 30 s grace period",
          all(c == "0" for c in codes.values()) and took < 60, f"{codes}, {took:.1f} s")
    compose("down")
    check("`down` without -v removed the containers", not compose.containers())
    started = time.monotonic()
    compose("up", "-d", "--no-build")
    healthy = stack.wait_healthy(
        [compose.container(s) for s in ("mongodb", *REPLICAS)], timeout=240)
    wait_edge(api)
    check("brought up again, the stack is healthy", True, f"in {time.monotonic() - started:.1f} s")
    status, _, tenants = api.get("/rest/admin/tenants", token=admin_token)
    check("the tenant is still there (MongoDB's volume)",
          status == 200 and tenant_uuid in json.dumps(tenants), f"{status}")
    status, _, body = api.get("/rest/services/rogue/hello/", token=tenant_token)
    check("the tenant's token and published plugin still work", status == 200, f"{status} {body}")
    statuses = published_everywhere(compose, "/rest/services/sleepy/nap/?ms=1")
    check("the admin's published plugin is served by both new replicas",
          all(s == 200 for s in statuses.values()), f"{statuses}")
    return healthy


def isolation_checks(compose):
    for replica in REPLICAS:
        status = run("podman", "exec", compose.container(replica), "cat", "/proc/1/status")
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        check(f"{replica}'s server runs as a non-root user", set(uids) == {"10001"}, f"uids {uids}")
    mongo = compose.container("mongodb")
    status = run("podman", "exec", mongo, "cat", "/proc/1/status")
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    check("the MongoDB stand-in runs as a non-root user", "0" not in uids, f"uids {uids}")
    bindings = json.loads(stack.inspect(mongo, "{{json .HostConfig.PortBindings}}") or "{}") or {}
    published = {port: hosts for port, hosts in bindings.items() if hosts}
    refused = True
    try:
        socket.create_connection(("127.0.0.1", 27017), timeout=2).close()
        refused = False
    except OSError:
        pass
    check("MongoDB is not reachable from the host (no published port, 127.0.0.1:27017 refused)",
          not published and refused, f"published {published}" if published else "")


def wait_edge(api, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if api.get("/ping")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("nginx does not answer /ping on 127.0.0.1:8080")
        time.sleep(0.5)


def compose_checks(compose_tool, release, work, figures):
    project = os.path.join(work, "project")
    os.makedirs(os.path.join(project, "docker"))
    for name in ("docker-compose.yml", "nginx.conf"):
        shutil.copy(os.path.join(ROOT, "docker", name), os.path.join(project, "docker", name))
    shutil.copy(os.path.join(ROOT, "tests", "containers", "compose.test.yml"), project)
    # The README's first step: a fresh identity in .env beside the docker/ folder.
    with open(os.path.join(project, ".env"), "w") as env:
        env.write(run(f"{release}/plughost", "keygen", "--env") + "\n")
    admin = re.search(r"^ADMIN_UUID=(.*)$", open(os.path.join(project, ".env")).read(), re.M).group(1)
    compose = stack.Compose(
        compose_tool, PROJECT,
        [os.path.join(project, "docker", "docker-compose.yml"), os.path.join(project, "compose.test.yml")],
        project,
    )
    try:
        started = time.monotonic()
        compose("up", "-d", "--no-build")
        waited = stack.wait_healthy([compose.container(s) for s in ("mongodb", *REPLICAS)], timeout=240)
        api = stack.Http(*EDGE)
        wait_edge(api)
        figures["time to healthy"] = f"{time.monotonic() - started:.1f} s"
        check("compose up: MongoDB and both replicas healthy, nginx answers on 127.0.0.1:8080", True,
              f"{time.monotonic() - started:.1f} s from `up` ({waited:.1f} s waiting for health)")
        readme_examples(api)
        admin_token = stack.token(api, compose.container("plughost-1"), admin)
        allowed = machine_layers(release)
        tenant_uuid, tenant_token = tenant_checks(api, compose, admin_token, release, allowed)
        publish_checks(api, compose, admin_token, release)
        figures["replica stop"] = f"{stop_under_load(compose):.1f} s"
        isolation_checks(compose)
        restart_checks(api, compose, admin_token, tenant_uuid, tenant_token)
    except Exception as error:  # noqa: BLE001 - every failure is reported and counted
        check("compose stack", False, f"{type(error).__name__}: {error}")
        for name in compose.containers().values():
            print(f"--- last lines of {name}:\n{run('podman', 'logs', '--tail', '15', name, check=False)}")
    finally:
        try:
            compose("down", "-v", "-t", "30")
        except RuntimeError as error:
            print(f"teardown: {error}")
        leftovers = run("podman", "volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={PROJECT}", check=False)
        for volume in leftovers.split():
            run("podman", "volume", "rm", "-f", volume, check=False)


def main():
    release = os.path.abspath(sys.argv[1])
    compose_tool = sys.argv[2:] or ["podman-compose"]
    work = tempfile.mkdtemp(prefix="plughost-containers-")
    figures = {}
    runner = stack.HealthRunner().start()
    try:
        compose_checks(compose_tool, release, work, figures)
        kube.play_checks(check, release, work)
    finally:
        runner.stop()
        shutil.rmtree(work, ignore_errors=True)
    for key, value in figures.items():
        print(f"figure: {key}: {value}")
    failed = sum(1 for _, passed in results if not passed)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
