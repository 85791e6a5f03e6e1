"""Structured logs: `--log-format json` writes one JSON object per line with the fields a log
collector indexes; a bad format is refused with a clear message."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from haidang.ground.logs import configure, set_third_party_level, startup_line, study_line


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


def test_third_party_loggers_quiet_until_raised(capfd, restore_root, monkeypatch):
    monkeypatch.delenv("HAIDANG_LOGGING__THIRD_PARTY_LEVEL", raising=False)
    configure("INFO", "text")
    logging.getLogger("highdicom.sr").info("copy attributes of module 'Patient'")
    logging.getLogger("pynetdicom.acse").info("Association Accepted")
    logging.getLogger("uvicorn.error").warning("a real problem")
    logging.getLogger("haidang.gateway").info("ours at INFO")
    logging.getLogger("serving.cdss.app").info("ours too")
    err = capfd.readouterr().err
    assert "copy attributes" not in err and "Association Accepted" not in err
    assert "a real problem" in err and "ours at INFO" in err and "ours too" in err
    set_third_party_level("INFO")  # logging.third_party_level = "INFO"
    logging.getLogger("highdicom.sr").info("copy attributes of module 'Study'")
    assert "copy attributes of module 'Study'" in capfd.readouterr().err
    assert os.environ["HAIDANG_LOGGING__THIRD_PARTY_LEVEL"] == "INFO"  # for child processes
    with pytest.raises(ValueError, match="LOUD"):
        set_third_party_level("LOUD")


def test_study_line_and_start_up_line(capfd, restore_root):
    configure("INFO", "json")
    study_line(logging.getLogger("haidang.gateway.worker"), "a1b2c3d4e5f6", "pneumonia",
               {"queue": 0.0123, "analysis": 0.8})
    (line,) = [json.loads(x) for x in capfd.readouterr().err.strip().splitlines()]
    assert line["message"] == "study a1b2c3d4e5f6: pneumonia; queue=0.012s analysis=0.800s"
    assert line["study"] == "a1b2c3d4e5f6" and line["verdict"] == "pneumonia"
    assert line["analysis_s"] == 0.8
    text = startup_line("haidang up", ports={"DICOM": "HAIDANG@0.0.0.0:11112 (gateway.port)"},
                        models=[{"model": "cxr-pneumonia", "version": "1.0.0",
                                 "sha256": "6381d887bea0ffff", "provider": "CPUExecutionProvider"}],
                        database="postgresql://haidang:s3cret@db/haidang", warm_up_s=0.42)
    assert "cxr-pneumonia 1.0.0 sha256 6381d887bea0 on CPUExecutionProvider" in text
    assert "warm-up 0.42 s" in text and "DICOM HAIDANG@0.0.0.0:11112 (gateway.port)" in text
    assert "postgresql://haidang:***@db/haidang" in text and "s3cret" not in text
    assert "python 3." in text and "pynetdicom " in text


def test_client_dropping_mid_body_is_one_info_line(tmp_path):
    """A real `haidang serve`; a client sends half its body and closes the connection."""
    import socket as socket_
    import time as time_

    import httpx

    from tests.support.pacs import free_port

    port = free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update(HAIDANG_SECURITY__DEVELOPMENT="true",
               HAIDANG_SECURITY__AUDIT_LOG=str(tmp_path / "audit.log"))
    proc = subprocess.Popen([sys.executable, "-m", "haidang", "serve", "--no-imaging",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        deadline = time_.monotonic() + 120
        while time_.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time_.sleep(0.5)
        with socket_.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /api/v1/prescriptions/check HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
                      b'{"MA_LK": "1", "THUOC": [')
            time_.sleep(0.5)
        time_.sleep(1.5)
    finally:
        proc.send_signal(subprocess.signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI" not in text, text
    gone = [ln for ln in text.splitlines() if "went away" in ln]
    assert len(gone) == 1 and " INFO haidang.http " in gone[0], text
    assert "POST /api/v1/prescriptions/check" in gone[0]
