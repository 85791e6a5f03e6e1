"""The native API under QĐ 130 as amended by QĐ 4750: date and sex forms, up to 12 secondary
diagnoses, XML2 NGAY_TH_YL and MA_KHOA, full-width XML 130 tables of both versions, and
impossible birth dates refused (422 naming NGAY_SINH) in JSON and in XML 130."""

from __future__ import annotations

import base64
import csv
import datetime as dt
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.cdss.app import create_app
from serving.cdss.models import PrescriptionCheckRequest, age_in_days, prescription_from_native
from tests.support.cdss_support import real_kb, settings_for

CHECK = "/api/v1/prescriptions/check"
SPEC = Path(__file__).resolve().parents[2] / "datasets" / "xml130" / \
    "xml1-xml2-fields-qd130-qd4750.csv"
DRUGS = [{"TEN_THUOC": "Amiodaron 200mg"}, {"TEN_THUOC": "Moxifloxacin 400mg"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = settings_for(tmp_path_factory.mktemp("qd4750"), development=True)
    with TestClient(create_app(settings, kb=real_kb())) as c:
        yield c


def _post(client, **fields):
    return client.post(CHECK, json={"THUOC": DRUGS, **fields})


# ---------------------------------------------------------------- date and sex forms
@pytest.mark.parametrize("birth", ["19580314", "195803140000", "195803142359", "19580000",
                                   "195800000000", "19580300"])
def test_birth_date_forms_of_qd130(client, birth):
    r = _post(client, NGAY_SINH=birth, NGAY_KHAM="20260101")
    assert r.status_code == 200, r.text


def test_partial_birth_date_counts_from_the_first():
    assert age_in_days("19580000", "19590101") == 365
    assert age_in_days("195803000000", "195803020000") == 1


@pytest.mark.parametrize("birth", ["19581314", "19580231", "195803142460", "195803142400",
                                   "19580014", "1958031", "1958-03-14", "1958031412"])
def test_malformed_birth_date_is_422_naming_it(client, birth):
    r = _post(client, NGAY_SINH=birth)
    assert r.status_code == 422, r.text
    assert "NGAY_SINH" in r.json()["error"]


@pytest.mark.parametrize(("sex", "engine"), [(1, "male"), (2, "female"), ("3", None), (3, None)])
def test_sex_codes(client, sex, engine):
    req = PrescriptionCheckRequest.model_validate({"GIOI_TINH": sex, "THUOC": DRUGS})
    assert prescription_from_native(req).sex == engine
    assert _post(client, GIOI_TINH=sex).status_code == 200


def test_twelve_secondary_diagnoses_and_no_more(client):
    codes = ["I10", "E11.9", "I48.0", "N18.3", "E78.0", "K21.0", "J45.9", "M17.1", "G47.3",
             "E03.9", "F32.9", "D50.9", "K29.7"]
    ok = _post(client, MA_BENH_CHINH="J18.9", MA_BENH_KT=";".join(codes[:12]))
    assert ok.status_code == 200, ok.text
    req = PrescriptionCheckRequest.model_validate(
        {"MA_BENH_CHINH": "J18.9", "MA_BENH_KT": ";".join(codes[:12]), "THUOC": DRUGS})
    assert prescription_from_native(req).diagnoses == ["J18.9", *codes[:12]]
    too_many = _post(client, MA_BENH_KT=";".join(codes))
    assert too_many.status_code == 422
    assert "MA_BENH_KT" in too_many.json()["error"]
    assert "12" in too_many.json()["fields"][0]["message"]


def test_xml2_fields_of_qd4750(client):
    lines = [{**DRUGS[0], "NGAY_TH_YL": "202601011030", "MA_KHOA": "K" * 50}, DRUGS[1]]
    assert client.post(CHECK, json={"THUOC": lines}).status_code == 200
    bad = [{**DRUGS[0], "NGAY_TH_YL": "202601013075"}, DRUGS[1]]
    r = client.post(CHECK, json={"THUOC": bad})
    assert r.status_code == 422 and "THUOC[0].NGAY_TH_YL" in r.json()["error"]
    long = [{**DRUGS[0], "MA_KHOA": "K" * 51}, DRUGS[1]]
    r = client.post(CHECK, json={"THUOC": long})
    assert r.status_code == 422 and "THUOC[0].MA_KHOA" in r.json()["error"]


# ---------------------------------------------------------------- impossible input
def _years_ago(years: int, days: int = 0) -> str:
    today = dt.date.today()
    return (today.replace(year=today.year - years) - dt.timedelta(days=days)).strftime("%Y%m%d")


@pytest.mark.parametrize(("fields", "words"), [
    ({"NGAY_SINH": "20990101"}, "in the future"),
    ({"NGAY_SINH": "209901010000"}, "in the future"),
    ({"NGAY_SINH": "20200101", "NGAY_KHAM": "20190101"}, "after the visit"),
    ({"NGAY_SINH": "18800101", "NGAY_KHAM": "20260101"}, "over 130"),
    ({"NGAY_SINH": _years_ago(131)}, "over 130"),
])
def test_impossible_birth_date_is_422_naming_the_field(client, fields, words):
    r = _post(client, **fields)
    assert r.status_code == 422, r.text
    body = r.json()
    assert "NGAY_SINH" in body["error"]
    assert body["fields"][0]["field"] == "NGAY_SINH" and words in body["fields"][0]["message"]


def test_oldest_possible_patient_is_checked(client):
    assert _post(client, NGAY_SINH=_years_ago(130)).status_code == 200
    assert _post(client, NGAY_SINH=_years_ago(130, days=-1)).status_code == 200


# ---------------------------------------------------------------- XML 130, both versions
def _fields(table: str, version: str) -> list[str]:
    with SPEC.open(encoding="utf-8") as fh:
        return [r["field"] for r in csv.DictReader(fh) if r["xml_table"] == table and
                (version == "4750" or r["change_kind"] != "added_in_4750")]


def _table(fields: list[str], values: dict[str, str]) -> str:
    return "".join(f"<{f}>{values.get(f, '1')}</{f}>" for f in fields)


def xml130(version: str, birth: str) -> bytes:
    """A claim envelope whose XML1 and XML2 carry every field of that version's tables."""
    xml1 = _table(_fields("XML1", version), {
        "MA_LK": "LK0001", "MA_BN": "BN0001", "HO_TEN": "Nguyen Van A", "NGAY_SINH": birth,
        "GIOI_TINH": "3", "MA_BENH_CHINH": "I48.0", "MA_BENH_KT": "I10;E11.9",
        "NGAY_VAO": "202601021015", "NHOM_MAU": "O+"})
    lines = "".join(
        "<CHI_TIET_THUOC>" + _table(_fields("XML2", version), {
            "MA_LK": "LK0001", "STT": str(n), "TEN_THUOC": name, "MA_THUOC": code,
            "HAM_LUONG": strength, "SO_LUONG": "10", "LIEU_DUNG": "1 viên/lần * 1 lần/ngày",
            "NGAY_TH_YL": "202601021100", "MA_KHOA": "K01.1"}) + "</CHI_TIET_THUOC>"
        for n, (name, code, strength) in enumerate(
            [("Amiodaron", "40.100", "200mg"), ("Moxifloxacin", "40.200", "400mg")], start=1))
    tables = {
        "XML1": f"<TONG_HOP>{xml1}</TONG_HOP>",
        "XML2": f"<CHITIEU_CHITIET_THUOC><DSACH_CHI_TIET_THUOC>{lines}"
                "</DSACH_CHI_TIET_THUOC></CHITIEU_CHITIET_THUOC>",
    }
    files = "".join(
        f"<FILEHOSO><LOAIHOSO>{kind}</LOAIHOSO><NOIDUNGFILE>"
        f"{base64.b64encode(body.encode()).decode()}</NOIDUNGFILE></FILEHOSO>"
        for kind, body in tables.items())
    return ("<?xml version=\"1.0\" encoding=\"utf-8\"?><GIAMDINHHS><THONGTINDONVI>"
            "<MACSKCB>01001</MACSKCB></THONGTINDONVI><THONGTINHOSO><NGAYLAP>20260102"
            "</NGAYLAP><SOLUONGHOSO>1</SOLUONGHOSO><DANHSACHHOSO><HOSO>" + files +
            "</HOSO></DANHSACHHOSO></THONGTINHOSO></GIAMDINHHS>").encode()


@pytest.mark.parametrize("version", ["130", "4750"])
def test_xml130_both_versions_parse(client, version):
    assert ("NGAY_TH_YL" in _fields("XML2", version)) == (version == "4750")
    r = client.post(CHECK, content=xml130(version, "195803140000"),
                    headers={"Content-Type": "application/xml"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["recognised"] == ["amiodarone", "moxifloxacin"]
    assert {"amiodarone", "moxifloxacin"} in [set(a["drugs"]) for a in body["alerts"]
                                             if a["kind"] == "drug-drug"]


def test_xml130_impossible_birth_date_is_422(client):
    r = client.post(CHECK, content=xml130("4750", "209901010000"),
                    headers={"Content-Type": "application/xml"})
    assert r.status_code == 422
    assert r.json()["fields"][0]["field"] == "NGAY_SINH"
    after = client.post(CHECK, content=xml130("4750", "202601050000"),  # NGAY_VAO 20260102
                        headers={"Content-Type": "application/xml"})
    assert after.status_code == 422 and "after the visit" in after.json()["fields"][0]["message"]


def test_cli_check_refuses_an_impossible_birth_date(tmp_path):
    import json
    import subprocess
    import sys

    path = tmp_path / "don.json"
    path.write_text(json.dumps({"NGAY_SINH": "20990101", "THUOC": DRUGS}), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "haidang", "cdss", "check", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "NGAY_SINH" in out.stderr and "future" in out.stderr
