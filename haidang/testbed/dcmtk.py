"""The dcmtk command-line tools: an independent DICOM implementation to test against.

The venv's ``storescu``/``echoscu`` are pynetdicom's apps; tests and benchmarks want dcmtk's,
so they are called by absolute path, with ``TCP_NODELAY`` in their environment (they honour
it; without it each PDU waits on Nagle and delayed ACK).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

DCMTK_BIN = Path("/usr/bin")


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
    ``send_as_is`` of the gateway tests' helpers.
    """
    cmd = [dcmtk("storescu"), "--required", "-aet", calling_ae, "-aec", called_ae,
           *(extra or []), host, str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout)
