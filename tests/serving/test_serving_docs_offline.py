"""/docs works on a hospital network without internet: a real Chromium, every request that
leaves the machine refused, renders the operation list of a real `haidang serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx

from tests.support.pacs import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def test_docs_render_the_operations_with_the_network_cut_off(tmp_path):
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update(HAIDANG_SECURITY__DEVELOPMENT="true",
               HAIDANG_SECURITY__AUDIT_LOG=str(tmp_path / "audit.log"))
    proc = subprocess.Popen([sys.executable, "-m", "haidang", "serve", "--no-imaging",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    refused: list[str] = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.route("**/*", only_loopback)
            page.goto(f"{base}/docs")
            page.wait_for_selector(".opblock", timeout=30_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert refused == [], refused  # the page asked for nothing outside the machine
    assert "/api/v1/prescriptions/check" in [p.replace("\u200b", "") for p in paths], paths
    assert any("/cds-services" in p for p in paths), paths
