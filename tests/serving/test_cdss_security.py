"""CDS Hooks JWT as the spec requires, against the real app: only asymmetric signatures
from configured keys and allow-listed issuers, `aud` = the called URL, short-lived,
no replay. Every refusal is a bare 401 that does not say why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient

from haidang.ground.keys import ApiKeys, Unauthorized
from serving.cdss.app import create_app
from serving.cdss.security import ReplayStore
from tests.support.cdss_support import FIXTURES, ISSUER, Signer, real_kb, settings_for

SELECT = "/cds-services/haidang-prescription-select"
AUD = "http://testserver" + SELECT
REQUEST = json.loads((FIXTURES / "cds-order-select.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def signers():
    return Signer("his-ec", "ES384"), Signer("his-rsa", "RS384")


@pytest.fixture(scope="module")
def client(signers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jwt")
    jwks = {"keys": [*signers[0].jwks["keys"], *signers[1].jwks["keys"],
                     {"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(
                         b"a-shared-secret-is-not-an-identity").decode().rstrip("=")}]}
    (tmp / "jwks.json").write_text(json.dumps(jwks), encoding="utf-8")
    settings = settings_for(tmp, jwks_file=str(tmp / "jwks.json"), allowed_issuers=[ISSUER])
    with TestClient(create_app(settings, kb=real_kb())) as c:
        yield c


def call(client, token, path=SELECT, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(path, json=body or REQUEST, headers=headers)


def assert_refused(response):
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}  # nothing about why
    assert response.headers["www-authenticate"] == "Bearer"


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_valid_tokens_from_both_keys_are_accepted(client, signers):
    for signer in signers:
        r = call(client, signer.token(AUD))
        assert r.status_code == 200, r.text
        assert r.json()["cards"] is not None


def test_wrong_audience(client, signers):
    assert_refused(call(client, signers[0].token("http://testserver/cds-services/other")))
    assert_refused(call(client, signers[0].token("https://evil.example" + SELECT)))


def test_token_for_one_service_is_not_valid_for_another(client, signers):
    token = signers[0].token(AUD)
    assert_refused(call(client, token, path="/cds-services/haidang-prescription-sign"))


def test_expired(client, signers):
    now = int(time.time())
    assert_refused(call(client, signers[0].token(AUD, iat=now - 600, exp=now - 120)))


def test_not_before_in_the_future(client, signers):
    now = int(time.time())
    assert_refused(call(client, signers[0].token(AUD, nbf=now + 240, exp=now + 290)))


def test_lifetime_over_five_minutes(client, signers):
    assert_refused(call(client, signers[0].token(AUD, exp=int(time.time()) + 3600)))


def test_replayed_jti(client, signers):
    token = signers[1].token(AUD)
    assert call(client, token).status_code == 200
    assert_refused(call(client, token))


def test_missing_claims(client, signers):
    assert_refused(call(client, signers[0].token(AUD, jti=None)))
    assert_refused(call(client, signers[0].token(AUD, exp=None)))


def test_unknown_issuer(client, signers):
    assert_refused(call(client, signers[0].token(AUD, iss="https://khac.example")))


def test_alg_none(client):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUD, "exp": now + 60, "iat": now, "jti": "none-1"}
    token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    assert_refused(call(client, token))


def test_hs256_with_the_public_key_as_secret(client, signers):
    """The classic algorithm-confusion attack: HMAC keyed with the published public key."""
    now = int(time.time())
    pem = signers[1].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = {"iss": ISSUER, "aud": AUD, "exp": now + 60, "iat": now, "jti": "hs-1"}
    header = {"alg": "HS256", "kid": "his-rsa", "typ": "JWT"}
    signing_input = f"{_b64(header)}.{_b64(claims)}".encode()
    sig = base64.urlsafe_b64encode(hmac.new(pem, signing_input, hashlib.sha256).digest())
    assert_refused(call(client, signing_input.decode() + "." + sig.decode().rstrip("=")))


def test_hs256_with_a_shared_secret_from_the_jwks(client):
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "aud": AUD, "exp": now + 60, "jti": "hs-2"},
                       b"a-shared-secret-is-not-an-identity", algorithm="HS256",
                       headers={"kid": "shared"})
    assert_refused(call(client, token))


def test_key_not_in_the_jwks(client):
    stranger = Signer("his-ec", "ES384")  # same kid, different key
    assert_refused(call(client, stranger.token(AUD)))
    assert_refused(call(client, Signer("unknown-kid", "ES384").token(AUD)))


def test_no_or_garbage_authorization(client):
    assert_refused(call(client, None))
    assert_refused(call(client, "not.a.jwt"))
    r = client.post(SELECT, json=REQUEST, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_refused(r)


def test_feedback_needs_a_token_too(client, signers):
    body = {"feedback": [{"card": "6a1f0c1e-0000-4000-8000-000000000000",
                          "outcome": "accepted"}]}
    assert_refused(client.post(SELECT + "/feedback", json=body))
    r = client.post(SELECT + "/feedback", json=body,
                    headers={"Authorization": f"Bearer {signers[0].token(AUD + '/feedback')}"})
    assert r.status_code == 200


def test_public_url_sets_the_audience(tmp_path, signers):
    signers[0].write_jwks(tmp_path / "jwks.json")
    settings = settings_for(tmp_path, jwks_file=str(tmp_path / "jwks.json"),
                            allowed_issuers=[ISSUER], public_url="https://cdss.benhvien.example/")
    with TestClient(create_app(settings, kb=real_kb())) as c:
        assert_refused(call(c, signers[0].token(AUD)))
        ok = call(c, signers[0].token("https://cdss.benhvien.example" + SELECT))
        assert ok.status_code == 200


def test_without_jwks_nothing_is_trusted(tmp_path, signers):
    with TestClient(create_app(settings_for(tmp_path, allowed_issuers=[ISSUER]),
                               kb=real_kb())) as c:
        assert_refused(call(c, signers[0].token(AUD)))


def test_refusals_are_audited_with_the_reason(client, signers):
    call(client, signers[0].token(AUD, iss="https://khac.example"))
    audit = client.app.state.cdss.audit
    audit.close()
    records = [json.loads(x) for x in audit.path.read_text(encoding="utf-8").splitlines()]
    assert any(r["event"] == "denied" and r["reason"] == "issuer not in allowlist"
               for r in records)


# ---------------------------------------------------------------------- units
def test_api_keys_from_environment():
    keys = ApiKeys.from_settings([], environ={"HAIDANG_API_KEYS": " k1 , k2,,"})
    assert keys.verify("k2").id.startswith("key:")
    assert "k2" not in keys.verify("k2").id
    for bad in ("", None, "k3", "k1 "):
        with pytest.raises(Unauthorized):
            keys.verify(bad)
    assert not ApiKeys.from_settings([], environ={})


def test_replay_store_forgets_expired_and_stays_bounded():
    store = ReplayStore(max_entries=3)
    now = 1000.0
    assert store.check_and_add("a", now + 60, now)
    assert not store.check_and_add("a", now + 60, now)
    for key in "bcde":
        assert store.check_and_add(key, now + 60, now)
    assert len(store._seen) <= 3
    assert store.check_and_add("x", now + 60, now + 500)  # old ones expired and purged


def test_a_token_replayed_to_another_worker_is_refused(tmp_path, signers):
    """Two app instances on one settings file stand for two uvicorn workers."""
    signers[0].write_jwks(tmp_path / "jwks.json")
    settings = settings_for(tmp_path, jwks_file=str(tmp_path / "jwks.json"),
                            allowed_issuers=[ISSUER])
    with TestClient(create_app(settings, kb=real_kb())) as a, \
            TestClient(create_app(settings, kb=real_kb())) as b:
        token = signers[0].token(AUD)
        assert call(a, token).status_code == 200
        assert_refused(call(b, token))
        assert call(b, signers[0].token(AUD)).status_code == 200


def test_shared_replay_store_across_connections(tmp_path):
    from serving.cdss.shared import SharedState

    one, two = SharedState(tmp_path / "s.sqlite"), SharedState(tmp_path / "s.sqlite")
    now = time.time()
    assert one.check_and_add("iss\x00j1", now + 60, now)
    assert not two.check_and_add("iss\x00j1", now + 60, now)
    assert two.check_and_add("iss\x00j1", now + 900, now + 600)  # its token long expired
    one.close()
    two.close()


# ---------------------------------------------------------------------- issue 16: the JWT matrix
def test_iat_sub_and_kid_are_required(client, signers):
    assert_refused(call(client, signers[0].token(AUD, iat=None)))
    assert_refused(call(client, signers[0].token(AUD, sub=None)))
    now = int(time.time())
    no_kid = jwt.encode({"iss": ISSUER, "sub": "s", "aud": AUD, "iat": now, "exp": now + 60,
                         "jti": "no-kid-1"}, signers[0].private, algorithm="ES384")
    assert_refused(call(client, no_kid))
    assert call(client, signers[0].token(AUD)).status_code == 200  # the same, complete


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_every_symmetric_algorithm_is_refused(client, alg):
    now = int(time.time())
    token = jwt.encode({"iss": ISSUER, "sub": "s", "aud": AUD, "iat": now, "exp": now + 60,
                        "jti": f"sym-{alg}"}, b"a-shared-secret-is-not-an-identity-" * 2,
                       algorithm=alg, headers={"kid": "shared"})
    assert_refused(call(client, token))


def _issuer_app(tmp_path, **issuer):
    from haidang.ground.settings import TrustedIssuer

    settings = settings_for(tmp_path, allowed_issuers=[])
    settings.cds_hooks.issuers = [TrustedIssuer(iss=ISSUER, **issuer)]
    settings.cds_hooks.jwks_refresh_s = 0.0
    return TestClient(create_app(settings, kb=real_kb()))


def test_jwks_url_is_fetched_and_refreshed_on_an_unknown_kid(tmp_path):
    from tests.support.fhir_server import JsonEndpoint

    old, new = Signer("k-2026-01", "ES384"), Signer("k-2026-07", "RS384")
    with JsonEndpoint({"jwks.json": old.jwks}, prefix="") as ehr, \
            _issuer_app(tmp_path, jwks_url=ehr.base + "/jwks.json") as c:
        assert call(c, old.token(AUD)).status_code == 200
        assert call(c, old.token(AUD)).status_code == 200
        assert len(ehr.requests) == 1  # cached
        assert_refused(call(c, new.token(AUD)))  # not published yet (one re-read)
        ehr.routes["jwks.json"] = {"keys": old.jwks["keys"] + new.jwks["keys"]}  # key rotation
        assert call(c, new.token(AUD)).status_code == 200
        assert len(ehr.requests) == 3


def test_jwks_refresh_is_rate_limited(tmp_path):
    from haidang.ground.settings import TrustedIssuer
    from tests.support.fhir_server import JsonEndpoint

    signer = Signer("k1", "ES384")
    with JsonEndpoint({"jwks.json": signer.jwks}, prefix="") as ehr:
        settings = settings_for(tmp_path)
        settings.cds_hooks.issuers = [TrustedIssuer(iss=ISSUER, jwks_url=ehr.base + "/jwks.json")]
        with TestClient(create_app(settings, kb=real_kb())) as c:
            assert call(c, signer.token(AUD)).status_code == 200
            for n in range(5):  # a flood of unknown kids does not hammer the EHR
                assert_refused(call(c, Signer(f"x{n}", "ES384").token(AUD)))
        assert len(ehr.requests) == 1


def test_jwks_file_is_reread_on_an_unknown_kid(tmp_path):
    old, new = Signer("f1", "ES384"), Signer("f2", "ES384")
    path = old.write_jwks(tmp_path / "ehr-jwks.json")
    with _issuer_app(tmp_path, jwks_file=str(path)) as c:
        assert call(c, old.token(AUD)).status_code == 200
        assert_refused(call(c, new.token(AUD)))
        new.write_jwks(path)
        assert call(c, new.token(AUD)).status_code == 200


def test_jku_honoured_only_as_the_issuers_configured_url(tmp_path):
    from tests.support.fhir_server import JsonEndpoint

    signer, attacker = Signer("k1", "ES384"), Signer("k1", "ES384")
    with JsonEndpoint({"jwks.json": signer.jwks}, prefix="") as ehr, \
            JsonEndpoint({"jwks.json": attacker.jwks}, prefix="") as evil, \
            _issuer_app(tmp_path, jwks_url=ehr.base + "/jwks.json") as c:
        def with_jku(who, url):
            now = int(time.time())
            return jwt.encode({"iss": ISSUER, "sub": "s", "aud": AUD, "iat": now,
                               "exp": now + 60, "jti": str(time.time_ns())}, who.private,
                              algorithm="ES384", headers={"kid": "k1", "jku": url})
        assert call(c, with_jku(signer, ehr.base + "/jwks.json")).status_code == 200
        assert_refused(call(c, with_jku(attacker, evil.base + "/jwks.json")))
        assert_refused(call(c, with_jku(signer, evil.base + "/jwks.json")))
        assert evil.requests == []  # never fetched
    # an issuer trusted through the shared JWKS file has no URL: any jku is refused
    plain = Signer("p1", "ES384")
    plain.write_jwks(tmp_path / "shared.json")
    settings = settings_for(tmp_path, jwks_file=str(tmp_path / "shared.json"),
                            allowed_issuers=[ISSUER])
    with TestClient(create_app(settings, kb=real_kb())) as c:
        now = int(time.time())
        token = jwt.encode({"iss": ISSUER, "sub": "s", "aud": AUD, "iat": now, "exp": now + 60,
                            "jti": "jku-shared"}, plain.private, algorithm="ES384",
                           headers={"kid": "p1", "jku": "https://his.benhvien.example/jwks"})
        assert_refused(call(c, token))


def test_clock_skew_is_configurable(tmp_path):
    signer = Signer("k1", "RS384")
    signer.write_jwks(tmp_path / "jwks.json")
    now = int(time.time())
    for skew, expected in ((0.0, 401), (120.0, 200)):
        settings = settings_for(tmp_path, jwks_file=str(tmp_path / "jwks.json"),
                                allowed_issuers=[ISSUER])
        settings.cds_hooks.clock_skew_s = skew
        with TestClient(create_app(settings, kb=real_kb())) as c:
            late = signer.token(AUD, iat=now - 100, exp=now - 30)  # expired 30 s ago
            assert call(c, late).status_code == expected


def test_an_issuer_needs_exactly_one_jwks_source():
    from haidang.ground.settings import SettingsError, load_settings

    for issuer in ({"iss": ISSUER}, {"iss": ISSUER, "jwks_url": "https://x/j",
                                     "jwks_file": "/etc/j.json"}):
        with pytest.raises(SettingsError, match="exactly one of jwks_url and jwks_file"):
            load_settings(environ={"HAIDANG_CDS_HOOKS__ISSUERS": json.dumps([issuer])})
