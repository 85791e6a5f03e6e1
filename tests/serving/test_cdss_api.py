"""The native API end to end (FastAPI app, real knowledge base): QĐ 130 JSON and XML 130,
QĐ 5948 rows by Vietnamese, international and brand names, bad input, audit, CLI."""

from __future__ import annotations

import base64
import csv
import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haidang.ground.audit import verify_chain
from serving.cdss.app import create_app
from tests.support.cdss_support import FIXTURES, real_kb, settings_for

CHECK = "/api/v1/prescriptions/check"
KEY = "khoa-thu-nghiem-123"
FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cdss-api")


@pytest.fixture(scope="module")
def client(audit_dir, monkeypatch_module):
    monkeypatch_module.setenv("HAIDANG_API_KEYS", f"other-key,{KEY}")
    app = create_app(settings_for(audit_dir, max_body_bytes=65536), kb=real_kb())
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def assert_sample_alerts(body: dict) -> None:
    """The sample prescription: amiodarone + moxifloxacin (QĐ 5948 STT 51), J18 not
    specific, the herbal line not recognised."""
    by_kind = {}
    for alert in body["alerts"]:
        by_kind.setdefault(alert["kind"], []).append(alert)
    [ddi] = [a for a in by_kind["drug-drug"] if set(a["drugs"]) == {"amiodarone", "moxifloxacin"}]
    assert ddi["severity"] == "contraindicated"
    assert "QĐ 5948" in ddi["source"] and "STT 51" in ddi["source"]
    assert ddi["management_vi"] and ddi["message_vi"] and ddi["message_en"]
    assert [a["icd"] for a in by_kind["icd-specificity"]] == [["J18"]]
    [unknown] = by_kind["unrecognised-drug"]
    assert unknown["lines"] == [3]
    assert body["recognised"][:3] == ["amiodarone", "moxifloxacin", "paracetamol"]
    assert body["alerts"][0]["severity"] == "contraindicated"


def test_native_json_end_to_end(client):
    r = client.post(CHECK, content=fixture_bytes("prescription.json"),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert_sample_alerts(r.json())


@pytest.mark.parametrize("name", ["xml130-sample.xml", "xml130-tables.xml"])
def test_xml130_end_to_end(client, name):
    r = client.post(CHECK, content=fixture_bytes(name),
                    headers={"Content-Type": "application/xml; charset=utf-8"})
    assert r.status_code == 200, r.text
    assert_sample_alerts(r.json())


def _qd5948_rows():
    path = real_kb().root.parent / "ddi-vn" / "qd5948-contraindicated-pairs.csv"
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _single(kb, written):
    side = kb.qd5948_side(written)
    return side[0] if len(side) == 1 and not side[0].startswith("class:") else None


def _brand_of(kb, inn):
    for brand, keys in sorted(kb.brands.items()):
        if keys == (inn,):
            return brand
    return None


def test_qd5948_rows_through_the_api_by_three_names(client):
    """A handful of rows: Vietnamese name as the list writes it, international name, brand."""
    kb = real_kb()
    tried = 0
    for row in _qd5948_rows():
        one, two = _single(kb, row["HOAT_CHAT_1"]), _single(kb, row["HOAT_CHAT_2"])
        if not one or not two:
            continue
        brand = _brand_of(kb, one) or _brand_of(kb, two)
        if brand is None:
            continue
        branded_is_one = kb.brands[brand] == (one,)
        names = [
            (row["HOAT_CHAT_1"], row["HOAT_CHAT_2"]),
            (one, two),
            (brand, row["HOAT_CHAT_2"]) if branded_is_one else (row["HOAT_CHAT_1"], brand),
        ]
        for a, b in names:
            r = client.post(CHECK, json={"THUOC": [{"TEN_THUOC": f"{a} viên"},
                                                   {"TEN_THUOC": b.upper()}]})
            assert r.status_code == 200, r.text
            hits = [x for x in r.json()["alerts"] if x["kind"] == "drug-drug"
                    and x["severity"] == "contraindicated" and set(x["drugs"]) == {one, two}]
            assert hits, f"STT {row['STT']}: {a} + {b} gave no contraindicated alert"
            assert any(f"STT {int(row['STT'])}" in h["source"] for h in hits)
        tried += 1
        if tried == 6:
            break
    assert tried == 6, "fewer than 6 QĐ 5948 rows have single ingredients and a brand"


# ---------------------------------------------------------------------- bad input
def test_malformed_json_is_400(client):
    r = client.post(CHECK, content=b'{"THUOC": [', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"THUOC": [{"HAM_LUONG": "200mg"}]}, "THUOC[0]"),  # no TEN_THUOC/MA_THUOC/name
        ({"THUOC": []}, "THUOC"),
        ({}, "THUOC"),
        ({"NGAY_SINH": "1958-03-14", "THUOC": [{"TEN_THUOC": "Paracetamol"}]}, "NGAY_SINH"),
        ({"NGAY_SINH": "19580231", "THUOC": [{"TEN_THUOC": "Paracetamol"}]}, "NGAY_SINH"),
        ({"GIOI_TINH": 5, "THUOC": [{"TEN_THUOC": "Paracetamol"}]}, "GIOI_TINH"),
        ({"THUOC": [{"TEN_THUOC": "Paracetamol", "SO_LUONG": "nhiều"}]}, "THUOC[0].SO_LUONG"),
        ({"THUOC": "Paracetamol"}, "THUOC"),
    ],
)
def test_invalid_field_is_422_naming_it(client, body, field):
    r = client.post(CHECK, json=body)
    assert r.status_code == 422, r.text
    assert field in [f["field"] for f in r.json()["fields"]]
    assert field in r.json()["error"]


def test_json_that_is_not_an_object_is_422(client):
    r = client.post(CHECK, json=[1, 2])
    assert r.status_code == 422


def test_malformed_xml_is_400(client):
    r = client.post(CHECK, content=b"<TONG_HOP><MA_LK>1</TONG_HOP>",
                    headers={"Content-Type": "application/xml"})
    assert r.status_code == 400 and "well-formed" in r.json()["error"]


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<DON_THUOC><CHI_TIET_THUOC><TEN_THUOC>&lol3;</TEN_THUOC></CHI_TIET_THUOC></DON_THUOC>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<DON_THUOC><CHI_TIET_THUOC><TEN_THUOC>&xxe;</TEN_THUOC></CHI_TIET_THUOC></DON_THUOC>"""


@pytest.mark.parametrize("payload", [BILLION_LAUGHS, XXE])
def test_entity_attacks_are_refused(client, payload):
    r = client.post(CHECK, content=payload, headers={"Content-Type": "application/xml"})
    assert r.status_code == 400
    assert "root:" not in r.text and "lollol" not in r.text


def test_entity_attack_inside_embedded_file_is_refused(client):
    inner = base64.b64encode(BILLION_LAUGHS).decode()
    env = (f"<GIAMDINHHS><HOSO><FILEHOSO><LOAIHOSO>XML2</LOAIHOSO><NOIDUNGFILE>{inner}"
           "</NOIDUNGFILE></FILEHOSO></HOSO></GIAMDINHHS>").encode()
    r = client.post(CHECK, content=env, headers={"Content-Type": "application/xml"})
    assert r.status_code == 400 and "FILEHOSO[1]" in r.json()["error"]


def test_xml_without_drug_lines_is_422(client):
    r = client.post(CHECK, content=b"<DON_THUOC><MA_BENH_CHINH>J18.9</MA_BENH_CHINH></DON_THUOC>",
                    headers={"Content-Type": "text/xml"})
    assert r.status_code == 422 and "THUOC" in r.json()["error"]


def test_oversized_body_is_413(client):
    big = json.dumps({"THUOC": [{"TEN_THUOC": "Paracetamol " + "x" * 400}] * 200}).encode()
    assert len(big) > 65536
    r = client.post(CHECK, content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_oversized_streamed_body_without_length_is_413(client):
    def chunks():
        for _ in range(100):
            yield b" " * 1024

    r = client.post(CHECK, content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["THUOC", "TEN_THUOC", "HAM_LUONG", "LIEU_DUNG", "SO_LUONG", "NGAY_SINH",
                         "GIOI_TINH", "MA_BENH_CHINH", "MA_BENH_KT", "x"]), inner, max_size=5),
    max_leaves=12))
def test_no_input_gives_500(client, data):
    r = client.post(CHECK, json=data)
    assert r.status_code in (200, 400, 413, 422), r.text


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(st.lists(st.fixed_dictionaries({
    "TEN_THUOC": st.text(min_size=1, max_size=40),
    "HAM_LUONG": st.text(max_size=15),
    "LIEU_DUNG": st.text(max_size=40),
}), min_size=1, max_size=6), st.text(max_size=30))
def test_any_drug_text_is_checked_without_error(client, lines, codes):
    r = client.post(CHECK, json={"THUOC": lines, "MA_BENH_KT": codes})
    assert r.status_code in (200, 422), r.text
    if r.status_code == 200:
        assert len(r.json()["recognised"]) == len(lines)


# ---------------------------------------------------------------------- API keys
def test_missing_api_key_is_401(client):
    r = client.post(CHECK, json={"THUOC": [{"TEN_THUOC": "Paracetamol"}]},
                    headers={"X-API-Key": ""})
    assert r.status_code == 401 and r.json() == {"error": "unauthorized"}


def test_wrong_api_key_is_401(client):
    r = client.post(CHECK, json={"THUOC": [{"TEN_THUOC": "Paracetamol"}]},
                    headers={"X-API-Key": KEY + "x"})
    assert r.status_code == 401 and KEY not in r.text


def test_no_keys_configured_refuses_everything(tmp_path, monkeypatch):
    monkeypatch.delenv("HAIDANG_API_KEYS", raising=False)
    app = create_app(settings_for(tmp_path), kb=real_kb())
    with TestClient(app) as c:
        r = c.post(CHECK, json={"THUOC": [{"TEN_THUOC": "Paracetamol"}]},
                   headers={"X-API-Key": "anything"})
    assert r.status_code == 401


def test_development_mode_needs_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv("HAIDANG_API_KEYS", raising=False)
    app = create_app(settings_for(tmp_path, development=True), kb=real_kb())
    with TestClient(app) as c:
        r = c.post(CHECK, json={"THUOC": [{"TEN_THUOC": "Paracetamol"}]})
    assert r.status_code == 200


# ---------------------------------------------------------------------- channel threshold
DAPT_NSAID = [{"TEN_THUOC": t} for t in ("Aspirin 81mg", "Clopidogrel 75mg", "Meloxicam 7,5mg")]


def _pair_severities(client) -> dict:
    r = client.post(CHECK, json={"THUOC": DAPT_NSAID})
    assert r.status_code == 200, r.text
    return {tuple(a["drugs"]): a["severity"] for a in r.json()["alerts"]
            if a["kind"] == "drug-drug"}


@pytest.mark.parametrize(("native", "hidden"), [(None, True), ("minor", False)])
def test_native_api_hides_minor_unless_configured(tmp_path, monkeypatch, native, hidden):
    """ANSM "A prendre en compte" (minor): aspirin or clopidogrel + meloxicam. `minor` is hidden
    by default ([cdss] min_severity_native = moderate); the CDS Hooks threshold is separate."""
    monkeypatch.delenv("HAIDANG_API_KEYS", raising=False)
    settings = settings_for(tmp_path, development=True)
    if native is not None:
        settings = settings.model_copy(update={"cdss": settings.cdss.model_copy(
            update={"min_severity_native": native})})
    with TestClient(create_app(settings, kb=real_kb())) as c:
        got = _pair_severities(c)
    assert got[("acetylsalicylic acid", "clopidogrel")] == "moderate"  # shown either way
    minor = {pair for pair, sev in got.items() if sev == "minor"}
    assert (minor == set()) is hidden
    if not hidden:
        assert ("acetylsalicylic acid", "meloxicam") in minor


# ---------------------------------------------------------------------- ops and audit
def test_health_ready_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["drugs"] > 100
    spec = client.get("/openapi.json").json()
    body = spec["paths"][CHECK]["post"]["requestBody"]["content"]
    assert "TEN_THUOC" in json.dumps(body["application/json"]) and "application/xml" in body
    assert client.get("/docs").status_code == 200


def test_audit_has_alert_ids_and_no_patient_identifiers(tmp_path, monkeypatch):
    monkeypatch.setenv("HAIDANG_API_KEYS", KEY)
    app = create_app(settings_for(tmp_path, audit_key="bi-mat"), kb=real_kb())
    with TestClient(app, headers={"X-API-Key": KEY}) as c:
        c.post(CHECK, content=fixture_bytes("prescription.json"),
               headers={"Content-Type": "application/json"})
        c.post(CHECK, content=fixture_bytes("xml130-sample.xml"),
               headers={"Content-Type": "application/xml"})
        c.post(CHECK, json={"THUOC": [{"TEN_THUOC": "x"}]}, headers={"X-API-Key": "sai"})
    log = (tmp_path / "audit.log").read_text(encoding="utf-8")
    records = [json.loads(line) for line in log.splitlines()]
    checks = [r for r in records if r["event"] == "check"]
    assert len(checks) == 2 and [r["event"] for r in records].count("denied") == 1
    assert any(a.startswith("ddi:qd5948-051:") for a in checks[0]["alerts"])
    assert checks[0]["patient"] == checks[1]["patient"] and len(checks[0]["patient"]) == 32
    for secret in ("BN-TEST-0001", "LK-TEST-0001", "Nguyễn Văn Thử", "19580314", KEY, "sai",
                   "gia truyền", "gia truy"):
        assert secret not in log
    assert verify_chain(tmp_path / "audit.log") == (3, [])
    lines = log.splitlines()
    lines[1] = lines[1].replace('"native"', '"nativE"')
    (tmp_path / "audit.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    count, problems = verify_chain(tmp_path / "audit.log")
    assert count == 3 and problems and "line 2" in problems[0]


# ---------------------------------------------------------------------- CLI
@pytest.mark.parametrize("name", ["prescription.json", "xml130-sample.xml"])
def test_cli_check_prints_alerts(name):
    out = subprocess.run([sys.executable, "-m", "haidang", "cdss", "check",
                          str(FIXTURES / name), "--lang", "en"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "[contraindicated] drug-drug" in out.stdout and "moxifloxacin" in out.stdout
    assert "unrecognised-drug" in out.stdout


def test_cli_check_names_the_bad_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"THUOC": [{"HAM_LUONG": "1"}]}', encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "haidang", "cdss", "check", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "THUOC.0" in out.stderr and "TEN_THUOC" in out.stderr


def test_cli_import_icd(tmp_path):
    catalogue = tmp_path / "qd4469.csv"
    catalogue.write_text("STT,Mã bệnh,Tên bệnh\n1,J18.9,Viêm phổi không đặc hiệu\n"
                         "2,I48.0,Rung nhĩ kịch phát\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "haidang", "cdss", "import-icd", str(catalogue)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("2 Vietnamese ICD-10 titles")
    assert (tmp_path / "var" / "icd10-moh.csv").read_text(encoding="utf-8").count("\n") == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\nx,y\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "haidang", "cdss", "import-icd", str(bad)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 2 and "ICD-10" in out.stderr


def test_haidang_serve_with_two_workers(tmp_path):
    """The real server as `haidang serve` starts it: uvicorn, 2 workers, a free port."""
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update(HAIDANG_API_KEYS=KEY, HAIDANG_SECURITY__AUDIT_LOG=str(tmp_path / "audit.log"))
    proc = subprocess.Popen([sys.executable, "-m", "haidang", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "2", "--no-imaging"],
                            cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "haidang serve not ready in 60 s"
            time.sleep(0.3)
        with httpx.Client(base_url=base, headers={"X-API-Key": KEY}) as c:
            for _ in range(5):
                r = c.post(CHECK, content=fixture_bytes("xml130-sample.xml"),
                           headers={"Content-Type": "application/xml"})
                assert r.status_code == 200
                assert_sample_alerts(r.json())
            assert c.post(CHECK, json={"THUOC": []}).status_code == 422
            assert c.get("/cds-services").json()["services"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    count, problems = verify_chain(tmp_path / "audit.log")
    assert count == 5 and problems == []


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda tag, text: f"<{tag}><CHI_TIET_THUOC><TEN_THUOC>{text}</TEN_THUOC>"
              f"</CHI_TIET_THUOC></{tag}>".encode(),
              st.sampled_from(["DON_THUOC", "GIAMDINHHS", "HOSO", "x"]),
              st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30)),
))
def test_no_xml_input_gives_500(client, data):
    r = client.post(CHECK, content=data, headers={"Content-Type": "application/xml"})
    assert r.status_code in (200, 400, 422), r.text
