"""Split mode with two imaging replicas: the gateway spreads its requests over both, and keeps
processing every study when one replica stops.

Real parts: two ``bentoml serve`` processes (``haidang serve-imaging``'s service), the gateway
in-process in split mode (``serving.url`` lists both replicas: the client's round-robin with
failover), dcmtk ``storescu`` sending chest X-ray studies. Each replica's own Prometheus
metrics say how many requests it answered.
"""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from dicom_gateway.runtime import Gateway
from haidang.ground.processes import stop_process
from serving.imaging_cli import start_imaging_service
from tests.support.gateway_helpers import send_as_is
from tests.support.imaging_e2e import cxr_studies, imaging_settings
from tests.support.imaging_model import build_registry
from tests.support.pacs import free_port


class Replica:
    def __init__(self, registry, log):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = start_imaging_service(None, "127.0.0.1", self.port, str(registry),
                                              stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"replica not ready: {self.log.read_text()[-2000:]}")

    def answered(self) -> float:
        """Successful /predict requests this replica served (its own metrics)."""
        total = 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if (line.startswith("bentoml_service_request_total{")
                    and 'http_response_code="200"' in line
                    and 'endpoint="/predict"' in line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        stop_process(self.proc, 20)


@pytest.fixture
def replicas(tmp_path):
    registry = build_registry(tmp_path / "models")
    pair = [Replica(registry, tmp_path / f"replica{i}.log") for i in range(2)]
    try:
        for r in pair:
            r.wait_ready()
        yield registry, pair
    finally:
        for r in pair:
            r.stop()


def _processed(gw, uids, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = {uid: gw.index.results(uid) for uid in uids}
        if all(results.values()):
            return results
        time.sleep(0.2)
    raise AssertionError(f"not processed in {timeout}s: {gw.index.counts()}")


def test_gateway_spreads_over_replicas_and_survives_one_stopping(tmp_path, replicas):
    registry, (a, b) = replicas
    settings = imaging_settings(tmp_path, None, quiet=0.3, url=f"{a.url},{b.url}",
                                models_dir=str(registry), retries=3, timeout_s=5)
    studies = cxr_studies(tmp_path / "in", 8)
    with Gateway(settings) as gw:
        first, second = studies[:4], studies[4:]
        for _uid, files in first:
            for run in send_as_is(files, gw.port):
                assert run.returncode == 0, run.stderr
        results = _processed(gw, [uid for uid, _ in first])
        for _uid, res in results.items():
            assert [(r["analysis"], r["state"]) for r in res] == [("cxr-pneumonia", "current")]
        before_a, before_b = a.answered(), b.answered()
        assert before_a > 0 and before_b > 0, (before_a, before_b)  # both replicas worked
        assert before_a + before_b >= len(first)  # one predict per study: its CAM comes with it

        b.stop()  # one replica goes away; the next studies must still be analysed
        for _uid, files in second:
            for run in send_as_is(files, gw.port):
                assert run.returncode == 0, run.stderr
        results = _processed(gw, [uid for uid, _ in second])
        for _uid, res in results.items():
            assert [(r["analysis"], r["state"]) for r in res] == [("cxr-pneumonia", "current")]
            assert 0.0 <= res[0]["summary"]["probability"] <= 1.0
        assert a.answered() - before_a >= len(second)  # the survivor took all of it
        assert gw.index.counts().get("jobs.failed", 0) == 0
