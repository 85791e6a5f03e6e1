"""The hospital's drug catalogue: `haidang cdss import-catalog` on CSV and XLSX, good and bad
lines, and MA_THUOC / brand identification afterwards in the real app (QĐ 130/4750)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from serving.cdss.app import create_app
from serving.cdss.catalog import CatalogError, HospitalCatalog, catalog_path, import_catalog
from tests.support.cdss_support import FIXTURES, real_kb, settings_for

CATALOGUE = FIXTURES / "catalog" / "danh-muc-thuoc.csv"
CHECK = "/api/v1/prescriptions/check"
# line -> the words its reason must contain (the fixture's deliberately bad lines)
BAD_LINES = {
    8: "'Hoạt chất không có thật xyz' not recognised",
    9: "'Eucalyptol' not recognised",  # half of a combination is not the drug
    10: "MA_THUOC is empty",
    12: "MA_THUOC 40.900 is ambiguous",
    13: "MA_THUOC 40.900 is ambiguous",
    14: "TEN_HOAT_CHAT is empty",
}


def _import(tmp_path, src, *extra):
    env = {"HAIDANG_SERVING__DRUG_CATALOG": str(tmp_path / "data" / "drug-catalog.json"),
           "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "haidang", "cdss", "import-catalog", str(src),
                           *extra], capture_output=True, text=True, timeout=120, env=env)


def test_csv_import_reports_every_line(tmp_path):
    out = _import(tmp_path, CATALOGUE, "--json")
    assert out.returncode == 1, out.stderr  # stored, but not every line resolved
    summary = json.loads(out.stdout)
    assert summary["lines"] == 13
    assert summary["resolved"] == 7
    assert summary["lines"] == summary["resolved"] + len(summary["unresolved"])  # none dropped
    got = {u["line"]: u["reason"] for u in summary["unresolved"]}
    assert set(got) == set(BAD_LINES)
    for line, words in BAD_LINES.items():
        assert words in got[line], (line, got[line])
    stored = HospitalCatalog.load(tmp_path / "data" / "drug-catalog.json")
    assert stored.ingredients_of("40.100") == ("amiodarone",)
    assert stored.ingredients_of("40.300") == ("amoxicillin", "clavulanic acid")
    assert stored.ingredients_of("00.0000") is None  # QĐ 4750: names no single drug
    assert stored.ingredients_of("40.900") is None  # ambiguous: never guessed
    assert stored.ingredients_of("40.800") is None  # half-recognised combination
    assert stored.ingredients_of("40.100+40.200") == ("amiodarone", "simvastatin")
    assert stored.ingredients_of_brand("KLARIMAX 500 mg viên nén") == ("clarithromycin",)
    assert stored.ingredients_of_brand("Sedacoron") == ("amiodarone",)
    assert stored.ingredients_of_brand("Coumadine 5mg") == ("warfarin",)  # line without code


def test_human_summary_names_the_lines(tmp_path):
    out = _import(tmp_path, CATALOGUE)
    assert out.stdout.startswith(f"{CATALOGUE}: 13 lines, 7 resolved, 6 unresolved")
    for line in BAD_LINES:
        assert f"  line {line}: " in out.stdout


def test_xlsx_import_matches_csv(tmp_path):
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    with CATALOGUE.open(encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter=";"))
    sheet.append(["Danh mục thuốc bệnh viện"])  # a title row above the header is common
    sheet.append([h.lower() for h in rows[0]])
    for row in rows[1:]:
        sheet.append(row)
    path = tmp_path / "danh-muc.xlsx"
    book.save(path)
    result = import_catalog(path, real_kb())
    from_csv = import_catalog(CATALOGUE, real_kb())
    assert (result.lines, result.resolved) == (from_csv.lines, from_csv.resolved) == (13, 7)
    assert result.catalog.codes == from_csv.catalog.codes
    assert [u.line for u in result.unresolved] == [u.line + 1 for u in from_csv.unresolved]


def test_title_row_is_not_taken_for_the_header(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("MA,TEN\n1,Paracetamol\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="lacks MA_THUOC, TEN_HOAT_CHAT, TEN_THUOC"):
        import_catalog(bad, real_kb())
    out = _import(tmp_path, bad)
    assert out.returncode == 2 and "lacks MA_THUOC" in out.stderr


def test_not_utf8_csv_says_how_to_save_it(tmp_path):
    bad = tmp_path / "cp1258.csv"
    bad.write_bytes("MA_THUOC,TEN_HOAT_CHAT,TEN_THUOC\n1,Paracetamol,Thuôc\n".encode("cp1258"))
    with pytest.raises(CatalogError, match="CSV UTF-8"):
        import_catalog(bad, real_kb())


# ---------------------------------------------------------------- the real app, after import
@pytest.fixture(scope="module")
def clients(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("catalog-app")
    settings = settings_for(tmp, development=True)
    import_catalog(CATALOGUE, real_kb()).catalog.save(catalog_path(settings))
    bare = settings_for(tmp_path_factory.mktemp("no-catalog"), development=True)
    with TestClient(create_app(settings, kb=real_kb())) as with_catalog, \
            TestClient(create_app(bare, kb=real_kb())) as without:
        yield with_catalog, without


def _check(client, lines, **fields):
    r = client.post(CHECK, json={**fields, "THUOC": lines})
    assert r.status_code == 200, r.text
    return r.json()


def _ddi(body):
    return {(tuple(sorted(a["drugs"])), a["severity"]) for a in body["alerts"]
            if a["kind"] == "drug-drug"}


def test_ma_thuoc_alone_identifies_the_drug(clients):
    with_catalog, without = clients
    lines = [{"MA_THUOC": "40.200"}, {"MA_THUOC": "00.0000", "TEN_THUOC": "Klarimax 500mg"}]
    body = _check(with_catalog, lines)
    assert body["recognised"] == ["simvastatin", "clarithromycin"]
    assert (("clarithromycin", "simvastatin"), "contraindicated") in _ddi(body)
    before = _check(without, lines)  # no catalogue: not recognised, and said so
    assert before["recognised"] == ["", ""]
    assert [a["kind"] for a in before["alerts"]].count("unrecognised-drug") == 2
    assert "MA_THUOC 40.200" in before["alerts"][0]["message_en"] + \
        before["alerts"][1]["message_en"]


def test_atc_code_sent_as_ma_thuoc_identifies_the_drug(clients):
    """Some HIS put the WHO ATC code in MA_THUOC: a full code names its substance, with or
    without an imported catalogue; a group code (C10AA, the statins) names no drug."""
    for client in clients:
        body = _check(client, [{"MA_THUOC": "J01FA09"}, {"MA_THUOC": "c10aa01"}])
        assert body["recognised"] == ["clarithromycin", "simvastatin"]
        assert (("clarithromycin", "simvastatin"), "contraindicated") in _ddi(body)
        group = _check(client, [{"MA_THUOC": "C10AA"}])
        assert group["recognised"] == [""]
        assert group["alerts"][0]["kind"] == "unrecognised-drug"
    from serving.cdss.catalog import DrugCodes
    from serving.cdss.coding import MA_THUOC_SYSTEM, Code, DrugCoder

    coder = DrugCoder(real_kb(), DrugCodes(real_kb()))  # CDS Hooks, MA_THUOC code system
    assert coder.by_code(Code(MA_THUOC_SYSTEM, "C01BD01")) == ("amiodarone",)
    assert coder.by_code(Code(MA_THUOC_SYSTEM, "40.100")) == ()  # no catalogue imported


def test_outside_list_code_resolves_by_the_lines_name(clients):
    with_catalog, _ = clients
    body = _check(with_catalog, [{"MA_THUOC": "40.200"},
                                 {"MA_THUOC": "00.0000", "TEN_HOAT_CHAT": "Clarithromycin"}])
    assert (("clarithromycin", "simvastatin"), "contraindicated") in _ddi(body)
    alone = _check(with_catalog, [{"MA_THUOC": "00.0000"}])  # the code names no drug
    assert alone["recognised"] == [""]
    assert alone["alerts"][0]["kind"] == "unrecognised-drug"


def test_brand_the_dictionary_lacks_is_known_from_the_catalogue(clients):
    with_catalog, without = clients
    assert _check(with_catalog, [{"TEN_THUOC": "Sedacoron 200mg"}])["recognised"] == \
        ["amiodarone"]
    assert _check(without, [{"TEN_THUOC": "Sedacoron 200mg"}])["recognised"] == [""]


def test_unknown_and_ambiguous_codes_are_not_recognised(clients):
    with_catalog, _ = clients
    body = _check(with_catalog, [{"MA_THUOC": "99.999"}, {"MA_THUOC": "40.900"}])
    assert body["recognised"] == ["", ""]
    messages = " ".join(a["message_en"] for a in body["alerts"])
    assert "MA_THUOC 99.999" in messages and "MA_THUOC 40.900" in messages


def test_xml130_line_with_only_ma_thuoc(clients):
    with_catalog, _ = clients
    xml = ("<GIAMDINHHS><TONG_HOP><MA_LK>1</MA_LK></TONG_HOP><CHITIEU_CHITIET_THUOC>"
           "<DSACH_CHI_TIET_THUOC><CHI_TIET_THUOC><MA_THUOC>40.100</MA_THUOC></CHI_TIET_THUOC>"
           "<CHI_TIET_THUOC><MA_THUOC>40.300</MA_THUOC></CHI_TIET_THUOC>"
           "</DSACH_CHI_TIET_THUOC></CHITIEU_CHITIET_THUOC></GIAMDINHHS>")
    r = with_catalog.post(CHECK, content=xml.encode(), headers={"Content-Type": "application/xml"})
    assert r.status_code == 200, r.text
    assert r.json()["recognised"] == ["amiodarone", "amoxicillin/clavulanic acid"]


def test_haidang_serve_loads_the_imported_catalogue(tmp_path):
    """`haidang cdss import-catalog` then `haidang serve` (a real uvicorn on a real port):
    MA_THUOC alone is checked."""
    import os
    import time

    import httpx

    from haidang.ground.processes import stop_process
    from tests.support.pacs import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update(HAIDANG_SERVING__DRUG_CATALOG=str(tmp_path / "data" / "drug-catalog.json"),
               HAIDANG_SECURITY__AUDIT_LOG=str(tmp_path / "audit.log"),
               HAIDANG_API_KEYS="catalog-test-key-0123456789")
    imported = subprocess.run([sys.executable, "-m", "haidang", "cdss", "import-catalog",
                               str(CATALOGUE)], capture_output=True, text=True, timeout=120,
                              env=env, cwd=tmp_path)
    assert imported.returncode == 1 and "7 resolved" in imported.stdout  # 6 lines reported
    proc = subprocess.Popen([sys.executable, "-m", "haidang", "serve", "--no-imaging",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "haidang serve did not get ready"
            time.sleep(0.5)
        r = httpx.post(f"http://127.0.0.1:{port}{CHECK}", timeout=10,
                       headers={"X-API-Key": "catalog-test-key-0123456789"},
                       json={"THUOC": [{"MA_THUOC": "40.200"}, {"MA_THUOC": "40.100"},
                                       {"MA_THUOC": "00.0000", "TEN_THUOC": "Klarimax"}]})
        assert r.status_code == 200, r.text
        assert r.json()["recognised"] == ["simvastatin", "amiodarone", "clarithromycin"]
        assert (("clarithromycin", "simvastatin"), "contraindicated") in _ddi(r.json())
    finally:
        stop_process(proc)


def test_entries_the_dictionary_no_longer_has_are_dropped_visibly(tmp_path, caplog):
    from serving.cdss.api import hospital_catalog

    settings = settings_for(tmp_path)
    HospitalCatalog({"40.100": ("amiodarone",), "40.990": ("a-retired-ingredient",)},
                    {"oldbrand": ("a-retired-ingredient", "amiodarone")}, {}
                    ).save(catalog_path(settings))
    with caplog.at_level("WARNING"):
        catalog = hospital_catalog(settings, real_kb())
    assert catalog.ingredients_of("40.100") == ("amiodarone",)
    assert catalog.ingredients_of("40.990") is None  # goes unrecognised, not half-checked
    assert catalog.ingredients_of_brand("Oldbrand") is None
    assert "a-retired-ingredient" in caplog.text and "import-catalog" in caplog.text
