"""Structured logs: `--log-format json` writes one JSON object per line with the fields a log
collector indexes; a bad format is refused with a clear message."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from haidang.ground.logs import configure


@pytest.fixture
def restore_root(monkeypatch):
    # configure() exports its choice to the environment: undo that too (setenv records it)
    monkeypatch.setenv("HAIDANG_LOG_FORMAT", "text")
    monkeypatch.setenv("HAIDANG_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_fields_extras_and_errors(capfd, restore_root):
    configure("INFO", "json")
    log = logging.getLogger("haidang.test")
    log.info("nghiên cứu %s đã xếp hàng", "a1b2c3", extra={"study": "a1b2c3", "instances": 4})
    log.debug("not shown at INFO")
    try:
        raise OSError("disk gone")
    except OSError:
        log.exception("store failed")
    lines = [json.loads(x) for x in capfd.readouterr().err.strip().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["message"] == "nghiên cứu a1b2c3 đã xếp hàng"  # Vietnamese kept, not \\u-escaped
    assert first["level"] == "INFO" and first["logger"] == "haidang.test"
    assert first["study"] == "a1b2c3" and first["instances"] == 4
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["level"] == "ERROR" and second["error"] == "OSError"
    assert "disk gone" in second["traceback"]
    assert os.environ["HAIDANG_LOG_FORMAT"] == "json"  # what worker processes inherit


def test_text_is_the_default(capfd, restore_root, monkeypatch):
    monkeypatch.delenv("HAIDANG_LOG_FORMAT")
    configure()
    logging.getLogger("haidang.test").warning("plain line")
    err = capfd.readouterr().err
    assert "WARNING haidang.test plain line" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.strip().splitlines()[-1])


def test_cli_json_logs_and_bad_format():
    # a command that logs: `haidang echo` to a closed port logs the refused connection
    env = {"PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "haidang.cli", "--log-format", "json", "echo",
                          "--host", "127.0.0.1", "--port", "9", "--timeout", "5"],
                         env=env, capture_output=True, text=True, timeout=60)
    records = [json.loads(x) for x in run.stderr.splitlines() if x.startswith("{")]
    assert any(r["level"] == "ERROR" and "refused" in r["message"] for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    bad = subprocess.run([sys.executable, "-m", "haidang.cli", "config", "show"],
                         env={**env, "HAIDANG_LOG_FORMAT": "xml"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "HAIDANG_LOG_FORMAT" in bad.stderr and "text or json" in bad.stderr
