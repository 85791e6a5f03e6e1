"""The BentoML imaging service, started for real (``bentoml serve``) on a free port.

Checks the info endpoint, that HTTP predictions equal in-process ones and carry the model
identity, concurrent requests (adaptive batching path), and the client's failover over
replicas and its error when none answers.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from haidang.ground.processes import stop_process
from haidang.ground.settings import ServingSettings
from serving.imaging.client import ImagingClient, ServingUnavailable
from serving.imaging_cli import start_imaging_service
from tests.support.imaging_model import SIZE, bright_top_left, build_registry
from tests.support.pacs import free_port


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return build_registry(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def service(registry, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("bento") / "bentoml.log"
    with open(log, "wb") as out:
        proc = start_imaging_service(None, "127.0.0.1", port, str(registry),
                                     stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    else:
        proc.terminate()
        raise TimeoutError(f"bentoml serve not ready: {log.read_text()[-2000:]}")
    yield url
    stop_process(proc, 20)


def settings(url: str | None, registry, retries: int = 2) -> ServingSettings:
    return ServingSettings(url=url, models_dir=registry, retries=retries, timeout_s=5)


def test_info_endpoint_names_model_version_sha_and_provider(service, registry):
    info = httpx.post(f"{service}/info", json={}, timeout=10).json()
    assert info["model"] == "cxr-triage" and info["version"] == "0.0.1-test"
    card = (registry / "cxr-triage" / "0.0.1-test" / "card.yaml").read_text()
    assert info["sha256"] in card
    assert info["provider"] == "CPUExecutionProvider"
    assert info["input"]["size"] == [SIZE, SIZE] and info["threshold"] == 0.5


def test_http_predictions_equal_in_process_and_carry_identity(service, registry):
    images = np.concatenate([bright_top_left(2), np.zeros((1, 1, SIZE, SIZE), np.float32)])
    remote = ImagingClient(settings(service, registry)).predict(images)
    local = ImagingClient(settings(None, registry)).predict(images)
    assert [r.finding for r in remote] == [True, True, False]
    for r, loc in zip(remote, local, strict=True):
        assert r.probability == pytest.approx(loc.probability, abs=1e-6)
        assert (r.model, r.version, r.sha256, r.provider) == (loc.model, loc.version, loc.sha256,
                                                              "CPUExecutionProvider")
        assert r.probabilities == pytest.approx(loc.probabilities, abs=1e-6)


def _batch_metric(url: str) -> tuple[float, float]:
    """(requests, batches) from BentoML's adaptive batch size histogram for /predict."""
    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if 'method_name="predict"' not in line:
            continue
        if line.startswith("bentoml_service_adaptive_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("bentoml_service_adaptive_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def test_concurrent_requests_are_batched_and_all_answered(service, registry):
    client = ImagingClient(settings(service, registry))
    rng = np.random.default_rng(0)
    batches = [rng.random((1, 1, SIZE, SIZE), dtype=np.float32) for _ in range(48)]
    before = _batch_metric(service)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(client.predict, batches))
    after = _batch_metric(service)
    requests, runs = after[0] - before[0], after[1] - before[1]
    assert requests == 48 and runs < requests  # adaptive batching merged some requests
    local = ImagingClient(settings(None, registry))
    for batch, result in zip(batches, results, strict=True):
        assert result[0].probability == pytest.approx(local.predict(batch)[0].probability,
                                                      abs=1e-6)


def test_round_robin_skips_a_dead_replica(service, registry):
    dead = f"http://127.0.0.1:{free_port()}"
    client = ImagingClient(settings(f"{dead},{service}", registry, retries=3))
    for _ in range(4):  # every other call starts at the dead replica and fails over
        assert client.predict(bright_top_left())[0].finding


def test_no_replica_answering_is_a_clear_error(registry):
    client = ImagingClient(settings(f"http://127.0.0.1:{free_port()}", registry, retries=1))
    with pytest.raises(ServingUnavailable, match="serving.url"):
        client.predict(bright_top_left())


def test_serve_imaging_command_registers_and_defaults_to_the_gateways_url():
    import argparse

    from serving.imaging_cli import default_address, register, service_command

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve-imaging", "--port", "3999"])
    assert args.port == 3999 and callable(args.handler)
    assert default_address(ServingSettings(url="http://a:3100,http://b:3200")) == ("127.0.0.1",
                                                                                   3100)
    assert default_address(ServingSettings(port=3000)) == ("127.0.0.1", 3001)
    cmd = service_command("127.0.0.1", 3100)
    assert cmd[1:4] == ["-m", "bentoml", "serve"]
    assert "serving.imaging_service:ImagingService" in cmd
