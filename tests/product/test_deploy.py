"""Deployment artefacts: Kubernetes manifests, the gateway container, the serving Bento.

* every manifest validates against the Kubernetes OpenAPI schemas bundled with
  ``kubernetes-validate`` (offline, strict: unknown fields fail);
* the probes point at endpoints that really answer (CDSS ``/healthz`` ``/readyz``, BentoML
  ``/livez`` ``/readyz``, the gateway's metrics port and DICOM port);
* container arguments parse with the real ``haidang`` CLI, variables are real settings;
* ``bentoml build`` runs for real (offline) and the Bento it produces carries the registry's
  model and serves it. Containerising needs a Docker engine, which does not run here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml

from haidang import config_cli
from haidang.cli import build_parser
from haidang.ground.processes import stop_process
from haidang.ground.settings import Settings, load_settings
from tests.support.imaging_model import build_registry
from tests.support.pacs import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.30.0"


def manifests() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                out.append((path, doc))
    return out


def containers(kind_name: str) -> list[dict]:
    for _path, doc in manifests():
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == kind_name:
            return doc["spec"]["template"]["spec"]["containers"]
    raise AssertionError(f"no Deployment {kind_name}")


def test_every_manifest_validates_against_the_kubernetes_schema():
    docs = manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= kinds
    for _path, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any error
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name


def test_the_validator_catches_a_broken_manifest():
    _, doc = next((p, d) for p, d in manifests() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "dicom"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(doc))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_gpu_requests_spool_volume_and_database_secret():
    (imaging,) = containers("haidang-imaging")
    assert imaging["resources"]["limits"]["nvidia.com/gpu"] == 1
    (gateway,) = containers("haidang-gateway")
    env = {e["name"]: e for e in gateway["env"]}
    assert env["HAIDANG_GATEWAY__DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == \
        "haidang-secrets"
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]["haidang.toml"]
    settings = Settings.model_validate(__import__("tomllib").loads(config))
    assert str(settings.gateway.spool_dir) == mounts["spool"]
    pvc = next(d for _, d in manifests() if d["kind"] == "PersistentVolumeClaim"
               and d["metadata"]["name"] == "haidang-spool")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every worker reads every study
    secret = next(d for _, d in manifests() if d["kind"] == "Secret")
    assert secret["stringData"]["database-url"].startswith("postgresql://")


def test_container_arguments_and_variables_are_real():
    parser = build_parser()
    for name in ("haidang-gateway", "haidang-cdss"):
        for c in containers(name):
            args = parser.parse_args(c["args"])
            assert callable(args.handler)
    dockerfile = (DEPLOY / "gateway.Dockerfile").read_text()
    cmd = re.search(r'^CMD (\[.*\])', dockerfile, re.M).group(1)
    assert callable(parser.parse_args(yaml.safe_load(cmd)).handler)
    for src in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for item in src.split():
            assert (ROOT / item).exists(), f"Dockerfile copies missing {item}"
    documented = config_cli.reference()
    for _, doc in manifests():
        if doc["kind"] != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"].startswith("HAIDANG_"):
                    assert f"`{e['name']}`" in documented, e["name"]


def test_cdss_probe_endpoints_answer():
    from fastapi.testclient import TestClient

    from serving.cdss.app import create_app

    probes = containers("haidang-cdss")[0]
    paths = {probes[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    assert paths == {"/healthz", "/readyz"}
    settings = load_settings(environ={"HAIDANG_SECURITY__DEVELOPMENT": "true"})
    with TestClient(create_app(settings)) as client:
        for path in paths:
            assert client.get(path).status_code == 200, path


def test_gateway_probes_answer(tmp_path):
    (gateway,) = containers("haidang-gateway")
    metrics_path = gateway["readinessProbe"]["httpGet"]["path"]
    assert gateway["livenessProbe"]["tcpSocket"]["port"] == "dicom"
    dicom, metrics = free_port(), free_port()
    args = [a if a != "9100" else str(metrics) for a in gateway["args"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update({"HAIDANG_GATEWAY__PORT": str(dicom), "HAIDANG_GATEWAY__HOST": "127.0.0.1",
                "HAIDANG_GATEWAY__SPOOL_DIR": str(tmp_path / "spool"),
                "HAIDANG_GATEWAY__MIN_FREE_BYTES": "0",
                "HAIDANG_GATEWAY__DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
                "HAIDANG_SECURITY__AUDIT_LOG": str(tmp_path / "audit.log")})
    proc = subprocess.Popen([sys.executable, "-m", "haidang", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(dicom, timeout=30)
        with socket.create_connection(("127.0.0.1", dicom), timeout=2):
            pass
        wait_for_port(metrics, timeout=10)
        r = httpx.get(f"http://127.0.0.1:{metrics}{metrics_path}", timeout=5)
        assert r.status_code == 200 and "haidang_" in r.text
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-2000:]


@pytest.fixture(scope="module")
def bento(tmp_path_factory):
    """``bentoml build -f deploy/bentofile.yaml`` on a copy of the sources with a registry."""
    ctx = tmp_path_factory.mktemp("bento-ctx")
    for folder in ("serving", "haidang", "deploy"):
        shutil.copytree(ROOT / folder, ctx / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    build_registry(ctx / "models")
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    run = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f",
                          "deploy/bentofile.yaml", "."], cwd=ctx, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    tag = re.search(r"(haidang-imaging:[a-z0-9]+)", run.stdout + run.stderr).group(1)
    path = home / "bentos" / "haidang-imaging" / tag.split(":")[1]
    return {"ctx": ctx, "env": env, "tag": tag, "path": path}


def test_bento_carries_the_registry_model(bento):
    src = bento["path"] / "src"
    version = (src / "models" / "cxr-triage" / "current").read_text().strip()
    model = src / "models" / "cxr-triage" / version / "model.onnx"
    original = bento["ctx"] / "models" / "cxr-triage" / version / "model.onnx"
    assert hashlib.sha256(model.read_bytes()).digest() == \
        hashlib.sha256(original.read_bytes()).digest()
    assert (src / "models" / "cxr-triage" / version / "card.yaml").is_file()
    for gate_file in ("gate.onnx", "gate.npz"):  # the intended-use gate travels with it
        assert (bento["ctx"] / "models" / "cxr-triage" / version / gate_file).is_file()
        assert (src / "models" / "cxr-triage" / version / gate_file).is_file(), gate_file
    requirements = (bento["path"] / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime" in requirements and "torch" not in requirements
    assert not (src / "serving" / "cdss").exists()  # the CDSS is not part of this Bento
    assert (bento["path"] / "env" / "docker" / "Dockerfile").is_file()


def test_built_bento_serves_the_model_with_its_probes(bento, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", bento["tag"],
                                 "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                                env=bento["env"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        (imaging,) = containers("haidang-imaging")
        for probe in ("livenessProbe", "readinessProbe"):
            path = imaging[probe]["httpGet"]["path"]
            assert httpx.get(f"{url}{path}", timeout=5).status_code == 200, path
        info = httpx.post(f"{url}/info", json={}, timeout=10).json()
        assert info["model"] == "cxr-triage" and info["version"] == "0.0.1-test"
        assert info["provider"] == "CPUExecutionProvider"
    finally:
        stop_process(proc, 20)


def test_gpu_bento_builds_on_a_cuda_image_with_onnxruntime_gpu(bento):
    run = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f",
                          "deploy/bentofile.gpu.yaml", "."], cwd=bento["ctx"], env=bento["env"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    tag = re.search(r"(haidang-imaging-gpu:[a-z0-9]+)", run.stdout + run.stderr).group(1)
    path = Path(bento["env"]["BENTOML_HOME"]) / "bentos" / "haidang-imaging-gpu" / tag.split(":")[1]
    dockerfile = (path / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:12\.\S*cudnn", dockerfile, re.M)
    requirements = (path / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime-gpu" in requirements and "torch" not in requirements
    assert (path / "src" / "models" / "cxr-triage" / "current").is_file()
