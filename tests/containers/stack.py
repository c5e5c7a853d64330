"""Driving podman and podman-compose for scripts/test-containers: containers by service, health
checks, HTTP through nginx and inside a container, TOTP codes from the image's own CLI."""

import http.client
import json
import os
import subprocess
import threading
import time


def run(*args, check=True, timeout=600, quiet=False):
    """Runs a command; returns its standard output (stripped). Raises with its output on failure."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}"
        )
    if not quiet and done.returncode != 0:
        print(f"  ({' '.join(args[:3])}… exited {done.returncode})")
    return done.stdout.strip()


class Compose:
    """One compose project: docker/docker-compose.yml plus the test's override."""

    def __init__(self, tool, project, files, workdir):
        self.tool = tool
        self.project = project
        self.files = files
        self.workdir = workdir

    def __call__(self, *args, timeout=600):
        command = [*self.tool, "-p", self.project]
        for file in self.files:
            command += ["-f", file]
        done = subprocess.run(
            [*command, *args], capture_output=True, text=True, cwd=self.workdir, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"podman-compose {' '.join(args)} exited {done.returncode}: "
                f"{(done.stderr + done.stdout).strip()[-3000:]}"
            )
        return done.stdout

    def containers(self, all_states=True):
        """{service: container name} of this project's containers."""
        out = run(
            "podman", "ps", *(["-a"] if all_states else []),
            "--filter", f"label=io.podman.compose.project={self.project}",
            "--format", '{{.Names}} {{index .Labels "com.docker.compose.service"}}',
        )
        names = {}
        for line in out.splitlines():
            name, _, service = line.partition(" ")
            names[service] = name
        return names

    def container(self, service):
        name = self.containers().get(service)
        if not name:
            raise RuntimeError(f"no container for service {service}")
        return name


def inspect(container, template):
    return run("podman", "inspect", "--format", template, container)


def health(container):
    return inspect(container, "{{.State.Health.Status}}")


class HealthRunner:
    """Runs every container's health check at its interval, as podman's systemd timers would:
    this machine has no systemd, so without this no health status ever leaves "starting"."""

    def __init__(self):
        self.default = 30.0  # Docker's and podman's interval when a check names none
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def start(self):
        if os.path.isdir("/run/systemd/system"):
            return self
        self.thread.start()
        return self

    def loop(self):
        intervals = {}
        last = {}
        while not self.stop_event.wait(0.5):
            out = subprocess.run(
                ["podman", "ps", "--format", "{{.ID}} {{.Status}}"], capture_output=True, text=True
            ).stdout
            now = time.monotonic()
            for line in out.splitlines():
                container, _, status = line.partition(" ")
                if "(" not in status:  # no health check
                    continue
                if container not in intervals:
                    try:
                        interval = inspect(container, "{{json .Config.Healthcheck.Interval}}")
                    except RuntimeError:  # gone since `podman ps`
                        continue
                    intervals[container] = int(interval) / 1e9 if interval.isdigit() else self.default
                    last[container] = now  # the first check comes one interval after the start
                if now - last[container] >= intervals[container]:
                    last[container] = now
                    subprocess.run(["podman", "healthcheck", "run", container], capture_output=True)

    def stop(self):
        self.stop_event.set()


def wait_healthy(containers, timeout=180):
    """Waits until every container's health check passes; returns the seconds it took."""
    started = time.monotonic()
    pending = set(containers)
    while pending:
        for name in list(pending):
            status = health(name)
            if status == "healthy":
                pending.discard(name)
            elif inspect(name, "{{.State.Status}}") in ("exited", "stopped"):
                logs = run("podman", "logs", "--tail", "30", name, check=False)
                raise RuntimeError(f"{name} exited before it was healthy:\n{logs}")
        if pending and time.monotonic() - started > timeout:
            raise RuntimeError(f"not healthy within {timeout} s: {', '.join(sorted(pending))}")
        if pending:
            time.sleep(0.5)
    return time.monotonic() - started


class Http:
    """HTTP to one address: (status, headers, decoded JSON or text)."""

    def __init__(self, host, port):
        self.host = host
        self.port = port

    def request(self, method, path, body=None, headers=None, timeout=30):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        text = raw.decode("utf-8", "replace")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        return response.status, dict(response.getheaders()), value

    def get(self, path, token=None, **kwargs):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.request("GET", path, headers=headers, **kwargs)


def curl_inside(container, path, token=None):
    """GET http://127.0.0.1:8080<path> from inside a container (its own replica, not nginx)."""
    args = ["podman", "exec", container, "curl", "-sS", "-w", "\n%{http_code}"]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    out = run(*args, f"http://127.0.0.1:8080{path}", check=False)
    body, _, status = out.rpartition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status) if status.isdigit() else 0, body


def code(container, uuid):
    """The principal's current TOTP code, from the image's own CLI against the stack's store
    (asked again if the store did not answer the CLI in time)."""
    for attempt in range(3):
        try:
            return run("podman", "exec", container, "plughost", "totp", uuid)
        except RuntimeError as error:
            if attempt == 2 or "store is unavailable" not in str(error):
                raise
            print(f"  (plughost totp: the store did not answer, asking again: {str(error)[-160:]})")
            time.sleep(2)


def token(api, container, uuid):
    """A bearer token for the principal; waits for the next 30 s step if this one's code was used."""
    for _ in range(3):
        status, _, body = api.request(
            "POST", "/rest/auth/token", {"uuid": uuid, "totp": code(container, uuid)}
        )
        if status == 200:
            return body["token"]
        if isinstance(body, dict) and body.get("error") == "TOTP_REPLAYED":
            time.sleep(31 - time.time() % 30)
            continue
        raise RuntimeError(f"token for {uuid}: {status} {body}")
    raise RuntimeError(f"no token for {uuid}")


class Load:
    """A steady stream of GETs through one address from a few keep-alive clients; counts every
    answer and every failure (a status other than 200, a reset, a timeout)."""

    def __init__(self, host, port, path, clients=4, pause=0.005):
        self.host, self.port, self.path = host, port, path
        self.clients, self.pause = clients, pause
        self.ok = 0
        self.failures = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]

    def client(self):
        connection = None
        while not self.stop_event.is_set():
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
                connection.request("GET", self.path)
                response = connection.getresponse()
                response.read()
                with self.lock:
                    if response.status == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"status {response.status}")
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                with self.lock:
                    self.failures.append(f"{type(error).__name__}: {error}")
                if connection is not None:
                    connection.close()
                connection = None
            time.sleep(self.pause)

    def start(self):
        for thread in self.threads:
            thread.start()
        return self

    def stop(self):
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=15)
