"""The HTTP workers get the connections in turn (serving/handoff.py), survive a worker's death,
and stop with their parent: a real `run_http` parent with 2 uvicorn worker processes."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.pacs import free_port

ROOT = Path(__file__).resolve().parents[2]


def _get(conn: http.client.HTTPConnection, path: str = "/pid") -> int:
    conn.request("GET", path)
    resp = conn.getresponse()
    assert resp.status == 200
    return json.loads(resp.read())["pid"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def _two_workers(port: int) -> set[int]:
    """The worker pids behind two fresh connections (dealt in turn: both workers)."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(2)]
    pids = {_get(c) for c in conns}
    for c in conns:
        c.close()
    return pids


@pytest.fixture
def served():
    port = free_port()
    code = ("import sys; from serving.cdss.app import run_http; "
            f"run_http('tests.support.handoff_app:create_app', '127.0.0.1', {port}, 2)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            _get(conn)
            conn.close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("run_http did not answer in 60 s")
            time.sleep(0.2)
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_connections_are_dealt_to_the_workers_in_turn(served):
    _, port = served
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(8)]
    owners = []
    for conn in conns:
        first = _get(conn)
        assert _get(conn) == first  # keep-alive: the same worker serves the connection
        owners.append(first)
    for conn in conns:
        conn.close()
    assert len(set(owners)) == 2
    # in turn: consecutive connections alternate between the two workers, 4 each
    assert all(a != b for a, b in zip(owners, owners[1:], strict=False))
    assert sorted(owners.count(p) for p in set(owners)) == [4, 4]


def test_a_dead_worker_is_replaced_and_sigterm_stops_all(served):
    proc, port = served
    workers = _two_workers(port)
    assert len(workers) == 2
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    seen: set[int] = set()
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            seen.add(_get(conn))
            conn.close()
        except OSError:
            pass  # the connection dealt to the dead worker before the restart
        if len(seen - workers) >= 1 and len(seen) >= 2:
            break
        time.sleep(0.2)
    replacement = seen - workers
    assert replacement, "no new worker answered after one was killed"
    assert victim not in seen
    live = (workers - {victim}) | replacement
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
    time.sleep(0.5)
    assert not [p for p in live if _alive(p)], "workers outlived their parent"


def test_workers_stop_when_the_parent_is_killed(served):
    proc, port = served
    workers = _two_workers(port)
    proc.kill()  # SIGKILL: no chance to stop its workers; they see their channel close
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [p for p in workers if _alive(p)]:
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "workers outlived a killed parent"


def test_workers_write_no_access_lines(tmp_path):
    """`access_log=False` holds in the handed-off workers: a line per request would fill a
    pipe nobody reads (and the worker would block in the log handler)."""
    port = free_port()
    code = ("from serving.cdss.app import run_http; "
            f"run_http('tests.support.handoff_app:create_app', '127.0.0.1', {port}, 2)")
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=sink,
                                env={**os.environ, "HAIDANG_LOG_LEVEL": "INFO"})
        try:
            deadline = time.monotonic() + 60
            served = 0
            while served < 40 and time.monotonic() < deadline:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    for _ in range(10):
                        _get(conn)
                        served += 1
                    conn.close()
                except OSError:
                    time.sleep(0.2)
            assert served >= 40
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=40)
    text = err.read_text(errors="replace")
    assert "GET /pid" not in text, text[-2000:]
