"""``cluster/``: the launcher YAML, the KubeRay manifests and the Dockerfiles say what the docs
promise (no cluster, no docker build): they parse, pin the Ray and Python of pyproject.toml,
keep token auth on and the dashboard private, share one storage path across nodes, run the
fixed ``python -m distml run spec.yaml --run-id ID --json`` entrypoint, and install distml
from pyproject.toml."""

from __future__ import annotations

import os
import re
import shlex
import tomllib

import pytest
import yaml

from distml.api import validate
from distml.remote import entrypoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(ROOT, "cluster")


def _yaml_docs(rel: str) -> list[dict]:
    with open(os.path.join(CLUSTER, rel)) as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def _by_kind(rel: str) -> dict[str, dict]:
    return {d["kind"]: d for d in _yaml_docs(rel)}


@pytest.fixture(scope="module")
def pins() -> dict:
    """The Ray minor version and Python version the project pins."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    ray = next(d for d in project["dependencies"] if d.startswith("ray["))
    low = re.search(r">=\s*([0-9.]+)", ray).group(1)
    py = re.search(r">=\s*3\.(\d+)", project["requires-python"]).group(1)
    return {"ray_minor": ".".join(low.split(".")[:2]), "py_tag": f"py3{py}"}


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _mounts(pod_template: dict) -> dict[str, str]:
    """{mount path: claim name} of the PVC volumes a pod template mounts."""
    spec = pod_template["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    return {
        m["mountPath"]: claims[m["name"]]
        for c in spec["containers"]
        for m in c.get("volumeMounts", [])
        if m["name"] in claims
    }


def _check_ray_cluster_spec(spec: dict, pins: dict) -> str:
    """Common rules of a RayCluster spec; returns the shared mount path."""
    assert spec["rayVersion"].startswith(pins["ray_minor"] + ".")
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never a public LoadBalancer
    groups = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for t in groups:
        assert all("distml" in c["image"] for c in _containers(t))
    shared = [_mounts(t) for t in groups]
    assert shared[0] and all(m == shared[0] for m in shared), "same volume, same path everywhere"
    return next(iter(shared[0]))


def test_raycluster(pins):
    docs = _by_kind("kuberay/raycluster.yaml")
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    mount = _check_ray_cluster_spec(cluster["spec"], pins)
    assert mount == "/mnt/distml"
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    gpu = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    assert _containers(gpu["template"])[0]["image"].endswith("-cuda")


def test_rayjob_runs_the_fixed_entrypoint_on_a_valid_spec(pins):
    docs = _by_kind("kuberay/rayjob.yaml")
    job = docs["RayJob"]["spec"]
    argv = shlex.split(job["entrypoint"])
    run_id = argv[argv.index("--run-id") + 1]
    assert job["entrypoint"] == entrypoint(run_id)  # the exact string distml submit sends
    # the working dir is the ConfigMap holding only spec.yaml, mounted in the submitter
    workdir = yaml.safe_load(job["runtimeEnvYAML"])["working_dir"]
    submitter = _containers(job["submitterPodTemplate"])[0]
    mounts = {m["mountPath"]: m for m in submitter["volumeMounts"]}
    assert mounts[f"{workdir}/spec.yaml"]["subPath"] == "spec.yaml"
    config = docs["ConfigMap"]["data"]
    assert list(config) == ["spec.yaml"]
    spec = validate(yaml.safe_load(config["spec.yaml"]), check_data=False)
    env = {e["name"]: e for e in submitter["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    secret = job["rayClusterSpec"]["authOptions"]["secretName"]
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": secret,
        "key": "auth_token",
    }
    mount = _check_ray_cluster_spec(job["rayClusterSpec"], pins)
    assert spec.output.dir.startswith(mount + "/")  # the run dir outlives the cluster
    assert job["shutdownAfterJobFinishes"] is True


def test_launcher_yaml(pins):
    (conf,) = _yaml_docs("aws.yaml")
    assert conf["provider"]["type"] == "aws"
    assert conf["head_node_type"] in conf["available_node_types"]
    head = " ".join(conf["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    workers = " ".join(conf["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in workers and "--address=$RAY_HEAD_IP:6379" in workers
    assert conf["file_mounts"]["~/.ray/auth_token"]  # the token reaches every node
    assert "distml" in conf["docker"]["image"]
    assert any("/mnt/distml:/mnt/distml" in o for o in conf["docker"]["run_options"])
    assert any("/mnt/distml" in c for c in conf["initialization_commands"])
    gpu = conf["available_node_types"]["ray.worker.gpu"]
    assert gpu["docker"]["worker_image"].endswith("-cuda")


def _dockerfile(name: str) -> tuple[list[str], str]:
    with open(os.path.join(CLUSTER, name)) as fh:
        text = fh.read()
    lines = [
        ln.strip()
        for ln in text.replace("\\\n", " ").splitlines()
        if ln.strip() and not ln.strip().startswith("#")
    ]
    return lines, text


@pytest.mark.parametrize("name,variant", [("Dockerfile", "cpu"), ("Dockerfile.cuda", "gpu")])
def test_dockerfiles_install_from_pyproject(pins, name, variant):
    lines, _ = _dockerfile(name)
    base = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert len(base) == 1
    image, tag = base[0].split(":")
    assert image == "rayproject/ray"
    assert tag.startswith(pins["ray_minor"] + ".") and f"-{pins['py_tag']}-" in tag
    assert tag.endswith(variant)
    copies = " ".join(ln for ln in lines if ln.upper().startswith("COPY "))
    assert "pyproject.toml" in copies and "distml" in copies
    runs = " ".join(ln for ln in lines if ln.upper().startswith("RUN "))
    install = re.search(r"pip install [^&]*?\"\.\[", runs)
    assert install, "the install step must be `pip install .[extras]` (reads pyproject.toml)"
    assert not re.search(r"pip install [^&]*distml[=<>]", runs)  # never a released wheel
    assert "python -m distml validate" in runs  # the image can run a spec
    ignore = os.path.join(CLUSTER, f"{name}.dockerignore")
    with open(ignore) as fh:
        kept = {ln[1:].rstrip("/") for ln in fh.read().split() if ln.startswith("!")}
    assert {"pyproject.toml", "distml"} <= kept
