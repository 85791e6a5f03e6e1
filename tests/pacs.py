"""Real peers for tests: an Orthanc PACS on loopback and the dcmtk command-line tools.

The venv's ``storescu``/``echoscu`` are pynetdicom's apps; the tests want dcmtk's, an
independent implementation, so they are called by absolute path.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

DCMTK_BIN = Path("/usr/bin")
ORTHANC_BIN = shutil.which("Orthanc", path="/usr/sbin:/usr/bin") or "/usr/sbin/Orthanc"


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    if not path.exists():
        raise RuntimeError(f"dcmtk {tool} not found at {path}: apt-get install dcmtk")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class Orthanc:
    """An Orthanc 1.10 server with its own storage directory, on loopback ports."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", modalities: dict | None = None):
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict:
        return {
            "Name": "haidang-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": self.modalities,
            "Plugins": [],
            "StableAge": 2,
            "HttpServerEnabled": True,
            "TcpNoDelay": True,
        }

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        self._logf = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=self._logf,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    wait_for_port(self.dicom_port, timeout=5)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc did not answer within {timeout}s; see {self.log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "_logf", None):
            self._logf.close()

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

    def find_instances(self, **query: str) -> list[dict]:
        """Instances whose tags match, e.g. find_instances(StudyInstanceUID=uid, Modality='SR')."""
        body = {"Level": "Instance", "Query": query, "Expand": True}
        r = httpx.post(f"{self.url}/tools/find", json=body, timeout=30)
        r.raise_for_status()
        return r.json()
