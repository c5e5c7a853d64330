"""deploy/k8s/ played by `podman kube play`: the plughost Deployment with its ConfigMap and Secret
(config.yaml, the Secret's placeholders replaced by a fresh identity), against the MongoDB
stand-in reachable under the name the ConfigMap's MONGODB_URI uses. The Service, the
PodDisruptionBudget, the HorizontalPodAutoscaler and the StatefulSet are not kinds podman plays;
scripts/validate-deploy checks them against the Kubernetes schemas."""

import base64
import json
import os
import time

import yaml

import stack
from stack import run

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NETWORK = "plughost-kube-test"
MONGO = "plughost-kube-test-mongodb"
SECRET = "plughost"  # the name deploy/k8s/plughost.yaml's secretRef gives


def manifests(release, work):
    """The ConfigMap and the Deployment as one file to play, and the Secret (a fresh identity in
    place of the placeholders) as podman 4.3 reads a secretRef: a podman secret holding a JSON
    object of base64 values (a Secret document played from YAML is stored as YAML, which the
    secretRef lookup then refuses: "secret plughost is not valid JSON")."""
    documents = []
    secret = None
    values = {}
    for doc in yaml.safe_load_all(open(os.path.join(ROOT, "deploy", "k8s", "config.yaml"))):
        if doc["kind"] == "Secret":
            identity = run(f"{release}/plughost", "keygen", "--env")
            values = dict(line.split("=", 1) for line in identity.splitlines() if "=" in line)
            assert set(values) == set(doc["stringData"]), "the Secret's keys are keygen's"
            secret = os.path.join(work, "plughost-secret.json")
            with open(secret, "w") as out:
                json.dump({k: base64.b64encode(v.encode()).decode() for k, v in values.items()}, out)
            continue
        documents.append(doc)
    for doc in yaml.safe_load_all(open(os.path.join(ROOT, "deploy", "k8s", "plughost.yaml"))):
        if doc["kind"] == "Deployment":
            # podman 4.3 removes a "once" init container before it has seen it exit, and the
            # play fails ("cannot remove container … as it is running"); its own annotation keeps
            # the init container instead (Kubernetes ignores it). The manifest is otherwise as is.
            doc["metadata"].setdefault("annotations", {})[
                "io.podman.annotations.init.container.type"] = "always"
            # podman publishes every containerPort on the host, on all interfaces, for every
            # replica's pod: one pod, bound to 127.0.0.1 (this test reaches only loopback).
            doc["spec"]["replicas"] = 1
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for port in container.get("ports", []):
                    port["hostIP"] = "127.0.0.1"
            documents.append(doc)
    path = os.path.join(work, "plughost-kube.yaml")
    with open(path, "w") as out:
        yaml.safe_dump_all(documents, out, sort_keys=False)
    return path, secret, documents, values


def mongodb_host(documents):
    config = next(doc for doc in documents if doc["kind"] == "ConfigMap")
    return config["data"]["MONGODB_URI"].split("//", 1)[1].split(":", 1)[0]


def play_checks(check, release, work):
    path, secret, documents, identity = manifests(release, work)
    host = mongodb_host(documents)
    played = False
    try:
        run("podman", "network", "create", NETWORK)
        run("podman", "secret", "create", SECRET, secret)
        # The StatefulSet's pod is plughost-mongodb-0 behind the headless Service plughost-mongodb:
        # the stand-in answers under that name on the network the Deployment is played on.
        run("podman", "run", "-d", "--name", MONGO, "--network", NETWORK, "--network-alias", host,
            "localhost/plughost-test/mongo-standin:latest")
        started = time.monotonic()
        out = run("podman", "kube", "play", "--network", NETWORK, path)
        played = True
        pod = next(doc for doc in documents if doc["kind"] == "Deployment")["metadata"]["name"]
        # podman names the replica's pod <deployment>-pod-0 and its containers <pod>-<container>.
        container = f"{pod}-pod-0-plughost"
        if stack.inspect(container, "{{.State.Status}}") != "running":
            names = run("podman", "ps", "-a", "--format", "{{.Names}} {{.Status}}")
            raise RuntimeError(f"{container} is not running after kube play:\n{out}\n{names}")
        deadline = time.monotonic() + 120
        while True:
            status, body = stack.curl_inside(container, "/health")
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(1)
        check("podman kube play: the Deployment's pod answers /health 200 on MongoDB", status == 200,
              f"{status} {body} after {time.monotonic() - started:.1f} s")
        status, _, body = stack.Http("127.0.0.1", 8080).get("/rest/services/hello/greet/?name=Kube")
        check("the pod serves, on its published port, the example plugins its init container copied",
              status == 200 and body == {"greeting": "Hello, Kube!"}, f"{status} {body}")
        edge = stack.Http("127.0.0.1", 8080)
        admin = stack.token(edge, container, identity["ADMIN_UUID"])
        layers = edge.get("/health", token=admin)[2]["sandbox"]["layers"]
        # The README's Kubernetes section: RuntimeDefault may refuse the network namespace, and pods
        # have no writable cgroup file system; every other layer must be in force.
        may_lack = {"network_namespace", "memory_cgroup"}
        lacking = [layer["name"] for layer in layers if not layer["active"]]
        check("the pod's sandbox has every layer but those the README says a pod may lack",
              layers and not set(lacking) - may_lack,
              f"{len(layers) - len(lacking)} of {len(layers)} active; unavailable: {', '.join(lacking) or 'none'}")
        uids = run("podman", "exec", container, "cat", "/proc/1/status")
        uid_line = next(line for line in uids.splitlines() if line.startswith("Uid:"))
        read_only = stack.inspect(container, "{{.HostConfig.ReadonlyRootfs}}")
        check("the pod runs as uid 10001 on a read-only root file system, as its securityContext says",
              set(uid_line.split()[1:]) == {"10001"} and read_only == "true",
              f"{uid_line.strip()}, read-only {read_only}")
    except Exception as error:  # noqa: BLE001 - reported and counted
        check("podman kube play of deploy/k8s", False, f"{type(error).__name__}: {error}")
    finally:
        if played:
            run("podman", "kube", "down", path, check=False, quiet=True)
        run("podman", "rm", "-f", "-t", "5", MONGO, check=False, quiet=True)
        run("podman", "network", "rm", "-f", NETWORK, check=False, quiet=True)
        run("podman", "secret", "rm", SECRET, check=False, quiet=True)
        for volume in run("podman", "volume", "ls", "-q", check=False).split():
            if volume.startswith("plughost-kube"):
                run("podman", "volume", "rm", "-f", volume, check=False, quiet=True)
