"""``haidang serve`` is the one serving command of split mode: CDSS app + BentoML imaging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from haidang.processes import stop_process
from tests.pacs import free_port

ROOT = Path(__file__).resolve().parents[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        try:
            r = httpx.get(url, timeout=2)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def test_serve_starts_cdss_and_imaging_and_stops_both(tmp_path):
    cdss_port, imaging_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update(HAIDANG_SERVING__URL=f"http://127.0.0.1:{imaging_port}",
               HAIDANG_SERVING__MODELS_DIR=str(ROOT / "models"),
               HAIDANG_SECURITY__AUDIT_LOG=str(tmp_path / "audit.log"),
               HAIDANG_API_KEYS="serve-test-key-0123456789")
    proc = subprocess.Popen(
        [sys.executable, "-m", "haidang", "serve", "--host", "127.0.0.1", "--port",
         str(cdss_port)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        assert _wait(f"http://127.0.0.1:{cdss_port}/readyz", proc).json()["status"] == "ready"
        _wait(f"http://127.0.0.1:{imaging_port}/readyz", proc)
        info = httpx.post(f"http://127.0.0.1:{imaging_port}/info", json={}, timeout=10)
        assert info.status_code == 200, info.text
        assert "cxr-triage" in info.text
    finally:
        stop_process(proc, 30, signal.SIGINT)
    # the imaging child went with its parent
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{imaging_port}/livez", timeout=1)
        except httpx.HTTPError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the imaging service outlived haidang serve")
