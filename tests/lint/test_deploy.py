"""What CI can check of the deployment files without a Docker engine or a cluster."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonpatch
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"


def _tool(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    assert Path(found).exists(), f"{name} is not installed (the lint extra of pyproject.toml)"
    return found


def test_compose_matches_the_compose_specification() -> None:
    schema = json.loads((ROOT / "deploy" / "compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    jsonschema.validate(compose, schema)
    services = compose["services"]
    for name in ("runner", "vllm"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    long_running = [n for n, svc in services.items() if svc.get("restart") != "no"]
    assert all("healthcheck" in services[n] for n in long_running), long_running
    conditions = {c["condition"] for svc in services.values()
                  for c in (svc.get("depends_on") or {}).values()}
    assert conditions <= {"service_healthy", "service_completed_successfully"}
    env_example = (ROOT / ".env.example").read_text()
    for var in set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "compose.yaml").read_text())):
        assert f"{var}=" in env_example, f"{var} is not documented in .env.example"


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([_tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    # Every rule we silence says why on the line above.
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], line


def _validate(paths: list[Path]) -> None:
    out = subprocess.run([_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION,
                          *map(str, paths)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed" in out.stdout and "failed" not in out.stdout.lower()


def _base_resources() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / "base" / name).read_text()) if d]
    return docs


def test_kubernetes_base_manifests_validate() -> None:
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    files = [K8S / "base" / name for name in kustomization["resources"]]
    assert all(f.is_file() for f in files)
    _validate(files)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in _base_resources()}
    assert {("Deployment", "tunedock-api"), ("PodDisruptionBudget", "tunedock-api"),
            ("Deployment", "tunedock-runner"), ("Deployment", "vllm"), ("StatefulSet", "postgres"),
            ("StatefulSet", "minio"), ("Job", "tunedock-migrate")} <= kinds
    runner = next(d for d in _base_resources() if d["metadata"]["name"] == "tunedock-runner"
                  and d["kind"] == "Deployment")
    pod = runner["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 300
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_external_services_overlay_renders_to_valid_manifests(tmp_path: Path) -> None:
    """A small renderer for the two patch kinds the overlay uses ($patch: delete and JSON 6902)."""
    overlay = yaml.safe_load((K8S / "overlays" / "external-services" / "kustomization.yaml").read_text())
    docs = _base_resources()
    for patch in overlay["patches"]:
        if "path" in patch:
            for d in yaml.safe_load_all((K8S / "overlays" / "external-services" / patch["path"]).read_text()):
                assert d.pop("$patch") == "delete"
                before = len(docs)
                docs = [x for x in docs if (x["kind"], x["metadata"]["name"]) != (d["kind"], d["metadata"]["name"])]
                assert len(docs) == before - 1, f"{d['kind']}/{d['metadata']['name']} is not in the base"
        else:
            target = patch["target"]
            [doc] = [x for x in docs if x["kind"] == target["kind"] and x["metadata"]["name"] == target["name"]]
            docs[docs.index(doc)] = jsonpatch.apply_patch(doc, yaml.safe_load(patch["patch"]))
    assert not any(d["metadata"]["name"] in ("postgres", "minio") for d in docs)
    rendered = tmp_path / "overlay.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    _validate([rendered])


@pytest.mark.parametrize("target", ["api", "runner", "serving"])
def test_each_image_command_exists_and_answers_help(target: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stage = dockerfile.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
    entry = [json.loads(m) for m in re.findall(r"^(?:CMD|ENTRYPOINT) (\[.*\])$", stage, re.M)]
    assert entry, f"the {target} stage has no CMD/ENTRYPOINT"
    command = [a for part in entry for a in part]
    assert command[0] in ("python", "python3") and command[1] == "-m"
    out = subprocess.run([sys.executable, *command[1:], "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout, out.stderr[-2000:]


def test_the_across_nodes_example_validates_and_is_one_gang() -> None:
    """The rendered example of a job on several nodes (deploy/README.md, "Across nodes")."""
    path = K8S / "multinode" / "train-job.yaml"
    _validate([path])
    docs = {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}
    job, service = docs["Job"], docs["Service"]
    spec = job["spec"]
    # All pods at once or none (Kueue's queue, a suspended Indexed Job), no retry of a rank alone.
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert spec["suspend"] is True and spec["backoffLimit"] == 0
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
    pod = spec["template"]["spec"]
    command = pod["containers"][0]["command"]
    flags = dict(a.split("=", 1) for a in command if a.startswith("--") and "=" in a)
    # The rendezvous is pod 0 behind the headless Service the pods are a subdomain of.
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert flags["--rdzv-endpoint"].startswith(f"{job['metadata']['name']}-0.{service['metadata']['name']}:")
    assert int(flags["--nnodes"]) == spec["completions"]
    gpus = int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert int(flags["--nproc-per-node"]) == gpus
    assert command[-3:] == ["-m", "service.training", "/spec/spec.json"]
    assert json.loads(docs["ConfigMap"]["data"]["spec.json"])["ranks"] == spec["completions"] * gpus
