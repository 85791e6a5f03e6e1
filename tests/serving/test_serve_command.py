"""``haidang serve`` is the one serving command of split mode: CDSS app + BentoML imaging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from haidang.ground.processes import stop_process
from tests.support.pacs import free_port

ROOT = Path(__file__).resolve().parents[2]


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


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (children, their children ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _listening(port: int) -> bool:
    """Whether /proc/net/tcp{,6} shows a socket in LISTEN on `port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                return True
    return False


@pytest.mark.parametrize("sig, workers", [(signal.SIGTERM, 1), (signal.SIGINT, 1),
                                          (signal.SIGKILL, 1), (signal.SIGKILL, 2)],
                         ids=["SIGTERM", "SIGINT", "SIGKILL", "SIGKILL-2-http-workers"])
def test_no_child_and_no_port_outlives_haidang_serve(tmp_path, sig, workers):
    cdss_port, imaging_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update(HAIDANG_SERVING__IMAGING_PORT=str(imaging_port),
               HAIDANG_SERVING__MODELS_DIR=str(ROOT / "models"),
               HAIDANG_SECURITY__AUDIT_LOG=str(tmp_path / "audit.log"),
               HAIDANG_API_KEYS="serve-test-key-0123456789")
    log = tmp_path / "serve.log"  # a file, not a pipe: an orphan would hold a pipe open
    proc = subprocess.Popen(
        [sys.executable, "-m", "haidang", "serve", "--host", "127.0.0.1", "--port",
         str(cdss_port), "--workers", str(workers)], cwd=tmp_path, env=env,
        stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{cdss_port}/readyz", proc)
        _wait(f"http://127.0.0.1:{imaging_port}/readyz", proc)
        children = _descendants(proc.pid)
        # the imaging service, and the HTTP workers when there are several
        assert len(children) >= (1 if workers == 1 else 1 + workers), children
        assert _listening(cdss_port) and _listening(imaging_port)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    if sig != signal.SIGKILL:
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
            any(_alive(p) for p in children) or _listening(imaging_port)
            or _listening(cdss_port)):
        time.sleep(0.5)
    survivors = [p for p in children if _alive(p)]
    for pid in survivors:  # leave no orphan behind a failing test
        os.kill(pid, signal.SIGKILL)
    assert survivors == []
    assert not _listening(imaging_port) and not _listening(cdss_port)


def test_start_up_line_names_models_and_ports(tmp_path):
    cdss_port, imaging_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update(HAIDANG_SERVING__MODELS_DIR=str(ROOT / "models"),
               HAIDANG_SECURITY__AUDIT_LOG=str(tmp_path / "audit.log"),
               HAIDANG_API_KEYS="serve-test-key-0123456789")
    proc = subprocess.Popen(
        [sys.executable, "-m", "haidang", "serve", "--host", "127.0.0.1", "--port",
         str(cdss_port), "--imaging-port", str(imaging_port)], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 180
        while "haidang serve ready" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None
    finally:
        stop_process(proc, 30)
    assert f"HTTP http://127.0.0.1:{cdss_port} (--port)" in line, line
    assert f"imaging http://127.0.0.1:{imaging_port} (--imaging-port)" in line, line
    triage = (ROOT / "models" / "cxr-triage" / "current").read_text().strip()
    assert f"cxr-triage {triage} sha256 " in line and " on CPUExecutionProvider" in line, line
    risk = (ROOT / "models" / "interaction-risk" / "current").read_text().strip()
    assert f"interaction-risk {risk} sha256 " in line and "| warm-up " in line, line
