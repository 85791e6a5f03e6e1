"""Worklist sign-in over HTTP: local users (Argon2), session cookies, CSRF, API keys in
headers only, every access audited, and no patient data without a session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_gateway.index import Index, Job
from dicom_gateway.signin import SESSION_COOKIE, SignIn
from dicom_gateway.worklist import worklist_app
from haidang.ground import audit
from haidang.ground.settings import Settings

pytest_plugins = ["tests.support.postgres_fixtures"]
REPO = Path(__file__).resolve().parents[2]
HEADER = {"PatientName": "NGUYEN^VAN AN", "PatientID": "BN-2026-0042",
          "AccessionNumber": "ACC-7788", "PatientSex": "M", "PatientAge": "067Y",
          "Modality": "CR", "StudyDescription": "XQ NGUC THANG", "StudyDate": "20261205",
          "StudyTime": "231500", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1"}
UID = "1.2.826.0.1.3680043.8.498.4242"


def _settings(tmp_path, **security) -> Settings:
    return Settings.model_validate({
        "gateway": {"spool_dir": str(tmp_path / "spool"),
                    "database_url": f"sqlite:///{tmp_path / 'h.db'}"},
        "worklist": {"viewer_url": "https://pacs.example/view?study={StudyInstanceUID}"
                                   "&acc={AccessionNumber}"},
        "security": {"audit_log": str(tmp_path / "audit.log"), **security}})


def _analysed_study(index: Index) -> None:
    """A study indexed as the gateway does at ingest, with a current AI result."""
    index.record_instance(sop_uid=UID + ".1", study_uid=UID, series_uid=UID + ".2",
                          sop_class_uid=HEADER["SOPClassUID"],
                          transfer_syntax="1.2.840.10008.1.2.1",
                          path="instances/x.dcm", size=1, calling_ae="CR1", attrs=HEADER,
                          quiet_period_s=0.0, now=1_765_000_000.0)
    index.assemble_due(now=1_765_000_001.0)
    job = index.claim_job("w", 60, now=1_765_000_002.0)
    index.complete_job(Job(job.id, UID, 1, 1), [{
        "analysis": "cxr-pneumonia", "state": "current", "priority": "URGENT",
        "summary": {"verdict": "pneumonia", "finding": True, "probability": 0.912,
                    "threshold": 0.857568}}], now=1_765_000_003.0)


@pytest.fixture
def site(tmp_path):
    settings = _settings(tmp_path, api_keys=["machine-key-1"])
    index = Index(settings.gateway.database_url)
    _analysed_study(index)
    signin = SignIn(settings, lambda: index)
    assert signin.add_user("bs.lan", "mat-khau-dai-1", "BS. Trần Thị Lan")
    # https: the session cookie is Secure, and the client sends it back only over HTTPS
    client = TestClient(worklist_app(settings, index), base_url="https://testserver")
    yield settings, index, client
    index.close()
    audit.close_all()


PATIENT_ROUTES = [("get", "/api/worklist"), ("get", "/api/session"),
                  ("get", "/worklist/thumbnails/x.png"),
                  ("post", f"/api/worklist/{UID}/review"), ("post", f"/api/worklist/{UID}/read")]


def test_no_patient_data_without_a_session_and_no_key_in_urls(site):
    settings, _, client = site
    for method, path in PATIENT_ROUTES:
        r = getattr(client, method)(path, **({"json": {"agrees": True}} if method == "post"
                                             else {}))
        assert r.status_code == 401, path
        assert "đăng nhập" in r.json()["detail"] and "NGUYEN" not in r.text
    # the old key-in-URL flow is gone: a key in the address opens nothing, sets no cookie
    r = client.get("/api/worklist?key=machine-key-1")
    assert r.status_code == 401 and "set-cookie" not in r.headers
    page = client.get("/worklist?key=machine-key-1")
    assert page.status_code == 200 and "set-cookie" not in page.headers
    assert "NGUYEN" not in page.text and "Vui lòng đăng nhập" in page.text
    # programs: the key in a header
    r = client.get("/api/worklist", headers={"X-API-Key": "machine-key-1"})
    assert r.status_code == 200 and r.json()["studies"][0]["patient_id"] == "BN-2026-0042"
    assert client.get("/api/worklist", headers={"X-API-Key": "wrong"}).status_code == 401


def test_sign_in_session_cookie_csrf_review_and_audit(site):
    settings, index, client = site
    assert client.post("/api/signin", json={"username": "bs.lan", "password": "wrong-one-x"}
                       ).status_code == 401
    assert client.post("/api/signin", json={"username": "nobody", "password": "x"}
                       ).status_code == 401
    r = client.post("/api/signin", json={"username": "bs.lan", "password": "mat-khau-dai-1"})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attr in cookie
    csrf = r.json()["csrf"]
    token = client.cookies.get(SESSION_COOKIE)
    assert token and token not in json.dumps([list(x) for x in index.query(
        "SELECT * FROM sessions")])  # only its SHA-256 is stored

    rows = client.get("/api/worklist").json()["studies"]
    row = rows[0]
    assert (row["patient_name"], row["patient_id"], row["accession_number"]) == \
        ("NGUYEN VAN AN", "BN-2026-0042", "ACC-7788")
    assert (row["age"], row["sex"], row["modality"], row["description"]) == \
        ("067Y", "M", "CR", "XQ NGUC THANG")
    assert row["study_datetime"] == "05/12/2026 23:15"
    # received 2025-12-06 05:46:40 UTC = 12:46 in Ho Chi Minh City (UTC+7)
    assert row["received"] == "06/12/2025 12:46"
    assert (row["priority"], row["verdict"], row["band"]) == ("URGENT", "pneumonia", "90–100%")
    assert row["viewer_url"] == f"https://pacs.example/view?study={UID}&acc=ACC-7788"

    # filters
    def uids(**f):
        return [x["study_uid"] for x in client.get("/api/worklist", params=f).json()["studies"]]
    assert uids(q="van an") == uids(q="BN-2026") == uids(q="acc-77") == [UID]
    assert uids(q="PHAM") == [] and uids(priority="ROUTINE") == [] and uids(modality="CT") == []
    assert uids(priority="URGENT", modality="cr", verdict="pneumonia", unread="true") == [UID]

    # every change needs the session's CSRF token
    assert client.post(f"/api/worklist/{UID}/review", json={"agrees": False, "reason": "x"}
                       ).status_code == 403
    r = client.post(f"/api/worklist/{UID}/review", json={"agrees": False, "reason": ""},
                    headers={"X-CSRF-Token": csrf})
    assert r.status_code == 422  # "AI was wrong" needs a reason
    r = client.post(f"/api/worklist/{UID}/review", headers={"X-CSRF-Token": csrf},
                    json={"agrees": False, "reason": "xẹp phổi, không phải viêm phổi"})
    assert r.status_code == 200 and r.json()["label"] == "normal"
    row = client.get("/api/worklist").json()["studies"][0]
    assert (row["review"], row["reviewer"], row["read_by"]) == ("wrong", "BS. Trần Thị Lan",
                                                                "BS. Trần Thị Lan")
    assert uids(unread="true") == []

    # password guessing is slowed down: 10 tries per user name, then one a minute
    for _ in range(8):  # 2 tries for this name were made above
        assert client.post("/api/signin", json={"username": "bs.lan", "password": "guess-x"}
                           ).status_code == 401
    r = client.post("/api/signin", json={"username": "bs.lan", "password": "mat-khau-dai-1"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0

    # a sign-in from another site is refused (login CSRF)
    assert client.post("/api/signin", headers={"Origin": "https://evil.example"},
                       json={"username": "bs.lan", "password": "mat-khau-dai-1"}
                       ).status_code == 403
    assert client.post("/api/signout", headers={"X-CSRF-Token": csrf}).status_code == 200
    client.cookies.set(SESSION_COOKIE, token)  # the old token is dead after sign-out
    assert client.get("/api/worklist").status_code == 401

    audit.close_all()
    log = (Path(settings.security.audit_log)).read_text()
    records = [json.loads(x) for x in log.splitlines()]
    access = [(r["resource"], r["outcome"], r.get("caller")) for r in records
              if r["event"] == "access"]
    assert ("/api/worklist", "allowed", "user:bs.lan") in access
    assert any(r["event"] == "review" and r["agrees"] is False and r["label"] == "normal"
               for r in records)
    assert [r["outcome"] for r in records if r["event"] == "sign-in"] == \
        ["refused", "refused", "allowed"] + ["refused"] * 9
    for secret in ("mat-khau-dai-1", "NGUYEN", "BN-2026-0042", token):
        assert secret not in log
    assert audit.verify_chain(settings.security.audit_log)[1] == []


def test_users_command_adds_disables_and_ends_sessions(tmp_path):
    settings = _settings(tmp_path)
    env = {**os.environ, "HAIDANG_GATEWAY__DATABASE_URL": settings.gateway.database_url,
           "HAIDANG_SECURITY__AUDIT_LOG": str(tmp_path / "audit.log")}

    def haidang(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "haidang", "users", *args], cwd=REPO,
                              env=env, input=stdin, capture_output=True, text=True, timeout=60)

    assert haidang("add", "bs.minh", stdin="short\n").returncode == 2
    res = haidang("add", "bs.minh", "--display-name", "BS. Minh", stdin="mot-mat-khau-dai\n")
    assert res.returncode == 0, res.stderr
    assert haidang("add", "bs.minh", stdin="mot-mat-khau-dai\n").returncode == 2  # exists
    index = Index(settings.gateway.database_url)
    user = index.user("bs.minh")
    assert user.active and user.password_hash.startswith("$argon2id$")
    assert "mot-mat-khau-dai" not in user.password_hash
    signin = SignIn(settings, lambda: index)
    token, _ = signin.sign_in("bs.minh", "mot-mat-khau-dai")
    client = TestClient(worklist_app(settings, index), base_url="https://testserver")
    client.cookies.set(SESSION_COOKIE, token)
    assert client.get("/api/session").json()["name"] == "BS. Minh"
    assert haidang("disable", "bs.minh").returncode == 0
    assert client.get("/api/session").status_code == 401  # disabling ends the sessions
    assert signin.sign_in("bs.minh", "mot-mat-khau-dai") is None
    assert haidang("disable", "nobody").returncode == 2
    assert haidang("enable", "bs.minh").returncode == 0
    assert signin.sign_in("bs.minh", "mot-mat-khau-dai") is not None
    index.close()
    audit.close_all()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_read_views_and_reviews_on_both_dialects(tmp_path, dialect, request):
    url = (request.getfixturevalue("postgres") if dialect == "postgresql"
           else f"sqlite:///{tmp_path / 'h.db'}")
    index = Index(url)
    Index(url).close()  # a second opening finds the schema there (PostgreSQL: skips the DDL)
    _analysed_study(index)
    [study] = index.recent_studies(10)
    assert (study.header["PatientID"], study.series_uid, study.instance_count) == \
        ("BN-2026-0042", UID + ".2", 1)
    [result] = index.study_results([UID])
    assert (result.priority, result.summary["verdict"], result.exports) == ("URGENT",
                                                                            "pneumonia", 0)
    assert index.study_results([]) == [] and index.study_results(states=("failed",)) == []
    assert index.study_delivery(UID).result_at == 1_765_000_003.0
    assert index.add_user("bs.an", "$argon2id$x", "BS. An")
    assert not index.add_user("bs.an", "$argon2id$y", "other")
    index.record_review(UID, result.id, "BS. An", False, "pneumonia", "normal", "xẹp phổi")
    index.mark_read(UID, "someone later")  # the first reader is kept
    review = index.latest_reviews()[UID]
    assert (review.agrees, review.label, review.reason) == (False, "normal", "xẹp phổi")
    assert index.read_marks([UID])[UID].username == "BS. An"
    [inst] = index.received_instances(since=1_764_999_999.0)
    assert inst.attrs["AccessionNumber"] == "ACC-7788"
    assert index.received_instances(since=1_765_000_001.0) == []
    index.start_session("digest", "bs.an", "csrf", expires_at=2e9, now=1e9)
    assert index.session("digest", now=1e9).display_name == "BS. An"
    assert index.session("digest", now=2e9 + 1) is None
    assert index.set_user_active("bs.an", False) and index.session("digest", now=1e9) is None
    index.close()


def test_openid_connect_sign_in_in_chromium(tmp_path):
    """The hospital's provider: here oidc-provider-mock (PyPI; authlib's server side) on
    loopback, a different origin from the worklist, as Keycloak would be."""
    from oidc_provider_mock import User, run_server_in_thread
    from playwright.sync_api import sync_playwright

    from tests.gateway.test_worklist import CHROMIUM, CHROMIUM_ARGS
    from tests.support.imaging_e2e import WebServer
    from tests.support.pacs import free_port

    hoa = User(sub="u-7f3a", claims={"preferred_username": "bs.hoa", "name": "BS. Hoàng Hoa"})
    with run_server_in_thread(require_nonce=True, user_claims=[hoa]) as provider:
        data = _settings(tmp_path).model_dump(mode="json")
        data["worklist"]["oidc"] = {"issuer": f"http://localhost:{provider.server_port}",
                                    "client_id": "haidang-worklist", "client_secret": "s3cret"}
        settings = Settings.model_validate(data)
        index = Index(settings.gateway.database_url)
        _analysed_study(index)
        with WebServer(worklist_app(settings, index), free_port()) as web, \
                sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"{web.url}/worklist")
            page.click("#oidc")  # to the provider, which asks who signs in
            page.click("button[name=sub][value=u-7f3a]")
            page.wait_for_selector(f'tr[data-study-uid="{UID}"]')  # back, signed in
            assert page.locator("#who").inner_text() == "BS. Hoàng Hoa"
            assert "NGUYEN VAN AN" in page.locator("td.patient").inner_text()
            user = index.user("bs.hoa")
            assert user.active and user.password_hash == "!oidc"  # no local password
            assert SignIn(settings, lambda: index).sign_in("bs.hoa", "!oidc") is None

            # a callback that did not start in this browser signs nobody in
            other = browser.new_page()
            r = other.goto(f"{web.url}/signin/oidc/callback?state=forged&code=abc")
            assert r.status == 401 and "state mismatch" in other.content()
            # a disabled user is turned away even though the provider vouches for them
            assert index.set_user_active("bs.hoa", False)
            page.goto(f"{web.url}/worklist")
            page.wait_for_selector("#signin:not([hidden])")
            page.click("#oidc")
            page.click("button[name=sub][value=u-7f3a]")
            page.wait_for_selector("text=This user is disabled")
            browser.close()
        index.close()
    audit.close_all()
    records = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert [(r["method"], r["outcome"]) for r in records if r["event"] == "sign-in"] == \
        [("oidc", "allowed"), ("oidc", "refused"), ("oidc", "refused")]


def test_haidang_up_app_shows_no_patient_data_without_a_session(tmp_path):
    """The composed app of ``haidang up`` (CDSS + worklist) keeps the worklist's check."""
    from types import SimpleNamespace

    from haidang.web import create_app

    settings = _settings(tmp_path, api_keys=["machine-key-1"])
    index = Index(settings.gateway.database_url)
    _analysed_study(index)
    client = TestClient(create_app(settings, SimpleNamespace(index=index, port=0)),
                        base_url="https://testserver")
    for method, path in PATIENT_ROUTES:
        r = getattr(client, method)(path, **({"json": {"agrees": True}} if method == "post"
                                             else {}))
        assert r.status_code == 401 and "NGUYEN" not in r.text, path
    r = client.get("/api/worklist", headers={"X-API-Key": "machine-key-1"})
    assert r.status_code == 200 and r.json()["studies"][0]["patient_name"] == "NGUYEN VAN AN"
    index.close()
    audit.close_all()
