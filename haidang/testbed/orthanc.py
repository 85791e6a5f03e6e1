"""An Orthanc PACS on loopback with its own storage: the demo's PACS and the tests' peer.

One launcher for both, so the demo, the benchmarks and the tests start Orthanc the same
way (Orthanc 1.10 takes its JSON configuration file as its only argument).
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

from haidang.ground.processes import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WEB_VIEWER = Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so")  # Debian orthanc-webviewer


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc", path=f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}")


class Orthanc:
    """Start/stop keep the ports and the storage, so a test can take the PACS down and back."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", modalities: dict | None = None,
                 binary: str | None = None, name: str = "haidang-pacs",
                 plugins: list[Path] | None = None):
        self.workdir = Path(workdir)
        self.aet = aet
        self.name = name
        self.binary = binary or orthanc_binary() or "/usr/sbin/Orthanc"
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.plugins = [str(p) for p in plugins or []]
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "orthanc.log"
        self._logf = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict:
        return {
            "Name": self.name,
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
            "Plugins": self.plugins,
            "StableAge": 2,
            "HttpServerEnabled": True,
            "TcpNoDelay": True,
        }

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        self._logf = open(self.log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([self.binary, str(cfg)], stdout=self._logf,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/system", timeout=1).status_code == 200:
                    self._wait_dicom_port(deadline)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"Orthanc did not answer within {timeout}s; see {self.log}")

    def _wait_dicom_port(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"Orthanc's DICOM port {self.dicom_port} is not listening")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        self.proc = None
        if self._logf:
            self._logf.close()
            self._logf = None

    def find_instances(self, **query: str) -> list[dict]:
        """Instances whose tags match, e.g. find_instances(StudyInstanceUID=uid, Modality='SR')."""
        body = {"Level": "Instance", "Query": query, "Expand": True}
        r = httpx.post(f"{self.url}/tools/find", json=body, timeout=30)
        r.raise_for_status()
        return r.json()

    def count(self, modality: str) -> int:
        """How many instances of a modality the PACS holds (0 if it does not answer)."""
        try:
            return len(self.find_instances(Modality=modality))
        except httpx.HTTPError:
            return 0

    # REST reads for the tests' and benchmarks' checks
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
