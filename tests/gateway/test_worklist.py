"""The worklist page in headless Chromium (Debian's, driven by Playwright; no download).

Studies go through the real gateway and Orthanc; the page must list them with verdict,
probability, time to flag and the visual-summary thumbnail, URGENT first, refresh itself
when a new study arrives, and switch between Vietnamese and English.
"""

from __future__ import annotations

import pytest

from dicom_gateway.runtime import Gateway
from dicom_gateway.worklist import worklist_app, worklist_rows
from tests.support.gateway_helpers import send_as_is, wait_until
from tests.support.imaging_e2e import WebServer, copy_out, cxr_studies, imaging_settings
from tests.support.pacs import free_port

pytestmark = pytest.mark.orthanc

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _done(gw, uids):
    rows = {r["study_uid"]: r for r in worklist_rows(gw.index)}
    return all(u in rows and rows[u]["status"] == "in-pacs" for u in uids) and rows


def test_worklist_page_lists_flags_refreshes_and_switches_language(tmp_path, orthanc):
    from playwright.sync_api import sync_playwright

    settings = imaging_settings(tmp_path, orthanc)
    studies = cxr_studies(tmp_path / "in", 4)
    with Gateway(settings) as gw, WebServer(worklist_app(settings, gw.index), free_port()) as web:
        for _, files in studies[:3]:
            send_as_is(files, gw.port)
        wait_until(lambda: _done(gw, [u for u, _ in studies[:3]]), timeout=90,
                   what="three studies analysed and in PACS")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{web.url}/worklist")
            page.wait_for_selector("tr[data-study-uid]")
            assert page.locator("html").get_attribute("lang") == "vi"
            assert "Danh sách ca chụp" in page.locator("h1").inner_text()

            api = {r["study_uid"]: r for r in worklist_rows(gw.index)}
            trs = page.locator("tr[data-study-uid]")
            assert trs.count() == 3
            priorities = []
            for i in range(trs.count()):
                tr = trs.nth(i)
                row = api[tr.get_attribute("data-study-uid")]
                priorities.append(row["priority"])
                assert tr.locator("td.probability").inner_text() == \
                    f"{100 * row['probability']:.1f}%"
                assert tr.locator("td.ttf").inner_text().endswith(" s")
                expected = "Nghi ngờ viêm phổi" if row["finding"] else "Không phát hiện viêm phổi"
                assert tr.locator("td.verdict").inner_text() == expected
                img = tr.locator("img.thumb")
                assert img.evaluate("i => i.complete && i.naturalWidth > 0")
            assert priorities == sorted(priorities, key=lambda p: p != "URGENT")

            # a new study appears without reloading the page
            send_as_is(studies[3][1], gw.port)
            page.wait_for_selector(f'tr[data-study-uid="{studies[3][0]}"]', timeout=60_000)

            page.click("#lang-en")
            assert page.locator("html").get_attribute("lang") == "en"
            assert page.locator("th").first.inner_text() == "Priority"
            assert page.locator("h1").inner_text().startswith("Hai Dang")
            page.wait_for_timeout(500)
            shot = tmp_path / "worklist.png"
            page.click("#lang-vi")
            page.screenshot(path=str(shot), full_page=True)
            copy_out(shot, "worklist.png")
            browser.close()
