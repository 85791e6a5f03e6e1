"""The worklist a radiologist works from, in headless Chromium (Debian's, driven by
Playwright; no download), over the real gateway, model and Orthanc with its web viewer.

Without a session the page asks to sign in and no API answers with patient data; a local
user signs in and sees patient, accession, age/sex, description, study time, verdict with
its probability band and priority; filters and search narrow the list; the viewer link
opens the study in Orthanc's web viewer and marks it read; "AI was wrong" is recorded, and
``haidang dataset export`` turns it into the label that ``haidang train`` reads. The page
refreshes itself when a new study arrives and switches between Vietnamese and English.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pydicom
import pytest

from dicom_gateway.runtime import Gateway
from dicom_gateway.signin import SignIn
from dicom_gateway.worklist import orthanc_id, worklist_app, worklist_rows
from haidang.ground import audit
from haidang.ground.settings import Settings
from haidang.testbed.orthanc import WEB_VIEWER, Orthanc
from tests.support.gateway_helpers import send_as_is, settings_env, wait_until
from tests.support.imaging_e2e import WebServer, copy_out, cxr_studies, imaging_settings
from tests.support.pacs import ORTHANC_BIN, free_port

pytestmark = pytest.mark.orthanc

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
PATIENTS = [  # name (UTF-8, as a Vietnamese RIS writes it), ID, accession, sex, age
    ("Trần^Thị Bình", "BN-0001", "ACC-5001", "F", "067Y"),
    ("NGUYEN^VAN AN", "BN-0002", "ACC-5002", "M", "045Y"),
    ("Lê^Minh Khoa", "BN-0003", "ACC-5003", "M", "008Y"),
    ("PHAM^THU HA", "BN-0004", "ACC-5004", "F", "072Y"),
]
PASSWORD = "mat-khau-bac-si-1"


def _patients(studies):
    for (_, files), (name, pid, acc, sex, age) in zip(studies, PATIENTS, strict=True):
        ds = pydicom.dcmread(files[0])
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.AccessionNumber = name, pid, acc
        ds.PatientSex, ds.PatientAge = sex, age
        ds.StudyDate, ds.StudyTime = "20261206", "081500"
        ds.save_as(files[0], enforce_file_format=True)


def _done(gw, uids):
    rows = {r.study_uid: r for r in worklist_rows(gw.index)}
    return all(u in rows and rows[u].status == "in-pacs" for u in uids) and rows


def test_worklist_sign_in_filters_viewer_review_and_export(tmp_path):
    from playwright.sync_api import sync_playwright

    pacs = Orthanc(tmp_path / "orthanc", binary=ORTHANC_BIN, plugins=[WEB_VIEWER])
    pacs.start()
    data = imaging_settings(tmp_path, pacs).model_dump(mode="json")
    data["security"] = {"audit_log": str(tmp_path / "audit.log")}
    data["worklist"] = {"viewer_url": f"{pacs.url}/web-viewer/app/viewer.html"
                                      "?series={OrthancSeriesID}"}
    settings = Settings.model_validate(data)
    studies = cxr_studies(tmp_path / "in", 4)
    _patients(studies)
    try:
        with Gateway(settings) as gw, \
                WebServer(worklist_app(settings, gw.index), free_port()) as web:
            SignIn(settings, lambda: gw.index).add_user("bs.lan", PASSWORD, "BS. Trần Thị Lan")
            for _, files in studies:  # the modality stores in PACS, as in the hospital
                assert all(r.returncode == 0 for r in send_as_is(files, pacs.dicom_port,
                                                                 called_ae=pacs.aet))
            for _, files in studies[:3]:
                send_as_is(files, gw.port)
            wait_until(lambda: _done(gw, [u for u, _ in studies[:3]]), timeout=90,
                       what="three studies analysed and in PACS")
            rows = {r.study_uid: r for r in worklist_rows(gw.index, settings)}
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1600, "height": 900})
                page = context.new_page()
                _without_session(page, web.url, tmp_path)
                _sign_in(page)
                _patient_fields(page, rows)
                _filters(page, rows)
                reviewed = _viewer_and_review(page, context, rows, pacs, tmp_path)
                # a new study appears without reloading the page
                send_as_is(studies[3][1], gw.port)
                page.wait_for_selector(f'tr[data-study-uid="{studies[3][0]}"]',
                                       timeout=60_000)
                page.click("#lang-en")
                assert page.locator("html").get_attribute("lang") == "en"
                assert page.locator("th").first.inner_text() == "Priority"
                assert page.locator("#updated").inner_text().startswith("Updated: ")
                page.screenshot(path=str(tmp_path / "en.png"), full_page=True)
                copy_out(tmp_path / "en.png", "worklist-en.png")
                page.click("#lang-vi")
                page.wait_for_timeout(300)
                shot = tmp_path / "worklist.png"
                page.screenshot(path=str(shot), full_page=True)
                copy_out(shot, "worklist.png")
                page.click("#signout")
                page.wait_for_selector("#signin:not([hidden])")
                assert page.request.get(f"{web.url}/api/worklist").status == 401
                browser.close()
        _export_has_the_correction(tmp_path, data, reviewed)
    finally:
        pacs.stop()
        audit.close_all()


def _without_session(page, url, tmp_path):
    page.goto(f"{url}/worklist")
    page.wait_for_selector("#signin:not([hidden])")
    page.screenshot(path=str(tmp_path / "signin.png"))
    copy_out(tmp_path / "signin.png", "worklist-signin.png")
    assert "Vui lòng đăng nhập" in page.locator("#signin").inner_text()
    assert page.locator("tr[data-study-uid]").count() == 0
    for path in ("/api/worklist", "/api/session", "/worklist/thumbnails/x.png"):
        r = page.request.get(url + path)
        assert r.status == 401 and "BN-000" not in r.text(), path
    r = page.request.post(f"{url}/api/worklist/1.2.3/review", data={"agrees": True})
    assert r.status == 401


def _sign_in(page):
    page.fill("#username", "bs.lan")
    page.fill("#password", "not-the-password")
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#signin-error:has-text('Sai tên đăng nhập')")
    page.fill("#password", PASSWORD)
    page.click("#signin button[type=submit]")
    page.wait_for_selector("tr[data-study-uid]")
    cookie = next(c for c in page.context.cookies() if c["name"] == "haidang_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert page.locator("#who").inner_text() == "BS. Trần Thị Lan"


def _patient_fields(page, rows):
    assert page.locator("html").get_attribute("lang") == "vi"
    assert "Danh sách ca chụp" in page.locator("h1").inner_text()
    trs = page.locator("tr[data-study-uid]")
    assert trs.count() == 3
    by_id = {p[1]: p for p in PATIENTS}
    priorities = []
    for i in range(trs.count()):
        tr = trs.nth(i)
        row = rows[tr.get_attribute("data-study-uid")]
        name, pid, acc, sex, age = by_id[row.patient_id]
        priorities.append(row.priority)
        assert tr.locator("td.patient").inner_text().splitlines() == \
            [name.replace("^", " "), pid]
        assert tr.locator("td.accession").inner_text() == acc
        assert tr.locator("td.agesex").inner_text() == \
            f"{int(age[:3])} tuổi / {'Nữ' if sex == 'F' else 'Nam'}"
        assert tr.locator("td.modality").inner_text() == row.modality in ("CR", "DX")
        assert tr.locator("td.description").inner_text() == "XQ NGUC THANG"
        assert tr.locator("td.studytime").inner_text() == "06/12/2026 08:15"
        if row.verdict == "not-analysed":  # the child: refused by the gate, with its reason
            assert row.probability is None and row.priority == "ROUTINE" and age == "008Y"
            assert tr.locator("td.verdict").inner_text() == \
                f"Không phân tích (ngoài phạm vi sử dụng của mô hình): {row.not_analysed_vi}"
            assert "tuổi" in row.not_analysed_vi
            continue
        assert tr.locator("td.probability").inner_text().splitlines()[0] == \
            f"{100 * row.probability:.1f}%"
        assert tr.locator("td.probability small").inner_text().startswith(row.band)
        expected = {"pneumonia": "Nghi ngờ viêm phổi", "abnormal": "Nghi ngờ bất thường",
                    "no urgent finding": "Không có dấu hiệu khẩn",
                    "normal": "Không phát hiện viêm phổi"}[row.verdict]
        assert tr.locator("td.verdict").inner_text() == expected
        assert tr.locator("td.ttf").inner_text().endswith(" s")
        assert tr.locator("img.thumb").evaluate("i => i.complete && i.naturalWidth > 0")
    assert priorities == sorted(priorities, key=lambda p: p != "URGENT")


def _filters(page, rows):
    def shown():
        page.wait_for_timeout(400)
        return sorted(page.locator("tr[data-study-uid]").evaluate_all(
            "trs => trs.map(t => t.dataset.studyUid)"))

    urgent = sorted(u for u, r in rows.items() if r.priority == "URGENT")
    page.select_option("#f-priority", "URGENT")
    page.wait_for_function(f"document.querySelectorAll('tr[data-study-uid]').length"
                           f" === {len(urgent)}")
    assert shown() == urgent
    page.select_option("#f-priority", "")
    page.select_option("#f-verdict", "normal")
    assert shown() == sorted(u for u, r in rows.items() if r.verdict == "normal")
    page.select_option("#f-verdict", "")
    page.fill("#q", "acc-5002")
    assert shown() == [u for u, r in rows.items() if r.accession_number == "ACC-5002"]
    page.fill("#q", "trần")
    assert shown() == [u for u, r in rows.items() if r.patient_id == "BN-0001"]
    page.fill("#q", "")
    page.check("#f-unread")
    assert len(shown()) == 3  # nothing read yet
    page.uncheck("#f-unread")
    assert len(shown()) == 3


def _viewer_and_review(page, context, rows, pacs, tmp_path) -> str:
    uid = next(u for u, r in rows.items() if r.patient_id == "BN-0002")
    row = rows[uid]
    link = page.locator(f'tr[data-study-uid="{uid}"] a.viewer')
    # Orthanc's own IDs: the study's, and the image series the link opens is one of its series
    study = httpx.get(f"{pacs.url}/studies/{orthanc_id(row.patient_id, uid)}", timeout=10)
    href = link.get_attribute("href")
    assert href == row.viewer_url and href.startswith(f"{pacs.url}/web-viewer/app/viewer.html")
    series_id = href.rsplit("series=", 1)[1]
    assert series_id in study.json()["Series"]
    with context.expect_page() as opened:
        link.click()
    viewer = opened.value
    with viewer.expect_response(lambda r: series_id in r.url and r.status == 200,
                                timeout=30_000):
        viewer.wait_for_load_state()
    viewer.wait_for_timeout(1500)  # let the viewer draw the image, for the screenshot
    shot = tmp_path / "viewer.png"
    viewer.screenshot(path=str(shot))
    copy_out(shot, "worklist-viewer.png")
    viewer.close()
    page.wait_for_selector(f'tr[data-study-uid="{uid}"].read')
    page.check("#f-unread")
    page.wait_for_function("document.querySelectorAll('tr[data-study-uid]').length === 2")
    page.uncheck("#f-unread")
    page.wait_for_function("document.querySelectorAll('tr[data-study-uid]').length === 3")

    page.once("dialog", lambda d: d.accept("xẹp phổi, không phải viêm phổi"
                                           if row.finding else "đông đặc thùy dưới phải"))
    page.click(f'tr[data-study-uid="{uid}"] button.wrong')
    page.wait_for_selector(f'tr[data-study-uid="{uid}"] td.review span.done.wrong')
    assert page.locator(f'tr[data-study-uid="{uid}"] td.review').inner_text().startswith(
        "AI sai: ")
    other = next(u for u in rows if u != uid and rows[u].verdict != "not-analysed")
    page.click(f'tr[data-study-uid="{other}"] button.agree')
    page.wait_for_selector(f'tr[data-study-uid="{other}"] td.review span.done.agree')
    return uid


def _export_has_the_correction(tmp_path, data, reviewed):
    records = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    reviews = [r for r in records if r["event"] == "review"]
    assert [r["agrees"] for r in reviews] == [False, True]
    assert any(r["event"] == "access" and r["caller"] == "user:bs.lan" for r in records)

    out = tmp_path / "export"
    env = settings_env({k: data[k] for k in ("gateway", "security")})
    res = subprocess.run([sys.executable, "-m", "haidang", "dataset", "export", "--out",
                          str(out), "--secret", str(tmp_path / "deid.key")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    # the child's study was refused by the intended-use gate: it has no label to train on
    assert "3 labelled in" in res.stdout and "(2 by radiologists' reviews" in res.stdout
    rows = list(csv.DictReader((out / "labels.csv").open(encoding="utf-8")))
    key = {r["pseudonym"]: r["original"] for r in csv.DictReader(
        (tmp_path / "export-reid-key.csv").open()) if r["kind"] == "study_uid"}
    by_study = {key[Path(r["path"]).parent.name]: r for r in rows}
    corrected = by_study[reviewed]
    ai = next(r for r in reviews if not r["agrees"])["ai_verdict"]
    assert corrected["label_source"] == "radiologist-corrected"
    assert corrected["label"] == {"pneumonia": "normal", "abnormal": "normal",
                                  "no urgent finding": "abnormal"}[ai]
    assert corrected["findings"] == {"normal": "No Finding", "abnormal": "Abnormal"}[
        corrected["label"]]
    assert (out / "images" / corrected["image"]).is_file()
    assert sorted(r["label_source"] for r in rows).count("radiologist-agreed") == 1

    from training.data import load_dicom_folder

    images = load_dicom_folder(out, out / "labels.csv")
    assert len(images) == len(rows) == 3
