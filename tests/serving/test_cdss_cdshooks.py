"""CDS Hooks 2.0: discovery and responses validated against the spec's JSON shapes, the card
lifecycle from order-select to order-sign, indicators, language, feedback."""

from __future__ import annotations

import copy
import json

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from serving.cdss.app import create_app
from tests.support.cdss_support import FIXTURES, fixture_kb, real_kb, settings_for

SCHEMA = json.loads((FIXTURES / "cds-hooks-2.0.schema.json").read_text(encoding="utf-8"))
SELECT = "/cds-services/haidang-prescription-select"
SIGN = "/cds-services/haidang-prescription-sign"
BAD_PATIENT = {"resourceType": "Patient", "birthDate": "14/03/1958"}


def validate(kind: str, body: dict) -> None:
    schema = {**SCHEMA, "$ref": f"#/$defs/{kind}"}
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture
def client(tmp_path):
    app = create_app(settings_for(tmp_path, development=True), kb=real_kb())
    with TestClient(app) as c:
        c.audit_path = tmp_path / "audit.log"
        yield c


@pytest.fixture
def fixture_client(tmp_path):
    """The fixture knowledge base, which has rows of every severity."""
    app = create_app(settings_for(tmp_path, development=True), kb=fixture_kb())
    with TestClient(app) as c:
        yield c


def cards_about(response, *drugs):
    return [c for c in response["cards"]
            if all(d.lower() in c["detail"].lower() for d in drugs)]


def test_schema_rejects_what_the_spec_forbids():
    """The schema itself can fail: a too-long summary, a bad indicator, no source label."""
    good = {"cards": [{"summary": "ok", "indicator": "info", "source": {"label": "x"}}]}
    validate("response", good)
    for broken in (
        {"cards": [{"summary": "x" * 140, "indicator": "info", "source": {"label": "x"}}]},
        {"cards": [{"summary": "x", "indicator": "danger", "source": {"label": "x"}}]},
        {"cards": [{"summary": "x", "indicator": "info", "source": {}}]},
        {"cards": [{"summary": "x", "indicator": "info", "source": {"label": "x"},
                    "suggestions": [{"label": "y"}]}]},
        {"cards": [{"summary": "x", "indicator": "info", "source": {"label": "x"},
                    "uuid": "not-a-uuid"}]},
    ):
        with pytest.raises(AssertionError):
            validate("response", broken)


def test_discovery(client):
    body = client.get("/cds-services").json()
    validate("discovery", body)
    hooks = {s["id"]: s["hook"] for s in body["services"]}
    assert hooks == {"haidang-prescription-select": "order-select",
                     "haidang-prescription-sign": "order-sign"}
    assert all("patient" in s["prefetch"] and "conditions" in s["prefetch"]
               for s in body["services"])


def test_order_select_cards(client):
    r = client.post(SELECT, json=load("cds-order-select.json"))
    assert r.status_code == 200, r.text
    body = r.json()
    validate("response", body)
    [ddi] = cards_about(body, "amiodaron", "moxifloxacin")
    assert ddi["indicator"] == "critical"
    assert {o["code"] for o in ddi["overrideReasons"]} >= {"benefit-outweighs-risk"}
    assert ddi["selectionBehavior"] == "at-most-one"
    targets = {a["resourceId"] for s in ddi["suggestions"] for a in s["actions"]}
    assert targets == {"MedicationRequest/mr-draft-1", "MedicationRequest/mr-draft-2"}
    assert all(a["type"] == "delete" for s in ddi["suggestions"] for a in s["actions"])
    assert "Chống chỉ định" in ddi["summary"] and "QĐ 5948" in ddi["source"]["label"]
    assert "**Xử trí:**" in ddi["detail"]
    specificity = [c for c in body["cards"] if "J18" in c["summary"]]
    assert specificity and specificity[0]["indicator"] == "info"
    assert "overrideReasons" not in specificity[0]


def test_contraindicated_card_at_order_select_and_again_at_order_sign(client):
    """Issue 16: the critical card shown at order-select is not lost at order-sign (the last
    chance); only a repeat of the same hook for the same draft orders is quiet, and then
    only below major."""
    select = client.post(SELECT, json=load("cds-order-select.json")).json()
    [first] = cards_about(select, "amiodaron", "moxifloxacin")
    assert first["indicator"] == "critical"
    sign = client.post(SIGN, json=load("cds-order-sign.json")).json()
    validate("response", sign)
    [again] = cards_about(sign, "amiodaron", "moxifloxacin")
    assert again["indicator"] == "critical" and again["overrideReasons"]
    assert [c for c in sign["cards"] if "J18" in c["summary"]]  # another hook: shown
    [new] = cards_about(sign, "clarithromycin", "simvastatin")  # current med + new draft
    assert new["indicator"] == "critical"
    targets = {a["resourceId"] for s in new["suggestions"] for a in s["actions"]}
    assert targets == {"MedicationRequest/mr-draft-3"}  # never suggest deleting a current med
    repeat = client.post(SIGN, json=load("cds-order-sign.json")).json()
    assert cards_about(repeat, "amiodaron", "moxifloxacin")  # order-sign: always
    assert cards_about(repeat, "clarithromycin", "simvastatin")
    assert not [c for c in repeat["cards"] if "J18" in c["summary"]]  # same hook, same orders
    select_again = client.post(SELECT, json=load("cds-order-select.json")).json()
    assert select_again["cards"] == []  # same hook, same draft orders: not repeated


def test_another_encounter_gets_the_cards_again(client):
    client.post(SELECT, json=load("cds-order-select.json"))
    other = load("cds-order-sign.json")
    other["context"]["encounterId"] = "enc-2"
    sign = client.post(SIGN, json=other).json()
    assert cards_about(sign, "amiodaron", "moxifloxacin")


def test_order_sign_alone_shows_everything(client):
    sign = client.post(SIGN, json=load("cds-order-sign.json")).json()
    assert cards_about(sign, "amiodaron", "moxifloxacin")
    assert cards_about(sign, "clarithromycin", "simvastatin")


def test_english_by_accept_language(client):
    body = client.post(SELECT, json=load("cds-order-select.json"),
                       headers={"Accept-Language": "en-US,en;q=0.8"}).json()
    [ddi] = cards_about(body, "amiodarone", "moxifloxacin")
    assert ddi["summary"].startswith("Contraindicated combination")
    assert ddi["overrideReasons"][0]["display"].startswith("Benefit")
    assert len(ddi["summary"]) < 140


def test_indicators_and_minor_hidden(fixture_client):
    req = load("cds-order-sign.json")
    entries = req["context"]["draftOrders"]["entry"]
    for entry, text in zip(entries, ["Warfarin", "Ciprofloxacin", "Paracetamol"], strict=True):
        entry["resource"]["medicationCodeableConcept"]["text"] = text
    req["prefetch"]["medications"]["entry"] = []
    body = fixture_client.post(SIGN, json=req).json()
    validate("response", body)
    ind = {tuple(sorted(d for d in ("warfarin", "ciprofloxacin", "paracetamol")
                        if d in c["detail"].lower())): c["indicator"]
           for c in body["cards"] if "ATC" not in c["detail"]}
    assert ind[("ciprofloxacin", "warfarin")] == "warning"  # major
    assert ind[("paracetamol", "warfarin")] == "info"  # moderate
    assert ("ciprofloxacin", "paracetamol") not in ind  # minor: hidden by default


def test_minor_shown_when_configured(tmp_path):
    """[cdss] min_severity_cds_hooks = minor shows it as cards; the native API keeps its own
    threshold (moderate) and still hides it."""
    settings = settings_for(tmp_path, development=True)
    settings = settings.model_copy(update={"cdss": settings.cdss.model_copy(
        update={"min_severity_cds_hooks": "minor"})})
    app = create_app(settings, kb=fixture_kb())
    req = load("cds-order-sign.json")
    entries = req["context"]["draftOrders"]["entry"]
    for entry, text in zip(entries, ["Ciprofloxacin", "Paracetamol", "Amoxicilin"], strict=True):
        entry["resource"]["medicationCodeableConcept"]["text"] = text
    with TestClient(app) as c:
        body = c.post(SIGN, json=req).json()
        native = c.post("/api/v1/prescriptions/check", json={"THUOC": [
            {"TEN_THUOC": "Ciprofloxacin"}, {"TEN_THUOC": "Paracetamol"}]}).json()
    assert [x["indicator"] for x in body["cards"] if "Ảnh hưởng nhỏ" in x["detail"]] == ["info"]
    assert not [a for a in native["alerts"] if a["severity"] == "minor"]


def test_structured_fhir_dose_above_maximum(fixture_client):
    req = load("cds-order-select.json")
    req["context"].pop("selections")  # the fixture selects the other order
    mr = req["context"]["draftOrders"]["entry"][0]["resource"]
    mr["medicationCodeableConcept"]["text"] = "Ketorolac"
    mr["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = 30
    mr["dosageInstruction"][0]["timing"]["repeat"]["frequency"] = 4
    body = fixture_client.post(SELECT, json=req).json()
    assert any("120 mg" in c["summary"] for c in body["cards"])


def test_feedback_is_audited_with_the_override_reason(client):
    body = client.post(SELECT, json=load("cds-order-select.json")).json()
    [ddi] = cards_about(body, "amiodaron", "moxifloxacin")
    fb = {"feedback": [{"card": ddi["uuid"], "outcome": "overridden",
                        "overrideReason": {"reason": ddi["overrideReasons"][0],
                                           "userComment": "Bệnh nhân Nguyễn Văn Thử đã dùng"},
                        "outcomeTimestamp": "2026-11-22T06:00:00Z"}]}
    r = client.post(SELECT + "/feedback", json=fb)
    assert r.status_code == 200 and r.json() == {}
    client.app.state.cdss.audit.close()
    log = client.audit_path.read_text(encoding="utf-8")
    [rec] = [json.loads(x) for x in log.splitlines() if '"feedback"' in x]
    assert rec["outcome"] == "overridden" and rec["override_code"] == "benefit-outweighs-risk"
    assert rec["alert"].startswith("ddi:qd5948-051:") and rec["has_comment"] is True
    assert "Nguyễn Văn Thử" not in log and "pt-test-1" not in log


@pytest.mark.parametrize(
    ("mutate", "status", "needle"),
    [
        (lambda r: r.update(hook="order-sign"), 400, "hook"),
        (lambda r: r["context"].pop("patientId"), 422, "context.patientId"),
        (lambda r: r["context"].pop("draftOrders"), 422, "context.draftOrders"),
        (lambda r: r.pop("hookInstance"), 422, "hookInstance"),
        (lambda r: r.update(context="not an object"), 422, "context"),
        (lambda r: r["context"].update(draftOrders=[]), 422, "context.draftOrders"),
    ],
)
def test_bad_hook_requests_name_the_field(client, mutate, status, needle):
    req = copy.deepcopy(load("cds-order-select.json"))
    mutate(req)
    r = client.post(SELECT, json=req)
    assert r.status_code == status, r.text
    assert needle in r.text


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda r: r["context"]["draftOrders"]["entry"][0]["resource"].pop("intent"),
         "context.draftOrders.entry[0].resource.intent"),
        (lambda r: r["prefetch"].update(patient=BAD_PATIENT), "prefetch.patient.birthDate"),
        (lambda r: r["context"]["draftOrders"]["entry"][1]["resource"].update(
            dosageInstruction=[{"doseAndRate": {"doseQuantity": {"value": 1}}}]),
         "context.draftOrders.entry[1].resource.dosageInstruction[0].doseAndRate"),
        (lambda r: r["context"]["draftOrders"]["entry"][0]["resource"].update(vendorField=1),
         "context.draftOrders.entry[0].resource.vendorField"),
    ],
)
def test_malformed_optional_elements_are_ignored_and_said(client, mutate, named):
    """Issue 16: one unexpected optional element no longer means no check at all: the check
    runs (the contraindicated pair is still found) and an info card names what was ignored."""
    req = copy.deepcopy(load("cds-order-select.json"))
    mutate(req)
    r = client.post(SELECT, json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    validate("response", body)
    assert cards_about(body, "amiodaron", "moxifloxacin")[0]["indicator"] == "critical"
    [ignored] = [c for c in body["cards"] if c["source"]["topic"]["code"] == "input-ignored"]
    assert ignored["indicator"] == "info" and "systemActions" not in body
    assert named in ignored["detail"]


def test_unknown_service_and_malformed_body(client):
    assert client.post("/cds-services/nope", json={}).status_code == 404
    r = client.post(SELECT, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert client.post(SELECT + "/feedback", json={"feedback": [{"card": "x"}]}).status_code == 422


def test_workers_share_what_was_shown(tmp_path):
    """Two app instances on one settings file stand for two uvicorn workers: the same
    order-select on the second does not repeat what the first showed, and feedback sent to
    the second is audited with the alert id of a card the first made."""
    settings = settings_for(tmp_path, development=True)
    with TestClient(create_app(settings, kb=real_kb())) as a, \
            TestClient(create_app(settings, kb=real_kb())) as b:
        select = a.post(SELECT, json=load("cds-order-select.json")).json()
        [ddi] = cards_about(select, "amiodaron", "moxifloxacin")
        assert b.post(SELECT, json=load("cds-order-select.json")).json()["cards"] == []
        sign = b.post(SIGN, json=load("cds-order-sign.json")).json()
        assert cards_about(sign, "amiodaron", "moxifloxacin")  # order-sign: shown again
        assert cards_about(sign, "clarithromycin", "simvastatin")
        fb = {"feedback": [{"card": ddi["uuid"], "outcome": "overridden",
                            "overrideReason": {"reason": ddi["overrideReasons"][1]}}]}
        assert b.post(SELECT + "/feedback", json=fb).status_code == 200
        b.app.state.cdss.audit.close()
        records = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
        [rec] = [r for r in records if r["event"] == "feedback"]
        assert rec["alert"].startswith("ddi:qd5948-051:")
        assert rec["override_code"] == "already-tolerated"


def test_no_hook_input_gives_500(client):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    base = load("cds-order-select.json")
    leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
    junk = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(["context", "prefetch", "draftOrders", "entry", "resource"]), junk)
    def run(where, value):
        req = copy.deepcopy(base)
        if where in ("context", "prefetch"):
            req[where] = value
        elif where == "draftOrders":
            req["context"]["draftOrders"] = value
        elif where == "entry":
            req["context"]["draftOrders"]["entry"] = value
        else:
            req["context"]["draftOrders"]["entry"][0]["resource"] = value
        r = client.post(SELECT, json=req)
        assert r.status_code in (200, 400, 412, 422), r.text

    run()
