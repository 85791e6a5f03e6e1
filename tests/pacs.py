"""Real peers for tests: an Orthanc PACS on loopback and the dcmtk command-line tools.

The venv's ``storescu``/``echoscu`` are pynetdicom's apps; the tests want dcmtk's, an
independent implementation, so they are called by absolute path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

from haidang.orthanc import Orthanc as BaseOrthanc
from haidang.orthanc import free_port  # noqa: F401 - the tests import it from here

DCMTK_BIN = Path("/usr/bin")
ORTHANC_BIN = shutil.which("Orthanc", path="/usr/sbin:/usr/bin") or "/usr/sbin/Orthanc"


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    if not path.exists():
        raise RuntimeError(f"dcmtk {tool} not found at {path}: apt-get install dcmtk")
    return str(path)




def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def dcmtk_env() -> dict[str, str]:
    """dcmtk honours TCP_NODELAY from the environment; without it each PDU waits on Nagle."""
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(files: list[Path] | list[str], port: int, called_ae: str, calling_ae: str = "STORESCU",
             host: str = "127.0.0.1", extra: list[str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Send files with dcmtk storescu in one run.

    ``--required`` proposes only the SOP classes needed; the transfer syntaxes proposed are
    dcmtk's default (uncompressed) unless ``extra`` names one (``-xs``, ``-xr``, ``-xv`` ...).
    To send mixed compressed files each in its own syntax, use
    ``tests.gateway_helpers.send_as_is``.
    """
    cmd = [dcmtk("storescu"), "--required", "-aet", calling_ae, "-aec", called_ae,
           *(extra or []), host, str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout)


class Orthanc(BaseOrthanc):
    """The product's Orthanc launcher (``haidang.orthanc``) plus REST helpers for assertions."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", modalities: dict | None = None):
        super().__init__(workdir, aet=aet, modalities=modalities, binary=ORTHANC_BIN,
                         name="haidang-test-pacs")

    # REST helpers used by assertions
    def get(self, path: str):
        r = httpx.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def instances(self) -> list[str]:
        return self.get("/instances")

    def instance_tags(self, orthanc_id: str) -> dict:
        return self.get(f"/instances/{orthanc_id}/simplified-tags")

    def instance_file(self, orthanc_id: str) -> bytes:
        r = httpx.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30)
        r.raise_for_status()
        return r.content
